//! Encoding: a reusable [`Encoder`] (buffers, zstd context, keyframes) and the
//! one-shot [`encode`].

use crate::error::EncodeError;
use crate::frame::{self, HeaderOut, Temporal};
use crate::keyframes::{Keyframe, KeyframeStore, DEFAULT_MAX_KEYFRAMES};
use crate::pack;
use crate::params::{CodecParams, Entropy, Granularity, Scheme};
use crate::quant::{self, Affine, ChannelLayout};
use crate::tensor::{DType, TensorView, ViewData};

/// Encodes one tensor as a standalone frame. Allocates a fresh zstd context: a
/// sender of many frames keeps an [`Encoder`] instead.
pub fn encode(view: &TensorView<'_>, params: &CodecParams) -> Result<Vec<u8>, EncodeError> {
    Encoder::new().encode(view, params)
}

/// A reusable encoder: keeps its scratch buffers and zstd context across frames, and
/// the keyframes it has sent (the newest [`DEFAULT_MAX_KEYFRAMES`] unless told
/// otherwise), so later frames can be sent as deltas against them.
///
/// Send a delta only against a keyframe the receiver has acknowledged: the receiver
/// answers a delta against a keyframe it lacks with
/// [`crate::DecodeError::UnknownKeyframe`].
#[derive(Debug)]
pub struct Encoder {
    zstd: Option<(i32, ZstdCompressor)>,
    floats: Vec<f32>,
    symbols: Vec<u8>,
    stage: Vec<u8>,
    bytes: Vec<u8>,
    compressed: Vec<u8>,
    params: Vec<Affine>,
    lo: Vec<f32>,
    hi: Vec<f32>,
    offs: Vec<f32>,
    invs: Vec<f32>,
    shape: Vec<u32>,
    keyframes: KeyframeStore,
}

/// `zstd::bulk::Compressor` is not `Debug`; this wrapper says so in one line.
struct ZstdCompressor(zstd::bulk::Compressor<'static>);

impl std::fmt::Debug for ZstdCompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ZstdCompressor")
    }
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

/// Scratch buffers used while turning values into symbols.
struct Scratch<'s> {
    floats: &'s mut Vec<f32>,
    symbols: &'s mut Vec<u8>,
    lo: &'s mut Vec<f32>,
    hi: &'s mut Vec<f32>,
    offs: &'s mut Vec<f32>,
    invs: &'s mut Vec<f32>,
}

impl Encoder {
    /// An encoder keeping up to [`DEFAULT_MAX_KEYFRAMES`] keyframes.
    pub fn new() -> Self {
        Self::with_max_keyframes(DEFAULT_MAX_KEYFRAMES)
    }

    /// An encoder keeping up to `max` keyframes (at least one), oldest dropped first.
    pub fn with_max_keyframes(max: usize) -> Self {
        Self {
            zstd: None,
            floats: Vec::new(),
            symbols: Vec::new(),
            stage: Vec::new(),
            bytes: Vec::new(),
            compressed: Vec::new(),
            params: Vec::new(),
            lo: Vec::new(),
            hi: Vec::new(),
            offs: Vec::new(),
            invs: Vec::new(),
            shape: Vec::new(),
            keyframes: KeyframeStore::new(max),
        }
    }

    /// Encodes a standalone frame.
    pub fn encode(
        &mut self,
        view: &TensorView<'_>,
        params: &CodecParams,
    ) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::new();
        self.encode_into(view, params, &mut out)?;
        Ok(out)
    }

    /// Encodes a standalone frame into `out` (cleared first; its capacity is reused).
    pub fn encode_into(
        &mut self,
        view: &TensorView<'_>,
        params: &CodecParams,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        self.encode_fresh(view, params, Temporal::Standalone, out)
    }

    /// Encodes a keyframe with id `id` into `out` and remembers its symbols, so that
    /// [`Encoder::encode_delta_into`] can code later tensors against it. The scheme
    /// must be affine or binary. A keyframe with the same id replaces the old one.
    pub fn encode_keyframe_into(
        &mut self,
        view: &TensorView<'_>,
        params: &CodecParams,
        id: u32,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        if params.scheme == Scheme::Lossless {
            return Err(EncodeError::KeyframeNeedsSymbols);
        }
        self.encode_fresh(view, params, Temporal::Keyframe(id), out)?;
        let Self {
            keyframes,
            symbols,
            params: qparams,
            ..
        } = self;
        let (scheme, bits, per_channel) = scheme_fields(&params.scheme);
        keyframes.insert(id, |k: &mut Keyframe| {
            k.shape.clear();
            k.shape.extend_from_slice(view.shape());
            k.dtype = view.dtype();
            k.scheme = scheme;
            k.bits = bits;
            k.per_channel = per_channel;
            k.params.clear();
            k.params.extend_from_slice(qparams);
            k.symbols.clear();
            k.symbols.extend_from_slice(symbols);
        });
        Ok(())
    }

    /// Encodes `view` as a delta against keyframe `keyframe` into `out`: the tensor is
    /// quantized with the keyframe's own parameters and each symbol is sent as its
    /// difference from the keyframe's symbol modulo `2^bits`, so an unchanged element
    /// costs a zero that zstd all but erases. Elements outside the keyframe's range
    /// are clamped to it (the error bound then holds only within that range): send a
    /// new keyframe when the content moves.
    pub fn encode_delta_into(
        &mut self,
        view: &TensorView<'_>,
        keyframe: u32,
        entropy: Entropy,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        out.clear();
        let level = check_level(entropy)?;
        self.set_shape(view)?;
        let Self {
            keyframes,
            floats,
            symbols,
            lo,
            hi,
            offs,
            invs,
            ..
        } = self;
        let key = keyframes
            .get(keyframe)
            .ok_or(EncodeError::UnknownKeyframe { id: keyframe })?;
        if key.shape != view.shape() {
            return Err(EncodeError::KeyframeMismatch {
                id: keyframe,
                reason: "shape differs",
            });
        }
        if key.dtype != view.dtype() {
            return Err(EncodeError::KeyframeMismatch {
                id: keyframe,
                reason: "dtype differs",
            });
        }
        let mut scratch = Scratch {
            floats,
            symbols,
            lo,
            hi,
            offs,
            invs,
        };
        if key.scheme == frame::SCHEME_BINARY {
            binary_symbols(view, &mut scratch)?;
        } else {
            let data = f32_data(view.data(), scratch.floats);
            scratch.symbols.clear();
            scratch.symbols.resize(data.len(), 0);
            let max_symbol = ((1u16 << key.bits) - 1) as u8;
            match key.per_channel {
                Some(axis) => quant::quantize_per_channel(
                    data,
                    ChannelLayout::new(view.shape(), axis),
                    &key.params,
                    max_symbol,
                    scratch.offs,
                    scratch.invs,
                    scratch.symbols,
                ),
                None => {
                    let p = key.params.first().copied().unwrap_or(Affine {
                        scale: 0.0,
                        offset: 0.0,
                    });
                    quant::quantize(data, p, max_symbol, scratch.symbols);
                }
            }
        }
        let mask = ((1u16 << key.bits) - 1) as u8;
        for (s, &k) in scratch.symbols.iter_mut().zip(&key.symbols) {
            *s = s.wrapping_sub(k) & mask;
        }
        let (scheme, bits, per_channel) = (key.scheme, key.bits, key.per_channel);
        self.stage.clear();
        pack::pack(&self.symbols, bits, &mut self.stage);
        let mut flags = frame::FLAG_DELTA;
        if per_channel.is_some() {
            flags |= frame::FLAG_PER_CHANNEL;
        }
        let header = Header {
            scheme,
            dtype: view.dtype(),
            bits,
            flags,
            axis: per_channel.unwrap_or(0) as u8,
            keyframe_id: keyframe,
        };
        self.emit(header, level, false, out)
    }

    /// Forgets keyframe `id`; returns whether it was held.
    pub fn forget_keyframe(&mut self, id: u32) -> bool {
        self.keyframes.remove(id)
    }

    /// Ids of the keyframes held, oldest first.
    pub fn keyframe_ids(&self) -> Vec<u32> {
        self.keyframes.ids().collect()
    }

    fn set_shape(&mut self, view: &TensorView<'_>) -> Result<(), EncodeError> {
        self.shape.clear();
        for (index, &size) in view.shape().iter().enumerate() {
            let d =
                u32::try_from(size).map_err(|_| EncodeError::DimensionTooLarge { index, size })?;
            self.shape.push(d);
        }
        Ok(())
    }

    fn encode_fresh(
        &mut self,
        view: &TensorView<'_>,
        params: &CodecParams,
        temporal: Temporal,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        out.clear();
        let level = check_level(params.entropy)?;
        self.set_shape(view)?;
        self.params.clear();
        self.stage.clear();
        let mut flags = match temporal {
            Temporal::Keyframe(_) => frame::FLAG_KEYFRAME,
            _ => 0,
        };
        let keyframe_id = match temporal {
            Temporal::Keyframe(id) | Temporal::Delta(id) => id,
            Temporal::Standalone => 0,
        };
        let (scheme, bits, per_channel) = scheme_fields(&params.scheme);
        let mut scratch = Scratch {
            floats: &mut self.floats,
            symbols: &mut self.symbols,
            lo: &mut self.lo,
            hi: &mut self.hi,
            offs: &mut self.offs,
            invs: &mut self.invs,
        };
        let mut with_params = false;
        match params.scheme {
            Scheme::Lossless => {
                let size = view.dtype().size();
                if level.is_some() && size > 1 {
                    flags |= frame::FLAG_BYTE_PLANES;
                    self.bytes.clear();
                    le_bytes(view.data(), &mut self.bytes);
                    pack::to_byte_planes(&self.bytes, size, &mut self.stage);
                } else {
                    le_bytes(view.data(), &mut self.stage);
                }
            }
            Scheme::Affine {
                bits: b,
                granularity,
            } => {
                with_params = true;
                affine_symbols(
                    view,
                    b.max_symbol(),
                    granularity,
                    &mut scratch,
                    &mut self.params,
                )?;
                pack::pack(&self.symbols, b.get(), &mut self.stage);
            }
            Scheme::Binary => {
                binary_symbols(view, &mut scratch)?;
                pack::pack(&self.symbols, 1, &mut self.stage);
            }
        }
        if let Some(axis) = per_channel {
            flags |= frame::FLAG_PER_CHANNEL;
            if axis >= view.shape().len() {
                return Err(EncodeError::AxisOutOfRange {
                    axis,
                    rank: view.shape().len(),
                });
            }
        }
        let header = Header {
            scheme,
            dtype: view.dtype(),
            bits: if scheme == frame::SCHEME_LOSSLESS {
                (view.dtype().size() * 8) as u8
            } else {
                bits
            },
            flags,
            axis: per_channel.unwrap_or(0) as u8,
            keyframe_id,
        };
        self.emit(header, level, with_params, out)
    }

    /// Writes header, parameters (when `with_params`), the staged payload through the
    /// entropy stage, and the checksum.
    fn emit(
        &mut self,
        h: Header,
        level: Option<i32>,
        with_params: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        let params: &[Affine] = if with_params { &self.params } else { &[] };
        frame::write_header(
            &HeaderOut {
                scheme: h.scheme,
                dtype: h.dtype,
                bits: h.bits,
                flags: h.flags,
                entropy: if level.is_some() {
                    frame::ENTROPY_ZSTD
                } else {
                    frame::ENTROPY_NONE
                },
                axis: h.axis,
                keyframe_id: h.keyframe_id,
                shape: &self.shape,
                params,
            },
            out,
        );
        let payload: &[u8] = match level {
            None => &self.stage,
            Some(level) => {
                let compressor = match &mut self.zstd {
                    Some((current, c)) => {
                        if *current != level {
                            c.0.set_compression_level(level)
                                .map_err(|e| EncodeError::Zstd(e.to_string()))?;
                            *current = level;
                        }
                        c
                    }
                    slot @ None => {
                        let c = zstd::bulk::Compressor::new(level)
                            .map_err(|e| EncodeError::Zstd(e.to_string()))?;
                        &mut slot.insert((level, ZstdCompressor(c))).1
                    }
                };
                self.compressed.clear();
                self.compressed
                    .reserve(zstd::compress_bound(self.stage.len()));
                compressor
                    .0
                    .compress_to_buffer(&self.stage, &mut self.compressed)
                    .map_err(|e| EncodeError::Zstd(e.to_string()))?;
                &self.compressed
            }
        };
        let len = u32::try_from(payload.len()).map_err(|_| EncodeError::PayloadTooLarge {
            bytes: payload.len(),
        })?;
        out.extend_from_slice(payload);
        frame::finish(out, len);
        Ok(())
    }
}

/// Header fields decided by the scheme and frame kind.
#[derive(Clone, Copy)]
struct Header {
    scheme: u8,
    dtype: DType,
    bits: u8,
    flags: u8,
    axis: u8,
    keyframe_id: u32,
}

fn scheme_fields(scheme: &Scheme) -> (u8, u8, Option<usize>) {
    match *scheme {
        Scheme::Lossless => (frame::SCHEME_LOSSLESS, 0, None),
        Scheme::Affine { bits, granularity } => (
            frame::SCHEME_AFFINE,
            bits.get(),
            match granularity {
                Granularity::PerTensor => None,
                Granularity::PerChannel { axis } => Some(axis),
            },
        ),
        Scheme::Binary => (frame::SCHEME_BINARY, 1, None),
    }
}

fn check_level(entropy: Entropy) -> Result<Option<i32>, EncodeError> {
    match entropy {
        Entropy::None => Ok(None),
        Entropy::Zstd { level } => {
            let range = zstd::compression_level_range();
            if range.contains(&level) {
                Ok(Some(level))
            } else {
                Err(EncodeError::ZstdLevel {
                    level,
                    min: *range.start(),
                    max: *range.end(),
                })
            }
        }
    }
}

/// The elements as f32: the caller's slice when it is f32, else converted into `scratch`.
fn f32_data<'s>(data: ViewData<'s>, scratch: &'s mut Vec<f32>) -> &'s [f32] {
    match data {
        ViewData::F32(d) => d,
        ViewData::F16(d) => {
            scratch.clear();
            scratch.extend(d.iter().map(|v| v.to_f32()));
            scratch
        }
        ViewData::BF16(d) => {
            scratch.clear();
            scratch.extend(d.iter().map(|v| v.to_f32()));
            scratch
        }
    }
}

/// Appends the elements' little-endian bytes.
fn le_bytes(data: ViewData<'_>, out: &mut Vec<u8>) {
    match data {
        ViewData::F32(d) => {
            if cfg!(target_endian = "little") {
                out.extend_from_slice(bytemuck::cast_slice(d));
            } else {
                out.extend(d.iter().flat_map(|v| v.to_le_bytes()));
            }
        }
        ViewData::F16(d) => {
            if cfg!(target_endian = "little") {
                out.extend_from_slice(bytemuck::cast_slice(d));
            } else {
                out.extend(d.iter().flat_map(|v| v.to_le_bytes()));
            }
        }
        ViewData::BF16(d) => {
            if cfg!(target_endian = "little") {
                out.extend_from_slice(bytemuck::cast_slice(d));
            } else {
                out.extend(d.iter().flat_map(|v| v.to_le_bytes()));
            }
        }
    }
}

fn affine_symbols(
    view: &TensorView<'_>,
    max_symbol: u8,
    granularity: Granularity,
    s: &mut Scratch<'_>,
    params: &mut Vec<Affine>,
) -> Result<(), EncodeError> {
    let data = f32_data(view.data(), s.floats);
    s.symbols.clear();
    s.symbols.resize(data.len(), 0);
    params.clear();
    match granularity {
        Granularity::PerTensor => {
            let (lo, hi) = quant::min_max(data);
            let p = quant::params_for_range(lo, hi, max_symbol).ok_or(EncodeError::NonFinite)?;
            params.push(p);
            quant::quantize(data, p, max_symbol, s.symbols);
        }
        Granularity::PerChannel { axis } => {
            let rank = view.shape().len();
            if axis >= rank || axis > usize::from(u8::MAX) {
                return Err(EncodeError::AxisOutOfRange { axis, rank });
            }
            let layout = ChannelLayout::new(view.shape(), axis);
            quant::min_max_per_channel(data, layout, s.lo, s.hi);
            for (&lo, &hi) in s.lo.iter().zip(s.hi.iter()) {
                params.push(
                    quant::params_for_range(lo, hi, max_symbol).ok_or(EncodeError::NonFinite)?,
                );
            }
            quant::quantize_per_channel(
                data, layout, params, max_symbol, s.offs, s.invs, s.symbols,
            );
        }
    }
    Ok(())
}

fn binary_symbols(view: &TensorView<'_>, s: &mut Scratch<'_>) -> Result<(), EncodeError> {
    let data = f32_data(view.data(), s.floats);
    if let Some(index) = quant::first_non_binary(data) {
        return Err(EncodeError::NotBinary {
            index,
            value: data.get(index).copied().unwrap_or(f32::NAN),
        });
    }
    s.symbols.clear();
    s.symbols.resize(data.len(), 0);
    quant::binary_symbols(data, s.symbols);
    Ok(())
}
