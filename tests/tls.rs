//! TLS with a private certificate authority, through a real TLS front
//! (nginx with deploy/nginx-webdis.conf) in front of Webdis: the
//! certificates come from the tests' own CA.

mod common;

use common::tls::{TlsFront, ALLOWED_ORIGIN};
use common::*;
use missionstream::{Client, EventKind, Status};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(20);
/// "At once": well under the request timeout of 10 s.
const AT_ONCE: Duration = Duration::from_secs(2);

fn tls_client(front: &TlsFront) -> Client {
    let c = Client::new(&front.url).unwrap();
    c.set_tls_ca_file(&front.ca_file).unwrap();
    c
}

/// Runs `f`, which must fail within `AT_ONCE` with `status` and a message
/// containing `cause`.
fn fails_at_once<T: std::fmt::Debug>(
    what: &str,
    status: Status,
    cause: &str,
    f: impl FnOnce() -> missionstream::Result<T>,
) {
    let started = Instant::now();
    let result = f();
    let took = started.elapsed();
    let e = result.expect_err(what);
    assert_eq!(e.status, status, "{what}: {e}");
    assert!(e.message.contains(cause), "{what}: \"{cause}\" not in: {e}");
    assert!(took < AT_ONCE, "{what} took {took:?}: {e}");
    eprintln!("{what}: {took:?}: {e}");
}

#[test]
fn publish_follow_list_and_recover_through_a_tls_front() {
    let s = Servers::start();
    let mut front = TlsFront::start(&s);
    let leader = tls_client(&front);
    let follower = tls_client(&front);
    leader.set_timeout(2000).unwrap();
    follower.set_timeout(2000).unwrap();
    let rec = Recorder::attach(&follower);
    let name = unique("tls");
    leader.start(&name, "pw", "code").unwrap();
    follower.connect(&name, "pw").unwrap();
    rec.wait_state(&name, "{}", T);
    leader.publish(&name, b"{\"v\":1}").unwrap();
    rec.wait_state(&name, "{\"v\":1}", T);
    leader.flush(&name, 10_000).unwrap();
    let listed = follower.list().unwrap();
    let me = listed.iter().find(|i| i.name == name).expect("listed");
    assert_eq!((me.seq, me.followers), (1, 1), "{listed:?}");

    // The front restarts: every TLS connection breaks.
    front.stop_nginx();
    rec.wait_kind(&name, EventKind::MS_EVENT_CONNECTION_LOST, T);
    leader.publish(&name, b"{\"v\":2}").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    front.start_nginx();
    rec.wait_kind(&name, EventKind::MS_EVENT_RECONNECTED, T);
    rec.wait_state(&name, "{\"v\":2}", T);
    leader.flush(&name, 10_000).unwrap();
    leader.publish(&name, b"{\"v\":3}").unwrap();
    rec.wait_state(&name, "{\"v\":3}", T);
    assert_increasing(&rec.states(&name));
    let me = leader.list().unwrap().into_iter().find(|i| i.name == name);
    assert_eq!(me.map(|i| i.seq), Some(3));
    leader.stop(&name).unwrap();
    rec.wait_kind(&name, EventKind::MS_EVENT_ENDED, T);
    drop(follower);
    // Through the front (nginx logs a request when it ends; the log names
    // the call, never the URL).
    wait_until(T, || {
        let log = std::fs::read_to_string(front.dir.join("access.log")).unwrap();
        log.contains("GET SUBSCRIBE 200") && log.contains("PUT FCALL/ms_publish 200")
    });
}

/// The CA file applies to every endpoint of a URL list: a follower of a
/// two-endpoint list subscribes on the second (the first took the writes,
/// and the library is loaded with `CHANNEL_ON_REPLICAS` set, so followers
/// go to the other nodes first; both ports front the same Redis) and
/// reads its snapshot there, over TLS checked against the tests' CA. Were
/// the CA applied to the first endpoint only, the second would not be
/// trusted (the follower would fall back to the first: nothing would
/// reach the second port).
#[test]
fn a_ca_file_applies_to_every_endpoint_of_a_url_list() {
    let s = Servers::start();
    s.load_functions(&common::library_with_channel_on_replicas(true));
    let front = TlsFront::start(&s);
    let urls = format!("{},{}", front.url, front.second_url);
    let client = || {
        let c = Client::new(&urls).unwrap();
        c.set_kdf_iterations(missionstream::kdf::MIN_ITERATIONS)
            .unwrap();
        c.set_tls_ca_file(&front.ca_file).unwrap();
        c
    };
    let leader = client();
    let follower = client();
    let rec = Recorder::attach(&follower);
    let name = unique("tls-list");
    leader.start(&name, "pw", "code").unwrap();
    leader.publish(&name, b"{\"v\":1}").unwrap();
    leader.flush(&name, 10_000).unwrap();
    follower.connect(&name, "pw").unwrap();
    rec.wait_state(&name, "{\"v\":1}", T);
    leader.publish(&name, b"{\"v\":2}").unwrap();
    rec.wait_state(&name, "{\"v\":2}", T);
    // The snapshot request ended through the second port (nginx logs a
    // request when it ends; the subscription once the follower is gone).
    let second = format!("{} ", front.second_port);
    let through_second = |what: &str| {
        std::fs::read_to_string(front.dir.join("ports.log"))
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with(&second) && l.contains(what) && l.ends_with(" 200"))
    };
    wait_until(T, || through_second("/ms_snapshot/"));
    drop(follower);
    wait_until(T, || through_second("GET /SUBSCRIBE/"));
    assert_increasing(&rec.states(&name));
}

#[test]
fn large_states_through_the_tls_front() {
    let s = Servers::start();
    let front = TlsFront::start(&s);
    let leader = tls_client(&front);
    let follower = tls_client(&front);
    let rec = Recorder::attach(&follower);
    let name = unique("tls-big");
    leader.start(&name, "pw", "code").unwrap();
    follower.connect(&name, "pw").unwrap();
    // 4 MiB that Webdis escapes (larger on the wire), then the 8 MiB limit:
    // within the front's body limit, streamed both ways.
    let unit = "{\"k\":\"\\\"q\\\"\n\t\u{1}é✈\"}";
    let mut big = String::new();
    while big.len() + unit.len() <= 4 * 1024 * 1024 {
        big.push_str(unit);
    }
    leader.publish(&name, big.as_bytes()).unwrap();
    leader.flush(&name, 30_000).unwrap();
    rec.wait(Duration::from_secs(30), |ev| ev.iter().any(|e| e.seq == 1));
    assert_state_eq(&rec.states(&name).last().unwrap().1, &big, "");
    // The limit in a character Webdis escapes: 16 MiB on the wire.
    let max = "\n".repeat(8 * 1024 * 1024);
    leader.publish(&name, max.as_bytes()).unwrap();
    leader.flush(&name, 30_000).unwrap();
    rec.wait(Duration::from_secs(30), |ev| ev.iter().any(|e| e.seq == 2));
    assert_state_eq(&rec.states(&name).last().unwrap().1, &max, "");
    // A late joiner gets it through the snapshot.
    let late = tls_client(&front);
    let r2 = Recorder::attach(&late);
    late.connect(&name, "pw").unwrap();
    r2.wait(Duration::from_secs(30), |ev| !ev.is_empty());
    assert_state_eq(&r2.states(&name)[0].1, &max, "");
}

#[test]
fn an_untrusted_certificate_fails_at_once() {
    let s = Servers::start();
    let front = TlsFront::start(&s);
    let name = unique("untrusted");
    // The default trust anchors: the bundled web roots.
    let web_roots = Client::new(&front.url).unwrap();
    fails_at_once(
        "list",
        Status::MS_ERR_UNAVAILABLE,
        "certificate not trusted",
        || web_roots.list(),
    );
    fails_at_once(
        "start",
        Status::MS_ERR_UNAVAILABLE,
        "certificate not trusted",
        || web_roots.start(&name, "pw", "code"),
    );
    // Another authority's certificate.
    let other = Client::new(&front.url).unwrap();
    other.set_tls_ca_file(&front.other_ca_file).unwrap();
    fails_at_once(
        "connect",
        Status::MS_ERR_UNAVAILABLE,
        "certificate not trusted",
        || other.connect(&name, "pw"),
    );
    // Each names what it trusts.
    let e = web_roots.list().unwrap_err();
    assert!(e.message.contains("bundled web roots"), "{e}");
    let e = other.list().unwrap_err();
    let file = front.other_ca_file.display().to_string();
    assert!(e.message.contains(&file), "{e}");
    // The right one, set on the same client: its next connections pass.
    other.set_tls_ca_file(&front.ca_file).unwrap();
    other.list().unwrap();
}

/// A CA set on a client that already talks to the front applies to its
/// next request: the client does not go on with the connections it opened
/// under the trust it had (here another authority, so the next call fails
/// at once), and the right CA set again works again.
#[test]
fn a_ca_set_later_applies_to_the_next_request() {
    let s = Servers::start();
    let front = TlsFront::start(&s);
    let c = tls_client(&front);
    c.list().unwrap();
    c.list().unwrap();
    c.set_tls_ca_file(&front.other_ca_file).unwrap();
    fails_at_once(
        "list under another authority",
        Status::MS_ERR_UNAVAILABLE,
        "certificate not trusted",
        || c.list(),
    );
    c.set_tls_ca_file(&front.ca_file).unwrap();
    c.list().unwrap();
}

#[test]
fn a_wrong_host_name_fails_at_once() {
    let s = Servers::start();
    let front = TlsFront::start(&s);
    let c = Client::new(&format!("https://127.0.0.1:{}", front.wrong_host_port)).unwrap();
    c.set_tls_ca_file(&front.ca_file).unwrap();
    fails_at_once(
        "list",
        Status::MS_ERR_UNAVAILABLE,
        "host name mismatch",
        || c.list(),
    );
    let e = c.list().unwrap_err();
    assert!(e.message.contains("127.0.0.1"), "names the host: {e}");
    // Following meets the same check.
    let name = unique("wrong-host");
    let leader = tls_client(&front);
    leader.start(&name, "pw", "code").unwrap();
    fails_at_once(
        "connect",
        Status::MS_ERR_UNAVAILABLE,
        "host name mismatch",
        || c.connect(&name, "pw"),
    );
}

#[test]
fn plain_http_to_the_tls_port_and_https_to_the_plain_port_fail_at_once() {
    let s = Servers::start();
    let front = TlsFront::start(&s);
    let plain = Client::new(&format!("http://127.0.0.1:{}", front.port)).unwrap();
    fails_at_once("list", Status::MS_ERR_PROTOCOL, "speaks TLS", || {
        plain.list()
    });
    fails_at_once("connect", Status::MS_ERR_PROTOCOL, "speaks TLS", || {
        plain.connect("x", "pw")
    });
    let e = plain.list().unwrap_err();
    assert!(e.message.contains("https://"), "says what to use: {e}");

    let tls_to_plain = Client::new(&format!("https://127.0.0.1:{}", s.webdis_port)).unwrap();
    tls_to_plain.set_tls_ca_file(&front.ca_file).unwrap();
    fails_at_once(
        "list",
        Status::MS_ERR_PROTOCOL,
        "does not speak TLS",
        || tls_to_plain.list(),
    );
    fails_at_once(
        "start",
        Status::MS_ERR_PROTOCOL,
        "does not speak TLS",
        || tls_to_plain.start("x", "pw", "code"),
    );

    // A port that hangs up on the TLS handshake (reads the client's hello,
    // then closes).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = std::io::Read::read(&mut conn, &mut [0u8; 4096]);
        }
    });
    let hangs_up = Client::new(&format!("https://127.0.0.1:{port}")).unwrap();
    fails_at_once(
        "list",
        Status::MS_ERR_UNAVAILABLE,
        "closed the connection during the TLS handshake",
        || hangs_up.list(),
    );
}

#[test]
fn webdis_down_behind_the_front_is_reported_as_such() {
    let mut s = Servers::start();
    let front = TlsFront::start(&s);
    let c = tls_client(&front);
    c.list().unwrap();
    s.stop_webdis();
    // The front answers 502 Bad Gateway: tried again (a proxy answers 502
    // for a garbled response too), then reported. The front's access log
    // shows the tries: more than one, at most three.
    let lists = || {
        std::fs::read_to_string(front.dir.join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("ms_list"))
            .count()
    };
    // nginx logs a request after it sent the response: the line of a
    // request the client has its answer to may come a moment later (on a
    // loaded machine, after the test read the log). So the log is read
    // once it holds the lines the answers imply, and has settled.
    let settled = |at_least: usize| {
        wait_until(T, || lists() >= at_least);
        let mut n = lists();
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let now = lists();
            if now == n {
                return n;
            }
            n = now;
        }
    };
    let before = settled(1); // the list above
    fails_at_once("list", Status::MS_ERR_UNAVAILABLE, "502", || c.list());
    let tries = settled(before + 1) - before;
    assert!(
        (2..=3).contains(&tries),
        "{tries} requests of the failed list reached the front: a 502 is tried again, at most three times"
    );
    s.start_webdis();
    c.list().unwrap();
}

#[test]
fn the_ca_file_is_checked_when_set() {
    let s = Servers::start();
    let front = TlsFront::start(&s);
    let c = tls_client(&front);
    let check = |path: &std::path::Path, cause: &str| {
        let e = c.set_tls_ca_file(path).unwrap_err();
        assert_eq!(e.status, Status::MS_ERR_INVALID_ARGUMENT, "{e}");
        assert!(
            e.message.contains(&path.display().to_string()),
            "names the path: {e}"
        );
        assert!(e.message.contains(cause), "\"{cause}\" not in: {e}");
    };
    check(&front.dir.join("missing.pem"), "cannot read");
    check(&front.dir, "cannot read");
    check(&front.key_file, "holds no certificate");
    let empty = front.dir.join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    check(&empty, "holds no certificate");
    let garbage = front.dir.join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    check(&garbage, "cannot be a trust anchor");
    // A refused file changes nothing: the CA set before still applies.
    c.list().unwrap();
    // A bundle: other certificates (here another CA) beside the right one.
    let bundle = front.dir.join("bundle.pem");
    let mut pem = std::fs::read(&front.other_ca_file).unwrap();
    pem.extend(std::fs::read(&front.ca_file).unwrap());
    std::fs::write(&bundle, pem).unwrap();
    let b = Client::new(&front.url).unwrap();
    b.set_tls_ca_file(&bundle).unwrap();
    b.list().unwrap();
}

#[test]
fn the_deploy_front_serves_allowed_origins_only() {
    let s = Servers::start();
    let front = TlsFront::start(&s);
    let cors = |h: &[(String, String)]| {
        h.iter()
            .filter(|(k, _)| k.starts_with("access-control-"))
            .cloned()
            .collect::<Vec<_>>()
    };
    let get =
        |k: &str, h: &[(String, String)]| h.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());

    // No Origin (the library, curl): served, no CORS headers (Webdis' own
    // "Access-Control-Allow-Origin: *" is dropped).
    let (status, h) = front.curl("GET", "/PING", &[]);
    assert_eq!(status, 200, "{h:?}");
    assert_eq!(cors(&h), vec![], "{h:?}");

    // An allowed page: served, and named as the one allowed origin.
    let origin = format!("Origin: {ALLOWED_ORIGIN}");
    let (status, h) = front.curl("GET", "/PING", &[&origin]);
    assert_eq!(status, 200, "{h:?}");
    assert_eq!(
        get("access-control-allow-origin", &h).as_deref(),
        Some(ALLOWED_ORIGIN),
        "{h:?}"
    );
    assert_eq!(cors(&h).len(), 1, "{h:?}");
    // Its preflight, answered by the front, cached by browsers.
    for path in ["/FCALL/ms_list", "/SUBSCRIBE/x"] {
        let (status, h) = front.curl(
            "OPTIONS",
            path,
            &[
                &origin,
                "Access-Control-Request-Method: PUT",
                "Access-Control-Request-Headers: authorization",
            ],
        );
        assert_eq!(status, 204, "{path}: {h:?}");
        assert_eq!(
            get("access-control-allow-origin", &h).as_deref(),
            Some(ALLOWED_ORIGIN)
        );
        assert_eq!(get("access-control-max-age", &h).as_deref(), Some("600"));
        let methods = get("access-control-allow-methods", &h).unwrap_or_default();
        assert!(methods.contains("PUT"), "{h:?}");
        let headers = get("access-control-allow-headers", &h).unwrap_or_default();
        assert!(headers.contains("Authorization"), "{h:?}");
    }

    // A foreign page: refused, with no CORS header, for requests,
    // preflights and subscriptions alike.
    for (method, path) in [
        ("GET", "/PING"),
        ("PUT", "/FCALL/ms_list"),
        ("OPTIONS", "/FCALL/ms_list"),
        ("GET", "/SUBSCRIBE/x"),
    ] {
        for foreign in [
            "https://evil.example",
            "null",
            "https://mission-console.example.org.evil.example",
        ] {
            let (status, h) = front.curl(method, path, &[&format!("Origin: {foreign}")]);
            assert_eq!(status, 403, "{method} {path} from {foreign}: {h:?}");
            assert_eq!(cors(&h), vec![], "{method} {path} from {foreign}: {h:?}");
        }
    }
}
