//! The reactor's timers: at most one pending instant per owner (a lead,
//! a follow group, an opening subscription, a request), and the earliest
//! of them all. Pure: instants are given, never read from the clock.
//!
//! Owns: the pending instant of each key, in a binary heap ordered by
//! (instant, key) so that timers due at the same instant fire in key
//! order, whatever the order they were set in. Setting a key again
//! replaces its instant (the old heap entry becomes stale and is skipped);
//! the heap is rebuilt from the live timers when stale entries outnumber
//! them, so it stays within a small multiple of the owners however often
//! they re-arm.
//! Never does: read the clock, sleep, or know what a key's owner does
//! when its timer fires (the reactor calls the owner's machine).
//!
//! Used by the reactor; see docs/internals/fixed-threads.md. Nothing in
//! production uses it yet.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Instant;

/// Whose timer.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub enum TimerKey {
    /// A lead (its session id): the publisher's next heartbeat or retry.
    Lead(u64),
    /// A follow group (its slot): presence, probes, recovery, resync.
    Group(u32),
    /// A subscription being opened (its group's slot): the wait of an
    /// attempt.
    Opening(u32),
    /// A request out (its id): its deadline (phase B: requests made
    /// non-blocking on the reactor).
    #[allow(dead_code)]
    Request(u64),
}

/// Stale entries allowed beyond the live ones before the heap is rebuilt.
const SLACK: usize = 64;

/// The timers. See the module documentation.
#[derive(Debug, Default)]
pub struct Timers {
    /// (instant, key, generation); an entry is live while `live` holds
    /// its key with the same generation.
    heap: BinaryHeap<Reverse<(Instant, TimerKey, u64)>>,
    live: HashMap<TimerKey, (u64, Instant)>,
    generation: u64,
}

impl Timers {
    pub fn new() -> Timers {
        Timers::default()
    }

    /// Sets `key`'s timer to `at`, replacing any earlier setting (earlier
    /// or later). An instant already past fires at the next `pop_due`.
    pub fn set(&mut self, key: TimerKey, at: Instant) {
        self.generation += 1;
        self.live.insert(key, (self.generation, at));
        self.heap.push(Reverse((at, key, self.generation)));
        self.tidy();
    }

    /// Removes `key`'s timer, if set.
    pub fn cancel(&mut self, key: &TimerKey) {
        if self.live.remove(key).is_some() {
            self.tidy();
        }
    }

    /// When `key`'s timer fires, if it is set.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn get(&self, key: &TimerKey) -> Option<Instant> {
        self.live.get(key).map(|&(_, at)| at)
    }

    /// The earliest pending instant (the reactor's wait ends there).
    pub fn next(&self) -> Option<Instant> {
        // `tidy` keeps a live entry on top.
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Removes and returns every timer due at `now` (instant <= now), by
    /// instant, then key.
    pub fn pop_due(&mut self, now: Instant) -> Vec<TimerKey> {
        let mut due = Vec::new();
        while let Some(&Reverse((at, key, generation))) = self.heap.peek() {
            if at > now {
                break;
            }
            self.heap.pop();
            if self.live.get(&key).is_some_and(|&(g, _)| g == generation) {
                self.live.remove(&key);
                due.push(key);
            }
        }
        self.tidy();
        due
    }

    /// Timers set.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn len(&self) -> usize {
        self.live.len()
    }

    #[cfg_attr(not(test), allow(dead_code))]
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Entries in the heap, stale ones included (for tests of its bound).
    #[cfg_attr(not(test), allow(dead_code))]
    fn heap_len(&self) -> usize {
        self.heap.len()
    }

    /// Drops stale entries from the top (so that `next` is a peek), and
    /// rebuilds the heap from the live timers when it holds more than
    /// twice as many entries as there are timers (plus `SLACK`).
    fn tidy(&mut self) {
        if self.heap.len() > 2 * self.live.len() + SLACK {
            self.heap = self
                .live
                .iter()
                .map(|(&key, &(generation, at))| Reverse((at, key, generation)))
                .collect();
        }
        while let Some(&Reverse((_, key, generation))) = self.heap.peek() {
            if self.live.get(&key).is_some_and(|&(g, _)| g == generation) {
                break;
            }
            self.heap.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    #[test]
    fn timers_fire_in_order_of_their_instants() {
        let t0 = Instant::now();
        let mut t = Timers::new();
        assert_eq!(t.next(), None);
        assert!(t.pop_due(ms(t0, 1000)).is_empty());
        t.set(TimerKey::Lead(1), ms(t0, 30));
        t.set(TimerKey::Group(2), ms(t0, 10));
        t.set(TimerKey::Request(3), ms(t0, 20));
        assert_eq!((t.len(), t.next()), (3, Some(ms(t0, 10))));
        assert_eq!(t.pop_due(ms(t0, 9)), vec![]);
        assert_eq!(
            t.pop_due(ms(t0, 10)),
            vec![TimerKey::Group(2)],
            "due at its instant"
        );
        assert_eq!(t.next(), Some(ms(t0, 20)));
        assert_eq!(
            t.pop_due(ms(t0, 100)),
            vec![TimerKey::Request(3), TimerKey::Lead(1)]
        );
        assert!(t.is_empty());
        assert_eq!(t.next(), None);
    }

    #[test]
    fn setting_again_replaces_earlier_or_later() {
        let t0 = Instant::now();
        let mut t = Timers::new();
        t.set(TimerKey::Lead(1), ms(t0, 50));
        t.set(TimerKey::Lead(1), ms(t0, 10));
        assert_eq!((t.len(), t.next()), (1, Some(ms(t0, 10))));
        t.set(TimerKey::Lead(1), ms(t0, 40));
        assert_eq!(
            t.next(),
            Some(ms(t0, 40)),
            "the stale earlier entry is skipped"
        );
        assert_eq!(t.get(&TimerKey::Lead(1)), Some(ms(t0, 40)));
        assert_eq!(t.pop_due(ms(t0, 39)), vec![]);
        assert_eq!(
            t.pop_due(ms(t0, 60)),
            vec![TimerKey::Lead(1)],
            "once, not per setting"
        );
        assert_eq!(t.pop_due(ms(t0, 60)), vec![]);
        // Set again after firing: fires again.
        t.set(TimerKey::Lead(1), ms(t0, 70));
        assert_eq!(t.pop_due(ms(t0, 70)), vec![TimerKey::Lead(1)]);
    }

    #[test]
    fn a_cancelled_timer_never_fires_and_is_not_next() {
        let t0 = Instant::now();
        let mut t = Timers::new();
        t.set(TimerKey::Group(1), ms(t0, 10));
        t.set(TimerKey::Group(2), ms(t0, 20));
        t.cancel(&TimerKey::Group(1));
        t.cancel(&TimerKey::Opening(9));
        assert_eq!((t.len(), t.next()), (1, Some(ms(t0, 20))));
        assert_eq!(t.get(&TimerKey::Group(1)), None);
        assert_eq!(t.pop_due(ms(t0, 100)), vec![TimerKey::Group(2)]);
        t.set(TimerKey::Group(3), ms(t0, 5));
        t.cancel(&TimerKey::Group(3));
        assert_eq!(t.next(), None);
        assert!(t.pop_due(ms(t0, 100)).is_empty());
    }

    #[test]
    fn timers_due_at_one_instant_fire_in_key_order() {
        let t0 = Instant::now();
        let at = ms(t0, 10);
        let keys = [
            TimerKey::Request(1),
            TimerKey::Opening(4),
            TimerKey::Group(7),
            TimerKey::Lead(9),
            TimerKey::Group(3),
            TimerKey::Lead(2),
        ];
        for order in [keys.to_vec(), keys.iter().rev().copied().collect()] {
            let mut t = Timers::new();
            for k in order {
                t.set(k, at);
            }
            assert_eq!(
                t.pop_due(at),
                vec![
                    TimerKey::Lead(2),
                    TimerKey::Lead(9),
                    TimerKey::Group(3),
                    TimerKey::Group(7),
                    TimerKey::Opening(4),
                    TimerKey::Request(1),
                ]
            );
        }
    }

    #[test]
    fn an_instant_already_past_fires_at_once() {
        let t0 = Instant::now();
        let mut t = Timers::new();
        t.set(TimerKey::Lead(1), t0);
        assert_eq!(t.pop_due(ms(t0, 5)), vec![TimerKey::Lead(1)]);
    }

    /// Re-armed over and over (a group after every message), the heap
    /// stays within twice the timers plus the slack.
    #[test]
    fn stale_entries_stay_bounded() {
        let t0 = Instant::now();
        let mut t = Timers::new();
        for round in 0..10_000u64 {
            for g in 0..10u32 {
                t.set(TimerKey::Group(g), ms(t0, 1_000_000 - round));
            }
            assert!(
                t.heap_len() <= 2 * t.len() + SLACK + 1,
                "round {round}: {}",
                t.heap_len()
            );
        }
        assert_eq!(t.len(), 10);
        assert_eq!(t.next(), Some(ms(t0, 1_000_000 - 9_999)));
        let due = t.pop_due(ms(t0, 2_000_000));
        assert_eq!(due, (0..10).map(TimerKey::Group).collect::<Vec<_>>());
        assert_eq!(t.heap_len(), 0);
    }

    /// Random operations against a plain map: the same timers fire, in the
    /// same order, and `next` is always the earliest.
    #[test]
    fn agrees_with_a_naive_model() {
        let t0 = Instant::now();
        let mut seed = 0x853c_49e6_748f_ea9bu64;
        let mut rnd = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut t = Timers::new();
        let mut model: BTreeMap<TimerKey, Instant> = BTreeMap::new();
        let mut now = 0u64;
        for step in 0..50_000 {
            let key = match rnd(4) {
                0 => TimerKey::Lead(rnd(8)),
                1 => TimerKey::Group(rnd(8) as u32),
                2 => TimerKey::Opening(rnd(8) as u32),
                _ => TimerKey::Request(rnd(8)),
            };
            match rnd(10) {
                0..=5 => {
                    let at = ms(t0, now + rnd(200));
                    t.set(key, at);
                    model.insert(key, at);
                }
                6 => {
                    t.cancel(&key);
                    model.remove(&key);
                }
                _ => {
                    now += rnd(60);
                    let mut want: Vec<(Instant, TimerKey)> = model
                        .iter()
                        .filter(|(_, &at)| at <= ms(t0, now))
                        .map(|(&k, &at)| (at, k))
                        .collect();
                    want.sort();
                    for (_, k) in &want {
                        model.remove(k);
                    }
                    let want: Vec<TimerKey> = want.into_iter().map(|(_, k)| k).collect();
                    assert_eq!(t.pop_due(ms(t0, now)), want, "step {step}");
                }
            }
            assert_eq!(t.next(), model.values().min().copied(), "step {step}");
            assert_eq!(t.len(), model.len(), "step {step}");
        }
    }
}
