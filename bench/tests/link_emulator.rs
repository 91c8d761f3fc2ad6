//! `splitstream-bench link` end to end on a tiny matrix: real namespaces, TUNs, the
//! forwarder, QUIC and TCP+TLS across it. Needs root (CI runs as root); elsewhere it
//! prints why it skips. The impairment logic itself is unit-tested with a fake clock
//! in `bench/src/netem/impair.rs`.

use std::process::{Command, Stdio};

fn bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_splitstream-bench"))
}

#[test]
fn quic_and_tcp_cross_the_emulated_link_with_its_delay_and_loss() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skip: the link emulator needs root (network namespaces, TUN devices)");
        return;
    }
    let child = bench()
        .args([
            "link",
            "--json",
            "--loss",
            "0,5",
            "--rtt-ms",
            "40",
            "--rate-mbit",
            "20",
            "--frames",
            "20",
            "--fps",
            "40",
            "--payload-bytes",
            "4096",
            "--result-bytes",
            "256",
            "--deadline-ms",
            "1000",
            "--give-up-ms",
            "5000",
            "--seed",
            "7",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running splitstream-bench");
    let pid = child.id();
    let out = child
        .wait_with_output()
        .expect("waiting for splitstream-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "link bench failed: {stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("the bench prints JSON");
    let cells = report["cells"].as_array().expect("cells");
    assert_eq!(cells.len(), 4, "two losses x two protocols");
    for cell in cells {
        let loss = cell["loss_pct"].as_f64().expect("loss_pct");
        let proto = cell["protocol"].as_str().expect("protocol");
        let what = format!("{proto} at {loss}% loss");
        assert_eq!(cell["frames"], 20, "{what}");
        // No frame needs five seconds on a 40 ms path, even with retransmissions.
        assert_eq!(cell["answered"], 20, "{what}: {cell}");
        let p50 = cell["p50_ms"].as_f64().expect("p50 present");
        // The emulated round trip is there (nothing answers faster than 40 ms) and
        // nothing else is in the way.
        assert!(p50 >= 40.0, "{what}: p50 {p50} ms below the 40 ms RTT");
        assert!(p50 < 500.0, "{what}: p50 {p50} ms");
        let wire = &cell["wire"];
        let per_frame = wire["bytes_per_frame"].as_f64().expect("bytes_per_frame");
        assert!(
            per_frame > 4096.0 + 256.0,
            "{what}: {per_frame} B/frame is less than payload + answer"
        );
        let lost = wire["lost_packets"].as_u64().expect("lost_packets");
        if loss == 0.0 {
            assert_eq!(lost, 0, "{what}");
        } else {
            // About 150 packets at 5%: some are lost (this seed loses several).
            assert!(lost > 0, "{what}: nothing lost");
        }
    }
    let namespaces = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let namespaces = String::from_utf8_lossy(&namespaces.stdout);
    assert!(
        !namespaces.contains(&format!("ssbench-{pid}-")),
        "namespaces left behind: {namespaces}"
    );
}

#[test]
fn without_root_it_fails_with_one_line_saying_so() {
    let mut cmd = if rustix::process::geteuid().is_root() {
        // Drop to nobody for this one run.
        let Ok(setpriv) = which("setpriv") else {
            eprintln!("skip: running as root and no setpriv (util-linux) to drop root");
            return;
        };
        let mut c = Command::new(setpriv);
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_splitstream-bench"));
        c
    } else {
        bench()
    };
    let out = cmd
        .args(["link", "--frames", "1"])
        .output()
        .expect("running splitstream-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("needs root"), "{stderr}");
}

fn which(tool: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .ok_or(())
}
