//! The network a device runs, on the CPU backend, whatever its family: a
//! [`SplitNet`] from the one loader ([`load_net`]), cut where its split points say.
//!
//! [`DeviceModel`] adds what the device needs on top: split points by depth (the
//! `--at K` of the CLI and the policy's plans count head stages), and errors that say
//! what the model offers instead. Every mode computes the same function of the frame
//! (a model trained with a bottleneck runs through it locally too).

use std::sync::Arc;

use splitstream_models::backend::cpu::CpuBackend;
use splitstream_models::net::{
    load_net, InputSpec, LoadNetError, NetError, NetOptions, NetState, Output, SplitPoint,
};
use splitstream_models::weights::Weights;
use splitstream_models::{HostTensor, SplitNet};
use splitstream_transport::ModelId;

/// Why a model run failed.
#[derive(Debug, thiserror::Error)]
pub enum ModelRunError {
    /// The network refused the input or failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The model cannot be cut at this depth.
    #[error("cannot split after {depth} head stages: {why}")]
    NoSuchSplit {
        /// The depth asked for.
        depth: usize,
        /// What the model offers instead.
        why: String,
    },
    /// The non-neural fallback was planned without its classifier.
    #[error("the classic fallback mode needs its classifier (splitstream-device --fallback FILE)")]
    NoFallback,
}

/// The device's model (cheap to clone: shared).
#[derive(Clone)]
pub struct DeviceModel {
    net: Arc<dyn SplitNet>,
}

impl std::fmt::Debug for DeviceModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceModel")
            .field("net", &self.net.describe())
            .finish()
    }
}

impl DeviceModel {
    /// The device's view of a loaded network.
    pub fn new(net: Arc<dyn SplitNet>) -> Self {
        Self { net }
    }

    /// The network.
    pub fn net(&self) -> &Arc<dyn SplitNet> {
        &self.net
    }

    /// What the model takes (an image input carries its eval transform).
    pub fn input(&self) -> &InputSpec {
        self.net.input()
    }

    /// The split point whose head ends in a learned bottleneck's encoder, if any.
    pub fn bottleneck(&self) -> Option<&SplitPoint> {
        self.net
            .split_points()
            .iter()
            .find(|p| p.bottleneck.is_some())
    }

    /// The deepest split point's depth (a ViT's block count).
    pub fn max_depth(&self) -> usize {
        self.net
            .split_points()
            .iter()
            .map(|p| p.depth)
            .max()
            .unwrap_or(0)
    }

    /// The split point after `depth` head stages; an error saying which exist when the
    /// model cannot be cut there.
    pub fn split_at(&self, depth: usize) -> Result<SplitPoint, ModelRunError> {
        let points = self.net.split_points();
        if let Some(p) = points.iter().find(|p| p.depth == depth) {
            return Ok(p.clone());
        }
        let why = match self.bottleneck() {
            Some(b) => format!(
                "the model was trained with its bottleneck at point {}: split there",
                b.depth
            ),
            None => {
                let depths: Vec<String> = points.iter().map(|p| p.depth.to_string()).collect();
                format!("the model has split points {}", depths.join(", "))
            }
        };
        Err(ModelRunError::NoSuchSplit { depth, why })
    }

    /// The whole model, with the device's own state for a stateful family.
    pub fn run(
        &self,
        input: &HostTensor,
        state: Option<&mut dyn NetState>,
    ) -> Result<Output, ModelRunError> {
        Ok(self.net.forward(input, state)?)
    }

    /// The device's part at `at`: what crosses the link.
    pub fn head(
        &self,
        input: &HostTensor,
        at: &SplitPoint,
        state: Option<&mut dyn NetState>,
    ) -> Result<HostTensor, ModelRunError> {
        Ok(self.net.head(input, &at.name, state)?)
    }

    /// The rest of the model from what [`DeviceModel::head`] gave (the local fallback
    /// when the edge does not answer).
    pub fn tail(
        &self,
        head_out: &HostTensor,
        at: &SplitPoint,
        state: Option<&mut dyn NetState>,
    ) -> Result<Output, ModelRunError> {
        Ok(self.net.tail(head_out, &at.name, state)?)
    }
}

/// Why the device's model did not load.
#[derive(Debug, thiserror::Error)]
#[error("cannot load the model from {source_name}")]
pub struct LoadModelError {
    /// Where the weights came from.
    pub source_name: String,
    /// What was wrong.
    #[source]
    pub kind: Box<LoadNetError>,
}

/// Loads a checkpoint of any family from safetensors bytes on the CPU backend
/// (`threads` workers, 0: one per core), with its wire identity (`name` + SHA-256 of
/// the bytes). A ViT's head count comes from `num_heads`, else the file's metadata,
/// else the D/64 default.
pub fn load_model(
    name: &str,
    bytes: Vec<u8>,
    source_name: &str,
    num_heads: Option<usize>,
    threads: usize,
) -> Result<(DeviceModel, ModelId), LoadModelError> {
    let err = |kind: LoadNetError| LoadModelError {
        source_name: source_name.to_owned(),
        kind: Box::new(kind),
    };
    let id = ModelId::from_weights_bytes(name, &bytes);
    let weights = Weights::from_bytes(bytes, source_name).map_err(|e| err(e.into()))?;
    let backend = CpuBackend::new(threads).map_err(|e| err(e.into()))?;
    let options = NetOptions {
        num_heads,
        ..NetOptions::default()
    };
    let net = load_net(backend, &weights, &options).map_err(err)?;
    Ok((DeviceModel::new(net), id))
}
