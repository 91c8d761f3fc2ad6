//! `splitstream-bench model`: latency and peak memory of any image model the loader
//! knows (ViT/DeiT, FemtoDet: the whole forward, a detector's decode and NMS
//! included) on the CPU or wgpu backend, beside onnxruntime on the same model's ONNX
//! export, in the same run.
//!
//! Ours runs in this process (peak RSS = this process's VmHWM, which holds nothing
//! but the model and the bench); onnxruntime runs in a python child
//! (`python/bench_onnxruntime.py`) that reports its own VmHWM. Each measurement prints
//! one JSON line.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use splitstream_models::backend::cpu::CpuBackend;
use splitstream_models::backend::Backend;
use splitstream_models::cli::{BackendArgs, ThreadsArgs, WeightsArgs};
use splitstream_models::net::{load_net, NetOptions};
use splitstream_models::vit::find_arch;
use splitstream_models::weights::Weights;
use splitstream_models::HostTensor;
use splitstream_models::SplitNet;

use crate::stats::{median, peak_rss_kib, percentile};

/// Arguments of `splitstream-bench model`.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  # DeiT-Tiny, batch 1 and 8, 2 threads, against onnxruntime, 3 runs each
  splitstream-bench model --weights ../shared/reference/deit_tiny_patch16_224.safetensors \\
      --batch 1 --batch 8 --threads 2 --runs 3

  # ours only
  splitstream-bench model --weights model.safetensors --arch vit_small_patch16_224 --no-peer

  # FemtoDet at 416, batch 1 and 8, against onnxruntime on its export (femtodet.onnx)
  splitstream-bench model --weights femtodet.safetensors --batch 1 --batch 8 --runs 3

  # on the GPU through wgpu (WGPU_ADAPTER_NAME / WGPU_BACKEND pick the adapter)
  splitstream-bench model --weights deit_small_patch16_224.safetensors --backend wgpu \\
      --batch 1 --batch 8 --batch 64 --no-peer")]
// The CPU with 2 threads by default: the comparison with onnxruntime is like for like.
#[command(mut_arg("backend", |a| a.default_value("cpu")))]
#[command(mut_arg("threads", |a| a.default_value("2")))]
pub(crate) struct Args {
    #[command(flatten)]
    model: WeightsArgs,
    /// timm architecture name (default: the weights file's stem when it is one).
    #[arg(long, value_name = "NAME")]
    arch: Option<String>,
    /// Batch size; repeat for several.
    #[arg(long, default_values_t = [1], value_name = "B")]
    batch: Vec<usize>,
    /// Timed iterations per measurement.
    #[arg(long, default_value_t = 50, value_name = "N")]
    iters: usize,
    /// Untimed iterations before timing.
    #[arg(long, default_value_t = 5, value_name = "N")]
    warmup: usize,
    // --backend runs ours; --threads is both's (ours: worker pool; onnxruntime:
    // intra-op threads).
    #[command(flatten)]
    backend: BackendArgs,
    #[command(flatten)]
    threads: ThreadsArgs,
    /// Measurements per batch size (ours and the peer's alternate).
    #[arg(long, default_value_t = 1, value_name = "R")]
    runs: usize,
    /// ONNX export for onnxruntime (default: the weights path with `.onnx`).
    #[arg(long, value_name = "FILE")]
    onnx: Option<PathBuf>,
    /// Skip onnxruntime.
    #[arg(long)]
    no_peer: bool,
    /// Python interpreter with onnxruntime and numpy.
    #[arg(long, default_value = "python3", value_name = "EXE")]
    python: String,
    /// Only JSON lines on stdout (no summary on stderr).
    #[arg(long)]
    json: bool,
}

/// Deterministic noise input (a xorshift stream mapped to [-2, 2)).
fn input(batch: usize, size: usize) -> anyhow::Result<HostTensor> {
    let n = batch * 3 * size * size;
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let data = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
        })
        .collect();
    Ok(HostTensor::new([batch, 3, size, size], data)?)
}

fn measure_ours(net: &dyn SplitNet, batch: usize, args: &Args) -> anyhow::Result<Value> {
    let x = input(batch, image_size(net)?)?;
    for _ in 0..args.warmup {
        net.forward(&x, None)?;
    }
    let mut times = Vec::with_capacity(args.iters);
    for _ in 0..args.iters {
        let t0 = Instant::now();
        let logits = net.forward(&x, None)?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
        std::hint::black_box(logits);
    }
    times.sort_by(f64::total_cmp);
    Ok(json!({
        // The python peer's rule (stats::percentile), so the two medians compare.
        "median_ms": percentile(&times, 0.5),
        "p90_ms": percentile(&times, 0.9),
        "min_ms": times.first(),
        "peak_rss_kib": peak_rss_kib(None),
    }))
}

/// The side of a square image input.
fn image_size(net: &dyn SplitNet) -> anyhow::Result<usize> {
    match net.input().item_shape().as_slice() {
        [3, h, w] if h == w => Ok(*h),
        other => bail!("the bench runs square RGB image models; this one takes {other:?}"),
    }
}

fn measure_peer(onnx: &Path, batch: usize, size: usize, args: &Args) -> anyhow::Result<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../python/bench_onnxruntime.py");
    let out = Command::new(&args.python)
        .arg(&script)
        .arg("--model")
        .arg(onnx)
        .args(["--batch", &batch.to_string()])
        .args(["--iters", &args.iters.to_string()])
        .args(["--warmup", &args.warmup.to_string()])
        .args(["--threads", &args.threads.count.to_string()])
        .args(["--size", &size.to_string()])
        .output()
        .with_context(|| format!("cannot start {} {}", args.python, script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let value: Value = serde_json::from_str(line).with_context(|| {
        format!(
            "onnxruntime peer gave no JSON (exit {}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })?;
    if let Some(err) = value.get("error") {
        bail!("onnxruntime peer: {err}");
    }
    Ok(value)
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    if args.iters == 0 || args.runs == 0 || args.batch.contains(&0) {
        bail!("--iters, --runs and --batch must be at least 1");
    }
    let arch = args.arch.clone().or_else(|| {
        let stem = args.model.weights.file_stem()?.to_str()?;
        find_arch(stem).map(|a| a.name.to_string())
    });
    let load_start = Instant::now();
    let weights = Weights::from_file(&args.model.weights)?;
    let options = NetOptions {
        arch: arch.clone(),
        num_heads: args.model.heads,
        split: None,
    };
    let cpu = |threads| -> anyhow::Result<(CpuBackend, Value)> {
        let backend = CpuBackend::new(threads)?;
        let isa = json!(format!("{:?}", backend.isa()));
        Ok((backend, isa))
    };
    match args.backend.choice.open_wgpu()? {
        Some(backend) => {
            let adapter = json!(backend.describe());
            bench_on(backend, adapter, weights, &options, arch, load_start, &args)
        }
        None => {
            let (backend, isa) = cpu(args.threads.count)?;
            bench_on(backend, isa, weights, &options, arch, load_start, &args)
        }
    }
}

/// Loads the model on `backend` and measures it (and the peer) for every batch size.
/// `device` says what ran: the CPU's instruction set or the GPU adapter.
fn bench_on<B: Backend>(
    backend: B,
    device: Value,
    weights: Weights,
    options: &NetOptions,
    arch: Option<String>,
    load_start: Instant,
    args: &Args,
) -> anyhow::Result<()> {
    let backend_name = backend.name();
    let net = load_net(backend, &weights, options).with_context(|| {
        // The models crate names no flags: the hint is this command's.
        format!(
            "loading {} (a checkpoint of another architecture? name it with --arch)",
            args.model.weights.display()
        )
    })?;
    drop(weights);
    let load_ms = load_start.elapsed().as_secs_f64() * 1e3;
    let onnx = match (&args.onnx, args.no_peer) {
        (_, true) => None,
        (Some(p), false) => Some(p.clone()),
        (None, false) => {
            let p = args.model.weights.with_extension("onnx");
            if !p.is_file() {
                bail!(
                    "no ONNX export at {}; give --onnx or --no-peer",
                    p.display()
                );
            }
            Some(p)
        }
    };
    let size = image_size(net.as_ref())?;
    let model_name = arch
        .clone()
        .unwrap_or_else(|| net.family().name().to_owned());
    for &batch in &args.batch {
        let (mut ours_medians, mut peer_medians) = (Vec::new(), Vec::new());
        for run in 0..args.runs {
            let ours = measure_ours(net.as_ref(), batch, args)?;
            let peer = match &onnx {
                Some(p) => Some(measure_peer(p, batch, size, args)?),
                None => None,
            };
            let ours_ms = ours["median_ms"].as_f64().unwrap_or(f64::NAN);
            ours_medians.push(ours_ms);
            let ratio = peer.as_ref().and_then(|p| {
                let peer_ms = p["median_ms"].as_f64()?;
                peer_medians.push(peer_ms);
                Some(ours_ms / peer_ms)
            });
            let line = json!({
                "bench": "model",
                "model": model_name,
                "weights": args.model.weights.display().to_string(),
                "backend": backend_name,
                "device": device,
                "batch": batch,
                "threads": args.threads.count,
                "iters": args.iters,
                "run": run,
                "load_ms": load_ms,
                "median_ms": ours["median_ms"],
                "p90_ms": ours["p90_ms"],
                "min_ms": ours["min_ms"],
                "peak_rss_kib": ours["peak_rss_kib"],
                "peer": peer,
                "ratio_median_vs_peer": ratio,
            });
            println!("{line}");
        }
        if !args.json {
            let ours = median(&ours_medians).unwrap_or(f64::NAN);
            if peer_medians.is_empty() {
                eprintln!(
                    "batch {batch}: ours {ours:.2} ms (median of {} runs)",
                    args.runs
                );
            } else {
                let peer = median(&peer_medians).unwrap_or(f64::NAN);
                eprintln!(
                    "batch {batch}: ours {ours:.2} ms, onnxruntime {peer:.2} ms, ratio {:.3} \
                     (median of {} runs)",
                    ours / peer,
                    args.runs
                );
            }
        }
    }
    Ok(())
}
