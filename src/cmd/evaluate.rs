//! `splitstream evaluate`: accuracy on a labelled test set for every way a frame can
//! travel: run locally, split (with or without a bottleneck, through the real codec at
//! each quantization), or offloaded as JPEG. One table, the numbers a user needs to
//! choose a split: accuracy, its loss against local, agreement with local, bytes per
//! frame.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context};
use splitstream_codec::{decode, Bits, CodecParams, DecodeLimits, Encoder, Entropy, TensorView};
use splitstream_head::offload::{encode_jpeg, JpegSettings};
use splitstream_models::backend::cpu::CpuBackend;
use splitstream_models::bottleneck::Bottleneck;
use splitstream_models::cli::{LabelsArgs, ThreadsArgs, WeightsArgs};
use splitstream_models::labels::{display_class, ClassNames};
use splitstream_models::net::{detect_family, Family};
use splitstream_models::preprocess::{load_rgb, EvalTransform};
use splitstream_models::split::{SplitMetadata, BOTTLENECK_PREFIX};
use splitstream_models::vit::SplitModel;
use splitstream_models::vit::{Vit, VitOptions};
use splitstream_models::weights::Weights;
use splitstream_models::{Backend, HostTensor};

use super::measure::{argmax, progress};

/// Arguments of `splitstream evaluate`.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  # the shipped demo model: local, its trained BottleFit bottleneck, a PCA bottleneck
  # from `splitstream calibrate`, the raw split, and JPEG offload at q75 and q90
  splitstream evaluate --weights assets/demo/demo_vit.safetensors \\
      --split-model assets/demo/demo_vit_bottlefit.safetensors \\
      --bottleneck pca_r32.safetensors --raw-split 1 --images assets/demo/test

Images: a folder with labels.csv (columns file,label; label is the class index), as
assets/demo/test. Without labels.csv the table reports agreement with local only;
with it a second table gives the local model's accuracy per class, named by --labels
or the checkpoint's class_names metadata (JSON: rows with \"class\" after the routes).
A detector (FemtoDet): a folder with COCO-style annotations.json (bbox [x,y,w,h],
category_id = 0-based label), as assets/femtodet/test; the table gives mAP@0.5 (VOC
all-point) and mAP@0.5:0.95 for local, every split point (or --raw-split K; --split-model
for a detector trained with its bottleneck) and JPEG offload.
Codes go through the real codec, one frame per image: f32 lossless, or affine
quantization per channel (8/4/2 bit); all with zstd level 1. Bytes are whole frames
(header and checksum included).")]
pub(crate) struct Args {
    // --weights: the model run locally (and offloaded).
    #[command(flatten)]
    pub(super) model: WeightsArgs,
    /// A split checkpoint (ViT + `bottleneck.*` + metadata `split`), e.g. from
    /// python/train_bottlefit.py. Repeatable.
    #[arg(long = "split-model", value_name = "FILE")]
    pub(super) split_models: Vec<PathBuf>,
    /// A bottleneck alone (from `splitstream calibrate`), applied to --weights at the
    /// split its metadata names. Repeatable.
    #[arg(long = "bottleneck", value_name = "FILE")]
    pub(super) bottlenecks: Vec<PathBuf>,
    /// Also split --weights at this point with no bottleneck (the activation itself
    /// crosses the link). Repeatable.
    #[arg(long = "raw-split", value_name = "K")]
    pub(super) raw_splits: Vec<usize>,
    /// Offload the frame as JPEG at this quality (repeatable; default 75 and 90).
    #[arg(long = "jpeg", value_name = "Q", value_parser = clap::value_parser!(u8).range(1..=100))]
    pub(super) jpeg: Vec<u8>,
    /// Quantizations of the code: f32, 8, 4, 2 (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "f32,8,4,2")]
    pub(super) codes: Vec<String>,
    /// Folder of test images (labels.csv inside for accuracy).
    #[arg(long, value_name = "DIR")]
    pub(super) images: PathBuf,
    /// Use only the first N images.
    #[arg(long, value_name = "N")]
    pub(super) limit: Option<usize>,
    #[command(flatten)]
    labels: LabelsArgs,
    #[command(flatten)]
    pub(super) threads: ThreadsArgs,
    /// One JSON object per row instead of the table.
    #[arg(long)]
    pub(super) json: bool,
}

/// A quantization of the code on the wire.
#[derive(Clone, Copy)]
struct Code {
    name: &'static str,
    params: CodecParams,
}

fn parse_code(text: &str) -> anyhow::Result<Code> {
    let zstd = Entropy::Zstd { level: 1 };
    let affine = |bits| CodecParams::affine_per_channel(bits, 2, zstd);
    Ok(match text.trim() {
        "f32" | "32" | "lossless" => Code {
            name: "f32",
            params: CodecParams::LOSSLESS.with_entropy(zstd),
        },
        "8" => Code {
            name: "8-bit",
            params: affine(Bits::B8),
        },
        "4" => Code {
            name: "4-bit",
            params: affine(Bits::B4),
        },
        "2" => Code {
            name: "2-bit",
            params: affine(Bits::B2),
        },
        other => bail!("--codes: {other:?} is not one of f32, 8, 4, 2"),
    })
}

/// A labelled (or unlabelled) test image.
pub(super) struct Item {
    pub(super) path: PathBuf,
    pub(super) label: Option<usize>,
}

/// Reads `dir/labels.csv` (file,label[,...]) or, without it, every image in `dir`.
pub(super) fn test_items(dir: &Path) -> anyhow::Result<Vec<Item>> {
    let csv = dir.join("labels.csv");
    if csv.is_file() {
        let text =
            std::fs::read_to_string(&csv).with_context(|| format!("reading {}", csv.display()))?;
        let mut items = Vec::new();
        for (n, line) in text.lines().enumerate().skip(1) {
            if line.trim().is_empty() {
                continue;
            }
            let mut cols = line.split(',');
            let (Some(file), Some(label)) = (cols.next(), cols.next()) else {
                bail!("{}:{}: expected file,label", csv.display(), n + 1);
            };
            let label = label.trim().parse::<usize>().with_context(|| {
                format!(
                    "{}:{}: label {label:?} is not a class index",
                    csv.display(),
                    n + 1
                )
            })?;
            items.push(Item {
                path: dir.join(file.trim()),
                label: Some(label),
            });
        }
        return Ok(items);
    }
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                ["jpg", "jpeg", "png", "bmp", "webp"].contains(&e.to_lowercase().as_str())
            })
        })
        .collect();
    paths.sort();
    Ok(paths
        .into_iter()
        .map(|path| Item { path, label: None })
        .collect())
}

/// One way frames travel, and its tallies.
struct Route {
    mode: &'static str,
    detail: String,
    code: Option<&'static str>,
    correct: usize,
    agree: usize,
    bytes: usize,
    frames: usize,
    /// Per true class: (frames, correct).
    per_class: std::collections::BTreeMap<usize, (usize, usize)>,
}

impl Route {
    fn new(mode: &'static str, detail: String, code: Option<&'static str>) -> Self {
        Self {
            mode,
            detail,
            code,
            correct: 0,
            agree: 0,
            bytes: 0,
            frames: 0,
            per_class: Default::default(),
        }
    }

    fn record(&mut self, pred: usize, local: usize, label: Option<usize>, bytes: usize) {
        self.frames += 1;
        self.bytes += bytes;
        self.agree += usize::from(pred == local);
        self.correct += usize::from(Some(pred) == label);
        if let Some(label) = label {
            let tally = self.per_class.entry(label).or_default();
            tally.0 += 1;
            tally.1 += usize::from(pred == label);
        }
    }
}

/// A split variant: a model and a name.
struct Variant {
    detail: String,
    model: SplitModel<CpuBackend>,
}

fn heads_from(weights: &Weights, given: Option<usize>) -> anyhow::Result<Option<usize>> {
    Ok(match given {
        Some(h) => Some(h),
        None => SplitMetadata::from_weights(weights)?.num_heads,
    })
}

fn load_variants(
    args: &Args,
    be: &CpuBackend,
    local: &std::sync::Arc<Vit<CpuBackend>>,
) -> anyhow::Result<Vec<Variant>> {
    let mut variants = Vec::new();
    for &k in &args.raw_splits {
        let model =
            SplitModel::new(local.clone(), k, None).with_context(|| format!("--raw-split {k}"))?;
        variants.push(Variant {
            detail: format!("split@{k}, no bottleneck"),
            model,
        });
    }
    for path in &args.split_models {
        let options = VitOptions {
            num_heads: args.model.heads,
            ..VitOptions::default()
        };
        let model = SplitModel::from_file(be.clone(), path, &options, None)
            .with_context(|| format!("loading split model {}", path.display()))?;
        variants.push(Variant {
            detail: format!("split@{} {}", model.point(), file_name(path)),
            model,
        });
    }
    for path in &args.bottlenecks {
        let weights = Weights::from_file(path)?;
        let Some(split) = weights.metadata_value("split") else {
            bail!(
                "{} has no metadata `split`; make it with `splitstream calibrate`",
                path.display()
            );
        };
        let point: usize = split
            .trim()
            .parse()
            .with_context(|| format!("{}: metadata split {split:?}", path.display()))?;
        let bottleneck = Bottleneck::load(be, &weights, BOTTLENECK_PREFIX)?
            .with_context(|| format!("{} holds no bottleneck.* tensors", path.display()))?;
        let model = SplitModel::new(local.clone(), point, Some(bottleneck))
            .with_context(|| format!("applying {}", path.display()))?;
        variants.push(Variant {
            detail: format!("split@{point} {}", file_name(path)),
            model,
        });
    }
    Ok(variants)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Runs `splitstream evaluate`.
pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    // A detector has its own table (mAP, not accuracy).
    if let Ok(weights) = Weights::from_file(&args.model.weights) {
        if detect_family(&weights).ok() == Some(Family::FemtoDet) {
            drop(weights);
            return super::evaluate_det::run(args);
        }
    }
    let codes = args
        .codes
        .iter()
        .map(|c| parse_code(c))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let jpeg = if args.jpeg.is_empty() {
        vec![75, 90]
    } else {
        args.jpeg.clone()
    };
    let mut items = test_items(&args.images)?;
    if let Some(n) = args.limit {
        items.truncate(n);
    }
    ensure!(!items.is_empty(), "no images in {}", args.images.display());

    let be = CpuBackend::new(args.threads.count)?;
    let weights = Weights::from_file(&args.model.weights)?;
    let options = VitOptions {
        num_heads: heads_from(&weights, args.model.heads)?,
        ..VitOptions::default()
    };
    let crop_pct = weights.metadata_value("crop_pct").map(str::to_owned);
    let names = ClassNames::resolve(args.labels.file.as_deref(), weights.metadata(), None)?;
    let local = std::sync::Arc::new(
        Vit::load(be.clone(), &weights, &options)
            .with_context(|| format!("loading {}", args.model.weights.display()))?,
    );
    drop(weights);
    if let Some(n) = &names {
        n.check(local.config().num_classes)?;
    }
    let transform =
        EvalTransform::for_checkpoint(local.config().image_size as u32, crop_pct.as_deref())?;
    let variants = load_variants(&args, &be, &local)?;

    let mut routes = vec![Route::new(
        "local",
        "whole model on the device".into(),
        None,
    )];
    for q in &jpeg {
        routes.push(Route::new("offload", format!("JPEG q{q}"), None));
    }
    for v in &variants {
        for code in &codes {
            routes.push(Route::new("split", v.detail.clone(), Some(code.name)));
        }
    }

    let mut encoder = Encoder::new();
    let mut frame = Vec::new();
    let bar = progress(args.json, items.len());
    for item in &items {
        let img = load_rgb(&item.path)?;
        let pixels = |img: &image::RgbImage| -> anyhow::Result<HostTensor> {
            let size = transform.crop as usize;
            Ok(HostTensor::new([1, 3, size, size], transform.apply(img))?)
        };
        let x = pixels(&img)?;
        let local_pred = argmax(local.run(&x)?.data());
        let mut r = 0;
        routes[r].record(local_pred, local_pred, item.label, 0);
        for &q in &jpeg {
            r += 1;
            let settings = JpegSettings {
                quality: q,
                max_side: None,
            };
            let bytes = encode_jpeg(&img, &settings)?;
            let decoded = image::load_from_memory(&bytes)
                .context("decoding our own JPEG")?
                .to_rgb8();
            let pred = argmax(local.run(&pixels(&decoded)?)?.data());
            routes[r].record(pred, local_pred, item.label, bytes.len());
        }
        let x_dev = be.upload(&x)?;
        for v in &variants {
            let code = be.readback(&v.model.head(&x_dev)?)?;
            for c in &codes {
                r += 1;
                let view = TensorView::f32(code.shape(), code.data())?;
                encoder.encode_into(&view, &c.params, &mut frame)?;
                let received = decode(&frame, &DecodeLimits::default())?;
                let received = HostTensor::new(code.shape().to_vec(), received.to_f32())?;
                let logits = be.readback(&v.model.tail(&be.upload(&received)?)?)?;
                routes[r].record(argmax(logits.data()), local_pred, item.label, frame.len());
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    report(&routes, &args, &jpeg)?;
    if let Some(local) = routes.first() {
        per_class_report(local, names.as_ref(), args.json);
    }
    Ok(())
}

/// The local route's accuracy per true class, classes named when names are known.
fn per_class_report(local: &Route, names: Option<&ClassNames>, json: bool) {
    if local.per_class.is_empty() {
        return;
    }
    let pct = |n: usize, d: usize| 100.0 * n as f64 / d.max(1) as f64;
    if !json {
        println!();
        println!("local accuracy per class:");
        println!(
            "{:>6} {:<28} {:>7} {:>9}",
            "class", "name", "images", "accuracy"
        );
    }
    for (&class, &(frames, correct)) in &local.per_class {
        let name = names.and_then(|n| n.get(class));
        if json {
            let mut row = serde_json::json!({
                "class": class,
                "images": frames,
                "local_accuracy_pct": pct(correct, frames),
            });
            if let (Some(name), Some(obj)) = (name, row.as_object_mut()) {
                obj.insert("label".into(), name.into());
            }
            println!("{row}");
        } else {
            println!(
                "{class:>6} {:<28} {frames:>7} {:>8.2}%",
                display_class(names, class),
                pct(correct, frames)
            );
        }
    }
}

fn report(routes: &[Route], args: &Args, jpeg: &[u8]) -> anyhow::Result<()> {
    let labelled = routes.first().is_some_and(|r| r.frames > 0)
        && test_items(&args.images)?.iter().all(|i| i.label.is_some());
    let pct = |n: usize, d: usize| 100.0 * n as f64 / d.max(1) as f64;
    let local_acc = routes.first().map_or(0.0, |r| pct(r.correct, r.frames));
    // The JPEG q75 (or the first JPEG) size is the yardstick for bytes.
    let yardstick = routes
        .iter()
        .find(|r| r.detail == format!("JPEG q{}", jpeg.first().copied().unwrap_or(75)))
        .map(|r| r.bytes as f64 / r.frames.max(1) as f64);
    if !args.json {
        println!(
            "{:<8} {:<40} {:>6} {:>9} {:>9} {:>9} {:>11} {:>9}",
            "mode", "route", "code", "accuracy", "vs local", "agree", "bytes/frame", "vs JPEG"
        );
    }
    for r in routes {
        let acc = pct(r.correct, r.frames);
        let bytes = r.bytes as f64 / r.frames.max(1) as f64;
        let ratio = yardstick
            .filter(|y| *y > 0.0 && r.bytes > 0)
            .map(|y| bytes / y);
        if args.json {
            let row = serde_json::json!({
                "mode": r.mode,
                "route": r.detail,
                "code": r.code,
                "frames": r.frames,
                "accuracy_pct": labelled.then_some(acc),
                "accuracy_change_pt": labelled.then_some(acc - local_acc),
                "agreement_pct": pct(r.agree, r.frames),
                "bytes_per_frame": bytes,
                "bytes_vs_jpeg": ratio,
            });
            println!("{row}");
        } else {
            let show =
                |v: Option<f64>, unit: &str| v.map_or("-".to_string(), |v| format!("{v:.2}{unit}"));
            println!(
                "{:<8} {:<40} {:>6} {:>9} {:>9} {:>8.2}% {:>11.0} {:>9}",
                r.mode,
                r.detail,
                r.code.unwrap_or("-"),
                show(labelled.then_some(acc), "%"),
                show(labelled.then_some(acc - local_acc), ""),
                pct(r.agree, r.frames),
                bytes,
                show(ratio, "x"),
            );
        }
    }
    Ok(())
}
