//! Fuzzes the aedat31 reader through the shared harness (`src/lib.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use splitstream_events::Format;

fuzz_target!(|data: &[u8]| splitstream_events_fuzz::read_all(data, Format::Aedat31));
