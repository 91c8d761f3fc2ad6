//! BottleFit's convolutional bottleneck for image-shaped feature maps `[B, C, H, W]`.
//!
//! PyTorch layout (two `nn.Sequential`s; the layers with weights sit at even indices
//! and an exact `nn.GELU()` sits between consecutive layers, none after the last):
//!
//! ```text
//! encoder = Sequential(Conv2d(C, C1, k, stride=2, padding=k//2), GELU(),
//!                      Conv2d(C1, c, k, stride=2, padding=k//2))          # k odd
//! decoder = Sequential(ConvTranspose2d(c, C2, 2, stride=2), GELU(),
//!                      ConvTranspose2d(C2, C3, 2, stride=2), GELU(),
//!                      Conv2d(C3, C, k, padding=k//2))                    # optional
//! ```
//!
//! Every tensor is `P.encoder.{i}.weight`/`.bias` or `P.decoder.{i}.weight`/`.bias`. The
//! kernel tells the layer: in the encoder every layer is a stride-2 convolution with an
//! odd kernel (halving an even side); in the decoder a `2 x 2` kernel is a stride-2
//! transposed convolution (weight `[in, out, 2, 2]`, doubling the side) and an odd
//! kernel a size-keeping convolution. The decoder has as many transposed convolutions
//! as the encoder has layers and ends at the encoder's input width, so a map whose
//! sides divide by `2^L` comes back at its own size.
//!
//! ReLU is not offered: the backend seam has an exact GELU (fused into `linear`) and
//! no ReLU, and a GELU bottleneck trains as well. A stride-2 `2 x 2` transposed
//! convolution touches each output pixel from exactly one input pixel, so it is a
//! per-pixel linear `c -> 4 * out` followed by a pixel shuffle: it runs on the seam's
//! `linear`, `permute` and `reshape`, on every backend, without a new op.

use crate::backend::{Activation, Backend, Conv2dSpec, DeviceTensor};
use crate::tensor::HostTensor;
use crate::weights::Weights;

use super::{exactly, take, BottleneckLoadError, CodeError};

enum DecoderLayer<B: Backend> {
    /// Stride-2 `2 x 2` transposed convolution as a per-pixel linear to `4 * out`.
    Up { layer: B::Linear, out: usize },
    /// Size-keeping convolution (odd kernel, padding `k / 2`).
    Same(B::Conv2d),
}

/// A convolutional bottleneck: `L` stride-2 convolutions down, `L` stride-2 transposed
/// convolutions (and optional size-keeping convolutions) up.
pub struct ConvBottleneck<B: Backend> {
    backend: B,
    input_channels: usize,
    code_channels: usize,
    encoder: Vec<B::Conv2d>,
    decoder: Vec<DecoderLayer<B>>,
}

impl<B: Backend> ConvBottleneck<B> {
    /// Loads `prefix.encoder.{0,2,..}` and `prefix.decoder.{0,2,..}` (see the module
    /// docs). Does not check for leftover tensors: [`super::Bottleneck::load`] does.
    pub fn load(backend: &B, weights: &Weights, prefix: &str) -> Result<Self, BottleneckLoadError> {
        let mut encoder = Vec::new();
        let mut input_channels = 0;
        let mut channels = 0;
        let mut index = 0;
        loop {
            let base = format!("{prefix}.encoder.{index}");
            let wname = format!("{base}.weight");
            if weights.shape(&wname).is_none() {
                break;
            }
            let mut geometry = (0, 0, 0);
            let w = take(weights, &wname, "", |s| match *s {
                [o, c, kh, kw]
                    if o > 0
                        && c > 0
                        && kh == kw
                        && kh % 2 == 1
                        && (index == 0 || c == channels) =>
                {
                    geometry = (o, c, kh);
                    Ok(())
                }
                _ => Err(format!(
                    "[out, {}, k, k] with k odd (Conv2d(stride=2, padding=k//2))",
                    if index == 0 {
                        "in".to_string()
                    } else {
                        channels.to_string()
                    }
                )),
            })?;
            let (o, c, k) = geometry;
            if index == 0 {
                input_channels = c;
            }
            let b = take(
                weights,
                &format!("{base}.bias"),
                "every bottleneck convolution has a bias (fold a BatchNorm into it)",
                exactly(&[o]),
            )?;
            encoder.push(backend.prepare_conv2d(
                &w,
                Some(&b),
                Conv2dSpec::new([2, 2], [k / 2, k / 2]),
            )?);
            channels = o;
            index += 2;
        }
        let code_channels = channels;
        let mut decoder = Vec::new();
        let mut ups = 0;
        let mut index = 0;
        let mut last_weight = format!("{prefix}.decoder.0.weight");
        loop {
            let base = format!("{prefix}.decoder.{index}");
            let wname = format!("{base}.weight");
            if weights.shape(&wname).is_none() {
                break;
            }
            let mut geometry = (0, 0);
            let w = take(weights, &wname, "", |s| {
                match *s {
                // ConvTranspose2d weight: [in, out, 2, 2].
                [c, o, 2, 2] if c == channels && o > 0 => {
                    geometry = (o, 2);
                    Ok(())
                }
                // Conv2d weight: [out, in, k, k], k odd.
                [o, c, kh, kw] if c == channels && o > 0 && kh == kw && kh % 2 == 1 => {
                    geometry = (o, kh);
                    Ok(())
                }
                _ => Err(format!(
                    "[{channels}, out, 2, 2] (ConvTranspose2d(stride=2)) or [out, {channels}, k, k] \
                     with k odd (Conv2d(padding=k//2))"
                )),
            }
            })?;
            let (o, k) = geometry;
            let b = take(
                weights,
                &format!("{base}.bias"),
                "every bottleneck convolution has a bias",
                exactly(&[o]),
            )?;
            decoder.push(if k == 2 {
                ups += 1;
                DecoderLayer::Up {
                    layer: transposed_as_linear(backend, &w, &b, channels, o)?,
                    out: o,
                }
            } else {
                DecoderLayer::Same(backend.prepare_conv2d(
                    &w,
                    Some(&b),
                    Conv2dSpec::new([1, 1], [k / 2, k / 2]),
                )?)
            });
            channels = o;
            last_weight = wname;
            index += 2;
        }
        if decoder.is_empty() {
            return Err(BottleneckLoadError::Missing {
                name: format!("{prefix}.decoder.0.weight"),
                hint: "a conv bottleneck needs a decoder: ConvTranspose2d layers at \
                       decoder.0, .2, ..."
                    .into(),
            });
        }
        if ups != encoder.len() || channels != input_channels {
            return Err(BottleneckLoadError::Shape {
                name: last_weight,
                actual: weights
                    .shape(&format!("{prefix}.decoder.{}.weight", index - 2))
                    .map(<[usize]>::to_vec)
                    .unwrap_or_default(),
                expected: format!(
                    "a decoder with {} stride-2 transposed convolution(s), one per encoder \
                     layer, ending at {input_channels} channels (it has {ups}, ending at \
                     {channels})",
                    encoder.len()
                ),
            });
        }
        Ok(Self {
            backend: backend.clone(),
            input_channels,
            code_channels,
            encoder,
            decoder,
        })
    }

    /// Channels of the feature map the encoder takes and the decoder returns.
    pub fn input_channels(&self) -> usize {
        self.input_channels
    }

    /// Channels of the code.
    pub fn code_channels(&self) -> usize {
        self.code_channels
    }

    /// Stride-2 layers in the encoder (the sides shrink by `2^L`).
    pub fn depth(&self) -> usize {
        self.encoder.len()
    }

    /// `[B, C, H, W]` -> `[B, c, H / 2^L, W / 2^L]`.
    pub fn code_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>, CodeError> {
        let factor = 1usize << self.encoder.len();
        match *input_shape {
            [b, c, h, w]
                if c == self.input_channels
                    && h > 0
                    && w > 0
                    && h % factor == 0
                    && w % factor == 0 =>
            {
                Ok(vec![b, self.code_channels, h / factor, w / factor])
            }
            _ => Err(CodeError::Shape {
                stage: "encoder",
                actual: input_shape.to_vec(),
                expected: format!(
                    "[B, {}, H, W] with H and W multiples of {factor}",
                    self.input_channels
                ),
            }),
        }
    }

    /// Runs the encoder.
    pub fn encode(&self, x: &B::Tensor) -> Result<B::Tensor, CodeError> {
        self.code_shape(x.shape())?;
        let be = &self.backend;
        let mut layers = self.encoder.iter();
        let first = layers.next().ok_or_else(|| CodeError::Shape {
            stage: "encoder",
            actual: x.shape().to_vec(),
            expected: "an encoder with at least one layer".into(),
        })?;
        let mut y = be.conv2d(x, first)?;
        for layer in layers {
            y = be.activate(&y, Activation::Gelu)?;
            y = be.conv2d(&y, layer)?;
        }
        Ok(y)
    }

    /// Runs the decoder: `[B, c, h, w]` -> `[B, C, h * 2^L, w * 2^L]`.
    pub fn decode(&self, code: &B::Tensor) -> Result<B::Tensor, CodeError> {
        let shape = code.shape().to_vec();
        let [batch, c, mut h, mut w] = shape[..] else {
            return Err(self.decode_shape_error(&shape));
        };
        if c != self.code_channels || h == 0 || w == 0 {
            return Err(self.decode_shape_error(&shape));
        }
        let be = &self.backend;
        let last = self.decoder.len() - 1;
        let mut y: Option<B::Tensor> = None;
        for (i, layer) in self.decoder.iter().enumerate() {
            let x = y.as_ref().unwrap_or(code);
            let act = i < last;
            let next = match layer {
                DecoderLayer::Same(conv) => {
                    let out = be.conv2d(x, conv)?;
                    if act {
                        be.activate(&out, Activation::Gelu)?
                    } else {
                        out
                    }
                }
                DecoderLayer::Up { layer, out } => {
                    // [B, c, h, w] -> [B, h, w, c] -> per pixel [4 * out] -> [B, h, w, out, 2, 2]
                    // -> [B, out, h, 2, w, 2] -> [B, out, 2h, 2w].
                    let pixels = be.permute(x, &[0, 2, 3, 1])?;
                    let activation = if act {
                        Activation::Gelu
                    } else {
                        Activation::Identity
                    };
                    let z = be.linear(&pixels, layer, activation)?;
                    let z = be.reshape(z, &[batch, h, w, *out, 2, 2])?;
                    let z = be.permute(&z, &[0, 3, 1, 4, 2, 5])?;
                    h *= 2;
                    w *= 2;
                    be.reshape(z, &[batch, *out, h, w])?
                }
            };
            y = Some(next);
        }
        y.ok_or_else(|| self.decode_shape_error(&shape))
    }

    fn decode_shape_error(&self, shape: &[usize]) -> CodeError {
        CodeError::Shape {
            stage: "decoder",
            actual: shape.to_vec(),
            expected: format!("[B, {}, h, w]", self.code_channels),
        }
    }
}

/// A `ConvTranspose2d(c, o, 2, stride=2)` weight `[c, o, 2, 2]` and bias `[o]` as a
/// linear `c -> 4o` whose output index is `(o, dy, dx)` row-major.
fn transposed_as_linear<B: Backend>(
    backend: &B,
    weight: &HostTensor,
    bias: &HostTensor,
    c: usize,
    o: usize,
) -> Result<B::Linear, BottleneckLoadError> {
    let w = weight.data();
    let mut lin = vec![0f32; 4 * o * c];
    for ci in 0..c {
        for (q, &v) in w[ci * o * 4..(ci + 1) * o * 4].iter().enumerate() {
            // q = (oi * 2 + dy) * 2 + dx is already the output index.
            lin[q * c + ci] = v;
        }
    }
    let tiled: Vec<f32> = bias.data().iter().flat_map(|&b| [b; 4]).collect();
    let lin = HostTensor::new([4 * o, c], lin).map_err(|e| {
        BottleneckLoadError::Backend(crate::BackendError::shape(
            "conv_transpose2d",
            e.to_string(),
        ))
    })?;
    let tiled = HostTensor::new([4 * o], tiled).map_err(|e| {
        BottleneckLoadError::Backend(crate::BackendError::shape(
            "conv_transpose2d",
            e.to_string(),
        ))
    })?;
    Ok(backend.prepare_linear(&lin, Some(&tiled))?)
}
