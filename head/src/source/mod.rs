//! Frame input sources for the device.
//!
//! Every source is a streaming iterator of [`Frame`]s that holds at most one decoded
//! frame at a time (plus a pipe buffer for video), so a folder of ten thousand images
//! or an hour of video costs the same memory as one frame.
//!
//! [`open_source`] picks the source from a spec string:
//!
//! | spec | source |
//! | --- | --- |
//! | `rtsp://…`, `rtsps://…`, `rtmp://…`, `http(s)://…`, `udp://…`, `tcp://…`, `srt://…` | live stream through `ffmpeg` ([`VideoSource`]) |
//! | `/dev/video*` | V4L2 camera through `ffmpeg` |
//! | an existing folder | every image in it, sorted by name ([`ImageSource`]) |
//! | a pattern with `*`, `?` or `[` | every image matching it, sorted ([`ImageSource`]) |
//! | `*.mp4`, `*.mkv`, `*.webm`, `*.avi`, `*.mov`, … | video file through `ffmpeg` |
//! | `*.safetensors` | preprocessed tensors `input` `[B,3,H,W]` ([`TensorSource`]) |
//! | `*.png`, `*.jpg`, `*.webp`, `*.bmp`, `*.gif`, `*.tif` | one image |
//! | `*.raw`, `*.aedat4`, `*.aedat`, `dv+tcp://HOST:PORT`, `events:SPEC` | event camera ([`EventFrameSource`]) |
//!
//! Anything else is an [`OpenSourceError::UnknownSpec`] that lists these forms.
//!
//! Event inputs are read by the `splitstream-events` crate (format from the header)
//! and cut into time windows, each one frame in a representation
//! ([`EventOptions`]). `events:` forces the event path for what has no telling
//! extension (`events:rec.bin`, `events:rec.csv`, `events:-` for a pipe on stdin).

mod error;
mod events;
mod feed;
mod ffmpeg;
mod images;
mod pace;
mod tensors;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

pub use error::{FrameError, OpenSourceError};
pub use events::{EventFrameSource, EventOptions, EventRepr};
pub use feed::{spawn_feed, FrameFeed};
pub use ffmpeg::{VideoInfo, VideoSource};
pub use images::ImageSource;
pub use pace::Pacer;
pub use tensors::TensorSource;

/// One input frame: what it holds, where it came from and when it was captured.
#[derive(Clone, Debug)]
pub struct Frame {
    /// Position in the source, from 0, counting only the frames yielded (a skipped
    /// unreadable image does not take a number).
    pub index: u64,
    /// When the frame was read from its source (monotonic; latencies are measured from
    /// here).
    pub captured: Instant,
    /// The same moment on the wall clock, for logs and for the wire header.
    pub captured_wall: SystemTime,
    /// Where the frame came from: the image's path, the video spec, or
    /// `file.safetensors#input[i]`. Shared between frames of one source.
    pub source: Arc<str>,
    /// The frame itself.
    pub payload: Payload,
}

/// What a frame holds.
#[derive(Clone, Debug)]
pub enum Payload {
    /// A decoded picture, 8-bit RGB, at its native size (or the size asked of
    /// `ffmpeg`); preprocessing for a model happens later.
    Image(image::RgbImage),
    /// An already preprocessed model input.
    Tensor(InputTensor),
}

/// A preprocessed model input in f32, row-major `[1, C, H, W]`.
#[derive(Clone, Debug, PartialEq)]
pub struct InputTensor {
    /// `[1, C, H, W]`.
    pub shape: [usize; 4],
    /// `shape.iter().product()` values.
    pub data: Vec<f32>,
}

/// Whether a video source delivers frames at their own rate or as fast as it can.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Pacing {
    /// Frames come at the video's frame rate, as a camera would deliver them (`ffmpeg
    /// -re`). Live sources (cameras, streams) are paced by nature either way.
    #[default]
    Realtime,
    /// Frames come as fast as they are decoded and consumed (benchmarks, batch runs).
    AsFastAsPossible,
}

/// How to open a source. The defaults suit the device binary.
#[derive(Clone, Debug)]
pub struct SourceOptions {
    /// Skip (with a warning) images that cannot be read instead of stopping with an
    /// error. Default false: a bad file in a test set should be seen, not hidden.
    pub skip_unreadable: bool,
    /// Video pacing. Default [`Pacing::Realtime`]: the device is meant to see frames
    /// the way a camera delivers them.
    pub pacing: Pacing,
    /// Ask `ffmpeg` to scale video frames to this size (width, height). Default none:
    /// the size is probed with `ffprobe`. Setting it skips the probe (useful for
    /// cameras, whose probe opens the device twice).
    pub video_size: Option<(u32, u32)>,
    /// Extra `ffmpeg` input options, placed before `-i` and also given to `ffprobe`
    /// (so use demuxer and protocol options, which both accept, or set `video_size`
    /// to skip the probe):
    /// `["-rtsp_transport", "tcp"]` for RTSP through firewalls, `["-input_format",
    /// "mjpeg", "-framerate", "30"]` for a camera. Default none.
    pub input_args: Vec<String>,
    /// The `ffmpeg` program. Default `ffmpeg` on the `PATH`.
    pub ffmpeg: PathBuf,
    /// The `ffprobe` program. Default `ffprobe` on the `PATH`.
    pub ffprobe: PathBuf,
    /// Largest accepted image or video frame side, in pixels. Default 16384: above any
    /// camera, and it caps a decoder's allocation before it happens.
    pub max_side: u32,
    /// Name of the tensor read from a safetensors file. Default `input`.
    pub tensor_name: String,
    /// Start again at the end: image lists, tensors and video files loop forever
    /// (videos through `ffmpeg -stream_loop -1`); live sources ignore it. Default
    /// false. For demos and benchmarks that run for a set time.
    pub repeat: bool,
    /// Give every frame of a live source (camera, stream), however late. Default
    /// false: a live source keeps only the newest decoded frame, so a consumer slower
    /// than the camera gets fresh frames instead of a growing backlog (the skipped
    /// ones are counted by [`VideoSource::dropped_frames`]). Files always give every
    /// frame; `ffmpeg` waits for the consumer.
    pub keep_backlog: bool,
    /// Deliver frames at this rate. Images and tensors, which have no rate of their
    /// own, are released on a [`Pacer`] schedule (a late consumer skips ticks rather
    /// than getting a burst). Video is resampled to this rate by `ffmpeg` (its `fps`
    /// filter drops or repeats frames), paced unless [`Pacing::AsFastAsPossible`].
    /// Default none: images and tensors as fast as consumed, video at its own rate.
    pub fps: Option<f64>,
    /// How event inputs become frames (window, representation, pacing).
    pub events: EventOptions,
}

impl Default for SourceOptions {
    fn default() -> Self {
        Self {
            skip_unreadable: false,
            pacing: Pacing::Realtime,
            video_size: None,
            input_args: Vec::new(),
            ffmpeg: PathBuf::from("ffmpeg"),
            ffprobe: PathBuf::from("ffprobe"),
            max_side: 16_384,
            tensor_name: "input".to_owned(),
            repeat: false,
            keep_backlog: false,
            fps: None,
            events: EventOptions::default(),
        }
    }
}

/// An open source of frames.
#[derive(Debug)]
pub enum Source {
    /// One image, a folder or a glob.
    Images(ImageSource),
    /// A video file, camera or stream through `ffmpeg`.
    Video(VideoSource),
    /// Preprocessed tensors from a safetensors file.
    Tensors(TensorSource),
    /// Time windows of an event camera's stream.
    Events(EventFrameSource),
}

impl Source {
    /// How many frames the source will yield, when known in advance (images and
    /// tensors that do not repeat; never video).
    pub fn len_hint(&self) -> Option<u64> {
        match self {
            Source::Images(s) if !s.repeats() => Some(s.remaining() as u64),
            Source::Tensors(s) if !s.repeats() => Some(s.remaining() as u64),
            _ => None,
        }
    }
}

impl Iterator for Source {
    type Item = Result<Frame, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Source::Images(s) => s.next(),
            Source::Video(s) => s.next(),
            Source::Tensors(s) => s.next(),
            Source::Events(s) => s.next(),
        }
    }
}

/// What kind of source a spec names, decided from its text and the file system.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// A single image file.
    ImageFile(PathBuf),
    /// Every image in a folder (not recursive).
    ImageFolder(PathBuf),
    /// Every image matching a glob pattern.
    ImageGlob(String),
    /// A video file.
    VideoFile(PathBuf),
    /// A live source: a stream URL or a camera device.
    Live(String),
    /// A safetensors file of preprocessed inputs.
    Tensors(PathBuf),
    /// An event recording, pipe or stream (the spec the events crate opens).
    Events(String),
}

/// Extensions read as still images (the formats this crate's `image` build decodes).
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff"];

/// Extensions handed to `ffmpeg` as video files.
pub const VIDEO_EXTENSIONS: &[&str] = &[
    "mp4", "m4v", "mkv", "webm", "avi", "mov", "mpg", "mpeg", "ts", "m2ts", "flv", "wmv", "y4m",
    "ogv", "3gp", "h264", "h265", "hevc", "mjpeg",
];

/// Extensions read as event recordings (the events crate detects the format from the
/// header; `.bin`, `.csv` and `.txt` are too common to claim: write `events:FILE`).
pub const EVENT_EXTENSIONS: &[&str] = &["raw", "aedat4", "aedat"];

/// Prefix that sends any spec to the event path.
pub const EVENTS_PREFIX: &str = "events:";

const URL_SCHEMES: &[&str] = &[
    "rtsp://", "rtsps://", "rtmp://", "rtmps://", "http://", "https://", "udp://", "tcp://",
    "srt://", "rtp://",
];

/// Decides what a spec names. Order matters: URLs and camera devices first (they are
/// not files), then what exists on disk (a folder named `a*b` is a folder), then glob
/// characters, then extensions.
pub fn classify(spec: &str) -> Result<SourceKind, OpenSourceError> {
    let lower = spec.to_ascii_lowercase();
    if let Some(rest) = spec.strip_prefix(EVENTS_PREFIX) {
        return Ok(SourceKind::Events(rest.to_owned()));
    }
    if lower.starts_with(splitstream_events::source::DV_TCP_SCHEME) {
        return Ok(SourceKind::Events(spec.to_owned()));
    }
    if URL_SCHEMES.iter().any(|s| lower.starts_with(s)) {
        return Ok(SourceKind::Live(spec.to_owned()));
    }
    if spec.starts_with("/dev/video") {
        return Ok(SourceKind::Live(spec.to_owned()));
    }
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(SourceKind::ImageFolder(path.to_owned()));
    }
    if !path.exists() && spec.contains(['*', '?', '[']) {
        return Ok(SourceKind::ImageGlob(spec.to_owned()));
    }
    let ext = extension_of(path);
    let kind = match ext.as_deref() {
        Some("safetensors") => SourceKind::Tensors(path.to_owned()),
        Some(e) if VIDEO_EXTENSIONS.contains(&e) => SourceKind::VideoFile(path.to_owned()),
        Some(e) if IMAGE_EXTENSIONS.contains(&e) => SourceKind::ImageFile(path.to_owned()),
        Some(e) if EVENT_EXTENSIONS.contains(&e) => SourceKind::Events(spec.to_owned()),
        _ => {
            return Err(OpenSourceError::UnknownSpec {
                spec: spec.to_owned(),
            })
        }
    };
    if !path.is_file() {
        return Err(OpenSourceError::NotFound {
            path: path.to_owned(),
        });
    }
    Ok(kind)
}

/// Opens the source a spec names (see the module documentation for the forms).
pub fn open_source(spec: &str, opts: &SourceOptions) -> Result<Source, OpenSourceError> {
    let kind = classify(spec)?;
    tracing::debug!(spec, ?kind, "opening source");
    Ok(match kind {
        SourceKind::ImageFile(p) => Source::Images(ImageSource::from_paths(vec![p], opts)),
        SourceKind::ImageFolder(p) => Source::Images(ImageSource::folder(&p, opts)?),
        SourceKind::ImageGlob(g) => Source::Images(ImageSource::glob(&g, opts)?),
        SourceKind::VideoFile(p) => {
            let spec = p.to_string_lossy().into_owned();
            Source::Video(VideoSource::open(&spec, false, opts)?)
        }
        SourceKind::Live(url) => Source::Video(VideoSource::open(&url, true, opts)?),
        SourceKind::Tensors(p) => Source::Tensors(TensorSource::open(&p, opts)?),
        SourceKind::Events(spec) => Source::Events(EventFrameSource::open(&spec, &opts.events)?),
    })
}

/// A frame size as written on a command line.
#[derive(Debug, thiserror::Error)]
#[error("bad frame size {0:?}: write WIDTHxHEIGHT, e.g. 640x480")]
pub struct ParseSizeError(String);

/// Parses `640x480` (or `640X480`) into (width, height); both must be positive.
pub fn parse_size(s: &str) -> Result<(u32, u32), ParseSizeError> {
    let bad = || ParseSizeError(s.to_owned());
    let (w, h) = s.trim().split_once(['x', 'X']).ok_or_else(bad)?;
    let w: u32 = w.trim().parse().map_err(|_| bad())?;
    let h: u32 = h.trim().parse().map_err(|_| bad())?;
    if w == 0 || h == 0 {
        return Err(bad());
    }
    Ok((w, h))
}

/// The lower-case extension of a path, if it has one.
pub(crate) fn extension_of(path: &Path) -> Option<String> {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
}

/// A fresh capture timestamp pair.
pub(crate) fn now_pair() -> (Instant, SystemTime) {
    (Instant::now(), SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_from_width_x_height() {
        assert_eq!(parse_size("640x480").unwrap(), (640, 480));
        assert_eq!(parse_size(" 32X24 ").unwrap(), (32, 24));
        for bad in ["640", "0x480", "x", "640x-1", "axb", ""] {
            let err = parse_size(bad).unwrap_err();
            assert!(err.to_string().contains("WIDTHxHEIGHT"), "{bad}: {err}");
        }
    }

    #[test]
    fn urls_and_cameras_are_live_sources() {
        for spec in [
            "rtsp://cam.local/stream1",
            "HTTPS://x/y.m3u8",
            "/dev/video0",
            "udp://0.0.0.0:5000",
        ] {
            assert_eq!(
                classify(spec).unwrap(),
                SourceKind::Live(spec.to_owned()),
                "{spec}"
            );
        }
    }

    #[test]
    fn existing_files_are_classified_by_extension() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("a.PNG", "image"),
            ("b.jpeg", "image"),
            ("c.mp4", "video"),
            ("d.mkv", "video"),
            ("e.safetensors", "tensors"),
        ];
        for (name, want) in cases {
            let p = dir.path().join(name);
            std::fs::write(&p, b"x").unwrap();
            let got = classify(p.to_str().unwrap()).unwrap();
            let kind = match got {
                SourceKind::ImageFile(_) => "image",
                SourceKind::VideoFile(_) => "video",
                SourceKind::Tensors(_) => "tensors",
                other => panic!("{name}: {other:?}"),
            };
            assert_eq!(kind, want, "{name}");
        }
        assert_eq!(
            classify(dir.path().to_str().unwrap()).unwrap(),
            SourceKind::ImageFolder(dir.path().to_owned())
        );
    }

    #[test]
    fn glob_characters_make_a_glob_unless_the_path_exists() {
        let dir = tempfile::tempdir().unwrap();
        let pattern = format!("{}/*.png", dir.path().display());
        assert_eq!(
            classify(&pattern).unwrap(),
            SourceKind::ImageGlob(pattern.clone())
        );
        let odd = dir.path().join("weird[1]");
        std::fs::create_dir(&odd).unwrap();
        assert_eq!(
            classify(odd.to_str().unwrap()).unwrap(),
            SourceKind::ImageFolder(odd.clone())
        );
    }

    #[test]
    fn unknown_spec_is_an_error_that_lists_what_works() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("notes.txt");
        std::fs::write(&p, b"hello").unwrap();
        let err = classify(p.to_str().unwrap()).unwrap_err();
        assert!(matches!(err, OpenSourceError::UnknownSpec { .. }));
        let msg = err.to_string();
        assert!(
            msg.contains("notes.txt") && msg.contains("rtsp://") && msg.contains(".safetensors"),
            "{msg}"
        );
    }

    #[test]
    fn missing_file_with_known_extension_names_the_file() {
        let err = classify("/nonexistent/dir/clip.mp4").unwrap_err();
        assert!(matches!(err, OpenSourceError::NotFound { .. }));
        assert!(err.to_string().contains("/nonexistent/dir/clip.mp4"));
    }
}
