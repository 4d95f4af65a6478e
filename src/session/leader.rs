//! A led stream: the publisher thread that stores and broadcasts states.
//!
//! `publish` only swaps the newest state into a one-slot mailbox (latest
//! wins) and wakes the publisher; the publisher sends one request at a time
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

use crate::dispatch::{Event, EventKind};
use crate::error::{Error, Result, Status};
use crate::net::nodes::Nodes;
use crate::session::backoff::Backoff;
use crate::session::publisher::{Effect, Mailbox, Next, Publisher, Request, Stored};
use crate::session::{Config, Hooks};
use crate::util::{lock, random_hex};
use crate::wire::functions::Call;
use crate::wire::protocol;
use std::ffi::CString;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
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

struct Shared {
    state: Mutex<Mailbox>,
    cond: Condvar,
}

impl Shared {
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

pub struct Lead {
    pub session: u64,
    identity: Arc<LeadIdentity>,
    shared: Arc<Shared>,
    conn: Nodes,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Lead {
    pub fn spawn(
        session: u64,
        identity: LeadIdentity,
        conn: Nodes,
        config: Arc<Config>,
        hooks: Hooks,
    ) -> Result<Arc<Lead>> {
        let identity = Arc::new(identity);
        let tag = protocol::channel_tag(&identity.channel);
        let shared = Arc::new(Shared {
            state: Mutex::new(Mailbox::default()),
            cond: Condvar::new(),
        });
        let publisher = LeadThread {
            session,
            machine: Publisher::new(
                Instant::now(),
                identity.seq,
                random_hex(8)?,
                config.deltas(),
                Backoff::new(session),
            ),
            tag,
            identity: identity.clone(),
            shared: shared.clone(),
            conn: conn.clone(),
            config,
            hooks,
        };
        let thread = std::thread::Builder::new()
            .name("ms-publish".into())
            .stack_size(256 * 1024)
            .spawn(move || publisher.run())
            .map_err(|e| {
                Error::new(
                    Status::MS_ERR_INTERNAL,
                    format!("cannot start a thread: {e}"),
                )
            })?;
        Ok(Arc::new(Lead {
            session,
            identity,
            shared,
            conn,
            thread: Mutex::new(Some(thread)),
        }))
    }

    pub fn identity(&self) -> &LeadIdentity {
        &self.identity
    }

    /// Hands over a new state (already checked); never touches the network.
    pub fn publish(&self, state: &str) -> Result<()> {
        let state = state.to_owned();
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
    }

    /// Ends the publisher now, dropping any pending state.
    pub fn terminate(&self) {
        {
            let mut st = lock(&self.shared.state);
            st.exit = true;
            st.pending = None;
        }
        self.shared.cond.notify_all();
        self.conn.shutdown();
        self.join();
    }

    /// Delivers the pending state within `timeout`, then ends the publisher.
    pub fn close(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        lock(&self.shared.state).closing = Some(deadline);
        self.shared.cond.notify_all();
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
        // Breaks a request still in flight after the deadline.
        self.conn.shutdown();
        self.join();
    }

    fn join(&self) {
        if let Some(h) = lock(&self.thread).take() {
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
    }
}

/// How long ms_flush keeps looking before it sleeps.
const FLUSH_LINGER: Duration = Duration::from_micros(250);

/// The publisher thread: carries out the requests of its `Publisher`.
struct LeadThread {
    session: u64,
    machine: Publisher,
    /// The channel's tag, which ms_publish carries instead of the channel.
    tag: String,
    identity: Arc<LeadIdentity>,
    shared: Arc<Shared>,
    conn: Nodes,
    config: Arc<Config>,
    hooks: Hooks,
}

impl LeadThread {
    fn run(mut self) {
        let mut moves = self.conn.endpoints().moves();
        loop {
            let Some(request) = self.next_request() else {
                return;
            };
            let reply = self.send(&request);
            let now = Instant::now();
            let moved = self.conn.endpoints().moves();
            let effects = {
                let mut st = lock(&self.shared.state);
                let effects = self
                    .machine
                    .done(&mut st, request, reply, now, moved != moves);
                moves = moved;
                effects
            };
            for effect in effects {
                match effect {
                    Effect::Log(text) => crate::util::debug_log!("lead {}: {text}", self.session),
                    Effect::PublishFailed(status) => self.publish_failed(status),
                    Effect::Ended(e) => {
                        self.shared.cond.notify_all();
                        (self.hooks.lead_ended)(self.session, &self.identity.name);
                        self.publish_failed(e.status);
                        return;
                    }
                }
            }
            self.shared.cond.notify_all();
        }
    }

    /// Waits for the next request (the mailbox then marks it in flight);
    /// None: the lead is over.
    fn next_request(&mut self) -> Option<Request> {
        let mut st = lock(&self.shared.state);
        loop {
            self.machine.set_deltas(self.config.deltas());
            let now = Instant::now();
            match self.machine.poll(&mut st, now, self.config.heartbeat()) {
                Next::Send(request) => return Some(request),
                Next::Exit => return None,
                Next::Linger => {
                    // Just after a request, the next state often follows at
                    // once (a caller publishing after ms_flush returned): look
                    // again rather than sleep, so that neither side pays for a
                    // thread wake-up.
                    drop(st);
                    std::thread::yield_now();
                    st = lock(&self.shared.state);
                }
                Next::Wait(at) => st = self.shared.wait(st, at.saturating_duration_since(now)),
            }
        }
    }

    /// Sends `request`; its reply is `[seq, stored publish id]`.
    fn send(&self, request: &Request) -> Result<Stored> {
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

    /// Reports MS_EVENT_PUBLISH_FAILED with its cause.
    fn publish_failed(&self, status: Status) {
        self.hooks.dispatcher.push(
            self.session,
            Event::new(
                EventKind::MS_EVENT_PUBLISH_FAILED,
                &self.identity.name,
                status,
            ),
        );
    }
}
