//! 2-D convolution, three ways by shape:
//!
//! - **Depthwise** (`groups == C == O`): a direct kernel per channel plane, no im2col
//!   (which would copy each input value `kh * kw` times for a product of depth 9).
//!   Per output row and kernel tap it adds one shifted input row times the tap's weight
//!   over the columns where the tap lands inside the image, so the inner loop has no
//!   bounds tests and, at stride 1, is a contiguous axpy the compiler vectorises.
//! - **Pointwise** (1x1, stride 1, no padding): per group one GEMM straight on the
//!   input planes, `W_g [O/g, C/g] x X_g [C/g, H*W]`, no im2col (it would be a copy).
//! - **Everything else**: im2col per group, then one GEMM per group. With one group and
//!   no dilation this is exactly the original patch-embedding path, so the ViT's
//!   numerics do not move.
//!
//! The bias initialises the output and the fused activation runs over it at the end.

use crate::backend::ops::{conv2d_layer_geometry, ConvLayerGeometry};
use crate::backend::{conv2d_geometry, BackendError, Conv2dGeometry, Conv2dSpec};
use crate::tensor::{checked_numel, HostTensor};

use super::matmul::{gemm, View};
use super::{CpuBackend, CpuTensor, Isa};

/// A convolution ready for one of the kernels above.
#[derive(Debug)]
pub struct CpuConv2d {
    /// `[out, in / groups * kh * kw]` row-major (PyTorch's layout, flattened).
    weight: Vec<f32>,
    bias: Option<Vec<f32>>,
    geo: ConvLayerGeometry,
    spec: Conv2dSpec,
}

impl CpuConv2d {
    pub(super) fn prepare(
        weight: &HostTensor,
        bias: Option<&HostTensor>,
        spec: Conv2dSpec,
    ) -> Result<Self, BackendError> {
        let geo = conv2d_layer_geometry(weight.shape(), bias.map(|b| b.shape()), &spec)?;
        Ok(Self {
            weight: weight.data().to_vec(),
            bias: bias.map(|b| b.data().to_vec()),
            geo,
            spec,
        })
    }

    fn is_depthwise(&self) -> bool {
        self.spec.groups == self.geo.in_channels && self.spec.groups == self.geo.out_channels
    }

    fn is_pointwise(&self) -> bool {
        self.geo.kernel == [1, 1] && self.spec.stride == [1, 1] && self.spec.padding == [0, 0]
    }
}

/// The extent of a strided, padded convolution along one axis.
#[derive(Clone, Copy)]
struct Axis {
    /// Input size.
    n: usize,
    /// Output size.
    out: usize,
    stride: usize,
    pad: usize,
    dilation: usize,
}

impl Axis {
    /// The output positions `lo..hi` at which tap `k` reads inside the input
    /// (`o * stride + k * dilation - pad` in `0..n`).
    fn valid(&self, k: usize) -> (usize, usize) {
        let off = k * self.dilation;
        // First o with o * stride + off >= pad.
        let lo = self.pad.saturating_sub(off).div_ceil(self.stride);
        // Last o with o * stride + off < n + pad, plus one.
        let hi = (self.n + self.pad)
            .checked_sub(off)
            .map_or(0, |room| room.div_ceil(self.stride));
        (lo.min(self.out), hi.min(self.out).max(lo.min(self.out)))
    }
}

impl CpuBackend {
    pub(super) fn conv2d_impl(
        &self,
        x: &CpuTensor,
        layer: &CpuConv2d,
    ) -> Result<CpuTensor, BackendError> {
        let Conv2dSpec {
            stride,
            padding,
            dilation,
            groups: _,
            activation,
        } = layer.spec;
        let geo = conv2d_geometry(
            &x.shape,
            layer.geo.in_channels,
            layer.geo.span,
            stride,
            padding,
        )?;
        let o = layer.geo.out_channels;
        let shape = vec![geo.batch, o, geo.ho, geo.wo];
        let numel = checked_numel(&shape)
            .ok_or_else(|| BackendError::shape("conv2d", format!("output {shape:?} too large")))?;
        let positions = geo.ho * geo.wo;
        let mut out = vec![0.0f32; numel];
        if let Some(bias) = &layer.bias {
            for plane_group in out.chunks_exact_mut(o * positions.max(1)) {
                for (plane, &v) in plane_group.chunks_exact_mut(positions.max(1)).zip(bias) {
                    plane.fill(v);
                }
            }
        }
        if layer.is_depthwise() {
            let [kh, kw] = layer.geo.kernel;
            let ay = Axis {
                n: geo.h,
                out: geo.ho,
                stride: stride[0],
                pad: padding[0],
                dilation: dilation[0],
            };
            let ax = Axis {
                n: geo.w,
                out: geo.wo,
                stride: stride[1],
                pad: padding[1],
                dilation: dilation[1],
            };
            let plane_in = geo.h * geo.w;
            let isa = self.isa;
            self.for_row_chunks(&mut out, positions, |plane0, chunk| {
                for (i, dst) in chunk.chunks_exact_mut(positions.max(1)).enumerate() {
                    let p = plane0 + i;
                    let c = p % o;
                    let src = &x.data[p * plane_in..(p + 1) * plane_in];
                    let w = &layer.weight[c * kh * kw..(c + 1) * kh * kw];
                    depthwise_plane_isa(isa, src, w, [kh, kw], ay, ax, dst);
                }
            });
        } else if layer.is_pointwise() {
            self.pointwise(x, layer, &geo, &mut out);
        } else {
            self.im2col_conv(x, layer, &geo, &mut out)?;
        }
        self.activate_in_place(activation, &mut out, positions);
        Ok(CpuTensor::new(shape, out))
    }

    /// 1x1, stride 1, unpadded: `out[b, g] += W_g X[b, g]` with `X[b, g]` the group's
    /// input planes read in place as a `[C/g, H*W]` matrix.
    fn pointwise(&self, x: &CpuTensor, layer: &CpuConv2d, geo: &Conv2dGeometry, out: &mut [f32]) {
        let groups = layer.spec.groups;
        let (c, o) = (geo.channels, layer.geo.out_channels);
        let (cg, og) = (c / groups, o / groups);
        let hw = geo.h * geo.w;
        for b in 0..geo.batch {
            for g in 0..groups {
                self.in_pool(|| {
                    gemm(
                        og,
                        hw,
                        cg,
                        out,
                        View::row_major((b * o + g * og) * hw, hw),
                        layer.bias.is_some(),
                        &layer.weight,
                        View::row_major(g * og * cg, cg),
                        &x.data,
                        View::row_major((b * c + g * cg) * hw, hw),
                        1.0,
                        self.threads,
                    )
                });
            }
        }
    }

    /// im2col of each group's channels, then `out[pos, o] += cols[pos, patch] W^T`.
    fn im2col_conv(
        &self,
        x: &CpuTensor,
        layer: &CpuConv2d,
        geo: &Conv2dGeometry,
        out: &mut [f32],
    ) -> Result<(), BackendError> {
        let Conv2dGeometry {
            batch,
            channels,
            h,
            w,
            ho,
            wo,
        } = *geo;
        let [kh, kw] = layer.geo.kernel;
        let [sh, sw] = layer.spec.stride;
        let [ph, pw] = layer.spec.padding;
        let [dh, dw] = layer.spec.dilation;
        let groups = layer.spec.groups;
        let o = layer.geo.out_channels;
        let (cg, og) = (channels / groups, o / groups);
        let positions = ho * wo;
        let patch = cg * kh * kw;
        let cols_len = checked_numel(&[positions, patch])
            .ok_or_else(|| BackendError::shape("conv2d", "im2col buffer too large"))?;
        let mut cols = vec![0.0f32; cols_len];
        for b in 0..batch {
            for g in 0..groups {
                let img =
                    &x.data[(b * channels + g * cg) * h * w..(b * channels + (g + 1) * cg) * h * w];
                let im2col = Im2col {
                    channels: cg,
                    kernel: [kh, kw],
                    ay: Axis {
                        n: h,
                        out: ho,
                        stride: sh,
                        pad: ph,
                        dilation: dh,
                    },
                    ax: Axis {
                        n: w,
                        out: wo,
                        stride: sw,
                        pad: pw,
                        dilation: dw,
                    },
                };
                // Rows of output positions in parallel (pure copies: the split cannot
                // change a value).
                self.for_row_chunks(&mut cols, wo * patch, |oy0, chunk| {
                    im2col.fill(img, oy0, chunk)
                });
                // dst[pos, o] stored channel-major (NCHW): row stride 1, column stride HW.
                self.in_pool(|| {
                    gemm(
                        positions,
                        og,
                        patch,
                        out,
                        View {
                            offset: (b * o + g * og) * positions,
                            rs: 1,
                            cs: positions,
                        },
                        layer.bias.is_some(),
                        &cols,
                        View::row_major(0, patch),
                        &layer.weight,
                        View {
                            offset: g * og * patch,
                            rs: 1,
                            cs: patch,
                        },
                        1.0,
                        self.threads,
                    )
                });
            }
        }
        Ok(())
    }
}

/// The im2col layout of one group: one row per output position, `(c, ky, kx)` along
/// the row, matching the flattened weight `[O, C/g * kh * kw]`.
struct Im2col {
    /// Input channels of the group.
    channels: usize,
    kernel: [usize; 2],
    ay: Axis,
    ax: Axis,
}

impl Im2col {
    /// Fills the rows of output rows `oy0..` that `cols` holds (whole output rows of
    /// `wo * patch` values) from the group's planes `img` `[C/g, h, w]`.
    ///
    /// For each (output row, channel, ky) the input row is found once, then the output
    /// columns whose taps all land inside it (the interior, `Axis::valid` of the first
    /// and last tap) copy `kw` values each without bounds tests; only the columns at
    /// the edges test each tap. Every value is a copy or a padding zero, so the layout
    /// and the bits are those of a naive im2col.
    fn fill(&self, img: &[f32], oy0: usize, cols: &mut [f32]) {
        let [kh, kw] = self.kernel;
        let (ay, ax) = (self.ay, self.ax);
        let (h, w, wo) = (ay.n, ax.n, ax.out);
        let patch = self.channels * kh * kw;
        let interior = (ax.valid(0).0, ax.valid(kw - 1).1);
        for (r, out_row) in cols.chunks_exact_mut(wo * patch).enumerate() {
            let oy = oy0 + r;
            for c in 0..self.channels {
                for ky in 0..kh {
                    let tap0 = (c * kh + ky) * kw;
                    let iy = (oy * ay.stride + ky * ay.dilation) as isize - ay.pad as isize;
                    let runs = out_row
                        .chunks_exact_mut(patch)
                        .map(|p| &mut p[tap0..tap0 + kw]);
                    if iy < 0 || iy as usize >= h {
                        runs.for_each(|d| d.fill(0.0));
                        continue;
                    }
                    let src_row = &img[(c * h + iy as usize) * w..][..w];
                    for (ox, dst) in runs.enumerate() {
                        if ox >= interior.0 && ox < interior.1 {
                            // Inside: tap kx reads ix0 + kx * dilation, all in the row.
                            let ix0 = ox * ax.stride - ax.pad;
                            let taps = src_row[ix0..].iter().step_by(ax.dilation);
                            for (d, &v) in dst.iter_mut().zip(taps) {
                                *d = v;
                            }
                            continue;
                        }
                        for (kx, d) in dst.iter_mut().enumerate() {
                            let ix = (ox * ax.stride + kx * ax.dilation) as isize - ax.pad as isize;
                            *d = if ix < 0 || ix as usize >= w {
                                0.0
                            } else {
                                src_row[ix as usize]
                            };
                        }
                    }
                }
            }
        }
    }
}

/// [`depthwise_plane`] compiled for the widest vectors `isa` allows: the loop is plain
/// Rust, the target feature only lets the compiler vectorise it wider. Each output is
/// a chain of separate multiplies and adds (Rust never contracts them into FMAs), so
/// every ISA gives the same bits.
fn depthwise_plane_isa(
    isa: Isa,
    src: &[f32],
    w: &[f32],
    kernel: [usize; 2],
    ay: Axis,
    ax: Axis,
    dst: &mut [f32],
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa` is only Avx512 when the CPU reported avx512f.
        Isa::Avx512 => unsafe { depthwise_plane_avx512(src, w, kernel, ay, ax, dst) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa` is only Avx2 when the CPU reported avx2 and fma.
        Isa::Avx2 => unsafe { depthwise_plane_avx2(src, w, kernel, ay, ax, dst) },
        _ => depthwise_plane(src, w, kernel, ay, ax, dst),
    }
}

/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn depthwise_plane_avx512(
    src: &[f32],
    w: &[f32],
    kernel: [usize; 2],
    ay: Axis,
    ax: Axis,
    dst: &mut [f32],
) {
    depthwise_plane(src, w, kernel, ay, ax, dst)
}

/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn depthwise_plane_avx2(
    src: &[f32],
    w: &[f32],
    kernel: [usize; 2],
    ay: Axis,
    ax: Axis,
    dst: &mut [f32],
) {
    depthwise_plane(src, w, kernel, ay, ax, dst)
}

/// One channel of a depthwise convolution: `dst` (`[ho, wo]`, holding the bias) gains
/// every tap's contribution from `src` (`[h, w]`).
#[inline(always)]
fn depthwise_plane(
    src: &[f32],
    w: &[f32],
    [kh, kw]: [usize; 2],
    ay: Axis,
    ax: Axis,
    dst: &mut [f32],
) {
    let wo = ax.out;
    let x_ranges: Vec<(usize, usize)> = (0..kw).map(|kx| ax.valid(kx)).collect();
    for ky in 0..kh {
        let (y_lo, y_hi) = ay.valid(ky);
        for oy in y_lo..y_hi {
            let iy = oy * ay.stride + ky * ay.dilation - ay.pad;
            let src_row = &src[iy * ax.n..(iy + 1) * ax.n];
            let dst_row = &mut dst[oy * wo..(oy + 1) * wo];
            for (kx, &(x_lo, x_hi)) in x_ranges.iter().enumerate() {
                if x_lo >= x_hi {
                    continue;
                }
                let tap = w[ky * kw + kx];
                // Input column of output x_lo.
                let ix0 = x_lo * ax.stride + kx * ax.dilation - ax.pad;
                let dst_run = &mut dst_row[x_lo..x_hi];
                if ax.stride == 1 {
                    let src_run = &src_row[ix0..ix0 + dst_run.len()];
                    for (d, &s) in dst_run.iter_mut().zip(src_run) {
                        *d += tap * s;
                    }
                } else {
                    let src_run = src_row[ix0..].iter().step_by(ax.stride);
                    for (d, &s) in dst_run.iter_mut().zip(src_run) {
                        *d += tap * s;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// im2col by definition, one value at a time.
    fn naive(img: &[f32], c: usize, [h, w]: [usize; 2], cv: &Im2col) -> Vec<f32> {
        let [kh, kw] = cv.kernel;
        let (ay, ax) = (cv.ay, cv.ax);
        let mut cols = Vec::new();
        for oy in 0..ay.out {
            for ox in 0..ax.out {
                for ci in 0..c {
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let iy = (oy * ay.stride + ky * ay.dilation) as isize - ay.pad as isize;
                            let ix = (ox * ax.stride + kx * ax.dilation) as isize - ax.pad as isize;
                            let inside =
                                (0..h as isize).contains(&iy) && (0..w as isize).contains(&ix);
                            cols.push(if inside {
                                img[(ci * h + iy as usize) * w + ix as usize]
                            } else {
                                0.0
                            });
                        }
                    }
                }
            }
        }
        cols
    }

    #[test]
    fn im2col_fills_exactly_what_the_definition_says() {
        // (c, h, w, kernel, stride, pad, dilation): patch embeddings, padded, strided,
        // dilated, kernels as wide as the padded input, an empty plane.
        let geometries = [
            (3, 16, 16, [4, 4], [4, 4], [0, 0], [1, 1]),
            (2, 7, 6, [3, 2], [2, 1], [1, 1], [1, 1]),
            (3, 9, 11, [3, 3], [1, 2], [2, 3], [2, 3]),
            (1, 4, 5, [3, 3], [1, 1], [1, 1], [1, 1]),
            (2, 3, 2, [5, 4], [1, 1], [1, 1], [1, 1]),
            (1, 5, 1, [3, 3], [2, 1], [1, 1], [1, 1]),
            (1, 2, 0, [1, 3], [1, 1], [0, 3], [1, 2]),
        ];
        for (c, h, w, kernel, stride, pad, dilation) in geometries {
            let span = |k: usize, d: usize| (k - 1) * d + 1;
            let out = |n: usize, i: usize| {
                (n + 2 * pad[i] - span(kernel[i], dilation[i])) / stride[i] + 1
            };
            let cv = Im2col {
                channels: c,
                kernel,
                ay: Axis {
                    n: h,
                    out: out(h, 0),
                    stride: stride[0],
                    pad: pad[0],
                    dilation: dilation[0],
                },
                ax: Axis {
                    n: w,
                    out: out(w, 1),
                    stride: stride[1],
                    pad: pad[1],
                    dilation: dilation[1],
                },
            };
            let img: Vec<f32> = (0..c * h * w).map(|i| i as f32 + 1.0).collect();
            let want = naive(&img, c, [h, w], &cv);
            let mut got = vec![f32::NAN; want.len()];
            let row = cv.ax.out * c * kernel[0] * kernel[1];
            if row > 0 {
                // In two calls, as the parallel split makes them.
                let split = (cv.ay.out / 2) * row;
                let (top, bottom) = got.split_at_mut(split);
                cv.fill(&img, 0, top);
                cv.fill(&img, cv.ay.out / 2, bottom);
            }
            assert!(
                got.iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "im2col differs for c{c} {h}x{w} k{kernel:?} s{stride:?} p{pad:?} d{dilation:?}"
            );
        }
    }
}
