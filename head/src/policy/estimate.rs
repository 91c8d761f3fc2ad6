//! Moving averages and what the policy has measured: per mode (device compute, bytes,
//! the edge's service time) and for the link (bandwidth, round trip).

use std::time::Duration;

/// An exponentially weighted moving average; empty until the first sample.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Ewma {
    value: Option<f64>,
}

impl Ewma {
    /// Adds a sample with weight `alpha` (non-finite samples are ignored).
    pub fn add(&mut self, sample: f64, alpha: f64) {
        if !sample.is_finite() {
            return;
        }
        self.value = Some(match self.value {
            None => sample,
            Some(v) => v + alpha * (sample - v),
        });
    }

    /// The average, if any sample arrived.
    pub fn get(&self) -> Option<f64> {
        self.value
    }
}

/// What the policy knows of one mode.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ModeEstimate {
    /// Device compute before sending (the whole model when local), seconds.
    pub(crate) head_s: Ewma,
    /// Bytes sent per frame.
    pub(crate) bytes: Ewma,
    /// The edge's part of the round trip (queueing excluded, compute and the answer's
    /// return included), seconds; learnt when the upload time is known.
    pub(crate) edge_s: Ewma,
    /// Measured round trip (send to answer), seconds: the prediction while the link's
    /// bandwidth is unknown (every payload so far too small to time it).
    pub(crate) round_trip_s: Ewma,
    /// The frame index of the last warm frame in this mode (see
    /// [`Policy::observe_frame`]); None until one ran.
    ///
    /// [`Policy::observe_frame`]: super::Policy::observe_frame
    pub(crate) warm_at: Option<u64>,
    /// Remote modes: left alone until this frame after a fallback.
    pub(crate) blocked_until: u64,
}

impl ModeEstimate {
    /// Whether this mode's payloads are large enough to time the link.
    pub(crate) fn times_link(&self) -> bool {
        self.bytes
            .get()
            .is_some_and(|b| b >= MIN_BYTES_FOR_BANDWIDTH)
    }
}

/// What the policy knows of the link.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LinkEstimate {
    /// Uplink seconds per bit (the inverse of bandwidth): upload time is linear in it,
    /// so its average predicts upload time without bias, and a drop in bandwidth moves
    /// it at once while a recovery takes a few frames (caution first).
    pub(crate) s_per_bit: Ewma,
    /// The frame index of the last bandwidth sample.
    pub(crate) sampled_at: Option<u64>,
    /// Whether the last sample was more than twice (+1) or less than half (-1) the
    /// estimate: the link may have changed, and a second such sample says it has.
    pub(crate) surprise: i8,
    /// Round trip, seconds (the transport's smoothed RTT when it gives one).
    pub(crate) rtt_s: Option<f64>,
}

impl LinkEstimate {
    /// Adds a sample of seconds per bit with weight `alpha`; two samples in a row beyond
    /// a factor of two from the estimate, the same way, replace it: the link changed
    /// (a Wi-Fi rate step, a handover), and a moving average would take ten frames to
    /// follow, where the small payloads of a split may time the link only at probes.
    pub(crate) fn add_sample(&mut self, spb: f64, alpha: f64, frame: u64) {
        let dir = match self.s_per_bit.get() {
            Some(est) if spb > 2.0 * est => 1,
            Some(est) if spb < 0.5 * est => -1,
            _ => 0,
        };
        if dir != 0 && dir == self.surprise {
            self.s_per_bit = Ewma::default();
        }
        self.s_per_bit.add(spb, alpha);
        self.surprise = if dir == self.surprise { 0 } else { dir };
        self.sampled_at = Some(frame);
    }
}

/// Frames smaller than this say little about bandwidth (they fit in a packet or two,
/// and their time is round trip and scheduling), so they do not update it.
pub(crate) const MIN_BYTES_FOR_BANDWIDTH: f64 = 2048.0;

/// Seconds of a duration.
pub(crate) fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// A duration of `s` seconds (negative and non-finite values become zero).
pub(crate) fn dur(s: f64) -> Duration {
    if s.is_finite() && s > 0.0 {
        Duration::from_secs_f64(s.min(1e6))
    } else {
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ewma_starts_at_the_first_sample_then_moves_by_alpha() {
        let mut e = Ewma::default();
        assert_eq!(e.get(), None);
        e.add(10.0, 0.5);
        assert_eq!(e.get(), Some(10.0));
        e.add(20.0, 0.5);
        assert_eq!(e.get(), Some(15.0));
        e.add(f64::NAN, 0.5);
        assert_eq!(e.get(), Some(15.0));
    }
}
