//! AVX-512F kernels: 16 lanes, tails by masked loads and stores (no scalar remainder).
//!
//! The erf table has exactly 16 intervals so each coefficient row is one register and
//! a lookup is one `vpermps`.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::kernels::{
    erf_table, ERF_DEGREE, ERF_LIMIT, ERF_STEPS, EXP_MIN, EXP_POLY, LN2_HI, LN2_LO,
};

/// Mask selecting the first `n` (< 16) lanes, or all for `n >= 16`.
#[inline(always)]
pub(crate) fn tail_mask(n: usize) -> __mmask16 {
    if n >= 16 {
        0xffff
    } else {
        ((1u32 << n) - 1) as __mmask16
    }
}

/// # Safety
/// The CPU must support AVX-512F. Slices must all have `x.len()` elements.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn layer_norm_row(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    out: &mut [f32],
) {
    let d = x.len().min(gamma.len()).min(beta.len()).min(out.len());
    let px = x.as_ptr();
    let mut acc = _mm512_setzero_ps();
    let mut i = 0;
    while i < d {
        let m = tail_mask(d - i);
        acc = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(m, px.add(i)));
        i += 16;
    }
    let mean = _mm512_reduce_add_ps(acc) / d as f32;
    let vmean = _mm512_set1_ps(mean);
    let mut acc = _mm512_setzero_ps();
    let mut i = 0;
    while i < d {
        let m = tail_mask(d - i);
        let c = _mm512_maskz_sub_ps(m, _mm512_maskz_loadu_ps(m, px.add(i)), vmean);
        acc = _mm512_fmadd_ps(c, c, acc);
        i += 16;
    }
    let var = _mm512_reduce_add_ps(acc) / d as f32;
    let rstd = _mm512_set1_ps(1.0 / (var + eps).sqrt());
    let mut i = 0;
    while i < d {
        let m = tail_mask(d - i);
        let c = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, px.add(i)), vmean);
        let g = _mm512_maskz_loadu_ps(m, gamma.as_ptr().add(i));
        let b = _mm512_maskz_loadu_ps(m, beta.as_ptr().add(i));
        let y = _mm512_fmadd_ps(_mm512_mul_ps(c, rstd), g, b);
        _mm512_mask_storeu_ps(out.as_mut_ptr().add(i), m, y);
        i += 16;
    }
}

/// exp of 16 lanes: Cody-Waite reduction, degree-7 polynomial, `vscalefps` for 2^n.
#[inline(always)]
unsafe fn exp16(x: __m512) -> __m512 {
    let x = _mm512_max_ps(x, _mm512_set1_ps(EXP_MIN));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    let mut p = _mm512_set1_ps(EXP_POLY[7]);
    for &c in EXP_POLY[..7].iter().rev() {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    _mm512_scalef_ps(p, n)
}

/// # Safety
/// The CPU must support AVX-512F.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn softmax_row(row: &mut [f32]) {
    let d = row.len();
    let p = row.as_mut_ptr();
    let mut vmax = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut i = 0;
    while i < d {
        let m = tail_mask(d - i);
        vmax = _mm512_mask_max_ps(vmax, m, vmax, _mm512_maskz_loadu_ps(m, p.add(i)));
        i += 16;
    }
    let vmax = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));
    let mut acc = _mm512_setzero_ps();
    let mut i = 0;
    while i < d {
        let m = tail_mask(d - i);
        let e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, p.add(i)), vmax));
        acc = _mm512_mask_add_ps(acc, m, acc, e);
        _mm512_mask_storeu_ps(p.add(i), m, e);
        i += 16;
    }
    let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(acc));
    let mut i = 0;
    while i < d {
        let m = tail_mask(d - i);
        let v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, p.add(i)), inv);
        _mm512_mask_storeu_ps(p.add(i), m, v);
        i += 16;
    }
}

/// The erf coefficient table as one register per polynomial degree.
///
/// # Safety
/// The CPU must support AVX-512F (callers are `avx512f` functions).
#[inline(always)]
pub(crate) unsafe fn erf_coeffs() -> [__m512; ERF_DEGREE + 1] {
    let table = erf_table();
    let mut coeffs = [_mm512_setzero_ps(); ERF_DEGREE + 1];
    for (c, row) in coeffs.iter_mut().zip(table.iter()) {
        *c = _mm512_loadu_ps(row.as_ptr());
    }
    coeffs
}

/// Exact (erf) GELU of 16 lanes; `coeffs` from [`erf_coeffs`].
///
/// # Safety
/// The CPU must support AVX-512F (callers are `avx512f` functions).
#[inline(always)]
pub(crate) unsafe fn gelu16(v: __m512, coeffs: &[__m512; ERF_DEGREE + 1]) -> __m512 {
    let half = _mm512_set1_ps(0.5);
    let one = _mm512_set1_ps(1.0);
    let t = _mm512_mul_ps(v, _mm512_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
    let a = _mm512_abs_ps(t);
    let scaled = _mm512_min_ps(
        _mm512_mul_ps(a, _mm512_set1_ps(ERF_STEPS)),
        _mm512_set1_ps(15.0),
    );
    let j = _mm512_cvttps_epi32(scaled);
    let centre = _mm512_mul_ps(
        _mm512_add_ps(_mm512_cvtepi32_ps(j), half),
        _mm512_set1_ps(1.0 / ERF_STEPS),
    );
    let u = _mm512_sub_ps(a, centre);
    let mut poly = _mm512_permutexvar_ps(j, coeffs[ERF_DEGREE]);
    for n in (0..ERF_DEGREE).rev() {
        poly = _mm512_fmadd_ps(poly, u, _mm512_permutexvar_ps(j, coeffs[n]));
    }
    let big = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(a, _mm512_set1_ps(ERF_LIMIT));
    let poly = _mm512_mask_blend_ps(big, poly, one);
    // erf is odd: give |erf| the sign of t.
    let sign = _mm512_and_si512(_mm512_castps_si512(t), _mm512_set1_epi32(i32::MIN));
    let erf = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(poly), sign));
    _mm512_mul_ps(_mm512_mul_ps(v, half), _mm512_add_ps(one, erf))
}

/// # Safety
/// The CPU must support AVX-512F.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn gelu(x: &mut [f32]) {
    let coeffs = erf_coeffs();
    let d = x.len();
    let p = x.as_mut_ptr();
    let mut i = 0;
    while i < d {
        let m = tail_mask(d - i);
        let v = _mm512_maskz_loadu_ps(m, p.add(i));
        _mm512_mask_storeu_ps(p.add(i), m, gelu16(v, &coeffs));
        i += 16;
    }
}

/// Logistic sigmoid of 16 lanes from `exp(-|v|)`, which never overflows: `1 / (1 + e)`
/// for `v >= 0`, `e / (1 + e)` below (accurate in relative terms for very negative
/// `v` too). A NaN lane stays NaN.
#[inline(always)]
unsafe fn sigmoid16(v: __m512) -> __m512 {
    let one = _mm512_set1_ps(1.0);
    let e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(v)));
    let inv = _mm512_div_ps(one, _mm512_add_ps(one, e));
    let neg = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(v, _mm512_setzero_ps());
    let s = _mm512_mask_mul_ps(inv, neg, inv, e);
    _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v), s, v)
}

/// In-place sigmoid (`silu: false`) or SiLU, `x * sigmoid(x)` (`silu: true`).
///
/// # Safety
/// The CPU must support AVX-512F.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn sigmoid(x: &mut [f32], silu: bool) {
    let d = x.len();
    let p = x.as_mut_ptr();
    let mut i = 0;
    while i < d {
        let m = tail_mask(d - i);
        let v = _mm512_maskz_loadu_ps(m, p.add(i));
        let s = sigmoid16(v);
        let y = if silu { _mm512_mul_ps(v, s) } else { s };
        _mm512_mask_storeu_ps(p.add(i), m, y);
        i += 16;
    }
}
