//! Criterion: T-MAC lookup-table GEMV (decode) and GEMM (prefill, 64 tokens) at 2 and
//! 4 bits beside our f32 linear layer, at LLM shapes: SmolLM2-135M's projections
//! (576x576 attention, 1536x576 gate/up, 576x1536 down; rows x cols) and a 4096x4096
//! Llama-7B-class one.
//!
//! `cargo bench -p splitstream-bench --bench tmac` (add `-- --quick` for a short run).
//! Threads: `SPLITSTREAM_BENCH_THREADS` (default 1), the same for both sides (the f32
//! side through the backend's pool, T-MAC through a rayon pool of that size).
#![forbid(unsafe_code)]

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use splitstream_models::backend::cpu::tmac::TmacMatrix;
use splitstream_models::backend::cpu::CpuBackend;
use splitstream_models::{Activation, Backend, HostTensor};

const SHAPES: [(&str, usize, usize); 4] = [
    ("576x576", 576, 576),
    ("1536x576", 1536, 576),
    ("576x1536", 576, 1536),
    ("4096x4096", 4096, 4096),
];
/// Prefill tokens for the GEMM comparison.
const PREFILL: usize = 64;

fn values(n: usize, seed: u32, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let h = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed);
            ((h >> 8) as f32 / 16_777_216.0 - 0.5) * scale
        })
        .collect()
}

fn threads() -> usize {
    std::env::var("SPLITSTREAM_BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(1)
}

fn run(c: &mut Criterion, tokens: usize, name: &str) {
    let be = CpuBackend::new(threads()).expect("the CPU backend starts");
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads())
        .build()
        .expect("a rayon pool");
    let mut group = c.benchmark_group(name);
    for (shape, rows, cols) in SHAPES {
        let w = values(rows * cols, 3, 0.1);
        let x = values(tokens * cols, 5, 2.0);
        group.throughput(Throughput::Elements((2 * tokens * rows * cols) as u64));
        let layer = be
            .prepare_linear(
                &HostTensor::new(vec![rows, cols], w.clone()).expect("shape"),
                None,
            )
            .expect("prepares");
        let input = be
            .upload(&HostTensor::new(vec![1, tokens, cols], x.clone()).expect("shape"))
            .expect("uploads");
        group.bench_function(BenchmarkId::new("f32", shape), |b| {
            b.iter(|| {
                be.linear(&input, &layer, Activation::Identity)
                    .expect("runs")
            })
        });
        for bits in [4, 2] {
            let m = TmacMatrix::quantize(&w, rows, cols, bits, 64).expect("quantizes");
            let mut y = vec![0f32; tokens * rows];
            group.bench_function(BenchmarkId::new(format!("tmac{bits}"), shape), |b| {
                b.iter(|| pool.install(|| m.gemm(&x, tokens, &mut y).expect("runs")))
            });
        }
    }
    group.finish();
}

fn gemv(c: &mut Criterion) {
    run(c, 1, "tmac_gemv");
}

fn gemm(c: &mut Criterion) {
    run(c, PREFILL, "tmac_gemm_64");
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = gemv, gemm
}
criterion_main!(benches);
