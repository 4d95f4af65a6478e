//! Secrets stay secret: not in Redis, its append-only file, URLs or Webdis
//! logs; the functions refuse wrong credentials even when called directly.

mod common;

use common::*;
use missionstream::protocol::PROTOCOL_VERSION;
use std::time::Duration;

const PW: &str = "pw-Secret-1f3a";
const CODE: &str = "code-Secret-77c2";

fn all_files_under(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            all_files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn no_plaintext_secret_in_redis_aof_urls_or_logs() {
    let s = Servers::start_with(Options {
        verbosity: Some(8),
        ..Options::default()
    });
    let leader = s.client();
    let follower = s.client();
    let rec = Recorder::attach(&follower);
    leader.start("sec", PW, CODE).unwrap();
    follower.connect("sec", PW).unwrap();
    leader
        .publish("sec", b"{\"state\":\"StateMarker-9d1\"}")
        .unwrap();
    leader.flush("sec", 10_000).unwrap();
    rec.wait_state(
        "sec",
        "{\"state\":\"StateMarker-9d1\"}",
        Duration::from_secs(10),
    );
    drop(leader);
    let again = s.client();
    again.reconnect("sec", PW, CODE).unwrap();
    assert!(follower.connect("nope", PW).is_err());
    again.stop("sec").unwrap();
    again.start("kept", PW, CODE).unwrap();
    again
        .publish("kept", b"{\"state\":\"StateMarker-9d1\"}")
        .unwrap();
    again.flush("kept", 10_000).unwrap();
    // Uncompressed, so that a secret cannot hide in an LZF-compressed
    // string of the rewritten base file.
    s.redis_cli(&["CONFIG", "SET", "rdbcompression", "no"]);
    s.redis_cli(&["BGREWRITEAOF"]);
    wait_until(Duration::from_secs(10), || {
        let info = s.redis_cli(&["INFO", "persistence"]);
        info.contains("aof_rewrite_in_progress:0")
            && info.contains("aof_rewrite_scheduled:0")
            && info.contains("aof_last_bgrewrite_status:ok")
    });

    // Redis: every key and field.
    let mut dump = String::new();
    for key in s.redis_cli(&["--scan"]).lines() {
        dump.push_str(&s.redis_cli(&["DUMP", key]));
    }
    // Redis' files (append-only file, snapshots) and Webdis' log.
    let mut files = Vec::new();
    all_files_under(&s.dir, &mut files);
    let mut saw_urls = false;
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        if f.ends_with("webdis.log") {
            saw_urls = text.contains("/FCALL/ms_start/");
        }
        for secret in [PW, CODE] {
            assert!(!text.contains(secret), "{secret} found in {}", f.display());
        }
    }
    assert!(
        saw_urls,
        "the Webdis log records URLs at verbosity 8, so the check above means something"
    );
    // The state itself is in the append-only file (it is the record).
    let aof_has_state = files.iter().any(|f| {
        String::from_utf8_lossy(&std::fs::read(f).unwrap()).contains("StateMarker-9d1")
            && f.to_string_lossy().contains("appendonly")
    });
    assert!(aof_has_state, "states are persisted");
    assert!(!dump.contains(PW) && !dump.contains(CODE));
}

#[test]
fn functions_refuse_wrong_credentials_when_called_directly() {
    let s = Servers::start();
    let leader = s.client();
    leader.start("direct", PW, CODE).unwrap();
    let channel = s.record_field("direct", "channel");
    let key = "stream:direct";
    let frame = |fields: &[&str]| {
        let bytes: Vec<&[u8]> = fields.iter().map(|f| f.as_bytes()).collect();
        String::from_utf8(missionstream::protocol::frame_body(&bytes)).unwrap()
    };
    // (function, keys, args after the version, body fields, expected error)
    type Call<'a> = (&'a str, &'a [&'a str], &'a [&'a str], Vec<&'a str>, &'a str);
    let refused: &[Call] = &[
        // publish, heartbeat, stop need the leader code and the channel.
        (
            "ms_publish",
            &[key],
            &["00000000000000000000000000000001"],
            vec!["wrong", &channel, "{\"evil\":1}"],
            "MSBADCODE",
        ),
        (
            "ms_publish",
            &[key],
            &["00000000000000000000000000000002"],
            vec![CODE, "guessed-channel", "{\"evil\":1}"],
            "MSNOTFOUND",
        ),
        (
            "ms_stop",
            &[key, "streams"],
            &[],
            vec!["wrong", &channel],
            "MSBADCODE",
        ),
        (
            "ms_heartbeat",
            &[key],
            &["1000"],
            vec!["wrong", &channel],
            "MSBADCODE",
        ),
        // reconnect needs both.
        (
            "ms_reconnect",
            &[key, "streams"],
            &["5000", "0"],
            vec!["wrong", CODE],
            "MSBADPASSWORD",
        ),
        (
            "ms_reconnect",
            &[key, "streams"],
            &["5000", "0"],
            vec![PW, "wrong"],
            "MSBADCODE",
        ),
    ];
    for (function, keys, args, body, expected) in refused {
        let nkeys = keys.len().to_string();
        let body = frame(body);
        let mut cmd = vec!["FCALL", function, &nkeys];
        cmd.extend_from_slice(keys);
        cmd.push(PROTOCOL_VERSION);
        cmd.push("n0nce");
        cmd.extend_from_slice(args);
        cmd.push(&body);
        let out = s.redis_cli(&cmd);
        assert!(out.contains(expected), "{function}: {out}");
    }
    // connect, snapshot and probe never reveal the channel without the password.
    for f in ["ms_connect", "ms_snapshot"] {
        let out = s.redis_cli(&[
            "FCALL_RO",
            f,
            "1",
            key,
            PROTOCOL_VERSION,
            "n0nce",
            &frame(&["wrong"]),
        ]);
        assert!(
            out.contains("MSBADPASSWORD") && !out.contains(&channel),
            "{f}: {out}"
        );
    }
    let out = s.redis_cli(&[
        "FCALL",
        "ms_probe",
        "1",
        key,
        PROTOCOL_VERSION,
        "n0nce",
        "pr0be",
        &frame(&["wrong"]),
    ]);
    assert!(
        out.contains("MSBADPASSWORD") && !out.contains(&channel),
        "{out}"
    );
    // Malformed bodies are refused, not misread.
    let out = s.redis_cli(&[
        "FCALL",
        "ms_publish",
        "1",
        key,
        PROTOCOL_VERSION,
        "n0nce",
        "00000000000000000000000000000001",
        "999 1\nshort",
    ]);
    assert!(out.contains("MSARG"), "{out}");
    // Nothing changed.
    assert_eq!(s.record_field("direct", "state"), "{}");
    assert_eq!(s.record_field("direct", "seq"), "0");
    // The list never carries secrets or channels.
    let listed = format!("{:?}", leader.list().unwrap());
    assert!(!listed.contains(&channel) && !listed.contains(PW) && !listed.contains(CODE));
    // Through Webdis, the record cannot be read or the channel guessed.
    assert_eq!(
        http(s.webdis_port, "GET", "/HGETALL/stream%3Adirect", b"").0,
        403
    );
    assert_eq!(http(s.webdis_port, "GET", "/PUBSUB/CHANNELS", b"").0, 403);
    assert_eq!(http(s.webdis_port, "GET", "/PSUBSCRIBE/*", b"").0, 403);
}
