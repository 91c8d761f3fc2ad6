//! The device runtime: input sources, head execution and the offload policy.
#![warn(missing_docs, unreachable_pub)]
