//! The replicated topology of `scripts/cluster.sh` and its test fixture
//! (`tests/common/cluster.rs`), checked with Redis's own tools: what the
//! high-availability tests rely on (replication of functions, keys and
//! pub/sub, promotion on a crash, lost writes when replication is cut,
//! nothing left running) must hold before the library is tested on it.

mod common;

use common::cluster::{alive, Cluster, ClusterOptions, MASTER, NODES};
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn wait_value(c: &Cluster, node: usize, key: &str, want: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let got = c.redis_cli(node, &["GET", key]);
        if got.trim() == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {node}: {key} is {got:?}, not {want:?}, after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn start_gives_a_replicated_group_with_functions_and_the_deploy_acl() {
    let c = Cluster::start();
    assert_eq!(c.primary(), 0, "node 0 is the primary at start");
    let urls: Vec<&str> = c.nodes.iter().map(|n| n.url.as_str()).collect();
    assert_eq!(c.urls, urls.join(","), "MS_URLS: every node, primary first");
    assert_eq!(c.sentinel_ports.len(), 3);
    for n in &c.nodes {
        for port in [n.redis_port, n.webdis_port] {
            assert!(![6379, 7379, 26379].contains(&port));
        }
    }
    assert_eq!(c.role(0), "master");
    for n in 0..NODES {
        if n > 0 {
            assert_eq!(c.role(n), "slave", "node {n}");
        }
        // Functions were loaded on the primary only: they replicated.
        assert!(
            c.redis_cli(n, &["FUNCTION", "LIST", "LIBRARYNAME", "missionstream"])
                .contains("missionstream"),
            "node {n} has the functions library"
        );
        for (key, want) in [
            ("appendonly", "yes"),
            ("replica-read-only", "yes"),
            ("client-output-buffer-limit", "pubsub 67108864 33554432 60"),
            ("min-replicas-to-write", "0"),
        ] {
            let got = c.redis_cli(n, &["CONFIG", "GET", key]);
            assert!(got.contains(want), "node {n}: {key} is {got:?}");
        }
        // Every node's Webdis answers, with the hardened ACL of deploy/.
        let (code, body) = c.webdis(n, "/PING");
        assert_eq!(
            code,
            200,
            "node {n}'s Webdis: {}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(
            c.webdis(n, "/SET/k/v").0,
            403,
            "node {n}'s Webdis refuses SET"
        );
        assert_eq!(c.webdis(n, "/FUNCTION/LIST").0, 403);
    }
    for s in 0..c.sentinel_ports.len() {
        assert!(
            c.sentinel_cli(s, &["SENTINEL", "CKQUORUM", MASTER])
                .starts_with("OK"),
            "Sentinel {s} sees its quorum"
        );
        let replicas = c.sentinel_cli(s, &["SENTINEL", "REPLICAS", MASTER]);
        for n in 1..NODES {
            assert!(
                replicas.contains(&c.nodes[n].redis_port.to_string()),
                "Sentinel {s} knows node {n}: {replicas}"
            );
        }
    }

    // Writes on the primary reach both replicas; replicas refuse writes.
    assert_eq!(c.redis_cli(0, &["SET", "harness-key", "v1"]).trim(), "OK");
    for n in 1..NODES {
        wait_value(&c, n, "harness-key", "v1", Duration::from_secs(5));
        assert!(c
            .redis_cli(n, &["SET", "harness-key", "v2"])
            .starts_with("READONLY"));
    }

    // Pub/sub replicates: a subscriber on a replica gets what is published
    // on the primary.
    let mut sub = Command::new("redis-cli")
        .args([
            "-p",
            &c.nodes[2].redis_port.to_string(),
            "SUBSCRIBE",
            "harness-ch",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out = sub.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = false;
    while !seen && Instant::now() < deadline {
        c.redis_cli(0, &["PUBLISH", "harness-ch", "hello-from-primary"]);
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            if line == "hello-from-primary" {
                seen = true;
                break;
            }
        }
    }
    let _ = sub.kill();
    let _ = sub.wait();
    assert!(
        seen,
        "a message published on the primary reached a replica's subscriber"
    );
}

#[test]
fn kill_primary_promotes_a_replica_and_the_old_node_rejoins_as_replica() {
    // down-after 3 s, not the fixture's 1 s: this test follows one failover
    // for some 20 s, and with 1 s a loaded machine (the other tests' nine
    // processes each on 2 cores) once stalled the new primary long enough
    // for Sentinel to fail over a second time.
    let mut c = Cluster::start_with(ClusterOptions {
        down_after_ms: Some(3000),
        ..Default::default()
    });
    assert_eq!(c.redis_cli(0, &["SET", "before", "1"]).trim(), "OK");
    for n in 1..NODES {
        wait_value(&c, n, "before", "1", Duration::from_secs(5));
    }
    let killed_at = c.kill_primary();
    assert_eq!(c.killed(), Some(0));
    let (new, switched_at) = c.wait_promoted(Duration::from_secs(20));
    let took = switched_at - killed_at;
    eprintln!("kill -> Sentinel names node {new} primary: {took:?}");
    assert_ne!(new, 0);
    // down-after 3 s, up to 1 s of election desync, then the promotion.
    assert!(took < Duration::from_secs(10), "promotion took {took:?}");
    assert_eq!(c.primary(), new);

    // The dead node's Webdis still answers, with an error; the new
    // primary's takes requests.
    let (code, _) = c.webdis(0, "/PING");
    assert!(
        (500..600).contains(&code),
        "the dead node's Webdis answers {code}"
    );
    assert_eq!(c.webdis(new, "/PING").0, 200);

    // Nothing replicated was lost; the other replica follows the new primary.
    assert_eq!(c.redis_cli(new, &["GET", "before"]).trim(), "1");
    assert_eq!(c.redis_cli(new, &["SET", "after", "2"]).trim(), "OK");
    let other = (1..NODES).find(|&n| n != new).unwrap();
    wait_value(&c, other, "after", "2", Duration::from_secs(15));

    // Restarted, the old primary is turned into a replica of the new one
    // (Sentinel waits a few seconds before it converts a returning primary).
    c.restart_node(0);
    c.wait_role(0, "slave", Duration::from_secs(40));
    wait_value(&c, 0, "after", "2", Duration::from_secs(15));
    assert_eq!(c.primary(), new);
    wait_until_ok(Duration::from_secs(10), || c.webdis(0, "/PING").0 == 200);
}

#[test]
fn freeze_replicas_then_kill_primary_loses_the_unreplicated_writes() {
    let mut c = Cluster::start();
    assert_eq!(c.redis_cli(0, &["SET", "kept", "1"]).trim(), "OK");
    for n in 1..NODES {
        wait_value(&c, n, "kept", "1", Duration::from_secs(5));
    }
    let frozen = c.freeze_replicas();
    assert_eq!(frozen, vec![1, 2]);
    // Acknowledged by the primary alone.
    assert_eq!(c.redis_cli(0, &["SET", "lost", "1"]).trim(), "OK");
    assert_eq!(c.redis_cli(0, &["INCR", "counter"]).trim(), "1");
    c.kill_primary();
    // Frozen replicas are down for Sentinel: no promotion until they thaw.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(c.primary(), 0, "no replica promoted while frozen");
    c.thaw_replicas();
    let (new, _) = c.wait_promoted(Duration::from_secs(30));
    assert_ne!(new, 0);
    assert_eq!(c.redis_cli(new, &["GET", "kept"]).trim(), "1");
    assert_eq!(
        c.redis_cli(new, &["EXISTS", "lost", "counter"]).trim(),
        "0",
        "the writes after the cut died with the primary"
    );
}

#[test]
fn min_replicas_makes_a_primary_cut_off_from_its_replicas_refuse_writes() {
    let c = Cluster::start_with(ClusterOptions {
        min_replicas: 1,
        ..Default::default()
    });
    for n in 0..NODES {
        let got = c.redis_cli(n, &["CONFIG", "GET", "min-replicas-to-write"]);
        assert!(got.lines().nth(1) == Some("1"), "node {n}: {got:?}");
        // Loaded although the primary refuses writes without replicas.
        assert!(c
            .redis_cli(n, &["FUNCTION", "LIST", "LIBRARYNAME", "missionstream"])
            .contains("missionstream"));
    }
    assert_eq!(c.redis_cli(0, &["SET", "k", "1"]).trim(), "OK");
    // Replicas silent, as in a partition: the primary refuses writes once
    // none has acknowledged replication for more than 1 s.
    let refused_after = |c: &Cluster, cut: Instant| -> Duration {
        let deadline = cut + Duration::from_secs(10);
        loop {
            let got = c.redis_cli(0, &["SET", "k", "2"]);
            if got.starts_with("NOREPLICAS") {
                return cut.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "still writable 10 s after the cut: {got:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let cut = Instant::now();
    c.stall_replicas();
    let took = refused_after(&c, cut);
    eprintln!("replicas stalled -> NOREPLICAS: {took:?}");
    assert!(took > Duration::from_millis(500), "refused after {took:?}");
    c.thaw_replicas();
    common::wait_until(Duration::from_secs(15), || {
        c.redis_cli(0, &["SET", "k", "3"]).trim() == "OK"
    });
    // Replication cut: refused at once.
    let cut = Instant::now();
    c.freeze_replicas();
    eprintln!(
        "replication cut -> NOREPLICAS: {:?}",
        refused_after(&c, cut)
    );
    c.thaw_replicas();
    // Replicas back: writes are accepted again.
    common::wait_until(Duration::from_secs(15), || {
        c.redis_cli(0, &["SET", "k", "4"]).trim() == "OK"
    });
}

#[test]
fn stop_leaves_nothing_running_and_a_second_start_is_refused() {
    let mut c = Cluster::start();
    let pids = c.pids();
    assert_eq!(pids.len(), 9, "3 Redis, 3 Webdis, 3 Sentinels: {pids:?}");
    assert!(pids.iter().all(|&p| alive(p)));

    let again = Command::new(Path::new(common::ROOT).join("scripts/cluster.sh"))
        .arg("start")
        .arg(&c.dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    let msg = String::from_utf8_lossy(&again.stderr);
    assert!(
        msg.contains("already running") && msg.contains(&c.urls),
        "{msg}"
    );
    assert!(
        pids.iter().all(|&p| alive(p)),
        "the refused start stopped nothing"
    );

    let ports: Vec<u16> = c
        .nodes
        .iter()
        .flat_map(|n| [n.redis_port, n.webdis_port])
        .chain(c.sentinel_ports.iter().copied())
        .collect();
    // A frozen process must be stopped too.
    c.freeze_replicas();
    c.stop();
    for &p in &pids {
        wait_until_ok(Duration::from_secs(5), || !alive(p));
    }
    for port in ports {
        assert!(
            TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port} closed after stop"
        );
    }
    assert!(!c.dir.join("env").exists());
}

#[test]
fn a_start_that_fails_stops_what_it_launched() {
    let dir = std::env::temp_dir().join(format!("ms-cluster-fail-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new(Path::new(common::ROOT).join("scripts/cluster.sh"))
        .arg("start")
        .arg(&dir)
        .env("MS_WEBDIS", "/bin/false")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(msg.contains("webdis of node 1 did not start"), "{msg}");
    // The Redis nodes it had started are gone: their ports are closed.
    for i in 1..=NODES {
        let conf = std::fs::read_to_string(dir.join(format!("node{i}/redis.conf"))).unwrap();
        let port: u16 = conf
            .lines()
            .find_map(|l| l.strip_prefix("port "))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(
            TcpStream::connect(("127.0.0.1", port)).is_err(),
            "node {i}'s Redis stopped"
        );
        assert!(!dir.join(format!("node{i}/redis.pid.launch")).exists());
    }
    assert!(!dir.join("env").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

fn wait_until_ok(timeout: Duration, f: impl FnMut() -> bool) {
    common::wait_until(timeout, f)
}
