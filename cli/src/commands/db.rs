//! `sipctl db`: the platform database's schema, and its Patroni cluster.

use std::fmt::Write as _;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use sipstack_patroni::{Cluster, PatroniClient, PatroniError, SwitchoverRequest};

use super::{CliError, Ctx};

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Apply the schema migrations this sipctl knows (a no-op when the schema is current).
    #[command(
        after_help = "Examples:\n  sipctl db migrate --db-url postgres://sipstack:PASSWORD@127.0.0.1:5432/sipstack\n  SIPCTL_DB_URL=postgres://... sipctl db migrate"
    )]
    Migrate,
    /// Print the schema version of the database and the newest this sipctl knows.
    Version,
    /// List the Patroni cluster's members: role, state, timeline and replication lag.
    #[command(
        after_help = "Examples:\n  sipctl db members\n  sipctl db members --patroni 127.0.0.1:8008 -o json"
    )]
    Members,
    /// Hand the primary role to a replica, with the checks patronictl makes first
    /// (a leader exists, the candidate runs and may be promoted, and in synchronous
    /// mode is the synchronous standby). Clients of the read-write endpoint reconnect.
    #[command(after_help = "Examples:\n  sipctl db switchover\n  sipctl db switchover --to pg-2")]
    Switchover(SwitchoverArgs),
    /// Promote a replica when the cluster has no healthy primary (may lose the last
    /// commits unless synchronous mode is on). Prefer `switchover` while a primary runs.
    #[command(after_help = "Example:\n  sipctl db failover --to pg-1 --force")]
    Failover(FailoverArgs),
}

#[derive(Debug, Args)]
pub struct SwitchoverArgs {
    /// Member to promote (default: the healthiest replica, as Patroni chooses).
    #[arg(long = "to", value_name = "MEMBER")]
    pub candidate: Option<String>,
}

#[derive(Debug, Args)]
pub struct FailoverArgs {
    /// Member to promote.
    #[arg(long = "to", value_name = "MEMBER")]
    pub candidate: String,
    /// Needed: a failover can lose commits a switchover would keep.
    #[arg(long)]
    pub force: bool,
}

pub async fn run(ctx: &Ctx, cmd: DbCommand) -> anyhow::Result<()> {
    match cmd {
        DbCommand::Migrate => {
            let mut client = ctx.db().await?;
            let report = sipstack_db::migrate(&mut client)
                .await
                .context("migration failed; nothing was changed")?;
            if report.applied.is_empty() {
                println!("schema is current (version {})", report.version);
            } else {
                for m in &report.applied {
                    println!("applied {:04} {}", m.version, m.name);
                }
                println!(
                    "schema version {} -> {}",
                    report.version_before, report.version
                );
            }
        }
        DbCommand::Version => {
            let client = ctx.db().await?;
            let version = sipstack_db::schema_version(&client).await?;
            println!(
                "database schema version {version} (this sipctl knows up to {})",
                sipstack_db::latest_version()
            );
        }
        DbCommand::Members => {
            let cluster = patroni(ctx)?.cluster().await.map_err(cli_error)?;
            ctx.output.object(&cluster, |out| {
                out.write_all(members_table(&cluster).as_bytes())
            })?;
        }
        DbCommand::Switchover(args) => {
            let client = patroni(ctx)?;
            let before = client.cluster().await.map_err(cli_error)?;
            let old = before.leader().map(|l| l.name.clone()).unwrap_or_default();
            let answer = client
                .switchover(&SwitchoverRequest {
                    candidate: args.candidate,
                })
                .await
                .map_err(cli_error)?;
            println!("{answer}");
            let after = client
                .wait_for_leader(Some(&old), NEW_LEADER_WAIT)
                .await
                .ok();
            match after {
                Some(c) => print!("{}", members_table(&c)),
                None => {
                    println!("note: the new primary is not running yet; see `sipctl db members`")
                }
            }
        }
        DbCommand::Failover(args) => {
            if !args.force {
                return Err(CliError::Invalid(
                    "a failover may lose the last commits of the old primary; add --force, or use `sipctl db switchover` while a primary runs"
                        .into(),
                )
                .into());
            }
            let client = patroni(ctx)?;
            let old = client
                .cluster()
                .await
                .ok()
                .and_then(|c| c.leader().map(|l| l.name.clone()))
                .unwrap_or_default();
            let answer = client.failover(&args.candidate).await.map_err(cli_error)?;
            println!("{answer}");
            if let Ok(c) = client.wait_for_leader(Some(&old), NEW_LEADER_WAIT).await {
                print!("{}", members_table(&c));
            }
        }
    }
    Ok(())
}

/// How long switchover and failover wait to show the new primary.
const NEW_LEADER_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

fn patroni(ctx: &Ctx) -> anyhow::Result<PatroniClient> {
    if ctx.target.patroni.is_empty() {
        return Err(CliError::Invalid(
            "no Patroni REST API known: give --patroni HOST:PORT (a member's REST API, e.g. 127.0.0.1:8008), \
             set SIPCTL_PATRONI, or use a context of a cluster with more than one instance"
                .into(),
        )
        .into());
    }
    let client = PatroniClient::new(ctx.target.patroni.clone());
    Ok(match &ctx.target.patroni_password {
        Some(password) => client.with_auth(sipstack_patroni::REST_API_USER, password.as_str()),
        None => client,
    })
}

fn cli_error(e: PatroniError) -> anyhow::Error {
    match e {
        PatroniError::Unreachable { .. } => CliError::Unreachable(e.to_string()).into(),
        PatroniError::Refused(m) => CliError::Invalid(m).into(),
        PatroniError::Http { status: 401, .. } => CliError::Invalid(format!(
            "{e}; the REST API wants the password of user {}: set SIPCTL_PATRONI_PASSWORD \
             or patroniPasswordFile in the context (`sipctl local up` writes it)",
            sipstack_patroni::REST_API_USER
        ))
        .into(),
        other => other.into(),
    }
}

/// The members as a table, the way `patronictl list` shows them.
pub fn members_table(cluster: &Cluster) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "  {:<14} {:<22} {:<13} {:<10} {:>3}  LAG",
        "MEMBER", "HOST", "ROLE", "STATE", "TL"
    );
    for m in &cluster.members {
        let lag = match (m.role.is_leader(), m.lag_bytes) {
            (true, _) => String::new(),
            (false, Some(b)) => format!("{b} B"),
            (false, None) => "unknown".into(),
        };
        let _ = writeln!(
            out,
            "  {:<14} {:<22} {:<13} {:<10} {:>3}  {lag}",
            m.name,
            format!("{}:{}", m.host, m.port),
            m.role.as_str(),
            m.state,
            m.timeline.map(|t| t.to_string()).unwrap_or_default()
        );
    }
    out
}
