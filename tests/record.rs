//! The record keeps changes, not copies: a stream's record is a base state
//! (`s`, `b`) and a log of the deltas since it (`msl:<name>`), composed and
//! compacted now and then. Nothing
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

/// The record's log, read through `record::newest`: (entries, newest
/// length, log bytes), (0, len, 0) when the base is the newest state.
fn account(s: &Servers, name: &str) -> (u64, u64, u64) {
    let n = record::newest(s.redis_port, name).expect("a record of this version");
    (n.entries as u64, n.state.len() as u64, n.log_bytes as u64)
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
    assert_state_eq(&newest_state(s.redis_port, name), expected, why);
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
        &record::newest(s.redis_port, &name).unwrap().base,
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
        c.redis_cli(node, &["GET", &format!("msl:{name}")])
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
    let base = || s.redis_cli(&["HGET", &key, "s"]);
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

#[test]
fn the_seal_and_the_tag_of_the_protocol_vectors() {
    let token = "00112233445566778899aabbccddeeff";
    let lead = record::lead_hash(token);
    assert_eq!(lead, "2ab31b2b0c25d5f6cbc9e082f80ab7cd27ec6315");
    let id = "0123456789abcdef0000000000000001";
    let body = format!("r {id}\n{{}}");
    assert_eq!(body.len(), 37);
    assert_eq!(
        record::sha1_hex(format!("lead:{lead}:{id}:full:-:-:0:37").as_bytes()),
        "ef3b2bca03e3f98ae3080f01e1bb2c06d521095f"
    );
    assert_eq!(
        record::seal_lead(token, &lead, id, "full", "-", "-", "0", body.len()),
        "ef2a09f947b69ffd6b91a5ba2d66c2f9"
    );
    assert_eq!(
        record::seal_lead(
            token,
            &lead,
            id,
            "delta",
            "41",
            "0123456789abcdef0000000000000000",
            "0",
            53
        ),
        "4a46671bdf2df13d466b287b3a751bb4"
    );
    assert_eq!(record::channel_tag(&"0f".repeat(20)), "d5d24c8a08653d96");
    // Sealing twice opens the seal.
    let sealed = record::seal_lead(token, &lead, id, "full", "-", "-", "0", 37);
    assert_eq!(
        record::seal_lead(&sealed, &lead, id, "full", "-", "-", "0", 37),
        token
    );
}

#[test]
fn a_log_parses_into_its_entries() {
    let log = b"5\n3@0,2:ab1K; 7 12 1f\n3\n3:x;y2x; 8 20 20\n";
    let e = record::entries(log);
    assert_eq!(e.len(), 2);
    assert_eq!(e[0].delta, "5\n3@0,2:ab1K;");
    assert_eq!((e[0].seq, e[0].ms, e[0].counter.as_str()), (7, 12, "1f"));
    assert_eq!(e[1].delta, "3\n3:x;y2x;");
    assert_eq!((e[1].seq, e[1].ms), (8, 20));
}

/// Rewrites the record of stream `name` as protocol 8 kept it: the base
/// `state`, the deltas `d1`, `d2` to `newest` through `mid`, their
/// account, and the newest state's `seq`, `updated_ms` and `pub`.
fn write_v8_record(
    r: &mut record::Resp,
    name: &str,
    base: &str,
    mid: &str,
    newest: &str,
    id: &str,
    ms: u64,
) {
    let key = format!("stream:{name}");
    let d1 = missionstream::delta::create(base, mid);
    let d2 = missionstream::delta::create(mid, newest);
    r.call(&["HDEL", &key, "s", "b", "p"]);
    r.call(&["DEL", &format!("msl:{name}")]);
    let account = format!("2 {} {} 40 5", newest.len(), d1.len() + d2.len());
    let ms = ms.to_string();
    let reply = r.call(&[
        "HSET",
        &key,
        "state",
        base,
        "base",
        "0000000000000000000000000000000a",
        "d1",
        &d1,
        "d2",
        &d2,
        "deltas",
        &account,
        "seq",
        "5",
        "updated_ms",
        &ms,
        "pub",
        id,
    ]);
    assert_eq!(
        reply,
        record::Value::Int(8),
        "HSET of the fields of protocol 8"
    );
}

/// The record's fields and values, sorted.
fn fields_of(r: &mut record::Resp, name: &str) -> Vec<(String, String)> {
    let all = r.call(&["HGETALL", &format!("stream:{name}")]);
    let v = all.items();
    let mut out: Vec<(String, String)> = v.chunks(2).map(|p| (p[0].str(), p[1].str())).collect();
    out.sort();
    out
}

#[test]
fn a_record_of_protocol_8_is_read_unchanged_and_converted_once_by_the_first_write() {
    let s = Servers::start();
    let mut r = record::Resp::connect(s.redis_port);
    let mut plan = Plan::of_size(20 * 1024, 9);
    let base = plan.text();
    plan.move_waypoint(3, 0.0001, 0.0);
    let mid = plan.text();
    plan.move_waypoint(40, 0.0, 0.0001);
    let newest = plan.text();
    // Converted by a heartbeat, and by a delta publish against the state of
    // the record of protocol 8.
    for first_write in ["ms_heartbeat", "ms_publish"] {
        let name = unique("rec-v8");
        let mut l = record::RawLeader::start(s.redis_port, &name, 0);
        let id = format!("{}{:016x}", l.lead, 7);
        let ms = record::now_ms() - 5000;
        write_v8_record(&mut r, &name, &base, &mid, &newest, &id, ms);
        let before = fields_of(&mut r, &name);
        // The read-only paths read it as it is, and write nothing.
        let (seq, updated, hb, updated_age, _, msg) = l.snapshot("-");
        assert_eq!((seq, updated, hb), (5, ms, 1000));
        assert!(updated_age >= 5000, "updated age {updated_age}");
        assert_eq!(
            msg,
            format!("r {id}\n{newest}").into_bytes(),
            "the snapshot of a record of protocol 8"
        );
        let (_, _, _, _, _, unchanged) = l.snapshot(&format!("5:{ms}"));
        assert!(unchanged.is_empty(), "have names the newest state");
        let list = r.call(&[
            "FCALL",
            "ms_list",
            "1",
            "streams",
            record::VERSION,
            "l1st",
            "0",
        ]);
        let v = list.items();
        let at = v
            .iter()
            .position(|x| x.str() == name)
            .expect("ms_list lists the stream");
        assert_eq!(
            (v[at + 1].int(), v[at + 3].int()),
            (5, ms as i64),
            "ms_list: {list:?}"
        );
        assert_eq!(fields_of(&mut r, &name), before, "read, not written");
        // The first write of the leader converts it.
        if first_write == "ms_heartbeat" {
            let hb = l.heartbeat();
            assert_eq!(hb.items()[1].int(), 5, "{hb:?}");
            assert_eq!(hb.items()[2].str(), id);
        } else {
            (l.seq, l.id, l.state, l.counter) = (5, id.clone(), newest.clone(), 7);
            plan.move_waypoint(41, 0.0001, 0.0001);
            let next = plan.text();
            let reply = l.delta(&next);
            assert_eq!(
                reply.items()[1].int(),
                6,
                "a delta against the converted record: {reply:?}"
            );
        }
        for f in [
            "state",
            "base",
            "deltas",
            "seq",
            "updated_ms",
            "pub",
            "d1",
            "d2",
        ] {
            assert_eq!(
                r.call(&["HEXISTS", &format!("stream:{name}"), f]),
                record::Value::Int(0),
                "field {f} of protocol 8 after {first_write}"
            );
        }
        let n = record::newest(s.redis_port, &name).unwrap();
        if first_write == "ms_heartbeat" {
            assert_eq!(
                (n.seq, n.updated_ms, n.id.as_str(), n.entries),
                (5, ms, id.as_str(), 0)
            );
            assert_state_eq(&n.state, &newest, "converted");
            assert_eq!(n.base, newest, "the newest state is the base");
            // Deltas go on from it.
            (l.seq, l.id, l.state, l.counter) = (5, id.clone(), newest.clone(), 7);
            plan.move_waypoint(42, 0.0001, 0.0001);
            let next = plan.text();
            assert_eq!(l.delta(&next).items()[1].int(), 6);
        }
        let n = record::newest(s.redis_port, &name).unwrap();
        assert_eq!((n.seq, n.entries), (6, 1), "one entry in the log");
        assert_state_eq(&n.state, &l.state, "after a delta");
        let (_, _, _, _, _, msg) = l.snapshot("-");
        assert_eq!(msg, format!("r {}\n{}", l.id, l.state).into_bytes());
        // Converted once: a second write changes nothing of the base.
        let s_before = r.call(&["HGET", &format!("stream:{name}"), "s"]);
        l.heartbeat();
        assert_eq!(r.call(&["HGET", &format!("stream:{name}"), "s"]), s_before);
    }
}

/// Bytes of the AOF's commands from the `skip`th on, by command name
/// (`HSET` named with its key's prefix), largest first.
fn aof_by_command(s: &Servers, skip: usize) -> Vec<(String, usize, usize)> {
    let (cmds, _) = s.aof_commands();
    let mut by: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
    for c in cmds.iter().skip(skip) {
        let bytes = format!("*{}\r\n", c.len()).len()
            + c.iter()
                .map(|a| format!("${}\r\n", a.len()).len() + a.len() + 2)
                .sum::<usize>();
        let mut name = String::from_utf8_lossy(&c[0]).to_uppercase();
        if c.len() > 1 && name != "MULTI" && name != "EXEC" {
            let key = String::from_utf8_lossy(&c[1]);
            name = format!("{name} {}", key.split(':').next().unwrap_or(""));
        }
        let e = by.entry(name).or_default();
        e.0 += 1;
        e.1 += bytes;
    }
    let mut v: Vec<(String, usize, usize)> = by.into_iter().map(|(k, (n, b))| (k, n, b)).collect();
    v.sort_by_key(|x| std::cmp::Reverse(x.2));
    v
}

/// `updates` one-waypoint updates as raw deltas, waypoint `place(i)` moved
/// at update i; returns the AOF's and the replication stream's bytes per
/// update and the "d" message's (all of them averaged).
fn bytes_per_update(
    s: &Servers,
    l: &mut record::RawLeader,
    plan: &mut Plan,
    updates: usize,
    place: impl Fn(usize) -> (usize, f64),
    what: &str,
) -> (f64, f64, f64) {
    let (aof0, repl0) = (aof_size(s), master_offset(s));
    let skip = s.aof_commands().0.len();
    let mut message_bytes = 0usize;
    for i in 0..updates {
        let (w, by) = place(i);
        plan.move_waypoint(w, by, -by);
        let text = plan.text();
        let base_seq = l.seq;
        let d = missionstream::delta::create(&l.state, &text);
        let reply = l.delta(&text);
        assert!(
            matches!(reply, record::Value::Array(_)),
            "update {i}: {reply:?}"
        );
        // The "d" message of the update (updated_ms: 13 digits).
        message_bytes += format!("d {} {base_seq} 1765000000000\n", l.seq).len() + d.len();
    }
    let aof = (aof_size(s) - aof0) as f64 / updates as f64;
    let repl = (master_offset(s) - repl0) as f64 / updates as f64;
    let message = message_bytes as f64 / updates as f64;
    eprintln!(
        "{what}: per one-waypoint update of a {} byte plan: AOF {aof:.0} B, replication {repl:.0} B, \
         d message {message:.0} B ({:.2} x, {:.2} x); the AOF's commands (name, count, bytes): {:?}",
        l.state.len(),
        aof / message,
        repl / message,
        aof_by_command(s, skip)
    );
    (aof, repl, message)
}

#[test]
fn the_aof_grows_by_at_most_four_delta_messages_per_one_waypoint_update() {
    let s = Servers::start();
    let replica = Replica::start(&s);
    s.redis_cli(&["CONFIG", "SET", "auto-aof-rewrite-percentage", "0"]);
    // (Every write in the file before the call returns: the sizes read
    // between calls are exact.)
    s.redis_cli(&["CONFIG", "SET", "appendfsync", "always"]);
    let name = unique("rec-aof4");
    let mut l = record::RawLeader::start(s.redis_port, &name, 0);
    let mut plan = Plan::of_size(100 * 1024, 13);
    l.full(&plan.text());
    let n = plan.waypoints();
    // Ten waypoints spread over the plan, each moved and moved back in
    // turn (the updates of the benchmark's row 13).
    let ring = |i: usize| {
        let k = i % 20;
        (
            (k % 10) * n / 10 + 3,
            if k < 10 { 0.00002 } else { -0.00002 },
        )
    };
    // What the replicas get, command by command.
    let raw = record::RawReplica::attach(s.redis_port);
    let (aof, repl, message) =
        bytes_per_update(&s, &mut l, &mut plan, 200, ring, "ring of ten places");
    assert!(
        aof <= 4.0 * message,
        "AOF {aof:.0} B per update, over 4 x the {message:.0} B d message"
    );
    assert!(
        repl <= 4.0 * message,
        "replication {repl:.0} B per update, over 4 x the {message:.0} B d message"
    );
    // The channel's messages stay on the primary (the library's default):
    // the replicas get the record's writes alone, one APPEND per update,
    // with no MULTI/EXEC around it (Redis wraps a function's writes only
    // when there are several: the first update, which also sets the
    // record's lead prefix, or a composition).
    let marker = unique("rec-aof4-marker");
    s.redis_cli(&["SET", &marker, "1"]);
    let names = record::command_names(&raw.take_until(marker.as_bytes(), T));
    let count = |n: &str| names.iter().filter(|c| *c == n).count();
    assert_eq!(count("PUBLISH"), 0, "{names:?}");
    assert!(count("APPEND") >= 150, "{names:?}");
    assert!(count("MULTI") <= 10, "{names:?}");
    // A new place at every update: the log is composed now and then (a
    // write of the edited pieces), and still within the bound.
    let scattered = |i: usize| ((i * 7) % n, 0.00001);
    let (aof, _, message) = bytes_per_update(
        &s,
        &mut l,
        &mut plan,
        200,
        scattered,
        "a new place every update",
    );
    assert!(
        aof <= 4.0 * message,
        "AOF {aof:.0} B per update, over 4 x the {message:.0} B d message"
    );
    let rec = record::newest(s.redis_port, &name).unwrap();
    assert!(rec.entries > 0, "the updates are in the log");
    assert_state_eq(&rec.state, &l.state, "");
    replica_reads(&s, &replica, &name, &l.state, "the replica");
}

/// ms_connect's last value: 1 when replicas carry the channel, 0 not.
fn connect_says_on_replicas(l: &mut record::RawLeader) -> i64 {
    let key = format!("stream:{}", l.name);
    let body = record::framed(&[l.pw_key.as_bytes()]);
    let r = l.redis.call(&[
        b"FCALL".as_slice(),
        b"ms_connect",
        b"1",
        key.as_bytes(),
        record::VERSION.as_bytes(),
        b"c0nnect",
        &body,
    ]);
    let items = r.items();
    assert_eq!(items.len(), 4, "{r:?}");
    assert_eq!(items[0].str(), "c0nnect");
    items[3].int()
}

/// A subscription of `channel` on the Redis of `port`, straight (no Webdis).
fn subscribe(port: u16, channel: &str) -> record::Resp {
    let mut r = record::Resp::connect(port);
    let ack = r.call(&["SUBSCRIBE", channel]);
    assert_eq!(ack.items()[0].str(), "subscribe", "{ack:?}");
    r
}

/// The kinds (first letter) of the next `n` messages on a subscription;
/// fewer when they do not come within a few seconds.
fn message_kinds(sub: &mut record::Resp, n: usize) -> Vec<String> {
    let mut kinds = Vec::new();
    while kinds.len() < n {
        let Some(m) = sub.next_within(Duration::from_secs(5)) else {
            break;
        };
        assert_eq!(m.items()[0].str(), "message", "{m:?}");
        kinds.push(m.items()[2].str()[..1].to_string());
    }
    kinds
}

/// Where the channel is carried is the deployment's setting, a line of
/// the functions library: by default every message (states, deltas,
/// heartbeats) is published on the primary only, ms_connect answers 0, a
/// subscriber on a replica hears nothing and the replication stream holds
/// no PUBLISH; loaded with `CHANNEL_ON_REPLICAS = true` (on the primary,
/// replicated to the replica), ms_connect answers 1 and the replica's
/// subscribers get every message.
#[test]
fn channel_messages_reach_replicas_only_when_the_library_sets_channel_on_replicas() {
    let s = Servers::start();
    let replica = Replica::start(&s);
    let name = unique("rec-channel");
    let mut l = record::RawLeader::start(s.redis_port, &name, 0);
    assert_eq!(connect_says_on_replicas(&mut l), 0);
    let channel = l.channel.clone();
    let mut on_primary = subscribe(s.redis_port, &channel);
    let mut on_replica = subscribe(replica.port, &channel);
    let raw = record::RawReplica::attach(s.redis_port);
    let mut plan = Plan::of_size(4 * 1024, 3);
    l.full(&plan.text());
    plan.move_waypoint(1, 0.0001, -0.0001);
    l.delta(&plan.text());
    l.heartbeat();
    assert_eq!(message_kinds(&mut on_primary, 4), ["s", "r", "d", "h"]);
    let at = master_offset(&s);
    wait_until(T, || replica.offset() >= at);
    assert_state_eq(
        &newest_state(replica.port, &name),
        &plan.text(),
        "the replica holds the record",
    );
    assert_eq!(
        message_kinds(&mut on_replica, 1),
        Vec::<String>::new(),
        "nothing on the replica"
    );
    let marker = unique("rec-channel-marker");
    s.redis_cli(&["SET", &marker, "1"]);
    let names = record::command_names(&raw.take_until(marker.as_bytes(), T));
    assert!(names.iter().any(|c| c == "APPEND"), "{names:?}");
    assert!(!names.iter().any(|c| c == "PUBLISH"), "{names:?}");

    // The same library with the line set to true, loaded on the primary.
    s.load_functions(&library_with_channel_on_replicas(true));
    assert_eq!(connect_says_on_replicas(&mut l), 1);
    plan.move_waypoint(2, 0.0001, -0.0001);
    l.delta(&plan.text());
    l.heartbeat();
    assert_eq!(message_kinds(&mut on_primary, 2), ["d", "h"]);
    assert_eq!(
        message_kinds(&mut on_replica, 2),
        ["d", "h"],
        "the replica's subscriber"
    );
    let marker = unique("rec-channel-marker");
    s.redis_cli(&["SET", &marker, "1"]);
    let names = record::command_names(&raw.take_until(marker.as_bytes(), T));
    let count = |n: &str| names.iter().filter(|c| *c == n).count();
    assert_eq!(count("PUBLISH"), 2, "{names:?}");
    assert!(count("MULTI") >= 1, "{names:?}");

    // And back: the default again.
    s.load_functions(&library_with_channel_on_replicas(false));
    assert_eq!(connect_says_on_replicas(&mut l), 0);
    l.heartbeat();
    assert_eq!(message_kinds(&mut on_primary, 1), ["h"]);
    let at = master_offset(&s);
    wait_until(T, || replica.offset() >= at);
    assert_eq!(message_kinds(&mut on_replica, 1), Vec::<String>::new());
}

#[test]
fn restarts_from_the_aof_and_a_function_load_amid_raw_deltas_keep_the_newest_acknowledged_state() {
    let mut s = Servers::start();
    s.redis_cli(&["CONFIG", "SET", "appendfsync", "always"]);
    let name = unique("rec-raw-restart");
    let mut l = record::RawLeader::start(s.redis_port, &name, 0);
    // 8 KiB: compacted after some 100 updates.
    let mut plan = Plan::of_size(8 * 1024, 14);
    l.full(&plan.text());
    let (mut restarts, mut compactions, mut last_entries) = (0, 0, 0);
    for i in 0..240 {
        plan.move_waypoint((i * 5) % plan.waypoints(), 0.00001, 0.00001);
        let text = plan.text();
        let reply = if i == 200 {
            l.full(&text)
        } else {
            l.delta(&text)
        };
        assert!(
            matches!(reply, record::Value::Array(_)),
            "update {i}: {reply:?}"
        );
        let n = record::newest(s.redis_port, &name).unwrap();
        if n.entries < last_entries && i != 200 {
            compactions += 1;
        }
        last_entries = n.entries;
        let why = if i == 120 {
            // A new Lua VM: the states the functions kept are gone.
            s.load_functions(&library());
            "FUNCTION LOAD REPLACE"
        } else if i % 23 == 11 || (n.entries == 0 && i > 0) {
            // Killed between updates, in a run of deltas and right after a
            // compaction or a full state.
            s.kill_redis();
            s.start_redis();
            s.redis_cli(&["CONFIG", "SET", "appendfsync", "always"]);
            l.redis = record::Resp::connect(s.redis_port);
            restarts += 1;
            "a restart"
        } else {
            continue;
        };
        let (seq, _, _, _, _, msg) = l.snapshot("-");
        assert_eq!(seq, l.seq, "seq after {why} at update {i}");
        assert_state_eq(
            &String::from_utf8(msg).unwrap(),
            &format!("r {}\n{}", l.id, l.state),
            &format!("the snapshot after {why} at update {i}"),
        );
        assert_state_eq(
            &record::newest(s.redis_port, &name).unwrap().state,
            &l.state,
            why,
        );
    }
    assert!(compactions >= 1, "{compactions} compactions");
    assert!(restarts >= 8, "{restarts} restarts");
}
