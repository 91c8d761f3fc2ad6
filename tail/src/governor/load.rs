//! What the edge measures of its own load for `Status`: the busy fraction of the tail
//! worker and the queueing delay frames see before their tail starts.
//!
//! Both are fed by the worker and read by the session tasks when they push status;
//! the caller passes the time, so tests drive it with a fake clock.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long the busy fraction is averaged over.
const LOAD_WINDOW: Duration = Duration::from_secs(1);
/// A queue delay older than this is stale: nothing has waited since, so it is zero.
const DELAY_STALE: Duration = Duration::from_secs(1);
/// Weight of a new observation in the queue delay average.
const DELAY_ALPHA: f64 = 0.3;

#[derive(Debug)]
struct Inner {
    window_start: Option<Instant>,
    busy: Duration,
    load: f32,
    delay_s: f64,
    delay_at: Option<Instant>,
}

/// The worker's load and the queue delay, shared between tasks.
#[derive(Debug)]
pub struct LoadTracker(Mutex<Inner>);

impl Default for LoadTracker {
    fn default() -> Self {
        Self(Mutex::new(Inner {
            window_start: None,
            busy: Duration::ZERO,
            load: 0.0,
            delay_s: 0.0,
            delay_at: None,
        }))
    }
}

impl LoadTracker {
    /// Nothing measured yet: load 0, no delay.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The data stays consistent even if a holder panicked: take it anyway.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The worker was busy for `busy` (a batch), ending at `now`.
    pub fn busy(&self, busy: Duration, now: Instant) {
        let mut g = self.lock();
        roll(&mut g, now);
        g.busy += busy;
    }

    /// A frame waited `wait` for its tail to start, observed at `now`.
    pub fn waited(&self, wait: Duration, now: Instant) {
        let mut g = self.lock();
        let w = wait.as_secs_f64();
        g.delay_s = match g.delay_at {
            Some(at) if now.saturating_duration_since(at) < DELAY_STALE => {
                g.delay_s + DELAY_ALPHA * (w - g.delay_s)
            }
            _ => w,
        };
        g.delay_at = Some(now);
    }

    /// The busy fraction over the last full window, 0..=1.
    pub fn load(&self, now: Instant) -> f32 {
        let mut g = self.lock();
        roll(&mut g, now);
        g.load
    }

    /// The recent queueing delay (zero when nothing has waited for a while).
    pub fn queue_delay(&self, now: Instant) -> Duration {
        let g = self.lock();
        match g.delay_at {
            Some(at) if now.saturating_duration_since(at) < DELAY_STALE => {
                Duration::try_from_secs_f64(g.delay_s).unwrap_or_default()
            }
            _ => Duration::ZERO,
        }
    }
}

/// Closes the averaging window when it is over (an idle stretch longer than a window
/// closes at load 0).
fn roll(g: &mut Inner, now: Instant) {
    let start = *g.window_start.get_or_insert(now);
    let span = now.saturating_duration_since(start);
    if span >= LOAD_WINDOW {
        let idle_windows = span.as_secs_f64() / LOAD_WINDOW.as_secs_f64() >= 2.0;
        g.load = if idle_windows && g.busy.is_zero() {
            0.0
        } else {
            (g.busy.as_secs_f64() / span.as_secs_f64()).clamp(0.0, 1.0) as f32
        };
        g.busy = Duration::ZERO;
        g.window_start = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn load_is_the_busy_share_of_the_last_window() {
        let t0 = Instant::now();
        let l = LoadTracker::new();
        assert_eq!(l.load(t0), 0.0);
        for i in 0..10 {
            l.busy(ms(30), t0 + ms(100 * i + 50));
        }
        // 300 ms busy in the 1 s window that closed at 1 s.
        assert!((l.load(t0 + ms(1000)) - 0.3).abs() < 1e-3);
        // An idle stretch drops it to zero.
        assert_eq!(l.load(t0 + ms(3500)), 0.0);
    }

    #[test]
    fn queue_delay_averages_recent_waits_and_goes_stale() {
        let t0 = Instant::now();
        let l = LoadTracker::new();
        assert_eq!(l.queue_delay(t0), Duration::ZERO);
        l.waited(ms(10), t0);
        assert_eq!(l.queue_delay(t0), ms(10));
        l.waited(ms(20), t0 + ms(100));
        let d = l.queue_delay(t0 + ms(100)).as_secs_f64();
        assert!((d - 0.013).abs() < 1e-6, "{d}");
        assert_eq!(l.queue_delay(t0 + ms(2000)), Duration::ZERO);
    }
}
