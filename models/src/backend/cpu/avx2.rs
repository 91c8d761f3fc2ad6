//! AVX2+FMA kernels: 8 lanes, scalar tails through the portable kernels' formulas.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::kernels::{
    erf_table, ERF_DEGREE, ERF_LIMIT, ERF_STEPS, EXP_MIN, EXP_POLY, LN2_HI, LN2_LO,
};
use super::portable;

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps::<1>(v);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
    _mm_cvtss_f32(s)
}

#[inline(always)]
unsafe fn hmax(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps::<1>(v);
    let s = _mm_max_ps(lo, hi);
    let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_max_ss(s, _mm_shuffle_ps::<0b01>(s, s));
    _mm_cvtss_f32(s)
}

/// # Safety
/// The CPU must support AVX2 and FMA. Slices must all have `x.len()` elements.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn layer_norm_row(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    out: &mut [f32],
) {
    let d = x.len().min(gamma.len()).min(beta.len()).min(out.len());
    let body = d - d % 8;
    let px = x.as_ptr();
    let mut acc = _mm256_setzero_ps();
    for i in (0..body).step_by(8) {
        acc = _mm256_add_ps(acc, _mm256_loadu_ps(px.add(i)));
    }
    let mut sum = hsum(acc);
    for &v in &x[body..d] {
        sum += v;
    }
    let mean = sum / d as f32;
    let vmean = _mm256_set1_ps(mean);
    let mut acc = _mm256_setzero_ps();
    for i in (0..body).step_by(8) {
        let c = _mm256_sub_ps(_mm256_loadu_ps(px.add(i)), vmean);
        acc = _mm256_fmadd_ps(c, c, acc);
    }
    let mut sq = hsum(acc);
    for &v in &x[body..d] {
        sq += (v - mean) * (v - mean);
    }
    let r = 1.0 / (sq / d as f32 + eps).sqrt();
    let rstd = _mm256_set1_ps(r);
    for i in (0..body).step_by(8) {
        let c = _mm256_sub_ps(_mm256_loadu_ps(px.add(i)), vmean);
        let g = _mm256_loadu_ps(gamma.as_ptr().add(i));
        let b = _mm256_loadu_ps(beta.as_ptr().add(i));
        _mm256_storeu_ps(
            out.as_mut_ptr().add(i),
            _mm256_fmadd_ps(_mm256_mul_ps(c, rstd), g, b),
        );
    }
    for i in body..d {
        out[i] = (x[i] - mean) * r * gamma[i] + beta[i];
    }
}

/// exp of 8 lanes; 2^n built in the exponent bits (n >= -126 since x >= -87).
#[inline(always)]
unsafe fn exp8(x: __m256) -> __m256 {
    let x = _mm256_max_ps(x, _mm256_set1_ps(EXP_MIN));
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
    let mut p = _mm256_set1_ps(EXP_POLY[7]);
    for &c in EXP_POLY[..7].iter().rev() {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(n),
        _mm256_set1_epi32(127),
    ));
    _mm256_mul_ps(p, _mm256_castsi256_ps(bits))
}

/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn softmax_row(row: &mut [f32]) {
    let d = row.len();
    let body = d - d % 8;
    let p = row.as_mut_ptr();
    let mut vmax = _mm256_set1_ps(f32::NEG_INFINITY);
    for i in (0..body).step_by(8) {
        vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(p.add(i)));
    }
    let mut max = hmax(vmax);
    for &v in &row[body..] {
        max = max.max(v);
    }
    let vm = _mm256_set1_ps(max);
    let mut acc = _mm256_setzero_ps();
    for i in (0..body).step_by(8) {
        let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), vm));
        acc = _mm256_add_ps(acc, e);
        _mm256_storeu_ps(p.add(i), e);
    }
    let mut sum = hsum(acc);
    for v in &mut row[body..] {
        *v = portable::exp(*v - max);
        sum += *v;
    }
    let inv = 1.0 / sum;
    let vinv = _mm256_set1_ps(inv);
    for i in (0..body).step_by(8) {
        _mm256_storeu_ps(p.add(i), _mm256_mul_ps(_mm256_loadu_ps(p.add(i)), vinv));
    }
    for v in &mut row[body..] {
        *v *= inv;
    }
}

/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn gelu(x: &mut [f32]) {
    let table = erf_table();
    let d = x.len();
    let body = d - d % 8;
    let p = x.as_mut_ptr();
    let half = _mm256_set1_ps(0.5);
    let one = _mm256_set1_ps(1.0);
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MAX));
    let sign_mask = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MIN));
    for i in (0..body).step_by(8) {
        let v = _mm256_loadu_ps(p.add(i));
        let t = _mm256_mul_ps(v, _mm256_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
        let a = _mm256_and_ps(t, abs_mask);
        let scaled = _mm256_min_ps(
            _mm256_mul_ps(a, _mm256_set1_ps(ERF_STEPS)),
            _mm256_set1_ps(15.0),
        );
        let j = _mm256_cvttps_epi32(scaled);
        let centre = _mm256_mul_ps(
            _mm256_add_ps(_mm256_cvtepi32_ps(j), half),
            _mm256_set1_ps(1.0 / ERF_STEPS),
        );
        let u = _mm256_sub_ps(a, centre);
        let mut poly = _mm256_i32gather_ps::<4>(table[ERF_DEGREE].as_ptr(), j);
        for n in (0..ERF_DEGREE).rev() {
            poly = _mm256_fmadd_ps(poly, u, _mm256_i32gather_ps::<4>(table[n].as_ptr(), j));
        }
        let big = _mm256_cmp_ps::<_CMP_GE_OQ>(a, _mm256_set1_ps(ERF_LIMIT));
        let poly = _mm256_blendv_ps(poly, one, big);
        let erf = _mm256_or_ps(poly, _mm256_and_ps(t, sign_mask));
        _mm256_storeu_ps(
            p.add(i),
            _mm256_mul_ps(_mm256_mul_ps(v, half), _mm256_add_ps(one, erf)),
        );
    }
    portable::gelu(&mut x[body..]);
}

/// In-place sigmoid (`silu: false`) or SiLU (`silu: true`), from `exp(-|v|)` as
/// [`portable::sigmoid`]; the tail by the portable kernel.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn sigmoid(x: &mut [f32], silu: bool) {
    let d = x.len();
    let body = d - d % 8;
    let p = x.as_mut_ptr();
    let one = _mm256_set1_ps(1.0);
    let zero = _mm256_setzero_ps();
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MAX));
    for i in (0..body).step_by(8) {
        let v = _mm256_loadu_ps(p.add(i));
        let e = exp8(_mm256_sub_ps(zero, _mm256_and_ps(v, abs_mask)));
        let inv = _mm256_div_ps(one, _mm256_add_ps(one, e));
        let neg = _mm256_cmp_ps::<_CMP_LT_OQ>(v, zero);
        let s = _mm256_blendv_ps(inv, _mm256_mul_ps(inv, e), neg);
        let s = _mm256_blendv_ps(s, v, _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
        let y = if silu { _mm256_mul_ps(v, s) } else { s };
        _mm256_storeu_ps(p.add(i), y);
    }
    portable::sigmoid(&mut x[body..], silu);
}
