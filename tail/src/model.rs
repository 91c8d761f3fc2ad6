//! The models an edge serves: loading a timm ViT from safetensors on the chosen backend,
//! and a backend-erased handle the tail worker runs batches on.

use std::path::Path;
use std::sync::Arc;

use splitstream_models::backend::cpu::CpuBackend;
use splitstream_models::backend::wgpu::{WgpuBackend, WgpuOptions};
use splitstream_models::vit::{RunError, Vit, VitConfig, VitOptions};
use splitstream_models::weights::Weights;
use splitstream_models::{Backend, HostTensor};
use splitstream_transport::ModelId;

use crate::config::BackendChoice;

/// Split name on the wire for offloaded frames (the edge runs the whole model on a JPEG).
pub const OFFLOAD_SPLIT: &str = "offload";
/// Codec scheme name on the wire for offloaded frames.
pub const JPEG_CODEC: &str = "jpeg";
/// Codec scheme names the edge decodes (frames are self-describing, the names only
/// let the handshake refuse what nobody implements).
pub const BOTTLENECK_CODECS: &[&str] = &[
    "lossless",
    "lossless-zstd",
    "u8",
    "u8-zstd",
    "u8-channel",
    "u4",
];

/// The wire name of split point `point` of a ViT: `embed` for 0, `block{k-1}` for `k`
/// (the models crate's [`splitstream_models::vit::SplitPoint`] names).
pub fn split_name(point: usize) -> String {
    match point {
        0 => "embed".to_owned(),
        k => format!("block{}", k - 1),
    }
}

/// The split point of a wire name (inverse of [`split_name`]).
pub fn parse_split_name(name: &str) -> Option<usize> {
    if name == "embed" {
        return Some(0);
    }
    let k: usize = name.strip_prefix("block")?.parse().ok()?;
    k.checked_add(1)
}

/// The head count a safetensors file declares in its `__metadata__` (`"num_heads"`),
/// which timm exports of non-standard sizes carry; `None` when absent or unreadable.
pub fn metadata_num_heads(bytes: &[u8]) -> Option<usize> {
    let len_bytes: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    let len = usize::try_from(u64::from_le_bytes(len_bytes)).ok()?;
    // safetensors caps its header at 100 MB; refuse before slicing anything larger.
    if len > 100 << 20 {
        return None;
    }
    let header = bytes.get(8..8usize.checked_add(len)?)?;
    let json: serde_json::Value = serde_json::from_slice(header).ok()?;
    json.get("__metadata__")?
        .get("num_heads")?
        .as_str()?
        .trim()
        .parse()
        .ok()
}

/// Errors loading a served model.
#[derive(Debug, thiserror::Error)]
pub enum LoadModelError {
    /// The weights file could not be read.
    #[error("cannot read weights {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The weights are not a ViT the models crate can build.
    #[error("cannot load {name} from {source_name}: {detail}")]
    Model {
        /// Model name.
        name: String,
        /// Where the weights came from.
        source_name: String,
        /// What was wrong.
        detail: String,
    },
    /// The GPU backend was asked for and could not start.
    #[error("backend wgpu for {name}: {detail} (use backend = \"cpu\" or \"auto\")")]
    Gpu {
        /// Model name.
        name: String,
        /// Cause.
        detail: String,
    },
}

/// A model ready to run batches, whatever its backend.
pub trait TailModel: Send + Sync {
    /// Hyper-parameters.
    fn config(&self) -> &VitConfig;
    /// Backend name (`cpu`, `wgpu`).
    fn backend_name(&self) -> &'static str;
    /// Runs from split `point` on activations `[B, N, D]` to logits `[B, classes]`.
    fn tail(&self, activation: &HostTensor, point: usize) -> Result<HostTensor, RunError>;
    /// Runs the whole model on images `[B, 3, S, S]` to logits `[B, classes]`.
    fn full(&self, input: &HostTensor) -> Result<HostTensor, RunError>;
}

impl<B: Backend> TailModel for Vit<B> {
    fn config(&self) -> &VitConfig {
        Vit::config(self)
    }
    fn backend_name(&self) -> &'static str {
        self.backend().name()
    }
    fn tail(&self, activation: &HostTensor, point: usize) -> Result<HostTensor, RunError> {
        let be = self.backend();
        let x = be.upload(activation)?;
        let y = Vit::tail(self, &x, point)?;
        Ok(be.readback(&y)?)
    }
    fn full(&self, input: &HostTensor) -> Result<HostTensor, RunError> {
        self.run(input)
    }
}

/// One model the edge serves.
#[derive(Clone)]
pub struct ServedModel {
    /// Its identity on the wire: name (devices ask for it) and weights hash.
    pub id: ModelId,
    /// The network.
    pub model: Arc<dyn TailModel>,
    /// Split points devices may use; empty: all of them.
    pub splits: Vec<usize>,
    /// Whether devices may offload whole frames.
    pub offload: bool,
}

impl std::fmt::Debug for ServedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedModel")
            .field("id", &self.id)
            .field("backend", &self.model.backend_name())
            .field("splits", &self.splits)
            .field("offload", &self.offload)
            .finish()
    }
}

impl ServedModel {
    /// Loads `name` from safetensors bytes (timm names) on `backend`. The head count
    /// comes from `num_heads`, else the file's metadata, else the architecture default.
    pub fn from_bytes(
        name: &str,
        bytes: Vec<u8>,
        source_name: &str,
        num_heads: Option<usize>,
        backend: BackendChoice,
        cpu_threads: usize,
    ) -> Result<Self, LoadModelError> {
        let id = ModelId::from_weights_bytes(name, &bytes);
        let options = VitOptions {
            num_heads: num_heads.or_else(|| metadata_num_heads(&bytes)),
            ..VitOptions::default()
        };
        let model_err = |detail: String| LoadModelError::Model {
            name: name.to_owned(),
            source_name: source_name.to_owned(),
            detail,
        };
        let weights =
            Weights::from_bytes(bytes, source_name).map_err(|e| model_err(e.to_string()))?;
        let gpu = match backend {
            BackendChoice::Cpu => None,
            BackendChoice::Wgpu => {
                Some(WgpuBackend::new(&WgpuOptions::default()).map_err(|e| {
                    LoadModelError::Gpu {
                        name: name.to_owned(),
                        detail: e.to_string(),
                    }
                })?)
            }
            BackendChoice::Auto => WgpuBackend::auto(&WgpuOptions::default()).unwrap_or_else(|e| {
                tracing::warn!("no GPU for {name} ({e}); running on the CPU");
                None
            }),
        };
        let model: Arc<dyn TailModel> = match gpu {
            Some(gpu) => {
                Arc::new(Vit::load(gpu, &weights, &options).map_err(|e| model_err(e.to_string()))?)
            }
            None => {
                let cpu = CpuBackend::new(cpu_threads).map_err(|e| model_err(e.to_string()))?;
                Arc::new(Vit::load(cpu, &weights, &options).map_err(|e| model_err(e.to_string()))?)
            }
        };
        Ok(Self {
            id,
            model,
            splits: Vec::new(),
            offload: true,
        })
    }

    /// Loads `name` from a safetensors file (see [`ServedModel::from_bytes`]).
    pub fn from_file(
        name: &str,
        path: &Path,
        num_heads: Option<usize>,
        backend: BackendChoice,
        cpu_threads: usize,
    ) -> Result<Self, LoadModelError> {
        let bytes = std::fs::read(path).map_err(|source| LoadModelError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_bytes(
            name,
            bytes,
            &path.display().to_string(),
            num_heads,
            backend,
            cpu_threads,
        )
    }

    /// The split points served (all of them when none were listed).
    pub fn served_splits(&self) -> Vec<usize> {
        let depth = self.model.config().depth;
        if self.splits.is_empty() {
            (0..=depth).collect()
        } else {
            self.splits
                .iter()
                .copied()
                .filter(|&k| k <= depth)
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_names_round_trip() {
        for k in 0..20 {
            assert_eq!(parse_split_name(&split_name(k)), Some(k));
        }
        assert_eq!(parse_split_name("blockx"), None);
        assert_eq!(parse_split_name("offload"), None);
    }

    #[test]
    fn metadata_head_count_is_read_and_garbage_is_none() {
        let header = br#"{"__metadata__":{"num_heads":"3"}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        assert_eq!(metadata_num_heads(&bytes), Some(3));
        assert_eq!(metadata_num_heads(&[1, 2, 3]), None);
        assert_eq!(metadata_num_heads(&u64::MAX.to_le_bytes()), None);
    }
}
