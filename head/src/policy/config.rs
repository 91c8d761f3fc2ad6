//! The policy's settings: the device's power model, the battery thresholds, the latency
//! target and bound, hysteresis, dwell and probing. Every default says why it is so.

use std::time::Duration;

/// How much power the device draws in each activity, in watts, for predicting the
/// energy of a frame: `compute_w x compute time + radio_w x transmit time +
/// radio_j_per_byte x bytes + wait_w x time waiting for the answer`.
///
/// The defaults describe a small ARM board or a phone on Wi-Fi (Raspberry Pi 4 class:
/// about 6 W with all cores busy, Wi-Fi transmit adding about 1.2 W, about 2.5 W idle
/// with the radio associated). They are a starting point: pass measured figures with
/// `--power-model`, and the policy refines `compute_w` from a power source's readings
/// taken while the device computes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PowerModel {
    /// Whole-device power while the model runs on the CPU/GPU.
    pub compute_w: f64,
    /// Whole-device power while the radio transmits.
    pub radio_w: f64,
    /// Extra energy per byte sent (joules), for radios priced per byte (cellular
    /// tail energy aside); 0 for Wi-Fi, whose cost is in `radio_w` x time.
    pub radio_j_per_byte: f64,
    /// Whole-device power while waiting for the edge's answer (radio listening).
    pub wait_w: f64,
}

impl Default for PowerModel {
    fn default() -> Self {
        Self {
            compute_w: 6.0,
            radio_w: 3.7,
            radio_j_per_byte: 0.0,
            wait_w: 2.5,
        }
    }
}

impl PowerModel {
    /// Parses `compute=W,radio=W,wait=W,per_byte=J` (any subset, over the defaults).
    pub fn parse(spec: &str) -> Result<Self, ParsePowerModelError> {
        let mut m = Self::default();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| ParsePowerModelError(format!("`{part}` is not key=value")))?;
            let v: f64 = value
                .trim()
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| {
                    ParsePowerModelError(format!("`{value}` for {key} is not a number >= 0"))
                })?;
            match key.trim() {
                "compute" => m.compute_w = v,
                "radio" => m.radio_w = v,
                "wait" => m.wait_w = v,
                "per_byte" => m.radio_j_per_byte = v,
                other => {
                    return Err(ParsePowerModelError(format!(
                        "unknown key `{other}` (use compute, radio, wait, per_byte)"
                    )))
                }
            }
        }
        Ok(m)
    }

    /// Energy in joules of a frame that computes for `compute`, transmits `bytes` for
    /// `transmit`, and waits `wait` for the answer.
    pub fn energy_j(
        &self,
        compute: Duration,
        transmit: Duration,
        bytes: f64,
        wait: Duration,
    ) -> f64 {
        self.compute_w * compute.as_secs_f64()
            + self.radio_w * transmit.as_secs_f64()
            + self.radio_j_per_byte * bytes
            + self.wait_w * wait.as_secs_f64()
    }
}

/// A power model spec that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("power model: {0}; expected e.g. compute=6,radio=3.7,wait=2.5,per_byte=0")]
pub struct ParsePowerModelError(String);

/// Battery levels at which the objective changes, in percent of capacity.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatteryThresholds {
    /// Below this the battery is low: energy first. Default 40%.
    pub low_pct: f64,
    /// Below this it is critical: least energy within the latency bound. Default 15%.
    pub critical_pct: f64,
    /// A level is left upwards only this far above its threshold (a charger plugged
    /// and unplugged, or a noisy gauge, must not flip the objective). Default 3 points.
    pub margin_pct: f64,
}

impl Default for BatteryThresholds {
    fn default() -> Self {
        Self {
            low_pct: 40.0,
            critical_pct: 15.0,
            margin_pct: 3.0,
        }
    }
}

/// Everything the policy is told up front.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyConfig {
    /// The device's power model.
    pub power: PowerModel,
    /// Battery thresholds.
    pub battery: BatteryThresholds,
    /// The user's latency target: with a low battery, the least-energy mode among those
    /// predicted to meet it. None: energy alone.
    pub latency_target: Option<Duration>,
    /// The hard bound on a frame's latency with a critical battery (default 1 s, the
    /// device's default frame budget: past it the result is useless anyway).
    pub latency_bound: Duration,
    /// A better mode replaces the current one only when it improves the objective by
    /// at least this fraction (default 0.15: estimates move by several percent from
    /// frame to frame, and a switch costs a reconfiguration).
    pub hysteresis: f64,
    /// Frames a mode is kept after a switch before the objective may change it again
    /// (default 10). Advice from the edge and a lost connection do not wait.
    pub min_dwell_frames: u64,
    /// Every this many frames a probe (two frames: the first runs cold) runs in the
    /// mode measured least recently, so its estimate stays fresh (default 80, i.e.
    /// 2.5% of frames, every 2.7 s at 30 frames/s; 0 turns probing off). A probe of a
    /// slower mode costs a slow frame and a cold one, so probing more often than the
    /// world changes spends more than it learns.
    pub probe_every: u64,
    /// Weight of a new sample in the moving averages (default 0.3: about three frames
    /// to follow a change, while one outlier moves the estimate by a third).
    pub ewma_alpha: f64,
    /// Weight of a sample from a mode not run for more than the dwell (a probe, a
    /// return to a mode): its old average describes an older world (default 0.6).
    pub probe_alpha: f64,
    /// How much faster the edge runs a stage than this device, for predicting the
    /// edge's compute before it has been measured (default 4).
    pub edge_speedup: f64,
    /// Frames a remote mode is left alone after a frame in it fell back (default 20).
    pub fallback_backoff_frames: u64,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            power: PowerModel::default(),
            battery: BatteryThresholds::default(),
            latency_target: None,
            latency_bound: Duration::from_secs(1),
            hysteresis: 0.15,
            min_dwell_frames: 10,
            probe_every: 80,
            ewma_alpha: 0.3,
            probe_alpha: 0.6,
            edge_speedup: 4.0,
            fallback_backoff_frames: 20,
        }
    }
}
