//! [`BackendChoice`]: which backend runs a model, as every binary's `--backend` flag and
//! the edge's config spell it (`auto`, `cpu`, `wgpu`).
//!
//! The choice is defined once here so that flags, config files and reports agree on the
//! names, and so that every path that opens a GPU reads `WGPU_ADAPTER_NAME` and
//! `WGPU_BACKEND` the same way (`BackendChoice::wgpu_options`, with the `wgpu` feature).

use std::fmt;
use std::str::FromStr;

#[cfg(feature = "wgpu")]
use crate::backend::wgpu::{WgpuBackend, WgpuInitError, WgpuOptions};

/// Which backend runs a model.
///
/// With the `clap` feature it is a `clap::ValueEnum`, so a binary takes it with
/// `#[arg(long, value_enum)]` and `--help` lists the values; serde reads and writes the
/// lowercase names (`backend = "wgpu"` in a TOML config).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// A hardware GPU through wgpu when there is one, else the CPU (never a software
    /// Vulkan driver such as lavapipe: slower than the CPU backend). The default: a
    /// config uses the GPU where there is one without becoming machine-specific.
    #[default]
    Auto,
    /// The CPU backend (AVX-512/AVX2 kernels when the CPU has them).
    Cpu,
    /// The wgpu backend on the best adapter, software ones included (WGPU_ADAPTER_NAME
    /// and WGPU_BACKEND choose).
    Wgpu,
}

impl BackendChoice {
    /// Every choice, in the order `--help` lists them.
    pub const ALL: [BackendChoice; 3] = [Self::Auto, Self::Cpu, Self::Wgpu];

    /// The name on the command line and in config files.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Cpu => "cpu",
            Self::Wgpu => "wgpu",
        }
    }

    /// The wgpu options this choice opens an adapter with: the environment's
    /// `WGPU_ADAPTER_NAME` and `WGPU_BACKEND` ([`WgpuOptions::from_env`]), and for
    /// `auto` hardware adapters only.
    #[cfg(feature = "wgpu")]
    pub fn wgpu_options(self) -> WgpuOptions {
        WgpuOptions {
            hardware_only: self == Self::Auto,
            ..WgpuOptions::from_env()
        }
    }

    /// Opens the wgpu backend this choice asks for, honouring `WGPU_ADAPTER_NAME` and
    /// `WGPU_BACKEND`: `Ok(None)` for `cpu`, and for `auto` when no hardware adapter is
    /// found (the caller then runs on the CPU backend); an error for `wgpu` without a
    /// usable adapter, or when an adapter was found but refused to open.
    #[cfg(feature = "wgpu")]
    pub fn open_wgpu(self) -> Result<Option<WgpuBackend>, WgpuInitError> {
        match self {
            Self::Cpu => Ok(None),
            Self::Wgpu => WgpuBackend::new(&self.wgpu_options()).map(Some),
            Self::Auto => WgpuBackend::auto(&self.wgpu_options()),
        }
    }

    /// Opens the backend as [`BackendChoice::open_wgpu`] does, with, for `auto`, one
    /// line saying what it chose, for a command to print: `backend auto: wgpu on
    /// NVIDIA ... (DiscreteGpu, Vulkan, f16 weights)` or `backend auto: cpu (no hardware
    /// GPU; adapters seen: ...)`. `cpu` and `wgpu` were chosen by the user: no line.
    #[cfg(feature = "wgpu")]
    pub fn open_wgpu_reporting(
        self,
    ) -> Result<(Option<WgpuBackend>, Option<String>), WgpuInitError> {
        match self {
            Self::Cpu | Self::Wgpu => self.open_wgpu().map(|gpu| (gpu, None)),
            Self::Auto => match WgpuBackend::new(&self.wgpu_options()) {
                Ok(gpu) => {
                    let line = format!("backend auto: wgpu on {}", gpu.describe());
                    Ok((Some(gpu), Some(line)))
                }
                Err(WgpuInitError::NoAdapter { found, .. }) => Ok((
                    None,
                    Some(format!(
                        "backend auto: cpu (no hardware GPU; adapters seen: {found})"
                    )),
                )),
                Err(e) => Err(e),
            },
        }
    }
}

/// Keeps GPU adapter probing quiet on a machine without a desktop session (servers,
/// containers, CI). wgpu enables every window-system extension the Vulkan loader
/// offers, and Mesa's implicit device-selection layer (`VK_LAYER_MESA_device_select`)
/// then asks the Wayland compositor which GPU drives the screen: without
/// `XDG_RUNTIME_DIR` libwayland prints `error: XDG_RUNTIME_DIR is invalid or not set
/// in the environment.` to stderr, which reads like our failure. Without a session
/// there is no compositor to ask and the layer's choice is unused (adapters are ranked
/// in `backend::wgpu`), so this turns the layer off (`NODEVICE_SELECT=1`, its own
/// switch) unless the user set `NODEVICE_SELECT` or `MESA_VK_DEVICE_SELECT`.
///
/// It sets an environment variable: call it first thing in `main`, before any thread
/// starts. Returns whether it did.
#[cfg(feature = "wgpu")]
pub fn quiet_headless_gpu_probing() -> bool {
    let session = std::env::var_os("XDG_RUNTIME_DIR")
        .is_some_and(|dir| !dir.is_empty() && std::path::Path::new(&dir).is_dir());
    let user_chose = ["NODEVICE_SELECT", "MESA_VK_DEVICE_SELECT"]
        .iter()
        .any(|k| std::env::var_os(k).is_some());
    if session || user_chose {
        return false;
    }
    std::env::set_var("NODEVICE_SELECT", "1");
    true
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not a backend choice.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown backend {0:?}: use auto, cpu or wgpu")]
pub struct UnknownBackend(pub String);

impl FromStr for BackendChoice {
    type Err = UnknownBackend;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| UnknownBackend(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_from_str_and_serde() {
        for c in BackendChoice::ALL {
            assert_eq!(c.name().parse::<BackendChoice>(), Ok(c));
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{}\"", c.name()));
            assert_eq!(serde_json::from_str::<BackendChoice>(&json).unwrap(), c);
        }
        assert!("tpu".parse::<BackendChoice>().is_err());
        assert!(serde_json::from_str::<BackendChoice>("\"GPU\"").is_err());
    }

    #[cfg(feature = "wgpu")]
    #[test]
    fn only_auto_refuses_software_adapters() {
        assert!(BackendChoice::Auto.wgpu_options().hardware_only);
        assert!(!BackendChoice::Wgpu.wgpu_options().hardware_only);
        assert_eq!(BackendChoice::default(), BackendChoice::Auto);
    }
}
