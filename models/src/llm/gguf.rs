//! GGUF (versions 2 and 3), llama.cpp's single-file format: a header, metadata
//! key/values, tensor infos, then aligned tensor data.
//!
//! The file is memory-mapped ([`memmap2`]); the header is parsed with every count and
//! length checked against the bytes that remain before anything is allocated. Tensor
//! data stays in the map: [`GgufFile::matrix`] hands out a [`QuantMatrix`] over it.
//!
//! Layout (little-endian): magic `GGUF`, `u32` version, `u64` tensor count, `u64`
//! metadata count; each key a string (`u64` length + UTF-8), a `u32` value type and the
//! value; each tensor info a name, `u32` dims, that many `u64` sizes (fastest first:
//! GGML's `ne[0]` is the row length), a `u32` GGML type and a `u64` offset from the
//! start of the data, which begins at the next multiple of `general.alignment` (32).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::quant::{Blob, GgmlType, QuantError, QuantMatrix};
use crate::tensor::{checked_numel, HostTensor};

/// Longest string read (a key, a token, a chat template): 16 MiB.
pub const MAX_STRING: usize = 16 << 20;
/// Most dimensions a tensor may have (GGML's limit).
pub const MAX_DIMS: usize = 4;
/// Deepest nesting of arrays.
const MAX_DEPTH: usize = 4;

/// Errors reading a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be opened or mapped.
    #[error("cannot read GGUF file {path}")]
    Io {
        /// The path given.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not a GGUF file, or one of an unsupported version.
    #[error("{0}")]
    NotGguf(String),
    /// The header is malformed or truncated.
    #[error("malformed GGUF header at byte {at}: {detail}")]
    Format {
        /// Offset where reading failed.
        at: usize,
        /// What was wrong.
        detail: String,
    },
    /// A tensor is absent.
    #[error("GGUF file has no tensor {0}")]
    Missing(String),
    /// A tensor has another shape than needed.
    #[error("GGUF tensor {name} has shape {actual:?}, the model needs {expected:?}")]
    Shape {
        /// The tensor.
        name: String,
        /// What the model needs (PyTorch order, slowest first).
        expected: Vec<usize>,
        /// What the file has.
        actual: Vec<usize>,
    },
    /// A metadata key is absent or of the wrong type.
    #[error("GGUF metadata {key}: {detail}")]
    Metadata {
        /// The key.
        key: String,
        /// What was wrong.
        detail: String,
    },
    /// A tensor's data could not be taken.
    #[error("GGUF tensor {name}: {source}")]
    Quant {
        /// The tensor.
        name: String,
        /// Why.
        source: QuantError,
    },
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// `u8`.
    U8(u8),
    /// `i8`.
    I8(i8),
    /// `u16`.
    U16(u16),
    /// `i16`.
    I16(i16),
    /// `u32`.
    U32(u32),
    /// `i32`.
    I32(i32),
    /// `f32`.
    F32(f32),
    /// `bool`.
    Bool(bool),
    /// A UTF-8 string.
    String(String),
    /// An array of values of one type.
    Array(Vec<GgufValue>),
    /// `u64`.
    U64(u64),
    /// `i64`.
    I64(i64),
    /// `f64`.
    F64(f64),
}

impl GgufValue {
    /// An integer value as `u64` (any integer type, non-negative).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// A numeric value as `f64`.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// A string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// An array value.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }

    fn type_id(&self) -> u32 {
        match self {
            Self::U8(_) => 0,
            Self::I8(_) => 1,
            Self::U16(_) => 2,
            Self::I16(_) => 3,
            Self::U32(_) => 4,
            Self::I32(_) => 5,
            Self::F32(_) => 6,
            Self::Bool(_) => 7,
            Self::String(_) => 8,
            Self::Array(_) => 9,
            Self::U64(_) => 10,
            Self::I64(_) => 11,
            Self::F64(_) => 12,
        }
    }
}

/// Where a tensor lies and what it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorInfo {
    /// GGML type.
    pub ty: GgmlType,
    /// Dimensions in PyTorch order, slowest first (GGUF's reversed).
    pub shape: Vec<usize>,
    /// Absolute offset of its data in the file.
    pub start: usize,
    /// Bytes of data.
    pub len: usize,
}

/// The bytes of a GGUF file: a read-only memory map or a buffer.
enum Bytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        match self {
            Self::Mapped(m) => m,
            Self::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file; tensor data stays in the map.
pub struct GgufFile {
    bytes: Arc<Bytes>,
    version: u32,
    metadata: BTreeMap<String, GgufValue>,
    tensors: BTreeMap<String, GgufTensorInfo>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// Whether `bytes` start like a GGUF file.
pub fn is_gguf(bytes: &[u8]) -> bool {
    bytes.starts_with(b"GGUF")
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn err(&self, detail: impl Into<String>) -> GgufError {
        GgufError::Format {
            at: self.at,
            detail: detail.into(),
        }
    }

    fn remaining(&self) -> usize {
        self.b.len() - self.at
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(self.err(format!(
                "needs {n} bytes, {} remain (truncated file?)",
                self.remaining()
            )));
        }
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A count of items of at least `min_bytes` each, capped by what remains.
    fn count(&mut self, what: &str, min_bytes: usize) -> Result<usize, GgufError> {
        let n = self.u64()?;
        let fits = usize::try_from(n)
            .ok()
            .filter(|&n| n.saturating_mul(min_bytes.max(1)) <= self.remaining());
        fits.ok_or_else(|| {
            self.err(format!(
                "{what} count {n} cannot fit in the {} bytes that remain",
                self.remaining()
            ))
        })
    }

    fn string(&mut self) -> Result<String, GgufError> {
        let n = self.count("string length", 1)?;
        if n > MAX_STRING {
            return Err(self.err(format!("string of {n} bytes (limit {MAX_STRING})")));
        }
        let at = self.at;
        let s = self.take(n)?;
        String::from_utf8(s.to_vec()).map_err(|_| GgufError::Format {
            at,
            detail: "string is not UTF-8".into(),
        })
    }

    fn value(&mut self, ty: u32, depth: usize) -> Result<GgufValue, GgufError> {
        Ok(match ty {
            0 => GgufValue::U8(self.array::<1>()?[0]),
            1 => GgufValue::I8(self.array::<1>()?[0] as i8),
            2 => GgufValue::U16(u16::from_le_bytes(self.array()?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array()?)),
            4 => GgufValue::U32(self.u32()?),
            5 => GgufValue::I32(i32::from_le_bytes(self.array()?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array()?)),
            7 => match self.array::<1>()?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => return Err(self.err(format!("bool byte {b}"))),
            },
            8 => GgufValue::String(self.string()?),
            9 => {
                if depth >= MAX_DEPTH {
                    return Err(self.err("arrays nested too deep"));
                }
                let item = self.u32()?;
                let min = match item {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8..=12 => 8,
                    t => return Err(self.err(format!("array of unknown type {t}"))),
                };
                let n = self.count("array", min)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(item, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(self.u64()?),
            11 => GgufValue::I64(i64::from_le_bytes(self.array()?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array()?)),
            t => return Err(self.err(format!("unknown metadata value type {t}"))),
        })
    }
}

impl GgufFile {
    /// Maps and parses the file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref();
        let io = |source| GgufError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the map is read-only and private to this process; a file changed
        // underneath it while mapped gives wrong numbers, not unsafety in safe Rust
        // beyond what every mmap-based loader (llama.cpp, safetensors) accepts.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::parse(Bytes::Mapped(map))
    }

    /// Parses a GGUF file held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, GgufError> {
        Self::parse(Bytes::Owned(bytes))
    }

    fn parse(bytes: Bytes) -> Result<Self, GgufError> {
        let b = bytes.as_ref();
        if !is_gguf(b) {
            return Err(GgufError::NotGguf(
                "not a GGUF file (no GGUF magic at the start)".into(),
            ));
        }
        let mut c = Cursor { b, at: 4 };
        let version = c.u32()?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::NotGguf(format!(
                "GGUF version {version} is not supported (2 and 3 are)"
            )));
        }
        // Each tensor info takes at least 8 (name) + 4 + 4 + 8 bytes; each key/value 8 + 4 + 1.
        let n_tensors = c.count("tensor", 24)?;
        let n_kv = c.count("metadata", 13)?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string()?;
            let ty = c.u32()?;
            let value = c.value(ty, 0)?;
            metadata.insert(key, value);
        }
        let mut raw = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = c.string()?;
            let dims = c.u32()? as usize;
            if dims == 0 || dims > MAX_DIMS {
                return Err(c.err(format!("tensor {name} has {dims} dimensions")));
            }
            let mut shape = Vec::with_capacity(dims);
            for _ in 0..dims {
                let d = c.u64()?;
                shape.push(usize::try_from(d).map_err(|_| c.err("dimension too large"))?);
            }
            shape.reverse();
            let ty_id = c.u32()?;
            let offset = c.u64()?;
            raw.push((name, shape, ty_id, offset));
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => v
                .as_u64()
                .filter(|a| a.is_power_of_two() && *a <= 1 << 20)
                .ok_or_else(|| c.err("general.alignment is not a power of two"))?
                as usize,
        };
        let data_start = c.at.div_ceil(alignment) * alignment;
        let mut tensors = BTreeMap::new();
        for (name, shape, ty_id, offset) in raw {
            let at = c.at;
            let bad = |detail: String| GgufError::Format { at, detail };
            let ty = GgmlType::from_id(ty_id).map_err(|source| GgufError::Quant {
                name: name.clone(),
                source,
            })?;
            let numel = checked_numel(&shape)
                .ok_or_else(|| bad(format!("tensor {name} of shape {shape:?} is too large")))?;
            let row = shape.last().copied().unwrap_or(1);
            if row % ty.block_values() != 0 {
                return Err(bad(format!(
                    "tensor {name}: rows of {row} values are not whole {ty:?} blocks"
                )));
            }
            let len = ty
                .bytes_for(numel)
                .ok_or_else(|| bad(format!("tensor {name} size overflows")))?;
            let start = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(data_start))
                .filter(|s| s.checked_add(len).is_some_and(|e| e <= b.len()))
                .ok_or_else(|| {
                    bad(format!(
                        "tensor {name} ({len} bytes at data offset {offset}) runs past the \
                         end of the {}-byte file (truncated?)",
                        b.len()
                    ))
                })?;
            tensors.insert(
                name,
                GgufTensorInfo {
                    ty,
                    shape,
                    start,
                    len,
                },
            );
        }
        Ok(Self {
            bytes: Arc::new(bytes),
            version,
            metadata,
            tensors,
        })
    }

    /// The format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Every metadata key/value.
    pub fn metadata(&self) -> &BTreeMap<String, GgufValue> {
        &self.metadata
    }

    /// One metadata value.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    /// A required integer metadata value.
    pub fn get_usize(&self, key: &str) -> Result<usize, GgufError> {
        self.get(key)
            .ok_or_else(|| GgufError::Metadata {
                key: key.into(),
                detail: "absent".into(),
            })?
            .as_u64()
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| GgufError::Metadata {
                key: key.into(),
                detail: "not a non-negative integer".into(),
            })
    }

    /// A string metadata value, if present and a string.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(GgufValue::as_str)
    }

    /// Every tensor's info, by name.
    pub fn tensors(&self) -> &BTreeMap<String, GgufTensorInfo> {
        &self.tensors
    }

    /// One tensor's info.
    pub fn tensor(&self, name: &str) -> Result<&GgufTensorInfo, GgufError> {
        self.tensors
            .get(name)
            .ok_or_else(|| GgufError::Missing(name.into()))
    }

    /// A 2-D tensor `[rows, cols]` as a [`QuantMatrix`] over the map (no copy).
    pub fn matrix(&self, name: &str, shape: [usize; 2]) -> Result<QuantMatrix, GgufError> {
        let info = self.tensor(name)?;
        if info.shape != shape {
            return Err(GgufError::Shape {
                name: name.into(),
                expected: shape.to_vec(),
                actual: info.shape.clone(),
            });
        }
        let blob: Blob = self.bytes.clone();
        QuantMatrix::new(info.ty, shape[0], shape[1], blob, info.start).map_err(|source| {
            GgufError::Quant {
                name: name.into(),
                source,
            }
        })
    }

    /// A tensor of `shape` dequantized to f32 (norm weights, biases: small tensors).
    pub fn dense(&self, name: &str, shape: &[usize]) -> Result<HostTensor, GgufError> {
        let info = self.tensor(name)?;
        if info.shape != shape {
            return Err(GgufError::Shape {
                name: name.into(),
                expected: shape.to_vec(),
                actual: info.shape.clone(),
            });
        }
        let bytes = &(*self.bytes).as_ref()[info.start..info.start + info.len];
        let mut out = vec![0f32; info.len / info.ty.block_bytes() * info.ty.block_values()];
        info.ty.dequantize(bytes, &mut out);
        HostTensor::new(shape.to_vec(), out).map_err(|e| GgufError::Shape {
            name: format!("{name} ({e})"),
            expected: shape.to_vec(),
            actual: info.shape.clone(),
        })
    }
}

/// Writes a GGUF v3 file in memory: metadata, then tensors already encoded in their
/// GGML type (`shape` in PyTorch order, slowest first). For tests and conversion tools.
pub fn write_gguf(
    metadata: &[(&str, GgufValue)],
    tensors: &[(&str, GgmlType, &[usize], &[u8])],
) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }
    fn value(out: &mut Vec<u8>, v: &GgufValue) {
        match v {
            GgufValue::U8(x) => out.push(*x),
            GgufValue::I8(x) => out.push(*x as u8),
            GgufValue::U16(x) => out.extend(x.to_le_bytes()),
            GgufValue::I16(x) => out.extend(x.to_le_bytes()),
            GgufValue::U32(x) => out.extend(x.to_le_bytes()),
            GgufValue::I32(x) => out.extend(x.to_le_bytes()),
            GgufValue::F32(x) => out.extend(x.to_le_bytes()),
            GgufValue::Bool(x) => out.push(u8::from(*x)),
            GgufValue::String(s) => string(out, s),
            GgufValue::Array(items) => {
                let ty = items.first().map_or(0, GgufValue::type_id);
                out.extend(ty.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                items.iter().for_each(|i| value(out, i));
            }
            GgufValue::U64(x) => out.extend(x.to_le_bytes()),
            GgufValue::I64(x) => out.extend(x.to_le_bytes()),
            GgufValue::F64(x) => out.extend(x.to_le_bytes()),
        }
    }
    const ALIGN: usize = 32;
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        string(&mut out, k);
        out.extend(v.type_id().to_le_bytes());
        value(&mut out, v);
    }
    let mut offset = 0usize;
    for (name, ty, shape, data) in tensors {
        string(&mut out, name);
        out.extend((shape.len() as u32).to_le_bytes());
        shape
            .iter()
            .rev()
            .for_each(|d| out.extend((*d as u64).to_le_bytes()));
        out.extend(ty.id().to_le_bytes());
        out.extend((offset as u64).to_le_bytes());
        offset = (offset + data.len()).div_ceil(ALIGN) * ALIGN;
    }
    out.resize(out.len().div_ceil(ALIGN) * ALIGN, 0);
    for (_, _, _, data) in tensors {
        out.extend(*data);
        out.resize(out.len().div_ceil(ALIGN) * ALIGN, 0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::quant::quantize;

    fn sample() -> Vec<u8> {
        let w: Vec<f32> = (0..64 * 3).map(|i| (i as f32 - 90.0) / 17.0).collect();
        let q = quantize(GgmlType::Q8_0, &w).unwrap();
        let n: Vec<u8> = [1f32, 2.0, 3.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        write_gguf(
            &[
                ("general.architecture", GgufValue::String("llama".into())),
                ("llama.block_count", GgufValue::U32(2)),
                (
                    "tokenizer.ggml.tokens",
                    GgufValue::Array(vec![GgufValue::String("a".into()); 3]),
                ),
            ],
            &[
                ("w", GgmlType::Q8_0, &[3, 64], &q),
                ("n", GgmlType::F32, &[3], &n),
            ],
        )
    }

    #[test]
    fn reads_what_it_writes() {
        let f = GgufFile::from_bytes(sample()).unwrap();
        assert_eq!(f.version(), 3);
        assert_eq!(f.get_str("general.architecture"), Some("llama"));
        assert_eq!(f.get_usize("llama.block_count").unwrap(), 2);
        assert_eq!(
            f.get("tokenizer.ggml.tokens")
                .and_then(|v| v.as_array())
                .map(<[_]>::len),
            Some(3)
        );
        let m = f.matrix("w", [3, 64]).unwrap();
        let w = m.to_f32();
        assert!((w[0] + 90.0 / 17.0).abs() < 0.05);
        assert_eq!(f.dense("n", &[3]).unwrap().data(), &[1.0, 2.0, 3.0]);
        assert!(matches!(
            f.matrix("w", [64, 3]),
            Err(GgufError::Shape { .. })
        ));
        assert!(matches!(f.tensor("x"), Err(GgufError::Missing(_))));
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = sample();
        // The last tensor's 12 bytes end 20 bytes before the end (alignment padding).
        for cut in (0..bytes.len() - 20).step_by(7) {
            let r = GgufFile::from_bytes(bytes[..cut].to_vec());
            assert!(r.is_err(), "cut at {cut} parsed");
        }
    }

    #[test]
    fn huge_counts_are_refused_before_allocating() {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(u64::MAX.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        assert!(matches!(
            GgufFile::from_bytes(b),
            Err(GgufError::Format { .. })
        ));
        // An array that claims 2^40 u32 items.
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.push(b'k');
        b.extend(9u32.to_le_bytes());
        b.extend(4u32.to_le_bytes());
        b.extend((1u64 << 40).to_le_bytes());
        assert!(matches!(
            GgufFile::from_bytes(b),
            Err(GgufError::Format { .. })
        ));
        assert!(matches!(
            GgufFile::from_bytes(b"GGML0000".to_vec()),
            Err(GgufError::NotGguf(_))
        ));
    }
}
