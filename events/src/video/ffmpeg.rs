//! Frames from a video file through an `ffmpeg` subprocess: `ffprobe` reads the size
//! and frame rate, `ffmpeg` decodes to raw RGB on a pipe, and each frame becomes
//! grayscale (BT.601 luma) with its timestamp. No video codec is linked into the
//! binary; any format ffmpeg reads works.

use std::io::Read;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};

/// Getting frames from ffmpeg failed.
#[derive(Debug, thiserror::Error)]
pub enum VideoError {
    /// ffmpeg or ffprobe could not be started.
    #[error("cannot run {tool}: {source}; install ffmpeg (e.g. `apt-get install ffmpeg`)")]
    Missing {
        /// The program.
        tool: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// ffprobe did not describe a video stream.
    #[error("ffprobe found no usable video stream in {path}: {reason}")]
    Probe {
        /// The video.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// Reading the decoded frames failed.
    #[error("reading frames from ffmpeg failed: {0}")]
    Io(#[from] std::io::Error),
    /// ffmpeg ended with an error.
    #[error("ffmpeg failed: {0}")]
    Ffmpeg(String),
}

/// Size and rate of a video stream.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VideoInfo {
    /// Width of the frames handed out.
    pub width: u16,
    /// Height of the frames handed out.
    pub height: u16,
    /// Frames per second.
    pub fps: f64,
}

/// Asks ffprobe for the first video stream's size and frame rate.
pub fn probe(path: &Path) -> Result<VideoInfo, VideoError> {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=width,height,avg_frame_rate,r_frame_rate",
            "-of",
            "default=noprint_wrappers=1",
        ])
        .arg(path)
        .output()
        .map_err(|source| VideoError::Missing {
            tool: "ffprobe",
            source,
        })?;
    let bad = |reason: String| VideoError::Probe {
        path: path.display().to_string(),
        reason,
    };
    if !out.status.success() {
        return Err(bad(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut width = None;
    let mut height = None;
    let mut fps = None;
    for line in text.lines() {
        match line.split_once('=') {
            Some(("width", v)) => width = v.trim().parse::<u16>().ok(),
            Some(("height", v)) => height = v.trim().parse::<u16>().ok(),
            Some(("avg_frame_rate" | "r_frame_rate", v)) if fps.is_none() => {
                fps = parse_rate(v.trim())
            }
            _ => {}
        }
    }
    match (width, height, fps) {
        (Some(width), Some(height), Some(fps)) if width > 0 && height > 0 => {
            Ok(VideoInfo { width, height, fps })
        }
        _ => Err(bad(format!("unexpected ffprobe output: {}", text.trim()))),
    }
}

fn parse_rate(s: &str) -> Option<f64> {
    let (n, d) = s.split_once('/').unwrap_or((s, "1"));
    let (n, d): (f64, f64) = (n.parse().ok()?, d.parse().ok()?);
    (n > 0.0 && d > 0.0).then_some(n / d)
}

/// Decoded grayscale frames of a video, one at a time.
pub struct Frames {
    child: Child,
    stdout: ChildStdout,
    info: VideoInfo,
    index: u64,
    rgb: Vec<u8>,
}

impl Frames {
    /// Starts ffmpeg on `path`, scaling to `width` (height keeps the aspect ratio, even)
    /// when given.
    pub fn open(path: &Path, width: Option<u16>) -> Result<Self, VideoError> {
        let mut info = probe(path)?;
        let mut cmd = Command::new("ffmpeg");
        cmd.args(["-v", "error", "-nostdin", "-i"]).arg(path);
        if let Some(w) = width {
            let h = ((f64::from(info.height) * f64::from(w) / f64::from(info.width)) / 2.0).round()
                as u16
                * 2;
            cmd.args(["-vf", &format!("scale={w}:{h}")]);
            info.width = w;
            info.height = h.max(2);
        }
        cmd.args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| VideoError::Missing {
            tool: "ffmpeg",
            source,
        })?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| VideoError::Ffmpeg("no stdout pipe".into()))?;
        let bytes = usize::from(info.width) * usize::from(info.height) * 3;
        Ok(Self {
            child,
            stdout,
            info,
            index: 0,
            rgb: vec![0; bytes],
        })
    }

    /// Size and rate of the frames.
    pub fn info(&self) -> VideoInfo {
        self.info
    }

    /// The next frame as luma (0..255) and its time in microseconds; `None` at the end.
    pub fn next_frame(&mut self, gray: &mut Vec<f32>) -> Result<Option<i64>, VideoError> {
        let mut filled = 0;
        while filled < self.rgb.len() {
            match self.stdout.read(&mut self.rgb[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        if filled < self.rgb.len() {
            let status = self.child.wait()?;
            if !status.success() {
                let mut err = String::new();
                if let Some(mut s) = self.child.stderr.take() {
                    let _ = s.read_to_string(&mut err);
                }
                return Err(VideoError::Ffmpeg(err.trim().to_string()));
            }
            return Ok(None);
        }
        gray.clear();
        gray.extend(
            self.rgb.chunks_exact(3).map(|p| {
                0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2])
            }),
        );
        let t = (self.index as f64 * 1e6 / self.info.fps).round() as i64;
        self.index += 1;
        Ok(Some(t))
    }
}

impl Drop for Frames {
    fn drop(&mut self) {
        // Stop a decoder we no longer read from (ours: this child process only).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
