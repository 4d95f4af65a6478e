//! A raw HTTP/1.1 client of Webdis (and of the deploy front), as an
//! attacker or a client of the protocol written from scratch uses it: the
//! tests of integrity, availability, security and the front send crafted
//! requests with it. One request path builder, one response reader.
#![allow(dead_code)]

use missionstream::protocol::{self, PROTOCOL_VERSION};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// `/FCALL[_RO]/<function>/<nkeys>/<keys...>/<version>/<nonce>/<args...>`,
/// every argument percent-encoded as the library encodes it (the
/// read-only functions by FCALL_RO).
pub fn fcall_path(function: &str, keys: &[&[u8]], nonce: &str, args: &[&str]) -> String {
    let ro = matches!(
        function,
        "ms_params" | "ms_snapshot" | "ms_subscribers" | "ms_limits"
    );
    let mut path = format!(
        "/{}/{function}/{}",
        if ro { "FCALL_RO" } else { "FCALL" },
        keys.len()
    );
    let mut push = |bytes: &[u8]| {
        path.push('/');
        for &b in bytes {
            if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
                path.push(b as char);
            } else {
                path.push_str(&format!("%{b:02X}"));
            }
        }
    };
    for k in keys {
        push(k);
    }
    push(PROTOCOL_VERSION.as_bytes());
    push(nonce.as_bytes());
    for a in args {
        push(a.as_bytes());
    }
    path
}

/// `n` random hex digits (made-up keys, salts, tokens).
pub fn random_hex(n: usize) -> String {
    let mut s = String::new();
    while s.len() < n {
        s.push_str(&format!("{:032x}", super::rand_u128()));
    }
    s.truncate(n);
    s
}

/// A fresh random request nonce (32 hex digits).
pub fn nonce() -> String {
    random_hex(32)
}

/// A response: status (0 when the connection closed or timed out before
/// a whole head came), headers (names lower-cased) and body.
#[derive(Debug, Default)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The values of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The Content-Length the head announces (0 when none).
    pub fn content_length(&self) -> usize {
        self.header("content-length")
            .first()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The status and headers of a response head (the bytes before its blank
/// line).
pub fn parse_head(head: &[u8]) -> Response {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect();
    Response {
        status,
        headers,
        body: Vec::new(),
    }
}

/// Reads one response head off `s` byte by byte (nothing past it: a
/// subscription's stream stays unread), and with `body` its Content-Length
/// body; status 0 when the connection closed or timed out first.
pub fn read_response(s: &mut TcpStream, body: bool) -> Response {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            _ => return Response::default(),
        }
    }
    let mut r = parse_head(&buf);
    if body {
        r.body = vec![0; r.content_length()];
        if s.read_exact(&mut r.body).is_err() {
            r.body.clear();
        }
    }
    r
}

/// One PUT on a new connection, head and body in one write, and its
/// response (status and body text). One write: Webdis 0.1.9 may lose the
/// response to a request whose body comes in a later packet than its
/// head, and never answers a request with a body over ~64 KiB that says
/// "Connection: close", so the connection is not asked to close.
pub fn put_once(port: u16, path: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    s.write_all(&req).unwrap();
    let r = read_response(&mut s, true);
    (r.status, r.text())
}

/// One raw HTTP/1.1 connection, as an attacker (or a client of the
/// protocol written from scratch) uses it.
pub struct Raw {
    c: TcpStream,
    got: Vec<u8>,
}

impl Raw {
    pub fn connect(port: u16) -> Raw {
        let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Raw { c, got: Vec::new() }
    }

    pub fn put(&mut self, path: &str, body: &[u8]) {
        let head = format!(
            "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        self.c.write_all(head.as_bytes()).unwrap();
        self.c.write_all(body).unwrap();
    }

    /// The next response (status and body), or None after `wait`.
    pub fn reply(&mut self, wait: Duration) -> Option<(u16, String)> {
        let until = Instant::now() + wait;
        let mut buf = [0u8; 65536];
        loop {
            if let Some(i) = self.got.windows(4).position(|w| w == b"\r\n\r\n") {
                let mut r = parse_head(&self.got[..i]);
                let end = i + 4 + r.content_length();
                if self.got.len() >= end {
                    r.body = self.got[i + 4..end].to_vec();
                    self.got.drain(..end);
                    return Some((r.status, r.text()));
                }
            }
            if Instant::now() >= until {
                return None;
            }
            match self.c.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.got.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
    }

    /// One call on a fresh connection; its reply's JSON value.
    pub fn call(
        port: u16,
        function: &str,
        keys: &[&[u8]],
        nonce: &str,
        args: &[&str],
        fields: &[&[u8]],
    ) -> serde_json::Value {
        let mut raw = Raw::connect(port);
        let body = if fields.is_empty() {
            Vec::new()
        } else {
            protocol::frame_body(fields)
        };
        raw.put(&fcall_path(function, keys, nonce, args), &body);
        let (status, text) = raw.reply(Duration::from_secs(10)).expect("a reply");
        assert_eq!(status, 200, "{function}: HTTP {status} {text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v.as_object().unwrap().values().next().unwrap().clone()
    }
}

impl Raw {
    /// Like `call`, with `body` sent as it is (ms_publish's body is not
    /// framed).
    pub fn call_body(
        port: u16,
        function: &str,
        keys: &[&[u8]],
        nonce: &str,
        args: &[&str],
        body: &[u8],
    ) -> serde_json::Value {
        let mut raw = Raw::connect(port);
        raw.put(&fcall_path(function, keys, nonce, args), body);
        let (status, text) = raw.reply(Duration::from_secs(10)).expect("a reply");
        assert_eq!(status, 200, "{function}: HTTP {status} {text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v.as_object().unwrap().values().next().unwrap().clone()
    }
}

/// The error text of a reply value, if it is one.
pub fn error_of(v: &serde_json::Value) -> Option<String> {
    let a = v.as_array()?;
    (a.len() == 2 && a[0] == serde_json::Value::Bool(false)).then(|| a[1].as_str().unwrap().into())
}
