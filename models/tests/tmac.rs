//! T-MAC kernels: the lookup-table GEMV/GEMM against a plain scalar reference on the
//! same codes and the same int8 tables (bit-exact), every instruction-set path against
//! the portable one (bit-exact), and the 2/4-bit error against f32.

use safetensors::tensor::TensorView;
use safetensors::SafeTensors;
use splitstream_models::backend::cpu::tmac::{ActivationLut, TmacMatrix};
use splitstream_models::backend::cpu::Isa;

/// Roughly normal values (sum of four uniforms), seeded.
fn normal(n: usize, seed: u64, std: f32) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    let mut uniform = move || {
        s = s
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    (0..n)
        .map(|_| (uniform() + uniform() + uniform() + uniform()) * std * 1.732)
        .collect()
}

/// `y = W x` from the matrix's codes, scales and offsets and the activation's int8
/// tables, one weight at a time: the definition the kernels implement.
fn reference_gemv(m: &TmacMatrix, x: &[f32]) -> Vec<f32> {
    let lut = ActivationLut::new(x, m.group());
    let groups = m.cols() / m.group();
    (0..m.rows())
        .map(|r| {
            let mut acc = 0f32;
            for g in 0..groups {
                let mut int = 0i32;
                for a in g * m.group() / 4..(g + 1) * m.group() / 4 {
                    for plane in 0..m.bits() {
                        let index = (0..4).fold(0usize, |n, k| {
                            n | ((((m.code(r, 4 * a + k) >> plane) & 1) as usize) << k)
                        });
                        int += (1 << plane) * lut.entry(a, index) as i32;
                    }
                }
                let s = m.scale(r, g) * lut.scale(g);
                acc += int as f32 * s + m.offset(r, g) * lut.sum(g);
            }
            acc
        })
        .collect()
}

fn f32_gemv(w: &[f32], x: &[f32], rows: usize) -> Vec<f32> {
    let cols = x.len();
    (0..rows)
        .map(|r| {
            w[r * cols..(r + 1) * cols]
                .iter()
                .zip(x)
                .map(|(a, b)| a * b)
                .sum()
        })
        .collect()
}

fn rel_l2(a: &[f32], b: &[f32]) -> f32 {
    let num: f32 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f32 = b.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}

fn isas() -> Vec<Isa> {
    // `gemv_isa` falls back to what the CPU has; the paths the CPU lacks then repeat
    // the portable comparison, which still passes.
    vec![Isa::Avx512, Isa::Avx2, Isa::Portable]
}

#[test]
fn every_path_equals_the_scalar_reference_bit_for_bit() {
    // 70 rows: two full tiles and a partial one; group 128 at 4 bits makes the int16
    // accumulators widen mid-group.
    for (bits, group) in [(4, 32), (4, 128), (2, 64), (2, 256)] {
        let (rows, cols) = (70, 512);
        let w = normal(rows * cols, 7, 0.05);
        let x = normal(cols, 8, 1.0);
        let m = TmacMatrix::quantize(&w, rows, cols, bits, group).expect("quantizes");
        let want = reference_gemv(&m, &x);
        for isa in isas() {
            let mut y = vec![0f32; rows];
            m.gemv_isa(isa, &x, &mut y).expect("runs");
            assert_eq!(y, want, "{isa:?}, {bits} bits, group {group}");
        }
    }
}

#[test]
fn int16_accumulation_does_not_overflow_at_the_extremes() {
    // Codes all 15 (one zero per group keeps the scale positive), activations of one
    // sign: every table entry is +-127, the sums as large as they get.
    let (rows, cols, group) = (32, 256, 128);
    let w: Vec<f32> = (0..rows * cols)
        .map(|i| if i % group == 0 { 0.0 } else { 1.0 })
        .collect();
    for sign in [1.0f32, -1.0] {
        let x = vec![sign; cols];
        let m = TmacMatrix::quantize(&w, rows, cols, 4, group).expect("quantizes");
        let want = reference_gemv(&m, &x);
        let exact = f32_gemv(&w, &x, rows);
        assert!(
            rel_l2(&want, &exact) < 1e-3,
            "the reference is near exact here"
        );
        for isa in isas() {
            let mut y = vec![0f32; rows];
            m.gemv_isa(isa, &x, &mut y).expect("runs");
            assert_eq!(y, want, "{isa:?}, sign {sign}");
        }
    }
}

#[test]
fn gemm_rows_equal_gemv_on_each_activation_row() {
    let (rows, cols, n) = (96, 256, 5);
    let w = normal(rows * cols, 3, 0.05);
    let x = normal(n * cols, 4, 1.0);
    for bits in [2, 4] {
        let m = TmacMatrix::quantize(&w, rows, cols, bits, 64).expect("quantizes");
        for isa in isas() {
            let mut y = vec![0f32; n * rows];
            m.gemm_isa(isa, &x, n, &mut y).expect("runs");
            for j in 0..n {
                let mut one = vec![0f32; rows];
                m.gemv_isa(Isa::Portable, &x[j * cols..(j + 1) * cols], &mut one)
                    .expect("runs");
                assert_eq!(&y[j * rows..(j + 1) * rows], &one[..], "{isa:?} row {j}");
            }
        }
    }
}

#[test]
fn low_bit_gemv_is_within_the_expected_error_of_f32() {
    let (rows, cols) = (256, 1024);
    let w = normal(rows * cols, 11, 0.05);
    let x = normal(cols, 12, 1.0);
    let exact = f32_gemv(&w, &x, rows);
    // Uniform min/max quantization of roughly normal weights per 64: a step of about
    // 5 sigma / (2^b - 1), so a relative error near 0.29 * step / sigma; the int8
    // tables add about 1%.
    for (bits, bound) in [(4, 0.15), (2, 0.75)] {
        let m = TmacMatrix::quantize(&w, rows, cols, bits, 64).expect("quantizes");
        let mut y = vec![0f32; rows];
        m.gemv(&x, &mut y).expect("runs");
        let dequant = f32_gemv(&m.dequantize(), &x, rows);
        let table_error = rel_l2(&y, &dequant);
        let total = rel_l2(&y, &exact);
        println!("{bits} bits: {total:.4} from f32, {table_error:.4} from the dequantized GEMV");
        assert!(table_error < 0.02, "{bits} bits: table error {table_error}");
        assert!(total < bound, "{bits} bits: error {total} from f32");
    }
}

#[test]
fn tensors_round_trip_through_safetensors() {
    let (rows, cols) = (45, 128);
    let w = normal(rows * cols, 5, 0.1);
    let m = TmacMatrix::quantize(&w, rows, cols, 4, 64).expect("quantizes");
    let tensors = m.to_tensors("blk.0.attn_q");
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, dtype, shape, data)| {
            (
                name.clone(),
                TensorView::new(*dtype, shape.clone(), data).expect("view"),
            )
        })
        .collect();
    let bytes = safetensors::serialize(views, None).expect("serializes");
    let st = SafeTensors::deserialize(&bytes).expect("reads");
    let back = TmacMatrix::from_safetensors(&st, "blk.0.attn_q").expect("loads");
    assert_eq!(back, m);
    assert!(TmacMatrix::from_safetensors(&st, "blk.1.attn_q").is_err());
}
