//! Parity with timm on the reference checkpoints in `../shared/reference`: tokens after
//! the embedding, after every block and after the final norm, and the logits, within
//! 1e-4 of the reference's largest |value|; same top-1; split points exact.

mod common;

use std::path::Path;

use splitstream_models::backend::cpu::CpuBackend;
use splitstream_models::vit::{Vit, VitOptions};
use splitstream_models::weights::Weights;
use splitstream_models::{Backend, HostTensor};

use common::{max_rel_diff, reference_dir};

const TOLERANCE: f32 = 1e-4;

fn options(model: &str) -> VitOptions {
    match model {
        // A custom timm VisionTransformer: 4 heads of 16 channels, not the D/64 default.
        "vit_micro" => VitOptions {
            num_heads: Some(4),
            ..Default::default()
        },
        arch => VitOptions {
            arch: Some(arch.to_string()),
            ..Default::default()
        },
    }
}

fn load(dir: &Path, model: &str) -> (Vit<CpuBackend>, Weights) {
    let weights = Weights::from_file(dir.join(format!("{model}.safetensors"))).unwrap();
    let vit = Vit::load(CpuBackend::new(0).unwrap(), &weights, &options(model)).unwrap();
    let expected = Weights::from_file(dir.join(format!("{model}.expected.safetensors"))).unwrap();
    (vit, expected)
}

fn expected(w: &Weights, name: &str) -> HostTensor {
    let shape = w
        .shape(name)
        .unwrap_or_else(|| panic!("reference lacks {name}"))
        .to_vec();
    w.get(name, &shape).unwrap()
}

fn check_parity(model: &str) {
    let Some(dir) = reference_dir(model) else {
        return;
    };
    let (vit, reference) = load(&dir, model);
    let be = vit.backend().clone();
    let input = expected(&reference, "input");
    let trace = vit.forward_traced(&be.upload(&input).unwrap()).unwrap();
    for (k, point) in vit.split_points().iter().enumerate() {
        let want = expected(&reference, &format!("tokens.{}", point.name));
        let got = be.readback(&trace.points[k]).unwrap();
        assert_eq!(got.shape(), want.shape(), "{model} tokens.{}", point.name);
        let d = max_rel_diff(got.data(), want.data());
        assert!(
            d <= TOLERANCE,
            "{model} tokens.{}: relative diff {d}",
            point.name
        );
    }
    let normed = be.readback(&trace.normed).unwrap();
    let d = max_rel_diff(normed.data(), expected(&reference, "tokens.norm").data());
    assert!(d <= TOLERANCE, "{model} tokens.norm: relative diff {d}");
    let logits = be.readback(&trace.logits).unwrap();
    let want = expected(&reference, "logits");
    assert_eq!(logits.shape(), want.shape());
    let d = max_rel_diff(logits.data(), want.data());
    assert!(d <= TOLERANCE, "{model} logits: relative diff {d}");
    let top = |t: &HostTensor| t.topk_rows(1).iter().map(|r| r[0].0).collect::<Vec<_>>();
    assert_eq!(top(&logits), top(&want), "{model} top-1");
    println!("{model}: logits max relative diff {d:e}");
}

#[test]
fn vit_micro_matches_timm_at_every_block() {
    check_parity("vit_micro");
}

#[test]
fn deit_tiny_matches_timm_at_every_block() {
    check_parity("deit_tiny_patch16_224");
}

fn check_splits(model: &str) {
    let Some(dir) = reference_dir(model) else {
        return;
    };
    let (vit, reference) = load(&dir, model);
    let be = vit.backend().clone();
    let input = be.upload(&expected(&reference, "input")).unwrap();
    let full = be.readback(&vit.forward(&input).unwrap()).unwrap();
    for point in vit.split_points() {
        let act = vit.head(&input, point.depth).unwrap();
        let shape = &be.readback(&act).unwrap();
        assert_eq!(&shape.shape()[1..], point.shape);
        let out = be.readback(&vit.tail(&act, point.depth).unwrap()).unwrap();
        let same = out
            .data()
            .iter()
            .zip(full.data())
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(
            same,
            "{model}: split at {} ({}) differs from the full forward",
            point.depth, point.name
        );
    }
    let past = vit.split_points().len();
    assert!(vit.head(&input, past).is_err());
}

#[test]
fn split_at_every_point_reproduces_full_forward_vit_micro() {
    check_splits("vit_micro");
}

#[test]
fn split_at_every_point_reproduces_full_forward_deit_tiny() {
    check_splits("deit_tiny_patch16_224");
}

#[test]
fn single_threaded_and_portable_kernels_agree_with_timm() {
    use splitstream_models::backend::cpu::Isa;
    let Some(dir) = reference_dir("portable") else {
        return;
    };
    let weights = Weights::from_file(dir.join("vit_micro.safetensors")).unwrap();
    let reference = Weights::from_file(dir.join("vit_micro.expected.safetensors")).unwrap();
    for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512] {
        let be = CpuBackend::with_isa(1, isa).unwrap();
        let vit = Vit::load(be, &weights, &options("vit_micro")).unwrap();
        let logits = vit.run(&expected(&reference, "input")).unwrap();
        let d = max_rel_diff(logits.data(), expected(&reference, "logits").data());
        assert!(d <= TOLERANCE, "{isa:?}: relative diff {d}");
    }
}
