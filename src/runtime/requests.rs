//! The request workers (phase A of docs/internals/fixed-threads.md): a few
//! threads that each carry out one blocking request at a time for the
//! reactor and hand the reply back to it.
//!
//! Owns: the worker threads, and `Queue`, the reactor's account of the
//! requests waiting for a worker and of those out per endpoint.
//! Never does: touch a machine or the mailbox of a lead (the reactor does,
//! with the reply), or decide anything: the retries and failover of a
//! call are `Nodes::fcall`'s, what a lead's request is made of is
//! `LeadWire::send`'s (session/leader.rs), and a follow group's calls
//! (probe, snapshot, the stream's check) are made by the closure the
//! group hands in (session/follower), each called here as is.
//!
//! A Webdis that stops answering (frozen, or its Redis) holds each request
//! sent to it until the request's timeout. So that it cannot hold every
//! worker, at most W-1 requests are out to one endpoint at a time when
//! the client has several (W with one endpoint: no other one needs the
//! last worker); the others wait in the reactor (`Queue`), taken in turn
//! by owner (a lead, a follow group), so that one busy stream does not
//! delay the others. A lead's request counts against the write endpoint;
//! a follow's snapshot and resync against the node it subscribed on (it
//! reads from there), its probe and stream check (calls to the write
//! endpoint) against that one.

use crate::error::Result;
use crate::net::nodes::Endpoints;
use crate::net::poller::Waker;
use crate::session::follower::FollowReply;
use crate::session::leader::LeadWire;
use crate::session::publisher::{Request, Stored};
use crossbeam_channel::{Receiver, Sender};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

/// Request workers per client.
pub(crate) const WORKERS: usize = crate::net::nodes::REQUESTS_AT_ONCE;

/// A lead's request, to be sent by a worker.
pub struct Job {
    pub session: u64,
    /// The endpoint it was counted against when handed to a worker (the
    /// one it goes to first: the write endpoint of the moment).
    pub endpoint: usize,
    pub request: Request,
    pub wire: Arc<LeadWire>,
}

/// A follow group's blocking call (`run`), over the client's shared
/// connections with a `Cancel` of its own (`Nodes`), which the group shuts
/// down when it gives the call up.
pub struct Call {
    pub group: u32,
    pub id: u64,
    /// The node the call goes to (the one the group subscribed on), or
    /// None for a call to the write endpoint of the moment.
    pub node: Option<usize>,
    pub endpoints: Arc<Endpoints>,
    /// The endpoint it was counted against when handed to a worker.
    pub endpoint: usize,
    pub run: Box<dyn FnOnce() -> FollowReply + Send>,
}

/// What a worker carries out.
pub enum Task {
    Lead(Job),
    Follow(Call),
}

/// Queue owners of follow groups: apart from the leads' sessions.
const GROUP_OWNER: u64 = 1 << 63;

impl Task {
    /// The owner the queue takes turns by: a lead's session, a group.
    pub fn owner(&self) -> u64 {
        match self {
            Task::Lead(job) => job.session,
            Task::Follow(call) => Task::group_owner(call.group),
        }
    }

    /// The queue owner of follow group `group`'s calls.
    pub fn group_owner(group: u32) -> u64 {
        GROUP_OWNER | u64::from(group)
    }

    /// The endpoint the task goes to first, asked when it goes out.
    pub fn target(&self) -> usize {
        match self {
            Task::Lead(job) => job.wire.conn.endpoints().primary(),
            Task::Follow(call) => call.node.unwrap_or_else(|| call.endpoints.primary()),
        }
    }

    /// Counted against `endpoint`.
    pub fn set_endpoint(&mut self, endpoint: usize) {
        match self {
            Task::Lead(job) => job.endpoint = endpoint,
            Task::Follow(call) => call.endpoint = endpoint,
        }
    }
}

/// A follow group's call carried out.
pub struct CallDone {
    pub group: u32,
    pub id: u64,
    /// The call's `endpoint`.
    pub endpoint: usize,
    pub reply: FollowReply,
}

/// A task carried out.
pub enum Done {
    Lead(ReqDone),
    Follow(CallDone),
}

/// A request carried out: its reply, when it came, and the endpoints'
/// move count then (a change since the request before: the write endpoint
/// moved during it).
pub struct ReqDone {
    pub session: u64,
    /// The job's `endpoint`.
    pub endpoint: usize,
    pub request: Request,
    pub reply: Result<Stored>,
    pub at: Instant,
    pub moves: u64,
}

/// The workers. Dropping the job sender (the reactor's) ends them once
/// their request of the moment is done.
pub struct Workers {
    pub threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts `n` workers taking jobs from `jobs`, answering on `done` and
    /// waking the reactor with `waker`.
    pub fn start(
        n: usize,
        jobs: Receiver<Task>,
        done: Sender<Done>,
        waker: Waker,
    ) -> std::io::Result<Workers> {
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let (jobs, done, waker) = (jobs.clone(), done.clone(), waker.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("ms-req-{i}"))
                .stack_size(256 * 1024)
                .spawn(move || work(jobs, done, waker));
            match spawned {
                Ok(t) => threads.push(t),
                // The ones started end when the job sender goes.
                Err(e) => return Err(e),
            }
        }
        Ok(Workers { threads })
    }

    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn work(jobs: Receiver<Task>, done: Sender<Done>, waker: Waker) {
    while let Ok(task) = jobs.recv() {
        let answered = match task {
            Task::Lead(job) => {
                let reply = job.wire.send(&job.request);
                let at = Instant::now();
                let moves = job.wire.conn.endpoints().moves();
                done.send(Done::Lead(ReqDone {
                    session: job.session,
                    endpoint: job.endpoint,
                    request: job.request,
                    reply,
                    at,
                    moves,
                }))
            }
            Task::Follow(call) => {
                let reply = (call.run)();
                done.send(Done::Follow(CallDone {
                    group: call.group,
                    id: call.id,
                    endpoint: call.endpoint,
                    reply,
                }))
            }
        };
        if answered.is_err() {
            return;
        }
        let _ = waker.wake();
    }
}

/// The requests waiting for a worker, and how many are out per endpoint,
/// without I/O: at most `workers` out in all and `cap` per endpoint;
/// waiting requests are taken in turn by owner, each owner's in the order
/// they came.
pub struct Queue<J> {
    /// Owners with requests waiting, in turn order.
    turn: VecDeque<u64>,
    waiting: HashMap<u64, VecDeque<J>>,
    /// Requests out, per endpoint.
    out: Vec<usize>,
    total: usize,
    workers: usize,
    cap: usize,
}

impl<J> Queue<J> {
    /// For `workers` workers and `endpoints` endpoints: the cap per
    /// endpoint is `workers - 1` with several endpoints (one worker is
    /// always left for the others), `workers` with one.
    pub fn new(workers: usize, endpoints: usize) -> Queue<J> {
        let workers = workers.max(1);
        let cap = if endpoints > 1 {
            (workers - 1).max(1)
        } else {
            workers
        };
        Queue {
            turn: VecDeque::new(),
            waiting: HashMap::new(),
            out: vec![0; endpoints.max(1)],
            total: 0,
            workers,
            cap,
        }
    }

    /// Requests out to one endpoint at most.
    #[cfg(test)]
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// A request of `owner` waits for a worker.
    pub fn push(&mut self, owner: u64, job: J) {
        let q = self.waiting.entry(owner).or_default();
        if q.is_empty() {
            self.turn.push_back(owner);
        }
        q.push_back(job);
    }

    /// The next request to hand a worker, and the endpoint it is counted
    /// against (`target`: where it goes first, asked now): the first owner
    /// in turn whose next request's endpoint is under the cap (that owner
    /// then goes last). None when every worker is busy or every waiting
    /// request's endpoint is at its cap.
    pub fn next(&mut self, target: impl Fn(&J) -> usize) -> Option<(usize, J)> {
        if self.total >= self.workers {
            return None;
        }
        for i in 0..self.turn.len() {
            let owner = self.turn[i];
            let Some(q) = self.waiting.get_mut(&owner) else {
                continue;
            };
            let Some(job) = q.front() else { continue };
            let endpoint = target(job).min(self.out.len() - 1);
            if self.out[endpoint] >= self.cap {
                continue;
            }
            let job = q.pop_front()?;
            self.turn.remove(i);
            if q.is_empty() {
                self.waiting.remove(&owner);
            } else {
                self.turn.push_back(owner);
            }
            self.out[endpoint] += 1;
            self.total += 1;
            return Some((endpoint, job));
        }
        None
    }

    /// Takes back the first request of `owner` still waiting that `which`
    /// picks (given up before a worker took it); whether there was one.
    pub fn withdraw(&mut self, owner: u64, which: impl Fn(&J) -> bool) -> bool {
        let Some(q) = self.waiting.get_mut(&owner) else {
            return false;
        };
        let Some(i) = q.iter().position(which) else {
            return false;
        };
        q.remove(i);
        if q.is_empty() {
            self.waiting.remove(&owner);
            self.turn.retain(|o| *o != owner);
        }
        true
    }

    /// A request counted against `endpoint` is done.
    pub fn done(&mut self, endpoint: usize) {
        if let Some(n) = self.out.get_mut(endpoint) {
            *n = n.saturating_sub(1);
        }
        self.total = self.total.saturating_sub(1);
    }

    /// Requests waiting.
    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        self.waiting.values().map(VecDeque::len).sum()
    }

    /// Requests out to `endpoint`.
    #[cfg(test)]
    pub fn out(&self, endpoint: usize) -> usize {
        self.out.get(endpoint).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Jobs as (owner, endpoint, n).
    fn drain(q: &mut Queue<(u64, usize, u32)>) -> Vec<(u64, usize, u32)> {
        let mut got = Vec::new();
        while let Some((e, job)) = q.next(|j| j.1) {
            assert_eq!(e, job.1);
            got.push(job);
        }
        got
    }

    #[test]
    fn one_frozen_endpoint_never_holds_every_worker() {
        let mut q = Queue::new(4, 2);
        assert_eq!(q.cap(), 3);
        for owner in 0..10 {
            q.push(owner, (owner, 0, 0));
        }
        // Endpoint 0 stops answering: three of its requests are out...
        assert_eq!(drain(&mut q).len(), 3);
        assert_eq!((q.out(0), q.waiting()), (3, 7));
        // ...and a request to the other endpoint still gets the last
        // worker, ahead of those waiting for endpoint 0.
        q.push(20, (20, 1, 0));
        assert_eq!(drain(&mut q), [(20, 1, 0)]);
        // Every worker busy: nothing more, whatever the endpoint.
        q.push(21, (21, 1, 0));
        assert!(q.next(|j| j.1).is_none());
        q.done(1);
        assert_eq!(drain(&mut q), [(21, 1, 0)]);
        // One of endpoint 0's requests ends (its timeout): the next one
        // waiting for endpoint 0 goes, in the order they came.
        q.done(0);
        assert_eq!(drain(&mut q), [(3, 0, 0)]);
        assert_eq!((q.out(0), q.out(1), q.waiting()), (3, 1, 6));
    }

    /// A request given up while it waits leaves the queue: the others,
    /// of its owner too, keep their order and turns; one already out is
    /// not there to withdraw.
    #[test]
    fn a_request_given_up_while_waiting_is_withdrawn() {
        let mut q: Queue<(u64, usize, u32)> = Queue::new(1, 1);
        for job in [(1, 0, 10), (2, 0, 20), (1, 0, 11), (3, 0, 30)] {
            q.push(job.0, job);
        }
        let out = q.next(|j| j.1).unwrap().1;
        assert_eq!(out, (1, 0, 10));
        assert!(!q.withdraw(1, |j| j.2 == 10), "already out");
        assert!(q.withdraw(2, |j| j.2 == 20));
        assert!(!q.withdraw(2, |j| j.2 == 20), "once");
        assert_eq!(q.waiting(), 2);
        let mut rest = Vec::new();
        for _ in 0..3 {
            q.done(0);
            rest.extend(q.next(|j| j.1).map(|(_, job)| job));
        }
        // Owner 1 went last after its first; owner 2 has no turn left.
        assert_eq!(rest, [(3, 0, 30), (1, 0, 11)]);
    }

    #[test]
    fn one_endpoint_uses_every_worker() {
        let mut q = Queue::new(4, 1);
        assert_eq!(q.cap(), 4);
        for owner in 0..6 {
            q.push(owner, (owner, 0, 0));
        }
        assert_eq!(drain(&mut q).len(), 4);
        q.done(0);
        q.done(0);
        assert_eq!(drain(&mut q).len(), 2);
        assert_eq!(q.waiting(), 0);
    }

    #[test]
    fn owners_take_turns_and_each_owners_requests_keep_their_order() {
        let mut q = Queue::new(1, 1);
        for n in 0..3 {
            q.push(7, (7, 0, n));
        }
        q.push(8, (8, 0, 0));
        q.push(9, (9, 0, 0));
        let mut order = Vec::new();
        while let Some((e, job)) = q.next(|j| j.1) {
            order.push((job.0, job.2));
            q.done(e);
        }
        assert_eq!(order, [(7, 0), (8, 0), (9, 0), (7, 1), (7, 2)]);
    }

    #[test]
    fn the_endpoint_is_asked_when_a_request_goes_out() {
        // A request waiting for the write endpoint goes to the one that
        // took the writes since (the target is asked at `next`).
        let mut q = Queue::new(4, 2);
        for owner in 0..5 {
            q.push(owner, owner);
        }
        let primary = std::cell::Cell::new(0usize);
        let mut first = Vec::new();
        while let Some((e, _)) = q.next(|_| primary.get()) {
            first.push(e);
        }
        assert_eq!(first, [0, 0, 0]);
        primary.set(1);
        assert_eq!(q.next(|_| primary.get()).map(|(e, _)| e), Some(1));
        assert!(q.next(|_| primary.get()).is_none(), "every worker busy");
        q.done(1);
        assert_eq!(q.next(|_| primary.get()).map(|(e, _)| e), Some(1));
    }
}
