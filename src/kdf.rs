//! Secrets at rest: passwords and leader codes are stretched here, by the
//! client, with PBKDF2-HMAC-SHA256 and the stream's salt, so that Redis
//! stores only a fast hash of the derived key and never runs a slow hash
//! itself. See docs/PROTOCOL.md ("Key derivation") and docs/SECURITY.md.

use crate::error::{Error, Result, Status};
use crate::util::lock;
use crate::wire::functions::ParamsReply;
use crate::wire::protocol;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use zeroize::Zeroizing;

/// Name of the key derivation in the stream record and on the wire.
pub const ALGORITHM: &str = "pbkdf2-sha256";
/// Iterations of streams this library starts, unless set otherwise:
/// OWASP's current figure for PBKDF2-HMAC-SHA256.
pub const DEFAULT_ITERATIONS: u32 = 600_000;
/// The fewest iterations the functions accept at start.
pub const MIN_ITERATIONS: u32 = 100_000;
/// The most iterations the functions accept at start (so that a stream
/// cannot make its followers spend minutes connecting).
pub const MAX_ITERATIONS: u32 = 10_000_000;
/// Bytes of a derived key (64 hex digits on the wire).
pub const KEY_BYTES: usize = 32;

/// The parameters of a stream's key derivation (from its record).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    /// 32 lowercase hex digits, random per stream.
    pub salt: String,
    pub iterations: u32,
}

/// Which secret a key is derived from: each has its own PBKDF2 salt, so
/// that equal secrets do not give equal keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Secret {
    Password,
    LeaderCode,
}

impl Secret {
    /// The PBKDF2 salt: ASCII `pw:<salt>` or `code:<salt>`.
    fn salt(self, salt: &str) -> Vec<u8> {
        let prefix: &[u8] = match self {
            Secret::Password => b"pw:",
            Secret::LeaderCode => b"code:",
        };
        [prefix, salt.as_bytes()].concat()
    }
}

/// The derived key of `secret`: PBKDF2-HMAC-SHA256 of the secret's UTF-8
/// bytes, salt `pw:<salt>` or `code:<salt>`, `iterations`, 32 bytes, as
/// 64 lowercase hex digits.
pub fn derive(params: &Params, kind: Secret, secret: &str) -> Zeroizing<String> {
    let mut out = Zeroizing::new([0u8; KEY_BYTES]);
    pbkdf2::pbkdf2_hmac::<Sha256>(
        secret.as_bytes(),
        &kind.salt(&params.salt),
        params.iterations,
        &mut out[..],
    );
    let mut hex = Zeroizing::new(String::with_capacity(2 * KEY_BYTES));
    for b in out.iter() {
        hex.push(char::from(b"0123456789abcdef"[(b >> 4) as usize]));
        hex.push(char::from(b"0123456789abcdef"[(b & 15) as usize]));
    }
    hex
}

/// Derived keys of one client, so that reconnecting (a follower after a
/// lost subscription, a leader taking up its lead again) does not pay the
/// KDF again. Entries are found by a SHA-256 of a random per-client
/// pepper, the parameters and the secret, so the cache holds no secret
/// in the clear and nothing guessable without the pepper.
pub struct KeyCache {
    pepper: [u8; 32],
    keys: Mutex<HashMap<[u8; 32], Zeroizing<String>>>,
}

/// Entries kept at most (then the cache starts over).
const CACHE_ENTRIES: usize = 256;

impl KeyCache {
    pub fn new() -> Result<KeyCache> {
        let mut pepper = [0u8; 32];
        getrandom::getrandom(&mut pepper).map_err(|e| {
            Error::new(
                Status::MS_ERR_INTERNAL,
                format!("no randomness from the operating system: {e}"),
            )
        })?;
        Ok(KeyCache {
            pepper,
            keys: Mutex::new(HashMap::new()),
        })
    }

    /// `derive`, or the key derived before for the same inputs.
    pub fn derive(&self, params: &Params, kind: Secret, secret: &str) -> Zeroizing<String> {
        let mut h = Sha256::new();
        h.update(self.pepper);
        h.update(kind.salt(&params.salt));
        h.update(params.iterations.to_be_bytes());
        h.update(secret.as_bytes());
        let id: [u8; 32] = h.finalize().into();
        if let Some(k) = lock(&self.keys).get(&id) {
            return k.clone();
        }
        // Computed outside the lock: other streams need not wait.
        let key = derive(params, kind, secret);
        let mut keys = lock(&self.keys);
        if keys.len() >= CACHE_ENTRIES {
            keys.clear();
        }
        keys.insert(id, key.clone());
        key
    }
}

/// Checks an iteration count chosen for new streams.
pub fn check_iterations(iterations: u32) -> Result<()> {
    if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
        return Err(Error::invalid(format!(
            "the key derivation needs {MIN_ITERATIONS} to {MAX_ITERATIONS} iterations, not {iterations}"
        )));
    }
    Ok(())
}

/// The key derivation parameters of a reply to ms_params
/// (`session::params_of` asks for them): an algorithm this library knows,
/// iterations in range, a salt of 32 lowercase hex digits.
pub fn params_of_reply(reply: ParamsReply) -> Result<Params> {
    let bad = || protocol::protocol_error("ms_params");
    if reply.algorithm != ALGORITHM {
        return Err(Error::new(
            Status::MS_ERR_PROTOCOL,
            format!(
                "the stream's secrets are derived with {}, which this library does not know (it knows {ALGORITHM})",
                Value::String(reply.algorithm)
            ),
        ));
    }
    let iterations = u32::try_from(reply.iterations)
        .ok()
        .filter(|n| (MIN_ITERATIONS..=MAX_ITERATIONS).contains(n))
        .ok_or_else(bad)?;
    let salt = reply.salt;
    if salt.len() != 32 || !salt.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(bad());
    }
    Ok(Params { salt, iterations })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_replies_of_another_shape_or_range_are_refused() {
        let salt = "0123456789abcdef0123456789abcdef";
        let reply = |algorithm: &str, iterations: u64, salt: &str| ParamsReply {
            algorithm: algorithm.into(),
            iterations,
            salt: salt.into(),
        };
        let p = params_of_reply(reply(ALGORITHM, 600_000, salt)).unwrap();
        assert_eq!((p.iterations, p.salt.as_str()), (600_000, salt));
        for bad in [
            reply(ALGORITHM, 99_999, salt),
            reply(ALGORITHM, u32::MAX as u64 + 1, salt),
            reply(ALGORITHM, 600_000, "0123"),
            reply(ALGORITHM, 600_000, &salt.to_uppercase()),
            reply("scrypt", 600_000, salt),
        ] {
            let e = params_of_reply(bad.clone()).unwrap_err();
            assert_eq!(e.status, Status::MS_ERR_PROTOCOL, "{bad:?}");
        }
        let e = params_of_reply(reply("scrypt", 600_000, salt)).unwrap_err();
        assert!(
            e.message.contains("derived with \"scrypt\""),
            "{}",
            e.message
        );
    }

    /// The test vector of docs/PROTOCOL.md (also checked against Python's
    /// hashlib by tests/guarantees.rs).
    #[test]
    fn documented_vector() {
        let p = Params {
            salt: "000102030405060708090a0b0c0d0e0f".into(),
            iterations: 100_000,
        };
        assert_eq!(
            derive(&p, Secret::Password, "correct horse").as_str(),
            "2e31d2dac861c0bc6459dd01f8116f6472f1c13ce752f8707851be9b9559a4fa"
        );
        assert_eq!(
            derive(&p, Secret::LeaderCode, "c0de-é").as_str(),
            "8a352da446eba79955cf2c6aef18cce9404b5b8ded62fda274da779b38980f1a"
        );
        assert_eq!(
            derive(&p, Secret::Password, "").as_str(),
            "07f6a0ab6bd68f107233b344249f10f9b8206722d91988e3bfd827718a41a765"
        );
    }

    #[test]
    fn cache_gives_the_same_keys() {
        let c = KeyCache::new().unwrap();
        let p = Params {
            salt: "ffeeddccbbaa99887766554433221100".into(),
            iterations: MIN_ITERATIONS,
        };
        let a = c.derive(&p, Secret::Password, "x");
        assert_eq!(a, c.derive(&p, Secret::Password, "x"));
        assert_eq!(a, derive(&p, Secret::Password, "x"));
        assert_ne!(a, c.derive(&p, Secret::LeaderCode, "x"));
        let q = Params {
            iterations: MIN_ITERATIONS + 1,
            ..p.clone()
        };
        assert_ne!(a, c.derive(&q, Secret::Password, "x"));
        // Every key derived so far is kept (up to the cache's size).
        assert_eq!(lock(&c.keys).len(), 3);
    }

    #[test]
    fn iteration_limits() {
        assert!(check_iterations(DEFAULT_ITERATIONS).is_ok());
        assert!(check_iterations(MIN_ITERATIONS).is_ok());
        assert!(check_iterations(MIN_ITERATIONS - 1).is_err());
        assert!(check_iterations(MAX_ITERATIONS + 1).is_err());
    }
}
