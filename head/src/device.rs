//! Running frames on the device: the whole model locally, the head up to a split point
//! with the tail on the edge, or the whole frame offloaded as JPEG. Whatever happens on
//! the link, every frame gets a result: a frame the edge does not answer (dropped,
//! overtaken, past its deadline, connection lost, never connected) is computed locally,
//! from the head's activation when there is one.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use image::RgbImage;
use splitstream_codec::{Bits, CodecParams, Entropy, Granularity, Scheme, TensorView};
use splitstream_models::net::{Answer, InputSpec, NetState, Output, SplitPoint};
use splitstream_models::HostTensor;
use splitstream_transport::names::{jpeg_spec, OFFLOAD_SPLIT};
use splitstream_transport::{Client, CodecSpec, FrameOutcome, OutgoingFrame};

pub use crate::model::{load_model, DeviceModel, LoadModelError, ModelRunError};
pub use splitstream_transport::CodecChoice;

use crate::classic::ClassicHead;
use crate::offload::{encode_jpeg, JpegSettings};
use crate::source::{Frame, Payload};
use crate::stats::{FrameRecord, Mode, Outcome};

/// The codec parameters for `codec` on an activation of `shape`: the per-channel
/// choices quantize along the channels, the last axis of ViT tokens `[B, N, D]` and
/// the second of feature maps `[B, C, H, W]`; a flat activation `[B, L]` (a detector's
/// taps packed together) has no channel axis and is quantized per tensor. The
/// per-token choices quantize each position alone: axis 0 of an LLM's hidden states
/// `[T, D]`, axis 1 of tokens `[B, N, D]`.
pub fn codec_params_for(codec: CodecChoice, shape: &[usize]) -> CodecParams {
    let params = codec_params(codec);
    let per_token = matches!(
        codec,
        CodecChoice::U8Token | CodecChoice::U8TokenZstd | CodecChoice::U4Token
    );
    match (params.scheme, shape.len()) {
        (
            Scheme::Affine {
                bits,
                granularity: Granularity::PerChannel { .. },
            },
            rank,
        ) => {
            let granularity = match (per_token, rank) {
                (true, 2) => Granularity::PerChannel { axis: 0 },
                (true, 3) | (false, 4) => Granularity::PerChannel { axis: 1 },
                (false, 3) => Granularity::PerChannel { axis: 2 },
                _ => Granularity::PerTensor,
            };
            CodecParams {
                scheme: Scheme::Affine { bits, granularity },
                entropy: params.entropy,
            }
        }
        _ => params,
    }
}

/// The codec parameters the device encodes a bottleneck with for each choice (the
/// per-channel ones along axis 2, for ViT tokens, the per-token ones along axis 0;
/// [`codec_params_for`] picks the axis from the activation's shape). The f16 choices
/// are lossless on values [`encode_activation`] first rounds to f16.
pub fn codec_params(codec: CodecChoice) -> CodecParams {
    let zstd = Entropy::Zstd { level: 1 };
    match codec {
        CodecChoice::Lossless | CodecChoice::F16 => CodecParams::LOSSLESS,
        CodecChoice::LosslessZstd | CodecChoice::F16Zstd => {
            CodecParams::LOSSLESS.with_entropy(zstd)
        }
        CodecChoice::U8 => CodecParams::affine(Bits::B8, Entropy::None),
        CodecChoice::U8Zstd => CodecParams::affine(Bits::B8, zstd),
        CodecChoice::U8Channel => CodecParams::affine_per_channel(Bits::B8, 2, Entropy::None),
        CodecChoice::U4 => CodecParams::affine_per_channel(Bits::B4, 2, Entropy::None),
        CodecChoice::U8Token => CodecParams::affine_per_channel(Bits::B8, 0, Entropy::None),
        CodecChoice::U8TokenZstd => CodecParams::affine_per_channel(Bits::B8, 0, zstd),
        CodecChoice::U4Token => CodecParams::affine_per_channel(Bits::B4, 0, Entropy::None),
    }
}

/// An activation `data` of `shape` as a codec frame for `codec` (the f16 choices
/// round to f16 first, and the frame says f16).
pub fn encode_activation(
    codec: CodecChoice,
    shape: &[usize],
    data: &[f32],
) -> Result<Vec<u8>, String> {
    let params = codec_params_for(codec, shape);
    let frame = match codec {
        CodecChoice::F16 | CodecChoice::F16Zstd => {
            let half: Vec<half::f16> = data.iter().map(|&v| half::f16::from_f32(v)).collect();
            TensorView::f16(shape, &half)
                .map_err(|e| e.to_string())
                .and_then(|v| splitstream_codec::encode(&v, &params).map_err(|e| e.to_string()))
        }
        _ => TensorView::f32(shape, data)
            .map_err(|e| e.to_string())
            .and_then(|v| splitstream_codec::encode(&v, &params).map_err(|e| e.to_string())),
    };
    frame
}

/// Where frames run.
#[derive(Clone, Debug)]
pub enum RunMode {
    /// The whole model on the device.
    Local,
    /// The head to a split point on the device (with the learned bottleneck's encoder
    /// when the split is a bottleneck), the tail on the edge.
    Split {
        /// Where the model is cut.
        at: SplitPoint,
        /// Bottleneck codec.
        codec: CodecChoice,
    },
    /// The frame as JPEG; the edge runs the whole model.
    Offload {
        /// JPEG settings.
        jpeg: JpegSettings,
    },
    /// The head to the classifier's feature point, then a non-neural classifier
    /// (kNN, linear SVM, random forest), all on the device.
    Classic(ClassicHead),
}

impl RunMode {
    /// The stats mode.
    pub fn mode(&self) -> Mode {
        match self {
            Self::Local => Mode::Local,
            Self::Split { .. } => Mode::Split,
            Self::Offload { .. } => Mode::Offload,
            Self::Classic(_) => Mode::Classic,
        }
    }

    /// The split and codec names the session announces (`None` for local).
    pub fn wire(&self) -> Option<(String, CodecSpec)> {
        match self {
            Self::Local | Self::Classic(_) => None,
            Self::Split { at, codec } => Some((at.name.clone(), codec.spec())),
            Self::Offload { .. } => Some((OFFLOAD_SPLIT.to_owned(), jpeg_spec())),
        }
    }
}

/// One frame's result: the stats line and the answer it ended with.
#[derive(Clone, Debug)]
pub struct FrameResult {
    /// The JSON line's content.
    pub record: FrameRecord,
    /// The model's answer (`None` when the frame failed).
    pub answer: Option<Answer>,
    /// The edge that answered (`None` when the frame ran on the device).
    pub edge: Option<SocketAddr>,
    /// When the frame failed on an edge of a fleet and was re-sent to another (or ran
    /// locally): which edges failed it and why.
    pub failover: Option<String>,
}

/// Which edge answered a frame and what failed on the way; filled in by
/// `Device::send` from the transport's report.
#[derive(Clone, Debug, Default)]
struct LinkNote {
    edge: Option<SocketAddr>,
    failover: Option<String>,
}

impl FrameResult {
    /// The class logits of a classifier's answer (empty otherwise).
    pub fn logits(&self) -> &[f32] {
        match &self.answer {
            Some(Answer::Logits(l)) => l,
            _ => &[],
        }
    }
}

/// Runs frames in one mode, with an optional connection to an edge.
pub struct Device {
    model: DeviceModel,
    /// The device's own state of a stateful family, for the frames it computes (its
    /// local runs and fallbacks; the edge keeps the session's state for the frames it
    /// answers).
    state: Arc<Mutex<Option<Box<dyn NetState>>>>,
    mode: RunMode,
    client: Option<Arc<Client>>,
    budget: Duration,
    seq: u64,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("mode", &self.mode)
            .field("connected", &self.client.is_some())
            .finish()
    }
}

/// Why a frame was not computed at all.
#[derive(Debug, thiserror::Error)]
pub enum ComputeError {
    /// The model failed.
    #[error("model: {0}")]
    Model(String),
}

impl Device {
    /// A device running `mode`; `client` is the edge (None: every frame runs locally,
    /// recorded as a fallback unless the mode is local). `budget` is each frame's
    /// latency budget at the edge.
    pub fn new(
        model: DeviceModel,
        mode: RunMode,
        client: Option<Arc<Client>>,
        budget: Duration,
    ) -> Self {
        let state = Arc::new(Mutex::new(model.net().new_state()));
        Self {
            model,
            state,
            mode,
            client,
            budget,
            seq: 0,
        }
    }

    /// The mode.
    pub fn mode(&self) -> &RunMode {
        &self.mode
    }

    /// The model's preprocessing of an image: `[1, 3, S, S]` through the checkpoint's
    /// eval transform.
    pub fn preprocess(&self, img: &RgbImage) -> Result<HostTensor, ComputeError> {
        let InputSpec::Image {
            channels,
            size,
            transform,
        } = self.model.input()
        else {
            return Err(ComputeError::Model(
                "this model does not take images: give it tensors or events".into(),
            ));
        };
        HostTensor::new([1, *channels, *size, *size], transform.apply(img))
            .map_err(|e| ComputeError::Model(e.to_string()))
    }

    /// A detector's boxes moved from the model input's pixels to the frame's (the
    /// letterbox's scale undone); other answers, and frames that were tensors, as they
    /// are.
    pub fn in_image_pixels(&self, frame: &Frame, answer: Answer) -> Answer {
        let Payload::Image(img) = &frame.payload else {
            return answer;
        };
        let Some([sx, sy]) = self
            .model
            .input()
            .transform()
            .and_then(|t| t.box_scale(img.width(), img.height()))
        else {
            return answer;
        };
        match answer {
            Answer::Detections(mut dets) => {
                for d in &mut dets {
                    d.bbox = [
                        d.bbox[0] * sx,
                        d.bbox[1] * sy,
                        d.bbox[2] * sx,
                        d.bbox[3] * sy,
                    ];
                }
                Answer::Detections(dets)
            }
            other => other,
        }
    }

    /// Runs one frame to a result (see the module docs).
    pub async fn process(&mut self, frame: &Frame) -> FrameResult {
        let seq = self.seq;
        self.seq += 1;
        let started = Instant::now();
        let mut rec = FrameRecord {
            seq,
            mode: self.mode.mode(),
            split: match &self.mode {
                RunMode::Split { at, .. } => u32::try_from(at.depth).ok(),
                _ => None,
            },
            result: Outcome::Failed {
                error: String::new(),
            },
            bytes_sent: 0,
            head_ms: 0.0,
            preprocess_ms: None,
            encode_ms: None,
            transfer_ms: 0.0,
            tail_ms: 0.0,
            edge_receive_ms: None,
            total_ms: 0.0,
            fallback: None,
            why: None,
        };
        let mut link = LinkNote::default();
        let answer = match self.run(frame, &mut rec, &mut link).await {
            Ok(a) => {
                let a = self.in_image_pixels(frame, a);
                rec.result = outcome(&a);
                Some(a)
            }
            Err(e) => {
                rec.result = Outcome::Failed {
                    error: e.to_string(),
                };
                None
            }
        };
        rec.total_ms = ms(started.elapsed());
        FrameResult {
            record: rec,
            answer,
            edge: link.edge,
            failover: link.failover,
        }
    }

    async fn run(
        &self,
        frame: &Frame,
        rec: &mut FrameRecord,
        link: &mut LinkNote,
    ) -> Result<Answer, ComputeError> {
        let t0 = Instant::now();
        let input = match &frame.payload {
            Payload::Image(img) => self.preprocess(img)?,
            Payload::Tensor(t) => HostTensor::new(t.shape.to_vec(), t.data.clone())
                .map_err(|e| ComputeError::Model(e.to_string()))?,
        };
        rec.preprocess_ms = Some(ms(t0.elapsed()));
        match self.mode.clone() {
            RunMode::Local => {
                let out = self.on_worker(move |m, s| m.run(&input, s)).await?;
                rec.head_ms = ms(t0.elapsed());
                only_answer(out)
            }
            RunMode::Split { at, codec } => {
                let head_at = at.clone();
                let act = self
                    .on_worker(move |m, s| m.head(&input, &head_at, s))
                    .await?;
                let t_enc = Instant::now();
                let encoded = encode_activation(codec, act.shape(), act.data());
                rec.encode_ms = Some(ms(t_enc.elapsed()));
                rec.head_ms = ms(t0.elapsed());
                let remote = match encoded {
                    Ok(bytes) => self.send(Bytes::from(bytes), rec, link).await,
                    Err(e) => Err(format!("encoding the bottleneck failed: {e}")),
                };
                match remote {
                    Ok(l) => Ok(l),
                    Err(why) => {
                        // The head's work is kept: only the tail runs here.
                        rec.fallback = Some(why);
                        rec.mode = Mode::Local;
                        let t = Instant::now();
                        let out = self.on_worker(move |m, s| m.tail(&act, &at, s)).await?;
                        rec.tail_ms = ms(t.elapsed());
                        only_answer(out)
                    }
                }
            }
            RunMode::Classic(classic) => {
                let answer = tokio::task::spawn_blocking(move || {
                    let p = classic.predict(&input)?;
                    let c = classic.classic();
                    Ok::<_, crate::classic::ClassicHeadError>(Answer::Logits(
                        c.logits(&p, c.class_names().len()),
                    ))
                })
                .await
                .map_err(|e| ComputeError::Model(format!("worker thread: {e}")))?
                .map_err(|e| ComputeError::Model(e.to_string()))?;
                rec.head_ms = ms(t0.elapsed());
                Ok(answer)
            }
            RunMode::Offload { jpeg } => {
                let t_enc = Instant::now();
                let remote = match &frame.payload {
                    Payload::Image(img) => match encode_jpeg(img, &jpeg) {
                        Ok(bytes) => {
                            rec.encode_ms = Some(ms(t_enc.elapsed()));
                            rec.head_ms = ms(t0.elapsed());
                            self.send(Bytes::from(bytes), rec, link).await
                        }
                        Err(e) => Err(format!("JPEG encoding failed: {e}")),
                    },
                    Payload::Tensor(_) => Err("a tensor input cannot be offloaded as JPEG".into()),
                };
                match remote {
                    Ok(l) => Ok(l),
                    Err(why) => {
                        rec.fallback = Some(why);
                        rec.mode = Mode::Local;
                        let t = Instant::now();
                        let out = self.on_worker(move |m, s| m.run(&input, s)).await?;
                        rec.tail_ms = ms(t.elapsed());
                        only_answer(out)
                    }
                }
            }
        }
    }

    /// Sends a payload; the edge's answer, or why there is none. `link` learns which
    /// edge answered and the fail-overs on the way.
    async fn send(
        &self,
        payload: Bytes,
        rec: &mut FrameRecord,
        link: &mut LinkNote,
    ) -> Result<Answer, String> {
        let Some(client) = &self.client else {
            return Err("no connection to the edge".into());
        };
        let len = payload.len() as u64;
        let report = client
            .send_frame(OutgoingFrame::new(payload, self.budget))
            .await
            .map_err(|e| e.to_string())?;
        link.failover = report.failover.clone();
        match report.outcome {
            FrameOutcome::Answered(bytes) => {
                link.edge = report.edge_addr;
                rec.bytes_sent = len;
                // The edge's account splits the round trip into its time and the
                // link's (an edge that gives none leaves it all to the link).
                let serve = report.edge.map_or(Duration::ZERO, |t| {
                    Duration::from_micros(u64::from(t.serve_us)).min(report.elapsed)
                });
                rec.tail_ms = ms(serve);
                rec.transfer_ms = ms(report.elapsed - serve);
                // The edge's figures are its word: neither can exceed the round trip.
                rec.edge_receive_ms = report.edge.map(|t| {
                    ms(Duration::from_micros(u64::from(t.receive_us)).min(report.elapsed))
                });
                Answer::decode(&bytes).map_err(|e| format!("the edge's answer did not decode: {e}"))
            }
            FrameOutcome::Dropped(reason) => Err(format!("edge dropped the frame: {reason}")),
            other => Err(format!("{:?}", other.kind()).to_lowercase()),
        }
    }

    /// Runs model work on a blocking thread.
    async fn on_worker<T, F>(&self, f: F) -> Result<T, ComputeError>
    where
        T: Send + 'static,
        F: FnOnce(&DeviceModel, Option<&mut dyn NetState>) -> Result<T, ModelRunError>
            + Send
            + 'static,
    {
        let model = self.model.clone();
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = state.lock().unwrap_or_else(|e| e.into_inner());
            f(&model, guard.as_deref_mut().map(|s| s as &mut dyn NetState))
        })
        .await
        .map_err(|e| ComputeError::Model(format!("worker thread: {e}")))?
        .map_err(|e| ComputeError::Model(e.to_string()))
    }
}

/// The one answer of a one-frame batch.
fn only_answer(out: Output) -> Result<Answer, ComputeError> {
    out.into_answers()
        .into_iter()
        .next()
        .ok_or_else(|| ComputeError::Model("the model returned no answer".into()))
}

/// The stats line's outcome for an answer.
pub fn outcome(answer: &Answer) -> Outcome {
    match answer {
        Answer::Logits(l) => classify(l),
        Answer::Detections(d) => Outcome::Detected { boxes: d.clone() },
        Answer::NextToken { token, logprob } => Outcome::Generated {
            token: *token,
            logprob: *logprob,
        },
    }
}

/// Top-1 class and its softmax probability.
pub fn classify(logits: &[f32]) -> Outcome {
    // The first of equal maxima, as numpy's argmax (and the fallback classifiers') take.
    let Some((class, &best)) =
        logits
            .iter()
            .enumerate()
            .reduce(|a, b| if b.1.total_cmp(a.1).is_gt() { b } else { a })
    else {
        return Outcome::Failed {
            error: "the model returned no logits".into(),
        };
    };
    let sum: f32 = logits.iter().map(|&v| (v - best).exp()).sum();
    Outcome::Classified {
        class: class as u32,
        score: 1.0 / sum,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
