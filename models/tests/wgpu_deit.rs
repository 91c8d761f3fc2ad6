//! DeiT-Tiny on the wgpu backend against timm's logits (`../shared/reference`), with
//! f32 weights (within 1e-3 of the largest |logit|) and with f16 weight storage.
//!
//! Runs on whatever adapter wgpu finds (Mesa lavapipe in CI). A missing adapter or
//! missing reference data fails under `CI=true` and prints a skip elsewhere.

mod common;

use std::path::Path;

use splitstream_models::backend::wgpu::{WgpuBackend, WgpuOptions};
use splitstream_models::vit::{Vit, VitOptions};
use splitstream_models::weights::Weights;
use splitstream_models::HostTensor;

use common::{max_rel_diff, reference_dir};

/// The backend, or `None` after a skip line (a panic under `CI=true`).
fn open(test: &str, f16_weights: bool) -> Option<WgpuBackend> {
    let options = WgpuOptions {
        f16_weights,
        ..WgpuOptions::from_env()
    };
    splitstream_testkit::open_or_skip(test, WgpuBackend::new(&options))
}

/// The logits of the reference batch (2 images) on `be`, and timm's.
fn deit_logits(be: WgpuBackend, dir: &Path) -> (HostTensor, HostTensor) {
    let weights = Weights::from_file(dir.join("deit_tiny_patch16_224.safetensors")).unwrap();
    let options = VitOptions {
        arch: Some("deit_tiny_patch16_224".into()),
        ..Default::default()
    };
    let vit = Vit::load(be, &weights, &options).unwrap();
    let reference =
        Weights::from_file(dir.join("deit_tiny_patch16_224.expected.safetensors")).unwrap();
    let input = reference.get("input", &[2, 3, 224, 224]).unwrap();
    let want = reference.get("logits", &[2, 1000]).unwrap();
    (vit.run(&input).unwrap(), want)
}

fn top1(t: &HostTensor) -> Vec<usize> {
    t.topk_rows(1).iter().map(|r| r[0].0).collect()
}

#[test]
fn deit_tiny_on_wgpu_matches_timm_logits() {
    let Some(dir) = reference_dir("deit_tiny_wgpu") else {
        return;
    };
    let Some(g) = open("deit_tiny_wgpu", false) else {
        return;
    };
    let (got, want) = deit_logits(g.clone(), &dir);
    let d = max_rel_diff(got.data(), want.data());
    println!(
        "deit_tiny on {}: logits max relative diff {d:e}",
        g.describe()
    );
    assert!(d <= 1e-3, "logits relative diff {d:e} > 1e-3");
    assert_eq!(top1(&got), top1(&want));
}

#[test]
fn deit_tiny_with_f16_weights_keeps_top1() {
    let Some(dir) = reference_dir("deit_tiny_wgpu_f16") else {
        return;
    };
    let Some(g16) = open("deit_tiny_wgpu_f16", true) else {
        return;
    };
    if !g16.f16_weights() {
        println!(
            "skip deit_tiny_wgpu_f16: {} lacks SHADER_F16",
            g16.describe()
        );
        return;
    }
    let (got, want) = deit_logits(g16.clone(), &dir);
    let d = max_rel_diff(got.data(), want.data());
    println!(
        "deit_tiny on {}: logits max relative diff {d:e}",
        g16.describe()
    );
    // f16 rounds each weight by up to 2^-11 relative: looser than f32 (measured 6.5e-4
    // on lavapipe against 8.6e-7 for f32 weights), same decision.
    assert!(d <= 2e-3, "logits relative diff {d:e} > 2e-3");
    assert_eq!(top1(&got), top1(&want));
}
