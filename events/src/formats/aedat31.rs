//! cAER's AEDAT 3.1: `#`-prefixed header lines from `#!AER-DAT3.1` to
//! `#!END-HEADER`, then packets, little-endian. Each packet has a 28-byte header
//! (`i16 type, i16 source, i32 event size, i32 ts offset, i32 ts overflow,
//! i32 capacity, i32 count, i32 valid count`) and `count` events of `event size`
//! bytes. Polarity events (type 1) are `u32 data, i32 timestamp`: bit 0 valid,
//! bit 1 polarity, bits 2..16 y, bits 17..31 x; the full time is
//! `overflow << 31 | timestamp`. Other packet types are skipped.

use std::io::Read;

use crate::window::{ByteWindow, ChunkDecoder};
use crate::{Event, Format, OpenError, ReadError, StreamInfo};

const FORMAT: Format = Format::Aedat31;
/// Packet header size.
pub const PACKET_HEADER: usize = 28;
/// Largest event size accepted (cAER's largest event type is far smaller).
pub const MAX_EVENT_SIZE: i32 = 4096;

pub(crate) fn read_header<R: Read>(win: &mut ByteWindow<R>) -> Result<StreamInfo, OpenError> {
    let mut info = StreamInfo::new(FORMAT);
    let bad = |reason: String| OpenError::BadHeader {
        format: FORMAT,
        reason,
    };
    let mut ended = false;
    for _ in 0..4096 {
        let Some(line) = win.read_line(4096).map_err(|e| bad(e.to_string()))? else {
            break;
        };
        let line = String::from_utf8_lossy(&line).trim().to_string();
        if line == "#!END-HEADER" {
            ended = true;
            break;
        }
        let body = line.trim_start_matches('#').trim();
        if let Some((k, v)) = body.split_once(':') {
            let (k, v) = (k.trim(), v.trim());
            if k.starts_with("Source") {
                let upper = v.to_ascii_uppercase();
                let res = if upper.contains("DAVIS346") {
                    Some((346, 260))
                } else if upper.contains("DAVIS640") || upper.contains("DVXPLORER") {
                    Some((640, 480))
                } else if upper.contains("DAVIS") {
                    Some((240, 180))
                } else if upper.contains("DVS128") {
                    Some((128, 128))
                } else {
                    None
                };
                if let Some((w, h)) = res {
                    info.width.get_or_insert(w);
                    info.height.get_or_insert(h);
                }
                info.sensor.get_or_insert_with(|| v.to_string());
            }
            info.metadata.push((k.to_string(), v.to_string()));
        }
    }
    if !ended {
        return Err(bad("no `#!END-HEADER` line ends the header".into()));
    }
    Ok(info)
}

enum State {
    Header,
    Events {
        remaining: u32,
        size: usize,
        overflow: i64,
        polarity: bool,
    },
}

/// AEDAT 3.1 packet stream decoder.
pub(crate) struct Aedat31Decoder {
    state: State,
}

impl Aedat31Decoder {
    pub(crate) fn new() -> Self {
        Self {
            state: State::Header,
        }
    }
}

fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl ChunkDecoder for Aedat31Decoder {
    fn decode(
        &mut self,
        input: &[u8],
        offset: u64,
        out: &mut Vec<Event>,
        limit: usize,
    ) -> Result<usize, ReadError> {
        let mut used = 0;
        loop {
            let rest = &input[used..];
            match &mut self.state {
                State::Header => {
                    if rest.len() < PACKET_HEADER || out.len() >= limit {
                        return Ok(used);
                    }
                    let h = &rest[..PACKET_HEADER];
                    let ty = i16::from_le_bytes([h[0], h[1]]);
                    let size = i32_at(h, 4);
                    let overflow = i32_at(h, 12);
                    let count = i32_at(h, 20);
                    let corrupt = |reason: String| ReadError::Corrupt {
                        format: FORMAT,
                        offset: offset + used as u64,
                        reason,
                    };
                    if !(1..=MAX_EVENT_SIZE).contains(&size) {
                        return Err(corrupt(format!(
                            "packet event size {size} is outside 1..={MAX_EVENT_SIZE}"
                        )));
                    }
                    if count < 0 || overflow < 0 {
                        return Err(corrupt(format!(
                            "packet declares {count} events and overflow {overflow}"
                        )));
                    }
                    if ty == 1 && size < 8 {
                        return Err(corrupt(format!(
                            "polarity events of {size} bytes (8 expected)"
                        )));
                    }
                    used += PACKET_HEADER;
                    self.state = State::Events {
                        remaining: count as u32,
                        size: size as usize,
                        overflow: i64::from(overflow) << 31,
                        polarity: ty == 1,
                    };
                }
                State::Events {
                    remaining,
                    size,
                    overflow,
                    polarity,
                } => {
                    if *remaining == 0 {
                        self.state = State::Header;
                        continue;
                    }
                    let whole = (rest.len() / *size).min(*remaining as usize);
                    let mut taken = 0;
                    for e in rest.chunks_exact(*size).take(whole) {
                        if out.len() >= limit {
                            break;
                        }
                        taken += 1;
                        if *polarity {
                            let data = u32::from_le_bytes([e[0], e[1], e[2], e[3]]);
                            if data & 1 == 1 {
                                out.push(Event {
                                    t: *overflow | i64::from(i32_at(e, 4)),
                                    x: ((data >> 17) & 0x7FFF) as u16,
                                    y: ((data >> 2) & 0x7FFF) as u16,
                                    p: data & 2 != 0,
                                });
                            }
                        }
                    }
                    used += taken * *size;
                    *remaining -= taken as u32;
                    if *remaining > 0 {
                        return Ok(used);
                    }
                }
            }
        }
    }

    fn finish(&mut self, leftover: &[u8], _out: &mut Vec<Event>) -> Result<(), ReadError> {
        match self.state {
            State::Header if leftover.is_empty() => Ok(()),
            State::Header => Err(ReadError::Truncated {
                format: FORMAT,
                unit: "packet header",
                bytes: leftover.len(),
            }),
            State::Events { .. } => Err(ReadError::Truncated {
                format: FORMAT,
                unit: "packet",
                bytes: leftover.len(),
            }),
        }
    }
}
