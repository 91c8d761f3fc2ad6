//! `splitstream events ...`: inspect, convert, render and synthesise event-camera
//! recordings. Thin over `splitstream-events`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use splitstream_events::formats::aedat4::Compression;
use splitstream_events::formats::text::CsvWriter;
use splitstream_events::npy::NpyWriter;
use splitstream_events::render::{accumulate_rgb, write_png};
use splitstream_events::video::{ffmpeg::Frames, DvsConfig, DvsSimulator};
use splitstream_events::{encode, open, Event, EventReader, Format, SourceOptions};

/// `splitstream events` subcommands.
#[derive(clap::Subcommand)]
pub(crate) enum Command {
    /// Print a recording's format, sensor, resolution, duration, event count and rate.
    #[command(
        after_help = "Examples:\n  splitstream events inspect recording.raw\n  splitstream events inspect capture.aedat4 --json\n  cat recording.raw | splitstream events inspect -"
    )]
    Inspect {
        /// Recording: a file, `-` for stdin, or dv+tcp://HOST:PORT.
        input: String,
        #[command(flatten)]
        input_opts: InputOpts,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Convert a recording to .npy (t <i8, x <i2, y <i2, p u1), .csv (t,x,y,p) or .aedat4.
    #[command(
        after_help = "Examples:\n  splitstream events convert recording.raw events.npy\n  splitstream events convert capture.aedat4 events.csv\n  splitstream events convert dv+tcp://127.0.0.1:7777 live.npy"
    )]
    Convert {
        /// Recording: a file, `-` for stdin, or dv+tcp://HOST:PORT.
        input: String,
        /// Output file; its extension picks the format (.npy, .csv, .aedat4).
        output: PathBuf,
        #[command(flatten)]
        input_opts: InputOpts,
    },
    /// Render PNG frames of events accumulated over fixed windows.
    #[command(
        after_help = "Examples:\n  splitstream events render recording.raw --out frames/\n  splitstream events render recording.raw --out frames/ --window-ms 10 --max-frames 5"
    )]
    Render {
        /// Recording: a file, `-` for stdin, or dv+tcp://HOST:PORT.
        input: String,
        /// Directory for frame_00000.png, frame_00001.png, ...
        #[arg(long)]
        out: PathBuf,
        /// Length of the window each frame accumulates, milliseconds.
        #[arg(long, default_value_t = 33.0)]
        window_ms: f64,
        /// Stop after this many frames.
        #[arg(long, default_value_t = 100)]
        max_frames: usize,
        /// Sensor size WxH, when the recording does not declare it.
        #[arg(long, value_parser = parse_size)]
        size: Option<(u16, u16)>,
        #[command(flatten)]
        input_opts: InputOpts,
    },
    /// Make events from an ordinary video (v2e/ESIM-style DVS simulation through ffmpeg).
    #[command(
        after_help = "Examples:\n  splitstream events from-video clip.mp4 clip.npy\n  splitstream events from-video clip.mp4 clip.aedat4 --width 346 --threshold 0.3 --shot-noise-hz 0.1 --seed 7"
    )]
    FromVideo {
        /// Video file ffmpeg can read.
        video: PathBuf,
        /// Output file (.npy, .csv, .aedat4).
        output: PathBuf,
        /// Scale frames to this width (height keeps the aspect ratio).
        #[arg(long)]
        width: Option<u16>,
        /// Contrast threshold for ON and OFF events (log-intensity units).
        #[arg(long, default_value_t = 0.2)]
        threshold: f32,
        /// Spread (standard deviation) of per-pixel thresholds.
        #[arg(long, default_value_t = 0.03)]
        threshold_sigma: f32,
        /// Refractory period, microseconds.
        #[arg(long, default_value_t = 0)]
        refractory_us: i64,
        /// Leak events, thresholds per second.
        #[arg(long, default_value_t = 0.0)]
        leak_hz: f32,
        /// Shot noise, events per pixel per second.
        #[arg(long, default_value_t = 0.0)]
        shot_noise_hz: f32,
        /// Seed for thresholds and noise.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

/// How to read the input.
#[derive(clap::Args)]
pub(crate) struct InputOpts {
    /// Decode as this format instead of detecting it: evt2, evt21, evt3, aedat4,
    /// aedat2, aedat31, nbin, text, npy.
    #[arg(long, value_parser = parse_format)]
    format: Option<Format>,
    /// Play back at recorded speed.
    #[arg(long)]
    realtime: bool,
    /// Keep reading the file as it grows; stop after this many seconds without growth.
    #[arg(long, value_name = "IDLE_SECS")]
    follow: Option<f64>,
}

impl InputOpts {
    fn options(&self) -> SourceOptions {
        SourceOptions {
            format: self.format,
            realtime: self.realtime,
            follow: self.follow.map(|idle| splitstream_events::source::Follow {
                idle_timeout: Some(std::time::Duration::from_secs_f64(idle.max(0.0))),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

fn parse_format(s: &str) -> Result<Format, String> {
    Ok(
        match s.to_ascii_lowercase().replace(['.', ' ', '-'], "").as_str() {
            "evt2" | "evt20" => Format::Evt2,
            "evt21" => Format::Evt21,
            "evt3" | "evt30" => Format::Evt3,
            "aedat4" | "aedat40" => Format::Aedat4,
            "aedat2" | "aedat20" => Format::Aedat2,
            "aedat31" | "aedat3" => Format::Aedat31,
            "nbin" | "nmnist" | "bin" => Format::NBin,
            "text" | "csv" | "txt" => Format::Text,
            "npy" => Format::Npy,
            _ => {
                return Err(format!(
                "unknown format `{s}`: evt2, evt21, evt3, aedat4, aedat2, aedat31, nbin, text, npy"
            ))
            }
        },
    )
}

fn parse_size(s: &str) -> Result<(u16, u16), String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or("expected WxH, e.g. 640x480")?;
    Ok((
        w.parse().map_err(|_| "bad width")?,
        h.parse().map_err(|_| "bad height")?,
    ))
}

pub(crate) fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Inspect {
            input,
            input_opts,
            json,
        } => inspect(&input, &input_opts.options(), json),
        Command::Convert {
            input,
            output,
            input_opts,
        } => convert(&input, &output, &input_opts.options()),
        Command::Render {
            input,
            out,
            window_ms,
            max_frames,
            size,
            input_opts,
        } => render(
            &input,
            &out,
            window_ms,
            max_frames,
            size,
            &input_opts.options(),
        ),
        Command::FromVideo {
            video,
            output,
            width,
            threshold,
            threshold_sigma,
            refractory_us,
            leak_hz,
            shot_noise_hz,
            seed,
        } => {
            let cfg = DvsConfig {
                pos_threshold: threshold,
                neg_threshold: threshold,
                threshold_sigma,
                refractory_us,
                leak_rate_hz: leak_hz,
                shot_noise_rate_hz: shot_noise_hz,
                seed,
                ..Default::default()
            };
            from_video(&video, &output, width, cfg)
        }
    }
}

fn open_input(input: &str, options: &SourceOptions) -> anyhow::Result<Box<dyn EventReader>> {
    open(input, options).with_context(|| format!("cannot open {input}"))
}

/// A spinner with a running count; hidden when stderr is not a terminal.
fn progress(what: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(what.to_string());
    bar
}

fn inspect(input: &str, options: &SourceOptions, json: bool) -> anyhow::Result<()> {
    let mut reader = open_input(input, options)?;
    let info = reader.info().clone();
    let bar = progress("reading");
    let start = Instant::now();
    let (mut count, mut on, mut first, mut last, mut max_x, mut max_y, mut backwards) =
        (0u64, 0u64, None, 0i64, 0u16, 0u16, 0u64);
    let mut batch = Vec::new();
    while reader
        .read_batch(&mut batch)
        .with_context(|| format!("decoding {input}"))?
        > 0
    {
        for e in &batch {
            first.get_or_insert(e.t);
            if e.t < last {
                backwards += 1;
            }
            last = e.t;
            on += u64::from(e.p);
            max_x = max_x.max(e.x);
            max_y = max_y.max(e.y);
        }
        count += batch.len() as u64;
        bar.set_message(format!("{count} events"));
        bar.tick();
    }
    bar.finish_and_clear();
    let decode_s = start.elapsed().as_secs_f64();
    let duration_us = first.map_or(0, |f| last - f);
    let rate = if duration_us > 0 {
        count as f64 / (duration_us as f64 * 1e-6)
    } else {
        0.0
    };
    let resolution = info.resolution();
    if json {
        let value = serde_json::json!({
            "input": input,
            "format": info.format.name(),
            "sensor": info.sensor,
            "width": info.width,
            "height": info.height,
            "observed_max_x": max_x,
            "observed_max_y": max_y,
            "events": count,
            "on_events": on,
            "first_t_us": first,
            "last_t_us": first.map(|_| last),
            "duration_us": duration_us,
            "event_rate_per_s": rate,
            "timestamps_going_backwards": backwards,
            "decode_seconds": decode_s,
            "metadata": info.metadata.iter().map(|(k, v)| serde_json::json!([k, v])).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    // Written in one go; a closed pipe (`| head`) is not an error.
    use std::fmt::Write as _;
    let mut text = String::new();
    let _ = writeln!(text, "input       {input}");
    let _ = writeln!(text, "format      {}", info.format);
    let _ = writeln!(
        text,
        "sensor      {}",
        info.sensor.as_deref().unwrap_or("(not declared)")
    );
    match resolution {
        Some((w, h)) => {
            let _ = writeln!(text, "resolution  {w}x{h}");
        }
        None => {
            let _ = writeln!(
                text,
                "resolution  (not declared; events span {}x{})",
                u32::from(max_x) + 1,
                u32::from(max_y) + 1
            );
        }
    }
    let _ = writeln!(
        text,
        "events      {count} ({:.1}% ON)",
        if count > 0 {
            on as f64 * 100.0 / count as f64
        } else {
            0.0
        }
    );
    match first {
        Some(f) => {
            let _ = writeln!(
                text,
                "time        {f} .. {last} us ({:.6} s)",
                duration_us as f64 * 1e-6
            );
        }
        None => {
            let _ = writeln!(text, "time        (no events)");
        }
    }
    let _ = writeln!(text, "rate        {:.3} Mev/s of recording", rate / 1e6);
    if backwards > 0 {
        let _ = writeln!(text, "warning     {backwards} timestamps go backwards");
    }
    for (k, v) in &info.metadata {
        let _ = writeln!(text, "  {k}: {v}");
    }
    match std::io::stdout().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Where converted events go.
enum Sink {
    Npy(NpyWriter<BufWriter<File>>),
    Csv(CsvWriter<BufWriter<File>>),
    Aedat4(BufWriter<File>),
}

impl Sink {
    fn create(path: &Path, size: Option<(u16, u16)>) -> anyhow::Result<Self> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        let file = || -> anyhow::Result<BufWriter<File>> {
            Ok(BufWriter::new(File::create(path).with_context(|| {
                format!("cannot create {}", path.display())
            })?))
        };
        Ok(match ext.as_str() {
            "npy" => Sink::Npy(NpyWriter::new(file()?)?),
            "csv" | "txt" => Sink::Csv(CsvWriter::new(file()?)?),
            "aedat4" => {
                let Some((w, h)) = size else {
                    bail!("the input declares no sensor size, which an .aedat4 file must state; convert to .npy or .csv instead")
                };
                let mut out = file()?;
                out.write_all(&encode::aedat4(&[], w, h, Compression::Zstd, 1, true))?;
                Sink::Aedat4(out)
            }
            other => bail!("cannot write `.{other}`: the output must end in .npy, .csv or .aedat4"),
        })
    }

    fn write(&mut self, events: &[Event]) -> anyhow::Result<()> {
        match self {
            Sink::Npy(w) => w.write(events)?,
            Sink::Csv(w) => w.write(events)?,
            Sink::Aedat4(w) => {
                for chunk in events.chunks(10_000) {
                    w.write_all(&encode::aedat4_packet(chunk, Compression::Zstd))?;
                }
            }
        }
        Ok(())
    }

    fn finish(self) -> anyhow::Result<()> {
        match self {
            Sink::Npy(w) => w.finish()?.flush()?,
            Sink::Csv(w) => w.finish()?.flush()?,
            Sink::Aedat4(mut w) => w.flush()?,
        }
        Ok(())
    }
}

fn convert(input: &str, output: &Path, options: &SourceOptions) -> anyhow::Result<()> {
    let mut reader = open_input(input, options)?;
    let mut sink = Sink::create(output, reader.info().resolution())?;
    let bar = progress("converting");
    let mut batch = Vec::new();
    let mut count = 0u64;
    while reader
        .read_batch(&mut batch)
        .with_context(|| format!("decoding {input}"))?
        > 0
    {
        sink.write(&batch)
            .with_context(|| format!("writing {}", output.display()))?;
        count += batch.len() as u64;
        bar.set_message(format!("{count} events"));
        bar.tick();
    }
    sink.finish()?;
    bar.finish_and_clear();
    eprintln!("wrote {count} events to {}", output.display());
    Ok(())
}

fn render(
    input: &str,
    out: &Path,
    window_ms: f64,
    max_frames: usize,
    size: Option<(u16, u16)>,
    options: &SourceOptions,
) -> anyhow::Result<()> {
    if window_ms.is_nan() || window_ms <= 0.0 {
        bail!("--window-ms must be positive");
    }
    let mut reader = open_input(input, options)?;
    let Some((w, h)) = size.or(reader.info().resolution()) else {
        bail!("{input} does not declare its sensor size: pass --size WxH");
    };
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let window = (window_ms * 1000.0).round() as i64;
    let bar = ProgressBar::new(max_frames as u64);
    let mut frame: Vec<Event> = Vec::new();
    let mut end: Option<i64> = None;
    let mut written = 0usize;
    let mut batch = Vec::new();
    let flush = |events: &mut Vec<Event>, written: &mut usize| -> anyhow::Result<()> {
        let path = out.join(format!("frame_{:05}.png", *written));
        write_png(&path, w, h, &accumulate_rgb(events, w, h))?;
        events.clear();
        *written += 1;
        bar.inc(1);
        Ok(())
    };
    'read: while reader
        .read_batch(&mut batch)
        .with_context(|| format!("decoding {input}"))?
        > 0
    {
        for &e in &batch {
            let frame_end = *end.get_or_insert(e.t + window);
            if e.t >= frame_end {
                flush(&mut frame, &mut written)?;
                if written >= max_frames {
                    break 'read;
                }
                end = Some(frame_end + window * ((e.t - frame_end) / window + 1));
            }
            frame.push(e);
        }
    }
    if written < max_frames && !frame.is_empty() {
        flush(&mut frame, &mut written)?;
    }
    bar.finish_and_clear();
    eprintln!(
        "wrote {written} frames of {window_ms} ms ({w}x{h}) to {}",
        out.display()
    );
    Ok(())
}

fn from_video(
    video: &Path,
    output: &Path,
    width: Option<u16>,
    cfg: DvsConfig,
) -> anyhow::Result<()> {
    let mut frames = Frames::open(video, width)?;
    let info = frames.info();
    let mut sim = DvsSimulator::new(info.width, info.height, cfg);
    let mut sink = Sink::create(output, Some((info.width, info.height)))?;
    let bar = progress("simulating");
    let mut gray = Vec::new();
    let mut events = Vec::new();
    let (mut n_frames, mut count) = (0u64, 0u64);
    while let Some(t) = frames.next_frame(&mut gray)? {
        events.clear();
        sim.push_frame(&gray, t, &mut events)?;
        sink.write(&events)?;
        n_frames += 1;
        count += events.len() as u64;
        bar.set_message(format!("{n_frames} frames, {count} events"));
        bar.tick();
    }
    sink.finish()?;
    bar.finish_and_clear();
    eprintln!(
        "{n_frames} frames ({}x{} at {:.2} fps) -> {count} events in {}",
        info.width,
        info.height,
        info.fps,
        output.display()
    );
    Ok(())
}
