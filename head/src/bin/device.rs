//! `splitstream-device`: runs a model's head on this device and its tail on an edge.
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::Parser;
use splitstream_head::device::{load_model, CodecChoice};
use splitstream_head::draw::{draw_detections, save_drawn, DrawFormat};
use splitstream_head::offload::JpegSettings;
use splitstream_head::policy::{
    auto_plans, devices_with_fallback, Plan, Policy, PolicyConfig, PolicyRunner, PowerModel,
};
use splitstream_head::record::mark_frame;
use splitstream_head::source::Payload;
use splitstream_head::source::{
    open_source, parse_size, spawn_feed, EventOptions, EventRepr, Pacing, Source, SourceOptions,
};
use splitstream_head::stats::{FrameRecord, Outcome, RunStats};
use splitstream_models::cli::{LabelsArgs, ThreadsArgs, WeightsArgs};
use splitstream_models::labels::ClassNames;
use splitstream_models::net::{Answer, OutputKind};
use splitstream_power::record::{PowerChoice, RecordOptions, Recorder};
use splitstream_transport::{
    Client, ClientConfig, CongestionControl, FleetConfig, ServerTrust, StreamConfig,
};

/// Classify frames with a ViT/DeiT, or find objects with a FemtoDet detector, running
/// it locally, split with an edge, or offloaded to it. One JSON line per frame on stdout
/// (a detector's boxes as label, score and x1 y1 x2 y2 in the frame's pixels), a
/// summary at the end. When the
/// edge is unreachable or fails, frames are computed locally: none is lost.
#[derive(Parser)]
#[command(
    name = "splitstream-device",
    version,
    about,
    after_help = "Examples:
  # split after block 2 with 8-bit quantization, pinning the edge's fingerprint
  splitstream-device --weights vit.safetensors --name demo-vit --edge 10.0.0.5:4433 \\
      --fingerprint AB:CD:...:EF --device-id cam-1 --token-file token \\
      --input 'frames/*.jpg' --mode split --at 2 --codec u8

  # offload whole frames as JPEG from a camera at 10 fps (through ffmpeg)
  SPLITSTREAM_TOKEN=... splitstream-device --weights vit.safetensors \\
      --edge edge.local:4433 --ca ca.pem --input /dev/video0 --fps 10 --mode offload

  # let the policy choose per frame, from the battery, the link and the edge
  splitstream-device --weights vit.safetensors --edge 10.0.0.5:4433 --fingerprint ... \\
      --token-file token --input /dev/video0 --policy auto --power-source battery \\
      --latency-target-ms 80

  # auto, with a random forest on the head's features for a critical battery and no edge
  splitstream-device --weights assets/demo/demo_vit_bottlefit.safetensors \\
      --edge 10.0.0.5:4433 --fingerprint ... --token-file token --input /dev/video0 \\
      --policy auto --power-source battery \\
      --fallback assets/demo/fallback/random_forest.safetensors

  # a fleet of three edges (or one DNS name with several records), fail-over included;
  # each JSON line says which edge answered (\"edge\") and any \"failover\" on the way
  splitstream-device --weights vit.safetensors --edge 10.0.0.5:4433 --edge 10.0.0.6:4433 \\
      --edge edges.local:4433 --ca ca.pem --server-name edge.local --token-file token \\
      --input /dev/video0 --fps 10 --mode split --at 2

  # all on the device (no edge needed)
  splitstream-device --weights vit.safetensors --input photo.jpg --mode local

  # a run record (stages, power, memory, temperatures over time), then its pictures
  splitstream-device --weights vit.safetensors --input 'frames/*.jpg' --mode local \\
      --record run.jsonl && splitstream report run.jsonl --out run-report

  # a FemtoDet detector split after stage3, the boxes drawn into out/
  splitstream-device --weights femtodet.safetensors --edge 10.0.0.5:4433 \\
      --fingerprint ... --token-file token --input 'photos/*.jpg' --mode split \\
      --at 3 --draw out/

  # an event camera recording, 33 ms of events per frame, rendered as pictures
  splitstream-device --weights vit.safetensors --input recording.raw --mode local

Inputs: an image, a folder, a glob, a video file, a camera or rtsp:// URL (ffmpeg),
a .safetensors file of preprocessed [1,3,S,S] tensors, or events: a recording (.raw
.aedat4 .aedat; events:FILE for .bin/.csv/.txt), events:- (a pipe on stdin) or
dv+tcp://HOST:PORT (iniVation DV's network output).
The token: --token-file FILE or SPLITSTREAM_TOKEN (--token TOKEN works too, but any
user on the machine can read a process's arguments, e.g. with ps).
A weights file with a learned bottleneck splits at its point (the default --at) and
sends its code.
Output: a JSON line per frame, e.g.
  {\"seq\":0,\"mode\":\"split\",\"split\":1,\"result\":{\"status\":\"classified\",\"class\":4,
   \"score\":0.91,\"label\":\"coins\"},\"bytes_sent\":1088,\"head_ms\":2.1,...}
(label: from --labels FILE or the checkpoint's class_names metadata), then a summary."
)]
#[command(mut_arg("weights", |a| a.help(
    "Checkpoint in safetensors with timm's tensor names; the edge must load the same file"
)))]
struct Args {
    #[command(flatten)]
    model: WeightsArgs,
    /// A detector: write each image frame with its boxes drawn into this folder
    /// (`frame_000000.png`, ...; created if absent).
    #[arg(long, value_name = "DIR")]
    draw: Option<PathBuf>,
    /// Format of the --draw frames.
    #[arg(long, value_name = "FORMAT", default_value = "png", value_parser = ["png", "jpeg", "jpg"])]
    draw_format: String,
    /// Model name the edge serves it under; default: the file name without extension.
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// What to classify (see below).
    #[arg(long, value_name = "SPEC")]
    input: String,
    /// Where frames run: auto (chosen per frame from the battery, the link and the
    /// edge's advice; see docs/power.md), or always local, split or offload.
    #[arg(long = "policy", visible_alias = "mode", value_name = "POLICY", value_enum, default_value_t = PolicyArg::Split)]
    mode: PolicyArg,
    /// --policy auto: the split points to choose among (default: the learned
    /// bottleneck's point when the model has one, else every point 0..=depth).
    #[arg(long, value_name = "K,K,..", value_delimiter = ',')]
    split_points: Vec<usize>,
    /// Power readings for the policy: battery[:NAME], rapl, ina3221[:PATH], nvml,
    /// trace:FILE or const:W. Without one the device counts as on mains (latency first).
    #[arg(long, value_name = "SPEC", conflicts_with = "power_trace")]
    power_source: Option<String>,
    /// A CSV power trace (watts, battery) replayed in real time: --power-source trace:FILE.
    #[arg(long, value_name = "FILE")]
    power_trace: Option<PathBuf>,
    /// --policy auto: per-frame latency target, ms; with a low battery the policy takes
    /// the least-energy mode among those predicted to meet it.
    #[arg(long, value_name = "MS")]
    latency_target_ms: Option<f64>,
    /// --policy auto: a non-neural fallback classifier (kNN, linear SVM or random forest
    /// from python/train_fallback.py) on the head's features, run when the battery is
    /// critical and the edge cannot answer (docs/fallback.md).
    #[arg(long, value_name = "FILE")]
    fallback: Option<PathBuf>,
    /// --policy auto: the device's power model in watts (default
    /// compute=6,radio=3.7,wait=2.5,per_byte=0: a Raspberry-Pi-4-class board on Wi-Fi).
    #[arg(long, value_name = "SPEC")]
    power_model: Option<String>,
    /// Split point for --mode split: head blocks run on the device (0 = embedding
    /// only). Default: the bottleneck's point for a model with a learned bottleneck.
    #[arg(long, value_name = "K")]
    at: Option<usize>,
    /// Bottleneck codec for --mode split.
    #[arg(long, value_name = "NAME", default_value = "u8", value_parser = codec_parser())]
    codec: CodecChoice,
    /// JPEG quality for --mode offload, 1-100.
    #[arg(long, value_name = "Q", default_value_t = 90, value_parser = clap::value_parser!(u8).range(1..=100))]
    jpeg_quality: u8,
    /// The edge's address (host:port). Repeat it for a fleet of edges (most preferred
    /// first); a name with several DNS records counts as all of them. Each frame goes
    /// to the edge with the least round trip, queue delay and load; a frame an edge
    /// fails is re-sent to the next one (or run locally) by its deadline, and traffic
    /// returns to a preferred edge once it is back. The edges share a certificate
    /// (--fingerprint) or a CA (--ca). See docs/transport.md.
    #[arg(long, value_name = "ADDR")]
    edge: Vec<String>,
    /// Pin the edge's certificate SHA-256 fingerprint (as it prints at start).
    #[arg(long, value_name = "HEX", conflicts_with = "ca")]
    fingerprint: Option<String>,
    /// Trust edge certificates signed by this CA (PEM).
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Name on the edge's certificate (with --ca).
    #[arg(long, value_name = "NAME", default_value = "localhost")]
    server_name: String,
    /// Device id, as in the edge's token file.
    #[arg(long, value_name = "ID", default_value = "device")]
    device_id: String,
    /// A file holding the device's token (surrounding whitespace ignored). Prefer it, or
    /// the SPLITSTREAM_TOKEN environment variable, to --token.
    #[arg(long, value_name = "FILE", conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// The device's token (default: the SPLITSTREAM_TOKEN environment variable). Other
    /// users can read it in `ps`: prefer --token-file or the variable.
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
    /// Latency budget per frame at the edge, ms; past it the frame runs locally.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    budget_ms: u64,
    /// QUIC congestion controller for the frames sent: bbr (default; paces to the
    /// measured rate and does not take random radio loss for congestion) or cubic.
    #[arg(long, value_name = "CC", default_value_t = CongestionControl::Bbr)]
    congestion: CongestionControl,
    /// Frames in flight before the oldest is overtaken (latest-frame-wins); default:
    /// what the edge allows (8 unless its `[limits] max_in_flight` says more). On a long
    /// lossy path a frame may need RTT x 3 to be answered: at 30 fps and 100 ms RTT ask
    /// for about 32, and raise the edge's limit to match.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_in_flight: Option<u32>,
    /// Frame rate to pace the input at (default: as fast as possible for files).
    #[arg(long, value_name = "FPS")]
    fps: Option<f64>,
    /// Loop the input forever.
    #[arg(long)]
    repeat: bool,
    /// Stop after this many frames.
    #[arg(long, value_name = "N")]
    frames: Option<u64>,
    #[command(flatten)]
    labels: LabelsArgs,
    #[command(flatten)]
    threads: ThreadsArgs,
    /// Frames decoded ahead of the model (capture overlaps compute; see docs/runtime.md).
    #[arg(long, value_name = "N", default_value_t = 2)]
    prefetch: usize,
    /// Event inputs: the time window of one frame, ms.
    #[arg(long, value_name = "MS", default_value_t = 33.0)]
    event_window_ms: f64,
    /// Event inputs: how a window becomes a frame: rendered (an RGB picture, for image
    /// models) or histogram (two-channel counts [1,2,H,W], for event models).
    #[arg(long, value_name = "REPR", default_value = "rendered", value_parser = event_repr_parser())]
    event_repr: EventRepr,
    /// Event inputs: the sensor size when the stream does not declare it.
    #[arg(long, value_name = "WxH")]
    event_size: Option<String>,
    /// Event inputs: hand out events at their recorded speed (as a live camera).
    #[arg(long)]
    event_realtime: bool,
    /// Write a run record here: each frame's stages (preprocess, head, encode, send,
    /// tail) joined with power, memory, temperatures and CPU frequency sampled over
    /// time, as JSON lines; `splitstream report FILE` draws it. Watts come from
    /// --power-source when given, else the first meter found, else a CPU-time model
    /// (the record says which).
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
}

/// Where frames run (`--policy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum PolicyArg {
    /// Chosen per frame from the battery, the link and the edge's advice.
    Auto,
    /// Always on the device.
    Local,
    /// Always split with the edge.
    Split,
    /// Always offloaded to the edge as JPEG.
    Offload,
}

impl PolicyArg {
    fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Local => "local",
            Self::Split => "split",
            Self::Offload => "offload",
        }
    }
}

/// `--codec`: the transport's codec names, listed in `--help`, misuse refused by clap.
fn codec_parser() -> impl TypedValueParser<Value = CodecChoice> {
    PossibleValuesParser::new(CodecChoice::ALL.map(CodecChoice::name))
        .map(|s| CodecChoice::parse(&s).expect("clap admits only listed names"))
}

/// `--event-repr`: the event representations' names.
fn event_repr_parser() -> impl TypedValueParser<Value = EventRepr> {
    PossibleValuesParser::new(EventRepr::ALL.map(EventRepr::name))
        .map(|s| EventRepr::parse(&s).expect("clap admits only listed names"))
}

/// The device's token: --token-file, else --token, else SPLITSTREAM_TOKEN.
fn token(args: &Args) -> anyhow::Result<String> {
    if let Some(path) = &args.token_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--token-file {}: cannot read it", path.display()))?;
        let token = text.trim();
        if token.is_empty() {
            bail!("--token-file {}: the file is empty", path.display());
        }
        return Ok(token.to_owned());
    }
    match args
        .token
        .clone()
        .or_else(|| std::env::var("SPLITSTREAM_TOKEN").ok())
    {
        Some(t) => Ok(t),
        None => bail!(
            "give --token-file FILE (or SPLITSTREAM_TOKEN): the device's token from the edge's token file"
        ),
    }
}

/// `--fallback FILE`: the classifier, checked against the model's head (its split
/// point exists and gives as many features as it takes).
fn load_fallback(
    model: &splitstream_head::device::DeviceModel,
    path: &std::path::Path,
) -> anyhow::Result<splitstream_head::classic::ClassicHead> {
    let classic = splitstream_models::classic::ClassicModel::from_file(path)
        .with_context(|| format!("--fallback {}", path.display()))?;
    let shape: Vec<usize> = std::iter::once(1)
        .chain(model.input().item_shape().iter().copied())
        .collect();
    let probe =
        splitstream_models::HostTensor::new(shape.clone(), vec![0.0; shape.iter().product()])
            .context("--fallback: the model's input shape")?;
    eprintln!(
        "fallback: {} ({}), {} features from point {} ({} pooling)",
        classic.kind(),
        classic.hyperparameters(),
        classic.n_features(),
        classic.features().split,
        classic.features().pool
    );
    splitstream_head::classic::ClassicHead::new(model.clone(), classic, &probe)
        .with_context(|| format!("--fallback {}", path.display()))
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let recorder = match &args.record {
        Some(path) => {
            let power = match (&args.power_source, &args.power_trace) {
                (Some(spec), _) => PowerChoice::Spec(spec.clone()),
                (None, Some(trace)) => PowerChoice::Spec(format!("trace:{}", trace.display())),
                (None, None) => PowerChoice::Auto,
            };
            let opts = RecordOptions {
                power,
                ..RecordOptions::default()
            };
            Some(Recorder::create(path, opts).context("--record")?)
        }
        None => None,
    };
    if let Some(dir) = &args.draw {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("--draw {}: cannot create the folder", dir.display()))?;
    }
    let bytes = std::fs::read(&args.model.weights)
        .with_context(|| format!("cannot read weights {}", args.model.weights.display()))?;
    let name = match &args.name {
        Some(n) => n.clone(),
        None => args
            .model
            .weights
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("model")
            .to_owned(),
    };
    let names = match &args.labels.file {
        Some(path) => Some(ClassNames::from_file(path)?),
        None => ClassNames::from_safetensors(&bytes)?,
    };
    let (model, id) = load_model(
        &name,
        bytes,
        &args.model.weights.display().to_string(),
        args.model.heads,
        args.threads.count,
    )?;
    if let (Some(n), OutputKind::ClassLogits { classes }) = (&names, model.net().output()) {
        n.check(classes)?;
    }
    let depth = model.max_depth();
    let codec = args.codec;
    // Offloaded frames shrink to what the model's preprocessing keeps anyway: the
    // resize side (256 for a DeiT at 224, the letterbox's 416 for FemtoDet).
    let jpeg = JpegSettings {
        quality: args.jpeg_quality,
        max_side: model
            .input()
            .transform()
            .map(|t| t.resize.max(t.crop))
            .or(JpegSettings::default().max_side),
    };
    let mut cfg = PolicyConfig {
        latency_bound: Duration::from_millis(args.budget_ms),
        ..PolicyConfig::default()
    };
    if let Some(spec) = &args.power_model {
        cfg.power = PowerModel::parse(spec)?;
    }
    if let Some(ms) = args.latency_target_ms {
        if !(ms.is_finite() && ms > 0.0 && ms <= 3_600_000.0) {
            bail!("--latency-target-ms {ms}: give a target between 0 and 3600000 ms");
        }
        cfg.latency_target = Some(Duration::from_secs_f64(ms / 1e3));
    }
    let policy = match args.mode {
        PolicyArg::Local => Policy::fixed(Plan::Local, cfg),
        PolicyArg::Split => {
            let Some(point) = args.at.or(model.bottleneck().map(|b| b.depth)) else {
                bail!("--policy split needs --at K (0..={depth}: head blocks on the device)");
            };
            model
                .split_at(point)
                .map_err(|e| anyhow::anyhow!("--at {point}: {e}"))?;
            Policy::fixed(Plan::Split { point, codec }, cfg)
        }
        PolicyArg::Offload => Policy::fixed(Plan::Offload, cfg),
        PolicyArg::Auto => {
            let points = if !args.split_points.is_empty() {
                args.split_points.clone()
            } else if let Some(b) = model.bottleneck() {
                vec![b.depth]
            } else {
                (0..=depth).collect()
            };
            for &k in &points {
                model
                    .split_at(k)
                    .map_err(|e| anyhow::anyhow!("--split-points {k}: {e}"))?;
            }
            let mut plans = auto_plans(&points, codec);
            if args.fallback.is_some() {
                plans.push(Plan::Classic);
            }
            Policy::new(plans, cfg)?
        }
    };
    let classic = match &args.fallback {
        Some(_) if args.mode != PolicyArg::Auto => {
            bail!("--fallback runs when the policy chooses it: use it with --policy auto")
        }
        Some(path) => Some(load_fallback(&model, path)?),
        None => None,
    };
    let budget = Duration::from_millis(args.budget_ms);
    // The session opens in the first remote mode; the runner reconfigures it (no
    // reconnect) when the policy moves to another.
    let wire = devices_with_fallback(&model, policy.plans(), None, budget, jpeg, classic.as_ref())?
        .iter()
        .find_map(|d| d.mode().wire());

    let client = match (wire, args.edge.is_empty()) {
        (None, _) => None,
        (Some(_), true) => bail!("--policy {} needs --edge ADDR", args.mode.name()),
        (Some((split, codec)), false) => {
            let addrs = resolve_all(&args.edge)?;
            let addr = addrs[0];
            let trust = match (&args.fingerprint, &args.ca) {
                (Some(fp), _) => ServerTrust::Pinned(fp.parse().map_err(|_| {
                    anyhow::anyhow!("--fingerprint {fp}: expected 64 hex digits (colons allowed), as the edge prints")
                })?),
                (None, Some(ca)) => ServerTrust::CaFile(ca.clone()),
                (None, None) => bail!("give --fingerprint HEX (printed by the edge) or --ca FILE to trust the edge"),
            };
            let token = token(&args)?;
            let stream = StreamConfig {
                model: id.clone(),
                split,
                codec,
            };
            let mut cfg = ClientConfig::new(addr, trust, args.device_id.clone(), token, stream);
            cfg.server_name = args.server_name.clone();
            cfg.congestion = args.congestion;
            cfg.capabilities.max_in_flight = args.max_in_flight.unwrap_or(0);
            let connected = if addrs.len() == 1 {
                Client::connect(cfg).await
            } else {
                eprintln!(
                    "fleet of {} edges: {}",
                    addrs.len(),
                    addrs
                        .iter()
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                Client::connect_fleet(cfg, FleetConfig::new(addrs)).await
            };
            match connected {
                Ok(c) => Some(Arc::new(c)),
                Err(e) => {
                    eprintln!("warning: {e}; every frame runs locally");
                    None
                }
            }
        }
    };
    let mut power = match (&args.power_source, &args.power_trace) {
        (Some(spec), _) => Some(splitstream_power::open(spec)?),
        (None, Some(path)) => Some(splitstream_power::open(&format!(
            "trace:{}",
            path.display()
        ))?),
        (None, None) => None,
    };
    if let Some(p) = &power {
        eprintln!("power readings: {}", p.describe());
    }

    let events = EventOptions {
        window: event_window(args.event_window_ms)?,
        repr: args.event_repr,
        realtime: args.event_realtime,
        sensor_size: match &args.event_size {
            Some(s) => {
                let (w, h) = parse_size(s)?;
                Some((
                    u16::try_from(w).context("--event-size: width above 65535")?,
                    u16::try_from(h).context("--event-size: height above 65535")?,
                ))
            }
            None => None,
        },
        ..EventOptions::default()
    };
    let opts = SourceOptions {
        pacing: if args.fps.is_some() {
            Pacing::Realtime
        } else {
            Pacing::AsFastAsPossible
        },
        fps: args.fps,
        repeat: args.repeat,
        events,
        ..SourceOptions::default()
    };
    let source = open_source(&args.input, &opts)?;
    if let Source::Events(events) = &source {
        let (w, h) = events.size();
        eprintln!(
            "events from {}: {w}x{h} sensor, {} ms windows as {} frames",
            args.input,
            args.event_window_ms,
            args.event_repr.name()
        );
        let channels = model.input().item_shape().first().copied().unwrap_or(0);
        if args.event_repr == EventRepr::Histogram && channels != 2 {
            bail!(
                "--event-repr histogram makes [1,2,H,W] tensors, but this model takes {} \
                 channels: use --event-repr rendered for image models",
                channels
            );
        }
    }
    let total = match (source.len_hint(), args.frames) {
        (Some(n), Some(m)) => Some(n.min(m)),
        (a, b) => a.or(b),
    };
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = match total {
            Some(n) => indicatif::ProgressBar::new(n),
            None => indicatif::ProgressBar::new_spinner(),
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} frames {per_sec} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    // Capture and decoding run on their own thread, `prefetch` frames ahead, so the
    // next frame is ready when the model finishes this one. The channel blocks the
    // reader when full: files lose nothing, and live cameras already keep only their
    // newest frame (see `SourceOptions::keep_backlog`), so a slow model sees fresh
    // frames rather than a backlog.
    let (mut feed, reader) =
        spawn_feed(source, args.prefetch).context("cannot start the frame reader thread")?;

    let devices = devices_with_fallback(
        &model,
        policy.plans(),
        client.as_ref(),
        budget,
        jpeg,
        classic.as_ref(),
    )?;
    let mut runner = PolicyRunner::new(policy, devices, client.clone())?;
    let mut out = std::io::stdout().lock();
    let mut stats = RunStats::new();
    let started = Instant::now();
    let mut n: u64 = 0;
    let mut power_warned = false;
    while let Some(frame) = feed.recv().await {
        if args.frames.is_some_and(|max| n >= max) {
            break;
        }
        n += 1;
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                eprintln!("warning: skipping a frame: {e}");
                continue;
            }
        };
        if let Some(p) = power.as_mut() {
            match p.sample() {
                Ok(sample) => runner.policy_mut().observe_sample(&sample),
                Err(e) if !power_warned => {
                    eprintln!("warning: power readings: {e}; the policy keeps the last one");
                    power_warned = true;
                }
                Err(_) => {}
            }
        }
        let frame_started = Instant::now();
        let result = runner.process(&frame).await;
        stats.record(&result.record);
        if let Some(rec) = &recorder {
            mark_frame(rec, frame_started, &result.record);
        }
        if let (Some(dir), Payload::Image(img), Some(Answer::Detections(dets))) =
            (&args.draw, &frame.payload, &result.answer)
        {
            let format = match args.draw_format.as_str() {
                "png" => DrawFormat::Png,
                _ => DrawFormat::Jpeg,
            };
            let drawn = draw_detections(img, dets);
            if let Err(e) = save_drawn(dir, frame.index, &drawn, format) {
                eprintln!("warning: --draw {}: {e}", dir.display());
            }
        }
        let mut line = frame_line(&result.record, names.as_ref());
        with_link(&mut line, result.edge, result.failover.as_deref());
        write_line(&mut out, &line)?;
        if let Some(bar) = &bar {
            bar.inc(1);
        }
    }
    // Closing the channel stops the reader at its next frame (and kills ffmpeg); it is
    // not joined, since a live source may take a while to give that frame.
    drop(feed);
    drop(reader);
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let summary = stats.summary(Some(started.elapsed()));
    write_line(
        &mut out,
        &serde_json::json!({ "summary": summary, "policy": runner.tally() }),
    )?;
    eprintln!("{summary}");
    eprintln!(
        "policy decisions: {}",
        runner
            .tally()
            .decisions
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    drop(runner);
    if let Some(client) = client.and_then(|c| Arc::try_unwrap(c).ok()) {
        client.close().await;
    }
    if let Some(rec) = recorder {
        let end = rec.finish().context("--record")?;
        eprintln!("{}", end.describe(rec.path()));
    }
    Ok(())
}

/// A frame's JSON line: the record, with the policy's reason as `policy_reason` and a
/// classified frame's class name as `result.label` (when the model has names).
fn frame_line(record: &FrameRecord, names: Option<&ClassNames>) -> serde_json::Value {
    let mut v = serde_json::to_value(record).unwrap_or_default();
    if let Some(obj) = v.as_object_mut() {
        if let Some(why) = obj.remove("why") {
            obj.insert("policy_reason".to_owned(), why);
        }
    }
    if let Outcome::Classified { class, .. } = &record.result {
        let label = names.and_then(|n| n.get(*class as usize));
        if let (Some(label), Some(result)) =
            (label, v.get_mut("result").and_then(|r| r.as_object_mut()))
        {
            result.insert("label".to_owned(), label.into());
        }
    }
    v
}

/// Adds which edge answered (`edge`) and the fail-overs on the way (`failover`) to a
/// frame's JSON line, when there are any.
fn with_link(line: &mut serde_json::Value, edge: Option<SocketAddr>, failover: Option<&str>) {
    if let Some(obj) = line.as_object_mut() {
        if let Some(edge) = edge {
            obj.insert("edge".to_owned(), edge.to_string().into());
        }
        if let Some(failover) = failover {
            obj.insert("failover".to_owned(), failover.into());
        }
    }
}

fn write_line(out: &mut impl std::io::Write, v: &serde_json::Value) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *out, v).context("writing to stdout")?;
    out.write_all(b"\n").context("writing to stdout")?;
    out.flush().context("writing to stdout")?;
    Ok(())
}

fn event_window(ms: f64) -> anyhow::Result<Duration> {
    if !(ms.is_finite() && ms > 0.0 && ms <= 3_600_000.0) {
        bail!("--event-window-ms {ms}: give a window between 0 and 3600000 ms");
    }
    Ok(Duration::from_secs_f64(ms / 1e3))
}

/// Every address of every `--edge`, in the order given (a name's records in the
/// resolver's order), without duplicates.
fn resolve_all(edges: &[String]) -> anyhow::Result<Vec<SocketAddr>> {
    use std::net::ToSocketAddrs;
    let mut all = Vec::new();
    for edge in edges {
        let addrs: Vec<SocketAddr> = edge
            .to_socket_addrs()
            .with_context(|| format!("--edge {edge}: not host:port, or the name does not resolve"))?
            .collect();
        if addrs.is_empty() {
            bail!("--edge {edge}: the name resolves to no address");
        }
        for a in addrs {
            if !all.contains(&a) {
                all.push(a);
            }
        }
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(extra: &[&str]) -> Result<Args, clap::Error> {
        let mut argv = vec!["d", "--weights", "m.safetensors", "--input", "x.jpg"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv)
    }

    #[test]
    fn the_command_line_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn string_flags_take_only_listed_values() {
        let a = parse(&[
            "--policy",
            "offload",
            "--codec",
            "u8-zstd",
            "--event-repr",
            "histogram",
        ])
        .unwrap();
        assert_eq!(a.mode, PolicyArg::Offload);
        assert_eq!(a.codec, CodecChoice::U8Zstd);
        assert_eq!(a.event_repr, EventRepr::Histogram);
        for bad in [
            &["--policy", "sometimes"][..],
            &["--codec", "u7"],
            &["--event-repr", "voxels"],
            &["--jpeg-quality", "0"],
            &["--jpeg-quality", "101"],
        ] {
            let err = parse(bad).err().unwrap();
            assert_eq!(err.exit_code(), 2, "{bad:?}: {err}");
        }
        let help = Args::command().render_long_help().to_string();
        for value in [
            "lossless-zstd",
            "u4",
            "histogram",
            "offload",
            "--token-file",
        ] {
            assert!(help.contains(value), "--help lacks {value}");
        }
    }

    #[test]
    fn classified_frames_carry_their_class_name() {
        let names = ClassNames::new(vec!["cat".into(), "dog".into()], "test").unwrap();
        let record = |class| FrameRecord {
            seq: 3,
            mode: splitstream_head::stats::Mode::Split,
            split: Some(1),
            result: Outcome::Classified { class, score: 0.5 },
            bytes_sent: 10,
            head_ms: 1.0,
            preprocess_ms: None,
            encode_ms: None,
            transfer_ms: 1.0,
            tail_ms: 1.0,
            edge_receive_ms: None,
            total_ms: 3.0,
            fallback: None,
            why: Some("fixed".into()),
        };
        let v = frame_line(&record(1), Some(&names));
        assert_eq!(v["result"]["label"], "dog");
        assert_eq!(v["result"]["class"], 1);
        assert_eq!(v["policy_reason"], "fixed");
        // No name for the index, or no names: the index alone, as before.
        assert!(frame_line(&record(7), Some(&names))["result"]
            .get("label")
            .is_none());
        assert!(frame_line(&record(1), None)["result"]
            .get("label")
            .is_none());
    }

    #[test]
    fn edges_repeat_and_every_address_of_a_name_is_kept_once() {
        let a = parse(&["--edge", "127.0.0.1:4433", "--edge", "127.0.0.1:4434"]).unwrap();
        assert_eq!(a.edge.len(), 2);
        let addrs = resolve_all(&[
            "127.0.0.1:4433".into(),
            "127.0.0.1:4434".into(),
            "127.0.0.1:4433".into(),
        ])
        .unwrap();
        let want: Vec<SocketAddr> = vec![
            "127.0.0.1:4433".parse().unwrap(),
            "127.0.0.1:4434".parse().unwrap(),
        ];
        assert_eq!(addrs, want);
        // `localhost` may resolve to both 127.0.0.1 and ::1: all of them are edges.
        let local = resolve_all(&["localhost:4433".into()]).unwrap();
        assert!(!local.is_empty() && local.iter().all(|a| a.port() == 4433));
        assert!(resolve_all(&["no-port".into()]).is_err());
        let help = Args::command().render_long_help().to_string();
        assert!(
            help.contains("--edge 10.0.0.6:4433"),
            "--help shows a fleet"
        );
    }

    #[test]
    fn the_line_says_which_edge_answered_and_any_failover() {
        let mut v = serde_json::json!({"seq": 1});
        with_link(&mut v, None, None);
        assert!(v.get("edge").is_none() && v.get("failover").is_none());
        let edge: SocketAddr = "10.0.0.6:4433".parse().unwrap();
        with_link(&mut v, Some(edge), Some("10.0.0.5:4433: connection lost"));
        assert_eq!(v["edge"], "10.0.0.6:4433");
        assert_eq!(v["failover"], "10.0.0.5:4433: connection lost");
    }

    #[test]
    fn the_token_comes_from_a_file_first() {
        let dir = std::env::temp_dir().join(format!("splitstream-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "  3f1c9a0e6b2d47a8\n").unwrap();
        let a = parse(&["--token-file", file.to_str().unwrap()]).unwrap();
        assert_eq!(token(&a).unwrap(), "3f1c9a0e6b2d47a8");
        std::fs::write(&file, "\n").unwrap();
        assert!(token(&a).unwrap_err().to_string().contains("empty"));
        let a = parse(&["--token-file", dir.join("missing").to_str().unwrap()]).unwrap();
        assert!(token(&a).unwrap_err().to_string().contains("--token-file"));
        assert!(parse(&["--token-file", "t", "--token", "x"]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
