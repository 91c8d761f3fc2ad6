//! `splitstream-bench link`: device-to-edge frames over an impaired link, QUIC
//! (splitstream-transport's `Client`/`Server`, the real path) against TCP + TLS 1.3
//! (tokio-rustls, same certificate and framing), in the same run, over the same
//! emulated link ([`crate::netem`]: two network namespaces, TUNs, a forwarder that
//! applies loss, delay, jitter, reordering and a rate limit per direction).
//!
//! The exchange is open loop, as a camera is: the device sends a frame every 1/fps
//! whatever happened to the last one and the edge answers each at once. A frame's
//! latency runs from its scheduled send time to its answer; a frame is on time when
//! that is within `--deadline-ms`. Both sides wait up to `--give-up-ms` for an answer
//! (QUIC frames carry it as their deadline, so the protocol's deadline never hides a
//! slow answer), and a frame with no answer by then counts as infinitely late: if more
//! than 1% of frames are, the p99 is reported as null (JSON) / `>give-up` (table).
//! Bytes on the wire are the IP bytes both directions put into the link during the
//! measured frames, retransmissions, ACKs and dropped packets included.
//!
//! Needs root (namespaces and TUNs); without it, it fails with one line saying so.

use std::collections::BTreeMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use serde::Serialize;
use splitstream_transport::wire::{self, AnswerHeader, FrameHeader};
use splitstream_transport::{
    tls, Client, ClientConfig, CodecSpec, CongestionControl, FrameOutcome, ModelId, ModelRegistry,
    OutgoingFrame, Server, ServerConfig, ServerIdentity, ServerTrust, StreamConfig, TokenStore,
};
use tokio::io::AsyncWriteExt;

use crate::netem::impair::Impairment;
use crate::netem::{self, EmulatedLink, LinkStats};

/// Arguments of `splitstream-bench link`.
#[derive(clap::Args)]
#[command(after_help = "Examples (as root):
  # the full matrix: 0/1/5% loss x 20/100 ms RTT x 10/50 Mbit/s, QUIC and TCP+TLS
  splitstream-bench link

  # one cell, 10 s of frames, JSON
  splitstream-bench link --loss 5 --rtt-ms 100 --rate-mbit 10 --frames 300 --json

  # a jittery, reordering link
  splitstream-bench link --loss 1 --rtt-ms 50 --jitter-ms 5 --reorder 2")]
pub(crate) struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Packet loss in percent, each direction (comma separated: one cell each).
    #[arg(long, value_delimiter = ',', default_values_t = vec![0.0, 1.0, 5.0])]
    loss: Vec<f64>,
    /// Round-trip times in ms (half each way).
    #[arg(long = "rtt-ms", value_delimiter = ',', default_values_t = vec![20.0, 100.0])]
    rtt_ms: Vec<f64>,
    /// Link rates in Mbit/s, each direction.
    #[arg(long = "rate-mbit", value_delimiter = ',', default_values_t = vec![10.0, 50.0])]
    rate_mbit: Vec<f64>,
    /// Jitter in ms, uniform around each direction's delay.
    #[arg(long = "jitter-ms", default_value_t = 0.0)]
    jitter_ms: f64,
    /// Percent of packets held back 1 ms so later ones overtake them.
    #[arg(long, default_value_t = 0.0)]
    reorder: f64,
    /// Bottleneck queue per direction, KiB (tail drop past it).
    #[arg(long = "queue-kib", default_value_t = 256)]
    queue_kib: usize,
    /// Transports to run.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = vec![Protocol::Quic, Protocol::TcpTls])]
    protocols: Vec<Protocol>,
    /// Measured frames per cell (after a warm-up of half a second of frames).
    #[arg(long, default_value_t = 300)]
    frames: usize,
    /// Frames per second the device sends.
    #[arg(long, default_value_t = 30.0)]
    fps: f64,
    /// Frame payload in bytes (10 KiB: a compressed bottleneck).
    #[arg(long = "payload-bytes", default_value_t = 10240)]
    payload_bytes: usize,
    /// The edge's answer in bytes.
    #[arg(long = "result-bytes", default_value_t = 1024)]
    result_bytes: usize,
    /// A frame answered within this many ms of its send time is on time.
    #[arg(long = "deadline-ms", default_value_t = 200.0)]
    deadline_ms: f64,
    /// Longest either side waits for an answer, ms; later is "never answered".
    #[arg(long = "give-up-ms", default_value_t = 2000.0)]
    give_up_ms: f64,
    /// Seed of the link's random draws (loss, jitter, reordering).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// QUIC's congestion controller, both ends (bbr, the default, or cubic).
    #[arg(long, value_name = "CC", default_value_t = CongestionControl::Bbr)]
    congestion: CongestionControl,
    /// QUIC frames in flight before the oldest is overtaken (the edge's limit and the
    /// device's ask). 8 is the product's default; a long lossy path needs more (see
    /// docs/transport.md).
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    max_in_flight: u32,
}

/// A transport under test.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
enum Protocol {
    /// splitstream over QUIC, one stream per frame.
    Quic,
    /// TCP + TLS 1.3, frames back to back on one connection.
    TcpTls,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Self::Quic => "quic",
            Self::TcpTls => "tcp-tls",
        }
    }
}

const TOKEN: &str = "link-bench-token-0123456789";
const QUIC_PORT: u16 = 4433;
const TCP_PORT: u16 = 4434;
/// Longest the TCP warm-up may take before the cell fails.
const WARMUP_WAIT: Duration = Duration::from_secs(30);
/// Cap on a header read by either side.
const MAX_HEADER: u32 = 64 << 10;
/// Cap on a payload either side reads.
const MAX_PAYLOAD: u32 = 4 << 20;

/// Bytes on the wire during a cell's measured frames.
#[derive(Serialize, Clone, Copy)]
struct Wire {
    /// IP bytes device -> edge (dropped packets included: they were sent).
    up_bytes: u64,
    /// IP bytes edge -> device.
    down_bytes: u64,
    up_packets: u64,
    down_packets: u64,
    /// Packets the emulator dropped at random, both directions.
    lost_packets: u64,
    /// Packets dropped at a full bottleneck queue, both directions.
    queue_drops: u64,
    /// (up + down) / measured frames.
    bytes_per_frame: f64,
    /// bytes_per_frame over the frame's payload + answer: the transport's overhead.
    overhead: f64,
}

#[derive(Serialize)]
struct Cell {
    protocol: Protocol,
    loss_pct: f64,
    rtt_ms: f64,
    rate_mbit: f64,
    frames: usize,
    /// Frames answered before the give-up time.
    answered: usize,
    /// Frames answered within the deadline.
    on_time: usize,
    on_time_pct: f64,
    /// Frame latency, ms, over all measured frames (never answered = infinitely late);
    /// null when that rank falls on a frame never answered.
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    max_answered_ms: Option<f64>,
    wire: Wire,
    /// QUIC only: frames the protocol ended without an answer, by outcome.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    unanswered: BTreeMap<String, usize>,
}

#[derive(Serialize)]
struct Report {
    bench: &'static str,
    link: &'static str,
    fps: f64,
    payload_bytes: usize,
    result_bytes: usize,
    deadline_ms: f64,
    give_up_ms: f64,
    jitter_ms: f64,
    reorder_pct: f64,
    queue_kib: usize,
    seed: u64,
    congestion: CongestionControl,
    max_in_flight: u32,
    statistic: &'static str,
    cells: Vec<Cell>,
}

fn check(args: &Args) -> anyhow::Result<()> {
    let pct = |v: f64| (0.0..=100.0).contains(&v);
    anyhow::ensure!(
        args.loss.iter().all(|l| pct(*l)),
        "--loss is a percentage, 0-100"
    );
    anyhow::ensure!(pct(args.reorder), "--reorder is a percentage, 0-100");
    anyhow::ensure!(
        args.rtt_ms.iter().all(|r| (0.0..=10_000.0).contains(r)),
        "--rtt-ms must be 0-10000"
    );
    anyhow::ensure!(
        args.rate_mbit.iter().all(|r| *r > 0.0 && *r <= 100_000.0),
        "--rate-mbit must be positive (at most 100000)"
    );
    anyhow::ensure!(
        (0.0..=1000.0).contains(&args.jitter_ms),
        "--jitter-ms must be 0-1000"
    );
    anyhow::ensure!(args.frames > 0, "--frames must be at least 1");
    anyhow::ensure!(
        args.fps > 0.0 && args.fps <= 10_000.0,
        "--fps must be 0-10000"
    );
    anyhow::ensure!(
        args.payload_bytes > 0 && args.payload_bytes <= MAX_PAYLOAD as usize,
        "--payload-bytes must be 1 to 4 MiB"
    );
    anyhow::ensure!(
        args.result_bytes <= MAX_PAYLOAD as usize,
        "--result-bytes is capped at 4 MiB"
    );
    anyhow::ensure!(
        args.deadline_ms > 0.0 && args.give_up_ms >= args.deadline_ms,
        "--deadline-ms must be positive and at most --give-up-ms"
    );
    anyhow::ensure!(
        args.give_up_ms <= 60_000.0,
        "--give-up-ms is capped at 60000"
    );
    anyhow::ensure!(
        !args.loss.is_empty() && !args.rtt_ms.is_empty() && !args.rate_mbit.is_empty(),
        "--loss, --rtt-ms and --rate-mbit must not be empty"
    );
    anyhow::ensure!(!args.protocols.is_empty(), "--protocols must not be empty");
    Ok(())
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    check(&args)?;
    netem::preflight()?;
    let mut link = EmulatedLink::start("ssbench", args.seed)?;
    let report = bench(&args, &link);
    link.check()?;
    let report = report?;
    drop(link);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

/// The device's view of the edge: addresses and the certificate's fingerprint.
struct EdgeEnd {
    quic: SocketAddr,
    tcp: SocketAddr,
    identity: ServerIdentity,
}

fn bench(args: &Args, link: &EmulatedLink) -> anyhow::Result<Report> {
    let identity =
        ServerIdentity::self_signed(&["localhost"]).context("generating a certificate")?;
    let cells = args.loss.len() * args.rtt_ms.len() * args.rate_mbit.len() * args.protocols.len();
    let result = Bytes::from(vec![0x5a; args.result_bytes]);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|scope| {
        let edge_ns = link.edge_ns().to_owned();
        let edge_identity = identity.clone();
        let edge = scope.spawn(move || -> anyhow::Result<()> {
            netem::enter_namespace(&edge_ns)?;
            let rt = runtime()?;
            rt.block_on(async move {
                let quic = start_quic_edge(edge_identity.clone(), cells, result.clone(), args)?;
                let tcp = start_tcp_edge(&edge_identity, result).await?;
                let _ = ready_tx.send(());
                let _ = stop_rx.await;
                quic.abort();
                tcp.abort();
                anyhow::Ok(())
            })
        });
        if ready_rx.recv_timeout(Duration::from_secs(20)).is_err() {
            drop(stop_tx);
            return match edge.join() {
                Ok(Err(e)) => Err(e.context("starting the edge in its namespace")),
                _ => bail!("the edge did not start within 20 s"),
            };
        }
        let end = EdgeEnd {
            quic: SocketAddrV4::new(netem::EDGE_ADDR, QUIC_PORT).into(),
            tcp: SocketAddrV4::new(netem::EDGE_ADDR, TCP_PORT).into(),
            identity,
        };
        let dev_ns = link.device_ns().to_owned();
        let device = scope.spawn(move || -> anyhow::Result<Vec<Cell>> {
            netem::enter_namespace(&dev_ns)?;
            runtime()?.block_on(matrix(args, link, &end))
        });
        // Stop the edge whatever the device side did: the scope joins every thread.
        let cells = device.join();
        let _ = stop_tx.send(());
        let edge = edge.join();
        let cells = cells.map_err(|_| anyhow::anyhow!("the device thread panicked"))??;
        edge.map_err(|_| anyhow::anyhow!("the edge thread panicked"))??;
        Ok(Report {
            bench: "link",
            link: "user-space emulator: two network namespaces joined by TUNs and a forwarder (loss, then a rate-limited tail-drop queue, then delay); loss and rate apply to both directions, RTT is split evenly",
            fps: args.fps,
            payload_bytes: args.payload_bytes,
            result_bytes: args.result_bytes,
            deadline_ms: args.deadline_ms,
            give_up_ms: args.give_up_ms,
            jitter_ms: args.jitter_ms,
            reorder_pct: args.reorder,
            queue_kib: args.queue_kib,
            seed: args.seed,
            congestion: args.congestion,
            max_in_flight: args.max_in_flight,
            statistic: "latency from a frame's scheduled send to its answer, over the measured frames of one run (nearest rank); never answered counts as infinitely late",
            cells,
        })
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting a tokio runtime")
}

async fn matrix(args: &Args, link: &EmulatedLink, end: &EdgeEnd) -> anyhow::Result<Vec<Cell>> {
    let mut cells = Vec::new();
    let payload = Bytes::from(
        (0..args.payload_bytes)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    for &rtt_ms in &args.rtt_ms {
        for &rate_mbit in &args.rate_mbit {
            for &loss in &args.loss {
                let one_way = Impairment {
                    loss: loss / 100.0,
                    delay: Duration::from_secs_f64(rtt_ms / 2000.0),
                    jitter: Duration::from_secs_f64(args.jitter_ms / 1000.0),
                    reorder: args.reorder / 100.0,
                    rate_bps: Some((rate_mbit * 1e6) as u64),
                    queue_bytes: args.queue_kib << 10,
                    ..Impairment::default()
                };
                link.set(one_way, one_way);
                for &protocol in &args.protocols {
                    let n = cells.len();
                    let cell = run_cell(args, link, end, protocol, n, &payload)
                        .await
                        .with_context(|| {
                            format!(
                                "{} at {loss}% loss, {rtt_ms} ms RTT, {rate_mbit} Mbit/s",
                                protocol.name()
                            )
                        })?;
                    cells.push(Cell {
                        loss_pct: loss,
                        rtt_ms,
                        rate_mbit,
                        ..cell
                    });
                }
            }
        }
    }
    Ok(cells)
}

/// One measured frame: its latency from the scheduled send, `None` if never answered.
type Latency = Option<Duration>;

async fn run_cell(
    args: &Args,
    link: &EmulatedLink,
    end: &EdgeEnd,
    protocol: Protocol,
    index: usize,
    payload: &Bytes,
) -> anyhow::Result<Cell> {
    let period = Duration::from_secs_f64(1.0 / args.fps);
    let warmup = ((args.fps / 2.0).ceil() as usize).max(1);
    let give_up = Duration::from_secs_f64(args.give_up_ms / 1000.0);
    let (latencies, before, after, unanswered) = match protocol {
        Protocol::Quic => {
            quic_cell(
                args,
                end,
                index,
                payload,
                period,
                warmup,
                args.frames,
                give_up,
                link,
            )
            .await?
        }
        Protocol::TcpTls => {
            let (l, b, a) =
                tcp_cell(end, payload, period, warmup, args.frames, give_up, link).await?;
            (l, b, a, BTreeMap::new())
        }
    };
    let deadline = Duration::from_secs_f64(args.deadline_ms / 1000.0);
    let answered = latencies.iter().flatten().count();
    let on_time = latencies
        .iter()
        .flatten()
        .filter(|l| **l <= deadline)
        .count();
    let mut ms: Vec<f64> = latencies
        .iter()
        .map(|l| l.map_or(f64::INFINITY, |d| d.as_secs_f64() * 1e3))
        .collect();
    ms.sort_by(f64::total_cmp);
    let rank = |q| crate::stats::percentile(&ms, q).filter(|v: &f64| v.is_finite());
    let wire = wire_figures(&after.since(&before), latencies.len(), args);
    Ok(Cell {
        protocol,
        loss_pct: 0.0,
        rtt_ms: 0.0,
        rate_mbit: 0.0,
        frames: latencies.len(),
        answered,
        on_time,
        on_time_pct: 100.0 * on_time as f64 / latencies.len().max(1) as f64,
        p50_ms: rank(0.5),
        p99_ms: rank(0.99),
        max_answered_ms: ms.iter().rev().find(|v| v.is_finite()).copied(),
        wire,
        unanswered,
    })
}

fn wire_figures(s: &LinkStats, frames: usize, args: &Args) -> Wire {
    let per_frame = (s.up.bytes + s.down.bytes) as f64 / frames.max(1) as f64;
    Wire {
        up_bytes: s.up.bytes,
        down_bytes: s.down.bytes,
        up_packets: s.up.packets,
        down_packets: s.down.packets,
        lost_packets: s.up.lost + s.down.lost,
        queue_drops: s.up.queue_drops + s.down.queue_drops,
        bytes_per_frame: per_frame,
        overhead: per_frame / (args.payload_bytes + args.result_bytes) as f64,
    }
}

fn stream_config() -> StreamConfig {
    StreamConfig {
        model: ModelId::from_weights_bytes("bench", b"bench"),
        split: "blocks.0".into(),
        codec: CodecSpec::new("raw", vec![]),
    }
}

/// The QUIC edge: splitstream's `Server`, answering every frame at once. One device id
/// per cell, so no cell's session meets the last one's.
fn start_quic_edge(
    identity: ServerIdentity,
    cells: usize,
    result: Bytes,
    args: &Args,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut tokens = TokenStore::new();
    for i in 0..cells {
        tokens.insert(format!("dev-{i}"), TOKEN);
    }
    let mut registry = ModelRegistry::new();
    let model = stream_config().model;
    registry.insert(
        model.arch.clone(),
        model.weights_sha256,
        ["blocks.0"],
        ["raw"],
    );
    let bind = SocketAddrV4::new(netem::EDGE_ADDR, QUIC_PORT).into();
    let mut config = ServerConfig::new(bind, identity, tokens);
    config.limits.max_in_flight = args.max_in_flight;
    config.limits.congestion = args.congestion;
    let mut server = Server::bind(config, registry).context("binding the QUIC edge")?;
    Ok(tokio::spawn(async move {
        while let Some(mut session) = server.accept().await {
            let result = result.clone();
            tokio::spawn(async move {
                while let Some(frame) = session.next_frame().await {
                    let _ = frame.responder.answer(result.clone());
                }
            });
        }
    }))
}

#[allow(clippy::too_many_arguments)]
async fn quic_cell(
    args: &Args,
    end: &EdgeEnd,
    index: usize,
    payload: &Bytes,
    period: Duration,
    warmup: usize,
    frames: usize,
    give_up: Duration,
    link: &EmulatedLink,
) -> anyhow::Result<(Vec<Latency>, LinkStats, LinkStats, BTreeMap<String, usize>)> {
    let mut cfg = ClientConfig::new(
        end.quic,
        ServerTrust::Pinned(end.identity.fingerprint()),
        format!("dev-{index}"),
        TOKEN,
        stream_config(),
    );
    cfg.congestion = args.congestion;
    cfg.capabilities.max_in_flight = args.max_in_flight;
    // A handshake at 5% loss and 100 ms RTT can need several retries.
    cfg.connect_timeout = Duration::from_secs(15);
    cfg.idle_timeout = Duration::from_secs(15);
    let client = Arc::new(
        Client::connect(cfg)
            .await
            .context("connecting the QUIC device")?,
    );
    let send_all = |count: usize| {
        let client = client.clone();
        let payload = payload.clone();
        async move {
            let origin = tokio::time::Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..count {
                let scheduled = origin + period * i as u32;
                tokio::time::sleep_until(scheduled).await;
                let client = client.clone();
                let payload = payload.clone();
                tasks.spawn(async move {
                    let frame = OutgoingFrame {
                        payload,
                        captured_at: scheduled.into_std(),
                        deadline: scheduled.into_std() + give_up,
                    };
                    let report = client.send_frame(frame).await;
                    (i, report.map(|r| (r.outcome, scheduled.elapsed())))
                });
            }
            let mut out = vec![(None, String::new()); count];
            while let Some(joined) = tasks.join_next().await {
                let (i, report) = joined.context("a frame task failed")?;
                let (outcome, elapsed) = report.map_err(|e| anyhow::anyhow!("{e}"))?;
                out[i] = match outcome {
                    FrameOutcome::Answered(_) => (Some(elapsed), String::new()),
                    other => (None, format!("{:?}", other.kind())),
                };
            }
            anyhow::Ok(out)
        }
    };
    send_all(warmup).await?;
    let before = link.stats();
    let results = send_all(frames).await?;
    let after = link.stats();
    let mut unanswered = BTreeMap::new();
    for (_, kind) in results.iter().filter(|(l, _)| l.is_none()) {
        *unanswered.entry(kind.clone()).or_insert(0) += 1;
    }
    if let Ok(client) = Arc::try_unwrap(client) {
        client.close().await;
    }
    Ok((
        results.into_iter().map(|(l, _)| l).collect(),
        before,
        after,
        unanswered,
    ))
}

/// The TCP+TLS edge: answers each frame on its connection, in order, at once.
async fn start_tcp_edge(
    identity: &ServerIdentity,
    result: Bytes,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let crypto = tls::server_crypto(identity, &Default::default())?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(crypto));
    let listener = tokio::net::TcpListener::bind(SocketAddrV4::new(netem::EDGE_ADDR, TCP_PORT))
        .await
        .context("binding the TCP edge")?;
    let mut answer = wire::encode(&AnswerHeader::Result {
        payload_len: result.len() as u32,
        timing: Default::default(),
    });
    answer.extend_from_slice(&result);
    let answer = Arc::new(answer);
    Ok(tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, answer) = (acceptor.clone(), answer.clone());
            tokio::spawn(async move {
                // A device hanging up mid-frame at the end of a cell is not news.
                let _ = tcp_edge_connection(stream, acceptor, answer).await;
            });
        }
    }))
}

async fn tcp_edge_connection(
    stream: tokio::net::TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    answer: Arc<Vec<u8>>,
) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let mut tls = acceptor.accept(stream).await?;
    loop {
        let header: FrameHeader = match wire::read_message(&mut tls, MAX_HEADER).await {
            Ok(h) => h,
            Err(wire::ReadMessageError::End) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        anyhow::ensure!(header.payload_len <= MAX_PAYLOAD, "frame too large");
        let _payload = wire::read_payload(&mut tls, header.payload_len).await?;
        tls.write_all(&answer).await?;
        tls.flush().await?;
    }
}

type TlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn tcp_cell(
    end: &EdgeEnd,
    payload: &Bytes,
    period: Duration,
    warmup: usize,
    frames: usize,
    give_up: Duration,
    link: &EmulatedLink,
) -> anyhow::Result<(Vec<Latency>, LinkStats, LinkStats)> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls::client_crypto(
        &ServerTrust::Pinned(end.identity.fingerprint()),
        None,
    )?));
    let tcp = tokio::time::timeout(
        Duration::from_secs(15),
        tokio::net::TcpStream::connect(end.tcp),
    )
    .await
    .context("TCP connect timed out")?
    .context("TCP connect")?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let stream = tokio::time::timeout(Duration::from_secs(15), connector.connect(name, tcp))
        .await
        .context("TLS handshake timed out")?
        .context("TLS over TCP")?;
    let (mut rd, wr) = tokio::io::split(stream);
    // The warm-up waits as long as it takes (within WARMUP_WAIT): a slow start on a
    // lossy path is not measured, but the measured frames must not queue behind it.
    let (_, wr) = tcp_phase(&mut rd, wr, payload, period, warmup, 0, WARMUP_WAIT).await;
    let Some(wr) = wr else {
        bail!(
            "the TCP warm-up frames were not answered within {} s",
            WARMUP_WAIT.as_secs()
        );
    };
    let before = link.stats();
    let (latencies, _) = tcp_phase(&mut rd, wr, payload, period, frames, warmup, give_up).await;
    let after = link.stats();
    Ok((latencies, before, after))
}

/// Sends `count` frames on the schedule and reads their answers in order, until the
/// last one's give-up time. Returns the latencies and, when every frame was sent and
/// answered, the write half for the next phase.
async fn tcp_phase(
    rd: &mut tokio::io::ReadHalf<TlsStream>,
    mut wr: tokio::io::WriteHalf<TlsStream>,
    payload: &Bytes,
    period: Duration,
    count: usize,
    first_seq: usize,
    give_up: Duration,
) -> (Vec<Latency>, Option<tokio::io::WriteHalf<TlsStream>>) {
    let origin = tokio::time::Instant::now();
    let schedule: Vec<tokio::time::Instant> =
        (0..count).map(|i| origin + period * i as u32).collect();
    let payload = payload.clone();
    let send_schedule = schedule.clone();
    // The writer keeps to the schedule; when TCP pushes back, frames queue behind it,
    // as a camera's would, and their latency counts from their scheduled time.
    let writer = tokio::spawn(async move {
        for (i, at) in send_schedule.iter().enumerate() {
            tokio::time::sleep_until(*at).await;
            let now_us = at.duration_since(origin).as_micros() as u64;
            let header = FrameHeader {
                seq: (first_seq + i) as u64 + 1,
                epoch: 0,
                capture_us: now_us,
                sent_us: now_us,
                deadline_us: now_us + give_up.as_micros() as u64,
                payload_len: payload.len() as u32,
            };
            let mut head = wire::encode(&header);
            head.extend_from_slice(&payload);
            wr.write_all(&head).await?;
            wr.flush().await?;
        }
        anyhow::Ok(wr)
    });
    let mut latencies: Vec<Latency> = vec![None; count];
    let reader = async {
        for (i, at) in schedule.iter().enumerate() {
            let answer: AnswerHeader = wire::read_message(&mut *rd, MAX_HEADER).await?;
            let AnswerHeader::Result { payload_len, .. } = answer else {
                bail!("TCP frame not answered: {answer:?}");
            };
            anyhow::ensure!(payload_len <= MAX_PAYLOAD, "result too large");
            let _result = wire::read_payload(&mut *rd, payload_len).await?;
            let latency = at.elapsed();
            if latency <= give_up {
                latencies[i] = Some(latency);
            }
        }
        anyhow::Ok(())
    };
    let last = schedule.last().copied().unwrap_or(origin) + give_up;
    let complete = matches!(tokio::time::timeout_at(last, reader).await, Ok(Ok(())));
    if !complete {
        writer.abort();
        return (latencies, None);
    }
    let wr = match writer.await {
        Ok(Ok(wr)) => Some(wr),
        _ => None,
    };
    (latencies, wr)
}

fn print_table(r: &Report) {
    println!(
        "link: {} fps of {} B frames, {} B answers; deadline {} ms, give-up {} ms; jitter {} ms, reorder {}%, queue {} KiB, seed {}; QUIC: {}, {} frames in flight",
        r.fps, r.payload_bytes, r.result_bytes, r.deadline_ms, r.give_up_ms, r.jitter_ms, r.reorder_pct, r.queue_kib, r.seed, r.congestion, r.max_in_flight
    );
    println!(
        "{:>5} {:>5} {:>5} {:>8} | {:>9} {:>9} {:>8} {:>8} | {:>9} {:>9} {:>8}",
        "loss%",
        "rtt",
        "Mbit",
        "proto",
        "p50 ms",
        "p99 ms",
        "on time",
        "answered",
        "B/frame",
        "overhead",
        "lost pk"
    );
    let ms = |v: Option<f64>| match v {
        Some(v) => format!("{v:.1}"),
        None => format!(">{:.0}", r.give_up_ms),
    };
    for c in &r.cells {
        println!(
            "{:>5} {:>5} {:>5} {:>8} | {:>9} {:>9} {:>7.1}% {:>8} | {:>9.0} {:>8.2}x {:>8}",
            c.loss_pct,
            c.rtt_ms,
            c.rate_mbit,
            c.protocol.name(),
            ms(c.p50_ms),
            ms(c.p99_ms),
            c.on_time_pct,
            format!("{}/{}", c.answered, c.frames),
            c.wire.bytes_per_frame,
            c.wire.overhead,
            c.wire.lost_packets,
        );
    }
}
