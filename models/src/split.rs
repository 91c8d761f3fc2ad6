//! A ViT cut at a split point, with the bottleneck that travels with the cut:
//! `head = stages[..k] + encoder` runs on the device, `tail = decoder + stages[k..]`
//! on the edge.
//!
//! A split checkpoint is a timm ViT/DeiT safetensors file plus `bottleneck.*` tensors
//! (see [`crate::bottleneck`]) and, in its `__metadata__`, `split` (the split point in
//! [`Vit::split_points`] numbering, which is also "blocks on the device") and `rank`.
//! Without a bottleneck, [`SplitModel::head`] and [`SplitModel::tail`] are exactly
//! [`Vit::head`] and [`Vit::tail`].

use std::path::Path;
use std::sync::Arc;

use crate::backend::{Backend, DeviceTensor};
use crate::bottleneck::{Bottleneck, BottleneckLoadError, CodeError};
use crate::tensor::HostTensor;
use crate::vit::{LoadError, RunError, Vit, VitOptions};
use crate::weights::{Weights, WeightsError};

/// The name prefix of a split checkpoint's bottleneck tensors.
pub const BOTTLENECK_PREFIX: &str = "bottleneck";

/// Largest safetensors header read for metadata (safetensors' own cap).
const MAX_HEADER_BYTES: usize = 100 << 20;

/// Whether a checkpoint carries a learned bottleneck (`bottleneck.*` tensors).
pub fn has_bottleneck(weights: &Weights) -> bool {
    let prefix = format!("{BOTTLENECK_PREFIX}.");
    weights.names().any(|n| n.starts_with(&prefix))
}

/// What a split checkpoint's `__metadata__` says about the split.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SplitMetadata {
    /// `split`: the split point the bottleneck was made for.
    pub split: Option<usize>,
    /// `rank`: channels per token of the code.
    pub rank: Option<usize>,
    /// `num_heads`: attention heads (the weights cannot tell them).
    pub num_heads: Option<usize>,
}

/// Errors reading a checkpoint's metadata.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// The header is cut, too large or not JSON.
    #[error("safetensors header unreadable: {0}")]
    Header(String),
    /// A metadata value is not a whole number.
    #[error("metadata {key} = {value:?} is not a whole number")]
    Value {
        /// The key.
        key: &'static str,
        /// Its value.
        value: String,
    },
}

impl SplitMetadata {
    /// Reads `split`, `rank` and `num_heads` from the metadata of loaded weights.
    pub fn from_weights(weights: &Weights) -> Result<Self, MetadataError> {
        let number = |key: &'static str| -> Result<Option<usize>, MetadataError> {
            weights
                .metadata_value(key)
                .map(|text| {
                    text.trim().parse().map_err(|_| MetadataError::Value {
                        key,
                        value: text.to_string(),
                    })
                })
                .transpose()
        };
        Ok(Self {
            split: number("split")?,
            rank: number("rank")?,
            num_heads: number("num_heads")?,
        })
    }

    /// Reads `split`, `rank` and `num_heads` from the `__metadata__` of safetensors
    /// bytes (absent keys are `None`; present ones must be whole numbers).
    pub fn from_safetensors(bytes: &[u8]) -> Result<Self, MetadataError> {
        let header = |d: &str| MetadataError::Header(d.to_string());
        let len_bytes: [u8; 8] = bytes
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| header("shorter than 8 bytes"))?;
        let len = usize::try_from(u64::from_le_bytes(len_bytes))
            .ok()
            .filter(|&n| n <= MAX_HEADER_BYTES)
            .ok_or_else(|| header("declared header larger than 100 MB"))?;
        let json = bytes
            .get(8..8 + len)
            .ok_or_else(|| header("file ends inside the header"))?;
        let json: serde_json::Value =
            serde_json::from_slice(json).map_err(|e| MetadataError::Header(e.to_string()))?;
        let meta = json.get("__metadata__");
        let number = |key: &'static str| -> Result<Option<usize>, MetadataError> {
            match meta.and_then(|m| m.get(key)) {
                None => Ok(None),
                Some(v) => {
                    let text = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                    text.trim()
                        .parse()
                        .map(Some)
                        .map_err(|_| MetadataError::Value { key, value: text })
                }
            }
        };
        Ok(Self {
            split: number("split")?,
            rank: number("rank")?,
            num_heads: number("num_heads")?,
        })
    }
}

/// Errors loading a split model.
#[derive(Debug, thiserror::Error)]
pub enum SplitLoadError {
    /// The bottleneck tensors are wrong.
    #[error(transparent)]
    Bottleneck(#[from] BottleneckLoadError),
    /// The ViT tensors are wrong.
    #[error(transparent)]
    Vit(#[from] LoadError),
    /// The file could not be read.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// The metadata is unreadable.
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    /// No split point was given and the checkpoint names none.
    #[error("no split point: give one (--split), or use a checkpoint whose metadata has `split`")]
    NoSplitPoint,
    /// The split point does not exist in this model.
    #[error("split point {point} does not exist: this model has points 0..={max}")]
    PointOutOfRange {
        /// The point asked for.
        point: usize,
        /// The last point.
        max: usize,
    },
    /// The split point asked for is not the one the bottleneck was made for.
    #[error(
        "the bottleneck was made for split point {metadata} (metadata `split`), not {asked}; \
         drop the split argument or use a bottleneck made for {asked}"
    )]
    PointMismatch {
        /// The point asked for.
        asked: usize,
        /// The point in the metadata.
        metadata: usize,
    },
    /// The bottleneck does not fit the model at the split.
    #[error("the bottleneck does not fit this model: {0}")]
    Mismatch(String),
}

/// Errors running a split model.
#[derive(Debug, thiserror::Error)]
pub enum SplitRunError {
    /// The ViT refused the input or activation.
    #[error(transparent)]
    Vit(#[from] RunError),
    /// The bottleneck refused the activation or code.
    #[error(transparent)]
    Code(#[from] CodeError),
    /// A backend op failed.
    #[error(transparent)]
    Backend(#[from] crate::BackendError),
}

/// A ViT cut at one split point, with an optional bottleneck at the cut.
pub struct SplitModel<B: Backend> {
    vit: Arc<Vit<B>>,
    point: usize,
    bottleneck: Option<Bottleneck<B>>,
}

impl<B: Backend> SplitModel<B> {
    /// Puts a loaded model and bottleneck together, checking that the point exists and
    /// that the bottleneck is a token bottleneck of the model's width.
    pub fn new(
        vit: Arc<Vit<B>>,
        point: usize,
        bottleneck: Option<Bottleneck<B>>,
    ) -> Result<Self, SplitLoadError> {
        let cfg = vit.config();
        if point > cfg.depth {
            return Err(SplitLoadError::PointOutOfRange {
                point,
                max: cfg.depth,
            });
        }
        if let Some(b) = &bottleneck {
            if !matches!(b, Bottleneck::Token(_)) {
                return Err(SplitLoadError::Mismatch(format!(
                    "a ViT split carries tokens; this is a {} bottleneck",
                    b.kind()
                )));
            }
            if b.input_channels() != cfg.embed_dim {
                return Err(SplitLoadError::Mismatch(format!(
                    "its encoder takes {} channels, the ViT's tokens have {}",
                    b.input_channels(),
                    cfg.embed_dim
                )));
            }
        }
        Ok(Self {
            vit,
            point,
            bottleneck,
        })
    }

    /// Loads the ViT and its `bottleneck.*` tensors (if any) from `weights`, with the
    /// split point `point` or else the weights' metadata `split` (see
    /// [`SplitModel::load_with_metadata`] for the checks).
    pub fn load(
        backend: B,
        weights: &Weights,
        options: &VitOptions,
        point: Option<usize>,
    ) -> Result<Self, SplitLoadError> {
        let metadata = SplitMetadata::from_weights(weights)?;
        Self::load_with_metadata(backend, weights, options, point, &metadata)
    }

    /// Loads as [`SplitModel::load`], with the checkpoint's metadata: the split point
    /// defaults to its `split` (and must equal it when both are given and there is a
    /// bottleneck), its `rank` must equal the bottleneck's, and its `num_heads` is
    /// used when `options` give none.
    pub fn load_with_metadata(
        backend: B,
        weights: &Weights,
        options: &VitOptions,
        point: Option<usize>,
        metadata: &SplitMetadata,
    ) -> Result<Self, SplitLoadError> {
        // The bottleneck first: Vit::load refuses tensors nobody has taken.
        let bottleneck = Bottleneck::load(&backend, weights, BOTTLENECK_PREFIX)?;
        let point = match (point, metadata.split) {
            (Some(asked), Some(meta)) if asked != meta && bottleneck.is_some() => {
                return Err(SplitLoadError::PointMismatch {
                    asked,
                    metadata: meta,
                })
            }
            (Some(p), _) | (None, Some(p)) => p,
            (None, None) => return Err(SplitLoadError::NoSplitPoint),
        };
        if let (Some(rank), Some(b)) = (metadata.rank, &bottleneck) {
            if rank != b.code_channels() {
                return Err(SplitLoadError::Mismatch(format!(
                    "metadata says rank {rank}, the encoder has {} outputs",
                    b.code_channels()
                )));
            }
        }
        let mut options = options.clone();
        if options.num_heads.is_none() && options.arch.is_none() {
            options.num_heads = metadata.num_heads;
        }
        let vit = Vit::load(backend, weights, &options)?;
        Self::new(Arc::new(vit), point, bottleneck)
    }

    /// Loads from safetensors bytes, taking the split point (when `point` is `None`),
    /// rank and head count from the metadata.
    pub fn from_bytes(
        backend: B,
        bytes: Vec<u8>,
        source_name: &str,
        options: &VitOptions,
        point: Option<usize>,
    ) -> Result<Self, SplitLoadError> {
        let weights = Weights::from_bytes(bytes, source_name)?;
        Self::load(backend, &weights, options, point)
    }

    /// [`SplitModel::from_bytes`] on a file.
    pub fn from_file(
        backend: B,
        path: impl AsRef<Path>,
        options: &VitOptions,
        point: Option<usize>,
    ) -> Result<Self, SplitLoadError> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let size = std::fs::metadata(path)
            .map_err(|source| WeightsError::Io {
                path: shown.clone(),
                source,
            })?
            .len();
        if size > crate::weights::MAX_WEIGHTS_BYTES {
            return Err(WeightsError::TooLarge { path: shown, size }.into());
        }
        let bytes = std::fs::read(path).map_err(|source| WeightsError::Io {
            path: shown.clone(),
            source,
        })?;
        Self::from_bytes(backend, bytes, &shown, options, point)
    }

    /// The split point (blocks on the device).
    pub fn point(&self) -> usize {
        self.point
    }

    /// Whether a bottleneck sits at the cut.
    pub fn has_bottleneck(&self) -> bool {
        self.bottleneck.is_some()
    }

    /// The bottleneck, if any.
    pub fn bottleneck(&self) -> Option<&Bottleneck<B>> {
        self.bottleneck.as_ref()
    }

    /// The whole model.
    pub fn vit(&self) -> &Arc<Vit<B>> {
        &self.vit
    }

    /// The shape of what [`SplitModel::head`] returns for `batch` images: `[batch, N,
    /// r]` with a bottleneck, `[batch, N, D]` without.
    pub fn code_shape(&self, batch: usize) -> Vec<usize> {
        let cfg = self.vit.config();
        let channels = self
            .bottleneck
            .as_ref()
            .map_or(cfg.embed_dim, Bottleneck::code_channels);
        vec![batch, cfg.num_tokens(), channels]
    }

    /// The device side: `[B, C, H, W]` images -> the code that crosses the link.
    pub fn head(&self, input: &B::Tensor) -> Result<B::Tensor, SplitRunError> {
        self.vit.backend().scope(|| {
            let act = self.vit.head(input, self.point)?;
            Ok(match &self.bottleneck {
                Some(b) => b.encode(&act)?,
                None => act,
            })
        })
    }

    /// The edge side: the code -> logits `[B, classes]`.
    pub fn tail(&self, code: &B::Tensor) -> Result<B::Tensor, SplitRunError> {
        self.vit.backend().scope(|| {
            Ok(match &self.bottleneck {
                Some(b) => self.vit.tail(&b.decode(code)?, self.point)?,
                None => self.vit.tail(code, self.point)?,
            })
        })
    }

    /// `tail(head(x))`.
    pub fn forward(&self, input: &B::Tensor) -> Result<B::Tensor, SplitRunError> {
        self.vit.backend().scope(|| self.tail(&self.head(input)?))
    }

    /// Host in, host out: uploads `input`, runs [`SplitModel::forward`], reads the
    /// logits back.
    pub fn run(&self, input: &HostTensor) -> Result<HostTensor, SplitRunError> {
        let be = self.vit.backend();
        let logits = self.forward(&be.upload(input)?)?;
        Ok(be.readback(&logits)?)
    }

    /// Checks a code's shape before [`SplitModel::tail`] (for a receiver that wants
    /// to refuse a frame before running anything).
    pub fn check_code(&self, code: &B::Tensor) -> Result<(), SplitRunError> {
        let shape = code.shape();
        let expected = self.code_shape(shape.first().copied().unwrap_or(0));
        if shape != expected.as_slice() {
            return Err(CodeError::Shape {
                stage: "decoder",
                actual: shape.to_vec(),
                expected: format!("{expected:?}"),
            }
            .into());
        }
        Ok(())
    }
}
