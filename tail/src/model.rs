//! The models an edge serves: loading a timm ViT from safetensors on the chosen backend,
//! and a backend-erased handle the tail worker runs batches on.

use std::path::Path;
use std::sync::Arc;

use splitstream_models::backend::cpu::CpuBackend;
use splitstream_models::backend::wgpu::{WgpuBackend, WgpuOptions};
use splitstream_models::preprocess::EvalTransform;
use splitstream_models::split::{has_bottleneck, SplitMetadata, SplitModel, SplitRunError};
use splitstream_models::vit::{RunError, Vit, VitConfig, VitOptions};
use splitstream_models::weights::Weights;
use splitstream_models::{Backend, HostTensor};
use splitstream_transport::ModelId;

use crate::batcher::Route;
use crate::config::BackendChoice;

pub use splitstream_transport::names::{CodecChoice, SplitAt, JPEG_CODEC, OFFLOAD_SPLIT};

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

/// Why a batch could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum TailRunError {
    /// The network failed (shape, backend).
    #[error(transparent)]
    Model(#[from] RunError),
    /// The split model (decoder + tail) failed.
    #[error(transparent)]
    Split(#[from] SplitRunError),
    /// The model does not run this route (a session should not have been admitted).
    #[error("this model does not run {0:?}")]
    NotServed(Route),
}

/// A learned bottleneck a model carries: where, and how wide its code is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BottleneckInfo {
    /// The split point the encoder follows.
    pub point: usize,
    /// Channels of the code per token.
    pub rank: usize,
}

/// A model ready to run batches, whatever its backend.
pub trait TailModel: Send + Sync {
    /// Hyper-parameters.
    fn config(&self) -> &VitConfig;
    /// Backend name (`cpu`, `wgpu`).
    fn backend_name(&self) -> &'static str;
    /// The learned bottleneck, if the model has one.
    fn bottleneck(&self) -> Option<BottleneckInfo>;
    /// The shape of one item's input on `route` (no batch dimension): `[N, D]` for a
    /// tail, the code's shape for a decode, `[3, S, S]` for the whole model; `None`
    /// when the model does not run that route.
    fn input_shape(&self, route: Route) -> Option<Vec<usize>>;
    /// Runs `route` on a batch `[B, ...input_shape]` to logits `[B, classes]`.
    fn run(&self, route: Route, input: &HostTensor) -> Result<HostTensor, TailRunError>;
}

impl<B: Backend> TailModel for Vit<B> {
    fn config(&self) -> &VitConfig {
        Vit::config(self)
    }
    fn backend_name(&self) -> &'static str {
        self.backend().name()
    }
    fn bottleneck(&self) -> Option<BottleneckInfo> {
        None
    }
    fn input_shape(&self, route: Route) -> Option<Vec<usize>> {
        let c = Vit::config(self);
        match route {
            Route::Tail(k) if k as usize <= c.depth => Some(vec![c.num_tokens(), c.embed_dim]),
            Route::Full => Some(vec![c.in_chans, c.image_size, c.image_size]),
            Route::Tail(_) | Route::Decode(_) => None,
        }
    }
    fn run(&self, route: Route, input: &HostTensor) -> Result<HostTensor, TailRunError> {
        match route {
            Route::Tail(k) => {
                let be = self.backend();
                let x = be.upload(input).map_err(RunError::from)?;
                let y = Vit::tail(self, &x, k as usize)?;
                Ok(be.readback(&y).map_err(RunError::from)?)
            }
            Route::Full => Ok(Vit::run(self, input)?),
            Route::Decode(_) => Err(TailRunError::NotServed(route)),
        }
    }
}

impl<B: Backend> TailModel for SplitModel<B> {
    fn config(&self) -> &VitConfig {
        self.vit().config()
    }
    fn backend_name(&self) -> &'static str {
        self.vit().backend().name()
    }
    fn bottleneck(&self) -> Option<BottleneckInfo> {
        self.bottleneck().map(|b| BottleneckInfo {
            point: self.point(),
            rank: b.code_channels(),
        })
    }
    fn input_shape(&self, route: Route) -> Option<Vec<usize>> {
        let c = self.vit().config();
        match route {
            Route::Decode(k) if k as usize == self.point() && self.has_bottleneck() => {
                Some(self.code_shape(1).split_off(1))
            }
            Route::Full => Some(vec![c.in_chans, c.image_size, c.image_size]),
            Route::Tail(_) | Route::Decode(_) => None,
        }
    }
    fn run(&self, route: Route, input: &HostTensor) -> Result<HostTensor, TailRunError> {
        match route {
            Route::Decode(k) if k as usize == self.point() && self.has_bottleneck() => {
                let be = self.vit().backend();
                let x = be.upload(input).map_err(RunError::from)?;
                let y = SplitModel::tail(self, &x)?;
                Ok(be.readback(&y).map_err(RunError::from)?)
            }
            // The whole model as trained: through the bottleneck.
            Route::Full => Ok(SplitModel::run(self, input)?),
            Route::Tail(_) | Route::Decode(_) => Err(TailRunError::NotServed(route)),
        }
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
    /// How offloaded frames become the model's input: the checkpoint's eval transform
    /// (its metadata `crop_pct`, else timm's default).
    pub transform: EvalTransform,
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
        let model_err = |detail: String| LoadModelError::Model {
            name: name.to_owned(),
            source_name: source_name.to_owned(),
            detail,
        };
        let weights =
            Weights::from_bytes(bytes, source_name).map_err(|e| model_err(e.to_string()))?;
        let metadata =
            SplitMetadata::from_weights(&weights).map_err(|e| model_err(e.to_string()))?;
        let options = VitOptions {
            num_heads: num_heads.or(metadata.num_heads),
            ..VitOptions::default()
        };
        let bottleneck = has_bottleneck(&weights);
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
        fn build<B: Backend>(
            backend: B,
            weights: &Weights,
            options: &VitOptions,
            metadata: &SplitMetadata,
            bottleneck: bool,
        ) -> Result<Arc<dyn TailModel>, String> {
            if bottleneck {
                let m = SplitModel::load_with_metadata(backend, weights, options, None, metadata)
                    .map_err(|e| e.to_string())?;
                Ok(Arc::new(m))
            } else {
                let m = Vit::load(backend, weights, options).map_err(|e| e.to_string())?;
                Ok(Arc::new(m))
            }
        }
        let crop_pct = weights.metadata_value("crop_pct").map(str::to_owned);
        let model = match gpu {
            Some(gpu) => build(gpu, &weights, &options, &metadata, bottleneck),
            None => {
                let cpu = CpuBackend::new(cpu_threads).map_err(|e| model_err(e.to_string()))?;
                build(cpu, &weights, &options, &metadata, bottleneck)
            }
        }
        .map_err(model_err)?;
        let transform =
            EvalTransform::for_checkpoint(model.config().image_size as u32, crop_pct.as_deref())
                .map_err(|e| model_err(e.to_string()))?;
        Ok(Self {
            id,
            model,
            splits: Vec::new(),
            offload: true,
            transform,
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

    /// The splits devices may ask for: the bottleneck's split when the model has one
    /// (its layers were trained around it, so the plain splits are not served), else
    /// the listed points (all of them when none were listed).
    pub fn served_splits(&self) -> Vec<SplitAt> {
        if let Some(b) = self.model.bottleneck() {
            return vec![SplitAt::Bottleneck(b.point)];
        }
        let depth = self.model.config().depth;
        let points: Vec<usize> = if self.splits.is_empty() {
            (0..=depth).collect()
        } else {
            self.splits
                .iter()
                .copied()
                .filter(|&k| k <= depth)
                .collect()
        };
        points.into_iter().map(SplitAt::Point).collect()
    }

    /// The wire names of [`ServedModel::served_splits`].
    pub fn served_split_names(&self) -> Vec<String> {
        self.served_splits()
            .into_iter()
            .map(SplitAt::name)
            .collect()
    }

    /// What runs for a session's split name: `None` when this model does not serve it.
    pub fn route(&self, split: &str) -> Option<Route> {
        if split == OFFLOAD_SPLIT {
            return self.offload.then_some(Route::Full);
        }
        let at = SplitAt::parse(split)?;
        if !self.served_splits().contains(&at) {
            return None;
        }
        let k = u32::try_from(at.point()).ok()?;
        Some(match at {
            SplitAt::Point(_) => Route::Tail(k),
            SplitAt::Bottleneck(_) => Route::Decode(k),
        })
    }

    /// One line for logs: blocks, classes, backend, bottleneck, weights hash.
    pub fn describe(&self) -> String {
        let c = self.model.config();
        let bottleneck = match self.model.bottleneck() {
            Some(b) => format!(", bottleneck after point {} (rank {})", b.point, b.rank),
            None => String::new(),
        };
        format!(
            "model {} ({} blocks, {} classes, backend {}{bottleneck}) weights sha256 {}",
            self.id.arch,
            c.depth,
            c.num_classes,
            self.model.backend_name(),
            self.id.weights_hex()
        )
    }
}
