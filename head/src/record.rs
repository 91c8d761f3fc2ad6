//! A frame's timings as run-record stages (`--record FILE`; see
//! `splitstream_power::record`).
//!
//! The device already times each frame ([`FrameRecord`]); the record takes those
//! figures rather than timing twice. The device's spans are laid end to end from the
//! frame's start: `preprocess`, `head` (the head's own time, or the whole model when
//! local), `encode` (bottleneck codec or JPEG), `send` (the link's share of the round
//! trip) and `tail` (the edge's time as it reports it, or the local tail of a frame
//! that fell back). On the wire the edge's time lies inside the round trip; drawing it
//! after `send` keeps each frame one row of adjacent spans that sum to its total.

use std::time::Instant;

use splitstream_power::record::{Recorder, Stage};

use crate::stats::FrameRecord;

/// Writes one frame's stages to `rec`; `started` is when the frame's processing began.
/// Zero-length spans (no encode for a local frame, no link when nothing was sent) are
/// left out, and the frame is counted.
pub fn mark_frame(rec: &Recorder, started: Instant, frame: &FrameRecord) {
    let pre = frame.preprocess_ms.unwrap_or(0.0);
    let enc = frame.encode_ms.unwrap_or(0.0);
    let spans = [
        ("preprocess", pre),
        ("head", (frame.head_ms - pre - enc).max(0.0)),
        ("encode", enc),
        ("send", frame.transfer_ms),
        ("tail", frame.tail_ms),
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
