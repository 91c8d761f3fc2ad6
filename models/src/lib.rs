//! Tensors, CPU and wgpu backends, layers, model families, weight loading and split points.
//!
//! - [`tensor::HostTensor`]: the host-side tensor that crosses every boundary.
//! - [`backend::Backend`]: the seam; model code is written once over it.
//!   [`backend::cpu::CpuBackend`] is the CPU implementation.
//! - [`synthetic`]: a seeded, untrained ViT checkpoint for the demo, tests and benches.
#![warn(missing_docs, unreachable_pub)]

// The workspace warns on unsafe operations in unsafe fns without their own `unsafe`
// block (`unsafe_op_in_unsafe_fn`); the CPU kernels (backend/cpu) still rely on the
// 2021 edition's implicit unsafe bodies, so the backend seam is excused until their
// owners wrap each intrinsic call.
#[allow(unsafe_op_in_unsafe_fn)]
pub mod backend;
pub mod bottleneck;
pub mod classic;
#[cfg(feature = "clap")]
pub mod cli;
pub mod cost;
pub mod detection_map;
pub mod femtodet;
pub mod labels;
pub mod llama;
pub mod llm;
pub mod net;
pub mod preprocess;
#[cfg(feature = "sparse")]
pub mod prune;
pub mod spikepoint;
pub mod split;
pub mod synthetic;
pub mod tensor;
pub mod vit;
pub mod weights;

pub use backend::choice::BackendChoice;
pub use backend::{Activation, Backend, BackendError, DeviceTensor};
pub use net::{Answer, SplitNet};
pub use tensor::HostTensor;
