//! `splitstream-bench fallback`: the non-neural fallback classifiers (kNN, linear SVM,
//! random forest on the head's pooled features, `--fallback` of the device) beside the
//! network they stand in for, on a labelled test set: accuracy, device time per frame
//! and modelled energy per frame.
//!
//! Every frame runs the whole network (what `local` costs) and the head to the
//! classifiers' feature point (what a classifier needs first); each classifier then
//! predicts from the same features, on one thread and spread over the pool. Energy is
//! modelled as the policy models it: the device's compute power (`--power-model`,
//! default 6 W, a Raspberry-Pi-4-class board) times the compute time, and the compute
//! time is this host's times `--device-slowdown` (as `splitstream-bench policy` does).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context};
use serde_json::json;
use splitstream_head::classic::ClassicHead;
use splitstream_head::device::load_model;
use splitstream_head::policy::PowerModel;
use splitstream_models::classic::ClassicModel;
use splitstream_models::cli::ThreadsArgs;
use splitstream_models::net::{InputSpec, Output};
use splitstream_models::preprocess::load_rgb;
use splitstream_models::HostTensor;

use crate::stats::median;

/// Arguments of `splitstream-bench fallback`.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  # the shipped demo: BottleFit student, its three fallbacks, the 300 test images
  splitstream-bench fallback

  # a Pi-Zero-2-class device (30x this host), JSON lines
  splitstream-bench fallback --device-slowdown 30 --json

Rows: `network` is the whole model on the device (local mode); `head` is the device's
part up to the classifiers' feature point (split mode's device work); each classifier
row is head + pooling + classifier. Times are medians over frames; `classifier_us` is
the classifier alone, one thread and on the pool (`--threads`).")]
pub(crate) struct Args {
    /// The network (the device's --weights).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "assets/demo/demo_vit_bottlefit.safetensors"
    )]
    weights: PathBuf,
    /// Fallback classifiers (python/train_fallback.py); repeatable. Default: every
    /// .safetensors file in assets/demo/fallback.
    #[arg(long = "fallback", value_name = "FILE")]
    fallbacks: Vec<PathBuf>,
    /// Test images with labels.csv (file,label).
    #[arg(long, value_name = "DIR", default_value = "assets/demo/test")]
    images: PathBuf,
    /// Only the first N images.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Times each measurement is repeated per frame (the median is kept).
    #[arg(long, value_name = "N", default_value_t = 3)]
    repeat: usize,
    /// The device is this many times slower than this host (10: Raspberry Pi 4 class).
    #[arg(long, value_name = "F", default_value_t = 10.0)]
    device_slowdown: f64,
    /// The device's power model (compute=W,...), as splitstream-device takes it.
    #[arg(long, value_name = "SPEC")]
    power_model: Option<String>,
    /// CPU threads for the network and the classifiers' pool (0: one per core).
    #[command(flatten)]
    threads: ThreadsArgs,
    /// One JSON object per row.
    #[arg(long)]
    json: bool,
}

struct Row {
    name: String,
    detail: String,
    correct: usize,
    frames: usize,
    /// Device compute per frame, ms (this host).
    ms: Vec<f64>,
    /// The classifier alone, µs, one thread / the pool.
    alone_us: Vec<f64>,
    pooled_us: Vec<f64>,
}

impl Row {
    fn new(name: &str, detail: String) -> Self {
        Self {
            name: name.to_owned(),
            detail,
            correct: 0,
            frames: 0,
            ms: Vec::new(),
            alone_us: Vec::new(),
            pooled_us: Vec::new(),
        }
    }
}

fn default_fallbacks() -> anyhow::Result<Vec<PathBuf>> {
    let dir = Path::new("assets/demo/fallback");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}: give --fallback FILE", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    ensure!(!files.is_empty(), "no .safetensors in {}", dir.display());
    Ok(files)
}

fn labelled(dir: &Path) -> anyhow::Result<Vec<(PathBuf, usize)>> {
    let csv = dir.join("labels.csv");
    let text =
        std::fs::read_to_string(&csv).with_context(|| format!("reading {}", csv.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let mut cols = line.split(',');
        let (Some(file), Some(label)) = (cols.next(), cols.next()) else {
            bail!("{}:{}: expected file,label", csv.display(), n + 1);
        };
        let label = label
            .trim()
            .parse()
            .with_context(|| format!("{}:{}: label {label:?}", csv.display(), n + 1))?;
        out.push((dir.join(file.trim()), label));
    }
    Ok(out)
}

/// The median of `repeat` timings of `f` (seconds), and its last result.
fn timed<T>(repeat: usize, mut f: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<(f64, T)> {
    let mut times = Vec::with_capacity(repeat);
    let mut last = None;
    for _ in 0..repeat.max(1) {
        let t = Instant::now();
        let v = f()?;
        times.push(t.elapsed().as_secs_f64());
        last = Some(v);
    }
    let v = last.context("no run")?;
    Ok((median(&times).unwrap_or(0.0), v))
}

/// Runs `splitstream-bench fallback`.
pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    ensure!(
        args.device_slowdown.is_finite() && args.device_slowdown > 0.0,
        "--device-slowdown must be > 0"
    );
    let power = match &args.power_model {
        Some(spec) => PowerModel::parse(spec)?,
        None => PowerModel::default(),
    };
    let files = if args.fallbacks.is_empty() {
        default_fallbacks()?
    } else {
        args.fallbacks.clone()
    };
    let mut items = labelled(&args.images)?;
    if let Some(n) = args.limit {
        items.truncate(n);
    }
    ensure!(!items.is_empty(), "no images in {}", args.images.display());

    let shown = args.weights.display().to_string();
    let bytes = std::fs::read(&args.weights).with_context(|| format!("reading {shown}"))?;
    let (model, _) = load_model("bench", bytes, &shown, None, args.threads.count)?;
    let InputSpec::Image {
        channels,
        size,
        transform,
    } = model.input().clone()
    else {
        bail!("{shown} does not take images");
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads.count)
        .build()
        .context("starting the classifiers' thread pool")?;
    let probe = HostTensor::new([1, channels, size, size], vec![0.0; channels * size * size])?;
    let mut heads = Vec::new();
    for f in &files {
        let classic =
            ClassicModel::from_file(f).with_context(|| format!("loading {}", f.display()))?;
        let head = ClassicHead::new(model.clone(), classic, &probe)
            .with_context(|| format!("{} on {shown}", f.display()))?;
        heads.push(head);
    }
    // The classifiers share one feature point when they come from one training run;
    // the head row is the first's.
    let at = heads[0].point().clone();

    let mut rows = vec![
        Row::new(
            "network",
            format!("whole model ({})", file_name(&args.weights)),
        ),
        Row::new("head", format!("to point {} + pooling", at.depth)),
    ];
    for h in &heads {
        let c = h.classic();
        rows.push(Row::new(
            c.kind().as_str(),
            format!(
                "{} features, {}",
                c.n_features(),
                c.hyperparameters()
                    .trim_matches(|ch| ch == '{' || ch == '}')
                    .replace('"', "")
            ),
        ));
    }

    for (path, label) in &items {
        let img = load_rgb(path)?;
        let x = HostTensor::new([1, channels, size, size], transform.apply(&img))?;
        let (t, out) = timed(args.repeat, || Ok(model.run(&x, None)?))?;
        let Output::Logits(logits) = out else {
            bail!("{shown} is not a classifier");
        };
        let pred = first_argmax(logits.data());
        record(&mut rows[0], t, pred == *label);
        let (t_head, features) = timed(args.repeat, || Ok(heads[0].features(&x)?))?;
        record(&mut rows[1], t_head, false);
        for (i, h) in heads.iter().enumerate() {
            let feats = if h.point().depth == at.depth
                && h.classic().features().pool == heads[0].classic().features().pool
            {
                features.clone()
            } else {
                h.features(&x)?
            };
            let c = h.classic();
            let (alone, p) = timed(args.repeat, || Ok(c.predict_sequential(&feats)?))?;
            let (pooled, q) = timed(args.repeat, || Ok(pool.install(|| c.predict(&feats))?))?;
            ensure!(p == q, "{}: the pool changed a prediction", c.kind());
            let row = &mut rows[2 + i];
            record(row, t_head + alone.min(pooled), p.label == *label);
            row.alone_us.push(alone * 1e6);
            row.pooled_us.push(pooled * 1e6);
        }
    }
    report(&rows, &args, &power);
    Ok(())
}

fn record(row: &mut Row, secs: f64, correct: bool) {
    row.frames += 1;
    row.correct += usize::from(correct);
    row.ms.push(secs * 1e3);
}

fn first_argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

fn report(rows: &[Row], args: &Args, power: &PowerModel) {
    let net_ms = rows.first().and_then(|r| median(&r.ms)).unwrap_or(0.0);
    if !args.json {
        println!(
            "{} frames; device = this host x {} (loaded machine: ratios, not absolutes); \
             energy = {} W x device time",
            rows.first().map_or(0, |r| r.frames),
            args.device_slowdown,
            power.compute_w
        );
        println!(
            "{:<14} {:>9} {:>10} {:>11} {:>10} {:>10} {:>10}  detail",
            "mode", "accuracy", "host ms", "device ms", "mJ/frame", "vs net", "clf us"
        );
    }
    for r in rows {
        let ms = median(&r.ms).unwrap_or(0.0);
        let device_ms = ms * args.device_slowdown;
        let mj = power.compute_w * device_ms;
        let acc = (r.name != "head").then(|| 100.0 * r.correct as f64 / r.frames.max(1) as f64);
        let alone = median(&r.alone_us);
        let pooled = median(&r.pooled_us);
        let ratio = if net_ms > 0.0 { ms / net_ms } else { 0.0 };
        if args.json {
            println!(
                "{}",
                json!({
                    "bench": "fallback",
                    "mode": r.name,
                    "detail": r.detail,
                    "frames": r.frames,
                    "accuracy_pct": acc,
                    "host_ms_p50": ms,
                    "device_slowdown": args.device_slowdown,
                    "device_ms_p50": device_ms,
                    "energy_mj_per_frame": mj,
                    "energy_vs_network": ratio,
                    "classifier_us_p50_one_thread": alone,
                    "classifier_us_p50_pool": pooled,
                    "compute_w": power.compute_w,
                })
            );
        } else {
            let show = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
            println!(
                "{:<14} {:>9} {:>10.3} {:>11.2} {:>10.2} {:>9.3}x {:>10}  {}",
                r.name,
                acc.map_or("-".into(), |a| format!("{a:.2}%")),
                ms,
                device_ms,
                mj,
                ratio,
                match (alone, pooled) {
                    (Some(a), Some(p)) => format!("{}/{}", show(Some(a)), show(Some(p))),
                    _ => "-".into(),
                },
                r.detail
            );
        }
    }
}
