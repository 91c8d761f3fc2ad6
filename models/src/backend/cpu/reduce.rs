//! Reductions over one axis, and RMS norm.
//!
//! A reduction views its input as `[outer, n, inner]`. With `inner == 1` (the last
//! axis) each output is one contiguous row, summed with [`LANES`] independent partial
//! sums (vectorisable, and more accurate than one running sum). Otherwise each output
//! row of `inner` values accumulates the `n` input rows in order, a contiguous loop.
//! Work splits over `outer`; each output's order of operations is fixed, so results
//! do not depend on the thread count.

use crate::backend::ops::reduce_geometry;
use crate::backend::{BackendError, ReduceOp};

use super::{CpuBackend, CpuTensor};

/// Partial sums per contiguous row.
const LANES: usize = 8;

/// Sum of a contiguous row in [`LANES`] interleaved partial sums.
fn sum_row(row: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    for (a, &v) in acc.iter_mut().zip(chunks.remainder()) {
        *a += v;
    }
    acc.iter().sum()
}

/// Sum of squares of a contiguous row, likewise.
pub(crate) fn sum_squares(row: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v * v;
        }
    }
    for (a, &v) in acc.iter_mut().zip(chunks.remainder()) {
        *a += v * v;
    }
    acc.iter().sum()
}

/// NaN-propagating max (`torch.max`): once `m` is NaN, nothing compares above it.
#[inline(always)]
fn max_nan(m: f32, v: f32) -> f32 {
    if v > m || v.is_nan() {
        v
    } else {
        m
    }
}

impl CpuBackend {
    pub(super) fn reduce_impl(
        &self,
        x: &CpuTensor,
        axis: usize,
        op: ReduceOp,
    ) -> Result<CpuTensor, BackendError> {
        let (s, shape) = reduce_geometry(&x.shape, axis)?;
        let (n, inner) = (s.n, s.inner);
        let mut out = vec![0.0f32; s.outer * inner];
        let inv_n = 1.0 / n as f32;
        self.for_row_chunks(&mut out, inner, |o0, chunk| {
            for (r, dst) in chunk.chunks_exact_mut(inner).enumerate() {
                let src = &x.data[(o0 + r) * n * inner..(o0 + r + 1) * n * inner];
                if inner == 1 {
                    dst[0] = match op {
                        ReduceOp::Sum => sum_row(src),
                        ReduceOp::Mean => sum_row(src) * inv_n,
                        ReduceOp::Max => src.iter().fold(f32::NEG_INFINITY, |m, &v| max_nan(m, v)),
                        ReduceOp::ArgMax => argmax(src.iter().copied()) as f32,
                    };
                    continue;
                }
                let mut rows = src.chunks_exact(inner);
                match op {
                    ReduceOp::Sum | ReduceOp::Mean => {
                        for row in rows {
                            for (d, &v) in dst.iter_mut().zip(row) {
                                *d += v;
                            }
                        }
                        if op == ReduceOp::Mean {
                            dst.iter_mut().for_each(|d| *d *= inv_n);
                        }
                    }
                    ReduceOp::Max => {
                        dst.fill(f32::NEG_INFINITY);
                        for row in rows {
                            for (d, &v) in dst.iter_mut().zip(row) {
                                *d = max_nan(*d, v);
                            }
                        }
                    }
                    ReduceOp::ArgMax => {
                        // Running best value per column beside its index (in `dst`).
                        let mut best: Vec<f32> = rows.next().map_or_else(Vec::new, <[f32]>::to_vec);
                        dst.fill(0.0);
                        for (j, row) in rows.enumerate() {
                            for ((d, b), &v) in dst.iter_mut().zip(best.iter_mut()).zip(row) {
                                if !b.is_nan() && (v > *b || v.is_nan()) {
                                    *b = v;
                                    *d = (j + 1) as f32;
                                }
                            }
                        }
                    }
                }
            }
        });
        Ok(CpuTensor::new(shape, out))
    }

    pub(super) fn rms_norm_impl(
        &self,
        x: &CpuTensor,
        gamma: &CpuTensor,
        eps: f32,
    ) -> Result<CpuTensor, BackendError> {
        let d = crate::backend::ops::norm_dim("rms_norm", &x.shape, &gamma.shape)?;
        let mut out = vec![0.0f32; x.data.len()];
        self.for_row_chunks(&mut out, d, |row0, chunk| {
            let src = &x.data[row0 * d..row0 * d + chunk.len()];
            for (row, dst) in src.chunks_exact(d).zip(chunk.chunks_exact_mut(d)) {
                // HF: x * rsqrt(mean(x^2) + eps), then times the weight.
                let r = 1.0 / (sum_squares(row) / d as f32 + eps).sqrt();
                for ((o, &v), &g) in dst.iter_mut().zip(row).zip(&gamma.data) {
                    *o = v * r * g;
                }
            }
        });
        Ok(CpuTensor::new(x.shape.clone(), out))
    }
}

/// Index of the first maximum; a NaN counts as the largest (`torch.argmax`).
fn argmax(vals: impl Iterator<Item = f32>) -> usize {
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    for (j, v) in vals.enumerate() {
        if j == 0 || (!best_v.is_nan() && (v > best_v || v.is_nan())) {
            best = j;
            best_v = v;
        }
    }
    best
}
