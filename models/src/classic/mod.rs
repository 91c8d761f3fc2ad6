//! Non-neural classifiers on a network head's features, after the PULP paper (Tabanelli
//! et al., ACM TECS 2023): k-nearest neighbours, a linear SVM and a random forest,
//! trained in scikit-learn (`python/train_fallback.py`) and run here with the same
//! predictions, in parallel on the device's cores. A device whose battery is nearly
//! gone and whose edge cannot answer runs the head to its feature point and one of these
//! instead of the rest of the network (docs/fallback.md).
//!
//! Parity with scikit-learn is exact, not approximate, where scikit-learn's arithmetic
//! is specified:
//!
//! - **kNN** (`KNeighborsClassifier(metric="l2", algorithm="brute", weights="uniform")`):
//!   squared distances summed in f64 in feature order (scikit-learn's
//!   `euclidean_rdist`), the k nearest kept by scikit-learn's own fixed-size max-heap
//!   fed in training order (so ties at the k-th distance resolve as there), votes
//!   counted per class, the first of equal counts wins. The `"euclidean"` metric is
//!   refused: scikit-learn computes it with a GEMM expansion whose rounding is BLAS's.
//! - **Linear SVM** (`LinearSVC`, one-vs-rest): `x . coef_c + intercept_c` per class in
//!   f64, the first largest wins. scikit-learn sums the dot product in BLAS, in an order
//!   it does not specify: the scores agree to rounding (1e-12 on the fixture), the
//!   predicted classes are identical unless two classes tie to the last bit.
//! - **Random forest** (`RandomForestClassifier`): features cast to f32 and compared
//!   `x <= threshold` against f64 thresholds (scikit-learn's tree code casts X to
//!   float32); per-tree leaf probabilities (normalised as `predict_proba` normalises
//!   them, at export) summed in f64 in tree order, divided by the tree count, the first
//!   largest wins.
//!
//! An optional `StandardScaler` in front (`(x - mean) / scale` in f64) is part of the
//! file. Loading is strict: every count is capped before allocation, every index is
//! checked, and a bad file is an error naming what is wrong, never a panic.

mod forest;
mod format;
mod knn;
mod linear;
mod pool;

pub use format::{ClassicError, FeatureSpec, MAX_CLASSIC_BYTES};
pub use pool::{Pool, PoolError};

use std::path::Path;

use rayon::prelude::*;

use forest::Forest;
use knn::Knn;
use linear::Linear;

/// Which algorithm a file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClassicKind {
    /// k-nearest neighbours.
    Knn,
    /// A linear SVM, one-vs-rest.
    LinearSvc,
    /// A random forest.
    RandomForest,
}

impl ClassicKind {
    /// The `kind` metadata value (and the name in tables).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Knn => "knn",
            Self::LinearSvc => "linear_svc",
            Self::RandomForest => "random_forest",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "knn" => Some(Self::Knn),
            "linear_svc" => Some(Self::LinearSvc),
            "random_forest" => Some(Self::RandomForest),
            _ => None,
        }
    }
}

impl std::fmt::Display for ClassicKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One sample's answer.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassicPrediction {
    /// The predicted label (scikit-learn's `classes_[argmax]`).
    pub label: usize,
    /// Per class (in `classes` order): vote fractions (kNN), decision values (SVM) or
    /// averaged probabilities (forest).
    pub scores: Vec<f64>,
}

/// The algorithm and its parameters.
#[derive(Clone, Debug)]
enum Algo {
    Knn(Knn),
    Linear(Linear),
    Forest(Forest),
}

/// A loaded classifier (see the module docs).
#[derive(Clone, Debug)]
pub struct ClassicModel {
    algo: Algo,
    /// scikit-learn's `classes_`: the label of each score column.
    classes: Vec<usize>,
    class_names: Vec<String>,
    scaler: Option<(Vec<f64>, Vec<f64>)>,
    features: FeatureSpec,
    hyperparameters: String,
    n_features: usize,
}

/// Below this many multiply-adds a sample runs on one thread: handing work to the pool
/// costs a few microseconds, more than a small model's whole prediction.
const PARALLEL_MIN_WORK: usize = 32 * 1024;

impl ClassicModel {
    /// Reads a file written by `python/train_fallback.py` (capped at
    /// [`MAX_CLASSIC_BYTES`]).
    pub fn from_file(path: &Path) -> Result<Self, ClassicError> {
        format::read_file(path)
    }

    /// Parses the bytes of such a file; `source_name` appears in errors.
    pub fn from_bytes(bytes: &[u8], source_name: &str) -> Result<Self, ClassicError> {
        format::parse(bytes, source_name)
    }

    /// The algorithm.
    pub fn kind(&self) -> ClassicKind {
        match self.algo {
            Algo::Knn(_) => ClassicKind::Knn,
            Algo::Linear(_) => ClassicKind::LinearSvc,
            Algo::Forest(_) => ClassicKind::RandomForest,
        }
    }

    /// Feature count a sample must have.
    pub fn n_features(&self) -> usize {
        self.n_features
    }

    /// scikit-learn's `classes_` (labels, in score order).
    pub fn classes(&self) -> &[usize] {
        &self.classes
    }

    /// Class names by label (may be empty when the file gives none).
    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    /// Where the features come from: which model, which split point, which pooling.
    pub fn features(&self) -> &FeatureSpec {
        &self.features
    }

    /// The hyperparameters as the file states them (JSON), for tables and logs.
    pub fn hyperparameters(&self) -> &str {
        &self.hyperparameters
    }

    /// A rough count of multiply-adds (or comparisons) per sample, for the parallel
    /// threshold and for tables.
    pub fn work_per_sample(&self) -> usize {
        match &self.algo {
            Algo::Knn(k) => k.work(),
            Algo::Linear(l) => l.work(),
            Algo::Forest(f) => f.work(),
        }
    }

    /// Predicts one sample, spreading the work over the current rayon pool when it is
    /// large enough (kNN: distances by chunks of training points; forest: trees; SVM:
    /// classes). The result does not depend on the thread count.
    pub fn predict(&self, x: &[f32]) -> Result<ClassicPrediction, ClassicError> {
        let parallel = self.work_per_sample() >= PARALLEL_MIN_WORK;
        self.predict_with(x, parallel)
    }

    /// Predicts one sample on the calling thread only.
    pub fn predict_sequential(&self, x: &[f32]) -> Result<ClassicPrediction, ClassicError> {
        self.predict_with(x, false)
    }

    /// Predicts rows of `n_features` values each, rows in parallel.
    pub fn predict_batch(&self, rows: &[f32]) -> Result<Vec<ClassicPrediction>, ClassicError> {
        let d = self.n_features;
        if d == 0 || !rows.len().is_multiple_of(d) {
            return Err(ClassicError::FeatureCount {
                expected: d,
                got: rows.len(),
            });
        }
        rows.par_chunks(d)
            .map(|row| self.predict_with(row, false))
            .collect()
    }

    fn predict_with(&self, x: &[f32], parallel: bool) -> Result<ClassicPrediction, ClassicError> {
        if x.len() != self.n_features {
            return Err(ClassicError::FeatureCount {
                expected: self.n_features,
                got: x.len(),
            });
        }
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            // scikit-learn refuses NaN and infinities in most estimators too; a head
            // that produced one is broken, and no answer is better than a wrong one.
            return Err(ClassicError::NonFinite { index: i });
        }
        let scores = match &self.algo {
            // Trees compare the raw f32 features (no scaler is allowed before them).
            Algo::Forest(f) => f.proba(x, parallel),
            algo => {
                let z = self.scaled(x);
                match algo {
                    Algo::Knn(k) => k.votes(&z, self.classes.len(), parallel),
                    Algo::Linear(l) => l.decision(&z, parallel),
                    Algo::Forest(_) => unreachable!("matched above"),
                }
            }
        };
        let best = first_argmax(&scores);
        Ok(ClassicPrediction {
            label: self.classes[best],
            scores,
        })
    }

    fn scaled(&self, x: &[f32]) -> Vec<f64> {
        scale(x, self.scaler.as_ref())
    }

    /// Class logits for the network's answer type, indexed by label (`n_labels` long,
    /// at least the largest label + 1): `ln` of the scores of kNN and the forest (their
    /// softmax is then the scores), the SVM's decision values as they are, and
    /// `-inf` for labels the classifier never predicts. The predicted label is made the
    /// strict first maximum, so that any argmax of the logits names it.
    pub fn logits(&self, p: &ClassicPrediction, n_labels: usize) -> Vec<f32> {
        let n = n_labels.max(self.classes.iter().map(|&c| c + 1).max().unwrap_or(0));
        let mut out = vec![f32::NEG_INFINITY; n];
        let probabilities = !matches!(self.algo, Algo::Linear(_));
        for (&label, &s) in self.classes.iter().zip(&p.scores) {
            out[label] = if probabilities {
                s.ln() as f32
            } else {
                s as f32
            };
        }
        // The f32 rounding can merge close scores; keep the prediction on top.
        let top = out.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if out.iter().position(|&v| v == top) != Some(p.label) {
            out[p.label] = top.next_up();
        }
        out
    }
}

/// The features as f64, through the scaler when there is one (scikit-learn's
/// `StandardScaler.transform` on float64: subtract, then divide).
fn scale(x: &[f32], scaler: Option<&(Vec<f64>, Vec<f64>)>) -> Vec<f64> {
    match scaler {
        Some((mean, scale)) => x
            .iter()
            .zip(mean.iter().zip(scale))
            .map(|(&v, (&m, &s))| (f64::from(v) - m) / s)
            .collect(),
        None => x.iter().map(|&v| f64::from(v)).collect(),
    }
}

/// Index of the first largest value (numpy's `argmax`); 0 for an empty row.
pub(crate) fn first_argmax(values: &[f64]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_argmax_takes_the_first_of_equals() {
        assert_eq!(first_argmax(&[0.2, 0.5, 0.5, 0.1]), 1);
        assert_eq!(first_argmax(&[]), 0);
        assert_eq!(first_argmax(&[-1.0]), 0);
    }
}
