//! Running frames on the device: the whole model locally, the head up to a split point
//! with the tail on the edge, or the whole frame offloaded as JPEG. Whatever happens on
//! the link, every frame gets a result: a frame the edge does not answer (dropped,
//! overtaken, past its deadline, connection lost, never connected) is computed locally,
//! from the head's activation when there is one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use image::RgbImage;
use splitstream_codec::{Bits, CodecParams, DecodeLimits, Entropy, TensorView};
use splitstream_models::backend::cpu::CpuBackend;
use splitstream_models::preprocess::EvalTransform;
use splitstream_models::vit::Vit;
use splitstream_models::{Backend, HostTensor};
use splitstream_transport::{Client, CodecSpec, FrameOutcome, OutgoingFrame};

use crate::offload::{encode_jpeg, JpegSettings};
use crate::source::{Frame, Payload};
use crate::stats::{FrameRecord, Mode, Outcome};

/// The model the device runs (CPU backend).
pub type DeviceModel = Arc<Vit<CpuBackend>>;

/// Split name on the wire for offloaded frames (matches the edge's).
pub const OFFLOAD_SPLIT: &str = "offload";
/// Codec scheme name on the wire for offloaded frames.
pub const JPEG_CODEC: &str = "jpeg";

/// The wire name of split point `point`: `embed` for 0, `block{k-1}` for `k`.
pub fn split_name(point: usize) -> String {
    match point {
        0 => "embed".to_owned(),
        k => format!("block{}", k - 1),
    }
}

/// A bottleneck codec choice, by the name devices and edges agree on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodecChoice {
    /// f32, bit exact.
    Lossless,
    /// f32, bit exact, zstd level 1 on byte planes.
    LosslessZstd,
    /// 8-bit affine, one scale and offset per tensor (BottleFit's).
    U8,
    /// 8-bit affine per tensor, zstd level 1.
    U8Zstd,
    /// 8-bit affine, one scale and offset per embedding channel.
    U8Channel,
    /// 4-bit affine per channel.
    U4,
}

impl CodecChoice {
    /// Every choice, for `--help` and tables.
    pub const ALL: [CodecChoice; 6] = [
        Self::Lossless,
        Self::LosslessZstd,
        Self::U8,
        Self::U8Zstd,
        Self::U8Channel,
        Self::U4,
    ];

    /// Name on the wire and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Lossless => "lossless",
            Self::LosslessZstd => "lossless-zstd",
            Self::U8 => "u8",
            Self::U8Zstd => "u8-zstd",
            Self::U8Channel => "u8-channel",
            Self::U4 => "u4",
        }
    }

    /// The choice of this name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The codec parameters.
    pub fn params(self) -> CodecParams {
        let zstd = Entropy::Zstd { level: 1 };
        match self {
            Self::Lossless => CodecParams::LOSSLESS,
            Self::LosslessZstd => CodecParams::LOSSLESS.with_entropy(zstd),
            Self::U8 => CodecParams::affine(Bits::B8, Entropy::None),
            Self::U8Zstd => CodecParams::affine(Bits::B8, zstd),
            Self::U8Channel => CodecParams::affine_per_channel(Bits::B8, 2, Entropy::None),
            Self::U4 => CodecParams::affine_per_channel(Bits::B4, 2, Entropy::None),
        }
    }

    /// The transport's description of it.
    pub fn spec(self) -> CodecSpec {
        CodecSpec::new(self.name(), Vec::new())
    }
}

/// Where frames run.
#[derive(Clone, Debug)]
pub enum RunMode {
    /// The whole model on the device.
    Local,
    /// The head to split point `point` on the device, the tail on the edge.
    Split {
        /// Split point (head stages on the device).
        point: usize,
        /// Bottleneck codec.
        codec: CodecChoice,
    },
    /// The frame as JPEG; the edge runs the whole model.
    Offload {
        /// JPEG settings.
        jpeg: JpegSettings,
    },
}

impl RunMode {
    /// The stats mode.
    pub fn mode(&self) -> Mode {
        match self {
            Self::Local => Mode::Local,
            Self::Split { .. } => Mode::Split,
            Self::Offload { .. } => Mode::Offload,
        }
    }

    /// The split and codec names the session announces (`None` for local).
    pub fn wire(&self) -> Option<(String, CodecSpec)> {
        match self {
            Self::Local => None,
            Self::Split { point, codec } => Some((split_name(*point), codec.spec())),
            Self::Offload { .. } => Some((
                OFFLOAD_SPLIT.to_owned(),
                CodecSpec::new(JPEG_CODEC, Vec::new()),
            )),
        }
    }
}

/// One frame's result: the stats line and the logits it ended with.
#[derive(Clone, Debug)]
pub struct FrameResult {
    /// The JSON line's content.
    pub record: FrameRecord,
    /// Logits `[classes]` (empty when the frame failed).
    pub logits: Vec<f32>,
}

/// Runs frames in one mode, with an optional connection to an edge.
pub struct Device {
    model: DeviceModel,
    transform: EvalTransform,
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
        let transform = EvalTransform::deit(model.config().image_size as u32);
        Self {
            model,
            transform,
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

    /// The model's preprocessing of an image: `[1, 3, S, S]`.
    pub fn preprocess(&self, img: &RgbImage) -> Result<HostTensor, ComputeError> {
        let s = self.model.config().image_size;
        HostTensor::new([1, 3, s, s], self.transform.apply(img))
            .map_err(|e| ComputeError::Model(e.to_string()))
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
                RunMode::Split { point, .. } => u32::try_from(*point).ok(),
                _ => None,
            },
            result: Outcome::Failed {
                error: String::new(),
            },
            bytes_sent: 0,
            head_ms: 0.0,
            transfer_ms: 0.0,
            tail_ms: 0.0,
            total_ms: 0.0,
            fallback: None,
            why: None,
        };
        let logits = match self.run(frame, &mut rec).await {
            Ok(l) => {
                rec.result = classify(&l);
                l
            }
            Err(e) => {
                rec.result = Outcome::Failed {
                    error: e.to_string(),
                };
                Vec::new()
            }
        };
        rec.total_ms = ms(started.elapsed());
        FrameResult {
            record: rec,
            logits,
        }
    }

    async fn run(&self, frame: &Frame, rec: &mut FrameRecord) -> Result<Vec<f32>, ComputeError> {
        let t0 = Instant::now();
        let input = match &frame.payload {
            Payload::Image(img) => self.preprocess(img)?,
            Payload::Tensor(t) => HostTensor::new(t.shape.to_vec(), t.data.clone())
                .map_err(|e| ComputeError::Model(e.to_string()))?,
        };
        match self.mode.clone() {
            RunMode::Local => {
                let l = self.blocking(move |m| m.run(&input)).await?;
                rec.head_ms = ms(t0.elapsed());
                Ok(l.into_data())
            }
            RunMode::Split { point, codec } => {
                let act = self
                    .blocking(move |m| {
                        let be = m.backend();
                        let x = be.upload(&input)?;
                        let a = m.head(&x, point)?;
                        Ok::<_, splitstream_models::vit::RunError>(be.readback(&a)?)
                    })
                    .await?;
                let encoded = TensorView::f32(act.shape(), act.data())
                    .map_err(|e| e.to_string())
                    .and_then(|v| {
                        splitstream_codec::encode(&v, &codec.params()).map_err(|e| e.to_string())
                    });
                rec.head_ms = ms(t0.elapsed());
                let remote = match encoded {
                    Ok(bytes) => self.send(Bytes::from(bytes), rec).await,
                    Err(e) => Err(format!("encoding the bottleneck failed: {e}")),
                };
                match remote {
                    Ok(l) => Ok(l),
                    Err(why) => {
                        // The head's work is kept: only the tail runs here.
                        rec.fallback = Some(why);
                        rec.mode = Mode::Local;
                        let t = Instant::now();
                        let l = self
                            .blocking(move |m| {
                                let be = m.backend();
                                let x = be.upload(&act)?;
                                let y = m.tail(&x, point)?;
                                Ok::<_, splitstream_models::vit::RunError>(be.readback(&y)?)
                            })
                            .await?;
                        rec.tail_ms = ms(t.elapsed());
                        Ok(l.into_data())
                    }
                }
            }
            RunMode::Offload { jpeg } => {
                let remote = match &frame.payload {
                    Payload::Image(img) => match encode_jpeg(img, &jpeg) {
                        Ok(bytes) => {
                            rec.head_ms = ms(t0.elapsed());
                            self.send(Bytes::from(bytes), rec).await
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
                        let l = self.blocking(move |m| m.run(&input)).await?;
                        rec.tail_ms = ms(t.elapsed());
                        Ok(l.into_data())
                    }
                }
            }
        }
    }

    /// Sends a payload; the logits, or why there are none.
    async fn send(&self, payload: Bytes, rec: &mut FrameRecord) -> Result<Vec<f32>, String> {
        let Some(client) = &self.client else {
            return Err("no connection to the edge".into());
        };
        let len = payload.len() as u64;
        let report = client
            .send_frame(OutgoingFrame::new(payload, self.budget))
            .await
            .map_err(|e| e.to_string())?;
        match report.outcome {
            FrameOutcome::Answered(bytes) => {
                rec.bytes_sent = len;
                rec.transfer_ms = ms(report.elapsed);
                let t = splitstream_codec::decode(
                    &bytes,
                    &DecodeLimits {
                        max_elements: 1 << 20,
                        max_bytes: 4 << 20,
                    },
                )
                .map_err(|e| format!("the edge's answer did not decode: {e}"))?;
                Ok(t.to_f32())
            }
            FrameOutcome::Dropped(reason) => Err(format!("edge dropped the frame: {reason}")),
            other => Err(format!("{:?}", other.kind()).to_lowercase()),
        }
    }

    async fn blocking<F>(&self, f: F) -> Result<HostTensor, ComputeError>
    where
        F: FnOnce(&Vit<CpuBackend>) -> Result<HostTensor, splitstream_models::vit::RunError>
            + Send
            + 'static,
    {
        let model = self.model.clone();
        tokio::task::spawn_blocking(move || f(&model))
            .await
            .map_err(|e| ComputeError::Model(format!("worker thread: {e}")))?
            .map_err(|e| ComputeError::Model(e.to_string()))
    }
}

/// Top-1 class and its softmax probability.
pub fn classify(logits: &[f32]) -> Outcome {
    let Some((class, &best)) = logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)) else {
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

/// The head count a safetensors file declares in its `__metadata__` (`"num_heads"`);
/// `None` when absent or unreadable.
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

/// Why the device's model did not load.
#[derive(Debug, thiserror::Error)]
#[error("cannot load the model from {source_name}: {detail}")]
pub struct LoadModelError {
    /// Where the weights came from.
    pub source_name: String,
    /// What was wrong.
    pub detail: String,
}

/// Loads a timm ViT from safetensors bytes on the CPU backend (`threads` workers, 0:
/// one per core), with its wire identity (`name` + SHA-256 of the bytes). The head
/// count comes from `num_heads`, else the file's metadata, else the D/64 default.
pub fn load_model(
    name: &str,
    bytes: Vec<u8>,
    source_name: &str,
    num_heads: Option<usize>,
    threads: usize,
) -> Result<(DeviceModel, splitstream_transport::ModelId), LoadModelError> {
    let err = |detail: String| LoadModelError {
        source_name: source_name.to_owned(),
        detail,
    };
    let id = splitstream_transport::ModelId::from_weights_bytes(name, &bytes);
    let options = splitstream_models::vit::VitOptions {
        num_heads: num_heads.or_else(|| metadata_num_heads(&bytes)),
        ..Default::default()
    };
    let weights = splitstream_models::weights::Weights::from_bytes(bytes, source_name)
        .map_err(|e| err(e.to_string()))?;
    let backend = CpuBackend::new(threads).map_err(|e| err(e.to_string()))?;
    let vit = Vit::load(backend, &weights, &options).map_err(|e| err(e.to_string()))?;
    Ok((Arc::new(vit), id))
}
