//! The edge config's `[power]` table, with defaults and the reasons for them.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use splitstream_power::SourceSpec;

use super::core::{GovernorConfig, SessionCap};

/// How the governor caps the GPU itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GpuCapChoice {
    /// The power limit through NVML when the edge is built with the `nvml` feature
    /// and a GPU answers; otherwise software caps only. Default: capping the GPU is
    /// what POLCA does, and it needs no configuration where it is possible.
    #[default]
    Auto,
    /// The board power limit (`nvidia-smi -pl`); an error at start if NVML is absent.
    PowerLimit,
    /// Locked graphics clocks (`nvidia-smi -lgc`), as POLCA; Volta and later.
    Clocks,
    /// Never touch the GPU.
    Off,
}

/// `[power]`: the POLCA-style power governor. Absent: no governor.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PowerConfig {
    /// Where power is read: `rapl`, `battery[:NAME]`, `ina3221[:PATH]`,
    /// `nvml[:INDEX]`, `trace:FILE` (relative to the config file) or `const:W`.
    /// Default `rapl`: a server edge's CPU packages.
    #[serde(default = "default_source")]
    pub source: String,
    /// The power budget, W. Required.
    pub budget_w: f64,
    /// Cap low-priority sessions above this fraction of the budget. Default 0.85:
    /// room below T2 for the caps to act before shedding is needed.
    #[serde(default = "default_t1")]
    pub t1: f64,
    /// Advise local and shed offload work above this fraction. Default 0.95: below
    /// 1.0 so that one sampling interval of growth does not cross the budget.
    #[serde(default = "default_t2")]
    pub t2: f64,
    /// Release a level only this fraction of the budget below its threshold.
    /// Default 0.05: larger than RAPL/NVML sample noise under steady load (1-3 %).
    #[serde(default = "default_release_margin")]
    pub release_margin: f64,
    /// ... and after power stayed there this long, ms. Default 5000: devices react
    /// to advice within their status interval (0.5 s) and a dwell of seconds; holding
    /// 5 s keeps them from being bounced every few frames.
    #[serde(default = "default_min_hold_ms")]
    pub min_hold_ms: u64,
    /// How often power is sampled, ms. Default 500: RAPL and NVML averages are
    /// steady at this period, and it matches the status interval.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// Device ids whose sessions are low priority (capped above T1). Devices may also
    /// volunteer with the capability extension `priority=low`.
    #[serde(default)]
    pub low_priority: Vec<String>,
    /// Most low-priority frames per batch above T1. Default 2.
    #[serde(default = "default_cap_max_batch")]
    pub cap_max_batch: usize,
    /// Most frames per second of one low-priority session above T1. Default 5: a
    /// sixth of a 30 fps camera.
    #[serde(default = "default_cap_rate_hz")]
    pub cap_rate_hz: f64,
    /// How the GPU itself is capped. Default `auto`.
    #[serde(default)]
    pub gpu_cap: GpuCapChoice,
    /// Which GPU, as nvidia-smi numbers them. Default 0.
    #[serde(default)]
    pub gpu_index: u32,
    /// GPU cap above T1, as a fraction of its default power limit (or maximum
    /// clock). Default 0.8.
    #[serde(default = "default_gpu_fraction_t1")]
    pub gpu_fraction_t1: f64,
    /// GPU cap above T2. Default 0.6.
    #[serde(default = "default_gpu_fraction_t2")]
    pub gpu_fraction_t2: f64,
    /// For `trace:` sources: trace seconds per wall second. Default 1 (real time).
    #[serde(default = "default_trace_speed")]
    pub trace_speed: f64,
}

fn default_source() -> String {
    "rapl".into()
}
fn default_t1() -> f64 {
    0.85
}
fn default_t2() -> f64 {
    0.95
}
fn default_release_margin() -> f64 {
    0.05
}
fn default_min_hold_ms() -> u64 {
    5000
}
fn default_interval_ms() -> u64 {
    500
}
fn default_cap_max_batch() -> usize {
    2
}
fn default_cap_rate_hz() -> f64 {
    5.0
}
fn default_gpu_fraction_t1() -> f64 {
    0.8
}
fn default_gpu_fraction_t2() -> f64 {
    0.6
}
fn default_trace_speed() -> f64 {
    1.0
}

/// Shortest sampling interval accepted: sysfs and NVML reads cost little, but
/// faster than this the energy deltas are mostly noise.
const MIN_INTERVAL_MS: u64 = 50;

impl PowerConfig {
    /// The defaults, with a budget and a source.
    pub fn new(budget_w: f64, source: impl Into<String>) -> Self {
        Self {
            source: source.into(),
            budget_w,
            t1: default_t1(),
            t2: default_t2(),
            release_margin: default_release_margin(),
            min_hold_ms: default_min_hold_ms(),
            interval_ms: default_interval_ms(),
            low_priority: Vec::new(),
            cap_max_batch: default_cap_max_batch(),
            cap_rate_hz: default_cap_rate_hz(),
            gpu_cap: GpuCapChoice::default(),
            gpu_index: 0,
            gpu_fraction_t1: default_gpu_fraction_t1(),
            gpu_fraction_t2: default_gpu_fraction_t2(),
            trace_speed: default_trace_speed(),
        }
    }

    /// The governor core's settings.
    pub fn governor(&self) -> GovernorConfig {
        let gpu = self.gpu_cap != GpuCapChoice::Off;
        GovernorConfig {
            budget_w: self.budget_w,
            t1: self.t1,
            t2: self.t2,
            release_margin: self.release_margin,
            min_hold: Duration::from_millis(self.min_hold_ms),
            low_priority_cap: SessionCap {
                max_batch: self.cap_max_batch,
                max_rate_hz: self.cap_rate_hz,
            },
            gpu_fraction_t1: gpu.then_some(self.gpu_fraction_t1),
            gpu_fraction_t2: gpu.then_some(self.gpu_fraction_t2),
        }
    }

    /// Sampling period.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    /// The parsed source spec.
    pub fn source_spec(&self) -> Result<SourceSpec, String> {
        SourceSpec::parse(&self.source).map_err(|e| e.to_string())
    }

    /// Makes a relative `trace:` path relative to `base` (the config file's folder).
    pub fn resolve_paths(&mut self, base: &Path) {
        if let Ok(SourceSpec::Trace(p)) = SourceSpec::parse(&self.source) {
            if p.is_relative() {
                self.source = format!("trace:{}", base.join(p).display());
            }
        }
    }

    /// Checks the values; the message names the `[power]` key to change.
    pub fn validate(&self) -> Result<(), String> {
        self.governor()
            .validate()
            .map_err(|e| format!("[power] {e}"))?;
        self.source_spec()
            .map_err(|e| format!("[power] source: {e}"))?;
        if self.interval_ms < MIN_INTERVAL_MS || self.interval_ms > 60_000 {
            return Err(format!(
                "[power] interval_ms = {}: use {MIN_INTERVAL_MS}..=60000",
                self.interval_ms
            ));
        }
        if !(self.trace_speed.is_finite() && self.trace_speed > 0.0) {
            return Err(format!(
                "[power] trace_speed = {}: use a positive number (1 = real time)",
                self.trace_speed
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_alone_takes_the_documented_defaults() {
        let c: PowerConfig = toml::from_str("budget_w = 300").unwrap();
        assert_eq!(c, PowerConfig::new(300.0, "rapl"));
        assert_eq!(c.validate(), Ok(()));
        let g = c.governor();
        assert_eq!(
            (g.t1, g.t2, g.min_hold),
            (0.85, 0.95, Duration::from_secs(5))
        );
        assert_eq!(g.gpu_fraction_t1, Some(0.8));
    }

    #[test]
    fn gpu_off_means_no_gpu_fractions() {
        let c: PowerConfig = toml::from_str("budget_w = 300\ngpu_cap = \"off\"").unwrap();
        assert_eq!(c.governor().gpu_fraction_t2, None);
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, want) in [
            ("budget_w = 300\nt1 = 0.99", "[power] t1"),
            ("budget_w = 300\nsource = \"solar\"", "[power] source"),
            ("budget_w = 300\ninterval_ms = 1", "interval_ms"),
            ("budget_w = -1", "budget_w"),
        ] {
            let c: PowerConfig = toml::from_str(text).unwrap();
            let err = c.validate().unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
        assert!(toml::from_str::<PowerConfig>("budget = 300").is_err());
    }

    #[test]
    fn relative_trace_paths_follow_the_config_file() {
        let mut c = PowerConfig::new(100.0, "trace:traces/edge.csv");
        c.resolve_paths(Path::new("/etc/splitstream"));
        assert_eq!(c.source, "trace:/etc/splitstream/traces/edge.csv");
        let mut c = PowerConfig::new(100.0, "rapl");
        c.resolve_paths(Path::new("/etc"));
        assert_eq!(c.source, "rapl");
    }
}
