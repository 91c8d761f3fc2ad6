//! SpikePoint-style point-based spiking network for event windows (family `spikepoint`).
//!
//! After Ren et al., "SpikePoint" (ICLR 2024): an event window is a point cloud, grouped
//! by farthest-point sampling and k nearest neighbours, rate-coded over `T` timesteps and
//! classified by spiking point layers with a membrane-shortcut residual. The twin in
//! PyTorch (spikingjelly) is `python/spikepoint.py`; `docs/models.md` lists every choice
//! the paper leaves open. In short, per item:
//!
//! ```text
//! points [N, 4] (x px, y px, t - t0 us, p 0/1)
//!   -> FPS (M centroids) + kNN (K) -> features [M, K, 11] in [0, 1]
//!   -> rate code: s[t] = floor((t+1) v) - floor(t v)          [T, M, K, 11] spikes
//!   fc1, LIF                     -> "lif1"  [T, M, K, C1] spikes   (split point 1)
//!   fc2, LIF, max over K         -> "pool"  [T, M, C2]    spikes   (split point 2)
//!   h = fc3(pool); h += fc4(LIF(h)) -> "res" [T, M, C2]   floats   (split point 3)
//!   max of h over M, fc5, mean over T -> logits [classes]   (membrane read-out)
//! ```
//!
//! The neuron is spikingjelly's `LIFNode(tau, v_reset=0.0, detach_reset=True)` in
//! multi-step mode, with its operation order in f32: `H = V + ((v_reset - V) + X) / tau`,
//! spike when `H - v_th >= 0`, then `V = v_reset` where it spiked, else `H`
//! ([`Neuron::LifHard`]). Also offered: the soft reset (`V = H - S v_th`,
//! [`Neuron::LifSoft`]) and snntorch's `Leaky` ([`Neuron::Leaky`]); and ReLU for the ANN
//! counterpart of the same shape ([`Neuron::Relu`], one step, analog input).
//!
//! A layer fed with binary spikes needs no multiply: its output is the bias plus the
//! weight rows of the inputs that spiked ([`gather_add`]). The CPU path does that; the
//! dense path (any backend's `linear`, the one wgpu runs) multiplies by the 0/1 inputs.
//! Exported weights lie on a 2^-12 grid, where every sum below 2^12 is exact in f32, so
//! both paths (and PyTorch's matmul) give the same bits whatever the summation order.

use std::sync::Arc;

use crate::backend::{Activation, Backend, BackendError};
use crate::net::{Family, InputSpec, NetError, NetState, Output, OutputKind, SplitNet, SplitPoint};
use crate::tensor::{HostTensor, ShapeError};
use crate::weights::{Weights, WeightsError};

/// Features per neighbour: positive and negative offset parts (6), the centroid (3),
/// the polarity (1), the group's extent (1).
pub const FEATURES: usize = 11;
/// Values per input point: x, y (pixels), t (microseconds after the window's start), p.
pub const POINT_DIMS: usize = 4;
/// Caps on what a checkpoint may ask for (allocation bounds).
const MAX_POINTS: usize = 1 << 16;
const MAX_GROUP: usize = 4096;
const MAX_STEPS: usize = 256;
const MAX_CHANNELS: usize = 4096;
const MAX_ELEMENTS: usize = 1 << 28;

/// Why a SpikePoint checkpoint did not load or an input was refused.
#[derive(Debug, thiserror::Error)]
pub enum SpikePointError {
    /// A tensor is missing or has the wrong shape.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// The metadata is missing a value or holds a bad one.
    #[error("spikepoint metadata {key:?}: {reason}")]
    Metadata {
        /// The key.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The input does not have the model's shape.
    #[error("spikepoint input: {0}")]
    Input(String),
    /// A tensor could not be built.
    #[error(transparent)]
    Shape(#[from] ShapeError),
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// The neuron model between layers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Neuron {
    /// spikingjelly `LIFNode(decay_input=True, v_reset=Some(..))`:
    /// `H = V + ((v_reset - V) + X) / tau`; `S = H - v_th >= 0`; `V = S ? v_reset : H`.
    LifHard {
        /// Membrane time constant.
        tau: f32,
        /// Threshold.
        v_th: f32,
        /// Reset potential.
        v_reset: f32,
    },
    /// spikingjelly `LIFNode(v_reset=None)`: `H = V + (X - V) / tau`;
    /// `S = H - v_th >= 0`; `V = H - S * v_th`.
    LifSoft {
        /// Membrane time constant.
        tau: f32,
        /// Threshold.
        v_th: f32,
    },
    /// snntorch `Leaky` (subtract reset, one step late):
    /// `U = beta * U + X - S_prev * theta`; `S = U - theta > 0`.
    Leaky {
        /// Decay per step.
        beta: f32,
        /// Threshold.
        theta: f32,
    },
    /// `max(X, 0)`, one step, for the ANN counterpart.
    Relu,
}

impl Neuron {
    /// Whether the neuron emits binary spikes.
    pub fn spiking(self) -> bool {
        !matches!(self, Self::Relu)
    }

    /// Multi-step run over `x` laid out `[T, n]` (time first), from a resting state;
    /// returns the output `[T, n]` (spikes as 0/1, or the ReLU).
    pub fn run(self, x: &[f32], steps: usize) -> Vec<f32> {
        let n = x.len() / steps.max(1);
        let mut out = vec![0.0f32; x.len()];
        match self {
            Self::Relu => {
                for (o, &v) in out.iter_mut().zip(x) {
                    *o = v.max(0.0);
                }
            }
            Self::LifHard { tau, v_th, v_reset } => {
                let mut v = vec![v_reset; n];
                for t in 0..steps {
                    let (xs, os) = (&x[t * n..(t + 1) * n], &mut out[t * n..(t + 1) * n]);
                    for ((vi, &xi), oi) in v.iter_mut().zip(xs).zip(os) {
                        let h = *vi + ((v_reset - *vi) + xi) / tau;
                        let s = h - v_th >= 0.0;
                        *oi = f32::from(u8::from(s));
                        *vi = if s { v_reset } else { h };
                    }
                }
            }
            Self::LifSoft { tau, v_th } => {
                let mut v = vec![0.0f32; n];
                for t in 0..steps {
                    let (xs, os) = (&x[t * n..(t + 1) * n], &mut out[t * n..(t + 1) * n]);
                    for ((vi, &xi), oi) in v.iter_mut().zip(xs).zip(os) {
                        let h = *vi + (xi - *vi) / tau;
                        let s = h - v_th >= 0.0;
                        *oi = f32::from(u8::from(s));
                        *vi = if s { h - v_th } else { h };
                    }
                }
            }
            Self::Leaky { beta, theta } => {
                let mut u = vec![0.0f32; n];
                let mut prev = vec![false; n];
                for t in 0..steps {
                    let (xs, os) = (&x[t * n..(t + 1) * n], &mut out[t * n..(t + 1) * n]);
                    for (((ui, &xi), oi), pi) in u.iter_mut().zip(xs).zip(os).zip(&mut prev) {
                        let reset = if *pi { theta } else { 0.0 };
                        *ui = beta * *ui + xi - reset;
                        let s = *ui - theta > 0.0;
                        *oi = f32::from(u8::from(s));
                        *pi = s;
                    }
                }
            }
        }
        out
    }
}

/// The architecture, from the checkpoint's metadata and shapes.
#[derive(Debug, Clone, PartialEq)]
pub struct SpikePointConfig {
    /// Points sampled from a window (N).
    pub points: usize,
    /// Centroids (M).
    pub centroids: usize,
    /// Neighbours per centroid (K).
    pub neighbours: usize,
    /// Timesteps (T; 1 for the ANN).
    pub steps: usize,
    /// Sensor width and height (pixels).
    pub width: usize,
    /// Sensor height.
    pub height: usize,
    /// Window length, microseconds.
    pub window_us: u64,
    /// Channels of fc1 and of fc2..fc4.
    pub c1: usize,
    /// Channels of fc2..fc4.
    pub c2: usize,
    /// Classes.
    pub classes: usize,
    /// The neuron.
    pub neuron: Neuron,
}

/// The input features of one window `[M, K, FEATURES]`, bit for bit those of
/// `python/spikepoint.py::group` (see the module docs).
pub fn group(points: &[f32], cfg: &SpikePointConfig) -> Result<Vec<f32>, SpikePointError> {
    let n = points.len() / POINT_DIMS;
    if n == 0 || !points.len().is_multiple_of(POINT_DIMS) {
        return Err(SpikePointError::Input(format!(
            "{} values are not a non-empty [N, 4] point set",
            points.len()
        )));
    }
    let (m, k) = (cfg.centroids, cfg.neighbours.min(n));
    let (w, h, win) = (cfg.width as f32, cfg.height as f32, cfg.window_us as f32);
    let xyz: Vec<[f32; 3]> = points
        .chunks_exact(POINT_DIMS)
        .map(|p| [p[0] / w, p[1] / h, p[2] / win])
        .collect();
    let d2 = |a: &[f32; 3], c: &[f32; 3]| {
        let (dx, dy, dz) = (a[0] - c[0], a[1] - c[1], a[2] - c[2]);
        (dx * dx + dy * dy) + dz * dz
    };
    // Farthest-point sampling from point 0; the first maximum wins (numpy's argmax).
    let mut centres = Vec::with_capacity(m);
    let mut mind = vec![f32::INFINITY; n];
    let mut cur = 0usize;
    for _ in 0..m {
        centres.push(cur);
        let c = xyz[cur];
        let mut best = (f32::NEG_INFINITY, 0usize);
        for (i, (md, p)) in mind.iter_mut().zip(&xyz).enumerate() {
            *md = md.min(d2(p, &c));
            if *md > best.0 {
                best = (*md, i);
            }
        }
        cur = best.1;
    }
    let mut feats = vec![0.0f32; m * cfg.neighbours * FEATURES];
    let mut order: Vec<usize> = Vec::with_capacity(n);
    let mut dist = vec![0.0f32; n];
    for (j, &c) in centres.iter().enumerate() {
        let cxyz = xyz[c];
        for (d, p) in dist.iter_mut().zip(&xyz) {
            *d = d2(p, &cxyz);
        }
        order.clear();
        order.extend(0..n);
        // A stable sort by distance (ties keep index order), as numpy's stable argsort.
        order.sort_by(|&a, &b| dist[a].total_cmp(&dist[b]));
        let nb = &order[..k];
        let mut scale = 0.0f32;
        for &i in nb {
            for a in 0..3 {
                scale = scale.max((xyz[i][a] - cxyz[a]).abs());
            }
        }
        let extent = 1.0f32.min(4.0 * scale);
        for (slot, &i) in nb.iter().enumerate() {
            let f = &mut feats[(j * cfg.neighbours + slot) * FEATURES..][..FEATURES];
            for a in 0..3 {
                let off = xyz[i][a] - cxyz[a];
                let rel = if scale > 0.0 { off / scale } else { 0.0 };
                f[a] = rel.max(0.0);
                f[3 + a] = (-rel).max(0.0);
                f[6 + a] = cxyz[a];
            }
            f[9] = points[i * POINT_DIMS + 3];
            f[10] = extent;
        }
    }
    Ok(feats)
}

/// Deterministic rate coding: `[n]` values in `[0, 1]` -> `[T, n]` spikes,
/// `s[t] = floor((t+1) v) - floor(t v)` (`floor(T v)` spikes in all).
pub fn rate_code(v: &[f32], steps: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(v.len() * steps);
    for t in 0..steps {
        let (a, b) = ((t + 1) as f32, t as f32);
        out.extend(v.iter().map(|&x| (a * x).floor() - (b * x).floor()));
    }
    out
}

/// Samples a window's events (time order) into `[n_points, 4]`: `idx_i = i * n / N`
/// (integer division) when the window has at least N events, else its events repeated
/// cyclically. `t` is made relative to `t0`. `None` for an empty window.
pub fn sample_points(
    t: &[i64],
    x: &[u16],
    y: &[u16],
    p: &[bool],
    t0: i64,
    n_points: usize,
) -> Option<Vec<f32>> {
    let n = t.len().min(x.len()).min(y.len()).min(p.len());
    if n == 0 {
        return None;
    }
    let mut out = Vec::with_capacity(n_points * POINT_DIMS);
    for i in 0..n_points {
        let j = if n >= n_points {
            ((i as u128 * n as u128) / n_points as u128) as usize
        } else {
            i % n
        };
        out.extend([
            f32::from(x[j]),
            f32::from(y[j]),
            (t[j] - t0) as f32,
            f32::from(u8::from(p[j])),
        ]);
    }
    Some(out)
}

/// `bias + sum of the rows of `wt` (`[in, out]`) whose input spiked`, for each of the
/// `rows` binary input rows of `x` (`[rows, in]`): a linear layer without multiplies.
/// Inputs count as spikes when `>= 0.5`.
pub fn gather_add(x: &[f32], wt: &[f32], bias: &[f32], n_in: usize) -> Vec<f32> {
    let n_out = bias.len();
    let rows = x.len() / n_in.max(1);
    let mut out = Vec::with_capacity(rows * n_out);
    for row in x.chunks_exact(n_in) {
        let start = out.len();
        out.extend_from_slice(bias);
        let acc = &mut out[start..];
        for (i, _) in row.iter().enumerate().filter(|(_, &s)| s >= 0.5) {
            for (a, &w) in acc.iter_mut().zip(&wt[i * n_out..(i + 1) * n_out]) {
                *a += w;
            }
        }
    }
    out
}

struct Layer<B: Backend> {
    n_in: usize,
    /// `[in, out]` (transposed), for the gather-and-add path.
    wt: Vec<f32>,
    bias: Vec<f32>,
    dense: B::Linear,
}

/// What a forward pass recorded, per item: every layer's output `[T, ...]`.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    /// `(name, values)`: `input`, `lif1`, `lif2`, `pool`, `res_in`, `res`.
    pub layers: Vec<(&'static str, Vec<f32>)>,
}

/// The network on a backend.
pub struct SpikePointNet<B: Backend> {
    backend: B,
    cfg: SpikePointConfig,
    fc: [Layer<B>; 5],
    gather: bool,
    input: InputSpec,
    points: Vec<SplitPoint>,
}

fn meta<T: std::str::FromStr>(w: &Weights, key: &'static str) -> Result<T, SpikePointError> {
    let v = w.metadata_value(key).ok_or(SpikePointError::Metadata {
        key,
        reason: "missing".into(),
    })?;
    v.trim().parse().map_err(|_| SpikePointError::Metadata {
        key,
        reason: format!("cannot parse {v:?}"),
    })
}

fn meta_or<T: std::str::FromStr>(
    w: &Weights,
    key: &'static str,
    default: T,
) -> Result<T, SpikePointError> {
    if w.metadata_value(key).is_none() {
        Ok(default)
    } else {
        meta(w, key)
    }
}

fn bounded(key: &'static str, v: usize, max: usize) -> Result<usize, SpikePointError> {
    if v == 0 || v > max {
        return Err(SpikePointError::Metadata {
            key,
            reason: format!("{v} is outside 1..={max}"),
        });
    }
    Ok(v)
}

impl SpikePointConfig {
    /// Reads the architecture from a checkpoint (metadata keys of
    /// `python/spikepoint.py::metadata`; channel counts from the shapes).
    pub fn from_weights(w: &Weights) -> Result<Self, SpikePointError> {
        let shape = |name: &str| {
            w.shape(name)
                .map(<[usize]>::to_vec)
                .ok_or_else(|| WeightsError::Missing {
                    name: name.to_owned(),
                    hint: "not a spikepoint checkpoint (python/spikepoint.py writes fc1..fc5)"
                        .into(),
                })
        };
        let fc1 = shape("fc1.weight")?;
        let fc2 = shape("fc2.weight")?;
        let fc5 = shape("fc5.weight")?;
        let (c1, c2, classes) = match (&fc1[..], &fc2[..], &fc5[..]) {
            ([c1, FEATURES], [c2, _], [classes, _]) => (*c1, *c2, *classes),
            _ => {
                return Err(SpikePointError::Metadata {
                    key: "fc1.weight",
                    reason: format!("fc1 is {fc1:?}; expected [C1, {FEATURES}]"),
                })
            }
        };
        let tau = meta_or(w, "tau", 2.0f32)?;
        let v_th = meta_or(w, "v_threshold", 1.0f32)?;
        let neuron_name: String = meta_or(w, "neuron", "lif-hard".to_owned())?;
        let neuron = match neuron_name.as_str() {
            "lif-hard" => Neuron::LifHard {
                tau,
                v_th,
                v_reset: meta_or(w, "v_reset", 0.0f32)?,
            },
            "lif-soft" => Neuron::LifSoft { tau, v_th },
            "leaky" => Neuron::Leaky {
                beta: meta(w, "beta")?,
                theta: v_th,
            },
            "relu" => Neuron::Relu,
            other => {
                return Err(SpikePointError::Metadata {
                    key: "neuron",
                    reason: format!("{other:?} is not lif-hard, lif-soft, leaky or relu"),
                })
            }
        };
        if !(tau.is_finite() && tau >= 1.0 && v_th.is_finite()) {
            return Err(SpikePointError::Metadata {
                key: "tau",
                reason: format!("tau {tau} / v_threshold {v_th} out of range"),
            });
        }
        let cfg = Self {
            points: bounded("points", meta(w, "points")?, MAX_POINTS)?,
            centroids: bounded("centroids", meta(w, "centroids")?, MAX_GROUP)?,
            neighbours: bounded("neighbours", meta(w, "neighbours")?, MAX_GROUP)?,
            steps: bounded("steps", meta(w, "steps")?, MAX_STEPS)?,
            width: bounded("width", meta(w, "width")?, 1 << 16)?,
            height: bounded("height", meta(w, "height")?, 1 << 16)?,
            window_us: meta(w, "window_us")?,
            c1: bounded("fc1.weight", c1, MAX_CHANNELS)?,
            c2: bounded("fc2.weight", c2, MAX_CHANNELS)?,
            classes: bounded("fc5.weight", classes, MAX_CHANNELS)?,
            neuron,
        };
        if cfg.window_us == 0 {
            return Err(SpikePointError::Metadata {
                key: "window_us",
                reason: "must be positive".into(),
            });
        }
        if cfg.centroids > cfg.points || cfg.neighbours > cfg.points {
            return Err(SpikePointError::Metadata {
                key: "centroids",
                reason: "centroids and neighbours must not exceed points".into(),
            });
        }
        if cfg.steps * cfg.centroids * cfg.neighbours * cfg.c1.max(cfg.c2) > MAX_ELEMENTS {
            return Err(SpikePointError::Metadata {
                key: "steps",
                reason: "T * M * K * channels is too large".into(),
            });
        }
        Ok(cfg)
    }
}

impl<B: Backend> SpikePointNet<B> {
    /// Loads a checkpoint written by `python/spikepoint.py::save`.
    pub fn load(backend: B, weights: &Weights) -> Result<Self, SpikePointError> {
        let cfg = SpikePointConfig::from_weights(weights)?;
        let dims = [
            (cfg.c1, FEATURES),
            (cfg.c2, cfg.c1),
            (cfg.c2, cfg.c2),
            (cfg.c2, cfg.c2),
            (cfg.classes, cfg.c2),
        ];
        let mut layers = Vec::with_capacity(5);
        for (i, (out, inp)) in dims.into_iter().enumerate() {
            let w = weights.get(&format!("fc{}.weight", i + 1), &[out, inp])?;
            let b = weights.get(&format!("fc{}.bias", i + 1), &[out])?;
            let mut wt = vec![0.0f32; out * inp];
            for (o, row) in w.data().chunks_exact(inp).enumerate() {
                for (k, &v) in row.iter().enumerate() {
                    wt[k * out + o] = v;
                }
            }
            let dense = backend.prepare_linear(&w, Some(&b))?;
            layers.push(Layer {
                n_in: inp,
                wt,
                bias: b.data().to_vec(),
                dense,
            });
        }
        let fc: [Layer<B>; 5] = layers
            .try_into()
            .map_err(|_| SpikePointError::Input("five layers expected".into()))?;
        let (t, m, k) = (cfg.steps, cfg.centroids, cfg.neighbours);
        let spiking = cfg.neuron.spiking();
        let points = vec![
            SplitPoint {
                name: "lif1".into(),
                depth: 1,
                shape: vec![t, m, k, cfg.c1],
                bottleneck: None,
            },
            SplitPoint {
                name: "pool".into(),
                depth: 2,
                shape: vec![t, m, cfg.c2],
                bottleneck: None,
            },
            SplitPoint {
                name: "res".into(),
                depth: 3,
                shape: vec![t, m, cfg.c2],
                bottleneck: None,
            },
        ];
        let input = InputSpec::EventPoints {
            points: cfg.points,
            width: cfg.width,
            height: cfg.height,
            window_us: cfg.window_us,
        };
        let gather = spiking && backend.name() == "cpu";
        Ok(Self {
            backend,
            cfg,
            fc,
            gather,
            input,
            points,
        })
    }

    /// The architecture.
    pub fn config(&self) -> &SpikePointConfig {
        &self.cfg
    }

    /// Uses the gather-and-add path for layers fed with spikes (`true`, the CPU
    /// default) or the backend's dense `linear` (`false`; the only path off the CPU).
    pub fn set_gather(&mut self, gather: bool) {
        self.gather = gather && self.cfg.neuron.spiking() && self.backend.name() == "cpu";
    }

    fn linear(&self, i: usize, x: &[f32], binary: bool) -> Result<Vec<f32>, SpikePointError> {
        let layer = &self.fc[i];
        if binary && self.gather {
            return Ok(gather_add(x, &layer.wt, &layer.bias, layer.n_in));
        }
        let rows = x.len() / layer.n_in;
        let host = HostTensor::new(vec![rows, layer.n_in], x.to_vec())?;
        let dev = self.backend.upload(&host)?;
        let y = self
            .backend
            .linear(&dev, &layer.dense, Activation::Identity)?;
        Ok(self.backend.readback(&y)?.into_data())
    }

    /// The input spikes (or, for the ANN, features) `[T, M, K, FEATURES]` of one
    /// point set `[N, 4]`.
    pub fn encode(&self, points: &[f32]) -> Result<Vec<f32>, SpikePointError> {
        if points.len() != self.cfg.points * POINT_DIMS {
            return Err(SpikePointError::Input(format!(
                "{} values; expected [{}, {POINT_DIMS}]",
                points.len(),
                self.cfg.points
            )));
        }
        let feats = group(points, &self.cfg)?;
        Ok(if self.cfg.neuron.spiking() {
            rate_code(&feats, self.cfg.steps)
        } else {
            feats
        })
    }

    /// Runs stage `from..to` (0: point set, 1: "lif1", 2: "pool", 3: "res", 4: logits)
    /// of one item; records into `trace` when given.
    fn run(
        &self,
        x: &[f32],
        from: usize,
        to: usize,
        mut trace: Option<&mut Trace>,
    ) -> Result<Vec<f32>, SpikePointError> {
        let c = &self.cfg;
        let (t, m, k) = (c.steps, c.centroids, c.neighbours);
        let spiking = c.neuron.spiking();
        let mut rec = |name: &'static str, v: &[f32]| {
            if let Some(tr) = trace.as_deref_mut() {
                tr.layers.push((name, v.to_vec()));
            }
        };
        let mut cur = x.to_vec();
        if from == 0 && to > 0 {
            let input = self.encode(&cur)?;
            rec("input", &input);
            cur = c.neuron.run(&self.linear(0, &input, spiking)?, t);
            rec("lif1", &cur);
        }
        if from <= 1 && to > 1 {
            let s2 = c.neuron.run(&self.linear(1, &cur, spiking)?, t);
            rec("lif2", &s2);
            // Max over the K neighbours: [T, M, K, C2] -> [T, M, C2].
            let mut pooled = vec![f32::NEG_INFINITY; t * m * c.c2];
            for (g, group) in s2.chunks_exact(k * c.c2).enumerate() {
                let out = &mut pooled[g * c.c2..(g + 1) * c.c2];
                for row in group.chunks_exact(c.c2) {
                    for (o, &v) in out.iter_mut().zip(row) {
                        *o = o.max(v);
                    }
                }
            }
            cur = pooled;
            rec("pool", &cur);
        }
        if from <= 2 && to > 2 {
            let mut h = self.linear(2, &cur, spiking)?;
            let s4 = c.neuron.run(&h, t);
            rec("res_in", &s4);
            for (a, b) in h.iter_mut().zip(self.linear(3, &s4, spiking)?) {
                *a += b;
            }
            cur = h;
            rec("res", &cur);
        }
        if from <= 3 && to > 3 {
            // Membrane read-out: max of h over the M centroids per step, fc5, mean over
            // the steps.
            let mut pooled = vec![f32::NEG_INFINITY; t * c.c2];
            for (step, chunk) in cur.chunks_exact(m * c.c2).enumerate() {
                let out = &mut pooled[step * c.c2..(step + 1) * c.c2];
                for row in chunk.chunks_exact(c.c2) {
                    for (o, &v) in out.iter_mut().zip(row) {
                        *o = o.max(v);
                    }
                }
            }
            let per_step = self.linear(4, &pooled, false)?;
            let mut logits = vec![0.0f32; c.classes];
            for row in per_step.chunks_exact(c.classes) {
                for (l, &v) in logits.iter_mut().zip(row) {
                    *l += v;
                }
            }
            for l in &mut logits {
                *l /= t as f32;
            }
            cur = logits;
        }
        Ok(cur)
    }

    /// Logits of one point set `[N, 4]`, with every layer's output in `trace`.
    pub fn forward_traced(
        &self,
        points: &[f32],
        trace: &mut Trace,
    ) -> Result<Vec<f32>, SpikePointError> {
        self.run(points, 0, 4, Some(trace))
    }

    fn stage(&self, at: &str) -> Result<usize, NetError> {
        Ok(self.split_point(at)?.depth)
    }

    fn batch(
        &self,
        x: &HostTensor,
        item: &[usize],
        from: usize,
        to: usize,
        out_item: &[usize],
    ) -> Result<HostTensor, NetError> {
        let shape = x.shape();
        if shape.len() != item.len() + 1 || shape[1..] != *item {
            return Err(NetError::run(SpikePointError::Input(format!(
                "shape {shape:?}; expected [B, {item:?}]"
            ))));
        }
        let per: usize = item.iter().product();
        let mut data = Vec::new();
        for chunk in x.data().chunks_exact(per.max(1)) {
            data.extend(self.run(chunk, from, to, None).map_err(NetError::run)?);
        }
        let mut out_shape = vec![shape[0]];
        out_shape.extend_from_slice(out_item);
        HostTensor::new(out_shape, data).map_err(|e| NetError::run(SpikePointError::from(e)))
    }
}

impl<B: Backend> SplitNet for SpikePointNet<B> {
    fn family(&self) -> Family {
        Family::SpikePoint
    }

    fn describe(&self) -> String {
        let c = &self.cfg;
        format!(
            "spikepoint (N {} points, M {} x K {}, T {}, channels {}/{}, {} classes, neuron {:?}, backend {}{})",
            c.points,
            c.centroids,
            c.neighbours,
            c.steps,
            c.c1,
            c.c2,
            c.classes,
            c.neuron,
            self.backend.name(),
            if self.gather { ", gather-and-add" } else { "" }
        )
    }

    fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    fn input(&self) -> &InputSpec {
        &self.input
    }

    fn output(&self) -> OutputKind {
        OutputKind::ClassLogits {
            classes: self.cfg.classes,
        }
    }

    fn split_points(&self) -> &[SplitPoint] {
        &self.points
    }

    fn head(
        &self,
        x: &HostTensor,
        at: &str,
        _state: Option<&mut dyn NetState>,
    ) -> Result<HostTensor, NetError> {
        let depth = self.stage(at)?;
        let shape = self.split_point(at)?.shape.clone();
        self.batch(x, &self.input.item_shape(), 0, depth, &shape)
    }

    fn tail(
        &self,
        h: &HostTensor,
        at: &str,
        _state: Option<&mut dyn NetState>,
    ) -> Result<Output, NetError> {
        let depth = self.stage(at)?;
        let shape = self.split_point(at)?.shape.clone();
        let out = self.batch(h, &shape, depth, 4, &[self.cfg.classes])?;
        Ok(Output::Logits(out))
    }

    fn forward(
        &self,
        x: &HostTensor,
        _state: Option<&mut dyn NetState>,
    ) -> Result<Output, NetError> {
        let out = self.batch(x, &self.input.item_shape(), 0, 4, &[self.cfg.classes])?;
        Ok(Output::Logits(out))
    }
}

/// A SpikePoint net behind the seam.
pub fn load_arc<B: Backend>(
    backend: B,
    weights: &Weights,
) -> Result<Arc<dyn SplitNet>, SpikePointError> {
    Ok(Arc::new(SpikePointNet::load(backend, weights)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hard_reset_lif_matches_hand_computed_steps() {
        let n = Neuron::LifHard {
            tau: 2.0,
            v_th: 1.0,
            v_reset: 0.0,
        };
        // H: 0.75, 0.75 + (1.5 - 0.75)/2 = 1.125 -> spike, reset; 0.5.
        assert_eq!(n.run(&[1.5, 1.5, 1.0], 3), vec![0.0, 1.0, 0.0]);
        // Exactly at threshold fires (>= 0).
        assert_eq!(n.run(&[2.0], 1), vec![1.0]);
    }

    #[test]
    fn soft_reset_and_leaky_differ_as_defined() {
        let soft = Neuron::LifSoft {
            tau: 2.0,
            v_th: 1.0,
        };
        // H = 1.5 -> spike, V = 0.5; H = 0.5 + (0 - 0.5)/2 = 0.25.
        assert_eq!(soft.run(&[3.0, 0.0], 2), vec![1.0, 0.0]);
        let leaky = Neuron::Leaky {
            beta: 0.5,
            theta: 1.0,
        };
        // U = 1.0 (not > 1), U = 0.5 + 1.0 = 1.5 > 1 spike, U = 0.75 + 1 - 1 = 0.75.
        assert_eq!(leaky.run(&[1.0, 1.0, 1.0], 3), vec![0.0, 1.0, 0.0]);
    }

    #[test]
    fn gather_add_equals_dense_on_binary_input() {
        let wt = [0.5f32, -1.0, 0.25, 2.0, 4.0, -0.125]; // [in 3, out 2]
        let bias = [1.0f32, 0.0];
        let x = [1.0f32, 0.0, 1.0, 0.0, 1.0, 1.0];
        let y = gather_add(&x, &wt, &bias, 3);
        assert_eq!(
            y,
            vec![1.0 + 0.5 + 4.0, -1.0 - 0.125, 1.0 + 0.25 + 4.0, 2.0 - 0.125]
        );
    }

    #[test]
    fn rate_code_gives_floor_t_v_spikes() {
        let s = rate_code(&[0.0, 0.5, 1.0, 0.3], 8);
        let counts: Vec<f32> = (0..4).map(|i| (0..8).map(|t| s[t * 4 + i]).sum()).collect();
        assert_eq!(counts, vec![0.0, 4.0, 8.0, 2.0]);
    }

    #[test]
    fn sample_points_strides_and_repeats() {
        let t: Vec<i64> = (0..10).map(|i| 100 + i * 10).collect();
        let x: Vec<u16> = (0..10).collect();
        let y = vec![3u16; 10];
        let p: Vec<bool> = (0..10).map(|i| i % 2 == 0).collect();
        let s = sample_points(&t, &x, &y, &p, 100, 4).unwrap_or_default();
        let xs: Vec<f32> = s.chunks_exact(4).map(|r| r[0]).collect();
        assert_eq!(xs, vec![0.0, 2.0, 5.0, 7.0]);
        let s = sample_points(&t[..3], &x[..3], &y[..3], &p[..3], 100, 5).unwrap_or_default();
        let ts: Vec<f32> = s.chunks_exact(4).map(|r| r[2]).collect();
        assert_eq!(ts, vec![0.0, 10.0, 20.0, 0.0, 10.0]);
        assert!(sample_points(&[], &[], &[], &[], 0, 4).is_none());
    }
}
