//! HTTP to Webdis: one `Webdis` handle owns its keep-alive connections
//! (`http.rs` for `http://` requests, a ureq agent for `https://` and for
//! SUBSCRIBE streams), and `shutdown` breaks any call in flight on it.
//!
//! Every function call carries a request nonce that the functions echo in
//! their reply (and name in their errors): a reply that names another
//! request is never taken as the answer, its connection is dropped, and
//! the request is sent again.

use crate::error::{Error, Result, Status};
use crate::http;
use crate::protocol::{self, PROTOCOL_VERSION};
use serde_json::Value;
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

/// Largest Webdis reply body read (a snapshot of an 8 MiB state, escaped).
const MAX_REPLY: u64 = protocol::MAX_SUBSCRIPTION_OBJECT as u64;

/// A parsed Webdis URL: `http(s)://[user:pass@]host[:port][/prefix]`.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// `scheme://host[:port][/prefix]`, no trailing slash, no credentials.
    base: String,
    /// `Basic ...` header value, from `user:pass@`.
    auth: Option<String>,
    /// https://
    tls: bool,
    /// `host:port` (the default port filled in).
    authority: String,
    /// `/prefix` or "".
    prefix: String,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Endpoint> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            Error::invalid(format!(
                "the Webdis URL \"{url}\" has no scheme; use http://host:port"
            ))
        })?;
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return Err(Error::invalid(format!(
                "the Webdis URL must start with http:// or https://, not {scheme}://"
            )));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        if hostport.is_empty() || hostport.starts_with(':') {
            return Err(Error::invalid(format!(
                "the Webdis URL \"{url}\" has no host"
            )));
        }
        if hostport.contains(['?', '#', ' ']) || path.contains(['?', '#']) {
            return Err(Error::invalid(
                "the Webdis URL may not contain a query, a fragment or spaces",
            ));
        }
        let auth = match userinfo {
            None => None,
            Some(ui) => {
                let (u, p) = ui.split_once(':').unwrap_or((ui, ""));
                let creds = format!(
                    "{}:{}",
                    protocol::percent_decode(u)?,
                    protocol::percent_decode(p)?
                );
                Some(format!("Basic {}", protocol::base64(creds.as_bytes())))
            }
        };
        let tls = scheme.eq_ignore_ascii_case("https");
        let prefix = path.trim_end_matches('/').to_string();
        let base = format!("{}://{}{}", scheme.to_ascii_lowercase(), hostport, prefix);
        // host:port, keeping [v6] brackets; the scheme's port by default.
        let has_port = match hostport.rfind(':') {
            Some(i) => !hostport[i..].contains(']'),
            None => false,
        };
        let authority = if has_port {
            hostport.to_string()
        } else {
            format!("{hostport}:{}", if tls { 443 } else { 80 })
        };
        Ok(Endpoint {
            base,
            auth,
            tls,
            authority,
            prefix,
        })
    }

    /// `scheme://host[:port][/prefix]`, without credentials.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `/prefix/COMMAND/arg/arg...`, every argument percent-encoded.
    fn path(&self, command: &str, args: &[&str]) -> String {
        let mut path = String::with_capacity(self.prefix.len() + 64);
        path.push_str(&self.prefix);
        path.push('/');
        path.push_str(command);
        for a in args {
            path.push('/');
            protocol::encode_path_arg(a, &mut path);
        }
        path
    }

    /// `scheme://host[:port]` followed by `path`.
    fn url_of(&self, path: &str) -> String {
        format!(
            "{}{}",
            &self.base[..self.base.len() - self.prefix.len()],
            path
        )
    }

    /// `base/COMMAND/arg/arg...`, every argument percent-encoded.
    fn url(&self, command: &str, args: &[&str]) -> String {
        self.url_of(&self.path(command, args))
    }
}

/// One HTTP client to Webdis with its own connections: requests go over
/// a small keep-alive client (`http.rs`) for `http://`, over ureq for
/// `https://`; SUBSCRIBE streams always over ureq.
#[derive(Clone)]
pub struct Webdis {
    endpoint: std::sync::Arc<Endpoint>,
    /// Replaced (dropping its pooled connections) when a reply over it
    /// named another request.
    agent: std::sync::Arc<std::sync::Mutex<ureq::Agent>>,
    plain: Option<std::sync::Arc<http::Pool>>,
    /// Request nonces: a random prefix per handle, then a counter.
    nonce_prefix: std::sync::Arc<str>,
    nonces: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// Why one attempt of a request failed.
enum Failure {
    /// The response was malformed or answered another request (worth
    /// another try on a new connection).
    Garbled(Error),
    /// No response in time.
    Timeout(Error),
    Other(Error),
}

impl Failure {
    fn into_error(self) -> Error {
        match self {
            Failure::Garbled(e) | Failure::Timeout(e) | Failure::Other(e) => e,
        }
    }
}

impl Webdis {
    pub fn new(endpoint: std::sync::Arc<Endpoint>) -> Webdis {
        let plain =
            (!endpoint.tls).then(|| std::sync::Arc::new(http::Pool::new(&endpoint.authority)));
        // Unique enough across handles and processes that a reply Webdis
        // wrote to the wrong socket never names a request of this one.
        let nonce_prefix = crate::util::random_hex(8).unwrap_or_else(|_| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            format!("{:016x}", t as u64 ^ (std::process::id() as u64) << 40)
        });
        Webdis {
            endpoint,
            agent: std::sync::Arc::new(std::sync::Mutex::new(Webdis::new_agent())),
            plain,
            nonce_prefix: nonce_prefix.into(),
            nonces: Default::default(),
        }
    }

    fn new_agent() -> ureq::Agent {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_idle_connections_per_host(8)
            // ureq's default, set here on purpose: ureq writes a request's
            // headers and body separately, and with Nagle on every request
            // then waits for Webdis' delayed ACK (~40 ms; measured 23
            // publishes/s instead of ~6000).
            .no_delay(true)
            .user_agent(concat!("missionstream/", env!("CARGO_PKG_VERSION")))
            .build();
        ureq::Agent::with_parts(config, DefaultConnector::new(), LiteralResolver)
    }

    fn agent(&self) -> ureq::Agent {
        crate::util::lock(&self.agent).clone()
    }

    /// A nonce for the next request: never used before by this handle.
    fn next_nonce(&self) -> String {
        let n = self
            .nonces
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{}{n:x}", self.nonce_prefix)
    }

    /// The endpoint, shared.
    pub fn endpoint_arc(&self) -> std::sync::Arc<Endpoint> {
        self.endpoint.clone()
    }

    /// Closes this handle's connections and fails every call in flight on
    /// it at once; later calls fail too.
    pub fn shutdown(&self) {
        self.agent().shutdown();
        if let Some(plain) = &self.plain {
            plain.shutdown();
        }
    }

    /// Calls a function of the missionstream library:
    /// `PUT /FCALL[_RO]/<function>/<nkeys>/<keys...>/<version>/<nonce>/<args...>`
    /// with `body` as the last argument. Returns the reply without its
    /// nonce: the reply is proven to answer this request.
    pub fn fcall(
        &self,
        read_only: bool,
        function: &str,
        keys: &[&str],
        args: &[&str],
        body: &[u8],
        timeout: Duration,
    ) -> Result<Value> {
        self.fcall_reporting_resend(read_only, function, keys, args, body, timeout)
            .0
    }

    /// `fcall`, also telling whether the request was sent more than once
    /// (an earlier try may have been carried out, its response lost).
    pub fn fcall_reporting_resend(
        &self,
        read_only: bool,
        function: &str,
        keys: &[&str],
        args: &[&str],
        body: &[u8],
        timeout: Duration,
    ) -> (Result<Value>, bool) {
        let command = if read_only { "FCALL_RO" } else { "FCALL" };
        let nkeys = keys.len().to_string();
        let nonce = self.next_nonce();
        let mut parts: Vec<&str> = Vec::with_capacity(4 + keys.len() + args.len());
        parts.push(function);
        parts.push(&nkeys);
        parts.extend_from_slice(keys);
        parts.push(PROTOCOL_VERSION);
        parts.push(&nonce);
        parts.extend_from_slice(args);
        let path = self.endpoint.path(command, &parts);
        // Webdis 0.1.9 may write a message meant for a subscriber that just
        // hung up into a new connection that reuses its socket, ahead of the
        // real response, may write the reply to an abandoned request there,
        // and may lose a response the same way. So a request whose response
        // is garbled or names another request, or does not come within a
        // third of the timeout, is sent again on another connection, within
        // the timeout. Every try of one call carries the same nonce: a
        // reply to any of them answers it.
        // Every function of the library is safe to repeat: the read-only
        // ones and ms_reconnect/ms_heartbeat change nothing more the second
        // time; a repeated ms_start recognises the stream its first try
        // created by its fresh channel (Client::start); a repeated
        // ms_publish carries the same publish id, which the functions store
        // only once; a repeated ms_stop that finds the stream gone counts
        // as done (Client::stop, told so by the returned flag).
        let deadline = Instant::now() + timeout;
        let per_try = (timeout / 3).max(Duration::from_secs(1)).min(timeout);
        let mut tries = 0;
        loop {
            tries += 1;
            let try_started = Instant::now();
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            let result = self.put(
                &path,
                body,
                left,
                per_try.min(left),
                timeout,
                |status, body| {
                    match protocol::function_reply(command, status, body, &nonce) {
                        // A 404/405 (not Webdis?) or MSARG: reported, not
                        // retried, and the connection is not reused.
                        protocol::Answer::Ours(Err(e)) if e.status == Status::MS_ERR_PROTOCOL => {
                            Err(Failure::Other(e))
                        }
                        protocol::Answer::Ours(r) => Ok(r),
                        protocol::Answer::NotOurs(what) => Err(Failure::Garbled(Error::new(
                            Status::MS_ERR_PROTOCOL,
                            format!(
                                "Webdis at {} answered {function} with {what}",
                                self.endpoint.base
                            ),
                        ))),
                    }
                },
            );
            let more_time = Instant::now() < deadline;
            if let Err(f) = &result {
                let (Failure::Garbled(e) | Failure::Timeout(e) | Failure::Other(e)) = f;
                crate::debug_log!(
                    "{function}: try {tries} failed after {:?}: {}",
                    try_started.elapsed(),
                    e.message
                );
            }
            match result {
                Ok(reply) => return (reply, tries > 1),
                // At most three tries: a server that always garbles (not
                // Webdis at all?) is not hammered for the whole timeout.
                Err(Failure::Garbled(_)) if tries < 3 && (tries == 1 || more_time) => {}
                Err(Failure::Timeout(_)) if more_time => {}
                Err(f) => return (Err(f.into_error()), tries > 1),
            }
        }
    }

    /// One PUT of `path` within `timeout`, whose response must begin
    /// within `answer_within` of the request being sent; `answer` reads
    /// the HTTP status and body. The connection is kept for the next
    /// request only when `answer` accepts the response as this request's.
    fn put<T>(
        &self,
        path: &str,
        body: &[u8],
        timeout: Duration,
        answer_within: Duration,
        reported_timeout: Duration,
        answer: impl FnOnce(u16, &[u8]) -> std::result::Result<T, Failure>,
    ) -> std::result::Result<T, Failure> {
        if let Some(plain) = &self.plain {
            let auth = match &self.endpoint.auth {
                Some(a) => format!("Authorization: {a}\r\n"),
                None => String::new(),
            };
            let response = plain
                .put_within(
                    path,
                    &auth,
                    body,
                    timeout,
                    answer_within,
                    MAX_REPLY as usize,
                )
                .map_err(|e| self.plain_failure(e, reported_timeout))?;
            let result = answer(response.status, &response.body);
            if result.is_ok() {
                plain.recycle(response.conn);
            } else {
                // Dropping the connection; the idle ones may be mixed up too.
                plain.forget_idle();
            }
            return result;
        }
        let url = self.endpoint.url_of(path);
        let mut req = self
            .agent()
            .put(&url)
            .config()
            .timeout_global(Some(timeout))
            .timeout_recv_response(Some(answer_within))
            .build();
        if let Some(auth) = &self.endpoint.auth {
            req = req.header("Authorization", auth);
        }
        let ureq_failure = |e: ureq::Error| match e {
            ureq::Error::Protocol(_) => Failure::Garbled(self.transport_error(e, reported_timeout)),
            ureq::Error::Timeout(_) => Failure::Timeout(self.transport_error(e, reported_timeout)),
            e => Failure::Other(self.transport_error(e, reported_timeout)),
        };
        let response = req.send(body).map_err(ureq_failure)?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .with_config()
            .limit(MAX_REPLY)
            .read_to_vec()
            .map_err(ureq_failure)?;
        let result = answer(status, &body);
        if matches!(result, Err(Failure::Garbled(_))) {
            // ureq has pooled the connection already: a new agent drops it.
            *crate::util::lock(&self.agent) = Webdis::new_agent();
        }
        result
    }

    fn plain_failure(&self, e: http::HttpError, timeout: Duration) -> Failure {
        let base = &self.endpoint.base;
        match e {
            http::HttpError::Timeout => Failure::Timeout(Error::new(
                Status::MS_ERR_TIMEOUT,
                format!(
                    "Webdis at {base} did not answer within {} ms",
                    timeout.as_millis()
                ),
            )),
            http::HttpError::Malformed(what) => Failure::Garbled(Error::new(
                Status::MS_ERR_PROTOCOL,
                format!("Webdis at {base} sent a malformed HTTP response: {what}"),
            )),
            e => Failure::Other(Error::new(
                Status::MS_ERR_UNAVAILABLE,
                format!("cannot reach Webdis at {base}: {e}; is it running, and is the URL right?"),
            )),
        }
    }

    /// Opens `GET /SUBSCRIBE/<channel>`; returns the streaming body.
    pub fn subscribe(
        &self,
        channel: &str,
        timeout: Duration,
    ) -> Result<impl Read + Send + 'static> {
        let url = self.endpoint.url("SUBSCRIBE", &[channel]);
        let mut req = self
            .agent()
            .get(&url)
            .config()
            .timeout_connect(Some(timeout))
            .timeout_send_request(Some(timeout))
            .timeout_recv_response(Some(timeout))
            .build();
        if let Some(auth) = &self.endpoint.auth {
            req = req.header("Authorization", auth);
        }
        let response = req.call().map_err(|e| self.transport_error(e, timeout))?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(protocol::webdis_reply("SUBSCRIBE", status, b"").unwrap_err());
        }
        Ok(response.into_body().into_reader())
    }

    pub fn transport_error(&self, e: ureq::Error, timeout: Duration) -> Error {
        match e {
            ureq::Error::Timeout(_) => Error::new(
                Status::MS_ERR_TIMEOUT,
                format!(
                    "Webdis at {} did not answer within {} ms",
                    self.endpoint.base,
                    timeout.as_millis()
                ),
            ),
            ureq::Error::Protocol(e) => Error::new(
                Status::MS_ERR_PROTOCOL,
                format!(
                    "Webdis at {} sent a malformed HTTP response: {e}",
                    self.endpoint.base
                ),
            ),
            ureq::Error::BodyExceedsLimit(n) => Error::new(
                Status::MS_ERR_PROTOCOL,
                format!("Webdis sent a reply over the {n}-byte limit"),
            ),
            e => Error::new(
                Status::MS_ERR_UNAVAILABLE,
                format!(
                    "cannot reach Webdis at {}: {e}; is it running, and is the URL right?",
                    self.endpoint.base
                ),
            ),
        }
    }
}

/// ureq's default resolver runs on every request, pooled connection or
/// not, and with a timeout set it resolves on a new thread each time: a
/// thread spawned and joined per request, which halved the rate of
/// acknowledged publishes on loopback. An IP literal (the usual Webdis URL)
/// needs no lookup, so it is answered here; host names still go through
/// ureq's resolver, bounded by the request timeout.
#[derive(Debug)]
struct LiteralResolver;

impl Resolver for LiteralResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> std::result::Result<ResolvedSocketAddrs, ureq::Error> {
        let host = uri.host().unwrap_or("");
        let ip = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .parse::<IpAddr>();
        let port = uri.port_u16().or(match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("https") => Some(443),
            Some(s) if s.eq_ignore_ascii_case("http") => Some(80),
            _ => None,
        });
        match (ip, port) {
            (Ok(ip), Some(port)) => {
                let mut out = self.empty();
                out.push(SocketAddr::new(ip, port));
                Ok(out)
            }
            _ => DefaultResolver::default().resolve(uri, config, timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let e = Endpoint::parse("http://127.0.0.1:7379").unwrap();
        assert_eq!(e.base, "http://127.0.0.1:7379");
        assert!(e.auth.is_none());
        let e = Endpoint::parse("HTTPS://u%40x:p%3Aw@host/prefix/").unwrap();
        assert_eq!(e.base, "https://host/prefix");
        assert_eq!(
            e.auth.as_deref(),
            Some(format!("Basic {}", protocol::base64(b"u@x:p:w")).as_str())
        );
        assert_eq!(
            e.url("FCALL", &["a/b.c"]),
            "https://host/prefix/FCALL/a%2Fb%2Ec"
        );
        for bad in [
            "",
            "127.0.0.1:7379",
            "ftp://x",
            "http://",
            "http://:80",
            "http://h?x=1",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }
}
