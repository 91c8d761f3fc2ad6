//! Pictures of event streams for people: events accumulated over a window, ON in
//! blue-white and OFF in red on a dark background, written as PNG.

use std::path::Path;

use crate::Event;

/// Writing a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The file could not be created or written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The PNG encoder failed.
    #[error("PNG encoding of {path} failed: {reason}")]
    Png {
        /// The file.
        path: String,
        /// What failed.
        reason: String,
    },
}

/// Background grey level.
const BACKGROUND: [u8; 3] = [24, 24, 28];

/// An RGB picture (`width * height * 3` bytes) of events: per pixel, the balance of ON
/// and OFF events picks the colour and the count its strength (full at 3).
pub fn accumulate_rgb(events: &[Event], width: u16, height: u16) -> Vec<u8> {
    let (w, h) = (usize::from(width), usize::from(height));
    let mut net = vec![0i32; w * h];
    let mut seen = vec![false; w * h];
    for e in events {
        let (x, y) = (usize::from(e.x), usize::from(e.y));
        if x < w && y < h {
            net[y * w + x] += if e.p { 1 } else { -1 };
            seen[y * w + x] = true;
        }
    }
    let mut rgb = Vec::with_capacity(w * h * 3);
    for (n, s) in net.iter().zip(&seen) {
        let px = if !s {
            BACKGROUND
        } else {
            let k = (0.4 + 0.2 * n.unsigned_abs().min(3) as f32).min(1.0);
            let target: [f32; 3] = match n.signum() {
                1 => [120.0, 200.0, 255.0],
                -1 => [255.0, 70.0, 50.0],
                _ => [150.0, 150.0, 150.0],
            };
            let mix = |i: usize| {
                (f32::from(BACKGROUND[i]) + (target[i] - f32::from(BACKGROUND[i])) * k) as u8
            };
            [mix(0), mix(1), mix(2)]
        };
        rgb.extend_from_slice(&px);
    }
    rgb
}

/// Writes an RGB picture as an 8-bit PNG.
pub fn write_png(path: &Path, width: u16, height: u16, rgb: &[u8]) -> Result<(), RenderError> {
    let name = path.display().to_string();
    let file = std::fs::File::create(path).map_err(|source| RenderError::Io {
        path: name.clone(),
        source,
    })?;
    let mut enc = png::Encoder::new(
        std::io::BufWriter::new(file),
        u32::from(width),
        u32::from(height),
    );
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let png_err = |e: png::EncodingError| RenderError::Png {
        path: name.clone(),
        reason: e.to_string(),
    };
    let mut writer = enc.write_header().map_err(png_err)?;
    writer.write_image_data(rgb).map_err(png_err)?;
    writer.finish().map_err(png_err)?;
    Ok(())
}
