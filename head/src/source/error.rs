//! Errors of opening a source and of reading a frame from it.

use std::path::PathBuf;

/// Why a source could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenSourceError {
    /// The spec is none of the forms a source understands.
    #[error(
        "don't know how to read {spec:?}: give an image (.png .jpg .jpeg .webp .bmp .gif .tif), \
         a folder of images, a glob (\"frames/*.png\"), a video file (.mp4 .mkv .webm .avi .mov ...), \
         a stream URL (rtsp:// rtmp:// http(s):// udp:// srt://), a camera (/dev/video0) \
         a .safetensors file with a tensor \"input\" [B,3,H,W], an event recording \
         (.raw .aedat4 .aedat, or events:FILE for .bin/.csv/.txt), events:- for a pipe on \
         stdin, or dv+tcp://HOST:PORT"
    )]
    UnknownSpec {
        /// The spec as given.
        spec: String,
    },
    /// A file the spec names does not exist.
    #[error("{}: no such file", path.display())]
    NotFound {
        /// The missing file.
        path: PathBuf,
    },
    /// A folder could not be listed.
    #[error("cannot list folder {}: {source}", path.display())]
    ListFolder {
        /// The folder.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A glob pattern is malformed.
    #[error("bad glob pattern {pattern:?}: {source}")]
    BadGlob {
        /// The pattern.
        pattern: String,
        /// What is wrong with it.
        #[source]
        source: glob::PatternError,
    },
    /// A folder or glob holds no images.
    #[error("{what} holds no images (looked for .png .jpg .jpeg .webp .bmp .gif .tif .tiff)")]
    NoImages {
        /// The folder or the pattern.
        what: String,
    },
    /// `ffmpeg` or `ffprobe` is not installed (or not where the options say).
    #[error(
        "{program} not found: install FFmpeg (Debian/Ubuntu: apt-get install ffmpeg; macOS: \
         brew install ffmpeg) or point the device at it (--ffmpeg / --ffprobe)"
    )]
    FfmpegMissing {
        /// The program that was looked for.
        program: String,
    },
    /// `ffmpeg` or `ffprobe` could not be started for another reason.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// `ffprobe` could not tell the video's size.
    #[error("ffprobe could not read {spec:?}: {message}")]
    Probe {
        /// The video spec.
        spec: String,
        /// What ffprobe said, or what was wrong with its answer.
        message: String,
    },
    /// A size (probed or asked for) is zero or above the limit.
    #[error("{spec:?}: frame size {width}x{height} is outside 1..={max} per side")]
    BadSize {
        /// The video spec.
        spec: String,
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// The limit (`SourceOptions::max_side`).
        max: u32,
    },
    /// A safetensors file could not be read or is malformed.
    #[error("{}: {message}", path.display())]
    Tensors {
        /// The file.
        path: PathBuf,
        /// What is wrong, and what to do.
        message: String,
    },
    /// An event source could not be opened (unknown format, bad header, no
    /// connection).
    #[error("event input {spec:?}: {source}")]
    Events {
        /// The spec as given.
        spec: String,
        /// The events crate's error.
        #[source]
        source: splitstream_events::OpenError,
    },
    /// An event stream's header does not declare its sensor size.
    #[error("event input {spec:?} does not declare its sensor size: give it (--event-size WIDTHxHEIGHT)")]
    EventSize {
        /// The spec as given.
        spec: String,
    },
    /// Another I/O error while opening.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Why the next frame could not be read. The source may still yield further frames
/// after an [`FrameError::Image`] (the next file); after the others it is finished.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// An image file could not be read or decoded.
    #[error("cannot read image {}: {source} (use --skip-unreadable to skip such files)", path.display())]
    Image {
        /// The file.
        path: PathBuf,
        /// The decoder's error.
        #[source]
        source: image::ImageError,
    },
    /// `ffmpeg` stopped with an error.
    #[error("ffmpeg failed on {spec:?} ({status}): {stderr}")]
    Ffmpeg {
        /// The video spec.
        spec: String,
        /// Its exit status.
        status: String,
        /// The end of what it printed on stderr.
        stderr: String,
    },
    /// The video ended in the middle of a frame.
    #[error("{spec:?} ended in the middle of a frame ({got} of {want} bytes)")]
    TruncatedFrame {
        /// The video spec.
        spec: String,
        /// Bytes received of the last frame.
        got: usize,
        /// Bytes a frame has.
        want: usize,
    },
    /// An event stream could not be decoded further.
    #[error("reading events from {spec:?}: {source}")]
    Events {
        /// The spec.
        spec: String,
        /// The events crate's error.
        #[source]
        source: splitstream_events::ReadError,
    },
    /// Reading the pipe or file failed.
    #[error("reading {what}: {source}")]
    Io {
        /// The video spec or file.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}
