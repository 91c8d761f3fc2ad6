//! LPViT block pruning of a ViT: which layers prune, the block-sparse checkpoint they
//! are written to ([`write_block_sparse`]), and the training-free criterion that picks
//! the blocks ([`criterion`]).
//!
//! A pruned layer `X` is stored as `X.weight_block_mask` `[out / bo, in / bi]` (1.0
//! where a block is kept) and `X.weight_blocks` `[kept, bo, bi]` (the kept blocks in
//! row-major order of the mask) instead of `X.weight`; the metadata says
//! `block_sparse = "{bo}x{bi}"`. Every other tensor is copied unchanged.

pub mod criterion;

use std::collections::{BTreeMap, HashMap};

use crate::backend::block_sparse::BlockSparse;
use crate::tensor::HostTensor;
use crate::weights::{Weights, WeightsError};

/// Errors pruning or writing a pruned checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    /// A tensor could not be read.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// The weights or a mask do not fit the block size.
    #[error("{0}")]
    Shape(String),
    /// The checkpoint is already pruned, or holds no prunable layer.
    #[error("{0}")]
    Input(String),
    /// Serialising failed.
    #[error("cannot serialise the pruned checkpoint: {0}")]
    Serialise(String),
}

/// One linear layer LPViT prunes: `prefix` names it (`blocks.3.mlp.fc1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrunableLayer {
    /// The layer's name prefix; its weight is `{prefix}.weight`.
    pub prefix: String,
    /// Output features.
    pub outputs: usize,
    /// Input features.
    pub inputs: usize,
}

/// The ViT block layers (`qkv`, `proj`, `fc1`, `fc2` of every block) whose weights
/// split into `block` blocks, in block order. The patch embedding and the classifier
/// stay dense (the classifier's width is the class count, rarely a block multiple).
pub fn prunable_layers(weights: &Weights, block: [usize; 2]) -> Vec<PrunableLayer> {
    let mut layers = Vec::new();
    for i in 0.. {
        if weights.shape(&format!("blocks.{i}.norm1.weight")).is_none() {
            break;
        }
        for part in ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"] {
            let prefix = format!("blocks.{i}.{part}");
            if let Some(&[outputs, inputs]) = weights.shape(&format!("{prefix}.weight")) {
                if outputs % block[0] == 0 && inputs % block[1] == 0 {
                    layers.push(PrunableLayer {
                        prefix,
                        outputs,
                        inputs,
                    });
                }
            }
        }
    }
    layers
}

/// The checkpoint `weights` with each layer of `masks` (prefix -> block mask,
/// row-major over `[out / bo, in / bi]`) stored block-sparse, as safetensors bytes.
/// `metadata` is added to the file's own.
pub fn write_block_sparse(
    weights: &Weights,
    masks: &BTreeMap<String, Vec<bool>>,
    block: [usize; 2],
    metadata: &[(&str, String)],
) -> Result<Vec<u8>, PruneError> {
    if weights.metadata_value("block_sparse").is_some() {
        return Err(PruneError::Input(
            "this checkpoint is already block-sparse; prune its dense original".into(),
        ));
    }
    let mut tensors: Vec<(String, HostTensor)> = Vec::new();
    for name in weights.names() {
        let shape = weights.shape(name).unwrap_or(&[]).to_vec();
        let prefix = name.strip_suffix(".weight");
        if let Some(mask) = prefix.and_then(|p| masks.get(p)) {
            let dense = weights.get(name, &shape)?;
            let sparse = BlockSparse::from_dense(&dense, block, mask)
                .map_err(|e| PruneError::Shape(format!("{name}: {e}")))?;
            let (m, b) = sparse
                .to_mask_and_blocks()
                .map_err(|e| PruneError::Shape(format!("{name}: {e}")))?;
            let p = prefix.unwrap_or(name);
            tensors.push((format!("{p}.weight_block_mask"), m));
            tensors.push((format!("{p}.weight_blocks"), b));
        } else {
            tensors.push((name.to_string(), weights.get(name, &shape)?));
        }
    }
    for p in masks.keys() {
        if weights.shape(&format!("{p}.weight")).is_none() {
            return Err(PruneError::Input(format!("no layer {p}.weight to prune")));
        }
    }
    let mut meta: HashMap<String, String> = weights
        .metadata()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    meta.insert("block_sparse".into(), format!("{}x{}", block[0], block[1]));
    for (k, v) in metadata {
        meta.insert((*k).to_string(), v.clone());
    }
    serialise(&tensors, meta)
}

/// F32 safetensors bytes of `tensors` with `metadata`.
pub fn serialise(
    tensors: &[(String, HostTensor)],
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>, PruneError> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, t)| {
            let data = t.data().iter().flat_map(|v| v.to_le_bytes()).collect();
            (n.clone(), t.shape().to_vec(), data)
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(n, s, b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PruneError::Serialise(e.to_string()))?;
    safetensors::serialize(views, Some(metadata)).map_err(|e| PruneError::Serialise(e.to_string()))
}

/// The dense checkpoint with each layer of `masks` zeroed outside its kept blocks: the
/// reference a block-sparse checkpoint must compute.
pub fn write_masked_dense(
    weights: &Weights,
    masks: &BTreeMap<String, Vec<bool>>,
    block: [usize; 2],
) -> Result<Vec<u8>, PruneError> {
    let mut tensors = Vec::new();
    for name in weights.names() {
        let shape = weights.shape(name).unwrap_or(&[]).to_vec();
        let t = weights.get(name, &shape)?;
        let t = match name.strip_suffix(".weight").and_then(|p| masks.get(p)) {
            Some(mask) => BlockSparse::from_dense(&t, block, mask)
                .and_then(|s| s.to_dense())
                .map_err(|e| PruneError::Shape(format!("{name}: {e}")))?,
            None => t,
        };
        tensors.push((name.to_string(), t));
    }
    let meta = weights
        .metadata()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    serialise(&tensors, meta)
}
