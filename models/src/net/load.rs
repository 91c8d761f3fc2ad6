//! The one loader: reads a checkpoint's metadata, picks the family, and builds it on a
//! backend behind [`SplitNet`].
//!
//! The family comes from the safetensors metadata key `family` (`vit`, ...) when the
//! export wrote one, else from the tensor names (timm's ViT has `patch_embed.proj.weight`
//! and `blocks.0.attn.qkv.weight`).

use std::sync::Arc;

use super::{Family, SplitNet};
use crate::backend::{Backend, BackendError};
use crate::femtodet::FemtoDet;
use crate::split::{MetadataError, SplitMetadata};
use crate::vit::{VitNet, VitOptions};
use crate::weights::{Weights, WeightsError};

/// What the weights cannot say, from the user (flags, config).
#[derive(Debug, Clone, Default)]
pub struct NetOptions {
    /// Attention heads (ViT), overriding the checkpoint's metadata `num_heads`.
    pub num_heads: Option<usize>,
    /// The architecture's name (timm's, for a ViT), checked against the weights.
    pub arch: Option<String>,
    /// The split point the device cuts at, by depth; `None`: the checkpoint's own
    /// (metadata `split`) or, without one, every point.
    pub split: Option<usize>,
}

/// Why a checkpoint did not load as a [`SplitNet`].
#[derive(Debug, thiserror::Error)]
pub enum LoadNetError {
    /// The checkpoint's metadata is unreadable.
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    /// The metadata names a family this build does not know.
    #[error("metadata family {name:?} is not one this build runs ({known})")]
    UnknownFamily {
        /// The name in the metadata.
        name: String,
        /// The families known.
        known: String,
    },
    /// Neither the metadata nor the tensor names tell the family.
    #[error(
        "cannot tell the model family from the tensor names (first: {first:?}); \
         write `family` into the checkpoint's metadata (known: {known})"
    )]
    NoFamily {
        /// The first tensor name, to show what the file holds.
        first: String,
        /// The families known.
        known: String,
    },
    /// The family's own loader refused the weights.
    #[error(transparent)]
    Family(Box<dyn std::error::Error + Send + Sync>),
    /// The file could not be read.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// The backend to build it on did not start.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

fn known() -> String {
    Family::ALL.map(Family::name).join(", ")
}

/// The family of a checkpoint (see the module docs).
pub fn detect_family(weights: &Weights) -> Result<Family, LoadNetError> {
    if let Some(name) = weights.metadata_value("family") {
        return Family::parse(name.trim()).ok_or_else(|| LoadNetError::UnknownFamily {
            name: name.to_owned(),
            known: known(),
        });
    }
    let has = |n: &str| weights.names().any(|m| m == n);
    // A block-sparse (pruned) qkv is stored as its kept blocks.
    let qkv = has("blocks.0.attn.qkv.weight") || has("blocks.0.attn.qkv.weight_blocks");
    if has("patch_embed.proj.weight") && qkv {
        return Ok(Family::Vit);
    }
    if has("backbone.conv1.conv.weight") && has("bbox_head.multi_level_conv_cls.0.weight") {
        return Ok(Family::FemtoDet);
    }
    Err(LoadNetError::NoFamily {
        first: weights.names().next().unwrap_or("").to_owned(),
        known: known(),
    })
}

/// Builds the checkpoint's family on `backend`.
pub fn load_net<B: Backend>(
    backend: B,
    weights: &Weights,
    options: &NetOptions,
) -> Result<Arc<dyn SplitNet>, LoadNetError> {
    let metadata = SplitMetadata::from_weights(weights)?;
    match detect_family(weights)? {
        Family::Vit => {
            let vit_options = VitOptions {
                arch: options.arch.clone(),
                num_heads: options.num_heads,
                eps: None,
            };
            let net = VitNet::load(backend, weights, &vit_options, options.split, &metadata)
                .map_err(|e| LoadNetError::Family(Box::new(e)))?;
            Ok(Arc::new(net))
        }
        Family::SpikePoint => crate::spikepoint::load_arc(backend, weights)
            .map_err(|e| LoadNetError::Family(Box::new(e))),
        Family::FemtoDet => {
            let net = FemtoDet::load(backend, weights, &metadata)
                .map_err(|e| LoadNetError::Family(Box::new(e)))?;
            Ok(Arc::new(net))
        }
        // An LLM needs its config.json or GGUF metadata beside the tensors: it loads from
        // its path (`llama::load_llm`), not from one safetensors file.
        Family::Llama => Err(LoadNetError::Family(
            "an LLM loads from its GGUF file or Hugging Face folder (llama::load_llm), not \
             from a single safetensors file"
                .into(),
        )),
    }
}
