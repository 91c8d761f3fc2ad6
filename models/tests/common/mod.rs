//! Helpers shared by the integration tests: finding `../shared/reference`, writing
//! modified safetensors files.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};

use safetensors::{tensor::TensorView, Dtype, SafeTensors};

/// `../shared/reference` beside the workspace (or `$SPLITSTREAM_SHARED/reference`).
/// Missing: a failure under `CI=true`, else `None` after printing a skip line.
pub fn reference_dir(test: &str) -> Option<PathBuf> {
    let shared = std::env::var_os("SPLITSTREAM_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"));
    let dir = shared.join("reference");
    if dir.join("vit_micro.safetensors").is_file() {
        return Some(dir);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "{test}: reference data missing at {} (CI=true)",
            dir.display()
        );
    }
    println!("skip {test}: reference data not found at {}", dir.display());
    None
}

/// A raw tensor to write: name, dtype, shape, little-endian bytes.
pub struct Raw {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

/// Every tensor of a safetensors file, as raw bytes.
pub fn read_raw(path: &Path) -> Vec<Raw> {
    let buf = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&buf).unwrap();
    let mut out: Vec<Raw> = st
        .iter()
        .map(|(name, v)| Raw {
            name: name.to_string(),
            dtype: v.dtype(),
            shape: v.shape().to_vec(),
            bytes: v.data().to_vec(),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

pub fn write_raw(path: &Path, tensors: &[Raw]) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                TensorView::new(t.dtype, t.shape.clone(), &t.bytes).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

pub fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// Largest |a - b| relative to the largest |b|.
pub fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()))
        .max(f32::MIN_POSITIVE);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}
