//! Plain text and CSV: one event per line, fields separated by commas, semicolons,
//! tabs or spaces. The default column order is `t x y p`; a header line of names
//! (`x,y,p,t`, `timestamp,x,y,polarity`, ...) sets another. A time with a decimal
//! point is in seconds (the Event Camera Dataset's `events.txt`), otherwise in
//! microseconds. A first line of exactly two integers is the sensor size
//! (`width height`, as some simulators write). Lines starting with `#` are comments.

use std::io::Write;

use crate::window::ChunkDecoder;
use crate::{Event, Format, ReadError};

const FORMAT: Format = Format::Text;
/// Longest line accepted.
pub const MAX_LINE: usize = 1024;

/// Column positions of t, x, y, p.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Columns {
    t: usize,
    x: usize,
    y: usize,
    p: usize,
}

impl Default for Columns {
    fn default() -> Self {
        Self {
            t: 0,
            x: 1,
            y: 2,
            p: 3,
        }
    }
}

fn fields(line: &str) -> impl Iterator<Item = &str> {
    line.split(|c: char| c == ',' || c == ';' || c.is_whitespace())
        .filter(|s| !s.is_empty())
}

/// Reads a header line of column names, if it is one.
pub(crate) fn parse_column_names(line: &str) -> Option<Columns> {
    let names: Vec<String> = fields(line)
        .map(|s| s.trim_matches('"').to_ascii_lowercase())
        .collect();
    let find = |alts: &[&str]| names.iter().position(|n| alts.contains(&n.as_str()));
    Some(Columns {
        t: find(&["t", "ts", "time", "timestamp", "t_us", "timestamp_us"])?,
        x: find(&["x", "col"])?,
        y: find(&["y", "row"])?,
        p: find(&["p", "pol", "polarity", "on"])?,
    })
}

/// Text line decoder.
pub(crate) struct TextDecoder {
    columns: Columns,
    line_no: u64,
    pub(crate) size: Option<(u16, u16)>,
}

impl TextDecoder {
    pub(crate) fn new() -> Self {
        Self {
            columns: Columns::default(),
            line_no: 0,
            size: None,
        }
    }

    fn line(&mut self, raw: &[u8], offset: u64, out: &mut Vec<Event>) -> Result<(), ReadError> {
        self.line_no += 1;
        let corrupt = |reason: String| ReadError::Corrupt {
            format: FORMAT,
            offset,
            reason,
        };
        let line = std::str::from_utf8(raw)
            .map_err(|_| corrupt(format!("line {} is not UTF-8 text", self.line_no)))?;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('%') {
            return Ok(());
        }
        if self.line_no == 1 {
            if let Some(columns) = parse_column_names(line) {
                self.columns = columns;
                return Ok(());
            }
            let f: Vec<&str> = fields(line).collect();
            if let [w, h] = f.as_slice() {
                if let (Ok(w), Ok(h)) = (w.parse(), h.parse()) {
                    self.size = Some((w, h));
                    return Ok(());
                }
            }
        }
        let mut vals: [&str; 8] = [""; 8];
        let mut n = 0;
        for f in fields(line) {
            if n == vals.len() {
                break;
            }
            vals[n] = f;
            n += 1;
        }
        let c = self.columns;
        let need = c.t.max(c.x).max(c.y).max(c.p) + 1;
        if n < need {
            return Err(corrupt(format!(
                "line {} has {n} fields, {need} expected (t x y p)",
                self.line_no
            )));
        }
        let t = parse_time(vals[c.t])
            .ok_or_else(|| corrupt(format!("line {}: bad time `{}`", self.line_no, vals[c.t])))?;
        let x = vals[c.x]
            .parse::<u16>()
            .map_err(|_| corrupt(format!("line {}: bad x `{}`", self.line_no, vals[c.x])))?;
        let y = vals[c.y]
            .parse::<u16>()
            .map_err(|_| corrupt(format!("line {}: bad y `{}`", self.line_no, vals[c.y])))?;
        let p = match vals[c.p] {
            "1" | "+1" | "true" | "True" | "ON" | "on" => true,
            "0" | "-1" | "false" | "False" | "OFF" | "off" => false,
            other => {
                return Err(corrupt(format!(
                    "line {}: bad polarity `{other}` (0/1, -1/1 or true/false)",
                    self.line_no
                )))
            }
        };
        out.push(Event { t, x, y, p });
        Ok(())
    }
}

fn parse_time(s: &str) -> Option<i64> {
    if s.contains(['.', 'e', 'E']) {
        let secs: f64 = s.parse().ok()?;
        let us = (secs * 1e6).round();
        (us.is_finite() && us.abs() < 9.0e18).then_some(us as i64)
    } else {
        s.parse().ok()
    }
}

impl ChunkDecoder for TextDecoder {
    fn decode(
        &mut self,
        input: &[u8],
        offset: u64,
        out: &mut Vec<Event>,
        limit: usize,
    ) -> Result<usize, ReadError> {
        let mut used = 0;
        while out.len() < limit {
            let rest = &input[used..];
            let Some(end) = rest.iter().take(MAX_LINE + 1).position(|&b| b == b'\n') else {
                if rest.len() > MAX_LINE {
                    return Err(ReadError::Corrupt {
                        format: FORMAT,
                        offset: offset + used as u64,
                        reason: format!(
                            "line longer than {MAX_LINE} bytes: this is not a text event file"
                        ),
                    });
                }
                break;
            };
            self.line(&rest[..end], offset + used as u64, out)?;
            used += end + 1;
        }
        Ok(used)
    }

    fn finish(&mut self, leftover: &[u8], out: &mut Vec<Event>) -> Result<(), ReadError> {
        if leftover.is_empty() {
            return Ok(());
        }
        self.line(leftover, 0, out)
    }
}

/// Writes events as CSV with a `t,x,y,p` header (microseconds, p in {0, 1}).
pub struct CsvWriter<W: Write> {
    out: W,
    line: String,
}

impl<W: Write> CsvWriter<W> {
    /// Starts a CSV file with its header line.
    pub fn new(mut out: W) -> std::io::Result<Self> {
        out.write_all(b"t,x,y,p\n")?;
        Ok(Self {
            out,
            line: String::with_capacity(64),
        })
    }

    /// Appends events.
    pub fn write(&mut self, events: &[Event]) -> std::io::Result<()> {
        use std::fmt::Write as _;
        for e in events {
            self.line.clear();
            let _ = writeln!(self.line, "{},{},{},{}", e.t, e.x, e.y, u8::from(e.p));
            self.out.write_all(self.line.as_bytes())?;
        }
        Ok(())
    }

    /// Flushes and returns the writer.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}
