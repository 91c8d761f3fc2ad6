//! `splitstream-bench policy`: the device's policy (`auto`) against always-local,
//! always-offload and a fixed split, in the same run, on three scenarios: a battery
//! draining from full to nearly empty, a bandwidth dip (100 to 2 Mbit/s and back), and
//! an edge power cap (the edge slowed and advising devices to run locally).
//!
//! What is real: the device library (`splitstream_head::device::Device`, the shipped
//! BottleFit demo model on the CPU, or `--weights`), the edge library (`splitstream_tail::edge::RunningEdge`), QUIC
//! with TLS on loopback, the shipped test images, and the link: every packet passes a
//! UDP relay in this process that paces the uplink with a token bucket at the
//! scenario's rate, delays both directions by half the round trip, and drops past a
//! 64 KiB queue, as a router would.
//!
//! What is modelled, and said so in the output: the device's energy (the policy's
//! power model integrated over the frame: compute watts over its compute time, radio
//! watts over the upload's time on the paced link, wait watts over the rest of the
//! round trip); the battery level (a scripted trace, 100% to 5% over the scenario);
//! the device's speed (`--device-slowdown F`: compute time measured on this host, times
//! F, so this host's CPU stands in for a slower device); and, in the power-cap
//! scenario, the edge governor's effect (the relay adds delay to the edge's answers,
//! and the policy is handed the edge's `PreferLocal` advice directly).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use serde::Serialize;
use splitstream_head::device::{load_model, CodecChoice, Device, DeviceModel, RunMode};
use splitstream_head::offload::JpegSettings;
use splitstream_head::policy::{
    BatteryObservation, FrameObservation, ObservedOutcome, Plan, Policy, PolicyConfig, PowerModel,
};
use splitstream_head::source::{Frame, Payload};
use splitstream_head::stats::{Mode, Percentiles};
use splitstream_models::BackendChoice;
use splitstream_tail::edge::{EdgeOptions, RunningEdge};
use splitstream_tail::metrics::EdgeMetrics;
use splitstream_tail::model::ServedModel;
use splitstream_transport::{
    Advice, Client, ClientConfig, ServerTrust, Status, StreamConfig, TokenStore,
};

use crate::link::{start_relay, LinkState};

/// Arguments of `splitstream-bench policy`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Frames per scenario and policy (each scenario changes at a third and at two
    /// thirds of them).
    #[arg(long, default_value_t = 300)]
    frames: usize,
    /// Repetitions; figures are medians over runs.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The model, device and edge alike (safetensors with splitstream metadata). Default:
    /// the shipped BottleFit demo student, `assets/demo/demo_vit_bottlefit.safetensors`
    /// (a ViT with a learned rank-32 bottleneck after block 1).
    #[arg(long, value_name = "FILE")]
    weights: Option<std::path::PathBuf>,
    /// Split point of the split candidate and of the fixed-split baseline. Default: the
    /// checkpoint's bottleneck point, or 2 when it has none.
    #[arg(long)]
    split_at: Option<usize>,
    /// Bottleneck codec of the split.
    #[arg(long, default_value = "u4", value_parser = super::codec_parser())]
    codec: CodecChoice,
    /// The device's compute is this many times slower than this host's (the host's
    /// measured compute time is multiplied by it). The default, 10, stands for a
    /// Raspberry Pi 4 class CPU (four Cortex-A72 cores, 128-bit NEON) against one core
    /// of this host with AVX-512.
    #[arg(long, default_value_t = 10.0)]
    device_slowdown: f64,
    /// CPU threads of the device's model.
    #[arg(long, default_value_t = 1)]
    device_threads: usize,
    /// The edge's backend.
    #[arg(long, value_enum, default_value_t = BackendChoice::Cpu)]
    edge_backend: BackendChoice,
    /// CPU threads of the edge (0: one per core).
    #[arg(long, default_value_t = 0)]
    edge_threads: usize,
    /// Also write the report to DIR: report.json, energy_per_frame.png,
    /// latency_p50.png, latency_p95.png, and timeline_SCENARIO.png (auto's latency per
    /// frame, coloured by the mode it ran in).
    #[arg(long, value_name = "DIR")]
    report: Option<std::path::PathBuf>,
    /// Also write every frame as a JSON line to FILE: scenario, policy, run, the mode
    /// chosen and why, what the policy predicted and what was measured.
    #[arg(long, value_name = "FILE")]
    frames_out: Option<std::path::PathBuf>,
    /// The device's power model (`compute=W,radio=W,wait=W,per_byte=J`).
    #[arg(long, default_value = "")]
    power_model: String,
}

const MODEL: &str = "demo-vit";
const TOKEN: &str = "bench-token-0123456789abcdef";

// ---------------------------------------------------------------------------------------
// Scenarios.

#[derive(Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
enum Scenario {
    BatteryDrain,
    BandwidthDip,
    EdgePowerCap,
}

/// What the world is like at frame `i` of `n`.
struct Conditions {
    mbps: f64,
    rtt_ms: f64,
    battery_pct: f64,
    advice: Advice,
    edge_extra_ms: f64,
}

impl Scenario {
    const ALL: [Scenario; 3] = [Self::BatteryDrain, Self::BandwidthDip, Self::EdgePowerCap];

    fn name(self) -> &'static str {
        match self {
            Self::BatteryDrain => "battery_drain",
            Self::BandwidthDip => "bandwidth_dip",
            Self::EdgePowerCap => "edge_power_cap",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::BatteryDrain => "battery 100% -> 5% (scripted), link 20 Mbit/s, RTT 10 ms",
            Self::BandwidthDip => {
                "battery full, link 100 Mbit/s, 2 Mbit/s in the middle third, RTT 4 ms"
            }
            Self::EdgePowerCap => "battery full, link 50 Mbit/s, RTT 4 ms; middle third: edge answers +100 ms and advises PreferLocal",
        }
    }

    fn at(self, i: usize, n: usize) -> Conditions {
        let middle = (n / 3..2 * n / 3).contains(&i);
        let mut c = Conditions {
            mbps: 100.0,
            rtt_ms: 4.0,
            battery_pct: 100.0,
            advice: Advice::Normal,
            edge_extra_ms: 0.0,
        };
        match self {
            Self::BatteryDrain => {
                c.mbps = 20.0;
                c.rtt_ms = 10.0;
                c.battery_pct = 100.0 - 95.0 * i as f64 / (n.max(2) - 1) as f64;
            }
            Self::BandwidthDip => {
                if middle {
                    c.mbps = 2.0;
                }
            }
            Self::EdgePowerCap => {
                c.mbps = 50.0;
                if middle {
                    c.advice = Advice::PreferLocal;
                    c.edge_extra_ms = 100.0;
                }
            }
        }
        c
    }
}

// ---------------------------------------------------------------------------------------
// Runs.

/// One policy in one scenario: medians over runs; frames, fallbacks, modes and reasons
/// summed over runs.
#[derive(Serialize, Clone, Default)]
struct Figures {
    /// Mean modelled device energy per frame, millijoules.
    energy_mj_per_frame: f64,
    latency_p50_ms: f64,
    latency_p95_ms: f64,
    frames: usize,
    fallbacks: usize,
    failed: usize,
    modes: BTreeMap<String, usize>,
    reasons: BTreeMap<String, usize>,
    /// Each run's energy per frame, p50 and p95, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    runs: Vec<RunFigures>,
    /// The first run's frames: the mode each ran in, and its latency (for the plots).
    #[serde(skip)]
    timeline: Vec<(String, f64)>,
}

#[derive(Serialize, Clone, Copy, Default)]
struct RunFigures {
    energy_mj_per_frame: f64,
    latency_p50_ms: f64,
    latency_p95_ms: f64,
}

#[derive(Serialize)]
struct Saving {
    /// Auto's energy per frame below the baseline's, percent (negative: more).
    energy_pct: f64,
    /// Auto's p50 latency below the baseline's, percent.
    latency_p50_pct: f64,
    latency_p95_pct: f64,
}

fn saving(auto: &Figures, base: &Figures) -> Saving {
    let pct = |a: f64, b: f64| if b > 0.0 { 100.0 * (b - a) / b } else { 0.0 };
    Saving {
        energy_pct: pct(auto.energy_mj_per_frame, base.energy_mj_per_frame),
        latency_p50_pct: pct(auto.latency_p50_ms, base.latency_p50_ms),
        latency_p95_pct: pct(auto.latency_p95_ms, base.latency_p95_ms),
    }
}

#[derive(Serialize)]
struct ScenarioReport {
    scenario: Scenario,
    conditions: &'static str,
    policies: BTreeMap<String, Figures>,
    auto_vs_local: Saving,
    auto_vs_offload: Saving,
    auto_vs_split: Saving,
}

#[derive(Serialize)]
struct Report {
    bench: &'static str,
    method: &'static str,
    power_model: PowerModelOut,
    device_slowdown: f64,
    host_local_ms_p50: f64,
    edge_backend: String,
    split: String,
    frames_per_policy: usize,
    runs: usize,
    scenarios: Vec<ScenarioReport>,
    anchor: &'static str,
}

#[derive(Serialize)]
struct PowerModelOut {
    compute_w: f64,
    radio_w: f64,
    wait_w: f64,
    radio_j_per_byte: f64,
}

struct Bed {
    model: DeviceModel,
    relay: SocketAddr,
    edge: RunningEdge,
    id: splitstream_transport::ModelId,
    link: Arc<LinkState>,
    frames: Vec<Frame>,
}

async fn client(bed: &Bed, mode: &RunMode, n: usize) -> anyhow::Result<Arc<Client>> {
    let Some((split, codec)) = mode.wire() else {
        bail!("local needs no client");
    };
    let stream = StreamConfig {
        model: bed.id.clone(),
        split,
        codec,
    };
    let mut cfg = ClientConfig::new(
        bed.relay,
        ServerTrust::Pinned(bed.edge.fingerprint()),
        format!("dev-{n}"),
        TOKEN,
        stream,
    );
    cfg.connect_timeout = Duration::from_secs(10);
    cfg.idle_timeout = Duration::from_secs(30);
    Ok(Arc::new(
        Client::connect(cfg)
            .await
            .context("connecting through the relay")?,
    ))
}

/// One scenario under one policy: the per-frame loop a device runs.
/// One frame of one run, for `--frames-out`.
#[derive(Serialize)]
struct FrameLine<'a> {
    scenario: &'static str,
    policy: &'a str,
    run: usize,
    frame: usize,
    plan: String,
    why: String,
    predicted_ms: Option<f64>,
    predicted_mj: Option<f64>,
    latency_ms: f64,
    energy_mj: f64,
    bytes: u64,
}

/// Which run of which policy, for the frame lines.
struct RunLabel<'a> {
    policy: &'a str,
    run: usize,
}

#[allow(clippy::too_many_arguments)]
async fn run_policy(
    bed: &Bed,
    label: RunLabel<'_>,
    frames_out: &mut Option<std::io::BufWriter<std::fs::File>>,
    scenario: Scenario,
    mut policy: Policy,
    devices: &mut [Device],
    clients: &[Option<Arc<Client>>],
    args: &Args,
    power: &PowerModel,
) -> anyhow::Result<Figures> {
    let n = args.frames;
    let mut fig = Figures::default();
    let mut latencies = Vec::with_capacity(n);
    let mut energy_j = 0.0;
    let plans = policy.plans().to_vec();
    for i in 0..n {
        let c = scenario.at(i, n);
        bed.link.set(c.mbps, c.rtt_ms, c.edge_extra_ms);
        policy.observe_power(
            None,
            Some(BatteryObservation {
                capacity_pct: c.battery_pct,
                charging: false,
            }),
        );
        let connected = clients
            .iter()
            .flatten()
            .all(|cl| cl.state().borrow().is_connected());
        let rtt = clients.iter().flatten().find_map(|cl| cl.rtt());
        policy.observe_link(connected, rtt);
        policy.observe_status(Some(&Status {
            advice: c.advice,
            ..Status::default()
        }));
        let d = policy.decide();
        let Some(idx) = plans.iter().position(|p| *p == d.plan) else {
            bail!("policy chose an unknown plan");
        };
        let mut frame = bed.frames[i % bed.frames.len()].clone();
        frame.captured = Instant::now();
        frame.captured_wall = SystemTime::now();
        let rec = devices[idx].process(&frame).await.record;
        // Device compute at the emulated device's speed.
        let f = args.device_slowdown;
        let compute_ms = (rec.head_ms
            + if rec.fallback.is_some() {
                rec.tail_ms
            } else {
                0.0
            })
            * f;
        let latency_ms = rec.total_ms + compute_ms * (1.0 - 1.0 / f);
        let remote = rec.fallback.is_none() && rec.mode != Mode::Local;
        let upload_s = if remote {
            rec.bytes_sent as f64 * 8.0 / (c.mbps * 1e6)
        } else {
            0.0
        };
        let wait_s = if remote {
            ((rec.transfer_ms + rec.tail_ms) * 1e-3 - upload_s).max(0.0)
        } else {
            0.0
        };
        let frame_j = power.energy_j(
            Duration::from_secs_f64(compute_ms * 1e-3),
            Duration::from_secs_f64(upload_s),
            if remote { rec.bytes_sent as f64 } else { 0.0 },
            Duration::from_secs_f64(wait_s),
        );
        energy_j += frame_j;
        if let Some(out) = frames_out.as_mut() {
            use std::io::Write;
            let line = FrameLine {
                scenario: scenario.name(),
                policy: label.policy,
                run: label.run,
                frame: i,
                plan: d.plan.to_string(),
                why: d.reason.to_string(),
                predicted_ms: d.predicted.map(|p| p.latency.as_secs_f64() * 1e3),
                predicted_mj: d.predicted.map(|p| p.energy_j * 1e3),
                latency_ms,
                energy_mj: frame_j * 1e3,
                bytes: rec.bytes_sent,
            };
            serde_json::to_writer(&mut *out, &line)?;
            out.write_all(b"\n")?;
        }
        policy.observe_frame(&FrameObservation {
            candidate: d.candidate,
            head: Duration::from_secs_f64(rec.head_ms * f * 1e-3),
            outcome: ObservedOutcome::of_record(&rec, d.plan.is_remote()),
        });
        if rec.result.is_result() {
            latencies.push(latency_ms as f32);
        } else {
            fig.failed += 1;
        }
        fig.fallbacks += usize::from(rec.fallback.is_some());
        let mode_name = match rec.split {
            Some(k) if rec.mode == Mode::Split => format!("split@{k}"),
            _ => rec.mode.as_str().to_owned(),
        };
        if rec.result.is_result() {
            fig.timeline.push((mode_name.clone(), latency_ms));
        }
        *fig.modes.entry(mode_name).or_default() += 1;
        *fig.reasons.entry(d.reason.to_string()).or_default() += 1;
    }
    let p = Percentiles::of(&latencies);
    fig.frames = n;
    fig.energy_mj_per_frame = energy_j * 1e3 / n.max(1) as f64;
    fig.latency_p50_ms = p.p50;
    fig.latency_p95_ms = p.p95;
    Ok(fig)
}

fn median_figures(runs: Vec<Figures>) -> Figures {
    let med = |v: Vec<f64>| crate::stats::median(&v).unwrap_or(0.0);
    let mut out = Figures {
        timeline: runs.first().map(|f| f.timeline.clone()).unwrap_or_default(),
        energy_mj_per_frame: med(runs.iter().map(|f| f.energy_mj_per_frame).collect()),
        latency_p50_ms: med(runs.iter().map(|f| f.latency_p50_ms).collect()),
        latency_p95_ms: med(runs.iter().map(|f| f.latency_p95_ms).collect()),
        ..Figures::default()
    };
    for f in &runs {
        out.frames += f.frames;
        out.fallbacks += f.fallbacks;
        out.failed += f.failed;
        for (k, v) in &f.modes {
            *out.modes.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &f.reasons {
            *out.reasons.entry(k.clone()).or_default() += v;
        }
        out.runs.push(RunFigures {
            energy_mj_per_frame: f.energy_mj_per_frame,
            latency_p50_ms: f.latency_p50_ms,
            latency_p95_ms: f.latency_p95_ms,
        });
    }
    out
}

/// The shipped demo folder (models and test images).
fn assets_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/demo")
}

fn load_frames() -> anyhow::Result<Vec<Frame>> {
    let dir = assets_dir().join("test");
    let mut frames = Vec::new();
    for i in 0..60u64 {
        let path = dir.join(format!("{i:04}.jpg"));
        let img = splitstream_models::preprocess::load_rgb(&path)
            .with_context(|| format!("reading the demo test image {}", path.display()))?;
        frames.push(Frame {
            index: i,
            captured: Instant::now(),
            captured_wall: SystemTime::now(),
            source: Arc::from(path.display().to_string().as_str()),
            payload: Payload::Image(img),
        });
    }
    Ok(frames)
}

/// Runs the benchmark.
pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run_async(args))
}

async fn run_async(args: Args) -> anyhow::Result<()> {
    if !(args.device_slowdown >= 1.0 && args.device_slowdown.is_finite()) {
        bail!(
            "--device-slowdown {}: must be at least 1",
            args.device_slowdown
        );
    }
    let codec = args.codec;
    let power = PowerModel::parse(&args.power_model)?;
    let path = args
        .weights
        .clone()
        .unwrap_or_else(|| assets_dir().join("demo_vit_bottlefit.safetensors"));
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "reading the model {} (give another with --weights FILE)",
            path.display()
        )
    })?;
    let shown = path.display().to_string();
    let (model, id) = load_model(MODEL, bytes.clone(), &shown, None, args.device_threads)?;
    let split_at = args
        .split_at
        .or(model.bottleneck().map(|b| b.depth))
        .unwrap_or(2);
    let backend = args.edge_backend;
    let served = ServedModel::from_bytes(MODEL, bytes, &shown, None, backend, args.edge_threads)?;
    let mut tokens = TokenStore::new();
    for i in 0..16 {
        tokens.insert(format!("dev-{i}"), TOKEN);
    }
    let edge = RunningEdge::loopback(
        vec![served],
        tokens,
        EdgeOptions::default(),
        Arc::new(EdgeMetrics::new()),
    )?;
    let link = Arc::new(LinkState::new(100.0, 4.0));
    let relay = start_relay(edge.local_addr(), link.clone()).await?;
    let bed = Bed {
        model,
        relay,
        edge,
        id,
        link,
        frames: load_frames()?,
    };

    let split = Plan::Split {
        point: split_at,
        codec,
    };
    let plans = [Plan::Local, split, Plan::Offload];
    let split_mode = RunMode::Split {
        at: bed
            .model
            .split_at(split_at)
            .map_err(|e| anyhow::anyhow!("--split-at {split_at}: {e}"))?,
        codec,
    };
    let mode_of = |p: Plan| match p {
        // No fallback classifier is planned here (auto_plans has none).
        Plan::Local | Plan::Classic => RunMode::Local,
        Plan::Split { .. } => split_mode.clone(),
        Plan::Offload => RunMode::Offload {
            jpeg: JpegSettings::default(),
        },
    };
    // One session per remote mode, shared by every policy (each Device is one mode).
    let mut clients: Vec<Option<Arc<Client>>> = Vec::new();
    for (n, p) in plans.iter().enumerate() {
        clients.push(if p.is_remote() {
            Some(client(&bed, &mode_of(*p), n).await?)
        } else {
            None
        });
    }
    let mut devices: Vec<Device> = plans
        .iter()
        .zip(&clients)
        .map(|(p, c)| {
            Device::new(
                bed.model.clone(),
                mode_of(*p),
                c.clone(),
                Duration::from_secs(5),
            )
        })
        .collect();

    // The host's local latency, for the record.
    let mut host = Vec::new();
    for f in bed.frames.iter().take(20) {
        host.push(devices[0].process(f).await.record.head_ms as f32);
    }
    let host_local_ms_p50 = Percentiles::of(&host).p50;

    let mut cfg = PolicyConfig {
        power,
        ..PolicyConfig::default()
    };
    // The edge runs on this host too: its compute before measurement is the local
    // time at this host's speed, not a fast GPU's.
    cfg.edge_speedup = args.device_slowdown;
    let mut frames_out = match &args.frames_out {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => None,
    };
    let mut scenarios = Vec::new();
    for scenario in Scenario::ALL {
        let mut per: BTreeMap<String, Vec<Figures>> = BTreeMap::new();
        for run in 0..args.runs.max(1) {
            for (name, policy) in [
                ("auto", Policy::new(plans.to_vec(), cfg.clone())?),
                ("local", Policy::fixed(Plan::Local, cfg.clone())),
                ("offload", Policy::fixed(Plan::Offload, cfg.clone())),
                ("split", Policy::fixed(split, cfg.clone())),
            ] {
                // A fixed policy's plans are [plan, local]: map them onto the devices.
                let order: Vec<usize> = policy
                    .plans()
                    .iter()
                    .map(|p| plans.iter().position(|q| q == p).unwrap_or(0))
                    .collect();
                let mut devs: Vec<Device> = order
                    .iter()
                    .map(|&k| {
                        Device::new(
                            bed.model.clone(),
                            mode_of(plans[k]),
                            clients[k].clone(),
                            Duration::from_secs(5),
                        )
                    })
                    .collect();
                let cls: Vec<Option<Arc<Client>>> =
                    order.iter().map(|&k| clients[k].clone()).collect();
                // A new device's first frame allocates its buffers (tens of ms here,
                // times the slowdown): a start-up cost, not the policy's. Every device
                // of every policy runs one unmeasured frame first; the policy's own
                // warmup frames are measured.
                bed.link.set(100.0, 4.0, 0.0);
                for d in devs.iter_mut() {
                    d.process(&bed.frames[0]).await;
                }
                let label = RunLabel { policy: name, run };
                let fig = run_policy(
                    &bed,
                    label,
                    &mut frames_out,
                    scenario,
                    policy,
                    &mut devs,
                    &cls,
                    &args,
                    &power,
                )
                .await?;
                per.entry(name.to_owned()).or_default().push(fig);
            }
        }
        let policies: BTreeMap<String, Figures> = per
            .into_iter()
            .map(|(k, v)| (k, median_figures(v)))
            .collect();
        let get = |k: &str| policies.get(k).cloned().unwrap_or_default();
        scenarios.push(ScenarioReport {
            scenario,
            conditions: scenario.describe(),
            auto_vs_local: saving(&get("auto"), &get("local")),
            auto_vs_offload: saving(&get("auto"), &get("offload")),
            auto_vs_split: saving(&get("auto"), &get("split")),
            policies,
        });
    }
    devices.clear();
    if let Some(mut out) = frames_out {
        use std::io::Write;
        out.flush().context("writing the frame lines")?;
    }
    let report = Report {
        bench: "policy",
        method: "real device and edge libraries over QUIC on loopback through a pacing UDP relay; device energy MODELLED (power model x measured compute, upload and wait times); battery level scripted; device compute = host compute x device_slowdown; power-cap scenario: edge slowed by the relay and PreferLocal advice handed to the policy",
        power_model: PowerModelOut {
            compute_w: power.compute_w,
            radio_w: power.radio_w,
            wait_w: power.wait_w,
            radio_j_per_byte: power.radio_j_per_byte,
        },
        device_slowdown: args.device_slowdown,
        host_local_ms_p50,
        edge_backend: args.edge_backend.to_string(),
        split: split.to_string(),
        frames_per_policy: args.frames,
        runs: args.runs.max(1),
        scenarios,
        anchor: "BottleFit: up to 49% less power and 89% less latency than local, 37% and 55% than offloading",
    };
    for c in clients.into_iter().flatten() {
        if let Ok(c) = Arc::try_unwrap(c) {
            c.close().await;
        }
    }
    bed.edge.shutdown().await;
    if let Some(dir) = &args.report {
        write_report(dir, &report)?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

/// The policies in the order the plots show them.
const POLICIES: [&str; 4] = ["auto", "local", "offload", "split"];

fn write_report(dir: &Path, r: &Report) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let json = dir.join("report.json");
    std::fs::write(&json, serde_json::to_vec_pretty(r)?)
        .with_context(|| format!("cannot write {}", json.display()))?;
    let fonts = crate::plot::load_font();
    if !fonts {
        crate::plot::note_without_font();
    }
    let bars = |file: &str, caption: &str, y: &str, of: fn(&Figures) -> f64| {
        let groups: Vec<(String, Vec<f64>)> = r
            .scenarios
            .iter()
            .map(|s| {
                let v = POLICIES
                    .iter()
                    .map(|p| s.policies.get(*p).map_or(0.0, of))
                    .collect();
                (s.scenario.name().to_owned(), v)
            })
            .collect();
        let path = dir.join(file);
        crate::plot::grouped_bars(&path, caption, y, &POLICIES, &groups, fonts)
            .with_context(|| format!("cannot draw {}", path.display()))
    };
    let note = format!(
        "device {}x this host, medians of {} runs",
        r.device_slowdown, r.runs
    );
    bars(
        "energy_per_frame.png",
        &format!("device energy per frame (modelled; {note})"),
        "mJ per frame",
        |f| f.energy_mj_per_frame,
    )?;
    bars(
        "latency_p50.png",
        &format!("median latency ({note})"),
        "p50 latency (ms)",
        |f| f.latency_p50_ms,
    )?;
    bars(
        "latency_p95.png",
        &format!("95th percentile latency ({note})"),
        "p95 latency (ms)",
        |f| f.latency_p95_ms,
    )?;
    for s in &r.scenarios {
        let Some(auto) = s.policies.get("auto") else {
            continue;
        };
        let mut series: Vec<(&str, Vec<(f64, f64)>)> = Vec::new();
        for (i, (mode, ms)) in auto.timeline.iter().enumerate() {
            let point = (i as f64, *ms);
            match series.iter_mut().find(|(m, _)| *m == mode.as_str()) {
                Some((_, points)) => points.push(point),
                None => series.push((mode.as_str(), vec![point])),
            }
        }
        let path = dir.join(format!("timeline_{}.png", s.scenario.name()));
        crate::plot::scatter(
            &path,
            &format!(
                "auto, {}: latency per frame by where it ran (run 1)",
                s.scenario.name()
            ),
            ("frame", "latency (ms)"),
            &series,
            fonts,
        )
        .with_context(|| format!("cannot draw {}", path.display()))?;
    }
    Ok(())
}

fn print_table(r: &Report) {
    println!("policy bench: {}", r.method);
    println!(
        "device: host local p50 {:.2} ms x slowdown {} ; split {} ; edge {} ; {} frames per policy, {} run(s)",
        r.host_local_ms_p50, r.device_slowdown, r.split, r.edge_backend, r.frames_per_policy, r.runs
    );
    for s in &r.scenarios {
        println!("\n{} ({})", s.scenario_name(), s.conditions);
        println!(
            "{:<8} {:>10} {:>9} {:>9} {:>5}  modes",
            "policy", "mJ/frame", "p50 ms", "p95 ms", "fb"
        );
        for (name, f) in &s.policies {
            println!(
                "{:<8} {:>10.1} {:>9.1} {:>9.1} {:>5}  {:?}",
                name,
                f.energy_mj_per_frame,
                f.latency_p50_ms,
                f.latency_p95_ms,
                f.fallbacks,
                f.modes
            );
        }
        for (base, sv) in [
            ("local", &s.auto_vs_local),
            ("offload", &s.auto_vs_offload),
            ("split", &s.auto_vs_split),
        ] {
            println!(
                "auto vs {base:<7}: energy {:+.0}%  p50 {:+.0}%  p95 {:+.0}% (positive: auto lower)",
                sv.energy_pct, sv.latency_p50_pct, sv.latency_p95_pct
            );
        }
    }
    println!("\nanchor: {}", r.anchor);
}

impl ScenarioReport {
    fn scenario_name(&self) -> &'static str {
        self.scenario.name()
    }
}
