//! The session logic as deterministic state machines, quinn-proto style: they are fed
//! events and the current time and answer with decisions; they never touch a socket, a
//! task or the system clock. The async shells in [`crate::server`] and
//! [`crate::client`] only move bytes and timers around them, so every rule here
//! (handshake validation, sequence numbers, in-flight bounds, latest frame wins,
//! deadlines, status cadence, reconnect backoff) is tested with a fake clock.

mod backoff;
mod device;
mod edge;
mod status;

pub use backoff::Backoff;
pub use device::{DeviceSession, FrameCounters, FrameStart, OutcomeKind};
pub use edge::{accept_hello, Admission, EdgeCounters, EdgeSession, FrameEnd, HandshakePolicy};
pub use status::StatusCadence;
