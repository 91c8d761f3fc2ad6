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

pub mod cpu;
pub mod wgpu;

use crate::tensor::HostTensor;

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

/// Activation applied in the epilogue of [`Backend::linear`], fused with the bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// None: `y = x W^T + b`.
    Identity,
    /// Exact GELU, `0.5 * y * (1 + erf(y / sqrt(2)))` (PyTorch's `nn.GELU()` default).
    Gelu,
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
    /// A prepared 2-D convolution (weight, optional bias, stride, padding).
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

    /// Prepares a convolution from PyTorch's `nn.Conv2d` layout: `weight`
    /// `[out, in, kh, kw]`, `bias` `[out]`, no dilation, no groups.
    fn prepare_conv2d(
        &self,
        weight: &HostTensor,
        bias: Option<&HostTensor>,
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> Result<Self::Conv2d, BackendError>;

    /// `act(x W^T + b)` over the last dimension: `[.., in]` -> `[.., out]`.
    fn linear(
        &self,
        x: &Self::Tensor,
        layer: &Self::Linear,
        activation: Activation,
    ) -> Result<Self::Tensor, BackendError>;

    /// 2-D convolution: `[B, C, H, W]` -> `[B, O, Ho, Wo]`.
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

    /// Exact (erf) GELU, elementwise.
    fn gelu(&self, x: &Self::Tensor) -> Result<Self::Tensor, BackendError>;

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
    /// `[1, N, D]` added to `[B, N, D]`).
    fn add(&self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor, BackendError>;

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
