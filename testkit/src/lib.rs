//! Test support shared by every crate's integration tests (a dev-dependency only).
//!
//! - **Shared data.** Reference tensors and recordings live outside the repository in
//!   `../shared` beside the workspace (override: `SPLITSTREAM_SHARED`). A test asks for
//!   what it needs ([`reference_dir`], [`events_dir`], [`shared_file`]); when it is
//!   missing the test is skipped with a printed line, except under `CI=true`, where the
//!   test fails: CI must never pass by skipping.
//! - **Optional devices and tools.** [`open_or_skip`] takes the result of opening
//!   something a machine may lack (a wgpu adapter, say) and applies the same rule;
//!   [`tool_or_skip`] does it for a program on `PATH` (ffmpeg).
//! - **The demo set.** [`demo_dir`], [`demo_images`] and [`labels`] find the shipped
//!   test photographs and their classes.
#![warn(missing_docs, unreachable_pub)]
#![forbid(unsafe_code)]

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Whether the tests run under CI (`CI=true`), where nothing may be skipped.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Skips `test` because of `why`: a printed `skip` line, or a panic under `CI=true`.
pub fn skip_or_fail(test: &str, why: impl Display) {
    if under_ci() {
        panic!("{test}: {why} (CI=true: nothing may be skipped)");
    }
    println!("skip {test}: {why}");
}

/// The workspace's root folder.
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit sits in the workspace")
        .to_path_buf()
}

/// `$SPLITSTREAM_SHARED`, else `../shared` beside the workspace. It may not exist.
pub fn shared_dir() -> PathBuf {
    match std::env::var_os("SPLITSTREAM_SHARED") {
        Some(dir) => PathBuf::from(dir),
        None => workspace_dir().join("../shared"),
    }
}

/// `relative` under [`shared_dir`] when it exists; else `None` after
/// [`skip_or_fail`].
pub fn shared_file(test: &str, relative: &str) -> Option<PathBuf> {
    let path = shared_dir().join(relative);
    if path.exists() {
        return Some(path);
    }
    skip_or_fail(
        test,
        format_args!(
            "shared data not found at {} (set SPLITSTREAM_SHARED)",
            path.display()
        ),
    );
    None
}

/// The SmolLM2-135M-Instruct Q4_1 GGUF that `python/fetch_smollm2.py` puts in
/// `$SPLITSTREAM_CACHE` (else `~/.cache/splitstream`); `None` with a skip when it is
/// absent (a failure under `CI=true`, where `.ci/run` fetches it).
pub fn smollm2_gguf(test: &str) -> Option<PathBuf> {
    let dir = match std::env::var_os("SPLITSTREAM_CACHE") {
        Some(d) => PathBuf::from(d),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/splitstream")
        }
    };
    let path = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if path.is_file() {
        return Some(path);
    }
    skip_or_fail(
        test,
        format_args!("{} is absent: run python/fetch_smollm2.py", path.display()),
    );
    None
}

/// The reference tensors folder (`shared/reference`, checked by its
/// `vit_micro.safetensors`), or `None` after [`skip_or_fail`].
pub fn reference_dir(test: &str) -> Option<PathBuf> {
    shared_file(test, "reference/vit_micro.safetensors").map(|f| parent(&f))
}

/// The reference recordings folder (`shared/events`, checked by its
/// `evt3_sample.raw`), or `None` after [`skip_or_fail`].
pub fn events_dir(test: &str) -> Option<PathBuf> {
    shared_file(test, "events/evt3_sample.raw").map(|f| parent(&f))
}

fn parent(file: &Path) -> PathBuf {
    file.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// The opened thing, or `None` after [`skip_or_fail`] with the error: for what a
/// machine may lack, such as a GPU adapter
/// (`open_or_skip(test, WgpuBackend::new(&options))`).
pub fn open_or_skip<T, E: Display>(test: &str, opened: Result<T, E>) -> Option<T> {
    match opened {
        Ok(t) => Some(t),
        Err(e) => {
            skip_or_fail(test, e);
            None
        }
    }
}

/// Whether `program` runs (`program -version`); `false` after [`skip_or_fail`].
pub fn tool_or_skip(test: &str, program: &str) -> bool {
    let ran = Command::new(program)
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ran {
        skip_or_fail(test, format_args!("{program} is not installed"));
    }
    ran
}

/// The shipped demo folder, `assets/demo` (models, `test/` photographs).
pub fn demo_dir() -> PathBuf {
    workspace_dir().join("assets/demo")
}

/// The image files directly in `dir` (by extension: jpg, jpeg, png), sorted by name.
pub fn demo_images(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| ["jpg", "jpeg", "png"].contains(&e.to_ascii_lowercase().as_str()))
        })
        .collect();
    files.sort();
    files
}

/// The rows of `dir/labels.csv` (`file,label[,class]` with a header line): file name
/// and class index.
pub fn labels(dir: &Path) -> Vec<(String, usize)> {
    let path = dir.join("labels.csv");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut cols = l.split(',');
            let (Some(file), Some(label)) = (cols.next(), cols.next()) else {
                panic!("{}: bad row {l:?}", path.display());
            };
            let label = label
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("{}: bad label in {l:?}", path.display()));
            (file.trim().to_owned(), label)
        })
        .collect()
}

/// Largest `|a - b|` relative to the largest `|b|`.
pub fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()))
        .max(f32::MIN_POSITIVE);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// Builds the binaries of `packages` for the profile the calling test runs in, into
/// its own target folder (cargo is a no-op when they are current), and returns that
/// profile's folder (`target/<profile>/`), where they are.
///
/// The variables cargo sets for a running test (`CARGO_MANIFEST_DIR`, `CARGO_PKG_*`,
/// ...) are removed from the inner cargo's environment: build scripts such as ring's
/// declare `rerun-if-env-changed` on them, so passing them on would make this build
/// and the outer `cargo test` rebuild those crates (and everything above them) in turn.
pub fn build_binaries(packages: &[&str]) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<the test>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable in target/<profile>/deps")
        .to_path_buf();
    let target_dir = profile_dir.parent().expect("target folder").to_path_buf();
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(p) => p,
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "--bins", "--profile", profile])
        .env("CARGO_TARGET_DIR", &target_dir)
        .current_dir(workspace_dir());
    for p in packages {
        cmd.args(["-p", p]);
    }
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let set_for_tests = key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_MANIFEST_")
            || key.starts_with("CARGO_BIN_")
            || key.starts_with("CARGO_CFG_")
            || matches!(
                key,
                "CARGO_CRATE_NAME" | "CARGO_PRIMARY_PACKAGE" | "CARGO_TARGET_TMPDIR" | "OUT_DIR"
            );
        if set_for_tests {
            cmd.env_remove(key);
        }
    }
    let status = cmd.status().expect("runs cargo build");
    assert!(status.success(), "building {packages:?} failed");
    profile_dir
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_set_has_labelled_images() {
        let test = demo_dir().join("test");
        let images = demo_images(&test);
        let labels = labels(&test);
        assert!(!images.is_empty());
        assert_eq!(images.len(), labels.len());
        for (file, _) in &labels {
            assert!(test.join(file).is_file(), "{file}");
        }
    }

    #[test]
    fn open_or_skip_passes_values_and_skips_errors_outside_ci() {
        assert_eq!(open_or_skip::<_, String>("t", Ok(3)), Some(3));
        if !under_ci() {
            assert_eq!(open_or_skip::<u8, _>("t", Err("no adapter")), None);
        }
    }

    #[test]
    fn relative_differences_scale_by_the_reference() {
        assert_eq!(max_rel_diff(&[1.0, 2.0], &[1.0, 4.0]), 0.5);
    }
}
