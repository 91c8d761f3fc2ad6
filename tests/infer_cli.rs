//! `splitstream infer` end to end: the binary on the reference checkpoint and images.

use std::path::Path;
use std::process::Command;

use splitstream_testkit::reference_dir;

fn infer(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_splitstream"))
        .arg("infer")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn infer_on_a_preprocessed_tensor_writes_the_reference_logits() {
    let Some(dir) = reference_dir("infer_tensor") else {
        return;
    };
    let tmp = std::env::temp_dir().join(format!("splitstream-infer-cli-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let out = tmp.join("logits.safetensors");
    let weights = dir.join("vit_micro.safetensors");
    let input = dir.join("vit_micro.expected.safetensors");
    let o = infer(&[
        "--weights".as_ref(),
        weights.as_os_str(),
        "--heads".as_ref(),
        "4".as_ref(),
        "--input".as_ref(),
        input.as_os_str(),
        "--output".as_ref(),
        out.as_os_str(),
        "--topk".as_ref(),
        "3".as_ref(),
        "--json".as_ref(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let items = report["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["top"].as_array().unwrap().len(), 3);

    let read = |path: &Path, name: &str| {
        let w = splitstream_models::weights::Weights::from_file(path).unwrap();
        let shape = w.shape(name).unwrap().to_vec();
        w.get(name, &shape).unwrap()
    };
    let got = read(&out, "logits");
    let want = read(&input, "logits");
    assert_eq!(got.shape(), want.shape());
    let scale = want.data().iter().fold(0f32, |m, v| m.max(v.abs()));
    for (a, b) in got.data().iter().zip(want.data()) {
        assert!((a - b).abs() <= 1e-4 * scale);
    }
    for (item, best) in items.iter().zip(want.topk_rows(1)) {
        assert_eq!(item["top"][0]["class"].as_u64(), Some(best[0].0 as u64));
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn infer_on_images_prints_topk_per_image() {
    let Some(dir) = reference_dir("infer_images") else {
        return;
    };
    let weights = dir.join("deit_tiny_patch16_224.safetensors");
    let (a, c) = (dir.join("astronaut.png"), dir.join("chelsea.png"));
    let o = infer(&[
        "--weights".as_ref(),
        weights.as_os_str(),
        "--arch".as_ref(),
        "deit_tiny_patch16_224".as_ref(),
        "--input".as_ref(),
        a.as_os_str(),
        "--input".as_ref(),
        c.as_os_str(),
        "--topk".as_ref(),
        "2".as_ref(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("astronaut.png") && text.contains("chelsea.png"),
        "{text}"
    );
    assert_eq!(text.matches(" 1. class").count(), 2, "{text}");
    assert_eq!(text.matches(" 2. class").count(), 2, "{text}");
}

#[test]
fn infer_with_a_wrong_architecture_fails_with_one_clear_line() {
    let Some(dir) = reference_dir("infer_wrong_arch") else {
        return;
    };
    let weights = dir.join("vit_micro.safetensors");
    let input = dir.join("astronaut.png");
    let o = infer(&[
        "--weights".as_ref(),
        weights.as_os_str(),
        "--arch".as_ref(),
        "deit_tiny_patch16_224".as_ref(),
        "--input".as_ref(),
        input.as_os_str(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("error: ") && err.contains("--arch"),
        "{err}"
    );
}
