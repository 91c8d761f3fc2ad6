//! The parameters of the wider op set: what each op is told besides its tensors.
//!
//! The semantics are PyTorch's, so that a model ported from PyTorch reads the same here;
//! each type says where it differs. Shared shape checks live here too, so that every
//! backend refuses the same inputs with the same words.

use super::BackendError;
use crate::tensor::{checked_numel, MAX_ELEMENTS};

/// An elementwise activation: [`crate::Backend::activate`], and the fused epilogue of
/// [`crate::Backend::linear`] and of a prepared convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Activation {
    /// None: `y = x`.
    Identity,
    /// Exact GELU, `0.5 * y * (1 + erf(y / sqrt(2)))` (PyTorch's `nn.GELU()` default).
    Gelu,
    /// `max(y, 0)`.
    Relu,
    /// `min(max(y, 0), 6)` (MobileNet's).
    Relu6,
    /// `y * sigmoid(y)` (SiLU, swish; Llama's MLP gate).
    Silu,
    /// `1 / (1 + exp(-y))`.
    Sigmoid,
    /// `y * relu6(y + 3) / 6` (PyTorch's `nn.Hardswish`).
    HardSwish,
}

impl Activation {
    /// Every activation, for tables and tests.
    pub const ALL: [Activation; 7] = [
        Self::Identity,
        Self::Gelu,
        Self::Relu,
        Self::Relu6,
        Self::Silu,
        Self::Sigmoid,
        Self::HardSwish,
    ];
}

/// How a convolution slides: PyTorch's `nn.Conv2d` arguments, plus a fused activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dSpec {
    /// Step between output positions, `[y, x]`.
    pub stride: [usize; 2],
    /// Zeros added on each side, `[y, x]`.
    pub padding: [usize; 2],
    /// Spacing between kernel taps, `[y, x]` (1: dense).
    pub dilation: [usize; 2],
    /// Channel groups: input channels `C` and output channels `O` are both split into
    /// `groups`; the weight is `[O, C / groups, kh, kw]`. `groups == C == O` is a
    /// depthwise convolution.
    pub groups: usize,
    /// Applied to the output after the bias, fused.
    pub activation: Activation,
}

impl Conv2dSpec {
    /// Stride and padding only: no dilation, one group, no activation.
    pub const fn new(stride: [usize; 2], padding: [usize; 2]) -> Self {
        Self {
            stride,
            padding,
            dilation: [1, 1],
            groups: 1,
            activation: Activation::Identity,
        }
    }

    /// The same with `groups` groups.
    pub const fn groups(mut self, groups: usize) -> Self {
        self.groups = groups;
        self
    }

    /// The same with dilation `dilation`.
    pub const fn dilation(mut self, dilation: [usize; 2]) -> Self {
        self.dilation = dilation;
        self
    }

    /// The same with a fused activation.
    pub const fn activation(mut self, activation: Activation) -> Self {
        self.activation = activation;
        self
    }
}

/// A broadcasting binary op ([`crate::Backend::binary`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    /// `a + b`.
    Add,
    /// `a - b`.
    Sub,
    /// `a * b`.
    Mul,
    /// `a / b` (IEEE: division by zero gives an infinity or NaN).
    Div,
    /// `max(a, b)` (a NaN operand gives NaN, as `torch.maximum`).
    Max,
    /// `min(a, b)` (a NaN operand gives NaN, as `torch.minimum`).
    Min,
}

impl BinaryOp {
    /// Every binary op.
    pub const ALL: [BinaryOp; 6] = [
        Self::Add,
        Self::Sub,
        Self::Mul,
        Self::Div,
        Self::Max,
        Self::Min,
    ];
}

/// A broadcasting comparison ([`crate::Backend::compare`]); the result is 1.0 where it
/// holds and 0.0 elsewhere (any comparison with NaN is false, as IEEE says).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CompareOp {
    /// `a == b`.
    Eq,
    /// `a < b`.
    Lt,
    /// `a <= b`.
    Le,
    /// `a > b`.
    Gt,
    /// `a >= b`.
    Ge,
}

impl CompareOp {
    /// Every comparison.
    pub const ALL: [CompareOp; 5] = [Self::Eq, Self::Lt, Self::Le, Self::Gt, Self::Ge];
}

/// A reduction over one axis ([`crate::Backend::reduce`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    /// Sum.
    Sum,
    /// Arithmetic mean.
    Mean,
    /// Largest value.
    Max,
    /// Index of the largest value along the axis, as an `f32` (exact below 2^24); the
    /// first one on ties, as `torch.argmax`.
    ArgMax,
}

impl ReduceOp {
    /// Every reduction.
    pub const ALL: [ReduceOp; 4] = [Self::Sum, Self::Mean, Self::Max, Self::ArgMax];
}

/// Which pooling ([`crate::Backend::pool2d`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoolKind {
    /// Largest value in the window; padding never wins (it is `-inf`).
    Max,
    /// Mean over the window; padded positions count in the divisor, as PyTorch's
    /// `nn.AvgPool2d` default (`count_include_pad=True`).
    Avg,
}

/// A 2-D pooling window over `[B, C, H, W]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool2dSpec {
    /// Max or average.
    pub kind: PoolKind,
    /// Window `[y, x]`.
    pub kernel: [usize; 2],
    /// Step `[y, x]`.
    pub stride: [usize; 2],
    /// Padding on each side `[y, x]`; at most half the window, as PyTorch requires.
    pub padding: [usize; 2],
}

impl Pool2dSpec {
    /// A global pool: the window is the whole `h x w` plane, the output `[B, C, 1, 1]`.
    pub const fn global(kind: PoolKind, [h, w]: [usize; 2]) -> Self {
        Self {
            kind,
            kernel: [h, w],
            stride: [1, 1],
            padding: [0, 0],
        }
    }
}

/// How [`crate::Backend::resize`] samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResizeMode {
    /// PyTorch's `F.interpolate(mode="nearest")`: source index `floor(dst * in / out)`.
    Nearest,
    /// PyTorch's `F.interpolate(mode="bilinear", align_corners=...)`; without aligned
    /// corners the source coordinate is `(dst + 0.5) * in / out - 0.5`, clamped at 0.
    Bilinear {
        /// `align_corners`: map the corner pixels' centres onto each other.
        align_corners: bool,
    },
}

/// What [`crate::Backend::attention_gqa`] is told besides its tensors.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionSpec {
    /// Multiplies `q k^T` before the softmax (usually `head_dim^-0.5`).
    pub scale: f32,
    /// Keys `0..kv_len` of `k` and `v` take part; the rest of a preallocated cache is
    /// ignored.
    pub kv_len: usize,
    /// A causal mask: query `i` sits at absolute position `q_offset + i` and sees keys
    /// `j <= q_offset + i` only. `None`: every query sees every key.
    pub causal: Option<usize>,
}

/// Checks `a` and `b` for NumPy/PyTorch broadcasting and returns the result's shape:
/// shapes are aligned at their last dimension and each pair of sizes must be equal or
/// one of them 1.
pub fn broadcast_shape(
    op: &'static str,
    a: &[usize],
    b: &[usize],
) -> Result<Vec<usize>, BackendError> {
    let rank = a.len().max(b.len());
    let mut out = Vec::with_capacity(rank);
    for i in 0..rank {
        let da = dim_from_end(a, rank - 1 - i);
        let db = dim_from_end(b, rank - 1 - i);
        out.push(match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => {
                return Err(BackendError::shape(
                    op,
                    format!("shapes {a:?} and {b:?} do not broadcast"),
                ))
            }
        });
    }
    Ok(out)
}

/// Size of dimension `from_end` counted from the last (0: the last); 1 past the rank.
fn dim_from_end(shape: &[usize], from_end: usize) -> usize {
    shape
        .len()
        .checked_sub(from_end + 1)
        .map_or(1, |i| shape[i])
}

/// Row-major strides of `shape` as seen from a broadcast result of rank `rank`: a
/// broadcast (size-1 or missing) dimension has stride 0. Backends walk both operands
/// of a binary op with these.
pub fn broadcast_strides(shape: &[usize], rank: usize) -> Vec<usize> {
    let mut strides = vec![0; rank];
    let mut step = 1;
    for (i, &d) in shape.iter().enumerate().rev() {
        let at = rank - (shape.len() - i);
        strides[at] = if d == 1 { 0 } else { step };
        step *= d;
    }
    strides
}

/// `n` elements or a shape error naming `what` (every allocation sized from shapes
/// goes through here or [`checked_numel`]).
fn numel(op: &'static str, what: &str, shape: &[usize]) -> Result<usize, BackendError> {
    checked_numel(shape)
        .ok_or_else(|| BackendError::shape(op, format!("{what} {shape:?} is too large")))
}

/// A shape viewed around one axis: `[outer.., n, inner..]` as `outer x n x inner`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AxisSplit {
    /// Product of the dimensions before the axis.
    pub(crate) outer: usize,
    /// The axis' own size.
    pub(crate) n: usize,
    /// Product of the dimensions after it.
    pub(crate) inner: usize,
}

/// Splits `shape` around `axis`, refusing an axis past the rank.
pub(crate) fn axis_split(
    op: &'static str,
    shape: &[usize],
    axis: usize,
) -> Result<AxisSplit, BackendError> {
    let Some(&n) = shape.get(axis) else {
        return Err(BackendError::shape(
            op,
            format!(
                "axis {axis} of a tensor of rank {} ({shape:?})",
                shape.len()
            ),
        ));
    };
    Ok(AxisSplit {
        outer: numel(op, "tensor", &shape[..axis])?,
        n,
        inner: numel(op, "tensor", &shape[axis + 1..])?,
    })
}

/// The shape three operands broadcast to ([`crate::Backend::select`]).
pub(crate) fn broadcast_shape3(
    op: &'static str,
    a: &[usize],
    b: &[usize],
    c: &[usize],
) -> Result<Vec<usize>, BackendError> {
    broadcast_shape(op, &broadcast_shape(op, a, b)?, c)
}

/// Checks a reduction and returns its split and output shape.
pub(crate) fn reduce_geometry(
    shape: &[usize],
    axis: usize,
) -> Result<(AxisSplit, Vec<usize>), BackendError> {
    let split = axis_split("reduce", shape, axis)?;
    if split.n == 0 {
        return Err(BackendError::shape(
            "reduce",
            format!("axis {axis} of {shape:?} is empty"),
        ));
    }
    let mut out = shape.to_vec();
    out.remove(axis);
    Ok((split, out))
}

/// The checked geometry of a pooling or resampling over `[B, C, H, W]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PlaneGeometry {
    /// `B * C`: planes processed independently.
    pub(crate) planes: usize,
    /// Input height and width.
    pub(crate) h: usize,
    pub(crate) w: usize,
    /// Output height and width.
    pub(crate) ho: usize,
    pub(crate) wo: usize,
}

impl PlaneGeometry {
    /// The output shape `[B, C, ho, wo]` for input `shape`.
    pub(crate) fn out_shape(&self, shape: &[usize]) -> Vec<usize> {
        let mut s = shape.to_vec();
        s.truncate(2);
        s.extend([self.ho, self.wo]);
        s
    }
}

fn image(op: &'static str, shape: &[usize]) -> Result<[usize; 4], BackendError> {
    let &[b, c, h, w] = shape else {
        return Err(BackendError::shape(
            op,
            format!("input must be [B, C, H, W], got {shape:?}"),
        ));
    };
    Ok([b, c, h, w])
}

/// Checks a pooling window against its input (PyTorch's rules: a non-empty plane,
/// kernel and stride at least 1, padding at most half the kernel, the padded input at
/// least one window).
pub(crate) fn pool2d_geometry(
    shape: &[usize],
    spec: &Pool2dSpec,
) -> Result<PlaneGeometry, BackendError> {
    const OP: &str = "pool2d";
    let [b, c, h, w] = image(OP, shape)?;
    let Pool2dSpec {
        kernel,
        stride,
        padding,
        ..
    } = *spec;
    if h == 0 || w == 0 {
        return Err(BackendError::shape(OP, format!("empty plane in {shape:?}")));
    }
    if kernel.contains(&0) || stride.contains(&0) {
        return Err(BackendError::shape(
            OP,
            format!("kernel {kernel:?} and stride {stride:?} must be >= 1"),
        ));
    }
    if padding[0] > kernel[0] / 2 || padding[1] > kernel[1] / 2 {
        return Err(BackendError::shape(
            OP,
            format!("padding {padding:?} exceeds half the kernel {kernel:?}"),
        ));
    }
    // padding <= kernel / 2, so these cannot overflow past `h + kernel`.
    let (hp, wp) = (h + 2 * padding[0], w + 2 * padding[1]);
    if hp < kernel[0] || wp < kernel[1] {
        return Err(BackendError::shape(
            OP,
            format!(
                "input {h}x{w} (padded {hp}x{wp}) is smaller than the {}x{} window",
                kernel[0], kernel[1]
            ),
        ));
    }
    let geo = PlaneGeometry {
        planes: numel(OP, "input", &[b, c])?,
        h,
        w,
        ho: (hp - kernel[0]) / stride[0] + 1,
        wo: (wp - kernel[1]) / stride[1] + 1,
    };
    numel(OP, "output", &[b, c, geo.ho, geo.wo])?;
    Ok(geo)
}

/// Checks a resize: a non-empty input and output plane.
pub(crate) fn resize_geometry(
    shape: &[usize],
    [ho, wo]: [usize; 2],
) -> Result<PlaneGeometry, BackendError> {
    const OP: &str = "resize";
    let [b, c, h, w] = image(OP, shape)?;
    if h == 0 || w == 0 || ho == 0 || wo == 0 {
        return Err(BackendError::shape(
            OP,
            format!("cannot resize {h}x{w} to {ho}x{wo}: empty plane"),
        ));
    }
    numel(OP, "output", &[b, c, ho, wo])?;
    Ok(PlaneGeometry {
        planes: b * c,
        h,
        w,
        ho,
        wo,
    })
}

/// Checks a concatenation and returns the output shape: at least one tensor, equal
/// ranks, `axis` inside them, and every other dimension equal.
pub(crate) fn concat_shape(shapes: &[&[usize]], axis: usize) -> Result<Vec<usize>, BackendError> {
    const OP: &str = "concat";
    let Some(first) = shapes.first() else {
        return Err(BackendError::shape(OP, "needs at least one tensor"));
    };
    axis_split(OP, first, axis)?;
    let mut out = first.to_vec();
    out[axis] = 0;
    for s in shapes {
        let agrees = s.len() == first.len()
            && s.iter()
                .zip(first.iter())
                .enumerate()
                .all(|(i, (x, y))| i == axis || x == y);
        if !agrees {
            return Err(BackendError::shape(
                OP,
                format!("{s:?} and {first:?} differ outside axis {axis}"),
            ));
        }
        out[axis] = out[axis]
            .checked_add(s[axis])
            .ok_or_else(|| BackendError::shape(OP, "output too large"))?;
    }
    numel(OP, "output", &out)?;
    Ok(out)
}

/// Checks `narrow(axis, start, len)`.
pub(crate) fn slice_geometry(
    shape: &[usize],
    axis: usize,
    start: usize,
    len: usize,
) -> Result<AxisSplit, BackendError> {
    let split = axis_split("slice", shape, axis)?;
    if start.checked_add(len).is_none_or(|end| end > split.n) {
        return Err(BackendError::shape(
            "slice",
            format!("{start}..{start}+{len} is outside axis {axis} of {shape:?}",),
        ));
    }
    Ok(split)
}

/// Checks a `write_slice` of `src` into `dst`; returns `dst`'s split and `src`'s size
/// along the axis.
pub(crate) fn write_slice_geometry(
    dst: &[usize],
    axis: usize,
    start: usize,
    src: &[usize],
) -> Result<(AxisSplit, usize), BackendError> {
    const OP: &str = "write_slice";
    let split = axis_split(OP, dst, axis)?;
    let agrees = src.len() == dst.len()
        && src
            .iter()
            .zip(dst)
            .enumerate()
            .all(|(i, (x, y))| i == axis || x == y);
    if !agrees {
        return Err(BackendError::shape(
            OP,
            format!("source {src:?} and destination {dst:?} differ outside axis {axis}"),
        ));
    }
    let n = src[axis];
    if start.checked_add(n).is_none_or(|end| end > split.n) {
        return Err(BackendError::shape(
            OP,
            format!("{start}..{start}+{n} is outside axis {axis} of {dst:?}"),
        ));
    }
    Ok((split, n))
}

/// The checked geometry of a batched [`crate::Backend::matmul`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MatmulGeometry {
    /// Product of the leading dimensions.
    pub(crate) batch: usize,
    pub(crate) m: usize,
    pub(crate) k: usize,
    pub(crate) n: usize,
    /// `[.., M, N]`.
    pub(crate) out_shape: Vec<usize>,
}

/// Checks a batched matmul: both of rank >= 2, equal leading dimensions, inner sizes
/// that agree.
pub(crate) fn matmul_geometry(
    a: &[usize],
    b: &[usize],
    transpose_b: bool,
) -> Result<MatmulGeometry, BackendError> {
    const OP: &str = "matmul";
    let (Some(ra), Some(rb)) = (a.len().checked_sub(2), b.len().checked_sub(2)) else {
        return Err(BackendError::shape(
            OP,
            format!("operands must be of rank >= 2, got {a:?} and {b:?}"),
        ));
    };
    if a[..ra] != b[..rb] {
        return Err(BackendError::shape(
            OP,
            format!("batch dimensions of {a:?} and {b:?} differ"),
        ));
    }
    let (m, k) = (a[ra], a[ra + 1]);
    let (kb, n) = if transpose_b {
        (b[rb + 1], b[rb])
    } else {
        (b[rb], b[rb + 1])
    };
    if k != kb {
        return Err(BackendError::shape(
            OP,
            format!("{a:?} times {b:?} (transpose_b: {transpose_b}): inner sizes {k} and {kb}"),
        ));
    }
    let mut out_shape = a[..ra].to_vec();
    out_shape.extend([m, n]);
    numel(OP, "output", &out_shape)?;
    Ok(MatmulGeometry {
        batch: numel(OP, "batch", &a[..ra])?,
        m,
        k,
        n,
        out_shape,
    })
}

/// Checks an embedding lookup; returns `[V, D]`.
pub(crate) fn embedding_geometry(table: &[usize], ids: &[u32]) -> Result<[usize; 2], BackendError> {
    const OP: &str = "embedding";
    let &[v, d] = table else {
        return Err(BackendError::shape(
            OP,
            format!("table must be [V, D], got {table:?}"),
        ));
    };
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= v) {
        return Err(BackendError::shape(
            OP,
            format!("id {bad} is past the table's {v} rows"),
        ));
    }
    numel(OP, "output", &[ids.len(), d])?;
    Ok([v, d])
}

/// Checks a normalisation's scale `[D]` against `x`'s last dimension; returns `D`.
pub(crate) fn norm_dim(
    op: &'static str,
    x: &[usize],
    gamma: &[usize],
) -> Result<usize, BackendError> {
    match (x.last(), gamma) {
        (Some(&d), &[g]) if g == d => Ok(d),
        _ => Err(BackendError::shape(
            op,
            format!("input {x:?} needs a scale of [D], its last dimension; got {gamma:?}"),
        )),
    }
}

/// Checks rope's operands; returns `[B, N, H, hd]`.
pub(crate) fn rope_geometry(
    x: &[usize],
    cos: &[usize],
    sin: &[usize],
) -> Result<[usize; 4], BackendError> {
    const OP: &str = "rope";
    let &[b, n, h, hd] = x else {
        return Err(BackendError::shape(
            OP,
            format!("x must be [B, N, H, head_dim], got {x:?}"),
        ));
    };
    if hd % 2 != 0 {
        return Err(BackendError::shape(
            OP,
            format!("head_dim {hd} must be even (rotate-half)"),
        ));
    }
    if cos != [n, hd] || sin != [n, hd] {
        return Err(BackendError::shape(
            OP,
            format!("x {x:?} needs cos and sin of [{n}, {hd}], got {cos:?} and {sin:?}"),
        ));
    }
    Ok([b, n, h, hd])
}

/// The checked geometry of [`crate::Backend::attention_gqa`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GqaGeometry {
    pub(crate) batch: usize,
    /// Queries per item.
    pub(crate) nq: usize,
    /// Key/value positions stored per item (`>= kv_len`).
    pub(crate) nk: usize,
    pub(crate) q_heads: usize,
    pub(crate) kv_heads: usize,
    pub(crate) head_dim: usize,
    /// Keys taking part.
    pub(crate) kv_len: usize,
    /// Absolute position of query 0 under the causal mask.
    pub(crate) causal: Option<usize>,
}

impl GqaGeometry {
    /// Keys query `i` sees: `0..visible(i)` (at least 1, checked).
    pub(crate) fn visible(&self, i: usize) -> usize {
        match self.causal {
            Some(offset) => offset.saturating_add(i).saturating_add(1).min(self.kv_len),
            None => self.kv_len,
        }
    }
}

/// Checks grouped-query attention's operands.
pub(crate) fn attention_gqa_geometry(
    q: &[usize],
    k: &[usize],
    v: &[usize],
    spec: &AttentionSpec,
) -> Result<GqaGeometry, BackendError> {
    const OP: &str = "attention_gqa";
    let (&[batch, nq, q_heads, head_dim], &[kb, nk, kv_heads, khd]) = (q, k) else {
        return Err(BackendError::shape(
            OP,
            format!("q and k must be [B, N, heads, head_dim], got {q:?} and {k:?}"),
        ));
    };
    if v != k {
        return Err(BackendError::shape(
            OP,
            format!("k {k:?} and v {v:?} differ"),
        ));
    }
    if kb != batch || khd != head_dim {
        return Err(BackendError::shape(
            OP,
            format!("q {q:?} and k {k:?} differ in batch or head_dim"),
        ));
    }
    if kv_heads == 0 || q_heads == 0 || q_heads % kv_heads != 0 {
        return Err(BackendError::shape(
            OP,
            format!("{q_heads} query heads are not a non-zero multiple of {kv_heads} kv heads"),
        ));
    }
    if spec.kv_len > nk {
        return Err(BackendError::shape(
            OP,
            format!("kv_len {} exceeds the {nk} positions of k", spec.kv_len),
        ));
    }
    if spec.kv_len == 0 && nq > 0 {
        return Err(BackendError::shape(OP, "kv_len 0: the queries see no key"));
    }
    Ok(GqaGeometry {
        batch,
        nq,
        nk,
        q_heads,
        kv_heads,
        head_dim,
        kv_len: spec.kv_len,
        causal: spec.causal,
    })
}

/// The checked form of a convolution layer: `weight` `[O, C / groups, kh, kw]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConvLayerGeometry {
    pub(crate) out_channels: usize,
    /// `C`, all groups together.
    pub(crate) in_channels: usize,
    pub(crate) kernel: [usize; 2],
    /// `(kernel - 1) * dilation + 1`: the span the kernel covers.
    pub(crate) span: [usize; 2],
}

/// Checks a convolution layer's weight, bias and spec (what `prepare_conv2d` refuses).
pub(crate) fn conv2d_layer_geometry(
    weight: &[usize],
    bias: Option<&[usize]>,
    spec: &Conv2dSpec,
) -> Result<ConvLayerGeometry, BackendError> {
    const OP: &str = "prepare_conv2d";
    let &[o, cg, kh, kw] = weight else {
        return Err(BackendError::shape(
            OP,
            format!("weight must be [out, in / groups, kh, kw], got {weight:?}"),
        ));
    };
    if spec.stride.contains(&0) || spec.dilation.contains(&0) || kh == 0 || kw == 0 {
        return Err(BackendError::shape(
            OP,
            format!(
                "stride {:?}, dilation {:?} and kernel {kh}x{kw} must be >= 1",
                spec.stride, spec.dilation
            ),
        ));
    }
    if spec.groups == 0 || o % spec.groups != 0 {
        return Err(BackendError::shape(
            OP,
            format!(
                "{o} output channels do not split into {} groups",
                spec.groups
            ),
        ));
    }
    if let Some(b) = bias {
        if b != [o] {
            return Err(BackendError::shape(
                OP,
                format!("bias must be [{o}], got {b:?}"),
            ));
        }
    }
    let span = |k: usize, d: usize| (k - 1).checked_mul(d).and_then(|s| s.checked_add(1));
    let (Some(sh), Some(sw), Some(c)) = (
        span(kh, spec.dilation[0]),
        span(kw, spec.dilation[1]),
        cg.checked_mul(spec.groups),
    ) else {
        return Err(BackendError::shape(OP, "kernel span or channels overflow"));
    };
    // Bounds the padded size computed from it (`h + 2 * pad`) far from overflow.
    if spec.padding.iter().any(|&p| p > MAX_ELEMENTS) || sh.max(sw) > MAX_ELEMENTS {
        return Err(BackendError::shape(
            OP,
            format!("padding {:?} or dilated kernel too large", spec.padding),
        ));
    }
    Ok(ConvLayerGeometry {
        out_channels: o,
        in_channels: c,
        kernel: [kh, kw],
        span: [sh, sw],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_aligns_trailing_dimensions() {
        assert_eq!(broadcast_shape("t", &[2, 3, 4], &[4]).unwrap(), [2, 3, 4]);
        assert_eq!(
            broadcast_shape("t", &[2, 1, 4], &[3, 1]).unwrap(),
            [2, 3, 4]
        );
        assert_eq!(broadcast_shape("t", &[], &[5]).unwrap(), [5]);
        assert!(broadcast_shape("t", &[2, 3], &[4, 3]).is_err());
        assert_eq!(broadcast_strides(&[3, 1], 3), [0, 1, 0]);
        assert_eq!(broadcast_strides(&[2, 3, 4], 3), [12, 4, 1]);
    }
}
