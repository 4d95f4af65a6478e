//! The network side of a followed stream: the calls a session makes
//! (ms_connect, subscribe, prove, snapshot, probe), the subscription and
//! its reader thread, and the delivery of states to the dispatcher (a full
//! state's header and body paired by publish id, deltas applied to their
//! base, whatever Webdis swapped held a moment). Every
//! function here may block; the session thread (`super`) never calls them
//! itself but through a job.

use super::opening::{subscription_failure, OpenAction, Opening, Stage};
use super::session::ResyncDue;
use crate::dispatch::{Event, StateText};
use crate::error::{Error, Kind, Result, Status};
use crate::kdf;
use crate::net::nodes::{Endpoints, Nodes};
use crate::net::transport::Webdis;
use crate::session::{params_of, Config};
use crate::util::{lock, random_hex};
use crate::wire::functions::{self, Call, Connected};
use crate::wire::protocol::{self, ChannelMessage, ObjectSplitter, SubscriptionItem};
use crossbeam_channel::{bounded, select, Receiver, Sender};
use std::ffi::CString;
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// ms_connect: checks the password's derived key; returns the stream's
/// channel (the reply carries it sealed with that key).
pub(super) fn stream_channel(
    conn: &Nodes,
    key: &str,
    password_key: &str,
    timeout: Duration,
) -> Result<String> {
    let body = zeroize::Zeroizing::new(protocol::frame_body(&[password_key.as_bytes()]));
    let answered = conn.fcall_answered(&Call::connect(key), &[&body], timeout);
    let connected = Connected::of(answered.result?, "ms_connect")?;
    protocol::open_sealed(&connected.channel_sealed, password_key, &answered.nonce)
        .ok_or_else(|| protocol::protocol_error("ms_connect"))
}

pub(super) fn replaced() -> Error {
    Error::new(
        Status::MS_ERR_NOT_FOUND,
        "the stream was stopped and started anew",
    )
}

pub(super) fn disconnected() -> Error {
    Error::new(Status::MS_ERR_UNAVAILABLE, "disconnected while connecting")
}

/// A message still arriving counts as the leader's activity once this
/// much of it came: more than any probe (`p <64 characters>` on a 40-digit
/// channel, in Webdis' envelope) can take.
const LEADER_SIZED: usize = 512;

/// Items from the reader thread.
pub(super) enum Incoming {
    Item(SubscriptionItem),
    Closed(Error),
}

/// One live subscription.
pub(super) struct Subscription {
    /// The node subscribed on, and its connections.
    pub(super) node: usize,
    pub(super) conn: Webdis,
    pub(super) rx: Receiver<Incoming>,
    /// Grows with each read that leaves a message incomplete: a large
    /// message still arriving is not silence.
    pub(super) progress: Arc<AtomicU64>,
    pub(super) reader: Option<JoinHandle<()>>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.conn.shutdown();
        if let Some(h) = self.reader.take() {
            let _ = h.join();
        }
    }
}

/// Delivers a session's states. Once the follower listens, a
/// subscription's reader thread hands states to the dispatcher itself (one
/// thread hand-off less per state); the newest delivered seq is kept under
/// a lock so that the reader and the follower thread (snapshots) never
/// deliver out of order.
pub(super) struct Delivery {
    pub(super) session: u64,
    pub(super) name: Arc<CString>,
    pub(super) dispatcher: Arc<crate::dispatch::Dispatcher>,
    pub(super) cancel: Arc<AtomicBool>,
    /// The last state delivered, and deltas waiting for their base.
    pub(super) last: Mutex<Last>,
    /// The reader delivers states itself.
    pub(super) direct: AtomicBool,
    /// When the reader last delivered a state (µs after `epoch`, 0 for
    /// never): the leader was heard then.
    pub(super) epoch: Instant,
    pub(super) last_direct_us: AtomicU64,
    /// The follower has reported LEADER_OFFLINE: the reader tells it of
    /// each state too, so that LEADER_ONLINE follows at once.
    pub(super) leader_offline: AtomicBool,
}

/// How long a delta whose base has not arrived, or half of a full state
/// (its header or its body) whose other half has not, is held before the
/// follower reads the snapshot (Webdis 0.1.9 swaps adjacent messages when
/// several subscribers are attached).
pub(super) const HOLD: Duration = Duration::from_millis(250);

/// At most this many deltas, or headers, wait.
const MAX_HELD: usize = 64;

/// At most this many state bodies (each up to 8 MiB) wait for their
/// header.
const MAX_BODIES: usize = 2;

/// Publish ids of headers that came for states older than the last one
/// delivered, remembered so that their bodies are dropped at once.
const MAX_PASSED: usize = 8;

/// The last state delivered, and what waits: deltas for their base,
/// headers and bodies of full states for their other half.
#[derive(Default)]
pub(super) struct Last {
    pub(super) seq: Option<u64>,
    /// When the last state delivered was stored (Redis' clock): with
    /// `seq`, what names it to ms_snapshot (`have`).
    updated_ms: i64,
    /// Its publish id, when it came as a full state.
    id: Option<String>,
    /// The same buffer as the callback's (no copy of the state).
    state: StateText,
    /// Its checksum's residue sums, once a delta needed them.
    sums: Option<crate::wire::delta::Sums>,
    /// (seq, base seq, updated_ms, delta), arrived before their base.
    held: Vec<(u64, u64, i64, String)>,
    /// (seq, updated_ms, publish id): headers whose body has not come.
    heads: Vec<(u64, i64, String)>,
    /// (publish id, state): bodies whose header has not come.
    bodies: Vec<(String, String)>,
    /// Publish ids of headers of states older than the last delivered.
    passed: std::collections::VecDeque<String>,
    /// Since when something has been waiting.
    held_since: Option<Instant>,
    /// A delta could not be applied, or too much waits: read the
    /// snapshot now.
    resync: bool,
}

impl Last {
    fn waiting(&self) -> bool {
        !(self.held.is_empty() && self.heads.is_empty() && self.bodies.is_empty())
    }

    fn wait_from(&mut self, now: Instant) {
        if self.held_since.is_none() {
            self.held_since = Some(now);
        }
    }

    fn pass(&mut self, id: String) {
        if self.passed.len() >= MAX_PASSED {
            self.passed.pop_front();
        }
        self.passed.push_back(id);
    }

    /// Drops what waits.
    fn clear(&mut self) {
        self.held.clear();
        self.heads.clear();
        self.bodies.clear();
        self.held_since = None;
        self.resync = false;
    }
}

impl Delivery {
    /// Delivers a snapshot's state, if it carries one newer than the last
    /// one delivered.
    pub(super) fn snapshot(&self, snap: &mut Snapshot) {
        if let Some((id, state)) = snap.state.take() {
            let mut last = lock(&self.last);
            self.deliver(
                &mut last,
                snap.seq,
                snap.updated_ms,
                Some(id),
                StateText::new(state),
            );
        }
    }

    /// What names the state delivered last to ms_snapshot:
    /// `<seq>:<updated_ms>`, or `-` before any.
    pub(super) fn have(&self) -> String {
        let last = lock(&self.last);
        match last.seq {
            Some(seq) => format!("{seq}:{}", last.updated_ms),
            None => "-".into(),
        }
    }

    /// The header of a full state, `s <seq> <updated_ms> <publish id>`:
    /// delivered with its body when that came first, held otherwise.
    pub(super) fn head(&self, seq: u64, updated_ms: i64, id: String) {
        let mut last = lock(&self.last);
        if last.seq.is_some_and(|s| seq <= s) {
            // An old state: its body, before or after, is dropped.
            last.bodies.retain(|b| b.0 != id);
            last.pass(id);
        } else if let Some(i) = last.bodies.iter().position(|b| b.0 == id) {
            let (id, state) = last.bodies.remove(i);
            self.deliver(&mut last, seq, updated_ms, Some(id), StateText::new(state));
        } else if last.heads.len() >= MAX_HELD {
            last.resync = true;
        } else if !last.heads.iter().any(|h| h.2 == id) {
            crate::util::debug_log!(
                "follow {}: the header of seq {seq} came before its body: held",
                self.session
            );
            last.heads.push((seq, updated_ms, id));
            last.wait_from(Instant::now());
        }
        self.settle(&mut last);
    }

    /// The body of a full state, `r <publish id>\n<state>`: delivered
    /// under the header of the same publish id only, when that came
    /// first; held otherwise (at most `MAX_BODIES`).
    pub(super) fn body(&self, id: String, state: String) {
        let mut last = lock(&self.last);
        if last.id.as_deref() == Some(id.as_str()) || last.passed.contains(&id) {
            // The body of a state delivered already, or of an old one.
        } else if let Some(i) = last.heads.iter().position(|h| h.2 == id) {
            let (seq, updated_ms, id) = last.heads.remove(i);
            self.deliver(&mut last, seq, updated_ms, Some(id), StateText::new(state));
        } else if last.bodies.len() >= MAX_BODIES {
            last.resync = true;
        } else if !last.bodies.iter().any(|b| b.0 == id) {
            crate::util::debug_log!(
                "follow {}: the body of publish {id} came before its header: held",
                self.session
            );
            last.bodies.push((id, state));
            last.wait_from(Instant::now());
        }
        self.settle(&mut last);
    }

    /// A snapshot read to replace what could not be delivered: its state,
    /// if it carries one, is delivered if newer; whatever still waits is
    /// dropped (the snapshot, read after it came, holds its state or a
    /// newer one).
    pub(super) fn resynced(&self, snap: &mut Snapshot) {
        let mut last = lock(&self.last);
        if let Some((id, state)) = snap.state.take() {
            self.deliver(
                &mut last,
                snap.seq,
                snap.updated_ms,
                Some(id),
                StateText::new(state),
            );
        }
        last.clear();
    }

    /// A snapshot read for a resync failed: try again after `HOLD`.
    pub(super) fn resync_failed(&self) {
        let mut last = lock(&self.last);
        if last.resync || last.held_since.is_some() {
            last.resync = false;
            last.held_since = Some(Instant::now());
        }
    }

    /// When the snapshot must be read because of deltas or unpaired
    /// halves, if ever.
    pub(super) fn resync_at(&self) -> Option<ResyncDue> {
        let last = lock(&self.last);
        if last.resync {
            Some(ResyncDue::Now)
        } else {
            last.held_since.map(|t| ResyncDue::At(t + HOLD))
        }
    }

    /// Applies a delta to the last state delivered when it is its base;
    /// holds it when its base has not come yet. Never delivers a state it
    /// could not verify (length, checksum, UTF-8).
    pub(super) fn delta(&self, seq: u64, base: u64, updated_ms: i64, delta: String) {
        let mut last = lock(&self.last);
        match last.seq {
            Some(s) if seq <= s => {}
            Some(s) if s == base => self.apply(&mut last, seq, updated_ms, &delta),
            Some(s) if s > base => {
                // Its base was skipped (cannot be applied): the snapshot.
                last.resync = true;
            }
            _ => {
                if last.held.len() >= MAX_HELD {
                    last.resync = true;
                } else {
                    crate::util::debug_log!(
                        "follow {}: the delta of seq {seq} came before its base {base}: held",
                        self.session
                    );
                    last.held.push((seq, base, updated_ms, delta));
                    last.wait_from(Instant::now());
                }
            }
        }
    }

    fn apply(&self, last: &mut Last, seq: u64, updated_ms: i64, delta: &str) {
        use crate::wire::delta;
        // No result over 8 MiB, in place or not.
        let max = protocol::MAX_STATE;
        // In place when no event holds the state any more (the callback
        // returned): a small edit writes only what it changes.
        if !self.cancel.load(Ordering::SeqCst) {
            let Last { state, sums, .. } = &mut *last;
            // (The sums of a state read once, when a delta edits it.)
            match state.edit(|s| {
                let sums = sums.get_or_insert_with(|| delta::Sums::of(s.as_bytes()));
                delta::apply_in_place(s, sums, delta, max)
            }) {
                Some(Ok(true)) => {
                    let state = last.state.clone();
                    return self.deliver(last, seq, updated_ms, None, state);
                }
                Some(Err(e)) => return self.refused(last, seq, e),
                _ => {}
            }
        }
        match delta::apply(last.state.as_str(), delta, max) {
            Ok(state) => self.deliver(last, seq, updated_ms, None, StateText::new(state)),
            Err(e) => self.refused(last, seq, e),
        }
    }

    fn refused(&self, last: &mut Last, seq: u64, e: crate::wire::delta::ApplyError) {
        crate::util::debug_log!(
            "follow {}: the delta of seq {seq} does not apply: {e:?}",
            self.session
        );
        last.resync = true;
    }

    fn deliver(
        &self,
        last: &mut Last,
        seq: u64,
        updated_ms: i64,
        id: Option<String>,
        state: StateText,
    ) {
        if last.seq.is_none_or(|s| seq > s) && !self.cancel.load(Ordering::SeqCst) {
            last.seq = Some(seq);
            last.updated_ms = updated_ms;
            last.id = id;
            if !last.state.same(&state) {
                // Its sums when a delta needs them.
                last.sums = None;
            }
            last.state = state;
            self.dispatcher.push(
                self.session,
                Event::state(&self.name, seq, last.state.clone()),
            );
            // Deltas that waited for this state.
            while let Some(i) = last.held.iter().position(|h| Some(h.1) == last.seq) {
                let (seq, _, updated_ms, delta) = last.held.swap_remove(i);
                self.apply(last, seq, updated_ms, &delta);
            }
            let now_seq = last.seq;
            last.held.retain(|h| Some(h.0) > now_seq);
            // Headers of older states: their bodies are dropped.
            let (old, heads): (Vec<_>, Vec<_>) = std::mem::take(&mut last.heads)
                .into_iter()
                .partition(|h| Some(h.0) <= now_seq);
            last.heads = heads;
            for (_, _, id) in old {
                last.bodies.retain(|b| b.0 != id);
                last.pass(id);
            }
            self.settle(last);
        }
    }

    /// Nothing waits any more: no snapshot is due for it.
    fn settle(&self, last: &mut Last) {
        if !last.waiting() {
            last.held_since = None;
        }
    }
}

/// A snapshot as the follower uses it.
pub(super) struct Snapshot {
    pub(super) seq: u64,
    pub(super) hb: Duration,
    /// When the newest state was stored (Redis' clock).
    pub(super) updated_ms: i64,
    /// The newest state and its publish id; None when it is the one the
    /// follower holds (or was delivered already).
    pub(super) state: Option<(String, String)>,
    /// When the leader was last heard, on the monotonic clock: Redis' age
    /// of it before the request was sent (no wall clock involved).
    pub(super) heard: Option<Instant>,
}

impl Snapshot {
    /// The reply of ms_snapshot to a request sent at `sent`.
    pub(super) fn of(reply: functions::Snapshot, sent: Instant) -> Snapshot {
        Snapshot {
            seq: reply.seq,
            hb: Duration::from_millis(reply.hb_ms.max(1)),
            updated_ms: reply.updated_ms,
            state: reply.state,
            heard: super::session::heard_at(sent, reply.heard_age_ms),
        }
    }
}

/// What the network side of a session needs; shared with its job threads.
pub(super) struct Link {
    pub(super) session: u64,
    pub(super) key: String,
    /// The stream's key derivation when the follow began.
    pub(super) params: kdf::Params,
    /// The password's derived key (the password itself is not kept).
    pub(super) password_key: zeroize::Zeroizing<String>,
    pub(super) channel: String,
    pub(super) endpoints: Arc<Endpoints>,
    pub(super) config: Arc<Config>,
    pub(super) cancel: Arc<AtomicBool>,
    /// Disconnected when the session is cancelled.
    pub(super) wake: Receiver<()>,
    /// The connections last opened, shut down by a cancel.
    pub(super) active: Arc<Mutex<Option<Nodes>>>,
    pub(super) delivery: Arc<Delivery>,
}

impl Link {
    pub(super) fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    /// Connections for the next calls, registered so that cancel breaks
    /// them.
    pub(super) fn connection(&self) -> Result<Nodes> {
        let conn = Nodes::new(self.endpoints.clone());
        *lock(&self.active) = Some(conn.clone());
        if self.cancelled() {
            conn.shutdown();
            return Err(disconnected());
        }
        Ok(conn)
    }

    /// Checks that the stream still exists, with the password's key, on
    /// the channel followed. A stream started anew under the same name has
    /// another salt: replaced, without a wrong password counted.
    pub(super) fn check_stream(&self) -> Result<()> {
        let conn = self.connection()?;
        if params_of(&conn, &self.key, self.config.timeout())? != self.params {
            return Err(replaced());
        }
        let channel = stream_channel(&conn, &self.key, &self.password_key, self.config.timeout())?;
        if channel == self.channel {
            Ok(())
        } else {
            Err(replaced())
        }
    }

    /// A recovery: the stream still exists (asked first, so that ENDED
    /// comes promptly when it does not), then a new subscription.
    pub(super) fn recover(&self) -> Result<(Subscription, Snapshot)> {
        self.check_stream()?;
        self.open()
    }

    /// Subscribes, waits for the acknowledgement, proves the subscription
    /// with a probe, then reads the snapshot on the node subscribed on.
    ///
    /// Webdis 0.1.9 can garble a new subscription (a message published
    /// while it sets one up may be written before the HTTP response head),
    /// lose its response or acknowledgement to a socket reused after a
    /// subscriber hung up, or acknowledge a subscription that Redis never
    /// feeds. Such a subscription is replaced by a fresh one, within the
    /// request timeout overall. With several endpoints, each attempt goes
    /// to the next node of the stream's order (replicas first), so that a
    /// node that is down or not ready costs one attempt.
    ///
    /// The snapshot is read after the probe came back on the subscription:
    /// the probe was published by the primary after every state it stored
    /// before, so the node subscribed on (a replica maybe) holds them all
    /// by then, and every later one comes on the subscription.
    ///
    /// What each failure leads to is decided in `opening.rs`, by its kind.
    pub(super) fn open(&self) -> Result<(Subscription, Snapshot)> {
        let order = self.endpoints.follow_order(&self.key);
        let mut opening = Opening::new(Instant::now(), self.config.timeout(), order);
        let mut action = opening.next(Instant::now());
        loop {
            let (node, by) = match action {
                OpenAction::Subscribe { node, by } => (node, by),
                OpenAction::Failed(e) => return Err(e),
            };
            let nodes = self.connection()?;
            let opened = self
                .subscribe(&nodes, node, by)
                .and_then(|sub| self.confirm(&nodes, &sub, by).map(|()| sub));
            let (stage, e) = match opened {
                Ok(sub) => match self.snapshot(nodes.node(node)) {
                    Ok(snap) => return Ok((sub, snap)),
                    Err(e) => (Stage::Snapshot, e),
                },
                Err(e) => (Stage::Subscription, e),
            };
            nodes.shutdown();
            if self.cancelled() {
                return Err(disconnected());
            }
            crate::util::debug_log!(
                "subscribe {} at {}: {stage:?} failed ({:?}): {}",
                self.session,
                nodes.base(node),
                e.kind,
                e.message
            );
            let verdict = opening.failed(Instant::now(), stage, e, nodes.base(node));
            if let Some(failed) = verdict.node_failed {
                self.endpoints.failed(failed);
            }
            action = verdict.then;
        }
    }

    /// One subscription, acknowledged by `by`.
    pub(super) fn subscribe(
        &self,
        nodes: &Nodes,
        node: usize,
        by: Instant,
    ) -> Result<Subscription> {
        let conn = nodes.node(node);
        // The response head is awaited no longer than the acknowledgement:
        // Webdis 0.1.9 sometimes never sends it (the request is lost with a
        // socket it mixed up), and the retry in `open` needs the time left.
        let wait = by.saturating_duration_since(Instant::now());
        let reader = conn.subscribe(&self.channel, wait)?;
        let (tx, rx) = bounded(64);
        let progress = Arc::new(AtomicU64::new(0));
        let counter = progress.clone();
        let handle = std::thread::Builder::new()
            .name(format!("ms-sub-{}", self.session))
            .stack_size(256 * 1024)
            .spawn({
                let delivery = self.delivery.clone();
                move || read_subscription(reader, tx, counter, delivery)
            })
            .map_err(|e| {
                Error::new(
                    Status::MS_ERR_INTERNAL,
                    format!("cannot start a thread: {e}"),
                )
            })?;
        let sub = Subscription {
            node,
            conn: conn.clone(),
            rx,
            progress,
            reader: Some(handle),
        };
        self.await_item(&sub, by, "acknowledge the subscription", |item| {
            matches!(item, SubscriptionItem::Subscribed { channel } if *channel == self.channel)
        })
        .map_err(subscription_failure)?;
        Ok(sub)
    }

    /// Proves an acknowledged subscription end to end: a probe published
    /// through the functions must reach a subscriber and come back on it
    /// by `by`. (A subscription Webdis acknowledged may never be fed: the
    /// probe then reaches no subscriber, or not this one.)
    pub(super) fn confirm(&self, nodes: &Nodes, sub: &Subscription, by: Instant) -> Result<()> {
        let token = random_hex(8)?;
        let left = by.saturating_duration_since(Instant::now());
        let receivers = self.probe(nodes, sub.node, &token, left.max(Duration::from_millis(1)))?;
        if receivers == Some(0) {
            // Acknowledged but never fed: as if unacknowledged.
            return Err(Error::new(
                Status::MS_ERR_TIMEOUT,
                "Redis has no such subscription (a probe reached no subscriber)",
            )
            .kinded(Kind::Timeout));
        }
        self.await_item(sub, by, "deliver a probe on the subscription", |item| {
            matches!(item, SubscriptionItem::Message { payload, .. }
                if payload.strip_prefix("p ") == Some(token.as_str()))
        })
        .map_err(subscription_failure)
    }

    /// Waits until the subscription yields an item `wanted` accepts, by
    /// `by`; TIMEOUT saying what Webdis did not `do` otherwise.
    pub(super) fn await_item(
        &self,
        sub: &Subscription,
        by: Instant,
        what: &str,
        wanted: impl Fn(&SubscriptionItem) -> bool,
    ) -> Result<()> {
        let started = Instant::now();
        loop {
            let left = by.saturating_duration_since(Instant::now());
            select! {
                recv(self.wake) -> _ => return Err(disconnected()),
                recv(sub.rx) -> m => match m {
                    Ok(Incoming::Item(item)) if wanted(&item) => return Ok(()),
                    Ok(Incoming::Item(_)) => continue,
                    Ok(Incoming::Closed(e)) => return Err(e),
                    Err(_) => return Err(Error::new(Status::MS_ERR_UNAVAILABLE, "the subscription closed")),
                },
                default(left) => return Err(Error::new(
                    Status::MS_ERR_TIMEOUT,
                    format!("Webdis did not {what} within {} ms", started.elapsed().as_millis()),
                )),
            }
        }
    }

    /// ms_snapshot, naming the state delivered last (`have`): the reply
    /// carries the newest state only when it is another.
    pub(super) fn snapshot(&self, conn: &Webdis) -> Result<Snapshot> {
        let body = protocol::frame_body(&[self.channel.as_bytes()]);
        let have = self.delivery.have();
        let sent = Instant::now();
        // A stream started anew under the same name has another channel,
        // so ms_snapshot answers MSNOTFOUND.
        let call = Call::snapshot(&self.key, &have);
        let reply = conn.fcall(&call, &[&body], self.config.timeout())?;
        Ok(Snapshot::of(functions::Snapshot::of(reply)?, sent))
    }

    /// ms_probe, on the primary: publishes `p <token>` on the channel.
    /// Returns how many subscriptions Redis delivered it to when the
    /// primary is the node subscribed on (`node`); None otherwise (a
    /// replica's subscribers get it through replication, and the primary
    /// does not count them).
    pub(super) fn probe(
        &self,
        nodes: &Nodes,
        node: usize,
        token: &str,
        timeout: Duration,
    ) -> Result<Option<u64>> {
        let body = protocol::frame_body(&[self.channel.as_bytes()]);
        let answered = nodes.fcall_answered(&Call::probe(&self.key, token), &[&body], timeout);
        let n = answered
            .result
            .and_then(|reply| functions::reached(&reply))?;
        Ok((answered.node == node).then_some(n))
    }
}

/// A message carrying a state (a header, a body or a delta), which the
/// reader delivers itself once the follower listens.
pub(super) fn is_state_message(payload: &str) -> bool {
    ["s ", "r ", "d "].iter().any(|p| payload.starts_with(p))
}

impl Delivery {
    /// Delivers (or holds) a channel message that carries a state; other
    /// messages are ignored here.
    pub(super) fn message(&self, payload: String) {
        match protocol::parse_channel_message(payload) {
            Some(ChannelMessage::StateHead {
                seq,
                updated_ms,
                id,
            }) => self.head(seq, updated_ms, id),
            Some(ChannelMessage::StateBody { id, state }) => self.body(id, state),
            Some(ChannelMessage::Delta {
                seq,
                base,
                updated_ms,
                delta,
            }) => self.delta(seq, base, updated_ms, delta),
            _ => {}
        }
    }
}

/// The reader thread: bytes from Webdis to parsed items. Once the
/// follower listens, states go to the dispatcher from here.
pub(super) fn read_subscription(
    mut reader: impl Read,
    tx: Sender<Incoming>,
    progress: Arc<AtomicU64>,
    delivery: Arc<Delivery>,
) {
    let mut splitter = ObjectSplitter::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => {
                let _ = tx.send(Incoming::Closed(Error::new(
                    Status::MS_ERR_UNAVAILABLE,
                    "Webdis closed the subscription",
                )));
                return;
            }
            Ok(n) => n,
            Err(e) => {
                // A chunked stream that cannot be read (Webdis 0.1.9 may
                // write a message into a response it is still setting up)
                // is a garbled response, which `open` replaces at once;
                // anything else is a broken connection.
                let garbled = e
                    .get_ref()
                    .and_then(|i| i.downcast_ref::<ureq::Error>())
                    .is_some_and(|u| matches!(u, ureq::Error::Protocol(_)));
                let _ = tx.send(Incoming::Closed(Error::new(
                    if garbled {
                        Status::MS_ERR_PROTOCOL
                    } else {
                        Status::MS_ERR_UNAVAILABLE
                    },
                    format!("the subscription broke: {e}"),
                )));
                return;
            }
        };
        splitter.push(&buf[..n]);
        loop {
            match splitter.next_object() {
                Ok(Some(obj)) => {
                    let item = match protocol::parse_subscription_object(&obj) {
                        Ok(SubscriptionItem::Message { payload, .. })
                            if is_state_message(&payload)
                                && delivery.direct.load(Ordering::SeqCst) =>
                        {
                            delivery.message(payload);
                            let waiting = delivery.resync_at().is_some();
                            let us = delivery.epoch.elapsed().as_micros() as u64;
                            delivery.last_direct_us.store(us.max(1), Ordering::SeqCst);
                            if !waiting && !delivery.leader_offline.load(Ordering::SeqCst) {
                                continue;
                            }
                            // Wake the follower: the leader is back, or a delta waits.
                            Incoming::Item(SubscriptionItem::Other)
                        }
                        Ok(item) => Incoming::Item(item),
                        Err(e) => Incoming::Closed(e),
                    };
                    let closed = matches!(item, Incoming::Closed(_));
                    if tx.send(item).is_err() || closed {
                        return;
                    }
                }
                Ok(None) => {
                    if splitter.pending() >= LEADER_SIZED {
                        // Part of a message arrived: activity, though no
                        // message is complete yet. Only a message longer
                        // than any probe counts (a state or delta, which
                        // only the leader can cause): anyone with the
                        // password can publish probes on the channel, and
                        // they must not pass for the leader.
                        progress.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    break;
                }
                Err(e) => {
                    let _ = tx.send(Incoming::Closed(e));
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out its chunks one read at a time, then the end of the stream.
    struct Chunks(Vec<Vec<u8>>);

    impl Read for Chunks {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0.is_empty() {
                return Ok(0);
            }
            let chunk = self.0.remove(0);
            buf[..chunk.len()].copy_from_slice(&chunk);
            Ok(chunk.len())
        }
    }

    /// Bytes of a message still arriving are activity: the reader counts
    /// every read that leaves a message incomplete (the session's silence
    /// clock watches that count), and a read of whole messages only is
    /// not counted.
    #[test]
    fn reads_that_leave_a_message_incomplete_count_as_progress() {
        let dispatcher = crate::dispatch::Dispatcher::new().unwrap();
        let delivery = Arc::new(Delivery {
            session: 1,
            name: Arc::new(CString::new("s").unwrap()),
            dispatcher: dispatcher.clone(),
            cancel: Arc::new(AtomicBool::new(false)),
            last: Mutex::new(Last::default()),
            direct: AtomicBool::new(false),
            epoch: Instant::now(),
            last_direct_us: AtomicU64::new(0),
            leader_offline: AtomicBool::new(false),
        });
        let whole = br#"{"SUBSCRIBE":["subscribe","c",1]}"#.to_vec();
        let big = format!(
            r#"{{"SUBSCRIBE":["message","c","s 1 2\n{{\"pad\":\"{}\"}}"]}}"#,
            "x".repeat(3000)
        )
        .into_bytes();
        let (first, rest) = big.split_at(1000);
        let (second, third) = rest.split_at(1000);
        let reads = vec![whole, first.to_vec(), second.to_vec(), third.to_vec()];
        let (tx, rx) = bounded(64);
        let progress = Arc::new(AtomicU64::new(0));
        read_subscription(Chunks(reads), tx, progress.clone(), delivery);
        // The two reads that left the message incomplete, not the others.
        assert_eq!(progress.load(Ordering::Relaxed), 2000);
        let items: Vec<Incoming> = rx.try_iter().collect();
        assert!(matches!(
            items.as_slice(),
            [
                Incoming::Item(SubscriptionItem::Subscribed { .. }),
                Incoming::Item(SubscriptionItem::Message { .. }),
                Incoming::Closed(_)
            ]
        ));
        dispatcher.shutdown();
    }

    /// Probes anyone with the password can publish on the channel: one
    /// split over two reads is no activity of the leader's.
    #[test]
    fn a_probe_split_over_reads_is_not_progress() {
        let dispatcher = crate::dispatch::Dispatcher::new().unwrap();
        let probe = format!(
            r#"{{"SUBSCRIBE":["message","{}","p {}"]}}"#,
            "c".repeat(40),
            "A".repeat(64)
        )
        .into_bytes();
        assert!(probe.len() < LEADER_SIZED);
        let (first, second) = probe.split_at(probe.len() - 3);
        let reads = vec![first.to_vec(), second.to_vec()];
        let (tx, _rx) = bounded(64);
        let progress = Arc::new(AtomicU64::new(0));
        read_subscription(
            Chunks(reads),
            tx,
            progress.clone(),
            Arc::new(delivery(&dispatcher)),
        );
        assert_eq!(progress.load(Ordering::Relaxed), 0);
        dispatcher.shutdown();
    }

    fn delivery(dispatcher: &Arc<crate::dispatch::Dispatcher>) -> Delivery {
        Delivery {
            session: 1,
            name: Arc::new(CString::new("s").unwrap()),
            dispatcher: dispatcher.clone(),
            cancel: Arc::new(AtomicBool::new(false)),
            last: Mutex::new(Last::default()),
            direct: AtomicBool::new(true),
            epoch: Instant::now(),
            last_direct_us: AtomicU64::new(0),
            leader_offline: AtomicBool::new(false),
        }
    }

    /// A delta whose result would exceed 8 MiB (a 4.5 MiB state twice, its
    /// checksum right) is not delivered: the snapshot is read instead.
    /// A small edit rewrites the kept state in place once the callback
    /// has returned, and never a state a callback (or an event it kept)
    /// still holds; a forged edit changes nothing.
    #[test]
    fn edits_in_place_only_what_no_event_holds() {
        for keep in [false, true] {
            let dispatcher = crate::dispatch::Dispatcher::new().unwrap();
            let got = Arc::new(Mutex::new(Vec::new()));
            let kept = Arc::new(Mutex::new(Vec::new()));
            let (g, k) = (got.clone(), kept.clone());
            dispatcher.set_callback(Some(Arc::new(move |e: &Event| {
                if let Some(s) = &e.state {
                    lock(&g).push((e.seq, s.as_str().to_string(), s.as_ptr() as usize));
                    if keep {
                        lock(&k).push(e.clone());
                    }
                }
            })));
            dispatcher.register(1);
            let d = delivery(&dispatcher);
            let wait = |n: usize| {
                let until = Instant::now() + Duration::from_secs(20);
                while lock(&got).len() < n && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(2));
                }
                // The dispatcher lets go of the event after the callback.
                std::thread::sleep(Duration::from_millis(20));
            };
            let mut states = vec!["{\"wp\":[1.25,2.5],\"n\":\"caf\u{e9}\"}".repeat(300)];
            full(&d, 1, states[0].clone());
            wait(1);
            for (i, (from, to)) in [("1.25", "1.26"), ("2.5", "2.75"), ("caf\u{e9}", "cafe")]
                .into_iter()
                .enumerate()
            {
                let next = states[i].replacen(from, to, 1);
                let delta = crate::wire::delta::create(&states[i], &next);
                d.delta(i as u64 + 2, i as u64 + 1, 0, delta);
                states.push(next);
                wait(i + 2);
            }
            let forged = crate::wire::delta::create(&states[3], &states[0]).replacen(';', "1;", 1);
            d.delta(5, 4, 0, forged);
            assert_eq!(last(&d), (Some(4), states[3].clone()));
            assert_eq!(d.resync_at(), Some(ResyncDue::Now));
            let got = lock(&got).clone();
            let seen: Vec<_> = got.iter().map(|(q, s, _)| (*q, s.clone())).collect();
            let want: Vec<_> = (1..).zip(states.iter().cloned()).collect();
            assert_eq!(seen, want, "keep {keep}");
            let places: std::collections::HashSet<_> = got.iter().map(|g| g.2).collect();
            if keep {
                // Every event kept reads what was delivered, in its own buffer.
                let kept: Vec<_> = lock(&kept)
                    .iter()
                    .map(|e| e.state.as_ref().unwrap().as_str().to_string())
                    .collect();
                assert_eq!(kept, states);
                assert_eq!(places.len(), 4);
            } else {
                // The same buffer, edited (lengths +0, +1, -1: capacity kept).
                assert_eq!(places.len(), 1, "{got:?}");
            }
            dispatcher.shutdown();
        }
    }

    #[test]
    fn a_delta_whose_result_would_exceed_8_mib_is_not_delivered() {
        let dispatcher = crate::dispatch::Dispatcher::new().unwrap();
        let d = delivery(&dispatcher);
        let base = "x".repeat(4608 * 1024);
        let twice = base.repeat(2);
        assert!(twice.len() > protocol::MAX_STATE);
        let delta = crate::wire::delta::create(&base, &twice);
        assert!(delta.len() < 100, "{delta}");
        full(&d, 1, base.clone());
        d.delta(2, 1, 0, delta);
        assert_eq!(last(&d).0, Some(1));
        assert_eq!(d.resync_at(), Some(ResyncDue::Now));
        dispatcher.shutdown();
    }

    /// A snapshot carrying the state of `seq`.
    fn snap(seq: u64, state: String) -> Snapshot {
        Snapshot {
            seq,
            hb: Duration::from_secs(1),
            updated_ms: seq as i64 * 1000,
            state: Some((format!("id{seq}"), state)),
            heard: None,
        }
    }

    /// Delivers the state of `seq` as a snapshot would.
    fn full(d: &Delivery, seq: u64, state: String) {
        d.snapshot(&mut snap(seq, state));
    }

    fn last(d: &Delivery) -> (Option<u64>, String) {
        let l = lock(&d.last);
        (l.seq, l.state.as_str().to_string())
    }

    /// Deltas apply to the last state; one that arrives before its base
    /// (Webdis swaps adjacent messages) waits for it and is applied when
    /// it comes; one that waits longer asks for the snapshot; one that
    /// does not verify is never delivered.
    #[test]
    fn deltas_wait_for_their_base_and_are_verified() {
        let dispatcher = crate::dispatch::Dispatcher::new().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        dispatcher.set_callback(Some(Arc::new(move |e: &Event| {
            if let Some(s) = &e.state {
                lock(&g).push((e.seq, s.as_str().to_string()));
            }
        })));
        dispatcher.register(1);
        let d = delivery(&dispatcher);
        let s1 = "{\"wp\":[1,2,3],\"name\":\"caf\u{e9}\"}".repeat(20);
        let s2 = s1.replacen("caf\u{e9}", "caf\u{ea}", 1);
        let s3 = s2.replacen("[1,2,3]", "[1,2,3,4]", 1);
        full(&d, 5, s1.clone());
        // In order.
        d.delta(6, 5, 0, crate::wire::delta::create(&s1, &s2));
        assert_eq!(last(&d), (Some(6), s2.clone()));
        // Old and repeated deltas are ignored.
        d.delta(6, 5, 0, crate::wire::delta::create(&s1, &s2));
        assert_eq!(d.resync_at(), None);
        // Swapped: 8 (base 7) before 7 (base 6).
        let s4 = s3.replacen("[1,2,3,4]", "[4]", 1);
        d.delta(8, 7, 0, crate::wire::delta::create(&s3, &s4));
        assert_eq!(last(&d).0, Some(6));
        assert!(matches!(d.resync_at(), Some(ResyncDue::At(t)) if t > Instant::now()));
        d.delta(7, 6, 0, crate::wire::delta::create(&s2, &s3));
        assert_eq!(last(&d), (Some(8), s4.clone()));
        assert_eq!(d.resync_at(), None);
        // A delta that does not verify (its checksum) is not delivered: the
        // snapshot is read at once.
        let good = crate::wire::delta::create(&s4, &s1);
        let forged = format!(
            "{}0;",
            good.trim_end_matches(';')
                .trim_end_matches(|c: char| c.is_ascii_alphanumeric())
        );
        d.delta(9, 8, 0, forged);
        assert_eq!(last(&d).0, Some(8));
        assert_eq!(d.resync_at(), Some(ResyncDue::Now));
        d.resynced(&mut snap(9, s1.clone()));
        assert_eq!(last(&d), (Some(9), s1.clone()));
        assert_eq!(d.resync_at(), None);
        // A delta whose base never comes: the snapshot after HOLD.
        d.delta(11, 10, 0, crate::wire::delta::create(&s1, &s2));
        let Some(ResyncDue::At(at)) = d.resync_at() else {
            panic!("a held delta waits HOLD");
        };
        assert!(at > Instant::now() + HOLD / 2 && at <= Instant::now() + HOLD);
        d.resynced(&mut snap(11, s2.clone()));
        assert_eq!((last(&d), d.resync_at()), ((Some(11), s2.clone()), None));
        // Every delivered state was verified: the callback saw only these.
        let deadline = Instant::now() + Duration::from_secs(5);
        while lock(&got).last().map(|x| x.0) != Some(11) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let seen = lock(&got).clone();
        let all = [(5, &s1), (6, &s2), (7, &s3), (8, &s4), (9, &s1), (11, &s2)];
        for (seq, st) in &seen {
            assert!(all.iter().any(|(q, s)| q == seq && *s == st), "seq {seq}");
        }
        assert_eq!(seen.last().map(|x| x.0), Some(11));
        dispatcher.shutdown();
    }

    /// The states the callback saw, once `seq` is among them (or 5 s).
    fn seen_until(got: &Seen, seq: u64) -> Vec<(u64, String)> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !lock(got).iter().any(|x| x.0 == seq) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        lock(got).clone()
    }

    /// The states a callback saw, (seq, state).
    type Seen = Arc<Mutex<Vec<(u64, String)>>>;

    fn recording() -> (Arc<crate::dispatch::Dispatcher>, Seen) {
        let dispatcher = crate::dispatch::Dispatcher::new().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        dispatcher.set_callback(Some(Arc::new(move |e: &Event| {
            if let Some(s) = &e.state {
                lock(&g).push((e.seq, s.as_str().to_string()));
            }
        })));
        dispatcher.register(1);
        (dispatcher, got)
    }

    const A: &str = "0123456789abcdef0000000000000001";
    const B: &str = "0123456789abcdef0000000000000002";
    const C: &str = "0123456789abcdef0000000000000003";

    /// The two halves of a full state pair by publish id in either order
    /// (Webdis swaps adjacent messages); a delta on a paired state
    /// applies; `have` names the state held.
    #[test]
    fn headers_and_bodies_pair_by_publish_id_in_either_order() {
        let (dispatcher, got) = recording();
        let d = delivery(&dispatcher);
        assert_eq!(d.have(), "-");
        // Header first.
        d.message(format!("s 1 1000 {A}"));
        assert_eq!(last(&d).0, None);
        assert!(matches!(d.resync_at(), Some(ResyncDue::At(_))));
        d.message(format!("r {A}\n{{\"n\":1}}"));
        assert_eq!(last(&d), (Some(1), "{\"n\":1}".into()));
        assert_eq!(d.resync_at(), None);
        assert_eq!(d.have(), "1:1000");
        // Body first.
        d.message(format!("r {B}\n{{\"n\":2}}"));
        assert_eq!(last(&d).0, Some(1));
        assert!(matches!(d.resync_at(), Some(ResyncDue::At(_))));
        d.message(format!("s 2 2000 {B}"));
        assert_eq!(last(&d), (Some(2), "{\"n\":2}".into()));
        assert_eq!((d.resync_at(), d.have()), (None, "2:2000".into()));
        // A delta on it, then a pair whose halves straddle another pair's:
        // s3 s4 r3 r4 (a swap of r3 and s4).
        let s3 = "{\"n\":3}".to_string();
        d.message(format!(
            "d 3 2 3000\n{}",
            crate::wire::delta::create("{\"n\":2}", &s3)
        ));
        assert_eq!(last(&d), (Some(3), s3.clone()));
        assert_eq!(d.have(), "3:3000");
        d.message(format!("s 4 4000 {C}"));
        d.message(format!("s 5 5000 {A}"));
        d.message(format!("r {C}\n{{\"n\":4}}"));
        assert_eq!(last(&d).0, Some(4));
        d.message(format!("r {A}\n{{\"n\":5}}"));
        assert_eq!((last(&d).0, d.resync_at()), (Some(5), None));
        // Repeats and old halves change nothing and wait for nothing.
        d.message(format!("s 4 4000 {C}"));
        d.message(format!("r {C}\n{{\"n\":4}}"));
        d.message(format!("r {A}\n{{\"n\":5}}"));
        assert_eq!((last(&d).0, d.resync_at()), (Some(5), None));
        // The callback sees the newest states (the dispatcher may skip
        // some), each with its own state.
        let seen = seen_until(&got, 5);
        assert_eq!(seen.last().map(|x| x.0), Some(5));
        for (seq, state) in &seen {
            assert_eq!(*state, format!("{{\"n\":{seq}}}"));
        }
        dispatcher.shutdown();
    }

    /// A snapshot read while the subscription delivers carries a state
    /// already delivered (the same seq) or an older one: neither is
    /// delivered again, through a snapshot or a resync. (The snapshot's
    /// copies here differ in text only to tell them apart.)
    #[test]
    fn a_snapshot_of_the_same_or_an_older_seq_is_not_delivered() {
        let (dispatcher, got) = recording();
        let d = delivery(&dispatcher);
        d.message(format!("s 1 1000 {A}"));
        d.message(format!("r {A}\n{{\"n\":1}}"));
        assert_eq!(last(&d), (Some(1), "{\"n\":1}".into()));
        full(&d, 1, "{\"copy\":1}".into());
        assert_eq!(last(&d), (Some(1), "{\"n\":1}".into()), "the same seq");
        d.resynced(&mut snap(1, "{\"copy\":1}".into()));
        assert_eq!(last(&d), (Some(1), "{\"n\":1}".into()), "the same seq");
        d.message(format!("s 2 2000 {B}"));
        d.message(format!("r {B}\n{{\"n\":2}}"));
        assert_eq!(last(&d), (Some(2), "{\"n\":2}".into()));
        full(&d, 1, "{\"copy\":1}".into());
        assert_eq!(last(&d), (Some(2), "{\"n\":2}".into()), "an older seq");
        d.resynced(&mut snap(1, "{\"copy\":1}".into()));
        assert_eq!(last(&d), (Some(2), "{\"n\":2}".into()), "an older seq");
        full(&d, 3, "{\"n\":3}".into());
        // The callback saw only the subscription's states, seqs rising.
        let seen = seen_until(&got, 3);
        assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "{seen:?}");
        assert!(seen.iter().all(|x| !x.1.contains("copy")), "{seen:?}");
        dispatcher.shutdown();
    }

    /// A half whose other half does not come waits `HOLD`, then the
    /// snapshot is read; the snapshot's state replaces what waited.
    #[test]
    fn an_unpaired_half_reads_the_snapshot_after_hold() {
        for header in [true, false] {
            let dispatcher = crate::dispatch::Dispatcher::new().unwrap();
            let d = delivery(&dispatcher);
            full(&d, 1, "{}".into());
            let before = Instant::now();
            if header {
                d.message(format!("s 2 2000 {A}"));
            } else {
                d.message(format!("r {A}\n{{\"x\":2}}"));
            }
            let Some(ResyncDue::At(at)) = d.resync_at() else {
                panic!("an unpaired half waits HOLD");
            };
            assert!(at >= before + HOLD && at <= Instant::now() + HOLD);
            // A delta on the missing state waits too.
            d.delta(3, 2, 3000, "x".into());
            assert_eq!(last(&d).0, Some(1));
            d.resynced(&mut snap(3, "{\"x\":3}".into()));
            assert_eq!(last(&d), (Some(3), "{\"x\":3}".into()));
            assert_eq!(d.resync_at(), None);
            // The late half of the missing state is dropped now.
            if header {
                d.message(format!("r {A}\n{{\"x\":2}}"));
            } else {
                d.message(format!("s 2 2000 {A}"));
            }
            assert_eq!((last(&d).0, d.resync_at()), (Some(3), None));
            dispatcher.shutdown();
        }
    }

    /// A body is delivered only under the header of its own publish id:
    /// never under another's, whatever their order.
    #[test]
    fn a_body_is_never_delivered_under_another_publish_header() {
        let (dispatcher, got) = recording();
        let d = delivery(&dispatcher);
        full(&d, 1, "{}".into());
        d.message(format!("s 2 2000 {A}"));
        d.message(format!("r {B}\n{{\"wrong\":true}}"));
        assert_eq!(last(&d).0, Some(1));
        d.message(format!("r {A}\n{{\"right\":2}}"));
        assert_eq!(last(&d), (Some(2), "{\"right\":2}".into()));
        // B's body still waits for B's header: a snapshot is due.
        assert!(matches!(d.resync_at(), Some(ResyncDue::At(_))));
        // Body before a header of another id.
        d.message(format!("r {C}\n{{\"wrong\":3}}"));
        d.message(format!("s 3 3000 {A}"));
        assert_eq!(last(&d).0, Some(2));
        // More than two bodies waiting: the snapshot at once.
        d.message("r 0123456789abcdef0000000000000009\n{}".to_string());
        assert_eq!(d.resync_at(), Some(ResyncDue::Now));
        d.resynced(&mut snap(3, "{\"right\":3}".into()));
        let seen = seen_until(&got, 3);
        assert_eq!(seen.last().map(|x| x.0), Some(3));
        for (seq, state) in &seen {
            assert!(!state.contains("wrong"), "seq {seq}: {state}");
        }
        dispatcher.shutdown();
    }

    /// A snapshot that names no state (the follower holds the newest)
    /// delivers nothing and keeps the state held; one of an older state
    /// delivers nothing either.
    #[test]
    fn a_snapshot_without_state_keeps_the_state_held() {
        let dispatcher = crate::dispatch::Dispatcher::new().unwrap();
        let d = delivery(&dispatcher);
        full(&d, 4, "{\"a\":4}".into());
        let mut same = Snapshot::of(
            crate::wire::functions::Snapshot {
                seq: 4,
                updated_ms: 4000,
                hb_ms: 0,
                updated_age_ms: 10,
                heard_age_ms: 5,
                state: None,
            },
            Instant::now(),
        );
        assert_eq!(same.hb, Duration::from_millis(1));
        d.resynced(&mut same);
        d.snapshot(&mut same);
        assert_eq!(last(&d), (Some(4), "{\"a\":4}".into()));
        assert_eq!(d.have(), "4:4000");
        d.snapshot(&mut snap(3, "{\"a\":3}".into()));
        assert_eq!(last(&d), (Some(4), "{\"a\":4}".into()));
        dispatcher.shutdown();
    }

    /// The reader delivers swapped halves itself once the follower
    /// listens.
    #[test]
    fn the_reader_pairs_swapped_halves() {
        let (dispatcher, got) = recording();
        let d = Arc::new(delivery(&dispatcher));
        let msg = |p: String| {
            serde_json::to_vec(&serde_json::json!({"SUBSCRIBE": ["message", "c", p]})).unwrap()
        };
        let reads = vec![msg(format!("r {A}\nh 100")), msg(format!("s 7 7000 {A}"))];
        let (tx, _rx) = bounded(64);
        read_subscription(Chunks(reads), tx, Arc::new(AtomicU64::new(0)), d.clone());
        assert_eq!(seen_until(&got, 7), [(7, "h 100".to_string())]);
        dispatcher.shutdown();
    }
}
