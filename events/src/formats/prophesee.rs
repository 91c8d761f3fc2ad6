//! Prophesee `.raw` recordings: a `%` text header, then EVT 2.0, EVT 2.1 or EVT 3.0
//! words, little-endian.
//!
//! - EVT 2.0: 32-bit words; the top 4 bits are the type. CD events carry the 6 low bits
//!   of a 34-bit microsecond timestamp, `EVT_TIME_HIGH` the 28 high bits.
//! - EVT 2.1: 64-bit words sent as two little-endian 32-bit halves, high half first;
//!   a CD word addresses 32 pixels of a row (x aligned on 32) with a validity mask.
//! - EVT 3.0: 16-bit words that only carry what changed: `EVT_ADDR_Y` sets the row,
//!   `EVT_ADDR_X` is one event, `VECT_BASE_X` + `VECT_12`/`VECT_8` are runs of pixels
//!   from a base column; `EVT_TIME_LOW`/`EVT_TIME_HIGH` hold the two 12-bit halves of a
//!   24-bit time base that wraps every 16.8 s.
//!
//! Timestamps are unrolled: when the high part goes backwards the counter wrapped, and
//! one full period is added, so `t` grows monotonically over hours.

use std::hint::select_unpredictable;
use std::io::Read;

use crate::window::{truncated, ByteWindow, ChunkDecoder};
use crate::{Event, Format, OpenError, ReadError, StreamInfo};

/// The longest header line accepted, and the most header lines.
const MAX_HEADER_LINE: usize = 4096;
const MAX_HEADER_LINES: usize = 4096;

/// Reads the `%` header from the window. The format comes from `% evt X.Y` or
/// `% format EVTn;...`; the resolution from `% format ...;width=;height=`,
/// `% geometry WxH`, `% Width`/`% Height`, or else the sensor generation.
pub(crate) fn read_header<R: Read>(win: &mut ByteWindow<R>) -> Result<StreamInfo, OpenError> {
    let mut info = StreamInfo::new(Format::Evt3);
    let mut format = None;
    let mut generation: Option<String> = None;
    let io = |e: std::io::Error| OpenError::BadHeader {
        format: Format::Evt3,
        reason: e.to_string(),
    };
    for _ in 0..MAX_HEADER_LINES {
        if !win.fill_to(1).map_err(io)? || win.data().first() != Some(&b'%') {
            break;
        }
        let Some(line) = win.read_line(MAX_HEADER_LINE).map_err(io)? else {
            break;
        };
        let line = String::from_utf8_lossy(&line);
        let body = line.trim_start_matches('%').trim();
        if body == "end" {
            break;
        }
        let (key, value) = body.split_once(' ').unwrap_or((body, ""));
        let value = value.trim();
        match key {
            "evt" => format = parse_evt_version(value),
            "format" => {
                let mut parts = value.split(';');
                if let Some(name) = parts.next() {
                    format = parse_evt_version(name).or(format);
                }
                for part in parts {
                    match part.split_once('=') {
                        Some(("width", w)) => info.width = w.trim().parse().ok(),
                        Some(("height", h)) => info.height = h.trim().parse().ok(),
                        _ => {}
                    }
                }
            }
            "geometry" => {
                if let Some((w, h)) = value.split_once('x') {
                    info.width = w.trim().parse().ok();
                    info.height = h.trim().parse().ok();
                }
            }
            "Width" | "width" => info.width = value.parse().ok(),
            "Height" | "height" => info.height = value.parse().ok(),
            "sensor_generation" => generation = Some(value.to_string()),
            "plugin_name" if generation.is_none() => generation = Some(value.to_string()),
            _ => {}
        }
        info.metadata.push((key.to_string(), value.to_string()));
    }
    let Some(format) = format else {
        return Err(OpenError::BadHeader {
            format: Format::Evt3,
            reason: "no `% evt 2.0|2.1|3.0` or `% format EVT...` line says which encoding follows; pass the format explicitly".into(),
        });
    };
    info.format = format;
    if let Some(gen) = generation {
        if info.width.is_none() || info.height.is_none() {
            if let Some((w, h)) = resolution_of_generation(&gen) {
                info.width = Some(w);
                info.height = Some(h);
            }
        }
        info.sensor = Some(gen);
    }
    Ok(info)
}

fn parse_evt_version(s: &str) -> Option<Format> {
    match s
        .trim()
        .to_ascii_uppercase()
        .trim_start_matches("EVT")
        .trim()
    {
        "2.0" | "2" => Some(Format::Evt2),
        "2.1" | "21" => Some(Format::Evt21),
        "3.0" | "3" => Some(Format::Evt3),
        _ => None,
    }
}

/// Older headers name only the sensor; these are Prophesee's sensor sizes.
fn resolution_of_generation(gen: &str) -> Option<(u16, u16)> {
    let g = gen.to_ascii_lowercase();
    if g.contains("imx636")
        || g.contains("gen41")
        || g.contains("gen4.1")
        || g == "4.1"
        || g.contains("imx646")
    {
        Some((1280, 720))
    } else if g.contains("genx320") || g.contains("320") {
        Some((320, 320))
    } else if g.contains("gen31") || g.contains("gen3") || g == "3.1" || g == "3.0" || g == "3" {
        Some((640, 480))
    } else if g.contains("gen4") || g == "4.0" || g == "4" {
        Some((1280, 720))
    } else {
        None
    }
}

/// Events a decoder stages before appending them to the caller's batch. The staging
/// buffer is written unconditionally for every word (a word that is not an event is
/// overwritten by the next), which turns the per-word branch on the word type into
/// arithmetic; 16 KiB stays in L1 and is appended with one copy per block of words.
/// A power of two: indices are masked with `STAGE - 1`, which proves them in bounds
/// to the compiler (they always are) and drops the bounds check from the inner loop.
const STAGE: usize = 1024;

/// The most events one EVT 3.0 word makes (a `VECT_12` word with every bit set).
const MAX_PER_EVT3_WORD: usize = 12;

/// A fixed staging buffer, allocated once per reader.
type Stage = Box<[Event; STAGE]>;

fn new_stage() -> Stage {
    Box::new([Event::default(); STAGE])
}

/// How many words to decode into an empty staging buffer before appending it to `out`:
/// as many as cannot overflow it, and no more than the caller's `limit` can take in
/// the worst case (at least one word while `out` is below the limit, none after).
fn block_words(out: &[Event], limit: usize, per_word: usize, words_left: usize) -> usize {
    let left = limit.saturating_sub(out.len());
    if left == 0 {
        return 0;
    }
    (left.min(STAGE) / per_word).max(1).min(words_left)
}

/// EVT 3.0 decoder state: the last row, base column, polarity and time base.
///
/// The time is `base + (high << 12 | low)`. A `EVT_TIME_HIGH` below the previous one
/// is the 24-bit wrap (16.8 s): `base` grows by 2^24. A `EVT_TIME_LOW` below the
/// previous one means the low part wrapped: `base` grows by 4096. The second rule is
/// what the reference decoding of the Gen4.1 sample does (its firmware repeats one
/// `EVT_TIME_HIGH` value for many low-part cycles); the test on that recording holds
/// this decoder to it event for event.
pub(crate) struct Evt3Decoder {
    y: u16,
    base_x: u16,
    p: bool,
    high: u32,
    low: u32,
    base: i64,
    t: i64,
    stage: Stage,
}

impl Evt3Decoder {
    pub(crate) fn new() -> Self {
        Self {
            y: 0,
            base_x: 0,
            p: false,
            high: 0,
            low: 0,
            base: 0,
            t: 0,
            stage: new_stage(),
        }
    }
}

impl ChunkDecoder for Evt3Decoder {
    fn decode(
        &mut self,
        input: &[u8],
        _offset: u64,
        out: &mut Vec<Event>,
        limit: usize,
    ) -> Result<usize, ReadError> {
        // The state lives in locals (registers) for the loop and is stored back once.
        let (mut y, mut base_x, mut p, mut t) = (self.y, self.base_x, self.p, self.t);
        let (mut high, mut low, mut base) = (self.high, self.low, self.base);
        let stage = &mut *self.stage;
        let words = input.len() / 2;
        // One allocation for the batch, not a doubling per block (an EVT 3.0 word
        // makes 0.7-1 events in real recordings; vectors may need one more growth).
        out.reserve(limit.saturating_sub(out.len()).min(words));
        let mut done = 0;
        loop {
            let block = block_words(out, limit, MAX_PER_EVT3_WORD, words - done);
            if block == 0 {
                break;
            }
            let mut n = 0;
            let (words_here, _) = input[2 * done..2 * (done + block)].as_chunks::<2>();
            for w in words_here {
                let word = u16::from_le_bytes(*w);
                let payload = word & 0x0FFF;
                let kind = word >> 12;
                // EVT_ADDR_X, most words of a busy scene: staged always, kept if it is one.
                stage[n & (STAGE - 1)] = Event {
                    t,
                    x: payload & 0x07FF,
                    y,
                    p: payload & 0x0800 != 0,
                };
                n += usize::from(kind == 0x2);
                // EVT_ADDR_Y and VECT_BASE_X as conditional moves, not branches: the
                // word types interleave too irregularly for a branch predictor.
                let is_base = kind == 0x3;
                y = select_unpredictable(kind == 0x0, payload & 0x07FF, y);
                base_x = select_unpredictable(is_base, payload & 0x07FF, base_x);
                p = select_unpredictable(is_base, payload & 0x0800 != 0, p);
                if kind < 0x4 {
                    continue;
                }
                match kind {
                    0x4 | 0x5 => {
                        let (mut mask, width) = if kind == 0x4 {
                            (payload, 12)
                        } else {
                            (payload & 0xFF, 8)
                        };
                        while mask != 0 {
                            let i = mask.trailing_zeros() as u16;
                            stage[n & (STAGE - 1)] = Event {
                                t,
                                x: base_x.wrapping_add(i),
                                y,
                                p,
                            };
                            n += 1;
                            mask &= mask - 1;
                        }
                        base_x = base_x.wrapping_add(width);
                    }
                    0x6 => {
                        let l = u32::from(payload);
                        if l < low {
                            base += 1 << 12;
                        }
                        low = l;
                        t = base + i64::from((high << 12) | low);
                    }
                    0x8 => {
                        let h = u32::from(payload);
                        if h < high {
                            base += 1 << 24;
                        }
                        high = h;
                        t = base + i64::from((high << 12) | low);
                    }
                    // EXT_TRIGGER, OTHERS, CONTINUED_4/12 carry no CD events.
                    _ => {}
                }
            }
            out.extend_from_slice(&stage[..n]);
            done += block;
        }
        (self.y, self.base_x, self.p, self.t) = (y, base_x, p, t);
        (self.high, self.low, self.base) = (high, low, base);
        Ok(2 * done)
    }

    fn finish(&mut self, leftover: &[u8], _out: &mut Vec<Event>) -> Result<(), ReadError> {
        truncated(Format::Evt3, "16-bit word", leftover)
    }
}

/// EVT 2.0 words checked at once for being all CD events.
const CD_GROUP: usize = 16;

/// An EVT 2.0 `CD_OFF`/`CD_ON` word's event, `base` being the time of its 64 us slot.
#[inline(always)]
fn cd_event(base: i64, word: u32) -> Event {
    Event {
        t: base + i64::from((word >> 22) & 0x3F),
        x: ((word >> 11) & 0x7FF) as u16,
        y: (word & 0x7FF) as u16,
        p: word >> 28 == 0x1,
    }
}

/// EVT 2.0 decoder state: the 28 high bits of the time and the wrap count.
#[derive(Default)]
pub(crate) struct Evt2Decoder {
    high: u64,
    wraps: i64,
}

impl Evt2Decoder {
    pub(crate) fn new() -> Self {
        Self::default()
    }
}

impl ChunkDecoder for Evt2Decoder {
    fn decode(
        &mut self,
        input: &[u8],
        _offset: u64,
        out: &mut Vec<Event>,
        limit: usize,
    ) -> Result<usize, ReadError> {
        let (mut high, mut wraps) = (self.high, self.wraps);
        let mut base = wraps + ((high << 6) as i64);
        let words = input.len() / 4;
        out.reserve(limit.saturating_sub(out.len()).min(words));
        let mut done = 0;
        loop {
            let block = block_words(out, limit, 1, words - done);
            if block == 0 {
                break;
            }
            // Groups of 16 words that are all CD events (most of a busy recording:
            // EVT_TIME_HIGH comes once per 64 us) go in one exact-size `extend`, with
            // no per-event type check; a group holding another word goes word by word.
            let (mut rest, _) = input[4 * done..4 * (done + block)].as_chunks::<4>();
            while !rest.is_empty() {
                if let Some((group, after)) = rest.split_first_chunk::<CD_GROUP>() {
                    // Whole words ORed (SIMD-friendly); CD types are 0x0 and 0x1.
                    let any = group.iter().fold(0, |acc, w| acc | u32::from_le_bytes(*w));
                    if any >> 29 == 0 {
                        out.extend(group.iter().map(|w| cd_event(base, u32::from_le_bytes(*w))));
                        rest = after;
                        continue;
                    }
                }
                let Some((w, after)) = rest.split_first() else {
                    break;
                };
                rest = after;
                let word = u32::from_le_bytes(*w);
                match word >> 28 {
                    0x0 | 0x1 => out.push(cd_event(base, word)),
                    0x8 => {
                        let h = u64::from(word & 0x0FFF_FFFF);
                        if h < high {
                            wraps += 1 << 34;
                        }
                        high = h;
                        base = wraps + ((high << 6) as i64);
                    }
                    // EXT_TRIGGER and OTHERS carry no CD events.
                    _ => {}
                }
            }
            done += block;
        }
        (self.high, self.wraps) = (high, wraps);
        Ok(4 * done)
    }

    fn finish(&mut self, leftover: &[u8], _out: &mut Vec<Event>) -> Result<(), ReadError> {
        truncated(Format::Evt2, "32-bit word", leftover)
    }
}

/// The most events one EVT 2.1 word makes (all 32 bits of its mask set).
const MAX_PER_EVT21_WORD: usize = 32;

/// EVT 2.1 decoder state: as EVT 2.0, with 32-pixel vectors.
pub(crate) struct Evt21Decoder {
    high: u64,
    wraps: i64,
    stage: Stage,
}

impl Evt21Decoder {
    pub(crate) fn new() -> Self {
        Self {
            high: 0,
            wraps: 0,
            stage: new_stage(),
        }
    }
}

impl ChunkDecoder for Evt21Decoder {
    fn decode(
        &mut self,
        input: &[u8],
        _offset: u64,
        out: &mut Vec<Event>,
        limit: usize,
    ) -> Result<usize, ReadError> {
        let (mut high, mut wraps) = (self.high, self.wraps);
        let mut base = wraps + ((high << 6) as i64);
        let stage = &mut *self.stage;
        let words = input.len() / 8;
        out.reserve(limit.saturating_sub(out.len()).min(words));
        let mut done = 0;
        loop {
            let block = block_words(out, limit, MAX_PER_EVT21_WORD, words - done);
            if block == 0 {
                break;
            }
            let mut n = 0;
            let (words_here, _) = input[8 * done..8 * (done + block)].as_chunks::<8>();
            for w in words_here {
                // The high half of the 64-bit word comes first (as the IMX636 sends it).
                let [h0, h1, h2, h3, l0, l1, l2, l3] = *w;
                let hi = u32::from_le_bytes([h0, h1, h2, h3]);
                let lo = u32::from_le_bytes([l0, l1, l2, l3]);
                match hi >> 28 {
                    kind @ (0x0 | 0x1) => {
                        let t = base + i64::from((hi >> 22) & 0x3F);
                        let x = ((hi >> 11) & 0x7FF) as u16;
                        let y = (hi & 0x7FF) as u16;
                        let mut mask = lo;
                        while mask != 0 {
                            let i = mask.trailing_zeros() as u16;
                            stage[n & (STAGE - 1)] = Event {
                                t,
                                x: x.wrapping_add(i),
                                y,
                                p: kind == 0x1,
                            };
                            n += 1;
                            mask &= mask - 1;
                        }
                    }
                    0x8 => {
                        let h = u64::from(hi & 0x0FFF_FFFF);
                        if h < high {
                            wraps += 1 << 34;
                        }
                        high = h;
                        base = wraps + ((high << 6) as i64);
                    }
                    _ => {}
                }
            }
            out.extend_from_slice(&stage[..n]);
            done += block;
        }
        (self.high, self.wraps) = (high, wraps);
        Ok(8 * done)
    }

    fn finish(&mut self, leftover: &[u8], _out: &mut Vec<Event>) -> Result<(), ReadError> {
        truncated(Format::Evt21, "64-bit word", leftover)
    }
}
