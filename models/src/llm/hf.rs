//! Hugging Face checkpoint folders: `config.json` beside `model.safetensors` (Llama's
//! and Qwen2's tensor names: `model.embed_tokens.weight`,
//! `model.layers.{i}.self_attn.q_proj.weight`, ..., `lm_head.weight` unless tied).

use std::path::{Path, PathBuf};

use super::config::LlmConfig;
use super::LlmLoadError;
use crate::weights::Weights;

/// A checkpoint folder, read.
#[derive(Debug)]
pub struct HfCheckpoint {
    /// `config.json`.
    pub config: LlmConfig,
    /// `model.safetensors`.
    pub weights: Weights,
    /// The folder (its `tokenizer.json` and `tokenizer_config.json` hold the tokenizer
    /// and the chat template).
    pub dir: PathBuf,
}

/// Largest `config.json` read (1 MiB).
const MAX_CONFIG_BYTES: u64 = 1 << 20;

impl HfCheckpoint {
    /// Reads `dir/config.json` and `dir/model.safetensors`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, LlmLoadError> {
        let dir = dir.as_ref();
        let config_path = dir.join("config.json");
        let io = |path: &PathBuf, source| LlmLoadError::Io {
            path: path.display().to_string(),
            source,
        };
        let size = std::fs::metadata(&config_path)
            .map_err(|e| io(&config_path, e))?
            .len();
        if size > MAX_CONFIG_BYTES {
            return Err(LlmLoadError::Format(format!(
                "{} is {size} bytes: not a config.json",
                config_path.display()
            )));
        }
        let text = std::fs::read_to_string(&config_path).map_err(|e| io(&config_path, e))?;
        let config = LlmConfig::from_hf_json(&text)?;
        let model = dir.join("model.safetensors");
        if !model.is_file() {
            return Err(LlmLoadError::Format(format!(
                "{} has no model.safetensors (sharded checkpoints are not read yet)",
                dir.display()
            )));
        }
        let weights = Weights::from_file(&model)?;
        Ok(Self {
            config,
            weights,
            dir: dir.to_path_buf(),
        })
    }
}
