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
