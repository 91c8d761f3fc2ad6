//! The bottleneck tensor wire format: quantization, bit packing, zstd and temporal deltas.
#![warn(missing_docs, unreachable_pub)]
