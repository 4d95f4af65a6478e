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

use crate::backoff::Backoff;
use crate::dispatch::{Event, EventKind};
use crate::error::{Error, Result, Status};
use crate::liveness::{Decision, Liveness};
use crate::protocol::{self, ChannelMessage, ObjectSplitter, SubscriptionItem};
use crate::session::{key_of, Config, Hooks};
use crate::transport::{Endpoint, Webdis};
use crate::util::{lock, random_hex};
use crossbeam_channel::{bounded, never, select, Receiver, RecvTimeoutError, Sender};
use serde_json::Value;
use std::ffi::CString;
use std::io::Read;
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
    /// The connection in use, shut down to break a blocked call.
    active: Arc<Mutex<Option<Webdis>>>,
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
        password: String,
        control: &Webdis,
        config: Arc<Config>,
        hooks: Hooks,
    ) -> Result<()> {
        let key = key_of(name.to_str().unwrap_or(""));
        let channel = stream_channel(control, &key, &password, config.timeout())?;
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
            password,
            channel,
            endpoint: control.endpoint_arc(),
            config,
            cancel: self.cancel.clone(),
            wake: wake_rx,
            active: self.active.clone(),
            delivery: Arc::new(Delivery {
                session: self.session,
                name: name_for_delivery,
                dispatcher: hooks_dispatcher,
                cancel: self.cancel.clone(),
                last_seq: Mutex::new(None),
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

/// ms_connect: checks the password; returns the stream's channel.
fn stream_channel(conn: &Webdis, key: &str, password: &str, timeout: Duration) -> Result<String> {
    let body = protocol::frame_body(&[password.as_bytes()]);
    match conn.fcall(true, "ms_connect", &[key], &[], &body, timeout)? {
        Value::Array(a) if a.len() == 2 && protocol::as_u64(&a[1]).is_some() => match &a[0] {
            Value::String(c) => Ok(c.clone()),
            _ => Err(protocol::protocol_error("ms_connect")),
        },
        _ => Err(protocol::protocol_error("ms_connect")),
    }
}

fn replaced() -> Error {
    Error::new(
        Status::MS_ERR_NOT_FOUND,
        "the stream was stopped and started anew",
    )
}

fn disconnected() -> Error {
    Error::new(Status::MS_ERR_UNAVAILABLE, "disconnected while connecting")
}

/// Items from the reader thread.
enum Incoming {
    Item(SubscriptionItem),
    Closed(Error),
}

/// One live subscription.
struct Subscription {
    conn: Webdis,
    rx: Receiver<Incoming>,
    /// Grows with each read that leaves a message incomplete: a large
    /// message still arriving is not silence.
    progress: Arc<AtomicU64>,
    reader: Option<JoinHandle<()>>,
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
struct Delivery {
    session: u64,
    name: Arc<CString>,
    dispatcher: Arc<crate::dispatch::Dispatcher>,
    cancel: Arc<AtomicBool>,
    last_seq: Mutex<Option<u64>>,
    /// The reader delivers states itself.
    direct: AtomicBool,
    /// When the reader last delivered a state (µs after `epoch`, 0 for
    /// never): the leader was heard then.
    epoch: Instant,
    last_direct_us: AtomicU64,
    /// The follower has reported LEADER_OFFLINE: the reader tells it of
    /// each state too, so that LEADER_ONLINE follows at once.
    leader_offline: AtomicBool,
}

impl Delivery {
    fn state(&self, seq: u64, state: String) {
        let mut last = lock(&self.last_seq);
        if last.is_none_or(|s| seq > s) && !self.cancel.load(Ordering::SeqCst) {
            *last = Some(seq);
            self.dispatcher
                .push(self.session, Event::state(&self.name, seq, state));
        }
    }
}

struct Snapshot {
    seq: u64,
    hb: Duration,
    state: String,
}

/// What the network side of a session needs; shared with its job threads.
struct Link {
    session: u64,
    key: String,
    password: String,
    channel: String,
    endpoint: Arc<Endpoint>,
    config: Arc<Config>,
    cancel: Arc<AtomicBool>,
    /// Disconnected when the session is cancelled.
    wake: Receiver<()>,
    /// The connection last opened, shut down by a cancel.
    active: Arc<Mutex<Option<Webdis>>>,
    delivery: Arc<Delivery>,
}

/// A blocking call running on its own thread for the session thread,
/// which awaits `rx` among its other events. Dropped, it breaks the call
/// (shuts its connection down) and waits for the thread.
struct Job {
    rx: Receiver<JobResult>,
    /// The connection of a probe, shut down when the probe is given up.
    conn: Option<Webdis>,
    thread: Option<JoinHandle<()>>,
}

enum JobResult {
    /// A probe's request returned: the number of subscriptions reached.
    Probe(Result<u64>),
    /// A recovery: a confirmed subscription and the snapshot.
    Recovered(Result<(Subscription, Snapshot)>),
}

impl Job {
    fn spawn(
        session: u64,
        conn: Option<Webdis>,
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

impl Link {
    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    /// A connection for the next call, registered so that cancel breaks it.
    fn connection(&self) -> Result<Webdis> {
        let conn = Webdis::new(self.endpoint.clone());
        *lock(&self.active) = Some(conn.clone());
        if self.cancelled() {
            conn.shutdown();
            return Err(disconnected());
        }
        Ok(conn)
    }

    /// Checks that the stream still exists, with the password, on the
    /// channel followed.
    fn check_stream(&self) -> Result<()> {
        let conn = self.connection()?;
        let channel = stream_channel(&conn, &self.key, &self.password, self.config.timeout())?;
        if channel == self.channel {
            Ok(())
        } else {
            Err(replaced())
        }
    }

    /// A recovery: the stream still exists (asked first, so that ENDED
    /// comes promptly when it does not), then a new subscription.
    fn recover(&self) -> Result<(Subscription, Snapshot)> {
        self.check_stream()?;
        self.open()
    }

    /// Subscribes, waits for the acknowledgement, proves the subscription
    /// with a probe, then reads the snapshot.
    ///
    /// Webdis 0.1.9 can garble a new subscription (a message published
    /// while it sets one up may be written before the HTTP response head),
    /// lose its response or acknowledgement to a socket reused after a
    /// subscriber hung up, or acknowledge a subscription that Redis never
    /// feeds. Such a subscription is replaced by a fresh one, within the
    /// request timeout overall.
    fn open(&self) -> Result<(Subscription, Snapshot)> {
        let timeout = self.config.timeout();
        let deadline = Instant::now() + timeout;
        // Time for one attempt (response head, acknowledgement and probe
        // echo) before trying again on a new connection.
        let attempt_wait = (timeout / 4).max(Duration::from_millis(500));
        let mut attempts = 0u32;
        loop {
            let conn = self.connection()?;
            let left = deadline.saturating_duration_since(Instant::now());
            attempts += 1;
            let by = Instant::now() + left.min(attempt_wait);
            let sub = match self
                .subscribe(&conn, by)
                .and_then(|sub| self.confirm(&conn, &sub, by).map(|()| sub))
            {
                Ok(sub) => sub,
                Err(e) if retry_subscribe(&e) => {
                    crate::debug_log!(
                        "subscribe {}: attempt {attempts} failed: {}",
                        self.session,
                        e.message
                    );
                    conn.shutdown();
                    if Instant::now() < deadline {
                        continue;
                    }
                    return Err(Error::new(
                        e.status,
                        format!(
                            "Webdis at {} did not set up the subscription within {} ms \
                             ({attempts} attempts; the last: {})",
                            self.endpoint.base(),
                            timeout.as_millis(),
                            e.message
                        ),
                    ));
                }
                Err(e) => return Err(e),
            };
            let snap = self.snapshot(&conn)?;
            return Ok((sub, snap));
        }
    }

    /// One subscription, acknowledged by `by`.
    fn subscribe(&self, conn: &Webdis, by: Instant) -> Result<Subscription> {
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
            conn: conn.clone(),
            rx,
            progress,
            reader: Some(handle),
        };
        self.await_item(&sub, by, "acknowledge the subscription", |item| {
            matches!(item, SubscriptionItem::Subscribed { channel } if *channel == self.channel)
        })?;
        Ok(sub)
    }

    /// Proves an acknowledged subscription end to end: a probe published
    /// through the functions must reach a subscriber and come back on it
    /// by `by`. (A subscription Webdis acknowledged may never be fed: the
    /// probe then reaches no subscriber, or not this one.)
    fn confirm(&self, conn: &Webdis, sub: &Subscription, by: Instant) -> Result<()> {
        let token = random_hex(8)?;
        let left = by.saturating_duration_since(Instant::now());
        let receivers = self.probe(conn, &token, left.max(Duration::from_millis(1)))?;
        if receivers == 0 {
            return Err(Error::new(
                Status::MS_ERR_TIMEOUT,
                "Redis has no such subscription (a probe reached no subscriber)",
            ));
        }
        self.await_item(sub, by, "deliver a probe on the subscription", |item| {
            matches!(item, SubscriptionItem::Message { payload, .. }
                if payload.strip_prefix("p ") == Some(token.as_str()))
        })
    }

    /// Waits until the subscription yields an item `wanted` accepts, by
    /// `by`; TIMEOUT saying what Webdis did not `do` otherwise.
    fn await_item(
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

    fn snapshot(&self, conn: &Webdis) -> Result<Snapshot> {
        let body = protocol::frame_body(&[self.password.as_bytes()]);
        let reply = conn.fcall(
            true,
            "ms_snapshot",
            &[&self.key],
            &[],
            &body,
            self.config.timeout(),
        )?;
        let bad = || protocol::protocol_error("ms_snapshot");
        let Value::Array(mut a) = reply else {
            return Err(bad());
        };
        if a.len() != 5 {
            return Err(bad());
        }
        let state = match a.pop() {
            Some(Value::String(s)) => s,
            _ => return Err(bad()),
        };
        let hb_ms = protocol::as_u64(&a[3]).ok_or_else(bad)?;
        let seq = protocol::as_u64(&a[1]).ok_or_else(bad)?;
        if a[0].as_str() != Some(self.channel.as_str()) {
            return Err(replaced());
        }
        Ok(Snapshot {
            seq,
            hb: Duration::from_millis(hb_ms.max(1)),
            state,
        })
    }

    /// ms_probe: publishes `p <token>` on the channel; returns how many
    /// subscriptions Redis delivered it to.
    fn probe(&self, conn: &Webdis, token: &str, timeout: Duration) -> Result<u64> {
        let body = protocol::frame_body(&[self.password.as_bytes()]);
        let reply = conn.fcall(false, "ms_probe", &[&self.key], &[token], &body, timeout)?;
        match reply {
            Value::Array(a) if a.len() == 2 => {
                if a[0].as_str() != Some(self.channel.as_str()) {
                    return Err(replaced());
                }
                protocol::as_u64(&a[1]).ok_or_else(|| protocol::protocol_error("ms_probe"))
            }
            _ => Err(protocol::protocol_error("ms_probe")),
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
                        match self.probe_job(token) {
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
            if let Some(cause) = lost {
                self.lose(cause, &mut sub, &mut job, &mut live);
                retry_at = Some(Instant::now() + backoff.next());
                continue;
            }
            if sub.is_none() && job.is_none() && retry_at.is_none_or(|t| now >= t) {
                retry_at = None;
                let l = link.clone();
                match Job::spawn(self.session, None, move || {
                    JobResult::Recovered(l.recover())
                }) {
                    Ok(j) => job = Some(j),
                    Err(_) => retry_at = Some(now + backoff.next()),
                }
            }
            let mut wake = live.next_wake(now);
            if let Some(t) = retry_at {
                wake = wake.min(t);
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
                        Ok(Incoming::Closed(e)) => {
                            if link.cancelled() {
                                return End::Cancelled;
                            }
                            self.lose(e, &mut sub, &mut job, &mut live);
                            retry_at = Some(Instant::now() + backoff.next());
                        }
                        Err(_) => {
                            if link.cancelled() {
                                return End::Cancelled;
                            }
                            let e = Error::new(Status::MS_ERR_UNAVAILABLE, "the subscription closed");
                            self.lose(e, &mut sub, &mut job, &mut live);
                            retry_at = Some(Instant::now() + backoff.next());
                        }
                    }
                }
                recv(job_rx.unwrap_or(&never_job)) -> r => {
                    job = None;
                    match r {
                        Ok(JobResult::Probe(Ok(0))) => {
                            let e = Error::new(
                                Status::MS_ERR_TIMEOUT,
                                "the subscription is gone from Redis (a probe reached no subscriber)",
                            );
                            self.lose(e, &mut sub, &mut job, &mut live);
                            retry_at = Some(Instant::now() + backoff.next());
                        }
                        // The echo, or its absence, decides.
                        Ok(JobResult::Probe(Ok(_))) => {}
                        Ok(JobResult::Probe(Err(e))) if !e.status.is_transient() => return End::Ended,
                        Ok(JobResult::Probe(Err(e))) => {
                            if link.cancelled() {
                                return End::Cancelled;
                            }
                            // Webdis or Redis is unreachable: the
                            // subscription cannot be trusted either.
                            self.lose(e, &mut sub, &mut job, &mut live);
                            retry_at = Some(Instant::now() + backoff.next());
                        }
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
                        Err(_) => retry_at = Some(Instant::now() + backoff.next()),
                    }
                }
                default(left) => {}
            }
        }
    }

    /// Starts a probe carrying `token` on a connection of its own.
    fn probe_job(&self, token: String) -> Result<Job> {
        let conn = Webdis::new(self.link.endpoint.clone());
        let link = self.link.clone();
        let c = conn.clone();
        Job::spawn(self.session, Some(conn), move || {
            let timeout = link.config.timeout();
            JobResult::Probe(link.probe(&c, &token, timeout))
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
        self.link
            .delivery
            .leader_offline
            .store(kind == EventKind::MS_EVENT_LEADER_OFFLINE, Ordering::SeqCst);
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

/// Whether a subscription attempt that failed so is worth repeating at
/// once: garbled (PROTOCOL) or unacknowledged (TIMEOUT).
fn retry_subscribe(e: &Error) -> bool {
    matches!(e.status, Status::MS_ERR_PROTOCOL | Status::MS_ERR_TIMEOUT)
}

/// The reader thread: bytes from Webdis to parsed items. Once the
/// follower listens, states go to the dispatcher from here.
fn read_subscription(
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
                let _ = tx.send(Incoming::Closed(Error::new(
                    Status::MS_ERR_UNAVAILABLE,
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
                            if payload.starts_with("s ")
                                && delivery.direct.load(Ordering::SeqCst) =>
                        {
                            if let Some(ChannelMessage::State { seq, state, .. }) =
                                protocol::parse_channel_message(payload)
                            {
                                delivery.state(seq, state);
                                let us = delivery.epoch.elapsed().as_micros() as u64;
                                delivery.last_direct_us.store(us.max(1), Ordering::SeqCst);
                            }
                            if !delivery.leader_offline.load(Ordering::SeqCst) {
                                continue;
                            }
                            // Wake the follower: the leader is back.
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
                    if splitter.pending() > 0 {
                        // Part of a message arrived: activity, though no
                        // message is complete yet.
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
