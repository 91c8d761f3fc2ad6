//! Block-sparse dense layers: the dense micro-kernel's register tile run over the kept
//! blocks only.
//!
//! # Layout (decided at load)
//! The outputs are cut into panels of `W` columns (`W` divides the block height `bo`:
//! 32 or 16 for the SIMD kernels, else `bo` itself for the portable one), so a panel
//! lies inside one block-row. Panel `p` of block-row `r` holds, for each kept block of
//! `r` in order and each of its `bi` inputs, the panel's `W` weights contiguously:
//! a dense `[kept * bi, W]` slab, exactly a dense packed panel whose `K` runs over the
//! kept inputs only. The block-row's list of kept input indices tells the kernel which
//! activation column each `K` step reads, so nothing is gathered per call and the `K`
//! loop is one flat loop like the dense kernel's (a loop over blocks around a loop over
//! `bi` made LLVM write the accumulators back to the stack at every step, 3x slower).
//!
//! # Kernel
//! A tile of `R` rows x `W` columns accumulates in registers from the bias, walks the
//! kept blocks (`bi` broadcast-FMA steps each), and ends with GELU on the registers
//! (AVX-512) or on the tile while it is in L1 (AVX2, portable). Blocks are taken in
//! chunks of about [`KC`] inputs; later chunks reload the tile, as the dense kernel's K
//! blocks do. Per output the sums run over the kept inputs in increasing order, so on
//! AVX-512 the result equals the dense packed kernel's on the masked matrix bit for bit
//! (a dropped input adds an exact zero there).
//!
//! # Threads
//! Work is cut into (row block x panel group) rectangles, the groups balanced by kept
//! blocks (block-rows differ in density); each output is computed by one tile whatever
//! the cut, so results do not depend on the thread count.

use rayon::prelude::*;

use super::kernels::{self, Isa};
use crate::backend::block_sparse::BlockSparse;

/// Inputs per chunk of blocks, about (as the dense kernel's K block).
const KC: usize = 256;
/// Rows per task, about.
const MC: usize = 240;
/// f32 lanes per 64-byte cache line.
const ALIGN: usize = 16;

/// A block-sparse layer packed for the kernels of one instruction set.
#[derive(Debug)]
pub(crate) struct SparseLinear {
    isa: Isa,
    /// Panel width.
    width: usize,
    /// Backing store; `data[start..]` holds the slabs, each 64-byte aligned when `width`
    /// is a multiple of 16.
    data: Vec<f32>,
    start: usize,
    /// Per panel: offset of its slab in the packed data.
    slab: Vec<usize>,
    /// Per panel: its block-row.
    panel_row: Vec<usize>,
    /// Per block-row: the input index of every packed `K` row (the kept blocks'
    /// inputs in order), so the kernel's `K` loop is one flat loop, as the dense one.
    columns: Vec<Vec<u32>>,
    bias: Vec<f32>,
    block_in: usize,
    pub(crate) inputs: usize,
    pub(crate) outputs: usize,
}

impl SparseLinear {
    /// Packs `weight` for `isa`'s kernel.
    pub(crate) fn pack(isa: Isa, weight: &BlockSparse, bias: Option<&[f32]>) -> Self {
        let [bo, bi] = weight.block();
        let (isa, width) = match isa {
            Isa::Avx512 if bo % 32 == 0 => (isa, 32),
            Isa::Avx512 | Isa::Avx2 if bo % 16 == 0 => (isa, 16),
            _ => (Isa::Portable, if bo % 16 == 0 { 16 } else { bo }),
        };
        let outputs = weight.outputs();
        let panels_per_row = bo / width;
        let panels = weight.block_rows() * panels_per_row;
        let mut slab = Vec::with_capacity(panels);
        let mut panel_row = Vec::with_capacity(panels);
        let mut len = 0;
        for r in 0..weight.block_rows() {
            for _ in 0..panels_per_row {
                slab.push(len);
                panel_row.push(r);
                len += weight.row_cols(r).len() * bi * width;
            }
        }
        let mut data = vec![0.0f32; len + ALIGN];
        let misalign = (data.as_ptr() as usize / std::mem::size_of::<f32>()) % ALIGN;
        let start = (ALIGN - misalign) % ALIGN;
        let packed = &mut data[start..start + len];
        for p in 0..panels {
            let r = panel_row[p];
            let j0 = (p % panels_per_row) * width;
            let values = weight.row_values(r);
            let slab_p = &mut packed[slab[p]..];
            for (b, blk) in values.chunks_exact(bo * bi).enumerate() {
                // blk is [bo, bi] row-major; the slab wants [bi, width] per block.
                for j in 0..width {
                    for k in 0..bi {
                        slab_p[(b * bi + k) * width + j] = blk[(j0 + j) * bi + k];
                    }
                }
            }
        }
        let columns = (0..weight.block_rows())
            .map(|r| {
                weight
                    .row_cols(r)
                    .iter()
                    .flat_map(|&c| (c * bi..(c + 1) * bi).map(|i| i as u32))
                    .collect()
            })
            .collect();
        let mut padded_bias = vec![0.0f32; outputs];
        if let Some(b) = bias {
            padded_bias.copy_from_slice(&b[..outputs]);
        }
        Self {
            isa,
            width,
            data,
            start,
            slab,
            panel_row,
            columns,
            bias: padded_bias,
            block_in: bi,
            inputs: weight.inputs(),
            outputs,
        }
    }

    fn packed(&self) -> &[f32] {
        &self.data[self.start..]
    }

    fn panels(&self) -> usize {
        self.slab.len()
    }

    /// Kept inputs of panel `p` (its `K`).
    fn panel_k(&self, p: usize) -> usize {
        self.columns[self.panel_row[p]].len()
    }
}

/// A raw pointer to the output, shared by tasks that write disjoint rectangles of it.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: only used inside `linear_sparse`, whose tasks write pairwise disjoint
// (row range x column range) rectangles of one live allocation.
unsafe impl Send for OutPtr {}
// SAFETY: as above; no task reads what another writes.
unsafe impl Sync for OutPtr {}

/// `act(x[rows, inputs] W^T + b)` `[rows, outputs]` over the kept blocks, split over
/// `threads` workers of the current rayon pool; `gelu` fuses exact GELU.
///
/// # Panics
/// If `x` is shorter than `rows * inputs` (callers derive both from checked shapes).
pub(crate) fn linear_sparse(
    x: &[f32],
    rows: usize,
    layer: &SparseLinear,
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
    let mr = max_rows(layer);
    let row_tasks = rows.div_ceil(MC);
    let mc = rows.div_ceil(row_tasks).div_ceil(mr) * mr;
    let row_tasks = rows.div_ceil(mc);
    // Panel groups of about equal work (kept inputs plus the epilogue), a few per thread.
    let wanted = if threads > 1 { threads * 2 } else { 1 };
    let work = |p: usize| layer.panel_k(p) + 16;
    let total: usize = (0..layer.panels()).map(work).sum();
    let mut cuts = vec![0];
    let mut acc = 0;
    for p in 0..layer.panels() {
        acc += work(p);
        if acc * wanted >= total * cuts.len() && p + 1 < layer.panels() {
            cuts.push(p + 1);
        }
    }
    cuts.push(layer.panels());
    let groups = cuts.len() - 1;
    let dst = OutPtr(out.spare_capacity_mut().as_mut_ptr().cast::<f32>());
    let task = |t: usize| {
        let (rt, g) = (t / groups, t % groups);
        let r0 = rt * mc;
        let r1 = (r0 + mc).min(rows);
        // SAFETY: rows r0..r1 and panels cuts[g]..cuts[g + 1] are in bounds; this task
        // alone writes those rows x those panels' columns of `out` (capacity rows * n);
        // `layer.isa` was capped at what the CPU supports when the layer was packed.
        unsafe { block(x, r0, r1, cuts[g], cuts[g + 1], layer, gelu, dst) };
    };
    let tasks = row_tasks * groups;
    if threads > 1 && tasks > 1 {
        (0..tasks).into_par_iter().for_each(task);
    } else {
        (0..tasks).for_each(task);
    }
    // SAFETY: the tasks tile all rows and all panels (which tile all `n` columns), and
    // `block` stores every element of its rectangle at least once (the first chunk,
    // which exists even for a block-row with no kept blocks).
    unsafe { out.set_len(numel) };
    out
}

fn max_rows(layer: &SparseLinear) -> usize {
    match (layer.isa, layer.width) {
        // 12 rows for both widths: with 24 x 16 LLVM ran out of registers for the
        // rows' addresses and kept the accumulators on the stack.
        (Isa::Avx512, _) => 12,
        (Isa::Avx2, _) => 6,
        _ => 4,
    }
}

/// Rows `r0..r1` x panels `p0..p1`.
///
/// # Safety
/// As stated at the call in [`linear_sparse`].
#[allow(clippy::too_many_arguments)]
unsafe fn block(
    x: &[f32],
    r0: usize,
    r1: usize,
    p0: usize,
    p1: usize,
    layer: &SparseLinear,
    gelu: bool,
    dst: OutPtr,
) {
    let (k, n, w, bi) = (layer.inputs, layer.outputs, layer.width, layer.block_in);
    let mr = max_rows(layer);
    // Whole blocks per chunk.
    let per_chunk = (KC / bi).max(1) * bi;
    let packed = layer.packed();
    for p in p0..p1 {
        let columns = &layer.columns[layer.panel_row[p]];
        let slab = packed.as_ptr().add(layer.slab[p]);
        let bias = layer.bias.as_ptr().add(p * w);
        let chunks = columns.len().div_ceil(per_chunk).max(1);
        for ch in 0..chunks {
            let k0 = (ch * per_chunk).min(columns.len());
            let k1 = (k0 + per_chunk).min(columns.len());
            let tile = Tile {
                columns: &columns[k0..k1],
                b: slab.add(k0 * w),
                bias,
                accumulate: ch > 0,
                gelu: gelu && ch + 1 == chunks,
            };
            let mut r = r0;
            while r < r1 {
                let m = (r1 - r).min(mr);
                let a = x.as_ptr().add(r * k);
                let c = dst.0.add(r * n + p * w);
                match (layer.isa, w) {
                    #[cfg(target_arch = "x86_64")]
                    (Isa::Avx512, 32) => avx512::tile::<2>(m, &tile, a, k, c, n),
                    #[cfg(target_arch = "x86_64")]
                    (Isa::Avx512, _) => avx512::tile::<1>(m, &tile, a, k, c, n),
                    #[cfg(target_arch = "x86_64")]
                    (Isa::Avx2, _) => {
                        avx2::tile(m, &tile, a, k, c, n);
                        if tile.gelu {
                            gelu_rows(Isa::Avx2, c, m, w, n);
                        }
                    }
                    _ => {
                        portable_tile(m, w, &tile, a, k, c, n);
                        if tile.gelu {
                            gelu_rows(Isa::Portable, c, m, w, n);
                        }
                    }
                }
                r += m;
            }
        }
    }
}

/// One chunk of a panel: the inputs it reads and their packed weights.
struct Tile<'a> {
    /// The input index of each `K` row of the chunk.
    columns: &'a [u32],
    /// `columns.len()` rows of `W` weights.
    b: *const f32,
    /// `W` bias values.
    bias: *const f32,
    accumulate: bool,
    gelu: bool,
}

/// GELU over `m` rows of `w` values, `ldc` apart.
///
/// # Safety
/// `c` points at `m` rows of `w` writable floats, `ldc` apart.
unsafe fn gelu_rows(isa: Isa, c: *mut f32, m: usize, w: usize, ldc: usize) {
    for i in 0..m {
        kernels::gelu(isa, std::slice::from_raw_parts_mut(c.add(i * ldc), w));
    }
}

/// `C[m, w] (=|+=) bias + sum over the chunk's inputs of A[:, col] B[col]`, plain Rust.
///
/// # Safety
/// `a` points at `m` rows `lda` apart holding every column of `tile.columns`; `tile.b`
/// at `columns.len() * w` floats, `tile.bias` at `w`; `c` at `m` rows of `w`
/// writable floats, `ldc` apart.
unsafe fn portable_tile(
    m: usize,
    w: usize,
    tile: &Tile<'_>,
    a: *const f32,
    lda: usize,
    c: *mut f32,
    ldc: usize,
) {
    for i in 0..m {
        let row = std::slice::from_raw_parts_mut(c.add(i * ldc), w);
        if !tile.accumulate {
            row.copy_from_slice(std::slice::from_raw_parts(tile.bias, w));
        }
        let mut bp = tile.b;
        for &col in tile.columns {
            let av = *a.add(i * lda + col as usize);
            let brow = std::slice::from_raw_parts(bp, w);
            for (o, &bv) in row.iter_mut().zip(brow) {
                *o = av.mul_add(bv, *o);
            }
            bp = bp.add(w);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::super::avx512::{erf_coeffs, gelu16};
    use super::Tile;

    /// `V` zmm per row (`W = 16 V`, `V` 1 or 2), `m <= 12` rows.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; pointers as [`super::portable_tile`].
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile<const V: usize>(
        m: usize,
        tile: &Tile<'_>,
        a: *const f32,
        lda: usize,
        c: *mut f32,
        ldc: usize,
    ) {
        // One monomorphic kernel per row count, written as the dense micro-kernel
        // (flat accumulator arrays, one FMA per row and register) so that LLVM unrolls
        // the row loop and keeps every accumulator in a register.
        macro_rules! dispatch {
            ($f:ident: $($r:literal)*) => {
                match m {
                    $($r => $f::<$r>(tile, a, lda, c, ldc),)*
                    _ => unreachable!("tile of {m} rows; the driver caps it"),
                }
            };
        }
        if V == 2 {
            dispatch!(rows32: 1 2 3 4 5 6 7 8 9 10 11 12);
        } else {
            dispatch!(rows16: 1 2 3 4 5 6 7 8 9 10 11 12);
        }
    }

    /// 32 columns (two zmm) per row.
    #[inline(always)]
    unsafe fn rows32<const R: usize>(
        tile: &Tile<'_>,
        a: *const f32,
        lda: usize,
        c: *mut f32,
        ldc: usize,
    ) {
        let mut lo = [_mm512_setzero_ps(); R];
        let mut hi = [_mm512_setzero_ps(); R];
        for i in 0..R {
            let src = if tile.accumulate {
                c.add(i * ldc).cast_const()
            } else {
                tile.bias
            };
            lo[i] = _mm512_loadu_ps(src);
            hi[i] = _mm512_loadu_ps(src.add(16));
        }
        // Plain locals for the loop (read through `tile` inside it, LLVM kept the
        // accumulators in memory too and stored them at every step).
        let (mut bp, mut cp, kc) = (tile.b, tile.columns.as_ptr(), tile.columns.len());
        for _ in 0..kc {
            let ap = a.add(*cp as usize);
            cp = cp.add(1);
            let b0 = _mm512_loadu_ps(bp);
            let b1 = _mm512_loadu_ps(bp.add(16));
            for i in 0..R {
                let ai = _mm512_set1_ps(*ap.add(i * lda));
                lo[i] = _mm512_fmadd_ps(ai, b0, lo[i]);
                hi[i] = _mm512_fmadd_ps(ai, b1, hi[i]);
            }
            bp = bp.add(32);
        }
        if tile.gelu {
            let coeffs = erf_coeffs();
            for i in 0..R {
                lo[i] = gelu16(lo[i], &coeffs);
                hi[i] = gelu16(hi[i], &coeffs);
            }
        }
        for i in 0..R {
            _mm512_storeu_ps(c.add(i * ldc), lo[i]);
            _mm512_storeu_ps(c.add(i * ldc + 16), hi[i]);
        }
    }

    /// 16 columns (one zmm) per row.
    // Indexed loops, as the dense kernel's: they unroll into one register per row.
    #[allow(clippy::needless_range_loop)]
    #[inline(always)]
    unsafe fn rows16<const R: usize>(
        tile: &Tile<'_>,
        a: *const f32,
        lda: usize,
        c: *mut f32,
        ldc: usize,
    ) {
        let mut acc = [_mm512_setzero_ps(); R];
        for i in 0..R {
            let src = if tile.accumulate {
                c.add(i * ldc).cast_const()
            } else {
                tile.bias
            };
            acc[i] = _mm512_loadu_ps(src);
        }
        let (mut bp, mut cp, kc) = (tile.b, tile.columns.as_ptr(), tile.columns.len());
        for _ in 0..kc {
            let ap = a.add(*cp as usize);
            cp = cp.add(1);
            let b0 = _mm512_loadu_ps(bp);
            for i in 0..R {
                acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(*ap.add(i * lda)), b0, acc[i]);
            }
            bp = bp.add(16);
        }
        if tile.gelu {
            let coeffs = erf_coeffs();
            for i in 0..R {
                acc[i] = gelu16(acc[i], &coeffs);
            }
        }
        for i in 0..R {
            _mm512_storeu_ps(c.add(i * ldc), acc[i]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::Tile;

    /// 16 columns (two ymm) per row, `m <= 6` rows.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; pointers as [`super::portable_tile`] with
    /// `w = 16`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile(
        m: usize,
        tile: &Tile<'_>,
        a: *const f32,
        lda: usize,
        c: *mut f32,
        ldc: usize,
    ) {
        match m {
            1 => rows::<1>(tile, a, lda, c, ldc),
            2 => rows::<2>(tile, a, lda, c, ldc),
            3 => rows::<3>(tile, a, lda, c, ldc),
            4 => rows::<4>(tile, a, lda, c, ldc),
            5 => rows::<5>(tile, a, lda, c, ldc),
            6 => rows::<6>(tile, a, lda, c, ldc),
            _ => unreachable!("tile of {m} rows; the driver caps it at 6"),
        }
    }

    #[inline(always)]
    unsafe fn rows<const R: usize>(
        tile: &Tile<'_>,
        a: *const f32,
        lda: usize,
        c: *mut f32,
        ldc: usize,
    ) {
        let mut lo = [_mm256_setzero_ps(); R];
        let mut hi = [_mm256_setzero_ps(); R];
        for i in 0..R {
            let src = if tile.accumulate {
                c.add(i * ldc).cast_const()
            } else {
                tile.bias
            };
            lo[i] = _mm256_loadu_ps(src);
            hi[i] = _mm256_loadu_ps(src.add(8));
        }
        let (mut bp, mut cp, kc) = (tile.b, tile.columns.as_ptr(), tile.columns.len());
        for _ in 0..kc {
            let ap = a.add(*cp as usize);
            cp = cp.add(1);
            let b0 = _mm256_loadu_ps(bp);
            let b1 = _mm256_loadu_ps(bp.add(8));
            for i in 0..R {
                let ai = _mm256_broadcast_ss(&*ap.add(i * lda));
                lo[i] = _mm256_fmadd_ps(ai, b0, lo[i]);
                hi[i] = _mm256_fmadd_ps(ai, b1, hi[i]);
            }
            bp = bp.add(16);
        }
        for i in 0..R {
            _mm256_storeu_ps(c.add(i * ldc), lo[i]);
            _mm256_storeu_ps(c.add(i * ldc + 8), hi[i]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::HostTensor;

    fn all_isas() -> Vec<Isa> {
        let mut v = vec![Isa::Portable];
        for isa in [Isa::Avx2, Isa::Avx512] {
            if isa.or_supported() == isa {
                v.push(isa);
            }
        }
        v
    }

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
    fn sparse_kernels_match_masked_dense_on_every_isa() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        // Blocks of 16 and 32 (the SIMD kernels), 32x64 (rectangular) and 8 (portable);
        // a block-row with no kept block; K past one chunk.
        for &(rows, n, k, bo, bi) in &[
            (13, 64, 96, 16, 16),
            (30, 64, 640, 32, 32),
            (5, 64, 128, 32, 64),
            (7, 24, 40, 8, 8),
        ] {
            let x: Vec<f32> = (0..rows * k)
                .map(|i| ((i * 37) % 29) as f32 * 0.05 - 0.7)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 11) % 17) as f32 * 0.03 - 0.25)
                .collect();
            let b: Vec<f32> = (0..n).map(|i| i as f32 * 0.1 - 1.0).collect();
            let (gr, gc) = (n / bo, k / bi);
            // Keep about half, but drop all of block-row 0.
            let keep: Vec<bool> = (0..gr * gc).map(|i| i >= gc && (i * 7) % 5 < 3).collect();
            let weight = HostTensor::new(vec![n, k], w).unwrap();
            let sparse = BlockSparse::from_dense(&weight, [bo, bi], &keep).unwrap();
            let masked = sparse.to_dense().unwrap();
            let want = naive(&x, masked.data(), &b, rows, n, k);
            for isa in all_isas() {
                let layer = SparseLinear::pack(isa, &sparse, Some(&b));
                for threads in [1, 2] {
                    for gelu in [false, true] {
                        let out = pool.install(|| linear_sparse(&x, rows, &layer, gelu, threads));
                        assert_eq!(out.len(), rows * n);
                        for (g, z) in out.iter().zip(&want) {
                            let want = if gelu {
                                0.5 * z * (1.0 + libm::erf(z / std::f64::consts::SQRT_2))
                            } else {
                                *z
                            };
                            assert!(
                                (*g as f64 - want).abs() < 1e-4 * want.abs().max(1.0),
                                "{isa:?} {rows}x{n}x{k} b{bo}x{bi}: {g} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}
