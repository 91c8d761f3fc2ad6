//! The reference backend: every op as the plainest loops that state its definition,
//! accumulating in `f64`, with no SIMD, no threads and no cleverness. It is the ground
//! truth the conformance suite (`models/tests/conformance.rs`) holds the CPU and wgpu
//! backends to, so it favours being obviously right over being fast; never use it to
//! run a model.
//!
//! Shape checks are the shared ones of `backend/ops.rs` and `backend/mod.rs`,
//! so it refuses exactly what the other backends refuse.

use super::ops::{self, broadcast_strides, GqaGeometry};
use super::{
    attention_geometry, conv2d_geometry, linear_geometry, Activation, AttentionSpec, Backend,
    BackendError, BinaryOp, CompareOp, Conv2dSpec, DeviceTensor, Pool2dSpec, PoolKind, ReduceOp,
    ResizeMode,
};
use crate::tensor::{checked_numel, HostTensor};

/// A tensor of the reference backend: a shape and row-major values.
#[derive(Debug, Clone, PartialEq)]
pub struct RefTensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl DeviceTensor for RefTensor {
    fn shape(&self) -> &[usize] {
        &self.shape
    }
}

impl RefTensor {
    fn new(op: &'static str, shape: Vec<usize>, data: Vec<f32>) -> Result<Self, BackendError> {
        if checked_numel(&shape) != Some(data.len()) {
            return Err(BackendError::shape(
                op,
                format!("{} values for shape {shape:?}", data.len()),
            ));
        }
        Ok(Self { shape, data })
    }
}

/// A dense layer as given: `weight` `[out, in]`, `bias` `[out]`.
#[derive(Debug)]
pub struct RefLinear {
    weight: Vec<f32>,
    bias: Option<Vec<f32>>,
    inputs: usize,
    outputs: usize,
}

/// A convolution as given, with its spec.
#[derive(Debug)]
pub struct RefConv2d {
    weight: Vec<f32>,
    bias: Option<Vec<f32>>,
    geo: ops::ConvLayerGeometry,
    spec: Conv2dSpec,
}

/// The scalar reference backend (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct ReferenceBackend;

impl ReferenceBackend {
    /// The backend (it has no state).
    pub fn new() -> Self {
        Self
    }
}

/// `act(y)` in `f64`, straight from [`Activation`]'s definitions.
pub(crate) fn activation_f64(act: Activation, y: f64) -> f64 {
    match act {
        Activation::Identity => y,
        Activation::Gelu => 0.5 * y * (1.0 + libm::erf(y / std::f64::consts::SQRT_2)),
        Activation::Relu => y.max(0.0),
        Activation::Relu6 => y.clamp(0.0, 6.0),
        Activation::Silu => y / (1.0 + (-y).exp()),
        Activation::Sigmoid => 1.0 / (1.0 + (-y).exp()),
        Activation::HardSwish => y * (y + 3.0).clamp(0.0, 6.0) / 6.0,
    }
}

/// The row-major index of `idx` under per-dimension `strides`.
fn dot(idx: &[usize], strides: &[usize]) -> usize {
    idx.iter().zip(strides).map(|(i, s)| i * s).sum()
}

/// The multi-index of flat position `flat` in `shape` (row-major).
fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for (i, &d) in shape.iter().enumerate().rev() {
        if d > 0 {
            idx[i] = flat % d;
            flat /= d;
        }
    }
    idx
}

/// `f` over the broadcast of `xs`, element by element.
fn broadcast_map(
    op: &'static str,
    xs: &[&RefTensor],
    f: impl Fn(&[f32]) -> f32,
) -> Result<RefTensor, BackendError> {
    let mut shape: Vec<usize> = Vec::new();
    for x in xs {
        shape = ops::broadcast_shape(op, &shape, &x.shape)?;
    }
    let rank = shape.len();
    let strides: Vec<Vec<usize>> = xs
        .iter()
        .map(|x| broadcast_strides(&x.shape, rank))
        .collect();
    let n = checked_numel(&shape)
        .ok_or_else(|| BackendError::shape(op, format!("output {shape:?} too large")))?;
    let mut out = Vec::with_capacity(n);
    let mut args = vec![0.0; xs.len()];
    for flat in 0..n {
        let idx = unravel(flat, &shape);
        for ((a, x), s) in args.iter_mut().zip(xs).zip(&strides) {
            *a = x.data[dot(&idx, s)];
        }
        out.push(f(&args));
    }
    RefTensor::new(op, shape, out)
}

/// Softmax of `scores` in f64 (max-subtracted).
fn softmax_f64(scores: &mut [f64]) {
    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let mut sum = 0.0;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    for s in scores.iter_mut() {
        *s /= sum;
    }
}

fn last_dim(op: &'static str, x: &RefTensor) -> Result<usize, BackendError> {
    x.shape
        .last()
        .copied()
        .ok_or_else(|| BackendError::shape(op, "needs a tensor of rank >= 1, got a scalar"))
}

/// The source coordinate of output `dst` in PyTorch's bilinear resampling.
fn bilinear_source(dst: usize, input: usize, output: usize, align_corners: bool) -> f64 {
    if align_corners {
        if output > 1 {
            dst as f64 * (input - 1) as f64 / (output - 1) as f64
        } else {
            0.0
        }
    } else {
        ((dst as f64 + 0.5) * input as f64 / output as f64 - 0.5).max(0.0)
    }
}

impl Backend for ReferenceBackend {
    type Tensor = RefTensor;
    type Linear = RefLinear;
    type Conv2d = RefConv2d;

    fn name(&self) -> &'static str {
        "reference"
    }

    fn upload(&self, host: &HostTensor) -> Result<RefTensor, BackendError> {
        RefTensor::new("upload", host.shape().to_vec(), host.data().to_vec())
    }

    fn readback(&self, x: &RefTensor) -> Result<HostTensor, BackendError> {
        HostTensor::new(x.shape.clone(), x.data.clone())
            .map_err(|e| BackendError::shape("readback", e.to_string()))
    }

    fn prepare_linear(
        &self,
        weight: &HostTensor,
        bias: Option<&HostTensor>,
    ) -> Result<RefLinear, BackendError> {
        let [outputs, inputs] = linear_geometry(weight, bias)?;
        Ok(RefLinear {
            weight: weight.data().to_vec(),
            bias: bias.map(|b| b.data().to_vec()),
            inputs,
            outputs,
        })
    }

    fn prepare_conv2d(
        &self,
        weight: &HostTensor,
        bias: Option<&HostTensor>,
        spec: Conv2dSpec,
    ) -> Result<RefConv2d, BackendError> {
        let geo = ops::conv2d_layer_geometry(weight.shape(), bias.map(|b| b.shape()), &spec)?;
        Ok(RefConv2d {
            weight: weight.data().to_vec(),
            bias: bias.map(|b| b.data().to_vec()),
            geo,
            spec,
        })
    }

    fn linear(
        &self,
        x: &RefTensor,
        layer: &RefLinear,
        activation: Activation,
    ) -> Result<RefTensor, BackendError> {
        let inputs = last_dim("linear", x)?;
        if inputs != layer.inputs {
            return Err(BackendError::shape(
                "linear",
                format!(
                    "input {:?} has {inputs} features, the layer takes {}",
                    x.shape, layer.inputs
                ),
            ));
        }
        let mut shape = x.shape.clone();
        if let Some(last) = shape.last_mut() {
            *last = layer.outputs;
        }
        let rows = checked_numel(&shape)
            .ok_or_else(|| BackendError::shape("linear", format!("output {shape:?} too large")))?
            .checked_div(layer.outputs)
            .unwrap_or(0);
        let mut out = Vec::new();
        for r in 0..rows {
            for o in 0..layer.outputs {
                let mut acc = layer.bias.as_ref().map_or(0.0, |b| b[o] as f64);
                for i in 0..inputs {
                    acc += x.data[r * inputs + i] as f64 * layer.weight[o * inputs + i] as f64;
                }
                out.push(activation_f64(activation, acc) as f32);
            }
        }
        RefTensor::new("linear", shape, out)
    }

    fn conv2d(&self, x: &RefTensor, layer: &RefConv2d) -> Result<RefTensor, BackendError> {
        let geo = &layer.geo;
        let spec = &layer.spec;
        let g = conv2d_geometry(
            &x.shape,
            geo.in_channels,
            geo.span,
            spec.stride,
            spec.padding,
        )?;
        let [kh, kw] = geo.kernel;
        let groups = spec.groups;
        let (cg, og) = (geo.in_channels / groups, geo.out_channels / groups);
        let shape = vec![g.batch, geo.out_channels, g.ho, g.wo];
        checked_numel(&shape)
            .ok_or_else(|| BackendError::shape("conv2d", format!("output {shape:?} too large")))?;
        let mut out = Vec::new();
        for b in 0..g.batch {
            for o in 0..geo.out_channels {
                let group = o / og;
                for oy in 0..g.ho {
                    for ox in 0..g.wo {
                        let mut acc = layer.bias.as_ref().map_or(0.0, |v| v[o] as f64);
                        for ci in 0..cg {
                            let c = group * cg + ci;
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy = (oy * spec.stride[0] + ky * spec.dilation[0]) as isize
                                        - spec.padding[0] as isize;
                                    let ix = (ox * spec.stride[1] + kx * spec.dilation[1]) as isize
                                        - spec.padding[1] as isize;
                                    if iy < 0 || ix < 0 || iy as usize >= g.h || ix as usize >= g.w
                                    {
                                        continue;
                                    }
                                    let xv = x.data[((b * g.channels + c) * g.h + iy as usize)
                                        * g.w
                                        + ix as usize];
                                    let wv = layer.weight[((o * cg + ci) * kh + ky) * kw + kx];
                                    acc += xv as f64 * wv as f64;
                                }
                            }
                        }
                        out.push(activation_f64(spec.activation, acc) as f32);
                    }
                }
            }
        }
        RefTensor::new("conv2d", shape, out)
    }

    fn layer_norm(
        &self,
        x: &RefTensor,
        gamma: &RefTensor,
        beta: &RefTensor,
        eps: f32,
    ) -> Result<RefTensor, BackendError> {
        let d = ops::norm_dim("layer_norm", &x.shape, &gamma.shape)?;
        if beta.shape != gamma.shape {
            return Err(BackendError::shape(
                "layer_norm",
                format!("gamma {:?} and beta {:?} differ", gamma.shape, beta.shape),
            ));
        }
        let mut out = Vec::with_capacity(x.data.len());
        for row in x.data.chunks_exact(d.max(1)) {
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
            let rstd = 1.0 / (var + eps as f64).sqrt();
            for (i, &v) in row.iter().enumerate() {
                out.push(
                    ((v as f64 - mean) * rstd * gamma.data[i] as f64 + beta.data[i] as f64) as f32,
                );
            }
        }
        RefTensor::new("layer_norm", x.shape.clone(), out)
    }

    fn softmax(&self, x: &RefTensor) -> Result<RefTensor, BackendError> {
        let d = last_dim("softmax", x)?;
        let mut out = Vec::with_capacity(x.data.len());
        for row in x.data.chunks_exact(d.max(1)) {
            let mut s: Vec<f64> = row.iter().map(|&v| v as f64).collect();
            softmax_f64(&mut s);
            out.extend(s.iter().map(|&v| v as f32));
        }
        RefTensor::new("softmax", x.shape.clone(), out)
    }

    fn activate(&self, x: &RefTensor, act: Activation) -> Result<RefTensor, BackendError> {
        let out = x
            .data
            .iter()
            .map(|&v| activation_f64(act, v as f64) as f32)
            .collect();
        RefTensor::new("activate", x.shape.clone(), out)
    }

    fn attention(
        &self,
        qkv: &RefTensor,
        num_heads: usize,
        scale: f32,
    ) -> Result<RefTensor, BackendError> {
        let [batch, tokens, d, hd] = attention_geometry(&qkv.shape, num_heads)?;
        let three_d = 3 * d;
        let at = |b: usize, t: usize, part: usize, h: usize, c: usize| {
            qkv.data[(b * tokens + t) * three_d + part * d + h * hd + c] as f64
        };
        let mut out = vec![0.0f32; batch * tokens * d];
        for b in 0..batch {
            for h in 0..num_heads {
                for i in 0..tokens {
                    let mut s: Vec<f64> = (0..tokens)
                        .map(|j| {
                            scale as f64
                                * (0..hd)
                                    .map(|c| at(b, i, 0, h, c) * at(b, j, 1, h, c))
                                    .sum::<f64>()
                        })
                        .collect();
                    softmax_f64(&mut s);
                    for c in 0..hd {
                        let v: f64 = (0..tokens).map(|j| s[j] * at(b, j, 2, h, c)).sum();
                        out[(b * tokens + i) * d + h * hd + c] = v as f32;
                    }
                }
            }
        }
        RefTensor::new("attention", vec![batch, tokens, d], out)
    }

    fn add(&self, a: &RefTensor, b: &RefTensor) -> Result<RefTensor, BackendError> {
        // The trait's narrower contract: equal shapes, or `b` with a leading 1.
        let leading_one = b.shape.first() == Some(&1)
            && a.shape.len() == b.shape.len()
            && a.shape.get(1..) == b.shape.get(1..);
        if a.shape != b.shape && !leading_one {
            return Err(BackendError::shape(
                "add",
                format!("cannot add {:?} and {:?}", a.shape, b.shape),
            ));
        }
        self.binary(a, b, BinaryOp::Add)
    }

    fn scale(&self, x: &RefTensor, s: f32) -> Result<RefTensor, BackendError> {
        let out = x.data.iter().map(|&v| v * s).collect();
        RefTensor::new("scale", x.shape.clone(), out)
    }

    fn reshape(&self, x: RefTensor, shape: &[usize]) -> Result<RefTensor, BackendError> {
        if checked_numel(shape) != Some(x.data.len()) {
            return Err(BackendError::shape(
                "reshape",
                format!("cannot view {:?} as {shape:?}", x.shape),
            ));
        }
        RefTensor::new("reshape", shape.to_vec(), x.data)
    }

    fn permute(&self, x: &RefTensor, dims: &[usize]) -> Result<RefTensor, BackendError> {
        let rank = x.shape.len();
        let mut sorted = dims.to_vec();
        sorted.sort_unstable();
        if sorted != (0..rank).collect::<Vec<_>>() {
            return Err(BackendError::shape(
                "permute",
                format!(
                    "{dims:?} is not a permutation of the {rank} dims of {:?}",
                    x.shape
                ),
            ));
        }
        let in_strides = broadcast_strides_dense(&x.shape);
        let out_shape: Vec<usize> = dims.iter().map(|&d| x.shape[d]).collect();
        let strides: Vec<usize> = dims.iter().map(|&d| in_strides[d]).collect();
        let out = (0..x.data.len())
            .map(|flat| x.data[dot(&unravel(flat, &out_shape), &strides)])
            .collect();
        RefTensor::new("permute", out_shape, out)
    }

    fn prepend_tokens(
        &self,
        tokens: &[&RefTensor],
        x: &RefTensor,
    ) -> Result<RefTensor, BackendError> {
        let &[batch, n, d] = x.shape.as_slice() else {
            return Err(BackendError::shape(
                "prepend_tokens",
                format!("x must be [B, N, D], got {:?}", x.shape),
            ));
        };
        if let Some(t) = tokens.iter().find(|t| t.shape != [1, 1, d]) {
            return Err(BackendError::shape(
                "prepend_tokens",
                format!("tokens must be [1, 1, {d}], got {:?}", t.shape),
            ));
        }
        let mut out = Vec::new();
        for b in 0..batch {
            for t in tokens {
                out.extend_from_slice(&t.data);
            }
            out.extend_from_slice(&x.data[b * n * d..(b + 1) * n * d]);
        }
        RefTensor::new("prepend_tokens", vec![batch, tokens.len() + n, d], out)
    }

    fn select_token(&self, x: &RefTensor, index: usize) -> Result<RefTensor, BackendError> {
        let &[batch, n, d] = x.shape.as_slice() else {
            return Err(BackendError::shape(
                "select_token",
                format!("x must be [B, N, D], got {:?}", x.shape),
            ));
        };
        if index >= n {
            return Err(BackendError::shape(
                "select_token",
                format!("token {index} of a sequence of {n}"),
            ));
        }
        let mut out = Vec::new();
        for b in 0..batch {
            out.extend_from_slice(&x.data[(b * n + index) * d..(b * n + index + 1) * d]);
        }
        RefTensor::new("select_token", vec![batch, d], out)
    }

    fn binary(
        &self,
        a: &RefTensor,
        b: &RefTensor,
        op: BinaryOp,
    ) -> Result<RefTensor, BackendError> {
        broadcast_map("binary", &[a, b], |v| {
            let (x, y) = (v[0], v[1]);
            match op {
                BinaryOp::Add => x + y,
                BinaryOp::Sub => x - y,
                BinaryOp::Mul => x * y,
                BinaryOp::Div => x / y,
                // NaN-propagating, as torch.maximum / torch.minimum.
                BinaryOp::Max if x.is_nan() || y.is_nan() => f32::NAN,
                BinaryOp::Min if x.is_nan() || y.is_nan() => f32::NAN,
                BinaryOp::Max => x.max(y),
                BinaryOp::Min => x.min(y),
            }
        })
    }

    fn compare(
        &self,
        a: &RefTensor,
        b: &RefTensor,
        op: CompareOp,
    ) -> Result<RefTensor, BackendError> {
        broadcast_map("compare", &[a, b], |v| {
            let (x, y) = (v[0], v[1]);
            let holds = match op {
                CompareOp::Eq => x == y,
                CompareOp::Lt => x < y,
                CompareOp::Le => x <= y,
                CompareOp::Gt => x > y,
                CompareOp::Ge => x >= y,
            };
            if holds {
                1.0
            } else {
                0.0
            }
        })
    }

    fn select(
        &self,
        mask: &RefTensor,
        a: &RefTensor,
        b: &RefTensor,
    ) -> Result<RefTensor, BackendError> {
        broadcast_map("select", &[mask, a, b], |v| {
            if v[0] != 0.0 {
                v[1]
            } else {
                v[2]
            }
        })
    }

    fn reduce(&self, x: &RefTensor, axis: usize, op: ReduceOp) -> Result<RefTensor, BackendError> {
        let (s, shape) = ops::reduce_geometry(&x.shape, axis)?;
        let mut out = Vec::new();
        for o in 0..s.outer {
            for i in 0..s.inner {
                let vals = (0..s.n).map(|j| x.data[(o * s.n + j) * s.inner + i]);
                let r = match op {
                    ReduceOp::Sum => vals.map(|v| v as f64).sum::<f64>(),
                    ReduceOp::Mean => vals.map(|v| v as f64).sum::<f64>() / s.n as f64,
                    ReduceOp::Max => vals.fold(f32::NEG_INFINITY, |m, v| {
                        if m.is_nan() || v.is_nan() {
                            f32::NAN
                        } else {
                            m.max(v)
                        }
                    }) as f64,
                    ReduceOp::ArgMax => {
                        // The first maximum; a NaN counts as the largest, as torch.argmax.
                        let mut best = 0;
                        let mut best_v = f32::NEG_INFINITY;
                        for (j, v) in vals.enumerate() {
                            if j == 0 || (!best_v.is_nan() && (v > best_v || v.is_nan())) {
                                best = j;
                                best_v = v;
                            }
                        }
                        best as f64
                    }
                };
                out.push(r as f32);
            }
        }
        RefTensor::new("reduce", shape, out)
    }

    fn pool2d(&self, x: &RefTensor, spec: Pool2dSpec) -> Result<RefTensor, BackendError> {
        let g = ops::pool2d_geometry(&x.shape, &spec)?;
        let [kh, kw] = spec.kernel;
        let mut out = Vec::new();
        for p in 0..g.planes {
            for oy in 0..g.ho {
                for ox in 0..g.wo {
                    let mut max = f32::NEG_INFINITY;
                    let mut sum = 0.0f64;
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let iy = (oy * spec.stride[0] + ky) as isize - spec.padding[0] as isize;
                            let ix = (ox * spec.stride[1] + kx) as isize - spec.padding[1] as isize;
                            if iy < 0 || ix < 0 || iy as usize >= g.h || ix as usize >= g.w {
                                continue;
                            }
                            let v = x.data[(p * g.h + iy as usize) * g.w + ix as usize];
                            max = if max.is_nan() || v.is_nan() {
                                f32::NAN
                            } else {
                                max.max(v)
                            };
                            sum += v as f64;
                        }
                    }
                    out.push(match spec.kind {
                        PoolKind::Max => max,
                        PoolKind::Avg => (sum / (kh * kw) as f64) as f32,
                    });
                }
            }
        }
        RefTensor::new("pool2d", g.out_shape(&x.shape), out)
    }

    fn resize(
        &self,
        x: &RefTensor,
        size: [usize; 2],
        mode: ResizeMode,
    ) -> Result<RefTensor, BackendError> {
        let g = ops::resize_geometry(&x.shape, size)?;
        let mut out = Vec::new();
        for p in 0..g.planes {
            let at = |y: usize, xx: usize| x.data[(p * g.h + y) * g.w + xx] as f64;
            for oy in 0..g.ho {
                for ox in 0..g.wo {
                    let v = match mode {
                        ResizeMode::Nearest => at(oy * g.h / g.ho, ox * g.w / g.wo),
                        ResizeMode::Bilinear { align_corners } => {
                            let sy = bilinear_source(oy, g.h, g.ho, align_corners);
                            let sx = bilinear_source(ox, g.w, g.wo, align_corners);
                            let (y0, x0) = (sy.floor() as usize, sx.floor() as usize);
                            let (y0, x0) = (y0.min(g.h - 1), x0.min(g.w - 1));
                            let (y1, x1) = ((y0 + 1).min(g.h - 1), (x0 + 1).min(g.w - 1));
                            let (ly, lx) = (sy - y0 as f64, sx - x0 as f64);
                            (1.0 - ly) * ((1.0 - lx) * at(y0, x0) + lx * at(y0, x1))
                                + ly * ((1.0 - lx) * at(y1, x0) + lx * at(y1, x1))
                        }
                    };
                    out.push(v as f32);
                }
            }
        }
        RefTensor::new("resize", g.out_shape(&x.shape), out)
    }

    fn concat(&self, xs: &[&RefTensor], axis: usize) -> Result<RefTensor, BackendError> {
        let shapes: Vec<&[usize]> = xs.iter().map(|x| x.shape.as_slice()).collect();
        let shape = ops::concat_shape(&shapes, axis)?;
        let split = ops::axis_split("concat", &shape, axis)?;
        let mut out = Vec::new();
        for o in 0..split.outer {
            for x in xs {
                let run = x.shape[axis] * split.inner;
                out.extend_from_slice(&x.data[o * run..(o + 1) * run]);
            }
        }
        RefTensor::new("concat", shape, out)
    }

    fn slice(
        &self,
        x: &RefTensor,
        axis: usize,
        start: usize,
        len: usize,
    ) -> Result<RefTensor, BackendError> {
        let s = ops::slice_geometry(&x.shape, axis, start, len)?;
        let mut out = Vec::new();
        for o in 0..s.outer {
            for j in start..start + len {
                let at = (o * s.n + j) * s.inner;
                out.extend_from_slice(&x.data[at..at + s.inner]);
            }
        }
        let mut shape = x.shape.clone();
        shape[axis] = len;
        RefTensor::new("slice", shape, out)
    }

    fn write_slice(
        &self,
        dst: &mut RefTensor,
        axis: usize,
        start: usize,
        src: &RefTensor,
    ) -> Result<(), BackendError> {
        let (s, n) = ops::write_slice_geometry(&dst.shape, axis, start, &src.shape)?;
        for o in 0..s.outer {
            for j in 0..n {
                for i in 0..s.inner {
                    dst.data[((o * s.n) + start + j) * s.inner + i] =
                        src.data[(o * n + j) * s.inner + i];
                }
            }
        }
        Ok(())
    }

    fn matmul(
        &self,
        a: &RefTensor,
        b: &RefTensor,
        transpose_b: bool,
    ) -> Result<RefTensor, BackendError> {
        let g = ops::matmul_geometry(&a.shape, &b.shape, transpose_b)?;
        let mut out = Vec::new();
        for bi in 0..g.batch {
            for i in 0..g.m {
                for j in 0..g.n {
                    let mut acc = 0.0f64;
                    for p in 0..g.k {
                        let bv = if transpose_b {
                            b.data[(bi * g.n + j) * g.k + p]
                        } else {
                            b.data[(bi * g.k + p) * g.n + j]
                        };
                        acc += a.data[(bi * g.m + i) * g.k + p] as f64 * bv as f64;
                    }
                    out.push(acc as f32);
                }
            }
        }
        RefTensor::new("matmul", g.out_shape, out)
    }

    fn embedding(&self, table: &RefTensor, ids: &[u32]) -> Result<RefTensor, BackendError> {
        let [_, d] = ops::embedding_geometry(&table.shape, ids)?;
        let mut out = Vec::new();
        for &id in ids {
            let id = id as usize;
            out.extend_from_slice(&table.data[id * d..(id + 1) * d]);
        }
        RefTensor::new("embedding", vec![ids.len(), d], out)
    }

    fn rms_norm(
        &self,
        x: &RefTensor,
        gamma: &RefTensor,
        eps: f32,
    ) -> Result<RefTensor, BackendError> {
        let d = ops::norm_dim("rms_norm", &x.shape, &gamma.shape)?;
        let mut out = Vec::with_capacity(x.data.len());
        for row in x.data.chunks_exact(d.max(1)) {
            let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / d as f64;
            let r = 1.0 / (ms + eps as f64).sqrt();
            for (i, &v) in row.iter().enumerate() {
                out.push((v as f64 * r * gamma.data[i] as f64) as f32);
            }
        }
        RefTensor::new("rms_norm", x.shape.clone(), out)
    }

    fn rope(
        &self,
        x: &RefTensor,
        cos: &RefTensor,
        sin: &RefTensor,
    ) -> Result<RefTensor, BackendError> {
        let [b, n, h, hd] = ops::rope_geometry(&x.shape, &cos.shape, &sin.shape)?;
        let half = hd / 2;
        let mut out = Vec::with_capacity(x.data.len());
        for bi in 0..b {
            for t in 0..n {
                for head in 0..h {
                    let v = &x.data[((bi * n + t) * h + head) * hd..][..hd];
                    for i in 0..hd {
                        let rotated = if i < half {
                            -(v[i + half] as f64)
                        } else {
                            v[i - half] as f64
                        };
                        let y = v[i] as f64 * cos.data[t * hd + i] as f64
                            + rotated * sin.data[t * hd + i] as f64;
                        out.push(y as f32);
                    }
                }
            }
        }
        RefTensor::new("rope", x.shape.clone(), out)
    }

    fn attention_gqa(
        &self,
        q: &RefTensor,
        k: &RefTensor,
        v: &RefTensor,
        spec: AttentionSpec,
    ) -> Result<RefTensor, BackendError> {
        let g: GqaGeometry = ops::attention_gqa_geometry(&q.shape, &k.shape, &v.shape, &spec)?;
        let hd = g.head_dim;
        let group = g.q_heads / g.kv_heads;
        let mut out = Vec::new();
        for b in 0..g.batch {
            for i in 0..g.nq {
                for h in 0..g.q_heads {
                    let kvh = h / group;
                    let qv = &q.data[((b * g.nq + i) * g.q_heads + h) * hd..][..hd];
                    let row = |t: &RefTensor, j: usize| -> Vec<f64> {
                        t.data[((b * g.nk + j) * g.kv_heads + kvh) * hd..][..hd]
                            .iter()
                            .map(|&x| x as f64)
                            .collect()
                    };
                    let seen = g.visible(i);
                    let mut s: Vec<f64> = (0..seen)
                        .map(|j| {
                            let kr = row(k, j);
                            spec.scale as f64
                                * qv.iter().zip(&kr).map(|(&a, b)| a as f64 * b).sum::<f64>()
                        })
                        .collect();
                    softmax_f64(&mut s);
                    let mut acc = vec![0.0f64; hd];
                    for (j, p) in s.iter().enumerate() {
                        for (a, vv) in acc.iter_mut().zip(row(v, j)) {
                            *a += p * vv;
                        }
                    }
                    out.extend(acc.iter().map(|&a| a as f32));
                }
            }
        }
        RefTensor::new("attention_gqa", vec![g.batch, g.nq, g.q_heads * hd], out)
    }
}

/// Row-major strides of `shape`.
fn broadcast_strides_dense(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}
