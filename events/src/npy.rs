//! numpy `.npy` files of events: a structured array with fields `t`, `x`, `y`, `p`.
//!
//! [`NpyWriter`] writes the layout of the reference truths, `[('t', '<i8'),
//! ('x', '<i2'), ('y', '<i2'), ('p', '|u1')]` (13 bytes a record, packed). The reader
//! takes any structured little-endian array holding those four fields as integers or
//! bools, in any order, with padding fields (numpy's aligned dtypes add `('', '|V3')`),
//! and streams it like every other reader.

use std::io::{Read, Seek, SeekFrom, Write};

use crate::window::{ByteWindow, ChunkDecoder, ChunkReader};
use crate::{Event, Format, OpenError, ReadError, StreamInfo};

/// The 6 bytes every `.npy` starts with.
pub const MAGIC: &[u8] = b"\x93NUMPY";
/// Largest header accepted.
const MAX_HEADER: usize = 64 * 1024;

/// How one field is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Scalar {
    offset: usize,
    size: usize,
    signed: bool,
}

impl Scalar {
    fn read(&self, rec: &[u8]) -> i64 {
        let b = &rec[self.offset..self.offset + self.size];
        match (self.size, self.signed) {
            (1, false) => i64::from(b[0]),
            (1, true) => i64::from(b[0] as i8),
            (2, false) => i64::from(u16::from_le_bytes([b[0], b[1]])),
            (2, true) => i64::from(i16::from_le_bytes([b[0], b[1]])),
            (4, false) => i64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            (4, true) => i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            _ => {
                let mut a = [0; 8];
                a.copy_from_slice(b);
                i64::from_le_bytes(a)
            }
        }
    }
}

/// The record layout of an event array.
#[derive(Clone, Copy, Debug)]
struct Layout {
    record: usize,
    t: Scalar,
    x: Scalar,
    y: Scalar,
    p: Scalar,
}

/// Parses a numpy type string such as `<i8`, `|u1`, `|b1`, `|V3` into (size, signed,
/// is_padding).
fn parse_type(s: &str) -> Option<(usize, bool, bool)> {
    // Char-wise: the header is untrusted text and may hold multi-byte characters.
    let mut chars = s.trim().chars();
    let order = chars.next()?;
    let kind = chars.next()?;
    let size: usize = chars.as_str().parse().ok()?;
    if !matches!(order, '<' | '|' | '=') {
        return None;
    }
    match kind {
        'i' if matches!(size, 1 | 2 | 4 | 8) => Some((size, true, false)),
        'u' | 'b' if matches!(size, 1 | 2 | 4 | 8) => Some((size, false, false)),
        'V' if size <= 64 => Some((size, false, true)),
        _ => None,
    }
}

/// Parses the header dict: `{'descr': [...], 'fortran_order': False, 'shape': (N,), }`.
fn parse_header(text: &str) -> Result<(Layout, u64), String> {
    let descr_at = text.find("'descr'").ok_or("no 'descr' key")?;
    let list_start = text[descr_at..]
        .find('[')
        .ok_or("'descr' is not a structured dtype (a list of fields)")?
        + descr_at;
    let list_end = text[list_start..]
        .find(']')
        .ok_or("unterminated 'descr' list")?
        + list_start;
    let mut offset = 0usize;
    let mut fields: Vec<(String, Scalar)> = Vec::new();
    for tuple in text[list_start + 1..list_end].split('(').skip(1) {
        let tuple = tuple.split(')').next().unwrap_or("");
        let parts: Vec<&str> = tuple
            .split(',')
            .map(|p| p.trim().trim_matches('\'').trim_matches('"'))
            .collect();
        let (name, ty) = match parts.as_slice() {
            [name, ty, ..] => (*name, *ty),
            _ => return Err(format!("field `({tuple})` is not (name, type)")),
        };
        let (size, signed, padding) = parse_type(ty).ok_or_else(|| {
            format!("field `{name}` has unsupported type `{ty}` (little-endian integers or bool)")
        })?;
        if !padding {
            fields.push((
                name.to_string(),
                Scalar {
                    offset,
                    size,
                    signed,
                },
            ));
        }
        offset += size;
    }
    if text.contains("'fortran_order': True") {
        return Err("Fortran-ordered arrays are not supported".into());
    }
    let get = |n: &str| {
        fields
            .iter()
            .find(|(f, _)| f == n)
            .map(|(_, s)| *s)
            .ok_or(format!("no field `{n}` (need t, x, y, p)"))
    };
    let layout = Layout {
        record: offset,
        t: get("t")?,
        x: get("x")?,
        y: get("y")?,
        p: get("p")?,
    };
    if layout.record == 0 {
        return Err("empty record".into());
    }
    let shape_at = text.find("'shape'").ok_or("no 'shape' key")?;
    let open = text[shape_at..].find('(').ok_or("bad 'shape'")? + shape_at;
    let close = text[open..].find(')').ok_or("bad 'shape'")? + open;
    let dims: Vec<&str> = text[open + 1..close]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let count = match dims.as_slice() {
        [n] => n.parse::<u64>().map_err(|_| format!("bad shape `{n}`"))?,
        _ => return Err(format!("shape has {} dimensions, 1 expected", dims.len())),
    };
    Ok((layout, count))
}

/// Opens an `.npy` event array from a window positioned at its first byte.
pub(crate) fn open<R: std::io::Read + Send + 'static>(
    mut win: ByteWindow<R>,
) -> Result<Box<dyn crate::EventReader>, OpenError> {
    let bad = |reason: String| OpenError::BadHeader {
        format: Format::Npy,
        reason,
    };
    if !win.fill_to(10).map_err(|e| bad(e.to_string()))? || !win.data().starts_with(MAGIC) {
        return Err(bad("missing \\x93NUMPY magic".into()));
    }
    let d = win.data();
    let (len, skip) = match d[6] {
        1 => (usize::from(u16::from_le_bytes([d[8], d[9]])), 10),
        2 | 3 => {
            if !win.fill_to(12).map_err(|e| bad(e.to_string()))? {
                return Err(bad("truncated header".into()));
            }
            let d = win.data();
            (u32::from_le_bytes([d[8], d[9], d[10], d[11]]) as usize, 12)
        }
        v => return Err(bad(format!("unsupported .npy version {v}"))),
    };
    if len > MAX_HEADER {
        return Err(bad(format!("header of {len} bytes exceeds {MAX_HEADER}")));
    }
    win.consume(skip);
    let mut header = Vec::new();
    if !win
        .read_exact_into(&mut header, len)
        .map_err(|e| bad(e.to_string()))?
    {
        return Err(bad("stream ends inside the header".into()));
    }
    let text = String::from_utf8_lossy(&header);
    let (layout, count) = parse_header(&text).map_err(bad)?;
    let mut info = StreamInfo::new(Format::Npy);
    info.metadata.push(("records".into(), count.to_string()));
    info.metadata
        .push(("record bytes".into(), layout.record.to_string()));
    let dec = NpyDecoder {
        layout,
        remaining: count,
    };
    Ok(Box::new(ChunkReader::new(win, dec, info)))
}

struct NpyDecoder {
    layout: Layout,
    remaining: u64,
}

impl ChunkDecoder for NpyDecoder {
    fn decode(
        &mut self,
        input: &[u8],
        offset: u64,
        out: &mut Vec<Event>,
        limit: usize,
    ) -> Result<usize, ReadError> {
        let l = self.layout;
        let mut used = 0;
        for rec in input.chunks_exact(l.record) {
            if out.len() >= limit || self.remaining == 0 {
                break;
            }
            let (t, x, y, p) = (l.t.read(rec), l.x.read(rec), l.y.read(rec), l.p.read(rec));
            let (Ok(x), Ok(y)) = (u16::try_from(x), u16::try_from(y)) else {
                return Err(ReadError::Corrupt {
                    format: Format::Npy,
                    offset: offset + used as u64,
                    reason: format!("pixel ({x}, {y}) out of range"),
                });
            };
            out.push(Event { t, x, y, p: p != 0 });
            used += l.record;
            self.remaining -= 1;
        }
        if self.remaining == 0 {
            // Anything after the declared records is not ours to interpret.
            return Ok(input.len());
        }
        Ok(used)
    }

    fn finish(&mut self, leftover: &[u8], _out: &mut Vec<Event>) -> Result<(), ReadError> {
        if self.remaining > 0 {
            return Err(ReadError::Truncated {
                format: Format::Npy,
                unit: "record array",
                bytes: leftover.len(),
            });
        }
        Ok(())
    }
}

/// Writes events as a numpy structured array `[('t','<i8'),('x','<i2'),('y','<i2'),
/// ('p','|u1')]`. The record count goes into the header when the writer finishes
/// (the header is written with room for any count, then patched).
pub struct NpyWriter<W: Write + Seek> {
    out: W,
    count: u64,
    buf: Vec<u8>,
}

/// Width reserved for the record count in the header.
const COUNT_WIDTH: usize = 20;

fn header_bytes(count: u64) -> Vec<u8> {
    let dict = format!(
        "{{'descr': [('t', '<i8'), ('x', '<i2'), ('y', '<i2'), ('p', '|u1')], 'fortran_order': False, 'shape': ({count:>width$},), }}",
        width = COUNT_WIDTH
    );
    // Magic (6) + version (2) + length (2) + dict + padding + '\n' is a multiple of 64.
    let unpadded = 10 + dict.len() + 1;
    let total = unpadded.div_ceil(64) * 64;
    let mut h = Vec::with_capacity(total);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&[1, 0]);
    h.extend_from_slice(&((total - 10) as u16).to_le_bytes());
    h.extend_from_slice(dict.as_bytes());
    h.resize(total - 1, b' ');
    h.push(b'\n');
    h
}

impl<W: Write + Seek> NpyWriter<W> {
    /// Writes the header (count to be filled in by [`finish`](Self::finish)).
    pub fn new(mut out: W) -> std::io::Result<Self> {
        out.write_all(&header_bytes(0))?;
        Ok(Self {
            out,
            count: 0,
            buf: Vec::with_capacity(13 * 4096),
        })
    }

    /// Appends events. x and y must fit `<i2` (below 32768).
    pub fn write(&mut self, events: &[Event]) -> std::io::Result<()> {
        for chunk in events.chunks(4096) {
            self.buf.clear();
            for e in chunk {
                if e.x > i16::MAX as u16 || e.y > i16::MAX as u16 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("pixel ({}, {}) does not fit the <i2 fields", e.x, e.y),
                    ));
                }
                self.buf.extend_from_slice(&e.t.to_le_bytes());
                self.buf.extend_from_slice(&(e.x as i16).to_le_bytes());
                self.buf.extend_from_slice(&(e.y as i16).to_le_bytes());
                self.buf.push(u8::from(e.p));
            }
            self.out.write_all(&self.buf)?;
        }
        self.count += events.len() as u64;
        Ok(())
    }

    /// Patches the record count into the header and returns the writer.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.out.seek(SeekFrom::Start(0))?;
        self.out.write_all(&header_bytes(self.count))?;
        self.out.seek(SeekFrom::End(0))?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Reads a whole `.npy` event file into memory (for tests and small files).
pub fn read_all(r: impl Read + Send + 'static) -> Result<Vec<Event>, ReadError> {
    let win = ByteWindow::new(r, crate::window::DEFAULT_CAPACITY);
    let mut reader = open(win).map_err(|e| ReadError::Corrupt {
        format: Format::Npy,
        offset: 0,
        reason: e.to_string(),
    })?;
    let mut all = Vec::new();
    let mut batch = Vec::new();
    while reader.read_batch(&mut batch)? > 0 {
        all.extend_from_slice(&batch);
    }
    Ok(all)
}
