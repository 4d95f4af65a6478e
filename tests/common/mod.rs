//! Test fixture: real `redis-server` and `webdis` processes on free
//! loopback ports, configured from deploy/, with the functions loaded.
//! Dropped, it stops them. Never touches the machine's 6379/7379.
#![allow(dead_code)]

pub mod cluster;
pub mod edits;
pub mod faults;
pub mod plan;
pub mod raw;
pub mod rawsub;
pub mod record;
pub mod tls;

use missionstream::{Client, Event, EventKind};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The functions library, its `CHANNEL_ON_REPLICAS` line set to `on`
/// (the deployment's setting, edited before FUNCTION LOAD).
pub fn library_with_channel_on_replicas(on: bool) -> String {
    let lua = std::fs::read_to_string(Path::new(ROOT).join("lua/missionstream.lua")).unwrap();
    let mut out = String::with_capacity(lua.len());
    let mut found = false;
    for line in lua.lines() {
        if line.starts_with("local CHANNEL_ON_REPLICAS = ") {
            out.push_str(&format!("local CHANNEL_ON_REPLICAS = {on}"));
            found = true;
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    assert!(
        found,
        "lua/missionstream.lua has its CHANNEL_ON_REPLICAS line"
    );
    out
}

pub fn free_port() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let p = l.local_addr().unwrap().port();
        if p != 6379 && p != 7379 {
            return p;
        }
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The Webdis to test with: `$MS_WEBDIS` (a path, e.g. a newer release
/// built by hand), else `webdis` from PATH (Debian's package).
pub fn webdis_binary() -> String {
    std::env::var("MS_WEBDIS")
        .ok()
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "webdis".to_string())
}

pub struct Servers {
    pub dir: PathBuf,
    pub redis_port: u16,
    pub webdis_port: u16,
    pub url: String,
    redis: Option<Child>,
    webdis: Option<Child>,
    acl: serde_json::Value,
    verbosity: Option<u32>,
    /// The Unix socket Webdis reaches Redis at, when not `redis_port` (a
    /// relay).
    webdis_to: Option<PathBuf>,
}

pub struct Options {
    pub load_functions: bool,
    /// Replaces the "acl" of deploy/webdis.json.
    pub acl: Option<serde_json::Value>,
    /// Replaces the "verbosity" of deploy/webdis.json (8 logs every URL).
    pub verbosity: Option<u32>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            load_functions: true,
            acl: None,
            verbosity: None,
        }
    }
}

impl Servers {
    pub fn start() -> Servers {
        Servers::start_with(Options::default())
    }

    pub fn start_with(opts: Options) -> Servers {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ms-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let deploy: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(Path::new(ROOT).join("deploy/webdis.json")).unwrap(),
        )
        .unwrap();
        let acl = opts.acl.unwrap_or_else(|| deploy["acl"].clone());
        let mut s = Servers {
            dir,
            redis_port: free_port(),
            webdis_port: free_port(),
            url: String::new(),
            redis: None,
            webdis: None,
            acl,
            verbosity: opts.verbosity,
            webdis_to: None,
        };
        s.url = format!("http://127.0.0.1:{}", s.webdis_port);
        s.start_redis();
        if opts.load_functions {
            s.load_functions(
                &std::fs::read_to_string(Path::new(ROOT).join("lua/missionstream.lua")).unwrap(),
            );
        }
        // Its port, free when chosen, may be taken before Webdis binds it
        // (as the source port of another test's connection): another one.
        for tries in 1.. {
            match s.try_start_webdis() {
                Ok(()) => break,
                Err(why) if tries < 3 => {
                    eprintln!("{why}; trying another port");
                    s.stop_webdis();
                    s.webdis_port = free_port();
                    s.url = format!("http://127.0.0.1:{}", s.webdis_port);
                }
                Err(why) => panic!("{why}"),
            }
        }
        s
    }

    pub fn start_redis(&mut self) {
        let conf = std::fs::read_to_string(Path::new(ROOT).join("deploy/redis.conf")).unwrap();
        let mut out = String::new();
        for line in conf.lines() {
            let key = line.split_whitespace().next().unwrap_or("");
            match key {
                "port" => out.push_str(&format!("port {}\n", self.redis_port)),
                "dir" => out.push_str(&format!("dir {}\n", self.dir.display())),
                "bind" => out.push_str("bind 127.0.0.1\n"),
                _ => {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        out.push_str(&format!(
            "logfile {}\n",
            self.dir.join("redis.log").display()
        ));
        let path = self.dir.join("redis.conf");
        std::fs::write(&path, out).unwrap();
        let child = Command::new("redis-server")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (make test installs it)");
        self.redis = Some(child);
        wait_until(Duration::from_secs(10), || {
            self.redis_cli(&["PING"]).trim() == "PONG"
        });
    }

    pub fn start_webdis(&mut self) {
        if let Err(why) = self.try_start_webdis() {
            panic!("{why}");
        }
    }

    /// Starts Webdis on `webdis_port`: an error (with its log) when it
    /// exits (its port was taken?) or does not answer within 10 s.
    fn try_start_webdis(&mut self) -> Result<(), String> {
        let mut c: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(Path::new(ROOT).join("deploy/webdis.json")).unwrap(),
        )
        .unwrap();
        c["redis_port"] = self.redis_port.into();
        if let Some(path) = &self.webdis_to {
            c["redis_host"] = path.display().to_string().into();
        }
        c["http_port"] = self.webdis_port.into();
        c["http_host"] = "127.0.0.1".into();
        c["daemonize"] = false.into();
        c["acl"] = self.acl.clone();
        if let Some(v) = self.verbosity {
            c["verbosity"] = v.into();
        }
        c["logfile"] = self.dir.join("webdis.log").display().to_string().into();
        let path = self.dir.join("webdis.json");
        std::fs::write(&path, serde_json::to_string_pretty(&c).unwrap()).unwrap();
        let child = Command::new(webdis_binary())
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("webdis is installed (make test installs it), or MS_WEBDIS names it");
        let port = self.webdis_port;
        let webdis = self.webdis.insert(child);
        let log = || std::fs::read_to_string(self.dir.join("webdis.log")).unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = webdis.try_wait() {
                return Err(format!(
                    "Webdis exited ({status}) on port {port}; its log:\n{}",
                    log()
                ));
            }
            // Any answer: an ACL may refuse PING.
            if http(port, "GET", "/PING", b"").0 != 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "Webdis did not answer on port {port} within 10 s; its log:\n{}",
                    log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Restarts Webdis (same port) with another "acl".
    pub fn restart_webdis_with_acl(&mut self, acl: serde_json::Value) {
        self.stop_webdis();
        self.acl = acl;
        self.start_webdis();
    }

    /// Restarts Webdis (same port) reaching Redis at the Unix socket
    /// `path` (a relay in front of Redis).
    pub fn restart_webdis_to(&mut self, path: &Path) {
        self.stop_webdis();
        self.webdis_to = Some(path.to_path_buf());
        self.start_webdis();
    }

    pub fn stop_webdis(&mut self) {
        if let Some(mut c) = self.webdis.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn stop_redis(&mut self) {
        if let Some(mut c) = self.redis.take() {
            // SHUTDOWN writes the append-only file first.
            let _ = self.redis_cli(&["SHUTDOWN"]);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills redis-server at once (SIGKILL: nothing written on the way
    /// out; what it acknowledged must already be in the append-only file).
    pub fn kill_redis(&mut self) {
        if let Some(mut c) = self.redis.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Webdis' process id, while it runs.
    pub fn webdis_pid(&self) -> Option<u32> {
        self.webdis.as_ref().map(|c| c.id())
    }

    /// Sends SIGSTOP (freeze) or SIGCONT (thaw) to Webdis; after SIGSTOP,
    /// returns once every thread of Webdis is stopped (kill(2) returns
    /// when the signal is sent, before the threads stop; `t` when traced).
    pub fn signal_webdis(&self, sig: &str) {
        if let Some(c) = &self.webdis {
            let status = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(c.id().to_string())
                .status()
                .unwrap();
            assert!(status.success(), "kill -{sig} {}: {status}", c.id());
            if sig == "STOP" {
                wait_until(Duration::from_secs(10), || {
                    let states = thread_states(c.id());
                    !states.is_empty() && states.iter().all(|&s| s == 'T' || s == 't')
                });
            }
        }
    }

    pub fn redis_cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .arg("-p")
            .arg(self.redis_port.to_string())
            .args(args)
            .output()
            .expect("redis-cli is installed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn load_functions(&self, lua: &str) {
        function_load(self.redis_port, lua);
    }

    /// Whether Redis has the missionstream functions library loaded.
    pub fn functions_loaded(&self) -> bool {
        self.redis_cli(&["FUNCTION", "LIST", "LIBRARYNAME", "missionstream"])
            .contains("missionstream")
    }

    /// Loads lua/missionstream.lua unless Redis has it already (after a
    /// restart it should, from the append-only file); true if it had to.
    pub fn ensure_functions(&self) -> bool {
        if self.functions_loaded() {
            return false;
        }
        self.load_functions(
            &std::fs::read_to_string(Path::new(ROOT).join("lua/missionstream.lua")).unwrap(),
        );
        true
    }

    /// Every command in Redis' append-only files, in order: the RESP parts
    /// of a Redis 7 multi-part AOF (`appendonlydir/`, in manifest order),
    /// else of a single `appendonly.aof`. A base file in RDB form is
    /// skipped (counted in the second value); a torn last command is left
    /// out.
    pub fn aof_commands(&self) -> (Vec<Vec<Vec<u8>>>, usize) {
        let multi = self.dir.join("appendonlydir");
        let mut files = Vec::new();
        let manifest = std::fs::read_dir(&multi)
            .ok()
            .and_then(|mut d| {
                d.find_map(|e| {
                    let p = e.ok()?.path();
                    p.to_str()?.ends_with(".manifest").then_some(p)
                })
            })
            .and_then(|p| std::fs::read_to_string(p).ok());
        match manifest {
            Some(m) => {
                // "file <name> seq <n> type <b|h|i>": the base first, then
                // the increments by seq (history files are gone or stale).
                let mut parts: Vec<(u8, u64, String)> = m
                    .lines()
                    .filter_map(|l| {
                        let w: Vec<&str> = l.split_whitespace().collect();
                        let get = |k: &str| w.iter().position(|x| *x == k).map(|i| w[i + 1]);
                        let kind = match get("type")? {
                            "b" => 0,
                            "i" => 1,
                            _ => return None,
                        };
                        Some((kind, get("seq")?.parse().ok()?, get("file")?.to_string()))
                    })
                    .collect();
                parts.sort();
                files.extend(parts.into_iter().map(|(_, _, f)| multi.join(f)));
            }
            None => files.push(self.dir.join("appendonly.aof")),
        }
        let (mut commands, mut skipped) = (Vec::new(), 0);
        for f in files {
            let Ok(bytes) = std::fs::read(&f) else {
                continue;
            };
            if bytes.starts_with(b"REDIS") {
                skipped += 1;
                continue;
            }
            let mut at = 0;
            while let Some((cmd, next)) = resp_command(&bytes, at) {
                commands.push(cmd);
                at = next;
            }
        }
        (commands, skipped)
    }

    /// A client of these servers. It starts streams with the fewest KDF
    /// iterations the functions accept (100,000), so that the suites do
    /// not spend minutes stretching secrets; streams of clients made with
    /// `Client::new` use the default (600,000).
    pub fn client(&self) -> Client {
        let c = Client::new(&self.url).unwrap();
        c.set_kdf_iterations(missionstream::kdf::MIN_ITERATIONS)
            .unwrap();
        c
    }

    /// A field of a stream's record, read straight from Redis.
    /// A new stream (named `unique(prefix)`) led by one new client and
    /// followed by another, whose events are recorded:
    /// `(leader, follower, recorder, name)`.
    pub fn followed(&self, prefix: &str) -> (Client, Client, Arc<Recorder>, String) {
        let leader = self.client();
        let follower = self.client();
        let rec = Recorder::attach(&follower);
        let name = unique(prefix);
        leader.start(&name, "pw", "code").unwrap();
        follower.connect(&name, "pw").unwrap();
        (leader, follower, rec, name)
    }

    /// The key derivation parameters of stream `name`, from its record.
    pub fn kdf_params(&self, name: &str) -> missionstream::kdf::Params {
        missionstream::kdf::Params {
            salt: self.record_field(name, "salt"),
            iterations: self.record_field(name, "iter").parse().unwrap(),
        }
    }

    /// The derived key of `secret` for stream `name` (hex), as a client
    /// sends it.
    pub fn derived(&self, name: &str, kind: missionstream::kdf::Secret, secret: &str) -> String {
        missionstream::kdf::derive(&self.kdf_params(name), kind, secret).to_string()
    }

    /// Takes over the lead of stream `name` as any client of the protocol
    /// can (ms_reconnect, through redis-cli, with the derived keys and a
    /// new lead token); returns the lead token, for direct calls of
    /// ms_publish, ms_heartbeat and ms_stop.
    pub fn take_lead(&self, name: &str, password: &str, code: &str) -> String {
        use missionstream::kdf::Secret;
        let token = format!("{:032x}", rand_u128());
        let body = missionstream::protocol::frame_body(&[
            self.derived(name, Secret::Password, password).as_bytes(),
            self.derived(name, Secret::LeaderCode, code).as_bytes(),
            token.as_bytes(),
        ]);
        let out = self.redis_cli(&[
            "FCALL",
            "ms_reconnect",
            "3",
            &format!("stream:{name}"),
            "streams",
            &format!("msl:{name}"),
            missionstream::protocol::PROTOCOL_VERSION,
            "t4ke",
            "5000",
            "0",
            std::str::from_utf8(&body).unwrap(),
        ]);
        assert!(out.starts_with("t4ke"), "ms_reconnect: {out}");
        token
    }

    /// A field of the stream's record; for "state", "seq", "updated_ms"
    /// and "pub", those of the newest state, assembled from the record's
    /// base and log (record::newest; the snapshot's for a record of
    /// protocol 8). "" when there is no such record or field.
    pub fn record_field(&self, name: &str, field: &str) -> String {
        if matches!(field, "state" | "seq" | "updated_ms" | "pub") {
            let Some(n) = record::newest(self.redis_port, name) else {
                return if field == "state" {
                    newest_state(self.redis_port, name)
                } else {
                    String::new()
                };
            };
            return match field {
                "state" => n.state,
                "seq" => n.seq.to_string(),
                "updated_ms" => n.updated_ms.to_string(),
                _ if n.id == "-" => String::new(),
                _ => n.id,
            };
        }
        let out = Command::new("redis-cli")
            .arg("-p")
            .arg(self.redis_port.to_string())
            .arg("HGET")
            .arg(format!("stream:{name}"))
            .arg(field)
            .output()
            .unwrap();
        let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
        if s.ends_with('\n') {
            s.pop();
        }
        s
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.signal_webdis("CONT");
        self.stop_webdis();
        if let Some(mut c) = self.redis.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One RESP array of bulk strings (a command as an AOF stores it) at
/// `at`: its parts and where the next one starts.
pub fn resp_command(b: &[u8], at: usize) -> Option<(Vec<Vec<u8>>, usize)> {
    fn line(b: &[u8], at: usize, kind: u8) -> Option<(usize, usize)> {
        if b.get(at) != Some(&kind) {
            return None;
        }
        let end = at + b[at..].windows(2).position(|w| w == b"\r\n")?;
        let n = std::str::from_utf8(&b[at + 1..end]).ok()?.parse().ok()?;
        Some((n, end + 2))
    }
    let (count, mut at) = line(b, at, b'*')?;
    let mut parts = Vec::with_capacity(count);
    for _ in 0..count {
        let (len, start) = line(b, at, b'$')?;
        let end = start.checked_add(len)?;
        if b.get(end..end + 2)? != b"\r\n" {
            return None;
        }
        parts.push(b[start..end].to_vec());
        at = end + 2;
    }
    Some((parts, at))
}

/// The state letter (R, S, T...) of each thread of process `pid`, from
/// /proc/<pid>/task/*/stat.
pub fn thread_states(pid: u32) -> Vec<char> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| {
            let stat = std::fs::read_to_string(t.ok()?.path().join("stat")).ok()?;
            stat.rsplit_once(") ")?.1.chars().next()
        })
        .collect()
}

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("condition not met within {timeout:?}");
}

/// How much busier than one runnable thread per core the machine is now:
/// the 1-minute load average per core, at least 1. Timing slack in tests
/// is multiplied by it, so that a bound stays tight on an idle machine and
/// holds on a busy one (`make test-under-load`).
pub fn load_factor() -> f64 {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    let load: f64 = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split(' ').next()?.parse().ok())
        .unwrap_or(0.0);
    (load / cores).max(1.0)
}

/// A raw HTTP/1.1 request to Webdis (one connection, closed after).
pub fn http(port: u16, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, Vec::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if s.write_all(head.as_bytes()).is_err() || s.write_all(body).is_err() {
        return (0, Vec::new());
    }
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = match text.find("\r\n\r\n") {
        Some(i) => resp[i + 4..].to_vec(),
        None => Vec::new(),
    };
    (code, body)
}

/// Failure messages show at most this much of a state: its first
/// `EXCERPT_HEAD` and last `EXCERPT_TAIL` characters, and its length.
pub const EXCERPT_HEAD: usize = 80;
pub const EXCERPT_TAIL: usize = 40;
/// Failure messages show at most this many items of a list (the first
/// and last halves), and its length.
pub const EXCERPT_ITEMS: usize = 16;

/// A text as failure messages show it: whole (quoted) when short, else its
/// first 80 and last 40 characters and its length in bytes, so that a
/// failing test about an 8 MiB state prints a line, not 8 MiB.
pub fn excerpt(s: &str) -> String {
    let chars = s.chars().count();
    if chars <= EXCERPT_HEAD + EXCERPT_TAIL {
        return format!("{s:?}");
    }
    let head: String = s.chars().take(EXCERPT_HEAD).collect();
    let tail: String = s.chars().skip(chars - EXCERPT_TAIL).collect();
    format!("{head:?}…{tail:?} ({} bytes)", s.len())
}

/// `excerpt` as a Debug value, to put in tuples and lists.
pub struct Excerpt<'a>(pub &'a str);

impl std::fmt::Debug for Excerpt<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&excerpt(self.0))
    }
}

/// A list as failure messages show it: at most `EXCERPT_ITEMS` items (the
/// first and last ones), each by its (bounded) Debug, and the count.
pub fn list_excerpt<T: std::fmt::Debug>(items: &[T]) -> String {
    let half = EXCERPT_ITEMS / 2;
    let shown: Vec<String> = if items.len() <= EXCERPT_ITEMS {
        items.iter().map(|i| format!("{i:?}")).collect()
    } else {
        let mut v: Vec<String> = items[..half].iter().map(|i| format!("{i:?}")).collect();
        v.push(format!("… {} more …", items.len() - 2 * half));
        v.extend(items[items.len() - half..].iter().map(|i| format!("{i:?}")));
        v
    };
    format!("[{}] ({} items)", shown.join(", "), items.len())
}

/// `[(seq, state)]` as failure messages show it: each state an excerpt.
pub fn states_excerpt<S: AsRef<str>>(states: &[(u64, S)]) -> String {
    let v: Vec<(u64, Excerpt)> = states
        .iter()
        .map(|(q, st)| (*q, Excerpt(st.as_ref())))
        .collect();
    list_excerpt(&v)
}

/// An event as recorded by a test callback. Its Debug shows the state as
/// an excerpt.
#[derive(Clone, PartialEq)]
pub struct Rec {
    pub kind: EventKind,
    pub stream: String,
    pub state: Option<String>,
    pub seq: u64,
    pub status: missionstream::Status,
}

impl std::fmt::Debug for Rec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rec")
            .field("kind", &self.kind)
            .field("stream", &self.stream)
            .field("state", &self.state.as_deref().map(Excerpt))
            .field("seq", &self.seq)
            .field("status", &self.status)
            .finish()
    }
}

/// Recorded events: a Vec whose Debug is bounded (`list_excerpt`), so
/// that `{:?}` of them in a failure message stays short.
#[derive(Clone, Default, PartialEq)]
pub struct Events(pub Vec<Rec>);

/// `[(seq, state)]` of a stream: a Vec whose Debug is bounded
/// (`states_excerpt`).
#[derive(Clone, Default, PartialEq)]
pub struct States(pub Vec<(u64, String)>);

macro_rules! bounded_vec {
    ($t:ident, $item:ty, $show:expr) => {
        impl std::ops::Deref for $t {
            type Target = Vec<$item>;
            fn deref(&self) -> &Vec<$item> {
                &self.0
            }
        }
        impl std::ops::DerefMut for $t {
            fn deref_mut(&mut self) -> &mut Vec<$item> {
                &mut self.0
            }
        }
        impl IntoIterator for $t {
            type Item = $item;
            type IntoIter = std::vec::IntoIter<$item>;
            fn into_iter(self) -> Self::IntoIter {
                self.0.into_iter()
            }
        }
        impl<'a> IntoIterator for &'a $t {
            type Item = &'a $item;
            type IntoIter = std::slice::Iter<'a, $item>;
            fn into_iter(self) -> Self::IntoIter {
                self.0.iter()
            }
        }
        impl PartialEq<Vec<$item>> for $t {
            fn eq(&self, other: &Vec<$item>) -> bool {
                &self.0 == other
            }
        }
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&$show(&self.0))
            }
        }
    };
}
bounded_vec!(Events, Rec, list_excerpt);
bounded_vec!(States, (u64, String), states_excerpt);

/// Records every event of a client.
#[derive(Default)]
pub struct Recorder {
    pub events: Mutex<Vec<Rec>>,
    cv: Condvar,
}

impl Recorder {
    pub fn attach(client: &Client) -> Arc<Recorder> {
        let r = Arc::new(Recorder::default());
        let r2 = r.clone();
        client.set_callback(Some(Arc::new(move |e: &Event| r2.record(e))));
        r
    }

    pub fn record(&self, e: &Event) {
        self.events.lock().unwrap().push(Rec {
            kind: e.kind,
            stream: e.stream_name().to_string(),
            state: e.state.as_ref().map(|s| s.as_str().to_string()),
            seq: e.seq,
            status: e.status,
        });
        self.cv.notify_all();
    }

    pub fn snapshot(&self) -> Events {
        Events(self.events.lock().unwrap().clone())
    }

    /// Waits until `f` holds for the events recorded so far.
    pub fn wait(&self, timeout: Duration, f: impl Fn(&[Rec]) -> bool) -> Events {
        let deadline = Instant::now() + timeout;
        let mut ev = self.events.lock().unwrap();
        loop {
            if f(&ev) {
                return Events(ev.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "events did not reach the expected condition within {timeout:?}: {}",
                    list_excerpt(&ev)
                );
            }
            ev = self.cv.wait_timeout(ev, deadline - now).unwrap().0;
        }
    }

    /// States of `stream`, in order.
    pub fn states(&self, stream: &str) -> States {
        States(
            self.snapshot()
                .into_iter()
                .filter(|e| e.kind == EventKind::MS_EVENT_STATE && e.stream == stream)
                .map(|e| (e.seq, e.state.unwrap()))
                .collect(),
        )
    }

    pub fn wait_state(&self, stream: &str, state: &str, timeout: Duration) -> Events {
        self.wait(timeout, |ev| {
            ev.iter().any(|e| {
                e.kind == EventKind::MS_EVENT_STATE
                    && e.stream == stream
                    && e.state.as_deref() == Some(state)
            })
        })
    }

    pub fn wait_kind(&self, stream: &str, kind: EventKind, timeout: Duration) -> Events {
        self.wait(timeout, |ev| {
            ev.iter().any(|e| e.kind == kind && e.stream == stream)
        })
    }
}

/// Asserts that the STATE events of a stream have strictly increasing seq.
/// `[(seq, state)]` as `Recorder::states` returns them.
pub fn seq_states(pairs: &[(u64, &str)]) -> Vec<(u64, String)> {
    pairs.iter().map(|(q, st)| (*q, st.to_string())).collect()
}

/// Asserts that the states a follower got are drawn from `expected` in
/// order (latest wins may skip states before the callback takes them,
/// never reorder or invent one) and end with the last of them.
pub fn assert_states_from(got: &[(u64, String)], expected: &[(u64, &str)]) {
    let expected = seq_states(expected);
    let mut from = 0;
    for g in got {
        match expected[from..].iter().position(|e| e == g) {
            Some(i) => from += i + 1,
            None => panic!(
                "{:?} is not one of, or comes out of order in, {}: got {}",
                (g.0, Excerpt(&g.1)),
                states_excerpt(&expected),
                states_excerpt(got)
            ),
        }
    }
    assert!(
        got.last() == expected.last(),
        "the last state got is not the last expected, {}: got {}",
        states_excerpt(&expected[expected.len().saturating_sub(1)..]),
        states_excerpt(got)
    );
}

/// Asserts that a state is the one expected; a failure shows excerpts of
/// both, their lengths and where they first differ, never a whole state.
/// `context` (may be empty) starts the message.
#[track_caller]
pub fn assert_state_eq<A: AsRef<str> + ?Sized, B: AsRef<str> + ?Sized>(
    got: &A,
    expected: &B,
    context: &str,
) {
    let (got, expected) = (got.as_ref(), expected.as_ref());
    if got != expected {
        let at = got
            .bytes()
            .zip(expected.bytes())
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(expected.len()));
        panic!(
            "{context}{}the state is not the one expected (they differ from byte {at}): got {}, expected {}",
            if context.is_empty() { "" } else { ": " },
            excerpt(got),
            excerpt(expected)
        );
    }
}

/// Asserts that `what` took at least `min` and less than `max`.
pub fn assert_took(took: Duration, min: Duration, max: Duration, what: &str) {
    assert!(
        took >= min && took < max,
        "{what} took {took:?}, not {min:?}..{max:?}"
    );
}

pub fn assert_increasing(states: &[(u64, String)]) {
    for w in states.windows(2) {
        assert!(
            w[0].0 < w[1].0,
            "seq not strictly increasing: {}",
            states_excerpt(w)
        );
    }
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A TCP relay in front of the real Webdis that loses the responses to the
/// first `lose` requests whose request line contains `pattern`, as Webdis
/// 0.1.9 sometimes does after a subscriber hung up: the request reaches
/// Webdis, nothing comes back on that connection any more, and it stays
/// open. Everything else is relayed byte for byte. Requests are told apart
/// on kept-alive connections too (by their Content-Length).
pub struct LossyRelay {
    pub port: u16,
    pub url: String,
    /// Requests matching the pattern seen so far.
    pub matched: Arc<AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl LossyRelay {
    pub fn start(target_port: u16, pattern: &'static str, lose: u64) -> LossyRelay {
        LossyRelay::start_late(target_port, pattern, lose, Duration::ZERO)
    }

    /// As `start`, but a request whose response is lost reaches Webdis
    /// only `late` after it was sent (a request stuck on the way, carried
    /// out after the client gave up on it).
    pub fn start_late(
        target_port: u16,
        pattern: &'static str,
        lose: u64,
        late: Duration,
    ) -> LossyRelay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let matched = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        listener.set_nonblocking(true).unwrap();
        let (seen, stopped) = (matched.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                let client = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                client.set_nonblocking(false).unwrap();
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", target_port)) else {
                    continue;
                };
                let swallow = Arc::new(std::sync::atomic::AtomicBool::new(false));
                // Responses: relayed until a lost one, then read and dropped.
                {
                    let (mut from, mut to) =
                        (upstream.try_clone().unwrap(), client.try_clone().unwrap());
                    let swallow = swallow.clone();
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if !swallow.load(Ordering::SeqCst)
                                        && to.write_all(&buf[..n]).is_err()
                                    {
                                        break;
                                    }
                                }
                            }
                        }
                        if !swallow.load(Ordering::SeqCst) {
                            let _ = to.shutdown(std::net::Shutdown::Both);
                        }
                    });
                }
                // Requests: one at a time, each checked before it is sent.
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let (mut from, mut to) = (client, upstream);
                    let mut buf: Vec<u8> = Vec::new();
                    let mut chunk = vec![0u8; 64 * 1024];
                    loop {
                        let head_end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break Some(i + 4);
                            }
                            match from.read(&mut chunk) {
                                Ok(0) | Err(_) => break None,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let Some(head_end) = head_end else { break };
                        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                        let length: usize = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse().ok())?
                            })
                            .unwrap_or(0);
                        while buf.len() < head_end + length {
                            match from.read(&mut chunk) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let line = head.lines().next().unwrap_or("");
                        if line.contains(pattern) && seen.fetch_add(1, Ordering::SeqCst) < lose {
                            swallow.store(true, Ordering::SeqCst);
                            std::thread::sleep(late);
                        }
                        let rest = buf.split_off(head_end + length);
                        if to.write_all(&buf).is_err() {
                            break;
                        }
                        buf = rest;
                    }
                    // The client hung up: so does the relay (a lost
                    // connection stays open only while the client waits).
                    let _ = to.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        LossyRelay {
            port,
            url: format!("http://127.0.0.1:{port}"),
            matched,
            stop,
        }
    }
}

impl Drop for LossyRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A TCP relay in front of the real Webdis that passes requests through
/// as they come and paces responses to `bytes_per_sec` (per connection):
/// a slow network, on which a large message takes a known time to arrive.
pub struct SlowRelay {
    pub port: u16,
    pub url: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl SlowRelay {
    pub fn start(target_port: u16, bytes_per_sec: u64) -> SlowRelay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        listener.set_nonblocking(true).unwrap();
        let stopped = stop.clone();
        let rate = bytes_per_sec.max(1) as f64;
        std::thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                let client = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                client.set_nonblocking(false).unwrap();
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", target_port)) else {
                    continue;
                };
                let (mut req_from, mut req_to) =
                    (client.try_clone().unwrap(), upstream.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut req_from, &mut req_to);
                    let _ = req_to.shutdown(std::net::Shutdown::Both);
                });
                let (mut from, mut to) = (upstream, client);
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        match from.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if to.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                                std::thread::sleep(Duration::from_secs_f64(n as f64 / rate));
                            }
                        }
                    }
                    let _ = to.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        SlowRelay {
            port,
            url: format!("http://127.0.0.1:{port}"),
            stop,
        }
    }
}

impl Drop for SlowRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// 128 bits that differ per call (tests only: time, pid and a counter,
/// hashed).
pub fn rand_u128() -> u128 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let seed = format!(
        "{t}/{}/{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&seed, &mut h);
    let a = std::hash::Hasher::finish(&h) as u128;
    std::hash::Hash::hash(&a, &mut h);
    (a << 64) | std::hash::Hasher::finish(&h) as u128
}

/// The newest state of a stream on the Redis at `port`, as `ms_snapshot`
/// (read-only, so on a replica too) assembles it from the record: the
/// base and the deltas since it. Without a record: the empty string.
pub fn newest_state(port: u16, name: &str) -> String {
    let cli = |args: &[&str]| record::cli_bytes(port, args);
    let key = format!("stream:{name}");
    let channel = String::from_utf8_lossy(&cli(&["HGET", &key, "channel"]))
        .trim()
        .to_string();
    if channel.is_empty() {
        return String::new();
    }
    let body = format!("\n{channel}");
    let log = format!("msl:{name}");
    let out = cli(&[
        "FCALL_RO",
        "ms_snapshot",
        "2",
        &key,
        &log,
        missionstream::protocol::PROTOCOL_VERSION,
        "n3west",
        "-",
        &body,
    ]);
    let text = String::from_utf8_lossy(&out).into_owned();
    // Raw output: nonce, seq, updated_ms, hb_ms, updated_age_ms,
    // heard_age_ms, then the state message "r <publish id>\n<state>" (the
    // last element, so its own newlines do no harm).
    let mut lines = text.splitn(8, '\n');
    assert_eq!(lines.next(), Some("n3west"), "ms_snapshot: {text}");
    let head = lines.nth(5).unwrap_or("");
    assert!(
        head.starts_with("r "),
        "ms_snapshot's state message: {text}"
    );
    // (cli_bytes took redis-cli's own newline off.)
    lines.next().unwrap_or("").to_string()
}

/// `FUNCTION LOAD REPLACE` of `lua` (the missionstream library) on the
/// Redis at `port`, through `redis-cli -x`; panics unless Redis answers
/// with the library's name.
pub fn function_load(port: u16, lua: &str) {
    use std::io::Write;
    let mut child = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(["-x", "FUNCTION", "LOAD", "REPLACE"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("redis-cli is installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lua.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(said.trim(), "missionstream", "FUNCTION LOAD failed: {said}");
}
