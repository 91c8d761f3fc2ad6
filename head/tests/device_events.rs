//! `splitstream-device --input` on a real event-camera recording: the events become
//! frames (one per time window, rendered) that run through the device like pictures.
//! Needs `../shared/events/evt3_sample.raw` (or `$SPLITSTREAM_SHARED/events/...`):
//! skipped with a note when it is missing, failing under `CI=true`.

use std::path::PathBuf;
use std::process::Command;

use splitstream_models::synthetic::{seeded_vit_safetensors, DEMO_VIT};

fn shared(test: &str) -> Option<PathBuf> {
    splitstream_testkit::shared_file(test, "events/evt3_sample.raw")
}

/// Non-empty windows of `window_us` aligned on the first event, counted from the
/// decoded events themselves.
fn expected_frames(file: &std::path::Path, window_us: i64) -> u64 {
    let mut reader = splitstream_events::open(
        file.to_str().expect("utf-8 path"),
        &splitstream_events::SourceOptions::default(),
    )
    .expect("opens");
    let mut batch = Vec::new();
    let mut windows = std::collections::BTreeSet::new();
    let mut first = None;
    while reader.read_batch(&mut batch).expect("decodes") > 0 {
        for e in &batch {
            let t0 = *first.get_or_insert(e.t);
            windows.insert((e.t - t0).div_euclid(window_us));
        }
    }
    windows.len() as u64
}

#[test]
fn an_event_recording_runs_through_the_device_as_rendered_frames() {
    let Some(recording) = shared("an_event_recording_runs_through_the_device_as_rendered_frames")
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let weights = dir.path().join("vit.safetensors");
    std::fs::write(&weights, seeded_vit_safetensors(&DEMO_VIT, 7)).expect("writes weights");
    let out = Command::new(env!("CARGO_BIN_EXE_splitstream-device"))
        .arg("--weights")
        .arg(&weights)
        .arg("--input")
        .arg(&recording)
        .args([
            "--mode",
            "local",
            "--event-window-ms",
            "10",
            "--threads",
            "1",
        ])
        .output()
        .expect("runs splitstream-device");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "device failed: {stderr}");
    assert!(
        stderr.contains("1280x720"),
        "the sensor size is read: {stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let (summary, frames) = lines.split_last().expect("a summary line");
    let want = expected_frames(&recording, 10_000);
    println!("{} frames of 10 ms; summary {summary}", frames.len());
    assert!(want > 1, "the recording spans several windows");
    assert_eq!(frames.len() as u64, want, "one frame per non-empty window");
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(f["seq"], i as u64);
        assert_eq!(f["mode"], "local");
        assert_eq!(f["result"]["status"], "classified", "frame {i}: {f}");
    }
}

#[test]
fn a_histogram_of_events_is_refused_by_an_image_model_with_the_fix() {
    let Some(recording) = shared("a_histogram_of_events_is_refused_by_an_image_model_with_the_fix")
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let weights = dir.path().join("vit.safetensors");
    std::fs::write(&weights, seeded_vit_safetensors(&DEMO_VIT, 7)).expect("writes weights");
    let out = Command::new(env!("CARGO_BIN_EXE_splitstream-device"))
        .arg("--weights")
        .arg(&weights)
        .arg("--input")
        .arg(&recording)
        .args(["--mode", "local", "--event-repr", "histogram"])
        .output()
        .expect("runs splitstream-device");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--event-repr rendered"), "{stderr}");
}
