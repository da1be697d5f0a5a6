//! `sipctl config`: contexts (which database and edges a command talks to).

use clap::{Args, Subcommand};
use serde::Serialize;

use crate::context::{normalize_rpc_url, ConfigFile, DatabaseConfig, EdgeConfig, NamedContext};
use crate::output::{Columns, Output};

use super::CliError;

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// List the contexts of the config file.
    #[command(after_help = "Example:\n  sipctl config get-contexts")]
    GetContexts,
    /// Make a context the current one.
    #[command(after_help = "Example:\n  sipctl config use-context production")]
    UseContext { name: String },
    /// Print the current context's name.
    CurrentContext,
    /// Add or change a context.
    #[command(
        after_help = "Examples:\n  sipctl config set-context production --db-url-file /etc/sipstack/db-url --edge 10.0.0.10:5071 --edge 10.0.0.11:5071\n  sipctl config set-context lab --db-url postgres://sipstack:pw@lab-db:5432/sipstack --use"
    )]
    SetContext(SetContextArgs),
    /// Remove a context.
    DeleteContext { name: String },
}

#[derive(Debug, Args)]
pub struct SetContextArgs {
    pub name: String,
    /// Database URL (stored in the config file, which is kept mode 0600).
    #[arg(long, conflicts_with = "db_url_file")]
    pub db_url: Option<String>,
    /// File holding the database URL.
    #[arg(long)]
    pub db_url_file: Option<std::path::PathBuf>,
    /// Edge RPC endpoints (host:port or URL), repeatable.
    #[arg(long = "edge", value_delimiter = ',')]
    pub edges: Vec<String>,
    /// File holding the token the edges' RPC requires (on Kubernetes, the
    /// `token` key of the SipEdge's Secret NAME-rpc-token).
    #[arg(long)]
    pub rpc_token_file: Option<std::path::PathBuf>,
    /// File holding the edges' trunk key (base64 of 32 bytes), which sipctl
    /// encrypts trunk passwords with (on Kubernetes, the key the SipEdges get).
    #[arg(long)]
    pub trunk_key_file: Option<std::path::PathBuf>,
    /// Make it the current context too.
    #[arg(long = "use")]
    pub make_current: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ContextView {
    name: String,
    current: bool,
    database: String,
    edges: Vec<String>,
}

pub fn run(cmd: ConfigCommand, output: Output) -> anyhow::Result<()> {
    let path = ConfigFile::path();
    let mut file = ConfigFile::load(&path)?;
    match cmd {
        ConfigCommand::GetContexts => {
            let views: Vec<ContextView> = file
                .contexts
                .iter()
                .map(|c| ContextView {
                    name: c.name.clone(),
                    current: file.current_context.as_deref() == Some(c.name.as_str()),
                    database: match (&c.database.url, &c.database.url_file) {
                        (Some(url), _) => redact(url),
                        (None, Some(f)) => format!("(from {})", f.display()),
                        (None, None) => "-".into(),
                    },
                    edges: c.edges.iter().map(|e| e.rpc.clone()).collect(),
                })
                .collect();
            let columns = Columns {
                headers: &["CURRENT", "NAME", "DATABASE", "EDGES"],
                narrow: 4,
            };
            output.list(&views, &columns, |v| {
                vec![
                    if v.current { "*".into() } else { String::new() },
                    v.name.clone(),
                    v.database.clone(),
                    v.edges.join(","),
                ]
            })
        }
        ConfigCommand::UseContext { name } => {
            if file.context(&name).is_none() {
                return Err(CliError::NotFound(format!(
                    "no context named {name:?} in {}",
                    path.display()
                ))
                .into());
            }
            file.current_context = Some(name.clone());
            file.save(&path)?;
            println!("current context is now {name}");
            Ok(())
        }
        ConfigCommand::CurrentContext => match &file.current_context {
            Some(name) => {
                println!("{name}");
                Ok(())
            }
            None => Err(CliError::NotFound(
                "no current context; see `sipctl config use-context`".into(),
            )
            .into()),
        },
        ConfigCommand::SetContext(args) => {
            let previous = file.context(&args.name).cloned();
            let patroni = previous
                .as_ref()
                .map(|p| p.database.patroni.clone())
                .unwrap_or_default();
            let patroni_password_file = previous
                .as_ref()
                .and_then(|p| p.database.patroni_password_file.clone());
            let database = match (args.db_url, args.db_url_file) {
                (Some(url), _) => DatabaseConfig {
                    url: Some(url),
                    url_file: None,
                    patroni,
                    patroni_password_file,
                },
                (None, Some(f)) => DatabaseConfig {
                    url: None,
                    url_file: Some(f),
                    patroni,
                    patroni_password_file,
                },
                (None, None) => previous
                    .as_ref()
                    .map(|p| p.database.clone())
                    .unwrap_or_default(),
            };
            let edges = if args.edges.is_empty() {
                previous.map(|p| p.edges).unwrap_or_default()
            } else {
                args.edges
                    .iter()
                    .enumerate()
                    .map(|(i, e)| EdgeConfig {
                        name: format!("edge{}", i + 1),
                        rpc: normalize_rpc_url(e),
                    })
                    .collect()
            };
            // media nodes are written by `sipctl local up`; keep those of a context set again
            let media_nodes = file
                .context(&args.name)
                .map(|c| c.media_nodes.clone())
                .unwrap_or_default();
            let rpc_token_file = args.rpc_token_file.or_else(|| {
                file.context(&args.name)
                    .and_then(|c| c.rpc_token_file.clone())
            });
            let trunk_key_file = args.trunk_key_file.or_else(|| {
                file.context(&args.name)
                    .and_then(|c| c.trunk_key_file.clone())
            });
            file.upsert(NamedContext {
                name: args.name.clone(),
                database,
                edges,
                rpc_token_file,
                trunk_key_file,
                media_nodes,
            });
            if args.make_current || file.current_context.is_none() {
                file.current_context = Some(args.name.clone());
            }
            file.save(&path)?;
            println!("context {} saved in {}", args.name, path.display());
            Ok(())
        }
        ConfigCommand::DeleteContext { name } => {
            let before = file.contexts.len();
            file.contexts.retain(|c| c.name != name);
            if file.contexts.len() == before {
                return Err(CliError::NotFound(format!("no context named {name:?}")).into());
            }
            if file.current_context.as_deref() == Some(name.as_str()) {
                file.current_context = None;
            }
            file.save(&path)?;
            println!("context {name} deleted");
            Ok(())
        }
    }
}

/// A database URL for display: where it points, never its password (in any of
/// the forms libpq accepts: URL, query parameter, key=value).
pub fn redact(url: &str) -> String {
    match url.parse::<tokio_postgres::Config>() {
        Ok(config) => sipstack_db::describe_target(&config),
        Err(_) => "(not a PostgreSQL URL)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_never_shown() {
        for url in [
            "postgres://u:secret@h:5432/db",
            "postgres://u@h/db?password=secret",
            "host=h user=u password=secret dbname=db",
        ] {
            let shown = super::redact(url);
            assert!(!shown.contains("secret"), "{url} -> {shown}");
            assert!(
                shown.contains("h:5432") && shown.contains("user u"),
                "{url} -> {shown}"
            );
        }
    }
}
