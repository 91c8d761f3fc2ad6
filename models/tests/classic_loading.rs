//! Loading a fallback classifier is strict: every malformed file is an error that
//! names the problem, never a panic, and nothing is allocated from an unchecked count.

use std::collections::HashMap;

use safetensors::tensor::TensorView;
use safetensors::Dtype;
use splitstream_models::classic::{ClassicError, ClassicKind, ClassicModel};

/// A tensor for the test files: dtype, shape, little-endian bytes.
type T = (Dtype, Vec<usize>, Vec<u8>);

fn f64s(shape: &[usize], v: &[f64]) -> T {
    (
        Dtype::F64,
        shape.to_vec(),
        v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    )
}
fn f32s(shape: &[usize], v: &[f32]) -> T {
    (
        Dtype::F32,
        shape.to_vec(),
        v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    )
}
fn i64s(v: &[i64]) -> T {
    (
        Dtype::I64,
        vec![v.len()],
        v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    )
}

fn meta(kind: &str, hyper: &str) -> HashMap<String, String> {
    [
        ("format", "splitstream-classic/1"),
        ("kind", kind),
        ("classes", "[0, 1, 2]"),
        ("class_names", r#"["a", "b", "c"]"#),
        ("hyperparameters", hyper),
        ("features", r#"{"model": "m", "split": 1, "pool": "mean"}"#),
        ("n_features", "2"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn file(tensors: &[(&str, T)], meta: HashMap<String, String>) -> Vec<u8> {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, (d, s, b))| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::tensor::serialize(views, Some(meta)).unwrap()
}

/// One tree: x0 <= 0.5 ? (x1 <= 1.5 ? class 0 : class 1) : class 2.
fn forest_tensors() -> Vec<(&'static str, T)> {
    vec![
        ("forest.offsets", i64s(&[0, 5])),
        ("forest.left", i64s(&[1, 3, -1, -1, -1])),
        ("forest.right", i64s(&[2, 4, -1, -1, -1])),
        ("forest.feature", i64s(&[0, 1, 0, 0, 0])),
        ("forest.threshold", f64s(&[5], &[0.5, 1.5, 0.0, 0.0, 0.0])),
        (
            "forest.value",
            f64s(
                &[5, 3],
                &[
                    0.4, 0.3, 0.3, 0.5, 0.5, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0,
                ],
            ),
        ),
    ]
}

fn forest_meta() -> HashMap<String, String> {
    meta("random_forest", r#"{"n_estimators": 1}"#)
}

fn knn_tensors() -> Vec<(&'static str, T)> {
    vec![
        (
            "knn.x",
            f32s(&[4, 2], &[0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 5.0, 5.0]),
        ),
        ("knn.y", i64s(&[0, 1, 1, 2])),
    ]
}

fn knn_meta(k: usize, metric: &str) -> HashMap<String, String> {
    meta(
        "knn",
        &format!(r#"{{"n_neighbors": {k}, "metric": "{metric}", "weights": "uniform"}}"#),
    )
}

fn load(bytes: &[u8]) -> Result<ClassicModel, ClassicError> {
    ClassicModel::from_bytes(bytes, "test.safetensors")
}

fn err_text(bytes: &[u8]) -> String {
    match load(bytes) {
        Ok(_) => panic!("loaded a bad file"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_small_forest_walks_its_tree_with_f32_features_and_f64_thresholds() {
    let m = load(&file(&forest_tensors(), forest_meta())).unwrap();
    assert_eq!(m.kind(), ClassicKind::RandomForest);
    assert_eq!(m.predict(&[0.5, 1.5]).unwrap().label, 0, "<= goes left");
    assert_eq!(m.predict(&[0.2, 2.0]).unwrap().label, 1);
    assert_eq!(m.predict(&[0.6, 0.0]).unwrap().label, 2);
    // 0.50000006 as f32 is above the f64 threshold 0.5: right.
    assert_eq!(
        m.predict(&[f32::from_bits(0.5f32.to_bits() + 1), 0.0])
            .unwrap()
            .label,
        2
    );
    // A leaf with equal top probabilities answers the first class.
    let mut t = forest_tensors();
    t[5] = (
        "forest.value",
        f64s(
            &[5, 3],
            &[
                0.4, 0.3, 0.3, 0.5, 0.5, 0.0, 0.0, 0.0, 1.0, 0.0, 0.5, 0.5, 0.0, 1.0, 0.0,
            ],
        ),
    );
    let m = load(&file(&t, forest_meta())).unwrap();
    assert_eq!(m.predict(&[0.0, 0.0]).unwrap().label, 1);
}

#[test]
fn knn_votes_and_breaks_count_ties_to_the_first_class() {
    let m = load(&file(&knn_tensors(), knn_meta(3, "l2"))).unwrap();
    // Nearest to (0.1, 0.1): points 0 (class 0), 1 and 2 (class 1): class 1.
    let p = m.predict(&[0.1, 0.1]).unwrap();
    assert_eq!(p.label, 1);
    assert_eq!(p.scores, vec![1.0 / 3.0, 2.0 / 3.0, 0.0]);
    // k = 2 at (0.1, 0.0): points 0 and 1, one vote each: the first class wins.
    let m = load(&file(&knn_tensors(), knn_meta(2, "l2"))).unwrap();
    assert_eq!(m.predict(&[0.1, 0.0]).unwrap().label, 0);
}

#[test]
fn malformed_files_are_errors_that_say_what_is_wrong() {
    let good = file(&forest_tensors(), forest_meta());
    assert!(err_text(&good[..good.len() - 3]).contains("not a safetensors file"));
    assert!(err_text(b"").contains("not a safetensors file"));

    let mut m = forest_meta();
    m.insert("format".into(), "something-else".into());
    assert!(err_text(&file(&forest_tensors(), m)).contains("format"));

    let mut m = forest_meta();
    m.insert("kind".into(), "svm_rbf".into());
    assert!(err_text(&file(&forest_tensors(), m)).contains("not one of knn"));

    let mut m = forest_meta();
    m.insert("classes".into(), "[2, 1, 0]".into());
    assert!(err_text(&file(&forest_tensors(), m)).contains("increasing"));

    let mut m = forest_meta();
    m.insert("n_features".into(), "99999999999".into());
    assert!(err_text(&file(&forest_tensors(), m)).contains("n_features"));

    let mut m = forest_meta();
    m.remove("features");
    assert!(err_text(&file(&forest_tensors(), m)).contains("`features`: missing"));

    let mut m = forest_meta();
    m.insert(
        "features".into(),
        r#"{"model": "m", "split": 1, "pool": "max"}"#.into(),
    );
    assert!(err_text(&file(&forest_tensors(), m)).contains("max"));
}

#[test]
fn malformed_trees_are_refused() {
    let with = |name: &str, t: T| {
        let mut v = forest_tensors();
        for e in &mut v {
            if e.0 == name {
                e.1 = t.clone();
            }
        }
        err_text(&file(&v, forest_meta()))
    };
    // A child pointing back would loop forever.
    assert!(with("forest.left", i64s(&[1, 0, -1, -1, -1])).contains("not after it"));
    assert!(with("forest.right", i64s(&[2, 4, -1, -1, 7])).contains("leaf"));
    assert!(with("forest.feature", i64s(&[0, 2, 0, 0, 0])).contains("feature 2"));
    assert!(with("forest.offsets", i64s(&[0, 6])).contains("offsets"));
    assert!(with("forest.offsets", i64s(&[0, 3, 3, 5])).contains("increase"));
    assert!(with("forest.left", i64s(&[1, 3, -1, -1])).contains("nodes"));
    assert!(with(
        "forest.threshold",
        f64s(&[5], &[f64::NAN, 1.5, 0.0, 0.0, 0.0])
    )
    .contains("NaN"));
    assert!(with("forest.value", f64s(&[5, 2], &[0.0; 10])).contains("shape"));
    assert!(with("forest.threshold", f32s(&[5], &[0.5; 5])).contains("dtype"));
    let mut v = forest_tensors();
    v.push(("scaler.mean", f64s(&[2], &[0.0, 0.0])));
    v.push(("scaler.scale", f64s(&[2], &[1.0, 1.0])));
    assert!(err_text(&file(&v, forest_meta())).contains("no scaler"));
}

#[test]
fn knn_metric_k_and_labels_are_checked() {
    assert!(err_text(&file(&knn_tensors(), knn_meta(3, "euclidean"))).contains("BLAS"));
    assert!(err_text(&file(&knn_tensors(), knn_meta(0, "l2"))).contains("n_neighbors"));
    assert!(err_text(&file(&knn_tensors(), knn_meta(5, "l2"))).contains("n_neighbors"));
    let mut t = knn_tensors();
    t[1] = ("knn.y", i64s(&[0, 1, 3, 2]));
    assert!(err_text(&file(&t, knn_meta(3, "l2"))).contains("class indices"));
    let mut t = knn_tensors();
    t[0] = (
        "knn.x",
        f32s(&[4, 2], &[0.0, f32::NAN, 1.0, 0.0, 0.0, 1.0, 5.0, 5.0]),
    );
    assert!(err_text(&file(&t, knn_meta(3, "l2"))).contains("NaN"));
    let mut t = knn_tensors();
    t.push(("scaler.mean", f64s(&[2], &[0.0, 0.0])));
    assert!(err_text(&file(&t, knn_meta(3, "l2"))).contains("together"));
}

#[test]
fn samples_are_checked_before_predicting() {
    let m = load(&file(&forest_tensors(), forest_meta())).unwrap();
    assert!(matches!(
        m.predict(&[1.0]),
        Err(ClassicError::FeatureCount {
            expected: 2,
            got: 1
        })
    ));
    assert!(matches!(
        m.predict(&[1.0, f32::NAN]),
        Err(ClassicError::NonFinite { index: 1 })
    ));
    assert!(m.predict_batch(&[1.0, 2.0, 3.0]).is_err());
}

#[test]
fn an_oversized_file_is_refused_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.safetensors");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(splitstream_models::classic::MAX_CLASSIC_BYTES + 1)
        .unwrap();
    let e = ClassicModel::from_file(&path).unwrap_err();
    assert!(e.to_string().contains("more than"), "{e}");
    let e = ClassicModel::from_file(&dir.path().join("absent.safetensors")).unwrap_err();
    assert!(e.to_string().contains("cannot read"), "{e}");
}
