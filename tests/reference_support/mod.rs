//! Finding `../shared/reference` for the root package's CLI tests.

use std::path::{Path, PathBuf};

/// `../shared/reference` beside the clone (or `$SPLITSTREAM_SHARED/reference`).
/// Missing: a failure under `CI=true`, else `None` after printing a skip line.
pub fn reference_dir(test: &str) -> Option<PathBuf> {
    let shared = std::env::var_os("SPLITSTREAM_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    let dir = shared.join("reference");
    if dir.join("vit_micro.safetensors").is_file() {
        return Some(dir);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "{test}: reference data missing at {} (CI=true)",
            dir.display()
        );
    }
    println!("skip {test}: reference data not found at {}", dir.display());
    None
}
