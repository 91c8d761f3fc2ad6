//! One module per subcommand: its clap arguments and its `run`.

pub(crate) mod calibrate;
pub(crate) mod chat;
pub(crate) mod demo;
pub(crate) mod evaluate;
mod evaluate_det;
pub(crate) mod events;
pub(crate) mod features;
pub(crate) mod generate;
pub(crate) mod infer;
mod llm_edge;
pub(crate) mod measure;
pub(crate) mod prune;
pub(crate) mod report;
