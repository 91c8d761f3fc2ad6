//! Times whole forward passes on the CPU backend:
//! `forward_timing WEIGHTS.safetensors [batch] [threads] [iters]`.
//!
//! A profiling aid for kernel work (ours only; `splitstream-bench model` is the
//! benchmark that counts, beside onnxruntime). Prints median and best in ms.
use std::time::Instant;

use splitstream_models::backend::cpu::CpuBackend;
use splitstream_models::vit::{Vit, VitOptions};
use splitstream_models::weights::Weights;
use splitstream_models::HostTensor;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: forward_timing WEIGHTS [batch] [threads] [iters]")?;
    let mut num = || args.next().and_then(|a| a.parse::<usize>().ok());
    let batch = num().unwrap_or(1);
    let threads = num().unwrap_or(2);
    let iters = num().unwrap_or(30);
    let weights = Weights::from_file(&path)?;
    let model = Vit::load(CpuBackend::new(threads)?, &weights, &VitOptions::default())?;
    drop(weights);
    let side = model.config().image_size;
    let n = batch * 3 * side * side;
    let data = (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 * 4e-3 - 2.0)
        .collect();
    let input = HostTensor::new(vec![batch, 3, side, side], data)?;
    for _ in 0..3 {
        model.run(&input)?;
    }
    let mut ms: Vec<f64> = (0..iters)
        .map(|_| {
            let t0 = Instant::now();
            model.run(&input).map(|_| t0.elapsed().as_secs_f64() * 1e3)
        })
        .collect::<Result<_, _>>()?;
    ms.sort_by(f64::total_cmp);
    println!(
        "batch {batch} threads {threads}: median {:.2} ms, best {:.2} ms",
        ms[ms.len() / 2],
        ms[0]
    );
    Ok(())
}
