//! A small keep-alive HTTP/1.1 client for the requests to Webdis over
//! plain `http://`: one write per request (head and body together), one
//! read per response in the common case, pooled connections. It exists for
//! the publisher's hot path. A request on a reused connection costs three
//! system calls: a non-blocking peek (nothing may be waiting on an idle
//! connection), the write and the read; socket timeouts are set only when
//! they change, and the busy connections are known by their descriptors
//! (no duplicate to close). ureq serves `https://` and the long-lived
//! SUBSCRIBE streams. Response heads are parsed by `httparse`, strictly:
//! see `parse_head`.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::net::cancel::{Breaker, Cancel};
use crate::util::lock;

/// Bodies up to this size are copied behind the head for a single write.
const COALESCE: usize = 64 * 1024;
/// Idle connections kept by the pools of the tests.
#[cfg(test)]
const MAX_IDLE: usize = 8;
/// Longest response head read.
const MAX_HEAD: usize = 64 * 1024;
/// Most header lines in a response head (Webdis sends about ten).
const MAX_HEADERS: usize = 32;

#[derive(Debug)]
pub enum HttpError {
    /// No complete response within the timeout.
    Timeout,
    /// Connecting, sending or receiving failed.
    Io(io::Error),
    /// The bytes received are not an HTTP/1.1 response this client reads.
    Malformed(&'static str),
    /// The pool was shut down.
    Shutdown,
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Timeout => write!(f, "timed out"),
            HttpError::Io(e) => write!(f, "{e}"),
            HttpError::Malformed(what) => write!(f, "malformed HTTP response: {what}"),
            HttpError::Shutdown => write!(f, "the connection was shut down"),
        }
    }
}

fn io_error(e: io::Error) -> HttpError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => HttpError::Timeout,
        _ => HttpError::Io(e),
    }
}

/// A connection with the socket timeouts last set on it, so that they are
/// set again only when they change.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    timeout: Option<Duration>,
}

impl Conn {
    /// Makes every blocking read and write on the socket wait at most `d`.
    fn wait_at_most(&mut self, d: Duration) -> Result<(), HttpError> {
        let d = d.max(Duration::from_millis(1));
        if self.timeout != Some(d) {
            self.stream
                .set_read_timeout(Some(d))
                .map_err(HttpError::Io)?;
            self.stream
                .set_write_timeout(Some(d))
                .map_err(HttpError::Io)?;
            self.timeout = Some(d);
        }
        Ok(())
    }
}

/// Keep-alive connections to one `host:port`.
pub struct Pool {
    authority: String,
    idle: Mutex<Vec<Conn>>,
    /// Most idle connections kept.
    max_idle: usize,
    /// Descriptors of the connections in use, shut down by `shutdown`. An
    /// entry is removed before its connection is dropped, under this lock.
    busy: Mutex<HashMap<u64, RawFd>>,
    next_id: AtomicU64,
    shut: AtomicBool,
}

impl Pool {
    #[cfg(test)]
    pub fn new(authority: &str) -> Pool {
        Pool::with_idle(authority, MAX_IDLE)
    }

    /// A pool keeping at most `max_idle` idle connections: one shared by
    /// every request of a client to one endpoint keeps as many as the
    /// client runs requests at once.
    pub fn with_idle(authority: &str, max_idle: usize) -> Pool {
        Pool {
            authority: authority.to_string(),
            idle: Mutex::new(Vec::new()),
            max_idle: max_idle.max(1),
            busy: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            shut: AtomicBool::new(false),
        }
    }

    /// Closes every connection and fails the requests in flight; later
    /// requests fail too.
    pub fn shutdown(&self) {
        self.shut.store(true, Ordering::SeqCst);
        for c in lock(&self.idle).drain(..) {
            let _ = c.stream.shutdown(Shutdown::Both);
        }
        for &fd in lock(&self.busy).values() {
            // SAFETY: the descriptor belongs to a connection still in use:
            // its owner removes it from `busy` (under this lock) before
            // dropping the connection.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
    }

    fn connect(&self, deadline: Instant) -> Result<Conn, HttpError> {
        let addrs: Vec<SocketAddr> = self
            .authority
            .to_socket_addrs()
            .map_err(HttpError::Io)?
            .collect();
        let mut last = HttpError::Io(io::Error::new(
            io::ErrorKind::NotFound,
            format!("the name service has no address for {}", self.authority),
        ));
        for addr in addrs {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(HttpError::Timeout);
            }
            match TcpStream::connect_timeout(&addr, left) {
                Ok(s) => {
                    s.set_nodelay(true).map_err(HttpError::Io)?;
                    return Ok(Conn {
                        stream: s,
                        timeout: None,
                    });
                }
                Err(e) => last = io_error(e),
            }
        }
        Err(last)
    }

    /// Sends `PUT <path>` with `body`; returns the status and body of the
    /// response, and puts the connection back in the pool. `head_extra`
    /// holds further header lines, each ending in CRLF.
    #[cfg(test)]
    pub fn put(
        &self,
        path: &str,
        head_extra: &str,
        body: &[u8],
        timeout: Duration,
        max_body: usize,
    ) -> Result<(u16, Vec<u8>), HttpError> {
        let cancel = Cancel::default();
        let r = self.put_within(
            path,
            head_extra,
            &[body],
            timeout,
            timeout,
            max_body,
            &cancel,
        )?;
        self.recycle(r.conn);
        Ok((r.status, r.body))
    }

    /// `put`, failing with `Timeout` also when no byte of the response has
    /// come `answer_within` after the request was written (sending a large
    /// body and reading a large response may take the whole `timeout`).
    ///
    /// The body is given as slices sent one after the other (a state
    /// behind a short prefix is never copied to join them); the
    /// Content-Length is their sum.
    ///
    /// The connection is handed back only with the response: the caller
    /// gives it to `recycle` once the response proved to answer this
    /// request, or drops it (a connection is never reused unless every
    /// byte it received was read as the answer to a request sent on it).
    ///
    /// `cancel` is the caller's: its `shutdown` breaks this request (and
    /// no other request on the pool).
    #[allow(clippy::too_many_arguments)]
    pub fn put_within(
        &self,
        path: &str,
        head_extra: &str,
        body: &[&[u8]],
        timeout: Duration,
        answer_within: Duration,
        max_body: usize,
        cancel: &Cancel,
    ) -> Result<Response, HttpError> {
        let deadline = Instant::now() + timeout;
        let head = format!(
            "PUT {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n{head_extra}\r\n",
            self.authority,
            body_len(body)
        );
        // A pooled connection may have been closed by Webdis while idle:
        // if it fails before any byte of a response, use a new one.
        loop {
            if self.shut.load(Ordering::SeqCst) || cancel.is_shut() {
                return Err(HttpError::Shutdown);
            }
            let pooled = self.take_idle();
            let reused = pooled.is_some();
            let mut conn = match pooled {
                Some(c) => c,
                None => self.connect(deadline)?,
            };
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            lock(&self.busy).insert(id, conn.stream.as_raw_fd());
            if self.shut.load(Ordering::SeqCst) {
                let _ = conn.stream.shutdown(Shutdown::Both);
            }
            let entry = cancel.enter(Breaker::Fd(conn.stream.as_raw_fd()));
            let result = exchange(&mut conn, &head, body, deadline, answer_within, max_body);
            // Broken by the caller's `cancel`: the connection is not used
            // again (its socket may be shut down).
            let intact = cancel.leave(entry);
            lock(&self.busy).remove(&id);
            match result {
                Ok((status, body, keep_alive)) => {
                    return Ok(Response {
                        status,
                        body,
                        conn: (keep_alive && intact).then_some(conn),
                    });
                }
                Err(_) if !intact => return Err(HttpError::Shutdown),
                Err((e, got_bytes)) => {
                    if matches!(e, HttpError::Timeout | HttpError::Malformed(_)) {
                        // Webdis 0.1.9 can lose track of its connections
                        // after a subscriber hangs up (responses lost or
                        // written elsewhere): the idle ones may be in the
                        // same state, so the next request opens a new one.
                        self.forget_idle();
                    }
                    let stale = reused && !got_bytes && matches!(e, HttpError::Io(_));
                    if !stale {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Keeps a connection whose response answered its request for the
    /// next request (unless the pool is shut down or full).
    pub fn recycle(&self, conn: Option<Conn>) {
        if let Some(conn) = conn {
            if !self.shut.load(Ordering::SeqCst) {
                let mut idle = lock(&self.idle);
                if idle.len() < self.max_idle {
                    idle.push(conn);
                }
            }
        }
    }

    /// Idle connections kept now.
    #[cfg(test)]
    pub fn idle(&self) -> usize {
        lock(&self.idle).len()
    }

    /// Closes the idle connections: the next request opens a new one.
    pub fn forget_idle(&self) {
        lock(&self.idle).clear();
    }

    /// An idle connection that has received nothing since its last
    /// response: one with unread bytes (a reply written to the wrong
    /// socket) or closed by the server is dropped.
    fn take_idle(&self) -> Option<Conn> {
        loop {
            let conn = lock(&self.idle).pop()?;
            if quiet(&conn.stream) {
                return Some(conn);
            }
            crate::util::debug_log!(
                "http: dropped a pooled connection that had received bytes or was closed"
            );
        }
    }
}

/// The response to one request.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// The connection, for `Pool::recycle` (None: it cannot be reused).
    pub conn: Option<Conn>,
}

/// Whether nothing is waiting to be read on an idle connection (no bytes,
/// no end of stream), looked at without blocking.
fn quiet(stream: &TcpStream) -> bool {
    let mut b = 0u8;
    // SAFETY: a one-byte buffer on the stack; the fd is owned by `stream`.
    let r = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            &mut b as *mut u8 as *mut libc::c_void,
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    r < 0 && {
        let e = io::Error::last_os_error();
        matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
        )
    }
}

/// A response head as `parse_head` reads it.
#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    /// Bytes of the head, up to and including the blank line.
    pub len: usize,
    pub content_length: usize,
    /// HTTP/1.1 without `Connection: close`, or HTTP/1.0 with
    /// `Connection: keep-alive`.
    pub keep_alive: bool,
}

/// Parses a response head from the bytes received so far, without I/O:
/// `Ok(None)` while it is incomplete. Strict where a lenient reading could
/// take one response for another: the status line must be `HTTP/1.x` with
/// a three-digit code; every header line must be well formed; the body
/// length comes from exactly one `Content-Length` (repeats must agree);
/// `Transfer-Encoding` (Webdis uses it only for SUBSCRIBE streams) is
/// refused.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut headers);
    let len = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_HEAD {
                return Err(HttpError::Malformed("response head too long"));
            }
            return Ok(None);
        }
        Err(httparse::Error::Version) => return Err(HttpError::Malformed("invalid HTTP version")),
        Err(httparse::Error::Status) => return Err(HttpError::Malformed("invalid status code")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HttpError::Malformed("too many header lines"))
        }
        Err(_) => return Err(HttpError::Malformed("invalid header line")),
    };
    let status = r.code.ok_or(HttpError::Malformed("invalid status code"))?;
    let mut keep_alive = r.version == Some(1);
    let mut length: Option<usize> = None;
    for h in r.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or(HttpError::Malformed("bad Content-Length"))?;
            if length.is_some_and(|l| l != v) {
                return Err(HttpError::Malformed("conflicting Content-Length"));
            }
            length = Some(v);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::Malformed("unexpected Transfer-Encoding"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = std::str::from_utf8(h.value).unwrap_or("").trim();
            if v.eq_ignore_ascii_case("close") {
                keep_alive = false;
            } else if v.eq_ignore_ascii_case("keep-alive") {
                keep_alive = true;
            }
        }
    }
    let content_length = length.ok_or(HttpError::Malformed("no Content-Length"))?;
    Ok(Some(Head {
        status,
        len,
        content_length,
        keep_alive,
    }))
}

/// How long the next blocking call of an exchange may wait, without I/O:
/// while no byte of the answer came (`got` false), at most `answer_within`
/// at a time and not past `first_byte_by` (the wait for the first byte);
/// once some came, the rest of a large answer may take until the
/// deadline. A timeout when that time is up.
fn wait_for(
    now: Instant,
    deadline: Instant,
    first_byte_by: Instant,
    answer_within: Duration,
    got: bool,
) -> Result<Duration, HttpError> {
    let left = deadline.saturating_duration_since(now);
    if left.is_zero() || (!got && now >= first_byte_by) {
        return Err(HttpError::Timeout);
    }
    Ok(if got { left } else { answer_within.min(left) })
}

/// A response taken as its bytes come, without I/O: its head (see
/// `parse_head`), then exactly the `Content-Length` bytes of its body;
/// anything more is not a response this client asked for.
struct Reading {
    /// The head's bytes so far; once it is parsed, the body's.
    buf: Vec<u8>,
    head: Option<Head>,
    max_body: usize,
}

/// A complete response: its status, its body, and whether the connection
/// may be kept.
type Complete = (u16, Vec<u8>, bool);

impl Reading {
    fn new(max_body: usize) -> Reading {
        Reading {
            buf: Vec::with_capacity(4096),
            head: None,
            max_body,
        }
    }

    /// Whether any byte of the response came.
    fn got(&self) -> bool {
        self.head.is_some() || !self.buf.is_empty()
    }

    /// The most bytes to read next: a `chunk` while the head is
    /// incomplete, no more than the body lacks after (bytes beyond it are
    /// left unread, to be found on the connection).
    fn want(&self, chunk: usize) -> usize {
        match &self.head {
            None => chunk,
            Some(head) => (head.content_length - self.buf.len()).min(chunk),
        }
    }

    /// Takes bytes read; the response once complete.
    fn feed(&mut self, bytes: &[u8]) -> Result<Option<Complete>, HttpError> {
        self.buf.extend_from_slice(bytes);
        let content_length = match &self.head {
            Some(head) => head.content_length,
            None => {
                let Some(head) = parse_head(&self.buf)? else {
                    return Ok(None);
                };
                if head.content_length > self.max_body {
                    return Err(HttpError::Malformed("response body over the size limit"));
                }
                self.buf = self.buf.split_off(head.len);
                self.buf
                    .reserve(head.content_length.saturating_sub(self.buf.len()));
                let content_length = head.content_length;
                self.head = Some(head);
                content_length
            }
        };
        if self.buf.len() > content_length {
            // More than one response: not something this client asked for.
            return Err(HttpError::Malformed("bytes after the response"));
        }
        match &self.head {
            Some(head) if self.buf.len() == content_length => Ok(Some((
                head.status,
                std::mem::take(&mut self.buf),
                head.keep_alive,
            ))),
            _ => Ok(None),
        }
    }

    /// The failure of the connection closing now.
    fn closed(&self) -> HttpError {
        let what = if self.head.is_some() {
            "Webdis closed the connection mid-response"
        } else {
            "Webdis closed the connection"
        };
        HttpError::Io(io::Error::new(io::ErrorKind::UnexpectedEof, what))
    }
}

/// The length of a body given as slices.
pub fn body_len(body: &[&[u8]]) -> usize {
    body.iter().map(|p| p.len()).sum()
}

/// Sends a request: head and body in one write when the body is small;
/// otherwise the head with the body's small slices joined, and each large
/// slice written as it is (no copy of a state).
fn send(
    conn: &mut Conn,
    head: &str,
    body: &[&[u8]],
    deadline: Instant,
    answer_within: Duration,
) -> Result<(), HttpError> {
    let total = body_len(body);
    if total <= COALESCE {
        let wait = wait_for(Instant::now(), deadline, deadline, answer_within, false)?;
        conn.wait_at_most(wait)?;
        let mut stream = &conn.stream;
        let mut buf = Vec::with_capacity(head.len() + total);
        buf.extend_from_slice(head.as_bytes());
        for part in body {
            buf.extend_from_slice(part);
        }
        stream.write_all(&buf).map_err(io_error)
    } else {
        // Sending a large body may take the whole timeout.
        conn.wait_at_most(deadline.saturating_duration_since(Instant::now()))?;
        let mut stream = &conn.stream;
        // Several writes: std writes to sockets with MSG_NOSIGNAL, where a
        // writev would raise SIGPIPE in the host process on a connection
        // Webdis has closed. Nagle is off, so the head is not held back.
        let mut pending = head.as_bytes().to_vec();
        for part in body {
            if part.len() <= COALESCE {
                pending.extend_from_slice(part);
                continue;
            }
            if !pending.is_empty() {
                stream.write_all(&pending).map_err(io_error)?;
                pending.clear();
            }
            stream.write_all(part).map_err(io_error)?;
        }
        if pending.is_empty() {
            Ok(())
        } else {
            stream.write_all(&pending).map_err(io_error)
        }
    }
}

/// One request and its response on `conn`: the I/O, each wait as
/// `wait_for` says, the bytes to `Reading`. On failure, also says whether
/// any byte of a response arrived.
fn exchange(
    conn: &mut Conn,
    head: &str,
    body: &[&[u8]],
    deadline: Instant,
    answer_within: Duration,
    max_body: usize,
) -> Result<Complete, (HttpError, bool)> {
    send(conn, head, body, deadline, answer_within).map_err(|e| (e, false))?;
    let first_byte_by = deadline.min(Instant::now() + answer_within);
    let mut reading = Reading::new(max_body);
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let got = reading.got();
        let wait = wait_for(Instant::now(), deadline, first_byte_by, answer_within, got)
            .map_err(|e| (e, got))?;
        conn.wait_at_most(wait).map_err(|e| (e, got))?;
        let want = reading.want(chunk.len());
        let n = (&conn.stream)
            .read(&mut chunk[..want])
            .map_err(|e| (io_error(e), got))?;
        if n == 0 {
            return Err((reading.closed(), got));
        }
        if let Some(response) = reading.feed(&chunk[..n]).map_err(|e| (e, true))? {
            return Ok(response);
        }
    }
}

#[cfg(test)]
mod tests {
    //! Each test runs a scripted HTTP server on a loopback `TcpListener`
    //! in its own thread and drives a `Pool` against it.

    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;
    use std::sync::mpsc;
    use std::sync::Arc;
    use std::thread;

    #[test]
    fn waits_before_the_first_byte_are_short_and_the_rest_may_take_the_deadline() {
        let now = Instant::now();
        let s = Duration::from_secs;
        let (deadline, first_byte_by) = (now + s(9), now + s(3));
        let wait = |at, got| wait_for(at, deadline, first_byte_by, s(3), got);
        assert_eq!(wait(now, false).unwrap(), s(3));
        assert_eq!(
            wait(now + s(2), false).unwrap(),
            s(3),
            "a wait, not the first byte's deadline"
        );
        assert!(matches!(wait(now + s(3), false), Err(HttpError::Timeout)));
        assert_eq!(wait(now + s(3), true).unwrap(), s(6));
        assert!(matches!(wait(now + s(9), true), Err(HttpError::Timeout)));
        // Near the deadline, never past it.
        let late = wait_for(now, now + s(1), now + s(1), s(3), false);
        assert_eq!(late.unwrap(), s(1));
    }

    #[test]
    fn a_response_is_read_as_it_comes_to_its_content_length() {
        let mut r = Reading::new(100);
        assert!(!r.got());
        assert_eq!(r.want(16), 16);
        assert_eq!(r.feed(b"HTTP/1.1 200 OK\r\nContent-Le").unwrap(), None);
        assert!(r.got());
        assert!(r.closed().to_string().ends_with("closed the connection"));
        assert_eq!(r.feed(b"ngth: 5\r\n\r\nab").unwrap(), None);
        // Only what the body lacks is read: the next response stays put.
        assert_eq!(r.want(16), 3);
        assert!(r.closed().to_string().ends_with("mid-response"));
        assert_eq!(r.feed(b"cd").unwrap(), None);
        assert_eq!(r.feed(b"e").unwrap(), Some((200, b"abcde".to_vec(), true)));
        // An empty body, and Connection: close.
        let mut r = Reading::new(100);
        let done =
            r.feed(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        assert_eq!(done.unwrap(), Some((404, vec![], false)));
    }

    #[test]
    fn a_response_of_another_frame_is_malformed() {
        let malformed = |bytes: &[u8], max| match Reading::new(max).feed(bytes) {
            Err(HttpError::Malformed(what)) => what,
            other => panic!("{other:?}"),
        };
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(
            malformed(&[&head[..], b"abHTTP/1.1"].concat(), 100),
            "bytes after the response"
        );
        assert_eq!(malformed(head, 1), "response body over the size limit");
        assert_eq!(
            malformed(b"HTTP/1.1 200 OK\r\n\r\n", 100),
            "no Content-Length"
        );
        assert_eq!(
            malformed(b"SSH-2.0-OpenSSH\r\n\r\n", 100),
            "invalid HTTP version"
        );
    }

    /// Upper bound on any wait in the scripted servers, so that a broken
    /// client fails the test instead of hanging it.
    const GUARD: Duration = Duration::from_secs(10);
    const T: Duration = Duration::from_secs(5);
    const MAX: usize = 1 << 20;

    /// A loopback listener and the authority (`127.0.0.1:port`) it serves.
    /// A PUT of `body` to /p that gets `200 reply`.
    fn put_ok(pool: &Pool, body: &[u8], reply: &str) {
        assert_eq!(
            pool.put("/p", "", body, T, MAX).unwrap(),
            (200, reply.as_bytes().to_vec())
        );
    }

    fn listen() -> (TcpListener, String) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let authority = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
        (listener, authority)
    }

    /// Runs `script` on the listener in a new thread.
    fn serve<R, F>(script: F) -> (String, thread::JoinHandle<R>)
    where
        R: Send + 'static,
        F: FnOnce(TcpListener) -> R + Send + 'static,
    {
        let (listener, authority) = listen();
        (authority, thread::spawn(move || script(listener)))
    }

    /// The next connection, within `GUARD`.
    fn accept(listener: &TcpListener) -> Conn {
        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + GUARD;
        loop {
            match listener.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(GUARD)).unwrap();
                    s.set_write_timeout(Some(GUARD)).unwrap();
                    return Conn(BufReader::new(s));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "no connection came");
                    thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
    }

    /// Whether a connection is waiting to be accepted (after giving the
    /// client a moment to make one).
    fn pending(listener: &TcpListener) -> bool {
        thread::sleep(Duration::from_millis(100));
        listener.set_nonblocking(true).unwrap();
        match listener.accept() {
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(e) => panic!("accept: {e}"),
        }
    }

    struct Request {
        /// The request line and header lines, without their CRLFs.
        lines: Vec<String>,
        body: Vec<u8>,
    }

    impl Request {
        fn header(&self, name: &str) -> Vec<&str> {
            self.lines[1..]
                .iter()
                .filter_map(|l| l.split_once(':'))
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim())
                .collect()
        }
    }

    struct Conn(BufReader<TcpStream>);

    impl Conn {
        /// Reads one request (head and `Content-Length` body).
        fn request(&mut self) -> Request {
            let mut lines = Vec::new();
            loop {
                let mut line = String::new();
                let n = self.0.read_line(&mut line).unwrap();
                assert!(n > 0, "connection closed mid-head: {lines:?}");
                assert!(line.ends_with("\r\n"), "line without CRLF: {line:?}");
                line.truncate(line.len() - 2);
                if line.is_empty() {
                    break;
                }
                lines.push(line);
            }
            let mut req = Request {
                lines,
                body: Vec::new(),
            };
            let lengths = req.header("content-length");
            assert_eq!(lengths.len(), 1, "Content-Length headers: {:?}", req.lines);
            let len: usize = lengths[0].parse().unwrap();
            req.body = vec![0; len];
            self.0.read_exact(&mut req.body).unwrap();
            req
        }

        fn send(&mut self, bytes: &[u8]) {
            self.0.get_mut().write_all(bytes).unwrap();
        }

        /// Answers 200 with `body`, keeping the connection open.
        fn ok(&mut self, body: &str) {
            let r = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            self.send(r.as_bytes());
        }

        /// Waits for the client to close the connection; returns how many
        /// bytes it sent before (none, if it sent only what was read).
        fn eof(&mut self) -> usize {
            let mut rest = Vec::new();
            self.0.read_to_end(&mut rest).unwrap();
            rest.len()
        }
    }

    /// A 200 answer `{"ok":1}` with the request seen; the server then
    /// expects the client to close the connection.
    fn one_shot(response: &'static [u8]) -> (String, thread::JoinHandle<Request>) {
        serve(move |l| {
            let mut c = accept(&l);
            let req = c.request();
            c.send(response);
            assert_eq!(c.eof(), 0);
            req
        })
    }

    #[test]
    fn put_round_trip() {
        let (authority, server) = serve(|l| {
            let mut c = accept(&l);
            let req = c.request();
            c.ok(r#"{"SET":[true,"OK"]}"#);
            // Exactly one request: nothing more before the client closes.
            assert_eq!(c.eof(), 0);
            assert!(!pending(&l));
            req
        });
        let pool = Pool::new(&authority);
        let (status, body) = pool
            .put(
                "/SET/k",
                "Authorization: Basic dXNlcjpwYXNz\r\nX-Extra: 1\r\n",
                b"hello world",
                T,
                MAX,
            )
            .unwrap();
        assert_eq!(status, 200);
        assert_eq!(body, br#"{"SET":[true,"OK"]}"#);
        drop(pool);
        let req = server.join().unwrap();
        assert_eq!(req.lines[0], "PUT /SET/k HTTP/1.1");
        assert_eq!(req.header("host"), [authority.as_str()]);
        assert_eq!(req.header("content-length"), ["11"]);
        assert_eq!(req.header("authorization"), ["Basic dXNlcjpwYXNz"]);
        assert_eq!(req.header("x-extra"), ["1"]);
        assert_eq!(req.lines.len(), 5, "{:?}", req.lines);
        assert_eq!(req.body, b"hello world");
    }

    #[test]
    fn empty_body_and_error_status() {
        let (authority, server) = one_shot(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
        let pool = Pool::new(&authority);
        let (status, body) = pool.put("/x", "", b"", T, MAX).unwrap();
        assert_eq!((status, body.len()), (404, 0));
        drop(pool);
        let req = server.join().unwrap();
        assert_eq!(req.header("content-length"), ["0"]);
        assert_eq!(req.lines.len(), 3, "{:?}", req.lines);
        assert!(req.body.is_empty());
    }

    #[test]
    fn keep_alive_reuses_the_connection() {
        let (authority, server) = serve(|l| {
            let mut c = accept(&l);
            let mut bodies = Vec::new();
            for i in 0..3 {
                bodies.push(c.request().body);
                c.ok(&format!("{{\"n\":{i}}}"));
            }
            assert_eq!(c.eof(), 0);
            assert!(!pending(&l), "a second connection was opened");
            bodies
        });
        let pool = Pool::new(&authority);
        for i in 0..3 {
            let (status, body) = pool
                .put("/p", "", format!("b{i}").as_bytes(), T, MAX)
                .unwrap();
            assert_eq!(status, 200);
            assert_eq!(body, format!("{{\"n\":{i}}}").as_bytes());
        }
        drop(pool);
        assert_eq!(server.join().unwrap(), [b"b0", b"b1", b"b2"]);
    }

    /// The server closes the idle connection after the first response;
    /// the second request goes through on a new connection. `size` picks
    /// the single-write or the two-write path.
    fn stale_connection(size: usize) {
        let (closed_tx, closed_rx) = mpsc::channel();
        let (authority, server) = serve(move |l| {
            let mut c = accept(&l);
            let first = c.request().body;
            c.ok("1");
            drop(c);
            closed_tx.send(()).unwrap();
            let mut c = accept(&l);
            let second = c.request().body;
            c.ok("2");
            assert_eq!(c.eof(), 0);
            assert!(!pending(&l));
            (first, second)
        });
        let pool = Pool::new(&authority);
        let a = vec![b'a'; size];
        let b = vec![b'b'; size];
        assert_eq!(
            pool.put("/p", "", &a, T, MAX).unwrap(),
            (200, b"1".to_vec())
        );
        closed_rx.recv_timeout(GUARD).unwrap();
        // Let the FIN reach the client's socket.
        thread::sleep(Duration::from_millis(50));
        assert_eq!(
            pool.put("/p", "", &b, T, MAX).unwrap(),
            (200, b"2".to_vec())
        );
        drop(pool);
        let (first, second) = server.join().unwrap();
        assert!(first == a && second == b);
    }

    #[test]
    fn stale_pooled_connection_is_replaced() {
        stale_connection(10);
    }

    #[test]
    fn stale_pooled_connection_is_replaced_large_body() {
        stale_connection(COALESCE + 1);
    }

    /// A C host usually leaves SIGPIPE at its default action (terminate):
    /// writing a large body into a connection Webdis closed must fail with
    /// EPIPE, never raise the signal (a writev did, killing the process).
    #[test]
    fn a_large_body_on_a_closed_connection_never_raises_sigpipe() {
        // SAFETY: changes the process' SIGPIPE action, put back after.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
        stale_connection(8 * 1024 * 1024);
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    }

    #[test]
    fn connection_close_is_not_pooled() {
        let (authority, server) = serve(|l| {
            let mut first = accept(&l);
            first.request();
            // The connection stays open on this side: the client must
            // still not reuse it.
            first.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n1");
            let mut second = accept(&l);
            second.request();
            second.ok("2");
            // The client dropped the first connection.
            assert_eq!(first.eof(), 0);
            assert_eq!(second.eof(), 0);
        });
        let pool = Pool::new(&authority);
        put_ok(&pool, b"x", "1");
        put_ok(&pool, b"y", "2");
        drop(pool);
        server.join().unwrap();
    }

    #[test]
    fn http_1_0_response_is_not_pooled() {
        let (authority, server) = serve(|l| {
            for _ in 0..2 {
                let mut c = accept(&l);
                c.request();
                c.send(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok");
                assert_eq!(c.eof(), 0);
            }
        });
        let pool = Pool::new(&authority);
        for _ in 0..2 {
            put_ok(&pool, b"x", "ok");
        }
        drop(pool);
        server.join().unwrap();
    }

    fn expect_malformed(response: &'static [u8]) -> &'static str {
        let (authority, server) = one_shot(response);
        let pool = Pool::new(&authority);
        let r = pool.put("/p", "", b"x", T, MAX);
        drop(pool);
        server.join().unwrap();
        match r {
            Err(HttpError::Malformed(what)) => what,
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn chunk_leftover_is_malformed() {
        let what = expect_malformed(
            b"5d\r\n{\"SET\":[true,\"OK\"]}\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        );
        assert_eq!(what, "invalid HTTP version");
    }

    #[test]
    fn garbage_is_malformed() {
        expect_malformed(b"hello there\r\n\r\n");
        expect_malformed(b"HTTP/1.1 OK\r\nContent-Length: 0\r\n\r\n");
        expect_malformed(b"HTTP/1.1 200 OK\r\nContent-Length: two\r\n\r\nok");
        expect_malformed(b"HTTP/1.1 200 OK\r\n\r\n");
        // Strict where a lenient reading could misread a response.
        expect_malformed(b"HTTP/1.1 200 OK\r\nNoColon\r\nContent-Length: 0\r\n\r\n");
        expect_malformed(b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n");
        expect_malformed(b"HTTP/2 200 OK\r\nContent-Length: 0\r\n\r\n");
        expect_malformed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok");
        expect_malformed(b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok");
        expect_malformed(b"HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n");
    }

    #[test]
    fn endless_head_is_malformed() {
        let (authority, server) = serve(|l| {
            let mut c = accept(&l);
            c.request();
            // No CRLFCRLF ever: the client must give up after 64 KiB,
            // well before the timeout. Writes fail once it has closed.
            c.send(b"HTTP/1.1 200 OK\r\nX-Endless: ");
            let junk = [b'x'; 4096];
            for _ in 0..64 {
                if c.0.get_mut().write_all(&junk).is_err() {
                    break;
                }
            }
        });
        let pool = Pool::new(&authority);
        let start = Instant::now();
        match pool.put("/p", "", b"x", Duration::from_secs(30), MAX) {
            Err(HttpError::Malformed("response head too long")) => {}
            other => panic!("expected Malformed, got {other:?}"),
        }
        assert!(start.elapsed() < Duration::from_secs(5));
        drop(pool);
        server.join().unwrap();
    }

    #[test]
    fn chunked_response_is_malformed() {
        let what = expect_malformed(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        );
        assert_eq!(what, "unexpected Transfer-Encoding");
    }

    #[test]
    fn body_over_max_body_is_malformed() {
        let (authority, server) = serve(|l| {
            let mut c = accept(&l);
            c.request();
            c.ok("0123456789");
            c.request();
            c.ok("0123456789X");
            assert_eq!(c.eof(), 0);
        });
        let pool = Pool::new(&authority);
        // Exactly at the limit: accepted.
        assert_eq!(
            pool.put("/p", "", b"x", T, 10).unwrap(),
            (200, b"0123456789".to_vec())
        );
        match pool.put("/p", "", b"x", T, 10) {
            Err(HttpError::Malformed(what)) => {
                assert_eq!(what, "response body over the size limit")
            }
            other => panic!("expected Malformed, got {other:?}"),
        }
        drop(pool);
        server.join().unwrap();
    }

    /// A pooled connection that delivers garbage is not retried on a new
    /// connection: bytes of a response arrived.
    #[test]
    fn malformed_on_reused_connection_is_not_retried() {
        let (authority, server) = serve(|l| {
            let mut c = accept(&l);
            c.request();
            c.ok("1");
            c.request();
            c.send(
                b"5d\r\n{\"SET\":[true,\"OK\"]}\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            );
            assert_eq!(c.eof(), 0);
            assert!(!pending(&l), "the request was sent again");
        });
        let pool = Pool::new(&authority);
        put_ok(&pool, b"x", "1");
        assert!(matches!(
            pool.put("/p", "", b"y", T, MAX),
            Err(HttpError::Malformed(_))
        ));
        drop(pool);
        server.join().unwrap();
    }

    #[test]
    fn silent_server_times_out() {
        let (authority, server) = serve(|l| {
            let mut c = accept(&l);
            c.request();
            // Never answer; wait for the client to give up.
            assert_eq!(c.eof(), 0);
        });
        let pool = Pool::new(&authority);
        let timeout = Duration::from_millis(300);
        let start = Instant::now();
        let r = pool.put("/p", "", b"x", timeout, MAX);
        let elapsed = start.elapsed();
        assert!(matches!(r, Err(HttpError::Timeout)), "{r:?}");
        assert!(elapsed >= Duration::from_millis(250), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
        drop(pool);
        server.join().unwrap();
    }

    #[test]
    fn answer_within_bounds_the_wait_for_the_first_byte_only() {
        let (authority, server) = serve(|l| {
            // 1. Silent: given up after answer_within, not the timeout.
            let mut c = accept(&l);
            c.request();
            assert_eq!(c.eof(), 0);
            // 2. Begins at once, ends after longer than answer_within.
            let mut c = accept(&l);
            c.request();
            c.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n");
            thread::sleep(Duration::from_millis(400));
            c.send(b"ok");
            c.eof()
        });
        let pool = Pool::new(&authority);
        let quick = Duration::from_millis(150);
        let start = Instant::now();
        let r = pool.put_within("/p", "", &[b"x"], T, quick, MAX, &Cancel::default());
        let elapsed = start.elapsed();
        assert!(matches!(r, Err(HttpError::Timeout)), "{r:?}");
        assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
        let r = pool
            .put_within("/p", "", &[b"x"], T, quick, MAX, &Cancel::default())
            .unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]));
        pool.recycle(r.conn);
        drop(pool);
        server.join().unwrap();
    }

    #[test]
    fn body_stalled_midway_times_out() {
        let (authority, server) = serve(|l| {
            let mut c = accept(&l);
            c.request();
            c.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234");
            assert_eq!(c.eof(), 0);
        });
        let pool = Pool::new(&authority);
        let start = Instant::now();
        let r = pool.put("/p", "", b"x", Duration::from_millis(300), MAX);
        assert!(matches!(r, Err(HttpError::Timeout)), "{r:?}");
        assert!(start.elapsed() < Duration::from_secs(3));
        drop(pool);
        server.join().unwrap();
    }

    /// A body of several slices arrives as their concatenation, its
    /// Content-Length their sum, whether small (one write) or large (a
    /// prefix, a large state, a suffix).
    #[test]
    fn a_body_of_slices_arrives_joined() {
        let (authority, server) = serve(|l| {
            let mut c = accept(&l);
            let req = c.request();
            c.ok("{}");
            let req2 = c.request();
            c.ok("{}");
            assert_eq!(c.eof(), 0);
            (req, req2)
        });
        let state: Vec<u8> = (0..COALESCE * 3).map(|i| b'a' + (i % 26) as u8).collect();
        let pool = Pool::new(&authority);
        let small: [&[u8]; 3] = [b"r 1\n", b"{}", b""];
        let r = pool
            .put_within("/p", "", &small, T, T, MAX, &Cancel::default())
            .unwrap();
        assert_eq!(r.status, 200);
        pool.recycle(r.conn);
        let large: [&[u8]; 3] = [b"r 2\n", &state, b"!"];
        let r = pool
            .put_within("/p", "", &large, T, T, MAX, &Cancel::default())
            .unwrap();
        assert_eq!(r.status, 200);
        drop(r);
        drop(pool);
        let (req, req2) = server.join().unwrap();
        assert_eq!(req.header("content-length"), ["6"]);
        assert_eq!(req.body, b"r 1\n{}");
        assert_eq!(
            req2.header("content-length"),
            [(state.len() + 5).to_string()]
        );
        assert_eq!(&req2.body[..4], b"r 2\n");
        assert!(
            req2.body[4..4 + state.len()] == state[..],
            "state corrupted"
        );
        assert_eq!(req2.body.last(), Some(&b'!'));
    }

    #[test]
    fn large_body_arrives_intact() {
        let (authority, server) = serve(|l| {
            let mut c = accept(&l);
            let req = c.request();
            c.ok("{}");
            let req2 = c.request();
            c.ok("{}");
            assert_eq!(c.eof(), 0);
            (req, req2)
        });
        let body: Vec<u8> = (0..1usize << 20).map(|i| (i * 7 + i / 251) as u8).collect();
        let pool = Pool::new(&authority);
        assert_eq!(
            pool.put("/big", "X-A: b\r\n", &body, T, MAX).unwrap().0,
            200
        );
        // Just over the single-write limit, on the reused connection.
        let edge = &body[..COALESCE + 1];
        assert_eq!(pool.put("/big", "", edge, T, MAX).unwrap().0, 200);
        drop(pool);
        let (req, req2) = server.join().unwrap();
        assert_eq!(req.lines[0], "PUT /big HTTP/1.1");
        assert_eq!(req.header("content-length"), [(1usize << 20).to_string()]);
        assert_eq!(req.header("x-a"), ["b"]);
        assert!(req.body == body, "1 MiB body corrupted");
        assert_eq!(req2.header("content-length"), [(COALESCE + 1).to_string()]);
        assert!(req2.body == edge, "64 KiB + 1 body corrupted");
    }

    #[test]
    fn shutdown_breaks_a_blocked_request() {
        let (got_tx, got_rx) = mpsc::channel();
        let (authority, server) = serve(move |l| {
            let mut c = accept(&l);
            c.request();
            got_tx.send(()).unwrap();
            // Never answer; the shutdown closes the connection.
            assert_eq!(c.eof(), 0);
            assert!(!pending(&l), "a request reached the server after shutdown");
        });
        let pool = Arc::new(Pool::new(&authority));
        let p = Arc::clone(&pool);
        let client = thread::spawn(move || {
            let r = p.put("/p", "", b"x", Duration::from_secs(30), MAX);
            (r, Instant::now())
        });
        got_rx.recv_timeout(GUARD).unwrap();
        // Let the client block in its read.
        thread::sleep(Duration::from_millis(100));
        let shut_at = Instant::now();
        pool.shutdown();
        let (r, done_at) = client.join().unwrap();
        let took = done_at.saturating_duration_since(shut_at);
        assert!(took < Duration::from_secs(1), "{took:?}");
        assert!(
            matches!(r, Err(HttpError::Io(_) | HttpError::Shutdown)),
            "{r:?}"
        );
        assert!(matches!(
            pool.put("/p", "", b"x", T, MAX),
            Err(HttpError::Shutdown)
        ));
        drop(pool);
        server.join().unwrap();
    }

    #[test]
    fn a_cancel_breaks_its_owners_request_and_no_other_on_the_pool() {
        let (got_tx, got_rx) = mpsc::channel();
        let (authority, server) = serve(move |l| {
            let mut a = accept(&l);
            a.request();
            got_tx.send(()).unwrap();
            let mut b = accept(&l);
            b.request();
            got_tx.send(()).unwrap();
            // The first owner's cancel closes its connection...
            assert_eq!(a.eof(), 0);
            // ...the second's request is answered, on a connection kept.
            b.ok("b");
            b.request();
            b.ok("again");
        });
        let pool = Arc::new(Pool::new(&authority));
        let (mine, theirs) = (Arc::new(Cancel::default()), Arc::new(Cancel::default()));
        let put = |cancel: &Arc<Cancel>| {
            let (p, c) = (pool.clone(), cancel.clone());
            thread::spawn(move || {
                let r = p.put_within("/p", "", &[b"x"], Duration::from_secs(30), GUARD, MAX, &c);
                (r, Instant::now())
            })
        };
        let first = put(&mine);
        got_rx.recv_timeout(GUARD).unwrap();
        let second = put(&theirs);
        got_rx.recv_timeout(GUARD).unwrap();
        thread::sleep(Duration::from_millis(100));
        let shut_at = Instant::now();
        mine.shutdown();
        let (r, done_at) = first.join().unwrap();
        assert!(matches!(r, Err(HttpError::Shutdown)), "{r:?}");
        let took = done_at.saturating_duration_since(shut_at);
        assert!(took < Duration::from_secs(1), "{took:?}");
        let (r, _) = second.join().unwrap();
        let r = r.unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"b"[..]));
        pool.recycle(r.conn);
        assert_eq!(pool.idle(), 1);
        // Later requests of the cancelled owner fail at once; the other's
        // go on, on the kept connection.
        assert!(matches!(
            pool.put_within("/p", "", &[b"x"], T, T, MAX, &mine),
            Err(HttpError::Shutdown)
        ));
        let r = pool
            .put_within("/p", "", &[b"x"], T, T, MAX, &theirs)
            .unwrap();
        assert_eq!(r.body, b"again");
        server.join().unwrap();
    }

    #[test]
    fn idle_connections_are_kept_up_to_the_pools_limit() {
        let (authority, server) = serve(|l| {
            let mut conns: Vec<Conn> = (0..3).map(|_| accept(&l)).collect();
            for c in conns.iter_mut() {
                c.request();
                c.ok("1");
            }
            // One connection is closed by the client (over the limit).
            conns
                .iter_mut()
                .map(|c| c.eof())
                .filter(|&n| n == 0)
                .count()
        });
        let pool = Arc::new(Pool::with_idle(&authority, 2));
        // Three requests at once: three connections.
        let cancel = Arc::new(Cancel::default());
        let responses: Vec<Response> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..3)
                .map(|_| {
                    let (p, c) = (&pool, &cancel);
                    s.spawn(move || p.put_within("/p", "", &[b"x"], T, T, MAX, c).unwrap())
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for r in responses {
            pool.recycle(r.conn);
        }
        assert_eq!(pool.idle(), 2);
        pool.forget_idle();
        assert_eq!(server.join().unwrap(), 3);
    }

    #[test]
    fn shutdown_closes_idle_connections() {
        let (authority, server) = serve(|l| {
            let mut c = accept(&l);
            c.request();
            c.ok("1");
            // The shutdown closes the pooled connection while the pool
            // itself is still alive.
            assert_eq!(c.eof(), 0);
            assert!(!pending(&l));
        });
        let pool = Pool::new(&authority);
        put_ok(&pool, b"x", "1");
        pool.shutdown();
        assert!(matches!(
            pool.put("/p", "", b"x", T, MAX),
            Err(HttpError::Shutdown)
        ));
        server.join().unwrap();
        drop(pool);
    }

    /// A reply written after the response (Webdis wrote another
    /// request's reply to this socket) makes the connection unusable: the
    /// next request goes out on a new one and gets its own answer.
    #[test]
    fn connection_with_unread_bytes_is_not_reused() {
        let (sent_tx, sent_rx) = mpsc::channel();
        let (authority, server) = serve(move |l| {
            let mut c = accept(&l);
            c.request();
            c.ok("1");
            // A stray second response, after the client read the first.
            thread::sleep(Duration::from_millis(50));
            c.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale");
            sent_tx.send(()).unwrap();
            let mut d = accept(&l);
            d.request();
            d.ok("2");
            assert_eq!(d.eof(), 0);
            // Closed with the stray bytes unread: a reset, or an end.
            let _ = c.0.read_to_end(&mut Vec::new());
        });
        let pool = Pool::new(&authority);
        put_ok(&pool, b"x", "1");
        sent_rx.recv_timeout(GUARD).unwrap();
        thread::sleep(Duration::from_millis(50));
        put_ok(&pool, b"y", "2");
        drop(pool);
        server.join().unwrap();
    }

    /// A connection whose response the caller did not accept (it answered
    /// another request) is not handed back: the next request opens anew.
    #[test]
    fn connection_not_recycled_is_not_reused() {
        let (authority, server) = serve(|l| {
            let mut c = accept(&l);
            c.request();
            c.ok("not yours");
            let mut d = accept(&l);
            d.request();
            d.ok("2");
            assert_eq!(c.eof(), 0);
            assert_eq!(d.eof(), 0);
        });
        let pool = Pool::new(&authority);
        let r = pool
            .put_within("/p", "", &[b"x"], T, T, MAX, &Cancel::default())
            .unwrap();
        assert_eq!(r.body, b"not yours");
        drop(r);
        put_ok(&pool, b"y", "2");
        drop(pool);
        server.join().unwrap();
    }

    /// Responses recorded from Webdis 0.1.9 (a reply, a 403, an error).
    const RECORDED: [&[u8]; 3] = [
        b"HTTP/1.1 200 OK\r\nServer: Webdis\r\nAllow: GET,POST,PUT,OPTIONS\r\nAccess-Control-Allow-Methods: GET,POST,PUT,OPTIONS\r\nAccess-Control-Allow-Origin: *\r\nAccess-Control-Allow-Headers: X-Requested-With, Content-Type, Authorization\r\nContent-Type: application/json\r\nETag: \"61abc6f7b152448ebbab7c55c12bcfce\"\r\nConnection: Keep-Alive\r\nContent-Length: 19\r\n\r\n{\"FCALL\":[\"n0nce\"]}",
        b"HTTP/1.1 403 Forbidden\r\nServer: Webdis\r\nAllow: GET,POST,PUT,OPTIONS\r\nAccess-Control-Allow-Methods: GET,POST,PUT,OPTIONS\r\nAccess-Control-Allow-Origin: *\r\nAccess-Control-Allow-Headers: X-Requested-With, Content-Type, Authorization\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nServer: Webdis\r\nAllow: GET,POST,PUT,OPTIONS\r\nAccess-Control-Allow-Methods: GET,POST,PUT,OPTIONS\r\nAccess-Control-Allow-Origin: *\r\nAccess-Control-Allow-Headers: X-Requested-With, Content-Type, Authorization\r\nContent-Type: application/json\r\nETag: \"dac1fc1930b2f3cbba2777ff803a396b\"\r\nConnection: Keep-Alive\r\nContent-Length: 54\r\n\r\n{\"FCALL_RO\":[false,\"MSNOTFOUND n0nce no such stream\"]}",
    ];

    /// Every prefix of a recorded response is "incomplete" until the blank
    /// line, then the same head; the parser never errs on a prefix.
    #[test]
    fn parse_head_on_every_prefix_of_recorded_responses() {
        let expect = [(200, 19), (403, 0), (200, 54)];
        for (resp, (status, length)) in RECORDED.iter().zip(expect) {
            let head_len = find(resp, b"\r\n\r\n").unwrap() + 4;
            for cut in 0..=resp.len() {
                let got = parse_head(&resp[..cut]).unwrap();
                if cut < head_len {
                    assert_eq!(got, None, "prefix of {cut} bytes");
                } else {
                    assert_eq!(
                        got,
                        Some(Head {
                            status,
                            len: head_len,
                            content_length: length,
                            keep_alive: true
                        }),
                        "prefix of {cut} bytes"
                    );
                }
            }
        }
        // Connection: close, and HTTP/1.0 without keep-alive, end reuse.
        let h = parse_head(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
        assert!(!h.unwrap().unwrap().keep_alive);
        let h = parse_head(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert!(!h.unwrap().unwrap().keep_alive);
        // Repeats that agree are one length.
        let h = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\n");
        assert_eq!(h.unwrap().unwrap().content_length, 2);
    }

    fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
        haystack.windows(needle.len()).position(|w| w == needle)
    }

    #[test]
    fn refused_connection_is_io() {
        let (listener, authority) = listen();
        drop(listener);
        let pool = Pool::new(&authority);
        match pool.put("/p", "", b"x", T, MAX) {
            Err(HttpError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused),
            other => panic!("expected Io, got {other:?}"),
        }
    }
}
