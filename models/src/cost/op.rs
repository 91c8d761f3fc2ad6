//! What one op call costs: floating-point operations and bytes moved, from its shapes.
//!
//! Every formula lives here, once per [`Backend`](crate::Backend) op, so that a family
//! written over the ops gets its cost without any shape arithmetic of its own: the
//! [`Counting`](super::Counting) backend calls these with the shapes each call really
//! saw. Conventions (stated once, tested in `tests/cost_model.rs`):
//!
//! - A multiply-add is 2 FLOPs; GEMM-like ops count only their products
//!   (`2 * M * N * K`), not the bias or the fused activation in the epilogue.
//! - Elementwise and row ops count [`flops_per_element`] per output element (a
//!   documented estimate of the arithmetic in the kernel, not an exact instruction
//!   count: these ops are bound by memory and per-call overhead, not arithmetic).
//! - Bytes are `f32` (4 each): `weight_bytes` are the prepared layer's parameters,
//!   `in_bytes` every tensor operand read (a layer norm's scale and shift included),
//!   `out_bytes` the result written. Movement ops have 0 FLOPs.

use serde::{Deserialize, Serialize};

use super::super::backend::{Activation, BinaryOp};

/// Bytes per element: every tensor is `f32`.
pub const ELEM_BYTES: u64 = 4;

/// The kinds of op, one per [`Backend`](crate::Backend) method that does work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// Host to backend copy.
    Upload,
    /// Backend to host copy.
    Readback,
    /// Dense layer.
    Linear,
    /// 2-D convolution (dense or grouped with several channels per group).
    Conv2d,
    /// Depthwise convolution (one input channel per group): a sliding window per
    /// channel, no GEMM inside, so it streams like an elementwise op.
    DepthwiseConv2d,
    /// Batched activation x activation product.
    Matmul,
    /// Fused ViT attention core.
    Attention,
    /// Grouped-query attention.
    AttentionGqa,
    /// Layer norm.
    LayerNorm,
    /// RMS norm.
    RmsNorm,
    /// Softmax.
    Softmax,
    /// Elementwise activation.
    Activate,
    /// Broadcasting binary op (and `add`).
    Binary,
    /// Broadcasting comparison.
    Compare,
    /// `where(mask, a, b)`.
    Select,
    /// Reduction over one axis.
    Reduce,
    /// Pooling.
    Pool2d,
    /// Resampling.
    Resize,
    /// `x * s`.
    Scale,
    /// Rotary position embedding.
    Rope,
    /// Pure data movement: permute, concat, slice, write_slice, prepend_tokens,
    /// select_token, embedding, reshape.
    Move,
}

impl OpKind {
    /// Whether the op's time is set by a GEMM-like inner loop (the compute peak applies)
    /// rather than by streaming its operands.
    pub fn is_gemm(self) -> bool {
        matches!(
            self,
            Self::Linear | Self::Conv2d | Self::Matmul | Self::Attention | Self::AttentionGqa
        )
    }

    /// Whether the op moves data between host and backend (not part of a layer).
    pub fn is_transfer(self) -> bool {
        matches!(self, Self::Upload | Self::Readback)
    }
}

/// The cost of one op call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpCost {
    /// Which op.
    pub kind: OpKind,
    /// Floating-point operations.
    pub flops: u64,
    /// Bytes of prepared parameters read (a layer's weight and bias).
    pub weight_bytes: u64,
    /// Bytes of tensor operands read.
    pub in_bytes: u64,
    /// Bytes written.
    pub out_bytes: u64,
    /// Elements of the output (how the CPU backend decides to go parallel).
    pub out_elems: u64,
}

fn numel(shape: &[usize]) -> u64 {
    shape.iter().map(|&d| d as u64).product()
}

impl OpCost {
    /// An op that reads `inputs`, writes `out` and does `flops` arithmetic.
    pub fn new(kind: OpKind, flops: u64, inputs: &[&[usize]], out: &[usize]) -> Self {
        let out_elems = numel(out);
        Self {
            kind,
            flops,
            weight_bytes: 0,
            in_bytes: inputs.iter().map(|s| numel(s)).sum::<u64>() * ELEM_BYTES,
            out_bytes: out_elems * ELEM_BYTES,
            out_elems,
        }
    }

    /// Every byte the op touches: its working set if nothing is reused across calls.
    pub fn total_bytes(&self) -> u64 {
        self.weight_bytes + self.in_bytes + self.out_bytes
    }

    /// A dense layer `x [.., inputs] -> [.., outputs]`: `2 * rows * inputs * outputs`.
    pub fn linear(x: &[usize], inputs: usize, outputs: usize, bias: bool, act: Activation) -> Self {
        let rows = x.split_last().map_or(0, |(_, lead)| numel(lead));
        let mut out: Vec<usize> = x.to_vec();
        if let Some(last) = out.last_mut() {
            *last = outputs;
        }
        let _ = act; // the epilogue is not counted (module docs)
        let mut c = Self::new(
            OpKind::Linear,
            2 * rows * inputs as u64 * outputs as u64,
            &[x],
            &out,
        );
        c.weight_bytes =
            (inputs as u64 * outputs as u64 + if bias { outputs as u64 } else { 0 }) * ELEM_BYTES;
        c
    }

    /// A block-sparse dense layer keeping `density` of its weight: the dense cost with
    /// the products and the weight scaled by the kept fraction.
    pub fn sparse_linear(
        x: &[usize],
        inputs: usize,
        outputs: usize,
        density: f64,
        bias: bool,
    ) -> Self {
        let mut c = Self::linear(x, inputs, outputs, false, Activation::Identity);
        let d = density.clamp(0.0, 1.0);
        c.flops = (c.flops as f64 * d).round() as u64;
        c.weight_bytes = (c.weight_bytes as f64 * d).round() as u64
            + if bias { outputs as u64 * ELEM_BYTES } else { 0 };
        c
    }

    /// A convolution `x [B, C, H, W] -> out [B, O, Ho, Wo]` with a weight
    /// `[O, C / groups, kh, kw]`: `2 * B * O * Ho * Wo * (C / groups) * kh * kw`.
    pub fn conv2d(x: &[usize], out: &[usize], weight: [usize; 4], bias: bool) -> Self {
        let [o, cg, kh, kw] = weight.map(|d| d as u64);
        let positions = numel(out) / o.max(1); // B * Ho * Wo
        let kind = if cg == 1 && o > 1 {
            OpKind::DepthwiseConv2d
        } else {
            OpKind::Conv2d
        };
        let mut c = Self::new(kind, 2 * positions * o * cg * kh * kw, &[x], out);
        c.weight_bytes = (o * cg * kh * kw + if bias { o } else { 0 }) * ELEM_BYTES;
        c
    }

    /// `a [.., M, K] x b [.., K, N]` (or `[.., N, K]`): `2 * batch * M * N * K`.
    pub fn matmul(a: &[usize], b: &[usize], out: &[usize]) -> Self {
        let k = a.last().copied().unwrap_or(0) as u64;
        Self::new(OpKind::Matmul, 2 * numel(out) * k, &[a, b], out)
    }

    /// timm's fused attention on `qkv [B, N, 3D]` with `heads` heads: per head
    /// `q k^T` and `p v` (`2 * N * N * hd` each) and a softmax over `N x N`
    /// ([`flops_per_element`] of softmax each).
    pub fn attention(qkv: &[usize], heads: usize) -> Self {
        let (b, n, three_d) = match qkv {
            &[b, n, t] => (b as u64, n as u64, t as u64),
            _ => (0, 0, 0),
        };
        let d = three_d / 3;
        let h = heads as u64;
        let scores = b * h * n * n;
        let flops = 4 * b * n * n * d + scores * SOFTMAX_FLOPS;
        Self::new(
            OpKind::Attention,
            flops,
            &[qkv],
            &[b as usize, n as usize, d as usize],
        )
    }

    /// Grouped-query attention: `visible` keys summed over the queries of one head and
    /// item (the causal mask's triangle, or `Nq * kv_len`), times batch and query heads.
    pub fn attention_gqa(q: &[usize], k: &[usize], visible: u64, kv_len: usize) -> Self {
        let (b, nq, hq, hd) = match q {
            &[b, nq, hq, hd] => (b as u64, nq as u64, hq as u64, hd as u64),
            _ => (0, 0, 0, 0),
        };
        let scores = b * hq * visible;
        let flops = scores * (4 * hd + SOFTMAX_FLOPS);
        // Only the keys and values taking part are read.
        let (kb, kvh, khd) = match k {
            &[kb, _, kvh, khd] => (kb, kvh, khd),
            _ => (0, 0, 0),
        };
        let kv = [kb, kv_len, kvh, khd];
        Self::new(
            OpKind::AttentionGqa,
            flops,
            &[q, &kv, &kv],
            &[b as usize, nq as usize, (hq * hd) as usize],
        )
    }

    /// An elementwise or row op of `kind` writing `out`, reading `inputs`.
    pub fn elementwise(kind: OpKind, inputs: &[&[usize]], out: &[usize], per_elem: u64) -> Self {
        Self::new(kind, numel(out) * per_elem, inputs, out)
    }

    /// Pure data movement.
    pub fn movement(inputs: &[&[usize]], out: &[usize]) -> Self {
        Self::new(OpKind::Move, 0, inputs, out)
    }
}

/// FLOPs per score of a softmax (max, subtract, exp, sum, divide; exp counted as one).
pub const SOFTMAX_FLOPS: u64 = 5;

/// FLOPs per output element of the elementwise and row ops (estimates; see the module
/// docs).
pub fn flops_per_element(kind: OpKind) -> u64 {
    match kind {
        OpKind::LayerNorm => 8, // sum, centre, square-accumulate, scale, shift
        OpKind::RmsNorm => 4,
        OpKind::Softmax => SOFTMAX_FLOPS,
        OpKind::Binary | OpKind::Compare | OpKind::Scale | OpKind::Reduce => 1,
        OpKind::Rope => 3,
        _ => 0,
    }
}

/// FLOPs per element of an activation (GELU's erf polynomial and the exp of SiLU and
/// sigmoid dominate).
pub fn activation_flops(act: Activation) -> u64 {
    match act {
        Activation::Identity => 0,
        Activation::Relu => 1,
        Activation::Relu6 => 2,
        Activation::HardSwish => 5,
        Activation::Sigmoid | Activation::Silu => 12,
        Activation::Gelu => 20,
    }
}

/// FLOPs per element of a binary op.
pub fn binary_flops(_op: BinaryOp) -> u64 {
    1
}
