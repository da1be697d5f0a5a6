//! `state.json`: what the local driver started and where, so that `status` and
//! `down` (and sipctl's other commands) find it without the platform file.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::LocalError;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LocalState {
    pub state_dir: PathBuf,
    /// The platform file `up` ran last (a copy).
    pub platform_file: PathBuf,
    /// File holding the database URL with the owner's password (mode 0600).
    pub db_url_file: PathBuf,
    pub postgres: PostgresState,
    pub edges: Vec<EdgeState>,
    pub standins: Vec<StandinState>,
    /// FreeSWITCH nodes run for the pools' replicas.
    #[serde(default)]
    pub media_nodes: Vec<MediaNodeState>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PostgresState {
    pub cluster: String,
    pub port: u16,
    pub database: String,
    pub owner: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// Set when the cluster runs under Patroni (instances > 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha: Option<HaState>,
}

/// A Patroni cluster's endpoints.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HaState {
    /// Member names, in order (member N is `NAME-N`).
    pub members: Vec<String>,
    /// Each member's Patroni REST API.
    pub patroni_urls: Vec<String>,
    /// The password of their changing endpoints (user `sipstack`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rest_password_file: Option<PathBuf>,
    pub read_only_port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooler_port: Option<u16>,
    pub etcd_endpoints: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EdgeState {
    pub name: String,
    /// `transport:address:port` of each SIP socket.
    pub sip: Vec<String>,
    pub rpc_url: String,
    /// File holding the token the edge's RPC requires (mode 0600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpc_token_file: Option<PathBuf>,
    pub domains: Vec<String>,
    pub config: PathBuf,
    pub log: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StandinState {
    pub uri: String,
    pub pool: String,
    pub pid: i32,
}

/// One FreeSWITCH node the local driver runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MediaNodeState {
    pub pool: String,
    pub replica: i32,
    /// Its dispatcher member URI.
    pub uri: String,
    /// `host:port` of its event socket.
    pub event_socket: String,
    pub pid: i32,
    pub log: PathBuf,
}

/// Name of the secret (under `<state>/secrets/`) holding the edges' RPC token.
pub const RPC_TOKEN_SECRET: &str = "rpc-token";

/// The file of the edges' RPC token in a state directory.
pub fn rpc_token_file(state_dir: &Path) -> PathBuf {
    state_dir.join("secrets").join(RPC_TOKEN_SECRET)
}

/// Name of the secret holding the trunk key: the key (base64 of 32 bytes) the
/// trunks' outbound passwords are encrypted with in the database. Every edge and
/// sipctl use the one key of the state directory.
pub const TRUNK_KEY_SECRET: &str = "trunk-key";

/// The file of the trunk key in a state directory.
pub fn trunk_key_file(state_dir: &Path) -> PathBuf {
    state_dir.join("secrets").join(TRUNK_KEY_SECRET)
}

/// The trunk key of a state directory, made on first use. A key file that is
/// there but not a key is an error, not replaced: the passwords encrypted with
/// it would be lost.
pub fn trunk_key(state_dir: &Path) -> Result<String, LocalError> {
    let path = trunk_key_file(state_dir);
    match fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => {
            let key = sipstack_db::trunk::TrunkKey::from_base64(text.trim())?;
            Ok(key.to_base64())
        }
        Ok(_) => new_trunk_key(&path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => new_trunk_key(&path),
        Err(e) => Err(LocalError::io(&path, e)),
    }
}

fn new_trunk_key(path: &Path) -> Result<String, LocalError> {
    let key = sipstack_db::trunk::TrunkKey::generate().to_base64();
    write_secret(path, &key)?;
    Ok(key)
}

impl EdgeState {
    /// A client for this edge's RPC, with its token.
    pub fn rpc(&self) -> Result<sipstack_edgerpc::EdgeRpc, LocalError> {
        let rpc = sipstack_edgerpc::EdgeRpc::new(&self.rpc_url);
        match &self.rpc_token_file {
            Some(path) => {
                let token = fs::read_to_string(path).map_err(|e| LocalError::io(path, e))?;
                Ok(rpc.with_token(token.trim()))
            }
            None => Ok(rpc),
        }
    }
}

impl LocalState {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("state.json")
    }

    pub fn load(state_dir: &Path) -> Result<Self, LocalError> {
        let path = Self::path(state_dir);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(LocalError::NotFound(state_dir.display().to_string()))
            }
            Err(e) => return Err(LocalError::io(&path, e)),
        };
        serde_json::from_str(&text).map_err(|e| {
            LocalError::io(
                &path,
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        })
    }

    pub fn save(&self) -> Result<(), LocalError> {
        let path = Self::path(&self.state_dir);
        let text = serde_json::to_string_pretty(self).map_err(|e| {
            LocalError::io(
                &path,
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        })?;
        // written beside and renamed over: a reader (or a crash) never sees half a file
        let tmp = path.with_extension("json.tmp");
        fs::write(&tmp, text + "\n").map_err(|e| LocalError::io(&tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| LocalError::io(&path, e))
    }

    /// The database URL (with password) the platform's components use.
    pub fn db_url(&self) -> Result<String, LocalError> {
        fs::read_to_string(&self.db_url_file)
            .map(|s| s.trim().to_string())
            .map_err(|e| LocalError::io(&self.db_url_file, e))
    }
}

/// A random secret kept in `dir/name` (mode 0600): generated on first use, then reused.
pub fn secret(dir: &Path, name: &str) -> Result<String, LocalError> {
    let path = dir.join(name);
    if let Ok(s) = fs::read_to_string(&path) {
        if !s.trim().is_empty() {
            return Ok(s.trim().to_string());
        }
    }
    let value = random_token()?;
    write_secret(&path, &value)?;
    Ok(value)
}

/// Writes a secret file readable by its owner only.
pub fn write_secret(path: &Path, value: &str) -> Result<(), LocalError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| LocalError::io(dir, e))?;
    }
    let mut f = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| LocalError::io(path, e))?;
    f.write_all(value.as_bytes())
        .map_err(|e| LocalError::io(path, e))?;
    crate::kamailio::restrict(path)
}

/// 32 random bytes as hex, from the kernel's generator.
pub fn random_token() -> Result<String, LocalError> {
    let mut buf = [0u8; 32];
    let mut f = fs::File::open("/dev/urandom").map_err(|e| LocalError::io("/dev/urandom", e))?;
    std::io::Read::read_exact(&mut f, &mut buf).map_err(|e| LocalError::io("/dev/urandom", e))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// The state directory's lock, held while `up` or `down` changes what runs: two of
/// them at once would start or stop the same processes. Released when dropped (the
/// kernel releases it too if the process dies).
pub struct StateLock {
    _lock: nix::fcntl::Flock<fs::File>,
}

impl StateLock {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("lock")
    }

    /// Takes the lock for `what` (e.g. "up"), or says who holds it.
    pub fn acquire(state_dir: &Path, what: &str) -> Result<Self, LocalError> {
        let path = Self::path(state_dir);
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| LocalError::io(&path, e))?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                let holder = format!("{what} {}\n", std::process::id());
                // who holds it, for the message of the next one; the lock is what counts
                let _ = fs::write(&path, holder);
                Ok(Self { _lock: lock })
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                let holder = fs::read_to_string(&path).unwrap_or_default();
                let holder = holder.trim();
                Err(LocalError::Busy(format!(
                    "another sipctl is changing the local platform in {} ({}); wait for it to finish, then run this again",
                    state_dir.display(),
                    if holder.is_empty() {
                        "lock held".to_string()
                    } else {
                        format!("`local {holder}` holds {}", path.display())
                    }
                )))
            }
            Err((_, errno)) => Err(LocalError::io(&path, std::io::Error::from(errno))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateLock::acquire(dir.path(), "up").unwrap();
        let err = StateLock::acquire(dir.path(), "down")
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("another sipctl") && err.contains("local up"),
            "{err}"
        );
        drop(first);
        StateLock::acquire(dir.path(), "down").unwrap();
    }
}
