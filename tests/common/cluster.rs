//! Test fixture: the replicated topology of `scripts/cluster.sh` (3 Redis
//! nodes, 1 primary + 2 replicas, 3 Sentinels, one Webdis per node) on free
//! loopback ports, in a directory of its own. Dropped, even by a panicking
//! test, it stops every process the script launched.
//!
//! Nodes are numbered 0, 1, 2 here (the script's node1..node3); node 0 is
//! the primary at start, and `urls` lists the nodes' Webdis in that order.

use super::{http, wait_until, ROOT};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub const NODES: usize = 3;
/// The name Sentinel monitors the group under.
pub const MASTER: &str = "missionstream";

static COUNTER: AtomicU64 = AtomicU64::new(0);

#[derive(Clone, Debug)]
pub struct Node {
    pub redis_port: u16,
    pub webdis_port: u16,
    /// This node's Webdis, `http://127.0.0.1:PORT`.
    pub url: String,
}

#[derive(Default)]
pub struct ClusterOptions {
    /// `MS_MIN_REPLICAS`: min-replicas-to-write on every node (0: off).
    pub min_replicas: u32,
    /// `MS_SENTINEL_DOWN_AFTER_MS` (default 1000).
    pub down_after_ms: Option<u64>,
    /// `MS_SENTINEL_FAILOVER_TIMEOUT_MS` (default 5000).
    pub failover_timeout_ms: Option<u64>,
    /// `MS_CHANNEL_ON_REPLICAS=1`: the functions library loaded with
    /// `CHANNEL_ON_REPLICAS = true` (replicas carry channel messages,
    /// followers subscribe on them); else messages stay on the primary.
    pub channel_on_replicas: bool,
}

pub struct Cluster {
    pub dir: PathBuf,
    /// `MS_URLS`: every node's Webdis, comma-separated, node 0 (the primary
    /// at start) first.
    pub urls: String,
    pub nodes: Vec<Node>,
    pub sentinel_ports: Vec<u16>,
    /// The node `kill_primary` killed last, for `wait_promoted`.
    killed: Option<usize>,
    stopped: bool,
}

fn script() -> PathBuf {
    Path::new(ROOT).join("scripts/cluster.sh")
}

fn parse_env(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("export ").unwrap_or(l).split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Cluster {
    pub fn start() -> Cluster {
        Cluster::start_with(ClusterOptions::default())
    }

    /// A topology whose replicas carry channel messages (followers on
    /// replicas: fan-out over replicas).
    pub fn start_on_replicas() -> Cluster {
        Cluster::start_with(ClusterOptions {
            channel_on_replicas: true,
            ..ClusterOptions::default()
        })
    }

    pub fn start_with(opts: ClusterOptions) -> Cluster {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ms-cluster-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Ports come from the kernel, free when chosen; another program may
        // take one before the script binds it: try again with new ones.
        let mut attempt = 0;
        let c = loop {
            attempt += 1;
            let mut cmd = Command::new(script());
            cmd.arg("start").arg(&dir).stdin(Stdio::null());
            if opts.min_replicas > 0 {
                cmd.env("MS_MIN_REPLICAS", opts.min_replicas.to_string());
            }
            if let Some(ms) = opts.down_after_ms {
                cmd.env("MS_SENTINEL_DOWN_AFTER_MS", ms.to_string());
            }
            if let Some(ms) = opts.failover_timeout_ms {
                cmd.env("MS_SENTINEL_FAILOVER_TIMEOUT_MS", ms.to_string());
            }
            cmd.env(
                "MS_CHANNEL_ON_REPLICAS",
                if opts.channel_on_replicas { "1" } else { "0" },
            );
            let out = cmd
                .output()
                .expect("scripts/cluster.sh runs (make test installs redis-server and webdis)");
            // From here on Drop stops whatever the script left running.
            let c = Cluster {
                dir: dir.clone(),
                urls: String::new(),
                nodes: Vec::new(),
                sentinel_ports: Vec::new(),
                killed: None,
                stopped: false,
            };
            if out.status.success() {
                break c;
            }
            let why = format!(
                "scripts/cluster.sh start failed (attempt {attempt}): {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(attempt < 3, "{why}");
            eprintln!("{why}; trying again");
            drop(c);
        };
        let mut c = c;
        let env = parse_env(&std::fs::read_to_string(c.dir.join("env")).unwrap());
        let port = |k: &str| -> u16 {
            env.get(k)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{k} in the cluster's env file: {env:?}"))
        };
        c.urls = env["MS_URLS"].clone();
        c.nodes = (1..=NODES)
            .map(|i| {
                let webdis_port = port(&format!("NODE{i}_WEBDIS_PORT"));
                Node {
                    redis_port: port(&format!("NODE{i}_REDIS_PORT")),
                    webdis_port,
                    url: format!("http://127.0.0.1:{webdis_port}"),
                }
            })
            .collect();
        c.sentinel_ports = env["SENTINEL_PORTS"]
            .split([',', ' '])
            .filter(|p| !p.is_empty())
            .map(|p| p.parse().unwrap())
            .collect();
        assert_eq!(port("PRIMARY_REDIS_PORT"), c.nodes[0].redis_port);
        c
    }

    /// `redis-cli -p PORT ARGS...` on `node`; its standard output.
    pub fn redis_cli(&self, node: usize, args: &[&str]) -> String {
        cli(self.nodes[node].redis_port, args)
    }

    /// Loads the functions library with its `CHANNEL_ON_REPLICAS` line set
    /// to `on` on the primary (FUNCTION LOAD REPLACE, replicated) and
    /// waits until every replica has it: every node loads the same
    /// library.
    pub fn set_channel_on_replicas(&self, on: bool) {
        let lua = super::library_with_channel_on_replicas(on);
        super::function_load(self.nodes[self.primary()].redis_port, &lua);
        let setting = format!("local CHANNEL_ON_REPLICAS = {on}");
        wait_until(Duration::from_secs(30), || {
            self.replicas().into_iter().all(|n| {
                self.role(n) != "slave"
                    || self
                        .redis_cli(n, &["FUNCTION", "LIST", "WITHCODE"])
                        .contains(&setting)
            })
        });
    }

    /// `redis-cli` on a Sentinel (by index in `sentinel_ports`).
    pub fn sentinel_cli(&self, sentinel: usize, args: &[&str]) -> String {
        cli(self.sentinel_ports[sentinel], args)
    }

    /// The primary, as the Sentinels name it (`SENTINEL
    /// get-master-addr-by-name`). During a failover they disagree for a
    /// moment: a named node that answers as master wins over one that does
    /// not (the dead primary), then the one most Sentinels name.
    pub fn primary(&self) -> usize {
        let mut votes = [0usize; NODES];
        for s in 0..self.sentinel_ports.len() {
            if let Some(n) = self.sentinel_primary(s) {
                votes[n] += 1;
            }
        }
        let named: Vec<usize> = (0..NODES).filter(|&n| votes[n] > 0).collect();
        assert!(
            !named.is_empty(),
            "no Sentinel names a primary of the cluster"
        );
        let masters: Vec<usize> = named
            .iter()
            .copied()
            .filter(|&n| self.role(n) == "master")
            .collect();
        let pick = if masters.is_empty() { named } else { masters };
        pick.into_iter().max_by_key(|&n| votes[n]).unwrap()
    }

    /// The node Sentinel `sentinel` names as primary, if it answers.
    pub fn sentinel_primary(&self, sentinel: usize) -> Option<usize> {
        let out = self.sentinel_cli(sentinel, &["SENTINEL", "get-master-addr-by-name", MASTER]);
        let port: u16 = out.lines().nth(1)?.trim().parse().ok()?;
        self.nodes.iter().position(|n| n.redis_port == port)
    }

    /// The replication role Redis `node` reports itself (`master`, `slave`),
    /// or "" when it does not answer.
    pub fn role(&self, node: usize) -> String {
        self.redis_cli(node, &["ROLE"])
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    }

    /// The nodes that are not Sentinel's primary.
    pub fn replicas(&self) -> Vec<usize> {
        let p = self.primary();
        (0..NODES).filter(|&n| n != p).collect()
    }

    /// The pid of `node`'s redis-server, as the script launched it.
    pub fn redis_pid(&self, node: usize) -> Option<i32> {
        read_pid(&self.dir.join(format!("node{}/redis.pid.launch", node + 1)))
    }

    /// Every pid the script launched and still records (Redis, Sentinels,
    /// Webdis), whether or not the process is alive.
    pub fn pids(&self) -> Vec<i32> {
        let mut files = Vec::new();
        for i in 1..=NODES {
            files.push(format!("node{i}/redis.pid.launch"));
            files.push(format!("node{i}/webdis.pid"));
            files.push(format!("sentinel{i}/sentinel.pid.launch"));
        }
        files
            .iter()
            .filter_map(|f| read_pid(&self.dir.join(f)))
            .collect()
    }

    /// SIGKILL of the primary's redis-server (no shutdown, no last fsync:
    /// a crash). Returns the instant of the kill.
    pub fn kill_primary(&mut self) -> Instant {
        let p = self.primary();
        let pid = self.redis_pid(p).expect("the primary's pid file");
        assert!(alive(pid), "the primary's redis-server (pid {pid}) runs");
        signal(pid, libc::SIGKILL);
        let at = Instant::now();
        // Reap-free check: the pid may linger as a zombie of init; its port
        // must be closed.
        let port = self.nodes[p].redis_port;
        wait_until(Duration::from_secs(5), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
        });
        self.killed = Some(p);
        at
    }

    /// The node `kill_primary` killed last.
    pub fn killed(&self) -> Option<usize> {
        self.killed
    }

    /// Waits until a Sentinel names another primary than the one
    /// `kill_primary` killed (or than Sentinel's primary at the call) and
    /// that node reports itself master. Returns the new primary and the
    /// instant a Sentinel first named it (polled every 10 ms).
    pub fn wait_promoted(&self, timeout: Duration) -> (usize, Instant) {
        let old = self.killed.unwrap_or_else(|| self.primary());
        let deadline = Instant::now() + timeout;
        let mut named: Option<(usize, Instant)> = None;
        while Instant::now() < deadline {
            if named.is_none() {
                named = (0..self.sentinel_ports.len())
                    .filter_map(|s| self.sentinel_primary(s))
                    .find(|&n| n != old)
                    .map(|n| (n, Instant::now()));
            }
            if let Some((n, at)) = named {
                if self.role(n) == "master" {
                    return (n, at);
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "no replica promoted within {timeout:?} (Sentinel names {:?}); see {}/sentinel*/sentinel.log",
            named,
            self.dir.display()
        );
    }

    /// Cuts replication so that the primary's next writes are lost when it
    /// dies: `stall_replicas`, then the primary drops its replica
    /// connections (`CLIENT KILL TYPE replica`; else the kernel's socket
    /// buffers would still deliver what was written to them once the
    /// replicas thaw). Sentinel sees the frozen replicas as down and
    /// promotes none of them until `thaw_replicas`. With `min_replicas`
    /// the primary refuses writes at once (it has no replica left); for
    /// the gradual loss of a partition, use `stall_replicas`. Returns the
    /// frozen nodes.
    pub fn freeze_replicas(&self) -> Vec<usize> {
        let p = self.primary();
        let replicas = self.stall_replicas();
        self.redis_cli(p, &["CLIENT", "KILL", "TYPE", "replica"]);
        replicas
    }

    /// SIGSTOP of every replica's redis-server: as a partition looks to
    /// the primary, its replicas stay connected but stop reading and
    /// acknowledging (with `min_replicas`, writes are refused ~1-2 s
    /// later). What the primary wrote to their sockets meanwhile still
    /// reaches them when they thaw. Returns the frozen nodes.
    pub fn stall_replicas(&self) -> Vec<usize> {
        let replicas = self.replicas();
        for &r in &replicas {
            if let Some(pid) = self.redis_pid(r) {
                signal(pid, libc::SIGSTOP);
            }
        }
        replicas
    }

    /// SIGCONT of every node's redis-server (the frozen replicas go on).
    pub fn thaw_replicas(&self) {
        for n in 0..NODES {
            if let Some(pid) = self.redis_pid(n) {
                signal(pid, libc::SIGCONT);
            }
        }
    }

    /// Starts `node`'s redis-server again (stopping it first if it runs)
    /// from its configuration, which Sentinel rewrites on a failover. A
    /// former primary comes back as primary of nobody until Sentinel turns
    /// it into a replica of the new one (up to ~20 s: `wait_role`).
    pub fn restart_node(&self, node: usize) {
        let out = Command::new(script())
            .arg("restart-node")
            .arg(&self.dir)
            .arg((node + 1).to_string())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "scripts/cluster.sh restart-node failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Waits until `node` reports `role` (`master`, `slave`).
    pub fn wait_role(&self, node: usize, role: &str, timeout: Duration) {
        wait_until(timeout, || self.role(node) == role);
    }

    /// A raw request to `node`'s Webdis: (status, body); status 0 when it
    /// does not answer.
    pub fn webdis(&self, node: usize, path: &str) -> (u16, Vec<u8>) {
        http(self.nodes[node].webdis_port, "GET", path, b"")
    }

    /// `scripts/cluster.sh stop`; Drop does it too.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        // Frozen processes would not act on SIGTERM (the script sends
        // SIGCONT too; this is for a script that fails).
        self.thaw_replicas();
        let out = Command::new(script())
            .arg("stop")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            other => {
                eprintln!("scripts/cluster.sh stop failed ({other:?}): killing what it launched");
                for pid in self.pids() {
                    signal(pid, libc::SIGKILL);
                }
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// `redis-cli -p PORT ARGS...`, given up after 10 s (a frozen node accepts
/// the connection and never answers): its standard output, "" then.
fn cli(port: u16, args: &[&str]) -> String {
    let mut child = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-cli is installed");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("redis-cli's output");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Sends `sig` to `pid` if it is still a live process of the topology
/// (redis-server or Webdis): a pid file may outlive its process, and the
/// pid may belong to another program by now.
fn signal(pid: i32, sig: libc::c_int) {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let webdis = super::webdis_binary();
    let webdis = Path::new(&webdis)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let comm = comm.trim();
    // The kernel keeps the first 15 characters of a command name.
    if !alive(pid) || comm.is_empty() || !(comm == "redis-server" || webdis.starts_with(comm)) {
        return;
    }
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Whether process `pid` is alive (not gone, not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the field after the parenthesised command name.
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}
