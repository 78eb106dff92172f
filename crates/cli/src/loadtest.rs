//! `matchplane loadtest` (placeholder wiring; implemented by the issue-6 work).

use clap::Args;

#[derive(Debug, Args)]
pub struct LoadtestArgs {}

pub async fn run(_args: LoadtestArgs) -> anyhow::Result<()> {
    anyhow::bail!("loadtest is not built yet")
}
