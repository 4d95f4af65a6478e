//! Opening a subscription, the decisions alone: which node each attempt
//! goes to and by when it must have proven itself, and what a failed
//! attempt leads to (another attempt at once, on the same node or the
//! next; or the end of the opening, with which error). No I/O and no
//! clock: instants and the outcome of each attempt come in, actions come
//! out. The follow's driver (`mod.rs`, on the client's network thread)
//! carries them out a step at a time (subscribe, await the
//! acknowledgement, prove the subscription with a probe, await its echo,
//! read the snapshot).
//!
//! The decisions go by the failure's `Kind`, never by its status or
//! wording:
//!
//! - `Garbled`, `Timeout`: the subscription is no good (Webdis 0.1.9 can
//!   write a message into a response head it is still sending, lose a
//!   response or an acknowledgement to a socket it mixed up, acknowledge
//!   a subscription Redis never feeds, close or reset one it mixed up)
//!   but a fresh one usually is: replaced at once, on the same node with
//!   one endpoint, on the next node of the stream's order with several,
//!   while the opening's time lasts. With one endpoint, only the first
//!   `QUICK_ATTEMPTS` attempts begin at once; a later one waits a pause
//!   as after a 503 (below), so that a Webdis failing every subscription
//!   fast is not hammered.
//! - `Unreachable`, `Down`, `NotReady`, `Replica`, `Busy`: the node
//!   cannot serve the subscription now. With several endpoints the next
//!   node is tried at once; with one, trying the same node again at once
//!   would only hammer it: the opening fails, and the session tries again
//!   after its backoff. Except `Down` (Webdis answered the SUBSCRIBE 503)
//!   with one endpoint: Webdis opens a fresh Redis connection for each
//!   subscription, and answers 503 when that connection fails at once,
//!   while the call just before (`ms_connect`, or the session's check)
//!   went through its pool; seen once in many openings of a busy stream.
//!   The same node is tried again after a pause (100 ms, Webdis' own
//!   reconnect interval, doubling up to 1 s) while the opening's time
//!   lasts.
//! - `Refused` (MSARG), `BaseMismatch`, `Version`, `Quota`, `Exists`,
//!   `NotFound`: an answer of the functions library, which stands. The
//!   probe is always answered by the primary, whatever node the
//!   subscription is on, so neither a fresh subscription nor another node
//!   changes it: the opening fails at once. (Before this module an MSARG
//!   answer to a probe, status PROTOCOL, was retried at once until the
//!   deadline, with the same request refused the same way each time.)
//! - `Other`: said all by its status (a refusal of Webdis' ACL, a TLS
//!   failure, a reply of a shape the library does not know). With several
//!   endpoints a transient status moves to the next node, since another
//!   node may be configured or reached differently; anything else ends
//!   the opening.
//!
//! Where the channel is carried decides one more case: when the
//! deployment publishes channel messages on the primary only (ms_connect
//! says so), a subscription on a node other than the one that answered
//! the probe (the primary) can never hear its echo. The attempt fails at
//! once, without waiting for the echo's deadline, and the next attempt
//! goes to the node that answered; that node is not reported failed (it
//! is up, only not the primary).
//!
//! A snapshot that fails after a proven subscription was read with the
//! transport's own retries already: with one endpoint its failure ends
//! the opening; with several, a node that failed it (its kind says the
//! node did not carry the call out), a busy proxy, or an `Other` of
//! transient status moves to the next node. An answer of the functions
//! stands there too.

use crate::error::{Error, Kind, Status};
use std::time::{Duration, Instant};

/// The least time one attempt gets, whatever the timeout.
const MIN_ATTEMPT: Duration = Duration::from_millis(500);

/// Attempts begun at once on the one endpoint before the next ones wait
/// a pause (a Webdis that keeps failing subscriptions fast is not
/// hammered for the whole timeout).
const QUICK_ATTEMPTS: usize = 3;

/// The first pause before the same node is tried again
/// (`Response::Pause`, and a replacement past `QUICK_ATTEMPTS`), doubling
/// up to `MAX_PAUSE`.
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// Where an attempt failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stage {
    /// Setting the subscription up: its response head, its
    /// acknowledgement, the probe, the probe's echo.
    Subscription,
    /// Reading the snapshot on the node subscribed on, once the
    /// subscription was proven.
    Snapshot,
}

/// What the driver does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum OpenAction {
    /// Subscribe on node `node` (an index into the endpoint list), the
    /// subscription acknowledged and its probe echoed by `by`; then read
    /// the snapshot on that node.
    Subscribe { node: usize, by: Instant },
    /// Nothing until `until`; then the next attempt (`Opening::next`).
    Pause { until: Instant },
    /// The opening failed with this error.
    Failed(Error),
}

/// What a failed attempt leads to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Verdict {
    /// A node to report to the endpoints' failover (tried after the
    /// others for a while), when several endpoints are in use.
    pub(super) node_failed: Option<usize>,
    pub(super) then: OpenAction,
}

/// What a failure of this kind at this stage calls for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Response {
    /// A fresh subscription at once (the next node when several).
    Replace,
    /// The next node at once; with one endpoint, give up.
    NextNode,
    /// Give up at once with the failure as it is.
    Stand,
    /// The same node again after a pause (one endpoint; the next node at
    /// once when several).
    Pause,
}

/// The decision table (see the module's comment). Every kind is named, so
/// that a kind added to `error::Kind` needs a decision here.
fn response(stage: Stage, e: &Error, many: bool) -> Response {
    match e.kind {
        Kind::Garbled | Kind::Timeout => match stage {
            Stage::Subscription => Response::Replace,
            // The snapshot's call retried them already.
            Stage::Snapshot => Response::NextNode,
        },
        Kind::Down if stage == Stage::Subscription && !many => Response::Pause,
        Kind::Unreachable | Kind::Down | Kind::NotReady | Kind::Replica | Kind::Busy => {
            Response::NextNode
        }
        Kind::Refused
        | Kind::BaseMismatch
        | Kind::Version
        | Kind::Quota
        | Kind::Exists
        | Kind::NotFound => Response::Stand,
        Kind::Other if many && e.status.is_transient() => Response::NextNode,
        Kind::Other => Response::Stand,
    }
}

/// A probe published: the node that answered it (the primary) and how
/// many of that node's subscriptions it reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reached {
    pub(super) node: usize,
    pub(super) n: u64,
}

/// What a probe's reply says of a subscription on node `subscribed`:
/// the subscriptions it reached there when that node answered it (the
/// primary); None when another node did and replicas carry the channel
/// (the echo comes through replication); an error (`Kind::Replica`) when
/// another node did and only the primary carries the channel: the
/// subscription can never hear it.
pub(super) fn reach_of(
    reached: Reached,
    subscribed: usize,
    on_replicas: bool,
) -> Result<Option<u64>, Error> {
    if reached.node == subscribed {
        Ok(Some(reached.n))
    } else if on_replicas {
        Ok(None)
    } else {
        Err(not_on_the_primary())
    }
}

/// A subscription on a node that is not the primary, when only the
/// primary carries the channel's messages.
pub(super) fn not_on_the_primary() -> Error {
    Error::new(
        Status::MS_ERR_UNAVAILABLE,
        "the subscription is not on the primary, and the deployment carries \
         channel messages on the primary only",
    )
    .kinded(Kind::Replica)
}

/// Where the probe proving a subscription leaves the attempt once its
/// request returned.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Proof {
    /// Its echo came on the subscription already: proven.
    Proven,
    /// It was published: its echo proves the subscription (by the
    /// attempt's deadline).
    AwaitEcho,
    /// The attempt failed with this error.
    Failed(Error),
    /// Only the primary carries the channel, and node `node` answered the
    /// probe, not the one subscribed on: the attempt fails at once with
    /// this error, the next one goes to `node` (`Opening::elsewhere`).
    Elsewhere { node: usize, error: Error },
}

/// The probe's request returned `reached` (`Reached`), for a subscription
/// on node `subscribed`, its echo `echoed` on the subscription or not
/// yet; `on_replicas`: replicas carry the channel's messages. A probe
/// that reached no subscriber of the node subscribed on proves the
/// subscription was acknowledged but is never fed: as if unacknowledged
/// (`Kind::Timeout`, replaced at once). The echo, not the reply, proves
/// the subscription: on a replica the probe comes through replication,
/// after every state the primary stored before it. When only the primary
/// carries the channel, a subscription elsewhere never hears the echo:
/// the attempt moves to the node that answered at once.
pub(super) fn probe_returned(
    reached: Result<Reached, Error>,
    subscribed: usize,
    on_replicas: bool,
    echoed: bool,
) -> Proof {
    let reached = match reached {
        Err(e) => return Proof::Failed(e),
        Ok(r) => r,
    };
    match reach_of(reached, subscribed, on_replicas) {
        Ok(Some(0)) => Proof::Failed(
            Error::new(
                Status::MS_ERR_TIMEOUT,
                "Redis has no such subscription (a probe reached no subscriber)",
            )
            .kinded(Kind::Timeout),
        ),
        _ if echoed => Proof::Proven,
        Ok(_) => Proof::AwaitEcho,
        Err(error) => Proof::Elsewhere {
            node: reached.node,
            error,
        },
    }
}

/// The kind of a failure of a subscription as it is set up: the driver's
/// deadlines of an attempt make their errors without one. Nothing
/// in time is `Timeout`; a stream that cannot be read or parsed (Webdis
/// 0.1.9 may write a message into a response it is still setting up) is
/// `Garbled`; a subscription closed or broken is `Unreachable`. A failure
/// that has a kind keeps it.
pub(super) fn subscription_failure(e: Error) -> Error {
    let kind = match (e.kind, e.status) {
        (Kind::Other, Status::MS_ERR_TIMEOUT) => Kind::Timeout,
        (Kind::Other, Status::MS_ERR_PROTOCOL) => Kind::Garbled,
        (Kind::Other, Status::MS_ERR_UNAVAILABLE) => Kind::Unreachable,
        (kind, _) => kind,
    };
    e.kinded(kind)
}

/// One opening of a subscription: attempts over the stream's node order,
/// within the request timeout overall.
#[derive(Debug)]
pub(super) struct Opening {
    /// The nodes to subscribe on, best first (`Endpoints::follow_order`).
    order: Vec<usize>,
    timeout: Duration,
    deadline: Instant,
    /// Time for one attempt (response head, acknowledgement, probe echo)
    /// before a fresh one: a quarter of the timeout, at least 500 ms.
    attempt_wait: Duration,
    /// Attempts begun so far.
    attempts: usize,
    /// The node of the current attempt.
    node: usize,
    /// The node the next attempt goes to, out of the order's turn.
    then_on: Option<usize>,
    /// The next pause before the same node is tried again.
    pause: Duration,
}

impl Opening {
    /// An opening begun at `now` that must be done within `timeout`, over
    /// `order` (never empty: the endpoint list is not).
    pub(super) fn new(now: Instant, timeout: Duration, order: Vec<usize>) -> Opening {
        let order = if order.is_empty() { vec![0] } else { order };
        Opening {
            node: order[0],
            order,
            timeout,
            deadline: now + timeout,
            attempt_wait: (timeout / 4).max(MIN_ATTEMPT),
            attempts: 0,
            then_on: None,
            pause: FIRST_PAUSE,
        }
    }

    fn many(&self) -> bool {
        self.order.len() > 1
    }

    /// Begins the next attempt: the next node of the order (the same one
    /// with one endpoint), or the node an attempt found the primary at
    /// (`elsewhere`), by a quarter of the timeout or the deadline,
    /// whichever comes first.
    pub(super) fn next(&mut self, now: Instant) -> OpenAction {
        self.node = match self.then_on.take() {
            Some(node) => node,
            None => self.order[self.attempts % self.order.len()],
        };
        self.attempts += 1;
        let left = self.deadline.saturating_duration_since(now);
        OpenAction::Subscribe {
            node: self.node,
            by: now + left.min(self.attempt_wait),
        }
    }

    /// The current attempt's probe was answered by node `node`, not the
    /// one subscribed on, and only the primary carries the channel
    /// (`Proof::Elsewhere`, error `e`): the next attempt goes to `node` at
    /// once (within the deadline), and no node is reported failed.
    pub(super) fn elsewhere(&mut self, now: Instant, node: usize, e: Error, base: &str) -> Verdict {
        if self.order.contains(&node) {
            self.then_on = Some(node);
        }
        let verdict = self.failed(now, Stage::Subscription, e, base);
        if !matches!(verdict.then, OpenAction::Subscribe { .. }) {
            self.then_on = None;
        }
        Verdict {
            node_failed: None,
            then: verdict.then,
        }
    }

    /// The current attempt failed at `stage` with `e`, known at `now`;
    /// `base` is the URL of its node (named in the error when the opening
    /// gives up after its deadline).
    pub(super) fn failed(&mut self, now: Instant, stage: Stage, e: Error, base: &str) -> Verdict {
        let many = self.many();
        let response = match response(stage, &e, many) {
            Response::Replace if !many && self.attempts >= QUICK_ATTEMPTS => Response::Pause,
            r => r,
        };
        let at_once = match response {
            Response::Stand => {
                return Verdict {
                    node_failed: None,
                    then: OpenAction::Failed(e),
                }
            }
            Response::NextNode if !many => {
                return Verdict {
                    node_failed: None,
                    then: OpenAction::Failed(e),
                }
            }
            Response::Pause if now + self.pause < self.deadline => {
                let until = now + self.pause;
                self.pause = (self.pause * 2).min(MAX_PAUSE);
                return Verdict {
                    node_failed: None,
                    then: OpenAction::Pause { until },
                };
            }
            // A pause would end past the deadline: given up below.
            Response::Pause => false,
            Response::Replace | Response::NextNode => true,
        };
        let node_failed = many.then_some(self.node);
        if at_once && now < self.deadline {
            return Verdict {
                node_failed,
                then: self.next(now),
            };
        }
        let at = if many {
            format!("{} Webdis endpoints", self.order.len())
        } else {
            format!("Webdis at {base}")
        };
        let message = format!(
            "{at} did not set up the subscription within {} ms ({} attempts; the last, at {base}: {})",
            self.timeout.as_millis(),
            self.attempts,
            e.message
        );
        Verdict {
            node_failed,
            then: OpenAction::Failed(Error::new(e.status, message).kinded(e.kind)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The probe's reply: an error or no subscriber reached fails the
    /// attempt (the latter as unacknowledged, replaced at once); otherwise
    /// the echo decides, whether it came before the reply or comes after.
    #[test]
    fn the_echo_not_the_reply_proves_a_subscription() {
        let on = |node, n| Ok(Reached { node, n });
        for (echoed, on_replicas) in [(false, true), (true, true), (false, false), (true, false)] {
            let e = Error::new(Status::MS_ERR_UNAVAILABLE, "down").kinded(Kind::Unreachable);
            assert_eq!(
                probe_returned(Err(e.clone()), 0, on_replicas, echoed),
                Proof::Failed(e)
            );
            let Proof::Failed(none) = probe_returned(on(1, 0), 1, on_replicas, echoed) else {
                panic!("a probe that reached nobody fails the attempt");
            };
            assert_eq!(
                (none.status, none.kind),
                (Status::MS_ERR_TIMEOUT, Kind::Timeout)
            );
            let mut o = Opening::new(Instant::now(), T, vec![0]);
            let now = Instant::now();
            subscribe(&o.next(now));
            let v = o.failed(now, Stage::Subscription, none, "http://a");
            assert!(
                matches!(v.then, OpenAction::Subscribe { .. }),
                "replaced at once"
            );
        }
        // Subscribed on the node that answered (1 or 3 subscriptions
        // reached), or on a replica when replicas carry the channel.
        for (reached, on_replicas) in [
            (on(2, 1), false),
            (on(2, 3), true),
            (on(0, 1), true),
            (on(0, 0), true),
        ] {
            assert_eq!(
                probe_returned(reached.clone(), 2, on_replicas, true),
                Proof::Proven
            );
            assert_eq!(
                probe_returned(reached, 2, on_replicas, false),
                Proof::AwaitEcho
            );
        }
    }

    /// Only the primary carries the channel: a probe answered by another
    /// node than the one subscribed on (the subscription is on a replica)
    /// fails the attempt at once, a `Kind::Replica` failure naming the
    /// node that answered, whatever it reached there; with replicas
    /// carrying the channel the echo decides as ever. An echo that came
    /// anyway proves the subscription.
    #[test]
    fn on_the_primary_only_a_probe_answered_elsewhere_fails_the_attempt_at_once() {
        for n in [0, 1, 5] {
            let r = Reached { node: 0, n };
            let Proof::Elsewhere { node, error } = probe_returned(Ok(r), 2, false, false) else {
                panic!("the attempt fails at once");
            };
            assert_eq!(node, 0);
            assert_eq!(error, not_on_the_primary());
            assert_eq!(
                (error.status, error.kind),
                (Status::MS_ERR_UNAVAILABLE, Kind::Replica)
            );
            assert_eq!(probe_returned(Ok(r), 2, false, true), Proof::Proven);
            assert_eq!(probe_returned(Ok(r), 2, true, false), Proof::AwaitEcho);
        }
        // The session's own probes: the same reading.
        let r = Reached { node: 1, n: 4 };
        assert_eq!(reach_of(r, 1, false), Ok(Some(4)));
        assert_eq!(reach_of(r, 1, true), Ok(Some(4)));
        assert_eq!(reach_of(r, 0, true), Ok(None));
        assert_eq!(reach_of(r, 0, false), Err(not_on_the_primary()));
    }

    /// The attempt that found the primary elsewhere is followed at once by
    /// one on the node that answered, out of the order's turn, with its
    /// full time; the node subscribed on is not reported failed (it is
    /// up). Later attempts take the order's turns again. Past the
    /// deadline the opening gives up as any other.
    #[test]
    fn the_next_attempt_goes_to_the_node_that_answered_the_probe() {
        let t0 = Instant::now();
        let mut o = Opening::new(t0, T, vec![2, 1, 0]);
        assert_eq!(subscribe(&o.next(t0)).0, 2);
        let now = t0 + Duration::from_millis(30);
        let v = o.elsewhere(now, 0, not_on_the_primary(), "http://c");
        assert_eq!(v.node_failed, None);
        assert_eq!(subscribe(&v.then), (0, now + T / 4));
        // The primary's subscription fails otherwise: the order again.
        let v = o.failed(now, Stage::Subscription, unacknowledged(), "http://a");
        assert_eq!((v.node_failed, subscribe(&v.then).0), (Some(0), 0));
        let v = o.failed(now, Stage::Subscription, unacknowledged(), "http://a");
        assert_eq!((v.node_failed, subscribe(&v.then).0), (Some(0), 2));

        let mut late = Opening::new(t0, T, vec![1, 0, 2]);
        late.next(t0);
        let v = late.elsewhere(t0 + T, 2, not_on_the_primary(), "http://b");
        assert_eq!(v.node_failed, None);
        let e = failed(&v);
        assert_eq!(e.kind, Kind::Replica);
        assert!(
            e.message.contains("(1 attempts; the last, at http://b"),
            "{}",
            e.message
        );
        // (A later attempt is not pinned by it.)
        assert_eq!(subscribe(&late.next(t0 + T)).0, 0);
    }

    const T: Duration = Duration::from_millis(4000);

    fn err(status: Status, kind: Kind) -> Error {
        Error::new(status, "what went wrong").kinded(kind)
    }

    fn garbled() -> Error {
        err(Status::MS_ERR_PROTOCOL, Kind::Garbled)
    }

    fn unacknowledged() -> Error {
        err(Status::MS_ERR_TIMEOUT, Kind::Timeout)
    }

    fn subscribe(a: &OpenAction) -> (usize, Instant) {
        match a {
            OpenAction::Subscribe { node, by } => (*node, *by),
            a => panic!("not subscribe: {a:?}"),
        }
    }

    fn failed(v: &Verdict) -> &Error {
        match &v.then {
            OpenAction::Failed(e) => e,
            a => panic!("not failed: {a:?}"),
        }
    }

    /// Each attempt gets a quarter of the timeout, at least 500 ms, and
    /// never past the deadline.
    #[test]
    fn an_attempt_waits_a_quarter_of_the_timeout_at_least_500_ms_within_the_deadline() {
        let t0 = Instant::now();
        let mut o = Opening::new(t0, T, vec![0]);
        assert_eq!(subscribe(&o.next(t0)), (0, t0 + T / 4));
        let mut o2 = Opening::new(t0, Duration::from_millis(1000), vec![0]);
        assert_eq!(
            subscribe(&o2.next(t0)),
            (0, t0 + Duration::from_millis(500))
        );
        // Near the deadline, the attempt ends with it.
        let late = t0 + T - Duration::from_millis(100);
        let v = o.failed(late, Stage::Subscription, garbled(), "http://a");
        assert_eq!(subscribe(&v.then), (0, t0 + T));
        // A timeout of zero: one attempt, due at once.
        let mut z = Opening::new(t0, Duration::ZERO, vec![0]);
        assert_eq!(subscribe(&z.next(t0)), (0, t0));
    }

    /// A garbled subscription is replaced at once, on the same node with
    /// one endpoint, and no node is reported failed.
    #[test]
    fn garbled_is_replaced_at_once_on_the_one_endpoint() {
        let t0 = Instant::now();
        let mut o = Opening::new(t0, T, vec![0]);
        o.next(t0);
        let now = t0 + Duration::from_millis(10);
        let v = o.failed(now, Stage::Subscription, garbled(), "http://a");
        assert_eq!(v.node_failed, None);
        assert_eq!(subscribe(&v.then), (0, now + T / 4));
        // A proxy's 502 is garbled too, whatever its status.
        let v = o.failed(
            now,
            Stage::Subscription,
            err(Status::MS_ERR_UNAVAILABLE, Kind::Garbled),
            "http://a",
        );
        assert_eq!(subscribe(&v.then).0, 0);
    }

    /// With one endpoint, the first `QUICK_ATTEMPTS` attempts begin at
    /// once; later replacements wait a pause (100 ms doubling to 1 s, as
    /// after a 503) while the deadline allows, then the opening gives up
    /// as ever. With several endpoints, the next node at once, always.
    #[test]
    fn replacements_on_the_one_endpoint_past_the_first_attempts_wait_a_pause() {
        let t0 = Instant::now();
        let mut o = Opening::new(t0, T, vec![0]);
        o.next(t0);
        let mut now = t0 + Duration::from_millis(5);
        for _ in 1..QUICK_ATTEMPTS {
            let v = o.failed(now, Stage::Subscription, garbled(), "http://a");
            assert_eq!(subscribe(&v.then).0, 0, "at once");
        }
        for ms in [100, 200, 400, 800, 1000] {
            let v = o.failed(now, Stage::Subscription, garbled(), "http://a");
            let until = now + Duration::from_millis(ms);
            assert_eq!(v.then, OpenAction::Pause { until });
            now = until;
            subscribe(&o.next(now));
        }
        // 2.5 s gone of 4: one more pause of 1 s, then past the deadline.
        let v = o.failed(now, Stage::Subscription, unacknowledged(), "http://a");
        now += Duration::from_secs(1);
        assert_eq!(v.then, OpenAction::Pause { until: now });
        subscribe(&o.next(now));
        let v = o.failed(now, Stage::Subscription, garbled(), "http://a");
        assert_eq!(failed(&v).kind, Kind::Garbled);

        let mut several = Opening::new(t0, T, vec![0, 1]);
        several.next(t0);
        for i in 0..10 {
            let v = several.failed(t0, Stage::Subscription, garbled(), "http://a");
            assert_eq!(subscribe(&v.then).0, (i + 1) % 2, "at once, in turn");
        }
    }

    /// An unacknowledged subscription (no response head, no
    /// acknowledgement, no probe echo in time, a probe that reached no
    /// subscriber) is replaced; with several endpoints on the next node of
    /// the order, the one that failed reported to the failover.
    #[test]
    fn unacknowledged_is_replaced_on_the_next_node_when_several() {
        let t0 = Instant::now();
        let mut o = Opening::new(t0, T, vec![2, 0, 1]);
        assert_eq!(subscribe(&o.next(t0)).0, 2);
        let now = t0 + T / 4;
        let v = o.failed(now, Stage::Subscription, unacknowledged(), "http://c");
        assert_eq!(v.node_failed, Some(2));
        assert_eq!(subscribe(&v.then), (0, now + T / 4));
        let v = o.failed(now, Stage::Subscription, unacknowledged(), "http://a");
        assert_eq!((v.node_failed, subscribe(&v.then).0), (Some(0), 1));
        let v = o.failed(now, Stage::Subscription, unacknowledged(), "http://b");
        assert_eq!((v.node_failed, subscribe(&v.then).0), (Some(1), 2));
    }

    /// Past the deadline the opening gives up with the last failure's
    /// status and kind, naming the timeout, the attempts and the last
    /// node (one endpoint: that Webdis; several: how many).
    #[test]
    fn past_the_deadline_the_error_names_the_attempts_and_the_last_node() {
        let t0 = Instant::now();
        let mut o = Opening::new(t0, Duration::from_millis(2000), vec![0]);
        o.next(t0);
        let mid = t0 + Duration::from_millis(600);
        assert!(matches!(
            o.failed(mid, Stage::Subscription, unacknowledged(), "http://a")
                .then,
            OpenAction::Subscribe { .. }
        ));
        let end = t0 + Duration::from_millis(2000);
        let v = o.failed(end, Stage::Subscription, unacknowledged(), "http://a");
        assert_eq!(v.node_failed, None);
        let e = failed(&v);
        assert_eq!((e.status, e.kind), (Status::MS_ERR_TIMEOUT, Kind::Timeout));
        assert_eq!(
            e.message,
            "Webdis at http://a did not set up the subscription within 2000 ms \
             (2 attempts; the last, at http://a: what went wrong)"
        );

        let mut o = Opening::new(t0, T, vec![1, 0]);
        o.next(t0);
        o.failed(t0, Stage::Subscription, garbled(), "http://b");
        let v = o.failed(t0 + T, Stage::Subscription, garbled(), "http://a");
        assert_eq!(v.node_failed, Some(0));
        let e = failed(&v);
        assert_eq!(e.status, Status::MS_ERR_PROTOCOL);
        assert_eq!(
            e.message,
            "2 Webdis endpoints did not set up the subscription within 4000 ms \
             (2 attempts; the last, at http://a: what went wrong)"
        );
    }

    /// A node that cannot serve now: the next one at once with several
    /// endpoints; with one, the opening fails as it is (the session tries
    /// again after its backoff instead of hammering the node).
    #[test]
    fn a_node_that_cannot_serve_moves_on_when_several_and_fails_when_one() {
        let t0 = Instant::now();
        for kind in [Kind::Unreachable, Kind::NotReady, Kind::Replica, Kind::Busy] {
            let e = err(Status::MS_ERR_UNAVAILABLE, kind);
            let mut one = Opening::new(t0, T, vec![0]);
            one.next(t0);
            let v = one.failed(t0, Stage::Subscription, e.clone(), "http://a");
            assert_eq!(v.node_failed, None, "{kind:?}");
            assert_eq!(failed(&v), &e, "{kind:?}");
            let mut several = Opening::new(t0, T, vec![1, 0]);
            several.next(t0);
            let v = several.failed(t0, Stage::Subscription, e, "http://b");
            assert_eq!(v.node_failed, Some(1), "{kind:?}");
            assert_eq!(subscribe(&v.then).0, 0, "{kind:?}");
        }
    }

    /// A SUBSCRIBE answered 503 (Webdis' fresh connection to Redis failed)
    /// with one endpoint: the same node again after 100 ms, 200, 400, 800,
    /// then every second, while the opening's time lasts; a pause that
    /// would end past the deadline gives up with the usual message. With
    /// several endpoints, the next node at once; a 503 to the snapshot's
    /// call stands (the transport's answer).
    #[test]
    fn a_subscription_answered_503_is_tried_again_after_a_pause_on_the_one_endpoint() {
        let t0 = Instant::now();
        let down = err(Status::MS_ERR_UNAVAILABLE, Kind::Down);
        let mut one = Opening::new(t0, T, vec![0]);
        one.next(t0);
        let mut now = t0;
        for ms in [100, 200, 400, 800, 1000, 1000] {
            let v = one.failed(now, Stage::Subscription, down.clone(), "http://a");
            assert_eq!(v.node_failed, None);
            let until = now + Duration::from_millis(ms);
            assert_eq!(v.then, OpenAction::Pause { until });
            now = until;
            assert_eq!(subscribe(&one.next(now)).0, 0);
        }
        // 3.5 s gone of 4: a 1 s pause would end past the deadline.
        let v = one.failed(now, Stage::Subscription, down.clone(), "http://a");
        let e = failed(&v);
        assert_eq!((e.status, e.kind), (Status::MS_ERR_UNAVAILABLE, Kind::Down));
        assert!(
            e.message
                .contains("within 4000 ms (7 attempts; the last, at http://a"),
            "{}",
            e.message
        );

        let mut several = Opening::new(t0, T, vec![1, 0]);
        several.next(t0);
        let v = several.failed(t0, Stage::Subscription, down.clone(), "http://b");
        assert_eq!((v.node_failed, subscribe(&v.then).0), (Some(1), 0));

        let mut snap = Opening::new(t0, T, vec![0]);
        snap.next(t0);
        let v = snap.failed(t0, Stage::Snapshot, down.clone(), "http://a");
        assert_eq!(failed(&v), &down);
    }

    /// An answer of the functions library stands: an MSARG answer to the
    /// probe (malformed arguments: the same request would be refused the
    /// same way), a stream not found, another library version, a quota.
    /// Neither a fresh subscription nor another node changes it.
    #[test]
    fn an_answer_of_the_functions_ends_the_opening_at_once() {
        let t0 = Instant::now();
        for kind in [
            Kind::Refused,
            Kind::BaseMismatch,
            Kind::Version,
            Kind::Quota,
            Kind::Exists,
            Kind::NotFound,
        ] {
            let e = Error::of(kind, "the functions said no");
            for order in [vec![0], vec![0, 1, 2]] {
                for stage in [Stage::Subscription, Stage::Snapshot] {
                    let mut o = Opening::new(t0, T, order.clone());
                    o.next(t0);
                    let v = o.failed(t0, stage, e.clone(), "http://a");
                    assert_eq!(v.node_failed, None, "{kind:?} {stage:?}");
                    assert_eq!(failed(&v), &e, "{kind:?} {stage:?}");
                }
            }
        }
    }

    /// A failure said all by its status: with several endpoints a
    /// transient one moves to the next node; a final one (Webdis' ACL
    /// refusing the command), or any with one endpoint, ends the opening.
    #[test]
    fn other_failures_go_by_their_status() {
        let t0 = Instant::now();
        let transient = Error::new(Status::MS_ERR_SERVER, "ERR Function not found");
        let forbidden = Error::new(Status::MS_ERR_FORBIDDEN, "HTTP 403");
        let mut o = Opening::new(t0, T, vec![0, 1]);
        o.next(t0);
        let v = o.failed(t0, Stage::Subscription, transient.clone(), "http://a");
        assert_eq!((v.node_failed, subscribe(&v.then).0), (Some(0), 1));
        let v = o.failed(t0, Stage::Subscription, forbidden.clone(), "http://b");
        assert_eq!(failed(&v), &forbidden);
        let mut one = Opening::new(t0, T, vec![0]);
        one.next(t0);
        let v = one.failed(t0, Stage::Subscription, transient.clone(), "http://a");
        assert_eq!(failed(&v), &transient);
    }

    /// A snapshot that fails after a proven subscription: its call retried
    /// what it could, so with one endpoint the opening fails as it is,
    /// even when garbled; with several, a node that failed the call (or a
    /// reply of transient status the library cannot read) moves to the
    /// next node, reported to the failover.
    #[test]
    fn a_snapshot_failure_after_a_good_subscription() {
        let t0 = Instant::now();
        let unreadable = Error::new(Status::MS_ERR_PROTOCOL, "a state that is not UTF-8");
        for e in [garbled(), unacknowledged(), unreadable.clone()] {
            let mut one = Opening::new(t0, T, vec![0]);
            one.next(t0);
            let v = one.failed(t0, Stage::Snapshot, e.clone(), "http://a");
            assert_eq!((v.node_failed, failed(&v)), (None, &e));
            let mut several = Opening::new(t0, T, vec![0, 1]);
            several.next(t0);
            let v = several.failed(t0, Stage::Snapshot, e, "http://a");
            assert_eq!((v.node_failed, subscribe(&v.then).0), (Some(0), 1));
        }
        let down = err(Status::MS_ERR_UNAVAILABLE, Kind::Down);
        let mut several = Opening::new(t0, T, vec![1, 0]);
        several.next(t0);
        let v = several.failed(t0, Stage::Snapshot, down, "http://b");
        assert_eq!((v.node_failed, subscribe(&v.then).0), (Some(1), 0));
        // Past the deadline: the error names the attempts.
        let v = several.failed(t0 + T, Stage::Snapshot, unreadable, "http://a");
        assert_eq!(v.node_failed, Some(0));
        assert!(failed(&v)
            .message
            .contains("(2 attempts; the last, at http://a"));
    }

    /// The reader's and the waits' failures get their kind, their status
    /// and message kept; a failure that has a kind keeps it.
    #[test]
    fn a_subscription_failure_without_a_kind_gets_one() {
        for (status, kind) in [
            (Status::MS_ERR_TIMEOUT, Kind::Timeout),
            (Status::MS_ERR_PROTOCOL, Kind::Garbled),
            (Status::MS_ERR_UNAVAILABLE, Kind::Unreachable),
            (Status::MS_ERR_FORBIDDEN, Kind::Other),
            (Status::MS_ERR_INTERNAL, Kind::Other),
        ] {
            let e = subscription_failure(Error::new(status, "the subscription broke"));
            assert_eq!(
                (e.status, e.kind, e.message.as_str()),
                (status, kind, "the subscription broke")
            );
        }
        let down = err(Status::MS_ERR_UNAVAILABLE, Kind::Down);
        assert_eq!(subscription_failure(down.clone()), down);
        let refused = Error::of(Kind::Refused, "MSARG");
        assert_eq!(subscription_failure(refused.clone()), refused);
    }
}
