//! `splitstream-bench model`. PLACEHOLDER: being built under its issue.

/// Arguments of `splitstream-bench model`.
#[derive(clap::Args)]
pub(crate) struct Args {}

pub(crate) fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("splitstream-bench model is not built yet")
}
