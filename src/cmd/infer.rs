//! `splitstream infer`: run a checkpoint of any image family the loader knows (a timm
//! ViT/DeiT today) on images or on a preprocessed tensor and print the top-k classes
//! of each item (a detector's boxes, as JSON lines).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use splitstream_models::backend::cpu::CpuBackend;
use splitstream_models::cli::{BackendArgs, ThreadsArgs, WeightsArgs};
use splitstream_models::net::{load_net, NetOptions, Output};
use splitstream_models::preprocess::{load_batch, EvalTransform};
use splitstream_models::weights::{save_safetensors, Weights};
use splitstream_models::{Backend, HostTensor, SplitNet};

/// What a run gives: the answers, the item labels and the model's description.
struct Ran {
    output: Output,
    labels: Vec<String>,
    net: Arc<dyn SplitNet>,
}

/// Loads the checkpoint (any family the loader knows) on `backend` and runs the input
/// through the whole model.
fn run_model<B: Backend>(backend: B, weights: Weights, args: &Args) -> anyhow::Result<Ran> {
    let options = NetOptions {
        num_heads: args.model.heads,
        arch: args.arch.clone(),
        split: None,
    };
    let net = load_net(backend, &weights, &options).with_context(|| {
        // The models crate names no flags: the hint is this command's.
        format!(
            "loading {} (a checkpoint of another architecture? name it with --arch)",
            args.model.weights.display()
        )
    })?;
    drop(weights);
    let Some(transform) = net.input().transform() else {
        bail!(
            "{} does not take images ({:?}): infer runs image models",
            args.model.weights.display(),
            net.input()
        );
    };
    let (input, labels) = load_input(&args.input, transform)?;
    let output = net.forward(&input, None)?;
    Ok(Ran {
        output,
        labels,
        net,
    })
}

/// Arguments of `splitstream infer`.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  # classify two photos with a timm DeiT-Tiny checkpoint exported to safetensors
  splitstream infer --weights deit_tiny_patch16_224.safetensors \\
      --arch deit_tiny_patch16_224 --input cat.jpg --input dog.png --topk 3

  # run a preprocessed batch (tensor `input`, [B,3,224,224]) and keep the logits
  splitstream infer --weights model.safetensors --input batch.safetensors \\
      --output logits.safetensors --json

  # a custom timm ViT whose head count is not the D/64 default
  splitstream infer --weights vit_micro.safetensors --heads 4 --input cat.jpg")]
pub(crate) struct Args {
    #[command(flatten)]
    model: WeightsArgs,
    /// timm architecture name (e.g. deit_tiny_patch16_224, vit_base_patch16_224);
    /// checked against the weights. Without it the shapes decide and heads = dim / 64.
    #[arg(long, value_name = "NAME")]
    arch: Option<String>,
    /// An image (PNG, JPEG, WebP, BMP, GIF, TIFF; repeat for a batch), or one
    /// .safetensors file with a tensor `input` [B,3,S,S] already preprocessed.
    #[arg(long, value_name = "PATH", required = true)]
    input: Vec<PathBuf>,
    /// Write the logits [B, classes] as tensor `logits` to this safetensors file.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Classes to print per item.
    #[arg(long, default_value_t = 5, value_name = "K")]
    topk: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    backend: BackendArgs,
    #[command(flatten)]
    threads: ThreadsArgs,
}

fn is_safetensors(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
}

/// The batch and a label per item.
fn load_input(
    paths: &[PathBuf],
    transform: &EvalTransform,
) -> anyhow::Result<(HostTensor, Vec<String>)> {
    let size = transform.crop;
    if let [path] = paths {
        if is_safetensors(path) {
            let file = Weights::from_file(path)?;
            let shape = file
                .shape("input")
                .map(<[usize]>::to_vec)
                .with_context(|| {
                    format!(
                        "{} has no tensor `input` (expected [B,3,{size},{size}])",
                        path.display()
                    )
                })?;
            let input = file.get("input", &shape)?;
            let labels = (0..shape.first().copied().unwrap_or(0))
                .map(|i| format!("{}[{i}]", path.display()))
                .collect();
            return Ok((input, labels));
        }
    }
    if let Some(p) = paths.iter().find(|p| is_safetensors(p)) {
        bail!(
            "{} is a safetensors file: give it alone as --input, not mixed with images",
            p.display()
        );
    }
    let batch = load_batch(paths, transform)?;
    Ok((
        batch,
        paths.iter().map(|p| p.display().to_string()).collect(),
    ))
}

fn softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let exps: Vec<f64> = row.iter().map(|&v| (v as f64 - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    if super::generate::is_llm(&args.model.weights) {
        return super::generate::infer_llm(
            &args.model.weights,
            &args.input,
            args.output.as_deref(),
            args.backend,
            args.threads,
        );
    }
    let weights = Weights::from_file(&args.model.weights)?;
    let Ran {
        output,
        labels,
        net,
    } = match args.backend.choice.open_wgpu()? {
        Some(gpu) => run_model(gpu, weights, &args)?,
        None => run_model(CpuBackend::new(args.threads.count)?, weights, &args)?,
    };
    let logits = match output {
        Output::Logits(logits) => logits,
        other => {
            // Detections and tokens print as the device prints them.
            for (label, answer) in labels.iter().zip(other.into_answers()) {
                let line = serde_json::json!({ "input": label, "answer": answer });
                println!("{line}");
            }
            return Ok(());
        }
    };
    if let Some(out) = &args.output {
        save_safetensors(out, &[("logits", &logits)])?;
    }
    let classes = logits.shape().last().copied().unwrap_or(0);
    let top = logits.topk_rows(args.topk.min(classes));
    if args.json {
        let items: Vec<serde_json::Value> = labels
            .iter()
            .zip(&top)
            .zip(logits.data().chunks(classes.max(1)))
            .map(|((label, best), row)| {
                let probs = softmax(row);
                serde_json::json!({
                    "input": label,
                    "top": best.iter().map(|&(class, logit)| serde_json::json!({
                        "class": class, "logit": logit, "prob": probs[class],
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let report = serde_json::json!({
            "weights": args.model.weights.display().to_string(),
            "family": net.family().name(),
            "model": net.describe(),
            "backend": net.backend_name(),
            "split_points": net.split_points().iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            "classes": classes,
            "items": items,
            "output": args.output.as_ref().map(|p| p.display().to_string()),
        });
        println!("{report}");
    } else {
        for ((label, best), row) in labels
            .iter()
            .zip(&top)
            .zip(logits.data().chunks(classes.max(1)))
        {
            let probs = softmax(row);
            println!("{label}");
            for (rank, &(class, logit)) in best.iter().enumerate() {
                println!(
                    "  {:>2}. class {class:>5}  logit {logit:>9.4}  p {:.4}",
                    rank + 1,
                    probs[class]
                );
            }
        }
        if let Some(out) = &args.output {
            println!("logits {:?} written to {}", logits.shape(), out.display());
        }
    }
    Ok(())
}
