//! Decoding untrusted frames: a reusable [`Decoder`] (buffers, zstd context,
//! keyframes) and the one-shot [`decode`].

use half::{bf16, f16};

use crate::error::DecodeError;
use crate::frame::{self, Parsed, Temporal};
use crate::keyframes::{Keyframe, KeyframeStore, DEFAULT_MAX_KEYFRAMES};
use crate::pack;
use crate::quant::{self, Affine, ChannelLayout};
use crate::tensor::{DType, Tensor, TensorData};

/// The most a decoder will produce from one frame. Checked against the header before
/// anything is allocated for the tensor; a frame declaring more is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Most elements a decoded tensor may have.
    pub max_elements: usize,
    /// Most bytes a decoded tensor may take in its dtype.
    pub max_bytes: usize,
}

impl Default for DecodeLimits {
    /// 16 Mi elements and 64 MiB: a ViT-Large token tensor `[1, 577, 1024]` is 0.6 Mi
    /// elements, so this leaves a wide margin for batches while bounding what a
    /// hostile peer can make a receiver allocate per frame.
    fn default() -> Self {
        Self {
            max_elements: 16 << 20,
            max_bytes: 64 << 20,
        }
    }
}

/// Decodes one standalone frame (or keyframe) under `limits`. A delta frame fails
/// with [`DecodeError::UnknownKeyframe`]: deltas need a [`Decoder`] that saw the keyframe.
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<Tensor, DecodeError> {
    Decoder::with_limits(*limits).decode(bytes)
}

/// A reusable decoder: keeps scratch buffers and its zstd context across frames, and
/// the keyframes it has decoded (the newest [`DEFAULT_MAX_KEYFRAMES`] unless told
/// otherwise) for the deltas that refer to them.
#[derive(Debug)]
pub struct Decoder {
    limits: DecodeLimits,
    zstd: Option<ZstdDecompressor>,
    raw: Vec<u8>,
    bytes: Vec<u8>,
    symbols: Vec<u8>,
    floats: Vec<f32>,
    params: Vec<Affine>,
    offs: Vec<f32>,
    scales: Vec<f32>,
    keyframes: KeyframeStore,
}

/// `zstd::bulk::Decompressor` is not `Debug`.
struct ZstdDecompressor(zstd::bulk::Decompressor<'static>);

impl std::fmt::Debug for ZstdDecompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ZstdDecompressor")
    }
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder with [`DecodeLimits::default`].
    pub fn new() -> Self {
        Self::with_limits(DecodeLimits::default())
    }

    /// A decoder with `limits`, keeping up to [`DEFAULT_MAX_KEYFRAMES`] keyframes.
    pub fn with_limits(limits: DecodeLimits) -> Self {
        Self::with_limits_and_keyframes(limits, DEFAULT_MAX_KEYFRAMES)
    }

    /// A decoder with `limits`, keeping up to `max_keyframes` keyframes (at least
    /// one), oldest dropped first. Keyframe memory is at most
    /// `max_keyframes * limits.max_elements` bytes.
    pub fn with_limits_and_keyframes(limits: DecodeLimits, max_keyframes: usize) -> Self {
        Self {
            limits,
            zstd: None,
            raw: Vec::new(),
            bytes: Vec::new(),
            symbols: Vec::new(),
            floats: Vec::new(),
            params: Vec::new(),
            offs: Vec::new(),
            scales: Vec::new(),
            keyframes: KeyframeStore::new(max_keyframes),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> DecodeLimits {
        self.limits
    }

    /// Ids of the keyframes held, oldest first.
    pub fn keyframe_ids(&self) -> Vec<u32> {
        self.keyframes.ids().collect()
    }

    /// Forgets keyframe `id`; returns whether it was held.
    pub fn forget_keyframe(&mut self, id: u32) -> bool {
        self.keyframes.remove(id)
    }

    /// Decodes one frame into a new tensor.
    pub fn decode(&mut self, bytes: &[u8]) -> Result<Tensor, DecodeError> {
        let mut out = Tensor::default();
        self.decode_into(bytes, &mut out)?;
        Ok(out)
    }

    /// Decodes one frame into `out`, reusing its allocation when the dtype matches.
    /// On error `out` holds unspecified (but valid) contents.
    pub fn decode_into(&mut self, bytes: &[u8], out: &mut Tensor) -> Result<(), DecodeError> {
        let p = frame::parse(bytes, self.limits.max_elements, self.limits.max_bytes)?;
        // The inflated payload lives in a buffer taken out of `self` for the call, so
        // the rest of the decoder can be borrowed mutably beside it.
        let mut inflated = std::mem::take(&mut self.raw);
        let result = self.decode_parsed(&p, &mut inflated, out);
        self.raw = inflated;
        result
    }

    fn decode_parsed(
        &mut self,
        p: &Parsed<'_>,
        inflated: &mut Vec<u8>,
        out: &mut Tensor,
    ) -> Result<(), DecodeError> {
        let raw: &[u8] = if p.zstd {
            let d = match &mut self.zstd {
                Some(d) => d,
                slot @ None => {
                    let d = zstd::bulk::Decompressor::new().map_err(|e| DecodeError::Zstd {
                        reason: e.to_string(),
                    })?;
                    slot.insert(ZstdDecompressor(d))
                }
            };
            inflated.clear();
            // Exactly what the (limit-checked) shape needs: zstd cannot write past
            // the capacity, and a payload that inflates to more is an error.
            inflated.reserve(p.raw_len);
            let n =
                d.0.decompress_to_buffer(p.payload, inflated)
                    .map_err(|e| DecodeError::Zstd {
                        reason: e.to_string(),
                    })?;
            if n != p.raw_len {
                return Err(DecodeError::Zstd {
                    reason: format!("inflates to {n} bytes, the shape needs {}", p.raw_len),
                });
            }
            inflated
        } else {
            p.payload
        };
        out.shape.clear();
        out.shape.extend_from_slice(&p.shape);
        if p.scheme == frame::SCHEME_LOSSLESS {
            let raw = if p.byte_planes {
                pack::from_byte_planes(raw, p.dtype.size(), &mut self.bytes);
                &self.bytes[..]
            } else {
                raw
            };
            fill_lossless(raw, p.dtype, p.elements, &mut out.data);
            return Ok(());
        }
        self.decode_symbols(p, raw, out)
    }

    fn decode_symbols(
        &mut self,
        p: &Parsed<'_>,
        raw: &[u8],
        out: &mut Tensor,
    ) -> Result<(), DecodeError> {
        let Self {
            keyframes,
            symbols,
            floats,
            params,
            offs,
            scales,
            ..
        } = self;
        // Symbols and the parameters that give them values.
        let key: Option<&Keyframe> = match p.temporal {
            Temporal::Delta(id) => {
                let key = keyframes
                    .get(id)
                    .ok_or(DecodeError::UnknownKeyframe { id })?;
                let reason = if key.shape != p.shape {
                    Some("shape differs")
                } else if key.dtype != p.dtype {
                    Some("dtype differs")
                } else if key.scheme != p.scheme || key.bits != p.bits {
                    Some("scheme differs")
                } else if key.per_channel != p.per_channel {
                    Some("quantization granularity differs")
                } else {
                    None
                };
                if let Some(reason) = reason {
                    return Err(DecodeError::KeyframeMismatch { id, reason });
                }
                Some(key)
            }
            _ => None,
        };
        pack::unpack(raw, p.bits, p.elements, symbols);
        if let Some(key) = key {
            let mask = ((1u16 << p.bits) - 1) as u8;
            for (s, &k) in symbols.iter_mut().zip(&key.symbols) {
                *s = s.wrapping_add(k) & mask;
            }
        }
        params.clear();
        match key {
            Some(key) => params.extend_from_slice(&key.params),
            None => params.extend((0..p.params.len() / 8).map(|i| frame::param_at(p.params, i))),
        }

        // Values, in f32 straight into the output when that is the dtype.
        let mut values = take_f32(&mut out.data, p.dtype, floats);
        values.clear();
        values.resize(p.elements, 0.0);
        if p.scheme == frame::SCHEME_BINARY {
            quant::binary_values(symbols, &mut values);
        } else {
            match p.per_channel {
                Some(axis) => quant::dequantize_per_channel(
                    symbols,
                    ChannelLayout::new(&p.shape, axis),
                    params,
                    offs,
                    scales,
                    &mut values,
                ),
                None => {
                    let a = params.first().copied().unwrap_or(Affine {
                        scale: 0.0,
                        offset: 0.0,
                    });
                    quant::dequantize(symbols, a, &mut values);
                }
            }
        }
        put_values(values, p.dtype, &mut out.data, floats);

        if let Temporal::Keyframe(id) = p.temporal {
            keyframes.insert(id, |k| {
                k.shape.clear();
                k.shape.extend_from_slice(&p.shape);
                k.dtype = p.dtype;
                k.scheme = p.scheme;
                k.bits = p.bits;
                k.per_channel = p.per_channel;
                k.params.clear();
                k.params.extend_from_slice(params);
                k.symbols.clear();
                k.symbols.extend_from_slice(symbols);
            });
        }
        Ok(())
    }
}

/// A Vec<f32> to dequantize into: the output's own when it is f32, else the scratch.
fn take_f32(data: &mut TensorData, dtype: DType, scratch: &mut Vec<f32>) -> Vec<f32> {
    if dtype == DType::F32 {
        if let TensorData::F32(v) = std::mem::replace(data, TensorData::F32(Vec::new())) {
            return v;
        }
        Vec::new()
    } else {
        std::mem::take(scratch)
    }
}

/// Puts dequantized values into the output in its dtype, returning scratch buffers.
fn put_values(values: Vec<f32>, dtype: DType, data: &mut TensorData, scratch: &mut Vec<f32>) {
    match dtype {
        DType::F32 => *data = TensorData::F32(values),
        DType::F16 => {
            let mut v = match std::mem::replace(data, TensorData::F32(Vec::new())) {
                TensorData::F16(v) => v,
                _ => Vec::new(),
            };
            v.clear();
            v.extend(values.iter().map(|&x| f16::from_f32(x)));
            *data = TensorData::F16(v);
            *scratch = values;
        }
        DType::BF16 => {
            let mut v = match std::mem::replace(data, TensorData::F32(Vec::new())) {
                TensorData::BF16(v) => v,
                _ => Vec::new(),
            };
            v.clear();
            v.extend(values.iter().map(|&x| bf16::from_f32(x)));
            *data = TensorData::BF16(v);
            *scratch = values;
        }
    }
}

/// Lossless payload bytes (little-endian, `elements * dtype.size()` of them, checked
/// by the parser) into the output.
fn fill_lossless(raw: &[u8], dtype: DType, elements: usize, data: &mut TensorData) {
    let old = std::mem::replace(data, TensorData::F32(Vec::new()));
    *data = match dtype {
        DType::F32 => {
            let mut v = match old {
                TensorData::F32(v) => v,
                _ => Vec::new(),
            };
            v.clear();
            v.extend(
                raw.chunks_exact(4)
                    .take(elements)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            );
            TensorData::F32(v)
        }
        DType::F16 => {
            let mut v = match old {
                TensorData::F16(v) => v,
                _ => Vec::new(),
            };
            v.clear();
            v.extend(
                raw.chunks_exact(2)
                    .take(elements)
                    .map(|b| f16::from_le_bytes([b[0], b[1]])),
            );
            TensorData::F16(v)
        }
        DType::BF16 => {
            let mut v = match old {
                TensorData::BF16(v) => v,
                _ => Vec::new(),
            };
            v.clear();
            v.extend(
                raw.chunks_exact(2)
                    .take(elements)
                    .map(|b| bf16::from_le_bytes([b[0], b[1]])),
            );
            TensorData::BF16(v)
        }
    };
}
