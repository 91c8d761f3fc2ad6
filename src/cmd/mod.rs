//! One module per subcommand: its clap arguments and its `run`.

pub(crate) mod demo;
pub(crate) mod events;
pub(crate) mod infer;
