//! Call detail records: `get cdrs`.

use clap::Args;

use super::Ctx;

/// List call detail records, newest first (`-o csv` to export).
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  sipctl get cdrs --since 1h\n  sipctl get cdrs --since 2026-11-01 --until 2026-12-01 --to +44 -o csv > november.csv")]
pub struct GetArgs {
    /// Calls that started at or after this time (RFC 3339, a date, or an age like 15m, 2h, 7d).
    #[arg(long)]
    pub since: Option<String>,
    /// Calls that started before this time (same forms).
    #[arg(long)]
    pub until: Option<String>,
    /// Calling number starting with this.
    #[arg(long)]
    pub from: Option<String>,
    /// Called number starting with this.
    #[arg(long)]
    pub to: Option<String>,
    /// At most this many records (0: all).
    #[arg(long, default_value_t = 100)]
    pub limit: i64,
}

pub async fn get(_ctx: &Ctx, _args: GetArgs) -> anyhow::Result<()> {
    anyhow::bail!("sipctl get cdrs: pending")
}
