//! Power telemetry for splitstream's device and edge: how many watts this machine
//! draws now, and how its battery stands.
//!
//! One trait, [`PowerSource`], with a reader per place Linux (and NVIDIA) report power:
//!
//! | spec | reader | what it reads |
//! | --- | --- | --- |
//! | `rapl` | [`rapl::RaplSource`] | Intel/AMD RAPL energy counters under `/sys/class/powercap` |
//! | `battery[:BAT0]` | [`battery::BatterySource`] | a laptop/phone battery under `/sys/class/power_supply` |
//! | `ina3221[:PATH]` | [`ina3221::Ina3221Source`] | the INA3221 rail monitors of NVIDIA Jetson boards (hwmon) |
//! | `nvml[:INDEX]` | `nvml::NvmlSource` (feature `nvml`) | an NVIDIA GPU's board power through NVML |
//! | `trace:FILE` | [`trace::TraceSource`] | a CSV trace replayed against a clock (tests, benchmarks, demos) |
//! | `const:W` | [`constant::ConstantSource`] | a fixed figure |
//!
//! [`open`] turns a spec string into a boxed source for command lines. Every sysfs
//! reader takes its root folder as an argument, so tests run on fake trees; every read
//! is capped and every value checked, so an odd file is an error, never a panic.
//!
//! [`record`] writes and reads run records: stage markers joined with a power trace,
//! memory, temperatures and CPU frequency over time (`--record FILE` on every
//! long-running command; `splitstream report` draws them).
//!
//! Watts are an average since the previous sample where the hardware counts energy
//! (RAPL, NVML on Volta and later), else the instantaneous figure the hardware reports.
//! Each sample carries its own time ([`PowerSample::at`]): time since the source was
//! opened for live readers, trace time for replays, so consumers never mix clocks.
#![warn(missing_docs, unreachable_pub)]
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

pub mod battery;
pub mod cap;
pub mod constant;
pub mod ina3221;
#[cfg(feature = "nvml")]
pub mod nvml;
pub mod rapl;
pub mod record;
mod spec;
mod sysfs;
pub mod trace;

pub use cap::{CapError, PowerCap};
pub use spec::{open, SourceSpec};

/// Whether a battery is charging, as `power_supply` says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BatteryStatus {
    /// On external power and charging.
    Charging,
    /// Running on the battery.
    Discharging,
    /// Full, on external power.
    Full,
    /// On external power but not charging (charge thresholds, thermal limits).
    NotCharging,
    /// The driver does not say.
    Unknown,
}

impl BatteryStatus {
    /// Parses the kernel's words (`Charging`, `Discharging`, `Full`, `Not charging`,
    /// `Unknown`) and the trace format's snake_case ones (`not_charging`); case does
    /// not matter. `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        let norm: String = s
            .trim()
            .chars()
            .map(|c| match c {
                ' ' | '-' => '_',
                c => c.to_ascii_lowercase(),
            })
            .collect();
        Some(match norm.as_str() {
            "charging" => Self::Charging,
            "discharging" => Self::Discharging,
            "full" => Self::Full,
            "not_charging" => Self::NotCharging,
            "unknown" => Self::Unknown,
            _ => return None,
        })
    }

    /// The snake_case name (`not_charging`), as traces and JSON lines write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Charging => "charging",
            Self::Discharging => "discharging",
            Self::Full => "full",
            Self::NotCharging => "not_charging",
            Self::Unknown => "unknown",
        }
    }

    /// Whether the machine is running on its battery (what an energy-saving policy
    /// cares about): only `Discharging`.
    pub fn on_battery(self) -> bool {
        self == Self::Discharging
    }
}

impl std::fmt::Display for BatteryStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a battery stands.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatteryState {
    /// Charge left, 0..=100 percent.
    pub capacity_pct: f64,
    /// Charging or not.
    pub status: BatteryStatus,
    /// Energy left in watt-hours, when the driver (or the trace) says.
    pub energy_wh: Option<f64>,
}

/// One reading of a [`PowerSource`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PowerSample {
    /// Power drawn, in watts: the average since the previous sample where the source
    /// counts energy, else the instantaneous figure. `None` when the source has no
    /// figure yet (an energy counter's first sample) or none at all (a battery whose
    /// driver reports only its charge).
    pub watts: Option<f64>,
    /// The battery, for sources that know one.
    pub battery: Option<BatteryState>,
    /// When the sample was taken on the source's own clock: time since the source was
    /// opened for live readers, trace time for replays.
    pub at: Duration,
}

/// A place power readings come from. Not `Sync`: one task samples it.
pub trait PowerSource: Send {
    /// Takes a reading.
    fn sample(&mut self) -> Result<PowerSample, PowerError>;
    /// What it reads, in words, for logs (`RAPL package-0 + dram (/sys/class/powercap)`).
    fn describe(&self) -> String;
}

impl std::fmt::Debug for dyn PowerSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PowerSource({})", self.describe())
    }
}

impl<S: PowerSource + ?Sized> PowerSource for Box<S> {
    fn sample(&mut self) -> Result<PowerSample, PowerError> {
        (**self).sample()
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

/// Why a power source could not be opened or read. Every message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum PowerError {
    /// A file exists but this user may not read it.
    #[error("permission denied reading {}: {hint}", path.display())]
    Permission {
        /// The file.
        path: PathBuf,
        /// Why, and how to grant access.
        hint: String,
    },
    /// A file could not be read for another reason.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file's contents were not what the kernel (or the trace format) writes there.
    #[error("{}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// Nothing of this kind was found where it was looked for.
    #[error("{what}: {hint}")]
    NotFound {
        /// What was looked for, and where.
        what: String,
        /// What to do.
        hint: String,
    },
    /// A spec string (`--power-source`) could not be understood.
    #[error("power source spec {spec:?}: {message} (use rapl, battery[:NAME], ina3221[:PATH], nvml[:INDEX], trace:FILE or const:WATTS)")]
    Spec {
        /// The spec as given.
        spec: String,
        /// What was wrong.
        message: String,
    },
    /// A trace replayed to its end and was told to stop there.
    #[error("the power trace {} has ended (at {end:?})", path.display())]
    TraceEnded {
        /// The trace file.
        path: PathBuf,
        /// Its last timestamp.
        end: Duration,
    },
    /// The NVIDIA Management Library failed.
    #[error("NVML: {message}")]
    Nvml {
        /// What failed, and what to do.
        message: String,
    },
    /// The reader exists only with a cargo feature this build lacks.
    #[error("{what} needs splitstream built with the cargo feature `{feature}`")]
    FeatureDisabled {
        /// The reader.
        what: String,
        /// The feature.
        feature: String,
    },
}

/// Seconds since `start` on the monotonic clock: the `at` of live readers.
fn since(start: std::time::Instant) -> Duration {
    start.elapsed()
}
