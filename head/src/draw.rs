//! A detector's boxes drawn on the frame (`splitstream-device --draw DIR`): a
//! two-pixel rectangle per object in its class's colour, and a tag above it with the
//! class index and the score (`3 0.87`) in a built-in 3x5 pixel font, so that nothing
//! but the `image` crate is needed.

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use splitstream_models::net::Detection;

/// Colours by class index (cycled).
const PALETTE: [[u8; 3]; 8] = [
    [230, 25, 75],
    [60, 180, 75],
    [255, 225, 25],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
];

/// Glyphs of the 3x5 font: rows of 3 bits, top first (`0`-`9`, `.`, space).
fn glyph(c: char) -> [u8; 5] {
    match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        _ => [0; 5],
    }
}

/// Text scale: each font pixel is this many image pixels.
const SCALE: i64 = 2;

fn put(img: &mut RgbImage, x: i64, y: i64, colour: Rgb<u8>) {
    if x >= 0 && y >= 0 && x < img.width() as i64 && y < img.height() as i64 {
        img.put_pixel(x as u32, y as u32, colour);
    }
}

fn rect(img: &mut RgbImage, [x0, y0, x1, y1]: [i64; 4], colour: Rgb<u8>, fill: bool) {
    for y in y0..=y1 {
        for x in x0..=x1 {
            if fill || y < y0 + 2 || y > y1 - 2 || x < x0 + 2 || x > x1 - 2 {
                put(img, x, y, colour);
            }
        }
    }
}

/// Draws `text` (digits, `.`, spaces) with its top-left corner at `(x, y)`.
fn text(img: &mut RgbImage, x: i64, y: i64, text: &str, colour: Rgb<u8>) {
    for (i, c) in text.chars().enumerate() {
        let rows = glyph(c);
        for (r, bits) in rows.iter().enumerate() {
            for b in 0..3 {
                if bits & (4 >> b) != 0 {
                    let (px, py) = (x + (i as i64 * 4 + b) * SCALE, y + r as i64 * SCALE);
                    rect(img, [px, py, px + SCALE - 1, py + SCALE - 1], colour, true);
                }
            }
        }
    }
}

/// The frame with `detections` (corners in its pixels) drawn on it. Boxes are clamped
/// to the frame; non-finite ones are skipped.
pub fn draw_detections(frame: &RgbImage, detections: &[Detection]) -> RgbImage {
    let mut img = frame.clone();
    let (w, h) = (img.width() as f32, img.height() as f32);
    // Weakest first, so that the best boxes end on top.
    let mut order: Vec<&Detection> = detections.iter().collect();
    order.sort_by(|a, b| a.score.total_cmp(&b.score));
    for d in order {
        if d.bbox.iter().any(|v| !v.is_finite()) {
            continue;
        }
        let [x0, y0, x1, y1] = d.bbox;
        let clamp = |v: f32, hi: f32| v.clamp(0.0, (hi - 1.0).max(0.0)).round() as i64;
        let b = [clamp(x0, w), clamp(y0, h), clamp(x1, w), clamp(y1, h)];
        if b[2] <= b[0] || b[3] <= b[1] {
            continue;
        }
        let colour = Rgb(PALETTE[d.label as usize % PALETTE.len()]);
        rect(&mut img, b, colour, false);
        let tag = format!("{} {:.2}", d.label, d.score);
        let tw = tag.chars().count() as i64 * 4 * SCALE + SCALE;
        let th = 5 * SCALE + 2 * SCALE;
        let ty = if b[1] >= th { b[1] - th } else { b[1] };
        rect(&mut img, [b[0], ty, b[0] + tw, ty + th - 1], colour, true);
        text(&mut img, b[0] + SCALE, ty + SCALE, &tag, Rgb([0, 0, 0]));
    }
    img
}

/// Image format of the drawn frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrawFormat {
    /// PNG (lossless).
    Png,
    /// JPEG at quality 90.
    Jpeg,
}

/// Writes the drawn frame `index` into `dir` as `frame_{index:06}.{png,jpg}`.
pub fn save_drawn(
    dir: &Path,
    index: u64,
    img: &RgbImage,
    format: DrawFormat,
) -> Result<PathBuf, image::ImageError> {
    let (ext, fmt) = match format {
        DrawFormat::Png => ("png", image::ImageFormat::Png),
        DrawFormat::Jpeg => ("jpg", image::ImageFormat::Jpeg),
    };
    let path = dir.join(format!("frame_{index:06}.{ext}"));
    match format {
        DrawFormat::Png => img.save_with_format(&path, fmt)?,
        DrawFormat::Jpeg => {
            let file = std::fs::File::create(&path).map_err(image::ImageError::IoError)?;
            let mut w = std::io::BufWriter::new(file);
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut w, 90).encode_image(img)?;
        }
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes_and_tags_are_drawn_inside_the_frame() {
        let frame = RgbImage::from_pixel(64, 48, Rgb([255, 255, 255]));
        let dets = [
            Detection {
                bbox: [10.0, 20.0, 40.0, 44.0],
                score: 0.87,
                label: 1,
            },
            // Off the frame and non-finite: clamped or skipped, never a panic.
            Detection {
                bbox: [-50.0, -50.0, 500.0, 500.0],
                score: 0.2,
                label: 2,
            },
            Detection {
                bbox: [f32::NAN, 0.0, 1.0, 1.0],
                score: 0.5,
                label: 0,
            },
        ];
        let out = draw_detections(&frame, &dets);
        let green = Rgb(PALETTE[1]);
        // The box's left edge and bottom edge, in the class colour.
        assert_eq!(*out.get_pixel(10, 30), green);
        assert_eq!(*out.get_pixel(25, 44), green);
        // Inside the box, untouched.
        assert_eq!(*out.get_pixel(25, 35), Rgb([255, 255, 255]));
        // The tag sits above the box: a filled band with dark text pixels.
        assert_eq!(*out.get_pixel(10, 8), green);
        assert!((0..64).any(|x| (6..20).any(|y| *out.get_pixel(x, y) == Rgb([0, 0, 0]))));
        let dir = tempfile::tempdir().unwrap();
        let p = save_drawn(dir.path(), 3, &out, DrawFormat::Png).unwrap();
        assert!(p.ends_with("frame_000003.png"));
        assert_eq!(image::open(&p).unwrap().to_rgb8(), out);
        let j = save_drawn(dir.path(), 3, &out, DrawFormat::Jpeg).unwrap();
        assert_eq!(image::open(&j).unwrap().width(), 64);
    }
}
