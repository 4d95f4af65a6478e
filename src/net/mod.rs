//! The network: HTTP/1.1 to Webdis, requests with their retries, and the
//! endpoints of a replicated deployment.

pub mod http;
pub mod nodes;
pub mod transport;
