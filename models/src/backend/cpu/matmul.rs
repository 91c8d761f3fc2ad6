//! Safe strided GEMM over slices, on the `gemm` crate (the one candle uses: packed
//! AVX-512/AVX2/NEON micro-kernels chosen at run time, its own rayon splitting).

use gemm::Parallelism;
use rayon::prelude::*;

/// A strided view of a matrix inside a slice: element `(r, c)` is
/// `data[offset + r * rs + c * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct View {
    pub(crate) offset: usize,
    pub(crate) rs: usize,
    pub(crate) cs: usize,
}

impl View {
    pub(crate) fn row_major(offset: usize, cols: usize) -> Self {
        Self {
            offset,
            rs: cols,
            cs: 1,
        }
    }

    /// Whether a `rows x cols` matrix fits in a slice of `len` elements.
    fn fits(&self, rows: usize, cols: usize, len: usize) -> bool {
        if rows == 0 || cols == 0 {
            return true;
        }
        (rows - 1)
            .checked_mul(self.rs)
            .and_then(|a| {
                (cols - 1)
                    .checked_mul(self.cs)
                    .and_then(|b| a.checked_add(b))
            })
            .and_then(|last| last.checked_add(self.offset))
            .is_some_and(|last| last < len)
    }
}

/// `dst = (accumulate ? dst : 0) + alpha * lhs * rhs` with `lhs` `m x k`, `rhs` `k x n`,
/// `dst` `m x n`.
///
/// Panics if a view does not fit its slice: callers derive views from checked shapes,
/// so this is an internal invariant, never reachable from input data.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dv: View,
    accumulate: bool,
    lhs: &[f32],
    lv: View,
    rhs: &[f32],
    rv: View,
    alpha: f32,
    threads: usize,
) {
    assert!(dv.fits(m, n, dst.len()), "gemm: dst view out of bounds");
    assert!(lv.fits(m, k, lhs.len()), "gemm: lhs view out of bounds");
    assert!(rv.fits(k, n, rhs.len()), "gemm: rhs view out of bounds");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                for c in 0..n {
                    dst[dv.offset + r * dv.rs + c * dv.cs] = 0.0;
                }
            }
        }
        return;
    }
    let parallelism = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: the three views were checked to lie inside their slices, `dst` is borrowed
    // mutably and so does not alias `lhs` or `rhs`, and strides fit in isize because they
    // index into allocations (which never exceed isize::MAX bytes).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().add(dv.offset),
            dv.cs as isize,
            dv.rs as isize,
            accumulate,
            lhs.as_ptr().add(lv.offset),
            lv.cs as isize,
            lv.rs as isize,
            rhs.as_ptr().add(rv.offset),
            rv.cs as isize,
            rv.rs as isize,
            1.0,
            alpha,
            false,
            false,
            false,
            parallelism,
        );
    }
}

impl super::CpuBackend {
    /// Batched `a b` (or `a b^T`): items in parallel, each a single-threaded GEMM, when
    /// there are several; else one GEMM split across the pool.
    pub(super) fn matmul_impl(
        &self,
        a: &super::CpuTensor,
        b: &super::CpuTensor,
        transpose_b: bool,
    ) -> Result<super::CpuTensor, crate::backend::BackendError> {
        let g = crate::backend::ops::matmul_geometry(&a.shape, &b.shape, transpose_b)?;
        let (m, k, n) = (g.m, g.k, g.n);
        let mut out = vec![0.0f32; g.batch * m * n];
        if out.is_empty() {
            return Ok(super::CpuTensor::new(g.out_shape, out));
        }
        let rhs = |item: usize| {
            if transpose_b {
                View {
                    offset: item * n * k,
                    rs: 1,
                    cs: k,
                }
            } else {
                View::row_major(item * k * n, n)
            }
        };
        let item = |(i, dst): (usize, &mut [f32]), threads: usize| {
            gemm(
                m,
                n,
                k,
                dst,
                View::row_major(0, n),
                false,
                &a.data,
                View::row_major(i * m * k, k),
                &b.data,
                rhs(i),
                1.0,
                threads,
            )
        };
        if g.batch > 1 && self.threads > 1 {
            self.in_pool(|| {
                out.par_chunks_mut(m * n)
                    .enumerate()
                    .for_each(|job| item(job, 1))
            });
        } else {
            self.in_pool(|| {
                out.chunks_mut(m * n)
                    .enumerate()
                    .for_each(|job| item(job, self.threads))
            });
        }
        Ok(super::CpuTensor::new(g.out_shape, out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_matches_naive_product_with_strides() {
        let (m, n, k) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| i as f32 * 0.5 - 3.0).collect();
        // rhs stored transposed: [n, k]
        let bt: Vec<f32> = (0..n * k).map(|i| (i % 5) as f32 - 2.0).collect();
        let mut c = vec![1.0; m * n];
        gemm(
            m,
            n,
            k,
            &mut c,
            View::row_major(0, n),
            true,
            &a,
            View::row_major(0, k),
            &bt,
            View {
                offset: 0,
                rs: 1,
                cs: k,
            },
            2.0,
            1,
        );
        for i in 0..m {
            for j in 0..n {
                let want: f32 =
                    1.0 + 2.0 * (0..k).map(|p| a[i * k + p] * bt[j * k + p]).sum::<f32>();
                assert!((c[i * n + j] - want).abs() < 1e-4);
            }
        }
    }
}
