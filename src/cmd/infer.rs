//! `splitstream infer`: run a checkpoint of any image family the loader knows (a timm
//! ViT/DeiT today) on images or on a preprocessed tensor and print the top-k classes
//! of each item (a detector's boxes, as JSON lines, in the image's pixels).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use splitstream_models::backend::cpu::CpuBackend;
use splitstream_models::cli::{BackendArgs, LabelsArgs, ThreadsArgs, WeightsArgs};
use splitstream_models::femtodet::FemtoDet;
use splitstream_models::labels::ClassNames;
use splitstream_models::net::{detect_family, load_net, Detection, Family, NetOptions, Output};
use splitstream_models::preprocess::{load_batch, load_rgb, EvalTransform};
use splitstream_models::split::SplitMetadata;
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

  # a custom timm ViT whose head count is not the D/64 default, with its class names
  splitstream infer --weights vit_micro.safetensors --heads 4 --input cat.jpg \\
      --labels classes.txt

  # a FemtoDet detector: JSON lines of boxes in the image's pixels, raw maps saved
  splitstream infer --weights femtodet.safetensors --input street.jpg \\
      --output detections.safetensors

Class names come from --labels, else the checkpoint's class_names metadata (as
python/export_timm.py writes ImageNet's), else only indices are printed.")]
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
    /// Write the logits [B, classes] as tensor `logits` to this safetensors file (a
    /// detector: its raw maps `head.cls`/`head.reg`/`head.obj` and the final `boxes`
    /// [N,4] in the image's pixels, `scores` [N], `labels` [N] int64).
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Classes to print per item.
    #[arg(long, default_value_t = 5, value_name = "K")]
    topk: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    labels: LabelsArgs,
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

/// Prints what `--backend auto` chose (one line on stderr) once the model has loaded
/// and run: a failed load prints only its error.
fn with_line<T>(ran: T, chosen: Option<String>) -> T {
    if let Some(line) = chosen {
        eprintln!("{line}");
    }
    ran
}

fn softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let exps: Vec<f64> = row.iter().map(|&v| (v as f64 - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// A detector's run: the head's raw maps, the detections of each item mapped back to
/// its image (input pixels for a preprocessed tensor), and the class names.
struct Detected {
    maps: splitstream_models::femtodet::HeadMaps,
    items: Vec<(String, Vec<Detection>)>,
    classes: Vec<String>,
    describe: String,
}

/// FemtoDet, loaded as itself (not behind `SplitNet`) so that its raw head maps can be
/// written out.
fn run_detector<B: Backend>(backend: B, weights: Weights, args: &Args) -> anyhow::Result<Detected> {
    let metadata = SplitMetadata::from_weights(&weights)?;
    let net = FemtoDet::load(backend, &weights, &metadata)
        .with_context(|| format!("loading {}", args.model.weights.display()))?;
    drop(weights);
    let Some(transform) = net.input().transform().cloned() else {
        bail!("the detector takes no images");
    };
    let (input, labels, sizes) = match args.input.as_slice() {
        [p] if is_safetensors(p) => {
            let (input, labels) = load_input(&args.input, &transform)?;
            let n = labels.len();
            (input, labels, vec![None; n])
        }
        paths => {
            let side = transform.crop as usize;
            let mut data = Vec::with_capacity(paths.len() * 3 * side * side);
            let mut sizes = Vec::with_capacity(paths.len());
            for p in paths {
                if is_safetensors(p) {
                    bail!(
                        "{} is a safetensors file: give it alone as --input, not mixed with images",
                        p.display()
                    );
                }
                let img = load_rgb(p)?;
                sizes.push(Some(img.dimensions()));
                data.extend(transform.apply(&img));
            }
            let input = HostTensor::new([paths.len(), 3, side, side], data)?;
            let labels = paths.iter().map(|p| p.display().to_string()).collect();
            (input, labels, sizes)
        }
    };
    let maps = net.head_maps(&input)?;
    let dets = net.decode(&maps);
    let items = labels
        .into_iter()
        .zip(dets)
        .zip(sizes)
        .map(|((label, dets), size)| {
            let scale = size.and_then(|(w, h)| transform.box_scale(w, h));
            let dets = dets
                .into_iter()
                .map(|mut d| {
                    if let Some([sx, sy]) = scale {
                        d.bbox = [
                            d.bbox[0] * sx,
                            d.bbox[1] * sy,
                            d.bbox[2] * sx,
                            d.bbox[3] * sy,
                        ];
                    }
                    d
                })
                .collect();
            (label, dets)
        })
        .collect();
    Ok(Detected {
        maps,
        items,
        classes: net.config().classes.clone(),
        describe: net.describe(),
    })
}

/// Writes `f32` and `i64` tensors into one safetensors file.
fn save_mixed(
    path: &Path,
    f32s: &[(&str, &HostTensor)],
    i64s: &[(&str, Vec<usize>, Vec<i64>)],
) -> anyhow::Result<()> {
    use safetensors::{tensor::TensorView, Dtype};
    let mut bytes: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, t) in f32s {
        let b = t.data().iter().flat_map(|v| v.to_le_bytes()).collect();
        bytes.push((name.to_string(), Dtype::F32, t.shape().to_vec(), b));
    }
    for (name, shape, v) in i64s {
        let b = v.iter().flat_map(|v| v.to_le_bytes()).collect();
        bytes.push((name.to_string(), Dtype::I64, shape.clone(), b));
    }
    let views = bytes
        .iter()
        .map(|(n, d, s, b)| TensorView::new(*d, s.clone(), b).map(|v| (n.clone(), v)))
        .collect::<Result<Vec<_>, _>>()?;
    safetensors::serialize_to_file(views, None, path)
        .with_context(|| format!("writing {}", path.display()))
}

fn report_detections(d: Detected, args: &Args) -> anyhow::Result<()> {
    if let Some(out) = &args.output {
        let all: Vec<(usize, &Detection)> = d
            .items
            .iter()
            .enumerate()
            .flat_map(|(i, (_, dets))| dets.iter().map(move |x| (i, x)))
            .collect();
        let n = all.len();
        let boxes = HostTensor::new([n, 4], all.iter().flat_map(|(_, x)| x.bbox).collect())?;
        let scores = HostTensor::new([n], all.iter().map(|(_, x)| x.score).collect())?;
        let labels: Vec<i64> = all.iter().map(|(_, x)| i64::from(x.label)).collect();
        let mut ints = vec![("labels", vec![n], labels)];
        if d.items.len() > 1 {
            ints.push((
                "item",
                vec![n],
                all.iter().map(|(i, _)| *i as i64).collect(),
            ));
        }
        save_mixed(
            out,
            &[
                ("head.cls", &d.maps.cls),
                ("head.reg", &d.maps.reg),
                ("head.obj", &d.maps.obj),
                ("boxes", &boxes),
                ("scores", &scores),
            ],
            &ints,
        )?;
    }
    for (label, dets) in &d.items {
        let objects: Vec<serde_json::Value> = dets
            .iter()
            .map(|x| {
                serde_json::json!({
                    "label": x.label,
                    "class": d.classes.get(x.label as usize),
                    "score": x.score,
                    "box": x.bbox,
                })
            })
            .collect();
        let line = serde_json::json!({
            "input": label,
            "model": d.describe,
            "detections": objects,
        });
        println!("{line}");
    }
    if let Some(out) = &args.output {
        eprintln!("head maps and detections written to {}", out.display());
    }
    Ok(())
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
    if detect_family(&weights).ok() == Some(Family::FemtoDet) {
        let detected = match args.backend.choice.open_wgpu_reporting()? {
            (Some(gpu), chosen) => with_line(run_detector(gpu, weights, &args)?, chosen),
            (None, chosen) => with_line(
                run_detector(CpuBackend::new(args.threads.count)?, weights, &args)?,
                chosen,
            ),
        };
        return report_detections(detected, &args);
    }
    let names = ClassNames::resolve(args.labels.file.as_deref(), weights.metadata(), None)?;
    let Ran {
        output,
        labels,
        net,
    } = match args.backend.choice.open_wgpu_reporting()? {
        (Some(gpu), chosen) => with_line(run_model(gpu, weights, &args)?, chosen),
        (None, chosen) => with_line(
            run_model(CpuBackend::new(args.threads.count)?, weights, &args)?,
            chosen,
        ),
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
    if let Some(n) = &names {
        n.check(classes)?;
    }
    let name = |class: usize| names.as_ref().and_then(|n| n.get(class));
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
                    "top": best.iter().map(|&(class, logit)| {
                        let mut entry = serde_json::json!({
                            "class": class, "logit": logit, "prob": probs[class],
                        });
                        if let (Some(label), Some(obj)) = (name(class), entry.as_object_mut()) {
                            obj.insert("label".into(), label.into());
                        }
                        entry
                    }).collect::<Vec<_>>(),
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
            "class_names": names.as_ref().map(ClassNames::source_name),
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
                    "  {:>2}. class {class:>5}  logit {logit:>9.4}  p {:.4}{}",
                    rank + 1,
                    probs[class],
                    name(class).map(|n| format!("  {n}")).unwrap_or_default()
                );
            }
        }
        if let Some(out) = &args.output {
            println!("logits {:?} written to {}", logits.shape(), out.display());
        }
    }
    Ok(())
}
