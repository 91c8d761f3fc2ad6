//! `splitstream report RUN.jsonl`: a run record (`--record FILE` of the device, the
//! edge, `splitstream-bench e2e`, `splitstream generate`, the demo) as a summary table
//! and two pictures: `timeline.png` (power, temperatures, CPU frequency and memory over
//! time, the stages' spans shaded behind) and `stages.png` (each stage's spans, their
//! median and 95th percentile). The figures come from
//! `splitstream_power::record::Summary`, so the table and `--json` say the same.

use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::coord::Shift;
use plotters::prelude::*;
use splitstream_power::record::{self, Run, Summary};

/// Arguments of `splitstream report`.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  # a device run recorded, then drawn into run-report/
  splitstream-device --weights vit.safetensors --input 'frames/*.jpg' --mode local \\
      --record run.jsonl
  splitstream report run.jsonl

  # the table as JSON, pictures elsewhere
  splitstream report run.jsonl --out /tmp/pictures --json

The table gives, per stage, spans, median and 95th-percentile ms (and tokens/s for a
language model's prefill and decode), then frames, energy per frame and per token,
peak memory, the hottest temperature and the mean CPU frequency. docs/runrecord.md
says what each field means and how to read the pictures.")]
pub(crate) struct Args {
    /// The run record (JSON lines, from --record FILE).
    #[arg(value_name = "RUN.jsonl")]
    record: PathBuf,
    /// Folder for timeline.png and stages.png (default: RUN-report beside the record).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Print the summary as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Only the summary; no pictures.
    #[arg(long, conflicts_with = "out")]
    no_plots: bool,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let run = record::read(&args.record)?;
    let summary = Summary::of(&run);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{summary}");
    }
    if args.no_plots {
        return Ok(());
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| default_out(&args.record));
    std::fs::create_dir_all(&out)
        .with_context(|| format!("--out {}: cannot create the folder", out.display()))?;
    let text = load_font();
    if !text {
        eprintln!(
            "note: no TrueType font found (looked for DejaVu/Liberation/Noto Sans; set \
             SPLITSTREAM_FONT=FILE.ttf): pictures are drawn without text"
        );
    }
    let timeline = out.join("timeline.png");
    draw_timeline(&timeline, &run, text)?;
    let stages = out.join("stages.png");
    draw_stages(&stages, &summary, &run, text)?;
    eprintln!("wrote {} and {}", timeline.display(), stages.display());
    Ok(())
}

/// `run.jsonl` -> `run-report` in the same folder.
fn default_out(record: &Path) -> PathBuf {
    let stem = record.file_stem().and_then(|s| s.to_str()).unwrap_or("run");
    record.with_file_name(format!("{stem}-report"))
}

/// Picture sizes in pixels.
const TIMELINE: (u32, u32) = (1200, 1000);
const STAGES: (u32, u32) = (1000, 560);

/// Line colours: matplotlib's ten, which readers know.
const COLOURS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Each stage's colour, fixed by name so two reports shade the same stage alike.
fn stage_colour(name: &str) -> RGBColor {
    let i = match name {
        "preprocess" => 7,
        "head" => 0,
        "encode" => 1,
        "send" => 2,
        "edge" => 9,
        "decode" => 4,
        "tail" => 3,
        "prefill" => 5,
        "load" => 8,
        other => 6 + other.len() % 4,
    };
    COLOURS[i % COLOURS.len()]
}

/// Whether a stage marks a part of the run (drawn as a boundary, not shaded).
fn is_phase(name: &str) -> bool {
    name.starts_with(record::PHASE)
}

/// Registers a TrueType font for text: `SPLITSTREAM_FONT`, else a common system sans.
/// Whether one was found.
fn load_font() -> bool {
    let candidates = std::env::var_os("SPLITSTREAM_FONT")
        .map(PathBuf::from)
        .into_iter()
        .chain(
            [
                "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
                "/usr/share/fonts/TTF/DejaVuSans.ttf",
                "/usr/share/fonts/dejavu/DejaVuSans.ttf",
                "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
                "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
                "/System/Library/Fonts/Supplemental/Arial.ttf",
            ]
            .map(PathBuf::from),
        );
    for path in candidates {
        // Capped: ab_glyph keeps the font for the life of the process.
        if std::fs::metadata(&path).map_or(true, |m| m.len() > 64 << 20) {
            continue;
        }
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
            return true;
        }
    }
    false
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("drawing: {e}")
}

/// Draws into an RGB buffer of `size` and writes it as PNG (through `image`, not
/// plotters' own encoder, which would pull a second `image` version).
fn draw_png(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut buf = vec![0u8; size.0 as usize * size.1 as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        draw(&root)?;
        root.present().map_err(err)?;
    }
    let img = image::RgbImage::from_raw(size.0, size.1, buf)
        .context("picture buffer has the wrong size")?;
    img.save(path)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// One panel's series: a name and its (t, y) points.
type Series = (String, Vec<(f64, f64)>);

/// The timeline: four panels over the run's time, the stages' spans shaded behind each.
fn draw_timeline(path: &Path, run: &Run, text: bool) -> anyhow::Result<()> {
    let t_max = Summary::of(run).duration_s.max(1e-3);
    let watts: Vec<Series> = vec![(
        format!("{} W", run.header.power.source),
        run.samples
            .iter()
            .filter_map(|s| s.watts.map(|w| (s.t_s, w)))
            .collect(),
    )];
    let temps: Vec<Series> = run
        .header
        .temperatures
        .iter()
        .enumerate()
        .map(|(i, name)| {
            (
                name.clone(),
                run.samples
                    .iter()
                    .filter_map(|s| s.temps_c.get(i).copied().flatten().map(|c| (s.t_s, c)))
                    .collect(),
            )
        })
        .collect();
    let freq: Vec<Series> = vec![
        (
            "mean MHz".into(),
            run.samples
                .iter()
                .filter_map(|s| s.freq_mhz.map(|f| (s.t_s, f)))
                .collect(),
        ),
        (
            "max MHz".into(),
            run.samples
                .iter()
                .filter_map(|s| s.freq_max_mhz.map(|f| (s.t_s, f)))
                .collect(),
        ),
    ];
    let kib = |k: u64| k as f64 / 1024.0;
    let memory: Vec<Series> = vec![
        (
            "RSS MiB".into(),
            run.samples
                .iter()
                .filter_map(|s| s.rss_kib.map(|k| (s.t_s, kib(k))))
                .collect(),
        ),
        (
            "peak (VmHWM) MiB".into(),
            run.samples
                .iter()
                .filter_map(|s| s.hwm_kib.map(|k| (s.t_s, kib(k))))
                .collect(),
        ),
    ];
    let power_title = format!(
        "power, W ({}{})",
        run.header.power.source,
        if run.header.power.measured {
            ""
        } else {
            ", not measured"
        }
    );
    let panels: [(String, Vec<Series>, &str); 4] = [
        (power_title, watts, "no power readings"),
        (
            "temperature, C".into(),
            temps,
            "no temperature sensors on this machine",
        ),
        (
            "CPU frequency, MHz".into(),
            freq,
            "no cpufreq on this machine",
        ),
        ("memory, MiB".into(), memory, "no memory readings"),
    ];
    let stage_names: Vec<String> = Summary::of(run)
        .stages
        .iter()
        .filter(|s| !s.name.starts_with(record::PHASE))
        .map(|s| s.name.clone())
        .collect();
    draw_png(path, TIMELINE, |root| {
        let root = if text {
            let title = format!(
                "{} on {}",
                run.header
                    .command
                    .first()
                    .and_then(|c| Path::new(c).file_name())
                    .and_then(|c| c.to_str())
                    .unwrap_or("run"),
                if run.header.host.is_empty() {
                    "?"
                } else {
                    &run.header.host
                }
            );
            root.titled(&title, ("sans-serif", 22)).map_err(err)?
        } else {
            root.clone()
        };
        let areas = root.split_evenly((4, 1));
        for (i, ((title, series, missing), area)) in panels.iter().zip(areas.iter()).enumerate() {
            let last = i + 1 == panels.len();
            draw_panel(
                area,
                run,
                (title, series, missing),
                t_max,
                text,
                last,
                (i == 0).then_some(&stage_names[..]),
            )?;
        }
        Ok(())
    })
}

/// One timeline panel: the stages' spans shaded, then the series as lines; a panel
/// with no data says so. The first panel carries the stages' legend.
fn draw_panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    run: &Run,
    (title, series, missing): (&String, &Vec<Series>, &&str),
    t_max: f64,
    text: bool,
    x_axis_label: bool,
    stage_legend: Option<&[String]>,
) -> anyhow::Result<()> {
    let ys = || series.iter().flat_map(|(_, p)| p.iter().map(|q| q.1));
    let have = ys().next().is_some();
    let (mut lo, mut hi) = ys().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
        (a.min(y), b.max(y))
    });
    if !have {
        (lo, hi) = (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.1).max(hi.abs() * 0.02).max(1e-3);
    let (y0, y1) = (
        (lo - pad).min(if lo >= 0.0 { 0.0 } else { lo - pad }),
        hi + pad,
    );
    let mut builder = ChartBuilder::on(area);
    builder.margin(10);
    if text {
        builder
            .caption(title, ("sans-serif", 16))
            .x_label_area_size(if x_axis_label { 36 } else { 20 })
            .y_label_area_size(64);
    }
    let mut chart = builder
        .build_cartesian_2d(0f64..t_max, y0..y1)
        .map_err(err)?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.light_line_style(WHITE.mix(0.0));
        if x_axis_label {
            mesh.x_desc("time since the record started, s");
        }
    } else {
        mesh.disable_x_axis().disable_y_axis();
    }
    mesh.draw().map_err(err)?;
    // Spans shaded behind, light enough for overlaps to read as darker.
    for name in stage_legend.unwrap_or(&[]) {
        let c = stage_colour(name);
        let drawn = chart
            .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())
            .map_err(err)?;
        if text {
            drawn.label(name.as_str()).legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.mix(0.5).filled())
            });
        }
    }
    chart
        .draw_series(run.stages.iter().filter(|s| !is_phase(&s.name)).map(|s| {
            let t1 = s.t_s + s.ms / 1e3;
            Rectangle::new(
                [(s.t_s, y0), (t1.max(s.t_s + t_max * 1e-4), y1)],
                stage_colour(&s.name).mix(0.18).filled(),
            )
        }))
        .map_err(err)?;
    // Phases (a demo's modes, a bench's cells): a dashed line where each begins,
    // named in the first panel.
    for p in run.stages.iter().filter(|s| is_phase(&s.name)) {
        let grey = RGBColor(60, 60, 60);
        chart
            .draw_series(DashedLineSeries::new(
                [(p.t_s, y0), (p.t_s, y1)],
                6,
                4,
                grey.stroke_width(1),
            ))
            .map_err(err)?;
        if text && stage_legend.is_some() {
            let label = p.name.trim_start_matches(record::PHASE);
            chart
                .draw_series(std::iter::once(Text::new(
                    label.to_owned(),
                    (p.t_s, y1),
                    ("sans-serif", 12).into_font().color(&grey),
                )))
                .map_err(err)?;
        }
    }
    for (i, (name, points)) in series.iter().enumerate() {
        if points.is_empty() {
            continue;
        }
        let c = COLOURS[i % COLOURS.len()];
        let drawn = chart
            .draw_series(LineSeries::new(points.iter().copied(), c.stroke_width(2)))
            .map_err(err)?;
        if text && series.len() > 1 {
            drawn
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 14, y)], c.stroke_width(2)));
        }
    }
    if text && !have {
        let (w, h) = area.dim_in_pixel();
        area.draw(&Text::new(
            format!("{missing} (see the record's \"absent\")"),
            (w as i32 / 2 - 180, h as i32 / 2),
            ("sans-serif", 16).into_font().color(&RGBColor(90, 90, 90)),
        ))
        .map_err(err)?;
    }
    if text && (series.len() > 1 && have || stage_legend.is_some_and(|s| !s.is_empty())) {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

/// Each stage's spans as dots (spread sideways so they do not hide each other), with
/// bars at the median and the 95th percentile; a log scale, since a decode takes
/// microseconds where a head takes tens of milliseconds.
fn draw_stages(path: &Path, summary: &Summary, run: &Run, text: bool) -> anyhow::Result<()> {
    let stages: Vec<_> = summary
        .stages
        .iter()
        .filter(|s| !is_phase(&s.name))
        .collect();
    let n = stages.len().max(1);
    let positive = || {
        run.stages
            .iter()
            .filter(|s| !is_phase(&s.name))
            .map(|s| s.ms)
            .filter(|&ms| ms > 0.0)
    };
    let lo = positive().fold(f64::INFINITY, f64::min);
    let hi = positive().fold(0.0, f64::max);
    let (lo, hi) = if lo.is_finite() && hi > 0.0 {
        (lo / 1.5, hi * 1.5)
    } else {
        (0.001, 1.0)
    };
    let hi = hi.max(lo * 10.0);
    draw_png(path, STAGES, |root| {
        let mut builder = ChartBuilder::on(root);
        builder.margin(16);
        if text {
            builder
                .caption(
                    "time per stage: every span (dots), median (thick bar), p95 (thin bar)",
                    ("sans-serif", 18),
                )
                .x_label_area_size(40)
                .y_label_area_size(70);
        }
        let mut chart = builder
            .build_cartesian_2d(0f64..n as f64, (lo..hi).log_scale())
            .map_err(err)?;
        let label_of = |x: &f64| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 1e-6 {
                stages
                    .get(i)
                    .map(|s| format!("{} ({})", s.name, s.count))
                    .unwrap_or_default()
            } else {
                String::new()
            }
        };
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.disable_x_mesh()
                .x_labels(n * 2 + 1)
                .x_label_formatter(&label_of)
                .y_desc("ms (log scale)");
        } else {
            mesh.disable_x_axis().disable_y_axis();
        }
        mesh.draw().map_err(err)?;
        for (i, st) in stages.iter().enumerate() {
            let c = stage_colour(&st.name);
            let x = i as f64 + 0.5;
            // A fixed spread from the span's index: no random numbers, same picture
            // every time.
            let dots = run
                .stages
                .iter()
                .filter(|s| s.name == st.name && s.ms > 0.0)
                .enumerate()
                .map(|(k, s)| {
                    let dx = ((k * 37) % 61) as f64 / 61.0 * 0.5 - 0.25;
                    Circle::new((x + dx, s.ms), 2, c.mix(0.45).filled())
                });
            chart.draw_series(dots).map_err(err)?;
            for (y, width, w) in [(st.median_ms, 0.35, 4), (st.p95_ms, 0.25, 2)] {
                if y > 0.0 {
                    chart
                        .draw_series(std::iter::once(PathElement::new(
                            [(x - width, y), (x + width, y)],
                            BLACK.stroke_width(w),
                        )))
                        .map_err(err)?;
                }
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_folder_sits_beside_the_record() {
        assert_eq!(
            default_out(Path::new("/tmp/x/run.jsonl")),
            Path::new("/tmp/x/run-report")
        );
    }
}
