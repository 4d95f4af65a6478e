//! The stream lifecycle and every status, through real Redis and Webdis.

mod common;

use common::*;
use missionstream::protocol::PROTOCOL_VERSION;
use missionstream::{Client, EventKind, Status};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(10);

fn status<T>(r: missionstream::Result<T>) -> Status {
    match r {
        Ok(_) => Status::MS_OK,
        Err(e) => e.status,
    }
}

#[test]
fn lifecycle_start_follow_publish_stop() {
    let s = Servers::start();
    let (leader, follower, rec, name) = s.followed("plan");
    // The current state is the first event, queued before connect returned.
    let ev = rec.wait(T, |ev| !ev.is_empty());
    assert_eq!(ev[0].kind, EventKind::MS_EVENT_STATE);
    assert_eq!((ev[0].seq, ev[0].state.as_deref()), (0, Some("{}")));

    for i in 1..=5 {
        leader
            .publish(&name, format!("{{\"wp\":{i}}}").as_bytes())
            .unwrap();
        // Each flushed, so each is stored (else latest-wins may skip some).
        leader.flush(&name, 10_000).unwrap();
    }
    rec.wait_state(&name, "{\"wp\":5}", T);
    let states = rec.states(&name);
    assert_increasing(&states);
    assert_eq!(
        states.last().unwrap().0,
        5,
        "seq counts stored states: {states:?}"
    );
    assert_state_eq(&s.record_field(&name, "state"), "{\"wp\":5}", "");
    assert_eq!(s.record_field(&name, "seq"), "5");

    let list = leader.list().unwrap();
    let info = list.iter().find(|i| i.name == name).expect("listed");
    assert_eq!(info.seq, 5);
    assert_eq!(info.followers, 1);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(
        (now_ms - info.updated_ms).abs() < 60_000,
        "updated_ms {} vs now {now_ms}",
        info.updated_ms
    );

    leader.stop(&name).unwrap();
    rec.wait_kind(&name, EventKind::MS_EVENT_ENDED, T);
    assert!(leader.list().unwrap().iter().all(|i| i.name != name));
    assert_eq!(
        s.redis_cli(&["EXISTS", &format!("stream:{name}")]).trim(),
        "0"
    );
    // The follow session is over; the leader no longer leads.
    assert_eq!(
        status(follower.disconnect(&name)),
        Status::MS_ERR_NOT_FOLLOWING
    );
    assert_eq!(
        status(leader.publish(&name, b"{}")),
        Status::MS_ERR_NOT_LEADING
    );
}

#[test]
fn late_joiner_gets_current_state_first() {
    let s = Servers::start();
    let leader = s.client();
    let name = unique("late");
    leader.start(&name, "", "code").unwrap();
    leader.publish(&name, b"{\"a\":1}").unwrap();
    leader.flush(&name, 10_000).unwrap();
    leader.publish(&name, b"{\"a\":2}").unwrap();
    leader.flush(&name, 10_000).unwrap();

    let follower = s.client();
    let rec = Recorder::attach(&follower);
    follower.connect(&name, "").unwrap();
    let ev = rec.wait(T, |ev| !ev.is_empty());
    assert_eq!(ev[0].kind, EventKind::MS_EVENT_STATE);
    assert_eq!(ev[0].state.as_deref(), Some("{\"a\":2}"));
    assert_eq!(ev[0].seq, 2);
    // Nothing published since: no other state arrives.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(rec.states(&name).len(), 1);

    leader.publish(&name, b"{\"a\":3}").unwrap();
    rec.wait_state(&name, "{\"a\":3}", T);
    assert_eq!(
        rec.states(&name),
        vec![(2, "{\"a\":2}".into()), (3, "{\"a\":3}".into())]
    );
}

#[test]
fn many_publishes_converge_in_order_for_two_followers() {
    let s = Servers::start();
    let leader = s.client();
    let name = unique("burst");
    leader.start(&name, "p", "c").unwrap();
    let f1 = s.client();
    let f2 = s.client();
    let r1 = Recorder::attach(&f1);
    let r2 = Recorder::attach(&f2);
    f1.connect(&name, "p").unwrap();
    f2.connect(&name, "p").unwrap();
    let start = Instant::now();
    for i in 0..2000 {
        leader
            .publish(&name, format!("{{\"i\":{i}}}").as_bytes())
            .unwrap();
    }
    // Publishing never waits for the network.
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "2000 publishes took {:?}",
        start.elapsed()
    );
    leader.flush(&name, 10_000).unwrap();
    for r in [&r1, &r2] {
        r.wait_state(&name, "{\"i\":1999}", Duration::from_secs(2));
        assert_increasing(&r.states(&name));
    }
    assert_state_eq(&s.record_field(&name, "state"), "{\"i\":1999}", "");
}

#[test]
fn statuses_of_every_operation() {
    let s = Servers::start();
    let a = s.client();
    let b = s.client();
    let name = unique("st");
    a.start(&name, "pw", "code").unwrap();

    assert_eq!(status(a.start(&name, "pw", "code")), Status::MS_ERR_ALREADY);
    let e = b.start(&name, "x", "y").unwrap_err();
    assert_eq!(e.status, Status::MS_ERR_EXISTS);
    assert!(e.message.contains(&name), "{}", e.message);
    assert_eq!(
        status(b.reconnect(&name, "bad", "code")),
        Status::MS_ERR_BAD_PASSWORD
    );
    assert_eq!(
        status(b.reconnect(&name, "pw", "bad")),
        Status::MS_ERR_BAD_LEADER_CODE
    );
    assert_eq!(
        status(b.reconnect("nope-none", "pw", "code")),
        Status::MS_ERR_NOT_FOUND
    );
    assert_eq!(status(b.connect(&name, "bad")), Status::MS_ERR_BAD_PASSWORD);
    assert_eq!(
        status(b.connect("nope-none", "pw")),
        Status::MS_ERR_NOT_FOUND
    );
    assert_eq!(status(b.publish(&name, b"{}")), Status::MS_ERR_NOT_LEADING);
    assert_eq!(status(b.flush(&name, 100)), Status::MS_ERR_NOT_LEADING);
    assert_eq!(status(b.stop(&name)), Status::MS_ERR_NOT_LEADING);
    assert_eq!(status(b.disconnect(&name)), Status::MS_ERR_NOT_FOLLOWING);
    b.connect(&name, "pw").unwrap();
    assert_eq!(status(b.connect(&name, "pw")), Status::MS_ERR_ALREADY);
    b.disconnect(&name).unwrap();
    assert_eq!(status(b.disconnect(&name)), Status::MS_ERR_NOT_FOLLOWING);

    // Limits.
    let big = vec![b'x'; 8 * 1024 * 1024 + 1];
    assert_eq!(status(a.publish(&name, &big)), Status::MS_ERR_TOO_LARGE);
    assert_eq!(
        status(a.publish(&name, b"\xff\xfe")),
        Status::MS_ERR_INVALID_ARGUMENT
    );
    for bad in ["", "a\nb", "tab\there", "\u{7f}del"] {
        assert_eq!(
            status(a.start(bad, "pw", "c")),
            Status::MS_ERR_INVALID_ARGUMENT,
            "{bad:?}"
        );
        assert_eq!(
            status(a.connect(bad, "pw")),
            Status::MS_ERR_INVALID_ARGUMENT,
            "{bad:?}"
        );
    }
    let long = "n".repeat(257);
    assert_eq!(
        status(a.start(&long, "pw", "c")),
        Status::MS_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        status(a.start("ok-name", &"p".repeat(1025), "c")),
        Status::MS_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        status(a.start("ok-name", "p", "")),
        Status::MS_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        status(a.start("ok-name", "p", &"c".repeat(1025))),
        Status::MS_ERR_INVALID_ARGUMENT
    );
    assert_eq!(status(a.set_timeout(0)), Status::MS_ERR_INVALID_ARGUMENT);
    assert_eq!(status(a.set_heartbeat(0)), Status::MS_ERR_INVALID_ARGUMENT);
    // Nothing invalid reached Redis.
    assert_eq!(s.redis_cli(&["EXISTS", "stream:ok-name"]).trim(), "0");
    // Boundaries that are allowed.
    let n256 = "é".repeat(128);
    a.start(&n256, &"p".repeat(1024), &"c".repeat(1024))
        .unwrap();
    a.publish(&n256, b"").unwrap();
    a.flush(&n256, 10_000).unwrap();
}

#[test]
fn odd_names_round_trip_exactly() {
    let s = Servers::start();
    let leader = s.client();
    let follower = s.client();
    let rec = Recorder::attach(&follower);
    let names = [
        "a/b.txt",
        "x.json",
        "..",
        ".",
        "100%",
        "a+b c",
        "k:v",
        "*",
        "what?",
        "sp ace  ",
        "ünïcødé ✈ 航路",
        "%2F%41",
        "#frag",
        "a\\b",
        "q=1&r=2",
        "trailing.",
        "-_-",
    ];
    let n256 = "z".repeat(256);
    let mut all: Vec<&str> = names.to_vec();
    all.push(&n256);
    for n in &all {
        leader
            .start(n, "pw", "code")
            .unwrap_or_else(|e| panic!("start {n:?}: {e}"));
        follower
            .connect(n, "pw")
            .unwrap_or_else(|e| panic!("connect {n:?}: {e}"));
        leader
            .publish(n, format!("{{\"name\":{:?}}}", n).as_bytes())
            .unwrap();
    }
    for n in &all {
        leader.flush(n, 10_000).unwrap();
        rec.wait_state(n, &format!("{{\"name\":{:?}}}", n), T);
        assert_eq!(s.record_field(n, "name"), *n);
    }
    let listed: Vec<String> = leader.list().unwrap().into_iter().map(|i| i.name).collect();
    for n in &all {
        assert!(listed.iter().any(|l| l == n), "{n:?} not in {listed:?}");
    }
    assert_eq!(listed.len(), all.len());
}

#[test]
fn large_state_round_trips() {
    let s = Servers::start();
    let (leader, _follower, rec, name) = s.followed("big");
    // 4 MiB with quotes, backslashes, newlines, control and non-ASCII
    // characters, which Webdis escapes.
    let unit = "{\"k\":\"\\\"q\\\"\n\t\u{1}é✈\"}";
    let mut big = String::new();
    while big.len() + unit.len() <= 4 * 1024 * 1024 {
        big.push_str(unit);
    }
    leader.publish(&name, big.as_bytes()).unwrap();
    leader.flush(&name, 30_000).unwrap();
    rec.wait(Duration::from_secs(30), |ev| ev.iter().any(|e| e.seq == 1));
    assert_state_eq(&rec.states(&name).last().unwrap().1, &big, "");
    // A late joiner gets it through the snapshot too.
    let late = s.client();
    let r2 = Recorder::attach(&late);
    late.connect(&name, "pw").unwrap();
    r2.wait(Duration::from_secs(30), |ev| !ev.is_empty());
    assert_state_eq(&r2.states(&name)[0].1, &big, "");
    // The limit itself is accepted.
    let max = "a".repeat(8 * 1024 * 1024);
    leader.publish(&name, max.as_bytes()).unwrap();
    leader.flush(&name, 30_000).unwrap();
    // (the base: "r <publish id>\n" and the state)
    assert_eq!(
        s.redis_cli(&["HSTRLEN", &format!("stream:{name}"), "s"])
            .trim(),
        (35 + 8388608).to_string()
    );
}

#[test]
fn reconnect_keeps_state_and_free_delivers_pending() {
    let s = Servers::start();
    let name = unique("keep");
    {
        let leader = s.client();
        leader.start(&name, "pw", "code").unwrap();
        for i in 0..50 {
            leader
                .publish(&name, format!("{{\"v\":{i}}}").as_bytes())
                .unwrap();
        }
        // Dropped without flush: the pending state is delivered first.
    }
    assert_state_eq(&s.record_field(&name, "state"), "{\"v\":49}", "");
    let leader = s.client();
    leader.reconnect(&name, "pw", "code").unwrap();
    let follower = s.client();
    let rec = Recorder::attach(&follower);
    follower.connect(&name, "pw").unwrap();
    rec.wait_state(&name, "{\"v\":49}", T);
    leader.publish(&name, b"{\"v\":50}").unwrap();
    rec.wait_state(&name, "{\"v\":50}", T);
    assert_increasing(&rec.states(&name));
}

#[test]
fn secrets_are_stored_hashed_and_channel_is_random() {
    let s = Servers::start();
    let c = s.client();
    c.start("secret-stream", "hunter2-password", "leader-code-42")
        .unwrap();
    let dump = s.redis_cli(&["HGETALL", "stream:secret-stream"]);
    assert!(!dump.contains("hunter2-password"), "{dump}");
    assert!(!dump.contains("leader-code-42"), "{dump}");
    let channel = s.record_field("secret-stream", "channel");
    // SHA-1 of a random 128-bit seed and the name, made by the functions.
    assert_eq!(channel.len(), 40, "SHA-1 hex: {channel}");
    assert!(channel
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    assert!(!channel.contains("secret"));
    c.stop("secret-stream").unwrap();
    c.start("secret-stream", "hunter2-password", "leader-code-42")
        .unwrap();
    let channel = {
        let fresh = s.record_field("secret-stream", "channel");
        assert_ne!(fresh, channel);
        fresh
    };
    // Calling the functions directly still needs the lead token (given
    // at start or reconnect to holders of the leader code): neither a
    // guessed token nor the leader code itself stops the stream.
    for (body, expected) in [
        (format!("32\n{}{channel}", "0".repeat(32)), "MSNOTLEADER"),
        (format!("14\nleader-code-42{channel}"), "MSARG"),
    ] {
        let out = s.redis_cli(&[
            "FCALL",
            "ms_stop",
            "3",
            "stream:secret-stream",
            "streams",
            "msl:secret-stream",
            PROTOCOL_VERSION,
            "n0nce",
            &body,
        ]);
        assert!(out.contains(expected), "{out}");
    }
    assert_eq!(s.redis_cli(&["EXISTS", "stream:secret-stream"]).trim(), "1");
}

#[test]
fn unreachable_webdis_is_unavailable() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let c = Client::new(&format!("http://127.0.0.1:{port}")).unwrap();
    let e = c.start("x", "p", "c").unwrap_err();
    assert_eq!(e.status, Status::MS_ERR_UNAVAILABLE);
    assert!(e.message.contains("Webdis"), "{}", e.message);
    assert_eq!(status(c.list()), Status::MS_ERR_UNAVAILABLE);
    assert_eq!(status(c.connect("x", "p")), Status::MS_ERR_UNAVAILABLE);
    for bad in ["", "localhost:7379", "ftp://h", "http://"] {
        assert_eq!(
            status(Client::new(bad)),
            Status::MS_ERR_INVALID_ARGUMENT,
            "{bad}"
        );
    }
}

#[test]
fn missing_or_stale_functions_library_is_a_server_error_saying_how_to_load() {
    let s = Servers::start_with(Options {
        load_functions: false,
        ..Options::default()
    });
    let c = s.client();
    let e = c.start("x", "p", "c").unwrap_err();
    assert_eq!(e.status, Status::MS_ERR_SERVER);
    assert!(e.message.contains("FUNCTION LOAD"), "{}", e.message);
    let lua = std::fs::read_to_string(format!("{ROOT}/lua/missionstream.lua")).unwrap();
    let stale = lua.replace(
        &format!("local PROTOCOL = '{PROTOCOL_VERSION}'"),
        "local PROTOCOL = '0'",
    );
    assert_ne!(
        stale, lua,
        "the library declares the client's protocol version"
    );
    s.load_functions(&stale);
    let e = c.list().unwrap_err();
    assert_eq!(e.status, Status::MS_ERR_SERVER);
    assert!(
        e.message.contains("version") && e.message.contains("FUNCTION LOAD"),
        "{}",
        e.message
    );
}

#[test]
fn hardened_acl_refuses_everything_else() {
    let s = Servers::start();
    for path in [
        "/HGETALL/x",
        "/KEYS/*",
        "/SCAN/0",
        "/PSUBSCRIBE/x",
        "/PUBLISH/a/b",
        "/PUBSUB/CHANNELS",
        "/DEL/x",
        "/EVAL/return%201/0",
        "/FUNCTION/LIST",
        "/CONFIG/GET/dir",
        "/FLUSHALL",
        "/SET/a/b",
        "/FCALLX/x",
    ] {
        assert_eq!(http(s.webdis_port, "GET", path, b"").0, 403, "{path}");
    }
    assert_eq!(http(s.webdis_port, "GET", "/PING", b"").0, 200);
    // And a Webdis that refuses FCALL gives FORBIDDEN.
    let locked = Servers::start_with(Options {
        acl: Some(serde_json::json!([{ "disabled": ["*"] }, { "enabled": ["PING"] }])),
        ..Options::default()
    });
    let c = locked.client();
    let e = c.start("x", "p", "c").unwrap_err();
    assert_eq!(e.status, Status::MS_ERR_FORBIDDEN);
    assert!(e.message.contains("ACL"), "{}", e.message);
}

#[test]
fn disconnect_is_prompt_and_final() {
    let s = Servers::start();
    let (leader, follower, rec, name) = s.followed("disc");
    rec.wait(T, |ev| !ev.is_empty());
    let t = Instant::now();
    follower.disconnect(&name).unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "disconnect took {:?}",
        t.elapsed()
    );
    let n = rec.snapshot().len();
    for i in 0..20 {
        leader
            .publish(&name, format!("{{\"after\":{i}}}").as_bytes())
            .unwrap();
    }
    leader.flush(&name, 10_000).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        rec.snapshot().len(),
        n,
        "no event after disconnect returned"
    );
    // Redis sees the subscriber gone.
    wait_until(Duration::from_secs(1), || {
        leader.list().unwrap()[0].followers == 0
    });
    // Connecting again works.
    follower.connect(&name, "pw").unwrap();
    rec.wait_state(&name, "{\"after\":19}", T);
}

#[test]
fn callback_may_disconnect_and_replace_itself() {
    let s = Servers::start();
    let leader = s.client();
    let follower = std::sync::Arc::new(s.client());
    let name = unique("cb");
    leader.start(&name, "pw", "code").unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let returned = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (f, n, seen2, returned2) = (
        std::sync::Arc::downgrade(&follower),
        name.clone(),
        seen.clone(),
        returned.clone(),
    );
    follower.set_callback(Some(std::sync::Arc::new(
        move |e: &missionstream::Event| {
            seen2.lock().unwrap().push(e.seq);
            if let Some(f) = f.upgrade() {
                if e.seq >= 1 {
                    // From inside the callback: no deadlock.
                    f.disconnect(&n).unwrap();
                    f.set_callback(None);
                }
            }
            returned2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        },
    )));
    follower.connect(&name, "pw").unwrap();
    // The join state first: a newer state arriving before the callback
    // takes it would replace it (latest wins), and the callback would see
    // seq >= 1 first (seen under load: [1]).
    wait_until(T, || seen.lock().unwrap().len() == 1);
    assert_eq!(seen.lock().unwrap()[0], 0);
    for i in 1..=10 {
        leader
            .publish(&name, format!("{{\"i\":{i}}}").as_bytes())
            .unwrap();
        leader.flush(&name, 10_000).unwrap();
    }
    wait_until(T, || seen.lock().unwrap().len() >= 2);
    std::thread::sleep(Duration::from_millis(300));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.len(),
        2,
        "the callback disconnected itself after seq 1: {seen:?}"
    );
    assert_eq!(
        returned.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "every call of the callback returned (ms_disconnect and ms_set_callback from it do not wait for it)"
    );
    assert_eq!(
        status(follower.disconnect(&name)),
        Status::MS_ERR_NOT_FOLLOWING
    );
}

#[test]
fn set_callback_returns_when_the_old_one_is_done() {
    let s = Servers::start();
    let leader = s.client();
    let follower = s.client();
    let name = unique("swap");
    leader.start(&name, "pw", "code").unwrap();
    let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let calls_after = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let swapped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (r, c, sw) = (running.clone(), calls_after.clone(), swapped.clone());
    follower.set_callback(Some(std::sync::Arc::new(
        move |_e: &missionstream::Event| {
            if sw.load(std::sync::atomic::Ordering::SeqCst) {
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            r.store(true, std::sync::atomic::Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(200));
            r.store(false, std::sync::atomic::Ordering::SeqCst);
        },
    )));
    follower.connect(&name, "pw").unwrap();
    wait_until(T, || running.load(std::sync::atomic::Ordering::SeqCst));
    follower.set_callback(None);
    swapped.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(
        !running.load(std::sync::atomic::Ordering::SeqCst),
        "old callback still running"
    );
    leader.publish(&name, b"{\"x\":1}").unwrap();
    leader.flush(&name, 10_000).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(calls_after.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[test]
fn slow_callback_keeps_only_the_newest_state() {
    let s = Servers::start();
    let leader = s.client();
    let follower = s.client();
    let name = unique("slow");
    leader.start(&name, "pw", "code").unwrap();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let g = got.clone();
    follower.set_callback(Some(std::sync::Arc::new(
        move |e: &missionstream::Event| {
            if let Some(st) = &e.state {
                g.lock().unwrap().push((e.seq, st.as_str().to_string()));
            }
            std::thread::sleep(Duration::from_millis(20));
        },
    )));
    follower.connect(&name, "pw").unwrap();
    for i in 0..500 {
        leader
            .publish(&name, format!("{{\"i\":{i}}}").as_bytes())
            .unwrap();
        if i % 50 == 0 {
            leader.flush(&name, 10_000).unwrap();
        }
        assert!(
            follower.queued_events() <= 1,
            "queue grew to {}",
            follower.queued_events()
        );
    }
    leader.flush(&name, 10_000).unwrap();
    wait_until(T, || {
        got.lock()
            .unwrap()
            .last()
            .is_some_and(|l| l.1 == "{\"i\":499}")
    });
    let got = got.lock().unwrap().clone();
    assert!(
        got.len() < 400,
        "intermediate states were coalesced: {}",
        got.len()
    );
    for w in got.windows(2) {
        assert!(w[0].0 < w[1].0);
    }
}

#[test]
fn flush_reports_the_publish_error() {
    let mut s = Servers::start();
    let leader = s.client();
    leader.set_timeout(500).unwrap();
    let rec = Recorder::attach(&leader);
    let name = unique("flush");
    leader.start(&name, "pw", "code").unwrap();
    s.stop_webdis();
    leader.publish(&name, b"{\"during\":\"outage\"}").unwrap();
    let e = leader.flush(&name, 1500).unwrap_err();
    assert_eq!(e.status, Status::MS_ERR_UNAVAILABLE, "{e}");
    let ev = rec.wait_kind(&name, EventKind::MS_EVENT_PUBLISH_FAILED, T);
    assert_eq!(
        ev.iter()
            .filter(|e| e.kind == EventKind::MS_EVENT_PUBLISH_FAILED)
            .count(),
        1
    );
    s.start_webdis();
    leader.flush(&name, 10_000).unwrap();
    assert_state_eq(
        &s.record_field(&name, "state"),
        "{\"during\":\"outage\"}",
        "",
    );
    // Once per failure streak.
    assert_eq!(
        rec.snapshot()
            .iter()
            .filter(|e| e.kind == EventKind::MS_EVENT_PUBLISH_FAILED)
            .count(),
        1
    );
}

#[test]
fn callback_may_disconnect_on_the_very_first_state() {
    let s = Servers::start();
    let leader = s.client();
    let name = unique("first");
    leader.start(&name, "pw", "code").unwrap();
    for _ in 0..20 {
        let follower = std::sync::Arc::new(s.client());
        let results = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (f, n, r) = (
            std::sync::Arc::downgrade(&follower),
            name.clone(),
            results.clone(),
        );
        follower.set_callback(Some(std::sync::Arc::new(
            move |_e: &missionstream::Event| {
                if let Some(f) = f.upgrade() {
                    r.lock().unwrap().push(status(f.disconnect(&n)));
                }
            },
        )));
        follower.connect(&name, "pw").unwrap();
        wait_until(T, || !results.lock().unwrap().is_empty());
        leader.publish(&name, b"{\"after\":1}").unwrap();
        leader.flush(&name, 10_000).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            *results.lock().unwrap(),
            vec![Status::MS_OK],
            "one event, and the disconnect worked"
        );
    }
}

#[test]
fn basic_auth_from_the_url_reaches_webdis() {
    let s = Servers::start_with(Options {
        acl: Some(serde_json::json!([
            { "disabled": ["*"] },
            { "http_basic_auth": "user:pa ss", "enabled": ["FCALL", "FCALL_RO", "SUBSCRIBE", "UNSUBSCRIBE", "PING"] }
        ])),
        ..Options::default()
    });
    let anonymous = s.client();
    assert_eq!(
        status(anonymous.start("x", "p", "c")),
        Status::MS_ERR_FORBIDDEN
    );
    let url = format!("http://user:pa%20ss@127.0.0.1:{}", s.webdis_port);
    let leader = Client::new(&url).unwrap();
    let follower = Client::new(&url).unwrap();
    let rec = Recorder::attach(&follower);
    leader.start("authed", "p", "c").unwrap();
    follower.connect("authed", "p").unwrap();
    leader.publish("authed", b"{\"ok\":true}").unwrap();
    rec.wait_state("authed", "{\"ok\":true}", T);
    assert_eq!(
        status(anonymous.connect("authed", "p")),
        Status::MS_ERR_FORBIDDEN
    );
}

/// ms_publish with the publish id already stored (a repeat of a request
/// whose response was lost) or an older one of the same lead (an abandoned
/// request arriving late) answers the stored seq and neither stores nor
/// broadcasts: the stream never goes back. A newer id, or another lead's
/// token, stores as usual; malformed ids are refused.
#[test]
fn a_repeated_or_older_publish_id_is_not_stored_again() {
    let s = Servers::start();
    let (_leader, _follower, rec, name) = s.followed("publish-id");
    let channel = s.record_field(&name, "channel");
    let token = s.take_lead(&name, "pw", "code");
    let key = format!("stream:{name}");
    let log = format!("msl:{name}");
    let lead = common::record::lead_hash(&token);
    let tag = common::record::channel_tag(&channel);
    let publish = |id: &str, state: &str| {
        let body = format!("r {id}\n{state}");
        let sealed = if id.len() == 32 {
            common::record::seal_lead(&token, &lead, id, "full", "-", "-", "0", body.len())
        } else {
            "0".repeat(32)
        };
        s.redis_cli(&[
            "FCALL",
            "ms_publish",
            "3",
            &key,
            "streams",
            &log,
            PROTOCOL_VERSION,
            "n0nce",
            id,
            "0",
            "full",
            "-",
            "-",
            &tag,
            &sealed,
            &body,
        ])
        .trim()
        .to_string()
    };
    // The reply: the request nonce, the stored seq, the stored publish id.
    let stored = |reply: String| -> (String, String) {
        let lines: Vec<&str> = reply.lines().collect();
        assert_eq!(lines.len(), 3, "{reply}");
        assert_eq!(lines[0], "n0nce", "{reply}");
        (lines[1].to_string(), lines[2].to_string())
    };
    let lead_a = |n: u64| format!("aaaaaaaaaaaaaaaa{n:016x}");
    assert_eq!(
        stored(publish(&lead_a(1), "{\"v\":1}")),
        ("1".into(), lead_a(1))
    );
    assert_eq!(
        stored(publish(&lead_a(1), "{\"v\":1}")),
        ("1".into(), lead_a(1)),
        "a repeat"
    );
    assert_eq!(
        stored(publish(&lead_a(0x10), "{\"v\":2}")),
        ("2".into(), lead_a(0x10))
    );
    assert_eq!(
        stored(publish(&lead_a(0xf), "{\"v\":\"old\"}")),
        ("2".into(), lead_a(0x10)),
        "older, late: the reply names the newer id stored"
    );
    assert_state_eq(&s.record_field(&name, "state"), "{\"v\":2}", "");
    // Another lead (a reconnected leader) has its own counter.
    let lead_b = format!("bbbbbbbbbbbbbbbb{:016x}", 1);
    assert_eq!(
        stored(publish(&lead_b, "{\"v\":3}")),
        ("3".into(), lead_b.clone())
    );
    rec.wait_state(&name, "{\"v\":3}", Duration::from_secs(10));
    assert_states_from(
        &rec.states(&name),
        &[
            (0, "{}"),
            (1, "{\"v\":1}"),
            (2, "{\"v\":2}"),
            (3, "{\"v\":3}"),
        ],
    );
    for bad in ["", "a1", &"a".repeat(33), &"A".repeat(32), &"g".repeat(32)] {
        assert!(publish(bad, "{\"v\":4}").contains("MSARG"), "{bad:?}");
    }
    assert_eq!(s.record_field(&name, "seq"), "3");
}

/// The message of the panic `f` raises.
fn panic_message(f: impl FnOnce()) -> String {
    let payload = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .expect_err("the assertion was to fail");
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(p) => p.downcast_ref::<&str>().unwrap_or(&"?").to_string(),
    }
}

/// A failing assertion about an 8 MiB state prints a short excerpt of it
/// and its length, never the state (one such failure once wrote an 8.4 MB
/// log).
#[test]
fn failure_messages_about_a_large_state_stay_short() {
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(8 * 1024 * 1024 - 12));
    let other = format!("{big} ");
    let short = |what: &str, msg: String| {
        assert!(
            msg.len() < 4096,
            "{what}: a failure message of {} bytes",
            msg.len()
        );
        assert!(
            msg.contains(&format!("({} bytes)", big.len())),
            "{what}: the length is not in {msg}"
        );
    };
    short(
        "assert_states_from, a state out of the list",
        panic_message(|| assert_states_from(&[(1, big.clone())], &[(1, "{}")])),
    );
    short(
        "assert_states_from, not the last state",
        panic_message(|| {
            assert_states_from(
                &[(1, big.clone())],
                &[(1, big.as_str()), (2, other.as_str())],
            )
        }),
    );
    short(
        "assert_state_eq",
        panic_message(|| assert_state_eq(&big, &other, "8 MiB")),
    );
    short(
        "assert_increasing",
        panic_message(|| assert_increasing(&[(2, big.clone()), (1, big.clone())])),
    );
    let rec = Recorder::default();
    rec.events.lock().unwrap().extend((1..=1000).map(|seq| Rec {
        kind: EventKind::MS_EVENT_STATE,
        stream: "s".into(),
        // Large states first and last (shown), small ones between.
        state: Some(if seq <= 2 || seq >= 999 {
            big.clone()
        } else {
            format!("{{\"i\":{seq}}}")
        }),
        seq,
        status: Status::MS_OK,
    }));
    short("{:?} of the events", format!("{:?}", rec.snapshot()));
    short("{:?} of the states", format!("{:?}", rec.states("s")));
    short("{:?} of an event", format!("{:?}", rec.snapshot()[0]));
    // Last: the panic poisons the recorder's lock.
    let msg = panic_message(|| {
        rec.wait(Duration::from_millis(1), |_| false);
    });
    short("Recorder::wait", msg.clone());
    assert!(msg.contains("(1000 items)"), "{msg}");
}
