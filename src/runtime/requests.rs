//! The request workers (phase A of docs/internals/fixed-threads.md): a few
//! threads that each carry out one blocking request at a time for the
//! reactor and hand the reply back to it.
//!
//! Owns: the worker threads and the queue of requests waiting for one.
//! Never does: touch a machine or the mailbox of a lead (the reactor does,
//! with the reply), or decide anything: the retries and failover of a
//! call are `Nodes::fcall`'s, what a lead's request is made of is
//! `LeadWire::send`'s (session/leader.rs), and a follow group's calls
//! (probe, snapshot, the stream's check) are made by the closure the
//! group hands in (session/follower), each called here as is.

use crate::error::Result;
use crate::net::poller::Waker;
use crate::session::follower::FollowReply;
use crate::session::leader::LeadWire;
use crate::session::publisher::{Request, Stored};
use crossbeam_channel::{Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

/// Request workers per client.
pub(crate) const WORKERS: usize = 4;

/// A lead's request, to be sent by a worker.
pub struct Job {
    pub session: u64,
    pub request: Request,
    pub wire: Arc<LeadWire>,
}

/// A follow group's blocking call (`run`), on connections of its own
/// that the group shuts down when it gives the call up.
pub struct Call {
    pub group: u32,
    pub id: u64,
    pub run: Box<dyn FnOnce() -> FollowReply + Send>,
}

/// What a worker carries out.
pub enum Task {
    Lead(Job),
    Follow(Call),
}

/// A follow group's call carried out.
pub struct CallDone {
    pub group: u32,
    pub id: u64,
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
