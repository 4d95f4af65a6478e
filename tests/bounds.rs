//! Bounded memory, threads and sockets. One test per binary run, in
//! sequence, so that process-wide counts are not disturbed by other tests.

mod common;

use common::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn proc_status(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn rss_kib() -> u64 {
    proc_status("VmRSS:")
}

#[test]
fn bounded_resources() {
    let s = Servers::start();
    slow_callback_under_a_flood_keeps_memory_bounded(&s);
    connect_disconnect_cycles_leave_nothing_behind(&s);
    leads_share_one_network_thread_and_its_workers(&s);
    let n = std::env::var("MS_FIXED_THREADS_STREAMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    leads_and_follows_run_on_a_fixed_set_of_threads(&s, n);
}

/// The same with 1,000 leads and 1,000 follows (about a minute of key
/// derivations alone on a loaded 2-core machine, so not in `make test`;
/// the suite runs 200 + 200 above with the same bound).
#[test]
#[ignore]
fn a_thousand_leads_and_follows_on_a_fixed_set_of_threads() {
    raise_fd_limit();
    let s = Servers::start();
    leads_and_follows_run_on_a_fixed_set_of_threads(&s, 1000);
}

/// Each follow holds a socket here and three in Webdis (which inherits
/// this limit); each lead one in Webdis.
fn raise_fd_limit() {
    // SAFETY: plain system calls on a struct of this function's.
    unsafe {
        let mut l: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

/// One client leading `n` streams of small states and following all `n`:
/// its threads are the network thread, the 4 request workers and the
/// dispatcher, whatever `n` (at most 8 above the test's own, with room
/// for a thread of the test harness); every follow gets its first state
/// (connect returns once it is queued); a state published afterwards
/// reaches the follows; freeing the client ends every thread.
fn leads_and_follows_run_on_a_fixed_set_of_threads(s: &Servers, n: usize) {
    raise_fd_limit();
    let t0 = threads();
    let client = s.client();
    client
        .set_kdf_iterations(missionstream::kdf::MIN_ITERATIONS)
        .unwrap();
    client.set_timeout(30_000).unwrap();
    let names: Vec<String> = (0..n).map(|_| unique("fixed")).collect();
    let started = Instant::now();
    // The key derivations (start and connect each derive) on two threads
    // of the test's; they end before threads are counted.
    std::thread::scope(|sc| {
        for half in names.chunks(n.div_ceil(2)) {
            let client = &client;
            sc.spawn(move || {
                for name in half {
                    client.start(name, "pw", "code").unwrap();
                    client.publish(name, b"{\"v\":1}").unwrap();
                }
            });
        }
    });
    for name in &names {
        client.flush(name, 30_000).unwrap();
    }
    let led = started.elapsed();
    let got: Arc<Mutex<std::collections::HashMap<String, u64>>> = Arc::default();
    let g = got.clone();
    client.set_callback(Some(Arc::new(move |e: &missionstream::Event| {
        if e.state.is_some() {
            let mut m = g.lock().unwrap();
            let seq = m.entry(e.stream_name().to_string()).or_insert(0);
            *seq = (*seq).max(e.seq);
        }
    })));
    std::thread::scope(|sc| {
        for half in names.chunks(n.div_ceil(2)) {
            let client = &client;
            sc.spawn(move || {
                for name in half {
                    client.connect(name, "pw").unwrap();
                }
            });
        }
    });
    let followed = started.elapsed();
    let t1 = threads();
    wait_until(Duration::from_secs(30), || got.lock().unwrap().len() == n);
    assert_eq!(
        got.lock().unwrap().len(),
        n,
        "every follow got its first state"
    );
    // One more state on every stream: each follow gets it.
    let first: std::collections::HashMap<String, u64> = got.lock().unwrap().clone();
    for name in &names {
        client.publish(name, b"{\"v\":2}").unwrap();
    }
    wait_until(Duration::from_secs(60), || {
        let m = got.lock().unwrap();
        names.iter().all(|name| m.get(name) > first.get(name))
    });
    let t2 = threads();
    let (fd, rss) = (fds(), rss_kib());
    eprintln!(
        "{n} leads + {n} follows on one client: led in {led:?}, followed in {followed:?}; \
         threads {t0} -> {t1} -> {t2}, fds {fd}, RSS {rss} KiB"
    );
    {
        let m = got.lock().unwrap();
        let late = names
            .iter()
            .filter(|name| m.get(*name) <= first.get(*name))
            .count();
        assert_eq!(late, 0, "follows without the second state");
    }
    assert!(
        t1 <= t0 + 8 && t2 <= t0 + 8,
        "threads {t0} -> {t1} -> {t2} for {n} leads + {n} follows"
    );
    drop(client);
    let settle = Instant::now();
    while threads() > t0 && settle.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        threads() <= t0,
        "threads left behind: {t0} -> {}",
        threads()
    );
}

/// A client's leads run on its network thread and 4 request workers,
/// whatever their number: 40 leads add 6 threads (those and the
/// dispatcher), not 40; every lead's state is stored; freeing the client
/// ends them all.
fn leads_share_one_network_thread_and_its_workers(s: &Servers) {
    let t0 = threads();
    let leader = s.client();
    let names: Vec<String> = (0..40).map(|_| unique("shared-thread")).collect();
    for name in &names {
        leader.start(name, "pw", "code").unwrap();
    }
    let t1 = threads();
    for (i, name) in names.iter().enumerate() {
        leader
            .publish(name, format!("{{\"lead\":{i}}}").as_bytes())
            .unwrap();
    }
    for name in &names {
        leader.flush(name, 20_000).unwrap();
    }
    for (i, name) in names.iter().enumerate().step_by(7) {
        assert_eq!(
            newest_state(s.redis_port, name),
            format!("{{\"lead\":{i}}}")
        );
    }
    let t2 = threads();
    eprintln!("40 leads: threads {t0} -> {t1} -> {t2}");
    assert!(t1 <= t0 + 6 && t2 <= t0 + 6, "threads {t0} -> {t1} -> {t2}");
    drop(leader);
    let settle = Instant::now();
    while threads() > t0 && settle.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        threads() <= t0,
        "threads left behind: {t0} -> {}",
        threads()
    );
}

/// A callback sleeping 50 ms per event, 20,000 publishes of 20 KB.
fn slow_callback_under_a_flood_keeps_memory_bounded(s: &Servers) {
    let leader = s.client();
    let follower = s.client();
    let name = unique("flood");
    leader.start(&name, "pw", "code").unwrap();
    let last = Arc::new(Mutex::new(String::new()));
    let delivered = Arc::new(AtomicU64::new(0));
    let (l, d) = (last.clone(), delivered.clone());
    follower.set_callback(Some(Arc::new(move |e: &missionstream::Event| {
        if let Some(st) = &e.state {
            *l.lock().unwrap() = st.as_str()[..40.min(st.as_str().len())].to_string();
            d.fetch_add(1, Ordering::Relaxed);
        }
        std::thread::sleep(Duration::from_millis(50));
    })));
    follower.connect(&name, "pw").unwrap();
    let pad = "x".repeat(20_000);
    let rss_before = rss_kib();
    let mut peak = rss_before;
    let start = Instant::now();
    for i in 0..20_000u32 {
        let state = format!("{{\"i\":{i:06},\"pad\":\"{pad}\"}}");
        leader.publish(&name, state.as_bytes()).unwrap();
        if i % 500 == 0 {
            peak = peak.max(rss_kib());
            assert!(
                follower.queued_events() <= 1,
                "queue grew to {}",
                follower.queued_events()
            );
        }
    }
    leader.flush(&name, 30_000).unwrap();
    wait_until(Duration::from_secs(30), || {
        last.lock().unwrap().starts_with("{\"i\":019999,")
    });
    peak = peak.max(rss_kib());
    eprintln!(
        "flood: {} publishes in {:?}, {} delivered, RSS {} -> peak {} KiB",
        20_000,
        start.elapsed(),
        delivered.load(Ordering::Relaxed),
        rss_before,
        peak
    );
    // 20,000 x 20 KB = 400 MB published; only a handful of states may be
    // alive at once (pending, in flight, queued, in the callback).
    assert!(
        peak - rss_before < 64 * 1024,
        "RSS grew by {} KiB",
        peak - rss_before
    );
    assert!(
        delivered.load(Ordering::Relaxed) < 2_000,
        "a slow callback sees coalesced states"
    );
    drop(follower);
    drop(leader);
}

/// Connect/disconnect cycles: no thread, socket or memory left behind.
fn connect_disconnect_cycles_leave_nothing_behind(s: &Servers) {
    let cycles: usize = std::env::var("MS_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let leader = s.client();
    // No heartbeat during the cycles: nothing is published on the channel,
    // so a subscription left open stays open (a message would end its
    // reader when it finds the session gone, and hide the leak).
    leader.set_heartbeat(600_000).unwrap();
    let name = unique("cycles");
    leader.start(&name, "pw", "code").unwrap();
    let follower = s.client();
    follower.set_callback(Some(Arc::new(|_e: &missionstream::Event| {})));
    // Warm up allocator pools and lazy statics.
    for _ in 0..50 {
        follower.connect(&name, "pw").unwrap();
        follower.disconnect(&name).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let (t0, f0, r0) = (threads(), fds(), rss_kib());
    let start = Instant::now();
    for _ in 0..cycles {
        follower.connect(&name, "pw").unwrap();
        follower.disconnect(&name).unwrap();
    }
    let took = start.elapsed();
    // Threads end right after disconnect returns; give them a moment.
    let settle = Instant::now();
    // The client's keep-alive pool may hold a connection or two more or
    // less than at the start; a leak would show as thousands.
    let slack = 2;
    while (threads() > t0 || fds() > f0 + slack) && settle.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (t1, f1, r1) = (threads(), fds(), rss_kib());
    eprintln!(
        "{cycles} cycles in {took:?}: threads {t0} -> {t1}, fds {f0} -> {f1}, RSS {r0} -> {r1} KiB"
    );
    assert!(t1 <= t0, "threads left behind: {t0} -> {t1}");
    assert!(f1 <= f0 + slack, "sockets left behind: {f0} -> {f1}");
    assert!(r1 <= r0 + 2 * 1024, "RSS grew by {} KiB", r1 - r0);
    // Redis sees no subscriber left.
    wait_until(Duration::from_secs(2), || {
        leader.list().unwrap()[0].followers == 0
    });
}
