//! How a head's output becomes one feature vector. The device and
//! `splitstream features` (which makes the training data) call the same function, so
//! the classifier sees at run time exactly the numbers it was trained on.

use std::str::FromStr;

use crate::HostTensor;

/// Pooling of a `[1, N, D]` token activation (a ViT head, or a token bottleneck's
/// code) into one vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pool {
    /// The mean over the N tokens (class token included): D values.
    Mean,
    /// The first (class) token: D values.
    Cls,
    /// The mean, then the class token: 2D values.
    MeanCls,
}

/// Why an activation could not be pooled, or a pooling name was not known.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    /// Not `[1, N, D]` with N, D > 0.
    #[error("pooling takes one frame's tokens [1, N, D], got shape {0:?}")]
    Shape(Vec<usize>),
    /// An unknown name.
    #[error("pooling {0:?} is not one of mean, cls, mean_cls")]
    Unknown(String),
}

impl Pool {
    /// The name in files and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mean => "mean",
            Self::Cls => "cls",
            Self::MeanCls => "mean_cls",
        }
    }

    /// Feature count for tokens of width `d`.
    pub fn dim(self, d: usize) -> usize {
        match self {
            Self::MeanCls => 2 * d,
            _ => d,
        }
    }

    /// The feature vector of one frame's tokens. The mean sums in f64 in token order
    /// and rounds once to f32.
    pub fn apply(self, tokens: &HostTensor) -> Result<Vec<f32>, PoolError> {
        let &[1, n, d] = tokens.shape() else {
            return Err(PoolError::Shape(tokens.shape().to_vec()));
        };
        if n == 0 || d == 0 {
            return Err(PoolError::Shape(tokens.shape().to_vec()));
        }
        let data = tokens.data();
        let mean = || {
            let mut sum = vec![0.0f64; d];
            for row in data.chunks_exact(d) {
                for (s, &v) in sum.iter_mut().zip(row) {
                    *s += f64::from(v);
                }
            }
            sum.into_iter()
                .map(|s| (s / n as f64) as f32)
                .collect::<Vec<f32>>()
        };
        let cls = || data[..d].to_vec();
        Ok(match self {
            Self::Mean => mean(),
            Self::Cls => cls(),
            Self::MeanCls => {
                let mut v = mean();
                v.extend(cls());
                v
            }
        })
    }
}

impl FromStr for Pool {
    type Err = PoolError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "mean" => Ok(Self::Mean),
            "cls" => Ok(Self::Cls),
            "mean_cls" => Ok(Self::MeanCls),
            other => Err(PoolError::Unknown(other.to_owned())),
        }
    }
}

impl std::fmt::Display for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_mean_and_class_token() {
        let t = HostTensor::new([1, 2, 3], vec![1.0, 2.0, 3.0, 3.0, 4.0, 8.0]).unwrap();
        assert_eq!(Pool::Mean.apply(&t).unwrap(), vec![2.0, 3.0, 5.5]);
        assert_eq!(Pool::Cls.apply(&t).unwrap(), vec![1.0, 2.0, 3.0]);
        assert_eq!(Pool::MeanCls.apply(&t).unwrap().len(), Pool::MeanCls.dim(3));
        let batch = HostTensor::new([2, 1, 3], vec![0.0; 6]).unwrap();
        assert!(matches!(Pool::Mean.apply(&batch), Err(PoolError::Shape(_))));
        assert_eq!("mean_cls".parse::<Pool>(), Ok(Pool::MeanCls));
        assert!("max".parse::<Pool>().is_err());
    }
}
