//! Split LLM generation on the device: the embedding and layers `[0, k)` here, with
//! this device's own KV cache; the hidden states after layer `k` go to the edge (a
//! prefill sends every prompt position, a decode step one), which runs layers `[k, L)`
//! with the session's KV cache and answers the next token (greedy) or the logits
//! (sampling; the device draws with its own seeded sampler, see
//! `splitstream_models::llm::split`).
//!
//! Whatever happens on the link, the answer is finished: the device keeps the hidden
//! states it sent (`[positions, D]`, f32 as computed, before the codec), so when the
//! edge fails a step (connection lost, deadline, a drop, an answer that does not
//! decode) it runs layers `[k, L)` itself over every position its own tail caches do
//! not hold yet, then goes on locally. The step that failed is recomputed, not lost
//! and not repeated: its head part was done once and its token is drawn once. The edge
//! is not asked again in the same answer (a flapping link would cost a recompute per
//! flap); [`SplitGenerator::retry_edge`] (a chat's next turn) sends the whole context
//! again from position 0, which resets the edge's cache.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use splitstream_models::llama::{LlamaError, LlamaNet, LlmState};
use splitstream_models::llm::sample::Sampler;
use splitstream_models::llm::split::{StepHeader, StepReply, STEP_HEADER_LEN};
use splitstream_models::net::Answer;
use splitstream_models::{Backend, HostTensor};
use splitstream_transport::{Client, CodecChoice, FrameOutcome, OutgoingFrame};

use crate::device::encode_activation;

/// Errors of split generation that no fall-back can mend (the model itself failed).
#[derive(Debug, thiserror::Error)]
pub enum SplitGenError {
    /// The model failed on the device.
    #[error(transparent)]
    Model(#[from] LlamaError),
    /// The split point is not inside the model.
    #[error("split {k} is not between 1 and {layers} - 1 (the model has {layers} layers)")]
    Split {
        /// The split asked for.
        k: usize,
        /// The model's layers.
        layers: usize,
    },
}

/// The edge a generator sends its steps to.
#[derive(Clone)]
pub struct EdgeLink {
    /// The session (its split must be `layer{k}`).
    pub client: Arc<Client>,
    /// The hidden-state codec.
    pub codec: CodecChoice,
    /// How long one step may take on the edge before the device computes it.
    pub budget: Duration,
}

/// What a generator did so far.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SplitStats {
    /// Steps whose token came from the edge.
    pub edge_steps: u64,
    /// Steps computed on the device (no edge, or after a fall-back).
    pub local_steps: u64,
    /// Frames sent.
    pub frames: u64,
    /// Payload bytes sent (step headers and codec frames).
    pub bytes_sent: u64,
    /// Positions whose tail layers the device recomputed after a fall-back.
    pub recomputed: u64,
    /// Why the edge was given up, one line per fall-back.
    pub fallbacks: Vec<String>,
}

/// One generation (or conversation) split between this device and an edge.
pub struct SplitGenerator<'a, B: Backend> {
    net: &'a LlamaNet<B>,
    k: usize,
    state: LlmState<B>,
    /// Hidden states after layer `k` of every position so far, row-major `[P, D]`
    /// (kept only when an edge is used).
    hidden: Vec<f32>,
    edge: Option<EdgeLink>,
    /// Positions the edge holds as far as the device knows; `None`: not used now.
    edge_positions: Option<usize>,
    stats: SplitStats,
}

impl<'a, B: Backend> SplitGenerator<'a, B> {
    /// A generator over `net`: with `edge`, layers `[0, k)` here and the rest there;
    /// without, everything here (`k` is ignored).
    pub fn new(
        net: &'a LlamaNet<B>,
        k: usize,
        edge: Option<EdgeLink>,
    ) -> Result<Self, SplitGenError> {
        let layers = net.config().layers;
        let k = match edge {
            Some(_) if k == 0 || k >= layers => return Err(SplitGenError::Split { k, layers }),
            Some(_) => k,
            None => layers,
        };
        Ok(Self {
            net,
            k,
            state: net.state(),
            hidden: Vec::new(),
            edge_positions: edge.as_ref().map(|_| 0),
            edge,
            stats: SplitStats::default(),
        })
    }

    /// Positions in the context so far.
    pub fn positions(&self) -> usize {
        self.state.len_at(0)
    }

    /// What it did so far.
    pub fn stats(&self) -> &SplitStats {
        &self.stats
    }

    /// Whether the next step goes to the edge.
    pub fn on_edge(&self) -> bool {
        self.edge.is_some() && self.edge_positions.is_some()
    }

    /// Forgets the context (a new conversation); the edge's cache is reset by the next
    /// step (position 0).
    pub fn clear(&mut self) {
        self.state.clear();
        self.hidden.clear();
        self.edge_positions = self.edge.as_ref().map(|_| 0);
    }

    /// Tries the edge again after a fall-back: the next step sends the whole context
    /// from position 0.
    pub fn retry_edge(&mut self) {
        if self.edge.is_some() && self.edge_positions.is_none() {
            self.edge_positions = Some(0);
        }
    }

    /// Runs `ids` (the prompt, or the last token) and draws the next token with
    /// `sampler`. Returns it and whether the edge computed it.
    pub async fn step(
        &mut self,
        ids: &[u32],
        sampler: &mut Sampler,
    ) -> Result<(u32, bool), SplitGenError> {
        let d = self.net.config().hidden;
        let h = self.net.head_hidden(ids, 1, self.k, &mut self.state)?;
        if self.edge.is_none() {
            // Everything local: the head ran every layer.
            let logits = self.net.tail_logits(&h, self.k, &mut self.state)?;
            self.stats.local_steps += 1;
            return Ok((sampler.choose(last_row(&logits)?), false));
        }
        self.hidden.extend_from_slice(h.data());
        if let Some(sent) = self.edge_positions {
            match self.remote(sent, sampler).await {
                Ok(token) => {
                    self.stats.edge_steps += 1;
                    return Ok((token, true));
                }
                Err(why) => {
                    tracing::warn!("the edge failed a step ({why}): finishing on the device");
                    self.stats.fallbacks.push(why);
                    self.edge_positions = None;
                }
            }
        }
        // Local tail: every position the device's tail caches lack (all of them after
        // a fall-back, then one per step).
        let done = self.state.len_at(self.k);
        let total = self.hidden.len() / d;
        let rows = self.hidden[done * d..].to_vec();
        let x = HostTensor::new([1, total - done, d], rows)
            .map_err(|e| LlamaError::Input(e.to_string()))?;
        self.stats.recomputed += (total - done).saturating_sub(ids.len()) as u64;
        let logits = self.net.tail_logits(&x, self.k, &mut self.state)?;
        self.stats.local_steps += 1;
        Ok((sampler.choose(last_row(&logits)?), false))
    }

    /// Sends positions `[sent, P)` to the edge (in frames within its payload cap) and
    /// reads the next token from the last answer; an error says why not.
    async fn remote(&mut self, sent: usize, sampler: &mut Sampler) -> Result<u32, String> {
        let Some(edge) = self.edge.clone() else {
            return Err("no edge".into());
        };
        let d = self.net.config().hidden;
        let v = self.net.config().vocab;
        let total = self.hidden.len() / d;
        // f32 is the largest encoding (plus the codec's own header); the edge says
        // how large a frame it reads.
        let cap = edge
            .client
            .limits()
            .map_or(4 << 20, |l| l.max_frame_payload as usize);
        let per_frame = (cap.saturating_sub(STEP_HEADER_LEN + 4096) / (d * 4)).max(1);
        let reply = if sampler.is_greedy() {
            StepReply::Token
        } else {
            StepReply::Logits
        };
        let mut start = sent;
        let mut answer = None;
        while start < total {
            let end = total.min(start + per_frame);
            let rows = &self.hidden[start * d..end * d];
            let codec_frame = encode_activation(edge.codec, &[end - start, d], rows)
                .map_err(|e| format!("encoding the hidden states: {e}"))?;
            let header = StepHeader {
                reply: if end == total {
                    reply
                } else {
                    StepReply::Token
                },
                position: u32::try_from(start).map_err(|_| "position past u32".to_string())?,
            };
            let payload = Bytes::from(header.frame(&codec_frame));
            self.stats.frames += 1;
            self.stats.bytes_sent += payload.len() as u64;
            let report = edge
                .client
                .send_frame(OutgoingFrame::new(payload, edge.budget))
                .await
                .map_err(|e| format!("sending: {e}"))?;
            let bytes = match report.outcome {
                FrameOutcome::Answered(bytes) => bytes,
                FrameOutcome::Dropped(reason) => return Err(format!("dropped: {reason:?}")),
                other => return Err(format!("{:?}", other.kind())),
            };
            answer = Some(Answer::decode(&bytes).map_err(|e| format!("the answer: {e}"))?);
            self.edge_positions = Some(end);
            start = end;
        }
        match answer {
            Some(Answer::NextToken { token, .. }) if reply == StepReply::Token => Ok(token),
            Some(Answer::Logits(row)) if reply == StepReply::Logits && row.len() == v => {
                Ok(sampler.choose(&row))
            }
            Some(other) => Err(format!("the edge answered {} for a step", other.kind())),
            None => Err("nothing to send".into()),
        }
    }
}

/// The last position's logits of `[1, T, V]`.
fn last_row(logits: &HostTensor) -> Result<&[f32], LlamaError> {
    let v = logits.shape().last().copied().unwrap_or(0);
    let data = logits.data();
    data.len()
        .checked_sub(v)
        .filter(|_| v > 0)
        .map(|start| &data[start..])
        .ok_or_else(|| LlamaError::Input(format!("logits {:?}", logits.shape())))
}
