//! The README's "Run it for real" section, run as written: the shell blocks marked
//! `<!-- readme-test: edge -->`, `device` and `video` are read from README.md and run
//! with `sh`, the real `splitstream-edge` and `splitstream-device` binaries first on
//! `PATH`, in a scratch folder whose `assets` points at the project's. So the README
//! cannot rot: change a flag there and this test runs the changed command.
//!
//! What the test changes, and only that:
//! - the ports: `127.0.0.1:4433` (QUIC) and `127.0.0.1:9464` (metrics) become free ports,
//!   so that parallel runs and other edges on the machine do not collide;
//! - `EDGE_FP`, which the README tells the reader to copy from the edge's output, is
//!   taken from that output (the `certificate fingerprint` line);
//! - the edge block's last command is started with `exec`, so that stopping the shell
//!   stops the edge.
//!
//! It then checks what the README promises: the device pins the fingerprint and reads
//! its token from the file the edge block made, every frame is answered by the edge
//! (mode `split`, no fallback) and named with the model's class names. The
//! "Two machines" block is the same commands with other addresses and is not run.
//! The binaries are built (cargo is a no-op when they are current) into this test's
//! own target folder and profile (`splitstream_testkit::build_binaries`).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use splitstream_testkit::{build_binaries, tool_or_skip, workspace_dir};

const TEST: &str = "readme_two_process";

/// The demo model's class names (assets/demo/README.md), which its metadata carries.
const DEMO_CLASSES: [&str; 10] = [
    "astronaut",
    "brick",
    "chelsea",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "rocket",
];

/// The shell block after the line `<!-- readme-test: NAME -->` in README.md.
fn readme_block(readme: &str, name: &str) -> String {
    let marker = format!("<!-- readme-test: {name} -->");
    let mut lines = readme.lines().skip_while(|l| l.trim() != marker).skip(1);
    let fence = lines
        .next()
        .unwrap_or_else(|| panic!("README.md has no block marked {marker}"));
    assert!(
        fence.trim_start().starts_with("```sh"),
        "{marker} must be followed by a ```sh block, got {fence:?}"
    );
    let body: Vec<&str> = lines.take_while(|l| l.trim() != "```").collect();
    assert!(!body.is_empty(), "the block after {marker} is empty");
    body.join("\n")
}

/// Logical lines: `\`-continued lines joined.
fn commands(block: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in block.lines() {
        let trimmed = line.trim();
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head.trim_end());
            current.push(' ');
        } else {
            current.push_str(trimmed);
            if !current.trim().is_empty() {
                out.push(current.trim().to_owned());
            }
            current.clear();
        }
    }
    out
}

/// A port nobody listens on now (bound, then released).
fn free_udp_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("binds a UDP port");
    s.local_addr().expect("local address").port()
}

fn free_tcp_port() -> u16 {
    let s = std::net::TcpListener::bind("127.0.0.1:0").expect("binds a TCP port");
    s.local_addr().expect("local address").port()
}

/// `target/<profile>/`, with both binaries built for the profile this test runs in.
fn binaries() -> PathBuf {
    let dir = build_binaries(&["splitstream-tail", "splitstream-head"]);
    for bin in ["splitstream-edge", "splitstream-device"] {
        let path = dir.join(format!("{bin}{}", std::env::consts::EXE_SUFFIX));
        assert!(path.is_file(), "{} was not built", path.display());
    }
    dir
}

/// A scratch folder (the README's commands write their token files into the
/// current folder), removed at the end.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The edge's shell; killed (with the edge it became) at the end.
struct Edge(Child);

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn shell(script: &str, dir: &Path, path_var: &std::ffi::OsStr) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("set -e\n{script}"))
        .current_dir(dir)
        .env("PATH", path_var)
        .env_remove("SPLITSTREAM_TOKEN");
    cmd
}

/// Runs a device block to its end (at most `limit`): its stdout, or a panic with its
/// stderr.
fn run_device(mut cmd: Command, limit: Duration, what: &str) -> String {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start sh: {e}"));
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waits for the device") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what}: still running after {limit:?}; stderr:\n{}",
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    assert!(
        status.success(),
        "{what} failed ({status}); stderr:\n{stderr}\nstdout:\n{stdout}"
    );
    assert!(
        !stderr.contains("warning:") && !stderr.contains("error"),
        "{what}: the device warned:\n{stderr}"
    );
    stdout
}

/// Checks that every frame line is a split frame answered by the edge, with a class
/// name; returns how many frames there were.
fn every_frame_answered(stdout: &str, what: &str) -> usize {
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{what}: {l:?}: {e}")))
        .collect();
    let (frames, rest): (Vec<_>, Vec<_>) = lines.into_iter().partition(|v| v.get("seq").is_some());
    assert_eq!(rest.len(), 1, "{what}: one summary line: {rest:?}");
    assert!(rest[0].get("summary").is_some(), "{what}: {}", rest[0]);
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(f["seq"], i as u64, "{what}: {f}");
        assert_eq!(
            f["mode"], "split",
            "{what}: frame {i} not answered by the edge: {f}"
        );
        assert_eq!(f["split"], 1, "{what}: {f}");
        assert!(
            f.get("fallback").is_none(),
            "{what}: frame {i} fell back: {f}"
        );
        let result = &f["result"];
        assert_eq!(result["status"], "classified", "{what}: {f}");
        let class = result["class"].as_u64().expect("a class index") as usize;
        assert_eq!(result["label"], DEMO_CLASSES[class], "{what}: {f}");
        let sent = f["bytes_sent"].as_u64().expect("bytes_sent");
        // 50 tokens x rank 32 at 4 bits, scales and the frame header: about 1.1 KB.
        assert!((600..2000).contains(&sent), "{what}: {sent} bytes: {f}");
    }
    frames.len()
}

#[test]
fn the_readme_two_process_commands_run_as_written() {
    if !tool_or_skip(TEST, "openssl") {
        return;
    }
    let root = workspace_dir();
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let (udp, tcp) = (free_udp_port(), free_tcp_port());
    let ports = |s: &str| {
        s.replace("127.0.0.1:4433", &format!("127.0.0.1:{udp}"))
            .replace("127.0.0.1:9464", &format!("127.0.0.1:{tcp}"))
    };
    let edge_block = readme_block(&readme, "edge");
    let device_block = readme_block(&readme, "device");
    let video_block = readme_block(&readme, "video");
    // What the section is about must stay in it.
    for flag in [
        "--fingerprint \"$EDGE_FP\"",
        "--token-file cam-1.token",
        "--edge",
    ] {
        assert!(device_block.contains(flag), "the device block lost {flag}");
        assert!(video_block.contains(flag), "the video block lost {flag}");
    }
    assert!(edge_block.contains("--tokens tokens.txt"));

    let bin = binaries();
    let scratch =
        Scratch(std::env::temp_dir().join(format!("splitstream-readme-{}", std::process::id())));
    std::fs::create_dir_all(&scratch.0).expect("scratch folder");
    link_assets(&root.join("assets"), &scratch.0.join("assets"));
    let mut path_var = std::ffi::OsString::from(&bin);
    if let Some(p) = std::env::var_os("PATH") {
        path_var.push(":");
        path_var.push(p);
    }

    // Terminal 1: the edge. `exec` the last command so that killing the shell kills it.
    let mut edge_cmds = commands(&ports(&edge_block));
    let last = edge_cmds.pop().expect("the edge block has commands");
    assert!(last.starts_with("splitstream-edge "), "{last}");
    edge_cmds.push(format!("exec {last}"));
    let edge_log = scratch.0.join("edge.stderr");
    let mut child = shell(&edge_cmds.join("\n"), &scratch.0, &path_var)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&edge_log).expect("edge log"))
        .spawn()
        .expect("starts the edge block");
    let stdout = child.stdout.take().expect("edge stdout");
    let edge = Edge(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut fingerprint = None;
    let mut listening = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    while fingerprint.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(rest) = line.strip_prefix("listening on ") {
                    listening = rest.split_whitespace().next().map(str::to_owned);
                }
                if let Some(fp) = line.strip_prefix("certificate fingerprint ") {
                    fingerprint = Some(fp.trim().to_owned());
                }
            }
            Err(_) => panic!(
                "the edge printed no fingerprint; its stderr:\n{}",
                std::fs::read_to_string(&edge_log).unwrap_or_default()
            ),
        }
    }
    let fingerprint = fingerprint.expect("fingerprint");
    assert_eq!(
        listening.as_deref(),
        Some(format!("127.0.0.1:{udp}").as_str())
    );
    let token = std::fs::read_to_string(scratch.0.join("cam-1.token")).expect("the token file");
    assert_eq!(token.trim().len(), 32, "openssl rand -hex 16: {token:?}");

    // Terminal 2: the device, pinning what the edge printed.
    let mut device = shell(&ports(&device_block), &scratch.0, &path_var);
    device.env("EDGE_FP", &fingerprint);
    let out = run_device(device, Duration::from_secs(300), "device block");
    assert_eq!(every_frame_answered(&out, "device block"), 20);

    // A wrong fingerprint is refused: the pin is what admits the edge.
    let mut wrong = shell(&ports(&device_block), &scratch.0, &path_var);
    let other = format!("{:0>64}", "1");
    wrong.env("EDGE_FP", &other);
    let out = wrong.output().expect("runs the device block");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("\"mode\":\"split\""),
        "a device pinning another fingerprint reached the edge:\n{text}"
    );

    // The video block, through the same edge.
    if tool_or_skip(TEST, "ffmpeg") {
        let mut video = shell(&ports(&video_block), &scratch.0, &path_var);
        video.env("EDGE_FP", &fingerprint);
        let out = run_device(video, Duration::from_secs(300), "video block");
        // 3 s at 10 frames per second.
        assert_eq!(every_frame_answered(&out, "video block"), 30);
    }
    drop(edge);
    let log = std::fs::read_to_string(&edge_log).unwrap_or_default();
    assert!(
        !log.contains("ERROR") && !log.lines().any(|l| l.starts_with("error")),
        "the edge logged errors:\n{log}"
    );
}

#[cfg(unix)]
fn link_assets(from: &Path, to: &Path) {
    std::os::unix::fs::symlink(from, to).expect("links assets into the scratch folder");
}

#[cfg(not(unix))]
fn link_assets(_from: &Path, _to: &Path) {
    panic!("the README's commands are for a Unix shell");
}

#[test]
fn blocks_and_continuations_are_read_as_a_shell_would() {
    let readme = "text\n<!-- readme-test: x -->\n```sh\na \\\n   --b c\nd\n```\nmore\n";
    let block = readme_block(readme, "x");
    assert_eq!(commands(&block), ["a --b c", "d"]);
}
