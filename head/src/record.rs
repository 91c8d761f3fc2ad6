//! A frame's timings as run-record stages (`--record FILE`; see
//! `splitstream_power::record`).
//!
//! The device already times each frame ([`FrameRecord`]); the record takes those
//! figures rather than timing twice. The device's spans are laid end to end from the
//! frame's start: `preprocess`, `head` (the head's own time, or the whole model when
//! local), `encode` (bottleneck codec or JPEG), `send` (the link's share of the round
//! trip), then `edge` (the edge's own time for the frame as it reports it: its queue,
//! decode and tail; the edge's record splits it into `decode` and `tail`) or `tail`
//! (the local tail of a frame that fell back). On the wire the edge's time lies inside
//! the round trip; drawing it after `send` keeps each frame one row of adjacent spans
//! that sum to its total.

use std::time::Instant;

use splitstream_power::record::{Recorder, Stage};

use crate::stats::{FrameRecord, Mode};

/// Writes one frame's stages to `rec`; `started` is when the frame's processing began.
/// Zero-length spans (no encode for a local frame, no link when nothing was sent) are
/// left out, and the frame is counted.
pub fn mark_frame(rec: &Recorder, started: Instant, frame: &FrameRecord) {
    let pre = frame.preprocess_ms.unwrap_or(0.0);
    let enc = frame.encode_ms.unwrap_or(0.0);
    // A frame the edge answered is remote; one that fell back (or ran locally) has
    // its tail here.
    let remote = frame.mode != Mode::Local;
    let spans = [
        ("preprocess", pre),
        // An offloaded frame runs no head: its head_ms is preprocessing and the JPEG.
        (
            "head",
            if frame.mode == Mode::Offload {
                0.0
            } else {
                (frame.head_ms - pre - enc).max(0.0)
            },
        ),
        ("encode", enc),
        ("send", frame.transfer_ms),
        (if remote { "edge" } else { "tail" }, frame.tail_ms),
    ];
    let mut t = rec.seconds(started);
    for (name, ms) in spans {
        if ms > 0.0 {
            let mut s = Stage::new(name, t, ms);
            s.frame = Some(frame.seq);
            rec.stage_line(s);
        }
        t += ms / 1e3;
    }
    rec.frames(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Outcome;
    use splitstream_power::record::{read, PowerChoice, RecordOptions};

    fn frame(seq: u64, mode: Mode) -> FrameRecord {
        FrameRecord {
            seq,
            mode,
            split: None,
            result: Outcome::Classified {
                class: 0,
                score: 1.0,
            },
            bytes_sent: 0,
            head_ms: 10.0,
            preprocess_ms: Some(1.0),
            encode_ms: Some(2.0),
            transfer_ms: 3.0,
            tail_ms: 4.0,
            edge_receive_ms: None,
            total_ms: 17.0,
            fallback: None,
            why: None,
        }
    }

    #[test]
    fn a_frame_becomes_adjacent_spans_named_by_where_they_ran() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        let opts = RecordOptions {
            power: PowerChoice::Spec("const:1".into()),
            sys_root: dir.path().to_owned(),
            ..RecordOptions::default()
        };
        let rec = Recorder::create(&path, opts).unwrap();
        let t0 = Instant::now();
        mark_frame(&rec, t0, &frame(0, Mode::Split));
        mark_frame(&rec, t0, &frame(1, Mode::Offload));
        let mut local = frame(2, Mode::Local);
        local.encode_ms = None;
        local.transfer_ms = 0.0;
        mark_frame(&rec, t0, &local);
        assert_eq!(rec.finish().unwrap().frames, 3);
        let run = read(&path).unwrap();
        let of = |f: u64| -> Vec<(String, f64)> {
            run.stages
                .iter()
                .filter(|s| s.frame == Some(f))
                .map(|s| (s.name.clone(), s.ms))
                .collect()
        };
        let names = |f: u64| of(f).into_iter().map(|(n, _)| n).collect::<Vec<_>>();
        assert_eq!(names(0), ["preprocess", "head", "encode", "send", "edge"]);
        assert_eq!(of(0)[1].1, 7.0, "head less preprocess and encode");
        assert_eq!(
            names(1),
            ["preprocess", "encode", "send", "edge"],
            "no head"
        );
        assert_eq!(names(2), ["preprocess", "head", "tail"]);
        let spans: Vec<_> = run.stages.iter().filter(|s| s.frame == Some(0)).collect();
        for w in spans.windows(2) {
            assert!((w[1].t_s - (w[0].t_s + w[0].ms / 1e3)).abs() < 1e-9);
        }
    }
}
