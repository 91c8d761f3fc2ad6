//! `splitstream-bench codec`. PLACEHOLDER: being built under its issue.

/// Arguments of `splitstream-bench codec`.
#[derive(clap::Args)]
pub(crate) struct Args {}

pub(crate) fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("splitstream-bench codec is not built yet")
}
