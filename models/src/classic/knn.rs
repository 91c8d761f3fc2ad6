//! k-nearest neighbours as scikit-learn's brute-force `ArgKminClassMode` computes them.

use rayon::prelude::*;

/// Training points per parallel chunk of distances.
const CHUNK: usize = 256;

#[derive(Clone, Debug)]
pub(super) struct Knn {
    /// Training points, row-major `[n, d]`, through the scaler as scikit-learn holds
    /// them (`_fit_X`): the file's f32 points upcast and scaled in f64 at load, the
    /// same arithmetic as `StandardScaler.transform` at training.
    x: Vec<f64>,
    /// Class index (into `classes`) of each training point.
    y: Vec<usize>,
    d: usize,
    k: usize,
}

impl Knn {
    /// `x` is `[y.len(), d]` and `1 <= k <= y.len()`, checked by the loader.
    pub(super) fn new(x: Vec<f64>, y: Vec<usize>, d: usize, k: usize) -> Self {
        Self { x, y, d, k }
    }

    pub(super) fn work(&self) -> usize {
        self.x.len()
    }

    /// Vote fractions per class for a (scaled) sample.
    pub(super) fn votes(&self, z: &[f64], n_classes: usize, parallel: bool) -> Vec<f64> {
        // The distances are the work, and independent: computed in parallel. The heap
        // then takes them in training order, as scikit-learn's does.
        let mut dist = vec![0.0f64; self.y.len()];
        let fill = |(chunk, out): (usize, &mut [f64])| {
            let start = chunk * CHUNK;
            for (i, o) in out.iter_mut().enumerate() {
                let row = &self.x[(start + i) * self.d..(start + i + 1) * self.d];
                *o = rdist(z, row);
            }
        };
        if parallel {
            dist.par_chunks_mut(CHUNK).enumerate().for_each(fill);
        } else {
            dist.chunks_mut(CHUNK).enumerate().for_each(fill);
        }
        let mut heap_d = vec![f64::INFINITY; self.k];
        let mut heap_i = vec![0usize; self.k];
        for (j, &v) in dist.iter().enumerate() {
            heap_push(&mut heap_d, &mut heap_i, v, j);
        }
        // Uniform weights: one vote each (scikit-learn adds 1.0 per neighbour).
        let mut counts = vec![0.0f64; n_classes];
        for &j in &heap_i {
            counts[self.y[j]] += 1.0;
        }
        // ArgKminClassMode returns the counts over k; the argmax is the same.
        let k = self.k as f64;
        counts.iter().map(|c| c / k).collect()
    }
}

/// scikit-learn's `euclidean_rdist`: `(a - b)` in the input's precision (here f64),
/// squared and summed in order.
fn rdist(z: &[f64], row: &[f64]) -> f64 {
    let mut d = 0.0f64;
    for (&a, &b) in z.iter().zip(row) {
        let t = a - b;
        d += t * t;
    }
    d
}

/// scikit-learn's `heap_push` (sklearn/utils/_heap.pyx): a fixed-size max-heap whose
/// root is the worst kept; a value not strictly better than the root is dropped, so
/// among equal distances the earlier training point stays. Reproduced step for step:
/// which of several equal values sits at the root decides which one leaves.
fn heap_push(values: &mut [f64], indices: &mut [usize], val: f64, val_idx: usize) {
    let size = values.len();
    if size == 0 || val >= values[0] {
        return;
    }
    values[0] = val;
    indices[0] = val_idx;
    let mut current = 0;
    loop {
        let left = 2 * current + 1;
        let right = left + 1;
        // scikit-learn's two branches for "no right child" and "left child the larger"
        // both take the left child when it exceeds `val`: one branch here.
        let swap = if left >= size {
            break;
        } else if right >= size || values[left] >= values[right] {
            if val < values[left] {
                left
            } else {
                break;
            }
        } else if val < values[right] {
            right
        } else {
            break;
        };
        values[current] = values[swap];
        indices[current] = indices[swap];
        current = swap;
    }
    values[current] = val;
    indices[current] = val_idx;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heap_keeps_the_k_smallest_and_the_earlier_of_equals() {
        let mut d = vec![f64::INFINITY; 3];
        let mut i = vec![0; 3];
        for (j, v) in [5.0, 1.0, 4.0, 1.0, 9.0, 2.0, 4.0].into_iter().enumerate() {
            heap_push(&mut d, &mut i, v, j);
        }
        let mut kept: Vec<(u64, usize)> = d.iter().map(|v| v.to_bits()).zip(i).collect();
        kept.sort();
        // 1.0 (1), 1.0 (3), 2.0 (5): the later 4.0 never enters.
        assert_eq!(kept.iter().map(|k| k.1).collect::<Vec<_>>(), vec![1, 3, 5]);
    }

    #[test]
    fn votes_do_not_depend_on_parallelism() {
        let n = 1000;
        let d = 3;
        let x: Vec<f64> = (0..n * d)
            .map(|i| ((i * 7919) % 101) as f64 / 10.0)
            .collect();
        let y: Vec<usize> = (0..n).map(|i| i % 4).collect();
        let knn = Knn::new(x, y, d, 7);
        let z = [3.0, 5.0, 1.0];
        assert_eq!(knn.votes(&z, 4, true), knn.votes(&z, 4, false));
        let total: f64 = knn.votes(&z, 4, false).iter().sum();
        assert!((total - 1.0).abs() < 1e-12);
    }
}
