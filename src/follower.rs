//! A followed stream: one follower thread runs the session (subscribe,
//! snapshot, listen, detect silence, recover), and for each subscription a
//! reader thread turns Webdis' chunked SUBSCRIBE stream into messages.
//!
//! Late join: the follower subscribes, waits for Webdis' acknowledgement,
//! then reads the snapshot, and from then on delivers only states newer
//! than the last one delivered.
//!
//! Silence: Webdis says nothing when its own link to Redis breaks. When the
//! subscription has been silent for 2 heartbeat intervals the follower
//! publishes a probe on its channel; if the probe does not come back within
//! one more interval the subscription is dead and is replaced.

use crate::client::{key_of, Config, Hooks};
use crate::dispatch::{lock, Event, EventKind};
use crate::error::{Error, Result, Status};
use crate::leader::Backoff;
use crate::protocol::{self, ChannelMessage, ObjectSplitter, SubscriptionItem};
use crate::transport::{random_hex, Endpoint, Webdis};
use crossbeam_channel::{bounded, select, Receiver, RecvTimeoutError, Sender};
use serde_json::Value;
use std::ffi::CString;
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Least time a probe's echo may take (for very short heartbeats).
const PROBE_MIN_WAIT: Duration = Duration::from_millis(500);
/// How often the byte count is looked at while a probe is out.
const PROBE_POLL: Duration = Duration::from_millis(50);

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
        let (channel, hb_ms) = check_password(control, &key, &password, config.timeout())?;
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
        let follower = Follower {
            session: self.session,
            name,
            key,
            password,
            channel,
            hb: Duration::from_millis(hb_ms.max(1)),
            endpoint: control.endpoint_arc(),
            config,
            hooks,
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
                direct_count: AtomicU64::new(0),
                leader_offline: AtomicBool::new(false),
            }),
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

/// ms_connect: checks the password; returns the channel and the leader's
/// heartbeat interval in ms.
fn check_password(
    conn: &Webdis,
    key: &str,
    password: &str,
    timeout: Duration,
) -> Result<(String, u64)> {
    let body = protocol::frame_body(&[password.as_bytes()]);
    match conn.fcall(true, "ms_connect", &[key], &[], &body, timeout)? {
        Value::Array(a) if a.len() == 2 => match (&a[0], protocol::as_u64(&a[1])) {
            (Value::String(c), Some(hb)) => Ok((c.clone(), hb)),
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

/// What ended a subscription.
enum Outcome {
    Lost(Error),
    Ended,
    Cancelled,
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
    /// Bytes read so far: a large message still arriving is not silence.
    bytes: Arc<AtomicU64>,
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
    /// States the reader delivered: the leader was heard.
    direct_count: AtomicU64,
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

struct Follower {
    session: u64,
    name: Arc<CString>,
    key: String,
    password: String,
    channel: String,
    hb: Duration,
    endpoint: Arc<Endpoint>,
    config: Arc<Config>,
    hooks: Hooks,
    cancel: Arc<AtomicBool>,
    wake: Receiver<()>,
    active: Arc<Mutex<Option<Webdis>>>,
    delivery: Arc<Delivery>,
    /// Dropped when the thread ends.
    _done: Sender<()>,
}

impl Follower {
    fn run(mut self, ready: Sender<Result<()>>) {
        let mut sub = match self.open() {
            Ok((sub, snap)) => {
                self.deliver_snapshot(snap);
                let _ = ready.send(Ok(()));
                sub
            }
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        drop(ready);
        let mut backoff = Backoff::new(self.session);
        loop {
            let cause = match self.listen(sub) {
                Outcome::Cancelled => return,
                Outcome::Ended => return self.end(),
                Outcome::Lost(e) => e,
            };
            crate::debug_log!(
                "follow {}: connection lost: {}",
                self.session,
                cause.message
            );
            self.emit(Event::new(
                EventKind::MS_EVENT_CONNECTION_LOST,
                &self.name,
                cause.status,
            ));
            // Recover: retry with capped exponential backoff and jitter.
            sub = loop {
                if self.sleep(backoff.next()) {
                    return;
                }
                // Whether the stream is gone does not depend on a working
                // subscription: ask first, so that ENDED comes promptly.
                match self.check_stream().and_then(|()| self.open()) {
                    Ok((s, snap)) => {
                        backoff.reset();
                        self.emit(Event::new(
                            EventKind::MS_EVENT_RECONNECTED,
                            &self.name,
                            Status::MS_OK,
                        ));
                        self.deliver_snapshot(snap);
                        break s;
                    }
                    Err(_) if self.cancelled() => return,
                    Err(e) if is_final(e.status) => return self.end(),
                    Err(e) => {
                        crate::debug_log!(
                            "follow {}: recovery failed: {}",
                            self.session,
                            e.message
                        );
                        continue;
                    }
                }
            };
        }
    }

    /// Checks that the stream still exists, with the password, on the
    /// channel followed.
    fn check_stream(&self) -> Result<()> {
        let conn = self.connection()?;
        let (channel, _) = check_password(&conn, &self.key, &self.password, self.config.timeout())?;
        if channel == self.channel {
            Ok(())
        } else {
            Err(replaced())
        }
    }

    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    /// Sleeps, waking early on cancel; true when cancelled.
    fn sleep(&self, d: Duration) -> bool {
        match self.wake.recv_timeout(d) {
            Err(RecvTimeoutError::Timeout) => self.cancelled(),
            _ => true,
        }
    }

    fn emit(&self, event: Event) {
        if !self.cancelled() {
            self.hooks.dispatcher.push(self.session, event);
        }
    }

    fn end(&self) {
        if self.cancelled() {
            return;
        }
        (self.hooks.follow_ended)(self.session, &self.name);
        self.hooks.dispatcher.push(
            self.session,
            Event::new(EventKind::MS_EVENT_ENDED, &self.name, Status::MS_OK),
        );
    }

    fn deliver_snapshot(&mut self, snap: Snapshot) {
        self.hb = snap.hb;
        self.delivery.state(snap.seq, snap.state);
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

    /// Subscribes, waits for the acknowledgement, then reads the snapshot.
    ///
    /// Webdis 0.1.9 can garble a new subscription: a message published
    /// while it sets one up may be written before the HTTP response head,
    /// and a response may be lost to a socket reused after a subscriber hung
    /// up. Such a subscription is replaced by a fresh one, within the
    /// request timeout overall.
    fn open(&self) -> Result<(Subscription, Snapshot)> {
        let timeout = self.config.timeout();
        let deadline = Instant::now() + timeout;
        // Time to wait for one response head and acknowledgement before
        // trying again on a new connection.
        let ack_wait = (timeout / 4).max(Duration::from_millis(500));
        let mut attempts = 0u32;
        loop {
            let conn = self.connection()?;
            let left = deadline.saturating_duration_since(Instant::now());
            attempts += 1;
            let sub = match self.subscribe(&conn, left.min(ack_wait)) {
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

    /// One subscription, acknowledged within `wait`.
    fn subscribe(&self, conn: &Webdis, wait: Duration) -> Result<Subscription> {
        // The response head is awaited no longer than the acknowledgement:
        // Webdis 0.1.9 sometimes never sends it (the request is lost with a
        // socket it mixed up), and the retry in `open` needs the time left.
        let started = Instant::now();
        let reader = conn.subscribe(&self.channel, wait)?;
        let (tx, rx) = bounded(64);
        let bytes = Arc::new(AtomicU64::new(0));
        let counter = bytes.clone();
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
            bytes,
            reader: Some(handle),
        };
        let deadline = started + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            select! {
                recv(self.wake) -> _ => return Err(disconnected()),
                recv(sub.rx) -> m => match m {
                    Ok(Incoming::Item(SubscriptionItem::Subscribed { channel })) if channel == self.channel => {
                        return Ok(sub)
                    }
                    Ok(Incoming::Item(_)) => continue,
                    Ok(Incoming::Closed(e)) => return Err(e),
                    Err(_) => return Err(Error::new(Status::MS_ERR_UNAVAILABLE, "the subscription closed")),
                },
                default(left) => return Err(Error::new(
                    Status::MS_ERR_TIMEOUT,
                    format!("Webdis did not acknowledge the subscription within {} ms", wait.as_millis()),
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

    /// Delivers messages until the subscription ends.
    fn listen(&mut self, sub: Subscription) -> Outcome {
        let mut last_heard = Instant::now();
        let mut leader_heard = Instant::now();
        let mut leader_offline = false;
        let mut probe: Option<(String, Instant)> = None;
        let mut seen_bytes = sub.bytes.load(Ordering::Relaxed);
        let mut seen_direct = self.delivery.direct_count.load(Ordering::Relaxed);
        self.delivery.leader_offline.store(false, Ordering::SeqCst);
        self.delivery.direct.store(true, Ordering::SeqCst);
        let outcome = loop {
            let now = Instant::now();
            let direct = self.delivery.direct_count.load(Ordering::Relaxed);
            if direct != seen_direct {
                // The reader delivered states: the leader was heard.
                seen_direct = direct;
                last_heard = now;
                leader_heard = now;
                self.leader_back(&mut leader_offline);
            }
            let silence_at = last_heard + 2 * self.hb;
            let offline_at = leader_heard + 3 * self.hb;
            let mut wake = silence_at;
            if !leader_offline {
                wake = wake.min(offline_at);
            }
            if let Some((_, deadline)) = &probe {
                // While a probe is out, look at the byte count often: a
                // large message arriving first delays the probe's echo.
                wake = wake.min(*deadline).min(now + PROBE_POLL);
            }
            let left = wake.saturating_duration_since(now);
            let msg = select! {
                recv(self.wake) -> _ => break Outcome::Cancelled,
                recv(sub.rx) -> m => Some(m),
                default(left) => None,
            };
            match msg {
                Some(Ok(Incoming::Item(SubscriptionItem::Message { payload, .. }))) => {
                    last_heard = Instant::now();
                    // Bytes up to here are accounted for by this message.
                    seen_bytes = sub.bytes.load(Ordering::Relaxed);
                    let mut from_leader = false;
                    match protocol::parse_channel_message(payload) {
                        Some(ChannelMessage::State { seq, state, .. }) => {
                            from_leader = true;
                            self.delivery.state(seq, state);
                        }
                        Some(ChannelMessage::Heartbeat { interval_ms }) => {
                            from_leader = true;
                            self.hb = Duration::from_millis(interval_ms.max(1));
                        }
                        Some(ChannelMessage::Probe { nonce })
                            if probe.as_ref().is_some_and(|(n, _)| *n == nonce) =>
                        {
                            probe = None;
                        }
                        Some(ChannelMessage::Ended) => break Outcome::Ended,
                        Some(ChannelMessage::Probe { .. }) | None => {}
                    }
                    if from_leader {
                        leader_heard = last_heard;
                        self.leader_back(&mut leader_offline);
                    }
                }
                Some(Ok(Incoming::Item(_))) => last_heard = Instant::now(),
                Some(Ok(Incoming::Closed(e))) => break self.lost(e),
                Some(Err(_)) => {
                    break self.lost(Error::new(
                        Status::MS_ERR_UNAVAILABLE,
                        "the subscription closed",
                    ))
                }
                None => {
                    let now = Instant::now();
                    let bytes = sub.bytes.load(Ordering::Relaxed);
                    if bytes != seen_bytes {
                        // A large message is still arriving: neither the
                        // subscription nor the leader is silent.
                        seen_bytes = bytes;
                        last_heard = now;
                        leader_heard = now;
                        if let Some((_, deadline)) = &mut probe {
                            *deadline = now + self.probe_wait();
                        }
                        continue;
                    }
                    if !leader_offline && now >= offline_at {
                        leader_offline = true;
                        self.delivery.leader_offline.store(true, Ordering::SeqCst);
                        self.emit(Event::new(
                            EventKind::MS_EVENT_LEADER_OFFLINE,
                            &self.name,
                            Status::MS_OK,
                        ));
                    }
                    if let Some((_, deadline)) = &probe {
                        if now >= *deadline {
                            break self.lost(Error::new(
                                Status::MS_ERR_TIMEOUT,
                                "the subscription went silent (a probe did not come back)",
                            ));
                        }
                    } else if now >= silence_at {
                        crate::debug_log!(
                            "follow {}: silent for {:?}, probing",
                            self.session,
                            now - last_heard
                        );
                        match self.send_probe(&sub.conn) {
                            Ok(nonce) => probe = Some((nonce, Instant::now() + self.probe_wait())),
                            Err(e) if is_final(e.status) => break Outcome::Ended,
                            Err(e) => break self.lost(e),
                        }
                        last_heard = Instant::now();
                    }
                }
            }
        };
        self.delivery.direct.store(false, Ordering::SeqCst);
        outcome
    }

    /// How long a probe's echo may take: one heartbeat interval (at least
    /// PROBE_MIN_WAIT), so that a dead subscription is found within 3
    /// intervals of silence (the probe goes out after 2).
    fn probe_wait(&self) -> Duration {
        self.hb.max(PROBE_MIN_WAIT)
    }

    /// The leader was heard: LEADER_ONLINE if it was reported offline.
    fn leader_back(&self, offline: &mut bool) {
        if std::mem::take(offline) {
            self.delivery.leader_offline.store(false, Ordering::SeqCst);
            self.emit(Event::new(
                EventKind::MS_EVENT_LEADER_ONLINE,
                &self.name,
                Status::MS_OK,
            ));
        }
    }

    fn lost(&self, e: Error) -> Outcome {
        if self.cancelled() {
            Outcome::Cancelled
        } else {
            Outcome::Lost(e)
        }
    }

    fn send_probe(&self, conn: &Webdis) -> Result<String> {
        let nonce = random_hex(8)?;
        let body = protocol::frame_body(&[self.password.as_bytes()]);
        let reply = conn.fcall(
            false,
            "ms_probe",
            &[&self.key],
            &[&nonce],
            &body,
            self.config.timeout(),
        )?;
        match reply {
            Value::Array(a) if a.first().and_then(Value::as_str) == Some(self.channel.as_str()) => {
                Ok(nonce)
            }
            Value::Array(_) => Err(replaced()),
            _ => Err(protocol::protocol_error("ms_probe")),
        }
    }
}

/// Whether a subscription attempt that failed so is worth repeating at
/// once: garbled (PROTOCOL) or unacknowledged (TIMEOUT).
fn retry_subscribe(e: &Error) -> bool {
    matches!(e.status, Status::MS_ERR_PROTOCOL | Status::MS_ERR_TIMEOUT)
}

/// Statuses after which following cannot go on.
fn is_final(status: Status) -> bool {
    matches!(
        status,
        Status::MS_ERR_NOT_FOUND | Status::MS_ERR_BAD_PASSWORD | Status::MS_ERR_FORBIDDEN
    )
}

/// The reader thread: bytes from Webdis to parsed items. Once the
/// follower listens, states go to the dispatcher from here.
fn read_subscription(
    mut reader: impl Read,
    tx: Sender<Incoming>,
    bytes: Arc<AtomicU64>,
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
            Ok(n) => {
                bytes.fetch_add(n as u64, Ordering::Relaxed);
                n
            }
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
                                delivery.direct_count.fetch_add(1, Ordering::SeqCst);
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
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(Incoming::Closed(e));
                    return;
                }
            }
        }
    }
}
