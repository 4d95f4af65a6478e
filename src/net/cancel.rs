//! Breaking one owner's calls on connections it shares with others.
//!
//! A client's requests to an endpoint share one keep-alive pool (every
//! lead, every follow, the calls made on the caller's threads), so closing
//! a lead can no longer close "its" connections: it breaks the calls it
//! has in flight, and only those. A `Cancel` belongs to one owner (one
//! `Nodes` and its clones): a call registers what breaks it while it runs
//! (the descriptor of the pooled connection it uses, or the ureq agent it
//! borrowed) and removes it when done; `shutdown` breaks every call
//! registered and fails every later one at once.

use crate::util::lock;
use std::collections::HashMap;
use std::os::unix::io::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// What breaks a call in flight.
pub enum Breaker {
    /// A plain connection's descriptor: shut down (not closed: its owner
    /// closes it).
    Fd(RawFd),
    /// A ureq agent lent to the call alone: shut down (its connections
    /// closed, its later requests refused).
    Agent(ureq::Agent),
}

impl Breaker {
    fn fire(&self) {
        match self {
            // SAFETY: the descriptor belongs to a connection still in
            // use: its call removes it (`leave`, under the lock `fire`
            // runs under) before dropping the connection.
            Breaker::Fd(fd) => unsafe {
                libc::shutdown(*fd, libc::SHUT_RDWR);
            },
            Breaker::Agent(agent) => agent.clone().shutdown(),
        }
    }
}

/// The calls of one owner, breakable together.
#[derive(Default)]
pub struct Cancel {
    shut: AtomicBool,
    busy: Mutex<HashMap<u64, Breaker>>,
    next: AtomicU64,
}

/// A call registered with `Cancel::enter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry(u64);

impl Cancel {
    /// Whether `shutdown` was called: every call fails at once.
    pub fn is_shut(&self) -> bool {
        self.shut.load(Ordering::SeqCst)
    }

    /// Breaks every call registered and fails the later ones.
    pub fn shutdown(&self) {
        self.shut.store(true, Ordering::SeqCst);
        for b in lock(&self.busy).values() {
            b.fire();
        }
    }

    /// Registers a call in flight, broken by `b` (at once when shut down
    /// already).
    pub fn enter(&self, b: Breaker) -> Entry {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut busy = lock(&self.busy);
        if self.is_shut() {
            b.fire();
        }
        busy.insert(id, b);
        Entry(id)
    }

    /// The call is over; false when it was broken (its connection or
    /// agent must not be used again).
    pub fn leave(&self, entry: Entry) -> bool {
        let mut busy = lock(&self.busy);
        busy.remove(&entry.0);
        !self.is_shut()
    }

    /// Calls in flight (for tests).
    #[cfg(test)]
    pub fn busy(&self) -> usize {
        lock(&self.busy).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    use std::os::unix::io::AsRawFd;

    #[test]
    fn shutdown_breaks_the_calls_in_flight_and_fails_later_ones_at_once() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mine = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let theirs = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (a, b) = (Cancel::default(), Cancel::default());
        let e = a.enter(Breaker::Fd(mine.as_raw_fd()));
        let f = b.enter(Breaker::Fd(theirs.as_raw_fd()));
        assert_eq!((a.busy(), b.busy()), (1, 1));
        a.shutdown();
        assert!(a.is_shut() && !b.is_shut());
        // Mine is broken (a read ends at once), theirs is not.
        let mut buf = [0u8; 1];
        assert_eq!((&mine).read(&mut buf).unwrap(), 0);
        theirs.set_nonblocking(true).unwrap();
        assert_eq!(
            (&theirs).read(&mut buf).unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock
        );
        assert!(!a.leave(e), "broken: not to be reused");
        assert!(b.leave(f), "intact");
        assert_eq!((a.busy(), b.busy()), (0, 0));
        // Entered after the shutdown: broken at once.
        let late = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let e = a.enter(Breaker::Fd(late.as_raw_fd()));
        assert_eq!((&late).read(&mut buf).unwrap(), 0);
        assert!(!a.leave(e));
    }
}
