//! The frame as sent in offload mode: a JPEG the edge decodes and runs the whole
//! model on.
//!
//! Frames are shrunk before encoding when they are larger than the model needs
//! (`max_side`): a 1080p frame becomes 224x224 on the edge anyway, and sending it
//! whole would cost ten times the bytes for nothing.

use image::codecs::jpeg::JpegEncoder;
use image::imageops::FilterType;
use image::RgbImage;

/// Why a frame could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeJpegError {
    /// The quality is outside 1-100 (it is refused, not clamped).
    #[error("JPEG quality {0} is outside 1-100")]
    Quality(u8),
    /// The encoder failed.
    #[error("cannot encode the frame as JPEG: {0}")]
    Encode(#[from] image::ImageError),
}

/// How frames are encoded for offload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JpegSettings {
    /// JPEG quality 1-100. Default 90: artefacts stay small next to the resize the
    /// model's preprocessing applies anyway, at roughly a tenth of the raw size.
    /// (Agreement with local results is what the demo measures; lower it there.)
    pub quality: u8,
    /// Shrink (keeping the aspect ratio) so the longer side is at most this. Default
    /// 256: the ViT/DeiT preprocessing resizes the shorter side to 256 (then crops
    /// 224), so nothing the model sees is lost. `None` sends the frame at full size.
    pub max_side: Option<u32>,
}

impl Default for JpegSettings {
    fn default() -> Self {
        Self {
            quality: 90,
            max_side: Some(256),
        }
    }
}

/// Encodes a frame as JPEG with `settings`.
pub fn encode_jpeg(img: &RgbImage, settings: &JpegSettings) -> Result<Vec<u8>, EncodeJpegError> {
    if !(1..=100).contains(&settings.quality) {
        return Err(EncodeJpegError::Quality(settings.quality));
    }
    let (w, h) = img.dimensions();
    let resized;
    let img = match settings.max_side {
        Some(max) if max > 0 && w.max(h) > max => {
            let scale = f64::from(max) / f64::from(w.max(h));
            let nw = ((f64::from(w) * scale).round() as u32).clamp(1, max);
            let nh = ((f64::from(h) * scale).round() as u32).clamp(1, max);
            resized = image::imageops::resize(img, nw, nh, FilterType::Triangle);
            &resized
        }
        _ => img,
    };
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, settings.quality).encode_image(img)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, 128])
        })
    }

    #[test]
    fn jpeg_decodes_back_to_nearly_the_same_frame() {
        let img = gradient(64, 48);
        let bytes = encode_jpeg(&img, &JpegSettings::default()).unwrap();
        assert_eq!(&bytes[..2], &[0xFF, 0xD8], "JPEG start-of-image marker");
        let back = image::load_from_memory(&bytes).unwrap().into_rgb8();
        assert_eq!(back.dimensions(), (64, 48));
        let err: f64 = img
            .pixels()
            .zip(back.pixels())
            .flat_map(|(a, b)| {
                a.0.iter()
                    .zip(b.0)
                    .map(|(&x, y)| (f64::from(x) - f64::from(y)).abs())
            })
            .sum::<f64>()
            / (64.0 * 48.0 * 3.0);
        assert!(err < 4.0, "mean absolute error {err}");
    }

    #[test]
    fn large_frames_are_shrunk_keeping_the_aspect_ratio() {
        let img = gradient(1280, 720);
        let bytes = encode_jpeg(&img, &JpegSettings::default()).unwrap();
        let back = image::load_from_memory(&bytes).unwrap();
        assert_eq!((back.width(), back.height()), (256, 144));
        let full = encode_jpeg(
            &img,
            &JpegSettings {
                max_side: None,
                ..JpegSettings::default()
            },
        )
        .unwrap();
        assert_eq!(image::load_from_memory(&full).unwrap().width(), 1280);
    }

    #[test]
    fn qualities_outside_1_to_100_are_refused_not_clamped() {
        let img = gradient(8, 8);
        for quality in [0, 101, 255] {
            let settings = JpegSettings {
                quality,
                ..JpegSettings::default()
            };
            let err = encode_jpeg(&img, &settings).unwrap_err();
            assert!(
                matches!(err, EncodeJpegError::Quality(q) if q == quality),
                "{err}"
            );
        }
        for quality in [1, 100] {
            let settings = JpegSettings {
                quality,
                ..JpegSettings::default()
            };
            assert!(encode_jpeg(&img, &settings).is_ok());
        }
    }
}
