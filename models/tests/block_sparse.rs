//! Block-sparse (LPViT-pruned) ViTs: a pruned checkpoint's sparse forward equals the
//! dense forward of the same weights with the mask applied, whole and split at every
//! point, through the one loader (`load_net`, `SplitNet`).

use std::collections::HashMap;

use splitstream_models::backend::cpu::CpuBackend;
use splitstream_models::net::{load_net, NetOptions};
use splitstream_models::synthetic::{seeded_vit_safetensors, VitSpec};
use splitstream_models::weights::Weights;
#[cfg(feature = "sparse")]
use {
    splitstream_models::backend::cpu::Isa,
    splitstream_models::net::Output,
    splitstream_models::prune::{prunable_layers, write_block_sparse, write_masked_dense},
    splitstream_models::HostTensor,
    std::collections::BTreeMap,
};

/// A small seeded ViT whose layer widths split into 16- and 32-blocks.
const SPEC: VitSpec = VitSpec {
    image_size: 32,
    patch_size: 8,
    embed_dim: 64,
    depth: 2,
    num_heads: 2,
    num_classes: 10,
};

#[cfg(feature = "sparse")]
/// Drops about `sparsity` of each prunable layer's blocks (a seeded choice).
fn masks(weights: &Weights, block: usize, sparsity: f64, seed: u64) -> BTreeMap<String, Vec<bool>> {
    let mut state = seed;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as f64 / (1u64 << 31) as f64
    };
    prunable_layers(weights, [block, block])
        .into_iter()
        .map(|l| {
            let n = (l.outputs / block) * (l.inputs / block);
            (l.prefix, (0..n).map(|_| next() >= sparsity).collect())
        })
        .collect()
}

#[cfg(feature = "sparse")]
fn image(batch: usize) -> HostTensor {
    let n = batch * 3 * SPEC.image_size * SPEC.image_size;
    let data = (0..n)
        .map(|i| ((i * 7919) % 255) as f32 / 127.5 - 1.0)
        .collect();
    HostTensor::new(vec![batch, 3, SPEC.image_size, SPEC.image_size], data).unwrap()
}

#[cfg(feature = "sparse")]
fn logits(out: Output) -> Vec<f32> {
    match out {
        Output::Logits(t) => t.data().to_vec(),
        other => panic!("expected logits, got {other:?}"),
    }
}

#[cfg(feature = "sparse")]
fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= tol * scale, "{what}: {g} vs {w}");
    }
}

#[cfg(feature = "sparse")]
#[test]
fn sparse_forward_equals_masked_dense_at_every_sparsity_block_isa_and_split() {
    let dense = Weights::from_bytes(seeded_vit_safetensors(&SPEC, 11), "seeded").unwrap();
    let x = image(2);
    let isas: Vec<Isa> = [Isa::Portable, Isa::Avx2, Isa::Avx512]
        .into_iter()
        .filter(|&i| i.or_supported() == i)
        .collect();
    for block in [16, 32] {
        for sparsity in [0.3, 0.5, 0.7] {
            let m = masks(&dense, block, sparsity, 5);
            assert!(!m.is_empty());
            let sparse_bytes =
                write_block_sparse(&dense, &m, [block, block], &[]).expect("sparse checkpoint");
            let masked_bytes = write_masked_dense(&dense, &m, [block, block]).expect("masked");
            let sparse_w = Weights::from_bytes(sparse_bytes, "sparse").unwrap();
            assert!(sparse_w.names().any(|n| n.ends_with("weight_blocks")));
            let masked_w = Weights::from_bytes(masked_bytes, "masked").unwrap();
            for &isa in &isas {
                let be = CpuBackend::with_isa(2, isa).unwrap();
                let sparse = load_net(be.clone(), &sparse_w, &NetOptions::default()).unwrap();
                let reference = load_net(be, &masked_w, &NetOptions::default()).unwrap();
                let want = logits(reference.forward(&x, None).unwrap());
                let what = format!("block {block}, sparsity {sparsity}, {isa:?}");
                assert_close(
                    &logits(sparse.forward(&x, None).unwrap()),
                    &want,
                    1e-5,
                    &what,
                );
                for point in sparse.split_points() {
                    let h = sparse.head(&x, &point.name, None).unwrap();
                    let hr = reference.head(&x, &point.name, None).unwrap();
                    assert_close(
                        h.data(),
                        hr.data(),
                        1e-5,
                        &format!("{what} at {}", point.name),
                    );
                    let out = logits(sparse.tail(&h, &point.name, None).unwrap());
                    assert_close(
                        &out,
                        &want,
                        1e-5,
                        &format!("{what} split at {}", point.name),
                    );
                }
            }
        }
    }
}

#[cfg(feature = "sparse")]
#[test]
fn the_pruned_checkpoint_is_smaller_and_says_its_block_size() {
    let dense_bytes = seeded_vit_safetensors(&SPEC, 3);
    let dense = Weights::from_bytes(dense_bytes.clone(), "seeded").unwrap();
    let m = masks(&dense, 16, 0.5, 9);
    let bytes = write_block_sparse(&dense, &m, [16, 16], &[]).unwrap();
    assert!(
        bytes.len() < dense_bytes.len() * 3 / 4,
        "{} vs {}",
        bytes.len(),
        dense_bytes.len()
    );
    let w = Weights::from_bytes(bytes, "sparse").unwrap();
    assert_eq!(w.metadata_value("block_sparse"), Some("16x16"));
    // Pruning it again is refused.
    assert!(write_block_sparse(&w, &BTreeMap::new(), [16, 16], &[]).is_err());
}

/// The seeded ViT with `blocks.0.mlp.fc1` rewritten by hand as block-sparse (all its
/// 16x16 blocks kept), without the `prune` module.
fn hand_made_sparse() -> Weights {
    let dense = Weights::from_bytes(seeded_vit_safetensors(&SPEC, 4), "seeded").unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for name in dense.names() {
        let shape = dense.shape(name).unwrap().to_vec();
        let t = dense.get(name, &shape).unwrap();
        if name == "blocks.0.mlp.fc1.weight" {
            let (o, i) = (shape[0], shape[1]);
            let mut blocks = Vec::new();
            for r in 0..o / 16 {
                for c in 0..i / 16 {
                    for row in 0..16 {
                        let at = (r * 16 + row) * i + c * 16;
                        blocks.extend_from_slice(&t.data()[at..at + 16]);
                    }
                }
            }
            let kept = (o / 16) * (i / 16);
            let p = "blocks.0.mlp.fc1";
            tensors.push((format!("{p}.weight_blocks"), vec![kept, 16, 16], blocks));
            tensors.push((
                format!("{p}.weight_block_mask"),
                vec![o / 16, i / 16],
                vec![1.0; kept],
            ));
        } else {
            tensors.push((name.to_string(), shape, t.data().to_vec()));
        }
    }
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(n, s, v)| (n, s, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views: Vec<_> = bytes
        .iter()
        .map(|(n, s, b)| {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b);
            (n.clone(), v.unwrap())
        })
        .collect();
    let meta = HashMap::from([
        ("block_sparse".to_string(), "16x16".to_string()),
        ("num_heads".to_string(), SPEC.num_heads.to_string()),
    ]);
    Weights::from_bytes(
        safetensors::serialize(views, Some(meta)).unwrap(),
        "hand-made",
    )
    .unwrap()
}

#[cfg(feature = "sparse")]
#[test]
fn a_hand_made_block_sparse_checkpoint_with_every_block_kept_runs_as_the_dense_one() {
    let be = CpuBackend::with_isa(2, Isa::Portable).unwrap();
    let sparse = load_net(be.clone(), &hand_made_sparse(), &NetOptions::default()).unwrap();
    let dense = Weights::from_bytes(seeded_vit_safetensors(&SPEC, 4), "seeded").unwrap();
    let dense = load_net(be, &dense, &NetOptions::default()).unwrap();
    let x = image(1);
    let (a, b) = (
        logits(sparse.forward(&x, None).unwrap()),
        logits(dense.forward(&x, None).unwrap()),
    );
    assert_close(&a, &b, 1e-5, "all blocks kept");
}

/// Without the `sparse` feature a block-sparse checkpoint is refused, naming the layer
/// and the feature (run: `cargo test -p splitstream-models --no-default-features
/// --test block_sparse`).
#[cfg(not(feature = "sparse"))]
#[test]
fn without_the_sparse_feature_a_block_sparse_checkpoint_is_refused_naming_the_feature() {
    let be = CpuBackend::new(1).unwrap();
    let err = load_net(be, &hand_made_sparse(), &NetOptions::default())
        .err()
        .expect("refused");
    let text = err.to_string();
    assert!(
        text.contains("blocks.0.mlp.fc1") && text.contains("`sparse` feature"),
        "{text}"
    );
}
