//! A fixed-size byte window over a `Read`, and the generic reader that feeds a
//! word-by-word decoder from it. This is what keeps memory flat: a reader never holds
//! more than `capacity` bytes of its input.

use std::io::{self, Read};

use crate::{Event, EventReader, Format, ReadError, StreamInfo};

/// Default window: large enough that a read syscall moves a useful amount of data,
/// small enough to sit in L2 while it is decoded.
pub(crate) const DEFAULT_CAPACITY: usize = 256 * 1024;

/// The most events one `read_batch` hands out by default.
pub(crate) const DEFAULT_BATCH: usize = 65_536;

/// A bounded buffer over a byte source. Bytes are appended at `hi` and consumed from
/// `lo`; `fill` first moves the unconsumed tail to the front.
pub(crate) struct ByteWindow<R> {
    src: R,
    buf: Box<[u8]>,
    lo: usize,
    hi: usize,
    eof: bool,
    /// Bytes consumed since the window was created (for error offsets).
    consumed: u64,
}

impl<R: Read> ByteWindow<R> {
    pub(crate) fn new(src: R, capacity: usize) -> Self {
        Self {
            src,
            buf: vec![0; capacity.max(64)].into_boxed_slice(),
            lo: 0,
            hi: 0,
            eof: false,
            consumed: 0,
        }
    }

    pub(crate) fn data(&self) -> &[u8] {
        &self.buf[self.lo..self.hi]
    }

    pub(crate) fn capacity(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn is_eof(&self) -> bool {
        self.eof
    }

    pub(crate) fn offset(&self) -> u64 {
        self.consumed
    }

    pub(crate) fn consume(&mut self, n: usize) {
        let n = n.min(self.hi - self.lo);
        self.lo += n;
        self.consumed += n as u64;
        if self.lo == self.hi {
            self.lo = 0;
            self.hi = 0;
        }
    }

    /// Reads once into the free space. Returns the number of bytes read; 0 means the
    /// source has ended (or the window is full: check `data().len()`).
    pub(crate) fn fill(&mut self) -> io::Result<usize> {
        if self.eof {
            return Ok(0);
        }
        if self.lo > 0 {
            self.buf.copy_within(self.lo..self.hi, 0);
            self.hi -= self.lo;
            self.lo = 0;
        }
        if self.hi == self.buf.len() {
            return Ok(0);
        }
        loop {
            match self.src.read(&mut self.buf[self.hi..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(0);
                }
                Ok(n) => {
                    self.hi += n;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Fills until at least `n` bytes are buffered or the source ends. Returns whether
    /// `n` bytes are there. `n` larger than the capacity is never satisfied.
    pub(crate) fn fill_to(&mut self, n: usize) -> io::Result<bool> {
        while self.data().len() < n {
            if n > self.buf.len() || self.eof {
                return Ok(false);
            }
            self.fill()?;
        }
        Ok(true)
    }

    /// Reads one header line (up to and including `\n`), at most `max` bytes, without
    /// the line ending. `None` at end of stream.
    pub(crate) fn read_line(&mut self, max: usize) -> io::Result<Option<Vec<u8>>> {
        loop {
            let data = self.data();
            if let Some(pos) = data.iter().take(max).position(|&b| b == b'\n') {
                let mut line = data[..pos].to_vec();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.consume(pos + 1);
                return Ok(Some(line));
            }
            if data.len() >= max || data.len() == self.buf.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("header line longer than {max} bytes"),
                ));
            }
            if self.eof {
                if self.data().is_empty() {
                    return Ok(None);
                }
                let line = self.data().to_vec();
                self.consume(line.len());
                return Ok(Some(line));
            }
            self.fill()?;
        }
    }
}

/// A decoder of a stream of fixed- or variable-size units, fed whatever bytes are in
/// the window. It keeps its own state (time base, current row, ...) across calls.
pub(crate) trait ChunkDecoder: Send {
    /// Decodes whole units from `input`, appending events to `out` and stopping once
    /// `out.len() >= limit`. Returns how many bytes it consumed; an incomplete unit at
    /// the end is left for the next call. `offset` is the stream offset of `input[0]`.
    fn decode(
        &mut self,
        input: &[u8],
        offset: u64,
        out: &mut Vec<Event>,
        limit: usize,
    ) -> Result<usize, ReadError>;

    /// Called at end of stream with the bytes no unit could be made of.
    fn finish(&mut self, leftover: &[u8], out: &mut Vec<Event>) -> Result<(), ReadError>;
}

/// An `EventReader` made of a window and a chunk decoder.
pub(crate) struct ChunkReader<R, D> {
    win: ByteWindow<R>,
    dec: D,
    info: StreamInfo,
    batch: usize,
    finished: bool,
}

impl<R: Read + Send, D: ChunkDecoder> ChunkReader<R, D> {
    pub(crate) fn new(win: ByteWindow<R>, dec: D, info: StreamInfo) -> Self {
        Self {
            win,
            dec,
            info,
            batch: DEFAULT_BATCH,
            finished: false,
        }
    }
}

impl<R: Read + Send, D: ChunkDecoder> EventReader for ChunkReader<R, D> {
    fn info(&self) -> &StreamInfo {
        &self.info
    }

    fn set_batch_size(&mut self, events: usize) {
        self.batch = events.max(1);
    }

    fn read_batch(&mut self, out: &mut Vec<Event>) -> Result<usize, ReadError> {
        out.clear();
        if self.finished {
            return Ok(0);
        }
        loop {
            let offset = self.win.offset();
            let used = self.dec.decode(self.win.data(), offset, out, self.batch)?;
            self.win.consume(used);
            // Hand out what there is rather than block for more: a live source must
            // not wait for a full batch.
            if !out.is_empty() {
                return Ok(out.len());
            }
            if self.win.is_eof() {
                self.finished = true;
                let rest = self.win.data().to_vec();
                self.win.consume(rest.len());
                self.dec.finish(&rest, out)?;
                return Ok(out.len());
            }
            if used == 0 && self.win.data().len() == self.win.capacity() {
                return Err(ReadError::Corrupt {
                    format: self.info.format,
                    offset,
                    reason: format!("no complete unit in {} bytes", self.win.capacity()),
                });
            }
            self.win.fill()?;
        }
    }
}

/// Helper for decoders whose stream ends cleanly only on a unit boundary.
pub(crate) fn truncated(
    format: Format,
    unit: &'static str,
    leftover: &[u8],
) -> Result<(), ReadError> {
    if leftover.is_empty() {
        Ok(())
    } else {
        Err(ReadError::Truncated {
            format,
            unit,
            bytes: leftover.len(),
        })
    }
}

impl<R: Read> ByteWindow<R> {
    /// Moves exactly `n` bytes of the stream into `out` (replacing its contents).
    /// Returns `false` if the stream ended first. What the window holds is copied;
    /// the rest is read from the source straight into `out`, so a large packet is
    /// not copied twice.
    pub(crate) fn read_exact_into(&mut self, out: &mut Vec<u8>, n: usize) -> io::Result<bool> {
        out.clear();
        let take = n.min(self.data().len());
        out.extend_from_slice(&self.data()[..take]);
        self.consume(take);
        if out.len() == n {
            return Ok(true);
        }
        if self.eof {
            return Ok(false);
        }
        let mut filled = out.len();
        out.resize(n, 0);
        while filled < n {
            match self.src.read(&mut out[filled..]) {
                Ok(0) => {
                    self.eof = true;
                    out.truncate(filled);
                    return Ok(false);
                }
                Ok(k) => {
                    filled += k;
                    self.consumed += k as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    out.truncate(filled);
                    return Err(e);
                }
            }
        }
        Ok(true)
    }

    /// Skips exactly `n` bytes. Returns `false` if the stream ended first.
    pub(crate) fn skip(&mut self, mut n: u64) -> io::Result<bool> {
        while n > 0 {
            let take = (n.min(self.data().len() as u64)) as usize;
            self.consume(take);
            n -= take as u64;
            if n > 0 && self.fill()? == 0 && self.eof {
                return Ok(false);
            }
        }
        Ok(true)
    }
}
