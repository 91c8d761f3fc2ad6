//! N-MNIST / N-Caltech101 `.bin` (Orchard et al. 2015): 5-byte events, no header.
//! Byte 0 is x, byte 1 is y, bit 7 of byte 2 the polarity (1 = ON) and the remaining
//! 23 bits of bytes 2..4 (big-endian) the timestamp in microseconds. As in the
//! datasets' reference reader, an event with y = 240 marks a timestamp overflow:
//! it is not an event, and 2^13 us are added to every later timestamp.

use crate::window::{truncated, ChunkDecoder};
use crate::{Event, Format, ReadError};

/// The y value that marks an overflow record.
pub const OVERFLOW_Y: u8 = 240;
/// Microseconds added per overflow record.
pub const OVERFLOW_STEP: i64 = 1 << 13;

/// N-MNIST record decoder.
#[derive(Default)]
pub(crate) struct NBinDecoder {
    offset: i64,
}

impl ChunkDecoder for NBinDecoder {
    fn decode(
        &mut self,
        input: &[u8],
        _offset: u64,
        out: &mut Vec<Event>,
        limit: usize,
    ) -> Result<usize, ReadError> {
        let mut used = 0;
        for r in input.chunks_exact(5) {
            if out.len() >= limit {
                break;
            }
            used += 5;
            if r[1] == OVERFLOW_Y {
                self.offset += OVERFLOW_STEP;
                continue;
            }
            let ts = (u32::from(r[2] & 0x7F) << 16) | (u32::from(r[3]) << 8) | u32::from(r[4]);
            out.push(Event {
                t: self.offset + i64::from(ts),
                x: u16::from(r[0]),
                y: u16::from(r[1]),
                p: r[2] & 0x80 != 0,
            });
        }
        Ok(used)
    }

    fn finish(&mut self, leftover: &[u8], _out: &mut Vec<Event>) -> Result<(), ReadError> {
        truncated(Format::NBin, "5-byte event", leftover)
    }
}
