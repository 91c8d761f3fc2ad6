//! The non-neural fallback on the device (`splitstream-device --fallback FILE`): the
//! network's head to the classifier's feature point, its tokens pooled, and a kNN, a
//! linear SVM or a random forest from `python/train_fallback.py` instead of the rest of
//! the network. The policy runs it only when the battery is critical and the edge
//! cannot answer (docs/fallback.md).

use std::sync::Arc;

use splitstream_models::classic::{ClassicError, ClassicModel, ClassicPrediction, PoolError};
use splitstream_models::net::SplitPoint;
use splitstream_models::HostTensor;

use crate::model::{DeviceModel, ModelRunError};

/// Why a fallback classifier does not fit the device's model, or failed on a frame.
#[derive(Debug, thiserror::Error)]
pub enum ClassicHeadError {
    /// The model has no split point where the classifier's features come from.
    #[error("the fallback classifier takes features after {depth} head stages: {source}")]
    Split {
        /// The depth it wants.
        depth: usize,
        /// What the model offers.
        #[source]
        source: ModelRunError,
    },
    /// The pooled features are not as many as the classifier takes.
    #[error(
        "the fallback classifier takes {expected} features but this model's head gives \
         {got} at point {depth} ({pool} pooling): was it trained on another model's features \
         (it names {model})?"
    )]
    Width {
        /// Features the classifier takes.
        expected: usize,
        /// Features the head gives.
        got: usize,
        /// The split point.
        depth: usize,
        /// The pooling.
        pool: String,
        /// The model named in the classifier's file.
        model: String,
    },
    /// The head failed.
    #[error("head: {0}")]
    Head(#[from] ModelRunError),
    /// The head's output cannot be pooled.
    #[error("pooling the head's output: {0}")]
    Pool(#[from] PoolError),
    /// The classifier refused the features.
    #[error("fallback classifier: {0}")]
    Classic(#[from] ClassicError),
}

/// The device's model with a fallback classifier on its features (cheap to clone).
#[derive(Clone, Debug)]
pub struct ClassicHead {
    model: DeviceModel,
    at: SplitPoint,
    classic: Arc<ClassicModel>,
}

impl ClassicHead {
    /// Checks that `classic` fits `model` (its split point exists, the pooled head
    /// output has its feature count) by running the head once on `probe` (an input of
    /// the model's shape; zeros do).
    pub fn new(
        model: DeviceModel,
        classic: ClassicModel,
        probe: &HostTensor,
    ) -> Result<Self, ClassicHeadError> {
        let depth = classic.features().split;
        let at = model
            .split_at(depth)
            .map_err(|source| ClassicHeadError::Split { depth, source })?;
        let head = Self {
            model,
            at,
            classic: Arc::new(classic),
        };
        let got = head.features(probe)?.len();
        let expected = head.classic.n_features();
        if got != expected {
            let f = head.classic.features();
            return Err(ClassicHeadError::Width {
                expected,
                got,
                depth,
                pool: f.pool.to_string(),
                model: f.model.clone(),
            });
        }
        Ok(head)
    }

    /// The classifier.
    pub fn classic(&self) -> &ClassicModel {
        &self.classic
    }

    /// The split point the features come from.
    pub fn point(&self) -> &SplitPoint {
        &self.at
    }

    /// The pooled head output of one frame: what the classifier was trained on
    /// (`splitstream features` calls this too).
    pub fn features(&self, input: &HostTensor) -> Result<Vec<f32>, ClassicHeadError> {
        head_features(&self.model, &self.at, self.classic.features().pool, input)
    }

    /// Head, pooling and classifier for one frame.
    pub fn predict(&self, input: &HostTensor) -> Result<ClassicPrediction, ClassicHeadError> {
        let x = self.features(input)?;
        Ok(self.classic.predict(&x)?)
    }
}

/// The head of `model` to `at`, pooled: the features of one frame.
pub fn head_features(
    model: &DeviceModel,
    at: &SplitPoint,
    pool: splitstream_models::classic::Pool,
    input: &HostTensor,
) -> Result<Vec<f32>, ClassicHeadError> {
    // A stateless family (the ViT) is all a classifier on pooled tokens fits.
    let act = model.head(input, at, None)?;
    Ok(pool.apply(&act)?)
}
