//! The follower session's decisions, free of I/O and of the clock: the
//! driver (`mod.rs`, on the client's network thread) tells it what it
//! observed and when (`tick`,
//! `heard`, `job_done`, `job_not_started`), carries out the actions it
//! returns, and sleeps until `next_wake`. The timing rules of silence and
//! presence are `liveness.rs`'; the decisions here are tested on synthetic
//! instants.
//!
//! The decisions:
//! - **Jobs.** One blocking call at a time runs for the session (on a
//!   request worker): a probe
//!   (when `Liveness` asks for one), a recovery, or a snapshot read for
//!   deltas.
//! - **Resync.** Deltas that cannot be applied make the session read the
//!   snapshot on the node subscribed on: at once after a delta that did
//!   not verify or whose base was skipped (`ResyncDue::Now`, whatever the
//!   instant), or when a delta waited `HOLD` for its base.
//! - **Loss.** A probe that reached no subscriber or failed, a probe whose
//!   echo did not come, or a closed subscription is a lost subscription:
//!   reported (CONNECTION_LOST), dropped with any job, and recovered after a
//!   capped exponential backoff.
//! - **Recovery.** Without a subscription and a job, a recovery starts when
//!   its backoff is over; success reports RECONNECTED and takes the new
//!   subscription and snapshot; a final error ends the session, a
//!   transient one retries after the next backoff step.
//! - **End.** The stream's end on the channel, or a final error of a probe
//!   or recovery, ends the session. The end on the channel is held `HOLD`
//!   first, as a delta waits for its base and half a full state for the
//!   other half: Webdis 0.1.9 can swap adjacent messages of a channel (it
//!   was seen delivering `e`, `r`, `s` for an `s`, `r`, `e` published in
//!   that order), and the states published before the end are delivered
//!   as they come meanwhile. A subscription lost during the hold (closed,
//!   or its probe failed) ends the session at once; no probe or recovery
//!   starts during it.

use super::link::HOLD;
use super::End;
use crate::dispatch::EventKind;
use crate::error::{Error, Status};
use crate::session::backoff::Backoff;
use crate::session::liveness::{Decision, Liveness};
use std::time::{Duration, Instant};

/// When the snapshot must be read because of deltas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResyncDue {
    /// A delta could not be applied: now, whatever the clock says.
    Now,
    /// A delta waits for its base until then.
    At(Instant),
}

/// The blocking call running for the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Job {
    Probe,
    Recovery,
    Resync,
}

/// What the driver observed on the session's subscription.
#[derive(Debug)]
pub enum Heard {
    /// A state or a delta (handed to delivery by the thread).
    State,
    /// A heartbeat announcing the leader's interval.
    Heartbeat(Duration),
    /// A probe echo carrying this token.
    Probe(String),
    /// The stream ended.
    Ended,
    /// Anything else (another follower's probe, Webdis' acknowledgements).
    Other,
    /// The subscription closed.
    Closed(Error),
}

/// A recovery's new subscription and the snapshot read on it.
#[derive(Debug)]
pub struct Resubscription {
    /// The node subscribed on.
    pub node: usize,
    /// The leader's interval, from the snapshot.
    pub hb: Duration,
    /// When the leader was last heard, by the snapshot's age of it
    /// (`heard_at`); None when longer ago than the monotonic clock goes
    /// back.
    /// longer ago than this clock can tell.
    pub heard: Option<Instant>,
}

/// How a job ended.
#[derive(Debug)]
pub enum JobDone {
    /// The request of the probe carrying this token returned: the number
    /// of subscriptions it reached, when known.
    Probe(String, Result<Option<u64>, Error>),
    /// A recovery (the thread delivers its snapshot's state).
    Recovered(Result<Resubscription, Error>),
    /// A snapshot read for deltas (the thread hands it to delivery): when
    /// its state was stored, if it was read and the clock can tell.
    Resync(Option<Instant>),
    /// The job ended without a result.
    /// (The reactor's calls always answer: kept for a driver whose
    /// calls may not.)
    #[allow(dead_code)]
    Vanished,
}

/// What the driver does.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Report this event (presence, RECONNECTED), status MS_OK.
    Emit(EventKind),
    /// Start a probe carrying `token` for the subscription on `node`.
    Probe { token: String, node: usize },
    /// Start a recovery.
    Recover,
    /// Read the snapshot on `node` for deltas.
    Resync { node: usize },
    /// Deliver the recovery's snapshot and take its subscription.
    Resubscribed,
    /// The subscription is lost: drop it and any job, report
    /// CONNECTION_LOST with this cause.
    Lose(Error),
    /// End the session.
    End(End),
    /// A diagnostic for `MISSIONSTREAM_DEBUG`.
    Log(String),
}

/// The session of one followed stream.
pub struct Session {
    live: Liveness,
    backoff: Backoff,
    /// The node of the subscription in place.
    sub: Option<usize>,
    job: Option<Job>,
    /// No recovery before this instant.
    retry_at: Option<Instant>,
    /// The stream's end was heard: the session ends then (`HOLD` later).
    ending: Option<Instant>,
}

impl Session {
    /// A session whose first subscription, on `node`, was set up at `now`;
    /// `hb` the leader's interval, `probe_prefix` the start of its probe
    /// tokens.
    pub fn new(
        now: Instant,
        node: usize,
        hb: Duration,
        probe_prefix: String,
        backoff: Backoff,
    ) -> Session {
        Session {
            live: Liveness::new(now, hb, probe_prefix),
            backoff,
            sub: Some(node),
            job: None,
            retry_at: None,
            ending: None,
        }
    }

    /// Whether LEADER_OFFLINE is the last presence event reported.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn offline(&self) -> bool {
        self.live.offline()
    }

    /// What is due at `now`: `direct` when states were delivered without
    /// being `heard` (the last one then, whether or not the subscription
    /// is still held; the network thread hears each state, and passes
    /// None), `bytes` when bytes of a message still arriving came, `resync`
    /// when deltas need the snapshot.
    pub fn tick(
        &mut self,
        now: Instant,
        direct: Option<Instant>,
        bytes: bool,
        resync: Option<ResyncDue>,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        if let Some(at) = direct {
            // The leader was heard when the last one arrived.
            presence(&mut actions, self.live.state_delivered(at, now));
        }
        if bytes && self.sub.is_some() {
            self.live.bytes(now);
        }
        if let Some(at) = self.ending {
            if now >= at {
                actions.push(Action::End(End::Ended));
            }
            return actions;
        }
        let mut lost = None;
        for decision in self.live.poll(now) {
            match decision {
                Decision::Probe(token) => {
                    actions.push(Action::Log("silent, probing".into()));
                    self.job = Some(Job::Probe);
                    actions.push(Action::Probe {
                        token,
                        node: self.sub.unwrap_or(0),
                    });
                }
                Decision::Lost => {
                    lost = Some(Error::new(
                        Status::MS_ERR_TIMEOUT,
                        "the subscription went silent (a probe did not come back)",
                    ))
                }
                d => presence(&mut actions, Some(d)),
            }
        }
        if let Some(cause) = lost {
            actions.extend(self.lose(now, cause));
            return actions;
        }
        if self.sub.is_none() && self.job.is_none() && self.retry_at.is_none_or(|t| now >= t) {
            self.retry_at = None;
            self.job = Some(Job::Recovery);
            actions.push(Action::Recover);
        }
        if let (Some(node), None, Some(due)) = (self.sub, self.job, resync) {
            if is_due(due, now) {
                actions.push(Action::Log(
                    "deltas without their base: reading the snapshot".into(),
                ));
                self.job = Some(Job::Resync);
                actions.push(Action::Resync { node });
            }
        }
        actions
    }

    /// When to look again, at the latest.
    pub fn next_wake(&self, now: Instant, resync: Option<ResyncDue>) -> Instant {
        if let Some(at) = self.ending {
            return at;
        }
        let mut wake = self.live.next_wake(now);
        if let Some(t) = self.retry_at {
            wake = wake.min(t);
        }
        if let (Some(due), true) = (resync, self.job.is_none() && self.sub.is_some()) {
            let at = match due {
                ResyncDue::Now => now,
                ResyncDue::At(t) => t,
            };
            wake = wake.min(at.max(now + Duration::from_millis(1)));
        }
        wake
    }

    /// A message of the subscription came at `now`.
    pub fn heard(&mut self, now: Instant, heard: Heard) -> Vec<Action> {
        let mut actions = Vec::new();
        match heard {
            Heard::State => presence(&mut actions, self.live.heard(now, true)),
            Heard::Heartbeat(interval) => {
                self.live
                    .set_interval(interval.max(Duration::from_millis(1)));
                presence(&mut actions, self.live.heard(now, true));
            }
            Heard::Probe(token) => {
                self.live.probe_echo(&token);
                self.live.heard(now, false);
            }
            Heard::Ended if self.ending.is_none() => {
                self.ending = Some(now + HOLD);
                actions.push(Action::Log(
                    "the stream's end heard: held for what was published before it".into(),
                ));
            }
            Heard::Ended | Heard::Other => {
                self.live.heard(now, false);
            }
            Heard::Closed(cause) => actions.extend(self.lose(now, cause)),
        }
        actions
    }

    /// The job ended at `now`; `cancelled` when the session is.
    pub fn job_done(&mut self, now: Instant, done: JobDone, cancelled: bool) -> Vec<Action> {
        self.job = None;
        match done {
            JobDone::Probe(_, Ok(Some(0))) => self.lose(
                now,
                Error::new(
                    Status::MS_ERR_TIMEOUT,
                    "the subscription is gone from Redis (a probe reached no subscriber)",
                ),
            ),
            // The echo, or its absence, decides from now on.
            JobDone::Probe(token, Ok(_)) => {
                self.live.probe_published(&token, now);
                Vec::new()
            }
            JobDone::Probe(_, Err(e)) if !e.status.is_transient() => {
                vec![Action::End(End::Ended)]
            }
            // Webdis or Redis is unreachable: the subscription cannot be
            // trusted either.
            JobDone::Probe(_, Err(e)) => self.lose(now, e),
            JobDone::Recovered(Ok(r)) => {
                self.backoff.reset();
                self.live.set_interval(r.hb);
                self.live.subscribed(now);
                self.sub = Some(r.node);
                let mut actions = vec![
                    Action::Emit(EventKind::MS_EVENT_RECONNECTED),
                    Action::Resubscribed,
                ];
                // The snapshot's state is delivered: the leader was heard
                // as long ago as Redis says (states published and
                // heartbeats sent while no subscription was held count).
                if let Some(at) = r.heard {
                    presence(&mut actions, self.live.state_delivered(at, now));
                }
                actions
            }
            JobDone::Recovered(Err(_)) if cancelled => vec![Action::End(End::Cancelled)],
            JobDone::Recovered(Err(e)) if !e.status.is_transient() => {
                vec![Action::End(End::Ended)]
            }
            JobDone::Recovered(Err(e)) => {
                self.retry_at = Some(now + self.backoff.next());
                vec![Action::Log(format!("recovery failed: {}", e.message))]
            }
            JobDone::Resync(heard) => {
                let mut actions = Vec::new();
                if let Some(at) = heard {
                    presence(&mut actions, self.live.state_delivered(at, now));
                }
                actions
            }
            JobDone::Vanished => {
                self.retry_at = Some(now + self.backoff.next());
                Vec::new()
            }
        }
    }

    /// The job asked for could not start at `now` (no thread).
    pub fn job_not_started(&mut self, now: Instant, job: Job, cause: Error) -> Vec<Action> {
        self.job = None;
        match job {
            Job::Probe => self.lose(now, cause),
            Job::Recovery => {
                self.retry_at = Some(now + self.backoff.next());
                Vec::new()
            }
            Job::Resync => Vec::new(),
        }
    }

    /// The subscription is lost at `now`: no subscription nor job any more;
    /// a recovery after the next backoff step.
    fn lose(&mut self, now: Instant, cause: Error) -> Vec<Action> {
        if self.ending.is_some() {
            // The end was heard: nothing to recover.
            return vec![Action::End(End::Ended)];
        }
        self.sub = None;
        self.job = None;
        self.live.unsubscribed();
        self.retry_at = Some(now + self.backoff.next());
        vec![Action::Lose(cause)]
    }
}

/// When the leader was last heard, on the monotonic clock, from a
/// snapshot: `age_ms` (its `heard_age_ms`, computed by Redis on its own
/// clock) before `sent`, the instant the request was sent. Never later
/// than the truth, early by at most the call's time; no wall clock is
/// read, so a follower whose clock is off sees presence right. None when
/// longer ago than the monotonic clock goes back.
pub fn heard_at(sent: Instant, age_ms: u64) -> Option<Instant> {
    sent.checked_sub(Duration::from_millis(age_ms))
}

/// Whether a resync due so is due at `now`.
fn is_due(due: ResyncDue, now: Instant) -> bool {
    match due {
        ResyncDue::Now => true,
        ResyncDue::At(t) => t <= now,
    }
}

/// A presence change to report.
fn presence(actions: &mut Vec<Action>, d: Option<Decision>) {
    match d {
        Some(Decision::Offline) => actions.push(Action::Emit(EventKind::MS_EVENT_LEADER_OFFLINE)),
        Some(Decision::Online) => actions.push(Action::Emit(EventKind::MS_EVENT_LEADER_ONLINE)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    //! Synthetic runs: made-up instants, messages and job outcomes.
    use super::*;

    const HB: Duration = Duration::from_millis(1000);
    const NODE: usize = 2;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn setup() -> (Session, Instant) {
        let t0 = Instant::now();
        (
            Session::new(t0, NODE, HB, "p".into(), Backoff::with_seed(3)),
            t0,
        )
    }

    /// The actions that are not diagnostics.
    fn acts(actions: Vec<Action>) -> Vec<Action> {
        actions
            .into_iter()
            .filter(|a| !matches!(a, Action::Log(_)))
            .collect()
    }

    fn recovered(node: usize, hb: Duration, heard: Option<Instant>) -> JobDone {
        JobDone::Recovered(Ok(Resubscription { node, hb, heard }))
    }

    /// The presence events among the actions.
    fn presence_of(actions: &[Action]) -> Vec<EventKind> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Emit(
                    k @ (EventKind::MS_EVENT_LEADER_OFFLINE | EventKind::MS_EVENT_LEADER_ONLINE),
                ) => Some(*k),
                _ => None,
            })
            .collect()
    }

    fn transient() -> Error {
        Error::new(Status::MS_ERR_UNAVAILABLE, "Webdis is down")
    }

    fn lost_by(actions: &[Action]) -> Option<Status> {
        actions.iter().find_map(|a| match a {
            Action::Lose(e) => Some(e.status),
            _ => None,
        })
    }

    /// Loses the subscription at `at` (it closed); returns the instant
    /// its recovery starts.
    fn lose_and_recover(s: &mut Session, at: Instant) -> Instant {
        let a = s.heard(at, Heard::Closed(transient()));
        assert_eq!(lost_by(&a), Some(Status::MS_ERR_UNAVAILABLE));
        let retry = s.next_wake(at, None);
        assert!(retry > at && retry <= at + ms(100), "first backoff step");
        assert!(!acts(s.tick(retry - ms(1), None, false, None)).contains(&Action::Recover));
        assert_eq!(acts(s.tick(retry, None, false, None)), [Action::Recover]);
        retry
    }

    #[test]
    fn a_delta_that_cannot_be_applied_reads_the_snapshot_at_once_whatever_the_clock() {
        let (mut s, t0) = setup();
        // The instant the session took before it learnt of the delta is
        // earlier than anything delivery could name: the read is still due.
        assert_eq!(
            acts(s.tick(t0, None, false, Some(ResyncDue::Now))),
            [Action::Resync { node: NODE }]
        );
        // One read at a time.
        assert_eq!(acts(s.tick(t0, None, false, Some(ResyncDue::Now))), []);
        assert_eq!(s.job_done(t0, JobDone::Resync(None), false), []);
        assert_eq!(s.next_wake(t0, Some(ResyncDue::Now)), t0 + ms(1));
    }

    #[test]
    fn a_delta_waiting_for_its_base_reads_the_snapshot_when_its_hold_is_over() {
        let (mut s, t0) = setup();
        let at = t0 + ms(250);
        let due = Some(ResyncDue::At(at));
        assert_eq!(acts(s.tick(t0 + ms(10), None, false, due)), []);
        assert_eq!(s.next_wake(t0 + ms(10), due), at);
        assert_eq!(
            acts(s.tick(at, None, false, due)),
            [Action::Resync { node: NODE }]
        );
    }

    #[test]
    fn no_snapshot_read_for_deltas_without_a_subscription_or_while_a_job_is_out() {
        let (mut s, t0) = setup();
        // A probe out.
        let a = acts(s.tick(t0 + HB * 2, None, false, None));
        assert!(
            matches!(&a[..], [Action::Probe { node: NODE, .. }]),
            "{a:?}"
        );
        assert_eq!(
            acts(s.tick(t0 + HB * 2, None, false, Some(ResyncDue::Now))),
            []
        );
        // No subscription: the recovery reads the snapshot anyway.
        let (mut s, t0) = setup();
        let retry = lose_and_recover(&mut s, t0);
        let a = acts(s.tick(retry, None, false, Some(ResyncDue::Now)));
        assert!(
            !a.iter().any(|a| matches!(a, Action::Resync { .. })),
            "{a:?}"
        );
    }

    #[test]
    fn a_pending_resync_does_not_wake_the_session_while_a_job_is_out_or_unsubscribed() {
        let (mut s, t0) = setup();
        // A probe out: the resync waits for it, and so does the wake.
        let at = t0 + HB * 2;
        let a = acts(s.tick(at, None, false, None));
        assert!(matches!(&a[..], [Action::Probe { .. }]), "{a:?}");
        let idle = s.next_wake(at, None);
        assert!(idle > at + ms(1), "{:?}", idle - at);
        assert_eq!(s.next_wake(at, Some(ResyncDue::Now)), idle);
        // No subscription: the recovery's backoff decides.
        let (mut s, t0) = setup();
        assert_eq!(
            lost_by(&s.heard(t0, Heard::Closed(transient()))),
            Some(Status::MS_ERR_UNAVAILABLE)
        );
        let retry = s.next_wake(t0, None);
        assert!(retry > t0 + ms(1), "{:?}", retry - t0);
        assert_eq!(s.next_wake(t0, Some(ResyncDue::Now)), retry);
    }

    #[test]
    fn a_resync_that_could_not_start_is_asked_for_again() {
        let (mut s, t0) = setup();
        assert_eq!(
            acts(s.tick(t0, None, false, Some(ResyncDue::Now))),
            [Action::Resync { node: NODE }]
        );
        assert_eq!(s.job_not_started(t0, Job::Resync, transient()), []);
        let later = Some(ResyncDue::At(t0 + ms(250)));
        assert_eq!(
            acts(s.tick(t0 + ms(250), None, false, later)),
            [Action::Resync { node: NODE }]
        );
    }

    #[test]
    fn silence_probes_the_node_subscribed_on_and_a_missing_echo_loses_it() {
        let (mut s, t0) = setup();
        assert_eq!(acts(s.tick(t0 + HB * 2 - ms(1), None, false, None)), []);
        let a = acts(s.tick(t0 + HB * 2, None, false, None));
        let [Action::Probe { token, node: NODE }] = &a[..] else {
            panic!("a probe on the node subscribed on: {a:?}");
        };
        let published = t0 + HB * 2 + ms(30);
        assert_eq!(
            s.job_done(published, JobDone::Probe(token.clone(), Ok(Some(1))), false),
            []
        );
        let a = s.tick(published + HB, None, false, None);
        assert_eq!(lost_by(&a), Some(Status::MS_ERR_TIMEOUT));
    }

    #[test]
    fn an_echo_keeps_the_subscription() {
        let (mut s, t0) = setup();
        let a = acts(s.tick(t0 + HB * 2, None, false, None));
        let [Action::Probe { token, .. }] = &a[..] else {
            panic!("{a:?}");
        };
        let token = token.clone();
        let at = t0 + HB * 2 + ms(20);
        s.job_done(at, JobDone::Probe(token.clone(), Ok(Some(1))), false);
        assert_eq!(s.heard(at, Heard::Probe(token)), []);
        let a = s.tick(at + HB, None, false, None);
        assert_eq!(lost_by(&a), None, "{a:?}");
    }

    #[test]
    fn a_probe_reaching_no_subscriber_or_failing_loses_the_subscription() {
        for (outcome, lost) in [
            (Ok(Some(0)), Some(Status::MS_ERR_TIMEOUT)),
            (Err(transient()), Some(Status::MS_ERR_UNAVAILABLE)),
        ] {
            let (mut s, t0) = setup();
            let a = acts(s.tick(t0 + HB * 2, None, false, None));
            let [Action::Probe { token, .. }] = &a[..] else {
                panic!("{a:?}");
            };
            let a = s.job_done(t0 + HB * 2, JobDone::Probe(token.clone(), outcome), false);
            assert_eq!(lost_by(&a), lost);
        }
        // A probe that could not even start.
        let (mut s, t0) = setup();
        s.tick(t0 + HB * 2, None, false, None);
        let a = s.job_not_started(t0 + HB * 2, Job::Probe, transient());
        assert_eq!(lost_by(&a), Some(Status::MS_ERR_UNAVAILABLE));
    }

    #[test]
    fn a_final_error_of_a_probe_ends_the_session() {
        let (mut s, t0) = setup();
        let a = acts(s.tick(t0 + HB * 2, None, false, None));
        let [Action::Probe { token, .. }] = &a[..] else {
            panic!("{a:?}");
        };
        let gone = Error::new(Status::MS_ERR_NOT_FOUND, "no such stream");
        assert_eq!(
            s.job_done(t0 + HB * 2, JobDone::Probe(token.clone(), Err(gone)), false),
            [Action::End(End::Ended)]
        );
    }

    /// The end on the channel ends the session `HOLD` later (Webdis may
    /// deliver it ahead of the states published before it): the session
    /// wakes then; nothing else is due meanwhile, not even after a long
    /// silence (no probe, no recovery); a second end does not push it
    /// back; a subscription closed during the hold ends it at once.
    #[test]
    fn the_stream_end_on_the_channel_ends_the_session_after_a_hold() {
        let (mut s, t0) = setup();
        let heard = t0 + HB * 2 - ms(10);
        assert_eq!(acts(s.heard(heard, Heard::Ended)), []);
        assert_eq!(s.next_wake(heard, Some(ResyncDue::Now)), heard + HOLD);
        assert_eq!(acts(s.heard(heard + ms(100), Heard::State)), []);
        assert_eq!(acts(s.heard(heard + ms(100), Heard::Ended)), []);
        assert_eq!(
            acts(s.tick(heard + HOLD - ms(1), None, false, Some(ResyncDue::Now))),
            []
        );
        assert_eq!(
            acts(s.tick(heard + HOLD, None, false, None)),
            [Action::End(End::Ended)]
        );

        let (mut s, t0) = setup();
        assert_eq!(acts(s.heard(t0, Heard::Ended)), []);
        let closed = Error::new(Status::MS_ERR_UNAVAILABLE, "Webdis hung up");
        assert_eq!(
            s.heard(t0 + ms(5), Heard::Closed(closed)),
            [Action::End(End::Ended)]
        );
        // A probe out when the end came that then fails: the end too, no
        // CONNECTION_LOST.
        let (mut s, t0) = setup();
        let a = acts(s.tick(t0 + HB * 2, None, false, None));
        let [Action::Probe { token, .. }] = &a[..] else {
            panic!("{a:?}");
        };
        assert_eq!(acts(s.heard(t0 + HB * 2, Heard::Ended)), []);
        assert_eq!(
            s.job_done(
                t0 + HB * 2,
                JobDone::Probe(token.clone(), Err(transient())),
                false
            ),
            [Action::End(End::Ended)]
        );
    }

    #[test]
    fn a_lost_subscription_is_recovered_after_a_backoff_and_reconnected() {
        let (mut s, t0) = setup();
        let retry = lose_and_recover(&mut s, t0);
        let done = retry + ms(40);
        assert_eq!(
            s.job_done(done, recovered(1, HB * 2, None), false),
            [
                Action::Emit(EventKind::MS_EVENT_RECONNECTED),
                Action::Resubscribed
            ]
        );
        // The new subscription, on node 1, with the snapshot's interval:
        // probed after 2 of its intervals of silence.
        let probes = |a: Vec<Action>| -> Vec<Action> {
            acts(a)
                .into_iter()
                .filter(|a| matches!(a, Action::Probe { .. }))
                .collect()
        };
        assert_eq!(probes(s.tick(done + HB * 4 - ms(1), None, false, None)), []);
        let a = probes(s.tick(done + HB * 4, None, false, None));
        assert!(matches!(&a[..], [Action::Probe { node: 1, .. }]), "{a:?}");
    }

    #[test]
    fn failed_recoveries_back_off_and_a_final_error_or_a_cancel_ends_the_session() {
        let (mut s, t0) = setup();
        let mut at = lose_and_recover(&mut s, t0);
        // Steps 200, 400, 800 ms after the first (100 ms) one.
        for step in [200u64, 400, 800] {
            assert_eq!(
                acts(s.job_done(at, JobDone::Recovered(Err(transient())), false)),
                []
            );
            let retry = s.next_wake(at, None);
            let wait = retry - at;
            assert!(
                wait >= ms(step / 2) && wait <= ms(step),
                "{wait:?} for {step} ms"
            );
            assert!(!acts(s.tick(retry - ms(1), None, false, None)).contains(&Action::Recover));
            assert_eq!(acts(s.tick(retry, None, false, None)), [Action::Recover]);
            at = retry;
        }
        let gone = Error::new(Status::MS_ERR_NOT_FOUND, "no such stream");
        assert_eq!(
            s.job_done(at, JobDone::Recovered(Err(gone)), false),
            [Action::End(End::Ended)]
        );
        let (mut s, t0) = setup();
        let at = lose_and_recover(&mut s, t0);
        assert_eq!(
            s.job_done(at, JobDone::Recovered(Err(transient())), true),
            [Action::End(End::Cancelled)]
        );
    }

    #[test]
    fn a_successful_recovery_resets_the_backoff() {
        let (mut s, t0) = setup();
        let mut at = lose_and_recover(&mut s, t0);
        for _ in 0..3 {
            s.job_done(at, JobDone::Recovered(Err(transient())), false);
            at = s.next_wake(at, None);
            assert_eq!(acts(s.tick(at, None, false, None)), [Action::Recover]);
        }
        s.job_done(at, recovered(NODE, HB, None), false);
        lose_and_recover(&mut s, at);
    }

    #[test]
    fn a_recovery_that_could_not_start_or_vanished_is_retried_after_a_backoff() {
        let (mut s, t0) = setup();
        let at = lose_and_recover(&mut s, t0);
        assert_eq!(s.job_not_started(at, Job::Recovery, transient()), []);
        let retry = s.next_wake(at, None);
        assert!(retry > at && retry <= at + ms(200));
        assert_eq!(acts(s.tick(retry, None, false, None)), [Action::Recover]);
        assert_eq!(s.job_done(retry, JobDone::Vanished, false), []);
        let again = s.next_wake(retry, None);
        assert!(again > retry && again <= retry + ms(400));
        assert_eq!(acts(s.tick(again, None, false, None)), [Action::Recover]);
    }

    #[test]
    fn states_delivered_while_no_subscription_is_held_are_the_leader_heard() {
        const OFFLINE: EventKind = EventKind::MS_EVENT_LEADER_OFFLINE;
        // The reader delivered a state at 0.45 s and its subscription
        // closed at 0.5 s: the session learns of the state afterwards.
        let (mut s, t0) = setup();
        s.heard(t0 + ms(300), Heard::State);
        let retry = lose_and_recover(&mut s, t0 + ms(500));
        assert_eq!(
            presence_of(&s.tick(retry, Some(t0 + ms(450)), false, None)),
            []
        );
        // Not offline 3 intervals after the state heard on the
        // subscription (3.3 s), but exactly 3 after the reader's.
        for at in [3300, 3449] {
            assert_eq!(presence_of(&s.tick(t0 + ms(at), None, false, None)), []);
        }
        assert_eq!(
            presence_of(&s.tick(t0 + ms(3450), None, false, None)),
            [OFFLINE]
        );
        // The recovery ends at 2.5 s; its snapshot holds a state the
        // leader stored at 2.4 s, while no subscription was held.
        let (mut s, t0) = setup();
        s.heard(t0 + ms(300), Heard::State);
        lose_and_recover(&mut s, t0 + ms(500));
        let done = t0 + ms(2500);
        assert_eq!(
            s.job_done(done, recovered(NODE, HB, Some(t0 + ms(2400))), false),
            [
                Action::Emit(EventKind::MS_EVENT_RECONNECTED),
                Action::Resubscribed
            ]
        );
        // Not offline 3 intervals after the last state on a subscription
        // (3.3 s)...
        for at in [3300, 5399] {
            assert_eq!(presence_of(&s.tick(t0 + ms(at), None, false, None)), []);
        }
        // ...but exactly 3 intervals after the snapshot's state.
        assert_eq!(
            presence_of(&s.tick(t0 + ms(5400), None, false, None)),
            [OFFLINE]
        );
        // A snapshot read for deltas counts the same way.
        let (mut s, t0) = setup();
        s.tick(t0, None, false, Some(ResyncDue::Now));
        assert_eq!(
            s.job_done(t0 + ms(2000), JobDone::Resync(Some(t0 + ms(1900))), false),
            []
        );
        let a = s.tick(t0 + ms(4899), None, false, None);
        assert_eq!(presence_of(&a), []);
        let a = s.tick(t0 + ms(4900), None, false, None);
        assert_eq!(presence_of(&a), [OFFLINE]);
    }

    #[test]
    fn a_snapshot_older_than_the_silence_does_not_make_a_gone_leader_online() {
        let (mut s, t0) = setup();
        let retry = lose_and_recover(&mut s, t0 + ms(100));
        assert_eq!(
            presence_of(&s.tick(t0 + HB * 3, None, false, None)),
            [EventKind::MS_EVENT_LEADER_OFFLINE]
        );
        assert!(retry < t0 + HB * 3);
        // The snapshot's state was stored 3.5 intervals ago: still offline.
        let done = t0 + ms(4000);
        let a = s.job_done(done, recovered(NODE, HB, Some(t0 + ms(500))), false);
        assert_eq!(
            a,
            [
                Action::Emit(EventKind::MS_EVENT_RECONNECTED),
                Action::Resubscribed
            ]
        );
        assert!(s.offline());
        // Nor one the clock cannot place, nor a resync's.
        let retry = lose_and_recover(&mut s, done);
        assert_eq!(s.job_done(retry, recovered(NODE, HB, None), false).len(), 2);
        s.tick(retry, None, false, Some(ResyncDue::Now));
        let stale = Some(retry - HB * 3);
        assert_eq!(s.job_done(retry, JobDone::Resync(stale), false), []);
        assert!(s.offline());
        // A state stored during the recovery: ONLINE after the state.
        let retry = lose_and_recover(&mut s, retry);
        let done = retry + ms(300);
        assert_eq!(
            s.job_done(done, recovered(NODE, HB, Some(retry + ms(200))), false),
            [
                Action::Emit(EventKind::MS_EVENT_RECONNECTED),
                Action::Resubscribed,
                Action::Emit(EventKind::MS_EVENT_LEADER_ONLINE)
            ]
        );
        assert!(!s.offline());
    }

    #[test]
    fn a_snapshot_places_the_leader_heard_by_its_age_on_redis_clock() {
        let sent = Instant::now();
        assert_eq!(heard_at(sent, 1500), Some(sent - ms(1500)));
        assert_eq!(heard_at(sent, 0), Some(sent));
        // Far older than any silence (None where the monotonic clock does
        // not go back that far).
        let ancient = heard_at(sent, u64::MAX);
        assert!(ancient.is_none_or(|t| t + ms(1_000_000_000) < sent));
    }

    /// Presence after a recovery depends on the ages Redis computed, not
    /// on this machine's wall clock: the snapshot's times are an hour off
    /// the local wall clock (either way), and the leader heard 1.2 s
    /// before the request was sent is online; one heard 3.5 intervals
    /// before is offline.
    #[test]
    fn presence_from_a_snapshot_ignores_a_wall_clock_an_hour_off() {
        let hour = 3_600_000i64;
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        for skew in [-hour, hour] {
            let (mut s, t0) = setup();
            lose_and_recover(&mut s, t0 + ms(100));
            assert_eq!(
                presence_of(&s.tick(t0 + HB * 3, None, false, None)),
                [EventKind::MS_EVENT_LEADER_OFFLINE]
            );
            // The reply: stored and heard by Redis' clock, an hour away
            // from this machine's; the ages are what count.
            let reply = crate::wire::functions::Snapshot {
                seq: 3,
                updated_ms: wall + skew - 1200,
                hb_ms: HB.as_millis() as u64,
                updated_age_ms: 1200,
                heard_age_ms: 1200,
                state: None,
            };
            let sent = t0 + ms(4000);
            let done = sent + ms(50);
            // As the follower reads it (link::Snapshot::of).
            let heard = super::super::link::Snapshot::of(reply, sent).heard;
            assert_eq!(heard, Some(t0 + ms(2800)));
            assert_eq!(
                s.job_done(done, recovered(NODE, HB, heard), false),
                [
                    Action::Emit(EventKind::MS_EVENT_RECONNECTED),
                    Action::Resubscribed,
                    Action::Emit(EventKind::MS_EVENT_LEADER_ONLINE)
                ],
                "skew {skew}"
            );
            assert!(!s.offline());
            // Offline again 3 intervals after the heard instant, not later.
            let a = s.tick(t0 + ms(2800) + HB * 3 - ms(1), None, false, None);
            assert_eq!(presence_of(&a), []);
            let a = s.tick(t0 + ms(2800) + HB * 3, None, false, None);
            assert_eq!(presence_of(&a), [EventKind::MS_EVENT_LEADER_OFFLINE]);
            // A leader heard 3.5 intervals before the request: offline.
            let retry = lose_and_recover(&mut s, t0 + ms(9000));
            let heard = heard_at(retry, HB.as_millis() as u64 * 7 / 2);
            s.job_done(retry + ms(10), recovered(NODE, HB, heard), false);
            assert!(s.offline(), "skew {skew}");
        }
    }

    #[test]
    fn presence_is_judged_while_a_probe_request_is_out() {
        let (mut s, t0) = setup();
        let a = acts(s.tick(t0 + HB * 2, None, false, None));
        assert!(matches!(&a[..], [Action::Probe { .. }]));
        // The probe's request hangs (Webdis frozen): the leader is offline
        // on time all the same.
        assert_eq!(
            acts(s.tick(t0 + HB * 3, None, false, None)),
            [Action::Emit(EventKind::MS_EVENT_LEADER_OFFLINE)]
        );
        assert!(s.offline());
        assert_eq!(
            s.heard(t0 + HB * 3 + ms(5), Heard::State),
            [Action::Emit(EventKind::MS_EVENT_LEADER_ONLINE)]
        );
        assert!(!s.offline());
    }

    #[test]
    fn states_the_reader_delivered_and_heartbeats_are_the_leader_heard() {
        let (mut s, t0) = setup();
        // The subscription answers probes; the leader says nothing.
        let a = acts(s.tick(t0 + HB * 2, None, false, None));
        let [Action::Probe { token, .. }] = &a[..] else {
            panic!("{a:?}");
        };
        s.heard(t0 + HB * 2 + ms(1), Heard::Probe(token.clone()));
        assert_eq!(
            acts(s.tick(t0 + HB * 3, None, false, None)),
            [Action::Emit(EventKind::MS_EVENT_LEADER_OFFLINE)]
        );
        // Delivered by the reader just before.
        let at = t0 + HB * 3 - ms(10);
        assert_eq!(
            acts(s.tick(t0 + HB * 3 + ms(1), Some(at), false, None)),
            [Action::Emit(EventKind::MS_EVENT_LEADER_ONLINE)]
        );
        // A heartbeat announcing a longer interval: silence is judged on it.
        let hb_at = t0 + HB * 3 + ms(2);
        assert_eq!(s.heard(hb_at, Heard::Heartbeat(HB * 4)), []);
        assert_eq!(acts(s.tick(hb_at + HB * 8 - ms(1), None, false, None)), []);
        let a = acts(s.tick(hb_at + HB * 8, None, false, None));
        assert!(matches!(&a[..], [Action::Probe { .. }]), "{a:?}");
        // Other messages keep the subscription, not the leader.
        let (mut s, t0) = setup();
        s.heard(t0 + HB * 2 - ms(1), Heard::Other);
        assert_eq!(
            acts(s.tick(t0 + HB * 3, None, false, None)),
            [Action::Emit(EventKind::MS_EVENT_LEADER_OFFLINE)]
        );
    }
}
