//! Event-camera input: streaming readers for real recording formats, live sources,
//! events from ordinary video, and model-ready representations.
//!
//! Every reader holds a bounded window of its input (a fixed byte buffer, at most one
//! AEDAT 4 packet) and hands out events in batches, so a recording of any length, a
//! pipe or a camera stream decodes in flat memory:
//!
//! ```no_run
//! use splitstream_events::{open, SourceOptions};
//!
//! let mut source = open("recording.raw", &SourceOptions::default())?;
//! println!("{:?} {:?}", source.info().format, source.info().resolution());
//! let mut batch = Vec::new();
//! while source.read_batch(&mut batch)? > 0 {
//!     for event in &batch {
//!         let _ = (event.t, event.x, event.y, event.p);
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs, unreachable_pub)]
#![forbid(unsafe_code)]

pub mod encode;
mod error;
mod event;
mod flatbuf;
pub mod formats;
pub mod npy;
pub mod render;
pub mod repr;
pub mod source;
pub mod video;
mod window;

pub use error::{OpenError, ReadError};
pub use event::{Event, Format, StreamInfo};
pub use source::{open, open_path, open_reader, EventReader, SourceOptions, SourceSpec};
