//! The reactor thread (`ms-net`): drives every lead and every follow of a
//! client.
//!
//! Owns: each lead's `Publisher` machine (its `Mailbox` stays behind the
//! lead's mutex, shared with the caller's `publish`, `flush`, `pause`,
//! `close`), every follow group (session/follower: its subscription
//! socket, `Session` and `Delivery`), the poller those sockets are
//! watched with, the timers of both, the queue of requests for the
//! workers and the replies coming back.
//! Never does: block (no I/O, no user callback: events go to the
//! dispatcher, which never blocks; the only locks taken are a lead's
//! mailbox, held for a swap, and the client's registry in the
//! `lead_ended` hook), or wait for a caller.
//!
//! `drive_lead` is the loop body of the publisher thread it replaces:
//! `Publisher::poll`, then a request to a worker (`Send`), a timer
//! (`Wait`, and `Linger` as a timer due at once), or the end (`Exit`). A
//! reply is `Publisher::done` under the mailbox lock, its effects carried
//! out, the waiters of the mailbox (flush, pause, close) woken, and the
//! lead driven again. One request per lead is out at a time (Webdis does
//! not order concurrent requests).
//!
//! Follows: a socket ready, a timer of a group, a call of a group's come
//! back are handed to `Follows` (session/follower), the driver of each
//! group's `Session` and `Opening`.
//!
//! See docs/internals/fixed-threads.md.

use super::requests::{CallDone, Done, Job, Queue, ReqDone, Task};
use super::timers::{TimerKey, Timers};
use super::Command;
use crate::dispatch::{Event, EventKind};
use crate::error::Status;
use crate::net::poller::Poller;
use crate::session::follower::{Ctx, Follows};
use crate::session::leader::{LeadShared, LeadWire};
use crate::session::publisher::{Effect, Next, Publisher};
use crate::session::{Config, Hooks};
use crate::util::lock;
use crossbeam_channel::{Receiver, Sender};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// A lead as the reactor holds it.
pub struct LeadSlot {
    pub session: u64,
    pub machine: Publisher,
    pub shared: Arc<LeadShared>,
    pub wire: Arc<LeadWire>,
    pub config: Arc<Config>,
    pub hooks: Hooks,
    /// The endpoints' move count after the last request.
    pub moves: u64,
    /// A request of this lead is with a worker.
    pub in_flight: bool,
}

pub struct Reactor {
    pub poller: Poller,
    pub commands: Receiver<Command>,
    pub jobs: Option<Sender<Task>>,
    /// Requests of leads and calls of follow groups waiting for a worker
    /// (at most W-1 out per endpoint with several endpoints, see
    /// requests.rs).
    pub queue: Queue<Task>,
    pub done: Receiver<Done>,
    pub timers: Timers,
    pub leads: HashMap<u64, LeadSlot>,
    pub follows: Follows,
    /// The id of the last call of a follow group's.
    pub next_id: u64,
}

/// The follows' view of the reactor's parts.
macro_rules! ctx {
    ($self:ident) => {
        &mut Ctx {
            poller: &$self.poller,
            timers: &mut $self.timers,
            jobs: $self.jobs.as_ref(),
            queue: &mut $self.queue,
            next_id: &mut $self.next_id,
        }
    };
}

impl Reactor {
    pub fn run(mut self) {
        let mut ready = Vec::new();
        loop {
            let now = Instant::now();
            for key in self.timers.pop_due(now) {
                match key {
                    TimerKey::Lead(session) => self.drive_lead(session),
                    key => self.follows.timer(key, ctx!(self)),
                }
            }
            // The calls the follows submitted (timers, sockets, commands,
            // replies) go to the workers the queue lets them.
            self.hand_out();
            let timeout = self
                .timers
                .next()
                .map(|at| at.saturating_duration_since(Instant::now()));
            ready.clear();
            if let Err(e) = self.poller.wait(&mut ready, timeout) {
                crate::util::debug_log!("the reactor's wait failed: {e}");
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            let mut shutdown = false;
            let mut sockets_done = false;
            loop {
                let mut any = false;
                while let Ok(cmd) = self.commands.try_recv() {
                    any = true;
                    match cmd {
                        Command::Lead(slot) => {
                            let session = slot.session;
                            self.leads.insert(session, *slot);
                            self.drive_lead(session);
                        }
                        Command::Wake(session) => self.drive_lead(session),
                        Command::Follow(joining) => self.follows.join(*joining, ctx!(self)),
                        Command::Unfollow { session, done } => {
                            self.follows.leave(session, ctx!(self));
                            let _ = done.send(());
                        }
                        Command::Shutdown => shutdown = true,
                    }
                }
                if !sockets_done {
                    sockets_done = true;
                    for r in ready.drain(..) {
                        self.follows.socket_ready(r.key, ctx!(self));
                    }
                }
                while let Ok(done) = self.done.try_recv() {
                    any = true;
                    match done {
                        Done::Lead(done) => self.request_done(done),
                        Done::Follow(done) => self.call_done(done),
                    }
                }
                if !any {
                    break;
                }
            }
            if shutdown {
                self.shut_down();
                return;
            }
        }
    }

    /// The lead's next step, unless a request of it is out.
    fn drive_lead(&mut self, session: u64) {
        let Some(slot) = self.leads.get_mut(&session) else {
            return;
        };
        if slot.in_flight {
            return;
        }
        let now = Instant::now();
        let next = {
            let mut st = lock(&slot.shared.state);
            slot.machine.set_deltas(slot.config.deltas());
            slot.machine.poll(&mut st, now, slot.config.heartbeat())
        };
        let key = TimerKey::Lead(session);
        let request = match next {
            Next::Send(request) => request,
            // The request of a state is made with the mailbox let go.
            Next::Publish(unsent) => slot.machine.request(unsent),
            // A new state often follows a request at once: look again on
            // the next turn rather than sleep.
            Next::Linger => return self.timers.set(key, now),
            Next::Wait(at) => return self.timers.set(key, at),
            Next::Exit => return self.end_lead(session),
        };
        self.timers.cancel(&key);
        if self.jobs.is_none() {
            // No worker left (shutting down): the lead is over.
            self.end_lead(session);
            return;
        }
        let job = Task::Lead(Job {
            session,
            endpoint: 0,
            request,
            wire: slot.wire.clone(),
        });
        slot.in_flight = true;
        self.queue.push(session, job);
        self.hand_out();
    }

    /// Hands the workers the requests and calls the queue lets go, each
    /// counted against the endpoint it goes to first (a lead's: the write
    /// endpoint now; a follow's: its node, see `Task::target`).
    fn hand_out(&mut self) {
        while let Some((endpoint, mut task)) = self.queue.next(Task::target) {
            task.set_endpoint(endpoint);
            let session = match &task {
                Task::Lead(job) => Some(job.session),
                Task::Follow(_) => None,
            };
            let sent = self.jobs.as_ref().is_some_and(|j| j.send(task).is_ok());
            if !sent {
                self.queue.done(endpoint);
                match session {
                    // No worker left (shutting down): the lead is over.
                    Some(session) => self.end_lead(session),
                    // The group goes with the reactor (`shut_down`).
                    None => crate::util::debug_log!("a follow's call found no worker"),
                }
            }
        }
    }

    fn call_done(&mut self, done: CallDone) {
        self.queue.done(done.endpoint);
        self.hand_out();
        self.follows
            .call_done(done.group, done.id, done.reply, ctx!(self));
    }

    fn request_done(&mut self, done: ReqDone) {
        self.queue.done(done.endpoint);
        self.hand_out();
        let session = done.session;
        let Some(slot) = self.leads.get_mut(&session) else {
            return;
        };
        slot.in_flight = false;
        let moved = done.moves != slot.moves;
        slot.moves = done.moves;
        let effects = {
            let mut st = lock(&slot.shared.state);
            slot.machine
                .done(&mut st, done.request, done.reply, done.at, moved)
        };
        for effect in effects {
            match effect {
                Effect::Log(text) => crate::util::debug_log!("lead {session}: {text}"),
                Effect::PublishFailed(status) => publish_failed(slot, status),
                Effect::Ended(e) => {
                    slot.shared.cond.notify_all();
                    (slot.hooks.lead_ended)(session, &slot.wire.identity.name);
                    publish_failed(slot, e.status);
                    self.end_lead(session);
                    return;
                }
            }
        }
        slot.shared.cond.notify_all();
        self.drive_lead(session);
    }

    /// Drops the lead and tells its waiters (`Lead::join`).
    fn end_lead(&mut self, session: u64) {
        self.timers.cancel(&TimerKey::Lead(session));
        if let Some(slot) = self.leads.remove(&session) {
            slot.shared.finish();
        }
    }

    /// Every lead still here ends (the client closed them before, within
    /// its timeout: what is left is past it); requests still out are
    /// broken; the workers end once the job queue is gone.
    fn shut_down(&mut self) {
        for slot in self.leads.values() {
            slot.wire.conn.shutdown();
        }
        let sessions: Vec<u64> = self.leads.keys().copied().collect();
        for session in sessions {
            self.end_lead(session);
        }
        self.follows.shut_down(ctx!(self));
        self.jobs = None;
    }
}

/// Leads still held when the reactor goes (after `shut_down`, none; after
/// a panic, those it drove) are let go, so that no `Lead::join` waits for
/// a reactor that is gone.
impl Drop for Reactor {
    fn drop(&mut self) {
        for (_, slot) in self.leads.drain() {
            slot.wire.conn.shutdown();
            slot.shared.finish();
        }
    }
}

/// Reports MS_EVENT_PUBLISH_FAILED with its cause.
fn publish_failed(slot: &LeadSlot, status: Status) {
    slot.hooks.dispatcher.push(
        slot.session,
        Event::new(
            EventKind::MS_EVENT_PUBLISH_FAILED,
            &slot.wire.identity.name,
            status,
        ),
    );
}
