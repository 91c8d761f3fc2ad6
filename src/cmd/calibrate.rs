//! `splitstream calibrate`: a training-free token bottleneck for any timm ViT/DeiT.
//!
//! Runs the model to split point K over calibration images, accumulates the token
//! activations' mean and covariance (in f64), and keeps the top-r principal directions
//! (nalgebra's symmetric eigendecomposition): encoder `z = P^T (x - mean)`, decoder
//! `x' = P z + mean`. Then, on held-out images, it sends every frame through the real
//! codec (lossless f32, and 8/4/2-bit per-channel affine, all with zstd level 1) and
//! the tail, and reports for each rank x quantization the top-1 agreement with the
//! unsplit model, the mean logit cosine and the mean encoded frame size.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context};

use splitstream_codec::{decode, Bits, CodecParams, DecodeLimits, Encoder, Entropy, TensorView};
use splitstream_models::backend::cpu::CpuBackend;
use splitstream_models::bottleneck::{linear_token_tensors, Bottleneck};
use splitstream_models::preprocess::{load_batch, EvalTransform};
use splitstream_models::split::{SplitMetadata, BOTTLENECK_PREFIX};
use splitstream_models::vit::{Vit, VitOptions};
use splitstream_models::weights::Weights;
use splitstream_models::{Backend, HostTensor};

use super::measure::{argmax, progress};
use splitstream_models::cli::{BackendArgs, ThreadsArgs, WeightsArgs};

/// Image file extensions read from `--images`.
const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff"];
/// Most image files taken from `--images` (a guard against pointing at a whole disk).
const MAX_IMAGES: usize = 100_000;
/// Deepest folder level searched under `--images`.
const MAX_DEPTH: usize = 8;
/// The entropy stage of every frame measured (the project's default for tokens).
const ENTROPY: Entropy = Entropy::Zstd { level: 1 };

/// How many images to hold out for evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Holdout {
    /// This many images.
    Count(usize),
    /// This fraction of the images (0 < f < 1).
    Fraction(f64),
}

pub(crate) fn parse_holdout(text: &str) -> Result<Holdout, String> {
    if let Ok(n) = text.parse::<usize>() {
        return Ok(Holdout::Count(n));
    }
    match text.parse::<f64>() {
        Ok(f) if f > 0.0 && f < 1.0 => Ok(Holdout::Fraction(f)),
        _ => Err(format!(
            "{text:?} is neither a count of images (e.g. 20) nor a fraction in (0, 1) (e.g. 0.25)"
        )),
    }
}

fn parse_rank(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(r) if r > 0 => Ok(r),
        _ => Err(format!("{text:?} is not a positive whole number")),
    }
}

/// Arguments of `splitstream calibrate`.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  # a rank-32 PCA bottleneck after block 3 of DeiT-Tiny, judged on a quarter of the photos
  splitstream calibrate --weights deit_tiny_patch16_224.safetensors \\
      --arch deit_tiny_patch16_224 --split 4 --rank 32,16,64 --images photos/ \\
      -o deit_tiny_split4_r32.safetensors

  # the same with the ViT's tensors in the output (a split checkpoint that loads as is)
  # and one JSON object per line
  splitstream calibrate --weights model.safetensors --split 2 --rank 16 \\
      --images photos/ --holdout 20 --with-model -o split.safetensors --json")]
// The CPU by default: a calibration is reproducible bit for bit on any machine.
#[command(mut_arg("backend", |a| a.default_value("cpu")))]
pub(crate) struct Args {
    // --weights: tensors of a bottleneck already in it are ignored.
    #[command(flatten)]
    model: WeightsArgs,
    /// timm architecture name (gives the head count; checked against the weights).
    #[arg(long, value_name = "NAME")]
    arch: Option<String>,
    /// Split point: 0 = after the embedding, k = after block k-1 (blocks on the device).
    #[arg(long, value_name = "K")]
    split: usize,
    /// Bottleneck channels per token; several, comma-separated, are all evaluated and
    /// the FIRST is written.
    #[arg(long, value_name = "R[,R..]", value_delimiter = ',', required = true, value_parser = parse_rank)]
    rank: Vec<usize>,
    /// Folder of images (searched recursively: PNG, JPEG, WebP, BMP, GIF, TIFF).
    #[arg(long, value_name = "DIR")]
    images: PathBuf,
    /// Images held out for evaluation: a count (20) or a fraction (0.25). They are drawn
    /// by a seeded shuffle, so classes sorted by file name do not all land on one side.
    #[arg(long, value_name = "N|F", default_value = "0.25", value_parser = parse_holdout)]
    holdout: Holdout,
    /// Seed of the hold-out draw.
    #[arg(long, default_value_t = 0, value_name = "N")]
    seed: u64,
    /// Where to write the bottleneck (safetensors: `bottleneck.*`, metadata `split`, `rank`).
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    /// Also write the ViT's tensors, making a split checkpoint that the split model
    /// loads as is.
    #[arg(long)]
    with_model: bool,
    /// timm's `crop_pct` of the eval transform (resize to floor(size / crop_pct), centre
    /// crop). Default: the checkpoint's metadata `crop_pct`, else timm's 0.875.
    #[arg(long, value_name = "F")]
    crop_pct: Option<f64>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 8, value_name = "N")]
    batch: usize,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    backend: BackendArgs,
    #[command(flatten)]
    threads: ThreadsArgs,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    if let Some(pct) = args.crop_pct {
        ensure!(
            pct > 0.0 && pct <= 1.0,
            "--crop-pct {pct} must be in (0, 1]"
        );
    }
    ensure!(args.batch > 0, "--batch must be at least 1");
    let images = find_images(&args.images)?;
    let (gpu, chosen) = args.backend.choice.open_wgpu_reporting()?;
    if let Some(line) = chosen {
        eprintln!("{line}");
    }
    match gpu {
        Some(g) => calibrate(g, &args, &images),
        None => calibrate(CpuBackend::new(args.threads.count)?, &args, &images),
    }
}

/// The image files under `dir`, sorted.
pub(crate) fn find_images(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    ensure!(
        dir.is_dir(),
        "--images {}: not a folder; give a folder of images",
        dir.display()
    );
    let mut found = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    while let Some((folder, depth)) = stack.pop() {
        let entries =
            std::fs::read_dir(&folder).with_context(|| format!("reading {}", folder.display()))?;
        for entry in entries {
            let path = entry
                .with_context(|| format!("reading {}", folder.display()))?
                .path();
            if path.is_dir() {
                if depth < MAX_DEPTH {
                    stack.push((path, depth + 1));
                }
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
            {
                ensure!(
                    found.len() < MAX_IMAGES,
                    "more than {MAX_IMAGES} images under {}; point --images at a smaller folder",
                    dir.display()
                );
                found.push(path);
            }
        }
    }
    if found.is_empty() {
        bail!(
            "no images found under {} (looked for {})",
            dir.display(),
            IMAGE_EXTENSIONS.join(", ")
        );
    }
    found.sort();
    Ok(found)
}

/// splitmix64: a tiny, well-mixed generator for the hold-out shuffle.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Splits `images` into (calibration, held out), each in file order.
pub(crate) fn split_images(
    images: &[PathBuf],
    holdout: Holdout,
    seed: u64,
) -> anyhow::Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let n = images.len();
    ensure!(
        n >= 2,
        "found {n} image(s): calibration needs at least one image to fit and one to hold out"
    );
    let held = match holdout {
        Holdout::Count(c) => c,
        Holdout::Fraction(f) => ((n as f64 * f).round() as usize).clamp(1, n - 1),
    };
    ensure!(
        held >= 1 && held < n,
        "--holdout {held} of {n} images leaves {} to fit the bottleneck and {held} to judge it; \
         both need at least one",
        n.saturating_sub(held)
    );
    let mut order: Vec<usize> = (0..n).collect();
    let mut state = seed;
    for i in (1..n).rev() {
        let j = (splitmix(&mut state) % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    let mut test: Vec<usize> = order[..held].to_vec();
    let mut fit: Vec<usize> = order[held..].to_vec();
    test.sort_unstable();
    fit.sort_unstable();
    Ok((
        fit.into_iter().map(|i| images[i].clone()).collect(),
        test.into_iter().map(|i| images[i].clone()).collect(),
    ))
}

/// Running sums of token activations: count, sum and the upper triangle of `x x^T`.
struct Moments {
    dim: usize,
    count: u64,
    sum: Vec<f64>,
    cross: Vec<f64>,
}

impl Moments {
    fn new(dim: usize) -> Self {
        Self {
            dim,
            count: 0,
            sum: vec![0.0; dim],
            cross: vec![0.0; dim * dim],
        }
    }

    /// Adds every row of `tokens` (`[.., dim]`).
    fn add(&mut self, tokens: &[f32]) {
        let d = self.dim;
        let mut row = vec![0f64; d];
        for chunk in tokens.chunks_exact(d) {
            for (r, &v) in row.iter_mut().zip(chunk) {
                *r = f64::from(v);
            }
            for (i, &xi) in row.iter().enumerate() {
                self.sum[i] += xi;
                let cross = &mut self.cross[i * d + i..(i + 1) * d];
                for (c, &xj) in cross.iter_mut().zip(&row[i..]) {
                    *c += xi * xj;
                }
            }
            self.count += 1;
        }
    }

    /// The mean and the principal directions, strongest first: `(mean, basis rows,
    /// eigenvalues)`, each basis row of unit length with its largest entry positive.
    fn pca(&self) -> (Vec<f64>, Vec<Vec<f64>>, Vec<f64>) {
        let d = self.dim;
        let n = self.count.max(1) as f64;
        let mean: Vec<f64> = self.sum.iter().map(|s| s / n).collect();
        let cov = nalgebra::DMatrix::<f64>::from_fn(d, d, |i, j| {
            let (a, b) = if i <= j { (i, j) } else { (j, i) };
            self.cross[a * d + b] / n - mean[a] * mean[b]
        });
        let eig = nalgebra::SymmetricEigen::new(cov);
        let mut order: Vec<usize> = (0..d).collect();
        order.sort_by(|&a, &b| eig.eigenvalues[b].total_cmp(&eig.eigenvalues[a]));
        let mut basis = Vec::with_capacity(d);
        let mut values = Vec::with_capacity(d);
        for &k in &order {
            let col: Vec<f64> = eig.eigenvectors.column(k).iter().copied().collect();
            // Eigenvectors have no sign; fix one so that the output is reproducible.
            let peak = col
                .iter()
                .fold(0f64, |m, &v| if v.abs() > m.abs() { v } else { m });
            let sign = if peak < 0.0 { -1.0 } else { 1.0 };
            basis.push(col.into_iter().map(|v| v * sign).collect());
            values.push(eig.eigenvalues[k].max(0.0));
        }
        (mean, basis, values)
    }
}

/// One quantization the report measures.
#[derive(Clone, Copy)]
struct Quant {
    name: &'static str,
    bits: u32,
    params: CodecParams,
}

fn quantizations() -> [Quant; 4] {
    let affine = |bits| CodecParams::affine_per_channel(bits, 2, ENTROPY);
    [
        Quant {
            name: "f32",
            bits: 32,
            params: CodecParams::LOSSLESS.with_entropy(ENTROPY),
        },
        Quant {
            name: "8-bit",
            bits: 8,
            params: affine(Bits::B8),
        },
        Quant {
            name: "4-bit",
            bits: 4,
            params: affine(Bits::B4),
        },
        Quant {
            name: "2-bit",
            bits: 2,
            params: affine(Bits::B2),
        },
    ]
}

/// Sums over the held-out frames for one rank x quantization.
#[derive(Default, Clone)]
struct Tally {
    frames: usize,
    agree: usize,
    cosine: f64,
    bytes: usize,
}

/// The safetensors bytes of a linear token bottleneck (and optionally the model).
fn bottleneck_file(
    mean: &[f64],
    basis: &[Vec<f64>],
    rank: usize,
    metadata: Vec<(String, String)>,
    model: Option<&Weights>,
) -> anyhow::Result<Vec<u8>> {
    let d = mean.len();
    let mean = HostTensor::new([d], mean.iter().map(|&v| v as f32).collect())?;
    let rows: Vec<f32> = basis
        .iter()
        .take(rank)
        .flat_map(|row| row.iter().map(|&v| v as f32))
        .collect();
    let basis = HostTensor::new([rank, d], rows)?;
    let mut tensors = linear_token_tensors(BOTTLENECK_PREFIX, &mean, &basis)?;
    if let Some(weights) = model {
        let prefix = format!("{BOTTLENECK_PREFIX}.");
        for name in weights.names().filter(|n| !n.starts_with(&prefix)) {
            let shape = weights.shape(name).unwrap_or_default().to_vec();
            tensors.push((name.to_string(), weights.get(name, &shape)?));
        }
    }
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, t)| {
            let data = t.data().iter().flat_map(|v| v.to_le_bytes()).collect();
            (name.clone(), t.shape().to_vec(), data)
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, shape, data)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                .map(|v| (name.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(safetensors::serialize(
        views,
        Some(metadata.into_iter().collect()),
    )?)
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 {
        return if aa == bb { 1.0 } else { 0.0 };
    }
    ab / (aa.sqrt() * bb.sqrt())
}

/// Encodes each item of `x` (`[B, N, C]`) as its own frame, decodes it, and returns the
/// decoded batch and the total bytes.
fn through_codec(
    encoder: &mut Encoder,
    x: &HostTensor,
    params: &CodecParams,
) -> anyhow::Result<(HostTensor, usize)> {
    let shape = x.shape();
    let &[batch, n, c] = shape else {
        bail!("codec input must be [B, N, C], got {shape:?}");
    };
    let per = n * c;
    let item_shape = [1, n, c];
    let mut out = Vec::with_capacity(x.numel());
    let mut bytes = 0;
    let mut frame = Vec::new();
    for item in x.data().chunks_exact(per).take(batch) {
        let view = TensorView::f32(&item_shape, item)?;
        encoder.encode_into(&view, params, &mut frame)?;
        bytes += frame.len();
        out.extend(decode(&frame, &DecodeLimits::default())?.to_f32());
    }
    Ok((HostTensor::new(shape.to_vec(), out)?, bytes))
}

fn calibrate<B: Backend>(be: B, args: &Args, images: &[PathBuf]) -> anyhow::Result<()> {
    let weights = Weights::from_file(&args.model.weights)?;
    // A split checkpoint's own bottleneck is not what we fit: take it out of the way.
    if Bottleneck::load(&be, &weights, BOTTLENECK_PREFIX)
        .context("the checkpoint's existing bottleneck")?
        .is_some()
        && !args.json
    {
        eprintln!(
            "note: {} already has a bottleneck; it is ignored",
            args.model.weights.display()
        );
    }
    let options = VitOptions {
        arch: args.arch.clone(),
        num_heads: match args.model.heads {
            Some(h) => Some(h),
            None => SplitMetadata::from_weights(&weights)?.num_heads,
        },
        eps: None,
    };
    let vit = Vit::load(be.clone(), &weights, &options).with_context(|| {
        // The models crate names no flags: the hint is this command's.
        format!(
            "loading {} (a checkpoint of another architecture? name it with --arch)",
            args.model.weights.display()
        )
    })?;
    let cfg = vit.config().clone();
    let (k, d, tokens) = (args.split, cfg.embed_dim, cfg.num_tokens());
    ensure!(
        k <= cfg.depth,
        "--split {k} is out of range: this model has split points 0..={} (0 = after the \
         embedding, k = after block k-1)",
        cfg.depth
    );
    for &r in &args.rank {
        ensure!(
            r <= d,
            "--rank {r} is larger than the model's {d} channels per token; a bottleneck must \
             be narrower than what it replaces"
        );
    }
    let (fit, test) = split_images(images, args.holdout, args.seed)?;
    let max_rank = args.rank.iter().copied().max().unwrap_or(0);
    ensure!(
        fit.len() * tokens >= max_rank,
        "{} calibration image(s) give {} tokens, fewer than rank {max_rank}",
        fit.len(),
        fit.len() * tokens
    );
    let size = u32::try_from(cfg.image_size).context("model input size out of range")?;
    let transform = match args.crop_pct {
        Some(pct) => EvalTransform::with_crop_pct(size, pct),
        None => EvalTransform::for_checkpoint(size, weights.metadata_value("crop_pct"))?,
    };

    let bar = progress(args.json, fit.len() + test.len());
    bar.set_message("fitting");
    let mut moments = Moments::new(d);
    for chunk in fit.chunks(args.batch) {
        let x = be.upload(&load_batch(chunk, &transform)?)?;
        let act = be.readback(&vit.head(&x, k)?)?;
        moments.add(act.data());
        bar.inc(chunk.len() as u64);
    }
    let (mean, basis, values) = moments.pca();
    let total_var: f64 = values.iter().sum::<f64>().max(f64::MIN_POSITIVE);
    let explained = |r: usize| values.iter().take(r).sum::<f64>() / total_var;

    let meta = |r: usize| -> Vec<(String, String)> {
        let mut m = vec![
            ("split".to_string(), k.to_string()),
            ("rank".to_string(), r.to_string()),
            ("bottleneck".to_string(), "token".to_string()),
            ("decoder".to_string(), "linear".to_string()),
            ("method".to_string(), "pca".to_string()),
            ("calibration_images".to_string(), fit.len().to_string()),
            ("num_heads".to_string(), cfg.num_heads.to_string()),
        ];
        if let Some(arch) = &cfg.arch {
            m.push(("arch".to_string(), arch.clone()));
        }
        m
    };
    let bottlenecks = args
        .rank
        .iter()
        .map(|&r| {
            let bytes = bottleneck_file(&mean, &basis, r, meta(r), None)?;
            let file = Weights::from_bytes(bytes, "calibrated bottleneck")?;
            Bottleneck::load(&be, &file, BOTTLENECK_PREFIX)?
                .context("calibrated bottleneck has no tensors")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    // Rows: no bottleneck (the raw activation) first, then each rank; x each quantization.
    let quants = quantizations();
    let mut tallies = vec![vec![Tally::default(); quants.len()]; args.rank.len() + 1];
    let mut encoder = Encoder::new();
    bar.set_message("evaluating");
    for chunk in test.chunks(args.batch) {
        let x = be.upload(&load_batch(chunk, &transform)?)?;
        let act = vit.head(&x, k)?;
        let full = be.readback(&vit.tail(&act, k)?)?;
        let classes = cfg.num_classes;
        let host_act = be.readback(&act)?;
        for (row, tally) in tallies.iter_mut().enumerate() {
            let (code, bn) = match row {
                0 => (host_act.clone(), None),
                i => {
                    let bn = &bottlenecks[i - 1];
                    (be.readback(&bn.encode(&act)?)?, Some(bn))
                }
            };
            for (q, t) in quants.iter().zip(tally.iter_mut()) {
                let (decoded, bytes) = through_codec(&mut encoder, &code, &q.params)?;
                let decoded = be.upload(&decoded)?;
                let restored = match bn {
                    Some(bn) => bn.decode(&decoded)?,
                    None => decoded,
                };
                let logits = be.readback(&vit.tail(&restored, k)?)?;
                for (got, want) in logits
                    .data()
                    .chunks_exact(classes)
                    .zip(full.data().chunks_exact(classes))
                {
                    t.frames += 1;
                    t.agree += usize::from(argmax(got) == argmax(want));
                    t.cosine += cosine(got, want);
                }
                t.bytes += bytes;
            }
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();

    let first = args.rank[0];
    let model = args.with_model.then_some(&weights);
    let out = bottleneck_file(&mean, &basis, first, meta(first), model)?;
    std::fs::write(&args.output, &out)
        .with_context(|| format!("writing {}", args.output.display()))?;

    let raw_bytes = tokens * d * 4;
    let rows: Vec<serde_json::Value> = tallies
        .iter()
        .enumerate()
        .flat_map(|(row, tally)| {
            let rank = if row == 0 {
                None
            } else {
                Some(args.rank[row - 1])
            };
            let var = rank.map_or(1.0, explained);
            tally.iter().zip(&quants).map(move |(t, q)| {
                let frames = t.frames.max(1) as f64;
                serde_json::json!({
                    "type": "row",
                    "rank": rank,
                    "quantization": q.name,
                    "bits": q.bits,
                    "explained_variance": var,
                    "top1_agreement": t.agree as f64 / frames,
                    "logit_cosine": t.cosine / frames,
                    "bytes_per_frame": t.bytes as f64 / frames,
                    "frames": t.frames,
                })
            })
        })
        .collect();
    let setup = serde_json::json!({
        "type": "setup",
        "weights": args.model.weights.display().to_string(),
        "split": k,
        "tokens": tokens,
        "embed_dim": d,
        "calibration_images": fit.len(),
        "holdout_images": test.len(),
        "raw_f32_bytes": raw_bytes,
        "codec": "per-frame SSTF, per-channel affine (axis 2), zstd level 1",
    });
    let written = serde_json::json!({
        "type": "written",
        "path": args.output.display().to_string(),
        "rank": first,
        "with_model": args.with_model,
        "bytes": out.len(),
    });
    if args.json {
        println!("{setup}");
        for row in &rows {
            println!("{row}");
        }
        println!("{written}");
    } else {
        println!(
            "split {k} of {} ({} tokens x {d} channels = {raw_bytes} bytes in f32); fitted on {} \
             image(s), judged on {} held out",
            cfg.depth,
            tokens,
            fit.len(),
            test.len()
        );
        println!(
            "{:>6}  {:>6}  {:>9}  {:>8}  {:>10}  {:>11}  {:>8}",
            "rank", "quant", "variance", "top-1", "cosine", "bytes/frame", "vs f32"
        );
        for row in &rows {
            let rank = row["rank"]
                .as_u64()
                .map_or("none".to_string(), |r| r.to_string());
            let bytes = row["bytes_per_frame"].as_f64().unwrap_or(0.0);
            println!(
                "{:>6}  {:>6}  {:>8.1}%  {:>7.1}%  {:>10.5}  {:>11.0}  {:>7.1}%",
                rank,
                row["quantization"].as_str().unwrap_or(""),
                100.0 * row["explained_variance"].as_f64().unwrap_or(0.0),
                100.0 * row["top1_agreement"].as_f64().unwrap_or(0.0),
                row["logit_cosine"].as_f64().unwrap_or(0.0),
                bytes,
                100.0 * bytes / raw_bytes as f64,
            );
        }
        println!(
            "wrote rank-{first} bottleneck{} to {}",
            if args.with_model {
                " with the model"
            } else {
                ""
            },
            args.output.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pca_recovers_the_directions_of_a_planar_cloud() {
        // Points on the plane spanned by e0 and e1 (variance 9 and 1) in 3-D, plus a mean.
        let mut m = Moments::new(3);
        let mut pts = Vec::new();
        for i in 0..40 {
            let a = (i as f32 * 0.7).sin() * 3.0;
            let b = (i as f32 * 1.3).cos();
            pts.extend([a + 5.0, b - 2.0, 1.0]);
        }
        m.add(&pts);
        let (mean, basis, values) = m.pca();
        assert!((mean[2] - 1.0).abs() < 1e-9);
        assert!(basis[0][0].abs() > 0.999, "{:?}", basis[0]);
        assert!(basis[1][1].abs() > 0.999, "{:?}", basis[1]);
        assert!(values[2].abs() < 1e-9 && values[0] > values[1]);
    }

    #[test]
    fn holdout_takes_the_asked_share_and_keeps_both_sides_non_empty() {
        let images: Vec<PathBuf> = (0..10).map(|i| PathBuf::from(format!("{i}.png"))).collect();
        let (fit, test) = split_images(&images, Holdout::Fraction(0.3), 1).unwrap();
        assert_eq!((fit.len(), test.len()), (7, 3));
        let (fit, test) = split_images(&images, Holdout::Count(9), 1).unwrap();
        assert_eq!((fit.len(), test.len()), (1, 9));
        assert!(split_images(&images, Holdout::Count(10), 1).is_err());
        assert!(split_images(&images[..1], Holdout::Fraction(0.5), 1).is_err());
        assert!(parse_holdout("1.5").is_err() && parse_holdout("x").is_err());
    }
}
