//! Routes: `add`, `get`, `delete`, and `test route NUMBER`.

use clap::Args;

use super::Ctx;

/// What a route matches on the dialled number (exactly one).
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct MatchArgs {
    /// Numbers starting with this prefix (digits, letters, + * # . _ -).
    #[arg(long)]
    pub prefix: Option<String>,
    /// Exactly this number.
    #[arg(long)]
    pub exact: Option<String>,
    /// Numbers this regular expression (PCRE, as Kamailio uses it) matches.
    #[arg(long)]
    pub regex: Option<String>,
}

/// Where a matching call goes (exactly one).
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct TargetArgs {
    /// A media pool (MediaPool name).
    #[arg(long)]
    pub to_pool: Option<String>,
    /// The registered user named by the number.
    #[arg(long)]
    pub to_user: bool,
    /// A fixed SIP URI, e.g. sip:carrier@203.0.113.5:5060.
    #[arg(long)]
    pub to_uri: Option<String>,
    /// Reject with this SIP code (400-699).
    #[arg(long)]
    pub reject: Option<u16>,
}

/// Add a routing rule; the edges reload their rules.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  sipctl add route uk --prefix +44 --to-uri sip:carrier@203.0.113.5\n  sipctl add route premium-block --prefix 0900 --reject 403 --reason 'Premium Blocked' --priority 10\n  sipctl add route desks --regex '^7[0-9]{3}$' --to-user\n  sipctl add route ivr --exact 5000 --to-pool media --from-domain example.com")]
pub struct AddArgs {
    /// Name of the route (lower-case letters, digits, '-').
    pub name: String,
    #[command(flatten)]
    pub matcher: MatchArgs,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Order among matching routes: lower is tried first (0-9999).
    #[arg(long, default_value_t = 100)]
    pub priority: i32,
    /// Only for callers of this domain.
    #[arg(long)]
    pub from_domain: Option<String>,
    /// Reason phrase of a rejection.
    #[arg(long, requires = "reject")]
    pub reason: Option<String>,
    /// Free text shown by `get routes`.
    #[arg(long, default_value = "")]
    pub description: String,
}

/// List routes in the order they are tried, or show one.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  sipctl get routes\n  sipctl get route uk -o yaml")]
pub struct GetArgs {
    /// One route by name.
    pub name: Option<String>,
}

/// Delete routes; the edges reload their rules.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  sipctl delete route uk premium-block")]
pub struct DeleteArgs {
    #[arg(required = true)]
    pub names: Vec<String>,
}

/// Show which route a dialled number takes and why, without a call.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  sipctl test route +442071234567\n  sipctl test route 5000 --from-domain example.com -o wide")]
pub struct TestArgs {
    /// The dialled number (the Request-URI's user part).
    pub number: String,
    /// The caller's domain (routes of that domain apply too).
    #[arg(long)]
    pub from_domain: Option<String>,
}

pub async fn add(_ctx: &Ctx, _args: AddArgs) -> anyhow::Result<()> {
    anyhow::bail!("sipctl add route: pending")
}
pub async fn get(_ctx: &Ctx, _args: GetArgs) -> anyhow::Result<()> {
    anyhow::bail!("sipctl get routes: pending")
}
pub async fn delete(_ctx: &Ctx, _args: DeleteArgs) -> anyhow::Result<()> {
    anyhow::bail!("sipctl delete route: pending")
}
pub async fn test(_ctx: &Ctx, _args: TestArgs) -> anyhow::Result<()> {
    anyhow::bail!("sipctl test route: pending")
}
