//! Grouped-query attention over a (possibly preallocated, partly filled) key/value
//! cache, and the rotary position embedding that precedes it.
//!
//! Work is one task per (item, query head, block of query rows), writing its rows into
//! a scratch output laid out `[B, Hq, Nq, hd]` so that each task owns one contiguous
//! run. A task computes `S = scale * Q K^T` over the keys its last row sees, softmaxes
//! each row over the keys *it* sees (the causal mask: later keys get weight 0, as they
//! would from `-inf` scores), and `O = S V`, with Q, K and V read in place through
//! strided views (the key/value head of query head `h` is `h / (Hq / Hkv)`). The
//! scratch is then transposed to `[B, Nq, Hq * hd]`, except at `Nq == 1` (a decode
//! step) or `Hq == 1`, where both layouts coincide and nothing moves.
//!
//! A decode step at batch 1 thus still splits over the heads, and every output
//! element is produced by the same operations whatever the split.

use rayon::prelude::*;

use crate::backend::ops::{attention_gqa_geometry, rope_geometry, GqaGeometry};
use crate::backend::{AttentionSpec, BackendError};

use super::matmul::{gemm, View};
use super::{kernels, CpuBackend, CpuTensor, ATTENTION_MIN_ROWS};

impl CpuBackend {
    pub(super) fn attention_gqa_impl(
        &self,
        q: &CpuTensor,
        k: &CpuTensor,
        v: &CpuTensor,
        spec: AttentionSpec,
    ) -> Result<CpuTensor, BackendError> {
        let g = attention_gqa_geometry(&q.shape, &k.shape, &v.shape, &spec)?;
        let GqaGeometry {
            batch,
            nq,
            nk,
            q_heads: hq,
            kv_heads: hkv,
            head_dim: hd,
            ..
        } = g;
        let out_shape = vec![batch, nq, hq * hd];
        // Same size as q, whose shape is a valid tensor's.
        let mut scratch = vec![0.0f32; q.data.len()];
        if scratch.is_empty() {
            return Ok(CpuTensor::new(out_shape, scratch));
        }
        let group = hq / hkv;
        let isa = self.isa;
        if nq == 1 {
            return Ok(self.decode_step(q, k, v, &g, spec.scale, scratch, out_shape));
        }
        let blocks = batch * hq;
        let tasks_per_block = (self.threads * 4).div_ceil(blocks).max(1);
        let rows_per_task = nq.div_ceil(tasks_per_block).max(ATTENTION_MIN_ROWS);
        let chunks_per_block = nq.div_ceil(rows_per_task);
        let task = |(t, dst): (usize, &mut [f32])| {
            let block = t / chunks_per_block;
            let (b, h) = (block / hq, block % hq);
            let i0 = (t % chunks_per_block) * rows_per_task;
            let rows = dst.len() / hd;
            let kv_offset = (b * nk * hkv + h / group) * hd;
            // Visibility grows with the query index: the last row sees the most.
            let keys = g.visible(i0 + rows - 1);
            let mut scores = vec![0.0f32; rows * keys];
            gemm(
                rows,
                keys,
                hd,
                &mut scores,
                View::row_major(0, keys),
                false,
                &q.data,
                View {
                    offset: ((b * nq + i0) * hq + h) * hd,
                    rs: hq * hd,
                    cs: 1,
                },
                &k.data,
                View {
                    offset: kv_offset,
                    rs: 1,
                    cs: hkv * hd,
                },
                spec.scale,
                1,
            );
            for (r, row) in scores.chunks_exact_mut(keys).enumerate() {
                let seen = g.visible(i0 + r);
                kernels::softmax_row(isa, &mut row[..seen]);
                row[seen..].fill(0.0);
            }
            gemm(
                rows,
                hd,
                keys,
                dst,
                View::row_major(0, hd),
                false,
                &scores,
                View::row_major(0, keys),
                &v.data,
                View {
                    offset: kv_offset,
                    rs: hkv * hd,
                    cs: 1,
                },
                1.0,
                1,
            );
        };
        // Chunks never straddle (item, head) blocks.
        let chunks = scratch
            .chunks_mut(nq * hd)
            .flat_map(|block| block.chunks_mut(rows_per_task * hd))
            .enumerate();
        if self.threads == 1 {
            chunks.for_each(task);
        } else {
            let work: Vec<(usize, &mut [f32])> = chunks.collect();
            self.in_pool(|| work.into_par_iter().for_each(task));
        }
        if nq == 1 || hq == 1 {
            return Ok(CpuTensor::new(out_shape, scratch));
        }
        let mut out = vec![0.0f32; scratch.len()];
        for (bt, dst) in out.chunks_exact_mut(hq * hd).enumerate() {
            let (b, i) = (bt / nq, bt % nq);
            for (h, head) in dst.chunks_exact_mut(hd).enumerate() {
                let at = ((b * hq + h) * nq + i) * hd;
                head.copy_from_slice(&scratch[at..at + hd]);
            }
        }
        Ok(CpuTensor::new(out_shape, out))
    }

    /// One query per item (a decode step): the query heads sharing a key/value head
    /// are rows of one `[group, hd]` block of `q`, so each (item, kv head) is a single
    /// task of two GEMMs over the shared keys, instead of `group` tasks each re-reading
    /// them (at batch 1 the per-call overhead was most of the time).
    #[allow(clippy::too_many_arguments)]
    fn decode_step(
        &self,
        q: &CpuTensor,
        k: &CpuTensor,
        v: &CpuTensor,
        g: &GqaGeometry,
        scale: f32,
        mut out: Vec<f32>,
        out_shape: Vec<usize>,
    ) -> CpuTensor {
        let GqaGeometry {
            nk,
            q_heads: hq,
            kv_heads: hkv,
            head_dim: hd,
            ..
        } = *g;
        let group = hq / hkv;
        let keys = g.visible(0);
        let isa = self.isa;
        // `out` is `[B, Hq, hd]`: task t = (b, kv head) owns rows t * group.. of it.
        let task = |(t, dst): (usize, &mut [f32])| {
            let (b, kvh) = (t / hkv, t % hkv);
            let kv_offset = (b * nk * hkv + kvh) * hd;
            let mut scores = vec![0.0f32; group * keys];
            gemm(
                group,
                keys,
                hd,
                &mut scores,
                View::row_major(0, keys),
                false,
                &q.data,
                View::row_major(t * group * hd, hd),
                &k.data,
                View {
                    offset: kv_offset,
                    rs: 1,
                    cs: hkv * hd,
                },
                scale,
                1,
            );
            for row in scores.chunks_exact_mut(keys) {
                kernels::softmax_row(isa, row);
            }
            gemm(
                group,
                hd,
                keys,
                dst,
                View::row_major(0, hd),
                false,
                &scores,
                View::row_major(0, keys),
                &v.data,
                View {
                    offset: kv_offset,
                    rs: hkv * hd,
                    cs: 1,
                },
                1.0,
                1,
            );
        };
        let chunks = out.chunks_mut(group * hd).enumerate();
        if self.threads == 1 {
            chunks.for_each(task);
        } else {
            let work: Vec<(usize, &mut [f32])> = chunks.collect();
            self.in_pool(|| work.into_par_iter().for_each(task));
        }
        CpuTensor::new(out_shape, out)
    }

    pub(super) fn rope_impl(
        &self,
        x: &CpuTensor,
        cos: &CpuTensor,
        sin: &CpuTensor,
    ) -> Result<CpuTensor, BackendError> {
        let [_, n, h, hd] = rope_geometry(&x.shape, &cos.shape, &sin.shape)?;
        let half = hd / 2;
        let mut out = vec![0.0f32; x.data.len()];
        self.for_row_chunks(&mut out, hd, |row0, chunk| {
            for (r, dst) in chunk.chunks_exact_mut(hd).enumerate() {
                let row = row0 + r;
                let t = (row / h) % n;
                let (c, s) = (&cos.data[t * hd..][..hd], &sin.data[t * hd..][..hd]);
                let (x1, x2) = x.data[row * hd..][..hd].split_at(half);
                let (d1, d2) = dst.split_at_mut(half);
                // x * cos + rotate_half(x) * sin, rotate_half([x1, x2]) = [-x2, x1].
                for i in 0..half {
                    d1[i] = x1[i] * c[i] - x2[i] * s[i];
                    d2[i] = x2[i] * c[half + i] + x1[i] * s[half + i];
                }
            }
        });
        Ok(CpuTensor::new(x.shape.clone(), out))
    }
}
