//! Llama and Qwen2 decoders (RMSNorm, rotary position embedding in the rotate-half
//! form, grouped-query attention, SwiGLU; Qwen2 adds q/k/v biases) on the
//! [`Backend`] seam, as Hugging Face transformers computes them, and their
//! [`SplitNet`]: the device runs the embedding and layers `[0, k)`, the edge layers
//! `[k, L)`, the final norm and the output projection.
//!
//! - **Weights** come from [`LlmWeights`]: a Hugging Face folder (f32, prepared as the
//!   backend's dense layers) or a GGUF file, whose quantized matrices stay quantized
//!   ([`QuantMatrix`], dequantized block by block inside the product; the activations
//!   cross to the host for it, which on the CPU backend is a copy).
//! - **State**: a session's [`LlmState`] holds one [`KvCache`] per layer, created when
//!   that layer first runs, so the device's state holds its layers' caches and the
//!   edge's its own. Positions continue from what the caches hold.
//! - **Split points** `layer{k}`, `1 <= k < L`: the hidden state after `k` layers,
//!   `[1, D]` per position (a prefill sends `[T, D]`).
//! - **Input**: token ids `[B, T]` as f32 (ids below 2^24 are exact).

use std::ops::Range;

use crate::backend::{Activation, Backend, BackendError, BinaryOp, DeviceTensor, KvCache};
use crate::llm::config::LlmConfig;
use crate::llm::quant::{QuantError, QuantMatrix};
pub use crate::llm::sample::argmax;
use crate::llm::{LlmLoadError, LlmWeights, Matrix};
use crate::net::{Family, InputSpec, NetError, NetState, Output, OutputKind, SplitNet, SplitPoint};
use crate::tensor::HostTensor;

/// Default context when the caller gives none: 1,024 positions (each position costs
/// `2 * layers * kv_heads * head_dim * 4` bytes of KV cache).
pub const DEFAULT_CONTEXT: usize = 1024;

/// Errors running a decoder.
#[derive(Debug, thiserror::Error)]
pub enum LlamaError {
    /// A backend op failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A quantized product failed.
    #[error(transparent)]
    Quant(#[from] QuantError),
    /// The input is not what the model takes.
    #[error("{0}")]
    Input(String),
    /// The session's KV cache is full or inconsistent.
    #[error("{0}")]
    Cache(String),
}

/// A projection, dense on the backend or quantized on the host.
enum Proj<B: Backend> {
    Dense(B::Linear),
    Quant {
        w: QuantMatrix,
        bias: Option<Vec<f32>>,
    },
}

impl<B: Backend> Proj<B> {
    fn new(be: &B, m: Matrix, bias: Option<HostTensor>) -> Result<Self, LlmLoadError> {
        match m {
            Matrix::Dense(w) => Ok(Self::Dense(
                be.prepare_linear(&w, bias.as_ref())
                    .map_err(|e| LlmLoadError::Format(e.to_string()))?,
            )),
            Matrix::Quant(w) => Ok(Self::Quant {
                w,
                bias: bias.map(HostTensor::into_data),
            }),
        }
    }

    fn apply(&self, be: &B, x: &B::Tensor, act: Activation) -> Result<B::Tensor, LlamaError> {
        match self {
            Self::Dense(l) => Ok(be.linear(x, l, act)?),
            Self::Quant { w, bias } => {
                let host = be.readback(x)?;
                let shape = host.shape();
                let [rows, cols] = w.shape();
                if shape.last() != Some(&cols) {
                    return Err(LlamaError::Input(format!(
                        "a [{rows}, {cols}] projection cannot take {shape:?}"
                    )));
                }
                let n = host.numel() / cols.max(1);
                let mut y = w.matmul(host.data(), n)?;
                if let Some(b) = bias {
                    for row in y.chunks_exact_mut(rows) {
                        row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
                    }
                }
                let mut out_shape = shape.to_vec();
                if let Some(last) = out_shape.last_mut() {
                    *last = rows;
                }
                let t =
                    HostTensor::new(out_shape, y).map_err(|e| LlamaError::Input(e.to_string()))?;
                let t = be.upload(&t)?;
                if act == Activation::Identity {
                    Ok(t)
                } else {
                    Ok(be.activate(&t, act)?)
                }
            }
        }
    }
}

enum Embedding<B: Backend> {
    Dense(B::Tensor),
    Quant(QuantMatrix),
}

struct Layer<B: Backend> {
    attn_norm: B::Tensor,
    ffn_norm: B::Tensor,
    q: Proj<B>,
    k: Proj<B>,
    v: Proj<B>,
    o: Proj<B>,
    gate: Proj<B>,
    up: Proj<B>,
    down: Proj<B>,
}

/// A session's KV caches, one per layer, created as the layers first run.
pub struct LlmState<B: Backend> {
    caches: Vec<Option<KvCache<B>>>,
    batch: Option<usize>,
    capacity: usize,
}

impl<B: Backend> LlmState<B> {
    /// Positions cached by layer `layer` (0 if it has not run).
    pub fn len_at(&self, layer: usize) -> usize {
        self.caches
            .get(layer)
            .and_then(Option::as_ref)
            .map_or(0, KvCache::len)
    }

    /// Bytes its caches hold now.
    pub fn bytes(&self) -> usize {
        self.caches.iter().flatten().map(KvCache::bytes).sum()
    }

    /// Forgets every position (a new conversation).
    pub fn clear(&mut self) {
        self.caches.iter_mut().for_each(|c| *c = None);
        self.batch = None;
    }
}

impl<B: Backend> NetState for LlmState<B> {
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    /// The positions its layers hold (every layer that has run holds the same number;
    /// the device's state holds layers `[0, k)`, the edge's `[k, L)`).
    fn positions(&self) -> Option<usize> {
        Some(
            self.caches
                .iter()
                .flatten()
                .map(KvCache::len)
                .max()
                .unwrap_or(0),
        )
    }

    fn reset(&mut self) {
        self.clear();
    }
}

/// A Llama or Qwen2 decoder on backend `B`.
pub struct LlamaNet<B: Backend> {
    be: B,
    config: LlmConfig,
    context: usize,
    embed: Embedding<B>,
    layers: Vec<Layer<B>>,
    norm: B::Tensor,
    lm_head: Proj<B>,
    inv_freq: Vec<f32>,
    input: InputSpec,
    points: Vec<SplitPoint>,
    quantized: bool,
}

fn fmt_err(e: impl std::fmt::Display) -> LlmLoadError {
    LlmLoadError::Format(e.to_string())
}

impl<B: Backend> LlamaNet<B> {
    /// Builds the decoder from `weights`, with KV caches of `context` positions (at
    /// most the model's own; `None`: [`DEFAULT_CONTEXT`]).
    pub fn load(be: B, weights: &LlmWeights, context: Option<usize>) -> Result<Self, LlmLoadError> {
        let c = weights.config().clone();
        let context = context
            .unwrap_or(DEFAULT_CONTEXT)
            .min(c.max_positions)
            .max(1);
        let (d, hd) = (c.hidden, c.head_dim);
        let up = |t: HostTensor| be.upload(&t).map_err(fmt_err);
        let embed_m = weights.matrix("model.embed_tokens.weight", [c.vocab, d])?;
        let mut quantized = matches!(embed_m, Matrix::Quant(_));
        let lm_head = if weights.has("lm_head.weight") {
            weights.matrix("lm_head.weight", [c.vocab, d])?
        } else if c.tied_embeddings || matches!(weights, LlmWeights::Gguf { .. }) {
            embed_m.clone()
        } else {
            return Err(LlmLoadError::Format(
                "no lm_head.weight and tie_word_embeddings is false".into(),
            ));
        };
        let embed = match embed_m {
            Matrix::Dense(t) => Embedding::Dense(up(t)?),
            Matrix::Quant(q) => Embedding::Quant(q),
        };
        let mut proj = |name: String, shape: [usize; 2], bias: bool| {
            let m = weights.matrix(&format!("{name}.weight"), shape)?;
            quantized |= matches!(m, Matrix::Quant(_));
            let b = if bias {
                Some(weights.vector(&format!("{name}.bias"), shape[0])?)
            } else {
                None
            };
            Proj::new(&be, m, b)
        };
        let mut layers = Vec::with_capacity(c.layers);
        for i in 0..c.layers {
            let p = format!("model.layers.{i}");
            let (qd, kvd) = (c.heads * hd, c.kv_heads * hd);
            layers.push(Layer {
                q: proj(format!("{p}.self_attn.q_proj"), [qd, d], c.qkv_bias)?,
                k: proj(format!("{p}.self_attn.k_proj"), [kvd, d], c.qkv_bias)?,
                v: proj(format!("{p}.self_attn.v_proj"), [kvd, d], c.qkv_bias)?,
                o: proj(format!("{p}.self_attn.o_proj"), [d, qd], false)?,
                gate: proj(format!("{p}.mlp.gate_proj"), [c.intermediate, d], false)?,
                up: proj(format!("{p}.mlp.up_proj"), [c.intermediate, d], false)?,
                down: proj(format!("{p}.mlp.down_proj"), [d, c.intermediate], false)?,
                attn_norm: up(weights.vector(&format!("{p}.input_layernorm.weight"), d)?)?,
                ffn_norm: up(weights.vector(&format!("{p}.post_attention_layernorm.weight"), d)?)?,
            });
        }
        let lm_head = {
            quantized |= matches!(lm_head, Matrix::Quant(_));
            Proj::new(&be, lm_head, None)?
        };
        let norm = up(weights.vector("model.norm.weight", d)?)?;
        weights.check_all_used()?;
        // Hugging Face's default RoPE: inv_freq = 1 / theta^(2i / hd), in f32.
        let inv_freq = (0..hd / 2)
            .map(|i| (1.0 / c.rope_theta.powf(2.0 * i as f64 / hd as f64)) as f32)
            .collect();
        let points = (1..c.layers)
            .map(|k| SplitPoint {
                name: format!("layer{k}"),
                depth: k,
                shape: vec![1, d],
                bottleneck: None,
            })
            .collect();
        Ok(Self {
            input: InputSpec::Tokens {
                vocab: c.vocab,
                max_len: context,
            },
            be,
            config: c,
            context,
            embed,
            layers,
            norm,
            lm_head,
            inv_freq,
            points,
            quantized,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LlmConfig {
        &self.config
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.be
    }

    /// Positions a session can hold.
    pub fn context(&self) -> usize {
        self.context
    }

    /// A fresh session state.
    pub fn state(&self) -> LlmState<B> {
        LlmState {
            caches: (0..self.config.layers).map(|_| None).collect(),
            batch: None,
            capacity: self.context,
        }
    }

    /// The embeddings of `ids` (`batch` rows of equal length): `[B, T, D]`.
    pub fn embed(&self, ids: &[u32], batch: usize) -> Result<B::Tensor, LlamaError> {
        let d = self.config.hidden;
        if batch == 0 || ids.is_empty() || !ids.len().is_multiple_of(batch) {
            return Err(LlamaError::Input(format!(
                "{} ids do not make {batch} rows",
                ids.len()
            )));
        }
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= self.config.vocab) {
            return Err(LlamaError::Input(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.config.vocab
            )));
        }
        let t = ids.len() / batch;
        let flat = match &self.embed {
            Embedding::Dense(table) => self.be.embedding(table, ids)?,
            Embedding::Quant(q) => {
                let rows = HostTensor::new([ids.len(), d], q.gather_rows(ids)?)
                    .map_err(|e| LlamaError::Input(e.to_string()))?;
                self.be.upload(&rows)?
            }
        };
        Ok(self.be.reshape(flat, &[batch, t, d])?)
    }

    fn rope_tables(&self, offset: usize, n: usize) -> Result<(B::Tensor, B::Tensor), LlamaError> {
        let hd = self.config.head_dim;
        let mut cos = Vec::with_capacity(n * hd);
        let mut sin = Vec::with_capacity(n * hd);
        for p in offset..offset + n {
            for i in 0..hd {
                let angle = p as f32 * self.inv_freq[i % (hd / 2)];
                cos.push(f64::from(angle).cos() as f32);
                sin.push(f64::from(angle).sin() as f32);
            }
        }
        let t = |v| HostTensor::new([n, hd], v).map_err(|e| LlamaError::Input(e.to_string()));
        Ok((self.be.upload(&t(cos)?)?, self.be.upload(&t(sin)?)?))
    }

    /// Runs layers `range` on `x` `[B, T, D]`, appending to `state`'s caches.
    pub fn layers(
        &self,
        x: B::Tensor,
        range: Range<usize>,
        state: &mut LlmState<B>,
    ) -> Result<B::Tensor, LlamaError> {
        let c = &self.config;
        let &[batch, n, d] = x.shape() else {
            return Err(LlamaError::Input(format!(
                "hidden states must be [B, T, D], got {:?}",
                x.shape()
            )));
        };
        if d != c.hidden || range.end > c.layers || range.start > range.end {
            return Err(LlamaError::Input(format!(
                "layers {range:?} of {} on width {d} (model width {})",
                c.layers, c.hidden
            )));
        }
        if range.is_empty() {
            return Ok(x);
        }
        match state.batch {
            Some(b) if b != batch => {
                return Err(LlamaError::Cache(format!(
                    "the session holds {b} sequences, this step has {batch}"
                )))
            }
            _ => state.batch = Some(batch),
        }
        let offset = state.len_at(range.start);
        if range.clone().any(|l| state.len_at(l) != offset) {
            return Err(LlamaError::Cache(
                "the session's layers hold different numbers of positions".into(),
            ));
        }
        if offset + n > state.capacity {
            return Err(LlamaError::Cache(format!(
                "{offset} positions cached + {n} new exceed the context of {}",
                state.capacity
            )));
        }
        let be = &self.be;
        let (cos, sin) = self.rope_tables(offset, n)?;
        let (hd, eps) = (c.head_dim, c.rms_eps as f32);
        let scale = 1.0 / (hd as f32).sqrt();
        let mut x = x;
        for l in range {
            let layer = &self.layers[l];
            let cache = match &mut state.caches[l] {
                Some(cache) => cache,
                slot => slot.insert(KvCache::new(be, batch, state.capacity, c.kv_heads, hd)?),
            };
            let h = be.rms_norm(&x, &layer.attn_norm, eps)?;
            let q = layer.q.apply(be, &h, Activation::Identity)?;
            let k = layer.k.apply(be, &h, Activation::Identity)?;
            let v = layer.v.apply(be, &h, Activation::Identity)?;
            let q = be.rope(&be.reshape(q, &[batch, n, c.heads, hd])?, &cos, &sin)?;
            let k = be.rope(&be.reshape(k, &[batch, n, c.kv_heads, hd])?, &cos, &sin)?;
            let v = be.reshape(v, &[batch, n, c.kv_heads, hd])?;
            cache.append(be, &k, &v)?;
            let a = cache.attend(be, &q, scale)?;
            let a = layer.o.apply(be, &a, Activation::Identity)?;
            x = be.add(&x, &a)?;
            let h = be.rms_norm(&x, &layer.ffn_norm, eps)?;
            let g = layer.gate.apply(be, &h, Activation::Silu)?;
            let u = layer.up.apply(be, &h, Activation::Identity)?;
            let m = be.binary(&g, &u, BinaryOp::Mul)?;
            let m = layer.down.apply(be, &m, Activation::Identity)?;
            x = be.add(&x, &m)?;
        }
        Ok(x)
    }

    /// The final norm: `[B, T, D]` -> `[B, T, D]`.
    pub fn final_norm(&self, x: &B::Tensor) -> Result<B::Tensor, LlamaError> {
        Ok(self
            .be
            .rms_norm(x, &self.norm, self.config.rms_eps as f32)?)
    }

    /// The output projection of normed states: `[B, T, D]` -> `[B, T, V]`.
    pub fn project(&self, x: &B::Tensor) -> Result<B::Tensor, LlamaError> {
        self.lm_head.apply(&self.be, x, Activation::Identity)
    }

    /// Logits at every position of `ids` (`batch` rows) after what `state` holds:
    /// `[B, T, V]`.
    pub fn logits(
        &self,
        ids: &[u32],
        batch: usize,
        state: &mut LlmState<B>,
    ) -> Result<HostTensor, LlamaError> {
        self.be.scope(|| {
            let x = self.embed(ids, batch)?;
            let x = self.layers(x, 0..self.config.layers, state)?;
            let y = self.project(&self.final_norm(&x)?)?;
            Ok(self.be.readback(&y)?)
        })
    }

    /// The hidden state after the embedding and after every layer, the last one after
    /// the final norm (transformers' `output_hidden_states`), then the logits: `L + 2`
    /// tensors. A fresh cache.
    pub fn trace(&self, ids: &[u32], batch: usize) -> Result<Vec<HostTensor>, LlamaError> {
        let mut state = self.state();
        let mut x = self.embed(ids, batch)?;
        let mut out = vec![self.be.readback(&x)?];
        for l in 0..self.config.layers {
            x = self.layers(x, l..l + 1, &mut state)?;
            if l + 1 < self.config.layers {
                out.push(self.be.readback(&x)?);
            }
        }
        let x = self.final_norm(&x)?;
        out.push(self.be.readback(&x)?);
        out.push(self.be.readback(&self.project(&x)?)?);
        Ok(out)
    }

    /// The device's part: hidden state after `k` layers of `ids`, continuing `state`.
    pub fn head_hidden(
        &self,
        ids: &[u32],
        batch: usize,
        k: usize,
        state: &mut LlmState<B>,
    ) -> Result<HostTensor, LlamaError> {
        self.be.scope(|| {
            let x = self.embed(ids, batch)?;
            let x = self.layers(x, 0..k, state)?;
            Ok(self.be.readback(&x)?)
        })
    }

    /// The edge's part: logits at every position from the hidden state after `k`
    /// layers, continuing `state`.
    pub fn tail_logits(
        &self,
        h: &HostTensor,
        k: usize,
        state: &mut LlmState<B>,
    ) -> Result<HostTensor, LlamaError> {
        self.be.scope(|| {
            let x = self.be.upload(h)?;
            let x = self.layers(x, k..self.config.layers, state)?;
            let y = self.project(&self.final_norm(&x)?)?;
            Ok(self.be.readback(&y)?)
        })
    }

    /// The edge's part for several sessions at once, one new position each (decode
    /// steps of many conversations, continuous batching): `hs[i]` is session `i`'s
    /// hidden state after `k` layers (`D` values), `states[i]` its KV caches, each at
    /// its own position. The projections and the MLP run once on the `[N, 1, D]`
    /// batch; the rotary embedding, the cache append and the attention run per session.
    /// Returns the next-token logits `[N, V]`.
    pub fn tail_decode_batch(
        &self,
        hs: &[&HostTensor],
        k: usize,
        states: &mut [&mut LlmState<B>],
    ) -> Result<HostTensor, LlamaError> {
        let c = &self.config;
        let (n, d, hd) = (hs.len(), c.hidden, c.head_dim);
        if n == 0 || n != states.len() || k > c.layers {
            return Err(LlamaError::Input(format!(
                "{n} hidden states for {} sessions at layer {k} of {}",
                states.len(),
                c.layers
            )));
        }
        let mut data = Vec::with_capacity(n * d);
        for h in hs {
            if h.numel() != d {
                return Err(LlamaError::Input(format!(
                    "a batched decode step takes one position of width {d}, got {:?}",
                    h.shape()
                )));
            }
            data.extend_from_slice(h.data());
        }
        let mut offsets = Vec::with_capacity(n);
        for s in states.iter() {
            if s.batch.is_some_and(|b| b != 1) {
                return Err(LlamaError::Cache(
                    "a batched decode step takes sessions of one sequence".into(),
                ));
            }
            let offset = s.len_at(k);
            if (k..c.layers).any(|l| s.len_at(l) != offset) {
                return Err(LlamaError::Cache(
                    "the session's layers hold different numbers of positions".into(),
                ));
            }
            if offset + 1 > s.capacity {
                return Err(LlamaError::Cache(format!(
                    "{offset} positions cached + 1 new exceed the context of {}",
                    s.capacity
                )));
            }
            offsets.push(offset);
        }
        let be = &self.be;
        be.scope(|| {
            let tables = offsets
                .iter()
                .map(|&o| self.rope_tables(o, 1))
                .collect::<Result<Vec<_>, _>>()?;
            let x =
                HostTensor::new([n, 1, d], data).map_err(|e| LlamaError::Input(e.to_string()))?;
            let mut x = be.upload(&x)?;
            let eps = c.rms_eps as f32;
            let scale = 1.0 / (hd as f32).sqrt();
            for l in k..c.layers {
                let layer = &self.layers[l];
                let h = be.rms_norm(&x, &layer.attn_norm, eps)?;
                let q = layer.q.apply(be, &h, Activation::Identity)?;
                let kk = layer.k.apply(be, &h, Activation::Identity)?;
                let v = layer.v.apply(be, &h, Activation::Identity)?;
                let mut outs = Vec::with_capacity(n);
                for (i, s) in states.iter_mut().enumerate() {
                    let (cos, sin) = &tables[i];
                    let one = |t: &B::Tensor, heads: usize| -> Result<B::Tensor, LlamaError> {
                        Ok(be.reshape(be.slice(t, 0, i, 1)?, &[1, 1, heads, hd])?)
                    };
                    let qi = be.rope(&one(&q, c.heads)?, cos, sin)?;
                    let ki = be.rope(&one(&kk, c.kv_heads)?, cos, sin)?;
                    let vi = one(&v, c.kv_heads)?;
                    let capacity = s.capacity;
                    s.batch = Some(1);
                    let cache = match &mut s.caches[l] {
                        Some(cache) => cache,
                        slot => slot.insert(KvCache::new(be, 1, capacity, c.kv_heads, hd)?),
                    };
                    cache.append(be, &ki, &vi)?;
                    outs.push(cache.attend(be, &qi, scale)?);
                }
                let a = be.concat(&outs.iter().collect::<Vec<_>>(), 0)?;
                let a = layer.o.apply(be, &a, Activation::Identity)?;
                x = be.add(&x, &a)?;
                let h = be.rms_norm(&x, &layer.ffn_norm, eps)?;
                let g = layer.gate.apply(be, &h, Activation::Silu)?;
                let u = layer.up.apply(be, &h, Activation::Identity)?;
                let m = be.binary(&g, &u, BinaryOp::Mul)?;
                let m = layer.down.apply(be, &m, Activation::Identity)?;
                x = be.add(&x, &m)?;
            }
            let y = be.readback(&self.project(&self.final_norm(&x)?)?)?;
            let v = c.vocab;
            HostTensor::new([n, v], y.into_data()).map_err(|e| LlamaError::Input(e.to_string()))
        })
    }

    /// Generates `max_new` tokens after `prompt` (`batch` rows of equal length),
    /// choosing each with `choose` (row logits -> token), calling `on_token(step,
    /// tokens)` as each step's tokens come. Returns every step's logits `[B, N, V]`
    /// flattened. `stop` ends the loop early (batch 1: the end-of-sequence token).
    pub fn generate(
        &self,
        prompt: &[u32],
        batch: usize,
        max_new: usize,
        mut choose: impl FnMut(&[f32]) -> u32,
        mut on_token: impl FnMut(usize, &[u32]) -> bool,
    ) -> Result<Vec<f32>, LlamaError> {
        let v = self.config.vocab;
        let mut state = self.state();
        let t = prompt.len() / batch.max(1);
        if t + max_new > self.context + 1 {
            return Err(LlamaError::Cache(format!(
                "{t} prompt tokens + {max_new} new exceed the context of {}",
                self.context
            )));
        }
        let mut all = Vec::with_capacity(batch * max_new * v);
        let mut step_ids = prompt.to_vec();
        for step in 0..max_new {
            let logits = self.logits(&step_ids, batch, &mut state)?;
            let n = logits.shape().get(1).copied().unwrap_or(0);
            let mut next = Vec::with_capacity(batch);
            for b in 0..batch {
                let row = &logits.data()[(b * n + n - 1) * v..(b * n + n) * v];
                all.extend_from_slice(row);
                next.push(choose(row));
            }
            if !on_token(step, &next) {
                break;
            }
            step_ids = next;
        }
        // all was filled step-major; reorder to [B, N, V].
        let steps = all.len() / (batch * v).max(1);
        let mut out = vec![0f32; all.len()];
        for s in 0..steps {
            for b in 0..batch {
                let src = (s * batch + b) * v;
                let dst = (b * steps + s) * v;
                out[dst..dst + v].copy_from_slice(&all[src..src + v]);
            }
        }
        Ok(out)
    }

    fn ids_of(&self, x: &HostTensor) -> Result<(Vec<u32>, usize), NetError> {
        let &[batch, _] = x.shape() else {
            return Err(NetError::run(LlamaError::Input(format!(
                "token ids must be [B, T], got {:?}",
                x.shape()
            ))));
        };
        let ids = x
            .data()
            .iter()
            .map(|&v| {
                if v >= 0.0 && v.fract() == 0.0 && (v as usize) < self.config.vocab {
                    Ok(v as u32)
                } else {
                    Err(NetError::run(LlamaError::Input(format!(
                        "{v} is not a token id below {}",
                        self.config.vocab
                    ))))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((ids, batch))
    }

    fn with_state<R>(
        &self,
        state: Option<&mut dyn NetState>,
        f: impl FnOnce(&mut LlmState<B>) -> Result<R, LlamaError>,
    ) -> Result<R, NetError> {
        match state {
            Some(s) => {
                let s = s
                    .as_any_mut()
                    .downcast_mut::<LlmState<B>>()
                    .ok_or_else(|| {
                        NetError::State("the session state is not this model's KV cache".into())
                    })?;
                f(s).map_err(NetError::run)
            }
            None => f(&mut self.state()).map_err(NetError::run),
        }
    }
}

/// The last position's row of `[B, T, V]` logits: `[B, V]`.
pub fn last_position(logits: &HostTensor) -> Result<HostTensor, LlamaError> {
    let &[b, t, v] = logits.shape() else {
        return Err(LlamaError::Input(format!(
            "logits must be [B, T, V], got {:?}",
            logits.shape()
        )));
    };
    let data = (0..b)
        .flat_map(|i| {
            logits.data()[(i * t + t - 1) * v..(i * t + t) * v]
                .iter()
                .copied()
        })
        .collect();
    HostTensor::new([b, v], data).map_err(|e| LlamaError::Input(e.to_string()))
}

impl<B: Backend> SplitNet for LlamaNet<B> {
    fn family(&self) -> Family {
        Family::Llama
    }

    fn describe(&self) -> String {
        let c = &self.config;
        format!(
            "{} ({} layers, d {}, {} heads / {} kv, vocab {}, {}, context {}, backend {})",
            c.arch.name(),
            c.layers,
            c.hidden,
            c.heads,
            c.kv_heads,
            c.vocab,
            if self.quantized { "quantized" } else { "f32" },
            self.context,
            self.be.name()
        )
    }

    fn backend_name(&self) -> &'static str {
        self.be.name()
    }

    fn input(&self) -> &InputSpec {
        &self.input
    }

    fn output(&self) -> OutputKind {
        OutputKind::NextToken {
            vocab: self.config.vocab,
        }
    }

    fn split_points(&self) -> &[SplitPoint] {
        &self.points
    }

    fn state_size(&self) -> Option<usize> {
        let c = &self.config;
        Some(2 * c.layers * self.context * c.kv_heads * c.head_dim * std::mem::size_of::<f32>())
    }

    fn new_state(&self) -> Option<Box<dyn NetState>> {
        Some(Box::new(self.state()))
    }

    fn head(
        &self,
        x: &HostTensor,
        at: &str,
        state: Option<&mut dyn NetState>,
    ) -> Result<HostTensor, NetError> {
        let k = self.split_point(at)?.depth;
        let (ids, batch) = self.ids_of(x)?;
        self.with_state(state, |s| self.head_hidden(&ids, batch, k, s))
    }

    fn tail(
        &self,
        h: &HostTensor,
        at: &str,
        state: Option<&mut dyn NetState>,
    ) -> Result<Output, NetError> {
        let k = self.split_point(at)?.depth;
        self.with_state(state, |s| {
            Ok(Output::NextToken(last_position(
                &self.tail_logits(h, k, s)?,
            )?))
        })
    }

    fn tail_batch(
        &self,
        inputs: &[&HostTensor],
        at: &str,
        states: &mut [&mut dyn NetState],
    ) -> Result<Vec<Output>, NetError> {
        let k = self.split_point(at)?.depth;
        let d = self.config.hidden;
        // Only single-position steps share a batch; anything else runs alone.
        if inputs.len() < 2 || inputs.iter().any(|h| h.numel() != d) {
            if inputs.len() != states.len() {
                return Err(NetError::State(format!(
                    "{} inputs for {} states",
                    inputs.len(),
                    states.len()
                )));
            }
            return inputs
                .iter()
                .zip(states.iter_mut())
                .map(|(h, s)| self.tail(h, at, Some(&mut **s)))
                .collect();
        }
        let mut typed = Vec::with_capacity(states.len());
        for s in states.iter_mut() {
            typed.push(
                s.as_any_mut()
                    .downcast_mut::<LlmState<B>>()
                    .ok_or_else(|| {
                        NetError::State("the session state is not this model's KV cache".into())
                    })?,
            );
        }
        let logits = self
            .tail_decode_batch(inputs, k, &mut typed)
            .map_err(NetError::run)?;
        let v = self.config.vocab;
        logits
            .data()
            .chunks_exact(v)
            .map(|row| {
                HostTensor::new([1, v], row.to_vec())
                    .map(Output::NextToken)
                    .map_err(|e| NetError::run(LlamaError::Input(e.to_string())))
            })
            .collect()
    }

    fn forward(
        &self,
        x: &HostTensor,
        state: Option<&mut dyn NetState>,
    ) -> Result<Output, NetError> {
        let (ids, batch) = self.ids_of(x)?;
        self.with_state(state, |s| {
            Ok(Output::NextToken(last_position(
                &self.logits(&ids, batch, s)?,
            )?))
        })
    }
}

/// Loads a GGUF file or a Hugging Face folder as a [`SplitNet`] on `be`, with KV
/// caches of `context` positions (`None`: [`DEFAULT_CONTEXT`]).
pub fn load_llm<B: Backend>(
    be: B,
    path: impl AsRef<std::path::Path>,
    context: Option<usize>,
) -> Result<std::sync::Arc<dyn SplitNet>, LlmLoadError> {
    let weights = LlmWeights::open(path)?;
    Ok(std::sync::Arc::new(LlamaNet::load(be, &weights, context)?))
}
