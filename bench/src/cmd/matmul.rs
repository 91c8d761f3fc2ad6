//! `splitstream-bench matmul`. PLACEHOLDER: being built under issue 6.

/// Arguments of `splitstream-bench matmul`.
#[derive(clap::Args)]
pub(crate) struct Args {}

pub(crate) fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("splitstream-bench matmul is not built yet")
}
