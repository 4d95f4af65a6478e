//! Row 14: many streams in one process. One client leads N small streams
//! and follows the same N (N = 1,000; 100 in quick mode), each follow
//! holding its first state: the threads and the RSS the client added, and
//! the time until every follow held its first state; beside the same
//! figures of a client with 1 lead + 1 follow, same run. Then publish →
//! callback p50 of one stream of the big client (its N follows idle)
//! beside the same of the small client, in interleaved blocks on one
//! clock (as row 3).
//!
//! Each client follows the streams it leads: its key cache holds their
//! keys from the start, so a connect is its round trips and subscription,
//! without the key derivation (the same for both clients).

use super::*;
use missionstream::{Client, Event, EventKind};
use std::collections::HashSet;

/// The process' threads (`Threads:` of /proc/self/status).
fn threads() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// What a client's callback saw: the streams that delivered a state, and
/// the publish → callback latencies (ns) of the stream `timed`.
struct Watch {
    seen: Mutex<HashSet<String>>,
    timed: String,
    samples: Mutex<Vec<(u64, u64)>>,
}

impl Watch {
    fn attach(client: &Client, timed: &str) -> Arc<Watch> {
        let w = Arc::new(Watch {
            seen: Mutex::new(HashSet::new()),
            timed: timed.to_string(),
            samples: Mutex::new(Vec::new()),
        });
        let watch = w.clone();
        client.set_callback(Some(Arc::new(move |e: &Event| {
            let now = now_ns();
            if e.kind != EventKind::MS_EVENT_STATE {
                return;
            }
            let name = e.stream.to_str().unwrap_or("");
            if name == watch.timed {
                if let Some((t, k)) = e
                    .state
                    .as_ref()
                    .and_then(|s| parse_tk(s.as_str().as_bytes()))
                {
                    watch
                        .samples
                        .lock()
                        .unwrap()
                        .push((k, now.saturating_sub(t)));
                }
            }
            let mut seen = watch.seen.lock().unwrap();
            if !seen.contains(name) {
                seen.insert(name.to_string());
            }
        })));
        w
    }

    fn seen(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// A client leading and following `n` streams.
struct Many {
    client: Client,
    watch: Arc<Watch>,
    names: Vec<CString>,
    /// RSS (KiB) once the leads were started, before the follows.
    rss_leads: u64,
    /// From the first ms_connect until every follow held its first state.
    connect: Duration,
}

/// Runs `f` on each name, on two threads (the KDF of a start is a core's
/// work).
fn on_two_threads(names: &[String], f: impl Fn(&str) + Sync) {
    let half = names.len().div_ceil(2).max(1);
    std::thread::scope(|s| {
        for chunk in names.chunks(half) {
            let f = &f;
            s.spawn(move || chunk.iter().for_each(|n| f(n)));
        }
    });
}

impl Bench {
    fn row14_client(&self, n: usize) -> Many {
        let client = Client::new(&self.servers.url).unwrap();
        client
            .set_kdf_iterations(missionstream::kdf::MIN_ITERATIONS)
            .unwrap();
        // As rows 1-12: every state in full.
        client.set_deltas(false);
        let names: Vec<String> = (0..n).map(|_| self.stream_name("many")).collect();
        let watch = Watch::attach(&client, &names[0]);
        on_two_threads(&names, |name| {
            client.start(name, PASSWORD, CODE).unwrap();
            client.publish(name, b"{\"small\":true}").unwrap();
        });
        for name in &names {
            client.flush(name, 60_000).unwrap();
        }
        let rss_leads = rss_kib();
        let t0 = Instant::now();
        on_two_threads(&names, |name| client.connect(name, PASSWORD).unwrap());
        wait_for(Duration::from_secs(300), || watch.seen() == n);
        let connect = t0.elapsed();
        Many {
            client,
            watch,
            names: names.iter().map(|n| cstr(n)).collect(),
            rss_leads,
            connect,
        }
    }

    pub(crate) fn row14_many(&mut self) {
        let n = if self.quick { 100 } else { 1000 };
        let rate = 50.0;
        let secs = if self.quick { 2.0 } else { 8.0 };
        let count = (rate * secs) as u64;
        println!(
            "\n[14] {n} leads + {n} follows of small states in one client, against 1 + 1; then publish → callback of one stream, 1 KiB, {rate:.0}/s, {count} states per side"
        );
        let (t0, r0) = (threads(), rss_kib());
        let one = self.row14_client(1);
        let (t1, r1) = (threads(), rss_kib());
        let many = self.row14_client(n);
        let (t2, r2) = (threads(), rss_kib());
        let (one_threads, many_threads) = (t1.saturating_sub(t0), t2.saturating_sub(t1));
        let (one_rss, many_rss) = (r1.saturating_sub(r0), r2.saturating_sub(r1));
        let follows_rss = r2.saturating_sub(many.rss_leads);
        println!(
            "  1 + 1: +{one_threads} threads, +{one_rss} KiB RSS, connected in {:.1} ms",
            one.connect.as_secs_f64() * 1e3
        );
        println!(
            "  {n} + {n}: +{many_threads} threads, +{many_rss} KiB RSS (the follows {follows_rss} KiB), all connected in {:.2} s; process: {t2} threads, {r2} KiB RSS, {} fds",
            many.connect.as_secs_f64(),
            count_dir("/proc/self/fd")
        );

        // Publish → callback, one stream of each client, blocks alternating.
        self.quiesce();
        let period = Duration::from_secs_f64(1.0 / rate);
        let block = (count / 10).max(1);
        let mut state = make_state(KIB);
        let mut next = Instant::now();
        let (mut ko, mut km) = (0u64, 0u64);
        while ko < count || km < count {
            let one_turn = km >= count || (ko < count && (ko / block) <= (km / block));
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
            next += period;
            let (client, name, k) = if one_turn {
                (&one.client, &one.names[0], &mut ko)
            } else {
                (&many.client, &many.names[0], &mut km)
            };
            put_digits(&mut state, K_AT, K_LEN, *k);
            put_digits(&mut state, T_AT, T_LEN, now_ns());
            client
                .publish(name.to_str().unwrap(), &state)
                .expect("ms_publish");
            *k += 1;
        }
        for m in [&one, &many] {
            m.client
                .flush(m.names[0].to_str().unwrap(), 60_000)
                .unwrap();
            wait_for(Duration::from_secs(10), || {
                m.watch.samples.lock().unwrap().last().map(|s| s.0) == Some(count - 1)
            });
        }
        let warm = (count / 20).max(5);
        let p50 = |w: &Watch| {
            let v = sorted(
                w.samples
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|x| x.0 >= warm)
                    .map(|x| x.1 as f64)
                    .collect(),
            );
            (percentile(&v, 50.0), percentile(&v, 99.0), v.len())
        };
        let (o50, o99, on) = p50(&one.watch);
        let (m50, m99, mn) = p50(&many.watch);
        println!(
            "  publish → callback: 1 + 1 p50 {} p99 {} ({on} samples); beside {n} idle follows p50 {} p99 {} ({mn} samples)",
            fmt_us(o50),
            fmt_us(o99),
            fmt_us(m50),
            fmt_us(m99)
        );
        let verdict = |ok: bool| if ok { "meets" } else { "MISSES" };
        self.row(
            &format!("14a. {n} leads + {n} follows, one client: threads added"),
            format!("{many_threads}"),
            format!("{one_threads} for 1 + 1"),
            "".into(),
            "≤ 8",
            verdict(many_threads <= 8),
        );
        // 64 MiB per 1,000 follows.
        let rss_target_kib = 64 * 1024 * n as u64 / 1000;
        self.row(
            &format!("14b. … RSS added, all (the {n} follows')"),
            format!("{} MiB ({} MiB)", many_rss / 1024, follows_rss / 1024),
            format!("{one_rss} KiB for 1 + 1"),
            "".into(),
            if n == 1000 {
                "follows ≤ 64 MiB"
            } else {
                "follows ≤ 64 MiB per 1,000"
            },
            verdict(follows_rss <= rss_target_kib),
        );
        self.row(
            "14c. … every follow holds its first state after",
            format!("{:.2} s", many.connect.as_secs_f64()),
            format!("{:.1} ms for 1", one.connect.as_secs_f64() * 1e3),
            format!(
                "{:.0}",
                many.connect.as_secs_f64() / one.connect.as_secs_f64().max(1e-9)
            ),
            "(info)",
            "",
        );
        let ratio = m50 / o50;
        self.row(
            &format!("14d. … publish→callback p50 (p99), {n} follows idle beside"),
            format!("{} ({})", fmt_us(m50), fmt_us(m99)),
            format!("{} ({}) 1 + 1", fmt_us(o50), fmt_us(o99)),
            format!("{ratio:.2}"),
            "p50 ≤ 1.1 × 1 + 1",
            verdict(ratio <= 1.1),
        );
        drop(many);
        drop(one);
    }
}
