//! Pooling and resampling over `[B, C, H, W]`, one channel plane per work item.
//!
//! Both precompute what depends on the output column alone (valid window columns,
//! source columns and weights) once per call, so the per-pixel loops do no division.

use crate::backend::ops::{pool2d_geometry, resize_geometry, PlaneGeometry};
use crate::backend::{BackendError, Pool2dSpec, PoolKind, ResizeMode};

use super::{CpuBackend, CpuTensor};

/// Input indices `lo..hi` covered by output `o`'s window along one axis (padding
/// excluded).
fn window(o: usize, stride: usize, pad: usize, kernel: usize, n: usize) -> (usize, usize) {
    let start = o * stride;
    let lo = start.saturating_sub(pad).min(n);
    let hi = (start + kernel).saturating_sub(pad).min(n);
    (lo, hi.max(lo))
}

/// PyTorch's bilinear source coordinate for output `dst` (`area_pixel_compute_source_index`
/// in f32, as its CPU kernel computes it), split into the two taps and the weight of the
/// second.
fn bilinear_taps(
    dst: usize,
    input: usize,
    output: usize,
    align_corners: bool,
) -> (usize, usize, f32) {
    let src = if align_corners {
        if output > 1 {
            (input - 1) as f32 / (output - 1) as f32 * dst as f32
        } else {
            0.0
        }
    } else {
        (input as f32 / output as f32 * (dst as f32 + 0.5) - 0.5).max(0.0)
    };
    let i0 = (src as usize).min(input - 1);
    let i1 = (i0 + 1).min(input - 1);
    (i0, i1, src - i0 as f32)
}

impl CpuBackend {
    pub(super) fn pool2d_impl(
        &self,
        x: &CpuTensor,
        spec: Pool2dSpec,
    ) -> Result<CpuTensor, BackendError> {
        let g = pool2d_geometry(&x.shape, &spec)?;
        let PlaneGeometry { h, w, ho, wo, .. } = g;
        let [kh, kw] = spec.kernel;
        let cols: Vec<(usize, usize)> = (0..wo)
            .map(|ox| window(ox, spec.stride[1], spec.padding[1], kw, w))
            .collect();
        // count_include_pad: the divisor is the whole window (every window lies inside
        // the padded input, see `pool2d_geometry`).
        let inv_area = 1.0 / (kh * kw) as f32;
        let mut out = vec![0.0f32; g.planes * ho * wo];
        self.for_row_chunks(&mut out, ho * wo, |p0, chunk| {
            for (i, dst) in chunk.chunks_exact_mut(ho * wo).enumerate() {
                let src = &x.data[(p0 + i) * h * w..(p0 + i + 1) * h * w];
                for (oy, dst_row) in dst.chunks_exact_mut(wo).enumerate() {
                    let (y0, y1) = window(oy, spec.stride[0], spec.padding[0], kh, h);
                    for (d, &(x0, x1)) in dst_row.iter_mut().zip(&cols) {
                        let rows = src[y0 * w..y1 * w].chunks_exact(w).map(|r| &r[x0..x1]);
                        *d = match spec.kind {
                            PoolKind::Max => rows.flatten().fold(f32::NEG_INFINITY, |m, &v| {
                                if v > m || v.is_nan() {
                                    v
                                } else {
                                    m
                                }
                            }),
                            PoolKind::Avg => {
                                rows.map(|r| r.iter().sum::<f32>()).sum::<f32>() * inv_area
                            }
                        };
                    }
                }
            }
        });
        Ok(CpuTensor::new(g.out_shape(&x.shape), out))
    }

    pub(super) fn resize_impl(
        &self,
        x: &CpuTensor,
        size: [usize; 2],
        mode: ResizeMode,
    ) -> Result<CpuTensor, BackendError> {
        let g = resize_geometry(&x.shape, size)?;
        let PlaneGeometry { h, w, ho, wo, .. } = g;
        let mut out = vec![0.0f32; g.planes * ho * wo];
        match mode {
            ResizeMode::Nearest => {
                // floor(dst * in / out), in integers (exact where a float scale is not).
                let xs: Vec<usize> = (0..wo).map(|ox| ox * w / wo).collect();
                self.for_row_chunks(&mut out, ho * wo, |p0, chunk| {
                    for (i, dst) in chunk.chunks_exact_mut(ho * wo).enumerate() {
                        let src = &x.data[(p0 + i) * h * w..(p0 + i + 1) * h * w];
                        for (oy, dst_row) in dst.chunks_exact_mut(wo).enumerate() {
                            let row = &src[oy * h / ho * w..][..w];
                            for (d, &sx) in dst_row.iter_mut().zip(&xs) {
                                *d = row[sx];
                            }
                        }
                    }
                });
            }
            ResizeMode::Bilinear { align_corners } => {
                let xs: Vec<(usize, usize, f32)> = (0..wo)
                    .map(|ox| bilinear_taps(ox, w, wo, align_corners))
                    .collect();
                self.for_row_chunks(&mut out, ho * wo, |p0, chunk| {
                    for (i, dst) in chunk.chunks_exact_mut(ho * wo).enumerate() {
                        let src = &x.data[(p0 + i) * h * w..(p0 + i + 1) * h * w];
                        for (oy, dst_row) in dst.chunks_exact_mut(wo).enumerate() {
                            let (y0, y1, ly) = bilinear_taps(oy, h, ho, align_corners);
                            let (r0, r1) = (&src[y0 * w..][..w], &src[y1 * w..][..w]);
                            for (d, &(x0, x1, lx)) in dst_row.iter_mut().zip(&xs) {
                                // PyTorch's weighting: (1 - l) * a + l * b per axis.
                                *d = (1.0 - ly) * ((1.0 - lx) * r0[x0] + lx * r0[x1])
                                    + ly * ((1.0 - lx) * r1[x0] + lx * r1[x1]);
                            }
                        }
                    }
                });
            }
        }
        Ok(CpuTensor::new(g.out_shape(&x.shape), out))
    }
}
