//! `splitstream evaluate` end to end on the shipped demo model and test images.

use std::process::Command;

use splitstream_testkit::demo_dir;

fn evaluate(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_splitstream"))
        .arg("evaluate")
        .args(args)
        .output()
        .expect("the splitstream binary runs")
}

fn rows(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

#[test]
fn evaluate_reports_every_route_and_a_lossless_raw_split_agrees_with_local() {
    let dir = demo_dir();
    let weights = dir.join("demo_vit.safetensors");
    let split = dir.join("demo_vit_bottlefit.safetensors");
    let images = dir.join("test");
    let out = evaluate(&[
        "--weights",
        weights.to_str().unwrap(),
        "--split-model",
        split.to_str().unwrap(),
        "--raw-split",
        "1",
        "--codes",
        "f32,4",
        "--jpeg",
        "75",
        "--images",
        images.to_str().unwrap(),
        "--limit",
        "6",
        "--threads",
        "1",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = rows(&out.stdout);
    let (rows, classes): (Vec<_>, Vec<_>) = all.into_iter().partition(|r| r.get("mode").is_some());
    // local + one JPEG + 2 split models x 2 codes
    assert_eq!(rows.len(), 6, "{rows:#?}");
    // Then the local model per true class, named from the checkpoint's metadata.
    assert!(!classes.is_empty());
    let images: u64 = classes.iter().map(|c| c["images"].as_u64().unwrap()).sum();
    assert_eq!(images, 6, "{classes:#?}");
    let demo_names = [
        "astronaut",
        "brick",
        "chelsea",
        "coffee",
        "coins",
        "grass",
        "gravel",
        "hubble_deep_field",
        "immunohistochemistry",
        "rocket",
    ];
    for c in &classes {
        let class = c["class"].as_u64().unwrap() as usize;
        assert_eq!(c["label"], demo_names[class], "{c}");
    }
    for r in &rows {
        assert_eq!(r["frames"], 6);
        assert!(r["accuracy_pct"].is_f64(), "labels.csv gives accuracy: {r}");
    }
    assert_eq!(rows[0]["mode"], "local");
    assert_eq!(rows[0]["agreement_pct"], 100.0);
    assert_eq!(rows[0]["bytes_per_frame"], 0.0);
    let jpeg = &rows[1];
    assert_eq!(jpeg["route"], "JPEG q75");
    let jpeg_bytes = jpeg["bytes_per_frame"].as_f64().unwrap();
    assert!(jpeg_bytes > 1000.0, "{jpeg}");
    // The raw split through the lossless codec is the local model, bit for bit.
    let raw_f32 = &rows[2];
    assert_eq!(raw_f32["code"], "f32");
    assert_eq!(raw_f32["agreement_pct"], 100.0);
    assert_eq!(raw_f32["accuracy_pct"], rows[0]["accuracy_pct"]);
    // 50 tokens x 192 f32 values, zstd on byte planes: well above 20 KB.
    assert!(raw_f32["bytes_per_frame"].as_f64().unwrap() > 20_000.0);
    // The trained bottleneck at 4 bits: 50 x 32 codes in half a byte each, plus
    // per-channel scales and the frame header; a fraction of the JPEG.
    let bottlefit_4 = &rows[5];
    assert_eq!(bottlefit_4["code"], "4-bit");
    let b4 = bottlefit_4["bytes_per_frame"].as_f64().unwrap();
    assert!(b4 > 800.0 && b4 < jpeg_bytes / 3.0, "{bottlefit_4}");
}

#[test]
fn evaluate_refuses_a_bottleneck_file_without_a_split() {
    let dir = demo_dir();
    let weights = dir.join("demo_vit.safetensors");
    // The teacher has no `split` metadata and no bottleneck: a clear error, not a panic.
    let out = evaluate(&[
        "--weights",
        weights.to_str().unwrap(),
        "--bottleneck",
        weights.to_str().unwrap(),
        "--images",
        dir.join("test").to_str().unwrap(),
        "--limit",
        "1",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no metadata `split`"), "{err}");
}

#[test]
fn rust_accuracy_on_the_demo_test_set_equals_pytorchs_at_export() {
    // python/train_bottlefit.py measured the exported (f16-rounded) models on the same
    // 300 images and wrote the figures to training.json; the Rust pipeline
    // (preprocessing, ViT, bottleneck, lossless codec) must count the same hits.
    let dir = demo_dir();
    let training: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("training.json")).expect("training.json ships"),
    )
    .expect("training.json is JSON");
    let out = evaluate(&[
        "--weights",
        dir.join("demo_vit.safetensors").to_str().unwrap(),
        "--split-model",
        dir.join("demo_vit_bottlefit.safetensors").to_str().unwrap(),
        "--codes",
        "f32",
        "--jpeg",
        "90",
        "--images",
        dir.join("test").to_str().unwrap(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = rows(&out.stdout);
    let accuracy = |i: usize| rows[i]["accuracy_pct"].as_f64().unwrap();
    let expected = |key: &str| training["test_accuracy"][key].as_f64().unwrap();
    // One image is 1/3 of a point; equal counts give equal percentages to 1e-9.
    assert!(
        (accuracy(0) - expected("teacher")).abs() < 1e-9,
        "{rows:#?}"
    );
    assert_eq!(rows[2]["code"], "f32");
    assert!(
        (accuracy(2) - expected("bottlefit_32bit")).abs() < 1e-9,
        "{rows:#?}"
    );
}

/// A detector on a one-image set whose ground truth is the reference's own boxes: local
/// and lossless splits score mAP 100 (every box found where the truth is), every route
/// has a row with its bytes, and the packed taps of stage7 weigh what 51,376 floats do.
#[test]
fn evaluate_on_a_detector_reports_map_per_route() {
    let fixtures =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tests/fixtures/femtodet");
    let expected = std::fs::read(fixtures.join("femtodet_seeded.expected.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&expected).unwrap();
    let chw = st.tensor("input_u8").unwrap().data().to_vec();
    let plane = 416 * 416;
    let img = image::RgbImage::from_fn(416, 416, |x, y| {
        let i = (y * 416 + x) as usize;
        image::Rgb([chw[i], chw[plane + i], chw[2 * plane + i]])
    });
    let tmp = std::env::temp_dir().join(format!("splitstream-eval-det-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    img.save(tmp.join("a.png")).unwrap();
    let f32s = |name: &str| -> Vec<f32> {
        st.tensor(name)
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    };
    let boxes = f32s("boxes_input");
    let labels: Vec<i64> = st
        .tensor("labels")
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let annotations: Vec<serde_json::Value> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let b = &boxes[i * 4..i * 4 + 4];
            serde_json::json!({"id": i, "image_id": 1, "category_id": l,
                "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]})
        })
        .collect();
    let coco = serde_json::json!({
        "images": [{"id": 1, "file_name": "a.png", "width": 416, "height": 416}],
        "annotations": annotations,
        "categories": [],
    });
    std::fs::write(tmp.join("annotations.json"), coco.to_string()).unwrap();
    let weights = fixtures.join("femtodet_seeded.safetensors");
    let out = evaluate(&[
        "--weights",
        weights.to_str().unwrap(),
        "--raw-split",
        "3",
        "--raw-split",
        "7",
        "--codes",
        "f32,8",
        "--jpeg",
        "75",
        "--images",
        tmp.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = rows(&out.stdout);
    // local, JPEG q75, 2 points x 2 codes.
    assert_eq!(rows.len(), 6, "{rows:?}");
    assert_eq!(rows[0]["mode"], "local");
    assert!((rows[0]["map50_pct"].as_f64().unwrap() - 100.0).abs() < 1e-9);
    assert!(rows[0]["map50_95_pct"].as_f64().unwrap() > 99.0);
    let stage7_f32 = rows
        .iter()
        .find(|r| r["route"] == "stage7, no bottleneck" && r["code"] == "f32")
        .unwrap();
    assert!((stage7_f32["map50_pct"].as_f64().unwrap() - 100.0).abs() < 1e-9);
    let bytes = stage7_f32["bytes_per_frame"].as_f64().unwrap();
    assert!(bytes > 1000.0 && bytes < 51_376.0 * 4.0 + 200.0, "{bytes}");
    for r in &rows[1..] {
        assert!(r["bytes_per_frame"].as_f64().unwrap() > 0.0);
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
