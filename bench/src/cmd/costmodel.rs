//! `splitstream-bench costmodel`: the cost model's per-layer prediction against
//! measurement, for every model family that loads here.
//!
//! A model is loaded on the [`Counting`] wrapper of the chosen backend. Counting
//! `head(x, point)` for each split point gives the op count before each point; one
//! `forward(x)` gives the ops of the pass with their shapes (hence their costs); a
//! layer (segment) is the ops between two split points. Measured: on the CPU each op
//! call is timed inside the wrapper and a segment's time is the median over passes of
//! its ops' sum; on wgpu, whose ops return before they run, a segment's time is the
//! difference between the median times of `head` at its two ends (each synchronised
//! by its readback). Predicted: the [`CostModel`] on the profile.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use splitstream_models::backend::cpu::CpuBackend;
use splitstream_models::backend::Backend;
use splitstream_models::cli::{BackendArgs, ThreadsArgs};
use splitstream_models::cost::{segment_of, CostModel, Counting, OpCost, Profile, Target};
use splitstream_models::net::{load_net, InputSpec, NetOptions};
use splitstream_models::weights::Weights;
use splitstream_models::{HostTensor, SplitNet};

use crate::stats::median;

/// Arguments of `splitstream-bench costmodel`.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  # this machine's profile, then every family that loads, on the CPU
  splitstream-bench machine --out profile.toml
  splitstream-bench costmodel --profile profile.toml --json-out costmodel.json

  # one model, 2 threads, predicted at a lower clock (DVFS)
  splitstream-bench costmodel --profile profile.toml --model assets/demo/demo_vit.safetensors \\
      --threads 2 --freq-mhz 1800

  # the wgpu backend (the profile needs its fit: machine --wgpu)
  splitstream-bench costmodel --profile profile.toml --backend wgpu")]
#[command(mut_arg("backend", |a| a.default_value("cpu")))]
pub(crate) struct Args {
    /// The machine profile (splitstream-bench machine, or assets/profiles/*.toml).
    #[arg(long, value_name = "FILE")]
    profile: PathBuf,
    /// A model to check (a safetensors checkpoint, or an LLM's Hugging Face folder);
    /// repeat for several. Default: the demo ViT, FemtoDet, SpikePoint's fixture and
    /// the Llama micro reference, those present.
    #[arg(long, value_name = "PATH")]
    model: Vec<PathBuf>,
    #[command(flatten)]
    backend: BackendArgs,
    #[command(flatten)]
    threads: ThreadsArgs,
    /// Timed passes per model (after 2 untimed).
    #[arg(long, default_value_t = 15, value_name = "N")]
    reps: usize,
    /// Predict at this core clock, MHz (default: the profile's).
    #[arg(long, value_name = "MHZ")]
    freq_mhz: Option<f64>,
    /// Also write the whole result as one JSON document here.
    #[arg(long, value_name = "FILE")]
    json_out: Option<PathBuf>,
}

fn default_models() -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let shared = std::env::var_os("SPLITSTREAM_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("../shared"));
    [
        root.join("assets/demo/demo_vit.safetensors"),
        root.join("assets/femtodet/femtodet.safetensors"),
        root.join("models/tests/fixtures/spikepoint/snn.safetensors"),
        shared.join("reference/llm/llama_micro"),
    ]
    .into_iter()
    .filter(|p| p.exists())
    .collect()
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    if args.reps == 0 {
        bail!("--reps must be at least 1");
    }
    let profile = Profile::load(&args.profile)?;
    let models = if args.model.is_empty() {
        default_models()
    } else {
        args.model.clone()
    };
    if models.is_empty() {
        bail!("no model found; give --model");
    }
    let mut results = Vec::new();
    match args.backend.choice.open_wgpu()? {
        Some(gpu) => {
            let device = gpu.describe();
            let cm = model_for(&profile, Target::Wgpu, args.freq_mhz)?;
            for m in &models {
                results.push(check(gpu.clone(), m, &cm, &device, false, &args)?);
            }
        }
        None => {
            let cpu = CpuBackend::new(args.threads.count)?;
            let device = format!("{:?} x{}", cpu.isa(), cpu.threads());
            let target = Target::Cpu {
                threads: cpu.threads(),
            };
            let cm = model_for(&profile, target, args.freq_mhz)?;
            for m in &models {
                results.push(check(cpu.clone(), m, &cm, &device, true, &args)?);
            }
        }
    }
    let doc = json!({
        "bench": "costmodel",
        "profile": profile.machine.name,
        "profile_file": args.profile.display().to_string(),
        "backend": args.backend.choice,
        "threads": args.threads.count,
        "freq_mhz": args.freq_mhz.unwrap_or(profile.machine.freq_mhz),
        "reps": args.reps,
        "models": results,
    });
    println!("{doc}");
    if let Some(path) = &args.json_out {
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn model_for(
    profile: &Profile,
    target: Target,
    freq: Option<f64>,
) -> anyhow::Result<CostModel<'_>> {
    let cm = CostModel::new(profile, target)?;
    Ok(match freq {
        Some(f) => cm.at_frequency(f)?,
        None => cm,
    })
}

fn load<B: Backend>(be: B, path: &std::path::Path) -> anyhow::Result<Arc<dyn SplitNet>> {
    if path.is_dir() {
        return Ok(splitstream_models::llama::load_llm(be, path, Some(128))?);
    }
    let weights = Weights::from_file(path)?;
    Ok(load_net(be, &weights, &NetOptions::default())?)
}

/// A deterministic input for the model's input spec, batch 1.
fn input(spec: &InputSpec) -> anyhow::Result<HostTensor> {
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32
    };
    Ok(match spec {
        InputSpec::Image { channels, size, .. } => {
            let n = channels * size * size;
            HostTensor::new(
                [1, *channels, *size, *size],
                (0..n).map(|_| next() * 4.0 - 2.0).collect(),
            )?
        }
        InputSpec::EventWindow {
            channels,
            height,
            width,
            ..
        } => {
            let n = channels * height * width;
            HostTensor::new(
                [1, *channels, *height, *width],
                (0..n).map(|_| next()).collect(),
            )?
        }
        InputSpec::EventPoints {
            points,
            width,
            height,
            window_us,
        } => {
            let mut data = Vec::with_capacity(points * 4);
            for i in 0..*points {
                data.push((next() * *width as f32).floor());
                data.push((next() * *height as f32).floor());
                data.push((i as f64 / *points as f64 * *window_us as f64) as f32);
                data.push(if next() < 0.5 { 0.0 } else { 1.0 });
            }
            HostTensor::new([1, *points, 4], data)?
        }
        InputSpec::Tokens { vocab, max_len } => {
            let n = (*max_len).min(32);
            HostTensor::new(
                [1, n],
                (0..n).map(|i| ((i * 7 + 3) % vocab) as f32).collect(),
            )?
        }
        other => bail!("no input for {other:?}"),
    })
}

/// Median absolute relative error of `pred` against `meas`.
fn mape(pairs: &[(f64, f64)]) -> Option<f64> {
    let e: Vec<f64> = pairs
        .iter()
        .filter(|(_, m)| *m > 0.0)
        .map(|(p, m)| (p - m).abs() / m)
        .collect();
    median(&e)
}

fn check<B: Backend>(
    be: B,
    path: &std::path::Path,
    cm: &CostModel<'_>,
    device: &str,
    per_op_timing: bool,
    args: &Args,
) -> anyhow::Result<Value> {
    let counting = Counting::new(be, per_op_timing);
    let net =
        load(counting.clone(), path).with_context(|| format!("loading {}", path.display()))?;
    counting.take(); // the load's uploads
    let x = input(net.input())?;
    let points: Vec<String> = net.split_points().iter().map(|p| p.name.clone()).collect();
    let state = || net.new_state();
    // Ops before each split point.
    let mut bounds = Vec::new();
    for p in &points {
        let mut st = state();
        net.head(&x, p, st.as_deref_mut())?;
        bounds.push(
            counting
                .take()
                .iter()
                .filter(|r| !r.cost.kind.is_transfer())
                .count(),
        );
    }
    let walls = std::cell::RefCell::new(Vec::new());
    let pass = || -> anyhow::Result<Vec<splitstream_models::cost::OpRecord>> {
        let mut st = state();
        let t0 = Instant::now();
        net.forward(&x, st.as_deref_mut())?;
        walls.borrow_mut().push(t0.elapsed().as_secs_f64());
        Ok(counting.take())
    };
    pass()?;
    pass()?;
    let first = pass()?;
    let costs: Vec<OpCost> = first.iter().map(|r| r.cost).collect();
    let seg = segment_of(&costs, &bounds);
    let segments = points.len() + 1;
    let mut runs = vec![first];
    for _ in 1..args.reps {
        let r = pass()?;
        if r.len() != costs.len() || r.iter().zip(&costs).any(|(a, c)| a.cost != *c) {
            bail!(
                "{}: the pass ran different ops on repetition",
                path.display()
            );
        }
        runs.push(r);
    }
    let measured: Vec<f64> = if per_op_timing {
        (0..segments)
            .map(|s| {
                let sums: Vec<f64> = runs
                    .iter()
                    .map(|r| {
                        r.iter()
                            .zip(&seg)
                            .filter(|(_, g)| **g == Some(s))
                            .map(|(o, _)| o.seconds.unwrap_or(0.0))
                            .sum()
                    })
                    .collect();
                median(&sums).unwrap_or(f64::NAN)
            })
            .collect()
    } else {
        // Prefix differences of synchronised head times.
        let mut ends = Vec::new();
        for p in &points {
            ends.push(time_median(args.reps, || {
                let mut st = state();
                net.head(&x, p, st.as_deref_mut())?;
                Ok(())
            })?);
        }
        ends.push(time_median(args.reps, || {
            let mut st = state();
            net.forward(&x, st.as_deref_mut())?;
            Ok(())
        })?);
        counting.take();
        let mut prev = 0.0;
        ends.iter()
            .map(|&e| {
                let d = e - prev;
                prev = e;
                d
            })
            .collect()
    };
    let preds = cm.predict(&costs);
    let predicted: Vec<f64> = (0..segments)
        .map(|s| {
            preds
                .iter()
                .zip(&seg)
                .filter(|(_, g)| **g == Some(s))
                .map(|(p, _)| p.seconds)
                .sum()
        })
        .collect();
    let names: Vec<String> = (0..segments)
        .map(
            |s| match (s.checked_sub(1).and_then(|i| points.get(i)), points.get(s)) {
                (None, Some(b)) => format!("input..{b}"),
                (Some(a), Some(b)) => format!("{a}..{b}"),
                (Some(a), None) => format!("{a}..output"),
                (None, None) => "whole".into(),
            },
        )
        .collect();
    let flops: Vec<u64> = (0..segments)
        .map(|s| {
            costs
                .iter()
                .zip(&seg)
                .filter(|(_, g)| **g == Some(s))
                .map(|(c, _)| c.flops)
                .sum()
        })
        .collect();
    // Per op kind: where the time goes, and where the model misses.
    let mut kinds: Vec<(String, f64, f64, usize)> = Vec::new();
    let per_op_measured: Vec<f64> = (0..costs.len())
        .map(|i| {
            let t: Vec<f64> = runs.iter().filter_map(|r| r.get(i)?.seconds).collect();
            median(&t).unwrap_or(0.0)
        })
        .collect();
    for (i, c) in costs.iter().enumerate() {
        if c.kind.is_transfer() {
            continue;
        }
        let k = format!("{:?}", c.kind);
        let at = match kinds.iter().position(|e| e.0 == k) {
            Some(at) => at,
            None => {
                kinds.push((k, 0.0, 0.0, 0));
                kinds.len() - 1
            }
        };
        kinds[at].1 += preds[i].seconds;
        kinds[at].2 += per_op_measured[i];
        kinds[at].3 += 1;
    }
    // Layers with no op (a split point right after another) are left out.
    let rows: Vec<usize> = (0..segments)
        .filter(|&s| flops[s] > 0 || measured[s] > 0.0)
        .collect();
    let pairs: Vec<(f64, f64)> = rows.iter().map(|&s| (predicted[s], measured[s])).collect();
    let total_p: f64 = pairs.iter().map(|p| p.0).sum();
    let total_m: f64 = pairs.iter().map(|p| p.1).sum();
    let layer_err = mape(&pairs);
    let model_err = (total_m > 0.0).then(|| (total_p - total_m).abs() / total_m);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // How much of a pass the timed ops cover: the rest (host-side work of the family,
    // the wrapper's own bookkeeping) is outside the model.
    let wall = median(&walls.borrow()).unwrap_or(f64::NAN);
    let op_sums: Vec<f64> = runs
        .iter()
        .map(|r| r.iter().filter_map(|o| o.seconds).sum::<f64>())
        .collect();
    let op_sum = median(&op_sums).unwrap_or(f64::NAN);
    let coverage = per_op_timing.then(|| op_sum / wall);
    eprintln!(
        "\n{name} ({}, {} ops, {device}; forward {:.3} ms{})",
        net.family(),
        costs.iter().filter(|c| !c.kind.is_transfer()).count(),
        wall * 1e3,
        coverage.map_or(String::new(), |c| format!(
            ", {:.0}% of it in backend ops",
            c * 100.0
        ))
    );
    eprintln!(
        "{:<28} {:>10} {:>12} {:>12} {:>8}",
        "layer", "MFLOP", "predicted ms", "measured ms", "error"
    );
    let mut layers = Vec::new();
    for &s in &rows {
        let err = (predicted[s] - measured[s]) / measured[s];
        eprintln!(
            "{:<28} {:>10.2} {:>12.4} {:>12.4} {:>+7.1}%",
            names[s],
            flops[s] as f64 / 1e6,
            predicted[s] * 1e3,
            measured[s] * 1e3,
            err * 100.0
        );
        layers.push(json!({
            "layer": names[s],
            "flops": flops[s],
            "predicted_ms": predicted[s] * 1e3,
            "measured_ms": measured[s] * 1e3,
            "error": err,
        }));
    }
    eprintln!(
        "{:<28} {:>10.2} {:>12.4} {:>12.4} {:>+7.1}%   median |error| per layer {:.1}%",
        "model",
        flops.iter().sum::<u64>() as f64 / 1e6,
        total_p * 1e3,
        total_m * 1e3,
        (total_p - total_m) / total_m * 100.0,
        layer_err.unwrap_or(f64::NAN) * 100.0
    );
    if per_op_timing {
        eprintln!("  by op kind (predicted / measured ms, calls):");
        for (k, p, m, n) in &kinds {
            eprintln!("  {k:<16} {:>9.4} {:>9.4} {n:>4}", p * 1e3, m * 1e3);
        }
    }
    let by_kind: Vec<Value> = kinds
        .iter()
        .map(|(k, p, m, n)| json!({"kind": k, "calls": n, "predicted_ms": p * 1e3, "measured_ms": if per_op_timing { json!(m * 1e3) } else { Value::Null }}))
        .collect();
    Ok(json!({
        "by_kind": by_kind,
        "model": name,
        "family": net.family().name(),
        "device": device,
        "ops": costs.len(),
        "forward_ms": wall * 1e3,
        "op_coverage": coverage,
        "layers": layers,
        "predicted_ms": total_p * 1e3,
        "measured_ms": total_m * 1e3,
        "median_abs_error_per_layer": layer_err,
        "abs_error_model": model_err,
    }))
}

fn time_median(reps: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    f()?;
    let mut t = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t0 = Instant::now();
        f()?;
        t.push(t0.elapsed().as_secs_f64());
    }
    median(&t).context("no timings")
}
