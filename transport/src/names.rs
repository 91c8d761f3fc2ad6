//! The names a device and an edge agree on in the handshake besides the model's own
//! split points: which bottleneck codec a session uses, and the offload pair. Split
//! point names belong to the model (each family names its points; see the models
//! crate's `SplitNet`): the transport carries them as opaque strings, and only
//! `offload` is reserved.

use crate::wire::CodecSpec;

/// Split name for offloaded frames (the edge runs the whole model on a JPEG).
pub const OFFLOAD_SPLIT: &str = "offload";
/// Codec scheme name for offloaded frames.
pub const JPEG_CODEC: &str = "jpeg";
/// A bottleneck codec, by the name devices and edges agree on. The codec crate's
/// parameters for each are chosen on the device (frames are self-describing); the
/// names let the handshake refuse what the edge does not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CodecChoice {
    /// f32, bit exact.
    Lossless,
    /// f32, bit exact, zstd level 1 on byte planes.
    LosslessZstd,
    /// 8-bit affine, one scale and offset per tensor (BottleFit's).
    U8,
    /// 8-bit affine per tensor, zstd level 1.
    U8Zstd,
    /// 8-bit affine, one scale and offset per embedding channel.
    U8Channel,
    /// 4-bit affine per channel.
    U4,
    /// f16, exact to f16's precision (an LLM's hidden states lose nothing measurable).
    F16,
    /// f16, zstd level 1 on byte planes.
    F16Zstd,
    /// 8-bit affine, one scale and offset per token (position): an LLM's hidden
    /// states, whose range differs from token to token.
    U8Token,
    /// 8-bit affine per token, zstd level 1.
    U8TokenZstd,
    /// 4-bit affine per token.
    U4Token,
}

impl CodecChoice {
    /// Every choice, for `--help`, tables and the edge's list of decodable codecs.
    pub const ALL: [CodecChoice; 11] = [
        Self::Lossless,
        Self::LosslessZstd,
        Self::U8,
        Self::U8Zstd,
        Self::U8Channel,
        Self::U4,
        Self::F16,
        Self::F16Zstd,
        Self::U8Token,
        Self::U8TokenZstd,
        Self::U4Token,
    ];

    /// Name on the wire and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Lossless => "lossless",
            Self::LosslessZstd => "lossless-zstd",
            Self::U8 => "u8",
            Self::U8Zstd => "u8-zstd",
            Self::U8Channel => "u8-channel",
            Self::U4 => "u4",
            Self::F16 => "f16",
            Self::F16Zstd => "f16-zstd",
            Self::U8Token => "u8-token",
            Self::U8TokenZstd => "u8-token-zstd",
            Self::U4Token => "u4-token",
        }
    }

    /// The choice of this name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The session's codec description.
    pub fn spec(self) -> CodecSpec {
        CodecSpec::new(self.name(), Vec::new())
    }
}

impl std::fmt::Display for CodecChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The codec description of offloaded frames.
pub fn jpeg_spec() -> CodecSpec {
    CodecSpec::new(JPEG_CODEC, Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_names_round_trip_and_are_distinct() {
        for c in CodecChoice::ALL {
            assert_eq!(CodecChoice::parse(c.name()), Some(c));
            assert_eq!(c.spec().scheme, c.name());
        }
        assert_eq!(CodecChoice::parse(JPEG_CODEC), None);
        assert_eq!(CodecChoice::parse("U8"), None);
    }
}
