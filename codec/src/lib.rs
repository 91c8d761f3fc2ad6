//! The bottleneck tensor wire format: quantization, bit packing, zstd and temporal deltas.
//!
//! Every tensor that crosses the link is one self-describing frame (layout in
//! `docs/codec.md` and [`frame`](crate::MAGIC)): magic, version, scheme, dtype, shape,
//! quantization parameters, entropy stage, payload and a CRC-32C.
//!
//! ```
//! use splitstream_codec::{decode, encode, CodecParams, DecodeLimits, TensorView};
//!
//! let shape = [2, 197, 192];
//! let tokens: Vec<f32> = (0..2 * 197 * 192).map(|i| (i as f32 * 0.01).sin()).collect();
//! let view = TensorView::f32(&shape, &tokens).unwrap();
//! let frame = encode(&view, &CodecParams::UINT8_ZSTD1).unwrap();
//! let back = decode(&frame, &DecodeLimits::default()).unwrap();
//! assert_eq!(back.shape, shape);
//! ```
//!
//! Senders and receivers of streams keep an [`Encoder`] and a [`Decoder`]: they reuse
//! buffers and zstd contexts, and remember keyframes for temporal deltas.
#![warn(missing_docs, unreachable_pub)]
#![forbid(unsafe_code)]

mod decoder;
mod encoder;
mod error;
mod frame;
mod keyframes;
mod pack;
mod params;
mod quant;
mod tensor;

pub use decoder::{decode, DecodeLimits, Decoder};
pub use encoder::{encode, Encoder};
pub use error::{DecodeError, EncodeError};
pub use frame::{MAGIC, VERSION};
pub use keyframes::DEFAULT_MAX_KEYFRAMES;
pub use params::{Bits, CodecParams, Entropy, Granularity, Scheme};
pub use tensor::{DType, ShapeError, Tensor, TensorData, TensorView, ViewData, MAX_RANK};

/// The analytic error bound of affine quantization for a frame: the largest
/// `scale / 2` over its parameter groups. Every decoded element within its group's
/// range is at most this far (plus f32 rounding) from the encoded value. `None` for
/// lossless and binary frames (exact) and for malformed frames.
pub fn max_quantization_error(frame_bytes: &[u8]) -> Option<f32> {
    let p = frame::parse(frame_bytes, usize::MAX, usize::MAX).ok()?;
    if p.scheme != frame::SCHEME_AFFINE || p.params.is_empty() {
        return None;
    }
    (0..p.params.len() / 8)
        .map(|i| frame::param_at(p.params, i).scale / 2.0)
        .reduce(f32::max)
}
