//! What the caller chooses when encoding: scheme, granularity and entropy stage.

/// Symbol width of affine quantization.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bits {
    /// 256 levels, one byte per element.
    B8,
    /// 16 levels, two elements per byte.
    B4,
    /// 4 levels, four elements per byte.
    B2,
}

impl Bits {
    /// Bits per symbol.
    pub const fn get(self) -> u8 {
        match self {
            Bits::B8 => 8,
            Bits::B4 => 4,
            Bits::B2 => 2,
        }
    }

    /// Largest symbol value, `2^bits - 1`.
    pub const fn max_symbol(self) -> u8 {
        match self {
            Bits::B8 => 255,
            Bits::B4 => 15,
            Bits::B2 => 3,
        }
    }
}

/// Which elements share one scale and offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Granularity {
    /// One scale and offset for the whole tensor (BottleFit's baseline).
    PerTensor,
    /// One scale and offset per index along `axis` (for ViT tokens `[B, N, D]`, axis 2
    /// gives one pair per embedding channel, which follows the per-channel outliers).
    PerChannel {
        /// The dimension whose indices each get their own parameters.
        axis: usize,
    },
}

/// How the tensor's values become symbols.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// The elements as they are, in their own dtype: bit exact.
    Lossless,
    /// Affine quantization `x ≈ offset + q * scale`, `q` in `0..2^bits`, rounded to
    /// nearest, so every element within its range is off by at most `scale / 2`.
    Affine {
        /// Symbol width.
        bits: Bits,
        /// Which elements share parameters.
        granularity: Granularity,
    },
    /// One bit per element for binary tensors (spikes): every element must be 0 or 1.
    Binary,
}

/// The entropy stage applied to the packed symbols.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Entropy {
    /// Packed symbols as they are.
    None,
    /// zstd at `level` (1 is fast and already takes most of the gain on tokens;
    /// negative levels are faster still).
    Zstd {
        /// zstd compression level, `-7..=22`.
        level: i32,
    },
}

/// Everything [`crate::encode`] needs besides the tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CodecParams {
    /// How values become symbols.
    pub scheme: Scheme,
    /// The entropy stage.
    pub entropy: Entropy,
}

impl CodecParams {
    /// Lossless with no entropy stage.
    pub const LOSSLESS: Self = Self {
        scheme: Scheme::Lossless,
        entropy: Entropy::None,
    };

    /// 8-bit per-tensor affine with zstd level 1: the default for bottleneck tokens.
    pub const UINT8_ZSTD1: Self = Self {
        scheme: Scheme::Affine {
            bits: Bits::B8,
            granularity: Granularity::PerTensor,
        },
        entropy: Entropy::Zstd { level: 1 },
    };

    /// Affine quantization with `bits`, per tensor, with `entropy`.
    pub const fn affine(bits: Bits, entropy: Entropy) -> Self {
        Self {
            scheme: Scheme::Affine {
                bits,
                granularity: Granularity::PerTensor,
            },
            entropy,
        }
    }

    /// Affine quantization with `bits`, one scale and offset per index along `axis`.
    pub const fn affine_per_channel(bits: Bits, axis: usize, entropy: Entropy) -> Self {
        Self {
            scheme: Scheme::Affine {
                bits,
                granularity: Granularity::PerChannel { axis },
            },
            entropy,
        }
    }

    /// The same parameters with another entropy stage.
    pub const fn with_entropy(self, entropy: Entropy) -> Self {
        Self {
            scheme: self.scheme,
            entropy,
        }
    }
}

impl Default for CodecParams {
    fn default() -> Self {
        Self::UINT8_ZSTD1
    }
}
