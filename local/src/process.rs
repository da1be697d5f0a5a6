//! Processes the local driver starts and finds again later through pid files.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Reads a pid file; `None` when it is missing or does not hold a pid.
pub fn read_pid(pid_file: &Path) -> Option<i32> {
    fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|p| *p > 0)
}

/// Whether a process with this pid exists (and is not a zombie we reaped).
pub fn is_alive(pid: i32) -> bool {
    match kill(Pid::from_raw(pid), None) {
        Ok(()) => !is_zombie(pid),
        Err(Errno::EPERM) => true,
        Err(_) => false,
    }
}

fn is_zombie(pid: i32) -> bool {
    // /proc/PID/stat: "pid (comm) S ..." — the state letter follows the last ')'.
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// The pid recorded in `pid_file` if that process is running and is the one we
/// started: its command line holds `marker` (e.g. its config file). After a reboot
/// a pid file may name an unrelated process, which must never be signalled.
pub fn running_pid(pid_file: &Path, marker: &str) -> Option<i32> {
    read_pid(pid_file).filter(|p| is_alive(*p) && command_line_has(*p, marker))
}

/// Whether the command line of `pid` holds `marker` as one of its arguments' text.
pub fn command_line_has(pid: i32, marker: &str) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .any(|arg| String::from_utf8_lossy(arg).contains(marker))
        })
        .unwrap_or(false)
}

/// Sends SIGTERM, waits up to `grace`, then SIGKILL. Returns whether it had been running.
pub async fn terminate(pid: i32, grace: Duration) -> io::Result<bool> {
    if !is_alive(pid) {
        return Ok(false);
    }
    signal(pid, Signal::SIGTERM)?;
    let deadline = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < deadline {
        if !is_alive(pid) {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::warn!(pid, "did not stop within {grace:?}; killing it");
    signal(pid, Signal::SIGKILL)?;
    for _ in 0..100 {
        if !is_alive(pid) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(true)
}

fn signal(pid: i32, sig: Signal) -> io::Result<()> {
    match kill(Pid::from_raw(pid), sig) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(io::Error::from_raw_os_error(e as i32)),
    }
}

/// Finds a program on PATH or in the usual system directories.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
                .into_iter()
                .map(PathBuf::from),
        )
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The last `lines` lines of a log file, for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Whether the current process runs as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A long-running program the local driver starts in the background and finds
/// again through its pid file.
#[derive(Debug, Clone)]
pub struct Daemon<'a> {
    pub program: &'a Path,
    pub args: Vec<std::ffi::OsString>,
    pub env: Vec<(&'static str, String)>,
    pub log: &'a Path,
    pub pid_file: &'a Path,
    /// Text of one argument that only this daemon's command line holds (its config
    /// file or data directory), so a reused pid is never taken for it.
    pub marker: &'a str,
    /// `(uid, gid)` to run as, when not as ourselves.
    pub run_as: Option<(u32, u32)>,
}

impl Daemon<'_> {
    /// The pid when it runs already.
    pub fn running(&self) -> Option<i32> {
        running_pid(self.pid_file, self.marker)
    }

    /// Starts it unless it runs; returns its pid. Its stdout and stderr go to the log
    /// (appended), it runs in its own process group (a Ctrl-C at the terminal that ran
    /// `up` does not reach it) with `/` as working directory.
    pub fn start(&self) -> io::Result<i32> {
        if let Some(pid) = self.running() {
            return Ok(pid);
        }
        use std::os::unix::process::CommandExt;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log)?;
        let mut command = std::process::Command::new(self.program);
        command
            .args(&self.args)
            .current_dir("/")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        for (key, value) in &self.env {
            command.env(key, value);
        }
        if let Some((uid, gid)) = self.run_as {
            // std drops the supplementary groups when root changes uid
            command.uid(uid).gid(gid);
        }
        let mut child = command.spawn()?;
        let pid = child.id() as i32;
        fs::write(self.pid_file, pid.to_string())?;
        // a program that cannot bind its port or read its config exits at once
        std::thread::sleep(Duration::from_millis(300));
        if let Ok(Some(status)) = child.try_wait() {
            let _ = fs::remove_file(self.pid_file);
            return Err(io::Error::other(format!(
                "{} exited at start ({status}); last lines of {}:\n{}",
                self.program.display(),
                self.log.display(),
                log_tail(self.log, 8)
            )));
        }
        Ok(pid)
    }

    /// Stops it (SIGTERM, SIGKILL after `grace`); returns whether it ran.
    pub async fn stop(&self, grace: Duration) -> io::Result<bool> {
        stop_recorded(self.pid_file, self.marker, grace).await
    }
}

/// Stops the process `pid_file` records if it is the one we started (its command
/// line holds `marker`): SIGTERM, SIGKILL after `grace`. Removes the pid file.
/// Returns whether it ran.
pub async fn stop_recorded(pid_file: &Path, marker: &str, grace: Duration) -> io::Result<bool> {
    let stopped = match running_pid(pid_file, marker) {
        Some(pid) => terminate(pid, grace).await?,
        None => false,
    };
    let _ = fs::remove_file(pid_file);
    Ok(stopped)
}

/// Sends SIGHUP (reload the configuration).
pub fn reload(pid: i32) -> io::Result<()> {
    signal(pid, Signal::SIGHUP)
}
