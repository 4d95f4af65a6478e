//! Soak: one leader publishing and flushing ~20 states a second, three
//! followers, against real Redis and Webdis while faults are injected
//! (Webdis SIGKILLed and restarted, Redis shut down and restarted, Webdis
//! frozen with SIGSTOP for 3 s). Everything checked is what a user sees:
//!
//! 1. every flush that returned Ok is in Redis: read back from Redis right
//!    after flush returned, the record holds that n or a later one; the
//!    record, sampled every 100 ms, never holds an n below the highest one
//!    acknowledged before the sample; every acknowledged n is in the
//!    append-only file;
//! 2. per follower, STATE seq strictly increases and n never goes back;
//! 3. every follower ends on the leader's last state within 10 s;
//! 4. per follower, LEADER_OFFLINE and LEADER_ONLINE alternate, starting
//!    with OFFLINE, and a follower does not end OFFLINE while its leader
//!    is leading; LEADER_OFFLINE comes within 2.5 s of a freeze's start;
//! 5. no CONNECTION_LOST without a later RECONNECTED; no ENDED.
//!
//! `cargo test --release --test soak` runs the short variant (~55 s);
//! `make soak` the long one, sized by MS_SOAK_SECONDS, MS_SOAK_WEBDIS_KILLS,
//! MS_SOAK_REDIS_RESTARTS, MS_SOAK_FREEZES (see `Plan::from_env`). Both
//! print a summary table (Markdown) and write it, with the date, the
//! protocol version and any failures, to `$CARGO_TARGET_DIR/soak/report.md`
//! (the long run) or `report-short.md` (the short one); `target/` when
//! CARGO_TARGET_DIR is not set.

mod common;

use common::*;
use missionstream::{Client, Event, EventKind, Status};
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Request timeout of every client.
const TIMEOUT_MS: u32 = 5_000;
/// The leader's heartbeat interval.
const HEARTBEAT_MS: u32 = 500;
/// LEADER_OFFLINE after a freeze begins: 3 intervals plus slack.
const OFFLINE_BOUND: Duration = Duration::from_millis(2_500);
/// Every follower holds the last state this long after its flush.
const CONVERGE_BOUND: Duration = Duration::from_secs(10);
/// How often the record is read straight from Redis.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// Publishing before the first fault and after the last one.
const WARMUP: Duration = Duration::from_secs(2);
const SETTLE: Duration = Duration::from_secs(4);
/// How long Webdis or Redis stays down before it is started again.
const DOWN: Duration = Duration::from_millis(300);
/// Least time between the end of a fault and the start of the next.
const MIN_RECOVERY: Duration = Duration::from_millis(1_500);
/// Details printed per kind of violation.
const MAX_DETAILS: usize = 15;

#[test]
fn soak_short() {
    soak(Plan::short());
}

/// `make soak`: a few minutes; sized by environment variables.
#[test]
#[ignore]
fn soak_long() {
    soak(Plan::from_env());
}

/// Where a run's report goes: `<target>/soak/report.md` for the long run,
/// `report-<label>.md` for the others.
fn report_path(label: &str) -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(ROOT).join("target"));
    let name = if label == "long" {
        "report.md".to_string()
    } else {
        format!("report-{label}.md")
    };
    target.join("soak").join(name)
}

/// Writes the summary table to the report file (a soak that cannot write
/// it says so and goes on: the table was printed too).
fn write_report(plan: &Plan, table: &str, failures: &[String]) {
    let when = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown date".into());
    let mut r = String::new();
    let _ = writeln!(
        r,
        "# missionstream soak report ({})\n\n{when}, protocol {}, library {}.",
        plan.label,
        missionstream::protocol::PROTOCOL_VERSION,
        env!("CARGO_PKG_VERSION")
    );
    r.push_str(table);
    if failures.is_empty() {
        r.push_str("\nNo failure.\n");
    } else {
        let _ = writeln!(r, "\n## {} failures\n", failures.len());
        for f in failures {
            let _ = writeln!(r, "{f}\n");
        }
    }
    let path = report_path(plan.label);
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(&path, &r));
    match written {
        Ok(()) => println!("soak report: {}", path.display()),
        Err(e) => println!("soak report: cannot write {}: {e}", path.display()),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum FaultKind {
    WebdisKill,
    WebdisFreeze,
    RedisRestart,
}

impl FaultKind {
    fn label(self) -> &'static str {
        match self {
            FaultKind::WebdisKill => "Webdis SIGKILL + restart",
            FaultKind::WebdisFreeze => "Webdis freeze (SIGSTOP/SIGCONT)",
            FaultKind::RedisRestart => "Redis SHUTDOWN + restart",
        }
    }
}

struct Plan {
    label: &'static str,
    /// Publishing time, faults included (stretched if they need more).
    seconds: f64,
    webdis_kills: usize,
    redis_restarts: usize,
    freezes: usize,
    freeze: Duration,
    /// Publishes (each followed by a flush) per second.
    rate: f64,
    flush_timeout_ms: u32,
    followers: usize,
}

impl Plan {
    fn short() -> Plan {
        Plan {
            label: "short",
            seconds: 54.0,
            webdis_kills: 2,
            redis_restarts: 2,
            // Webdis 0.1.9 mixes up the leader's replies after about one
            // freeze in ten: as many as fit.
            freezes: 6,
            freeze: Duration::from_secs(3),
            rate: 20.0,
            flush_timeout_ms: 1_000,
            followers: 3,
        }
    }

    fn from_env() -> Plan {
        Plan {
            label: "long",
            seconds: env("MS_SOAK_SECONDS", 240.0),
            webdis_kills: env("MS_SOAK_WEBDIS_KILLS", 20),
            redis_restarts: env("MS_SOAK_REDIS_RESTARTS", 5),
            freezes: env("MS_SOAK_FREEZES", 5),
            freeze: Duration::from_millis(env("MS_SOAK_FREEZE_MS", 3_000)),
            rate: env("MS_SOAK_RATE", 20.0),
            flush_timeout_ms: env("MS_SOAK_FLUSH_MS", 1_000),
            followers: env("MS_SOAK_FOLLOWERS", 3),
        }
    }

    /// Faults spread evenly over the run, the kinds interleaved; each
    /// with its offset from the start.
    fn schedule(&self) -> Vec<(Duration, FaultKind)> {
        let mut kinds: Vec<(f64, FaultKind)> = Vec::new();
        for (count, kind) in [
            (self.webdis_kills, FaultKind::WebdisKill),
            (self.freezes, FaultKind::WebdisFreeze),
            (self.redis_restarts, FaultKind::RedisRestart),
        ] {
            for j in 0..count {
                kinds.push(((j as f64 + 0.5) / count as f64, kind));
            }
        }
        kinds.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let n = kinds.len().max(1) as f64;
        let room = (self.seconds - (WARMUP + SETTLE).as_secs_f64()).max(0.0);
        let slot = (room / n).max((self.freeze + DOWN + MIN_RECOVERY).as_secs_f64());
        kinds
            .into_iter()
            .enumerate()
            .map(|(i, (_, k))| (WARMUP + Duration::from_secs_f64(slot * i as f64), k))
            .collect()
    }
}

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
        _ => default,
    }
}

/// One call of `flush` after a `publish` of `{"n":k}`.
#[derive(Clone)]
struct FlushRec {
    k: u64,
    status: Status,
    published: Instant,
    returned: Instant,
    /// After an Ok: n in Redis read right after flush returned (None:
    /// Redis could not be asked), and when.
    read_back: Option<(i64, Instant)>,
}

/// Notes the outcome of a flush of `{"n":k}`; after an Ok, reads the
/// record back from Redis at once.
fn note_flush(
    flushes: &Mutex<Vec<FlushRec>>,
    redis: &mut RedisReader,
    key: &str,
    k: u64,
    published: Instant,
    r: &missionstream::Result<()>,
) {
    let returned = Instant::now();
    let read_back = match r {
        Ok(()) => redis
            .hget(key, "s")
            .map(|v| (v.as_deref().map_or(-1, n_of_base), returned)),
        Err(_) => None,
    };
    flushes.lock().unwrap().push(FlushRec {
        k,
        status: r.as_ref().err().map_or(Status::MS_OK, |e| e.status),
        published,
        returned,
        read_back,
    });
}

/// The record's state read from Redis: `n` (-1: no record or no n).
struct Sample {
    at: Instant,
    n: i64,
}

struct Fault {
    kind: FaultKind,
    start: Instant,
    end: Instant,
    note: String,
}

/// Every event of a client, with when the callback got it.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<(Instant, Rec)>>>);

impl Log {
    fn attach(client: &Client) -> Log {
        let log = Log::default();
        let l = log.clone();
        client.set_callback(Some(Arc::new(move |e: &Event| {
            l.0.lock().unwrap().push((
                Instant::now(),
                Rec {
                    kind: e.kind,
                    stream: e.stream_name().to_string(),
                    state: e.state.as_ref().map(|s| s.as_str().to_string()),
                    seq: e.seq,
                    status: e.status,
                },
            ));
        })));
        log
    }

    fn snapshot(&self) -> Vec<(Instant, Rec)> {
        self.0.lock().unwrap().clone()
    }

    fn last_state(&self) -> Option<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(_, r)| r.kind == EventKind::MS_EVENT_STATE)
            .and_then(|(_, r)| r.state.clone())
    }

    fn last_presence(&self) -> Option<EventKind> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .rfind(|(_, r)| is_presence(r.kind))
            .map(|(_, r)| r.kind)
    }
}

fn is_presence(k: EventKind) -> bool {
    matches!(
        k,
        EventKind::MS_EVENT_LEADER_OFFLINE | EventKind::MS_EVENT_LEADER_ONLINE
    )
}

fn state_of(k: u64) -> String {
    format!("{{\"n\":{k}}}")
}

/// `n` of the record's base `s` ("r <publish id>\n" and the state; the
/// soak's states are small, so each is published in full and is the base).
fn n_of_base(base: &str) -> i64 {
    base.split_once('\n').map_or(-1, |(_, state)| n_of(state))
}

/// `n` of a state `{"n":k}`; -1 for anything else (`{}` at the start).
fn n_of(state: &str) -> i64 {
    serde_json::from_str::<serde_json::Value>(state)
        .ok()
        .and_then(|v| v.get("n")?.as_i64())
        .unwrap_or(-1)
}

/// Reads a field straight from Redis over one kept-alive connection (a
/// read takes tens of microseconds), replaced when it fails.
struct RedisReader {
    port: u16,
    conn: Option<TcpStream>,
}

impl RedisReader {
    fn new(port: u16) -> RedisReader {
        RedisReader { port, conn: None }
    }

    /// HGET: None if Redis cannot be asked now, Some(None) if there is no
    /// such field.
    fn hget(&mut self, key: &str, field: &str) -> Option<Option<String>> {
        // A kept connection may have died with a Redis restart: one more
        // try on a new one.
        for _ in 0..2 {
            let fresh = self.conn.is_none();
            if fresh {
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
                let s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
                s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
                s.set_write_timeout(Some(Duration::from_secs(1))).ok()?;
                s.set_nodelay(true).ok()?;
                self.conn = Some(s);
            }
            match hget_on(self.conn.as_mut().unwrap(), key, field) {
                Ok(v) => return v,
                Err(()) => {
                    self.conn = None;
                    if fresh {
                        return None;
                    }
                }
            }
        }
        None
    }
}

/// One HGET on `s`: Err if the connection is unusable, Ok(None) if Redis
/// cannot answer now (-LOADING...).
fn hget_on(s: &mut TcpStream, key: &str, field: &str) -> Result<Option<Option<String>>, ()> {
    let mut cmd = Vec::new();
    write!(cmd, "*3\r\n$4\r\nHGET\r\n").unwrap();
    for a in [key, field] {
        write!(cmd, "${}\r\n{a}\r\n", a.len()).unwrap();
    }
    s.write_all(&cmd).map_err(|_| ())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).map_err(|_| ())?;
        if n == 0 {
            return Err(());
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
            continue;
        };
        if buf[0] != b'$' {
            // -LOADING, -ERR...: answered, but not with the field.
            return Err(());
        }
        let len: i64 = std::str::from_utf8(&buf[1..eol])
            .ok()
            .and_then(|l| l.parse().ok())
            .ok_or(())?;
        if len < 0 {
            return Ok(Some(None));
        }
        let end = eol + 2 + len as usize;
        if buf.len() >= end + 2 {
            return Ok(Some(Some(
                String::from_utf8_lossy(&buf[eol + 2..end]).into_owned(),
            )));
        }
    }
}

/// How many events of each kind, e.g. "2 MS_EVENT_RECONNECTED, 40 MS_EVENT_STATE".
fn kinds_in(events: &[(Instant, Rec)]) -> String {
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for (_, e) in events {
        *kinds.entry(format!("{:?}", e.kind)).or_default() += 1;
    }
    if kinds.is_empty() {
        return "nothing".into();
    }
    kinds
        .iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Raises every flag when dropped, on a panic too.
struct StopOnDrop<'a>(&'a [&'a AtomicBool]);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        for flag in self.0 {
            flag.store(true, Ordering::SeqCst);
        }
    }
}

/// Seconds since the run began, for messages.
struct Clock(Instant);

impl Clock {
    fn at(&self, t: Instant) -> String {
        format!(
            "+{:.3} s",
            t.saturating_duration_since(self.0).as_secs_f64()
        )
    }
}

/// Where `t` falls relative to the faults, for messages.
fn context(clock: &Clock, faults: &[Fault], t: Instant) -> String {
    match faults.iter().enumerate().rev().find(|(_, f)| f.start <= t) {
        Some((i, f)) => format!(
            "{:.2} s after fault #{} ({}) began at {}{}",
            (t - f.start).as_secs_f64(),
            i + 1,
            f.kind.label(),
            clock.at(f.start),
            if t <= f.end { ", still under way" } else { "" }
        ),
        None => "before the first fault".into(),
    }
}

fn soak(plan: Plan) {
    let mut s = Servers::start();
    let clock = Clock(Instant::now());
    let name = unique("soak");
    let key = format!("stream:{name}");

    let leader = s.client();
    leader.set_timeout(TIMEOUT_MS).unwrap();
    leader.set_heartbeat(HEARTBEAT_MS).unwrap();
    let leader_log = Log::attach(&leader);
    leader.start(&name, "pw", "code").unwrap();
    let followers: Vec<(Client, Log)> = (0..plan.followers)
        .map(|_| {
            let f = s.client();
            f.set_timeout(TIMEOUT_MS).unwrap();
            let log = Log::attach(&f);
            f.connect(&name, "pw").unwrap();
            (f, log)
        })
        .collect();

    let flushes: Mutex<Vec<FlushRec>> = Mutex::new(Vec::new());
    let samples: Mutex<Vec<Sample>> = Mutex::new(Vec::new());
    let unanswered_samples = AtomicU64::new(0);
    let stop_publishing = AtomicBool::new(false);
    let stop_sampling = AtomicBool::new(false);
    let mut faults: Vec<Fault> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let schedule = plan.schedule();
    let mut functions_reloaded = 0;
    let redis_port = s.redis_port;
    let mut final_k = 0;
    let mut final_acked: Option<Instant> = None;
    let mut converged: Vec<Option<Instant>> = vec![None; followers.len()];
    let mut final_published = Instant::now();

    std::thread::scope(|scope| {
        // Should this thread panic, the others stop too (the scope waits
        // for them).
        let _stop = StopOnDrop(&[&stop_publishing, &stop_sampling]);
        // The record as stored, every 100 ms.
        scope.spawn(|| {
            let mut sampler = RedisReader::new(redis_port);
            while !stop_sampling.load(Ordering::SeqCst) {
                let at = Instant::now();
                match sampler.hget(&key, "s") {
                    Some(v) => samples.lock().unwrap().push(Sample {
                        at,
                        n: v.as_deref().map_or(-1, n_of_base),
                    }),
                    None => {
                        unanswered_samples.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(SAMPLE_EVERY.saturating_sub(at.elapsed()));
            }
        });
        // The leader: publish, flush, note the outcome, at `rate`.
        let publisher = scope.spawn(|| {
            let mut redis = RedisReader::new(redis_port);
            let period = Duration::from_secs_f64(1.0 / plan.rate);
            let mut next = Instant::now();
            let mut k = 0u64;
            while !stop_publishing.load(Ordering::SeqCst) {
                k += 1;
                let published = Instant::now();
                if let Err(e) = leader.publish(&name, state_of(k).as_bytes()) {
                    return (k, Some(e));
                }
                let r = leader.flush(&name, plan.flush_timeout_ms);
                note_flush(&flushes, &mut redis, &key, k, published, &r);
                next += period;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else {
                    next = now;
                }
            }
            (k, None)
        });

        // Faults, on this thread.
        for (offset, kind) in &schedule {
            let at = clock.0 + *offset;
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            let start = Instant::now();
            let mut note = String::new();
            match kind {
                FaultKind::WebdisKill => {
                    s.stop_webdis();
                    std::thread::sleep(DOWN);
                    s.start_webdis();
                }
                FaultKind::RedisRestart => {
                    s.stop_redis();
                    std::thread::sleep(DOWN);
                    s.start_redis();
                    if s.ensure_functions() {
                        functions_reloaded += 1;
                        note = "functions were gone after the restart: reloaded".into();
                    }
                }
                FaultKind::WebdisFreeze => {
                    s.signal_webdis("STOP");
                    std::thread::sleep(plan.freeze);
                    s.signal_webdis("CONT");
                }
            }
            faults.push(Fault {
                kind: *kind,
                start,
                end: Instant::now(),
                note,
            });
        }
        let publish_until = (clock.0 + Duration::from_secs_f64(plan.seconds))
            .max(faults.last().map_or(clock.0, |f| f.end) + SETTLE);
        std::thread::sleep(publish_until.saturating_duration_since(Instant::now()));
        stop_publishing.store(true, Ordering::SeqCst);
        let (last_k, lead_error) = publisher.join().unwrap();
        if let Some(e) = lead_error {
            failures.push(format!(
                "check 1: publish of n={last_k} at {} failed: {:?} {} (the lead ended)",
                clock.at(Instant::now()),
                e.status,
                e.message
            ));
        }

        // The last state, flushed until acknowledged (bounded).
        final_k = last_k + 1;
        let mut read_back = RedisReader::new(redis_port);
        final_published = Instant::now();
        match leader.publish(&name, state_of(final_k).as_bytes()) {
            Ok(()) => {
                let give_up = Instant::now() + Duration::from_secs(20);
                while Instant::now() < give_up {
                    let r = leader.flush(&name, plan.flush_timeout_ms);
                    note_flush(&flushes, &mut read_back, &key, final_k, final_published, &r);
                    if r.is_ok() {
                        final_acked = Some(Instant::now());
                        break;
                    }
                }
                if final_acked.is_none() {
                    failures.push(format!(
                        "check 3: the last state n={final_k}, published at {}, was not acknowledged by flush within 20 s",
                        clock.at(final_published)
                    ));
                }
            }
            Err(e) => failures.push(format!(
                "check 3: publish of the last state n={final_k} failed: {:?} {}",
                e.status, e.message
            )),
        }

        // Check 3: convergence.
        let want = state_of(final_k);
        let deadline = final_acked.unwrap_or_else(Instant::now) + CONVERGE_BOUND;
        loop {
            for (i, (_, log)) in followers.iter().enumerate() {
                if converged[i].is_none() && log.last_state().as_deref() == Some(want.as_str()) {
                    converged[i] = Some(Instant::now());
                }
            }
            if converged.iter().all(Option::is_some) || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // A follower that was told the leader is offline hears it again
        // within 3 intervals of its states and heartbeats.
        let deadline = Instant::now() + Duration::from_millis(3 * HEARTBEAT_MS as u64);
        while Instant::now() < deadline
            && followers
                .iter()
                .any(|(_, log)| log.last_presence() == Some(EventKind::MS_EVENT_LEADER_OFFLINE))
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        stop_sampling.store(true, Ordering::SeqCst);
    });
    let ended = Instant::now();

    let flushes = flushes.into_inner().unwrap();
    let samples = samples.into_inner().unwrap();
    let acks: Vec<&FlushRec> = flushes
        .iter()
        .filter(|f| f.status == Status::MS_OK)
        .collect();
    // Every reading of the record: samples and read-backs, in time order.
    let mut readings: Vec<(Instant, i64)> = samples.iter().map(|s| (s.at, s.n)).collect();
    readings.extend(
        flushes
            .iter()
            .filter_map(|f| f.read_back.map(|(n, at)| (at, n))),
    );
    readings.sort_by_key(|r| r.0);
    let first_stored = |k: u64| {
        readings.iter().find(|r| r.1 >= k as i64).map_or(
            "was never seen in Redis".to_string(),
            |r| {
                format!(
                    "(or a later n) was first seen in Redis at {}",
                    clock.at(r.0)
                )
            },
        )
    };

    // Check 1: read right after flush returned Ok, Redis holds n or later.
    let unread = acks.iter().filter(|a| a.read_back.is_none()).count();
    let not_yet: Vec<&&FlushRec> = acks
        .iter()
        .filter(|a| a.read_back.is_some_and(|(n, _)| n < a.k as i64))
        .collect();
    if !not_yet.is_empty() {
        // Runs of consecutive acknowledgements that came too early.
        let mut streaks: Vec<Vec<&FlushRec>> = Vec::new();
        let mut previous_bad = false;
        for a in &acks {
            let bad = a.read_back.is_some_and(|(n, _)| n < a.k as i64);
            if bad {
                if !previous_bad {
                    streaks.push(Vec::new());
                }
                streaks.last_mut().unwrap().push(a);
            }
            previous_bad = bad;
        }
        let mut m = format!(
            "check 1: {} flushes returned Ok before their state was in Redis (read back from Redis at once, it held an older n), in {} runs of consecutive flushes:",
            not_yet.len(),
            streaks.len()
        );
        for run in streaks.iter().take(MAX_DETAILS) {
            let (first, last) = (run[0], run[run.len() - 1]);
            let ms = |a: &FlushRec| (a.returned - a.published).as_secs_f64() * 1e3;
            let lags: std::collections::BTreeSet<i64> = run
                .iter()
                .map(|a| a.k as i64 - a.read_back.unwrap().0)
                .collect();
            let _ = write!(
                m,
                "\n  n={}..={} ({} flushes, {} .. {}; first {}): each returned Ok {:.1}..{:.1} ms after its publish while Redis held n minus {:?}; n={} {}",
                first.k,
                last.k,
                run.len(),
                clock.at(first.returned),
                clock.at(last.returned),
                context(&clock, &faults, first.returned),
                run.iter().map(|a| ms(a)).fold(f64::MAX, f64::min),
                run.iter().map(|a| ms(a)).fold(0.0, f64::max),
                lags,
                last.k,
                first_stored(last.k)
            );
        }
        failures.push(m);
    }

    // Check 1a: no sample below the highest n acknowledged before it.
    let mut behind: BTreeMap<u64, (usize, &Sample, &FlushRec)> = BTreeMap::new();
    let mut acked_before = 0usize;
    for smp in &samples {
        while acked_before < acks.len() && acks[acked_before].returned < smp.at {
            acked_before += 1;
        }
        if let Some(a) = acked_before.checked_sub(1).map(|i| acks[i]) {
            if smp.n < a.k as i64 {
                behind.entry(a.k).or_insert((0, smp, a)).0 += 1;
            }
        }
    }
    let sample_violations: usize = behind.values().map(|v| v.0).sum();
    if !behind.is_empty() {
        let mut m = format!(
            "check 1: {sample_violations} samples of the record (every {} ms) held a state older than one already acknowledged by flush ({} acknowledged states affected):",
            SAMPLE_EVERY.as_millis(),
            behind.len()
        );
        for (k, (count, smp, a)) in behind.iter().take(MAX_DETAILS) {
            let _ = write!(
                m,
                "\n  n={k}: flush returned Ok at {} ({:.1} ms after its publish; {}); {count} sample(s) read n={} after that, the first at {}; n={k} {}",
                clock.at(a.returned),
                (a.returned - a.published).as_secs_f64() * 1e3,
                context(&clock, &faults, a.returned),
                smp.n,
                clock.at(smp.at),
                first_stored(*k)
            );
        }
        failures.push(m);
    }

    // Check 1b: every acknowledged n is in the append-only file.
    let (commands, rdb_bases) = s.aof_commands();
    let mut in_aof: HashSet<i64> = HashSet::new();
    for c in &commands {
        if c.len() >= 4 && c[0].eq_ignore_ascii_case(b"HSET") && c[1] == key.as_bytes() {
            for pair in c[2..].chunks(2) {
                if pair.len() == 2 && pair[0] == b"s" {
                    in_aof.insert(n_of_base(&String::from_utf8_lossy(&pair[1])));
                }
            }
        }
    }
    let missing: Vec<&&FlushRec> = acks
        .iter()
        .filter(|a| !in_aof.contains(&(a.k as i64)))
        .collect();
    if !missing.is_empty() {
        let mut m = format!(
            "check 1: {} states acknowledged by flush were never stored: not in Redis' append-only file ({} states are; {} RDB base file(s) not read):",
            missing.len(),
            in_aof.len(),
            rdb_bases
        );
        for a in missing.iter().take(MAX_DETAILS) {
            let _ = write!(
                m,
                "\n  n={}: flush returned Ok at {} ({:.1} ms after its publish; {}); n={} {}",
                a.k,
                clock.at(a.returned),
                (a.returned - a.published).as_secs_f64() * 1e3,
                context(&clock, &faults, a.returned),
                a.k,
                first_stored(a.k)
            );
        }
        failures.push(m);
    }

    // Checks 2, 4, 5 and the freeze check, per follower.
    let logs: Vec<Vec<(Instant, Rec)>> = followers.iter().map(|(_, l)| l.snapshot()).collect();
    let mut offline_latencies: Vec<Duration> = Vec::new();
    let (mut offline_late, mut offline_missing) = (0, 0);
    let mut offline_unchecked: Vec<String> = Vec::new();
    for (i, log) in logs.iter().enumerate() {
        let who = format!("follower {}", i + 1);
        // 2: order.
        let mut prev: Option<(Instant, u64, i64)> = None;
        let mut order_errors = Vec::new();
        for (t, r) in log
            .iter()
            .filter(|(_, r)| r.kind == EventKind::MS_EVENT_STATE)
        {
            let n = r.state.as_deref().map_or(-1, n_of);
            if let Some((pt, pseq, pn)) = prev {
                if r.seq <= pseq || n < pn {
                    order_errors.push(format!(
                        "\n  STATE seq {} n={n} at {} after seq {pseq} n={pn} at {} ({})",
                        r.seq,
                        clock.at(*t),
                        clock.at(pt),
                        context(&clock, &faults, *t)
                    ));
                }
            }
            prev = Some((*t, r.seq, n));
        }
        if !order_errors.is_empty() {
            failures.push(format!(
                "check 2: {who}: {} STATE events out of order (seq must strictly increase, n never go back):{}",
                order_errors.len(),
                order_errors
                    .iter()
                    .take(MAX_DETAILS)
                    .cloned()
                    .collect::<String>()
            ));
        }
        // 3: the last state.
        if converged[i].is_none() {
            failures.push(format!(
                "check 3: {who} did not get the last state n={final_k} within {} s of its flush; its last STATE: {:?}",
                CONVERGE_BOUND.as_secs(),
                log.iter()
                    .rev()
                    .find(|(_, r)| r.kind == EventKind::MS_EVENT_STATE)
                    .map(|(t, r)| format!("{} (seq {}) at {}", r.state.as_deref().unwrap_or(""), r.seq, clock.at(*t)))
            ));
        }
        // 4: presence alternates, starting with OFFLINE.
        let mut last: Option<(Instant, EventKind, usize)> = None;
        let mut presence_errors = Vec::new();
        for (j, (t, r)) in log
            .iter()
            .enumerate()
            .filter(|(_, (_, r))| is_presence(r.kind))
        {
            let expected = match last {
                Some((_, EventKind::MS_EVENT_LEADER_OFFLINE, _)) => {
                    EventKind::MS_EVENT_LEADER_ONLINE
                }
                _ => EventKind::MS_EVENT_LEADER_OFFLINE,
            };
            if r.kind != expected {
                let between = match last {
                    Some((pt, pk, pj)) => format!(
                        "after {pk:?} at {} with no {expected:?} between (between them: {})",
                        clock.at(pt),
                        kinds_in(&log[pj + 1..j])
                    ),
                    None => "as the first presence event".into(),
                };
                presence_errors.push(format!(
                    "\n  {:?} at {} {between}; {}",
                    r.kind,
                    clock.at(*t),
                    context(&clock, &faults, *t)
                ));
            }
            last = Some((*t, r.kind, j));
        }
        if let Some((t, EventKind::MS_EVENT_LEADER_OFFLINE, j)) = last {
            presence_errors.push(format!(
                "\n  ends on LEADER_OFFLINE (at {}; {}) although the leader led and published until the end at {}; since then: {}",
                clock.at(t),
                context(&clock, &faults, t),
                clock.at(ended),
                kinds_in(&log[j + 1..])
            ));
        }
        if !presence_errors.is_empty() {
            failures.push(format!(
                "check 4: {who}: LEADER_OFFLINE/LEADER_ONLINE do not alternate ({} errors):{}",
                presence_errors.len(),
                presence_errors
                    .iter()
                    .take(MAX_DETAILS)
                    .cloned()
                    .collect::<String>()
            ));
        }
        // 4: OFFLINE promptly when Webdis freezes.
        for (fi, f) in faults.iter().enumerate() {
            if f.kind != FaultKind::WebdisFreeze {
                continue;
            }
            let presence = log
                .iter()
                .rfind(|(t, r)| *t < f.start && is_presence(r.kind));
            if let Some((t, _)) =
                presence.filter(|(_, r)| r.kind == EventKind::MS_EVENT_LEADER_OFFLINE)
            {
                // Already told the leader is offline (check 4 judges that).
                offline_unchecked.push(format!(
                    "follower {} at fault #{} (LEADER_OFFLINE since {})",
                    i + 1,
                    fi + 1,
                    clock.at(*t)
                ));
                continue;
            }
            // This freeze's OFFLINE comes before the next fault begins.
            let window_end = faults.get(fi + 1).map_or(ended, |n| n.start);
            let offline = log.iter().find(|(t, r)| {
                *t >= f.start && *t < window_end && r.kind == EventKind::MS_EVENT_LEADER_OFFLINE
            });
            match offline {
                Some((t, _)) if *t - f.start <= OFFLINE_BOUND => {
                    offline_latencies.push(*t - f.start)
                }
                other => {
                    let came = match other {
                        Some((t, _)) => {
                            offline_late += 1;
                            offline_latencies.push(*t - f.start);
                            format!(
                                "it came {:.2} s after the freeze began ({:.2} s after Webdis was thawed)",
                                (*t - f.start).as_secs_f64(),
                                t.saturating_duration_since(f.end).as_secs_f64()
                            )
                        }
                        None => {
                            offline_missing += 1;
                            format!(
                                "none came before {} ({})",
                                clock.at(window_end),
                                if window_end == ended {
                                    "the end"
                                } else {
                                    "the next fault"
                                }
                            )
                        }
                    };
                    let in_between: Vec<String> = log
                        .iter()
                        .filter(|(t, r)| {
                            *t >= f.start
                                && *t <= f.start + OFFLINE_BOUND
                                && r.kind != EventKind::MS_EVENT_STATE
                        })
                        .map(|(t, r)| format!("{:?} at {}", r.kind, clock.at(*t)))
                        .collect();
                    failures.push(format!(
                        "check 4: {who}: no LEADER_OFFLINE within {:.1} s of the start of fault #{} (Webdis frozen for {:.1} s at {}): {came}{}",
                        OFFLINE_BOUND.as_secs_f64(),
                        fi + 1,
                        (f.end - f.start).as_secs_f64(),
                        clock.at(f.start),
                        if in_between.is_empty() {
                            String::new()
                        } else {
                            format!("; within the bound: {}", in_between.join(", "))
                        }
                    ));
                }
            }
        }
        // 5: every lost connection restored; never ENDED.
        let mut open_loss: Option<Instant> = None;
        for (t, r) in log {
            match r.kind {
                EventKind::MS_EVENT_CONNECTION_LOST => {
                    open_loss.get_or_insert(*t);
                }
                EventKind::MS_EVENT_RECONNECTED => open_loss = None,
                EventKind::MS_EVENT_ENDED => failures.push(format!(
                    "check 5: {who}: ENDED at {} ({}) though the stream was never stopped",
                    clock.at(*t),
                    context(&clock, &faults, *t)
                )),
                _ => {}
            }
        }
        if let Some(t) = open_loss {
            failures.push(format!(
                "check 5: {who}: CONNECTION_LOST at {} ({}) and no RECONNECTED after it by the end at {}",
                clock.at(t),
                context(&clock, &faults, t),
                clock.at(ended)
            ));
        }
    }

    // The summary, as a Markdown table.
    let count_kind =
        |log: &[(Instant, Rec)], k: EventKind| log.iter().filter(|(_, r)| r.kind == k).count();
    let failed_by_status = {
        let mut m: BTreeMap<String, usize> = BTreeMap::new();
        for f in flushes.iter().filter(|f| f.status != Status::MS_OK) {
            *m.entry(format!("{:?}", f.status)).or_default() += 1;
        }
        m.iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let faults_of = |k: FaultKind| faults.iter().filter(|f| f.kind == k).count();
    let mut t = String::new();
    let _ = writeln!(t, "\nmissionstream soak ({}): {:.1} s, {} followers, heartbeat {} ms, timeout {} ms, flush timeout {} ms", plan.label, (ended - clock.0).as_secs_f64(), followers.len(), HEARTBEAT_MS, TIMEOUT_MS, plan.flush_timeout_ms);
    let _ = writeln!(t, "\n| figure | value |\n|---|---|");
    let _ = writeln!(
        t,
        "| states published (each followed by flush) | {final_k} |"
    );
    let _ = writeln!(t, "| flushes that returned Ok | {} |", acks.len());
    let _ = writeln!(
        t,
        "| flushes that failed | {} ({}) |",
        flushes.len() - acks.len(),
        if failed_by_status.is_empty() {
            "none".into()
        } else {
            failed_by_status
        }
    );
    let _ = writeln!(
        t,
        "| PUBLISH_FAILED events (leader) | {} |",
        count_kind(&leader_log.snapshot(), EventKind::MS_EVENT_PUBLISH_FAILED)
    );
    let _ = writeln!(
        t,
        "| faults injected | {} Webdis SIGKILL + restart, {} Redis restarts, {} Webdis freezes of {:.1} s |",
        faults_of(FaultKind::WebdisKill),
        faults_of(FaultKind::RedisRestart),
        faults_of(FaultKind::WebdisFreeze),
        plan.freeze.as_secs_f64()
    );
    let _ = writeln!(
        t,
        "| functions reloaded after a Redis restart | {functions_reloaded} |"
    );
    for (i, log) in logs.iter().enumerate() {
        let _ = writeln!(
            t,
            "| follower {}: STATE / CONNECTION_LOST / RECONNECTED / LEADER_OFFLINE / LEADER_ONLINE | {} / {} / {} / {} / {} |",
            i + 1,
            count_kind(log, EventKind::MS_EVENT_STATE),
            count_kind(log, EventKind::MS_EVENT_CONNECTION_LOST),
            count_kind(log, EventKind::MS_EVENT_RECONNECTED),
            count_kind(log, EventKind::MS_EVENT_LEADER_OFFLINE),
            count_kind(log, EventKind::MS_EVENT_LEADER_ONLINE)
        );
    }
    let _ = writeln!(
        t,
        "| record samples (every {} ms) / Redis unreachable | {} / {} |",
        SAMPLE_EVERY.as_millis(),
        samples.len(),
        unanswered_samples.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        t,
        "| violations: Ok from flush, state not in Redis when read back at once | {} (of {} read back; {unread} not, Redis unreachable) |",
        not_yet.len(),
        acks.len() - unread
    );
    let _ = writeln!(
        t,
        "| violations: sample below an acknowledged state | {sample_violations} samples ({} states) |",
        behind.len()
    );
    let _ = writeln!(
        t,
        "| violations: acknowledged state missing from the AOF | {} (AOF holds {} states) |",
        missing.len(),
        in_aof.len()
    );
    let _ = writeln!(
        t,
        "| LEADER_OFFLINE after a freeze began: max / late (> {:.1} s) / missing / not checked (already offline) | {} / {offline_late} / {offline_missing} / {} |",
        OFFLINE_BOUND.as_secs_f64(),
        offline_latencies
            .iter()
            .max()
            .map_or("n/a".into(), |d| format!("{:.2} s", d.as_secs_f64())),
        offline_unchecked.len()
    );
    let _ = writeln!(
        t,
        "| convergence: last state published to all followers | {} |",
        if converged.iter().all(Option::is_some) {
            format!(
                "{:.3} s",
                (converged
                    .iter()
                    .flatten()
                    .max()
                    .unwrap()
                    .saturating_duration_since(final_published))
                .as_secs_f64()
            )
        } else {
            format!("not within {} s", CONVERGE_BOUND.as_secs())
        }
    );
    let _ = writeln!(t, "| failures reported | {} |", failures.len());
    let _ = writeln!(t, "\nfaults:");
    for (i, f) in faults.iter().enumerate() {
        let _ = writeln!(
            t,
            "  #{:<2} {} .. {}  {}{}",
            i + 1,
            clock.at(f.start),
            clock.at(f.end),
            f.kind.label(),
            if f.note.is_empty() {
                String::new()
            } else {
                format!(" ({})", f.note)
            }
        );
    }
    println!("{t}");
    write_report(&plan, &t, &failures);
    drop(followers);
    drop(leader);
    assert!(
        failures.is_empty(),
        "soak ({}): {} failures:\n\n{}\n{t}",
        plan.label,
        failures.len(),
        failures.join("\n\n")
    );
}
