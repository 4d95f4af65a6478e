//! The per-client dispatcher: one thread that calls the user's callback, so
//! callbacks of one client never run concurrently.
//!
//! Memory stays bounded: for each session only the newest pending STATE is
//! queued (a newer one replaces it in place), and other events are rare and
//! rate-limited by their producers (backoff, heartbeat intervals).

use crate::error::Status;
use crate::util::lock;
use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::CString;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{JoinHandle, ThreadId};

/// Kinds of events. Values are part of the ABI.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ms_event_kind {
    /// Follower: a newer state.
    MS_EVENT_STATE = 0,
    /// Follower: the stream was stopped or expired; the follow session is over.
    MS_EVENT_ENDED = 1,
    /// Follower: the subscription dropped; retrying.
    MS_EVENT_CONNECTION_LOST = 2,
    /// Follower: the subscription is restored.
    MS_EVENT_RECONNECTED = 3,
    /// Leader: a state could not be stored. Reported once per failure
    /// streak; a transient status (ms_status_is_transient) is retried with
    /// backoff, after any other (NOT_FOUND, BAD_LEADER_CODE, FORBIDDEN,
    /// ...) the lead ends.
    MS_EVENT_PUBLISH_FAILED = 4,
    /// Follower: no heartbeat or state from the leader for 3 intervals,
    /// whatever the cause (a quiet leader, or no working subscription: the
    /// clock runs while reconnecting and while Webdis does not answer).
    MS_EVENT_LEADER_OFFLINE = 5,
    /// Follower: the leader is heard again after LEADER_OFFLINE, across any
    /// reconnects between. OFFLINE and ONLINE strictly alternate, starting
    /// with OFFLINE.
    MS_EVENT_LEADER_ONLINE = 6,
}

pub use ms_event_kind as EventKind;

/// A state as received, stored NUL-terminated so that it can be lent to C
/// without a copy. Immutable and shared: a clone is a reference, so the
/// follower keeps the state it delivered (the base of the next delta) in
/// the same buffer the callback reads, and a 1 MiB state is not copied
/// between them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateText(Arc<String>);

impl StateText {
    /// Takes `s` (no copy when it has room for the NUL).
    pub fn new(mut s: String) -> StateText {
        s.push('\0');
        StateText(Arc::new(s))
    }
    pub fn as_str(&self) -> &str {
        &self.0[..self.0.len() - 1]
    }
    /// Pointer to the NUL-terminated bytes.
    pub fn as_ptr(&self) -> *const u8 {
        self.0.as_ptr()
    }
}

impl StateText {
    /// Runs `f` on the state itself when nothing else holds it (no event,
    /// so no callback, reads it any more); None when something does.
    pub(crate) fn edit<R>(&mut self, f: impl FnOnce(&mut String) -> R) -> Option<R> {
        let s = Arc::get_mut(&mut self.0)?;
        s.pop();
        let r = f(s);
        s.push('\0');
        Some(r)
    }

    /// Whether `other` is the same buffer.
    pub(crate) fn same(&self, other: &StateText) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Default for StateText {
    fn default() -> StateText {
        StateText::new(String::new())
    }
}

/// Something that happened to a stream this client leads or follows.
#[derive(Clone, Debug)]
pub struct Event {
    pub kind: EventKind,
    pub stream: Arc<CString>,
    /// STATE: the state.
    pub state: Option<StateText>,
    /// STATE: its sequence number.
    pub seq: u64,
    /// CONNECTION_LOST, PUBLISH_FAILED: the cause; else MS_OK.
    pub status: Status,
}

impl Event {
    pub fn new(kind: EventKind, stream: &Arc<CString>, status: Status) -> Event {
        Event {
            kind,
            stream: stream.clone(),
            state: None,
            seq: 0,
            status,
        }
    }

    pub fn state(stream: &Arc<CString>, seq: u64, state: StateText) -> Event {
        Event {
            kind: EventKind::MS_EVENT_STATE,
            stream: stream.clone(),
            state: Some(state),
            seq,
            status: Status::MS_OK,
        }
    }

    /// The stream's name.
    pub fn stream_name(&self) -> &str {
        self.stream.to_str().unwrap_or("")
    }
}

/// The user's callback.
pub type Callback = Arc<dyn Fn(&Event) + Send + Sync>;

struct Item {
    session: u64,
    event: Event,
}

struct Queue {
    items: VecDeque<Item>,
    /// Absolute index of items[0].
    popped: u64,
    /// Session -> absolute index of its pending STATE that a newer one may
    /// still replace (no other event of that session queued after it).
    open_state: HashMap<u64, u64>,
    /// Sessions whose events are delivered.
    live: HashSet<u64>,
    callback: Option<Callback>,
    callback_gen: u64,
    /// The session and callback generation of the callback running now.
    in_flight: Option<(u64, u64)>,
    shutdown: bool,
}

pub struct Dispatcher {
    queue: Mutex<Queue>,
    /// Signalled when an item is queued or on shutdown.
    work: Condvar,
    /// Signalled when a callback returns.
    idle: Condvar,
    thread_id: Mutex<Option<ThreadId>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Dispatcher {
    pub fn new() -> std::io::Result<Arc<Dispatcher>> {
        let d = Arc::new(Dispatcher {
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                popped: 0,
                open_state: HashMap::new(),
                live: HashSet::new(),
                callback: None,
                callback_gen: 0,
                in_flight: None,
                shutdown: false,
            }),
            work: Condvar::new(),
            idle: Condvar::new(),
            thread_id: Mutex::new(None),
            thread: Mutex::new(None),
        });
        let runner = d.clone();
        let handle = std::thread::Builder::new()
            .name("ms-dispatch".into())
            .spawn(move || runner.run())?;
        *lock(&d.thread_id) = Some(handle.thread().id());
        *lock(&d.thread) = Some(handle);
        Ok(d)
    }

    fn on_dispatch_thread(&self) -> bool {
        *lock(&self.thread_id) == Some(std::thread::current().id())
    }

    fn run(&self) {
        let mut q = lock(&self.queue);
        loop {
            while q.items.is_empty() && !q.shutdown {
                q = self.work.wait(q).unwrap_or_else(|e| e.into_inner());
            }
            if q.shutdown {
                return;
            }
            let Some(item) = q.items.pop_front() else {
                continue;
            };
            let index = q.popped;
            q.popped += 1;
            if q.open_state.get(&item.session) == Some(&index) {
                q.open_state.remove(&item.session);
            }
            if !q.live.contains(&item.session) {
                continue;
            }
            let Some(cb) = q.callback.clone() else {
                continue;
            };
            q.in_flight = Some((item.session, q.callback_gen));
            drop(q);
            // A panic in a Rust callback must not kill the dispatcher.
            let _ = catch_unwind(AssertUnwindSafe(|| cb(&item.event)));
            drop(item);
            q = lock(&self.queue);
            q.in_flight = None;
            self.idle.notify_all();
        }
    }

    /// Starts delivering events of `session`.
    pub fn register(&self, session: u64) {
        lock(&self.queue).live.insert(session);
    }

    /// Queues an event. A STATE replaces the session's pending STATE, if
    /// any, so that a slow callback never makes the queue grow.
    pub fn push(&self, session: u64, event: Event) {
        let mut q = lock(&self.queue);
        if q.shutdown || !q.live.contains(&session) {
            return;
        }
        if event.kind == EventKind::MS_EVENT_STATE {
            if let Some(&index) = q.open_state.get(&session) {
                let pos = (index - q.popped) as usize;
                let slot = &mut q.items[pos].event;
                if event.seq > slot.seq {
                    *slot = event;
                }
                return;
            }
            let index = q.popped + q.items.len() as u64;
            q.open_state.insert(session, index);
        } else {
            q.open_state.remove(&session);
        }
        q.items.push_back(Item { session, event });
        self.work.notify_one();
    }

    /// Stops delivering events of `session`: drops its queued events and,
    /// unless called from a callback, waits for its running callback to
    /// return. No event of the session is delivered afterwards.
    pub fn unregister(&self, session: u64) {
        let on_dispatch = self.on_dispatch_thread();
        let mut q = lock(&self.queue);
        q.live.remove(&session);
        if q.items.iter().any(|i| i.session == session) {
            q.items.retain(|i| i.session != session);
            // Positions moved: rebuild the open STATE slots.
            let mut open = HashMap::new();
            let base = q.popped;
            for (i, item) in q.items.iter().enumerate() {
                if item.event.kind == EventKind::MS_EVENT_STATE {
                    open.insert(item.session, base + i as u64);
                } else {
                    open.remove(&item.session);
                }
            }
            q.open_state = open;
        }
        if !on_dispatch {
            while matches!(q.in_flight, Some((s, _)) if s == session) {
                q = self.idle.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        }
    }

    /// Replaces the callback. Unless called from a callback, returns only
    /// when no call of a previous callback is running.
    pub fn set_callback(&self, cb: Option<Callback>) {
        let on_dispatch = self.on_dispatch_thread();
        let mut q = lock(&self.queue);
        q.callback = cb;
        q.callback_gen += 1;
        let generation = q.callback_gen;
        if !on_dispatch {
            while matches!(q.in_flight, Some((_, g)) if g < generation) {
                q = self.idle.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        }
    }

    /// Drops every queued event and stops the thread (waiting for a running
    /// callback unless called from one).
    pub fn shutdown(&self) {
        {
            let mut q = lock(&self.queue);
            q.shutdown = true;
            q.items.clear();
            q.open_state.clear();
            self.work.notify_all();
        }
        if !self.on_dispatch_thread() {
            if let Some(h) = lock(&self.thread).take() {
                let _ = h.join();
            }
        }
    }

    /// Number of queued events (for tests of bounded memory).
    pub fn queued(&self) -> usize {
        lock(&self.queue).items.len()
    }
}
