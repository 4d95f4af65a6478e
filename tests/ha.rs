//! High availability against the real replicated topology of
//! `scripts/cluster.sh`: 3 Redis nodes (1 primary + 2 replicas), 3
//! Sentinels, one Webdis per node, the client given every node's URL.
//! The primary is killed (SIGKILL) under load, with and without replication
//! cut first (writes lost); followers must end on the leader's newest state
//! with seq strictly increasing, and the leader must go on by itself.
//! By default the functions publish channel messages on the primary only
//! and followers subscribe there; the tests of followers on replicas load
//! the library with `CHANNEL_ON_REPLICAS = true` (`Cluster::start_on_replicas`).

mod common;

use common::cluster::{Cluster, ClusterOptions};
use common::{assert_increasing, assert_state_eq, unique, Events, Rec, Recorder, Servers};
use missionstream::{Client, EventKind, Status};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PW: &str = "ha-password";
const CODE: &str = "ha-leader-code";

fn client(urls: &str, timeout_ms: u32, heartbeat_ms: u32) -> Client {
    let c = Client::new(urls).unwrap();
    // The functions' floor: starts and connects derive keys in ~20 ms.
    c.set_kdf_iterations(100_000).unwrap();
    c.set_timeout(timeout_ms).unwrap();
    c.set_heartbeat(heartbeat_ms).unwrap();
    c
}

/// A follower of `name` through `urls`, once it holds its first state.
fn follower(urls: &str, name: &str) -> (Client, Arc<Recorder>) {
    let f = client(urls, 4000, 1000);
    let rec = Recorder::attach(&f);
    f.connect(name, PW).unwrap();
    rec.wait(Duration::from_secs(5), |ev| {
        ev.iter().any(|e| e.kind == EventKind::MS_EVENT_STATE)
    });
    (f, rec)
}

/// Subscribers of `channel` on each node (PUBSUB NUMSUB).
fn numsub(c: &Cluster, channel: &str) -> Vec<u64> {
    (0..c.nodes.len())
        .map(|n| {
            let out = c.redis_cli(n, &["PUBSUB", "NUMSUB", channel]);
            out.lines()
                .nth(1)
                .and_then(|l| l.trim().parse().ok())
                .unwrap_or(0)
        })
        .collect()
}

fn record_field(c: &Cluster, node: usize, name: &str, field: &str) -> String {
    if field == "state" {
        return common::newest_state(c.nodes[node].redis_port, name);
    }
    if field == "seq" {
        // the newest state's, of the record's base and log
        return common::record::newest(c.nodes[node].redis_port, name)
            .map_or(String::new(), |n| n.seq.to_string());
    }
    c.redis_cli(node, &["HGET", &format!("stream:{name}"), field])
        .trim()
        .to_string()
}

fn kinds(events: &[Rec], kind: EventKind) -> usize {
    events.iter().filter(|e| e.kind == kind).count()
}

#[test]
fn primary_killed_under_load_followers_converge_and_nothing_flushed_is_lost() {
    let mut c = Cluster::start_on_replicas();
    let name = unique("ha-kill");
    let leader = client(&c.urls, 4000, 250);
    leader.start(&name, PW, CODE).unwrap();
    leader.publish(&name, b"{\"n\":0}").unwrap();
    leader.flush(&name, 5000).unwrap();
    let channel = record_field(&c, 0, &name, "channel");

    // One follower on the primary's node: subscribed while the replicas
    // were frozen, it fell back to the primary. (First, while no follower
    // is on a replica: one there would find its replica silent during the
    // freeze and rightly move to the primary too.)
    c.freeze_replicas();
    let (_f3, rec3) = follower(&c.urls, &name);
    c.thaw_replicas();
    let subs = numsub(&c, &channel);
    assert_eq!(subs[0], 1, "the first follower is on the primary: {subs:?}");
    for r in 1..3 {
        c.wait_role(r, "slave", Duration::from_secs(10));
    }
    common::wait_until(Duration::from_secs(10), || {
        (1..3).all(|r| {
            c.redis_cli(r, &["INFO", "replication"])
                .contains("master_link_status:up")
        })
    });
    // ...and two on a replica (the stream's node by hash).
    let (_f1, rec1) = follower(&c.urls, &name);
    let (_f2, rec2) = follower(&c.urls, &name);
    let subs = numsub(&c, &channel);
    assert_eq!(
        subs[0], 1,
        "followers subscribe on replicas first: {subs:?}"
    );
    assert_eq!(subs[1] + subs[2], 2, "{subs:?}");

    // 20 states/s, each flushed, on a thread of its own.
    let stop = Arc::new(AtomicBool::new(false));
    let acks: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let publisher = {
        let (stop, acks, name) = (stop.clone(), acks.clone(), name.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                leader
                    .publish(&name, format!("{{\"n\":{n}}}").as_bytes())
                    .unwrap();
                if leader.flush(&name, 15_000).is_ok() {
                    acks.lock().unwrap().push((n, Instant::now()));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            leader.flush(&name, 15_000).unwrap();
            (leader, n)
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    let killed_at = c.kill_primary();
    let (primary, promoted_at) = c.wait_promoted(Duration::from_secs(30));
    eprintln!(
        "promoted node {primary} {:?} after the kill",
        promoted_at - killed_at
    );
    // Run on for a while on the new primary.
    common::wait_until(Duration::from_secs(20), || {
        acks.lock()
            .unwrap()
            .iter()
            .filter(|(_, t)| *t > promoted_at)
            .count()
            >= 20
    });
    stop.store(true, Ordering::SeqCst);
    let (_leader, last) = publisher.join().unwrap();
    let acks = acks.lock().unwrap().clone();
    let first_after = acks
        .iter()
        .find(|(_, t)| *t > killed_at)
        .expect("an acknowledged publish after the kill")
        .1;
    eprintln!(
        "first acknowledged publish {:?} after the kill, {:?} after the promotion; {} acks",
        first_after - killed_at,
        first_after.saturating_duration_since(promoted_at),
        acks.len()
    );
    assert!(
        first_after < promoted_at + Duration::from_secs(5),
        "the leader's first acknowledged publish on the new primary came {:?} after the promotion",
        first_after - promoted_at
    );

    // The new primary holds the newest state; every follower ends on it,
    // seq strictly increasing.
    let newest = format!("{{\"n\":{last}}}");
    assert_state_eq(&record_field(&c, primary, &name, "state"), &newest, "");
    for (i, rec) in [&rec1, &rec2, &rec3].iter().enumerate() {
        rec.wait_state(&name, &newest, Duration::from_secs(20));
        let states = rec.states(&name);
        assert_increasing(&states);
        eprintln!(
            "follower {}: {} states, {} connection losses",
            i + 1,
            states.len(),
            kinds(&rec.snapshot(), EventKind::MS_EVENT_CONNECTION_LOST)
        );
    }
    // The follower on the dead node's endpoint had to move.
    assert!(
        kinds(&rec3.snapshot(), EventKind::MS_EVENT_RECONNECTED) >= 1,
        "{:?}",
        rec3.snapshot()
    );
}

/// By default only the primary carries channel messages: a follower
/// given every node's URL, the replicas listed first, subscribes on the
/// primary (PUBSUB NUMSUB of the channel: 1 there, 0 on each replica) and
/// receives every state; once the primary is killed it follows the
/// promoted replica and receives the states published there, and no
/// replica ever holds its subscription.
#[test]
fn by_default_followers_subscribe_on_the_primary_and_follow_it_through_a_failover() {
    let mut c = Cluster::start();
    let name = unique("ha-primary-only");
    let leader = client(&c.urls, 4000, 250);
    leader.start(&name, PW, CODE).unwrap();
    leader.publish(&name, b"{\"n\":0}").unwrap();
    leader.flush(&name, 5000).unwrap();
    let channel = record_field(&c, 0, &name, "channel");
    let replicas_first = format!("{},{},{}", c.nodes[1].url, c.nodes[2].url, c.nodes[0].url);
    let (_f, rec) = follower(&replicas_first, &name);
    assert_eq!(numsub(&c, &channel), [1, 0, 0], "on the primary (node 0)");
    for n in 1..=10 {
        leader
            .publish(&name, format!("{{\"n\":{n}}}").as_bytes())
            .unwrap();
        leader.flush(&name, 5000).unwrap();
    }
    rec.wait_state(&name, "{\"n\":10}", Duration::from_secs(10));
    let states = rec.states(&name);
    // Latest wins: a state the callback thread had not taken yet when
    // the next one came may be skipped (flush waits for Redis, not for
    // the follower), never reordered, and the last one is delivered.
    assert_increasing(&states);
    let seen: Vec<String> = states.iter().map(|(_, s)| s.clone()).collect();
    let every: Vec<String> = (0..=10).map(|n| format!("{{\"n\":{n}}}")).collect();
    assert!(
        seen.iter().all(|s| every.contains(s)),
        "only the leader's states: {seen:?}"
    );
    assert_eq!(seen.first(), every.first(), "the state at connect first");
    assert_eq!(seen.last(), every.last(), "the last state last");
    assert_eq!(numsub(&c, &channel), [1, 0, 0]);

    let killed = c.primary();
    c.kill_primary();
    let (primary, _) = c.wait_promoted(Duration::from_secs(30));
    assert_ne!(primary, killed);
    let mut n = 10;
    let deadline = Instant::now() + Duration::from_secs(30);
    while n < 20 && Instant::now() < deadline {
        n += 1;
        leader
            .publish(&name, format!("{{\"n\":{n}}}").as_bytes())
            .unwrap();
        if leader.flush(&name, 15_000).is_err() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    leader.flush(&name, 15_000).unwrap();
    let last = format!("{{\"n\":{n}}}");
    rec.wait_state(&name, &last, Duration::from_secs(30));
    let subs = |node: usize| numsub(&c, &channel)[node];
    common::wait_until(Duration::from_secs(10), || subs(primary) == 1);
    for node in (0..3).filter(|&k| k != primary && k != killed) {
        assert_eq!(subs(node), 0, "no follower on the replica node {node}");
    }
    assert_increasing(&rec.states(&name));
    // States published after the promotion came through the new primary.
    let after: Vec<u64> = rec
        .states(&name)
        .iter()
        .filter(|(_, s)| *s == last)
        .map(|(q, _)| *q)
        .collect();
    assert_eq!(after.len(), 1, "the last state once");
}

#[test]
fn writes_lost_in_a_failover_are_restored_and_seq_never_goes_back() {
    // (Replicas carry the channel: the first follower, on a replica, never
    // sees the lost states.)
    let mut c = Cluster::start_on_replicas();
    let name = unique("ha-lost");
    let leader = client(&c.urls, 4000, 250);
    leader.start(&name, PW, CODE).unwrap();
    for i in 1..=5 {
        leader
            .publish(&name, format!("{{\"before\":{i}}}").as_bytes())
            .unwrap();
        leader.flush(&name, 5000).unwrap();
    }
    let (_f1, rec1) = follower(&c.urls, &name);
    rec1.wait_state(&name, "{\"before\":5}", Duration::from_secs(5));

    // Replication cut: the primary alone acknowledges the next 10 states.
    c.freeze_replicas();
    for i in 1..=10 {
        leader
            .publish(&name, format!("{{\"lost\":{i}}}").as_bytes())
            .unwrap();
        leader.flush(&name, 5000).unwrap();
    }
    let acked_seq: u64 = record_field(&c, 0, &name, "seq").parse().unwrap();
    assert_eq!(acked_seq, 15);
    // A follower on the primary sees them; then the primary dies with them.
    let (_f2, rec2) = follower(&c.urls, &name);
    rec2.wait_state(&name, "{\"lost\":10}", Duration::from_secs(5));
    c.kill_primary();
    c.thaw_replicas();
    let (primary, _) = c.wait_promoted(Duration::from_secs(30));
    // The quiet leader finds its newest state missing on the new primary
    // and publishes it again, above every seq a follower saw.
    common::wait_until(Duration::from_secs(15), || {
        record_field(&c, primary, &name, "state") == "{\"lost\":10}"
    });
    let seq: u64 = record_field(&c, primary, &name, "seq").parse().unwrap();
    assert!(
        seq > acked_seq,
        "restored at seq {seq}, not above {acked_seq}"
    );
    // Every follower converges on the leader's newest state, which the one
    // on the dead primary had already seen: it gets the restored copy as a
    // newer seq or keeps the one it has, never an older seq.
    for rec in [&rec1, &rec2] {
        rec.wait_state(&name, "{\"lost\":10}", Duration::from_secs(20));
    }
    leader.publish(&name, b"{\"after\":1}").unwrap();
    leader.flush(&name, 10_000).unwrap();
    for rec in [&rec1, &rec2] {
        rec.wait_state(&name, "{\"after\":1}", Duration::from_secs(20));
        let states = rec.states(&name);
        assert_increasing(&states);
        assert!(states.last().unwrap().0 > seq, "{states:?}");
    }
}

#[test]
fn with_min_replicas_to_write_a_state_no_replica_holds_is_not_acknowledged() {
    let mut c = Cluster::start_with(ClusterOptions {
        min_replicas: 1,
        ..Default::default()
    });
    let name = unique("ha-durable");
    let leader = client(&c.urls, 2000, 250);
    leader.start(&name, PW, CODE).unwrap();
    leader.publish(&name, b"{\"held\":1}").unwrap();
    leader.flush(&name, 5000).unwrap();
    let held_seq: u64 = record_field(&c, 0, &name, "seq").parse().unwrap();
    // Replication cut for longer than min-replicas-max-lag (1 s): the
    // primary refuses writes (NOREPLICAS) instead of acknowledging states
    // that would die with it.
    c.freeze_replicas();
    std::thread::sleep(Duration::from_millis(2500));
    leader.publish(&name, b"{\"unheld\":1}").unwrap();
    let e = leader.flush(&name, 3000).unwrap_err();
    assert!(
        matches!(
            e.status,
            Status::MS_ERR_UNAVAILABLE | Status::MS_ERR_TIMEOUT
        ),
        "{e}"
    );
    assert_state_eq(&record_field(&c, 0, &name, "state"), "{\"held\":1}", "");
    c.kill_primary();
    c.thaw_replicas();
    let (primary, _) = c.wait_promoted(Duration::from_secs(30));
    // What was acknowledged survived; the leader then delivers the state
    // it kept on the new primary by itself.
    let seq: u64 = record_field(&c, primary, &name, "seq").parse().unwrap();
    assert!(seq >= held_seq, "seq {seq} < acknowledged {held_seq}");
    leader.flush(&name, 15_000).unwrap();
    assert_state_eq(
        &record_field(&c, primary, &name, "state"),
        "{\"unheld\":1}",
        "",
    );
}

#[test]
fn a_follower_on_a_replica_of_a_quiet_leader_reports_presence_not_lost_connections() {
    let c = Cluster::start_on_replicas();
    let name = unique("ha-quiet");
    let hb = 200;
    let leader = client(&c.urls, 4000, hb);
    leader.start(&name, PW, CODE).unwrap();
    leader.publish(&name, b"{\"a\":1}").unwrap();
    leader.flush(&name, 5000).unwrap();
    let channel = record_field(&c, 0, &name, "channel");
    let (_f, rec) = follower(&c.urls, &name);
    rec.wait_state(&name, "{\"a\":1}", Duration::from_secs(5));
    let subs = numsub(&c, &channel);
    assert_eq!(subs[0], 0, "on a replica: {subs:?}");
    // The leader goes quiet (its client is freed; the stream stays) for
    // more than 10 heartbeat intervals: the follower probes through the
    // primary, and its probes come back through the replica.
    drop(leader);
    rec.wait_kind(
        &name,
        EventKind::MS_EVENT_LEADER_OFFLINE,
        Duration::from_secs(5),
    );
    std::thread::sleep(Duration::from_millis(12 * hb as u64));
    let leader = client(&c.urls, 4000, hb);
    leader.reconnect(&name, PW, CODE).unwrap();
    leader.publish(&name, b"{\"b\":2}").unwrap();
    leader.flush(&name, 5000).unwrap();
    rec.wait_state(&name, "{\"b\":2}", Duration::from_secs(5));
    let events: Events = rec.wait_kind(
        &name,
        EventKind::MS_EVENT_LEADER_ONLINE,
        Duration::from_secs(5),
    );
    assert_eq!(
        kinds(&events, EventKind::MS_EVENT_CONNECTION_LOST),
        0,
        "{events:#?}"
    );
    assert_eq!(
        kinds(&events, EventKind::MS_EVENT_LEADER_OFFLINE),
        1,
        "{events:#?}"
    );
    assert_eq!(
        kinds(&events, EventKind::MS_EVENT_LEADER_ONLINE),
        1,
        "{events:#?}"
    );
    let offline = events
        .iter()
        .position(|e| e.kind == EventKind::MS_EVENT_LEADER_OFFLINE);
    let online = events
        .iter()
        .position(|e| e.kind == EventKind::MS_EVENT_LEADER_ONLINE);
    assert!(offline < online, "{events:#?}");
    assert_increasing(&rec.states(&name));
}

/// The endpoint that took a write is the primary from then on, not the
/// first one tried: with a URL list that starts with a replica (which
/// answers writes with READONLY), a client's writes land on the second
/// endpoint, and a follower, which subscribes on replicas first and on
/// the primary last, subscribes on the replica (were the first endpoint
/// still taken for the primary, it would subscribe on the primary's node).
#[test]
fn the_endpoint_that_took_a_write_is_the_primary_from_then_on() {
    let c = Cluster::start_on_replicas();
    let primary = c.primary();
    let replica = c.replicas()[0];
    let urls = format!("{},{}", c.nodes[replica].url, c.nodes[primary].url);
    let name = unique("ha-took-write");
    let leader = client(&urls, 4000, 1000);
    leader.start(&name, PW, CODE).unwrap();
    leader.publish(&name, b"{\"n\":1}").unwrap();
    leader.flush(&name, 5000).unwrap();
    let channel = record_field(&c, primary, &name, "channel");
    assert_eq!(record_field(&c, primary, &name, "seq"), "1");
    let (_f, rec) = follower(&urls, &name);
    let subs = numsub(&c, &channel);
    assert_eq!(
        (subs[replica], subs[primary]),
        (1, 0),
        "the follower subscribes on the replica (node {replica}), not on the \
         primary (node {primary}): {subs:?}"
    );
    leader.publish(&name, b"{\"n\":2}").unwrap();
    rec.wait(Duration::from_secs(10), |ev| {
        ev.iter().any(|e| e.state.as_deref() == Some("{\"n\":2}"))
    });
    assert_increasing(&rec.states(&name));
}

#[test]
fn list_counts_the_followers_of_every_node() {
    let c = Cluster::start_on_replicas();
    let leader = client(&c.urls, 4000, 1000);
    let a = unique("ha-list-a");
    let b = unique("ha-list-b");
    leader.start(&a, PW, CODE).unwrap();
    leader.start(&b, PW, CODE).unwrap();
    // Two followers of a on its replica, one on the primary's own Webdis
    // (a client given only that endpoint), one of b.
    let (_fa1, _) = follower(&c.urls, &a);
    let (_fa2, _) = follower(&c.urls, &a);
    let (_fa3, _) = follower(&c.nodes[0].url, &a);
    let (_fb, _) = follower(&c.urls, &b);
    let channel = record_field(&c, 0, &a, "channel");
    let subs = numsub(&c, &channel);
    assert_eq!(subs[0], 1, "{subs:?}");
    // From any endpoint first: a client listing the replicas first finds
    // the primary for ms_list and asks every node for its followers.
    let rotated: Vec<&str> = vec![&c.nodes[2].url, &c.nodes[1].url, &c.nodes[0].url];
    for urls in [c.urls.clone(), rotated.join(",")] {
        let lister = client(&urls, 4000, 1000);
        let list = lister.list().unwrap();
        let count = |n: &str| list.iter().find(|i| i.name == n).map(|i| i.followers);
        assert_eq!(count(&a), Some(3), "{urls}: {list:?}");
        assert_eq!(count(&b), Some(1), "{urls}: {list:?}");
    }
    // One node's Webdis counts its own subscribers only.
    let single = client(&c.nodes[0].url, 4000, 1000);
    let list = single.list().unwrap();
    assert_eq!(
        list.iter().find(|i| i.name == a).map(|i| i.followers),
        Some(1)
    );
}

#[test]
fn every_endpoint_down_is_one_clear_error_and_one_back_is_enough() {
    let mut s = Servers::start();
    // Ports nothing listens on.
    let dead = || {
        let l = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        format!("http://127.0.0.1:{}", l.local_addr().unwrap().port())
    };
    let (d1, d2) = (dead(), dead());
    let urls = format!("{d1},{},{d2}", s.url);
    let c = client(&urls, 1500, 1000);
    let name = unique("ha-down");
    c.start(&name, PW, CODE).unwrap();
    c.publish(&name, b"{\"up\":1}").unwrap();
    c.flush(&name, 5000).unwrap();
    s.stop_webdis();
    let started = Instant::now();
    let e = c.list().unwrap_err();
    let took = started.elapsed();
    assert_eq!(e.status, Status::MS_ERR_UNAVAILABLE, "{e}");
    for u in [&d1, &s.url, &d2] {
        assert!(e.message.contains(u.as_str()), "{u} not named: {e}");
    }
    assert!(
        took >= Duration::from_millis(1000) && took < Duration::from_secs(6),
        "gave up after {took:?} (timeout 1.5 s)"
    );
    // A publish meanwhile is kept and delivered once an endpoint is back.
    c.publish(&name, b"{\"up\":2}").unwrap();
    assert!(c.flush(&name, 500).is_err());
    // Longer than the request timeout: the publish failed over every
    // endpoint at least once, and is kept for the next try.
    std::thread::sleep(Duration::from_millis(2500));
    s.start_webdis();
    c.flush(&name, 10_000).unwrap();
    assert_state_eq(&s.record_field(&name, "state"), "{\"up\":2}", "");
    assert_eq!(
        c.list().unwrap().iter().filter(|i| i.name == name).count(),
        1
    );
}

#[test]
fn url_lists_with_bad_entries_are_refused_naming_the_entry() {
    for (urls, says) in [
        ("http://127.0.0.1:1,", "entry 2 of the Webdis URL list"),
        ("http://127.0.0.1:1, ,http://127.0.0.1:2", "entry 2"),
        ("http://127.0.0.1:1,127.0.0.1:2", "entry 2"),
        ("http://127.0.0.1:1,http://127.0.0.1:1/", "repeats entry 1"),
    ] {
        let e = Client::new(urls)
            .err()
            .unwrap_or_else(|| panic!("{urls} accepted"));
        assert_eq!(e.status, Status::MS_ERR_INVALID_ARGUMENT, "{urls}");
        assert!(e.message.contains(says), "{urls}: {}", e.message);
    }
}
