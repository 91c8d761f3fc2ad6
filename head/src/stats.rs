//! What the device prints: one JSON line per frame, and a summary at the end.
//!
//! A line looks like
//! `{"seq":7,"mode":"split","split":4,"result":{"status":"classified","class":281,"score":0.93},"bytes_sent":9824,"head_ms":3.1,"transfer_ms":1.9,"tail_ms":2.4,"total_ms":7.6}`;
//! `fallback` appears when a frame ran somewhere else than planned (the edge was
//! unreachable, it dropped the frame, ...), `why` when the policy explains its choice.
//!
//! Percentiles are exact (nearest rank over every frame), which costs 24 bytes per
//! frame kept: ten hours at 30 frames/s is 26 MB. Runs are expected to be shorter.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use splitstream_models::net::Detection;

/// Where a frame ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The whole model on the device.
    Local,
    /// The head on the device, the tail on the edge (the split point is in
    /// [`FrameRecord::split`]).
    Split,
    /// The frame sent as JPEG; the whole model on the edge.
    Offload,
    /// The head's features into a non-neural classifier, on the device (the fallback
    /// for a critical battery with no edge).
    Classic,
}

impl Mode {
    /// The name used in JSON and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Local => "local",
            Mode::Split => "split",
            Mode::Offload => "offload",
            Mode::Classic => "classic",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What became of a frame.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// A classifier's top-1 answer.
    Classified {
        /// Class index.
        class: u32,
        /// Its probability (softmax) or logit, as the model reports.
        score: f32,
    },
    /// A detector's answer: every object found.
    Detected {
        /// Boxes (corners `x1 y1 x2 y2`: in the frame's pixels for images, the model
        /// input's for tensor frames), scores and labels.
        boxes: Vec<Detection>,
    },
    /// A language model's next token.
    Generated {
        /// Token id.
        token: u32,
        /// Its log-probability.
        logprob: f32,
    },
    /// The frame got no result (the edge dropped it past its deadline and there was
    /// no time left to compute it locally, or it was overtaken by a newer frame).
    Dropped {
        /// Why, as the edge or the device said it.
        reason: String,
    },
    /// Computing the frame failed.
    Failed {
        /// The error.
        error: String,
    },
}

impl Outcome {
    /// Whether the frame got a result.
    pub fn is_result(&self) -> bool {
        matches!(
            self,
            Outcome::Classified { .. } | Outcome::Detected { .. } | Outcome::Generated { .. }
        )
    }
}

/// One frame's line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FrameRecord {
    /// Frame sequence number, from 0.
    pub seq: u64,
    /// Where it ran (in the end: a frame that fell back to local says `local`).
    pub mode: Mode,
    /// The split point for [`Mode::Split`]: how many head stages ran on the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<u32>,
    /// What became of it.
    pub result: Outcome,
    /// Bytes sent to the edge for this frame (payload and frame header; 0 when local).
    pub bytes_sent: u64,
    /// Time on the device before sending (or the whole model, when local).
    pub head_ms: f64,
    /// The part of `head_ms` spent preprocessing the input (an image through the
    /// model's transform; a tensor copied in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preprocess_ms: Option<f64>,
    /// The part of `head_ms` spent encoding what is sent (the bottleneck codec, or the
    /// JPEG of an offloaded frame).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encode_ms: Option<f64>,
    /// Time from sending to the answer, less the edge's own time for the frame
    /// (`tail_ms`): the link's share, i.e. the upload, propagation and the answer's way
    /// back.
    pub transfer_ms: f64,
    /// The edge's own time for the frame, as it reports it (queueing, decoding, the
    /// tail); on a frame that fell back, the local tail's time.
    pub tail_ms: f64,
    /// How long the payload took to arrive at the edge, first packet to last, as the
    /// edge timed it (remote frames that got an answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge_receive_ms: Option<f64>,
    /// From capture to result.
    pub total_ms: f64,
    /// Why the frame ran elsewhere than planned, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// Why the policy chose this mode, when it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

impl FrameRecord {
    /// The record as one line of JSON, without the newline.
    pub fn to_json_line(&self) -> String {
        // Serialising plain structs of numbers and strings cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Writes records as JSON lines, one per frame.
#[derive(Debug)]
pub struct JsonLines<W: Write> {
    out: W,
}

impl<W: Write> JsonLines<W> {
    /// Writes to `out` (stdout, a file, a buffer).
    pub fn new(out: W) -> Self {
        Self { out }
    }

    /// Writes one record and a newline, and flushes so a reader sees it at once.
    pub fn write(&mut self, record: &FrameRecord) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.out, record)?;
        self.out.write_all(b"\n")?;
        self.out.flush()
    }

    /// Writes the summary as one line `{"summary": {...}}`.
    pub fn write_summary(&mut self, summary: &Summary) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.out, &SummaryLine { summary })?;
        self.out.write_all(b"\n")?;
        self.out.flush()
    }

    /// The writer back.
    pub fn into_inner(self) -> W {
        self.out
    }
}

#[derive(Serialize)]
struct SummaryLine<'a> {
    summary: &'a Summary,
}

/// p50, p95, p99, mean and max of a set of durations, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Arithmetic mean.
    pub mean: f64,
    /// Largest value.
    pub max: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `values` (in any order); all zero when empty.
    pub fn of(values: &[f32]) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        let mut v = values.to_vec();
        v.sort_by(f32::total_cmp);
        let rank = |p: f64| {
            // Nearest rank: the smallest value with at least p% of values at or below it.
            let r = ((p / 100.0) * v.len() as f64).ceil() as usize;
            f64::from(v[r.clamp(1, v.len()) - 1])
        };
        Self {
            p50: rank(50.0),
            p95: rank(95.0),
            p99: rank(99.0),
            mean: v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64,
            max: f64::from(v[v.len() - 1]),
        }
    }
}

/// The end-of-run summary (of a whole run, or of the frames of one mode).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Frames recorded.
    pub frames: u64,
    /// Frames that got a result.
    pub completed: u64,
    /// Frames that got none (see [`Outcome::Dropped`]).
    pub dropped: u64,
    /// Frames whose computation failed.
    pub failed: u64,
    /// Frames that ran elsewhere than planned (see [`FrameRecord::fallback`]).
    pub fallbacks: u64,
    /// Capture-to-result latency of the completed frames.
    pub latency_ms: Percentiles,
    /// Device-side time of the completed frames.
    pub head_ms: Percentiles,
    /// Network time of the completed frames.
    pub transfer_ms: Percentiles,
    /// Edge time of the completed frames.
    pub tail_ms: Percentiles,
    /// Mean bytes sent per frame (over all frames, local ones counting 0).
    pub bytes_per_frame: f64,
    /// Bytes sent in all.
    pub bytes_sent: u64,
    /// Frames per mode.
    pub modes: BTreeMap<Mode, u64>,
    /// Completed frames per second of run time, when the run time was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frames_per_s: Option<f64>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.latency_ms;
        write!(
            f,
            "{} frames ({} ok, {} dropped, {} failed, {} fallbacks); latency ms p50 {:.2} p95 {:.2} p99 {:.2}; {:.0} bytes/frame",
            self.frames, self.completed, self.dropped, self.failed, self.fallbacks, l.p50, l.p95, l.p99, self.bytes_per_frame
        )?;
        if let Some(fps) = self.frames_per_s {
            write!(f, "; {fps:.1} frames/s")?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug)]
struct Kept {
    mode: Mode,
    ok: bool,
    dropped: bool,
    fallback: bool,
    bytes: u64,
    /// total, head, transfer, tail.
    ms: [f32; 4],
}

/// Collects records during a run and summarises them.
#[derive(Clone, Debug, Default)]
pub struct RunStats {
    kept: Vec<Kept>,
}

impl RunStats {
    /// An empty collection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one frame.
    pub fn record(&mut self, r: &FrameRecord) {
        self.kept.push(Kept {
            mode: r.mode,
            ok: r.result.is_result(),
            dropped: matches!(r.result, Outcome::Dropped { .. }),
            fallback: r.fallback.is_some(),
            bytes: r.bytes_sent,
            ms: [
                r.total_ms as f32,
                r.head_ms as f32,
                r.transfer_ms as f32,
                r.tail_ms as f32,
            ],
        });
    }

    /// Frames recorded so far.
    pub fn len(&self) -> usize {
        self.kept.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// Summary of every frame; `elapsed` (the run's wall time) adds frames per second.
    pub fn summary(&self, elapsed: Option<Duration>) -> Summary {
        summarise(self.kept.iter(), elapsed)
    }

    /// Summary of the frames that ran in `mode`.
    pub fn summary_for(&self, mode: Mode, elapsed: Option<Duration>) -> Summary {
        summarise(self.kept.iter().filter(|k| k.mode == mode), elapsed)
    }
}

fn summarise<'a>(kept: impl Iterator<Item = &'a Kept>, elapsed: Option<Duration>) -> Summary {
    let mut s = Summary::default();
    let mut lat: [Vec<f32>; 4] = Default::default();
    for k in kept {
        s.frames += 1;
        s.bytes_sent += k.bytes;
        *s.modes.entry(k.mode).or_default() += 1;
        s.fallbacks += u64::from(k.fallback);
        if k.ok {
            s.completed += 1;
            for (v, &ms) in lat.iter_mut().zip(&k.ms) {
                v.push(ms);
            }
        } else if k.dropped {
            s.dropped += 1;
        } else {
            s.failed += 1;
        }
    }
    let [total, head, transfer, tail] = &lat;
    s.latency_ms = Percentiles::of(total);
    s.head_ms = Percentiles::of(head);
    s.transfer_ms = Percentiles::of(transfer);
    s.tail_ms = Percentiles::of(tail);
    if s.frames > 0 {
        s.bytes_per_frame = s.bytes_sent as f64 / s.frames as f64;
    }
    s.frames_per_s = elapsed
        .filter(|e| !e.is_zero())
        .map(|e| s.completed as f64 / e.as_secs_f64());
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, mode: Mode, total_ms: f64, bytes: u64) -> FrameRecord {
        FrameRecord {
            seq,
            mode,
            split: (mode == Mode::Split).then_some(4),
            result: Outcome::Classified {
                class: 3,
                score: 0.5,
            },
            bytes_sent: bytes,
            head_ms: total_ms / 2.0,
            preprocess_ms: None,
            encode_ms: None,
            transfer_ms: total_ms / 4.0,
            tail_ms: total_ms / 4.0,
            edge_receive_ms: None,
            total_ms,
            fallback: None,
            why: None,
        }
    }

    #[test]
    fn record_serialises_to_one_documented_line() {
        let mut r = rec(7, Mode::Split, 8.0, 9824);
        r.fallback = Some("edge unreachable".into());
        let line = r.to_json_line();
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["seq"], 7);
        assert_eq!(v["mode"], "split");
        assert_eq!(v["split"], 4);
        assert_eq!(v["result"]["status"], "classified");
        assert_eq!(v["result"]["class"], 3);
        assert_eq!(v["bytes_sent"], 9824);
        assert_eq!(v["total_ms"], 8.0);
        assert_eq!(v["fallback"], "edge unreachable");
        assert!(v.get("why").is_none(), "absent options are left out");
        let back: FrameRecord = serde_json::from_str(&line).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn local_record_has_no_split_field() {
        let line = rec(0, Mode::Local, 1.0, 0).to_json_line();
        assert!(!line.contains("split"), "{line}");
        assert!(line.contains(r#""mode":"local""#), "{line}");
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<f32> = (1..=100).rev().map(|x| x as f32).collect();
        let p = Percentiles::of(&v);
        assert_eq!((p.p50, p.p95, p.p99, p.max), (50.0, 95.0, 99.0, 100.0));
        assert!((p.mean - 50.5).abs() < 1e-9);
        let one = Percentiles::of(&[4.0]);
        assert_eq!((one.p50, one.p99), (4.0, 4.0));
        assert_eq!(Percentiles::of(&[]), Percentiles::default());
    }

    #[test]
    fn summary_counts_drops_and_fallbacks_and_excludes_them_from_latency() {
        let mut stats = RunStats::new();
        for i in 0..10 {
            stats.record(&rec(i, Mode::Split, 10.0 + i as f64, 1000));
        }
        let mut dropped = rec(10, Mode::Split, 500.0, 1000);
        dropped.result = Outcome::Dropped {
            reason: "deadline".into(),
        };
        stats.record(&dropped);
        let mut fell_back = rec(11, Mode::Local, 30.0, 0);
        fell_back.fallback = Some("edge closed the connection".into());
        stats.record(&fell_back);
        let mut failed = rec(12, Mode::Local, 1.0, 0);
        failed.result = Outcome::Failed {
            error: "boom".into(),
        };
        stats.record(&failed);

        let s = stats.summary(Some(Duration::from_secs(2)));
        assert_eq!(
            (s.frames, s.completed, s.dropped, s.failed, s.fallbacks),
            (13, 11, 1, 1, 1)
        );
        // Completed latencies: 10..=19 and 30; the 500 ms drop is not among them.
        assert_eq!(s.latency_ms.max, 30.0);
        assert_eq!(s.latency_ms.p50, 15.0);
        assert_eq!(s.bytes_sent, 11_000);
        assert!((s.bytes_per_frame - 11_000.0 / 13.0).abs() < 1e-9);
        assert_eq!(s.modes[&Mode::Split], 11);
        assert_eq!(s.modes[&Mode::Local], 2);
        assert_eq!(s.frames_per_s, Some(5.5));

        let split = stats.summary_for(Mode::Split, None);
        assert_eq!((split.frames, split.completed, split.dropped), (11, 10, 1));
        assert_eq!(split.latency_ms.max, 19.0);
        assert_eq!(split.frames_per_s, None);
        assert_eq!(stats.summary_for(Mode::Offload, None).frames, 0);
    }

    #[test]
    fn json_lines_writer_emits_records_then_summary() {
        let mut w = JsonLines::new(Vec::new());
        let mut stats = RunStats::new();
        for i in 0..3 {
            let r = rec(i, Mode::Offload, 5.0, 2000);
            w.write(&r).unwrap();
            stats.record(&r);
        }
        w.write_summary(&stats.summary(None)).unwrap();
        let text = String::from_utf8(w.into_inner()).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        let last: serde_json::Value = serde_json::from_str(lines[3]).unwrap();
        assert_eq!(last["summary"]["frames"], 3);
        assert_eq!(last["summary"]["latency_ms"]["p99"], 5.0);
        assert_eq!(last["summary"]["modes"]["offload"], 3);
        assert!(stats.summary(None).to_string().contains("p99 5.00"));
    }
}
