//! Event-camera input: streaming readers for real recording formats, live sources,
//! events from ordinary video, and model-ready representations.
#![warn(missing_docs, unreachable_pub)]
