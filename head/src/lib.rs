//! The device runtime: input sources, head execution and the offload policy.
//!
//! What is here so far:
//! - [`source`]: where frames come from (image files, folders and globs, videos,
//!   cameras and streams through `ffmpeg`, preprocessed tensors in safetensors files),
//!   chosen from one spec string by [`source::open_source`];
//! - [`classic`]: the non-neural fallback (kNN, linear SVM, random forest on the
//!   head's features) for a critical battery with no edge;
//! - [`device`]: running frames locally, split or offloaded, with local fallback;
//! - [`draw`]: a detector's boxes drawn on frames (`--draw`);
//! - [`llm`]: LLM generation split with an edge (hidden states out, tokens back),
//!   finished locally when the edge fails;
//! - [`model`]: the network the device runs (a ViT, or one with a learned bottleneck);
//! - [`offload`]: the frame as JPEG for offload mode;
//! - [`record`]: a frame's timings as run-record stages (`--record FILE`);
//! - [`policy`]: where each frame runs (local, split, offload), from battery, link and edge;
//! - [`stats`]: the per-frame JSON line the device prints and the end-of-run summary.
#![warn(missing_docs, unreachable_pub)]
#![forbid(unsafe_code)]

pub mod classic;
pub mod device;
pub mod draw;
pub mod llm;
pub mod model;
pub mod offload;
pub mod policy;
pub mod record;
pub mod source;
pub mod stats;
