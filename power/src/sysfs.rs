//! Small, capped reads of sysfs attribute files, with errors that name the file.
//!
//! A sysfs attribute is one short line. Reads stop at [`MAX_ATTR_BYTES`] so a wrong
//! path (a device node, a huge file in a fake tree) cannot make us allocate without
//! bound; anything that is not the expected number is a [`PowerError::Parse`].

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::PowerError;

/// Longest attribute read. Kernel attributes are at most a page (4096 bytes); the
/// numbers we read are under 32 characters.
pub(crate) const MAX_ATTR_BYTES: u64 = 4096;

/// Reads an attribute as trimmed text. `hint` explains a permission error (what the
/// file is and how to grant access).
pub(crate) fn read_attr(path: &Path, hint: impl FnOnce() -> String) -> Result<String, PowerError> {
    let file = std::fs::File::open(path).map_err(|e| io_error(path, e, hint))?;
    let mut buf = Vec::new();
    file.take(MAX_ATTR_BYTES)
        .read_to_end(&mut buf)
        .map_err(|e| io_error(path, e, String::new))?;
    let text = String::from_utf8(buf).map_err(|_| PowerError::Parse {
        path: path.to_owned(),
        message: "not text (expected a number or a word)".into(),
    })?;
    Ok(text.trim().to_owned())
}

/// Reads an attribute holding a non-negative integer.
pub(crate) fn read_u64(path: &Path, hint: impl FnOnce() -> String) -> Result<u64, PowerError> {
    let text = read_attr(path, hint)?;
    text.parse::<u64>().map_err(|_| PowerError::Parse {
        path: path.to_owned(),
        message: format!("expected a non-negative integer, found {:?}", clip(&text)),
    })
}

/// Reads an attribute holding an integer that may be negative (some battery drivers
/// report discharge current as negative).
pub(crate) fn read_i64(path: &Path) -> Result<i64, PowerError> {
    let text = read_attr(path, String::new)?;
    text.parse::<i64>().map_err(|_| PowerError::Parse {
        path: path.to_owned(),
        message: format!("expected an integer, found {:?}", clip(&text)),
    })
}

/// Like [`read_i64`], but `Ok(None)` when the file does not exist (optional
/// attributes: a battery driver provides `power_now` or `current_now`, not both).
pub(crate) fn read_i64_opt(path: &Path) -> Result<Option<i64>, PowerError> {
    if !path.exists() {
        return Ok(None);
    }
    match read_i64(path) {
        Ok(v) => Ok(Some(v)),
        // Some drivers expose an attribute whose read fails with ENODATA (-61) while
        // the value is unknown: the attribute is present but has nothing to say.
        Err(PowerError::Read { source, .. }) if source.raw_os_error() == Some(61) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads an optional text attribute (`None` when absent).
pub(crate) fn read_attr_opt(path: &Path) -> Result<Option<String>, PowerError> {
    if !path.exists() {
        return Ok(None);
    }
    read_attr(path, String::new).map(Some)
}

/// The entries of a folder, sorted by name (sysfs order is not stable).
pub(crate) fn list_dir(dir: &Path) -> Result<Vec<(String, PathBuf)>, PowerError> {
    let rd = std::fs::read_dir(dir).map_err(|e| io_error(dir, e, String::new))?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| io_error(dir, e, String::new))?;
        if let Some(name) = entry.file_name().to_str() {
            out.push((name.to_owned(), entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

fn io_error(path: &Path, e: std::io::Error, hint: impl FnOnce() -> String) -> PowerError {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        let hint = hint();
        PowerError::Permission {
            path: path.to_owned(),
            hint: if hint.is_empty() {
                "run as a user who may read it (root), or grant read access to the file".into()
            } else {
                hint
            },
        }
    } else {
        PowerError::Read {
            path: path.to_owned(),
            source: e,
        }
    }
}

/// The first 40 characters of odd file contents, for an error message.
pub(crate) fn clip(s: &str) -> String {
    s.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_attribute_is_read_only_up_to_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big");
        std::fs::write(&p, "7".repeat(10_000)).unwrap();
        let err = read_u64(&p, String::new).unwrap_err();
        assert!(matches!(err, PowerError::Parse { .. }), "{err}");
        assert_eq!(read_attr(&p, String::new).unwrap().len(), 4096);
    }

    #[test]
    fn non_numeric_contents_are_a_parse_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("energy_uj");
        std::fs::write(&p, "12abc\n").unwrap();
        let err = read_u64(&p, String::new).unwrap_err().to_string();
        assert!(err.contains("energy_uj") && err.contains("12abc"), "{err}");
        std::fs::write(&p, [0xff, 0xfe]).unwrap();
        assert!(read_u64(&p, String::new).is_err());
    }

    #[test]
    fn missing_optional_attribute_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_i64_opt(&dir.path().join("power_now")).unwrap(), None);
        std::fs::write(dir.path().join("current_now"), "-1500000\n").unwrap();
        assert_eq!(
            read_i64_opt(&dir.path().join("current_now")).unwrap(),
            Some(-1_500_000)
        );
    }
}
