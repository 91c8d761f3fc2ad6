//! The backend seam: every model is written once against [`Backend`], and each backend
//! (CPU here, wgpu in `backend/wgpu/`) implements the ops.
//!
//! # Contract for implementors
//!
//! - **Residency.** Activations live in the backend's own [`Backend::Tensor`] (host
//!   memory for the CPU, GPU buffers for wgpu). A forward pass makes one
//!   [`Backend::upload`] of its input and one [`Backend::readback`] of its output; every
//!   op in between takes and returns backend tensors, so a GPU backend never round-trips
//!   through the host between layers.
//! - **Weights are prepared once.** Model constructors turn host weights into backend
//!   form at load time: [`Backend::upload`] for plain parameters (layer-norm scale and
//!   shift, class tokens, position embeddings), [`Backend::prepare_linear`] and
//!   [`Backend::prepare_conv2d`] for layers, whose prepared form may be packed,
//!   transposed or converted however the backend's kernels like it. Ops never see host
//!   weights.
//! - **Layout.** Tensors are logically dense and row-major with the shapes stated on
//!   each op (PyTorch's conventions: `[batch, tokens, channels]` for sequences,
//!   `[batch, channels, height, width]` for images). A backend may store them otherwise
//!   internally, as long as `readback` returns row-major data of [`DeviceTensor::shape`].
//! - **Numerics.** `f32` throughout. Results must match PyTorch/timm within the tests'
//!   tolerance (1e-4 of the reference's max |value| over a whole ViT); GELU is the exact
//!   erf form, softmax is max-subtracted, layer norm uses a biased variance and the
//!   `eps` it is given.
//! - **Determinism.** The same op on the same input gives bit-identical output on the
//!   same backend and thread count, however the surrounding graph was cut: this is what
//!   makes `tail(head(x, k), k) == forward(x)` exact at every split point.
//! - **Errors.** Ops check shapes and return [`BackendError::Shape`] instead of
//!   panicking; device failures are [`BackendError::Device`].

#[cfg(feature = "sparse")]
pub mod block_sparse;
pub mod choice;
pub mod cpu;
pub mod kv_cache;
pub mod ops;
pub mod reference;
#[cfg(feature = "wgpu")]
pub mod wgpu;

use crate::tensor::HostTensor;
pub use kv_cache::KvCache;
pub use ops::{
    Activation, AttentionSpec, BinaryOp, CompareOp, Conv2dSpec, Pool2dSpec, PoolKind, ReduceOp,
    ResizeMode,
};

/// Errors from backend operations.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BackendError {
    /// An op was given tensors whose shapes it cannot take.
    #[error("{op}: {detail}")]
    Shape {
        /// The op that refused.
        op: &'static str,
        /// What was wrong, with the shapes involved.
        detail: String,
    },
    /// This backend does not implement the op (yet).
    #[error("backend {backend} has no {op} kernel")]
    Unsupported {
        /// Which backend.
        backend: &'static str,
        /// The op.
        op: &'static str,
    },
    /// The device failed (lost, out of memory, kernel compilation error, ...).
    #[error("backend {backend}: {detail}")]
    Device {
        /// Which backend.
        backend: &'static str,
        /// The device's own message.
        detail: String,
    },
}

impl BackendError {
    /// A shape error for `op`.
    pub fn shape(op: &'static str, detail: impl Into<String>) -> Self {
        Self::Shape {
            op,
            detail: detail.into(),
        }
    }
}

/// What a backend's tensor must at least tell: its logical shape.
pub trait DeviceTensor: Send + Sync {
    /// The logical dimensions, outermost first.
    fn shape(&self) -> &[usize];
}

/// The operations model code needs, over backend-owned tensors.
///
/// Shapes use `B` for batch, `N` for tokens, `D` for channels. Unless stated, ops
/// allocate a fresh output and leave their inputs untouched.
pub trait Backend: Clone + Send + Sync + 'static {
    /// A tensor resident in the backend (activations and plain parameters).
    type Tensor: DeviceTensor;
    /// A prepared dense layer (weight and optional bias) in the backend's preferred form.
    type Linear: Send + Sync;
    /// A prepared 2-D convolution (weight, optional bias and the [`Conv2dSpec`]: stride,
    /// padding, dilation, groups, fused activation).
    type Conv2d: Send + Sync;

    /// Short name for logs and reports (`"cpu"`, `"wgpu"`).
    fn name(&self) -> &'static str;

    /// Runs `f`, a sequence of ops such as a whole forward pass, in the backend's
    /// execution context. The CPU backend enters its thread pool once here instead of
    /// once per op; a GPU backend may batch submissions. The default just calls `f`.
    fn scope<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        f()
    }

    /// Copies a host tensor into the backend.
    fn upload(&self, host: &HostTensor) -> Result<Self::Tensor, BackendError>;

    /// Copies a backend tensor back to the host, row-major.
    fn readback(&self, x: &Self::Tensor) -> Result<HostTensor, BackendError>;

    /// Prepares a dense layer from PyTorch's `nn.Linear` layout: `weight` `[out, in]`,
    /// `bias` `[out]`.
    fn prepare_linear(
        &self,
        weight: &HostTensor,
        bias: Option<&HostTensor>,
    ) -> Result<Self::Linear, BackendError>;

    /// Prepares a block-sparse dense layer (LPViT's pruned weights): `weight` holds only
    /// the kept blocks of the `[out, in]` matrix, `bias` is `[out]`. The result runs
    /// through [`Backend::linear`] like any other layer. The default densifies the
    /// weight (zeros for the dropped blocks) and prepares it as dense: the reference
    /// form; backends with a block-sparse kernel override it.
    #[cfg(feature = "sparse")]
    fn prepare_block_sparse_linear(
        &self,
        weight: &block_sparse::BlockSparse,
        bias: Option<&HostTensor>,
    ) -> Result<Self::Linear, BackendError> {
        self.prepare_linear(&weight.to_dense()?, bias)
    }

    /// Prepares a convolution from PyTorch's `nn.Conv2d` layout: `weight`
    /// `[out, in / groups, kh, kw]`, `bias` `[out]`, with the stride, padding, dilation,
    /// groups and fused activation of `spec`.
    fn prepare_conv2d(
        &self,
        weight: &HostTensor,
        bias: Option<&HostTensor>,
        spec: Conv2dSpec,
    ) -> Result<Self::Conv2d, BackendError>;

    /// `act(x W^T + b)` over the last dimension: `[.., in]` -> `[.., out]`.
    fn linear(
        &self,
        x: &Self::Tensor,
        layer: &Self::Linear,
        activation: Activation,
    ) -> Result<Self::Tensor, BackendError>;

    /// 2-D convolution with the prepared layer's bias and activation:
    /// `[B, C, H, W]` -> `[B, O, Ho, Wo]`.
    fn conv2d(&self, x: &Self::Tensor, layer: &Self::Conv2d) -> Result<Self::Tensor, BackendError>;

    /// Layer norm over the last dimension `D`, with `gamma` and `beta` of shape `[D]`
    /// and biased variance: `(x - mean) / sqrt(var + eps) * gamma + beta`.
    fn layer_norm(
        &self,
        x: &Self::Tensor,
        gamma: &Self::Tensor,
        beta: &Self::Tensor,
        eps: f32,
    ) -> Result<Self::Tensor, BackendError>;

    /// Softmax over the last dimension (max-subtracted).
    fn softmax(&self, x: &Self::Tensor) -> Result<Self::Tensor, BackendError>;

    /// `act(x)`, elementwise.
    fn activate(&self, x: &Self::Tensor, act: Activation) -> Result<Self::Tensor, BackendError>;

    /// Fused multi-head self-attention core, timm's layout.
    ///
    /// `qkv` is `[B, N, 3 * D]`, the output of the `qkv` linear, read as
    /// `[B, N, 3, heads, D / heads]` (q, k, v). Returns `[B, N, D]`: per head
    /// `softmax(scale * q k^T) v`, heads concatenated along the channels (timm's
    /// `transpose(1, 2).reshape(B, N, D)`), ready for the output projection.
    fn attention(
        &self,
        qkv: &Self::Tensor,
        num_heads: usize,
        scale: f32,
    ) -> Result<Self::Tensor, BackendError>;

    /// `a + b`, elementwise. `b` has `a`'s shape, or the same with a leading dimension
    /// of 1 that broadcasts over `a`'s first dimension (e.g. a position embedding
    /// `[1, N, D]` added to `[B, N, D]`). The residual connection's fast path; any
    /// other broadcast is [`Backend::binary`].
    fn add(&self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor, BackendError> {
        self.binary(a, b, BinaryOp::Add)
    }

    /// `x * s`, elementwise.
    fn scale(&self, x: &Self::Tensor, s: f32) -> Result<Self::Tensor, BackendError>;

    /// The same data under a new shape of equal size (no data movement; consumes `x`).
    fn reshape(&self, x: Self::Tensor, shape: &[usize]) -> Result<Self::Tensor, BackendError>;

    /// Reorders the dimensions (`dims` is a permutation of `0..rank`, as
    /// `torch.permute`), materialising the result row-major.
    fn permute(&self, x: &Self::Tensor, dims: &[usize]) -> Result<Self::Tensor, BackendError>;

    /// Prepends learned tokens to a sequence: each of `tokens` is `[1, 1, D]`
    /// (broadcast over the batch), `x` is `[B, N, D]`; returns
    /// `[B, tokens.len() + N, D]` with the tokens first, in order (timm's
    /// `cat((cls_token.expand(B, -1, -1), x), dim=1)`).
    fn prepend_tokens(
        &self,
        tokens: &[&Self::Tensor],
        x: &Self::Tensor,
    ) -> Result<Self::Tensor, BackendError>;

    /// Token `index` of every item: `[B, N, D]` -> `[B, D]` (timm's `x[:, index]`).
    fn select_token(&self, x: &Self::Tensor, index: usize) -> Result<Self::Tensor, BackendError>;

    /// `a op b` with NumPy/PyTorch broadcasting ([`ops::broadcast_shape`]).
    fn binary(
        &self,
        a: &Self::Tensor,
        b: &Self::Tensor,
        op: BinaryOp,
    ) -> Result<Self::Tensor, BackendError>;

    /// `a op b` with broadcasting, as a mask: 1.0 where it holds, 0.0 elsewhere.
    fn compare(
        &self,
        a: &Self::Tensor,
        b: &Self::Tensor,
        op: CompareOp,
    ) -> Result<Self::Tensor, BackendError>;

    /// `torch.where(mask != 0, a, b)`, the three broadcast together.
    fn select(
        &self,
        mask: &Self::Tensor,
        a: &Self::Tensor,
        b: &Self::Tensor,
    ) -> Result<Self::Tensor, BackendError>;

    /// Reduces dimension `axis` away: `[.., n, ..]` -> `[.., ..]` (`keepdim=False`).
    /// An empty axis is refused.
    fn reduce(
        &self,
        x: &Self::Tensor,
        axis: usize,
        op: ReduceOp,
    ) -> Result<Self::Tensor, BackendError>;

    /// Max or average pooling over `[B, C, H, W]` -> `[B, C, Ho, Wo]`, with
    /// `Ho = (H + 2 * pad - kernel) / stride + 1` (floor, as PyTorch's default).
    fn pool2d(&self, x: &Self::Tensor, spec: Pool2dSpec) -> Result<Self::Tensor, BackendError>;

    /// Resamples `[B, C, H, W]` to `[B, C, size[0], size[1]]`.
    fn resize(
        &self,
        x: &Self::Tensor,
        size: [usize; 2],
        mode: ResizeMode,
    ) -> Result<Self::Tensor, BackendError>;

    /// Joins tensors along `axis` (`torch.cat`); every other dimension must agree.
    fn concat(&self, xs: &[&Self::Tensor], axis: usize) -> Result<Self::Tensor, BackendError>;

    /// `x.narrow(axis, start, len)`, materialised.
    fn slice(
        &self,
        x: &Self::Tensor,
        axis: usize,
        start: usize,
        len: usize,
    ) -> Result<Self::Tensor, BackendError>;

    /// Writes `src` into `dst` at `start..start + src.shape[axis]` along `axis`, in
    /// place; every other dimension must agree (how a KV cache grows, see
    /// [`KvCache`]).
    fn write_slice(
        &self,
        dst: &mut Self::Tensor,
        axis: usize,
        start: usize,
        src: &Self::Tensor,
    ) -> Result<(), BackendError>;

    /// Batched activation x activation product: `a` `[.., M, K]` times `b` `[.., K, N]`
    /// (or `[.., N, K]` with `transpose_b`) -> `[.., M, N]`; the leading (batch)
    /// dimensions must be equal.
    fn matmul(
        &self,
        a: &Self::Tensor,
        b: &Self::Tensor,
        transpose_b: bool,
    ) -> Result<Self::Tensor, BackendError>;

    /// Rows of `table` `[V, D]` by index: `ids` -> `[ids.len(), D]` (an embedding
    /// lookup). An index past `V` is refused.
    fn embedding(&self, table: &Self::Tensor, ids: &[u32]) -> Result<Self::Tensor, BackendError>;

    /// RMS norm over the last dimension: `x / sqrt(mean(x^2) + eps) * gamma`, `gamma`
    /// `[D]` (Llama's and Qwen2's `RMSNorm`, computed in f32).
    fn rms_norm(
        &self,
        x: &Self::Tensor,
        gamma: &Self::Tensor,
        eps: f32,
    ) -> Result<Self::Tensor, BackendError>;

    /// Rotary position embedding in Hugging Face's rotate-half form on `x`
    /// `[B, N, H, hd]`: `x * cos + rotate_half(x) * sin`, where `rotate_half` of a
    /// head's vector `[x1, x2]` (halves) is `[-x2, x1]`, and `cos`, `sin` are `[N, hd]`
    /// (HF's `cat(freqs, freqs)`, made by the model so that it owns the scaling).
    fn rope(
        &self,
        x: &Self::Tensor,
        cos: &Self::Tensor,
        sin: &Self::Tensor,
    ) -> Result<Self::Tensor, BackendError>;

    /// Scaled dot-product attention with grouped-query heads: `q` `[B, Nq, Hq, hd]`,
    /// `k` and `v` `[B, Nk, Hkv, hd]` with `Hq` a multiple of `Hkv` (query head `h`
    /// reads key/value head `h / (Hq / Hkv)`); keys `0..spec.kv_len` take part, under
    /// the causal mask of `spec.causal` if any. Returns `[B, Nq, Hq * hd]`, heads
    /// concatenated along the channels. A query that sees no key is refused.
    fn attention_gqa(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        spec: AttentionSpec,
    ) -> Result<Self::Tensor, BackendError>;
}

/// Checks a dense layer's weight `[out, in]` and bias `[out]` (PyTorch's `nn.Linear`)
/// and returns `[out, in]`. Shared by every backend's `prepare_linear`, so that they
/// all refuse the same weights with the same words.
pub(crate) fn linear_geometry(
    weight: &HostTensor,
    bias: Option<&HostTensor>,
) -> Result<[usize; 2], BackendError> {
    let &[outputs, inputs] = weight.shape() else {
        return Err(BackendError::shape(
            "prepare_linear",
            format!("weight must be [out, in], got {:?}", weight.shape()),
        ));
    };
    if let Some(b) = bias {
        if b.shape() != [outputs] {
            return Err(BackendError::shape(
                "prepare_linear",
                format!("bias must be [{outputs}], got {:?}", b.shape()),
            ));
        }
    }
    Ok([outputs, inputs])
}

/// Checks the `qkv` input `[B, N, 3 * D]` of [`Backend::attention`] against the head
/// count and returns `[B, N, D, D / heads]`. Shared by every backend.
pub(crate) fn attention_geometry(
    shape: &[usize],
    num_heads: usize,
) -> Result<[usize; 4], BackendError> {
    let &[batch, tokens, three_d] = shape else {
        return Err(BackendError::shape(
            "attention",
            format!("qkv must be [B, N, 3*D], got {shape:?}"),
        ));
    };
    if num_heads == 0 || three_d % (3 * num_heads) != 0 {
        return Err(BackendError::shape(
            "attention",
            format!("qkv width {three_d} is not 3 x {num_heads} heads x head_dim"),
        ));
    }
    let d = three_d / 3;
    Ok([batch, tokens, d, d / num_heads])
}

/// The checked geometry of a 2-D convolution over `[B, C, H, W]`.
pub(crate) struct Conv2dGeometry {
    pub(crate) batch: usize,
    pub(crate) channels: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    /// Output height.
    pub(crate) ho: usize,
    /// Output width.
    pub(crate) wo: usize,
}

/// Checks a convolution's input against its layer and computes the output size. Shared
/// by every backend, so that they all refuse the same inputs with the same words.
pub(crate) fn conv2d_geometry(
    shape: &[usize],
    in_channels: usize,
    [kh, kw]: [usize; 2],
    [sh, sw]: [usize; 2],
    [ph, pw]: [usize; 2],
) -> Result<Conv2dGeometry, BackendError> {
    let &[batch, channels, h, w] = shape else {
        return Err(BackendError::shape(
            "conv2d",
            format!("input must be [B, C, H, W], got {shape:?}"),
        ));
    };
    if channels != in_channels {
        return Err(BackendError::shape(
            "conv2d",
            format!("input has {channels} channels, the layer takes {in_channels}"),
        ));
    }
    let (hp, wp) = (h + 2 * ph, w + 2 * pw);
    if hp < kh || wp < kw {
        return Err(BackendError::shape(
            "conv2d",
            format!("input {h}x{w} (padded {hp}x{wp}) is smaller than the {kh}x{kw} kernel"),
        ));
    }
    Ok(Conv2dGeometry {
        batch,
        channels,
        h,
        w,
        ho: (hp - kh) / sh + 1,
        wo: (wp - kw) / sw + 1,
    })
}
