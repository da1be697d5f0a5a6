//! The edge's call-record shipper: `sipstack-cdr-shipper` next to each local
//! Kamailio, moving the records Kamailio spools (`edge-NAME/cdr-spool`) into the
//! database. It runs as its own process, so records keep arriving while nothing
//! else of sipstack runs; `down` stops it once the edge has stopped and ships what
//! is left, so no record stays behind in the spool while the database is up.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::process::{find_program, log_tail, Daemon};
use crate::LocalError;

/// The program's name, on PATH or next to the running binary.
pub const PROGRAM: &str = "sipstack-cdr-shipper";
/// Overrides where the program is.
pub const PROGRAM_ENV: &str = "SIPSTACK_CDR_SHIPPER";

/// Where `sipstack-cdr-shipper` is: `SIPSTACK_CDR_SHIPPER`, else next to the
/// running program (sipctl and the shipper are installed side by side; a test
/// binary sits one directory below the workspace's binaries), else on PATH.
pub fn find_shipper() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(PROGRAM_ENV) {
        let path = PathBuf::from(path);
        return path.is_file().then_some(path);
    }
    if let Ok(exe) = std::env::current_exe() {
        let mut dir = exe.parent();
        for _ in 0..2 {
            let Some(d) = dir else { break };
            let candidate = d.join(PROGRAM);
            if candidate.is_file() {
                return Some(candidate);
            }
            dir = d.parent();
        }
    }
    find_program(PROGRAM)
}

/// One edge's shipper: `<state>/edge-<name>/cdr-shipper.{pid,log}`.
#[derive(Debug, Clone)]
pub struct LocalShipper {
    pub edge: String,
    dir: PathBuf,
}

impl LocalShipper {
    pub fn new(edge_dir: &Path, edge: &str) -> Self {
        Self {
            edge: edge.to_string(),
            dir: edge_dir.to_path_buf(),
        }
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.dir.join("cdr-spool")
    }
    pub fn pid_path(&self) -> PathBuf {
        self.dir.join("cdr-shipper.pid")
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("cdr-shipper.log")
    }

    fn args(&self, rpc_url: &str, extra: &[&str]) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = vec![
            "--spool".into(),
            self.spool_dir().into(),
            "--edge".into(),
            self.edge.clone().into(),
            "--rpc-url".into(),
            rpc_url.into(),
        ];
        args.extend(extra.iter().map(Into::into));
        args
    }

    /// The secrets travel in the environment, which only the owner can read, never
    /// on the command line.
    fn env(db_url: &str, rpc_token: &str) -> Vec<(&'static str, String)> {
        vec![
            ("SIPSTACK_DB_URL", db_url.to_string()),
            ("SIPSTACK_RPC_TOKEN", rpc_token.to_string()),
        ]
    }

    /// Starts the shipper unless it runs; returns its pid.
    pub fn ensure(
        &self,
        program: &Path,
        rpc_url: &str,
        db_url: &str,
        rpc_token: &str,
    ) -> Result<i32, LocalError> {
        let spool = self.spool_dir();
        std::fs::create_dir_all(&spool).map_err(|e| LocalError::io(&spool, e))?;
        let marker = spool.display().to_string();
        let (log, pid_file) = (self.log_path(), self.pid_path());
        Daemon {
            program,
            args: self.args(rpc_url, &[]),
            env: Self::env(db_url, rpc_token),
            log: &log,
            pid_file: &pid_file,
            marker: &marker,
            run_as: None,
        }
        .start()
        .map_err(|e| LocalError::Start {
            what: format!("the call-record shipper of SipEdge {}", self.edge),
            detail: e.to_string(),
        })
    }

    /// Stops the running shipper (it finishes the cycle it is in); returns whether it ran.
    pub async fn stop(&self) -> Result<bool, LocalError> {
        let marker = self.spool_dir().display().to_string();
        crate::process::stop_recorded(&self.pid_path(), &marker, Duration::from_secs(10))
            .await
            .map_err(|e| LocalError::io(self.pid_path(), e))
    }

    /// Ships every record left in the spool, once, after the edge stopped (nothing
    /// writes to the spool any more). A database that cannot be reached leaves
    /// them for the next `up`; that is reported, not an error.
    pub async fn ship_remaining(
        &self,
        program: &Path,
        rpc_url: &str,
        db_url: &str,
        rpc_token: &str,
    ) -> Result<String, LocalError> {
        let output = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::process::Command::new(program)
                .args(self.args(rpc_url, &["--once", "--kamailio-stopped"]))
                .envs(Self::env(db_url, rpc_token))
                .output(),
        )
        .await
        .map_err(|_| LocalError::Start {
            what: format!("the last call-record shipping of SipEdge {}", self.edge),
            detail: "it took longer than 60 s".into(),
        })?
        .map_err(|e| LocalError::io(program, e))?;
        if output.status.success() {
            Ok("the call records left in its spool were shipped".into())
        } else {
            Ok(format!(
                "call records stay in {} for the next `up` ({}): {}",
                self.spool_dir().display(),
                output.status,
                String::from_utf8_lossy(&output.stderr)
                    .lines()
                    .last()
                    .unwrap_or_default()
            ))
        }
    }

    /// The last lines of the shipper's log, for reports.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path(), lines)
    }
}
