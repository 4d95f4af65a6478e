//! The calls of the functions library, declared once: each function's
//! name, whether it is read-only (`FCALL_RO`: a replica may answer it),
//! its keys and its arguments (`Call`), and the shape of the replies the
//! crate decides on, each parsed here next to its call (`Connected`, `Joined`,
//! `Stored`, `reached`, `Snapshot`, `ListPage`, `SubscriberPage`,
//! `ParamsReply`): a reply of another shape is MS_ERR_PROTOCOL naming the
//! function, and no caller looks inside a `Value`. The body, the last
//! argument, is made by the caller: framed (`protocol::frame_body`), or
//! for ms_publish the state behind `r <publish id>\n` (or the delta) as
//! it is.

use super::protocol::{self, INDEX_KEY};
use crate::error::Result;
use serde_json::Value;

/// One call of a function: which one, its keys and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub function: &'static str,
    /// Read-only: sent as `FCALL_RO`.
    pub read_only: bool,
    pub keys: Vec<String>,
    pub args: Vec<String>,
}

impl Call {
    fn new(function: &'static str, read_only: bool, keys: &[&str], args: &[&str]) -> Call {
        Call {
            function,
            read_only,
            keys: keys.iter().map(|k| k.to_string()).collect(),
            args: args.iter().map(|a| a.to_string()).collect(),
        }
    }

    /// The keys, borrowed.
    pub fn keys(&self) -> Vec<&str> {
        self.keys.iter().map(String::as_str).collect()
    }

    /// The log key of the stream of record `key` (`stream:<name>` →
    /// `msl:<name>`).
    fn log_key(key: &str) -> String {
        format!("msl:{}", key.strip_prefix("stream:").unwrap_or(key))
    }

    /// The arguments, borrowed.
    pub fn args(&self) -> Vec<&str> {
        self.args.iter().map(String::as_str).collect()
    }

    /// ms_start of the stream of record `key`: heartbeat (ms), TTL (s),
    /// key derivation algorithm and iterations.
    pub fn start(key: &str, hb_ms: u128, ttl_s: u32, algorithm: &str, iterations: u32) -> Call {
        let (hb, ttl, iterations) = (hb_ms.to_string(), ttl_s.to_string(), iterations.to_string());
        Call::new(
            "ms_start",
            false,
            &[key, INDEX_KEY, &Call::log_key(key)],
            &[&hb, &ttl, algorithm, &iterations],
        )
    }

    /// ms_reconnect: heartbeat (ms), TTL (s).
    pub fn reconnect(key: &str, hb_ms: u128, ttl_s: u32) -> Call {
        let (hb, ttl) = (hb_ms.to_string(), ttl_s.to_string());
        Call::new(
            "ms_reconnect",
            false,
            &[key, INDEX_KEY, &Call::log_key(key)],
            &[&hb, &ttl],
        )
    }

    /// ms_stop.
    pub fn stop(key: &str) -> Call {
        Call::new(
            "ms_stop",
            false,
            &[key, INDEX_KEY, &Call::log_key(key)],
            &[],
        )
    }

    /// ms_publish of the state of publish id `id` with its seq floor; in
    /// full, or as a delta against `(base seq, base publish id)`; `tag`
    /// names the channel (`protocol::channel_tag`) and `sealed` is the
    /// lead token sealed for this publish (`protocol::seal_lead`, with
    /// `Call::publish_kind` and the body's length).
    pub fn publish(
        key: &str,
        id: &str,
        floor: u64,
        base: Option<(u64, &str)>,
        tag: &str,
        sealed: &str,
    ) -> Call {
        let floor = floor.to_string();
        let (kind, base_seq, base_id) = Call::publish_kind(base);
        Call::new(
            "ms_publish",
            false,
            &[key, INDEX_KEY, &Call::log_key(key)],
            &[id, &floor, kind, &base_seq, base_id, tag, sealed],
        )
    }

    /// The kind, base seq and base publish id arguments of ms_publish:
    /// `full - -`, or `delta <seq> <id>`.
    pub fn publish_kind(base: Option<(u64, &str)>) -> (&'static str, String, &str) {
        match base {
            Some((seq, id)) => ("delta", seq.to_string(), id),
            None => ("full", "-".to_string(), "-"),
        }
    }

    /// ms_heartbeat announcing the interval (ms).
    pub fn heartbeat(key: &str, hb_ms: u128) -> Call {
        Call::new(
            "ms_heartbeat",
            false,
            &[key, &Call::log_key(key)],
            &[&hb_ms.to_string()],
        )
    }

    /// ms_connect (checks the password's key).
    pub fn connect(key: &str) -> Call {
        Call::new("ms_connect", false, &[key], &[])
    }

    /// ms_snapshot (read-only); `have` names the state the caller holds,
    /// `<seq>:<updated_ms>`, or is `-`: the reply carries no state when
    /// it names the newest one.
    pub fn snapshot(key: &str, have: &str) -> Call {
        Call::new("ms_snapshot", true, &[key, &Call::log_key(key)], &[have])
    }

    /// ms_probe publishing a probe carrying `token`.
    pub fn probe(key: &str, token: &str) -> Call {
        Call::new("ms_probe", false, &[key], &[token])
    }

    /// ms_params (read-only): the stream's key derivation.
    pub fn params(key: &str) -> Call {
        Call::new("ms_params", true, &[key], &[])
    }

    /// ms_list, a page from `cursor`.
    pub fn list(cursor: &str) -> Call {
        Call::new("ms_list", false, &[INDEX_KEY], &[cursor])
    }

    /// ms_subscribers (read-only), a page from `cursor`.
    pub fn subscribers(cursor: &str) -> Call {
        Call::new("ms_subscribers", true, &[INDEX_KEY], &[cursor])
    }
}

/// The reply to ms_publish and ms_heartbeat: the record's seq and the
/// publish id of the state it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub seq: u64,
    pub id: String,
}

impl Stored {
    /// `[seq, stored publish id]`, the reply to `function`.
    pub fn of(reply: &Value, function: &str) -> Result<Stored> {
        match reply {
            Value::Array(a) if a.len() == 2 => protocol::as_u64(&a[0])
                .zip(a[1].as_str())
                .map(|(seq, id)| Stored {
                    seq,
                    id: id.to_owned(),
                })
                .ok_or_else(|| protocol::protocol_error(function)),
            _ => Err(protocol::protocol_error(function)),
        }
    }
}

/// The reply to ms_probe, `[subscriptions reached]`.
pub fn reached(reply: &Value) -> Result<u64> {
    match reply {
        Value::Array(a) if a.len() == 1 => {
            protocol::as_u64(&a[0]).ok_or_else(|| protocol::protocol_error("ms_probe"))
        }
        _ => Err(protocol::protocol_error("ms_probe")),
    }
}

/// The reply to ms_reconnect, `[sealed channel, seq]`: the channel comes
/// sealed with a secret's key (`protocol::open_sealed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connected {
    pub channel_sealed: String,
    pub seq: u64,
}

impl Connected {
    /// `[sealed channel, seq]`, the reply to `function`.
    pub fn of(reply: Value, function: &str) -> Result<Connected> {
        match reply {
            Value::Array(mut a) if a.len() == 2 => {
                match (a.swap_remove(0), protocol::as_u64(&a[0])) {
                    (Value::String(channel_sealed), Some(seq)) => Ok(Connected {
                        channel_sealed,
                        seq,
                    }),
                    _ => Err(protocol::protocol_error(function)),
                }
            }
            _ => Err(protocol::protocol_error(function)),
        }
    }
}

/// The reply to ms_connect, `[sealed channel, hb_ms, on_replicas]`: the
/// channel sealed with the password's key (`protocol::open_sealed`), the
/// heartbeat interval the leader announced, and where the deployment
/// carries the channel's messages (`1`: the replicas too, `0`: the
/// primary only; anything else is malformed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    pub channel_sealed: String,
    pub hb_ms: u64,
    /// Replicas carry the channel's messages: followers may subscribe on
    /// them.
    pub on_replicas: bool,
}

impl Joined {
    pub fn of(reply: Value) -> Result<Joined> {
        let bad = || protocol::protocol_error("ms_connect");
        let Value::Array(mut a) = reply else {
            return Err(bad());
        };
        if a.len() != 3 {
            return Err(bad());
        }
        let on_replicas = match protocol::as_u64(&a[2]) {
            Some(0) => false,
            Some(1) => true,
            _ => return Err(bad()),
        };
        let hb_ms = protocol::as_u64(&a[1]).ok_or_else(bad)?;
        match a.swap_remove(0) {
            Value::String(channel_sealed) => Ok(Joined {
                channel_sealed,
                hb_ms,
                on_replicas,
            }),
            _ => Err(bad()),
        }
    }
}

/// The reply to ms_snapshot, `[seq, updated_ms, hb_ms, updated_age_ms,
/// heard_age_ms, state message | ""]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub seq: u64,
    /// When the newest state was stored (ms since the Unix epoch, Redis'
    /// clock): with `seq`, what names it in a later call's `have`.
    pub updated_ms: i64,
    /// The heartbeat interval the leader announced (ms).
    pub hb_ms: u64,
    /// How long ago the newest state was stored, on Redis' clock (ms).
    pub updated_age_ms: u64,
    /// How long ago the leader was last heard (a heartbeat, a start or
    /// reconnect, or the newest state), on Redis' clock (ms).
    pub heard_age_ms: u64,
    /// The newest state and its publish id (`-` for the state ms_start
    /// stores); None when the call's `have` named it (the reply's `""`).
    pub state: Option<(String, String)>,
}

impl Snapshot {
    pub fn of(reply: Value) -> Result<Snapshot> {
        let bad = || protocol::protocol_error("ms_snapshot");
        let Value::Array(mut a) = reply else {
            return Err(bad());
        };
        if a.len() != 6 {
            return Err(bad());
        }
        let state = match a.pop() {
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(protocol::parse_state_message(s).ok_or_else(bad)?),
            _ => return Err(bad()),
        };
        Ok(Snapshot {
            seq: protocol::as_u64(&a[0]).ok_or_else(bad)?,
            updated_ms: protocol::as_i64(&a[1]).ok_or_else(bad)?,
            hb_ms: protocol::as_u64(&a[2]).ok_or_else(bad)?,
            updated_age_ms: protocol::as_u64(&a[3]).ok_or_else(bad)?,
            heard_age_ms: protocol::as_u64(&a[4]).ok_or_else(bad)?,
            state,
        })
    }
}

/// Fields of one stream in a reply to ms_list.
const LIST_FIELDS: usize = 6;

/// One stream of a page of ms_list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntry {
    pub name: String,
    pub seq: u64,
    /// Subscribers on the node that answered (capped at u32::MAX).
    pub followers: u32,
    pub updated_ms: i64,
    /// Unix time in ms when the leader was last heard (start, reconnect,
    /// publish, heartbeat); 0 if not known.
    pub heard_ms: i64,
    /// The heartbeat interval the leader announced, in ms (capped at
    /// u32::MAX).
    pub heartbeat_ms: u32,
}

/// A page of ms_list: `[cursor, skipped, now_ms, name, seq, followers,
/// updated_ms, heard_ms, heartbeat_ms, ...]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ListPage {
    /// The cursor of the next page; "0" after the last.
    pub cursor: String,
    /// Index entries the functions skipped (names this version refuses,
    /// records of an earlier version).
    pub skipped: u64,
    /// Redis' clock when the page was read (ms since the Unix epoch): the
    /// times of the entries are on that clock.
    pub now_ms: i64,
    /// Each stream, or the fields of an entry this library cannot read
    /// (the others are kept).
    pub entries: Vec<std::result::Result<ListEntry, Vec<Value>>>,
}

/// A time of Redis' clock (`value`, ms since the Unix epoch) moved onto
/// another clock: as long before `local_now_ms` as it was before Redis'
/// `redis_now_ms`. 0 (not known) stays 0; a time after Redis' now is
/// taken as now.
pub fn rebase(value: i64, redis_now_ms: i64, local_now_ms: i64) -> i64 {
    if value == 0 {
        return 0;
    }
    let age = redis_now_ms.saturating_sub(value).max(0);
    local_now_ms.saturating_sub(age)
}

/// A page cursor: decimal digits.
fn cursor_of(v: Value) -> Option<String> {
    match v {
        Value::String(c) if !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()) => Some(c),
        _ => None,
    }
}

impl ListPage {
    /// The page with the times of its entries (`updated_ms`, `heard_ms`)
    /// moved from Redis' clock onto a local clock reading `local_now_ms`
    /// when the page came (`rebase`): a caller comparing them with its
    /// own clock sees no skew between its clock and Redis'.
    pub fn rebased(mut self, local_now_ms: i64) -> ListPage {
        for e in self.entries.iter_mut().flatten() {
            e.updated_ms = rebase(e.updated_ms, self.now_ms, local_now_ms);
            e.heard_ms = rebase(e.heard_ms, self.now_ms, local_now_ms);
        }
        self.now_ms = local_now_ms;
        self
    }

    pub fn of(reply: Value) -> Result<ListPage> {
        let bad = || protocol::protocol_error("ms_list");
        let mut page = match reply {
            Value::Array(a) if a.len() % LIST_FIELDS == 3 => a.into_iter(),
            _ => return Err(bad()),
        };
        let cursor = page.next().and_then(cursor_of).ok_or_else(bad)?;
        let skipped = page
            .next()
            .as_ref()
            .and_then(protocol::as_u64)
            .ok_or_else(bad)?;
        let now_ms = page
            .next()
            .as_ref()
            .and_then(protocol::as_i64)
            .ok_or_else(bad)?;
        let fields: Vec<Value> = page.collect();
        let entries = fields
            .chunks(LIST_FIELDS)
            .map(|rec| {
                (|| {
                    Some(ListEntry {
                        name: rec[0].as_str()?.to_string(),
                        seq: protocol::as_u64(&rec[1])?,
                        followers: protocol::as_u64(&rec[2])?.min(u32::MAX as u64) as u32,
                        updated_ms: protocol::as_i64(&rec[3])?,
                        heard_ms: protocol::as_i64(&rec[4])?,
                        heartbeat_ms: protocol::as_u64(&rec[5])?.min(u32::MAX as u64) as u32,
                    })
                })()
                .ok_or_else(|| rec.to_vec())
            })
            .collect();
        Ok(ListPage {
            cursor,
            skipped,
            now_ms,
            entries,
        })
    }
}

/// A page of ms_subscribers: `[cursor, name, count, ...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberPage {
    /// The cursor of the next page; "0" after the last.
    pub cursor: String,
    /// The subscribers of each stream on the node that answered; entries
    /// this library cannot read are left out.
    pub counts: Vec<(String, u64)>,
}

impl SubscriberPage {
    pub fn of(reply: Value) -> Result<SubscriberPage> {
        let bad = || protocol::protocol_error("ms_subscribers");
        let mut page = match reply {
            Value::Array(a) if a.len() % 2 == 1 => a.into_iter(),
            _ => return Err(bad()),
        };
        let cursor = page.next().and_then(cursor_of).ok_or_else(bad)?;
        let fields: Vec<Value> = page.collect();
        let counts = fields
            .chunks(2)
            .filter_map(|r| Some((r[0].as_str()?.to_string(), protocol::as_u64(&r[1])?)))
            .collect();
        Ok(SubscriberPage { cursor, counts })
    }
}

/// The reply to ms_params, `[algorithm, iterations, salt]`, as sent: the
/// key derivation checks the values (`kdf::Params::from_reply`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamsReply {
    pub algorithm: String,
    pub iterations: u64,
    pub salt: String,
}

impl ParamsReply {
    pub fn of(reply: Value) -> Result<ParamsReply> {
        let bad = || protocol::protocol_error("ms_params");
        match reply {
            Value::Array(a) if a.len() == 3 => match (&a[0], protocol::as_u64(&a[1]), &a[2]) {
                (Value::String(algorithm), Some(iterations), Value::String(salt)) => {
                    Ok(ParamsReply {
                        algorithm: algorithm.clone(),
                        iterations,
                        salt: salt.clone(),
                    })
                }
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Status;
    use serde_json::json;

    #[test]
    fn calls_carry_their_keys_and_arguments_in_order() {
        let c = Call::publish("stream:a", "id1", 7, Some((6, "id0")), "tag", "sealed");
        assert_eq!((c.function, c.read_only), ("ms_publish", false));
        assert_eq!(c.keys(), ["stream:a", INDEX_KEY, "msl:a"]);
        assert_eq!(c.args(), ["id1", "7", "delta", "6", "id0", "tag", "sealed"]);
        let c = Call::publish("stream:a", "id1", 7, None, "t", "s");
        assert_eq!(c.args(), ["id1", "7", "full", "-", "-", "t", "s"]);
        let c = Call::start("stream:a", 5000, 0, "pbkdf2-sha256", 600_000);
        assert_eq!(c.args(), ["5000", "0", "pbkdf2-sha256", "600000"]);
        // The log key after the record where the function takes it.
        let keys = |c: Call| c.keys.clone();
        assert_eq!(
            keys(Call::start("stream:a/b", 1, 0, "x", 1)),
            ["stream:a/b", INDEX_KEY, "msl:a/b"]
        );
        assert_eq!(
            keys(Call::reconnect("stream:a", 1, 0)),
            ["stream:a", INDEX_KEY, "msl:a"]
        );
        assert_eq!(
            keys(Call::stop("stream:a")),
            ["stream:a", INDEX_KEY, "msl:a"]
        );
        assert_eq!(keys(Call::snapshot("stream:a", "-")), ["stream:a", "msl:a"]);
        assert_eq!(keys(Call::heartbeat("stream:a", 1)), ["stream:a", "msl:a"]);
        assert_eq!(keys(Call::connect("stream:a")), ["stream:a"]);
        assert_eq!(keys(Call::probe("stream:a", "t")), ["stream:a"]);
        assert_eq!(keys(Call::params("stream:a")), ["stream:a"]);
        assert_eq!(Call::snapshot("stream:a", "4:1700").args(), ["4:1700"]);
        for (c, ro) in [
            (Call::snapshot("k", "-"), true),
            (Call::params("k"), true),
            (Call::subscribers("0"), true),
            (Call::connect("k"), false),
            (Call::probe("k", "t"), false),
            (Call::list("0"), false),
            (Call::stop("k"), false),
            (Call::heartbeat("k", 5000), false),
            (Call::reconnect("k", 5000, 0), false),
        ] {
            assert_eq!(c.read_only, ro, "{}", c.function);
        }
    }

    #[test]
    fn replies_of_another_shape_are_protocol_errors() {
        assert_eq!(
            Stored::of(&json!([3, "abc"]), "ms_publish"),
            Ok(Stored {
                seq: 3,
                id: "abc".into()
            })
        );
        for bad in [json!([3]), json!(["x", "abc"]), json!([3, 4]), json!(null)] {
            let e = Stored::of(&bad, "ms_heartbeat").unwrap_err();
            assert_eq!(e.status, Status::MS_ERR_PROTOCOL, "{bad}");
            assert!(e.message.contains("ms_heartbeat"), "{}", e.message);
        }
        assert_eq!(reached(&json!([2])), Ok(2));
        for bad in [json!([]), json!(["two"]), json!([1, 2])] {
            assert_eq!(reached(&bad).unwrap_err().status, Status::MS_ERR_PROTOCOL);
        }
    }

    /// A malformed reply is MS_ERR_PROTOCOL, its message naming `function`.
    fn refused<T: std::fmt::Debug>(r: Result<T>, function: &str, bad: &Value) {
        let e = r.unwrap_err();
        assert_eq!(e.status, Status::MS_ERR_PROTOCOL, "{bad}");
        assert!(e.message.contains(function), "{bad}: {}", e.message);
    }

    /// Numbers over u64 (or i64) are no numbers to the crate.
    const HUGE: &str = "18446744073709551616";

    #[test]
    fn joined_replies_carry_a_sealed_channel_the_heartbeat_and_where_the_channel_is() {
        assert_eq!(
            Joined::of(json!(["c2VhbGVk", 5000, 0])),
            Ok(Joined {
                channel_sealed: "c2VhbGVk".into(),
                hb_ms: 5000,
                on_replicas: false
            })
        );
        assert!(Joined::of(json!(["s", "200", "1"])).unwrap().on_replicas);
        for bad in [
            // protocol 9's reply: no on_replicas
            json!(["s", 5000]),
            json!(["s", 5000, 2]),
            json!(["s", 5000, -1]),
            json!(["s", 5000, "yes"]),
            json!(["s", 5000, true]),
            json!(["s", 5000, null]),
            json!(["s", 5000, 1, 0]),
            json!(["s", "x", 1]),
            json!(["s", HUGE, 1]),
            json!([1, 5000, 1]),
            json!(null),
            json!("s"),
        ] {
            refused(Joined::of(bad.clone()), "ms_connect", &bad);
        }
    }

    #[test]
    fn connected_replies_carry_a_sealed_channel_and_a_seq() {
        assert_eq!(
            Connected::of(json!(["c2VhbGVk", "12"]), "ms_reconnect"),
            Ok(Connected {
                channel_sealed: "c2VhbGVk".into(),
                seq: 12
            })
        );
        assert_eq!(
            Connected::of(json!(["s", 0]), "ms_reconnect").unwrap().seq,
            0
        );
        for bad in [
            json!(["s"]),
            json!(["s", 1, 2]),
            json!([1, 1]),
            json!(["s", "x"]),
            json!(["s", -1]),
            json!(["s", HUGE]),
            json!(["s", 1e30]),
            json!(null),
            json!("s"),
        ] {
            refused(
                Connected::of(bad.clone(), "ms_reconnect"),
                "ms_reconnect",
                &bad,
            );
        }
    }

    #[test]
    fn snapshot_replies_carry_seq_times_ages_and_state() {
        assert_eq!(
            Snapshot::of(json!([
                "4",
                "1700000000000",
                5000,
                12,
                "40",
                "r 0123456789abcdef0000000000000004\n{\"a\":1}"
            ])),
            Ok(Snapshot {
                seq: 4,
                updated_ms: 1_700_000_000_000,
                hb_ms: 5000,
                updated_age_ms: 12,
                heard_age_ms: 40,
                state: Some((
                    "0123456789abcdef0000000000000004".into(),
                    "{\"a\":1}".into()
                ))
            })
        );
        // ms_start's state.
        assert_eq!(
            Snapshot::of(json!([0, 1, 5000, 0, 0, "r -\n{}"]))
                .unwrap()
                .state,
            Some(("-".into(), "{}".into()))
        );
        // `have` named the newest state: no state.
        let unchanged = Snapshot::of(json!([4, 1, 5000, 3, 2, ""])).unwrap();
        assert_eq!((unchanged.seq, unchanged.state), (4, None));
        for bad in [
            json!([4, 1, 5000, 0, 0]),
            json!([4, 1, 5000, 0, 0, "r -\n{}", 0]),
            json!([4, 1, 5000, "{}"]),
            json!([4, 1, 5000, 0, 0, 7]),
            json!([4, 1, 5000, 0, 0, "{}"]),
            json!([4, 1, 5000, 0, 0, "r x"]),
            json!([4, 1, 5000, 0, 0, "s 4 1 x"]),
            json!(["x", 1, 5000, 0, 0, "r -\n{}"]),
            json!([4, 1, HUGE, 0, 0, "r -\n{}"]),
            json!([4, 1, -5, 0, 0, "r -\n{}"]),
            json!([4, 1, 5000, -1, 0, "r -\n{}"]),
            json!([4, 1, 5000, 0, "x", "r -\n{}"]),
            json!([4, "later", 5000, 0, 0, "r -\n{}"]),
            json!({"seq": 4}),
        ] {
            refused(Snapshot::of(bad.clone()), "ms_snapshot", &bad);
        }
    }

    #[test]
    fn list_pages_keep_the_entries_they_can_read() {
        let page = ListPage::of(json!([
            "17",
            "2",
            "1800000000000",
            "a",
            "3",
            "1",
            "100",
            "200",
            "5000",
            "b",
            "x",
            "1",
            "100",
            "200",
            "5000",
            "c",
            1,
            HUGE,
            -1,
            "-2",
            "99999999999"
        ]))
        .unwrap();
        assert_eq!(
            (page.cursor.as_str(), page.skipped, page.now_ms),
            ("17", 2, 1_800_000_000_000)
        );
        assert_eq!(
            page.entries[0],
            Ok(ListEntry {
                name: "a".into(),
                seq: 3,
                followers: 1,
                updated_ms: 100,
                heard_ms: 200,
                heartbeat_ms: 5000
            })
        );
        assert!(page.entries[1].is_err(), "seq not a number");
        assert!(page.entries[2].is_err(), "followers over u64");
        assert_eq!(ListPage::of(json!(["0", 0, 5])).unwrap().entries, vec![]);
        // Counts over u32 are capped.
        let page = ListPage::of(json!([
            "0",
            0,
            5,
            "c",
            1,
            "99999999999",
            -1,
            -2,
            "99999999999"
        ]))
        .unwrap();
        let c = page.entries[0].as_ref().unwrap();
        assert_eq!(
            (c.followers, c.heartbeat_ms, c.updated_ms),
            (u32::MAX, u32::MAX, -1)
        );
        for bad in [
            json!([]),
            json!(["0"]),
            json!(["0", 0]),
            json!(["0", 0, 5, "a"]),
            json!(["", 0, 5]),
            json!(["1x", 0, 5]),
            json!([0, 0, 5]),
            json!(["0", "x", 5]),
            json!(["0", HUGE, 5]),
            json!(["0", 0, "now"]),
            json!(["0", 0, HUGE]),
            json!(null),
        ] {
            refused(ListPage::of(bad.clone()), "ms_list", &bad);
        }
    }

    #[test]
    fn list_times_are_rebased_onto_the_local_clock() {
        // Redis' clock an hour ahead of this one.
        let (redis, local) = (1_800_003_600_000, 1_800_000_000_000);
        assert_eq!(rebase(redis - 1500, redis, local), local - 1500);
        assert_eq!(rebase(0, redis, local), 0, "not known stays so");
        assert_eq!(rebase(redis + 10, redis, local), local, "never ahead");
        assert_eq!(rebase(1, i64::MAX, i64::MIN), i64::MIN);
        let page = ListPage::of(json!([
            "0",
            0,
            redis,
            "a",
            1,
            0,
            redis - 2000,
            redis - 300,
            5000,
            "b",
            "x",
            0,
            1,
            1,
            1
        ]))
        .unwrap()
        .rebased(local);
        let a = page.entries[0].as_ref().unwrap();
        assert_eq!(
            (a.updated_ms, a.heard_ms, page.now_ms),
            (local - 2000, local - 300, local)
        );
        assert!(page.entries[1].is_err());
    }

    #[test]
    fn subscriber_pages_keep_the_counts_they_can_read() {
        assert_eq!(
            SubscriberPage::of(json!(["0", "a", 2, "b", "x", 3, 4, "c", "5"])),
            Ok(SubscriberPage {
                cursor: "0".into(),
                counts: vec![("a".into(), 2), ("c".into(), 5)]
            })
        );
        for bad in [
            json!([]),
            json!(["0", "a"]),
            json!([0]),
            json!(["-1"]),
            json!("0"),
        ] {
            refused(SubscriberPage::of(bad.clone()), "ms_subscribers", &bad);
        }
    }

    #[test]
    fn params_replies_carry_algorithm_iterations_and_salt() {
        assert_eq!(
            ParamsReply::of(json!(["pbkdf2-sha256", "600000", "ab"])),
            Ok(ParamsReply {
                algorithm: "pbkdf2-sha256".into(),
                iterations: 600_000,
                salt: "ab".into()
            })
        );
        for bad in [
            json!(["pbkdf2-sha256", 600_000]),
            json!(["pbkdf2-sha256", 600_000, "ab", 1]),
            json!([1, 600_000, "ab"]),
            json!(["pbkdf2-sha256", HUGE, "ab"]),
            json!(["pbkdf2-sha256", 600_000, 12]),
            json!(null),
        ] {
            refused(ParamsReply::of(bad.clone()), "ms_params", &bad);
        }
    }
}
