//! `matchplane demo` (placeholder wiring; implemented by the issue-6 work).

use clap::Args;

#[derive(Debug, Args)]
pub struct DemoArgs {}

pub async fn run(_args: DemoArgs) -> anyhow::Result<()> {
    anyhow::bail!("demo is not built yet")
}
