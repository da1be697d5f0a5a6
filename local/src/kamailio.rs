//! A Kamailio SIP edge run from a rendered kamailio.cfg under the state directory.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use sipstack_edgerpc::EdgeRpc;

use crate::process::{self, find_program, log_tail, running_pid};
use crate::LocalError;

/// Where Debian installs Kamailio's modules, and which package brings which module.
const MODULE_DIR: &str = "/usr/lib/x86_64-linux-gnu/kamailio/modules";
const MODULE_PACKAGES: &[(&str, &str)] = &[("db_postgres", "kamailio-postgres-modules"), ("tls", "kamailio-tls-modules")];

/// Secrets Kamailio reads from its environment; never written into kamailio.cfg.
#[derive(Debug, Clone)]
pub struct EdgeSecrets {
    pub db_url: String,
    pub auth_secret: String,
}

/// One edge's files: `<state>/edge-<name>/{kamailio.cfg,kamailio.pid,kamailio.log}`.
#[derive(Debug, Clone)]
pub struct LocalKamailio {
    pub name: String,
    pub dir: PathBuf,
}

impl LocalKamailio {
    pub fn new(state_dir: &Path, name: &str) -> Self {
        Self { name: name.to_string(), dir: state_dir.join(format!("edge-{name}")) }
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
    /// Directory of the ctl socket: `kamcmd -s unix:DIR/kamailio_ctl`.
    pub fn runtime_dir(&self) -> &Path {
        &self.dir
    }

    /// Writes the rendered config; returns whether it changed.
    pub fn write_config(&self, text: &str) -> Result<bool, LocalError> {
        fs::create_dir_all(&self.dir).map_err(|e| LocalError::io(&self.dir, e))?;
        let path = self.config_path();
        if fs::read_to_string(&path).is_ok_and(|old| old == text) {
            return Ok(false);
        }
        fs::write(&path, text).map_err(|e| LocalError::io(&path, e))?;
        Ok(true)
    }

    pub fn running_pid(&self) -> Option<i32> {
        running_pid(&self.pid_path())
    }

    /// Checks the config with `kamailio -c`, starts Kamailio (it daemonizes) and waits
    /// until its RPC endpoint answers.
    pub async fn start(
        &self,
        secrets: &EdgeSecrets,
        shared_memory_mb: u32,
        private_memory_mb: u32,
        rpc: &EdgeRpc,
    ) -> Result<i32, LocalError> {
        if let Some(pid) = self.running_pid() {
            return Ok(pid);
        }
        let binary = kamailio_binary()?;
        check_modules(&self.config_path(), Path::new(MODULE_DIR))?;
        let env = BTreeMap::from([("SIPSTACK_DB_URL", secrets.db_url.as_str()), ("SIPSTACK_AUTH_SECRET", secrets.auth_secret.as_str())]);

        let check = tokio::process::Command::new(&binary)
            .arg("-c")
            .arg("-f")
            .arg(self.config_path())
            .envs(&env)
            .output()
            .await
            .map_err(|e| LocalError::io(&binary, e))?;
        if !check.status.success() {
            return Err(LocalError::Start {
                what: format!("Kamailio of SipEdge {}", self.name),
                detail: format!("`kamailio -c` refused {}:\n{}", self.config_path().display(), String::from_utf8_lossy(&check.stderr).trim()),
            });
        }

        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| LocalError::io(&self.log_path(), e))?;
        let _ = fs::remove_file(self.pid_path());
        // Kamailio forks its workers and leaves; -E keeps its log on the stderr we give it.
        let status = tokio::process::Command::new(&binary)
            .arg("-f")
            .arg(self.config_path())
            .arg("-P")
            .arg(self.pid_path())
            .arg("-m")
            .arg(shared_memory_mb.to_string())
            .arg("-M")
            .arg(private_memory_mb.to_string())
            .arg("-E")
            .arg("-w")
            .arg(&self.dir)
            .envs(&env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .status()
            .await
            .map_err(|e| LocalError::io(&binary, e))?;
        if !status.success() {
            return Err(self.start_failed(format!("kamailio exited with {status}")));
        }

        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(pid) = self.running_pid() {
                if rpc.version().await.is_ok() {
                    return Ok(pid);
                }
            } else if process::read_pid(&self.pid_path()).is_some() {
                return Err(self.start_failed("kamailio stopped right after starting".into()));
            }
            if tokio::time::Instant::now() > deadline {
                return Err(self.start_failed(format!("its RPC endpoint {} did not answer within 30 s", rpc.url())));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn start_failed(&self, detail: String) -> LocalError {
        LocalError::Start {
            what: format!("Kamailio of SipEdge {}", self.name),
            detail: format!("{detail}; last lines of {}:\n{}", self.log_path().display(), log_tail(&self.log_path(), 15)),
        }
    }

    /// Stops Kamailio gracefully (it flushes registrations to the database on the way out).
    pub async fn stop(&self) -> Result<bool, LocalError> {
        match process::read_pid(&self.pid_path()) {
            Some(pid) => {
                let was_running = process::terminate(pid, Duration::from_secs(15))
                    .await
                    .map_err(|e| LocalError::io(&self.pid_path(), e))?;
                let _ = fs::remove_file(self.pid_path());
                Ok(was_running)
            }
            None => Ok(false),
        }
    }
}

fn kamailio_binary() -> Result<PathBuf, LocalError> {
    find_program("kamailio").ok_or(LocalError::Missing { program: "kamailio".into(), package: "kamailio".into() })
}

/// Every `loadmodule` of the config must exist; a missing one names its Debian package.
fn check_modules(config: &Path, module_dir: &Path) -> Result<(), LocalError> {
    let text = fs::read_to_string(config).map_err(|e| LocalError::io(config, e))?;
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("loadmodule \"") else { continue };
        let module = rest.trim_end_matches('"').trim_end_matches(".so");
        let path = module_dir.join(format!("{module}.so"));
        if !path.is_file() {
            let package = MODULE_PACKAGES.iter().find(|(m, _)| *m == module).map(|(_, p)| *p).unwrap_or("kamailio");
            return Err(LocalError::Missing { program: format!("Kamailio module {module}"), package: package.into() });
        }
    }
    Ok(())
}

/// Makes a file readable by its owner only (it holds a secret).
pub(crate) fn restrict(path: &Path) -> Result<(), LocalError> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(|e| LocalError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_module_names_its_package() {
        let dir = tempfile::tempdir().unwrap();
        let modules = dir.path().join("modules");
        fs::create_dir(&modules).unwrap();
        fs::write(modules.join("tm.so"), b"").unwrap();
        let cfg = dir.path().join("kamailio.cfg");
        fs::write(&cfg, "loadmodule \"tm.so\"\nloadmodule \"db_postgres.so\"\n").unwrap();
        let err = check_modules(&cfg, &modules).unwrap_err().to_string();
        assert!(err.contains("db_postgres") && err.contains("apt-get install kamailio-postgres-modules"), "{err}");
        fs::write(&cfg, "loadmodule \"tm.so\"\nloadmodule \"tls.so\"\n").unwrap();
        let err = check_modules(&cfg, &modules).unwrap_err().to_string();
        assert!(err.contains("apt-get install kamailio-tls-modules"), "{err}");
        fs::write(&cfg, "loadmodule \"tm.so\"\n").unwrap();
        check_modules(&cfg, &modules).unwrap();
    }
}
