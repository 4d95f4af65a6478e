//! The follower's timing rules, free of I/O and of the clock: the session
//! tells it what happened and when (`heard`, `bytes`, `probe_echo`,
//! `subscribed`, `unsubscribed`) and asks it what is due (`poll`) and when
//! to look again (`next_wake`). Every rule is tested on synthetic instants.
//!
//! The rules, with `hb` the leader's heartbeat interval:
//! - **Silence.** A subscription on which nothing arrived for `2 hb` is
//!   probed: the session publishes `p <token>` on the channel (ms_probe).
//!   If the echo has not come back `probe_wait` (`hb`, at least 0.5 s)
//!   after the probe's request returned (Redis published it), the
//!   subscription is lost; a probe reaching no subscriber, or whose
//!   request fails, is a lost subscription at once. While the request is
//!   out (Redis busy storing a large state, Webdis frozen) nothing is
//!   judged: the request's own timeout bounds that wait. Bytes of a large
//!   message still arriving count as activity and push the echo's due
//!   time back.
//! - **Presence** belongs to the stream, not to a subscription: the leader
//!   is offline when it was not heard for `3 hb`, whether or not a
//!   subscription existed meanwhile; it is online again when heard. It is
//!   heard when a state or heartbeat of it arrives on a subscription, and
//!   when a state is delivered otherwise (read from the snapshot while
//!   recovering or resyncing) at the instant that state was stored, so
//!   that a state older than the silence does not make a gone leader
//!   online. OFFLINE and ONLINE strictly alternate, starting with OFFLINE.
//!   No request holds this clock back.

use std::time::{Duration, Instant};

/// Least time a probe's echo may take (for very short heartbeats).
pub const PROBE_MIN_WAIT: Duration = Duration::from_millis(500);
/// How often the session looks at the byte count while a probe is out.
pub const PROBE_POLL: Duration = Duration::from_millis(50);

/// What is due.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Report LEADER_OFFLINE.
    Offline,
    /// Report LEADER_ONLINE.
    Online,
    /// Publish a probe carrying this token.
    Probe(String),
    /// The subscription is dead: replace it.
    Lost,
}

pub struct Liveness {
    hb: Duration,
    /// A subscription is in place.
    subscribed: bool,
    /// Last activity on the subscription.
    last_heard: Instant,
    /// The probe out: its token and when its echo is due (None while its
    /// request is out).
    probe: Option<(String, Option<Instant>)>,
    probe_prefix: String,
    probes: u64,
    /// Last state or heartbeat of the leader (or bytes of a large message).
    leader_heard: Instant,
    offline: bool,
}

impl Liveness {
    /// A session whose first subscription was set up at `now`.
    /// `probe_prefix` starts every probe token (random per session, so
    /// that another follower's probe is never taken for this one's).
    pub fn new(now: Instant, hb: Duration, probe_prefix: String) -> Liveness {
        Liveness {
            hb: hb.max(Duration::from_millis(1)),
            subscribed: true,
            last_heard: now,
            probe: None,
            probe_prefix,
            probes: 0,
            leader_heard: now,
            offline: false,
        }
    }

    /// The leader's heartbeat interval changed (a heartbeat or snapshot).
    pub fn set_interval(&mut self, hb: Duration) {
        self.hb = hb.max(Duration::from_millis(1));
    }

    /// Whether LEADER_OFFLINE is the last presence event reported.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn offline(&self) -> bool {
        self.offline
    }

    /// A new subscription was set up at `now`.
    pub fn subscribed(&mut self, now: Instant) {
        self.subscribed = true;
        self.last_heard = now;
        self.probe = None;
    }

    /// The subscription is gone; presence goes on.
    pub fn unsubscribed(&mut self) {
        self.subscribed = false;
        self.probe = None;
    }

    /// A whole message arrived at `now` (reported late, perhaps: an earlier
    /// instant never moves a clock back); `from_leader` for a state or a
    /// heartbeat. Returns `Online` when the leader is heard again.
    pub fn heard(&mut self, now: Instant, from_leader: bool) -> Option<Decision> {
        // Reports may come late and out of order (a state the reader
        // delivered itself is seen at the session's next wake): keep the
        // latest.
        self.last_heard = self.last_heard.max(now);
        if !from_leader {
            return None;
        }
        self.leader_heard = self.leader_heard.max(now);
        std::mem::take(&mut self.offline).then_some(Decision::Online)
    }

    /// A state of the leader that arrived, or was stored, at `at` was
    /// delivered at `now` (by the reader between two wakes, or read from
    /// the snapshot while no subscription was held): the leader was heard
    /// at `at`, never later than `now`. An earlier instant never moves the
    /// clock back, and a state older than the silence (`at` 3 intervals or
    /// more before `now`) does not make an offline leader online. Returns
    /// `Online` when the leader is heard again.
    pub fn state_delivered(&mut self, at: Instant, now: Instant) -> Option<Decision> {
        self.leader_heard = self.leader_heard.max(at.min(now));
        let recent = now < self.leader_heard + 3 * self.hb;
        (self.offline && recent).then(|| {
            self.offline = false;
            Decision::Online
        })
    }

    /// Bytes of a message still arriving came at `now`: neither the
    /// subscription nor the leader is silent.
    pub fn bytes(&mut self, now: Instant) {
        self.last_heard = now;
        self.leader_heard = now;
        let wait = self.probe_wait();
        if let Some((_, Some(due))) = &mut self.probe {
            *due = now + wait;
        }
    }

    /// The request of the probe carrying `token` returned at `now`: Redis
    /// published it; its echo is due within `probe_wait`.
    pub fn probe_published(&mut self, token: &str, now: Instant) {
        let wait = self.probe_wait();
        if let Some((t, due @ None)) = &mut self.probe {
            if t == token {
                *due = Some(now + wait);
            }
        }
    }

    /// A probe came back on the subscription; true when it is this
    /// session's probe out.
    pub fn probe_echo(&mut self, token: &str) -> bool {
        if self.probe.as_ref().is_some_and(|(t, _)| t == token) {
            self.probe = None;
            return true;
        }
        false
    }

    /// How long a probe's echo may take: one interval, at least
    /// PROBE_MIN_WAIT, so that a dead subscription is found within about
    /// 3 intervals of silence.
    pub fn probe_wait(&self) -> Duration {
        self.hb.max(PROBE_MIN_WAIT)
    }

    /// What is due at `now`, in order; the session acts on each.
    pub fn poll(&mut self, now: Instant) -> Vec<Decision> {
        let mut due = Vec::new();
        if !self.offline && now >= self.leader_heard + 3 * self.hb {
            self.offline = true;
            due.push(Decision::Offline);
        }
        if self.subscribed {
            match &self.probe {
                Some((_, Some(echo_due))) if now >= *echo_due => {
                    self.unsubscribed();
                    due.push(Decision::Lost);
                }
                Some(_) => {}
                None if now >= self.last_heard + 2 * self.hb => {
                    self.probes += 1;
                    let token = format!("{}{:x}", self.probe_prefix, self.probes);
                    self.probe = Some((token.clone(), None));
                    due.push(Decision::Probe(token));
                }
                None => {}
            }
        }
        due
    }

    /// When `poll` next has something to say (at the latest).
    pub fn next_wake(&self, now: Instant) -> Instant {
        let mut wake = now + Duration::from_secs(3600);
        if !self.offline {
            wake = wake.min(self.leader_heard + 3 * self.hb);
        }
        if self.subscribed {
            match &self.probe {
                // Look at the byte count often while a probe is out: a
                // large message arriving first delays the echo.
                Some((_, Some(due))) => wake = wake.min(*due).min(now + PROBE_POLL),
                // The session wakes when the request returns.
                Some((_, None)) => {}
                None => wake = wake.min(self.last_heard + 2 * self.hb),
            }
        }
        wake
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HB: Duration = Duration::from_millis(1000);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn setup() -> (Liveness, Instant) {
        let t0 = Instant::now();
        (Liveness::new(t0, HB, "p".into()), t0)
    }

    #[test]
    fn a_quiet_subscription_is_probed_after_two_intervals() {
        let (mut l, t0) = setup();
        assert_eq!(l.next_wake(t0), t0 + 2 * HB);
        assert!(l.poll(t0 + ms(1999)).is_empty());
        assert_eq!(l.poll(t0 + ms(2000)), [Decision::Probe("p1".into())]);
        // Not probed twice while the first is out.
        assert!(l.poll(t0 + ms(2500)).is_empty());
    }

    #[test]
    fn an_echo_keeps_the_subscription() {
        let (mut l, t0) = setup();
        l.poll(t0 + 2 * HB);
        assert!(!l.probe_echo("p2"), "another token");
        assert!(!l.probe_echo("other"), "another follower's probe");
        l.heard(t0 + ms(2100), true);
        assert!(l.probe_echo("p1"));
        assert!(l.poll(t0 + ms(3500)).is_empty());
        // The next probe after two more intervals of silence.
        assert_eq!(l.poll(t0 + ms(4100)), [Decision::Probe("p2".into())]);
    }

    #[test]
    fn no_echo_within_one_interval_is_a_lost_subscription() {
        let (mut l, t0) = setup();
        l.poll(t0 + 2 * HB);
        l.probe_published("p1", t0 + 2 * HB);
        assert_eq!(l.next_wake(t0 + 2 * HB), t0 + 2 * HB + PROBE_POLL);
        // Presence is due at 3 intervals too: OFFLINE first, then lost.
        assert_eq!(l.poll(t0 + 3 * HB), [Decision::Offline, Decision::Lost]);
        // Without a subscription nothing more is due, and an old probe's
        // echo means nothing.
        assert!(l.poll(t0 + 10 * HB).is_empty());
        assert!(!l.probe_echo("p1"));
    }

    #[test]
    fn a_messages_from_others_keep_the_subscription_not_the_leader() {
        let (mut l, t0) = setup();
        assert!(!l.offline(), "online until OFFLINE is reported");
        // Another follower's probes every half interval.
        let mut t = t0;
        for _ in 0..7 {
            t += ms(500);
            assert_eq!(l.heard(t, false), None);
            assert!(
                !l.poll(t).iter().any(|d| matches!(d, Decision::Probe(_))),
                "the subscription is not silent"
            );
        }
        // 3.5 intervals without the leader: OFFLINE came at 3.
        assert!(l.offline());
    }

    #[test]
    fn bytes_of_a_large_message_push_the_echo_back() {
        let (mut l, t0) = setup();
        l.poll(t0 + 2 * HB);
        l.probe_published("p1", t0 + 2 * HB);
        l.bytes(t0 + ms(2900));
        assert!(l.poll(t0 + ms(3100)).is_empty(), "neither lost nor offline");
        assert_eq!(l.poll(t0 + ms(3900)), [Decision::Lost]);
    }

    #[test]
    fn short_intervals_wait_at_least_half_a_second_for_the_echo() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, ms(100), "p".into());
        assert_eq!(l.poll(t0 + ms(200)), [Decision::Probe("p1".into())]);
        l.probe_published("p1", t0 + ms(200));
        assert_eq!(l.poll(t0 + ms(300)), [Decision::Offline]);
        assert!(l.poll(t0 + ms(699)).is_empty());
        assert_eq!(l.poll(t0 + ms(700)), [Decision::Lost]);
    }

    #[test]
    fn nothing_is_judged_while_the_probe_request_is_out() {
        let (mut l, t0) = setup();
        assert!(matches!(l.poll(t0 + 2 * HB)[..], [Decision::Probe(_)]));
        // Redis busy (a large state) or Webdis frozen: the request has not
        // returned; the subscription is not judged, presence still is.
        assert_eq!(l.poll(t0 + 3 * HB), [Decision::Offline]);
        assert!(l.poll(t0 + 9 * HB).is_empty());
        // Another token's answer changes nothing.
        l.probe_published("p9", t0 + 9 * HB);
        assert!(l.poll(t0 + 11 * HB).is_empty());
        // The request returns: the echo is due one interval later.
        l.probe_published("p1", t0 + 11 * HB);
        assert!(l.poll(t0 + ms(11_999)).is_empty());
        assert_eq!(l.poll(t0 + 12 * HB), [Decision::Lost]);
        // An echo before the request's answer ends the probe too.
        let (mut l, t0) = setup();
        l.poll(t0 + 2 * HB);
        assert!(l.probe_echo("p1"));
        l.probe_published("p1", t0 + ms(2100));
        l.heard(t0 + ms(2100), true);
        assert!(l.poll(t0 + ms(4000)).is_empty());
    }

    #[test]
    fn presence_alternates_across_subscriptions() {
        let (mut l, t0) = setup();
        l.heard(t0 + ms(500), true);
        assert!(l
            .poll(t0 + ms(3499))
            .iter()
            .all(|d| *d != Decision::Offline));
        // The subscription is lost; presence runs on without one.
        l.unsubscribed();
        assert_eq!(l.next_wake(t0 + ms(3499)), t0 + ms(3500));
        assert_eq!(l.poll(t0 + ms(3500)), [Decision::Offline]);
        assert!(l.poll(t0 + ms(9000)).is_empty(), "OFFLINE once");
        // A new subscription does not make the leader online...
        l.subscribed(t0 + ms(9000));
        assert!(l.offline());
        assert!(l.heard(t0 + ms(9100), false).is_none());
        // ...its first state or heartbeat does, once.
        assert_eq!(l.heard(t0 + ms(9200), true), Some(Decision::Online));
        assert_eq!(l.heard(t0 + ms(9300), true), None);
        // And OFFLINE can come again 3 intervals later.
        assert!(l
            .poll(t0 + ms(12299))
            .iter()
            .all(|d| *d != Decision::Offline));
        assert!(l.poll(t0 + ms(12300)).contains(&Decision::Offline));
    }

    #[test]
    fn a_new_subscription_starts_its_silence_clock_afresh() {
        let (mut l, t0) = setup();
        l.poll(t0 + 2 * HB);
        l.unsubscribed();
        l.subscribed(t0 + ms(5000));
        l.heard(t0 + ms(5000), true);
        assert_eq!(l.next_wake(t0 + ms(5000)), t0 + ms(7000));
        assert!(
            !l.poll(t0 + ms(6999))
                .iter()
                .any(|d| matches!(d, Decision::Probe(_))),
            "the old probe is forgotten"
        );
        assert!(l
            .poll(t0 + ms(7000))
            .contains(&Decision::Probe("p2".into())));
    }

    #[test]
    fn a_late_report_counts_from_when_the_message_came() {
        let (mut l, t0) = setup();
        // A state came at 0.9 s; the session learns of it at 2 s.
        assert!(matches!(l.poll(t0 + ms(2000))[..], [Decision::Probe(_)]));
        l.heard(t0 + ms(900), true);
        // The probe request is out: the next wake is presence, due 3 s
        // after the state.
        assert_eq!(l.next_wake(t0 + ms(2000)), t0 + ms(3900));
        assert!(l.probe_echo("p1"));
        l.heard(t0 + ms(2100), false);
        assert!(l.poll(t0 + ms(3899)).is_empty());
        assert_eq!(l.poll(t0 + ms(3900)), [Decision::Offline]);
        // An older report never moves a clock back.
        l.heard(t0 + ms(4000), true);
        l.heard(t0 + ms(100), true);
        assert!(l
            .poll(t0 + ms(6999))
            .iter()
            .all(|d| *d != Decision::Offline));
    }

    #[test]
    fn a_state_delivered_without_a_subscription_is_the_leader_heard() {
        let (mut l, t0) = setup();
        l.heard(t0 + ms(200), true);
        l.unsubscribed();
        // Read from the snapshot at 2.6 s, stored at 2.5 s.
        assert_eq!(l.state_delivered(t0 + ms(2500), t0 + ms(2600)), None);
        assert_eq!(l.next_wake(t0 + ms(2600)), t0 + ms(5500));
        // Not offline 3 intervals after the last state on a subscription...
        assert!(l.poll(t0 + ms(3200)).is_empty());
        // ...but exactly 3 intervals after the state delivered, not before.
        assert!(l.poll(t0 + ms(5499)).is_empty());
        assert_eq!(l.poll(t0 + ms(5500)), [Decision::Offline]);
        // A state stored later than it was delivered (another clock) counts
        // as heard when delivered, never in the future.
        let (mut l, t0) = setup();
        l.unsubscribed();
        l.state_delivered(t0 + ms(9000), t0 + ms(1000));
        assert_eq!(l.poll(t0 + ms(4000)), [Decision::Offline]);
    }

    #[test]
    fn a_state_older_than_the_silence_is_not_the_leader_heard() {
        let (mut l, t0) = setup();
        l.unsubscribed();
        assert_eq!(l.poll(t0 + 3 * HB), [Decision::Offline]);
        // Delivered at 6 s, stored at 2.9 s: 3.1 intervals old. The leader
        // stays offline; OFFLINE is not reported again.
        assert_eq!(l.state_delivered(t0 + ms(2900), t0 + ms(6000)), None);
        assert!(l.offline());
        assert!(l.poll(t0 + ms(6000)).is_empty());
        // Stored exactly 3 intervals before: as old as the silence.
        assert_eq!(l.state_delivered(t0 + ms(3000), t0 + ms(6000)), None);
        // Stored at 5.5 s: online, and offline again 3 intervals after it.
        assert_eq!(
            l.state_delivered(t0 + ms(5500), t0 + ms(6000)),
            Some(Decision::Online)
        );
        assert!(l.poll(t0 + ms(8499)).is_empty());
        assert_eq!(l.poll(t0 + ms(8500)), [Decision::Offline]);
        // Online: a stale state neither makes it online nor delays OFFLINE.
        let (mut l, t0) = setup();
        l.heard(t0 + ms(1000), true);
        l.unsubscribed();
        assert_eq!(l.state_delivered(t0 + ms(100), t0 + ms(3500)), None);
        assert!(l.poll(t0 + ms(3999)).is_empty());
        assert_eq!(l.poll(t0 + ms(4000)), [Decision::Offline]);
    }

    #[test]
    fn the_interval_follows_the_leader() {
        let (mut l, t0) = setup();
        l.set_interval(ms(200));
        assert_eq!(l.next_wake(t0), t0 + ms(400));
        assert_eq!(l.poll(t0 + ms(400)), [Decision::Probe("p1".into())]);
        assert_eq!(l.poll(t0 + ms(600)), [Decision::Offline]);
    }
}
