//! Encoders that write events in each binary format, following the published specs.
//! They make the spec-made test files (wrap-arounds, EVT 3.0 vector words, every
//! AEDAT flavour), the fuzzers' seeds, the benchmark's long files, and the DV stream
//! of the network-source test. Input events must be sorted by time.

use crate::flatbuf::build;
use crate::formats::aedat4::{description_for, Compression, MAGIC};
use crate::Event;

/// A Prophesee `%` header for `format` ("2.0", "2.1", "3.0") and the given size.
pub fn prophesee_header(version: &str, width: u16, height: u16) -> Vec<u8> {
    let name = match version {
        "2.0" => "EVT2",
        "2.1" => "EVT21",
        _ => "EVT3",
    };
    format!(
        "% camera_integrator_name splitstream\n% evt {version}\n% format {name};height={height};width={width}\n% geometry {width}x{height}\n% sensor_generation spec-made\n% end\n"
    )
    .into_bytes()
}

/// The EVT 3.0 decoder's time state, simulated so the encoder writes exactly the
/// words that make the decoder arrive at each event's time.
struct Evt3Clock {
    base: i64,
    high: u16,
    low: u16,
}

impl Evt3Clock {
    fn value(&self) -> i64 {
        self.base + (i64::from(self.high) << 12 | i64::from(self.low))
    }

    fn set_low(&mut self, w: &mut Vec<u16>, low: u16) {
        if low < self.low {
            self.base += 1 << 12;
        }
        self.low = low;
        w.push(0x6000 | low);
    }

    fn set_high(&mut self, w: &mut Vec<u16>, high: u16) {
        if high < self.high {
            self.base += 1 << 24;
        }
        self.high = high;
        w.push(0x8000 | high);
    }

    /// Moves the clock to `t` (not below its value).
    fn advance(&mut self, w: &mut Vec<u16>, t: i64) {
        while t - self.base >= 1 << 24 {
            if t - self.base >= (1 << 24) + (3 << 12) {
                // A 24-bit wrap: low to 0 (a low wrap, +4096), then a lower high word.
                if self.low > 0 {
                    self.set_low(w, 0);
                }
                if self.high == 0 {
                    self.set_high(w, 1);
                }
                self.set_high(w, 0);
            } else {
                // Within 3 steps of the wrap: step by low wraps (+4096 each).
                if self.low == 0 {
                    self.set_low(w, 1);
                }
                self.set_low(w, 0);
            }
        }
        let r = t - self.base;
        let (high, low) = ((r >> 12) as u16, (r & 0xFFF) as u16);
        if high == self.high {
            self.set_low(w, low);
        } else if low >= self.low {
            self.set_high(w, high);
            self.set_low(w, low);
        } else {
            // The low word will wrap (+4096): aim the high word one step lower.
            self.set_high(w, high - 1);
            self.set_low(w, low);
        }
        debug_assert_eq!(self.value(), t);
    }
}

/// EVT 3.0 words (no header). Runs of events at the same time, row and polarity
/// whose columns fall within 12 of a base become `VECT_BASE_X` + `VECT_12` / `VECT_8`
/// words; others are single `EVT_ADDR_X`. Time words are chosen so the decoder's
/// unrolling (24-bit wraps, low-part wraps) lands on each event's time exactly.
/// Times must be non-negative and sorted.
pub fn evt3(events: &[Event]) -> Vec<u16> {
    let mut w: Vec<u16> = Vec::with_capacity(events.len() * 2);
    let mut clock = Evt3Clock {
        base: 0,
        high: 0,
        low: 0,
    };
    let mut started = false;
    let mut cur_y: Option<u16> = None;
    let mut i = 0;
    while i < events.len() {
        let e = events[i];
        if !started || clock.value() != e.t {
            if !started {
                // Start the decoder's clock from zero explicitly.
                w.push(0x8000);
                w.push(0x6000);
                started = true;
            }
            clock.advance(&mut w, e.t.max(clock.value()));
        }
        if cur_y != Some(e.y) {
            w.push(e.y & 0x7FF);
            cur_y = Some(e.y);
        }
        // Gather a run: same t, y, p, strictly increasing x within a 12-column span.
        let mut j = i + 1;
        while j < events.len() {
            let f = events[j];
            if f.t != e.t || f.y != e.y || f.p != e.p || f.x <= events[j - 1].x || f.x - e.x >= 12 {
                break;
            }
            j += 1;
        }
        if j - i == 1 {
            w.push(0x2000 | (u16::from(e.p) << 11) | (e.x & 0x7FF));
        } else {
            w.push(0x3000 | (u16::from(e.p) << 11) | (e.x & 0x7FF));
            let mask = events[i..j].iter().fold(0u16, |m, f| m | 1 << (f.x - e.x));
            if mask >> 8 == 0 {
                w.push(0x5000 | mask);
            } else {
                w.push(0x4000 | mask);
            }
        }
        i = j;
    }
    w
}

/// [`evt3`] as little-endian bytes, as a `.raw` file stores them.
pub fn evt3_bytes(events: &[Event]) -> Vec<u8> {
    evt3(events).iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// EVT 2.0 words (no header): an `EVT_TIME_HIGH` whenever bits 6..33 of the time
/// change, then one CD word per event. Times are modulo 2^34.
pub fn evt2(events: &[Event]) -> Vec<u8> {
    let mut out = Vec::with_capacity(events.len() * 4 + 64);
    let mut high = None;
    for e in events {
        let h = ((e.t as u64) >> 6) & 0x0FFF_FFFF;
        if high != Some(h) {
            out.extend_from_slice(&(0x8000_0000u32 | h as u32).to_le_bytes());
            high = Some(h);
        }
        let word = (u32::from(e.p) << 28)
            | (((e.t as u32) & 0x3F) << 22)
            | (u32::from(e.x & 0x7FF) << 11)
            | u32::from(e.y & 0x7FF);
        out.extend_from_slice(&word.to_le_bytes());
    }
    out
}

/// EVT 2.1 words (no header): events at the same time, row and polarity in one
/// 32-column block share a word with a validity mask.
pub fn evt21(events: &[Event]) -> Vec<u8> {
    let mut out = Vec::with_capacity(events.len() * 8 + 64);
    let mut high = None;
    let mut i = 0;
    while i < events.len() {
        let e = events[i];
        let h = ((e.t as u64) >> 6) & 0x0FFF_FFFF;
        if high != Some(h) {
            out.extend_from_slice(&(0x8000_0000u32 | h as u32).to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
            high = Some(h);
        }
        let base = e.x & !31;
        let mut mask = 0u32;
        let mut j = i;
        while j < events.len() {
            let f = events[j];
            if f.t != e.t
                || f.y != e.y
                || f.p != e.p
                || f.x & !31 != base
                || mask & (1 << (f.x - base)) != 0
            {
                break;
            }
            mask |= 1 << (f.x - base);
            j += 1;
        }
        let hi = (u32::from(e.p) << 28)
            | (((e.t as u32) & 0x3F) << 22)
            | (u32::from(base & 0x7FF) << 11)
            | u32::from(e.y & 0x7FF);
        out.extend_from_slice(&hi.to_le_bytes());
        out.extend_from_slice(&mask.to_le_bytes());
        i = j;
    }
    out
}

/// An AEDAT 2.0 DVS128 file: header lines, then big-endian records; times modulo
/// 2^32. x, y must be below 128.
pub fn aedat2_dvs128(events: &[Event]) -> Vec<u8> {
    let mut out = b"#!AER-DAT2.0\r\n# This is a raw AE data file created by splitstream\r\n# AEChip: ch.unizh.ini.jaer.chip.retina.DVS128\r\n".to_vec();
    for e in events {
        let addr =
            (u32::from(e.y & 0x7F) << 8) | (u32::from(127 - (e.x & 0x7F)) << 1) | u32::from(!e.p);
        out.extend_from_slice(&addr.to_be_bytes());
        out.extend_from_slice(&(e.t as u32).to_be_bytes());
    }
    out
}

/// An AEDAT 3.1 file of polarity packets of at most `per_packet` events, with a
/// `Source 1: DVS128`-style header naming `source`. Times use the packet's overflow
/// counter (bits 31 and up) as cAER does.
pub fn aedat31(events: &[Event], source: &str, per_packet: usize) -> Vec<u8> {
    let mut out = format!("#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: {source}\r\n#Start-Time: 2026-01-01 00:00:00 (TZ+0000)\r\n#!END-HEADER\r\n").into_bytes();
    let mut i = 0;
    while i < events.len() {
        let overflow = events[i].t >> 31;
        let n = events[i..]
            .iter()
            .take(per_packet.max(1))
            .take_while(|e| e.t >> 31 == overflow)
            .count();
        for v in [1i16, 1] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for v in [8i32, 4, overflow as i32, n as i32, n as i32, n as i32] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for e in &events[i..i + n] {
            let data = (u32::from(e.x) << 17) | (u32::from(e.y) << 2) | (u32::from(e.p) << 1) | 1;
            out.extend_from_slice(&data.to_le_bytes());
            out.extend_from_slice(&((e.t & 0x7FFF_FFFF) as i32).to_le_bytes());
        }
        i += n;
    }
    out
}

/// Compresses one packet as iniVation's writer does.
fn compress(plain: &[u8], compression: Compression) -> Vec<u8> {
    match compression {
        Compression::None => plain.to_vec(),
        Compression::Lz4 => {
            use std::io::Write;
            let mut enc = lz4_flex::frame::FrameEncoder::new(Vec::new());
            // Writing to a Vec cannot fail.
            let _ = enc.write_all(plain);
            enc.finish().unwrap_or_default()
        }
        Compression::Zstd => zstd::bulk::compress(plain, 3).unwrap_or_default(),
    }
}

/// An AEDAT 4.0 stream of one event stream (id 0), `per_packet` events a packet.
/// With `file` it starts with the version line (a `.aedat4` file); without, it is what
/// DV's network output sends a client.
pub fn aedat4(
    events: &[Event],
    width: u16,
    height: u16,
    compression: Compression,
    per_packet: usize,
    file: bool,
) -> Vec<u8> {
    let mut out = Vec::new();
    if file {
        out.extend_from_slice(MAGIC);
    }
    let header = build::io_header(
        compression.code(),
        -1,
        &description_for(width, height, compression, "splitstream"),
    );
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    for chunk in events.chunks(per_packet.max(1)) {
        out.extend_from_slice(&aedat4_packet(chunk, compression));
    }
    out
}

/// One AEDAT 4 event packet with its 8-byte packet header (stream 0).
pub fn aedat4_packet(events: &[Event], compression: Compression) -> Vec<u8> {
    let body = compress(&build::event_packet(events), compression);
    let mut out = Vec::with_capacity(body.len() + 8);
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// An N-MNIST `.bin`: overflow records (y = 240) keep each 23-bit timestamp in range.
/// x, y must be below 256 and y must not be 240.
pub fn nbin(events: &[Event]) -> Vec<u8> {
    let mut out = Vec::with_capacity(events.len() * 5);
    let mut offset = 0i64;
    for e in events {
        while e.t - offset >= 1 << 23 {
            out.extend_from_slice(&[0, crate::formats::nbin::OVERFLOW_Y, 0, 0, 0]);
            offset += crate::formats::nbin::OVERFLOW_STEP;
        }
        let ts = (e.t - offset) as u32;
        out.extend_from_slice(&[
            e.x as u8,
            e.y as u8,
            (u8::from(e.p) << 7) | ((ts >> 16) & 0x7F) as u8,
            (ts >> 8) as u8,
            ts as u8,
        ]);
    }
    out
}
