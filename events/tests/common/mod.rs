//! Where the shared reference recordings live.
#![allow(dead_code)]

use std::path::PathBuf;

/// `../shared/events` next to the workspace (or `$SPLITSTREAM_SHARED/events`), or
/// `None` (with a printed skip line) when it is missing outside CI. Under `CI=true`
/// a missing directory fails the test.
pub fn shared_events() -> Option<PathBuf> {
    let root = match std::env::var_os("SPLITSTREAM_SHARED") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared"),
    };
    let dir = root.join("events");
    if dir.join("evt3_sample.raw").is_file() {
        return Some(dir);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "reference recordings missing at {}: CI must have ../shared/events",
            dir.display()
        );
    }
    println!("skip: reference recordings not found at {}", dir.display());
    None
}
