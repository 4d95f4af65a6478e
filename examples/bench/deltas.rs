//! Row 13 of the benchmark: deltas against full states, in the same run,
//! for QGroundControl survey plans of ~100 KiB and ~1 MiB
//! (tests/common/plan.rs), one waypoint moved per update:
//!
//! - bytes per update on the channel (a raw Webdis subscriber counts the
//!   payloads of `s`, `r` and `d` messages: a full state is its `s` header
//!   and its `r` body), over the acknowledged loop below;
//! - publish → follower callback p50/p99 at 20 updates/s (and, as the
//!   reference, a 1 KiB state at the same rate);
//! - acknowledged publishes/s (publish + flush, one at a time), beside
//!   the 1 KiB rate;
//! - snapshot reads the followers needed because of deltas;
//! - what one update costs persistence and replication: the growth of the
//!   append-only file (`aof_current_size`, automatic rewrites off) and of
//!   `master_repl_offset` (a replica this row starts) per acknowledged
//!   update, over a loop long enough for the record to be composed or
//!   compacted at least once, and the same bytes by command (a raw PSYNC
//!   replica and the AOF's incremental file);
//! - a late join's snapshot read (a reconnect with its key cached: the
//!   round trips and the read alone);
//! - Redis' time per MiB of a full state of random content.

use super::*;
use common::plan::Plan;
use common::rawsub::RawSubscriber;
use missionstream::{Client, Event, EventKind};
use std::collections::HashMap;

/// What identifies a state the callback receives among those sent: its
/// length and Fossil checksum (~0.1 ms per MiB, against ~0.7 ms for
/// SipHash: the callback's own time is part of the latency measured).
fn hash_of(s: &[u8]) -> u64 {
    ((s.len() as u64) << 32) | missionstream::delta::checksum(s) as u64
}

/// Publish → callback latencies of one follower (ms): when each state was
/// handed to the leader, by `hash_of`, and how long until the follower's
/// callback got it.
#[derive(Default)]
struct Latencies {
    sent: Arc<Mutex<HashMap<u64, Instant>>>,
    got: Arc<Mutex<Vec<f64>>>,
}

impl Latencies {
    /// Takes over the follower's callback.
    fn attach(follower: &Client) -> Latencies {
        let lat = Latencies::default();
        let (s, g) = (lat.sent.clone(), lat.got.clone());
        follower.set_callback(Some(Arc::new(move |e: &Event| {
            if e.kind != EventKind::MS_EVENT_STATE {
                return;
            }
            let now = Instant::now();
            if let Some(state) = &e.state {
                if let Some(t) = s
                    .lock()
                    .unwrap()
                    .remove(&hash_of(state.as_str().as_bytes()))
                {
                    g.lock().unwrap().push((now - t).as_secs_f64() * 1e3);
                }
            }
        })));
        lat
    }

    /// A state about to be published, now.
    fn sent(&self, state: &[u8]) {
        self.sent
            .lock()
            .unwrap()
            .insert(hash_of(state), Instant::now());
    }

    /// The latencies measured so far.
    fn take(&self) -> Vec<f64> {
        std::mem::take(&mut self.got.lock().unwrap())
    }
}

fn client(url: &str) -> Client {
    let c = Client::new(url).unwrap();
    c.set_kdf_iterations(missionstream::kdf::MIN_ITERATIONS)
        .unwrap();
    c
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// What one mode measured.
struct Measured {
    bytes_per_update: f64,
    p50_ms: f64,
    p99_ms: f64,
    acked_per_s: f64,
    snapshot_reads: u64,
    /// Redis' own time per FCALL (mostly ms_publish) during the
    /// acknowledged loop, µs (`INFO commandstats`).
    redis_us_per_call: f64,
    /// AOF and replication bytes per acknowledged update, as measured
    /// (compactions within the loop included).
    aof_per_update: f64,
    repl_per_update: f64,
    /// Updates of the acknowledged loop.
    acked: u64,
    /// The loop's AOF and replication bytes by command (`by_command`).
    aof_by: ByCommand,
    repl_by: ByCommand,
    /// The record's log at the end: (entries, bytes).
    record_deltas: (u64, u64),
    /// Median time of a late join's first state (key cached), ms.
    late_join_ms: f64,
}

/// A field of `INFO <section>` as a number.
fn info_num(servers: &common::Servers, section: &str, field: &str) -> f64 {
    servers
        .redis_cli(&["INFO", section])
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

/// A replica of the benchmark's Redis (no persistence of its own), so that
/// the primary's `master_repl_offset` counts what replication sends.
pub(crate) struct Replica {
    child: std::process::Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Replica {
    pub(crate) fn start(primary: &common::Servers) -> Replica {
        let port = common::free_port();
        let dir = primary.dir.join(format!("replica-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--dir", &dir.display().to_string()])
            .args(["--appendonly", "no", "--save", ""])
            .args(["--replicaof", "127.0.0.1", &primary.redis_port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server");
        let r = Replica { child, port, dir };
        wait_for(Duration::from_secs(30), || {
            let out = std::process::Command::new("redis-cli")
                .args(["-p", &r.port.to_string(), "INFO", "replication"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            out.contains("master_link_status:up")
        });
        r
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A replica of nothing but a socket: it asks for a full resync
/// (`PSYNC ? -1`), skips the snapshot and keeps every byte of the
/// replication stream after it, as Redis sends it to a replica.
struct RawReplica {
    stream: std::net::TcpStream,
    got: Arc<Mutex<Vec<u8>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RawReplica {
    fn start(port: u16) -> RawReplica {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"PSYNC ? -1\r\n").unwrap();
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 65536];
        let mut fill = |buf: &mut Vec<u8>, s: &mut std::net::TcpStream| {
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0, "the benchmark broke: Redis closed the raw replica");
            buf.extend_from_slice(&chunk[..n]);
        };
        // "+FULLRESYNC <id> <offset>\r\n", newlines while the snapshot is
        // made, "$<length>\r\n" and the snapshot (no CRLF after it).
        let line_end = |buf: &[u8]| buf.windows(2).position(|w| w == b"\r\n");
        while line_end(&buf).is_none() {
            fill(&mut buf, &mut s);
        }
        buf.drain(..line_end(&buf).unwrap() + 2);
        loop {
            while buf.first() == Some(&b'\n') {
                buf.remove(0);
            }
            if buf.first() == Some(&b'$') && line_end(&buf).is_some() {
                break;
            }
            fill(&mut buf, &mut s);
        }
        let end = line_end(&buf).unwrap();
        let len: usize = std::str::from_utf8(&buf[1..end]).unwrap().parse().unwrap();
        buf.drain(..end + 2);
        while buf.len() < len {
            fill(&mut buf, &mut s);
        }
        buf.drain(..len);
        let got = Arc::new(Mutex::new(buf));
        let (g, mut r) = (got.clone(), s.try_clone().unwrap());
        let thread = std::thread::spawn(move || {
            let mut chunk = vec![0u8; 65536];
            while let Ok(n) = r.read(&mut chunk) {
                if n == 0 {
                    return;
                }
                g.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
        RawReplica {
            stream: s,
            got,
            thread: Some(thread),
        }
    }

    /// The bytes received since the last call.
    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut self.got.lock().unwrap())
    }
}

impl Drop for RawReplica {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The newest incremental file of Redis' multi-part AOF.
fn incr_aof(dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::read_dir(dir.join("appendonlydir"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".incr.aof"))
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .expect("an incremental AOF file")
}

/// A file's bytes from `at` on.
fn read_from(path: &std::path::Path, at: u64) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let mut b = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        if f.seek(SeekFrom::Start(at)).is_ok() {
            let _ = f.read_to_end(&mut b);
        }
    }
    b
}

/// Bytes and count by command and key (`HSET record`, `APPEND log`,
/// `PUBLISH channel`, ...), the largest first.
type ByCommand = Vec<(String, u64, u64)>;

/// The commands of a stretch of AOF or replication stream, by command and
/// the kind of key they write (the record `stream:<name>`, its log
/// `msl:<name>`, the index `streams`, the stream's channel); a torn tail
/// is left out.
fn by_command(b: &[u8], channel: &str) -> ByCommand {
    let mut by: HashMap<String, (u64, u64)> = HashMap::new();
    let mut at = 0;
    while at < b.len() {
        if b[at] == b'\n' {
            at += 1;
            continue;
        }
        let Some((parts, next)) = common::resp_command(b, at) else {
            break;
        };
        let mut name =
            String::from_utf8_lossy(parts.first().map_or(&b"?"[..], |p| p)).to_uppercase();
        if let Some(key) = parts
            .get(1)
            .filter(|_| !matches!(name.as_str(), "MULTI" | "EXEC" | "PING" | "REPLCONF"))
        {
            let key = String::from_utf8_lossy(key);
            let kind = if key.starts_with("stream:") {
                "record"
            } else if key.starts_with("msl:") {
                "log"
            } else if key == "streams" {
                "index"
            } else if key == channel {
                "channel"
            } else if name == "SELECT" {
                ""
            } else {
                "other"
            };
            if !kind.is_empty() {
                name = format!("{name} {kind}");
            }
            if name == "HSET record" && parts.iter().skip(2).step_by(2).any(|f| f == b"s") {
                // A compaction (or a full state): the state written whole.
                name = "HSET record (whole state)".into();
            }
        }
        let e = by.entry(name).or_default();
        e.0 += (next - at) as u64;
        e.1 += 1;
        at = next;
    }
    let mut v: ByCommand = by.into_iter().map(|(k, (n, c))| (k, n, c)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}

/// The total bytes of a breakdown.
fn total(by: &ByCommand) -> u64 {
    by.iter().map(|e| e.1).sum()
}

/// How many commands of a name (and key kind) a breakdown holds.
fn count(by: &ByCommand, name: &str) -> u64 {
    by.iter().filter(|e| e.0 == name).map(|e| e.2).sum()
}

/// "PUBLISH channel 130 B (1.0 per update), ..." per update.
fn breakdown(by: &ByCommand, updates: u64) -> String {
    by.iter()
        .map(|(k, n, c)| {
            format!(
                "{k} {:.0} B ({:.2} per update)",
                *n as f64 / updates as f64,
                *c as f64 / updates as f64
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Median of a late join's first state: a follower whose key is cached
/// connects again (the round trips and the snapshot read alone), `n` times.
fn late_join_ms(url: &str, name: &str, n: usize) -> f64 {
    let f = client(url);
    let got = Arc::new(AtomicU64::new(0));
    let g = got.clone();
    f.set_callback(Some(Arc::new(move |e: &Event| {
        if e.kind == EventKind::MS_EVENT_STATE {
            g.fetch_add(1, Ordering::SeqCst);
        }
    })));
    f.connect(name, PASSWORD).unwrap();
    wait_for(Duration::from_secs(30), || got.load(Ordering::SeqCst) >= 1);
    let mut times = Vec::new();
    for _ in 0..n {
        let _ = f.disconnect(name);
        std::thread::sleep(Duration::from_millis(50));
        let before = got.load(Ordering::SeqCst);
        let t = Instant::now();
        f.connect(name, PASSWORD).unwrap();
        wait_for(Duration::from_secs(30), || {
            got.load(Ordering::SeqCst) > before
        });
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let _ = f.disconnect(name);
    pct(&mut times, 0.5)
}

/// usec_per_call of FCALL in `INFO commandstats`.
fn fcall_us(info: &str) -> f64 {
    info.lines()
        .find(|l| l.starts_with("cmdstat_fcall:"))
        .and_then(|l| {
            l.split(',')
                .find_map(|kv| kv.strip_prefix("usec_per_call="))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

impl Bench {
    /// One plan size, one mode (deltas on or off).
    fn row13_measure(&self, initial: &Plan, deltas: bool) -> Measured {
        let url = self.servers.url.clone();
        let name = self.stream_name(if deltas { "delta" } else { "full" });
        let leader = client(&url);
        leader.set_deltas(deltas);
        let follower = client(&url);
        let lat = Latencies::attach(&follower);
        leader.start(&name, PASSWORD, CODE).unwrap();
        let mut plan = Plan::survey(initial.waypoints(), 13);
        let text = plan.text();
        leader.publish(&name, text.as_bytes()).unwrap();
        leader.flush(&name, 30_000).unwrap();
        follower.connect(&name, PASSWORD).unwrap();
        let channel = self.servers.record_field(&name, "channel");
        let counted = Arc::new(AtomicU64::new(0));
        let messages = Arc::new(AtomicU64::new(0));
        let raw = {
            let (counted, messages) = (counted.clone(), messages.clone());
            // Every payload of a state: `s` (a full state's header), `r`
            // (its body), `d` (a delta); updates are the `s` and `d`.
            RawSubscriber::start(self.port, &channel, move |payload| {
                let update = payload.starts_with("s ") || payload.starts_with("d ");
                if update || payload.starts_with("r ") {
                    counted.fetch_add(payload.len() as u64, Ordering::Relaxed);
                }
                if update {
                    messages.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        let reads_before = follower.delta_snapshot_reads();
        // Latency at 20 updates/s.
        let secs = if self.quick { 2.0 } else { 8.0 };
        let n = (secs * 20.0) as usize;
        let start = Instant::now();
        for i in 0..n {
            let at = start + Duration::from_millis(50 * i as u64);
            if let Some(d) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
            plan.move_waypoint(i * 37, 0.00001, 0.00001);
            let text = plan.text();
            lat.sent(text.as_bytes());
            leader.publish(&name, text.as_bytes()).unwrap();
        }
        leader.flush(&name, 30_000).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let mut l = lat.take();
        let (p50, p99) = (pct(&mut l, 0.5), pct(&mut l, 0.99));
        // Acknowledged publishes/s: a ring of states one waypoint apart,
        // the waypoints spread over the whole plan.
        let mut ring = Vec::new();
        let spread = |i: usize| i * plan.waypoints() / 10 + 3;
        let spread: Vec<usize> = (0..10).map(spread).collect();
        for &w in &spread {
            plan.move_waypoint(w, 0.00002, 0.0);
            ring.push(plan.text());
        }
        for &w in spread.iter().rev() {
            plan.move_waypoint(w, -0.00002, 0.0);
            ring.push(plan.text());
        }
        let secs = if self.quick { 1.5 } else { 5.0 };
        // The follower stays through the acknowledged loop (its library
        // applies every delta, as the 1 KiB rate's follower gets every
        // state), its callback now doing nothing: the latency loop's hash
        // of each 1 MiB state is the benchmark's own work, not the
        // library's, and would take the 2 cores' time from the leader.
        follower.set_callback(Some(Arc::new(|_: &Event| {})));
        // The channel, the AOF and the replication stream, counted over
        // the same loop: a raw replica of its own (every byte Redis sends
        // a replica) and the growth of the AOF's incremental file, by
        // command (with deltas: a full state's are its HSET and PUBLISH).
        let raw_replica = deltas.then(|| RawReplica::start(self.servers.redis_port));
        let aof_file = incr_aof(&self.servers.dir);
        std::thread::sleep(Duration::from_millis(300));
        raw_replica.as_ref().map(RawReplica::take);
        let aof_at = std::fs::metadata(&aof_file).map_or(0, |m| m.len());
        let (bytes0, msgs0) = (
            counted.load(Ordering::Relaxed),
            messages.load(Ordering::Relaxed),
        );
        self.servers.redis_cli(&["CONFIG", "RESETSTAT"]);
        let aof0 = info_num(&self.servers, "persistence", "aof_current_size");
        let repl0 = info_num(&self.servers, "replication", "master_repl_offset");
        let t0 = Instant::now();
        let mut acked = 0u64;
        // With deltas, on until the record was composed or compacted at
        // least once (seen in the AOF), so that their cost is in the loop.
        let rewritten = |aof: &[u8]| {
            let by = by_command(aof, &channel);
            count(&by, "SET log") + count(&by, "HSET record (whole state)") > 0
        };
        let mut seen = !deltas;
        while t0.elapsed().as_secs_f64() < secs || (!seen && t0.elapsed().as_secs_f64() < 120.0) {
            let text = &ring[acked as usize % ring.len()];
            leader.publish(&name, text.as_bytes()).unwrap();
            leader.flush(&name, 30_000).unwrap();
            acked += 1;
            if !seen && acked % 250 == 0 && t0.elapsed().as_secs_f64() >= secs {
                seen = rewritten(&read_from(&aof_file, aof_at));
            }
        }
        let rate = acked as f64 / t0.elapsed().as_secs_f64();
        let redis_us = fcall_us(&self.servers.redis_cli(&["INFO", "commandstats"]));
        // Every update on the channel (the raw subscriber may lag), and
        // the AOF's writes (appendfsync everysec: a write waiting for a
        // slow fsync is postponed up to 2 s). A raw subscriber through
        // Webdis that falls far behind (full states of ~1 MiB at the
        // primary's full rate on a loaded machine) can miss updates (seen:
        // 278 of 507): the bytes per update are then those of the updates
        // it saw, and a line says so.
        let caught_up = Instant::now() + Duration::from_secs(60);
        while messages.load(Ordering::Relaxed) - msgs0 < acked && Instant::now() < caught_up {
            std::thread::sleep(Duration::from_millis(1));
        }
        let seen = messages.load(Ordering::Relaxed) - msgs0;
        if seen < acked {
            println!(
                "    (the raw subscriber saw {seen} of the {acked} {} within 60 s: bytes on the channel per update of those seen)",
                if deltas { "deltas" } else { "full states" }
            );
        }
        assert!(
            seen > 0,
            "the benchmark broke: the raw subscriber saw none of the {acked} updates"
        );
        std::thread::sleep(Duration::from_millis(2500));
        let aof = info_num(&self.servers, "persistence", "aof_current_size") - aof0;
        let repl = info_num(&self.servers, "replication", "master_repl_offset") - repl0;
        let channel_bytes = counted.load(Ordering::Relaxed) - bytes0;
        let aof_bytes = if deltas {
            read_from(&aof_file, aof_at)
        } else {
            Vec::new()
        };
        let repl_bytes = raw_replica
            .as_ref()
            .map(RawReplica::take)
            .unwrap_or_default();
        drop(raw_replica);
        let aof_by = by_command(&aof_bytes, &channel);
        let repl_by = by_command(&repl_bytes, &channel);
        // The record's log (docs/PROTOCOL.md, "The record"): its entries
        // and bytes.
        let record_deltas = common::record::newest(self.servers.redis_port, &name)
            .map_or((0, 0), |n| (n.entries as u64, n.log_bytes as u64));
        let late = late_join_ms(&url, &name, if self.quick { 3 } else { 7 });
        drop(raw);
        let _ = follower.disconnect(&name);
        let _ = leader.stop(&name);
        Measured {
            bytes_per_update: channel_bytes as f64 / seen.min(acked) as f64,
            p50_ms: p50,
            p99_ms: p99,
            acked_per_s: rate,
            snapshot_reads: follower.delta_snapshot_reads() - reads_before,
            redis_us_per_call: redis_us,
            aof_per_update: aof / acked as f64,
            repl_per_update: repl / acked as f64,
            acked,
            aof_by,
            repl_by,
            record_deltas,
            late_join_ms: late,
        }
    }

    /// Acknowledged publishes/s of a 1 KiB state (deltas on, as a leader
    /// sends by default: a 1 KiB state goes in full anyway).
    fn row13_rate_1k(&self) -> f64 {
        let url = self.servers.url.clone();
        let name = self.stream_name("rate1k");
        let leader = client(&url);
        leader.start(&name, PASSWORD, CODE).unwrap();
        // A follower, as in the plans' acknowledged loops: its library
        // takes every state, its callback does nothing.
        let follower = client(&url);
        follower.set_callback(Some(Arc::new(|_: &Event| {})));
        follower.connect(&name, PASSWORD).unwrap();
        let secs = if self.quick { 1.5 } else { 5.0 };
        let t0 = Instant::now();
        let mut acked = 0u64;
        while t0.elapsed().as_secs_f64() < secs {
            let text = format!("{{\"i\":{acked},\"pad\":\"{}\"}}", "x".repeat(1000));
            leader.publish(&name, text.as_bytes()).unwrap();
            leader.flush(&name, 30_000).unwrap();
            acked += 1;
        }
        let rate = acked as f64 / t0.elapsed().as_secs_f64();
        let _ = follower.disconnect(&name);
        let _ = leader.stop(&name);
        rate
    }

    /// Full states of 1 MiB of random printable content (no delta could be
    /// small): Redis' time per FCALL (µs, `INFO commandstats`) and
    /// acknowledged publishes/s.
    fn row13_full_random(&self) -> (f64, f64) {
        let url = self.servers.url.clone();
        let name = self.stream_name("random");
        let leader = client(&url);
        leader.set_deltas(false);
        leader.start(&name, PASSWORD, CODE).unwrap();
        let mut x = 0x2545f4914f6cdd1du64;
        let mut states = Vec::new();
        for _ in 0..4 {
            let mut s = String::with_capacity(MIB);
            s.push_str("{\"r\":\"");
            while s.len() < MIB - 2 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                s.push((b'a' + (x % 26) as u8) as char);
            }
            s.push_str("\"}");
            states.push(s);
        }
        leader.publish(&name, states[0].as_bytes()).unwrap();
        leader.flush(&name, 30_000).unwrap();
        self.servers.redis_cli(&["CONFIG", "RESETSTAT"]);
        let secs = if self.quick { 2.0 } else { 5.0 };
        let t0 = Instant::now();
        let mut acked = 0usize;
        while t0.elapsed().as_secs_f64() < secs {
            leader.publish(&name, states[acked % 4].as_bytes()).unwrap();
            leader.flush(&name, 30_000).unwrap();
            acked += 1;
        }
        let rate = acked as f64 / t0.elapsed().as_secs_f64();
        let us = fcall_us(&self.servers.redis_cli(&["INFO", "commandstats"]));
        let _ = leader.stop(&name);
        (us, rate)
    }

    /// p50 of publish → callback for a 1 KiB state at 20/s (the reference
    /// of the delta latency target).
    fn row13_reference(&self) -> f64 {
        // As a leader sends it by default (deltas on; the other rows turn
        // them off on their own clients).
        let url = self.servers.url.clone();
        let name = self.stream_name("ref1k");
        let leader = client(&url);
        let follower = client(&url);
        let lat = Latencies::attach(&follower);
        leader.start(&name, PASSWORD, CODE).unwrap();
        follower.connect(&name, PASSWORD).unwrap();
        let n = if self.quick { 40 } else { 160 };
        let start = Instant::now();
        for i in 0..n {
            let at = start + Duration::from_millis(50 * i as u64);
            if let Some(d) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
            let text = format!("{{\"i\":{i},\"pad\":\"{}\"}}", "x".repeat(1000));
            lat.sent(text.as_bytes());
            leader.publish(&name, text.as_bytes()).unwrap();
        }
        leader.flush(&name, 30_000).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let _ = follower.disconnect(&name);
        let _ = leader.stop(&name);
        pct(&mut lat.take(), 0.5)
    }

    pub(crate) fn row13_deltas(&mut self) {
        let sizes: &[usize] = if self.quick {
            &[100 * KIB]
        } else {
            &[100 * KIB, MIB]
        };
        println!("\n[13] deltas against full states: survey plans, one waypoint moved per update");
        // Rewrites would shrink the AOF under the measure: off for this row.
        self.servers
            .redis_cli(&["CONFIG", "SET", "auto-aof-rewrite-percentage", "0"]);
        let replica = Replica::start(&self.servers);
        let ref_p50 = self.row13_reference();
        let rate_1k = self.row13_rate_1k();
        println!(
            "  1 KiB state at 20/s: publish -> callback p50 {ref_p50:.2} ms; {rate_1k:.1} acked/s"
        );
        for &size in sizes {
            let plan = Plan::of_size(size, 13);
            let bytes = plan.text().len();
            let label = format!("{} KiB plan ({} waypoints)", bytes / KIB, plan.waypoints());
            self.quiesce();
            let full = self.row13_measure(&plan, false);
            self.quiesce();
            let delta = self.row13_measure(&plan, true);
            println!(
                "  {label}: full {:.0} B/update, p50 {:.2} ms, p99 {:.2} ms, {:.1} acked/s; \
                 delta {:.0} B/update, p50 {:.2} ms, p99 {:.2} ms, {:.1} acked/s, {} snapshot reads; \
                 Redis time per FCALL: full {:.0} us, delta {:.0} us",
                full.bytes_per_update,
                full.p50_ms,
                full.p99_ms,
                full.acked_per_s,
                delta.bytes_per_update,
                delta.p50_ms,
                delta.p99_ms,
                delta.acked_per_s,
                delta.snapshot_reads,
                full.redis_us_per_call,
                delta.redis_us_per_call
            );
            // The loop's own figures include the compositions and
            // compactions of the record (docs/PROTOCOL.md, "The record").
            let (n, _) = delta.record_deltas;
            let aof = delta.aof_per_update;
            let repl = delta.repl_per_update;
            let rewrites =
                |by: &ByCommand| (count(by, "SET log"), count(by, "HSET record (whole state)"));
            let (composed, compacted) = rewrites(&delta.aof_by);
            println!(
                "  {label}: AOF per update full {:.0} B, delta {aof:.0} B; replication full {:.0} B, delta {repl:.0} B \
                 ({} updates acknowledged: {composed} compositions, {compacted} compactions, {} entries in the \
                 record's log at the end); late join full {:.2} ms, delta {:.2} ms",
                full.aof_per_update,
                full.repl_per_update,
                delta.acked,
                n,
                full.late_join_ms,
                delta.late_join_ms
            );
            for (what, by, counted) in [
                ("AOF", &delta.aof_by, aof),
                ("replication", &delta.repl_by, repl),
            ] {
                println!(
                    "    {what} per delta update by command ({:.0} B parsed of {counted:.0} B): {}",
                    total(by) as f64 / delta.acked as f64,
                    breakdown(by, delta.acked)
                );
            }
            let share = delta.bytes_per_update / bytes as f64 * 100.0;
            self.row(
                &format!("13. bytes per update on the channel, {label}"),
                format!("{:.0} B ({share:.3} % of the plan)", delta.bytes_per_update),
                format!("{:.0} B in full", full.bytes_per_update),
                format!("{:.4}", delta.bytes_per_update / full.bytes_per_update),
                "<= 1 % of the state",
                if share <= 1.0 { "met" } else { "MISSED" },
            );
            let ratio = aof / delta.bytes_per_update;
            self.row(
                &format!("13. AOF bytes per update, {label}"),
                format!("{aof:.0} B ({composed} compositions, {compacted} compactions)"),
                format!("{:.0} B full record", full.aof_per_update),
                format!("{ratio:.1} x the delta"),
                "<= 4 x the delta's bytes",
                if ratio <= 4.0 { "met" } else { "MISSED" },
            );
            let ratio = repl / delta.bytes_per_update;
            self.row(
                &format!("13. replication bytes per update, {label}"),
                format!("{repl:.0} B ({composed} compositions, {compacted} compactions)"),
                format!("{:.0} B full record", full.repl_per_update),
                format!("{ratio:.1} x the delta"),
                "<= 4 x the delta's bytes",
                if ratio <= 4.0 { "met" } else { "MISSED" },
            );
            self.row(
                &format!("13. publish -> callback at 20/s, {label}"),
                format!("p50 {:.2} ms, p99 {:.2} ms", delta.p50_ms, delta.p99_ms),
                format!(
                    "full p50 {:.2} ms, p99 {:.2} ms; 1 KiB p50 {ref_p50:.2} ms",
                    full.p50_ms, full.p99_ms
                ),
                format!("{:.2} x 1 KiB", delta.p50_ms / ref_p50),
                "p50 <= 1.5 x the 1 KiB p50",
                if delta.p50_ms <= 1.5 * ref_p50 {
                    "met"
                } else {
                    "MISSED"
                },
            );
            self.row(
                &format!("13. acknowledged publishes/s, {label}"),
                format!(
                    "{:.1}/s ({} snapshot reads by deltas)",
                    delta.acked_per_s, delta.snapshot_reads
                ),
                format!("{rate_1k:.1}/s of 1 KiB; {:.1}/s in full", full.acked_per_s),
                format!("{:.2} x 1 KiB", delta.acked_per_s / rate_1k),
                ">= 0.5 x the 1 KiB rate",
                if delta.acked_per_s >= 0.5 * rate_1k {
                    "met"
                } else {
                    "MISSED"
                },
            );
            self.row(
                &format!("13. late join (snapshot read), {label}"),
                format!("{:.2} ms from base + deltas", delta.late_join_ms),
                format!("{:.2} ms from a full record", full.late_join_ms),
                format!("{:.2} x", delta.late_join_ms / full.late_join_ms),
                "<= 2 x a full-state read",
                if delta.late_join_ms <= 2.0 * full.late_join_ms {
                    "met"
                } else {
                    "MISSED"
                },
            );
        }
        drop(replica);
        self.quiesce();
        let (us, rate) = self.row13_full_random();
        println!(
            "  1 MiB of random content in full: Redis {us:.0} us per FCALL, {rate:.1} acked/s"
        );
        self.row(
            "13. Redis time per full MiB (random content)",
            format!("{:.2} ms per FCALL", us / 1000.0),
            format!("{rate:.1} acked/s"),
            "-".to_string(),
            "<= 3 ms per MiB",
            if us <= 3000.0 { "met" } else { "MISSED" },
        );
        self.servers
            .redis_cli(&["CONFIG", "SET", "auto-aof-rewrite-percentage", "100"]);
    }
}
