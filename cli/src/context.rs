//! Where sipctl connects: contexts in a config file (like kubeconfig contexts),
//! overridden by `--db-url`/`SIPCTL_DB_URL` and `--edge`/`SIPCTL_EDGE`.
//!
//! The file is `$SIPCTL_CONFIG`, else `$XDG_CONFIG_HOME/sipstack/config.yaml`, else
//! `~/.config/sipstack/config.yaml`:
//!
//! ```yaml
//! currentContext: local
//! contexts:
//!   - name: local
//!     database:
//!       urlFile: /var/lib/sipstack/local/secrets/db-url   # or url: postgres://...
//!     edges:
//!       - name: edge
//!         rpc: http://127.0.0.1:5071/RPC
//!     rpcTokenFile: /var/lib/sipstack/local/secrets/rpc-token   # SIPSTACK_RPC_TOKEN overrides
//!     trunkKeyFile: /var/lib/sipstack/local/secrets/trunk-key   # SIPSTACK_TRUNK_KEY overrides
//! ```

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConfigFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    #[serde(default)]
    pub contexts: Vec<NamedContext>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NamedContext {
    pub name: String,
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default)]
    pub edges: Vec<EdgeConfig>,
    /// A file holding the token the edges' RPC requires; `SIPSTACK_RPC_TOKEN` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpc_token_file: Option<PathBuf>,
    /// A file holding the edges' trunk key (base64 of 32 bytes), which trunk
    /// passwords are encrypted with; `SIPSTACK_TRUNK_KEY` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trunk_key_file: Option<PathBuf>,
    /// FreeSWITCH nodes whose event socket sipctl may use (drain pauses them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub media_nodes: Vec<MediaNodeConfig>,
}

/// A media node's event socket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MediaNodeConfig {
    /// Its dispatcher member URI, e.g. sip:127.1.1.1:5080.
    pub uri: String,
    /// `host:port` of its event socket.
    pub event_socket: String,
    /// A file holding the event socket password.
    pub password_file: PathBuf,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseConfig {
    /// The URL itself (with its password): keep the file private.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A file holding the URL (the local driver's `secrets/db-url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_file: Option<PathBuf>,
    /// Patroni REST APIs of the cluster's members (when it runs under Patroni).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patroni: Vec<String>,
    /// A file holding the password of their changing endpoints (switchover,
    /// failover), user `sipstack`; `SIPCTL_PATRONI_PASSWORD` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patroni_password_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EdgeConfig {
    pub name: String,
    /// JSON-RPC endpoint, e.g. http://127.0.0.1:5071/RPC.
    pub rpc: String,
}

impl ConfigFile {
    /// The config file's path.
    pub fn path() -> PathBuf {
        if let Some(p) = std::env::var_os("SIPCTL_CONFIG") {
            return PathBuf::from(p);
        }
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
            .unwrap_or_else(|| PathBuf::from("."));
        base.join("sipstack/config.yaml")
    }

    /// Reads the file; a missing file is an empty configuration.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        match fs::read_to_string(path) {
            Ok(text) => serde_yaml::from_str(&text)
                .with_context(|| format!("{} is not a sipctl config file", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Writes the file, readable by its owner only (it may hold a database password).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let text = serde_yaml::to_string(self)?;
        let tmp = path.with_extension("yaml.tmp");
        let mut f = fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }

    pub fn context(&self, name: &str) -> Option<&NamedContext> {
        self.contexts.iter().find(|c| c.name == name)
    }

    /// Adds or replaces a context.
    pub fn upsert(&mut self, context: NamedContext) {
        match self.contexts.iter_mut().find(|c| c.name == context.name) {
            Some(existing) => *existing = context,
            None => self.contexts.push(context),
        }
    }
}

/// Where this invocation connects, after flags, environment and context.
#[derive(Debug, Clone)]
pub struct Target {
    /// The context used, if any.
    pub context: Option<String>,
    pub db_url: Option<String>,
    pub edges: Vec<EdgeConfig>,
    /// The token the edges' RPC requires, if known.
    pub rpc_token: Option<String>,
    /// Patroni REST APIs of the database's members.
    pub patroni: Vec<String>,
    /// The password of their changing endpoints, if known.
    pub patroni_password: Option<String>,
    /// Media nodes reachable over their event socket.
    pub media_nodes: Vec<MediaNodeConfig>,
    /// The context's trunk key file; read only by the commands that encrypt.
    pub trunk_key_file: Option<PathBuf>,
}

/// Overrides given on the command line (or in the environment).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub context: Option<String>,
    pub db_url: Option<String>,
    pub edges: Vec<String>,
    pub patroni: Vec<String>,
}

impl Target {
    pub fn resolve(overrides: &Overrides) -> anyhow::Result<Self> {
        let path = ConfigFile::path();
        let file = ConfigFile::load(&path)?;
        let context_name = overrides
            .context
            .clone()
            .or_else(|| file.current_context.clone());
        let context = match &context_name {
            Some(name) => match file.context(name) {
                Some(c) => Some(c.clone()),
                None if overrides.context.is_some() => {
                    let known: Vec<&str> = file.contexts.iter().map(|c| c.name.as_str()).collect();
                    bail!(
                        "no context named {name:?} in {} (known: {}); see `sipctl config get-contexts`",
                        path.display(),
                        if known.is_empty() { "none".to_string() } else { known.join(", ") }
                    )
                }
                // a current context that was deleted: behave as if none was set
                None => None,
            },
            None => None,
        };
        let db_url = match &overrides.db_url {
            Some(url) => Some(url.clone()),
            None => match context.as_ref().map(|c| &c.database) {
                Some(DatabaseConfig { url: Some(url), .. }) => Some(url.clone()),
                Some(DatabaseConfig {
                    url_file: Some(file),
                    ..
                }) => Some(
                    fs::read_to_string(file)
                        .with_context(|| {
                            format!(
                                "cannot read the database URL file {} of the context",
                                file.display()
                            )
                        })?
                        .trim()
                        .to_string(),
                ),
                _ => None,
            },
        };
        let edges = if overrides.edges.is_empty() {
            context
                .as_ref()
                .map(|c| c.edges.clone())
                .unwrap_or_default()
        } else {
            overrides
                .edges
                .iter()
                .enumerate()
                .map(|(i, rpc)| EdgeConfig {
                    name: format!("edge{}", i + 1),
                    rpc: normalize_rpc_url(rpc),
                })
                .collect()
        };
        let patroni = if overrides.patroni.is_empty() {
            context
                .as_ref()
                .map(|c| c.database.patroni.clone())
                .unwrap_or_default()
        } else {
            overrides
                .patroni
                .iter()
                .map(|p| {
                    if p.starts_with("http://") || p.starts_with("https://") {
                        p.clone()
                    } else {
                        format!("http://{p}")
                    }
                })
                .collect()
        };
        let patroni_password = match std::env::var("SIPCTL_PATRONI_PASSWORD") {
            Ok(p) if !p.is_empty() => Some(p),
            _ => match context
                .as_ref()
                .and_then(|c| c.database.patroni_password_file.as_ref())
            {
                Some(file) => Some(
                    fs::read_to_string(file)
                        .with_context(|| {
                            format!(
                                "cannot read the Patroni password file {} of the context",
                                file.display()
                            )
                        })?
                        .trim()
                        .to_string(),
                ),
                None => None,
            },
        };
        let rpc_token = match std::env::var(sipstack_edgerpc::TOKEN_ENV) {
            Ok(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
            _ => match context.as_ref().and_then(|c| c.rpc_token_file.as_ref()) {
                Some(file) => Some(
                    fs::read_to_string(file)
                        .with_context(|| {
                            format!(
                                "cannot read the RPC token file {} of the context",
                                file.display()
                            )
                        })?
                        .trim()
                        .to_string(),
                ),
                None => None,
            },
        };
        Ok(Self {
            context: context.as_ref().map(|c| c.name.clone()),
            db_url,
            edges,
            rpc_token,
            patroni,
            patroni_password,
            trunk_key_file: context.as_ref().and_then(|c| c.trunk_key_file.clone()),
            media_nodes: context.map(|c| c.media_nodes).unwrap_or_default(),
        })
    }

    /// The edges' trunk key: `SIPSTACK_TRUNK_KEY`, else the context's
    /// trunkKeyFile, or an error that says how to give one.
    pub fn trunk_key(&self) -> anyhow::Result<sipstack_db::trunk::TrunkKey> {
        use sipstack_db::trunk::{TrunkKey, TRUNK_KEY_ENV};
        if let Ok(text) = std::env::var(TRUNK_KEY_ENV) {
            if !text.trim().is_empty() {
                return TrunkKey::from_base64(&text).context(TRUNK_KEY_ENV);
            }
        }
        match &self.trunk_key_file {
            Some(file) => {
                let text = fs::read_to_string(file).with_context(|| {
                    format!(
                        "cannot read the trunk key file {} of the context",
                        file.display()
                    )
                })?;
                TrunkKey::from_base64(&text)
                    .with_context(|| format!("the trunk key file {}", file.display()))
            }
            None => Err(crate::commands::CliError::Invalid(format!(
                "no trunk key: a trunk's password is stored encrypted with the edges' trunk key; set \
                 {TRUNK_KEY_ENV} to it (base64), or give the context a trunkKeyFile \
                 (`sipctl config set-context NAME --trunk-key-file FILE`; `sipctl local up` keeps the \
                 local platform's in <state>/secrets/trunk-key)"
            ))
            .into()),
        }
    }

    /// The database URL, or an error that says how to give one.
    pub fn require_db_url(&self) -> anyhow::Result<&str> {
        self.db_url.as_deref().ok_or_else(|| {
            anyhow!(
                "no database given: set SIPCTL_DB_URL=postgres://USER:PASSWORD@HOST:PORT/DB (a --db-url with a password shows in the process list), \
                 or select a context (`sipctl local up` writes one; see `sipctl config get-contexts`)"
            )
        })
    }
}

/// `host:port` or a full URL → `http://host:port/RPC`.
pub fn normalize_rpc_url(rpc: &str) -> String {
    let with_scheme = if rpc.starts_with("http://") || rpc.starts_with("https://") {
        rpc.to_string()
    } else {
        format!("http://{rpc}")
    };
    let after_scheme = with_scheme
        .split_once("://")
        .map(|(_, r)| r)
        .unwrap_or_default();
    if after_scheme.contains('/') {
        with_scheme
    } else {
        format!("{with_scheme}/RPC")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_urls_are_completed() {
        assert_eq!(
            normalize_rpc_url("127.0.0.1:5071"),
            "http://127.0.0.1:5071/RPC"
        );
        assert_eq!(
            normalize_rpc_url("http://edge:5071"),
            "http://edge:5071/RPC"
        );
        assert_eq!(
            normalize_rpc_url("http://edge:5071/RPC"),
            "http://edge:5071/RPC"
        );
    }

    #[test]
    fn config_round_trips_and_upserts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/config.yaml");
        let mut file = ConfigFile::default();
        file.upsert(NamedContext {
            name: "local".into(),
            database: DatabaseConfig {
                url: None,
                url_file: Some("/x/db-url".into()),
                patroni: vec![],
                patroni_password_file: None,
            },
            edges: vec![EdgeConfig {
                name: "edge".into(),
                rpc: "http://127.0.0.1:5071/RPC".into(),
            }],
            rpc_token_file: Some("/x/rpc-token".into()),
            trunk_key_file: Some("/x/trunk-key".into()),
            media_nodes: vec![],
        });
        file.current_context = Some("local".into());
        file.upsert(NamedContext {
            name: "local".into(),
            database: DatabaseConfig::default(),
            edges: vec![],
            rpc_token_file: None,
            trunk_key_file: None,
            media_nodes: vec![],
        });
        assert_eq!(file.contexts.len(), 1);
        file.save(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(ConfigFile::load(&path).unwrap(), file);
        assert_eq!(
            ConfigFile::load(&dir.path().join("missing.yaml")).unwrap(),
            ConfigFile::default()
        );
    }
}
