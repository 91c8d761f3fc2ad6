//! The models an edge serves: any family the one loader builds ([`load_net`]), on the
//! chosen backend, behind [`SplitNet`]; and what runs for a session's split name.

use std::path::Path;
use std::sync::Arc;

use splitstream_models::backend::cpu::CpuBackend;
use splitstream_models::backend::wgpu::{WgpuBackend, WgpuInitError};
use splitstream_models::llama::load_llm;
use splitstream_models::llm::LlmLoadError;
use splitstream_models::net::{
    load_net, LoadNetError, NetError, NetOptions, NetState, Output, SplitPoint,
};
use splitstream_models::net::{InputSpec, OutputKind};
use splitstream_models::preprocess::EvalTransform;
use splitstream_models::weights::Weights;
use splitstream_models::{HostTensor, SplitNet};
use splitstream_transport::ModelId;

use crate::batcher::Route;
use crate::config::BackendChoice;

pub use splitstream_transport::names::{CodecChoice, JPEG_CODEC, OFFLOAD_SPLIT};

/// Errors loading a served model.
#[derive(Debug, thiserror::Error)]
pub enum LoadModelError {
    /// The weights file could not be read.
    #[error("cannot read weights {path}")]
    Read {
        /// The file.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The weights are not a model the models crate can build.
    #[error("cannot load {name} from {source_name}")]
    Model {
        /// Model name.
        name: String,
        /// Where the weights came from.
        source_name: String,
        /// What was wrong.
        #[source]
        source: Box<LoadNetError>,
    },
    /// An LLM (GGUF file or Hugging Face folder) did not load.
    #[error("cannot load the LLM {name} from {path}")]
    Llm {
        /// Model name.
        name: String,
        /// The file or folder.
        path: String,
        /// What was wrong.
        #[source]
        source: Box<LlmLoadError>,
    },
    /// The GPU backend was asked for and could not start.
    #[error("backend wgpu for {name} (use backend = \"cpu\" or \"auto\")")]
    Gpu {
        /// Model name.
        name: String,
        /// Cause.
        #[source]
        source: WgpuInitError,
    },
}

/// Why a batch could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum TailRunError {
    /// The network failed (shape, backend).
    #[error(transparent)]
    Net(#[from] NetError),
    /// The model does not run this route (a session should not have been admitted).
    #[error("this model does not run {0:?}")]
    NotServed(Route),
}

/// One model the edge serves.
#[derive(Clone)]
pub struct ServedModel {
    /// Its identity on the wire: name (devices ask for it) and weights hash.
    pub id: ModelId,
    /// The network.
    pub net: Arc<dyn SplitNet>,
    /// Depths of the split points devices may use; empty: all of them.
    pub splits: Vec<usize>,
    /// Whether devices may offload whole frames (image models only).
    pub offload: bool,
}

impl std::fmt::Debug for ServedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedModel")
            .field("id", &self.id)
            .field("net", &self.net.describe())
            .field("splits", &self.splits)
            .field("offload", &self.offload)
            .finish()
    }
}

impl ServedModel {
    /// Serves `net` under `id`: every split point, offload when it takes images.
    pub fn new(id: ModelId, net: Arc<dyn SplitNet>) -> Self {
        Self {
            id,
            net,
            splits: Vec::new(),
            offload: true,
        }
    }

    /// Loads `name` from safetensors bytes (any family the loader knows) on `backend`.
    /// A ViT's head count comes from `num_heads`, else the file's metadata, else the
    /// architecture default.
    pub fn from_bytes(
        name: &str,
        bytes: Vec<u8>,
        source_name: &str,
        num_heads: Option<usize>,
        backend: BackendChoice,
        cpu_threads: usize,
    ) -> Result<Self, LoadModelError> {
        let id = ModelId::from_weights_bytes(name, &bytes);
        let model_err = |source: LoadNetError| LoadModelError::Model {
            name: name.to_owned(),
            source_name: source_name.to_owned(),
            source: Box::new(source),
        };
        let weights = Weights::from_bytes(bytes, source_name).map_err(|e| model_err(e.into()))?;
        let options = NetOptions {
            num_heads,
            ..NetOptions::default()
        };
        let gpu = open_gpu(name, backend)?;
        let net = match gpu {
            Some(gpu) => load_net(gpu, &weights, &options),
            None => {
                let cpu = CpuBackend::new(cpu_threads).map_err(|e| model_err(e.into()))?;
                load_net(cpu, &weights, &options)
            }
        }
        .map_err(model_err)?;
        Ok(Self::new(id, net))
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

    /// Whether `path` holds an LLM: a GGUF file, or a folder with `config.json` (a
    /// Hugging Face checkpoint).
    pub fn is_llm_path(path: &Path) -> bool {
        if path.is_dir() {
            return path.join("config.json").is_file();
        }
        let mut magic = [0u8; 4];
        std::fs::File::open(path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
            .is_ok_and(|()| &magic == b"GGUF")
    }

    /// The file whose SHA-256 names an LLM's weights on the wire: the GGUF file, or a
    /// folder's `model.safetensors` (the device hashes the same file).
    pub fn llm_weights_file(path: &Path) -> std::path::PathBuf {
        if path.is_dir() {
            path.join("model.safetensors")
        } else {
            path.to_path_buf()
        }
    }

    /// Loads an LLM (GGUF file or Hugging Face folder) as `name`, with KV caches of
    /// `context` positions per session (`None`: the models crate's default). Devices
    /// split it at `layer{k}`; nothing is offloaded.
    pub fn from_llm(
        name: &str,
        path: &Path,
        backend: BackendChoice,
        cpu_threads: usize,
        context: Option<usize>,
    ) -> Result<Self, LoadModelError> {
        let file = Self::llm_weights_file(path);
        let bytes = std::fs::read(&file).map_err(|source| LoadModelError::Read {
            path: file.display().to_string(),
            source,
        })?;
        let id = ModelId::from_weights_bytes(name, &bytes);
        drop(bytes);
        let llm_err = |source: LlmLoadError| LoadModelError::Llm {
            name: name.to_owned(),
            path: path.display().to_string(),
            source: Box::new(source),
        };
        let gpu = open_gpu(name, backend)?;
        let net = match gpu {
            Some(gpu) => load_llm(gpu, path, context),
            None => {
                let cpu = CpuBackend::new(cpu_threads)
                    .map_err(|e| llm_err(LlmLoadError::Format(e.to_string())))?;
                load_llm(cpu, path, context)
            }
        }
        .map_err(llm_err)?;
        Ok(Self {
            id,
            net,
            splits: Vec::new(),
            offload: false,
        })
    }

    /// Whether it is an LLM (its steps batch across sessions, see `llm.rs`).
    pub fn is_llm(&self) -> bool {
        matches!(self.net.output(), OutputKind::NextToken { .. })
    }

    /// Positions of an LLM's KV cache per session (`None` for other models).
    pub fn context(&self) -> Option<usize> {
        match self.net.input() {
            InputSpec::Tokens { max_len, .. } => Some(*max_len),
            _ => None,
        }
    }

    /// How offloaded frames become the model's input: the checkpoint's eval transform
    /// (`None`: the model does not take images, so nothing can be offloaded to it).
    pub fn transform(&self) -> Option<&EvalTransform> {
        self.net.input().transform()
    }

    /// The split points devices may ask for: the model's own (a model trained with a
    /// bottleneck offers only that one), less those the config leaves out.
    pub fn served_points(&self) -> Vec<&SplitPoint> {
        self.net
            .split_points()
            .iter()
            .filter(|p| self.splits.is_empty() || self.splits.contains(&p.depth))
            .collect()
    }

    /// The wire names of [`ServedModel::served_points`].
    pub fn served_split_names(&self) -> Vec<String> {
        self.served_points()
            .into_iter()
            .map(|p| p.name.clone())
            .collect()
    }

    /// What runs for a session's split name: `None` when this model does not serve it.
    pub fn route(&self, split: &str) -> Option<Route> {
        if split == OFFLOAD_SPLIT {
            return (self.offload && self.transform().is_some()).then_some(Route::Full);
        }
        let point = self.served_points().into_iter().find(|p| p.name == split)?;
        Some(Route::Split(u32::try_from(point.depth).ok()?))
    }

    fn point(&self, depth: u32) -> Option<&SplitPoint> {
        self.net
            .split_points()
            .iter()
            .find(|p| u32::try_from(p.depth).ok() == Some(depth))
    }

    /// The shape of one item's input on `route` (no batch dimension): what crosses the
    /// link at a split point, the model's input for the whole model.
    pub fn input_shape(&self, route: Route) -> Option<Vec<usize>> {
        match route {
            Route::Split(k) => self.point(k).map(|p| p.shape.clone()),
            Route::Full => Some(self.net.input().item_shape()),
        }
    }

    /// Runs `route` on a batch `[B, ...input_shape]`, with a session's state for a
    /// stateful model.
    pub fn run(
        &self,
        route: Route,
        input: &HostTensor,
        state: Option<&mut dyn NetState>,
    ) -> Result<Output, TailRunError> {
        match route {
            Route::Split(k) => {
                let point = self.point(k).ok_or(TailRunError::NotServed(route))?;
                Ok(self.net.tail(input, &point.name, state)?)
            }
            Route::Full => Ok(self.net.forward(input, state)?),
        }
    }

    /// One line for logs: the network, its split points, the weights hash.
    pub fn describe(&self) -> String {
        format!(
            "model {}: {}, splits {} weights sha256 {}",
            self.id.arch,
            self.net.describe(),
            self.served_split_names().join(" "),
            self.id.weights_hex()
        )
    }
}

/// The GPU a served model runs on, or `None` for the CPU (`auto` without a GPU).
/// WGPU_ADAPTER_NAME and WGPU_BACKEND pick the adapter, as everywhere.
fn open_gpu(name: &str, backend: BackendChoice) -> Result<Option<WgpuBackend>, LoadModelError> {
    match backend.open_wgpu_reporting() {
        Ok((gpu, chosen)) => {
            if let Some(line) = chosen {
                tracing::info!("{name}: {line}");
            }
            Ok(gpu)
        }
        Err(e) if backend == BackendChoice::Auto => {
            tracing::warn!("no GPU for {name} ({e}); running on the CPU");
            Ok(None)
        }
        Err(source) => Err(LoadModelError::Gpu {
            name: name.to_owned(),
            source,
        }),
    }
}
