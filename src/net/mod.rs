//! The network: HTTP/1.1 to Webdis, requests with their retries, and the
//! endpoints of a replicated deployment.

// chunked, poller, subscription: the reactor's, which production does not run yet
// (docs/internals/fixed-threads.md).
pub mod cancel;
#[allow(dead_code)]
pub mod chunked;
pub mod http;
pub mod nodes;
#[allow(dead_code)]
pub mod poller;
#[allow(dead_code)]
pub mod subscription;
pub mod transport;
