//! The wire format: the requests, replies and channel messages of the
//! protocol, the calls of the functions library, and the deltas between
//! states. No I/O.

pub mod delta;
pub mod functions;
pub mod protocol;
