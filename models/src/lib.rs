//! Tensors, CPU and wgpu backends, layers, model families, weight loading and split points.
#![warn(missing_docs, unreachable_pub)]
