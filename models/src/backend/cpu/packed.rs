//! Dense layers against weights packed once at load, for the AVX-512 micro-kernel in
//! [`super::avx512_gemm`].
//!
//! A linear layer's weight `[out, in]` is constant, so it is rearranged at load into
//! column panels of [`NR`] outputs: panel `p` holds, for every input `k`, the `NR`
//! weights `w[p * NR + j][k]` contiguously (zero-padded past the last output). The
//! micro-kernel then streams one panel with two aligned 16-lane loads per `k` and
//! broadcasts activations straight from the row-major input, so nothing is packed per
//! call. The bias and GELU are applied in the kernel's epilogue, on registers.
//!
//! Work is cut into rectangles of (row block, panel group) and each is computed whole
//! by one thread, always by the same sequence of operations whatever the thread count
//! or batch, so results are deterministic (the split-point contract).

use rayon::prelude::*;

use super::avx512_gemm::{self, Epilogue};

/// Output columns per packed panel (two AVX-512 registers).
pub(crate) const NR: usize = 32;
/// Rows per micro-kernel tile (24 of the 32 vector registers accumulate).
pub(crate) const MR: usize = 12;
/// Inputs per pass over a panel: a `KC x NR` slice of it (32 KiB) stays in L1 while the
/// kernel walks down every row block.
pub(crate) const KC: usize = 256;
/// Rows per task, about: the task's input rows (`MC x KC`) stay in L2 across panels.
const MC: usize = 240;
/// f32 lanes per 64-byte cache line: panels start on a line.
const ALIGN: usize = 16;

/// A `[out, in]` weight in panel-major layout, with its bias zero-padded to whole panels.
#[derive(Debug)]
pub(crate) struct PackedLinear {
    /// Backing store; `data[start..]` is the packed weight, 64-byte aligned.
    data: Vec<f32>,
    start: usize,
    bias: Vec<f32>,
    inputs: usize,
    outputs: usize,
    panels: usize,
}

impl PackedLinear {
    /// Packs a PyTorch-layout weight `[outputs, inputs]` (row-major) and its bias.
    pub(crate) fn pack(
        weight: &[f32],
        bias: Option<&[f32]>,
        outputs: usize,
        inputs: usize,
    ) -> Self {
        debug_assert_eq!(weight.len(), outputs * inputs);
        let panels = outputs.div_ceil(NR);
        let len = panels * inputs * NR;
        let mut data = vec![0.0f32; len + ALIGN];
        // Start on a cache line, so the kernel's two loads per row never split one.
        let misalign = (data.as_ptr() as usize / std::mem::size_of::<f32>()) % ALIGN;
        let start = (ALIGN - misalign) % ALIGN;
        let packed = &mut data[start..start + len];
        for (o, row) in weight.chunks_exact(inputs.max(1)).enumerate().take(outputs) {
            let (p, j) = (o / NR, o % NR);
            let panel = &mut packed[p * inputs * NR..(p + 1) * inputs * NR];
            for (k, &v) in row.iter().enumerate() {
                panel[k * NR + j] = v;
            }
        }
        let mut padded_bias = vec![0.0f32; panels * NR];
        if let Some(b) = bias {
            padded_bias[..outputs].copy_from_slice(&b[..outputs]);
        }
        Self {
            data,
            start,
            bias: padded_bias,
            inputs,
            outputs,
            panels,
        }
    }

    fn packed(&self) -> &[f32] {
        &self.data[self.start..self.start + self.panels * self.inputs * NR]
    }
}

/// A raw pointer to the output, shared by tasks that write disjoint rectangles of it.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: `OutPtr` is only used inside `linear_avx512`, whose tasks write pairwise
// disjoint (row range x column range) rectangles of one live `&mut [f32]`.
unsafe impl Send for OutPtr {}
// SAFETY: as above; no task reads what another writes.
unsafe impl Sync for OutPtr {}

/// `act(x[rows, inputs] W^T + b)` `[rows, outputs]` with the AVX-512 micro-kernel,
/// split over `threads` workers of the current rayon pool.
///
/// The result is written straight into fresh, uninitialised memory: every element is
/// stored exactly once by the tiles (no zero-fill pass, which cost as much as a small
/// GEMM at batch 1).
///
/// # Safety
/// The CPU must support AVX-512F.
///
/// # Panics
/// If `x` is shorter than the shapes say (callers derive them from checked tensor
/// shapes, so this is an internal invariant).
pub(crate) unsafe fn linear_avx512(
    x: &[f32],
    rows: usize,
    layer: &PackedLinear,
    gelu: bool,
    threads: usize,
) -> Vec<f32> {
    let (k, n) = (layer.inputs, layer.outputs);
    assert!(x.len() >= rows * k, "linear: input shorter than its shape");
    let numel = rows * n;
    let mut out = Vec::with_capacity(numel);
    if numel == 0 {
        return out;
    }
    // Row blocks of about MC rows (a multiple of MR), panel groups one per thread.
    let row_tasks = rows.div_ceil(MC);
    let mc = rows.div_ceil(row_tasks).div_ceil(MR) * MR;
    let row_tasks = rows.div_ceil(mc);
    let groups = threads.clamp(1, layer.panels);
    let per_group = layer.panels.div_ceil(groups);
    let groups = layer.panels.div_ceil(per_group);
    let dst = OutPtr(out.spare_capacity_mut().as_mut_ptr().cast::<f32>());
    let task = |t: usize| {
        let (rt, g) = (t / groups, t % groups);
        let r0 = rt * mc;
        let r1 = (r0 + mc).min(rows);
        let p0 = g * per_group;
        let p1 = (p0 + per_group).min(layer.panels);
        // SAFETY: rows r0..r1 < rows and panels p0..p1 < panels are in bounds of `x`
        // (rows * k), the packed weight and `out` (capacity rows * n); this task
        // alone writes rows r0..r1 x columns p0*NR..min(p1*NR, n) of `out`; the CPU
        // supports AVX-512F (this function's contract).
        unsafe { block(x, k, n, r0, r1, p0, p1, layer, gelu, dst) };
    };
    let tasks = row_tasks * groups;
    if threads > 1 && tasks > 1 {
        (0..tasks).into_par_iter().for_each(task);
    } else {
        (0..tasks).for_each(task);
    }
    // SAFETY: the tasks' rectangles (row blocks x panel groups) tile all `rows` rows
    // and all `panels` panels, and `block` stores every valid column (`cols`) of every
    // row of each of its tiles, so all `numel` elements are initialised.
    unsafe { out.set_len(numel) };
    out
}

/// Rows `r0..r1` x panels `p0..p1` of the product, K-blocked by [`KC`].
///
/// # Safety
/// As stated at the call in [`linear_avx512`].
#[allow(clippy::too_many_arguments)]
unsafe fn block(
    x: &[f32],
    k: usize,
    n: usize,
    r0: usize,
    r1: usize,
    p0: usize,
    p1: usize,
    layer: &PackedLinear,
    gelu: bool,
    dst: OutPtr,
) {
    let packed = layer.packed();
    for p in p0..p1 {
        let cols = (n - p * NR).min(NR);
        let panel = packed.as_ptr().add(p * k * NR);
        let bias = layer.bias.as_ptr().add(p * NR);
        let mut k0 = 0;
        while k0 < k || k0 == 0 {
            let kc = (k - k0).min(KC);
            let last = k0 + kc >= k;
            let epilogue = Epilogue {
                accumulate: k0 > 0,
                gelu: gelu && last,
                cols,
            };
            let mut r = r0;
            while r < r1 {
                let mr = (r1 - r).min(MR);
                avx512_gemm::tile(
                    mr,
                    kc,
                    x.as_ptr().add(r * k + k0),
                    k,
                    panel.add(k0 * NR),
                    NR,
                    bias,
                    dst.0.add(r * n + p * NR),
                    n,
                    epilogue,
                );
                r += mr;
            }
            if k == 0 {
                break;
            }
            k0 += kc;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f32], w: &[f32], b: &[f32], rows: usize, n: usize, k: usize) -> Vec<f64> {
        let mut y = vec![0.0f64; rows * n];
        for r in 0..rows {
            for o in 0..n {
                y[r * n + o] = b[o] as f64
                    + (0..k)
                        .map(|i| x[r * k + i] as f64 * w[o * k + i] as f64)
                        .sum::<f64>();
            }
        }
        y
    }

    #[test]
    fn packed_linear_matches_naive_on_ragged_shapes() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            eprintln!("skipping: no AVX-512F on this CPU");
            return;
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        // Ragged everywhere: rows not a multiple of MR, K past one KC block and not a
        // multiple of it, outputs not a multiple of NR.
        for &(rows, n, k) in &[(1, 5, 3), (13, 33, 300), (197, 70, 513), (25, 32, 256)] {
            let x: Vec<f32> = (0..rows * k)
                .map(|i| ((i * 37) % 29) as f32 * 0.05 - 0.7)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 11) % 17) as f32 * 0.03 - 0.25)
                .collect();
            let b: Vec<f32> = (0..n).map(|i| i as f32 * 0.1 - 1.0).collect();
            let layer = PackedLinear::pack(&w, Some(&b), n, k);
            let want = naive(&x, &w, &b, rows, n, k);
            for threads in [1, 2] {
                // SAFETY: avx512f was detected above.
                let out =
                    pool.install(|| unsafe { linear_avx512(&x, rows, &layer, false, threads) });
                assert_eq!(out.len(), rows * n);
                for (g, w) in out.iter().zip(&want) {
                    assert!(
                        (*g as f64 - w).abs() < 1e-4 * w.abs().max(1.0),
                        "{rows}x{n}x{k}: {g} vs {w}"
                    );
                }
                // SAFETY: as above.
                let act =
                    pool.install(|| unsafe { linear_avx512(&x, rows, &layer, true, threads) });
                for (g, z) in act.iter().zip(&want) {
                    let want = 0.5 * z * (1.0 + libm::erf(z / std::f64::consts::SQRT_2));
                    assert!((*g as f64 - want).abs() < 1e-4 * want.abs().max(1.0));
                }
            }
        }
    }
}
