//! The frame layout (docs/codec.md has the table): writing a header and parsing one
//! from untrusted bytes. All integers are little-endian.
//!
//! ```text
//! 0   4  magic "SSTF"
//! 4   2  version (u16)
//! 6   1  scheme        0 lossless, 1 affine, 2 binary
//! 7   1  dtype         0 f32, 1 f16, 2 bf16 (of the tensor encoded and decoded)
//! 8   1  bits          per symbol: 32/16 lossless, 8/4/2 affine, 1 binary
//! 9   1  flags         bit0 per-channel, bit1 keyframe, bit2 delta, bit3 byte planes
//! 10  1  entropy       0 none, 1 zstd
//! 11  1  rank          0..=8
//! 12  1  axis          per-channel axis (0 otherwise)
//! 13  3  reserved      0
//! 16  4  keyframe id   (u32; 0 unless keyframe or delta)
//! 20  4  payload len   (u32)
//! 24  4  reserved      0
//! 28  4*rank dims      (u32 each)
//! ..  8*P params       (f32 scale, f32 offset) per group; P = 1 per tensor,
//!                      dims[axis] per channel, 0 for lossless, binary and deltas
//! ..  payload
//! end-4  4  CRC-32C of every byte before it
//! ```

use crate::error::DecodeError;
use crate::quant::Affine;
use crate::tensor::{DType, MAX_RANK};

/// First four bytes of every frame: "SplitStream Tensor Frame".
pub const MAGIC: [u8; 4] = *b"SSTF";
/// The version this crate writes; it reads every version from 1 up to this.
pub const VERSION: u16 = 1;

pub(crate) const FIXED_LEN: usize = 28;
pub(crate) const CHECKSUM_LEN: usize = 4;
const PAYLOAD_LEN_AT: usize = 20;

pub(crate) const SCHEME_LOSSLESS: u8 = 0;
pub(crate) const SCHEME_AFFINE: u8 = 1;
pub(crate) const SCHEME_BINARY: u8 = 2;

pub(crate) const FLAG_PER_CHANNEL: u8 = 1;
pub(crate) const FLAG_KEYFRAME: u8 = 2;
pub(crate) const FLAG_DELTA: u8 = 4;
pub(crate) const FLAG_BYTE_PLANES: u8 = 8;
const KNOWN_FLAGS: u8 = FLAG_PER_CHANNEL | FLAG_KEYFRAME | FLAG_DELTA | FLAG_BYTE_PLANES;

pub(crate) const ENTROPY_NONE: u8 = 0;
pub(crate) const ENTROPY_ZSTD: u8 = 1;

/// Header fields as the encoder sets them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HeaderOut<'a> {
    pub(crate) scheme: u8,
    pub(crate) dtype: DType,
    pub(crate) bits: u8,
    pub(crate) flags: u8,
    pub(crate) entropy: u8,
    pub(crate) axis: u8,
    pub(crate) keyframe_id: u32,
    pub(crate) shape: &'a [u32],
    pub(crate) params: &'a [Affine],
}

/// Appends the header and parameters to `out` (which the caller has cleared) with a
/// zero payload length, patched by [`finish`].
pub(crate) fn write_header(h: &HeaderOut<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&[
        h.scheme,
        h.dtype.code(),
        h.bits,
        h.flags,
        h.entropy,
        h.shape.len() as u8,
        h.axis,
        0,
        0,
        0,
    ]);
    out.extend_from_slice(&h.keyframe_id.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    for d in h.shape {
        out.extend_from_slice(&d.to_le_bytes());
    }
    for p in h.params {
        out.extend_from_slice(&p.scale.to_le_bytes());
        out.extend_from_slice(&p.offset.to_le_bytes());
    }
}

/// Patches the payload length (`payload_len` bytes follow `payload_start`) and
/// appends the checksum.
pub(crate) fn finish(out: &mut Vec<u8>, payload_len: u32) {
    if let Some(field) = out.get_mut(PAYLOAD_LEN_AT..PAYLOAD_LEN_AT + 4) {
        field.copy_from_slice(&payload_len.to_le_bytes());
    }
    let crc = crc32c::crc32c(out);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// What a frame carries besides its payload, after validation.
#[derive(Clone, Debug)]
pub(crate) struct Parsed<'a> {
    pub(crate) scheme: u8,
    pub(crate) dtype: DType,
    pub(crate) bits: u8,
    pub(crate) per_channel: Option<usize>,
    pub(crate) temporal: Temporal,
    pub(crate) byte_planes: bool,
    pub(crate) zstd: bool,
    pub(crate) shape: Vec<usize>,
    pub(crate) elements: usize,
    /// Raw parameter bytes, 8 per group (validated finite with non-negative scale).
    pub(crate) params: &'a [u8],
    pub(crate) payload: &'a [u8],
    /// Bytes the payload has once the entropy stage is undone.
    pub(crate) raw_len: usize,
}

/// Whether a frame stands alone, is a keyframe to remember, or a delta against one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Temporal {
    Standalone,
    Keyframe(u32),
    Delta(u32),
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    let mut a = [0u8; 2];
    if let Some(s) = b.get(at..at + 2) {
        a.copy_from_slice(s);
    }
    u16::from_le_bytes(a)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

fn byte_at(b: &[u8], at: usize) -> u8 {
    b.get(at).copied().unwrap_or(0)
}

pub(crate) fn param_at(params: &[u8], index: usize) -> Affine {
    let at = index.saturating_mul(8);
    Affine {
        scale: f32::from_bits(u32_at(params, at)),
        offset: f32::from_bits(u32_at(params, at.saturating_add(4))),
    }
}

fn invalid(field: &'static str, value: impl Into<u64>) -> DecodeError {
    DecodeError::InvalidField {
        field,
        value: value.into(),
    }
}

/// Parses and validates a frame. Checks, in order: magic, version, the length the
/// header declares, the checksum, then every field's meaning and the caller's limits.
/// Allocates only the shape (at most [`MAX_RANK`] entries).
pub(crate) fn parse(
    bytes: &[u8],
    max_elements: usize,
    max_bytes: usize,
) -> Result<Parsed<'_>, DecodeError> {
    if bytes.len() < 6 {
        // Too short even for magic and version; say BadMagic if what is there is wrong.
        let mut found = [0u8; 4];
        for (f, b) in found.iter_mut().zip(bytes) {
            *f = *b;
        }
        if bytes.iter().zip(MAGIC.iter()).any(|(a, b)| a != b) {
            return Err(DecodeError::BadMagic { found });
        }
        return Err(DecodeError::Truncated {
            needed: FIXED_LEN as u64,
            got: bytes.len(),
        });
    }
    let found = [bytes[0], bytes[1], bytes[2], bytes[3]];
    if found != MAGIC {
        return Err(DecodeError::BadMagic { found });
    }
    let version = u16_at(bytes, 4);
    match version {
        // Every layout this decoder reads. A later version adds an arm here and keeps
        // this one, so old frames stay readable.
        1 => parse_v1(bytes, max_elements, max_bytes),
        found => Err(DecodeError::UnsupportedVersion {
            found,
            supported: VERSION,
        }),
    }
}

fn parse_v1(
    bytes: &[u8],
    max_elements: usize,
    max_bytes: usize,
) -> Result<Parsed<'_>, DecodeError> {
    let got = bytes.len();
    if got < FIXED_LEN + CHECKSUM_LEN {
        return Err(DecodeError::Truncated {
            needed: (FIXED_LEN + CHECKSUM_LEN) as u64,
            got,
        });
    }
    let scheme = byte_at(bytes, 6);
    let dtype_code = byte_at(bytes, 7);
    let bits = byte_at(bytes, 8);
    let flags = byte_at(bytes, 9);
    let entropy = byte_at(bytes, 10);
    let rank = usize::from(byte_at(bytes, 11));
    let axis = usize::from(byte_at(bytes, 12));
    let keyframe_id = u32_at(bytes, 16);
    let payload_len = u32_at(bytes, PAYLOAD_LEN_AT);

    // Layout first (scheme, rank, dims, parameter count) so the checksum can be found.
    if !matches!(scheme, SCHEME_LOSSLESS | SCHEME_AFFINE | SCHEME_BINARY) {
        return Err(invalid("scheme", scheme));
    }
    if rank > MAX_RANK {
        return Err(invalid("rank", rank as u64));
    }
    let dims_end = FIXED_LEN + 4 * rank;
    if got < dims_end + CHECKSUM_LEN {
        return Err(DecodeError::Truncated {
            needed: (dims_end + CHECKSUM_LEN) as u64,
            got,
        });
    }
    let dims: Vec<u32> = (0..rank)
        .map(|i| u32_at(bytes, FIXED_LEN + 4 * i))
        .collect();
    let per_channel = flags & FLAG_PER_CHANNEL != 0;
    let delta = flags & FLAG_DELTA != 0;
    let groups: u64 = if scheme != SCHEME_AFFINE || delta {
        0
    } else if per_channel {
        match dims.get(axis) {
            Some(&d) => u64::from(d),
            None => return Err(invalid("axis", axis as u64)),
        }
    } else {
        1
    };
    let params_end = dims_end as u64 + 8 * groups;
    let declared = params_end + u64::from(payload_len) + CHECKSUM_LEN as u64;
    if declared > got as u64 {
        return Err(DecodeError::Truncated {
            needed: declared,
            got,
        });
    }
    if declared < got as u64 {
        return Err(DecodeError::TrailingBytes { declared, got });
    }
    // declared == got, so every offset below fits in usize.
    let body = got - CHECKSUM_LEN;
    let stored = u32_at(bytes, body);
    let computed = crc32c::crc32c(&bytes[..body]);
    if stored != computed {
        return Err(DecodeError::ChecksumMismatch { stored, computed });
    }
    let params_end = params_end as usize;
    let params = &bytes[dims_end..params_end];
    let payload = &bytes[params_end..body];

    // Meaning of every field.
    let dtype = DType::from_code(dtype_code).ok_or_else(|| invalid("dtype", dtype_code))?;
    if flags & !KNOWN_FLAGS != 0 {
        return Err(invalid("flags", flags));
    }
    for (at, name) in [(13, "reserved"), (14, "reserved"), (15, "reserved")] {
        if byte_at(bytes, at) != 0 {
            return Err(invalid(name, byte_at(bytes, at)));
        }
    }
    if u32_at(bytes, 24) != 0 {
        return Err(invalid("reserved", u32_at(bytes, 24)));
    }
    let keyframe = flags & FLAG_KEYFRAME != 0;
    let byte_planes = flags & FLAG_BYTE_PLANES != 0;
    match scheme {
        SCHEME_LOSSLESS => {
            if usize::from(bits) != dtype.size() * 8 {
                return Err(invalid("bits", bits));
            }
            if per_channel || keyframe || delta {
                return Err(invalid("flags", flags));
            }
        }
        SCHEME_AFFINE | SCHEME_BINARY => {
            let ok = if scheme == SCHEME_AFFINE {
                matches!(bits, 8 | 4 | 2)
            } else {
                bits == 1 && !per_channel
            };
            if !ok {
                return Err(invalid("bits", bits));
            }
            if byte_planes || (keyframe && delta) {
                return Err(invalid("flags", flags));
            }
        }
        other => return Err(invalid("scheme", other)),
    }
    if !per_channel && axis != 0 {
        return Err(invalid("axis", axis as u64));
    }
    if !(keyframe || delta) && keyframe_id != 0 {
        return Err(invalid("keyframe id", keyframe_id));
    }
    let zstd = match entropy {
        ENTROPY_NONE => false,
        ENTROPY_ZSTD => true,
        other => return Err(invalid("entropy", other)),
    };

    // Size, against the caller's limits, before anything is allocated for it.
    let elements = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(u64::from(d)));
    let shape64: Vec<u64> = dims.iter().map(|&d| u64::from(d)).collect();
    let limit = max_elements as u64;
    let elements = match elements {
        Some(e) if e <= limit => e as usize,
        other => {
            return Err(DecodeError::ShapeTooLarge {
                shape: shape64,
                elements: other.unwrap_or(u64::MAX),
                limit,
            })
        }
    };
    let out_bytes = elements as u64 * dtype.size() as u64;
    if out_bytes > max_bytes as u64 {
        return Err(DecodeError::OutputTooLarge {
            bytes: out_bytes,
            limit: max_bytes as u64,
        });
    }
    let raw_len = if scheme == SCHEME_LOSSLESS {
        elements * dtype.size()
    } else {
        crate::pack::packed_len(elements, bits)
    };
    if !zstd && payload.len() != raw_len {
        return Err(DecodeError::PayloadLength {
            expected: raw_len as u64,
            got: payload.len() as u64,
        });
    }
    for index in 0..groups as usize {
        let p = param_at(params, index);
        if !(p.scale.is_finite() && p.offset.is_finite() && p.scale >= 0.0) {
            return Err(DecodeError::InvalidParameter {
                index,
                scale: p.scale,
                offset: p.offset,
            });
        }
    }
    let temporal = if keyframe {
        Temporal::Keyframe(keyframe_id)
    } else if delta {
        Temporal::Delta(keyframe_id)
    } else {
        Temporal::Standalone
    };
    Ok(Parsed {
        scheme,
        dtype,
        bits,
        per_channel: per_channel.then_some(axis),
        temporal,
        byte_planes,
        zstd,
        shape: dims.iter().map(|&d| d as usize).collect(),
        elements,
        params,
        payload,
        raw_len,
    })
}
