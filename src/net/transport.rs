//! HTTP to Webdis: a client keeps one set of keep-alive connections per
//! endpoint (`Conns`: `http.rs` for `http://` requests, ureq agents for
//! `https://`), shared by all its requests; a `Webdis` handle is one
//! owner's way to them, and its `shutdown` breaks that owner's calls in
//! flight (and no other's). SUBSCRIBE streams (over ureq) have a
//! connection of their own each.
//!
//! TLS trusts the bundled web roots, or only the certificates of a CA file
//! (`Endpoint::set_tls_roots`, shared by every handle of a client): the
//! next connections are built with the trust anchors set last.
//!
//! Every function call carries a request nonce that the functions echo in
//! their reply (and name in their errors): a reply that names another
//! request is never taken as the answer, its connection is dropped, and
//! the request is sent again.

use crate::error::{Error, Kind, Result, Status};
use crate::net::cancel::{Breaker, Cancel};
use crate::net::http;
use crate::wire::functions::Call;
use crate::wire::protocol::{self, Refusal, PROTOCOL_VERSION};
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use ureq::tls::{Certificate, RootCerts, TlsConfig};
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
    /// The trust anchors of `https://`, shared by every handle made from
    /// this endpoint.
    trust: Arc<Trust>,
}

/// Trust anchors that may change while handles use them.
#[derive(Debug)]
struct Trust {
    /// Bumped at every change; a handle compares it with the one its agent
    /// was built with.
    generation: AtomicU64,
    anchors: Mutex<Anchors>,
    /// The rustls configuration of the hand-driven TLS connections, and
    /// the generation of the anchors it was built with.
    client_config: Mutex<Option<(u64, Arc<rustls::ClientConfig>)>>,
}

#[derive(Clone, Debug)]
struct Anchors {
    generation: u64,
    roots: RootCerts,
    /// The CA file they come from; None: the bundled web roots.
    file: Option<String>,
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
            trust: Arc::new(Trust {
                generation: AtomicU64::new(0),
                anchors: Mutex::new(Anchors {
                    generation: 0,
                    roots: RootCerts::WebPki,
                    file: None,
                }),
                client_config: Mutex::new(None),
            }),
        })
    }

    /// From now on, `https://` connections of every handle of this
    /// endpoint trust `certs` (read from `file`) only; connections already
    /// open are kept.
    pub fn set_tls_roots(&self, certs: Arc<Vec<Certificate<'static>>>, file: String) {
        let mut anchors = crate::util::lock(&self.trust.anchors);
        let generation = anchors.generation + 1;
        *anchors = Anchors {
            generation,
            roots: RootCerts::Specific(certs),
            file: Some(file),
        };
        self.trust.generation.store(generation, Ordering::Release);
    }

    /// `scheme://host[:port][/prefix]`, without credentials.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Whether `other` names the same Webdis (scheme, host, port and
    /// prefix; the port filled in, the host's case ignored).
    pub fn same_node(&self, other: &Endpoint) -> bool {
        self.tls == other.tls
            && self.authority.eq_ignore_ascii_case(&other.authority)
            && self.prefix == other.prefix
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
    #[cfg(test)]
    fn url(&self, command: &str, args: &[&str]) -> String {
        self.url_of(&self.path(command, args))
    }
}

impl Endpoint {
    /// `host:port` (the scheme's port filled in; `[v6]` kept bracketed).
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The host of the URL, without port or brackets.
    pub fn host(&self) -> &str {
        let host = self
            .authority
            .rsplit_once(':')
            .map_or(self.authority.as_str(), |(h, _)| h);
        host.strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
    }

    /// https://
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The `Authorization` header value of `user:pass@`, if any.
    pub fn authorization(&self) -> Option<&str> {
        self.auth.as_deref()
    }

    /// The path of `GET /SUBSCRIBE/<channel>` (prefix included).
    pub fn subscribe_path(&self, channel: &str) -> String {
        self.path("SUBSCRIBE", &[channel])
    }

    /// The addresses of the host (a literal IP at once; a name through
    /// the system resolver, which blocks: never on the reactor).
    pub fn resolve(&self) -> Result<Vec<SocketAddr>> {
        use std::net::ToSocketAddrs;
        let port = self
            .authority
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .ok_or_else(|| {
                Error::invalid(format!("the Webdis URL {} has no valid port", self.base))
            })?;
        if let Ok(ip) = self.host().parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let addrs: Vec<SocketAddr> = (self.host(), port)
            .to_socket_addrs()
            .map_err(|e| {
                Error::new(
                    Status::MS_ERR_UNAVAILABLE,
                    format!("cannot resolve the host of {}: {e}", self.base),
                )
                .kinded(Kind::Unreachable)
            })?
            .collect();
        if addrs.is_empty() {
            return Err(Error::new(
                Status::MS_ERR_UNAVAILABLE,
                format!("the host of {} has no address", self.base),
            )
            .kinded(Kind::Unreachable));
        }
        Ok(addrs)
    }

    /// The rustls configuration of `https://` connections driven by hand
    /// (the non-blocking SUBSCRIBE): the trust anchors of the moment, one
    /// configuration per change of them.
    pub fn tls_client_config(&self) -> Arc<rustls::ClientConfig> {
        let anchors = crate::util::lock(&self.trust.anchors).clone();
        let mut cached = crate::util::lock(&self.trust.client_config);
        if let Some((generation, config)) = cached.as_ref() {
            if *generation == anchors.generation {
                return config.clone();
            }
        }
        let mut roots = rustls::RootCertStore::empty();
        match &anchors.roots {
            RootCerts::Specific(certs) => {
                roots.add_parsable_certificates(
                    certs
                        .iter()
                        .map(|c| rustls::pki_types::CertificateDer::from(c.der()).into_owned()),
                );
            }
            _ => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(rustls::ALL_VERSIONS)
                .expect("ring supports every TLS version rustls has")
                .with_root_certificates(roots)
                .with_no_client_auth(),
        );
        *cached = Some((anchors.generation, config.clone()));
        config
    }

    /// The error of a TLS handshake rustls refused, naming its cause: the
    /// server's certificate is not trusted or not for this host
    /// (MS_ERR_UNAVAILABLE: Webdis cannot be reached safely), or the
    /// server does not speak TLS (MS_ERR_PROTOCOL).
    pub fn tls_refusal(&self, e: &rustls::Error) -> Error {
        use rustls::{CertificateError as C, Error as E};
        let base = &self.base;
        let host = self
            .authority
            .rsplit_once(':')
            .map_or(self.authority.as_str(), |(h, _)| h);
        let unavailable = |cause: String| {
            Error::new(
                Status::MS_ERR_UNAVAILABLE,
                format!("cannot reach Webdis at {base} over TLS: {cause}"),
            )
        };
        match e {
            E::InvalidCertificate(C::UnknownIssuer) => {
                let trusted = match &crate::util::lock(&self.trust.anchors).file {
                    Some(file) => format!("the CA file \"{file}\""),
                    None => "the bundled web roots (a network with its own certificate authority: set its CA file with ms_client_set_tls_ca_file)".into(),
                };
                unavailable(format!(
                    "certificate not trusted: the server's certificate is not issued by a certificate authority of {trusted}"
                ))
            }
            E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
                unavailable(format!(
                    "host name mismatch: the server's certificate is not valid for {host}"
                ))
            }
            E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
                unavailable("the server's certificate has expired".into())
            }
            E::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
                unavailable("the server's certificate is not valid yet (check the clock)".into())
            }
            E::InvalidCertificate(c) => {
                unavailable(format!("the server's certificate is refused ({c:?})"))
            }
            E::InvalidMessage(_) => not_tls(base),
            E::AlertReceived(a) => unavailable(format!(
                "the server refused the TLS handshake (alert {a:?})"
            )),
            other => unavailable(format!("TLS failed: {other}")),
        }
    }

    /// A TLS failure described by text only.
    pub fn tls_failed(&self, what: impl std::fmt::Display) -> Error {
        Error::new(
            Status::MS_ERR_UNAVAILABLE,
            format!(
                "cannot reach Webdis at {} over TLS: TLS failed: {what}",
                self.base
            ),
        )
    }

    /// The server hung up during the TLS handshake.
    pub fn tls_hung_up(&self) -> Error {
        Error::new(
            Status::MS_ERR_UNAVAILABLE,
            format!(
                "cannot reach Webdis at {} over TLS: the server closed the connection during the TLS handshake (does this port speak TLS?)",
                self.base
            ),
        )
    }

    /// A plain `http://` request answered by a TLS port (nginx: "The
    /// plain HTTP request was sent to HTTPS port"; Go and Caddy: "Client
    /// sent an HTTP request to an HTTPS server."); None otherwise.
    pub fn tls_port_error(&self, status: u16, body: &[u8]) -> Option<Error> {
        if self.tls || status != 400 {
            return None;
        }
        let text = String::from_utf8_lossy(&body[..body.len().min(4096)]).to_ascii_lowercase();
        (text.contains("http request was sent to https port")
            || text.contains("http request to an https server"))
        .then(|| speaks_tls(&self.base))
    }
}

/// The connections a client keeps to one endpoint, shared by every
/// request of the client (its leads, its follows, the calls on the
/// caller's threads): a keep-alive pool of plain connections for
/// `http://`, a stack of idle ureq agents (one connection each) for
/// `https://`; at most `max_idle` idle of either are kept, as many as
/// the client runs requests at once. Webdis then holds that many request
/// connections per client, not one per stream.
pub struct Conns {
    endpoint: Arc<Endpoint>,
    plain: Option<http::Pool>,
    /// Idle agents (`https://`), each holding at most one idle connection,
    /// with the `Trust::generation` each was built with.
    agents: Mutex<Vec<(ureq::Agent, u64)>>,
    max_idle: usize,
    /// Request nonces: a random prefix per client and endpoint, then a
    /// counter.
    nonce_prefix: Arc<str>,
    nonces: AtomicU64,
    /// Shut down: every later request fails.
    shut: std::sync::atomic::AtomicBool,
}

impl Conns {
    /// The connections of a client to `endpoint`, keeping at most
    /// `max_idle` idle; no I/O.
    pub fn new(endpoint: Arc<Endpoint>, max_idle: usize) -> Conns {
        let plain = (!endpoint.tls).then(|| http::Pool::with_idle(&endpoint.authority, max_idle));
        // Unique enough across clients and processes that a reply Webdis
        // wrote to the wrong socket never names a request of this one.
        let nonce_prefix = crate::util::random_hex(8).unwrap_or_else(|_| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            format!("{:016x}", t as u64 ^ (std::process::id() as u64) << 40)
        });
        Conns {
            endpoint,
            plain,
            agents: Mutex::new(Vec::new()),
            max_idle: max_idle.max(1),
            nonce_prefix: nonce_prefix.into(),
            nonces: AtomicU64::new(0),
            shut: Default::default(),
        }
    }

    /// An idle agent built with the trust anchors of now, or a new one.
    fn lend_agent(&self) -> (ureq::Agent, u64) {
        let now = self.endpoint.trust.generation.load(Ordering::Acquire);
        let mut idle = crate::util::lock(&self.agents);
        while let Some((agent, generation)) = idle.pop() {
            if generation == now {
                return (agent, generation);
            }
        }
        drop(idle);
        new_agent(&self.endpoint.trust)
    }

    /// Keeps an agent whose request was answered for the next request
    /// (unless `max_idle` are idle already).
    fn give_back(&self, agent: ureq::Agent, generation: u64) {
        let mut idle = crate::util::lock(&self.agents);
        if idle.len() < self.max_idle && !self.shut.load(Ordering::SeqCst) {
            idle.push((agent, generation));
        }
    }

    /// Drops the idle connections (after a response that answered another
    /// request: the idle ones may be mixed up too).
    fn forget_idle(&self) {
        crate::util::lock(&self.agents).clear();
        if let Some(plain) = &self.plain {
            plain.forget_idle();
        }
    }

    /// A nonce for the next request: never used before by this client on
    /// this endpoint.
    fn next_nonce(&self) -> String {
        let n = self.nonces.fetch_add(1, Ordering::Relaxed);
        format!("{}{n:x}", self.nonce_prefix)
    }

    /// Closes the idle connections, breaks the plain requests in flight
    /// (each owner breaks its own over TLS) and fails every later request
    /// (the client is going).
    pub fn shutdown(&self) {
        self.shut.store(true, Ordering::SeqCst);
        crate::util::lock(&self.agents).clear();
        if let Some(plain) = &self.plain {
            plain.shutdown();
        }
    }
}

/// A ureq agent keeping at most one idle connection, with the trust
/// anchors set last, and their generation.
fn new_agent(trust: &Trust) -> (ureq::Agent, u64) {
    let Anchors {
        generation, roots, ..
    } = crate::util::lock(&trust.anchors).clone();
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_idle_connections_per_host(1)
        .max_idle_connections(1)
        // ureq's default, set here on purpose: ureq writes a request's
        // headers and body separately, and with Nagle on every request
        // then waits for Webdis' delayed ACK (~40 ms; measured 23
        // publishes/s instead of ~6000).
        .no_delay(true)
        .user_agent(concat!("missionstream/", env!("CARGO_PKG_VERSION")))
        .tls_config(TlsConfig::builder().root_certs(roots).build())
        .build();
    (
        ureq::Agent::with_parts(config, DefaultConnector::new(), LiteralResolver),
        generation,
    )
}

/// One owner's way to Webdis: the client's shared connections to an
/// endpoint (`Conns`), and the owner's `Cancel`, whose `shutdown` breaks
/// this owner's calls in flight (and fails its later ones) without
/// touching the other owners' calls on the same connections.
#[derive(Clone)]
pub struct Webdis {
    endpoint: Arc<Endpoint>,
    conns: Arc<Conns>,
    cancel: Arc<Cancel>,
}

/// The kind of failure a node's refusal is (`Answer::Refused`).
fn refusal_kind(why: Refusal) -> Kind {
    match why {
        Refusal::Replica => Kind::Replica,
        Refusal::NotReady => Kind::NotReady,
        Refusal::Down => Kind::Down,
    }
}

/// Why a node failed a call of this kind, when another node may do
/// better: None when its answer stands. A node that gave no usable answer
/// (garbled, none in time, unreachable) counts as down.
fn node_refusal(kind: Kind) -> Option<Refusal> {
    match kind {
        Kind::Replica => Some(Refusal::Replica),
        Kind::NotReady => Some(Refusal::NotReady),
        k if k.node_failed() => Some(Refusal::Down),
        _ => None,
    }
}

/// What a response (HTTP `status`, `body`) to a call of `function` with
/// request nonce `nonce` says, without I/O: Ok, the call's answer (its
/// reply, or an error of the functions that stands); Err, why this try
/// failed, of its kind: garbled when it answers another request, the
/// node's refusal, or a 404/405 (not Webdis?) or MSARG, reported and not
/// retried. On Err the connection is not reused.
fn answer_of(
    command: &str,
    function: &str,
    base: &str,
    status: u16,
    body: &[u8],
    nonce: &str,
) -> Result<Result<Value>> {
    match protocol::function_reply(command, status, body, nonce) {
        protocol::Answer::Ours(Err(e)) if e.status == Status::MS_ERR_PROTOCOL => Err(e),
        protocol::Answer::Ours(r) => Ok(r),
        protocol::Answer::Refused(why, e) => Err(e.kinded(refusal_kind(why))),
        protocol::Answer::NotOurs(what) => Err(Error::new(
            Status::MS_ERR_PROTOCOL,
            format!("Webdis at {base} answered {function} with {what}"),
        )
        .kinded(Kind::Garbled)),
    }
}

/// How long one try of a call within `timeout` waits for its answer: a
/// third of the timeout (at least 1 s, at most the timeout), so that a
/// response Webdis lost leaves time to send the request again.
fn per_try(timeout: Duration) -> Duration {
    (timeout / 3).max(Duration::from_secs(1)).min(timeout)
}

/// What a call does after a try that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Sends the request again at once, on another connection.
    Retry,
    /// Sends it again after this pause.
    RetryAfter(Duration),
    /// Gives up: the failure is the call's.
    GiveUp,
}

/// The retry policy of a call on one node, without I/O: told of each
/// failed try, says whether to try again.
#[derive(Debug)]
struct Retries {
    /// Tries that failed so far.
    tries: u32,
    /// The pause after a proxy's 429, doubling up to 1 s.
    busy_pause: Duration,
}

impl Retries {
    fn new() -> Retries {
        Retries {
            tries: 0,
            busy_pause: Duration::from_millis(100),
        }
    }

    /// After a try that failed with a failure of `kind`, `left` before the
    /// call's deadline: a garbled response is tried again (at most three
    /// tries: a server that always garbles, not Webdis at all?, is not
    /// hammered for the whole timeout; the second even when out of time),
    /// a lost one (no answer in time) while time is left, a proxy's 429
    /// after a pause while time is left; any other failure stands.
    fn after(&mut self, kind: Kind, left: Duration) -> Next {
        self.tries += 1;
        let more_time = !left.is_zero();
        match kind {
            Kind::Garbled if self.tries < 3 && (self.tries == 1 || more_time) => Next::Retry,
            Kind::Timeout if more_time => Next::Retry,
            Kind::Busy if more_time => {
                let pause = self.busy_pause.min(left);
                self.busy_pause = (self.busy_pause * 2).min(Duration::from_secs(1));
                Next::RetryAfter(pause)
            }
            _ => Next::GiveUp,
        }
    }
}

/// How a function call ended on one node.
pub struct Called {
    pub result: Result<Value>,
    /// The request was sent more than once (an earlier try may have been
    /// carried out, its response lost).
    pub resent: bool,
    /// The node did not answer the call, and why: another node may.
    pub refused: Option<Refusal>,
    /// The request nonce every try carried: what a sealed value of the
    /// reply is opened with (protocol::open_sealed).
    pub nonce: String,
}

impl Webdis {
    /// `conns` used by the owner of `cancel`.
    pub fn new(conns: Arc<Conns>, cancel: Arc<Cancel>) -> Webdis {
        Webdis {
            endpoint: conns.endpoint.clone(),
            conns,
            cancel,
        }
    }

    fn next_nonce(&self) -> String {
        self.conns.next_nonce()
    }

    /// Calls a function of the missionstream library:
    /// `PUT /FCALL[_RO]/<function>/<nkeys>/<keys...>/<version>/<nonce>/<args...>`
    /// with `body` as the last argument (given as slices sent one after
    /// the other: no copy joins them). Returns the reply without its
    /// nonce: the reply is proven to answer this request.
    pub fn fcall(&self, call: &Call, body: &[&[u8]], timeout: Duration) -> Result<Value> {
        let (keys, args) = (call.keys(), call.args());
        self.call(call.read_only, call.function, &keys, &args, body, timeout)
            .result
    }

    /// `fcall`, telling also whether the request was sent more than once
    /// (an earlier try may have been carried out, its response lost) and
    /// whether this node refused it.
    pub fn call(
        &self,
        read_only: bool,
        function: &str,
        keys: &[&str],
        args: &[&str],
        body: &[&[u8]],
        timeout: Duration,
    ) -> Called {
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
        // created by its key derivation, which carries a fresh random salt
        // (Client::start); a repeated
        // ms_publish carries the same publish id, which the functions store
        // only once; a repeated ms_stop that finds the stream gone counts
        // as done (Client::stop, told so by the returned flag).
        let deadline = Instant::now() + timeout;
        let per_try = per_try(timeout);
        let mut retries = Retries::new();
        loop {
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
                    answer_of(command, function, &self.endpoint.base, status, body, &nonce)
                },
            );
            let left = deadline.saturating_duration_since(Instant::now());
            if let Err(e) = &result {
                crate::util::debug_log!(
                    "{function} at {}: try {} failed after {:?}: {}",
                    self.endpoint.base,
                    retries.tries + 1,
                    try_started.elapsed(),
                    e.message
                );
            }
            let resent = retries.tries > 0;
            let e = match result {
                Ok(result) => {
                    return Called {
                        result,
                        resent,
                        refused: None,
                        nonce,
                    }
                }
                Err(e) => e,
            };
            match retries.after(e.kind, left) {
                Next::Retry => {}
                Next::RetryAfter(pause) => std::thread::sleep(pause),
                Next::GiveUp => {
                    return Called {
                        refused: node_refusal(e.kind),
                        result: Err(e),
                        resent,
                        nonce,
                    }
                }
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
        body: &[&[u8]],
        timeout: Duration,
        answer_within: Duration,
        reported_timeout: Duration,
        answer: impl FnOnce(u16, &[u8]) -> Result<T>,
    ) -> Result<T> {
        if self.cancel.is_shut() || self.conns.shut.load(Ordering::SeqCst) {
            return Err(self.plain_failure(http::HttpError::Shutdown, reported_timeout));
        }
        if let Some(plain) = &self.conns.plain {
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
                    &self.cancel,
                )
                .map_err(|e| self.plain_failure(e, reported_timeout))?;
            if let Some(f) = self.not_an_answer(response.status, &response.body) {
                plain.forget_idle();
                return Err(f);
            }
            let result = answer(response.status, &response.body);
            if result.is_ok() {
                plain.recycle(response.conn);
            } else {
                // Dropping the connection; the idle ones may be mixed up too.
                plain.forget_idle();
            }
            return result;
        }
        // An agent (one connection) lent to this request alone, so that
        // the owner's `Cancel` breaks this request and no other.
        let (agent, generation) = self.conns.lend_agent();
        let entry = self.cancel.enter(Breaker::Agent(agent.clone()));
        let response = self.put_tls(&agent, path, body, timeout, answer_within, reported_timeout);
        let intact = self.cancel.leave(entry);
        let (status, body) = response?;
        if let Some(f) = self.not_an_answer(status, &body) {
            self.conns.forget_idle();
            return Err(f);
        }
        let result = answer(status, &body);
        if matches!(&result, Err(e) if e.kind == Kind::Garbled) {
            // The agent (and its connection) is dropped; the idle ones
            // may be mixed up too.
            self.conns.forget_idle();
        } else if intact {
            self.conns.give_back(agent, generation);
        }
        result
    }

    /// The PUT of `put` over `https://`, on `agent`: the status and body.
    fn put_tls(
        &self,
        agent: &ureq::Agent,
        path: &str,
        body: &[&[u8]],
        timeout: Duration,
        answer_within: Duration,
        reported_timeout: Duration,
    ) -> Result<(u16, Vec<u8>)> {
        let url = self.endpoint.url_of(path);
        let mut req = agent
            .put(&url)
            .config()
            .timeout_global(Some(timeout))
            .timeout_recv_response(Some(answer_within))
            .build();
        if let Some(auth) = &self.endpoint.auth {
            req = req.header("Authorization", auth);
        }
        // The slices read one after the other, with their sum as the
        // Content-Length (ureq would otherwise send a reader chunked).
        req = req.header("Content-Length", http::body_len(body).to_string());
        let mut reader = Slices { parts: body, at: 0 };
        let ureq_failure = |e: ureq::Error| self.ureq_failure(e, reported_timeout);
        let response = req
            .send(ureq::SendBody::from_reader(&mut reader))
            .map_err(ureq_failure)?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .with_config()
            .limit(MAX_REPLY)
            .read_to_vec()
            .map_err(ureq_failure)?;
        Ok((status, body))
    }

    fn plain_failure(&self, e: http::HttpError, timeout: Duration) -> Error {
        let base = &self.endpoint.base;
        match e {
            http::HttpError::Timeout => Error::new(
                Status::MS_ERR_TIMEOUT,
                format!(
                    "Webdis at {base} did not answer within {} ms",
                    timeout.as_millis()
                ),
            )
            .kinded(Kind::Timeout),
            http::HttpError::Malformed(what) => Error::new(
                Status::MS_ERR_PROTOCOL,
                format!("Webdis at {base} sent a malformed HTTP response: {what}"),
            )
            .kinded(Kind::Garbled),
            e => Error::new(
                Status::MS_ERR_UNAVAILABLE,
                format!("cannot reach Webdis at {base}: {e}; is it running, and is the URL right?"),
            )
            .kinded(Kind::Unreachable),
        }
    }

    /// A failed ureq request as an error of its kind: a malformed
    /// response is `Garbled`, none in time `Timeout`, a connection that
    /// failed (not its TLS) `Unreachable`; anything else keeps its status
    /// alone.
    fn ureq_failure(&self, e: ureq::Error, timeout: Duration) -> Error {
        match e {
            ureq::Error::Protocol(_) => self.transport_error(e, timeout).kinded(Kind::Garbled),
            ureq::Error::Timeout(_) => self.transport_error(e, timeout).kinded(Kind::Timeout),
            e => {
                let tls = self.tls_error(&e).is_some();
                let error = self.transport_error(e, timeout);
                if tls || error.status != Status::MS_ERR_UNAVAILABLE {
                    error
                } else {
                    error.kinded(Kind::Unreachable)
                }
            }
        }
    }

    pub fn transport_error(&self, e: ureq::Error, timeout: Duration) -> Error {
        if let Some(e) = self.tls_error(&e) {
            return e;
        }
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

impl Webdis {
    /// The error of a failed TLS handshake, naming its cause: the server's
    /// certificate is not trusted or not for this host (MS_ERR_UNAVAILABLE:
    /// Webdis cannot be reached safely), or the server does not speak TLS
    /// (MS_ERR_PROTOCOL). None for other failures.
    fn tls_error(&self, e: &ureq::Error) -> Option<Error> {
        let rustls_error = match e {
            ureq::Error::Rustls(r) => Some(r),
            ureq::Error::Io(io) => io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()),
            _ => None,
        };
        match rustls_error {
            Some(r) => Some(self.endpoint.tls_refusal(r)),
            None => match e {
                ureq::Error::Tls(what) => Some(self.endpoint.tls_failed(what)),
                // rustls' bare EOF: the server hung up in the handshake.
                ureq::Error::Io(io)
                    if self.endpoint.tls
                        && io.kind() == std::io::ErrorKind::UnexpectedEof
                        && io.get_ref().is_none() =>
                {
                    Some(self.endpoint.tls_hung_up())
                }
                _ => None,
            },
        }
    }

    /// The error of a plain `http://` request answered by a TLS port; None
    /// for any other response.
    fn tls_port_error(&self, status: u16, body: &[u8]) -> Option<Error> {
        self.endpoint.tls_port_error(status, body)
    }

    /// A response that is not Webdis' answer to the request: from a TLS
    /// port (final), or a proxy's 502 Bad Gateway, which a proxy in front
    /// of Webdis answers when Webdis sent it a response it could not read
    /// (worth another try, as when Webdis garbles a response itself) or
    /// is down.
    fn not_an_answer(&self, status: u16, body: &[u8]) -> Option<Error> {
        if let Some(e) = self.tls_port_error(status, body) {
            return Some(e);
        }
        if status == 429 {
            return Some(Error::new(
                Status::MS_ERR_THROTTLED,
                format!(
                    "the proxy at {} refused the request: too many requests from this address (HTTP 429); tried again until the timeout",
                    self.endpoint.base
                ),
            )
            .kinded(Kind::Busy));
        }
        (status == 502).then(|| {
            Error::new(
                Status::MS_ERR_UNAVAILABLE,
                format!(
                    "the proxy at {} answered HTTP 502 (Bad Gateway): Webdis behind it is down, unreachable from it, or sent it a malformed response",
                    self.endpoint.base
                ),
            )
            .kinded(Kind::Garbled)
        })
    }
}

/// A plain `http://` URL pointed at a port that speaks TLS.
fn speaks_tls(base: &str) -> Error {
    Error::new(
        Status::MS_ERR_PROTOCOL,
        format!("the server at {base} speaks TLS, not plain HTTP: use an https:// URL for it"),
    )
}

/// An `https://` URL pointed at a port that does not speak TLS.
fn not_tls(base: &str) -> Error {
    Error::new(
        Status::MS_ERR_PROTOCOL,
        format!(
            "the server at {base} does not speak TLS (its answer to the TLS handshake is not TLS): use an http:// URL for it, or the port of its TLS front"
        ),
    )
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

/// The certificates of a PEM file, as trust anchors: every certificate in
/// it must be one (a CA certificate rustls can read); other PEM items (a
/// private key) are ignored.
pub fn load_ca_file(path: &std::path::Path) -> Result<Arc<Vec<Certificate<'static>>>> {
    let shown = path.display();
    let pem = std::fs::read(path)
        .map_err(|e| Error::invalid(format!("cannot read the CA file \"{shown}\": {e}")))?;
    let mut certs = Vec::new();
    let mut store = rustls::RootCertStore::empty();
    for item in ureq::tls::parse_pem(&pem) {
        let item = item.map_err(|e| {
            Error::invalid(format!("the CA file \"{shown}\" is not valid PEM: {e}"))
        })?;
        if let ureq::tls::PemItem::Certificate(cert) = item {
            store
                .add(rustls::pki_types::CertificateDer::from(cert.der()))
                .map_err(|e| {
                    Error::invalid(format!(
                        "certificate {} of the CA file \"{shown}\" cannot be a trust anchor: {e}",
                        certs.len() + 1
                    ))
                })?;
            certs.push(cert);
        }
    }
    if certs.is_empty() {
        return Err(Error::invalid(format!(
            "the CA file \"{shown}\" holds no certificate (no \"-----BEGIN CERTIFICATE-----\" block)"
        )));
    }
    Ok(Arc::new(certs))
}

/// A body given as slices, read one after the other.
struct Slices<'a> {
    parts: &'a [&'a [u8]],
    /// Bytes of the first part already read.
    at: usize,
}

impl std::io::Read for Slices<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while let Some((first, rest)) = self.parts.split_first() {
            let left = &first[self.at..];
            if left.is_empty() {
                self.parts = rest;
                self.at = 0;
                continue;
            }
            let n = left.len().min(buf.len());
            buf[..n].copy_from_slice(&left[..n]);
            self.at += n;
            return Ok(n);
        }
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_read_as_one_body() {
        use std::io::Read;
        let parts: [&[u8]; 4] = [b"r 1\n", b"", b"{\"a\":1}", b"!"];
        for step in 1..16 {
            let mut r = Slices {
                parts: &parts,
                at: 0,
            };
            let mut out = Vec::new();
            let mut buf = vec![0u8; step];
            loop {
                let n = r.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
            }
            assert_eq!(out, b"r 1\n{\"a\":1}!", "step {step}");
        }
    }

    #[test]
    fn responses_are_the_answer_or_a_failure_of_a_kind() {
        let answer = |body: &[u8]| answer_of("FCALL", "ms_probe", "http://w", 200, body, "n1");
        assert_eq!(
            answer(br#"{"FCALL":["n1",2]}"#),
            Ok(Ok(serde_json::json!([2])))
        );
        // The functions' own refusals stand: the answer.
        let e = answer(br#"{"FCALL":[false,"MSNOTFOUND n1 no such stream"]}"#);
        assert_eq!(e.unwrap().unwrap_err().status, Status::MS_ERR_NOT_FOUND);
        // Another request's reply: garbled, naming the function.
        let e = answer(br#"{"FCALL":["n2",2]}"#).unwrap_err();
        assert_eq!((e.kind, e.status), (Kind::Garbled, Status::MS_ERR_PROTOCOL));
        assert!(
            e.message
                .contains("Webdis at http://w answered ms_probe with"),
            "{}",
            e.message
        );
        // MSARG: a failure that is not retried.
        let e = answer(br#"{"FCALL":[false,"MSARG n1 bad delta"]}"#).unwrap_err();
        assert_eq!((e.kind, e.status), (Kind::Refused, Status::MS_ERR_PROTOCOL));
        assert_eq!(node_refusal(e.kind), None);
        // A node's refusals: another node may do better.
        let e =
            answer(br#"{"FCALL":[false,"READONLY You can't write against a read only replica."]}"#);
        assert_eq!(e.unwrap_err().kind, Kind::Replica);
        let e = answer(br#"{"FCALL":[false,"LOADING Redis is loading the dataset in memory"]}"#);
        assert_eq!(e.unwrap_err().kind, Kind::NotReady);
        let e = answer_of("FCALL", "ms_probe", "http://w", 503, b"", "n1").unwrap_err();
        assert_eq!((e.kind, e.status), (Kind::Down, Status::MS_ERR_UNAVAILABLE));
    }

    #[test]
    fn garbled_responses_are_tried_three_times_at_most() {
        let mut r = Retries::new();
        assert_eq!(
            r.after(Kind::Garbled, Duration::ZERO),
            Next::Retry,
            "the second try even out of time"
        );
        assert_eq!(r.after(Kind::Garbled, Duration::ZERO), Next::GiveUp);
        let mut r = Retries::new();
        let left = Duration::from_secs(5);
        assert_eq!(r.after(Kind::Garbled, left), Next::Retry);
        assert_eq!(r.after(Kind::Garbled, left), Next::Retry);
        assert_eq!(r.after(Kind::Garbled, left), Next::GiveUp);
    }

    #[test]
    fn lost_responses_are_tried_again_while_time_is_left() {
        let mut r = Retries::new();
        for _ in 0..10 {
            assert_eq!(
                r.after(Kind::Timeout, Duration::from_millis(1)),
                Next::Retry
            );
        }
        assert_eq!(r.after(Kind::Timeout, Duration::ZERO), Next::GiveUp);
        // A timeout after garbled tries is still retried.
        let mut r = Retries::new();
        r.after(Kind::Garbled, Duration::from_secs(1));
        r.after(Kind::Garbled, Duration::from_secs(1));
        assert_eq!(r.after(Kind::Timeout, Duration::from_secs(1)), Next::Retry);
    }

    #[test]
    fn a_proxy_429_is_tried_again_after_a_pause_doubling_to_a_second() {
        let mut r = Retries::new();
        let left = Duration::from_secs(30);
        let pauses: Vec<Next> = (0..6).map(|_| r.after(Kind::Busy, left)).collect();
        let ms = |n| Next::RetryAfter(Duration::from_millis(n));
        assert_eq!(
            pauses,
            [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
        // Never past the deadline.
        assert_eq!(r.after(Kind::Busy, Duration::from_millis(30)), ms(30));
        assert_eq!(r.after(Kind::Busy, Duration::ZERO), Next::GiveUp);
    }

    #[test]
    fn other_failures_stand_at_once() {
        for kind in [
            Kind::Other,
            Kind::Unreachable,
            Kind::Replica,
            Kind::NotReady,
            Kind::Down,
            Kind::Refused,
            Kind::BaseMismatch,
            Kind::Quota,
            Kind::Version,
        ] {
            assert_eq!(
                Retries::new().after(kind, Duration::from_secs(9)),
                Next::GiveUp,
                "{kind:?}"
            );
        }
    }

    #[test]
    fn a_try_waits_a_third_of_the_timeout_at_least_a_second() {
        let s = Duration::from_secs;
        assert_eq!(per_try(s(9)), s(3));
        assert_eq!(per_try(s(2)), s(1));
        assert_eq!(
            per_try(Duration::from_millis(500)),
            Duration::from_millis(500)
        );
    }

    /// Failover hears from a node's failure kind whether another node may
    /// do better, and why: a node's refusal as it is, no usable answer as
    /// down; the functions' own answers stand.
    #[test]
    fn failure_kinds_tell_failover_whether_another_node_may_do_better() {
        for why in [Refusal::Replica, Refusal::NotReady, Refusal::Down] {
            assert_eq!(node_refusal(refusal_kind(why)), Some(why));
        }
        for kind in [Kind::Garbled, Kind::Timeout, Kind::Unreachable] {
            assert_eq!(node_refusal(kind), Some(Refusal::Down), "{kind:?}");
        }
        for kind in [
            Kind::Other,
            Kind::Busy,
            Kind::Refused,
            Kind::BaseMismatch,
            Kind::Quota,
            Kind::Version,
        ] {
            assert_eq!(node_refusal(kind), None, "{kind:?}");
        }
    }

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
