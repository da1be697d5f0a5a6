//! Subscribers: `add`, `get`, `delete`, `set password`, `import`, `export`.

use std::path::PathBuf;

use clap::Args;

use super::Ctx;

/// Where a new password comes from. Without either flag sipctl asks on the terminal.
#[derive(Debug, Args)]
#[group(multiple = false)]
pub struct PasswordSource {
    /// Read the password from standard input (the first line).
    #[arg(long)]
    pub password_stdin: bool,
    /// Generate a random password and print it once.
    #[arg(long)]
    pub generate_password: bool,
}

/// Add a subscriber with digest credentials (ha1 and ha1b; the password is not stored).
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  sipctl add subscriber alice@example.com                      # asks for the password\n  echo 'S3cret!' | sipctl add subscriber bob@example.com --password-stdin\n  sipctl add subscriber carol@example.com --generate-password")]
pub struct AddArgs {
    /// Address of record: user@domain.
    pub aor: String,
    #[command(flatten)]
    pub password: PasswordSource,
}

/// List subscribers, or show one.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  sipctl get subscribers\n  sipctl get subscribers --domain example.com -o json\n  sipctl get subscriber alice@example.com")]
pub struct GetArgs {
    /// One subscriber: user@domain (or user, with --domain).
    pub name: Option<String>,
    /// Only subscribers of this domain.
    #[arg(long)]
    pub domain: Option<String>,
    /// At most this many (0: all).
    #[arg(long, default_value_t = 500)]
    pub limit: i64,
    /// Start after this subscriber (user@domain), for the next page.
    #[arg(long)]
    pub after: Option<String>,
}

/// Delete subscribers (their registrations expire as usual).
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  sipctl delete subscriber alice@example.com bob@example.com")]
pub struct DeleteArgs {
    /// Addresses of record: user@domain.
    #[arg(required = true)]
    pub aors: Vec<String>,
}

/// Change a subscriber's password.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  sipctl set password alice@example.com\n  printf '%s\\n' \"$NEWPW\" | sipctl set password alice@example.com --password-stdin")]
pub struct SetPasswordArgs {
    /// Address of record: user@domain.
    pub aor: String,
    #[command(flatten)]
    pub password: PasswordSource,
}

/// Import subscribers from CSV. The header names the columns: `username,domain,password`
/// or `username,domain,ha1,ha1b` (from an existing Kamailio database).
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  sipctl import subscribers users.csv\n  sipctl import subscribers kamailio-export.csv --upsert\n  sipctl import subscribers users.csv --dry-run")]
pub struct ImportArgs {
    /// CSV file (`-` for standard input).
    pub file: PathBuf,
    /// Update subscribers that exist instead of refusing the whole file.
    #[arg(long)]
    pub upsert: bool,
    /// Check every row and report; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// Export subscribers as CSV: `username,domain,ha1,ha1b` (importable again).
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  sipctl export subscribers > subscribers.csv\n  sipctl export subscribers --domain example.com -f example.csv")]
pub struct ExportArgs {
    /// Only subscribers of this domain.
    #[arg(long)]
    pub domain: Option<String>,
    /// Write to this file instead of standard output.
    #[arg(short = 'f', long)]
    pub file: Option<PathBuf>,
}

pub async fn add(_ctx: &Ctx, _args: AddArgs) -> anyhow::Result<()> {
    anyhow::bail!("sipctl add subscriber: pending")
}
pub async fn get(_ctx: &Ctx, _args: GetArgs) -> anyhow::Result<()> {
    anyhow::bail!("sipctl get subscribers: pending")
}
pub async fn delete(_ctx: &Ctx, _args: DeleteArgs) -> anyhow::Result<()> {
    anyhow::bail!("sipctl delete subscriber: pending")
}
pub async fn set_password(_ctx: &Ctx, _args: SetPasswordArgs) -> anyhow::Result<()> {
    anyhow::bail!("sipctl set password: pending")
}
pub async fn import(_ctx: &Ctx, _args: ImportArgs) -> anyhow::Result<()> {
    anyhow::bail!("sipctl import subscribers: pending")
}
pub async fn export(_ctx: &Ctx, _args: ExportArgs) -> anyhow::Result<()> {
    anyhow::bail!("sipctl export subscribers: pending")
}
