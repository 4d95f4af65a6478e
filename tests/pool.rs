//! A client's requests share one keep-alive pool per Webdis endpoint, and
//! one Webdis that stops answering cannot hold every request worker:
//! against real Redis and Webdis processes, counted where Webdis sees them
//! (its open descriptors, the requests waiting in its sockets).

mod common;

use common::tls::TlsFront;
use common::{assert_state_eq, newest_state, unique, wait_until, Servers, ROOT};
use missionstream::Client;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Request workers of a client (the keep-alive pool keeps as many idle
/// connections per endpoint).
const W: usize = 4;

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A second Webdis in front of the same Redis, on its own port; killed
/// (thawed first) when dropped.
struct SecondWebdis {
    child: Child,
    port: u16,
}

impl SecondWebdis {
    fn start(s: &Servers) -> SecondWebdis {
        let port = common::free_port();
        let mut c: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(Path::new(ROOT).join("deploy/webdis.json")).unwrap(),
        )
        .unwrap();
        c["redis_port"] = s.redis_port.into();
        c["http_port"] = port.into();
        c["http_host"] = "127.0.0.1".into();
        c["daemonize"] = false.into();
        c["logfile"] = s.dir.join("webdis-2.log").display().to_string().into();
        let path = s.dir.join("webdis-2.json");
        std::fs::write(&path, serde_json::to_string_pretty(&c).unwrap()).unwrap();
        let child = Command::new(common::webdis_binary())
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("webdis is installed (make test installs it), or MS_WEBDIS names it");
        wait_until(Duration::from_secs(10), || {
            common::http(port, "GET", "/PING", b"").0 != 0
        });
        SecondWebdis { child, port }
    }
}

impl Drop for SecondWebdis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Requests sent to the server listening on `port` that it has not read
/// (a frozen Webdis reads none): its established sockets with bytes
/// waiting, from /proc/net/tcp.
fn unread_requests(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let local = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            f.len() > 4
                && f[1] == local
                && f[3] == "01"
                && f[4]
                    .split_once(':')
                    .is_some_and(|(_, rx)| u64::from_str_radix(rx, 16).unwrap_or(0) > 0)
        })
        .count()
}

/// Established connections of this machine to the server on `port`, from
/// the client's side (/proc/net/tcp: remote port `port`).
fn connections_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let remote = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            f.len() > 3 && f[2] == remote && f[3] == "01"
        })
        .count()
}

/// Starts `n` streams led by `client` (four caller threads at a time), each
/// with state `{"lead":i}` flushed.
/// Every lead of `names` publishes once more, all at once, and flushes;
/// every `step`-th newest state is then checked in Redis.
fn publish_again_and_check(s: &Servers, client: &Client, names: &[String], step: usize) {
    for (i, name) in names.iter().enumerate() {
        client
            .publish(name, format!("{{\"lead\":{i},\"again\":true}}").as_bytes())
            .unwrap();
    }
    for name in names {
        client.flush(name, 30_000).unwrap();
    }
    for (i, name) in names.iter().enumerate().step_by(step) {
        assert_state_eq(
            &newest_state(s.redis_port, name),
            &format!("{{\"lead\":{i},\"again\":true}}"),
            name,
        );
    }
}

fn start_leads(client: &Client, prefix: &str, n: usize) -> Vec<String> {
    let names: Vec<String> = (0..n).map(|_| unique(prefix)).collect();
    std::thread::scope(|s| {
        for chunk in names.chunks(n.div_ceil(4)) {
            s.spawn(move || {
                for name in chunk {
                    client.start(name, "pw", "code").unwrap();
                }
            });
        }
    });
    for (i, name) in names.iter().enumerate() {
        client
            .publish(name, format!("{{\"lead\":{i}}}").as_bytes())
            .unwrap();
    }
    for name in &names {
        client.flush(name, 30_000).unwrap();
    }
    names
}

#[test]
fn two_hundred_leads_share_at_most_w_request_connections_to_webdis() {
    let s = Servers::start();
    let pid = s.webdis_pid().unwrap();
    let before = open_fds(pid);
    let client = s.client();
    let names = start_leads(&client, "pool-fds", 200);
    // Every lead publishes once more, all at once, and heartbeats.
    publish_again_and_check(&s, &client, &names, 20);
    // The caller threads' connections beyond the pool's W idle ones were
    // closed after their call: Webdis lets go of them as it reads the end.
    let bound = before + W + 2;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut now = open_fds(pid);
    while now > bound && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        now = open_fds(pid);
    }
    assert!(
        now <= bound,
        "Webdis holds {now} descriptors with 200 leads of one client, {before} before (at most {W} request connections expected)"
    );
    drop(client);
}

#[test]
fn a_frozen_webdis_holds_at_most_w_minus_1_workers_and_leads_go_on_through_the_other() {
    let s = Servers::start();
    let second = SecondWebdis::start(&s);
    let frozen_port = s.webdis_port;
    // Both endpoints front the same Redis: writes go to the first (the
    // write endpoint until another takes a write).
    let client = Client::new(&format!("{},http://127.0.0.1:{}", s.url, second.port)).unwrap();
    client
        .set_kdf_iterations(missionstream::kdf::MIN_ITERATIONS)
        .unwrap();
    // Each endpoint is given a third of the timeout (5 s), each try on it
    // a third of that (a request is sent again after 1.67 s).
    client.set_timeout(15_000).unwrap();
    let names = start_leads(&client, "pool-frozen", 20);
    // (A heartbeat may be on its way in: Webdis reads it at once.)
    wait_until(Duration::from_secs(5), || unread_requests(frozen_port) == 0);

    s.signal_webdis("STOP");
    let published = Instant::now();
    for (i, name) in names.iter().enumerate() {
        client
            .publish(name, format!("{{\"lead\":{i},\"frozen\":true}}").as_bytes())
            .unwrap();
    }
    // While the first requests hang on the frozen Webdis, before any is
    // sent again, at most W-1 of them are out to it (counted before any
    // try is sent again: the socket of a try given up and that of the
    // next may be counted at once).
    let mut most = 0;
    while published.elapsed() < Duration::from_millis(1200) {
        most = most.max(unread_requests(frozen_port));
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        (1..W).contains(&most),
        "{most} requests waited in the frozen Webdis at once (1 to {} expected)",
        W - 1
    );
    // Every lead's state is acknowledged through the other Webdis while
    // the first stays frozen, within a generous bound.
    for name in &names {
        client.flush(name, 30_000).unwrap();
    }
    let took = published.elapsed();
    assert!(
        took < Duration::from_secs(30),
        "acknowledged after {took:?}"
    );
    for (i, name) in names.iter().enumerate() {
        assert_state_eq(
            &newest_state(s.redis_port, name),
            &format!("{{\"lead\":{i},\"frozen\":true}}"),
            name,
        );
    }
    // The next states go straight to the other endpoint, quickly.
    let again = Instant::now();
    for (i, name) in names.iter().enumerate() {
        client
            .publish(name, format!("{{\"lead\":{i},\"after\":true}}").as_bytes())
            .unwrap();
    }
    for name in &names {
        client.flush(name, 30_000).unwrap();
    }
    let took = again.elapsed();
    assert!(
        took < Duration::from_secs_f64(5.0 * common::load_factor()),
        "states after the move took {took:?}"
    );
    drop(client);
    s.signal_webdis("CONT");
}

#[test]
fn leads_over_tls_share_at_most_w_connections_to_the_front() {
    let s = Servers::start();
    let front = TlsFront::start(&s);
    let client = Client::new(&front.url).unwrap();
    client.set_tls_ca_file(&front.ca_file).unwrap();
    client
        .set_kdf_iterations(missionstream::kdf::MIN_ITERATIONS)
        .unwrap();
    let names = start_leads(&client, "pool-tls", 40);
    publish_again_and_check(&s, &client, &names, 8);
    // Connections beyond the W kept idle were closed after their call.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut open = connections_to(front.port);
    while open > W && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        open = connections_to(front.port);
    }
    assert!(
        (1..=W).contains(&open),
        "{open} connections to the TLS front with 40 leads of one client (1 to {W} expected)"
    );
    drop(client);
}

#[test]
fn ending_one_lead_breaks_its_own_calls_only() {
    let s = Servers::start();
    let client = s.client();
    let names = start_leads(&client, "pool-end", 6);
    // Each stop ends its lead (its calls broken, its later ones refused)
    // while the others publish on the same pooled connections.
    for (round, name) in names.iter().enumerate().take(3) {
        for (i, other) in names.iter().enumerate().skip(round + 1) {
            client
                .publish(
                    other,
                    format!("{{\"lead\":{i},\"round\":{round}}}").as_bytes(),
                )
                .unwrap();
        }
        client.stop(name).unwrap();
        for other in names.iter().skip(round + 1) {
            client.flush(other, 10_000).unwrap();
        }
    }
    for (i, name) in names.iter().enumerate().skip(3) {
        assert_state_eq(
            &newest_state(s.redis_port, name),
            &format!("{{\"lead\":{i},\"round\":2}}"),
            name,
        );
    }
    // And the client's own calls go on too.
    let listed = client.list().unwrap();
    for name in &names[3..] {
        assert!(listed.iter().any(|e| &e.name == name), "{name} not listed");
    }
}
