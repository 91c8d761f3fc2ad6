//! The edge as a real process, killed with SIGKILL mid-stream: the device notices the
//! connection is gone and computes every remaining (and in-flight) frame locally,
//! with exactly the local results. The `splitstream-edge` binary is built (cargo is a
//! no-op when it is current) into this test's own target folder and profile.

mod e2e_support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use e2e_support::*;
use splitstream_head::device::{CodecChoice, Device, RunMode};
use splitstream_head::stats::{Mode, Outcome};
use splitstream_transport::{Client, ClientConfig, Fingerprint, ServerTrust, StreamConfig};

/// `target/<profile>/splitstream-edge`, built for the profile this test runs in (with
/// the device, as tests/readme_two_process.rs builds them: one build serves both).
fn edge_binary() -> PathBuf {
    splitstream_testkit::build_binaries(&["splitstream-tail", "splitstream-head"])
        .join(format!("splitstream-edge{}", std::env::consts::EXE_SUFFIX))
}

/// A running edge process and what it printed: its address and fingerprint.
struct EdgeProcess {
    child: Child,
    addr: std::net::SocketAddr,
    fingerprint: Fingerprint,
    dir: PathBuf,
}

impl Drop for EdgeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spawn_edge(weights: &[u8]) -> EdgeProcess {
    // A folder of this process's own (the root package has no tempfile dependency).
    let dir = std::env::temp_dir().join(format!("splitstream-kill-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let w = dir.join("demo-vit.safetensors");
    std::fs::write(&w, weights).expect("writes weights");
    let tokens = dir.join("tokens.txt");
    std::fs::write(&tokens, format!("dev-0 {TOKEN}\n")).expect("writes tokens");
    let mut child = Command::new(edge_binary())
        .arg("--weights")
        .arg(&w)
        .arg("--tokens")
        .arg(&tokens)
        .args(["--name", MODEL, "--listen", "127.0.0.1:0", "--no-metrics"])
        .args(["--backend", "cpu", "--threads", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starts splitstream-edge");
    let stdout = child.stdout.take().expect("stdout");
    let mut addr = None;
    let mut fingerprint = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("edge stdout");
        if let Some(rest) = line.strip_prefix("listening on ") {
            let a = rest.split_whitespace().next().expect("address");
            addr = Some(a.parse().expect("socket address"));
        }
        if let Some(fp) = line.strip_prefix("certificate fingerprint ") {
            fingerprint = Some(fp.trim().parse().expect("fingerprint"));
            break;
        }
    }
    EdgeProcess {
        child,
        addr: addr.expect("the edge printed its address"),
        fingerprint: fingerprint.expect("the edge printed its fingerprint"),
        dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_finishes_every_frame_locally_when_the_edge_process_is_killed() {
    let (model, id, bytes) = model();
    let mut edge = spawn_edge(&bytes);
    let mode = RunMode::Split {
        at: model.split_at(2).expect("point 2"),
        codec: CodecChoice::Lossless,
    };
    let (split, codec) = mode.wire().expect("remote");
    let mut cfg = ClientConfig::new(
        edge.addr,
        ServerTrust::Pinned(edge.fingerprint),
        "dev-0",
        TOKEN,
        StreamConfig {
            model: id.clone(),
            split,
            codec,
        },
    );
    cfg.idle_timeout = Duration::from_secs(2);
    let client = Client::connect(cfg)
        .await
        .expect("connects to the edge process");
    let mut dev = Device::new(
        model.clone(),
        mode,
        Some(Arc::new(client)),
        Duration::from_secs(5),
    );
    let frames = frames(8);
    let local = local_logits(&model, &frames).await;
    let pid = edge.child.id();
    let mut records = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        let r = if i == 3 {
            // SIGKILL while this frame is on its way: no answer, no goodbye.
            let (r, _) = tokio::join!(dev.process(f), async {
                edge.child.kill().expect("SIGKILL the edge");
                edge.child.wait().expect("reaps the edge")
            });
            r
        } else {
            dev.process(f).await
        };
        assert!(
            matches!(r.record.result, Outcome::Classified { .. }),
            "frame {i} has a result"
        );
        assert_eq!(
            r.logits(),
            local[i],
            "frame {i} equals the local result exactly"
        );
        records.push(r.record);
    }
    assert!(
        std::fs::metadata(format!("/proc/{pid}")).is_err() || !cfg!(target_os = "linux"),
        "the edge process is gone"
    );
    assert!(records[..3]
        .iter()
        .all(|r| r.mode == Mode::Split && r.fallback.is_none()));
    for r in &records[4..] {
        assert_eq!(r.mode, Mode::Local, "frame {} ran locally", r.seq);
        assert!(r.fallback.is_some());
    }
    println!(
        "after SIGKILL: {}",
        records[4].fallback.as_deref().unwrap_or("-")
    );
}
