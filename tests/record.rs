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
    let lua = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("lua/missionstream.lua"),
    )
    .unwrap();
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
