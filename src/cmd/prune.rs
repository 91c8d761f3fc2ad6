//! `splitstream prune`: LPViT block pruning of a ViT without fine-tuning.
//!
//! Records every block layer's signal on calibration images (see
//! `splitstream_models::prune::criterion`), allocates per-layer block sparsity to each
//! FLOPs target by LPViT's equal-slope rule, and judges every target on held-out images
//! against the dense model (top-1 agreement, mean logit cosine), as `calibrate` does for
//! bottlenecks. The first target's model is written block-sparse (`-o`); it loads
//! anywhere a ViT checkpoint does and runs on the block-sparse kernels.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{ensure, Context};

use splitstream_models::backend::cpu::CpuBackend;
use splitstream_models::cli::{ThreadsArgs, WeightsArgs};
use splitstream_models::preprocess::{load_batch, EvalTransform};
use splitstream_models::prune::criterion::{allocate, layer_signals, CriterionOptions};
use splitstream_models::prune::write_block_sparse;
use splitstream_models::split::SplitMetadata;
use splitstream_models::vit::{Vit, VitOptions};
use splitstream_models::weights::Weights;

use super::calibrate::{find_images, split_images, Holdout};
use super::measure::argmax;

/// Arguments of `splitstream prune`.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  # 50% of the FLOPs in 16x16 blocks, judged beside 70% and 30%
  splitstream prune --weights deit_small.safetensors --flops 0.5,0.7,0.3 --block 16 \\
      --images photos/ -o deit_small_f50.safetensors")]
pub(crate) struct Args {
    #[command(flatten)]
    model: WeightsArgs,
    /// FLOPs targets as fractions of the dense model's; the FIRST is written.
    #[arg(long, value_name = "F[,F..]", value_delimiter = ',', required = true)]
    flops: Vec<f64>,
    /// Square block side (the weights' widths must be multiples of it).
    #[arg(long, default_value_t = 16, value_name = "B")]
    block: usize,
    /// Folder of calibration images (searched recursively).
    #[arg(long, value_name = "DIR")]
    images: PathBuf,
    /// Images held out to judge each target against the dense model: a count or a
    /// fraction.
    #[arg(long, value_name = "N|F", default_value = "0.25", value_parser = parse_holdout)]
    holdout: Holdout,
    /// Seed of the hold-out draw.
    #[arg(long, default_value_t = 0, value_name = "N")]
    seed: u64,
    /// Most calibration images used (LPViT uses 2,000).
    #[arg(long, default_value_t = 256, value_name = "N")]
    max_calib: usize,
    /// Leave out the hardware-aware power term.
    #[arg(long)]
    no_power: bool,
    /// Rank the final blocks by |W * G| (the curves' ranking) instead of |W| (what
    /// LPViT's repository ends up using).
    #[arg(long)]
    taylor_masks: bool,
    /// Where to write the pruned model of the first target.
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    /// Images per forward pass.
    #[arg(long, default_value_t = 8, value_name = "N")]
    batch: usize,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    threads: ThreadsArgs,
}

fn parse_holdout(text: &str) -> Result<Holdout, String> {
    super::calibrate::parse_holdout(text)
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    ensure!(!args.flops.is_empty(), "give at least one --flops target");
    for &f in &args.flops {
        ensure!(
            f > 0.0 && f <= 1.0,
            "--flops {f} must be a fraction of the dense model's FLOPs in (0, 1]"
        );
    }
    ensure!(args.block > 0, "--block must be at least 1");
    ensure!(args.batch > 0, "--batch must be at least 1");
    let images = find_images(&args.images)?;
    let (fit, test) = split_images(&images, args.holdout, args.seed)?;
    let fit: Vec<PathBuf> = fit.into_iter().take(args.max_calib.max(1)).collect();
    let weights = Weights::from_file(&args.model.weights)?;
    ensure!(
        weights.metadata_value("block_sparse").is_none(),
        "{} is already block-sparse; prune its dense original",
        args.model.weights.display()
    );
    let metadata = SplitMetadata::from_weights(&weights)?;
    let options = VitOptions {
        arch: None,
        num_heads: args.model.heads.or(metadata.num_heads),
        eps: None,
    };
    let be = CpuBackend::new(args.threads.count)?;
    let dense = Vit::load(be.clone(), &weights, &options)
        .with_context(|| format!("loading {}", args.model.weights.display()))?;
    let size = dense.config().image_size as u32;
    let transform = EvalTransform::for_checkpoint(size, weights.metadata_value("crop_pct"))?;
    let calib = load_batch(&fit, &transform)?;
    let t0 = std::time::Instant::now();
    let signals = layer_signals(&be, &weights, &options, &calib, args.batch, args.block)?;
    if !args.json {
        eprintln!(
            "signals of {} layers from {} calibration images in {:.1}s; judging on {} held-out",
            signals.len(),
            fit.len(),
            t0.elapsed().as_secs_f64(),
            test.len()
        );
    }
    // The dense model's logits on the held-out images.
    let mut want: Vec<Vec<f32>> = Vec::new();
    for chunk in test.chunks(args.batch) {
        let out = dense.run(&load_batch(chunk, &transform)?)?;
        let classes = out.shape().last().copied().unwrap_or(1).max(1);
        want.extend(out.data().chunks(classes).map(<[f32]>::to_vec));
    }
    let copts = CriterionOptions {
        block: args.block,
        power: !args.no_power,
        taylor_masks: args.taylor_masks,
        ..CriterionOptions::default()
    };
    let mut rows = Vec::new();
    for (t, &target) in args.flops.iter().enumerate() {
        let alloc = allocate(&weights, &signals, target, &copts);
        let masks: BTreeMap<String, Vec<bool>> = signals
            .iter()
            .zip(&alloc.masks)
            .map(|(s, m)| (s.layer.prefix.clone(), m.clone()))
            .collect();
        let bytes = write_block_sparse(
            &weights,
            &masks,
            [args.block, args.block],
            &[("flops_target", target.to_string())],
        )?;
        let size_bytes = bytes.len();
        let pruned_w = Weights::from_bytes(bytes.clone(), "pruned")?;
        let pruned = Vit::load(be.clone(), &pruned_w, &options)?;
        let (mut agree, mut cos, mut n) = (0usize, 0.0f64, 0usize);
        for (chunk, wanted) in test.chunks(args.batch).zip(want.chunks(args.batch)) {
            let out = pruned.run(&load_batch(chunk, &transform)?)?;
            let classes = out.shape().last().copied().unwrap_or(1).max(1);
            for (got, w) in out.data().chunks(classes).zip(wanted) {
                agree += usize::from(argmax(got) == argmax(w));
                cos += cosine(got, w);
                n += 1;
            }
        }
        let mean_sparsity = alloc.amounts.iter().sum::<f64>() / alloc.amounts.len().max(1) as f64;
        let row = serde_json::json!({
            "flops_target": target,
            "flops_reached": alloc.flops,
            "mean_layer_sparsity": mean_sparsity,
            "max_layer_sparsity": alloc.amounts.iter().copied().fold(0.0, f64::max),
            "beta": alloc.beta,
            "slope_log2": alloc.slope_log2,
            "top1_agreement": agree as f64 / n.max(1) as f64,
            "logit_cosine": cos / n.max(1) as f64,
            "held_out": n,
            "bytes": size_bytes,
            "layer_sparsity": signals.iter().zip(&alloc.amounts)
                .map(|(s, a)| (s.layer.prefix.clone(), *a))
                .collect::<BTreeMap<_, _>>(),
        });
        if t == 0 {
            std::fs::write(&args.output, &bytes)
                .with_context(|| format!("writing {}", args.output.display()))?;
        }
        if args.json {
            println!("{row}");
        }
        rows.push(row);
    }
    if !args.json {
        println!(
            "{:>8} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "target", "FLOPs", "mean sp.", "max sp.", "top-1 agr", "cosine", "MB"
        );
        for r in &rows {
            let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
            println!(
                "{:>8.2} {:>8.3} {:>9.1}% {:>9.1}% {:>9.1}% {:>10.4} {:>10.2}",
                f("flops_target"),
                f("flops_reached"),
                100.0 * f("mean_layer_sparsity"),
                100.0 * f("max_layer_sparsity"),
                100.0 * f("top1_agreement"),
                f("logit_cosine"),
                f("bytes") / 1e6
            );
        }
        println!(
            "wrote {} (FLOPs target {})",
            args.output.display(),
            args.flops[0]
        );
    }
    Ok(())
}
