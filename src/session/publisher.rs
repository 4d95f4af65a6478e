//! The publisher's decisions, free of I/O and of the clock: the client's
//! network thread (`runtime/reactor.rs`) asks what to do next (`poll`),
//! has a request worker carry out the request it is given, and tells the
//! outcome and when it came (`done`).
//! Every decision is tested here on synthetic instants.
//!
//! The decisions:
//! - **Delta or full.** A state is sent as a delta (Fossil's format,
//!   `crate::wire::delta`) against the last state stored by this lead when the
//!   record holds exactly that state, deltas are on, the state is at least
//!   256 bytes and the delta is less than half its size; in full
//!   otherwise.
//! - **Floor.** Every publish carries a floor above any seq a follower may
//!   have seen from this lead: the highest seq a reply named, plus one per
//!   new state sent since without a reply.
//! - **Base reuse.** A state stored exactly (the reply names its publish
//!   id) is the base of the next delta; an `MSBASE` refusal, a refused
//!   delta and a failover all make the next state go in full.
//! - **Re-publish after failover.** A heartbeat whose reply names a seq
//!   below one stored for this lead means a failover lost that state: the
//!   newest stored state is sent again, in full, unless a newer one waits.
//! - **Failures.** A base mismatch sends the same state in full at once; a
//!   final error ends the lead; a transient one keeps the state (unless a
//!   newer one came) and retries after a capped exponential backoff,
//!   reporting PUBLISH_FAILED once per failure streak.
//! - **Timing.** Nothing is sent while paused or before a retry is due; a
//!   heartbeat is sent after one interval without a request, or at once
//!   when the write endpoint moved; when closing, the pending state is
//!   delivered until the deadline and nothing else is sent.

use crate::error::{Error, Kind, Status};
use crate::session::backoff::Backoff;
use crate::wire::delta::Sums;
pub use crate::wire::functions::Stored;
use std::time::{Duration, Instant};

/// How long the publisher keeps looking for a new state after a request
/// before it sleeps.
pub const LINGER: Duration = Duration::from_micros(200);

/// States smaller than this are always sent in full.
const DELTA_MIN_STATE: usize = 256;

/// The mailbox the publisher shares with `publish`, `flush`, `pause` and
/// `close` (behind a mutex in `leader.rs`; plain data here).
#[derive(Debug, Default)]
pub struct Mailbox {
    /// The newest unsent state: (generation, the state).
    pub pending: Option<(u64, String)>,
    /// Generation of the last `publish`.
    pub published: u64,
    /// Highest generation stored in Redis.
    pub stored: u64,
    /// The error of the current failure streak.
    pub failing: Option<Error>,
    /// A final error: the lead is over.
    pub ended: Option<Error>,
    /// A request is in flight.
    pub busy: bool,
    /// ms_stop is in progress: send nothing.
    pub paused: bool,
    /// Deliver the pending state by this deadline, then exit (client free).
    pub closing: Option<Instant>,
    /// Exit now.
    pub exit: bool,
}

/// What the publisher's driver does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Send this request (the mailbox is marked busy).
    Send(Request),
    /// Send the publish of this state (the mailbox is marked busy): its
    /// request, a delta of the last state stored when one is worth it, is
    /// made by `Publisher::request` once the mailbox is let go (a delta of
    /// a large state takes tens of µs, which an `ms_publish` would spend
    /// waiting for the mailbox).
    Publish(Unsent),
    /// Look again at once: a new state often follows a request closely.
    Linger,
    /// Nothing to do before this instant (or a change of the mailbox).
    Wait(Instant),
    /// The lead is over.
    Exit,
}

/// A state taken from the mailbox to be published (`Next::Publish`).
#[derive(Debug, PartialEq, Eq)]
pub struct Unsent {
    generation: u64,
    state: String,
}

/// A request to the functions.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// ms_publish of the state of `generation`.
    Publish {
        generation: u64,
        /// The publish id: lead token and counter.
        id: String,
        /// No seq at or below it may be given to this state.
        floor: u64,
        /// A delta against a stored state, or None: the state in full.
        delta: Option<Delta>,
        state: String,
    },
    /// ms_heartbeat.
    Heartbeat,
}

/// A delta and its base.
#[derive(Debug, PartialEq, Eq)]
pub struct Delta {
    pub base_seq: u64,
    pub base_id: String,
    pub delta: String,
    /// The residue sums of the state (Fossil's checksum): the base's of
    /// the next delta when the state is stored.
    pub sums: Sums,
}

/// What the publisher's driver reports after a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Effect {
    /// Report MS_EVENT_PUBLISH_FAILED with this cause.
    PublishFailed(Status),
    /// The lead is over on this final error (the mailbox says so):
    /// report it, then exit.
    Ended(Error),
    /// A diagnostic for `MISSIONSTREAM_DEBUG`.
    Log(String),
}

/// A state stored by this lead: its seq, publish id and text, and the
/// residue sums of its text once known (summed at the first delta made
/// against it, unless its own delta gave them).
#[derive(Debug)]
struct Base {
    seq: u64,
    id: String,
    state: String,
    sums: Option<Sums>,
}

/// The publisher of one lead.
pub struct Publisher {
    /// Random, per lead: the first half of every publish id.
    publish_token: String,
    /// Deltas are sent (the benchmark turns them off).
    deltas: bool,
    /// The highest seq a reply to this lead's requests named.
    acked_seq: u64,
    /// New states sent since the last reply naming a seq: each may have
    /// been stored (and seen by followers) without its reply coming.
    unanswered: u64,
    last_generation_sent: u64,
    /// The newest state stored by this lead: sent again if a failover lost
    /// it, and the base of the next delta while `use_base`.
    last_stored: Option<Base>,
    use_base: bool,
    /// When the last request returned (or the lead began).
    last_sent: Instant,
    retry_at: Option<Instant>,
    /// The write endpoint moved: a heartbeat checks at once that the
    /// newest stored state is still there.
    check_now: bool,
    backoff: Backoff,
}

impl Publisher {
    /// A lead that began at `now` with the stream at `seq`.
    pub fn new(
        now: Instant,
        seq: u64,
        publish_token: String,
        deltas: bool,
        backoff: Backoff,
    ) -> Publisher {
        Publisher {
            publish_token,
            deltas,
            acked_seq: seq,
            unanswered: 0,
            last_generation_sent: 0,
            last_stored: None,
            use_base: false,
            last_sent: now,
            retry_at: None,
            check_now: false,
            backoff,
        }
    }

    /// Turns deltas on or off for the states sent from now on.
    pub fn set_deltas(&mut self, on: bool) {
        self.deltas = on;
    }

    /// The publish id of the state of `generation`: a repeat of its
    /// request (its response lost) or an abandoned older one arriving
    /// late is recognised by the functions and not stored.
    fn id_of(&self, generation: u64) -> String {
        format!("{}{generation:016x}", self.publish_token)
    }

    /// What to do at `now`, the mailbox as it is; `heartbeat` is the
    /// current interval. A request taken marks the mailbox busy.
    pub fn poll(&mut self, mb: &mut Mailbox, now: Instant, heartbeat: Duration) -> Next {
        if mb.exit || mb.closing.is_some_and(|c| mb.pending.is_none() || now >= c) {
            return Next::Exit;
        }
        let heartbeat_due = self.last_sent + heartbeat;
        let mut wake = heartbeat_due;
        if let Some(closing) = mb.closing {
            wake = wake.min(closing);
        }
        let may_send = !mb.paused && self.retry_at.is_none_or(|t| now >= t);
        if may_send {
            if let Some((generation, state)) = mb.pending.take() {
                self.check_now = false;
                mb.busy = true;
                return Next::Publish(Unsent { generation, state });
            }
            if mb.closing.is_none() && (self.check_now || now >= heartbeat_due) {
                self.check_now = false;
                mb.busy = true;
                return Next::Send(Request::Heartbeat);
            }
        } else if let Some(t) = self.retry_at {
            // A retry due already wakes at once (the floor below).
            wake = wake.min(t);
        }
        if may_send && mb.closing.is_none() && now < self.last_sent + LINGER {
            return Next::Linger;
        }
        Next::Wait(wake.max(now + Duration::from_millis(1)))
    }

    /// The publish request of a state taken by `poll`: its floor, and a
    /// delta when one is worth sending.
    pub fn request(&mut self, unsent: Unsent) -> Request {
        let Unsent { generation, state } = unsent;
        if generation != self.last_generation_sent {
            self.last_generation_sent = generation;
            self.unanswered += 1;
        }
        // Above any seq a follower may have seen from this lead: the last
        // one named, and one per new state sent since.
        let floor = self.acked_seq + self.unanswered - 1;
        let delta = match &mut self.last_stored {
            Some(base) if self.use_base && self.deltas => delta_of(base, &state),
            _ => None,
        };
        Request::Publish {
            generation,
            id: self.id_of(generation),
            floor,
            delta,
            state,
        }
    }

    /// The request `sent` returned at `now` with `reply`; `moved` when the
    /// write endpoint changed during it. Updates the mailbox.
    pub fn done(
        &mut self,
        mb: &mut Mailbox,
        sent: Request,
        reply: Result<Stored, Error>,
        now: Instant,
        moved: bool,
    ) -> Vec<Effect> {
        self.last_sent = now;
        let is_publish = matches!(sent, Request::Publish { .. });
        if moved {
            self.check_now = is_publish;
        }
        mb.busy = false;
        let mut effects = Vec::new();
        let reply = reply.and_then(|stored| match &sent {
            Request::Publish { id, .. } => {
                stored_at_or_after(&stored, id).map(|exact| (stored, exact))
            }
            Request::Heartbeat => Ok((stored, false)),
        });
        match reply {
            Ok((stored, exact)) => {
                match sent {
                    Request::Publish {
                        generation,
                        id,
                        state,
                        delta,
                        ..
                    } => {
                        self.acked_seq = self.acked_seq.max(stored.seq);
                        self.unanswered = 0;
                        // The base of the next delta: this state, when the
                        // record holds exactly it.
                        self.use_base = exact;
                        mb.stored = mb.stored.max(generation);
                        self.last_stored = Some(Base {
                            seq: stored.seq,
                            id,
                            state,
                            sums: delta.map(|d| d.sums),
                        });
                    }
                    // The record holds an older state than one stored for
                    // this lead: a failover lost it.
                    Request::Heartbeat if stored.seq < self.acked_seq => {
                        effects.push(Effect::Log(
                            "the stored state went back (a failover lost it): publishing the newest again"
                                .into(),
                        ));
                        // In full: the record lacks the base.
                        self.use_base = false;
                        if mb.pending.is_none() {
                            if let Some(base) = &self.last_stored {
                                mb.published += 1;
                                mb.pending = Some((mb.published, base.state.clone()));
                            }
                        }
                    }
                    Request::Heartbeat => {}
                }
                mb.failing = None;
                self.retry_at = None;
                self.backoff.reset();
            }
            Err(e) if e.is_base_mismatch() => {
                // The record no longer holds the base (another write, a
                // failover, a lost reply): the same state in full, at once.
                effects.push(Effect::Log(format!("{}; sending in full", e.message)));
                self.use_base = false;
                if let Request::Publish {
                    generation, state, ..
                } = sent
                {
                    if mb.pending.is_none() {
                        mb.pending = Some((generation, state));
                    }
                }
            }
            Err(e) if !e.status.is_transient() => {
                mb.ended = Some(e.clone());
                mb.pending = None;
                effects.push(Effect::Ended(e));
            }
            Err(e) => {
                if let Request::Publish {
                    generation,
                    state,
                    delta,
                    ..
                } = sent
                {
                    if delta.is_some() && retry_in_full(&e) {
                        self.use_base = false;
                    }
                    // Kept for the retry, unless a newer state came.
                    if mb.pending.is_none() {
                        mb.pending = Some((generation, state));
                    }
                }
                effects.push(Effect::Log(format!(
                    "{} failed: {}",
                    if is_publish { "publish" } else { "heartbeat" },
                    e.message
                )));
                let first = mb.failing.is_none();
                // A failed heartbeat does not begin a failure streak (it
                // holds no state); within a streak it is the latest cause.
                if is_publish || !first {
                    mb.failing = Some(e.clone());
                }
                self.retry_at = Some(now + self.backoff.next());
                if is_publish && first {
                    effects.push(Effect::PublishFailed(e.status));
                }
            }
        }
        effects
    }
}

/// Whether a delta that failed so is sent again in full (after the
/// backoff), decided on the failure's kind:
///
/// - `Refused` (MSARG): the functions refused the request's arguments, the
///   delta among them ("malformed delta": it does not apply to the stored
///   base); the same delta would be refused again.
/// - `Other` of status PROTOCOL: a reply the library does not understand
///   (of another shape, or naming a publish other than this one): what the
///   record holds is unknown, so the retry does not lean on a base.
/// - `Garbled` is not one of them (since the kinds were introduced; the
///   status PROTOCOL sent it in full before): the response was malformed
///   or answered another request after the transport's own tries, which
///   says nothing of the delta. Like a lost response (`Timeout`) or a node
///   out of reach, the same delta goes again; if the record no longer
///   holds its base the functions say so (MSBASE, sent in full at once),
///   and a try that was carried out is recognised by its publish id.
///
/// `BaseMismatch` is handled apart (in full at once, no backoff); an
/// answer that ends the lead (not transient) never comes here.
fn retry_in_full(e: &Error) -> bool {
    match e.kind {
        Kind::Refused => true,
        Kind::Other => e.status == Status::MS_ERR_PROTOCOL,
        _ => false,
    }
}

/// A delta from `base` to `state` when it is less than half the state's
/// size. The state's checksum comes from the base's sums and the edit
/// (`delta::create_summed`); the base's are summed once, at its first
/// delta, unless its own delta gave them.
fn delta_of(base: &mut Base, state: &str) -> Option<Delta> {
    if state.len() < DELTA_MIN_STATE {
        return None;
    }
    let base_sums = *base
        .sums
        .get_or_insert_with(|| Sums::of(base.state.as_bytes()));
    let (delta, sums) =
        crate::wire::delta::create_summed(&base.state, base_sums, state, state.len() / 2 - 1)?;
    Some(Delta {
        base_seq: base.seq,
        base_id: base.id.clone(),
        delta,
        sums,
    })
}

/// Whether the record, after the publish of id `id`, holds that state or a
/// later one of this lead (only then does it count as stored: ms_flush
/// relies on it), and whether exactly that one.
fn stored_at_or_after(stored: &Stored, id: &str) -> Result<bool, Error> {
    let p = &stored.id;
    // Same lead token, counter not below ours (fixed width: text order is
    // number order).
    if p.len() == id.len() && p.as_bytes()[..16] == id.as_bytes()[..16] && p.as_str() >= id {
        Ok(p == id)
    } else {
        Err(crate::wire::protocol::protocol_error("ms_publish"))
    }
}

#[cfg(test)]
mod tests {
    //! Synthetic runs: a mailbox, instants made up, replies made up.
    use super::*;

    const TOKEN: &str = "0123456789abcdef";
    const HB: Duration = Duration::from_secs(5);

    fn publisher(t0: Instant, seq: u64) -> Publisher {
        Publisher::new(t0, seq, TOKEN.into(), true, Backoff::with_seed(7))
    }

    fn id(generation: u64) -> String {
        format!("{TOKEN}{generation:016x}")
    }

    /// A plan of `n` waypoints with waypoint `moved` shifted: states of a
    /// few KiB that differ in a few bytes.
    fn plan(n: usize, moved: usize) -> String {
        let points: Vec<String> = (0..n)
            .map(|i| {
                format!(
                    "{{\"lat\":{}.5,\"lon\":{}}}",
                    i + usize::from(i == moved),
                    i * 3
                )
            })
            .collect();
        format!("{{\"waypoints\":[{}]}}", points.join(","))
    }

    fn publish(mb: &mut Mailbox, state: &str) -> u64 {
        mb.published += 1;
        mb.pending = Some((mb.published, state.to_owned()));
        mb.published
    }

    fn send(p: &mut Publisher, mb: &mut Mailbox, now: Instant) -> Request {
        match p.poll(mb, now, HB) {
            Next::Send(r) => {
                assert!(mb.busy, "a request taken marks the mailbox busy");
                r
            }
            Next::Publish(unsent) => {
                assert!(mb.busy, "a state taken marks the mailbox busy");
                p.request(unsent)
            }
            other => panic!("expected a request at {now:?}, got {other:?}"),
        }
    }

    fn ok(seq: u64, id: String) -> Result<Stored, Error> {
        Ok(Stored { seq, id })
    }

    fn err(status: Status, message: &str) -> Result<Stored, Error> {
        Err(Error::new(status, message))
    }

    /// `sent` failed with `status` at `now`, on the node it went to.
    fn fail(
        p: &mut Publisher,
        mb: &mut Mailbox,
        sent: Request,
        status: Status,
        message: &str,
        now: Instant,
    ) -> Vec<Effect> {
        p.done(mb, sent, err(status, message), now, false)
    }

    fn base_mismatch() -> Result<Stored, Error> {
        Err(crate::wire::protocol::redis_error(
            "MSBASE the record holds seq 9",
        ))
    }

    /// Publishes `state` and stores it at `seq` (exactly), at `now`.
    fn store(p: &mut Publisher, mb: &mut Mailbox, state: &str, seq: u64, now: Instant) -> Request {
        let g = publish(mb, state);
        let r = send(p, mb, now);
        let effects = p.done(mb, r.clone_shape(), ok(seq, id(g)), now, false);
        assert_eq!(effects, []);
        assert_eq!(mb.stored, g);
        r
    }

    impl Request {
        /// A copy, for looking at a request after handing it back.
        fn clone_shape(&self) -> Request {
            match self {
                Request::Publish {
                    generation,
                    id,
                    floor,
                    delta,
                    state,
                } => Request::Publish {
                    generation: *generation,
                    id: id.clone(),
                    floor: *floor,
                    delta: delta.as_ref().map(|d| Delta {
                        base_seq: d.base_seq,
                        base_id: d.base_id.clone(),
                        delta: d.delta.clone(),
                        sums: d.sums,
                    }),
                    state: state.clone(),
                },
                Request::Heartbeat => Request::Heartbeat,
            }
        }
        fn delta(&self) -> Option<&Delta> {
            match self {
                Request::Publish { delta, .. } => delta.as_ref(),
                Request::Heartbeat => None,
            }
        }
        fn floor(&self) -> u64 {
            match self {
                Request::Publish { floor, .. } => *floor,
                Request::Heartbeat => panic!("a heartbeat has no floor"),
            }
        }
        fn generation(&self) -> u64 {
            match self {
                Request::Publish { generation, .. } => *generation,
                Request::Heartbeat => panic!("a heartbeat has no generation"),
            }
        }
    }

    #[test]
    fn the_first_state_goes_in_full_and_the_next_as_a_delta_of_it() {
        let t0 = Instant::now();
        let (mut p, mut mb) = (publisher(t0, 4), Mailbox::default());
        let (s1, s2) = (plan(40, 99), plan(40, 7));
        let first = store(&mut p, &mut mb, &s1, 5, t0);
        assert_eq!(first.delta(), None, "nothing stored yet to build on");
        publish(&mut mb, &s2);
        // The mailbox gives the state up; the delta is made after (by
        // `request`, with the mailbox let go).
        let Next::Publish(unsent) = p.poll(&mut mb, t0 + Duration::from_millis(1), HB) else {
            panic!("the state is taken");
        };
        assert_eq!((mb.busy, mb.pending.as_ref()), (true, None));
        let second = p.request(unsent);
        let d = second.delta().expect("a delta against the stored state");
        assert_eq!((d.base_seq, d.base_id.as_str()), (5, id(1).as_str()));
        assert!(d.delta.len() < s2.len() / 2);
        assert_eq!(
            crate::wire::delta::apply(&s1, &d.delta, usize::MAX).as_deref(),
            Ok(s2.as_str())
        );
    }

    #[test]
    fn a_chain_of_deltas_carries_each_states_sums_to_the_next() {
        // Each stored delta's state is the base of the next; its checksum
        // comes from the sums the previous delta gave (or, after a state in
        // full, from the state summed once). Lengths change by 0 to 7 bytes
        // (every shift of the end), edits near either end; every delta
        // applies, its checksum verified, to the state before it.
        let t0 = Instant::now();
        let (mut p, mut mb) = (publisher(t0, 0), Mailbox::default());
        let mut state = plan(60, 99);
        store(&mut p, &mut mb, &state, 1, t0);
        let mut deltas = 0;
        for i in 0..40usize {
            let at = [3, state.len() - 5, state.len() / 3, state.len() / 2][i % 4];
            let at = (at..).find(|&a| state.is_char_boundary(a)).unwrap();
            let mut next = state.clone();
            let end = (at + i % 3..).find(|&e| state.is_char_boundary(e)).unwrap();
            let put = ["", "7", "77", "é", "é7", "777", "é77", "7777777"][i % 8];
            next.replace_range(at..end, put);
            let g = publish(&mut mb, &next);
            let r = send(&mut p, &mut mb, t0);
            let d = r.delta().expect("a small edit goes as a delta");
            assert_eq!(
                crate::wire::delta::apply(&state, &d.delta, usize::MAX).as_deref(),
                Ok(next.as_str()),
                "{i}"
            );
            assert_eq!(d.sums, crate::wire::delta::Sums::of(next.as_bytes()), "{i}");
            deltas += 1;
            if i % 10 == 9 {
                // MSBASE: the same state in full, then deltas of it again.
                p.done(&mut mb, r, base_mismatch(), t0, false);
                let full = send(&mut p, &mut mb, t0);
                assert_eq!(full.delta(), None);
                p.done(&mut mb, full, ok(100 + i as u64, id(g)), t0, false);
            } else {
                p.done(&mut mb, r, ok(100 + i as u64, id(g)), t0, false);
            }
            assert_eq!(mb.stored, g);
            state = next;
        }
        assert_eq!(deltas, 40);
    }

    #[test]
    fn small_states_deltas_off_and_deltas_not_worth_it_go_in_full() {
        let t0 = Instant::now();
        // Below 256 bytes.
        let (mut p, mut mb) = (publisher(t0, 0), Mailbox::default());
        store(&mut p, &mut mb, "{\"a\":1}", 1, t0);
        publish(&mut mb, "{\"a\":2}");
        assert_eq!(send(&mut p, &mut mb, t0).delta(), None);
        // Deltas off.
        let (mut p, mut mb) = (publisher(t0, 0), Mailbox::default());
        p.set_deltas(false);
        store(&mut p, &mut mb, &plan(40, 99), 1, t0);
        publish(&mut mb, &plan(40, 3));
        assert_eq!(send(&mut p, &mut mb, t0).delta(), None);
        // A delta not less than half the state: states with nothing in
        // common.
        let (mut p, mut mb) = (publisher(t0, 0), Mailbox::default());
        store(&mut p, &mut mb, &"a".repeat(600), 1, t0);
        let other: String = (0..600)
            .map(|i| (b'b' + (i * 7 % 23) as u8) as char)
            .collect();
        publish(&mut mb, &other);
        assert_eq!(send(&mut p, &mut mb, t0).delta(), None);
    }

    #[test]
    fn a_state_stored_but_superseded_is_not_the_base_of_a_delta() {
        let t0 = Instant::now();
        let (mut p, mut mb) = (publisher(t0, 0), Mailbox::default());
        let g = publish(&mut mb, &plan(40, 99));
        let r = send(&mut p, &mut mb, t0);
        // The record holds a later state of this lead (generation 2, whose
        // reply was lost): stored, but not exactly this one.
        assert_eq!(p.done(&mut mb, r, ok(3, id(g + 1)), t0, false), []);
        assert_eq!(mb.stored, g, "stored (or superseded by a newer one)");
        publish(&mut mb, &plan(40, 2));
        assert_eq!(send(&mut p, &mut mb, t0).delta(), None);
    }

    #[test]
    fn a_reply_naming_an_older_or_foreign_publish_is_not_stored() {
        let t0 = Instant::now();
        for stored in [
            id(0),                                    // an older state of this lead
            format!("fedcba9876543210{:016x}", 5u64), // another lead's
            "-".to_string(),                          // nothing stored
        ] {
            let (mut p, mut mb) = (publisher(t0, 0), Mailbox::default());
            let g = publish(&mut mb, "{}");
            let r = send(&mut p, &mut mb, t0);
            let effects = p.done(&mut mb, r, ok(1, stored.clone()), t0, false);
            assert!(
                effects.contains(&Effect::PublishFailed(Status::MS_ERR_PROTOCOL)),
                "{stored}"
            );
            assert_eq!(mb.stored, 0, "{stored}");
            assert_eq!(mb.pending, Some((g, "{}".to_string())), "kept for a retry");
            assert_eq!(
                mb.failing.as_ref().map(|e| e.status),
                Some(Status::MS_ERR_PROTOCOL)
            );
        }
    }

    #[test]
    fn the_floor_counts_every_new_state_sent_since_the_last_seq_named() {
        let t0 = Instant::now();
        let (mut p, mut mb) = (publisher(t0, 10), Mailbox::default());
        let g1 = publish(&mut mb, "{\"a\":1}");
        let r = send(&mut p, &mut mb, t0);
        assert_eq!(r.floor(), 10);
        // Lost reply: the state may be stored (seq 11) and seen.
        fail(&mut p, &mut mb, r, Status::MS_ERR_TIMEOUT, "lost", t0);
        // The same state again: no new seq to account for.
        let retry = t0 + Duration::from_secs(1);
        let r = send(&mut p, &mut mb, retry);
        assert_eq!((r.generation(), r.floor()), (g1, 10));
        fail(&mut p, &mut mb, r, Status::MS_ERR_TIMEOUT, "lost", retry);
        // A newer state replaces it: one more seq a follower may have seen.
        publish(&mut mb, "{\"a\":2}");
        let r = send(&mut p, &mut mb, t0 + Duration::from_secs(2));
        assert_eq!(r.floor(), 11);
        let g2 = r.generation();
        p.done(
            &mut mb,
            r,
            ok(12, id(g2)),
            t0 + Duration::from_secs(2),
            false,
        );
        // A reply named seq 12: the floor starts from it again.
        publish(&mut mb, "{\"a\":3}");
        assert_eq!(
            send(&mut p, &mut mb, t0 + Duration::from_secs(2)).floor(),
            12
        );
    }

    #[test]
    fn a_base_mismatch_sends_the_same_state_in_full_at_once_without_failing() {
        let t0 = Instant::now();
        let (mut p, mut mb) = (publisher(t0, 0), Mailbox::default());
        store(&mut p, &mut mb, &plan(40, 99), 1, t0);
        let g = publish(&mut mb, &plan(40, 5));
        let r = send(&mut p, &mut mb, t0);
        assert!(r.delta().is_some());
        let effects = p.done(&mut mb, r, base_mismatch(), t0, false);
        assert!(
            effects.iter().all(|e| matches!(e, Effect::Log(_))),
            "{effects:?}"
        );
        assert!(mb.failing.is_none() && mb.ended.is_none());
        // At once (no backoff), the same generation, in full.
        let again = send(&mut p, &mut mb, t0);
        assert_eq!((again.generation(), again.delta()), (g, None));
        // And the next state after it is stored builds on it again.
        p.done(&mut mb, again, ok(2, id(g)), t0, false);
        publish(&mut mb, &plan(40, 6));
        assert!(send(&mut p, &mut mb, t0).delta().is_some());
    }

    #[test]
    fn a_base_mismatch_gives_way_to_a_newer_state() {
        let t0 = Instant::now();
        let (mut p, mut mb) = (publisher(t0, 0), Mailbox::default());
        store(&mut p, &mut mb, &plan(40, 99), 1, t0);
        publish(&mut mb, &plan(40, 5));
        let r = send(&mut p, &mut mb, t0);
        let newer = publish(&mut mb, &plan(40, 6));
        p.done(&mut mb, r, base_mismatch(), t0, false);
        let next = send(&mut p, &mut mb, t0);
        assert_eq!((next.generation(), next.delta()), (newer, None));
    }

    #[test]
    fn a_refused_delta_is_retried_in_full_after_a_backoff() {
        let t0 = Instant::now();
        let (mut p, mut mb) = (publisher(t0, 0), Mailbox::default());
        store(&mut p, &mut mb, &plan(40, 99), 1, t0);
        let g = publish(&mut mb, &plan(40, 5));
        let r = send(&mut p, &mut mb, t0);
        assert!(r.delta().is_some());
        let effects = p.done(
            &mut mb,
            r,
            Err(crate::wire::protocol::redis_error("MSARG bad delta")),
            t0,
            false,
        );
        assert!(effects.contains(&Effect::PublishFailed(Status::MS_ERR_PROTOCOL)));
        assert!(matches!(
            p.poll(&mut mb, t0 + Duration::from_millis(10), HB),
            Next::Wait(_)
        ));
        let again = send(&mut p, &mut mb, t0 + Duration::from_millis(100));
        assert_eq!((again.generation(), again.delta()), (g, None));
    }

    #[test]
    fn a_delta_that_failed_on_the_way_is_retried_as_the_same_delta() {
        let t0 = Instant::now();
        let (mut p, mut mb) = (publisher(t0, 0), Mailbox::default());
        store(&mut p, &mut mb, &plan(40, 99), 1, t0);
        let g = publish(&mut mb, &plan(40, 5));
        let r = send(&mut p, &mut mb, t0);
        let first = r.delta().map(|d| d.delta.clone()).expect("a delta");
        // Webdis down: nothing says the record lost the base.
        let effects = p.done(&mut mb, r, err(Status::MS_ERR_TIMEOUT, "slow"), t0, false);
        assert!(effects.contains(&Effect::PublishFailed(Status::MS_ERR_TIMEOUT)));
        let again = send(&mut p, &mut mb, t0 + Duration::from_secs(1));
        assert_eq!(again.generation(), g);
        assert_eq!(
            again.delta().map(|d| d.delta.as_str()),
            Some(first.as_str())
        );
    }

    /// What a failed delta is sent again as, by the failure's kind: in
    /// full after an MSARG (the functions could not apply it) or a reply
    /// not understood (a publish other than this one named); the same
    /// delta after a garbled response, whatever its status (malformed, a
    /// proxy's 502), as after a lost one.
    #[test]
    fn a_failed_delta_goes_again_in_full_only_when_the_reply_speaks_of_it() {
        let t0 = Instant::now();
        let refused = || {
            Err(crate::wire::protocol::redis_error(
                "MSARG malformed delta: 3",
            ))
        };
        let foreign = || Err(crate::wire::protocol::protocol_error("ms_publish"));
        let garbled = || {
            Err(
                Error::new(Status::MS_ERR_PROTOCOL, "malformed HTTP response")
                    .kinded(Kind::Garbled),
            )
        };
        let bad_gateway =
            || Err(Error::new(Status::MS_ERR_UNAVAILABLE, "HTTP 502").kinded(Kind::Garbled));
        let version = || Err(crate::wire::protocol::redis_error("MSVERSION 7"));
        type Reply = fn() -> Result<Stored, Error>;
        let cases: [(Reply, bool); 5] = [
            (refused, true),
            (foreign, true),
            (garbled, false),
            (bad_gateway, false),
            (version, false),
        ];
        for (i, (reply, in_full)) in cases.into_iter().enumerate() {
            let (mut p, mut mb) = (publisher(t0, 0), Mailbox::default());
            store(&mut p, &mut mb, &plan(40, 99), 1, t0);
            let g = publish(&mut mb, &plan(40, 5));
            let r = send(&mut p, &mut mb, t0);
            let first = r.delta().map(|d| d.delta.clone()).expect("a delta");
            let status = reply().unwrap_err().status;
            let effects = p.done(&mut mb, r, reply(), t0, false);
            assert!(effects.contains(&Effect::PublishFailed(status)), "case {i}");
            let again = send(&mut p, &mut mb, t0 + Duration::from_secs(2));
            assert_eq!(again.generation(), g, "case {i}");
            let expected = if in_full { None } else { Some(first.as_str()) };
            assert_eq!(
                again.delta().map(|d| d.delta.as_str()),
                expected,
                "case {i}"
            );
        }
    }

    /// `n` bytes no state of only `a`s holds.
    fn literal(n: usize) -> String {
        (0..n).map(|i| (b'b' + (i % 25) as u8) as char).collect()
    }

    #[test]
    fn deltas_start_at_256_bytes_and_are_sent_only_under_half_the_state() {
        let t0 = Instant::now();
        let base = "a".repeat(600);
        // The length of the delta sent for `state` after `base` was
        // stored exactly, or None: sent in full.
        let sent_as = |state: &str| -> Option<usize> {
            let (mut p, mut mb) = (publisher(t0, 0), Mailbox::default());
            store(&mut p, &mut mb, &base, 1, t0);
            publish(&mut mb, state);
            send(&mut p, &mut mb, t0).delta().map(|d| d.delta.len())
        };
        // A prefix of the base: a delta of a few bytes, yet in full below
        // 256 bytes.
        assert_eq!(sent_as(&base[..255]), None);
        assert!(sent_as(&base[..256]).is_some_and(|d| d < 20));
        // The prefix, then more and more bytes the base lacks: a delta one
        // byte under half the state is sent, one of half the state not.
        let (mut under, mut half) = (0, 0);
        for extra in 0..400 {
            let state = format!("{}{}", &base[..300], literal(extra));
            let d = crate::wire::delta::create(&base, &state).len();
            if d + 1 == state.len() / 2 {
                assert_eq!(sent_as(&state), Some(d), "{} bytes", state.len());
                under += 1;
            } else if d == state.len() / 2 {
                assert_eq!(sent_as(&state), None, "{} bytes", state.len());
                half += 1;
            }
        }
        assert!(under > 0 && half > 0, "{under} {half}");
    }

    #[test]
    fn a_transient_failure_keeps_the_state_and_reports_once_per_streak() {
        let t0 = Instant::now();
        let (mut p, mut mb) = (publisher(t0, 0), Mailbox::default());
        let g = publish(&mut mb, "{\"a\":1}");
        let mut now = t0;
        let mut reported = 0;
        for _ in 0..4 {
            let r = send(&mut p, &mut mb, now);
            assert_eq!(r.generation(), g);
            let effects = fail(&mut p, &mut mb, r, Status::MS_ERR_UNAVAILABLE, "down", now);
            reported += effects
                .iter()
                .filter(|e| matches!(e, Effect::PublishFailed(_)))
                .count();
            assert_eq!(mb.pending, Some((g, "{\"a\":1}".to_string())));
            assert!(!mb.busy);
            now += Duration::from_secs(10);
        }
        assert_eq!(reported, 1, "once per failure streak");
        assert_eq!(
            mb.failing.as_ref().map(|e| e.status),
            Some(Status::MS_ERR_UNAVAILABLE)
        );
        // Success ends the streak; the next failure is reported again.
        let r = send(&mut p, &mut mb, now);
        assert_eq!(p.done(&mut mb, r, ok(1, id(g)), now, false), []);
        assert!(mb.failing.is_none());
        publish(&mut mb, "{\"a\":2}");
        let r = send(&mut p, &mut mb, now);
        let effects = fail(&mut p, &mut mb, r, Status::MS_ERR_TIMEOUT, "slow", now);
        assert!(effects.contains(&Effect::PublishFailed(Status::MS_ERR_TIMEOUT)));
    }

    #[test]
    fn retries_back_off_exponentially_and_a_success_resets_the_backoff() {
        let t0 = Instant::now();
        let (mut p, mut mb) = (publisher(t0, 0), Mailbox::default());
        let g = publish(&mut mb, "{}");
        let mut now = t0;
        // Steps 100, 200, 400, 800 ms: each wait between half and all of it.
        for step in [100u64, 200, 400, 800] {
            let r = send(&mut p, &mut mb, now);
            fail(&mut p, &mut mb, r, Status::MS_ERR_UNAVAILABLE, "down", now);
            let Next::Wait(at) = p.poll(&mut mb, now, HB) else {
                panic!("no retry before its time");
            };
            let wait = at - now;
            assert!(
                wait >= Duration::from_millis(step / 2) && wait <= Duration::from_millis(step),
                "{wait:?} for a {step} ms step"
            );
            assert!(matches!(
                p.poll(&mut mb, at - Duration::from_millis(1), HB),
                Next::Wait(_)
            ));
            now = at;
        }
        let r = send(&mut p, &mut mb, now);
        p.done(&mut mb, r, ok(1, id(g)), now, false);
        publish(&mut mb, "{}");
        let r = send(&mut p, &mut mb, now);
        fail(&mut p, &mut mb, r, Status::MS_ERR_UNAVAILABLE, "down", now);
        let Next::Wait(at) = p.poll(&mut mb, now, HB) else {
            panic!("no retry before its time");
        };
        assert!(
            at - now <= Duration::from_millis(100),
            "back to the first step"
        );
    }

    #[test]
    fn a_final_error_ends_the_lead_and_drops_the_state() {
        let t0 = Instant::now();
        let (mut p, mut mb) = (publisher(t0, 0), Mailbox::default());
        publish(&mut mb, "{}");
        let r = send(&mut p, &mut mb, t0);
        let effects = p.done(
            &mut mb,
            r,
            Err(crate::wire::protocol::redis_error("MSNOTLEADER")),
            t0,
            false,
        );
        assert!(
            matches!(&effects[..], [Effect::Ended(e)] if e.status == Status::MS_ERR_NOT_LEADING)
        );
        assert_eq!(
            mb.ended.as_ref().map(|e| e.status),
            Some(Status::MS_ERR_NOT_LEADING)
        );
        assert_eq!(mb.pending, None);
    }

    #[test]
    fn a_failed_heartbeat_does_not_begin_a_failure_streak_but_updates_one() {
        let t0 = Instant::now();
        let (mut p, mut mb) = (publisher(t0, 0), Mailbox::default());
        let at = t0 + HB;
        assert_eq!(send(&mut p, &mut mb, at), Request::Heartbeat);
        let effects = fail(
            &mut p,
            &mut mb,
            Request::Heartbeat,
            Status::MS_ERR_TIMEOUT,
            "slow",
            at,
        );
        assert!(!effects
            .iter()
            .any(|e| matches!(e, Effect::PublishFailed(_))));
        assert!(mb.failing.is_none());
        // The next one after an interval (and the backoff) again.
        let retry = at + Duration::from_millis(100);
        assert_eq!(p.poll(&mut mb, retry, HB), Next::Wait(at + HB));
        // A publish fails, then a heartbeat: the streak's cause is the latest.
        publish(&mut mb, "{}");
        let r = send(&mut p, &mut mb, retry);
        fail(
            &mut p,
            &mut mb,
            r,
            Status::MS_ERR_UNAVAILABLE,
            "down",
            retry,
        );
        mb.pending = None;
        let next = retry + HB;
        assert_eq!(send(&mut p, &mut mb, next), Request::Heartbeat);
        let effects = fail(
            &mut p,
            &mut mb,
            Request::Heartbeat,
            Status::MS_ERR_TIMEOUT,
            "slow",
            next,
        );
        assert!(!effects
            .iter()
            .any(|e| matches!(e, Effect::PublishFailed(_))));
        assert_eq!(
            mb.failing.as_ref().map(|e| e.status),
            Some(Status::MS_ERR_TIMEOUT)
        );
    }

    #[test]
    fn a_state_lost_in_a_failover_is_published_again_in_full() {
        let t0 = Instant::now();
        let (mut p, mut mb) = (publisher(t0, 0), Mailbox::default());
        let newest = plan(40, 8);
        store(&mut p, &mut mb, &plan(40, 99), 6, t0);
        store(&mut p, &mut mb, &newest, 7, t0);
        let at = t0 + HB;
        assert_eq!(send(&mut p, &mut mb, at), Request::Heartbeat);
        // The record went back to seq 5: the new primary lacks seq 6 and 7.
        let effects = p.done(&mut mb, Request::Heartbeat, ok(5, id(1)), at, false);
        assert!(effects.iter().all(|e| matches!(e, Effect::Log(_))));
        let again = send(&mut p, &mut mb, at);
        let g = again.generation();
        assert_eq!(g, 3, "a new generation: ms_flush waits for it");
        assert_eq!(again.delta(), None, "in full: the record lacks the base");
        assert!(matches!(&again, Request::Publish { state, .. } if *state == newest));
        assert_eq!(again.floor(), 7, "above every seq this lead was given");
    }

    #[test]
    fn after_a_failover_a_newer_pending_state_is_sent_instead_and_a_current_record_changes_nothing()
    {
        let t0 = Instant::now();
        let (mut p, mut mb) = (publisher(t0, 0), Mailbox::default());
        store(&mut p, &mut mb, &plan(40, 99), 7, t0);
        let at = t0 + HB;
        assert_eq!(send(&mut p, &mut mb, at), Request::Heartbeat);
        let newer = publish(&mut mb, &plan(40, 1));
        p.done(&mut mb, Request::Heartbeat, ok(5, id(1)), at, false);
        let next = send(&mut p, &mut mb, at);
        assert_eq!((next.generation(), next.delta()), (newer, None));
        // The record at the seq stored: nothing to send again.
        let (mut p, mut mb) = (publisher(t0, 0), Mailbox::default());
        store(&mut p, &mut mb, &plan(40, 99), 7, t0);
        assert_eq!(send(&mut p, &mut mb, at), Request::Heartbeat);
        p.done(&mut mb, Request::Heartbeat, ok(7, id(1)), at, false);
        assert_eq!(mb.pending, None);
        assert!(
            matches!(p.poll(&mut mb, at + Duration::from_millis(1), HB), Next::Wait(t) if t == at + HB)
        );
    }

    #[test]
    fn heartbeats_follow_one_interval_of_idleness_or_a_moved_endpoint_at_once() {
        let t0 = Instant::now();
        let (mut p, mut mb) = (publisher(t0, 0), Mailbox::default());
        let later = t0 + Duration::from_millis(1);
        assert_eq!(p.poll(&mut mb, later, HB), Next::Wait(t0 + HB));
        assert_eq!(send(&mut p, &mut mb, t0 + HB), Request::Heartbeat);
        let t1 = t0 + HB;
        p.done(&mut mb, Request::Heartbeat, ok(0, "-".into()), t1, false);
        assert_eq!(
            p.poll(&mut mb, t1 + Duration::from_secs(1), HB),
            Next::Wait(t1 + HB)
        );
        // A publish during which the write endpoint moved: a heartbeat at
        // once checks that the state is still there.
        let g = publish(&mut mb, "{}");
        let at = t1 + Duration::from_secs(1);
        let r = send(&mut p, &mut mb, at);
        p.done(&mut mb, r, ok(1, id(g)), at, true);
        assert_eq!(send(&mut p, &mut mb, at), Request::Heartbeat);
        // A heartbeat during which it moved does not ask for another.
        p.done(&mut mb, Request::Heartbeat, ok(1, id(g)), at, true);
        assert_eq!(
            p.poll(&mut mb, at + Duration::from_millis(1), HB),
            Next::Wait(at + HB)
        );
    }

    #[test]
    fn the_publisher_lingers_just_after_a_request_and_sends_nothing_while_paused() {
        let t0 = Instant::now();
        let (mut p, mut mb) = (publisher(t0, 0), Mailbox::default());
        assert_eq!(p.poll(&mut mb, t0 + LINGER / 2, HB), Next::Linger);
        assert_eq!(p.poll(&mut mb, t0 + LINGER, HB), Next::Wait(t0 + HB));
        mb.paused = true;
        publish(&mut mb, "{}");
        assert_eq!(
            p.poll(&mut mb, t0 + HB * 3, HB),
            Next::Wait(t0 + HB * 3 + Duration::from_millis(1))
        );
        assert!(mb.pending.is_some() && !mb.busy);
        mb.paused = false;
        assert!(matches!(
            send(&mut p, &mut mb, t0 + HB * 3),
            Request::Publish { .. }
        ));
    }

    #[test]
    fn closing_delivers_the_pending_state_until_its_deadline_and_nothing_else() {
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(2);
        // Nothing pending: exit at once.
        let (mut p, mut mb) = (publisher(t0, 0), Mailbox::default());
        mb.closing = Some(deadline);
        assert_eq!(p.poll(&mut mb, t0, HB), Next::Exit);
        // A pending state is sent, even one failing until the deadline.
        let (mut p, mut mb) = (publisher(t0, 0), Mailbox::default());
        mb.closing = Some(deadline);
        publish(&mut mb, "{}");
        let r = send(&mut p, &mut mb, t0);
        fail(&mut p, &mut mb, r, Status::MS_ERR_UNAVAILABLE, "down", t0);
        let Next::Wait(at) = p.poll(&mut mb, t0, HB) else {
            panic!("a retry before the deadline");
        };
        assert!(at <= t0 + Duration::from_millis(100));
        assert!(matches!(send(&mut p, &mut mb, at), Request::Publish { .. }));
        fail(
            &mut p,
            &mut mb,
            Request::Heartbeat,
            Status::MS_ERR_UNAVAILABLE,
            "down",
            at,
        );
        assert_eq!(p.poll(&mut mb, deadline, HB), Next::Exit);
        // No heartbeat while closing, however idle.
        let (mut p, mut mb) = (publisher(t0, 0), Mailbox::default());
        mb.closing = Some(t0 + HB * 3);
        mb.pending = Some((1, "{}".into()));
        mb.paused = true;
        assert_eq!(
            p.poll(&mut mb, t0 + HB * 2, HB),
            Next::Wait(t0 + HB * 2 + Duration::from_millis(1))
        );
        // Exit ends everything.
        mb.exit = true;
        assert_eq!(p.poll(&mut mb, t0, HB), Next::Exit);
    }
}
