//! Tests that prove the guarantees (issue 13): each fails against a
//! library broken in the one way it names, where a weaker check would not.

mod common;

use common::faults::{FaultRelay, Faults, GarbleChunk, Gate, SwitchRelay};
use common::*;
use missionstream::{Client, Event, EventKind, Status};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(10);

/// Connects `follower` to `name` on another thread while `during` runs
/// once `relay`'s gate holds its request; then opens the gate.
fn connect_across_gate(follower: &Client, name: &str, relay: &FaultRelay, during: impl FnOnce()) {
    std::thread::scope(|scope| {
        let joining = scope.spawn(|| follower.connect(name, "pw"));
        relay.wait_gated(T);
        during();
        relay.open_gate();
        joining.join().unwrap().unwrap();
    });
}

/// Late join: the follower subscribes before it reads the snapshot. The
/// relay holds the follower's SUBSCRIBE while the leader stores a state:
/// read after the subscription, the snapshot has that state; read before
/// it (the race the design avoids), the follower would miss the state
/// until the next publish.
#[test]
fn late_joiner_gets_a_state_published_while_it_subscribes() {
    let s = Servers::start();
    let relay = FaultRelay::start(
        s.webdis_port,
        Faults {
            gate: Some(Gate {
                pattern: "/SUBSCRIBE/",
                nth: 1,
                max_hold: Duration::from_secs(5),
            }),
            ..Faults::default()
        },
    );
    let leader = s.client();
    let name = unique("late-race");
    leader.start(&name, "pw", "code").unwrap();
    leader.publish(&name, b"{\"v\":1}").unwrap();
    leader.flush(&name, 10_000).unwrap();
    let follower = Client::new(&relay.url).unwrap();
    follower.set_timeout(5000).unwrap();
    let rec = Recorder::attach(&follower);
    connect_across_gate(&follower, &name, &relay, || {
        leader.publish(&name, b"{\"v\":2}").unwrap();
        leader.flush(&name, 10_000).unwrap();
    });
    // Promptly, with nothing published since.
    rec.wait_state(&name, "{\"v\":2}", Duration::from_secs(2));
    assert_increasing(&rec.states(&name));
    assert_eq!(relay.gated(), 1);
}

/// Late join: the snapshot is read only once the probe came back on the
/// subscription. The relay holds the follower's probe (the subscription
/// is acknowledged by then) while the leader stores a state: its message
/// reaches the subscription before the probe's echo, where the follower
/// only looks for the echo, so the state must come from the snapshot.
/// Read before the probe (right after the acknowledgement), the snapshot
/// would hold the older state and the newer one would be lost until the
/// next publish.
#[test]
fn late_joiner_gets_a_state_stored_between_the_subscribe_ack_and_the_probe_echo() {
    let s = Servers::start();
    let relay = FaultRelay::start(
        s.webdis_port,
        Faults {
            gate: Some(Gate {
                pattern: "/ms_probe/",
                nth: 1,
                max_hold: Duration::from_secs(10),
            }),
            ..Faults::default()
        },
    );
    let leader = s.client();
    let name = unique("probe-race");
    leader.start(&name, "pw", "code").unwrap();
    leader.publish(&name, b"{\"v\":1}").unwrap();
    leader.flush(&name, 10_000).unwrap();
    let follower = Client::new(&relay.url).unwrap();
    // Time for one subscription attempt (a quarter of the timeout) well
    // above the time the probe is held: the first attempt is the one that
    // reads the snapshot.
    follower.set_timeout(40_000).unwrap();
    let rec = Recorder::attach(&follower);
    connect_across_gate(&follower, &name, &relay, || {
        leader.publish(&name, b"{\"v\":2}").unwrap();
        leader.flush(&name, 10_000).unwrap();
    });
    // Promptly, with nothing published since.
    rec.wait_state(&name, "{\"v\":2}", Duration::from_secs(3));
    assert_increasing(&rec.states(&name));
    assert_eq!(relay.gated(), 1);
}

/// Ordering: two states published between the subscription's proof and
/// the snapshot reach the follower in the snapshot (the newer one), and on
/// the subscription after it (the relay passes state messages on 300 ms
/// late): a stale message with an older seq, then one with the same seq.
/// Neither may be delivered: each state once, seqs strictly rising.
#[test]
fn a_state_both_in_the_snapshot_and_on_the_subscription_is_delivered_once() {
    let s = Servers::start();
    let relay = FaultRelay::start(
        s.webdis_port,
        Faults {
            gate: Some(Gate {
                pattern: "/ms_snapshot/",
                nth: 1,
                max_hold: Duration::from_secs(5),
            }),
            delay_states: Duration::from_millis(300),
            ..Faults::default()
        },
    );
    let leader = s.client();
    let name = unique("stale-dup");
    leader.start(&name, "pw", "code").unwrap();
    let follower = Client::new(&relay.url).unwrap();
    follower.set_timeout(5000).unwrap();
    let rec = Recorder::attach(&follower);
    connect_across_gate(&follower, &name, &relay, || {
        leader.publish(&name, b"{\"v\":1}").unwrap();
        leader.flush(&name, 10_000).unwrap();
        leader.publish(&name, b"{\"v\":2}").unwrap();
        leader.flush(&name, 10_000).unwrap();
    });
    rec.wait_state(&name, "{\"v\":2}", T);
    // The stale copies of seq 1 and 2 are on the subscription ahead of
    // the next state: once it is delivered, they were handled.
    leader.publish(&name, b"{\"v\":3}").unwrap();
    rec.wait_state(&name, "{\"v\":3}", T);
    let states = rec.states(&name);
    assert_increasing(&states);
    assert_eq!(
        states,
        seq_states(&[(2, "{\"v\":2}"), (3, "{\"v\":3}")]),
        "each state once, in order"
    );
}

/// Webdis 0.1.9 may swap a channel's messages, the stream's end among
/// them (seen: `e`, `r`, `s` for an `s`, `r`, `e` published in that
/// order). The relay passes each state header or delta on after the next
/// one, and the last after the end, 50 ms later, in a read of its own:
/// every state stored before ms_stop still reaches the follower, in order,
/// and ENDED comes after the last one.
#[test]
fn a_state_overtaken_by_the_streams_end_is_delivered_before_it() {
    let s = Servers::start();
    let relay = FaultRelay::start(
        s.webdis_port,
        Faults {
            end_overtakes_states: true,
            ..Faults::default()
        },
    );
    let leader = s.client();
    let name = unique("end-first");
    leader.start(&name, "pw", "code").unwrap();
    leader.publish(&name, b"{\"v\":0}").unwrap();
    leader.flush(&name, 10_000).unwrap();
    let follower = Client::new(&relay.url).unwrap();
    let rec = Recorder::attach(&follower);
    follower.connect(&name, "pw").unwrap();
    rec.wait_state(&name, "{\"v\":0}", T);
    for v in 1..=3 {
        let state = format!("{{\"v\":{v}}}");
        leader.publish(&name, state.as_bytes()).unwrap();
        leader.flush(&name, 10_000).unwrap();
    }
    leader.stop(&name).unwrap();
    let events = rec.wait_kind(&name, EventKind::MS_EVENT_ENDED, T);
    assert_eq!(relay.overtaken(), 1, "the end overtook the last state");
    let states = rec.states(&name);
    assert_increasing(&states);
    assert_eq!(
        states.last().map(|(seq, state)| (*seq, state.as_str())),
        Some((4, "{\"v\":3}")),
        "the last state stored before ms_stop: {states:?}"
    );
    let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds.last(),
        Some(&EventKind::MS_EVENT_ENDED),
        "ENDED last: {events:?}"
    );
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == EventKind::MS_EVENT_ENDED)
            .count(),
        1
    );
}

/// ms_disconnect from another thread waits for the callback of that
/// stream that is running, and nothing of the stream is delivered after
/// it returns (a state queued behind the slow callback is dropped).
#[test]
fn disconnect_waits_for_the_running_callback_and_nothing_follows() {
    let s = Servers::start();
    let leader = s.client();
    let follower = s.client();
    let name = unique("slow-cb");
    leader.start(&name, "pw", "code").unwrap();
    // (what, when): "start"/"end" of the slow callback, else the state.
    let log: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let l = log.clone();
    follower.set_callback(Some(Arc::new(move |e: &Event| {
        let state = e.state.as_ref().map(|s| s.as_str().to_string());
        if state.as_deref() == Some("{\"slow\":1}") {
            l.lock().unwrap().push(("start".into(), Instant::now()));
            std::thread::sleep(Duration::from_millis(500));
            l.lock().unwrap().push(("end".into(), Instant::now()));
        } else {
            let what = state.unwrap_or_else(|| format!("{:?}", e.kind));
            l.lock().unwrap().push((what, Instant::now()));
        }
    })));
    follower.connect(&name, "pw").unwrap();
    leader.publish(&name, b"{\"slow\":1}").unwrap();
    wait_until(T, || log.lock().unwrap().iter().any(|(w, _)| w == "start"));
    // Queued behind the running callback.
    leader.publish(&name, b"{\"after\":1}").unwrap();
    leader.flush(&name, 10_000).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    follower.disconnect(&name).unwrap();
    let returned = Instant::now();
    let at_return = log.lock().unwrap().clone();
    let ended = at_return.iter().find(|(w, _)| w == "end");
    assert!(
        ended.is_some_and(|(_, t)| *t <= returned),
        "disconnect returned while the callback still ran: {at_return:?}"
    );
    leader.publish(&name, b"{\"later\":1}").unwrap();
    leader.flush(&name, 10_000).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let log = log.lock().unwrap().clone();
    assert!(
        log.iter().all(|(_, t)| *t <= returned),
        "delivered after disconnect returned: {log:?}"
    );
    assert!(!log
        .iter()
        .any(|(w, _)| w.contains("after") || w.contains("later")));
}

/// The functions refresh a stream's TTL on each publish: a leader that
/// publishes more often than its heartbeat interval (so it never sends a
/// heartbeat) keeps its stream alive well past the TTL.
#[test]
fn publishing_alone_keeps_a_stream_with_a_ttl_alive() {
    let s = Servers::start();
    let leader = s.client();
    leader.set_heartbeat(500).unwrap();
    leader.set_stream_ttl(1).unwrap();
    let name = unique("ttl-publish");
    leader.start(&name, "pw", "code").unwrap();
    let key = format!("stream:{name}");
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < Duration::from_millis(3000) {
        i += 1;
        leader
            .publish(&name, format!("{{\"i\":{i}}}").as_bytes())
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let ttl: i64 = s.redis_cli(&["PTTL", &key]).trim().parse().unwrap();
        assert!(
            ttl > 0 && ttl <= 1062,
            "after {:?} of publishing every 100 ms, PTTL {ttl} (stream:{name} with a 1 s TTL)",
            started.elapsed()
        );
    }
    assert_eq!(s.record_field(&name, "ttl"), "1");
    assert!(
        leader.list().unwrap().iter().any(|st| st.name == name),
        "the stream is listed"
    );
    leader.flush(&name, 10_000).unwrap();
    assert_state_eq(
        &s.record_field(&name, "state"),
        &format!("{{\"i\":{i}}}"),
        "",
    );
}

/// Bytes that TCP connections from this process to `127.0.0.1:port` hold
/// unread at the server's end: requests that reached a frozen server
/// (from /proc/net/tcp, the receive queue of each socket of that local
/// port whose peer is a socket of this process; a socket of another
/// process on this machine may have that number as its own local port).
fn bytes_unread_at(port: u16) -> u64 {
    let tcp = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let ours: std::collections::HashSet<String> = std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| {
            let link = std::fs::read_link(e.ok()?.path()).ok()?;
            let link = link.to_str()?;
            Some(
                link.strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_string(),
            )
        })
        .collect();
    let server = format!("0100007F:{port:04X}");
    let rows: Vec<Vec<&str>> = tcp
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .filter(|f: &Vec<&str>| f.len() > 9)
        .collect();
    // The local addresses of this process' connections to the server.
    let clients: std::collections::HashSet<&str> = rows
        .iter()
        .filter(|f| f[2] == server && ours.contains(f[9]))
        .map(|f| f[1])
        .collect();
    rows.iter()
        .filter(|f| f[1] == server && clients.contains(f[2]))
        .filter_map(|f| u64::from_str_radix(f[4].split(':').nth(1)?, 16).ok())
        .sum()
}

/// Freezes Webdis (SIGSTOP) and publishes `state` (4 KiB or more); returns
/// once that publish request is in Webdis' socket, unread: the publisher
/// thread is blocked on the frozen server. Returns how long the publish
/// call took.
fn freeze_with_a_publish_in_flight(
    s: &Servers,
    leader: &Client,
    name: &str,
    state: &str,
) -> Duration {
    assert!(state.len() >= 4096);
    // The publisher idle first: a request it sends on its own right after
    // a flush (a heartbeat) would otherwise be the one in flight, and the
    // state would wait behind it, never reaching Webdis (seen once, in a
    // CI run on a loaded machine).
    std::thread::sleep(Duration::from_secs_f64(0.3 * load_factor()));
    s.signal_webdis("STOP");
    let t = Instant::now();
    let r = leader.publish(name, state.as_bytes());
    let took = t.elapsed();
    if let Err(e) = r {
        s.signal_webdis("CONT");
        panic!("the first publish to a frozen Webdis: {e:?}");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while bytes_unread_at(s.webdis_port) < 4096 {
        if Instant::now() > deadline {
            let tcp: Vec<String> = std::fs::read_to_string("/proc/net/tcp")
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains(&format!(":{:04X} ", s.webdis_port)))
                .map(str::to_string)
                .collect();
            let states = thread_states(s.webdis_pid().unwrap_or(0));
            s.signal_webdis("CONT");
            panic!("the publish request never reached the frozen Webdis (publish took {took:?}; webdis threads {states:?}; sockets:\n{})", tcp.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // The publisher is now waiting for the reply.
    std::thread::sleep(Duration::from_millis(100));
    took
}

/// A state of about 5 KiB, different for each `i`.
fn big_state(i: u64) -> String {
    format!("{{\"i\":{i},\"pad\":\"{}\"}}", "x".repeat(5000))
}

/// ms_publish never does the network round trip on the caller's thread:
/// with Webdis frozen (SIGSTOP) and the publisher thread already blocked
/// on a request to it, 1,000 more publishes return in a small part of one
/// request timeout; thawed, the last one is stored.
#[test]
fn publish_returns_at_once_while_webdis_is_frozen() {
    let s = Servers::start();
    let leader = s.client();
    leader.set_timeout(3000).unwrap();
    let name = unique("frozen");
    leader.start(&name, "pw", "code").unwrap();
    leader.publish(&name, b"{\"warm\":1}").unwrap();
    leader.flush(&name, 10_000).unwrap();
    let first = freeze_with_a_publish_in_flight(&s, &leader, &name, &big_state(0));
    let started = Instant::now();
    let mut slowest = first;
    let mut i = 1;
    while i <= 1000 {
        let t = Instant::now();
        let r = leader.publish(&name, format!("{{\"i\":{i}}}").as_bytes());
        slowest = slowest.max(t.elapsed());
        if started.elapsed() > Duration::from_secs(1) {
            // Blocked on the frozen server: fail without waiting for all.
            break;
        }
        if r.is_err() {
            s.signal_webdis("CONT");
            panic!("publish {i}: {r:?}");
        }
        i += 1;
    }
    let took = started.elapsed();
    let n = i - 1;
    s.signal_webdis("CONT");
    assert!(
        n == 1000,
        "only {n} publishes in {took:?} (slowest {slowest:?}, the first {first:?}) to a \
         frozen Webdis; a request times out after 3 s"
    );
    assert!(
        took < Duration::from_millis(500) && slowest < Duration::from_millis(200),
        "1000 publishes to a frozen Webdis took {took:?} (slowest {slowest:?}, the first \
         {first:?}); a request times out after 3 s"
    );
    leader.flush(&name, 10_000).unwrap();
    assert_state_eq(&s.record_field(&name, "state"), "{\"i\":1000}", "");
}

/// ms_flush with Webdis frozen (SIGSTOP, a publish request in it) returns
/// MS_ERR_TIMEOUT when its own timeout is up, well before the request
/// timeout (10 s); thawed, a flush succeeds.
#[test]
fn flush_returns_timeout_within_its_timeout_while_webdis_is_frozen() {
    let s = Servers::start();
    let leader = s.client();
    leader.set_timeout(10_000).unwrap();
    let name = unique("frozen-flush");
    leader.start(&name, "pw", "code").unwrap();
    leader.publish(&name, b"{\"warm\":1}").unwrap();
    leader.flush(&name, 10_000).unwrap();
    freeze_with_a_publish_in_flight(&s, &leader, &name, &big_state(1));
    leader.publish(&name, b"{\"v\":2}").unwrap();
    let t = Instant::now();
    let r = leader.flush(&name, 1000);
    let took = t.elapsed();
    s.signal_webdis("CONT");
    let e = r.expect_err("flush returned OK with Webdis frozen");
    assert_eq!(e.status, Status::MS_ERR_TIMEOUT, "{e:?}");
    assert_took(
        took,
        Duration::from_millis(950),
        Duration::from_millis(3000),
        "flush(1000 ms) with Webdis frozen",
    );
    leader.flush(&name, 10_000).unwrap();
    assert_state_eq(&s.record_field(&name, "state"), "{\"v\":2}", "");
}

/// Secrets are stretched by the client: the record holds the SHA-1 (hex)
/// of the hex of PBKDF2-HMAC-SHA256(secret, "pw:<salt>" or
/// "code:<salt>", iter, 32 bytes), recomputed here with Python's hashlib
/// as another client of the documented protocol would; never the secret,
/// its plain or salted fast hash, or the derived key itself. A client
/// made with `Client::new` uses the default, 600,000 iterations.
#[test]
fn secrets_are_stored_as_a_hash_of_a_pbkdf2_key() {
    let s = Servers::start();
    let c = missionstream::Client::new(&s.url).unwrap();
    let name = unique("hashed");
    let (pw, code) = ("hunter2-password", "leader-code-42");
    c.start(&name, pw, code).unwrap();
    let salt = s.record_field(&name, "salt");
    assert!(
        salt.len() == 32 && salt.bytes().all(|b| b.is_ascii_hexdigit()),
        "{salt:?}"
    );
    assert_eq!(s.record_field(&name, "kdf"), "pbkdf2-sha256");
    assert_eq!(s.record_field(&name, "iter"), "600000");
    // Python's standard library, as docs/PROTOCOL.md describes it.
    let python = |script: &str| {
        let out = std::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .output()
            .expect("python3 is installed");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let expected = python(&format!(
        r#"
import hashlib
def stored(prefix, secret):
    key = hashlib.pbkdf2_hmac("sha256", secret.encode(), (prefix + "{salt}").encode(), 600000, 32)
    return key.hex(), hashlib.sha1(key.hex().encode()).hexdigest()
for prefix, secret in (("pw:", "{pw}"), ("code:", "{code}")):
    key, h = stored(prefix, secret)
    print(key, h)
for secret in ("{pw}", "{code}"):
    b = secret.encode()
    print(hashlib.sha1(b).hexdigest(), hashlib.sha256(b).hexdigest(),
          hashlib.sha1(b"{salt}" + b"\0" + b).hexdigest())
"#
    ));
    let words: Vec<&str> = expected.split_whitespace().collect();
    assert_eq!(words.len(), 10, "{expected}");
    let (pw_key, want_pw, code_key, want_code) = (words[0], words[1], words[2], words[3]);
    assert_eq!(
        s.record_field(&name, "pw"),
        want_pw,
        "pw = sha1(hex(pbkdf2(pw)))"
    );
    assert_eq!(
        s.record_field(&name, "code"),
        want_code,
        "code = sha1(hex(pbkdf2(code)))"
    );
    // Nothing else in the record gives a secret away.
    let record = s.redis_cli(&["HGETALL", &format!("stream:{name}")]);
    for (what, value) in [
        ("the password", pw),
        ("the leader code", code),
        ("the derived password key", pw_key),
        ("the derived leader code key", code_key),
    ]
    .into_iter()
    .chain(words[4..].iter().map(|w| ("a fast hash of a secret", *w)))
    {
        assert!(!record.contains(value), "{what} is in the record: {record}");
    }
    // The salt is per stream: the same secrets hash differently.
    let other = unique("hashed");
    c.start(&other, pw, code).unwrap();
    assert_ne!(s.record_field(&other, "salt"), salt);
    assert_ne!(s.record_field(&other, "pw"), want_pw);
    // The right secrets still work (the library derives the same key),
    // wrong ones are refused with the same statuses as ever.
    let f = missionstream::Client::new(&s.url).unwrap();
    f.connect(&name, pw).unwrap();
    assert_eq!(
        f.connect(&other, "wrong").unwrap_err().status,
        missionstream::Status::MS_ERR_BAD_PASSWORD
    );
    drop(c);
    let back = missionstream::Client::new(&s.url).unwrap();
    assert_eq!(
        back.reconnect(&name, pw, "wrong").unwrap_err().status,
        missionstream::Status::MS_ERR_BAD_LEADER_CODE
    );
    assert_eq!(
        back.reconnect(&name, "wrong", code).unwrap_err().status,
        missionstream::Status::MS_ERR_BAD_PASSWORD
    );
    back.reconnect(&name, pw, code).unwrap();
    back.stop(&name).unwrap();
}

/// A recovering follower retries with capped exponential backoff: the
/// k-th wait (k from 1) is between half and all of min(100 ms * 2^(k-1),
/// 5 s). Observed from outside: the relay goes down (breaks the
/// subscription, then accepts and closes each connection, noting when)
/// and the attempts' start times are the clusters of those connections
/// (one attempt may try a few connections within milliseconds).
#[test]
fn recovery_attempts_back_off_within_bounds() {
    let s = Servers::start();
    let relay = SwitchRelay::start(s.webdis_port);
    let leader = s.client();
    let name = unique("backoff");
    leader.start(&name, "pw", "code").unwrap();
    let follower = Client::new(&relay.url).unwrap();
    follower.set_timeout(1000).unwrap();
    let rec = Recorder::attach(&follower);
    follower.connect(&name, "pw").unwrap();
    rec.wait(T, |ev| !ev.is_empty());
    let down = Instant::now();
    relay.down();
    // Six waits take at most 100+200+400+800+1600+3200 = 6300 ms.
    std::thread::sleep(Duration::from_millis(6800));
    let refused = relay.refused();
    let mut attempts: Vec<Instant> = Vec::new();
    let mut last: Option<Instant> = None;
    for t in refused {
        if last.is_none_or(|l| t.duration_since(l) > Duration::from_millis(25)) {
            attempts.push(t);
        }
        last = Some(t);
    }
    let mut gaps = Vec::new();
    let mut prev = down;
    for a in &attempts {
        gaps.push(a.duration_since(prev));
        prev = *a;
    }
    let ms: Vec<u128> = gaps.iter().map(|g| g.as_millis()).collect();
    eprintln!("backoff waits: {ms:?} ms");
    assert!(
        (6..=7).contains(&attempts.len()),
        "{} attempts in 6.8 s (waits {ms:?} ms): 6 or 7 expected",
        attempts.len()
    );
    for (k, gap) in gaps.iter().enumerate().take(6) {
        let step = Duration::from_millis(100 << k).min(Duration::from_secs(5));
        let (min, max) = (
            step / 2 - Duration::from_millis(2),
            step + Duration::from_millis(150),
        );
        assert!(
            *gap >= min && *gap <= max,
            "wait {} was {gap:?}, not {min:?}..{max:?} (all waits {ms:?} ms)",
            k + 1
        );
    }
    follower.disconnect(&name).unwrap();
}

/// ms_stop tells the followers at once (the functions publish the end on
/// the channel): with the default 5 s heartbeat, both followers get ENDED
/// well within 3 s. (Without that message, a follower would notice only
/// when its silent subscription is probed, 10 s later.)
#[test]
fn stop_ends_every_follower_at_once() {
    let s = Servers::start();
    let leader = s.client();
    let name = unique("stop-now");
    leader.start(&name, "pw", "code").unwrap();
    let followers: Vec<(Client, Arc<Recorder>)> = (0..2)
        .map(|_| {
            let f = s.client();
            let rec = Recorder::attach(&f);
            f.connect(&name, "pw").unwrap();
            rec.wait(T, |ev| !ev.is_empty());
            (f, rec)
        })
        .collect();
    let stopped = Instant::now();
    leader.stop(&name).unwrap();
    for (i, (_, rec)) in followers.iter().enumerate() {
        let left = Duration::from_secs(3).saturating_sub(stopped.elapsed());
        rec.wait(left, |ev| {
            ev.iter()
                .any(|e| e.kind == EventKind::MS_EVENT_ENDED && e.stream == name)
        });
        eprintln!(
            "follower {i}: ENDED {:?} after ms_stop began",
            stopped.elapsed()
        );
    }
}

/// A stream started with a TTL expires from the start: before its leader
/// sent anything (heartbeat 5 s), Redis already holds its expiry (the TTL
/// and at most a sixteenth of it).
#[test]
fn a_stream_started_with_a_ttl_expires_from_the_start() {
    let s = Servers::start();
    let leader = s.client();
    leader.set_stream_ttl(10).unwrap();
    let name = unique("ttl-start");
    leader.start(&name, "pw", "code").unwrap();
    let pttl: i64 = s
        .redis_cli(&["PTTL", &format!("stream:{name}")])
        .trim()
        .parse()
        .unwrap();
    // (The functions set the expiry to 17/16 of the TTL whenever less than
    // the TTL is left: never early, at most 1/16 late.)
    assert!(
        pttl > 10_000 && pttl <= 10_625,
        "PTTL {pttl} right after ms_start with a 10 s TTL"
    );
}

/// Webdis 0.1.9 may write a chunk of a subscription message ahead of a new
/// SUBSCRIBE's response head (a message published while it sets the
/// subscription up): the garbled subscription is replaced by a fresh one
/// at once; connect succeeds and states follow.
#[test]
fn a_garbled_subscribe_response_is_replaced_by_a_fresh_subscription() {
    let s = Servers::start();
    let relay = FaultRelay::start(
        s.webdis_port,
        Faults {
            garble_subscriptions: 1,
            ..Faults::default()
        },
    );
    let leader = s.client();
    let name = unique("garbled");
    leader.start(&name, "pw", "code").unwrap();
    let follower = Client::new(&relay.url).unwrap();
    follower.set_timeout(5000).unwrap();
    let rec = Recorder::attach(&follower);
    follower.connect(&name, "pw").unwrap();
    // The join state before any other (latest wins could replace it).
    rec.wait_state(&name, "{}", T);
    assert_eq!(relay.garbled(), 1);
    assert!(relay.subscribes() >= 2, "a fresh subscription replaced it");
    leader.publish(&name, b"{\"v\":1}").unwrap();
    rec.wait_state(&name, "{\"v\":1}", T);
    assert_eq!(
        rec.states(&name),
        seq_states(&[(0, "{}"), (1, "{\"v\":1}")])
    );
}

/// The events of `stream` other than states and presence (CONNECTION_LOST,
/// RECONNECTED, ENDED), with their status.
fn connection_events(rec: &Recorder, stream: &str) -> Vec<(EventKind, Status)> {
    rec.snapshot()
        .into_iter()
        .filter(|e| {
            e.stream == stream
                && matches!(
                    e.kind,
                    EventKind::MS_EVENT_CONNECTION_LOST
                        | EventKind::MS_EVENT_RECONNECTED
                        | EventKind::MS_EVENT_ENDED
                )
        })
        .map(|e| (e.kind, e.status))
        .collect()
}

/// A started stream, its leader, and a follower (request timeout
/// `timeout_ms`, not connected yet, its events recorded) reaching Webdis
/// through a relay that garbles the size line of the `nth` chunk matching
/// `pattern` of the first subscription.
fn garbling_chunk(
    s: &Servers,
    pattern: &'static str,
    nth: u64,
    timeout_ms: u32,
) -> (FaultRelay, Client, Client, Arc<Recorder>, String) {
    let relay = FaultRelay::start(
        s.webdis_port,
        Faults {
            garble_chunk_size: Some(GarbleChunk {
                subscriptions: 1,
                pattern,
                nth,
            }),
            ..Faults::default()
        },
    );
    let leader = s.client();
    let name = unique("garbled-chunk");
    leader.start(&name, "pw", "code").unwrap();
    let follower = Client::new(&relay.url).unwrap();
    follower.set_timeout(timeout_ms).unwrap();
    let rec = Recorder::attach(&follower);
    (relay, leader, follower, rec, name)
}

/// Webdis 0.1.9 once garbled the chunked body of a new subscription (a
/// chunk size that is not one) after its head and acknowledgement came
/// whole. Here the chunk carrying the probe's echo is garbled while
/// connect waits for it: that subscription is replaced at once (not after
/// an attempt's wait), connect succeeds without any event but the join
/// state, and the states published after follow in order.
#[test]
fn a_garbled_chunk_size_while_connecting_is_replaced_by_a_fresh_subscription() {
    let s = Servers::start();
    // An attempt to subscribe waits a quarter of the timeout (2.5 s)
    // before it is tried again.
    let (relay, leader, follower, rec, name) = garbling_chunk(&s, "", 1, 10_000);
    let started = Instant::now();
    follower.connect(&name, "pw").unwrap();
    let took = started.elapsed();
    assert_eq!(relay.chunk_sizes_garbled(), 1, "the fault was played");
    assert!(relay.subscribes() >= 2, "a fresh subscription replaced it");
    assert!(
        took < Duration::from_millis(2500),
        "connect took {took:?}: the garbled subscription was not replaced at once"
    );
    // The join state, then each state waited for before the next (latest
    // wins could replace one not yet taken by the callback).
    rec.wait_state(&name, "{}", T);
    for v in 1..=3 {
        let state = format!("{{\"v\":{v}}}");
        leader.publish(&name, state.as_bytes()).unwrap();
        rec.wait_state(&name, &state, T);
    }
    assert_eq!(
        rec.states(&name),
        seq_states(&[
            (0, "{}"),
            (1, "{\"v\":1}"),
            (2, "{\"v\":2}"),
            (3, "{\"v\":3}")
        ])
    );
    assert_eq!(connection_events(&rec, &name), vec![], "connect hid it");
    // Only the first subscription was garbled.
    assert_eq!(relay.chunk_sizes_garbled(), 1);
}

/// The same garbling on an established subscription, in the middle of a
/// stream of states (the chunk carrying the third): the follower reports
/// CONNECTION_LOST with MS_ERR_PROTOCOL, recovers by itself (a new
/// subscription and the snapshot), reports RECONNECTED, then delivers the
/// state it missed and every later one, in order.
#[test]
fn a_garbled_chunk_size_mid_stream_is_recovered_from() {
    let s = Servers::start();
    let (relay, leader, follower, rec, name) = garbling_chunk(&s, "\"s ", 3, 5000);
    follower.connect(&name, "pw").unwrap();
    // The join state before any other (latest wins could replace it).
    rec.wait_state(&name, "{}", T);
    let publish = |v: u64| {
        leader
            .publish(&name, format!("{{\"v\":{v}}}").as_bytes())
            .unwrap();
        leader.flush(&name, 10_000).unwrap();
    };
    // Each state waited for before the next (latest wins could skip one).
    let deliver = |v: u64| {
        publish(v);
        rec.wait_state(&name, &format!("{{\"v\":{v}}}"), T);
    };
    deliver(1);
    deliver(2);
    // Nothing garbled yet: the acknowledgement, the probe's echo and two
    // states passed.
    assert_eq!(relay.chunk_sizes_garbled(), 0);
    let subscribes = relay.subscribes();
    assert_eq!(connection_events(&rec, &name), vec![]);
    publish(3);
    rec.wait_kind(&name, EventKind::MS_EVENT_RECONNECTED, T);
    assert_eq!(relay.chunk_sizes_garbled(), 1, "the fault was played");
    assert!(relay.subscribes() > subscribes, "a new subscription");
    // The state whose chunk was garbled comes with the snapshot.
    rec.wait_state(&name, "{\"v\":3}", T);
    // Later states come on the new subscription.
    for v in 4..=6 {
        deliver(v);
    }
    assert_eq!(
        rec.states(&name),
        seq_states(&[
            (0, "{}"),
            (1, "{\"v\":1}"),
            (2, "{\"v\":2}"),
            (3, "{\"v\":3}"),
            (4, "{\"v\":4}"),
            (5, "{\"v\":5}"),
            (6, "{\"v\":6}"),
        ])
    );
    assert_eq!(
        connection_events(&rec, &name),
        vec![
            (EventKind::MS_EVENT_CONNECTION_LOST, Status::MS_ERR_PROTOCOL),
            (EventKind::MS_EVENT_RECONNECTED, Status::MS_OK),
        ],
        "lost once (garbled), recovered once"
    );
    // In that order: the lost subscription after state 2, RECONNECTED
    // before state 3.
    let order: Vec<EventKind> = rec
        .snapshot()
        .into_iter()
        .filter(|e| e.stream == name && e.kind != EventKind::MS_EVENT_LEADER_OFFLINE)
        .filter(|e| e.kind != EventKind::MS_EVENT_LEADER_ONLINE)
        .map(|e| e.kind)
        .collect();
    let lost = order
        .iter()
        .position(|k| *k == EventKind::MS_EVENT_CONNECTION_LOST)
        .unwrap();
    let back = order
        .iter()
        .position(|k| *k == EventKind::MS_EVENT_RECONNECTED)
        .unwrap();
    assert_eq!((lost, back), (3, 4), "events: {order:?}");
    assert_eq!(relay.chunk_sizes_garbled(), 1);
}

/// Presence after a recovery is judged by when Redis last heard the
/// leader (the snapshot's age of it, on Redis' clock), not by when its
/// newest state was stored, and no wall clock is read. The follower's
/// subscription is cut for longer than 3 intervals (LEADER_OFFLINE) while
/// the leader keeps sending heartbeats, the last of which a raw subscriber
/// sees; then the leader goes silent and the follower recovers. Its
/// snapshot says the leader was heard a few seconds ago: LEADER_ONLINE
/// comes with RECONNECTED (a library placing the leader at its newest
/// state, stored long before, would stay offline: no heartbeat comes any
/// more), and LEADER_OFFLINE 3 intervals after that heartbeat.
#[test]
fn presence_after_a_recovery_counts_heartbeats_by_redis_age() {
    const HB: Duration = Duration::from_millis(2000);
    let s = Servers::start();
    let leader_relay = SwitchRelay::start(s.webdis_port);
    let follower_relay = SwitchRelay::start(s.webdis_port);
    let leader = Client::new(&leader_relay.url).unwrap();
    leader.set_heartbeat(HB.as_millis() as u32).unwrap();
    leader.set_timeout(1000).unwrap();
    let name = unique("heard-age");
    leader.start(&name, "pw", "code").unwrap();
    leader.publish(&name, b"{\"v\":1}").unwrap();
    leader.flush(&name, 5000).unwrap();
    let follower = Client::new(&follower_relay.url).unwrap();
    follower.set_timeout(1000).unwrap();
    let events: Arc<Mutex<Vec<(Instant, EventKind)>>> = Arc::default();
    let e2 = events.clone();
    let stream = name.clone();
    follower.set_callback(Some(Arc::new(move |e: &Event| {
        if e.stream_name() == stream {
            e2.lock().unwrap().push((Instant::now(), e.kind));
        }
    })));
    follower.connect(&name, "pw").unwrap();
    let first = |kind: EventKind, after: Instant, within: Duration| -> Option<Instant> {
        let deadline = Instant::now() + within;
        loop {
            let found = events
                .lock()
                .unwrap()
                .iter()
                .find(|(t, k)| *k == kind && *t >= after)
                .map(|(t, _)| *t);
            if found.is_some() || Instant::now() >= deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let t0 = Instant::now();
    assert!(first(EventKind::MS_EVENT_STATE, t0 - T, T).is_some());
    // Heartbeats as Redis stores them, seen on the channel directly.
    let heartbeats: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let h2 = heartbeats.clone();
    let _raw = common::rawsub::RawSubscriber::start(
        s.webdis_port,
        &s.record_field(&name, "channel"),
        move |p| {
            if p.starts_with("h ") {
                h2.lock().unwrap().push(Instant::now());
            }
        },
    );
    // The follower's subscription is cut; its recoveries hang.
    follower_relay.hold();
    let cut = Instant::now();
    follower_relay.cut();
    let offline = first(EventKind::MS_EVENT_LEADER_OFFLINE, cut, HB * 3 + T)
        .expect("LEADER_OFFLINE while the subscription is lost");
    // The next heartbeat, then the leader goes silent (its requests hang).
    let seen = heartbeats.lock().unwrap().len();
    wait_until(HB * 2 + T, || heartbeats.lock().unwrap().len() > seen);
    leader_relay.hold();
    leader_relay.cut();
    let heartbeat = *heartbeats.lock().unwrap().last().unwrap();
    assert!(heartbeat > offline, "a heartbeat after LEADER_OFFLINE");
    follower_relay.release();
    let reconnected = first(EventKind::MS_EVENT_RECONNECTED, offline, HB * 3)
        .expect("the follower recovers once its relay lets it through");
    assert!(
        reconnected < heartbeat + HB * 3,
        "recovered {:?} after the heartbeat: too late to tell (a loaded machine?)",
        reconnected - heartbeat
    );
    let online = first(EventKind::MS_EVENT_LEADER_ONLINE, offline, Duration::ZERO)
        .expect("LEADER_ONLINE with RECONNECTED: the snapshot's age of the last heartbeat");
    assert!(online >= reconnected && online < reconnected + Duration::from_millis(500));
    // Offline 3 intervals after that heartbeat: the leader was placed
    // when Redis heard it, not when the snapshot was read.
    let again = first(EventKind::MS_EVENT_LEADER_OFFLINE, online, HB * 3 + T)
        .expect("LEADER_OFFLINE again: the leader is silent");
    let after = again - heartbeat;
    assert!(
        after >= HB * 3 - Duration::from_millis(300)
            && after <= HB * 3 + Duration::from_millis(1500),
        "LEADER_OFFLINE {after:?} after the last heartbeat, not 3 intervals"
    );
}
