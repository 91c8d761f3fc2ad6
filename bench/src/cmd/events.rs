//! `splitstream-bench events`. PLACEHOLDER: being built under its issue.

/// Arguments of `splitstream-bench events`.
#[derive(clap::Args)]
pub(crate) struct Args {}

pub(crate) fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("splitstream-bench events is not built yet")
}
