//! The edge runtime: sessions, batching, tail execution, power governor and metrics.
#![warn(missing_docs, unreachable_pub)]
