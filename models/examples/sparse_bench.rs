//! Block-sparse against dense on the CPU backend, in the same run, as JSON lines:
//! `sparse_bench [threads] [runs] [dims] [--e2e]`, e.g.
//! `cargo run --release -p splitstream-models --example sparse_bench -- 2 5 192,384,768 --e2e`.
//!
//! Kernels: the ViT block's four layers (`qkv`, `proj`, `fc1`, `fc2`) at widths
//! `dims`, 197 tokens x batch 1 and 8, block sparsity 30/50/70% (blocks dropped at
//! random, the same count per layer), blocks 16 and 32: the dense layer (our packed
//! GEMM) and the sparse one on the same input, median of `runs` calls each, plus the
//! block's sum. End to end (`--e2e`): seeded DeiT-Tiny and DeiT-Small, every block
//! layer pruned uniformly so that the model's FLOPs are 50% of dense, forward at batch
//! 1 and 8. The machine these ran on may be loaded: record `uptime` beside the figures.
use std::collections::BTreeMap;
use std::time::Instant;

use splitstream_models::backend::block_sparse::BlockSparse;
use splitstream_models::backend::cpu::CpuBackend;
use splitstream_models::prune::{prunable_layers, write_block_sparse};
use splitstream_models::synthetic::{seeded_vit_safetensors, VitSpec};
use splitstream_models::vit::{Vit, VitOptions};
use splitstream_models::weights::Weights;
use splitstream_models::{Activation, Backend, HostTensor};

/// A seeded linear congruential stream in [0, 1).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A mask dropping exactly `round(sparsity * n)` of `n` blocks, chosen at random.
fn mask(n: usize, sparsity: f64, rng: &mut Lcg) -> Vec<bool> {
    let drop = (sparsity * n as f64).round() as usize;
    let mut order: Vec<(f64, usize)> = (0..n).map(|i| (rng.next(), i)).collect();
    order.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut keep = vec![true; n];
    for &(_, i) in &order[..drop] {
        keep[i] = false;
    }
    keep
}

fn median_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn tensor(shape: Vec<usize>, rng: &mut Lcg) -> HostTensor {
    let n = shape.iter().product();
    HostTensor::new(shape, (0..n).map(|_| rng.next() as f32 - 0.5).collect()).unwrap()
}

fn kernels(be: &CpuBackend, runs: usize, dims: &[usize]) {
    let mut rng = Lcg(7);
    for &d in dims {
        for batch in [1, 8] {
            let rows = 197 * batch;
            // [block][sparsity] -> (dense, sparse) summed over the block's layers.
            let mut sums: BTreeMap<(usize, u32), (f64, f64)> = BTreeMap::new();
            for (name, k, n, act) in [
                ("qkv", d, 3 * d, Activation::Identity),
                ("proj", d, d, Activation::Identity),
                ("fc1", d, 4 * d, Activation::Gelu),
                ("fc2", 4 * d, d, Activation::Identity),
            ] {
                let w = tensor(vec![n, k], &mut rng);
                let b = tensor(vec![n], &mut rng);
                let x = be.upload(&tensor(vec![1, rows, k], &mut rng)).unwrap();
                let dense = be.prepare_linear(&w, Some(&b)).unwrap();
                let dense_ms = median_ms(runs, || {
                    be.linear(&x, &dense, act).unwrap();
                });
                for block in [16, 32] {
                    for sparsity in [0.3, 0.5, 0.7] {
                        let keep = mask((n / block) * (k / block), sparsity, &mut rng);
                        let sw = BlockSparse::from_dense(&w, [block, block], &keep).unwrap();
                        let layer = be.prepare_block_sparse_linear(&sw, Some(&b)).unwrap();
                        let sparse_ms = median_ms(runs, || {
                            be.linear(&x, &layer, act).unwrap();
                        });
                        let flops = 2.0 * rows as f64 * k as f64 * n as f64;
                        println!(
                            "{{\"bench\":\"sparse_linear\",\"dim\":{d},\"layer\":\"{name}\",\
                             \"batch\":{batch},\"m\":{rows},\"k\":{k},\"n\":{n},\"block\":{block},\
                             \"sparsity\":{sparsity},\"dense_ms\":{dense_ms:.4},\
                             \"sparse_ms\":{sparse_ms:.4},\"speedup\":{:.3},\
                             \"dense_gflops\":{:.1},\"sparse_effective_gflops\":{:.1}}}",
                            dense_ms / sparse_ms,
                            flops / dense_ms / 1e6,
                            flops * sw.density() / sparse_ms / 1e6,
                        );
                        let e = sums.entry((block, (sparsity * 100.0) as u32)).or_default();
                        e.0 += dense_ms;
                        e.1 += sparse_ms;
                    }
                }
            }
            for ((block, pct), (dm, sm)) in sums {
                println!(
                    "{{\"bench\":\"sparse_block_layers\",\"dim\":{d},\"batch\":{batch},\
                     \"block\":{block},\"sparsity\":{},\"dense_ms\":{dm:.3},\"sparse_ms\":{sm:.3},\
                     \"speedup\":{:.3}}}",
                    pct as f64 / 100.0,
                    dm / sm
                );
            }
        }
    }
}

/// FLOPs of a ViT forward per image: (block linear layers, everything else).
fn flops(spec: &VitSpec) -> (f64, f64) {
    let (d, t) = (
        spec.embed_dim as f64,
        (1 + (spec.image_size / spec.patch_size).pow(2)) as f64,
    );
    let linear = spec.depth as f64 * 2.0 * t * (3.0 * d * d + d * d + 8.0 * d * d);
    let attention = spec.depth as f64 * 2.0 * 2.0 * t * t * d;
    let patch = 2.0 * t * d * 3.0 * (spec.patch_size * spec.patch_size) as f64;
    let head = 2.0 * d * spec.num_classes as f64;
    (linear, attention + patch + head)
}

fn e2e(be: &CpuBackend, runs: usize) {
    for (name, spec) in [
        (
            "deit_tiny",
            VitSpec {
                image_size: 224,
                patch_size: 16,
                embed_dim: 192,
                depth: 12,
                num_heads: 3,
                num_classes: 1000,
            },
        ),
        (
            "deit_small",
            VitSpec {
                image_size: 224,
                patch_size: 16,
                embed_dim: 384,
                depth: 12,
                num_heads: 6,
                num_classes: 1000,
            },
        ),
    ] {
        let (lin, rest) = flops(&spec);
        // Uniform block sparsity s with (1 - s) lin + rest = 0.5 (lin + rest).
        let s = (1.0 - (0.5 * (lin + rest) - rest) / lin).clamp(0.0, 0.95);
        let dense_w = Weights::from_bytes(seeded_vit_safetensors(&spec, 1), "seeded").unwrap();
        let mut rng = Lcg(3);
        let masks: BTreeMap<String, Vec<bool>> = prunable_layers(&dense_w, [16, 16])
            .into_iter()
            .map(|l| {
                let n = (l.outputs / 16) * (l.inputs / 16);
                (l.prefix, mask(n, s, &mut rng))
            })
            .collect();
        let sparse_w = Weights::from_bytes(
            write_block_sparse(&dense_w, &masks, [16, 16], &[]).unwrap(),
            "sparse",
        )
        .unwrap();
        let dense = Vit::load(be.clone(), &dense_w, &VitOptions::default()).unwrap();
        let sparse = Vit::load(be.clone(), &sparse_w, &VitOptions::default()).unwrap();
        for batch in [1, 8] {
            let x = tensor(vec![batch, 3, 224, 224], &mut rng);
            let dense_ms = median_ms(runs, || {
                dense.run(&x).unwrap();
            });
            let sparse_ms = median_ms(runs, || {
                sparse.run(&x).unwrap();
            });
            println!(
                "{{\"bench\":\"sparse_e2e\",\"model\":\"{name}\",\"batch\":{batch},\"block\":16,\
                 \"layer_sparsity\":{s:.3},\"flops_fraction\":0.5,\"dense_ms\":{dense_ms:.3},\
                 \"sparse_ms\":{sparse_ms:.3},\"speedup\":{:.3}}}",
                dense_ms / sparse_ms
            );
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let threads = args.first().and_then(|a| a.parse().ok()).unwrap_or(2);
    let runs = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let dims: Vec<usize> = args
        .get(2)
        .map(|a| a.split(',').filter_map(|v| v.parse().ok()).collect())
        .unwrap_or_else(|| vec![192, 384, 768]);
    let be = CpuBackend::new(threads).unwrap();
    println!(
        "{{\"bench\":\"sparse_setup\",\"threads\":{threads},\"isa\":\"{:?}\",\"runs\":{runs}}}",
        be.isa()
    );
    be.scope(|| kernels(&be, runs, &dims));
    if args.iter().any(|a| a == "--e2e") {
        e2e(&be, runs);
    }
}
