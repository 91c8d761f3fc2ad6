//! `splitstream events ...` end to end: the binary on spec-made recordings.

use std::path::PathBuf;
use std::process::Command;

use splitstream_events::{encode, npy, Event};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "splitstream-events-cli-{}-{name}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn recording(dir: &std::path::Path) -> (PathBuf, Vec<Event>) {
    let events: Vec<Event> = (0..5000)
        .map(|i| {
            Event::new(
                100 + i * 20,
                (i * 13 % 640) as u16,
                (i * 7 % 480) as u16,
                i % 3 != 0,
            )
        })
        .collect();
    let mut bytes = encode::prophesee_header("3.0", 640, 480);
    bytes.extend_from_slice(&encode::evt3_bytes(&events));
    let path = dir.join("spec.raw");
    std::fs::write(&path, bytes).expect("write recording");
    (path, events)
}

fn splitstream(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_splitstream"))
        .args(args)
        .output()
        .expect("runs")
}

#[test]
fn inspect_reports_format_resolution_and_count() {
    let dir = scratch("inspect");
    let (path, events) = recording(&dir);
    let out = splitstream(&["events", "inspect", path.to_str().expect("utf-8"), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["format"], "EVT 3.0");
    assert_eq!(
        (v["width"].as_u64(), v["height"].as_u64()),
        (Some(640), Some(480))
    );
    assert_eq!(v["events"].as_u64(), Some(events.len() as u64));
    assert_eq!(v["duration_us"].as_i64(), Some(4999 * 20));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn convert_to_npy_and_csv_keeps_every_event() {
    let dir = scratch("convert");
    let (path, events) = recording(&dir);
    let npy_path = dir.join("out.npy");
    let out = splitstream(&[
        "events",
        "convert",
        path.to_str().expect("utf-8"),
        npy_path.to_str().expect("utf-8"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let back = npy::read_all(std::fs::File::open(&npy_path).expect("npy")).expect("reads");
    assert_eq!(back, events);
    let csv_path = dir.join("out.csv");
    let out = splitstream(&[
        "events",
        "convert",
        npy_path.to_str().expect("utf-8"),
        csv_path.to_str().expect("utf-8"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&csv_path).expect("csv");
    assert_eq!(text.lines().next(), Some("t,x,y,p"));
    assert_eq!(text.lines().count(), events.len() + 1);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn render_writes_png_frames_of_the_sensor_size() {
    let dir = scratch("render");
    let (path, _) = recording(&dir);
    let frames = dir.join("frames");
    let out = splitstream(&[
        "events",
        "render",
        path.to_str().expect("utf-8"),
        "--out",
        frames.to_str().expect("utf-8"),
        "--window-ms",
        "20",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 100 ms of events in 20 ms windows.
    let mut names: Vec<_> = std::fs::read_dir(&frames)
        .expect("frames")
        .map(|e| e.expect("entry").file_name())
        .collect();
    names.sort();
    assert_eq!(names.len(), 5, "{names:?}");
    let png = std::fs::read(frames.join("frame_00000.png")).expect("png");
    assert_eq!(&png[1..4], b"PNG");
    assert_eq!(
        u32::from_be_bytes([png[16], png[17], png[18], png[19]]),
        640
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn an_unknown_file_fails_with_one_clear_line() {
    let dir = scratch("unknown");
    let path = dir.join("mystery.dat");
    std::fs::write(&path, [0u8, 1, 2, 3, 0xFF, 0xFE]).expect("write");
    let out = splitstream(&["events", "inspect", path.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown event format"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn from_video_turns_a_synthetic_clip_into_events() {
    if !splitstream_testkit::tool_or_skip("from_video_turns_a_synthetic_clip_into_events", "ffmpeg")
    {
        return;
    }
    let dir = scratch("video");
    let clip = dir.join("clip.mp4");
    // A moving test pattern, 0.5 s at 30 fps, 96x64.
    let made = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=96x64:rate=30:duration=0.5",
            "-pix_fmt",
            "yuv420p",
            "-y",
        ])
        .arg(&clip)
        .status()
        .expect("ffmpeg runs");
    assert!(made.success());
    let out_path = dir.join("clip.npy");
    let out = splitstream(&[
        "events",
        "from-video",
        clip.to_str().expect("utf-8"),
        out_path.to_str().expect("utf-8"),
        "--seed",
        "3",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = npy::read_all(std::fs::File::open(&out_path).expect("npy")).expect("reads");
    assert!(events.len() > 100, "{} events", events.len());
    assert!(events.windows(2).all(|w| w[0].t <= w[1].t));
    assert!(events
        .iter()
        .all(|e| e.x < 96 && e.y < 64 && e.t > 0 && e.t <= 500_000));
    std::fs::remove_dir_all(&dir).ok();
}
