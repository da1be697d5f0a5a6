//! SIPp runs for the integration tests and benchmarks.
//!
//! A [`SippCommand`] describes one SIPp process (scenario from `e2e/scenarios`,
//! addresses, rate, limits); [`SippCommand::run`] runs it to the end and returns a
//! [`SippOutcome`], [`SippCommand::spawn`] starts a long-running one (a media node
//! stand-in, a registered phone) as a [`SippProcess`].
//!
//! Every run is bounded twice: SIPp gets its own global timeout (`-timeout` with
//! `-timeout_error`, whole seconds) and the runner kills it [`KILL_GRACE`] after
//! the deadline if it still runs.
//!
//! What SIPp 3.6.1 does, as observed on this machine:
//! - Exit codes: 0 all calls succeeded (also an idle stand-in stopped with
//!   SIGUSR1); 1 at least one call failed, but also a fatal start error
//!   (unknown keyword, missing injection file), which writes no statistics
//!   file; 97 stopped by `-timeout` alone; 254 main socket bind failed; 255
//!   `-timeout` with `-timeout_error`, and other fatal errors. SIPp's help also
//!   names 99 (no call processed), not seen here.
//! - `-timeout` alone is a soft stop like SIGUSR1: it waits for the open calls,
//!   so a run with unanswered INVITEs went on for 32 s (all retransmissions)
//!   past a 3 s timeout. With `-timeout_error` it exits at once. The value is
//!   truncated to whole seconds (2500ms stops after 2 s).
//! - SIGUSR1: no new calls, the open ones run to their end, then a normal exit
//!   (0 or 1) with a final statistics row. SIGTERM and SIGINT: exit at once
//!   with code 0 (!) and a final row in which the open calls are counted
//!   neither successful nor failed. SIGKILL: only the rows already written
//!   every `-fd` period are there.
//! - With `-m N` the final row is written when the N-th call ends. `<log>`
//!   lines (`-trace_logs`) reach the file at once, not only at exit.
//! - Ended calls are kept as "dead calls" for `-deadcall_wait` (33 s) and take
//!   every later message with their Call-ID, so a Call-ID can only be reused
//!   with `-deadcall_wait 0` on both sides, one call at a time, and a UAS
//!   scenario without `<timewait>`.
//! - A UAC that gets an unexpected non-2xx final answer (a 503) ACKs it itself
//!   and counts the call failed (FailedUnexpectedMessage); `-trace_error_codes`
//!   lists such codes.
//! - Scenario files: a variable that is set but never read is a fatal error
//!   ("Variable $x is referenced 1 times!"), as is a `[keyword]` not given
//!   with `-key`; `<timewait>` must be the last element and takes no `next`.
//! - Each process also binds two media ports (6000 upwards) and a control
//!   port (8888 upwards, on every address unless `-ci`), stepping over ports
//!   that are taken, so parallel runs do not collide there.

use std::collections::{BTreeMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill as send_signal, Signal};
use nix::unistd::Pid;

/// How long after the deadline SIPp (told to stop itself then) is killed.
pub const KILL_GRACE: Duration = Duration::from_secs(2);

/// Default bound of a run when none is given.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);

/// The SIPp program; Debian's package is `sip-tester`.
const SIPP: &str = "sipp";

/// Path of a scenario in `e2e/scenarios` (`name` with or without `.xml`).
pub fn scenario_path(name: &str) -> PathBuf {
    let file = if name.ends_with(".xml") {
        name.to_string()
    } else {
        format!("{name}.xml")
    };
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(file)
}

/// A UDP port on 127.0.0.1 that is free now and not handed out before by this
/// process (tests run side by side and each asks for its own).
pub fn free_udp_port() -> io::Result<u16> {
    free_udp_port_on(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// Like [`free_udp_port`] on another local address.
pub fn free_udp_port_on(ip: IpAddr) -> io::Result<u16> {
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let handed_out = HANDED_OUT.get_or_init(|| Mutex::new(HashSet::new()));
    for _ in 0..100 {
        let port = UdpSocket::bind((ip, 0))?.local_addr()?.port();
        let mut seen = handed_out.lock().unwrap_or_else(|e| e.into_inner());
        if seen.insert(port) {
            return Ok(port);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        "no new free UDP port found",
    ))
}

/// Whether some process has a UDP socket bound to `port`, from /proc/net/udp{,6}
/// (binding a probe socket could steal the port from the process starting up).
pub fn udp_port_bound(port: u16) -> bool {
    // Column 2 is the local address, e.g. 0100007F:EA60.
    let suffix = format!(":{port:04X}");
    ["/proc/net/udp", "/proc/net/udp6"].iter().any(|table| {
        fs::read_to_string(table).is_ok_and(|text| {
            text.lines().skip(1).any(|line| {
                line.split_whitespace()
                    .nth(1)
                    .is_some_and(|local| local.ends_with(&suffix))
            })
        })
    })
}

/// Order in which SIPp takes the lines of an injection file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectionOrder {
    Sequential,
    Random,
}

/// A SIPp injection file (`-inf`): one line of `;`-separated fields per call,
/// used by the scenarios as `[field0]`, `[field1]`, …; lines are reused from the
/// start when there are more calls than lines.
#[derive(Debug, Clone)]
pub struct InjectionFile {
    order: InjectionOrder,
    lines: Vec<Vec<String>>,
}

impl InjectionFile {
    pub fn new(order: InjectionOrder) -> Self {
        Self {
            order,
            lines: Vec::new(),
        }
    }

    /// An empty file read line after line.
    pub fn sequential() -> Self {
        Self::new(InjectionOrder::Sequential)
    }

    /// Adds one line.
    pub fn line<I, S>(mut self, fields: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.lines
            .push(fields.into_iter().map(Into::into).collect());
        self
    }

    /// Lines `user;domain;[authentication username=user password=pw]` for the
    /// call and register scenarios. The credentials are one whole keyword in a
    /// field because SIPp 3.6.1 does not expand `[fieldN]` inside
    /// `[authentication …]`.
    pub fn users(users: &[(&str, &str, &str)]) -> Self {
        users
            .iter()
            .fold(Self::sequential(), |file, (user, domain, password)| {
                file.line([
                    user.to_string(),
                    domain.to_string(),
                    Self::auth_keyword(user, password),
                ])
            })
    }

    /// The `[authentication …]` keyword for one user.
    pub fn auth_keyword(user: &str, password: &str) -> String {
        format!("[authentication username={user} password={password}]")
    }

    /// The file's text; fails on values SIPp would split or misread.
    pub fn render(&self) -> Result<String> {
        if self.lines.is_empty() {
            bail!("injection file without lines");
        }
        let mut text = String::from(match self.order {
            InjectionOrder::Sequential => "SEQUENTIAL\n",
            InjectionOrder::Random => "RANDOM\n",
        });
        for fields in &self.lines {
            for field in fields {
                if field.contains([';', '\n', '\r']) {
                    bail!("injection field {field:?} holds a ';' or a line break");
                }
                // A keyword field ends at its first ']'.
                if let Some(inner) = field.strip_prefix('[').and_then(|f| f.strip_suffix(']')) {
                    if inner.contains(']') {
                        bail!("injection field {field:?} holds a ']' inside its keyword");
                    }
                }
            }
            text.push_str(&fields.join(";"));
            text.push('\n');
        }
        Ok(text)
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let text = self.render()?;
        fs::write(path, text).with_context(|| format!("writing injection file {}", path.display()))
    }
}

/// One SIPp process to run. Build with the methods, then [`run`](Self::run) or
/// [`spawn`](Self::spawn).
#[derive(Debug, Clone)]
pub struct SippCommand {
    scenario: PathBuf,
    remote: Option<String>,
    local_ip: IpAddr,
    local_port: Option<u16>,
    service: Option<String>,
    injection: Option<InjectionFile>,
    rate: Option<(u32, Duration)>,
    call_limit: Option<u32>,
    max_calls: Option<u64>,
    pause: Option<Duration>,
    timeout: Option<Duration>,
    recv_timeout: Option<Duration>,
    fixed_call_id: Option<String>,
    deadcall_wait: Option<Duration>,
    keys: Vec<(String, String)>,
    extra_args: Vec<OsString>,
    work_dir: Option<PathBuf>,
    deadline: Duration,
    stop_grace: Duration,
    trace_messages: bool,
}

impl SippCommand {
    /// A run of the scenario file at `scenario`.
    pub fn new(scenario: impl Into<PathBuf>) -> Self {
        Self {
            scenario: scenario.into(),
            remote: None,
            local_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            local_port: None,
            service: None,
            injection: None,
            rate: None,
            call_limit: None,
            max_calls: None,
            pause: None,
            timeout: None,
            recv_timeout: None,
            fixed_call_id: None,
            deadcall_wait: None,
            keys: Vec::new(),
            extra_args: Vec::new(),
            work_dir: None,
            deadline: DEFAULT_DEADLINE,
            stop_grace: Duration::from_secs(5),
            trace_messages: false,
        }
    }

    /// A run of `e2e/scenarios/<name>.xml`.
    pub fn scenario(name: &str) -> Self {
        Self::new(scenario_path(name))
    }

    /// The same run with another scenario of `e2e/scenarios/` (a variant that
    /// takes the same injection file and keys).
    pub fn scenario_name(mut self, name: &str) -> Self {
        self.scenario = scenario_path(name);
        self
    }

    /// A media node stand-in answering on `ip:port`: the local driver's own
    /// scenario (local/scenarios/media_standin.xml). It keeps no dead calls, so
    /// Call-IDs can be reused right away.
    pub fn media_standin(ip: IpAddr, port: u16) -> Self {
        Self::new(PathBuf::from(sipstack_local::standin::SCENARIO_PATH))
            .local(ip, port)
            .deadcall_wait(Duration::ZERO)
    }

    /// A draining media node on `ip:port`: 503 to OPTIONS and INVITE.
    pub fn busy_media_standin(ip: IpAddr, port: u16) -> Self {
        Self::scenario("media_standin_busy")
            .local(ip, port)
            .deadcall_wait(Duration::ZERO)
    }

    /// Where requests go, `host:port` (client scenarios).
    pub fn remote(mut self, addr: impl fmt::Display) -> Self {
        self.remote = Some(addr.to_string());
        self
    }

    /// Own address (`-i`, also used in Via/Contact) and port (`-p`).
    pub fn local(mut self, ip: IpAddr, port: u16) -> Self {
        self.local_ip = ip;
        self.local_port = Some(port);
        self
    }

    /// Own address only (`-i`); the default is 127.0.0.1.
    pub fn local_ip(mut self, ip: IpAddr) -> Self {
        self.local_ip = ip;
        self
    }

    /// Own port only (`-p`); without it SIPp picks one.
    pub fn local_port(mut self, port: u16) -> Self {
        self.local_port = Some(port);
        self
    }

    /// User part of the Request-URI (`-s`, `[service]`).
    pub fn service(mut self, user: impl Into<String>) -> Self {
        self.service = Some(user.into());
        self
    }

    /// Per-call fields (`-inf`), written into the working directory.
    pub fn injection(mut self, file: InjectionFile) -> Self {
        self.injection = Some(file);
        self
    }

    /// New calls per second (`-r`).
    pub fn rate(self, calls_per_second: u32) -> Self {
        self.rate_per(calls_per_second, Duration::from_secs(1))
    }

    /// `calls` new calls every `period` (`-r`, `-rp`).
    pub fn rate_per(mut self, calls: u32, period: Duration) -> Self {
        self.rate = Some((calls, period));
        self
    }

    /// Most calls open at once (`-l`).
    pub fn call_limit(mut self, calls: u32) -> Self {
        self.call_limit = Some(calls);
        self
    }

    /// Stop after this many calls (`-m`).
    pub fn max_calls(mut self, calls: u64) -> Self {
        self.max_calls = Some(calls);
        self
    }

    /// Length of the scenarios' `<pause/>`, i.e. how long a call stays up (`-d`).
    pub fn pause(mut self, pause: Duration) -> Self {
        self.pause = Some(pause);
        self
    }

    /// SIPp's own global timeout (`-timeout` with `-timeout_error`, rounded up to
    /// whole seconds); the default is the deadline.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// A call fails when an expected message does not come within this time
    /// (`-recv_timeout`).
    pub fn recv_timeout(mut self, timeout: Duration) -> Self {
        self.recv_timeout = Some(timeout);
        self
    }

    /// Sends every call with this same Call-ID (`-cid_str`). SIPp tells calls
    /// apart by Call-ID, so this also sets one call at a time (`-l 1`) and no
    /// dead calls (`-deadcall_wait 0`); the answering side needs the latter too
    /// ([`media_standin`](Self::media_standin) has it).
    pub fn fixed_call_id(mut self, call_id: impl Into<String>) -> Self {
        self.fixed_call_id = Some(call_id.into());
        self
    }

    /// How long ended calls keep their Call-ID (`-deadcall_wait`; SIPp's
    /// default is 33 s).
    pub fn deadcall_wait(mut self, wait: Duration) -> Self {
        self.deadcall_wait = Some(wait);
        self
    }

    /// Defines the scenario keyword `[name]` (`-key name value`), e.g.
    /// `key("expires", "60")` for the register scenarios.
    pub fn key(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.keys.push((name.into(), value.into()));
        self
    }

    /// Any further SIPp argument, passed as is.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    /// Where SIPp runs and writes its files; by default a temporary directory
    /// that lives as long as the outcome or process.
    pub fn work_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.work_dir = Some(dir.into());
        self
    }

    /// Bound of the whole run: SIPp is told to stop itself then, and killed
    /// [`KILL_GRACE`] later if it has not.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// How long [`SippProcess::stop`] waits for open calls before killing.
    pub fn stop_grace(mut self, grace: Duration) -> Self {
        self.stop_grace = grace;
        self
    }

    /// Writes every sent and received message to `<run>.messages.log`.
    pub fn trace_messages(mut self, on: bool) -> Self {
        self.trace_messages = on;
        self
    }

    /// `ip:port` SIPp listens on, when the port was given.
    pub fn local_addr(&self) -> Option<String> {
        self.local_port
            .map(|port| join_host_port(self.local_ip, port))
    }

    /// The arguments for a run whose files go to `files`.
    fn args(&self, files: &RunFiles) -> Vec<OsString> {
        let mut args = Vec::new();
        let mut push = |items: &[&dyn AsRef<OsStr>]| {
            args.extend(items.iter().map(|i| i.as_ref().to_os_string()))
        };
        if let Some(remote) = &self.remote {
            push(&[remote]);
        }
        let ip = self.local_ip.to_string();
        push(&[&"-sf", &self.scenario, &"-i", &ip, &"-ci", &ip, &"-nostdin"]);
        if let Some(port) = self.local_port {
            push(&[&"-p", &port.to_string()]);
        }
        if let Some(service) = &self.service {
            push(&[&"-s", service]);
        }
        if self.injection.is_some() {
            push(&[&"-inf", &files.injection]);
        }
        if let Some((calls, period)) = self.rate {
            push(&[&"-r", &calls.to_string(), &"-rp", &millis(period)]);
        }
        let call_limit = if self.fixed_call_id.is_some() {
            Some(1)
        } else {
            self.call_limit
        };
        if let Some(limit) = call_limit {
            push(&[&"-l", &limit.to_string()]);
        }
        if let Some(max) = self.max_calls {
            push(&[&"-m", &max.to_string()]);
        }
        if let Some(pause) = self.pause {
            push(&[&"-d", &millis(pause)]);
        }
        if let Some(timeout) = self.recv_timeout {
            push(&[&"-recv_timeout", &millis(timeout)]);
        }
        if let Some(call_id) = &self.fixed_call_id {
            // -cid_str expands %u, %p, %s; a literal % is %%.
            push(&[&"-cid_str", &call_id.replace('%', "%%")]);
        }
        let deadcall_wait = if self.fixed_call_id.is_some() {
            Some(Duration::ZERO)
        } else {
            self.deadcall_wait
        };
        if let Some(wait) = deadcall_wait {
            push(&[&"-deadcall_wait", &millis(wait)]);
        }
        for (name, value) in &self.keys {
            push(&[&"-key", name, value]);
        }
        let timeout = self.timeout.unwrap_or(self.deadline);
        push(&[
            &"-timeout",
            &format!("{}s", whole_seconds_up(timeout)),
            &"-timeout_error",
        ]);
        push(&[&"-trace_stat", &"-stf", &files.stats, &"-fd", &"1"]);
        push(&[&"-trace_logs", &"-log_file", &files.logs]);
        push(&[
            &"-trace_err",
            &"-error_file",
            &files.errors,
            &"-trace_error_codes",
        ]);
        if self.trace_messages {
            push(&[&"-trace_msg", &"-message_file", &files.messages]);
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }

    /// The command line, for messages.
    pub fn command_line(&self) -> String {
        let files = RunFiles::new(Path::new("WORKDIR"), "RUN");
        std::iter::once(OsString::from(SIPP))
            .chain(self.args(&files))
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Starts SIPp; returns the child, its directory, what the run will leave
    /// and when to kill it.
    fn start(&self) -> Result<(Child, WorkDir, RunInfo, Instant)> {
        if !self.scenario.is_file() {
            bail!("scenario {} not found", self.scenario.display());
        }
        let dir = match &self.work_dir {
            Some(path) => {
                fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
                WorkDir::Given(path.clone())
            }
            None => WorkDir::Temp(
                tempfile::Builder::new()
                    .prefix("sipp-")
                    .tempdir()
                    .context("creating a work dir")?,
            ),
        };
        static RUNS: AtomicU64 = AtomicU64::new(0);
        let stem = scenario_stem(&self.scenario);
        let run_name = format!(
            "{stem}-{}-{}",
            std::process::id(),
            RUNS.fetch_add(1, Ordering::Relaxed)
        );
        let files = RunFiles::new(dir.path(), &run_name);
        if let Some(injection) = &self.injection {
            injection.write(&files.injection)?;
        }
        let create = |path: &Path| {
            fs::File::create(path).with_context(|| format!("creating {}", path.display()))
        };
        let child = Command::new(SIPP)
            .args(self.args(&files))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(create(&files.stdout)?)
            .stderr(create(&files.stderr)?)
            .spawn()
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => {
                    anyhow!("`{SIPP}` not found: install the sip-tester package")
                }
                _ => anyhow!(e).context(format!("starting {SIPP}")),
            })?;
        let started = Instant::now();
        let kill_at = started + self.deadline + KILL_GRACE;
        let info = RunInfo {
            files,
            stem,
            started,
            command: self.command_line(),
        };
        Ok((child, dir, info, kill_at))
    }

    /// Runs SIPp to its end (or the deadline) and collects the results.
    pub fn run(self) -> Result<SippOutcome> {
        let (mut child, dir, info, kill_at) = self.start()?;
        let mut killed = false;
        let status = loop {
            if let Some(status) = child.try_wait().context("waiting for sipp")? {
                break status;
            }
            if Instant::now() >= kill_at {
                killed = true;
                // Fails only when it has just exited; wait() reaps it either way.
                let _ = child.kill();
                break child.wait().context("reaping sipp")?;
            }
            thread::sleep(Duration::from_millis(10));
        };
        Ok(info.collect(status, killed, child.id(), dir))
    }

    /// [`run`](Self::run) on a blocking thread, for async tests.
    pub async fn run_async(self) -> Result<SippOutcome> {
        tokio::task::spawn_blocking(move || self.run())
            .await
            .context("sipp runner thread")?
    }

    /// Starts SIPp and returns while it runs. When a local port was given, waits
    /// until SIPp has bound it (or fails with SIPp's error output). It lives
    /// until its deadline at most (60 s unless [`deadline`](Self::deadline) says
    /// otherwise), also if this process dies first: SIPp's own `-timeout`.
    pub fn spawn(self) -> Result<SippProcess> {
        let (child, dir, info, kill_at) = self.start()?;
        let pid = child.id();
        let child = Arc::new(Mutex::new(Some(child)));
        let killed = Arc::new(Mutex::new(false));
        let (cancel, cancelled) = mpsc::channel::<()>();
        let watchdog = {
            let child = Arc::clone(&child);
            let killed = Arc::clone(&killed);
            let wait = kill_at.saturating_duration_since(Instant::now());
            // The deadline kill; dropping `cancel` ends this thread early.
            thread::spawn(move || {
                if let Err(mpsc::RecvTimeoutError::Timeout) = cancelled.recv_timeout(wait) {
                    if let Some(child) = lock(&child).as_mut() {
                        if matches!(child.try_wait(), Ok(None)) {
                            *lock(&killed) = true;
                            let _ = child.kill();
                        }
                    }
                }
            })
        };
        let mut process = SippProcess {
            child,
            pid,
            dir,
            info,
            killed,
            stop_grace: self.stop_grace,
            watchdog: Some((cancel, watchdog)),
            local_addr: self.local_addr(),
        };
        if let Some(port) = self.local_port {
            let ready_by = Instant::now() + Duration::from_secs(5);
            while !udp_port_bound(port) {
                if !process.is_alive() || Instant::now() >= ready_by {
                    let outcome = process.kill_and_collect()?;
                    bail!(
                        "sipp did not start listening on port {port}:\n{}",
                        outcome.diagnostics()
                    );
                }
                thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(process)
    }
}

fn millis(d: Duration) -> String {
    d.as_millis().to_string()
}

fn whole_seconds_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn join_host_port(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

fn scenario_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "scenario".into())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The working directory of a run.
#[derive(Debug)]
enum WorkDir {
    Given(PathBuf),
    Temp(tempfile::TempDir),
}

impl WorkDir {
    fn path(&self) -> &Path {
        match self {
            WorkDir::Given(path) => path,
            WorkDir::Temp(dir) => dir.path(),
        }
    }
}

/// The files one run writes; names start with the run's name, so several runs
/// can share a directory.
#[derive(Debug, Clone)]
struct RunFiles {
    injection: PathBuf,
    stats: PathBuf,
    logs: PathBuf,
    errors: PathBuf,
    messages: PathBuf,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl RunFiles {
    fn new(dir: &Path, run: &str) -> Self {
        let file = |suffix: &str| dir.join(format!("{run}.{suffix}"));
        Self {
            injection: file("inf.csv"),
            stats: file("stats.csv"),
            logs: file("logs.log"),
            errors: file("errors.log"),
            messages: file("messages.log"),
            stdout: file("stdout.log"),
            stderr: file("stderr.log"),
        }
    }
}

/// What is known of a run besides its process.
#[derive(Debug)]
struct RunInfo {
    files: RunFiles,
    /// Scenario file name without `.xml`: SIPp names some files after it.
    stem: String,
    started: Instant,
    command: String,
}

impl RunInfo {
    /// Reads what the run left behind.
    fn collect(&self, status: ExitStatus, killed: bool, pid: u32, dir: WorkDir) -> SippOutcome {
        let files = &self.files;
        let stats = fs::read_to_string(&files.stats)
            .ok()
            .and_then(|text| SippStats::parse(&text));
        let log_lines = read_log_lines(&files.logs);
        // -trace_error_codes has no file name option: <scenario>_<pid>_error_codes.csv.
        let codes_file = dir
            .path()
            .join(format!("{}_{pid}_error_codes.csv", self.stem));
        let unexpected_codes = fs::read_to_string(codes_file)
            .map(|t| parse_error_codes(&t))
            .unwrap_or_default();
        let errors = fs::read_to_string(&files.errors).unwrap_or_default();
        let stderr = fs::read_to_string(&files.stderr).unwrap_or_default();
        let exit = SippExit::classify(
            status,
            killed,
            stats.is_some(),
            &format!("{errors}\n{stderr}"),
        );
        SippOutcome {
            exit,
            status,
            stats,
            log_lines,
            unexpected_codes,
            elapsed: self.started.elapsed(),
            command: self.command.clone(),
            files: files.clone(),
            dir,
        }
    }
}

fn read_log_lines(path: &Path) -> Vec<LogLine> {
    fs::read_to_string(path)
        .map(|text| {
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .map(LogLine::parse)
                .collect()
        })
        .unwrap_or_default()
}

fn parse_error_codes(text: &str) -> Vec<u16> {
    // Rows: "<time>;<elapsed>;503,503,"
    text.lines()
        .filter_map(|line| line.split(';').nth(2))
        .flat_map(|codes| codes.split(',').filter_map(|c| c.trim().parse().ok()))
        .collect()
}

/// How SIPp ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SippExit {
    /// Code 0 (also what SIGTERM/SIGINT give).
    AllSucceeded,
    /// Code 1 with statistics: at least one call failed.
    SomeFailed,
    /// Code 255 at SIPp's own `-timeout`.
    TimedOut,
    /// Code 97: stopped by an internal command (`-timeout` without error).
    InternalCommand,
    /// Code 99: normal exit without any call processed.
    NoCalls,
    /// Code 254: the main socket could not be bound.
    BindFailed,
    /// Code 1 without statistics, or 255 other than the timeout: SIPp could
    /// not run the scenario (see the error output).
    Fatal(i32),
    /// Killed by the runner at the deadline or by [`SippProcess::kill`].
    Killed,
    /// Ended by a signal that did not come from the runner.
    Signal(i32),
    /// Any other code.
    Other(i32),
}

impl SippExit {
    fn classify(status: ExitStatus, killed: bool, has_stats: bool, error_text: &str) -> Self {
        use std::os::unix::process::ExitStatusExt;
        if killed {
            return SippExit::Killed;
        }
        match (status.code(), status.signal()) {
            (Some(0), _) => SippExit::AllSucceeded,
            (Some(1), _) if has_stats => SippExit::SomeFailed,
            (Some(255), _) if error_text.contains("timed out after") => SippExit::TimedOut,
            (Some(97), _) => SippExit::InternalCommand,
            (Some(99), _) => SippExit::NoCalls,
            (Some(254), _) => SippExit::BindFailed,
            (Some(code @ (1 | 255)), _) => SippExit::Fatal(code),
            (Some(code), _) => SippExit::Other(code),
            (None, Some(signal)) => SippExit::Signal(signal),
            (None, None) => SippExit::Other(-1),
        }
    }
}

/// The last row of SIPp's `-trace_stat` file.
#[derive(Debug, Clone, Default)]
pub struct SippStats {
    /// Every column of the row, by SIPp's header name, e.g. `SuccessfulCall(C)`.
    pub columns: BTreeMap<String, String>,
}

impl SippStats {
    /// Parses the CSV (`;`-separated, header first); takes the last complete row.
    pub fn parse(text: &str) -> Option<Self> {
        let mut lines = text.split_inclusive('\n');
        let header: Vec<&str> = lines.next()?.trim_end().split(';').collect();
        // A killed run may leave a half-written last line.
        let last = lines
            .rev()
            .filter(|l| l.ends_with('\n'))
            .map(str::trim_end)
            .find(|l| !l.is_empty())?;
        let values: Vec<&str> = last.split(';').collect();
        if values.len() < header.len() {
            return None;
        }
        let columns = header
            .iter()
            .zip(values)
            .filter(|(name, _)| !name.is_empty())
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        Some(Self { columns })
    }

    /// A numeric column; 0 when missing.
    pub fn count(&self, column: &str) -> u64 {
        self.columns
            .get(column)
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
            .unwrap_or(0)
    }

    pub fn total_created(&self) -> u64 {
        self.count("TotalCallCreated")
    }
    pub fn successful(&self) -> u64 {
        self.count("SuccessfulCall(C)")
    }
    pub fn failed(&self) -> u64 {
        self.count("FailedCall(C)")
    }
    /// Calls still open when the row was written.
    pub fn current(&self) -> u64 {
        self.count("CurrentCall")
    }
    pub fn retransmissions(&self) -> u64 {
        self.count("Retransmissions(C)")
    }
    pub fn failed_unexpected_message(&self) -> u64 {
        self.count("FailedUnexpectedMessage(C)")
    }
    pub fn failed_max_udp_retrans(&self) -> u64 {
        self.count("FailedMaxUDPRetrans(C)")
    }
    pub fn failed_timeout_on_recv(&self) -> u64 {
        self.count("FailedTimeoutOnRecv(C)")
    }
    pub fn failed_regexp(&self) -> u64 {
        self.count("FailedRegexpDoesntMatch(C)")
    }
}

/// One line a scenario wrote with `<log>`: a tag word, then `key=value` words,
/// e.g. `ANSWERED call_id=1-42@127.0.0.1 media=127.0.0.1:5080`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub tag: String,
    pub fields: BTreeMap<String, String>,
    pub text: String,
}

impl LogLine {
    pub fn parse(line: &str) -> Self {
        let mut words = line.split_whitespace();
        let tag = words.next().unwrap_or_default().to_string();
        let fields = words
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self {
            tag,
            fields,
            text: line.to_string(),
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }
}

/// What a finished SIPp run left.
#[derive(Debug)]
pub struct SippOutcome {
    pub exit: SippExit,
    pub status: ExitStatus,
    /// The final statistics row; `None` when SIPp wrote none (fatal start error).
    pub stats: Option<SippStats>,
    /// The `<log>` lines of all calls, in file order.
    pub log_lines: Vec<LogLine>,
    /// Codes of unexpected responses (`-trace_error_codes`), one per message.
    pub unexpected_codes: Vec<u16>,
    pub elapsed: Duration,
    pub command: String,
    files: RunFiles,
    dir: WorkDir,
}

impl SippOutcome {
    pub fn successful(&self) -> u64 {
        self.stats.as_ref().map_or(0, SippStats::successful)
    }

    pub fn failed(&self) -> u64 {
        self.stats.as_ref().map_or(0, SippStats::failed)
    }

    pub fn retransmissions(&self) -> u64 {
        self.stats.as_ref().map_or(0, SippStats::retransmissions)
    }

    /// Replies a scenario absorbed the way a real user agent does (a late
    /// challenge of a retransmitted request, a provisional reply that crossed a
    /// CANCEL): the `ABSORBED` lines. They are not failures; a test reports
    /// them and still asserts that no call failed.
    pub fn absorbed(&self) -> usize {
        self.lines("ABSORBED").count()
    }

    /// Log lines with this tag (`ANSWERED`, `REGISTERED`, …).
    pub fn lines<'a>(&'a self, tag: &'a str) -> impl Iterator<Item = &'a LogLine> + 'a {
        self.log_lines.iter().filter(move |l| l.tag == tag)
    }

    /// Answered calls per answering `host:port` (the `media=` or `contact=` of
    /// the `ANSWERED` lines).
    pub fn answered_by(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for line in self.lines("ANSWERED") {
            if let Some(who) = line.get("media").or_else(|| line.get("contact")) {
                *counts.entry(who.to_string()).or_insert(0) += 1;
            }
        }
        counts
    }

    /// Where SIPp ran and wrote its files (removed with the outcome when the
    /// runner made it).
    pub fn work_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Succeeds when SIPp exited 0 after exactly `calls` successful calls and
    /// no failed one; otherwise the error tells what happened.
    pub fn ensure_all_succeeded(&self, calls: u64) -> Result<()> {
        if self.exit == SippExit::AllSucceeded && self.successful() == calls && self.failed() == 0 {
            return Ok(());
        }
        bail!(
            "expected {calls} successful calls and none failed:\n{}",
            self.diagnostics()
        )
    }

    /// Exit, counters, the command and the tail of SIPp's error output.
    pub fn diagnostics(&self) -> String {
        let mut text = format!("{self}\ncommand: {}\n", self.command);
        for (name, path, lines) in [
            ("errors", &self.files.errors, 30),
            ("stderr", &self.files.stderr, 10),
            ("stdout", &self.files.stdout, 40),
        ] {
            let content = fs::read_to_string(path).unwrap_or_default();
            if content.trim().is_empty() {
                continue;
            }
            let all: Vec<&str> = content.lines().collect();
            let tail = &all[all.len().saturating_sub(lines)..];
            text.push_str(&format!(
                "--- {name} (last {} lines)\n{}\n",
                tail.len(),
                tail.join("\n")
            ));
        }
        text
    }
}

impl fmt::Display for SippOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sipp {:?} ({}) after {:.1?}",
            self.exit, self.status, self.elapsed
        )?;
        match &self.stats {
            Some(s) => write!(
                f,
                ": created {}, successful {}, failed {} (unexpected {}, recv timeout {}, max retrans {}), open {}, retransmissions {}",
                s.total_created(),
                s.successful(),
                s.failed(),
                s.failed_unexpected_message(),
                s.failed_timeout_on_recv(),
                s.failed_max_udp_retrans(),
                s.current(),
                s.retransmissions()
            )?,
            None => write!(f, ": no statistics written")?,
        }
        if !self.unexpected_codes.is_empty() {
            write!(f, ", unexpected codes {:?}", self.unexpected_codes)?;
        }
        let absorbed = self.absorbed();
        if absorbed > 0 {
            write!(f, ", absorbed {absorbed} late replies")?;
        }
        Ok(())
    }
}

/// A SIPp process running in the background. Killed when dropped.
#[derive(Debug)]
pub struct SippProcess {
    child: Arc<Mutex<Option<Child>>>,
    pid: u32,
    dir: WorkDir,
    info: RunInfo,
    killed: Arc<Mutex<bool>>,
    stop_grace: Duration,
    watchdog: Option<(mpsc::Sender<()>, thread::JoinHandle<()>)>,
    local_addr: Option<String>,
}

impl SippProcess {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `ip:port` it listens on, when the port was given.
    pub fn local_addr(&self) -> Option<&str> {
        self.local_addr.as_deref()
    }

    /// Whether SIPp still runs.
    pub fn is_alive(&self) -> bool {
        lock(&self.child)
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// The `<log>` lines written so far (SIPp writes each one out at once).
    pub fn log_lines(&self) -> Vec<LogLine> {
        read_log_lines(&self.info.files.logs)
    }

    /// Sends a signal to the process if it still runs.
    fn signal(&self, signal: Signal) -> Result<()> {
        let mut guard = lock(&self.child);
        if let Some(child) = guard.as_mut() {
            if matches!(child.try_wait(), Ok(None)) {
                let pid = i32::try_from(child.id()).context("pid out of range")?;
                send_signal(Pid::from_raw(pid), signal)
                    .with_context(|| format!("sending {signal} to sipp {pid}"))?;
            }
        }
        Ok(())
    }

    /// Freezes the process (SIGSTOP): a node that hangs without closing its socket.
    pub fn suspend(&self) -> Result<()> {
        self.signal(Signal::SIGSTOP)
    }

    /// Lets a suspended process go on (SIGCONT).
    pub fn resume(&self) -> Result<()> {
        self.signal(Signal::SIGCONT)
    }

    /// SIGKILL now, like a media node that dies.
    pub fn kill(&mut self) -> Result<()> {
        let mut guard = lock(&self.child);
        if let Some(child) = guard.as_mut() {
            if matches!(child.try_wait(), Ok(None)) {
                *lock(&self.killed) = true;
                child.kill().context("killing sipp")?;
            }
            child.wait().context("reaping sipp")?;
        }
        Ok(())
    }

    /// Graceful stop: SIGUSR1 (no new calls, open ones finish, final statistics),
    /// then SIGKILL if it has not exited within the stop grace. A stand-in counts
    /// every OPTIONS it answered as a call too.
    pub fn stop(mut self) -> Result<SippOutcome> {
        self.signal(Signal::SIGCONT)?;
        self.signal(Signal::SIGUSR1)?;
        let grace = self.stop_grace;
        self.wait_for(grace)
    }

    /// Waits until SIPp exits by itself (e.g. after `-m` calls); it is killed
    /// at its deadline at the latest.
    pub fn wait(mut self) -> Result<SippOutcome> {
        self.wait_for(Duration::MAX)
    }

    fn wait_for(&mut self, limit: Duration) -> Result<SippOutcome> {
        let until = Instant::now().checked_add(limit);
        loop {
            let exited = {
                let mut guard = lock(&self.child);
                match guard.as_mut() {
                    Some(child) => child.try_wait().context("waiting for sipp")?.is_some(),
                    None => true,
                }
            };
            if exited || until.is_some_and(|u| Instant::now() >= u) {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        self.kill_and_collect()
    }

    /// Kills it if still running and gathers the results.
    fn kill_and_collect(&mut self) -> Result<SippOutcome> {
        self.kill()?;
        self.stop_watchdog();
        let mut child = lock(&self.child)
            .take()
            .ok_or_else(|| anyhow!("sipp process already collected"))?;
        let status = child.wait().context("reaping sipp")?;
        let killed = *lock(&self.killed);
        let dir = std::mem::replace(&mut self.dir, WorkDir::Given(PathBuf::new()));
        Ok(self.info.collect(status, killed, self.pid, dir))
    }

    fn stop_watchdog(&mut self) {
        if let Some((cancel, handle)) = self.watchdog.take() {
            drop(cancel);
            let _ = handle.join();
        }
    }
}

impl Drop for SippProcess {
    fn drop(&mut self) {
        let _ = self.kill();
        self.stop_watchdog();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_come_from_the_last_complete_row() {
        let text = "StartTime;CurrentCall;SuccessfulCall(C);FailedCall(C);Retransmissions(C);\n\
                    2026-01-01\t10:00:00.0\t1.0;3;1;0;0;\n\
                    2026-01-01\t10:00:01.0\t2.0;0;4;1;7;\n\
                    2026-01-01\t10:00:02.0\t3.0;0;9";
        let stats = SippStats::parse(text).unwrap();
        assert_eq!(
            (
                stats.successful(),
                stats.failed(),
                stats.retransmissions(),
                stats.current()
            ),
            (4, 1, 7, 0)
        );
        assert!(SippStats::parse("StartTime;SuccessfulCall(C);\n").is_none());
    }

    #[test]
    fn error_codes_and_log_lines_parse() {
        let codes = "t;00:00:00:000000;\nt;00:00:00:205000;503,503,\nt;00:00:01:000000;407,\n";
        assert_eq!(parse_error_codes(codes), [503, 503, 407]);
        let line = LogLine::parse("ANSWERED call_id=1-2@127.0.0.1 media=127.0.0.1:5080");
        assert_eq!(line.tag, "ANSWERED");
        assert_eq!(line.get("media"), Some("127.0.0.1:5080"));
        assert_eq!(line.get("call_id"), Some("1-2@127.0.0.1"));
    }

    #[test]
    fn exit_codes_map() {
        use std::os::unix::process::ExitStatusExt;
        let code = |c: i32| ExitStatus::from_raw(c << 8);
        assert_eq!(
            SippExit::classify(code(0), false, true, ""),
            SippExit::AllSucceeded
        );
        assert_eq!(
            SippExit::classify(code(1), false, true, ""),
            SippExit::SomeFailed
        );
        assert_eq!(
            SippExit::classify(code(1), false, false, ""),
            SippExit::Fatal(1)
        );
        assert_eq!(
            SippExit::classify(code(255), false, true, "x timed out after '2.000' seconds"),
            SippExit::TimedOut
        );
        assert_eq!(
            SippExit::classify(code(255), false, false, "boom"),
            SippExit::Fatal(255)
        );
        assert_eq!(
            SippExit::classify(code(254), false, false, ""),
            SippExit::BindFailed
        );
        assert_eq!(
            SippExit::classify(ExitStatus::from_raw(9), true, false, ""),
            SippExit::Killed
        );
        assert_eq!(
            SippExit::classify(ExitStatus::from_raw(15), false, false, ""),
            SippExit::Signal(15)
        );
    }

    #[test]
    fn command_line_carries_the_bounds() {
        let cmd = SippCommand::scenario("uac_call")
            .remote("127.0.0.1:5060")
            .fixed_call_id("a%b")
            .deadline(Duration::from_millis(2500));
        let line = cmd.command_line();
        for part in [
            "-timeout 3s -timeout_error",
            "-cid_str a%%b",
            "-l 1",
            "-deadcall_wait 0",
            "-nostdin",
        ] {
            assert!(line.contains(part), "{part} missing in {line}");
        }
    }
}
