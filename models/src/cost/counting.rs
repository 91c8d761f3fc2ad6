//! [`Counting`]: a backend that runs another backend's ops and records each call's
//! [`OpCost`] (from the shapes it really saw) and, on request, its wall time.
//!
//! Why a wrapper rather than a shape walk per family: a family's cost then comes from
//! running it, so it stays exact when a family changes or a new one lands (nothing to
//! keep in step), and the real path is untouched (models built on the plain backend
//! never see the wrapper).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use super::op::{activation_flops, binary_flops, flops_per_element, OpCost, OpKind};
use crate::backend::{
    Activation, AttentionSpec, Backend, BackendError, BinaryOp, CompareOp, Conv2dSpec,
    DeviceTensor, Pool2dSpec, ReduceOp, ResizeMode,
};
use crate::tensor::HostTensor;

/// One recorded op call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpRecord {
    /// What it cost.
    pub cost: OpCost,
    /// Wall time of the call, seconds (when timing is on). On an asynchronous backend
    /// (wgpu) this is the submission, not the execution.
    pub seconds: Option<f64>,
}

/// A backend that records every op call of `B`.
#[derive(Clone)]
pub struct Counting<B> {
    inner: B,
    log: Arc<Mutex<Vec<OpRecord>>>,
    timed: bool,
}

/// A prepared dense layer with its geometry.
pub struct CountedLinear<L> {
    inner: L,
    inputs: usize,
    outputs: usize,
    bias: bool,
    /// Kept fraction of a block-sparse weight (1 for dense).
    density: f64,
}

/// A prepared convolution with its weight's shape.
pub struct CountedConv<C> {
    inner: C,
    weight: [usize; 4],
    bias: bool,
}

impl<B: Backend> Counting<B> {
    /// Wraps `inner`; with `timed`, each call's wall time is recorded too.
    pub fn new(inner: B, timed: bool) -> Self {
        Self {
            inner,
            log: Arc::new(Mutex::new(Vec::new())),
            timed,
        }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// Takes the calls recorded so far, leaving the log empty.
    pub fn take(&self) -> Vec<OpRecord> {
        std::mem::take(&mut *self.log.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Runs `f` (the op), timing it if asked, and records `cost(&result)`.
    fn record<T>(
        &self,
        f: impl FnOnce() -> Result<T, BackendError>,
        cost: impl FnOnce(&T) -> OpCost,
    ) -> Result<T, BackendError> {
        let start = self.timed.then(Instant::now);
        let out = f()?;
        let seconds = start.map(|s| s.elapsed().as_secs_f64());
        let rec = OpRecord {
            cost: cost(&out),
            seconds,
        };
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(rec);
        Ok(out)
    }
}

fn shape<T: DeviceTensor>(t: &T) -> Vec<usize> {
    t.shape().to_vec()
}

impl<B: Backend> Backend for Counting<B> {
    type Tensor = B::Tensor;
    type Linear = CountedLinear<B::Linear>;
    type Conv2d = CountedConv<B::Conv2d>;

    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn scope<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.inner.scope(f)
    }

    fn upload(&self, host: &HostTensor) -> Result<Self::Tensor, BackendError> {
        self.record(
            || self.inner.upload(host),
            |_| {
                let mut c = OpCost::movement(&[], host.shape());
                c.kind = OpKind::Upload;
                c
            },
        )
    }

    fn readback(&self, x: &Self::Tensor) -> Result<HostTensor, BackendError> {
        self.record(
            || self.inner.readback(x),
            |_| {
                let mut c = OpCost::movement(&[x.shape()], x.shape());
                c.kind = OpKind::Readback;
                c
            },
        )
    }

    fn prepare_linear(
        &self,
        weight: &HostTensor,
        bias: Option<&HostTensor>,
    ) -> Result<Self::Linear, BackendError> {
        let [outputs, inputs] = crate::backend::linear_geometry(weight, bias)?;
        Ok(CountedLinear {
            inner: self.inner.prepare_linear(weight, bias)?,
            inputs,
            outputs,
            bias: bias.is_some(),
            density: 1.0,
        })
    }

    #[cfg(feature = "sparse")]
    fn prepare_block_sparse_linear(
        &self,
        weight: &crate::backend::block_sparse::BlockSparse,
        bias: Option<&HostTensor>,
    ) -> Result<Self::Linear, BackendError> {
        Ok(CountedLinear {
            inner: self.inner.prepare_block_sparse_linear(weight, bias)?,
            inputs: weight.inputs(),
            outputs: weight.outputs(),
            bias: bias.is_some(),
            density: weight.density(),
        })
    }

    fn prepare_conv2d(
        &self,
        weight: &HostTensor,
        bias: Option<&HostTensor>,
        spec: Conv2dSpec,
    ) -> Result<Self::Conv2d, BackendError> {
        let w = match weight.shape() {
            &[o, c, kh, kw] => [o, c, kh, kw],
            // The inner backend refuses it with its own words.
            _ => [0; 4],
        };
        Ok(CountedConv {
            inner: self.inner.prepare_conv2d(weight, bias, spec)?,
            weight: w,
            bias: bias.is_some(),
        })
    }

    fn linear(
        &self,
        x: &Self::Tensor,
        layer: &Self::Linear,
        activation: Activation,
    ) -> Result<Self::Tensor, BackendError> {
        self.record(
            || self.inner.linear(x, &layer.inner, activation),
            |_| {
                if layer.density < 1.0 {
                    OpCost::sparse_linear(
                        x.shape(),
                        layer.inputs,
                        layer.outputs,
                        layer.density,
                        layer.bias,
                    )
                } else {
                    OpCost::linear(
                        x.shape(),
                        layer.inputs,
                        layer.outputs,
                        layer.bias,
                        activation,
                    )
                }
            },
        )
    }

    fn conv2d(&self, x: &Self::Tensor, layer: &Self::Conv2d) -> Result<Self::Tensor, BackendError> {
        self.record(
            || self.inner.conv2d(x, &layer.inner),
            |y| OpCost::conv2d(x.shape(), y.shape(), layer.weight, layer.bias),
        )
    }

    fn layer_norm(
        &self,
        x: &Self::Tensor,
        gamma: &Self::Tensor,
        beta: &Self::Tensor,
        eps: f32,
    ) -> Result<Self::Tensor, BackendError> {
        self.record(
            || self.inner.layer_norm(x, gamma, beta, eps),
            |y| {
                OpCost::elementwise(
                    OpKind::LayerNorm,
                    &[x.shape(), gamma.shape(), beta.shape()],
                    y.shape(),
                    flops_per_element(OpKind::LayerNorm),
                )
            },
        )
    }

    fn softmax(&self, x: &Self::Tensor) -> Result<Self::Tensor, BackendError> {
        self.record(
            || self.inner.softmax(x),
            |y| {
                OpCost::elementwise(
                    OpKind::Softmax,
                    &[x.shape()],
                    y.shape(),
                    flops_per_element(OpKind::Softmax),
                )
            },
        )
    }

    fn activate(&self, x: &Self::Tensor, act: Activation) -> Result<Self::Tensor, BackendError> {
        self.record(
            || self.inner.activate(x, act),
            |y| {
                OpCost::elementwise(
                    OpKind::Activate,
                    &[x.shape()],
                    y.shape(),
                    activation_flops(act),
                )
            },
        )
    }

    fn attention(
        &self,
        qkv: &Self::Tensor,
        num_heads: usize,
        scale: f32,
    ) -> Result<Self::Tensor, BackendError> {
        self.record(
            || self.inner.attention(qkv, num_heads, scale),
            |_| OpCost::attention(qkv.shape(), num_heads),
        )
    }

    fn add(&self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor, BackendError> {
        self.record(
            || self.inner.add(a, b),
            |y| {
                OpCost::elementwise(
                    OpKind::Binary,
                    &[a.shape(), b.shape()],
                    y.shape(),
                    binary_flops(BinaryOp::Add),
                )
            },
        )
    }

    fn scale(&self, x: &Self::Tensor, s: f32) -> Result<Self::Tensor, BackendError> {
        self.record(
            || self.inner.scale(x, s),
            |y| OpCost::elementwise(OpKind::Scale, &[x.shape()], y.shape(), 1),
        )
    }

    fn reshape(&self, x: Self::Tensor, shape: &[usize]) -> Result<Self::Tensor, BackendError> {
        // No data moves: not an op call worth recording.
        self.inner.reshape(x, shape)
    }

    fn permute(&self, x: &Self::Tensor, dims: &[usize]) -> Result<Self::Tensor, BackendError> {
        self.record(
            || self.inner.permute(x, dims),
            |y| OpCost::movement(&[x.shape()], y.shape()),
        )
    }

    fn prepend_tokens(
        &self,
        tokens: &[&Self::Tensor],
        x: &Self::Tensor,
    ) -> Result<Self::Tensor, BackendError> {
        self.record(
            || self.inner.prepend_tokens(tokens, x),
            |y| {
                let mut shapes: Vec<Vec<usize>> = tokens.iter().map(|t| shape(*t)).collect();
                shapes.push(shape(x));
                let refs: Vec<&[usize]> = shapes.iter().map(Vec::as_slice).collect();
                OpCost::movement(&refs, y.shape())
            },
        )
    }

    fn select_token(&self, x: &Self::Tensor, index: usize) -> Result<Self::Tensor, BackendError> {
        self.record(
            || self.inner.select_token(x, index),
            // Reads only the selected rows.
            |y| OpCost::movement(&[y.shape()], y.shape()),
        )
    }

    fn binary(
        &self,
        a: &Self::Tensor,
        b: &Self::Tensor,
        op: BinaryOp,
    ) -> Result<Self::Tensor, BackendError> {
        self.record(
            || self.inner.binary(a, b, op),
            |y| {
                OpCost::elementwise(
                    OpKind::Binary,
                    &[a.shape(), b.shape()],
                    y.shape(),
                    binary_flops(op),
                )
            },
        )
    }

    fn compare(
        &self,
        a: &Self::Tensor,
        b: &Self::Tensor,
        op: CompareOp,
    ) -> Result<Self::Tensor, BackendError> {
        self.record(
            || self.inner.compare(a, b, op),
            |y| OpCost::elementwise(OpKind::Compare, &[a.shape(), b.shape()], y.shape(), 1),
        )
    }

    fn select(
        &self,
        mask: &Self::Tensor,
        a: &Self::Tensor,
        b: &Self::Tensor,
    ) -> Result<Self::Tensor, BackendError> {
        self.record(
            || self.inner.select(mask, a, b),
            |y| {
                OpCost::elementwise(
                    OpKind::Select,
                    &[mask.shape(), a.shape(), b.shape()],
                    y.shape(),
                    1,
                )
            },
        )
    }

    fn reduce(
        &self,
        x: &Self::Tensor,
        axis: usize,
        op: ReduceOp,
    ) -> Result<Self::Tensor, BackendError> {
        self.record(
            || self.inner.reduce(x, axis, op),
            |y| {
                // One operation per input element, whatever the output's size.
                let n: u64 = x.shape().iter().map(|&d| d as u64).product();
                let mut c = OpCost::elementwise(OpKind::Reduce, &[x.shape()], y.shape(), 0);
                c.flops = n;
                c
            },
        )
    }

    fn pool2d(&self, x: &Self::Tensor, spec: Pool2dSpec) -> Result<Self::Tensor, BackendError> {
        self.record(
            || self.inner.pool2d(x, spec),
            |y| {
                let window = (spec.kernel[0] * spec.kernel[1]) as u64;
                OpCost::elementwise(OpKind::Pool2d, &[x.shape()], y.shape(), window)
            },
        )
    }

    fn resize(
        &self,
        x: &Self::Tensor,
        size: [usize; 2],
        mode: ResizeMode,
    ) -> Result<Self::Tensor, BackendError> {
        self.record(
            || self.inner.resize(x, size, mode),
            |y| {
                let per = match mode {
                    ResizeMode::Nearest => 0,
                    ResizeMode::Bilinear { .. } => 8,
                };
                OpCost::elementwise(OpKind::Resize, &[x.shape()], y.shape(), per)
            },
        )
    }

    fn concat(&self, xs: &[&Self::Tensor], axis: usize) -> Result<Self::Tensor, BackendError> {
        self.record(
            || self.inner.concat(xs, axis),
            |y| {
                let shapes: Vec<Vec<usize>> = xs.iter().map(|t| shape(*t)).collect();
                let refs: Vec<&[usize]> = shapes.iter().map(Vec::as_slice).collect();
                OpCost::movement(&refs, y.shape())
            },
        )
    }

    fn slice(
        &self,
        x: &Self::Tensor,
        axis: usize,
        start: usize,
        len: usize,
    ) -> Result<Self::Tensor, BackendError> {
        self.record(
            || self.inner.slice(x, axis, start, len),
            |y| OpCost::movement(&[y.shape()], y.shape()),
        )
    }

    fn write_slice(
        &self,
        dst: &mut Self::Tensor,
        axis: usize,
        start: usize,
        src: &Self::Tensor,
    ) -> Result<(), BackendError> {
        let s = shape(src);
        self.record(
            || self.inner.write_slice(dst, axis, start, src),
            |_| OpCost::movement(&[&s], &s),
        )
    }

    fn matmul(
        &self,
        a: &Self::Tensor,
        b: &Self::Tensor,
        transpose_b: bool,
    ) -> Result<Self::Tensor, BackendError> {
        self.record(
            || self.inner.matmul(a, b, transpose_b),
            |y| OpCost::matmul(a.shape(), b.shape(), y.shape()),
        )
    }

    fn embedding(&self, table: &Self::Tensor, ids: &[u32]) -> Result<Self::Tensor, BackendError> {
        self.record(
            || self.inner.embedding(table, ids),
            |y| OpCost::movement(&[y.shape()], y.shape()),
        )
    }

    fn rms_norm(
        &self,
        x: &Self::Tensor,
        gamma: &Self::Tensor,
        eps: f32,
    ) -> Result<Self::Tensor, BackendError> {
        self.record(
            || self.inner.rms_norm(x, gamma, eps),
            |y| {
                OpCost::elementwise(
                    OpKind::RmsNorm,
                    &[x.shape(), gamma.shape()],
                    y.shape(),
                    flops_per_element(OpKind::RmsNorm),
                )
            },
        )
    }

    fn rope(
        &self,
        x: &Self::Tensor,
        cos: &Self::Tensor,
        sin: &Self::Tensor,
    ) -> Result<Self::Tensor, BackendError> {
        self.record(
            || self.inner.rope(x, cos, sin),
            |y| {
                OpCost::elementwise(
                    OpKind::Rope,
                    &[x.shape(), cos.shape(), sin.shape()],
                    y.shape(),
                    flops_per_element(OpKind::Rope),
                )
            },
        )
    }

    fn attention_gqa(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        spec: AttentionSpec,
    ) -> Result<Self::Tensor, BackendError> {
        self.record(
            || self.inner.attention_gqa(q, k, v, spec),
            |_| {
                let nq = q.shape().get(1).copied().unwrap_or(0);
                // Keys each query sees, summed: the causal triangle or the full block.
                let visible: u64 = (0..nq)
                    .map(|i| match spec.causal {
                        Some(off) => (off + i + 1).min(spec.kv_len) as u64,
                        None => spec.kv_len as u64,
                    })
                    .sum();
                OpCost::attention_gqa(q.shape(), k.shape(), visible, spec.kv_len)
            },
        )
    }
}
