//! A led stream: the publisher thread that stores and broadcasts states.
//!
//! `publish` only swaps the newest state into a one-slot mailbox (latest
//! wins) and wakes the publisher; the publisher sends one request at a time
//! (Webdis does not order concurrent requests), keeps the newest unsent
//! state across failures, retries transient ones with backoff, and sends a
//! heartbeat when it has been idle for one interval.
//!
//! A state is sent as a delta (Fossil's format, `crate::delta`) against
//! the last state stored by this lead when the delta is less than half its
//! size; the functions apply it only when the record still holds that
//! state (`MSBASE` otherwise: the state is sent in full at once). A state
//! restored after a failover is always sent in full.

use crate::backoff::Backoff;
use crate::dispatch::{Event, EventKind};
use crate::error::{Error, Result, Status};
use crate::nodes::Nodes;
use crate::protocol::{self, INDEX_KEY};
use crate::session::{Config, Hooks};
use crate::util::{lock, random_hex};
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

struct State {
    /// The newest unsent state: (generation, the state).
    pending: Option<(u64, String)>,
    /// Generation of the last `publish`.
    published: u64,
    /// Highest generation stored in Redis.
    stored: u64,
    /// The error of the current failure streak.
    failing: Option<Error>,
    /// A final error: the lead is over.
    ended: Option<Error>,
    /// A request is in flight.
    busy: bool,
    /// ms_stop is in progress: send nothing.
    paused: bool,
    /// Deliver the pending state by this deadline, then exit (client free).
    closing: Option<Instant>,
    /// Exit now.
    exit: bool,
}

struct Shared {
    state: Mutex<State>,
    cond: Condvar,
}

impl Shared {
    /// Waits for a change of the state, at most `d`.
    fn wait<'a>(
        &self,
        st: std::sync::MutexGuard<'a, State>,
        d: Duration,
    ) -> std::sync::MutexGuard<'a, State> {
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
        let body_prefix =
            protocol::frame_body(&[identity.token.as_bytes(), identity.channel.as_bytes(), b""]);
        let body_prefix = Zeroizing::new(body_prefix);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                pending: None,
                published: 0,
                stored: 0,
                failing: None,
                ended: None,
                busy: false,
                paused: false,
                closing: None,
                exit: false,
            }),
            cond: Condvar::new(),
        });
        let publisher = LeadThread {
            session,
            acked_seq: identity.seq,
            publish_token: random_hex(8)?,
            body_prefix,
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

/// How long the publisher keeps looking for a new state after a request
/// before it sleeps.
const LINGER: Duration = Duration::from_micros(200);

/// How long ms_flush keeps looking before it sleeps.
const FLUSH_LINGER: Duration = Duration::from_micros(250);

enum Action {
    Publish(u64, String),
    Heartbeat,
    Exit,
}

struct LeadThread {
    session: u64,
    /// The highest seq a reply to this lead's publishes named.
    acked_seq: u64,
    /// Random, per lead: the first half of every publish id.
    publish_token: String,
    /// `"<len token> <len channel>\n<token><channel>"`: the body before the state.
    body_prefix: Zeroizing<Vec<u8>>,
    identity: Arc<LeadIdentity>,
    shared: Arc<Shared>,
    conn: Nodes,
    config: Arc<Config>,
    hooks: Hooks,
}

impl LeadThread {
    fn run(mut self) {
        let mut last_sent = Instant::now();
        let mut retry_at: Option<Instant> = None;
        let mut backoff = Backoff::new(self.session);
        // The newest state stored by this lead, sent again if a failover
        // lost it, and the base of the next delta while `use_base`.
        let mut last_stored: Option<Stored> = None;
        let mut use_base = false;
        // Publishes sent since the last reply naming a seq: each may have
        // been stored (and seen by followers) without its reply coming.
        let mut unanswered = 0u64;
        let mut last_generation_sent = 0u64;
        // The write endpoint moved: check at once that the newest stored
        // state is still there.
        let mut moves = self.conn.endpoints().moves();
        let mut check_now = false;
        let mut stored_seq_now = 0u64;
        // The request in flight carries a delta.
        let mut sent_delta = false;
        loop {
            let action = self.next_action(last_sent, retry_at, check_now);
            check_now = false;
            let timeout = self.config.timeout();
            let result = match &action {
                Action::Exit => return,
                Action::Publish(generation, state) => {
                    if *generation != last_generation_sent {
                        last_generation_sent = *generation;
                        unanswered += 1;
                    }
                    // Above any seq a follower may have seen from this lead:
                    // the last one named, and one per publish sent since.
                    let floor = (self.acked_seq + unanswered - 1).to_string();
                    // Token and counter: a repeat of this request (its
                    // response lost) or an abandoned older one arriving
                    // late is recognised by the functions and not stored.
                    let id = format!("{}{generation:016x}", self.publish_token);
                    let base = last_stored.as_ref().filter(|_| use_base);
                    let delta = base.and_then(|b| delta_of(b, state));
                    let (kind, base_seq, base_id, data) = match &delta {
                        Some((seq, base_id, delta)) => {
                            ("delta", seq.as_str(), base_id.as_str(), delta.as_bytes())
                        }
                        None => ("full", "-", "-", state.as_bytes()),
                    };
                    sent_delta = kind == "delta";
                    let mut body = Vec::with_capacity(self.body_prefix.len() + data.len());
                    body.extend_from_slice(&self.body_prefix);
                    body.extend_from_slice(data);
                    self.conn
                        .fcall(
                            false,
                            "ms_publish",
                            &[&self.identity.key, INDEX_KEY],
                            &[&id, &floor, kind, base_seq, base_id],
                            &body,
                            timeout,
                        )
                        .and_then(|reply| stored_at_or_after(&reply, &id))
                        .map(|(seq, exact)| {
                            self.acked_seq = self.acked_seq.max(seq);
                            unanswered = 0;
                            // The base of the next delta: this state, when
                            // the record holds exactly it.
                            use_base = exact;
                            stored_seq_now = seq;
                            false
                        })
                }
                Action::Heartbeat => {
                    let hb = self.config.heartbeat().as_millis().to_string();
                    let body = protocol::frame_body(&[
                        self.identity.token.as_bytes(),
                        self.identity.channel.as_bytes(),
                    ]);
                    self.conn
                        .fcall(
                            false,
                            "ms_heartbeat",
                            &[&self.identity.key],
                            &[&hb],
                            &body,
                            timeout,
                        )
                        .and_then(|reply| stored_seq(&reply))
                        // The record holds an older state than one stored
                        // for this lead: a failover lost it.
                        .map(|seq| seq < self.acked_seq)
                }
            };
            last_sent = Instant::now();
            let moved = self.conn.endpoints().moves();
            if moved != moves {
                moves = moved;
                check_now = !matches!(action, Action::Heartbeat);
            }
            let mut st = lock(&self.shared.state);
            st.busy = false;
            match result {
                Ok(lost) => {
                    match action {
                        Action::Publish(generation, state) => {
                            st.stored = st.stored.max(generation);
                            last_stored = Some(Stored {
                                seq: stored_seq_now,
                                id: format!("{}{generation:016x}", self.publish_token),
                                state,
                            });
                        }
                        Action::Heartbeat if lost => {
                            crate::debug_log!(
                                "lead {}: the stored state went back (a failover lost it): publishing the newest again",
                                self.session
                            );
                            // In full: the record lacks the base.
                            use_base = false;
                            if st.pending.is_none() {
                                if let Some(stored) = &last_stored {
                                    st.published += 1;
                                    st.pending = Some((st.published, stored.state.clone()));
                                }
                            }
                        }
                        _ => {}
                    }
                    st.failing = None;
                    retry_at = None;
                    backoff.reset();
                }
                Err(e) if protocol::is_base_mismatch(&e) => {
                    // The record no longer holds the base (another write,
                    // a failover, a lost reply): the same state in full, at
                    // once.
                    crate::debug_log!("lead {}: {}; sending in full", self.session, e.message);
                    use_base = false;
                    if let Action::Publish(generation, state) = action {
                        if st.pending.is_none() {
                            st.pending = Some((generation, state));
                        }
                    }
                }
                Err(e) if !e.status.is_transient() => {
                    st.ended = Some(e.clone());
                    st.pending = None;
                    drop(st);
                    self.shared.cond.notify_all();
                    (self.hooks.lead_ended)(self.session, &self.identity.name);
                    self.publish_failed(e.status);
                    return;
                }
                Err(e) => {
                    let is_publish = matches!(action, Action::Publish(..));
                    if is_publish && sent_delta && e.status == Status::MS_ERR_PROTOCOL {
                        // A delta the functions refused (MSARG) or a reply
                        // not understood: the retry goes in full.
                        use_base = false;
                    }
                    crate::debug_log!(
                        "lead {}: {} failed: {}",
                        self.session,
                        if is_publish { "publish" } else { "heartbeat" },
                        e.message
                    );
                    if let Action::Publish(generation, state) = action {
                        if st.pending.is_none() {
                            st.pending = Some((generation, state));
                        }
                    }
                    let first = st.failing.is_none();
                    if is_publish || !first {
                        st.failing = Some(e.clone());
                    }
                    retry_at = Some(Instant::now() + backoff.next());
                    drop(st);
                    if is_publish && first {
                        self.publish_failed(e.status);
                    }
                }
            }
            self.shared.cond.notify_all();
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

    /// Waits for something to do and marks the publisher busy.
    fn next_action(
        &self,
        last_sent: Instant,
        retry_at: Option<Instant>,
        check_now: bool,
    ) -> Action {
        let mut st = lock(&self.shared.state);
        loop {
            let now = Instant::now();
            if st.exit
                || (st.closing.is_some() && (st.pending.is_none() || now >= st.closing.unwrap()))
            {
                return Action::Exit;
            }
            let mut wake = last_sent + self.config.heartbeat();
            if let Some(closing) = st.closing {
                wake = wake.min(closing);
            }
            let may_send = !st.paused && retry_at.is_none_or(|t| now >= t);
            if may_send {
                if let Some((generation, state)) = st.pending.take() {
                    st.busy = true;
                    return Action::Publish(generation, state);
                }
                if st.closing.is_none() && (check_now || now >= last_sent + self.config.heartbeat())
                {
                    st.busy = true;
                    return Action::Heartbeat;
                }
            } else if let Some(t) = retry_at {
                wake = wake.min(t.max(now + Duration::from_millis(1)));
            }
            if may_send && st.closing.is_none() && now < last_sent + LINGER {
                // Just after a request, the next state often follows at
                // once (a caller publishing after ms_flush returned): look
                // again rather than sleep, so that neither side pays for a
                // thread wake-up.
                drop(st);
                std::thread::yield_now();
                st = lock(&self.shared.state);
                continue;
            }
            let wait = wake
                .saturating_duration_since(now)
                .max(Duration::from_millis(1));
            st = self.shared.wait(st, wait);
        }
    }
}

/// A state stored by this lead: its seq and publish id (the base of a
/// delta) and the state.
struct Stored {
    seq: u64,
    id: String,
    state: String,
}

/// Whether leaders send deltas (on by default; the benchmark turns them
/// off to measure full states in the same run).
pub(crate) static DELTAS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// A delta from `base` to `state` when it is less than half the state's
/// size: (base seq, base publish id, delta).
fn delta_of(base: &Stored, state: &str) -> Option<(String, String, String)> {
    if state.len() < 256 || !DELTAS.load(std::sync::atomic::Ordering::Relaxed) {
        return None;
    }
    // Less than half the state, or not worth it.
    let delta = crate::delta::create_within(&base.state, state, state.len() / 2 - 1)?;
    Some((base.seq.to_string(), base.id.clone(), delta))
}

/// Checks the reply to ms_publish `[seq, stored publish id]`: the state
/// now stored is the one of publish id `id` or a later one of this lead.
/// Only then does it count as stored (ms_flush relies on it). Returns the
/// seq, and whether the stored id is exactly `id`.
fn stored_at_or_after(reply: &serde_json::Value, id: &str) -> Result<(u64, bool)> {
    let stored = match reply {
        serde_json::Value::Array(a) if a.len() == 2 => protocol::as_u64(&a[0]).zip(a[1].as_str()),
        _ => None,
    };
    match stored {
        // Same lead token, counter not below ours (fixed width: text order
        // is number order).
        Some((seq, p))
            if p.len() == id.len() && p.as_bytes()[..16] == id.as_bytes()[..16] && p >= id =>
        {
            Ok((seq, p == id))
        }
        _ => Err(protocol::protocol_error("ms_publish")),
    }
}

/// The seq of the reply to ms_heartbeat `[seq, stored publish id]`.
fn stored_seq(reply: &serde_json::Value) -> Result<u64> {
    match reply {
        serde_json::Value::Array(a) if a.len() == 2 && a[1].is_string() => {
            protocol::as_u64(&a[0]).ok_or_else(|| protocol::protocol_error("ms_heartbeat"))
        }
        _ => Err(protocol::protocol_error("ms_heartbeat")),
    }
}
