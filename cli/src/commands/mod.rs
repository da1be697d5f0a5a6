//! The command tree: verb first, as in `sipctl add subscriber` and `kubectl get pods`.
//! Each noun has its own module; `Ctx` carries where to connect and how to print.

mod cdr;
mod completion;
mod config;
mod db;
mod dispatcher;
mod limits;
mod local;
mod number;
mod registration;
mod render;
mod route;
mod status;
mod subscriber;
mod trunk;
mod voicemail;

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use sipstack_edgerpc::{EdgeRpc, Reload};

use crate::context::{Overrides, Target};
use crate::output::{Format, Output};

/// sipctl: the sipstack command line. Subscribers, routes, trunks, numbers, media
/// pool members, registrations and CDRs of a running platform; the platform
/// itself on this host.
#[derive(Debug, Parser)]
#[command(name = "sipctl", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Context of the config file to use (default: its current context).
    #[arg(long, global = true, env = "SIPCTL_CONTEXT")]
    pub context: Option<String>,
    /// PostgreSQL URL of the platform database (overrides the context). A password
    /// in it is visible to every user of the host in the process list: prefer
    /// SIPCTL_DB_URL or a context (`sipctl config set-context --db-url-file`).
    #[arg(long, global = true, env = "SIPCTL_DB_URL", hide_env_values = true)]
    pub db_url: Option<String>,
    /// JSON-RPC endpoint of an edge, e.g. 127.0.0.1:5071 (repeatable; overrides the context).
    #[arg(
        long = "edge",
        global = true,
        env = "SIPCTL_EDGE",
        value_delimiter = ','
    )]
    pub edges: Vec<String>,
    /// Patroni REST API of a database member, e.g. 127.0.0.1:8008 (repeatable; overrides the context).
    #[arg(
        long = "patroni",
        global = true,
        env = "SIPCTL_PATRONI",
        value_delimiter = ','
    )]
    pub patroni: Vec<String>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Leave out the header row of tables and CSV.
    #[arg(long, global = true)]
    pub no_headers: bool,
    /// Seconds to wait for the database connection.
    #[arg(long, global = true, default_value_t = 10, value_name = "SECONDS")]
    pub connect_timeout: u64,
    /// Do not tell the edges to reload after a change (use `sipctl reload` later).
    #[arg(long, global = true)]
    pub no_reload: bool,
    /// More log output (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Add a subscriber, a route, a trunk or a number.
    #[command(subcommand)]
    Add(AddCommand),
    /// List subscribers, routes, trunks, numbers, dispatchers, registrations, CDRs or voicemail.
    #[command(subcommand)]
    Get(GetCommand),
    /// Delete subscribers, routes, trunks, numbers or voicemail messages.
    #[command(subcommand)]
    Delete(DeleteCommand),
    /// Change a subscriber's password.
    #[command(subcommand)]
    Set(SetCommand),
    /// Import subscribers or numbers from CSV.
    #[command(subcommand)]
    Import(ImportCommand),
    /// Export subscribers as CSV (ha1/ha1b, no passwords).
    #[command(subcommand)]
    Export(ExportCommand),
    /// Show which route a number would take, without a call.
    #[command(subcommand)]
    Test(TestCommand),
    /// Stop sending new calls to a media node; calls in progress finish.
    #[command(subcommand)]
    Drain(DrainCommand),
    /// Send calls to a drained media node again.
    #[command(subcommand)]
    Enable(EnableCommand),
    /// Change how many FreeSWITCH nodes a media pool of the local platform runs.
    #[command(subcommand)]
    Scale(ScaleCommand),
    /// Tell the edges to reload routes, trunks or dispatcher members from the database.
    #[command(subcommand)]
    Reload(ReloadCommand),
    /// Database, edges and media pools at a glance.
    Status(status::StatusArgs),
    /// Contexts: which database and edges sipctl talks to.
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Print the configuration a component would run with.
    #[command(subcommand)]
    Render(render::RenderCommand),
    /// Run a platform file as processes on this host.
    #[command(subcommand)]
    Local(local::LocalCommand),
    /// The platform database: schema migrations.
    #[command(subcommand)]
    Db(db::DbCommand),
    /// Shell completion script (bash, zsh, fish, elvish, powershell).
    Completion(completion::CompletionArgs),
    /// Write man pages for every command into a directory.
    Man(completion::ManArgs),
}

#[derive(Debug, Subcommand)]
pub enum AddCommand {
    #[command(visible_alias = "sub")]
    Subscriber(subscriber::AddArgs),
    #[command(visible_alias = "rt")]
    Route(Box<route::AddArgs>),
    Trunk(Box<trunk::AddArgs>),
    #[command(visible_alias = "num")]
    Number(number::AddArgs),
    TrunkAddress(trunk::AddAddressArgs),
    TrunkGateway(trunk::AddGatewayArgs),
}

#[derive(Debug, Subcommand)]
pub enum GetCommand {
    #[command(visible_aliases = ["subscriber", "sub"])]
    Subscribers(subscriber::GetArgs),
    #[command(visible_aliases = ["route", "rt"])]
    Routes(route::GetArgs),
    #[command(visible_alias = "trunk")]
    Trunks(trunk::GetArgs),
    #[command(visible_aliases = ["number", "num"])]
    Numbers(number::GetArgs),
    #[command(visible_aliases = ["dispatcher", "ds"])]
    Dispatchers(dispatcher::GetArgs),
    #[command(visible_aliases = ["registration", "reg"])]
    Registrations(registration::GetArgs),
    #[command(visible_alias = "cdr")]
    Cdrs(cdr::GetArgs),
    #[command(visible_aliases = ["vm"])]
    Voicemail(voicemail::GetArgs),
}

#[derive(Debug, Subcommand)]
pub enum DeleteCommand {
    #[command(visible_aliases = ["subscribers", "sub"])]
    Subscriber(subscriber::DeleteArgs),
    #[command(visible_aliases = ["routes", "rt"])]
    Route(route::DeleteArgs),
    Trunk(trunk::DeleteArgs),
    #[command(visible_alias = "num")]
    Number(number::DeleteArgs),
    TrunkAddress(trunk::DeleteAddressArgs),
    TrunkGateway(trunk::DeleteGatewayArgs),
    #[command(visible_aliases = ["vm"])]
    Voicemail(voicemail::DeleteArgs),
}

#[derive(Debug, Subcommand)]
pub enum SetCommand {
    Password(subscriber::SetPasswordArgs),
    TrunkLimits(limits::TrunkLimitsArgs),
    CallLimit(limits::CallLimitArgs),
}

#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    #[command(visible_aliases = ["subscriber", "sub"])]
    Subscribers(subscriber::ImportArgs),
    #[command(visible_alias = "number")]
    Numbers(number::ImportArgs),
}

#[derive(Debug, Subcommand)]
pub enum ExportCommand {
    #[command(visible_aliases = ["subscriber", "sub"])]
    Subscribers(subscriber::ExportArgs),
    #[command(visible_aliases = ["vm"])]
    Voicemail(voicemail::ExportArgs),
}

#[derive(Debug, Subcommand)]
pub enum TestCommand {
    #[command(visible_alias = "rt")]
    Route(route::TestArgs),
}

#[derive(Debug, Subcommand)]
pub enum DrainCommand {
    #[command(visible_alias = "ds")]
    Dispatcher(dispatcher::StateArgs),
}

#[derive(Debug, Subcommand)]
pub enum ScaleCommand {
    #[command(visible_alias = "mpool")]
    Mediapool(local::ScaleArgs),
}

#[derive(Debug, Subcommand)]
pub enum EnableCommand {
    #[command(visible_alias = "ds")]
    Dispatcher(dispatcher::StateArgs),
}

#[derive(Debug, Subcommand)]
pub enum ReloadCommand {
    /// `dialplan.reload` on every edge.
    #[command(visible_alias = "route")]
    Routes,
    /// `dispatcher.reload` on every edge.
    #[command(visible_alias = "dispatcher")]
    Dispatchers,
    /// `permissions.addressReload`, `htable.reload trunk` and `dialplan.reload` on every edge.
    #[command(visible_alias = "trunk")]
    Trunks,
}

/// What every command needs: where to connect, how to print.
pub struct Ctx {
    pub target: Target,
    pub output: Output,
    pub connect_timeout: Duration,
    pub reload: bool,
}

impl Ctx {
    /// A connection to the platform database.
    pub async fn db(&self) -> anyhow::Result<tokio_postgres::Client> {
        let url = self.target.require_db_url()?;
        Ok(sipstack_db::connect(url, self.connect_timeout).await?)
    }

    /// RPC clients of the edges of the context.
    pub fn edges(&self) -> Vec<(String, EdgeRpc)> {
        self.target
            .edges
            .iter()
            .map(|e| {
                let rpc = EdgeRpc::new(&e.rpc);
                let rpc = match &self.target.rpc_token {
                    Some(token) => rpc.with_token(token.clone()),
                    None => rpc,
                };
                (e.name.clone(), rpc)
            })
            .collect()
    }

    /// After a committed change: tells every edge to reload `what` (waiting out
    /// Kamailio's reload rate limit). An unreachable edge is reported, not fatal:
    /// the change is in the database and the edge reads it when it comes back.
    pub async fn push_reload(&self, what: Reload) {
        if !self.reload {
            eprintln!(
                "note: not reloaded (--no-reload); run `sipctl reload {}` to apply",
                reload_noun(what)
            );
            return;
        }
        let edges = self.edges();
        if edges.is_empty() {
            eprintln!(
                "note: no edge is known (give --edge or use a context); the edges apply the change at their next `sipctl reload {}`",
                reload_noun(what)
            );
            return;
        }
        for (name, rpc) in edges {
            match rpc.reload(what, Duration::from_secs(15)).await {
                Ok(()) => tracing::info!(edge = %name, method = what.method(), "reloaded"),
                Err(e) => eprintln!(
                    "warning: edge {name} was not reloaded ({e}); the change is saved and applies at its next reload"
                ),
            }
        }
    }
}

fn reload_noun(what: Reload) -> &'static str {
    match what {
        Reload::Routes => "routes",
        Reload::Dispatcher => "dispatchers",
        Reload::Trunks => "trunks",
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let g = cli.global;
    let output = Output {
        format: g.output,
        no_headers: g.no_headers,
    };
    // commands that do not talk to a platform
    match cli.command {
        Command::Render(cmd) => return render::run(cmd),
        Command::Local(cmd) => return local::run(cmd).await,
        Command::Scale(ScaleCommand::Mediapool(args)) => return local::scale_mediapool(args).await,
        Command::Config(cmd) => return config::run(cmd, output),
        Command::Completion(args) => return completion::completion(args),
        Command::Man(args) => return completion::man(args),
        _ => {}
    }
    let overrides = Overrides {
        context: g.context,
        db_url: g.db_url,
        edges: g.edges,
        patroni: g.patroni,
    };
    let ctx = Ctx {
        target: Target::resolve(&overrides)?,
        output,
        connect_timeout: Duration::from_secs(g.connect_timeout),
        reload: !g.no_reload,
    };
    match cli.command {
        Command::Add(AddCommand::Subscriber(a)) => subscriber::add(&ctx, a).await,
        Command::Add(AddCommand::Route(a)) => route::add(&ctx, *a).await,
        Command::Add(AddCommand::Trunk(a)) => trunk::add(&ctx, *a).await,
        Command::Add(AddCommand::Number(a)) => number::add(&ctx, a).await,
        Command::Add(AddCommand::TrunkAddress(a)) => trunk::add_address(&ctx, a).await,
        Command::Add(AddCommand::TrunkGateway(a)) => trunk::add_gateway(&ctx, a).await,
        Command::Get(GetCommand::Subscribers(a)) => subscriber::get(&ctx, a).await,
        Command::Get(GetCommand::Routes(a)) => route::get(&ctx, a).await,
        Command::Get(GetCommand::Trunks(a)) => trunk::get(&ctx, a).await,
        Command::Get(GetCommand::Numbers(a)) => number::get(&ctx, a).await,
        Command::Get(GetCommand::Dispatchers(a)) => dispatcher::get(&ctx, a).await,
        Command::Get(GetCommand::Registrations(a)) => registration::get(&ctx, a).await,
        Command::Get(GetCommand::Cdrs(a)) => cdr::get(&ctx, a).await,
        Command::Get(GetCommand::Voicemail(a)) => voicemail::get(&ctx, a).await,
        Command::Delete(DeleteCommand::Subscriber(a)) => subscriber::delete(&ctx, a).await,
        Command::Delete(DeleteCommand::Route(a)) => route::delete(&ctx, a).await,
        Command::Delete(DeleteCommand::Trunk(a)) => trunk::delete(&ctx, a).await,
        Command::Delete(DeleteCommand::Number(a)) => number::delete(&ctx, a).await,
        Command::Delete(DeleteCommand::TrunkAddress(a)) => trunk::delete_address(&ctx, a).await,
        Command::Delete(DeleteCommand::TrunkGateway(a)) => trunk::delete_gateway(&ctx, a).await,
        Command::Delete(DeleteCommand::Voicemail(a)) => voicemail::delete(&ctx, a).await,
        Command::Set(SetCommand::Password(a)) => subscriber::set_password(&ctx, a).await,
        Command::Set(SetCommand::TrunkLimits(a)) => limits::set_trunk_limits(&ctx, a).await,
        Command::Set(SetCommand::CallLimit(a)) => limits::set_call_limit(&ctx, a).await,
        Command::Import(ImportCommand::Subscribers(a)) => subscriber::import(&ctx, a).await,
        Command::Import(ImportCommand::Numbers(a)) => number::import(&ctx, a).await,
        Command::Export(ExportCommand::Subscribers(a)) => subscriber::export(&ctx, a).await,
        Command::Export(ExportCommand::Voicemail(a)) => voicemail::export(&ctx, a).await,
        Command::Test(TestCommand::Route(a)) => route::test(&ctx, a).await,
        Command::Drain(DrainCommand::Dispatcher(a)) => dispatcher::drain(&ctx, a).await,
        Command::Enable(EnableCommand::Dispatcher(a)) => dispatcher::enable(&ctx, a).await,
        Command::Reload(ReloadCommand::Routes) => {
            ctx.push_reload(Reload::Routes).await;
            Ok(())
        }
        Command::Reload(ReloadCommand::Dispatchers) => {
            ctx.push_reload(Reload::Dispatcher).await;
            Ok(())
        }
        Command::Reload(ReloadCommand::Trunks) => {
            ctx.push_reload(Reload::Trunks).await;
            Ok(())
        }
        Command::Status(a) => status::run(&ctx, a).await,
        Command::Db(cmd) => db::run(&ctx, cmd).await,
        Command::Render(_)
        | Command::Local(_)
        | Command::Scale(_)
        | Command::Config(_)
        | Command::Completion(_)
        | Command::Man(_) => {
            unreachable!("handled above")
        }
    }
}

/// Exit codes scripts can rely on.
pub mod exit {
    pub const FAILURE: u8 = 1;
    /// A malformed argument or file (clap's own usage errors exit with 2).
    pub const INVALID_INPUT: u8 = 3;
    pub const NOT_FOUND: u8 = 4;
    pub const UNREACHABLE: u8 = 5;
    /// The thing to add exists already.
    pub const ALREADY_EXISTS: u8 = 6;
}

/// An error a command raises on purpose, with the exit code it means.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unreachable(String),
}

/// The error and its causes on one line, each sentence once: an error that shows
/// its cause's text (`#[error("{0}")]`) would otherwise repeat it.
pub fn error_message(err: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if text.is_empty() || message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message
}

pub fn exit_code(err: &anyhow::Error) -> u8 {
    use sipstack_db::DbError;
    for cause in err.chain() {
        if cause
            .downcast_ref::<sipstack_crds::PlatformError>()
            .is_some()
            || cause
                .downcast_ref::<sipstack_render::RenderError>()
                .is_some()
        {
            return exit::INVALID_INPUT;
        }
        if let Some(e) = cause.downcast_ref::<CliError>() {
            return match e {
                CliError::Invalid(_) => exit::INVALID_INPUT,
                CliError::NotFound(_) => exit::NOT_FOUND,
                CliError::Unreachable(_) => exit::UNREACHABLE,
            };
        }
        if let Some(db) = cause.downcast_ref::<DbError>() {
            return match db {
                DbError::Connect { .. } | DbError::ConnectTimeout { .. } => exit::UNREACHABLE,
                DbError::InvalidUrl { .. } | DbError::Invalid { .. } => exit::INVALID_INPUT,
                DbError::NotFound { .. } => exit::NOT_FOUND,
                DbError::AlreadyExists { .. } | DbError::Conflict { .. } => exit::ALREADY_EXISTS,
                _ => exit::FAILURE,
            };
        }
        if let Some(rpc) = cause.downcast_ref::<sipstack_edgerpc::RpcError>() {
            if matches!(rpc, sipstack_edgerpc::RpcError::Unreachable { .. }) {
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
    let filter = tracing_subscriber::EnvFilter::try_from_env("SIPCTL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(test)]
mod error_message_tests {
    #[derive(Debug, thiserror::Error)]
    #[error("database: {0}")]
    struct Inner(String);

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("{0}")]
        Shows(#[source] Inner),
    }

    #[test]
    fn each_sentence_is_printed_once() {
        let e = anyhow::Error::new(Outer::Shows(Inner("connection refused".into())))
            .context("local up failed");
        assert_eq!(
            super::error_message(&e),
            "local up failed: database: connection refused"
        );
        // without the repetition, every cause is kept
        let e = anyhow::anyhow!("root cause").context("while starting the edge");
        assert_eq!(
            super::error_message(&e),
            "while starting the edge: root cause"
        );
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every command a person runs shows examples in its `--help`.
    #[test]
    fn every_command_has_examples() {
        fn walk(cmd: &clap::Command, path: String, missing: &mut Vec<String>) {
            let leaf = cmd.get_subcommands().next().is_none();
            let has_examples = cmd
                .get_after_help()
                .is_some_and(|h| h.to_string().contains("Example"));
            // `reload` and `set` have self-explaining leaves; `help` is clap's own
            let exempt = [
                "sipctl reload routes",
                "sipctl reload dispatchers",
                "sipctl reload trunks",
                "sipctl db version",
                "sipctl config current-context",
                "sipctl config delete-context",
            ];
            if leaf && !has_examples && !exempt.contains(&path.as_str()) && !path.ends_with(" help")
            {
                missing.push(path.clone());
            }
            for sub in cmd.get_subcommands() {
                walk(sub, format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "sipctl".into(), &mut missing);
        assert!(
            missing.is_empty(),
            "commands without examples in --help: {missing:#?}"
        );
    }

    #[test]
    fn the_command_tree_is_consistent() {
        Cli::command().debug_assert();
    }
}
