//! Errors, one enum per operation a caller handles: opening a source (detecting its
//! format, parsing its header) and reading events from it.

use crate::Format;

/// Opening a source failed: it could not be reached, its format is unknown, or its
/// header is malformed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The file, pipe or socket could not be opened or read.
    #[error("cannot read {what}: {source}")]
    Io {
        /// What was being opened.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// No known format matches the header.
    #[error("unknown event format{hint}: expected a Prophesee .raw (`% evt 2.0/2.1/3.0` header), AEDAT 2/3.1/4 (`#!AER-DAT`), an N-MNIST .bin, a .npy or CSV/text of t,x,y,p")]
    UnknownFormat {
        /// Text describing what was seen (empty when nothing useful).
        hint: String,
    },
    /// The header of a known format is malformed.
    #[error("bad {format} header: {reason}")]
    BadHeader {
        /// The format whose header is bad.
        format: Format,
        /// What was wrong.
        reason: String,
    },
    /// A source spec (path, `-`, `dv+tcp://host:port`) could not be understood.
    #[error("bad source `{spec}`: {reason}")]
    BadSpec {
        /// The spec as given.
        spec: String,
        /// What was wrong.
        reason: String,
    },
}

/// Reading events from an open source failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The underlying file, pipe or socket failed.
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
    /// The stream ended in the middle of a word, packet or line.
    #[error("{format} stream is truncated: it ends inside a {unit} ({bytes} stray bytes at the end); the file was cut short or is not {format}")]
    Truncated {
        /// The format being decoded.
        format: Format,
        /// The unit that was cut ("word", "packet", "line").
        unit: &'static str,
        /// How many bytes were left over.
        bytes: usize,
    },
    /// The data contradicts the format (bad sizes, bad identifiers, bad numbers).
    #[error("corrupt {format} data at byte {offset}: {reason}")]
    Corrupt {
        /// The format being decoded.
        format: Format,
        /// Byte offset in the stream (after the header, where known) of the bad unit.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// A declared size is larger than this reader allows (a guard against absurd or
    /// hostile sizes: nothing is allocated for it).
    #[error("{format} {what} of {size} bytes exceeds the limit of {limit} bytes; the file is corrupt or not {format}")]
    TooLarge {
        /// The format being decoded.
        format: Format,
        /// What declared the size.
        what: &'static str,
        /// The declared size.
        size: u64,
        /// The cap.
        limit: u64,
    },
}
