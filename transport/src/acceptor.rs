//! The edge runtime's say over which sessions it serves: the transport checks version and
//! token, then asks an [`Acceptor`] whether it can run the model, split and codec.

use std::collections::{BTreeSet, HashMap};

use crate::wire::{Capabilities, CodecSpec, RejectReason, StreamConfig};

/// Decides whether the edge serves a device's stream configuration. Called for every
/// `Hello` (after the token check) and every `Reconfigure`. Implementations must be
/// quick: they run on the connection's task.
pub trait Acceptor: Send + Sync + 'static {
    /// `Ok(())` to serve `config` for `device_id`, or the reason not to.
    fn check(
        &self,
        device_id: &str,
        config: &StreamConfig,
        capabilities: &Capabilities,
    ) -> Result<(), RejectReason>;
}

impl<F> Acceptor for F
where
    F: Fn(&str, &StreamConfig, &Capabilities) -> Result<(), RejectReason> + Send + Sync + 'static,
{
    fn check(
        &self,
        device_id: &str,
        config: &StreamConfig,
        capabilities: &Capabilities,
    ) -> Result<(), RejectReason> {
        self(device_id, config, capabilities)
    }
}

/// What the edge serves for one architecture.
#[derive(Clone, Debug, Default)]
pub struct ModelEntry {
    /// SHA-256 of the weights the edge loaded.
    pub weights_sha256: [u8; 32],
    /// Split points the edge can run the tail from.
    pub splits: BTreeSet<String>,
    /// Codec schemes the edge can decode.
    pub codecs: BTreeSet<String>,
}

/// A ready-made [`Acceptor`]: a table of architectures with their weights hash,
/// supported splits and codec schemes.
#[derive(Clone, Debug, Default)]
pub struct ModelRegistry {
    models: HashMap<String, ModelEntry>,
}

impl ModelRegistry {
    /// An empty registry (rejects every model).
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers (or replaces) an architecture.
    pub fn insert(
        &mut self,
        arch: impl Into<String>,
        weights_sha256: [u8; 32],
        splits: impl IntoIterator<Item = impl Into<String>>,
        codecs: impl IntoIterator<Item = impl Into<String>>,
    ) -> &mut Self {
        self.models.insert(
            arch.into(),
            ModelEntry {
                weights_sha256,
                splits: splits.into_iter().map(Into::into).collect(),
                codecs: codecs.into_iter().map(Into::into).collect(),
            },
        );
        self
    }
}

impl Acceptor for ModelRegistry {
    fn check(
        &self,
        _device_id: &str,
        config: &StreamConfig,
        _capabilities: &Capabilities,
    ) -> Result<(), RejectReason> {
        let arch = &config.model.arch;
        let entry = self
            .models
            .get(arch)
            .ok_or_else(|| RejectReason::UnknownModel { arch: arch.clone() })?;
        if entry.weights_sha256 != config.model.weights_sha256 {
            return Err(RejectReason::WeightsMismatch {
                arch: arch.clone(),
                device_sha256: config.model.weights_hex(),
                edge_sha256: crate::wire::hex(&entry.weights_sha256),
            });
        }
        if !entry.splits.contains(&config.split) {
            return Err(RejectReason::UnsupportedSplit {
                split: config.split.clone(),
                supported: entry.splits.iter().cloned().collect(),
            });
        }
        check_codec(&config.codec, &entry.codecs)
    }
}

fn check_codec(codec: &CodecSpec, supported: &BTreeSet<String>) -> Result<(), RejectReason> {
    if supported.contains(&codec.scheme) {
        Ok(())
    } else {
        Err(RejectReason::UnsupportedCodec {
            scheme: codec.scheme.clone(),
            supported: supported.iter().cloned().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ModelId;

    fn registry() -> (ModelRegistry, ModelId) {
        let model = ModelId::from_weights_bytes("vit_tiny", b"w");
        let mut r = ModelRegistry::new();
        r.insert(
            "vit_tiny",
            model.weights_sha256,
            ["blocks.3"],
            ["affine-u8"],
        );
        (r, model)
    }

    fn config(model: ModelId, split: &str, scheme: &str) -> StreamConfig {
        StreamConfig {
            model,
            split: split.into(),
            codec: CodecSpec::new(scheme, vec![]),
        }
    }

    #[test]
    fn registry_names_each_kind_of_mismatch() {
        let (r, model) = registry();
        let caps = Capabilities::default();
        assert_eq!(
            r.check("d", &config(model.clone(), "blocks.3", "affine-u8"), &caps),
            Ok(())
        );
        let other = ModelId::from_weights_bytes("deit_small", b"w");
        assert!(matches!(
            r.check("d", &config(other, "blocks.3", "affine-u8"), &caps),
            Err(RejectReason::UnknownModel { .. })
        ));
        let wrong = ModelId::from_weights_bytes("vit_tiny", b"other weights");
        assert!(matches!(
            r.check("d", &config(wrong, "blocks.3", "affine-u8"), &caps),
            Err(RejectReason::WeightsMismatch { .. })
        ));
        assert!(matches!(
            r.check("d", &config(model.clone(), "blocks.9", "affine-u8"), &caps),
            Err(RejectReason::UnsupportedSplit { .. })
        ));
        assert!(matches!(
            r.check("d", &config(model, "blocks.3", "f16"), &caps),
            Err(RejectReason::UnsupportedCodec { .. })
        ));
    }
}
