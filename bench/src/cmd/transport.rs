//! `splitstream-bench transport`. PLACEHOLDER: being built under its issue.

/// Arguments of `splitstream-bench transport`.
#[derive(clap::Args)]
pub(crate) struct Args {}

pub(crate) fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("splitstream-bench transport is not built yet")
}
