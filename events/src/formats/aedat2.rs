//! jAER's AEDAT 2.0: `#`-prefixed text header lines (the first is `#!AER-DAT2.0`),
//! then 8-byte records, big-endian: `u32 address`, `u32 timestamp` (microseconds,
//! wrapping every 71.6 minutes; unrolled here).
//!
//! The address layout depends on the sensor, which the header names (`AEChip` or
//! `HardwareInterface` lines):
//! - DVS128 (the default): bit 0 polarity (0 = ON), bits 1..7 x (mirrored: the sensor
//!   reads right to left, so x = 127 - field), bits 8..14 y;
//! - DAVIS chips: bit 31 set marks APS/IMU samples (skipped), bits 12..21 x,
//!   bits 22..30 y, bit 11 polarity (1 = ON).

use std::io::Read;

use crate::window::{truncated, ByteWindow, ChunkDecoder};
use crate::{Event, Format, OpenError, ReadError, StreamInfo};

/// Which address layout the records use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// DVS128 (Tmpdiff128): 128x128.
    Dvs128,
    /// DAVIS240/346/640: 10-bit x, 9-bit y, bit 31 set for non-DVS samples.
    Davis,
}

pub(crate) fn read_header<R: Read>(
    win: &mut ByteWindow<R>,
) -> Result<(StreamInfo, Layout), OpenError> {
    let mut info = StreamInfo::new(Format::Aedat2);
    let io = |e: std::io::Error| OpenError::BadHeader {
        format: Format::Aedat2,
        reason: e.to_string(),
    };
    let mut chip = String::new();
    for _ in 0..4096 {
        if !win.fill_to(1).map_err(io)? || win.data().first() != Some(&b'#') {
            break;
        }
        let Some(line) = win.read_line(4096).map_err(io)? else {
            break;
        };
        let line = String::from_utf8_lossy(&line).trim().to_string();
        let body = line.trim_start_matches('#').trim();
        if let Some((k, v)) = body.split_once(':') {
            let (k, v) = (k.trim(), v.trim());
            if k.contains("AEChip") || k.contains("HardwareInterface") {
                chip = v.to_string();
            }
            info.metadata.push((k.to_string(), v.to_string()));
        }
    }
    let upper = chip.to_ascii_uppercase();
    let (layout, res) = if upper.contains("DAVIS346") {
        (Layout::Davis, (346, 260))
    } else if upper.contains("DAVIS640") {
        (Layout::Davis, (640, 480))
    } else if upper.contains("DAVIS") {
        (Layout::Davis, (240, 180))
    } else {
        (Layout::Dvs128, (128, 128))
    };
    info.width = Some(res.0);
    info.height = Some(res.1);
    info.sensor = Some(if chip.is_empty() {
        "DVS128 (assumed: no AEChip line)".to_string()
    } else {
        chip
    });
    Ok((info, layout))
}

/// AEDAT 2.0 record decoder.
pub(crate) struct Aedat2Decoder {
    layout: Layout,
    last: u32,
    wraps: i64,
}

impl Aedat2Decoder {
    pub(crate) fn new(layout: Layout) -> Self {
        Self {
            layout,
            last: 0,
            wraps: 0,
        }
    }
}

impl ChunkDecoder for Aedat2Decoder {
    fn decode(
        &mut self,
        input: &[u8],
        _offset: u64,
        out: &mut Vec<Event>,
        limit: usize,
    ) -> Result<usize, ReadError> {
        let mut used = 0;
        for r in input.chunks_exact(8) {
            if out.len() >= limit {
                break;
            }
            used += 8;
            let addr = u32::from_be_bytes([r[0], r[1], r[2], r[3]]);
            let ts = u32::from_be_bytes([r[4], r[5], r[6], r[7]]);
            if ts < self.last {
                self.wraps += 1 << 32;
            }
            self.last = ts;
            let t = self.wraps + i64::from(ts);
            match self.layout {
                Layout::Dvs128 => out.push(Event {
                    t,
                    x: 127 - ((addr >> 1) & 0x7F) as u16,
                    y: ((addr >> 8) & 0x7F) as u16,
                    p: addr & 1 == 0,
                }),
                Layout::Davis => {
                    if addr >> 31 == 0 {
                        out.push(Event {
                            t,
                            x: ((addr >> 12) & 0x3FF) as u16,
                            y: ((addr >> 22) & 0x1FF) as u16,
                            p: (addr >> 11) & 1 == 1,
                        });
                    }
                }
            }
        }
        Ok(used)
    }

    fn finish(&mut self, leftover: &[u8], _out: &mut Vec<Event>) -> Result<(), ReadError> {
        truncated(Format::Aedat2, "8-byte record", leftover)
    }
}
