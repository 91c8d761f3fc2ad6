//! Fused multi-head attention on the AVX-512 micro-kernel.
//!
//! Input is timm's `qkv` `[B, N, 3D]` (q, k, v for all heads side by side), output
//! `[B, N, D]` with the heads' results side by side, as timm's
//! `(attn @ v).transpose(1, 2).reshape(B, N, D)`.
//!
//! 1. Once per (item, head): `scale * K^T` is packed into [`NR`]-token panels, the
//!    layout the micro-kernel streams (`scale` folded in here costs nothing later).
//! 2. One task per (item, block of query rows), owning those output rows for all heads:
//!    `S = Q K^T` with Q broadcast straight from `qkv`, row softmax in place, then
//!    `O = P V` with V's rows read straight from `qkv` (a head's 32-column halves are
//!    contiguous), stored into the head's columns. Only a `rows x N` block of scores per
//!    task is ever materialised.
//!
//! Every output element is produced by the same operations whatever the task split, so
//! the result is deterministic.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::avx512_gemm::{self, Epilogue};
use super::packed::{MR, NR};

/// The zero bias the micro-kernel starts the products from.
static ZERO_BIAS: [f32; NR] = [0.0; NR];

/// Shape of one attention call.
#[derive(Clone, Copy)]
pub(crate) struct AttentionShape {
    pub(crate) batch: usize,
    pub(crate) tokens: usize,
    pub(crate) heads: usize,
    /// Channels per head; a multiple of [`NR`] (the caller falls back otherwise).
    pub(crate) head_dim: usize,
}

/// `attention(qkv [B, N, 3D])` `[B, N, D]`, split over the current rayon pool, written
/// straight into fresh memory (every element is stored once by the `P V` tiles).
///
/// # Safety
/// The CPU must support AVX-512F.
///
/// # Panics
/// If `qkv` does not have the size `shape` implies, or `head_dim` is not a
/// multiple of [`NR`] (internal invariants: the caller checks shapes first).
pub(crate) unsafe fn attention_avx512(
    qkv: &[f32],
    shape: AttentionShape,
    scale: f32,
    threads: usize,
) -> Vec<f32> {
    let AttentionShape {
        batch,
        tokens,
        heads,
        head_dim: hd,
    } = shape;
    let d = heads * hd;
    let three_d = 3 * d;
    assert!(
        hd.is_multiple_of(NR) && hd > 0,
        "attention: head dim {hd} not a multiple of {NR}"
    );
    assert_eq!(qkv.len(), batch * tokens * three_d, "attention: qkv size");
    let numel = batch * tokens * d;
    let mut out = Vec::with_capacity(numel);
    if numel == 0 {
        return out;
    }
    // 1. scale * K^T per (item, head), in panels of NR tokens: [panel][hd][NR].
    let panels = tokens.div_ceil(NR);
    let kt_len = panels * hd * NR;
    let mut kt = vec![0.0f32; batch * heads * kt_len];
    let pack = |(bh, dst): (usize, &mut [f32])| {
        let (b, h) = (bh / heads, bh % heads);
        for j in 0..tokens {
            let row = &qkv[(b * tokens + j) * three_d + d + h * hd..][..hd];
            let (p, jj) = (j / NR, j % NR);
            let panel = &mut dst[p * hd * NR..(p + 1) * hd * NR];
            for (c, &v) in row.iter().enumerate() {
                panel[c * NR + jj] = v * scale;
            }
        }
    };
    if threads > 1 {
        kt.par_chunks_mut(kt_len).enumerate().for_each(pack);
    } else {
        kt.chunks_mut(kt_len).enumerate().for_each(pack);
    }

    // 2. Tasks of query rows: about four per thread overall, whole MR tiles.
    let tasks_per_item = (threads * 4).div_ceil(batch).max(1);
    let rows_per_task = tokens.div_ceil(tasks_per_item).div_ceil(MR).max(1) * MR;
    let chunks_per_item = tokens.div_ceil(rows_per_task);
    let kt = &kt;
    let task = |(t, dst): (usize, &mut [MaybeUninit<f32>])| {
        let b = t / chunks_per_item;
        let q0 = (t % chunks_per_item) * rows_per_task;
        let rows = dst.len() / d;
        let mut scores = vec![0.0f32; rows * tokens];
        for h in 0..heads {
            let kt_h = &kt[(b * heads + h) * kt_len..][..kt_len];
            let q = &qkv[(b * tokens + q0) * three_d + h * hd..];
            // S = Q (scale K^T): rows x tokens.
            for p in 0..panels {
                let ep = Epilogue {
                    accumulate: false,
                    gelu: false,
                    cols: (tokens - p * NR).min(NR),
                };
                let mut r = 0;
                while r < rows {
                    let mr = (rows - r).min(MR);
                    // SAFETY: Q rows q0+r.. q0+r+mr < tokens of item b, hd floats each
                    // from `q`, three_d apart, lie in `qkv`; the panel holds hd x NR
                    // floats of `kt_h`; the tile's mr rows x cols columns of `scores`
                    // (rows x tokens) are in bounds and this task's own; the CPU has
                    // AVX-512F (this function's contract).
                    unsafe {
                        avx512_gemm::tile(
                            mr,
                            hd,
                            q.as_ptr().add(r * three_d),
                            three_d,
                            kt_h.as_ptr().add(p * hd * NR),
                            NR,
                            ZERO_BIAS.as_ptr(),
                            scores.as_mut_ptr().add(r * tokens + p * NR),
                            tokens,
                            ep,
                        );
                    }
                    r += mr;
                }
            }
            for row in scores.chunks_exact_mut(tokens) {
                // SAFETY: the CPU has AVX-512F (this function's contract).
                unsafe { super::avx512::softmax_row(row) };
            }
            // O[:, h*hd..(h+1)*hd] = P V, in NR-column halves of the head.
            let v = &qkv[b * tokens * three_d + 2 * d + h * hd..];
            let ep = Epilogue {
                accumulate: false,
                gelu: false,
                cols: NR,
            };
            for c0 in (0..hd).step_by(NR) {
                let mut r = 0;
                while r < rows {
                    let mr = (rows - r).min(MR);
                    // SAFETY: P rows r..r+mr of `scores` hold `tokens` floats each; V
                    // rows 0..tokens of item b, columns c0..c0+NR of head h lie in
                    // `qkv` (three_d apart); output rows r..r+mr, columns
                    // h*hd+c0..+NR are inside this task's `dst` (rows x d); AVX-512F
                    // as above.
                    unsafe {
                        avx512_gemm::tile(
                            mr,
                            tokens,
                            scores.as_ptr().add(r * tokens),
                            tokens,
                            v.as_ptr().add(c0),
                            three_d,
                            ZERO_BIAS.as_ptr(),
                            dst.as_mut_ptr().cast::<f32>().add(r * d + h * hd + c0),
                            d,
                            ep,
                        );
                    }
                    r += mr;
                }
            }
        }
    };
    // Chunks never straddle items: split each item's rows separately.
    let item_chunks = out.spare_capacity_mut()[..numel]
        .chunks_mut(tokens * d)
        .flat_map(|item| item.chunks_mut(rows_per_task * d))
        .enumerate();
    if threads > 1 {
        let work: Vec<(usize, &mut [MaybeUninit<f32>])> = item_chunks.collect();
        work.into_par_iter().for_each(task);
    } else {
        item_chunks.for_each(task);
    }
    // SAFETY: the chunks cover all `numel` elements, and each task's `P V` tiles store
    // every row of its chunk for every head and every column of the head (`head_dim` is
    // a whole number of NR-column tiles, stored unmasked).
    unsafe { out.set_len(numel) };
    out
}
