//! Large language models: weights from GGUF files and Hugging Face folders, their
//! configuration, and GGML's block formats. The model itself (Llama, Qwen2) is
//! [`crate::llama`].
//!
//! [`LlmWeights`] gives the model its tensors by Hugging Face's names whatever the
//! source: a GGUF file's names are mapped (`blk.3.attn_q.weight` for
//! `model.layers.3.self_attn.q_proj.weight`), its Llama Q/K rows are put back in
//! rotate-half order (see [`unpermute_rows`]), and quantized matrices stay quantized
//! ([`Matrix::Quant`]).

pub mod chat;
pub mod config;
pub mod gguf;
pub mod hf;
pub mod quant;
pub mod sample;
pub mod split;
pub mod tokenizer;

use std::path::Path;

use config::{ConfigError, LlmArch, LlmConfig};
use gguf::{GgufError, GgufFile};
use hf::HfCheckpoint;
use quant::{GgmlType, QuantError, QuantMatrix};
use tokenizer::{GgufTokenizerData, Tokenizer, TokenizerError};

use crate::tensor::HostTensor;
use crate::weights::WeightsError;

/// Errors loading an LLM.
#[derive(Debug, thiserror::Error)]
pub enum LlmLoadError {
    /// A file could not be read.
    #[error("cannot read {path}")]
    Io {
        /// The path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The GGUF file.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The safetensors file.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// A quantized tensor.
    #[error(transparent)]
    Quant(#[from] QuantError),
    /// The tokenizer.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// Anything else about the files.
    #[error("{0}")]
    Format(String),
}

/// Largest `tokenizer_config.json` read for its chat template (4 MiB).
const MAX_TOKENIZER_CONFIG_BYTES: u64 = 4 << 20;

/// Text to token ids and back: the boundary the tokenizer (GGUF-embedded byte-level BPE,
/// or `tokenizer.json`) implements, so that `splitstream generate --prompt` and `chat`
/// need nothing else from it.
pub trait TextCodec: Send + Sync {
    /// The ids of `text` (no special tokens added: a chat template adds its own).
    fn encode(&self, text: &str) -> Result<Vec<u32>, Box<dyn std::error::Error + Send + Sync>>;

    /// The text of `ids`; a caller printing tokens as they come decodes the whole
    /// answer so far and prints what is new (a UTF-8 character may span tokens).
    fn decode(&self, ids: &[u32]) -> Result<String, Box<dyn std::error::Error + Send + Sync>>;
}

impl TextCodec for Tokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Tokenizer::encode(self, text))
    }

    fn decode(&self, ids: &[u32]) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Tokenizer::decode(self, ids, false))
    }
}

/// The `tokenizer.ggml.*` metadata of a GGUF file as [`GgufTokenizerData`]; `None`
/// when the file has no `tokenizer.ggml.tokens`.
pub fn gguf_tokenizer_data(file: &GgufFile) -> Result<Option<GgufTokenizerData>, LlmLoadError> {
    let Some(tokens) = file.get("tokenizer.ggml.tokens") else {
        return Ok(None);
    };
    let bad = |key: &str, what: &str| LlmLoadError::Format(format!("GGUF {key}: {what}"));
    let strings = |key: &str, v: &gguf::GgufValue| -> Result<Vec<String>, LlmLoadError> {
        v.as_array()
            .ok_or_else(|| bad(key, "not an array"))?
            .iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| bad(key, "an element is not a string"))
            })
            .collect()
    };
    let tokens = strings("tokenizer.ggml.tokens", tokens)?;
    let merges = match file.get("tokenizer.ggml.merges") {
        Some(m) => strings("tokenizer.ggml.merges", m)?,
        None => Vec::new(),
    };
    let token_types = match file.get("tokenizer.ggml.token_type") {
        Some(t) => t
            .as_array()
            .ok_or_else(|| bad("tokenizer.ggml.token_type", "not an array"))?
            .iter()
            .map(|v| match *v {
                gguf::GgufValue::I32(x) => Ok(x),
                _ => v
                    .as_u64()
                    .and_then(|x| i32::try_from(x).ok())
                    .ok_or_else(|| bad("tokenizer.ggml.token_type", "not an integer")),
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    let id = |key: &str| -> Result<Option<u32>, LlmLoadError> {
        file.get(key)
            .map(|v| {
                v.as_u64()
                    .and_then(|x| u32::try_from(x).ok())
                    .ok_or_else(|| bad(key, "not a token id"))
            })
            .transpose()
    };
    Ok(Some(GgufTokenizerData {
        model: file
            .get_str("tokenizer.ggml.model")
            .unwrap_or("gpt2")
            .to_owned(),
        pre: file.get_str("tokenizer.ggml.pre").map(str::to_owned),
        tokens,
        token_types,
        merges,
        bos: id("tokenizer.ggml.bos_token_id")?,
        eos: id("tokenizer.ggml.eos_token_id")?,
        unk: id("tokenizer.ggml.unknown_token_id")?,
        add_bos: matches!(
            file.get("tokenizer.ggml.add_bos_token"),
            Some(gguf::GgufValue::Bool(true))
        ),
    }))
}

/// A weight matrix `[out, in]` as the model takes it.
#[derive(Debug, Clone)]
pub enum Matrix {
    /// f32, for the backend's dense `linear`.
    Dense(HostTensor),
    /// Kept in its block format.
    Quant(QuantMatrix),
}

/// Where a model's tensors come from.
#[derive(Debug)]
pub enum LlmWeights {
    /// A Hugging Face folder.
    Hf(HfCheckpoint),
    /// A GGUF file, with its configuration.
    Gguf {
        /// From its metadata.
        config: LlmConfig,
        /// The mapped file.
        file: GgufFile,
    },
}

/// GGUF's name of a Hugging Face tensor name (Llama/Qwen2 layouts), `None` if unknown.
pub fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.into());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = rest.rsplit_once('.')?;
    let g = match module {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}.{kind}"))
}

/// The row order that undoes llama.cpp's Q/K permutation for `heads` heads of
/// `head_dim` rows: GGUF stores each head's rows interleaved (rotary pairs `(2i,
/// 2i+1)`), Hugging Face in halves (pairs `(i, i + hd/2)`), so HF row
/// `h*hd + half*hd/2 + i` is GGUF row `h*hd + 2i + half`.
pub fn unpermute_rows(heads: usize, head_dim: usize) -> Vec<usize> {
    let half = head_dim / 2;
    (0..heads * head_dim)
        .map(|r| {
            let (h, within) = (r / head_dim, r % head_dim);
            let (which, i) = (within / half, within % half);
            h * head_dim + 2 * i + which
        })
        .collect()
}

/// The inverse of [`unpermute_rows`]: what llama.cpp's converter does (tests build
/// GGUF files with it).
pub fn permute_rows(heads: usize, head_dim: usize) -> Vec<usize> {
    let un = unpermute_rows(heads, head_dim);
    let mut p = vec![0; un.len()];
    for (hf, &g) in un.iter().enumerate() {
        p[g] = hf;
    }
    p
}

fn reorder_rows(t: &HostTensor, perm: &[usize]) -> Result<HostTensor, LlmLoadError> {
    let cols = t.shape().get(1).copied().unwrap_or(0);
    let mut out = Vec::with_capacity(t.numel());
    for &p in perm {
        out.extend_from_slice(&t.data()[p * cols..(p + 1) * cols]);
    }
    HostTensor::new(t.shape().to_vec(), out).map_err(|e| LlmLoadError::Format(e.to_string()))
}

impl LlmWeights {
    /// A GGUF file (by its magic) or a Hugging Face folder (a directory, or a
    /// `.safetensors` file with `config.json` beside it).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, LlmLoadError> {
        let path = path.as_ref();
        if path.is_dir() {
            return Ok(Self::Hf(HfCheckpoint::open(path)?));
        }
        let mut magic = [0u8; 4];
        let read = std::fs::File::open(path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
            .map_err(|source| LlmLoadError::Io {
                path: path.display().to_string(),
                source,
            });
        if read.is_ok() && gguf::is_gguf(&magic) {
            let file = GgufFile::open(path)?;
            return Self::from_gguf(file);
        }
        match path.parent() {
            Some(dir) if dir.join("config.json").is_file() => {
                Ok(Self::Hf(HfCheckpoint::open(dir)?))
            }
            _ => {
                read?;
                Err(LlmLoadError::Format(format!(
                    "{} is neither a GGUF file nor a Hugging Face folder (config.json + \
                     model.safetensors)",
                    path.display()
                )))
            }
        }
    }

    /// A parsed GGUF file.
    pub fn from_gguf(file: GgufFile) -> Result<Self, LlmLoadError> {
        let config = LlmConfig::from_gguf(&file)?;
        Ok(Self::Gguf { config, file })
    }

    /// The GGUF file, when the weights come from one (its `tokenizer.ggml.*` metadata
    /// holds the tokenizer).
    pub fn gguf(&self) -> Option<&GgufFile> {
        match self {
            Self::Gguf { file, .. } => Some(file),
            Self::Hf(_) => None,
        }
    }

    /// The model's tokenizer: a GGUF file's `tokenizer.ggml.*` metadata, or a Hugging
    /// Face folder's `tokenizer.json` (bos/eos from `config.json`). `None` when the
    /// source has none.
    pub fn tokenizer(&self) -> Result<Option<Tokenizer>, LlmLoadError> {
        match self {
            Self::Gguf { file, .. } => match gguf_tokenizer_data(file)? {
                Some(data) => Ok(Some(Tokenizer::from_gguf(&data)?)),
                None => Ok(None),
            },
            Self::Hf(h) => {
                let path = h.dir.join("tokenizer.json");
                if !path.is_file() {
                    return Ok(None);
                }
                let tok = Tokenizer::from_file(&path)?;
                let bos = h.config.bos.or(tok.bos());
                let eos = h.config.eos.or(tok.eos());
                Ok(Some(tok.with_bos_eos(bos, eos)?))
            }
        }
    }

    /// The chat template's Jinja text: GGUF `tokenizer.chat_template`, or
    /// `chat_template` of a Hugging Face folder's `tokenizer_config.json`.
    pub fn chat_template(&self) -> Result<Option<String>, LlmLoadError> {
        match self {
            Self::Gguf { file, .. } => {
                Ok(file.get_str("tokenizer.chat_template").map(str::to_owned))
            }
            Self::Hf(h) => {
                let path = h.dir.join("tokenizer_config.json");
                let Ok(meta) = std::fs::metadata(&path) else {
                    return Ok(None);
                };
                if meta.len() > MAX_TOKENIZER_CONFIG_BYTES {
                    return Err(LlmLoadError::Format(format!(
                        "{} is {} bytes, more than {MAX_TOKENIZER_CONFIG_BYTES}",
                        path.display(),
                        meta.len()
                    )));
                }
                let bytes = std::fs::read(&path).map_err(|source| LlmLoadError::Io {
                    path: path.display().to_string(),
                    source,
                })?;
                let v: serde_json::Value = serde_json::from_slice(&bytes)
                    .map_err(|e| LlmLoadError::Format(format!("{}: {e}", path.display())))?;
                Ok(v["chat_template"].as_str().map(str::to_owned))
            }
        }
    }

    /// The configuration.
    pub fn config(&self) -> &LlmConfig {
        match self {
            Self::Hf(h) => &h.config,
            Self::Gguf { config, .. } => config,
        }
    }

    /// Whether a tensor of this (Hugging Face) name exists.
    pub fn has(&self, name: &str) -> bool {
        match self {
            Self::Hf(h) => h.weights.shape(name).is_some(),
            Self::Gguf { file, .. } => {
                gguf_name(name).is_some_and(|g| file.tensors().contains_key(&g))
            }
        }
    }

    /// A small tensor (norm weights, biases) as f32.
    pub fn vector(&self, name: &str, len: usize) -> Result<HostTensor, LlmLoadError> {
        match self {
            Self::Hf(h) => Ok(h.weights.get(name, &[len])?),
            Self::Gguf { file, config } => {
                let g = gguf_name(name).ok_or_else(|| GgufError::Missing(name.into()))?;
                let t = file.dense(&g, &[len])?;
                // q/k biases follow their rows' permutation.
                match rope_heads(config, name) {
                    Some(heads) => {
                        let perm = unpermute_rows(heads, config.head_dim);
                        let m = HostTensor::new([len, 1], t.into_data())
                            .map_err(|e| LlmLoadError::Format(e.to_string()))?;
                        Ok(reorder_rows(&m, &perm)?
                            .reshape([len])
                            .map_err(|e| LlmLoadError::Format(e.to_string()))?)
                    }
                    None => Ok(t),
                }
            }
        }
    }

    /// A weight matrix `[out, in]`, in rotate-half row order for q and k.
    pub fn matrix(&self, name: &str, shape: [usize; 2]) -> Result<Matrix, LlmLoadError> {
        match self {
            Self::Hf(h) => Ok(Matrix::Dense(h.weights.get(name, &shape)?)),
            Self::Gguf { file, config } => {
                let g = gguf_name(name).ok_or_else(|| GgufError::Missing(name.into()))?;
                let perm = rope_heads(config, name).map(|h| unpermute_rows(h, config.head_dim));
                if file.tensor(&g)?.ty == GgmlType::F32 {
                    let t = file.dense(&g, &shape)?;
                    return Ok(Matrix::Dense(match perm {
                        Some(p) => reorder_rows(&t, &p)?,
                        None => t,
                    }));
                }
                let m = file.matrix(&g, shape)?;
                Ok(Matrix::Quant(match perm {
                    Some(p) => m.permute_rows(&p)?,
                    None => m,
                }))
            }
        }
    }

    /// Checks that every tensor was taken (Hugging Face folders; a GGUF file's names
    /// are looked up, not recorded).
    pub fn check_all_used(&self) -> Result<(), LlmLoadError> {
        match self {
            Self::Hf(h) => Ok(h.weights.check_all_used()?),
            Self::Gguf { .. } => Ok(()),
        }
    }
}

/// For a GGUF Llama file, the head count of a q or k tensor (whose rows llama.cpp
/// permuted); `None` for every other tensor and for Qwen2 (converted unpermuted).
fn rope_heads(config: &LlmConfig, name: &str) -> Option<usize> {
    if config.arch != LlmArch::Llama {
        return None;
    }
    if name.contains("self_attn.q_proj.") {
        Some(config.heads)
    } else if name.contains("self_attn.k_proj.") {
        Some(config.kv_heads)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_gguf() {
        assert_eq!(
            gguf_name("model.layers.12.self_attn.k_proj.bias").as_deref(),
            Some("blk.12.attn_k.bias")
        );
        assert_eq!(
            gguf_name("model.layers.0.post_attention_layernorm.weight").as_deref(),
            Some("blk.0.ffn_norm.weight")
        );
        assert_eq!(gguf_name("model.layers.x.mlp.up_proj.weight"), None);
    }

    #[test]
    fn permutation_pairs_interleaved_rows_with_halves() {
        // One head of 4 rows: GGUF order [a0, b0, a1, b1] holds HF rows [a0, a1, b0, b1].
        assert_eq!(unpermute_rows(1, 4), [0, 2, 1, 3]);
        let p = permute_rows(2, 8);
        let u = unpermute_rows(2, 8);
        for i in 0..16 {
            assert_eq!(p[u[i]], i);
        }
    }
}
