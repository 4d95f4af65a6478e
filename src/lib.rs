//! missionstream: stream a live mission plan from one leader to many
//! followers, with Redis as broker and system of record, reached only
//! through Webdis.
//!
//! The crate is a pure-Rust core ([`Client`]) and one [`ffi`] module that
//! exports the C ABI of `include/missionstream.h`.

// The layers, each importing only those below it: the C boundary (ffi),
// the client, the runtime that drives the sessions (runtime/), the
// sessions (session/), the network (net/), the wire format (wire/);
// error, util and dispatch are shared.
mod client;
mod dispatch;
mod error;
pub mod ffi;
pub mod kdf;
mod net;
mod runtime;
mod session;
mod util;
mod wire;

pub use wire::{delta, protocol};

pub use client::{Client, StreamInfo};

/// Parts of the reactor production does not run yet
/// (docs/internals/fixed-threads.md), public for their integration tests
/// (tests/subscription.rs) only: not an API, may change at any time.
#[doc(hidden)]
pub mod internals {
    pub use crate::net::poller::{Interest, Poller, Ready, Waker};
    pub use crate::net::subscription::Subscription;
    pub use crate::net::transport::{load_ca_file, Endpoint};
}
pub use dispatch::{Callback, Event, EventKind, StateText};
pub use error::{Error, Kind, Result, Status};
