//! A real edge (QUIC on loopback, real TLS) driven by a power trace that crosses T2:
//! devices are told to run locally and offloaded frames are shed with a reason, then
//! after the release the advice returns to normal and frames are computed again.
//! Every frame sent gets an answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use splitstream_tail::config::BackendChoice;
use splitstream_tail::edge::{EdgeOptions, RunningEdge};
use splitstream_tail::governor::{GpuCapChoice, PowerConfig};
use splitstream_tail::metrics::EdgeMetrics;
use splitstream_tail::model::{ServedModel, JPEG_CODEC, OFFLOAD_SPLIT};
use splitstream_transport::{
    Advice, Client, ClientConfig, CodecSpec, DropReason, FrameOutcome, ModelId, OutgoingFrame,
    ServerTrust, Status, StreamConfig, TokenStore,
};

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// A tiny ViT (32×32 input, 16×16 patches, 8 channels, 1 block, 3 classes) with timm's
/// tensor names, as safetensors bytes. Its outputs mean nothing; it only has to run.
fn tiny_vit() -> Vec<u8> {
    let (d, p, tokens, classes, h) = (8usize, 16usize, 5usize, 3usize, 32usize);
    let mut seed = 1u32;
    let mut fill = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                ((seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 0.2
            })
            .collect()
    };
    let mut t: Vec<(String, Vec<usize>, Vec<f32>)> = vec![
        (
            "patch_embed.proj.weight".into(),
            vec![d, 3, p, p],
            fill(d * 3 * p * p),
        ),
        ("patch_embed.proj.bias".into(), vec![d], fill(d)),
        ("cls_token".into(), vec![1, 1, d], fill(d)),
        ("pos_embed".into(), vec![1, tokens, d], fill(tokens * d)),
        (
            "blocks.0.attn.qkv.weight".into(),
            vec![3 * d, d],
            fill(3 * d * d),
        ),
        ("blocks.0.attn.qkv.bias".into(), vec![3 * d], fill(3 * d)),
        ("blocks.0.attn.proj.weight".into(), vec![d, d], fill(d * d)),
        ("blocks.0.attn.proj.bias".into(), vec![d], fill(d)),
        ("blocks.0.mlp.fc1.weight".into(), vec![h, d], fill(h * d)),
        ("blocks.0.mlp.fc1.bias".into(), vec![h], fill(h)),
        ("blocks.0.mlp.fc2.weight".into(), vec![d, h], fill(d * h)),
        ("blocks.0.mlp.fc2.bias".into(), vec![d], fill(d)),
        ("head.weight".into(), vec![classes, d], fill(classes * d)),
        ("head.bias".into(), vec![classes], fill(classes)),
    ];
    for n in ["blocks.0.norm1", "blocks.0.norm2", "norm"] {
        t.push((format!("{n}.weight"), vec![d], vec![1.0; d]));
        t.push((format!("{n}.bias"), vec![d], vec![0.0; d]));
    }
    let mut header = serde_json::Map::new();
    header.insert(
        "__metadata__".into(),
        serde_json::json!({ "num_heads": "1" }),
    );
    let mut data = Vec::new();
    for (name, shape, values) in &t {
        let start = data.len();
        data.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        header.insert(
            name.clone(),
            serde_json::json!({ "dtype": "F32", "shape": shape, "data_offsets": [start, data.len()] }),
        );
    }
    let mut h = serde_json::Value::Object(header).to_string();
    while !h.len().is_multiple_of(8) {
        h.push(' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(&data);
    out
}

fn jpeg() -> Bytes {
    let img = image::RgbImage::from_fn(40, 40, |x, y| {
        image::Rgb([(x * 6) as u8, (y * 6) as u8, 128])
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode_image(&img)
        .expect("JPEG encodes");
    Bytes::from(out)
}

/// Writes a trace to a fresh temporary file.
fn trace_file(text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "splitstream-governor-edge-{}-{:?}",
        std::process::id(),
        Instant::now()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("edge-power.csv");
    std::fs::write(&path, text).expect("trace written");
    path
}

async fn start(power: PowerConfig) -> (RunningEdge, Arc<EdgeMetrics>, Client) {
    let (edge, metrics, model) = start_edge(power);
    let client = connect(&edge, &model, "cam-1", false).await;
    (edge, metrics, client)
}

/// An edge serving the tiny ViT to `cam-1` and `cam-2` under `power`.
fn start_edge(power: PowerConfig) -> (RunningEdge, Arc<EdgeMetrics>, ModelId) {
    let served =
        ServedModel::from_bytes("tiny-vit", tiny_vit(), "tiny", None, BackendChoice::Cpu, 1)
            .expect("the tiny ViT loads");
    let model = served.id.clone();
    let mut tokens = TokenStore::new();
    tokens.insert("cam-1", TOKEN);
    tokens.insert("cam-2", TOKEN);
    let metrics = Arc::new(EdgeMetrics::new());
    let options = EdgeOptions {
        power: Some(power),
        ..EdgeOptions::default()
    };
    let edge =
        RunningEdge::loopback(vec![served], tokens, options, metrics.clone()).expect("edge starts");
    (edge, metrics, model)
}

/// Connects `device` for offloading; `low`: it volunteers low priority.
async fn connect(edge: &RunningEdge, model: &ModelId, device: &str, low: bool) -> Client {
    let stream = StreamConfig {
        model: model.clone(),
        split: OFFLOAD_SPLIT.to_owned(),
        codec: CodecSpec::new(JPEG_CODEC, Vec::new()),
    };
    let mut cfg = ClientConfig::new(
        edge.local_addr(),
        ServerTrust::Pinned(edge.fingerprint()),
        device,
        TOKEN,
        stream,
    );
    cfg.connect_timeout = Duration::from_secs(10);
    if low {
        cfg.capabilities.extensions.push("priority=low".into());
    }
    Client::connect(cfg).await.expect("device connects")
}

/// Waits (at most `limit`) for a status with this advice.
async fn advice(
    rx: &mut tokio::sync::watch::Receiver<Option<Status>>,
    want: Advice,
    limit: Duration,
) -> Status {
    let got = tokio::time::timeout(limit, rx.wait_for(|s| s.is_some_and(|s| s.advice == want)))
        .await
        .map(|r| r.map(|s| *s));
    match got {
        Ok(Ok(Some(s))) => s,
        _ => panic!(
            "no {want:?} advice within {limit:?}; last {:?}",
            *rx.borrow()
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_crossing_t2_advises_local_sheds_offload_then_releases() {
    // 50 W, then over T2 (95 W of a 100 W budget) from 2 s to 3.5 s, then 40 W:
    // released 0.5 s (min_hold) after 3.5 s.
    let trace = trace_file("t_s,watts\n0,50\n2,99\n3.5,40\n600,40\n");
    let mut power = PowerConfig::new(100.0, format!("trace:{}", trace.display()));
    power.interval_ms = 50;
    power.min_hold_ms = 500;
    power.gpu_cap = GpuCapChoice::Off;
    let (edge, metrics, client) = start(power).await;
    let mut status = client.status();

    let shed = advice(&mut status, Advice::PreferLocal, Duration::from_secs(10)).await;
    assert!(shed.power_headroom < 0.05, "{shed:?}");
    // While the edge sheds, an offloaded frame is answered with the reason.
    let report = client
        .send_frame(OutgoingFrame::new(jpeg(), Duration::from_secs(5)))
        .await
        .expect("frame sent");
    match &report.outcome {
        FrameOutcome::Dropped(DropReason::Other(why)) => {
            assert!(why.contains("power budget"), "{why}")
        }
        other => panic!("expected a shed frame, got {other:?}"),
    }

    let released = advice(&mut status, Advice::Normal, Duration::from_secs(10)).await;
    assert!(released.power_headroom > 0.5, "{released:?}");
    let report = client
        .send_frame(OutgoingFrame::new(jpeg(), Duration::from_secs(5)))
        .await
        .expect("frame sent");
    match &report.outcome {
        FrameOutcome::Answered(_) => {}
        other => panic!("expected a result after the release, got {other:?}"),
    }

    let text = metrics.encode();
    for want in [
        "splitstream_governor_level 0",
        "splitstream_governor_transitions_total{from=\"normal\",to=\"shedding\"} 1",
        "splitstream_governor_transitions_total{from=\"shedding\",to=\"normal\"} 1",
        "splitstream_governor_shed_total{reason=\"over_budget_offload\"} 1",
        "splitstream_power_budget_watts 100",
    ] {
        assert!(text.contains(want), "metrics lack {want:?}:\n{text}");
    }
    client.close().await;
    edge.shutdown().await;
    let _ = std::fs::remove_dir_all(trace.parent().expect("trace folder"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn above_t1_only_low_priority_devices_are_rate_capped() {
    // 90 W of a 100 W budget: over T1 (85 W), under T2 (95 W).
    let trace = trace_file("t_s,watts\n0,90\n");
    let mut power = PowerConfig::new(100.0, format!("trace:{}", trace.display()));
    power.interval_ms = 50;
    power.cap_rate_hz = 0.5;
    power.gpu_cap = GpuCapChoice::Off;
    let (edge, metrics, model) = start_edge(power);
    let high = connect(&edge, &model, "cam-1", false).await;
    let low = connect(&edge, &model, "cam-2", true).await;
    let t0 = Instant::now();
    while edge.power_state().low_priority_cap.is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the governor never capped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut outcomes = Vec::new();
    for client in [&high, &low] {
        let mut got = Vec::new();
        for _ in 0..3 {
            let r = client
                .send_frame(OutgoingFrame::new(jpeg(), Duration::from_secs(5)))
                .await
                .expect("frame sent");
            got.push(r.outcome);
        }
        outcomes.push(got);
    }
    // The high-priority device is untouched; the low-priority one gets its burst of
    // one frame, then (at 0.5 frames/s) is told why the rest are shed.
    assert!(
        outcomes[0]
            .iter()
            .all(|o| matches!(o, FrameOutcome::Answered(_))),
        "{:?}",
        outcomes[0]
    );
    assert!(
        matches!(outcomes[1][0], FrameOutcome::Answered(_)),
        "{:?}",
        outcomes[1]
    );
    for o in &outcomes[1][1..] {
        match o {
            FrameOutcome::Dropped(DropReason::Other(why)) => {
                assert!(why.contains("frame rate"), "{why}")
            }
            other => panic!("expected a rate-capped frame, got {other:?}"),
        }
    }
    // Capping is not shedding: devices are still told to offload as usual.
    let status = (*low.status().borrow()).expect("a status");
    assert_eq!(status.advice, Advice::Normal);
    let text = metrics.encode();
    assert!(
        text.contains("splitstream_governor_shed_total{reason=\"rate_capped\"} 2"),
        "{text}"
    );
    high.close().await;
    low.close().await;
    edge.shutdown().await;
    let _ = std::fs::remove_dir_all(trace.parent().expect("trace folder"));
}

#[tokio::test]
async fn an_unreadable_power_source_stops_the_start_with_its_name() {
    let served =
        ServedModel::from_bytes("tiny-vit", tiny_vit(), "tiny", None, BackendChoice::Cpu, 1)
            .expect("the tiny ViT loads");
    let tokens = TokenStore::new();
    let options = EdgeOptions {
        power: Some(PowerConfig::new(100.0, "trace:/nonexistent/edge-power.csv")),
        ..EdgeOptions::default()
    };
    let err = RunningEdge::loopback(vec![served], tokens, options, Arc::new(EdgeMetrics::new()))
        .expect_err("the edge refuses to start");
    let msg = err.to_string();
    assert!(
        msg.contains("power governor") && msg.contains("/nonexistent/edge-power.csv"),
        "{msg}"
    );
}
