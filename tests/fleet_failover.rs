//! A fleet of three real `splitstream-edge` processes behind one device: the active
//! edge is killed (SIGKILL) mid-frame and a spare is killed too, the first edge is
//! restarted on its address with its certificate, and at the end every connection is
//! dropped and resumed with 0-RTT. Every frame must end exactly once, with exactly the
//! local result (answered by an edge or computed on the device), the device must fail
//! over to the next edge and come back to the preferred one; the switch and comeback
//! times are printed.

mod e2e_support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e_support::*;
use splitstream_head::device::{CodecChoice, Device, FrameResult, RunMode};
use splitstream_head::source::Frame;
use splitstream_head::stats::Outcome;
use splitstream_transport::{
    Client, ClientConfig, FleetConfig, FleetTuning, ReconnectPolicy, ServerIdentity, ServerTrust,
    StreamConfig,
};

fn edge_binary() -> PathBuf {
    splitstream_testkit::build_binaries(&["splitstream-tail", "splitstream-head"])
        .join(format!("splitstream-edge{}", std::env::consts::EXE_SUFFIX))
}

/// The files every edge serves from: weights, tokens, one certificate and key.
struct EdgeFiles {
    dir: PathBuf,
}

impl Drop for EdgeFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn edge_files(weights: &[u8]) -> EdgeFiles {
    let dir = std::env::temp_dir().join(format!("splitstream-fleet-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("demo-vit.safetensors"), weights).expect("writes weights");
    std::fs::write(dir.join("tokens.txt"), format!("dev-0 {TOKEN}\n")).expect("writes tokens");
    let key = rcgen::KeyPair::generate().expect("key pair");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("self-signed certificate");
    std::fs::write(dir.join("cert.pem"), cert.pem()).expect("writes cert");
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).expect("writes key");
    EdgeFiles { dir }
}

/// A running edge process; killed when dropped.
struct Edge {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Edge {
    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL the edge");
        self.child.wait().expect("reaps the edge");
    }
}

fn spawn_edge(bin: &Path, files: &EdgeFiles, listen: &str) -> Edge {
    let d = &files.dir;
    let mut child = Command::new(bin)
        .arg("--weights")
        .arg(d.join("demo-vit.safetensors"))
        .arg("--tokens")
        .arg(d.join("tokens.txt"))
        .arg("--cert")
        .arg(d.join("cert.pem"))
        .arg("--key")
        .arg(d.join("key.pem"))
        .args(["--name", MODEL, "--listen", listen, "--no-metrics"])
        .args(["--backend", "cpu", "--threads", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starts splitstream-edge");
    let stdout = child.stdout.take().expect("stdout");
    let mut addr = None;
    // Up to the fingerprint, the last line it prints (with --no-metrics): reading on
    // would block, and closing the pipe earlier could fail a later print.
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("edge stdout");
        if let Some(rest) = line.strip_prefix("listening on ") {
            let a = rest.split_whitespace().next().expect("address");
            addr = Some(a.parse().expect("socket address"));
        }
        if line.starts_with("certificate fingerprint ") {
            break;
        }
    }
    Edge {
        child,
        addr: addr.expect("the edge printed its address"),
    }
}

/// Every frame the device ran, with when its result came.
struct Run {
    results: Vec<(FrameResult, Instant)>,
    frames: Vec<Frame>,
    local: Vec<Vec<f32>>,
}

impl Run {
    async fn next(&mut self, dev: &mut Device) -> &(FrameResult, Instant) {
        let i = self.results.len() % self.frames.len();
        let r = dev.process(&self.frames[i]).await;
        self.push(r)
    }

    fn push(&mut self, r: FrameResult) -> &(FrameResult, Instant) {
        let i = self.results.len() % self.frames.len();
        assert!(
            matches!(r.record.result, Outcome::Classified { .. }),
            "frame {} has a result: {:?}",
            self.results.len(),
            r.record.result
        );
        assert_eq!(
            r.logits(),
            self.local[i],
            "frame {} (answered by {:?}) equals the local result exactly",
            self.results.len(),
            r.edge
        );
        self.results.push((r, Instant::now()));
        self.results.last().expect("just pushed")
    }

    /// Runs frames until one is answered by `edge` (its time), at most `limit`.
    async fn until_answered_by(
        &mut self,
        dev: &mut Device,
        edge: SocketAddr,
        limit: Duration,
    ) -> Option<Instant> {
        let start = Instant::now();
        while start.elapsed() < limit {
            let (r, at) = self.next(dev).await;
            if r.edge == Some(edge) {
                return Some(*at);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_edges_one_killed_one_restarted_every_frame_answered_once() {
    // RUST_LOG=splitstream_transport=debug shows the fleet's decisions.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let (model, id, bytes) = model();
    let bin = edge_binary();
    let files = edge_files(&bytes);
    let mut a = spawn_edge(&bin, &files, "127.0.0.1:0");
    let b = spawn_edge(&bin, &files, "127.0.0.1:0");
    let mut c = spawn_edge(&bin, &files, "127.0.0.1:0");
    let (a_addr, b_addr, c_addr) = (a.addr, b.addr, c.addr);
    let fingerprint =
        ServerIdentity::from_pem_files(&files.dir.join("cert.pem"), &files.dir.join("key.pem"))
            .expect("reads the certificate")
            .fingerprint();

    let mode = RunMode::Split {
        at: model.split_at(2).expect("point 2"),
        codec: CodecChoice::Lossless,
    };
    let (split, codec) = mode.wire().expect("remote");
    let mut cfg = ClientConfig::new(
        a_addr,
        ServerTrust::Pinned(fingerprint),
        "dev-0",
        TOKEN,
        StreamConfig {
            model: id.clone(),
            split,
            codec,
        },
    );
    // Short timers so the test takes seconds: a dead edge is given up within 1 s, a
    // restarted one is found within ~0.3 s.
    cfg.idle_timeout = Duration::from_secs(1);
    cfg.keep_alive_interval = Duration::from_millis(250);
    cfg.connect_timeout = Duration::from_secs(1);
    cfg.reconnect = ReconnectPolicy {
        initial_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(300),
        ..ReconnectPolicy::default()
    };
    let mut fleet = FleetConfig::new([a_addr, b_addr, c_addr]);
    fleet.tuning = FleetTuning {
        settle: Duration::from_millis(300),
        min_dwell: Duration::from_millis(300),
        ..FleetTuning::default()
    };
    let client = Arc::new(
        Client::connect_fleet(cfg, fleet)
            .await
            .expect("connects to the fleet"),
    );
    let mut dev = Device::new(
        model.clone(),
        mode,
        Some(client.clone()),
        Duration::from_secs(3),
    );
    let frames = frames(8);
    let local = local_logits(&model, &frames).await;
    let mut run = Run {
        results: Vec::new(),
        frames,
        local,
    };

    // 1. The preferred (first) edge takes the frames. (On a loaded machine a cold
    // edge's first answer may pass the stall timeout and be re-sent: wait for a run of
    // five answered by the first edge rather than demand every one.)
    let start = Instant::now();
    let mut streak = 0;
    while streak < 5 {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the first edge takes the frames: {:?}",
            run.results.iter().map(|(r, _)| r.edge).collect::<Vec<_>>()
        );
        let (r, _) = run.next(&mut dev).await;
        streak = if r.edge == Some(a_addr) {
            streak + 1
        } else {
            0
        };
    }

    // 2. SIGKILL the active edge while a frame is on its way: no goodbye, so the
    // frame stalls there and is re-sent; the next edge takes over.
    let i = run.results.len() % run.frames.len();
    let killed_at = Instant::now();
    let (r, ()) = tokio::join!(dev.process(&run.frames[i]), async { a.kill() });
    let in_flight = run.push(r).0.clone();
    println!(
        "frame in flight at the kill: edge {:?}, failover {:?}",
        in_flight.edge, in_flight.failover
    );
    let switched = match in_flight.edge {
        Some(e) if e != a_addr => Some(run.results.last().expect("pushed").1),
        _ => {
            let mut at = None;
            for _ in 0..50 {
                let (r, t) = run.next(&mut dev).await;
                if r.edge.is_some_and(|e| e != a_addr) {
                    at = Some(*t);
                    break;
                }
            }
            at
        }
    }
    .expect("another edge answered after the kill");
    let switch_time = switched - killed_at;
    println!("switch time after SIGKILL of the active edge: {switch_time:?}");

    // 3. The spare dies too; frames carry on on the second edge.
    c.kill();
    for _ in 0..10 {
        run.next(&mut dev).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last10 = &run.results[run.results.len() - 10..];
    assert!(
        last10.iter().all(|(r, _)| r.edge != Some(a_addr)),
        "nothing answered by the killed edge"
    );
    assert!(
        last10
            .iter()
            .filter(|(r, _)| r.edge == Some(b_addr))
            .count()
            >= 8,
        "the second edge carries the frames: {:?}",
        last10.iter().map(|(r, _)| r.edge).collect::<Vec<_>>()
    );

    // 4. The first edge comes back on its address, with its certificate: traffic
    // returns to it once it has settled.
    let restarted_at = Instant::now();
    let _a2 = spawn_edge(&bin, &files, &a_addr.to_string());
    let back = run
        .until_answered_by(&mut dev, a_addr, Duration::from_secs(15))
        .await
        .expect("frames return to the restarted edge");
    println!("comeback time after the restart: {:?}", back - restarted_at);

    // 5. Every connection dropped at once: the edges that were never restarted hold
    // a ticket of this device, so the reconnect resumes with 0-RTT.
    let resumed_before = client.zero_rtt_accepted();
    client.reconnect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.zero_rtt_accepted() == resumed_before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        client.zero_rtt_accepted() > resumed_before,
        "a reconnect resumed with 0-RTT"
    );
    for _ in 0..5 {
        run.next(&mut dev).await;
    }

    // Every frame ended once: one result each (checked as they came), and the edges'
    // answers counted by the client are exactly the frames that say an edge answered.
    let by_edge = run.results.iter().filter(|(r, _)| r.edge.is_some()).count() as u64;
    let counters = client.counters();
    assert_eq!(counters.answered, by_edge, "{counters:?}");
    let fleet = client.fleet_counters().expect("a fleet");
    assert_eq!(fleet.duplicates, 0);
    assert!(fleet.failovers >= 1 && fleet.comebacks >= 1, "{fleet:?}");
    let local = run.results.len() as u64 - by_edge;
    println!(
        "{} frames: {by_edge} answered by edges, {local} computed locally; {} fail-overs, \
         {} comebacks, {} re-sent; {} reconnects resumed with 0-RTT",
        run.results.len(),
        fleet.failovers,
        fleet.comebacks,
        fleet.resent,
        client.zero_rtt_accepted()
    );
    drop(dev);
    if let Ok(client) = Arc::try_unwrap(client) {
        client.close().await;
    }
}
