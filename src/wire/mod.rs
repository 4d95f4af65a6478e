//! The wire format: the requests, replies and channel messages of the
//! protocol, and the deltas between states. No I/O.

pub mod delta;
pub mod functions;
pub mod protocol;
