//! Shared by the end-to-end tests: a seeded demo model, an edge on 127.0.0.1 with a
//! fresh self-signed certificate, devices connected to it, and the shipped test images.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use splitstream_head::device::{load_model, Device, DeviceModel, RunMode};
use splitstream_head::source::{Frame, Payload};
use splitstream_models::synthetic::{seeded_split_safetensors, seeded_vit_safetensors, DEMO_VIT};
use splitstream_tail::batcher::BatcherConfig;
use splitstream_tail::config::BackendChoice;
use splitstream_tail::edge::{EdgeOptions, RunningEdge};
use splitstream_tail::metrics::EdgeMetrics;
use splitstream_tail::model::ServedModel;
use splitstream_transport::{
    Client, ClientConfig, ConnectError, ModelId, ServerTrust, StreamConfig, TokenStore,
};

pub const MODEL: &str = "demo-vit";
pub const TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// The seeded demo checkpoint, loaded for the device (1 CPU thread), and its bytes.
pub fn model() -> (DeviceModel, ModelId, Vec<u8>) {
    let bytes = seeded_vit_safetensors(&DEMO_VIT, 7);
    let (m, id) = load_model(MODEL, bytes.clone(), "seeded", None, 1).expect("seeded model loads");
    (m, id, bytes)
}

/// The seeded demo ViT with a learned-bottleneck-shaped pair after block 1 (point 2,
/// rank 16), loaded for the device, and its bytes.
pub fn split_model() -> (DeviceModel, ModelId, Vec<u8>) {
    let bytes = seeded_split_safetensors(&DEMO_VIT, 7, 2, 16);
    let (m, id) =
        load_model(MODEL, bytes.clone(), "seeded split", None, 1).expect("seeded split loads");
    (m, id, bytes)
}

/// Starts an edge serving the checkpoint to devices `dev-0` .. `dev-{n-1}`.
pub fn start_edge(bytes: Vec<u8>, devices: usize, batcher: BatcherConfig) -> RunningEdge {
    let served = ServedModel::from_bytes(MODEL, bytes, "seeded", None, BackendChoice::Cpu, 1)
        .expect("edge loads the model");
    let mut tokens = TokenStore::new();
    for i in 0..devices {
        tokens.insert(format!("dev-{i}"), TOKEN);
    }
    let options = EdgeOptions {
        batcher,
        ..EdgeOptions::default()
    };
    RunningEdge::loopback(vec![served], tokens, options, Arc::new(EdgeMetrics::new()))
        .expect("edge starts")
}

/// Connects device `device_id` for `mode`, pinning the edge's certificate.
pub async fn connect(
    edge: &RunningEdge,
    id: &ModelId,
    mode: &RunMode,
    device_id: &str,
    token: &str,
) -> Result<Client, ConnectError> {
    let (split, codec) = mode.wire().expect("a remote mode");
    let stream = StreamConfig {
        model: id.clone(),
        split,
        codec,
    };
    let mut cfg = ClientConfig::new(
        edge.local_addr(),
        ServerTrust::Pinned(edge.fingerprint()),
        device_id,
        token,
        stream,
    );
    // Loss is noticed fast, and the tests stay short.
    cfg.idle_timeout = Duration::from_secs(2);
    cfg.connect_timeout = Duration::from_secs(5);
    Client::connect(cfg).await
}

/// A device for `mode` with an optional client.
pub fn device(model: &DeviceModel, mode: RunMode, client: Option<Client>) -> Device {
    Device::new(
        model.clone(),
        mode,
        client.map(Arc::new),
        Duration::from_secs(5),
    )
}

/// The first `n` images of the shipped test set as frames.
pub fn frames(n: usize) -> Vec<Frame> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo/test");
    (0..n)
        .map(|i| {
            let path = dir.join(format!("{i:04}.jpg"));
            let img = splitstream_models::preprocess::load_rgb(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            Frame {
                index: i as u64,
                captured: Instant::now(),
                captured_wall: SystemTime::now(),
                source: Arc::from(path.display().to_string().as_str()),
                payload: Payload::Image(img),
            }
        })
        .collect()
}

/// Logits of every frame computed locally.
pub async fn local_logits(model: &DeviceModel, frames: &[Frame]) -> Vec<Vec<f32>> {
    let mut d = device(model, RunMode::Local, None);
    let mut out = Vec::new();
    for f in frames {
        out.push(d.process(f).await.logits().to_vec());
    }
    out
}

pub fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .expect("logits")
}
