//! Data movement: concat, slice, write_slice and embedding lookups.
//!
//! Each views its tensors as `[outer, axis, inner]` ([`crate::backend::ops::AxisSplit`]),
//! where a tensor's part of one `outer` step is a single contiguous run, so every op
//! is a sequence of `copy_from_slice` calls (memcpy) with no per-element indexing.

use crate::backend::ops::{
    axis_split, concat_shape, embedding_geometry, slice_geometry, write_slice_geometry,
};
use crate::backend::BackendError;

use super::{CpuBackend, CpuTensor};

impl CpuBackend {
    pub(super) fn concat_impl(
        &self,
        xs: &[&CpuTensor],
        axis: usize,
    ) -> Result<CpuTensor, BackendError> {
        let shapes: Vec<&[usize]> = xs.iter().map(|x| x.shape.as_slice()).collect();
        let shape = concat_shape(&shapes, axis)?;
        let split = axis_split("concat", &shape, axis)?;
        // Checked by `concat_shape` (the output's size bounds every input's).
        let runs: Vec<usize> = xs.iter().map(|x| x.shape[axis] * split.inner).collect();
        let mut out = Vec::with_capacity(split.outer * split.n * split.inner);
        for o in 0..split.outer {
            for (x, &run) in xs.iter().zip(&runs) {
                out.extend_from_slice(&x.data[o * run..(o + 1) * run]);
            }
        }
        Ok(CpuTensor::new(shape, out))
    }

    pub(super) fn slice_impl(
        &self,
        x: &CpuTensor,
        axis: usize,
        start: usize,
        len: usize,
    ) -> Result<CpuTensor, BackendError> {
        let s = slice_geometry(&x.shape, axis, start, len)?;
        let mut out = Vec::with_capacity(s.outer * len * s.inner);
        for o in 0..s.outer {
            let at = (o * s.n + start) * s.inner;
            out.extend_from_slice(&x.data[at..at + len * s.inner]);
        }
        let mut shape = x.shape.clone();
        shape[axis] = len;
        Ok(CpuTensor::new(shape, out))
    }

    pub(super) fn write_slice_impl(
        &self,
        dst: &mut CpuTensor,
        axis: usize,
        start: usize,
        src: &CpuTensor,
    ) -> Result<(), BackendError> {
        let (s, n) = write_slice_geometry(&dst.shape, axis, start, &src.shape)?;
        let run = n * s.inner;
        for o in 0..s.outer {
            let at = (o * s.n + start) * s.inner;
            dst.data[at..at + run].copy_from_slice(&src.data[o * run..(o + 1) * run]);
        }
        Ok(())
    }

    pub(super) fn embedding_impl(
        &self,
        table: &CpuTensor,
        ids: &[u32],
    ) -> Result<CpuTensor, BackendError> {
        let [_, d] = embedding_geometry(&table.shape, ids)?;
        let mut out = Vec::with_capacity(ids.len() * d);
        for &id in ids {
            let at = id as usize * d;
            out.extend_from_slice(&table.data[at..at + d]);
        }
        Ok(CpuTensor::new(vec![ids.len(), d], out))
    }
}
