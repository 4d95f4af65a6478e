//! Integrity: only a stream's leader puts a state in front of its
//! followers, and no reply or log hands a secret to someone else. Each test
//! plays the attack as someone who knows only what the test says, through
//! Webdis with the deploy ACL, as raw HTTP.

mod common;

use common::faults::{FaultRelay, Faults, HoldReply, Landing};
use common::raw::{error_of, fcall_path, Raw};
use common::rawsub::RawSubscriber;
use common::*;
use missionstream::kdf::Secret;
use missionstream::protocol;
use missionstream::{Client, EventKind, Status};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const PW: &str = "pw-Integrity-5e1";
const CODE: &str = "code-Integrity-0b9";
const T: Duration = Duration::from_secs(15);

/// The attack of a follower who knows a stream's password: learn its
/// channel with ms_connect, start a stream of one's own on that channel,
/// publish a forged state with a huge seq floor, heartbeat and stop it.
/// The functions make each stream's channel from the starting client's
/// seed and the name, so the attacker's stream gets a channel of its own:
/// the victim's followers (the library's and a raw subscriber) see only
/// the victim's states, in order, and no end.
#[test]
fn a_stream_cannot_publish_on_another_streams_channel() {
    let s = Servers::start();
    let victim = s.client();
    let follower = s.client();
    let rec = Recorder::attach(&follower);
    victim.start("victim", PW, CODE).unwrap();
    follower.connect("victim", PW).unwrap();
    rec.wait_state("victim", "{}", T);

    // The attacker's view: the password, so the derived key, so the channel.
    let pw_key = s.derived("victim", Secret::Password, PW);
    let v = Raw::call(
        s.webdis_port,
        "ms_connect",
        &[b"stream:victim"],
        "atk1",
        &[],
        &[pw_key.as_bytes()],
    );
    let a = v.as_array().unwrap();
    assert_eq!(a[0], "atk1", "{v}");
    let channel = protocol::open_sealed(a[1].as_str().unwrap(), &pw_key, "atk1").unwrap();
    assert_eq!(channel, s.record_field("victim", "channel"));
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let raw_seen = seen.clone();
    let _raw = RawSubscriber::start(s.webdis_port, &channel, move |p| {
        raw_seen.lock().unwrap().push(p)
    });

    // The attacker's own stream, its seed taken from the victim's channel
    // (with 32-digit channels the client chose, this was the channel).
    let any_key = "a".repeat(64);
    let token = "7".repeat(32);
    let start = |name: &str, seed: &str| {
        Raw::call(
            s.webdis_port,
            "ms_start",
            &[
                format!("stream:{name}").as_bytes(),
                b"streams",
                format!("msl:{name}").as_bytes(),
            ],
            "atk2",
            &["5000", "0", "pbkdf2-sha256", "100000"],
            &[
                any_key.as_bytes(),
                any_key.as_bytes(),
                "0".repeat(32).as_bytes(),
                seed.as_bytes(),
                token.as_bytes(),
            ],
        )
    };
    let refused = start("evil-whole", &channel);
    assert!(
        error_of(&refused).is_some_and(|e| e.starts_with("MSARG")),
        "a 40-digit seed: {refused}"
    );
    let started = start("evil", &channel[..32]);
    assert_eq!(started, serde_json::json!(["atk2"]));
    let evil_channel = s.record_field("evil", "channel");
    assert_ne!(evil_channel, channel);
    assert_eq!(evil_channel, protocol::channel_of(&channel[..32], "evil"));
    let forged = "{\"plan\":\"FORGED\"}";
    for (chan, expect_ok) in [(&evil_channel, true), (&channel, false)] {
        // (the tag of the channel it claims, the lead token sealed)
        let id = "0123456789abcdef0000000000000001";
        let body = format!("r {id}\n{forged}");
        let lead = common::record::lead_hash(&token);
        let sealed = common::record::seal_lead(
            &token,
            &lead,
            id,
            "full",
            "-",
            "-",
            "999999999998",
            body.len(),
        );
        let tag = common::record::channel_tag(chan);
        let v = Raw::call_body(
            s.webdis_port,
            "ms_publish",
            &[b"stream:evil", b"streams", b"msl:evil"],
            "atk3",
            &[id, "999999999998", "full", "-", "-", &tag, &sealed],
            body.as_bytes(),
        );
        assert_eq!(error_of(&v).is_none(), expect_ok, "publish on {chan}: {v}");
        let v = Raw::call(
            s.webdis_port,
            "ms_heartbeat",
            &[b"stream:evil", b"msl:evil"],
            "atk4",
            &["1000"],
            &[token.as_bytes(), chan.as_bytes()],
        );
        assert_eq!(
            error_of(&v).is_none(),
            expect_ok,
            "heartbeat on {chan}: {v}"
        );
    }
    let v = Raw::call(
        s.webdis_port,
        "ms_stop",
        &[b"stream:evil", b"streams", b"msl:evil"],
        "atk5",
        &[],
        &[token.as_bytes(), evil_channel.as_bytes()],
    );
    assert_eq!(v, serde_json::json!(["atk5"]));

    // The victim's genuine states reach its followers, and nothing else.
    for k in 1..=3 {
        victim
            .publish("victim", format!("{{\"v\":{k}}}").as_bytes())
            .unwrap();
        victim.flush("victim", 10_000).unwrap();
    }
    rec.wait_state("victim", "{\"v\":3}", T);
    std::thread::sleep(Duration::from_millis(300));
    let events = rec.snapshot();
    assert!(
        events.iter().all(|e| e.kind == EventKind::MS_EVENT_STATE),
        "only states: {events:?}"
    );
    assert_states_from(
        &rec.states("victim"),
        &[
            (0, "{}"),
            (1, "{\"v\":1}"),
            (2, "{\"v\":2}"),
            (3, "{\"v\":3}"),
        ],
    );
    wait_until(T, || seen.lock().unwrap().len() >= 3);
    let raw = seen.lock().unwrap().clone();
    for p in &raw {
        assert!(
            !p.contains("FORGED") && p != "e" && !p.starts_with("h "),
            "the victim's channel carried {p:?}: {raw:?}"
        );
    }
}

/// Webdis 0.1.9 can write the reply to a request whose connection was
/// given up into the next new connection. The fault relay does so on cue:
/// a follower's ms_connect is answered after it gave up, into an
/// attacker's fresh connection. The channel in that reply is sealed with
/// the follower's derived key and the request nonce, so the attacker (who
/// does not know the password) gets nothing usable; the rightful caller,
/// asking again with the same nonce, opens it, and a library follower
/// through the same relay follows the stream.
#[test]
fn a_reply_written_to_another_connection_gives_its_reader_nothing() {
    let s = Servers::start();
    let leader = s.client();
    leader.start("sealed", PW, CODE).unwrap();
    let channel = s.record_field("sealed", "channel");
    let relay = FaultRelay::start(
        s.webdis_port,
        Faults {
            hold_reply: Some(HoldReply {
                pattern: "/FCALL/ms_connect/",
                nth: 1,
                landing: Landing::NewConnection,
                max_hold: Duration::from_secs(10),
                later_delay: Duration::ZERO,
            }),
            ..Faults::default()
        },
    );
    let pw_key = s.derived("sealed", Secret::Password, PW);
    let path = fcall_path("ms_connect", &[b"stream:sealed"], "v1ctim", &[]);
    let body = protocol::frame_body(&[pw_key.as_bytes()]);
    let mut victim = Raw::connect(relay.port);
    victim.put(&path, &body);
    assert_eq!(victim.reply(Duration::from_millis(700)), None, "held");
    drop(victim);
    // The attacker's own request on a new connection gets the victim's
    // reply first.
    // (An attacker opens connections until it lands: on a busy machine the
    // relay may see the hang-up after the first one.)
    let mut stolen = String::new();
    for _ in 0..20 {
        let mut attacker = Raw::connect(relay.port);
        attacker.put(
            &fcall_path("ms_params", &[b"stream:sealed"], "atk", &[]),
            b"",
        );
        // Its own reply, and the victim's (ahead of it, or landing after).
        for wait in [10, 1] {
            if let Some((_, text)) = attacker.reply(Duration::from_secs(wait)) {
                if text.contains("v1ctim") {
                    stolen = text;
                }
            }
        }
        if !stolen.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(relay.stale_written(), 1, "the relay played the fault");
    let v: serde_json::Value = serde_json::from_str(&stolen).unwrap();
    let a = v["FCALL"].as_array().unwrap().clone();
    assert_eq!(a[0], "v1ctim", "the victim's reply: {stolen}");
    let sealed = a[1].as_str().unwrap();
    assert!(!stolen.contains(&channel), "the channel in clear: {stolen}");
    assert_eq!(sealed.len(), 40);
    // Opened with anything but the password's key, it is not the channel.
    for key in [
        s.derived("sealed", Secret::Password, "guess"),
        s.derived("sealed", Secret::LeaderCode, CODE),
        String::new(),
    ] {
        assert_ne!(
            protocol::open_sealed(sealed, &key, "v1ctim"),
            Some(channel.clone())
        );
    }
    // The rightful caller asks again (same nonce, as every try of a call
    // does) and opens it.
    let mut again = Raw::connect(s.webdis_port);
    again.put(&path, &body);
    let (_, text) = again.reply(Duration::from_secs(10)).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let opened = protocol::open_sealed(v["FCALL"][1].as_str().unwrap(), &pw_key, "v1ctim");
    assert_eq!(opened, Some(channel));
    // And the library, through the same relay, follows.
    let follower = Client::new(&relay.url).unwrap();
    let rec = Recorder::attach(&follower);
    follower.connect("sealed", PW).unwrap();
    leader.publish("sealed", b"{\"after\":1}").unwrap();
    rec.wait_state("sealed", "{\"after\":1}", T);
}

/// Every byte string a name might be that the functions must refuse:
/// not UTF-8 at any length (the one-byte ones slipped through before),
/// and the bidirectional formatting characters.
fn refused_names() -> Vec<Vec<u8>> {
    let mut names: Vec<Vec<u8>> = vec![
        vec![0xFE],
        vec![0x80],
        vec![0xC3],
        vec![0xFF],
        b"a\xFE".to_vec(),
        vec![0xC0, 0xAF],
        vec![0xED, 0xA0, 0x80],
    ];
    for c in [
        '\u{061C}', '\u{200E}', '\u{200F}', '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}',
        '\u{202E}', '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}',
    ] {
        names.push(format!("plan{c}txt.gpj").into_bytes());
        names.push(c.to_string().into_bytes());
    }
    names
}

/// Names that are not UTF-8 (at every length) or that carry a control or
/// bidirectional formatting character are refused by the functions
/// (through Webdis, raw) and by the library, with a clear status and
/// message, and nothing is stored; a name just beside them is accepted.
#[test]
fn names_not_utf8_or_with_bidi_controls_are_refused_everywhere() {
    let s = Servers::start();
    let key = "a".repeat(64);
    let start = |name: &[u8], nonce: &str| {
        let mut record = b"stream:".to_vec();
        record.extend_from_slice(name);
        let mut log = b"msl:".to_vec();
        log.extend_from_slice(name);
        Raw::call(
            s.webdis_port,
            "ms_start",
            &[&record, b"streams", &log],
            nonce,
            &["5000", "0", "pbkdf2-sha256", "100000"],
            &[
                key.as_bytes(),
                key.as_bytes(),
                "0".repeat(32).as_bytes(),
                "1".repeat(32).as_bytes(),
                "2".repeat(32).as_bytes(),
            ],
        )
    };
    for (i, name) in refused_names().iter().enumerate() {
        let v = start(name, &format!("n{i}"));
        let e = error_of(&v).unwrap_or_else(|| panic!("{name:?} accepted: {v}"));
        assert!(
            e.starts_with(&format!("MSARG n{i} the stream name")),
            "{name:?}: {e}"
        );
    }
    assert_eq!(s.redis_cli(&["DBSIZE"]).trim(), "0", "nothing stored");
    // The library refuses the same names before any request.
    let c = s.client();
    for name in refused_names() {
        if let Ok(name) = String::from_utf8(name) {
            let e = c.start(&name, PW, CODE).unwrap_err();
            assert_eq!(e.status, Status::MS_ERR_INVALID_ARGUMENT, "{name:?}");
            assert!(e.message.contains("bidirectional"), "{}", e.message);
            let e = c.connect(&name, PW).unwrap_err();
            assert_eq!(e.status, Status::MS_ERR_INVALID_ARGUMENT, "{name:?}");
        }
    }
    // What is next to them is a name.
    assert_eq!(start("é".as_bytes(), "ok1"), serde_json::json!(["ok1"]));
    c.start("plan\u{2013}a", PW, CODE).unwrap();
    let names: Vec<String> = c.list().unwrap().into_iter().map(|i| i.name).collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

/// Records that got into the index before the functions refused their
/// names (a one-byte non-UTF-8 name, a bidi-spoofed name) do not break
/// `list` or `ms_subscribers` for anyone: they are skipped, and the debug
/// output of the library says so when it skips one.
#[test]
fn list_skips_records_whose_names_are_now_refused() {
    use std::os::unix::ffi::OsStrExt;
    let s = Servers::start();
    let c = s.client();
    c.start("listed", PW, CODE).unwrap();
    let channel = "c".repeat(40);
    for name in [&b"\xFE"[..], "evil\u{202E}gnp.plan".as_bytes()] {
        let mut record = b"stream:".to_vec();
        record.extend_from_slice(name);
        let run = |args: &[&std::ffi::OsStr]| {
            let out = std::process::Command::new("redis-cli")
                .arg("-p")
                .arg(s.redis_port.to_string())
                .args(args)
                .output()
                .unwrap();
            assert!(out.status.success());
        };
        let os = std::ffi::OsStr::from_bytes;
        run(&[os(b"HSET"), os(b"streams"), os(name), os(b"1")]);
        run(&[
            os(b"HSET"),
            os(&record),
            os(b"seq"),
            os(b"1"),
            os(b"updated_ms"),
            os(b"1"),
            os(b"channel"),
            os(channel.as_bytes()),
        ]);
    }
    assert_eq!(
        s.redis_cli(&["HLEN", "streams"]).trim(),
        "4",
        "3 names and the total"
    );
    for _ in 0..2 {
        let listed = c.list().unwrap();
        assert_eq!(
            listed.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
            ["listed"]
        );
    }
    let v = Raw::call(
        s.webdis_port,
        "ms_subscribers",
        &[b"streams"],
        "sub1",
        &["0"],
        &[],
    );
    assert_eq!(v, serde_json::json!(["sub1", "0", "listed", 0]));
    // ms_list counts what it skipped (the library says so under
    // MISSIONSTREAM_DEBUG).
    let v = Raw::call(s.webdis_port, "ms_list", &[b"streams"], "lst1", &["0"], &[]);
    let a = v.as_array().unwrap();
    // (after the skipped count: Redis' clock, now_ms)
    assert!(
        a[3].as_u64().is_some_and(|ms| ms > 1_700_000_000_000),
        "{v}"
    );
    assert_eq!(
        (&a[..3], a[4].as_str()),
        (
            &[
                serde_json::json!("lst1"),
                serde_json::json!("0"),
                serde_json::json!(2)
            ][..],
            Some("listed")
        ),
        "{v}"
    );
}

/// A secret found where it must not be: which one, and where.
fn secrets_in(text: &str, secrets: &[(&str, &str)]) -> Vec<String> {
    secrets
        .iter()
        .filter(|(_, s)| !s.is_empty() && text.contains(*s))
        .map(|(what, _)| what.to_string())
        .collect()
}

/// Every 32- and 64-digit lowercase hex word of `text` whose SHA-1 is one
/// of `hashes` (a lead token, a derived key: the record keeps their SHA-1).
fn hashed_secrets_in(text: &str, hashes: &[String]) -> Vec<String> {
    use sha1::{Digest, Sha1};
    let b = text.as_bytes();
    let mut out = Vec::new();
    for len in [32, 64] {
        for i in 0..b.len().saturating_sub(len - 1) {
            let w = &b[i..i + len];
            if w.iter()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
            {
                let h: String = Sha1::digest(w).iter().map(|x| format!("{x:02x}")).collect();
                if hashes.contains(&h) {
                    out.push(String::from_utf8_lossy(w).into_owned());
                }
            }
        }
    }
    out
}

/// Run by `no_secret_in_slowlog_logs_aof_or_debug_lines` in a child
/// process with MISSIONSTREAM_DEBUG=1: every operation, including slow
/// ones and failing ones, against the servers at $MS_INTEGRITY_URL.
#[test]
#[ignore = "run by no_secret_in_slowlog_logs_aof_or_debug_lines"]
fn every_operation_with_debug_output() {
    let Ok(url) = std::env::var("MS_INTEGRITY_URL") else {
        return;
    };
    let leader = Client::new(&url).unwrap();
    leader.set_heartbeat(200).unwrap();
    // The follower goes through faults that make the library retry and
    // recover (and say so in debug lines): a lost reply to ms_connect, a
    // garbled subscription.
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let relay = FaultRelay::start(
        port,
        Faults {
            hold_reply: Some(HoldReply {
                pattern: "/FCALL/ms_connect/",
                nth: 1,
                landing: Landing::NewConnection,
                max_hold: Duration::from_secs(10),
                later_delay: Duration::ZERO,
            }),
            garble_subscriptions: 1,
            ..Faults::default()
        },
    );
    let follower = Client::new(&relay.url).unwrap();
    follower.set_timeout(3000).unwrap();
    let rec = Recorder::attach(&follower);
    leader.start("logged", PW, CODE).unwrap();
    follower.connect("logged", PW).unwrap();
    // A large state of multi-byte text: a call of tens of ms (SLOWLOG's
    // default threshold is 10 ms), then small edits of it (deltas).
    let mut big = String::from("{\"t\":\"");
    while big.len() < 3 << 20 {
        big.push_str("日本語のテキスト");
    }
    big.push_str("\"}");
    leader.publish("logged", big.as_bytes()).unwrap();
    leader.flush("logged", 30_000).unwrap();
    for k in 0..3 {
        let edited = big.replacen("日本", &format!("e{k}"), 1);
        leader.publish("logged", edited.as_bytes()).unwrap();
        leader.flush("logged", 30_000).unwrap();
    }
    rec.wait(T, |ev| ev.iter().filter(|e| e.seq == 4).count() == 1);
    let _ = leader.list().unwrap();
    assert!(follower.connect("logged", "wrong").is_err());
    // Silence long enough for the follower to probe its subscription.
    drop(leader);
    rec.wait_kind("logged", EventKind::MS_EVENT_LEADER_OFFLINE, T);
    let again = Client::new(&url).unwrap();
    again.reconnect("logged", PW, CODE).unwrap();
    again.publish("logged", b"{\"last\":1}").unwrap();
    again.flush("logged", 10_000).unwrap();
    again.start("stopped", PW, CODE).unwrap();
    again.stop("stopped").unwrap();
    follower.disconnect("logged").unwrap();
    // "logged" stays, led by nobody: its record is what the parent checks.
    std::mem::forget(again);
}

/// No derived key, lead token or channel ends up in SLOWLOG, Webdis' log,
/// Redis' log or a debug line of the library, and the append-only file
/// holds no derived key or lead token (only the record's hashes), after
/// every operation, a slow one included, with the deploy configuration.
/// Before: the same check with SLOWLOG on (Redis' default) finds the
/// channel, so the check sees what it looks for.
#[test]
fn no_secret_in_slowlog_logs_aof_or_debug_lines() {
    let s = Servers::start();
    // The control: SLOWLOG on keeps a publish's lead token and channel.
    s.redis_cli(&["CONFIG", "SET", "slowlog-log-slower-than", "0"]);
    s.redis_cli(&["CONFIG", "SET", "slowlog-max-len", "128"]);
    let probe = s.client();
    probe.start("control", PW, CODE).unwrap();
    probe.publish("control", b"{\"c\":1}").unwrap();
    probe.flush("control", 10_000).unwrap();
    let control = s.redis_cli(&["SLOWLOG", "GET", "128"]);
    assert!(
        control.contains(&s.record_field("control", "channel")),
        "SLOWLOG at Redis' defaults keeps the channel"
    );
    probe.stop("control").unwrap();
    drop(probe);
    // The deploy configuration again.
    s.redis_cli(&["CONFIG", "SET", "slowlog-log-slower-than", "-1"]);
    s.redis_cli(&["CONFIG", "SET", "slowlog-max-len", "0"]);
    s.redis_cli(&["SLOWLOG", "RESET"]);
    s.redis_cli(&["LATENCY", "RESET"]);

    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "every_operation_with_debug_output",
            "--ignored",
            "--nocapture",
        ])
        .env("MS_INTEGRITY_URL", &s.url)
        .env("MISSIONSTREAM_DEBUG", "1")
        .output()
        .unwrap();
    let debug = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "the child run failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        debug.contains("missionstream["),
        "the child wrote debug lines (else this checks nothing): {}{debug}",
        String::from_utf8_lossy(&out.stdout)
    );
    // A call was slow enough for SLOWLOG's default threshold.
    let latency = s.redis_cli(&["LATENCY", "LATEST"]);
    assert!(latency.contains("command"), "a slow call: {latency:?}");

    let channel = s.record_field("logged", "channel");
    assert_eq!(channel.len(), 40);
    let pw_key = s.derived("logged", Secret::Password, PW);
    let code_key = s.derived("logged", Secret::LeaderCode, CODE);
    let hashes = vec![
        s.record_field("logged", "lead"),
        s.record_field("logged", "pw"),
        s.record_field("logged", "code"),
    ];
    let clear = [
        ("password", PW),
        ("leader code", CODE),
        ("password key", pw_key.as_str()),
        ("leader code key", code_key.as_str()),
        ("channel", channel.as_str()),
    ];
    let mut places: Vec<(String, String)> = vec![
        ("SLOWLOG".into(), s.redis_cli(&["SLOWLOG", "GET", "1000"])),
        ("debug output".into(), debug),
    ];
    let mut files = Vec::new();
    for e in std::fs::read_dir(&s.dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            for f in std::fs::read_dir(&p).unwrap().flatten() {
                files.push(f.path());
            }
        } else {
            files.push(p);
        }
    }
    let mut saw = (false, false);
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let text = String::from_utf8_lossy(&std::fs::read(&f).unwrap()).into_owned();
        if name == "webdis.log" {
            saw.0 = true;
        }
        if name.contains("appendonly") && name.ends_with(".aof") && text.contains("logged") {
            saw.1 = true;
            // The record holds the channel; the AOF may too. Keys and
            // tokens: only as the record's hashes.
            let found = hashed_secrets_in(&text, &hashes);
            assert!(found.is_empty(), "{found:?} in {}", f.display());
            assert!(
                secrets_in(&text, &clear[..4]).is_empty(),
                "{:?} in {}",
                secrets_in(&text, &clear[..4]),
                f.display()
            );
            continue;
        }
        places.push((f.display().to_string(), text));
    }
    assert_eq!(saw, (true, true), "Webdis' log and the AOF were read");
    for (place, text) in &places {
        let found = secrets_in(text, &clear);
        assert!(found.is_empty(), "{found:?} in {place}");
        let found = hashed_secrets_in(text, &hashes);
        assert!(found.is_empty(), "a lead token or key {found:?} in {place}");
    }
}
