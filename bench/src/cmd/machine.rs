//! `splitstream-bench machine`: measures this machine into a cost-model profile (TOML):
//! peak GFLOP/s per instruction set and thread count, read bandwidth and latency of
//! each cache level and the DRAM, the clock, and how close the CPU backend's own ops
//! come to those peaks (its `[backend.cpu]` fit); with `--wgpu`, the wgpu backend's fit
//! on its adapter too. See `docs/costmodel.md`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use splitstream_models::backend::cpu::{CpuBackend, PARALLEL_MIN_ELEMS};
use splitstream_models::backend::{Backend, Conv2dSpec};
use splitstream_models::cost::probe::{self, ProbeIsa};
use splitstream_models::cost::profile::{
    BackendFit, Backends, ComputeRow, GpuFit, MachineInfo, MemoryLevel,
};
use splitstream_models::cost::{CostModel, OpCost, Profile, Target};
use splitstream_models::DeviceTensor;
use splitstream_models::{Activation, HostTensor};

use crate::stats::median;

/// Arguments of `splitstream-bench machine`.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  # a few seconds; the profile on stdout
  splitstream-bench machine

  # longer runs, into a file, with the wgpu backend's fit on its adapter too
  splitstream-bench machine --precise --wgpu --out profile.toml

  # then: predicted against measured, per layer
  splitstream-bench costmodel --profile profile.toml")]
pub(crate) struct Args {
    /// Write the profile here (default: stdout).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Longer runs and more repetitions (about half a minute).
    #[arg(long)]
    precise: bool,
    /// Threads for the CPU backend's fit (0: every core).
    #[arg(long, default_value_t = 0, value_name = "N")]
    threads: usize,
    /// The machine's name in the profile (default: /proc/cpuinfo's model name).
    #[arg(long, value_name = "TEXT")]
    name: Option<String>,
    /// Also fit the wgpu backend (WGPU_ADAPTER_NAME / WGPU_BACKEND pick the adapter).
    #[arg(long)]
    wgpu: bool,
}

/// How long each probe runs.
struct Budget {
    compute: Duration,
    memory: Duration,
    latency: Duration,
    reps: usize,
    dram_bytes: usize,
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned())
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let b = if args.precise {
        Budget {
            compute: Duration::from_millis(400),
            memory: Duration::from_millis(300),
            latency: Duration::from_millis(300),
            reps: 5,
            dram_bytes: 512 << 20,
        }
    } else {
        Budget {
            compute: Duration::from_millis(80),
            memory: Duration::from_millis(60),
            latency: Duration::from_millis(60),
            reps: 3,
            dram_bytes: 96 << 20,
        }
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (freq_mhz, freq_source) = probe::frequency_mhz()
        .map(|(f, s)| (f, s.to_owned()))
        .unwrap_or((
            1000.0,
            "unknown (no cpufreq, no cpu MHz): 1000 assumed".to_owned(),
        ));
    tracing_free_log(&format!(
        "{cores} cores at {freq_mhz:.0} MHz ({freq_source})"
    ));

    let mut compute = Vec::new();
    for isa in ProbeIsa::available() {
        for threads in 1..=cores {
            let gflops = probe::peak_gflops(isa, threads, b.compute, b.reps);
            tracing_free_log(&format!(
                "peak {} x{threads}: {gflops:.1} GFLOP/s",
                isa.name()
            ));
            compute.push(ComputeRow {
                isa: isa.name().to_owned(),
                threads,
                gflops,
            });
        }
    }

    let caches = probe::cache_levels();
    if caches.is_empty() {
        tracing_free_log("no cache sizes in sysfs: DRAM only");
    }
    let mut memory = Vec::new();
    let mut inner = 0u64;
    for c in &caches {
        let mut read_gbs = Vec::new();
        for threads in 1..=cores {
            // Well inside this level, well outside the one inside it; a shared level
            // is split between the threads.
            let per_thread = if c.per_core {
                c.size_bytes / 2
            } else {
                c.size_bytes / (2 * threads as u64)
            };
            let bytes = per_thread.max(inner * 2).max(4096) as usize;
            read_gbs.push(probe::read_bandwidth(bytes, threads, b.memory, b.reps));
        }
        let lat_bytes = (c.size_bytes / 2).max(inner * 2).max(4096) as usize;
        let latency_ns = probe::latency_ns(lat_bytes, b.latency);
        tracing_free_log(&format!(
            "L{} {} KiB{}: {:.1} ns, {:?} GB/s",
            c.level,
            c.size_bytes >> 10,
            if c.per_core { " per core" } else { " shared" },
            latency_ns,
            read_gbs
                .iter()
                .map(|g| format!("{g:.0}"))
                .collect::<Vec<_>>()
        ));
        memory.push(MemoryLevel {
            level: format!("L{}", c.level),
            size_bytes: c.size_bytes,
            per_core: c.per_core,
            latency_ns,
            read_gbs,
        });
        inner = c.size_bytes;
    }
    let dram_total = b.dram_bytes.max(inner as usize * 4);
    let read_gbs = (1..=cores)
        .map(|t| probe::read_bandwidth(dram_total / t, t, b.memory * 2, b.reps))
        .collect::<Vec<_>>();
    let latency_ns = probe::latency_ns(dram_total, b.latency * 2);
    tracing_free_log(&format!("DRAM: {latency_ns:.1} ns, {read_gbs:.1?} GB/s"));
    memory.push(MemoryLevel {
        level: "DRAM".into(),
        size_bytes: 0,
        per_core: false,
        latency_ns,
        read_gbs,
    });

    let threads = if args.threads == 0 {
        cores
    } else {
        args.threads
    };
    let backend = CpuBackend::new(threads)?;
    let isa = ProbeIsa::of_backend(backend.isa()).name().to_owned();
    let mut profile = Profile {
        machine: MachineInfo {
            name: args.name.clone().unwrap_or_else(cpu_name),
            cores,
            freq_mhz,
            freq_source,
            source: format!(
                "measured by splitstream-bench machine{} in {:.0} s",
                if args.precise { " --precise" } else { "" },
                started.elapsed().as_secs_f64()
            ),
        },
        compute,
        memory,
        backend: Backends {
            cpu: Some(BackendFit {
                isa,
                gemm_efficiency: 1.0,
                conv_efficiency: 1.0,
                depthwise_efficiency: 1.0,
                stream_efficiency: 1.0,
                op_overhead_us: 0.0,
                parallel_min_elems: PARALLEL_MIN_ELEMS as u64,
            }),
            wgpu: None,
        },
    };
    let fit = fit_backend(&backend, &profile, Target::Cpu { threads }, args.precise)?;
    profile.backend.cpu = profile.backend.cpu.take().map(|c| BackendFit {
        gemm_efficiency: fit.gemm_efficiency,
        conv_efficiency: fit.conv_efficiency,
        depthwise_efficiency: fit.depthwise_efficiency,
        stream_efficiency: fit.stream_efficiency,
        op_overhead_us: fit.overhead_us,
        ..c
    });
    tracing_free_log(&format!(
        "cpu backend x{threads}: GEMM at {:.2} of peak, conv {:.2}, depthwise {:.3}, \
         streaming at {:.2} of peak, {:.2} us per op",
        fit.gemm_efficiency,
        fit.conv_efficiency,
        fit.depthwise_efficiency,
        fit.stream_efficiency,
        fit.overhead_us
    ));
    if args.wgpu {
        let gpu = splitstream_models::BackendChoice::Wgpu
            .open_wgpu()?
            .context("no wgpu adapter")?;
        let adapter = gpu.describe();
        let g = fit_gpu(&gpu, args.precise)?;
        tracing_free_log(&format!(
            "wgpu on {adapter}: {:.1} GFLOP/s, {:.1} GB/s, {:.1} us per op",
            g.gemm_gflops, g.stream_gbs, g.op_overhead_us
        ));
        profile.backend.wgpu = Some(GpuFit { adapter, ..g });
    }
    profile.machine.source = format!(
        "measured by splitstream-bench machine{} in {:.0} s",
        if args.precise { " --precise" } else { "" },
        started.elapsed().as_secs_f64()
    );
    profile
        .validate()
        .context("the measured profile is inconsistent")?;
    let text = format!(
        "# splitstream cost-model profile of this machine (splitstream-bench machine).\n\
         # Figures from a shared or loaded machine are lower than the machine's own.\n{}",
        profile.to_toml()?
    );
    match &args.out {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("profile written to {}", path.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}

/// Progress on stderr (the profile may go to stdout).
fn tracing_free_log(line: &str) {
    eprintln!("machine: {line}");
}

/// Deterministic values in [-1, 1).
fn noise(shape: &[usize], seed: u64) -> anyhow::Result<HostTensor> {
    let n: usize = shape.iter().product();
    let mut s = seed | 1;
    let data = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    Ok(HostTensor::new(shape.to_vec(), data)?)
}

/// Seconds per call of `op`, run `calls` times back to back and synchronised once by
/// a readback of the last result: the median of `reps` such runs.
fn time_calls<B: Backend>(
    be: &B,
    calls: usize,
    reps: usize,
    op: impl Fn() -> anyhow::Result<B::Tensor> + Send + Sync,
) -> anyhow::Result<f64> {
    let run = || -> anyhow::Result<f64> {
        be.scope(|| {
            let t0 = Instant::now();
            let mut last = op()?;
            for _ in 1..calls {
                last = op()?;
            }
            be.readback(&last)?;
            Ok(t0.elapsed().as_secs_f64() / calls as f64)
        })
    };
    run()?; // warm-up: buffers, pipelines, pages
    let mut t = Vec::with_capacity(reps);
    for _ in 0..reps {
        t.push(run()?);
    }
    median(&t).context("no timings")
}

struct Fit {
    gemm_efficiency: f64,
    conv_efficiency: f64,
    depthwise_efficiency: f64,
    stream_efficiency: f64,
    overhead_us: f64,
}

/// Fits the backend's efficiencies and per-op overhead with its own ops, against what
/// the model predicts at efficiency 1 and no overhead: the overhead from a tiny add,
/// streaming from adds sized for each memory level, GEMM from linears of transformer
/// and CNN sizes (none of them a layer of the models `costmodel` checks).
fn fit_backend<B: Backend>(
    be: &B,
    profile: &Profile,
    target: Target,
    precise: bool,
) -> anyhow::Result<Fit> {
    let reps = if precise { 15 } else { 5 };
    let ideal = CostModel::new(profile, target)?;
    let tiny = be.upload(&noise(&[1, 8], 1)?)?;
    let overhead = time_calls(be, 200, reps, || Ok(be.add(&tiny, &tiny)?))?;

    let threads = match target {
        Target::Cpu { threads } => threads,
        Target::Wgpu => 1,
    };
    let mut stream = Vec::new();
    let levels = &profile.memory;
    for (i, l) in levels.iter().enumerate() {
        // Three tensors of `n` elements (a + b -> out) inside this level.
        let cap = if l.is_dram() {
            levels
                .get(i.wrapping_sub(1))
                .map_or(1 << 22, |p| p.capacity(threads) * 4)
        } else {
            l.capacity(threads) / 2
        };
        let n = ((cap / 12) as usize).clamp(1024, 8 << 20);
        let a = be.upload(&noise(&[1, n], 2)?)?;
        let bb = be.upload(&noise(&[1, n], 3)?)?;
        let calls = (4 << 20) / n + 2;
        let t = time_calls(be, calls, reps, || Ok(be.add(&a, &bb)?))? - overhead;
        let c = OpCost::elementwise(
            splitstream_models::cost::OpKind::Binary,
            &[&[1, n], &[1, n]],
            &[1, n],
            1,
        );
        let p = ideal.predict_op(&c, 0);
        if t > 0.0 {
            stream.push(p.memory_s / t);
        }
    }
    let mut gemm = Vec::new();
    for (m, k, n) in [
        (96, 320, 320),
        (160, 320, 1280),
        (256, 640, 640),
        (64, 1024, 256),
    ] {
        let x = be.upload(&noise(&[m, k], 4)?)?;
        let layer = be.prepare_linear(&noise(&[n, k], 5)?, Some(&noise(&[n], 6)?))?;
        let t = time_calls(be, 8, reps, || {
            Ok(be.linear(&x, &layer, Activation::Identity)?)
        })? - overhead;
        let c = OpCost::linear(&[m, k], k, n, true, Activation::Identity);
        let p = ideal.predict_op(&c, c.weight_bytes);
        if t > 0.0 {
            gemm.push(p.compute_s / t);
        }
    }
    // Convolutions: a 3x3 and a pointwise layer of a small CNN, a patchifying stem;
    // depthwise 3x3 and 5x5.
    let mut conv = Vec::new();
    let mut depthwise = Vec::new();
    for (c, o, hw, k, stride, groups) in [
        (32, 32, 56, 3, 1, 1),
        (64, 128, 28, 1, 1, 1),
        (3, 48, 224, 4, 4, 1),
        (64, 64, 56, 3, 1, 64),
        (128, 128, 28, 5, 1, 128),
    ] {
        let x = be.upload(&noise(&[1, c, hw, hw], 7)?)?;
        let spec =
            Conv2dSpec::new([stride, stride], [k / 2 * usize::from(stride == 1); 2]).groups(groups);
        let layer = be.prepare_conv2d(
            &noise(&[o, c / groups, k, k], 8)?,
            Some(&noise(&[o], 9)?),
            spec,
        )?;
        let y = be.conv2d(&x, &layer)?;
        let out = y.shape().to_vec();
        let t = time_calls(be, 4, reps, || Ok(be.conv2d(&x, &layer)?))? - overhead;
        let cost = OpCost::conv2d(&[1, c, hw, hw], &out, [o, c / groups, k, k], true);
        let p = ideal.predict_op(&cost, cost.weight_bytes);
        if t > 0.0 {
            if groups == 1 {
                &mut conv
            } else {
                &mut depthwise
            }
            .push(p.compute_s / t);
        }
    }
    Ok(Fit {
        conv_efficiency: median(&conv).context("no convolution timing")?.min(1.0),
        depthwise_efficiency: median(&depthwise).context("no depthwise timing")?.min(1.0),
        gemm_efficiency: median(&gemm).context("no GEMM timing")?.min(1.0),
        stream_efficiency: median(&stream).context("no streaming timing")?.min(1.0),
        overhead_us: overhead * 1e6,
    })
}

/// The wgpu backend's achieved GEMM GFLOP/s, stream GB/s and per-op overhead.
fn fit_gpu<B: Backend>(be: &B, precise: bool) -> anyhow::Result<GpuFit> {
    let reps = if precise { 9 } else { 3 };
    let tiny = be.upload(&noise(&[1, 8], 1)?)?;
    let overhead = time_calls(be, 100, reps, || Ok(be.add(&tiny, &tiny)?))?;
    let n = 4 << 20;
    let a = be.upload(&noise(&[1, n], 2)?)?;
    let bb = be.upload(&noise(&[1, n], 3)?)?;
    let t = time_calls(be, 8, reps, || Ok(be.add(&a, &bb)?))? - overhead;
    let stream_gbs = (3 * 4 * n) as f64 / t.max(1e-9) / 1e9;
    let (m, k, nn) = (256, 768, 768);
    let x = be.upload(&noise(&[m, k], 4)?)?;
    let layer = be.prepare_linear(&noise(&[nn, k], 5)?, None)?;
    let t = time_calls(be, 8, reps, || {
        Ok(be.linear(&x, &layer, Activation::Identity)?)
    })? - overhead;
    let gemm_gflops = (2 * m * k * nn) as f64 / t.max(1e-9) / 1e9;
    Ok(GpuFit {
        adapter: String::new(),
        gemm_gflops,
        stream_gbs,
        op_overhead_us: overhead * 1e6,
    })
}
