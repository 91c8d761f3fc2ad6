//! scikit-learn's `RandomForestClassifier.predict_proba`: each tree's leaf
//! probabilities, averaged.

use rayon::prelude::*;

#[derive(Clone, Debug)]
struct Node {
    /// Child indices within the tree; `left == usize::MAX` marks a leaf.
    left: usize,
    right: usize,
    feature: usize,
    threshold: f64,
}

const LEAF: usize = usize::MAX;

#[derive(Clone, Debug)]
pub(super) struct Forest {
    /// Node ranges of each tree in `nodes` (and rows of `value`).
    trees: Vec<(usize, usize)>,
    nodes: Vec<Node>,
    /// `[nodes, classes]`: a leaf's class probabilities, normalised at export exactly
    /// as `DecisionTreeClassifier.predict_proba` normalises them.
    value: Vec<f64>,
    n_classes: usize,
    depth: usize,
}

impl Forest {
    /// Checks the arrays (sklearn's `tree_.children_left/right`, `feature`,
    /// `threshold` concatenated over trees, `offsets` the trees' starts and the end)
    /// and builds the forest. Children must come after their parent in the same tree,
    /// which makes every walk end.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        offsets: &[i64],
        left: &[i64],
        right: &[i64],
        feature: &[i64],
        threshold: Vec<f64>,
        value: Vec<f64>,
        n_features: usize,
        n_classes: usize,
    ) -> Result<Self, String> {
        let m = left.len();
        if offsets.len() < 2 {
            return Err("forest.offsets must hold at least one tree (two entries)".into());
        }
        let offsets: Vec<usize> = offsets
            .iter()
            .map(|&o| usize::try_from(o).ok().filter(|&o| o <= m))
            .collect::<Option<_>>()
            .ok_or_else(|| format!("forest.offsets must lie in 0..={m}"))?;
        if offsets[0] != 0 || offsets[offsets.len() - 1] != m {
            return Err(format!("forest.offsets must start at 0 and end at {m}"));
        }
        let mut trees = Vec::with_capacity(offsets.len() - 1);
        for w in offsets.windows(2) {
            if w[1] <= w[0] {
                return Err("forest.offsets must increase (every tree has a node)".into());
            }
            trees.push((w[0], w[1]));
        }
        let mut nodes = Vec::with_capacity(m);
        let mut depth_of = vec![0usize; m];
        let mut depth = 0;
        for &(start, end) in &trees {
            let n = end - start;
            for i in 0..n {
                let g = start + i;
                let node = if left[g] == -1 {
                    if right[g] != -1 {
                        return Err(format!("node {g}: a leaf (left -1) with a right child"));
                    }
                    Node {
                        left: LEAF,
                        right: LEAF,
                        feature: 0,
                        threshold: 0.0,
                    }
                } else {
                    let child = |c: i64| {
                        usize::try_from(c)
                            .ok()
                            .filter(|&c| c > i && c < n)
                            .ok_or_else(|| {
                                format!("node {g}: child {c} is not after it in its tree (0..{n})")
                            })
                    };
                    let (l, r) = (child(left[g])?, child(right[g])?);
                    let f = usize::try_from(feature[g])
                        .ok()
                        .filter(|&f| f < n_features)
                        .ok_or_else(|| {
                            format!("node {g}: feature {} is not in 0..{n_features}", feature[g])
                        })?;
                    let d = depth_of[g] + 1;
                    depth_of[start + l] = d;
                    depth_of[start + r] = d;
                    depth = depth.max(d);
                    Node {
                        left: l,
                        right: r,
                        feature: f,
                        threshold: threshold[g],
                    }
                };
                nodes.push(node);
            }
        }
        if value.iter().any(|v| !v.is_finite() || *v < 0.0) {
            return Err("forest.value must hold finite probabilities".into());
        }
        Ok(Self {
            trees,
            nodes,
            value,
            n_classes,
            depth,
        })
    }

    /// Work per sample, in multiply-add equivalents (trees x depth node visits).
    pub(super) fn work(&self) -> usize {
        // A node visit is a dependent load, often a cache miss: weighed as 16
        // multiply-adds.
        self.trees.len() * self.depth.max(1) * 16
    }

    /// The leaf a sample reaches in tree `(start, end)`, as a global node index.
    fn leaf(&self, (start, _end): (usize, usize), x: &[f32]) -> usize {
        let mut i = 0;
        loop {
            let node = &self.nodes[start + i];
            if node.left == LEAF {
                return start + i;
            }
            // scikit-learn: X as float32, the threshold float64, `<=` goes left.
            i = if f64::from(x[node.feature]) <= node.threshold {
                node.left
            } else {
                node.right
            };
        }
    }

    /// Averaged class probabilities.
    pub(super) fn proba(&self, x: &[f32], parallel: bool) -> Vec<f64> {
        // The walks are the work: in parallel, in tree order. The sum is sequential in
        // tree order, as scikit-learn's accumulation with one job is, so the rounding
        // is the same.
        let leaves: Vec<usize> = if parallel {
            self.trees.par_iter().map(|&t| self.leaf(t, x)).collect()
        } else {
            self.trees.iter().map(|&t| self.leaf(t, x)).collect()
        };
        let c = self.n_classes;
        let mut total = vec![0.0f64; c];
        for leaf in leaves {
            for (t, v) in total.iter_mut().zip(&self.value[leaf * c..(leaf + 1) * c]) {
                *t += v;
            }
        }
        let n = self.trees.len() as f64;
        for t in &mut total {
            *t /= n;
        }
        total
    }
}
