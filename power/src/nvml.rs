//! NVIDIA GPUs through NVML (the NVIDIA Management Library): board power for
//! [`NvmlSource`], and power limits or locked clocks for [`NvmlCap`].
//!
//! `nvml-wrapper` loads `libnvidia-ml.so.1` when a source opens, so this builds on
//! machines without the driver; there, opening fails with a message saying so.
//!
//! Power: on Volta and later GPUs the total energy counter gives the average since the
//! previous sample (like RAPL); older GPUs report only the instantaneous board power.
//!
//! Caps (POLCA applies them to inference GPUs): a power limit (`nvidia-smi -pl`,
//! Kepler and later) or locked graphics clocks (`nvidia-smi -lgc`, Volta and later).
//! Both need root. The setting found at the first cap is put back by
//! [`PowerCap::restore`] and when the [`NvmlCap`] is dropped.

use std::time::{Duration, Instant};

use nvml_wrapper::enum_wrappers::device::Clock;
use nvml_wrapper::enums::device::GpuLockedClocksSetting;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;

use crate::cap::{CapError, PowerCap};
use crate::{PowerError, PowerSample, PowerSource};

fn init() -> Result<Nvml, PowerError> {
    Nvml::init().map_err(|e| PowerError::Nvml {
        message: match e {
            NvmlError::LibloadingError(_) | NvmlError::LibraryNotFound => {
                "cannot load libnvidia-ml.so.1: is the NVIDIA driver installed? \
                 (use another --power-source on machines without an NVIDIA GPU)"
                    .into()
            }
            NvmlError::DriverNotLoaded => {
                "the NVIDIA kernel driver is not loaded (check nvidia-smi)".into()
            }
            NvmlError::NoPermission => "no permission to use the GPU (check /dev/nvidia*)".into(),
            other => format!("cannot initialise NVML: {other}"),
        },
    })
}

fn nvml_err(what: &str, e: NvmlError) -> PowerError {
    PowerError::Nvml {
        message: format!("{what}: {e}"),
    }
}

/// Reads one GPU's power.
pub struct NvmlSource {
    nvml: Nvml,
    index: u32,
    name: String,
    /// The previous energy reading (mJ) and its time; `None` where the GPU has no
    /// energy counter.
    last_energy: Option<(u64, Duration)>,
    has_energy: bool,
    start: Instant,
}

impl std::fmt::Debug for NvmlSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlSource")
            .field("index", &self.index)
            .field("name", &self.name)
            .finish()
    }
}

impl NvmlSource {
    /// Opens GPU `index` (as `nvidia-smi` numbers them).
    pub fn open(index: u32) -> Result<Self, PowerError> {
        let nvml = init()?;
        let (name, energy) = {
            let dev = nvml
                .device_by_index(index)
                .map_err(|e| nvml_err(&format!("GPU {index}"), e))?;
            let name = dev.name().unwrap_or_else(|_| format!("GPU {index}"));
            (name, dev.total_energy_consumption().ok())
        };
        Ok(Self {
            nvml,
            index,
            name,
            last_energy: energy.map(|e| (e, Duration::ZERO)),
            has_energy: energy.is_some(),
            start: Instant::now(),
        })
    }
}

impl PowerSource for NvmlSource {
    fn sample(&mut self) -> Result<PowerSample, PowerError> {
        let now = crate::since(self.start);
        let dev = self
            .nvml
            .device_by_index(self.index)
            .map_err(|e| nvml_err(&format!("GPU {}", self.index), e))?;
        let watts = if self.has_energy {
            let e = dev
                .total_energy_consumption()
                .map_err(|e| nvml_err("energy counter", e))?;
            let w = match self.last_energy {
                Some((prev, t)) if e >= prev && now > t => {
                    Some((e - prev) as f64 * 1e-3 / (now - t).as_secs_f64())
                }
                _ => None,
            };
            self.last_energy = Some((e, now));
            w
        } else {
            let mw = dev.power_usage().map_err(|e| nvml_err("power usage", e))?;
            Some(f64::from(mw) * 1e-3)
        };
        Ok(PowerSample {
            watts,
            battery: None,
            at: now,
        })
    }

    fn describe(&self) -> String {
        format!("NVML GPU {} ({})", self.index, self.name)
    }
}

/// How [`NvmlCap`] caps a GPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CapMethod {
    /// Lower the board power limit to the fraction of its default (clamped to what
    /// the board allows). Default: every datacenter GPU since Kepler has one, and the
    /// GPU picks its own clocks under it.
    #[default]
    PowerLimit,
    /// Lock the graphics clock at most at the fraction of its maximum (as POLCA
    /// does); Volta and later.
    LockedClocks,
}

/// What was found before the first cap, to put back.
#[derive(Clone, Copy, Debug)]
enum Saved {
    PowerLimit(u32),
    Clocks,
}

/// Caps one GPU through NVML. See the module documentation.
pub struct NvmlCap {
    nvml: Nvml,
    index: u32,
    method: CapMethod,
    saved: Option<Saved>,
}

impl std::fmt::Debug for NvmlCap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlCap")
            .field("index", &self.index)
            .field("method", &self.method)
            .field("applied", &self.saved.is_some())
            .finish()
    }
}

const ROOT_HINT: &str = "run splitstream-edge as root (or with CAP_SYS_ADMIN), or set [power] \
                         gpu_cap = \"off\"; the governor's software caps work without it";

fn cap_err(what: &str, device: String, e: NvmlError) -> CapError {
    match e {
        NvmlError::NoPermission => CapError::Permission {
            what: what.into(),
            hint: ROOT_HINT.into(),
        },
        NvmlError::NotSupported => CapError::NotSupported {
            what: what.into(),
            device,
        },
        other => CapError::Driver(format!("{what} on {device}: {other}")),
    }
}

impl NvmlCap {
    /// Opens GPU `index` for capping by `method`. Nothing is changed until
    /// [`PowerCap::apply`].
    pub fn open(index: u32, method: CapMethod) -> Result<Self, PowerError> {
        let nvml = init()?;
        nvml.device_by_index(index)
            .map_err(|e| nvml_err(&format!("GPU {index}"), e))?;
        Ok(Self {
            nvml,
            index,
            method,
            saved: None,
        })
    }

    fn device_name(&self) -> String {
        format!("GPU {}", self.index)
    }
}

impl PowerCap for NvmlCap {
    fn apply(&mut self, fraction: f64) -> Result<String, CapError> {
        let fraction = if fraction.is_finite() {
            fraction.clamp(0.05, 1.0)
        } else {
            1.0
        };
        let name = self.device_name();
        let mut dev = self
            .nvml
            .device_by_index(self.index)
            .map_err(|e| cap_err("opening the GPU", name.clone(), e))?;
        match self.method {
            CapMethod::PowerLimit => {
                let what = "setting the power limit";
                let current = dev
                    .power_management_limit()
                    .map_err(|e| cap_err(what, name.clone(), e))?;
                let default = dev.power_management_limit_default().unwrap_or(current);
                let c = dev
                    .power_management_limit_constraints()
                    .map_err(|e| cap_err(what, name.clone(), e))?;
                let target =
                    ((f64::from(default) * fraction) as u32).clamp(c.min_limit, c.max_limit);
                dev.set_power_management_limit(target)
                    .map_err(|e| cap_err(what, name.clone(), e))?;
                let original = match self.saved {
                    Some(Saved::PowerLimit(w)) => w,
                    _ => current,
                };
                self.saved = Some(Saved::PowerLimit(original));
                Ok(format!(
                    "{name} power limit {:.0} W (was {:.0} W)",
                    f64::from(target) / 1000.0,
                    f64::from(original) / 1000.0
                ))
            }
            CapMethod::LockedClocks => {
                let what = "locking the graphics clock";
                let max = dev
                    .max_clock_info(Clock::Graphics)
                    .map_err(|e| cap_err(what, name.clone(), e))?;
                // The lowest clock the GPU supports at its highest memory clock, as
                // the lower bound: the GPU may still idle down.
                let min = dev
                    .supported_memory_clocks()
                    .ok()
                    .and_then(|m| m.into_iter().max())
                    .and_then(|mem| dev.supported_graphics_clocks(mem).ok())
                    .and_then(|g| g.into_iter().min())
                    .unwrap_or(0);
                let top = ((f64::from(max) * fraction) as u32).max(min);
                dev.set_gpu_locked_clocks(GpuLockedClocksSetting::Numeric {
                    min_clock_mhz: min,
                    max_clock_mhz: top,
                })
                .map_err(|e| cap_err(what, name.clone(), e))?;
                self.saved = Some(Saved::Clocks);
                Ok(format!(
                    "{name} graphics clock locked to {min}-{top} MHz (max {max} MHz)"
                ))
            }
        }
    }

    fn restore(&mut self) -> Result<(), CapError> {
        let Some(saved) = self.saved else {
            return Ok(());
        };
        let name = self.device_name();
        let mut dev = self
            .nvml
            .device_by_index(self.index)
            .map_err(|e| cap_err("opening the GPU", name.clone(), e))?;
        match saved {
            Saved::PowerLimit(mw) => dev
                .set_power_management_limit(mw)
                .map_err(|e| cap_err("restoring the power limit", name, e))?,
            Saved::Clocks => dev
                .reset_gpu_locked_clocks()
                .map_err(|e| cap_err("unlocking the graphics clock", name, e))?,
        }
        self.saved = None;
        Ok(())
    }

    fn describe(&self) -> String {
        let how = match self.method {
            CapMethod::PowerLimit => "power limit",
            CapMethod::LockedClocks => "locked clocks",
        };
        format!("NVML GPU {} ({how})", self.index)
    }
}

impl Drop for NvmlCap {
    fn drop(&mut self) {
        if let Err(e) = self.restore() {
            tracing::warn!("could not restore {}: {e}", self.describe());
        }
    }
}
