//! The fallback classifiers against scikit-learn: the three shipped models
//! (assets/demo/fallback, from python/train_fallback.py) on the demo test set's features,
//! with scikit-learn's predictions, kNN and forest probabilities and SVM decision
//! values recorded in a fixture by the same script. No Python here.

use std::collections::HashMap;
use std::path::PathBuf;

use safetensors::{Dtype, SafeTensors};
use splitstream_models::classic::{ClassicKind, ClassicModel};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct Fixture {
    f32s: HashMap<String, (Vec<usize>, Vec<f32>)>,
    f64s: HashMap<String, (Vec<usize>, Vec<f64>)>,
    i64s: HashMap<String, Vec<i64>>,
}

fn fixture() -> Fixture {
    let bytes = std::fs::read(root().join("models/tests/data/classic_fixture.safetensors"))
        .expect("the committed fixture");
    let st = SafeTensors::deserialize(&bytes).expect("fixture parses");
    let mut f = Fixture {
        f32s: HashMap::new(),
        f64s: HashMap::new(),
        i64s: HashMap::new(),
    };
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let data = view.data();
        match view.dtype() {
            Dtype::F32 => {
                let v = data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                f.f32s.insert(name, (shape, v));
            }
            Dtype::F64 => {
                let v = data
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                f.f64s.insert(name, (shape, v));
            }
            Dtype::I64 => {
                let v = data
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                f.i64s.insert(name, v);
            }
            other => panic!("unexpected dtype {other:?} for {name}"),
        }
    }
    f
}

fn model(kind: &str) -> ClassicModel {
    let path = root().join(format!("assets/demo/fallback/{kind}.safetensors"));
    ClassicModel::from_file(&path).unwrap_or_else(|e| panic!("{e}"))
}

/// Predicts every fixture row one at a time (sequential and on the pool) and as a
/// batch; all three must agree, and the labels must be scikit-learn's.
fn check_predictions(kind: &str) -> (ClassicModel, Vec<Vec<f64>>) {
    let f = fixture();
    let (shape, x) = &f.f32s["x"];
    let (n, d) = (shape[0], shape[1]);
    assert!(n >= 200, "the fixture has {n} samples");
    let m = model(kind);
    assert_eq!(m.kind().as_str(), kind);
    assert_eq!(m.n_features(), d);
    let expected = &f.i64s[&format!("{kind}.pred")];
    let batch = m.predict_batch(x).unwrap();
    let mut scores = Vec::new();
    for i in 0..n {
        let row = &x[i * d..(i + 1) * d];
        let seq = m.predict_sequential(row).unwrap();
        let par = m.predict(row).unwrap();
        assert_eq!(seq, par, "{kind} sample {i}: the pool changed the answer");
        assert_eq!(seq, batch[i], "{kind} sample {i}: batch differs");
        assert_eq!(
            seq.label as i64, expected[i],
            "{kind} sample {i}: ours {} scikit-learn {}",
            seq.label, expected[i]
        );
        scores.push(seq.scores);
    }
    (m, scores)
}

#[test]
fn knn_matches_scikit_learn_exactly() {
    let (m, scores) = check_predictions("knn");
    let f = fixture();
    let (shape, proba) = &f.f64s["knn.proba"];
    let c = shape[1];
    assert_eq!(m.classes().len(), c);
    for (i, s) in scores.iter().enumerate() {
        // Vote fractions: the same neighbours, so the same numbers to the bit.
        assert_eq!(s.as_slice(), &proba[i * c..(i + 1) * c], "sample {i}");
    }
}

#[test]
fn random_forest_matches_scikit_learn_exactly() {
    let (m, scores) = check_predictions("random_forest");
    assert_eq!(m.kind(), ClassicKind::RandomForest);
    let f = fixture();
    let (shape, proba) = &f.f64s["random_forest.proba"];
    let c = shape[1];
    for (i, s) in scores.iter().enumerate() {
        // Same leaves, same sum order, same division: bit for bit.
        assert_eq!(s.as_slice(), &proba[i * c..(i + 1) * c], "sample {i}");
    }
}

#[test]
fn linear_svc_matches_scikit_learn() {
    let (_, scores) = check_predictions("linear_svc");
    let f = fixture();
    let (shape, decision) = &f.f64s["linear_svc.decision"];
    let c = shape[1];
    let mut worst = 0.0f64;
    for (i, s) in scores.iter().enumerate() {
        for (a, b) in s.iter().zip(&decision[i * c..(i + 1) * c]) {
            worst = worst.max((a - b).abs() / b.abs().max(1.0));
        }
    }
    // scikit-learn's dot products go through BLAS (its own summation order).
    assert!(worst < 1e-12, "decision values differ by {worst:e}");
}

#[test]
fn the_fixture_labels_name_the_demo_classes() {
    let m = model("random_forest");
    assert_eq!(m.classes(), (0..10).collect::<Vec<_>>().as_slice());
    assert_eq!(m.class_names().get(4).map(String::as_str), Some("coins"));
    let logits = {
        let f = fixture();
        let (shape, x) = &f.f32s["x"];
        let p = m.predict(&x[..shape[1]]).unwrap();
        let l = m.logits(&p, 10);
        assert_eq!(l.len(), 10);
        (p.label, l)
    };
    // The logits' first argmax is the prediction.
    let (label, l) = logits;
    let top = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    assert_eq!(l.iter().position(|&v| v == top), Some(label));
}
