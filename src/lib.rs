//! missionstream: stream a live mission plan from one leader to many
//! followers, with Redis as broker and system of record, reached only
//! through Webdis.
//!
//! The crate is a pure-Rust core ([`Client`]) and one [`ffi`] module that
//! exports the C ABI of `include/missionstream.h`.

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
pub use error::{Error, Kind, Result, Status};
