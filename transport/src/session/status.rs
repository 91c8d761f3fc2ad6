//! When the edge sends `Status` on a session's control stream.

use std::time::{Duration, Instant};

/// Status cadence: one message every `interval`, and sooner (but never closer than
/// `min_gap` to the previous one) when the runtime pushes a change. The first status
/// is due at once so a new device learns the edge's load before its first frame.
#[derive(Clone, Debug)]
pub struct StatusCadence {
    interval: Duration,
    min_gap: Duration,
    start: Instant,
    last_sent: Option<Instant>,
    pending: bool,
}

impl StatusCadence {
    /// A cadence with these periods, starting at `now`.
    pub fn new(interval: Duration, min_gap: Duration, now: Instant) -> Self {
        Self {
            interval,
            min_gap: min_gap.min(interval),
            start: now,
            last_sent: None,
            pending: false,
        }
    }

    /// The runtime has a new status to tell.
    pub fn pushed(&mut self) {
        self.pending = true;
    }

    /// Whether to send a status now; if so, counts it as sent.
    pub fn poll(&mut self, now: Instant) -> bool {
        if now < self.next_due() {
            return false;
        }
        self.last_sent = Some(now);
        self.pending = false;
        true
    }

    /// When the next status is due.
    pub fn next_due(&self) -> Instant {
        match self.last_sent {
            None => self.start,
            Some(t) if self.pending => t + self.min_gap,
            Some(t) => t + self.interval,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn first_status_is_immediate_then_one_per_interval() {
        let t0 = Instant::now();
        let mut c = StatusCadence::new(500 * MS, 50 * MS, t0);
        assert!(c.poll(t0));
        assert!(!c.poll(t0 + 499 * MS));
        assert_eq!(c.next_due(), t0 + 500 * MS);
        assert!(c.poll(t0 + 500 * MS));
        assert!(!c.poll(t0 + 600 * MS));
    }

    #[test]
    fn pushed_changes_go_out_early_but_not_closer_than_the_min_gap() {
        let t0 = Instant::now();
        let mut c = StatusCadence::new(500 * MS, 50 * MS, t0);
        assert!(c.poll(t0));
        c.pushed();
        assert!(!c.poll(t0 + 10 * MS));
        assert!(c.poll(t0 + 50 * MS));
        // The push was consumed: back to the regular interval.
        assert!(!c.poll(t0 + 120 * MS));
        assert_eq!(c.next_due(), t0 + 550 * MS);
    }
}
