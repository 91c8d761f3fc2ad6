//! Affine quantization kernels: range, quantize, dequantize, per tensor and per channel.
//!
//! Written as fixed-width lane loops over `chunks_exact` so that LLVM vectorises them
//! on any target (SSE2/AVX2/AVX-512 on x86-64, NEON on ARM) without `unsafe` or
//! per-architecture code; `splitstream-bench codec` measures the result.

/// Scale and offset of one group of elements: `x ≈ offset + q * scale`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Affine {
    pub(crate) scale: f32,
    pub(crate) offset: f32,
}

/// Lanes per step: 16 f32 is one AVX-512 register, two AVX2 or four NEON/SSE ones.
const LANES: usize = 16;

/// 2^23: adding it to a float in `[0, 2^23)` leaves the nearest integer (ties to
/// even) in the low mantissa bits, which rounds without a float-to-int conversion.
const ROUND_MAGIC: f32 = 8_388_608.0;

/// Minimum and maximum of `data`, ignoring NaN. `(inf, -inf)` when nothing counts.
pub(crate) fn min_max(data: &[f32]) -> (f32, f32) {
    let mut lo = [f32::INFINITY; LANES];
    let mut hi = [f32::NEG_INFINITY; LANES];
    let chunks = data.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for i in 0..LANES {
            // Select form (not f32::min) so LLVM emits packed min/max; a NaN compares
            // false and leaves the lane unchanged.
            lo[i] = if chunk[i] < lo[i] { chunk[i] } else { lo[i] };
            hi[i] = if chunk[i] > hi[i] { chunk[i] } else { hi[i] };
        }
    }
    let mut mn = f32::INFINITY;
    let mut mx = f32::NEG_INFINITY;
    for &v in lo.iter().chain(rest) {
        mn = if v < mn { v } else { mn };
    }
    for &v in hi.iter().chain(rest) {
        mx = if v > mx { v } else { mx };
    }
    (mn, mx)
}

/// Parameters that map `[min, max]` onto `0..=max_symbol`. `None` if the range is
/// infinite (an infinite element, or a span beyond f32).
pub(crate) fn params_for_range(min: f32, max: f32, max_symbol: u8) -> Option<Affine> {
    if min > max || min.is_nan() || max.is_nan() {
        // Empty or all-NaN: any parameters reproduce it; zero keeps it canonical.
        return Some(Affine {
            scale: 0.0,
            offset: 0.0,
        });
    }
    let span = max - min;
    if !min.is_finite() || !max.is_finite() || !span.is_finite() {
        return None;
    }
    Some(Affine {
        scale: span / f32::from(max_symbol),
        offset: min,
    })
}

fn inverse(scale: f32) -> f32 {
    if scale > 0.0 {
        1.0 / scale
    } else {
        0.0
    }
}

#[inline(always)]
fn quantize_one(x: f32, offset: f32, inv: f32, max_symbol: f32) -> u8 {
    let v = (x - offset) * inv;
    // NaN fails both comparisons' true arms and becomes 0.
    let v = if v > 0.0 { v } else { 0.0 };
    let v = if v < max_symbol { v } else { max_symbol };
    // v is in [0, 255]: the low byte of (v + 2^23)'s bits is round(v).
    (v + ROUND_MAGIC).to_bits() as u8
}

/// `out[i] = round((data[i] - offset) / scale)` clamped to `0..=max_symbol`.
pub(crate) fn quantize(data: &[f32], p: Affine, max_symbol: u8, out: &mut [u8]) {
    let inv = inverse(p.scale);
    let maxq = f32::from(max_symbol);
    let off = p.offset;
    let n = data.len().min(out.len());
    let (data, out) = (&data[..n], &mut out[..n]);
    let mut src = data.chunks_exact(LANES);
    let mut dst = out.chunks_exact_mut(LANES);
    for (x, o) in (&mut src).zip(&mut dst) {
        for i in 0..LANES {
            o[i] = quantize_one(x[i], off, inv, maxq);
        }
    }
    for (x, o) in src.remainder().iter().zip(dst.into_remainder()) {
        *o = quantize_one(*x, off, inv, maxq);
    }
}

/// `out[i] = offset + q[i] * scale`.
pub(crate) fn dequantize(q: &[u8], p: Affine, out: &mut [f32]) {
    let (off, scale) = (p.offset, p.scale);
    let n = q.len().min(out.len());
    let (q, out) = (&q[..n], &mut out[..n]);
    let mut src = q.chunks_exact(LANES);
    let mut dst = out.chunks_exact_mut(LANES);
    for (s, o) in (&mut src).zip(&mut dst) {
        for i in 0..LANES {
            o[i] = off + f32::from(s[i]) * scale;
        }
    }
    for (s, o) in src.remainder().iter().zip(dst.into_remainder()) {
        *o = off + f32::from(*s) * scale;
    }
}

/// A tensor seen as `[outer, channels, inner]` around the quantization axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ChannelLayout {
    pub(crate) outer: usize,
    pub(crate) channels: usize,
    pub(crate) inner: usize,
}

impl ChannelLayout {
    /// The layout of `shape` around `axis` (which the caller has checked is in range).
    pub(crate) fn new(shape: &[usize], axis: usize) -> Self {
        let outer = shape.iter().take(axis).product();
        let channels = shape.get(axis).copied().unwrap_or(1);
        let inner = shape.iter().skip(axis + 1).product();
        Self {
            outer,
            channels,
            inner,
        }
    }

    fn block(&self) -> usize {
        self.channels * self.inner
    }
}

/// Per-channel `(min, max)`, ignoring NaN.
pub(crate) fn min_max_per_channel(
    data: &[f32],
    layout: ChannelLayout,
    lo: &mut Vec<f32>,
    hi: &mut Vec<f32>,
) {
    lo.clear();
    lo.resize(layout.channels, f32::INFINITY);
    hi.clear();
    hi.resize(layout.channels, f32::NEG_INFINITY);
    if layout.block() == 0 {
        return;
    }
    if layout.inner == 1 {
        // Channel is the last axis: rows of `channels` elements, min/max lane-wise
        // against the running rows (vectorises along the channel axis).
        for row in data.chunks_exact(layout.channels) {
            for ((l, h), &x) in lo.iter_mut().zip(hi.iter_mut()).zip(row) {
                *l = if x < *l { x } else { *l };
                *h = if x > *h { x } else { *h };
            }
        }
    } else {
        for block in data.chunks_exact(layout.block()) {
            for ((l, h), run) in lo
                .iter_mut()
                .zip(hi.iter_mut())
                .zip(block.chunks_exact(layout.inner))
            {
                let (mn, mx) = min_max(run);
                *l = if mn < *l { mn } else { *l };
                *h = if mx > *h { mx } else { *h };
            }
        }
    }
}

/// Per-channel quantization with `params[c]` for channel `c`.
pub(crate) fn quantize_per_channel(
    data: &[f32],
    layout: ChannelLayout,
    params: &[Affine],
    max_symbol: u8,
    offs: &mut Vec<f32>,
    invs: &mut Vec<f32>,
    out: &mut [u8],
) {
    if layout.block() == 0 {
        return;
    }
    if layout.inner == 1 {
        offs.clear();
        offs.extend(params.iter().map(|p| p.offset));
        invs.clear();
        invs.extend(params.iter().map(|p| inverse(p.scale)));
        let maxq = f32::from(max_symbol);
        for (row, orow) in data
            .chunks_exact(layout.channels)
            .zip(out.chunks_exact_mut(layout.channels))
        {
            for (((o, &x), &off), &inv) in
                orow.iter_mut().zip(row).zip(offs.iter()).zip(invs.iter())
            {
                *o = quantize_one(x, off, inv, maxq);
            }
        }
    } else {
        for (block, oblock) in data
            .chunks_exact(layout.block())
            .zip(out.chunks_exact_mut(layout.block()))
        {
            for ((run, orun), &p) in block
                .chunks_exact(layout.inner)
                .zip(oblock.chunks_exact_mut(layout.inner))
                .zip(params)
            {
                quantize(run, p, max_symbol, orun);
            }
        }
    }
}

/// Per-channel dequantization with `params[c]` for channel `c`.
pub(crate) fn dequantize_per_channel(
    q: &[u8],
    layout: ChannelLayout,
    params: &[Affine],
    offs: &mut Vec<f32>,
    scales: &mut Vec<f32>,
    out: &mut [f32],
) {
    if layout.block() == 0 {
        return;
    }
    if layout.inner == 1 {
        offs.clear();
        offs.extend(params.iter().map(|p| p.offset));
        scales.clear();
        scales.extend(params.iter().map(|p| p.scale));
        for (row, orow) in q
            .chunks_exact(layout.channels)
            .zip(out.chunks_exact_mut(layout.channels))
        {
            for (((o, &s), &off), &scale) in
                orow.iter_mut().zip(row).zip(offs.iter()).zip(scales.iter())
            {
                *o = off + f32::from(s) * scale;
            }
        }
    } else {
        for (block, oblock) in q
            .chunks_exact(layout.block())
            .zip(out.chunks_exact_mut(layout.block()))
        {
            for ((run, orun), &p) in block
                .chunks_exact(layout.inner)
                .zip(oblock.chunks_exact_mut(layout.inner))
                .zip(params)
            {
                dequantize(run, p, orun);
            }
        }
    }
}

/// Index of the first element that is neither 0 nor 1, if any.
pub(crate) fn first_non_binary(data: &[f32]) -> Option<usize> {
    // Branch-free scan in blocks; locate precisely only when a block has a hit.
    const BLOCK: usize = 256;
    for (b, block) in data.chunks(BLOCK).enumerate() {
        let bad = block
            .iter()
            .fold(false, |acc, &x| acc | ((x != 0.0) & (x != 1.0)));
        if bad {
            let i = block.iter().position(|&x| x != 0.0 && x != 1.0)?;
            return Some(b * BLOCK + i);
        }
    }
    None
}

/// Binary symbols: 1 where the element is non-zero.
pub(crate) fn binary_symbols(data: &[f32], out: &mut [u8]) {
    for (o, &x) in out.iter_mut().zip(data) {
        *o = u8::from(x != 0.0);
    }
}

/// `out[i] = q[i]` as 0.0 or 1.0.
pub(crate) fn binary_values(q: &[u8], out: &mut [f32]) {
    for (o, &s) in out.iter_mut().zip(q) {
        *o = f32::from(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_max_ignores_nan_and_covers_the_tail() {
        let mut v: Vec<f32> = (0..37).map(|i| i as f32).collect();
        v[3] = f32::NAN;
        v[36] = -5.0;
        assert_eq!(min_max(&v), (-5.0, 35.0));
    }

    #[test]
    fn quantize_rounds_to_nearest_and_clamps() {
        let p = Affine {
            scale: 1.0,
            offset: 0.0,
        };
        let mut q = [0u8; 6];
        quantize(&[0.4, 0.6, 254.6, 300.0, -3.0, f32::NAN], p, 255, &mut q);
        assert_eq!(q, [0, 1, 255, 255, 0, 0]);
    }

    #[test]
    fn per_channel_layout_splits_around_the_axis() {
        assert_eq!(
            ChannelLayout::new(&[2, 197, 192], 1),
            ChannelLayout {
                outer: 2,
                channels: 197,
                inner: 192
            }
        );
    }
}
