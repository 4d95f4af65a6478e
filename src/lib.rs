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
mod publisher;
mod session;
mod transport;
mod util;

pub use client::{Client, StreamInfo};
pub use dispatch::{Callback, Event, EventKind, StateText};
pub use error::{Error, Result, Status};
