//! Followed streams, driven by the client's network thread (the reactor,
//! runtime/reactor.rs) with no thread of their own.
//!
//! Follows of the same stream in one client (the same endpoints, record
//! key and channel) form one **group**: one subscription, one `Session`
//! (presence, probes, recovery, resync: `session.rs`, its timing rules in
//! `liveness.rs`), one `Delivery` (link.rs); every state and event goes to
//! each member. A member that joins a group which delivered already gets
//! the newest state delivered at once; the last member gone drops the
//! group and closes its subscription.
//!
//! Owns (on the reactor): each group's non-blocking subscription
//! (net/subscription.rs, plain or TLS), its opening (the decisions of
//! `opening.rs`, carried out a step at a time: subscribe, await the
//! acknowledgement, prove the subscription with a probe, await its echo,
//! read the snapshot), and the one call out at a time (a probe, a
//! recovery's check of the stream, a snapshot) on the runtime's request
//! workers, on connections of its own that are shut down when the call is
//! given up.
//! Never does: block on the reactor (the calls run on the workers; the
//! caller's thread runs ms_params, the KDF and ms_connect of a new follow,
//! so that a wrong password is reported synchronously), or decide
//! anything `Session` or `Opening` decides: this is their driver.
//!
//! Late join: the group subscribes, waits for Webdis' acknowledgement,
//! proves the subscription end to end (a probe published through the
//! functions must come back on it), then reads the snapshot, and from then
//! on delivers only states newer than the last one delivered.

mod link;
mod opening;
mod session;

use crate::dispatch::EventKind;
use crate::error::{Error, Kind, Result, Status};
use crate::kdf::{KeyCache, Secret};
use crate::net::nodes::Nodes;
use crate::net::poller::Poller;
use crate::net::subscription::Subscription;
use crate::runtime::requests::{Call, Queue, Task};
use crate::runtime::timers::{TimerKey, Timers};
use crate::runtime::{Command, Handle};
use crate::session::backoff::Backoff;
use crate::session::{key_of, params_of, Config, Hooks};
use crate::util::{lock, random_hex};
use crate::wire::protocol::{self, ChannelMessage, SubscriptionItem};
use crossbeam_channel::{bounded, Sender};
use link::{disconnected, stream_channel, Delivery, Member, Snapshot, Stream, LEADER_SIZED};
use opening::{
    probe_returned, reach_of, subscription_failure, OpenAction, Opening, Proof, Reached, Stage,
};
use session::{Action, Heard, JobDone, Resubscription, Session};
use std::collections::HashMap;
use std::ffi::CString;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Handle kept by the client for a followed stream. It is registered
/// with the client before the follow starts, so that a callback handling
/// the first state can already disconnect it.
pub struct Follow {
    pub session: u64,
    state: Mutex<FollowState>,
}

#[derive(Default)]
struct FollowState {
    cancelled: bool,
    /// The reactor the follow was handed to.
    runtime: Option<Handle>,
}

/// A follow handed to the reactor: it joins its stream's group, or starts
/// one.
pub struct Joining {
    member: Member,
    stream: Arc<Stream>,
    /// The addresses of each endpoint, resolved on the caller's thread.
    addrs: Vec<Vec<SocketAddr>>,
    /// Answered once the current state is queued for the member (or the
    /// follow failed).
    ready: Sender<Result<()>>,
}

/// The addresses of each endpoint (none for one that cannot be resolved:
/// subscribing there fails as unreachable). Blocks on the system resolver
/// for names: never called on the reactor.
fn resolve_all(endpoints: &crate::net::nodes::Endpoints) -> Vec<Vec<SocketAddr>> {
    (0..endpoints.len())
        .map(|i| endpoints.get(i).resolve().unwrap_or_default())
        .collect()
}

impl Follow {
    pub fn new(session: u64) -> Follow {
        Follow {
            session,
            state: Mutex::new(FollowState::default()),
        }
    }

    /// Checks the password (on this thread), then hands the follow to the
    /// reactor; returns once the current state is queued for the
    /// callback.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        &self,
        name: Arc<CString>,
        password: &str,
        keys: &KeyCache,
        control: &Nodes,
        config: Arc<Config>,
        hooks: Hooks,
        runtime: Handle,
    ) -> Result<()> {
        let key = key_of(name.to_str().unwrap_or(""));
        // The stream's key derivation, then the password's key: kept (not
        // the password) to check the stream again after a lost
        // subscription.
        let params = params_of(control, &key, config.timeout())?;
        let password_key = keys.derive(&params, Secret::Password, password);
        let (channel, on_replicas) =
            stream_channel(control, &key, &password_key, config.timeout())?;
        let endpoints = control.endpoints().clone();
        let addrs = resolve_all(&endpoints);
        let stream = Arc::new(Stream {
            key,
            params,
            password_key,
            channel,
            on_replicas: AtomicBool::new(on_replicas),
            endpoints,
            config,
            hooks,
        });
        let (ready, ready_rx) = bounded::<Result<()>>(1);
        let joining = Joining {
            member: Member {
                session: self.session,
                name,
            },
            stream,
            addrs,
            ready,
        };
        {
            // Either cancel() sees the runtime and tells it, or this sees
            // the cancel flag: a disconnect is never missed.
            let mut st = lock(&self.state);
            if st.cancelled {
                return Err(disconnected());
            }
            if !runtime.send(Command::Follow(Box::new(joining))) {
                return Err(Error::new(
                    Status::MS_ERR_INTERNAL,
                    "the client's network thread has ended",
                ));
            }
            st.runtime = Some(runtime);
        }
        ready_rx.recv().unwrap_or_else(|_| Err(disconnected()))
    }

    /// Ends the follow: the reactor drops the member (and its group when
    /// it was the last), breaking any call of the group's in flight;
    /// waits up to `wait` for that (not on the reactor itself).
    pub fn cancel(&self, wait: Duration) {
        let runtime = {
            let mut st = lock(&self.state);
            st.cancelled = true;
            st.runtime.take()
        };
        if let Some(rt) = runtime {
            let (done, done_rx) = bounded(1);
            if rt.send(Command::Unfollow {
                session: self.session,
                done,
            }) && !rt.on_reactor()
            {
                let _ = done_rx.recv_timeout(wait);
            }
        }
    }
}

/// Why a group's session ends.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The stream ended (stopped, replaced, or the password changed).
    Ended,
    Cancelled,
}

/// What a follow group's call on a worker returned.
pub enum FollowReply {
    /// The session's probe carrying this token: the subscriptions it
    /// reached, when known.
    Probe(String, Result<Option<u64>>),
    /// The probe proving a subscription being opened.
    OpenProbe(Result<Reached>),
    /// The snapshot of an opening.
    Snapshot(Result<Snapshot>),
    /// The snapshot read for deltas.
    Resync(Result<Snapshot>),
    /// A recovery's check of the stream, with each endpoint's addresses
    /// resolved again.
    Checked(Result<Vec<Vec<SocketAddr>>>),
}

/// Follows of one stream share a group.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct GroupKey {
    /// The endpoint URLs, in order.
    endpoints: String,
    key: String,
    /// The channel implies the password.
    channel: String,
}

impl GroupKey {
    fn of(stream: &Stream) -> GroupKey {
        let endpoints = (0..stream.endpoints.len())
            .map(|i| stream.endpoints.get(i).base())
            .collect::<Vec<_>>()
            .join(",");
        GroupKey {
            endpoints,
            key: stream.key.clone(),
            channel: stream.channel.clone(),
        }
    }
}

/// The subscription in place (or being opened).
struct Sock {
    sub: Subscription,
    /// The poller key: the group and a generation, so that a readiness of
    /// an earlier socket of the group is never taken for this one's.
    key: usize,
    /// Bytes read when last looked at (the LEADER_SIZED rule).
    received: u64,
}

/// The step of an opening.
#[derive(Debug)]
enum Step {
    /// A recovery's check of the stream is out.
    Check,
    /// Subscribed on `node`; awaiting the acknowledgement by `by`.
    Ack { node: usize, by: Instant },
    /// The probe proving it is out (its echo may come first).
    Probe {
        node: usize,
        token: String,
        echoed: bool,
    },
    /// The probe was published; awaiting its echo by `by`.
    Echo { node: usize, token: String },
    /// Proven; the snapshot is out.
    Snapshot { node: usize },
    /// An attempt on `node` failed; the next one begins at the opening's
    /// timer (`OpenAction::Pause`).
    Pause { node: usize },
}

impl Step {
    /// The node of the attempt (0 before the first).
    fn node(&self) -> usize {
        match *self {
            Step::Ack { node, .. }
            | Step::Probe { node, .. }
            | Step::Echo { node, .. }
            | Step::Snapshot { node }
            | Step::Pause { node } => node,
            Step::Check => 0,
        }
    }
}

struct Open {
    machine: Opening,
    /// A recovery (the session's job) rather than the first opening.
    recovery: bool,
    step: Step,
}

/// A call out on a worker.
struct Out {
    id: u64,
    nodes: Nodes,
}

struct Group {
    id: u32,
    key: GroupKey,
    stream: Arc<Stream>,
    delivery: Delivery,
    addrs: Vec<Vec<SocketAddr>>,
    /// From the first opening's success on.
    session: Option<Session>,
    sock: Option<Sock>,
    sock_gen: u32,
    opening: Option<Open>,
    out: Option<Out>,
    /// A recovery's snapshot, delivered on `Action::Resubscribed`.
    recovered: Option<Snapshot>,
    /// Members waiting for the group to be ready (its first opening or a
    /// recovery): they join `delivery`'s members then. A member that
    /// joined a group in recovery gives up at its deadline.
    waiting: Vec<(Member, Sender<Result<()>>, Instant)>,
    /// What the subscription said while the snapshot of its opening was
    /// out, heard once it is delivered.
    backlog: Vec<SubscriptionItem>,
    backlog_closed: Option<Error>,
}

impl Group {
    fn is_empty(&self) -> bool {
        self.waiting.is_empty() && lock(&self.delivery.members).is_empty()
    }

    fn label(&self) -> u64 {
        self.delivery.session
    }
}

/// What the reactor lends the follows while it drives them.
pub struct Ctx<'a> {
    pub poller: &'a Poller,
    pub timers: &'a mut Timers,
    pub jobs: Option<&'a Sender<Task>>,
    /// Where a group's calls wait for a worker (handed out by the reactor).
    pub queue: &'a mut Queue<Task>,
    pub next_id: &'a mut u64,
}

/// Every follow group of a client, on the reactor.
#[derive(Default)]
pub struct Follows {
    groups: HashMap<u32, Group>,
    by_key: HashMap<GroupKey, u32>,
    /// Follow session -> its group.
    members: HashMap<u64, u32>,
    next_group: u32,
}

fn sock_key(group: u32, generation: u32) -> usize {
    ((group as usize) << 32) | generation as usize
}

fn now() -> Instant {
    Instant::now()
}

impl Follows {
    /// A follow joins its stream's group, or starts one.
    pub fn join(&mut self, j: Joining, ctx: &mut Ctx) {
        let Joining {
            member,
            stream,
            addrs,
            ready,
        } = j;
        let key = GroupKey::of(&stream);
        if let Some(&gid) = self.by_key.get(&key) {
            self.members.insert(member.session, gid);
            let g = self.groups.get_mut(&gid).expect("indexed group");
            if g.session.is_some() && g.opening.is_none() && g.sock.is_some() {
                // Listening: the newest state delivered, at once.
                g.delivery.catch_up(&member);
                lock(&g.delivery.members).push(member);
                let _ = ready.send(Ok(()));
            } else {
                let deadline = now() + g.stream.config.timeout();
                g.waiting.push((member, ready, deadline));
                if g.session.is_some() {
                    // A turn now: the group's timer takes this deadline in.
                    ctx.timers.set(TimerKey::Group(gid), now());
                }
            }
            return;
        }
        let gid = loop {
            self.next_group = self.next_group.wrapping_add(1);
            if !self.groups.contains_key(&self.next_group) {
                break self.next_group;
            }
        };
        self.members.insert(member.session, gid);
        let delivery = Delivery::new(member.session, stream.hooks.dispatcher.clone());
        let order = stream.follow_order();
        let machine = Opening::new(now(), stream.config.timeout(), order);
        let group = Group {
            id: gid,
            key: key.clone(),
            stream,
            delivery,
            addrs,
            session: None,
            sock: None,
            sock_gen: 0,
            opening: Some(Open {
                machine,
                recovery: false,
                step: Step::Check,
            }),
            out: None,
            recovered: None,
            waiting: vec![(member, ready, now())],
            backlog: Vec::new(),
            backlog_closed: None,
        };
        self.by_key.insert(key, gid);
        self.groups.insert(gid, group);
        let action = {
            let g = self.groups.get_mut(&gid).expect("inserted");
            g.opening.as_mut().expect("opening").machine.next(now())
        };
        self.open_step(gid, action, ctx);
    }

    /// A follow leaves its group; the group goes with its last member.
    pub fn leave(&mut self, session: u64, ctx: &mut Ctx) {
        let Some(gid) = self.members.remove(&session) else {
            return;
        };
        let Some(g) = self.groups.get_mut(&gid) else {
            return;
        };
        lock(&g.delivery.members).retain(|m| m.session != session);
        // A member still waiting: its connect returns "disconnected".
        g.waiting.retain(|(m, _, _)| m.session != session);
        if g.is_empty() {
            self.drop_group(gid, ctx);
        }
    }

    /// Every group goes (the client is freed).
    pub fn shut_down(&mut self, ctx: &mut Ctx) {
        let ids: Vec<u32> = self.groups.keys().copied().collect();
        for gid in ids {
            self.drop_group(gid, ctx);
        }
    }

    fn drop_group(&mut self, gid: u32, ctx: &mut Ctx) {
        let Some(mut g) = self.groups.remove(&gid) else {
            return;
        };
        if self.by_key.get(&g.key) == Some(&gid) {
            self.by_key.remove(&g.key);
        }
        for m in lock(&g.delivery.members).iter() {
            self.members.remove(&m.session);
        }
        for (m, _, _) in &g.waiting {
            self.members.remove(&m.session);
        }
        close_sock(&mut g, ctx);
        abandon(&mut g, ctx);
        ctx.timers.cancel(&TimerKey::Group(gid));
        ctx.timers.cancel(&TimerKey::Opening(gid));
    }

    /// A timer of the follows fired.
    pub fn timer(&mut self, key: TimerKey, ctx: &mut Ctx) {
        match key {
            TimerKey::Group(gid) => self.drive(gid, false, ctx),
            TimerKey::Opening(gid) => {
                self.attempt_timed_out(gid, ctx);
                // A recovery that failed for good: the session's next
                // wake (its retry) is set again.
                self.drive(gid, false, ctx);
            }
            _ => {}
        }
    }

    /// A socket of the follows is ready.
    pub fn socket_ready(&mut self, key: usize, ctx: &mut Ctx) {
        let gid = (key >> 32) as u32;
        let Some(g) = self.groups.get_mut(&gid) else {
            return;
        };
        let Some(sock) = g.sock.as_mut() else {
            return;
        };
        if sock.key != key {
            return;
        }
        let mut items = Vec::new();
        let result = sock.sub.on_ready(&mut items);
        let received = sock.sub.received();
        // Part of a message arrived: activity, though no message is
        // complete yet. Only a message longer than any probe counts (a
        // state or delta, which only the leader can cause): anyone with
        // the password can publish probes on the channel, and they must
        // not pass for the leader.
        let bytes = leader_bytes(sock.received, received, sock.sub.pending());
        sock.received = received;
        if result.is_ok() {
            let interest = sock.sub.interest();
            if let Err(e) = ctx.poller.rearm(&sock.sub, sock.key, interest) {
                crate::util::debug_log!("follow {}: cannot watch the subscription: {e}", g.label());
            }
        }
        let now = now();
        for item in items {
            if !self.groups.contains_key(&gid) {
                return;
            }
            self.item(gid, item, now, ctx);
        }
        if let Err(e) = result {
            self.sock_failed(gid, e, ctx);
        }
        self.drive(gid, bytes, ctx);
    }

    /// A call of a group's came back.
    pub fn call_done(&mut self, gid: u32, id: u64, reply: FollowReply, ctx: &mut Ctx) {
        let Some(g) = self.groups.get_mut(&gid) else {
            return;
        };
        if g.out.as_ref().map(|o| o.id) != Some(id) {
            // Given up (the subscription was lost meanwhile).
            return;
        }
        g.out = None;
        let now = now();
        match reply {
            FollowReply::Probe(token, reached) => {
                let Some(s) = g.session.as_mut() else { return };
                let actions = s.job_done(now, JobDone::Probe(token, reached), false);
                self.carry_out(gid, actions, ctx);
            }
            FollowReply::Resync(result) => {
                let done = match result {
                    Ok(mut snap) => {
                        let heard = snap.heard;
                        g.delivery.resynced(&mut snap);
                        JobDone::Resync(heard)
                    }
                    Err(e) => {
                        crate::util::debug_log!(
                            "follow {}: snapshot for deltas failed: {}",
                            g.label(),
                            e.message
                        );
                        g.delivery.resync_failed();
                        JobDone::Resync(None)
                    }
                };
                let Some(s) = g.session.as_mut() else { return };
                let actions = s.job_done(now, done, false);
                self.carry_out(gid, actions, ctx);
            }
            FollowReply::Checked(result) => match result {
                Ok(addrs) => {
                    g.addrs = addrs;
                    let order = g.stream.follow_order();
                    let timeout = g.stream.config.timeout();
                    let Some(open) = g.opening.as_mut() else {
                        return;
                    };
                    // The opening's time starts now, as it did after the
                    // check.
                    open.machine = Opening::new(now, timeout, order);
                    let action = open.machine.next(now);
                    self.open_step(gid, action, ctx);
                }
                Err(e) => self.opening_failed(gid, e, ctx),
            },
            FollowReply::OpenProbe(result) => {
                let Some(open) = g.opening.as_mut() else {
                    return;
                };
                let (node, token, echoed) = match &open.step {
                    Step::Probe {
                        node,
                        token,
                        echoed,
                        ..
                    } => (*node, token.clone(), *echoed),
                    _ => return,
                };
                match probe_returned(result, node, g.stream.on_replicas(), echoed) {
                    Proof::Proven => self.read_snapshot(gid, node, ctx),
                    Proof::AwaitEcho => open.step = Step::Echo { node, token },
                    Proof::Failed(e) => self.attempt_failed(gid, Stage::Subscription, e, ctx),
                    Proof::Elsewhere { node, error } => {
                        self.attempt_ended(gid, Stage::Subscription, error, Some(node), ctx)
                    }
                }
            }
            FollowReply::Snapshot(result) => match result {
                Ok(snap) => self.opened(gid, snap, ctx),
                Err(e) => self.attempt_failed(gid, Stage::Snapshot, e, ctx),
            },
        }
        self.drive(gid, false, ctx);
    }

    /// The session's turn: what is due now, carried out; its timer set to
    /// its next wake (whatever call is out).
    fn drive(&mut self, gid: u32, bytes: bool, ctx: &mut Ctx) {
        let Some(g) = self.groups.get_mut(&gid) else {
            return;
        };
        let Some(s) = g.session.as_mut() else {
            return;
        };
        let actions = s.tick(now(), None, bytes, g.delivery.resync_at());
        self.carry_out(gid, actions, ctx);
        let Some(g) = self.groups.get_mut(&gid) else {
            return;
        };
        let now = now();
        // Members that joined during a recovery that takes too long.
        let (late, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut g.waiting)
            .into_iter()
            .partition(|w| w.2 <= now);
        g.waiting = waiting;
        for (m, ready, _) in late {
            self.members.remove(&m.session);
            let _ = ready.send(Err(Error::new(
                Status::MS_ERR_UNAVAILABLE,
                "the stream's subscription is lost and was not recovered in time",
            )));
        }
        if g.is_empty() {
            return self.drop_group(gid, ctx);
        }
        if let Some(s) = g.session.as_ref() {
            let mut at = s.next_wake(now, g.delivery.resync_at());
            if let Some(first) = g.waiting.iter().map(|w| w.2).min() {
                at = at.min(first);
            }
            ctx.timers.set(TimerKey::Group(gid), at);
        }
    }

    /// One item of the group's subscription.
    fn item(&mut self, gid: u32, item: SubscriptionItem, now: Instant, ctx: &mut Ctx) {
        let Some(g) = self.groups.get_mut(&gid) else {
            return;
        };
        if let Some(open) = g.opening.as_mut() {
            enum Then {
                Prove(usize, Instant),
                Snapshot(usize),
                Nothing,
            }
            let then = match &mut open.step {
                Step::Ack { node, by } => {
                    let acked = matches!(&item, SubscriptionItem::Subscribed { channel }
                        if *channel == g.stream.channel);
                    if acked {
                        Then::Prove(*node, *by)
                    } else {
                        Then::Nothing
                    }
                }
                Step::Probe { token, echoed, .. } => {
                    if is_echo(&item, token) {
                        *echoed = true;
                    }
                    Then::Nothing
                }
                Step::Echo { node, token, .. } => {
                    if is_echo(&item, token) {
                        Then::Snapshot(*node)
                    } else {
                        Then::Nothing
                    }
                }
                Step::Snapshot { .. } => {
                    g.backlog.push(item);
                    Then::Nothing
                }
                Step::Check | Step::Pause { .. } => Then::Nothing,
            };
            match then {
                Then::Prove(node, by) => self.prove(gid, node, by, ctx),
                Then::Snapshot(node) => self.read_snapshot(gid, node, ctx),
                Then::Nothing => {}
            }
            return;
        }
        let heard = match item {
            SubscriptionItem::Message { payload, .. } => {
                if link::is_state_message(&payload) {
                    g.delivery.message(payload);
                    Heard::State
                } else {
                    match protocol::parse_channel_message(payload) {
                        Some(ChannelMessage::Heartbeat { interval_ms }) => {
                            Heard::Heartbeat(Duration::from_millis(interval_ms))
                        }
                        Some(ChannelMessage::Probe { nonce }) => Heard::Probe(nonce),
                        Some(ChannelMessage::Ended) => Heard::Ended,
                        _ => Heard::Other,
                    }
                }
            }
            _ => Heard::Other,
        };
        let Some(s) = g.session.as_mut() else { return };
        let actions = s.heard(now, heard);
        self.carry_out(gid, actions, ctx);
    }

    /// The subscription failed (or Webdis closed it).
    fn sock_failed(&mut self, gid: u32, e: Error, ctx: &mut Ctx) {
        let Some(g) = self.groups.get_mut(&gid) else {
            return;
        };
        if let Some(open) = g.opening.as_mut() {
            if let Step::Snapshot { .. } = open.step {
                // Heard once the snapshot is delivered, as everything
                // the subscription said before.
                close_sock(g, ctx);
                g.backlog_closed = Some(e);
            } else {
                self.attempt_failed(gid, Stage::Subscription, subscription_failure(e), ctx);
            }
            return;
        }
        close_sock(g, ctx);
        let Some(s) = g.session.as_mut() else { return };
        let actions = s.heard(now(), Heard::Closed(e));
        self.carry_out(gid, actions, ctx);
    }

    /// Carries out an opening's decision.
    fn open_step(&mut self, gid: u32, action: OpenAction, ctx: &mut Ctx) {
        let Some(g) = self.groups.get_mut(&gid) else {
            return;
        };
        let (node, by) = match action {
            OpenAction::Subscribe { node, by } => (node, by),
            OpenAction::Failed(e) => return self.opening_failed(gid, e, ctx),
            OpenAction::Pause { until } => {
                close_sock(g, ctx);
                abandon(g, ctx);
                if let Some(open) = g.opening.as_mut() {
                    open.step = Step::Pause {
                        node: open.step.node(),
                    };
                }
                ctx.timers.set(TimerKey::Opening(gid), until);
                return;
            }
        };
        close_sock(g, ctx);
        abandon(g, ctx);
        g.backlog.clear();
        g.backlog_closed = None;
        let endpoint = g.stream.endpoints.get(node).clone();
        let subscribed = match g.addrs.get(node).and_then(|a| a.first()) {
            Some(&addr) => Subscription::connect(endpoint.clone(), addr, &g.stream.channel),
            None => Err(Error::new(
                Status::MS_ERR_UNAVAILABLE,
                format!("cannot resolve the host of {}", endpoint.base()),
            )
            .kinded(Kind::Unreachable)),
        };
        let sub = match subscribed {
            Ok(sub) => sub,
            Err(e) => {
                if let Some(open) = g.opening.as_mut() {
                    open.step = Step::Ack { node, by };
                }
                return self.attempt_failed(gid, Stage::Subscription, e, ctx);
            }
        };
        g.sock_gen = g.sock_gen.wrapping_add(1);
        let key = sock_key(gid, g.sock_gen);
        // SAFETY: `close_sock` deletes it from the poller before the
        // subscription (and its socket) is dropped.
        let watched = unsafe { ctx.poller.add(&sub, key, sub.interest()) };
        if let Err(e) = watched {
            if let Some(open) = g.opening.as_mut() {
                open.step = Step::Ack { node, by };
            }
            let e = Error::new(
                Status::MS_ERR_INTERNAL,
                format!("cannot watch the subscription: {e}"),
            );
            return self.attempt_failed(gid, Stage::Subscription, e, ctx);
        }
        g.sock = Some(Sock {
            sub,
            key,
            received: 0,
        });
        if let Some(open) = g.opening.as_mut() {
            open.step = Step::Ack { node, by };
        }
        ctx.timers.set(TimerKey::Opening(gid), by);
    }

    /// Acknowledged: the probe that proves the subscription.
    fn prove(&mut self, gid: u32, node: usize, by: Instant, ctx: &mut Ctx) {
        let Some(g) = self.groups.get_mut(&gid) else {
            return;
        };
        let token = random_hex(8).unwrap_or_else(|_| format!("{:x}{gid:x}", g.label()));
        let stream = g.stream.clone();
        let t = token.clone();
        let left = by
            .saturating_duration_since(now())
            .max(Duration::from_millis(1));
        let submitted = submit(g, ctx, None, move |nodes| {
            FollowReply::OpenProbe(stream.probe(nodes, &t, left))
        });
        match submitted {
            Ok(()) => {
                if let Some(open) = g.opening.as_mut() {
                    open.step = Step::Probe {
                        node,
                        token,
                        echoed: false,
                    };
                }
            }
            Err(e) => self.attempt_failed(gid, Stage::Subscription, e, ctx),
        }
    }

    /// Proven: the snapshot, on the node subscribed on.
    fn read_snapshot(&mut self, gid: u32, node: usize, ctx: &mut Ctx) {
        let Some(g) = self.groups.get_mut(&gid) else {
            return;
        };
        ctx.timers.cancel(&TimerKey::Opening(gid));
        let stream = g.stream.clone();
        let have = g.delivery.have();
        let submitted = submit(g, ctx, Some(node), move |nodes| {
            FollowReply::Snapshot(stream.snapshot(nodes.node(node), &have))
        });
        match submitted {
            Ok(()) => {
                if let Some(open) = g.opening.as_mut() {
                    open.step = Step::Snapshot { node };
                }
            }
            Err(e) => self.attempt_failed(gid, Stage::Snapshot, e, ctx),
        }
    }

    /// The attempt's time is over.
    fn attempt_timed_out(&mut self, gid: u32, ctx: &mut Ctx) {
        let Some(g) = self.groups.get(&gid) else {
            return;
        };
        let Some(open) = g.opening.as_ref() else {
            return;
        };
        let what = match open.step {
            Step::Ack { .. } => "acknowledge the subscription",
            Step::Probe { .. } | Step::Echo { .. } => "deliver a probe on the subscription",
            Step::Pause { .. } => {
                let next = self
                    .groups
                    .get_mut(&gid)
                    .and_then(|g| g.opening.as_mut())
                    .map(|open| open.machine.next(now()));
                if let Some(next) = next {
                    self.open_step(gid, next, ctx);
                }
                return;
            }
            Step::Check | Step::Snapshot { .. } => return,
        };
        let e = Error::new(
            Status::MS_ERR_TIMEOUT,
            format!("Webdis did not {what} in time"),
        );
        self.attempt_failed(gid, Stage::Subscription, subscription_failure(e), ctx);
    }

    /// The attempt failed at `stage`: what `Opening` decides.
    fn attempt_failed(&mut self, gid: u32, stage: Stage, e: Error, ctx: &mut Ctx) {
        self.attempt_ended(gid, stage, e, None, ctx)
    }

    /// The current attempt failed (`attempt_failed`); `primary_at`: the
    /// node that answered its probe when only the primary carries the
    /// channel and the subscription is elsewhere (the next attempt goes
    /// there, `Opening::elsewhere`).
    fn attempt_ended(
        &mut self,
        gid: u32,
        stage: Stage,
        e: Error,
        primary_at: Option<usize>,
        ctx: &mut Ctx,
    ) {
        let Some(g) = self.groups.get_mut(&gid) else {
            return;
        };
        close_sock(g, ctx);
        abandon(g, ctx);
        ctx.timers.cancel(&TimerKey::Opening(gid));
        let label = g.label();
        let Some(open) = g.opening.as_mut() else {
            return;
        };
        let node = open.step.node();
        let base = g.stream.endpoints.get(node).base().to_string();
        crate::util::debug_log!(
            "subscribe {} at {base}: {stage:?} failed ({:?}): {}",
            label,
            e.kind,
            e.message
        );
        let verdict = match primary_at {
            Some(primary) => open.machine.elsewhere(now(), primary, e, &base),
            None => open.machine.failed(now(), stage, e, &base),
        };
        if let Some(failed) = verdict.node_failed {
            g.stream.endpoints.failed(failed);
        }
        self.open_step(gid, verdict.then, ctx);
    }

    /// The opening failed for good.
    fn opening_failed(&mut self, gid: u32, e: Error, ctx: &mut Ctx) {
        let Some(g) = self.groups.get_mut(&gid) else {
            return;
        };
        close_sock(g, ctx);
        abandon(g, ctx);
        ctx.timers.cancel(&TimerKey::Opening(gid));
        let Some(open) = g.opening.take() else { return };
        if open.recovery {
            let Some(s) = g.session.as_mut() else { return };
            let actions = s.job_done(now(), JobDone::Recovered(Err(e)), false);
            self.carry_out(gid, actions, ctx);
        } else {
            for (_, ready, _) in g.waiting.drain(..) {
                let _ = ready.send(Err(e.clone()));
            }
            self.drop_group(gid, ctx);
        }
    }

    /// Subscribed, proven, and the snapshot read.
    fn opened(&mut self, gid: u32, mut snap: Snapshot, ctx: &mut Ctx) {
        let Some(g) = self.groups.get_mut(&gid) else {
            return;
        };
        let Some(open) = g.opening.take() else { return };
        let node = match open.step {
            Step::Snapshot { node } => node,
            _ => 0,
        };
        let now = now();
        if open.recovery {
            let resub = Resubscription {
                node,
                hb: snap.hb,
                heard: snap.heard,
            };
            g.recovered = Some(snap);
            let Some(s) = g.session.as_mut() else { return };
            let actions = s.job_done(now, JobDone::Recovered(Ok(resub)), false);
            self.carry_out(gid, actions, ctx);
        } else {
            let token = random_hex(8).unwrap_or_else(|_| format!("{:x}{gid:x}", g.label()));
            let backoff = Backoff::new(g.label());
            g.session = Some(Session::new(now, node, snap.hb, token, backoff));
            g.delivery.snapshot(&mut snap);
            self.admit_waiting(gid);
            self.replay_backlog(gid, ctx);
        }
    }

    /// Members waiting for the group join it: the newest state delivered
    /// is queued for each, then their connect returns.
    fn admit_waiting(&mut self, gid: u32) {
        let Some(g) = self.groups.get_mut(&gid) else {
            return;
        };
        for (member, ready, _) in g.waiting.drain(..) {
            g.delivery.catch_up(&member);
            lock(&g.delivery.members).push(member);
            let _ = ready.send(Ok(()));
        }
    }

    /// What the subscription said while the snapshot was out.
    fn replay_backlog(&mut self, gid: u32, ctx: &mut Ctx) {
        let Some(g) = self.groups.get_mut(&gid) else {
            return;
        };
        let items = std::mem::take(&mut g.backlog);
        let closed = g.backlog_closed.take();
        let now = now();
        for item in items {
            self.item(gid, item, now, ctx);
        }
        if let Some(e) = closed {
            self.sock_failed(gid, e, ctx);
        }
    }

    /// Carries out the session's actions (and those of its answers to
    /// calls that could not start).
    fn carry_out(&mut self, gid: u32, mut actions: Vec<Action>, ctx: &mut Ctx) {
        let mut i = 0;
        while i < actions.len() {
            let action = std::mem::replace(&mut actions[i], Action::Log(String::new()));
            i += 1;
            let Some(g) = self.groups.get_mut(&gid) else {
                return;
            };
            let more = match action {
                Action::Emit(kind) => {
                    g.delivery.push_event(kind, Status::MS_OK);
                    continue;
                }
                Action::Log(text) => {
                    if !text.is_empty() {
                        crate::util::debug_log!("follow {}: {text}", g.label());
                    }
                    continue;
                }
                Action::Probe { token, node } => {
                    let stream = g.stream.clone();
                    let t = token;
                    let submitted = submit(g, ctx, None, move |nodes| {
                        let timeout = stream.config.timeout();
                        let reached = stream
                            .probe(nodes, &t, timeout)
                            .and_then(|r| reach_of(r, node, stream.on_replicas()));
                        FollowReply::Probe(t.clone(), reached)
                    });
                    match submitted {
                        Ok(()) => continue,
                        Err(e) => g
                            .session
                            .as_mut()
                            .map(|s| s.job_not_started(now(), session::Job::Probe, e)),
                    }
                }
                Action::Recover => {
                    let stream = g.stream.clone();
                    let submitted = submit(g, ctx, None, move |nodes| {
                        // The stream still exists (asked first, so that
                        // ENDED comes promptly when it does not), then the
                        // endpoints' addresses again.
                        FollowReply::Checked(
                            stream
                                .check_stream(nodes)
                                .map(|()| resolve_all(&stream.endpoints)),
                        )
                    });
                    match submitted {
                        Ok(()) => {
                            let order = g.stream.follow_order();
                            g.opening = Some(Open {
                                machine: Opening::new(now(), g.stream.config.timeout(), order),
                                recovery: true,
                                step: Step::Check,
                            });
                            continue;
                        }
                        Err(e) => g
                            .session
                            .as_mut()
                            .map(|s| s.job_not_started(now(), session::Job::Recovery, e)),
                    }
                }
                Action::Resync { node } => {
                    // Deltas whose base did not come, or that did not
                    // verify: the snapshot, on the node subscribed on.
                    g.stream.hooks.delta_resyncs.fetch_add(1, Ordering::Relaxed);
                    let stream = g.stream.clone();
                    let have = g.delivery.have();
                    let submitted = submit(g, ctx, Some(node), move |nodes| {
                        FollowReply::Resync(stream.snapshot(nodes.node(node), &have))
                    });
                    match submitted {
                        Ok(()) => continue,
                        Err(e) => {
                            g.delivery.resync_failed();
                            g.session
                                .as_mut()
                                .map(|s| s.job_not_started(now(), session::Job::Resync, e))
                        }
                    }
                }
                Action::Resubscribed => {
                    // The recovery's snapshot, kept when it was read.
                    if let Some(mut snap) = g.recovered.take() {
                        g.delivery.snapshot(&mut snap);
                    }
                    self.admit_waiting(gid);
                    self.replay_backlog(gid, ctx);
                    continue;
                }
                // One place for a lost subscription, wherever it was found.
                Action::Lose(cause) => {
                    crate::util::debug_log!(
                        "follow {}: connection lost: {}",
                        g.label(),
                        cause.message
                    );
                    close_sock(g, ctx);
                    abandon(g, ctx);
                    g.delivery
                        .push_event(EventKind::MS_EVENT_CONNECTION_LOST, cause.status);
                    continue;
                }
                Action::End(End::Ended) => {
                    let members: Vec<Member> = lock(&g.delivery.members).clone();
                    for m in &members {
                        (g.stream.hooks.follow_ended)(m.session, &m.name);
                    }
                    g.delivery
                        .push_event(EventKind::MS_EVENT_ENDED, Status::MS_OK);
                    for (_, ready, _) in g.waiting.drain(..) {
                        let _ = ready.send(Err(Error::new(
                            Status::MS_ERR_NOT_FOUND,
                            "the stream ended",
                        )));
                    }
                    self.drop_group(gid, ctx);
                    return;
                }
                Action::End(End::Cancelled) => {
                    self.drop_group(gid, ctx);
                    return;
                }
            };
            actions.extend(more.unwrap_or_default());
        }
    }
}

/// Whether bytes read from a subscription (`before` then `after` bytes
/// in all, `pending` of them a message not complete yet) are activity of
/// the leader's though no message came whole: only part of a message
/// longer than any probe counts (a state or a delta, which only the
/// leader can cause; anyone with the password can publish probes).
fn leader_bytes(before: u64, after: u64, pending: usize) -> bool {
    after != before && pending >= LEADER_SIZED
}

fn is_echo(item: &SubscriptionItem, token: &str) -> bool {
    matches!(item, SubscriptionItem::Message { payload, .. }
        if payload.strip_prefix("p ") == Some(token))
}

/// Stops watching the group's subscription and closes it.
fn close_sock(g: &mut Group, ctx: &mut Ctx) {
    if let Some(sock) = g.sock.take() {
        let _ = ctx.poller.delete(&sock.sub);
    }
}

/// Gives up the group's call out: its connections are shut down (the
/// worker's call fails at once) and its reply will be ignored.
fn abandon(g: &mut Group, ctx: &mut Ctx) {
    if let Some(out) = g.out.take() {
        // Still waiting for a worker: it never goes out.
        let owner = Task::group_owner(g.id);
        ctx.queue
            .withdraw(owner, |t| matches!(t, Task::Follow(c) if c.id == out.id));
        out.nodes.shutdown();
    }
}

/// Queues a call of the group's for the workers, over the client's shared
/// connections with a cancel of its own; `node` is where it goes (the node
/// subscribed on), None for the write endpoint: the endpoint the
/// per-endpoint cap counts it against (a probe is published through the
/// write endpoint, whichever node it then reaches).
fn submit(
    g: &mut Group,
    ctx: &mut Ctx,
    node: Option<usize>,
    call: impl FnOnce(&Nodes) -> FollowReply + Send + 'static,
) -> Result<()> {
    abandon(g, ctx);
    if ctx.jobs.is_none() {
        return Err(Error::new(
            Status::MS_ERR_INTERNAL,
            "the client's network thread is shutting down",
        ));
    }
    let nodes = Nodes::new(g.stream.endpoints.clone());
    *ctx.next_id += 1;
    let id = *ctx.next_id;
    let c = nodes.clone();
    let task = Task::Follow(Call {
        group: g.id,
        id,
        node,
        endpoints: g.stream.endpoints.clone(),
        endpoint: 0,
        run: Box::new(move || call(&c)),
    });
    ctx.queue.push(task.owner(), task);
    g.out = Some(Out { id, nodes });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes of a message still arriving are activity once more than any
    /// probe has come; a read that completes every message, a probe split
    /// over reads, or no new bytes are not.
    #[test]
    fn part_of_a_message_longer_than_a_probe_is_the_leaders_activity() {
        assert!(leader_bytes(100, 1100, LEADER_SIZED));
        assert!(leader_bytes(100, 5000, 4000));
        assert!(!leader_bytes(100, 1100, 0), "whole messages only");
        assert!(!leader_bytes(100, 200, LEADER_SIZED - 1), "a probe's size");
        assert!(!leader_bytes(1100, 1100, 4000), "nothing new came");
    }

    /// The probe that proves a subscription is recognised by its token
    /// alone.
    #[test]
    fn an_echo_is_the_probe_of_its_own_token() {
        let msg = |p: &str| SubscriptionItem::Message {
            channel: "c".into(),
            payload: p.into(),
        };
        assert!(is_echo(&msg("p abc"), "abc"));
        assert!(!is_echo(&msg("p abcd"), "abc"));
        assert!(!is_echo(&msg("p ab"), "abc"));
        assert!(!is_echo(&msg("s 1 2 abc"), "abc"));
        assert!(!is_echo(&SubscriptionItem::Other, "abc"));
    }
}
