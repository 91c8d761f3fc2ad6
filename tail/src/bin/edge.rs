//! `splitstream-edge`: serves the tails of split models to devices over QUIC.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Parser;
use splitstream_models::cli::{BackendArgs, ThreadsArgs};
use splitstream_power::record::{PowerChoice, RecordOptions, Recorder};
use splitstream_tail::config::{EdgeConfig, ModelConfig};
use splitstream_tail::edge::{EdgeOptions, RunningEdge};
use splitstream_tail::governor::PowerConfig;
use splitstream_tail::metrics::{EdgeMetrics, Health, MetricsServer};
use splitstream_tail::model::ServedModel;
use splitstream_transport::{ServerConfig, ServerIdentity, TokenStore};

/// Serve the tails (and whole models, for offloaded frames) of ViT/DeiT checkpoints to
/// devices over QUIC, batching frames across devices.
#[derive(Parser)]
#[command(
    name = "splitstream-edge",
    version,
    about,
    after_help = "Examples:
  # one model, self-signed certificate (its fingerprint is printed for devices to pin)
  splitstream-edge --weights vit.safetensors --name demo-vit --tokens tokens.txt

  # an LLM (GGUF file or Hugging Face folder): devices run layers 0..k, the edge the rest
  splitstream-edge --weights SmolLM2-135M-Instruct.Q4_1.gguf --name smollm2 --tokens tokens.txt \
      --context 2048

  # everything from a config file, with the port overridden
  splitstream-edge --config edge.toml --listen 0.0.0.0:5000

  # a 300 W power budget read from RAPL (root since Linux 5.10), or replayed from a trace
  splitstream-edge --config edge.toml --power-budget 300
  splitstream-edge --config edge.toml --power-budget 300 --power-trace edge-power.csv

  # a run record of the edge's batches until SIGINT, then its pictures
  splitstream-edge --config edge.toml --record edge-run.jsonl
  splitstream report edge-run.jsonl --out edge-report

  # tokens.txt holds one device per line:  cam-1 3f1c9a0e6b2d47a8c5e1f0b9d8a7c6e5
  # (make a token with: openssl rand -hex 16)

Metrics: GET http://127.0.0.1:9464/metrics (Prometheus), /healthz (200 while serving).
SIGINT/SIGTERM: stop accepting, answer every frame in flight, close."
)]
struct Args {
    /// TOML config (see tail/edge.example.toml for every key); flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// UDP address to listen on [default 0.0.0.0:4433].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Device token file ("DEVICE_ID TOKEN" per line).
    #[arg(long, value_name = "FILE")]
    tokens: Option<PathBuf>,
    /// PEM certificate chain (with --key); without both, a self-signed one is made.
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// PEM private key (with --cert).
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// Serve this checkpoint in addition to the config's models: safetensors (timm
    /// names), or an LLM (a GGUF file or a Hugging Face folder).
    #[arg(long, value_name = "PATH")]
    weights: Option<PathBuf>,
    /// Name devices ask for (--weights); default: the file name without extension.
    #[arg(long, value_name = "NAME", requires = "weights")]
    name: Option<String>,
    /// Attention heads of --weights (default: the file's num_heads metadata, else D/64).
    #[arg(long, value_name = "N", requires = "weights")]
    heads: Option<usize>,
    /// KV-cache positions per session when --weights is an LLM (default 1024).
    #[arg(long, value_name = "N", requires = "weights")]
    context: Option<usize>,
    // --backend: for --weights (the config's models name their own).
    #[command(flatten)]
    backend: BackendArgs,
    /// Split points devices may use for --weights (comma separated; default all).
    #[arg(long, value_name = "K,..", value_delimiter = ',', requires = "weights")]
    splits: Vec<u32>,
    /// Most frames computed together.
    #[arg(long, value_name = "N")]
    max_batch: Option<usize>,
    /// Longest a frame waits for company, ms.
    #[arg(long, value_name = "MS")]
    max_wait_ms: Option<u64>,
    /// Address of the /metrics and /healthz HTTP server.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Do not serve metrics.
    #[arg(long)]
    no_metrics: bool,
    // --threads: per CPU-backend model.
    #[command(flatten)]
    threads: ThreadsArgs,
    /// Power budget in watts: starts the power governor (POLCA style; see [power] in
    /// tail/edge.example.toml for thresholds and caps).
    #[arg(long, value_name = "W")]
    power_budget: Option<f64>,
    /// Where the governor reads power: rapl, battery[:NAME], ina3221[:PATH],
    /// nvml[:INDEX], trace:FILE or const:W [default rapl].
    #[arg(long, value_name = "SPEC", conflicts_with = "power_trace")]
    power_source: Option<String>,
    /// Replay this CSV power trace (t_s,watts) instead of reading the hardware.
    #[arg(long, value_name = "FILE")]
    power_trace: Option<PathBuf>,
    /// Trace seconds per wall second for --power-trace (e.g. 10 replays a 10-minute
    /// trace in one).
    #[arg(long, value_name = "X", requires = "power_trace")]
    power_trace_speed: Option<f64>,
    /// Write a run record here: each batch's decode and tail spans joined with power,
    /// memory, temperatures and CPU frequency sampled over time, as JSON lines
    /// (`splitstream report FILE` draws it). Watts come from the governor's source when
    /// there is one, else the first meter found, else a CPU-time model (the record says
    /// which). Written until SIGINT/SIGTERM.
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    // First, before any thread: no window-system noise from GPU probing (see there).
    splitstream_models::backend::choice::quiet_headless_gpu_probing();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
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

/// Applies --power-budget, --power-source, --power-trace and --power-trace-speed over
/// the config's [power] table.
fn power_flags(args: &Args, cfg: &mut EdgeConfig) -> anyhow::Result<()> {
    let source = match (&args.power_source, &args.power_trace) {
        (Some(s), _) => Some(s.clone()),
        (None, Some(t)) => Some(format!("trace:{}", t.display())),
        (None, None) => None,
    };
    let any = args.power_budget.is_some() || source.is_some();
    if !any {
        return Ok(());
    }
    let power = match (cfg.power.take(), args.power_budget) {
        (Some(mut p), budget) => {
            if let Some(b) = budget {
                p.budget_w = b;
            }
            p
        }
        (None, Some(b)) => PowerConfig::new(b, "rapl"),
        (None, None) => bail!(
            "--power-source and --power-trace need a budget: add --power-budget W (or a [power] table with budget_w)"
        ),
    };
    let mut power = power;
    if let Some(s) = source {
        power.source = s;
    }
    if let Some(x) = args.power_trace_speed {
        power.trace_speed = x;
    }
    power.validate().map_err(|e| {
        anyhow::anyhow!("{e} (flags: --power-budget, --power-source, --power-trace)")
    })?;
    cfg.power = Some(power);
    Ok(())
}

fn config(args: &Args) -> anyhow::Result<EdgeConfig> {
    let mut cfg = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config {}", path.display()))?;
            // Parse without validating: flags may still add the model it lacks.
            let mut cfg: EdgeConfig = toml::from_str(&text).map_err(|e| {
                anyhow::anyhow!(
                    "config {}: {e} (see tail/edge.example.toml)",
                    path.display()
                )
            })?;
            let base = path.parent().unwrap_or(std::path::Path::new("."));
            let join = |p: &mut PathBuf| {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            };
            cfg.tls.cert.as_mut().map(join);
            cfg.tls.key.as_mut().map(join);
            cfg.tokens_file.as_mut().map(join);
            for m in &mut cfg.models {
                join(&mut m.weights);
            }
            if let Some(p) = &mut cfg.power {
                p.resolve_paths(base);
            }
            cfg
        }
        None => toml::from_str("").context("default config")?,
    };
    if let Some(l) = args.listen {
        cfg.listen = l;
    }
    if let Some(t) = &args.tokens {
        cfg.tokens_file = Some(t.clone());
    }
    if let (Some(c), Some(k)) = (&args.cert, &args.key) {
        cfg.tls.cert = Some(c.clone());
        cfg.tls.key = Some(k.clone());
    }
    if let Some(w) = &args.weights {
        let name = match &args.name {
            Some(n) => n.clone(),
            None => w
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("model")
                .to_owned(),
        };
        cfg.models.retain(|m| m.name != name);
        cfg.models.push(ModelConfig {
            name,
            weights: w.clone(),
            splits: args.splits.clone(),
            offload: true,
            backend: args.backend.choice,
            heads: args.heads,
            context: args.context,
        });
    }
    if let Some(n) = args.max_batch {
        cfg.batching.max_batch = n;
    }
    if let Some(ms) = args.max_wait_ms {
        cfg.batching.max_wait_ms = ms;
    }
    if let Some(m) = args.metrics {
        cfg.metrics.listen = m;
    }
    if args.no_metrics {
        cfg.metrics.enabled = false;
    }
    power_flags(args, &mut cfg)?;
    cfg.validate()
        .map_err(|e| anyhow::anyhow!("{e} (give --weights or a --config with [[model]])"))?;
    Ok(cfg)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let cfg = config(&args)?;
    let recorder = match &args.record {
        Some(path) => {
            let power = match &cfg.power {
                Some(p) => PowerChoice::Spec(p.source.clone()),
                None => PowerChoice::Auto,
            };
            let opts = RecordOptions {
                power,
                ..RecordOptions::default()
            };
            let rec = Recorder::create(path, opts).context("--record")?;
            // The batch worker marks its spans through the process's recorder.
            splitstream_power::record::install(rec.clone());
            Some(rec)
        }
        None => None,
    };
    let Some(tokens_file) = &cfg.tokens_file else {
        bail!("no token file: give --tokens FILE (one \"DEVICE_ID TOKEN\" per line) or tokens_file in the config");
    };
    let tokens = TokenStore::load(tokens_file)?;
    let identity = match (&cfg.tls.cert, &cfg.tls.key) {
        (Some(c), Some(k)) => ServerIdentity::from_pem_files(c, k)?,
        _ => {
            let names: Vec<&str> = cfg
                .tls
                .self_signed_names
                .iter()
                .map(String::as_str)
                .collect();
            ServerIdentity::self_signed(&names)?
        }
    };
    let mut models = Vec::new();
    for m in &cfg.models {
        // An LLM (a GGUF file or a Hugging Face folder) is split at `layer{k}` and
        // keeps a KV cache per session; everything else loads through `load_net`.
        let mut served = if ServedModel::is_llm_path(&m.weights) {
            ServedModel::from_llm(
                &m.name,
                &m.weights,
                m.backend,
                args.threads.count,
                m.context,
            )?
        } else {
            ServedModel::from_file(&m.name, &m.weights, m.heads, m.backend, args.threads.count)?
        };
        served.splits = m.splits.iter().map(|&k| k as usize).collect();
        served.offload = m.offload && !served.is_llm();
        println!("{}", served.describe());
        models.push(served);
    }
    let mut server = ServerConfig::new(cfg.listen, identity, tokens);
    server.limits.max_in_flight = cfg.limits.max_in_flight;
    server.limits.max_frame_payload = cfg.limits.max_frame_payload;
    server.limits.congestion = cfg.limits.congestion;
    server.max_connections = cfg.limits.max_sessions as usize;
    let metrics = Arc::new(EdgeMetrics::new());
    if let Some(p) = &cfg.power {
        println!(
            "power governor: budget {} W from {} (T1 {:.0} W, T2 {:.0} W)",
            p.budget_w,
            p.source,
            p.budget_w * p.t1,
            p.budget_w * p.t2
        );
    }
    let options = EdgeOptions {
        batcher: cfg.batcher(),
        power: cfg.power.clone(),
        ..EdgeOptions::default()
    };
    let edge = RunningEdge::start(server, models, options, metrics.clone())?;
    println!(
        "listening on {} (QUIC, ALPN splitstream/1)",
        edge.local_addr()
    );
    println!("certificate fingerprint {}", edge.fingerprint());

    let health = Health::new();
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics_task = if cfg.metrics.enabled {
        let server =
            MetricsServer::bind(cfg.metrics.listen, metrics.clone(), health.clone()).await?;
        println!("metrics on http://{}/metrics", server.local_addr()?);
        Some(tokio::spawn(server.serve(async {
            let _ = metrics_stopped.await;
        })))
    } else {
        None
    };

    shutdown_signal().await?;
    eprintln!("shutting down: answering frames in flight");
    health.set_draining();
    let counters = edge.counters().clone();
    edge.shutdown().await;
    let _ = stop_metrics.send(());
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    if let Some(rec) = recorder {
        splitstream_power::record::uninstall();
        rec.frames(counters.answered.load(std::sync::atomic::Ordering::Relaxed));
        let end = rec.finish().context("--record")?;
        eprintln!("{}", end.describe(rec.path()));
    }
    eprintln!("edge stopped");
    Ok(())
}

async fn shutdown_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("cannot watch SIGINT")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("cannot watch Ctrl-C")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn backend_takes_only_listed_values() {
        let a =
            Args::try_parse_from(["e", "--weights", "m.safetensors", "--backend", "wgpu"]).unwrap();
        assert_eq!(a.backend.choice, splitstream_models::BackendChoice::Wgpu);
        let err = Args::try_parse_from(["e", "--weights", "m", "--backend", "gpu"])
            .err()
            .unwrap();
        assert_eq!(err.exit_code(), 2);
    }
}
