//! `splitstream-bench events`: decode rate per format, side by side in the same run
//! with expelliarmus (C core, through `python/bench_expelliarmus.py`) on the same
//! files, and peak memory on a long file (ours streams; the peer loads it whole).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use splitstream_events::formats::aedat4::Compression;
use splitstream_events::{encode, open_path, Event, SourceOptions};

use crate::stats;

/// Arguments of `splitstream-bench events`.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  splitstream-bench events\n  splitstream-bench events --json --runs 9 --long-mb 256"
)]
pub(crate) struct Args {
    /// Print one JSON document instead of the table.
    #[arg(long)]
    json: bool,
    /// Directory with evt3_sample.raw, evt2_sample.raw, gen41_zstd.aedat4
    /// [default: $SPLITSTREAM_SHARED/events, else ../shared/events beside the workspace].
    #[arg(long, value_name = "DIR")]
    recordings: Option<PathBuf>,
    /// Timed runs per file; the median is reported.
    #[arg(long, default_value_t = 7)]
    runs: usize,
    /// Size of the long EVT 3.0 file (the sample's body repeated) for the memory check.
    #[arg(long, default_value_t = 128)]
    long_mb: usize,
    /// Python interpreter with expelliarmus installed.
    #[arg(long, default_value = "python3")]
    python: String,
    /// Internal: decode FILE, print peak RSS (used in a child process).
    #[arg(long, hide = true, value_name = "FILE")]
    rss_probe: Option<PathBuf>,
}

#[derive(Serialize)]
struct Row {
    format: String,
    file: String,
    spec_made: bool,
    bytes: u64,
    events: u64,
    ours_mev_s: f64,
    expelliarmus_mev_s: Option<f64>,
    ratio: Option<f64>,
}

#[derive(Serialize)]
struct Memory {
    file: String,
    bytes: u64,
    events: u64,
    ours_peak_rss_mib: f64,
    expelliarmus_peak_rss_mib: Option<f64>,
}

#[derive(Serialize)]
struct Report {
    runs: usize,
    note: &'static str,
    rows: Vec<Row>,
    memory: Option<Memory>,
    peer_error: Option<String>,
}

fn recordings_dir(arg: Option<PathBuf>) -> PathBuf {
    arg.unwrap_or_else(|| match std::env::var_os("SPLITSTREAM_SHARED") {
        Some(dir) => PathBuf::from(dir).join("events"),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/events"),
    })
}

/// Decodes a file completely; returns (events, seconds).
fn decode(path: &Path) -> Result<(u64, f64)> {
    let start = Instant::now();
    let mut reader = open_path(path, &SourceOptions::default())?;
    let mut batch = Vec::new();
    let mut n = 0u64;
    let mut checksum = 0i64;
    while reader.read_batch(&mut batch)? > 0 {
        n += batch.len() as u64;
        // Touch the events so the decode cannot be optimised away.
        checksum = checksum.wrapping_add(batch[batch.len() - 1].t);
    }
    std::hint::black_box(checksum);
    Ok((n, start.elapsed().as_secs_f64()))
}

/// Events of the real EVT 3.0 sample, to make spec-made files of every other format.
fn sample_events(dir: &Path) -> Result<Vec<Event>> {
    let mut reader = open_path(&dir.join("evt3_sample.raw"), &SourceOptions::default())?;
    let mut all = Vec::new();
    let mut batch = Vec::new();
    while reader.read_batch(&mut batch)? > 0 {
        all.extend_from_slice(&batch);
    }
    Ok(all)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn with_header(version: &str, w: u16, h: u16, body: &[u8]) -> Vec<u8> {
    let mut b = encode::prophesee_header(version, w, h);
    b.extend_from_slice(body);
    b
}

pub(crate) fn run(args: Args) -> Result<()> {
    if let Some(file) = args.rss_probe {
        let (events, _) = decode(&file)?;
        println!(
            "{{\"events\": {events}, \"peak_rss_mib\": {}}}",
            stats::peak_rss_mib(None).unwrap_or(0.0)
        );
        return Ok(());
    }
    let dir = recordings_dir(args.recordings);
    if !dir.join("evt3_sample.raw").is_file() {
        bail!(
            "no recordings at {}: pass --recordings DIR or set SPLITSTREAM_SHARED",
            dir.display()
        );
    }
    let tmp = std::env::temp_dir().join(format!("splitstream-bench-events-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let result = measure(&args.python, args.runs.max(1), args.long_mb, &dir, &tmp);
    std::fs::remove_dir_all(&tmp).ok();
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{:<26} {:>10} {:>12} {:>14} {:>8}",
        "format (file)", "events", "ours Mev/s", "expelliarmus", "ratio"
    );
    for r in &report.rows {
        let peer = r
            .expelliarmus_mev_s
            .map_or("-".to_string(), |v| format!("{v:.1}"));
        let ratio = r.ratio.map_or("-".to_string(), |v| format!("{v:.1}x"));
        let name = format!(
            "{}{}",
            r.format,
            if r.spec_made { " (spec-made)" } else { "" }
        );
        println!(
            "{name:<26} {:>10} {:>12.1} {peer:>14} {ratio:>8}",
            r.events, r.ours_mev_s
        );
    }
    if let Some(m) = &report.memory {
        let peer = m
            .expelliarmus_peak_rss_mib
            .map_or("-".to_string(), |v| format!("{v:.0} MiB"));
        println!(
            "long file {} MB, {} events: peak RSS ours {:.0} MiB, expelliarmus {peer}",
            m.bytes / 1_000_000,
            m.events,
            m.ours_peak_rss_mib
        );
    }
    if let Some(e) = &report.peer_error {
        println!("peer: {e}");
    }
    Ok(())
}

fn measure(python: &str, runs: usize, long_mb: usize, dir: &Path, tmp: &Path) -> Result<Report> {
    let events = sample_events(dir)?;
    let small: Vec<Event> = events
        .iter()
        .map(|e| Event {
            x: e.x % 128,
            y: e.y % 128,
            ..*e
        })
        .collect();
    let nbin: Vec<Event> = events
        .iter()
        .map(|e| Event {
            x: e.x % 240,
            y: e.y % 180,
            ..*e
        })
        .collect();
    // (format, path, spec-made, expelliarmus encoding)
    let files: Vec<(&str, PathBuf, bool, Option<&str>)> = vec![
        ("EVT 3.0", dir.join("evt3_sample.raw"), false, Some("evt3")),
        ("EVT 2.0", dir.join("evt2_sample.raw"), false, Some("evt2")),
        ("AEDAT 4.0 zstd", dir.join("gen41_zstd.aedat4"), false, None),
        (
            "EVT 2.1",
            write(
                tmp,
                "evt21.raw",
                &with_header("2.1", 1280, 720, &encode::evt21(&events)),
            )?,
            true,
            None,
        ),
        (
            "EVT 3.0",
            write(
                tmp,
                "evt3_spec.raw",
                &with_header("3.0", 1280, 720, &encode::evt3_bytes(&events)),
            )?,
            true,
            Some("evt3"),
        ),
        (
            "EVT 2.0",
            write(
                tmp,
                "evt2_spec.raw",
                &with_header("2.0", 1280, 720, &encode::evt2(&events)),
            )?,
            true,
            Some("evt2"),
        ),
        (
            "AEDAT 4.0 lz4",
            write(
                tmp,
                "lz4.aedat4",
                &encode::aedat4(&events, 1280, 720, Compression::Lz4, 10_000, true),
            )?,
            true,
            None,
        ),
        (
            "AEDAT 4.0 none",
            write(
                tmp,
                "none.aedat4",
                &encode::aedat4(&events, 1280, 720, Compression::None, 10_000, true),
            )?,
            true,
            None,
        ),
        (
            "AEDAT 3.1",
            write(
                tmp,
                "a31.aedat",
                &encode::aedat31(&events, "DAVIS346", 8192),
            )?,
            true,
            None,
        ),
        (
            "AEDAT 2.0",
            write(tmp, "a2.aedat", &encode::aedat2_dvs128(&small))?,
            true,
            None,
        ),
        (
            "N-MNIST bin",
            write(tmp, "n.bin", &encode::nbin(&nbin))?,
            true,
            None,
        ),
    ];
    // The peer first (one python process for all its files), then ours, alternating
    // would need many processes; both read warm files from the page cache.
    let peer_args: Vec<String> = files
        .iter()
        .filter_map(|(_, p, _, enc)| enc.map(|e| format!("{e}:{}", p.display())))
        .collect();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../python/bench_expelliarmus.py");
    let mut peer_error = None;
    let mut peer: Vec<serde_json::Value> = Vec::new();
    match Command::new(python)
        .arg(&script)
        .arg("--runs")
        .arg(runs.to_string())
        .args(&peer_args)
        .output()
    {
        Ok(out) => {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                    if let Some(e) = v.get("error") {
                        peer_error = Some(e.to_string());
                    } else {
                        peer.push(v);
                    }
                }
            }
            if !out.status.success() && peer_error.is_none() {
                peer_error = Some(String::from_utf8_lossy(&out.stderr).trim().to_string());
            }
        }
        Err(e) => peer_error = Some(format!("cannot run {python}: {e}")),
    }
    let mut rows = Vec::new();
    for (format, path, spec_made, enc) in &files {
        let _ = decode(path)?; // warm the page cache
        let mut times = Vec::new();
        let mut n = 0;
        for _ in 0..runs {
            let (events, secs) = decode(path)?;
            n = events;
            times.push(secs);
        }
        let ours = n as f64 / stats::median(&times).unwrap_or(f64::NAN) / 1e6;
        let theirs = enc.and_then(|_| {
            let name = path.display().to_string();
            peer.iter()
                .find(|v| v.get("file").and_then(|f| f.as_str()) == Some(name.as_str()))
                .and_then(|v| v.get("mev_per_s")?.as_f64())
        });
        rows.push(Row {
            format: format.to_string(),
            file: path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
            spec_made: *spec_made,
            bytes: std::fs::metadata(path)?.len(),
            events: n,
            ours_mev_s: ours,
            expelliarmus_mev_s: theirs,
            ratio: theirs.map(|t| ours / t),
        });
    }
    let memory = if long_mb > 0 {
        Some(long_file_memory(python, &script, dir, tmp, long_mb)?)
    } else {
        None
    };
    Ok(Report {
        runs,
        note: "rates are events decoded per second of wall time, median of the runs, files warm in the page cache; ours streams batches from the file, expelliarmus reads the file into one numpy array",
        rows,
        memory,
        peer_error,
    })
}

/// Writes a long EVT 3.0 file (the sample's body repeated) and decodes it in a child
/// process of ours and of the peer, each reporting its peak RSS.
fn long_file_memory(
    python: &str,
    script: &Path,
    dir: &Path,
    tmp: &Path,
    long_mb: usize,
) -> Result<Memory> {
    let sample = std::fs::read(dir.join("evt3_sample.raw"))?;
    let body_at = {
        let mut at = 0;
        while sample.get(at) == Some(&b'%') {
            at += sample[at..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(sample.len() - at, |p| p + 1);
        }
        at
    };
    let (header, body) = sample.split_at(body_at);
    let path = tmp.join("long.raw");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
        f.write_all(header)?;
        let mut written = 0;
        while written < long_mb * 1_000_000 {
            f.write_all(body)?;
            written += body.len();
        }
        f.flush()?;
    }
    let bytes = std::fs::metadata(&path)?.len();
    let exe = std::env::current_exe()?;
    let out = Command::new(exe)
        .args(["events", "--rss-probe"])
        .arg(&path)
        .output()?;
    let ours: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("rss probe output")?;
    let peer = Command::new(python)
        .arg(script)
        .arg("--rss")
        .arg(format!("evt3:{}", path.display()))
        .output()
        .ok()
        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
        .and_then(|v| v.get("peak_rss_mib")?.as_f64());
    std::fs::remove_file(&path).ok();
    Ok(Memory {
        file: format!("evt3_sample body repeated to {long_mb} MB"),
        bytes,
        events: ours.get("events").and_then(|v| v.as_u64()).unwrap_or(0),
        ours_peak_rss_mib: ours
            .get("peak_rss_mib")
            .and_then(|v| v.as_f64())
            .unwrap_or(0.0),
        expelliarmus_peak_rss_mib: peer,
    })
}
