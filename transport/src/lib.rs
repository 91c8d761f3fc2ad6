//! The QUIC protocol between device and edge, on quinn: TLS, handshake, frame streams, status.
#![warn(missing_docs, unreachable_pub)]
