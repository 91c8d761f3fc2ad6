//! Reading a run record back, and the summary `splitstream report` prints.
//!
//! Reading is capped (the file's size, each line's length) and strict about what each
//! line says: a line that is not one of the four kinds is an error naming its number.
//! A record whose run was stopped before its end line is still read (`end` is `None`);
//! a last line cut off mid-way is an error that says so.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{End, Header, Line, Sample, Stage, FORMAT};

/// Largest record read: four times the writer's default cap.
const MAX_FILE_BYTES: u64 = 1 << 30;

/// Longest line: a header with a long command line, or a sample with 32 temperatures,
/// is a few KiB.
const MAX_LINE_BYTES: usize = 1 << 20;

/// Why a record could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than any record the writer makes.
    #[error("{}: {bytes} bytes, over the {MAX_FILE_BYTES}-byte cap of a run record", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        bytes: u64,
    },
    /// The first line is not a header of this format.
    #[error("{}: not a run record ({message}); records are written by --record FILE", path.display())]
    NotARecord {
        /// The file.
        path: PathBuf,
        /// What was found instead.
        message: String,
    },
    /// A line is not what the format says.
    #[error("{}: line {line}: {message}", path.display())]
    Line {
        /// The file.
        path: PathBuf,
        /// Its number, from 1.
        line: usize,
        /// What was wrong.
        message: String,
    },
    /// The last line stops mid-way.
    #[error("{}: line {line} is cut off (the run was stopped while writing it?); remove that line to read the rest", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// The cut line's number.
        line: usize,
    },
}

/// A record, read back.
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    /// Its header.
    pub header: Header,
    /// Every stage line, in file order.
    pub stages: Vec<Stage>,
    /// Every sample line, in file order.
    pub samples: Vec<Sample>,
    /// Its end line (`None`: the run stopped before writing it).
    pub end: Option<End>,
}

/// Reads a record from a file (see the module docs for what is an error).
pub fn read(path: &Path) -> Result<Run, ReadError> {
    let io = |source| ReadError::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let bytes = file.metadata().map_err(io)?.len();
    if bytes > MAX_FILE_BYTES {
        return Err(ReadError::TooLarge {
            path: path.to_owned(),
            bytes,
        });
    }
    let mut text = String::new();
    file.take(MAX_FILE_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => ReadError::NotARecord {
                path: path.to_owned(),
                message: "the file is not UTF-8 text".into(),
            },
            _ => io(e),
        })?;
    read_str(&text, path)
}

/// Reads a record from text; `path` names it in errors.
pub fn read_str(text: &str, path: &Path) -> Result<Run, ReadError> {
    let line_err = |line: usize, message: String| ReadError::Line {
        path: path.to_owned(),
        line,
        message,
    };
    let ends_cleanly = text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let last = lines.len();
    let mut run: Option<Run> = None;
    for (i, raw) in lines.iter().enumerate() {
        let n = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        if raw.len() > MAX_LINE_BYTES {
            return Err(line_err(
                n,
                format!("{} bytes, over the line cap", raw.len()),
            ));
        }
        let parsed: Line = match serde_json::from_str(raw) {
            Ok(l) => l,
            Err(_) if n == last && !ends_cleanly => {
                return Err(ReadError::Truncated {
                    path: path.to_owned(),
                    line: n,
                })
            }
            Err(e) if run.is_none() => {
                return Err(ReadError::NotARecord {
                    path: path.to_owned(),
                    message: format!("line 1: {e}"),
                })
            }
            Err(e) => return Err(line_err(n, e.to_string())),
        };
        let Some(r) = run.as_mut() else {
            let Line::Header(header) = parsed else {
                return Err(ReadError::NotARecord {
                    path: path.to_owned(),
                    message: "the first line is not a header".into(),
                });
            };
            if header.format != FORMAT {
                return Err(ReadError::NotARecord {
                    path: path.to_owned(),
                    message: format!("format {:?}, this build reads {FORMAT:?}", header.format),
                });
            }
            run = Some(Run {
                header,
                stages: Vec::new(),
                samples: Vec::new(),
                end: None,
            });
            continue;
        };
        if r.end.is_some() {
            return Err(line_err(n, "a line after the end line".into()));
        }
        match parsed {
            Line::Header(_) => return Err(line_err(n, "a second header".into())),
            Line::Stage(s) => {
                if !(s.t_s.is_finite() && s.ms.is_finite() && s.t_s >= 0.0 && s.ms >= 0.0) {
                    return Err(line_err(
                        n,
                        "a stage's time is negative or not a number".into(),
                    ));
                }
                r.stages.push(s);
            }
            Line::Sample(s) => {
                if !s.t_s.is_finite() || s.t_s < 0.0 {
                    return Err(line_err(
                        n,
                        "a sample's time is negative or not a number".into(),
                    ));
                }
                if s.temps_c.len() != r.header.temperatures.len() {
                    return Err(line_err(
                        n,
                        format!(
                            "{} temperatures where the header names {}",
                            s.temps_c.len(),
                            r.header.temperatures.len()
                        ),
                    ));
                }
                r.samples.push(s);
            }
            Line::End(e) => r.end = Some(e),
        }
    }
    run.ok_or_else(|| ReadError::NotARecord {
        path: path.to_owned(),
        message: "the file is empty".into(),
    })
}

/// The stages in the order a frame meets them: the device's, the edge's, a language
/// model's.
const STAGE_ORDER: [&str; 8] = [
    "preprocess",
    "head",
    "encode",
    "send",
    "edge",
    "prefill",
    "decode",
    "tail",
];

/// One stage's figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StageSummary {
    /// The stage.
    pub name: String,
    /// Spans recorded.
    pub count: usize,
    /// Median span, ms (nearest rank).
    pub median_ms: f64,
    /// 95th percentile, ms (nearest rank).
    pub p95_ms: f64,
    /// Mean, ms.
    pub mean_ms: f64,
    /// Sum of spans, ms.
    pub total_ms: f64,
    /// Tokens over its spans (0 when it says none).
    pub tokens: u64,
    /// Tokens per second of the stage's own time (`prefill`: prompt tokens read;
    /// `decode`: tokens made), when it has tokens.
    pub tokens_per_s: Option<f64>,
}

/// What `splitstream report` prints.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// The command line.
    pub command: String,
    /// The host.
    pub host: String,
    /// Where the watts came from (`rapl`, `model`, ...).
    pub power_source: String,
    /// Whether a meter measured them.
    pub power_measured: bool,
    /// From the record's start to its last line, s.
    pub duration_s: f64,
    /// Frames (the end line's count; without one, the distinct frames of stage lines).
    pub frames: u64,
    /// Tokens (the end line's count; without one, the tokens of `decode` stages).
    pub tokens: u64,
    /// The trapezoid integral of the samples' watts, J.
    pub energy_j: Option<f64>,
    /// Energy over frames, J.
    pub energy_per_frame_j: Option<f64>,
    /// Energy over tokens, J.
    pub energy_per_token_j: Option<f64>,
    /// Mean power over the samples' span, W.
    pub mean_watts: Option<f64>,
    /// Peak resident memory (VmHWM), MiB.
    pub peak_mem_mib: Option<f64>,
    /// The hottest reading of any sensor, degrees Celsius.
    pub max_temp_c: Option<f64>,
    /// Mean of the samples' mean CPU frequency, MHz.
    pub mean_freq_mhz: Option<f64>,
    /// Per stage: preprocess, head, encode, send, edge, prefill, decode, tail, then
    /// any others as they first appear, then phases.
    pub stages: Vec<StageSummary>,
    /// Whether the record has its end line.
    pub complete: bool,
    /// Whether the writer reached its cap.
    pub capped: bool,
    /// Sensors the header says were absent.
    pub absent: Vec<String>,
}

/// The trapezoid integral of `(t_s, watts)` over samples with watts, J (`None` with
/// fewer than two).
pub(crate) fn integrate(samples: &[Sample]) -> Option<f64> {
    let points: Vec<(f64, f64)> = samples
        .iter()
        .filter_map(|s| s.watts.map(|w| (s.t_s, w)))
        .collect();
    (points.len() >= 2).then(|| {
        points
            .windows(2)
            .map(|p| (p[1].0 - p[0].0) * (p[0].1 + p[1].1) / 2.0)
            .sum()
    })
}

/// The nearest-rank percentile `q` (0..=1) of sorted values.
fn nearest_rank(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Summary {
    /// The summary of a record.
    pub fn of(run: &Run) -> Self {
        let mut order: Vec<&str> = Vec::new();
        for s in &run.stages {
            if !order.contains(&s.name.as_str()) {
                order.push(&s.name);
            }
        }
        // The known stages in the order a frame (or a prompt) meets them, whatever
        // order their first lines came in (the edge's decode is written before the
        // device's frame ends); others after them as they came, phases last.
        let rank = |name: &str| {
            STAGE_ORDER.iter().position(|&k| k == name).unwrap_or(
                if name.starts_with(super::PHASE) {
                    STAGE_ORDER.len() + 1
                } else {
                    STAGE_ORDER.len()
                },
            )
        };
        order.sort_by_key(|n| rank(n));
        let stages: Vec<StageSummary> = order
            .iter()
            .map(|name| {
                let spans: Vec<&Stage> = run.stages.iter().filter(|s| s.name == *name).collect();
                let mut ms: Vec<f64> = spans.iter().map(|s| s.ms).collect();
                ms.sort_by(f64::total_cmp);
                let total_ms: f64 = ms.iter().sum();
                let tokens: u64 = spans.iter().filter_map(|s| s.tokens).map(u64::from).sum();
                StageSummary {
                    name: (*name).to_owned(),
                    count: ms.len(),
                    median_ms: nearest_rank(&ms, 0.5),
                    p95_ms: nearest_rank(&ms, 0.95),
                    mean_ms: total_ms / ms.len().max(1) as f64,
                    total_ms,
                    tokens,
                    tokens_per_s: (tokens > 0 && total_ms > 0.0)
                        .then(|| tokens as f64 / (total_ms / 1e3)),
                }
            })
            .collect();
        let (frames, tokens) = match &run.end {
            Some(e) => (e.frames, e.tokens),
            None => (
                run.stages
                    .iter()
                    .filter_map(|s| s.frame)
                    .collect::<HashSet<_>>()
                    .len() as u64,
                stages
                    .iter()
                    .filter(|s| s.name == "decode")
                    .map(|s| s.tokens)
                    .sum(),
            ),
        };
        let energy_j = integrate(&run.samples);
        let watts_span = {
            let t: Vec<f64> = run
                .samples
                .iter()
                .filter(|s| s.watts.is_some())
                .map(|s| s.t_s)
                .collect();
            t.last().zip(t.first()).map(|(b, a)| b - a)
        };
        let per = |n: u64| energy_j.filter(|_| n > 0).map(|e| e / n as f64);
        let last_t = run
            .stages
            .iter()
            .map(|s| s.t_s + s.ms / 1e3)
            .chain(run.samples.iter().map(|s| s.t_s))
            .chain(run.end.iter().map(|e| e.t_s))
            .fold(0.0, f64::max);
        let freqs: Vec<f64> = run.samples.iter().filter_map(|s| s.freq_mhz).collect();
        Self {
            command: run.header.command.join(" "),
            host: run.header.host.clone(),
            power_source: run.header.power.source.clone(),
            power_measured: run.header.power.measured,
            duration_s: last_t,
            frames,
            tokens,
            energy_j,
            energy_per_frame_j: per(frames),
            energy_per_token_j: per(tokens),
            mean_watts: energy_j
                .zip(watts_span)
                .filter(|(_, s)| *s > 0.0)
                .map(|(e, s)| e / s),
            peak_mem_mib: run
                .end
                .as_ref()
                .and_then(|e| e.peak_hwm_kib)
                .or_else(|| run.samples.iter().filter_map(|s| s.hwm_kib).max())
                .map(|k| k as f64 / 1024.0),
            max_temp_c: run
                .samples
                .iter()
                .flat_map(|s| s.temps_c.iter().flatten().copied())
                .reduce(f64::max),
            mean_freq_mhz: (!freqs.is_empty())
                .then(|| freqs.iter().sum::<f64>() / freqs.len() as f64),
            stages,
            complete: run.end.is_some(),
            capped: run.end.as_ref().is_some_and(|e| e.capped),
            absent: run.header.absent.clone(),
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let opt = |v: Option<f64>, digits: usize, unit: &str| match v {
            Some(v) => format!("{v:.digits$} {unit}"),
            None => "-".to_owned(),
        };
        writeln!(f, "command  {}", self.command)?;
        writeln!(
            f,
            "host     {}",
            if self.host.is_empty() {
                "-"
            } else {
                &self.host
            }
        )?;
        writeln!(
            f,
            "power    {} ({})",
            self.power_source,
            if self.power_measured {
                "measured"
            } else {
                "not measured"
            }
        )?;
        writeln!(f)?;
        let (phases, stages): (Vec<_>, Vec<_>) = self
            .stages
            .iter()
            .partition(|s| s.name.starts_with(super::PHASE));
        let w = stages.iter().map(|s| s.name.len()).fold(10, usize::max);
        writeln!(
            f,
            "{:<w$} {:>7} {:>11} {:>11} {:>11}",
            "stage", "count", "median ms", "p95 ms", "tokens/s"
        )?;
        for s in stages {
            writeln!(
                f,
                "{:<w$} {:>7} {:>11.3} {:>11.3} {:>11}",
                s.name,
                s.count,
                s.median_ms,
                s.p95_ms,
                s.tokens_per_s.map_or("-".to_owned(), |t| format!("{t:.1}"))
            )?;
        }
        if !phases.is_empty() {
            writeln!(f)?;
            for p in phases {
                writeln!(
                    f,
                    "phase {:<36} {:>9.2} s",
                    p.name.trim_start_matches(super::PHASE),
                    p.total_ms / 1e3
                )?;
            }
        }
        writeln!(f)?;
        writeln!(f, "duration          {:.2} s", self.duration_s)?;
        writeln!(f, "frames            {}", self.frames)?;
        writeln!(f, "tokens            {}", self.tokens)?;
        writeln!(f, "energy            {}", opt(self.energy_j, 3, "J"))?;
        writeln!(
            f,
            "energy per frame  {}",
            opt(self.energy_per_frame_j.map(|j| j * 1e3), 2, "mJ")
        )?;
        writeln!(
            f,
            "energy per token  {}",
            opt(self.energy_per_token_j.map(|j| j * 1e3), 2, "mJ")
        )?;
        writeln!(f, "mean power        {}", opt(self.mean_watts, 2, "W"))?;
        writeln!(f, "peak memory       {}", opt(self.peak_mem_mib, 1, "MiB"))?;
        writeln!(f, "max temperature   {}", opt(self.max_temp_c, 1, "C"))?;
        writeln!(f, "mean frequency    {}", opt(self.mean_freq_mhz, 0, "MHz"))?;
        if !self.complete {
            writeln!(
                f,
                "note: no end line (the run stopped early); frames counted from stage lines"
            )?;
        }
        if self.capped {
            writeln!(
                f,
                "note: the record reached its size cap; later lines were left out"
            )?;
        }
        for a in &self.absent {
            writeln!(f, "absent: {a}")?;
        }
        Ok(())
    }
}
