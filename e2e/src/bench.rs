//! Building blocks of the `edge-bench` benchmark (see `src/bin/edge-bench.rs`):
//! our platform brought up for load, Debian's stock kamailio.cfg run against the
//! same PostgreSQL, subscribers in bulk, and SIPp load steps whose offered rate
//! goes up until failures or retransmissions appear.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sipstack_local::kamailio::LocalKamailio;
use sipstack_local::state::LocalState;
use sipstack_local::UpOptions;
use tempfile::TempDir;
use tokio_postgres::Client;

use crate::sipp::{udp_port_bound, InjectionFile, SippCommand, SippExit, SippOutcome};
use crate::testbed::{free_udp_and_tcp_port, Ports, TestbedSpec, DOMAIN};

/// Where the load generator (SIPp's UAC) sends from. Not 127.0.0.1: that is one
/// of the edge's own addresses, and the flood protection (pike) exempts
/// `src_ip == myself`; from here every request goes through pike. Not a media
/// stand-in address either (127.0.0.2 and up): those are trusted peers.
pub const LOAD_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 100));

/// Debian's stock configuration.
pub const STOCK_CONFIG: &str = "/etc/kamailio/kamailio.cfg";

/// Subscribers are `bench1` … `benchN` with password `pw1` … `pwN`.
pub fn bench_user(i: u32) -> (String, String) {
    (format!("bench{i}"), format!("pw{i}"))
}

/// The two callees of the call benchmark. With our config any user reaches the
/// default media pool; with the stock config they are registered users whose
/// contacts are the two media stand-ins.
pub const CALLEES: [&str; 2] = ["callee0", "callee1"];
/// The callees' (unused by ours) password.
pub const CALLEE_PASSWORD: &str = "callee-pw";

// ---------------------------------------------------------------------------
// processes to kill on Ctrl-C

fn sipp_registry() -> &'static Mutex<HashSet<u32>> {
    static RUNNING: OnceLock<Mutex<HashSet<u32>>> = OnceLock::new();
    RUNNING.get_or_init(|| Mutex::new(HashSet::new()))
}

/// Kills the load-generating SIPp processes still running (for Ctrl-C: a
/// blocking SIPp run cannot be cancelled otherwise).
pub fn kill_running_sipp() {
    let pids: Vec<u32> = sipp_registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain()
        .collect();
    for pid in pids {
        if let Ok(pid) = i32::try_from(pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Runs one SIPp command to its end on a blocking thread, registered for
/// [`kill_running_sipp`] while it runs.
pub async fn run_sipp(cmd: SippCommand) -> Result<SippOutcome> {
    Ok(run_sipp_measured(cmd).await?.0)
}

/// [`run_sipp`], also returning the CPU time SIPp used (sampled every 20 ms
/// while it runs, so the last few milliseconds are missing).
pub async fn run_sipp_measured(cmd: SippCommand) -> Result<(SippOutcome, Duration)> {
    let process = cmd.spawn()?;
    let pid = process.pid();
    sipp_registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(pid);
    let used = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let used = std::sync::Arc::clone(&used);
        tokio::spawn(async move {
            let pid = pid as i32;
            while let Some(cpu) = process_cpu(pid) {
                used.store(cpu.as_nanos() as u64, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let outcome = tokio::task::spawn_blocking(move || process.wait())
        .await
        .context("sipp runner thread");
    sampler.abort();
    sipp_registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&pid);
    let cpu = Duration::from_nanos(used.load(std::sync::atomic::Ordering::Relaxed));
    Ok((outcome??, cpu))
}

// ---------------------------------------------------------------------------
// our platform

/// Our platform (PostgreSQL, schema, media pool, rendered Kamailio) in a
/// temporary state directory, like [`crate::testbed::Testbed`] but with the
/// shared memory size chosen here; stopped when dropped.
pub struct BenchPlatform {
    dir: Option<TempDir>,
    pub ports: Ports,
    pub yaml: String,
    pub state: LocalState,
    pub db_url: String,
}

impl BenchPlatform {
    /// Brings `spec` up with `sharedMemoryMb: shared_memory_mb` and, when the
    /// spec has flood protection on, `windowSeconds: flood_window_seconds`.
    pub async fn up(
        spec: &TestbedSpec,
        shared_memory_mb: u32,
        flood_window_seconds: u32,
    ) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("sipstack-bench-")
            .tempdir()
            .context("temporary state dir")?;
        // PostgreSQL runs as the postgres user when we run as root.
        fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        let ports = Ports::free()?;
        let yaml = spec.yaml(ports);
        let shm_line = "sharedMemoryMb: 256";
        if !yaml.contains(shm_line) {
            bail!("the testbed platform file no longer says `{shm_line}`; update edge-bench");
        }
        let mut yaml = yaml.replace(shm_line, &format!("sharedMemoryMb: {shared_memory_mb}"));
        if let Some(n) = spec.flood_requests_per_window {
            let flood_line = format!("floodProtection: {{enabled: true, requestsPerWindow: {n}}}");
            if !yaml.contains(&flood_line) {
                bail!("the testbed platform file no longer says `{flood_line}`; update edge-bench");
            }
            yaml = yaml.replace(
                &flood_line,
                &format!(
                    "floodProtection: {{enabled: true, requestsPerWindow: {n}, windowSeconds: {flood_window_seconds}}}"
                ),
            );
        }
        let options = UpOptions {
            state_dir: dir.path().to_path_buf(),
            standins: false,
        };
        let (state, _report) = match sipstack_local::up(&yaml, &options).await {
            Ok(ok) => ok,
            Err(e) => {
                let _ = sipstack_local::down(dir.path()).await;
                return Err(anyhow::Error::new(e).context(format!("local up of:\n{yaml}")));
            }
        };
        let db_url = state.db_url()?;
        Ok(Self {
            dir: Some(dir),
            ports,
            yaml,
            state,
            db_url,
        })
    }

    pub fn edge(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.ports.sip)
    }

    fn kamailio(&self) -> LocalKamailio {
        LocalKamailio::new(&self.state.state_dir, &self.state.edges[0].name)
    }

    /// Pid of our running Kamailio (its main process).
    pub fn edge_pid(&self) -> Option<i32> {
        self.kamailio().running_pid()
    }

    pub fn edge_config(&self) -> PathBuf {
        self.state.edges[0].config.clone()
    }

    pub fn edge_log(&self) -> PathBuf {
        self.state.edges[0].log.clone()
    }

    /// Stops our Kamailio only (PostgreSQL keeps running for the stock one).
    pub async fn stop_edge(&self) -> Result<()> {
        self.kamailio().stop().await?;
        Ok(())
    }

    /// Starts our Kamailio again after [`stop_edge`](Self::stop_edge) (the
    /// local driver starts what is not running).
    pub async fn start_edge(&self) -> Result<()> {
        let options = UpOptions {
            state_dir: self.state.state_dir.clone(),
            standins: false,
        };
        sipstack_local::up(&self.yaml, &options)
            .await
            .context("starting our edge again")?;
        Ok(())
    }

    pub async fn db(&self) -> Result<Client> {
        Ok(sipstack_db::connect(&self.db_url, Duration::from_secs(10)).await?)
    }

    pub async fn down(mut self) -> Result<()> {
        if let Some(dir) = self.dir.take() {
            sipstack_local::down(dir.path()).await?;
        }
        Ok(())
    }
}

impl Drop for BenchPlatform {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            crate::testbed::tear_down(dir);
        }
    }
}

// ---------------------------------------------------------------------------
// database

/// Inserts subscribers `bench1..=benchN` and the callees, each with ha1/ha1b
/// (what our config reads) and the plaintext password (what the stock config
/// reads) in the same row. Returns how many rows the table holds.
pub async fn seed_subscribers(db: &Client, users: u32) -> Result<i64> {
    db.execute(
        "INSERT INTO subscriber (username, domain, password, ha1, ha1b)
         SELECT 'bench' || i, $2::text, 'pw' || i,
                md5('bench' || i || ':' || $2 || ':pw' || i),
                md5('bench' || i || '@' || $2 || ':' || $2 || ':pw' || i)
         FROM generate_series(1, $1::int) AS i
         ON CONFLICT (username, domain) DO UPDATE
             SET password = EXCLUDED.password, ha1 = EXCLUDED.ha1, ha1b = EXCLUDED.ha1b",
        &[&(users as i32), &DOMAIN],
    )
    .await
    .context("inserting the bench subscribers")?;
    for callee in CALLEES {
        db.execute(
            "INSERT INTO subscriber (username, domain, password, ha1, ha1b) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (username, domain) DO UPDATE
                 SET password = EXCLUDED.password, ha1 = EXCLUDED.ha1, ha1b = EXCLUDED.ha1b",
            &[
                &callee,
                &DOMAIN,
                &CALLEE_PASSWORD,
                &sipstack_db::subscriber::ha1(callee, DOMAIN, CALLEE_PASSWORD),
                &sipstack_db::subscriber::ha1b(callee, DOMAIN, DOMAIN, CALLEE_PASSWORD),
            ],
        )
        .await
        .context("inserting the callees")?;
    }
    let row = db.query_one("SELECT count(*) FROM subscriber", &[]).await?;
    Ok(row.get(0))
}

/// Empties `location` and vacuums the tables the configs use (between the two
/// configs, so that both start alike and neither meets autovacuum cleaning up
/// after the other).
pub async fn clear_location(db: &Client) -> Result<()> {
    db.batch_execute("TRUNCATE location; TRUNCATE location_attrs")
        .await
        .context("emptying location")?;
    vacuum(db).await
}

/// `VACUUM (ANALYZE)` of subscriber, location and location_attrs (one statement
/// each: VACUUM does not run inside a transaction block).
pub async fn vacuum(db: &Client) -> Result<()> {
    for table in ["subscriber", "location", "location_attrs"] {
        db.batch_execute(&format!("VACUUM (ANALYZE) {table}"))
            .await
            .with_context(|| format!("vacuuming {table}"))?;
    }
    Ok(())
}

pub async fn location_rows(db: &Client) -> Result<i64> {
    Ok(db
        .query_one("SELECT count(*) FROM location", &[])
        .await?
        .get(0))
}

// ---------------------------------------------------------------------------
// the stock config

/// Debian's stock kamailio.cfg as the issue asks for it: WITH_MYSQL, WITH_AUTH and
/// WITH_USRLOCDB defined, db_mysql swapped for db_postgres, DBURL pointing at
/// our database. Besides that only what running it next to ours needs: its
/// listen socket, the SIP domain as an alias (`uri==myself` for REGISTER,
/// `from_uri==myself` for calls), the number of UDP workers, and its control
/// sockets (ctl, jsonrpcs FIFO) in its own directory instead of /run/kamailio.
pub fn stock_config(
    stock: &str,
    db_url: &str,
    listen: SocketAddr,
    children: u32,
    runtime_dir: &Path,
) -> Result<String> {
    if db_url.contains(['"', '\n']) {
        bail!("the database URL cannot be written into a #!define");
    }
    let mut text = String::new();
    let (first, rest) = stock
        .split_once('\n')
        .ok_or_else(|| anyhow!("{STOCK_CONFIG} is empty"))?;
    text.push_str(first);
    text.push_str(&format!(
        "\n# --- edge-bench: the stock config with these switches and these changes:\n\
         #   db_mysql -> db_postgres, DBURL, listen, alias, children, ctl/jsonrpcs sockets\n\
         #!define WITH_MYSQL\n#!define WITH_AUTH\n#!define WITH_USRLOCDB\n#!define DBURL \"{db_url}\"\n\
         # --- end of edge-bench changes\n"
    ));
    text.push_str(rest);
    let dir = runtime_dir.display();
    let replacements = [
        (
            "loadmodule \"db_mysql.so\"",
            "loadmodule \"db_postgres.so\"".to_string(),
        ),
        ("\nchildren=8\n", format!("\nchildren={children}\n")),
        (
            "# listen=udp:10.0.0.10:5060",
            format!("listen=udp:{listen}"),
        ),
        (
            "# alias=\"sip.mydomain.com\"",
            format!("alias=\"{DOMAIN}\""),
        ),
        (
            "####### Routing Logic ########",
            format!(
                "# edge-bench: control sockets of this instance\n\
                 modparam(\"ctl\", \"binrpc\", \"unix:{dir}/kamailio_ctl\")\n\
                 modparam(\"jsonrpcs\", \"fifo_name\", \"{dir}/kamailio_rpc.fifo\")\n\
                 modparam(\"jsonrpcs\", \"dgram_socket\", \"{dir}/kamailio_rpc.sock\")\n\n\
                 ####### Routing Logic ########"
            ),
        ),
    ];
    for (from, to) in replacements {
        match text.matches(from).count() {
            1 => text = text.replacen(from, &to, 1),
            n => bail!(
                "{STOCK_CONFIG}: expected `{}` once, found it {n} times",
                from.trim()
            ),
        }
    }
    Ok(text)
}

/// Debian's stock Kamailio, running from a temporary directory; stopped when
/// dropped.
pub struct StockKamailio {
    dir: TempDir,
    pid: Option<i32>,
    pub addr: SocketAddr,
}

impl StockKamailio {
    /// Writes the config, checks it with `kamailio -c`, starts Kamailio with the
    /// same memory sizes as ours and waits until it listens.
    pub async fn start(
        db_url: &str,
        children: u32,
        shared_memory_mb: u32,
        private_memory_mb: u32,
    ) -> Result<Self> {
        let stock = fs::read_to_string(STOCK_CONFIG)
            .with_context(|| format!("reading {STOCK_CONFIG} (package kamailio)"))?;
        let dir = tempfile::Builder::new()
            .prefix("stock-kamailio-")
            .tempdir()?;
        let port = free_udp_and_tcp_port()?;
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
        let text = stock_config(&stock, db_url, addr, children, dir.path())?;
        let cfg = dir.path().join("kamailio.cfg");
        fs::write(&cfg, text)?;
        let check = tokio::process::Command::new("kamailio")
            .arg("-c")
            .arg("-f")
            .arg(&cfg)
            .output()
            .await?;
        if !check.status.success() {
            bail!(
                "`kamailio -c` refused the stock config {}:\n{}",
                cfg.display(),
                String::from_utf8_lossy(&check.stderr)
            );
        }
        let log = fs::File::create(dir.path().join("kamailio.log"))?;
        let pid_file = dir.path().join("kamailio.pid");
        let status = tokio::process::Command::new("kamailio")
            .arg("-f")
            .arg(&cfg)
            .arg("-P")
            .arg(&pid_file)
            .arg("-m")
            .arg(shared_memory_mb.to_string())
            .arg("-M")
            .arg(private_memory_mb.to_string())
            .arg("-E")
            .arg("-w")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .status()
            .await?;
        let mut me = Self {
            dir,
            pid: None,
            addr,
        };
        if !status.success() {
            bail!("stock kamailio exited with {status}:\n{}", me.log_tail(20));
        }
        let ready_by = Instant::now() + Duration::from_secs(20);
        loop {
            me.pid = sipstack_local::process::running_pid(&pid_file, &cfg.to_string_lossy());
            if me.pid.is_some() && udp_port_bound(port) {
                // the workers open their database connections right after forking
                tokio::time::sleep(Duration::from_millis(500)).await;
                return Ok(me);
            }
            if Instant::now() > ready_by {
                bail!(
                    "stock kamailio did not come up within 20 s:\n{}",
                    me.log_tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> Option<i32> {
        self.pid
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("kamailio.cfg")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("kamailio.log")
    }

    pub fn log_tail(&self, lines: usize) -> String {
        sipstack_local::process::log_tail(&self.log_path(), lines)
    }

    /// SIGTERM (Kamailio flushes usrloc on the way out), SIGKILL after 15 s.
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(pid) = self.pid.take() {
            sipstack_local::process::terminate(pid, Duration::from_secs(15)).await?;
        }
        Ok(())
    }
}

impl Drop for StockKamailio {
    fn drop(&mut self) {
        let Some(pid) = self.pid.take() else { return };
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        let until = Instant::now() + Duration::from_secs(10);
        while sipstack_local::process::is_alive(pid) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
        if sipstack_local::process::is_alive(pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Registers the callees with the media stand-ins as their contacts, so that
/// the stock config's location lookup sends `callee0` to the first stand-in
/// and `callee1` to the second.
pub async fn register_callees(target: SocketAddr, standins: [SocketAddr; 2]) -> Result<()> {
    let port = crate::sipp::free_udp_port_on(LOAD_IP)?;
    let mut injection = InjectionFile::sequential();
    for (callee, standin) in CALLEES.iter().zip(standins) {
        injection = injection.line([
            callee.to_string(),
            DOMAIN.to_string(),
            InjectionFile::auth_keyword(callee, CALLEE_PASSWORD),
            format!("sip:{callee}@{standin}"),
        ]);
    }
    let cmd = SippCommand::scenario("bench_register")
        .remote(target)
        .local(LOAD_IP, port)
        .injection(injection)
        .key("expires", "3600")
        .rate(10)
        .max_calls(2)
        .deadline(Duration::from_secs(15));
    run_sipp(cmd)
        .await?
        .ensure_all_succeeded(2)
        .context("registering the callees")
}

// ---------------------------------------------------------------------------
// CPU time

/// CPU time (user + system) used so far by one process, from
/// `/proc/PID/stat` (ticks of 1/100 s); `None` when the process is gone.
/// (The host-wide counters of /proc/stat are not used: on this VM they show
/// the CPUs idle under load. The per-process figures add up.)
pub fn process_cpu(pid: i32) -> Option<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    // after "pid (comm)": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime = fields.get(11)?.parse::<u64>().ok()?;
    let stime = fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// CPU time used so far by a process and the processes it forked directly
/// (Kamailio's workers and timers, PostgreSQL's backends).
pub fn process_tree_cpu(main_pid: i32) -> Duration {
    let mut total = Duration::ZERO;
    let Ok(entries) = fs::read_dir("/proc") else {
        return total;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<i32>().ok())
            .unwrap_or(0);
        if pid == main_pid || ppid == main_pid {
            total += process_cpu(pid).unwrap_or_default();
        }
    }
    total
}

/// The postmaster's pid, from `postmaster.pid` in the data directory.
pub fn postmaster_pid(data_dir: &Path) -> Option<i32> {
    fs::read_to_string(data_dir.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------
// load steps

/// What a load step sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadKind {
    /// REGISTER, 401, REGISTER with credentials, 200 (bench_register.xml).
    Register,
    /// INVITE, 407, ACK, INVITE with credentials, 200, ACK, BYE, 200 (bench_uac_call.xml).
    Call,
}

impl LoadKind {
    pub fn name(self) -> &'static str {
        match self {
            LoadKind::Register => "REGISTER",
            LoadKind::Call => "INVITE",
        }
    }
}

/// Everything of a load that stays the same from step to step.
#[derive(Debug, Clone)]
pub struct Load {
    pub kind: LoadKind,
    pub target: SocketAddr,
    /// SIPp's own UDP port (fixed, so a user's contact stays the same).
    pub local_port: u16,
    pub users: u32,
    pub injection: InjectionFile,
    /// Main pid of the Kamailio under test, for its CPU time.
    pub kamailio_pid: Option<i32>,
    /// Log of the Kamailio under test and a line that means it banned the load
    /// generator (our flood protection): such a step is an error, not a result.
    pub ban_marker: Option<(PathBuf, String)>,
    /// PostgreSQL's postmaster, for the database's CPU time.
    pub postgres_pid: Option<i32>,
    /// Our edge's RPC: before each step, wait until every dispatcher destination
    /// is active again (an overloaded step can leave the media nodes marked
    /// inactive, which would spoil the next step with 503s).
    pub dispatcher_rpc: Option<sipstack_edgerpc::EdgeRpc>,
    /// The media stand-ins (SIPp), for their CPU time.
    pub standin_pids: Vec<i32>,
    /// Log of the Kamailio under test, searched for out-of-memory errors.
    pub log: Option<PathBuf>,
}

/// How many lines of a Kamailio log say it ran out of shared memory.
pub fn out_of_memory_lines(log: &Path) -> u64 {
    let text = fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains("could not allocate shared memory") || l.contains("out of mem"))
        .count() as u64
}

impl Load {
    pub fn new(
        kind: LoadKind,
        target: SocketAddr,
        local_port: u16,
        users: u32,
        kamailio_pid: Option<i32>,
    ) -> Self {
        let mut injection = InjectionFile::sequential();
        for i in 1..=users {
            let (user, password) = bench_user(i);
            let auth = InjectionFile::auth_keyword(&user, &password);
            let last = match kind {
                LoadKind::Register => format!("sip:{user}@{LOAD_IP}:{local_port}"),
                LoadKind::Call => CALLEES[(i % 2) as usize].to_string(),
            };
            injection = injection.line([user, DOMAIN.to_string(), auth, last]);
        }
        Self {
            kind,
            target,
            local_port,
            users,
            injection,
            kamailio_pid,
            ban_marker: None,
            postgres_pid: None,
            dispatcher_rpc: None,
            standin_pids: Vec::new(),
            log: None,
        }
    }

    pub fn with_log(mut self, log: PathBuf) -> Self {
        self.log = Some(log);
        self
    }

    pub fn with_standin_pids(mut self, pids: Vec<i32>) -> Self {
        self.standin_pids = pids;
        self
    }

    pub fn with_postgres_pid(mut self, pid: Option<i32>) -> Self {
        self.postgres_pid = pid;
        self
    }

    pub fn with_dispatcher_rpc(mut self, rpc: sipstack_edgerpc::EdgeRpc) -> Self {
        self.dispatcher_rpc = Some(rpc);
        self
    }

    /// Waits until every destination is active (at most 30 s); returns how
    /// long that took.
    async fn wait_for_active_destinations(&self) -> Result<Duration> {
        let Some(rpc) = &self.dispatcher_rpc else {
            return Ok(Duration::ZERO);
        };
        let start = Instant::now();
        loop {
            let list = rpc.dispatcher_list().await.context("dispatcher.list")?;
            if !list.is_empty() && list.iter().all(|d| d.is_active()) {
                return Ok(start.elapsed());
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!("the media nodes did not become active again within 30 s: {list:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Fails the steps after which `log` holds `marker` (e.g. our flood
    /// protection's ban message).
    pub fn with_ban_marker(mut self, log: PathBuf, marker: &str) -> Self {
        self.ban_marker = Some((log, marker.to_string()));
        self
    }

    fn check_not_banned(&self) -> Result<()> {
        if let Some((log, marker)) = &self.ban_marker {
            let text = fs::read_to_string(log).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.contains(marker.as_str())) {
                bail!(
                    "the edge banned the load generator (flood protection), so the figures would be wrong; \
                     raise the flood limit or lower the rate. Log line: {}",
                    line.trim()
                );
            }
        }
        Ok(())
    }

    fn command(&self, rate: u32, calls: u64, duration: Duration) -> SippCommand {
        let scenario = match self.kind {
            LoadKind::Register => "bench_register",
            LoadKind::Call => "bench_uac_call",
        };
        let mut cmd = SippCommand::scenario(scenario)
            .remote(self.target)
            .local(LOAD_IP, self.local_port)
            .injection(self.injection.clone())
            .rate(rate)
            .max_calls(calls)
            // a step that cannot keep up shows it as a lower rate, not as a
            // SIPp that piles up unbounded open calls
            .call_limit(rate.max(50) * 2)
            // a lost answer fails its call after 5 s, not after SIPp's 32 s of retransmissions
            .recv_timeout(Duration::from_secs(5))
            .deadline(duration * 2 + Duration::from_secs(20));
        if self.kind == LoadKind::Register {
            cmd = cmd.key("expires", "600");
        } else {
            cmd = cmd.pause(Duration::ZERO);
        }
        cmd
    }

    /// Offers `rate` new calls/registrations per second for `duration`.
    pub async fn step(&self, rate: u32, duration: Duration) -> Result<StepResult> {
        let calls = (f64::from(rate) * duration.as_secs_f64()).round().max(1.0) as u64;
        let waited = self.wait_for_active_destinations().await?;
        let cpu_before = self.kamailio_pid.map(process_tree_cpu);
        let pg_before = self.postgres_pid.map(process_tree_cpu);
        let oom_before = self.log.as_deref().map(out_of_memory_lines).unwrap_or(0);
        let standins_before: Vec<Option<Duration>> =
            self.standin_pids.iter().map(|p| process_cpu(*p)).collect();
        let (outcome, sipp_cpu) = run_sipp_measured(self.command(rate, calls, duration)).await?;
        let standin_cpu = self
            .standin_pids
            .iter()
            .zip(standins_before)
            .filter_map(|(pid, before)| Some(process_cpu(*pid)?.saturating_sub(before?)))
            .max()
            .unwrap_or_default();
        let since = |before: Option<Duration>, pid: Option<i32>| match (before, pid) {
            (Some(before), Some(pid)) => Some(process_tree_cpu(pid).saturating_sub(before)),
            _ => None,
        };
        let cpu = since(cpu_before, self.kamailio_pid);
        let pg_cpu = since(pg_before, self.postgres_pid);

        self.check_not_banned()?;
        let out_of_memory = self
            .log
            .as_deref()
            .map(out_of_memory_lines)
            .unwrap_or(0)
            .saturating_sub(oom_before);
        let Some(stats) = &outcome.stats else {
            bail!("SIPp wrote no statistics:\n{}", outcome.diagnostics());
        };
        let mut codes = BTreeMap::new();
        for code in &outcome.unexpected_codes {
            *codes.entry(*code).or_insert(0u64) += 1;
        }
        let result = StepResult {
            offered: rate,
            calls,
            created: stats.total_created(),
            successful: stats.successful(),
            failed: stats.failed(),
            retransmissions: stats.retransmissions(),
            elapsed: outcome.elapsed,
            kamailio_cpu: cpu,
            postgres_cpu: pg_cpu,
            sipp_cpu,
            standin_cpu,
            out_of_memory,
            waited_for_media: waited,
            unexpected_codes: codes,
            exit: outcome.exit,
            attempt: 1,
        };
        if matches!(
            outcome.exit,
            SippExit::Fatal(_) | SippExit::BindFailed | SippExit::Other(_) | SippExit::Signal(_)
        ) {
            bail!(
                "SIPp did not run the step ({result}):\n{}",
                outcome.diagnostics()
            );
        }
        Ok(result)
    }

    /// A short run that must succeed completely: the config under test works.
    pub async fn warm_up(&self) -> Result<StepResult> {
        let result = self.step(100, Duration::from_secs(1)).await?;
        if result.successful != result.calls || result.failed != 0 {
            bail!("warm-up of {} failed: {result}", self.kind.name());
        }
        Ok(result)
    }

    /// One step at `rate`, run a second time when the first run was only
    /// [`transient`](StepResult::transient); the second run decides. Returns
    /// the deciding run and the transient one, if any.
    async fn decided_step(
        &self,
        rate: u32,
        duration: Duration,
        settle: Duration,
        report: &mut impl FnMut(&StepResult),
    ) -> Result<(StepResult, Option<StepResult>)> {
        let first = self.step(rate, duration).await?;
        report(&first);
        tokio::time::sleep(settle).await;
        if !first.transient() {
            return Ok((first, None));
        }
        let mut second = self.step(rate, duration).await?;
        second.attempt = 2;
        report(&second);
        tokio::time::sleep(settle).await;
        Ok((second, Some(first)))
    }

    /// Steps the offered rate through `rates` until a step is not clean, then
    /// bisects between the last clean and the first unclean rate `refine`
    /// times. A step with only a few retransmissions and nothing else wrong
    /// runs once more (see [`StepResult::transient`]). `report` sees every run
    /// as it ends.
    pub async fn ramp(
        &self,
        rates: &[u32],
        refine: u32,
        duration: Duration,
        settle: Duration,
        mut report: impl FnMut(&StepResult),
    ) -> Result<Ramp> {
        let mut ramp = Ramp::default();
        let mut clean_rate: Option<u32> = None;
        let mut unclean_rate: Option<u32> = None;
        for &rate in rates {
            let (step, transient) = self
                .decided_step(rate, duration, settle, &mut report)
                .await?;
            ramp.transients.extend(transient);
            let clean = step.clean();
            ramp.steps.push(step);
            if clean {
                clean_rate = Some(rate);
            } else {
                unclean_rate = Some(rate);
                break;
            }
        }
        if let Some(mut high) = unclean_rate {
            let mut low = clean_rate.unwrap_or(0);
            for _ in 0..refine {
                // halfway, rounded to 50/s
                let mid = (low + high) / 2 / 50 * 50;
                if mid <= low || mid >= high || mid == 0 {
                    break;
                }
                let (step, transient) = self
                    .decided_step(mid, duration, settle, &mut report)
                    .await?;
                ramp.transients.extend(transient);
                let clean = step.clean();
                ramp.steps.push(step);
                if clean {
                    low = mid;
                } else {
                    high = mid;
                }
            }
        }
        ramp.saturated = unclean_rate.is_some();
        Ok(ramp)
    }
}

/// One step: a SIPp run at one offered rate.
#[derive(Debug, Clone)]
pub struct StepResult {
    /// Offered rate (SIPp's `-r`), per second.
    pub offered: u32,
    /// Calls the step was to make (`-m`).
    pub calls: u64,
    pub created: u64,
    pub successful: u64,
    pub failed: u64,
    /// SIPp's retransmissions: an answer not there after 500 ms (and again later).
    pub retransmissions: u64,
    pub elapsed: Duration,
    pub kamailio_cpu: Option<Duration>,
    pub postgres_cpu: Option<Duration>,
    /// CPU time of the load-generating SIPp.
    pub sipp_cpu: Duration,
    /// CPU time of the busiest media stand-in (SIPp) during the step.
    pub standin_cpu: Duration,
    /// Lines of the Kamailio log about running out of shared memory.
    pub out_of_memory: u64,
    /// How long the step waited for the media nodes to be active again.
    pub waited_for_media: Duration,
    pub unexpected_codes: BTreeMap<u16, u64>,
    pub exit: SippExit,
    /// 1, or 2 for the second run of a step whose first run was transient.
    pub attempt: u32,
}

/// A step keeps up when it finishes within this factor of its nominal length
/// (plus [`KEEP_UP_SLACK`] for SIPp's start and the last answers).
pub const KEEP_UP_FACTOR: f64 = 1.05;
pub const KEEP_UP_SLACK: Duration = Duration::from_millis(300);
/// A step with at most one retransmission per this many calls (and nothing
/// else wrong) is run again: see [`StepResult::transient`].
pub const TRANSIENT_RETRANS_PER: u64 = 2000;

impl StepResult {
    /// Completed calls per second over the whole SIPp run.
    pub fn achieved(&self) -> f64 {
        self.successful as f64 / self.elapsed.as_secs_f64().max(0.001)
    }

    /// Nominal length of the step: calls / offered rate.
    pub fn nominal(&self) -> Duration {
        Duration::from_secs_f64(self.calls as f64 / f64::from(self.offered.max(1)))
    }

    /// Whether SIPp finished the step in about its nominal time (else the
    /// offered rate was not reached: the server, or SIPp itself, fell behind).
    pub fn kept_up(&self) -> bool {
        self.elapsed <= self.nominal().mul_f64(KEEP_UP_FACTOR) + KEEP_UP_SLACK
    }

    /// The criterion of a sustained rate: every call succeeded, not one
    /// retransmission, and the rate was kept.
    pub fn clean(&self) -> bool {
        self.failed == 0
            && self.retransmissions == 0
            && self.successful == self.calls
            && self.kept_up()
            && self.out_of_memory == 0
    }

    /// Not clean only because of a handful of retransmissions: every call
    /// succeeded, the rate was kept, and at most 1 in 2 000 calls saw one. On
    /// a shared 2-core machine a single scheduling hiccup does that, so such a
    /// step runs once more and the second run decides.
    pub fn transient(&self) -> bool {
        !self.clean()
            && self.attempt == 1
            && self.failed == 0
            && self.successful == self.calls
            && self.kept_up()
            && self.retransmissions * TRANSIENT_RETRANS_PER <= self.calls
    }

    /// Kamailio CPU time per successful call, in milliseconds.
    pub fn cpu_per_call_ms(&self) -> Option<f64> {
        let cpu = self.kamailio_cpu?;
        (self.successful > 0).then(|| cpu.as_secs_f64() * 1000.0 / self.successful as f64)
    }

    /// SIPp's CPU time over the step's time: near 1.0, SIPp itself (one
    /// thread) is the limit, not the server.
    pub fn sipp_load(&self) -> f64 {
        self.sipp_cpu.as_secs_f64() / self.elapsed.as_secs_f64().max(0.001)
    }

    /// PostgreSQL CPU time per successful call, in milliseconds.
    pub fn pg_cpu_per_call_ms(&self) -> Option<f64> {
        let cpu = self.postgres_cpu?;
        (self.successful > 0).then(|| cpu.as_secs_f64() * 1000.0 / self.successful as f64)
    }

    /// Why the step is not clean, or "clean".
    pub fn verdict(&self) -> String {
        let mut why = Vec::new();
        if self.failed > 0 {
            why.push(format!("{} failed", self.failed));
        }
        if self.retransmissions > 0 {
            why.push(format!("{} retransmissions", self.retransmissions));
        }
        let missing = self.calls.saturating_sub(self.successful + self.failed);
        if missing > 0 {
            why.push(format!("{missing} unfinished"));
        }
        if !self.kept_up() {
            why.push(format!(
                "took {:.2} s for {:.2} s of load",
                self.elapsed.as_secs_f64(),
                self.nominal().as_secs_f64()
            ));
        }
        if self.out_of_memory > 0 {
            why.push(format!(
                "Kamailio out of shared memory ({} log lines; see --shm-mb)",
                self.out_of_memory
            ));
        }
        if !self.unexpected_codes.is_empty() {
            let codes: Vec<String> = self
                .unexpected_codes
                .iter()
                .map(|(c, n)| format!("{c}x{n}"))
                .collect();
            why.push(format!("unexpected answers {}", codes.join(" ")));
        }
        if why.is_empty() {
            "clean".into()
        } else {
            why.join(", ")
        }
    }
}

impl fmt::Display for StepResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "offered {:>6}/s: {:>6} ok of {:>6}, {:>5} failed, {:>5} retrans, {:>8.1}/s achieved in {:>5.2} s",
            self.offered,
            self.successful,
            self.calls,
            self.failed,
            self.retransmissions,
            self.achieved(),
            self.elapsed.as_secs_f64()
        )?;
        if let Some(ms) = self.cpu_per_call_ms() {
            write!(f, ", CPU ms/call: Kamailio {ms:.3}")?;
            if let Some(pg) = self.pg_cpu_per_call_ms() {
                write!(f, " PostgreSQL {pg:.3}")?;
            }
        }
        write!(f, ", SIPp {:.0} % of a CPU", self.sipp_load() * 100.0)?;
        if self.standin_cpu > Duration::ZERO {
            let load = self.standin_cpu.as_secs_f64() / self.elapsed.as_secs_f64().max(0.001);
            write!(f, " (busiest stand-in {:.0} %)", load * 100.0)?;
        }
        if self.waited_for_media > Duration::from_millis(500) {
            write!(
                f,
                " (waited {:.1} s for the media nodes)",
                self.waited_for_media.as_secs_f64()
            )?;
        }
        write!(f, " -> {}", self.verdict())?;
        if self.transient() {
            write!(f, " (transient: run again)")?;
        } else if self.attempt == 2 {
            write!(f, " (second run decides)")?;
        }
        Ok(())
    }
}

/// The steps of one load against one config.
#[derive(Debug, Clone, Default)]
pub struct Ramp {
    pub steps: Vec<StepResult>,
    /// Whether some step was not clean (else the highest step offered is only a
    /// lower bound of what the config sustains).
    pub saturated: bool,
    /// First runs that were transient and ran again (not in `steps`).
    pub transients: Vec<StepResult>,
}

impl Ramp {
    /// The highest clean step: the sustained rate.
    pub fn sustained(&self) -> Option<&StepResult> {
        self.steps
            .iter()
            .filter(|s| s.clean())
            .max_by_key(|s| s.offered)
    }

    /// The lowest step that was not clean.
    pub fn first_unclean(&self) -> Option<&StepResult> {
        self.steps
            .iter()
            .filter(|s| !s.clean())
            .min_by_key(|s| s.offered)
    }

    pub fn step_at(&self, rate: u32) -> Option<&StepResult> {
        self.steps.iter().find(|s| s.offered == rate)
    }

    pub fn total_failed(&self) -> u64 {
        self.steps.iter().map(|s| s.failed).sum()
    }

    /// Retransmissions over every run, the transient first runs included.
    pub fn total_retransmissions(&self) -> u64 {
        self.steps
            .iter()
            .chain(&self.transients)
            .map(|s| s.retransmissions)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stock_config_gets_only_the_announced_changes() {
        let Ok(stock) = fs::read_to_string(STOCK_CONFIG) else {
            return;
        };
        let addr: SocketAddr = "127.0.0.1:15060".parse().unwrap();
        let text = stock_config(
            &stock,
            "postgres://u:p@127.0.0.1:5432/db",
            addr,
            8,
            Path::new("/tmp/x"),
        )
        .unwrap();
        assert!(text.starts_with("#!KAMAILIO\n"));
        for line in [
            "#!define WITH_AUTH",
            "#!define WITH_USRLOCDB",
            "#!define DBURL \"postgres://u:p@127.0.0.1:5432/db\"",
            "loadmodule \"db_postgres.so\"",
            "listen=udp:127.0.0.1:15060",
            "alias=\"example.com\"",
            "modparam(\"ctl\", \"binrpc\", \"unix:/tmp/x/kamailio_ctl\")",
        ] {
            assert!(text.contains(line), "{line} missing");
        }
        assert!(!text.contains("db_mysql.so"));
        assert!(
            text.contains("modparam(\"auth_db\", \"calculate_ha1\", yes)"),
            "still the plaintext password check"
        );
    }

    #[test]
    fn a_step_is_clean_only_without_failures_retransmissions_and_delay() {
        let step = StepResult {
            offered: 1000,
            calls: 5000,
            created: 5000,
            successful: 5000,
            failed: 0,
            retransmissions: 0,
            elapsed: Duration::from_millis(5100),
            kamailio_cpu: None,
            postgres_cpu: None,
            sipp_cpu: Duration::ZERO,
            standin_cpu: Duration::ZERO,
            out_of_memory: 0,
            waited_for_media: Duration::ZERO,
            unexpected_codes: BTreeMap::new(),
            exit: SippExit::AllSucceeded,
            attempt: 1,
        };
        assert!(step.clean(), "{}", step.verdict());
        assert!(!StepResult {
            retransmissions: 1,
            ..step.clone()
        }
        .clean());
        assert!(!StepResult {
            failed: 1,
            successful: 4999,
            ..step.clone()
        }
        .clean());
        assert!(!StepResult {
            elapsed: Duration::from_secs(7),
            ..step.clone()
        }
        .clean());
        assert!(StepResult {
            retransmissions: 2,
            ..step.clone()
        }
        .transient());
        assert!(!StepResult {
            retransmissions: 2,
            attempt: 2,
            ..step.clone()
        }
        .transient());
        assert!(!StepResult {
            retransmissions: 3,
            ..step.clone()
        }
        .transient());
        assert!(!StepResult {
            retransmissions: 1,
            failed: 1,
            successful: 4999,
            ..step.clone()
        }
        .transient());
    }
}
