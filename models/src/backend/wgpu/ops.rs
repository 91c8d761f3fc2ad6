//! The wider op set on the GPU (broadcasting arithmetic, reductions, pooling and
//! resizing, data movement, batched products, and the LLM ops), each checking its
//! shapes before it records one or a few dispatches. The `Backend` impl in `mod.rs`
//! forwards to these.

use super::{
    as_u32, last_dim, numel, Kernel, WgpuBackend, WgpuTensor, ATTENTION_QB, MAX_HEAD_DIM,
    MAX_PERMUTE_RANK,
};
use crate::backend::ops::{broadcast_shape, broadcast_strides};
use crate::backend::{
    AttentionSpec, BackendError, BinaryOp, CompareOp, Pool2dSpec, PoolKind, ReduceOp, ResizeMode,
};

/// Highest rank the broadcasting kernels take (the same as `permute`'s).
const MAX_BROADCAST_RANK: usize = MAX_PERMUTE_RANK;
/// Rows at least this long (over a contiguous last axis) are reduced by a workgroup
/// each (`reduce.wgsl`'s `reduce_rows`): an LLM's argmax over its vocabulary is one
/// row of 10^5 values, too long for one thread.
const LONG_ROW: usize = 1024;
/// Up to this many queries, `attention_gqa` runs the decoding kernel (a workgroup per
/// query, its threads splitting the keys) instead of the prefill one (a thread per
/// query, 64 queries per workgroup).
const DECODE_MAX_QUERIES: usize = 4;
/// Output tile edge of the batched matmul (`bmm.wgsl`).
const BMM_TILE: usize = 16;

fn shape_err(op: &'static str, detail: String) -> BackendError {
    BackendError::shape(op, detail)
}

/// The product of `dims` (callers pass dims of an existing tensor, so it fits).
fn product(dims: &[usize]) -> usize {
    dims.iter().product()
}

/// Checks that `axis` is a dimension of `shape`.
fn check_axis(op: &'static str, shape: &[usize], axis: usize) -> Result<(), BackendError> {
    if axis >= shape.len() {
        return Err(shape_err(
            op,
            format!("axis {axis} out of range for {shape:?}"),
        ));
    }
    Ok(())
}

/// `[B, C, H, W]`, or a shape error naming the op.
fn image(op: &'static str, x: &WgpuTensor) -> Result<[usize; 4], BackendError> {
    match *x.shape.as_slice() {
        [b, c, h, w] => Ok([b, c, h, w]),
        _ => Err(shape_err(
            op,
            format!("input must be [B, C, H, W], got {:?}", x.shape),
        )),
    }
}

fn binary_code(op: BinaryOp) -> u32 {
    match op {
        BinaryOp::Add => 0,
        BinaryOp::Sub => 1,
        BinaryOp::Mul => 2,
        BinaryOp::Div => 3,
        BinaryOp::Max => 4,
        BinaryOp::Min => 5,
    }
}

fn compare_code(op: CompareOp) -> u32 {
    match op {
        CompareOp::Eq => 0,
        CompareOp::Lt => 1,
        CompareOp::Le => 2,
        CompareOp::Gt => 3,
        CompareOp::Ge => 4,
    }
}

fn reduce_code(op: ReduceOp) -> u32 {
    match op {
        ReduceOp::Sum => 0,
        ReduceOp::Mean => 1,
        ReduceOp::Max => 2,
        ReduceOp::ArgMax => 3,
    }
}

impl WgpuBackend {
    /// A `broadcast.wgsl` kernel over up to three operands (bindings 1, 3, 4).
    fn broadcast(
        &self,
        op: &'static str,
        kernel: Kernel,
        operands: &[&WgpuTensor],
        code: u32,
    ) -> Result<WgpuTensor, BackendError> {
        let mut shape = operands[0].shape.clone();
        for t in &operands[1..] {
            shape = broadcast_shape(op, &shape, &t.shape).map_err(|_| {
                let shapes: Vec<_> = operands.iter().map(|t| &t.shape).collect();
                shape_err(op, format!("shapes {shapes:?} do not broadcast"))
            })?;
        }
        let rank = shape.len();
        if rank > MAX_BROADCAST_RANK {
            return Err(shape_err(
                op,
                format!("rank {rank} exceeds the wgpu kernel's {MAX_BROADCAST_RANK}"),
            ));
        }
        let out = self.output(op, shape.clone())?;
        // Padded at the front to rank 6: extent 1, stride 0.
        let r = MAX_BROADCAST_RANK;
        let pad = r - rank;
        let mut words = vec![0u32; 4 * r + 1];
        words[..r].fill(1);
        for (j, &d) in shape.iter().enumerate() {
            words[pad + j] = as_u32(op, "dimension", d)?;
        }
        let mut buffers = vec![(2, out.buf.buffer().clone())];
        for (k, (t, binding)) in operands.iter().zip([1, 3, 4]).enumerate() {
            for (j, s) in broadcast_strides(&t.shape, rank).into_iter().enumerate() {
                words[(k + 1) * r + pad + j] = as_u32(op, "stride", s)?;
            }
            buffers.push((binding, t.buf.buffer().clone()));
        }
        words[4 * r] = code;
        self.elementwise(op, kernel, numel(&out), &words, buffers)?;
        Ok(out)
    }

    pub(super) fn binary_op(
        &self,
        a: &WgpuTensor,
        b: &WgpuTensor,
        op: BinaryOp,
    ) -> Result<WgpuTensor, BackendError> {
        self.broadcast("binary", Kernel::Binary, &[a, b], binary_code(op))
    }

    pub(super) fn compare_op(
        &self,
        a: &WgpuTensor,
        b: &WgpuTensor,
        op: CompareOp,
    ) -> Result<WgpuTensor, BackendError> {
        self.broadcast("compare", Kernel::Compare, &[a, b], compare_code(op))
    }

    pub(super) fn select_op(
        &self,
        mask: &WgpuTensor,
        a: &WgpuTensor,
        b: &WgpuTensor,
    ) -> Result<WgpuTensor, BackendError> {
        self.broadcast("select", Kernel::Where, &[mask, a, b], 0)
    }

    pub(super) fn reduce_op(
        &self,
        x: &WgpuTensor,
        axis: usize,
        op: ReduceOp,
    ) -> Result<WgpuTensor, BackendError> {
        check_axis("reduce", &x.shape, axis)?;
        let n = x.shape[axis];
        if n == 0 {
            return Err(shape_err(
                "reduce",
                format!("axis {axis} of {:?} is empty", x.shape),
            ));
        }
        let inner = product(&x.shape[axis + 1..]);
        let mut shape = x.shape.clone();
        shape.remove(axis);
        let out = self.output("reduce", shape)?;
        let words = [n as u32, inner.max(1) as u32, reduce_code(op)];
        let buffers = vec![(1, x.buf.buffer().clone()), (2, out.buf.buffer().clone())];
        let rows = numel(&out);
        if inner == 1 && n >= LONG_ROW && rows > 0 {
            // A workgroup per row instead of one thread walking it.
            let grid = self.grid("reduce", rows)?;
            let mut params = vec![rows as u32, grid[0]];
            params.extend(words);
            self.dispatch(Kernel::ReduceRows, &params, buffers, grid)?;
        } else {
            self.elementwise("reduce", Kernel::Reduce, rows, &words, buffers)?;
        }
        Ok(out)
    }

    pub(super) fn pool2d_op(
        &self,
        x: &WgpuTensor,
        spec: Pool2dSpec,
    ) -> Result<WgpuTensor, BackendError> {
        let [b, c, h, w] = image("pool2d", x)?;
        let Pool2dSpec {
            kind,
            kernel: [kh, kw],
            stride: [sh, sw],
            padding: [ph, pw],
        } = spec;
        if kh == 0 || kw == 0 || sh == 0 || sw == 0 {
            return Err(shape_err(
                "pool2d",
                format!(
                    "kernel {:?} and stride {:?} must be >= 1",
                    spec.kernel, spec.stride
                ),
            ));
        }
        if ph.saturating_mul(2) > kh || pw.saturating_mul(2) > kw {
            return Err(shape_err(
                "pool2d",
                format!(
                    "padding {:?} exceeds half the {kh}x{kw} window",
                    spec.padding
                ),
            ));
        }
        let (hp, wp) = (h + 2 * ph, w + 2 * pw);
        if hp < kh || wp < kw {
            return Err(shape_err(
                "pool2d",
                format!("input {h}x{w} (padded {hp}x{wp}) is smaller than the {kh}x{kw} window"),
            ));
        }
        let (ho, wo) = ((hp - kh) / sh + 1, (wp - kw) / sw + 1);
        let out = self.output("pool2d", vec![b, c, ho, wo])?;
        let words = [h, w, ho, wo, kh, kw, sh, sw, ph, pw]
            .iter()
            .map(|&v| as_u32("pool2d", "dimension", v))
            .chain([Ok(u32::from(kind == PoolKind::Avg))])
            .collect::<Result<Vec<_>, _>>()?;
        self.elementwise(
            "pool2d",
            Kernel::Pool2d,
            numel(&out),
            &words,
            vec![(1, x.buf.buffer().clone()), (2, out.buf.buffer().clone())],
        )?;
        Ok(out)
    }

    pub(super) fn resize_op(
        &self,
        x: &WgpuTensor,
        [ho, wo]: [usize; 2],
        mode: ResizeMode,
    ) -> Result<WgpuTensor, BackendError> {
        let [b, c, h, w] = image("resize", x)?;
        if ho == 0 || wo == 0 || h == 0 || w == 0 {
            return Err(shape_err(
                "resize",
                format!("cannot resize {h}x{w} to {ho}x{wo}: sizes must be >= 1"),
            ));
        }
        // Nearest multiplies dst * in in u32.
        as_u32("resize", "size product", ho.saturating_mul(h))?;
        as_u32("resize", "size product", wo.saturating_mul(w))?;
        let out = self.output("resize", vec![b, c, ho, wo])?;
        // PyTorch's scales, in f32 as its CPU kernel computes them.
        let scale = |i: usize, o: usize, align: bool| -> f32 {
            if !align {
                i as f32 / o as f32
            } else if o > 1 {
                (i - 1) as f32 / (o - 1) as f32
            } else {
                0.0
            }
        };
        let (code, align) = match mode {
            ResizeMode::Nearest => (0, false),
            ResizeMode::Bilinear { align_corners } => (1 + u32::from(align_corners), align_corners),
        };
        let words = [
            h as u32,
            w as u32,
            ho as u32,
            wo as u32,
            code,
            scale(h, ho, align).to_bits(),
            scale(w, wo, align).to_bits(),
        ];
        self.elementwise(
            "resize",
            Kernel::Resize,
            numel(&out),
            &words,
            vec![(1, x.buf.buffer().clone()), (2, out.buf.buffer().clone())],
        )?;
        Ok(out)
    }

    /// Copies `outer` runs of `run` values from `src` (run `o` at
    /// `o * src_stride + src_off`) into `dst` (at `o * dst_stride + dst_off`).
    #[allow(clippy::too_many_arguments)]
    fn copy_runs(
        &self,
        op: &'static str,
        src: &wgpu::Buffer,
        dst: &wgpu::Buffer,
        outer: usize,
        run: usize,
        (src_stride, src_off): (usize, usize),
        (dst_stride, dst_off): (usize, usize),
    ) -> Result<(), BackendError> {
        if outer == 0 || run == 0 {
            return Ok(());
        }
        let words = [run, src_stride, src_off, dst_stride, dst_off]
            .iter()
            .map(|&v| as_u32(op, "offset", v))
            .collect::<Result<Vec<_>, _>>()?;
        self.elementwise(
            op,
            Kernel::CopyRuns,
            outer * run,
            &words,
            vec![(1, src.clone()), (2, dst.clone())],
        )
    }

    pub(super) fn concat_op(
        &self,
        xs: &[&WgpuTensor],
        axis: usize,
    ) -> Result<WgpuTensor, BackendError> {
        let Some(first) = xs.first() else {
            return Err(shape_err("concat", "needs at least one tensor".into()));
        };
        check_axis("concat", &first.shape, axis)?;
        let mut shape = first.shape.clone();
        shape[axis] = 0;
        for x in xs {
            let agrees = x.shape.len() == shape.len()
                && x.shape
                    .iter()
                    .zip(&first.shape)
                    .enumerate()
                    .all(|(i, (a, b))| i == axis || a == b);
            if !agrees {
                return Err(shape_err(
                    "concat",
                    format!(
                        "{:?} and {:?} differ outside axis {axis}",
                        first.shape, x.shape
                    ),
                ));
            }
            shape[axis] += x.shape[axis];
        }
        let total = shape[axis];
        let out = self.output("concat", shape)?;
        let outer = product(&first.shape[..axis]);
        let inner = product(&first.shape[axis + 1..]);
        let mut at = 0;
        for x in xs {
            let run = x.shape[axis] * inner;
            self.copy_runs(
                "concat",
                x.buf.buffer(),
                out.buf.buffer(),
                outer,
                run,
                (run, 0),
                (total * inner, at * inner),
            )?;
            at += x.shape[axis];
        }
        Ok(out)
    }

    pub(super) fn slice_op(
        &self,
        x: &WgpuTensor,
        axis: usize,
        start: usize,
        len: usize,
    ) -> Result<WgpuTensor, BackendError> {
        check_axis("slice", &x.shape, axis)?;
        let d = x.shape[axis];
        if start.checked_add(len).is_none_or(|end| end > d) {
            return Err(shape_err(
                "slice",
                format!(
                    "{start}..{start}+{len} out of range for axis {axis} of {:?}",
                    x.shape
                ),
            ));
        }
        let mut shape = x.shape.clone();
        shape[axis] = len;
        let out = self.output("slice", shape)?;
        let inner = product(&x.shape[axis + 1..]);
        self.copy_runs(
            "slice",
            x.buf.buffer(),
            out.buf.buffer(),
            product(&x.shape[..axis]),
            len * inner,
            (d * inner, start * inner),
            (len * inner, 0),
        )?;
        Ok(out)
    }

    pub(super) fn write_slice_op(
        &self,
        dst: &mut WgpuTensor,
        axis: usize,
        start: usize,
        src: &WgpuTensor,
    ) -> Result<(), BackendError> {
        check_axis("write_slice", &dst.shape, axis)?;
        let agrees = src.shape.len() == dst.shape.len()
            && src
                .shape
                .iter()
                .zip(&dst.shape)
                .enumerate()
                .all(|(i, (a, b))| i == axis || a == b);
        let (n, d) = (src.shape.get(axis).copied().unwrap_or(0), dst.shape[axis]);
        if !agrees || start.checked_add(n).is_none_or(|end| end > d) {
            return Err(shape_err(
                "write_slice",
                format!(
                    "cannot write {:?} into {:?} at {start} along axis {axis}",
                    src.shape, dst.shape
                ),
            ));
        }
        let inner = product(&dst.shape[axis + 1..]);
        self.copy_runs(
            "write_slice",
            src.buf.buffer(),
            dst.buf.buffer(),
            product(&dst.shape[..axis]),
            n * inner,
            (n * inner, 0),
            (d * inner, start * inner),
        )
    }

    pub(super) fn bmm(
        &self,
        a: &WgpuTensor,
        b: &WgpuTensor,
        transpose_b: bool,
    ) -> Result<WgpuTensor, BackendError> {
        let refuse = || {
            shape_err(
                "matmul",
                format!(
                    "cannot multiply {:?} by {:?}{}",
                    a.shape,
                    b.shape,
                    if transpose_b { " (transposed)" } else { "" }
                ),
            )
        };
        let rank = a.shape.len();
        if rank < 2 || b.shape.len() != rank || a.shape[..rank - 2] != b.shape[..rank - 2] {
            return Err(refuse());
        }
        let (m, k) = (a.shape[rank - 2], a.shape[rank - 1]);
        let (kb, n) = if transpose_b {
            (b.shape[rank - 1], b.shape[rank - 2])
        } else {
            (b.shape[rank - 2], b.shape[rank - 1])
        };
        if k != kb {
            return Err(refuse());
        }
        let batch = product(&a.shape[..rank - 2]);
        let mut shape = a.shape[..rank - 2].to_vec();
        shape.extend([m, n]);
        let out = self.output("matmul", shape)?;
        // K = 0 is an empty sum: the kernel writes zeros.
        if numel(&out) == 0 {
            return Ok(out);
        }
        let (tm, tn) = (m.div_ceil(BMM_TILE), n.div_ceil(BMM_TILE));
        let grid = self.grid("matmul", batch * tm * tn)?;
        let params = [
            batch as u32,
            m as u32,
            n as u32,
            as_u32("matmul", "K", k)?,
            u32::from(transpose_b),
            tm as u32,
            tn as u32,
            grid[0],
        ];
        self.dispatch(
            Kernel::Bmm,
            &params,
            vec![
                (1, a.buf.buffer().clone()),
                (2, out.buf.buffer().clone()),
                (3, b.buf.buffer().clone()),
            ],
            grid,
        )?;
        Ok(out)
    }

    pub(super) fn embedding_op(
        &self,
        table: &WgpuTensor,
        ids: &[u32],
    ) -> Result<WgpuTensor, BackendError> {
        let &[v, d] = table.shape.as_slice() else {
            return Err(shape_err(
                "embedding",
                format!("table must be [V, D], got {:?}", table.shape),
            ));
        };
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= v) {
            return Err(shape_err(
                "embedding",
                format!("index {bad} out of range for a table of {v} rows"),
            ));
        }
        let out = self.output("embedding", vec![ids.len(), d])?;
        if numel(&out) == 0 {
            return Ok(out);
        }
        let ids = self.create_with(bytemuck::cast_slice(ids), wgpu::BufferUsages::STORAGE)?;
        self.elementwise(
            "embedding",
            Kernel::GatherRows,
            numel(&out),
            &[d as u32],
            vec![
                (1, table.buf.buffer().clone()),
                (2, out.buf.buffer().clone()),
                (3, ids),
            ],
        )?;
        Ok(out)
    }

    pub(super) fn rms_norm_op(
        &self,
        x: &WgpuTensor,
        gamma: &WgpuTensor,
        eps: f32,
    ) -> Result<WgpuTensor, BackendError> {
        let d = last_dim("rms_norm", x)?;
        if gamma.shape != [d] {
            return Err(BackendError::shape(
                "rms_norm",
                format!(
                    "input {:?} needs gamma of [{d}], got {:?}",
                    x.shape, gamma.shape
                ),
            ));
        }
        self.row_kernel(
            "rms_norm",
            Kernel::RmsNorm,
            x,
            eps,
            vec![(3, gamma.buf.buffer().clone())],
        )
    }

    pub(super) fn rope_op(
        &self,
        x: &WgpuTensor,
        cos: &WgpuTensor,
        sin: &WgpuTensor,
    ) -> Result<WgpuTensor, BackendError> {
        let &[_, n, heads, hd] = x.shape.as_slice() else {
            return Err(shape_err(
                "rope",
                format!("x must be [B, N, H, hd], got {:?}", x.shape),
            ));
        };
        if !hd.is_multiple_of(2) {
            return Err(shape_err("rope", format!("head width {hd} must be even")));
        }
        if cos.shape != [n, hd] || sin.shape != [n, hd] {
            return Err(shape_err(
                "rope",
                format!(
                    "x {:?} needs cos and sin of [{n}, {hd}], got {:?} and {:?}",
                    x.shape, cos.shape, sin.shape
                ),
            ));
        }
        let out = self.output("rope", x.shape.clone())?;
        self.elementwise(
            "rope",
            Kernel::Rope,
            numel(x),
            &[n as u32, heads as u32, hd as u32],
            vec![
                (1, x.buf.buffer().clone()),
                (2, out.buf.buffer().clone()),
                (3, cos.buf.buffer().clone()),
                (4, sin.buf.buffer().clone()),
            ],
        )?;
        Ok(out)
    }

    pub(super) fn attention_gqa_op(
        &self,
        q: &WgpuTensor,
        k: &WgpuTensor,
        v: &WgpuTensor,
        spec: AttentionSpec,
    ) -> Result<WgpuTensor, BackendError> {
        let op = "attention_gqa";
        let &[batch, nq, hq, hd] = q.shape.as_slice() else {
            return Err(shape_err(
                op,
                format!("q must be [B, Nq, Hq, hd], got {:?}", q.shape),
            ));
        };
        let &[kb, nk, hkv, khd] = k.shape.as_slice() else {
            return Err(shape_err(
                op,
                format!("k must be [B, Nk, Hkv, hd], got {:?}", k.shape),
            ));
        };
        if v.shape != k.shape || kb != batch || khd != hd {
            return Err(shape_err(
                op,
                format!(
                    "q {:?}, k {:?} and v {:?} disagree on batch or head width",
                    q.shape, k.shape, v.shape
                ),
            ));
        }
        if hkv == 0 || !hq.is_multiple_of(hkv) {
            return Err(shape_err(
                op,
                format!("{hq} query heads are not a multiple of {hkv} key/value heads"),
            ));
        }
        if hd > MAX_HEAD_DIM {
            return Err(shape_err(
                op,
                format!("head width {hd} exceeds the wgpu kernel's {MAX_HEAD_DIM}"),
            ));
        }
        if spec.kv_len > nk {
            return Err(shape_err(
                op,
                format!("kv_len {} exceeds the {nk} keys given", spec.kv_len),
            ));
        }
        let out = self.output(op, vec![batch, nq, hq * hd])?;
        if numel(&out) == 0 {
            return Ok(out);
        }
        if spec.kv_len == 0 {
            return Err(shape_err(op, "kv_len is 0: the queries see no key".into()));
        }
        let q_off = spec.causal.unwrap_or(0);
        let decode = nq <= DECODE_MAX_QUERIES;
        // The kernel computes positions q_off + i in u32.
        as_u32(op, "causal position", q_off.saturating_add(nq))?;
        let q_blocks = nq.div_ceil(ATTENTION_QB);
        let groups = batch * hq * if decode { nq } else { q_blocks };
        let grid = self.grid(op, groups)?;
        let params = [
            batch as u32,
            nq as u32,
            nk as u32,
            hq as u32,
            hkv as u32,
            spec.scale.to_bits(),
            spec.kv_len as u32,
            u32::from(spec.causal.is_some()),
            as_u32(op, "causal offset", q_off)?,
            q_blocks as u32,
            grid[0],
        ];
        self.dispatch(
            Kernel::AttentionGqa {
                head_dim: hd as u32,
                decode,
            },
            &params,
            vec![
                (1, q.buf.buffer().clone()),
                (2, out.buf.buffer().clone()),
                (3, k.buf.buffer().clone()),
                (4, v.buf.buffer().clone()),
            ],
            grid,
        )?;
        Ok(out)
    }
}
