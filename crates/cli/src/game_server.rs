//! `matchplane game-server`: hosts the built-in lands (owned by the runtime work; placeholder wiring).

use clap::Args;

#[derive(Debug, Args)]
pub struct GameServerArgs {
    /// Port to listen on (0 picks a free port).
    #[arg(long, env = "MATCHPLANE_GAME_PORT", default_value_t = 8080)]
    pub port: u16,
}

pub async fn run(_args: GameServerArgs) -> anyhow::Result<()> {
    anyhow::bail!("game-server is not built yet")
}
