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
mod opening;
mod session;

use crate::dispatch::{Event, EventKind};
use crate::error::{Error, Result, Status};
use crate::kdf::{KeyCache, Secret};
use crate::net::nodes::Nodes;
use crate::session::backoff::Backoff;
use crate::session::{key_of, params_of, Config, Hooks};
use crate::util::{lock, random_hex};
use crate::wire::protocol::{self, ChannelMessage, SubscriptionItem};
use crossbeam_channel::{bounded, never, select, Receiver, RecvTimeoutError, Sender};
use link::{disconnected, stream_channel, Delivery, Incoming, Link, Snapshot, Subscription};
use session::{Action, Heard, JobDone, Resubscription, Session};
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
        let params = params_of(control, &key, config.timeout())?;
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

/// What the session thread holds for its `Session`: the subscription,
/// the job out, a recovery's result waiting to be taken, and what of the
/// reader's counters was seen.
struct Held {
    sub: Option<Subscription>,
    job: Option<Job>,
    recovered: Option<(Subscription, Snapshot)>,
    seen_progress: u64,
    seen_direct: u64,
}

/// Why the session ends.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The stream ended (stopped, replaced, or the password changed).
    Ended,
    Cancelled,
}

impl FollowThread {
    fn run(self, ready: Sender<Result<()>>) {
        let sub = match self.link.open() {
            Ok((sub, mut snap)) => {
                let hb = snap.hb;
                self.link.delivery.snapshot(&mut snap);
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
    /// ends or the session is cancelled, carrying out the decisions of its
    /// `Session`. Never blocks on the network.
    fn session_loop(&self, first: Subscription, hb: Duration) -> End {
        let link = &self.link;
        let delivery = &link.delivery;
        let token = random_hex(8).unwrap_or_else(|_| format!("{:x}", self.session));
        let mut session = Session::new(
            Instant::now(),
            first.node,
            hb,
            token,
            Backoff::new(self.session),
        );
        let mut held = Held {
            sub: Some(first),
            job: None,
            recovered: None,
            seen_progress: 0,
            seen_direct: delivery.last_direct_us.load(Ordering::SeqCst),
        };
        delivery.direct.store(true, Ordering::SeqCst);
        loop {
            let now = Instant::now();
            let (mut direct, mut bytes) = (None, false);
            let last_direct = delivery.last_direct_us.load(Ordering::SeqCst);
            if last_direct != held.seen_direct {
                // The reader delivered states (perhaps just before its
                // subscription was lost): the leader was heard when the
                // last one arrived.
                held.seen_direct = last_direct;
                direct = Some(delivery.epoch + Duration::from_micros(last_direct));
            }
            if let Some(s) = &held.sub {
                let progress = s.progress.load(Ordering::Relaxed);
                if progress != held.seen_progress {
                    held.seen_progress = progress;
                    bytes = true;
                }
            }
            // A fresh instant each time: the machine is told when things are.
            let actions = session.tick(now, direct, bytes, delivery.resync_at());
            delivery
                .leader_offline
                .store(session.offline(), Ordering::SeqCst);
            if let Some(end) = self.carry_out(&mut session, actions, &mut held) {
                return end;
            }
            let now = Instant::now();
            let left = session
                .next_wake(now, delivery.resync_at())
                .saturating_duration_since(now);
            let sub_rx = held.sub.as_ref().map(|s| &s.rx);
            let job_rx = held.job.as_ref().map(|j| &j.rx);
            let never_sub = never();
            let never_job = never();
            let actions = select! {
                recv(link.wake) -> _ => return End::Cancelled,
                recv(sub_rx.unwrap_or(&never_sub)) -> m => {
                    let now = Instant::now();
                    let Some(s) = &held.sub else { continue };
                    let heard = match m {
                        Ok(Incoming::Item(SubscriptionItem::Message { payload, .. })) => {
                            // Bytes up to here are accounted for by this message.
                            held.seen_progress = s.progress.load(Ordering::Relaxed);
                            if link::is_state_message(&payload) {
                                delivery.message(payload);
                                Heard::State
                            } else { match protocol::parse_channel_message(payload) {
                                Some(ChannelMessage::Heartbeat { interval_ms }) => {
                                    Heard::Heartbeat(Duration::from_millis(interval_ms))
                                }
                                Some(ChannelMessage::Probe { nonce }) => Heard::Probe(nonce),
                                Some(ChannelMessage::Ended) => Heard::Ended,
                                _ => Heard::Other,
                            } }
                        }
                        Ok(Incoming::Item(_)) => Heard::Other,
                        Ok(Incoming::Closed(e)) => Heard::Closed(e),
                        Err(_) => Heard::Closed(Error::new(
                            Status::MS_ERR_UNAVAILABLE,
                            "the subscription closed",
                        )),
                    };
                    session.heard(now, heard)
                }
                recv(job_rx.unwrap_or(&never_job)) -> r => {
                    held.job = None;
                    let done = match r {
                        Ok(JobResult::Probe(token, reached)) => JobDone::Probe(token, reached),
                        Ok(JobResult::Recovered(Ok((s, snap)))) => {
                            let done = JobDone::Recovered(Ok(Resubscription {
                                node: s.node,
                                hb: snap.hb,
                                heard: snap.heard,
                            }));
                            held.recovered = Some((s, snap));
                            done
                        }
                        Ok(JobResult::Recovered(Err(e))) => JobDone::Recovered(Err(e)),
                        Ok(JobResult::Resync(Ok(mut snap))) => {
                            let heard = snap.heard;
                            delivery.resynced(&mut snap);
                            JobDone::Resync(heard)
                        }
                        Ok(JobResult::Resync(Err(e))) => {
                            crate::util::debug_log!("follow {}: snapshot for deltas failed: {}", self.session, e.message);
                            delivery.resync_failed();
                            JobDone::Resync(None)
                        }
                        Err(_) => JobDone::Vanished,
                    };
                    session.job_done(Instant::now(), done, link.cancelled())
                }
                default(left) => Vec::new(),
            };
            if let Some(end) = self.carry_out(&mut session, actions, &mut held) {
                return end;
            }
        }
    }

    /// Carries out the actions of the session (and of its answers to
    /// jobs that could not start); Some when the session ends.
    fn carry_out(
        &self,
        session: &mut Session,
        mut actions: Vec<Action>,
        held: &mut Held,
    ) -> Option<End> {
        let link = &self.link;
        let delivery = &link.delivery;
        let mut i = 0;
        while i < actions.len() {
            let action = std::mem::replace(&mut actions[i], Action::Log(String::new()));
            i += 1;
            let more = match action {
                Action::Emit(kind) => {
                    self.emit(Event::new(kind, &self.name, Status::MS_OK));
                    continue;
                }
                Action::Log(text) => {
                    if !text.is_empty() {
                        crate::util::debug_log!("follow {}: {text}", self.session);
                    }
                    continue;
                }
                Action::Probe { token, node } => match self.probe_job(token, node) {
                    Ok(j) => {
                        held.job = Some(j);
                        continue;
                    }
                    Err(e) => session.job_not_started(Instant::now(), session::Job::Probe, e),
                },
                Action::Recover => {
                    let l = link.clone();
                    match Job::spawn(self.session, None, move || {
                        JobResult::Recovered(l.recover())
                    }) {
                        Ok(j) => {
                            held.job = Some(j);
                            continue;
                        }
                        Err(e) => {
                            session.job_not_started(Instant::now(), session::Job::Recovery, e)
                        }
                    }
                }
                Action::Resync { node } => {
                    // Deltas whose base did not come, or that did not
                    // verify: the snapshot, on the node subscribed on.
                    self.hooks.delta_resyncs.fetch_add(1, Ordering::Relaxed);
                    let conn = Nodes::new(link.endpoints.clone());
                    let (l, c) = (link.clone(), conn.clone());
                    match Job::spawn(self.session, Some(conn), move || {
                        JobResult::Resync(l.snapshot(c.node(node)))
                    }) {
                        Ok(j) => {
                            held.job = Some(j);
                            continue;
                        }
                        Err(e) => {
                            delivery.resync_failed();
                            session.job_not_started(Instant::now(), session::Job::Resync, e)
                        }
                    }
                }
                Action::Resubscribed => {
                    // The recovery's result, kept when its job ended.
                    let Some((s, mut snap)) = held.recovered.take() else {
                        continue;
                    };
                    delivery.snapshot(&mut snap);
                    held.seen_progress = s.progress.load(Ordering::Relaxed);
                    held.seen_direct = delivery.last_direct_us.load(Ordering::SeqCst);
                    held.sub = Some(s);
                    delivery.direct.store(true, Ordering::SeqCst);
                    continue;
                }
                // One place for a lost subscription, wherever it was found.
                Action::Lose(cause) => {
                    if link.cancelled() {
                        return Some(End::Cancelled);
                    }
                    self.lose(cause, held);
                    continue;
                }
                Action::End(end) => return Some(end),
            };
            actions.extend(more);
        }
        None
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
    /// a job still out).
    fn lose(&self, cause: Error, held: &mut Held) {
        crate::util::debug_log!(
            "follow {}: connection lost: {}",
            self.session,
            cause.message
        );
        self.link.delivery.direct.store(false, Ordering::SeqCst);
        held.job = None;
        held.sub = None;
        self.emit(Event::new(
            EventKind::MS_EVENT_CONNECTION_LOST,
            &self.name,
            cause.status,
        ));
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
