//! Media pool members (dispatcher destinations): `get`, `drain`, `enable`.

use clap::Args;

use super::Ctx;

/// List dispatcher members: the database rows with each edge's live state.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  sipctl get dispatchers\n  sipctl get dispatchers --set 1 -o wide")]
pub struct GetArgs {
    /// Only this dispatcher set (a MediaPool's setId).
    #[arg(long)]
    pub set: Option<i32>,
}

/// A member to drain or enable.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  sipctl drain dispatcher sip:10.0.0.5:5080\n  sipctl enable dispatcher sip:10.0.0.5:5080 --set 1")]
pub struct StateArgs {
    /// The member's destination URI, as `get dispatchers` shows it.
    pub uri: String,
    /// Its set, when the URI is a member of several.
    #[arg(long)]
    pub set: Option<i32>,
}

pub async fn get(_ctx: &Ctx, _args: GetArgs) -> anyhow::Result<()> {
    anyhow::bail!("sipctl get dispatchers: pending")
}
pub async fn drain(_ctx: &Ctx, _args: StateArgs) -> anyhow::Result<()> {
    anyhow::bail!("sipctl drain dispatcher: pending")
}
pub async fn enable(_ctx: &Ctx, _args: StateArgs) -> anyhow::Result<()> {
    anyhow::bail!("sipctl enable dispatcher: pending")
}
