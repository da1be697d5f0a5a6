//! `sipctl db`: the platform database's schema.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Apply the schema migrations this sipctl knows (a no-op when the schema is current).
    #[command(after_help = "Examples:\n  sipctl db migrate --db-url postgres://sipstack:PASSWORD@127.0.0.1:5432/sipstack\n  SIPCTL_DB_URL=postgres://... sipctl db migrate")]
    Migrate(DbArgs),
    /// Print the schema version of the database and the newest this sipctl knows.
    Version(DbArgs),
}

#[derive(Debug, Args)]
pub struct DbArgs {
    /// PostgreSQL URL of the platform database.
    #[arg(long, env = "SIPCTL_DB_URL", hide_env_values = true)]
    pub db_url: String,
    /// Seconds to wait for the connection.
    #[arg(long, default_value_t = 10)]
    pub connect_timeout: u64,
}

pub async fn run(cmd: DbCommand) -> anyhow::Result<()> {
    match cmd {
        DbCommand::Migrate(args) => {
            let mut client = sipstack_db::connect(&args.db_url, Duration::from_secs(args.connect_timeout)).await?;
            let report = sipstack_db::migrate(&mut client).await.context("migration failed; nothing was changed")?;
            if report.applied.is_empty() {
                println!("schema is current (version {})", report.version);
            } else {
                for m in &report.applied {
                    println!("applied {:04} {}", m.version, m.name);
                }
                println!("schema version {} -> {}", report.version_before, report.version);
            }
            Ok(())
        }
        DbCommand::Version(args) => {
            let client = sipstack_db::connect(&args.db_url, Duration::from_secs(args.connect_timeout)).await?;
            let version = sipstack_db::schema_version(&client).await?;
            println!("database schema version {version} (this sipctl knows up to {})", sipstack_db::latest_version());
            Ok(())
        }
    }
}
