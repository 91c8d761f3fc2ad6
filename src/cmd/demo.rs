//! `splitstream demo` (also what `splitstream` runs with no subcommand): an edge and a
//! device in one process, on loopback over real QUIC with a freshly generated
//! certificate, on the demo test set that ships in `assets/demo/test`. Streams every
//! image in each mode and prints a table: agreement with local (or accuracy, for a
//! trained model), latency percentiles, bytes per frame.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use splitstream_head::device::{load_model, CodecChoice, Device, RunMode};
use splitstream_head::offload::JpegSettings;
use splitstream_head::source::{Frame, Payload};
use splitstream_head::stats::Percentiles;
use splitstream_head::synthetic::{seeded_vit_safetensors, DEMO_VIT};
use splitstream_tail::config::BackendChoice;
use splitstream_tail::edge::{EdgeOptions, RunningEdge};
use splitstream_tail::metrics::EdgeMetrics;
use splitstream_tail::model::ServedModel;
use splitstream_transport::{
    Client, ClientConfig, ServerConfig, ServerIdentity, ServerTrust, StreamConfig, TokenStore,
};

/// Arguments of `splitstream demo`.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  cargo run --release                 # the demo, from a fresh clone
  splitstream demo --frames 100       # fewer frames per mode")]
pub(crate) struct Args {
    /// The demo folder (test/*.jpg, test/labels.csv, demo_vit.safetensors when trained).
    #[arg(long, value_name = "DIR")]
    assets: Option<PathBuf>,
    /// Frames per mode (at most the test set's 300).
    #[arg(long, value_name = "N", default_value_t = 300)]
    frames: usize,
}

impl Default for Args {
    fn default() -> Self {
        Self {
            assets: None,
            frames: 300,
        }
    }
}

const MODEL_NAME: &str = "demo-vit";
const DEVICE_ID: &str = "demo-device";

struct Sample {
    payload: Payload,
    label: usize,
    file: String,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(demo(args))
}

fn assets_dir(given: Option<PathBuf>) -> PathBuf {
    given.unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo"))
}

fn load_samples(dir: &Path, max: usize) -> anyhow::Result<Vec<Sample>> {
    let test = dir.join("test");
    let labels = test.join("labels.csv");
    let text = std::fs::read_to_string(&labels).with_context(|| {
        format!(
            "cannot read {}: run from the project folder or give --assets",
            labels.display()
        )
    })?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        if out.len() >= max {
            break;
        }
        let mut cols = line.split(',');
        let (Some(file), Some(label)) = (cols.next(), cols.next()) else {
            bail!(
                "{} line {}: expected file,label,class",
                labels.display(),
                n + 1
            );
        };
        let label: usize = label
            .trim()
            .parse()
            .with_context(|| format!("{} line {}: label {label:?}", labels.display(), n + 1))?;
        let image = splitstream_models::preprocess::load_rgb(test.join(file))?;
        out.push(Sample {
            payload: Payload::Image(image),
            label,
            file: file.to_owned(),
        });
    }
    if out.is_empty() {
        bail!("{} lists no images", labels.display());
    }
    Ok(out)
}

fn token() -> String {
    use std::hash::{BuildHasher, Hasher};
    // A fresh random token per run (std's randomly keyed SipHash); it never leaves
    // this process.
    (0..2)
        .map(|i| {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(i);
            format!("{:016x}", h.finish())
        })
        .collect()
}

struct ModeRun {
    label: String,
    logits: Vec<Vec<f32>>,
    latency_ms: Vec<f32>,
    bytes: u64,
    fallbacks: u64,
}

async fn demo(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = assets_dir(args.assets);
    let samples = load_samples(&dir, args.frames.max(1))?;
    let trained_path = dir.join("demo_vit.safetensors");
    let (bytes, source, trained) = if trained_path.exists() {
        let b = std::fs::read(&trained_path)
            .with_context(|| format!("cannot read {}", trained_path.display()))?;
        (b, trained_path.display().to_string(), true)
    } else {
        (
            seeded_vit_safetensors(&DEMO_VIT, 7),
            "seeded ViT (in memory)".to_owned(),
            false,
        )
    };
    let heads = Some(DEMO_VIT.num_heads);
    // One CPU thread each: the edge and the device share this machine's cores.
    let (model, id) = load_model(MODEL_NAME, bytes.clone(), &source, heads, 1)?;
    let served = ServedModel::from_bytes(MODEL_NAME, bytes, &source, heads, BackendChoice::Cpu, 1)?;
    let depth = model.config().depth;
    let middle = depth / 2;
    println!(
        "splitstream demo: {} images, model {source} ({} blocks, {} classes)",
        samples.len(),
        depth,
        model.config().num_classes
    );
    if !trained {
        println!(
            "NOTE: no trained model at {}: this run uses an UNTRAINED seeded ViT, so accuracy is \
             not meaningful; the table reports agreement with local instead.",
            trained_path.display()
        );
    }

    let mut tokens = TokenStore::new();
    let token = token();
    tokens.insert(DEVICE_ID, &token);
    let identity = ServerIdentity::self_signed(&["localhost"])?;
    let server = ServerConfig::new(([127, 0, 0, 1], 0).into(), identity, tokens);
    let metrics = Arc::new(EdgeMetrics::new());
    let edge = RunningEdge::start(server, vec![served], EdgeOptions::default(), metrics)?;
    println!(
        "edge on {} (QUIC, self-signed certificate, fingerprint {})",
        edge.local_addr(),
        edge.fingerprint()
    );

    let modes = [
        ("local".to_owned(), RunMode::Local),
        (
            format!("split@{middle} lossless"),
            RunMode::Split {
                point: middle,
                codec: CodecChoice::Lossless,
            },
        ),
        (
            format!("split@{middle} u8"),
            RunMode::Split {
                point: middle,
                codec: CodecChoice::U8,
            },
        ),
        (
            "offload jpeg".to_owned(),
            RunMode::Offload {
                jpeg: JpegSettings::default(),
            },
        ),
    ];
    let mut runs = Vec::new();
    for (label, mode) in modes {
        let client = match mode.wire() {
            None => None,
            Some((split, codec)) => {
                let stream = StreamConfig {
                    model: id.clone(),
                    split,
                    codec,
                };
                let cfg = ClientConfig::new(
                    edge.local_addr(),
                    ServerTrust::Pinned(edge.fingerprint()),
                    DEVICE_ID,
                    token.clone(),
                    stream,
                );
                Some(Arc::new(Client::connect(cfg).await?))
            }
        };
        let mut device = Device::new(model.clone(), mode, client.clone(), Duration::from_secs(2));
        let mut run = ModeRun {
            label,
            logits: Vec::new(),
            latency_ms: Vec::new(),
            bytes: 0,
            fallbacks: 0,
        };
        for (i, s) in samples.iter().enumerate() {
            let frame = Frame {
                index: i as u64,
                captured: Instant::now(),
                captured_wall: SystemTime::now(),
                source: Arc::from(s.file.as_str()),
                payload: s.payload.clone(),
            };
            let r = device.process(&frame).await;
            run.latency_ms.push(r.record.total_ms as f32);
            run.bytes += r.record.bytes_sent;
            run.fallbacks += u64::from(r.record.fallback.is_some());
            run.logits.push(r.logits);
        }
        drop(device);
        if let Some(c) = client.and_then(|c| Arc::try_unwrap(c).ok()) {
            c.close().await;
        }
        runs.push(run);
    }
    let largest_batch = edge
        .counters()
        .largest_batch
        .load(std::sync::atomic::Ordering::Relaxed);
    edge.shutdown().await;

    let reference = &runs[0].logits;
    let quality = if trained {
        "accuracy"
    } else {
        "agree w/ local"
    };
    println!();
    println!(
        "| {:<20} | {:>14} | {:>13} | {:>8} | {:>8} | {:>8} | {:>11} | {:>9} |",
        "mode", quality, "max |dlogit|", "p50 ms", "p95 ms", "p99 ms", "bytes/frame", "fallbacks"
    );
    println!(
        "|{}|",
        [22, 16, 15, 10, 10, 10, 13, 11]
            .map(|w| "-".repeat(w))
            .join("|")
    );
    for run in &runs {
        let n = run.logits.len().max(1);
        let (agree, max_diff) = compare(reference, &run.logits);
        let q = if trained {
            let correct = run
                .logits
                .iter()
                .zip(&samples)
                .filter(|(l, s)| argmax(l) == Some(s.label))
                .count();
            format!("{:.1}%", 100.0 * correct as f64 / n as f64)
        } else {
            format!("{:.1}%", 100.0 * agree as f64 / n as f64)
        };
        let p = Percentiles::of(&run.latency_ms);
        println!(
            "| {:<20} | {:>14} | {:>13.2e} | {:>8.2} | {:>8.2} | {:>8.2} | {:>11.0} | {:>9} |",
            run.label,
            q,
            max_diff,
            p.p50,
            p.p95,
            p.p99,
            run.bytes as f64 / n as f64,
            run.fallbacks
        );
    }
    println!();
    println!(
        "{} frames per mode; largest edge batch {largest_batch}; total {:.1} s",
        samples.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn argmax(v: &[f32]) -> Option<usize> {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
}

/// Frames whose top-1 equals the reference's, and the largest logit difference.
fn compare(reference: &[Vec<f32>], other: &[Vec<f32>]) -> (usize, f32) {
    let mut agree = 0;
    let mut max_diff = 0f32;
    for (a, b) in reference.iter().zip(other) {
        if argmax(a).is_some() && argmax(a) == argmax(b) {
            agree += 1;
        }
        for (x, y) in a.iter().zip(b) {
            max_diff = max_diff.max((x - y).abs());
        }
    }
    (agree, max_diff)
}
