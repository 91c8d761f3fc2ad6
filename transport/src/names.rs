//! The names a device and an edge agree on in the handshake: where a model is split,
//! which bottleneck codec a session uses, and the offload pair. Both sides parse and
//! print them here, so they cannot drift apart.
//!
//! | split | meaning |
//! | --- | --- |
//! | `embed` | the device ran the patch embedding only (point 0) |
//! | `block{i}` | the device ran blocks `0..=i` (point `i + 1`) |
//! | `embed-bottleneck`, `block{i}-bottleneck` | the device also ran the learned bottleneck's encoder at that point and sends its code |
//! | `offload` | the device sends the whole frame as JPEG (codec `jpeg`) |

use crate::wire::CodecSpec;

/// Split name for offloaded frames (the edge runs the whole model on a JPEG).
pub const OFFLOAD_SPLIT: &str = "offload";
/// Codec scheme name for offloaded frames.
pub const JPEG_CODEC: &str = "jpeg";
/// Suffix of a split name whose payload is a learned bottleneck's code.
pub const BOTTLENECK_SUFFIX: &str = "-bottleneck";

/// The wire name of plain split point `point` of a ViT: `embed` for 0, `block{k-1}`
/// for `k` (the models crate's split-point names).
pub fn split_name(point: usize) -> String {
    match point {
        0 => "embed".to_owned(),
        k => format!("block{}", k - 1),
    }
}

/// The plain split point of a wire name (inverse of [`split_name`]); `None` for
/// anything else, bottleneck names included.
pub fn parse_split_name(name: &str) -> Option<usize> {
    if name == "embed" {
        return Some(0);
    }
    let digits = name.strip_prefix("block")?;
    // `usize::from_str` accepts a leading `+`; a name has digits only.
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let k: usize = digits.parse().ok()?;
    k.checked_add(1)
}

/// Where a split session cuts the model, as its split name says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SplitAt {
    /// The device runs the head to this point and sends the activation.
    Point(usize),
    /// The device runs the head to this point and the learned bottleneck's encoder,
    /// and sends the code; the edge decodes it and runs the tail.
    Bottleneck(usize),
}

impl SplitAt {
    /// The split point (head stages on the device).
    pub fn point(self) -> usize {
        match self {
            Self::Point(k) | Self::Bottleneck(k) => k,
        }
    }

    /// Whether the payload is a bottleneck code.
    pub fn is_bottleneck(self) -> bool {
        matches!(self, Self::Bottleneck(_))
    }

    /// The wire name.
    pub fn name(self) -> String {
        match self {
            Self::Point(k) => split_name(k),
            Self::Bottleneck(k) => format!("{}{BOTTLENECK_SUFFIX}", split_name(k)),
        }
    }

    /// The split of a wire name; `None` for `offload` and anything unknown.
    pub fn parse(name: &str) -> Option<Self> {
        match name.strip_suffix(BOTTLENECK_SUFFIX) {
            Some(plain) => parse_split_name(plain).map(Self::Bottleneck),
            None => parse_split_name(name).map(Self::Point),
        }
    }
}

impl std::fmt::Display for SplitAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

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
}

impl CodecChoice {
    /// Every choice, for `--help`, tables and the edge's list of decodable codecs.
    pub const ALL: [CodecChoice; 6] = [
        Self::Lossless,
        Self::LosslessZstd,
        Self::U8,
        Self::U8Zstd,
        Self::U8Channel,
        Self::U4,
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
    fn split_names_round_trip() {
        for k in 0..20 {
            assert_eq!(parse_split_name(&split_name(k)), Some(k));
            for at in [SplitAt::Point(k), SplitAt::Bottleneck(k)] {
                assert_eq!(SplitAt::parse(&at.name()), Some(at), "{at}");
            }
        }
        assert_eq!(
            SplitAt::parse("block3-bottleneck"),
            Some(SplitAt::Bottleneck(4))
        );
        assert_eq!(SplitAt::parse("embed"), Some(SplitAt::Point(0)));
    }

    #[test]
    fn malformed_split_names_are_none() {
        for bad in [
            "blockx",
            "block",
            "block+1",
            "block-1",
            "offload",
            "",
            "-bottleneck",
            "offload-bottleneck",
            "block99999999999999999999999",
        ] {
            assert_eq!(SplitAt::parse(bad), None, "{bad:?}");
        }
        assert_eq!(parse_split_name(&format!("block{}", usize::MAX)), None);
    }

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
