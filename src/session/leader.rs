//! A led stream: its mailbox, and the requests that store and broadcast
//! its states, driven by the client's reactor (runtime/reactor.rs).
//!
//! `publish` only swaps the newest state into a one-slot mailbox (latest
//! wins) and wakes the reactor; the reactor sends one request at a time
//! (Webdis does not order concurrent requests), keeps the newest unsent
//! state across failures, retries transient ones with backoff, and sends a
//! heartbeat when it has been idle for one interval.
//!
//! A state is sent as a delta (Fossil's format, `crate::wire::delta`) against
//! the last state stored by this lead when the delta is less than half its
//! size; the functions apply it only when the record still holds that
//! state (`MSBASE` otherwise: the state is sent in full at once). A state
//! restored after a failover is always sent in full.
//!
//! A full state is the request body as the functions store and publish
//! it, `r <publish id>\n` then the state, sent as two slices (the state
//! is not copied); the lead token travels sealed for each publish in its
//! path (`protocol::seal_lead`), the channel as its tag.

use crate::error::{Error, Result, Status};
use crate::net::nodes::Nodes;
use crate::session::backoff::Backoff;
use crate::session::publisher::{Mailbox, Publisher, Request, Stored};
use crate::session::Config;
use crate::util::{lock, random_hex};
use crate::wire::functions::Call;
use crate::wire::protocol;
use std::ffi::CString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// What the leader identifies itself with on every request: the lead
/// token (random, 128 bits, given to the functions by ms_start or
/// ms_reconnect) and the channel. Neither the leader code nor a key
/// derived from it is kept: nothing re-establishes a lead by itself.
pub struct LeadIdentity {
    pub name: Arc<CString>,
    pub key: String,
    pub token: Zeroizing<String>,
    pub channel: String,
    /// The stream's seq when the lead began.
    pub seq: u64,
}

/// What a lead's callers and the reactor share: the mailbox, the
/// condition variable its changes are told on, and whether the reactor
/// let go of the lead.
pub struct LeadShared {
    pub state: Mutex<Mailbox>,
    pub cond: Condvar,
    finished: AtomicBool,
}

impl LeadShared {
    /// The reactor no longer drives the lead (told to `Lead::join`).
    pub fn finish(&self) {
        let st = lock(&self.state);
        self.finished.store(true, Ordering::SeqCst);
        drop(st);
        self.cond.notify_all();
    }

    /// Waits for a change of the state, at most `d`.
    fn wait<'a>(
        &self,
        st: std::sync::MutexGuard<'a, Mailbox>,
        d: Duration,
    ) -> std::sync::MutexGuard<'a, Mailbox> {
        self.cond
            .wait_timeout(st, d)
            .unwrap_or_else(|e| e.into_inner())
            .0
    }
}

/// What drives a lead's machine (the client's reactor, runtime/): told
/// when the mailbox changed; and whether the calling thread is the driver
/// itself (which never waits for itself).
pub trait Driver: Send + Sync {
    fn wake(&self, session: u64);
    fn is_driving(&self) -> bool;
}

pub struct Lead {
    pub session: u64,
    identity: Arc<LeadIdentity>,
    shared: Arc<LeadShared>,
    conn: Nodes,
    driver: Arc<dyn Driver>,
}

impl Lead {
    /// A new lead, its publisher machine and what its requests are made
    /// of: the caller hands the last two to `driver`, which drives the
    /// lead from then on.
    pub fn spawn(
        session: u64,
        identity: LeadIdentity,
        conn: Nodes,
        config: Arc<Config>,
        driver: Arc<dyn Driver>,
    ) -> Result<(Arc<Lead>, Publisher, Arc<LeadWire>)> {
        let identity = Arc::new(identity);
        let tag = protocol::channel_tag(&identity.channel);
        let shared = Arc::new(LeadShared {
            state: Mutex::new(Mailbox::default()),
            cond: Condvar::new(),
            finished: AtomicBool::new(false),
        });
        let machine = Publisher::new(
            Instant::now(),
            identity.seq,
            random_hex(8)?,
            config.deltas(),
            Backoff::new(session),
        );
        let wire = Arc::new(LeadWire {
            tag,
            identity: identity.clone(),
            conn: conn.clone(),
            config,
        });
        let lead = Arc::new(Lead {
            session,
            identity,
            shared,
            conn,
            driver,
        });
        Ok((lead, machine, wire))
    }

    /// The mailbox and its condition variable, for the driver.
    pub fn shared(&self) -> &Arc<LeadShared> {
        &self.shared
    }

    /// Tells the driver the mailbox changed.
    fn wake(&self) {
        self.driver.wake(self.session);
    }

    pub fn identity(&self) -> &LeadIdentity {
        &self.identity
    }

    /// Hands over a new state (already checked, a copy of the caller's);
    /// never touches the network.
    pub fn publish(&self, state: String) -> Result<()> {
        let mut st = lock(&self.shared.state);
        if let Some(e) = &st.ended {
            return Err(Error::new(
                Status::MS_ERR_NOT_LEADING,
                format!("this client no longer leads the stream: {}", e.message),
            ));
        }
        st.published += 1;
        st.pending = Some((st.published, state));
        drop(st);
        self.shared.cond.notify_all();
        self.wake();
        Ok(())
    }

    /// Waits until every state published before the call is stored (or
    /// superseded by a stored newer one).
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        let deadline = start + timeout;
        let mut st = lock(&self.shared.state);
        let target = st.published;
        loop {
            if st.stored >= target {
                return Ok(());
            }
            if start.elapsed() < FLUSH_LINGER && st.failing.is_none() && st.ended.is_none() {
                // A round trip to Webdis on a local network takes about
                // this long: look again rather than sleep.
                drop(st);
                std::thread::yield_now();
                st = lock(&self.shared.state);
                continue;
            }
            if let Some(e) = &st.ended {
                return Err(e.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(match &st.failing {
                    Some(e) => e.clone(),
                    None => Error::new(
                        Status::MS_ERR_TIMEOUT,
                        format!("the state was not stored within {} ms", timeout.as_millis()),
                    ),
                });
            }
            st = self.shared.wait(st, deadline - now);
        }
    }

    /// Stops sending (for ms_stop) and waits for a request in flight.
    pub fn pause(&self) {
        let mut st = lock(&self.shared.state);
        st.paused = true;
        while st.busy {
            st = self.shared.cond.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    pub fn resume(&self) {
        lock(&self.shared.state).paused = false;
        self.shared.cond.notify_all();
        self.wake();
    }

    /// Ends the publisher now, dropping any pending state.
    pub fn terminate(&self) {
        {
            let mut st = lock(&self.shared.state);
            st.exit = true;
            st.pending = None;
        }
        self.shared.cond.notify_all();
        self.wake();
        self.conn.shutdown();
        self.join();
    }

    /// Delivers the pending state within `timeout`, then ends the publisher.
    pub fn close(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        lock(&self.shared.state).closing = Some(deadline);
        self.shared.cond.notify_all();
        self.wake();
        let mut st = lock(&self.shared.state);
        while st.busy || (st.pending.is_some() && st.ended.is_none() && Instant::now() < deadline) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            st = self.shared.wait(st, left);
        }
        st.exit = true;
        drop(st);
        self.shared.cond.notify_all();
        self.wake();
        // Breaks a request still in flight after the deadline.
        self.conn.shutdown();
        self.join();
    }

    /// Waits until the reactor let go of the lead (not on the reactor
    /// itself: a hook it calls may end a lead).
    fn join(&self) {
        if self.driver.is_driving() {
            return;
        }
        let mut st = lock(&self.shared.state);
        while !self.shared.finished.load(Ordering::SeqCst) {
            st = self.shared.wait(st, Duration::from_millis(100));
        }
    }
}

/// How long ms_flush keeps looking before it sleeps.
const FLUSH_LINGER: Duration = Duration::from_micros(250);

/// What a lead's requests are made of, for the request workers
/// (runtime/requests.rs): `send` builds and sends one.
pub struct LeadWire {
    /// The channel's tag, which ms_publish carries instead of the channel.
    tag: String,
    pub identity: Arc<LeadIdentity>,
    pub conn: Nodes,
    config: Arc<Config>,
}

impl LeadWire {
    /// Sends `request`; its reply is `[seq, stored publish id]`.
    pub fn send(&self, request: &Request) -> Result<Stored> {
        let timeout = self.config.timeout();
        match request {
            Request::Publish {
                id,
                floor,
                delta,
                state,
                ..
            } => {
                let base = delta.as_ref().map(|d| (d.base_seq, d.base_id.as_str()));
                // A full state goes behind `r <publish id>\n`, as two
                // slices of one body (the state is not copied); a delta
                // alone.
                let prefix = format!("r {id}\n");
                let body: Vec<&[u8]> = match delta {
                    Some(d) => vec![d.delta.as_bytes()],
                    None => vec![prefix.as_bytes(), state.as_bytes()],
                };
                let len = crate::net::http::body_len(&body);
                let (kind, base_seq, base_id) = Call::publish_kind(base);
                let sealed = Zeroizing::new(
                    protocol::seal_lead(
                        &self.identity.token,
                        id,
                        kind,
                        &base_seq,
                        base_id,
                        *floor,
                        len,
                    )
                    .ok_or_else(|| {
                        Error::new(
                            Status::MS_ERR_INTERNAL,
                            "the lead token is not 32 hex digits",
                        )
                    })?,
                );
                let call = Call::publish(&self.identity.key, id, *floor, base, &self.tag, &sealed);
                self.conn
                    .fcall(&call, &body, timeout)
                    .and_then(|reply| Stored::of(&reply, call.function))
            }
            Request::Heartbeat => {
                let body = protocol::frame_body(&[
                    self.identity.token.as_bytes(),
                    self.identity.channel.as_bytes(),
                ]);
                let call = Call::heartbeat(&self.identity.key, self.config.heartbeat().as_millis());
                self.conn
                    .fcall(&call, &[&body], timeout)
                    .and_then(|reply| Stored::of(&reply, call.function))
            }
        }
    }
}
