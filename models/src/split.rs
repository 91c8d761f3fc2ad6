//! What a checkpoint's metadata says about its split: the point a learned bottleneck
//! was made for, its rank, the head count; and whether the checkpoint carries a
//! bottleneck. Family-independent: the ViT's split model ([`crate::vit::SplitModel`])
//! and the loader ([`crate::net::load`]) read it.

use crate::weights::Weights;

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
