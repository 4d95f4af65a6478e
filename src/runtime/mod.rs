//! The runtime of a client's streams: its leads and follows driven by one
//! network thread (`ms-net`, the reactor) and a few request workers
//! (`ms-req-*`), whatever their number, instead of threads per stream.
//! Designed in docs/internals/fixed-threads.md.
//!
//! Owns: the reactor thread, the workers, and the command queue callers
//! use to hand the reactor a lead or a follow, end a follow, or wake it. Never does: anything on a
//! caller's thread but queue a command and wake the reactor (no lock of
//! the reactor's, no wait: the waits of `flush`, `pause` and `close` are
//! on the lead's own condition variable).

pub mod reactor;
pub mod requests;
pub mod timers;

use crate::error::{Error, Result, Status};
use crate::net::poller::{Poller, Waker};
use crate::session::follower::{Follows, Joining};
use crate::session::leader::{Driver, Lead, LeadWire};
use crate::session::publisher::Publisher;
use crate::session::{Config, Hooks};
use crate::util::lock;
use crossbeam_channel::Sender;
use reactor::{LeadSlot, Reactor};
use requests::Workers;
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, ThreadId};

/// What callers tell the reactor.
pub enum Command {
    /// A lead to drive from now on (after ms_start / ms_reconnect).
    Lead(Box<LeadSlot>),
    /// A lead's mailbox changed (publish, resume, terminate, close).
    Wake(u64),
    /// A follow, its password checked: it joins its stream's group.
    Follow(Box<Joining>),
    /// A follow ends (`done` answered once its member is dropped).
    Unfollow { session: u64, done: Sender<()> },
    /// End: every lead left is ended, the workers stop.
    Shutdown,
}

/// How callers reach the reactor.
#[derive(Clone)]
pub struct Handle {
    commands: Sender<Command>,
    waker: Waker,
    reactor: ThreadId,
}

impl Handle {
    /// Queues `cmd` and wakes the reactor; never blocks. False when the
    /// reactor is gone.
    pub fn send(&self, cmd: Command) -> bool {
        let sent = self.commands.send(cmd).is_ok();
        if sent {
            let _ = self.waker.wake();
        }
        sent
    }

    /// Whether the calling thread is the reactor (which must never wait
    /// for itself).
    pub fn on_reactor(&self) -> bool {
        std::thread::current().id() == self.reactor
    }
}

impl Driver for Handle {
    fn wake(&self, session: u64) {
        self.send(Command::Wake(session));
    }

    fn is_driving(&self) -> bool {
        self.on_reactor()
    }
}

/// One per client, started with its first lead.
pub struct Runtime {
    handle: Handle,
    reactor: Mutex<Option<JoinHandle<()>>>,
    workers: Mutex<Option<Workers>>,
}

fn cannot_start(e: std::io::Error) -> Error {
    Error::new(
        Status::MS_ERR_INTERNAL,
        format!("cannot start a thread: {e}"),
    )
}

impl Runtime {
    /// The runtime of a client of `endpoints` endpoints.
    pub fn start(endpoints: usize) -> Result<Runtime> {
        let poller = Poller::new().map_err(|e| {
            Error::new(
                Status::MS_ERR_INTERNAL,
                format!("cannot create a poller: {e}"),
            )
        })?;
        let waker = poller.waker();
        let (commands, command_rx) = crossbeam_channel::unbounded();
        let (jobs, job_rx) = crossbeam_channel::unbounded();
        let (done, done_rx) = crossbeam_channel::unbounded();
        let workers =
            Workers::start(requests::WORKERS, job_rx, done, waker.clone()).map_err(cannot_start)?;
        let reactor = Reactor {
            poller,
            commands: command_rx,
            jobs: Some(jobs),
            queue: requests::Queue::new(requests::WORKERS, endpoints),
            done: done_rx,
            timers: timers::Timers::new(),
            leads: Default::default(),
            follows: Follows::default(),
            next_id: 0,
        };
        let thread = std::thread::Builder::new()
            .name("ms-net".into())
            .stack_size(256 * 1024)
            .spawn(move || reactor.run())
            .map_err(cannot_start)?;
        Ok(Runtime {
            handle: Handle {
                commands,
                waker,
                reactor: thread.thread().id(),
            },
            reactor: Mutex::new(Some(thread)),
            workers: Mutex::new(Some(workers)),
        })
    }

    /// How callers reach the reactor.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// What a lead of this runtime wakes it with.
    pub fn driver(&self) -> Arc<dyn Driver> {
        Arc::new(self.handle.clone())
    }

    /// The reactor drives `lead` (made by `Lead::spawn` with `driver()`)
    /// from now on.
    pub fn drive_lead(
        &self,
        lead: &Lead,
        machine: Publisher,
        wire: Arc<LeadWire>,
        config: Arc<Config>,
        hooks: Hooks,
    ) -> Result<()> {
        let slot = LeadSlot {
            session: lead.session,
            machine,
            shared: lead.shared().clone(),
            moves: wire.conn.endpoints().moves(),
            wire,
            config,
            hooks,
            in_flight: false,
        };
        if self.handle.send(Command::Lead(Box::new(slot))) {
            Ok(())
        } else {
            Err(Error::new(
                Status::MS_ERR_INTERNAL,
                "the client's network thread has ended",
            ))
        }
    }

    /// Ends the reactor (every lead still there ends) and the workers, and
    /// waits for them (unless called on the reactor itself).
    pub fn shutdown(&self) {
        self.handle.send(Command::Shutdown);
        if self.handle.on_reactor() {
            return;
        }
        if let Some(t) = lock(&self.reactor).take() {
            let _ = t.join();
        }
        if let Some(w) = lock(&self.workers).take() {
            w.join();
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_ends_the_reactor_and_the_workers() {
        let rt = Runtime::start(1).unwrap();
        let handle = rt.handle.clone();
        assert!(!handle.on_reactor());
        assert!(
            handle.send(Command::Wake(1)),
            "a wake for no lead is ignored"
        );
        rt.shutdown();
        assert!(
            lock(&rt.reactor).is_none() && lock(&rt.workers).is_none(),
            "joined"
        );
        assert!(!handle.send(Command::Wake(1)), "the reactor is gone");
        rt.shutdown();
    }
}
