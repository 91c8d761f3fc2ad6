//! Class names: what a classifier's indices mean, for people reading its answers.
//!
//! A checkpoint carries them in its safetensors metadata under [`CLASS_NAMES_KEY`]
//! (`class_names`), a JSON list of strings, one per class in index order
//! (`python/export_timm.py` writes ImageNet's; the demo model has its ten). A user can
//! give them instead as a text file, one name per line (`--labels FILE`), which wins
//! over the metadata. Without either, answers print as indices.

use std::collections::BTreeMap;
use std::path::Path;

/// The metadata key holding the class names (a JSON list of strings).
pub const CLASS_NAMES_KEY: &str = "class_names";

/// Most classes accepted (ImageNet-21k has 21 841; a file past this is not a label list).
pub const MAX_CLASSES: usize = 1 << 20;

/// Longest class name accepted, bytes.
pub const MAX_NAME_BYTES: usize = 1024;

/// Largest labels file read, bytes.
pub const MAX_LABELS_FILE_BYTES: u64 = 64 << 20;

/// Why class names could not be read, or do not fit the model.
#[derive(Debug, thiserror::Error)]
pub enum LabelsError {
    /// The labels file could not be read.
    #[error("labels file {path}: {source}")]
    Read {
        /// The path given.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The source is too large or malformed.
    #[error("{source_name}: {detail}")]
    Invalid {
        /// Where the names came from (a path, or "metadata class_names").
        source_name: String,
        /// What is wrong.
        detail: String,
    },
    /// The number of names is not the model's number of classes.
    #[error("{source_name} has {names} class names, but the model has {classes} classes")]
    Count {
        /// Where the names came from.
        source_name: String,
        /// Names given.
        names: usize,
        /// Classes of the model.
        classes: usize,
    },
}

/// A classifier's class names, index `i` naming class `i`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassNames {
    names: Vec<String>,
    source_name: String,
}

impl ClassNames {
    /// Names from a list, checked (count, length, no empty name, no line breaks).
    pub fn new(names: Vec<String>, source_name: &str) -> Result<Self, LabelsError> {
        let invalid = |detail: String| LabelsError::Invalid {
            source_name: source_name.to_owned(),
            detail,
        };
        if names.is_empty() {
            return Err(invalid("no class names".into()));
        }
        if names.len() > MAX_CLASSES {
            return Err(invalid(format!(
                "{} class names, more than {MAX_CLASSES}",
                names.len()
            )));
        }
        for (i, name) in names.iter().enumerate() {
            if name.trim().is_empty() {
                return Err(invalid(format!("class {i} has an empty name")));
            }
            if name.len() > MAX_NAME_BYTES {
                return Err(invalid(format!(
                    "class {i}'s name is {} bytes, more than {MAX_NAME_BYTES}",
                    name.len()
                )));
            }
            if name.contains(['\n', '\r']) {
                return Err(invalid(format!("class {i}'s name spans lines")));
            }
        }
        Ok(Self {
            names,
            source_name: source_name.to_owned(),
        })
    }

    /// Names from a text file, one per line in class order (surrounding whitespace
    /// trimmed; trailing blank lines ignored, blank lines between names refused).
    pub fn from_file(path: &Path) -> Result<Self, LabelsError> {
        let shown = path.display().to_string();
        let read = |source| LabelsError::Read {
            path: shown.clone(),
            source,
        };
        let size = std::fs::metadata(path).map_err(read)?.len();
        if size > MAX_LABELS_FILE_BYTES {
            return Err(LabelsError::Invalid {
                source_name: shown,
                detail: format!("{size} bytes, more than {MAX_LABELS_FILE_BYTES}"),
            });
        }
        let bytes = std::fs::read(path).map_err(read)?;
        let text = String::from_utf8(bytes).map_err(|_| LabelsError::Invalid {
            source_name: shown.clone(),
            detail: "not UTF-8 text".into(),
        })?;
        Self::parse_lines(&text, &shown)
    }

    /// Names from text, one per line (see [`ClassNames::from_file`]).
    pub fn parse_lines(text: &str, source_name: &str) -> Result<Self, LabelsError> {
        let mut lines: Vec<&str> = text.lines().map(str::trim).collect();
        while lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
        if let Some(i) = lines.iter().position(|l| l.is_empty()) {
            return Err(LabelsError::Invalid {
                source_name: source_name.to_owned(),
                detail: format!("line {} is blank (one class name per line)", i + 1),
            });
        }
        Self::new(lines.into_iter().map(str::to_owned).collect(), source_name)
    }

    /// Names from a checkpoint's metadata, `None` when it has no [`CLASS_NAMES_KEY`].
    pub fn from_metadata(metadata: &BTreeMap<String, String>) -> Result<Option<Self>, LabelsError> {
        let Some(json) = metadata.get(CLASS_NAMES_KEY) else {
            return Ok(None);
        };
        let source_name = format!("metadata {CLASS_NAMES_KEY}");
        let names: Vec<String> = serde_json::from_str(json).map_err(|e| LabelsError::Invalid {
            source_name: source_name.clone(),
            detail: format!("expected a JSON list of strings: {e}"),
        })?;
        Self::new(names, &source_name).map(Some)
    }

    /// Names from the metadata of safetensors bytes (the header only is parsed), `None`
    /// when the file declares none.
    pub fn from_safetensors(bytes: &[u8]) -> Result<Option<Self>, LabelsError> {
        let (_, header) =
            safetensors::SafeTensors::read_metadata(bytes).map_err(|e| LabelsError::Invalid {
                source_name: "safetensors header".into(),
                detail: e.to_string(),
            })?;
        match header.metadata() {
            Some(metadata) => Self::from_metadata(&metadata.clone().into_iter().collect()),
            None => Ok(None),
        }
    }

    /// `--labels FILE` when given, else the checkpoint's metadata, else `None`; checked
    /// against the model's class count when it is known.
    pub fn resolve(
        file: Option<&Path>,
        metadata: &BTreeMap<String, String>,
        classes: Option<usize>,
    ) -> Result<Option<Self>, LabelsError> {
        let names = match file {
            Some(path) => Some(Self::from_file(path)?),
            None => Self::from_metadata(metadata)?,
        };
        if let (Some(n), Some(classes)) = (&names, classes) {
            n.check(classes)?;
        }
        Ok(names)
    }

    /// Refuses names whose count is not `classes`.
    pub fn check(&self, classes: usize) -> Result<(), LabelsError> {
        if self.names.len() == classes {
            Ok(())
        } else {
            Err(LabelsError::Count {
                source_name: self.source_name.clone(),
                names: self.names.len(),
                classes,
            })
        }
    }

    /// Class `i`'s name, if there is one.
    pub fn get(&self, i: usize) -> Option<&str> {
        self.names.get(i).map(String::as_str)
    }

    /// Every name, in class order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Number of names.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Never true for a value built by this module (kept for the `len` convention).
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Where the names came from (a path, or `metadata class_names`).
    pub fn source_name(&self) -> &str {
        &self.source_name
    }
}

/// Class `i` for people: its name when `names` has one, else the index.
pub fn display_class(names: Option<&ClassNames>, i: usize) -> String {
    match names.and_then(|n| n.get(i)) {
        Some(name) => name.to_owned(),
        None => i.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(json: &str) -> BTreeMap<String, String> {
        BTreeMap::from([(CLASS_NAMES_KEY.to_owned(), json.to_owned())])
    }

    #[test]
    fn metadata_names_are_read_and_checked() {
        let n = ClassNames::from_metadata(&meta(r#"["cat","dog","golf ball"]"#))
            .unwrap()
            .unwrap();
        assert_eq!(n.get(2), Some("golf ball"));
        assert_eq!(n.get(3), None);
        assert!(n.check(3).is_ok());
        let err = n.check(1000).unwrap_err().to_string();
        assert!(
            err.contains("3 class names") && err.contains("1000"),
            "{err}"
        );
        assert_eq!(display_class(Some(&n), 1), "dog");
        assert_eq!(display_class(Some(&n), 7), "7");
        assert_eq!(display_class(None, 1), "1");
        assert!(ClassNames::from_metadata(&BTreeMap::new())
            .unwrap()
            .is_none());
        for bad in [
            r#"{"a":1}"#,
            r#"["a",3]"#,
            "[]",
            r#"["a",""]"#,
            r#"["a\nb"]"#,
            "not json",
        ] {
            assert!(ClassNames::from_metadata(&meta(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn label_files_take_one_name_per_line() {
        let n = ClassNames::parse_lines("tench\r\n goldfish \n\n\n", "l.txt").unwrap();
        assert_eq!(n.names(), ["tench", "goldfish"]);
        let err = ClassNames::parse_lines("a\n\nb\n", "l.txt")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2 is blank"), "{err}");
        assert!(ClassNames::parse_lines("\n\n", "l.txt").is_err());
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        assert!(ClassNames::parse_lines(&long, "l.txt").is_err());
    }

    #[test]
    fn a_file_wins_over_the_metadata() {
        let dir = std::env::temp_dir().join(format!("splitstream-labels-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("labels.txt");
        std::fs::write(&file, "x\ny\n").unwrap();
        let m = meta(r#"["a","b","c"]"#);
        let n = ClassNames::resolve(Some(&file), &m, Some(2))
            .unwrap()
            .unwrap();
        assert_eq!(n.names(), ["x", "y"]);
        assert_eq!(n.source_name(), file.display().to_string());
        assert!(ClassNames::resolve(Some(&file), &m, Some(3)).is_err());
        let n = ClassNames::resolve(None, &m, Some(3)).unwrap().unwrap();
        assert_eq!(n.get(0), Some("a"));
        let missing = ClassNames::resolve(Some(&dir.join("none.txt")), &m, None);
        assert!(matches!(missing, Err(LabelsError::Read { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn safetensors_headers_give_their_names() {
        let data = 0.5f32.to_le_bytes();
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &data).unwrap();
        let plain = safetensors::serialize([("w", view.clone())], None).unwrap();
        assert!(ClassNames::from_safetensors(&plain).unwrap().is_none());
        assert!(ClassNames::from_safetensors(&plain[..4]).is_err());
        let metadata = std::collections::HashMap::from([
            ("num_heads".to_owned(), "3".to_owned()),
            (CLASS_NAMES_KEY.to_owned(), r#"["only"]"#.to_owned()),
        ]);
        let named = safetensors::serialize([("w", view)], Some(metadata)).unwrap();
        let n = ClassNames::from_safetensors(&named).unwrap().unwrap();
        assert_eq!(n.names(), ["only"]);
    }
}
