//! `splitstream-bench events`: decode rate per format, side by side in the same run
//! with the peers on the same files: expelliarmus (C core, through
//! `python/bench_expelliarmus.py`) for EVT 2.0/3.0, and iniVation's dv-processing (C++
//! core, through `python/bench_dv_processing.py`) for AEDAT 4; and peak memory on a
//! long file (ours streams; expelliarmus loads it whole).
//!
//! Every side times a run the same way: the whole decode (open included) repeated until
//! `--min-time` has passed, since the samples decode in milliseconds; the median of the
//! runs is reported.

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
    /// Seconds each timed run lasts at least (the decode is repeated within a run).
    #[arg(long, default_value_t = 0.2)]
    min_time: f64,
    /// Python interpreter with expelliarmus and dv-processing installed.
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
    /// Which peer read the file: "expelliarmus" or "dv-processing".
    peer: Option<&'static str>,
    peer_mev_s: Option<f64>,
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
    peer_errors: Vec<String>,
}

fn recordings_dir(arg: Option<PathBuf>) -> PathBuf {
    arg.unwrap_or_else(|| match std::env::var_os("SPLITSTREAM_SHARED") {
        Some(dir) => PathBuf::from(dir).join("events"),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/events"),
    })
}

/// Decodes a file completely, again and again until `min_time` has passed; returns
/// (events per decode, seconds per decode).
fn timed_decode(path: &Path, min_time: f64) -> Result<(u64, f64)> {
    let start = Instant::now();
    let mut reps = 0u32;
    loop {
        let (n, _) = decode(path)?;
        reps += 1;
        let secs = start.elapsed().as_secs_f64();
        if secs >= min_time {
            return Ok((n, secs / f64::from(reps)));
        }
    }
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
    let result = measure(
        &args.python,
        args.runs.max(1),
        args.min_time.max(0.0),
        args.long_mb,
        &dir,
        &tmp,
    );
    std::fs::remove_dir_all(&tmp).ok();
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{:<26} {:>10} {:>12} {:>20} {:>8}",
        "format (file)", "events", "ours Mev/s", "peer Mev/s", "ratio"
    );
    for r in &report.rows {
        let peer = match (r.peer, r.peer_mev_s) {
            (Some(name), Some(v)) => format!("{v:.1} {name}"),
            _ => "-".to_string(),
        };
        let ratio = r.ratio.map_or("-".to_string(), |v| format!("{v:.2}x"));
        let name = format!(
            "{}{}",
            r.format,
            if r.spec_made { " (spec-made)" } else { "" }
        );
        println!(
            "{name:<26} {:>10} {:>12.1} {peer:>20} {ratio:>8}",
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
    for e in &report.peer_errors {
        println!("peer: {e}");
    }
    Ok(())
}

/// The program that reads a file beside ours.
#[derive(Clone, Copy)]
enum Peer {
    /// expelliarmus with this encoding name (`evt2`, `evt3`).
    Expelliarmus(&'static str),
    /// dv-processing's `MonoCameraRecording` (AEDAT 4).
    DvProcessing,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Self::Expelliarmus(_) => "expelliarmus",
            Self::DvProcessing => "dv-processing",
        }
    }
}

/// Runs a peer script on its files; returns its JSON lines and the errors it reported.
fn run_peer(
    python: &str,
    script: &Path,
    flags: &[String],
    files: &[String],
) -> (Vec<serde_json::Value>, Vec<String>) {
    let mut errors = Vec::new();
    let mut lines = Vec::new();
    if files.is_empty() {
        return (lines, errors);
    }
    match Command::new(python)
        .arg(script)
        .args(flags)
        .args(files)
        .output()
    {
        Ok(out) => {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                    match v.get("error") {
                        Some(e) => errors.push(e.as_str().unwrap_or_default().to_string()),
                        None => lines.push(v),
                    }
                }
            }
            if !out.status.success() && errors.is_empty() {
                errors.push(String::from_utf8_lossy(&out.stderr).trim().to_string());
            }
        }
        Err(e) => errors.push(format!("cannot run {python}: {e}")),
    }
    (lines, errors)
}

fn measure(
    python: &str,
    runs: usize,
    min_time: f64,
    long_mb: usize,
    dir: &Path,
    tmp: &Path,
) -> Result<Report> {
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
    // (format, path, spec-made, the peer that reads it)
    let files: Vec<(&str, PathBuf, bool, Option<Peer>)> = vec![
        (
            "EVT 3.0",
            dir.join("evt3_sample.raw"),
            false,
            Some(Peer::Expelliarmus("evt3")),
        ),
        (
            "EVT 2.0",
            dir.join("evt2_sample.raw"),
            false,
            Some(Peer::Expelliarmus("evt2")),
        ),
        (
            "AEDAT 4.0 zstd",
            dir.join("gen41_zstd.aedat4"),
            false,
            Some(Peer::DvProcessing),
        ),
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
            Some(Peer::Expelliarmus("evt3")),
        ),
        (
            "EVT 2.0",
            write(
                tmp,
                "evt2_spec.raw",
                &with_header("2.0", 1280, 720, &encode::evt2(&events)),
            )?,
            true,
            Some(Peer::Expelliarmus("evt2")),
        ),
        (
            "AEDAT 4.0 lz4",
            write(
                tmp,
                "lz4.aedat4",
                &encode::aedat4(&events, 1280, 720, Compression::Lz4, 10_000, true),
            )?,
            true,
            Some(Peer::DvProcessing),
        ),
        (
            "AEDAT 4.0 none",
            write(
                tmp,
                "none.aedat4",
                &encode::aedat4(&events, 1280, 720, Compression::None, 10_000, true),
            )?,
            true,
            Some(Peer::DvProcessing),
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
    // The peers first (one python process each for all their files), then ours; all
    // read warm files from the page cache.
    let python_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../python");
    let script = python_dir.join("bench_expelliarmus.py");
    let flags = vec![
        "--runs".to_string(),
        runs.to_string(),
        "--min-time".to_string(),
        min_time.to_string(),
    ];
    let expelliarmus_files: Vec<String> = files
        .iter()
        .filter_map(|(_, p, _, peer)| match peer {
            Some(Peer::Expelliarmus(enc)) => Some(format!("{enc}:{}", p.display())),
            _ => None,
        })
        .collect();
    let dv_files: Vec<String> = files
        .iter()
        .filter(|(_, _, _, peer)| matches!(peer, Some(Peer::DvProcessing)))
        .map(|(_, p, _, _)| p.display().to_string())
        .collect();
    let (mut peer, mut peer_errors) = run_peer(python, &script, &flags, &expelliarmus_files);
    let (dv, dv_errors) = run_peer(
        python,
        &python_dir.join("bench_dv_processing.py"),
        &flags,
        &dv_files,
    );
    peer.extend(dv);
    peer_errors.extend(dv_errors);
    let mut rows = Vec::new();
    for (format, path, spec_made, which) in &files {
        let _ = decode(path)?; // warm the page cache
        let mut times = Vec::new();
        let mut n = 0;
        for _ in 0..runs {
            let (events, secs) = timed_decode(path, min_time)?;
            n = events;
            times.push(secs);
        }
        let ours = n as f64 / stats::median(&times).unwrap_or(f64::NAN) / 1e6;
        let theirs = which.and_then(|_| {
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
            peer: which.map(Peer::name),
            peer_mev_s: theirs,
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
        note: "rates are events decoded per second of wall time (open included), median of the runs, files warm in the page cache; ours streams batches from the file, expelliarmus reads the file into one numpy array, dv-processing pulls its event batches",
        rows,
        memory,
        peer_errors,
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
