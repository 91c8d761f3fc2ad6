//! Accuracy and CPU time per window of a SpikePoint checkpoint (SNN or its ANN twin) on
//! held-out point sets written by `python/train_spikepoint.py` (`test_points.safetensors`:
//! `points [S, N, 4]`, `labels [S]`).
//!
//! ```text
//! cargo run --release -p splitstream-models --example spikepoint_eval -- \
//!     snn.safetensors test_points.safetensors [--dense] [--threads N] [--logits out.txt]
//! ```

use std::time::Instant;

use splitstream_models::backend::cpu::CpuBackend;
use splitstream_models::spikepoint::{SpikePointNet, Trace};
use splitstream_models::weights::Weights;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(model), Some(data)) = (args.first(), args.get(1)) else {
        return Err("usage: spikepoint_eval MODEL.safetensors TEST_POINTS.safetensors [--dense] [--threads N] [--logits FILE]".into());
    };
    let dense = args.iter().any(|a| a == "--dense");
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
    };
    let threads: usize = flag("--threads").map_or(Ok(1), |s| s.parse())?;
    let weights = Weights::from_file(model)?;
    let mut net = SpikePointNet::load(CpuBackend::new(threads)?, &weights)?;
    net.set_gather(!dense);
    let test = Weights::from_file(data)?;
    let pshape = test.shape("points").ok_or("no points")?.to_vec();
    let points = test.get("points", &pshape)?;
    let labels = test.get("labels", &[pshape[0]])?;
    let per = pshape[1] * pshape[2];
    let (mut correct, mut logits_out) = (0usize, String::new());
    let mut spikes = vec![0f64; 6];
    let start = Instant::now();
    for (i, item) in points.data().chunks_exact(per).enumerate() {
        let mut trace = Trace::default();
        let logits = net.forward_traced(item, &mut trace)?;
        for (s, (_, layer)) in spikes.iter_mut().zip(&trace.layers) {
            *s += layer.iter().map(|&v| f64::from(v)).sum::<f64>();
        }
        let best = logits
            .iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |b, (j, &v)| if v > b.1 { (j, v) } else { b },
            );
        correct += usize::from(best.0 as f32 == labels.data()[i]);
        logits_out.push_str(
            &logits
                .iter()
                .map(|v| format!("{v:.7e}"))
                .collect::<Vec<_>>()
                .join(" "),
        );
        logits_out.push('\n');
    }
    let traced = start.elapsed().as_secs_f64();
    // Timing without the trace's copies: each window timed alone; the median resists
    // the descheduling of a loaded machine better than the mean.
    let n = pshape[0];
    let mut times = Vec::with_capacity(n);
    for item in points.data().chunks_exact(per) {
        let one =
            splitstream_models::HostTensor::new(vec![1, pshape[1], pshape[2]], item.to_vec())?;
        let start = Instant::now();
        splitstream_models::SplitNet::forward(&net, &one, None)?;
        times.push(start.elapsed().as_secs_f64());
    }
    let plain: f64 = times.iter().sum();
    times.sort_by(f64::total_cmp);
    let median = times.get(n / 2).copied().unwrap_or(0.0);
    if let Some(path) = flag("--logits") {
        std::fs::write(path, logits_out)?;
    }
    println!(
        "{}: {} windows, accuracy {:.4}, {:.3} ms/window ({:.0} windows/s, median {:.3} ms, {threads} thread(s), {}; traced run {:.3} ms/window)",
        if net.config().neuron.spiking() {
            "snn"
        } else {
            "ann"
        },
        n,
        correct as f64 / n as f64,
        plain / n as f64 * 1e3,
        n as f64 / plain,
        median * 1e3,
        if dense || !net.config().neuron.spiking() { "dense" } else { "gather-and-add where spikes" },
        traced / n as f64 * 1e3,
    );
    let names = ["input", "lif1", "lif2", "pool", "res_in", "res"];
    for (name, s) in names.iter().zip(&spikes) {
        if *name != "res" {
            println!("  {name}: {:.1} per window", s / n as f64);
        }
    }
    Ok(())
}
