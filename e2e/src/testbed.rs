//! A whole platform for one test: a platform file written for free ports, brought
//! up by the local driver in a temporary state directory, and torn down when the
//! [`Testbed`] is dropped (even when the test fails).
//!
//! Addresses: the edge and the test's user agents use 127.0.0.1; media stand-ins
//! use 127.0.0.2 and up. The edge trusts media nodes by address, port and
//! transport; a user agent still never shares an address with a media node.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use sipstack_edgerpc::{EdgeRpc, LiveDestination, Reload};
use sipstack_local::state::LocalState;
use sipstack_local::UpOptions;
use tempfile::TempDir;
use tokio_postgres::Client;

use crate::sipp::{free_udp_port_on, SippCommand, SippProcess};

/// The SIP domain of every testbed.
pub const DOMAIN: &str = "example.com";
/// Address of the edge and of the test's user agents.
pub const EDGE_IP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// The address of the `n`-th media stand-in host (127.0.0.2, 127.0.0.3, ...).
pub fn media_ip(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + n))
}

/// The first of `count` consecutive loopback addresses where nothing listens on
/// the media nodes' SIP port (5080) or event socket port (8021): 127.2xx.y.1, picked
/// at random so that tests running at once do not meet.
pub fn free_node_addresses(count: i32) -> Result<IpAddr> {
    let seed = std::process::id() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
    for attempt in 0..64u64 {
        let x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(attempt * 7919);
        let first = Ipv4Addr::new(127, 200 + (x >> 40) as u8 % 50, (x >> 20) as u8, 1);
        let free = (0..count.max(1) as u32).all(|i| {
            let ip = Ipv4Addr::from(u32::from(first) + i);
            UdpSocket::bind((ip, 5080)).is_ok() && TcpListener::bind((ip, 8021)).is_ok()
        });
        if free {
            return Ok(IpAddr::V4(first));
        }
    }
    anyhow::bail!("no free loopback addresses for {count} media node(s)")
}

/// A media pool of the testbed's platform.
#[derive(Debug, Clone)]
pub struct PoolSpec {
    pub name: String,
    pub set_id: i32,
    /// roundRobin, callIdHash, weighted, activeFailover
    pub algorithm: String,
    /// (uri, weight, priority)
    pub members: Vec<(String, u32, i32)>,
    /// FreeSWITCH nodes the local driver runs (see [`PoolSpec::freeswitch`]).
    pub replicas: i32,
    /// spec.local.firstAddress of the replicas.
    pub first_address: Option<IpAddr>,
    /// CDRs to the testbed's database.
    pub cdr: bool,
}

impl PoolSpec {
    pub fn new(name: &str, set_id: i32, algorithm: &str) -> Self {
        Self {
            name: name.into(),
            set_id,
            algorithm: algorithm.into(),
            members: Vec::new(),
            replicas: 0,
            first_address: None,
            cdr: false,
        }
    }

    /// `replicas` FreeSWITCH nodes with CDRs, on loopback addresses no other test
    /// uses (see [`free_node_addresses`]).
    pub fn freeswitch(mut self, replicas: i32) -> Result<Self> {
        self.replicas = replicas;
        self.first_address = Some(free_node_addresses(replicas)?);
        self.cdr = true;
        Ok(self)
    }
    pub fn member(mut self, addr: SocketAddr, weight: u32, priority: i32) -> Self {
        self.members.push((format!("sip:{addr}"), weight, priority));
        self
    }
}

/// The platform a test wants; [`TestbedSpec::yaml`] turns it into a platform file.
#[derive(Debug, Clone)]
pub struct TestbedSpec {
    pub pools: Vec<PoolSpec>,
    pub default_pool: Option<String>,
    /// `routing.voicemailMediaPool` and `voicemailAfterSeconds`.
    pub voicemail: Option<(String, u32)>,
    pub probe_interval_seconds: u32,
    pub inactive_threshold: u32,
    pub failover_timeout_ms: u32,
    pub flush_interval_seconds: u32,
    /// None: flood protection off; Some(n): n requests per 2 s window per source.
    pub flood_requests_per_window: Option<u32>,
    pub udp_workers: u32,
    /// Extra YAML lines appended to the SipEdge spec (two-space indented keys).
    pub extra_edge_spec: String,
}

impl Default for TestbedSpec {
    fn default() -> Self {
        Self {
            pools: Vec::new(),
            default_pool: None,
            voicemail: None,
            probe_interval_seconds: 1,
            inactive_threshold: 2,
            failover_timeout_ms: 1000,
            flush_interval_seconds: 1,
            flood_requests_per_window: None,
            udp_workers: 4,
            extra_edge_spec: String::new(),
        }
    }
}

/// Ports chosen for one testbed.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub postgres: u16,
    pub sip: u16,
    pub rpc: u16,
}

impl Ports {
    pub fn free() -> Result<Self> {
        Ok(Self {
            postgres: free_tcp_port()?,
            sip: free_udp_and_tcp_port()?,
            rpc: free_tcp_port()?,
        })
    }
}

impl TestbedSpec {
    pub fn yaml(&self, ports: Ports) -> String {
        let mut y = String::new();
        let _ = write!(
            y,
            "apiVersion: sipstack.io/v1alpha1\nkind: PgCluster\nmetadata: {{name: pg}}\nspec: {{instances: 1, port: {}}}\n",
            ports.postgres
        );
        for p in &self.pools {
            let _ = write!(
                y,
                "---\napiVersion: sipstack.io/v1alpha1\nkind: MediaPool\nmetadata: {{name: {}}}\nspec:\n  setId: {}\n  algorithm: {}\n  replicas: {}\n",
                p.name, p.set_id, p.algorithm, p.replicas
            );
            if p.replicas > 0 {
                // scale-in in a test waits for calls this long at most
                y.push_str("  drainSeconds: 30\n");
            }
            if p.cdr {
                y.push_str("  cdr: {database: {pgCluster: pg}}\n");
            } else {
                y.push_str("  cdr: {enabled: false}\n");
            }
            if let Some(ip) = p.first_address {
                let _ = writeln!(y, "  local: {{firstAddress: {ip}}}");
            }
            y.push_str("  members:\n");
            for (uri, weight, priority) in &p.members {
                let _ = writeln!(
                    y,
                    "    - {{uri: \"{uri}\", weight: {weight}, priority: {priority}}}"
                );
            }
            if p.members.is_empty() {
                y.truncate(y.len() - "  members:\n".len());
            }
        }
        let pools: Vec<&str> = self.pools.iter().map(|p| p.name.as_str()).collect();
        let _ = write!(
            y,
            "---\napiVersion: sipstack.io/v1alpha1\nkind: SipEdge\nmetadata: {{name: edge}}\nspec:\n  domains: [{DOMAIN}]\n  database: {{pgCluster: pg}}\n  mediaPools: [{}]\n",
            pools.join(", ")
        );
        let mut routing = Vec::new();
        if let Some(d) = &self.default_pool {
            routing.push(format!("defaultMediaPool: {d}"));
        }
        if let Some((pool, after)) = &self.voicemail {
            routing.push(format!(
                "voicemailMediaPool: {pool}, voicemailAfterSeconds: {after}"
            ));
        }
        if !routing.is_empty() {
            let _ = writeln!(y, "  routing: {{{}}}", routing.join(", "));
        }
        let _ = write!(
            y,
            "  listen:\n    - {{transport: udp, address: 127.0.0.1, port: {sip}}}\n    - {{transport: tcp, address: 127.0.0.1, port: {sip}}}\n  rpc: {{address: 127.0.0.1, port: {rpc}}}\n  registrar: {{flushIntervalSeconds: {flush}, minExpires: 10}}\n  dispatcher:\n    failoverTimeoutMs: {fto}\n    probing: {{intervalSeconds: {pi}, inactiveThreshold: {it}}}\n  process: {{udpWorkers: {uw}, tcpWorkers: 2, sharedMemoryMb: 256}}\n",
            sip = ports.sip,
            rpc = ports.rpc,
            flush = self.flush_interval_seconds,
            fto = self.failover_timeout_ms,
            pi = self.probe_interval_seconds,
            it = self.inactive_threshold,
            uw = self.udp_workers,
        );
        match self.flood_requests_per_window {
            Some(n) => {
                let _ = writeln!(
                    y,
                    "  floodProtection: {{enabled: true, requestsPerWindow: {n}}}"
                );
            }
            None => {
                let _ = writeln!(y, "  floodProtection: {{enabled: false}}");
            }
        }
        y.push_str(&self.extra_edge_spec);
        y
    }
}

/// A running platform.
pub struct Testbed {
    dir: Option<TempDir>,
    pub ports: Ports,
    pub yaml: String,
    pub state: LocalState,
    pub rpc: EdgeRpc,
    pub db_url: String,
}

impl Testbed {
    /// Brings `spec` up. The media members' stand-ins are the test's business.
    /// Ports found free can be taken before Kamailio or PostgreSQL binds them
    /// (another test's outgoing connection gets the same ephemeral port), so a
    /// platform that could not bind is brought up again on other ports.
    pub async fn up(spec: &TestbedSpec) -> Result<Self> {
        let mut attempt = 1;
        loop {
            let ports = Ports::free()?;
            match Self::up_yaml(spec.yaml(ports), ports).await {
                Err(e) if attempt < 3 && crate::ports::is_port_taken(&e) => {
                    tracing::warn!("testbed ports taken meanwhile ({e:#}); trying others");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Brings up a platform file written for `ports` (e.g. `TestbedSpec::yaml` edited).
    pub async fn up_yaml(yaml: String, ports: Ports) -> Result<Self> {
        let dir = state_dir("sipstack-test-")?;
        let options = UpOptions {
            state_dir: dir.path().to_path_buf(),
            standins: false,
        };
        let (state, _report) = match sipstack_local::up(&yaml, &options).await {
            Ok(ok) => ok,
            Err(e) => {
                // take down what did start before reporting
                let _ = sipstack_local::down(dir.path()).await;
                return Err(anyhow::Error::new(e).context(format!("local up of:\n{yaml}")));
            }
        };
        let rpc = state.edges[0].rpc()?;
        let db_url = state.db_url()?;
        Ok(Self {
            dir: Some(dir),
            ports,
            yaml,
            state,
            rpc,
            db_url,
        })
    }

    pub fn state_dir(&self) -> PathBuf {
        self.state.state_dir.clone()
    }

    /// The token the edges' RPC requires (`SIPSTACK_RPC_TOKEN` for sipctl).
    pub fn rpc_token(&self) -> Result<String> {
        let path = sipstack_local::state::rpc_token_file(&self.state.state_dir);
        Ok(std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .trim()
            .to_string())
    }

    /// The edge's SIP address.
    pub fn edge(&self) -> SocketAddr {
        SocketAddr::new(EDGE_IP, self.ports.sip)
    }

    pub async fn db(&self) -> Result<Client> {
        Ok(sipstack_db::connect(&self.db_url, Duration::from_secs(10)).await?)
    }

    pub async fn add_subscriber(&self, user: &str, password: &str) -> Result<()> {
        let db = self.db().await?;
        sipstack_db::subscriber::add(&db, user, DOMAIN, password).await?;
        Ok(())
    }

    /// Stops Kamailio and brings the platform up again (it restarts nothing else).
    pub async fn restart_edge(&self) -> Result<()> {
        let kam = sipstack_local::kamailio::LocalKamailio::new(
            &self.state.state_dir,
            &self.state.edges[0].name,
        );
        kam.stop().await?;
        self.up_again().await?;
        Ok(())
    }

    /// Runs `up` of the same platform file again: starts whatever was stopped (a
    /// killed database member, an edge) and applies nothing else. Returns its report.
    pub async fn up_again(&self) -> Result<sipstack_local::Report> {
        let options = UpOptions {
            state_dir: self.state.state_dir.clone(),
            standins: false,
        };
        let (_, report) = sipstack_local::up(&self.yaml, &options).await?;
        Ok(report)
    }

    fn postgres(&self) -> sipstack_local::postgres::LocalPostgres {
        sipstack_local::postgres::LocalPostgres::new(
            self.state.state_dir.join("pg-pg"),
            self.ports.postgres,
            15,
        )
    }

    /// Stops PostgreSQL (a database outage); Kamailio keeps running.
    pub async fn stop_postgres(&self) -> Result<()> {
        self.postgres().stop().await?;
        Ok(())
    }

    pub async fn start_postgres(&self) -> Result<()> {
        self.postgres().start().await?;
        Ok(())
    }

    /// Reloads the routing rules, waiting out Kamailio's reload rate limit.
    pub async fn reload_routes(&self) -> Result<()> {
        Ok(self
            .rpc
            .reload(Reload::Routes, Duration::from_secs(10))
            .await?)
    }

    /// Reloads the trunks (addresses, gateways, credentials) and the numbers.
    pub async fn reload_trunks(&self) -> Result<()> {
        Ok(self
            .rpc
            .reload(Reload::Trunks, Duration::from_secs(10))
            .await?)
    }

    /// The key the platform encrypts trunk passwords with.
    pub fn trunk_key(&self) -> Result<sipstack_db::trunk::TrunkKey> {
        let path = sipstack_local::state::trunk_key_file(&self.state_dir());
        let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
        Ok(sipstack_db::trunk::TrunkKey::from_base64(text.trim())?)
    }

    pub async fn reload_dispatcher(&self) -> Result<()> {
        Ok(self
            .rpc
            .reload(Reload::Dispatcher, Duration::from_secs(10))
            .await?)
    }

    pub async fn destinations(&self) -> Result<Vec<LiveDestination>> {
        Ok(self.rpc.dispatcher_list().await?)
    }

    /// The live state of one dispatcher member (by URI, e.g. `sip:127.0.0.2:5080`).
    pub async fn destination(&self, uri: &str) -> Result<LiveDestination> {
        self.destinations()
            .await?
            .into_iter()
            .find(|d| d.uri == uri)
            .with_context(|| format!("{uri} is not in the edge's dispatcher list"))
    }

    /// Waits until `check` holds for the edge's dispatcher state, up to `limit`;
    /// returns how long it took.
    pub async fn wait_for_destinations(
        &self,
        limit: Duration,
        check: impl Fn(&[LiveDestination]) -> bool,
    ) -> Result<Duration> {
        let start = tokio::time::Instant::now();
        loop {
            let list = self.destinations().await?;
            if check(&list) {
                return Ok(start.elapsed());
            }
            if start.elapsed() > limit {
                anyhow::bail!(
                    "dispatcher state did not reach the expected state within {limit:?}: {list:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last lines of Kamailio's log, for assertion messages.
    pub fn edge_log(&self, lines: usize) -> String {
        sipstack_local::process::log_tail(&self.state.edges[0].log, lines)
    }

    /// Stops everything now (instead of at drop).
    pub async fn down(mut self) -> Result<()> {
        if let Some(dir) = self.dir.take() {
            sipstack_local::down(dir.path()).await?;
        }
        Ok(())
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            tear_down(dir);
        }
    }
}

/// A temporary state directory every user may enter: PostgreSQL runs as the
/// `postgres` user when the tests run as root, and must reach its data under it.
pub fn state_dir(prefix: &str) -> Result<TempDir> {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .context("temporary state dir")?;
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    Ok(dir)
}

/// Stops the local platform of `dir` and removes the directory. Drop may run inside
/// a test's runtime, so the teardown runs on a thread of its own.
pub fn tear_down(dir: TempDir) {
    let path = dir.path().to_path_buf();
    let handle = std::thread::spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            if let Err(e) = rt.block_on(sipstack_local::down(&path)) {
                eprintln!("teardown of {}: {e}", path.display());
            }
        }
    });
    let _ = handle.join();
    drop(dir);
}

/// Every table of the database with a digest of its whole content: proves that
/// nothing was dropped, added or changed.
pub async fn database_snapshot(db: &Client) -> Result<Vec<(String, String)>> {
    let statements = db
        .query(
            "SELECT tablename::text,
                    format('SELECT md5(coalesce(string_agg(t::text, E''\\n'' ORDER BY t::text), '''')) FROM %I t', tablename)
             FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename",
            &[],
        )
        .await?;
    let mut snapshot = Vec::new();
    for row in statements {
        let (table, sql): (String, String) = (row.get(0), row.get(1));
        let digest: String = db.query_one(sql.as_str(), &[]).await?.get(0);
        snapshot.push((table, digest));
    }
    Ok(snapshot)
}

/// One call from subscriber `user` (digest auth) to `number`; `answered_by` tells
/// which media node took it.
pub async fn call_number(
    edge: SocketAddr,
    user: &str,
    password: &str,
    number: &str,
) -> Result<crate::sipp::SippOutcome> {
    SippCommand::scenario("uac_call")
        .remote(edge)
        .service(number)
        .injection(crate::sipp::InjectionFile::users(&[(
            user, DOMAIN, password,
        )]))
        .max_calls(1)
        .deadline(Duration::from_secs(20))
        .run_async()
        .await
}

/// The media node (host:port) that answered the first call of a `uac_call` run.
pub fn answered_by(out: &crate::sipp::SippOutcome) -> Option<String> {
    out.lines("ANSWERED")
        .next()
        .and_then(|l| l.get("media"))
        .map(str::to_string)
}

/// A media stand-in on `media_ip(n)` at a free port.
pub fn standin(n: u8) -> Result<(SocketAddr, SippProcess)> {
    let ip = media_ip(n);
    let addr = SocketAddr::new(ip, free_udp_port_on(ip)?);
    Ok((addr, standin_on(addr)?))
}

/// A media stand-in on a given address, e.g. one that comes back on the ip:port of
/// a stand-in that was killed (the dispatcher knows members by their URI).
pub fn standin_on(addr: SocketAddr) -> Result<SippProcess> {
    SippCommand::media_standin(addr.ip(), addr.port())
        .deadline(Duration::from_secs(600))
        .spawn()
}

pub use crate::ports::{free_tcp_port, free_udp_and_tcp_port};

/// Subscribers for SIPp's injection file: (user, domain, password).
pub fn users<'a>(list: &'a [(&'a str, &'a str)]) -> Vec<(&'a str, &'a str, &'a str)> {
    list.iter().map(|(u, p)| (*u, DOMAIN, *p)).collect()
}

/// The SIPp run that registers `user` from 127.0.0.1:`port` (its phone's address)
/// for 600 s; callers add keys or change the scenario before running it.
pub fn register_command(edge: SocketAddr, user: &str, password: &str, port: u16) -> SippCommand {
    SippCommand::scenario("register")
        .remote(edge)
        .local(EDGE_IP, port)
        .injection(crate::sipp::InjectionFile::users(&[(
            user, DOMAIN, password,
        )]))
        .key("expires", "600")
        .max_calls(1)
        .deadline(Duration::from_secs(15))
}

/// [`register_command`] for a phone that puts `contact` (host[:port]) in its
/// Contact instead of its own address (one behind NAT, or an attacker's choice).
pub fn register_with_contact(
    edge: SocketAddr,
    user: &str,
    password: &str,
    port: u16,
    contact: &str,
) -> SippCommand {
    register_command(edge, user, password, port)
        .scenario_name("register_behind_nat")
        .key("private_contact", contact)
}

/// Registers `user`'s phone at 127.0.0.1:`port`; fails unless the edge answered 200.
pub async fn register_phone(edge: SocketAddr, user: &str, password: &str, port: u16) -> Result<()> {
    register_command(edge, user, password, port)
        .run_async()
        .await?
        .ensure_all_succeeded(1)
}

/// An address for a test that plays a media node calling out: on `media_ip(n)`
/// at a free port. Make it a member of a pool (the edge trusts members by address,
/// port and transport), e.g. of a pool without routes of its own.
pub fn media_caller(n: u8) -> Result<SocketAddr> {
    let ip = media_ip(n);
    Ok(SocketAddr::new(ip, free_udp_port_on(ip)?))
}

/// `calls` calls from the media node at `member` (trusted: no challenge) to `user`.
pub async fn call_from_media(
    edge: SocketAddr,
    member: SocketAddr,
    user: &str,
    calls: u64,
) -> Result<crate::sipp::SippOutcome> {
    SippCommand::scenario("uac_trusted")
        .remote(edge)
        .local(member.ip(), member.port())
        .service(user)
        .injection(crate::sipp::InjectionFile::sequential().line(["ivr", DOMAIN]))
        .max_calls(calls)
        .deadline(Duration::from_secs(20))
        .run_async()
        .await
}

/// A registered user's phone answering calls at 127.0.0.1:`port`.
pub fn phone(port: u16) -> Result<SippProcess> {
    SippCommand::scenario("uas_user")
        .local(EDGE_IP, port)
        .deadline(Duration::from_secs(60))
        .spawn()
}

/// The secrets of a local platform (every file under a `secrets` directory of
/// `state_dir`; of a URL, its password) that appear in some process's command
/// line, which every user of the host can read in /proc. Returns "FILE in PID's
/// command line" for each; empty when none leaks.
pub fn secrets_on_command_lines(state_dir: &Path) -> Result<Vec<String>> {
    fn secret_files(dir: &Path, inside: bool, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let is_secrets = e.file_name() == "secrets";
            if path.is_dir() {
                secret_files(&path, inside || is_secrets, out);
            } else if inside {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    secret_files(state_dir, false, &mut files);
    let mut secrets = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        let text = text.trim();
        // postgres://USER:PASSWORD@HOST... → PASSWORD
        let value = match text.split_once("://") {
            Some((_, rest)) => rest
                .split_once('@')
                .and_then(|(auth, _)| auth.split_once(':'))
                .map(|(_, pw)| pw.to_string())
                .unwrap_or_default(),
            None => text.to_string(),
        };
        if value.len() >= 8 && !value.contains('\n') {
            secrets.push((f, value));
        }
    }
    anyhow::ensure!(
        !secrets.is_empty(),
        "no secrets found under {}",
        state_dir.display()
    );
    let mut leaks = Vec::new();
    for proc_dir in std::fs::read_dir("/proc")?.flatten() {
        let Ok(cmdline) = std::fs::read(proc_dir.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        for (file, value) in &secrets {
            if cmdline.contains(value.as_str()) {
                leaks.push(format!(
                    "{} in the command line of {}: {}",
                    file.display(),
                    proc_dir.file_name().to_string_lossy(),
                    cmdline.chars().take(120).collect::<String>()
                ));
            }
        }
    }
    Ok(leaks)
}
