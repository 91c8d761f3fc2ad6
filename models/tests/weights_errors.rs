//! Bad checkpoints give clear errors that name the tensor at fault; f16 and bf16
//! checkpoints load.

mod common;

use safetensors::Dtype;
use splitstream_models::backend::cpu::CpuBackend;
use splitstream_models::vit::{LoadError, Vit, VitOptions};
use splitstream_models::weights::{Weights, WeightsError};

use common::{f32s, read_raw, reference_dir, write_raw, Raw};

fn micro() -> VitOptions {
    VitOptions {
        num_heads: Some(4),
        ..Default::default()
    }
}

fn load(path: &std::path::Path, options: &VitOptions) -> Result<Vit<CpuBackend>, LoadError> {
    let weights = Weights::from_file(path)?;
    Vit::load(CpuBackend::new(1).unwrap(), &weights, options)
}

#[test]
fn missing_tensor_is_an_error_naming_it() {
    let Some(dir) = reference_dir("missing") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut raw = read_raw(&dir.join("vit_micro.safetensors"));
    raw.retain(|t| t.name != "blocks.3.attn.qkv.weight");
    let path = tmp.path().join("missing.safetensors");
    write_raw(&path, &raw);
    let err = load(&path, &micro())
        .err()
        .expect("a missing tensor must fail");
    assert!(
        matches!(&err, LoadError::Weights(WeightsError::Missing { name, .. }) if name == "blocks.3.attn.qkv.weight"),
        "{err}"
    );
    assert!(
        err.to_string().contains("blocks.3.attn.qkv.weight"),
        "{err}"
    );
}

#[test]
fn wrong_shape_is_an_error_naming_it() {
    let Some(dir) = reference_dir("shape") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut raw = read_raw(&dir.join("vit_micro.safetensors"));
    let t = raw
        .iter_mut()
        .find(|t| t.name == "blocks.1.mlp.fc2.bias")
        .unwrap();
    t.shape = vec![t.shape[0] / 2];
    t.bytes.truncate(t.bytes.len() / 2);
    let path = tmp.path().join("shape.safetensors");
    write_raw(&path, &raw);
    let err = load(&path, &micro())
        .err()
        .expect("a mis-shaped tensor must fail");
    assert!(
        matches!(&err, LoadError::Weights(WeightsError::Shape { name, actual, expected, .. })
            if name == "blocks.1.mlp.fc2.bias" && actual == &[32] && expected == &[64]),
        "{err}"
    );
}

#[test]
fn unexpected_tensor_is_an_error_naming_it() {
    let Some(dir) = reference_dir("unexpected") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut raw = read_raw(&dir.join("vit_micro.safetensors"));
    raw.push(Raw {
        name: "fc_norm.weight".into(),
        dtype: Dtype::F32,
        shape: vec![64],
        bytes: vec![0; 256],
    });
    let path = tmp.path().join("extra.safetensors");
    write_raw(&path, &raw);
    let err = load(&path, &micro())
        .err()
        .expect("an extra tensor must fail");
    assert!(err.to_string().contains("fc_norm.weight"), "{err}");
}

#[test]
fn truncated_file_is_a_clear_error() {
    let Some(dir) = reference_dir("truncated") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(dir.join("vit_micro.safetensors")).unwrap();
    for cut in [bytes.len() / 2, 100, 4] {
        let path = tmp.path().join(format!("cut{cut}.safetensors"));
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let err = Weights::from_file(&path).expect_err("a truncated file must fail");
        let msg = err.to_string();
        if cut >= 8 {
            assert!(
                matches!(err, WeightsError::Truncated { actual, .. } if actual == cut as u64),
                "{msg}"
            );
            assert!(msg.contains("truncated"), "{msg}");
        } else {
            assert!(matches!(err, WeightsError::Format { .. }), "{msg}");
        }
    }
}

#[test]
fn wrong_architecture_name_is_refused() {
    let Some(dir) = reference_dir("arch") else {
        return;
    };
    let path = dir.join("deit_tiny_patch16_224.safetensors");
    let opts = |arch: &str| VitOptions {
        arch: Some(arch.into()),
        ..Default::default()
    };
    let err = load(&path, &opts("deit_small_patch16_224")).err().unwrap();
    assert!(err.to_string().contains("embed dim 192"), "{err}");
    let err = load(&path, &opts("resnet50")).err().unwrap();
    assert!(matches!(err, LoadError::UnknownArch { .. }), "{err}");
    assert!(load(&path, &opts("deit_tiny_patch16_224.fb_in1k")).is_ok());
}

/// Converts every tensor with `convert` (f32 -> 16-bit bits), writes the 16-bit file
/// and an f32 file of the same rounded values; both must give identical logits.
fn check_half(dtype: Dtype, convert: fn(f32) -> (u16, f32)) {
    let Some(dir) = reference_dir("half") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let raw = read_raw(&dir.join("vit_micro.safetensors"));
    let (mut half, mut rounded) = (Vec::new(), Vec::new());
    for t in &raw {
        let (bits, back): (Vec<u16>, Vec<f32>) = f32s(&t.bytes).into_iter().map(convert).unzip();
        half.push(Raw {
            name: t.name.clone(),
            dtype,
            shape: t.shape.clone(),
            bytes: bits.iter().flat_map(|b| b.to_le_bytes()).collect(),
        });
        rounded.push(Raw {
            name: t.name.clone(),
            dtype: Dtype::F32,
            shape: t.shape.clone(),
            bytes: back.iter().flat_map(|v| v.to_le_bytes()).collect(),
        });
    }
    let (hp, rp) = (
        tmp.path().join("half.safetensors"),
        tmp.path().join("f32.safetensors"),
    );
    write_raw(&hp, &half);
    write_raw(&rp, &rounded);
    let input = splitstream_models::HostTensor::new(
        [1, 3, 224, 224],
        (0..3 * 224 * 224)
            .map(|i| ((i % 255) as f32 / 127.0) - 1.0)
            .collect(),
    )
    .unwrap();
    let a = load(&hp, &micro()).unwrap().run(&input).unwrap();
    let b = load(&rp, &micro()).unwrap().run(&input).unwrap();
    assert_eq!(
        a, b,
        "{dtype:?} weights must load to exactly their f32 values"
    );
}

#[test]
fn f16_weights_load() {
    check_half(Dtype::F16, |v| {
        let h = half::f16::from_f32(v);
        (h.to_bits(), h.to_f32())
    });
}

#[test]
fn bf16_weights_load() {
    check_half(Dtype::BF16, |v| {
        let h = half::bf16::from_f32(v);
        (h.to_bits(), h.to_f32())
    });
}
