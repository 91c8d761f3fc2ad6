//! The file: safetensors with the parameters as tensors and JSON metadata (kind,
//! classes, class names, hyperparameters, where the features come from), as
//! `python/train_fallback.py` writes it. Parsing checks everything before use.

use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use super::forest::Forest;
use super::knn::Knn;
use super::linear::Linear;
use super::pool::Pool;
use super::{Algo, ClassicKind, ClassicModel};

/// The largest file read (a kNN keeps its training set: 64 MiB is a million 16-float
/// samples, far beyond a device's fallback).
pub const MAX_CLASSIC_BYTES: u64 = 64 << 20;
/// The `format` metadata a file must carry.
const FORMAT: &str = "splitstream-classic/1";
const MAX_CLASSES: usize = 4096;
const MAX_LABEL: usize = 65_535;
const MAX_FEATURES: usize = 1 << 20;
const MAX_NEIGHBOURS: usize = 4096;

/// Why a classic model did not load or predict.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClassicError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_CLASSIC_BYTES`].
    #[error("{path} is {size} bytes, more than the {MAX_CLASSIC_BYTES} a classic model may have")]
    TooLarge {
        /// The file.
        path: String,
        /// Its size.
        size: u64,
    },
    /// Not a valid safetensors file.
    #[error("{source_name} is not a safetensors file: {detail}")]
    Format {
        /// The file.
        source_name: String,
        /// What the parser said.
        detail: String,
    },
    /// A metadata entry is missing or wrong.
    #[error(
        "{source_name}: metadata `{key}`: {detail} (write the file with python/train_fallback.py)"
    )]
    Metadata {
        /// The file.
        source_name: String,
        /// The key.
        key: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// A tensor is missing or wrong.
    #[error("{source_name}: tensor `{name}`: {detail}")]
    Tensor {
        /// The file.
        source_name: String,
        /// The tensor.
        name: String,
        /// What is wrong.
        detail: String,
    },
    /// A sample has the wrong number of features.
    #[error("the classifier takes {expected} features, the sample has {got}")]
    FeatureCount {
        /// What the model takes.
        expected: usize,
        /// What was given.
        got: usize,
    },
    /// A feature is NaN or infinite.
    #[error("feature {index} is not finite")]
    NonFinite {
        /// Its index.
        index: usize,
    },
}

/// Where a classifier's features come from: the network whose head makes them, the
/// split point, and how the tokens are pooled into one vector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeatureSpec {
    /// The network the features were taken from (its file name, for messages).
    pub model: String,
    /// The split point (head stages) whose output is pooled.
    pub split: usize,
    /// How the head's tokens become one vector.
    pub pool: Pool,
}

pub(super) fn read_file(path: &Path) -> Result<ClassicModel, ClassicError> {
    let shown = path.display().to_string();
    let io = |source| ClassicError::Io {
        path: shown.clone(),
        source,
    };
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > MAX_CLASSIC_BYTES {
        return Err(ClassicError::TooLarge { path: shown, size });
    }
    let bytes = std::fs::read(path).map_err(io)?;
    parse(&bytes, &shown)
}

/// Typed access to one parsed file, every error naming it.
struct Reader<'a> {
    source_name: &'a str,
    tensors: SafeTensors<'a>,
    metadata: HashMap<String, String>,
}

impl Reader<'_> {
    fn meta_err(&self, key: &'static str, detail: impl Into<String>) -> ClassicError {
        ClassicError::Metadata {
            source_name: self.source_name.to_owned(),
            key,
            detail: detail.into(),
        }
    }

    fn tensor_err(&self, name: &str, detail: impl Into<String>) -> ClassicError {
        ClassicError::Tensor {
            source_name: self.source_name.to_owned(),
            name: name.to_owned(),
            detail: detail.into(),
        }
    }

    fn meta(&self, key: &'static str) -> Result<&str, ClassicError> {
        self.metadata
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| self.meta_err(key, "missing"))
    }

    fn meta_json(&self, key: &'static str) -> Result<serde_json::Value, ClassicError> {
        serde_json::from_str(self.meta(key)?)
            .map_err(|e| self.meta_err(key, format!("not JSON: {e}")))
    }

    fn has(&self, name: &str) -> bool {
        self.tensors.names().contains(&name)
    }

    /// A tensor's shape and raw bytes, with its dtype checked.
    fn raw(&self, name: &str, dtype: Dtype) -> Result<(Vec<usize>, &[u8]), ClassicError> {
        let view = self
            .tensors
            .tensor(name)
            .map_err(|_| self.tensor_err(name, "missing"))?;
        if view.dtype() != dtype {
            return Err(self.tensor_err(
                name,
                format!("dtype {:?}, expected {dtype:?}", view.dtype()),
            ));
        }
        Ok((view.shape().to_vec(), view.data()))
    }

    fn check_shape(&self, name: &str, got: &[usize], want: &[usize]) -> Result<(), ClassicError> {
        if got == want {
            Ok(())
        } else {
            Err(self.tensor_err(name, format!("shape {got:?}, expected {want:?}")))
        }
    }

    /// An F64 tensor of shape `want` (the data's length was checked by the parser).
    fn f64s(&self, name: &str, want: &[usize]) -> Result<Vec<f64>, ClassicError> {
        let (shape, data) = self.raw(name, Dtype::F64)?;
        self.check_shape(name, &shape, want)?;
        let v: Vec<f64> = data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        if v.iter().any(|x| x.is_nan()) {
            return Err(self.tensor_err(name, "holds NaN"));
        }
        Ok(v)
    }

    fn f32s(&self, name: &str, want: &[usize]) -> Result<Vec<f32>, ClassicError> {
        let (shape, data) = self.raw(name, Dtype::F32)?;
        self.check_shape(name, &shape, want)?;
        let v: Vec<f32> = data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap_or([0; 4])))
            .collect();
        if v.iter().any(|x| !x.is_finite()) {
            return Err(self.tensor_err(name, "holds NaN or infinity"));
        }
        Ok(v)
    }

    /// An I64 tensor of rank 1 (its length returned for the caller to check).
    fn i64s(&self, name: &str) -> Result<Vec<i64>, ClassicError> {
        let (shape, data) = self.raw(name, Dtype::I64)?;
        if shape.len() != 1 {
            return Err(self.tensor_err(name, format!("shape {shape:?}, expected one axis")));
        }
        Ok(data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect())
    }

    fn usize_meta(
        &self,
        obj: &serde_json::Value,
        key: &'static str,
        field: &str,
    ) -> Result<usize, ClassicError> {
        obj.get(field)
            .and_then(serde_json::Value::as_u64)
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| self.meta_err(key, format!("`{field}` is missing or not a count")))
    }

    fn str_meta<'v>(
        &self,
        obj: &'v serde_json::Value,
        key: &'static str,
        field: &str,
    ) -> Result<&'v str, ClassicError> {
        obj.get(field)
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| self.meta_err(key, format!("`{field}` is missing or not a string")))
    }
}

pub(super) fn parse(bytes: &[u8], source_name: &str) -> Result<ClassicModel, ClassicError> {
    if bytes.len() as u64 > MAX_CLASSIC_BYTES {
        return Err(ClassicError::TooLarge {
            path: source_name.to_owned(),
            size: bytes.len() as u64,
        });
    }
    let format_err = |detail: String| ClassicError::Format {
        source_name: source_name.to_owned(),
        detail,
    };
    let tensors = SafeTensors::deserialize(bytes).map_err(|e| format_err(e.to_string()))?;
    // The header parsed above; an absent metadata map is an empty one.
    let metadata = SafeTensors::read_metadata(bytes)
        .ok()
        .and_then(|(_, header)| header.metadata().clone())
        .unwrap_or_default();
    let r = Reader {
        source_name,
        tensors,
        metadata,
    };

    let format = r.meta("format")?;
    if format != FORMAT {
        return Err(r.meta_err("format", format!("{format:?}, expected {FORMAT:?}")));
    }
    let kind_text = r.meta("kind")?;
    let kind = ClassicKind::parse(kind_text).ok_or_else(|| {
        r.meta_err(
            "kind",
            format!("{kind_text:?} is not one of knn, linear_svc, random_forest"),
        )
    })?;
    let n_features: usize = r
        .meta("n_features")?
        .trim()
        .parse()
        .map_err(|e| r.meta_err("n_features", format!("not a count: {e}")))?;
    if n_features == 0 || n_features > MAX_FEATURES {
        return Err(r.meta_err(
            "n_features",
            format!("{n_features} is outside 1..={MAX_FEATURES}"),
        ));
    }

    let classes_json = r.meta_json("classes")?;
    let classes: Vec<usize> = classes_json
        .as_array()
        .ok_or_else(|| r.meta_err("classes", "not a JSON array"))?
        .iter()
        .map(|v| {
            v.as_u64()
                .and_then(|v| usize::try_from(v).ok())
                .filter(|&v| v <= MAX_LABEL)
        })
        .collect::<Option<_>>()
        .ok_or_else(|| {
            r.meta_err(
                "classes",
                format!("labels must be integers 0..={MAX_LABEL}"),
            )
        })?;
    if classes.len() < 2 || classes.len() > MAX_CLASSES {
        return Err(r.meta_err(
            "classes",
            format!("{} classes, expected 2..={MAX_CLASSES}", classes.len()),
        ));
    }
    if classes.windows(2).any(|w| w[0] >= w[1]) {
        // scikit-learn's `classes_` is sorted and unique; the order is the scores'.
        return Err(r.meta_err("classes", "not strictly increasing"));
    }
    let class_names: Vec<String> = match r.metadata.get("class_names") {
        None => Vec::new(),
        Some(_) => {
            let v = r.meta_json("class_names")?;
            v.as_array()
                .filter(|a| a.len() <= MAX_LABEL + 1)
                .ok_or_else(|| r.meta_err("class_names", "not a JSON array of strings"))?
                .iter()
                .map(|n| n.as_str().map(str::to_owned))
                .collect::<Option<_>>()
                .ok_or_else(|| r.meta_err("class_names", "not a JSON array of strings"))?
        }
    };

    let features_json = r.meta_json("features")?;
    let pool_text = r.str_meta(&features_json, "features", "pool")?;
    let features = FeatureSpec {
        model: r.str_meta(&features_json, "features", "model")?.to_owned(),
        split: r.usize_meta(&features_json, "features", "split")?,
        pool: pool_text
            .parse()
            .map_err(|e: super::PoolError| r.meta_err("features", e.to_string()))?,
    };
    let hyper = r.meta_json("hyperparameters")?;
    if !hyper.is_object() {
        return Err(r.meta_err("hyperparameters", "not a JSON object"));
    }

    let scaler = match (r.has("scaler.mean"), r.has("scaler.scale")) {
        (false, false) => None,
        (true, true) => {
            let mean = r.f64s("scaler.mean", &[n_features])?;
            let scale = r.f64s("scaler.scale", &[n_features])?;
            if scale.iter().any(|&s| s == 0.0 || !s.is_finite())
                || mean.iter().any(|m| !m.is_finite())
            {
                return Err(r.tensor_err(
                    "scaler.scale",
                    "scales must be finite and non-zero (scikit-learn replaces 0 by 1)",
                ));
            }
            Some((mean, scale))
        }
        _ => {
            return Err(r.tensor_err(
                "scaler.mean",
                "scaler.mean and scaler.scale come together or not at all",
            ))
        }
    };

    let n_classes = classes.len();
    let algo = match kind {
        ClassicKind::Knn => {
            let metric = r.str_meta(&hyper, "hyperparameters", "metric")?;
            if metric != "l2" {
                return Err(r.meta_err(
                    "hyperparameters",
                    format!(
                        "metric {metric:?}: only \"l2\" is supported (scikit-learn's \"euclidean\" \
                         rounds through BLAS and cannot be reproduced exactly)"
                    ),
                ));
            }
            let weights = r.str_meta(&hyper, "hyperparameters", "weights")?;
            if weights != "uniform" {
                return Err(r.meta_err(
                    "hyperparameters",
                    format!("weights {weights:?}: only \"uniform\" is supported"),
                ));
            }
            let k = r.usize_meta(&hyper, "hyperparameters", "n_neighbors")?;
            let y = r.i64s("knn.y")?;
            let n = y.len();
            if k == 0 || k > n || k > MAX_NEIGHBOURS {
                return Err(r.meta_err(
                    "hyperparameters",
                    format!("n_neighbors {k} must be 1..={} (the training set's size, at most {MAX_NEIGHBOURS})", n),
                ));
            }
            let x = r.f32s("knn.x", &[n, n_features])?;
            let y = y
                .iter()
                .map(|&c| usize::try_from(c).ok().filter(|&c| c < n_classes))
                .collect::<Option<Vec<usize>>>()
                .ok_or_else(|| {
                    r.tensor_err("knn.y", format!("class indices must be 0..{n_classes}"))
                })?;
            // scikit-learn fit on the scaled points: scale them as it did.
            let x = x
                .chunks_exact(n_features)
                .flat_map(|row| super::scale(row, scaler.as_ref()))
                .collect();
            Algo::Knn(Knn::new(x, y, n_features, k))
        }
        ClassicKind::LinearSvc => {
            // scikit-learn keeps one row for two classes (the second class's side).
            let rows = if n_classes == 2 { 1 } else { n_classes };
            let coef = r.f64s("svc.coef", &[rows, n_features])?;
            let intercept = r.f64s("svc.intercept", &[rows])?;
            if coef.iter().chain(&intercept).any(|v| !v.is_finite()) {
                return Err(r.tensor_err("svc.coef", "holds an infinity"));
            }
            Algo::Linear(Linear::new(coef, intercept, n_features))
        }
        ClassicKind::RandomForest => {
            if scaler.is_some() {
                return Err(r.tensor_err(
                    "scaler.mean",
                    "a forest takes the raw features (trees compare them as f32): no scaler",
                ));
            }
            let offsets = r.i64s("forest.offsets")?;
            let left = r.i64s("forest.left")?;
            let m = left.len();
            let right = r.i64s("forest.right")?;
            let feature = r.i64s("forest.feature")?;
            for (name, len) in [
                ("forest.right", right.len()),
                ("forest.feature", feature.len()),
            ] {
                if len != m {
                    return Err(r.tensor_err(name, format!("{len} nodes, forest.left has {m}")));
                }
            }
            let threshold = r.f64s("forest.threshold", &[m])?;
            let value = r.f64s("forest.value", &[m, n_classes])?;
            Algo::Forest(
                Forest::new(
                    &offsets, &left, &right, &feature, threshold, value, n_features, n_classes,
                )
                .map_err(|detail| r.tensor_err("forest", detail))?,
            )
        }
    };

    Ok(ClassicModel {
        algo,
        classes,
        class_names,
        scaler,
        features,
        hyperparameters: hyper.to_string(),
        n_features,
    })
}
