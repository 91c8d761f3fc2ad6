//! Opening sources: files of any supported format (detected from their header), pipes
//! and stdin, files still being written, and iniVation DV network streams; optional
//! pacing at the recorded speed. This is the API the device runtime takes its
//! `--input` through.

use std::fs::File;
use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::formats::{aedat2, aedat31, aedat4, nbin, prophesee, text};
use crate::window::{ByteWindow, ChunkReader, DEFAULT_CAPACITY};
use crate::{Event, Format, OpenError, ReadError, StreamInfo};

/// A stream of events, read in batches. Every reader holds a bounded window of its
/// input, never the whole recording.
pub trait EventReader: Send {
    /// What the header said: format, resolution, sensor.
    fn info(&self) -> &StreamInfo;

    /// Replaces the contents of `out` with the next events, in stream order, and
    /// returns how many there are. `0` means the stream has ended. A batch holds at
    /// most the batch size (see [`set_batch_size`](Self::set_batch_size)) and, on a
    /// live source, whatever has arrived rather than waiting for a full batch.
    fn read_batch(&mut self, out: &mut Vec<Event>) -> Result<usize, ReadError>;

    /// Caps how many events one batch holds (default 65,536).
    fn set_batch_size(&mut self, events: usize);
}

impl<T: EventReader + ?Sized> EventReader for Box<T> {
    fn info(&self) -> &StreamInfo {
        (**self).info()
    }
    fn read_batch(&mut self, out: &mut Vec<Event>) -> Result<usize, ReadError> {
        (**self).read_batch(out)
    }
    fn set_batch_size(&mut self, events: usize) {
        (**self).set_batch_size(events)
    }
}

/// Keep reading a file as it grows (a recording still being written).
#[derive(Clone, Debug)]
pub struct Follow {
    /// How often to look for new bytes at the end of the file.
    pub poll: Duration,
    /// Stop once the file has not grown for this long (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// Stop when this flag is set (checked at every poll).
    pub stop: Option<Arc<AtomicBool>>,
}

impl Default for Follow {
    /// Poll every 20 ms (well under a video frame), stop after 2 s without growth.
    fn default() -> Self {
        Self {
            poll: Duration::from_millis(20),
            idle_timeout: Some(Duration::from_secs(2)),
            stop: None,
        }
    }
}

/// How to open a source.
#[derive(Clone, Debug)]
pub struct SourceOptions {
    /// Decode as this format instead of detecting it (needed for headerless `.raw`).
    pub format: Option<Format>,
    /// Hand out events no faster than their timestamps (times `speed`).
    pub realtime: bool,
    /// Playback speed for `realtime` (1.0 = as recorded).
    pub speed: f64,
    /// For files: keep reading as the file grows.
    pub follow: Option<Follow>,
    /// Size of the byte window a reader holds.
    pub buffer_bytes: usize,
    /// Most events per batch.
    pub batch_events: usize,
    /// For network sources: how long to wait for the connection.
    pub connect_timeout: Duration,
}

impl Default for SourceOptions {
    fn default() -> Self {
        Self {
            format: None,
            realtime: false,
            speed: 1.0,
            follow: None,
            buffer_bytes: DEFAULT_CAPACITY,
            batch_events: crate::window::DEFAULT_BATCH,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Where events come from, as written on a command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceSpec {
    /// A file or a named pipe (FIFO).
    Path(PathBuf),
    /// Standard input (`-`).
    Stdin,
    /// iniVation DV's network output (`dv+tcp://host:port`): an AEDAT 4 stream over
    /// TCP, as DV's "Network output (TCP)" module and dv-processing's network writer
    /// serve it (an `IOHeader`, then packets).
    DvTcp(String),
}

/// The scheme of DV network sources.
pub const DV_TCP_SCHEME: &str = "dv+tcp://";

impl FromStr for SourceSpec {
    type Err = OpenError;

    fn from_str(s: &str) -> Result<Self, OpenError> {
        if s == "-" {
            return Ok(Self::Stdin);
        }
        if let Some(addr) = s.strip_prefix(DV_TCP_SCHEME) {
            let ok = addr
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !ok {
                return Err(OpenError::BadSpec {
                    spec: s.into(),
                    reason: "expected dv+tcp://HOST:PORT".into(),
                });
            }
            return Ok(Self::DvTcp(addr.to_string()));
        }
        if s.contains("://") {
            return Err(OpenError::BadSpec {
                spec: s.into(),
                reason: format!("unknown scheme; sources are a path, `-` for stdin, or {DV_TCP_SCHEME}HOST:PORT"),
            });
        }
        Ok(Self::Path(PathBuf::from(s)))
    }
}

/// Opens a source spec: a path, `-` for stdin or `dv+tcp://host:port`.
pub fn open(spec: &str, options: &SourceOptions) -> Result<Box<dyn EventReader>, OpenError> {
    open_spec(&spec.parse()?, options)
}

/// Opens a parsed [`SourceSpec`].
pub fn open_spec(
    spec: &SourceSpec,
    options: &SourceOptions,
) -> Result<Box<dyn EventReader>, OpenError> {
    let reader = match spec {
        SourceSpec::Path(path) => return open_path(path, options),
        SourceSpec::Stdin => open_stream(std::io::stdin(), None, options)?,
        SourceSpec::DvTcp(addr) => open_dv_tcp(addr, options)?,
    };
    Ok(finish(reader, options))
}

/// Opens a file (following it as it grows if `options.follow` says so). The file's
/// extension is a hint for formats without a header (`.bin`, `.csv`, `.txt`).
pub fn open_path(path: &Path, options: &SourceOptions) -> Result<Box<dyn EventReader>, OpenError> {
    let io = |source| OpenError::Io {
        what: path.display().to_string(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let reader = match &options.follow {
        Some(follow) => open_stream(
            FollowFile::new(file, follow.clone()),
            ext.as_deref(),
            options,
        )?,
        None => open_stream(file, ext.as_deref(), options)?,
    };
    Ok(finish(reader, options))
}

fn finish(mut reader: Box<dyn EventReader>, options: &SourceOptions) -> Box<dyn EventReader> {
    reader.set_batch_size(options.batch_events);
    if options.realtime {
        Box::new(Paced::new(reader, options.speed))
    } else {
        reader
    }
}

fn open_dv_tcp(addr: &str, options: &SourceOptions) -> Result<Box<dyn EventReader>, OpenError> {
    use std::net::ToSocketAddrs;
    let io = |source| OpenError::Io {
        what: format!("{DV_TCP_SCHEME}{addr}"),
        source,
    };
    let sock = addr
        .to_socket_addrs()
        .map_err(io)?
        .next()
        .ok_or_else(|| OpenError::BadSpec {
            spec: addr.into(),
            reason: "host name resolves to no address".into(),
        })?;
    let stream = TcpStream::connect_timeout(&sock, options.connect_timeout).map_err(io)?;
    stream.set_nodelay(true).map_err(io)?;
    let win = ByteWindow::new(stream, options.buffer_bytes);
    Ok(Box::new(aedat4::Aedat4Reader::from_window(win, false)?))
}

/// Detects the format from the first bytes of a stream. `ext` (lower case, no dot)
/// is consulted only for formats that have no header of their own.
pub fn detect(prefix: &[u8], ext: Option<&str>) -> Option<Format> {
    if prefix.starts_with(b"#!AER-DAT4") {
        return Some(Format::Aedat4);
    }
    if prefix.starts_with(b"#!AER-DAT3") {
        return Some(Format::Aedat31);
    }
    if prefix.starts_with(b"#!AER-DAT2") || prefix.starts_with(b"#!AER-DAT1") {
        return Some(Format::Aedat2);
    }
    if prefix.starts_with(crate::npy::MAGIC) {
        return Some(Format::Npy);
    }
    if prefix.starts_with(b"% ") || prefix.starts_with(b"%\n") {
        // Prophesee's header; which EVT version follows is read from it.
        return Some(Format::Evt3);
    }
    if looks_like_text(prefix) {
        return Some(Format::Text);
    }
    match ext {
        Some("bin") if !prefix.is_empty() => Some(Format::NBin),
        _ => None,
    }
}

fn looks_like_text(prefix: &[u8]) -> bool {
    let Some(end) = prefix.iter().position(|&b| b == b'\n') else {
        return false;
    };
    let Ok(text) = std::str::from_utf8(&prefix[..end]) else {
        return false;
    };
    let line = text.trim();
    if text::parse_column_names(line).is_some() {
        return true;
    }
    let fields: Vec<&str> = line
        .split(|c: char| c == ',' || c == ';' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .collect();
    (fields.len() == 2 || fields.len() >= 4) && fields.iter().all(|f| f.parse::<f64>().is_ok())
}

/// Opens any byte stream (batch size and pacing from `options` applied). `ext` is
/// the file extension hint, if any.
pub fn open_reader<R: Read + Send + 'static>(
    src: R,
    ext: Option<&str>,
    options: &SourceOptions,
) -> Result<Box<dyn EventReader>, OpenError> {
    Ok(finish(open_stream(src, ext, options)?, options))
}

/// Detects the format and reads the header; batch size and pacing are applied by
/// the callers.
fn open_stream<R: Read + Send + 'static>(
    src: R,
    ext: Option<&str>,
    options: &SourceOptions,
) -> Result<Box<dyn EventReader>, OpenError> {
    let mut win = ByteWindow::new(src, options.buffer_bytes.max(4096));
    let io = |source| OpenError::Io {
        what: "the stream's first bytes".into(),
        source,
    };
    // Enough bytes for every magic number; text needs its first line.
    win.fill_to(16).map_err(io)?;
    while !win.is_eof() && win.data().len() < 4096 && !win.data().contains(&b'\n') {
        if win.fill().map_err(io)? == 0 {
            break;
        }
    }
    let detected = detect(win.data(), ext);
    let format = match (options.format, detected) {
        (Some(f), _) => f,
        (None, Some(f)) => f,
        (None, None) => {
            let hint = match win.data() {
                [] => " (the stream is empty)".to_string(),
                d => format!(" (starts with {:02x?})", &d[..d.len().min(8)]),
            };
            return Err(OpenError::UnknownFormat { hint });
        }
    };
    let reader: Box<dyn EventReader> = match format {
        Format::Evt2 | Format::Evt21 | Format::Evt3 => {
            let mut info = if win.data().first() == Some(&b'%') {
                prophesee::read_header(&mut win).or_else(|e| match options.format {
                    Some(f) => Ok(StreamInfo::new(f)),
                    None => Err(e),
                })?
            } else {
                StreamInfo::new(format)
            };
            if let Some(f) = options.format {
                info.format = f;
            }
            match info.format {
                Format::Evt2 => {
                    Box::new(ChunkReader::new(win, prophesee::Evt2Decoder::new(), info))
                }
                Format::Evt21 => {
                    Box::new(ChunkReader::new(win, prophesee::Evt21Decoder::new(), info))
                }
                _ => Box::new(ChunkReader::new(win, prophesee::Evt3Decoder::new(), info)),
            }
        }
        Format::Aedat4 => Box::new(aedat4::Aedat4Reader::from_window(win, true)?),
        Format::Aedat2 => {
            let (info, layout) = aedat2::read_header(&mut win)?;
            Box::new(ChunkReader::new(
                win,
                aedat2::Aedat2Decoder::new(layout),
                info,
            ))
        }
        Format::Aedat31 => {
            let info = aedat31::read_header(&mut win)?;
            Box::new(ChunkReader::new(win, aedat31::Aedat31Decoder::new(), info))
        }
        Format::NBin => {
            let mut info = StreamInfo::new(Format::NBin);
            info.metadata.push((
                "note".into(),
                "N-MNIST is 34x34, N-Caltech101 about 240x180; the file does not say".into(),
            ));
            Box::new(ChunkReader::new(win, nbin::NBinDecoder::default(), info))
        }
        Format::Text => {
            let mut info = StreamInfo::new(Format::Text);
            if let Some(end) = win.data().iter().position(|&b| b == b'\n') {
                let first = String::from_utf8_lossy(&win.data()[..end]).to_string();
                let f: Vec<&str> = first
                    .split(|c: char| c == ',' || c.is_whitespace())
                    .filter(|s| !s.is_empty())
                    .collect();
                if let [w, h] = f.as_slice() {
                    info.width = w.parse().ok();
                    info.height = h.parse().ok();
                }
            }
            Box::new(ChunkReader::new(win, text::TextDecoder::new(), info))
        }
        Format::Npy => crate::npy::open(win)?,
    };
    Ok(reader)
}

/// A file read as it grows: at its end it waits (polling) for more bytes, until the
/// stop flag is set or it has not grown for the idle timeout.
pub struct FollowFile {
    file: File,
    follow: Follow,
    last_growth: Instant,
}

impl FollowFile {
    /// Follows `file` from its current position.
    pub fn new(file: File, follow: Follow) -> Self {
        Self {
            file,
            follow,
            last_growth: Instant::now(),
        }
    }
}

impl Read for FollowFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let n = self.file.read(buf)?;
            if n > 0 || buf.is_empty() {
                self.last_growth = Instant::now();
                return Ok(n);
            }
            if self
                .follow
                .stop
                .as_ref()
                .is_some_and(|s| s.load(Ordering::Relaxed))
            {
                return Ok(0);
            }
            if self
                .follow
                .idle_timeout
                .is_some_and(|t| self.last_growth.elapsed() >= t)
            {
                return Ok(0);
            }
            std::thread::sleep(self.follow.poll);
        }
    }
}

/// When events are due under real-time playback: the deterministic core of
/// [`Paced`], fed the elapsed wall time so tests need no clock.
#[derive(Clone, Debug)]
pub struct Pacer {
    speed: f64,
    origin: Option<i64>,
}

impl Pacer {
    /// Playback at `speed` times the recorded rate (1.0 = as recorded).
    pub fn new(speed: f64) -> Self {
        Self {
            speed: if speed.is_finite() && speed > 0.0 {
                speed
            } else {
                1.0
            },
            origin: None,
        }
    }

    /// The latest event time that is due after `elapsed` wall time; the first event
    /// seen sets the time origin.
    pub fn horizon(&mut self, first_t: i64, elapsed: Duration) -> i64 {
        let origin = *self.origin.get_or_insert(first_t);
        origin.saturating_add((elapsed.as_secs_f64() * 1e6 * self.speed) as i64)
    }

    /// How long to wait, after `elapsed`, until the event at `t` is due.
    pub fn wait(&self, t: i64, elapsed: Duration) -> Duration {
        let Some(origin) = self.origin else {
            return Duration::ZERO;
        };
        let due = (t.saturating_sub(origin)) as f64 / 1e6 / self.speed;
        Duration::from_secs_f64((due - elapsed.as_secs_f64()).max(0.0))
    }
}

/// Hands out a reader's events no faster than their timestamps.
pub struct Paced<E> {
    inner: E,
    pacer: Pacer,
    start: Option<Instant>,
    pending: Vec<Event>,
    next: usize,
}

impl<E: EventReader> Paced<E> {
    /// Paces `inner` at `speed` times the recorded rate.
    pub fn new(inner: E, speed: f64) -> Self {
        Self {
            inner,
            pacer: Pacer::new(speed),
            start: None,
            pending: Vec::new(),
            next: 0,
        }
    }
}

impl<E: EventReader> EventReader for Paced<E> {
    fn info(&self) -> &StreamInfo {
        self.inner.info()
    }

    fn set_batch_size(&mut self, events: usize) {
        self.inner.set_batch_size(events);
    }

    fn read_batch(&mut self, out: &mut Vec<Event>) -> Result<usize, ReadError> {
        out.clear();
        loop {
            if self.next >= self.pending.len() {
                self.next = 0;
                if self.inner.read_batch(&mut self.pending)? == 0 {
                    return Ok(0);
                }
            }
            let first = self.pending[self.next].t;
            let start = *self.start.get_or_insert_with(Instant::now);
            let horizon = self.pacer.horizon(first, start.elapsed());
            let due = self.pending[self.next..]
                .iter()
                .take_while(|e| e.t <= horizon)
                .count();
            if due > 0 {
                out.extend_from_slice(&self.pending[self.next..self.next + due]);
                self.next += due;
                return Ok(due);
            }
            // Sleep in slices of at most 50 ms so a stop request is never far off.
            let wait = self
                .pacer
                .wait(first, start.elapsed())
                .min(Duration::from_millis(50));
            std::thread::sleep(wait.max(Duration::from_micros(100)));
        }
    }
}
