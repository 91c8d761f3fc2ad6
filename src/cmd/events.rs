//! `splitstream events ...`. PLACEHOLDER: being built under issue 9.

/// `splitstream events` subcommands.
#[derive(clap::Subcommand)]
pub(crate) enum Command {
    /// Print a recording's format, sensor, resolution, duration and event rate.
    Inspect {},
}

pub(crate) fn run(_command: Command) -> anyhow::Result<()> {
    anyhow::bail!("splitstream events is not built yet")
}
