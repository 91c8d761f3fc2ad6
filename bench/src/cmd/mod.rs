//! One module per benchmark: its clap arguments and its `run`.

pub(crate) mod codec;
pub(crate) mod e2e;
pub(crate) mod events;
pub(crate) mod matmul;
pub(crate) mod model;
pub(crate) mod policy;
pub(crate) mod transport;
