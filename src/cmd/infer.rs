//! `splitstream infer`. PLACEHOLDER: being built under issue 2.

/// Arguments of `splitstream infer`.
#[derive(clap::Args)]
pub(crate) struct Args {}

pub(crate) fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("splitstream infer is not built yet")
}
