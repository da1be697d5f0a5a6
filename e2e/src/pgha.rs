//! PostgreSQL HA under test: a PgCluster of three Patroni members with etcd and
//! HAProxy (and PgBouncer), a writer that records every acknowledged row, a
//! REGISTER load through Kamailio, and the ways a member is made to fail.
//!
//! Used by the failover tests and by `pg-failover-bench`, so the figures the
//! benchmark prints come from the same code the tests check.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sipstack_patroni::{Cluster, PatroniClient};

use crate::sipp::{InjectionFile, SippCommand, SippOutcome};
use crate::testbed::{free_udp_and_tcp_port, Ports, TestbedSpec, DOMAIN, EDGE_IP};

/// Patroni timing of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatroniTiming {
    pub ttl: u32,
    pub loop_wait: u32,
    pub retry_timeout: u32,
}

impl PatroniTiming {
    /// Patroni's documented defaults.
    pub const DEFAULT: PatroniTiming = PatroniTiming {
        ttl: 30,
        loop_wait: 10,
        retry_timeout: 10,
    };
    /// What sipstack recommends for a SIP platform: a lost primary is replaced within
    /// ttl + loop_wait = 12 s, and loop_wait + 2 × retry_timeout = 8 ≤ ttl.
    pub const TUNED: PatroniTiming = PatroniTiming {
        ttl: 10,
        loop_wait: 2,
        retry_timeout: 3,
    };
}

/// The PgCluster of a HA testbed.
#[derive(Debug, Clone)]
pub struct HaSpec {
    pub timing: PatroniTiming,
    /// disabled, enabled, strict
    pub synchronous_mode: &'static str,
    pub pooler: bool,
    pub etcd_members: u32,
}

impl Default for HaSpec {
    fn default() -> Self {
        Self {
            timing: PatroniTiming::TUNED,
            synchronous_mode: "enabled",
            pooler: false,
            etcd_members: 3,
        }
    }
}

/// Free ports for a local cluster: each range's ports free now.
#[derive(Debug, Clone, Copy)]
pub struct HaPorts {
    pub member_base: u16,
    pub rest_base: u16,
    pub etcd_base: u16,
    pub read_only: u16,
    pub pooler: u16,
}

impl HaPorts {
    pub fn free() -> Result<Self> {
        Ok(Self {
            member_base: free_tcp_range(3)?,
            rest_base: free_tcp_range(3)?,
            etcd_base: free_tcp_range(6)?,
            read_only: free_tcp_range(1)?,
            pooler: free_tcp_range(1)?,
        })
    }
}

pub use crate::ports::free_tcp_range;

/// Brings up `spec`'s platform with a three-member PgCluster and waits until every
/// member runs. Ports are chosen free, but another process may still take one before
/// the cluster binds it: then it tries again with new ports (three times at most).
pub async fn up_ha(
    spec: &TestbedSpec,
    ha: &HaSpec,
) -> Result<(crate::testbed::Testbed, ClusterHandle)> {
    let mut last = None;
    for _ in 0..3 {
        let ports = Ports::free()?;
        let hp = HaPorts::free()?;
        match crate::testbed::Testbed::up_yaml(ha_yaml(spec, ports, ha, hp), ports).await {
            Ok(bed) => {
                let cluster = ClusterHandle::new(&bed.state_dir(), hp);
                cluster
                    .wait_for_all_running(Duration::from_secs(90))
                    .await?;
                return Ok((bed, cluster));
            }
            Err(e) if crate::ports::is_port_taken(&e) => {
                eprintln!("a port was taken between choosing and binding it; trying other ports");
                last = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no free ports")))
}

/// The platform file: `spec`'s media pools and edge, and a three-member PgCluster.
pub fn ha_yaml(spec: &TestbedSpec, ports: Ports, ha: &HaSpec, hp: HaPorts) -> String {
    let single = spec.yaml(ports);
    let (_, rest) = single.split_once("---\n").unwrap_or(("", ""));
    let mut y = String::new();
    let t = ha.timing;
    let _ = write!(
        y,
        "apiVersion: sipstack.io/v1alpha1\nkind: PgCluster\nmetadata: {{name: pg}}\nspec:\n  instances: 3\n  port: {}\n  patroni: {{ttl: {}, loopWait: {}, retryTimeout: {}, synchronousMode: {}}}\n  dcs: {{kind: etcd, etcdMembers: {}}}\n  pooler: {{enabled: {}, port: {}, poolMode: transaction}}\n  local: {{memberPort: {}, restApiPort: {}, etcdPort: {}, readOnlyPort: {}}}\n---\n",
        ports.postgres,
        t.ttl,
        t.loop_wait,
        t.retry_timeout,
        ha.synchronous_mode,
        ha.etcd_members,
        ha.pooler,
        hp.pooler,
        hp.member_base,
        hp.rest_base,
        hp.etcd_base,
        hp.read_only
    );
    y.push_str(rest);
    y
}

/// A local cluster's members seen from the outside.
#[derive(Debug, Clone)]
pub struct ClusterHandle {
    pub state_dir: PathBuf,
    pub patroni: PatroniClient,
    pub hp: HaPorts,
}

impl ClusterHandle {
    pub fn new(state_dir: &Path, hp: HaPorts) -> Self {
        let urls = (0..3)
            .map(|n| format!("http://127.0.0.1:{}", hp.rest_base + n))
            .collect();
        let mut patroni = PatroniClient::new(urls);
        if let Ok(password) =
            std::fs::read_to_string(state_dir.join("pg-pg/secrets/patroni-rest.password"))
        {
            patroni = patroni.with_auth(sipstack_patroni::REST_API_USER, password.trim());
        }
        Self {
            state_dir: state_dir.to_path_buf(),
            patroni,
            hp,
        }
    }

    fn member_dir(&self, name: &str) -> Result<PathBuf> {
        let n = member_index(name)?;
        Ok(self.state_dir.join(format!("pg-pg/member-{n}")))
    }

    pub async fn cluster(&self) -> Result<Cluster> {
        Ok(self.patroni.cluster().await?)
    }

    /// The running leader's name.
    pub async fn leader(&self) -> Result<String> {
        let c = self.cluster().await?;
        c.leader()
            .filter(|l| l.is_running())
            .map(|l| l.name.clone())
            .context("no running leader")
    }

    /// Waits until a running leader other than `not` is elected and every other
    /// member named in `followers` runs; returns the leader.
    pub async fn wait_for_leader(&self, not: Option<&str>, limit: Duration) -> Result<String> {
        let cluster = self.patroni.wait_for_leader(not, limit).await?;
        cluster
            .leader()
            .map(|l| l.name.clone())
            .context("no leader")
    }

    /// Waits until all three members run (the leader and two streaming replicas).
    pub async fn wait_for_all_running(&self, limit: Duration) -> Result<Cluster> {
        let start = Instant::now();
        loop {
            if let Ok(c) = self.cluster().await {
                if c.members.len() == 3
                    && c.members.iter().all(|m| m.is_running())
                    && c.leader().is_some()
                {
                    return Ok(c);
                }
                if start.elapsed() > limit {
                    bail!("not every member runs after {limit:?}: {:?}", c.members);
                }
            } else if start.elapsed() > limit {
                bail!("Patroni does not answer after {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// SIGKILL of a member's Patroni and its PostgreSQL together (a crashed host).
    pub fn kill_member(&self, name: &str) -> Result<()> {
        let dir = self.member_dir(name)?;
        let patroni =
            sipstack_local::process::read_pid(&dir.join("patroni.pid")).context("patroni pid")?;
        let postmaster = std::fs::read_to_string(dir.join("data/postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()));
        let _ = kill(Pid::from_raw(patroni), Signal::SIGKILL);
        if let Some(pm) = postmaster {
            // the postmaster's children: a crashed host takes them along
            for child in children_of(pm) {
                let _ = kill(Pid::from_raw(child), Signal::SIGKILL);
            }
            let _ = kill(Pid::from_raw(pm), Signal::SIGKILL);
        }
        Ok(())
    }

    /// SIGKILL of one etcd member.
    pub fn kill_etcd(&self, n: u32) -> Result<()> {
        let pid = sipstack_local::process::read_pid(
            &self.state_dir.join(format!("pg-pg/etcd-{n}/etcd.pid")),
        )
        .context("etcd pid")?;
        kill(Pid::from_raw(pid), Signal::SIGKILL)?;
        Ok(())
    }

    /// The pid of a member's Patroni.
    pub fn patroni_pid(&self, name: &str) -> Result<i32> {
        let dir = self.member_dir(name)?;
        sipstack_local::process::read_pid(&dir.join("patroni.pid")).context("patroni pid")
    }

    /// The pid of a member's postmaster.
    pub fn postmaster_pid(&self, name: &str) -> Option<i32> {
        let dir = self.member_dir(name).ok()?;
        std::fs::read_to_string(dir.join("data/postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
    }

    /// PostgreSQL port of a member.
    pub fn member_port(&self, name: &str) -> Result<u16> {
        Ok(self.hp.member_base + member_index(name)?)
    }
}

fn children_of(pid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .and_then(|(_, rest)| rest.split_whitespace().nth(1).map(str::to_string))
                })
                .and_then(|ppid| ppid.parse::<i32>().ok())
                == Some(pid)
        })
        .collect()
}

/// One acknowledged write: its id, when the commit returned, and which member's
/// port answered.
#[derive(Debug, Clone, Copy)]
pub struct Ack {
    pub id: i64,
    pub at: Instant,
    pub server_port: i32,
}

/// What a writer saw.
#[derive(Debug, Clone, Default)]
pub struct WriterLog {
    pub acks: Vec<Ack>,
    /// Attempts whose outcome is unknown or failed (the id may or may not be in).
    pub failed: Vec<(i64, Instant, String)>,
}

impl WriterLog {
    /// The longest time without an acknowledged write after `since`, up to the first
    /// ack after it: the write gap an event caused.
    pub fn first_ack_after(&self, since: Instant) -> Option<Duration> {
        self.acks
            .iter()
            .find(|a| a.at > since)
            .map(|a| a.at - since)
    }

    /// Time from `since` to the first write acknowledged by a member other than the
    /// one on `old_port`: the outage a lost primary causes. (A commit in flight at
    /// `since` may still be acknowledged by the old primary a moment later; it does
    /// not end the outage.)
    pub fn first_ack_elsewhere(&self, since: Instant, old_port: u16) -> Option<Duration> {
        self.acks
            .iter()
            .find(|a| a.at > since && a.server_port != i32::from(old_port))
            .map(|a| a.at - since)
    }

    /// The longest gap between consecutive acknowledged writes.
    pub fn longest_gap(&self) -> Duration {
        self.acks
            .windows(2)
            .map(|w| w[1].at - w[0].at)
            .max()
            .unwrap_or_default()
    }
}

/// Inserts rows one by one through `url` until stopped, reconnecting after every
/// failure; every acknowledged id is recorded.
pub struct Writer {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<WriterLog>>,
    task: tokio::task::JoinHandle<()>,
}

/// The table the writers fill (created by [`Writer::prepare`]).
pub const PROBE_TABLE: &str = "ha_probe";

impl Writer {
    /// Creates the probe table: no primary key, so a duplicate would show.
    pub async fn prepare(url: &str) -> Result<()> {
        let db = sipstack_db::connect(url, Duration::from_secs(10)).await?;
        db.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {PROBE_TABLE} (id bigint NOT NULL, at timestamptz NOT NULL DEFAULT now(), server_port int)"
        ))
        .await?;
        Ok(())
    }

    /// Starts writing through `url`, `pause` between rows.
    pub fn start(url: &str, pause: Duration) -> Self {
        Self::start_at(url, pause, 1)
    }

    /// Like [`Self::start`], with ids from `first_id` (writers side by side use apart ranges).
    pub fn start_at(url: &str, pause: Duration, first_id: i64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(WriterLog::default()));
        let (s, l, url) = (stop.clone(), log.clone(), url.to_string());
        let task = tokio::spawn(async move {
            let mut next_id: i64 = first_id;
            let mut client: Option<tokio_postgres::Client> = None;
            while !s.load(Ordering::Relaxed) {
                if client.as_ref().is_none_or(|c| c.is_closed()) {
                    match sipstack_db::connect(&url, Duration::from_secs(1)).await {
                        Ok(c) => client = Some(c),
                        Err(_) => {
                            client = None;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    }
                }
                let Some(c) = client.as_ref() else { continue };
                let id = next_id;
                next_id += 1;
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&id];
                let insert = c.query_one(
                    "INSERT INTO ha_probe (id, server_port) VALUES ($1, inet_server_port()) RETURNING server_port",
                    &params,
                );
                match tokio::time::timeout(Duration::from_secs(3), insert).await {
                    Ok(Ok(row)) => {
                        let port: Option<i32> = row.get(0);
                        if let Ok(mut log) = l.lock() {
                            log.acks.push(Ack {
                                id,
                                at: Instant::now(),
                                server_port: port.unwrap_or(0),
                            });
                        }
                    }
                    Ok(Err(e)) => {
                        if let Ok(mut log) = l.lock() {
                            let why = match e.as_db_error() {
                                Some(d) => format!("{}: {}", d.code().code(), d.message()),
                                None => e.to_string(),
                            };
                            log.failed.push((id, Instant::now(), why));
                        }
                        client = None;
                    }
                    Err(_) => {
                        if let Ok(mut log) = l.lock() {
                            log.failed
                                .push((id, Instant::now(), "no answer within 3 s".into()));
                        }
                        client = None;
                    }
                }
                tokio::time::sleep(pause).await;
            }
        });
        Self { stop, log, task }
    }

    /// A copy of what it saw so far.
    pub fn snapshot(&self) -> WriterLog {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Stops and returns what it saw.
    pub async fn finish(self) -> WriterLog {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// What the database holds of a writer's rows, compared with what it acknowledged.
#[derive(Debug, Clone)]
pub struct LossReport {
    pub acknowledged: usize,
    /// Acknowledged ids missing from the table.
    pub lost: Vec<i64>,
    /// Ids present more than once.
    pub duplicated: Vec<i64>,
}

impl LossReport {
    /// Every acknowledged row is there, once.
    pub fn is_clean(&self) -> bool {
        self.lost.is_empty() && self.duplicated.is_empty()
    }
}

/// Reads the probe table through `url` and checks every acknowledged id is there once.
pub async fn check_no_loss(url: &str, log: &WriterLog) -> Result<LossReport> {
    let db = sipstack_db::connect(url, Duration::from_secs(20)).await?;
    let rows = db
        .query(
            &format!("SELECT id, count(*) FROM {PROBE_TABLE} GROUP BY id"),
            &[],
        )
        .await?;
    let present: std::collections::HashMap<i64, i64> =
        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let lost = log
        .acks
        .iter()
        .filter(|a| !present.contains_key(&a.id))
        .map(|a| a.id)
        .collect();
    let mut duplicated: Vec<i64> = present
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(id, _)| *id)
        .collect();
    duplicated.sort_unstable();
    Ok(LossReport {
        acknowledged: log.acks.len(),
        lost,
        duplicated,
    })
}

/// A REGISTER load through the edge: `users` subscribers (`reguserN`, password
/// `pwN`), `rate` registrations per second for `duration`.
pub fn register_load(
    edge: SocketAddr,
    users: u32,
    rate: u32,
    duration: Duration,
) -> Result<SippCommand> {
    let port = free_udp_and_tcp_port()?;
    let mut injection = InjectionFile::sequential();
    for n in 0..users {
        let user = format!("reguser{n}");
        injection = injection.line([
            user.clone(),
            DOMAIN.to_string(),
            InjectionFile::auth_keyword(&user, &format!("pw{n}")),
            format!("sip:{user}@{EDGE_IP}:{port}"),
        ]);
    }
    let calls = u64::from(rate) * duration.as_secs();
    Ok(SippCommand::scenario("bench_register")
        .remote(edge)
        .local(EDGE_IP, port)
        .injection(injection)
        .key("expires", "600")
        .rate(rate)
        .max_calls(calls)
        // a REGISTER the edge cannot answer is retransmitted, then counted failed
        .recv_timeout(Duration::from_secs(4))
        .deadline(duration + Duration::from_secs(30)))
}

/// Adds the REGISTER load's subscribers.
pub async fn add_register_users(db_url: &str, users: u32) -> Result<()> {
    let db = sipstack_db::connect(db_url, Duration::from_secs(10)).await?;
    for n in 0..users {
        sipstack_db::subscriber::add(&db, &format!("reguser{n}"), DOMAIN, &format!("pw{n}"))
            .await?;
    }
    Ok(())
}

/// The share of REGISTERs answered 200, in percent.
pub fn success_rate(out: &SippOutcome) -> f64 {
    let total = out.successful() + out.failed();
    if total == 0 {
        return 0.0;
    }
    100.0 * out.successful() as f64 / total as f64
}

/// A network partition on one host: the processes of the members on each side are
/// put in their own cgroup (v2), and nftables drops the TCP traffic between the
/// sides and from the isolated side to etcd. Undone when dropped.
pub struct Partition {
    table: String,
    groups: Vec<PathBuf>,
}

impl Partition {
    /// Cuts `member` off from etcd and from the other members (and them from it).
    /// Clients that are not members (HAProxy, the test's writers) still reach both sides.
    pub fn isolate(
        cluster: &ClusterHandle,
        member: &str,
        others: &[&str],
        etcd_ports: &[u16],
    ) -> Result<Self> {
        let (mount, nft_prefix) = cgroup2_mount()?;
        let tag = format!("sipstack-partition-{}", std::process::id());
        let table = tag.replace('-', "_");
        let mut partition = Partition {
            table: table.clone(),
            groups: Vec::new(),
        };
        let isolated = mount.join(format!("{tag}-isolated"));
        let majority = mount.join(format!("{tag}-majority"));
        for dir in [&isolated, &majority] {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating cgroup {}", dir.display()))?;
            partition.groups.push(dir.clone());
        }
        let move_member = |name: &str, group: &Path| -> Result<()> {
            let mut pids = vec![cluster.patroni_pid(name)?];
            if let Some(pm) = cluster.postmaster_pid(name) {
                pids.push(pm);
                pids.extend(children_of(pm));
            }
            for pid in pids {
                // a process that just ended cannot move: fine
                let _ = std::fs::write(group.join("cgroup.procs"), pid.to_string());
            }
            Ok(())
        };
        move_member(member, &isolated)?;
        for o in others {
            move_member(o, &majority)?;
        }
        let isolated_ports = [
            cluster.member_port(member)?,
            cluster.hp.rest_base + member_index(member)?,
        ];
        let mut other_ports = Vec::new();
        for o in others {
            other_ports.push(cluster.member_port(o)?);
            other_ports.push(cluster.hp.rest_base + member_index(o)?);
        }
        let set = |ports: &[u16]| {
            ports
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let iso = format!("\"{nft_prefix}{tag}-isolated\"");
        let maj = format!("\"{nft_prefix}{tag}-majority\"");
        let script = format!(
            "add table inet {table}\n\
             add chain inet {table} out {{ type filter hook output priority 0; }}\n\
             add rule inet {table} out socket cgroupv2 level 1 {iso} tcp dport {{ {} }} drop\n\
             add rule inet {table} out socket cgroupv2 level 1 {iso} tcp dport {{ {} }} drop\n\
             add rule inet {table} out socket cgroupv2 level 1 {maj} tcp dport {{ {} }} drop\n",
            set(etcd_ports),
            set(&other_ports),
            set(&isolated_ports),
        );
        let status = std::process::Command::new("nft")
            .arg("-f")
            .arg("-")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write as _;
                if let Some(stdin) = child.stdin.as_mut() {
                    stdin.write_all(script.as_bytes())?;
                }
                child.wait()
            })
            .context("running nft (apt-get install nftables)")?;
        if !status.success() {
            bail!("nft refused the partition rules:\n{script}");
        }
        // The rules match a socket by the cgroup it was created in, so connections
        // opened before the move would go on: end them (their owners reconnect, and
        // the new sockets fall under the rules).
        let all_ports: Vec<String> = etcd_ports
            .iter()
            .chain(&isolated_ports)
            .chain(&other_ports)
            .map(|p| format!("dport = :{p}"))
            .collect();
        let filter = format!("( {} )", all_ports.join(" or "));
        let killed = std::process::Command::new("ss")
            .args(["-K", "-tn", "state", "established", &filter])
            .stdout(std::process::Stdio::null())
            .status()
            .context("running ss (iproute2)")?;
        if !killed.success() {
            bail!("ss -K could not end the connections that cross the partition");
        }
        Ok(partition)
    }

    /// Removes the rules; the processes stay in their cgroups (which no longer matter).
    pub fn heal(&mut self) {
        if !self.table.is_empty() {
            let _ = std::process::Command::new("nft")
                .args(["delete", "table", "inet", &self.table])
                .status();
            self.table.clear();
        }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.heal();
        for g in &self.groups {
            // a cgroup with processes cannot be removed; move them to the root first
            if let Ok(procs) = std::fs::read_to_string(g.join("cgroup.procs")) {
                if let Some(root) = g.parent() {
                    for pid in procs.lines() {
                        let _ = std::fs::write(root.join("cgroup.procs"), pid);
                    }
                }
            }
            let _ = std::fs::remove_dir(g);
        }
    }
}

fn member_index(name: &str) -> Result<u16> {
    name.rsplit('-')
        .next()
        .and_then(|n| n.parse::<u16>().ok())
        .context("member name")
}

/// Where cgroup v2 is mounted, and the path prefix nft needs for it (nft resolves
/// cgroup paths under /sys/fs/cgroup).
fn cgroup2_mount() -> Result<(PathBuf, String)> {
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    let mount = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
        })
        .next()
        .context("cgroup v2 is not mounted")?;
    let prefix = match mount.strip_prefix("/sys/fs/cgroup") {
        Ok(rel) if rel.as_os_str().is_empty() => String::new(),
        Ok(rel) => format!("{}/", rel.display()),
        Err(_) => bail!(
            "cgroup v2 is mounted at {}, not under /sys/fs/cgroup where nft looks",
            mount.display()
        ),
    };
    Ok((mount, prefix))
}
