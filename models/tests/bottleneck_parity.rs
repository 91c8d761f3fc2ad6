//! The bottlenecks and the split model against PyTorch, on the fixture written by
//! `python/export_bottleneck_fixture.py` (`tests/data/bottleneck_fixture.safetensors`):
//! a tiny timm ViT with the training script's token bottleneck after block 1, a
//! linear-decoder token bottleneck and a conv bottleneck, seeded random weights, and
//! PyTorch's outputs. Every output within 1e-4 of the largest |value| of PyTorch's.
//!
//! On the CPU always; on wgpu too when an adapter exists (Mesa lavapipe in CI: a
//! missing adapter fails under `CI=true`, prints a skip elsewhere).

use std::path::PathBuf;

use splitstream_models::backend::cpu::CpuBackend;
#[cfg(feature = "wgpu")]
use splitstream_models::backend::wgpu::{WgpuBackend, WgpuOptions};
use splitstream_models::bottleneck::{Bottleneck, TokenDecoder};
use splitstream_models::split::SplitMetadata;
use splitstream_models::vit::SplitModel;
use splitstream_models::vit::VitOptions;
use splitstream_models::weights::Weights;
use splitstream_models::{Backend, HostTensor};

/// On the CPU: the project's parity bound for a whole ViT.
const CPU_TOLERANCE: f32 = 1e-4;
#[cfg(feature = "wgpu")]
/// On wgpu: the bound of the wgpu DeiT test (`wgpu_deit.rs`); the GPU's exp and erf
/// differ from libm's in the last bits, and the ViT blocks alone drift ~3e-4 here.
const WGPU_TOLERANCE: f32 = 1e-3;

fn fixture_bytes() -> Vec<u8> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/bottleneck_fixture.safetensors");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Largest |a - b| relative to the largest |b|; shapes must agree.
fn rel_diff(a: &HostTensor, b: &HostTensor) -> f32 {
    assert_eq!(a.shape(), b.shape());
    let scale = b
        .data()
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()))
        .max(f32::MIN_POSITIVE);
    a.data()
        .iter()
        .zip(b.data())
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

fn assert_close(tolerance: f32, what: &str, got: &HostTensor, want: &HostTensor) {
    let d = rel_diff(got, want);
    println!("{what}: relative difference {d:e}");
    assert!(
        d <= tolerance,
        "{what}: relative difference {d:e} > {tolerance:e}"
    );
}

/// Takes a `fixture.*` tensor (marking it used, so the ViT loader does not refuse it).
fn take(weights: &Weights, name: &str) -> HostTensor {
    let shape = weights
        .shape(name)
        .unwrap_or_else(|| panic!("no {name}"))
        .to_vec();
    weights.get(name, &shape).unwrap()
}

fn check_parity<B: Backend>(be: B, tolerance: f32) {
    let assert_close =
        |what: &str, got: &HostTensor, want: &HostTensor| assert_close(tolerance, what, got, want);
    let bytes = fixture_bytes();
    let metadata = SplitMetadata::from_safetensors(&bytes).unwrap();
    assert_eq!(metadata.split, Some(1));
    assert_eq!(metadata.rank, Some(8));
    let weights = Weights::from_bytes(bytes, "bottleneck_fixture").unwrap();
    let names = [
        "input",
        "tokens",
        "code",
        "decoded",
        "logits",
        "linear.code",
        "linear.decoded",
        "conv.input",
        "conv.code",
        "conv.decoded",
    ];
    let f: Vec<HostTensor> = names
        .iter()
        .map(|n| take(&weights, &format!("fixture.{n}")))
        .collect();
    let [input, tokens, code, decoded, logits, lin_code, lin_decoded, fmap, conv_code, conv_decoded] =
        &f[..]
    else {
        unreachable!()
    };

    let linear = Bottleneck::load(&be, &weights, "linear_bottleneck")
        .unwrap()
        .expect("linear bottleneck present");
    let conv = Bottleneck::load(&be, &weights, "conv_bottleneck")
        .unwrap()
        .expect("conv bottleneck present");
    let model = SplitModel::load_with_metadata(
        be.clone(),
        &weights,
        &VitOptions::default(),
        None,
        &metadata,
    )
    .unwrap();
    assert_eq!(model.point(), 1);
    assert!(model.has_bottleneck());
    assert_eq!(model.code_shape(2), vec![2, 17, 8]);
    let token = model.bottleneck().unwrap();
    assert!(
        matches!(token, Bottleneck::Token(t) if matches!(t.decoder(), TokenDecoder::Mlp { hidden: 64, .. }))
    );

    let up = |t: &HostTensor| be.upload(t).unwrap();
    let down = |t: &B::Tensor| be.readback(t).unwrap();

    // The ViT up to the split, then the device side, then the edge side.
    let x = up(input);
    assert_close(
        "tokens at split 1",
        &down(&model.vit().head(&x, 1).unwrap()),
        tokens,
    );
    assert_close(
        "code (head + encoder)",
        &down(&model.head(&x).unwrap()),
        code,
    );
    assert_close(
        "decoded tokens",
        &down(&token.decode(&up(code)).unwrap()),
        decoded,
    );
    assert_close(
        "logits from PyTorch's code",
        &down(&model.tail(&up(code)).unwrap()),
        logits,
    );
    assert_close(
        "logits of the whole split model",
        &model.run(input).unwrap(),
        logits,
    );

    // The linear (PCA-form) token bottleneck.
    assert_close(
        "linear code",
        &down(&linear.encode(&up(tokens)).unwrap()),
        lin_code,
    );
    assert_close(
        "linear decoded",
        &down(&linear.decode(&up(lin_code)).unwrap()),
        lin_decoded,
    );

    // The conv bottleneck.
    assert_eq!(conv.code_shape(fmap.shape()).unwrap(), conv_code.shape());
    assert_close(
        "conv code",
        &down(&conv.encode(&up(fmap)).unwrap()),
        conv_code,
    );
    assert_close(
        "conv decoded",
        &down(&conv.decode(&up(conv_code)).unwrap()),
        conv_decoded,
    );
}

#[test]
fn bottlenecks_and_split_model_match_pytorch_on_the_cpu() {
    check_parity(CpuBackend::new(2).unwrap(), CPU_TOLERANCE);
}

#[cfg(feature = "wgpu")]
#[test]
fn bottlenecks_and_split_model_match_pytorch_on_wgpu() {
    let test = "bottlenecks_and_split_model_match_pytorch_on_wgpu";
    if let Some(be) =
        splitstream_testkit::open_or_skip(test, WgpuBackend::new(&WgpuOptions::from_env()))
    {
        check_parity(be, WGPU_TOLERANCE);
    }
}

#[test]
fn without_a_bottleneck_head_and_tail_are_the_vits_bit_for_bit() {
    let be = CpuBackend::new(2).unwrap();
    let weights = Weights::from_bytes(fixture_bytes(), "bottleneck_fixture").unwrap();
    let input = take(&weights, "fixture.input");
    // Everything but the ViT is taken first, so neither loader sees it.
    for name in weights.names().map(str::to_string).collect::<Vec<_>>() {
        if name.starts_with("fixture.") || name.starts_with("linear_") || name.starts_with("conv_")
        {
            take(&weights, &name);
        }
    }
    let with = SplitModel::load(
        be.clone(),
        &weights,
        &VitOptions {
            num_heads: Some(2),
            ..Default::default()
        },
        Some(1),
    )
    .unwrap();
    for point in 0..=2 {
        let plain = SplitModel::new(with.vit().clone(), point, None).unwrap();
        assert!(!plain.has_bottleneck());
        let x = be.upload(&input).unwrap();
        let vit = plain.vit();
        let act = plain.head(&x).unwrap();
        assert_eq!(
            be.readback(&act).unwrap(),
            be.readback(&vit.head(&x, point).unwrap()).unwrap()
        );
        assert_eq!(
            be.readback(&plain.tail(&act).unwrap()).unwrap(),
            be.readback(&vit.forward(&x).unwrap()).unwrap(),
            "point {point}"
        );
    }
}
