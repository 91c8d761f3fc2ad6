//! The cost model: each op's time on a backend from a [`Profile`].
//!
//! For the CPU, a roofline per op with cache-aware bandwidths:
//!
//! ```text
//! t = max(flops / (P(isa, n) * e_gemm * s),  A / (B(level(A), n) * e_stream * s_A)
//!                                           + W / (B(level(Wm), n) * e_stream * s_W))
//!     + o / s
//! ```
//!
//! with `n` the threads the op runs on (1 below the backend's parallel threshold),
//! `P` the profile's peak GFLOP/s, `e_gemm` the backend's efficiency for the op's
//! kernel family (GEMM, convolution, depthwise convolution; fitted per family), `A` the activation bytes (in + out), which sit in
//! the smallest level holding them (the op before just wrote them), `W` the layer's
//! weight bytes, which sit in the level holding the whole model's weights `Wm` (a
//! weight's reuse distance is one forward pass), `B` a level's read bandwidth, `o` the
//! per-call overhead, and `s = f / f0` the clock relative to the profile's. DVFS: the
//! compute term, the overhead and the on-chip levels scale with `s`; DRAM does not
//! (`s_A`, `s_W` are 1 for DRAM). Non-GEMM ops use the same compute term, with their
//! small per-element FLOP estimates; they are nearly always memory or overhead bound.
//!
//! For wgpu, one level: `t = max(flops / G, bytes / S) + o` with the adapter's measured
//! GEMM GFLOP/s `G`, stream GB/s `S` and dispatch overhead `o` (no DVFS: a GPU clock
//! is not the CPU's).

use super::op::{OpCost, OpKind};
use super::profile::{Profile, ProfileError};

/// Which backend the prediction is for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// The CPU backend on `threads` threads.
    Cpu {
        /// Worker threads.
        threads: usize,
    },
    /// The wgpu backend.
    Wgpu,
}

/// A prediction setting: a profile, a backend, a clock.
#[derive(Debug, Clone)]
pub struct CostModel<'p> {
    profile: &'p Profile,
    target: Target,
    /// Clock over the profile's clock.
    speed: f64,
}

/// One op's predicted time, with the term that set it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpPrediction {
    /// Seconds.
    pub seconds: f64,
    /// Seconds of arithmetic at the achievable peak.
    pub compute_s: f64,
    /// Seconds of memory traffic.
    pub memory_s: f64,
    /// The level the activations were read from (index into the profile's memory).
    pub act_level: usize,
    /// The level the weights were read from.
    pub weight_level: usize,
}

impl<'p> CostModel<'p> {
    /// The model for `target` on `profile` at its own clock. The profile must have the
    /// backend's fit.
    pub fn new(profile: &'p Profile, target: Target) -> Result<Self, ProfileError> {
        match target {
            Target::Cpu { .. } if profile.backend.cpu.is_none() => {
                Err(ProfileError::Invalid(format!(
                    "profile {:?} has no [backend.cpu] fit",
                    profile.machine.name
                )))
            }
            Target::Wgpu if profile.backend.wgpu.is_none() => Err(ProfileError::Invalid(format!(
                "profile {:?} has no [backend.wgpu] fit (measure it with \
                 `splitstream-bench machine --wgpu`)",
                profile.machine.name
            ))),
            _ => Ok(Self {
                profile,
                target,
                speed: 1.0,
            }),
        }
    }

    /// The same model at core clock `freq_mhz` (DVFS; see the module docs).
    pub fn at_frequency(mut self, freq_mhz: f64) -> Result<Self, ProfileError> {
        if !(freq_mhz.is_finite() && freq_mhz > 0.0) {
            return Err(ProfileError::Invalid(format!(
                "frequency must be positive, got {freq_mhz} MHz"
            )));
        }
        self.speed = freq_mhz / self.profile.machine.freq_mhz;
        Ok(self)
    }

    /// The index of the innermost level holding `bytes` on `threads` threads.
    fn level_for(&self, bytes: u64, threads: usize) -> usize {
        let mem = &self.profile.memory;
        mem.iter()
            .position(|l| bytes <= l.capacity(threads))
            .unwrap_or(mem.len().saturating_sub(1))
    }

    /// Effective bandwidth of level `i` on `threads` threads, bytes per second.
    fn bandwidth(&self, i: usize, threads: usize, efficiency: f64) -> f64 {
        let l = &self.profile.memory[i];
        let clock = if l.is_dram() { 1.0 } else { self.speed };
        l.bandwidth(threads) * 1e9 * efficiency * clock
    }

    /// Predicts each op of one pass; `ops` is the whole pass (the weights' reuse
    /// distance is taken from it).
    pub fn predict(&self, ops: &[OpCost]) -> Vec<OpPrediction> {
        let model_weights: u64 = ops.iter().map(|c| c.weight_bytes).sum();
        ops.iter()
            .map(|c| self.predict_op(c, model_weights))
            .collect()
    }

    /// Predicts one op, given the weight bytes of the whole pass it belongs to.
    pub fn predict_op(&self, c: &OpCost, model_weights: u64) -> OpPrediction {
        match self.target {
            Target::Wgpu => {
                let Some(g) = &self.profile.backend.wgpu else {
                    return OpPrediction::nan();
                };
                let compute_s = c.flops as f64 / (g.gemm_gflops * 1e9);
                let memory_s = c.total_bytes() as f64 / (g.stream_gbs * 1e9);
                OpPrediction {
                    seconds: compute_s.max(memory_s) + g.op_overhead_us * 1e-6,
                    compute_s,
                    memory_s,
                    act_level: 0,
                    weight_level: 0,
                }
            }
            Target::Cpu { threads } => {
                let Some(fit) = &self.profile.backend.cpu else {
                    return OpPrediction::nan();
                };
                let threads = threads.clamp(1, self.profile.machine.cores);
                let n = if !c.kind.is_gemm() && c.out_elems < fit.parallel_min_elems {
                    1
                } else {
                    threads
                };
                let peak = self.profile.peak_gflops(&fit.isa, n).unwrap_or(f64::NAN);
                let efficiency = match c.kind {
                    OpKind::Conv2d => fit.conv_efficiency,
                    OpKind::DepthwiseConv2d => fit.depthwise_efficiency,
                    _ => fit.gemm_efficiency,
                };
                let compute_s = c.flops as f64 / (peak * 1e9 * efficiency * self.speed);
                let act = c.in_bytes + c.out_bytes;
                let act_level = self.level_for(act, n);
                let weight_level = self.level_for(model_weights, n);
                let mut memory_s = act as f64 / self.bandwidth(act_level, n, fit.stream_efficiency);
                if c.weight_bytes > 0 {
                    memory_s += c.weight_bytes as f64
                        / self.bandwidth(weight_level, n, fit.stream_efficiency);
                }
                OpPrediction {
                    seconds: compute_s.max(memory_s) + fit.op_overhead_us * 1e-6 / self.speed,
                    compute_s,
                    memory_s,
                    act_level,
                    weight_level,
                }
            }
        }
    }
}

impl OpPrediction {
    fn nan() -> Self {
        Self {
            seconds: f64::NAN,
            compute_s: f64::NAN,
            memory_s: f64::NAN,
            act_level: 0,
            weight_level: 0,
        }
    }
}
