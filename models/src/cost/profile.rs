//! A machine profile: what `splitstream-bench machine` measured (or what a person wrote
//! down from datasheets for a machine we do not have), as TOML.
//!
//! ```toml
//! [machine]
//! name = "Raspberry Pi 4 (Cortex-A72)"
//! cores = 4
//! freq_mhz = 1500.0
//!
//! [[compute]]               # one row per instruction set and thread count
//! isa = "neon"
//! threads = 1
//! gflops = 12.0
//!
//! [[memory]]                # L1, L2, (L3), DRAM, innermost first
//! level = "L1"
//! size_bytes = 32768
//! per_core = true           # private to a core (its capacity adds up over threads)
//! latency_ns = 2.0
//! read_gbs = [24.0, 96.0]   # read bandwidth by thread count 1, 2, ... (the last
//!                           # entry holds for more threads)
//!
//! [backend.cpu]             # how close the backend's kernels come to the peaks
//! isa = "neon"
//! gemm_efficiency = 0.6
//! conv_efficiency = 0.3
//! depthwise_efficiency = 0.05
//! stream_efficiency = 0.5
//! op_overhead_us = 3.0
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Largest profile file read (a profile is a few kilobytes).
pub const MAX_PROFILE_BYTES: u64 = 1 << 20;

/// Why a profile did not load.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The file could not be read.
    #[error("reading profile {path}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is larger than any profile.
    #[error("profile {path} is {bytes} bytes; a profile is at most {MAX_PROFILE_BYTES}")]
    TooLarge {
        /// The file.
        path: String,
        /// Its size.
        bytes: u64,
    },
    /// Not TOML, or not a profile's fields.
    #[error("profile is not valid: {0}")]
    Parse(String),
    /// Well-formed, but its figures cannot describe a machine.
    #[error("profile is inconsistent: {0}")]
    Invalid(String),
}

/// The machine as a whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineInfo {
    /// What it is.
    pub name: String,
    /// Cores the figures span.
    pub cores: usize,
    /// The core clock the figures were taken at, MHz.
    pub freq_mhz: f64,
    /// Where the clock figure came from (cpufreq, /proc/cpuinfo, a timed add chain,
    /// a datasheet).
    #[serde(default)]
    pub freq_source: String,
    /// How the profile was made (measured by splitstream-bench, written by hand).
    #[serde(default)]
    pub source: String,
}

/// Peak arithmetic of one instruction set at one thread count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComputeRow {
    /// Instruction set: `portable`, `avx2-fma`, `avx512`, `neon`.
    pub isa: String,
    /// Threads running at once.
    pub threads: usize,
    /// f32 GFLOP/s, all threads together.
    pub gflops: f64,
}

/// One level of the memory hierarchy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryLevel {
    /// `L1`, `L2`, `L3`, `DRAM`.
    pub level: String,
    /// Capacity (per core when `per_core`); DRAM: 0 (unbounded).
    pub size_bytes: u64,
    /// Private to one core: an op on `t` threads has `t` times the capacity.
    #[serde(default)]
    pub per_core: bool,
    /// Load-to-use latency of a dependent random access, ns.
    pub latency_ns: f64,
    /// Read bandwidth, GB/s (10^9 bytes), by thread count `1..`; the last entry holds
    /// for more threads.
    pub read_gbs: Vec<f64>,
}

impl MemoryLevel {
    /// Whether this level is the DRAM (its bandwidth does not follow the core clock).
    pub fn is_dram(&self) -> bool {
        self.level.eq_ignore_ascii_case("dram")
    }

    /// Read bandwidth with `threads` threads, GB/s.
    pub fn bandwidth(&self, threads: usize) -> f64 {
        let i = threads.max(1) - 1;
        self.read_gbs
            .get(i)
            .or(self.read_gbs.last())
            .copied()
            .unwrap_or(0.0)
    }

    /// Capacity seen by an op on `threads` threads (DRAM: unbounded).
    pub fn capacity(&self, threads: usize) -> u64 {
        if self.is_dram() {
            u64::MAX
        } else if self.per_core {
            self.size_bytes.saturating_mul(threads.max(1) as u64)
        } else {
            self.size_bytes
        }
    }
}

/// How a backend's kernels use the machine: which compute row, and how close they come
/// to the peaks (measured by `splitstream-bench machine` with the backend's own ops, or
/// assumed for a hand-written profile).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendFit {
    /// The instruction set its kernels run (a `compute` row's `isa`).
    pub isa: String,
    /// Achieved over peak GFLOP/s for GEMM-like ops (linear, conv, matmul, attention).
    pub gemm_efficiency: f64,
    /// Achieved over peak GFLOP/s for dense and grouped convolutions (im2col + GEMM,
    /// pointwise), whose packing and small GEMMs keep them further from the peak.
    pub conv_efficiency: f64,
    /// Achieved over peak GFLOP/s for depthwise convolutions (a sliding window per
    /// channel, no GEMM).
    pub depthwise_efficiency: f64,
    /// Achieved over peak read bandwidth for streaming ops (elementwise, norms, moves).
    pub stream_efficiency: f64,
    /// Fixed cost of one op call (dispatch, thread fork/join), microseconds at
    /// `freq_mhz`.
    pub op_overhead_us: f64,
    /// Ops with fewer output elements run on one thread (the CPU backend's
    /// `PARALLEL_MIN_ELEMS`); 0: always all threads.
    #[serde(default)]
    pub parallel_min_elems: u64,
}

/// Per-backend fits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backends {
    /// The CPU backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<BackendFit>,
    /// The wgpu backend on this machine's adapter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wgpu: Option<GpuFit>,
}

/// A GPU adapter as the wgpu backend sees it (measured with its own ops).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuFit {
    /// The adapter.
    pub adapter: String,
    /// GFLOP/s its linear kernel reaches on a large layer.
    pub gemm_gflops: f64,
    /// GB/s its elementwise kernels reach on a large tensor.
    pub stream_gbs: f64,
    /// Fixed cost of one op (dispatch, submit), microseconds.
    pub op_overhead_us: f64,
}

/// A machine profile (see the module docs for the file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The machine.
    pub machine: MachineInfo,
    /// Peak GFLOP/s per instruction set and thread count.
    pub compute: Vec<ComputeRow>,
    /// The memory hierarchy, innermost first, DRAM last.
    pub memory: Vec<MemoryLevel>,
    /// Fits per backend.
    #[serde(default)]
    pub backend: Backends,
}

fn positive(what: &str, v: f64) -> Result<(), ProfileError> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(ProfileError::Invalid(format!(
            "{what} must be a positive number, got {v}"
        )))
    }
}

impl Profile {
    /// Parses and checks a profile.
    pub fn from_toml(text: &str) -> Result<Self, ProfileError> {
        let p: Profile = toml::from_str(text).map_err(|e| ProfileError::Parse(e.to_string()))?;
        p.validate()?;
        Ok(p)
    }

    /// Reads, parses and checks a profile file (at most [`MAX_PROFILE_BYTES`]).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ProfileError> {
        let path = path.as_ref();
        let io = |source| ProfileError::Io {
            path: path.display().to_string(),
            source,
        };
        let bytes = std::fs::metadata(path).map_err(io)?.len();
        if bytes > MAX_PROFILE_BYTES {
            return Err(ProfileError::TooLarge {
                path: path.display().to_string(),
                bytes,
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        Self::from_toml(&text).map_err(|e| match e {
            ProfileError::Parse(m) => ProfileError::Parse(format!("{}: {m}", path.display())),
            ProfileError::Invalid(m) => ProfileError::Invalid(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// The profile as TOML.
    pub fn to_toml(&self) -> Result<String, ProfileError> {
        toml::to_string_pretty(self).map_err(|e| ProfileError::Parse(e.to_string()))
    }

    /// Checks that the figures can describe a machine: positive numbers, compute rows,
    /// memory levels growing outward and ending in DRAM, fits naming a known ISA.
    pub fn validate(&self) -> Result<(), ProfileError> {
        let m = &self.machine;
        if m.cores == 0 {
            return Err(ProfileError::Invalid(
                "machine.cores must be at least 1".into(),
            ));
        }
        positive("machine.freq_mhz", m.freq_mhz)?;
        if self.compute.is_empty() {
            return Err(ProfileError::Invalid("no [[compute]] rows".into()));
        }
        for c in &self.compute {
            if c.threads == 0 {
                return Err(ProfileError::Invalid(format!(
                    "compute row for {} has threads = 0",
                    c.isa
                )));
            }
            positive(
                &format!("compute {} x{} gflops", c.isa, c.threads),
                c.gflops,
            )?;
        }
        let Some(last) = self.memory.last() else {
            return Err(ProfileError::Invalid("no [[memory]] levels".into()));
        };
        if !last.is_dram() {
            return Err(ProfileError::Invalid(format!(
                "the last memory level must be DRAM, got {:?}",
                last.level
            )));
        }
        let mut prev = 0u64;
        for (i, l) in self.memory.iter().enumerate() {
            if l.read_gbs.is_empty() {
                return Err(ProfileError::Invalid(format!(
                    "memory level {} has no read_gbs",
                    l.level
                )));
            }
            for &b in &l.read_gbs {
                positive(&format!("memory {} read_gbs", l.level), b)?;
            }
            positive(&format!("memory {} latency_ns", l.level), l.latency_ns)?;
            if i + 1 < self.memory.len() {
                if l.is_dram() {
                    return Err(ProfileError::Invalid("DRAM must be the last level".into()));
                }
                if l.size_bytes <= prev {
                    return Err(ProfileError::Invalid(format!(
                        "memory level {} ({} bytes) is not larger than the one inside it",
                        l.level, l.size_bytes
                    )));
                }
                prev = l.size_bytes;
            }
        }
        if let Some(fit) = &self.backend.cpu {
            if !self.compute.iter().any(|c| c.isa == fit.isa) {
                return Err(ProfileError::Invalid(format!(
                    "backend.cpu.isa {:?} has no [[compute]] row (have: {})",
                    fit.isa,
                    self.isas().join(", ")
                )));
            }
            positive("backend.cpu.gemm_efficiency", fit.gemm_efficiency)?;
            positive("backend.cpu.conv_efficiency", fit.conv_efficiency)?;
            positive("backend.cpu.depthwise_efficiency", fit.depthwise_efficiency)?;
            positive("backend.cpu.stream_efficiency", fit.stream_efficiency)?;
            if !(fit.op_overhead_us.is_finite() && fit.op_overhead_us >= 0.0) {
                return Err(ProfileError::Invalid(
                    "backend.cpu.op_overhead_us must be >= 0".into(),
                ));
            }
        }
        if let Some(g) = &self.backend.wgpu {
            positive("backend.wgpu.gemm_gflops", g.gemm_gflops)?;
            positive("backend.wgpu.stream_gbs", g.stream_gbs)?;
            if !(g.op_overhead_us.is_finite() && g.op_overhead_us >= 0.0) {
                return Err(ProfileError::Invalid(
                    "backend.wgpu.op_overhead_us must be >= 0".into(),
                ));
            }
        }
        Ok(())
    }

    /// The instruction sets with compute rows.
    pub fn isas(&self) -> Vec<String> {
        let mut v: Vec<String> = self.compute.iter().map(|c| c.isa.clone()).collect();
        v.dedup();
        v
    }

    /// Peak GFLOP/s of `isa` on `threads` threads: the row for that count, or the
    /// largest count below it scaled linearly (more threads than rows: the last row,
    /// never more than `cores` worth).
    pub fn peak_gflops(&self, isa: &str, threads: usize) -> Option<f64> {
        let rows: Vec<&ComputeRow> = self.compute.iter().filter(|c| c.isa == isa).collect();
        if let Some(r) = rows.iter().find(|r| r.threads == threads) {
            return Some(r.gflops);
        }
        let t = threads.clamp(1, self.machine.cores);
        let below = rows
            .iter()
            .filter(|r| r.threads <= t)
            .max_by_key(|r| r.threads)
            .or_else(|| rows.iter().min_by_key(|r| r.threads))?;
        Some(below.gflops * t as f64 / below.threads as f64)
    }
}
