//! The calls of the functions library, declared once: each function's
//! name, whether it is read-only (`FCALL_RO`: a replica may answer it),
//! its keys and its arguments (`Call`), and the shape of the replies the
//! crate decides on (typed: `Stored`, `reached`). The body, the last
//! argument, is framed by the caller (`protocol::frame_body`).

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
            &[key, INDEX_KEY],
            &[&hb, &ttl, algorithm, &iterations],
        )
    }

    /// ms_reconnect: heartbeat (ms), TTL (s).
    pub fn reconnect(key: &str, hb_ms: u128, ttl_s: u32) -> Call {
        let (hb, ttl) = (hb_ms.to_string(), ttl_s.to_string());
        Call::new("ms_reconnect", false, &[key, INDEX_KEY], &[&hb, &ttl])
    }

    /// ms_stop.
    pub fn stop(key: &str) -> Call {
        Call::new("ms_stop", false, &[key, INDEX_KEY], &[])
    }

    /// ms_publish of the state of publish id `id` with its seq floor; in
    /// full, or as a delta against `(base seq, base publish id)`.
    pub fn publish(key: &str, id: &str, floor: u64, base: Option<(u64, &str)>) -> Call {
        let floor = floor.to_string();
        let (kind, base_seq, base_id) = match base {
            Some((seq, id)) => ("delta", seq.to_string(), id),
            None => ("full", "-".to_string(), "-"),
        };
        Call::new(
            "ms_publish",
            false,
            &[key, INDEX_KEY],
            &[id, &floor, kind, &base_seq, base_id],
        )
    }

    /// ms_heartbeat announcing the interval (ms).
    pub fn heartbeat(key: &str, hb_ms: u128) -> Call {
        Call::new("ms_heartbeat", false, &[key], &[&hb_ms.to_string()])
    }

    /// ms_connect (checks the password's key).
    pub fn connect(key: &str) -> Call {
        Call::new("ms_connect", false, &[key], &[])
    }

    /// ms_snapshot (read-only).
    pub fn snapshot(key: &str) -> Call {
        Call::new("ms_snapshot", true, &[key], &[])
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Status;
    use serde_json::json;

    #[test]
    fn calls_carry_their_keys_and_arguments_in_order() {
        let c = Call::publish("stream:a", "id1", 7, Some((6, "id0")));
        assert_eq!((c.function, c.read_only), ("ms_publish", false));
        assert_eq!(c.keys(), ["stream:a", INDEX_KEY]);
        assert_eq!(c.args(), ["id1", "7", "delta", "6", "id0"]);
        let c = Call::publish("stream:a", "id1", 7, None);
        assert_eq!(c.args(), ["id1", "7", "full", "-", "-"]);
        let c = Call::start("stream:a", 5000, 0, "pbkdf2-sha256", 600_000);
        assert_eq!(c.args(), ["5000", "0", "pbkdf2-sha256", "600000"]);
        for (c, ro) in [
            (Call::snapshot("k"), true),
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
}
