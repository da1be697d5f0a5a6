//! `sipctl local`: the platform as processes on this host.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use sipstack_local::{default_state_dir, UpOptions};

use crate::context::{ConfigFile, DatabaseConfig, EdgeConfig, MediaNodeConfig, NamedContext};

#[derive(Debug, Subcommand)]
pub enum LocalCommand {
    /// Bring a platform file up on this host: PostgreSQL, the schema, the media pools'
    /// members and Kamailio. Running it again applies what changed.
    #[command(
        after_help = "Examples:\n  sipctl local up -f examples/platform.yaml\n  sipctl local up -f platform.yaml --state-dir /srv/sipstack --no-standins"
    )]
    Up(UpArgs),
    /// Stop every process of the local platform; the data stays for the next `up`.
    #[command(after_help = "Example:\n  sipctl local down")]
    Down(StateArgs),
    /// Show what runs, where, and the media members as the edge sees them.
    #[command(after_help = "Example:\n  sipctl local status")]
    Status(StateArgs),
}

#[derive(Debug, Args)]
pub struct StateArgs {
    /// State directory (default: /var/lib/sipstack/local as root, else ~/.local/state/sipstack/local).
    #[arg(long, env = "SIPSTACK_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

impl StateArgs {
    fn dir(&self) -> PathBuf {
        self.state_dir.clone().unwrap_or_else(default_state_dir)
    }
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Platform file: PgCluster, MediaPool(s) and SipEdge(s) in one multi-document YAML.
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    #[command(flatten)]
    pub state: StateArgs,
    /// Do not start SIP stand-ins for static media members on loopback addresses.
    #[arg(long)]
    pub no_standins: bool,
}

pub async fn run(cmd: LocalCommand) -> anyhow::Result<()> {
    match cmd {
        LocalCommand::Up(args) => {
            let text = std::fs::read_to_string(&args.file)
                .with_context(|| format!("cannot read {}", args.file.display()))?;
            let options = UpOptions {
                state_dir: args.state.dir(),
                standins: !args.no_standins,
            };
            let (state, report) = sipstack_local::up(&text, &options).await?;
            for line in &report.lines {
                println!("{line}");
            }
            let context = write_context(&state)?;
            println!("context    {context} (current; sipctl commands now talk to this platform)");
            for notice in &report.notices {
                println!("note       {notice}");
            }
            println!();
            println!("The platform is up.");
            for edge in &state.edges {
                println!(
                    "  SIP phones register at {} for domain {}",
                    edge.sip.first().cloned().unwrap_or_default(),
                    edge.domains.join(", ")
                );
            }
            println!(
                "  database URL (with the password): {}",
                state.db_url_file.display()
            );
            println!(
                "  sipctl local status    what runs, and the media members as the edge sees them"
            );
            println!("  sipctl local down      stop everything, keep the data");
            Ok(())
        }
        LocalCommand::Down(args) => {
            let report = sipstack_local::down(&args.dir()).await?;
            for line in &report.lines {
                println!("{line}");
            }
            Ok(())
        }
        LocalCommand::Status(args) => {
            let status = sipstack_local::status(&args.dir()).await?;
            let s = &status.state;
            println!("STATE DIR  {}", s.state_dir.display());
            println!(
                "postgres   PgCluster/{} 127.0.0.1:{} database {}  {}",
                s.postgres.cluster,
                s.postgres.port,
                s.postgres.database,
                if status.postgres_running {
                    "running"
                } else {
                    "stopped"
                }
            );
            if let Some(ha) = &s.postgres.ha {
                println!(
                    "           read-write 127.0.0.1:{} (HAProxy), read-only 127.0.0.1:{}{}; etcd {}",
                    s.postgres.port,
                    ha.read_only_port,
                    ha.pooler_port.map(|p| format!(", PgBouncer 127.0.0.1:{p}")).unwrap_or_default(),
                    ha.etcd_endpoints.join(" ")
                );
            }
            match &status.cluster {
                Some(Ok(cluster)) => print!("{}", super::db::members_table(cluster)),
                Some(Err(e)) => println!("  Patroni: {e}"),
                None => {}
            }
            for e in &status.edges {
                let state = match (e.pid, &e.rpc_error) {
                    (Some(pid), None) => format!(
                        "running (pid {pid}, {})",
                        e.version.clone().unwrap_or_default()
                    ),
                    (Some(pid), Some(err)) => format!("running (pid {pid}) but RPC fails: {err}"),
                    (None, _) => "stopped".to_string(),
                };
                println!("edge       SipEdge/{}  {state}", e.name);
                for d in &e.destinations {
                    println!(
                        "  set {:<4} {:<32} {:<26} flags {}",
                        d.set_id,
                        d.uri,
                        describe_state(&d.flags),
                        d.flags
                    );
                }
            }
            for (n, h) in &status.media_nodes {
                let state = match &h.error {
                    Some(e) => format!("unreachable: {e}"),
                    None => format!(
                        "{}, {} call(s), {} call(s)/s",
                        if h.paused {
                            "paused (draining)"
                        } else {
                            "serving"
                        },
                        h.calls.map(|c| c.to_string()).unwrap_or_else(|| "?".into()),
                        h.sessions_per_second
                            .map(|c| c.to_string())
                            .unwrap_or_else(|| "?".into()),
                    ),
                };
                println!(
                    "media      MediaPool/{} node {} {} FreeSWITCH (event socket {})  {state}",
                    n.pool, n.replica, n.uri, n.event_socket
                );
            }
            for (s, alive) in &status.standins {
                println!(
                    "media      {} (pool {}) stand-in {}",
                    s.uri,
                    s.pool,
                    if *alive { "running" } else { "stopped" }
                );
            }
            Ok(())
        }
    }
}

/// Records the local platform as the sipctl context `local` and makes it current.
fn write_context(state: &sipstack_local::state::LocalState) -> anyhow::Result<String> {
    let path = ConfigFile::path();
    let mut file = ConfigFile::load(&path)?;
    let name = "local".to_string();
    file.upsert(NamedContext {
        name: name.clone(),
        database: DatabaseConfig {
            url: None,
            url_file: Some(state.db_url_file.clone()),
            patroni: state
                .postgres
                .ha
                .as_ref()
                .map(|h| h.patroni_urls.clone())
                .unwrap_or_default(),
            patroni_password_file: state
                .postgres
                .ha
                .as_ref()
                .and_then(|h| h.rest_password_file.clone()),
        },
        edges: state
            .edges
            .iter()
            .map(|e| EdgeConfig {
                name: e.name.clone(),
                rpc: e.rpc_url.clone(),
            })
            .collect(),
        rpc_token_file: state.edges.iter().find_map(|e| e.rpc_token_file.clone()),
        // the key `local up` keeps for the edges, once it is there
        trunk_key_file: Some(sipstack_local::state::trunk_key_file(&state.state_dir))
            .filter(|f| f.exists()),
        media_nodes: state
            .media_nodes
            .iter()
            .map(|n| MediaNodeConfig {
                uri: n.uri.clone(),
                event_socket: n.event_socket.clone(),
                password_file: sipstack_local::freeswitch::esl_password_file(
                    &state.state_dir,
                    &n.pool,
                ),
            })
            .collect(),
    });
    file.current_context = Some(name.clone());
    file.save(&path)?;
    Ok(name)
}

/// Kamailio's two-letter dispatcher state in words.
fn describe_state(flags: &str) -> String {
    let state = match flags.chars().next() {
        Some('A') => "active",
        Some('I') => "inactive",
        Some('T') => "trying (failing probes)",
        Some('D') => "disabled",
        _ => "unknown",
    };
    if flags.ends_with('X') && state == "active" {
        format!("{state}, not probed yet")
    } else {
        state.to_string()
    }
}

/// `sipctl scale mediapool NAME --replicas N` on the local platform.
#[derive(Debug, Args)]
#[command(
    after_help = "The local platform runs the pool's replicas as FreeSWITCH processes. Scaling out starts nodes and adds them \
to the dispatcher set once they answer; scaling in takes nodes out of the set, waits for their calls to end (at most the \
pool's drainSeconds) and then stops them. The platform file `local up` ran keeps the new count; change the file you apply \
as well, or its next `local up` sets the old one again.\n\nExamples:\n  sipctl scale mediapool media --replicas 3\n  \
sipctl scale mpool media --replicas 1 --state-dir /srv/sipstack"
)]
pub struct ScaleArgs {
    /// The MediaPool.
    pub name: String,
    /// Nodes it should run.
    #[arg(long)]
    pub replicas: i32,
    #[command(flatten)]
    pub state: StateArgs,
}

pub async fn scale_mediapool(args: ScaleArgs) -> anyhow::Result<()> {
    let dir = args.state.dir();
    let state = sipstack_local::state::LocalState::load(&dir)?;
    let text = std::fs::read_to_string(&state.platform_file)
        .with_context(|| format!("cannot read {}", state.platform_file.display()))?;
    let scaled = with_replicas(&text, &args.name, args.replicas)?;
    let options = UpOptions {
        state_dir: dir,
        standins: true,
    };
    let (_, report) = sipstack_local::up(&scaled, &options).await?;
    for line in report.lines.iter().filter(|l| l.starts_with("media")) {
        println!("{line}");
    }
    for notice in &report.notices {
        println!("note       {notice}");
    }
    println!("MediaPool/{} runs {} replica(s).", args.name, args.replicas);
    Ok(())
}

/// The platform file with `spec.replicas` of MediaPool `name` set to `replicas`
/// (the other documents unchanged in meaning; comments do not survive).
fn with_replicas(text: &str, name: &str, replicas: i32) -> anyhow::Result<String> {
    use serde::Deserialize;
    let mut docs = Vec::new();
    let mut found = false;
    for doc in serde_yaml::Deserializer::from_str(text) {
        let mut value =
            serde_yaml::Value::deserialize(doc).context("the platform file does not parse")?;
        if value.is_null() {
            continue;
        }
        let is_pool = value.get("kind").and_then(|k| k.as_str()) == Some("MediaPool")
            && value
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(|n| n.as_str())
                == Some(name);
        if is_pool {
            let spec = value
                .get_mut("spec")
                .and_then(|s| s.as_mapping_mut())
                .with_context(|| format!("MediaPool/{name} has no spec"))?;
            spec.insert("replicas".into(), replicas.into());
            found = true;
        }
        docs.push(serde_yaml::to_string(&value)?);
    }
    if !found {
        anyhow::bail!("the local platform declares no MediaPool named {name:?}; `sipctl local status` shows what runs");
    }
    Ok(docs.join("---\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_change_in_the_named_pool_only() {
        let text = include_str!("../../../examples/platform.yaml");
        let scaled = with_replicas(text, "media", 5).unwrap();
        let platform = sipstack_crds::Platform::from_yaml(&scaled).unwrap();
        assert_eq!(platform.media_pools[0].spec.replicas, 5);
        assert_eq!(platform.sip_edges.len(), 1);
        assert_eq!(platform.pg_clusters.len(), 1);
        let err = with_replicas(text, "other", 1).unwrap_err().to_string();
        assert!(err.contains("no MediaPool named \"other\""), "{err}");
    }
}
