//! A SUBSCRIBE stream read without blocking: `GET /SUBSCRIBE/<channel>`
//! over plain TCP or TLS, on a non-blocking socket the caller watches
//! with its poller.
//!
//! Owns: one socket, connected without blocking (the connection is
//! completed when the socket turns writable); the TLS session over it,
//! when the endpoint is `https://` (rustls' `ClientConnection`, driven by
//! hand: TLS records are read and written only when the socket is ready);
//! the request's bytes not sent yet; the response head until complete;
//! the `ChunkedDecoder` of the body and the `ObjectSplitter` of its
//! messages. Hands out every message as a `SubscriptionItem`.
//! Never does: block (no blocking connect, read or write; no name
//! resolution: the caller passes the address, resolved on its own
//! thread), wait (timeouts are the caller's timers), retry, or read a
//! message's meaning (probes, states: the follower's session does).
//!
//! Used by the reactor for every follow group's subscription; see
//! docs/internals/fixed-threads.md.
//!
//! Failures end the subscription (`on_ready` returns the error; the
//! caller drops it) and are classified as the blocking SUBSCRIBE's are:
//! a broken framing or head is MS_ERR_PROTOCOL of `Kind::Garbled`
//! (replaced at once), a refused or broken connection and an end of the
//! stream are MS_ERR_UNAVAILABLE, a TLS handshake the client or the
//! server refused is the error `Endpoint::tls_refusal` names.

use super::chunked::ChunkedDecoder;
use super::poller::Interest;
use super::transport::Endpoint;
use crate::error::{Error, Kind, Result, Status};
use crate::wire::protocol::{self, ObjectSplitter, SubscriptionItem};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::Arc;

/// Most bytes read from the socket in one `on_ready` (one huge state
/// does not hold up the other sockets of the reactor's turn; the socket
/// is still readable and reported again).
const READ_BUDGET: usize = 256 * 1024;

/// Longest response head.
const MAX_HEAD: usize = 64 * 1024;

/// Most header lines in the response head.
const MAX_HEADERS: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// The TCP connection is under way.
    Connecting,
    /// Connected (and, over TLS, the handshake under way or done): the
    /// request goes out, the head comes in.
    Head,
    /// The head read: the chunked body.
    Body,
}

/// One non-blocking SUBSCRIBE. See the module documentation.
pub struct Subscription {
    sock: TcpStream,
    /// Over `https://`.
    tls: Option<Box<rustls::ClientConnection>>,
    endpoint: Arc<Endpoint>,
    phase: Phase,
    /// The request (plain only: over TLS it is handed to rustls at once);
    /// `sent` bytes of it written.
    out: Vec<u8>,
    sent: usize,
    head: Vec<u8>,
    chunks: ChunkedDecoder,
    splitter: ObjectSplitter,
    /// Bytes of the response read so far.
    received: u64,
}

/// `socket(2)` + `connect(2)` of a non-blocking TCP socket (close-on-exec):
/// returns at once, the connection under way (`EINPROGRESS`) or made.
fn connect_nonblocking(addr: SocketAddr) -> io::Result<TcpStream> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    sock.set_nonblocking(true)?;
    match sock.connect(&addr.into()) {
        Err(e) if e.raw_os_error() != Some(libc::EINPROGRESS) => Err(e),
        _ => Ok(sock.into()),
    }
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

impl Subscription {
    /// Starts `GET /SUBSCRIBE/<channel>` to `endpoint` at `addr` (one of
    /// `endpoint.resolve()`). Returns at once; watch `socket()` for
    /// `interest()` and call `on_ready` when it is ready.
    pub fn connect(
        endpoint: Arc<Endpoint>,
        addr: SocketAddr,
        channel: &str,
    ) -> Result<Subscription> {
        let sock = connect_nonblocking(addr).map_err(|e| unreachable(&endpoint, &e))?;
        let _ = sock.set_nodelay(true);
        let mut request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: missionstream/{}\r\nAccept: */*\r\n",
            endpoint.subscribe_path(channel),
            endpoint.authority(),
            env!("CARGO_PKG_VERSION"),
        );
        if let Some(auth) = endpoint.authorization() {
            request.push_str("Authorization: ");
            request.push_str(auth);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        let mut out = request.into_bytes();
        let tls = if endpoint.is_tls() {
            let name = rustls::pki_types::ServerName::try_from(endpoint.host().to_string())
                .map_err(|e| {
                    Error::invalid(format!(
                        "the host of {} cannot be a TLS server name: {e}",
                        endpoint.base()
                    ))
                })?;
            let mut conn = rustls::ClientConnection::new(endpoint.tls_client_config(), name)
                .map_err(|e| endpoint.tls_refusal(&e))?;
            // Sent once the handshake is done.
            conn.writer()
                .write_all(&out)
                .map_err(|e| endpoint.tls_failed(e))?;
            out.clear();
            Some(Box::new(conn))
        } else {
            None
        };
        Ok(Subscription {
            sock,
            tls,
            endpoint,
            phase: Phase::Connecting,
            out,
            sent: 0,
            head: Vec::new(),
            chunks: ChunkedDecoder::new(),
            splitter: ObjectSplitter::new(),
            received: 0,
        })
    }

    /// The socket, to watch (add, re-arm, delete).
    pub fn socket(&self) -> &TcpStream {
        &self.sock
    }

    /// What to watch the socket for now: writable while connecting or
    /// while bytes wait to go out, readable always but while connecting.
    pub fn interest(&self) -> Interest {
        let unsent = match &self.tls {
            Some(conn) => conn.wants_write(),
            None => self.sent < self.out.len(),
        };
        match (self.phase, unsent) {
            (Phase::Connecting, _) => Interest::WRITE,
            (_, true) => Interest::BOTH,
            (_, false) => Interest::READ,
        }
    }

    /// Whether the subscription's response head came (Webdis took the
    /// SUBSCRIBE).
    pub fn is_streaming(&self) -> bool {
        self.phase == Phase::Body
    }

    /// Bytes of the response read so far (its head and body).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Bytes of a message that is still arriving (the part read so far).
    pub fn pending(&self) -> usize {
        self.splitter.pending()
    }

    /// Does the I/O the socket is ready for, until it would block (or,
    /// reading, up to a budget per call): completes the connection,
    /// writes, reads and decodes. Appends every whole message read to
    /// `items`. An error ends the subscription (items appended before it
    /// are valid).
    pub fn on_ready(&mut self, items: &mut Vec<SubscriptionItem>) -> Result<()> {
        if self.phase == Phase::Connecting {
            if let Some(e) = self.sock.take_error().ok().flatten() {
                return Err(unreachable(&self.endpoint, &e));
            }
            match self.sock.peer_addr() {
                Ok(_) => self.phase = Phase::Head,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()),
                Err(e) => return Err(unreachable(&self.endpoint, &e)),
            }
        }
        if self.tls.is_some() {
            self.tls_io(items)
        } else {
            self.plain_io(items)
        }
    }

    fn plain_io(&mut self, items: &mut Vec<SubscriptionItem>) -> Result<()> {
        while self.sent < self.out.len() {
            match (&self.sock).write(&self.out[self.sent..]) {
                Ok(0) => return Err(self.broke(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.sent += n,
                Err(e) if would_block(&e) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.broke(e)),
            }
        }
        let mut buf = [0u8; 16 * 1024];
        let mut budget = READ_BUDGET;
        while budget > 0 {
            match (&self.sock).read(&mut buf) {
                Ok(0) => return Err(self.closed()),
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    self.feed(&buf[..n], items)?;
                }
                Err(e) if would_block(&e) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.broke(e)),
            }
        }
        Ok(())
    }

    /// rustls by hand: TLS records out while it wants to write and the
    /// socket takes them; records in, processed, and the plaintext they
    /// carry decoded; then out again (the handshake's next flight, a key
    /// update, an alert).
    fn tls_io(&mut self, items: &mut Vec<SubscriptionItem>) -> Result<()> {
        self.tls_flush()?;
        let mut buf = [0u8; 16 * 1024];
        let mut budget = READ_BUDGET;
        let mut eof = false;
        while budget > 0 && !eof {
            let conn = self.tls.as_mut().expect("a TLS subscription");
            match conn.read_tls(&mut self.sock) {
                Ok(0) => eof = true,
                Ok(n) => budget = budget.saturating_sub(n),
                Err(e) if would_block(&e) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.broke(e)),
            }
            if let Err(e) = conn.process_new_packets() {
                // The alert that tells the server why, if it can go.
                let _ = conn.write_tls(&mut self.sock);
                return Err(self.endpoint.tls_refusal(&e));
            }
            loop {
                let conn = self.tls.as_mut().expect("a TLS subscription");
                match conn.reader().read(&mut buf) {
                    Ok(0) => {
                        // close_notify: the server ended the stream.
                        eof = true;
                        break;
                    }
                    Ok(n) => self.feed(&buf[..n], items)?,
                    Err(e) if would_block(&e) => break,
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        eof = true;
                        break;
                    }
                    Err(e) => return Err(self.broke(e)),
                }
            }
        }
        if eof {
            let handshaking = self.tls.as_ref().is_some_and(|c| c.is_handshaking());
            return Err(if handshaking {
                self.endpoint.tls_hung_up()
            } else {
                self.closed()
            });
        }
        self.tls_flush()
    }

    fn tls_flush(&mut self) -> Result<()> {
        let conn = self.tls.as_mut().expect("a TLS subscription");
        while conn.wants_write() {
            match conn.write_tls(&mut self.sock) {
                Ok(_) => {}
                Err(e) if would_block(&e) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.broke(e)),
            }
        }
        Ok(())
    }

    /// Bytes of the response: the head until complete, then the body.
    fn feed(&mut self, bytes: &[u8], items: &mut Vec<SubscriptionItem>) -> Result<()> {
        self.received += bytes.len() as u64;
        if self.phase == Phase::Head {
            self.head.extend_from_slice(bytes);
            let Some(len) = self.read_head()? else {
                return Ok(());
            };
            self.phase = Phase::Body;
            let rest = self.head.split_off(len);
            self.head = Vec::new();
            return self.body(&rest, items);
        }
        self.body(bytes, items)
    }

    /// The response head, once complete: its length. A SUBSCRIBE answered
    /// with anything but a chunked 200 fails.
    fn read_head(&mut self) -> Result<Option<usize>> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut r = httparse::Response::new(&mut headers);
        let len = match r.parse(&self.head) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if self.head.len() <= MAX_HEAD => return Ok(None),
            Ok(httparse::Status::Partial) => return Err(self.garbled("response head too long")),
            Err(e) => return Err(self.garbled(&e.to_string())),
        };
        let status = r.code.unwrap_or(0);
        if status != 200 {
            if let Some(e) = self.endpoint.tls_port_error(status, &self.head[len..]) {
                return Err(e);
            }
            let e = protocol::webdis_reply("SUBSCRIBE", status, b"").unwrap_err();
            // As the blocking SUBSCRIBE classifies them: a busy proxy, a
            // node that cannot serve.
            return Err(match status {
                429 => e.kinded(Kind::Busy),
                s if s >= 500 => e.kinded(Kind::Down),
                _ => e,
            });
        }
        let chunked = r.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case("transfer-encoding")
                && std::str::from_utf8(h.value).is_ok_and(|v| {
                    v.rsplit(',')
                        .next()
                        .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
                })
        });
        if !chunked {
            return Err(self.garbled("the SUBSCRIBE stream is not chunked"));
        }
        Ok(Some(len))
    }

    fn body(&mut self, bytes: &[u8], items: &mut Vec<SubscriptionItem>) -> Result<()> {
        let splitter = &mut self.splitter;
        self.chunks.push(bytes, |payload| splitter.push(payload))?;
        loop {
            match self.splitter.next_object() {
                Ok(Some(obj)) => items.push(
                    protocol::parse_subscription_object(&obj)
                        .map_err(|e| e.kinded(Kind::Garbled))?,
                ),
                Ok(None) => break,
                Err(e) => return Err(e.kinded(Kind::Garbled)),
            }
        }
        if self.chunks.is_done() {
            return Err(self.closed());
        }
        Ok(())
    }

    /// Closed by Webdis once made: `Kind::Garbled`, as a reset (`broke`).
    /// Webdis 0.1.9 closes a subscription it garbled or mixed up (seen:
    /// two garbled responses, a subscription never fed, then one closed,
    /// in 1 of 100 follows opened and closed while the stream was busy,
    /// the machine loaded), and a fresh one is usually good.
    fn closed(&self) -> Error {
        Error::new(Status::MS_ERR_UNAVAILABLE, "Webdis closed the subscription")
            .kinded(Kind::Garbled)
    }

    /// A connection that broke once made (a refused connect is told apart
    /// before, `unreachable`). Reset by its peer, it is `Kind::Garbled`:
    /// Webdis 0.1.9 resets a subscription it mixed up with another
    /// client's connection (seen once in 100 follows opened and closed
    /// while the stream was busy), and a fresh subscription is usually
    /// good, so the opening replaces it even with one endpoint.
    fn broke(&self, e: io::Error) -> Error {
        let error = Error::new(
            Status::MS_ERR_UNAVAILABLE,
            format!("the subscription broke: {e}"),
        );
        if e.kind() == io::ErrorKind::ConnectionReset {
            error.kinded(Kind::Garbled)
        } else {
            error
        }
    }

    fn garbled(&self, what: &str) -> Error {
        Error::new(
            Status::MS_ERR_PROTOCOL,
            format!(
                "Webdis at {} sent a malformed HTTP response: {what}",
                self.endpoint.base()
            ),
        )
        .kinded(Kind::Garbled)
    }
}

fn unreachable(endpoint: &Endpoint, e: &io::Error) -> Error {
    Error::new(
        Status::MS_ERR_UNAVAILABLE,
        format!(
            "cannot reach Webdis at {}: {e}; is it running, and is the URL right?",
            endpoint.base()
        ),
    )
    .kinded(Kind::Unreachable)
}

impl AsFd for Subscription {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl AsRawFd for Subscription {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::poller::Poller;
    use std::net::TcpListener;
    use std::time::{Duration, Instant};

    /// A peer on a local port that reads the request, writes `script`
    /// (each piece a write, a pause between) and closes.
    fn peer(script: Vec<Vec<u8>>) -> (String, std::thread::JoinHandle<Vec<u8>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://127.0.0.1:{}", l.local_addr().unwrap().port());
        let t = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.ends_with(b"\r\n\r\n") {
                let n = c.read(&mut buf).unwrap();
                assert!(n > 0);
                req.extend_from_slice(&buf[..n]);
            }
            for piece in script {
                c.write_all(&piece).unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
            req
        });
        (url, t)
    }

    /// Subscribes to `url` and drives it until it fails: the items before,
    /// the error, the request the peer read.
    fn run(
        url: &str,
        script: Vec<Vec<u8>>,
        peer_thread: std::thread::JoinHandle<Vec<u8>>,
    ) -> (Vec<SubscriptionItem>, Error, String) {
        let _ = script;
        let endpoint = Arc::new(Endpoint::parse(url).unwrap());
        let addr = endpoint.resolve().unwrap()[0];
        let mut sub = Subscription::connect(endpoint, addr, "ch/1 é").unwrap();
        let mut poller = Poller::new().unwrap();
        unsafe { poller.add(sub.socket(), 3, sub.interest()).unwrap() };
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut items = Vec::new();
        let mut ready = Vec::new();
        let e = loop {
            assert!(Instant::now() < deadline, "no end; items {items:?}");
            ready.clear();
            poller
                .wait(&mut ready, Some(Duration::from_secs(1)))
                .unwrap();
            if ready.is_empty() {
                continue;
            }
            if let Err(e) = sub.on_ready(&mut items) {
                break e;
            }
            poller.rearm(sub.socket(), 3, sub.interest()).unwrap();
        };
        poller.delete(sub.socket()).unwrap();
        let req = String::from_utf8(peer_thread.join().unwrap()).unwrap();
        (items, e, req)
    }

    fn scripted(script: &[&[u8]]) -> (Vec<SubscriptionItem>, Error, String) {
        let script: Vec<Vec<u8>> = script.iter().map(|p| p.to_vec()).collect();
        let (url, t) = peer(script.clone());
        run(&url, script, t)
    }

    const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nServer: Webdis\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    const ACK: &[u8] = b"21\r\n{\"SUBSCRIBE\":[\"subscribe\",\"c\",1]}\r\n";

    #[test]
    fn the_request_and_a_stream_to_its_last_chunk() {
        let msg = b"{\"SUBSCRIBE\":[\"message\",\"c\",\"hi\"]}";
        let chunk = format!(
            "{:x}\r\n{}\r\n",
            msg.len(),
            std::str::from_utf8(msg).unwrap()
        );
        let (items, e, req) = scripted(&[
            &HEAD[..10],
            &[&HEAD[10..], &ACK[..5]].concat(),
            &ACK[5..],
            chunk.as_bytes(),
            b"0\r\n\r\n",
        ]);
        assert!(
            req.starts_with("GET /SUBSCRIBE/ch%2F1%20%C3%A9 HTTP/1.1\r\nHost: 127.0.0.1:"),
            "{req}"
        );
        assert_eq!(
            items,
            vec![
                SubscriptionItem::Subscribed {
                    channel: "c".into()
                },
                SubscriptionItem::Message {
                    channel: "c".into(),
                    payload: "hi".into()
                },
            ]
        );
        assert_eq!(e.status, Status::MS_ERR_UNAVAILABLE, "{e}");
        assert!(e.message.contains("closed the subscription"), "{e}");
        // Closed once made: a fresh subscription is worth it at once.
        assert_eq!(e.kind, Kind::Garbled, "{e}");
    }

    #[test]
    fn a_hang_up_before_the_head_or_in_the_body_is_unavailable() {
        let (items, e, _) = scripted(&[]);
        assert!(items.is_empty());
        assert_eq!(e.status, Status::MS_ERR_UNAVAILABLE, "{e}");
        let (items, e, _) = scripted(&[HEAD, ACK, b"10\r\n{\"SUBS"]);
        assert_eq!(items.len(), 1);
        assert_eq!(e.status, Status::MS_ERR_UNAVAILABLE, "{e}");
    }

    #[test]
    fn a_status_other_than_200_fails_with_its_error() {
        let (items, e, _) = scripted(&[b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"]);
        assert!(items.is_empty());
        assert_ne!(e.status, Status::MS_OK);
        assert!(
            e.message.contains("403") || e.status == Status::MS_ERR_FORBIDDEN,
            "{e}"
        );
        // nginx's answer to plain HTTP on its TLS port.
        let (_, e, _) = scripted(&[
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 60\r\n\r\n<html>The plain HTTP request was sent to HTTPS port</html>\r\n",
        ]);
        assert_eq!(e.status, Status::MS_ERR_PROTOCOL, "{e}");
        assert!(e.message.contains("speaks TLS"), "{e}");
    }

    #[test]
    fn a_broken_head_or_body_is_garbled() {
        let cases: [&[&[u8]]; 5] = [
            &[b"HTTQ/1.1 200 OK\r\n\r\n"],
            &[b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"],
            &[HEAD, b"zz\r\n{}\r\n"],
            &[HEAD, ACK, b"5\r\nhello\r\n"],
            &[HEAD, ACK, b"3\r\n{}}\r\n"],
        ];
        for script in cases {
            let (_, e, _) = scripted(script);
            assert_eq!(
                (e.status, e.kind),
                (Status::MS_ERR_PROTOCOL, Kind::Garbled),
                "{script:?}: {e}"
            );
        }
        let mut endless = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..3000 {
            endless.extend_from_slice(format!("X-{i}: {}\r\n", "v".repeat(20)).as_bytes());
        }
        let (_, e, _) = scripted(&[&endless]);
        assert_eq!(
            (e.status, e.kind),
            (Status::MS_ERR_PROTOCOL, Kind::Garbled),
            "{e}"
        );
    }

    #[test]
    fn the_interest_follows_the_phase() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint =
            Arc::new(Endpoint::parse(&format!("http://{}", l.local_addr().unwrap())).unwrap());
        let addr = endpoint.resolve().unwrap()[0];
        let mut sub = Subscription::connect(endpoint, addr, "c").unwrap();
        assert_eq!(sub.interest(), Interest::WRITE, "connecting");
        assert!(!sub.is_streaming());
        let (_c, _) = l.accept().unwrap();
        let mut items = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while sub.interest() != Interest::READ {
            assert!(Instant::now() < deadline);
            sub.on_ready(&mut items).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(items.is_empty());
        assert!(!sub.is_streaming());
    }
}
