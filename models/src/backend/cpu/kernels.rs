//! Row and elementwise kernels (layer norm, softmax, GELU, add), dispatched once per
//! call to the best implementation this CPU supports: AVX-512 ([`super::avx512`]),
//! AVX2+FMA ([`super::avx2`]) or portable Rust ([`super::portable`]).
//!
//! All three compute the same functions with the same polynomial (the erf table below
//! and the exp reduction in each file), so they agree to a few ulp.

use std::sync::OnceLock;

/// Instruction-set level the kernels run at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512F (16 lanes, masked tails).
    Avx512,
    /// AVX2 with FMA (8 lanes).
    Avx2,
    /// Plain Rust, any target.
    Portable,
}

impl Isa {
    /// The best level this CPU supports.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// `self` if this CPU supports it, else the best level it does support.
    pub fn or_supported(self) -> Self {
        let best = Self::detect();
        let rank = |i: Isa| match i {
            Isa::Portable => 0,
            Isa::Avx2 => 1,
            Isa::Avx512 => 2,
        };
        if rank(self) <= rank(best) {
            self
        } else {
            best
        }
    }
}

/// Degree of the per-interval Taylor polynomials of erf.
pub(crate) const ERF_DEGREE: usize = 9;
/// erf is tabulated on `[0, ERF_LIMIT)` in 16 intervals; beyond, it is +-1 in f32.
pub(crate) const ERF_LIMIT: f32 = 4.0;
/// Intervals per unit of |x|.
pub(crate) const ERF_STEPS: f32 = 4.0;

/// Coefficients `c[n][j]` of `erf(center_j + u) = sum_n c[n][j] u^n` for the 16
/// intervals `[j/4, (j+1)/4)`, centre `(j + 0.5) / 4`, so `|u| <= 1/8`.
///
/// Derived at first use from the Taylor series rather than stored as magic numbers:
/// `erf^(n)(c) = 2/sqrt(pi) * (-1)^(n-1) * H_{n-1}(c) * exp(-c^2)` with the physicists'
/// Hermite polynomials `H`. With degree 9 and `|u| <= 1/8` the truncation error is
/// below 1e-9, so the f32 result is within about one ulp of the true erf.
#[allow(clippy::needless_range_loop)] // two-index table, filled column by column
pub(crate) fn erf_table() -> &'static [[f32; 16]; ERF_DEGREE + 1] {
    static TABLE: OnceLock<[[f32; 16]; ERF_DEGREE + 1]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = [[0f32; 16]; ERF_DEGREE + 1];
        let two_over_sqrt_pi = std::f64::consts::FRAC_2_SQRT_PI;
        for j in 0..16 {
            let c = (j as f64 + 0.5) / ERF_STEPS as f64;
            table[0][j] = libm::erf(c) as f32;
            let gauss = (-c * c).exp();
            // Hermite recurrence: H_0 = 1, H_1 = 2c, H_{m+1} = 2c H_m - 2m H_{m-1}.
            let (mut h_prev, mut h) = (0.0f64, 1.0f64);
            let mut factorial = 1.0f64;
            for n in 1..=ERF_DEGREE {
                let m = n - 1; // h holds H_m
                factorial *= n as f64;
                let sign = if m % 2 == 0 { 1.0 } else { -1.0 };
                table[n][j] = (two_over_sqrt_pi * sign * h * gauss / factorial) as f32;
                let next = 2.0 * c * h - 2.0 * m as f64 * h_prev;
                h_prev = h;
                h = next;
            }
        }
        table
    })
}

/// `1/k!` for the exp polynomial on `|r| <= ln2/2` (truncation error < 1e-8 relative).
pub(crate) const EXP_POLY: [f32; 8] = [
    1.0,
    1.0,
    0.5,
    1.0 / 6.0,
    1.0 / 24.0,
    1.0 / 120.0,
    1.0 / 720.0,
    1.0 / 5040.0,
];
/// ln 2 split in a part exact in f32 times small integers, and the rest (Cody-Waite).
pub(crate) const LN2_HI: f32 = 0.693_145_75;
pub(crate) const LN2_LO: f32 = 1.428_606_8e-6;
/// Below this, exp(x) is 0 in f32 (denormals flushed by our construction).
pub(crate) const EXP_MIN: f32 = -87.0;

/// Layer norm of every row of `x` (rows of `gamma.len()`) into `out`.
pub(crate) fn layer_norm_rows(
    isa: Isa,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    out: &mut [f32],
) {
    let d = gamma.len();
    for (row, out_row) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `isa` is only Avx512 when the CPU reported avx512f.
            Isa::Avx512 => unsafe { super::avx512::layer_norm_row(row, gamma, beta, eps, out_row) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `isa` is only Avx2 when the CPU reported avx2 and fma.
            Isa::Avx2 => unsafe { super::avx2::layer_norm_row(row, gamma, beta, eps, out_row) },
            _ => super::portable::layer_norm_row(row, gamma, beta, eps, out_row),
        }
    }
}

/// In-place softmax of one row.
pub(crate) fn softmax_row(isa: Isa, row: &mut [f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `layer_norm_rows`.
        Isa::Avx512 => unsafe { super::avx512::softmax_row(row) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `layer_norm_rows`.
        Isa::Avx2 => unsafe { super::avx2::softmax_row(row) },
        _ => super::portable::softmax_row(row),
    }
}

/// In-place exact GELU.
pub(crate) fn gelu(isa: Isa, x: &mut [f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `layer_norm_rows`.
        Isa::Avx512 => unsafe { super::avx512::gelu(x) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `layer_norm_rows`.
        Isa::Avx2 => unsafe { super::avx2::gelu(x) },
        _ => super::portable::gelu(x),
    }
}

/// In-place sigmoid, or SiLU (`x * sigmoid(x)`) with `silu`.
pub(crate) fn sigmoid(isa: Isa, x: &mut [f32], silu: bool) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `layer_norm_rows`.
        Isa::Avx512 => unsafe { super::avx512::sigmoid(x, silu) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `layer_norm_rows`.
        Isa::Avx2 => unsafe { super::avx2::sigmoid(x, silu) },
        _ => super::portable::sigmoid(x, silu),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_isas() -> Vec<Isa> {
        let mut v = vec![Isa::Portable];
        for isa in [Isa::Avx2, Isa::Avx512] {
            if isa.or_supported() == isa {
                v.push(isa);
            }
        }
        v
    }

    fn gelu_ref(x: f64) -> f64 {
        0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
    }

    #[test]
    fn gelu_matches_exact_erf_form_on_every_isa() {
        let xs: Vec<f32> = (-4000..=4000).map(|i| i as f32 * 0.0025).collect();
        for isa in all_isas() {
            let mut y = xs.clone();
            gelu(isa, &mut y);
            for (&x, &g) in xs.iter().zip(&y) {
                let want = gelu_ref(x as f64);
                let err = (g as f64 - want).abs();
                assert!(
                    err <= 2e-7 * want.abs().max(1.0),
                    "{isa:?}: gelu({x}) = {g}, want {want}"
                );
            }
        }
    }

    #[test]
    fn softmax_sums_to_one_and_matches_f64_on_every_isa() {
        let row: Vec<f32> = (0..37)
            .map(|i| ((i * 7919) % 97) as f32 * 0.37 - 20.0)
            .collect();
        let max = row.iter().cloned().fold(f64::MIN, |a, b| a.max(b as f64));
        let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
        for isa in all_isas() {
            let mut r = row.clone();
            softmax_row(isa, &mut r);
            for (&v, &p) in row.iter().zip(&r) {
                let want = (v as f64 - max).exp() / sum;
                assert!((p as f64 - want).abs() <= 1e-6 * want + 1e-12, "{isa:?}");
            }
        }
    }

    #[test]
    fn layer_norm_matches_f64_on_every_isa() {
        let d = 45;
        let x: Vec<f32> = (0..2 * d)
            .map(|i| ((i * 31) % 17) as f32 * 0.5 - 3.0)
            .collect();
        let gamma: Vec<f32> = (0..d).map(|i| 1.0 + i as f32 * 0.01).collect();
        let beta: Vec<f32> = (0..d).map(|i| i as f32 * -0.02).collect();
        for isa in all_isas() {
            let mut out = vec![0.0; x.len()];
            layer_norm_rows(isa, &x, &gamma, &beta, 1e-6, &mut out);
            for (row, orow) in x.chunks(d).zip(out.chunks(d)) {
                let mean = row.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
                let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
                for i in 0..d {
                    let want = (row[i] as f64 - mean) / (var + 1e-6).sqrt() * gamma[i] as f64
                        + beta[i] as f64;
                    assert!((orow[i] as f64 - want).abs() < 1e-5, "{isa:?}");
                }
            }
        }
    }

    #[test]
    fn sigmoid_and_silu_match_f64_on_every_isa() {
        let xs: Vec<f32> = (-2000..=2000).map(|i| i as f32 * 0.05).collect();
        for isa in all_isas() {
            for silu in [false, true] {
                let mut y = xs.clone();
                sigmoid(isa, &mut y, silu);
                for (&x, &g) in xs.iter().zip(&y) {
                    let s = 1.0 / (1.0 + (-(x as f64)).exp());
                    let want = if silu { x as f64 * s } else { s };
                    let err = (g as f64 - want).abs();
                    assert!(
                        err <= 1e-6 * want.abs() + 1e-30,
                        "{isa:?} silu={silu}: f({x}) = {g}, want {want}"
                    );
                }
            }
            let mut nan = vec![f32::NAN; 19];
            sigmoid(isa, &mut nan, true);
            assert!(nan.iter().all(|v| v.is_nan()), "{isa:?}: NaN must stay NaN");
        }
    }
}
