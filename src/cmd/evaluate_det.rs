//! `splitstream evaluate` on a detector (FemtoDet): mAP@0.5 (VOC all-point) and
//! mAP@0.5:0.95 on a labelled set, per route: local, each split point through the real
//! codec (f32 / 8 / 4 / 2-bit, zstd 1), a trained bottleneck checkpoint, and JPEG
//! offload, with bytes per frame. The labelled set is a folder of images with
//! `annotations.json` in COCO form (`images` with `id` and `file_name`, `annotations`
//! with `image_id`, `category_id` = the model's 0-based label and `bbox` = `[x, y, w,
//! h]` in pixels, `x + w` exclusive), as `python/make_det_dataset.py` writes it.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, ensure, Context};
use splitstream_codec::{decode, Bits, CodecParams, DecodeLimits, Encoder, Entropy, TensorView};
use splitstream_head::offload::{encode_jpeg, JpegSettings};
use splitstream_models::backend::cpu::CpuBackend;
use splitstream_models::detection_map::{map_50_and_50_95, GroundTruth};
use splitstream_models::femtodet::FemtoDet;
use splitstream_models::net::{Detection, Output, SplitNet};
use splitstream_models::preprocess::{load_rgb, EvalTransform};
use splitstream_models::split::SplitMetadata;
use splitstream_models::weights::Weights;
use splitstream_models::HostTensor;

use super::evaluate::Args;
use super::measure::progress;

/// Most images or annotations read from one annotations file.
const MAX_ITEMS: usize = 1_000_000;

/// A test image and its boxes.
struct Item {
    path: std::path::PathBuf,
    truth: GroundTruth,
}

#[derive(serde::Deserialize)]
struct Coco {
    images: Vec<CocoImage>,
    #[serde(default)]
    annotations: Vec<CocoAnnotation>,
}

#[derive(serde::Deserialize)]
struct CocoImage {
    id: u64,
    file_name: String,
}

#[derive(serde::Deserialize)]
struct CocoAnnotation {
    image_id: u64,
    category_id: u32,
    bbox: [f32; 4],
}

/// Reads `dir/annotations.json` (see the module docs).
fn test_items(dir: &Path, classes: usize) -> anyhow::Result<Vec<Item>> {
    let path = dir.join("annotations.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (a detector's test set is a folder of images with COCO-style \
             annotations.json)",
            path.display()
        )
    })?;
    let coco: Coco =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    ensure!(
        coco.images.len() <= MAX_ITEMS && coco.annotations.len() <= MAX_ITEMS,
        "{}: more than {MAX_ITEMS} images or annotations",
        path.display()
    );
    let mut by_image: BTreeMap<u64, Vec<([f32; 4], u32)>> = BTreeMap::new();
    for a in &coco.annotations {
        if a.category_id as usize >= classes {
            bail!(
                "{}: category_id {} but the model has {classes} classes (0-based labels)",
                path.display(),
                a.category_id
            );
        }
        let [x, y, w, h] = a.bbox;
        by_image
            .entry(a.image_id)
            .or_default()
            .push(([x, y, x + w, y + h], a.category_id));
    }
    Ok(coco
        .images
        .into_iter()
        .map(|im| Item {
            path: dir.join(&im.file_name),
            truth: GroundTruth {
                objects: by_image.remove(&im.id).unwrap_or_default(),
            },
        })
        .collect())
}

/// A quantization of the code, by name.
#[derive(Clone, Copy)]
struct Code {
    name: &'static str,
    bits: Option<Bits>,
}

fn parse_code(text: &str) -> anyhow::Result<Code> {
    Ok(match text.trim() {
        "f32" | "32" | "lossless" => Code {
            name: "f32",
            bits: None,
        },
        "8" => Code {
            name: "8-bit",
            bits: Some(Bits::B8),
        },
        "4" => Code {
            name: "4-bit",
            bits: Some(Bits::B4),
        },
        "2" => Code {
            name: "2-bit",
            bits: Some(Bits::B2),
        },
        other => bail!("--codes: {other:?} is not one of f32, 8, 4, 2"),
    })
}

impl Code {
    /// Per channel along axis 1 for maps `[B, C, H, W]`, per tensor for packed taps.
    fn params(self, shape: &[usize]) -> CodecParams {
        let zstd = Entropy::Zstd { level: 1 };
        match (self.bits, shape.len()) {
            (None, _) => CodecParams::LOSSLESS.with_entropy(zstd),
            (Some(b), 4) => CodecParams::affine_per_channel(b, 1, zstd),
            (Some(b), _) => CodecParams::affine(b, zstd),
        }
    }
}

/// One route and what it found.
struct Route {
    mode: &'static str,
    detail: String,
    code: Option<&'static str>,
    detections: Vec<Vec<Detection>>,
    bytes: usize,
}

impl Route {
    fn new(mode: &'static str, detail: String, code: Option<&'static str>) -> Self {
        Self {
            mode,
            detail,
            code,
            detections: Vec::new(),
            bytes: 0,
        }
    }
}

fn detections(out: Output) -> anyhow::Result<Vec<Detection>> {
    match out {
        Output::Detections(mut d) if d.len() == 1 => Ok(d.remove(0)),
        _ => bail!("the detector answered something else than one item's detections"),
    }
}

fn load(path: &Path, be: &CpuBackend) -> anyhow::Result<FemtoDet<CpuBackend>> {
    let weights = Weights::from_file(path)?;
    let metadata = SplitMetadata::from_weights(&weights)?;
    FemtoDet::load(be.clone(), &weights, &metadata)
        .with_context(|| format!("loading {}", path.display()))
}

/// Runs `splitstream evaluate` on a FemtoDet checkpoint.
pub(crate) fn run(args: Args) -> anyhow::Result<()> {
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
    let be = CpuBackend::new(args.threads.count)?;
    let local = load(&args.model.weights, &be)?;
    let classes = local.config().num_classes;
    let mut items = test_items(&args.images, classes)?;
    if let Some(n) = args.limit {
        items.truncate(n);
    }
    ensure!(!items.is_empty(), "no images in {}", args.images.display());
    ensure!(
        args.bottlenecks.is_empty(),
        "--bottleneck (a calibrated ViT bottleneck) does not apply to a detector; give a \
         detector trained with its bottleneck as --split-model"
    );
    let Some(transform) = local.input().transform().cloned() else {
        bail!("the detector takes no images");
    };
    // Split points of the plain model: --raw-split, else every one.
    let points: Vec<String> = if args.raw_splits.is_empty() {
        local
            .split_points()
            .iter()
            .map(|p| p.name.clone())
            .collect()
    } else {
        args.raw_splits
            .iter()
            .map(|&k| {
                local
                    .split_points()
                    .iter()
                    .find(|p| p.depth == k)
                    .map(|p| p.name.clone())
                    .with_context(|| format!("--raw-split {k}: the detector has points 0..=8"))
            })
            .collect::<anyhow::Result<_>>()?
    };
    let mut variants: Vec<(String, FemtoDet<CpuBackend>, String)> = Vec::new();
    for path in &args.split_models {
        let m = load(path, &be)?;
        let Some(point) = m.split_points().first().map(|p| p.name.clone()) else {
            bail!("{} has no split point", path.display());
        };
        variants.push((format!("{point} {}", file_name(path)), m, point));
    }

    let mut routes = vec![Route::new(
        "local",
        "whole model on the device".into(),
        None,
    )];
    for q in &jpeg {
        routes.push(Route::new("offload", format!("JPEG q{q}"), None));
    }
    for p in &points {
        for c in &codes {
            routes.push(Route::new(
                "split",
                format!("{p}, no bottleneck"),
                Some(c.name),
            ));
        }
    }
    for (detail, ..) in &variants {
        for c in &codes {
            routes.push(Route::new("split", detail.clone(), Some(c.name)));
        }
    }

    let mut encoder = Encoder::new();
    let mut frame = Vec::new();
    let bar = progress(args.json, items.len());
    let mut truth = Vec::with_capacity(items.len());
    for item in &items {
        let img = load_rgb(&item.path)?;
        let (w, h) = img.dimensions();
        let to_image = |dets: Vec<Detection>| -> Vec<Detection> {
            let Some([sx, sy]) = transform.box_scale(w, h) else {
                return dets;
            };
            dets.into_iter()
                .map(|mut d| {
                    d.bbox = [
                        d.bbox[0] * sx,
                        d.bbox[1] * sy,
                        d.bbox[2] * sx,
                        d.bbox[3] * sy,
                    ];
                    d
                })
                .collect()
        };
        let pixels = |img: &image::RgbImage, t: &EvalTransform| -> anyhow::Result<HostTensor> {
            let size = t.crop as usize;
            Ok(HostTensor::new([1, 3, size, size], t.apply(img))?)
        };
        let x = pixels(&img, &transform)?;
        let mut r = 0;
        routes[r]
            .detections
            .push(to_image(detections(local.forward(&x, None)?)?));
        for &q in &jpeg {
            r += 1;
            let settings = JpegSettings {
                quality: q,
                max_side: Some(transform.resize),
            };
            let bytes = encode_jpeg(&img, &settings)?;
            let decoded = image::load_from_memory(&bytes)
                .context("decoding our own JPEG")?
                .to_rgb8();
            let dets = detections(local.forward(&pixels(&decoded, &transform)?, None)?)?;
            // Boxes in the offloaded frame's pixels, back to the original's.
            let [fx, fy] = [
                w as f32 / decoded.width() as f32,
                h as f32 / decoded.height() as f32,
            ];
            let dets = match transform.box_scale(decoded.width(), decoded.height()) {
                Some([sx, sy]) => dets
                    .into_iter()
                    .map(|mut d| {
                        let (ax, ay) = (sx * fx, sy * fy);
                        d.bbox = [
                            d.bbox[0] * ax,
                            d.bbox[1] * ay,
                            d.bbox[2] * ax,
                            d.bbox[3] * ay,
                        ];
                        d
                    })
                    .collect(),
                None => dets,
            };
            routes[r].detections.push(dets);
            routes[r].bytes += bytes.len();
        }
        let splits = points
            .iter()
            .map(|p| (&local, p.as_str()))
            .chain(variants.iter().map(|(_, m, p)| (m, p.as_str())));
        for (net, at) in splits {
            let code = net.head(&x, at, None)?;
            for c in &codes {
                r += 1;
                let view = TensorView::f32(code.shape(), code.data())?;
                encoder.encode_into(&view, &c.params(code.shape()), &mut frame)?;
                let received = decode(&frame, &DecodeLimits::default())?;
                let received = HostTensor::new(code.shape().to_vec(), received.to_f32())?;
                let dets = detections(net.tail(&received, at, None)?)?;
                routes[r].detections.push(to_image(dets));
                routes[r].bytes += frame.len();
            }
        }
        truth.push(item.truth.clone());
        bar.inc(1);
    }
    bar.finish_and_clear();
    report(&routes, &truth, classes as u32, &args, &jpeg)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

fn report(
    routes: &[Route],
    truth: &[GroundTruth],
    classes: u32,
    args: &Args,
    jpeg: &[u8],
) -> anyhow::Result<()> {
    let frames = truth.len().max(1) as f64;
    let scores: Vec<(f64, f64)> = routes
        .iter()
        .map(|r| map_50_and_50_95(&r.detections, truth, classes))
        .collect();
    let local = scores.first().map_or(0.0, |s| s.0);
    let yardstick = routes
        .iter()
        .find(|r| r.detail == format!("JPEG q{}", jpeg.first().copied().unwrap_or(75)))
        .map(|r| r.bytes as f64 / frames);
    if !args.json {
        println!(
            "{:<8} {:<36} {:>6} {:>9} {:>9} {:>11} {:>11} {:>9}",
            "mode", "route", "code", "mAP@.5", "vs local", "mAP@.5:.95", "bytes/frame", "vs JPEG"
        );
    }
    for (r, (m50, m5095)) in routes.iter().zip(&scores) {
        let bytes = r.bytes as f64 / frames;
        let ratio = yardstick
            .filter(|y| *y > 0.0 && r.bytes > 0)
            .map(|y| bytes / y);
        if args.json {
            let row = serde_json::json!({
                "mode": r.mode,
                "route": r.detail,
                "code": r.code,
                "frames": truth.len(),
                "map50_pct": 100.0 * m50,
                "map50_change_pt": 100.0 * (m50 - local),
                "map50_95_pct": 100.0 * m5095,
                "detections": r.detections.iter().map(Vec::len).sum::<usize>(),
                "bytes_per_frame": bytes,
                "bytes_vs_jpeg": ratio,
            });
            println!("{row}");
        } else {
            println!(
                "{:<8} {:<36} {:>6} {:>8.2}% {:>9.2} {:>10.2}% {:>11.0} {:>9}",
                r.mode,
                r.detail,
                r.code.unwrap_or("-"),
                100.0 * m50,
                100.0 * (m50 - local),
                100.0 * m5095,
                bytes,
                ratio.map_or("-".to_string(), |v| format!("{v:.3}x")),
            );
        }
    }
    Ok(())
}
