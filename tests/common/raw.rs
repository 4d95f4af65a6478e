//! A raw HTTP/1.1 client of Webdis, as an attacker (or a client of the
//! protocol written from scratch) uses it: the tests of integrity and
//! availability send crafted requests with it.
#![allow(dead_code)]

use missionstream::protocol::{self, PROTOCOL_VERSION};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// `PUT /FCALL[_RO]/<function>/<nkeys>/<keys...>/<version>/<nonce>/<args...>`,
/// every argument percent-encoded as the protocol says.
pub fn fcall_path(function: &str, keys: &[&[u8]], nonce: &str, args: &[&str]) -> String {
    let ro = matches!(function, "ms_params" | "ms_snapshot" | "ms_subscribers");
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
                let head = String::from_utf8_lossy(&self.got[..i]).into_owned();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                if self.got.len() >= i + 4 + len {
                    let status = head
                        .split(' ')
                        .nth(1)
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(0);
                    let body = String::from_utf8_lossy(&self.got[i + 4..i + 4 + len]).into_owned();
                    self.got.drain(..i + 4 + len);
                    return Some((status, body));
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

/// The error text of a reply value, if it is one.
pub fn error_of(v: &serde_json::Value) -> Option<String> {
    let a = v.as_array()?;
    (a.len() == 2 && a[0] == serde_json::Value::Bool(false)).then(|| a[1].as_str().unwrap().into())
}
