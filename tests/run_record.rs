//! Run records end to end: the real `splitstream-edge` and `splitstream-device`
//! binaries, each with `--record`, over QUIC on loopback with the shipped demo model;
//! then `splitstream report` on the device's record. Checks that each record parses and
//! has every stage its side marks, that the energy is the integral of the power
//! samples, that the report's pictures are valid, non-blank PNGs and its table says
//! what the record says, and that a cut-off record is a clear error.
//! The binaries are built (cargo is a no-op when they are current) into this test's own
//! target folder and profile.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use splitstream_power::record::{self, Run, Summary};
use splitstream_testkit::{build_binaries, workspace_dir};

const TOKEN: &str = "0123456789abcdef0123456789abcdef";
const FRAMES: usize = 6;
const WATTS: f64 = 5.0;

fn bin(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// A scratch folder of this process's own (the root package has no tempfile).
fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("splitstream-record-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir
}

/// The trapezoid integral of the samples' watts, computed here, apart from the crate.
fn integral(run: &Run) -> f64 {
    let pts: Vec<(f64, f64)> = run
        .samples
        .iter()
        .filter_map(|s| s.watts.map(|w| (s.t_s, w)))
        .collect();
    pts.windows(2)
        .map(|p| (p[1].0 - p[0].0) * (p[0].1 + p[1].1) / 2.0)
        .sum()
}

fn names(run: &Run) -> Vec<&str> {
    let mut v: Vec<&str> = run.stages.iter().map(|s| s.name.as_str()).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// A PNG that decodes, of the size given, with more than a few colours (not blank).
fn assert_picture(path: &Path, size: (u32, u32)) {
    let img = image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8();
    assert_eq!(img.dimensions(), size, "{}", path.display());
    let mut colours: Vec<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    colours.sort_unstable();
    colours.dedup();
    assert!(colours.len() > 8, "{} is blank", path.display());
}

/// JSON values equal, numbers to 1e-12 relative (a float printed and parsed back may
/// move in its last bit).
fn assert_close(a: &serde_json::Value, b: &serde_json::Value, at: &str) {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (
                x.as_f64().unwrap_or(f64::NAN),
                y.as_f64().unwrap_or(f64::NAN),
            );
            assert!(
                (x - y).abs() <= 1e-12 * x.abs().max(y.abs()),
                "{at}: {x} vs {y}"
            );
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{at}");
            for (i, (x, y)) in x.iter().zip(y).enumerate() {
                assert_close(x, y, &format!("{at}[{i}]"));
            }
        }
        (Value::Object(x), Value::Object(y)) => {
            assert_eq!(
                x.keys().collect::<Vec<_>>(),
                y.keys().collect::<Vec<_>>(),
                "{at}"
            );
            for (k, v) in x {
                assert_close(v, &y[k], &format!("{at}.{k}"));
            }
        }
        _ => assert_eq!(a, b, "{at}"),
    }
}

#[test]
fn device_and_edge_records_join_stages_with_power_and_report_draws_them() {
    let bins = build_binaries(&["splitstream", "splitstream-tail", "splitstream-head"]);
    let root = workspace_dir();
    let dir = scratch();
    let weights = root.join("assets/demo/demo_vit_bottlefit.safetensors");
    let tokens = dir.join("tokens.txt");
    std::fs::write(&tokens, format!("dev-0 {TOKEN}\n")).expect("tokens");
    let token_file = dir.join("token");
    std::fs::write(&token_file, TOKEN).expect("token");
    let edge_rec = dir.join("edge.jsonl");
    let dev_rec = dir.join("device.jsonl");

    let mut edge = Command::new(bin(&bins, "splitstream-edge"))
        .arg("--weights")
        .arg(&weights)
        .arg("--tokens")
        .arg(&tokens)
        .args([
            "--name",
            "demo-vit",
            "--listen",
            "127.0.0.1:0",
            "--no-metrics",
        ])
        .args(["--backend", "cpu", "--threads", "1", "--record"])
        .arg(&edge_rec)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starts splitstream-edge");
    let stdout = edge.stdout.take().expect("stdout");
    let (mut addr, mut fingerprint) = (None, None);
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("edge stdout");
        if let Some(rest) = line.strip_prefix("listening on ") {
            addr = rest.split_whitespace().next().map(str::to_owned);
        }
        if let Some(fp) = line.strip_prefix("certificate fingerprint ") {
            fingerprint = Some(fp.trim().to_owned());
            break;
        }
    }
    let (addr, fingerprint) = (addr.expect("address"), fingerprint.expect("fingerprint"));

    let device = Command::new(bin(&bins, "splitstream-device"))
        .arg("--weights")
        .arg(&weights)
        .args([
            "--name",
            "demo-vit",
            "--edge",
            &addr,
            "--fingerprint",
            &fingerprint,
        ])
        .args(["--device-id", "dev-0", "--token-file"])
        .arg(&token_file)
        .arg("--input")
        .arg(root.join("assets/demo/test/*.jpg"))
        .args(["--frames", &FRAMES.to_string(), "--mode", "split"])
        .args(["--power-source", &format!("const:{WATTS}"), "--record"])
        .arg(&dev_rec)
        .output()
        .expect("runs splitstream-device");
    assert!(
        device.status.success(),
        "{}",
        String::from_utf8_lossy(&device.stderr)
    );

    // SIGINT: the edge answers what is in flight, then writes its record's end line.
    let killed = Command::new("kill")
        .args(["-INT", &edge.id().to_string()])
        .status()
        .expect("runs kill");
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    while edge.try_wait().expect("edge status").is_none() {
        assert!(Instant::now() < deadline, "the edge did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The device: every frame split, each with its five stages; a constant 5 W.
    let run = record::read(&dev_rec).expect("device record");
    assert_eq!(run.header.power.source, "const");
    assert_eq!(
        names(&run),
        ["edge", "encode", "head", "preprocess", "send"],
        "device stages"
    );
    for name in ["preprocess", "head", "encode", "send", "edge"] {
        let frames: Vec<u64> = run
            .stages
            .iter()
            .filter(|s| s.name == name)
            .filter_map(|s| s.frame)
            .collect();
        assert_eq!(frames, (0..FRAMES as u64).collect::<Vec<_>>(), "{name}");
    }
    let end = run.end.clone().expect("the device's end line");
    assert_eq!(end.frames, FRAMES as u64);
    assert!(run.samples.len() >= 2, "{} samples", run.samples.len());
    let energy = end.energy_j.expect("energy");
    assert!((energy - integral(&run)).abs() < 1e-9, "{energy}");
    let span = run.samples.last().map_or(0.0, |s| s.t_s) - run.samples[0].t_s;
    assert!(
        (energy - WATTS * span).abs() < 1e-6,
        "{energy} J over {span} s"
    );
    assert!(end.peak_hwm_kib.is_some_and(|k| k > 1024));
    // A frame's spans follow each other, inside the record's time.
    let frame0: Vec<_> = run.stages.iter().filter(|s| s.frame == Some(0)).collect();
    for w in frame0.windows(2) {
        let gap = w[1].t_s - (w[0].t_s + w[0].ms / 1e3);
        assert!(
            gap.abs() < 1e-6,
            "{} then {}: gap {gap}",
            w[0].name,
            w[1].name
        );
    }

    // The edge: decode and tail of every frame, counted where the tail ran.
    let edge_run = record::read(&edge_rec).expect("edge record");
    assert_eq!(names(&edge_run), ["decode", "tail"]);
    let edge_end = edge_run
        .end
        .expect("the edge's end line (written on SIGINT)");
    assert_eq!(edge_end.frames, FRAMES as u64);
    let items: u32 = edge_run
        .stages
        .iter()
        .filter(|s| s.name == "tail")
        .filter_map(|s| s.items)
        .sum();
    assert_eq!(items as usize, FRAMES);

    // The report: a table whose figures are the record's, and two pictures.
    let out = dir.join("report");
    let report = Command::new(bin(&bins, "splitstream"))
        .arg("report")
        .arg(&dev_rec)
        .arg("--out")
        .arg(&out)
        .arg("--json")
        .output()
        .expect("runs splitstream report");
    assert!(
        report.status.success(),
        "{}",
        String::from_utf8_lossy(&report.stderr)
    );
    let table: serde_json::Value = serde_json::from_slice(&report.stdout).expect("JSON");
    let want = serde_json::to_value(Summary::of(&run)).expect("summary");
    assert_close(&table, &want, "summary");
    assert_eq!(table["frames"], FRAMES as u64);
    let per_frame = table["energy_per_frame_j"].as_f64().expect("per frame");
    assert!((per_frame - energy / FRAMES as f64).abs() < 1e-9);
    let head = &table["stages"][1];
    assert_eq!(head["name"], "head");
    assert_eq!(head["count"], FRAMES as u64);
    let mut head_ms: Vec<f64> = run
        .stages
        .iter()
        .filter(|s| s.name == "head")
        .map(|s| s.ms)
        .collect();
    head_ms.sort_by(f64::total_cmp);
    assert_eq!(head["median_ms"].as_f64(), Some(head_ms[FRAMES / 2 - 1]));
    assert_picture(&out.join("timeline.png"), (1200, 1000));
    assert_picture(&out.join("stages.png"), (1000, 560));

    // The plain table names every stage.
    let plain = Command::new(bin(&bins, "splitstream"))
        .args(["report", "--no-plots"])
        .arg(&dev_rec)
        .output()
        .expect("runs splitstream report");
    let text = String::from_utf8_lossy(&plain.stdout);
    for word in [
        "preprocess",
        "encode",
        "send",
        "energy per frame",
        "peak memory",
    ] {
        assert!(text.contains(word), "{word} missing from:\n{text}");
    }

    // A record cut mid-line is refused with a message that says so.
    let full = std::fs::read_to_string(&dev_rec).expect("record");
    let cut = dir.join("cut.jsonl");
    std::fs::write(&cut, &full[..full.len() - 20]).expect("cut record");
    let refused = Command::new(bin(&bins, "splitstream"))
        .args(["report", "--no-plots"])
        .arg(&cut)
        .output()
        .expect("runs splitstream report");
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        why.contains("cut off") && why.contains("cut.jsonl"),
        "{why}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn generate_records_prefill_and_decode_with_energy_per_token() {
    let Some(weights) = splitstream_testkit::shared_file(
        "run_record_generate",
        "reference/llm/llama_micro/model.safetensors",
    )
    .and_then(|f| f.parent().map(Path::to_path_buf)) else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("splitstream-record-gen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch folder");
    let rec = dir.join("gen.jsonl");
    let o = Command::new(env!("CARGO_BIN_EXE_splitstream"))
        .arg("generate")
        .arg("--weights")
        .arg(&weights)
        .args(["--prompt-ids", "630,206,45,60,674,691", "--max-tokens", "5"])
        .args(["--backend", "cpu", "--record"])
        .arg(&rec)
        .output()
        .expect("runs splitstream generate");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run = record::read(&rec).expect("generate's record");
    let prefill: Vec<_> = run.stages.iter().filter(|s| s.name == "prefill").collect();
    assert_eq!(prefill.len(), 1);
    assert_eq!(prefill[0].tokens, Some(6), "the prompt's tokens");
    let decode: Vec<_> = run.stages.iter().filter(|s| s.name == "decode").collect();
    assert_eq!(decode.len(), 4);
    assert!(decode.iter().all(|s| s.tokens == Some(1)));
    // Steps follow each other: each decode starts where the previous span ended.
    for w in run.stages.windows(2) {
        let gap = w[1].t_s - (w[0].t_s + w[0].ms / 1e3);
        assert!(gap.abs() < 1e-6, "gap {gap}");
    }
    let end = run.end.clone().expect("end line");
    assert_eq!(end.tokens, 5);
    let s = Summary::of(&run);
    let energy = s.energy_j.expect("energy (a meter or the model)");
    assert!((energy - integral(&run)).abs() < 1e-9);
    assert!((s.energy_per_token_j.expect("per token") - energy / 5.0).abs() < 1e-12);
    let d = s
        .stages
        .iter()
        .find(|x| x.name == "decode")
        .expect("decode");
    let total_s: f64 = decode.iter().map(|x| x.ms).sum::<f64>() / 1e3;
    assert!((d.tokens_per_s.expect("tokens/s") - 4.0 / total_s).abs() < 1e-6);
    let _ = std::fs::remove_dir_all(&dir);
}
