//! missionstream: stream a live mission plan from one leader to many
//! followers, with Redis as broker and system of record, reached only
//! through Webdis.
//!
//! The crate is a pure-Rust core ([`Client`]) and one [`ffi`] module that
//! exports the C ABI of `include/missionstream.h`.

/// Diagnostics on standard error when `MISSIONSTREAM_DEBUG` is set (to
/// anything but empty or `0`): retries, lost and recovered subscriptions,
/// publish failures. Off by default; read once.
macro_rules! debug_log {
    ($($arg:tt)*) => {
        if *$crate::DEBUG {
            eprintln!("missionstream[{:?}]: {}", std::thread::current().name().unwrap_or("?"), format_args!($($arg)*));
        }
    };
}
pub(crate) use debug_log;

static DEBUG: once_cell::sync::Lazy<bool> = once_cell::sync::Lazy::new(|| {
    std::env::var("MISSIONSTREAM_DEBUG").is_ok_and(|v| !v.is_empty() && v != "0")
});

mod backoff;
mod client;
pub mod delta;
mod dispatch;
mod error;
pub mod ffi;
mod follower;
mod http;
pub mod kdf;
mod leader;
mod liveness;
mod nodes;
pub mod protocol;
mod session;
mod transport;
mod util;

pub use client::{Client, StreamInfo};
pub use dispatch::{Callback, Event, EventKind, StateText};
pub use error::{Error, Result, Status};

/// How many times followers of this process read the snapshot because
/// deltas could not be applied (a base that did not come in time, or a
/// delta that did not verify). For benchmarks and tests.
pub fn delta_snapshot_reads() -> u64 {
    follower::DELTA_RESYNCS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Turns deltas off (every state sent in full) or on again, for every
/// leader of this process. For benchmarks comparing both in one run.
#[doc(hidden)]
pub fn set_deltas(enabled: bool) {
    leader::DELTAS.store(enabled, std::sync::atomic::Ordering::Relaxed);
}
