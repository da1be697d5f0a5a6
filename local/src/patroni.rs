//! A PostgreSQL HA cluster on this host, the way a PgCluster of more than one
//! instance runs locally: etcd (its own members, or the spec's endpoints),
//! Patroni-managed PostgreSQL members, HAProxy with a read-write endpoint that
//! follows the primary and a read-only one over the replicas, and PgBouncer
//! when the spec asks for a pooler.
//!
//! ```text
//! STATE/pg-NAME/secrets/     postgres.password, replicator.password, OWNER.password (0600)
//! STATE/pg-NAME/etcd-N/      data/, etcd.log, etcd.pid
//! STATE/pg-NAME/member-N/    patroni.yml, data/ (PGDATA), run/ (socket, pgpass), patroni.log, patroni.pid
//! STATE/pg-NAME/haproxy/     haproxy.cfg, haproxy.log, haproxy.pid
//! STATE/pg-NAME/pgbouncer/   pgbouncer.ini, userlist.txt, pgbouncer.log, pgbouncer.pid
//! ```
//!
//! When sipstack runs as root, everything here runs as the `postgres` system user
//! (PostgreSQL refuses root, PgBouncer too).

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::ResourceExt;
use sipstack_crds::PgCluster;
use sipstack_patroni::{Cluster, PatroniClient, REST_API_USER};
use sipstack_render::patroni::member_name;
use sipstack_render::{
    render_haproxy, render_patroni, render_pgbouncer, PatroniTarget, PgbouncerTarget,
};

use crate::postgres::{self, create_dir, load_or_create_secret, LocalPostgres, SystemUser};
use crate::process::{find_program, log_tail, Daemon};
use crate::LocalError;

const REPLICATION_USER: &str = "replicator";
/// What a Patroni member is started with, from the cluster's secrets.
#[derive(Clone, Copy)]
struct MemberPasswords<'a> {
    superuser: &'a str,
    replication: &'a str,
    rest: &'a str,
    /// The local etcd's, when the driver runs it.
    etcd: Option<&'a str>,
}

/// The local etcd's user (its root): Patroni logs in as it.
pub const ETCD_USER: &str = "root";
/// How long `up` waits for a leader (initdb and the first start included).
const LEADER_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `up` waits for every replica to stream.
const REPLICAS_TIMEOUT: Duration = Duration::from_secs(120);
/// Patroni stops PostgreSQL (fast shutdown) before it exits.
const PATRONI_STOP_GRACE: Duration = Duration::from_secs(60);

/// The cluster's programs, found on this host.
struct Programs {
    etcd: PathBuf,
    patroni: PathBuf,
    haproxy: PathBuf,
}

fn program(name: &str, package: &str) -> Result<PathBuf, LocalError> {
    find_program(name).ok_or(LocalError::Missing {
        program: name.into(),
        package: package.into(),
    })
}

/// One PgCluster of several members, kept under `STATE/pg-NAME`.
#[derive(Debug, Clone)]
pub struct LocalCluster {
    dir: PathBuf,
    cluster: PgCluster,
}

/// Where clients reach a local cluster.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// HAProxy's read-write endpoint (follows the primary).
    pub read_write_port: u16,
    pub read_only_port: u16,
    /// PgBouncer, when the spec enables it.
    pub pooler_port: Option<u16>,
    /// Each member's Patroni REST API.
    pub patroni_urls: Vec<String>,
    /// etcd client endpoints Patroni uses.
    pub etcd_endpoints: Vec<String>,
}

impl LocalCluster {
    pub fn new(state_dir: &Path, cluster: &PgCluster) -> Self {
        Self {
            dir: state_dir.join(format!("pg-{}", cluster.name_any())),
            cluster: cluster.clone(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn name(&self) -> String {
        self.cluster.name_any()
    }

    fn instances(&self) -> u32 {
        self.cluster.spec.instances.max(1) as u32
    }

    pub fn member_dir(&self, n: u32) -> PathBuf {
        self.dir.join(format!("member-{n}"))
    }

    fn etcd_dir(&self, n: u32) -> PathBuf {
        self.dir.join(format!("etcd-{n}"))
    }

    fn secrets_dir(&self) -> PathBuf {
        self.dir.join("secrets")
    }

    /// PostgreSQL through the read-write endpoint, with the cluster's superuser
    /// password: the same helper a single server uses, so the platform's role,
    /// database and owner URL are made the same way.
    pub fn read_write(&self) -> LocalPostgres {
        LocalPostgres::new(
            &self.dir,
            self.cluster.spec.port,
            self.cluster.spec.postgres_version.major(),
        )
    }

    pub fn endpoints(&self) -> Endpoints {
        let spec = &self.cluster.spec;
        Endpoints {
            read_write_port: spec.port,
            read_only_port: spec.local.read_only_port,
            pooler_port: spec.pooler.enabled.then_some(spec.pooler.port),
            patroni_urls: (0..self.instances())
                .map(|n| format!("http://127.0.0.1:{}", spec.local.rest_api_port as u32 + n))
                .collect(),
            etcd_endpoints: self.etcd_endpoints(),
        }
    }

    fn etcd_endpoints(&self) -> Vec<String> {
        let spec = &self.cluster.spec;
        if spec.runs_local_etcd() {
            (0..spec.dcs.etcd_members)
                .map(|n| format!("127.0.0.1:{}", spec.local.etcd_port as u32 + 2 * n))
                .collect()
        } else {
            spec.dcs.etcd_endpoints.clone()
        }
    }

    /// A client of the members' REST APIs, with the credentials of their
    /// changing endpoints (created on the first start).
    pub fn patroni(&self) -> PatroniClient {
        let client = PatroniClient::new(self.endpoints().patroni_urls);
        match fs::read_to_string(self.rest_password_file()) {
            Ok(password) => client.with_auth(REST_API_USER, password.trim()),
            Err(_) => client,
        }
    }

    /// The password of the members' REST API (`restapi.authentication`): without
    /// it nobody can switch over, restart or reconfigure the cluster through it.
    pub fn rest_password_file(&self) -> PathBuf {
        self.secrets_dir().join("patroni-rest.password")
    }

    fn run_as(&self) -> Result<Option<SystemUser>, LocalError> {
        Ok(postgres::system_user(
            self.cluster.spec.postgres_version.major(),
        )?)
    }

    /// Starts what does not run yet and waits for a primary behind the read-write
    /// endpoint and for every replica to stream. Safe to run again.
    pub async fn up(&self, lines: &mut Vec<String>) -> Result<Endpoints, LocalError> {
        let programs = Programs {
            etcd: program("etcd", "etcd-server")?,
            patroni: program("patroni", "patroni")?,
            haproxy: program("haproxy", "haproxy")?,
        };
        if self.cluster.spec.pooler.enabled {
            // missing: say so before anything starts
            program("pgbouncer", "pgbouncer")?;
        }
        if self.dir.join("data/PG_VERSION").exists() {
            return Err(LocalError::Unsupported(format!(
                "{} holds the single PostgreSQL server of PgCluster/{} (instances: 1); a cluster of {} members \
                 needs new data directories: export what you need (sipctl export subscribers), run `sipctl local down`, \
                 move {} away and run `sipctl local up` again",
                self.dir.display(),
                self.name(),
                self.instances(),
                self.dir.display()
            )));
        }
        let run_as = self.run_as()?;
        create_dir(&self.dir, 0o755).map_err(LocalError::Postgres)?;
        create_dir(&self.secrets_dir(), 0o700).map_err(LocalError::Postgres)?;
        let superuser_password =
            load_or_create_secret(&self.secrets_dir().join("postgres.password"))?;
        let replication_password = load_or_create_secret(
            &self
                .secrets_dir()
                .join(format!("{REPLICATION_USER}.password")),
        )?;
        let rest_password = load_or_create_secret(&self.rest_password_file())?;
        // the local etcd takes clients with this user's password only
        let etcd_password = match self.cluster.spec.runs_local_etcd() {
            true => Some(load_or_create_secret(&self.etcd_password_file())?),
            false => None,
        };

        if let Some(password) = &etcd_password {
            self.start_etcd(&programs.etcd, run_as).await?;
            self.enable_etcd_auth(password).await?;
            lines.push(format!(
                "etcd       {} member(s) on {}",
                self.cluster.spec.dcs.etcd_members,
                self.etcd_endpoints().join(" ")
            ));
        }
        for n in 0..self.instances() {
            self.start_member(
                n,
                &programs.patroni,
                run_as,
                &MemberPasswords {
                    superuser: &superuser_password,
                    replication: &replication_password,
                    rest: &rest_password,
                    etcd: etcd_password.as_deref(),
                },
            )?;
        }
        let patroni = self.patroni();
        let cluster = patroni
            .wait_for_leader(None, LEADER_TIMEOUT)
            .await
            .map_err(|_| {
                self.start_error(
                    "Patroni elected no primary",
                    &self.member_dir(0).join("patroni.log"),
                )
            })?;
        self.start_haproxy(&programs.haproxy, run_as).await?;
        let read_write = self.read_write();
        wait_for(
            Duration::from_secs(30),
            "the read-write endpoint",
            || async {
                let client = read_write.connect_superuser().await.ok()?;
                let row = client
                    .query_one("SELECT pg_is_in_recovery()", &[])
                    .await
                    .ok()?;
                (!row.get::<_, bool>(0)).then_some(())
            },
        )
        .await
        .map_err(|_| {
            self.start_error(
                "HAProxy's read-write endpoint does not reach the primary",
                &self.dir.join("haproxy/haproxy.log"),
            )
        })?;
        let leader = cluster.leader().map(|l| l.name.clone()).unwrap_or_default();
        lines.push(format!(
            "postgres   PgCluster/{}: {} Patroni member(s), primary {leader}; read-write 127.0.0.1:{}, read-only 127.0.0.1:{} (HAProxy)",
            self.name(),
            self.instances(),
            self.cluster.spec.port,
            self.cluster.spec.local.read_only_port
        ));
        // in synchronous mode a commit waits for the sync standby: wait until there is one
        let synchronous =
            self.cluster.spec.patroni.synchronous_mode != sipstack_crds::SynchronousMode::Disabled;
        let streaming = wait_for(REPLICAS_TIMEOUT, "every replica streaming", || async {
            patroni.cluster().await.ok().filter(|c| {
                c.members.len() == self.instances() as usize
                    && c.members.iter().all(|m| m.is_running())
                    && (!synchronous
                        || c.members
                            .iter()
                            .any(|m| m.role == sipstack_patroni::Role::SyncStandby))
            })
        })
        .await;
        if streaming.is_err() {
            lines.push(format!(
                "postgres   not every replica runs yet; see {}/member-*/patroni.log",
                self.dir.display()
            ));
        }
        Ok(self.endpoints())
    }

    /// Starts PgBouncer (when the spec enables it) in front of the read-write
    /// endpoint, for `owner`, whose password must exist by now.
    pub async fn start_pooler(&self, owner: &str) -> Result<Option<u16>, LocalError> {
        if !self.cluster.spec.pooler.enabled {
            return Ok(None);
        }
        let pgbouncer = program("pgbouncer", "pgbouncer")?;
        let run_as = self.run_as()?;
        let dir = self.dir.join("pgbouncer");
        self.private_dir(&dir, run_as)?;
        let password = postgres::read_secret(&self.read_write().owner_password_file(owner))?;
        // PgBouncer logs in to PostgreSQL as the client's user with this password
        let userlist = dir.join("userlist.txt");
        self.write_owned(&userlist, &format!("\"{owner}\" \"{password}\"\n"), run_as)?;
        let ini = dir.join("pgbouncer.ini");
        let pid_file = dir.join("pgbouncer.pid");
        let rendered = render_pgbouncer(
            &self.cluster,
            &PgbouncerTarget {
                upstream_host: "127.0.0.1",
                upstream_port: self.cluster.spec.port,
                listen_addr: "127.0.0.1",
                auth_file: &userlist,
                unix_socket_dir: None,
                pid_file: None,
            },
        )?;
        let changed = self.write_config(&ini, &rendered.text, run_as)?;
        let daemon = Daemon {
            program: &pgbouncer,
            args: vec![ini.clone().into()],
            env: Vec::new(),
            log: &dir.join("pgbouncer.log"),
            pid_file: &pid_file,
            marker: &ini.to_string_lossy(),
            run_as: run_as.map(|u| (u.uid, u.gid)),
        };
        if changed {
            daemon
                .stop(Duration::from_secs(10))
                .await
                .map_err(|e| LocalError::io(&pid_file, e))?;
        }
        daemon.start().map_err(|e| LocalError::io(&pgbouncer, e))?;
        let port = self.cluster.spec.pooler.port;
        wait_for(Duration::from_secs(15), "PgBouncer", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        })
        .await
        .map_err(|_| {
            self.start_error(
                "PgBouncer does not accept connections",
                &dir.join("pgbouncer.log"),
            )
        })?;
        Ok(Some(port))
    }

    /// The file of the local etcd's `root` password.
    pub fn etcd_password_file(&self) -> PathBuf {
        self.secrets_dir()
            .join(format!("etcd-{ETCD_USER}.password"))
    }

    /// Turns on etcd's client authentication, with [`ETCD_USER`] as its root user,
    /// unless it is on already (a user that authenticates with the password).
    /// Without it any local process could rewrite the cluster's leader key or its
    /// configuration in etcd, as Patroni's REST API would let it do with no password.
    async fn enable_etcd_auth(&self, password: &str) -> Result<(), LocalError> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| self.etcd_auth_error(e.to_string()))?;
        let Some(endpoint) = self.etcd_endpoints().into_iter().next() else {
            return Ok(());
        };
        let call = |path: &str, body: serde_json::Value| {
            let request = http
                .post(format!("http://{endpoint}/v3/auth/{path}"))
                .json(&body);
            async move {
                let answer = request.send().await.map_err(|e| e.to_string())?;
                let status = answer.status();
                let text = answer.text().await.unwrap_or_default();
                Ok::<_, String>((status.is_success(), text))
            }
        };
        let login = serde_json::json!({"name": ETCD_USER, "password": password});
        let (ok, _) = call("authenticate", login.clone())
            .await
            .map_err(|e| self.etcd_auth_error(e))?;
        if ok {
            return Ok(());
        }
        // a user or role that exists from an earlier, interrupted setup is fine
        for (path, body) in [
            ("user/add", login.clone()),
            ("role/add", serde_json::json!({"name": "root"})),
            (
                "user/grant",
                serde_json::json!({"user": ETCD_USER, "role": "root"}),
            ),
            ("enable", serde_json::json!({})),
        ] {
            let (ok, text) = call(path, body)
                .await
                .map_err(|e| self.etcd_auth_error(e))?;
            if !ok && !text.contains("already") {
                return Err(self.etcd_auth_error(format!(
                    "{path}: {}; if etcd has authentication on with another root password, restore {} or remove the cluster's etcd-* directories",
                    text.trim(),
                    self.etcd_password_file().display()
                )));
            }
        }
        let (ok, text) = call("authenticate", login)
            .await
            .map_err(|e| self.etcd_auth_error(e))?;
        if !ok {
            return Err(
                self.etcd_auth_error(format!("the root user cannot log in: {}", text.trim()))
            );
        }
        Ok(())
    }

    fn etcd_auth_error(&self, detail: String) -> LocalError {
        LocalError::Start {
            what: format!("etcd authentication of PgCluster {}", self.name()),
            detail,
        }
    }

    async fn start_etcd(&self, etcd: &Path, run_as: Option<SystemUser>) -> Result<(), LocalError> {
        let spec = &self.cluster.spec;
        let members = spec.dcs.etcd_members;
        let peer = |n: u32| {
            format!(
                "http://127.0.0.1:{}",
                spec.local.etcd_port as u32 + 2 * n + 1
            )
        };
        let initial_cluster: Vec<String> = (0..members)
            .map(|n| format!("{}-etcd-{n}={}", self.name(), peer(n)))
            .collect();
        for n in 0..members {
            let dir = self.etcd_dir(n);
            self.private_dir(&dir, run_as)?;
            let data = dir.join("data");
            let client = format!("http://127.0.0.1:{}", spec.local.etcd_port as u32 + 2 * n);
            let args: Vec<OsString> = [
                "--name".to_string(),
                format!("{}-etcd-{n}", self.name()),
                "--data-dir".into(),
                data.display().to_string(),
                "--listen-client-urls".into(),
                client.clone(),
                "--advertise-client-urls".into(),
                client,
                "--listen-peer-urls".into(),
                peer(n),
                "--initial-advertise-peer-urls".into(),
                peer(n),
                "--initial-cluster".into(),
                initial_cluster.join(","),
                // ignored once the data directory holds a member
                "--initial-cluster-state".into(),
                "new".into(),
                "--initial-cluster-token".into(),
                format!("sipstack-{}", self.name()),
            ]
            .into_iter()
            .map(OsString::from)
            .collect();
            let daemon = Daemon {
                program: etcd,
                args,
                env: Vec::new(),
                log: &dir.join("etcd.log"),
                pid_file: &dir.join("etcd.pid"),
                marker: &data.to_string_lossy(),
                run_as: run_as.map(|u| (u.uid, u.gid)),
            };
            daemon.start().map_err(|e| LocalError::io(etcd, e))?;
        }
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| LocalError::Start {
                what: "etcd".into(),
                detail: e.to_string(),
            })?;
        let endpoints = self.etcd_endpoints();
        wait_for(Duration::from_secs(30), "etcd", || async {
            for e in &endpoints {
                let ok = http
                    .get(format!("http://{e}/health"))
                    .send()
                    .await
                    .ok()?
                    .text()
                    .await
                    .ok()?
                    .contains("\"true\"");
                if !ok {
                    return None;
                }
            }
            Some(())
        })
        .await
        .map_err(|_| {
            self.start_error(
                "etcd did not become healthy",
                &self.etcd_dir(0).join("etcd.log"),
            )
        })
    }

    fn start_member(
        &self,
        n: u32,
        patroni: &Path,
        run_as: Option<SystemUser>,
        passwords: &MemberPasswords<'_>,
    ) -> Result<(), LocalError> {
        let MemberPasswords {
            superuser: superuser_password,
            replication: replication_password,
            rest: rest_password,
            etcd: etcd_password,
        } = *passwords;
        let dir = self.member_dir(n);
        self.private_dir(&dir, run_as)?;
        self.private_dir(&dir.join("run"), run_as)?;
        let config = dir.join("patroni.yml");
        let rendered = render_patroni(
            &self.cluster,
            &PatroniTarget::Local {
                index: n,
                dir: &dir,
                etcd_hosts: self.etcd_endpoints(),
            },
        )?;
        let changed = self.write_config(&config, &rendered.text, run_as)?;
        let mut env = vec![
            ("PATRONI_SUPERUSER_PASSWORD", superuser_password.to_string()),
            (
                "PATRONI_REPLICATION_PASSWORD",
                replication_password.to_string(),
            ),
            ("PATRONI_REWIND_PASSWORD", superuser_password.to_string()),
            ("PATRONI_RESTAPI_USERNAME", REST_API_USER.to_string()),
            ("PATRONI_RESTAPI_PASSWORD", rest_password.to_string()),
            ("HOME", dir.display().to_string()),
            ("LC_ALL", "C.UTF-8".into()),
        ];
        if let Some(password) = etcd_password {
            // Patroni takes etcd3 credentials from the environment only once some
            // PATRONI_ETCD3_* setting is there: the protocol is that one
            env.push(("PATRONI_ETCD3_PROTOCOL", "http".into()));
            env.push(("PATRONI_ETCD3_USERNAME", ETCD_USER.into()));
            env.push(("PATRONI_ETCD3_PASSWORD", password.to_string()));
        }
        let daemon = Daemon {
            program: patroni,
            args: vec![config.clone().into()],
            env,
            log: &dir.join("patroni.log"),
            pid_file: &dir.join("patroni.pid"),
            marker: &config.to_string_lossy(),
            run_as: run_as.map(|u| (u.uid, u.gid)),
        };
        match daemon.running() {
            // Patroni rereads its file on SIGHUP
            Some(pid) if changed => {
                crate::process::reload(pid).map_err(|e| LocalError::io(&config, e))?
            }
            Some(_) => {}
            None => {
                daemon.start().map_err(|e| LocalError::io(patroni, e))?;
            }
        }
        Ok(())
    }

    async fn start_haproxy(
        &self,
        haproxy: &Path,
        run_as: Option<SystemUser>,
    ) -> Result<(), LocalError> {
        let dir = self.dir.join("haproxy");
        self.private_dir(&dir, run_as)?;
        let config = dir.join("haproxy.cfg");
        let rendered = render_haproxy(&self.cluster, None)?;
        let changed = self.write_config(&config, &rendered.text, run_as)?;
        let pid_file = dir.join("haproxy.pid");
        let daemon = Daemon {
            program: haproxy,
            // -db: stay in the foreground, so the pid we record is HAProxy's
            args: vec!["-db".into(), "-f".into(), config.clone().into()],
            env: Vec::new(),
            log: &dir.join("haproxy.log"),
            pid_file: &pid_file,
            marker: &config.to_string_lossy(),
            run_as: run_as.map(|u| (u.uid, u.gid)),
        };
        if changed {
            // a new member list: start over (clients reconnect, as after a failover)
            daemon
                .stop(Duration::from_secs(5))
                .await
                .map_err(|e| LocalError::io(&pid_file, e))?;
        }
        daemon.start().map_err(|e| LocalError::io(haproxy, e))?;
        Ok(())
    }

    /// Stops every program of the cluster under `dir` (a `pg-NAME` directory), found
    /// from its pid files: PgBouncer and HAProxy, the Patroni members (each stops its
    /// PostgreSQL), then etcd. Returns what was running.
    pub async fn stop_all(dir: &Path) -> Result<Vec<String>, LocalError> {
        let mut stopped = Vec::new();
        let mut subdirs: Vec<(String, PathBuf)> = fs::read_dir(dir)
            .map_err(|e| LocalError::io(dir, e))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
            .collect();
        subdirs.sort();
        let stop = |pid_file: PathBuf, marker: PathBuf, grace: Duration| async move {
            crate::process::stop_recorded(&pid_file, &marker.to_string_lossy(), grace)
                .await
                .map_err(|e| LocalError::io(&pid_file, e))
        };
        for (name, path) in &subdirs {
            let stopped_now = match name.as_str() {
                "pgbouncer" => {
                    stop(
                        path.join("pgbouncer.pid"),
                        path.join("pgbouncer.ini"),
                        Duration::from_secs(10),
                    )
                    .await?
                }
                "haproxy" => {
                    stop(
                        path.join("haproxy.pid"),
                        path.join("haproxy.cfg"),
                        Duration::from_secs(10),
                    )
                    .await?
                }
                _ => false,
            };
            if stopped_now {
                stopped.push(name.clone());
            }
        }
        // the replicas first, the leader last: stopping the leader while replicas
        // run would make one of them take over, only to be stopped too
        let mut members: Vec<&(String, PathBuf)> = subdirs
            .iter()
            .filter(|(n, _)| n.starts_with("member-"))
            .collect();
        if let Some(leader) = Self::leader_dir(&members).await {
            members.sort_by_key(|(n, _)| *n == leader);
        }
        for (name, path) in members {
            if stop(
                path.join("patroni.pid"),
                path.join("patroni.yml"),
                PATRONI_STOP_GRACE,
            )
            .await?
            {
                stopped.push(format!("{name} (Patroni and its PostgreSQL)"));
            }
        }
        for (name, path) in subdirs.iter().filter(|(n, _)| n.starts_with("etcd-")) {
            if stop(
                path.join("etcd.pid"),
                path.join("data"),
                Duration::from_secs(10),
            )
            .await?
            {
                stopped.push(name.clone());
            }
        }
        Ok(stopped)
    }

    /// The directory name (`member-N`) of the member that leads now, asked of the
    /// members' REST APIs (as their patroni.yml give them); None when none answers.
    async fn leader_dir(members: &[&(String, PathBuf)]) -> Option<String> {
        let urls: Vec<String> = members
            .iter()
            .filter_map(|(_, path)| {
                let text = fs::read_to_string(path.join("patroni.yml")).ok()?;
                // the line after `restapi:` in the file rendered from templates/patroni
                let mut lines = text.lines().skip_while(|l| *l != "restapi:").skip(1);
                let listen = lines.next()?.trim().strip_prefix("listen:")?.trim();
                Some(format!("http://{}", listen.trim_matches(['"', '\''])))
            })
            .collect();
        if urls.is_empty() {
            return None;
        }
        let cluster =
            tokio::time::timeout(Duration::from_secs(5), PatroniClient::new(urls).cluster())
                .await
                .ok()?
                .ok()?;
        let leader = cluster.leader()?;
        // member N of the cluster is named NAME-N
        let n = leader.name.rsplit('-').next()?;
        Some(format!("member-{n}"))
    }

    /// Whether `dir` (a `pg-NAME` directory) holds a Patroni cluster.
    pub fn is_cluster_dir(dir: &Path) -> bool {
        dir.join("member-0").is_dir() || dir.join("etcd-0").is_dir()
    }

    /// The members as Patroni sees them now.
    pub async fn status(&self) -> Result<Cluster, LocalError> {
        self.patroni()
            .cluster()
            .await
            .map_err(|e| LocalError::Start {
                what: "Patroni".into(),
                detail: e.to_string(),
            })
    }

    /// The Patroni member names of this cluster.
    pub fn member_names(&self) -> Vec<String> {
        (0..self.instances())
            .map(|n| member_name(&self.name(), n))
            .collect()
    }

    fn private_dir(&self, dir: &Path, run_as: Option<SystemUser>) -> Result<(), LocalError> {
        create_dir(dir, 0o700).map_err(LocalError::Postgres)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| LocalError::io(dir, e))?;
        if let Some(u) = run_as {
            std::os::unix::fs::chown(dir, Some(u.uid), Some(u.gid))
                .map_err(|e| LocalError::io(dir, e))?;
        }
        Ok(())
    }

    fn write_owned(
        &self,
        path: &Path,
        text: &str,
        run_as: Option<SystemUser>,
    ) -> Result<(), LocalError> {
        crate::state::write_secret(path, text)?;
        if let Some(u) = run_as {
            std::os::unix::fs::chown(path, Some(u.uid), Some(u.gid))
                .map_err(|e| LocalError::io(path, e))?;
        }
        Ok(())
    }

    /// Writes a configuration file; returns whether its content changed.
    fn write_config(
        &self,
        path: &Path,
        text: &str,
        run_as: Option<SystemUser>,
    ) -> Result<bool, LocalError> {
        if fs::read_to_string(path).is_ok_and(|old| old == text) {
            return Ok(false);
        }
        self.write_owned(path, text, run_as)?;
        Ok(true)
    }

    fn start_error(&self, what: &str, log: &Path) -> LocalError {
        LocalError::Start {
            what: format!("PgCluster/{}", self.name()),
            detail: format!(
                "{what}; last lines of {}:\n{}",
                log.display(),
                log_tail(log, 15)
            ),
        }
    }
}

/// Polls `check` every 250 ms until it gives a value or `timeout` passes.
async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T, ()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!("gave up waiting for {what} after {timeout:?}");
            return Err(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
