//! The one interface every model family offers to the device, the edge, the CLI and the
//! benches: [`SplitNet`].
//!
//! A family is one file of model code (`vit.rs`; later `femtodet.rs`, `spikepoint.rs`,
//! `llama.rs`) written once over the [`Backend`](crate::Backend) seam, plus one
//! `impl SplitNet` that says:
//!
//! - what it takes ([`InputSpec`]: an image with its eval transform, an event window, a
//!   token sequence) and what it answers ([`OutputKind`]: class logits, detections,
//!   next-token logits);
//! - where it can be cut ([`SplitPoint`]s, named by the model: the transport carries
//!   the names as opaque strings, so a new family needs no protocol change);
//! - `head(x, at)` on the device and `tail(h, at)` on the edge, host tensors in and out
//!   (the backend stays behind the trait object), and `forward(x)` for local runs;
//! - the state it keeps between frames of one session, if any ([`NetState`]: SNN
//!   membranes, KV caches), typed by the family, sized so that the edge can cap it.
//!
//! [`load`] reads a checkpoint, picks the family from its metadata (or its tensor
//! names) and builds it on a backend; [`Answer`] is one item's result as it crosses the
//! link.

pub mod answer;
pub mod load;

use std::any::Any;

use crate::preprocess::EvalTransform;
use crate::tensor::HostTensor;

pub use answer::{Answer, AnswerDecodeError, Detection};
pub use load::{detect_family, load_net, LoadNetError, NetOptions};

/// The model families splitstream runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Family {
    /// Vision Transformer / DeiT, as timm builds them (`vit.rs`).
    Vit,
    /// FemtoDet, the 68.77k-parameter detector (`femtodet.rs`).
    FemtoDet,
    /// SpikePoint-style point-based spiking network on event windows (`spikepoint.rs`).
    SpikePoint,
    /// Llama-family decoders: Llama and Qwen2 (`llama.rs`).
    Llama,
}

impl Family {
    /// Every family, for messages and `--help`.
    pub const ALL: [Family; 4] = [
        Family::Vit,
        Family::FemtoDet,
        Family::SpikePoint,
        Family::Llama,
    ];

    /// The name a checkpoint's `family` metadata uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::Vit => "vit",
            Self::FemtoDet => "femtodet",
            Self::SpikePoint => "spikepoint",
            Self::Llama => "llama",
        }
    }

    /// The family of a metadata name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a model takes, per item.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum InputSpec {
    /// An RGB image, `[channels, size, size]` after the checkpoint's eval transform.
    Image {
        /// Channels (3).
        channels: usize,
        /// Side of the square input.
        size: usize,
        /// How a frame becomes the input (resize, crop, normalise).
        transform: EvalTransform,
    },
    /// A window of events as a dense tensor `[channels, height, width]` (time bins or
    /// polarities as channels).
    EventWindow {
        /// Channels of the representation.
        channels: usize,
        /// Sensor rows.
        height: usize,
        /// Sensor columns.
        width: usize,
        /// Length of a window, microseconds.
        window_us: u64,
    },
    /// A window of events sampled into a point set `[points, 4]`: `x`, `y` (pixels),
    /// `t` (microseconds after the window's start), polarity (0/1).
    EventPoints {
        /// Points per window.
        points: usize,
        /// Sensor columns.
        width: usize,
        /// Sensor rows.
        height: usize,
        /// Length of a window, microseconds.
        window_us: u64,
    },
    /// A sequence of token ids `[n]`, `n <= max_len`.
    Tokens {
        /// Vocabulary size.
        vocab: usize,
        /// Longest sequence (the context).
        max_len: usize,
    },
}

impl InputSpec {
    /// The shape of one item (no batch dimension); for tokens, the longest sequence.
    pub fn item_shape(&self) -> Vec<usize> {
        match self {
            Self::Image { channels, size, .. } => vec![*channels, *size, *size],
            Self::EventWindow {
                channels,
                height,
                width,
                ..
            } => vec![*channels, *height, *width],
            Self::EventPoints { points, .. } => vec![*points, 4],
            Self::Tokens { max_len, .. } => vec![*max_len],
        }
    }

    /// The eval transform of an image input.
    pub fn transform(&self) -> Option<&EvalTransform> {
        match self {
            Self::Image { transform, .. } => Some(transform),
            _ => None,
        }
    }
}

/// What a model answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OutputKind {
    /// Class logits `[classes]` per item.
    ClassLogits {
        /// Number of classes.
        classes: usize,
    },
    /// Objects found: boxes, scores, labels.
    Detections {
        /// Number of classes a label indexes.
        classes: usize,
    },
    /// Logits of the next token `[vocab]` per item.
    NextToken {
        /// Vocabulary size.
        vocab: usize,
    },
}

/// A place the model can be cut, as the model names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SplitPoint {
    /// The name devices and edges agree on (`block3`, `block0-bottleneck`, `stage2`).
    pub name: String,
    /// How far the device runs: head stages before the cut (orders the points; the
    /// device's `--split K` and the edge's `splits = [..]` count in these).
    pub depth: usize,
    /// The shape of what crosses the link, per item (no batch dimension).
    pub shape: Vec<usize>,
    /// Channels of the learned bottleneck's code, when the head ends in its encoder.
    pub bottleneck: Option<usize>,
}

/// One batch's result.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Class logits `[B, classes]`.
    Logits(HostTensor),
    /// Detections of each item.
    Detections(Vec<Vec<Detection>>),
    /// Next-token logits `[B, vocab]`.
    NextToken(HostTensor),
}

impl Output {
    /// Items in the batch.
    pub fn len(&self) -> usize {
        match self {
            Self::Logits(t) | Self::NextToken(t) => t.shape().first().copied().unwrap_or(0),
            Self::Detections(d) => d.len(),
        }
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One [`Answer`] per item, in order.
    pub fn into_answers(self) -> Vec<Answer> {
        fn rows(t: &HostTensor) -> impl Iterator<Item = Vec<f32>> + '_ {
            let width = t.shape().get(1..).map_or(0, |d| d.iter().product());
            t.data().chunks(width.max(1)).map(<[f32]>::to_vec)
        }
        match self {
            Self::Logits(t) => rows(&t).map(Answer::Logits).collect(),
            Self::NextToken(t) => rows(&t).map(|logits| Answer::next_token(&logits)).collect(),
            Self::Detections(d) => d.into_iter().map(Answer::Detections).collect(),
        }
    }
}

/// State a family keeps between the frames of one session (membrane potentials, a KV
/// cache). The family creates it ([`SplitNet::new_state`]) and downcasts it back; the
/// edge only counts its bytes and drops it with the session.
pub trait NetState: Any + Send {
    /// For the family's downcast.
    fn as_any_mut(&mut self) -> &mut dyn Any;

    /// Positions this state holds, for a family whose state grows by positions (an
    /// LLM's KV cache); `None` for the others.
    fn positions(&self) -> Option<usize> {
        None
    }

    /// Forgets everything held (a new conversation).
    fn reset(&mut self) {}
}

/// Errors running a [`SplitNet`].
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The model has no split point of this name.
    #[error("this model has no split point {name:?}; it has: {known}")]
    UnknownSplit {
        /// The name asked for.
        name: String,
        /// The names it has.
        known: String,
    },
    /// The family keeps state between frames and none was given, or the wrong kind.
    #[error("{0}")]
    State(String),
    /// The model refused the input or failed while running.
    #[error(transparent)]
    Run(Box<dyn std::error::Error + Send + Sync>),
}

impl NetError {
    /// Wraps a family's own error.
    pub fn run(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Run(Box::new(e))
    }
}

/// A model that can be cut, whatever its family and backend.
pub trait SplitNet: Send + Sync {
    /// The family.
    fn family(&self) -> Family;

    /// One line for logs: architecture, size, split points, backend.
    fn describe(&self) -> String;

    /// The backend it runs on (`cpu`, `wgpu`).
    fn backend_name(&self) -> &'static str;

    /// What it takes.
    fn input(&self) -> &InputSpec;

    /// What it answers.
    fn output(&self) -> OutputKind;

    /// Where it can be cut, by increasing depth. A model trained around a learned
    /// bottleneck offers only the bottleneck's point.
    fn split_points(&self) -> &[SplitPoint];

    /// The split point of this name.
    fn split_point(&self, name: &str) -> Result<&SplitPoint, NetError> {
        let points = self.split_points();
        points
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| NetError::UnknownSplit {
                name: name.to_owned(),
                known: points
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The most bytes one session's state may reach, for families that keep state
    /// between frames (`None`: stateless; its frames batch across sessions). The edge
    /// reserves this much per session against its caps before creating the state.
    fn state_size(&self) -> Option<usize> {
        None
    }

    /// A fresh state for a new session (`None` for a stateless family).
    fn new_state(&self) -> Option<Box<dyn NetState>> {
        None
    }

    /// The device's part: `x` `[B, ...input]` to what crosses the link at `at`
    /// (`[B, ...point.shape]`).
    fn head(
        &self,
        x: &HostTensor,
        at: &str,
        state: Option<&mut dyn NetState>,
    ) -> Result<HostTensor, NetError>;

    /// The edge's part: what crossed the link at `at` to the output.
    fn tail(
        &self,
        h: &HostTensor,
        at: &str,
        state: Option<&mut dyn NetState>,
    ) -> Result<Output, NetError>;

    /// The whole model (through its bottleneck, if it was trained with one, so that
    /// every route computes the same function).
    fn forward(&self, x: &HostTensor, state: Option<&mut dyn NetState>)
        -> Result<Output, NetError>;

    /// The tail of several sessions' inputs at once, each with its own state (an
    /// edge's continuous batching of LLM decode steps: one position per session, each
    /// at its own place in its own KV cache). One output per input, in order. The
    /// default runs them one at a time; a family that can share the work overrides it.
    /// On an error some states may have advanced: the caller drops them all.
    fn tail_batch(
        &self,
        inputs: &[&HostTensor],
        at: &str,
        states: &mut [&mut dyn NetState],
    ) -> Result<Vec<Output>, NetError> {
        if inputs.len() != states.len() {
            return Err(NetError::State(format!(
                "{} inputs for {} states",
                inputs.len(),
                states.len()
            )));
        }
        inputs
            .iter()
            .zip(states.iter_mut())
            .map(|(h, s)| self.tail(h, at, Some(&mut **s)))
            .collect()
    }
}
