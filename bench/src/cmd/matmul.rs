//! `splitstream-bench matmul`: GFLOP/s of the backends' dense layer (`linear`, bias
//! included) on large square products and on the ViT block's shapes, each backend
//! measured in the same run so their ratio means something.
//!
//! The wgpu figure is throughput: `--iters` products are recorded back to back and
//! submitted together, then the run waits for the GPU; the time per product is the
//! total over `--iters`. The CPU figure is the time of one call. Both are medians over
//! `--runs`. On a software adapter (lavapipe) the wgpu numbers measure a CPU emulating
//! a GPU and mean nothing for real GPUs.

use std::time::Instant;

use anyhow::{bail, Context};
use serde::Serialize;
use splitstream_models::backend::cpu::CpuBackend;
use splitstream_models::backend::wgpu::{WgpuBackend, WgpuOptions};
use splitstream_models::cli::ThreadsArgs;
use splitstream_models::{Activation, Backend, HostTensor};

/// Arguments of `splitstream-bench matmul`.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  splitstream-bench matmul                          # CPU and wgpu side by side
  splitstream-bench matmul --backend wgpu --sizes 1024,4096 --peak-gflops 67000 --json
  WGPU_ADAPTER_NAME=llvmpipe splitstream-bench matmul --sizes 512 --batch 1")]
pub(crate) struct Args {
    /// Backends to measure, comma-separated: cpu, wgpu (any adapter, software too).
    #[arg(long, value_delimiter = ',', default_value = "cpu,wgpu")]
    backend: Vec<BackendName>,
    /// Square sizes n for [n, n] x [n, n]. Default: 1024, plus 4096 when the wgpu
    /// adapter is a hardware GPU (4096 is minutes on a small CPU).
    #[arg(long, value_delimiter = ',')]
    sizes: Option<Vec<usize>>,
    /// ViT embedding width for the block shapes (192 DeiT-Tiny, 384 Small, 768 Base).
    #[arg(long, default_value_t = 192)]
    dim: usize,
    /// Batch sizes for the ViT shapes (rows = 197 x batch).
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    batch: Vec<usize>,
    /// Products per timed run.
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Timed runs; the median is reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    #[command(flatten)]
    threads: ThreadsArgs,
    /// The device's fp32 peak in GFLOP/s, to report each figure as a fraction of it.
    #[arg(long)]
    peak_gflops: Option<f64>,
    /// One JSON document instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BackendName {
    Cpu,
    Wgpu,
}

#[derive(Serialize)]
struct Shape {
    name: String,
    m: usize,
    k: usize,
    n: usize,
}

#[derive(Serialize)]
struct Row {
    shape: String,
    m: usize,
    k: usize,
    n: usize,
    backend: &'static str,
    median_ms: f64,
    gflops: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    fraction_of_peak: Option<f64>,
    /// wgpu GFLOP/s over CPU GFLOP/s on the same shape, when both ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    ratio_to_cpu: Option<f64>,
}

#[derive(Serialize)]
struct Report {
    bench: &'static str,
    cpu_threads: Option<usize>,
    wgpu_adapter: Option<String>,
    wgpu_software: Option<bool>,
    iters: usize,
    runs: usize,
    results: Vec<Row>,
}

fn shapes(args: &Args, sizes: &[usize]) -> Vec<Shape> {
    let mut out: Vec<Shape> = sizes
        .iter()
        .map(|&n| Shape {
            name: format!("square{n}"),
            m: n,
            k: n,
            n,
        })
        .collect();
    let d = args.dim;
    for &b in &args.batch {
        let m = 197 * b;
        for (name, k, n) in [
            ("qkv", d, 3 * d),
            ("proj", d, d),
            ("fc1", d, 4 * d),
            ("fc2", 4 * d, d),
        ] {
            out.push(Shape {
                name: format!("vit{d}.{name}.b{b}"),
                m,
                k,
                n,
            });
        }
    }
    out
}

fn tensor(shape: &[usize], seed: u32) -> anyhow::Result<HostTensor> {
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|i| {
            ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 16) as f32 / 65536.0 - 0.5
        })
        .collect();
    Ok(HostTensor::new(shape.to_vec(), data)?)
}

/// Median milliseconds per product on `be`; `sync` waits for queued work.
fn measure<B: Backend>(
    be: &B,
    s: &Shape,
    iters: usize,
    runs: usize,
    sync: &dyn Fn(&B, &B::Tensor) -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    let x = be.upload(&tensor(&[s.m, s.k], 1)?)?;
    let layer = be.prepare_linear(&tensor(&[s.n, s.k], 2)?, Some(&tensor(&[s.n], 3)?))?;
    // Warm-up: compiles kernels, fills the buffer pool.
    let y = be.linear(&x, &layer, Activation::Identity)?;
    sync(be, &y)?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        let mut last = None;
        for _ in 0..iters {
            last = Some(be.linear(&x, &layer, Activation::Identity)?);
        }
        if let Some(y) = &last {
            sync(be, y)?;
        }
        times.push(start.elapsed().as_secs_f64() * 1e3 / iters as f64);
    }
    Ok(crate::stats::median(&times).unwrap_or(f64::NAN))
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    if args.iters == 0 || args.runs == 0 {
        bail!("--iters and --runs must be at least 1");
    }
    let cpu = match args.backend.contains(&BackendName::Cpu) {
        true => Some(CpuBackend::new(args.threads.count).context("starting the CPU backend")?),
        false => None,
    };
    let gpu = match args.backend.contains(&BackendName::Wgpu) {
        true => Some(
            WgpuBackend::new(&WgpuOptions::from_env())
                .context("opening a wgpu adapter (or pass --backend cpu)")?,
        ),
        false => None,
    };
    let sizes = args.sizes.clone().unwrap_or_else(|| match &gpu {
        Some(g) if !g.is_software() => vec![1024, 4096],
        _ => vec![1024],
    });
    if !args.json {
        if let Some(g) = &gpu {
            eprintln!("wgpu adapter: {}", g.describe());
            if g.is_software() {
                eprintln!("note: a software adapter; its timings say nothing about GPUs");
            }
        }
    }
    let mut results = Vec::new();
    for s in shapes(&args, &sizes) {
        let flops = 2.0 * (s.m * s.k * s.n) as f64;
        let mut cpu_gflops = None;
        let row = |backend: &'static str, ms: f64, cpu_g: Option<f64>| {
            let gflops = flops / (ms * 1e6);
            Row {
                shape: s.name.clone(),
                m: s.m,
                k: s.k,
                n: s.n,
                backend,
                median_ms: ms,
                gflops,
                fraction_of_peak: args.peak_gflops.map(|p| gflops / p),
                ratio_to_cpu: cpu_g.map(|c| gflops / c),
            }
        };
        if let Some(c) = &cpu {
            // The CPU backend is synchronous: returning is finishing.
            let ms = measure(c, &s, args.iters, args.runs, &|_, _| Ok(()))?;
            let r = row("cpu", ms, None);
            cpu_gflops = Some(r.gflops);
            results.push(r);
        }
        if let Some(g) = &gpu {
            let ms = measure(g, &s, args.iters, args.runs, &|g: &WgpuBackend, _| {
                Ok(g.synchronize()?)
            })?;
            results.push(row("wgpu", ms, cpu_gflops));
        }
        if !args.json {
            for r in results
                .iter()
                .rev()
                .take_while(|r| r.shape == s.name)
                .collect::<Vec<_>>()
                .iter()
                .rev()
            {
                eprintln!(
                    "{:<22} [{:>6} x {:>5}] x [{:>5} x {:>5}]  {:<4} {:>9.3} ms  {:>8.1} GFLOP/s{}",
                    r.shape,
                    r.m,
                    r.k,
                    r.k,
                    r.n,
                    r.backend,
                    r.median_ms,
                    r.gflops,
                    r.ratio_to_cpu
                        .map(|x| format!("  ({x:.2}x cpu)"))
                        .unwrap_or_default()
                );
            }
        }
    }
    let report = Report {
        bench: "matmul",
        cpu_threads: cpu.as_ref().map(|c| c.threads()),
        wgpu_adapter: gpu.as_ref().map(|g| g.describe()),
        wgpu_software: gpu.as_ref().map(|g| g.is_software()),
        iters: args.iters,
        runs: args.runs,
        results,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
