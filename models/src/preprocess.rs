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

/// How the image becomes a square: timm's centre crop or a detector's letterbox.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Framing {
    /// Resize the shorter side to `resize` (bicubic, as PIL), centre crop `crop`.
    CenterCrop,
    /// mmdet's test pipeline for detectors: keep the ratio with the longer side at
    /// `resize` (bilinear, as OpenCV's `INTER_LINEAR`), then pad bottom and right to
    /// `crop x crop` with the value `pad` in every channel (before normalising).
    Letterbox {
        /// The pad value, in 8-bit pixel units (mmdet: 114).
        pad: u8,
        /// Per-channel mean in pixel units, subtracted (in f32) before dividing.
        mean: [f32; 3],
        /// Per-channel std in pixel units.
        std: [f32; 3],
    },
}

/// The evaluation transform's parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalTransform {
    /// Target length of the shorter side (centre crop) or the longer side (letterbox)
    /// after resizing.
    pub resize: u32,
    /// Side of the square input (the centre crop, or the padded letterbox).
    pub crop: u32,
    /// Per-channel mean subtracted after scaling to [0, 1].
    pub mean: [f32; 3],
    /// Per-channel standard deviation divided by.
    pub std: [f32; 3],
    /// Centre crop or letterbox.
    pub framing: Framing,
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
            framing: Framing::CenterCrop,
        }
    }

    /// A detector's letterbox to `side x side`: the longer side resized to `side`, the
    /// rest padded with `pad`; `mean` and `std` in 8-bit pixel units, as mmdet writes
    /// them (`[123.675, 116.28, 103.53]`, `[58.395, ...]`).
    pub fn letterbox(side: u32, pad: u8, mean: [f32; 3], std: [f32; 3]) -> Self {
        Self {
            resize: side,
            crop: side,
            mean: mean.map(|m| m / 255.0),
            std: std.map(|s| s / 255.0),
            framing: Framing::Letterbox { pad, mean, std },
        }
    }

    /// The size an image of `width x height` is resized to before cropping or padding
    /// (mmcv's `rescale_size` for the letterbox: `int(side * factor + 0.5)`).
    pub fn resized_size(&self, width: u32, height: u32) -> (u32, u32) {
        let (w, h) = (width.max(1), height.max(1));
        match self.framing {
            Framing::CenterCrop => {
                if w <= h {
                    (
                        self.resize,
                        (self.resize as u64 * h as u64 / w as u64) as u32,
                    )
                } else {
                    (
                        (self.resize as u64 * w as u64 / h as u64) as u32,
                        self.resize,
                    )
                }
            }
            Framing::Letterbox { .. } => {
                let factor = self.resize as f64 / w.max(h) as f64;
                let side = |s: u32| ((s as f64 * factor + 0.5) as u32).clamp(1, self.crop);
                (side(w), side(h))
            }
        }
    }

    /// For a letterbox, the factors `[sx, sy]` that take input pixels back to the
    /// original image's (`x_image = x_input * sx`): mmdet divides boxes by its
    /// `scale_factor` `(new_w / w, new_h / h)`. `None` for a centre crop (boxes in the
    /// crop do not map back by a scale alone).
    pub fn box_scale(&self, width: u32, height: u32) -> Option<[f32; 2]> {
        match self.framing {
            Framing::CenterCrop => None,
            Framing::Letterbox { .. } => {
                let (nw, nh) = self.resized_size(width, height);
                Some([
                    width.max(1) as f32 / nw as f32,
                    height.max(1) as f32 / nh as f32,
                ])
            }
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
        if let Framing::Letterbox { pad, mean, std } = self.framing {
            return self.apply_letterbox(img, pad, mean, std);
        }
        // torchvision: the shorter side becomes `resize`, the longer keeps the aspect
        // ratio, truncated.
        let (nw, nh) = self.resized_size(img.width(), img.height());
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

impl EvalTransform {
    fn apply_letterbox(&self, img: &RgbImage, pad: u8, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
        let (canvas, _) = letterbox_u8(img, self, pad);
        let plane = (self.crop as usize).pow(2);
        canvas
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let c = i / plane.max(1);
                // mmdet normalises in pixel units: (v - mean) / std.
                (v as f32 - mean[c]) / std[c]
            })
            .collect()
    }
}

/// Bilinear resize with OpenCV `INTER_LINEAR`'s geometry (half-pixel centres, edge
/// clamping, no antialiasing), in f64: per axis `f = (d + 0.5) * src / dst - 0.5`, `i0 =
/// floor(f)`, `a = f - i0` (`f < 0`: `(0, 0)`; `i0 >= src - 1`: `(src - 1, 0)`), the
/// horizontal pass `(1 - a) p0 + a p1`, then the vertical, then `floor(v + 0.5)` to 8
/// bits. OpenCV's own fixed point can differ by one grey level; this is the arithmetic
/// of our PyTorch reference (`python/femtodet.py`), which the parity tests pin.
fn resize_bilinear_cv(img: &RgbImage, nw: u32, nh: u32) -> Vec<u8> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (nw, nh) = (nw.max(1) as usize, nh.max(1) as usize);
    if (nw, nh) == (w, h) {
        return img.as_raw().clone();
    }
    let src = img.as_raw();
    let axis = |input: usize, output: usize| -> Vec<(usize, usize, f64)> {
        let scale = input as f64 / output as f64;
        (0..output)
            .map(|d| {
                let f = (d as f64 + 0.5) * scale - 0.5;
                let fl = f.floor();
                let (mut i0, mut a) = (fl as isize, f - fl);
                if i0 < 0 {
                    (i0, a) = (0, 0.0);
                }
                let mut i0 = i0 as usize;
                if i0 >= input - 1 {
                    (i0, a) = (input - 1, 0.0);
                }
                (i0, (i0 + 1).min(input - 1), a)
            })
            .collect()
    };
    let xs = axis(w, nw);
    let ys = axis(h, nh);
    let mut rows = vec![0.0f64; h * nw * 3];
    for y in 0..h {
        for (x, &(x0, x1, a)) in xs.iter().enumerate() {
            for c in 0..3 {
                let p0 = src[(y * w + x0) * 3 + c] as f64;
                let p1 = src[(y * w + x1) * 3 + c] as f64;
                rows[(y * nw + x) * 3 + c] = (1.0 - a) * p0 + a * p1;
            }
        }
    }
    let mut out = vec![0u8; nw * nh * 3];
    for (y, &(y0, y1, a)) in ys.iter().enumerate() {
        for i in 0..nw * 3 {
            let v = (1.0 - a) * rows[y0 * nw * 3 + i] + a * rows[y1 * nw * 3 + i];
            out[y * nw * 3 + i] = (v + 0.5).floor().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

/// The letterboxed image before normalising, `[3, side, side]` channel-major 8-bit,
/// and the resized size: what [`EvalTransform::apply`] normalises for a letterbox.
pub fn letterbox_u8(img: &RgbImage, transform: &EvalTransform, pad: u8) -> (Vec<u8>, (u32, u32)) {
    let (nw, nh) = transform.resized_size(img.width(), img.height());
    let resized = resize_bilinear_cv(img, nw, nh);
    let (rw, rh) = (nw as usize, nh as usize);
    let side = transform.crop as usize;
    let mut out = vec![pad; 3 * side * side];
    for c in 0..3 {
        for y in 0..rh.min(side) {
            for x in 0..rw.min(side) {
                out[(c * side + y) * side + x] = resized[(y * rw + x) * 3 + c];
            }
        }
    }
    (out, (nw, nh))
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
    fn the_letterbox_keeps_the_ratio_pads_and_maps_boxes_back() {
        let t = EvalTransform::letterbox(416, 114, [123.675, 116.28, 103.53], [58.82; 3]);
        assert_eq!(t.resized_size(640, 480), (416, 312));
        assert_eq!(t.resized_size(100, 300), (139, 416));
        let [sx, sy] = t.box_scale(640, 480).unwrap();
        assert!((sx - 640.0 / 416.0).abs() < 1e-6 && (sy - 480.0 / 312.0).abs() < 1e-6);
        assert_eq!(EvalTransform::deit(224).box_scale(640, 480), None);
        let img = RgbImage::from_pixel(640, 480, image::Rgb([200, 100, 50]));
        let out = t.apply(&img);
        let plane = 416 * 416;
        assert_eq!(out.len(), 3 * plane);
        let at = |c: usize, y: usize, x: usize| out[c * plane + y * 416 + x];
        // Inside the image: the flat colour, normalised in pixel units.
        assert!((at(0, 10, 10) - (200.0 - 123.675) / 58.82).abs() < 1e-5);
        assert!((at(2, 311, 415) - (50.0 - 103.53) / 58.82).abs() < 1e-5);
        // Below it: the pad value.
        assert!((at(1, 312, 0) - (114.0 - 116.28) / 58.82).abs() < 1e-5);
    }

    #[test]
    fn the_bilinear_resize_interpolates_between_pixel_centres() {
        // A 2-pixel ramp doubled: OpenCV gives 0, 64, 191, 255 for 0 and 255.
        let mut img = RgbImage::new(2, 1);
        img.put_pixel(1, 0, image::Rgb([255, 255, 255]));
        let out = resize_bilinear_cv(&img, 4, 1);
        let reds: Vec<u8> = out.chunks(3).map(|p| p[0]).collect();
        assert_eq!(reds, [0, 64, 191, 255]);
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
