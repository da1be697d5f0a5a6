//! `sipctl db`: the platform database's schema.

use anyhow::Context as _;
use clap::Subcommand;

use super::Ctx;

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Apply the schema migrations this sipctl knows (a no-op when the schema is current).
    #[command(after_help = "Examples:\n  sipctl db migrate --db-url postgres://sipstack:PASSWORD@127.0.0.1:5432/sipstack\n  SIPCTL_DB_URL=postgres://... sipctl db migrate")]
    Migrate,
    /// Print the schema version of the database and the newest this sipctl knows.
    Version,
}

pub async fn run(ctx: &Ctx, cmd: DbCommand) -> anyhow::Result<()> {
    let mut client = ctx.db().await?;
    match cmd {
        DbCommand::Migrate => {
            let report = sipstack_db::migrate(&mut client).await.context("migration failed; nothing was changed")?;
            if report.applied.is_empty() {
                println!("schema is current (version {})", report.version);
            } else {
                for m in &report.applied {
                    println!("applied {:04} {}", m.version, m.name);
                }
                println!("schema version {} -> {}", report.version_before, report.version);
            }
        }
        DbCommand::Version => {
            let version = sipstack_db::schema_version(&client).await?;
            println!("database schema version {version} (this sipctl knows up to {})", sipstack_db::latest_version());
        }
    }
    Ok(())
}
