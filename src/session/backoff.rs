//! Capped exponential backoff with jitter, for the publisher's and the
//! follower's retries.

use std::time::Duration;

/// Capped exponential backoff with jitter (100 ms doubling to 5 s; each
/// wait drawn between half and all of the current step).
pub struct Backoff {
    step: Duration,
    seed: u64,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const CAP: Duration = Duration::from_secs(5);

    pub fn new(seed: u64) -> Backoff {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Backoff {
            step: Backoff::FIRST,
            seed: (seed ^ t) | 1,
        }
    }

    /// A backoff whose randomness is `seed` alone (not mixed with the
    /// time), for tests of its users.
    #[cfg(test)]
    pub fn with_seed(seed: u64) -> Backoff {
        Backoff {
            step: Backoff::FIRST,
            seed: seed | 1,
        }
    }

    pub fn reset(&mut self) {
        self.step = Backoff::FIRST;
    }

    pub fn next(&mut self) -> Duration {
        // xorshift64
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let half = self.step / 2;
        let jitter = Duration::from_nanos(self.seed % (half.as_nanos() as u64 + 1));
        let wait = half + jitter;
        self.step = (self.step * 2).min(Backoff::CAP);
        wait
    }
}

#[cfg(test)]
mod tests {
    //! Synthetic runs: seeded generators, no clock, no sleeping.
    use super::Backoff;
    use std::time::Duration;

    /// A backoff whose randomness is `seed` alone (not mixed with the time).
    fn seeded(seed: u64) -> Backoff {
        Backoff {
            step: Backoff::FIRST,
            seed: seed | 1,
        }
    }

    /// The k-th step (k from 0): 100 ms doubling, capped at 5 s.
    fn step(k: u32) -> Duration {
        Duration::from_millis(100u64.saturating_mul(1 << k.min(20))).min(Duration::from_secs(5))
    }

    #[test]
    fn steps_double_from_100_ms_to_the_5_s_cap() {
        let mut b = seeded(7);
        let mut steps = Vec::new();
        for _ in 0..12 {
            steps.push(b.step);
            b.next();
        }
        let ms: Vec<u128> = steps.iter().map(|s| s.as_millis()).collect();
        assert_eq!(
            ms,
            [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000, 5000, 5000]
        );
    }

    #[test]
    fn every_wait_is_between_half_and_all_of_its_step() {
        for seed in 0..2000u64 {
            let mut b = seeded(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            for k in 0..10 {
                let wait = b.next();
                let s = step(k);
                assert!(
                    wait >= s / 2 && wait <= s,
                    "seed {seed}, wait {}: {wait:?} not within {:?}..={s:?}",
                    k + 1,
                    s / 2
                );
            }
        }
    }

    #[test]
    fn waits_spread_over_the_whole_range() {
        // Jitter keeps recovering followers apart: over many seeds the
        // first wait (step 100 ms) takes values near both ends of 50..=100 ms.
        let firsts: Vec<Duration> = (1..=500u64)
            .map(|seed| seeded(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)).next())
            .collect();
        let min = *firsts.iter().min().unwrap();
        let max = *firsts.iter().max().unwrap();
        assert!(
            min < Duration::from_millis(55),
            "shortest first wait {min:?}"
        );
        assert!(
            max > Duration::from_millis(95),
            "longest first wait {max:?}"
        );
    }

    #[test]
    fn one_backoffs_waits_keep_varying() {
        // Jitter within one follower too: its waits at one step are not
        // a constant (a generator stuck at zero or at all ones would make
        // them one).
        let mut b = seeded(0x9E37_79B9_7F4A_7C15);
        let waits: std::collections::BTreeSet<Duration> = (0..200)
            .map(|_| {
                b.reset();
                b.next()
            })
            .collect();
        assert!(waits.len() > 150, "{} distinct waits of 200", waits.len());
    }

    #[test]
    fn reset_starts_again_at_100_ms() {
        let mut b = seeded(11);
        for _ in 0..8 {
            b.next();
        }
        assert!(b.next() >= Duration::from_millis(2500));
        b.reset();
        let wait = b.next();
        assert!(
            wait >= Duration::from_millis(50) && wait <= Duration::from_millis(100),
            "first wait after reset {wait:?}"
        );
    }

    #[test]
    fn new_backoffs_start_at_100_ms() {
        for seed in 0..100 {
            let wait = Backoff::new(seed).next();
            assert!(
                wait >= Duration::from_millis(50) && wait <= Duration::from_millis(100),
                "first wait {wait:?}"
            );
        }
    }
}
