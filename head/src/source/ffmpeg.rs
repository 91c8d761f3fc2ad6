//! Video files, cameras and streams, decoded by an `ffmpeg` child process that writes
//! raw RGB frames on a pipe.
//!
//! Why a subprocess rather than linking libav*: `ffmpeg` is installed everywhere video
//! is, it opens every container, codec, camera and protocol, and the device binary
//! stays free of a C build and of FFmpeg's API churn. The cost is one copy per frame
//! through a pipe, small next to decoding.

use std::io::{ErrorKind, Read};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Frame, FrameError, OpenSourceError, Pacing, Payload, SourceOptions};

/// How long `ffprobe` may take before the probe is given up (a dead stream URL can
/// otherwise hang it for minutes).
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// How much of `ffmpeg`'s stderr is kept for error messages.
const STDERR_KEEP: usize = 4096;

/// What is known about a video before its first frame.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VideoInfo {
    /// Frame width in pixels, as delivered.
    pub width: u32,
    /// Frame height in pixels, as delivered.
    pub height: u32,
    /// Frames per second, when the probe told it (`None` when the size was given and
    /// nothing was probed, or the container does not say).
    pub fps: Option<f64>,
}

/// Frames of a video file, camera or stream, read from an `ffmpeg` child process.
///
/// The child is killed when the source is dropped.
#[derive(Debug)]
pub struct VideoSource {
    spec: Arc<str>,
    info: VideoInfo,
    frame_bytes: usize,
    child: Child,
    pipe: Pipe,
    stderr: Option<JoinHandle<String>>,
    next_index: u64,
    done: bool,
    /// Frames a latest-only reader discarded, kept once the reader is gone.
    dropped_before_close: u64,
}

/// How frames come off ffmpeg's stdout.
#[derive(Debug)]
enum Pipe {
    /// Read by the iterator: every frame, in order (files; back-pressure slows ffmpeg).
    Direct(ChildStdout),
    /// Read by a thread that keeps only the newest frame (live sources: a slow
    /// consumer gets fresh frames, not a growing backlog).
    Latest(LatestReader),
    /// Finished.
    Closed,
}

/// A frame as read off the pipe, with when.
struct Captured {
    buf: Vec<u8>,
    at: Instant,
    wall: std::time::SystemTime,
}

/// How reading a frame ended when it did not yield one.
enum PipeEnd {
    /// End of the pipe, after `partial` bytes of an unfinished frame.
    Eof { partial: usize },
    /// A read error.
    Io(std::io::Error),
}

/// Reads one whole frame, or says how the pipe ended.
fn read_full(stdout: &mut ChildStdout, frame_bytes: usize) -> Result<Vec<u8>, PipeEnd> {
    let mut buf = vec![0u8; frame_bytes];
    let mut got = 0;
    while got < buf.len() {
        let Some(rest) = buf.get_mut(got..) else {
            break;
        };
        match stdout.read(rest) {
            Ok(0) => return Err(PipeEnd::Eof { partial: got }),
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(PipeEnd::Io(e)),
        }
    }
    Ok(buf)
}

#[derive(Default)]
struct Slot {
    frame: Option<Captured>,
    end: Option<PipeEnd>,
    dropped: u64,
}

#[derive(Default)]
struct Shared {
    slot: std::sync::Mutex<Slot>,
    ready: std::sync::Condvar,
}

struct LatestReader {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for LatestReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LatestReader")
    }
}

impl LatestReader {
    fn spawn(mut stdout: ChildStdout, frame_bytes: usize) -> Self {
        let shared = Arc::new(Shared::default());
        let theirs = shared.clone();
        let thread = std::thread::spawn(move || loop {
            let read = read_full(&mut stdout, frame_bytes);
            let at = Instant::now();
            let wall = std::time::SystemTime::now();
            // A poisoned lock means the consumer panicked; nothing left to feed.
            let Ok(mut slot) = theirs.slot.lock() else {
                return;
            };
            let finished = match read {
                Ok(buf) => {
                    if slot.frame.replace(Captured { buf, at, wall }).is_some() {
                        slot.dropped += 1;
                    }
                    false
                }
                Err(end) => {
                    slot.end = Some(end);
                    true
                }
            };
            drop(slot);
            theirs.ready.notify_one();
            if finished {
                return;
            }
        });
        Self {
            shared,
            thread: Some(thread),
        }
    }

    /// The newest frame, waiting for one; `Err` once the pipe has ended.
    fn take(&self) -> Result<Captured, PipeEnd> {
        let Ok(mut slot) = self.shared.slot.lock() else {
            return Err(PipeEnd::Eof { partial: 0 });
        };
        loop {
            if let Some(frame) = slot.frame.take() {
                return Ok(frame);
            }
            if let Some(end) = slot.end.take() {
                return Err(end);
            }
            slot = match self.shared.ready.wait(slot) {
                Ok(s) => s,
                Err(_) => return Err(PipeEnd::Eof { partial: 0 }),
            };
        }
    }

    fn dropped(&self) -> u64 {
        self.shared.slot.lock().map_or(0, |s| s.dropped)
    }

    fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl VideoSource {
    /// Starts `ffmpeg` on `spec` (a file path, URL or camera device). `live` says the
    /// source delivers frames at its own pace (no `-re`).
    pub fn open(spec: &str, live: bool, opts: &SourceOptions) -> Result<Self, OpenSourceError> {
        let camera = spec.starts_with("/dev/video");
        let info = match opts.video_size {
            Some((width, height)) => VideoInfo {
                width,
                height,
                fps: None,
            },
            None => probe(spec, camera, opts)?,
        };
        let (w, h) = (info.width, info.height);
        if w == 0 || h == 0 || w > opts.max_side || h > opts.max_side {
            return Err(OpenSourceError::BadSize {
                spec: spec.to_owned(),
                width: w,
                height: h,
                max: opts.max_side,
            });
        }
        // w, h <= max_side <= u32::MAX, so this only overflows on 32-bit targets.
        let frame_bytes = (w as usize)
            .checked_mul(h as usize)
            .and_then(|n| n.checked_mul(3))
            .ok_or(OpenSourceError::BadSize {
                spec: spec.to_owned(),
                width: w,
                height: h,
                max: opts.max_side,
            })?;

        let mut cmd = Command::new(&opts.ffmpeg);
        cmd.args(["-hide_banner", "-loglevel", "error", "-nostdin"]);
        if opts.pacing == Pacing::Realtime && !live {
            cmd.arg("-re");
        }
        if opts.repeat && !live {
            cmd.args(["-stream_loop", "-1"]);
        }
        if camera {
            cmd.args(["-f", "v4l2"]);
        }
        cmd.args(&opts.input_args);
        cmd.arg("-i").arg(spec);
        // Always scale to the size we allocate for: a stream that changes resolution
        // midway would otherwise shift every later frame boundary.
        let mut filters = format!("scale={w}:{h}");
        if let Some(fps) = opts.fps.filter(|f| f.is_finite() && *f > 0.0) {
            filters = format!("fps={fps},{filters}");
        }
        cmd.args(["-map", "0:v:0", "-an", "-sn", "-vf"])
            .arg(filters)
            .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"]);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| spawn_error(&opts.ffmpeg.to_string_lossy(), e))?;
        let pipe = match child.stdout.take() {
            Some(out) if live && !opts.keep_backlog => {
                Pipe::Latest(LatestReader::spawn(out, frame_bytes))
            }
            Some(out) => Pipe::Direct(out),
            None => Pipe::Closed,
        };
        let stderr = child.stderr.take().map(collect_stderr);
        tracing::info!(spec, width = w, height = h, fps = ?info.fps, "ffmpeg started");
        Ok(Self {
            spec: Arc::from(spec),
            info,
            frame_bytes,
            child,
            pipe,
            stderr,
            next_index: 0,
            done: false,
            dropped_before_close: 0,
        })
    }

    /// Size and rate of the frames.
    pub fn info(&self) -> VideoInfo {
        self.info
    }

    /// The `ffmpeg` child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Frames a live source discarded because a newer one arrived before the
    /// consumer asked (always 0 with `keep_backlog` or for files).
    pub fn dropped_frames(&self) -> u64 {
        match &self.pipe {
            Pipe::Latest(r) => r.dropped(),
            _ => self.dropped_before_close,
        }
    }

    /// Reads one frame; `Ok(None)` at a clean end of stream.
    fn read_frame(&mut self) -> Result<Option<Captured>, FrameError> {
        let read = match &mut self.pipe {
            Pipe::Closed => return Ok(None),
            Pipe::Direct(out) => read_full(out, self.frame_bytes).map(|buf| Captured {
                buf,
                at: Instant::now(),
                wall: std::time::SystemTime::now(),
            }),
            Pipe::Latest(r) => r.take(),
        };
        let got = match read {
            Ok(frame) => return Ok(Some(frame)),
            Err(PipeEnd::Eof { partial }) => partial,
            Err(PipeEnd::Io(source)) => {
                return Err(FrameError::Io {
                    what: self.spec.to_string(),
                    source,
                })
            }
        };
        // End of the pipe: a clean end only if ffmpeg says so and no frame was cut.
        if let Pipe::Latest(r) = &mut self.pipe {
            r.join();
            self.dropped_before_close = r.dropped();
        }
        self.pipe = Pipe::Closed;
        let status = self.child.wait().map_err(|source| FrameError::Io {
            what: self.spec.to_string(),
            source,
        })?;
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        if !status.success() {
            return Err(FrameError::Ffmpeg {
                spec: self.spec.to_string(),
                status: describe(status),
                stderr: stderr.trim().to_owned(),
            });
        }
        if got > 0 {
            return Err(FrameError::TruncatedFrame {
                spec: self.spec.to_string(),
                got,
                want: self.frame_bytes,
            });
        }
        Ok(None)
    }
}

impl Iterator for VideoSource {
    type Item = Result<Frame, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.read_frame() {
            Ok(Some(Captured { buf, at, wall })) => {
                let (captured, captured_wall) = (at, wall);
                let Some(img) = image::RgbImage::from_raw(self.info.width, self.info.height, buf)
                else {
                    // Unreachable by construction (the buffer has exactly w*h*3 bytes),
                    // but not worth a panic.
                    self.done = true;
                    return Some(Err(FrameError::TruncatedFrame {
                        spec: self.spec.to_string(),
                        got: 0,
                        want: self.frame_bytes,
                    }));
                };
                let index = self.next_index;
                self.next_index += 1;
                Some(Ok(Frame {
                    index,
                    captured,
                    captured_wall,
                    source: self.spec.clone(),
                    payload: Payload::Image(img),
                }))
            }
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl Drop for VideoSource {
    fn drop(&mut self) {
        // Closing our end first makes a writing ffmpeg fail fast; kill covers a child
        // blocked on its input (a camera, a stalled stream). A reader thread ends when
        // the killed child's pipe closes.
        let mut pipe = std::mem::replace(&mut self.pipe, Pipe::Closed);
        if let Pipe::Direct(out) = pipe {
            drop(out);
            pipe = Pipe::Closed;
        }
        if let Ok(None) = self.child.try_wait() {
            if let Err(e) = self.child.kill() {
                tracing::warn!(spec = %self.spec, "cannot kill ffmpeg: {e}");
            }
        }
        let _ = self.child.wait();
        if let Pipe::Latest(mut r) = pipe {
            r.join();
        }
        if let Some(h) = self.stderr.take() {
            let _ = h.join();
        }
    }
}

/// Keeps the last [`STDERR_KEEP`] bytes ffmpeg writes on stderr, draining the pipe so
/// a chatty ffmpeg never blocks on it.
fn collect_stderr(mut stderr: ChildStderr) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut kept: Vec<u8> = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            match stderr.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    kept.extend_from_slice(chunk.get(..n).unwrap_or_default());
                    if kept.len() > STDERR_KEEP {
                        let cut = kept.len() - STDERR_KEEP;
                        kept.drain(..cut);
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        String::from_utf8_lossy(&kept).into_owned()
    })
}

fn spawn_error(program: &str, e: std::io::Error) -> OpenSourceError {
    if e.kind() == ErrorKind::NotFound {
        OpenSourceError::FfmpegMissing {
            program: program.to_owned(),
        }
    } else {
        OpenSourceError::Spawn {
            program: program.to_owned(),
            source: e,
        }
    }
}

fn describe(status: ExitStatus) -> String {
    match status.code() {
        Some(code) => format!("exit code {code}"),
        None => format!("{status}"),
    }
}

#[derive(serde::Deserialize)]
struct ProbeOutput {
    #[serde(default)]
    streams: Vec<ProbeStream>,
}

#[derive(serde::Deserialize)]
struct ProbeStream {
    width: Option<u32>,
    height: Option<u32>,
    r_frame_rate: Option<String>,
    #[serde(default)]
    side_data_list: Vec<ProbeSideData>,
    #[serde(default)]
    tags: Option<ProbeTags>,
}

#[derive(serde::Deserialize)]
struct ProbeSideData {
    rotation: Option<f64>,
}

#[derive(serde::Deserialize)]
struct ProbeTags {
    rotate: Option<String>,
}

/// Asks `ffprobe` for the first video stream's size and rate.
fn probe(spec: &str, camera: bool, opts: &SourceOptions) -> Result<VideoInfo, OpenSourceError> {
    let program = opts.ffprobe.to_string_lossy().into_owned();
    let mut cmd = Command::new(&opts.ffprobe);
    cmd.args(["-v", "error", "-select_streams", "v:0"]);
    cmd.args([
        "-show_entries",
        "stream=width,height,r_frame_rate:stream_side_data=rotation:stream_tags=rotate",
        "-of",
        "json",
    ]);
    if camera {
        cmd.args(["-f", "v4l2"]);
    }
    cmd.args(&opts.input_args);
    cmd.arg(spec);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| spawn_error(&program, e))?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take().map(collect_stderr);
    let reader = stdout.map(|mut out| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            // ffprobe's answer is a few hundred bytes; cap what we keep anyway.
            let _ = out.by_ref().take(1 << 20).read_to_end(&mut s);
            s
        })
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < PROBE_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(OpenSourceError::Probe {
                    spec: spec.to_owned(),
                    message: format!(
                        "no answer within {} s; give the frame size instead (--size WxH) to skip probing",
                        PROBE_TIMEOUT.as_secs()
                    ),
                });
            }
            Err(source) => return Err(OpenSourceError::Spawn { program, source }),
        }
    };
    let out = reader.and_then(|h| h.join().ok()).unwrap_or_default();
    let err = stderr.and_then(|h| h.join().ok()).unwrap_or_default();
    let fail = |message: String| OpenSourceError::Probe {
        spec: spec.to_owned(),
        message,
    };
    if !status.success() {
        return Err(fail(format!("{} ({})", err.trim(), describe(status))));
    }
    let parsed: ProbeOutput = serde_json::from_slice(&out)
        .map_err(|e| fail(format!("unexpected ffprobe output: {e}")))?;
    let stream = parsed
        .streams
        .into_iter()
        .next()
        .ok_or_else(|| fail("it has no video stream".to_owned()))?;
    let (Some(mut width), Some(mut height)) = (stream.width, stream.height) else {
        return Err(fail("the video stream has no size".to_owned()));
    };
    // ffmpeg rotates frames as the container says (phone videos); the probe reports
    // the stored size, so swap for quarter turns.
    let rotation = stream
        .side_data_list
        .iter()
        .find_map(|s| s.rotation)
        .or_else(|| {
            stream
                .tags
                .and_then(|t| t.rotate)
                .and_then(|r| r.parse().ok())
        })
        .unwrap_or(0.0);
    if (rotation.round() as i64).rem_euclid(180) == 90 {
        std::mem::swap(&mut width, &mut height);
    }
    let fps = stream.r_frame_rate.as_deref().and_then(parse_rate);
    Ok(VideoInfo { width, height, fps })
}

/// `"30000/1001"` -> 29.97; `None` for `0/0` and junk.
fn parse_rate(s: &str) -> Option<f64> {
    let (num, den) = s.split_once('/')?;
    let (num, den): (f64, f64) = (num.trim().parse().ok()?, den.trim().parse().ok()?);
    (num > 0.0 && den > 0.0).then(|| num / den)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::open_source;
    use std::path::{Path, PathBuf};

    /// Makes a test video with ffmpeg itself; `None` (with a printed skip) when ffmpeg
    /// is absent outside CI. Under CI its absence fails the test.
    fn make_video(dir: &Path, name: &str, frames: u32, rate: u32) -> Option<PathBuf> {
        let path = dir.join(name);
        let status = Command::new("ffmpeg")
            .args([
                "-hide_banner",
                "-loglevel",
                "error",
                "-nostdin",
                "-f",
                "lavfi",
                "-i",
            ])
            .arg(format!("testsrc=size=64x48:rate={rate}"))
            .args([
                "-frames:v",
                &frames.to_string(),
                "-c:v",
                "ffv1",
                "-pix_fmt",
                "yuv444p",
            ])
            .arg(&path)
            .status();
        match status {
            Ok(s) if s.success() => Some(path),
            Ok(s) => panic!("ffmpeg could not make a test video: {s}"),
            Err(e) => {
                splitstream_testkit::skip_or_fail(
                    name,
                    format_args!("ffmpeg not available ({e}; apt-get install ffmpeg)"),
                );
                None
            }
        }
    }

    fn fast() -> SourceOptions {
        SourceOptions {
            pacing: Pacing::AsFastAsPossible,
            ..SourceOptions::default()
        }
    }

    #[test]
    fn video_file_yields_every_frame_at_its_probed_size() {
        let dir = tempfile::tempdir().unwrap();
        let Some(video) = make_video(dir.path(), "clip.mkv", 12, 10) else {
            return;
        };
        let src = open_source(video.to_str().unwrap(), &fast()).unwrap();
        let frames: Vec<_> = src.map(|f| f.unwrap()).collect();
        assert_eq!(frames.len(), 12);
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(f.index, i as u64);
            let Payload::Image(img) = &f.payload else {
                panic!("not an image")
            };
            assert_eq!(img.dimensions(), (64, 48));
        }
        // testsrc draws colour bars: the frame is not flat.
        let Payload::Image(img) = &frames[0].payload else {
            unreachable!()
        };
        let first = img.get_pixel(0, 0);
        assert!(img.pixels().any(|p| p != first));
    }

    #[test]
    fn probe_reports_size_and_rate() {
        let dir = tempfile::tempdir().unwrap();
        let Some(video) = make_video(dir.path(), "clip.mkv", 3, 25) else {
            return;
        };
        let info = probe(video.to_str().unwrap(), false, &fast()).unwrap();
        assert_eq!((info.width, info.height), (64, 48));
        assert_eq!(info.fps, Some(25.0));
    }

    #[test]
    fn asked_size_scales_the_frames() {
        let dir = tempfile::tempdir().unwrap();
        let Some(video) = make_video(dir.path(), "clip.mkv", 4, 10) else {
            return;
        };
        let opts = SourceOptions {
            video_size: Some((32, 20)),
            ..fast()
        };
        let frames: Vec<_> = open_source(video.to_str().unwrap(), &opts)
            .unwrap()
            .map(|f| f.unwrap())
            .collect();
        assert_eq!(frames.len(), 4);
        let Payload::Image(img) = &frames[3].payload else {
            panic!("not an image")
        };
        assert_eq!(img.dimensions(), (32, 20));
    }

    #[test]
    fn realtime_pacing_delivers_frames_at_the_video_rate() {
        let dir = tempfile::tempdir().unwrap();
        let Some(video) = make_video(dir.path(), "clip.mkv", 6, 10) else {
            return;
        };
        let start = Instant::now();
        let n = open_source(video.to_str().unwrap(), &SourceOptions::default())
            .unwrap()
            .count();
        assert_eq!(n, 6);
        // Six frames at 10 fps span at least 0.5 s of video time; unpaced decoding of
        // 64x48 frames takes a few milliseconds.
        assert!(
            start.elapsed() >= Duration::from_millis(450),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn dropping_the_source_kills_ffmpeg() {
        let dir = tempfile::tempdir().unwrap();
        let Some(video) = make_video(dir.path(), "long.mkv", 300, 10) else {
            return;
        };
        // Realtime: ffmpeg would run for 30 s on its own.
        let mut src =
            VideoSource::open(video.to_str().unwrap(), false, &SourceOptions::default()).unwrap();
        assert!(src.next().unwrap().is_ok());
        let pid = src.pid();
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        drop(src);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "ffmpeg {pid} still running"
        );
    }

    #[test]
    fn missing_ffmpeg_says_to_install_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("clip.mp4");
        std::fs::write(&p, b"x").unwrap();
        let opts = SourceOptions {
            ffmpeg: "/nonexistent/ffmpeg".into(),
            ffprobe: "/nonexistent/ffprobe".into(),
            ..fast()
        };
        let err = open_source(p.to_str().unwrap(), &opts).unwrap_err();
        assert!(
            matches!(err, OpenSourceError::FfmpegMissing { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("install"), "{err}");
        let sized = SourceOptions {
            video_size: Some((8, 8)),
            ..opts
        };
        let err = open_source(p.to_str().unwrap(), &sized).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ffmpeg"), "{err}");
    }

    #[test]
    fn corrupt_video_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        if make_video(dir.path(), "probe.mkv", 1, 10).is_none() {
            return;
        }
        let p = dir.path().join("broken.mp4");
        std::fs::write(&p, b"definitely not an mp4 file").unwrap();
        let err = open_source(p.to_str().unwrap(), &fast()).unwrap_err();
        assert!(matches!(err, OpenSourceError::Probe { .. }), "{err}");
        assert!(err.to_string().contains("broken.mp4"), "{err}");
        // With the probe skipped, ffmpeg itself reports the failure on the first frame.
        let opts = SourceOptions {
            video_size: Some((8, 8)),
            ..fast()
        };
        let mut src = open_source(p.to_str().unwrap(), &opts).unwrap();
        let err = src.next().unwrap().unwrap_err();
        assert!(matches!(err, FrameError::Ffmpeg { .. }), "{err}");
        assert!(src.next().is_none());
    }

    #[test]
    fn frame_rates_parse_as_fractions() {
        assert_eq!(parse_rate("10/1"), Some(10.0));
        assert!((parse_rate("30000/1001").unwrap() - 29.97).abs() < 0.01);
        assert_eq!(parse_rate("0/0"), None);
        assert_eq!(parse_rate("abc"), None);
    }

    #[test]
    fn fps_resamples_and_repeat_loops_the_video() {
        let dir = tempfile::tempdir().unwrap();
        let Some(video) = make_video(dir.path(), "clip.mkv", 10, 10) else {
            return;
        };
        // One second of video at 10 fps resampled to 5 fps: 5 frames (6 where an
        // ffmpeg version rounds the last one in).
        let opts = SourceOptions {
            fps: Some(5.0),
            ..fast()
        };
        let n = open_source(video.to_str().unwrap(), &opts).unwrap().count();
        assert!((5..=6).contains(&n), "{n} frames");
        // Looping: more frames than the file holds.
        let opts = SourceOptions {
            repeat: true,
            ..fast()
        };
        let frames: Vec<_> = open_source(video.to_str().unwrap(), &opts)
            .unwrap()
            .take(25)
            .map(|f| f.unwrap())
            .collect();
        assert_eq!(frames.len(), 25);
        assert_eq!(frames[24].index, 24);
    }

    #[test]
    fn slow_consumer_of_a_live_source_gets_the_newest_frames() {
        let dir = tempfile::tempdir().unwrap();
        let Some(video) = make_video(dir.path(), "live.mkv", 200, 100) else {
            return;
        };
        // Treated as live: ffmpeg decodes at full speed while we dawdle.
        let mut src = VideoSource::open(video.to_str().unwrap(), true, &fast()).unwrap();
        let mut yielded = 0u64;
        for f in src.by_ref() {
            assert_eq!(f.unwrap().index, yielded);
            yielded += 1;
            if yielded == 1 {
                std::thread::sleep(Duration::from_millis(400));
            }
        }
        let dropped = src.dropped_frames();
        assert!(
            dropped > 0,
            "a 400 ms stall must skip frames (yielded {yielded})"
        );
        assert_eq!(
            yielded + dropped,
            200,
            "every frame is either yielded or counted dropped"
        );
    }

    #[test]
    fn keep_backlog_gives_a_live_source_every_frame() {
        let dir = tempfile::tempdir().unwrap();
        let Some(video) = make_video(dir.path(), "live.mkv", 30, 100) else {
            return;
        };
        let opts = SourceOptions {
            keep_backlog: true,
            ..fast()
        };
        let mut src = VideoSource::open(video.to_str().unwrap(), true, &opts).unwrap();
        assert!(src.next().unwrap().is_ok());
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(src.by_ref().count(), 29);
        assert_eq!(src.dropped_frames(), 0);
    }

    #[test]
    fn input_args_reach_ffmpeg() {
        let dir = tempfile::tempdir().unwrap();
        let Some(video) = make_video(dir.path(), "clip.mkv", 20, 10) else {
            return;
        };
        // Seek 1.5 s into the 2 s clip: only the last frames are left. (`-ss` is an
        // ffmpeg option, not a demuxer one, so the probe is skipped with a size.)
        let opts = SourceOptions {
            input_args: vec!["-ss".into(), "1.5".into()],
            video_size: Some((64, 48)),
            ..fast()
        };
        let n = open_source(video.to_str().unwrap(), &opts).unwrap().count();
        assert!(n < 20 && n > 0, "{n} frames");
    }
}
