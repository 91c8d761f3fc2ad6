//! `splitstream features`: the pooled head output of every image in a folder, as
//! `.npy`, for `python/train_fallback.py` to train the non-neural fallback on. The
//! pooling is the device's own (`ClassicHead` calls the same function), so the
//! classifier is trained on exactly the numbers it will see.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{ensure, Context};
use splitstream_head::classic::head_features;
use splitstream_head::device::load_model;
use splitstream_models::classic::Pool;
use splitstream_models::cli::{ThreadsArgs, WeightsArgs};
use splitstream_models::net::InputSpec;
use splitstream_models::preprocess::load_rgb;
use splitstream_models::HostTensor;

use super::evaluate::test_items;
use super::measure::progress;

/// Arguments of `splitstream features`.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  # the bottleneck code of the demo's BottleFit student, mean over tokens
  splitstream features --weights assets/demo/demo_vit_bottlefit.safetensors --at 1 \\
      --pool mean --images assets/demo/test --out test_x.npy --labels-out test_y.npy

  # the teacher's tokens after block 1, mean and class token
  splitstream features --weights assets/demo/demo_vit.safetensors --at 1 \\
      --pool mean_cls --images train_pngs --out train_x.npy --labels-out train_y.npy

Images: a folder with labels.csv (file,label), as assets/demo/test, or any images.
Output: a float32 array [images, features] in .npy (little-endian, C order), the rows
in labels.csv order (else sorted file names); --labels-out: int64 [images].")]
pub(crate) struct Args {
    #[command(flatten)]
    model: WeightsArgs,
    /// Split point: head stages run before pooling (a model with a learned bottleneck
    /// must be cut at its point, and then gives the code).
    #[arg(long, value_name = "K")]
    at: usize,
    /// How the head's tokens become one vector: mean, cls or mean_cls.
    #[arg(long, value_name = "POOL", default_value = "mean", value_parser = ["mean", "cls", "mean_cls"])]
    pool: String,
    /// Folder of images (labels.csv inside for labels).
    #[arg(long, value_name = "DIR")]
    images: PathBuf,
    /// Only the first N images.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// The features, .npy.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// The labels, .npy (needs labels.csv).
    #[arg(long, value_name = "FILE")]
    labels_out: Option<PathBuf>,
    #[command(flatten)]
    threads: ThreadsArgs,
}

/// Runs `splitstream features`.
pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let pool: Pool = args.pool.parse()?;
    let mut items = test_items(&args.images)?;
    if let Some(n) = args.limit {
        items.truncate(n);
    }
    ensure!(!items.is_empty(), "no images in {}", args.images.display());
    let labels: Option<Vec<i64>> = items
        .iter()
        .map(|i| i.label.and_then(|l| i64::try_from(l).ok()))
        .collect();
    if args.labels_out.is_some() && labels.is_none() {
        anyhow::bail!(
            "--labels-out: {} has no labels.csv (file,label)",
            args.images.display()
        );
    }
    let shown = args.model.weights.display().to_string();
    let bytes = std::fs::read(&args.model.weights).with_context(|| format!("reading {shown}"))?;
    let (model, _) = load_model(
        "features",
        bytes,
        &shown,
        args.model.heads,
        args.threads.count,
    )?;
    let at = model.split_at(args.at)?;
    let InputSpec::Image {
        channels,
        size,
        transform,
    } = model.input().clone()
    else {
        anyhow::bail!("{shown} does not take images");
    };
    let bar = progress(false, items.len());
    let mut rows: Vec<f32> = Vec::new();
    let mut width = 0;
    for item in &items {
        let img = load_rgb(&item.path)?;
        let x = HostTensor::new([1, channels, size, size], transform.apply(&img))?;
        let f = head_features(&model, &at, pool, &x)
            .with_context(|| format!("features of {}", item.path.display()))?;
        if width == 0 {
            width = f.len();
        }
        ensure!(f.len() == width, "the feature width changed between images");
        rows.extend_from_slice(&f);
        bar.inc(1);
    }
    bar.finish_and_clear();
    write_npy(&args.out, "<f4", &[items.len(), width], |w| {
        rows.iter().try_for_each(|v| w.write_all(&v.to_le_bytes()))
    })?;
    if let (Some(path), Some(labels)) = (&args.labels_out, &labels) {
        write_npy(path, "<i8", &[labels.len()], |w| {
            labels
                .iter()
                .try_for_each(|v| w.write_all(&v.to_le_bytes()))
        })?;
    }
    eprintln!(
        "{} images, {width} features each ({} after point {}) -> {}",
        items.len(),
        pool,
        args.at,
        args.out.display()
    );
    Ok(())
}

/// A version 1.0 .npy file: magic, header dict padded to 64 bytes, then the data.
fn write_npy(
    path: &std::path::Path,
    descr: &str,
    shape: &[usize],
    body: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text = match dims.as_slice() {
        [one] => format!("({one},)"),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}");
    // magic (6) + version (2) + length (2) + header + '\n', a multiple of 64.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let len = u16::try_from(header.len()).context("npy header too long")?;
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = std::io::BufWriter::new(file);
    let io = |e: std::io::Error| anyhow::anyhow!("writing {}: {e}", path.display());
    w.write_all(b"\x93NUMPY\x01\x00").map_err(io)?;
    w.write_all(&len.to_le_bytes()).map_err(io)?;
    w.write_all(header.as_bytes()).map_err(io)?;
    body(&mut w).map_err(io)?;
    w.flush().map_err(io)?;
    Ok(())
}
