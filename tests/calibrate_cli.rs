//! `splitstream calibrate` end to end on the reference ViT-micro and a handful of the
//! shipped demo photos: the written bottleneck loads, the report has a row per rank x
//! quantization, and bad arguments give clear errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use splitstream_testkit::reference_dir;

use splitstream_models::backend::cpu::CpuBackend;
use splitstream_models::bottleneck::Bottleneck;
use splitstream_models::split::SplitMetadata;
use splitstream_models::vit::SplitModel;
use splitstream_models::vit::VitOptions;
use splitstream_models::weights::Weights;

/// A fresh folder holding the first `n` demo test images.
fn photos(test: &str, n: usize) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "splitstream-calibrate-{test}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("nested")).unwrap();
    let files = splitstream_testkit::demo_images(&splitstream_testkit::demo_dir().join("test"));
    for (i, f) in files.iter().take(n).enumerate() {
        // Half in a subfolder: the search is recursive.
        let to = if i % 2 == 0 {
            dir.join(f.file_name().unwrap())
        } else {
            dir.join("nested").join(f.file_name().unwrap())
        };
        std::fs::copy(f, to).unwrap();
    }
    std::fs::write(dir.join("notes.txt"), "not an image").unwrap();
    dir
}

fn calibrate(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_splitstream"))
        .arg("calibrate")
        .args(args)
        .output()
        .unwrap()
}

fn os(s: &str) -> &std::ffi::OsStr {
    s.as_ref()
}

#[test]
fn calibrate_writes_a_loadable_bottleneck_and_reports_every_rank_and_quantization() {
    let Some(dir) = reference_dir("calibrate_cli") else {
        return;
    };
    let images = photos("ok", 6);
    let out = images.join("bottleneck.safetensors");
    let split = images.join("split.safetensors");
    let weights = dir.join("vit_micro.safetensors");
    let common = |o: &Path, extra: &[&std::ffi::OsStr]| {
        let mut a: Vec<&std::ffi::OsStr> = vec![
            os("--weights"),
            weights.as_os_str(),
            os("--heads"),
            os("4"),
            os("--split"),
            os("2"),
            os("--rank"),
            os("16,4"),
            os("--images"),
            images.as_os_str(),
            os("--holdout"),
            os("2"),
            os("-o"),
            o.as_os_str(),
        ];
        a.extend_from_slice(extra);
        calibrate(&a)
    };
    let o = common(&out, &[os("--json")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["type"], "setup");
    assert_eq!(lines[0]["calibration_images"], 4);
    assert_eq!(lines[0]["holdout_images"], 2);
    let rows: Vec<&serde_json::Value> = lines.iter().filter(|l| l["type"] == "row").collect();
    // (no bottleneck, rank 16, rank 4) x (f32, 8, 4, 2 bit)
    assert_eq!(rows.len(), 12);
    for row in &rows {
        assert_eq!(row["frames"], 2);
        let agree = row["top1_agreement"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&agree));
        assert!(row["bytes_per_frame"].as_f64().unwrap() > 0.0);
    }
    // The raw activation sent losslessly is the unsplit model exactly.
    assert_eq!(rows[0]["rank"], serde_json::Value::Null);
    assert_eq!(rows[0]["top1_agreement"], 1.0);
    assert!((rows[0]["logit_cosine"].as_f64().unwrap() - 1.0).abs() < 1e-9);
    // A narrower code costs fewer bytes; fewer bits cost fewer bytes.
    let bytes = |i: usize| rows[i]["bytes_per_frame"].as_f64().unwrap();
    assert!(bytes(4) < bytes(0) && bytes(8) < bytes(4), "{rows:?}");
    assert!(bytes(9) < bytes(8) && bytes(11) < bytes(10), "{rows:?}");
    assert_eq!(
        rows[4]["explained_variance"].as_f64().map(|v| v <= 1.0),
        Some(true)
    );

    // The file is the first rank's linear bottleneck with its split and rank.
    let bytes_out = std::fs::read(&out).unwrap();
    let meta = SplitMetadata::from_safetensors(&bytes_out).unwrap();
    assert_eq!((meta.split, meta.rank), (Some(2), Some(16)));
    let w = Weights::from_bytes(bytes_out, "out").unwrap();
    let b = Bottleneck::load(&CpuBackend::new(1).unwrap(), &w, "bottleneck")
        .unwrap()
        .unwrap();
    assert_eq!((b.input_channels(), b.code_channels()), (64, 16));

    // --with-model: a split checkpoint the split model loads as is, at the metadata's point.
    let o = common(&split, &[os("--with-model")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("bytes/frame") && table.contains("8-bit"),
        "{table}"
    );
    assert_eq!(
        table
            .lines()
            .filter(|l| l.contains("-bit") || l.contains(" f32 "))
            .count(),
        12,
        "{table}"
    );
    let model = SplitModel::from_file(
        CpuBackend::new(1).unwrap(),
        &split,
        &VitOptions::default(),
        None,
    )
    .unwrap();
    assert_eq!(model.point(), 2);
    assert_eq!(model.code_shape(1), vec![1, 197, 16]);
    let _ = std::fs::remove_dir_all(&images);
}

#[test]
fn calibrate_refuses_bad_arguments_with_clear_errors() {
    let Some(dir) = reference_dir("calibrate_cli_errors") else {
        return;
    };
    let images = photos("bad", 3);
    let empty = images.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = images.join("b.safetensors");
    let weights = dir.join("vit_micro.safetensors");
    let run = |split: &str, rank: &str, imgs: &Path, holdout: &str| {
        let o = calibrate(&[
            os("--weights"),
            weights.as_os_str(),
            os("--heads"),
            os("4"),
            os("--split"),
            os(split),
            os("--rank"),
            os(rank),
            os("--images"),
            imgs.as_os_str(),
            os("--holdout"),
            os(holdout),
            os("-o"),
            out.as_os_str(),
        ]);
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let e = run("5", "8", &images, "1");
    assert!(
        e.contains("--split 5 is out of range") && e.contains("0..=4"),
        "{e}"
    );
    let e = run("2", "65", &images, "1");
    assert!(e.contains("--rank 65") && e.contains("64 channels"), "{e}");
    let e = run("2", "0", &images, "1");
    assert!(e.contains("not a positive whole number"), "{e}");
    let e = run("2", "8", &empty, "1");
    assert!(e.contains("no images found"), "{e}");
    let e = run("2", "8", &images, "3");
    assert!(e.contains("--holdout 3 of 3 images"), "{e}");
    assert!(!out.exists());
    let _ = std::fs::remove_dir_all(&images);
}
