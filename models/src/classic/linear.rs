//! scikit-learn's `LinearSVC` decision function, one-vs-rest.

use rayon::prelude::*;

#[derive(Clone, Debug)]
pub(super) struct Linear {
    /// `[rows, d]`: one row per class (one row only for two classes).
    coef: Vec<f64>,
    intercept: Vec<f64>,
    d: usize,
}

impl Linear {
    /// Shapes checked by the loader.
    pub(super) fn new(coef: Vec<f64>, intercept: Vec<f64>, d: usize) -> Self {
        Self { coef, intercept, d }
    }

    pub(super) fn work(&self) -> usize {
        self.coef.len()
    }

    /// Decision values per class. With two classes scikit-learn has one score `s`
    /// and predicts the second class when `s > 0`: the scores are `[-s, s]`, whose
    /// first argmax is the same.
    pub(super) fn decision(&self, z: &[f64], parallel: bool) -> Vec<f64> {
        let score =
            |(row, b): (&[f64], &f64)| row.iter().zip(z).map(|(w, x)| w * x).sum::<f64>() + b;
        let scores: Vec<f64> = if parallel {
            self.coef
                .par_chunks(self.d)
                .zip(self.intercept.par_iter())
                .map(score)
                .collect()
        } else {
            self.coef
                .chunks(self.d)
                .zip(self.intercept.iter())
                .map(score)
                .collect()
        };
        match scores.as_slice() {
            [s] => vec![-s, *s],
            _ => scores,
        }
    }
}
