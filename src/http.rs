//! A small keep-alive HTTP/1.1 client for the requests to Webdis over
//! plain `http://`: one write per request (head and body together), one
//! read loop per response, pooled connections. It exists for the
//! publisher's hot path: ureq costs ~37,000 instructions and 9 system calls
//! a request here (liveness probes of the pooled socket, split writes),
//! against 2 system calls for this client. ureq still serves `https://`
//! and the long-lived SUBSCRIBE streams.

use std::collections::HashMap;
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::dispatch::lock;

/// Bodies up to this size are copied behind the head for a single write.
const COALESCE: usize = 64 * 1024;
/// Idle connections kept per pool.
const MAX_IDLE: usize = 8;

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

/// Keep-alive connections to one `host:port`.
pub struct Pool {
    authority: String,
    idle: Mutex<Vec<TcpStream>>,
    /// Clones of the sockets in use, shut down by `shutdown`.
    busy: Mutex<HashMap<u64, TcpStream>>,
    next_id: AtomicU64,
    shut: AtomicBool,
}

impl Pool {
    pub fn new(authority: &str) -> Pool {
        Pool {
            authority: authority.to_string(),
            idle: Mutex::new(Vec::new()),
            busy: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            shut: AtomicBool::new(false),
        }
    }

    /// Closes every connection and fails the requests in flight; later
    /// requests fail too.
    pub fn shutdown(&self) {
        self.shut.store(true, Ordering::SeqCst);
        for s in lock(&self.idle).drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        for s in lock(&self.busy).values() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn connect(&self, deadline: Instant) -> Result<TcpStream, HttpError> {
        let addrs: Vec<SocketAddr> = self
            .authority
            .to_socket_addrs()
            .map_err(HttpError::Io)?
            .collect();
        let mut last = HttpError::Malformed("no address for the host");
        for addr in addrs {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(HttpError::Timeout);
            }
            match TcpStream::connect_timeout(&addr, left) {
                Ok(s) => {
                    s.set_nodelay(true).map_err(HttpError::Io)?;
                    return Ok(s);
                }
                Err(e) => last = io_error(e),
            }
        }
        Err(last)
    }

    /// Sends `PUT <path>` with `body`; returns the status and body of the
    /// response. `head_extra` holds further header lines, each ending in
    /// CRLF.
    pub fn put(
        &self,
        path: &str,
        head_extra: &str,
        body: &[u8],
        timeout: Duration,
        max_body: usize,
    ) -> Result<(u16, Vec<u8>), HttpError> {
        let deadline = Instant::now() + timeout;
        let head = format!(
            "PUT {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n{head_extra}\r\n",
            self.authority,
            body.len()
        );
        // A pooled connection may have been closed by Webdis while idle:
        // if it fails before any byte of a response, use a new one.
        loop {
            if self.shut.load(Ordering::SeqCst) {
                return Err(HttpError::Shutdown);
            }
            let pooled = lock(&self.idle).pop();
            let reused = pooled.is_some();
            let stream = match pooled {
                Some(s) => s,
                None => self.connect(deadline)?,
            };
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            if let Ok(clone) = stream.try_clone() {
                lock(&self.busy).insert(id, clone);
            }
            if self.shut.load(Ordering::SeqCst) {
                let _ = stream.shutdown(Shutdown::Both);
            }
            let result = exchange(&stream, &head, body, deadline, max_body);
            lock(&self.busy).remove(&id);
            match result {
                Ok((status, body, keep_alive)) => {
                    if keep_alive && !self.shut.load(Ordering::SeqCst) {
                        let mut idle = lock(&self.idle);
                        if idle.len() < MAX_IDLE {
                            idle.push(stream);
                        }
                    }
                    return Ok((status, body));
                }
                Err((e, got_bytes)) => {
                    let stale = reused && !got_bytes && matches!(e, HttpError::Io(_));
                    if !stale {
                        return Err(e);
                    }
                }
            }
        }
    }
}

/// One request and its response on `stream`. On failure, also says
/// whether any byte of a response arrived.
fn exchange(
    mut stream: &TcpStream,
    head: &str,
    body: &[u8],
    deadline: Instant,
    max_body: usize,
) -> Result<(u16, Vec<u8>, bool), (HttpError, bool)> {
    let set_timeouts = |s: &TcpStream| -> Result<(), HttpError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HttpError::Timeout);
        }
        s.set_read_timeout(Some(left)).map_err(HttpError::Io)?;
        s.set_write_timeout(Some(left)).map_err(HttpError::Io)
    };
    set_timeouts(stream).map_err(|e| (e, false))?;
    if body.len() <= COALESCE {
        let mut buf = Vec::with_capacity(head.len() + body.len());
        buf.extend_from_slice(head.as_bytes());
        buf.extend_from_slice(body);
        stream.write_all(&buf).map_err(|e| (io_error(e), false))?;
    } else {
        write_all_vectored(stream, head.as_bytes(), body).map_err(|e| (io_error(e), false))?;
    }

    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return Err((HttpError::Malformed("response head too long"), true));
        }
        set_timeouts(stream).map_err(|e| (e, !buf.is_empty()))?;
        let n = stream
            .read(&mut chunk)
            .map_err(|e| (io_error(e), !buf.is_empty()))?;
        if n == 0 {
            let e = io::Error::new(io::ErrorKind::UnexpectedEof, "Webdis closed the connection");
            return Err((HttpError::Io(e), !buf.is_empty()));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| (HttpError::Malformed("head is not text"), true))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    if !status_line.starts_with("HTTP/1.") {
        return Err((HttpError::Malformed("invalid HTTP version"), true));
    }
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or((HttpError::Malformed("no status code"), true))?;
    let mut length: Option<usize> = None;
    let mut keep_alive = status_line.starts_with("HTTP/1.1");
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse()
                    .map_err(|_| (HttpError::Malformed("bad Content-Length"), true))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err((HttpError::Malformed("unexpected Transfer-Encoding"), true));
        } else if name.eq_ignore_ascii_case("connection") {
            keep_alive = !value.eq_ignore_ascii_case("close")
                && (keep_alive || value.eq_ignore_ascii_case("keep-alive"));
        }
    }
    let length = length.ok_or((HttpError::Malformed("no Content-Length"), true))?;
    if length > max_body {
        return Err((
            HttpError::Malformed("response body over the size limit"),
            true,
        ));
    }
    let mut body = buf.split_off(head_end);
    if body.len() > length {
        // More than one response: not something this client asked for.
        return Err((HttpError::Malformed("bytes after the response"), true));
    }
    body.reserve(length - body.len());
    while body.len() < length {
        set_timeouts(stream).map_err(|e| (e, true))?;
        let want = (length - body.len()).min(chunk.len());
        let n = stream
            .read(&mut chunk[..want])
            .map_err(|e| (io_error(e), true))?;
        if n == 0 {
            let e = io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "Webdis closed the connection mid-response",
            );
            return Err((HttpError::Io(e), true));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok((status, body, keep_alive))
}

fn write_all_vectored(mut stream: &TcpStream, head: &[u8], body: &[u8]) -> io::Result<()> {
    let (mut head, mut body) = (head, body);
    while !head.is_empty() || !body.is_empty() {
        let n = stream.write_vectored(&[IoSlice::new(head), IoSlice::new(body)])?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "nothing written"));
        }
        let from_head = n.min(head.len());
        head = &head[from_head..];
        body = &body[n - from_head..];
    }
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
