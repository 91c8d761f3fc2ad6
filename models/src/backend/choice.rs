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
