//! Row 13 of the benchmark: deltas against full states, in the same run,
//! for QGroundControl survey plans of ~100 KiB and ~1 MiB
//! (tests/common/plan.rs), one waypoint moved per update:
//!
//! - bytes per update on the channel (a raw Webdis subscriber counts the
//!   payloads of `s` and `d` messages);
//! - publish → follower callback p50/p99 at 20 updates/s (and, as the
//!   reference, a 1 KiB state at the same rate);
//! - acknowledged publishes/s (publish + flush, one at a time);
//! - snapshot reads the followers needed because of deltas.

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
            RawSubscriber::start(self.port, &channel, move |payload| {
                if payload.starts_with("s ") || payload.starts_with("d ") {
                    counted.fetch_add(payload.len() as u64, Ordering::Relaxed);
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
        let (bytes, msgs) = (
            counted.load(Ordering::Relaxed),
            messages.load(Ordering::Relaxed),
        );
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
        self.servers.redis_cli(&["CONFIG", "RESETSTAT"]);
        let t0 = Instant::now();
        let mut acked = 0u64;
        while t0.elapsed().as_secs_f64() < secs {
            let text = &ring[acked as usize % ring.len()];
            leader.publish(&name, text.as_bytes()).unwrap();
            leader.flush(&name, 30_000).unwrap();
            acked += 1;
        }
        let rate = acked as f64 / t0.elapsed().as_secs_f64();
        let redis_us = fcall_us(&self.servers.redis_cli(&["INFO", "commandstats"]));
        drop(raw);
        let _ = follower.disconnect(&name);
        let _ = leader.stop(&name);
        Measured {
            bytes_per_update: bytes as f64 / msgs.max(1) as f64,
            p50_ms: p50,
            p99_ms: p99,
            acked_per_s: rate,
            snapshot_reads: follower.delta_snapshot_reads() - reads_before,
            redis_us_per_call: redis_us,
        }
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
        let ref_p50 = self.row13_reference();
        println!("  1 KiB state at 20/s: publish -> callback p50 {ref_p50:.2} ms");
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
            let share = delta.bytes_per_update / bytes as f64 * 100.0;
            self.row(
                &format!("13. bytes per update on the channel, {label}"),
                format!("{:.0} B ({share:.3} % of the plan)", delta.bytes_per_update),
                format!("{:.0} B in full", full.bytes_per_update),
                format!("{:.4}", delta.bytes_per_update / full.bytes_per_update),
                "<= 1 % of the state",
                if share <= 1.0 { "met" } else { "MISSED" },
            );
            self.row(
                &format!("13. publish -> callback at 20/s, {label}"),
                format!("p50 {:.2} ms, p99 {:.2} ms", delta.p50_ms, delta.p99_ms),
                format!(
                    "full p50 {:.2} ms, p99 {:.2} ms; 1 KiB p50 {ref_p50:.2} ms",
                    full.p50_ms, full.p99_ms
                ),
                format!("{:.2} x 1 KiB", delta.p50_ms / ref_p50),
                "p50 <= 3 x the 1 KiB p50",
                if delta.p50_ms <= 3.0 * ref_p50 {
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
                format!("{:.1}/s in full", full.acked_per_s),
                format!("{:.1} x", delta.acked_per_s / full.acked_per_s),
                ">= 5 x full",
                if delta.acked_per_s >= 5.0 * full.acked_per_s {
                    "met"
                } else {
                    "MISSED"
                },
            );
        }
    }
}
