//! Debian's stock kamailio.cfg, run against the same PostgreSQL.

#[allow(unused_imports)]
use super::*;

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
