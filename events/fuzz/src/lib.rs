//! The one harness every fuzz target runs: any bytes must decode or fail with an error,
//! never panic, and never grow a batch past the reader's caps.

use splitstream_events::{open_reader, EventReader, Format, SourceOptions};

/// Events per batch asked of the reader; small, so unit-boundary paths are reached
/// quickly.
const BATCH_EVENTS: usize = 64;

/// Reads `data` as `format` to the end or to the first error.
pub fn read_all(data: &[u8], format: Format) {
    let options = SourceOptions {
        format: Some(format),
        buffer_bytes: 4096,
        batch_events: BATCH_EVENTS,
        ..Default::default()
    };
    let Ok(mut reader) = open_reader(std::io::Cursor::new(data.to_vec()), None, &options) else {
        return;
    };
    let mut batch = Vec::new();
    while let Ok(n) = reader.read_batch(&mut batch) {
        if n == 0 {
            break;
        }
        assert!(
            n <= BATCH_EVENTS + 32,
            "batch of {n} events exceeds the cap"
        );
    }
}
