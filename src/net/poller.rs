//! Readiness of many sockets on one thread: the reactor's wait.
//!
//! Owns: one OS poller (epoll on Linux, kqueue on macOS and the BSDs,
//! through the `polling` crate) and the wake-up other threads use to cut
//! its wait short. Never does: I/O on the sockets it watches, or any
//! bookkeeping of them (the caller keeps its sockets and their keys).
//!
//! Used by the reactor; see docs/internals/fixed-threads.md. Nothing in
//! production waits on it yet.
//!
//! Interest is one-shot: once a socket is reported, it is not reported
//! again until `rearm` (the reactor reads or writes until `WouldBlock`,
//! then re-arms with what it still wants). A wait interrupted by a signal
//! is resumed, not reported.
//!
//! Why the `polling` crate rather than `epoll` through `libc`: it is the
//! same few system calls on Linux, and the crate builds on every platform
//! the library does (kqueue, event ports, `poll` elsewhere), with its
//! wake-up (`notify`) ready-made, at the price of a small dependency
//! (`rustix`, already built for cbindgen at build time, and
//! `concurrent-queue`). `epoll` by hand would be Linux only.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::time::Duration;

/// What a socket is watched for, and what it became ready for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interest {
    pub readable: bool,
    pub writable: bool,
}

impl Interest {
    pub(crate) const READ: Interest = Interest {
        readable: true,
        writable: false,
    };
    pub(crate) const WRITE: Interest = Interest {
        readable: false,
        writable: true,
    };
    pub(crate) const BOTH: Interest = Interest {
        readable: true,
        writable: true,
    };
}

/// A socket found ready: its key, and for what. A socket whose peer hung
/// up or that failed is reported readable (reading says what happened).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ready {
    pub key: usize,
    pub readable: bool,
    pub writable: bool,
}

/// Largest key a socket may have (`usize::MAX` is the crate's own).
pub(crate) const MAX_KEY: usize = usize::MAX - 1;

/// One poller. `wait` is for one thread at a time (the reactor); `add`,
/// `rearm`, `delete` and `waker().wake()` may come from any thread.
pub struct Poller {
    inner: Arc<polling::Poller>,
    events: polling::Events,
}

/// Wakes the poller's current or next `wait` (from any thread). Cheap to
/// clone; a wake with nobody waiting is kept for the next wait, and many
/// wakes before it make one.
#[derive(Clone)]
pub struct Waker {
    inner: Arc<polling::Poller>,
}

impl Waker {
    pub fn wake(&self) -> io::Result<()> {
        self.inner.notify()
    }
}

fn event(key: usize, interest: Interest) -> polling::Event {
    polling::Event::new(key, interest.readable, interest.writable)
}

impl Poller {
    pub fn new() -> io::Result<Poller> {
        Ok(Poller {
            inner: Arc::new(polling::Poller::new()?),
            events: polling::Events::new(),
        })
    }

    pub fn waker(&self) -> Waker {
        Waker {
            inner: self.inner.clone(),
        }
    }

    /// Watches `socket` (non-blocking) under `key` for `interest`, once.
    ///
    /// # Safety
    ///
    /// `socket` must be `delete`d from this poller before it is closed.
    pub unsafe fn add(
        &self,
        socket: &impl AsRawFd,
        key: usize,
        interest: Interest,
    ) -> io::Result<()> {
        if key > MAX_KEY {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "key too large"));
        }
        // SAFETY: the caller's promise, passed on.
        unsafe { self.inner.add(socket.as_raw_fd(), event(key, interest)) }
    }

    /// Watches `socket`, added before, for `interest` once more (also to
    /// change the interest, or its key).
    pub fn rearm(&self, socket: &impl AsFd, key: usize, interest: Interest) -> io::Result<()> {
        if key > MAX_KEY {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "key too large"));
        }
        self.inner.modify(socket.as_fd(), event(key, interest))
    }

    /// Stops watching `socket`.
    pub fn delete(&self, socket: &impl AsFd) -> io::Result<()> {
        self.inner.delete(socket.as_fd())
    }

    /// Waits until a watched socket is ready, a `Waker` wakes it, or
    /// `timeout` passes (None: no limit). Appends what is ready to `out`
    /// (nothing when woken or timed out).
    pub fn wait(&mut self, out: &mut Vec<Ready>, timeout: Option<Duration>) -> io::Result<()> {
        self.events.clear();
        self.inner.wait(&mut self.events, timeout)?;
        out.extend(self.events.iter().map(|e| Ready {
            key: e.key,
            readable: e.readable,
            writable: e.writable,
        }));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::Instant;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        a.set_nonblocking(true).unwrap();
        (a, b)
    }

    fn ready(p: &mut Poller, timeout: Duration) -> Vec<Ready> {
        let mut out = Vec::new();
        p.wait(&mut out, Some(timeout)).unwrap();
        out
    }

    const SHORT: Duration = Duration::from_millis(50);
    const LONG: Duration = Duration::from_secs(10);

    #[test]
    fn a_socket_is_reported_once_per_arming() {
        let mut p = Poller::new().unwrap();
        let (a, mut b) = pair();
        unsafe { p.add(&a, 7, Interest::READ).unwrap() };
        assert_eq!(ready(&mut p, SHORT), vec![], "nothing to read yet");
        b.write_all(b"x").unwrap();
        let got = ready(&mut p, LONG);
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].key, got[0].readable), (7, true));
        // One-shot: still unread, not reported again until re-armed.
        b.write_all(b"y").unwrap();
        assert_eq!(ready(&mut p, SHORT), vec![]);
        p.rearm(&a, 8, Interest::READ).unwrap();
        let got = ready(&mut p, LONG);
        assert_eq!((got.len(), got[0].key), (1, 8));
        // Drained, then re-armed: quiet.
        let mut buf = [0u8; 16];
        assert_eq!((&a).read(&mut buf).unwrap(), 2);
        p.rearm(&a, 8, Interest::READ).unwrap();
        assert_eq!(ready(&mut p, SHORT), vec![]);
        p.delete(&a).unwrap();
        b.write_all(b"z").unwrap();
        assert_eq!(ready(&mut p, SHORT), vec![], "deleted");
    }

    #[test]
    fn a_connected_socket_is_writable_and_a_hang_up_is_readable() {
        let mut p = Poller::new().unwrap();
        let (a, b) = pair();
        unsafe { p.add(&a, 1, Interest::WRITE).unwrap() };
        let got = ready(&mut p, LONG);
        assert_eq!(
            got,
            vec![Ready {
                key: 1,
                readable: false,
                writable: true
            }]
        );
        p.rearm(&a, 1, Interest::READ).unwrap();
        assert_eq!(ready(&mut p, SHORT), vec![]);
        drop(b);
        let got = ready(&mut p, LONG);
        assert_eq!((got.len(), got[0].readable), (1, true));
        let mut buf = [0u8; 4];
        assert_eq!((&a).read(&mut buf).unwrap(), 0, "the hang-up, read");
        p.delete(&a).unwrap();
    }

    #[test]
    fn sockets_are_told_apart_by_key() {
        let mut p = Poller::new().unwrap();
        let pairs: Vec<_> = (0..5).map(|_| pair()).collect();
        for (i, (a, _)) in pairs.iter().enumerate() {
            unsafe { p.add(a, 100 + i, Interest::READ).unwrap() };
        }
        for i in [1, 3] {
            (&pairs[i].1).write_all(b"!").unwrap();
        }
        let deadline = Instant::now() + LONG;
        let mut keys = Vec::new();
        while keys.len() < 2 && Instant::now() < deadline {
            keys.extend(ready(&mut p, LONG).iter().map(|r| r.key));
        }
        keys.sort();
        assert_eq!(keys, vec![101, 103]);
        for (a, _) in &pairs {
            p.delete(a).unwrap();
        }
    }

    #[test]
    fn a_waker_cuts_the_wait_short_from_another_thread() {
        let mut p = Poller::new().unwrap();
        let w = p.waker();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            w.wake().unwrap();
        });
        let start = Instant::now();
        assert_eq!(ready(&mut p, Duration::from_secs(30)), vec![]);
        assert!(start.elapsed() < Duration::from_secs(20), "woken");
        t.join().unwrap();
        // A wake with nobody waiting is kept for the next wait, once.
        p.waker().wake().unwrap();
        p.waker().wake().unwrap();
        let start = Instant::now();
        ready(&mut p, Duration::from_secs(30));
        assert!(start.elapsed() < Duration::from_secs(20), "kept wake");
        let start = Instant::now();
        ready(&mut p, Duration::from_millis(200));
        assert!(
            start.elapsed() >= Duration::from_millis(150),
            "one wake only"
        );
    }

    #[test]
    fn a_wait_without_events_lasts_its_timeout() {
        let mut p = Poller::new().unwrap();
        let start = Instant::now();
        ready(&mut p, Duration::from_millis(100));
        assert!(start.elapsed() >= Duration::from_millis(90));
    }

    #[test]
    fn the_reserved_key_is_refused() {
        let p = Poller::new().unwrap();
        let (a, _b) = pair();
        let e = unsafe { p.add(&a, usize::MAX, Interest::READ) }.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        unsafe { p.add(&a, MAX_KEY, Interest::READ).unwrap() };
        assert!(p.rearm(&a, usize::MAX, Interest::READ).is_err());
        p.delete(&a).unwrap();
    }
}
