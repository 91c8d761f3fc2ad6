//! The tensors the codec reads (borrowed views) and writes (owned tensors).

use half::{bf16, f16};

/// Most dimensions a frame may carry. Bottleneck tensors have 2 to 4; eight leaves
/// room without letting a hostile header declare thousands of dimensions.
pub const MAX_RANK: usize = 8;

/// Element type of a tensor, as it is before encoding and after decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE 754 binary32.
    F32,
    /// IEEE 754 binary16.
    F16,
    /// bfloat16: the top half of a binary32.
    BF16,
}

impl DType {
    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    pub(crate) const fn code(self) -> u8 {
        match self {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::BF16 => 2,
        }
    }

    pub(crate) const fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(DType::F32),
            1 => Some(DType::F16),
            2 => Some(DType::BF16),
            _ => None,
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        })
    }
}

/// Borrowed element data of a [`TensorView`].
#[derive(Clone, Copy, Debug)]
pub enum ViewData<'a> {
    /// f32 elements.
    F32(&'a [f32]),
    /// f16 elements.
    F16(&'a [f16]),
    /// bf16 elements.
    BF16(&'a [bf16]),
}

impl ViewData<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            ViewData::F32(d) => d.len(),
            ViewData::F16(d) => d.len(),
            ViewData::BF16(d) => d.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        match self {
            ViewData::F32(_) => DType::F32,
            ViewData::F16(_) => DType::F16,
            ViewData::BF16(_) => DType::BF16,
        }
    }
}

/// A row-major (C order) tensor borrowed from the caller: what [`crate::encode`] reads.
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    shape: &'a [usize],
    data: ViewData<'a>,
}

/// The shape given to [`TensorView::new`] does not describe the data.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShapeError {
    /// The product of the dimensions differs from the number of elements.
    #[error("shape {shape:?} holds {expected} elements but the data has {actual}: pass the tensor's real shape")]
    ElementCount {
        /// The shape given.
        shape: Vec<usize>,
        /// Product of the dimensions (saturated at `usize::MAX`).
        expected: usize,
        /// Elements in the data.
        actual: usize,
    },
    /// More dimensions than a frame carries.
    #[error("shape has {rank} dimensions, the codec carries at most {MAX_RANK}: reshape the tensor first")]
    RankTooLarge {
        /// Dimensions given.
        rank: usize,
    },
}

impl<'a> TensorView<'a> {
    /// A view of `data` with `shape`, checking that they agree.
    pub fn new(shape: &'a [usize], data: ViewData<'a>) -> Result<Self, ShapeError> {
        if shape.len() > MAX_RANK {
            return Err(ShapeError::RankTooLarge { rank: shape.len() });
        }
        let expected = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .unwrap_or(usize::MAX);
        if expected != data.len() {
            return Err(ShapeError::ElementCount {
                shape: shape.to_vec(),
                expected,
                actual: data.len(),
            });
        }
        Ok(Self { shape, data })
    }

    /// An f32 view.
    pub fn f32(shape: &'a [usize], data: &'a [f32]) -> Result<Self, ShapeError> {
        Self::new(shape, ViewData::F32(data))
    }

    /// An f16 view.
    pub fn f16(shape: &'a [usize], data: &'a [f16]) -> Result<Self, ShapeError> {
        Self::new(shape, ViewData::F16(data))
    }

    /// A bf16 view.
    pub fn bf16(shape: &'a [usize], data: &'a [bf16]) -> Result<Self, ShapeError> {
        Self::new(shape, ViewData::BF16(data))
    }

    /// The dimensions, outermost first.
    pub fn shape(&self) -> &'a [usize] {
        self.shape
    }

    /// The element data.
    pub fn data(&self) -> ViewData<'a> {
        self.data
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// Owned element data of a decoded [`Tensor`].
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    /// f32 elements.
    F32(Vec<f32>),
    /// f16 elements.
    F16(Vec<f16>),
    /// bf16 elements.
    BF16(Vec<bf16>),
}

impl TensorData {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(d) => d.len(),
            TensorData::F16(d) => d.len(),
            TensorData::BF16(d) => d.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        match self {
            TensorData::F32(_) => DType::F32,
            TensorData::F16(_) => DType::F16,
            TensorData::BF16(_) => DType::BF16,
        }
    }
}

/// A decoded row-major tensor: what [`crate::decode`] returns. Its dtype is the dtype
/// of the tensor that was encoded, whatever the scheme.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// The dimensions, outermost first.
    pub shape: Vec<usize>,
    /// The elements.
    pub data: TensorData,
}

impl Default for Tensor {
    fn default() -> Self {
        Self {
            shape: Vec::new(),
            data: TensorData::F32(Vec::new()),
        }
    }
}

impl Tensor {
    /// The element type.
    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    /// Borrow as a view (to re-encode, for instance).
    pub fn view(&self) -> TensorView<'_> {
        let data = match &self.data {
            TensorData::F32(d) => ViewData::F32(d),
            TensorData::F16(d) => ViewData::F16(d),
            TensorData::BF16(d) => ViewData::BF16(d),
        };
        TensorView {
            shape: &self.shape,
            data,
        }
    }

    /// The elements as f32 (a copy; exact for every dtype).
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.data {
            TensorData::F32(d) => d.clone(),
            TensorData::F16(d) => d.iter().map(|v| v.to_f32()).collect(),
            TensorData::BF16(d) => d.iter().map(|v| v.to_f32()).collect(),
        }
    }
}
