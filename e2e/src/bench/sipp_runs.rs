//! SIPp runs of the benchmark, and the processes to kill on Ctrl-C.

#[allow(unused_imports)]
use super::*;

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
