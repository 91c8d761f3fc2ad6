//! PNG plots for the bench reports (`--report DIR`), drawn with plotters into an RGB
//! buffer and written by `image`. Text needs a TrueType font; without one the plots are
//! drawn without text (and the caller says so).

use std::path::Path;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

/// Plot size in pixels.
const W: u32 = 960;
const H: u32 = 540;

/// Series colours (matplotlib's first four, which readers know).
const COLOURS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

/// Registers a TrueType font for plot text: `SPLITSTREAM_FONT`, else a common system
/// sans. Whether one was found.
pub(crate) fn load_font() -> bool {
    let candidates = std::env::var_os("SPLITSTREAM_FONT")
        .map(std::path::PathBuf::from)
        .into_iter()
        .chain(
            [
                "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
                "/usr/share/fonts/TTF/DejaVuSans.ttf",
                "/usr/share/fonts/dejavu/DejaVuSans.ttf",
                "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
                "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
                "/System/Library/Fonts/Supplemental/Arial.ttf",
                "C:\\Windows\\Fonts\\arial.ttf",
            ]
            .map(std::path::PathBuf::from),
        );
    for path in candidates {
        // A font file, capped: ab_glyph holds it for the life of the process.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.len() > 64 << 20 {
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

/// Prints the note a report gives when plots have no text.
pub(crate) fn note_without_font() {
    eprintln!(
        "note: no TrueType font found (looked for DejaVu/Liberation/Noto Sans; set \
         SPLITSTREAM_FONT=FILE.ttf): plots are drawn without text"
    );
}

/// Writes a `W` x `H` RGB buffer as an image (the format from the extension).
fn save(path: &Path, buf: Vec<u8>) -> anyhow::Result<()> {
    let img = image::RgbImage::from_raw(W, H, buf)
        .ok_or_else(|| anyhow::anyhow!("plot buffer has the wrong size"))?;
    img.save(path)?;
    Ok(())
}

/// A plotters error as an `anyhow` one.
fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("plotting: {e}")
}

type Chart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Draws one plot into `path`: a white canvas, x and y from zero to `x_max` and
/// `y_max`, a caption (when there is text), then `draw` fills the chart; the legend
/// of the labelled series comes last.
fn plot(
    path: &Path,
    caption: &str,
    (x_max, y_max): (f64, f64),
    text: bool,
    draw: impl FnOnce(&mut Chart<'_, '_>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut buf = vec![0u8; (W * H * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut builder = ChartBuilder::on(&root);
        builder.margin(16);
        if text {
            builder
                .caption(caption, ("sans-serif", 22))
                .x_label_area_size(40)
                .y_label_area_size(70);
        }
        let mut chart = builder
            .build_cartesian_2d(0f64..x_max, 0f64..y_max)
            .map_err(err)?;
        draw(&mut chart)?;
        if text {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    save(path, buf)
}

/// A scatter plot: one colour per series of (x, y) points, with a legend.
pub(crate) fn scatter(
    path: &Path,
    caption: &str,
    (x_desc, y_desc): (&str, &str),
    series: &[(&str, Vec<(f64, f64)>)],
    text: bool,
) -> anyhow::Result<()> {
    let points = || series.iter().flat_map(|(_, s)| s.iter());
    let x_max = points().map(|p| p.0).fold(1e-3, f64::max);
    let y_max = points().map(|p| p.1).fold(1.0, f64::max) * 1.05;
    plot(path, caption, (x_max, y_max), text, |chart| {
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc(x_desc).y_desc(y_desc);
        } else {
            mesh.disable_x_axis().disable_y_axis();
        }
        mesh.draw().map_err(err)?;
        for (i, (name, points)) in series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let drawn = chart
                .draw_series(
                    points
                        .iter()
                        .map(|&(x, y)| Circle::new((x, y), 2, colour.filled())),
                )
                .map_err(err)?;
            if text {
                drawn
                    .label(*name)
                    .legend(move |(x, y)| Circle::new((x + 8, y), 4, colour.filled()));
            }
        }
        Ok(())
    })
}

/// Bars in groups: for each group (an x label), one bar per member, coloured by the
/// member's place in `members`.
pub(crate) fn grouped_bars(
    path: &Path,
    caption: &str,
    y_desc: &str,
    members: &[&str],
    groups: &[(String, Vec<f64>)],
    text: bool,
) -> anyhow::Result<()> {
    let y_max = groups
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(1e-9, f64::max)
        * 1.15;
    plot(path, caption, (groups.len() as f64, y_max), text, |chart| {
        let label_of = |x: &f64| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 1e-6 {
                groups.get(i).map(|g| g.0.clone()).unwrap_or_default()
            } else {
                String::new()
            }
        };
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.disable_x_mesh()
                .x_labels(groups.len() * 2 + 1)
                .x_label_formatter(&label_of)
                .y_desc(y_desc);
        } else {
            mesh.disable_x_axis().disable_y_axis();
        }
        mesh.draw().map_err(err)?;
        let width = 0.8 / members.len().max(1) as f64;
        for (m, name) in members.iter().enumerate() {
            let colour = COLOURS[m % COLOURS.len()];
            let drawn = chart
                .draw_series(groups.iter().enumerate().filter_map(|(g, (_, v))| {
                    let x0 = g as f64 + 0.1 + m as f64 * width;
                    v.get(m)
                        .map(|&y| Rectangle::new([(x0, 0.0), (x0 + width, y)], colour.filled()))
                }))
                .map_err(err)?;
            if text {
                drawn.label(*name).legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled())
                });
            }
        }
        Ok(())
    })
}
