//! The wire protocol, free of I/O: argument limits, URL and body encoding,
//! Webdis replies, channel messages and the subscription stream splitter.
//! See docs/PROTOCOL.md.

use crate::error::{Error, Kind, Result, Status};
use serde_json::Value;

/// Version of the protocol between this library and lua/missionstream.lua.
pub const PROTOCOL_VERSION: &str = "10";
/// Longest stream name, in bytes.
pub const MAX_NAME: usize = 256;
/// Longest password or leader code, in bytes.
pub const MAX_SECRET: usize = 1024;
/// Largest state, in bytes.
pub const MAX_STATE: usize = 8 * 1024 * 1024;
/// Largest JSON object accepted on a subscription: a state of MAX_STATE
/// bytes escaped by Webdis (at most 6 bytes a byte) plus the envelope.
pub const MAX_SUBSCRIPTION_OBJECT: usize = 6 * MAX_STATE + 64 * 1024;
/// Key of the set of live stream names.
pub const INDEX_KEY: &str = "streams";

/// The command to load the functions library, for error messages.
pub const LOAD_HINT: &str =
    "load it with: redis-cli -x FUNCTION LOAD REPLACE < lua/missionstream.lua";

/// Unicode's bidirectional formatting characters (Bidi_Control): in a name
/// they could make it look like another on an operator's screen.
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// The channel of a stream: SHA-1 (lowercase hex) of
/// `"channel:" <seed> ":" <name>`, as the functions make it at ms_start
/// from the seed the starting client sends. A stream can publish only on
/// its own: another name would need a SHA-1 preimage.
pub fn channel_of(seed: &str, name: &str) -> String {
    use sha1::{Digest, Sha1};
    let mut h = Sha1::new();
    h.update(b"channel:");
    h.update(seed.as_bytes());
    h.update(b":");
    h.update(name.as_bytes());
    hex(&h.finalize())
}

/// Opens a secret that a reply carries sealed for its caller (ms_connect,
/// ms_reconnect: the channel): 40 lowercase hex digits XORed with
/// SHA-1(`"seal:" <derived key sent> ":" <request nonce>`). None when the
/// value is not 40 lowercase hex digits.
pub fn open_sealed(sealed: &str, key: &str, nonce: &str) -> Option<String> {
    use sha1::{Digest, Sha1};
    let sealed = unhex(sealed)?;
    if sealed.len() != 20 {
        return None;
    }
    let mut h = Sha1::new();
    h.update(b"seal:");
    h.update(key.as_bytes());
    h.update(b":");
    h.update(nonce.as_bytes());
    let mask = h.finalize();
    let open: Vec<u8> = sealed.iter().zip(mask.iter()).map(|(a, b)| a ^ b).collect();
    Some(hex(&open))
}

/// SHA-1 of the concatenated parts, as 40 lowercase hex digits.
fn sha1hex(parts: &[&[u8]]) -> String {
    use sha1::{Digest, Sha1};
    let mut h = Sha1::new();
    for p in parts {
        h.update(p);
    }
    hex(&h.finalize())
}

/// The tag of a stream's channel that ms_publish carries instead of the
/// channel: the first 16 hex digits of SHA-1(`"tag:" <channel>`).
pub fn channel_tag(channel: &str) -> String {
    let mut tag = sha1hex(&[b"tag:", channel.as_bytes()]);
    tag.truncate(16);
    tag
}

/// The lead token sealed for one publish, as ms_publish carries it in its
/// path: the token's 32 hex digits XORed, digit by digit, with the first
/// 32 hex digits of SHA-1(`"lead:" <lead_hash> ":" <publish id> ":" <kind>
/// ":" <base seq> ":" <base id> ":" <floor> ":" <body length>`), where
/// `lead_hash` is SHA-1 hex of the token (what the record keeps). A seal
/// is good only for that publish id, kind, base, floor and body length.
/// None when the token is not 32 hex digits.
pub fn seal_lead(
    token: &str,
    id: &str,
    kind: &str,
    base_seq: &str,
    base_id: &str,
    floor: u64,
    body_len: usize,
) -> Option<String> {
    let digit = |c: u8| (c as char).to_digit(16);
    if token.len() != 32 || !token.bytes().all(|c| digit(c).is_some()) {
        return None;
    }
    let lead_hash = sha1hex(&[token.as_bytes()]);
    let params = format!("{id}:{kind}:{base_seq}:{base_id}:{floor}:{body_len}");
    let mask = sha1hex(&[b"lead:", lead_hash.as_bytes(), b":", params.as_bytes()]);
    token
        .bytes()
        .zip(mask.bytes())
        .map(|(t, m)| {
            let x = digit(t)? ^ digit(m)?;
            char::from_digit(x, 16)
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lowercase hex digits to bytes; None for anything else.
fn unhex(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if b.len() % 2 != 0 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    b.chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

/// Checks a stream name: 1-256 bytes of UTF-8 without control characters
/// or bidirectional formatting characters.
pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid("the stream name is empty"));
    }
    if name.len() > MAX_NAME {
        return Err(Error::invalid(format!(
            "the stream name is {} bytes long; the limit is {MAX_NAME}",
            name.len()
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::invalid(
            "the stream name contains a control character",
        ));
    }
    if name.chars().any(is_bidi_control) {
        return Err(Error::invalid(
            "the stream name contains a bidirectional formatting character (U+061C, U+200E-U+200F, U+202A-U+202E, U+2066-U+2069)",
        ));
    }
    Ok(())
}

/// Checks a password (0-1024 bytes).
pub fn check_password(pw: &str) -> Result<()> {
    if pw.len() > MAX_SECRET {
        return Err(Error::invalid(format!(
            "the password is {} bytes long; the limit is {MAX_SECRET}",
            pw.len()
        )));
    }
    Ok(())
}

/// Checks a leader code (1-1024 bytes).
pub fn check_leader_code(code: &str) -> Result<()> {
    if code.is_empty() {
        return Err(Error::invalid("the leader code is empty"));
    }
    if code.len() > MAX_SECRET {
        return Err(Error::invalid(format!(
            "the leader code is {} bytes long; the limit is {MAX_SECRET}",
            code.len()
        )));
    }
    Ok(())
}

/// Refuses a state of more than MAX_STATE bytes.
fn check_state_len(state: &[u8]) -> Result<()> {
    if state.len() > MAX_STATE {
        return Err(Error::new(
            Status::MS_ERR_TOO_LARGE,
            format!(
                "the state is {} bytes; the limit is {MAX_STATE} bytes (8 MiB)",
                state.len()
            ),
        ));
    }
    Ok(())
}

/// Checks a state: valid UTF-8 of at most MAX_STATE bytes.
pub fn check_state(state: &[u8]) -> Result<&str> {
    check_state_len(state)?;
    let text = std::str::from_utf8(state).map_err(|e| {
        Error::invalid(format!(
            "the state is not valid UTF-8 (at byte {})",
            e.valid_up_to()
        ))
    })?;
    // Webdis cuts strings at a NUL when it writes JSON: such a state would
    // reach followers truncated.
    // (`contains` finds a byte with memchr, many bytes at a time; the
    // position is looked for only when there is one.)
    if state.contains(&0) {
        let at = state.iter().position(|&b| b == 0).unwrap_or(0);
        return Err(Error::invalid(format!(
            "the state contains a NUL character (U+0000) at byte {at}, which Webdis cannot deliver; escape it (JSON: \\u0000)"
        )));
    }
    Ok(text)
}

/// `check_state` and a copy of the state, in one pass: the state is read
/// a slice at a time, each slice checked (UTF-8 and NUL together, eight
/// bytes at a time while they are ASCII) and copied while it is in the
/// cache, rather than read three times (UTF-8, NUL, copy). The errors
/// are `check_state`'s.
pub fn check_state_owned(state: &[u8]) -> Result<String> {
    // A slice of the state the cache keeps between its check and its copy.
    const SLICE: usize = 16 * 1024;
    check_state_len(state)?;
    let mut out = Vec::with_capacity(state.len());
    let mut at = 0;
    while at < state.len() {
        let Some(end) = text_run(state, at, (at + SLICE).min(state.len())) else {
            // Not UTF-8, or a NUL: check_state tells which, and where.
            return check_state(state).map(str::to_owned);
        };
        out.extend_from_slice(&state[at..end]);
        at = end;
    }
    // SAFETY: `out` is runs of `state` that `text_run` found valid UTF-8,
    // each ending at a character boundary.
    Ok(unsafe { String::from_utf8_unchecked(out) })
}

/// Checks `b` from `from` (a character boundary) to at least `to`: the
/// end of the run checked (a character boundary at or past `to`), or
/// None at a byte that is no valid UTF-8 or a NUL. ASCII without NUL goes
/// 32 bytes at a time (a byte with its high bit set or a zero byte, in
/// any of four words at once); the rest 64 bytes at a time through the
/// standard library's check.
fn text_run(b: &[u8], from: usize, to: usize) -> Option<usize> {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    const ONES: u64 = 0x0101_0101_0101_0101;
    let mut i = from;
    while i < to {
        while i + 32 <= to {
            let mut seen = 0u64;
            for c in b[i..i + 32].chunks_exact(8) {
                let w = u64::from_le_bytes(c.try_into().unwrap());
                // High bits of non-ASCII bytes; of zero bytes when every
                // byte is ASCII (`w - 1` borrows into a zero byte only).
                seen |= w | (w.wrapping_sub(ONES) & !w);
            }
            if seen & HIGH != 0 {
                break;
            }
            i += 32;
        }
        if i >= to {
            break;
        }
        let e = (i + 64).min(b.len());
        let n = match std::str::from_utf8(&b[i..e]) {
            Ok(_) => e - i,
            // A character cut by the window's end (not the state's).
            Err(err) if err.error_len().is_none() && e < b.len() => err.valid_up_to(),
            Err(_) => return None,
        };
        if b[i..i + n].contains(&0) {
            return None;
        }
        i += n;
    }
    Some(i)
}

/// Percent-encodes every byte outside `A-Za-z0-9_-`, so that Webdis sees
/// neither a `/` (argument separator), a `.ext` (output format) nor a `+`.
pub fn encode_path_arg(arg: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in arg.as_bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        }
    }
}

/// Decodes `%XX` escapes (used for the user:password of a URL).
pub fn percent_decode(s: &str) -> Result<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| Error::invalid("bad %-escape in the URL's user:password"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Error::invalid("the URL's user:password is not UTF-8"))
}

/// Standard base64 (for HTTP basic auth).
pub fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let n = chunk.len();
        let v = (chunk[0] as u32) << 16
            | (*chunk.get(1).unwrap_or(&0) as u32) << 8
            | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= n {
                out.push(T[(v >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Frames fields into one request body: `"<len1> <len2> ...\n"` (the
/// lengths of all fields but the last), then the fields back to back. The
/// last field (a state) travels as it is, unescaped. A body is never empty,
/// so Webdis never drops it.
pub fn frame_body(fields: &[&[u8]]) -> Vec<u8> {
    let total: usize = fields.iter().map(|f| f.len()).sum();
    let mut body = Vec::with_capacity(total + 12 * fields.len() + 1);
    if let Some((_, init)) = fields.split_last() {
        for (i, f) in init.iter().enumerate() {
            if i > 0 {
                body.push(b' ');
            }
            body.extend_from_slice(f.len().to_string().as_bytes());
        }
    }
    body.push(b'\n');
    for f in fields {
        body.extend_from_slice(f);
    }
    body
}

/// Turns a Redis error text returned by the functions library (or Redis)
/// into an Error.
pub fn redis_error(text: &str) -> Error {
    let (code, rest) = text.split_once(' ').unwrap_or((text, ""));
    match code {
        "MSEXISTS" => Error::of(Kind::Exists, "a stream with this name exists already"),
        "MSNOTFOUND" => Error::of(
            Kind::NotFound,
            "no such stream (stopped, expired or never started)",
        ),
        "MSBADPASSWORD" => Error::new(
            Status::MS_ERR_BAD_PASSWORD,
            "wrong password for this stream",
        ),
        "MSBADCODE" => Error::new(
            Status::MS_ERR_BAD_LEADER_CODE,
            "wrong leader code for this stream",
        ),
        "MSNOTLEADER" => Error::new(
            Status::MS_ERR_NOT_LEADING,
            "this client no longer leads the stream: another client took over the lead (ms_reconnect)",
        ),
        "MSVERSION" => Error::of(
            Kind::Version,
            format!("the Redis functions library is of another version: {rest}"),
        ),
        "MSTHROTTLED" => Error::new(
            Status::MS_ERR_THROTTLED,
            format!("the stream refuses password and leader code checks for a moment: {rest}"),
        ),
        "MSBASE" => Error::of(
            Kind::BaseMismatch,
            format!("the stored state is not the base of the delta: {rest}"),
        ),
        "MSARG" => Error::of(
            Kind::Refused,
            format!("the functions library refused the request: {rest}"),
        ),
        // A quota of the deployment (QUOTAS in lua/missionstream.lua): it
        // may free up, so a leader keeps its newest state and tries again.
        "MSQUOTA" => Error::of(
            Kind::Quota,
            format!("refused by a quota of the deployment: {rest}"),
        ),
        "OOM" => Error::new(
            Status::MS_ERR_SERVER,
            format!("Redis is out of memory (its maxmemory is reached): nothing was stored ({text})"),
        ),
        _ if text.contains("Function not found") || text.contains("No such function") => {
            Error::new(
                Status::MS_ERR_SERVER,
                format!(
                "the missionstream functions library is not loaded in Redis ({text}); {LOAD_HINT}"
            ),
            )
        }
        _ if text.starts_with("READONLY") => Error::new(
            Status::MS_ERR_UNAVAILABLE,
            format!("this Redis is a read-only replica, not the primary: {text}"),
        ),
        _ if refusal_of(text).is_some() => Error::new(
            Status::MS_ERR_UNAVAILABLE,
            format!("Redis is not ready: {text}"),
        ),
        _ => Error::new(Status::MS_ERR_SERVER, format!("Redis error: {text}")),
    }
}

/// Interprets a Webdis reply to `/<command>/...`: HTTP status and body.
/// Returns the command's value, or the error it stands for.
pub fn webdis_reply(command: &str, http_status: u16, body: &[u8]) -> Result<Value> {
    let value = webdis_value(command, http_status, body)?;
    match error_text(&value) {
        Some(text) => Err(redis_error(text)),
        None => Ok(value),
    }
}

/// How a reply to a function call relates to the call.
#[derive(Debug)]
pub enum Answer {
    /// It answers the call: the reply without its nonce, or the error it
    /// reports (errors of Redis itself and of HTTP carry no nonce).
    Ours(Result<Value>),
    /// It is not this call's reply (it names another request, or is not a
    /// reply to the command at all): Webdis wrote it to the wrong socket.
    /// Says what it is.
    NotOurs(String),
    /// The node did not run the call, for a reason another node (or the
    /// same one a moment later) may not have: the error, and why.
    Refused(Refusal, Error),
}

/// Why a node did not run a call (see `Answer::Refused`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Its Redis is a read-only replica (`READONLY`): writes go to the
    /// primary.
    Replica,
    /// Its Redis cannot take the call just now: loading its data
    /// (`LOADING`), cut from its primary (`MASTERDOWN`), short of
    /// replicas for `min-replicas-to-write` (`NOREPLICAS`), busy with a
    /// script (`BUSY`), or asking to try again (`TRYAGAIN`).
    NotReady,
    /// Webdis cannot reach its Redis (HTTP 503 and other 5xx).
    Down,
}

/// The refusal a Redis error stands for, if it is one.
pub fn refusal_of(text: &str) -> Option<Refusal> {
    let code = text.split(' ').next().unwrap_or("");
    match code {
        "READONLY" => Some(Refusal::Replica),
        "LOADING" | "MASTERDOWN" | "NOREPLICAS" | "BUSY" | "TRYAGAIN" => Some(Refusal::NotReady),
        _ => None,
    }
}

/// Interprets a Webdis reply to a function call that carried `nonce`: the
/// functions answer `[nonce, ...]` and name the nonce as the second word
/// of their errors (`-` when they could not read it; MSVERSION names none).
pub fn function_reply(command: &str, http_status: u16, body: &[u8], nonce: &str) -> Answer {
    if let Some(e) = status_error(command, http_status) {
        if http_status >= 500 {
            return Answer::Refused(Refusal::Down, e);
        }
        return Answer::Ours(Err(e));
    }
    let value = match json_value(command, body) {
        Ok(v) => v,
        Err(e) => return Answer::NotOurs(format!("something else than its reply ({})", e.message)),
    };
    if let Some(text) = error_text(&value) {
        let mut words = text.splitn(3, ' ');
        let code = words.next().unwrap_or("");
        if code.starts_with("MS") && code != "MSVERSION" {
            let named = words.next().unwrap_or("");
            if named != nonce && named != "-" {
                return Answer::NotOurs(format!("an error naming another request ({text})"));
            }
            let rest = words.next().unwrap_or("");
            return Answer::Ours(Err(redis_error(&format!("{code} {rest}"))));
        }
        if let Some(why) = refusal_of(text) {
            return Answer::Refused(why, redis_error(text));
        }
        return Answer::Ours(Err(redis_error(text)));
    }
    match value {
        Value::Array(mut a) if a.first().and_then(Value::as_str) == Some(nonce) => {
            a.remove(0);
            Answer::Ours(Ok(Value::Array(a)))
        }
        _ => Answer::NotOurs("a reply naming another request".into()),
    }
}

/// The text of a Redis error reply (`[false, "ERR ..."]` in Webdis).
fn error_text(value: &Value) -> Option<&str> {
    match value {
        Value::Array(a) if a.len() == 2 && a[0] == Value::Bool(false) => a[1].as_str(),
        _ => None,
    }
}

/// The value of a Webdis reply `{"<command>": value}` with HTTP 200;
/// other HTTP statuses as the errors they stand for.
fn webdis_value(command: &str, http_status: u16, body: &[u8]) -> Result<Value> {
    match status_error(command, http_status) {
        Some(e) => Err(e),
        None => json_value(command, body),
    }
}

/// The error an HTTP status other than 200 stands for.
fn status_error(command: &str, http_status: u16) -> Option<Error> {
    Some(match http_status {
        200 => return None,
        401 | 403 => Error::new(
            Status::MS_ERR_FORBIDDEN,
            format!("Webdis refused {command} (HTTP {http_status}): check its ACL (deploy/webdis.json enables FCALL, FCALL_RO, SUBSCRIBE) and the URL's user:password"),
        ),
        503 => Error::new(
            Status::MS_ERR_UNAVAILABLE,
            "Webdis answered 503: it cannot reach Redis",
        ),
        429 => Error::new(
            Status::MS_ERR_THROTTLED,
            format!("the proxy in front of Webdis refused {command}: too many requests or connections from this address (HTTP 429)"),
        ),
        404 | 405 => Error::new(
            Status::MS_ERR_PROTOCOL,
            format!("HTTP {http_status} from the server: is the URL a Webdis endpoint?"),
        ),
        s if s >= 500 => Error::new(
            Status::MS_ERR_UNAVAILABLE,
            format!("Webdis failed with HTTP {s}"),
        ),
        s => Error::new(
            Status::MS_ERR_PROTOCOL,
            format!("unexpected HTTP {s} from Webdis"),
        ),
    })
}

/// The value of a Webdis reply body `{"<command>": value}`.
fn json_value(command: &str, body: &[u8]) -> Result<Value> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        Error::new(
            Status::MS_ERR_PROTOCOL,
            format!("Webdis sent a reply that is not JSON ({e})"),
        )
    })?;
    let value = match v {
        Value::Object(mut m) if m.len() == 1 => match m.remove(command) {
            Some(v) => v,
            None => {
                return Err(Error::new(
                    Status::MS_ERR_PROTOCOL,
                    format!("Webdis reply does not answer {command}"),
                ))
            }
        },
        _ => {
            return Err(Error::new(
                Status::MS_ERR_PROTOCOL,
                "Webdis reply is not a one-key JSON object",
            ))
        }
    };
    Ok(value)
}

/// Reads an integer from a reply element (integer or decimal string).
pub fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Reads an integer from a reply element (integer or decimal string).
pub fn as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

pub fn protocol_error(what: &str) -> Error {
    Error::new(
        Status::MS_ERR_PROTOCOL,
        format!("unexpected reply from the functions library to {what}; is lua/missionstream.lua of this version loaded?"),
    )
}

/// A message on a stream's channel.
#[derive(Debug, PartialEq, Eq)]
pub enum ChannelMessage {
    /// The header of a stored full state: `s <seq> <updated_ms> <publish id>`.
    StateHead {
        seq: u64,
        updated_ms: i64,
        id: String,
    },
    /// The body of a stored full state, `r <publish id>\n<state>`: the
    /// request body as the leader sent it. Paired with its header by the
    /// publish id, in either order.
    StateBody { id: String, state: String },
    /// A stored state, as a delta against the state of seq `base`.
    Delta {
        seq: u64,
        base: u64,
        updated_ms: i64,
        delta: String,
    },
    /// The leader's heartbeat, carrying its interval.
    Heartbeat { interval_ms: u64 },
    /// A follower's probe.
    Probe { nonce: String },
    /// The stream was stopped.
    Ended,
}

/// Parses a state message, `r <publish id>\n<state>`, as the channel's
/// `r` message and ms_snapshot's reply carry it (`r -\n{}` for the state
/// ms_start stores). Returns the publish id and the state, the state
/// taken out of `message` without a copy when the prefix is short.
/// None for anything else (no `r `, no newline, an id with a space or
/// empty).
pub fn parse_state_message(mut message: String) -> Option<(String, String)> {
    let rest = message.strip_prefix("r ")?;
    let nl = rest.find('\n')?;
    let id = &rest[..nl];
    if id.is_empty() || id.contains(' ') {
        return None;
    }
    let id = id.to_string();
    message.drain(..2 + nl + 1);
    Some((id, message))
}

/// Parses a channel message payload (see docs/PROTOCOL.md).
pub fn parse_channel_message(payload: String) -> Option<ChannelMessage> {
    let b = payload.as_bytes();
    match b.first()? {
        b's' => {
            let mut head = payload.strip_prefix("s ")?.split(' ');
            let seq = head.next()?.parse().ok()?;
            let updated_ms = head.next()?.parse().ok()?;
            let id = head.next()?;
            if id.is_empty() || id.contains('\n') || head.next().is_some() {
                return None;
            }
            Some(ChannelMessage::StateHead {
                seq,
                updated_ms,
                id: id.to_string(),
            })
        }
        b'r' => {
            let (id, state) = parse_state_message(payload)?;
            Some(ChannelMessage::StateBody { id, state })
        }
        b'd' => {
            let nl = payload.find('\n')?;
            let mut head = payload[..nl].split(' ').skip(1);
            let seq = head.next()?.parse().ok()?;
            let base = head.next()?.parse().ok()?;
            let updated_ms = head.next()?.parse().ok()?;
            let mut delta = payload;
            delta.drain(..nl + 1);
            Some(ChannelMessage::Delta {
                seq,
                base,
                updated_ms,
                delta,
            })
        }
        b'h' => Some(ChannelMessage::Heartbeat {
            interval_ms: payload.get(2..)?.parse().ok()?,
        }),
        b'p' => Some(ChannelMessage::Probe {
            nonce: payload.get(2..)?.to_string(),
        }),
        b'e' if payload == "e" => Some(ChannelMessage::Ended),
        _ => None,
    }
}

/// One object of a Webdis SUBSCRIBE stream.
#[derive(Debug, PartialEq, Eq)]
pub enum SubscriptionItem {
    /// `["subscribe", channel, count]`: the subscription is in place.
    Subscribed { channel: String },
    /// `["message", channel, payload]`.
    Message { channel: String, payload: String },
    /// Anything else Webdis may send (unsubscribe, ...).
    Other,
}

/// Parses one JSON object of a SUBSCRIBE stream.
pub fn parse_subscription_object(obj: &[u8]) -> Result<SubscriptionItem> {
    let bad = || {
        Error::new(
            Status::MS_ERR_PROTOCOL,
            "Webdis sent a subscription message the library does not understand",
        )
    };
    let v: Value = serde_json::from_slice(obj).map_err(|_| bad())?;
    let mut m = match v {
        Value::Object(m) => m,
        _ => return Err(bad()),
    };
    let a = match m.remove("SUBSCRIBE") {
        Some(Value::Array(a)) => a,
        _ => return Err(bad()),
    };
    let mut it = a.into_iter();
    let kind = it.next();
    let channel = it.next();
    let third = it.next();
    match (kind, channel, third) {
        (Some(Value::String(k)), Some(Value::String(channel)), _) if k == "subscribe" => {
            Ok(SubscriptionItem::Subscribed { channel })
        }
        (Some(Value::String(k)), Some(Value::String(channel)), Some(Value::String(payload)))
            if k == "message" =>
        {
            Ok(SubscriptionItem::Message { channel, payload })
        }
        (Some(Value::Bool(false)), Some(Value::String(text)), _) => Err(redis_error(&text)),
        _ => Ok(SubscriptionItem::Other),
    }
}

/// Splits Webdis' SUBSCRIBE stream (JSON objects back to back, with no
/// delimiter) into objects, incrementally: each byte is scanned once, so an
/// 8 MiB message arriving in many reads costs linear time.
#[derive(Default)]
pub struct ObjectSplitter {
    buf: Vec<u8>,
    /// Bytes of `buf` already scanned.
    scanned: usize,
    depth: usize,
    in_string: bool,
    escaped: bool,
}

impl ObjectSplitter {
    pub fn new() -> ObjectSplitter {
        ObjectSplitter::default()
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered that are not yet a whole object (after `next_object`
    /// returned `None`: the part of a message still arriving).
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next complete object, if one is buffered. Errors on bytes that
    /// cannot start an object and on objects over MAX_SUBSCRIPTION_OBJECT.
    pub fn next_object(&mut self) -> Result<Option<Vec<u8>>> {
        while self.scanned < self.buf.len() {
            let b = self.buf[self.scanned];
            self.scanned += 1;
            if self.depth == 0 {
                match b {
                    b'{' => {
                        // Drop what came before the object (white space).
                        self.buf.drain(..self.scanned - 1);
                        self.scanned = 1;
                        self.depth = 1;
                    }
                    b' ' | b'\r' | b'\n' | b'\t' => {}
                    _ => {
                        return Err(Error::new(
                            Status::MS_ERR_PROTOCOL,
                            "the subscription stream is not a sequence of JSON objects",
                        ))
                    }
                }
                continue;
            }
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                } else {
                    // The bulk of a message is one long string (the
                    // state): skip to its next quote or backslash.
                    self.scanned += quote_or_backslash(&self.buf[self.scanned..])
                        .unwrap_or(self.buf.len() - self.scanned);
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        let rest = self.buf.split_off(self.scanned);
                        let obj = std::mem::replace(&mut self.buf, rest);
                        self.scanned = 0;
                        return Ok(Some(obj));
                    }
                }
                _ => {}
            }
        }
        if self.depth == 0 {
            self.buf.clear();
            self.scanned = 0;
        } else if self.buf.len() > MAX_SUBSCRIPTION_OBJECT {
            return Err(Error::new(
                Status::MS_ERR_PROTOCOL,
                "a subscription message exceeds the size limit",
            ));
        }
        Ok(None)
    }
}

/// Position of the first `"` or `\\` in `s`, eight bytes at a time.
fn quote_or_backslash(s: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // Whether any byte of `w` is zero (exact as a yes/no answer).
    let has_zero = |w: u64| w.wrapping_sub(ONES) & !w & HIGHS != 0;
    let mut at = 0;
    for chunk in s.chunks_exact(8) {
        let w = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        if has_zero(w ^ (ONES * b'"' as u64)) || has_zero(w ^ (ONES * b'\\' as u64)) {
            break;
        }
        at += 8;
    }
    s[at..]
        .iter()
        .position(|&c| c == b'"' || c == b'\\')
        .map(|p| at + p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_args_keep_only_safe_bytes() {
        let mut s = String::new();
        encode_path_arg("stream:a/b.txt +%é_-Z9", &mut s);
        assert_eq!(s, "stream%3Aa%2Fb%2Etxt%20%2B%25%C3%A9_-Z9");
    }

    #[test]
    fn frames_put_the_state_last_unescaped() {
        assert_eq!(
            frame_body(&[b"pw", b"code", b"{\"a\":\"\n\"}"]),
            b"2 4\npwcode{\"a\":\"\n\"}"
        );
        assert_eq!(frame_body(&[b""]), b"\n");
        assert_eq!(frame_body(&[b"", b"x"]), b"0\nx");
    }

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"user:pa ss"), "dXNlcjpwYSBzcw==");
    }

    #[test]
    fn limits() {
        assert!(check_name("a").is_ok());
        assert!(check_name(&"x".repeat(256)).is_ok());
        assert_eq!(
            check_name(&"x".repeat(257)).unwrap_err().status,
            Status::MS_ERR_INVALID_ARGUMENT
        );
        assert!(check_name("").is_err());
        assert!(check_name("a\nb").is_err());
        assert!(check_password("").is_ok());
        assert!(check_password(&"p".repeat(1025)).is_err());
        assert!(check_leader_code("").is_err());
        assert_eq!(
            check_state(&vec![b'a'; MAX_STATE + 1]).unwrap_err().status,
            Status::MS_ERR_TOO_LARGE
        );
        assert!(check_state(&vec![b'a'; MAX_STATE]).is_ok());
        assert_eq!(
            check_state(b"\xff").unwrap_err().status,
            Status::MS_ERR_INVALID_ARGUMENT
        );
    }

    #[test]
    fn a_state_checked_and_copied_in_one_pass_is_check_states_verdict() {
        // The one-pass check and copy against check_state and a copy:
        // states of ASCII, 2-, 3- and 4-byte characters, a NUL, a stray
        // continuation byte, a cut character, an overlong form and a
        // surrogate, each at every place around the 32-byte steps, the
        // 64-byte windows and the 16 KiB slices.
        let same = |b: &[u8]| {
            let want = check_state(b).map(str::to_owned);
            let got = check_state_owned(b);
            match (got, want) {
                (Ok(g), Ok(w)) => assert_eq!(g, w),
                (Err(g), Err(w)) => {
                    assert_eq!((g.status, &g.message), (w.status, &w.message))
                }
                (g, w) => panic!("{g:?} against {w:?} for {} bytes", b.len()),
            }
        };
        let ascii: Vec<u8> = (0..40_000u32).map(|i| b' ' + (i * 7 % 90) as u8).collect();
        let multi = "aé✈𝄞".repeat(4000).into_bytes();
        let inserts: [&[u8]; 9] = [
            b"\0",
            b"\x00",
            &[0],
            &[0x80],
            &[0xC3],
            &[0xE2, 0x9C],
            &[0xC0, 0x80],
            &[0xED, 0xA0, 0x80],
            "é𝄞".as_bytes(),
        ];
        for base in [&ascii, &multi] {
            same(base);
            same(&base[..0]);
            for len in [1, 31, 32, 33, 63, 64, 65, 16_383, 16_384, 16_385] {
                same(&base[..len.min(base.len())]);
            }
            for at in [
                0, 1, 7, 8, 31, 32, 33, 62, 63, 64, 65, 127, 16_380, 16_383, 16_384, 16_385,
                16_400, 32_768, 39_990,
            ] {
                for put in inserts {
                    let mut b = base.clone();
                    b.splice(at..at, put.iter().copied());
                    same(&b);
                    // Also as the last bytes of the state.
                    same(&b[..at + put.len()]);
                }
            }
        }
        // A NUL and a bad byte: the bad byte is told first, as before.
        let mut b = ascii.clone();
        b[100] = 0;
        b[20_000] = 0xFF;
        assert!(check_state_owned(&b).unwrap_err().message.contains("UTF-8"));
        assert_eq!(
            check_state_owned(&vec![b'a'; MAX_STATE + 1])
                .unwrap_err()
                .status,
            Status::MS_ERR_TOO_LARGE
        );
        assert_eq!(
            check_state_owned(&vec![b'a'; MAX_STATE]).unwrap().len(),
            MAX_STATE
        );
    }

    #[test]
    fn refusals_the_crate_handles_apart_have_a_kind_and_its_status() {
        for (text, kind, status) in [
            (
                "MSBASE stored 7",
                Kind::BaseMismatch,
                Status::MS_ERR_PROTOCOL,
            ),
            ("MSARG bad delta", Kind::Refused, Status::MS_ERR_PROTOCOL),
            ("MSQUOTA streams", Kind::Quota, Status::MS_ERR_SERVER),
            ("MSVERSION 6", Kind::Version, Status::MS_ERR_SERVER),
            ("MSNOTFOUND", Kind::NotFound, Status::MS_ERR_NOT_FOUND),
            ("MSEXISTS", Kind::Exists, Status::MS_ERR_EXISTS),
            ("ERR Function not found", Kind::Other, Status::MS_ERR_SERVER),
        ] {
            let e = redis_error(text);
            assert_eq!((e.kind, e.status), (kind, status), "{text}");
            assert_eq!(e.is_base_mismatch(), kind == Kind::BaseMismatch, "{text}");
        }
        // Whatever its wording, a message is never taken for a kind.
        let e = Error::new(
            Status::MS_ERR_PROTOCOL,
            "the stored state is not the base of the delta",
        );
        assert!(!e.is_base_mismatch());
    }

    #[test]
    fn webdis_errors_map_to_statuses() {
        let r = webdis_reply(
            "FCALL",
            200,
            br#"{"FCALL":[false,"MSEXISTS the stream name is taken"]}"#,
        );
        assert_eq!(r.unwrap_err().status, Status::MS_ERR_EXISTS);
        let r = webdis_reply(
            "FCALL",
            200,
            br#"{"FCALL":[false,"ERR Function not found"]}"#,
        );
        let e = r.unwrap_err();
        assert_eq!(e.status, Status::MS_ERR_SERVER);
        assert!(e.message.contains("FUNCTION LOAD"), "{}", e.message);
        assert_eq!(
            webdis_reply("FCALL", 403, b"").unwrap_err().status,
            Status::MS_ERR_FORBIDDEN
        );
        assert_eq!(
            webdis_reply("FCALL", 503, b"").unwrap_err().status,
            Status::MS_ERR_UNAVAILABLE
        );
        assert_eq!(
            webdis_reply("FCALL", 200, b"<html>").unwrap_err().status,
            Status::MS_ERR_PROTOCOL
        );
        assert_eq!(
            webdis_reply("FCALL", 200, br#"{"FCALL":7}"#).unwrap(),
            Value::from(7)
        );
    }

    #[test]
    fn function_replies_must_name_their_request() {
        let ours = |body: &[u8]| match function_reply("FCALL", 200, body, "n1") {
            Answer::Ours(r) => Some(r),
            Answer::NotOurs(_) => None,
            Answer::Refused(why, e) => panic!("refused ({why:?}): {e}"),
        };
        // A value: the nonce first, stripped.
        assert_eq!(
            ours(br#"{"FCALL":["n1",7,"x"]}"#).unwrap().unwrap(),
            serde_json::json!([7, "x"])
        );
        // Another request's value, or a value without a nonce.
        assert!(ours(br#"{"FCALL":["n2",7,"x"]}"#).is_none());
        assert!(ours(br#"{"FCALL":7}"#).is_none());
        assert!(ours(br#"{"FCALL":[]}"#).is_none());
        assert!(ours(br#"{"FCALL":[7]}"#).is_none());
        // Errors of the functions name the nonce ("-": unreadable).
        let e = ours(br#"{"FCALL":[false,"MSNOTFOUND n1 no such stream"]}"#);
        assert_eq!(e.unwrap().unwrap_err().status, Status::MS_ERR_NOT_FOUND);
        let e = ours(br#"{"FCALL":[false,"MSARG - malformed request nonce"]}"#);
        assert_eq!(e.unwrap().unwrap_err().status, Status::MS_ERR_PROTOCOL);
        assert!(ours(br#"{"FCALL":[false,"MSNOTFOUND n2 no such stream"]}"#).is_none());
        assert!(ours(br#"{"FCALL":[false,"MSBADCODE"]}"#).is_none());
        // MSVERSION and Redis' own errors name none.
        let e = ours(br#"{"FCALL":[false,"MSVERSION the library speaks protocol 9"]}"#);
        let e = e.unwrap().unwrap_err();
        assert_eq!(e.status, Status::MS_ERR_SERVER);
        assert!(e.message.contains("protocol 9"), "{}", e.message);
        let e = ours(br#"{"FCALL":[false,"ERR Function not found"]}"#);
        assert_eq!(e.unwrap().unwrap_err().status, Status::MS_ERR_SERVER);
        // Not a reply to this command at all: a subscription's message, a
        // stray chunk, another command's reply.
        assert!(ours(b"").is_none());
        assert!(ours(
            br#"{"SUBSCRIBE":["message","c","s 1 2
{}"]}"#
        )
        .is_none());
        assert!(ours(br#"{"FCALL_RO":["n1"]}"#).is_none());
        assert!(ours(
            b"5d
{"
        )
        .is_none());
        // A node that did not run the call says why: another node may.
        let refused = |body: &[u8]| match function_reply("FCALL", 200, body, "n1") {
            Answer::Refused(why, e) => (why, e.status),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            refused(
                br#"{"FCALL":[false,"READONLY You can't write against a read only replica."]}"#
            ),
            (Refusal::Replica, Status::MS_ERR_UNAVAILABLE)
        );
        for text in [
            "LOADING Redis is loading the dataset in memory",
            "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
            "NOREPLICAS Not enough good replicas to write.",
            "TRYAGAIN later",
        ] {
            let body = format!(r#"{{"FCALL":[false,"{text}"]}}"#);
            assert_eq!(
                refused(body.as_bytes()),
                (Refusal::NotReady, Status::MS_ERR_UNAVAILABLE),
                "{text}"
            );
        }
        // HTTP errors are the call's.
        match function_reply("FCALL", 503, b"", "n1") {
            Answer::Refused(Refusal::Down, e) => assert_eq!(e.status, Status::MS_ERR_UNAVAILABLE),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn channel_and_sealed_value_test_vectors() {
        // docs/PROTOCOL.md, "Data model" and "Sealed values".
        let channel = channel_of("000102030405060708090a0b0c0d0e0f", "m1");
        assert_eq!(channel, "bdb9e7ae4e18af698d45214028be66ed5998a4f1");
        let key = "2e31d2dac861c0bc6459dd01f8116f6472f1c13ce752f8707851be9b9559a4fa";
        let sealed = "9ae98dd1a4b18439abe9c51f396e1287336f625d";
        assert_eq!(
            open_sealed(sealed, key, "5f3a0c1e9b7d22a40").as_deref(),
            Some(channel.as_str())
        );
        // Sealing is the same XOR.
        assert_eq!(
            open_sealed(&channel, key, "5f3a0c1e9b7d22a40").as_deref(),
            Some(sealed)
        );
        // Another nonce or key opens it to something else.
        assert_ne!(
            open_sealed(sealed, key, "5f3a0c1e9b7d22a41").as_deref(),
            Some(channel.as_str())
        );
        for bad in [
            "",
            "9AE98DD1A4B18439ABE9C51F396E1287336F625D",
            "zz",
            &sealed[..38],
        ] {
            assert_eq!(open_sealed(bad, key, "n"), None, "{bad}");
        }
    }

    #[test]
    fn names_with_bidi_controls_are_refused() {
        for c in [
            '\u{061C}', '\u{200E}', '\u{200F}', '\u{202A}', '\u{202E}', '\u{2066}', '\u{2069}',
        ] {
            let e = check_name(&format!("a{c}b")).unwrap_err();
            assert!(e.message.contains("bidirectional"), "{}", e.message);
        }
        for ok in ["a\u{2013}b", "\u{2065}", "\u{206A}", "\u{202F}", "é"] {
            assert!(check_name(ok).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn channel_messages() {
        let id = "0123456789abcdef0000000000000001";
        assert_eq!(
            parse_channel_message(format!("s 5 1700 {id}")),
            Some(ChannelMessage::StateHead {
                seq: 5,
                updated_ms: 1700,
                id: id.into()
            })
        );
        assert_eq!(
            parse_channel_message(format!("r {id}\n{{\"x\":\n1}}")),
            Some(ChannelMessage::StateBody {
                id: id.into(),
                state: "{\"x\":\n1}".into()
            })
        );
        // A state that reads like a control message is a body all the same.
        assert_eq!(
            parse_channel_message(format!("r {id}\nh 100")),
            Some(ChannelMessage::StateBody {
                id: id.into(),
                state: "h 100".into()
            })
        );
        assert_eq!(
            parse_channel_message("h 5000".into()),
            Some(ChannelMessage::Heartbeat { interval_ms: 5000 })
        );
        assert_eq!(
            parse_channel_message("e".into()),
            Some(ChannelMessage::Ended)
        );
        assert_eq!(
            parse_channel_message("p abc".into()),
            Some(ChannelMessage::Probe {
                nonce: "abc".into()
            })
        );
        assert_eq!(
            parse_channel_message("d 9 8 1700\n3\n3:abc0;".into()),
            Some(ChannelMessage::Delta {
                seq: 9,
                base: 8,
                updated_ms: 1700,
                delta: "3\n3:abc0;".into()
            })
        );
        for bad in [
            "d 9 1700\nx",
            "s x",
            "s 5 1700",
            "s 5 1700 ",
            "s 5 1700 id extra",
            "s 5 1700\n{}",
            "s 5 x id",
            "r id",
            "r \n{}",
            "r a b\n{}",
            "rid\n{}",
            "",
        ] {
            assert_eq!(parse_channel_message(bad.into()), None, "{bad:?}");
        }
    }

    #[test]
    fn state_messages_carry_a_publish_id_and_the_state() {
        assert_eq!(
            parse_state_message("r -\n{}".into()),
            Some(("-".into(), "{}".into()))
        );
        assert_eq!(
            parse_state_message("r abc\n".into()),
            Some(("abc".into(), "".into()))
        );
        assert_eq!(
            parse_state_message("r abc\n\n\u{e9}".into()),
            Some(("abc".into(), "\n\u{e9}".into()))
        );
        for bad in ["", "r", "r -", "s 1 2 -", "{}", "r  \n{}"] {
            assert_eq!(parse_state_message(bad.into()), None, "{bad:?}");
        }
    }

    /// The vectors every implementation of the seal and the tag checks.
    #[test]
    fn lead_seal_and_channel_tag_vectors() {
        let token = "00112233445566778899aabbccddeeff";
        assert_eq!(
            sha1hex(&[token.as_bytes()]),
            "2ab31b2b0c25d5f6cbc9e082f80ab7cd27ec6315"
        );
        let id = "0123456789abcdef0000000000000001";
        let body = format!("r {id}\n{{}}");
        assert_eq!(body.len(), 37);
        assert_eq!(
            sha1hex(&[
                b"lead:2ab31b2b0c25d5f6cbc9e082f80ab7cd27ec6315:",
                format!("{id}:full:-:-:0:37").as_bytes()
            ]),
            "ef3b2bca03e3f98ae3080f01e1bb2c06d521095f"
        );
        assert_eq!(
            seal_lead(token, id, "full", "-", "-", 0, body.len()).as_deref(),
            Some("ef2a09f947b69ffd6b91a5ba2d66c2f9")
        );
        assert_eq!(
            seal_lead(
                token,
                id,
                "delta",
                "41",
                "0123456789abcdef0000000000000000",
                0,
                53
            )
            .as_deref(),
            Some("4a46671bdf2df13d466b287b3a751bb4")
        );
        // Another body length, another seal.
        assert_ne!(
            seal_lead(token, id, "full", "-", "-", 0, 38).as_deref(),
            Some("ef2a09f947b69ffd6b91a5ba2d66c2f9")
        );
        for bad in [
            "",
            "0011",
            "00112233445566778899aabbccddeefg",
            &"0".repeat(33),
        ] {
            assert_eq!(seal_lead(bad, id, "full", "-", "-", 0, 37), None, "{bad}");
        }
        assert_eq!(channel_tag(&"0f".repeat(20)), "d5d24c8a08653d96");
    }

    #[test]
    fn splitter_handles_any_chunking() {
        let stream = br#"{"SUBSCRIBE":["subscribe","c",1]} {"SUBSCRIBE":["message","c","s 1 2\n{\"a\":\"}{\\\"\"}"]}{"SUBSCRIBE":["message","c","e"]}"#;
        for step in 1..stream.len() {
            let mut sp = ObjectSplitter::new();
            let mut items = Vec::new();
            for chunk in stream.chunks(step) {
                sp.push(chunk);
                while let Some(o) = sp.next_object().unwrap() {
                    items.push(parse_subscription_object(&o).unwrap());
                }
            }
            assert_eq!(items.len(), 3, "step {step}");
            assert_eq!(
                items[0],
                SubscriptionItem::Subscribed {
                    channel: "c".into()
                }
            );
            assert_eq!(
                items[1],
                SubscriptionItem::Message {
                    channel: "c".into(),
                    payload: "s 1 2\n{\"a\":\"}{\\\"\"}".into()
                }
            );
        }
    }

    #[test]
    fn quote_or_backslash_finds_the_first_at_any_offset() {
        for len in 0..40 {
            for at in 0..=len {
                for c in [b'"', b'\\'] {
                    // Neighbours one bit or one value away from `"`
                    // (0x22) and `\\` (0x5c) must not be taken for them.
                    let mut s: Vec<u8> =
                        (0..len).map(|i| [b'a', 0xa2, 0x5d, 0x21][i % 4]).collect();
                    if at < len {
                        s[at] = c;
                        s.push(b'"');
                    }
                    let want = s.iter().position(|&b| b == b'"' || b == b'\\');
                    assert_eq!(quote_or_backslash(&s), want, "len {len} at {at}");
                }
            }
        }
    }

    #[test]
    fn splitter_rejects_garbage() {
        let mut sp = ObjectSplitter::new();
        sp.push(b"HTTP/1.1 200");
        assert!(sp.next_object().is_err());
    }

    /// Bounded fuzzing of the parsers that read what Webdis sends: random
    /// bytes never panic, and valid streams split at random points always
    /// come back whole. `MS_FUZZ_ITERATIONS=1000000` runs longer.
    #[test]
    fn fuzz_parsers() {
        let iterations: u64 = std::env::var("MS_FUZZ_ITERATIONS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(50_000);
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n.max(1)
        };
        const ALPHABET: &[char] = &[
            '{', '}', '[', ']', '"', '\\', ',', ':', ' ', '\n', 'a', 's', '1', 'é', '✈', '\u{1}',
        ];
        for _ in 0..iterations {
            // 1. Random bytes: errors are fine, panics and hangs are not.
            let junk: Vec<u8> = (0..rnd(200)).map(|_| rnd(256) as u8).collect();
            let mut sp = ObjectSplitter::new();
            sp.push(&junk);
            while let Ok(Some(o)) = sp.next_object() {
                let _ = parse_subscription_object(&o);
            }
            let _ = webdis_reply(
                "FCALL",
                [200, 403, 503, 500, 404, 302][rnd(6) as usize],
                &junk,
            );
            let _ = parse_channel_message(String::from_utf8_lossy(&junk).into_owned());
            let _ = redis_error(&String::from_utf8_lossy(&junk));
            let _ = percent_decode(&String::from_utf8_lossy(&junk));

            // 2. A valid stream of random messages, split anywhere.
            let payloads: Vec<String> = (0..1 + rnd(4))
                .map(|_| {
                    (0..rnd(40))
                        .map(|_| ALPHABET[rnd(ALPHABET.len() as u64) as usize])
                        .collect()
                })
                .collect();
            let mut stream = Vec::new();
            for p in &payloads {
                let obj = serde_json::json!({ "SUBSCRIBE": ["message", "c", p] });
                stream.extend_from_slice(obj.to_string().as_bytes());
                if rnd(3) == 0 {
                    stream.extend_from_slice(b"\r\n");
                }
            }
            let mut sp = ObjectSplitter::new();
            let mut got = Vec::new();
            let mut rest = &stream[..];
            while !rest.is_empty() {
                let n = (1 + rnd(rest.len() as u64)) as usize;
                sp.push(&rest[..n]);
                rest = &rest[n..];
                while let Some(o) = sp.next_object().unwrap() {
                    match parse_subscription_object(&o).unwrap() {
                        SubscriptionItem::Message { payload, .. } => got.push(payload),
                        other => panic!("unexpected {other:?}"),
                    }
                }
            }
            assert_eq!(got, payloads);
        }
    }
}
