//! Registrations (usrloc bindings): `get registrations [USER]`.

use clap::Args;

use super::Ctx;

/// List registered contacts: expiry, user agent, received address.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  sipctl get registrations\n  sipctl get registrations alice@example.com -o wide")]
pub struct GetArgs {
    /// One user: user@domain (or user, with --domain).
    pub user: Option<String>,
    /// Only registrations of this domain.
    #[arg(long)]
    pub domain: Option<String>,
}

pub async fn get(_ctx: &Ctx, _args: GetArgs) -> anyhow::Result<()> {
    anyhow::bail!("sipctl get registrations: pending")
}
