//! Fuzzes the aedat31 reader: any bytes must decode or fail with an error, never panic,
//! and never grow memory past the reader's caps.
#![no_main]

use libfuzzer_sys::fuzz_target;
use splitstream_events::{open_reader, EventReader, Format, SourceOptions};

fuzz_target!(|data: &[u8]| {
    // Small windows and batches reach the unit-boundary paths quickly.
    let options = SourceOptions {
        format: Some(Format::Aedat31),
        buffer_bytes: 4096,
        batch_events: 64,
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
        assert!(n <= 64 + 32, "batch of {n} events exceeds the cap");
    }
});
