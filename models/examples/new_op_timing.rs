//! Times the CPU kernels of the wider op set, each beside a peer op doing comparable
//! work, and prints the ratio: `new_op_timing [threads]`.
//!
//! A peer is an op whose speed is already known to be right (a GEMM through `linear`,
//! the fused ViT attention, a pooling over the same windows), so a ratio far above
//! what the work implies points at a slow kernel. Build with optimisations, e.g.
//! `CARGO_PROFILE_DEV_OPT_LEVEL=3 cargo run -p splitstream-models --example
//! new_op_timing`.
use std::time::Instant;

use splitstream_models::backend::cpu::CpuBackend;
use splitstream_models::backend::{
    AttentionSpec, BinaryOp, Conv2dSpec, Pool2dSpec, PoolKind, ReduceOp, ResizeMode,
};
use splitstream_models::{Activation, Backend, HostTensor};

fn t(shape: &[usize]) -> HostTensor {
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5)
        .collect();
    HostTensor::new(shape.to_vec(), data).expect("shape and data agree")
}

/// Best-of-rounds microseconds per call (the minimum reflects the kernel rather than
/// the neighbours on a shared machine).
fn time<R: Send>(be: &CpuBackend, f: impl Fn() -> R + Send + Sync) -> f64 {
    be.scope(|| {
        for _ in 0..3 {
            std::hint::black_box(f());
        }
        let iters = 10;
        let mut best = f64::INFINITY;
        for _ in 0..7 {
            let t0 = Instant::now();
            for _ in 0..iters {
                std::hint::black_box(f());
            }
            best = best.min(t0.elapsed().as_secs_f64() * 1e6 / iters as f64);
        }
        best
    })
}

fn main() {
    let threads = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let be = CpuBackend::new(threads).expect("thread pool");
    let up = |shape: &[usize]| be.upload(&t(shape)).expect("upload");
    println!(
        "{} threads, {:?}\n{:<44} {:>10} {:<36} {:>10} {:>6}",
        be.threads(),
        be.isa(),
        "op",
        "us",
        "peer",
        "us",
        "ratio"
    );
    let row = |name: &str, us: f64, peer: &str, peer_us: f64| {
        println!(
            "{name:<44} {us:>10.1} {peer:<36} {peer_us:>10.1} {:>6.2}",
            us / peer_us
        );
    };

    // FemtoDet-sized convolutions.
    let x = up(&[1, 48, 40, 40]);
    let dw = be
        .prepare_conv2d(
            &t(&[48, 1, 3, 3]),
            Some(&t(&[48])),
            Conv2dSpec::new([1, 1], [1, 1])
                .groups(48)
                .activation(Activation::Relu),
        )
        .expect("depthwise");
    let avg = Pool2dSpec {
        kind: PoolKind::Avg,
        kernel: [3, 3],
        stride: [1, 1],
        padding: [1, 1],
    };
    row(
        "conv2d depthwise 3x3 48ch 40x40 +relu",
        time(&be, || be.conv2d(&x, &dw).expect("conv")),
        "pool2d avg 3x3 same windows",
        time(&be, || be.pool2d(&x, avg).expect("pool")),
    );
    let pw = be
        .prepare_conv2d(
            &t(&[96, 48, 1, 1]),
            Some(&t(&[96])),
            Conv2dSpec::new([1, 1], [0, 0]),
        )
        .expect("pointwise");
    let rows = up(&[1600, 48]);
    let lin = be
        .prepare_linear(&t(&[96, 48]), Some(&t(&[96])))
        .expect("linear");
    row(
        "conv2d pointwise 48->96 40x40",
        time(&be, || be.conv2d(&x, &pw).expect("conv")),
        "linear [1600,48]->96 (same GEMM)",
        time(&be, || {
            be.linear(&rows, &lin, Activation::Identity)
                .expect("linear")
        }),
    );
    let grouped = be
        .prepare_conv2d(
            &t(&[48, 12, 3, 3]),
            Some(&t(&[48])),
            Conv2dSpec::new([1, 1], [1, 1]).groups(4),
        )
        .expect("grouped");
    let dense = be
        .prepare_conv2d(
            &t(&[48, 48, 3, 3]),
            Some(&t(&[48])),
            Conv2dSpec::new([1, 1], [1, 1]),
        )
        .expect("dense");
    row(
        "conv2d 3x3 48->48 groups 4 (1/4 the FLOPs)",
        time(&be, || be.conv2d(&x, &grouped).expect("conv")),
        "conv2d 3x3 48->48 dense",
        time(&be, || be.conv2d(&x, &dense).expect("conv")),
    );

    let cols = up(&[1600, 432]);
    let gemm_only = be
        .prepare_linear(&t(&[48, 432]), Some(&t(&[48])))
        .expect("linear");
    row(
        "conv2d 3x3 48->48 dense (im2col + GEMM)",
        time(&be, || be.conv2d(&x, &dense).expect("conv")),
        "linear [1600,432]->48 (its GEMM alone)",
        time(&be, || {
            be.linear(&cols, &gemm_only, Activation::Identity)
                .expect("linear")
        }),
    );

    // Attention: GQA with as many kv heads as query heads is the ViT's MHA.
    let qkv = up(&[1, 197, 576]);
    let q = up(&[1, 197, 3, 64]);
    let spec = AttentionSpec {
        scale: 0.125,
        kv_len: 197,
        causal: None,
    };
    row(
        "attention_gqa 197 tokens 3 heads x 64",
        time(&be, || be.attention_gqa(&q, &q, &q, spec).expect("gqa")),
        "attention (fused MHA) same shape",
        time(&be, || be.attention(&qkv, 3, 0.125).expect("attention")),
    );
    let kv = up(&[1, 512, 2, 64]);
    let q1 = up(&[1, 1, 14, 64]);
    let decode = AttentionSpec {
        scale: 0.125,
        kv_len: 400,
        causal: Some(399),
    };
    let q14 = up(&[1, 14, 64]);
    let k400 = up(&[1, 400, 64]);
    row(
        "attention_gqa decode 14 over 2 heads, 400 keys",
        time(&be, || {
            be.attention_gqa(&q1, &kv, &kv, decode).expect("gqa")
        }),
        "matmul [14,64]x[400,64]^T (scores only)",
        time(&be, || be.matmul(&q14, &k400, true).expect("matmul")),
    );

    // Elementwise and rows.
    let a = up(&[1, 96, 40, 40]);
    let per_channel = up(&[1, 96, 1, 1]);
    row(
        "binary mul [1,96,40,40] x [1,96,1,1]",
        time(&be, || {
            be.binary(&a, &per_channel, BinaryOp::Mul).expect("mul")
        }),
        "add same shape",
        time(&be, || be.add(&a, &a).expect("add")),
    );
    let h = up(&[197, 4864]);
    row(
        "activate silu [197,4864]",
        time(&be, || be.activate(&h, Activation::Silu).expect("silu")),
        "activate gelu",
        time(&be, || be.activate(&h, Activation::Gelu).expect("gelu")),
    );
    let x896 = up(&[197, 896]);
    let g896 = up(&[896]);
    row(
        "rms_norm [197,896]",
        time(&be, || be.rms_norm(&x896, &g896, 1e-6).expect("rms")),
        "layer_norm [197,896]",
        time(&be, || {
            be.layer_norm(&x896, &g896, &g896, 1e-6).expect("ln")
        }),
    );
    let planes = up(&[96, 1600]);
    let g1600 = up(&[1600]);
    row(
        "reduce mean [96,1600] axis 1",
        time(&be, || be.reduce(&planes, 1, ReduceOp::Mean).expect("mean")),
        "layer_norm [96,1600]",
        time(&be, || {
            be.layer_norm(&planes, &g1600, &g1600, 1e-6).expect("ln")
        }),
    );
    let small = up(&[1, 96, 20, 20]);
    row(
        "resize bilinear [1,96,20,20] -> 40x40",
        time(&be, || {
            be.resize(
                &small,
                [40, 40],
                ResizeMode::Bilinear {
                    align_corners: false,
                },
            )
            .expect("resize")
        }),
        "add [1,96,40,40] (the output's size)",
        time(&be, || be.add(&a, &a).expect("add")),
    );
}
