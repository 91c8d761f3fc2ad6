//! Releasing frames at a set rate, as a camera would: a deterministic schedule that
//! the sources sleep on.

use std::time::{Duration, Instant};

/// Frame `k` is due at `start + k / fps`. A consumer that falls behind by whole frame
/// periods does not get a burst of frames to catch up: the ticks it missed are
/// skipped (counted in [`Pacer::missed`]), as a camera's frames would be gone by then.
#[derive(Clone, Debug)]
pub struct Pacer {
    period_ns: u128,
    start: Option<Instant>,
    next_tick: u64,
    missed: u64,
}

impl Pacer {
    /// A pacer at `fps` frames per second; `None` unless `fps` is finite, positive
    /// and at most a million.
    pub fn new(fps: f64) -> Option<Self> {
        if !(fps.is_finite() && fps > 0.0 && fps <= 1e6) {
            return None;
        }
        Some(Self {
            period_ns: (1e9 / fps).round() as u128,
            start: None,
            next_tick: 0,
            missed: 0,
        })
    }

    /// When the next frame should be released, asked at `now`: in the future means
    /// wait until then; at or before `now` means release at once. The first call
    /// starts the schedule.
    pub fn next_release(&mut self, now: Instant) -> Instant {
        let start = *self.start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start).as_nanos();
        let current = u64::try_from(elapsed / self.period_ns).unwrap_or(u64::MAX);
        if current > self.next_tick {
            self.missed += current - self.next_tick;
            self.next_tick = current;
        }
        let at = start + nanos(self.period_ns.saturating_mul(u128::from(self.next_tick)));
        self.next_tick = self.next_tick.saturating_add(1);
        at
    }

    /// Waits (blocking the thread) until the next frame is due.
    pub fn wait(&mut self) {
        let now = Instant::now();
        let at = self.next_release(now);
        if at > now {
            std::thread::sleep(at - now);
        }
    }

    /// Ticks skipped because the consumer was late.
    pub fn missed(&self) -> u64 {
        self.missed
    }
}

fn nanos(n: u128) -> Duration {
    Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_released_one_period_apart() {
        let t0 = Instant::now();
        let ms = |m| t0 + Duration::from_millis(m);
        let mut p = Pacer::new(10.0).unwrap();
        assert_eq!(p.next_release(ms(0)), ms(0));
        assert_eq!(p.next_release(ms(10)), ms(100));
        assert_eq!(p.next_release(ms(100)), ms(200));
        assert_eq!(p.missed(), 0);
    }

    #[test]
    fn late_consumer_skips_missed_ticks_instead_of_bursting() {
        let t0 = Instant::now();
        let ms = |m| t0 + Duration::from_millis(m);
        let mut p = Pacer::new(10.0).unwrap();
        p.next_release(ms(0)); // tick 0
        p.next_release(ms(50)); // tick 1, at 100
                                // The consumer stalls until 550 ms: ticks 2, 3 and 4 are gone; tick 5 (500 ms)
                                // is released at once, and the next one waits for 600 ms.
        assert_eq!(p.next_release(ms(550)), ms(500));
        assert_eq!(p.missed(), 3);
        assert_eq!(p.next_release(ms(560)), ms(600));
    }

    #[test]
    fn nonsense_rates_are_refused() {
        for fps in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e9] {
            assert!(Pacer::new(fps).is_none(), "{fps}");
        }
    }
}
