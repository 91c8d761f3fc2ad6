//! The parameters of the wider op set: what each op is told besides its tensors.
//!
//! The semantics are PyTorch's, so that a model ported from PyTorch reads the same here;
//! each type says where it differs. Shared shape checks live here too, so that every
//! backend refuses the same inputs with the same words.

use super::BackendError;

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
