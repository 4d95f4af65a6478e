//! Secrets stay secret: not in Redis, its append-only file, URLs or Webdis
//! logs; the functions refuse wrong credentials even when called directly.

mod common;

use common::*;
use missionstream::kdf::Secret;
use missionstream::protocol::PROTOCOL_VERSION;
use missionstream::{EventKind, Status};
use std::time::{Duration, Instant};

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

    // Nor the keys derived from them (what the client sends): Redis keeps
    // only their SHA-1, and its append-only file logs the effects of a
    // function, not its arguments.
    let pw_key = s.derived("kept", Secret::Password, PW);
    let code_key = s.derived("kept", Secret::LeaderCode, CODE);
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
        for secret in [PW, CODE, &pw_key, &code_key] {
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
    assert!(!dump.contains(&pw_key) && !dump.contains(&code_key));
}

#[test]
fn functions_refuse_wrong_credentials_when_called_directly() {
    let s = Servers::start();
    let leader = s.client();
    leader.start("direct", PW, CODE).unwrap();
    let channel = s.record_field("direct", "channel");
    let key = "stream:direct";
    // The derived keys a client sends, right and wrong, and a lead token.
    let pw_key = s.derived("direct", Secret::Password, PW);
    let code_key = s.derived("direct", Secret::LeaderCode, CODE);
    let wrong_pw = s.derived("direct", Secret::Password, "wrong");
    let wrong_code = s.derived("direct", Secret::LeaderCode, "wrong");
    let token = s.take_lead("direct", PW, CODE);
    let new_token = "0123456789abcdef0123456789abcdef";
    let guessed_token = "f".repeat(32);
    let frame = |fields: &[&str]| {
        let bytes: Vec<&[u8]> = fields.iter().map(|f| f.as_bytes()).collect();
        String::from_utf8(missionstream::protocol::frame_body(&bytes)).unwrap()
    };
    // ms_publish's sealed lead tokens and channel tags (docs/PROTOCOL.md).
    let log = "msl:direct";
    let state = "r 00000000000000000000000000000001\n{\"evil\":1}";
    let lead = common::record::lead_hash(&token);
    let seal = |t: &str| {
        common::record::seal_lead(
            t,
            &lead,
            "00000000000000000000000000000001",
            "full",
            "-",
            "-",
            "0",
            state.len(),
        )
    };
    let (guessed_seal, right_seal) = (seal(&guessed_token), seal(&token));
    let tag = common::record::channel_tag(&channel);
    let guessed_tag = common::record::channel_tag(&"0".repeat(40));
    // (function, keys, args after the version, body fields, expected error)
    type Call<'a> = (&'a str, &'a [&'a str], Vec<&'a str>, Vec<&'a str>, &'a str);
    let refused: &[Call] = &[
        // publish, heartbeat, stop need the lead token and the channel (its
        // tag, for publish); the leader code (or its key) is no lead token.
        (
            "ms_publish",
            &[key, "streams", log],
            vec![
                "00000000000000000000000000000001",
                "0",
                "full",
                "-",
                "-",
                &tag,
                &guessed_seal,
            ],
            vec![state],
            "MSNOTLEADER",
        ),
        (
            "ms_publish",
            &[key, "streams", log],
            vec![
                "00000000000000000000000000000001",
                "0",
                "full",
                "-",
                "-",
                &tag,
                CODE,
            ],
            vec![state],
            "MSARG",
        ),
        (
            "ms_publish",
            &[key, "streams", log],
            vec![
                "00000000000000000000000000000001",
                "0",
                "full",
                "-",
                "-",
                &guessed_tag,
                &right_seal,
            ],
            vec![state],
            "MSNOTFOUND",
        ),
        (
            "ms_stop",
            &[key, "streams", log],
            vec![],
            vec![&guessed_token, &channel],
            "MSNOTLEADER",
        ),
        (
            "ms_heartbeat",
            &[key, log],
            vec!["1000"],
            vec![&guessed_token, &channel],
            "MSNOTLEADER",
        ),
        // reconnect needs both keys; the plaintext secrets are refused.
        (
            "ms_reconnect",
            &[key, "streams", log],
            vec!["5000", "0"],
            vec![&wrong_pw, &code_key, new_token],
            "MSBADPASSWORD",
        ),
        (
            "ms_reconnect",
            &[key, "streams", log],
            vec!["5000", "0"],
            vec![&pw_key, &wrong_code, new_token],
            "MSBADCODE",
        ),
        (
            "ms_reconnect",
            &[key, "streams", log],
            vec!["5000", "0"],
            vec![PW, CODE, new_token],
            "MSARG",
        ),
    ];
    for (function, keys, args, body, expected) in refused {
        let nkeys = keys.len().to_string();
        // (ms_publish's body is the state message itself, not framed)
        let body = if *function == "ms_publish" {
            body[0].to_string()
        } else {
            frame(body)
        };
        let mut cmd = vec!["FCALL", function, &nkeys];
        cmd.extend_from_slice(keys);
        cmd.push(PROTOCOL_VERSION);
        cmd.push("n0nce");
        cmd.extend_from_slice(args);
        cmd.push(&body);
        let out = s.redis_cli(&cmd);
        assert!(out.contains(expected), "{function}: {out}");
    }
    // The lead token did not change hands: it still publishes.
    let out = s.redis_cli(&[
        "FCALL",
        "ms_heartbeat",
        "2",
        key,
        log,
        PROTOCOL_VERSION,
        "n0nce",
        "1000",
        &frame(&[&token, &channel]),
    ]);
    assert_eq!(
        out.lines().next(),
        Some("n0nce"),
        "the lead's heartbeat: {out}"
    );
    // connect never reveals the channel without the password; snapshot
    // and probe need the channel itself (a 128-bit secret that only
    // connect hands out): a password, or a wrong channel, is no stream.
    let out = s.redis_cli(&[
        "FCALL",
        "ms_connect",
        "1",
        key,
        PROTOCOL_VERSION,
        "n0nce",
        &frame(&[&wrong_pw]),
    ]);
    assert!(
        out.contains("MSBADPASSWORD") && !out.contains(&channel),
        "ms_connect: {out}"
    );
    let wrong_channel = "0".repeat(32);
    for secret in [PW, wrong_channel.as_str()] {
        let out = s.redis_cli(&[
            "FCALL_RO",
            "ms_snapshot",
            "2",
            key,
            log,
            PROTOCOL_VERSION,
            "n0nce",
            "-",
            &frame(&[secret]),
        ]);
        assert!(
            out.contains("MSNOTFOUND") && !out.contains(&channel),
            "ms_snapshot: {out}"
        );
        let out = s.redis_cli(&[
            "FCALL",
            "ms_probe",
            "1",
            key,
            PROTOCOL_VERSION,
            "n0nce",
            "pr0be",
            &frame(&[secret]),
        ]);
        assert!(
            out.contains("MSNOTFOUND") && !out.contains(&channel),
            "ms_probe: {out}"
        );
    }
    // Malformed bodies are refused, not misread (a full publish's body
    // must be "r <its publish id>\n" and the state).
    let short = "999 1\nshort";
    let short_seal = common::record::seal_lead(
        &token,
        &lead,
        "00000000000000000000000000000001",
        "full",
        "-",
        "-",
        "0",
        short.len(),
    );
    let out = s.redis_cli(&[
        "FCALL",
        "ms_publish",
        "3",
        key,
        "streams",
        log,
        PROTOCOL_VERSION,
        "n0nce",
        "00000000000000000000000000000001",
        "0",
        "full",
        "-",
        "-",
        &tag,
        &short_seal,
        short,
    ]);
    assert!(out.contains("MSARG"), "{out}");
    // Nothing changed.
    assert_state_eq(&s.record_field("direct", "state"), "{}", "");
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

/// `PUT /FCALL[_RO]/<function>/<nkeys>/<keys...>/<version>/<nonce>/<args...>`
/// through Webdis (the deploy ACL), as anyone who can reach it could send
/// it; returns the HTTP status and the reply text.
fn direct(
    s: &Servers,
    function: &str,
    keys: &[&[u8]],
    args: &[&str],
    body: &[u8],
) -> (u16, String) {
    raw::put_once(
        s.webdis_port,
        &raw::fcall_path(function, keys, "n0nce", args),
        body,
    )
}

fn frame_bytes(fields: &[&[u8]]) -> Vec<u8> {
    missionstream::protocol::frame_body(fields)
}

/// Everything in Redis but the functions, as `redis-cli --raw` lists it:
/// every key with its type and content.
fn dump(s: &Servers) -> String {
    let mut keys: Vec<String> = s
        .redis_cli(&["--raw", "KEYS", "*"])
        .lines()
        .map(str::to_string)
        .collect();
    keys.sort();
    let mut out = String::new();
    for k in keys {
        let t = s.redis_cli(&["--raw", "TYPE", &k]);
        let content = match t.trim() {
            "set" => {
                let mut m: Vec<String> = s
                    .redis_cli(&["--raw", "SMEMBERS", &k])
                    .lines()
                    .map(str::to_string)
                    .collect();
                m.sort();
                m.join(",")
            }
            "hash" => {
                let mut m: Vec<String> = s
                    .redis_cli(&["--raw", "HGETALL", &k])
                    .lines()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
                    .chunks(2)
                    .map(|c| c.join("="))
                    .collect();
                m.sort();
                m.join(",")
            }
            "string" => s.redis_cli(&["--raw", "GET", &k]),
            other => other.to_string(),
        };
        out.push_str(&format!("{k} {} {}\n", t.trim(), content.trim()));
    }
    out
}

/// Every function checks the number and shape of its keys (a stream's
/// record `stream:<valid name>`, exactly `streams` for the index) before
/// anything else: called directly through the deploy ACL with another
/// application's keys, it answers MSARG and changes nothing.
#[test]
fn functions_refuse_foreign_keys_through_the_deploy_acl() {
    let s = Servers::start();
    let leader = s.client();
    leader.start("mine", PW, CODE).unwrap();
    let channel = s.record_field("mine", "channel");
    s.redis_cli(&["SADD", "app:set", "a", "b", "c"]);
    s.redis_cli(&["HSET", "app:hash", "name", "x", "pw", "y"]);
    s.redis_cli(&["SET", "app:string", "hello"]);
    s.redis_cli(&["SADD", "stream:set", "m"]);
    let hex = "0123456789abcdef0123456789abcdef";
    // Well-formed bodies with the right keys and token: only the keys of
    // the calls below are wrong.
    let pw_key = s.derived("mine", Secret::Password, PW);
    let code_key = s.derived("mine", Secret::LeaderCode, CODE);
    let token = s.take_lead("mine", PW, CODE);
    let before = dump(&s);
    assert!(before.contains("app:set set a,b,c"), "{before}");
    let start_body = frame_bytes(&[
        pw_key.as_bytes(),
        code_key.as_bytes(),
        hex.as_bytes(),
        hex.as_bytes(),
        hex.as_bytes(),
    ]);
    let leader_body = frame_bytes(&[token.as_bytes(), channel.as_bytes()]);
    let publish_body = frame_bytes(&[token.as_bytes(), channel.as_bytes(), b"{\"x\":1}"]);
    let pw_body = frame_bytes(&[pw_key.as_bytes()]);
    let reconnect_body = frame_bytes(&[pw_key.as_bytes(), code_key.as_bytes(), hex.as_bytes()]);
    let start_args = vec!["5000", "0", "pbkdf2-sha256", "100000"];
    let id = "00000000000000000000000000000001";
    let long_name = format!("stream:{}", "n".repeat(257));
    let bad_names: Vec<Vec<u8>> = vec![
        long_name.into_bytes(),
        b"stream:".to_vec(),
        b"stream:a\tb".to_vec(),
        b"stream:a\nb".to_vec(),
        b"stream:\xff\xfe".to_vec(),
        b"stream:\xc2\x85".to_vec(), // U+0085, a C1 control
        b"app:hash".to_vec(),
        b"app:string".to_vec(),
    ];
    type Call<'a> = (&'a str, Vec<Vec<u8>>, Vec<&'a str>, &'a [u8]);
    let mut calls: Vec<Call> = vec![
        ("ms_list", vec![b"app:set".to_vec()], vec![], b""),
        ("ms_list", vec![b"stream:set".to_vec()], vec![], b""),
        // The right number of keys and arguments (a cursor): only the
        // index key is wrong.
        ("ms_list", vec![b"app:set".to_vec()], vec!["0"], b""),
        ("ms_list", vec![b"stream:set".to_vec()], vec!["0"], b""),
        ("ms_list", vec![b"app:hash".to_vec()], vec!["0"], b""),
        (
            "ms_start",
            vec![
                b"stream:new".to_vec(),
                b"app:set".to_vec(),
                b"msl:new".to_vec(),
            ],
            start_args.clone(),
            &start_body,
        ),
        (
            "ms_reconnect",
            vec![
                b"stream:mine".to_vec(),
                b"app:set".to_vec(),
                b"msl:mine".to_vec(),
            ],
            vec!["5000", "0"],
            &reconnect_body,
        ),
        (
            "ms_stop",
            vec![
                b"stream:mine".to_vec(),
                b"app:set".to_vec(),
                b"msl:mine".to_vec(),
            ],
            vec![],
            &leader_body,
        ),
        (
            "ms_list",
            vec![b"streams".to_vec(), b"app:set".to_vec()],
            vec![],
            b"",
        ),
        ("ms_list", vec![], vec![], b""),
        (
            "ms_start",
            vec![b"stream:new".to_vec(), b"app:set".to_vec()],
            start_args.clone(),
            &start_body,
        ),
        (
            "ms_start",
            vec![b"stream:new".to_vec()],
            start_args.clone(),
            &start_body,
        ),
        (
            "ms_reconnect",
            vec![b"stream:mine".to_vec(), b"app:set".to_vec()],
            vec!["5000", "0"],
            &reconnect_body,
        ),
        (
            "ms_stop",
            vec![b"stream:mine".to_vec(), b"app:set".to_vec()],
            vec![],
            &leader_body,
        ),
        (
            "ms_stop",
            vec![
                b"stream:mine".to_vec(),
                b"streams".to_vec(),
                b"app:set".to_vec(),
            ],
            vec![],
            &leader_body,
        ),
        (
            "ms_publish",
            vec![b"stream:mine".to_vec(), b"app:hash".to_vec()],
            vec![id, "0", "full", "-", "-"],
            &publish_body,
        ),
        // The log of another stream, or a key of the application's as the log.
        (
            "ms_stop",
            vec![
                b"stream:mine".to_vec(),
                b"streams".to_vec(),
                b"msl:other".to_vec(),
            ],
            vec![],
            &leader_body,
        ),
        (
            "ms_heartbeat",
            vec![b"stream:mine".to_vec(), b"app:hash".to_vec()],
            vec!["5000"],
            &leader_body,
        ),
    ];
    for bad in &bad_names {
        calls.push((
            "ms_start",
            vec![bad.clone(), b"streams".to_vec()],
            start_args.clone(),
            &start_body,
        ));
        calls.push(("ms_params", vec![bad.clone()], vec![], b""));
        calls.push((
            "ms_reconnect",
            vec![bad.clone(), b"streams".to_vec()],
            vec!["5000", "0"],
            &reconnect_body,
        ));
        calls.push((
            "ms_stop",
            vec![bad.clone(), b"streams".to_vec()],
            vec![],
            &leader_body,
        ));
        calls.push((
            "ms_publish",
            vec![bad.clone(), b"streams".to_vec()],
            vec![id, "0", "full", "-", "-"],
            &publish_body,
        ));
        calls.push((
            "ms_heartbeat",
            vec![bad.clone()],
            vec!["5000"],
            &leader_body,
        ));
        calls.push(("ms_probe", vec![bad.clone()], vec!["t0ken"], &pw_body));
        calls.push(("ms_connect", vec![bad.clone()], vec![], &pw_body));
        calls.push(("ms_snapshot", vec![bad.clone()], vec![], &pw_body));
        calls.push(("ms_list", vec![bad.clone()], vec![], b""));
        calls.push(("ms_list", vec![bad.clone()], vec!["0"], b""));
    }
    for (function, keys, args, body) in &calls {
        let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let (status, reply) = direct(&s, function, &keys, args, body);
        assert_eq!(status, 200, "{function} {keys:?}: {reply}");
        assert!(
            reply.contains("MSARG n0nce"),
            "{function} {:?}: {reply}",
            keys.iter()
                .map(|k| String::from_utf8_lossy(k))
                .collect::<Vec<_>>()
        );
    }
    assert_eq!(dump(&s), before, "a refused call changed Redis");
    // The stream itself still works, and the index lists only it.
    let listed = leader.list().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].name, "mine");
}

/// The functions enforce the library's limits themselves: a direct call
/// with a value the library would refuse gets MSARG and changes nothing.
#[test]
fn functions_enforce_the_library_limits() {
    let s = Servers::start();
    let leader = s.client();
    leader.start("lim", PW, CODE).unwrap();
    leader.publish("lim", b"{\"ok\":1}").unwrap();
    leader.flush("lim", 10_000).unwrap();
    let channel = s.record_field("lim", "channel");
    let pw_key = s.derived("lim", Secret::Password, PW);
    let code_key = s.derived("lim", Secret::LeaderCode, CODE);
    let token = s.take_lead("lim", PW, CODE);
    let key: &[u8] = b"stream:lim";
    let new: &[u8] = b"stream:lim-new";
    let hex = "0123456789abcdef0123456789abcdef";
    let before = dump(&s);
    // ms_start with these fields (pw key, code key, salt, channel, lead
    // token) and arguments (heartbeat, TTL, KDF, iterations).
    let start = |f: [&[u8]; 5], a: [&str; 4]| {
        direct(
            &s,
            "ms_start",
            &[new, b"streams", b"msl:lim-new"],
            &a,
            &frame_bytes(&f),
        )
    };
    let pw = pw_key.as_bytes();
    let code = code_key.as_bytes();
    let h = hex.as_bytes();
    let ok_args = ["5000", "0", "pbkdf2-sha256", "100000"];
    let upper = code_key.to_uppercase();
    let long = vec![b'p'; 1025];
    let refused: Vec<(&str, (u16, String))> = vec![
        (
            "plaintext password",
            start([PW.as_bytes(), code, h, h, h], ok_args),
        ),
        (
            "plaintext leader code",
            start([pw, CODE.as_bytes(), h, h, h], ok_args),
        ),
        ("empty leader code key", start([pw, b"", h, h, h], ok_args)),
        (
            "uppercase code key",
            start([pw, upper.as_bytes(), h, h, h], ok_args),
        ),
        (
            "key of 65 digits",
            start([&[b'a'; 65], code, h, h, h], ok_args),
        ),
        (
            "lead token of 31 digits",
            start([pw, code, h, h, &h[..31]], ok_args),
        ),
        ("salt not hex", start([pw, code, b"zz", h, h], ok_args)),
        (
            "channel not hex",
            start(
                [pw, code, h, b"0123456789ABCDEF0123456789ABCDEF", h],
                ok_args,
            ),
        ),
        (
            "another KDF",
            start([pw, code, h, h, h], ["5000", "0", "argon2id", "100000"]),
        ),
        (
            "99,999 iterations",
            start([pw, code, h, h, h], ["5000", "0", "pbkdf2-sha256", "99999"]),
        ),
        (
            "1 iteration",
            start([pw, code, h, h, h], ["5000", "0", "pbkdf2-sha256", "1"]),
        ),
        (
            "10,000,001 iterations",
            start(
                [pw, code, h, h, h],
                ["5000", "0", "pbkdf2-sha256", "10000001"],
            ),
        ),
        (
            "iterations not a number",
            start([pw, code, h, h, h], ["5000", "0", "pbkdf2-sha256", "6e5"]),
        ),
        (
            "heartbeat 10 ms",
            start([pw, code, h, h, h], ["10", "0", "pbkdf2-sha256", "100000"]),
        ),
        (
            "heartbeat not a number",
            start([pw, code, h, h, h], ["5e3", "0", "pbkdf2-sha256", "100000"]),
        ),
        (
            "TTL shorter than 2 heartbeats",
            start(
                [pw, code, h, h, h],
                ["5000", "9", "pbkdf2-sha256", "100000"],
            ),
        ),
        (
            "TTL negative",
            start(
                [pw, code, h, h, h],
                ["5000", "-1", "pbkdf2-sha256", "100000"],
            ),
        ),
        (
            "reconnect with an empty code key",
            direct(
                &s,
                "ms_reconnect",
                &[key, b"streams", b"msl:lim"],
                &["5000", "0"],
                &frame_bytes(&[pw, b"", h]),
            ),
        ),
        (
            "reconnect with a malformed lead token",
            direct(
                &s,
                "ms_reconnect",
                &[key, b"streams", b"msl:lim"],
                &["5000", "0"],
                &frame_bytes(&[pw, code, b"not-a-token"]),
            ),
        ),
        (
            "reconnect with heartbeat 0",
            direct(
                &s,
                "ms_reconnect",
                &[key, b"streams", b"msl:lim"],
                &["0", "0"],
                &frame_bytes(&[pw, code, h]),
            ),
        ),
        (
            "heartbeat of 4000000 ms",
            direct(
                &s,
                "ms_heartbeat",
                &[key, b"msl:lim"],
                &["4000000"],
                &frame_bytes(&[token.as_bytes(), channel.as_bytes()]),
            ),
        ),
        (
            "probe token with a space",
            direct(
                &s,
                "ms_probe",
                &[key],
                &["a b"],
                &frame_bytes(&[channel.as_bytes()]),
            ),
        ),
        (
            "probe token of 65 characters",
            direct(
                &s,
                "ms_probe",
                &[key],
                &[&"a".repeat(65)],
                &frame_bytes(&[channel.as_bytes()]),
            ),
        ),
        (
            "connect with a plaintext password",
            direct(
                &s,
                "ms_connect",
                &[key],
                &[],
                &frame_bytes(&[PW.as_bytes()]),
            ),
        ),
        (
            "connect with 1025 bytes",
            direct(&s, "ms_connect", &[key], &[], &frame_bytes(&[&long])),
        ),
        (
            "params with a body",
            direct(&s, "ms_params", &[key], &[], &frame_bytes(&[pw])),
        ),
    ];
    let lead = common::record::lead_hash(&token);
    let tag = common::record::channel_tag(&channel);
    let publish = |state: &[u8]| {
        let id = "aaaaaaaaaaaaaaaa0000000000000001";
        let mut body = format!("r {id}\n").into_bytes();
        body.extend_from_slice(state);
        let sealed =
            common::record::seal_lead(&token, &lead, id, "full", "-", "-", "0", body.len());
        direct(
            &s,
            "ms_publish",
            &[key, b"streams", b"msl:lim"],
            &[id, "0", "full", "-", "-", &tag, &sealed],
            &body,
        )
    };
    // (The UTF-8 validity of a state is the client's to check: scanning 8
    // MiB in Redis' Lua would keep Redis busy for 0.1 s or more. See
    // availability::a_state_that_is_not_utf8_is_never_delivered.)
    let mut states: Vec<(&str, Vec<u8>)> = vec![("a NUL", b"{\"x\":\"a\0b\"}".to_vec())];
    let mut big = vec![b'x'; 8 * 1024 * 1024 + 1];
    big[0] = b'"';
    states.push(("over 8 MiB", big));
    let mut results = refused;
    for (what, state) in &states {
        results.push((what, publish(state)));
    }
    for (what, (status, reply)) in &results {
        assert_eq!(*status, 200, "{what}: {reply}");
        assert!(reply.contains("MSARG n0nce"), "{what}: {reply}");
    }
    assert_eq!(dump(&s), before, "a refused call changed Redis");
    // Valid multi-byte UTF-8 of every length is stored.
    let fine = "{\"x\":\"é 日本 😀 \u{10FFFF}\"}";
    let (status, reply) = publish(fine.as_bytes());
    assert_eq!(status, 200);
    assert!(
        reply.contains("aaaaaaaaaaaaaaaa0000000000000001"),
        "{reply}"
    );
    assert_state_eq(&s.record_field("lim", "state"), &fine, "");
}

/// A name in the index that the library could not carry (written by hand,
/// not UTF-8) is not listed, and the others still are.
#[test]
fn list_survives_an_index_entry_it_cannot_carry() {
    let s = Servers::start();
    let c = s.client();
    c.start("listed", PW, CODE).unwrap();
    // A record list would carry but for its name (one of protocol 8, with
    // a channel of 40 hex digits): only the name keeps it out.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "printf 'HSET streams \"\\\\xff\\\\xfe\" 1\\nHSET \"stream:\\\\xff\\\\xfe\" seq 1 updated_ms 1 channel 0123456789abcdef0123456789abcdef01234567\\n' | redis-cli -p {}",
            s.redis_port
        ))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        s.redis_cli(&["HLEN", "streams"]).trim(),
        "3",
        "2 names and the total"
    );
    let listed = c.list().unwrap();
    assert_eq!(
        listed.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
        ["listed"]
    );
    // Left alone: not this library's to remove.
    assert_eq!(
        s.redis_cli(&["HLEN", "streams"]).trim(),
        "3",
        "2 names and the total"
    );
}

/// A wrong secret for stream `name`, as anyone with a raw HTTP client can
/// send it: a wrong password (`ms_connect`), or the right password with a
/// wrong leader code (`ms_reconnect`).
#[derive(Clone, Copy)]
enum Guess {
    Password,
    LeaderCode,
}

/// `n` wrong secrets for `name` sent at once, each on its own connection
/// and all written before any reply is read, so that they reach Redis
/// within milliseconds of each other however busy the machine is (five
/// within a second lock the stream's checks). Returns each reply's error
/// code (`MSBADPASSWORD`, `MSBADCODE`, `MSTHROTTLED`), sorted (Webdis
/// may pass requests of different connections on in any order).
fn burst(s: &Servers, name: &str, guess: Guess, n: usize) -> Vec<String> {
    let key = format!("stream:{name}");
    let pw_key = match guess {
        Guess::Password => String::new(),
        Guess::LeaderCode => s.derived(name, Secret::Password, PW),
    };
    let mut conns: Vec<raw::Raw> = (0..n)
        .map(|i| {
            let mut c = raw::Raw::connect(s.webdis_port);
            let (function, args, body) = match guess {
                Guess::Password => (
                    "ms_connect",
                    vec![],
                    frame_bytes(&[raw::random_hex(64).as_bytes()]),
                ),
                Guess::LeaderCode => (
                    "ms_reconnect",
                    vec!["1000", "0"],
                    frame_bytes(&[
                        pw_key.as_bytes(),
                        raw::random_hex(64).as_bytes(),
                        raw::random_hex(32).as_bytes(),
                    ]),
                ),
            };
            let log = format!("msl:{name}");
            let keys: [&[u8]; 3] = [key.as_bytes(), b"streams", log.as_bytes()];
            let path = raw::fcall_path(
                function,
                &keys[..keys_of(function)],
                &format!("g{i}"),
                &args,
            );
            c.put(&path, &body);
            c
        })
        .collect();
    let mut codes = conns
        .iter_mut()
        .map(|c| {
            let (status, text) = c.reply(Duration::from_secs(30)).expect("a reply");
            assert_eq!(status, 200, "{text}");
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            let v = v.as_object().unwrap().values().next().unwrap().clone();
            let e = raw::error_of(&v).unwrap_or_else(|| panic!("a wrong secret accepted: {v}"));
            e.split(' ').next().unwrap().to_string()
        })
        .collect::<Vec<_>>();
    codes.sort();
    codes
}

/// How many keys `function` takes (the record, and the index and the log
/// for a reconnect).
fn keys_of(function: &str) -> usize {
    if function == "ms_reconnect" {
        3
    } else {
        1
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The error of `call`, a check made while stream `name`'s secret checks
/// are locked: a burst locks them, then `call` runs. The first locks last
/// 250 ms, then 500 ms, ...: when `call` is answered after the lock
/// lifted (a busy machine), it must have been answered after
/// `locked_until`, and it is tried again behind a new, longer lock.
fn refused_while_locked(
    s: &Servers,
    name: &str,
    call: impl Fn() -> Result<(), missionstream::Error>,
    undo: impl Fn(),
) -> missionstream::Error {
    for _ in 0..6 {
        let codes = burst(s, name, Guess::Password, 6);
        assert_eq!(
            codes[5], "MSTHROTTLED",
            "the 6th of 6 wrong secrets at once: {codes:?}"
        );
        let locked_until: u64 = s.record_field(name, "locked_until").parse().unwrap();
        match call() {
            Err(e) if e.status == Status::MS_ERR_THROTTLED => return e,
            other => {
                let answered = now_ms();
                assert!(
                    answered >= locked_until,
                    "{other:?} while the stream was locked (until {locked_until}, answered at {answered})"
                );
                if other.is_ok() {
                    undo();
                }
            }
        }
    }
    panic!("six locks in a row lifted before the next check reached Redis");
}

/// Guessing is throttled per stream: the 5th wrong password within a
/// second locks the stream's secret checks (THROTTLED, saying when to
/// retry), the right password included, for a short time that grows with
/// each lock and never exceeds 4 s; then the right password works again.
/// Other streams are not affected, and states keep flowing to followers.
/// The guesses that must fall within a second are sent at once (a burst),
/// so the test holds on a busy machine too.
#[test]
fn wrong_secrets_are_throttled_per_stream() {
    let s = Servers::start();
    let leader = s.client();
    leader.start("guarded", PW, CODE).unwrap();
    leader.start("other", PW, CODE).unwrap();
    let follower = s.client();
    let rec = Recorder::attach(&follower);
    follower.connect("guarded", PW).unwrap();
    let guesser = s.client();
    // Five wrong passwords are evaluated, the sixth is not.
    let codes = burst(&s, "guarded", Guess::Password, 6);
    assert_eq!(
        codes,
        [vec!["MSBADPASSWORD"; 5], vec!["MSTHROTTLED"]].concat(),
        "6 wrong passwords at once"
    );
    // Locked: even the right password is refused, with a time to retry.
    let e = refused_while_locked(
        &s,
        "guarded",
        || guesser.connect("guarded", PW),
        || guesser.disconnect("guarded").unwrap(),
    );
    assert!(e.message.contains("retry in"), "{}", e.message);
    // Only this stream; and a leader's code is checked by the same lock
    // (refused unevaluated, not "wrong leader code").
    guesser.connect("other", PW).unwrap();
    guesser.disconnect("other").unwrap();
    refused_while_locked(
        &s,
        "guarded",
        || guesser.reconnect("guarded", PW, "wrong-code"),
        || unreachable!(),
    );
    // The follower already connected is not disturbed.
    leader.publish("guarded", b"{\"during\":1}").unwrap();
    rec.wait_state("guarded", "{\"during\":1}", Duration::from_secs(10));
    // The lock lifts (within 4 s, the longest).
    wait_until(Duration::from_secs(10), || {
        guesser.connect("guarded", PW).is_ok()
    });
    guesser.disconnect("guarded").unwrap();
    // Locks grow while guessing goes on, and stay within 4 s: count the
    // wrong guesses evaluated (not MSTHROTTLED) in 3 s of bursts of six.
    let t0 = std::time::Instant::now();
    let (mut evaluated, mut refused) = (0u32, 0u32);
    while t0.elapsed() < Duration::from_secs(3) {
        for code in burst(&s, "guarded", Guess::Password, 6) {
            match code.as_str() {
                "MSBADPASSWORD" => evaluated += 1,
                "MSTHROTTLED" => refused += 1,
                other => panic!("{other}"),
            }
        }
    }
    eprintln!("3 s of guessing: {evaluated} guesses evaluated, {refused} refused");
    assert!(evaluated <= 20, "{evaluated} guesses evaluated in 3 s");
    assert!(refused > 0);
    let locked_until: u64 = s.record_field("guarded", "locked_until").parse().unwrap();
    assert!(locked_until <= now_ms() + 4_100, "locked for more than 4 s");
    // After the lock, the right password works again.
    wait_until(Duration::from_secs(10), || {
        guesser.connect("guarded", PW).is_ok()
    });
}

/// A follower who guesses leader codes (ms_reconnect with wrong codes, in
/// bursts) trips the stream's throttle, yet the rightful
/// leader keeps publishing and its heartbeats keep it online: publish,
/// heartbeat and stop carry the lead token, which no lock applies to.
/// (When publishes carried the leader code, this guessing locked the
/// leader out of its own stream.)
#[test]
fn guessing_leader_codes_does_not_lock_out_the_leader() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let s = Servers::start();
    let leader = s.client();
    leader.set_heartbeat(400).unwrap();
    let lead_events = Recorder::attach(&leader);
    leader.start("led", PW, CODE).unwrap();
    let follower = s.client();
    let rec = Recorder::attach(&follower);
    follower.connect("led", PW).unwrap();
    let done = AtomicBool::new(false);
    let (refused, stored_while_locked, published) = std::thread::scope(|scope| {
        let guessing = scope.spawn(|| {
            // Another follower of the stream (it knows the password)
            // guessing the leader code, in bursts of six at once (five
            // within a second lock the stream, on a busy machine too).
            let (mut wrong, mut throttled) = (0u32, 0u32);
            // Bounded too: a panicking publisher never sets `done`, and the
            // scope would wait for this thread forever.
            let started = Instant::now();
            while !done.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(20) {
                for code in burst(&s, "led", Guess::LeaderCode, 6) {
                    match code.as_str() {
                        "MSBADCODE" => wrong += 1,
                        "MSTHROTTLED" => throttled += 1,
                        other => panic!("{other}"),
                    }
                }
            }
            (wrong, throttled)
        });
        // Publishing, each state acknowledged, while the guessing goes on.
        let t0 = Instant::now();
        let (mut n, mut while_locked) = (0u32, 0u32);
        while t0.elapsed() < Duration::from_secs(3) {
            n += 1;
            let state = format!("{{\"n\":{n}}}");
            leader.publish("led", state.as_bytes()).unwrap();
            leader
                .flush("led", 5_000)
                .unwrap_or_else(|e| panic!("publish {n} during guessing: {e:?}"));
            let locked_until: u64 = s.record_field("led", "locked_until").parse().unwrap_or(0);
            if locked_until > now_ms() {
                while_locked += 1;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        rec.wait_state("led", &format!("{{\"n\":{n}}}"), Duration::from_secs(10));
        // Idle: heartbeats alone (every 400 ms) keep the leader online for
        // its followers (offline after 1.2 s without one; 400 ms, not
        // less: on a busy machine a heartbeat may come late).
        std::thread::sleep(Duration::from_millis(2_500));
        done.store(true, Ordering::Relaxed);
        let (wrong, throttled) = guessing.join().unwrap();
        eprintln!("guesses: {wrong} evaluated, {throttled} throttled; {n} publishes, {while_locked} stored while the stream was locked");
        (throttled, while_locked, n)
    });
    assert!(refused > 0, "the guessing tripped the throttle");
    assert!(
        stored_while_locked > 0,
        "publishes were stored while the stream's secret checks were locked"
    );
    assert!(published > 10);
    let kinds: Vec<_> = rec
        .snapshot()
        .into_iter()
        .filter(|e| e.stream == "led")
        .map(|e| e.kind)
        .collect();
    assert!(
        !kinds.contains(&EventKind::MS_EVENT_LEADER_OFFLINE),
        "the leader went offline for its followers: {kinds:?}"
    );
    assert!(
        lead_events.snapshot().is_empty(),
        "the leader reported failures: {:?}",
        lead_events.snapshot()
    );
    // And the leader still stops its stream.
    leader.stop("led").unwrap();
    rec.wait_kind("led", EventKind::MS_EVENT_ENDED, Duration::from_secs(10));
}

/// A second `ms_start` of a taken name, even with the right secrets, is
/// MS_ERR_EXISTS and takes nothing over: the stream keeps its lead token
/// and its leader keeps publishing (the library checks whether its own
/// lost first try created the stream by the salt, not with a reconnect).
#[test]
fn starting_a_taken_name_with_the_right_secrets_takes_nothing_over() {
    let s = Servers::start();
    let leader = s.client();
    let lead_events = Recorder::attach(&leader);
    leader.start("taken", PW, CODE).unwrap();
    let lead = s.record_field("taken", "lead");
    let (fails, salt) = (
        s.record_field("taken", "fails"),
        s.record_field("taken", "salt"),
    );
    let other = s.client();
    assert_eq!(
        other.start("taken", PW, CODE).unwrap_err().status,
        Status::MS_ERR_EXISTS
    );
    assert_eq!(s.record_field("taken", "lead"), lead);
    assert_eq!(s.record_field("taken", "salt"), salt);
    assert_eq!(
        s.record_field("taken", "fails"),
        fails,
        "no secret was checked"
    );
    leader.publish("taken", b"{\"still\":1}").unwrap();
    leader.flush("taken", 10_000).unwrap();
    assert_state_eq(&s.record_field("taken", "state"), "{\"still\":1}", "");
    assert!(
        lead_events.snapshot().is_empty(),
        "{:?}",
        lead_events.snapshot()
    );
    // Taking over is ms_reconnect's, on purpose: the previous lead is
    // then refused (MS_ERR_NOT_LEADING) and ends.
    other.reconnect("taken", PW, CODE).unwrap();
    assert_ne!(s.record_field("taken", "lead"), lead);
    leader.publish("taken", b"{\"late\":1}").unwrap();
    let e = leader.flush("taken", 10_000).unwrap_err();
    assert_eq!(e.status, Status::MS_ERR_NOT_LEADING, "{e:?}");
    lead_events.wait_kind(
        "taken",
        EventKind::MS_EVENT_PUBLISH_FAILED,
        Duration::from_secs(10),
    );
    assert_eq!(
        leader.publish("taken", b"{}").unwrap_err().status,
        Status::MS_ERR_NOT_LEADING
    );
    other.publish("taken", b"{\"new\":1}").unwrap();
    other.flush("taken", 10_000).unwrap();
    assert_state_eq(&s.record_field("taken", "state"), "{\"new\":1}", "");
}

#[test]
fn raw_publishes_with_a_wrong_seal_tag_body_length_prefix_or_a_nul_are_refused() {
    use common::record::{self, RawLeader, Value};
    let s = Servers::start();
    let name = unique("sec-seal");
    let mut l = RawLeader::start(s.redis_port, &name, 0);
    assert!(matches!(l.full("{\"v\":1}"), Value::Array(_)));
    let (token, lead) = (l.token.clone(), record::lead_hash(&l.token));
    let tag = record::channel_tag(&l.channel);
    let floor = l.seq.to_string();
    let id = l.next_id();
    let body = format!("r {id}\n{{\"v\":2}}");
    // The seal of a full publish of publish id `id` at `floor` with a body
    // of `len` bytes, by the lead token `token`.
    let seal = |token: &str, floor: &str, len: usize| {
        record::seal_lead(token, &lead, &id, "full", "-", "-", floor, len)
    };
    let full = |l: &mut RawLeader, floor: &str, tag: &str, sealed: &str, body: &[u8]| {
        l.publish_raw(&id, floor, "full", "-", "-", tag, sealed, body)
    };
    let good = seal(&token, &floor, body.len());
    let refused = |r: Value, code: &str, what: &str| {
        let e = r.err().to_string();
        assert!(e.starts_with(&format!("{code} pub1 ")), "{what}: {e}");
    };
    // A seal with one digit changed: not the lead token.
    let mut bad: Vec<char> = good.chars().collect();
    bad[0] = if bad[0] == '0' { '1' } else { '0' };
    let bad: String = bad.into_iter().collect();
    let r = full(&mut l, &floor, &tag, &bad, body.as_bytes());
    refused(r, "MSNOTLEADER", "a wrong seal");
    // The seal of an earlier lead of the stream (a token it no longer has).
    let other = seal(&"ab".repeat(16), &floor, body.len());
    let r = full(&mut l, &floor, &tag, &other, body.as_bytes());
    refused(r, "MSNOTLEADER", "another token's seal");
    // The tag of another channel (a leader of an earlier stream of the name).
    let wrong_tag = record::channel_tag(&"0f".repeat(20));
    let r = full(&mut l, &floor, &wrong_tag, &good, body.as_bytes());
    refused(r, "MSNOTFOUND", "a wrong tag");
    // The seal replayed with a body of another length, or for another
    // floor or kind: it opens to no lead token.
    let longer = format!("r {id}\n{{\"v\":22}}");
    let r = full(&mut l, &floor, &tag, &good, longer.as_bytes());
    refused(
        r,
        "MSNOTLEADER",
        "the seal replayed with another body length",
    );
    let r = full(&mut l, "7", &tag, &good, body.as_bytes());
    refused(r, "MSNOTLEADER", "the seal replayed with another floor");
    let base_id = l.id.clone();
    let r = l.publish_raw(
        &id,
        &floor,
        "delta",
        &floor,
        &base_id,
        &tag,
        &good,
        body.as_bytes(),
    );
    refused(r, "MSNOTLEADER", "the seal replayed for another kind");
    // Full bodies sealed right but not well-formed: a prefix naming
    // another publish id, no prefix at all, a NUL in the state.
    let next = format!("{}{:016x}", l.lead, l.counter + 5);
    for (what, bad_body) in [
        (
            "a prefix naming another id",
            format!("r {next}\n{{\"v\":3}}"),
        ),
        (
            "a full body without its prefix",
            "{\"v\":4}".to_string() + &" ".repeat(40),
        ),
        ("a state with NUL", format!("r {id}\n{{\"v\":\"\0\"}}")),
    ] {
        let sealed = seal(&token, &floor, bad_body.len());
        let r = full(&mut l, &floor, &tag, &sealed, bad_body.as_bytes());
        refused(r, "MSARG", what);
    }
    // A NUL in a delta.
    let mut d = missionstream::delta::create(&l.state, "{\"v\":5}").into_bytes();
    d.insert(3, 0);
    let (bs, bi) = (l.seq.to_string(), l.id.clone());
    let sealed = record::seal_lead(&token, &lead, &id, "delta", &bs, &bi, &floor, d.len());
    let r = l.publish_raw(&id, &floor, "delta", &bs, &bi, &tag, &sealed, &d);
    refused(r, "MSARG", "a delta with NUL");
    // Nothing of it was stored or broadcast as a new state.
    let n = record::newest(s.redis_port, &name).unwrap();
    assert_eq!((n.seq, n.state.as_str()), (1, "{\"v\":1}"));
    // The well-formed request is stored; the same request again (a logged
    // URL replayed with its body) is answered as a repeat, storing nothing.
    let r = full(&mut l, &floor, &tag, &good, body.as_bytes());
    assert_eq!(r.items()[1].int(), 2, "{r:?}");
    let again = full(&mut l, &floor, &tag, &good, body.as_bytes());
    assert_eq!(again, r, "a repeat");
    let n = record::newest(s.redis_port, &name).unwrap();
    assert_eq!(
        (n.seq, n.state.as_str(), n.id.as_str()),
        (2, "{\"v\":2}", id.as_str())
    );
}
