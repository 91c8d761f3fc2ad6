//! Weights from safetensors files, looked up by the source ecosystem's names through a
//! prefixing builder (`vb.pp("blocks").pp(3).get("norm1.weight", &[192])`).
//!
//! Every lookup is recorded, so after a model is built [`Weights::unused`] names the
//! tensors it did not take: an unexpected tensor is as much an error as a missing one
//! (it usually means the wrong architecture).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::sync::Mutex;

use safetensors::{Dtype, SafeTensorError, SafeTensors};

use crate::tensor::{checked_numel, HostTensor};

/// Largest weights file read (64 GiB): a guard against reading a wrong path whole.
pub const MAX_WEIGHTS_BYTES: u64 = 64 << 30;

/// Errors reading weights or taking a tensor from them.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The file could not be read.
    #[error("cannot read weights file {path}")]
    Io {
        /// The path given.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_WEIGHTS_BYTES`].
    #[error("weights file {path} is {size} bytes, more than the {MAX_WEIGHTS_BYTES} allowed")]
    TooLarge {
        /// The path given.
        path: String,
        /// Its size.
        size: u64,
    },
    /// The file ends before the data its header declares.
    #[error(
        "weights file {source_name} is truncated: its header declares {declared} bytes, \
         the file has {actual}; copy or download it again"
    )]
    Truncated {
        /// Where the bytes came from.
        source_name: String,
        /// Bytes the header says the file holds.
        declared: u64,
        /// Bytes it holds.
        actual: u64,
    },
    /// The bytes are not a valid safetensors file.
    #[error("weights file {source_name} is not a valid safetensors file: {detail}")]
    Format {
        /// Where the bytes came from.
        source_name: String,
        /// What the parser found wrong.
        detail: String,
    },
    /// A tensor the model needs is absent.
    #[error("weights file has no tensor {name}: {hint}")]
    Missing {
        /// The full tensor name.
        name: String,
        /// What the absence likely means.
        hint: String,
    },
    /// A tensor has another shape than the model needs.
    #[error("tensor {name} has shape {actual:?}, the model needs {expected:?}: {hint}")]
    Shape {
        /// The full tensor name.
        name: String,
        /// The shape the model needs.
        expected: Vec<usize>,
        /// The shape in the file.
        actual: Vec<usize>,
        /// What the mismatch likely means.
        hint: String,
    },
    /// A tensor's element type is not f32, f16 or bf16.
    #[error("tensor {name} has dtype {dtype}; only F32, F16 and BF16 weights are supported")]
    Dtype {
        /// The full tensor name.
        name: String,
        /// The dtype in the file.
        dtype: String,
    },
    /// The file holds tensors the model does not use.
    #[error(
        "weights file has {} tensor(s) this model does not use: {}; is this checkpoint for \
         another architecture?",
        names.len(),
        preview(names)
    )]
    Unexpected {
        /// The unused tensor names, sorted.
        names: Vec<String>,
    },
}

fn preview(names: &[String]) -> String {
    let mut s = names.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > 5 {
        s.push_str(", ...");
    }
    s
}

/// Where a tensor lies in the buffer and what it holds.
#[derive(Debug, Clone)]
struct Entry {
    dtype: Dtype,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// The tensors of one safetensors file, held in memory.
pub struct Weights {
    buffer: Vec<u8>,
    entries: BTreeMap<String, Entry>,
    metadata: BTreeMap<String, String>,
    used: Mutex<BTreeSet<String>>,
}

impl fmt::Debug for Weights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Weights")
            .field("tensors", &self.entries.len())
            .field("bytes", &self.buffer.len())
            .finish()
    }
}

impl Weights {
    /// Reads a safetensors file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, WeightsError> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let io = |source| WeightsError::Io {
            path: shown.clone(),
            source,
        };
        let size = std::fs::metadata(path).map_err(io)?.len();
        if size > MAX_WEIGHTS_BYTES {
            return Err(WeightsError::TooLarge { path: shown, size });
        }
        let buffer = std::fs::read(path).map_err(io)?;
        Self::from_bytes(buffer, &shown)
    }

    /// Parses safetensors bytes; `source_name` appears in errors.
    pub fn from_bytes(buffer: Vec<u8>, source_name: &str) -> Result<Self, WeightsError> {
        let format = |detail: String| WeightsError::Format {
            source_name: source_name.to_string(),
            detail,
        };
        let parsed = match SafeTensors::deserialize(&buffer) {
            Ok(parsed) => parsed,
            Err(
                SafeTensorError::MetadataIncompleteBuffer | SafeTensorError::InvalidHeaderLength,
            ) => {
                return Err(match declared_size(&buffer) {
                    Some(declared) if declared > buffer.len() as u64 => WeightsError::Truncated {
                        source_name: source_name.to_string(),
                        declared,
                        actual: buffer.len() as u64,
                    },
                    _ => format(
                        "the tensor data does not end where the file ends (extra bytes?)".into(),
                    ),
                });
            }
            Err(e) => return Err(format(e.to_string())),
        };
        // The header parsed above, so reading its metadata again cannot fail; an absent
        // map is an empty one.
        let metadata = SafeTensors::read_metadata(&buffer)
            .ok()
            .and_then(|(_, header)| header.metadata().clone())
            .map(|m| m.into_iter().collect())
            .unwrap_or_default();
        let mut entries = BTreeMap::new();
        for (name, view) in parsed.iter() {
            // Offsets relative to the whole buffer, recovered from the view's slice.
            let start = view.data().as_ptr() as usize - buffer.as_ptr() as usize;
            entries.insert(
                name.to_string(),
                Entry {
                    dtype: view.dtype(),
                    shape: view.shape().to_vec(),
                    start,
                    end: start + view.data().len(),
                },
            );
        }
        drop(parsed);
        Ok(Self {
            buffer,
            entries,
            metadata,
            used: Mutex::new(BTreeSet::new()),
        })
    }

    /// The file's `__metadata__` strings (timm and our training script put the
    /// architecture, `num_heads`, `crop_pct`, the split point and bottleneck rank there).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// One metadata value, if present.
    pub fn metadata_value(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The shape of tensor `name`, if present (does not count as a use).
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    /// Takes tensor `name` as f32, checking it has `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<HostTensor, WeightsError> {
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| WeightsError::Missing {
                name: name.to_string(),
                hint: "is this a checkpoint of this architecture, with timm's tensor names?".into(),
            })?;
        if entry.shape != shape {
            return Err(WeightsError::Shape {
                name: name.to_string(),
                expected: shape.to_vec(),
                actual: entry.shape.clone(),
                hint: "the checkpoint is for another model size".into(),
            });
        }
        let bytes = &self.buffer[entry.start..entry.end];
        let data: Vec<f32> = match entry.dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(WeightsError::Dtype {
                    name: name.to_string(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        if checked_numel(shape) != Some(data.len()) {
            return Err(WeightsError::Format {
                source_name: name.to_string(),
                detail: "tensor byte length does not match its shape".into(),
            });
        }
        if let Ok(mut used) = self.used.lock() {
            used.insert(name.to_string());
        }
        HostTensor::new(shape.to_vec(), data).map_err(|e| WeightsError::Format {
            source_name: name.to_string(),
            detail: e.to_string(),
        })
    }

    /// Names of the tensors no [`Weights::get`] has taken yet, sorted.
    pub fn unused(&self) -> Vec<String> {
        let used = match self.used.lock() {
            Ok(u) => u.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        self.entries
            .keys()
            .filter(|k| !used.contains(*k))
            .cloned()
            .collect()
    }

    /// Fails with [`WeightsError::Unexpected`] if any tensor was not taken.
    pub fn check_all_used(&self) -> Result<(), WeightsError> {
        let names = self.unused();
        if names.is_empty() {
            Ok(())
        } else {
            Err(WeightsError::Unexpected { names })
        }
    }

    /// A builder at the root of the name space.
    pub fn root(&self) -> VarBuilder<'_> {
        VarBuilder {
            weights: self,
            prefix: String::new(),
        }
    }
}

/// Size the header of a safetensors buffer declares for the whole file, if the header
/// itself is readable.
fn declared_size(buffer: &[u8]) -> Option<u64> {
    let n = u64::from_le_bytes(buffer.get(..8)?.try_into().ok()?);
    let header_end = 8u64.checked_add(n)?;
    let Some(header) = usize::try_from(header_end)
        .ok()
        .and_then(|end| buffer.get(8..end))
    else {
        // The header itself is cut: at least its declared end is missing.
        return Some(header_end);
    };
    let json: serde_json::Value = serde_json::from_slice(header).ok()?;
    let data_end = json
        .as_object()?
        .iter()
        .filter(|(k, _)| k.as_str() != "__metadata__")
        .filter_map(|(_, v)| v.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .unwrap_or(0);
    header_end.checked_add(data_end)
}

/// A view of [`Weights`] under a name prefix, in the style of candle's `VarBuilder`.
#[derive(Clone)]
pub struct VarBuilder<'a> {
    weights: &'a Weights,
    prefix: String,
}

impl<'a> VarBuilder<'a> {
    /// The builder for `prefix.name` ("push prefix").
    pub fn pp(&self, name: impl fmt::Display) -> VarBuilder<'a> {
        VarBuilder {
            weights: self.weights,
            prefix: self.path(&name.to_string()),
        }
    }

    /// The full name of `name` under this prefix.
    pub fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// Takes `prefix.name`, which must have `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<HostTensor, WeightsError> {
        self.weights.get(&self.path(name), shape)
    }

    /// The shape of `prefix.name`, or a [`WeightsError::Missing`] naming it.
    pub fn shape(&self, name: &str) -> Result<Vec<usize>, WeightsError> {
        let full = self.path(name);
        self.weights
            .shape(&full)
            .map(<[usize]>::to_vec)
            .ok_or_else(|| WeightsError::Missing {
                name: full,
                hint: "is this a checkpoint of this architecture, with timm's tensor names?".into(),
            })
    }

    /// Whether `prefix.name` exists.
    pub fn contains(&self, name: &str) -> bool {
        self.weights.shape(&self.path(name)).is_some()
    }
}

/// Errors writing a safetensors file.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    /// Serialising or writing failed.
    #[error("cannot write {path}")]
    Write {
        /// The path given.
        path: String,
        /// The serialiser's error.
        #[source]
        source: SafeTensorError,
    },
}

/// Writes `tensors` as F32 into a safetensors file at `path`.
pub fn save_safetensors(
    path: impl AsRef<Path>,
    tensors: &[(&str, &HostTensor)],
) -> Result<(), SaveError> {
    let path = path.as_ref();
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, t)| {
            let data = t.data().iter().flat_map(|v| v.to_le_bytes()).collect();
            (name.to_string(), t.shape().to_vec(), data)
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, shape, data)| {
            safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), data)
                .map(|v| (name.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| SaveError::Write {
            path: path.display().to_string(),
            source,
        })?;
    safetensors::serialize_to_file(views, None, path).map_err(|source| SaveError::Write {
        path: path.display().to_string(),
        source,
    })
}
