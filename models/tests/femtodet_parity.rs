//! FemtoDet against `python/femtodet.py` on a seeded random checkpoint in the FemtoDet
//! repository's (mmdet) names (`fixtures/femtodet`, made by
//! `python/make_femtodet_fixture.py`): every stage, the neck and the head maps within
//! 1e-4 of the reference's largest |value|, the same boxes after NMS (IoU > 0.999, same
//! labels), the folded IBE convs equal to their training form, the letterbox bit for
//! bit, every split point equal to the whole model, and clear errors on bad
//! checkpoints.

mod common;

use std::path::PathBuf;

use safetensors::{Dtype, SafeTensors};
use splitstream_models::backend::cpu::CpuBackend;
use splitstream_models::backend::reference::ReferenceBackend;
use splitstream_models::backend::{Backend, Conv2dSpec};
use splitstream_models::femtodet::{box_iou, fold_ibe, BatchNorm, FemtoDet, FemtoLoadError};
use splitstream_models::net::{load_net, NetOptions, Output, SplitNet};
use splitstream_models::preprocess::{letterbox_u8, EvalTransform};
use splitstream_models::split::SplitMetadata;
use splitstream_models::weights::Weights;
use splitstream_models::HostTensor;

use common::{max_rel_diff, read_raw, Raw};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/femtodet")
        .join(name)
}

/// The expected outputs, any dtype, as f32 (u8 and i64 converted).
struct Expected(Vec<u8>);

impl Expected {
    fn load() -> Self {
        Self(std::fs::read(fixture("femtodet_seeded.expected.safetensors")).unwrap())
    }

    fn get(&self, name: &str) -> HostTensor {
        let st = SafeTensors::deserialize(&self.0).unwrap();
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

    fn bytes(&self, name: &str) -> (Vec<usize>, Vec<u8>) {
        let st = SafeTensors::deserialize(&self.0).unwrap();
        let v = st.tensor(name).unwrap();
        (v.shape().to_vec(), v.data().to_vec())
    }
}

fn weights() -> Weights {
    Weights::from_file(fixture("femtodet_seeded.safetensors")).unwrap()
}

fn model<B: Backend>(be: B) -> FemtoDet<B> {
    let w = weights();
    FemtoDet::load(be, &w, &SplitMetadata::from_weights(&w).unwrap()).unwrap()
}

fn input(exp: &Expected) -> HostTensor {
    let u8s = exp.get("input_u8");
    let mean = [123.675f32, 116.28, 103.53];
    let plane = 416 * 416;
    let data = u8s
        .data()
        .iter()
        .enumerate()
        .map(|(i, &v)| (v - mean[i / plane]) / 58.82f32)
        .collect();
    HostTensor::new([1, 3, 416, 416], data).unwrap()
}

/// `x[:, :, ::4, ::4]`.
fn sub4(x: &HostTensor) -> Vec<f32> {
    let &[b, c, h, w] = x.shape() else { panic!() };
    let mut out = Vec::new();
    for n in 0..b * c {
        for i in (0..h).step_by(4) {
            for j in (0..w).step_by(4) {
                out.push(x.data()[(n * h + i) * w + j]);
            }
        }
    }
    out
}

fn check_maps<B: Backend>(net: &FemtoDet<B>, exp: &Expected, tol: f32) {
    let t = net.forward_traced(&input(exp)).unwrap();
    let mut maps: Vec<(String, Vec<f32>)> = vec![
        ("stem.sub4".into(), sub4(&t.stem)),
        ("stage1.sub4".into(), sub4(&t.stages[0])),
    ];
    for (k, s) in t.stages.iter().enumerate().skip(1) {
        maps.push((format!("stage{}", k + 1), s.data().to_vec()));
    }
    maps.push(("neck".into(), t.neck.data().to_vec()));
    maps.push(("head.cls".into(), t.head.cls.data().to_vec()));
    maps.push(("head.reg".into(), t.head.reg.data().to_vec()));
    maps.push(("head.obj".into(), t.head.obj.data().to_vec()));
    for (name, got) in maps {
        let want = exp.get(&name);
        let d = max_rel_diff(&got, want.data());
        assert!(d <= tol, "{name}: max rel diff {d:e} > {tol:e}");
    }
}

/// The detections of the whole model in input pixels against the reference's, and
/// mapped back to the image against `boxes`.
fn check_boxes<B: Backend + 'static>(net: &FemtoDet<B>, exp: &Expected) {
    let Output::Detections(dets) = net.forward(&input(exp), None).unwrap() else {
        panic!("detections");
    };
    let dets = &dets[0];
    let want_boxes = exp.get("boxes_input");
    let want_image = exp.get("boxes");
    let labels = exp.get("labels");
    let scores = exp.get("scores");
    assert_eq!(dets.len(), labels.numel(), "detections after NMS");
    let transform = EvalTransform::letterbox(416, 114, [123.675, 116.28, 103.53], [58.82; 3]);
    let [sx, sy] = transform.box_scale(512, 512).unwrap();
    for (i, d) in dets.iter().enumerate() {
        let want: [f32; 4] = want_boxes.data()[i * 4..i * 4 + 4].try_into().unwrap();
        let iou = box_iou(&d.bbox, &want);
        assert!(iou > 0.999, "box {i}: {:?} vs {want:?} (IoU {iou})", d.bbox);
        assert_eq!(d.label as f32, labels.data()[i], "label of box {i}");
        assert!((d.score - scores.data()[i]).abs() <= 1e-4 * scores.data()[i].max(1e-2));
        let mapped = [
            d.bbox[0] * sx,
            d.bbox[1] * sy,
            d.bbox[2] * sx,
            d.bbox[3] * sy,
        ];
        let want: [f32; 4] = want_image.data()[i * 4..i * 4 + 4].try_into().unwrap();
        assert!(box_iou(&mapped, &want) > 0.999, "image box {i}");
    }
}

#[test]
fn every_map_and_box_matches_pytorch_on_the_cpu() {
    let exp = Expected::load();
    let net = model(CpuBackend::new(2).unwrap());
    check_maps(&net, &exp, 1e-4);
    check_boxes(&net, &exp);
}

#[test]
fn the_reference_backend_agrees_too() {
    let exp = Expected::load();
    let net = model(ReferenceBackend::new());
    check_maps(&net, &exp, 1e-4);
}

fn bn(w: &Weights, prefix: &str, c: usize) -> BatchNorm {
    let get = |n: &str| w.get(&format!("{prefix}.{n}"), &[c]).unwrap().into_data();
    BatchNorm {
        weight: get("weight"),
        bias: get("bias"),
        mean: get("running_mean"),
        var: get("running_var"),
    }
}

/// The IBE modules of the fixture: (prefix, channels, stride).
fn ibe_modules() -> Vec<(String, usize, usize)> {
    let rows = [
        (1, 1, 8),
        (2, 2, 8),
        (2, 2, 8),
        (3, 2, 16),
        (2, 1, 24),
        (2, 2, 40),
        (1, 1, 80),
    ];
    let mut cin = 8;
    let mut out = Vec::new();
    for (l, &(n, s, cout)) in rows.iter().enumerate() {
        for m in 0..n {
            let t = if l == 0 { 1 } else { 4 };
            let k = usize::from(t != 1);
            let stride = if m == 0 { s } else { 1 };
            out.push((
                format!("backbone.layer{}.{m}.conv.{k}", l + 1),
                cin * t,
                stride,
            ));
            cin = cout;
        }
    }
    out
}

#[test]
fn folded_ibe_equals_its_training_form() {
    let w = weights();
    let exp = Expected::load();
    let be = ReferenceBackend::new();
    let mut seed = 7u64;
    let mut rand = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    let modules = ibe_modules();
    assert_eq!(modules.len(), 13);
    for (prefix, c, stride) in modules {
        let weight = w
            .get(&format!("{prefix}.conv.weight"), &[c, 1, 3, 3])
            .unwrap();
        let theta = w.get(&format!("{prefix}.theta"), &[1]).unwrap().data()[0];
        let (bn1, bn2) = (
            bn(&w, &format!("{prefix}.bn"), c),
            bn(&w, &format!("{prefix}.bn2"), c),
        );
        let (fw, fb) = fold_ibe(&weight, theta, &bn1, &bn2).unwrap();
        // Against PyTorch's fold.
        let d = max_rel_diff(fw.data(), exp.get(&format!("fold.{prefix}.weight")).data());
        assert!(d < 1e-6, "{prefix} weight fold {d:e}");
        let d = max_rel_diff(fb.data(), exp.get(&format!("fold.{prefix}.bias")).data());
        assert!(d < 1e-6, "{prefix} bias fold {d:e}");
        // Against the training form, computed op by op on a random 10x10 input.
        let x = HostTensor::new([1, c, 10, 10], (0..c * 100).map(|_| rand()).collect()).unwrap();
        let xs = be.upload(&x).unwrap();
        let dw = Conv2dSpec::new([stride, stride], [1, 1]).groups(c);
        let plain = be.prepare_conv2d(&weight, None, dw).unwrap();
        let sum: Vec<f32> = weight.data().chunks(9).map(|k| k.iter().sum()).collect();
        let sum = HostTensor::new([c, 1, 1, 1], sum).unwrap();
        let one = Conv2dSpec::new([stride, stride], [0, 0]).groups(c);
        let diff = be.prepare_conv2d(&sum, None, one).unwrap();
        let out = be.readback(&be.conv2d(&xs, &plain).unwrap()).unwrap();
        let dif = be.readback(&be.conv2d(&xs, &diff).unwrap()).unwrap();
        let s = 1.0 / (1.0 + (-theta).exp());
        let plane = out.numel() / c;
        let (a1, a2) = (bn1.affine(), bn2.affine());
        let train: Vec<f32> = (0..out.numel())
            .map(|i| {
                let ch = i / plane;
                let (o, df) = (out.data()[i] as f64, dif.data()[i] as f64);
                let v = a1[ch].0 * o + a1[ch].1 + a2[ch].0 * (o - s as f64 * df) + a2[ch].1;
                v.max(0.0) as f32
            })
            .collect();
        let folded = be
            .prepare_conv2d(
                &fw,
                Some(&fb),
                dw.activation(splitstream_models::Activation::Relu),
            )
            .unwrap();
        let got = be.readback(&be.conv2d(&xs, &folded).unwrap()).unwrap();
        let d = max_rel_diff(got.data(), &train);
        assert!(d <= 1e-5, "{prefix}: folded vs training form {d:e}");
    }
}

#[test]
fn the_letterbox_matches_the_reference_bit_for_bit() {
    let exp = Expected::load();
    let t = EvalTransform::letterbox(416, 114, [123.675, 116.28, 103.53], [58.82; 3]);
    for case in ["down", "up"] {
        let (shape, src) = exp.bytes(&format!("letterbox.{case}.src_u8"));
        let img = image::RgbImage::from_raw(shape[1] as u32, shape[0] as u32, src).unwrap();
        let (canvas, (nw, nh)) = letterbox_u8(&img, &t, 114);
        let (rshape, want) = exp.bytes(&format!("letterbox.{case}.resized_u8"));
        assert_eq!([nh as usize, nw as usize], [rshape[1], rshape[2]], "{case}");
        for c in 0..3 {
            for y in 0..416 {
                for x in 0..416 {
                    let got = canvas[(c * 416 + y) * 416 + x];
                    let want = if y < rshape[1] && x < rshape[2] {
                        want[(c * rshape[1] + y) * rshape[2] + x]
                    } else {
                        114
                    };
                    assert_eq!(got, want, "{case} c{c} y{y} x{x}");
                }
            }
        }
    }
}

#[test]
fn every_split_point_computes_the_whole_model() {
    let exp = Expected::load();
    let w = weights();
    let net = load_net(CpuBackend::new(2).unwrap(), &w, &NetOptions::default()).unwrap();
    assert_eq!(net.family().name(), "femtodet");
    let names: Vec<&str> = net.split_points().iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["stem", "stage1", "stage2", "stage3", "stage4", "stage5", "stage6", "stage7", "neck"]
    );
    let x = input(&exp);
    let whole = net.forward(&x, None).unwrap();
    for p in net.split_points() {
        let h = net.head(&x, &p.name, None).unwrap();
        assert_eq!(&h.shape()[1..], p.shape.as_slice(), "{}", p.name);
        let out = net.tail(&h, &p.name, None).unwrap();
        assert_eq!(out, whole, "split at {}", p.name);
    }
    assert_eq!(net.split_point("stage7").unwrap().shape, [51_376]);
    // A wrongly sized activation is an error, not a panic.
    let bad = HostTensor::zeros([1, 100]).unwrap();
    assert!(net.tail(&bad, "stage7", None).is_err());
    assert!(net
        .head(&HostTensor::zeros([1, 3, 32, 32]).unwrap(), "stem", None)
        .is_err());
}

/// The fixture's tensors with `edit` applied, and its metadata with `meta` changes.
fn edited(edit: impl FnOnce(&mut Vec<Raw>), meta: &[(&str, Option<&str>)]) -> Weights {
    let path = fixture("femtodet_seeded.safetensors");
    let mut raw = read_raw(&path);
    edit(&mut raw);
    let bytes = std::fs::read(&path).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let mut metadata: std::collections::HashMap<String, String> =
        header.metadata().clone().unwrap_or_default();
    for (k, v) in meta {
        match v {
            Some(v) => metadata.insert(k.to_string(), v.to_string()),
            None => metadata.remove(*k),
        };
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = raw
        .iter()
        .map(|t| {
            let v = safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.bytes);
            (t.name.clone(), v.unwrap())
        })
        .collect();
    let out = safetensors::serialize(views, Some(metadata)).unwrap();
    Weights::from_bytes(out, "edited").unwrap()
}

fn load_err(w: &Weights) -> String {
    let meta = SplitMetadata::from_weights(w).unwrap();
    let e: FemtoLoadError = FemtoDet::load(CpuBackend::new(1).unwrap(), w, &meta)
        .err()
        .expect("an error");
    e.to_string()
}

#[test]
fn bad_checkpoints_are_clear_errors() {
    let missing = "backbone.layer4.1.conv.1.bn2.running_var";
    let w = edited(|r| r.retain(|t| t.name != missing), &[]);
    let e = load_err(&w);
    assert!(e.contains(missing), "{e}");

    let w = edited(
        |r| {
            let t = r
                .iter_mut()
                .find(|t| t.name == "neck.lateral_convs.1.conv.weight")
                .unwrap();
            t.shape = vec![64, 12, 2, 1];
        },
        &[],
    );
    let e = load_err(&w);
    assert!(
        e.contains("neck.lateral_convs.1.conv.weight") && e.contains("[64, 24, 1, 1]"),
        "{e}"
    );

    let w = edited(|_| {}, &[("arch", Some("yolox_s"))]);
    let e = load_err(&w);
    assert!(
        e.contains("unknown architecture") && e.contains("yolox_s"),
        "{e}"
    );

    let w = edited(|_| {}, &[("class_names", Some(r#"["a", "b"]"#))]);
    assert!(load_err(&w).contains("2 classes"));

    let w = edited(|_| {}, &[("input_size", Some("400"))]);
    assert!(load_err(&w).contains("input_size"));

    let w = edited(
        |r| {
            let mut extra = r[0].bytes.clone();
            extra.truncate(4);
            r.push(Raw {
                name: "backbone.layer8.0.conv.0.conv.weight".into(),
                dtype: Dtype::F32,
                shape: vec![1],
                bytes: extra,
            });
        },
        &[],
    );
    let e = load_err(&w);
    assert!(e.contains("layer8") && e.contains("does not use"), "{e}");

    // Without the family metadata, the tensor names still tell FemtoDet.
    let w = edited(|_| {}, &[("family", None)]);
    let net = load_net(CpuBackend::new(1).unwrap(), &w, &NetOptions::default()).unwrap();
    assert_eq!(net.family().name(), "femtodet");
    // ema_ copies are ignored.
    let w = edited(
        |r| {
            let src = r
                .iter()
                .find(|t| t.name == "backbone.conv1.conv.weight")
                .unwrap();
            let copy = Raw {
                name: "ema_backbone_conv1_conv_weight".into(),
                dtype: src.dtype,
                shape: src.shape.clone(),
                bytes: src.bytes.clone(),
            };
            r.push(copy);
        },
        &[],
    );
    assert!(FemtoDet::load(CpuBackend::new(1).unwrap(), &w, &SplitMetadata::default()).is_ok());
}
