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
