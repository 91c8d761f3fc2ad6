//! GGML's block formats, kept quantized in memory: a [`QuantMatrix`] holds a weight
//! `[rows, cols]` as the file stores it (rows of blocks along `cols`) and multiplies by
//! dequantizing one block at a time, so a quantized file is never expanded to f32 as a
//! whole.
//!
//! Formats (GGML's, little-endian; `d`, `m` are f16):
//! - `Q8_0`: 32 values, `d` then 32 `i8`: `x = d * q`.
//! - `Q4_0`: 32 values, `d` then 16 bytes; byte `j` holds value `j` in its low nibble and
//!   value `j + 16` in its high nibble: `x = d * (q - 8)`.
//! - `Q4_1`: 32 values, `d`, `m` then 16 bytes as `Q4_0`: `x = d * q + m`.
//! - `Q4_K`: 256 values in 8 sub-blocks of 32 with 6-bit scales and mins.
//! - `Q6_K`: 256 values in 16 sub-blocks of 16 with 8-bit scales.
//! - `F16`, `F32`: plain rows.

use std::sync::Arc;

use half::f16;
use rayon::prelude::*;

/// Bytes a quantized tensor is read from: a memory map, or owned bytes.
pub type Blob = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// Errors building or using a [`QuantMatrix`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QuantError {
    /// GGML type id this build does not read.
    #[error("GGML tensor type {0} is not supported (F32, F16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K are)")]
    UnsupportedType(u32),
    /// A row length that is not a whole number of blocks.
    #[error("{ty:?} rows of {cols} values are not a whole number of {block}-value blocks")]
    PartialBlock {
        /// The format.
        ty: GgmlType,
        /// Values per row.
        cols: usize,
        /// Values per block.
        block: usize,
    },
    /// The bytes do not match the shape.
    #[error("{ty:?} [{rows}, {cols}] needs {expected} bytes, {actual} available")]
    Length {
        /// The format.
        ty: GgmlType,
        /// Rows.
        rows: usize,
        /// Values per row.
        cols: usize,
        /// Bytes the shape needs.
        expected: usize,
        /// Bytes there are.
        actual: usize,
    },
    /// An input of the wrong size.
    #[error("{0}")]
    Shape(String),
}

/// GGML tensor types read here (the ids are GGML's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// 4-bit, symmetric, 32-value blocks.
    Q4_0,
    /// 4-bit with a minimum, 32-value blocks.
    Q4_1,
    /// 8-bit, 32-value blocks.
    Q8_0,
    /// 4-bit K-quant, 256-value super-blocks.
    Q4K,
    /// 6-bit K-quant, 256-value super-blocks.
    Q6K,
}

impl GgmlType {
    /// The type of a GGML id.
    pub fn from_id(id: u32) -> Result<Self, QuantError> {
        Ok(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            12 => Self::Q4K,
            14 => Self::Q6K,
            other => return Err(QuantError::UnsupportedType(other)),
        })
    }

    /// GGML's id.
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q8_0 => 8,
            Self::Q4K => 12,
            Self::Q6K => 14,
        }
    }

    /// Values per block.
    pub fn block_values(self) -> usize {
        match self {
            Self::F32 | Self::F16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q8_0 => 32,
            Self::Q4K | Self::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 => 2,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
            Self::Q4K => 144,
            Self::Q6K => 210,
        }
    }

    /// Bytes of `values` values (a whole number of blocks), `None` otherwise or on
    /// overflow.
    pub fn bytes_for(self, values: usize) -> Option<usize> {
        if !values.is_multiple_of(self.block_values()) {
            return None;
        }
        (values / self.block_values()).checked_mul(self.block_bytes())
    }

    /// Dequantizes whole blocks: `src` holds `out.len() / block_values` blocks.
    pub fn dequantize(self, src: &[u8], out: &mut [f32]) {
        let bv = self.block_values();
        let bb = self.block_bytes();
        for (block, y) in src.chunks_exact(bb).zip(out.chunks_exact_mut(bv)) {
            dequantize_block(self, block, y);
        }
    }
}

fn half_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// One block of `ty` into `y` (`ty.block_values()` values).
fn dequantize_block(ty: GgmlType, b: &[u8], y: &mut [f32]) {
    match ty {
        GgmlType::F32 => y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        GgmlType::F16 => y[0] = half_at(b, 0),
        GgmlType::Q8_0 => {
            let d = half_at(b, 0);
            for (v, &q) in y.iter_mut().zip(&b[2..34]) {
                *v = d * f32::from(q as i8);
            }
        }
        GgmlType::Q4_0 => {
            let d = half_at(b, 0);
            for (j, &q) in b[2..18].iter().enumerate() {
                y[j] = d * (f32::from(q & 0xF) - 8.0);
                y[j + 16] = d * (f32::from(q >> 4) - 8.0);
            }
        }
        GgmlType::Q4_1 => {
            let (d, m) = (half_at(b, 0), half_at(b, 2));
            for (j, &q) in b[4..20].iter().enumerate() {
                y[j] = d * f32::from(q & 0xF) + m;
                y[j + 16] = d * f32::from(q >> 4) + m;
            }
        }
        GgmlType::Q4K => {
            let (d, dmin) = (half_at(b, 0), half_at(b, 2));
            let scales = &b[4..16];
            let qs = &b[16..144];
            for chunk in 0..4 {
                let (s1, m1) = scale_min_k4(2 * chunk, scales);
                let (s2, m2) = scale_min_k4(2 * chunk + 1, scales);
                let (d1, m1) = (d * f32::from(s1), dmin * f32::from(m1));
                let (d2, m2) = (d * f32::from(s2), dmin * f32::from(m2));
                let q = &qs[32 * chunk..32 * chunk + 32];
                let out = &mut y[64 * chunk..64 * chunk + 64];
                for l in 0..32 {
                    out[l] = d1 * f32::from(q[l] & 0xF) - m1;
                    out[l + 32] = d2 * f32::from(q[l] >> 4) - m2;
                }
            }
        }
        GgmlType::Q6K => {
            let d = half_at(b, 208);
            for half_block in 0..2 {
                let ql = &b[64 * half_block..64 * half_block + 64];
                let qh = &b[128 + 32 * half_block..128 + 32 * half_block + 32];
                let sc = &b[192 + 8 * half_block..192 + 8 * half_block + 8];
                let out = &mut y[128 * half_block..128 * half_block + 128];
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = i32::from((ql[l] & 0xF) | ((qh[l] & 3) << 4)) - 32;
                    let q2 = i32::from((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                    let q3 = i32::from((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                    let q4 = i32::from((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                    let s = |k: usize| d * f32::from(sc[k] as i8);
                    out[l] = s(is) * q1 as f32;
                    out[l + 32] = s(is + 2) * q2 as f32;
                    out[l + 64] = s(is + 4) * q3 as f32;
                    out[l + 96] = s(is + 6) * q4 as f32;
                }
            }
        }
    }
}

/// Scale and minimum of sub-block `j` of a `Q4_K` block (6 bits each, packed in 12
/// bytes).
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Quantizes `x` (a whole number of blocks) to `ty` the way GGML's reference quantizers
/// do (round to nearest). K-quants are read-only here.
pub fn quantize(ty: GgmlType, x: &[f32]) -> Result<Vec<u8>, QuantError> {
    let bv = ty.block_values();
    if !x.len().is_multiple_of(bv) {
        return Err(QuantError::PartialBlock {
            ty,
            cols: x.len(),
            block: bv,
        });
    }
    let mut out = Vec::with_capacity(x.len() / bv * ty.block_bytes());
    match ty {
        GgmlType::F32 => x.iter().for_each(|v| out.extend(v.to_le_bytes())),
        GgmlType::F16 => x
            .iter()
            .for_each(|v| out.extend(f16::from_f32(*v).to_le_bytes())),
        GgmlType::Q8_0 => {
            for b in x.chunks_exact(32) {
                let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend(f16::from_f32(d).to_le_bytes());
                out.extend(b.iter().map(|v| (v * id).round() as i8 as u8));
            }
        }
        GgmlType::Q4_0 => {
            for b in x.chunks_exact(32) {
                // The value of largest magnitude, with its sign, maps to -8.
                let max = b
                    .iter()
                    .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend(f16::from_f32(d).to_le_bytes());
                let q = |v: f32| ((v * id + 8.5) as i32).clamp(0, 15) as u8;
                out.extend((0..16).map(|j| q(b[j]) | (q(b[j + 16]) << 4)));
            }
        }
        GgmlType::Q4_1 => {
            for b in x.chunks_exact(32) {
                let min = b.iter().copied().fold(f32::INFINITY, f32::min);
                let max = b.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let d = (max - min) / 15.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend(f16::from_f32(d).to_le_bytes());
                out.extend(f16::from_f32(min).to_le_bytes());
                let q = |v: f32| (((v - min) * id + 0.5) as i32).clamp(0, 15) as u8;
                out.extend((0..16).map(|j| q(b[j]) | (q(b[j + 16]) << 4)));
            }
        }
        GgmlType::Q4K | GgmlType::Q6K => {
            return Err(QuantError::Shape(format!(
                "quantizing to {ty:?} is not implemented (reading is)"
            )))
        }
    }
    Ok(out)
}

/// A weight `[rows, cols]` in a GGML block format (PyTorch's `nn.Linear` layout:
/// `rows` outputs of `cols` inputs), multiplied block by block.
#[derive(Clone)]
pub struct QuantMatrix {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    blob: Blob,
    start: usize,
}

impl std::fmt::Debug for QuantMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "QuantMatrix({:?} [{}, {}])",
            self.ty, self.rows, self.cols
        )
    }
}

/// Rows one rayon task takes in [`QuantMatrix::matmul`].
const ROWS_PER_TASK: usize = 16;

impl QuantMatrix {
    /// The matrix stored in `blob[start..]`, checked against its length.
    pub fn new(
        ty: GgmlType,
        rows: usize,
        cols: usize,
        blob: Blob,
        start: usize,
    ) -> Result<Self, QuantError> {
        let row_bytes = ty.bytes_for(cols).ok_or(QuantError::PartialBlock {
            ty,
            cols,
            block: ty.block_values(),
        })?;
        let actual = (*blob).as_ref().len().saturating_sub(start);
        let expected = row_bytes.saturating_mul(rows);
        if expected > actual {
            return Err(QuantError::Length {
                ty,
                rows,
                cols,
                expected,
                actual,
            });
        }
        Ok(Self {
            ty,
            rows,
            cols,
            row_bytes,
            blob,
            start,
        })
    }

    /// Quantizes a dense `[rows, cols]` matrix (tests, conversion tools).
    pub fn from_f32(ty: GgmlType, rows: usize, cols: usize, x: &[f32]) -> Result<Self, QuantError> {
        if rows.checked_mul(cols) != Some(x.len()) {
            return Err(QuantError::Shape(format!(
                "{} values are not [{rows}, {cols}]",
                x.len()
            )));
        }
        if !cols.is_multiple_of(ty.block_values()) {
            return Err(QuantError::PartialBlock {
                ty,
                cols,
                block: ty.block_values(),
            });
        }
        let bytes = quantize(ty, x)?;
        Self::new(ty, rows, cols, Arc::new(bytes), 0)
    }

    /// The format.
    pub fn ty(&self) -> GgmlType {
        self.ty
    }

    /// `[rows, cols]`.
    pub fn shape(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    /// Bytes held (quantized).
    pub fn bytes(&self) -> usize {
        self.row_bytes * self.rows
    }

    fn row(&self, r: usize) -> &[u8] {
        let at = self.start + r * self.row_bytes;
        &(*self.blob).as_ref()[at..at + self.row_bytes]
    }

    /// Row `r` as f32 into `out` (`cols` values).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) -> Result<(), QuantError> {
        if r >= self.rows || out.len() != self.cols {
            return Err(QuantError::Shape(format!(
                "row {r} of [{}, {}] into {} values",
                self.rows,
                self.cols,
                out.len()
            )));
        }
        self.ty.dequantize(self.row(r), out);
        Ok(())
    }

    /// Rows `ids` as f32, `[ids.len(), cols]` (an embedding lookup).
    pub fn gather_rows(&self, ids: &[u32]) -> Result<Vec<f32>, QuantError> {
        let mut out = vec![0f32; ids.len() * self.cols];
        for (&id, row) in ids.iter().zip(out.chunks_exact_mut(self.cols.max(1))) {
            self.dequantize_row(id as usize, row)?;
        }
        Ok(out)
    }

    /// The whole matrix as f32 (tests and small tensors only).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        for (r, row) in out.chunks_exact_mut(self.cols.max(1)).enumerate() {
            self.ty.dequantize(self.row(r), row);
        }
        out
    }

    /// A copy with its rows reordered: row `i` of the result is row `perm[i]` here
    /// (still quantized; used to undo GGUF's Q/K row permutation).
    pub fn permute_rows(&self, perm: &[usize]) -> Result<Self, QuantError> {
        if perm.len() != self.rows || perm.iter().any(|&p| p >= self.rows) {
            return Err(QuantError::Shape(format!(
                "a permutation of {} rows has {} entries",
                self.rows,
                perm.len()
            )));
        }
        let mut bytes = Vec::with_capacity(self.bytes());
        for &p in perm {
            bytes.extend_from_slice(self.row(p));
        }
        Self::new(self.ty, self.rows, self.cols, Arc::new(bytes), 0)
    }

    /// `x W^T`: `x` is `[n, cols]` row-major, the result `[n, rows]`. Each row of `W`
    /// is dequantized once into a scratch row and dotted with the `n` inputs; rows are
    /// shared out over rayon's threads.
    pub fn matmul(&self, x: &[f32], n: usize) -> Result<Vec<f32>, QuantError> {
        if n.checked_mul(self.cols) != Some(x.len()) {
            return Err(QuantError::Shape(format!(
                "input of {} values is not [{n}, {}]",
                x.len(),
                self.cols
            )));
        }
        let cols = self.cols;
        // [rows, n] first: each task owns whole rows of W.
        let mut by_row = vec![0f32; self.rows * n];
        if n == 0 || self.rows == 0 {
            return Ok(by_row);
        }
        by_row
            .par_chunks_mut(n * ROWS_PER_TASK)
            .enumerate()
            .for_each(|(task, out)| {
                let mut w = vec![0f32; cols];
                for (i, out_row) in out.chunks_exact_mut(n).enumerate() {
                    let r = task * ROWS_PER_TASK + i;
                    self.ty.dequantize(self.row(r), &mut w);
                    for (t, o) in out_row.iter_mut().enumerate() {
                        *o = dot(&w, &x[t * cols..(t + 1) * cols]);
                    }
                }
            });
        if n == 1 {
            return Ok(by_row);
        }
        let mut out = vec![0f32; self.rows * n];
        for (r, row) in by_row.chunks_exact(n).enumerate() {
            for (t, &v) in row.iter().enumerate() {
                out[t * self.rows + r] = v;
            }
        }
        Ok(out)
    }
}

/// A dot product with eight independent accumulators (the compiler vectorises it).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 13.0)
            .collect()
    }

    #[test]
    fn round_trips_stay_within_the_formats_step() {
        let x = ramp(64);
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (ty, step) in [
            (GgmlType::F32, 0.0),
            (GgmlType::F16, amax / 1000.0),
            (GgmlType::Q8_0, amax / 127.0),
            // The clamp at +7 can cost a whole step on the side opposite the extreme.
            (GgmlType::Q4_0, 2.0 * amax / 8.0),
            (GgmlType::Q4_1, 2.0 * amax / 15.0),
        ] {
            let m = QuantMatrix::from_f32(ty, 2, 32, &x).unwrap();
            let y = m.to_f32();
            let err = x
                .iter()
                .zip(&y)
                .fold(0f32, |e, (a, b)| e.max((a - b).abs()));
            assert!(
                err <= step * 0.51 + 1e-6,
                "{ty:?}: error {err} > half of {step}"
            );
        }
    }

    #[test]
    fn q4_nibbles_are_value_j_and_j_plus_16() {
        // d = 1, m = 0: byte j = (hi << 4) | lo.
        let mut block = f16::from_f32(1.0).to_le_bytes().to_vec();
        block.extend(f16::from_f32(0.0).to_le_bytes());
        block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut y = [0f32; 32];
        GgmlType::Q4_1.dequantize(&block, &mut y);
        assert_eq!(y[3], 3.0);
        assert_eq!(y[16 + 3], 12.0);
    }

    #[test]
    fn k_quants_decode_hand_made_blocks() {
        // Q4_K: d = 1, dmin = 1; sub-block scales 1..=8 would need the packing; use
        // scale 2 and min 1 for sub-blocks 0..4 (the low 6 bits of bytes 0..8) and 0
        // for 4..8, every nibble 5.
        let mut b = Vec::new();
        b.extend(f16::from_f32(1.0).to_le_bytes());
        b.extend(f16::from_f32(1.0).to_le_bytes());
        b.extend([2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0]);
        b.extend([0x55u8; 128]);
        let mut y = [0f32; 256];
        GgmlType::Q4K.dequantize(&b, &mut y);
        assert_eq!(y[0], 2.0 * 5.0 - 1.0);
        assert_eq!(y[4 * 32], 0.0);
        // Q6_K: every 6-bit value 33 (ql nibble 1, qh bits 2) so q - 32 = 1; scales k+1.
        let mut b = vec![0x11u8; 128];
        b.extend([0b1010_1010u8; 64]);
        b.extend(1..=16u8);
        b.extend(f16::from_f32(0.5).to_le_bytes());
        let mut y = [0f32; 256];
        GgmlType::Q6K.dequantize(&b, &mut y);
        // Value l=0 of the first half uses scale 0 (1), l=32 scale 2 (3), l=64 scale 4 (5).
        assert_eq!([y[0], y[32], y[64], y[96]], [0.5, 1.5, 2.5, 3.5]);
        assert_eq!(y[128 + 16], 0.5 * 10.0);
    }

    #[test]
    fn matmul_equals_the_dequantized_product() {
        let (rows, cols, n) = (40, 64, 3);
        let w = ramp(rows * cols);
        let x: Vec<f32> = ramp(n * cols).iter().map(|v| v * 0.5 + 0.1).collect();
        for ty in [
            GgmlType::F16,
            GgmlType::Q8_0,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
        ] {
            let m = QuantMatrix::from_f32(ty, rows, cols, &w).unwrap();
            let dense = m.to_f32();
            let y = m.matmul(&x, n).unwrap();
            for t in 0..n {
                for r in 0..rows {
                    let want: f32 = (0..cols)
                        .map(|c| dense[r * cols + c] * x[t * cols + c])
                        .sum();
                    let got = y[t * rows + r];
                    assert!((want - got).abs() <= 1e-4 * want.abs().max(1.0), "{ty:?}");
                }
            }
        }
    }

    #[test]
    fn short_buffers_and_partial_blocks_are_refused() {
        let blob: Blob = Arc::new(vec![0u8; 10]);
        assert!(matches!(
            QuantMatrix::new(GgmlType::Q8_0, 1, 32, blob.clone(), 0),
            Err(QuantError::Length { .. })
        ));
        assert!(matches!(
            QuantMatrix::new(GgmlType::Q8_0, 1, 30, blob, 0),
            Err(QuantError::PartialBlock { .. })
        ));
        assert!(GgmlType::from_id(99).is_err());
    }
}
