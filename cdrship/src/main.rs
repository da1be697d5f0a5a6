//! sipstack-cdr-shipper: moves an edge's call records from Kamailio's spool
//! files into the platform database.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use sipstack_cdrship::{ShipperConfig, ShipperSettings};
use tokio::signal::unix::{signal, SignalKind};

/// Where the database URL comes from without --db-url-file.
const DB_URL_ENV: &str = "SIPSTACK_DB_URL";

/// The log filter.
const LOG_ENV: &str = "SIPSTACK_LOG";

/// Moves an edge's call records from Kamailio's spool files (acc + db_flatstore)
/// into the platform database, exactly once.
#[derive(Debug, Parser)]
#[command(
    name = "sipstack-cdr-shipper",
    version,
    about,
    after_help = "\
The database URL is the first line of --db-url-file, else SIPSTACK_DB_URL; the RPC token
is the content of --rpc-token-file, else SIPSTACK_RPC_TOKEN. Logs go to stderr; the filter
is SIPSTACK_LOG (default info).

Without --once the shipper runs until SIGTERM or SIGINT, then ships what was written so far
and exits.

Examples:
  sipstack-cdr-shipper --spool /var/spool/sipstack/cdr --edge edge-a \\
      --rpc-url http://127.0.0.1:5071/RPC --rpc-token-file /run/secrets/rpc-token \\
      --db-url-file /run/secrets/db-url
  sipstack-cdr-shipper --spool /var/spool/sipstack/cdr --edge edge-a --kamailio-stopped --once"
)]
struct Cli {
    /// The directory Kamailio's db_flatstore writes (edge_cdr_<rank>.log).
    #[arg(long, value_name = "DIR")]
    spool: PathBuf,
    /// The SipEdge whose records these are.
    #[arg(long, value_name = "NAME")]
    edge: String,
    /// The edge's JSON-RPC endpoint, e.g. http://127.0.0.1:5071/RPC (not needed with
    /// --kamailio-stopped).
    #[arg(long, value_name = "URL", required_unless_present = "kamailio_stopped")]
    rpc_url: Option<String>,
    /// A file holding the RPC token.
    #[arg(long, value_name = "FILE")]
    rpc_token_file: Option<PathBuf>,
    /// A file whose first line is the database URL.
    #[arg(long, value_name = "FILE")]
    db_url_file: Option<PathBuf>,
    /// The pause between two cycles.
    #[arg(long, value_name = "MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(1..))]
    interval_ms: u64,
    /// How long after a rotation a file is read (a write under way ends meanwhile).
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    grace_ms: u64,
    /// Ship what is written so far, then exit (non-zero if anything was left).
    #[arg(long)]
    once: bool,
    /// Kamailio is not running: ship every file at once, without rotating.
    #[arg(long)]
    kamailio_stopped: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = init_logging() {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() -> anyhow::Result<()> {
    let directives = std::env::var(LOG_ENV).unwrap_or_else(|_| "info".into());
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .with_context(|| format!("{LOG_ENV}={directives:?} is not a level or a log filter"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // colours only for a person watching, not for a log collector
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = config(&cli)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        if cli.once {
            let report = sipstack_cdrship::ship_once(config).await?;
            tracing::info!(
                files = report.shipped.len(),
                stored = report.stored(),
                rejected = report.rejected(),
                waiting = report.waiting,
                "shipped"
            );
            return Ok(ExitCode::SUCCESS);
        }
        // registered before the first cycle: a signal during it is not lost
        let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let shutdown = async move {
            tokio::select! {
                _ = terminate.recv() => tracing::info!("SIGTERM received"),
                _ = interrupt.recv() => tracing::info!("SIGINT received"),
            }
        };
        sipstack_cdrship::run(config, shutdown).await?;
        Ok(ExitCode::SUCCESS)
    })
}

fn config(cli: &Cli) -> anyhow::Result<ShipperConfig> {
    let db_url = match &cli.db_url_file {
        Some(file) => {
            let text = read_secret(file, "database URL")?;
            text.lines().next().unwrap_or_default().trim().to_string()
        }
        None => std::env::var(DB_URL_ENV)
            .map(|u| u.trim().to_string())
            .unwrap_or_default(),
    };
    if db_url.is_empty() {
        anyhow::bail!("no database URL: give --db-url-file FILE or set {DB_URL_ENV}");
    }
    let token = match &cli.rpc_token_file {
        Some(file) => Some(read_secret(file, "RPC token")?.trim().to_string()),
        None => std::env::var(sipstack_edgerpc::TOKEN_ENV)
            .ok()
            .map(|t| t.trim().to_string()),
    };
    let mut settings = ShipperSettings::new(&cli.spool, &cli.edge);
    settings.grace = Duration::from_millis(cli.grace_ms);
    settings.kamailio_stopped = cli.kamailio_stopped;
    let mut config = ShipperConfig::new(settings, db_url);
    config.interval = Duration::from_millis(cli.interval_ms);
    if let Some(url) = &cli.rpc_url {
        config = config.with_rpc(url.clone(), token);
    }
    Ok(config)
}

/// Reads a file that holds a credential; the error names the file, never its content.
fn read_secret(file: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the {what} file {}", file.display()))
}
