//! Elementwise ops: activations (alone and as the epilogue of linear and conv2d) and
//! the broadcasting binary, compare and select.
//!
//! Broadcasting walks the output row by row (a row is its last dimension): each row's
//! operand offsets come from [`broadcast_strides`], and the row itself is a tight loop
//! specialised for the strides it can have (1: the operand runs along, 0: it is
//! repeated), which covers bias rows, per-channel scales and masks without a gather.

use crate::backend::ops::{broadcast_shape, broadcast_shape3, broadcast_strides};
use crate::backend::{Activation, BackendError, BinaryOp, CompareOp};
use crate::tensor::checked_numel;

use super::{kernels, CpuBackend, CpuTensor, Isa};

/// Applies `act` to `x` in place, on this thread.
pub(crate) fn activate_slice(isa: Isa, act: Activation, x: &mut [f32]) {
    match act {
        Activation::Identity => {}
        Activation::Gelu => kernels::gelu(isa, x),
        Activation::Silu => kernels::sigmoid(isa, x, true),
        Activation::Sigmoid => kernels::sigmoid(isa, x, false),
        // Written as compare-and-select so that NaN passes through (as in PyTorch) and
        // the loops vectorise.
        Activation::Relu => x.iter_mut().for_each(|v| {
            if *v < 0.0 {
                *v = 0.0
            }
        }),
        Activation::Relu6 => x.iter_mut().for_each(|v| *v = v.clamp(0.0, 6.0)),
        Activation::HardSwish => x
            .iter_mut()
            .for_each(|v| *v = *v * (*v + 3.0).clamp(0.0, 6.0) / 6.0),
    }
}

impl CpuBackend {
    /// Applies `act` to `out` in place, split across the pool for large tensors.
    pub(super) fn activate_in_place(&self, act: Activation, out: &mut [f32], row_len: usize) {
        if act == Activation::Identity {
            return;
        }
        let isa = self.isa;
        self.for_row_chunks(out, row_len.max(1), |_, chunk| {
            activate_slice(isa, act, chunk)
        });
    }

    /// `f(a, b)` over the broadcast of `a` and `b`.
    pub(super) fn broadcast2(
        &self,
        op: &'static str,
        a: &CpuTensor,
        b: &CpuTensor,
        f: impl Fn(f32, f32) -> f32 + Send + Sync + Copy,
    ) -> Result<CpuTensor, BackendError> {
        let shape = broadcast_shape(op, &a.shape, &b.shape)?;
        let n = output_len(op, &shape)?;
        let mut out = vec![0.0f32; n];
        if a.shape == b.shape {
            self.for_row_chunks(&mut out, 1, |start, chunk| {
                let end = start + chunk.len();
                for ((d, &x), &y) in chunk
                    .iter_mut()
                    .zip(&a.data[start..end])
                    .zip(&b.data[start..end])
                {
                    *d = f(x, y);
                }
            });
            return Ok(CpuTensor::new(shape, out));
        }
        let rank = shape.len();
        let Some((&last, outer)) = shape.split_last() else {
            // Both scalars.
            out[0] = f(a.data[0], b.data[0]);
            return Ok(CpuTensor::new(shape, out));
        };
        let (sa, sb) = (
            broadcast_strides(&a.shape, rank),
            broadcast_strides(&b.shape, rank),
        );
        let (ia, ib) = (sa[rank - 1], sb[rank - 1]);
        self.for_row_chunks(&mut out, last, |row0, chunk| {
            for (r, dst) in chunk.chunks_exact_mut(last).enumerate() {
                let [oa, ob] = row_offsets(row0 + r, outer, [&sa, &sb]);
                match (ia, ib) {
                    (0, 0) => dst.fill(f(a.data[oa], b.data[ob])),
                    (0, _) => {
                        let x = a.data[oa];
                        for (d, &y) in dst.iter_mut().zip(&b.data[ob..ob + last]) {
                            *d = f(x, y);
                        }
                    }
                    (_, 0) => {
                        let y = b.data[ob];
                        for (d, &x) in dst.iter_mut().zip(&a.data[oa..oa + last]) {
                            *d = f(x, y);
                        }
                    }
                    _ => {
                        let rows = a.data[oa..oa + last].iter().zip(&b.data[ob..ob + last]);
                        for (d, (&x, &y)) in dst.iter_mut().zip(rows) {
                            *d = f(x, y);
                        }
                    }
                }
            }
        });
        Ok(CpuTensor::new(shape, out))
    }

    /// `torch.where(mask != 0, a, b)` over the broadcast of the three.
    pub(super) fn select_impl(
        &self,
        mask: &CpuTensor,
        a: &CpuTensor,
        b: &CpuTensor,
    ) -> Result<CpuTensor, BackendError> {
        const OP: &str = "select";
        let shape = broadcast_shape3(OP, &mask.shape, &a.shape, &b.shape)?;
        let n = output_len(OP, &shape)?;
        let mut out = vec![0.0f32; n];
        let rank = shape.len();
        let Some((&last, outer)) = shape.split_last() else {
            out[0] = if mask.data[0] != 0.0 {
                a.data[0]
            } else {
                b.data[0]
            };
            return Ok(CpuTensor::new(shape, out));
        };
        let s = [
            broadcast_strides(&mask.shape, rank),
            broadcast_strides(&a.shape, rank),
            broadcast_strides(&b.shape, rank),
        ];
        let (im, ia, ib) = (s[0][rank - 1], s[1][rank - 1], s[2][rank - 1]);
        self.for_row_chunks(&mut out, last, |row0, chunk| {
            for (r, dst) in chunk.chunks_exact_mut(last).enumerate() {
                let [om, oa, ob] = row_offsets(row0 + r, outer, [&s[0], &s[1], &s[2]]);
                for (j, d) in dst.iter_mut().enumerate() {
                    *d = if mask.data[om + j * im] != 0.0 {
                        a.data[oa + j * ia]
                    } else {
                        b.data[ob + j * ib]
                    };
                }
            }
        });
        Ok(CpuTensor::new(shape, out))
    }
}

impl CpuBackend {
    /// `a op b`: one monomorphic loop per op (matching on `op` per element would keep
    /// the compiler from vectorising).
    pub(super) fn binary_impl(
        &self,
        a: &CpuTensor,
        b: &CpuTensor,
        op: BinaryOp,
    ) -> Result<CpuTensor, BackendError> {
        const OP: &str = "binary";
        match op {
            BinaryOp::Add => self.broadcast2(OP, a, b, |x, y| x + y),
            BinaryOp::Sub => self.broadcast2(OP, a, b, |x, y| x - y),
            BinaryOp::Mul => self.broadcast2(OP, a, b, |x, y| x * y),
            BinaryOp::Div => self.broadcast2(OP, a, b, |x, y| x / y),
            // NaN-propagating (`torch.maximum`): `x` if it wins or is NaN, else `y`,
            // which is then the larger or NaN itself.
            BinaryOp::Max => {
                self.broadcast2(OP, a, b, |x, y| if x > y || x.is_nan() { x } else { y })
            }
            BinaryOp::Min => {
                self.broadcast2(OP, a, b, |x, y| if x < y || x.is_nan() { x } else { y })
            }
        }
    }

    /// `a op b` as a 1.0/0.0 mask, one monomorphic loop per comparison.
    pub(super) fn compare_impl(
        &self,
        a: &CpuTensor,
        b: &CpuTensor,
        op: CompareOp,
    ) -> Result<CpuTensor, BackendError> {
        const OP: &str = "compare";
        let mask = |holds: bool| if holds { 1.0 } else { 0.0 };
        match op {
            CompareOp::Eq => self.broadcast2(OP, a, b, move |x, y| mask(x == y)),
            CompareOp::Lt => self.broadcast2(OP, a, b, move |x, y| mask(x < y)),
            CompareOp::Le => self.broadcast2(OP, a, b, move |x, y| mask(x <= y)),
            CompareOp::Gt => self.broadcast2(OP, a, b, move |x, y| mask(x > y)),
            CompareOp::Ge => self.broadcast2(OP, a, b, move |x, y| mask(x >= y)),
        }
    }
}

fn output_len(op: &'static str, shape: &[usize]) -> Result<usize, BackendError> {
    checked_numel(shape)
        .ok_or_else(|| BackendError::shape(op, format!("output {shape:?} too large")))
}

/// Offsets into each operand of output row `row` (an index over the `outer`
/// dimensions, all but the last), from each operand's broadcast strides.
fn row_offsets<const K: usize>(row: usize, outer: &[usize], strides: [&[usize]; K]) -> [usize; K] {
    let mut offsets = [0; K];
    let mut rest = row;
    for (dim, &size) in outer.iter().enumerate().rev() {
        let i = rest % size.max(1);
        rest /= size.max(1);
        for (o, s) in offsets.iter_mut().zip(&strides) {
            *o += i * s[dim];
        }
    }
    offsets
}
