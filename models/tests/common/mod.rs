//! Helpers shared by the models crate's integration tests: writing modified
//! safetensors files (finding `../shared/reference` is `splitstream_testkit`'s).
#![allow(dead_code, unreachable_pub, unused_imports)]

use std::path::Path;

use safetensors::{tensor::TensorView, Dtype, SafeTensors};
pub use splitstream_testkit::{max_rel_diff, reference_dir};

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
