//! The QUIC protocol between device and edge, on quinn: TLS, handshake, frame streams, status.
//!
//! Payloads are opaque bytes; models are known by architecture name and weights hash.
//! The rules of a session (handshake checks, sequence numbers, in-flight bounds, latest
//! frame wins, deadlines, status cadence, reconnect backoff) are deterministic state
//! machines in [`session`], fed events and a clock; [`Server`] and [`Client`] are thin
//! async shells that move bytes between them and quinn. The wire format is in [`wire`]
//! and described in `docs/transport.md`.
#![warn(missing_docs, unreachable_pub)]
#![forbid(unsafe_code)]

pub mod acceptor;
pub mod auth;
pub mod client;
pub mod config;
pub mod fleet;
pub mod names;
pub mod server;
pub mod session;
pub mod tls;
pub mod wire;

pub use acceptor::{Acceptor, ModelRegistry};
pub use auth::TokenStore;
pub use client::{
    Client, ConnectError, ConnectionState, FrameOutcome, FrameReport, OutgoingFrame,
    ReconfigureError, SendFrameError,
};
pub use config::{
    ClientAuth, ClientConfig, CongestionControl, Limits, ReconnectPolicy, ServerConfig,
};
pub use fleet::{FleetConfig, FleetTuning};
pub use names::CodecChoice;
pub use server::{
    AnswerError, BindError, FrameMeta, IncomingFrame, Responder, Server, Session, SessionInfo,
    StatusHandle,
};
pub use tls::{ClientIdentity, Fingerprint, ServerIdentity, ServerTrust};
pub use wire::{
    Advice, Capabilities, CodecSpec, DropReason, EdgeTiming, ModelId, RejectReason, Status,
    StreamConfig,
};
