//! The record of a stream, read the way a client written from
//! docs/PROTOCOL.md ("The record") would read it: the base (`s`, `b`),
//! then the log's entries (`msl:<name>`) applied one after the other; and
//! the parts of a raw `ms_publish` (the channel tag, the sealed lead
//! token), written from the same document, not from the library.
#![allow(dead_code)]

use sha1::{Digest, Sha1};
use std::process::{Command, Stdio};

/// SHA-1 of `bytes`, 40 lowercase hex digits.
pub fn sha1_hex(bytes: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(bytes);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// What the record keeps of a lead token (its SHA-1).
pub fn lead_hash(token: &str) -> String {
    sha1_hex(token.as_bytes())
}

/// The tag `ms_publish` takes instead of the channel.
pub fn channel_tag(channel: &str) -> String {
    sha1_hex(format!("tag:{channel}").as_bytes())[..16].to_string()
}

/// The lead token sealed for one publish: its 32 hex digits XORed, digit
/// by digit, with the first 32 of SHA-1("lead:" lead_hash ":" id ":" kind
/// ":" base_seq ":" base_id ":" floor ":" body length).
#[allow(clippy::too_many_arguments)]
pub fn seal_lead(
    token: &str,
    lead_hash: &str,
    id: &str,
    kind: &str,
    base_seq: &str,
    base_id: &str,
    floor: &str,
    body_len: usize,
) -> String {
    let mask = sha1_hex(
        format!("lead:{lead_hash}:{id}:{kind}:{base_seq}:{base_id}:{floor}:{body_len}").as_bytes(),
    );
    token
        .chars()
        .zip(mask.chars())
        .map(|(a, b)| {
            let x = a.to_digit(16).unwrap() ^ b.to_digit(16).unwrap();
            std::char::from_digit(x, 16).unwrap()
        })
        .collect()
}

/// The newest state of a stream as its record holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Newest {
    pub seq: u64,
    pub updated_ms: u64,
    /// Publish id of the newest state ("-" before the first publish).
    pub id: String,
    pub state: String,
    /// Entries in the log (0: the base is the newest state).
    pub entries: usize,
    /// Bytes of the log.
    pub log_bytes: usize,
    /// The base's seq and its state.
    pub base_seq: u64,
    pub base: String,
}

/// The raw bytes of one reply of `redis-cli` (no tty: the value and a
/// newline, an empty line for nil).
pub fn cli_bytes(port: u16, args: &[&str]) -> Vec<u8> {
    let out = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli is installed");
    let mut v = out.stdout;
    if v.last() == Some(&b'\n') {
        v.pop();
    }
    v
}

const DIGITS: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~";

fn delta_int(d: &[u8], mut pos: usize) -> Option<(u64, usize)> {
    let start = pos;
    let mut v = 0u64;
    while let Some(x) = d.get(pos).and_then(|c| DIGITS.iter().position(|y| y == c)) {
        v = v * 64 + x as u64;
        pos += 1;
    }
    (pos > start).then_some((v, pos))
}

/// Where the Fossil delta starting at `pos` of `d` ends (after its ";").
pub fn delta_end(d: &[u8], pos: usize) -> Option<usize> {
    let (_, mut pos) = delta_int(d, pos)?;
    if d.get(pos) != Some(&b'\n') {
        return None;
    }
    pos += 1;
    loop {
        let (n, p) = delta_int(d, pos)?;
        pos = p;
        match d.get(pos)? {
            b'@' => {
                let (_, p) = delta_int(d, pos + 1)?;
                if d.get(p) != Some(&b',') {
                    return None;
                }
                pos = p + 1;
            }
            b':' => pos += 1 + n as usize,
            b';' => return Some(pos + 1),
            _ => return None,
        }
    }
}

/// One entry of a log: the delta, then " <seq> <ms since the base> <counter>\n".
pub struct Entry<'a> {
    pub delta: &'a str,
    pub seq: u64,
    pub ms: u64,
    pub counter: String,
}

/// The entries of a log, in order; panics on a log that does not parse.
pub fn entries(log: &[u8]) -> Vec<Entry<'_>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < log.len() {
        let end = delta_end(log, pos).unwrap_or_else(|| panic!("a delta at byte {pos} of the log"));
        let nl = end
            + log[end..]
                .iter()
                .position(|&b| b == b'\n')
                .expect("a trailer");
        let trailer = std::str::from_utf8(&log[end..nl]).unwrap();
        let w: Vec<&str> = trailer.split(' ').collect();
        assert!(
            w.len() == 4 && w[0].is_empty(),
            "trailer {trailer:?} at byte {end} of the log"
        );
        out.push(Entry {
            delta: std::str::from_utf8(&log[pos..end]).unwrap(),
            seq: w[1].parse().unwrap(),
            ms: w[2].parse().unwrap(),
            counter: w[3].to_string(),
        });
        pos = nl + 1;
    }
    out
}

/// The newest state of stream `name` on the Redis at `port`, assembled
/// from the record's base and its log; None when there is no record of
/// this version (no field `b`).
pub fn newest(port: u16, name: &str) -> Option<Newest> {
    let key = format!("stream:{name}");
    let b = String::from_utf8(cli_bytes(port, &["HGET", &key, "b"])).unwrap();
    if b.is_empty() {
        return None;
    }
    let w: Vec<&str> = b.split(' ').collect();
    assert_eq!(w.len(), 4, "field b: {b:?}");
    let (base_seq, base_updated): (u64, u64) = (w[0].parse().unwrap(), w[1].parse().unwrap());
    let s = String::from_utf8(cli_bytes(port, &["HGET", &key, "s"])).expect("s is UTF-8");
    let (prefix, base) = s.split_once('\n').expect("s is a state message");
    assert_eq!(prefix, format!("r {}", w[2]), "s names the publish id of b");
    let log = cli_bytes(port, &["GET", &format!("msl:{name}")]);
    let list = entries(&log);
    let mut state = base.to_string();
    for e in &list {
        state = missionstream::delta::apply(&state, e.delta, 64 << 20)
            .unwrap_or_else(|err| panic!("an entry of the log of {name} applies: {err:?}"));
    }
    let (seq, updated_ms, id) = match list.last() {
        None => (base_seq, base_updated, w[2].to_string()),
        Some(e) => {
            let p = String::from_utf8(cli_bytes(port, &["HGET", &key, "p"])).unwrap();
            assert_eq!(p.len(), 16, "field p: {p:?}");
            (e.seq, base_updated + e.ms, format!("{p}{:0>16}", e.counter))
        }
    };
    Some(Newest {
        seq,
        updated_ms,
        id,
        state,
        entries: list.len(),
        log_bytes: log.len(),
        base_seq,
        base: base.to_string(),
    })
}

/// Writes the newest state of stream `name` by hand, as an operator (or a
/// test) would: the base `s`/`b` and no log.
pub fn write_state(port: u16, name: &str, seq: u64, id: &str, state: &str) {
    let key = format!("stream:{name}");
    let b = format!("{seq} {} {id} {id}", now_ms());
    let s = format!("r {id}\n{state}");
    let out = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(["HSET", &key, "s", &s, "b", &b])
        .output()
        .unwrap();
    assert!(out.status.success());
    cli_bytes(port, &["DEL", &format!("msl:{name}")]);
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A reply of Redis.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Nil,
    Int(i64),
    Str(Vec<u8>),
    Status(String),
    Error(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn str(&self) -> String {
        match self {
            Value::Str(b) => String::from_utf8_lossy(b).into_owned(),
            Value::Int(i) => i.to_string(),
            Value::Status(s) | Value::Error(s) => s.clone(),
            other => format!("{other:?}"),
        }
    }
    pub fn int(&self) -> i64 {
        match self {
            Value::Int(i) => *i,
            other => panic!("an integer, got {other:?}"),
        }
    }
    pub fn items(&self) -> &[Value] {
        match self {
            Value::Array(v) => v,
            other => panic!("an array, got {other:?}"),
        }
    }
    /// The error text, or panics.
    pub fn err(&self) -> &str {
        match self {
            Value::Error(e) => e,
            other => panic!("an error, got {other:?}"),
        }
    }
}

/// A plain RESP connection to Redis (binary safe both ways), for the raw
/// calls of the tests.
pub struct Resp {
    r: std::io::BufReader<std::net::TcpStream>,
}

impl Resp {
    pub fn connect(port: u16) -> Resp {
        let s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("Redis is up");
        s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
            .unwrap();
        Resp {
            r: std::io::BufReader::new(s),
        }
    }

    pub fn call<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Value {
        use std::io::Write;
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            let a = a.as_ref();
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        self.r.get_mut().write_all(&out).unwrap();
        self.read()
    }

    /// The next value Redis pushes (a subscription's message), or None
    /// when none comes within `timeout`.
    pub fn next_within(&mut self, timeout: std::time::Duration) -> Option<Value> {
        use std::io::BufRead;
        self.r.get_ref().set_read_timeout(Some(timeout)).unwrap();
        let ready = matches!(self.r.fill_buf(), Ok(b) if !b.is_empty());
        self.r
            .get_ref()
            .set_read_timeout(Some(std::time::Duration::from_secs(60)))
            .unwrap();
        ready.then(|| self.read())
    }

    fn line(&mut self) -> String {
        use std::io::BufRead;
        let mut l = String::new();
        self.r.read_line(&mut l).unwrap();
        l.trim_end_matches("\r\n").to_string()
    }

    fn read(&mut self) -> Value {
        use std::io::Read;
        let l = self.line();
        let (t, rest) = l.split_at(1);
        match t {
            "+" => Value::Status(rest.to_string()),
            "-" => Value::Error(rest.to_string()),
            ":" => Value::Int(rest.parse().unwrap()),
            "$" => {
                let n: i64 = rest.parse().unwrap();
                if n < 0 {
                    return Value::Nil;
                }
                let mut b = vec![0; n as usize + 2];
                self.r.read_exact(&mut b).unwrap();
                b.truncate(n as usize);
                Value::Str(b)
            }
            "*" => {
                let n: i64 = rest.parse().unwrap();
                if n < 0 {
                    return Value::Nil;
                }
                Value::Array((0..n).map(|_| self.read()).collect())
            }
            _ => panic!("a RESP reply, got {l:?}"),
        }
    }
}

/// The framed body of the functions that take one.
pub fn framed(fields: &[&[u8]]) -> Vec<u8> {
    let head: Vec<String> = fields[..fields.len() - 1]
        .iter()
        .map(|f| f.len().to_string())
        .collect();
    let mut b = head.join(" ").into_bytes();
    b.push(b'\n');
    for f in fields {
        b.extend_from_slice(f);
    }
    b
}

fn hex(n: usize) -> String {
    let mut s = String::new();
    while s.len() < n {
        s.push_str(&format!("{:032x}", super::rand_u128()));
    }
    s.truncate(n);
    s
}

/// A stream led by raw calls of the functions (no library): what a client
/// written from docs/PROTOCOL.md sends.
pub struct RawLeader {
    pub redis: Resp,
    pub name: String,
    pub token: String,
    pub channel: String,
    /// The lead prefix of publish ids and the publish counter.
    pub lead: String,
    pub counter: u64,
    /// The stored state as the last acknowledged publish left it.
    pub seq: u64,
    pub id: String,
    pub state: String,
    pub pw_key: String,
}

pub const VERSION: &str = missionstream::protocol::PROTOCOL_VERSION;

impl RawLeader {
    /// ms_start of stream `name` (keys made up: the functions never see
    /// secrets, only derived keys).
    pub fn start(port: u16, name: &str, ttl: u64) -> RawLeader {
        let mut redis = Resp::connect(port);
        let (pw_key, code_key, salt, seed, token) = (hex(64), hex(64), hex(32), hex(32), hex(32));
        let key = format!("stream:{name}");
        let log = format!("msl:{name}");
        let ttl = ttl.to_string();
        let body = framed(&[
            pw_key.as_bytes(),
            code_key.as_bytes(),
            salt.as_bytes(),
            seed.as_bytes(),
            token.as_bytes(),
        ]);
        let r = redis.call(&[
            b"FCALL".as_slice(),
            b"ms_start",
            b"3",
            key.as_bytes(),
            b"streams",
            log.as_bytes(),
            VERSION.as_bytes(),
            b"st4rt",
            b"1000",
            ttl.as_bytes(),
            b"pbkdf2-sha256",
            b"100000",
            &body,
        ]);
        assert_eq!(
            r,
            Value::Array(vec![Value::Str(b"st4rt".to_vec())]),
            "ms_start"
        );
        RawLeader {
            redis,
            name: name.to_string(),
            token,
            channel: sha1_hex(format!("channel:{seed}:{name}").as_bytes()),
            lead: hex(16),
            counter: 0,
            seq: 0,
            id: "-".into(),
            state: "{}".into(),
            pw_key,
        }
    }

    pub fn keys(&self) -> [String; 3] {
        [
            format!("stream:{}", self.name),
            "streams".into(),
            format!("msl:{}", self.name),
        ]
    }

    /// The next publish id of this lead.
    pub fn next_id(&mut self) -> String {
        self.counter += 1;
        format!("{}{:016x}", self.lead, self.counter)
    }

    /// ms_publish with every part given (a test may get any of them
    /// wrong); the reply.
    #[allow(clippy::too_many_arguments)]
    pub fn publish_raw(
        &mut self,
        id: &str,
        floor: &str,
        kind: &str,
        base_seq: &str,
        base_id: &str,
        tag: &str,
        sealed: &str,
        body: &[u8],
    ) -> Value {
        let [key, index, log] = self.keys();
        self.redis.call(&[
            b"FCALL".as_slice(),
            b"ms_publish",
            b"3",
            key.as_bytes(),
            index.as_bytes(),
            log.as_bytes(),
            VERSION.as_bytes(),
            b"pub1",
            id.as_bytes(),
            floor.as_bytes(),
            kind.as_bytes(),
            base_seq.as_bytes(),
            base_id.as_bytes(),
            tag.as_bytes(),
            sealed.as_bytes(),
            body,
        ])
    }

    /// A well-formed publish of `body` (sealed for it); the reply.
    pub fn publish_body(
        &mut self,
        id: &str,
        kind: &str,
        base_seq: &str,
        base_id: &str,
        body: &[u8],
    ) -> Value {
        let floor = self.seq.to_string();
        let sealed = seal_lead(
            &self.token,
            &lead_hash(&self.token),
            id,
            kind,
            base_seq,
            base_id,
            &floor,
            body.len(),
        );
        let tag = channel_tag(&self.channel);
        self.publish_raw(id, &floor, kind, base_seq, base_id, &tag, &sealed, body)
    }

    fn stored(&mut self, r: &Value, id: &str, state: &str) -> Value {
        if let Value::Array(v) = r {
            self.seq = v[1].int() as u64;
            assert_eq!(v[2].str(), id, "the stored publish id");
            self.id = id.to_string();
            self.state = state.to_string();
        }
        r.clone()
    }

    /// Publishes `state` in full; the reply (the state is then the stored one).
    pub fn full(&mut self, state: &str) -> Value {
        let id = self.next_id();
        let body = format!("r {id}\n{state}");
        let r = self.publish_body(&id, "full", "-", "-", body.as_bytes());
        self.stored(&r, &id, state)
    }

    /// Publishes `state` as a delta against the stored one; the reply.
    pub fn delta(&mut self, state: &str) -> Value {
        let id = self.next_id();
        let d = missionstream::delta::create(&self.state, state);
        let (seq, base) = (self.seq.to_string(), self.id.clone());
        let r = self.publish_body(&id, "delta", &seq, &base, d.as_bytes());
        self.stored(&r, &id, state)
    }

    /// ms_snapshot with `have`: (seq, updated_ms, hb_ms, updated age, heard
    /// age, state message).
    pub fn snapshot(&mut self, have: &str) -> (u64, u64, u64, i64, i64, Vec<u8>) {
        let [key, _, log] = self.keys();
        let body = framed(&[self.channel.as_bytes()]);
        let r = self.redis.call(&[
            b"FCALL_RO".as_slice(),
            b"ms_snapshot",
            b"2",
            key.as_bytes(),
            log.as_bytes(),
            VERSION.as_bytes(),
            b"sn4p",
            have.as_bytes(),
            &body,
        ]);
        let v = r.items();
        assert_eq!(v.len(), 7, "ms_snapshot: {r:?}");
        assert_eq!(v[0].str(), "sn4p");
        let Value::Str(state) = &v[6] else {
            panic!("a state message: {r:?}")
        };
        (
            v[1].int() as u64,
            v[2].int() as u64,
            v[3].int() as u64,
            v[4].int(),
            v[5].int(),
            state.clone(),
        )
    }

    /// ms_heartbeat (a write of the leader's); the reply.
    pub fn heartbeat(&mut self) -> Value {
        let [key, _, log] = self.keys();
        let body = framed(&[self.token.as_bytes(), self.channel.as_bytes()]);
        self.redis.call(&[
            b"FCALL".as_slice(),
            b"ms_heartbeat",
            b"2",
            key.as_bytes(),
            log.as_bytes(),
            VERSION.as_bytes(),
            b"he4rt",
            b"1000",
            &body,
        ])
    }
}

/// A raw replica of a Redis: a socket that asks for a full resync (PSYNC),
/// skips the snapshot, and keeps every command of the replication stream
/// after it, as Redis sends them to its replicas.
pub struct RawReplica {
    commands: std::sync::Arc<std::sync::Mutex<Vec<Vec<Vec<u8>>>>>,
    stream: std::net::TcpStream,
}

impl RawReplica {
    pub fn attach(port: u16) -> RawReplica {
        use std::io::{BufRead, Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("Redis is up");
        s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
            .unwrap();
        s.write_all(b"PSYNC ? -1\r\n").unwrap();
        let mut r = std::io::BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.starts_with("+FULLRESYNC"), "{line:?}");
        // Newlines (keepalives while the snapshot is made), then
        // "$<length>\r\n" and the snapshot, with no CRLF after it.
        let n: usize = loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            if let Some(n) = line.trim_end().strip_prefix('$') {
                break n.parse().unwrap();
            }
            assert!(line.trim().is_empty(), "{line:?}");
        };
        let mut rdb = vec![0u8; n];
        r.read_exact(&mut rdb).unwrap();
        r.get_ref().set_read_timeout(None).unwrap();
        let commands = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = commands.clone();
        std::thread::spawn(move || {
            while let Some(c) = read_command(&mut r) {
                kept.lock().unwrap().push(c);
            }
        });
        RawReplica {
            commands,
            stream: s,
        }
    }

    /// The commands received since the last call.
    pub fn take(&self) -> Vec<Vec<Vec<u8>>> {
        std::mem::take(&mut *self.commands.lock().unwrap())
    }

    /// Waits until a command whose arguments include `marker` came (a
    /// write made after the ones of interest, so that they all came),
    /// then returns every command received since the last call, the
    /// marker's included.
    pub fn take_until(&self, marker: &[u8], timeout: std::time::Duration) -> Vec<Vec<Vec<u8>>> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            {
                let c = self.commands.lock().unwrap();
                if c.iter().any(|c| c.iter().any(|a| a == marker)) {
                    drop(c);
                    return self.take();
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the marker came in the replication stream"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

impl Drop for RawReplica {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// One command of a replication stream (`*<n>` and n bulk strings); None
/// at its end.
fn read_command(r: &mut impl std::io::BufRead) -> Option<Vec<Vec<u8>>> {
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if !line.trim().is_empty() {
            break;
        }
    }
    let n: usize = line.trim_end().strip_prefix('*')?.parse().ok()?;
    let mut args = Vec::with_capacity(n);
    for _ in 0..n {
        line.clear();
        r.read_line(&mut line).ok()?;
        let len: usize = line.trim_end().strip_prefix('$')?.parse().ok()?;
        let mut a = vec![0u8; len + 2];
        r.read_exact(&mut a).ok()?;
        a.truncate(len);
        args.push(a);
    }
    Some(args)
}

/// The commands' names, upper case.
pub fn command_names(commands: &[Vec<Vec<u8>>]) -> Vec<String> {
    commands
        .iter()
        .map(|c| String::from_utf8_lossy(&c[0]).to_uppercase())
        .collect()
}
