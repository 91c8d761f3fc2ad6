//! Device tokens on the edge, compared in constant time.
//!
//! Token file format (UTF-8 text): one device per line, `DEVICE_ID TOKEN` separated by
//! whitespace; blank lines and lines starting with `#` are ignored. Device ids are
//! unique; tokens are at least [`MIN_TOKEN_LEN`] characters (e.g. 32 hex digits from
//! `openssl rand -hex 16`). Only SHA-256 digests of the tokens are kept in memory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use subtle::ConstantTimeEq;

/// Shortest token accepted in a token file (16 characters).
pub const MIN_TOKEN_LEN: usize = 16;
/// Largest token file read (1 MiB, i.e. thousands of devices).
const MAX_TOKEN_FILE: u64 = 1 << 20;

/// Why a token file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The file could not be read.
    #[error("cannot read token file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is larger than 1 MiB.
    #[error("token file {path} is larger than 1 MiB: is it the right file?")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// A line is not `DEVICE_ID TOKEN`.
    #[error("token file line {line}: expected `DEVICE_ID TOKEN`, found {found} field(s)")]
    BadLine {
        /// 1-based line number.
        line: usize,
        /// Number of fields found.
        found: usize,
    },
    /// A token is too short to be a secret.
    #[error("token file line {line}: token for '{device}' is shorter than {MIN_TOKEN_LEN} characters: generate one with `openssl rand -hex 16`")]
    WeakToken {
        /// 1-based line number.
        line: usize,
        /// The device id.
        device: String,
    },
    /// A device id appears twice.
    #[error("token file line {line}: device '{device}' is listed twice")]
    Duplicate {
        /// 1-based line number.
        line: usize,
        /// The device id.
        device: String,
    },
}

/// Device ids and their token digests.
#[derive(Clone, Default)]
pub struct TokenStore {
    digests: HashMap<String, [u8; 32]>,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenStore({} devices)", self.digests.len())
    }
}

fn digest(token: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl TokenStore {
    /// An empty store (no device can connect).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a device's token.
    pub fn insert(&mut self, device_id: impl Into<String>, token: &str) {
        self.digests
            .insert(device_id.into(), digest(token.as_bytes()));
    }

    /// Number of devices.
    pub fn len(&self) -> usize {
        self.digests.len()
    }

    /// Whether no device is listed.
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Parses the token file format (see the module docs).
    pub fn parse(text: &str) -> Result<Self, TokenFileError> {
        let mut store = Self::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [device, token] = fields.as_slice() else {
                return Err(TokenFileError::BadLine {
                    line: line_no,
                    found: fields.len(),
                });
            };
            if token.chars().count() < MIN_TOKEN_LEN {
                return Err(TokenFileError::WeakToken {
                    line: line_no,
                    device: (*device).to_string(),
                });
            }
            if store.digests.contains_key(*device) {
                return Err(TokenFileError::Duplicate {
                    line: line_no,
                    device: (*device).to_string(),
                });
            }
            store.insert(*device, token);
        }
        Ok(store)
    }

    /// Loads a token file.
    pub fn load(path: &Path) -> Result<Self, TokenFileError> {
        let io = |source| TokenFileError::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        if meta.len() > MAX_TOKEN_FILE {
            return Err(TokenFileError::TooLarge {
                path: path.to_path_buf(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        Self::parse(&text)
    }

    /// Whether `token` is the token of `device_id`. Compares fixed-size digests in
    /// constant time, and does the same work for unknown devices, so neither the token's
    /// content nor its length nor the device's existence leaks through timing.
    pub fn verify(&self, device_id: &str, token: &str) -> bool {
        let presented = digest(token.as_bytes());
        match self.digests.get(device_id) {
            Some(expected) => bool::from(expected.ct_eq(&presented)),
            None => {
                let dummy = [0u8; 32];
                let _ = dummy.ct_eq(&presented);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_accepts_listed_devices_and_nothing_else() {
        let store = TokenStore::parse(
            "# devices\n\ncam-1 0123456789abcdef0123\n  cam-2\tfedcba9876543210fedc  \n",
        )
        .unwrap();
        assert_eq!(store.len(), 2);
        assert!(store.verify("cam-1", "0123456789abcdef0123"));
        assert!(store.verify("cam-2", "fedcba9876543210fedc"));
        assert!(!store.verify("cam-1", "fedcba9876543210fedc"));
        assert!(!store.verify("cam-1", "0123456789abcdef012"));
        assert!(!store.verify("cam-3", "0123456789abcdef0123"));
    }

    #[test]
    fn bad_token_files_name_the_line() {
        let e = TokenStore::parse("cam-1\n").unwrap_err();
        assert!(
            matches!(e, TokenFileError::BadLine { line: 1, found: 1 }),
            "{e}"
        );
        let e = TokenStore::parse("ok 0123456789abcdef\ncam-1 short\n").unwrap_err();
        assert!(
            matches!(e, TokenFileError::WeakToken { line: 2, .. }),
            "{e}"
        );
        let e = TokenStore::parse("a 0123456789abcdef\na 0123456789abcdef\n").unwrap_err();
        assert!(
            matches!(e, TokenFileError::Duplicate { line: 2, .. }),
            "{e}"
        );
    }
}
