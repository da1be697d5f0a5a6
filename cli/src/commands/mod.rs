//! The command tree. One module per noun group; each `run` returns `anyhow::Result`.

mod db;
mod local;
mod render;

use clap::{Parser, Subcommand};

/// sipstack's command line: render configuration, run the platform locally,
/// and manage what the platform keeps in PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "sipctl", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// More log output (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the configuration a component would run with.
    #[command(subcommand)]
    Render(render::RenderCommand),
    /// Run a platform file as processes on this host.
    #[command(subcommand)]
    Local(local::LocalCommand),
    /// The platform database: schema migrations.
    #[command(subcommand)]
    Db(db::DbCommand),
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Render(cmd) => render::run(cmd),
        Command::Local(cmd) => local::run(cmd).await,
        Command::Db(cmd) => db::run(cmd).await,
    }
}

/// Exit codes scripts can rely on.
pub mod exit {
    pub const FAILURE: u8 = 1;
    pub const INVALID_INPUT: u8 = 3;
    pub const UNREACHABLE: u8 = 5;
}

pub fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.downcast_ref::<sipstack_crds::PlatformError>().is_some()
            || cause.downcast_ref::<sipstack_render::RenderError>().is_some()
        {
            return exit::INVALID_INPUT;
        }
        if let Some(db) = cause.downcast_ref::<sipstack_db::DbError>() {
            if matches!(db, sipstack_db::DbError::Connect { .. } | sipstack_db::DbError::ConnectTimeout { .. }) {
                return exit::UNREACHABLE;
            }
        }
    }
    exit::FAILURE
}

pub fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SIPCTL_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
