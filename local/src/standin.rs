//! SIP stand-ins for media nodes: a SIPp scenario that answers OPTIONS and INVITE
//! (without media), started on a static member's loopback address when FreeSWITCH
//! is not installed. The integration tests use the same scenario for theirs.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use sipstack_crds::validation::SipMemberUri;

use crate::process::{self, find_program, log_tail};
use crate::{is_loopback, LocalError};

const SCENARIO: &str = include_str!("../scenarios/media_standin.xml");

/// Where the stand-in's SIPp scenario is in the source tree.
pub const SCENARIO_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/media_standin.xml");

/// A running stand-in.
#[derive(Debug, Clone)]
pub struct Standin {
    pub uri: String,
    pub pool: String,
    pub pid: i32,
}

fn dir(state_dir: &Path, pool: &str) -> PathBuf {
    state_dir.join(format!("media-{pool}"))
}

fn file_stem(uri: &str) -> String {
    uri.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Starts a stand-in for `uri` unless one runs already. Members that are not on a
/// loopback address are real nodes somewhere else: `None`.
pub async fn ensure(
    state_dir: &Path,
    pool: &str,
    uri: &str,
) -> Result<Option<Standin>, LocalError> {
    let Some(parsed) = SipMemberUri::parse(uri) else {
        return Ok(None);
    };
    if !is_loopback(&parsed.host) || parsed.transport.as_deref().is_some_and(|t| t != "udp") {
        return Ok(None);
    }
    let host = parsed
        .host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = parsed.port.unwrap_or(5060);
    let dir = dir(state_dir, pool);
    fs::create_dir_all(&dir).map_err(|e| LocalError::io(&dir, e))?;
    let stem = file_stem(uri);
    let pid_file = dir.join(format!("{stem}.pid"));
    let scenario = dir.join("media_standin.xml");
    if let Some(pid) = process::running_pid(&pid_file, &scenario.to_string_lossy()) {
        return Ok(Some(Standin {
            uri: uri.to_string(),
            pool: pool.to_string(),
            pid,
        }));
    }
    let sipp = find_program("sipp").ok_or(LocalError::Missing {
        program: "sipp".into(),
        package: "sip-tester".into(),
    })?;
    fs::write(&scenario, SCENARIO).map_err(|e| LocalError::io(&scenario, e))?;
    let log = dir.join(format!("{stem}.log"));
    let log_file = fs::File::create(&log).map_err(|e| LocalError::io(&log, e))?;
    let child = std::process::Command::new(&sipp)
        .arg("-sf")
        .arg(&scenario)
        .arg("-i")
        .arg(&host)
        .arg("-p")
        .arg(port.to_string())
        .arg("-nostdin")
        // a call that reuses a Call-ID is a new call, not a retransmission of an ended one
        .arg("-deadcall_wait")
        .arg("0")
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log_file))
        // its own process group: a Ctrl-C at the terminal that ran `up` does not stop it
        .process_group(0)
        .spawn()
        .map_err(|e| LocalError::io(&sipp, e))?;
    let pid = child.id() as i32;
    fs::write(&pid_file, pid.to_string()).map_err(|e| LocalError::io(&pid_file, e))?;
    // the member's URI beside the pid, for `down` to name what it stops
    let uri_file = pid_file.with_extension("uri");
    fs::write(&uri_file, uri).map_err(|e| LocalError::io(&uri_file, e))?;
    // SIPp exits at once when it cannot bind; give it a moment to show that.
    tokio::time::sleep(Duration::from_millis(300)).await;
    if !process::is_alive(pid) {
        return Err(LocalError::Start {
            what: format!("the SIPp stand-in for {uri}"),
            detail: format!("sipp exited; {}:\n{}", log.display(), log_tail(&log, 10)),
        });
    }
    Ok(Some(Standin {
        uri: uri.to_string(),
        pool: pool.to_string(),
        pid,
    }))
}

/// Stops every stand-in whose pid file is in `dir` (one pool's directory);
/// returns the URIs of those that were running.
pub async fn stop_all(dir: &Path) -> Result<Vec<String>, LocalError> {
    stop_others(dir, &[]).await
}

/// Stops the stand-ins in `dir` whose URI is not in `keep` (members that left the
/// pool); returns the URIs of those that were running.
pub async fn stop_others(dir: &Path, keep: &[String]) -> Result<Vec<String>, LocalError> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut stopped = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| LocalError::io(dir, e))?;
    for entry in entries.filter_map(|e| e.ok()) {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("pid") {
            continue;
        }
        let recorded = fs::read_to_string(path.with_extension("uri")).unwrap_or_default();
        if keep.iter().any(|k| k == recorded.trim()) {
            continue;
        }
        // only a process started with this pool's scenario is ours to stop
        let marker = dir.join("media_standin.xml");
        if process::stop_recorded(&path, &marker.to_string_lossy(), Duration::from_secs(3))
            .await
            .map_err(|e| LocalError::io(&path, e))?
        {
            let uri = fs::read_to_string(path.with_extension("uri")).unwrap_or_default();
            stopped.push(uri.trim().to_string());
        }
        let _ = fs::remove_file(path.with_extension("uri"));
    }
    Ok(stopped)
}
