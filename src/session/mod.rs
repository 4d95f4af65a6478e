//! The sessions: the publisher of each led stream (`leader`, its
//! decisions in `publisher`) and the follower of each followed stream
//! (`follower`, its decisions in `follower::session`, its timing rules in
//! `liveness`). Here: what a client shares with the threads that drive
//! its sessions
//! (settings, hooks back into the client) and the record key of a stream.

pub mod backoff;
pub mod follower;
pub mod leader;
pub mod liveness;
pub mod publisher;
#[cfg(test)]
mod timing;

use crate::dispatch::Dispatcher;
use crate::error::Result;
use crate::kdf;
use crate::net::nodes::Nodes;
use crate::wire::functions::{Call, ParamsReply};
use std::ffi::CString;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Settings shared with the client's threads; changes apply at once.
pub struct Config {
    pub(crate) timeout_ms: AtomicU32,
    pub(crate) stream_ttl_s: AtomicU32,
    pub(crate) heartbeat_ms: AtomicU32,
    /// PBKDF2 iterations of the streams this client starts.
    pub(crate) kdf_iterations: AtomicU32,
    /// Leaders send deltas (the benchmark turns them off to measure full
    /// states in the same run).
    pub(crate) deltas: AtomicBool,
}

impl Default for Config {
    /// Timeout 10 s, heartbeat 5 s, streams never expire, 600,000 KDF
    /// iterations.
    fn default() -> Config {
        Config {
            timeout_ms: AtomicU32::new(10_000),
            stream_ttl_s: AtomicU32::new(0),
            heartbeat_ms: AtomicU32::new(5_000),
            kdf_iterations: AtomicU32::new(crate::kdf::DEFAULT_ITERATIONS),
            deltas: AtomicBool::new(true),
        }
    }
}

impl Config {
    /// Timeout of one request.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed) as u64)
    }
    /// The leader's heartbeat interval.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms.load(Ordering::Relaxed) as u64)
    }
    pub fn kdf_iterations(&self) -> u32 {
        self.kdf_iterations.load(Ordering::Relaxed)
    }
    pub fn deltas(&self) -> bool {
        self.deltas.load(Ordering::Relaxed)
    }
    pub fn stream_ttl_s(&self) -> u32 {
        self.stream_ttl_s.load(Ordering::Relaxed)
    }
}

/// What the network thread needs of the client to drive its sessions.
#[derive(Clone)]
pub struct Hooks {
    pub dispatcher: Arc<Dispatcher>,
    /// Called by a publisher whose lead ended on a final error.
    pub lead_ended: EndHook,
    /// Called by a follower whose stream ended (or failed to start).
    pub follow_ended: EndHook,
    /// Snapshot reads of this client's followers caused by deltas that
    /// could not be applied (for benchmarks and tests).
    pub delta_resyncs: Arc<AtomicU64>,
}

/// Removes a session that ended on its own from its registry.
pub type EndHook = Arc<dyn Fn(u64, &CString) + Send + Sync>;

/// ms_params (read-only): the key derivation parameters of stream `key`.
pub fn params_of(conn: &Nodes, key: &str, timeout: Duration) -> Result<kdf::Params> {
    kdf::params_of_reply(ParamsReply::of(conn.fcall(
        &Call::params(key),
        &[],
        timeout,
    )?)?)
}

/// Key of a stream's record in Redis.
pub fn key_of(name: &str) -> String {
    format!("stream:{name}")
}
