//! A Kamailio SIP edge run from a rendered kamailio.cfg under the state directory.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use sipstack_edgerpc::{EdgeRpc, RpcError};

use crate::process::{self, find_program, log_tail, running_pid};
use crate::LocalError;

/// Which Debian package brings which module (the rest come with `kamailio`).
const MODULE_PACKAGES: &[(&str, &str)] = &[
    ("db_postgres", "kamailio-postgres-modules"),
    ("tls", "kamailio-tls-modules"),
    ("json", "kamailio-json-modules"),
];

/// The function db_postgres logs a failed connection attempt from.
const DB_CONNECT_FAILED: &str = "db_postgres_new_connection()";

/// Secrets Kamailio reads from its environment; never written into kamailio.cfg.
#[derive(Debug, Clone)]
pub struct EdgeSecrets {
    pub db_url: String,
    pub auth_secret: String,
    /// The token every RPC request must carry.
    pub rpc_token: String,
    /// The key of the trunks' encrypted passwords (base64 of 32 bytes).
    pub trunk_key: String,
}

/// What a Kamailio runs with: the rendered config and the memory sizes of its command line.
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub config: String,
    pub shared_memory_mb: u32,
    pub private_memory_mb: u32,
}

impl RunSettings {
    /// The settings a running edge was started with: its config file and the
    /// memory sizes its fingerprint records. None for a fingerprint that does not
    /// belong to `config`.
    fn from_fingerprint(config: String, fingerprint: &str) -> Option<Self> {
        let parts: Vec<&str> = fingerprint.split_whitespace().collect();
        let [hash, "-m", shm, "-M", pkg] = parts.as_slice() else {
            return None;
        };
        if *hash != sipstack_render::config_hash(&config) {
            return None;
        }
        Some(Self {
            config,
            shared_memory_mb: shm.parse().ok()?,
            private_memory_mb: pkg.parse().ok()?,
        })
    }

    /// Changes whenever a restart is needed to apply the settings.
    fn fingerprint(&self) -> String {
        format!(
            "{} -m {} -M {}",
            sipstack_render::config_hash(&self.config),
            self.shared_memory_mb,
            self.private_memory_mb
        )
    }
}

/// What [`LocalKamailio::ensure`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeChange {
    /// It was running with these settings already.
    Unchanged,
    Started,
    /// It ran with other settings and was restarted.
    Restarted,
}

/// One edge's files: `<state>/edge-<name>/{kamailio.cfg,kamailio.pid,kamailio.log}`.
#[derive(Debug, Clone)]
pub struct LocalKamailio {
    pub name: String,
    pub dir: PathBuf,
}

impl LocalKamailio {
    pub fn new(state_dir: &Path, name: &str) -> Self {
        Self {
            name: name.to_string(),
            dir: state_dir.join(format!("edge-{name}")),
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("kamailio.cfg")
    }
    pub fn pid_path(&self) -> PathBuf {
        self.dir.join("kamailio.pid")
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("kamailio.log")
    }
    fn fingerprint_path(&self) -> PathBuf {
        self.dir.join("kamailio.run")
    }
    /// The edge's call records until sipstack-cdr-shipper moves them into the database.
    pub fn cdr_spool_dir(&self) -> PathBuf {
        self.dir.join("cdr-spool")
    }
    /// Directory of the ctl socket: `kamcmd -s unix:DIR/kamailio_ctl`.
    pub fn runtime_dir(&self) -> &Path {
        &self.dir
    }

    /// The pid of this edge's Kamailio, if it runs (a process started with its config).
    pub fn running_pid(&self) -> Option<i32> {
        running_pid(&self.pid_path(), &self.config_path().to_string_lossy())
    }

    /// Brings this edge's Kamailio to `settings`. The new config is checked with
    /// `kamailio -c` before it replaces anything, so a refused config leaves a running
    /// edge and its config as they were.
    pub async fn ensure(
        &self,
        settings: &RunSettings,
        secrets: &EdgeSecrets,
        rpc: &EdgeRpc,
    ) -> Result<(i32, EdgeChange), LocalError> {
        fs::create_dir_all(&self.dir).map_err(|e| LocalError::io(&self.dir, e))?;
        let spool = self.cdr_spool_dir();
        fs::create_dir_all(&spool).map_err(|e| LocalError::io(&spool, e))?;
        let binary = kamailio_binary()?;
        let env = environment(secrets);
        let candidate = self.dir.join("kamailio.cfg.new");
        fs::write(&candidate, &settings.config).map_err(|e| LocalError::io(&candidate, e))?;
        check_modules(&candidate)?;
        let check = tokio::process::Command::new(&binary)
            .arg("-c")
            .arg("-f")
            .arg(&candidate)
            .envs(&env)
            .output()
            .await
            .map_err(|e| LocalError::io(&binary, e))?;
        if !check.status.success() {
            let _ = fs::remove_file(&candidate);
            return Err(LocalError::Start {
                what: format!("Kamailio of SipEdge {}", self.name),
                detail: format!(
                    "`kamailio -c` refused the rendered config:\n{}",
                    String::from_utf8_lossy(&check.stderr).trim()
                ),
            });
        }

        let fingerprint = settings.fingerprint();
        let running = self.running_pid();
        let current = fs::read_to_string(self.fingerprint_path()).unwrap_or_default();
        if let Some(pid) = running {
            if current.trim() == fingerprint && self.config_path().exists() {
                let _ = fs::remove_file(&candidate);
                return Ok((pid, EdgeChange::Unchanged));
            }
            self.stop().await?;
        }
        // the config that ran, to go back to if the new one does not start
        let previous = match (running, fs::read_to_string(self.config_path())) {
            (Some(_), Ok(config)) => RunSettings::from_fingerprint(config, &current),
            _ => None,
        };
        fs::rename(&candidate, self.config_path())
            .map_err(|e| LocalError::io(self.config_path(), e))?;
        fs::write(self.fingerprint_path(), &fingerprint)
            .map_err(|e| LocalError::io(self.fingerprint_path(), e))?;
        let pid = match self.start_retrying(&binary, settings, &env, rpc).await {
            Ok(pid) => pid,
            Err(e) => {
                if let Some(previous) = previous {
                    self.restore(&binary, &previous, &env, rpc).await;
                }
                return Err(e);
            }
        };
        Ok((
            pid,
            if running.is_some() {
                EdgeChange::Restarted
            } else {
                EdgeChange::Started
            },
        ))
    }

    /// Puts the config that ran before back and starts it again, so a change that
    /// could not start (a port taken meanwhile) leaves the edge as it was.
    async fn restore(
        &self,
        binary: &Path,
        previous: &RunSettings,
        env: &BTreeMap<&str, &str>,
        rpc: &EdgeRpc,
    ) {
        let restored = async {
            fs::write(self.config_path(), &previous.config)
                .map_err(|e| LocalError::io(self.config_path(), e))?;
            fs::write(self.fingerprint_path(), previous.fingerprint())
                .map_err(|e| LocalError::io(self.fingerprint_path(), e))?;
            self.start_retrying(binary, previous, env, rpc).await
        }
        .await;
        match restored {
            Ok(pid) => {
                tracing::warn!(edge = %self.name, pid, "the new configuration did not start; the previous one runs again")
            }
            Err(e) => {
                tracing::error!(edge = %self.name, "the new configuration did not start, nor did the previous one: {e}")
            }
        }
    }

    /// [`Self::start`], again (twice at most) when Kamailio gave up because it could
    /// not connect to PostgreSQL: each of its processes opens its own connections
    /// while it starts, and a database that is itself starting, or a machine busy
    /// with something else, can keep one of them waiting past the connect timeout.
    async fn start_retrying(
        &self,
        binary: &Path,
        settings: &RunSettings,
        env: &BTreeMap<&str, &str>,
        rpc: &EdgeRpc,
    ) -> Result<i32, LocalError> {
        let mut attempt = 1;
        loop {
            let offset = fs::metadata(self.log_path()).map(|m| m.len()).unwrap_or(0);
            match self.start(binary, settings, env, rpc).await {
                Err(e) if attempt < 3 && self.log_since(offset).contains(DB_CONNECT_FAILED) => {
                    tracing::warn!(edge = %self.name, attempt, "Kamailio could not connect to PostgreSQL while starting; starting it again: {e}");
                    attempt += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                other => return other,
            }
        }
    }

    /// What Kamailio logged after byte `offset` of its log.
    fn log_since(&self, offset: u64) -> String {
        let bytes = fs::read(self.log_path()).unwrap_or_default();
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }

    /// Starts Kamailio with the config in place (it daemonizes) and waits until its RPC
    /// endpoint answers; stops it again when it does not come up right.
    async fn start(
        &self,
        binary: &Path,
        settings: &RunSettings,
        env: &BTreeMap<&str, &str>,
        rpc: &EdgeRpc,
    ) -> Result<i32, LocalError> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| LocalError::io(self.log_path(), e))?;
        let _ = fs::remove_file(self.pid_path());
        // Kamailio forks its workers and leaves; -E keeps its log on the stderr we give it.
        let status = tokio::process::Command::new(binary)
            .arg("-f")
            .arg(self.config_path())
            .arg("-P")
            .arg(self.pid_path())
            .arg("-m")
            .arg(settings.shared_memory_mb.to_string())
            .arg("-M")
            .arg(settings.private_memory_mb.to_string())
            .arg("-E")
            .arg("-w")
            .arg(&self.dir)
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .status()
            .await
            .map_err(|e| LocalError::io(binary, e))?;
        if !status.success() {
            return Err(self
                .start_failed(format!("kamailio exited with {status}"))
                .await);
        }

        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(pid) = self.running_pid() {
                match rpc.version().await {
                    Ok(_) => return Ok(pid),
                    Err(RpcError::Http { status: 403, .. }) => {
                        return Err(self
                            .start_failed(format!(
                                "its RPC endpoint {} refuses this host; add 127.0.0.1/32 to spec.rpc.allowFrom so the local driver can manage the edge",
                                rpc.url()
                            ))
                            .await)
                    }
                    Err(_) => {}
                }
            } else if process::read_pid(&self.pid_path()).is_some() {
                return Err(self
                    .start_failed("kamailio stopped right after starting".into())
                    .await);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(self
                    .start_failed(format!(
                        "its RPC endpoint {} did not answer within 30 s",
                        rpc.url()
                    ))
                    .await);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The error of a failed start, after stopping whatever did start.
    async fn start_failed(&self, detail: String) -> LocalError {
        let _ = self.stop().await;
        LocalError::Start {
            what: format!("Kamailio of SipEdge {}", self.name),
            detail: format!(
                "{detail}; last lines of {}:\n{}",
                self.log_path().display(),
                log_tail(&self.log_path(), 15)
            ),
        }
    }

    /// Stops Kamailio gracefully (it flushes registrations to the database on the way out).
    pub async fn stop(&self) -> Result<bool, LocalError> {
        let stopped = match self.running_pid() {
            Some(pid) => process::terminate(pid, Duration::from_secs(15))
                .await
                .map_err(|e| LocalError::io(self.pid_path(), e))?,
            None => false,
        };
        let _ = fs::remove_file(self.pid_path());
        Ok(stopped)
    }
}

fn environment(secrets: &EdgeSecrets) -> BTreeMap<&'static str, &str> {
    BTreeMap::from([
        ("SIPSTACK_DB_URL", secrets.db_url.as_str()),
        ("SIPSTACK_AUTH_SECRET", secrets.auth_secret.as_str()),
        (sipstack_edgerpc::TOKEN_ENV, secrets.rpc_token.as_str()),
        ("SIPSTACK_TRUNK_KEY", secrets.trunk_key.as_str()),
    ])
}

fn kamailio_binary() -> Result<PathBuf, LocalError> {
    find_program("kamailio").ok_or(LocalError::Missing {
        program: "kamailio".into(),
        package: "kamailio".into(),
    })
}

/// Kamailio's module directories on this host (Debian's multiarch path, or a plain one).
fn module_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs::read_dir("/usr/lib")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.path().join("kamailio/modules"))
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    dirs.push(PathBuf::from("/usr/lib/kamailio/modules"));
    dirs
}

/// Every module the config loads (in its active `#!ifdef` branches) must exist; a
/// missing one names its Debian package. Kamailio's own message would only say it
/// cannot find the file.
fn check_modules(config: &Path) -> Result<(), LocalError> {
    let text = fs::read_to_string(config).map_err(|e| LocalError::io(config, e))?;
    let dirs = module_dirs();
    for module in loaded_modules(&text) {
        let file = format!("{module}.so");
        if !dirs.iter().any(|d| d.join(&file).is_file()) {
            let package = MODULE_PACKAGES
                .iter()
                .find(|(m, _)| *m == module)
                .map(|(_, p)| *p)
                .unwrap_or("kamailio");
            return Err(LocalError::Missing {
                program: format!("Kamailio module {module}"),
                package: package.into(),
            });
        }
    }
    Ok(())
}

/// The modules a config loads, following its `#!define`/`#!ifdef`/`#!ifndef`/`#!else`/`#!endif`.
fn loaded_modules(text: &str) -> Vec<String> {
    let mut defined: Vec<String> = Vec::new();
    // one entry per open #!ifdef: whether its current branch is taken
    let mut branches: Vec<bool> = Vec::new();
    let mut modules = Vec::new();
    for line in text.lines().map(str::trim) {
        let active = branches.iter().all(|b| *b);
        if let Some(name) = line.strip_prefix("#!ifdef ") {
            branches.push(defined.iter().any(|d| d == name.trim()));
        } else if let Some(name) = line.strip_prefix("#!ifndef ") {
            branches.push(!defined.iter().any(|d| d == name.trim()));
        } else if line == "#!else" {
            if let Some(b) = branches.last_mut() {
                *b = !*b;
            }
        } else if line == "#!endif" {
            branches.pop();
        } else if !active {
            continue;
        } else if let Some(rest) = line.strip_prefix("#!define ") {
            if let Some(name) = rest.split_whitespace().next() {
                defined.push(name.to_string());
            }
        } else if let Some(rest) = line.strip_prefix("loadmodule \"") {
            modules.push(
                rest.trim_end_matches('"')
                    .trim_end_matches(".so")
                    .to_string(),
            );
        }
    }
    modules
}

/// Makes a file readable by its owner only (it holds a secret).
pub(crate) fn restrict(path: &Path) -> Result<(), LocalError> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .map_err(|e| LocalError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_follow_the_active_branches() {
        let cfg = "#!define WITH_NAT\nloadmodule \"tm.so\"\n#!ifdef WITH_NAT\nloadmodule \"nathelper.so\"\n#!else\nloadmodule \"x.so\"\n#!endif\n#!ifdef WITH_TLS\nloadmodule \"tls.so\"\n#!endif\n#!ifndef WITH_TLS\nloadmodule \"sl.so\"\n#!endif\n";
        assert_eq!(loaded_modules(cfg), ["tm", "nathelper", "sl"]);
    }

    #[test]
    fn a_missing_module_names_its_package() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("kamailio.cfg");
        fs::write(
            &cfg,
            "loadmodule \"tm.so\"\nloadmodule \"no_such_module_xyz.so\"\n",
        )
        .unwrap();
        let err = check_modules(&cfg).unwrap_err().to_string();
        assert!(
            err.contains("no_such_module_xyz") && err.contains("apt-get install kamailio"),
            "{err}"
        );
        let err = LocalError::Missing {
            program: "Kamailio module tls".into(),
            package: MODULE_PACKAGES[1].1.into(),
        }
        .to_string();
        assert!(
            err.contains("apt-get install kamailio-tls-modules"),
            "{err}"
        );
        fs::write(&cfg, "loadmodule \"tm.so\"\n#!ifdef WITH_TLS\nloadmodule \"no_such_module_xyz.so\"\n#!endif\n").unwrap();
        check_modules(&cfg).unwrap();
    }
}
