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
    fs::read_to_string(pid_file).ok()?.trim().parse().ok().filter(|p| *p > 0)
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
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
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
        .map(|raw| raw.split(|b| *b == 0).any(|arg| String::from_utf8_lossy(arg).contains(marker)))
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
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].into_iter().map(PathBuf::from))
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
