//! `splitstream demo` (also what `splitstream` runs with no subcommand): an edge and a
//! device in one process, on loopback over real QUIC with a freshly generated
//! certificate, on the demo model and test set that ship in `assets/demo`:
//!
//! - `demo_vit.safetensors`, the teacher ViT: what `local` runs, split without a
//!   bottleneck (lossless and 8-bit) and offloaded as JPEG;
//! - `demo_vit_bottlefit.safetensors`, the student ViT with its learned bottleneck
//!   (`bottleneck.*`; `split` and `rank` in its metadata): split at the bottleneck,
//!   its code sent in 8 and 4 bits;
//! - `test/*.jpg` and `test/labels.csv`, 300 held-out images.
//!
//! Every image runs in each mode; the table gives accuracy against the labels,
//! agreement with local (top-1), latency percentiles and bytes per frame.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use splitstream_head::device::{load_model, CodecChoice, Device, DeviceModel, RunMode};
use splitstream_head::offload::JpegSettings;
use splitstream_head::record::mark_frame;
use splitstream_head::source::{Frame, Payload};
use splitstream_head::stats::Percentiles;
use splitstream_models::labels::{display_class, ClassNames};
use splitstream_models::BackendChoice;
use splitstream_power::record::{RecordOptions, Recorder};
use splitstream_tail::edge::{EdgeOptions, RunningEdge};
use splitstream_tail::metrics::EdgeMetrics;
use splitstream_tail::model::ServedModel;
use splitstream_transport::{Client, ClientConfig, ModelId, ServerTrust, StreamConfig, TokenStore};

/// Arguments of `splitstream demo`.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  cargo run --release                 # the demo, from a fresh clone
  splitstream demo --frames 100       # fewer frames per mode
  splitstream demo --model-dir DIR    # other demo_vit*.safetensors files
  splitstream demo --record demo.jsonl && splitstream report demo.jsonl")]
pub(crate) struct Args {
    /// The demo folder (test/*.jpg, test/labels.csv); default: assets/demo of the
    /// project this binary was built from, else ./assets/demo.
    #[arg(long, value_name = "DIR")]
    assets: Option<PathBuf>,
    /// Where demo_vit.safetensors and demo_vit_bottlefit.safetensors are (default:
    /// the demo folder).
    #[arg(long, value_name = "DIR")]
    model_dir: Option<PathBuf>,
    /// Frames per mode (at most the test set's 300).
    #[arg(long, value_name = "N", default_value_t = 300)]
    frames: usize,
    /// Write a run record here: every mode's frames as stages (the device's
    /// preprocess, head, encode, send, tail; the in-process edge's decode and tail)
    /// joined with power, memory, temperatures and CPU frequency over time, each mode
    /// marked by a `phase:<label>` span; `splitstream report FILE` draws it.
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
}

impl Default for Args {
    fn default() -> Self {
        Self {
            assets: None,
            model_dir: None,
            frames: 300,
            record: None,
        }
    }
}

const TEACHER: &str = "demo-vit";
const STUDENT: &str = "demo-vit-bottlefit";
const TEACHER_FILE: &str = "demo_vit.safetensors";
const STUDENT_FILE: &str = "demo_vit_bottlefit.safetensors";
const DEVICE_ID: &str = "demo-device";

struct Sample {
    payload: Payload,
    label: usize,
    file: String,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(demo(args))
}

/// The demo folder: as given, else the project's `assets/demo` (located from where
/// this binary was built), else `assets/demo` under the current folder.
fn assets_dir(given: Option<PathBuf>) -> PathBuf {
    if let Some(dir) = given {
        return dir;
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo");
    if built.is_dir() {
        built
    } else {
        PathBuf::from("assets/demo")
    }
}

fn load_samples(dir: &Path, max: usize) -> anyhow::Result<Vec<Sample>> {
    let test = dir.join("test");
    let labels = test.join("labels.csv");
    let text = std::fs::read_to_string(&labels).with_context(|| {
        format!(
            "cannot read {}: run from the project folder or give --assets",
            labels.display()
        )
    })?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        if out.len() >= max {
            break;
        }
        let mut cols = line.split(',');
        let (Some(file), Some(label)) = (cols.next(), cols.next()) else {
            bail!(
                "{} line {}: expected file,label,class",
                labels.display(),
                n + 1
            );
        };
        let label: usize = label
            .trim()
            .parse()
            .with_context(|| format!("{} line {}: label {label:?}", labels.display(), n + 1))?;
        let image = splitstream_models::preprocess::load_rgb(test.join(file))?;
        out.push(Sample {
            payload: Payload::Image(image),
            label,
            file: file.to_owned(),
        });
    }
    if out.is_empty() {
        bail!("{} lists no images", labels.display());
    }
    Ok(out)
}

fn token() -> String {
    use std::hash::{BuildHasher, Hasher};
    // A fresh random token per run (std's randomly keyed SipHash); it never leaves
    // this process.
    (0..2)
        .map(|i| {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(i);
            format!("{:016x}", h.finish())
        })
        .collect()
}

struct ModeRun {
    label: String,
    logits: Vec<Vec<f32>>,
    latency_ms: Vec<f32>,
    bytes: u64,
    fallbacks: u64,
}

/// A model loaded for the device and served by the edge.
struct DemoModel {
    device: DeviceModel,
    id: ModelId,
    /// Its class names (`class_names` metadata), if it has them.
    names: Option<ClassNames>,
}

fn load_pair(dir: &Path, name: &str, file: &str) -> anyhow::Result<(DemoModel, ServedModel)> {
    let path = dir.join(file);
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "cannot read the demo model {}: run from the project folder, or give \
             --model-dir DIR holding {TEACHER_FILE} and {STUDENT_FILE}",
            path.display()
        )
    })?;
    let shown = path.display().to_string();
    let names = ClassNames::from_safetensors(&bytes)?;
    // One CPU thread each: the edge and the device share this machine's cores.
    let (device, id) = load_model(name, bytes.clone(), &shown, None, 1)?;
    let served = ServedModel::from_bytes(name, bytes, &shown, None, BackendChoice::Cpu, 1)?;
    Ok((DemoModel { device, id, names }, served))
}

async fn demo(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = assets_dir(args.assets);
    let model_dir = args.model_dir.unwrap_or_else(|| dir.clone());
    let samples = load_samples(&dir, args.frames.max(1))?;
    let (teacher, teacher_served) = load_pair(&model_dir, TEACHER, TEACHER_FILE)?;
    let (student, student_served) = load_pair(&model_dir, STUDENT, STUDENT_FILE)?;
    let Some(bottleneck) = student.device.bottleneck() else {
        bail!(
            "{} has no learned bottleneck (bottleneck.* tensors with split and rank metadata)",
            model_dir.join(STUDENT_FILE).display()
        );
    };
    let bottleneck = bottleneck.clone();
    let teacher_net = teacher.device.net();
    let plain = teacher.device.split_at(bottleneck.depth)?;
    println!(
        "splitstream demo: {} test images; teacher {TEACHER_FILE} ({}), student \
         {STUDENT_FILE} (bottleneck {}: {:?} per image where the teacher sends {:?})",
        samples.len(),
        teacher_net.describe(),
        bottleneck.name,
        bottleneck.shape,
        plain.shape,
    );

    let recorder = match &args.record {
        Some(path) => {
            let rec = Recorder::create(path, RecordOptions::default()).context("--record")?;
            // The in-process edge's batch worker marks decode and tail through it.
            splitstream_power::record::install(rec.clone());
            Some(rec)
        }
        None => None,
    };
    let mut tokens = TokenStore::new();
    let token = token();
    tokens.insert(DEVICE_ID, &token);
    let metrics = Arc::new(EdgeMetrics::new());
    let edge = RunningEdge::loopback(
        vec![teacher_served, student_served],
        tokens,
        EdgeOptions::default(),
        metrics,
    )?;
    println!(
        "edge on {} (QUIC, self-signed certificate, fingerprint {})",
        edge.local_addr(),
        edge.fingerprint()
    );

    let k = bottleneck.depth;
    let modes: Vec<(String, &DemoModel, RunMode)> = vec![
        ("local (teacher)".to_owned(), &teacher, RunMode::Local),
        (
            format!("split@{k} bottleneck u8"),
            &student,
            RunMode::Split {
                at: bottleneck.clone(),
                codec: CodecChoice::U8,
            },
        ),
        (
            format!("split@{k} bottleneck u4"),
            &student,
            RunMode::Split {
                at: bottleneck.clone(),
                codec: CodecChoice::U4,
            },
        ),
        (
            format!("split@{k} lossless"),
            &teacher,
            RunMode::Split {
                at: plain.clone(),
                codec: CodecChoice::Lossless,
            },
        ),
        (
            format!("split@{k} u8"),
            &teacher,
            RunMode::Split {
                at: plain.clone(),
                codec: CodecChoice::U8,
            },
        ),
        (
            "offload jpeg".to_owned(),
            &teacher,
            RunMode::Offload {
                jpeg: JpegSettings::default(),
            },
        ),
    ];
    let mut runs = Vec::new();
    for (label, model, mode) in modes {
        let client = match mode.wire() {
            None => None,
            Some((split, codec)) => {
                let stream = StreamConfig {
                    model: model.id.clone(),
                    split,
                    codec,
                };
                let cfg = ClientConfig::new(
                    edge.local_addr(),
                    ServerTrust::Pinned(edge.fingerprint()),
                    DEVICE_ID,
                    token.clone(),
                    stream,
                );
                Some(Arc::new(Client::connect(cfg).await.with_context(|| {
                    format!("{label}: the device could not open a session")
                })?))
            }
        };
        let mut device = Device::new(
            model.device.clone(),
            mode,
            client.clone(),
            Duration::from_secs(2),
        );
        let mut run = ModeRun {
            label,
            logits: Vec::new(),
            latency_ms: Vec::new(),
            bytes: 0,
            fallbacks: 0,
        };
        let mode_started = Instant::now();
        for (i, s) in samples.iter().enumerate() {
            let frame = Frame {
                index: i as u64,
                captured: Instant::now(),
                captured_wall: SystemTime::now(),
                source: Arc::from(s.file.as_str()),
                payload: s.payload.clone(),
            };
            let r = device.process(&frame).await;
            if let Some(rec) = &recorder {
                mark_frame(rec, frame.captured, &r.record);
            }
            run.latency_ms.push(r.record.total_ms as f32);
            run.bytes += r.record.bytes_sent;
            run.fallbacks += u64::from(r.record.fallback.is_some());
            run.logits.push(r.logits().to_vec());
        }
        if let Some(rec) = &recorder {
            rec.stage(
                &format!("phase:{}", run.label),
                mode_started,
                mode_started.elapsed(),
                None,
            );
        }
        drop(device);
        if let Some(c) = client.and_then(|c| Arc::try_unwrap(c).ok()) {
            c.close().await;
        }
        runs.push(run);
    }
    let largest_batch = edge
        .counters()
        .largest_batch
        .load(std::sync::atomic::Ordering::Relaxed);
    edge.shutdown().await;
    if let Some(rec) = recorder {
        splitstream_power::record::uninstall();
        let end = rec.finish().context("--record")?;
        eprintln!("{}", end.describe(rec.path()));
    }

    let reference = &runs[0].logits;
    println!();
    println!(
        "| {:<26} | {:>8} | {:>9} | {:>8} | {:>8} | {:>11} | {:>9} |",
        "mode", "accuracy", "agreement", "p50 ms", "p95 ms", "bytes/frame", "fallbacks"
    );
    println!(
        "|{}|",
        [28, 10, 11, 10, 10, 13, 11]
            .map(|w| "-".repeat(w))
            .join("|")
    );
    for run in &runs {
        let n = run.logits.len().max(1) as f64;
        let correct = run
            .logits
            .iter()
            .zip(&samples)
            .filter(|(l, s)| argmax(l) == Some(s.label))
            .count();
        let agree = agreement(reference, &run.logits);
        let p = Percentiles::of(&run.latency_ms);
        println!(
            "| {:<26} | {:>7.1}% | {:>8.1}% | {:>8.2} | {:>8.2} | {:>11.0} | {:>9} |",
            run.label,
            100.0 * correct as f64 / n,
            100.0 * agree as f64 / n,
            p.p50,
            p.p95,
            run.bytes as f64 / n,
            run.fallbacks
        );
    }
    // A few answers as a person reads them: the trained bottleneck at 4 bits, with the
    // class names the checkpoint carries (indices without them).
    if let Some(run) = runs.iter().find(|r| r.label.ends_with("bottleneck u4")) {
        let names = student.names.as_ref().or(teacher.names.as_ref());
        println!();
        println!("first answers of {}:", run.label);
        for (logits, s) in run.logits.iter().zip(&samples).take(5) {
            let answer = argmax(logits).map_or("-".to_owned(), |c| display_class(names, c));
            let truth = display_class(names, s.label);
            let mark = if argmax(logits) == Some(s.label) {
                "right"
            } else {
                "wrong"
            };
            println!("  {:<10} {answer:<22} true: {truth:<22} {mark}", s.file);
        }
    }
    println!();
    println!(
        "{} frames per mode; accuracy against the labels, agreement = same top-1 as local \
         (teacher); largest edge batch {largest_batch}; total {:.1} s",
        samples.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn argmax(v: &[f32]) -> Option<usize> {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
}

/// Frames whose top-1 equals the reference's.
fn agreement(reference: &[Vec<f32>], other: &[Vec<f32>]) -> usize {
    reference
        .iter()
        .zip(other)
        .filter(|(a, b)| argmax(a).is_some() && argmax(a) == argmax(b))
        .count()
}
