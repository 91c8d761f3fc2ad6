//! `splitstream-bench transport`: request/response over QUIC (splitstream-transport's
//! `Server`/`Client`, the real path) against TCP + TLS 1.3 (tokio-rustls), on loopback,
//! in the same run, with the same certificate, the same framing (length-prefixed
//! postcard header + raw payload) and the same exchange: each device sends a frame,
//! waits for the edge's result, and sends the next (closed loop). QUIC uses one stream
//! per frame; TCP one connection per device with frames back to back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use serde::Serialize;
use splitstream_transport::wire::{self, AnswerHeader, FrameHeader};
use splitstream_transport::{
    tls, Client, ClientConfig, CodecSpec, CongestionControl, FrameOutcome, ModelId, ModelRegistry,
    OutgoingFrame, Server, ServerConfig, ServerIdentity, ServerTrust, StreamConfig, TokenStore,
};
use tokio::io::AsyncWriteExt;

/// Arguments of `splitstream-bench transport`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Repetitions of the whole matrix; each figure is the median over runs.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Frame payload sizes in bytes.
    #[arg(long, value_delimiter = ',', default_values_t = vec![2048, 10240, 102400])]
    sizes: Vec<usize>,
    /// Numbers of concurrent devices.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1, 64])]
    devices: Vec<usize>,
    /// Frames measured per cell, split evenly across the devices.
    #[arg(long, default_value_t = 1280)]
    frames: usize,
    /// Size of the edge's result in bytes (1 KiB: e.g. 256 f32 logits).
    #[arg(long, default_value_t = 1024)]
    result_bytes: usize,
    /// Our QUIC's congestion controller, both ends (bbr, the default, or cubic).
    #[arg(long, value_name = "CC", default_value_t = CongestionControl::Bbr)]
    congestion: CongestionControl,
}

const TOKEN: &str = "bench-token-0123456789";
const BUDGET: Duration = Duration::from_secs(30);

#[derive(Serialize, Clone, Copy, Default)]
struct Figures {
    p50_us: f64,
    p99_us: f64,
    frames_per_s: f64,
}

#[derive(Serialize)]
struct Ratio {
    p50: f64,
    p99: f64,
    frames_per_s: f64,
}

#[derive(Serialize)]
struct Cell {
    payload_bytes: usize,
    devices: usize,
    frames_per_run: usize,
    quic: Figures,
    tcp_tls: Figures,
    /// Bare quinn streams with the same TLS and framing but no splitstream session
    /// layer: separates the protocol's cost from ours.
    quinn_raw: Figures,
    /// QUIC divided by TCP+TLS (latency: < 1 is QUIC faster; frames/s: > 1 is QUIC faster).
    ratio_quic_over_tcp: Ratio,
}

#[derive(Serialize)]
struct Report {
    bench: &'static str,
    transport: &'static str,
    peer: &'static str,
    address: String,
    runs: usize,
    result_bytes: usize,
    congestion: CongestionControl,
    statistic: &'static str,
    cells: Vec<Cell>,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.runs > 0, "--runs must be at least 1");
    anyhow::ensure!(
        !args.sizes.is_empty() && !args.devices.is_empty(),
        "--sizes and --devices must not be empty"
    );
    anyhow::ensure!(
        args.devices.iter().all(|d| *d > 0),
        "--devices must be positive"
    );
    anyhow::ensure!(
        args.sizes.iter().all(|s| *s <= 4 << 20),
        "payload sizes are capped at 4 MiB (the session limit)"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let report = rt.block_on(bench(&args))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

fn print_table(r: &Report) {
    println!(
        "transport on {} ({} runs, medians; result {} B): QUIC (splitstream) vs TCP+TLS 1.3; bare quinn for reference",
        r.address, r.runs, r.result_bytes
    );
    println!(
        "{:>8} {:>4} | {:>9} {:>9} {:>10} | {:>9} {:>9} {:>10} | {:>6} {:>6} {:>6} | {:>9} {:>10}",
        "payload",
        "dev",
        "quic p50",
        "quic p99",
        "quic f/s",
        "tcp p50",
        "tcp p99",
        "tcp f/s",
        "p50 x",
        "p99 x",
        "f/s x",
        "raw p50",
        "raw f/s"
    );
    for c in &r.cells {
        println!(
            "{:>8} {:>4} | {:>7.0}us {:>7.0}us {:>10.0} | {:>7.0}us {:>7.0}us {:>10.0} | {:>6.2} {:>6.2} {:>6.2} | {:>7.0}us {:>10.0}",
            c.payload_bytes,
            c.devices,
            c.quic.p50_us,
            c.quic.p99_us,
            c.quic.frames_per_s,
            c.tcp_tls.p50_us,
            c.tcp_tls.p99_us,
            c.tcp_tls.frames_per_s,
            c.ratio_quic_over_tcp.p50,
            c.ratio_quic_over_tcp.p99,
            c.ratio_quic_over_tcp.frames_per_s,
            c.quinn_raw.p50_us,
            c.quinn_raw.frames_per_s,
        );
    }
}

fn median(v: Vec<f64>) -> f64 {
    crate::stats::median(&v).unwrap_or(0.0)
}

/// Percentile `p` (0-100) in microseconds, by the benches' one rule
/// ([`crate::stats::percentile`]).
fn percentile_us(sorted: &[Duration], p: f64) -> f64 {
    let us: Vec<f64> = sorted.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    crate::stats::percentile(&us, p / 100.0).unwrap_or(0.0)
}

fn figures(mut rtts: Vec<Duration>, frames: usize, wall: Duration) -> Figures {
    rtts.sort();
    Figures {
        p50_us: percentile_us(&rtts, 50.0),
        p99_us: percentile_us(&rtts, 99.0),
        frames_per_s: frames as f64 / wall.as_secs_f64(),
    }
}

async fn bench(args: &Args) -> anyhow::Result<Report> {
    let max_devices = args.devices.iter().copied().max().unwrap_or(1);
    let identity =
        ServerIdentity::self_signed(&["localhost"]).context("generating a certificate")?;
    let result = Bytes::from(vec![0x5a; args.result_bytes]);
    let quic = QuicSide::start(
        identity.clone(),
        max_devices,
        result.clone(),
        args.congestion,
    )
    .await?;
    let tcp = TcpSide::start(&identity, max_devices, result.clone()).await?;
    let raw = RawQuicSide::start(&identity, max_devices, result).await?;

    // per (size, devices): per-run figures of QUIC, TCP+TLS and bare quinn
    type PerRun = Vec<Figures>;
    let mut per_cell: Vec<(usize, usize, PerRun, PerRun, PerRun)> = Vec::new();
    for &size in &args.sizes {
        for &devices in &args.devices {
            per_cell.push((size, devices, Vec::new(), Vec::new(), Vec::new()));
        }
    }
    for run in 0..args.runs {
        for (size, devices, q, t, r) in per_cell.iter_mut() {
            let per_device = (args.frames / *devices).max(1);
            let warmup = (per_device / 10).max(1);
            let payload = Bytes::from((0..*size).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
            // Alternate the order so neither side always runs on a warmer machine.
            for side in 0..3 {
                match (run + side) % 3 {
                    0 => q.push(quic.cell(*devices, per_device, warmup, &payload).await?),
                    1 => t.push(tcp.cell(*devices, per_device, warmup, &payload).await?),
                    _ => r.push(raw.cell(*devices, per_device, warmup, &payload).await?),
                }
            }
        }
    }
    let summarize = |v: &[Figures]| Figures {
        p50_us: median(v.iter().map(|f| f.p50_us).collect()),
        p99_us: median(v.iter().map(|f| f.p99_us).collect()),
        frames_per_s: median(v.iter().map(|f| f.frames_per_s).collect()),
    };
    let cells = per_cell
        .into_iter()
        .map(|(size, devices, q, t, r)| {
            let (q, t, r) = (summarize(&q), summarize(&t), summarize(&r));
            Cell {
                payload_bytes: size,
                devices,
                frames_per_run: (args.frames / devices).max(1) * devices,
                ratio_quic_over_tcp: Ratio {
                    p50: q.p50_us / t.p50_us,
                    p99: q.p99_us / t.p99_us,
                    frames_per_s: q.frames_per_s / t.frames_per_s,
                },
                quic: q,
                tcp_tls: t,
                quinn_raw: r,
            }
        })
        .collect();
    quic.shutdown().await;
    tcp.shutdown().await;
    raw.shutdown();
    Ok(Report {
        bench: "transport",
        transport: "QUIC (quinn 0.11, splitstream-transport Server/Client, TLS 1.3 ring)",
        peer: "TCP + TLS 1.3 (tokio-rustls, ring), one connection per device, TCP_NODELAY",
        address: "127.0.0.1".into(),
        runs: args.runs,
        result_bytes: args.result_bytes,
        congestion: args.congestion,
        statistic: "p50/p99 of per-frame round trips in each run (after warm-up), frames/s over the whole cell; medians over runs",
        cells,
    })
}

fn stream_config() -> StreamConfig {
    StreamConfig {
        model: ModelId::from_weights_bytes("bench", b"bench"),
        split: "blocks.0".into(),
        codec: CodecSpec::new("raw", vec![]),
    }
}

struct QuicSide {
    server_task: tokio::task::JoinHandle<()>,
    clients: Vec<Arc<Client>>,
}

impl QuicSide {
    async fn start(
        identity: ServerIdentity,
        devices: usize,
        result: Bytes,
        congestion: CongestionControl,
    ) -> anyhow::Result<Self> {
        let fp = identity.fingerprint();
        let mut tokens = TokenStore::new();
        for i in 0..devices {
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
        let mut config = ServerConfig::new("127.0.0.1:0".parse()?, identity, tokens);
        config.limits.congestion = congestion;
        let mut server = Server::bind(config, registry).context("binding the QUIC edge")?;
        let addr = server.local_addr();
        let server_task = tokio::spawn(async move {
            while let Some(mut session) = server.accept().await {
                let result = result.clone();
                tokio::spawn(async move {
                    while let Some(frame) = session.next_frame().await {
                        let _ = frame.responder.answer(result.clone());
                    }
                });
            }
        });
        let mut clients = Vec::with_capacity(devices);
        for i in 0..devices {
            let mut cfg = ClientConfig::new(
                addr,
                ServerTrust::Pinned(fp),
                format!("dev-{i}"),
                TOKEN,
                stream_config(),
            );
            cfg.congestion = congestion;
            let client = Client::connect(cfg)
                .await
                .with_context(|| format!("QUIC device {i}"))?;
            clients.push(Arc::new(client));
        }
        Ok(Self {
            server_task,
            clients,
        })
    }

    async fn cell(
        &self,
        devices: usize,
        frames: usize,
        warmup: usize,
        payload: &Bytes,
    ) -> anyhow::Result<Figures> {
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for client in self.clients.iter().take(devices) {
            let client = client.clone();
            let payload = payload.clone();
            tasks.spawn(async move {
                let mut rtts = Vec::with_capacity(frames);
                for i in 0..warmup + frames {
                    let t = Instant::now();
                    let report = client
                        .send_frame(OutgoingFrame::new(payload.clone(), BUDGET))
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    anyhow::ensure!(
                        matches!(report.outcome, FrameOutcome::Answered(_)),
                        "QUIC frame not answered: {:?}",
                        report.outcome
                    );
                    if i >= warmup {
                        rtts.push(t.elapsed());
                    }
                }
                Ok(rtts)
            });
        }
        let mut all = Vec::with_capacity(devices * frames);
        while let Some(r) = tasks.join_next().await {
            all.extend(r??);
        }
        Ok(figures(all, devices * (frames + warmup), started.elapsed()))
    }

    async fn shutdown(self) {
        for c in self.clients {
            if let Ok(c) = Arc::try_unwrap(c) {
                c.close().await;
            }
        }
        self.server_task.abort();
    }
}

struct TcpSide {
    connections:
        Vec<tokio::sync::Mutex<Option<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>>>,
}

async fn tcp_edge_connection(
    stream: tokio::net::TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    result: Bytes,
) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let mut tls = acceptor.accept(stream).await?;
    let mut answer = wire::encode(&AnswerHeader::Result {
        payload_len: result.len() as u32,
        timing: Default::default(),
    });
    answer.extend_from_slice(&result);
    loop {
        let header: FrameHeader = match wire::read_message(&mut tls, 64 << 10).await {
            Ok(h) => h,
            Err(wire::ReadMessageError::End) => return Ok(()),
            // Devices hang up without close_notify when the bench ends.
            Err(wire::ReadMessageError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Ok(())
            }
            Err(e) => return Err(e.into()),
        };
        anyhow::ensure!(header.payload_len <= 4 << 20, "frame too large");
        let _payload = wire::read_payload(&mut tls, header.payload_len).await?;
        tls.write_all(&answer).await?;
        tls.flush().await?;
    }
}

impl TcpSide {
    async fn start(
        identity: &ServerIdentity,
        devices: usize,
        result: Bytes,
    ) -> anyhow::Result<Self> {
        let crypto = tls::server_crypto(identity, &Default::default())?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(crypto));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, result) = (acceptor.clone(), result.clone());
                tokio::spawn(async move {
                    if let Err(e) = tcp_edge_connection(stream, acceptor, result).await {
                        eprintln!("tcp edge connection: {e:#}");
                    }
                });
            }
        });
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls::client_crypto(
            &ServerTrust::Pinned(identity.fingerprint()),
            None,
        )?));
        let mut connections = Vec::with_capacity(devices);
        for _ in 0..devices {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let name = rustls::pki_types::ServerName::try_from("localhost")?;
            let stream = connector.connect(name, tcp).await.context("TLS over TCP")?;
            connections.push(tokio::sync::Mutex::new(Some(stream)));
        }
        Ok(Self { connections })
    }

    async fn shutdown(self) {
        for slot in self.connections {
            if let Some(mut stream) = slot.into_inner() {
                let _ = stream.shutdown().await;
            }
        }
    }

    async fn cell(
        &self,
        devices: usize,
        frames: usize,
        warmup: usize,
        payload: &Bytes,
    ) -> anyhow::Result<Figures> {
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        let origin = Instant::now();
        for slot in self.connections.iter().take(devices) {
            let mut stream = slot.lock().await.take().context("TCP connection missing")?;
            let payload = payload.clone();
            tasks.spawn(async move {
                let mut rtts = Vec::with_capacity(frames);
                for i in 0..warmup + frames {
                    let t = Instant::now();
                    let now_us = t.duration_since(origin).as_micros() as u64;
                    let header = FrameHeader {
                        seq: i as u64 + 1,
                        epoch: 0,
                        capture_us: now_us,
                        sent_us: now_us,
                        deadline_us: now_us + BUDGET.as_micros() as u64,
                        payload_len: payload.len() as u32,
                    };
                    // Same write pattern as the QUIC client: one write for small frames.
                    let mut head = wire::encode(&header);
                    if payload.len() <= 16 << 10 {
                        head.extend_from_slice(&payload);
                        stream.write_all(&head).await?;
                    } else {
                        stream.write_all(&head).await?;
                        stream.write_all(&payload).await?;
                    }
                    stream.flush().await?;
                    let answer: AnswerHeader = wire::read_message(&mut stream, 64 << 10).await?;
                    let AnswerHeader::Result { payload_len, .. } = answer else {
                        anyhow::bail!("TCP frame not answered: {answer:?}");
                    };
                    anyhow::ensure!(payload_len <= 4 << 20, "result too large");
                    let _result = wire::read_payload(&mut stream, payload_len).await?;
                    if i >= warmup {
                        rtts.push(t.elapsed());
                    }
                }
                Ok((stream, rtts))
            });
        }
        let mut all = Vec::with_capacity(devices * frames);
        let mut streams = Vec::with_capacity(devices);
        while let Some(r) = tasks.join_next().await {
            let (stream, rtts) = r??;
            streams.push(stream);
            all.extend(rtts);
        }
        let wall = started.elapsed();
        for (slot, stream) in self.connections.iter().zip(streams) {
            *slot.lock().await = Some(stream);
        }
        Ok(figures(all, devices * (frames + warmup), wall))
    }
}

/// Bare quinn: one bidi stream per frame, the same framing, TLS config and certificate,
/// no handshake messages, sessions, deadlines or priorities.
struct RawQuicSide {
    server: quinn::Endpoint,
    clients: Vec<(quinn::Endpoint, quinn::Connection)>,
}

async fn raw_edge_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    answer: Arc<Vec<u8>>,
) -> anyhow::Result<()> {
    let header: FrameHeader = wire::read_message(&mut recv, 64 << 10).await?;
    anyhow::ensure!(header.payload_len <= 4 << 20, "frame too large");
    let _payload = wire::read_payload(&mut recv, header.payload_len).await?;
    send.write_all(&answer).await?;
    send.finish()?;
    Ok(())
}

impl RawQuicSide {
    async fn start(
        identity: &ServerIdentity,
        devices: usize,
        result: Bytes,
    ) -> anyhow::Result<Self> {
        let crypto = tls::server_crypto(identity, &Default::default())?;
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(crypto)?;
        let server = quinn::Endpoint::server(
            quinn::ServerConfig::with_crypto(Arc::new(quic)),
            "127.0.0.1:0".parse()?,
        )?;
        let addr = server.local_addr()?;
        let mut answer = wire::encode(&AnswerHeader::Result {
            payload_len: result.len() as u32,
            timing: Default::default(),
        });
        answer.extend_from_slice(&result);
        let answer = Arc::new(answer);
        let acceptor = server.clone();
        tokio::spawn(async move {
            while let Some(incoming) = acceptor.accept().await {
                let answer = answer.clone();
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    while let Ok((send, recv)) = conn.accept_bi().await {
                        tokio::spawn(raw_edge_stream(send, recv, answer.clone()));
                    }
                });
            }
        });
        let crypto = tls::client_crypto(&ServerTrust::Pinned(identity.fingerprint()), None)?;
        let client_config = quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(crypto)?,
        ));
        let mut clients = Vec::with_capacity(devices);
        for _ in 0..devices {
            let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
            let conn = endpoint
                .connect_with(client_config.clone(), addr, "localhost")?
                .await
                .context("bare quinn connection")?;
            clients.push((endpoint, conn));
        }
        Ok(Self { server, clients })
    }

    async fn cell(
        &self,
        devices: usize,
        frames: usize,
        warmup: usize,
        payload: &Bytes,
    ) -> anyhow::Result<Figures> {
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for (_, conn) in self.clients.iter().take(devices) {
            let conn = conn.clone();
            let payload = payload.clone();
            tasks.spawn(async move {
                let mut rtts = Vec::with_capacity(frames);
                for i in 0..warmup + frames {
                    let t = Instant::now();
                    let (mut send, mut recv) = conn.open_bi().await?;
                    let header = FrameHeader {
                        seq: i as u64 + 1,
                        epoch: 0,
                        capture_us: 0,
                        sent_us: 0,
                        deadline_us: BUDGET.as_micros() as u64,
                        payload_len: payload.len() as u32,
                    };
                    let mut head = wire::encode(&header);
                    if payload.len() <= 16 << 10 {
                        head.extend_from_slice(&payload);
                        send.write_all(&head).await?;
                    } else {
                        send.write_all(&head).await?;
                        send.write_all(&payload).await?;
                    }
                    send.finish()?;
                    let answer: AnswerHeader = wire::read_message(&mut recv, 64 << 10).await?;
                    let AnswerHeader::Result { payload_len, .. } = answer else {
                        anyhow::bail!("bare quinn frame not answered: {answer:?}");
                    };
                    anyhow::ensure!(payload_len <= 4 << 20, "result too large");
                    let _result = wire::read_payload(&mut recv, payload_len).await?;
                    if i >= warmup {
                        rtts.push(t.elapsed());
                    }
                }
                Ok(rtts)
            });
        }
        let mut all = Vec::with_capacity(devices * frames);
        while let Some(r) = tasks.join_next().await {
            all.extend(r??);
        }
        Ok(figures(all, devices * (frames + warmup), started.elapsed()))
    }

    fn shutdown(self) {
        for (endpoint, conn) in &self.clients {
            conn.close(0u32.into(), b"done");
            endpoint.close(0u32.into(), b"done");
        }
        self.server.close(0u32.into(), b"done");
    }
}
