//! Times each CPU op at DeiT-Tiny shapes: `op_timing [batch] [threads] [op]`.
//!
//! A profiling aid for kernel work; the benchmark that counts is
//! `splitstream-bench model`, which runs the whole model beside onnxruntime.
use std::time::Instant;

use splitstream_models::backend::cpu::CpuBackend;
use splitstream_models::{Activation, Backend, HostTensor};

fn t(shape: &[usize]) -> HostTensor {
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5)
        .collect();
    HostTensor::new(shape.to_vec(), data).expect("shape and data agree")
}

fn time<R: Send>(
    only: Option<&str>,
    name: &str,
    flops: f64,
    be: &CpuBackend,
    f: impl Fn() -> R + Send + Sync,
) {
    if only.is_some_and(|o| o != name) {
        return;
    }
    be.scope(|| {
        for _ in 0..5 {
            std::hint::black_box(f());
        }
        // Best of several rounds: on a shared machine the minimum is the figure that
        // reflects the kernel rather than the neighbours.
        let iters = 20;
        let mut us = f64::INFINITY;
        for _ in 0..10 {
            let t0 = Instant::now();
            for _ in 0..iters {
                std::hint::black_box(f());
            }
            us = us.min(t0.elapsed().as_secs_f64() * 1e6 / iters as f64);
        }
        println!(
            "{name:>12}: {us:9.1} us  {:6.1} GFLOP/s (best round)",
            flops / us / 1e3
        );
    });
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    // A non-numeric argument names the one op to time (for `perf stat` per op).
    let only_arg = std::env::args()
        .skip(1)
        .find(|a| a.parse::<usize>().is_err());
    let only = only_arg.as_deref();
    let b = args.first().copied().unwrap_or(1);
    let threads = args.get(1).copied().unwrap_or(2);
    let be = CpuBackend::new(threads)?;
    let (n, d, h) = (197, 192, 768);
    let m = (b * n) as f64;
    let x = be.upload(&t(&[b, n, d]))?;
    let xh = be.upload(&t(&[b, n, h]))?;
    let qkv_w = be.prepare_linear(&t(&[3 * d, d]), Some(&t(&[3 * d])))?;
    let proj_w = be.prepare_linear(&t(&[d, d]), Some(&t(&[d])))?;
    let fc1 = be.prepare_linear(&t(&[h, d]), Some(&t(&[h])))?;
    let fc2 = be.prepare_linear(&t(&[d, h]), Some(&t(&[d])))?;
    let qkv = be.upload(&t(&[b, n, 3 * d]))?;
    let g = be.upload(&t(&[d]))?;
    let lin = |x, w, a| be.linear(x, w, a).map(drop);
    time(only, "qkv", 2.0 * m * 576.0 * 192.0, &be, || {
        lin(&x, &qkv_w, Activation::Identity)
    });
    time(only, "proj", 2.0 * m * 192.0 * 192.0, &be, || {
        lin(&x, &proj_w, Activation::Identity)
    });
    time(only, "fc1", 2.0 * m * 768.0 * 192.0, &be, || {
        lin(&x, &fc1, Activation::Identity)
    });
    time(only, "fc1+gelu", 2.0 * m * 768.0 * 192.0, &be, || {
        lin(&x, &fc1, Activation::Gelu)
    });
    time(only, "fc2", 2.0 * m * 768.0 * 192.0, &be, || {
        lin(&xh, &fc2, Activation::Identity)
    });
    let attn_flops = 4.0 * b as f64 * 197.0 * 197.0 * 192.0;
    time(only, "attention", attn_flops, &be, || {
        be.attention(&qkv, 3, 0.125).map(drop)
    });
    time(only, "layer_norm", 0.0, &be, || {
        be.layer_norm(&x, &g, &g, 1e-6).map(drop)
    });
    time(only, "add", 0.0, &be, || be.add(&x, &x).map(drop));
    time(only, "gelu", 0.0, &be, || {
        be.activate(&xh, Activation::Gelu).map(drop)
    });
    Ok(())
}
