//! `splitstream-bench e2e`: one edge and N devices on loopback over real QUIC, each
//! device offered frames at a set rate for a set time, in each mode: `local` (the
//! peer: no edge at all), `split` at a point with a codec, `offload` as JPEG.
//!
//! The edge is the real `splitstream-edge` binary in its own process (a fresh one per
//! cell), so its peak memory is its own: `VmHWM` from `/proc/PID/status`, read just
//! before it is stopped. Its batch-size histogram comes from its own `/metrics`
//! (`splitstream_batch_size`, cumulative buckets 1, 2, 4, ... turned into counts per
//! bucket). The devices are `head::device::Device`s in this process, sharing its CPU
//! with each other (and, on one machine, with the edge): a loopback run measures the
//! system's work, not a real link.
//!
//! Each device takes a frame every 1/fps (a tick missed while the previous frame is
//! still running is skipped, as a camera would drop it), so `frames/s` below the
//! offered rate means the system could not keep up. Latency is the device's
//! `total_ms` (preprocessing, head, encoding, transfer and the edge's queue and tail).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use serde::Serialize;
use splitstream_head::device::{load_model, CodecChoice, Device, DeviceModel, RunMode};
use splitstream_head::offload::JpegSettings;
use splitstream_head::record::mark_frame;
use splitstream_head::source::{Frame, Payload};
use splitstream_head::stats::Percentiles;
use splitstream_models::synthetic::{seeded_vit_safetensors, DEMO_VIT};
use splitstream_power::record::{RecordOptions, Recorder};
use splitstream_transport::{
    Client, ClientConfig, Fingerprint, ModelId, ServerTrust, StreamConfig,
};

/// Arguments of `splitstream-bench e2e`.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  splitstream-bench e2e                                  # 1, 8, 32 devices, every mode
  splitstream-bench e2e --devices 4 --fps 10 --seconds 10 --modes split --codec u4
  splitstream-bench e2e --json --report target/e2e-report  # JSON lines, PNG plots
  splitstream-bench e2e --devices 2 --seconds 3 --record e2e.jsonl  # + run records

Needs the splitstream-edge binary beside this one (cargo build --release -p
splitstream-tail --bin splitstream-edge) or --edge-bin PATH.")]
pub(crate) struct Args {
    /// Print JSON lines instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write report.json and PNG plots (latency over time, bytes per frame) here.
    #[arg(long, value_name = "DIR")]
    report: Option<PathBuf>,
    /// Numbers of devices, one cell each.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1, 8, 32])]
    devices: Vec<usize>,
    /// Frames per second offered by each device.
    #[arg(long, default_value_t = 5.0)]
    fps: f64,
    /// Seconds each cell runs.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Modes to run (local is the peer the others are compared with).
    #[arg(
        long,
        value_delimiter = ',',
        default_values_t = vec!["local".to_owned(), "split".to_owned(), "offload".to_owned()],
        value_parser = clap::builder::PossibleValuesParser::new(["local", "split", "offload"]),
    )]
    modes: Vec<String>,
    /// Weights (safetensors); default: assets/demo/demo_vit.safetensors when present,
    /// else the seeded demo ViT.
    #[arg(long, value_name = "FILE")]
    weights: Option<PathBuf>,
    /// Split point for split mode (default: the bottleneck's, else the middle block).
    #[arg(long, value_name = "K")]
    at: Option<usize>,
    /// Codec for split mode.
    #[arg(long, default_value = "u8", value_parser = super::codec_parser())]
    codec: CodecChoice,
    /// The splitstream-edge binary (default: beside this executable).
    #[arg(long, value_name = "PATH")]
    edge_bin: Option<PathBuf>,
    /// Edge CPU threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    edge_threads: usize,
    /// Edge batching: most frames per batch (default: the edge's).
    #[arg(long)]
    max_batch: Option<usize>,
    /// Edge batching: longest wait for company, ms (default: the edge's).
    #[arg(long)]
    max_wait_ms: Option<u64>,
    /// Repetitions of each cell; figures are medians over them.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Write a run record of the whole bench here (every device's frames as stages,
    /// joined with this process's power, memory, temperatures and CPU frequency), and
    /// one per edge process beside it (`RUN-edge-<devices>dev-<mode>-r<run>.jsonl`:
    /// its decode and tail). `splitstream report FILE` draws them.
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
}

const TOKEN: &str = "e2e-bench-token-0123456789abcdef";
const MODEL_NAME: &str = "bench-vit";

/// One device's frame.
#[derive(Clone, Copy, Serialize)]
struct Sample {
    /// Seconds since the cell started.
    t_s: f64,
    latency_ms: f32,
    bytes: u64,
    fallback: bool,
}

/// One cell's figures.
#[derive(Serialize, Clone)]
struct Row {
    bench: &'static str,
    devices: usize,
    mode: String,
    /// `block1-bottleneck`, `block1`, `offload`, or `-` for local.
    split: String,
    codec: String,
    fps_offered_per_device: f64,
    seconds: f64,
    frames: u64,
    frames_offered: u64,
    frames_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// p50 of this mode over local's p50 with the same devices (< 1: faster).
    p50_vs_local: Option<f64>,
    bytes_per_frame: f64,
    fallbacks: u64,
    /// Edge batches by size bucket (upper bound: count), from its /metrics.
    edge_batch_sizes: BTreeMap<String, u64>,
    edge_mean_batch: Option<f64>,
    /// The edge process's peak resident memory (VmHWM), MiB.
    edge_peak_rss_mib: Option<f64>,
    runs: usize,
}

struct Cell {
    row: Row,
    samples: Vec<Sample>,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let positive = |v: f64| v.is_finite() && v > 0.0;
    if !positive(args.fps) || !positive(args.seconds) {
        bail!("--fps and --seconds must be positive");
    }
    if args.devices.iter().any(|&n| n == 0 || n > 1024) {
        bail!("--devices: each count must be in 1..=1024");
    }
    let codec = args.codec;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(bench(args, codec))
}

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn edge_binary(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(p) => p,
        None => std::env::current_exe()
            .context("cannot find this executable")?
            .with_file_name(format!("splitstream-edge{}", std::env::consts::EXE_SUFFIX)),
    };
    if !path.is_file() {
        bail!(
            "{} not found: build it (cargo build --release -p splitstream-tail --bin \
             splitstream-edge) or give --edge-bin PATH",
            path.display()
        );
    }
    Ok(path)
}

fn load_frames(n: usize) -> anyhow::Result<Vec<Payload>> {
    let dir = project_root().join("assets/demo/test");
    (0..n)
        .map(|i| {
            let path = dir.join(format!("{i:04}.jpg"));
            splitstream_models::preprocess::load_rgb(&path)
                .map(Payload::Image)
                .with_context(|| format!("cannot read the demo image {}", path.display()))
        })
        .collect()
}

async fn bench(args: Args, codec: CodecChoice) -> anyhow::Result<()> {
    let edge_bin = if args.modes.iter().any(|m| m != "local") {
        Some(edge_binary(args.edge_bin.clone())?)
    } else {
        None
    };
    let default_weights = project_root().join("assets/demo/demo_vit.safetensors");
    let (bytes, weights_name) = match &args.weights {
        Some(w) => (
            std::fs::read(w).with_context(|| format!("cannot read {}", w.display()))?,
            w.display().to_string(),
        ),
        None if default_weights.is_file() => (
            std::fs::read(&default_weights)
                .with_context(|| format!("cannot read {}", default_weights.display()))?,
            default_weights.display().to_string(),
        ),
        None => (
            seeded_vit_safetensors(&DEMO_VIT, 7),
            "seeded demo ViT".to_owned(),
        ),
    };
    // One thread per device model: many devices share this process's cores.
    let (model, id) = load_model(MODEL_NAME, bytes.clone(), &weights_name, None, 1)?;
    let point = args
        .at
        .or(model.bottleneck().map(|b| b.depth))
        .unwrap_or(model.max_depth() / 2);
    let at = model.split_at(point)?;
    let frames = Arc::new(load_frames(32)?);
    let scratch = std::env::temp_dir().join(format!("splitstream-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)
        .with_context(|| format!("cannot create {}", scratch.display()))?;
    let weights_path = scratch.join(format!("{MODEL_NAME}.safetensors"));
    std::fs::write(&weights_path, &bytes).context("cannot write the weights for the edge")?;
    let max_devices = args.devices.iter().copied().max().unwrap_or(1);
    let tokens_path = scratch.join("tokens.txt");
    let tokens: String = (0..max_devices)
        .map(|i| format!("dev-{i} {TOKEN}\n"))
        .collect();
    std::fs::write(&tokens_path, tokens).context("cannot write the token file")?;

    if !args.json {
        println!(
            "e2e: model {weights_name}; split {} codec {}; {} fps per device for {} s; \
             edge {}",
            at.name,
            codec.name(),
            args.fps,
            args.seconds,
            edge_bin
                .as_ref()
                .map_or("-".to_owned(), |p| p.display().to_string())
        );
    }
    let recorder = match &args.record {
        Some(path) => Some(Recorder::create(path, RecordOptions::default()).context("--record")?),
        None => None,
    };
    let mut cells = Vec::new();
    for &n in &args.devices {
        let mut local_p50 = None;
        for mode_name in &args.modes {
            let mode = match mode_name.as_str() {
                "local" => RunMode::Local,
                "split" => RunMode::Split {
                    at: at.clone(),
                    codec,
                },
                _ => RunMode::Offload {
                    jpeg: JpegSettings::default(),
                },
            };
            let mut runs = Vec::new();
            for r in 0..args.runs.max(1) {
                let edge_record = args
                    .record
                    .as_deref()
                    .map(|p| edge_record_path(p, n, mode_name, r));
                let edge = match &edge_bin {
                    Some(bin) if mode.wire().is_some() => Some(EdgeProcess::spawn(
                        bin,
                        &weights_path,
                        &tokens_path,
                        &args,
                        edge_record.as_deref(),
                    )?),
                    _ => None,
                };
                let cell_started = Instant::now();
                let samples = run_devices(
                    n,
                    &model,
                    &id,
                    &mode,
                    edge.as_ref(),
                    &frames,
                    &args,
                    recorder.as_ref(),
                )
                .await?;
                if let Some(rec) = &recorder {
                    rec.stage(
                        &format!("phase:{n}dev {mode_name}"),
                        cell_started,
                        cell_started.elapsed(),
                        None,
                    );
                }
                let (hist, mean_batch, rss) = match edge {
                    Some(e) => {
                        let hist = e.batch_histogram().unwrap_or_else(|err| {
                            eprintln!("warning: edge metrics unreadable: {err:#}");
                            BTreeMap::new()
                        });
                        let rss = e.peak_rss_mib();
                        e.stop();
                        let (count, sum) = (hist.get("count").copied(), hist.get("sum").copied());
                        let mean = match (count, sum) {
                            (Some(c), Some(s)) if c > 0 => Some(s as f64 / c as f64),
                            _ => None,
                        };
                        let buckets = hist
                            .into_iter()
                            .filter(|(k, _)| k != "count" && k != "sum")
                            .collect();
                        (buckets, mean, rss)
                    }
                    None => (BTreeMap::new(), None, None),
                };
                runs.push((samples, hist, mean_batch, rss));
            }
            let cell = summarise(n, mode_name, &mode, codec, &args, runs, local_p50);
            if mode_name == "local" {
                local_p50 = Some(cell.row.p50_ms);
            }
            if args.json {
                println!("{}", serde_json::to_string(&cell.row)?);
            }
            cells.push(cell);
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    if let Some(rec) = recorder {
        let end = rec.finish().context("--record")?;
        eprintln!("{}", end.describe(rec.path()));
    }
    if !args.json {
        print_table(&cells);
    }
    if let Some(dir) = &args.report {
        write_report(dir, &cells)?;
        if !args.json {
            println!("report: {}", dir.display());
        }
    }
    Ok(())
}

type RunFigures = (Vec<Sample>, BTreeMap<String, u64>, Option<f64>, Option<f64>);

fn summarise(
    n: usize,
    mode_name: &str,
    mode: &RunMode,
    codec: CodecChoice,
    args: &Args,
    runs: Vec<RunFigures>,
    local_p50: Option<f64>,
) -> Cell {
    let mut p50 = Vec::new();
    let mut p99 = Vec::new();
    let mut fps = Vec::new();
    let mut bytes = Vec::new();
    let mut frames = Vec::new();
    let mut fallbacks = Vec::new();
    let mut means = Vec::new();
    let mut rss = Vec::new();
    let mut hist = BTreeMap::new();
    let mut samples = Vec::new();
    let count = runs.len();
    for (s, h, mean, r) in runs {
        let lat: Vec<f32> = s.iter().map(|x| x.latency_ms).collect();
        let p = Percentiles::of(&lat);
        p50.push(p.p50);
        p99.push(p.p99);
        fps.push(s.len() as f64 / args.seconds);
        frames.push(s.len() as f64);
        bytes.push(s.iter().map(|x| x.bytes as f64).sum::<f64>() / s.len().max(1) as f64);
        fallbacks.push(s.iter().filter(|x| x.fallback).count() as f64);
        means.extend(mean);
        rss.extend(r);
        // The histogram of the first run (runs differ little; medians of buckets
        // would not add up).
        if hist.is_empty() {
            hist = h;
        }
        if samples.is_empty() {
            samples = s;
        }
    }
    // Medians over runs; a cell without runs reports zeros.
    let median = |v: &[f64]| crate::stats::median(v).unwrap_or(0.0);
    let p50_ms = median(&p50);
    let split = match mode.wire() {
        Some((split, _)) => split,
        None => "-".to_owned(),
    };
    let row = Row {
        bench: "e2e",
        devices: n,
        mode: mode_name.to_owned(),
        split,
        codec: match mode {
            RunMode::Local | RunMode::Classic(_) => "-".to_owned(),
            RunMode::Split { .. } => codec.name().to_owned(),
            RunMode::Offload { .. } => "jpeg".to_owned(),
        },
        fps_offered_per_device: args.fps,
        seconds: args.seconds,
        frames: median(&frames) as u64,
        frames_offered: (args.fps * args.seconds).floor() as u64 * n as u64,
        frames_per_s: median(&fps),
        p50_ms,
        p99_ms: median(&p99),
        p50_vs_local: local_p50.filter(|&l| l > 0.0).map(|l| p50_ms / l),
        bytes_per_frame: median(&bytes),
        fallbacks: median(&fallbacks) as u64,
        edge_batch_sizes: hist,
        edge_mean_batch: (!means.is_empty()).then(|| median(&means)),
        edge_peak_rss_mib: (!rss.is_empty()).then(|| median(&rss)),
        runs: count,
    };
    Cell { row, samples }
}

/// Runs `n` devices for `args.seconds`, each offered `args.fps` frames per second.
/// `RUN.jsonl` -> `RUN-edge-<n>dev-<mode>-r<run>.jsonl` beside it.
fn edge_record_path(record: &Path, n: usize, mode: &str, run: usize) -> PathBuf {
    let stem = record.file_stem().and_then(|s| s.to_str()).unwrap_or("run");
    record.with_file_name(format!("{stem}-edge-{n}dev-{mode}-r{run}.jsonl"))
}

#[allow(clippy::too_many_arguments)]
async fn run_devices(
    n: usize,
    model: &DeviceModel,
    id: &ModelId,
    mode: &RunMode,
    edge: Option<&EdgeProcess>,
    frames: &Arc<Vec<Payload>>,
    args: &Args,
    recorder: Option<&Recorder>,
) -> anyhow::Result<Vec<Sample>> {
    let mut devices = Vec::with_capacity(n);
    for i in 0..n {
        let client = match (mode.wire(), edge) {
            (Some((split, codec)), Some(edge)) => {
                let cfg = ClientConfig::new(
                    edge.addr,
                    ServerTrust::Pinned(edge.fingerprint),
                    format!("dev-{i}"),
                    TOKEN,
                    StreamConfig {
                        model: id.clone(),
                        split,
                        codec,
                    },
                );
                Some(Arc::new(Client::connect(cfg).await.with_context(|| {
                    format!("device {i} could not open a session with the edge")
                })?))
            }
            _ => None,
        };
        devices.push(Device::new(
            model.clone(),
            mode.clone(),
            client,
            Duration::from_secs(2),
        ));
    }
    let started = Instant::now();
    let period = Duration::from_secs_f64(1.0 / args.fps);
    let end = started + Duration::from_secs_f64(args.seconds);
    let mut tasks = Vec::with_capacity(n);
    for (i, mut device) in devices.into_iter().enumerate() {
        let frames = frames.clone();
        let recorder = recorder.cloned();
        tasks.push(tokio::spawn(async move {
            // Devices start spread over one period, as independent cameras would.
            let offset = period.mul_f64(i as f64 / n as f64);
            let mut ticks =
                tokio::time::interval_at(tokio::time::Instant::from_std(started + offset), period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut out = Vec::new();
            let mut k = 0usize;
            loop {
                ticks.tick().await;
                if Instant::now() >= end {
                    break;
                }
                let payload = frames[(i + k) % frames.len()].clone();
                let frame = Frame {
                    index: k as u64,
                    captured: Instant::now(),
                    captured_wall: SystemTime::now(),
                    source: Arc::from("demo"),
                    payload,
                };
                k += 1;
                let r = device.process(&frame).await;
                if let Some(rec) = &recorder {
                    mark_frame(rec, frame.captured, &r.record);
                }
                out.push(Sample {
                    t_s: frame.captured.duration_since(started).as_secs_f64(),
                    latency_ms: r.record.total_ms as f32,
                    bytes: r.record.bytes_sent,
                    fallback: r.record.fallback.is_some(),
                });
            }
            out
        }));
    }
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await.context("a device task failed")?);
    }
    samples.sort_by(|a, b| a.t_s.total_cmp(&b.t_s));
    Ok(samples)
}

/// A `splitstream-edge` child process and what it printed at start.
struct EdgeProcess {
    child: Child,
    addr: std::net::SocketAddr,
    fingerprint: Fingerprint,
    metrics: std::net::SocketAddr,
}

impl EdgeProcess {
    fn spawn(
        bin: &Path,
        weights: &Path,
        tokens: &Path,
        args: &Args,
        record: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new(bin);
        if let Some(r) = record {
            cmd.arg("--record").arg(r);
        }
        cmd.arg("--weights")
            .arg(weights)
            .arg("--tokens")
            .arg(tokens)
            .args(["--name", MODEL_NAME, "--backend", "cpu"])
            .args(["--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
            .args(["--threads", &args.edge_threads.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(b) = args.max_batch {
            cmd.args(["--max-batch", &b.to_string()]);
        }
        if let Some(w) = args.max_wait_ms {
            cmd.args(["--max-wait-ms", &w.to_string()]);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let stdout = child.stdout.take().context("no edge stdout")?;
        let (mut addr, mut fingerprint, mut metrics) = (None, None, None);
        for line in BufReader::new(stdout).lines() {
            let line = line.context("reading the edge's output")?;
            if let Some(rest) = line.strip_prefix("listening on ") {
                addr = rest.split_whitespace().next().and_then(|a| a.parse().ok());
            } else if let Some(fp) = line.strip_prefix("certificate fingerprint ") {
                fingerprint = fp.trim().parse().ok();
            } else if let Some(rest) = line.strip_prefix("metrics on http://") {
                metrics = rest.split('/').next().and_then(|a| a.parse().ok());
                break;
            }
        }
        match (addr, fingerprint, metrics) {
            (Some(addr), Some(fingerprint), Some(metrics)) => Ok(Self {
                child,
                addr,
                fingerprint,
                metrics,
            }),
            _ => {
                let _ = child.kill();
                let status = child.wait().ok();
                bail!(
                    "the edge did not print its address, fingerprint and metrics address \
                     (exit {status:?}); run {} by hand to see why",
                    bin.display()
                )
            }
        }
    }

    /// `splitstream_batch_size` from the edge's `/metrics`: batches per bucket (`"1"`,
    /// `"2"`, `"4"`, ... meaning up to that size; `"+Inf"` above), plus `count` and
    /// `sum` of all batches.
    fn batch_histogram(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        let mut stream =
            std::net::TcpStream::connect_timeout(&self.metrics, Duration::from_secs(2))
                .context("cannot reach the edge's metrics")?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.metrics
        )?;
        let mut text = String::new();
        // The body is small (a few KiB); cap it anyway.
        stream.take(4 << 20).read_to_string(&mut text)?;
        let mut cumulative: Vec<(f64, String, u64)> = Vec::new();
        let mut out = BTreeMap::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("splitstream_batch_size") else {
                continue;
            };
            let Some((name, value)) = rest.rsplit_once(' ') else {
                continue;
            };
            let Ok(v) = value.trim().parse::<f64>() else {
                continue;
            };
            if name.starts_with("_bucket") {
                let le = name
                    .split("le=\"")
                    .nth(1)
                    .and_then(|s| s.split('"').next())
                    .unwrap_or("");
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap_or(f64::NAN)
                };
                if !bound.is_nan() {
                    // Several label sets (model, split) add up per bound.
                    match cumulative.iter_mut().find(|(b, _, _)| *b == bound) {
                        Some(e) => e.2 += v as u64,
                        None => cumulative.push((bound, le.to_owned(), v as u64)),
                    }
                }
            } else if name.starts_with("_count") {
                *out.entry("count".to_owned()).or_insert(0) += v as u64;
            } else if name.starts_with("_sum") {
                *out.entry("sum".to_owned()).or_insert(0) += v.round() as u64;
            }
        }
        cumulative.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut below = 0;
        for (_, le, c) in cumulative {
            let here = c.saturating_sub(below);
            below = c;
            if here > 0 {
                out.insert(le, here);
            }
        }
        Ok(out)
    }

    /// The process's peak resident set (VmHWM), MiB; `None` off Linux.
    fn peak_rss_mib(&self) -> Option<f64> {
        crate::stats::peak_rss_mib(Some(self.child.id()))
    }

    /// Stops the edge: SIGINT first, so it finishes its run record, then SIGKILL if it
    /// has not gone within five seconds.
    fn stop(mut self) {
        if let Some(pid) = i32::try_from(self.child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            if rustix::process::kill_process(pid, rustix::process::Signal::INT).is_ok() {
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = self.child.try_wait() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for EdgeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn print_table(cells: &[Cell]) {
    println!();
    println!(
        "| {:>7} | {:<8} | {:<18} | {:>9} | {:>8} | {:>8} | {:>8} | {:>11} | {:>9} | {:<26} | {:>9} |",
        "devices",
        "mode",
        "split/codec",
        "frames/s",
        "p50 ms",
        "p99 ms",
        "p50/loc",
        "bytes/frame",
        "fallbacks",
        "edge batches (size:n)",
        "edge MiB"
    );
    println!(
        "|{}|",
        [9, 10, 20, 11, 10, 10, 10, 13, 11, 28, 11]
            .map(|w| "-".repeat(w))
            .join("|")
    );
    for c in cells {
        let r = &c.row;
        let hist = if r.edge_batch_sizes.is_empty() {
            "-".to_owned()
        } else {
            r.edge_batch_sizes
                .iter()
                .map(|(k, v)| format!("{k}:{v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!(
            "| {:>7} | {:<8} | {:<18} | {:>9.1} | {:>8.1} | {:>8.1} | {:>8} | {:>11.0} | {:>9} | {:<26} | {:>9} |",
            r.devices,
            r.mode,
            format!("{} {}", r.split, r.codec),
            r.frames_per_s,
            r.p50_ms,
            r.p99_ms,
            r.p50_vs_local.map_or("-".to_owned(), |v| format!("{v:.2}")),
            r.bytes_per_frame,
            r.fallbacks,
            hist,
            r.edge_peak_rss_mib.map_or("-".to_owned(), |v| format!("{v:.1}")),
        );
    }
    println!();
    println!(
        "frames/s over all devices (offered: devices x fps); latency = the device's total \
         per frame; p50/loc = p50 over local's with the same devices; edge batches from its \
         /metrics (bucket upper bound: batches); edge MiB = the edge process's VmHWM"
    );
}

#[derive(Serialize)]
struct Report<'a> {
    rows: Vec<&'a Row>,
    samples: Vec<CellSamples<'a>>,
}

#[derive(Serialize)]
struct CellSamples<'a> {
    devices: usize,
    mode: &'a str,
    samples: &'a [Sample],
}

fn write_report(dir: &Path, cells: &[Cell]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let report = Report {
        rows: cells.iter().map(|c| &c.row).collect(),
        samples: cells
            .iter()
            .map(|c| CellSamples {
                devices: c.row.devices,
                mode: &c.row.mode,
                samples: &c.samples,
            })
            .collect(),
    };
    let json = dir.join("report.json");
    std::fs::write(&json, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("cannot write {}", json.display()))?;
    let fonts = crate::plot::load_font();
    if !fonts {
        crate::plot::note_without_font();
    }
    let mut devices: Vec<usize> = cells.iter().map(|c| c.row.devices).collect();
    devices.dedup();
    for n in devices {
        // Latency of every frame against its capture time, one colour per mode.
        let series: Vec<(&str, Vec<(f64, f64)>)> = cells
            .iter()
            .filter(|c| c.row.devices == n)
            .map(|c| {
                let points = c
                    .samples
                    .iter()
                    .map(|s| (s.t_s, f64::from(s.latency_ms)))
                    .collect();
                (c.row.mode.as_str(), points)
            })
            .collect();
        let path = dir.join(format!("latency_{n}dev.png"));
        crate::plot::scatter(
            &path,
            &format!("latency per frame, {n} device(s)"),
            ("time since start (s)", "latency (ms)"),
            &series,
            fonts,
        )
        .with_context(|| format!("cannot draw {}", path.display()))?;
    }
    let path = dir.join("bytes_per_frame.png");
    // Bytes sent per frame: one group per device count, one bar per mode.
    let mut modes: Vec<&str> = cells.iter().map(|c| c.row.mode.as_str()).collect();
    modes.sort_unstable();
    modes.dedup();
    let mut groups: Vec<(String, Vec<f64>)> = Vec::new();
    for c in cells {
        let label = format!("{} device(s)", c.row.devices);
        let at = match groups.iter().position(|g| g.0 == label) {
            Some(at) => at,
            None => {
                groups.push((label, vec![0.0; modes.len()]));
                groups.len() - 1
            }
        };
        if let Some(m) = modes.iter().position(|m| *m == c.row.mode) {
            groups[at].1[m] = c.row.bytes_per_frame;
        }
    }
    crate::plot::grouped_bars(
        &path,
        "bytes sent per frame",
        "bytes per frame",
        &modes,
        &groups,
        fonts,
    )
    .with_context(|| format!("cannot draw {}", path.display()))?;
    Ok(())
}
