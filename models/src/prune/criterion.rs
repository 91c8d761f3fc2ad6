//! LPViT's training-free criterion (Xu et al., ECCV 2024), from forward passes only.
//!
//! LPViT's label-free signal is `G = d mean(output^2) / dW`, which needs the whole
//! network's backward pass. Here each linear layer's own output stands in for the
//! network's: `G_l = d mean(y_l^2) / dW_l = 2 y_l^T x_l / (rows * out)`, computed from
//! the layer's input `x_l` and output `y_l = x_l W^T + b` recorded on calibration
//! images (a layer-local Fisher signal; `python/prune_lpvit.py` runs the exact global
//! one, and `splitstream prune` reports how the two agree). The rest is LPViT's, as its
//! repository computes it (see the Python script's docstring for the details it keeps):
//! per-layer distortion curves over 101 sparsity levels (first-order
//! `mean((dW * G)^2)` plus the repository's incremental rank-one second-order term),
//! EMA-smoothed; the power term `beta * a * blocks * floor(in / 16)` with `beta` set from
//! the curves' largest slopes; equal-slope allocation to a FLOPs target, at most 95% per
//! layer; final masks by block-mean `|W|` (the repository's effective ranking) or by
//! block-mean `|W * G|`.

use crate::backend::cpu::CpuBackend;
use crate::backend::{Activation, Backend};
use crate::tensor::HostTensor;
use crate::vit::{Vit, VitOptions};
use crate::weights::Weights;

use super::{prunable_layers, PrunableLayer, PruneError};

/// Sparsity levels per curve (`0, 0.01, .., 1`).
pub const LEVELS: usize = 101;
/// Most of a layer's blocks that may be pruned.
pub const MAX_PRUNED: f64 = 0.95;

/// What the criterion needs of one layer: its weight and its signal.
#[derive(Debug, Clone)]
pub struct LayerSignal {
    /// The layer.
    pub layer: PrunableLayer,
    /// Its dense weight `[out, in]`, row-major.
    pub weight: Vec<f32>,
    /// `G`, same layout.
    pub grad: Vec<f64>,
}

/// Knobs of the criterion (LPViT's defaults).
#[derive(Debug, Clone, Copy)]
pub struct CriterionOptions {
    /// Square block side.
    pub block: usize,
    /// EMA weight of the curve smoothing (0 = none).
    pub smooth: f64,
    /// Half-width of the slope stencil.
    pub h: usize,
    /// Add the hardware-aware power term.
    pub power: bool,
    /// Rank the final blocks by `|W * G|` instead of `|W|`.
    pub taylor_masks: bool,
}

impl Default for CriterionOptions {
    fn default() -> Self {
        Self {
            block: 16,
            smooth: 0.5,
            h: 4,
            power: true,
            taylor_masks: false,
        }
    }
}

/// Records every prunable layer's signal over `images` (`[B, 3, H, W]`, preprocessed)
/// in batches of `batch`, on the CPU backend.
pub fn layer_signals(
    be: &CpuBackend,
    weights: &Weights,
    options: &VitOptions,
    images: &HostTensor,
    batch: usize,
    block: usize,
) -> Result<Vec<LayerSignal>, PruneError> {
    let layers = prunable_layers(weights, [block, block]);
    if layers.is_empty() {
        return Err(PruneError::Input(format!(
            "no block layer of this checkpoint splits into {block}x{block} blocks"
        )));
    }
    let vit =
        Vit::load(be.clone(), weights, options).map_err(|e| PruneError::Input(e.to_string()))?;
    let cfg = vit.config().clone();
    let get = |name: &str| -> Result<HostTensor, PruneError> {
        let shape = weights
            .shape(name)
            .ok_or_else(|| PruneError::Input(format!("no tensor {name}")))?
            .to_vec();
        Ok(weights.get(name, &shape)?)
    };
    let mut signals = layers
        .iter()
        .map(|l| {
            Ok(LayerSignal {
                layer: l.clone(),
                weight: get(&format!("{}.weight", l.prefix))?.data().to_vec(),
                grad: vec![0.0; l.outputs * l.inputs],
            })
        })
        .collect::<Result<Vec<_>, PruneError>>()?;
    let index = |prefix: &str| signals.iter().position(|s| s.layer.prefix == prefix);
    let slots: Vec<[Option<usize>; 4]> = (0..cfg.depth)
        .map(|i| {
            ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"]
                .map(|p| index(&format!("blocks.{i}.{p}")))
        })
        .collect();
    let &[n, c, hh, ww] = images.shape() else {
        return Err(PruneError::Shape(format!(
            "images must be [B, 3, H, W], got {:?}",
            images.shape()
        )));
    };
    let per = c * hh * ww;
    let mut rows_seen = 0usize;
    let bk = |e: crate::backend::BackendError| PruneError::Input(e.to_string());
    let mut start = 0;
    while start < n {
        let b = batch.max(1).min(n - start);
        let x = HostTensor::new(
            vec![b, c, hh, ww],
            images.data()[start * per..(start + b) * per].to_vec(),
        )
        .map_err(|e| PruneError::Shape(e.to_string()))?;
        start += b;
        let mut h = vit
            .head(&be.upload(&x).map_err(bk)?, 0)
            .map_err(|e| PruneError::Input(e.to_string()))?;
        rows_seen += b * cfg.num_tokens();
        for (i, slot) in slots.iter().enumerate() {
            let vb = |n: &str| format!("blocks.{i}.{n}");
            let ln = |x: &<CpuBackend as Backend>::Tensor, norm: &str| {
                let g = be
                    .upload(&get(&vb(&format!("{norm}.weight")))?)
                    .map_err(bk)?;
                let bb = be.upload(&get(&vb(&format!("{norm}.bias")))?).map_err(bk)?;
                be.layer_norm(x, &g, &bb, cfg.eps).map_err(bk)
            };
            // Runs one linear, recording its signal when it is pruned.
            let mut lin = |x: &<CpuBackend as Backend>::Tensor,
                           name: &str,
                           slot: Option<usize>|
             -> Result<<CpuBackend as Backend>::Tensor, PruneError> {
                let w = get(&vb(&format!("{name}.weight")))?;
                let bias = get(&vb(&format!("{name}.bias")))?;
                let layer = be.prepare_linear(&w, Some(&bias)).map_err(bk)?;
                let y = be.linear(x, &layer, Activation::Identity).map_err(bk)?;
                if let Some(s) = slot {
                    accumulate(&mut signals[s].grad, x, &y);
                }
                Ok(y)
            };
            let scale = ((cfg.embed_dim / cfg.num_heads) as f32).powf(-0.5);
            let t = ln(&h, "norm1")?;
            let qkv = lin(&t, "attn.qkv", slot[0])?;
            let a = be.attention(&qkv, cfg.num_heads, scale).map_err(bk)?;
            let a = lin(&a, "attn.proj", slot[1])?;
            h = be.add(&h, &a).map_err(bk)?;
            let t = ln(&h, "norm2")?;
            let t = lin(&t, "mlp.fc1", slot[2])?;
            let t = be.activate(&t, Activation::Gelu).map_err(bk)?;
            let t = lin(&t, "mlp.fc2", slot[3])?;
            h = be.add(&h, &t).map_err(bk)?;
        }
    }
    for s in &mut signals {
        let k = 2.0 / (rows_seen.max(1) * s.layer.outputs) as f64;
        s.grad.iter_mut().for_each(|g| *g *= k);
    }
    Ok(signals)
}

/// `grad += y^T x` over all rows (`x` `[.., in]`, `y` `[.., out]`), in f64.
fn accumulate(
    grad: &mut [f64],
    x: &crate::backend::cpu::CpuTensor,
    y: &crate::backend::cpu::CpuTensor,
) {
    use crate::backend::DeviceTensor;
    let (xi, yo) = (
        x.shape().last().copied().unwrap_or(1),
        y.shape().last().copied().unwrap_or(1),
    );
    for (xr, yr) in x.data().chunks_exact(xi).zip(y.data().chunks_exact(yo)) {
        for (o, &yv) in yr.iter().enumerate() {
            let row = &mut grad[o * xi..(o + 1) * xi];
            let yv = yv as f64;
            for (g, &xv) in row.iter_mut().zip(xr) {
                *g += yv * xv as f64;
            }
        }
    }
}

/// The sparsity of level `d` (as numpy's `linspace(0, 1, 101)`).
fn level(d: usize) -> f64 {
    if d + 1 == LEVELS {
        1.0
    } else {
        d as f64 * (1.0 / (LEVELS - 1) as f64)
    }
}

/// Blocks kept at sparsity `a` of `nb` (the repository's `int((1 - a) * nb)`).
fn kept(a: f64, nb: usize) -> usize {
    ((1.0 - a) * nb as f64) as usize
}

/// Block means of `values` `[out, in]` over `b x b` blocks, row-major over the grid.
fn block_means(values: &[f64], out: usize, inp: usize, b: usize) -> Vec<f64> {
    let (gr, gc) = (out / b, inp / b);
    let mut m = vec![0.0; gr * gc];
    for o in 0..out {
        for i in 0..inp {
            m[(o / b) * gc + i / b] += values[o * inp + i];
        }
    }
    let area = (b * b) as f64;
    m.iter_mut().for_each(|v| *v /= area);
    m
}

/// Block indices by decreasing score (ties by index, for determinism).
fn ranking(scores: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order
}

/// One layer's distortion curve (LEVELS points) and power curve.
pub fn curves(s: &LayerSignal, opts: &CriterionOptions) -> (Vec<f64>, Vec<f64>) {
    let (out, inp, b) = (s.layer.outputs, s.layer.inputs, opts.block);
    let wg: Vec<f64> = s
        .weight
        .iter()
        .zip(&s.grad)
        .map(|(&w, &g)| w as f64 * g)
        .collect();
    let abs: Vec<f64> = wg.iter().map(|v| v.abs()).collect();
    let order = ranking(&block_means(&abs, out, inp, b));
    let nb = order.len();
    // Per block: sum of (W G)^2 and of W G.
    let (gr, gc) = (out / b, inp / b);
    let (mut sq, mut lin) = (vec![0.0; gr * gc], vec![0.0; gr * gc]);
    for o in 0..out {
        for i in 0..inp {
            let v = wg[o * inp + i];
            sq[(o / b) * gc + i / b] += v * v;
            lin[(o / b) * gc + i / b] += v;
        }
    }
    let numel = (out * inp) as f64;
    let mut dist = vec![0.0; LEVELS];
    let (mut dropped, mut first, mut p, mut second) = (0usize, 0.0, 0.0, 0.0);
    for (d, slot) in dist.iter_mut().enumerate() {
        let drop = if d == 0 { 0 } else { nb - kept(level(d), nb) };
        let p_prev = p;
        // The lowest-ranked blocks go first.
        while dropped < drop {
            let blk = order[nb - 1 - dropped];
            first += sq[blk];
            p += lin[blk];
            dropped += 1;
        }
        if d > 0 {
            // g.ddW = -(p - p_prev), g.dW = -p: 0.5 (g.ddW)(g.ddW + 2 g.dW).
            let q = -(p - p_prev);
            second += 0.5 * q * (q - 2.0 * p);
        }
        *slot = first / numel + second;
    }
    if opts.smooth > 0.0 {
        let (mut last, w) = (0.0, opts.smooth);
        for (i, v) in dist.iter_mut().enumerate() {
            last = last * w + (1.0 - w) * *v;
            *v = if w == 1.0 {
                last
            } else {
                last / (1.0 - w.powi(i as i32 + 1))
            };
        }
    }
    let blocks = numel / (b * b) as f64;
    let power = (0..LEVELS)
        .map(|d| level(d) * blocks * (inp / 16) as f64)
        .collect();
    (dist, power)
}

/// Slopes at every level but the last (five-point stencil of half-width `h / 2` where
/// it fits; one-sided or central differences near the ends).
pub fn slopes(ys: &[f64], h: usize) -> Vec<f64> {
    let n = ys.len();
    (0..n.saturating_sub(1))
        .map(|i| {
            let hh = h.min(i).min(n - i - 1);
            let x = |j: usize| level(j);
            if hh < 2 && i < 2 {
                (ys[i + 1] - ys[i]) / (x(i + 1) - x(i))
            } else if hh < 2 {
                (ys[i + 1] - ys[i - 1]) / (x(i + 1) - x(i - 1))
            } else {
                let half = hh / 2;
                (-ys[i + hh] + 8.0 * ys[i + half] - 8.0 * ys[i - half] + ys[i - hh])
                    / (6.0 * (x(i + hh) - x(i)))
            }
        })
        .collect()
}

/// The model's FLOPs fraction with `amounts` pruned from `signals`' layers: kept
/// weights x positions over every linear and convolution (as LPViT counts them).
pub fn flops_fraction(
    weights: &Weights,
    signals: &[LayerSignal],
    amounts: &[f64],
    block: usize,
) -> f64 {
    let tokens = weights
        .shape("pos_embed")
        .map_or(1, |s| s.get(1).copied().unwrap_or(1));
    let (mut dense, mut kept_flops) = (0.0, 0.0);
    for name in weights.names() {
        let Some(prefix) = name.strip_suffix(".weight") else {
            continue;
        };
        let shape = weights.shape(name).unwrap_or(&[]);
        let positions = match (prefix, shape.len()) {
            ("patch_embed.proj", 4) => tokens.saturating_sub(1),
            ("head" | "head_dist", 2) => 1,
            (p, 2) if p.starts_with("blocks.") => tokens,
            _ => continue,
        } as f64;
        let n: usize = shape.iter().product();
        dense += n as f64 * positions;
        match signals.iter().position(|s| s.layer.prefix == prefix) {
            Some(i) => {
                let nb = n / (block * block);
                kept_flops += (kept(amounts[i], nb) * block * block) as f64 * positions;
            }
            None => kept_flops += n as f64 * positions,
        }
    }
    if dense == 0.0 {
        1.0
    } else {
        kept_flops / dense
    }
}

/// The criterion's choice for one FLOPs target.
#[derive(Debug, Clone)]
pub struct Allocation {
    /// Per layer (in `signals` order): the fraction of blocks pruned.
    pub amounts: Vec<f64>,
    /// Per layer: the block mask, row-major over `[out / b, in / b]`.
    pub masks: Vec<Vec<bool>>,
    /// The FLOPs fraction reached.
    pub flops: f64,
    /// The power term's weight.
    pub beta: f64,
    /// log2 of the common slope.
    pub slope_log2: f64,
}

/// Equal-slope allocation of `signals` to `target` (a FLOPs fraction).
pub fn allocate(
    weights: &Weights,
    signals: &[LayerSignal],
    target: f64,
    opts: &CriterionOptions,
) -> Allocation {
    let curves: Vec<(Vec<f64>, Vec<f64>)> = signals.iter().map(|s| curves(s, opts)).collect();
    let max = |v: Vec<f64>| v.into_iter().fold(f64::MIN, f64::max);
    let beta = if opts.power {
        let n = curves.len() as f64;
        let dmax = curves.iter().map(|(d, _)| max(slopes(d, 10))).sum::<f64>() / n;
        let pmax = curves.iter().map(|(_, p)| max(slopes(p, 10))).sum::<f64>() / n;
        if pmax > 0.0 {
            dmax / pmax
        } else {
            0.0
        }
    } else {
        0.0
    };
    let grads: Vec<Vec<f64>> = curves
        .iter()
        .map(|(d, p)| {
            let rd: Vec<f64> = d.iter().zip(p).map(|(d, p)| d + beta * p).collect();
            slopes(&rd, opts.h)
        })
        .collect();
    let at = |s: f64| -> Vec<f64> {
        let lam = s.exp2();
        grads
            .iter()
            .map(|g| {
                let mut best = 0;
                for (i, v) in g.iter().enumerate() {
                    if (v - lam).abs() < (g[best] - lam).abs() {
                        best = i;
                    }
                }
                level(best).min(MAX_PRUNED)
            })
            .collect()
    };
    let (mut lo, mut hi) = (-100.0f64, 100.0f64);
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if flops_fraction(weights, signals, &at(mid), opts.block) <= target {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    let amounts = at(hi);
    let masks = signals
        .iter()
        .zip(&amounts)
        .map(|(s, &a)| {
            let (out, inp, b) = (s.layer.outputs, s.layer.inputs, opts.block);
            let score: Vec<f64> = if opts.taylor_masks {
                s.weight
                    .iter()
                    .zip(&s.grad)
                    .map(|(&w, &g)| (w as f64 * g).abs())
                    .collect()
            } else {
                s.weight.iter().map(|&w| (w as f64).abs()).collect()
            };
            let order = ranking(&block_means(&score, out, inp, b));
            let mut keep = vec![false; order.len()];
            for &i in &order[..kept(a, order.len())] {
                keep[i] = true;
            }
            keep
        })
        .collect();
    Allocation {
        flops: flops_fraction(weights, signals, &amounts, opts.block),
        amounts,
        masks,
        beta,
        slope_log2: hi,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::{seeded_vit_safetensors, VitSpec};

    #[test]
    fn allocation_meets_the_flops_target_within_the_per_layer_cap() {
        let spec = VitSpec {
            image_size: 32,
            patch_size: 8,
            embed_dim: 64,
            depth: 2,
            num_heads: 2,
            num_classes: 10,
        };
        let w = Weights::from_bytes(seeded_vit_safetensors(&spec, 2), "seeded").unwrap();
        let be = CpuBackend::new(1).unwrap();
        let n = 4 * 3 * 32 * 32;
        let x = HostTensor::new(
            vec![4, 3, 32, 32],
            (0..n)
                .map(|i| ((i * 7919) % 255) as f32 / 127.5 - 1.0)
                .collect(),
        )
        .unwrap();
        let opts = VitOptions {
            num_heads: Some(2),
            ..VitOptions::default()
        };
        let signals = layer_signals(&be, &w, &opts, &x, 2, 16).unwrap();
        assert_eq!(signals.len(), 8);
        assert!(signals.iter().all(|s| s.grad.iter().any(|&g| g != 0.0)));
        let copts = CriterionOptions::default();
        let (dist, _) = curves(&signals[0], &copts);
        assert_eq!(dist[0], 0.0);
        assert!(dist[LEVELS - 1] > dist[LEVELS / 2]);
        let mut last = 1.0;
        for target in [0.8, 0.5, 0.3] {
            let a = allocate(&w, &signals, target, &copts);
            assert!(a.flops <= target + 1e-9, "{target}: {}", a.flops);
            assert!(a.flops < last);
            last = a.flops;
            assert!(a.amounts.iter().all(|&v| v <= MAX_PRUNED));
            for (m, &am) in a.masks.iter().zip(&a.amounts) {
                assert_eq!(m.iter().filter(|&&k| k).count(), kept(am, m.len()));
            }
        }
    }
}
