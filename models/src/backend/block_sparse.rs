//! Block-sparse weights (LPViT's pruning): a linear layer's `[out, in]` matrix cut into
//! blocks of `[bo, bi]`, only the kept (non-zero) blocks stored.
//!
//! The host form is compressed sparse rows over blocks: block-row `r` (outputs
//! `r * bo .. (r + 1) * bo`) keeps the block-columns `cols[row_start[r]..row_start[r + 1]]`
//! (increasing), and `values` holds the kept blocks in that order, each `[bo, bi]`
//! row-major. Backends turn it into their own packed form in
//! [`super::Backend::prepare_block_sparse_linear`]; a backend without a sparse kernel
//! densifies it ([`BlockSparse::to_dense`]), which is also the reference the kernels are
//! tested against.
//!
//! On disk (see `docs/models.md`, "Block-sparse checkpoints") a layer `X` is
//! `X.weight_block_mask` `[out / bo, in / bi]` (1.0 where a block is kept, else 0.0) and
//! `X.weight_blocks` `[kept, bo, bi]`, the kept blocks in row-major order of the mask.

use super::BackendError;
use crate::tensor::HostTensor;

/// Most blocks a layer may have (a guard before allocating from file shapes).
const MAX_BLOCKS: usize = 1 << 24;

/// A `[out, in]` weight matrix with only its kept `[bo, bi]` blocks stored.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockSparse {
    outputs: usize,
    inputs: usize,
    block: [usize; 2],
    row_start: Vec<usize>,
    cols: Vec<usize>,
    values: Vec<f32>,
}

fn err(detail: impl Into<String>) -> BackendError {
    BackendError::shape("block_sparse", detail)
}

impl BlockSparse {
    /// From the on-disk pair: `mask` `[R, C]` of 0.0/1.0 and `blocks` `[kept, bo, bi]`,
    /// the kept blocks in row-major order of the mask. The matrix is `[R * bo, C * bi]`.
    pub fn from_mask(mask: &HostTensor, blocks: &HostTensor) -> Result<Self, BackendError> {
        let &[rows, cols] = mask.shape() else {
            return Err(err(format!(
                "block mask must be [out / bo, in / bi], got {:?}",
                mask.shape()
            )));
        };
        let &[kept, bo, bi] = blocks.shape() else {
            return Err(err(format!(
                "blocks must be [kept, bo, bi], got {:?}",
                blocks.shape()
            )));
        };
        if bo == 0 || bi == 0 {
            return Err(err(format!("block size {bo}x{bi} is empty")));
        }
        if mask.data().iter().any(|&v| v != 0.0 && v != 1.0) {
            return Err(err("block mask holds values other than 0 and 1"));
        }
        let ones = mask.data().iter().filter(|&&v| v == 1.0).count();
        if ones != kept {
            return Err(err(format!(
                "block mask keeps {ones} blocks, the blocks tensor holds {kept}"
            )));
        }
        let keep: Vec<bool> = mask.data().iter().map(|&v| v == 1.0).collect();
        let outputs = rows
            .checked_mul(bo)
            .ok_or_else(|| err("matrix too large"))?;
        let inputs = cols
            .checked_mul(bi)
            .ok_or_else(|| err("matrix too large"))?;
        Self::from_parts(outputs, inputs, [bo, bi], &keep, blocks.data().to_vec())
    }

    /// Keeps the blocks of `weight` `[out, in]` where `keep` (row-major over the
    /// `[out / bo, in / bi]` block grid) is true: the dense weight with the mask applied.
    pub fn from_dense(
        weight: &HostTensor,
        block: [usize; 2],
        keep: &[bool],
    ) -> Result<Self, BackendError> {
        let &[outputs, inputs] = weight.shape() else {
            return Err(err(format!(
                "weight must be [out, in], got {:?}",
                weight.shape()
            )));
        };
        let [rows, cols] = grid(outputs, inputs, block)?;
        if keep.len() != rows * cols {
            return Err(err(format!(
                "mask has {} entries, the {rows}x{cols} block grid needs {}",
                keep.len(),
                rows * cols
            )));
        }
        let [bo, bi] = block;
        let w = weight.data();
        let mut values = Vec::with_capacity(keep.iter().filter(|&&k| k).count() * bo * bi);
        for r in 0..rows {
            for c in 0..cols {
                if keep[r * cols + c] {
                    for o in r * bo..(r + 1) * bo {
                        values
                            .extend_from_slice(&w[o * inputs + c * bi..o * inputs + (c + 1) * bi]);
                    }
                }
            }
        }
        Self::from_parts(outputs, inputs, block, keep, values)
    }

    fn from_parts(
        outputs: usize,
        inputs: usize,
        block: [usize; 2],
        keep: &[bool],
        values: Vec<f32>,
    ) -> Result<Self, BackendError> {
        let [rows, cols] = grid(outputs, inputs, block)?;
        let mut row_start = Vec::with_capacity(rows + 1);
        let mut kept_cols = Vec::new();
        row_start.push(0);
        for r in 0..rows {
            for c in 0..cols {
                if keep[r * cols + c] {
                    kept_cols.push(c);
                }
            }
            row_start.push(kept_cols.len());
        }
        if values.len() != kept_cols.len() * block[0] * block[1] {
            return Err(err(format!(
                "{} values for {} blocks of {}x{}",
                values.len(),
                kept_cols.len(),
                block[0],
                block[1]
            )));
        }
        Ok(Self {
            outputs,
            inputs,
            block,
            row_start,
            cols: kept_cols,
            values,
        })
    }

    /// Outputs (rows of the matrix).
    pub fn outputs(&self) -> usize {
        self.outputs
    }

    /// Inputs (columns of the matrix).
    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// The block size `[bo, bi]`.
    pub fn block(&self) -> [usize; 2] {
        self.block
    }

    /// Block-rows (`outputs / bo`).
    pub fn block_rows(&self) -> usize {
        self.row_start.len() - 1
    }

    /// Block-columns (`inputs / bi`).
    pub fn block_cols(&self) -> usize {
        self.inputs / self.block[1]
    }

    /// Kept blocks.
    pub fn kept(&self) -> usize {
        self.cols.len()
    }

    /// Fraction of blocks kept (1.0 for a dense matrix).
    pub fn density(&self) -> f64 {
        let total = self.block_rows() * self.block_cols();
        if total == 0 {
            1.0
        } else {
            self.kept() as f64 / total as f64
        }
    }

    /// The block-columns kept in block-row `r`, increasing.
    pub fn row_cols(&self, r: usize) -> &[usize] {
        &self.cols[self.row_start[r]..self.row_start[r + 1]]
    }

    /// The kept blocks of block-row `r`, each `[bo, bi]` row-major, in the order of
    /// [`BlockSparse::row_cols`].
    pub fn row_values(&self, r: usize) -> &[f32] {
        let size = self.block[0] * self.block[1];
        &self.values[self.row_start[r] * size..self.row_start[r + 1] * size]
    }

    /// The block mask, row-major over `[out / bo, in / bi]`.
    pub fn mask(&self) -> Vec<bool> {
        let cols = self.block_cols();
        let mut keep = vec![false; self.block_rows() * cols];
        for r in 0..self.block_rows() {
            for &c in self.row_cols(r) {
                keep[r * cols + c] = true;
            }
        }
        keep
    }

    /// The on-disk pair: the mask `[out / bo, in / bi]` and the kept blocks
    /// `[kept, bo, bi]`.
    pub fn to_mask_and_blocks(&self) -> Result<(HostTensor, HostTensor), BackendError> {
        let mask = self
            .mask()
            .iter()
            .map(|&k| if k { 1.0 } else { 0.0 })
            .collect();
        let mask = HostTensor::new(vec![self.block_rows(), self.block_cols()], mask)
            .map_err(|e| err(e.to_string()))?;
        let blocks = HostTensor::new(
            vec![self.kept(), self.block[0], self.block[1]],
            self.values.clone(),
        )
        .map_err(|e| err(e.to_string()))?;
        Ok((mask, blocks))
    }

    /// The dense `[out, in]` matrix, zeros where blocks were dropped.
    pub fn to_dense(&self) -> Result<HostTensor, BackendError> {
        let [bo, bi] = self.block;
        let mut w = vec![0.0f32; self.outputs * self.inputs];
        for r in 0..self.block_rows() {
            for (j, &c) in self.row_cols(r).iter().enumerate() {
                let blk = &self.row_values(r)[j * bo * bi..(j + 1) * bo * bi];
                for (i, src) in blk.chunks_exact(bi).enumerate() {
                    let o = r * bo + i;
                    w[o * self.inputs + c * bi..o * self.inputs + (c + 1) * bi]
                        .copy_from_slice(src);
                }
            }
        }
        HostTensor::new(vec![self.outputs, self.inputs], w).map_err(|e| err(e.to_string()))
    }
}

/// The block grid `[out / bo, in / bi]`, refusing sizes that do not divide.
fn grid(outputs: usize, inputs: usize, [bo, bi]: [usize; 2]) -> Result<[usize; 2], BackendError> {
    if bo == 0 || bi == 0 || !outputs.is_multiple_of(bo) || !inputs.is_multiple_of(bi) {
        return Err(err(format!(
            "a [{outputs}, {inputs}] matrix does not split into {bo}x{bi} blocks"
        )));
    }
    let (rows, cols) = (outputs / bo, inputs / bi);
    if rows.checked_mul(cols).is_none_or(|n| n > MAX_BLOCKS) {
        return Err(err(format!(
            "{rows}x{cols} blocks, more than the {MAX_BLOCKS} allowed"
        )));
    }
    Ok([rows, cols])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_round_trip_through_mask_and_blocks() {
        let w: Vec<f32> = (0..8 * 12).map(|i| i as f32 + 1.0).collect();
        let weight = HostTensor::new(vec![8, 12], w).unwrap();
        let keep = [true, false, true, false, false, true];
        let sparse = BlockSparse::from_dense(&weight, [4, 4], &keep).unwrap();
        assert_eq!(sparse.kept(), 3);
        assert_eq!(sparse.row_cols(0), &[0, 2]);
        assert_eq!(sparse.row_cols(1), &[2]);
        let dense = sparse.to_dense().unwrap();
        for o in 0..8 {
            for i in 0..12 {
                let kept = keep[(o / 4) * 3 + i / 4];
                let want = if kept { weight.data()[o * 12 + i] } else { 0.0 };
                assert_eq!(dense.data()[o * 12 + i], want);
            }
        }
        let (mask, blocks) = sparse.to_mask_and_blocks().unwrap();
        assert_eq!(BlockSparse::from_mask(&mask, &blocks).unwrap(), sparse);
    }

    #[test]
    fn refuses_inconsistent_parts() {
        let mask = HostTensor::new(vec![1, 2], vec![1.0, 1.0]).unwrap();
        let one = HostTensor::new(vec![1, 2, 2], vec![0.0; 4]).unwrap();
        assert!(BlockSparse::from_mask(&mask, &one).is_err());
        let bad = HostTensor::new(vec![1, 2], vec![1.0, 0.5]).unwrap();
        assert!(BlockSparse::from_mask(&bad, &one).is_err());
        let weight = HostTensor::new(vec![6, 4], vec![0.0; 24]).unwrap();
        assert!(BlockSparse::from_dense(&weight, [4, 4], &[true, true]).is_err());
    }
}
