//! Availability: no request keeps Redis busy for long, whatever its size
//! or the number of streams.

mod common;

use common::raw::{error_of, fcall_path, Raw};
use common::*;
use missionstream::protocol;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(20);

/// An ms_publish of this protocol to stream `name`: its keys (record, index,
/// log), its arguments (publish id, floor 0, kind and base, the channel's
/// tag, the lead token sealed for it) and its body (`r <id>\n` and the
/// state in full, the delta alone).
struct Publish {
    keys: Vec<Vec<u8>>,
    args: Vec<String>,
    body: Vec<u8>,
}

impl Publish {
    fn new(
        name: &str,
        token: &str,
        channel: &str,
        id: &str,
        base: Option<(u64, &str)>,
        data: &[u8],
    ) -> Publish {
        let (kind, base_seq, base_id) = match base {
            Some((seq, id)) => ("delta", seq.to_string(), id.to_string()),
            None => ("full", "-".to_string(), "-".to_string()),
        };
        let mut body = Vec::with_capacity(data.len() + 35);
        if base.is_none() {
            body.extend_from_slice(format!("r {id}\n").as_bytes());
        }
        body.extend_from_slice(data);
        let sealed = protocol::seal_lead(token, id, kind, &base_seq, &base_id, 0, body.len())
            .expect("a lead token of 32 hex digits");
        Publish {
            keys: vec![
                format!("stream:{name}").into_bytes(),
                b"streams".to_vec(),
                format!("msl:{name}").into_bytes(),
            ],
            args: vec![
                id.to_string(),
                "0".into(),
                kind.into(),
                base_seq,
                base_id,
                protocol::channel_tag(channel),
                sealed,
            ],
            body,
        }
    }

    fn keys(&self) -> Vec<&[u8]> {
        self.keys.iter().map(Vec::as_slice).collect()
    }

    fn args(&self) -> Vec<&str> {
        self.args.iter().map(String::as_str).collect()
    }

    /// Sends it on a fresh connection; the reply's JSON value.
    fn call(&self, port: u16, nonce: &str) -> serde_json::Value {
        let mut raw = Raw::connect(port);
        raw.put(
            &fcall_path("ms_publish", &self.keys(), nonce, &self.args()),
            &self.body,
        );
        let (status, text) = raw.reply(Duration::from_secs(10)).expect("a reply");
        assert_eq!(status, 200, "ms_publish: HTTP {status} {text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v.as_object().unwrap().values().next().unwrap().clone()
    }
}

/// Redis' own time per FCALL since the last CONFIG RESETSTAT, in µs, and
/// the number of calls (INFO commandstats).
fn fcall_stats(s: &Servers) -> (f64, u64) {
    let info = s.redis_cli(&["INFO", "commandstats"]);
    let line = info
        .lines()
        .find(|l| l.starts_with("cmdstat_fcall:"))
        .unwrap_or_else(|| panic!("no FCALL in {info}"));
    let field = |k: &str| -> f64 {
        line.split([':', ','])
            .find_map(|f| f.strip_prefix(&format!("{k}=")))
            .unwrap()
            .parse()
            .unwrap()
    };
    (field("usec_per_call"), field("calls") as u64)
}

/// `list` at 50,000 streams: the functions look at one page of the index
/// per call (about 200 names), so each call costs Redis about the same as
/// at a few streams (≤ 10 ms, measured as Redis' own time per call), and
/// the library pages through all of them: every name once.
#[test]
fn list_at_50000_streams_costs_redis_little_per_call() {
    let s = Servers::start();
    let c = s.client();
    c.start("real", "pw", "code").unwrap();
    // 50,000 records as the functions write them, made at once in Redis.
    let made = s.redis_cli(&[
        "EVAL",
        "for i = 1, 50000 do \
           local name = 'bulk-' .. i \
           redis.call('HSET', 'stream:' .. name, 'name', name, 'seq', 1, 'updated_ms', 1, \
             'channel', redis.sha1hex(name)) \
           redis.call('HSET', 'streams', name, 1) \
         end return 1",
        "0",
    ]);
    assert_eq!(made.trim(), "1");
    s.redis_cli(&["CONFIG", "RESETSTAT"]);
    let listed = c.list().unwrap();
    assert_eq!(listed.len(), 50_001);
    let mut names: Vec<&str> = listed.iter().map(|i| i.name.as_str()).collect();
    names.dedup();
    assert_eq!(names.len(), 50_001, "each name once");
    let (usec, calls) = fcall_stats(&s);
    assert!(calls >= 100, "paged: {calls} calls");
    assert!(
        usec <= 10_000.0,
        "Redis spent {usec} µs per ms_list call on average"
    );
}

/// Another client's PING to Redis, every 5 ms while it runs: the latencies
/// in ms, sorted, when stopped.
struct PingWatch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<f64>>>,
}

impl PingWatch {
    fn start(port: u16) -> PingWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            c.set_nodelay(true).unwrap();
            let mut out = Vec::new();
            let mut buf = [0u8; 64];
            while !flag.load(Ordering::SeqCst) {
                let t0 = Instant::now();
                c.write_all(b"PING\r\n").unwrap();
                let mut got = 0;
                while got < 7 {
                    got += c.read(&mut buf[got..]).unwrap();
                }
                out.push(t0.elapsed().as_secs_f64() * 1000.0);
                std::thread::sleep(Duration::from_millis(5));
            }
            out.sort_by(f64::total_cmp);
            out
        });
        PingWatch {
            stop,
            thread: Some(thread),
        }
    }

    /// (p99, max) in ms.
    fn stop(mut self) -> (f64, f64) {
        self.stop.store(true, Ordering::SeqCst);
        let v = self.thread.take().unwrap().join().unwrap();
        (v[(v.len() * 99 / 100).min(v.len() - 1)], *v.last().unwrap())
    }
}

/// The longest a single call kept Redis busy since the last LATENCY RESET,
/// in ms (the deploy configuration's latency monitor records calls of 10
/// ms or more; 0 when none).
fn longest_call_ms(s: &Servers) -> u64 {
    let out = s.redis_cli(&["LATENCY", "LATEST"]);
    let lines: Vec<&str> = out.lines().collect();
    // redis-cli prints each event as: name, time, latest, max.
    lines
        .iter()
        .position(|l| *l == "command")
        .and_then(|i| lines.get(i + 3))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A rightful leader publishing and flushing a small state every 50 ms
/// while an attack goes on: how many flushes went through, failed, and the
/// slowest. Its last state is `{"last":1}`.
struct Steady {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<(u64, u64, Duration)>>,
}

impl Steady {
    fn start(leader: &Arc<missionstream::Client>, name: &'static str) -> Steady {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let leader = leader.clone();
        let thread = std::thread::spawn(move || {
            let (mut ok, mut failed, mut worst) = (0, 0, Duration::ZERO);
            let mut n = 0u64;
            loop {
                let last = flag.load(Ordering::SeqCst);
                n += 1;
                let state = if last {
                    "{\"last\":1}".to_string()
                } else {
                    format!("{{\"n\":{n}}}")
                };
                let t = Instant::now();
                leader.publish(name, state.as_bytes()).unwrap();
                match leader.flush(name, 10_000) {
                    Ok(()) => ok += 1,
                    Err(_) => failed += 1,
                }
                worst = worst.max(t.elapsed());
                if last {
                    return (ok, failed, worst);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Steady {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> (u64, u64, Duration) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// A number in Fossil's base-64 digits (docs/PROTOCOL.md, "Deltas").
fn fossil_int(mut v: u64) -> String {
    const DIGITS: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(v % 64) as usize]);
        v /= 64;
        if v == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap()
}

/// The bound for a call's time in Redis and another client's PING: 100 ms
/// is the target on a quiet machine (docs/SECURITY.md has the figures);
/// here 400 ms, times the load per core above 1 (a busy machine slows
/// Redis down as much as anything else).
fn busy_bound_ms() -> f64 {
    let load: f64 = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(1.0);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    400.0 * (load / cores).max(1.0)
}

/// Each crafted request of the availability issue, sent through Webdis as
/// anyone could, and a rightful leader's 8 MiB multi-byte state: none keeps
/// Redis busy for long (Redis' latency monitor and another client's PING
/// say so), each crafted one is refused with MSARG (or MSNOTFOUND) and
/// changes nothing, and the leader and its follower keep working.
#[test]
fn no_request_keeps_redis_busy() {
    let s = Servers::start();
    let leader = Arc::new(s.client());
    leader.set_timeout(30_000).unwrap();
    let follower = s.client();
    let rec = Recorder::attach(&follower);
    leader.start("busy", "pw", "code").unwrap();
    follower.connect("busy", "pw").unwrap();
    rec.wait_state("busy", "{}", T);
    leader.start("steady", "pw", "code").unwrap();
    follower.connect("steady", "pw").unwrap();
    // The attacker's own stream, for deltas anyone can send to a stream of
    // their own: a stored state of 8 MiB - 16 bytes.
    let key = "a".repeat(64);
    let token = "7".repeat(32);
    let seed = "1".repeat(32);
    let v = Raw::call(
        s.webdis_port,
        "ms_start",
        &[b"stream:own", b"streams", b"msl:own"],
        "a0",
        &["5000", "0", "pbkdf2-sha256", "100000"],
        &[
            key.as_bytes(),
            key.as_bytes(),
            "0".repeat(32).as_bytes(),
            seed.as_bytes(),
            token.as_bytes(),
        ],
    );
    assert_eq!(error_of(&v), None, "{v}");
    let own = protocol::channel_of(&seed, "own");
    let base = "x".repeat((8 << 20) - 16);
    let v = Publish::new(
        "own",
        &token,
        &own,
        "00000000000000010000000000000001",
        None,
        base.as_bytes(),
    )
    .call(s.webdis_port, "a1");
    assert_eq!(error_of(&v), None, "{v}");
    s.redis_cli(&["LATENCY", "RESET"]);

    let emoji = "a😀".repeat((8 << 20) / 5);
    let header_flood = format!("{}\n", "0 ".repeat(4 << 20));
    // Deltas of 8 MiB against the attacker's own state.
    let delta = |body: String| {
        let mut d = String::new();
        d.push_str(&fossil_int(base.len() as u64));
        d.push('\n');
        d.push_str(&body);
        d.push_str("0;");
        d
    };
    let copies = delta("1@0,".repeat((8 << 20) / 4 - 16));
    let literals = delta("1:x".repeat((8 << 20) / 3 - 16));
    let empty_copies = delta("0@0,".repeat((8 << 20) / 4 - 16));
    // (what, function, keys, args, body, expected reply)
    type Attack = (
        &'static str,
        &'static str,
        Vec<Vec<u8>>,
        Vec<String>,
        Vec<u8>,
        &'static str,
    );
    let publish = |what, name: &str, id: &str, base, data: &[u8], expected| -> Attack {
        let p = Publish::new(name, &token, &own, id, base, data);
        (what, "ms_publish", p.keys, p.args, p.body, expected)
    };
    let base_id = "00000000000000010000000000000001";
    let too_many = "MSARG atk malformed delta: the delta has more than 2048 commands";
    let attacks: Vec<Attack> = vec![
        publish(
            "an 8 MiB publish of \"a😀\" to a stream that does not exist",
            "nothing-here",
            "00000000000000010000000000000002",
            None,
            emoji.as_bytes(),
            "MSNOTFOUND atk",
        ),
        (
            "a framing header of millions of fields",
            "ms_connect",
            vec![b"stream:busy".to_vec()],
            vec![],
            header_flood.as_bytes().to_vec(),
            "MSARG atk malformed request body",
        ),
        publish(
            "a delta of 2 million one-byte copies",
            "own",
            "00000000000000010000000000000003",
            Some((1, base_id)),
            copies.as_bytes(),
            too_many,
        ),
        publish(
            "a delta of 2.8 million one-byte literals",
            "own",
            "00000000000000010000000000000004",
            Some((1, base_id)),
            literals.as_bytes(),
            too_many,
        ),
        publish(
            "a delta of 2 million zero-length copies",
            "own",
            "00000000000000010000000000000005",
            Some((1, base_id)),
            empty_copies.as_bytes(),
            too_many,
        ),
    ];
    let before = s.record_field("busy", "seq");
    let bound = busy_bound_ms();
    // `make attack` repeats each request for MS_ATTACK_SECONDS; `make
    // test` sends each once.
    let secs: f64 = std::env::var("MS_ATTACK_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let mut report = vec![format!(
        "bound: {bound:.0} ms; each attack repeated for {secs} s while a leader publishes and flushes every 50 ms"
    )];
    for (what, function, keys, args, body, expected) in &attacks {
        s.redis_cli(&["LATENCY", "RESET"]);
        let steady = Steady::start(&leader, "steady");
        let ping = PingWatch::start(s.redis_port);
        let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let path = fcall_path(function, &keys, "atk", &args);
        let t0 = Instant::now();
        let (mut sent, mut slowest) = (0, Duration::ZERO);
        while sent == 0 || t0.elapsed().as_secs_f64() < secs {
            let t = Instant::now();
            let mut raw = Raw::connect(s.webdis_port);
            raw.put(&path, body);
            let (status, text) = raw.reply(Duration::from_secs(60)).expect("an answer");
            slowest = slowest.max(t.elapsed());
            sent += 1;
            assert_eq!(status, 200, "{what}: {text}");
            assert!(
                text.contains(expected),
                "{what}: {}",
                &text[..text.len().min(300)]
            );
        }
        std::thread::sleep(Duration::from_millis(100));
        let (p99, max) = ping.stop();
        let (flushed, failed, worst) = steady.stop();
        let busy = longest_call_ms(&s);
        report.push(format!(
            "{what}: {sent} sent, each answered within {slowest:.0?}; Redis busy {busy} ms at most; \
             PING p99 {p99:.1} ms, max {max:.1} ms; leader: {flushed} flushes, {failed} failed, slowest {worst:.0?}"
        ));
        assert!(
            (busy as f64) < bound && p99 < bound,
            "{what}: Redis busy {busy} ms, PING p99 {p99:.1} ms"
        );
        assert_eq!(failed, 0, "{what}: the rightful leader's flushes failed");
    }
    rec.wait(T, |ev| {
        ev.iter()
            .any(|e| e.stream == "steady" && e.state.as_deref() == Some("{\"last\":1}"))
    });
    assert_eq!(
        s.record_field("own", "state").len(),
        base.len(),
        "no delta applied"
    );
    assert_eq!(s.record_field("busy", "seq"), before);
    // A rightful leader's 8 MiB multi-byte state.
    s.redis_cli(&["LATENCY", "RESET"]);
    let ping = PingWatch::start(s.redis_port);
    let state = format!("{{\"t\":\"{}\"}}", "a😀".repeat(((8 << 20) - 16) / 5));
    leader.publish("busy", state.as_bytes()).unwrap();
    leader.flush("busy", 30_000).unwrap();
    let (p99, max) = ping.stop();
    let busy = longest_call_ms(&s);
    report.push(format!(
        "a leader's 8 MiB multi-byte state: Redis busy {busy} ms at most, PING p99 {p99:.1} ms max {max:.1} ms"
    ));
    rec.wait(T, |ev| ev.iter().any(|e| e.seq == 1));
    println!("{}", report.join("\n"));
    assert!(
        (busy as f64) < bound && p99 < bound,
        "the leader's 8 MiB state: Redis busy {busy} ms, PING p99 {p99:.1} ms"
    );
}

/// The functions leave the UTF-8 validity of a state to the client (a scan
/// would keep Redis busy), so a leader of the protocol could store one
/// that is not UTF-8. No follower ever delivers it: a follower connected
/// meanwhile keeps its last state and gets the next valid one; a new
/// follower's connect fails with a clear status instead of delivering it.
#[test]
fn a_state_that_is_not_utf8_is_never_delivered() {
    let s = Servers::start();
    let (leader, _follower, rec, name) = s.followed("not-utf8");
    let channel = s.record_field(&name, "channel");
    let token = s.take_lead(&name, "pw", "code");
    let v = Publish::new(
        &name,
        &token,
        &channel,
        "00000000000000020000000000000001",
        None,
        b"{\"x\":\"\xff\"}",
    )
    .call(s.webdis_port, "bad1");
    assert_eq!(error_of(&v), None, "{v}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        rec.states(&name).iter().all(|(_, st)| !st.contains('x')),
        "{:?}",
        rec.states(&name)
    );
    let late = s.client();
    let late_rec = Recorder::attach(&late);
    let e = late.connect(&name, "pw").unwrap_err();
    assert!(
        matches!(
            e.status,
            missionstream::Status::MS_ERR_PROTOCOL | missionstream::Status::MS_ERR_SERVER
        ),
        "{e:?}"
    );
    assert!(late_rec.snapshot().is_empty(), "{:?}", late_rec.snapshot());
    let _ = leader;
    // A valid state stored after it reaches the follower.
    let v = Publish::new(
        &name,
        &token,
        &channel,
        "00000000000000020000000000000002",
        None,
        b"{\"y\":1}",
    )
    .call(s.webdis_port, "good1");
    assert_eq!(error_of(&v), None, "{v}");
    rec.wait_state(&name, "{\"y\":1}", T);
    late.connect(&name, "pw").unwrap();
    late_rec.wait_state(&name, "{\"y\":1}", T);
}

/// The functions library with its QUOTAS lines set to these values.
fn with_quotas(streams: u64, state: u64, total: u64) -> String {
    let lua = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/lua/missionstream.lua"
    ))
    .unwrap();
    let mut out = String::new();
    for line in lua.lines() {
        let line = if line.starts_with("local QUOTA_STREAMS = ") {
            format!("local QUOTA_STREAMS = {streams}")
        } else if line.starts_with("local QUOTA_STATE_BYTES = ") {
            format!("local QUOTA_STATE_BYTES = {state}")
        } else if line.starts_with("local QUOTA_TOTAL_BYTES = ") {
            format!("local QUOTA_TOTAL_BYTES = {total}")
        } else {
            line.to_string()
        };
        out.push_str(&line);
        out.push('\n');
    }
    assert!(out.contains(&format!("QUOTA_TOTAL_BYTES = {total}\n")));
    out
}

/// ms_limits, raw: the quotas and what the index counts.
fn limits(s: &Servers) -> serde_json::Value {
    Raw::call(s.webdis_port, "ms_limits", &[b"streams"], "lim", &[], &[])
}

/// Quotas set in the deployment (the QUOTAS lines of the functions
/// library) bound the number of streams, one stream's state and all states
/// together; ms_limits shows them. A call over a quota is refused with a
/// clear status and message, changes nothing, and a leader keeps its
/// newest state and stores it once the quota allows (nothing acknowledged
/// is lost); streams stopped or expired free their share.
#[test]
fn quotas_refuse_clearly_and_lose_nothing() {
    let s = Servers::start();
    // The index counts each stream's state rounded up to 1 KiB (the quota
    // of one stream takes the exact length).
    s.load_functions(&with_quotas(3, 4000, 10_000));
    assert_eq!(
        limits(&s),
        serde_json::json!(["lim", 3, 4000, 10_000, 0, 0])
    );
    let c = s.client();
    c.set_timeout(3000).unwrap();
    let rec = Recorder::attach(&c);
    for name in ["q1", "q2", "q3"] {
        c.start(name, "pw", "code").unwrap();
    }
    let e = c.start("q4", "pw", "code").unwrap_err();
    assert_eq!(e.status, missionstream::Status::MS_ERR_SERVER, "{e:?}");
    assert!(
        e.message.contains("quota") && e.message.contains("most streams"),
        "{}",
        e.message
    );
    assert_eq!(s.redis_cli(&["EXISTS", "stream:q4"]).trim(), "0");
    assert_eq!(
        limits(&s),
        serde_json::json!(["lim", 3, 4000, 10_000, 3, 3 * 1024])
    );

    // One stream's state over its quota: refused, reported, the stored
    // state kept; the next state within the quota is stored.
    let fits = format!("{{\"a\":\"{}\"}}", "x".repeat(3500));
    c.publish("q1", fits.as_bytes()).unwrap();
    c.flush("q1", 5000).unwrap();
    let over = format!("{{\"a\":\"{}\"}}", "y".repeat(4500));
    c.publish("q1", over.as_bytes()).unwrap();
    let e = c.flush("q1", 1500).unwrap_err();
    assert!(e.message.contains("quota of one stream"), "{e:?}");
    rec.wait_kind("q1", missionstream::EventKind::MS_EVENT_PUBLISH_FAILED, T);
    assert_state_eq(&s.record_field("q1", "state"), &fits, "");
    let small = "{\"a\":1}";
    c.publish("q1", small.as_bytes()).unwrap();
    c.flush("q1", 10_000).unwrap();
    assert_state_eq(&s.record_field("q1", "state"), &small, "");

    // All states together: two of 3.5 KiB (4 KiB counted each) and q3's
    // `{}` (1 KiB) fit in 10,000 bytes, a third of 3.5 KiB not.
    c.publish("q1", fits.as_bytes()).unwrap();
    c.publish("q2", fits.as_bytes()).unwrap();
    c.flush("q1", 5000).unwrap();
    c.flush("q2", 5000).unwrap();
    c.publish("q3", fits.as_bytes()).unwrap();
    let e = c.flush("q3", 1500).unwrap_err();
    assert!(e.message.contains("all streams"), "{e:?}");
    assert_state_eq(&s.record_field("q3", "state"), "{}", "");
    // A stream stopped frees its share: q3's newest state goes in.
    c.stop("q2").unwrap();
    c.flush("q3", 10_000).unwrap();
    assert_state_eq(&s.record_field("q3", "state"), &fits, "");
    // A stream that expired frees its place (found when a quota is hit).
    c.start("q5", "pw", "code").unwrap();
    assert!(c.start("q6", "pw", "code").is_err(), "3 streams");
    s.redis_cli(&["DEL", "stream:q1"]);
    c.start("q6", "pw", "code").unwrap();
    let l = limits(&s);
    assert_eq!(
        (l[4].as_u64(), l[5].as_u64()),
        (Some(3), Some(4096 + 1024 + 1024)),
        "q3, q5, q6: {l}"
    );
}

/// deploy/redis.conf bounds Redis' memory with `noeviction`: a publish
/// refused because Redis is full is a clear error, the acknowledged state
/// stays, and the newest state is stored once memory allows.
#[test]
fn a_full_redis_refuses_a_publish_clearly_and_loses_nothing() {
    let s = Servers::start();
    let conf = s.redis_cli(&["CONFIG", "GET", "maxmemory-policy"]);
    assert!(conf.contains("noeviction"), "{conf}");
    let maxmemory = s.redis_cli(&["CONFIG", "GET", "maxmemory"]);
    assert!(
        !maxmemory.ends_with("\n0\n"),
        "deploy/redis.conf sets maxmemory: {maxmemory}"
    );
    let c = s.client();
    c.set_timeout(3000).unwrap();
    c.start("full", "pw", "code").unwrap();
    c.publish("full", b"{\"v\":1}").unwrap();
    c.flush("full", 5000).unwrap();
    s.redis_cli(&["CONFIG", "SET", "maxmemory", "1"]);
    c.publish("full", b"{\"v\":2}").unwrap();
    let e = c.flush("full", 1500).unwrap_err();
    assert_eq!(e.status, missionstream::Status::MS_ERR_SERVER, "{e:?}");
    assert!(e.message.contains("out of memory"), "{}", e.message);
    assert_state_eq(&s.record_field("full", "state"), "{\"v\":1}", "");
    s.redis_cli(&["CONFIG", "SET", "maxmemory", "0"]);
    c.flush("full", 10_000).unwrap();
    assert_state_eq(&s.record_field("full", "state"), "{\"v\":2}", "");
}
