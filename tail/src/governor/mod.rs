//! The edge's power governor, after POLCA (power oversubscription for LLM/inference
//! clusters): measured power against a budget, two thresholds, hysteresis.
//!
//! - Under T1 (`t1` × budget) everything runs as configured.
//! - From T1: low-priority sessions ([`priority`]) are capped: at most
//!   `cap_max_batch` of their frames per batch and `cap_rate_hz` frames per second
//!   each (the excess is answered `Dropped{shed}`); the GPU is capped lightly where
//!   NVML allows.
//! - From T2: devices are advised to compute locally (`Status.advice =
//!   PreferLocal`), new offload work (whole frames, and every frame of low-priority
//!   sessions) is answered `Dropped{shed}`, and the GPU is capped hard.
//! - Release: only after power has stayed `release_margin` × budget below the
//!   threshold for `min_hold`.
//!
//! [`core`] is the deterministic state machine (samples in, transitions out);
//! [`driver`] is the tokio shell that samples a `splitstream_power::PowerSource`,
//! applies GPU caps and publishes a [`PowerState`]; [`config`] is the `[power]`
//! table; [`gate`] what a state means for a frame, a batch and a status message;
//! [`load`] the worker's load and queue delay for status; [`rate`] the token bucket
//! of the rate cap.

pub mod config;
pub mod core;
pub mod driver;
pub mod gate;
pub mod load;
pub mod priority;
pub mod rate;

pub use self::config::{GpuCapChoice, PowerConfig};
pub use self::core::{Action, Governor, GovernorConfig, Level, SessionCap, Transition};
pub use self::driver::{GovernorDriver, GovernorObserver, NoObserver, PowerState};
pub use self::gate::{plan_batch, SessionGate, ShedReason};
pub use self::load::LoadTracker;
pub use self::priority::Priority;

use splitstream_power::trace::{TraceClock, TraceSource};
use splitstream_power::{PowerCap, PowerError, PowerSource, SourceSpec};

/// Opens the configured power source; a `trace:` source replays at `trace_speed`.
pub fn open_source(cfg: &PowerConfig) -> Result<Box<dyn PowerSource>, PowerError> {
    match SourceSpec::parse(&cfg.source)? {
        SourceSpec::Trace(path) => Ok(Box::new(
            TraceSource::open(&path)?.with_clock(TraceClock::accelerated(cfg.trace_speed)),
        )),
        spec => spec.open(),
    }
}

/// Opens the GPU cap the config asks for. `auto` gives `None` (software caps only)
/// when the edge is built without the `nvml` feature or NVML does not answer; an
/// explicit `power_limit` or `clocks` makes those an error.
pub fn open_gpu_cap(cfg: &PowerConfig) -> Result<Option<Box<dyn PowerCap>>, String> {
    #[cfg(feature = "nvml")]
    {
        use splitstream_power::nvml::{CapMethod, NvmlCap};
        let method = match cfg.gpu_cap {
            GpuCapChoice::Off => return Ok(None),
            GpuCapChoice::Auto | GpuCapChoice::PowerLimit => CapMethod::PowerLimit,
            GpuCapChoice::Clocks => CapMethod::LockedClocks,
        };
        match NvmlCap::open(cfg.gpu_index, method) {
            Ok(c) => Ok(Some(Box::new(c))),
            Err(e) if cfg.gpu_cap == GpuCapChoice::Auto => {
                tracing::info!("no GPU cap ({e}); the governor caps sessions only");
                Ok(None)
            }
            Err(e) => Err(format!("[power] gpu_cap: {e}")),
        }
    }
    #[cfg(not(feature = "nvml"))]
    match cfg.gpu_cap {
        GpuCapChoice::Off | GpuCapChoice::Auto => Ok(None),
        GpuCapChoice::PowerLimit | GpuCapChoice::Clocks => Err(
            "[power] gpu_cap needs splitstream-edge built with the cargo feature `nvml` \
             (cargo build -p splitstream-tail --features nvml), or set gpu_cap = \"auto\" or \"off\""
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_trace_is_an_error_naming_the_file() {
        let cfg = PowerConfig::new(100.0, "trace:/nonexistent/edge-power.csv");
        let err = open_source(&cfg).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/edge-power.csv"), "{err}");
    }

    #[cfg(not(feature = "nvml"))]
    #[test]
    fn explicit_gpu_cap_needs_the_nvml_feature_but_auto_does_not() {
        let mut cfg = PowerConfig::new(100.0, "const:1");
        assert!(open_gpu_cap(&cfg).unwrap().is_none());
        cfg.gpu_cap = GpuCapChoice::Clocks;
        let err = open_gpu_cap(&cfg).expect_err("an error");
        assert!(err.contains("feature `nvml`"), "{err}");
    }
}
