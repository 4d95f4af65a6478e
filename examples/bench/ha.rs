//! Rows 9 to 11 of the benchmark: the replicated topology of
//! `scripts/cluster.sh` (3 Redis nodes, 1 primary + 2 replicas, 3
//! Sentinels, one Webdis per node), started by this program in a directory
//! of its own and stopped afterwards.
//!
//!  9. Failover: a leader publishing and flushing ~20 states/s, followers
//!     given the URL list (on the primary: the library as deploy/ ships it
//!     carries channel messages there only), SIGKILL of the primary's
//!     redis-server. Kill → the leader's first acknowledged publish after
//!     it, and kill → every follower holds that state (or a newer one);
//!     baseline: kill → Sentinel's promotion (`+promoted-slave` in the
//!     Sentinels' logs) in the same trial.
//! 10. Fan-out to 100 followers given the URL list (on replicas) against
//!     100 given only the primary's URL (all on the primary), same stream
//!     rate and state size: latency of the last follower per state and CPU
//!     time of the primary's Redis and Webdis per 1000 states. The library
//!     is loaded with `CHANNEL_ON_REPLICAS = true` for this row (followers
//!     on replicas), then as shipped again for row 11.
//! 11. Durability cost: acknowledged publishes/s (1 KiB, publish + flush one
//!     at a time) with `min-replicas-to-write 1` against without, on the
//!     same topology, and against the single node of rows 1 to 8.

use super::*;
use common::cluster::{alive, Cluster, NODES};
use missionstream::{Client, Event, EventKind};
use std::sync::atomic::AtomicBool;

/// Settings of every client on the topology: the request timeout (a node
/// that does not answer is given up after a third of it), and the leader's
/// heartbeat interval (a follower whose subscription went silent notices
/// after 3 of them).
const HA_TIMEOUT_MS: u32 = 4000;
const HA_HEARTBEAT_MS: u32 = 1000;

fn ha_client(url: &str) -> Client {
    let c = Client::new(url).expect("Client::new");
    c.set_deltas(false);
    c.set_timeout(HA_TIMEOUT_MS).unwrap();
    c.set_heartbeat(HA_HEARTBEAT_MS).unwrap();
    c
}

fn ns_of(at: Instant) -> u64 {
    at.saturating_duration_since(*BASE.get_or_init(Instant::now))
        .as_nanos() as u64
}

fn ms(ns: f64) -> String {
    format!("{:.0} ms", ns / 1e6)
}

/// Median and max of a list of durations (ns).
fn median_max(v: &[f64]) -> (f64, f64) {
    let s = sorted(v.to_vec());
    (percentile(&s, 50.0), *s.last().unwrap_or(&f64::NAN))
}

/// Polls `f` every millisecond for up to `timeout`; whether it held.
fn holds_within(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// CPU time (user + system) of process `pid` so far, in ns.
fn cpu_ns(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the parenthesised command name: field 3 (state) first, so
    // utime (field 14) and stime (field 15) are the 12th and 13th.
    let fields: Vec<u64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|v| v.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    fields.iter().sum::<u64>() * 1_000_000_000 / hz
}

fn read_pid(path: &std::path::Path) -> i32 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("the benchmark broke: no pid in {}", path.display()))
}

/// The pids of node `n`'s redis-server and Webdis, from the pid files
/// `scripts/cluster.sh` wrote.
fn node_pids(c: &Cluster, n: usize) -> (i32, i32) {
    (
        read_pid(&c.dir.join(format!("node{}/redis.pid.launch", n + 1))),
        read_pid(&c.dir.join(format!("node{}/webdis.pid", n + 1))),
    )
}

/// Every process of a topology, as it ran at the start (pid and command
/// line): dropped, it stops those still running with the same command line.
/// `Cluster` stops them from their pid files; this also covers a directory
/// that went away under the benchmark.
struct Processes(Vec<(i32, Vec<u8>)>);

impl Processes {
    fn of(c: &Cluster) -> Processes {
        Processes(
            c.pids()
                .into_iter()
                .filter_map(|p| Some((p, std::fs::read(format!("/proc/{p}/cmdline")).ok()?)))
                .collect(),
        )
    }

    /// Sends `sig` to process `pid` if it is one of these (same command
    /// line: a pid may belong to another program by now).
    fn signal(&self, pid: i32, sig: libc::c_int) {
        if self.0.iter().any(|(p, cmd)| {
            *p == pid && std::fs::read(format!("/proc/{p}/cmdline")).ok().as_ref() == Some(cmd)
        }) {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for &(pid, _) in &self.0 {
            if alive(pid) {
                self.signal(pid, libc::SIGCONT);
                self.signal(pid, libc::SIGKILL);
            }
        }
    }
}

/// Subscribers of `channel` on each node.
fn numsub(c: &Cluster, channel: &str) -> Vec<u64> {
    (0..NODES)
        .map(|n| {
            c.redis_cli(n, &["PUBSUB", "NUMSUB", channel])
                .lines()
                .nth(1)
                .and_then(|l| l.trim().parse().ok())
                .unwrap_or(0)
        })
        .collect()
}

fn channel_of(c: &Cluster, node: usize, name: &str) -> String {
    c.redis_cli(node, &["HGET", &format!("stream:{name}"), "channel"])
        .trim()
        .to_string()
}

/// Milliseconds since local midnight of a wall-clock instant, as Redis
/// writes the time of day in its log (local time).
fn local_ms_of_day(t: std::time::SystemTime) -> i64 {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as libc::time_t;
    // SAFETY: localtime_r writes into the tm it is given.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&secs, &mut tm);
        tm
    };
    ((tm.tm_hour as i64 * 60 + tm.tm_min as i64) * 60 + tm.tm_sec as i64) * 1000
        + d.subsec_millis() as i64
}

/// The earliest time (ns after `since`, a wall-clock instant) at which a
/// line of one of the `logs` (Redis or Sentinel log files of `c`'s
/// directory) says `what` (`+promoted-slave`, `MASTER MODE enabled`, ...).
/// A log line reads `PID:X 02 Dec 2026 00:56:01.234 * what ...`.
fn logged_ns(
    c: &Cluster,
    logs: &[String],
    what: &str,
    since: std::time::SystemTime,
) -> Option<f64> {
    let base = local_ms_of_day(since);
    let mut best: Option<i64> = None;
    for file in logs {
        let log = std::fs::read_to_string(c.dir.join(file)).unwrap_or_default();
        for line in log.lines() {
            let f: Vec<&str> = line.splitn(7, ' ').collect();
            if f.len() < 7 || !f[6].starts_with(what) {
                continue;
            }
            let hms: Vec<&str> = f[4].split([':', '.']).collect();
            let num = |i: usize| hms.get(i).and_then(|v| v.parse::<i64>().ok());
            let (Some(h), Some(m), Some(sec), Some(milli)) = (num(0), num(1), num(2), num(3))
            else {
                continue;
            };
            let mut diff = ((h * 60 + m) * 60 + sec) * 1000 + milli - base;
            // Across midnight.
            if diff < -43_200_000 {
                diff += 86_400_000;
            }
            // The 1 ms resolution of the log: a line of the kill's own
            // millisecond may read up to 1 ms early.
            if (-1..120_000).contains(&diff) {
                best = Some(best.map_or(diff, |b| b.min(diff)));
            }
        }
    }
    best.map(|d| d.max(0) as f64 * 1e6)
}

fn sentinel_logs(c: &Cluster) -> Vec<String> {
    (1..=c.sentinel_ports.len())
        .map(|s| format!("sentinel{s}/sentinel.log"))
        .collect()
}

fn redis_logs() -> Vec<String> {
    (1..=NODES).map(|n| format!("node{n}/redis.log")).collect()
}

/// What one follower received: (k, seq, when) per state.
#[derive(Default)]
struct Got {
    states: Mutex<Vec<(u64, u64, u64)>>,
    last_k: AtomicU64,
    lost: AtomicU64,
}

impl Got {
    fn attach(client: &Client) -> Arc<Got> {
        let g = Arc::new(Got {
            last_k: AtomicU64::new(u64::MAX),
            ..Got::default()
        });
        let g2 = g.clone();
        client.set_callback(Some(Arc::new(move |e: &Event| {
            let now = now_ns();
            match e.kind {
                EventKind::MS_EVENT_STATE => {
                    if let Some((_, k)) = e
                        .state
                        .as_ref()
                        .and_then(|s| parse_tk(s.as_str().as_bytes()))
                    {
                        g2.states.lock().unwrap().push((k, e.seq, now));
                        g2.last_k.store(k, Ordering::Relaxed);
                    }
                }
                EventKind::MS_EVENT_CONNECTION_LOST => {
                    g2.lost.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        })));
        g
    }

    fn holds(&self, k: u64) -> bool {
        let last = self.last_k.load(Ordering::Relaxed);
        last != u64::MAX && last >= k
    }

    /// When it first held state `k` or a newer one.
    fn first_at_least(&self, k: u64) -> Option<u64> {
        self.states
            .lock()
            .unwrap()
            .iter()
            .find(|s| s.0 >= k)
            .map(|s| s.2)
    }

    fn seq_increasing(&self) -> bool {
        self.states
            .lock()
            .unwrap()
            .windows(2)
            .all(|w| w[1].1 > w[0].1)
    }
}

/// A follower of `name` given `url` (one URL or a list), once it holds a
/// state.
fn ha_follower(url: &str, name: &str) -> (Client, Arc<Got>) {
    let f = ha_client(url);
    let got = Got::attach(&f);
    f.connect(name, PASSWORD).expect("connect");
    wait_for(Duration::from_secs(15), || got.holds(0));
    (f, got)
}

/// One failover trial's figures (ns after the kill).
struct Trial {
    promoted: f64,
    switched: f64,
    leader: f64,
    followers: f64,
    converged: bool,
    increasing: bool,
}

impl Bench {
    // -------------------------------------------------------------- row 9

    pub(crate) fn row9_failover(&mut self) {
        let trials = if self.quick { 1 } else { 3 };
        println!(
            "\n[9] failover: SIGKILL of the primary's redis-server; a leader publishing + flushing 1 KiB at 20 states/s, 4 followers given the URL list and 2 that subscribed while the replicas' Webdis were stopped (all on the primary, which alone carries the channel by default; leader heartbeat {HA_HEARTBEAT_MS} ms, request timeout {HA_TIMEOUT_MS} ms); a fresh topology per trial, {trials} trial(s)"
        );
        let mut results = Vec::new();
        for trial in 1..=trials {
            let t = self.failover_trial();
            println!(
                "  trial {trial}: kill → Sentinel promoted a replica {} (switch-master {}); → the leader's first ack {}; → all 6 followers hold it {}; {}",
                ms(t.promoted),
                ms(t.switched),
                ms(t.leader),
                ms(t.followers),
                match (t.converged, t.increasing) {
                    (true, true) => "all converged on the last state, seq increasing",
                    (false, _) => "NOT all followers converged",
                    (_, false) => "seq WENT BACK for a follower",
                }
            );
            results.push(t);
        }
        let col = |f: fn(&Trial) -> f64| -> Vec<f64> { results.iter().map(f).collect() };
        let (p50, pmax) = median_max(&col(|t| t.promoted));
        let (l50, lmax) = median_max(&col(|t| t.leader));
        let (f50, fmax) = median_max(&col(|t| t.followers));
        let ok = results.iter().all(|t| t.converged && t.increasing);
        let within = results.iter().all(|t| t.leader <= t.promoted + 5e9);
        let of = format!("median (max) of {trials}");
        self.row(
            &format!("9. failover: kill → leader's 1st ack, {of}"),
            format!("{} ({})", ms(l50), ms(lmax)),
            format!("{} ({}) Sentinel promotion", ms(p50), ms(pmax)),
            format!("{:.2}", l50 / p50),
            "≤ promotion + 5 s",
            if within { "meets" } else { "MISSES" },
        );
        self.row(
            "   kill → all 6 followers hold that state",
            format!("{} ({})", ms(f50), ms(fmax)),
            format!("{} ({}) Sentinel promotion", ms(p50), ms(pmax)),
            format!("{:.2}", f50 / p50),
            "(info) all converge, seq increasing",
            if ok { "all converge" } else { "NOT CONVERGED" },
        );
    }

    fn failover_trial(&mut self) -> Trial {
        let mut c = Cluster::start();
        let procs = Processes::of(&c);
        let name = self.stream_name("failover");
        let leader = ha_client(&c.urls);
        leader.start(&name, PASSWORD, CODE).expect("start");
        let mut state = make_state(KIB);
        put_digits(&mut state, K_AT, K_LEN, 0);
        leader.publish(&name, &state).expect("publish");
        leader.flush(&name, 10_000).expect("flush");
        let channel = channel_of(&c, 0, &name);

        // Two followers on the primary's endpoint: they subscribe while the
        // replicas' Webdis do not answer (SIGSTOP; replication goes on), and
        // a client then falls back to the primary...
        let replica_webdis: Vec<i32> = (1..NODES).map(|n| node_pids(&c, n).1).collect();
        for &p in &replica_webdis {
            procs.signal(p, libc::SIGSTOP);
        }
        let on_primary: Vec<(Client, Arc<Got>)> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2)
                .map(|_| s.spawn(|| ha_follower(&c.urls, &name)))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for &p in &replica_webdis {
            procs.signal(p, libc::SIGCONT);
        }
        // ...and four more, on the primary too (it alone carries the
        // channel with the library as shipped).
        let on_replica: Vec<(Client, Arc<Got>)> =
            (0..4).map(|_| ha_follower(&c.urls, &name)).collect();
        let subs = numsub(&c, &channel);
        println!("    subscribers per node (primary first): {subs:?}");
        let followers: Vec<Arc<Got>> = on_primary
            .iter()
            .chain(on_replica.iter())
            .map(|f| f.1.clone())
            .collect();

        // 20 states/s, each flushed, on a thread of its own.
        let stop = Arc::new(AtomicBool::new(false));
        let acks: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default(); // (k, acked at)
        let publisher = {
            let (stop, acks, name) = (stop.clone(), acks.clone(), name.clone());
            std::thread::spawn(move || {
                let period = Duration::from_millis(50);
                let mut next = Instant::now();
                let mut k = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    k += 1;
                    put_digits(&mut state, K_AT, K_LEN, k);
                    put_digits(&mut state, T_AT, T_LEN, now_ns());
                    leader.publish(&name, &state).expect("publish");
                    if leader.flush(&name, 15_000).is_ok() {
                        acks.lock().unwrap().push((k, now_ns()));
                    }
                    next += period;
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
                leader.flush(&name, 15_000).expect("the last flush");
                (leader, k)
            })
        };
        std::thread::sleep(Duration::from_millis(1500));
        let wall = std::time::SystemTime::now();
        let killed = ns_of(c.kill_primary());
        // Let it run on the new primary for a while.
        wait_for(Duration::from_secs(60), || {
            acks.lock().unwrap().iter().filter(|a| a.1 > killed).count() >= 40
        });
        stop.store(true, Ordering::SeqCst);
        let (leader, last) = publisher.join().unwrap();
        // Its heartbeats would only fail once the topology stops.
        drop(leader);
        let converged = holds_within(Duration::from_secs(30), || {
            followers.iter().all(|f| f.holds(last))
        });
        let (k_first, acked) = *acks.lock().unwrap().iter().find(|a| a.1 > killed).unwrap();
        let reached = followers
            .iter()
            .map(|f| f.first_at_least(k_first))
            .collect::<Option<Vec<u64>>>()
            .map(|v| v.into_iter().max().unwrap_or(0));
        // The promotion proper: the replica's own log, when it executed
        // Sentinel's REPLICAOF NO ONE. Sentinel logs +promoted-slave once it
        // saw the new role in the replica's INFO (polled every second).
        let sentinel = |what: &str| logged_ns(&c, &sentinel_logs(&c), what, wall);
        let promoted = logged_ns(&c, &redis_logs(), "MASTER MODE enabled", wall)
            .expect("the benchmark broke: no \"MASTER MODE enabled\" in the Redis logs");
        let (odown, seen, switched) = (
            sentinel("+odown"),
            sentinel("+promoted-slave"),
            sentinel("+switch-master"),
        );
        // The other replica follows the dead primary until Sentinel points
        // it at the new one (after +switch-master); its subscribers get
        // nothing new until it has resynchronised.
        let new_primary = c.primary();
        let new_port = c.nodes[new_primary].redis_port;
        let redis = |what: &str| logged_ns(&c, &redis_logs(), what, wall);
        let repointed = redis(&format!("Connecting to MASTER 127.0.0.1:{new_port}"));
        let resynced = [
            redis("Successful partial resynchronization"),
            redis("MASTER <-> REPLICA sync: Finished with success"),
        ]
        .into_iter()
        .flatten()
        .reduce(f64::min);
        let opt = |v: Option<f64>| v.map_or("?".to_string(), ms);
        println!(
            "    logs after the kill: +odown {}, replica promoted (its log) {}, +promoted-slave {}, +switch-master {}; the other replica connects to the new primary {}, in sync {}",
            opt(odown),
            ms(promoted),
            opt(seen),
            opt(switched),
            opt(repointed),
            opt(resynced)
        );
        let switched = switched.unwrap_or(f64::NAN);
        let lost: u64 = followers
            .iter()
            .map(|f| f.lost.load(Ordering::Relaxed))
            .sum();
        let group = |g: &[(Client, Arc<Got>)]| {
            g.iter()
                .map(|f| f.1.first_at_least(k_first))
                .collect::<Option<Vec<u64>>>()
                .map_or("never".to_string(), |v| {
                    ms(v.into_iter().max().unwrap_or(0).saturating_sub(killed) as f64)
                })
        };
        println!(
            "    kill → the followers hold the leader's first state acknowledged after it: the 4 given the URL list {}, the 2 subscribed while the replicas were stopped {}",
            group(&on_replica),
            group(&on_primary)
        );
        println!(
            "    new primary: node {} of 3; subscribers per node now: {:?}; {last} states published, the first acknowledged after the kill: {k_first}; {lost} CONNECTION_LOST events over the 6 followers",
            new_primary + 1,
            numsub(&c, &channel),
        );
        let increasing = followers.iter().all(|f| f.seq_increasing());
        drop(on_primary);
        drop(on_replica);
        c.stop();
        drop(procs);
        Trial {
            promoted,
            switched,
            leader: acked.saturating_sub(killed) as f64,
            followers: reached.map_or(f64::NAN, |r| r.saturating_sub(killed) as f64),
            converged: converged && reached.is_some(),
            increasing,
        }
    }

    // ------------------------------------------------------------- row 10

    pub(crate) fn row10_fanout_replicas(&mut self, c: &Cluster) {
        let rate = 50.0;
        let secs = if self.quick { 1.0 } else { 6.0 };
        let per_block = (rate * secs) as usize;
        // A B C C B A: every side sees the machine early and late.
        let order: &[usize] = if self.quick {
            &[0, 1, 2]
        } else {
            &[0, 1, 2, 2, 1, 0]
        };
        let primary = c.primary();
        let replicas: Vec<usize> = (0..NODES).filter(|&n| n != primary).collect();
        println!(
            "\n[10] fan-out over replicas: 1 leader, {FOLLOWERS} followers, 1 KiB, {rate:.0} states/s, {per_block} states per block, blocks in the order {order:?}"
        );
        println!(
            "  side 0: every client given only the primary's URL (all followers on the primary)"
        );
        println!("  side 1: every client given the URL list (a stream's followers on the replica its name hashes to)");
        println!("  side 2: each follower given the primary's URL and one replica's, alternately (the followers of one stream split over both replicas)");
        let sides = [
            "one endpoint (the primary)",
            "URL list (one replica)",
            "split over both replicas",
        ];
        #[derive(Default, Clone)]
        struct Side {
            lat: Vec<f64>,
            states: u64,
            measured: u64,
            all: u64,
            cpu: Vec<u64>, // per node: redis, webdis
            placement: Vec<Vec<u64>>,
        }
        let mut res: Vec<Side> = vec![
            Side {
                cpu: vec![0; 2 * NODES],
                ..Side::default()
            };
            3
        ];
        let pids: Vec<(i32, i32)> = (0..NODES).map(|n| node_pids(c, n)).collect();
        let primary_url = c.nodes[primary].url.clone();
        for &side in order {
            let name = self.stream_name("fanha");
            let leader_url = if side == 0 { &primary_url } else { &c.urls };
            let leader = ha_client(leader_url);
            leader.start(&name, PASSWORD, CODE).expect("start");
            let mut state = make_state(KIB);
            put_digits(&mut state, K_AT, K_LEN, 0);
            leader.publish(&name, &state).expect("publish");
            leader.flush(&name, 10_000).expect("flush");
            let urls: Vec<String> = (0..FOLLOWERS)
                .map(|i| match side {
                    0 => primary_url.clone(),
                    1 => c.urls.clone(),
                    _ => format!(
                        "{},{}",
                        primary_url,
                        c.nodes[replicas[i % replicas.len()]].url
                    ),
                })
                .collect();
            // recv_max[k], recv_count[k] over the followers.
            let recv_max: Arc<Vec<AtomicU64>> =
                Arc::new((0..=per_block).map(|_| AtomicU64::new(0)).collect());
            let recv_count: Arc<Vec<AtomicU32>> =
                Arc::new((0..=per_block).map(|_| AtomicU32::new(0)).collect());
            let lasts: Vec<Arc<AtomicU64>> = (0..FOLLOWERS)
                .map(|_| Arc::new(AtomicU64::new(u64::MAX)))
                .collect();
            let clients: Vec<Client> = urls
                .iter()
                .zip(&lasts)
                .map(|(u, last)| {
                    let f = ha_client(u);
                    let (rm, rc, last) = (recv_max.clone(), recv_count.clone(), last.clone());
                    f.set_callback(Some(Arc::new(move |e: &Event| {
                        let now = now_ns();
                        if let Some((_, k)) = e
                            .state
                            .as_ref()
                            .and_then(|s| parse_tk(s.as_str().as_bytes()))
                        {
                            if let Some(m) = rm.get(k as usize) {
                                m.fetch_max(now, Ordering::Relaxed);
                                rc[k as usize].fetch_add(1, Ordering::Relaxed);
                            }
                            last.store(k, Ordering::Relaxed);
                        }
                    })));
                    f.connect(&name, PASSWORD).expect("connect");
                    f
                })
                .collect();
            wait_for(Duration::from_secs(30), || {
                lasts.iter().all(|l| l.load(Ordering::Relaxed) == 0)
            });
            res[side]
                .placement
                .push(numsub(c, &channel_of(c, primary, &name)));
            std::thread::sleep(Duration::from_millis(300));
            let cpu0: Vec<u64> = pids
                .iter()
                .flat_map(|&(r, w)| [cpu_ns(r), cpu_ns(w)])
                .collect();
            let mut t_pub = vec![0u64; per_block + 1];
            let period = Duration::from_secs_f64(1.0 / rate);
            let mut next = Instant::now();
            for (k, tp) in t_pub.iter_mut().enumerate().skip(1) {
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
                next += period;
                put_digits(&mut state, K_AT, K_LEN, k as u64);
                *tp = now_ns();
                put_digits(&mut state, T_AT, T_LEN, *tp);
                leader.publish(&name, &state).expect("publish");
            }
            leader.flush(&name, 10_000).expect("flush");
            let last = per_block as u64;
            let all_hold = holds_within(Duration::from_secs(20), || {
                lasts.iter().all(|l| l.load(Ordering::Relaxed) == last)
            });
            let cpu1: Vec<u64> = pids
                .iter()
                .flat_map(|&(r, w)| [cpu_ns(r), cpu_ns(w)])
                .collect();
            let r = &mut res[side];
            for (i, (a, b)) in cpu0.iter().zip(&cpu1).enumerate() {
                r.cpu[i] += b - a;
            }
            r.states += per_block as u64;
            // The first 5 % of a block are a warm-up.
            for (k, &tp) in t_pub.iter().enumerate().skip(1 + per_block / 20) {
                r.measured += 1;
                if recv_count[k].load(Ordering::Relaxed) as usize == FOLLOWERS {
                    r.lat
                        .push(recv_max[k].load(Ordering::Relaxed).saturating_sub(tp) as f64);
                    r.all += 1;
                }
            }
            if !all_hold {
                println!("    side {side}: NOT every follower holds the last state");
            }
            drop(clients);
            let _ = leader.stop(&name);
        }
        let per_k = |ns: u64, states: u64| ns as f64 / 1e6 * 1000.0 / states.max(1) as f64;
        let mut fig = Vec::new();
        for (side, r) in res.iter().enumerate() {
            if r.states == 0 {
                continue;
            }
            let lat = sorted(r.lat.clone());
            let (p50, p99) = (percentile(&lat, 50.0), percentile(&lat, 99.0));
            let (pr, pw) = (r.cpu[2 * primary], r.cpu[2 * primary + 1]);
            let total: u64 = r.cpu.iter().sum();
            println!(
                "  {}: last follower p50 {} p99 {} ({} of {} measured states reached all {FOLLOWERS}); subscribers per node (node 1 first, primary = node {}): {:?}",
                sides[side],
                fmt_us(p50),
                fmt_us(p99),
                r.all,
                r.measured,
                primary + 1,
                r.placement
            );
            println!(
                "    CPU per 1000 states: primary Redis {:.0} ms, primary Webdis {:.0} ms; replicas' Redis {:.0} ms, Webdis {:.0} ms; all 3 nodes {:.0} ms",
                per_k(pr, r.states),
                per_k(pw, r.states),
                per_k(
                    replicas.iter().map(|&n| r.cpu[2 * n]).sum(),
                    r.states
                ),
                per_k(
                    replicas.iter().map(|&n| r.cpu[2 * n + 1]).sum(),
                    r.states
                ),
                per_k(total, r.states)
            );
            fig.push((p50, p99, per_k(pr + pw, r.states), per_k(total, r.states)));
        }
        if fig.len() < 3 {
            return;
        }
        let (base, list, split) = (fig[0], fig[1], fig[2]);
        self.row(
            "10. fan-out 100 on a replica: last p50 (p99)",
            format!("{} ({})", fmt_us(list.0), fmt_us(list.1)),
            format!("{} ({}) all on the primary", fmt_us(base.0), fmt_us(base.1)),
            format!("{:.2} (p99 {:.2})", list.0 / base.0, list.1 / base.1),
            "(info) may not improve on 2 cores",
            "",
        );
        self.row(
            "    split over 2 replicas: last p50 (p99)",
            format!("{} ({})", fmt_us(split.0), fmt_us(split.1)),
            format!("{} ({}) all on the primary", fmt_us(base.0), fmt_us(base.1)),
            format!("{:.2} (p99 {:.2})", split.0 / base.0, split.1 / base.1),
            "(info)",
            "",
        );
        self.row(
            "    primary Redis+Webdis CPU / 1000 states",
            format!("{:.0} ms (split {:.0} ms)", list.2, split.2),
            format!("{:.0} ms all on the primary", base.2),
            format!("{:.2} ({:.2})", list.2 / base.2, split.2 / base.2),
            "lower on replicas",
            if list.2 < base.2 && split.2 < base.2 {
                "lower"
            } else {
                "NOT LOWER"
            },
        );
        self.row(
            "    all nodes' Redis+Webdis CPU / 1000 states",
            format!("{:.0} ms (split {:.0} ms)", list.3, split.3),
            format!("{:.0} ms all on the primary", base.3),
            format!("{:.2} ({:.2})", list.3 / base.3, split.3 / base.3),
            "(info)",
            "",
        );
    }

    // ------------------------------------------------------------- row 11

    pub(crate) fn row11_durability(&mut self, c: &Cluster) {
        let (rounds, slice) = if self.quick { (6, 0.07) } else { (20, 0.15) };
        println!(
            "\n[11] durability cost: acknowledged publishes/s, 1 KiB, publish + flush one at a time ({rounds} alternating slices of {slice} s per side)"
        );
        let primary = c.primary();
        let set = |n: &str, lag: &str| {
            let a = c.redis_cli(primary, &["CONFIG", "SET", "min-replicas-to-write", n]);
            let b = c.redis_cli(primary, &["CONFIG", "SET", "min-replicas-max-lag", lag]);
            assert!(
                a.trim() == "OK" && b.trim() == "OK",
                "the benchmark broke: CONFIG SET on the primary: {a} {b}"
            );
        };
        let conf = |k: &str| {
            c.redis_cli(primary, &["CONFIG", "GET", k])
                .lines()
                .nth(1)
                .unwrap_or("")
                .trim()
                .to_string()
        };
        let (n0, lag0) = (conf("min-replicas-to-write"), conf("min-replicas-max-lag"));
        println!(
            "  sides: the single node of rows 1-8; the topology with min-replicas-to-write 0, the leader given the primary's URL, then the URL list; the list with min-replicas-to-write 1, min-replicas-max-lag 1 (CONFIG SET on the primary between slices; the topology's own setting, {n0} / {lag0}, is put back after)"
        );
        let single = Client::new(&self.servers.url).expect("Client::new");
        single.set_deltas(false);
        let ha = ha_client(&c.urls);
        let direct = ha_client(&c.nodes[primary].url);
        let names = [
            self.stream_name("durable1"),
            self.stream_name("durableone"),
            self.stream_name("durableha"),
        ];
        single.start(&names[0], PASSWORD, CODE).expect("start");
        direct.start(&names[1], PASSWORD, CODE).expect("start");
        ha.start(&names[2], PASSWORD, CODE).expect("start");
        let state = make_state(KIB);
        let run = |client: &Client, name: &str, secs: f64| -> (u64, f64) {
            let t0 = Instant::now();
            let end = t0 + Duration::from_secs_f64(secs);
            let mut n = 0;
            loop {
                client.publish(name, &state).expect("publish");
                client.flush(name, 10_000).expect("flush");
                n += 1;
                if Instant::now() >= end {
                    break;
                }
            }
            (n, t0.elapsed().as_secs_f64())
        };
        self.quiesce();
        for _ in 0..20 {
            run(&single, &names[0], 0.0);
            run(&direct, &names[1], 0.0);
            run(&ha, &names[2], 0.0);
        }
        // (count, seconds) per side: single node; topology, leader given the
        // primary's URL; given the list; given the list, min-replicas 1.
        let mut tot = [(0u64, 0f64); 4];
        let mut add = |side: usize, (n, t): (u64, f64)| {
            tot[side].0 += n;
            tot[side].1 += t;
        };
        for _ in 0..rounds {
            add(0, run(&single, &names[0], slice));
            set("0", "1");
            add(1, run(&direct, &names[1], slice));
            add(2, run(&ha, &names[2], slice));
            set("1", "1");
            add(3, run(&ha, &names[2], slice));
        }
        set(&n0, &lag0);
        let rate: Vec<f64> = tot.iter().map(|(n, t)| *n as f64 / t).collect();
        println!(
            "  single node {:.0}/s; topology, leader given the primary's URL {:.0}/s, given the URL list {:.0}/s, given the list with min-replicas-to-write 1 {:.0}/s",
            rate[0], rate[1], rate[2], rate[3]
        );
        let _ = single.stop(&names[0]);
        let _ = direct.stop(&names[1]);
        let _ = ha.stop(&names[2]);
        self.row(
            "11. acked publishes/s, 1 KiB, min-replicas 1",
            format!("{:.0}/s", rate[3]),
            format!("{:.0}/s without, same topology", rate[2]),
            format!("{:.2}", rate[3] / rate[2]),
            "(info) cost of the check",
            "",
        );
        self.row(
            "    acked/s, topology, leader given the list",
            format!("{:.0}/s", rate[2]),
            format!("{:.0}/s given the primary's URL", rate[1]),
            format!("{:.2}", rate[2] / rate[1]),
            "(info) cost of the URL list",
            "",
        );
        self.row(
            "    acked/s, topology, given the primary's URL",
            format!("{:.0}/s", rate[1]),
            format!("{:.0}/s single node", rate[0]),
            format!("{:.2}", rate[1] / rate[0]),
            "(info) cost of replication",
            "",
        );
    }

    /// Rows 10 and 11 on one topology.
    pub(crate) fn rows_ha_shared(&mut self, row10: bool, row11: bool) {
        let c = Cluster::start();
        let procs = Processes::of(&c);
        println!(
            "\n  topology for rows 10-11: {} (primary: node {} of 3; state in {})",
            c.urls,
            c.primary() + 1,
            c.dir.display()
        );
        for n in 0..NODES {
            let (r, w) = node_pids(&c, n);
            assert!(
                alive(r) && alive(w),
                "the benchmark broke: node {n} is down"
            );
        }
        if row10 {
            // Followers on replicas: the replicas carry the channel.
            c.set_channel_on_replicas(true);
            self.row10_fanout_replicas(&c);
            c.set_channel_on_replicas(false);
        }
        if row11 {
            self.row11_durability(&c);
        }
        drop(c);
        drop(procs);
    }
}
