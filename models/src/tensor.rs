//! The host tensor: dense, row-major `f32` in ordinary memory.
//!
//! It is the currency between the outside world (images, safetensors files, the codec)
//! and a [`Backend`](crate::backend::Backend): a backend uploads it into its own form
//! once and reads results back into it once.

use std::fmt;

/// Most elements a tensor may hold (4 Gi): caps every allocation made from a shape that
/// came from a file or the network.
pub const MAX_ELEMENTS: usize = 1 << 32;

/// Errors building a [`HostTensor`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    /// The data length does not equal the product of the dimensions.
    #[error("tensor of shape {shape:?} needs {expected} values, got {actual}")]
    LengthMismatch {
        /// The requested shape.
        shape: Vec<usize>,
        /// Elements the shape needs.
        expected: usize,
        /// Elements supplied.
        actual: usize,
    },
    /// The shape describes more than [`MAX_ELEMENTS`] elements (or overflows).
    #[error("tensor of shape {shape:?} is too large (limit {MAX_ELEMENTS} elements)")]
    TooLarge {
        /// The requested shape.
        shape: Vec<usize>,
    },
}

/// Number of elements of `shape`, or `None` when it overflows or exceeds [`MAX_ELEMENTS`].
pub fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= MAX_ELEMENTS)
}

/// A dense row-major `f32` tensor in host memory.
#[derive(Clone, PartialEq)]
pub struct HostTensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl HostTensor {
    /// A tensor from its shape and row-major data; the lengths must agree.
    pub fn new(shape: impl Into<Vec<usize>>, data: Vec<f32>) -> Result<Self, ShapeError> {
        let shape = shape.into();
        let expected = checked_numel(&shape).ok_or_else(|| ShapeError::TooLarge {
            shape: shape.clone(),
        })?;
        if expected != data.len() {
            return Err(ShapeError::LengthMismatch {
                shape,
                expected,
                actual: data.len(),
            });
        }
        Ok(Self { shape, data })
    }

    /// A tensor of zeros.
    pub fn zeros(shape: impl Into<Vec<usize>>) -> Result<Self, ShapeError> {
        let shape = shape.into();
        let n = checked_numel(&shape).ok_or_else(|| ShapeError::TooLarge {
            shape: shape.clone(),
        })?;
        Ok(Self {
            shape,
            data: vec![0.0; n],
        })
    }

    /// The dimensions, outermost first.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The values in row-major order.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// The values in row-major order, mutably.
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// Takes the values out.
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// The same data under another shape with the same number of elements.
    pub fn reshape(self, shape: impl Into<Vec<usize>>) -> Result<Self, ShapeError> {
        Self::new(shape, self.data)
    }

    /// Index of the largest value of each row of the last dimension, with its value,
    /// the `k` best in descending order (ties: lower index first). NaN sorts last.
    pub fn topk_rows(&self, k: usize) -> Vec<Vec<(usize, f32)>> {
        let cols = self.shape.last().copied().unwrap_or(0);
        if cols == 0 {
            return Vec::new();
        }
        self.data
            .chunks_exact(cols)
            .map(|row| {
                let mut idx: Vec<usize> = (0..cols).collect();
                idx.sort_by(|&a, &b| {
                    let (x, y) = (row[a], row[b]);
                    y.partial_cmp(&x)
                        .unwrap_or_else(|| x.is_nan().cmp(&y.is_nan()))
                        .then(a.cmp(&b))
                });
                idx.into_iter().take(k).map(|i| (i, row[i])).collect()
            })
            .collect()
    }
}

impl fmt::Debug for HostTensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostTensor")
            .field("shape", &self.shape)
            .field("len", &self.data.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_must_match_shape() {
        assert!(HostTensor::new([2, 3], vec![0.0; 5]).is_err());
        assert!(HostTensor::new([2, 3], vec![0.0; 6]).is_ok());
    }

    #[test]
    fn overflowing_shape_is_refused() {
        assert!(matches!(
            HostTensor::zeros([usize::MAX, 2]),
            Err(ShapeError::TooLarge { .. })
        ));
    }

    #[test]
    fn topk_orders_descending_per_row() {
        let t = HostTensor::new([2, 3], vec![0.1, 0.9, 0.5, 3.0, 1.0, 2.0]).unwrap();
        let top = t.topk_rows(2);
        assert_eq!(top[0].iter().map(|p| p.0).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(top[1].iter().map(|p| p.0).collect::<Vec<_>>(), [0, 2]);
    }
}
