//! SpikePoint against its PyTorch/spikingjelly twin (`python/spikepoint.py`) on seeded
//! checkpoints (`python/make_spikepoint_fixture.py`): spikes identical at every layer and
//! timestep, logits within 1e-5, on the gather-and-add path and on the dense path; the
//! same for the ANN counterpart (ReLU). Also every split point's head + tail.

use std::path::PathBuf;

use splitstream_models::backend::cpu::CpuBackend;
use splitstream_models::net::{load_net, Family, NetOptions, Output};
use splitstream_models::spikepoint::{SpikePointNet, Trace};
use splitstream_models::tensor::HostTensor;
use splitstream_models::weights::Weights;

fn fixture(name: &str) -> Weights {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/spikepoint")
        .join(name);
    Weights::from_file(&path).expect("fixture present")
}

fn shape_of(w: &Weights, name: &str) -> Vec<usize> {
    w.shape(name).expect("tensor").to_vec()
}

fn check(model: &str, gather: bool) {
    let weights = fixture(&format!("{model}.safetensors"));
    let expected = fixture(&format!("{model}_expected.safetensors"));
    let mut net =
        SpikePointNet::load(CpuBackend::new(1).expect("cpu backend"), &weights).expect("loads");
    net.set_gather(gather);
    let spiking = model == "snn";
    let points = expected
        .get("points", &shape_of(&expected, "points"))
        .expect("points");
    let logits = expected
        .get("logits", &shape_of(&expected, "logits"))
        .expect("logits");
    let batch = points.shape()[0];
    let per_item = points.numel() / batch;
    let classes = logits.shape()[1];
    for b in 0..batch {
        let mut trace = Trace::default();
        let out = net
            .forward_traced(&points.data()[b * per_item..(b + 1) * per_item], &mut trace)
            .expect("runs");
        for (name, got) in &trace.layers {
            let want = expected
                .get(name, &shape_of(&expected, name))
                .expect("layer");
            let n = want.numel() / batch;
            let want = &want.data()[b * n..(b + 1) * n];
            assert_eq!(
                got.len(),
                want.len(),
                "{model} item {b} layer {name}: length"
            );
            if spiking && *name != "res" {
                let diff = got.iter().zip(want).filter(|(g, w)| g != w).count();
                assert_eq!(
                    diff, 0,
                    "{model} item {b} layer {name}: {diff} spikes differ"
                );
            } else {
                let err = got
                    .iter()
                    .zip(want)
                    .map(|(g, w)| (g - w).abs())
                    .fold(0.0f32, f32::max);
                assert!(
                    err <= 1e-5,
                    "{model} item {b} layer {name}: max error {err}"
                );
            }
        }
        assert_eq!(trace.layers.len(), 6, "every layer traced");
        let want = &logits.data()[b * classes..(b + 1) * classes];
        let err = out
            .iter()
            .zip(want)
            .map(|(g, w)| (g - w).abs())
            .fold(0.0f32, f32::max);
        assert!(err <= 1e-5, "{model} item {b}: logits differ by {err}");
    }
}

#[test]
fn snn_spikes_and_logits_match_pytorch_gather_and_add() {
    check("snn", true);
}

#[test]
fn snn_spikes_and_logits_match_pytorch_dense() {
    check("snn", false);
}

#[test]
fn ann_counterpart_matches_pytorch() {
    check("ann", false);
}

#[test]
fn every_split_point_gives_the_forward_answer() {
    let weights = fixture("snn.safetensors");
    let expected = fixture("snn_expected.safetensors");
    let net = load_net(
        CpuBackend::new(1).expect("cpu backend"),
        &weights,
        &NetOptions::default(),
    )
    .expect("loads");
    assert_eq!(net.family(), Family::SpikePoint);
    let points = expected
        .get("points", &shape_of(&expected, "points"))
        .expect("points");
    let Output::Logits(full) = net.forward(&points, None).expect("forward") else {
        panic!("class logits expected");
    };
    let names: Vec<String> = net.split_points().iter().map(|p| p.name.clone()).collect();
    assert_eq!(names, ["lif1", "pool", "res"]);
    for p in net.split_points() {
        let h = net.head(&points, &p.name, None).expect("head");
        let mut want = vec![points.shape()[0]];
        want.extend_from_slice(&p.shape);
        assert_eq!(h.shape(), &want[..], "{}", p.name);
        if p.name != "res" {
            assert!(
                h.data().iter().all(|&v| v == 0.0 || v == 1.0),
                "{} is spikes",
                p.name
            );
        }
        let Output::Logits(split) = net.tail(&h, &p.name, None).expect("tail") else {
            panic!("class logits expected");
        };
        assert_eq!(split.data(), full.data(), "split at {}", p.name);
    }
    // A wrong shape is refused, not run.
    let bad = HostTensor::zeros(vec![1, 3, 4]).expect("tensor");
    assert!(net.forward(&bad, None).is_err());
    assert!(net.tail(&bad, "pool", None).is_err());
}
