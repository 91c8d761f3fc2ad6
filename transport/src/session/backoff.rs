//! Reconnect delays: exponential with "equal jitter".

use std::time::Duration;

/// Exponential backoff with equal jitter: attempt `n` waits a random time in
/// `[d/2, d]` where `d = min(max, initial * 2^n)`. The random half spreads a fleet of
/// devices that lost the same edge; the fixed half keeps any one device from retrying
/// in a tight loop. The caller supplies the randomness, so tests are deterministic.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff starting at `initial`, capped at `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// Failed attempts since the last success.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The delay before the next attempt, given a random number; counts an attempt.
    pub fn next_delay(&mut self, random: u64) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(30)).unwrap_or(u32::MAX);
        let cap = self.initial.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = cap / 2;
        let span = u64::try_from((cap - half).as_micros()).unwrap_or(u64::MAX);
        half + Duration::from_micros(random % span.saturating_add(1))
    }

    /// Back to the first delay, after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn delays_double_up_to_the_cap_and_stay_within_the_jitter_band() {
        let mut b = Backoff::new(100 * MS, 1000 * MS);
        let caps: [u32; 6] = [100, 200, 400, 800, 1000, 1000];
        for (i, &cap) in caps.iter().enumerate() {
            let low = b.clone().next_delay(0);
            let high = b.clone().next_delay(u64::MAX - 1);
            let d = b.next_delay(i as u64 * 7919);
            assert_eq!(low, cap * MS / 2, "attempt {i}");
            assert!(high <= cap * MS && high >= low, "attempt {i}: {high:?}");
            assert!(d >= low && d <= cap * MS, "attempt {i}: {d:?}");
        }
        assert_eq!(b.attempts(), 6);
    }

    #[test]
    fn different_randomness_spreads_devices_apart() {
        let d1 = Backoff::new(100 * MS, 10_000 * MS).next_delay(1_234);
        let d2 = Backoff::new(100 * MS, 10_000 * MS).next_delay(41_234);
        assert_ne!(d1, d2);
    }

    #[test]
    fn reset_starts_over_and_huge_attempt_counts_do_not_overflow() {
        let mut b = Backoff::new(100 * MS, 10_000 * MS);
        for _ in 0..200 {
            assert!(b.next_delay(3) <= 10_000 * MS);
        }
        b.reset();
        assert_eq!(b.next_delay(0), 50 * MS);
    }
}
