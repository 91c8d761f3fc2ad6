//! The network a device runs, on the CPU backend: a plain ViT/DeiT, which can be cut
//! at any split point, or a split model carrying a learned bottleneck, which is cut at
//! the bottleneck (the head runs its encoder and the tail its decoder).
//!
//! [`DeviceModel`] hides which one it is: the device asks for `head(x, at)`,
//! `tail(y, at)` and `run(x)`, and every mode computes the same function of the frame
//! (for a bottleneck model, `run` goes through the bottleneck too, as it was trained).

use std::sync::Arc;

use splitstream_models::backend::cpu::CpuBackend;
use splitstream_models::preprocess::EvalTransform;
use splitstream_models::split::{has_bottleneck, SplitMetadata, SplitModel, SplitRunError};
use splitstream_models::vit::{RunError, Vit, VitConfig, VitOptions};
use splitstream_models::weights::Weights;
use splitstream_models::{Backend, HostTensor};
use splitstream_transport::{ModelId, SplitAt};

/// A learned bottleneck a model carries: where, and how wide its code is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BottleneckInfo {
    /// The split point the encoder follows.
    pub point: usize,
    /// Channels of the code per token.
    pub rank: usize,
}

/// Why a model run failed.
#[derive(Debug, thiserror::Error)]
pub enum ModelRunError {
    /// The network failed (shapes, backend).
    #[error(transparent)]
    Vit(#[from] RunError),
    /// The split model (head + encoder, decoder + tail) failed.
    #[error(transparent)]
    Split(#[from] SplitRunError),
    /// The model cannot be cut there.
    #[error("cannot split at {at}: {why}")]
    NoSuchSplit {
        /// The split asked for.
        at: SplitAt,
        /// What the model offers instead.
        why: String,
    },
}

// Both boxed: the variants differ in size by hundreds of bytes (clippy's
// large_enum_variant), and a model is built once.
enum Net {
    Plain(Box<Vit<CpuBackend>>),
    /// A ViT with a learned bottleneck at its split point.
    Bottleneck(Box<SplitModel<CpuBackend>>),
}

/// The device's model (cheap to clone: shared).
#[derive(Clone)]
pub struct DeviceModel {
    net: Arc<Net>,
    /// The checkpoint's eval transform (its metadata `crop_pct`, else timm's default).
    transform: EvalTransform,
}

impl std::fmt::Debug for DeviceModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceModel")
            .field("depth", &self.config().depth)
            .field("bottleneck", &self.bottleneck())
            .finish()
    }
}

impl From<Vit<CpuBackend>> for DeviceModel {
    fn from(vit: Vit<CpuBackend>) -> Self {
        let transform = EvalTransform::deit(vit.config().image_size as u32);
        Self {
            net: Arc::new(Net::Plain(Box::new(vit))),
            transform,
        }
    }
}

impl DeviceModel {
    /// A model with a learned bottleneck (its head runs the encoder, its tail the
    /// decoder). Only for split models that have one ([`has_bottleneck`](splitstream_models::split::has_bottleneck)).
    fn from_split(model: SplitModel<CpuBackend>) -> Self {
        let transform = EvalTransform::deit(model.vit().config().image_size as u32);
        Self {
            net: Arc::new(Net::Bottleneck(Box::new(model))),
            transform,
        }
    }

    /// How frames become the model's input: the checkpoint's eval transform.
    pub fn transform(&self) -> &EvalTransform {
        &self.transform
    }

    /// Hyper-parameters of the network.
    pub fn config(&self) -> &VitConfig {
        match &*self.net {
            Net::Plain(v) => v.config(),
            Net::Bottleneck(m) => m.vit().config(),
        }
    }

    /// The learned bottleneck, if the model has one.
    pub fn bottleneck(&self) -> Option<BottleneckInfo> {
        match &*self.net {
            Net::Plain(_) => None,
            Net::Bottleneck(m) => m.bottleneck().map(|b| BottleneckInfo {
                point: m.point(),
                rank: b.code_channels(),
            }),
        }
    }

    /// The split a device asks for at `point`: the bottleneck when the model has one
    /// there, a plain split otherwise; an error when the model cannot be cut there.
    pub fn split_at(&self, point: usize) -> Result<SplitAt, ModelRunError> {
        let at = match self.bottleneck() {
            Some(b) if b.point == point => SplitAt::Bottleneck(point),
            _ => SplitAt::Point(point),
        };
        self.check(at)?;
        Ok(at)
    }

    /// Whether the model can be cut at `at`.
    pub fn check(&self, at: SplitAt) -> Result<(), ModelRunError> {
        let depth = self.config().depth;
        let why = match (self.bottleneck(), at) {
            (None, SplitAt::Point(k)) if k <= depth => return Ok(()),
            (None, SplitAt::Point(_)) => format!("the model has split points 0..={depth}"),
            (None, SplitAt::Bottleneck(_)) => "the model has no learned bottleneck".to_owned(),
            (Some(b), SplitAt::Bottleneck(k)) if k == b.point => return Ok(()),
            (Some(b), _) => format!(
                "the model was trained with its bottleneck at point {}: split there",
                b.point
            ),
        };
        Err(ModelRunError::NoSuchSplit { at, why })
    }

    /// The whole model on `[B, 3, S, S]`: logits `[B, classes]`.
    pub fn run(&self, input: &HostTensor) -> Result<HostTensor, ModelRunError> {
        match &*self.net {
            Net::Plain(v) => Ok(v.run(input)?),
            Net::Bottleneck(m) => Ok(m.run(input)?),
        }
    }

    /// The device's part at `at`: the activation `[B, N, D]` (or the bottleneck's code).
    pub fn head(&self, input: &HostTensor, at: SplitAt) -> Result<HostTensor, ModelRunError> {
        self.check(at)?;
        match &*self.net {
            Net::Plain(v) => {
                let be = v.backend();
                let x = be.upload(input).map_err(RunError::from)?;
                let y = v.head(&x, at.point())?;
                Ok(be.readback(&y).map_err(RunError::from)?)
            }
            Net::Bottleneck(m) => {
                let be = m.vit().backend();
                let x = be.upload(input).map_err(RunError::from)?;
                let y = m.head(&x)?;
                Ok(be.readback(&y).map_err(RunError::from)?)
            }
        }
    }

    /// The rest of the model from what [`DeviceModel::head`] gave: logits
    /// `[B, classes]` (the local fallback when the edge does not answer).
    pub fn tail(&self, head_out: &HostTensor, at: SplitAt) -> Result<HostTensor, ModelRunError> {
        self.check(at)?;
        match &*self.net {
            Net::Plain(v) => {
                let be = v.backend();
                let x = be.upload(head_out).map_err(RunError::from)?;
                let y = v.tail(&x, at.point())?;
                Ok(be.readback(&y).map_err(RunError::from)?)
            }
            Net::Bottleneck(m) => {
                let be = m.vit().backend();
                let x = be.upload(head_out).map_err(RunError::from)?;
                let y = m.tail(&x)?;
                Ok(be.readback(&y).map_err(RunError::from)?)
            }
        }
    }
}

/// Why the device's model did not load.
#[derive(Debug, thiserror::Error)]
#[error("cannot load the model from {source_name}: {detail}")]
pub struct LoadModelError {
    /// Where the weights came from.
    pub source_name: String,
    /// What was wrong.
    pub detail: String,
}

/// Loads a timm ViT (with its learned bottleneck when the file has `bottleneck.*`
/// tensors) from safetensors bytes on the CPU backend (`threads` workers, 0: one per
/// core), with its wire identity (`name` + SHA-256 of the bytes). The head count comes
/// from `num_heads`, else the file's metadata, else the D/64 default.
pub fn load_model(
    name: &str,
    bytes: Vec<u8>,
    source_name: &str,
    num_heads: Option<usize>,
    threads: usize,
) -> Result<(DeviceModel, ModelId), LoadModelError> {
    let err = |detail: String| LoadModelError {
        source_name: source_name.to_owned(),
        detail,
    };
    let id = ModelId::from_weights_bytes(name, &bytes);
    let weights = Weights::from_bytes(bytes, source_name).map_err(|e| err(e.to_string()))?;
    let metadata = SplitMetadata::from_weights(&weights).map_err(|e| err(e.to_string()))?;
    let options = VitOptions {
        num_heads: num_heads.or(metadata.num_heads),
        ..Default::default()
    };
    let backend = CpuBackend::new(threads).map_err(|e| err(e.to_string()))?;
    let crop_pct = weights.metadata_value("crop_pct").map(str::to_owned);
    let mut model = if has_bottleneck(&weights) {
        let split = SplitModel::load_with_metadata(backend, &weights, &options, None, &metadata)
            .map_err(|e| err(e.to_string()))?;
        DeviceModel::from_split(split)
    } else {
        DeviceModel::from(Vit::load(backend, &weights, &options).map_err(|e| err(e.to_string()))?)
    };
    model.transform =
        EvalTransform::for_checkpoint(model.config().image_size as u32, crop_pct.as_deref())
            .map_err(|e| err(e.to_string()))?;
    Ok((model, id))
}
