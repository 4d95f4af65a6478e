//! The network side of a followed stream: the blocking calls a follow
//! makes (ms_connect, ms_params, ms_probe, ms_snapshot), run on the
//! caller's thread (the first ms_params and ms_connect) or on the
//! runtime's request workers (everything after), never on the reactor;
//! and the delivery of states to the dispatcher (a full state's header
//! and body paired by publish id, deltas applied to their base, whatever
//! Webdis swapped held a moment), for every member of a follow group.

use super::opening::Reached;
use super::session::ResyncDue;
use crate::dispatch::{Dispatcher, Event, StateText};
use crate::error::{Error, Result, Status};
use crate::kdf;
use crate::net::nodes::{Endpoints, Nodes};
use crate::net::transport::Webdis;
use crate::session::{params_of, Config, Hooks};
use crate::util::lock;
use crate::wire::functions::{self, Call, Joined};
use crate::wire::protocol::{self, ChannelMessage};
use std::ffi::CString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// ms_connect: checks the password's derived key; returns the stream's
/// channel (the reply carries it sealed with that key) and whether the
/// deployment's replicas carry its messages.
pub(super) fn stream_channel(
    conn: &Nodes,
    key: &str,
    password_key: &str,
    timeout: Duration,
) -> Result<(String, bool)> {
    let body = zeroize::Zeroizing::new(protocol::frame_body(&[password_key.as_bytes()]));
    let answered = conn.fcall_answered(&Call::connect(key), &[&body], timeout);
    let joined = Joined::of(answered.result?)?;
    let channel = protocol::open_sealed(&joined.channel_sealed, password_key, &answered.nonce)
        .ok_or_else(|| protocol::protocol_error("ms_connect"))?;
    Ok((channel, joined.on_replicas))
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
pub(super) const LEADER_SIZED: usize = 512;

/// One follower of a group: its session and the stream's name as its
/// events carry it.
#[derive(Clone)]
pub(super) struct Member {
    pub(super) session: u64,
    pub(super) name: Arc<CString>,
}

/// Delivers a follow group's states to each of its members. The newest
/// delivered seq is kept under a lock (the reactor delivers; the request
/// workers read `have` for ms_snapshot), so that states are never
/// delivered out of order, nor twice, whatever way they come (the
/// subscription, a snapshot, a resync).
pub(super) struct Delivery {
    /// Names the group in diagnostics (its first member's session).
    pub(super) session: u64,
    pub(super) dispatcher: Arc<Dispatcher>,
    /// The followers served, in the order they joined.
    pub(super) members: Mutex<Vec<Member>>,
    /// The last state delivered, and deltas waiting for their base.
    pub(super) last: Mutex<Last>,
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
    pub(super) fn new(session: u64, dispatcher: Arc<Dispatcher>) -> Delivery {
        Delivery {
            session,
            dispatcher,
            members: Mutex::new(Vec::new()),
            last: Mutex::new(Last::default()),
        }
    }

    /// A state to every member.
    fn push_state(&self, seq: u64, state: StateText) {
        let members = lock(&self.members);
        if let Some((last, others)) = members.split_last() {
            for m in others {
                self.dispatcher
                    .push(m.session, Event::state(&m.name, seq, state.clone()));
            }
            self.dispatcher
                .push(last.session, Event::state(&last.name, seq, state));
        }
    }

    /// An event to every member.
    pub(super) fn push_event(&self, kind: crate::dispatch::EventKind, status: Status) {
        for m in lock(&self.members).iter() {
            self.dispatcher
                .push(m.session, Event::new(kind, &m.name, status));
        }
    }

    /// The newest state delivered, to a member that just joined (the
    /// others had it already).
    pub(super) fn catch_up(&self, member: &Member) -> bool {
        let last = lock(&self.last);
        match last.seq {
            Some(seq) => {
                self.dispatcher.push(
                    member.session,
                    Event::state(&member.name, seq, last.state.clone()),
                );
                true
            }
            None => false,
        }
    }

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
        {
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
        if last.seq.is_none_or(|s| seq > s) {
            last.seq = Some(seq);
            last.updated_ms = updated_ms;
            last.id = id;
            if !last.state.same(&state) {
                // Its sums when a delta needs them.
                last.sums = None;
            }
            last.state = state;
            self.push_state(seq, last.state.clone());
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
pub(crate) struct Snapshot {
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

/// What the blocking calls of a follow group need: the stream and the
/// password's key. Shared with the request workers.
pub(super) struct Stream {
    pub(super) key: String,
    /// The stream's key derivation when the follow began.
    pub(super) params: kdf::Params,
    /// The password's derived key (the password itself is not kept).
    pub(super) password_key: zeroize::Zeroizing<String>,
    pub(super) channel: String,
    /// The deployment's replicas carry the channel's messages (ms_connect
    /// says so, again at every check of the stream): followers subscribe
    /// on a replica first; otherwise on the primary.
    pub(super) on_replicas: AtomicBool,
    pub(super) endpoints: Arc<Endpoints>,
    pub(super) config: Arc<Config>,
    pub(super) hooks: Hooks,
}

impl Stream {
    /// Checks that the stream still exists, with the password's key, on
    /// the channel followed. A stream started anew under the same name has
    /// another salt: replaced, without a wrong password counted.
    pub(super) fn check_stream(&self, conn: &Nodes) -> Result<()> {
        if params_of(conn, &self.key, self.config.timeout())? != self.params {
            return Err(replaced());
        }
        let (channel, on_replicas) =
            stream_channel(conn, &self.key, &self.password_key, self.config.timeout())?;
        if channel == self.channel {
            self.on_replicas.store(on_replicas, Ordering::Release);
            Ok(())
        } else {
            Err(replaced())
        }
    }

    /// Whether the deployment's replicas carry the channel's messages.
    pub(super) fn on_replicas(&self) -> bool {
        self.on_replicas.load(Ordering::Acquire)
    }

    /// The nodes to subscribe on, best first, for where the channel is
    /// carried (`Endpoints::follow_order`).
    pub(super) fn follow_order(&self) -> Vec<usize> {
        self.endpoints.follow_order(&self.key, self.on_replicas())
    }

    /// ms_snapshot, naming the state delivered last (`have`): the reply
    /// carries the newest state only when it is another.
    pub(super) fn snapshot(&self, conn: &Webdis, have: &str) -> Result<Snapshot> {
        let body = protocol::frame_body(&[self.channel.as_bytes()]);
        let sent = Instant::now();
        // A stream started anew under the same name has another channel,
        // so ms_snapshot answers MSNOTFOUND.
        let call = Call::snapshot(&self.key, have);
        let reply = conn.fcall(&call, &[&body], self.config.timeout())?;
        Ok(Snapshot::of(functions::Snapshot::of(reply)?, sent))
    }

    /// ms_probe, on the primary: publishes `p <token>` on the channel.
    /// Returns the node that answered (the primary) and how many of its
    /// subscriptions Redis delivered it to (a replica's subscribers get
    /// it through replication, when replicas carry the channel, and the
    /// primary does not count them).
    pub(super) fn probe(&self, nodes: &Nodes, token: &str, timeout: Duration) -> Result<Reached> {
        let body = protocol::frame_body(&[self.channel.as_bytes()]);
        let answered = nodes.fcall_answered(&Call::probe(&self.key, token), &[&body], timeout);
        let n = answered
            .result
            .and_then(|reply| functions::reached(&reply))?;
        Ok(Reached {
            node: answered.node,
            n,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(dispatcher: &Arc<crate::dispatch::Dispatcher>) -> Delivery {
        let d = Delivery::new(1, dispatcher.clone());
        lock(&d.members).push(Member {
            session: 1,
            name: Arc::new(CString::new("s").unwrap()),
        });
        d
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

    /// Every member gets every state; a member that joins later gets the
    /// newest state delivered (and nothing older) at once, and only newer
    /// ones after.
    #[test]
    fn every_member_gets_each_state_and_a_late_member_the_newest_at_once() {
        let dispatcher = crate::dispatch::Dispatcher::new().unwrap();
        let got: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
        let g = got.clone();
        let sessions = Arc::new(Mutex::new(std::collections::HashMap::new()));
        let s2 = sessions.clone();
        dispatcher.set_callback(Some(Arc::new(move |e: &Event| {
            if e.state.is_some() {
                let who = *lock(&s2).get(e.stream_name()).unwrap_or(&0);
                lock(&g).push((who, e.seq));
            }
        })));
        let member = |session: u64, name: &str| {
            lock(&sessions).insert(name.to_string(), session);
            dispatcher.register(session);
            Member {
                session,
                name: Arc::new(CString::new(name).unwrap()),
            }
        };
        let d = Delivery::new(1, dispatcher.clone());
        let (a, b) = (member(1, "a"), member(2, "b"));
        assert!(!d.catch_up(&a), "nothing delivered yet");
        lock(&d.members).push(a);
        full(&d, 1, "{}".into());
        let deadline = Instant::now() + Duration::from_secs(5);
        while lock(&got).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        full(&d, 2, "{}".into());
        assert!(d.catch_up(&b));
        lock(&d.members).push(b);
        while !lock(&got).contains(&(2, 2)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        full(&d, 2, "{}".into());
        full(&d, 3, "{}".into());
        while lock(&got).iter().filter(|x| x.1 == 3).count() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let seen = lock(&got).clone();
        let of =
            |who: u64| -> Vec<u64> { seen.iter().filter(|x| x.0 == who).map(|x| x.1).collect() };
        assert_eq!(*of(1).last().unwrap(), 3, "{seen:?}");
        assert!(of(1).windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        assert_eq!(of(2), [2, 3], "the newest at once, then newer ones");
        dispatcher.shutdown();
    }
}
