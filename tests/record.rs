//! The record keeps changes, not copies (protocol 8): a stream's record is
//! a base state and the deltas since it, compacted now and then. Nothing
//! acknowledged is lost across a restart from the append-only file (between
//! deltas, right after a compaction, during an AOF rewrite), a FUNCTION LOAD
//! halfway through a run of deltas, or a failover during one: what
//! `ms_snapshot` returns is always the newest acknowledged state, byte for
//! byte. Through real Redis, Webdis and (for the failover) Sentinels.

mod common;

use common::cluster::Cluster;
use common::plan::Plan;
use common::*;
use missionstream::Client;
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// The record's account of its deltas: (n, newest length, delta bytes),
/// (0, 0, 0) without one.
fn account(s: &Servers, name: &str) -> (u64, u64, u64) {
    let a = s.record_field(name, "deltas");
    let v: Vec<u64> = a.split(' ').filter_map(|x| x.parse().ok()).collect();
    if v.len() == 5 {
        (v[0], v[1], v[2])
    } else {
        (0, 0, 0)
    }
}

fn aof_size(s: &Servers) -> u64 {
    let info = s.redis_cli(&["INFO", "persistence"]);
    info.lines()
        .find_map(|l| l.strip_prefix("aof_current_size:"))
        .expect("aof_current_size in INFO persistence")
        .trim()
        .parse()
        .unwrap()
}

/// Moves waypoint `i` a little and publishes the plan, acknowledged.
fn step(leader: &Client, name: &str, plan: &mut Plan, i: usize) -> String {
    let n = plan.waypoints();
    plan.move_waypoint((i * 7) % n, 0.00001, -0.00001);
    let text = plan.text();
    leader.publish(name, text.as_bytes()).unwrap();
    leader.flush(name, 20_000).unwrap();
    text
}

/// Asserts that the record (through `ms_snapshot`) and a late joiner both
/// hold `expected`, byte for byte.
fn assert_newest(s: &Servers, name: &str, expected: &str, why: &str) {
    assert_state_eq(&s.record_field(name, "state"), expected, why);
    let late = s.client();
    let rec = Recorder::attach(&late);
    // (Webdis answers 503 until it has reached a restarted Redis again.)
    wait_until(T, || late.connect(name, "pw").is_ok());
    rec.wait(T, |ev| !ev.is_empty());
    rec.wait_state(name, expected, T);
    assert_state_eq(&rec.states(name)[0].1, expected, why);
}

#[test]
fn a_record_holds_the_deltas_and_the_aof_grows_by_the_change() {
    let s = Servers::start();
    let (leader, _f, rec, name) = s.followed("rec-aof");
    let mut plan = Plan::of_size(100 * 1024, 3);
    let first = plan.text();
    leader.publish(&name, first.as_bytes()).unwrap();
    leader.flush(&name, 20_000).unwrap();
    assert_eq!(account(&s, &name).0, 0, "a full state is the base");
    let before = aof_size(&s);
    let mut last = first.clone();
    for i in 0..20 {
        last = step(&leader, &name, &mut plan, i);
    }
    let grown = aof_size(&s) - before;
    let (n, len, _) = account(&s, &name);
    assert_eq!(n, 20, "every update is a delta of the record");
    assert_eq!(len as usize, last.len());
    // The base is the first state still: the deltas are what changed.
    assert_state_eq(
        s.redis_cli(&["HGET", &format!("stream:{name}"), "state"])
            .strip_suffix('\n')
            .unwrap(),
        &first,
        "",
    );
    assert!(
        grown < 20 * 1024,
        "the AOF grew by {grown} bytes for 20 updates of one waypoint of a {} byte plan",
        last.len()
    );
    rec.wait_state(&name, &last, T);
    assert_newest(&s, &name, &last, "");
}

#[test]
fn restarts_from_the_aof_between_deltas_and_after_compactions_lose_nothing() {
    let mut s = Servers::start();
    let (leader, _f, _rec, name) = s.followed("rec-restart");
    // 8 KiB: compacted after ~8 KiB of deltas, some 60-80 updates.
    let mut plan = Plan::of_size(8 * 1024, 4);
    leader.publish(&name, plan.text().as_bytes()).unwrap();
    leader.flush(&name, 20_000).unwrap();
    s.redis_cli(&["CONFIG", "SET", "appendfsync", "always"]);
    let (mut compactions, mut restarts, mut i) = (0, 0, 0);
    let mut last_n = 0;
    while compactions < 3 {
        let last = step(&leader, &name, &mut plan, i);
        i += 1;
        assert!(i < 2000, "no compaction in {i} updates");
        let (n, _, _) = account(&s, &name);
        let compacted = n < last_n;
        last_n = n;
        if compacted {
            compactions += 1;
        }
        // Killed (SIGKILL) right after a compaction, and in the middle of
        // a run of deltas.
        if compacted || (n > 0 && n % 25 == 0) {
            s.kill_redis();
            s.start_redis();
            s.redis_cli(&["CONFIG", "SET", "appendfsync", "always"]);
            restarts += 1;
            assert_newest(&s, &name, &last, &format!("after restart {restarts}"));
        }
    }
    // Deltas apply on the restarted Redis (the functions kept nothing:
    // they read the record).
    let last = step(&leader, &name, &mut plan, i);
    assert!(account(&s, &name).0 > 0, "a delta after the restarts");
    assert_newest(&s, &name, &last, "after the last restart");
    assert!(restarts >= 4, "{restarts} restarts");
}

#[test]
fn a_restart_during_an_aof_rewrite_under_deltas_loses_nothing() {
    let mut s = Servers::start();
    let (leader, _f, _rec, name) = s.followed("rec-rewrite");
    let mut plan = Plan::of_size(64 * 1024, 5);
    leader.publish(&name, plan.text().as_bytes()).unwrap();
    leader.flush(&name, 20_000).unwrap();
    s.redis_cli(&["CONFIG", "SET", "appendfsync", "always"]);
    let mut last = String::new();
    for round in 0..3 {
        for i in 0..10 {
            last = step(&leader, &name, &mut plan, round * 10 + i);
        }
        s.redis_cli(&["BGREWRITEAOF"]);
        // Deltas while the rewrite runs, then the kill.
        for i in 0..5 {
            last = step(&leader, &name, &mut plan, round * 10 + 10 + i);
        }
        s.kill_redis();
        s.start_redis();
        s.redis_cli(&["CONFIG", "SET", "appendfsync", "always"]);
        assert_newest(&s, &name, &last, &format!("round {round}"));
    }
    assert!(account(&s, &name).0 > 0, "the record holds deltas");
}

#[test]
fn function_load_halfway_through_deltas_loses_nothing() {
    let s = Servers::start();
    let (leader, _f, rec, name) = s.followed("rec-load");
    let mut plan = Plan::of_size(100 * 1024, 6);
    let mut published = vec![plan.text()];
    leader.publish(&name, published[0].as_bytes()).unwrap();
    leader.flush(&name, 20_000).unwrap();
    let lua = library();
    for i in 0..30 {
        published.push(step(&leader, &name, &mut plan, i));
        if i % 10 == 4 {
            // A new Lua VM: the states the functions kept are gone.
            s.load_functions(&lua);
            assert_newest(
                &s,
                &name,
                published.last().unwrap(),
                &format!("load at {i}"),
            );
        }
    }
    let last = published.last().unwrap();
    assert!(account(&s, &name).0 >= 25, "the record holds the deltas");
    rec.wait_state(&name, last, T);
    assert_newest(&s, &name, last, "");
    // The follower delivered only states that were published, in order.
    let states = rec.states(&name);
    assert_increasing(&states);
    for (_, st) in &states {
        assert!(
            published.contains(st) || st.len() < 256,
            "a state never published: {}",
            excerpt(st)
        );
    }
}

#[test]
fn a_failover_during_a_run_of_deltas_keeps_the_newest_acknowledged_state() {
    let mut c = Cluster::start();
    let name = unique("rec-ha");
    let leader = Client::new(&c.urls).unwrap();
    leader.set_kdf_iterations(100_000).unwrap();
    leader.set_timeout(4000).unwrap();
    leader.set_heartbeat(250).unwrap();
    leader.start(&name, "pw", "code").unwrap();
    let mut plan = Plan::of_size(100 * 1024, 7);
    leader.publish(&name, plan.text().as_bytes()).unwrap();
    leader.flush(&name, 20_000).unwrap();
    let deltas = |node: usize| {
        c.redis_cli(node, &["HGET", &format!("stream:{name}"), "deltas"])
            .trim()
            .to_string()
    };
    let mut last = String::new();
    for i in 0..15 {
        last = step(&leader, &name, &mut plan, i);
    }
    assert!(!deltas(0).is_empty(), "the record holds deltas");
    // Every replica holds the acknowledged state before the kill.
    wait_until(T, || {
        c.replicas()
            .iter()
            .all(|&r| newest_state(c.nodes[r].redis_port, &name) == last)
    });
    c.kill_primary();
    let (primary, _) = c.wait_promoted(T);
    assert_state_eq(
        &newest_state(c.nodes[primary].redis_port, &name),
        &last,
        "the promoted replica",
    );
    // Deltas go on against the promoted replica's record.
    for i in 15..30 {
        last = step(&leader, &name, &mut plan, i);
    }
    let primary = c.primary();
    assert_state_eq(
        &newest_state(c.nodes[primary].redis_port, &name),
        &last,
        "the new primary",
    );
    let f = Client::new(&c.urls).unwrap();
    f.set_kdf_iterations(100_000).unwrap();
    let rec = Recorder::attach(&f);
    f.connect(&name, "pw").unwrap();
    rec.wait_state(&name, &last, T);
    c.stop();
}

/// A replica of the test's Redis, so that reads run where no publish ran:
/// the functions there bring a kept state up to date with the deltas
/// replicated since, or assemble it from the record.
struct Replica {
    child: std::process::Child,
    port: u16,
}

impl Replica {
    fn start(s: &Servers) -> Replica {
        let port = free_port();
        let dir = s.dir.join(format!("replica-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--dir", &dir.display().to_string()])
            .args(["--appendonly", "no", "--save", ""])
            .args(["--replicaof", "127.0.0.1", &s.redis_port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        let r = Replica { child, port };
        wait_until(T, || r.offset() >= 0 && r.linked());
        r
    }

    fn info(&self) -> String {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "INFO", "replication"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn linked(&self) -> bool {
        self.info().contains("master_link_status:up")
    }

    fn offset(&self) -> i64 {
        self.info()
            .lines()
            .find_map(|l| l.strip_prefix("slave_repl_offset:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(-1)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The functions library of this version, as FUNCTION LOAD takes it.
fn library() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("lua/missionstream.lua"))
        .unwrap()
}

/// Loads the functions anew (a new Lua VM: the states they kept are
/// gone); the primary still assembles `expected` from the record.
fn reload_and_read(s: &Servers, name: &str, expected: &str) {
    s.load_functions(&library());
    assert_state_eq(
        &newest_state(s.redis_port, name),
        expected,
        "after FUNCTION LOAD",
    );
}

/// Once the replica has all the primary wrote, it reads `expected`.
fn replica_reads(s: &Servers, replica: &Replica, name: &str, expected: &str, why: &str) {
    let at = master_offset(s);
    wait_until(T, || replica.offset() >= at);
    assert_state_eq(&newest_state(replica.port, name), expected, why);
}

/// The primary's replication offset.
fn master_offset(s: &Servers) -> i64 {
    s.redis_cli(&["INFO", "replication"])
        .lines()
        .find_map(|l| l.strip_prefix("master_repl_offset:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

#[test]
fn a_replica_reads_the_newest_state_after_every_delta_of_any_shape() {
    use common::edits::{edit, text, Rng};
    let s = Servers::start();
    let replica = Replica::start(&s);
    let (leader, _f, _rec, name) = s.followed("rec-replica");
    let mut r = Rng(11);
    // Multi-byte text edited at random (inserts, deletions, moved
    // blocks): deltas of many shapes, compacted now and then.
    let mut state = text(&mut r, 2500);
    let (mut deltas_seen, mut compactions, mut last_n) = (0, 0, 0);
    // Reads at the start of every other base (the replica keeps the state
    // it read), and in the bases between only once they have more deltas
    // than that read applied: a kept state of the old base must not be
    // taken for a state of the new one.
    let (mut read_n, mut stale_reads) = (0, 0);
    for i in 0..400 {
        // (Edits of random shapes, the state kept at some 9-12 KB: the
        // functions keep states of 8 KiB or more.)
        state = if state.len() < 9000 {
            let at = state.char_indices().nth(r.below(200)).map_or(0, |(k, _)| k);
            format!("{}{}{}", &state[..at], text(&mut r, 30), &state[at..])
        } else {
            edit(&mut r, &state, 20, 100)
        };
        leader.publish(&name, state.as_bytes()).unwrap();
        leader.flush(&name, 20_000).unwrap();
        let n = account(&s, &name).0;
        if n > 0 {
            deltas_seen += 1;
        }
        if n < last_n {
            compactions += 1;
        }
        last_n = n;
        let at = master_offset(&s);
        wait_until(T, || replica.offset() >= at);
        let read = if compactions % 2 == 0 {
            n > 0 && n <= 10
        } else {
            n == read_n + 1
        };
        if read || i == 399 {
            if compactions % 2 == 1 {
                stale_reads += 1;
            }
            assert_state_eq(
                &newest_state(replica.port, &name),
                &state,
                &format!("the replica after update {i} (deltas in the record: {n})"),
            );
            read_n = n;
        }
    }
    assert!(stale_reads >= 2, "{stale_reads} reads after a compaction");
    assert!(deltas_seen > 300, "{deltas_seen} updates went as deltas");
    assert!(compactions >= 3, "{compactions} compactions");
    // And from scratch: a new Lua VM on the primary assembles it too.
    reload_and_read(&s, &name, &state);
}

#[test]
fn scattered_edits_compose_the_deltas_and_every_read_is_exact() {
    let s = Servers::start();
    let replica = Replica::start(&s);
    let (leader, _f, rec, name) = s.followed("rec-scatter");
    let mut plan = Plan::of_size(100 * 1024, 8);
    let first = plan.text();
    leader.publish(&name, first.as_bytes()).unwrap();
    leader.flush(&name, 20_000).unwrap();
    let key = format!("stream:{name}");
    let base = || s.redis_cli(&["HGET", &key, "state"]);
    let first_base = base();
    // A different waypoint every update: the record's deltas leave the
    // state in ever more pieces, until the functions compose them into one
    // delta from the same base (no compaction: their bytes stay far below
    // the state's).
    let (mut last_n, mut composed, mut last) = (0, 0, String::new());
    for i in 0..400 {
        let w = (i * 7) % plan.waypoints();
        plan.move_waypoint(w, 0.00001, 0.00002);
        last = plan.text();
        leader.publish(&name, last.as_bytes()).unwrap();
        leader.flush(&name, 20_000).unwrap();
        let n = account(&s, &name).0;
        if n < last_n {
            composed += 1;
            assert_eq!(base(), first_base, "composed, not compacted, at update {i}");
            // Read at once on the replica, and from scratch on the primary.
            replica_reads(&s, &replica, &name, &last, &format!("replica, update {i}"));
        }
        last_n = n;
        if i % 50 == 49 {
            replica_reads(&s, &replica, &name, &last, &format!("replica, update {i}"));
        }
    }
    assert!(composed >= 1, "the deltas were never composed");
    reload_and_read(&s, &name, &last);
    // Deltas go on from the composed record.
    plan.move_waypoint(3, 0.00001, 0.00001);
    let next = plan.text();
    leader.publish(&name, next.as_bytes()).unwrap();
    leader.flush(&name, 20_000).unwrap();
    assert!(account(&s, &name).0 > 0);
    assert_newest(&s, &name, &next, "after a delta on the composed record");
    rec.wait_state(&name, &next, T);
}
