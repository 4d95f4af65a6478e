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
//!   a subscription Redis never feeds) but a fresh one usually is:
//!   replaced at once, on the same node with one endpoint, on the next
//!   node of the stream's order with several, while the opening's time
//!   lasts.
//! - `Unreachable`, `Down`, `NotReady`, `Replica`, `Busy`: the node
//!   cannot serve the subscription now. With several endpoints the next
//!   node is tried at once; with one, trying the same node again at once
//!   would only hammer it: the opening fails, and the session tries again
//!   after its backoff.
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
}

/// The probe's request returned `reached` (the subscriptions it reached,
/// when the node subscribed on is the primary), its echo `echoed` on the
/// subscription or not yet. A probe that reached no subscriber proves the
/// subscription was acknowledged but is never fed: as if
/// unacknowledged (`Kind::Timeout`, replaced at once). The echo, not the
/// reply, proves the subscription: on a replica the probe comes through
/// replication, after every state the primary stored before it.
pub(super) fn probe_returned(reached: Result<Option<u64>, Error>, echoed: bool) -> Proof {
    match reached {
        Err(e) => Proof::Failed(e),
        Ok(Some(0)) => Proof::Failed(
            Error::new(
                Status::MS_ERR_TIMEOUT,
                "Redis has no such subscription (a probe reached no subscriber)",
            )
            .kinded(Kind::Timeout),
        ),
        Ok(_) if echoed => Proof::Proven,
        Ok(_) => Proof::AwaitEcho,
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
        }
    }

    fn many(&self) -> bool {
        self.order.len() > 1
    }

    /// Begins the next attempt: the next node of the order (the same one
    /// with one endpoint), by a quarter of the timeout or the deadline,
    /// whichever comes first.
    pub(super) fn next(&mut self, now: Instant) -> OpenAction {
        self.node = self.order[self.attempts % self.order.len()];
        self.attempts += 1;
        let left = self.deadline.saturating_duration_since(now);
        OpenAction::Subscribe {
            node: self.node,
            by: now + left.min(self.attempt_wait),
        }
    }

    /// The current attempt failed at `stage` with `e`, known at `now`;
    /// `base` is the URL of its node (named in the error when the opening
    /// gives up after its deadline).
    pub(super) fn failed(&mut self, now: Instant, stage: Stage, e: Error, base: &str) -> Verdict {
        let many = self.many();
        match response(stage, &e, many) {
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
            Response::Replace | Response::NextNode => {}
        }
        let node_failed = many.then_some(self.node);
        if now < self.deadline {
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
        for echoed in [false, true] {
            let e = Error::new(Status::MS_ERR_UNAVAILABLE, "down").kinded(Kind::Unreachable);
            assert_eq!(probe_returned(Err(e.clone()), echoed), Proof::Failed(e));
            let Proof::Failed(none) = probe_returned(Ok(Some(0)), echoed) else {
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
        for reached in [Some(1), Some(3), None] {
            assert_eq!(probe_returned(Ok(reached), true), Proof::Proven);
            assert_eq!(probe_returned(Ok(reached), false), Proof::AwaitEcho);
        }
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
            OpenAction::Failed(e) => panic!("failed: {e:?}"),
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
        for kind in [
            Kind::Unreachable,
            Kind::Down,
            Kind::NotReady,
            Kind::Replica,
            Kind::Busy,
        ] {
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
