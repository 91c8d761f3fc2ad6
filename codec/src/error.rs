//! One error enum per operation: [`EncodeError`] for encoding, [`DecodeError`] for decoding.

/// Why a tensor could not be encoded. These are caller mistakes or unsuitable data,
/// never a corrupted frame.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EncodeError {
    /// A dimension does not fit the frame's 32-bit field.
    #[error("dimension {index} is {size}, the frame carries at most {max} per dimension", max = u32::MAX)]
    DimensionTooLarge {
        /// Which dimension.
        index: usize,
        /// Its size.
        size: usize,
    },
    /// Per-channel quantization was asked along a dimension the tensor lacks.
    #[error("per-channel axis {axis} is out of range for a tensor of rank {rank}")]
    AxisOutOfRange {
        /// The axis asked for.
        axis: usize,
        /// The tensor's rank.
        rank: usize,
    },
    /// Affine quantization needs a finite range and the tensor holds an infinity
    /// (NaN elements are ignored by the range and come back as the range's minimum).
    #[error("tensor holds an infinite value; affine quantization needs finite values: use Scheme::Lossless for this tensor")]
    NonFinite,
    /// The binary scheme got an element other than 0 or 1.
    #[error(
        "element {index} is {value}, the binary scheme carries only 0 and 1: use an affine scheme"
    )]
    NotBinary {
        /// Flat index of the first offending element.
        index: usize,
        /// Its value.
        value: f32,
    },
    /// A zstd level outside what zstd accepts.
    #[error("zstd level {level} is out of range {min}..={max}")]
    ZstdLevel {
        /// The level asked for.
        level: i32,
        /// Lowest level zstd accepts.
        min: i32,
        /// Highest level zstd accepts.
        max: i32,
    },
    /// zstd itself failed.
    #[error("zstd compression failed: {0}")]
    Zstd(String),
    /// The encoded payload would not fit the frame's 32-bit length field.
    #[error("payload of {bytes} bytes exceeds the frame's limit of {max} bytes: split the tensor", max = u32::MAX)]
    PayloadTooLarge {
        /// Payload size.
        bytes: usize,
    },
    /// A delta was asked against a keyframe this encoder does not hold.
    #[error("no keyframe {id} held by this encoder: encode a keyframe with that id first")]
    UnknownKeyframe {
        /// The keyframe id.
        id: u32,
    },
    /// A delta's tensor differs in shape or dtype from its keyframe.
    #[error("tensor does not match keyframe {id}: {reason}")]
    KeyframeMismatch {
        /// The keyframe id.
        id: u32,
        /// What differs.
        reason: &'static str,
    },
    /// Keyframes (and so deltas) need a quantized scheme: deltas are taken on symbols.
    #[error("keyframes need Scheme::Affine or Scheme::Binary; lossless floats have no symbols to take differences of")]
    KeyframeNeedsSymbols,
}

/// Why a frame could not be decoded. Every malformed input maps to one of these: the
/// decoder never panics and never allocates beyond the caller's [`crate::DecodeLimits`].
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    /// The frame ends before its declared end.
    #[error("frame is truncated: needs {needed} bytes, got {got}")]
    Truncated {
        /// Bytes the header says the frame has (or the fixed header, if even that is cut).
        needed: u64,
        /// Bytes given.
        got: usize,
    },
    /// Bytes follow the frame's declared end.
    #[error("frame has {got} bytes but declares {declared}: pass exactly one frame")]
    TrailingBytes {
        /// Bytes the header declares.
        declared: u64,
        /// Bytes given.
        got: usize,
    },
    /// Not a splitstream tensor frame.
    #[error("not a splitstream tensor frame (magic {found:02x?}, expected \"SSTF\")")]
    BadMagic {
        /// The first four bytes.
        found: [u8; 4],
    },
    /// A frame version this decoder does not know (a newer sender, or garbage).
    #[error("frame version {found} is not supported (this decoder reads versions 1..={supported}): upgrade the receiver")]
    UnsupportedVersion {
        /// The frame's version.
        found: u16,
        /// Newest version this decoder reads.
        supported: u16,
    },
    /// The CRC-32C over the frame does not match: the bytes were corrupted.
    #[error("checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): the frame was corrupted in transit or storage")]
    ChecksumMismatch {
        /// Checksum in the frame.
        stored: u32,
        /// Checksum of the bytes received.
        computed: u32,
    },
    /// A header field holds a value no encoder writes.
    #[error("header field {field} has invalid value {value}")]
    InvalidField {
        /// The field's name (as in docs/codec.md).
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// The shape has more elements than the caller's limit (or than memory could hold).
    #[error("shape {shape:?} has {elements} elements, over the limit of {limit}: raise DecodeLimits::max_elements if this is expected")]
    ShapeTooLarge {
        /// The declared shape.
        shape: Vec<u64>,
        /// Its element count (saturated at `u64::MAX`).
        elements: u64,
        /// The caller's limit.
        limit: u64,
    },
    /// The decoded tensor would take more bytes than the caller's limit.
    #[error("decoded tensor would take {bytes} bytes, over the limit of {limit}: raise DecodeLimits::max_bytes if this is expected")]
    OutputTooLarge {
        /// Bytes the tensor would take.
        bytes: u64,
        /// The caller's limit.
        limit: u64,
    },
    /// An uncompressed payload whose length differs from what the shape needs.
    #[error("payload has {got} bytes, the shape and scheme need {expected}")]
    PayloadLength {
        /// Bytes the shape needs.
        expected: u64,
        /// Bytes in the frame.
        got: u64,
    },
    /// The zstd stage failed or produced a size other than the shape needs.
    #[error("zstd stage is corrupt: {reason}")]
    Zstd {
        /// What zstd or the size check said.
        reason: String,
    },
    /// A quantization parameter is not finite or a scale is negative.
    #[error("quantization parameters {index} are invalid (scale {scale}, offset {offset})")]
    InvalidParameter {
        /// Which channel's parameters.
        index: usize,
        /// The scale.
        scale: f32,
        /// The offset.
        offset: f32,
    },
    /// A delta against a keyframe this decoder does not hold.
    #[error("delta frame refers to keyframe {id}, which this decoder does not hold: ask the sender for a new keyframe")]
    UnknownKeyframe {
        /// The keyframe id.
        id: u32,
    },
    /// A delta whose shape, dtype or scheme differs from its keyframe's.
    #[error("delta frame does not match keyframe {id}: {reason}")]
    KeyframeMismatch {
        /// The keyframe id.
        id: u32,
        /// What differs.
        reason: &'static str,
    },
}
