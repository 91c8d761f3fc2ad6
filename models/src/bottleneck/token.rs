//! The token bottleneck for ViT splits: every token `D -> r` on the device, `r -> D` on
//! the edge.
//!
//! Names (PyTorch `state_dict()` of `python/train_bottlefit.py`'s `TokenBottleneck`):
//!
//! | tensor | shape | role |
//! | --- | --- | --- |
//! | `P.encoder.weight`, `P.encoder.bias` | `[r, D]`, `[r]` | `nn.Linear(D, r)` |
//! | `P.decoder.fc1.weight`, `.bias` | `[H, r]`, `[H]` | MLP decoder: `nn.Linear(r, H)`, exact GELU |
//! | `P.decoder.fc2.weight`, `.bias` | `[D, H]`, `[D]` | `nn.Linear(H, D)` |
//! | `P.decoder.weight`, `P.decoder.bias` | `[D, r]`, `[D]` | or a linear decoder (PCA) |

use crate::backend::{Activation, Backend, DeviceTensor};
use crate::tensor::HostTensor;
use crate::weights::Weights;

use super::{exactly, take, BottleneckLoadError, CodeError};

/// The decoder half of a [`TokenBottleneck`].
pub enum TokenDecoder<B: Backend> {
    /// `y = z W^T + b` (what PCA calibration writes: `W = P`, `b = mean`).
    Linear(B::Linear),
    /// `y = fc2(gelu(fc1(z)))`, exact GELU (BottleFit's trained decoder).
    Mlp {
        /// `r -> H`.
        fc1: B::Linear,
        /// `H -> D`.
        fc2: B::Linear,
        /// `H`.
        hidden: usize,
    },
}

/// A per-token bottleneck `D -> r -> D` over `[.., D]` activations.
pub struct TokenBottleneck<B: Backend> {
    backend: B,
    dim: usize,
    rank: usize,
    encoder: B::Linear,
    decoder: TokenDecoder<B>,
}

impl<B: Backend> TokenBottleneck<B> {
    /// Loads `prefix.encoder.*` and the decoder whose names are present (MLP when
    /// `prefix.decoder.fc1.weight` exists, else linear). Does not check for leftover
    /// tensors: [`super::Bottleneck::load`] does.
    pub fn load(backend: &B, weights: &Weights, prefix: &str) -> Result<Self, BottleneckLoadError> {
        let name = |n: &str| format!("{prefix}.{n}");
        let mut dims = (0, 0);
        let enc_w = take(
            weights,
            &name("encoder.weight"),
            "the token encoder is nn.Linear(D, r)",
            |s| match *s {
                [r, d] if r > 0 && d > 0 => {
                    dims = (r, d);
                    Ok(())
                }
                _ => Err("[r, D] with r, D > 0 (nn.Linear(D, r))".into()),
            },
        )?;
        let (rank, dim) = dims;
        let enc_b = take(
            weights,
            &name("encoder.bias"),
            "the token encoder is nn.Linear(D, r) with a bias",
            exactly(&[rank]),
        )?;
        let encoder = backend.prepare_linear(&enc_w, Some(&enc_b))?;
        let decoder = if weights.shape(&name("decoder.fc1.weight")).is_some() {
            let mut hidden = 0;
            let fc1_w = take(weights, &name("decoder.fc1.weight"), "", |s| match *s {
                [h, r] if h > 0 && r == rank => {
                    hidden = h;
                    Ok(())
                }
                _ => Err(format!("[H, {rank}] (nn.Linear(r = {rank}, H))")),
            })?;
            let mlp_hint = "the MLP decoder is fc1 = nn.Linear(r, H), GELU, fc2 = nn.Linear(H, D)";
            let fc1_b = take(
                weights,
                &name("decoder.fc1.bias"),
                mlp_hint,
                exactly(&[hidden]),
            )?;
            let fc2_w = take(
                weights,
                &name("decoder.fc2.weight"),
                mlp_hint,
                exactly(&[dim, hidden]),
            )?;
            let fc2_b = take(
                weights,
                &name("decoder.fc2.bias"),
                mlp_hint,
                exactly(&[dim]),
            )?;
            TokenDecoder::Mlp {
                fc1: backend.prepare_linear(&fc1_w, Some(&fc1_b))?,
                fc2: backend.prepare_linear(&fc2_w, Some(&fc2_b))?,
                hidden,
            }
        } else {
            let hint = format!(
                "a token bottleneck needs a decoder: {0}.decoder.fc1/fc2.{{weight,bias}} (MLP) \
                 or {0}.decoder.{{weight,bias}} (linear, [D, r] and [D])",
                prefix
            );
            let w = take(
                weights,
                &name("decoder.weight"),
                &hint,
                exactly(&[dim, rank]),
            )?;
            let b = take(weights, &name("decoder.bias"), &hint, exactly(&[dim]))?;
            TokenDecoder::Linear(backend.prepare_linear(&w, Some(&b))?)
        };
        Ok(Self {
            backend: backend.clone(),
            dim,
            rank,
            encoder,
            decoder,
        })
    }

    /// Channels per token of the activation, `D`.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Channels per token of the code, `r`.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The decoder.
    pub fn decoder(&self) -> &TokenDecoder<B> {
        &self.decoder
    }

    /// `[.., D]` -> `[.., r]`.
    pub fn encode(&self, x: &B::Tensor) -> Result<B::Tensor, CodeError> {
        self.check(x.shape(), self.dim, "encoder")?;
        Ok(self
            .backend
            .linear(x, &self.encoder, Activation::Identity)?)
    }

    /// `[.., r]` -> `[.., D]`.
    pub fn decode(&self, code: &B::Tensor) -> Result<B::Tensor, CodeError> {
        self.check(code.shape(), self.rank, "decoder")?;
        let be = &self.backend;
        Ok(match &self.decoder {
            TokenDecoder::Linear(layer) => be.linear(code, layer, Activation::Identity)?,
            TokenDecoder::Mlp { fc1, fc2, .. } => {
                let h = be.linear(code, fc1, Activation::Gelu)?;
                be.linear(&h, fc2, Activation::Identity)?
            }
        })
    }

    /// `[.., D]` -> `[.., r]`.
    pub fn code_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>, CodeError> {
        self.check(input_shape, self.dim, "encoder")?;
        let mut shape = input_shape.to_vec();
        if let Some(last) = shape.last_mut() {
            *last = self.rank;
        }
        Ok(shape)
    }

    fn check(
        &self,
        shape: &[usize],
        channels: usize,
        stage: &'static str,
    ) -> Result<(), CodeError> {
        match shape.last() {
            Some(&c) if c == channels && shape.len() >= 2 => Ok(()),
            _ => Err(CodeError::Shape {
                stage,
                actual: shape.to_vec(),
                expected: format!("[.., {channels}] (tokens with {channels} channels)"),
            }),
        }
    }
}

/// The tensors of a linear token bottleneck from a PCA: with `mean` `[D]` and `basis`
/// `[r, D]` (orthonormal rows, the top principal directions), the encoder is
/// `z = basis (x - mean)` and the decoder `x' = basis^T z + mean`, i.e.
/// `P.encoder.weight = basis`, `P.encoder.bias = -basis mean`, `P.decoder.weight =
/// basis^T`, `P.decoder.bias = mean`. Returns `(name, tensor)` pairs under `prefix`.
pub fn linear_token_tensors(
    prefix: &str,
    mean: &HostTensor,
    basis: &HostTensor,
) -> Result<Vec<(String, HostTensor)>, crate::tensor::ShapeError> {
    let (r, d) = match *basis.shape() {
        [r, d] => (r, d),
        _ => (0, 0),
    };
    let bad = || crate::tensor::ShapeError::LengthMismatch {
        shape: basis.shape().to_vec(),
        expected: mean.numel(),
        actual: basis.numel(),
    };
    if mean.shape() != [d] || r == 0 {
        return Err(bad());
    }
    let p = basis.data();
    let m = mean.data();
    let enc_bias: Vec<f32> = p
        .chunks_exact(d)
        .map(|row| {
            -row.iter()
                .zip(m)
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum::<f64>() as f32
        })
        .collect();
    let mut transposed = vec![0f32; d * r];
    for (i, row) in p.chunks_exact(d).enumerate() {
        for (j, &v) in row.iter().enumerate() {
            transposed[j * r + i] = v;
        }
    }
    Ok(vec![
        (format!("{prefix}.encoder.weight"), basis.clone()),
        (
            format!("{prefix}.encoder.bias"),
            HostTensor::new([r], enc_bias)?,
        ),
        (
            format!("{prefix}.decoder.weight"),
            HostTensor::new([d, r], transposed)?,
        ),
        (format!("{prefix}.decoder.bias"), mean.clone()),
    ])
}
