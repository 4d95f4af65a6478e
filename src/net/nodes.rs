//! Several Webdis endpoints, one per Redis node of a replicated deployment
//! (a primary and its replicas, Sentinel moving the primary on failure).
//! Webdis fronts exactly one Redis node and follows no redirect, so the
//! client knows every endpoint and finds the roles from the replies:
//!
//! - Writes (every function but `ms_snapshot`) go to the endpoint that took
//!   the last write. One that answers `READONLY` is a replica; one that
//!   cannot be reached, or whose Redis is loading, cut from its primary or
//!   short of replicas, is tried again later. The others are tried in turn,
//!   with a growing pause between rounds, within the request timeout; the
//!   first one that answers is the primary from then on, for every handle
//!   of the client.
//! - A follower subscribes on the primary when the deployment carries
//!   channel messages on the primary only (the default; ms_connect says
//!   which); when replicas carry them too, on a node chosen by a stable
//!   hash of the stream name among the replicas (the primary last). It
//!   reads the snapshot on the node it subscribed on.
//!
//! With one endpoint every call goes to it, once, as it would without this
//! layer.

use crate::error::{Error, Kind, Result, Status};
use crate::net::cancel::Cancel;
use crate::net::transport::{Called, Conns, Endpoint, Webdis};
use crate::wire::functions::Call;
use crate::wire::protocol::Refusal;
use serde_json::Value;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The endpoints of a client and what its calls found out about them.
pub struct Endpoints {
    list: Vec<Arc<Endpoint>>,
    /// The endpoint that took the last write.
    primary: AtomicUsize,
    /// Bumped whenever another endpoint takes a write than the one before.
    moves: AtomicU64,
    /// When each endpoint last failed a call or a subscription (ms after
    /// `born`, 0 for never): followers try such a node last for a while.
    failed_ms: Vec<AtomicU64>,
    born: Instant,
    /// The keep-alive connections of every request of the client to each
    /// endpoint, made when first used.
    conns: Vec<OnceLock<Arc<Conns>>>,
}

/// Requests a client runs at once (its request workers,
/// runtime/requests.rs), and so the idle request connections it keeps per
/// endpoint.
pub(crate) const REQUESTS_AT_ONCE: usize = 4;

/// How long a node that failed is tried after the others by followers.
const FAILED_FOR: Duration = Duration::from_secs(10);

impl Endpoints {
    /// A comma-separated list of Webdis URLs (each with its own
    /// credentials and prefix). An empty, malformed or repeated entry is
    /// refused with a message naming it.
    pub fn parse(urls: &str) -> Result<Endpoints> {
        let entries: Vec<&str> = urls.split(',').map(str::trim).collect();
        let many = entries.len() > 1;
        let mut list: Vec<Arc<Endpoint>> = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            let which = || format!("entry {} of the Webdis URL list \"{urls}\"", i + 1);
            if entry.is_empty() {
                return Err(Error::invalid(if many {
                    format!("{} is empty", which())
                } else {
                    "the Webdis URL is empty; use http://host:port".to_string()
                }));
            }
            let endpoint = Endpoint::parse(entry).map_err(|e| {
                if many {
                    Error::new(e.status, format!("{}: {}", which(), e.message)).kinded(e.kind)
                } else {
                    e
                }
            })?;
            if let Some(j) = list.iter().position(|other| other.same_node(&endpoint)) {
                return Err(Error::invalid(format!(
                    "{} repeats entry {} ({}): list each Webdis once",
                    which(),
                    j + 1,
                    endpoint.base()
                )));
            }
            list.push(Arc::new(endpoint));
        }
        Ok(Endpoints {
            failed_ms: list.iter().map(|_| AtomicU64::new(0)).collect(),
            conns: list.iter().map(|_| OnceLock::new()).collect(),
            list,
            primary: AtomicUsize::new(0),
            moves: AtomicU64::new(0),
            born: Instant::now(),
        })
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn get(&self, node: usize) -> &Arc<Endpoint> {
        &self.list[node]
    }

    /// The client's connections to endpoint `node`, shared by all its
    /// requests.
    pub fn conns(&self, node: usize) -> &Arc<Conns> {
        self.conns[node]
            .get_or_init(|| Arc::new(Conns::new(self.list[node].clone(), REQUESTS_AT_ONCE)))
    }

    /// Closes the client's connections to every endpoint; every request
    /// on them fails from now on (the client is going).
    pub fn shutdown(&self) {
        for c in self.conns.iter().filter_map(OnceLock::get) {
            c.shutdown();
        }
    }

    /// The endpoint that took the last write (the first one before any).
    pub fn primary(&self) -> usize {
        self.primary.load(Ordering::Acquire)
    }

    /// How many times the write endpoint changed: a leader that sees it
    /// move checks that its last stored state is still there.
    pub fn moves(&self) -> u64 {
        self.moves.load(Ordering::Acquire)
    }

    fn took_write(&self, node: usize) {
        if self.primary.swap(node, Ordering::AcqRel) != node {
            self.moves.fetch_add(1, Ordering::AcqRel);
            crate::util::debug_log!("writes go to {} from now on", self.list[node].base());
        }
    }

    /// Node `node` failed a call or a subscription (it is down, or its
    /// Webdis does not answer).
    pub fn failed(&self, node: usize) {
        let ms = self.born.elapsed().as_millis() as u64;
        self.failed_ms[node].store(ms.max(1), Ordering::Release);
    }

    /// Whether node `node` failed within `FAILED_FOR`.
    fn failed_lately(&self, node: usize) -> bool {
        let at = self.failed_ms[node].load(Ordering::Acquire);
        at != 0
            && (self.born.elapsed().as_millis() as u64).saturating_sub(at)
                < FAILED_FOR.as_millis() as u64
    }

    /// From now on, `https://` connections to every endpoint trust `certs`
    /// only.
    pub fn set_tls_roots(&self, certs: Arc<Vec<ureq::tls::Certificate<'static>>>, file: String) {
        for e in &self.list {
            e.set_tls_roots(certs.clone(), file.clone());
        }
    }

    /// The nodes a follower of `name` subscribes on, best first.
    /// `on_replicas` (the deployment's replicas carry the channel's
    /// messages, ms_connect says): the replicas ordered by a stable hash
    /// of the name and the endpoint (rendezvous hashing: every client
    /// picks the same node for a stream, and followers of many streams
    /// spread over the replicas), then the primary. Otherwise only the
    /// primary carries them: the primary (the endpoint that took the last
    /// write) first, then the others in the same hash order. Nodes that
    /// failed lately after all of them.
    pub fn follow_order(&self, name: &str, on_replicas: bool) -> Vec<usize> {
        let primary = self.primary();
        let mut order: Vec<usize> = (0..self.list.len()).collect();
        order.sort_by_key(|&i| {
            (
                self.failed_lately(i),
                (i == primary) == on_replicas,
                std::cmp::Reverse(rendezvous(name, self.list[i].base())),
            )
        });
        order
    }
}

/// FNV-1a of the stream name and an endpoint: the same everywhere.
fn rendezvous(name: &str, endpoint: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes().chain([0u8]).chain(endpoint.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // FNV's low bits mix poorly for short inputs: finish like splitmix64.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// The failover policy of a call over several nodes, without I/O: rounds
/// over every node from the primary on, each node given a part of the
/// timeout, a growing pause between rounds.
#[derive(Debug)]
struct Failover {
    first: usize,
    n: usize,
    /// One node that does not answer must leave time for the others.
    per_node: Duration,
    /// The pause after a round no node answered, doubling up to 500 ms.
    pause: Duration,
}

/// What failover does after a node refused a call or failed it.
#[derive(Debug, PartialEq, Eq)]
struct AfterRefusal {
    /// The node is tried after the others by followers for a while.
    mark_failed: bool,
    /// The node may have carried the call out before its answer was lost.
    maybe_carried_out: bool,
}

impl Failover {
    fn new(first: usize, n: usize, timeout: Duration) -> Failover {
        Failover {
            first,
            n,
            per_node: (timeout / 3).max(Duration::from_secs(1)),
            pause: Duration::from_millis(25),
        }
    }

    /// The nodes of one round, in order: the primary first.
    fn round(&self) -> impl Iterator<Item = usize> {
        let (first, n) = (self.first, self.n);
        (0..n).map(move |i| (first + i) % n)
    }

    /// The time one node's call is given, `left` before the deadline.
    fn node_timeout(&self, left: Duration) -> Duration {
        self.per_node.min(left)
    }

    /// After a node refused a call (`why`) with a failure of `kind`: a
    /// node down is marked failed; one that did not answer in time may
    /// have carried the call out.
    fn refused(why: Refusal, kind: Kind) -> AfterRefusal {
        AfterRefusal {
            mark_failed: why == Refusal::Down,
            maybe_carried_out: why == Refusal::Down && kind == Kind::Timeout,
        }
    }

    /// The pause after a round no node answered, `left` before the
    /// deadline (never past it).
    fn pause(&mut self, left: Duration) -> Duration {
        let pause = self.pause.min(left);
        self.pause = (self.pause * 2).min(Duration::from_millis(500));
        pause
    }
}

/// One owner's calls to every endpoint of a client (a lead, a follow, the
/// client's own calls), over the client's shared connections
/// (`Endpoints::conns`); `shutdown` breaks every call of this owner in
/// flight (and of its clones), on any endpoint, and no other owner's.
#[derive(Clone)]
pub struct Nodes {
    inner: Arc<Inner>,
}

struct Inner {
    endpoints: Arc<Endpoints>,
    handles: Vec<OnceLock<Webdis>>,
    cancel: Arc<Cancel>,
}

/// How a call ended: the result, whether it may have been carried out
/// more than once, and the node that answered.
pub struct Answered {
    pub result: Result<Value>,
    pub resent: bool,
    pub node: usize,
    /// The nonce of the request that node answered (empty when none did).
    pub nonce: String,
}

impl Answered {
    /// How node `node` answered.
    fn by(node: usize, called: Called) -> Answered {
        Answered {
            result: called.result,
            resent: called.resent,
            node,
            nonce: called.nonce,
        }
    }
}

impl Nodes {
    pub fn new(endpoints: Arc<Endpoints>) -> Nodes {
        let handles = (0..endpoints.len()).map(|_| OnceLock::new()).collect();
        Nodes {
            inner: Arc::new(Inner {
                endpoints,
                handles,
                cancel: Arc::default(),
            }),
        }
    }

    pub fn endpoints(&self) -> &Arc<Endpoints> {
        &self.inner.endpoints
    }

    /// This owner's way to node `node`.
    pub fn node(&self, node: usize) -> &Webdis {
        let inner = &self.inner;
        inner.handles[node]
            .get_or_init(|| Webdis::new(inner.endpoints.conns(node).clone(), inner.cancel.clone()))
    }

    /// `scheme://host[:port][/prefix]` of node `node`.
    pub fn base(&self, node: usize) -> &str {
        self.inner.endpoints.get(node).base()
    }

    /// Breaks every call of this owner in flight; its later calls fail
    /// too. The shared connections of the other owners are not touched.
    pub fn shutdown(&self) {
        self.inner.cancel.shutdown();
    }

    fn is_shut(&self) -> bool {
        self.inner.cancel.is_shut()
    }

    /// Calls a function on the primary (see `Webdis::fcall`).
    pub fn fcall(&self, call: &Call, body: &[&[u8]], timeout: Duration) -> Result<Value> {
        self.fcall_answered(call, body, timeout).result
    }

    /// Calls a function on the primary, found as the module comment says,
    /// within `timeout`; tells which node answered and whether the request
    /// was sent more than once (an earlier try may have been carried out,
    /// its response lost).
    pub fn fcall_answered(&self, call: &Call, body: &[&[u8]], timeout: Duration) -> Answered {
        let (read_only, function) = (call.read_only, call.function);
        let (keys, args) = (&call.keys()[..], &call.args()[..]);
        let endpoints = &self.inner.endpoints;
        let n = endpoints.len();
        let first = endpoints.primary();
        if n == 1 {
            let called = self
                .node(0)
                .call(read_only, function, keys, args, body, timeout);
            return Answered::by(0, called);
        }
        let deadline = Instant::now() + timeout;
        let mut failover = Failover::new(first, n, timeout);
        let mut causes: Vec<Option<Error>> = vec![None; n];
        let mut resent = false;
        loop {
            for node in failover.round() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() || self.is_shut() {
                    break;
                }
                let called = self.node(node).call(
                    read_only,
                    function,
                    keys,
                    args,
                    body,
                    failover.node_timeout(left),
                );
                resent |= called.resent;
                match called.refused {
                    None => {
                        endpoints.took_write(node);
                        return Answered {
                            resent,
                            ..Answered::by(node, called)
                        };
                    }
                    Some(why) => {
                        let e = called.result.err().unwrap_or_else(|| {
                            Error::new(Status::MS_ERR_INTERNAL, "refused without an error")
                        });
                        crate::util::debug_log!(
                            "{function}: {} refused ({why:?}): {}",
                            self.base(node),
                            e.message
                        );
                        let next = Failover::refused(why, e.kind);
                        resent |= next.maybe_carried_out;
                        if next.mark_failed {
                            endpoints.failed(node);
                        }
                        causes[node] = Some(e);
                    }
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.is_shut() {
                break;
            }
            self.sleep(failover.pause(left));
        }
        Answered {
            result: Err(self.none_answered(function, timeout, &causes)),
            resent,
            node: first,
            nonce: String::new(),
        }
    }

    /// Sleeps `d`, or less once shut down.
    fn sleep(&self, d: Duration) {
        let until = Instant::now() + d;
        while !self.is_shut() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(Duration::from_millis(20)));
        }
    }

    /// The error of a call no node answered: each endpoint tried and why.
    fn none_answered(&self, function: &str, timeout: Duration, causes: &[Option<Error>]) -> Error {
        if self.is_shut() {
            return Error::new(Status::MS_ERR_UNAVAILABLE, "the connection was shut down");
        }
        let bases: Vec<&str> = (0..causes.len()).map(|i| self.base(i)).collect();
        no_node_answered(&bases, function, timeout, causes)
    }
}

/// The error of a call of `function` no node answered within `timeout`,
/// naming each endpoint (`bases`) and why (`causes`, None: not tried in
/// time): MS_ERR_TIMEOUT when every node was tried and none answered in
/// time, MS_ERR_UNAVAILABLE otherwise.
fn no_node_answered(
    bases: &[&str],
    function: &str,
    timeout: Duration,
    causes: &[Option<Error>],
) -> Error {
    let all_timeouts = causes
        .iter()
        .all(|c| c.as_ref().is_some_and(|e| e.kind == Kind::Timeout));
    let each: Vec<String> = causes
        .iter()
        .zip(bases)
        .map(|(c, base)| match c {
            Some(e) => format!("{base}: {}", e.message),
            None => format!("{base}: not tried in time"),
        })
        .collect();
    let (status, kind) = if all_timeouts {
        (Status::MS_ERR_TIMEOUT, Kind::Timeout)
    } else {
        (Status::MS_ERR_UNAVAILABLE, Kind::Unreachable)
    };
    Error::new(
        status,
        format!(
            "no Webdis endpoint took {function} within {} ms (is a Redis primary up?): {}",
            timeout.as_millis(),
            each.join("; ")
        ),
    )
    .kinded(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_no_node_answered_names_each_and_is_a_timeout_only_if_all_were() {
        let bases = ["http://a", "http://b"];
        let timeout = Duration::from_secs(3);
        let slow = || Some(Error::new(Status::MS_ERR_TIMEOUT, "slow").kinded(Kind::Timeout));
        let e = no_node_answered(&bases, "ms_publish", timeout, &[slow(), slow()]);
        assert_eq!((e.status, e.kind), (Status::MS_ERR_TIMEOUT, Kind::Timeout));
        assert_eq!(
            e.message,
            "no Webdis endpoint took ms_publish within 3000 ms (is a Redis primary up?): http://a: slow; http://b: slow"
        );
        let down = Some(Error::new(Status::MS_ERR_UNAVAILABLE, "down").kinded(Kind::Down));
        let e = no_node_answered(&bases, "ms_publish", timeout, &[slow(), down]);
        assert_eq!(
            (e.status, e.kind),
            (Status::MS_ERR_UNAVAILABLE, Kind::Unreachable)
        );
        // A node not tried in time is no timeout of its own.
        let e = no_node_answered(&bases, "ms_stop", timeout, &[slow(), None]);
        assert_eq!(e.status, Status::MS_ERR_UNAVAILABLE);
        assert!(
            e.message.ends_with("http://b: not tried in time"),
            "{}",
            e.message
        );
        // A timeout told by its kind, never by its status alone.
        let unkinded = Some(Error::new(Status::MS_ERR_TIMEOUT, "slow"));
        let e = no_node_answered(&bases, "ms_stop", timeout, &[unkinded.clone(), unkinded]);
        assert_eq!(e.status, Status::MS_ERR_UNAVAILABLE);
    }

    #[test]
    fn failover_rounds_start_at_the_primary_and_visit_every_node() {
        let f = Failover::new(2, 4, Duration::from_secs(9));
        assert_eq!(f.round().collect::<Vec<_>>(), [2, 3, 0, 1]);
        assert_eq!(
            Failover::new(0, 1, Duration::from_secs(9))
                .round()
                .collect::<Vec<_>>(),
            [0]
        );
        // A third of the timeout each, at least 1 s, never past the deadline.
        assert_eq!(
            f.node_timeout(Duration::from_secs(9)),
            Duration::from_secs(3)
        );
        assert_eq!(
            f.node_timeout(Duration::from_millis(200)),
            Duration::from_millis(200)
        );
        let f = Failover::new(0, 2, Duration::from_millis(900));
        assert_eq!(
            f.node_timeout(Duration::from_secs(5)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn failover_pauses_between_rounds_grow_to_half_a_second() {
        let mut f = Failover::new(0, 3, Duration::from_secs(9));
        let left = Duration::from_secs(9);
        let pauses: Vec<u128> = (0..7).map(|_| f.pause(left).as_millis()).collect();
        assert_eq!(pauses, [25, 50, 100, 200, 400, 500, 500]);
        assert_eq!(f.pause(Duration::from_millis(7)), Duration::from_millis(7));
    }

    #[test]
    fn a_node_down_is_marked_failed_and_one_silent_may_have_done_the_call() {
        let after = |why, kind| {
            let a = Failover::refused(why, kind);
            (a.mark_failed, a.maybe_carried_out)
        };
        assert_eq!(after(Refusal::Down, Kind::Timeout), (true, true));
        assert_eq!(after(Refusal::Down, Kind::Unreachable), (true, false));
        assert_eq!(after(Refusal::Down, Kind::Garbled), (true, false));
        assert_eq!(after(Refusal::Down, Kind::Down), (true, false));
        assert_eq!(after(Refusal::Replica, Kind::Replica), (false, false));
        assert_eq!(after(Refusal::NotReady, Kind::NotReady), (false, false));
    }

    #[test]
    fn parses_lists() {
        let e = Endpoints::parse("http://127.0.0.1:7379").unwrap();
        assert_eq!(e.len(), 1);
        let e =
            Endpoints::parse("http://a:1, https://u:p@b/prefix ,http://127.0.0.1:3/x/").unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!(e.get(1).base(), "https://b/prefix");
        assert_eq!(e.primary(), 0);
        for (bad, says) in [
            ("", "empty"),
            ("http://a:1,", "entry 2"),
            ("http://a:1,,http://b:2", "entry 2"),
            ("http://a:1,b:2", "entry 2"),
            ("http://a:1,ftp://b", "entry 2"),
            ("http://a:1,http://A:1", "repeats entry 1"),
            ("http://a:80,http://a", "repeats entry 1"),
            ("http://a/x,http://b,http://a/x/", "entry 3"),
        ] {
            let e = Endpoints::parse(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad}"));
            assert_eq!(e.status, Status::MS_ERR_INVALID_ARGUMENT);
            assert!(e.message.contains(says), "{bad}: {}", e.message);
        }
        // Same host, another prefix or scheme: another endpoint.
        assert_eq!(
            Endpoints::parse("http://a/x,http://a/y,https://a/x")
                .unwrap()
                .len(),
            3
        );
    }

    #[test]
    fn followers_spread_over_replicas_the_primary_last() {
        let e = Endpoints::parse("http://a:1,http://b:2,http://c:3").unwrap();
        let mut firsts = [0usize; 3];
        for i in 0..300 {
            let order = e.follow_order(&format!("stream-{i}"), true);
            assert_eq!(order.len(), 3);
            assert_eq!(order[2], 0, "the primary last");
            // Stable.
            assert_eq!(order, e.follow_order(&format!("stream-{i}"), true));
            firsts[order[0]] += 1;
        }
        assert_eq!(firsts[0], 0);
        assert!(firsts[1] > 100 && firsts[2] > 100, "{firsts:?}");
        e.took_write(2);
        assert_eq!(e.moves(), 1);
        assert_eq!(e.follow_order("x", true)[2], 2);
        // A node that failed lately comes last, after the primary.
        let first = e.follow_order("x", true)[0];
        e.failed(first);
        let order = e.follow_order("x", true);
        assert_eq!(order[2], first, "{order:?}");
        assert_eq!(order[1], 2, "{order:?}");
        e.took_write(2);
        assert_eq!(e.moves(), 1);
        let one = Endpoints::parse("http://a:1").unwrap();
        assert_eq!(one.follow_order("x", true), vec![0]);
        assert_eq!(one.follow_order("x", false), vec![0]);
    }

    /// Only the primary carries the channel: every follower tries the
    /// endpoint that took the last write first, then the replicas (in the
    /// stable hash order: the same for every client), those that failed
    /// lately last, even the primary.
    #[test]
    fn followers_go_to_the_primary_first_when_only_it_carries_the_channel() {
        let e = Endpoints::parse("http://a:1,http://b:2,http://c:3").unwrap();
        for i in 0..50 {
            let name = format!("stream-{i}");
            let order = e.follow_order(&name, false);
            assert_eq!(order[0], 0, "the primary first: {order:?}");
            let spread = e.follow_order(&name, true);
            assert_eq!(order[1..], spread[..2], "then the replicas as they spread");
        }
        e.took_write(1);
        assert_eq!(e.follow_order("x", false)[0], 1);
        let replica = e.follow_order("x", false)[1];
        e.failed(replica);
        let order = e.follow_order("x", false);
        assert_eq!((order[0], order[2]), (1, replica), "{order:?}");
        e.failed(1);
        let order = e.follow_order("x", false);
        assert_eq!(
            (order[1], order[2]),
            (1, replica),
            "a primary that failed lately after the nodes that did not: {order:?}"
        );
    }
}
