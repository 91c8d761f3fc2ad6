//! The configuration of a Llama-family decoder, from a Hugging Face `config.json` or a
//! GGUF file's metadata (`llama.*`, `qwen2.*` keys).

use serde_json::Value;

use super::gguf::{GgufError, GgufFile};

/// Longest context a loaded model accepts (caps every KV cache allocation).
pub const MAX_CONTEXT: usize = 1 << 17;

/// Which architecture: they differ in the q/k/v biases and, in GGUF, in the Q/K rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LlmArch {
    /// Llama (SmolLM2, TinyLlama, ...): no biases.
    Llama,
    /// Qwen2: biases on q, k and v.
    Qwen2,
}

impl LlmArch {
    /// The name `config.json`'s `model_type` and GGUF's `general.architecture` use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
        }
    }

    /// The architecture of a name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "llama" => Some(Self::Llama),
            "qwen2" => Some(Self::Qwen2),
            _ => None,
        }
    }
}

/// Errors reading a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `config.json` is not JSON.
    #[error("config.json is not valid JSON: {0}")]
    Json(String),
    /// A required field is absent or of the wrong type.
    #[error("config field {0} is absent or not a valid number")]
    Field(String),
    /// The architecture is not one this build runs.
    #[error("model type {0:?} is not supported (llama and qwen2 are)")]
    Arch(String),
    /// Values that do not fit together.
    #[error("inconsistent configuration: {0}")]
    Invalid(String),
    /// GGUF metadata.
    #[error(transparent)]
    Gguf(#[from] GgufError),
}

/// A decoder's hyper-parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmConfig {
    /// The architecture.
    pub arch: LlmArch,
    /// Vocabulary size.
    pub vocab: usize,
    /// Hidden size `D`.
    pub hidden: usize,
    /// MLP width.
    pub intermediate: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (GQA).
    pub kv_heads: usize,
    /// Channels per head.
    pub head_dim: usize,
    /// RoPE base.
    pub rope_theta: f64,
    /// RMSNorm epsilon.
    pub rms_eps: f64,
    /// Longest context.
    pub max_positions: usize,
    /// Whether the output projection is the embedding table.
    pub tied_embeddings: bool,
    /// Whether q, k and v carry biases (Qwen2).
    pub qkv_bias: bool,
    /// Beginning-of-sequence token, if known.
    pub bos: Option<u32>,
    /// End-of-sequence token, if known.
    pub eos: Option<u32>,
}

impl LlmConfig {
    /// Checks that the sizes fit together and are within caps.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if [
            self.vocab,
            self.hidden,
            self.intermediate,
            self.layers,
            self.heads,
            self.kv_heads,
        ]
        .contains(&0)
        {
            return bad(format!("a size is zero: {self:?}"));
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return bad(format!(
                "{} query heads are not a multiple of {} key/value heads",
                self.heads, self.kv_heads
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return bad(format!("head_dim {} must be even", self.head_dim));
        }
        if self.max_positions == 0 || self.max_positions > MAX_CONTEXT {
            return bad(format!(
                "context {} outside 1..={MAX_CONTEXT}",
                self.max_positions
            ));
        }
        let big = [
            self.vocab,
            self.hidden,
            self.intermediate,
            self.heads * self.head_dim,
        ];
        if big.iter().any(|&v| v > 1 << 24) || self.layers > 1024 {
            return bad("sizes beyond any known model".into());
        }
        Ok(())
    }

    /// From a Hugging Face `config.json`.
    pub fn from_hf_json(text: &str) -> Result<Self, ConfigError> {
        let v: Value = serde_json::from_str(text).map_err(|e| ConfigError::Json(e.to_string()))?;
        let arch_name = v
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| ConfigError::Field("model_type".into()))?;
        let arch = LlmArch::parse(arch_name).ok_or_else(|| ConfigError::Arch(arch_name.into()))?;
        let int = |k: &str| {
            v.get(k)
                .and_then(Value::as_u64)
                .and_then(|x| usize::try_from(x).ok())
                .ok_or_else(|| ConfigError::Field(k.into()))
        };
        let float = |k: &str| v.get(k).and_then(Value::as_f64);
        let hidden = int("hidden_size")?;
        let heads = int("num_attention_heads")?;
        let token = |k: &str| {
            v.get(k)
                .and_then(Value::as_u64)
                .and_then(|x| u32::try_from(x).ok())
        };
        // transformers 5 nests the RoPE base in `rope_parameters`; 4 has `rope_theta`.
        let rope_theta = v
            .get("rope_parameters")
            .and_then(|r| r.get("rope_theta"))
            .and_then(Value::as_f64)
            .or_else(|| float("rope_theta"))
            .unwrap_or(10_000.0);
        let rope_type = v
            .get("rope_parameters")
            .or_else(|| v.get("rope_scaling"))
            .and_then(|r| r.get("rope_type").or_else(|| r.get("type")))
            .and_then(Value::as_str)
            .unwrap_or("default");
        if rope_type != "default" {
            return Err(ConfigError::Invalid(format!(
                "RoPE scaling {rope_type:?} is not supported (only the default)"
            )));
        }
        let c = Self {
            arch,
            vocab: int("vocab_size")?,
            hidden,
            intermediate: int("intermediate_size")?,
            layers: int("num_hidden_layers")?,
            heads,
            kv_heads: int("num_key_value_heads").unwrap_or(heads),
            head_dim: int("head_dim").unwrap_or(hidden / heads.max(1)),
            rope_theta,
            rms_eps: float("rms_norm_eps").unwrap_or(1e-6),
            max_positions: int("max_position_embeddings").unwrap_or(2048),
            tied_embeddings: v
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            qkv_bias: match arch {
                LlmArch::Qwen2 => true,
                LlmArch::Llama => v
                    .get("attention_bias")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            },
            bos: token("bos_token_id"),
            eos: token("eos_token_id"),
        };
        c.validate()?;
        Ok(c)
    }

    /// From a GGUF file's metadata; tied embeddings when it has no `output.weight`.
    pub fn from_gguf(f: &GgufFile) -> Result<Self, ConfigError> {
        let name = f.get_str("general.architecture").unwrap_or("");
        let arch = LlmArch::parse(name).ok_or_else(|| ConfigError::Arch(name.into()))?;
        let a = arch.name();
        let key = |k: &str| format!("{a}.{k}");
        let hidden = f.get_usize(&key("embedding_length"))?;
        let heads = f.get_usize(&key("attention.head_count"))?;
        let vocab = match f.get_usize(&key("vocab_size")) {
            Ok(v) => v,
            Err(_) => f
                .tensor("token_embd.weight")?
                .shape
                .first()
                .copied()
                .ok_or_else(|| ConfigError::Field("token_embd.weight shape".into()))?,
        };
        let float = |k: &str| f.get(&key(k)).and_then(|v| v.as_f64());
        let token = |k: &str| {
            f.get(k)
                .and_then(|v| v.as_u64())
                .and_then(|x| u32::try_from(x).ok())
        };
        let c = Self {
            arch,
            vocab,
            hidden,
            intermediate: f.get_usize(&key("feed_forward_length"))?,
            layers: f.get_usize(&key("block_count"))?,
            heads,
            kv_heads: f
                .get_usize(&key("attention.head_count_kv"))
                .unwrap_or(heads),
            head_dim: f
                .get_usize(&key("attention.key_length"))
                .or_else(|_| f.get_usize(&key("rope.dimension_count")))
                .unwrap_or(hidden / heads.max(1)),
            rope_theta: float("rope.freq_base").unwrap_or(10_000.0),
            rms_eps: float("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
            max_positions: f.get_usize(&key("context_length")).unwrap_or(2048),
            tied_embeddings: !f.tensors().contains_key("output.weight"),
            qkv_bias: f.tensors().contains_key("blk.0.attn_q.bias"),
            bos: token("tokenizer.ggml.bos_token_id"),
            eos: token("tokenizer.ggml.eos_token_id"),
        };
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_transformers_5_config() {
        let c = LlmConfig::from_hf_json(
            r#"{"model_type":"qwen2","vocab_size":1024,"hidden_size":192,
            "intermediate_size":512,"num_hidden_layers":3,"num_attention_heads":6,
            "num_key_value_heads":2,"rms_norm_eps":1e-6,"max_position_embeddings":512,
            "rope_parameters":{"rope_theta":1000000.0,"rope_type":"default"},
            "tie_word_embeddings":false}"#,
        )
        .unwrap();
        assert_eq!(c.arch, LlmArch::Qwen2);
        assert_eq!(c.head_dim, 32);
        assert!(c.qkv_bias);
        assert_eq!(c.rope_theta, 1e6);
    }

    #[test]
    fn refuses_bad_configs() {
        assert!(LlmConfig::from_hf_json("{").is_err());
        assert!(LlmConfig::from_hf_json(r#"{"model_type":"gpt2"}"#).is_err());
        let bad_heads = r#"{"model_type":"llama","vocab_size":10,"hidden_size":12,
            "intermediate_size":8,"num_hidden_layers":1,"num_attention_heads":3,
            "num_key_value_heads":2}"#;
        assert!(matches!(
            LlmConfig::from_hf_json(bad_heads),
            Err(ConfigError::Invalid(_))
        ));
    }
}
