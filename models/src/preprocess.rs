//! timm's DeiT/ViT evaluation transform, reproduced to the bit on the reference
//! images: resize the shorter side to `floor(crop / crop_pct)` (bicubic, antialiased, as
//! PIL does it), centre crop, scale to [0, 1], normalise with ImageNet mean and std.
//!
//! timm's default `crop_pct` is 0.875, so a 224 crop is taken from a 256 resize; the
//! reference tensors in `../shared/reference` were made that way (a 248 resize, i.e.
//! `crop_pct` 0.9, differs from them by whole pixels).
//!
//! The resize follows PIL's `Image.resize(..., BICUBIC)`, which torchvision's `Resize`
//! calls on PIL images: a separable cubic convolution (`a = -0.5`) whose support
//! widens by the scale factor when shrinking (antialiasing), weights normalised per
//! output pixel and quantised to fixed point, a horizontal pass then a vertical pass,
//! each rounded and clamped to 8 bits.

use std::path::Path;

use image::RgbImage;

use crate::tensor::HostTensor;

/// ImageNet channel means (timm's `IMAGENET_DEFAULT_MEAN`).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (timm's `IMAGENET_DEFAULT_STD`).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// timm's default centre-crop fraction (`DEFAULT_CROP_PCT`).
pub const TIMM_CROP_PCT: f64 = 0.875;

/// Largest image side accepted (guards the decoder's allocation).
pub const MAX_IMAGE_SIDE: u32 = 16_384;

/// A checkpoint's metadata `crop_pct` that is not a number in (0, 1].
#[derive(Debug, thiserror::Error)]
#[error("checkpoint metadata crop_pct is {0:?}; expected a number in (0, 1], e.g. 0.875")]
pub struct InvalidCropPct(pub String);

/// Errors loading or transforming an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file could not be opened or decoded.
    #[error("cannot read image {path}")]
    Decode {
        /// The path given.
        path: String,
        /// The decoder's error (opening failures as its `IoError`).
        #[source]
        source: image::ImageError,
    },
    /// The batch of images is too large to hold.
    #[error("cannot batch the images")]
    Batch(#[source] crate::tensor::ShapeError),
    /// The image is empty or too large.
    #[error("image {path} is {width}x{height}; sides must be 1..={MAX_IMAGE_SIDE}")]
    Size {
        /// The path given.
        path: String,
        /// Its width.
        width: u32,
        /// Its height.
        height: u32,
    },
}

/// The evaluation transform's parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalTransform {
    /// Target length of the shorter side after resizing.
    pub resize: u32,
    /// Side of the centre crop.
    pub crop: u32,
    /// Per-channel mean subtracted after scaling to [0, 1].
    pub mean: [f32; 3],
    /// Per-channel standard deviation divided by.
    pub std: [f32; 3],
}

impl EvalTransform {
    /// timm's eval transform for input side `crop` with its default `crop_pct` 0.875
    /// (resize 256 for a 224 crop), as timm builds it for DeiT and ViT.
    pub fn deit(crop: u32) -> Self {
        Self::with_crop_pct(crop, TIMM_CROP_PCT)
    }

    /// timm's eval transform with another `crop_pct`: resize to `floor(crop / crop_pct)`.
    pub fn with_crop_pct(crop: u32, crop_pct: f64) -> Self {
        Self {
            resize: (crop as f64 / crop_pct).floor() as u32,
            crop,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }

    /// The transform a checkpoint declares through its metadata `crop_pct` (timm's
    /// `pretrained_cfg` field; our training script writes 1.0 for models trained on
    /// whole 224x224 images), or timm's default 0.875 when it declares none.
    pub fn for_checkpoint(crop: u32, crop_pct: Option<&str>) -> Result<Self, InvalidCropPct> {
        let Some(text) = crop_pct else {
            return Ok(Self::deit(crop));
        };
        match text.trim().parse::<f64>() {
            Ok(pct) if pct > 0.0 && pct <= 1.0 => Ok(Self::with_crop_pct(crop, pct)),
            _ => Err(InvalidCropPct(text.to_string())),
        }
    }

    /// Applies the transform: `[3, crop, crop]` values, channel-major.
    pub fn apply(&self, img: &RgbImage) -> Vec<f32> {
        let (w, h) = img.dimensions();
        // torchvision: the shorter side becomes `resize`, the longer keeps the aspect
        // ratio, truncated.
        let (nw, nh) = if w <= h {
            (
                self.resize,
                (self.resize as u64 * h as u64 / w.max(1) as u64) as u32,
            )
        } else {
            (
                (self.resize as u64 * w as u64 / h.max(1) as u64) as u32,
                self.resize,
            )
        };
        let resized = resize_bicubic(img, nw.max(1), nh.max(1));
        let (rw, rh) = (nw.max(1) as usize, nh.max(1) as usize);
        let crop = self.crop as usize;
        // torchvision's centre crop: offsets round((size - crop) / 2), half to even;
        // a crop larger than the image pads with zeros.
        let top = crop_offset(rh, crop);
        let left = crop_offset(rw, crop);
        let mut out = vec![0.0f32; 3 * crop * crop];
        for c in 0..3 {
            for y in 0..crop {
                for x in 0..crop {
                    let (sy, sx) = (y as isize + top, x as isize + left);
                    let v = if sy >= 0 && sx >= 0 && (sy as usize) < rh && (sx as usize) < rw {
                        resized[(sy as usize * rw + sx as usize) * 3 + c] as f32 / 255.0
                    } else {
                        0.0
                    };
                    out[(c * crop + y) * crop + x] = (v - self.mean[c]) / self.std[c];
                }
            }
        }
        out
    }
}

fn crop_offset(size: usize, crop: usize) -> isize {
    let diff = size as f64 - crop as f64;
    (diff / 2.0).round_ties_even() as isize
}

/// Loads an image file (any format the `image` crate decodes here: PNG, JPEG, WebP,
/// BMP, GIF, TIFF) as RGB.
pub fn load_rgb(path: impl AsRef<Path>) -> Result<RgbImage, ImageError> {
    let path = path.as_ref();
    let shown = path.display().to_string();
    let reader = image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| ImageError::Decode {
            path: shown.clone(),
            source: image::ImageError::IoError(e),
        })?;
    let (width, height) = reader
        .into_dimensions()
        .map_err(|source| ImageError::Decode {
            path: shown.clone(),
            source,
        })?;
    if width == 0 || height == 0 || width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE {
        return Err(ImageError::Size {
            path: shown,
            width,
            height,
        });
    }
    let img = image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| ImageError::Decode {
            path: shown.clone(),
            source: image::ImageError::IoError(e),
        })?
        .decode()
        .map_err(|source| ImageError::Decode {
            path: shown,
            source,
        })?;
    Ok(img.to_rgb8())
}

/// Loads image files and applies `transform` to each: `[paths.len(), 3, crop, crop]`.
pub fn load_batch(
    paths: &[impl AsRef<Path>],
    transform: &EvalTransform,
) -> Result<HostTensor, ImageError> {
    let crop = transform.crop as usize;
    let mut data = Vec::with_capacity(paths.len() * 3 * crop * crop);
    for p in paths {
        data.extend(transform.apply(&load_rgb(p)?));
    }
    HostTensor::new([paths.len(), 3, crop, crop], data).map_err(ImageError::Batch)
}

/// Cubic convolution kernel with `a = -0.5` (Keys), PIL's bicubic filter.
fn cubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Fixed-point fraction bits of the resampling weights (8-bit pixels leave 22 bits).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// For each output index along one axis, the first input index and the fixed-point
/// weights of the inputs it reads.
fn axis_weights(input: usize, output: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = input as f64 / output as f64;
    let filter_scale = scale.max(1.0);
    let support = 2.0 * filter_scale;
    (0..output)
        .map(|o| {
            let centre = (o as f64 + 0.5) * scale;
            let lo = ((centre - support + 0.5).floor().max(0.0)) as usize;
            let hi = ((centre + support + 0.5).floor() as usize).min(input);
            let raw: Vec<f64> = (lo..hi)
                .map(|i| cubic((i as f64 - centre + 0.5) / filter_scale))
                .collect();
            let total: f64 = raw.iter().sum();
            let fixed = raw
                .iter()
                .map(|w| {
                    let v = if total != 0.0 { w / total } else { 0.0 };
                    // Round half away from zero.
                    let s = v * (1u32 << PRECISION_BITS) as f64;
                    (if s < 0.0 { s - 0.5 } else { s + 0.5 }) as i32
                })
                .collect();
            (lo, fixed)
        })
        .collect()
}

fn clamp_u8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes an RGB image to `nw x nh`: horizontal pass, then vertical, 8-bit between.
fn resize_bicubic(img: &RgbImage, nw: u32, nh: u32) -> Vec<u8> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (nw, nh) = (nw as usize, nh as usize);
    let src = img.as_raw();
    let half = 1i64 << (PRECISION_BITS - 1);
    let horizontal = if nw != w {
        let weights = axis_weights(w, nw);
        let mut out = vec![0u8; h * nw * 3];
        for y in 0..h {
            for (x, (lo, ws)) in weights.iter().enumerate() {
                for c in 0..3 {
                    let acc = ws.iter().enumerate().fold(half, |acc, (i, &k)| {
                        acc + src[(y * w + lo + i) * 3 + c] as i64 * k as i64
                    });
                    out[(y * nw + x) * 3 + c] = clamp_u8(acc);
                }
            }
        }
        out
    } else {
        src.to_vec()
    };
    if nh == h {
        return horizontal;
    }
    let weights = axis_weights(h, nh);
    let mut out = vec![0u8; nh * nw * 3];
    for (y, (lo, ws)) in weights.iter().enumerate() {
        for x in 0..nw {
            for c in 0..3 {
                let acc = ws.iter().enumerate().fold(half, |acc, (i, &k)| {
                    acc + horizontal[((lo + i) * nw + x) * 3 + c] as i64 * k as i64
                });
                out[(y * nw + x) * 3 + c] = clamp_u8(acc);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_crop_pct_sets_the_resize_and_bad_values_are_errors() {
        assert_eq!(
            EvalTransform::for_checkpoint(224, None).unwrap().resize,
            256
        );
        assert_eq!(
            EvalTransform::for_checkpoint(224, Some("1.0"))
                .unwrap()
                .resize,
            224
        );
        assert_eq!(
            EvalTransform::for_checkpoint(224, Some("0.9"))
                .unwrap()
                .resize,
            248
        );
        for bad in ["abc", "0", "1.5", "-0.2", "NaN"] {
            assert!(
                EvalTransform::for_checkpoint(224, Some(bad)).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn resize_weights_sum_to_one_in_fixed_point() {
        for (i, o) in [(512, 248), (300, 248), (100, 248)] {
            for (_, ws) in axis_weights(i, o) {
                let s: i64 = ws.iter().map(|&k| k as i64).sum();
                assert!(
                    (s - (1 << PRECISION_BITS)).abs() <= ws.len() as i64,
                    "{i}->{o}"
                );
            }
        }
    }

    #[test]
    fn a_flat_image_stays_flat() {
        let img = RgbImage::from_pixel(300, 200, image::Rgb([10, 128, 250]));
        let out = EvalTransform::deit(224).apply(&img);
        let want = (128.0 / 255.0 - IMAGENET_MEAN[1]) / IMAGENET_STD[1];
        assert!(out[224 * 224..2 * 224 * 224]
            .iter()
            .all(|&v| (v - want).abs() < 1e-6));
    }
}
