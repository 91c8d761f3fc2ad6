//! A token bucket: the frame-rate cap on low-priority sessions, fed the time by its
//! caller.

use std::time::Instant;

/// Allows `rate_hz` events per second on average, with bursts of up to `burst`.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate_hz: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    /// A full bucket. A rate that is not positive and finite allows nothing; `burst`
    /// is raised to at least 1.
    pub fn new(rate_hz: f64, burst: f64) -> Self {
        let rate_hz = if rate_hz.is_finite() && rate_hz > 0.0 {
            rate_hz
        } else {
            0.0
        };
        let burst = if burst.is_finite() {
            burst.max(1.0)
        } else {
            1.0
        };
        Self {
            rate_hz,
            burst,
            tokens: burst,
            last: None,
        }
    }

    /// The rate it allows.
    pub fn rate_hz(&self) -> f64 {
        self.rate_hz
    }

    /// Whether one event may happen at `now` (and counts it if so). Time going
    /// backwards adds nothing.
    pub fn allow(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.rate_hz).min(self.burst);
        }
        self.last = Some(self.last.map_or(now, |l| l.max(now)));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn allows_the_rate_after_the_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(5.0, 1.0);
        // 30 frames over 3 s at 10 fps: 1 (burst) + 5/s x 3 s, within one frame.
        let allowed = (0..30)
            .filter(|i| b.allow(t0 + Duration::from_millis(100 * i)))
            .count();
        assert!((15..=16).contains(&allowed), "{allowed}");
    }

    #[test]
    fn zero_rate_allows_only_the_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(0.0, 1.0);
        assert!(b.allow(t0));
        assert!(!b.allow(t0 + Duration::from_secs(100)));
    }
}
