//! The AVX-512 GEMM micro-kernel: a tile of up to [`MR`] rows x [`NR`] columns held
//! in 24 of the 32 zmm registers, over a packed weight panel (see [`super::packed`]) or
//! any matrix whose rows hold 32 contiguous floats (attention's `V`).
//!
//! Per input `k`: two loads of the panel row, then one broadcast FMA pair per
//! row (the broadcast folds into the FMA's memory operand). The tile starts from the
//! bias (or from `C` when accumulating a later K block) and ends with GELU on the
//! registers when asked, then masked stores for a ragged last panel.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::avx512::{erf_coeffs, gelu16, tail_mask};
use super::packed::{MR, NR};

/// What the tile does at its start and end.
#[derive(Clone, Copy)]
pub(crate) struct Epilogue {
    /// Start from the values in `C` (a later K block) instead of the bias.
    pub(crate) accumulate: bool,
    /// Apply exact GELU before storing (last K block only).
    pub(crate) gelu: bool,
    /// Valid columns of this panel (`1..=NR`); the rest are neither read nor written.
    pub(crate) cols: usize,
}

/// `C[mr, cols] (=|+=) A[mr, kc] B[kc, NR] (+ bias)`, then GELU if asked.
///
/// # Safety
/// The CPU must support AVX-512F. `a` points at `mr` rows of `kc` readable floats,
/// `lda` apart; `b` at `kc` rows of `NR` readable floats, `ldb` apart; `bias` at `NR`
/// readable floats; `c` at `mr` rows of `ep.cols` writable floats, `ldc` apart, not
/// aliasing the others. `1 <= mr <= MR`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn tile(
    mr: usize,
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    bias: *const f32,
    c: *mut f32,
    ldc: usize,
    ep: Epilogue,
) {
    // One monomorphic kernel per row count, so the accumulators are registers.
    macro_rules! dispatch {
        ($($r:literal)*) => {
            match mr {
                $($r => tile_rows::<$r>(kc, a, lda, b, ldb, bias, c, ldc, ep),)*
                _ => unreachable!("tile of {mr} rows; the driver caps it at MR"),
            }
        };
    }
    dispatch!(1 2 3 4 5 6 7 8 9 10 11 12);
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn tile_rows<const R: usize>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    bias: *const f32,
    c: *mut f32,
    ldc: usize,
    ep: Epilogue,
) {
    const { assert!(R <= MR && NR == 32) };
    let m0 = tail_mask(ep.cols);
    let m1 = tail_mask(ep.cols.saturating_sub(16));
    let mut lo = [_mm512_setzero_ps(); R];
    let mut hi = [_mm512_setzero_ps(); R];
    if ep.accumulate {
        for i in 0..R {
            lo[i] = _mm512_maskz_loadu_ps(m0, c.add(i * ldc));
            hi[i] = _mm512_maskz_loadu_ps(m1, c.add(i * ldc + 16));
        }
    } else {
        let b0 = _mm512_loadu_ps(bias);
        let b1 = _mm512_loadu_ps(bias.add(16));
        for i in 0..R {
            lo[i] = b0;
            hi[i] = b1;
        }
    }
    let mut bp = b;
    let mut ap = a;
    for _ in 0..kc {
        let b0 = _mm512_loadu_ps(bp);
        let b1 = _mm512_loadu_ps(bp.add(16));
        for i in 0..R {
            let ai = _mm512_set1_ps(*ap.add(i * lda));
            lo[i] = _mm512_fmadd_ps(ai, b0, lo[i]);
            hi[i] = _mm512_fmadd_ps(ai, b1, hi[i]);
        }
        bp = bp.add(ldb);
        ap = ap.add(1);
    }
    if ep.gelu {
        let coeffs = erf_coeffs();
        for i in 0..R {
            lo[i] = gelu16(lo[i], &coeffs);
            hi[i] = gelu16(hi[i], &coeffs);
        }
    }
    for i in 0..R {
        _mm512_mask_storeu_ps(c.add(i * ldc), m0, lo[i]);
        _mm512_mask_storeu_ps(c.add(i * ldc + 16), m1, hi[i]);
    }
}
