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

/// `python/export_timm.py deit_tiny_patch16_224 ... --seed 3 --dtype f16 --model-args
/// depth=1,embed_dim=16,num_heads=2,img_size=32`: a one-block DeiT in timm's names with
/// the script's metadata, ImageNet's class names among it (82 KB).
fn timm_export_fixture() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/timm_export_fixture.safetensors")
}

#[test]
fn a_timm_export_prints_imagenet_class_names() {
    let weights = timm_export_fixture();
    let image = splitstream_testkit::demo_dir().join("test/0000.jpg");
    let o = infer(&[
        "--weights".as_ref(),
        weights.as_os_str(),
        "--input".as_ref(),
        image.as_os_str(),
        "--topk".as_ref(),
        "1000".as_ref(),
        "--backend".as_ref(),
        "cpu".as_ref(),
        "--json".as_ref(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["classes"], 1000);
    assert_eq!(report["class_names"], "metadata class_names");
    let top = report["items"][0]["top"].as_array().unwrap();
    assert_eq!(top.len(), 1000);
    let label = |class: u64| {
        top.iter()
            .find(|t| t["class"] == class)
            .and_then(|t| t["label"].as_str())
            .unwrap_or_else(|| panic!("class {class} has no label"))
            .to_owned()
    };
    // ImageNet's names, by index, as timm ships them (the first lemma).
    assert_eq!(label(0), "tench");
    assert_eq!(label(1), "goldfish");
    assert_eq!(label(574), "golf ball");
    assert_eq!(label(999), "toilet tissue");

    // Text: the name after the numbers; --labels overrides the metadata and must
    // have as many names as classes.
    let o = infer(&[
        "--weights".as_ref(),
        weights.as_os_str(),
        "--input".as_ref(),
        image.as_os_str(),
        "--topk".as_ref(),
        "1000".as_ref(),
        "--backend".as_ref(),
        "cpu".as_ref(),
    ]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let golf = text
        .lines()
        .find(|l| l.contains("class   574 "))
        .expect("class 574 listed");
    assert!(golf.ends_with("  golf ball"), "{golf}");

    let tmp = std::env::temp_dir().join(format!("splitstream-labels-cli-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let few = tmp.join("three.txt");
    std::fs::write(&few, "a\nb\nc\n").unwrap();
    let o = infer(&[
        "--weights".as_ref(),
        weights.as_os_str(),
        "--input".as_ref(),
        image.as_os_str(),
        "--labels".as_ref(),
        few.as_os_str(),
        "--backend".as_ref(),
        "cpu".as_ref(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("3 class names") && err.contains("1000 classes"),
        "{err}"
    );
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// `--backend auto` on a machine without a desktop session (no XDG_RUNTIME_DIR, as on
/// servers, containers and CI): GPU probing prints nothing that looks like an error,
/// and one line says what auto chose.
#[test]
fn backend_auto_without_a_desktop_session_prints_one_info_line_and_no_error() {
    let weights = splitstream_testkit::demo_dir().join("demo_vit.safetensors");
    let image = splitstream_testkit::demo_dir().join("test/0000.jpg");
    let o = Command::new(env!("CARGO_BIN_EXE_splitstream"))
        .arg("infer")
        .arg("--weights")
        .arg(&weights)
        .arg("--input")
        .arg(&image)
        .args(["--topk", "1", "--backend", "auto", "--threads", "1"])
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("WAYLAND_DISPLAY")
        .env_remove("DISPLAY")
        .env_remove("NODEVICE_SELECT")
        .env_remove("MESA_VK_DEVICE_SELECT")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        !stderr.to_lowercase().contains("error") && !stderr.contains("XDG_RUNTIME_DIR"),
        "stderr:\n{stderr}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one info line, got:\n{stderr}");
    assert!(
        lines[0].starts_with("backend auto: wgpu on ")
            || lines[0].starts_with("backend auto: cpu (no hardware GPU"),
        "{stderr}"
    );
    // The demo model's class names, from its metadata: 0000.jpg is a crop of coins.
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("  coins"), "{stdout}");
}

/// FemtoDet's seeded fixture: the letterboxed astronaut written as a PNG (416x416, so
/// the letterbox is the identity) gives the reference's raw maps and boxes.
#[test]
fn infer_on_a_detector_writes_its_maps_and_boxes() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tests/fixtures/femtodet");
    let expected = std::fs::read(fixtures.join("femtodet_seeded.expected.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&expected).unwrap();
    let chw = st.tensor("input_u8").unwrap().data().to_vec();
    let plane = 416 * 416;
    let img = image::RgbImage::from_fn(416, 416, |x, y| {
        let i = (y * 416 + x) as usize;
        image::Rgb([chw[i], chw[plane + i], chw[2 * plane + i]])
    });
    let tmp = std::env::temp_dir().join(format!("splitstream-infer-det-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let png = tmp.join("astronaut.png");
    img.save(&png).unwrap();
    let out = tmp.join("dets.safetensors");
    let weights = fixtures.join("femtodet_seeded.safetensors");
    let o = infer(&[
        "--weights".as_ref(),
        weights.as_os_str(),
        "--input".as_ref(),
        png.as_os_str(),
        "--output".as_ref(),
        out.as_os_str(),
        "--backend".as_ref(),
        "cpu".as_ref(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let line: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let dets = line["detections"].as_array().unwrap();

    let file = std::fs::read(&out).unwrap();
    let got = safetensors::SafeTensors::deserialize(&file).unwrap();
    let f32s = |st: &safetensors::SafeTensors<'_>, name: &str| -> Vec<f32> {
        st.tensor(name)
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    };
    for name in ["head.cls", "head.reg", "head.obj"] {
        let (a, b) = (f32s(&got, name), f32s(&st, name));
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = a
            .iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(diff <= 1e-4 * scale, "{name}: {diff}");
    }
    let labels = got.tensor("labels").unwrap();
    assert_eq!(labels.dtype(), safetensors::Dtype::I64);
    let n = labels.shape()[0];
    assert_eq!(n, st.tensor("labels").unwrap().shape()[0]);
    assert_eq!(labels.data(), st.tensor("labels").unwrap().data());
    assert_eq!(got.tensor("boxes").unwrap().shape(), [n, 4]);
    assert_eq!(dets.len(), n);
    let (boxes, want) = (f32s(&got, "boxes"), f32s(&st, "boxes_input"));
    for (a, b) in boxes.iter().zip(&want) {
        assert!((a - b).abs() < 1e-2, "{a} vs {b}");
    }

    // A bad image is a clear error, not a panic.
    let bad = tmp.join("bad.png");
    std::fs::write(&bad, b"not a png").unwrap();
    let o = infer(&[
        "--weights".as_ref(),
        weights.as_os_str(),
        "--input".as_ref(),
        bad.as_os_str(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("bad.png"));
    let _ = std::fs::remove_dir_all(&tmp);
}
