//! Decoding offloaded frames: the JPEG a device sends when the edge runs the whole
//! model. The bytes come from the network, so the decoder is capped before it
//! allocates and every failure is an error, never a panic.

use image::{ImageFormat, ImageReader, Limits, RgbImage};

/// Why an offloaded frame could not be decoded (answered `Dropped{bad_frame}`).
#[derive(Debug, thiserror::Error)]
pub enum DecodeFrameError {
    /// The payload is not a JPEG.
    #[error("offloaded frame is not a JPEG (no start-of-image marker)")]
    NotJpeg,
    /// The JPEG claims a size above the limit.
    #[error("offloaded frame is {width}x{height}; at most {max} per side is accepted")]
    TooLarge {
        /// Claimed width.
        width: u32,
        /// Claimed height.
        height: u32,
        /// The limit.
        max: u32,
    },
    /// The JPEG is corrupt.
    #[error("offloaded frame is a corrupt JPEG: {0}")]
    Corrupt(#[source] image::ImageError),
}

/// Largest side accepted by default: 4096 covers 4K frames; devices shrink frames to
/// the model's size before sending, so anything near this is already wasteful.
pub const DEFAULT_MAX_SIDE: u32 = 4096;

/// Decodes an offloaded JPEG to RGB8, refusing sides above `max_side` before any
/// pixel buffer is allocated.
pub fn decode_jpeg(bytes: &[u8], max_side: u32) -> Result<RgbImage, DecodeFrameError> {
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return Err(DecodeFrameError::NotJpeg);
    }
    let mut reader = ImageReader::new(std::io::Cursor::new(bytes));
    reader.set_format(ImageFormat::Jpeg);
    let (width, height) = reader
        .into_dimensions()
        .map_err(DecodeFrameError::Corrupt)?;
    if width == 0 || height == 0 || width > max_side || height > max_side {
        return Err(DecodeFrameError::TooLarge {
            width,
            height,
            max: max_side,
        });
    }
    let mut reader = ImageReader::new(std::io::Cursor::new(bytes));
    reader.set_format(ImageFormat::Jpeg);
    let mut limits = Limits::default();
    limits.max_image_width = Some(max_side);
    limits.max_image_height = Some(max_side);
    // RGB8 of the largest accepted frame, plus the decoder's working room.
    limits.max_alloc = Some(u64::from(max_side) * u64::from(max_side) * 3 * 2);
    reader.limits(limits);
    Ok(reader
        .decode()
        .map_err(DecodeFrameError::Corrupt)?
        .into_rgb8())
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::codecs::jpeg::JpegEncoder;

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 99]));
        let mut out = Vec::new();
        JpegEncoder::new_with_quality(&mut out, 95)
            .encode_image(&img)
            .unwrap();
        out
    }

    #[test]
    fn jpeg_frame_decodes_to_its_size() {
        let img = decode_jpeg(&jpeg(40, 30), DEFAULT_MAX_SIDE).unwrap();
        assert_eq!(img.dimensions(), (40, 30));
        assert!((i32::from(img.get_pixel(0, 0).0[2]) - 99).abs() <= 3);
    }

    #[test]
    fn oversized_frame_is_refused_before_decoding() {
        let err = decode_jpeg(&jpeg(300, 20), 256).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeFrameError::TooLarge {
                    width: 300,
                    height: 20,
                    max: 256
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn garbage_and_truncated_payloads_are_errors_not_panics() {
        assert!(matches!(
            decode_jpeg(b"GIF89a", 256),
            Err(DecodeFrameError::NotJpeg)
        ));
        assert!(decode_jpeg(&[], 256).is_err());
        let full = jpeg(64, 64);
        // Cut inside the headers (tables come first): an error.
        for cut in [2, 10, 100] {
            assert!(decode_jpeg(&full[..cut], 256).is_err(), "cut at {cut}");
        }
        // Cut inside the entropy-coded data: the decoder may fill in the rest (a QUIC
        // stream delivers whole payloads, so only a hostile device sends this); it
        // must not panic.
        for cut in [full.len() / 2, full.len() - 10] {
            let _ = decode_jpeg(&full[..cut], 256);
        }
        // Flipped bytes in the entropy-coded data: an error or a (garbled) image, but
        // never a panic.
        let mut bad = full.clone();
        for i in (200..bad.len() - 2).step_by(7) {
            bad[i] ^= 0x5A;
        }
        let _ = decode_jpeg(&bad, 256);
    }
}
