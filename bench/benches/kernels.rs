//! Criterion: the CPU backend's hot kernels at ViT shapes: the dense layers of a
//! DeiT-Tiny block (GEMM with fused bias and GELU) and the patch-embedding
//! convolution, plus a depthwise 3x3 and a pointwise 1x1 convolution (the shapes a CNN
//! detector spends its time in; FemtoDet's own at 416). Throughput is in FLOPs (2 per
//! multiply-add), so criterion's `elem/s` reads as FLOP/s per op kind.
//!
//! `cargo bench -p splitstream-bench --bench kernels` (add `-- --quick` for a short
//! run). GFLOP/s against the wgpu backend and a machine's peak is
//! `splitstream-bench matmul`'s; this tracks the kernels' time with criterion's
//! statistics. Threads: `SPLITSTREAM_BENCH_THREADS` (default 1, so a busy machine
//! disturbs the figures least).
#![forbid(unsafe_code)]

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use splitstream_models::backend::cpu::CpuBackend;
use splitstream_models::backend::Conv2dSpec;
use splitstream_models::{Activation, Backend, HostTensor};

fn tensor(shape: &[usize], seed: u32) -> HostTensor {
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|i| {
            ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32 / 16_777_216.0
                - 0.5
        })
        .collect();
    HostTensor::new(shape.to_vec(), data).expect("shape matches data")
}

fn backend() -> CpuBackend {
    let threads = std::env::var("SPLITSTREAM_BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(1);
    CpuBackend::new(threads).expect("the CPU backend starts")
}

/// The four dense layers of a DeiT-Tiny block (197 tokens, D = 192).
fn gemm(c: &mut Criterion) {
    let be = backend();
    let (tokens, d) = (197, 192);
    let x = be.upload(&tensor(&[1, tokens, d], 1)).expect("uploads");
    let hidden = be.upload(&tensor(&[1, tokens, 4 * d], 2)).expect("uploads");
    let mut group = c.benchmark_group("cpu_gemm/deit_tiny");
    for (name, input, k, n, act) in [
        ("qkv", &x, d, 3 * d, Activation::Identity),
        ("proj", &x, d, d, Activation::Identity),
        ("fc1_gelu", &x, d, 4 * d, Activation::Gelu),
        ("fc2", &hidden, 4 * d, d, Activation::Identity),
    ] {
        let layer = be
            .prepare_linear(&tensor(&[n, k], 3), Some(&tensor(&[n], 4)))
            .expect("prepares");
        group.throughput(Throughput::Elements((2 * tokens * k * n) as u64));
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| be.linear(input, &layer, act).expect("runs"))
        });
    }
    group.finish();
}

/// Convolutions: ViT patch embedding, depthwise 3x3 and pointwise 1x1.
fn conv(c: &mut Criterion) {
    let be = backend();
    let mut group = c.benchmark_group("cpu_conv2d");
    let cases = [
        // name, input [B, C, H, W], weight [O, C/groups, kh, kw], spec
        (
            "patch16_224",
            [1, 3, 224, 224],
            [192, 3, 16, 16],
            Conv2dSpec::new([16, 16], [0, 0]),
        ),
        (
            "depthwise3x3_64x56",
            [1, 64, 56, 56],
            [64, 1, 3, 3],
            Conv2dSpec::new([1, 1], [1, 1]).groups(64),
        ),
        (
            "pointwise1x1_64x56",
            [1, 64, 56, 56],
            [64, 64, 1, 1],
            Conv2dSpec::new([1, 1], [0, 0]),
        ),
        // FemtoDet at 416: its depthwise (IBE folded) and pointwise convolutions.
        (
            "femtodet_dw3x3_s2_32x208",
            [1, 32, 208, 208],
            [32, 1, 3, 3],
            Conv2dSpec::new([2, 2], [1, 1]).groups(32),
        ),
        (
            "femtodet_dw3x3_32x104",
            [1, 32, 104, 104],
            [32, 1, 3, 3],
            Conv2dSpec::new([1, 1], [1, 1]).groups(32),
        ),
        (
            "femtodet_dw3x3_64x26",
            [1, 64, 26, 26],
            [64, 1, 3, 3],
            Conv2dSpec::new([1, 1], [1, 1]).groups(64),
        ),
        (
            "femtodet_pw1x1_8to32_104",
            [1, 8, 104, 104],
            [32, 8, 1, 1],
            Conv2dSpec::new([1, 1], [0, 0]),
        ),
        (
            "femtodet_pw1x1_g2_160to40_13",
            [1, 160, 13, 13],
            [40, 80, 1, 1],
            Conv2dSpec::new([1, 1], [0, 0]).groups(2),
        ),
        (
            "femtodet_pw1x1_64x26",
            [1, 64, 26, 26],
            [64, 64, 1, 1],
            Conv2dSpec::new([1, 1], [0, 0]),
        ),
    ];
    for (name, input, weight, spec) in cases {
        let x = be.upload(&tensor(&input, 5)).expect("uploads");
        let layer = be
            .prepare_conv2d(&tensor(&weight, 6), Some(&tensor(&weight[..1], 7)), spec)
            .expect("prepares");
        // FLOPs (2 per multiply-add), so criterion's elements/s read as GFLOP/s.
        let out_side =
            |side: usize, k: usize, i: usize| (side + 2 * spec.padding[i] - k) / spec.stride[i] + 1;
        let (ho, wo) = (
            out_side(input[2], weight[2], 0),
            out_side(input[3], weight[3], 1),
        );
        let flops = 2 * input[0] * weight.iter().product::<usize>() * ho * wo;
        group.throughput(Throughput::Elements(flops as u64));
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| be.conv2d(&x, &layer).expect("runs"))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = gemm, conv
}
criterion_main!(benches);
