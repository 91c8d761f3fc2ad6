//! The edge runtime: sessions, batching, tail execution, power governor and metrics.
//!
//! What is here so far:
//! - [`batcher`]: the dynamic batcher as a deterministic state machine (no clock, no
//!   I/O), and [`batch_loop`], the tokio shell that drives it;
//! - [`metrics`]: the edge's Prometheus metrics and the `/metrics` + `/healthz` server;
//! - [`config`]: the edge's TOML configuration;
//! - [`offload`]: decoding offloaded JPEG frames, capped;
//! - [`llm`]: split LLM steps (parsed, checked against the session's KV cache) and
//!   the waves that batch many sessions' decode steps;
//! - [`model`]: loading served models on the CPU or wgpu backend;
//! - [`edge`]: the running edge (sessions, batch loop, tail worker), what
//!   `splitstream-edge` and the demo start;
//! - [`governor`]: the POLCA-style power governor (thresholds, hysteresis, GPU caps);
//! - [`DropReason`]: why a frame is answered `Dropped`.
#![warn(missing_docs, unreachable_pub)]
#![forbid(unsafe_code)]

pub mod batch_loop;
pub mod batcher;
pub mod config;
pub mod edge;
pub mod governor;
pub mod llm;
pub mod metrics;
pub mod model;
pub mod offload;
mod reason;
pub mod state;

pub use reason::DropReason;
