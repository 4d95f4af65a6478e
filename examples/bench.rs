//! `make bench` / `make bench-quick`: the performance figures, each beside a
//! baseline measured in the same run, against a real `redis-server` and
//! `webdis` that this program starts on free loopback ports (never
//! 6379/7379) and stops at the end.
//!
//!     cargo run --release --example bench [-- --quick] [--rows 1,2,3,4,5,6,8,9,10,11,12,13,14]
//!
//! Rows (row 7 is rows 2 and 3 swept over state sizes):
//!  1. `ms_publish` call cost through the C ABI, 1 KiB state, median and
//!     p99; baseline: copying the 1 KiB into a fresh Vec.
//!  2. Acknowledged publishes per second, one stream (`ms_publish` +
//!     `ms_flush` loop); baseline: a raw keep-alive HTTP/1.1 loop on a
//!     `TcpStream` sending the identical `PUT /FCALL/ms_publish/...`.
//!  3. Publish -> follower callback latency at a steady 200 states/s;
//!     baseline: raw PUT publish on one socket, raw chunked
//!     `GET /SUBSCRIBE/<channel>` read on another, same payload.
//!  4. Fan-out to 100 followers (100 clients in this process): latency of
//!     the last follower of each state; baseline: 100 raw subscribers.
//!  5. Coalescing: a burst of 100,000 states; time until all 100 followers
//!     hold the last one.
//!  6. Connect/disconnect cycles: RSS, threads and fds before and after.
//!  8. Wrong passwords evaluated per second against unthrottled requests.
//!  9. Failover on the replicated topology of `scripts/cluster.sh`: SIGKILL
//!     of the primary → the leader's first acknowledged publish, → every
//!     follower holds it; baseline: Sentinel's promotion, same trial.
//! 10. Fan-out to 100 followers on replicas against all on the primary:
//!     latency and the primary's Redis and Webdis CPU per 1000 states.
//! 11. Acknowledged publishes/s with `min-replicas-to-write 1` against
//!     without, same topology, and against the single node.
//! 12. `ms_start` and `ms_connect` latency with the client-side KDF.
//! 13. Deltas against full states for ~100 KiB and ~1 MiB survey plans,
//!     one waypoint moved per update (examples/bench/deltas.rs): bytes per
//!     update on the channel, in the AOF and to a replica (the record
//!     keeps changes), publish -> callback at 20/s, acknowledged
//!     publishes/s against the 1 KiB rate, a late join's snapshot read,
//!     and Redis' time per full MiB of random content (quick mode: the
//!     ~100 KiB plan only).
//! 14. 1,000 leads + 1,000 follows of small states in one client (100 in
//!     quick mode; examples/bench/many.rs): threads and RSS added, time
//!     until every follow holds its first state; baseline: 1 lead + 1
//!     follow, same run. Then publish -> callback p50 of one of its
//!     streams, the other follows idle; baseline: the 1 + 1 client's.
//!     The process' open-file limit is raised to its hard limit first
//!     (the servers inherit it), as scripts/bench-fanin.py does.
//!
//! Rows 9-11 (examples/bench/ha.rs) run in full mode, or when named
//! with --rows. Rows 1-12 run with deltas turned off (their baselines
//! send every state in full); row 13 compares the two.
//!
//! No timed assertion: the program exits non-zero only when the benchmark
//! itself breaks (a server does not start, a call fails, ...).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "bench/deltas.rs"]
mod deltas;
#[path = "bench/ha.rs"]
mod ha;
#[path = "bench/many.rs"]
mod many;

use missionstream::ffi::{
    ms_client, ms_client_free, ms_client_new, ms_connect, ms_disconnect, ms_event, ms_event_kind,
    ms_flush, ms_last_error, ms_publish, ms_set_callback, ms_start, ms_status,
};
use missionstream::protocol::{encode_path_arg, frame_body, PROTOCOL_VERSION};
use std::ffi::{c_void, CStr, CString};
use std::hint::black_box;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;
const PASSWORD: &str = "bench-pw";
const CODE: &str = "bench-code";
const FOLLOWERS: usize = 100;
const BURST: u64 = 100_000;

// ---------------------------------------------------------------- helpers

static BASE: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the start of the program (one clock for all threads).
fn now_ns() -> u64 {
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p / 100.0).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v
}

fn size_name(size: usize) -> String {
    if size >= MIB {
        format!("{} MiB", size / MIB)
    } else {
        format!("{} KiB", size / KIB)
    }
}

fn fmt_us(ns: f64) -> String {
    let us = ns / 1000.0;
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else if us >= 100.0 {
        format!("{us:.0} µs")
    } else {
        format!("{us:.2} µs")
    }
}

/// A state of exactly `size` bytes (JSON) carrying a timestamp `t` (ns) and
/// an index `k` at fixed offsets, so that both can be patched in place and
/// read back from the JSON Webdis sends.
const T_AT: usize = 5; // {"t":
const T_LEN: usize = 20;
const K_AT: usize = T_AT + T_LEN + 5; // ,"k":
const K_LEN: usize = 10;

fn make_state(size: usize) -> Vec<u8> {
    let head = format!("{{\"t\":{:020},\"k\":{:010},\"pad\":\"", 0, 0);
    assert!(size >= head.len() + 2);
    let mut s = head.into_bytes();
    s.resize(size - 2, b'a');
    s.extend_from_slice(b"\"}");
    s
}

fn put_digits(buf: &mut [u8], at: usize, len: usize, mut v: u64) {
    for i in (at..at + len).rev() {
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

fn get_digits(buf: &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for &b in buf {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (b - b'0') as u64;
    }
    Some(v)
}

/// (t, k) of a state as delivered to a callback.
fn parse_tk(state: &[u8]) -> Option<(u64, u64)> {
    if state.len() < K_AT + K_LEN || !state.starts_with(b"{\"t\":") {
        return None;
    }
    Some((
        get_digits(&state[T_AT..T_AT + T_LEN])?,
        get_digits(&state[K_AT..K_AT + K_LEN])?,
    ))
}

/// (t, k) found in the JSON Webdis sends for a channel message, where the
/// state's quotes are escaped: `{\"t\":<20 digits>,\"k\":<10 digits>`.
fn parse_tk_escaped(json: &[u8]) -> Option<(u64, u64)> {
    const PAT: &[u8] = b"{\\\"t\\\":";
    let i = json.windows(PAT.len()).position(|w| w == PAT)? + PAT.len();
    let t = get_digits(json.get(i..i + T_LEN)?)?;
    let j = i + T_LEN + 7; // ,\"k\":
    let k = get_digits(json.get(j..j + K_LEN)?)?;
    Some((t, k))
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn count_dir(path: &str) -> usize {
    std::fs::read_dir(path).map(|d| d.count()).unwrap_or(0)
}

// -------------------------------------------------------------- C ABI use

struct Ffi(*mut ms_client);
// SAFETY: every ms_* function is thread-safe on one client.
unsafe impl Send for Ffi {}
unsafe impl Sync for Ffi {}

impl Drop for Ffi {
    fn drop(&mut self) {
        // SAFETY: a live client, freed once.
        unsafe { ms_client_free(self.0) }
    }
}

fn cstr(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn check(status: ms_status, what: &str) {
    if status != ms_status::MS_OK {
        // SAFETY: ms_last_error returns a NUL-terminated string.
        let msg = unsafe { CStr::from_ptr(ms_last_error()) };
        panic!("{what}: {status:?}: {}", msg.to_string_lossy());
    }
}

impl Ffi {
    fn new(url: &str) -> Ffi {
        let mut c = std::ptr::null_mut();
        // SAFETY: valid string and out pointer.
        check(
            unsafe { ms_client_new(cstr(url).as_ptr(), &mut c) },
            "ms_client_new",
        );
        // Rows 1-12 compare the library with raw requests carrying the
        // same full states: every state in full.
        // SAFETY: a live client just made.
        unsafe { &*c }.client().set_deltas(false);
        Ffi(c)
    }
    fn start(&self, name: &CStr) {
        let (pw, code) = (cstr(PASSWORD), cstr(CODE));
        // SAFETY: live client, NUL-terminated strings.
        check(
            unsafe { ms_start(self.0, name.as_ptr(), pw.as_ptr(), code.as_ptr()) },
            "ms_start",
        );
    }
    #[inline]
    fn publish(&self, name: &CStr, state: &[u8]) -> ms_status {
        // SAFETY: live client; `state` is `len` readable bytes.
        unsafe { ms_publish(self.0, name.as_ptr(), state.as_ptr().cast(), state.len()) }
    }
    fn flush(&self, name: &CStr) {
        // SAFETY: live client, NUL-terminated name.
        check(
            unsafe { ms_flush(self.0, name.as_ptr(), 60_000) },
            "ms_flush",
        );
    }
    fn connect(&self, name: &CStr) -> ms_status {
        let pw = cstr(PASSWORD);
        // SAFETY: live client, NUL-terminated strings.
        unsafe { ms_connect(self.0, name.as_ptr(), pw.as_ptr()) }
    }
    fn disconnect(&self, name: &CStr) -> ms_status {
        // SAFETY: live client, NUL-terminated name.
        unsafe { ms_disconnect(self.0, name.as_ptr()) }
    }
    /// Sets `cb` with `ctx` as user data; `ctx` must outlive the client's
    /// use of it (the bench keeps it until after ms_client_free).
    fn set_callback<T>(&self, cb: unsafe extern "C" fn(*const ms_event, *mut c_void), ctx: &T) {
        // SAFETY: live client; cb stays callable; ctx outlives the client.
        check(
            unsafe { ms_set_callback(self.0, Some(cb), ctx as *const T as *mut c_void) },
            "ms_set_callback",
        );
    }
}

/// The state of a STATE event.
///
/// # Safety
/// `ev` is the event passed to a callback.
unsafe fn event_state<'a>(ev: *const ms_event) -> Option<&'a [u8]> {
    let ev = &*ev;
    if ev.kind != ms_event_kind::MS_EVENT_STATE || ev.data.is_null() {
        return None;
    }
    Some(std::slice::from_raw_parts(ev.data.cast(), ev.len))
}

// ------------------------------------------------------------- raw HTTP

/// One keep-alive HTTP/1.1 connection to Webdis on a plain TcpStream.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    fn connect(port: u16) -> Raw {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to webdis");
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Raw {
            s,
            buf: Vec::with_capacity(64 * KIB),
        }
    }

    /// Sends a complete request (one write) and reads the whole response.
    fn roundtrip(&mut self, request: &[u8]) -> (u16, Vec<u8>) {
        self.s.write_all(request).expect("raw write");
        self.buf.clear();
        let mut chunk = [0u8; 16 * KIB];
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = self.s.read(&mut chunk).expect("raw read");
            assert!(n > 0, "webdis closed the keep-alive connection");
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_ascii_lowercase();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("a Content-Length in Webdis' reply");
        while self.buf.len() < head_end + len {
            let n = self.s.read(&mut chunk).expect("raw read");
            assert!(n > 0, "webdis closed the connection mid-body");
            self.buf.extend_from_slice(&chunk[..n]);
        }
        (status, self.buf[head_end..head_end + len].to_vec())
    }
}

/// `PUT <path>` with `body`, as bytes, and the offset of the body in them.
fn raw_put(port: u16, path: &str, body: &[u8]) -> (Vec<u8>, usize) {
    let mut req = format!(
        "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: missionstream/{}\r\nAccept: */*\r\nContent-Length: {}\r\n\r\n",
        env!("CARGO_PKG_VERSION"),
        body.len()
    )
    .into_bytes();
    let at = req.len();
    req.extend_from_slice(body);
    (req, at)
}

fn fcall_path(command: &str, function: &str, keys: &[&str]) -> String {
    let mut p = format!("/{command}/{function}/{}", keys.len());
    for key in keys {
        p.push('/');
        encode_path_arg(key, &mut p);
    }
    p.push('/');
    p.push_str(PROTOCOL_VERSION);
    // The request nonce the functions echo (any, for the raw baseline).
    p.push_str("/raw");
    p
}

/// Starts stream `name` with a raw ms_start, as another client of the
/// protocol would (derived keys, a salt, a channel and a lead token of
/// its own); returns the channel (which the functions make from the
/// seed sent and the name) and the lead token.
fn raw_start(port: u16, name: &str) -> (String, String) {
    use missionstream::kdf::{self, Secret};
    let hex = |n: u128| format!("{n:032x}");
    let t = now_ns() as u128;
    let (salt, seed, token) = (hex(t ^ 0x5a17), hex(t ^ 0xc4a2), hex(t ^ 0x70c3));
    let params = kdf::Params {
        salt: salt.clone(),
        iterations: kdf::DEFAULT_ITERATIONS,
    };
    let pw_key = kdf::derive(&params, Secret::Password, PASSWORD);
    let code_key = kdf::derive(&params, Secret::LeaderCode, CODE);
    let mut path = String::from("/FCALL/ms_start/3/");
    encode_path_arg(&format!("stream:{name}"), &mut path);
    path.push_str("/streams/");
    encode_path_arg(&format!("msl:{name}"), &mut path);
    path.push_str(&format!(
        "/{PROTOCOL_VERSION}/raw/5000/0/{}/{}",
        kdf::ALGORITHM,
        kdf::DEFAULT_ITERATIONS
    ));
    let body = frame_body(&[
        pw_key.as_bytes(),
        code_key.as_bytes(),
        salt.as_bytes(),
        seed.as_bytes(),
        token.as_bytes(),
    ]);
    let (req, _) = raw_put(port, &path, &body);
    let (status, body) = Raw::connect(port).roundtrip(&req);
    let reply = String::from_utf8_lossy(&body);
    assert!(
        status == 200 && reply == r#"{"FCALL":["raw"]}"#,
        "ms_start: {status} {reply}"
    );
    (missionstream::protocol::channel_of(&seed, name), token)
}

/// The raw request that the library's publisher sends for `state`: a
/// seq floor of 0 and a publish id of 32 hex digits (as the library's) whose counter `next`
/// raises per request, since the functions do not store a repeated or
/// older id of the same token again. As the library's, its body is
/// `r <publish id>\n` then the state, and its path carries the channel's
/// tag and the lead token sealed for each publish id (patched in place).
struct RawPublish {
    req: Vec<u8>,
    /// Offset of the state in `req`.
    state_at: usize,
    /// Offsets of the publish id's counter in the path and in the body.
    id_at: usize,
    body_id_at: usize,
    /// Offset of the sealed lead token in the path.
    sealed_at: usize,
    token: String,
    body_len: usize,
    sent: u64,
}

const RAW_ID_DIGITS: usize = 16;
/// The publish id's lead prefix (16 hex digits) of the raw baseline.
const RAW_ID_PREFIX: &str = "0123456789abcdef";

impl RawPublish {
    fn new(port: u16, name: &str, channel: &str, token: &str, state: &[u8]) -> RawPublish {
        let mut path = fcall_path(
            "FCALL",
            "ms_publish",
            &[&format!("stream:{name}"), "streams", &format!("msl:{name}")],
        );
        // A lead token of 16 hex digits, then a 16-digit counter.
        path.push('/');
        path.push_str(RAW_ID_PREFIX);
        let id_at = path.len();
        path.push_str(&"0".repeat(RAW_ID_DIGITS));
        // The seq floor (the library sends the last seq its followers may
        // have seen; 0 asks for nothing beyond the record's seq), and
        // the kind: the whole state, as the library sends a small one;
        // then the channel's tag and the sealed lead token.
        path.push_str("/0/full/-/-/");
        path.push_str(&missionstream::protocol::channel_tag(channel));
        path.push('/');
        let sealed_at = path.len();
        path.push_str(&"0".repeat(32));
        let mut body = format!("r {RAW_ID_PREFIX}").into_bytes();
        let body_id_at = body.len();
        body.extend_from_slice("0".repeat(RAW_ID_DIGITS).as_bytes());
        body.push(b'\n');
        let state_at = body.len();
        body.extend_from_slice(state);
        let body_len = body.len();
        let (req, at) = raw_put(port, &path, &body);
        // "PUT " precedes the path.
        RawPublish {
            req,
            state_at: at + state_at,
            id_at: 4 + id_at,
            body_id_at: at + body_id_at,
            sealed_at: 4 + sealed_at,
            token: token.to_string(),
            body_len,
            sent: 0,
        }
    }

    /// The request with the next publish id (and its seal).
    fn next(&mut self) -> &[u8] {
        self.sent += 1;
        let counter = format!("{:016x}", self.sent);
        let id = format!("{RAW_ID_PREFIX}{counter}");
        let sealed = missionstream::protocol::seal_lead(
            &self.token,
            &id,
            "full",
            "-",
            "-",
            0,
            self.body_len,
        )
        .expect("a lead token of 32 hex digits");
        self.req[self.id_at..self.id_at + RAW_ID_DIGITS].copy_from_slice(counter.as_bytes());
        self.req[self.body_id_at..self.body_id_at + RAW_ID_DIGITS]
            .copy_from_slice(counter.as_bytes());
        self.req[self.sealed_at..self.sealed_at + 32].copy_from_slice(sealed.as_bytes());
        &self.req
    }
}

/// A raw `GET /SUBSCRIBE/<channel>`: a thread decodes the chunked reply
/// and calls `on_msg(t, k)` for each message carrying a bench state
/// (Webdis sends one chunk per message; (t, k) sits in its first bytes).
struct RawSub {
    s: TcpStream,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RawSub {
    fn open(port: u16, channel: &str, on_msg: impl FnMut(u64, u64) + Send + 'static) -> RawSub {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to webdis");
        s.set_nodelay(true).unwrap();
        let req = format!("GET /SUBSCRIBE/{channel} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
        s.write_all(req.as_bytes()).unwrap();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let reader = s.try_clone().unwrap();
        let thread = std::thread::Builder::new()
            .stack_size(256 * KIB)
            .spawn(move || raw_sub_loop(reader, ready_tx, on_msg))
            .unwrap();
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("raw SUBSCRIBE acknowledged");
        RawSub {
            s,
            thread: Some(thread),
        }
    }
}

impl Drop for RawSub {
    fn drop(&mut self) {
        let _ = self.s.shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn raw_sub_loop(
    mut s: TcpStream,
    ready: std::sync::mpsc::Sender<()>,
    mut on_msg: impl FnMut(u64, u64),
) {
    let mut buf = vec![0u8; 256 * KIB];
    let mut pending: Vec<u8> = Vec::new(); // bytes not yet decoded
    let mut headers_done = false;
    let mut chunk_left: usize = 0; // data bytes left in the current chunk
    let mut chunk_head: Vec<u8> = Vec::with_capacity(256); // first bytes of it
    let mut crlf_left: usize = 0;
    let mut first = true;
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        let mut pos = 0;
        if !headers_done {
            match pending.windows(4).position(|w| w == b"\r\n\r\n") {
                Some(i) => {
                    let head = String::from_utf8_lossy(&pending[..i]).to_ascii_lowercase();
                    assert!(
                        head.starts_with("http/1.1 200") && head.contains("chunked"),
                        "raw SUBSCRIBE: {head}"
                    );
                    headers_done = true;
                    pos = i + 4;
                }
                None => continue,
            }
        }
        loop {
            if crlf_left > 0 {
                let take = crlf_left.min(pending.len() - pos);
                pos += take;
                crlf_left -= take;
                if crlf_left > 0 {
                    break;
                }
            }
            if chunk_left > 0 {
                let take = chunk_left.min(pending.len() - pos);
                if chunk_head.len() < 256 {
                    let h = (256 - chunk_head.len()).min(take);
                    chunk_head.extend_from_slice(&pending[pos..pos + h]);
                }
                pos += take;
                chunk_left -= take;
                if chunk_left > 0 {
                    break;
                }
                crlf_left = 2;
                if first {
                    first = false;
                    let _ = ready.send(());
                } else if let Some((t, k)) = parse_tk_escaped(&chunk_head) {
                    on_msg(t, k);
                }
                chunk_head.clear();
                continue;
            }
            // A chunk-size line.
            let Some(i) = pending[pos..].windows(2).position(|w| w == b"\r\n") else {
                break;
            };
            let line = std::str::from_utf8(&pending[pos..pos + i]).unwrap_or("");
            let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
            pos += i + 2;
            if size == 0 {
                return;
            }
            chunk_left = size;
        }
        pending.drain(..pos);
    }
}

// ------------------------------------------------------------- the bench

struct Bench {
    quick: bool,
    servers: common::Servers,
    port: u16,
    rows: Vec<Row>,
    next_stream: AtomicU64,
    /// Raw acknowledged publishes/s of 1 KiB (row 2), for row 5's note.
    raw_rate_1k: f64,
}

struct Row {
    figure: String,
    value: String,
    baseline: String,
    ratio: String,
    target: String,
    verdict: String,
}

impl Bench {
    fn row(
        &mut self,
        figure: &str,
        value: String,
        baseline: String,
        ratio: String,
        target: &str,
        verdict: &str,
    ) {
        println!("  => {figure}: {value} | baseline {baseline} | ratio {ratio} | target {target} {verdict}");
        self.rows.push(Row {
            figure: figure.into(),
            value,
            baseline,
            ratio,
            target: target.into(),
            verdict: verdict.into(),
        });
    }

    fn stream_name(&self, what: &str) -> String {
        format!(
            "bench/{what}/{}.{}",
            std::process::id(),
            self.next_stream.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn seq_of(&self, name: &str) -> u64 {
        self.servers
            .record_field(name, "seq")
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("seq of {name}"))
    }

    /// Waits until Redis is not rewriting its AOF or saving (a fork
    /// there would land in whichever measurement runs at the time).
    fn quiesce(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let info = self.servers.redis_cli(&["INFO", "persistence"]);
            let busy = info.lines().any(|l| {
                (l.starts_with("aof_rewrite_in_progress:")
                    || l.starts_with("rdb_bgsave_in_progress:")
                    || l.starts_with("aof_rewrite_scheduled:"))
                    && !l.trim_end().ends_with(":0")
            });
            if !busy || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    // -------------------------------------------------------------- row 1

    fn row1_publish_call(&mut self) {
        let n = if self.quick { 20_000 } else { 200_000 };
        println!("\n[1] ms_publish call cost (C ABI, 1 KiB state), {n} calls, publisher running");
        let leader = Ffi::new(&self.servers.url);
        let name = cstr(&self.stream_name("call"));
        leader.start(&name);
        let state = make_state(KIB);

        let mut lib = Vec::with_capacity(n);
        let mut base = Vec::with_capacity(n);
        // Interleave the two in blocks so that both see the same machine.
        for _ in 0..10 {
            for _ in 0..n / 10 {
                let t0 = Instant::now();
                let s = leader.publish(&name, black_box(&state));
                lib.push(t0.elapsed().as_nanos() as f64);
                if s != ms_status::MS_OK {
                    check(s, "ms_publish");
                }
            }
            for _ in 0..n / 10 {
                let t0 = Instant::now();
                let v: Vec<u8> = black_box(&state[..]).to_vec();
                black_box(&v);
                drop(v);
                base.push(t0.elapsed().as_nanos() as f64);
            }
        }
        leader.flush(&name);
        let (lib, base) = (sorted(lib), sorted(base));
        let (m, p99) = (percentile(&lib, 50.0), percentile(&lib, 99.0));
        let (bm, bp99) = (percentile(&base, 50.0), percentile(&base, 99.0));
        println!(
            "  ms_publish: median {} p99 {} max {}; memcpy into a fresh Vec: median {} p99 {}",
            fmt_us(m),
            fmt_us(p99),
            fmt_us(*lib.last().unwrap()),
            fmt_us(bm),
            fmt_us(bp99)
        );
        self.row(
            "1. ms_publish call, 1 KiB, median (p99)",
            format!("{} ({})", fmt_us(m), fmt_us(p99)),
            format!("{} ({}) memcpy→Vec", fmt_us(bm), fmt_us(bp99)),
            format!("{:.1}×", m / bm),
            "median ≤ 2 µs",
            if m <= 2000.0 { "meets" } else { "MISSES" },
        );
    }

    // -------------------------------------------------------------- row 2

    fn row2_throughput(&mut self, size: usize) -> f64 {
        // Short alternating slices, so that both sides see the same (noisy,
        // shared) machine.
        let (rounds, slice) = if self.quick { (6, 0.07) } else { (20, 0.15) };
        let secs = rounds as f64 * slice;
        println!(
            "\n[2] acknowledged publishes/s, one stream, {} state ({rounds} alternating slices of {slice} s per side)",
            size_name(size)
        );
        let leader = Ffi::new(&self.servers.url);
        let name_s = self.stream_name("tput");
        let name = cstr(&name_s);
        leader.start(&name);
        let state = make_state(size);
        // The raw loop publishes to a stream of its own (the library's
        // lead token stays the library's).
        let (channel, token) = raw_start(self.port, &format!("{name_s}-raw"));
        let mut req = RawPublish::new(
            self.port,
            &format!("{name_s}-raw"),
            &channel,
            &token,
            &state,
        );
        let mut raw = Raw::connect(self.port);

        self.quiesce();
        // Warm up both paths.
        for _ in 0..20 {
            check(leader.publish(&name, &state), "ms_publish");
            leader.flush(&name);
            let (st, body) = raw.roundtrip(req.next());
            assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
        }
        let (mut lib_n, mut lib_t, mut raw_n, mut raw_t) = (0u64, 0f64, 0u64, 0f64);
        let mut raw_seq = 0;
        for _ in 0..rounds {
            let t0 = Instant::now();
            let end = t0 + Duration::from_secs_f64(slice);
            while Instant::now() < end {
                check(leader.publish(&name, &state), "ms_publish");
                leader.flush(&name);
                lib_n += 1;
            }
            lib_t += t0.elapsed().as_secs_f64();

            let t0 = Instant::now();
            let end = t0 + Duration::from_secs_f64(slice);
            while Instant::now() < end {
                let (st, body) = raw.roundtrip(req.next());
                // {"FCALL":["raw",<seq>,"<id>"]}: a new seq each time, or
                // it stored nothing.
                let seq = body
                    .strip_prefix(b"{\"FCALL\":[\"raw\",")
                    .and_then(|b| b.split(|&c| c == b',').next())
                    .and_then(get_digits);
                match seq {
                    Some(seq) if st == 200 && seq > raw_seq => raw_seq = seq,
                    _ => panic!("raw publish: {st} {}", String::from_utf8_lossy(&body)),
                }
                raw_n += 1;
            }
            raw_t += t0.elapsed().as_secs_f64();
        }
        let lib_rate = lib_n as f64 / lib_t;
        let raw_rate = raw_n as f64 / raw_t;

        // Continuous publishing (no flush in the loop): what the publisher
        // stores per second when it always has a newer state waiting.
        let seq0 = self.seq_of(&name_s);
        let t0 = Instant::now();
        let end = t0 + Duration::from_secs_f64(secs);
        let mut calls = 0u64;
        let mut buf = state.clone();
        while Instant::now() < end {
            put_digits(&mut buf, K_AT, K_LEN, calls);
            check(leader.publish(&name, &buf), "ms_publish");
            calls += 1;
            // A short pause (well under one round trip, so a newer state is
            // always waiting): a spinning caller would take a whole CPU from
            // the servers on a small machine, and a planner does not spin.
            std::thread::sleep(Duration::from_micros(20));
        }
        leader.flush(&name);
        let cont_t = t0.elapsed().as_secs_f64();
        let stored = self.seq_of(&name_s) - seq0;
        let cont_rate = stored as f64 / cont_t;
        println!(
            "  library publish+flush loop: {lib_rate:.0}/s ({:.0} µs each); raw keep-alive loop: {raw_rate:.0}/s ({:.0} µs each); ratio {:.2}",
            1e6 / lib_rate,
            1e6 / raw_rate,
            lib_rate / raw_rate
        );
        println!(
            "  continuous ms_publish ({calls} calls, latest wins): {stored} stored, {cont_rate:.0} stored/s ({:.2} × raw)",
            cont_rate / raw_rate
        );
        let ratio = lib_rate / raw_rate;
        let fig = if size == KIB {
            "2. acked publishes/s, 1 KiB".to_string()
        } else {
            format!("7. acked publishes/s, {}", size_name(size))
        };
        self.row(
            &fig,
            format!("{lib_rate:.0}/s"),
            format!("{raw_rate:.0}/s raw HTTP"),
            format!("{ratio:.2}"),
            "≥ 0.85 × raw",
            if ratio >= 0.85 { "meets" } else { "MISSES" },
        );
        self.row(
            &format!("   stored/s, continuous publish, {}", size_name(size)),
            format!("{cont_rate:.0}/s"),
            format!("{raw_rate:.0}/s raw HTTP"),
            format!("{:.2}", cont_rate / raw_rate),
            "(info)",
            "",
        );
        raw_rate
    }

    // -------------------------------------------------------------- row 3

    fn row3_latency(&mut self, size: usize, rate: f64) -> f64 {
        let secs = if self.quick { 1.5 } else { 6.0 };
        let count = (rate * secs) as u64;
        println!(
            "\n[3] publish → follower callback latency, {} state, {rate:.0} states/s, {count} states per side",
            size_name(size)
        );
        let period = Duration::from_secs_f64(1.0 / rate);
        let warm = (count / 20).max(5);

        // --- library: ms_publish on a leader client, callback of a follower client.
        struct Lat {
            samples: Mutex<Vec<(u64, u64)>>, // (k, latency ns)
        }
        unsafe extern "C" fn on_state(ev: *const ms_event, ud: *mut c_void) {
            let now = now_ns();
            // SAFETY: ud is the &Lat given to ms_set_callback.
            if let Some((t, k)) = event_state(ev).and_then(parse_tk) {
                let ctx = &*(ud as *const Lat);
                ctx.samples.lock().unwrap().push((k, now.saturating_sub(t)));
            }
        }
        let lat = Lat {
            samples: Mutex::new(Vec::new()),
        };
        let leader = Ffi::new(&self.servers.url);
        let follower = Ffi::new(&self.servers.url);
        let name_s = self.stream_name("lat");
        let name = cstr(&name_s);
        leader.start(&name);
        follower.set_callback(on_state, &lat);
        check(follower.connect(&name), "ms_connect");
        let mut state = make_state(size);
        let mut call_ns = Vec::with_capacity(count as usize);

        // --- raw: PUT on one socket, chunked SUBSCRIBE read on another.
        let raw_name = self.stream_name("latraw");
        let (channel, token) = raw_start(self.port, &raw_name);
        let raw_samples: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
        let rs = raw_samples.clone();
        let sub = RawSub::open(self.port, &channel, move |t, k| {
            let now = now_ns();
            rs.lock().unwrap().push((k, now.saturating_sub(t)));
        });
        let mut req = RawPublish::new(self.port, &raw_name, &channel, &token, &make_state(size));
        let at = req.state_at;
        let mut conn = Raw::connect(self.port);

        // Alternate blocks of library and raw states on one steady clock, so
        // that both see the same machine (Redis' AOF fsync, neighbours).
        self.quiesce();
        let block = (count / 10).max(1);
        let mut next = Instant::now();
        let (mut kl, mut kr) = (0u64, 0u64);
        while kl < count || kr < count {
            let lib_turn = kr >= count || (kl < count && (kl / block) <= (kr / block));
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
            next += period;
            if lib_turn {
                put_digits(&mut state, K_AT, K_LEN, kl);
                let t0 = Instant::now();
                put_digits(&mut state, T_AT, T_LEN, now_ns());
                let s = leader.publish(&name, &state);
                call_ns.push(t0.elapsed().as_nanos() as f64);
                check(s, "ms_publish");
                kl += 1;
            } else {
                put_digits(&mut req.req, at + K_AT, K_LEN, kr);
                put_digits(&mut req.req, at + T_AT, T_LEN, now_ns());
                let (st, _) = conn.roundtrip(req.next());
                assert_eq!(st, 200);
                kr += 1;
            }
        }
        leader.flush(&name);
        wait_for(Duration::from_secs(10), || {
            lat.samples.lock().unwrap().last().map(|s| s.0) == Some(count - 1)
        });
        wait_for(Duration::from_secs(10), || {
            raw_samples.lock().unwrap().last().map(|s| s.0) == Some(count - 1)
        });
        drop(follower); // ms_client_free: the callback is not called again
        drop(leader);
        drop(sub);
        let lib_samples = std::mem::take(&mut *lat.samples.lock().unwrap());
        let raw_samples = std::mem::take(&mut *raw_samples.lock().unwrap());

        let stats = |s: &[(u64, u64)]| {
            let v = sorted(
                s.iter()
                    .filter(|x| x.0 >= warm)
                    .map(|x| x.1 as f64)
                    .collect(),
            );
            (
                percentile(&v, 50.0),
                percentile(&v, 99.0),
                *v.last().unwrap_or(&f64::NAN),
            )
        };
        let (l50, l99, lmax) = stats(&lib_samples);
        let (r50, r99, rmax) = stats(&raw_samples);
        let calls = sorted(call_ns);
        println!(
            "  library: p50 {} p99 {} max {} ({} of {count} states delivered; a state not delivered was superseded)",
            fmt_us(l50),
            fmt_us(l99),
            fmt_us(lmax),
            lib_samples.len()
        );
        println!(
            "  raw Webdis: p50 {} p99 {} max {} ({} of {count} delivered)",
            fmt_us(r50),
            fmt_us(r99),
            fmt_us(rmax),
            raw_samples.len()
        );
        println!(
            "  ms_publish call while paced (publisher idle between states): median {} p99 {}",
            fmt_us(percentile(&calls, 50.0)),
            fmt_us(percentile(&calls, 99.0))
        );
        let ratio = l50 / r50;
        let fig = if size == KIB {
            format!("3. publish→callback p50 (p99), 1 KiB, {rate:.0}/s")
        } else {
            format!(
                "7. publish→callback p50 (p99), {}, {rate:.0}/s",
                size_name(size)
            )
        };
        self.row(
            &fig,
            format!("{} ({})", fmt_us(l50), fmt_us(l99)),
            format!("{} ({}) raw", fmt_us(r50), fmt_us(r99)),
            format!("{ratio:.2}"),
            "p50 ≤ 1.25 × raw",
            if ratio <= 1.25 { "meets" } else { "MISSES" },
        );
        if size == KIB {
            self.row(
                "1b. ms_publish call, paced 200/s, median (p99)",
                format!(
                    "{} ({})",
                    fmt_us(percentile(&calls, 50.0)),
                    fmt_us(percentile(&calls, 99.0))
                ),
                "".into(),
                "".into(),
                // Not row 1 proper (the call itself, above): with the
                // publisher asleep the call includes waking it, a syscall.
                "(info) includes waking the idle publisher",
                "",
            );
        }
        l50
    }

    // ---------------------------------------------------------- rows 4, 5

    fn row45_fanout(&mut self) {
        let rate = 50.0;
        let secs = if self.quick { 2.0 } else { 10.0 };
        let count = (rate * secs) as usize;
        let period = Duration::from_secs_f64(1.0 / rate);
        println!(
            "\n[4] fan-out: 1 leader, {FOLLOWERS} followers (one client each), 1 KiB, {rate:.0} states/s, {count} states per side"
        );

        struct Fan {
            recv_max: Vec<AtomicU64>,
            recv_count: Vec<AtomicU32>,
            target: AtomicU64,
        }
        struct FanFollower {
            fan: Arc<Fan>,
            last_k: AtomicU64,
            received: AtomicU64,
            done_at: AtomicU64,
        }
        impl FanFollower {
            fn on(&self, t: u64, k: u64) {
                let now = now_ns();
                let _ = t;
                self.received.fetch_add(1, Ordering::Relaxed);
                self.last_k.store(k, Ordering::Relaxed);
                if let Some(m) = self.fan.recv_max.get(k as usize) {
                    m.fetch_max(now, Ordering::Relaxed);
                    self.fan.recv_count[k as usize].fetch_add(1, Ordering::Relaxed);
                }
                if k == self.fan.target.load(Ordering::Relaxed) {
                    self.done_at.store(now, Ordering::Relaxed);
                }
            }
        }
        unsafe extern "C" fn on_fan(ev: *const ms_event, ud: *mut c_void) {
            // SAFETY: ud is the &FanFollower given to ms_set_callback.
            if let Some((t, k)) = event_state(ev).and_then(parse_tk) {
                (*(ud as *const FanFollower)).on(t, k);
            }
        }
        let new_fan = || {
            Arc::new(Fan {
                recv_max: (0..count).map(|_| AtomicU64::new(0)).collect(),
                recv_count: (0..count).map(|_| AtomicU32::new(0)).collect(),
                target: AtomicU64::new(u64::MAX),
            })
        };
        let new_followers = |fan: &Arc<Fan>| -> Vec<Arc<FanFollower>> {
            (0..FOLLOWERS)
                .map(|_| {
                    Arc::new(FanFollower {
                        fan: fan.clone(),
                        last_k: AtomicU64::new(u64::MAX),
                        received: AtomicU64::new(0),
                        done_at: AtomicU64::new(0),
                    })
                })
                .collect()
        };
        let summarize = |fan: &Fan, t_pub: &[u64]| -> (f64, f64, usize) {
            let mut v = Vec::new();
            // The first 5 % are a warm-up.
            for (k, &tp) in t_pub.iter().enumerate().skip(count / 20) {
                if fan.recv_count[k].load(Ordering::Relaxed) as usize == FOLLOWERS {
                    v.push(fan.recv_max[k].load(Ordering::Relaxed).saturating_sub(tp) as f64);
                }
            }
            let all = (0..count)
                .filter(|&k| fan.recv_count[k].load(Ordering::Relaxed) as usize == FOLLOWERS)
                .count();
            let v = sorted(v);
            (percentile(&v, 50.0), percentile(&v, 99.0), all)
        };

        self.quiesce();
        // --- raw: 100 raw subscribers, raw PUT publisher.
        let raw_name = self.stream_name("fanraw");
        let (channel, token) = raw_start(self.port, &raw_name);
        let raw_fan = new_fan();
        let raw_followers = new_followers(&raw_fan);
        let subs: Vec<RawSub> = raw_followers
            .iter()
            .map(|f| {
                let f = f.clone();
                RawSub::open(self.port, &channel, move |t, k| f.on(t, k))
            })
            .collect();
        let mut req = RawPublish::new(self.port, &raw_name, &channel, &token, &make_state(KIB));
        let at = req.state_at;
        let mut conn = Raw::connect(self.port);
        let mut raw_t_pub = vec![0u64; count];
        let mut next = Instant::now();
        for (k, tp) in raw_t_pub.iter_mut().enumerate() {
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
            next += period;
            put_digits(&mut req.req, at + K_AT, K_LEN, k as u64);
            *tp = now_ns();
            put_digits(&mut req.req, at + T_AT, T_LEN, *tp);
            assert_eq!(conn.roundtrip(req.next()).0, 200);
        }
        wait_for(Duration::from_secs(10), || {
            raw_followers
                .iter()
                .all(|f| f.last_k.load(Ordering::Relaxed) == count as u64 - 1)
        });
        drop(subs);
        let (r50, r99, rall) = summarize(&raw_fan, &raw_t_pub);
        println!(
            "  raw Webdis, last of {FOLLOWERS} subscribers: p50 {} p99 {} ({rall} of {count} states reached all)",
            fmt_us(r50),
            fmt_us(r99)
        );

        // --- library: 100 follower clients, one leader client.
        let name_s = self.stream_name("fan");
        let name = cstr(&name_s);
        let leader = Ffi::new(&self.servers.url);
        leader.start(&name);
        let fan = new_fan();
        let followers = new_followers(&fan);
        let t0 = Instant::now();
        let clients: Vec<Ffi> = followers
            .iter()
            .map(|f| {
                let c = Ffi::new(&self.servers.url);
                c.set_callback(on_fan, &**f);
                check(c.connect(&name), "ms_connect");
                c
            })
            .collect();
        println!(
            "  {FOLLOWERS} clients connected in {:.0} ms; process: {} threads, {} fds",
            t0.elapsed().as_secs_f64() * 1e3,
            count_dir("/proc/self/task"),
            count_dir("/proc/self/fd")
        );
        let mut state = make_state(KIB);
        let mut t_pub = vec![0u64; count];
        let mut next = Instant::now();
        for (k, tp) in t_pub.iter_mut().enumerate() {
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
            next += period;
            put_digits(&mut state, K_AT, K_LEN, k as u64);
            *tp = now_ns();
            put_digits(&mut state, T_AT, T_LEN, *tp);
            check(leader.publish(&name, &state), "ms_publish");
        }
        leader.flush(&name);
        let last = count as u64 - 1;
        wait_for(Duration::from_secs(10), || {
            followers
                .iter()
                .all(|f| f.last_k.load(Ordering::Relaxed) == last)
        });
        let (l50, l99, lall) = summarize(&fan, &t_pub);
        let got: Vec<u64> = followers
            .iter()
            .map(|f| f.received.load(Ordering::Relaxed))
            .collect();
        let holding = followers
            .iter()
            .filter(|f| f.last_k.load(Ordering::Relaxed) == last)
            .count();
        println!(
            "  library, last of {FOLLOWERS} followers: p50 {} p99 {} ({lall} of {count} states reached all; per follower {}..{} states; {holding}/{FOLLOWERS} hold the last state)",
            fmt_us(l50),
            fmt_us(l99),
            got.iter().min().unwrap(),
            got.iter().max().unwrap()
        );
        self.row(
            "4. fan-out 100, last follower p50 (p99), 50/s",
            format!("{} ({})", fmt_us(l50), fmt_us(l99)),
            format!("{} ({}) raw ×100", fmt_us(r50), fmt_us(r99)),
            format!("{:.2} (p99 {:.2})", l50 / r50, l99 / r99),
            "p99 reported; no starvation",
            if holding == FOLLOWERS {
                "all 100 hold the last state"
            } else {
                "STARVATION"
            },
        );

        // --- row 5: a burst of 100,000 states to the same 100 followers.
        println!("\n[5] coalescing: a burst of {BURST} states (1 KiB) to {FOLLOWERS} followers");
        let seq0 = self.seq_of(&name_s);
        let first_k = 1_000_000u64;
        let target = first_k + BURST - 1;
        fan.target.store(target, Ordering::Relaxed);
        let t_start = now_ns();
        for i in 0..BURST {
            put_digits(&mut state, K_AT, K_LEN, first_k + i);
            put_digits(&mut state, T_AT, T_LEN, now_ns());
            check(leader.publish(&name, &state), "ms_publish");
        }
        let t_published = now_ns();
        let received0: u64 = got.iter().sum();
        wait_for(Duration::from_secs(60), || {
            followers
                .iter()
                .all(|f| f.last_k.load(Ordering::Relaxed) == target)
        });
        let t_all = followers
            .iter()
            .map(|f| f.done_at.load(Ordering::Relaxed))
            .max()
            .unwrap();
        let stored = self.seq_of(&name_s) - seq0;
        let delivered: u64 = followers
            .iter()
            .map(|f| f.received.load(Ordering::Relaxed))
            .sum::<u64>()
            - received0;
        let holding = followers
            .iter()
            .filter(|f| f.last_k.load(Ordering::Relaxed) == target)
            .count();
        let total = (t_all - t_start) as f64;
        let after = t_all.saturating_sub(t_published) as f64;
        println!(
            "  {BURST} ms_publish calls took {}; all {holding}/{FOLLOWERS} followers held the last state {} after the first call ({} after the last); {stored} states stored, {:.1} delivered per follower",
            fmt_us((t_published - t_start) as f64),
            fmt_us(total),
            fmt_us(after),
            delivered as f64 / FOLLOWERS as f64
        );
        self.row(
            "5. burst of 100,000 → all 100 hold the last",
            fmt_us(total),
            format!("{} raw fan-out p50", fmt_us(r50)),
            format!("{:.1}", total / r50),
            "(info) bounded",
            if holding == FOLLOWERS {
                "all converge"
            } else {
                "NOT CONVERGED"
            },
        );
        println!(
            "    ({stored} stored instead of {BURST}; sending every state one by one would take ~{:.1} s at the raw rate)",
            BURST as f64 / self.raw_rate_1k.max(1.0)
        );

        let t0 = Instant::now();
        drop(clients);
        drop(leader);
        println!(
            "  {FOLLOWERS} follower clients freed in {:.0} ms",
            t0.elapsed().as_secs_f64() * 1e3
        );
    }

    // -------------------------------------------------------------- row 6

    fn row6_cycles(&mut self) {
        let cycles = if self.quick { 500 } else { 10_000 };
        let warm = if self.quick { 50 } else { 200 };
        println!("\n[6] {cycles} ms_connect/ms_disconnect cycles on one client (after {warm} warm-up cycles)");
        let leader = Ffi::new(&self.servers.url);
        let name = cstr(&self.stream_name("cycle"));
        leader.start(&name);
        check(leader.publish(&name, &make_state(KIB)), "ms_publish");
        leader.flush(&name);
        let follower = Ffi::new(&self.servers.url);
        struct Nothing;
        unsafe extern "C" fn ignore(_: *const ms_event, _: *mut c_void) {}
        follower.set_callback(ignore, &Nothing);
        let cycle = |f: &Ffi| {
            check(f.connect(&name), "ms_connect");
            check(f.disconnect(&name), "ms_disconnect");
        };
        for _ in 0..warm {
            cycle(&follower);
        }
        std::thread::sleep(Duration::from_millis(1100));
        let redis_clients = || {
            self.servers
                .redis_cli(&["INFO", "clients"])
                .lines()
                .find_map(|l| l.strip_prefix("connected_clients:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let (rss0, thr0, fd0, rc0) = (
            rss_kib(),
            count_dir("/proc/self/task"),
            count_dir("/proc/self/fd"),
            redis_clients(),
        );
        let t0 = Instant::now();
        let mut worst = 0f64;
        for _ in 0..cycles {
            let c0 = Instant::now();
            cycle(&follower);
            worst = worst.max(c0.elapsed().as_secs_f64());
        }
        let took = t0.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_millis(1100));
        let (rss1, thr1, fd1, rc1) = (
            rss_kib(),
            count_dir("/proc/self/task"),
            count_dir("/proc/self/fd"),
            redis_clients(),
        );
        println!(
            "  {:.2} ms per cycle (worst {:.1} ms); RSS {rss0} → {rss1} KiB ({:+} KiB); threads {thr0} → {thr1}; fds {fd0} → {fd1}; Redis clients {rc0} → {rc1}",
            took * 1e3 / cycles as f64,
            worst * 1e3,
            rss1 as i64 - rss0 as i64
        );
        let growth = rss1 as i64 - rss0 as i64;
        let ok = growth <= 2048 && thr1 <= thr0 && fd1 <= fd0 && rc1 <= rc0;
        self.row(
            &format!("6. {cycles} connect/disconnect: RSS, threads, fds"),
            format!("{rss1} KiB, {thr1} thr, {fd1} fds"),
            format!("{rss0} KiB, {thr0} thr, {fd0} fds before"),
            format!("{:+} KiB", growth),
            "≤ 2 MiB; none left",
            if ok { "meets" } else { "MISSES" },
        );
        drop(follower);
        drop(leader);
    }
}

fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "the benchmark broke: a condition was not met within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "?".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let version = |cmd: &str, args: &[&str]| {
        std::process::Command::new(cmd)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|_| "?".into())
    };
    format!(
        "machine: nproc {nproc}, CPU {cpu}, kernel {kernel}\nservers: {}; webdis {}",
        version("redis-server", &["--version"]),
        match std::env::var("MS_WEBDIS") {
            Ok(w) if !w.is_empty() => format!("{w} (MS_WEBDIS)"),
            _ => version("dpkg-query", &["-W", "-f", "${Version}", "webdis"]),
        }
    )
}

impl Bench {
    // -------------------------------------------------------------- row 8

    /// Wrong passwords one client gets evaluated per second through
    /// Webdis, as fast as one keep-alive connection goes. Baseline: the
    /// same requests for a stream that does not exist (MSNOTFOUND, never
    /// throttled), i.e. how many requests the server answers, which is
    /// how many guesses it evaluated before throttling.
    fn row8_guessing(&mut self) {
        let secs = if self.quick { 1.0 } else { 3.0 };
        println!("\n[8] wrong passwords per second, one client, one keep-alive connection, {secs} s per side");
        let name = self.stream_name("guess");
        let leader = missionstream::Client::new(&self.servers.url).unwrap();
        leader.set_deltas(false);
        leader.start(&name, PASSWORD, CODE).expect("ms_start");
        let guess = |key: &str| -> (u64, u64, u64) {
            let path = fcall_path("FCALL", "ms_connect", &[key]);
            let (req, _) = raw_put(self.port, &path, &frame_body(&[&[b'0'; 64]]));
            let mut raw = Raw::connect(self.port);
            let (mut evaluated, mut throttled, mut absent) = (0, 0, 0);
            let end = Instant::now() + Duration::from_secs_f64(secs);
            while Instant::now() < end {
                let (st, body) = raw.roundtrip(&req);
                let text = String::from_utf8_lossy(&body);
                match st {
                    200 if text.contains("MSBADPASSWORD") => evaluated += 1,
                    200 if text.contains("MSTHROTTLED") => throttled += 1,
                    200 if text.contains("MSNOTFOUND") => absent += 1,
                    _ => panic!("guess: {st} {text}"),
                }
            }
            (evaluated, throttled, absent)
        };
        let (_, _, answered) = guess(&format!("stream:{name}-absent"));
        let (evaluated, throttled, _) = guess(&format!("stream:{name}"));
        let before = answered as f64 / secs;
        let after = evaluated as f64 / secs;
        println!(
            "  unthrottled (no such stream): {answered} requests answered; throttled stream: {evaluated} guesses evaluated, {throttled} refused (MSTHROTTLED)"
        );
        self.row(
            "8. wrong passwords evaluated/s, one client",
            format!("{after:.1}/s"),
            format!("{before:.0}/s answered unthrottled"),
            format!("{:.4}", after / before.max(1.0)),
            "(info) guessing throttled",
            // A burst of 5 per lock, the locks growing to 4 s: a few a
            // second in the first seconds, about one later.
            if after * 100.0 <= before {
                "throttled (≤ 1 % of unthrottled)"
            } else {
                "NOT THROTTLED"
            },
        );
        let _ = leader.stop(&name);
    }
    // ------------------------------------------------------------- row 12

    /// Medians, in ms, of `n` rounds of: `ms_start` by a client set to
    /// `iterations` (two keys derived: nothing to cache, every start has a
    /// new salt), `ms_connect` by a new client (one key derived), and
    /// `ms_connect` again by that client after `ms_disconnect` (its key
    /// cached: the round trips alone).
    fn row12_measure(&self, n: usize, iterations: u32) -> (f64, f64, f64) {
        let (mut starts, mut connects, mut cached) = (Vec::new(), Vec::new(), Vec::new());
        let leader = missionstream::Client::new(&self.servers.url).unwrap();
        leader.set_deltas(false);
        leader.set_kdf_iterations(iterations).unwrap();
        let mut names = Vec::new();
        for _ in 0..n {
            let name = self.stream_name("latency");
            let t = Instant::now();
            leader.start(&name, PASSWORD, CODE).expect("ms_start");
            starts.push(t.elapsed().as_secs_f64() * 1e3);
            let follower = missionstream::Client::new(&self.servers.url).unwrap();
            follower.set_deltas(false);
            let t = Instant::now();
            follower.connect(&name, PASSWORD).expect("ms_connect");
            connects.push(t.elapsed().as_secs_f64() * 1e3);
            follower.disconnect(&name).expect("ms_disconnect");
            // Let the old subscription's teardown pass (a connect right
            // after it waits for Webdis to settle: ~8 ms here, not KDF).
            std::thread::sleep(Duration::from_millis(50));
            let t = Instant::now();
            follower.connect(&name, PASSWORD).expect("ms_connect");
            cached.push(t.elapsed().as_secs_f64() * 1e3);
            drop(follower);
            names.push(name);
        }
        for name in names {
            let _ = leader.stop(&name);
        }
        let median = |v: Vec<f64>| percentile(&sorted(v), 50.0);
        (median(starts), median(connects), median(cached))
    }

    /// Start and connect latency with the client-side KDF (PBKDF2-HMAC-
    /// SHA256): at the default 600,000 iterations beside the functions'
    /// minimum (100,000), and a first connect beside a connect whose key
    /// is cached (no KDF: the round trips alone).
    fn row12_latency(&mut self) {
        use missionstream::kdf;
        let n = if self.quick { 5 } else { 20 };
        println!("\n[9] start and connect latency, {n} of each, median");
        let params = kdf::Params {
            salt: "00112233445566778899aabbccddeeff".into(),
            iterations: kdf::DEFAULT_ITERATIONS,
        };
        let t = Instant::now();
        let _ = kdf::derive(&params, kdf::Secret::Password, PASSWORD);
        let kdf_ms = t.elapsed().as_secs_f64() * 1e3;
        let (start, connect, cached) = self.row12_measure(n, kdf::DEFAULT_ITERATIONS);
        let (start_min, connect_min, _) = self.row12_measure(n, kdf::MIN_ITERATIONS);
        println!(
            "  one PBKDF2 derivation, {} iterations: {kdf_ms:.1} ms",
            kdf::DEFAULT_ITERATIONS
        );
        println!(
            "  {} iterations: start {start:.1} ms, connect {connect:.1} ms, connect with its key cached {cached:.2} ms",
            kdf::DEFAULT_ITERATIONS
        );
        println!(
            "  {} iterations: start {start_min:.1} ms, connect {connect_min:.1} ms",
            kdf::MIN_ITERATIONS
        );
        self.row(
            "12a. ms_start latency, 600,000 iterations",
            format!("{start:.1} ms"),
            format!("{start_min:.1} ms at 100,000"),
            format!("{:.2}", start / start_min.max(0.001)),
            "(info) KDF cost on the client",
            "two derivations a start",
        );
        self.row(
            "12b. ms_connect latency, 600,000 iterations",
            format!("{connect:.1} ms"),
            format!("{cached:.2} ms key cached"),
            format!("{:.1}", connect / cached.max(0.001)),
            "(info) KDF cost on the client",
            "one derivation a first connect",
        );
    }
}

/// Raises this process' soft open-file limit to its hard limit.
fn raise_open_files() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    println!("open-file limit {}", limit.rlim_cur);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let rows: Vec<u32> = args
        .iter()
        .position(|a| a == "--rows")
        .and_then(|i| args.get(i + 1))
        .map(|r| r.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        // Rows 9-11 start the replicated topology (several seconds each
        // time): full mode only, unless asked for by number.
        .unwrap_or_else(|| {
            if quick {
                vec![1, 2, 3, 4, 5, 6, 8, 12, 13, 14]
            } else {
                (1..=14).collect()
            }
        });
    let want = |r: u32| rows.contains(&r);
    // Rows 1-12 compare the library with raw requests carrying the same
    // full states (or measure what does not depend on them): their
    // clients send every state in full (`set_deltas(false)` on each).
    // Row 13 measures deltas.
    now_ns();
    let started = Instant::now();
    println!(
        "missionstream {} benchmark ({} mode)",
        env!("CARGO_PKG_VERSION"),
        if quick { "quick" } else { "full" }
    );
    println!("{}", machine());
    // Row 14 holds thousands of connections in this process, in Webdis and
    // in Redis: the open-file limit raised to the hard limit before the
    // servers start (they inherit it; Redis' maxclients follows it).
    raise_open_files();
    let servers = common::Servers::start();
    println!(
        "redis-server on 127.0.0.1:{}, webdis on {}",
        servers.redis_port, servers.url
    );
    let port = servers.webdis_port;
    let mut b = Bench {
        quick,
        servers,
        port,
        rows: Vec::new(),
        next_stream: AtomicU64::new(0),
        raw_rate_1k: 0.0,
    };
    if want(1) {
        b.row1_publish_call();
    }
    let sizes: &[usize] = if want(7) {
        &[KIB, 64 * KIB, MIB]
    } else {
        &[KIB]
    };
    if want(2) {
        for &size in sizes {
            let raw = b.row2_throughput(size);
            if size == KIB {
                b.raw_rate_1k = raw;
            }
        }
    }
    if want(3) {
        for &size in sizes {
            // 200 states/s of 1 MiB is more than Webdis and Redis store
            // here (row 7 of row 2): both sides would only queue or skip.
            b.row3_latency(size, if size >= MIB { 20.0 } else { 200.0 });
        }
    }
    if want(4) || want(5) {
        b.row45_fanout();
    }
    if want(6) {
        b.row6_cycles();
    }
    if want(8) {
        b.row8_guessing();
    }
    if want(9) {
        b.row9_failover();
    }
    if want(10) || want(11) {
        b.rows_ha_shared(want(10), want(11));
    }
    if want(12) {
        b.row12_latency();
    }
    if want(13) {
        b.row13_deltas();
    }
    if want(14) {
        b.row14_many();
    }

    println!(
        "\n=== summary ({} mode, {:.0} s) ===",
        if quick { "quick" } else { "full" },
        started.elapsed().as_secs_f64()
    );
    let widths = [
        b.rows
            .iter()
            .map(|r| r.figure.chars().count())
            .max()
            .unwrap_or(0),
        b.rows
            .iter()
            .map(|r| r.value.chars().count())
            .max()
            .unwrap_or(0),
        b.rows
            .iter()
            .map(|r| r.baseline.chars().count())
            .max()
            .unwrap_or(0),
        b.rows
            .iter()
            .map(|r| r.ratio.chars().count())
            .max()
            .unwrap_or(0),
        b.rows
            .iter()
            .map(|r| r.target.chars().count())
            .max()
            .unwrap_or(0),
    ];
    let pad = |s: &str, w: usize| format!("{s}{}", " ".repeat(w.saturating_sub(s.chars().count())));
    println!(
        "| {} | {} | {} | {} | {} | verdict |",
        pad("figure", widths[0]),
        pad("measured", widths[1]),
        pad("baseline (same run)", widths[2]),
        pad("ratio", widths[3]),
        pad("target", widths[4])
    );
    println!(
        "|{}|{}|{}|{}|{}|---|",
        "-".repeat(widths[0] + 2),
        "-".repeat(widths[1] + 2),
        "-".repeat(widths[2].max(19) + 2),
        "-".repeat(widths[3].max(5) + 2),
        "-".repeat(widths[4].max(6) + 2)
    );
    for r in &b.rows {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            pad(&r.figure, widths[0]),
            pad(&r.value, widths[1]),
            pad(&r.baseline, widths[2].max(19)),
            pad(&r.ratio, widths[3].max(5)),
            pad(&r.target, widths[4].max(6)),
            r.verdict
        );
    }
    drop(b);
}
