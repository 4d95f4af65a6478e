//! Fault relays: a TCP relay in front of the real Webdis that replays, on
//! cue and deterministically, what Webdis 0.1.9 does wrong with replies.
//!
//! The relay tells requests apart by their request line and their order
//! (on kept-alive connections too, by Content-Length), and responses by
//! their HTTP framing only (Content-Length, or chunks for SUBSCRIBE): it
//! never reads the body of a function's reply, so it does not depend on
//! what the functions answer (in a subscription's chunks it looks only for
//! the subscribe acknowledgement and for what a fault names, such as a
//! state message's `"s `).
//!
//! It never closes its own connection to Webdis while a request forwarded
//! on it is unanswered, so the relay itself does not provoke Webdis'
//! trouble with abandoned connections; only the faults it is told to play
//! happen.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Where a reply held past the client's wait lands once the client has
/// abandoned the connection it was meant for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Landing {
    /// In the next new connection, ahead of the response to its first
    /// request (what Webdis 0.1.9 does when the new connection reuses the
    /// abandoned one's socket).
    NewConnection,
    /// In a kept-alive connection, ahead of the response to its next
    /// request (its second or later): from then on that connection runs
    /// one reply behind.
    ReusedConnection,
}

/// A reply held back past the time the client waits for it.
#[derive(Clone, Debug)]
pub struct HoldReply {
    /// Requests whose request line contains this are counted...
    pub pattern: &'static str,
    /// ...and the response to the `nth` of them (from 1) is held. The
    /// request itself reaches Webdis at once: it is carried out.
    pub nth: u64,
    pub landing: Landing,
    /// A held reply whose connection the client has not abandoned by then
    /// is written on that connection (late, but where it belongs).
    pub max_hold: Duration,
    /// Every request matching `pattern` that arrives once the held reply
    /// has been written elsewhere reaches Webdis this much later, so that
    /// a client taking a stale reply for its answer is caught before the
    /// state is stored.
    pub later_delay: Duration,
}

/// What the relay does wrong; `Faults::default()` relays faithfully.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    pub hold_reply: Option<HoldReply>,
    /// The first this many SUBSCRIBE connections get the response head and
    /// the subscribe acknowledgement, then not one more byte, while the
    /// connection stays open (Webdis says it subscribed, and Redis has the
    /// subscriber, but nothing published ever reaches the client).
    pub mute_subscriptions: u64,
    /// Holds a request before it reaches Webdis until the test opens the
    /// gate (`FaultRelay::open_gate`).
    pub gate: Option<Gate>,
    /// Each chunk of a subscription carrying a state message (`"s `) is
    /// passed on this much later (a message published before a snapshot
    /// read arriving after the snapshot).
    pub delay_states: Duration,
    /// The first this many SUBSCRIBE connections get a chunk of a
    /// subscription message ahead of the response head (what Webdis 0.1.9
    /// does when a message is published while it sets a subscription up).
    pub garble_subscriptions: u64,
    /// A chunk of a subscription, after the response head and the
    /// subscribe acknowledgement passed untouched, whose size line is
    /// replaced by one that is not a chunk size (what Webdis 0.1.9 once
    /// did to the chunked body of a new subscription).
    pub garble_chunk_size: Option<GarbleChunk>,
    /// The chunks of a subscription carrying a state (its `"s ` header and
    /// `"r ` body, paired by publish id, or a `"d ` delta) are held back
    /// until the next state's come (then passed on first) or the stream's
    /// end (`"e"`) has passed (then 50 ms later): the end overtakes the
    /// last state by more than one read, as Webdis 0.1.9 may swap a
    /// channel's messages. (No half of a state waits at the client for
    /// the other meanwhile.)
    pub end_overtakes_states: bool,
}

/// Which chunk of which subscriptions `Faults::garble_chunk_size` garbles.
#[derive(Clone, Debug)]
pub struct GarbleChunk {
    /// The first this many SUBSCRIBE responses to reach the chosen chunk
    /// get it garbled, once each (from then on the client cannot read that
    /// response; the relay passes the rest on as it comes)...
    pub subscriptions: u64,
    /// ...the `nth` chunk (from 1) after the subscribe acknowledgement
    /// whose data contains `pattern` ("" for any chunk; `"s ` for one
    /// carrying a state). Its size line becomes `zz`, its data follows.
    pub pattern: &'static str,
    pub nth: u64,
}

/// A request held at the relay, unsent, until the test lets it pass.
#[derive(Clone, Debug)]
pub struct Gate {
    /// Requests whose request line contains this are counted...
    pub pattern: &'static str,
    /// ...and the `nth` of them (from 1) is held.
    pub nth: u64,
    /// The gate opens by itself after this long (a test that failed
    /// before opening it does not hang).
    pub max_hold: Duration,
}

/// After writing a stale reply ahead of a request, the relay waits this
/// long before passing the request on, so that the client reads the stale
/// reply alone, not merged with the real one.
const SETTLE: Duration = Duration::from_millis(200);

/// How long a request that could receive the stale reply waits for the
/// abandoned connection's hang-up to be seen.
const LANDING_WAIT: Duration = Duration::from_secs(1);

enum Hold {
    /// The chosen request has not come yet.
    Armed,
    /// Forwarded on connection `conn`; its reply is not released.
    Waiting { conn: u64 },
    /// The client abandoned `conn`: the reply waits for another one.
    Stale { conn: u64, bytes: Vec<u8> },
    /// Written (elsewhere, or late on its own connection).
    Done,
}

struct Shared {
    faults: Faults,
    hold: Mutex<Hold>,
    cond: Condvar,
    hold_matches: AtomicU64,
    subscribes: AtomicU64,
    stale_written: AtomicU64,
    late_written: AtomicU64,
    delayed: AtomicU64,
    overtaken: AtomicU64,
    muted: AtomicU64,
    garbled: AtomicU64,
    chunk_sizes_garbled: AtomicU64,
    next_conn: AtomicU64,
    gate_matches: AtomicU64,
    gated: AtomicU64,
    gate_open: AtomicBool,
}

/// What to do with the response to one forwarded request.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Pass,
    Hold,
    Mute,
}

struct Pending {
    kind: Kind,
    /// A subscription: its response never ends.
    streaming: bool,
}

struct Conn {
    id: u64,
    /// Writes to the client (the request thread writes stale replies, the
    /// response thread everything else).
    client: Mutex<TcpStream>,
    /// The client hung up.
    closed: AtomicBool,
    /// Requests forwarded whose responses are not complete, in order.
    pending: Mutex<VecDeque<Pending>>,
    drained: Condvar,
}

impl Conn {
    fn write(&self, bytes: &[u8]) {
        let _ = lock(&self.client).write_all(bytes);
    }
}

/// The publish a subscription chunk's state message belongs to: the
/// publish id of an `s` header or an `r` body, the whole chunk of a `d`
/// delta (a publish of its own); None for other messages.
fn publish_of(data: &[u8]) -> Option<Vec<u8>> {
    let after = |prefix: &[u8]| find(data, prefix).map(|at| &data[at + prefix.len()..]);
    if let Some(rest) = after(b"\"s ") {
        // s <seq> <updated ms> <publish id>
        let id = rest.split(|b| *b == b' ').nth(2)?;
        return Some(id.split(|b| *b == b'"').next()?.to_vec());
    }
    if let Some(rest) = after(b"\"r ") {
        // r <publish id>\n<state> (the newline escaped in JSON)
        return Some(rest.split(|b| *b == b'\\').next()?.to_vec());
    }
    after(b"\"d ").map(|_| data.to_vec())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A relay in front of Webdis playing `Faults`.
pub struct FaultRelay {
    pub port: u16,
    pub url: String,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
}

impl FaultRelay {
    pub fn start(target_port: u16, faults: Faults) -> FaultRelay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            faults,
            hold: Mutex::new(Hold::Armed),
            cond: Condvar::new(),
            hold_matches: AtomicU64::new(0),
            subscribes: AtomicU64::new(0),
            stale_written: AtomicU64::new(0),
            late_written: AtomicU64::new(0),
            delayed: AtomicU64::new(0),
            overtaken: AtomicU64::new(0),
            muted: AtomicU64::new(0),
            garbled: AtomicU64::new(0),
            chunk_sizes_garbled: AtomicU64::new(0),
            next_conn: AtomicU64::new(0),
            gate_matches: AtomicU64::new(0),
            gated: AtomicU64::new(0),
            gate_open: AtomicBool::new(false),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (sh, stopped) = (shared.clone(), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", target_port)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = upstream.set_nodelay(true);
                let conn = Arc::new(Conn {
                    id: sh.next_conn.fetch_add(1, Ordering::SeqCst),
                    client: Mutex::new(client.try_clone().unwrap()),
                    closed: AtomicBool::new(false),
                    pending: Mutex::new(VecDeque::new()),
                    drained: Condvar::new(),
                });
                {
                    let (sh, conn, upstream) =
                        (sh.clone(), conn.clone(), upstream.try_clone().unwrap());
                    std::thread::spawn(move || responses(sh, conn, upstream));
                }
                let sh = sh.clone();
                std::thread::spawn(move || requests(sh, conn, client, upstream));
            }
        });
        FaultRelay {
            port,
            url: format!("http://127.0.0.1:{port}"),
            shared,
            stop,
        }
    }

    /// Held replies written into a connection they were not meant for.
    pub fn stale_written(&self) -> u64 {
        self.shared.stale_written.load(Ordering::SeqCst)
    }

    /// Held replies written late on their own connection (the client
    /// waited longer than `max_hold`: no fault was played).
    pub fn late_written(&self) -> u64 {
        self.shared.late_written.load(Ordering::SeqCst)
    }

    /// Requests forwarded `later_delay` late.
    pub fn delayed(&self) -> u64 {
        self.shared.delayed.load(Ordering::SeqCst)
    }

    /// States or deltas passed on after the stream's end
    /// (`end_overtakes_states`).
    pub fn overtaken(&self) -> u64 {
        self.shared.overtaken.load(Ordering::SeqCst)
    }

    /// SUBSCRIBE requests seen.
    pub fn subscribes(&self) -> u64 {
        self.shared.subscribes.load(Ordering::SeqCst)
    }

    /// Requests held at the gate so far (0 or 1).
    pub fn gated(&self) -> u64 {
        self.shared.gated.load(Ordering::SeqCst)
    }

    /// Waits until the gate holds its request; panics after `timeout`.
    pub fn wait_gated(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.gated() == 0 {
            assert!(
                Instant::now() < deadline,
                "no request reached the gate within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Lets the held request (and any later one) pass.
    pub fn open_gate(&self) {
        self.shared.gate_open.store(true, Ordering::SeqCst);
    }

    /// SUBSCRIBE responses garbled (a message chunk ahead of the head).
    pub fn garbled(&self) -> u64 {
        self.shared.garbled.load(Ordering::SeqCst)
    }

    /// SUBSCRIBE responses whose chunk had its size line garbled
    /// (`Faults::garble_chunk_size`).
    pub fn chunk_sizes_garbled(&self) -> u64 {
        self.shared.chunk_sizes_garbled.load(Ordering::SeqCst)
    }

    /// Subscriptions muted after their acknowledgement.
    pub fn muted(&self) -> u64 {
        self.shared.muted.load(Ordering::SeqCst)
    }
}

impl Drop for FaultRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Reads one request (head and Content-Length body) from `from`, with
/// bytes already read in `buf`; returns it and keeps what follows in `buf`.
fn read_request(from: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut chunk = vec![0u8; 64 * 1024];
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        match from.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let length = header(&buf[..head_end], "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0usize);
    while buf.len() < head_end + length {
        match from.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let rest = buf.split_off(head_end + length);
    Some(std::mem::replace(buf, rest))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The value of header `name` in an HTTP head.
fn header(head: &[u8], name: &str) -> Option<String> {
    String::from_utf8_lossy(head).lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// Client to Webdis: one request at a time, each classified before it is
/// passed on.
fn requests(sh: Arc<Shared>, conn: Arc<Conn>, mut client: TcpStream, mut upstream: TcpStream) {
    let mut buf = Vec::new();
    let mut on_this_connection = 0u64;
    while let Some(request) = read_request(&mut client, &mut buf) {
        on_this_connection += 1;
        let line =
            String::from_utf8_lossy(&request[..find(&request, b"\r\n").unwrap_or(0)]).to_string();
        let subscribe = line.starts_with("GET ") && line.contains("/SUBSCRIBE/");
        let hold = sh.faults.hold_reply.clone();
        let mut kind = Kind::Pass;
        if let Some(h) = &hold {
            if line.contains(h.pattern)
                && sh.hold_matches.fetch_add(1, Ordering::SeqCst) + 1 == h.nth
            {
                kind = Kind::Hold;
                *lock(&sh.hold) = Hold::Waiting { conn: conn.id };
            }
        }
        if subscribe && sh.subscribes.fetch_add(1, Ordering::SeqCst) < sh.faults.mute_subscriptions
        {
            kind = Kind::Mute;
        }
        if subscribe
            && kind == Kind::Pass
            && sh.garbled.load(Ordering::SeqCst) < sh.faults.garble_subscriptions
        {
            sh.garbled.fetch_add(1, Ordering::SeqCst);
            conn.write(b"2d\r\n{\"SUBSCRIBE\":[\"message\",\"c\",\"s 7 7\\n{}\"]}\r\n");
        }
        let mut stale_here = false;
        if let Some(h) = &hold {
            let eligible = match h.landing {
                Landing::NewConnection => on_this_connection == 1,
                Landing::ReusedConnection => on_this_connection >= 2,
            };
            if eligible && kind == Kind::Pass {
                stale_here = land_stale_reply(&sh, &conn);
            }
            if sh.stale_written.load(Ordering::SeqCst) > 0 && line.contains(h.pattern) {
                sh.delayed.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(h.later_delay.max(if stale_here {
                    SETTLE
                } else {
                    Duration::ZERO
                }));
            } else if stale_here {
                std::thread::sleep(SETTLE);
            }
        }
        if let Some(g) = &sh.faults.gate {
            if line.contains(g.pattern)
                && sh.gate_matches.fetch_add(1, Ordering::SeqCst) + 1 == g.nth
            {
                sh.gated.fetch_add(1, Ordering::SeqCst);
                let deadline = Instant::now() + g.max_hold;
                while !sh.gate_open.load(Ordering::SeqCst) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        lock(&conn.pending).push_back(Pending {
            kind,
            streaming: subscribe,
        });
        if upstream.write_all(&request).is_err() {
            break;
        }
    }
    // The client hung up: so does the relay, once Webdis has answered
    // every request passed on (a subscription never is).
    conn.closed.store(true, Ordering::SeqCst);
    sh.cond.notify_all();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut pending = lock(&conn.pending);
    while !pending.iter().all(|p| p.streaming) && Instant::now() < deadline {
        pending = conn
            .drained
            .wait_timeout(pending, Duration::from_millis(20))
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    drop(pending);
    let _ = upstream.shutdown(Shutdown::Both);
    let _ = client.shutdown(Shutdown::Both);
}

/// Writes the held reply into `conn` if it is waiting for a connection
/// (after waiting a moment for the abandoned one's hang-up to be seen);
/// true if it did.
fn land_stale_reply(sh: &Shared, conn: &Conn) -> bool {
    let deadline = Instant::now() + LANDING_WAIT;
    let mut hold = lock(&sh.hold);
    loop {
        match &*hold {
            Hold::Waiting { conn: c } if *c != conn.id && Instant::now() < deadline => {
                hold = sh
                    .cond
                    .wait_timeout(hold, Duration::from_millis(10))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            Hold::Stale { conn: c, .. } if *c != conn.id => {
                let Hold::Stale { bytes, .. } = std::mem::replace(&mut *hold, Hold::Done) else {
                    unreachable!()
                };
                drop(hold);
                conn.write(&bytes);
                sh.stale_written.fetch_add(1, Ordering::SeqCst);
                return true;
            }
            _ => return false,
        }
    }
}

/// Buffered reads from Webdis.
struct Reader {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Reader {
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 64 * 1024];
        match self.s.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Bytes up to and including `delimiter`.
    fn until(&mut self, delimiter: &[u8]) -> Option<Vec<u8>> {
        loop {
            if let Some(i) = find(&self.buf, delimiter) {
                let rest = self.buf.split_off(i + delimiter.len());
                return Some(std::mem::replace(&mut self.buf, rest));
            }
            if !self.fill() {
                return None;
            }
        }
    }

    fn exactly(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill() {
                return None;
            }
        }
        let rest = self.buf.split_off(n);
        Some(std::mem::replace(&mut self.buf, rest))
    }
}

/// Webdis to client: response by response, each as its request says.
fn responses(sh: Arc<Shared>, conn: Arc<Conn>, upstream: TcpStream) {
    let mut r = Reader {
        s: upstream,
        buf: Vec::new(),
    };
    'responses: while let Some(head) = r.until(b"\r\n\r\n") {
        let (kind, streaming) = lock(&conn.pending)
            .front()
            .map_or((Kind::Pass, false), |p| (p.kind, p.streaming));
        let chunked =
            header(&head, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        let mut whole = Vec::new();
        match kind {
            Kind::Hold => whole.extend_from_slice(&head),
            Kind::Pass | Kind::Mute => conn.write(&head),
        }
        let mut acknowledged = false;
        // Chunks after the acknowledgement that matched the pattern of
        // `garble_chunk_size`.
        let mut garble_matches = 0u64;
        // The chunks `end_overtakes_states` holds back, and their publish.
        let mut held: Option<(Vec<u8>, Vec<u8>)> = None;
        if chunked {
            loop {
                let Some(size_line) = r.until(b"\r\n") else {
                    break 'responses;
                };
                let size = usize::from_str_radix(
                    String::from_utf8_lossy(&size_line)
                        .trim()
                        .split(';')
                        .next()
                        .unwrap_or(""),
                    16,
                )
                .unwrap_or(0);
                // The data and its CRLF; the last chunk: just the CRLF
                // ending the (empty) trailers.
                let Some(data) = r.exactly(size + 2) else {
                    break 'responses;
                };
                match kind {
                    Kind::Hold => {
                        whole.extend_from_slice(&size_line);
                        whole.extend_from_slice(&data);
                    }
                    Kind::Mute if acknowledged => {}
                    Kind::Pass | Kind::Mute => {
                        if !sh.faults.delay_states.is_zero() && find(&data, b"\"s ").is_some() {
                            std::thread::sleep(sh.faults.delay_states);
                        }
                        let garble = kind == Kind::Pass
                            && streaming
                            && acknowledged
                            && garble_chunk_size(&sh, &data, &mut garble_matches);
                        let mut out = if garble {
                            b"zz\r\n".to_vec()
                        } else {
                            size_line
                        };
                        out.extend_from_slice(&data);
                        if sh.faults.end_overtakes_states && streaming && acknowledged {
                            if let Some(id) = publish_of(&data) {
                                // The halves of one full state (either
                                // order) stay together.
                                match held.as_mut() {
                                    Some((held_id, bytes)) if *held_id == id => {
                                        bytes.extend_from_slice(&out)
                                    }
                                    _ => {
                                        if let Some((_, before)) = held.replace((id, out)) {
                                            conn.write(&before);
                                        }
                                    }
                                }
                                continue;
                            }
                            if find(&data, b"\"e\"]").is_some() {
                                conn.write(&out);
                                if let Some((_, state)) = held.take() {
                                    sh.overtaken.fetch_add(1, Ordering::SeqCst);
                                    std::thread::sleep(Duration::from_millis(50));
                                    conn.write(&state);
                                }
                                continue;
                            }
                        }
                        conn.write(&out);
                        if !acknowledged && find(&data, b"\"subscribe\"").is_some() {
                            acknowledged = true;
                            if kind == Kind::Mute {
                                sh.muted.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    }
                }
                if size == 0 {
                    break;
                }
            }
        } else {
            let length = header(&head, "content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0usize);
            let Some(body) = r.exactly(length) else {
                break 'responses;
            };
            match kind {
                Kind::Hold => whole.extend_from_slice(&body),
                Kind::Pass | Kind::Mute => conn.write(&body),
            }
        }
        if kind == Kind::Hold {
            release(&sh, &conn, whole);
        }
        lock(&conn.pending).pop_front();
        conn.drained.notify_all();
    }
    // Webdis hung up (or the relay did): so does the client side.
    let _ = lock(&conn.client).shutdown(Shutdown::Both);
}

/// Whether this chunk of an acknowledged subscription (its `data`) is the
/// one `Faults::garble_chunk_size` garbles; counts it when it is.
/// `matches`: the chunks of this subscription that matched so far.
fn garble_chunk_size(sh: &Shared, data: &[u8], matches: &mut u64) -> bool {
    let Some(g) = &sh.faults.garble_chunk_size else {
        return false;
    };
    if !g.pattern.is_empty() && find(data, g.pattern.as_bytes()).is_none() {
        return false;
    }
    *matches += 1;
    *matches == g.nth
        && sh
            .chunk_sizes_garbled
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < g.subscriptions).then_some(n + 1)
            })
            .is_ok()
}

/// Keeps a held reply until the client abandons its connection (then it
/// waits for another connection) or `max_hold` passes (then it is written
/// where it belongs).
fn release(sh: &Shared, conn: &Conn, bytes: Vec<u8>) {
    let max_hold = sh
        .faults
        .hold_reply
        .as_ref()
        .map_or(Duration::ZERO, |h| h.max_hold);
    let deadline = Instant::now() + max_hold;
    let mut hold = lock(&sh.hold);
    loop {
        if conn.closed.load(Ordering::SeqCst) {
            *hold = Hold::Stale {
                conn: conn.id,
                bytes,
            };
            drop(hold);
            sh.cond.notify_all();
            return;
        }
        if Instant::now() >= deadline {
            *hold = Hold::Done;
            drop(hold);
            conn.write(&bytes);
            sh.late_written.fetch_add(1, Ordering::SeqCst);
            return;
        }
        hold = sh
            .cond
            .wait_timeout(hold, Duration::from_millis(10))
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

/// A plain relay in front of Webdis that can go down: `down()` breaks
/// every connection it carries and from then on accepts each new one only
/// to close it at once, noting when (a server that is gone, whose
/// connection attempts a test can count and time).
pub struct SwitchRelay {
    pub port: u16,
    pub url: String,
    down: Arc<AtomicBool>,
    /// New connections wait (accepted, not yet relayed) while set.
    held: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    live: Arc<Mutex<Vec<TcpStream>>>,
    refused: Arc<Mutex<Vec<Instant>>>,
}

impl SwitchRelay {
    pub fn start(target_port: u16) -> SwitchRelay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = Arc::new(AtomicBool::new(false));
        let held = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let live: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(Mutex::new(Vec::new()));
        let (d, st, l, r) = (down.clone(), stop.clone(), live.clone(), refused.clone());
        let h = held.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                while h.load(Ordering::SeqCst) && !st.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if d.load(Ordering::SeqCst) {
                    lock(&r).push(Instant::now());
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", target_port)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                {
                    let mut l = lock(&l);
                    l.push(client.try_clone().unwrap());
                    l.push(upstream.try_clone().unwrap());
                }
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), upstream.try_clone().unwrap()),
                    (upstream, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        SwitchRelay {
            port,
            url: format!("http://127.0.0.1:{port}"),
            down,
            held,
            stop,
            live,
            refused,
        }
    }

    /// Goes down: breaks every connection carried; refuses new ones.
    pub fn down(&self) {
        self.down.store(true, Ordering::SeqCst);
        for c in lock(&self.live).drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// Breaks every connection carried (a subscription, a request in
    /// flight) and stays up: the next connections go through.
    pub fn cut(&self) -> usize {
        let mut live = lock(&self.live);
        let n = live.len() / 2;
        for c in live.drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        n
    }

    /// From now on new connections wait, unanswered, until `release`: a
    /// server that is slow to come back.
    pub fn hold(&self) {
        self.held.store(true, Ordering::SeqCst);
    }

    pub fn release(&self) {
        self.held.store(false, Ordering::SeqCst);
    }

    /// When each connection made while down was accepted (and closed).
    pub fn refused(&self) -> Vec<Instant> {
        lock(&self.refused).clone()
    }
}

impl Drop for SwitchRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.release();
        self.down();
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// A relay from a Unix socket to a TCP port (Redis), whose socket can be
/// closed: `close()` stops listening and removes the socket file, so a
/// new connection fails at once, inside `connect` (ENOENT: Webdis then
/// answers a SUBSCRIBE 503, as when its fresh connection to Redis fails
/// at once for any reason), while the connections carried already go on;
/// `open()` listens again at the same path.
pub struct UnixRelay {
    pub path: std::path::PathBuf,
    open: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl UnixRelay {
    pub fn start(path: &std::path::Path, target_port: u16) -> UnixRelay {
        use std::os::unix::net::UnixListener;
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let (o, st, at) = (open.clone(), stop.clone(), path.to_path_buf());
        std::thread::spawn(move || {
            let mut listener = Some(listener);
            while !st.load(Ordering::SeqCst) {
                match (o.load(Ordering::SeqCst), listener.is_some()) {
                    (false, true) => {
                        listener = None;
                        let _ = std::fs::remove_file(&at);
                    }
                    (true, false) => listener = UnixListener::bind(&at).ok(),
                    _ => {}
                }
                let Some(l) = listener.as_ref() else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                l.set_nonblocking(true).unwrap();
                let client = match l.accept() {
                    Ok((c, _)) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(2));
                        continue;
                    }
                };
                client.set_nonblocking(false).unwrap();
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", target_port)) else {
                    continue;
                };
                let (mut c1, mut u1) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c1, &mut u1);
                    let _ = u1.shutdown(Shutdown::Both);
                    let _ = c1.shutdown(Shutdown::Both);
                });
                let (mut u2, mut c2) = (upstream, client);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut u2, &mut c2);
                    let _ = c2.shutdown(Shutdown::Both);
                    let _ = u2.shutdown(Shutdown::Both);
                });
            }
            let _ = std::fs::remove_file(&at);
        });
        UnixRelay {
            path: path.to_path_buf(),
            open,
            stop,
        }
    }

    /// Stops listening: new connections fail at once.
    pub fn close(&self) {
        self.open.store(false, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.path.exists() {
            assert!(Instant::now() < deadline, "the relay's socket stays");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Listens again at the same path.
    pub fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for UnixRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
