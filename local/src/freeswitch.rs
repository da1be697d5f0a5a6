//! The FreeSWITCH media nodes of a MediaPool's `replicas`, run as processes.
//!
//! Replica N of a pool is `<state>/media-<pool>/node-N/` with its rendered
//! configuration (`conf/`), its own log, database, run, storage and cache
//! directories, and a loopback address of its own
//! ([`MediaPoolSpec::local_node_address`]). So every node uses the pool's sipPort,
//! event socket port and RTP range, the way pods do on Kubernetes.
//!
//! FreeSWITCH is found through [`FREESWITCH_ENV`] or on PATH; the project never
//! ships it. A node is ready once its event socket answers and its SIP profile runs.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::ResourceExt;
use sipstack_crds::mediapool::MediaPoolSpec;
use sipstack_crds::MediaPool;
use sipstack_esl::EslClient;
use sipstack_render::freeswitch::{
    CDR_PASSWORD_ENV, ESL_ADMIN_PASSWORD_ENV, ESL_PASSWORD_ENV, ESL_USER, SIP_PROFILE,
};
use sipstack_render::Rendered;

use crate::process::{self, find_program, log_tail, Daemon};
use crate::LocalError;

/// Environment variable naming the FreeSWITCH binary (else `freeswitch` on PATH).
pub const FREESWITCH_ENV: &str = "SIPSTACK_FREESWITCH";

/// The FreeSWITCH binary to run, if this host has one.
pub fn find_freeswitch() -> Option<PathBuf> {
    match std::env::var_os(FREESWITCH_ENV) {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)).filter(|p| p.is_file()),
        _ => find_program("freeswitch"),
    }
}

/// Name of the secret (under `<state>/secrets/`) holding the event socket password
/// of every node of `pool`.
pub fn esl_password_secret(pool: &str) -> String {
    format!("media-{pool}-esl-password")
}

/// The file of [`esl_password_secret`].
pub fn esl_password_file(state_dir: &Path, pool: &str) -> PathBuf {
    state_dir.join("secrets").join(esl_password_secret(pool))
}

/// Secrets a node reads from its environment, never from its files.
#[derive(Debug, Clone)]
pub struct NodeSecrets {
    pub esl_password: String,
    /// Password of the CDR database role, when the pool writes CDRs.
    pub cdr_password: Option<String>,
}

/// What [`MediaNode::ensure`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeChange {
    Unchanged,
    Started,
    /// It ran with another configuration and was restarted.
    Restarted,
}

/// One replica of a pool on this host.
#[derive(Debug, Clone)]
pub struct MediaNode {
    pub pool: String,
    pub replica: i32,
    pub address: Ipv4Addr,
    pub sip_port: u16,
    pub esl_port: u16,
    pub dir: PathBuf,
}

/// The directory of a pool's local nodes and stand-ins.
pub fn pool_dir(state_dir: &Path, pool: &str) -> PathBuf {
    state_dir.join(format!("media-{pool}"))
}

impl MediaNode {
    /// Replica `replica` of `pool`; `None` when the spec gives it no loopback address
    /// (validation has reported that).
    pub fn new(state_dir: &Path, pool: &MediaPool, replica: i32) -> Option<Self> {
        Self::from_spec(state_dir, &pool.name_any(), &pool.spec, replica)
    }

    pub fn from_spec(
        state_dir: &Path,
        pool: &str,
        spec: &MediaPoolSpec,
        replica: i32,
    ) -> Option<Self> {
        Some(Self {
            pool: pool.to_string(),
            replica,
            address: spec.local_node_address(replica)?,
            sip_port: spec.sip_port,
            esl_port: spec.event_socket.port,
            dir: pool_dir(state_dir, pool).join(format!("node-{replica}")),
        })
    }

    /// The dispatcher member URI of this node.
    pub fn uri(&self) -> String {
        format!("sip:{}:{}", self.address, self.sip_port)
    }

    /// `host:port` of its event socket.
    pub fn esl_address(&self) -> String {
        format!("{}:{}", self.address, self.esl_port)
    }

    pub fn conf_dir(&self) -> PathBuf {
        self.dir.join("conf")
    }
    /// Its log (mod_logfile, see the render option `log_file`).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("log/freeswitch.log")
    }
    /// What it prints before its log file opens (a configuration it cannot load).
    fn console_log_path(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    fn pid_path(&self) -> PathBuf {
        self.dir.join("freeswitch.pid.local")
    }
    fn fingerprint_path(&self) -> PathBuf {
        self.dir.join("freeswitch.run")
    }

    /// The pid of this node's FreeSWITCH, if it runs (a process started with its conf dir).
    pub fn running_pid(&self) -> Option<i32> {
        process::running_pid(&self.pid_path(), &self.conf_dir().to_string_lossy())
    }

    /// Brings the node to `files` (a rendered configuration directory) and waits
    /// until it is ready. A changed configuration restarts the node: FreeSWITCH
    /// applies profile and core settings only at start.
    pub async fn ensure(
        &self,
        binary: &Path,
        files: &[(String, Rendered)],
        secrets: &NodeSecrets,
    ) -> Result<(i32, NodeChange), LocalError> {
        let fingerprint = fingerprint(files, secrets);
        let running = self.running_pid();
        let current = std::fs::read_to_string(self.fingerprint_path()).unwrap_or_default();
        if let Some(pid) = running {
            if current.trim() == fingerprint {
                self.wait_ready(&secrets.esl_password, Duration::from_secs(30))
                    .await?;
                return Ok((pid, NodeChange::Unchanged));
            }
            self.stop(Duration::from_secs(10)).await?;
        }
        self.write_files(files)?;
        std::fs::write(self.fingerprint_path(), &fingerprint)
            .map_err(|e| LocalError::io(self.fingerprint_path(), e))?;
        let pid = self.start(binary, secrets).await?;
        Ok((
            pid,
            if running.is_some() {
                NodeChange::Restarted
            } else {
                NodeChange::Started
            },
        ))
    }

    /// Replaces `conf/` with `files`: what is no longer rendered goes (a CDR file
    /// after CDRs were turned off must not stay loaded).
    fn write_files(&self, files: &[(String, Rendered)]) -> Result<(), LocalError> {
        let conf = self.conf_dir();
        if conf.exists() {
            std::fs::remove_dir_all(&conf).map_err(|e| LocalError::io(&conf, e))?;
        }
        for (rel, file) in files {
            let path = conf.join(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| LocalError::io(parent, e))?;
            }
            std::fs::write(&path, &file.text).map_err(|e| LocalError::io(&path, e))?;
        }
        for sub in ["log", "db", "run", "temp", "storage", "cache", "recordings"] {
            let d = self.dir.join(sub);
            std::fs::create_dir_all(&d).map_err(|e| LocalError::io(&d, e))?;
        }
        Ok(())
    }

    async fn start(&self, binary: &Path, secrets: &NodeSecrets) -> Result<i32, LocalError> {
        let dir = |sub: &str| self.dir.join(sub).into_os_string();
        let mut args: Vec<std::ffi::OsString> = vec![
            // no NAT discovery (STUN, UPnP), no fork, no console
            "-nonat".into(),
            "-nf".into(),
            "-nc".into(),
            // SIGTERM waits for the calls in progress to end
            "-elegant-term".into(),
            "-conf".into(),
            self.conf_dir().into_os_string(),
        ];
        for (flag, sub) in [
            ("-log", "log"),
            ("-db", "db"),
            ("-run", "run"),
            ("-temp", "temp"),
            ("-storage", "storage"),
            ("-cache", "cache"),
            ("-recordings", "recordings"),
        ] {
            args.push(flag.into());
            args.push(dir(sub));
        }
        let mut env = vec![
            (ESL_PASSWORD_ENV, secrets.esl_password.clone()),
            // the socket's own password runs everything (system too): new at every
            // start, kept nowhere; the driver logs in as the restricted user
            (ESL_ADMIN_PASSWORD_ENV, crate::state::random_token()?),
        ];
        if let Some(p) = &secrets.cdr_password {
            env.push((CDR_PASSWORD_ENV, p.clone()));
        }
        let console = self.console_log_path();
        let pid_file = self.pid_path();
        let conf = self.conf_dir();
        let marker = conf.to_string_lossy();
        let daemon = Daemon {
            program: binary,
            args,
            env,
            log: &console,
            pid_file: &pid_file,
            marker: &marker,
            run_as: None,
        };
        let what = || {
            format!(
                "FreeSWITCH node {} of MediaPool {}",
                self.replica, self.pool
            )
        };
        let pid = daemon.start().map_err(|e| LocalError::Start {
            what: what(),
            detail: e.to_string(),
        })?;
        if let Err(e) = self
            .wait_ready(&secrets.esl_password, Duration::from_secs(60))
            .await
        {
            let _ = self.stop(Duration::from_secs(5)).await;
            return Err(e);
        }
        Ok(pid)
    }

    /// Waits until the event socket accepts the password and the SIP profile runs.
    pub async fn wait_ready(&self, password: &str, timeout: Duration) -> Result<(), LocalError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = String::from("no answer yet");
        while tokio::time::Instant::now() < deadline {
            if self.running_pid().is_none() {
                return Err(LocalError::Start {
                    what: format!(
                        "FreeSWITCH node {} of MediaPool {}",
                        self.replica, self.pool
                    ),
                    detail: format!(
                        "it exited; last lines of {}:\n{}",
                        self.log_path().display(),
                        log_tail(&self.log_path(), 12)
                    ),
                });
            }
            match self.api(password, "sofia status").await {
                Ok(text) if profile_running(&text) => return Ok(()),
                Ok(text) => last = text.lines().take(3).collect::<Vec<_>>().join(" / "),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Err(LocalError::Start {
            what: format!(
                "FreeSWITCH node {} of MediaPool {}",
                self.replica, self.pool
            ),
            detail: format!(
                "not ready within {timeout:?} (event socket {}: {last}); last lines of {}:\n{}",
                self.esl_address(),
                self.log_path().display(),
                log_tail(&self.log_path(), 12)
            ),
        })
    }

    /// Runs one API command over a fresh event socket connection.
    pub async fn api(&self, password: &str, command: &str) -> Result<String, String> {
        let client = EslClient::connect_as(
            &self.esl_address(),
            ESL_USER,
            password,
            Duration::from_secs(3),
        )
        .await
        .map_err(|e| e.to_string())?;
        client.api(command).await.map_err(|e| e.to_string())
    }

    /// Calls in progress on the node.
    pub async fn calls(&self, password: &str) -> Result<u32, String> {
        let text = self.api(password, "show calls count").await?;
        parse_count(&text)
            .ok_or_else(|| format!("unexpected answer to `show calls count`: {text:?}"))
    }

    /// What `sipctl local status` shows of a node: calls, sessions per second, state.
    pub async fn health(&self, password: &str) -> NodeHealth {
        let status = self.api(password, "status").await;
        let paused = self.api(password, "fsctl pause_check inbound").await;
        match (status, paused) {
            (Ok(status), Ok(paused)) => NodeHealth {
                reachable: true,
                calls: parse_sessions(&status),
                sessions_per_second: parse_sps(&status),
                paused: paused.trim() == "true",
                error: None,
            },
            (Err(e), _) | (_, Err(e)) => NodeHealth {
                error: Some(e),
                ..NodeHealth::default()
            },
        }
    }

    /// Drains the node: new inbound calls are refused (and the edges' OPTIONS probes
    /// get 503) while the calls in progress go on; returns once it carries none, or
    /// with the count still running when `timeout` ends first.
    pub async fn drain(&self, password: &str, timeout: Duration) -> Result<u32, String> {
        self.api(password, "fsctl pause inbound").await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let calls = self.calls(password).await?;
            if calls == 0 || tokio::time::Instant::now() >= deadline {
                return Ok(calls);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Takes a drained node back into service.
    pub async fn resume(&self, password: &str) -> Result<(), String> {
        self.api(password, "fsctl resume inbound").await.map(|_| ())
    }

    /// Stops the node: SIGTERM (FreeSWITCH waits for calls in progress, see
    /// `-elegant-term`), SIGKILL after `grace`. Returns whether it ran.
    pub async fn stop(&self, grace: Duration) -> Result<bool, LocalError> {
        process::stop_recorded(&self.pid_path(), &self.conf_dir().to_string_lossy(), grace)
            .await
            .map_err(|e| LocalError::io(self.pid_path(), e))
    }
}

/// A node's state as its event socket tells it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeHealth {
    pub reachable: bool,
    pub calls: Option<u32>,
    pub sessions_per_second: Option<u32>,
    /// Inbound calls paused (draining).
    pub paused: bool,
    pub error: Option<String>,
}

/// The replicas that have a directory under a pool's directory, in order.
pub fn existing_replicas(pool_dir: &Path) -> Vec<i32> {
    let mut found: Vec<i32> = std::fs::read_dir(pool_dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("node-")?.parse().ok())
        .collect();
    found.sort_unstable();
    found
}

/// Stops every node under a pool's directory; returns the replicas that ran.
pub async fn stop_all(
    state_dir: &Path,
    pool: &str,
    grace: Duration,
) -> Result<Vec<i32>, LocalError> {
    let mut stopped = Vec::new();
    for replica in existing_replicas(&pool_dir(state_dir, pool)) {
        let node = MediaNode {
            pool: pool.to_string(),
            replica,
            address: Ipv4Addr::LOCALHOST,
            sip_port: 0,
            esl_port: 0,
            dir: pool_dir(state_dir, pool).join(format!("node-{replica}")),
        };
        if node.stop(grace).await? {
            stopped.push(replica);
        }
    }
    Ok(stopped)
}

/// Changes whenever the node must restart: its files or its secrets.
fn fingerprint(files: &[(String, Rendered)], secrets: &NodeSecrets) -> String {
    let mut all = String::new();
    for (path, file) in files {
        all.push_str(path);
        all.push(' ');
        all.push_str(&file.hash);
        all.push('\n');
    }
    all.push_str(&secrets.esl_password);
    all.push('\n');
    all.push_str(secrets.cdr_password.as_deref().unwrap_or(""));
    sipstack_render::config_hash(&all)
}

/// Whether `sofia status` lists the edges' profile as running:
/// "sipstack  profile  sip:mod_sofia@127.1.1.1:5080  RUNNING (0)".
fn profile_running(status: &str) -> bool {
    status.lines().any(|l| {
        let mut words = l.split_whitespace();
        words.next() == Some(SIP_PROFILE)
            && words.next() == Some("profile")
            && l.contains("RUNNING")
    })
}

/// `show calls count` answers "\n2 total.\n".
pub fn parse_count(text: &str) -> Option<u32> {
    text.split_whitespace().next()?.parse().ok()
}

/// `status` holds "3 session(s) - peak 5, last 5min 4".
fn parse_sessions(status: &str) -> Option<u32> {
    status
        .lines()
        .find(|l| l.contains("session(s) - peak"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
}

/// `status` holds "2 session(s) per Sec out of max 200, peak 7, last 5min 1".
fn parse_sps(status: &str) -> Option<u32> {
    status
        .lines()
        .find(|l| l.contains("session(s) per Sec"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str =
        "UP 0 years, 0 days, 0 hours, 0 minutes, 12 seconds, 371 milliseconds, 521 microseconds\n\
FreeSWITCH (Version 1.10.12 -release 64bit) is ready\n\
4 session(s) since startup\n\
2 session(s) - peak 3, last 5min 3\n\
1 session(s) per Sec out of max 200, peak 2, last 5min 2\n\
1000 session(s) max\n\
min idle cpu 0.00/99.37\n\
Current Stack Size/Max 240K/8192K\n";

    #[test]
    fn status_figures() {
        assert_eq!(parse_sessions(STATUS), Some(2));
        assert_eq!(parse_sps(STATUS), Some(1));
        assert_eq!(parse_count("\n3 total.\n"), Some(3));
        assert_eq!(parse_count("-ERR no reply"), None);
        let sofia = "                     Name\t   Type\t                                      Data\tState\n\
=====\n                 sipstack\tprofile\t              sip:mod_sofia@127.9.9.1:5080\tRUNNING (0)\n";
        assert!(profile_running(sofia));
        assert!(!profile_running(&sofia.replace("RUNNING", "DOWN")));
        assert!(!profile_running(&sofia.replace("sipstack\t", "other\t")));
    }

    #[test]
    fn replicas_get_their_own_addresses() {
        let platform = sipstack_crds::Platform::from_yaml(
            "apiVersion: sipstack.io/v1alpha1\nkind: MediaPool\nmetadata: {name: media}\nspec: {setId: 2, replicas: 3, cdr: {enabled: false}}\n",
        )
        .unwrap();
        let pool = &platform.media_pools[0];
        let dir = Path::new("/state");
        let nodes: Vec<MediaNode> = (0..3)
            .map(|r| MediaNode::new(dir, pool, r).unwrap())
            .collect();
        assert_eq!(nodes[0].uri(), "sip:127.1.2.1:5080");
        assert_eq!(nodes[2].uri(), "sip:127.1.2.3:5080");
        assert_eq!(nodes[1].esl_address(), "127.1.2.2:8021");
        assert_eq!(nodes[1].dir, Path::new("/state/media-media/node-1"));
    }
}
