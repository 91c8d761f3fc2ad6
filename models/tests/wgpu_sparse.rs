//! The wgpu block-sparse kernel (`sparse.wgsl`): a pruned ViT's forward on wgpu equals
//! the masked dense forward on the CPU (1e-3), whole and split at every point, and the
//! kernel alone matches the reference on odd shapes (a block-row with no kept block,
//! rectangular blocks, every activation).
//!
//! They run on whatever adapter wgpu finds (Mesa lavapipe in CI); without one they
//! fail under `CI=true` and print a skip elsewhere.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use splitstream_models::backend::block_sparse::BlockSparse;
use splitstream_models::backend::cpu::CpuBackend;
use splitstream_models::backend::reference::ReferenceBackend;
use splitstream_models::backend::wgpu::{WgpuBackend, WgpuInitError, WgpuOptions};
use splitstream_models::net::{load_net, NetOptions, Output};
use splitstream_models::prune::{prunable_layers, write_block_sparse, write_masked_dense};
use splitstream_models::synthetic::{seeded_vit_safetensors, VitSpec};
use splitstream_models::weights::Weights;
use splitstream_models::{Activation, Backend, HostTensor};

fn gpu(test: &str) -> Option<WgpuBackend> {
    static GPU: OnceLock<Result<WgpuBackend, WgpuInitError>> = OnceLock::new();
    let opened = GPU.get_or_init(|| {
        WgpuBackend::new(&WgpuOptions {
            f16_weights: false,
            ..WgpuOptions::from_env()
        })
    });
    match opened {
        Ok(g) => Some(g.clone()),
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{test}: no wgpu adapter under CI=true: {e}")
        }
        Err(e) => {
            println!("skip {test}: {e}");
            None
        }
    }
}

fn close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= tol * scale, "{what}: {g} vs {w}");
    }
}

#[test]
fn the_sparse_kernel_matches_the_reference_on_odd_shapes() {
    let Some(g) = gpu("the_sparse_kernel_matches_the_reference_on_odd_shapes") else {
        return;
    };
    let reference = ReferenceBackend;
    for &(rows, n, k, bo, bi) in &[
        (13, 48, 40, 16, 8),
        (3, 64, 128, 32, 64),
        (20, 24, 24, 8, 8),
    ] {
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 11) % 17) as f32 * 0.03 - 0.25)
            .collect();
        let w = HostTensor::new(vec![n, k], w).unwrap();
        let b = HostTensor::new(vec![n], (0..n).map(|i| i as f32 * 0.01).collect()).unwrap();
        let x = HostTensor::new(
            vec![rows, k],
            (0..rows * k)
                .map(|i| ((i * 37) % 29) as f32 * 0.05 - 0.7)
                .collect(),
        )
        .unwrap();
        let cols = k / bi;
        // Block-row 0 keeps nothing.
        let keep: Vec<bool> = (0..(n / bo) * cols)
            .map(|i| i >= cols && i % 3 != 1)
            .collect();
        let sparse = BlockSparse::from_dense(&w, [bo, bi], &keep).unwrap();
        for act in [Activation::Identity, Activation::Gelu] {
            let reference_layer = reference
                .prepare_block_sparse_linear(&sparse, Some(&b))
                .unwrap();
            let xr = reference.upload(&x).unwrap();
            let want = reference
                .readback(&reference.linear(&xr, &reference_layer, act).unwrap())
                .unwrap();
            let layer = g.prepare_block_sparse_linear(&sparse, Some(&b)).unwrap();
            let got = g
                .readback(&g.linear(&g.upload(&x).unwrap(), &layer, act).unwrap())
                .unwrap();
            close(
                got.data(),
                want.data(),
                1e-4,
                &format!("{rows}x{n}x{k} b{bo}x{bi} {act:?}"),
            );
        }
    }
}

const SPEC: VitSpec = VitSpec {
    image_size: 32,
    patch_size: 8,
    embed_dim: 64,
    depth: 2,
    num_heads: 2,
    num_classes: 10,
};

fn logits(out: Output) -> Vec<f32> {
    match out {
        Output::Logits(t) => t.data().to_vec(),
        other => panic!("expected logits, got {other:?}"),
    }
}

#[test]
fn a_pruned_vit_on_wgpu_equals_the_masked_dense_vit_at_every_split() {
    let Some(g) = gpu("a_pruned_vit_on_wgpu_equals_the_masked_dense_vit_at_every_split") else {
        return;
    };
    let dense = Weights::from_bytes(seeded_vit_safetensors(&SPEC, 21), "seeded").unwrap();
    let n = 2 * 3 * 32 * 32;
    let x = HostTensor::new(
        vec![2, 3, 32, 32],
        (0..n)
            .map(|i| ((i * 7919) % 255) as f32 / 127.5 - 1.0)
            .collect(),
    )
    .unwrap();
    for (block, sparsity) in [(16, 0.3), (16, 0.7), (32, 0.5)] {
        let masks: BTreeMap<String, Vec<bool>> = prunable_layers(&dense, [block, block])
            .into_iter()
            .enumerate()
            .map(|(l, p)| {
                let nb = (p.outputs / block) * (p.inputs / block);
                let keep = (0..nb)
                    .map(|i| ((i * 7 + l * 3) % 10) as f64 >= sparsity * 10.0)
                    .collect();
                (p.prefix, keep)
            })
            .collect();
        let sparse_w = Weights::from_bytes(
            write_block_sparse(&dense, &masks, [block, block], &[]).unwrap(),
            "s",
        )
        .unwrap();
        let masked_w = Weights::from_bytes(
            write_masked_dense(&dense, &masks, [block, block]).unwrap(),
            "m",
        )
        .unwrap();
        let on_gpu = load_net(g.clone(), &sparse_w, &NetOptions::default()).unwrap();
        let on_cpu = load_net(
            CpuBackend::new(1).unwrap(),
            &masked_w,
            &NetOptions::default(),
        )
        .unwrap();
        let want = logits(on_cpu.forward(&x, None).unwrap());
        let what = format!("block {block}, sparsity {sparsity}");
        close(
            &logits(on_gpu.forward(&x, None).unwrap()),
            &want,
            1e-3,
            &what,
        );
        for point in on_gpu.split_points() {
            let h = on_gpu.head(&x, &point.name, None).unwrap();
            let out = logits(on_gpu.tail(&h, &point.name, None).unwrap());
            close(
                &out,
                &want,
                1e-3,
                &format!("{what} split at {}", point.name),
            );
        }
    }
}
