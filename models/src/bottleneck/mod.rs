//! BottleFit bottlenecks: a small encoder that runs on the device right after the head
//! and a decoder that runs on the edge right before the tail, so that what crosses the
//! link is far smaller than the activation at the split.
//!
//! Two families, told apart by the tensor names under a prefix (`bottleneck` in a
//! split checkpoint):
//!
//! - [`TokenBottleneck`] for ViT splits (`[B, N, D]` tokens): a per-token linear
//!   encoder `D -> r` and either a linear decoder `r -> D` (what PCA calibration
//!   produces) or a two-layer MLP decoder with exact GELU (what BottleFit training
//!   produces, `python/train_bottlefit.py`).
//! - [`ConvBottleneck`] for image-shaped feature maps (`[B, C, H, W]`): strided
//!   convolutions down to a few channels, and stride-2 transposed convolutions (plus
//!   optional same-size convolutions) back to the backbone's width.
//!
//! The tensor names are those PyTorch's `state_dict()` gives the modules described in
//! `docs/bottleneck.md`; every tensor under the prefix must belong to the bottleneck,
//! and a missing, mis-shaped or unexpected one is an error that names it.

mod conv;
mod token;

pub use conv::ConvBottleneck;
pub use token::{linear_token_tensors, TokenBottleneck, TokenDecoder};

use crate::backend::{Backend, BackendError};
use crate::tensor::HostTensor;
use crate::weights::{Weights, WeightsError};

/// Errors loading a bottleneck.
#[derive(Debug, thiserror::Error)]
pub enum BottleneckLoadError {
    /// A tensor the bottleneck needs is absent.
    #[error("weights file has no tensor {name}: {hint}")]
    Missing {
        /// The full tensor name.
        name: String,
        /// What the bottleneck expected instead.
        hint: String,
    },
    /// A tensor has a shape that does not fit the bottleneck.
    #[error("tensor {name} has shape {actual:?}, expected {expected}")]
    Shape {
        /// The full tensor name.
        name: String,
        /// The shape found.
        actual: Vec<usize>,
        /// The shape expected, in words (`[r, 192]`).
        expected: String,
    },
    /// Tensors under the prefix that belong to no bottleneck layer.
    #[error(
        "weights file has {} tensor(s) under {prefix}. that are not part of a bottleneck: {}; \
         a token bottleneck has {prefix}.encoder.{{weight,bias}} and {prefix}.decoder.{{weight,bias}} \
         or {prefix}.decoder.fc1/fc2.{{weight,bias}}; a conv bottleneck has layers at even \
         indices {prefix}.encoder.0, .2, ... and {prefix}.decoder.0, .2, ... (see docs/bottleneck.md)",
        names.len(),
        preview(names)
    )]
    Unexpected {
        /// The prefix searched.
        prefix: String,
        /// The tensors that fit nowhere, sorted.
        names: Vec<String>,
    },
    /// Reading a tensor failed (dtype, corrupt data).
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// The backend refused a weight.
    #[error("preparing bottleneck weights: {0}")]
    Backend(#[from] BackendError),
}

fn preview(names: &[String]) -> String {
    let mut s = names.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > 5 {
        s.push_str(", ...");
    }
    s
}

/// Errors running a bottleneck's encoder or decoder.
#[derive(Debug, thiserror::Error)]
pub enum CodeError {
    /// The tensor given has a shape the bottleneck cannot take.
    #[error("bottleneck {stage} got shape {actual:?}, expected {expected}")]
    Shape {
        /// `"encoder"` or `"decoder"`.
        stage: &'static str,
        /// The shape given.
        actual: Vec<usize>,
        /// The shape expected, in words.
        expected: String,
    },
    /// A backend op failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// A loaded bottleneck, ready to run on backend `B`.
pub enum Bottleneck<B: Backend> {
    /// Per-token bottleneck for ViT splits.
    Token(TokenBottleneck<B>),
    /// Convolutional bottleneck for image-shaped feature maps.
    Conv(ConvBottleneck<B>),
}

impl<B: Backend> Bottleneck<B> {
    /// Loads the bottleneck whose tensors are named `prefix.*`; `None` when there are
    /// none. The family is decided by the names (`prefix.encoder.weight`: token;
    /// `prefix.encoder.0.weight`: conv); every tensor under the prefix must be used.
    pub fn load(
        backend: &B,
        weights: &Weights,
        prefix: &str,
    ) -> Result<Option<Self>, BottleneckLoadError> {
        let dotted = format!("{prefix}.");
        let under: Vec<String> = weights
            .names()
            .filter(|n| n.starts_with(&dotted))
            .map(str::to_string)
            .collect();
        if under.is_empty() {
            return Ok(None);
        }
        let loaded = if weights.shape(&format!("{prefix}.encoder.weight")).is_some() {
            Self::Token(TokenBottleneck::load(backend, weights, prefix)?)
        } else if weights
            .shape(&format!("{prefix}.encoder.0.weight"))
            .is_some()
        {
            Self::Conv(ConvBottleneck::load(backend, weights, prefix)?)
        } else {
            return Err(BottleneckLoadError::Missing {
                name: format!("{prefix}.encoder.weight"),
                hint: format!(
                    "found {} but no encoder: a token bottleneck needs {prefix}.encoder.weight \
                     [r, D], a conv bottleneck {prefix}.encoder.0.weight [C, Cin, k, k]",
                    preview(&under)
                ),
            });
        };
        let unused: Vec<String> = weights
            .unused()
            .into_iter()
            .filter(|n| n.starts_with(&dotted))
            .collect();
        if !unused.is_empty() {
            return Err(BottleneckLoadError::Unexpected {
                prefix: prefix.to_string(),
                names: unused,
            });
        }
        Ok(Some(loaded))
    }

    /// The device side: activation at the split -> code (`[B, N, D]` -> `[B, N, r]`
    /// for tokens, `[B, C, H, W]` -> `[B, c, H / 2^L, W / 2^L]` for conv).
    pub fn encode(&self, x: &B::Tensor) -> Result<B::Tensor, CodeError> {
        match self {
            Self::Token(t) => t.encode(x),
            Self::Conv(c) => c.encode(x),
        }
    }

    /// The edge side: code -> activation of the shape the encoder took.
    pub fn decode(&self, code: &B::Tensor) -> Result<B::Tensor, CodeError> {
        match self {
            Self::Token(t) => t.decode(code),
            Self::Conv(c) => c.decode(code),
        }
    }

    /// The code's shape for an activation of `input_shape`, or why it cannot be
    /// encoded.
    pub fn code_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>, CodeError> {
        match self {
            Self::Token(t) => t.code_shape(input_shape),
            Self::Conv(c) => c.code_shape(input_shape),
        }
    }

    /// Channels of the activation the encoder takes and the decoder returns (`D`, or
    /// the feature map's `C`).
    pub fn input_channels(&self) -> usize {
        match self {
            Self::Token(t) => t.dim(),
            Self::Conv(c) => c.input_channels(),
        }
    }

    /// Channels of the code (the rank `r`, or the conv code's channels): the axis a
    /// per-channel codec quantizes along is the code's last (token) or second (conv).
    pub fn code_channels(&self) -> usize {
        match self {
            Self::Token(t) => t.rank(),
            Self::Conv(c) => c.code_channels(),
        }
    }

    /// The axis of the code that indexes its channels (`2` for `[B, N, r]` tokens, `1`
    /// for `[B, c, h, w]` maps): the axis to give the codec's per-channel quantization.
    pub fn channel_axis(&self) -> usize {
        match self {
            Self::Token(_) => 2,
            Self::Conv(_) => 1,
        }
    }

    /// `"token"` or `"conv"`, for logs and reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Token(_) => "token",
            Self::Conv(_) => "conv",
        }
    }
}

/// Takes `name` from `weights`, checking its shape with `check` (which returns the
/// expected shape in words when the actual one does not fit).
fn take(
    weights: &Weights,
    name: &str,
    hint: &str,
    check: impl FnOnce(&[usize]) -> Result<(), String>,
) -> Result<HostTensor, BottleneckLoadError> {
    let shape = weights
        .shape(name)
        .ok_or_else(|| BottleneckLoadError::Missing {
            name: name.to_string(),
            hint: hint.to_string(),
        })?
        .to_vec();
    check(&shape).map_err(|expected| BottleneckLoadError::Shape {
        name: name.to_string(),
        actual: shape.clone(),
        expected,
    })?;
    Ok(weights.get(name, &shape)?)
}

/// A shape check for an exact shape.
fn exactly(expected: &[usize]) -> impl FnOnce(&[usize]) -> Result<(), String> + '_ {
    move |actual| {
        if actual == expected {
            Ok(())
        } else {
            Err(format!("{expected:?}"))
        }
    }
}
