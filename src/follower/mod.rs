//! A followed stream: one session thread decides (subscribe, snapshot,
//! listen, detect silence and absence, recover) and never blocks on the
//! network; the blocking calls it needs (a probe, a recovery) run on a job
//! thread whose result it awaits among its other events; and each
//! subscription has a reader thread that turns Webdis' chunked SUBSCRIBE
//! stream into messages. The timing rules are in `liveness.rs`.
//!
//! Late join: the follower subscribes, waits for Webdis' acknowledgement,
//! proves the subscription end to end (a probe published through the
//! functions must come back on it), then reads the snapshot, and from then
//! on delivers only states newer than the last one delivered.

mod link;

use crate::backoff::Backoff;
use crate::dispatch::{Event, EventKind};
use crate::error::{Error, Result, Status};
use crate::kdf::{self, KeyCache, Secret};
use crate::liveness::{Decision, Liveness};
use crate::nodes::Nodes;
use crate::protocol::{self, ChannelMessage, SubscriptionItem};
use crate::session::{key_of, Config, Hooks};
use crate::util::{lock, random_hex};
use crossbeam_channel::{bounded, never, select, Receiver, RecvTimeoutError, Sender};
use link::{disconnected, stream_channel, Delivery, Incoming, Link, Snapshot, Subscription};
use std::ffi::CString;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Handle kept by the client for a followed stream. It is registered
/// with the client before the session starts, so that a callback handling
/// the first state can already disconnect it.
pub struct Follow {
    pub session: u64,
    cancel: Arc<AtomicBool>,
    /// Dropped to wake the follower thread.
    wake: Mutex<Option<Sender<()>>>,
    /// The connections in use, shut down to break a blocked call.
    active: Arc<Mutex<Option<Nodes>>>,
    done: Mutex<Option<Receiver<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Follow {
    pub fn new(session: u64) -> Follow {
        Follow {
            session,
            cancel: Arc::new(AtomicBool::new(false)),
            wake: Mutex::new(None),
            active: Arc::new(Mutex::new(None)),
            done: Mutex::new(None),
            thread: Mutex::new(None),
        }
    }

    /// Checks the password, subscribes and reads the snapshot; returns once
    /// the current state is queued for the callback.
    pub fn start(
        &self,
        name: Arc<CString>,
        password: &str,
        keys: &KeyCache,
        control: &Nodes,
        config: Arc<Config>,
        hooks: Hooks,
    ) -> Result<()> {
        let key = key_of(name.to_str().unwrap_or(""));
        // The stream's key derivation, then the password's key: kept (not
        // the password) to check the stream again after a lost
        // subscription.
        let params = kdf::params_of(control, &key, config.timeout())?;
        let password_key = keys.derive(&params, Secret::Password, password);
        let channel = stream_channel(control, &key, &password_key, config.timeout())?;
        let (wake_tx, wake_rx) = bounded::<()>(0);
        let (done_tx, done_rx) = bounded::<()>(0);
        let (ready_tx, ready_rx) = bounded::<Result<()>>(1);
        {
            // Either cancel() sees this sender and drops it, or this sees
            // the cancel flag: the thread cannot miss a disconnect.
            let mut wake = lock(&self.wake);
            if self.cancel.load(Ordering::SeqCst) {
                return Err(disconnected());
            }
            *wake = Some(wake_tx);
        }
        *lock(&self.done) = Some(done_rx);
        let name_for_delivery = name.clone();
        let hooks_dispatcher = hooks.dispatcher.clone();
        let link = Arc::new(Link {
            session: self.session,
            key,
            params,
            password_key,
            channel,
            endpoints: control.endpoints().clone(),
            config,
            cancel: self.cancel.clone(),
            wake: wake_rx,
            active: self.active.clone(),
            delivery: Arc::new(Delivery {
                session: self.session,
                name: name_for_delivery,
                dispatcher: hooks_dispatcher,
                cancel: self.cancel.clone(),
                last: Mutex::new(link::Last::default()),
                direct: AtomicBool::new(false),
                epoch: Instant::now(),
                last_direct_us: AtomicU64::new(0),
                leader_offline: AtomicBool::new(false),
            }),
        });
        let follower = FollowThread {
            session: self.session,
            name,
            hooks,
            link,
            _done: done_tx,
        };
        let thread = std::thread::Builder::new()
            .name("ms-follow".into())
            .stack_size(256 * 1024)
            .spawn(move || follower.run(ready_tx))
            .map_err(|e| {
                Error::new(
                    Status::MS_ERR_INTERNAL,
                    format!("cannot start a thread: {e}"),
                )
            })?;
        *lock(&self.thread) = Some(thread);
        match ready_rx.recv() {
            Ok(result) => result,
            Err(_) => Err(Error::new(
                Status::MS_ERR_INTERNAL,
                "the follower thread ended early",
            )),
        }
    }

    /// Ends the session: breaks any call in flight and waits up to `wait`
    /// for the thread to end (it ends on its own soon after otherwise).
    pub fn cancel(&self, wait: Duration) {
        self.cancel.store(true, Ordering::SeqCst);
        lock(&self.wake).take();
        if let Some(conn) = lock(&self.active).take() {
            conn.shutdown();
        }
        let done = lock(&self.done).take();
        let finished = match done {
            Some(done) => !matches!(done.recv_timeout(wait), Err(RecvTimeoutError::Timeout)),
            None => true,
        };
        let handle = lock(&self.thread).take();
        if let Some(h) = handle {
            if finished && h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
    }
}

/// A blocking call running on its own thread for the session thread,
/// which awaits `rx` among its other events. Dropped, it breaks the call
/// (shuts its connection down) and waits for the thread.
struct Job {
    rx: Receiver<JobResult>,
    /// The connections of a probe, shut down when the probe is given up.
    conn: Option<Nodes>,
    thread: Option<JoinHandle<()>>,
}

enum JobResult {
    /// The request of the probe carrying this token returned: the number
    /// of subscriptions reached, when the probe ran on the node subscribed
    /// on.
    Probe(String, Result<Option<u64>>),
    /// A recovery: a confirmed subscription and the snapshot.
    Recovered(Result<(Subscription, Snapshot)>),
    /// The snapshot, read because deltas could not be applied.
    Resync(Result<Snapshot>),
}

impl Job {
    fn spawn(
        session: u64,
        conn: Option<Nodes>,
        work: impl FnOnce() -> JobResult + Send + 'static,
    ) -> Result<Job> {
        let (tx, rx) = bounded(1);
        let thread = std::thread::Builder::new()
            .name(format!("ms-job-{session}"))
            .stack_size(256 * 1024)
            .spawn(move || {
                let _ = tx.send(work());
            })
            .map_err(|e| {
                Error::new(
                    Status::MS_ERR_INTERNAL,
                    format!("cannot start a thread: {e}"),
                )
            })?;
        Ok(Job {
            rx,
            conn,
            thread: Some(thread),
        })
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if let Some(conn) = &self.conn {
            conn.shutdown();
        }
        if let Some(h) = self.thread.take() {
            let _ = h.join();
        }
    }
}

/// The session thread.
struct FollowThread {
    session: u64,
    name: Arc<CString>,
    hooks: Hooks,
    link: Arc<Link>,
    /// Dropped when the thread ends.
    _done: Sender<()>,
}

/// Why the session ends.
enum End {
    /// The stream ended (stopped, replaced, or the password changed).
    Ended,
    Cancelled,
}

impl FollowThread {
    fn run(self, ready: Sender<Result<()>>) {
        let sub = match self.link.open() {
            Ok((sub, snap)) => {
                let hb = snap.hb;
                self.link.delivery.state(snap.seq, snap.state);
                let _ = ready.send(Ok(()));
                (sub, hb)
            }
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        drop(ready);
        let end = self.session_loop(sub.0, sub.1);
        self.link.delivery.direct.store(false, Ordering::SeqCst);
        if matches!(end, End::Ended) {
            self.end();
        }
    }

    /// Listens, probes, reports presence and recovers until the stream
    /// ends or the session is cancelled. Never blocks on the network.
    fn session_loop(&self, first: Subscription, hb: Duration) -> End {
        let link = &self.link;
        let delivery = &link.delivery;
        let token = random_hex(8).unwrap_or_else(|_| format!("{:x}", self.session));
        let mut live = Liveness::new(Instant::now(), hb, token);
        let mut sub = Some(first);
        let mut job: Option<Job> = None;
        let mut retry_at: Option<Instant> = None;
        let mut backoff = Backoff::new(self.session);
        let mut seen_progress = 0u64;
        let mut seen_direct = delivery.last_direct_us.load(Ordering::SeqCst);
        delivery.direct.store(true, Ordering::SeqCst);
        loop {
            let now = Instant::now();
            if let Some(s) = &sub {
                let direct = delivery.last_direct_us.load(Ordering::SeqCst);
                if direct != seen_direct {
                    // The reader delivered states: the leader was heard,
                    // when the last one arrived.
                    seen_direct = direct;
                    let at = delivery.epoch + Duration::from_micros(direct);
                    self.decide(live.heard(at.min(now), true));
                }
                let progress = s.progress.load(Ordering::Relaxed);
                if progress != seen_progress {
                    seen_progress = progress;
                    live.bytes(now);
                }
            }
            let mut lost: Option<Error> = None;
            for decision in live.poll(now) {
                match decision {
                    Decision::Probe(token) => {
                        crate::debug_log!("follow {}: silent, probing", self.session);
                        let node = sub.as_ref().map_or(0, |s| s.node);
                        match self.probe_job(token, node) {
                            Ok(j) => job = Some(j),
                            Err(e) => lost = Some(e),
                        }
                    }
                    Decision::Lost => {
                        lost = Some(Error::new(
                            Status::MS_ERR_TIMEOUT,
                            "the subscription went silent (a probe did not come back)",
                        ))
                    }
                    d => self.decide(Some(d)),
                }
            }
            delivery
                .leader_offline
                .store(live.offline(), Ordering::SeqCst);
            if lost.is_none() && sub.is_none() && job.is_none() && retry_at.is_none_or(|t| now >= t)
            {
                retry_at = None;
                let l = link.clone();
                match Job::spawn(self.session, None, move || {
                    JobResult::Recovered(l.recover())
                }) {
                    Ok(j) => job = Some(j),
                    Err(_) => retry_at = Some(now + backoff.next()),
                }
            }
            // Deltas whose base did not come, or that did not verify: the
            // snapshot, on the node subscribed on. A delta that did not
            // verify asks for it at once (resync_at is the current instant,
            // later than `now`): compared with a fresh instant, not `now`.
            let resync_at = delivery.resync_at();
            if let (Some(s), None, Some(at)) = (&sub, &job, resync_at) {
                if lost.is_none() && at <= Instant::now() {
                    self.hooks.delta_resyncs.fetch_add(1, Ordering::Relaxed);
                    crate::debug_log!(
                        "follow {}: deltas without their base: reading the snapshot",
                        self.session
                    );
                    let conn = Nodes::new(link.endpoints.clone());
                    let (l, c, node) = (link.clone(), conn.clone(), s.node);
                    match Job::spawn(self.session, Some(conn), move || {
                        JobResult::Resync(l.snapshot(c.node(node)))
                    }) {
                        Ok(j) => job = Some(j),
                        Err(_) => delivery.resync_failed(),
                    }
                }
            }
            if lost.is_none() {
                let mut wake = live.next_wake(now);
                if let Some(t) = retry_at {
                    wake = wake.min(t);
                }
                if let (Some(t), true) = (delivery.resync_at(), job.is_none() && sub.is_some()) {
                    wake = wake.min(t.max(now + Duration::from_millis(1)));
                }
                let left = wake.saturating_duration_since(now);
                let sub_rx = sub.as_ref().map(|s| &s.rx);
                let job_rx = job.as_ref().map(|j| &j.rx);
                let never_sub = never();
                let never_job = never();
                select! {
                    recv(link.wake) -> _ => return End::Cancelled,
                    recv(sub_rx.unwrap_or(&never_sub)) -> m => {
                        let now = Instant::now();
                        let Some(s) = &sub else { continue };
                        match m {
                            Ok(Incoming::Item(SubscriptionItem::Message { payload, .. })) => {
                                // Bytes up to here are accounted for by this message.
                                seen_progress = s.progress.load(Ordering::Relaxed);
                                match protocol::parse_channel_message(payload) {
                                    Some(ChannelMessage::State { seq, state, .. }) => {
                                        delivery.state(seq, state);
                                        self.decide(live.heard(now, true));
                                    }
                                    Some(ChannelMessage::Delta { seq, base, delta }) => {
                                        delivery.delta(seq, base, delta);
                                        self.decide(live.heard(now, true));
                                    }
                                    Some(ChannelMessage::Heartbeat { interval_ms }) => {
                                        live.set_interval(Duration::from_millis(interval_ms.max(1)));
                                        self.decide(live.heard(now, true));
                                    }
                                    Some(ChannelMessage::Probe { nonce }) => {
                                        live.probe_echo(&nonce);
                                        live.heard(now, false);
                                    }
                                    Some(ChannelMessage::Ended) => return End::Ended,
                                    None => {
                                        live.heard(now, false);
                                    }
                                }
                            }
                            Ok(Incoming::Item(_)) => {
                                live.heard(now, false);
                            }
                            Ok(Incoming::Closed(e)) => lost = Some(e),
                            Err(_) => {
                                lost = Some(Error::new(Status::MS_ERR_UNAVAILABLE, "the subscription closed"))
                            }
                        }
                    }
                    recv(job_rx.unwrap_or(&never_job)) -> r => {
                        job = None;
                        match r {
                            Ok(JobResult::Probe(_, Ok(Some(0)))) => {
                                lost = Some(Error::new(
                                    Status::MS_ERR_TIMEOUT,
                                    "the subscription is gone from Redis (a probe reached no subscriber)",
                                ))
                            }
                            // The echo, or its absence, decides from now on.
                            Ok(JobResult::Probe(token, Ok(_))) => {
                                live.probe_published(&token, Instant::now());
                            }
                            Ok(JobResult::Probe(_, Err(e))) if !e.status.is_transient() => return End::Ended,
                            // Webdis or Redis is unreachable: the subscription
                            // cannot be trusted either.
                            Ok(JobResult::Probe(_, Err(e))) => lost = Some(e),
                            Ok(JobResult::Recovered(Ok((s, snap)))) => {
                                backoff.reset();
                                self.emit(Event::new(
                                    EventKind::MS_EVENT_RECONNECTED,
                                    &self.name,
                                    Status::MS_OK,
                                ));
                                delivery.state(snap.seq, snap.state);
                                live.set_interval(snap.hb);
                                live.subscribed(Instant::now());
                                seen_progress = s.progress.load(Ordering::Relaxed);
                                seen_direct = delivery.last_direct_us.load(Ordering::SeqCst);
                                sub = Some(s);
                                delivery.direct.store(true, Ordering::SeqCst);
                            }
                            Ok(JobResult::Recovered(Err(_))) if link.cancelled() => return End::Cancelled,
                            Ok(JobResult::Recovered(Err(e))) if !e.status.is_transient() => return End::Ended,
                            Ok(JobResult::Recovered(Err(e))) => {
                                crate::debug_log!(
                                    "follow {}: recovery failed: {}",
                                    self.session,
                                    e.message
                                );
                                retry_at = Some(Instant::now() + backoff.next());
                            }
                            Ok(JobResult::Resync(Ok(snap))) => delivery.resynced(snap.seq, snap.state),
                            Ok(JobResult::Resync(Err(e))) => {
                                crate::debug_log!("follow {}: snapshot for deltas failed: {}", self.session, e.message);
                                delivery.resync_failed();
                            }
                            Err(_) => retry_at = Some(Instant::now() + backoff.next()),
                        }
                    }
                    default(left) => {}
                }
            }
            // One place for a lost subscription, wherever it was found.
            if let Some(cause) = lost {
                if link.cancelled() {
                    return End::Cancelled;
                }
                self.lose(cause, &mut sub, &mut job, &mut live);
                retry_at = Some(Instant::now() + backoff.next());
            }
        }
    }

    /// Starts a probe carrying `token` on connections of its own, for the
    /// subscription on `node`.
    fn probe_job(&self, token: String, node: usize) -> Result<Job> {
        let conn = Nodes::new(self.link.endpoints.clone());
        let link = self.link.clone();
        let c = conn.clone();
        Job::spawn(self.session, Some(conn), move || {
            let timeout = link.config.timeout();
            let reached = link.probe(&c, node, &token, timeout);
            JobResult::Probe(token, reached)
        })
    }

    /// The subscription is lost: reports CONNECTION_LOST and drops it (and
    /// a probe still out).
    fn lose(
        &self,
        cause: Error,
        sub: &mut Option<Subscription>,
        job: &mut Option<Job>,
        live: &mut Liveness,
    ) {
        crate::debug_log!(
            "follow {}: connection lost: {}",
            self.session,
            cause.message
        );
        self.link.delivery.direct.store(false, Ordering::SeqCst);
        *job = None;
        *sub = None;
        live.unsubscribed();
        self.emit(Event::new(
            EventKind::MS_EVENT_CONNECTION_LOST,
            &self.name,
            cause.status,
        ));
    }

    /// Reports a presence change.
    fn decide(&self, d: Option<Decision>) {
        let kind = match d {
            Some(Decision::Offline) => EventKind::MS_EVENT_LEADER_OFFLINE,
            Some(Decision::Online) => EventKind::MS_EVENT_LEADER_ONLINE,
            _ => return,
        };
        self.emit(Event::new(kind, &self.name, Status::MS_OK));
    }

    fn emit(&self, event: Event) {
        if !self.link.cancelled() {
            self.hooks.dispatcher.push(self.session, event);
        }
    }

    fn end(&self) {
        if self.link.cancelled() {
            return;
        }
        (self.hooks.follow_ended)(self.session, &self.name);
        self.hooks.dispatcher.push(
            self.session,
            Event::new(EventKind::MS_EVENT_ENDED, &self.name, Status::MS_OK),
        );
    }
}
