//! T-MAC: low-bit GEMV/GEMM by table lookup (Wei et al., EuroSys 2025), our own
//! implementation of the idea.
//!
//! **Weights.** Each row is quantized per group of `group` columns to `bits` (2 or 4)
//! unsigned codes with a scale and an offset, `w = scale * q + offset` (min/max,
//! like GGUF's Q4_1). The codes are stored as *bit-planes*: for a group of 4 columns,
//! plane `i` of a row is the 4-bit number whose bit `k` is bit `i` of column `k`'s
//! code. So `sum_k q_k x_k = sum_i 2^i * sum_k bit_i(q_k) x_k`, and the inner sum is
//! one of only 16 values for a given 4 activations.
//!
//! **Activations.** Per group of 4 activations a 16-entry table holds the sums of all
//! their subsets, quantized to int8 with one scale per weight group. The dot product
//! of a row then needs no multiplication: each plane's 4-bit number indexes the table.
//! A `VPSHUFB` (`_mm256_shuffle_epi8`, `_mm512_shuffle_epi8`) does 32 or 64 such
//! lookups at once, for 16 or 32 rows and two planes; `VPMADDUBSW` adds each row's two
//! planes with their weights `2^i` into int16, which is widened to int32 every 16
//! activation groups (before it could overflow) and at the end of each weight group,
//! where scale and offset turn it into f32 in shared scalar code.
//!
//! **Layout.** Rows come in tiles of 32. For a tile, a plane pair `p` (planes `2p`,
//! `2p+1`) and an activation group `g`, 32 bytes: byte `b` holds in its low nibble the
//! plane `2p + b % 2` index of row `b / 2`, in its high nibble that of row `16 + b / 2`.
//! Chunks are ordered `[tile][pair][g]`, so two successive activation groups are 64
//! contiguous bytes: one AVX-512 load, with the tables of `g` and `g + 1` in the
//! register's 128-bit lanes (each table stored twice, 32 bytes per group).
//!
//! Every instruction-set path computes the same integer sums, so AVX-512, AVX2 and the
//! portable path give bit-identical outputs (the tests check it).

use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors};

use super::kernels::Isa;

/// Rows per tile.
const TILE: usize = 32;
/// Activation groups (of 4) summed in int16 before widening: with int8 table entries
/// (|v| <= 127) and plane weights up to 4 + 8, 16 groups stay below 2^15.
const FLUSH: usize = 16;
/// Largest matrix side accepted (a guard against corrupt shapes).
const MAX_SIDE: usize = 1 << 20;

/// Errors building or reading a T-MAC matrix.
#[derive(Debug, thiserror::Error)]
pub enum TmacError {
    /// The shape, bits or group are not usable.
    #[error("T-MAC: {0}")]
    Shape(String),
    /// A serialized matrix is missing a tensor or has inconsistent ones.
    #[error("T-MAC tensors {name}: {detail}")]
    Tensors {
        /// The prefix looked up.
        name: String,
        /// What was wrong.
        detail: String,
    },
}

fn shape_err(s: impl Into<String>) -> TmacError {
    TmacError::Shape(s.into())
}

/// A weight matrix `[rows, cols]` re-quantized to 2- or 4-bit bit-planes.
#[derive(Debug, Clone, PartialEq)]
pub struct TmacMatrix {
    rows: usize,
    cols: usize,
    bits: usize,
    group: usize,
    /// `[tiles][bits/2][cols/4][32]` bytes.
    planes: Vec<u8>,
    /// `[tiles * 32][cols/group]`, padding rows zero.
    scales: Vec<f32>,
    /// Same layout as `scales`.
    offsets: Vec<f32>,
}

/// The int8 lookup tables of one activation vector.
#[derive(Debug, Clone, Default)]
pub struct ActivationLut {
    /// Per activation group of 4: its 16 int8 entries, twice (32 bytes).
    tables: Vec<i8>,
    /// Per weight group: the tables' scale (entry * scale = subset sum).
    scales: Vec<f32>,
    /// Per weight group: the sum of its activations (for the offsets), in f32.
    sums: Vec<f32>,
}

impl ActivationLut {
    /// Builds the tables of `x` (length a multiple of `group`, `group` a multiple of 8).
    pub fn new(x: &[f32], group: usize) -> Self {
        let mut lut = Self::default();
        lut.fill(x, group);
        lut
    }

    fn fill(&mut self, x: &[f32], group: usize) {
        let groups = x.len() / group;
        self.tables.clear();
        self.tables.resize(x.len() / 4 * 32, 0);
        self.scales.clear();
        self.sums.clear();
        let mut float = vec![0f32; group / 4 * 16];
        for (gi, xs) in x.chunks_exact(group).take(groups).enumerate() {
            let mut max = 0f32;
            for (a, x4) in xs.chunks_exact(4).enumerate() {
                let t = &mut float[a * 16..a * 16 + 16];
                t[0] = 0.0;
                for j in 1..16usize {
                    // Each subset sum is a smaller subset's plus one activation.
                    t[j] = t[j & (j - 1)] + x4[j.trailing_zeros() as usize];
                    max = max.max(t[j].abs());
                }
            }
            let scale = max / 127.0;
            let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            let base = gi * group / 4 * 32;
            for (a, t) in float.chunks_exact(16).enumerate() {
                let out = &mut self.tables[base + a * 32..base + a * 32 + 32];
                for (j, &v) in t.iter().enumerate() {
                    let q = round_even((v * inv).clamp(-127.0, 127.0)) as i8;
                    out[j] = q;
                    out[j + 16] = q;
                }
            }
            self.scales.push(scale);
            self.sums.push(xs.iter().sum());
        }
    }

    /// The int8 entry `index` (0..16) of activation group `a`.
    pub fn entry(&self, a: usize, index: usize) -> i8 {
        self.tables[a * 32 + (index & 15)]
    }

    /// The table scale of weight group `g`.
    pub fn scale(&self, g: usize) -> f32 {
        self.scales[g]
    }

    /// The activation sum of weight group `g`.
    pub fn sum(&self, g: usize) -> f32 {
        self.sums[g]
    }
}

impl TmacMatrix {
    /// Re-quantizes `weights` (`[rows, cols]`, row-major) to `bits` (2 or 4) per
    /// `group` columns (a multiple of 8 that divides `cols`).
    pub fn quantize(
        weights: &[f32],
        rows: usize,
        cols: usize,
        bits: usize,
        group: usize,
    ) -> Result<Self, TmacError> {
        check_geometry(rows, cols, bits, group)?;
        if weights.len() != rows * cols {
            return Err(shape_err(format!(
                "{} weights for a {rows}x{cols} matrix",
                weights.len()
            )));
        }
        if let Some(i) = weights.iter().position(|w| !w.is_finite()) {
            return Err(shape_err(format!(
                "weight {i} is not finite ({})",
                weights[i]
            )));
        }
        let groups = cols / group;
        let padded = rows.div_ceil(TILE) * TILE;
        let levels = ((1u32 << bits) - 1) as f32;
        let mut codes = vec![0u8; padded * cols];
        let mut scales = vec![0f32; padded * groups];
        let mut offsets = vec![0f32; padded * groups];
        for r in 0..rows {
            for g in 0..groups {
                let w = &weights[r * cols + g * group..r * cols + (g + 1) * group];
                let (lo, hi) = w
                    .iter()
                    .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                        (lo.min(v), hi.max(v))
                    });
                let scale = (hi - lo) / levels;
                let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
                for (c, &v) in w.iter().enumerate() {
                    codes[r * cols + g * group + c] =
                        ((v - lo) * inv).round().clamp(0.0, levels) as u8;
                }
                scales[r * groups + g] = scale;
                offsets[r * groups + g] = lo;
            }
        }
        let planes = pack(&codes, padded, cols, bits);
        Ok(Self {
            rows,
            cols,
            bits,
            group,
            planes,
            scales,
            offsets,
        })
    }

    /// Output rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bits per weight (2 or 4).
    pub fn bits(&self) -> usize {
        self.bits
    }

    /// Columns per quantization group.
    pub fn group(&self) -> usize {
        self.group
    }

    /// Bytes the quantized weights take (planes, scales and offsets).
    pub fn bytes(&self) -> usize {
        self.planes.len() + 4 * (self.scales.len() + self.offsets.len())
    }

    /// The code (0 .. 2^bits) of weight `(row, col)`, read back from the planes.
    pub fn code(&self, row: usize, col: usize) -> u8 {
        let pairs = self.bits / 2;
        let (tile, i) = (row / TILE, row % TILE);
        let (a, k) = (col / 4, col % 4);
        let mut q = 0u8;
        for plane in 0..self.bits {
            let (p, side) = (plane / 2, plane % 2);
            let byte =
                self.planes[((tile * pairs + p) * (self.cols / 4) + a) * 32 + (i % 16) * 2 + side];
            let nibble = if i < 16 { byte & 15 } else { byte >> 4 };
            q |= ((nibble >> k) & 1) << plane;
        }
        q
    }

    /// Scale of `(row, group)`.
    pub fn scale(&self, row: usize, group: usize) -> f32 {
        self.scales[row * (self.cols / self.group) + group]
    }

    /// Offset of `(row, group)`.
    pub fn offset(&self, row: usize, group: usize) -> f32 {
        self.offsets[row * (self.cols / self.group) + group]
    }

    /// The weights as the codes represent them, `[rows, cols]`.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut w = Vec::with_capacity(self.rows * self.cols);
        for r in 0..self.rows {
            for c in 0..self.cols {
                let g = c / self.group;
                w.push(self.scale(r, g) * self.code(r, c) as f32 + self.offset(r, g));
            }
        }
        w
    }

    /// `y = W x` with the best instruction set this CPU has.
    pub fn gemv(&self, x: &[f32], y: &mut [f32]) -> Result<(), TmacError> {
        self.gemv_isa(Isa::detect(), x, y)
    }

    /// `y = W x` at instruction-set level `isa` (or the best supported below it).
    pub fn gemv_isa(&self, isa: Isa, x: &[f32], y: &mut [f32]) -> Result<(), TmacError> {
        self.gemm_isa(isa, x, 1, y)
    }

    /// `Y = X W^T` for `n` activation rows: `x` is `[n, cols]`, `y` is `[n, rows]`.
    pub fn gemm(&self, x: &[f32], n: usize, y: &mut [f32]) -> Result<(), TmacError> {
        self.gemm_isa(Isa::detect(), x, n, y)
    }

    /// [`TmacMatrix::gemm`] at instruction-set level `isa` (or the best supported).
    pub fn gemm_isa(&self, isa: Isa, x: &[f32], n: usize, y: &mut [f32]) -> Result<(), TmacError> {
        if x.len() != n * self.cols || y.len() != n * self.rows {
            return Err(shape_err(format!(
                "gemm of a {}x{} matrix with {n} rows: x has {} values (want {}), y {} (want {})",
                self.rows,
                self.cols,
                x.len(),
                n * self.cols,
                y.len(),
                n * self.rows
            )));
        }
        if n == 0 {
            return Ok(());
        }
        let path = Path::choose(isa);
        let luts: Vec<ActivationLut> = x
            .par_chunks_exact(self.cols)
            .map(|xr| ActivationLut::new(xr, self.group))
            .collect();
        let tiles = self.rows.div_ceil(TILE);
        let tile_bytes = self.bits / 2 * (self.cols / 4) * 32;
        let groups = self.cols / self.group;
        // Tasks of a few tiles; each runs every activation row over its tiles so the
        // tiles' weights stay in cache.
        let per_task = if n == 1 { 4 } else { 1 };
        let chunks: Vec<(usize, Vec<f32>)> = (0..tiles.div_ceil(per_task))
            .into_par_iter()
            .map(|task| {
                let t0 = task * per_task;
                let t1 = (t0 + per_task).min(tiles);
                let row0 = t0 * TILE;
                let row1 = (t1 * TILE).min(self.rows);
                let mut out = vec![0f32; n * (row1 - row0)];
                let mut sums = vec![0i32; groups * TILE];
                for t in t0..t1 {
                    let planes = &self.planes[t * tile_bytes..(t + 1) * tile_bytes];
                    for (j, lut) in luts.iter().enumerate() {
                        path.tile_sums(
                            planes,
                            &lut.tables,
                            self.bits / 2,
                            self.group / 4,
                            &mut sums,
                        );
                        let first = t * TILE;
                        let count = TILE.min(self.rows - first);
                        let dst = &mut out[j * (row1 - row0) + first - row0..][..count];
                        self.epilogue(first, &sums, lut, dst);
                    }
                }
                (row0, out)
            })
            .collect();
        for (row0, out) in chunks {
            let width = out.len() / n;
            for j in 0..n {
                y[j * self.rows + row0..j * self.rows + row0 + width]
                    .copy_from_slice(&out[j * width..(j + 1) * width]);
            }
        }
        Ok(())
    }

    /// Rows `first ..` of the output from a tile's integer sums `[group][32]`.
    fn epilogue(&self, first: usize, sums: &[i32], lut: &ActivationLut, dst: &mut [f32]) {
        let groups = self.cols / self.group;
        for (i, out) in dst.iter_mut().enumerate() {
            let r = first + i;
            let mut acc = 0f32;
            for g in 0..groups {
                let s = self.scales[r * groups + g] * lut.scales[g];
                acc += sums[g * TILE + i] as f32 * s + self.offsets[r * groups + g] * lut.sums[g];
            }
            *out = acc;
        }
    }

    /// The matrix as three tensors named `{prefix}.tmac_planes` (u8
    /// `[tiles, bits/2, cols/4, 32]`), `{prefix}.tmac_scales` and
    /// `{prefix}.tmac_offsets` (f32 `[rows, cols/group]`): dtype, shape, bytes.
    pub fn to_tensors(&self, prefix: &str) -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
        let groups = self.cols / self.group;
        let le = |v: &[f32]| {
            v[..self.rows * groups]
                .iter()
                .flat_map(|f| f.to_le_bytes())
                .collect()
        };
        vec![
            (
                format!("{prefix}.tmac_planes"),
                Dtype::U8,
                vec![self.rows.div_ceil(TILE), self.bits / 2, self.cols / 4, 32],
                self.planes.clone(),
            ),
            (
                format!("{prefix}.tmac_scales"),
                Dtype::F32,
                vec![self.rows, groups],
                le(&self.scales),
            ),
            (
                format!("{prefix}.tmac_offsets"),
                Dtype::F32,
                vec![self.rows, groups],
                le(&self.offsets),
            ),
        ]
    }

    /// Reads a matrix written by [`TmacMatrix::to_tensors`] from a safetensors file.
    pub fn from_safetensors(st: &SafeTensors<'_>, prefix: &str) -> Result<Self, TmacError> {
        let err = |detail: String| TmacError::Tensors {
            name: prefix.to_owned(),
            detail,
        };
        let get = |suffix: &str, dtype: Dtype| {
            let name = format!("{prefix}.{suffix}");
            let t = st.tensor(&name).map_err(|e| err(format!("{name}: {e}")))?;
            if t.dtype() != dtype {
                return Err(err(format!(
                    "{name} is {:?}, expected {dtype:?}",
                    t.dtype()
                )));
            }
            Ok(t)
        };
        let planes = get("tmac_planes", Dtype::U8)?;
        let scales = get("tmac_scales", Dtype::F32)?;
        let offsets = get("tmac_offsets", Dtype::F32)?;
        let (&[tiles, pairs, quads, 32], &[rows, groups]) = (planes.shape(), scales.shape()) else {
            return Err(err(format!(
                "shapes {:?} and {:?} are not [tiles, bits/2, cols/4, 32] and [rows, groups]",
                planes.shape(),
                scales.shape()
            )));
        };
        if offsets.shape() != scales.shape() || groups == 0 || rows == 0 {
            return Err(err(format!(
                "offsets {:?}, scales {:?}",
                offsets.shape(),
                scales.shape()
            )));
        }
        let cols = quads * 4;
        let group = cols / groups;
        check_geometry(rows, cols, pairs * 2, group).map_err(|e| err(e.to_string()))?;
        if tiles != rows.div_ceil(TILE) || group * groups != cols {
            return Err(err(format!(
                "{tiles} tiles and {groups} groups for {rows}x{cols}"
            )));
        }
        let floats = |b: &[u8]| {
            let mut v: Vec<f32> = b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            v.resize(tiles * TILE * groups, 0.0);
            v
        };
        Ok(Self {
            rows,
            cols,
            bits: pairs * 2,
            group,
            planes: planes.data().to_vec(),
            scales: floats(scales.data()),
            offsets: floats(offsets.data()),
        })
    }
}

/// Round to nearest, ties to even, for |v| <= 2^22, by the add-and-subtract of
/// 1.5 * 2^23 (a call to `roundf` otherwise, and not vectorised, on baseline x86-64).
#[inline(always)]
fn round_even(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC) - MAGIC
}

fn check_geometry(rows: usize, cols: usize, bits: usize, group: usize) -> Result<(), TmacError> {
    if bits != 2 && bits != 4 {
        return Err(shape_err(format!("{bits} bits (2 or 4 supported)")));
    }
    if rows == 0 || cols == 0 || rows > MAX_SIDE || cols > MAX_SIDE {
        return Err(shape_err(format!(
            "a {rows}x{cols} matrix (1 to {MAX_SIDE} a side)"
        )));
    }
    if group == 0 || !group.is_multiple_of(8) || !cols.is_multiple_of(group) {
        return Err(shape_err(format!(
            "group {group}: it must be a multiple of 8 that divides the {cols} columns"
        )));
    }
    Ok(())
}

/// Codes `[padded rows, cols]` to the plane layout described in the module docs.
fn pack(codes: &[u8], padded: usize, cols: usize, bits: usize) -> Vec<u8> {
    let pairs = bits / 2;
    let quads = cols / 4;
    let mut planes = vec![0u8; padded / TILE * pairs * quads * 32];
    let nibble = |row: usize, plane: usize, a: usize| {
        (0..4).fold(0u8, |n, k| {
            n | (((codes[row * cols + 4 * a + k] >> plane) & 1) << k)
        })
    };
    for tile in 0..padded / TILE {
        for p in 0..pairs {
            for a in 0..quads {
                let chunk = &mut planes[((tile * pairs + p) * quads + a) * 32..][..32];
                for (b, byte) in chunk.iter_mut().enumerate() {
                    let row = tile * TILE + b / 2;
                    let plane = 2 * p + b % 2;
                    *byte = nibble(row, plane, a) | (nibble(row + 16, plane, a) << 4);
                }
            }
        }
    }
    planes
}

/// The kernel a call runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Avx512,
    Avx2,
    Portable,
}

impl Path {
    fn choose(isa: Isa) -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            let bw = std::arch::is_x86_feature_detected!("avx512bw");
            match isa.or_supported() {
                Isa::Avx512 if bw => return Path::Avx512,
                Isa::Avx512 | Isa::Avx2 if std::arch::is_x86_feature_detected!("avx2") => {
                    return Path::Avx2
                }
                _ => {}
            }
        }
        let _ = isa;
        Path::Portable
    }

    /// Integer sums `[group][32 rows]` of one tile against one activation's tables.
    fn tile_sums(
        self,
        planes: &[u8],
        tables: &[i8],
        pairs: usize,
        quads_per_group: usize,
        sums: &mut [i32],
    ) {
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: chosen only when the CPU has AVX-512F and BW; slice lengths are
            // the matrix's (checked by `tile_sums_checked`).
            Path::Avx512 => unsafe {
                x86::tile_sums_avx512(planes, tables, pairs, quads_per_group, sums)
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: chosen only when the CPU has AVX2.
            Path::Avx2 => unsafe {
                x86::tile_sums_avx2(planes, tables, pairs, quads_per_group, sums)
            },
            _ => tile_sums_portable(planes, tables, pairs, quads_per_group, sums),
        }
    }
}

/// The portable kernel (and the definition the SIMD ones match).
fn tile_sums_portable(planes: &[u8], tables: &[i8], pairs: usize, qpg: usize, sums: &mut [i32]) {
    let quads = tables.len() / 32;
    for (g, out) in sums.chunks_exact_mut(TILE).enumerate() {
        let mut acc = [0i32; TILE];
        for p in 0..pairs {
            for a in g * qpg..(g + 1) * qpg {
                let chunk = &planes[(p * quads + a) * 32..][..32];
                let table = &tables[a * 32..a * 32 + 16];
                for (b, &byte) in chunk.iter().enumerate() {
                    let weight = 1i32 << (2 * p + b % 2);
                    acc[b / 2] += weight * table[(byte & 15) as usize] as i32;
                    acc[16 + b / 2] += weight * table[(byte >> 4) as usize] as i32;
                }
            }
        }
        out.copy_from_slice(&acc);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{FLUSH, TILE};

    /// Byte weights of plane pair `p`'s two planes: 1, 2 (pair 0) or 4, 8 (pair 1).
    const fn pair_weights(p: usize) -> i16 {
        ((2i16 << (2 * p)) << 8) | (1i16 << (2 * p))
    }

    /// # Safety
    /// AVX2 must be available. `planes` holds `pairs * quads * 32` bytes and `tables`
    /// `quads * 32`, `sums` a multiple of 32 values, `quads = sums.len() / 32 * qpg`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn tile_sums_avx2(
        planes: &[u8],
        tables: &[i8],
        pairs: usize,
        qpg: usize,
        sums: &mut [i32],
    ) {
        let quads = tables.len() / 32;
        assert!(planes.len() >= pairs * quads * 32 && sums.len() * qpg <= quads * TILE);
        // SAFETY: the caller's contract; lengths asserted above.
        unsafe {
            if pairs == 1 {
                avx2_pairs::<1>(planes, tables, qpg, sums)
            } else {
                avx2_pairs::<2>(planes, tables, qpg, sums)
            }
        }
    }

    /// Both plane pairs of a group of 4 in one pass: one table load serves them.
    #[target_feature(enable = "avx2")]
    unsafe fn avx2_pairs<const P: usize>(
        planes: &[u8],
        tables: &[i8],
        qpg: usize,
        sums: &mut [i32],
    ) {
        let quads = tables.len() / 32;
        let mask = _mm256_set1_epi8(0x0f);
        let mult = [
            _mm256_set1_epi16(pair_weights(0)),
            _mm256_set1_epi16(pair_weights(1)),
        ];
        let pp = planes.as_ptr();
        let tp = tables.as_ptr();
        for (g, out) in sums.chunks_exact_mut(TILE).enumerate() {
            let mut wide = [_mm256_setzero_si256(); 4];
            let mut a = g * qpg;
            let end = (g + 1) * qpg;
            while a < end {
                let stop = (a + FLUSH).min(end);
                let mut lo = _mm256_setzero_si256();
                let mut hi = _mm256_setzero_si256();
                while a < stop {
                    // SAFETY: a < quads, p < P <= pairs: within the asserted lengths.
                    let t = unsafe { _mm256_loadu_si256(tp.add(a * 32) as *const __m256i) };
                    for (p, m) in mult.iter().enumerate().take(P) {
                        // SAFETY: as above.
                        let w = unsafe {
                            _mm256_loadu_si256(pp.add((p * quads + a) * 32) as *const __m256i)
                        };
                        let il = _mm256_and_si256(w, mask);
                        let ih = _mm256_and_si256(_mm256_srli_epi16(w, 4), mask);
                        let vl = _mm256_shuffle_epi8(t, il);
                        let vh = _mm256_shuffle_epi8(t, ih);
                        lo = _mm256_add_epi16(lo, _mm256_maddubs_epi16(*m, vl));
                        hi = _mm256_add_epi16(hi, _mm256_maddubs_epi16(*m, vh));
                    }
                    a += 1;
                }
                let halves = [
                    _mm256_castsi256_si128(lo),
                    _mm256_extracti128_si256(lo, 1),
                    _mm256_castsi256_si128(hi),
                    _mm256_extracti128_si256(hi, 1),
                ];
                for (w, h) in wide.iter_mut().zip(halves) {
                    *w = _mm256_add_epi32(*w, _mm256_cvtepi16_epi32(h));
                }
            }
            for (k, v) in wide.iter().enumerate() {
                // SAFETY: `out` has 32 values, k * 8 + 8 <= 32.
                unsafe { _mm256_storeu_si256(out.as_mut_ptr().add(k * 8) as *mut __m256i, *v) };
            }
        }
    }

    /// # Safety
    /// AVX-512F and AVX-512BW must be available; lengths as for
    /// [`tile_sums_avx2`], and `qpg` even.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn tile_sums_avx512(
        planes: &[u8],
        tables: &[i8],
        pairs: usize,
        qpg: usize,
        sums: &mut [i32],
    ) {
        let quads = tables.len() / 32;
        assert!(
            planes.len() >= pairs * quads * 32
                && sums.len() * qpg <= quads * TILE
                && qpg.is_multiple_of(2)
        );
        // SAFETY: the caller's contract; lengths asserted above.
        unsafe {
            if pairs == 1 {
                avx512_pairs::<1>(planes, tables, qpg, sums)
            } else {
                avx512_pairs::<2>(planes, tables, qpg, sums)
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn avx512_pairs<const P: usize>(
        planes: &[u8],
        tables: &[i8],
        qpg: usize,
        sums: &mut [i32],
    ) {
        let quads = tables.len() / 32;
        let mask = _mm512_set1_epi8(0x0f);
        let mult = [
            _mm512_set1_epi16(pair_weights(0)),
            _mm512_set1_epi16(pair_weights(1)),
        ];
        let pp = planes.as_ptr();
        let tp = tables.as_ptr();
        for (g, out) in sums.chunks_exact_mut(TILE).enumerate() {
            let mut wide_lo = _mm512_setzero_si512();
            let mut wide_hi = _mm512_setzero_si512();
            let mut a = g * qpg;
            let end = (g + 1) * qpg;
            while a < end {
                let stop = (a + FLUSH).min(end);
                let mut lo = _mm512_setzero_si512();
                let mut hi = _mm512_setzero_si512();
                while a < stop {
                    // Groups a and a + 1: 64 contiguous bytes of planes and of tables.
                    // SAFETY: a + 1 < quads (qpg even), within the asserted lengths.
                    let t = unsafe { _mm512_loadu_si512(tp.add(a * 32) as *const __m512i) };
                    for (p, m) in mult.iter().enumerate().take(P) {
                        // SAFETY: as above.
                        let w = unsafe {
                            _mm512_loadu_si512(pp.add((p * quads + a) * 32) as *const __m512i)
                        };
                        let il = _mm512_and_si512(w, mask);
                        let ih = _mm512_and_si512(_mm512_srli_epi16(w, 4), mask);
                        let vl = _mm512_shuffle_epi8(t, il);
                        let vh = _mm512_shuffle_epi8(t, ih);
                        lo = _mm512_add_epi16(lo, _mm512_maddubs_epi16(*m, vl));
                        hi = _mm512_add_epi16(hi, _mm512_maddubs_epi16(*m, vh));
                    }
                    a += 2;
                }
                // Each half holds rows 0..16 (or 16..32) of one of the two groups.
                let widen = |v: __m512i| {
                    _mm512_add_epi32(
                        _mm512_cvtepi16_epi32(_mm512_castsi512_si256(v)),
                        _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(v, 1)),
                    )
                };
                wide_lo = _mm512_add_epi32(wide_lo, widen(lo));
                wide_hi = _mm512_add_epi32(wide_hi, widen(hi));
            }
            // SAFETY: `out` has 32 values.
            unsafe {
                _mm512_storeu_si512(out.as_mut_ptr() as *mut __m512i, wide_lo);
                _mm512_storeu_si512(out.as_mut_ptr().add(16) as *mut __m512i, wide_hi);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(rows: usize, cols: usize, seed: u32) -> Vec<f32> {
        (0..rows * cols)
            .map(|i| {
                let h = (i as u32).wrapping_add(seed).wrapping_mul(2_654_435_761);
                ((h >> 8) as f32 / 16_777_216.0 - 0.5) * 0.2
            })
            .collect()
    }

    #[test]
    fn codes_read_back_from_the_planes_reconstruct_the_weights_within_half_a_step() {
        let (rows, cols) = (40, 64);
        let w = matrix(rows, cols, 1);
        for bits in [2, 4] {
            let m = TmacMatrix::quantize(&w, rows, cols, bits, 32).expect("quantizes");
            let d = m.dequantize();
            for r in 0..rows {
                for c in 0..cols {
                    let step = m.scale(r, c / 32);
                    assert!((d[r * cols + c] - w[r * cols + c]).abs() <= step * 0.5 + 1e-6);
                    assert!(m.code(r, c) < (1 << bits));
                }
            }
        }
    }

    #[test]
    fn bad_geometry_is_refused() {
        let w = vec![0.0; 64];
        assert!(TmacMatrix::quantize(&w, 1, 64, 3, 32).is_err());
        assert!(TmacMatrix::quantize(&w, 1, 64, 4, 12).is_err());
        assert!(TmacMatrix::quantize(&w, 2, 64, 4, 32).is_err());
        let mut nan = w.clone();
        nan[3] = f32::NAN;
        assert!(TmacMatrix::quantize(&nan, 1, 64, 4, 32).is_err());
    }
}
