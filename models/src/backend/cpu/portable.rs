//! Portable kernels: plain Rust for any target, and the reference the SIMD versions
//! are tested against. Same polynomials as the SIMD files.

use super::kernels::{
    erf_table, ERF_DEGREE, ERF_LIMIT, ERF_STEPS, EXP_MIN, EXP_POLY, LN2_HI, LN2_LO,
};

pub(crate) fn layer_norm_row(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let rstd = 1.0 / (var + eps).sqrt();
    for (((o, &v), &g), &b) in out.iter_mut().zip(x).zip(gamma).zip(beta) {
        *o = (v - mean) * rstd * g + b;
    }
}

/// exp(x) by Cody-Waite reduction to `|r| <= ln2/2` and a degree-7 polynomial.
pub(crate) fn exp(x: f32) -> f32 {
    if x < EXP_MIN {
        return 0.0;
    }
    let n = (x * std::f32::consts::LOG2_E).round();
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = EXP_POLY[7];
    for &c in EXP_POLY[..7].iter().rev() {
        p = p.mul_add(r, c);
    }
    p * 2f32.powi(n as i32)
}

pub(crate) fn softmax_row(row: &mut [f32]) {
    let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in row.iter_mut() {
        *v = exp(*v - max);
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// erf(x) from the interval Taylor table (see [`erf_table`]).
pub(crate) fn erf(x: f32) -> f32 {
    let a = x.abs();
    if a >= ERF_LIMIT || a.is_nan() {
        return if a.is_nan() { x } else { 1f32.copysign(x) };
    }
    let table = erf_table();
    let j = ((a * ERF_STEPS) as usize).min(15);
    let u = a - (j as f32 + 0.5) / ERF_STEPS;
    let mut p = table[ERF_DEGREE][j];
    for n in (0..ERF_DEGREE).rev() {
        p = p.mul_add(u, table[n][j]);
    }
    p.copysign(x)
}

pub(crate) fn gelu(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = *v * 0.5 * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// In-place sigmoid (`silu: false`) or SiLU (`silu: true`), from `exp(-|v|)` so that
/// nothing overflows: `1 / (1 + e)` for `v >= 0`, `e / (1 + e)` below.
pub(crate) fn sigmoid(x: &mut [f32], silu: bool) {
    for v in x.iter_mut() {
        let e = (-v.abs()).exp();
        let inv = 1.0 / (1.0 + e);
        let s = if *v < 0.0 { inv * e } else { inv };
        let s = if v.is_nan() { *v } else { s };
        *v = if silu { *v * s } else { s };
    }
}
