//! Listening ports for the programs a test starts.
//!
//! A port found free can be taken before the program binds it. Ports the kernel
//! picks (bind to port 0) come from its ephemeral range (32768 and up by default),
//! the same range every outgoing TCP connection and every other test's port-0
//! socket draws from, so such a race is likely on a busy machine. Listening ports
//! are therefore drawn at random below that range, and never twice by one process.
//! A start that still loses the race is recognised by [`is_port_taken`] and retried
//! on other ports by the testbeds.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use anyhow::{bail, Result};

/// Where listening ports are drawn from: below the kernel's ephemeral range.
pub const LISTEN_RANGE: std::ops::Range<u16> = 10_000..32_000;

/// A random number (xorshift over a per-process seed: enough to spread parallel
/// test processes apart).
fn next_random() -> u64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut x = STATE.load(Ordering::Relaxed);
    if x == 0 {
        x = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            ^ (u64::from(std::process::id()) << 32)
            | 1;
    }
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    STATE.store(x, Ordering::Relaxed);
    x
}

/// Claims `base..base+n` for this process; false if any was handed out before.
fn claim(base: u16, n: u16) -> bool {
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let mut seen = HANDED_OUT
        .get_or_init(|| Mutex::new(HashSet::new()))
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if (0..n).any(|i| seen.contains(&(base + i))) {
        return false;
    }
    seen.extend((0..n).map(|i| base + i));
    true
}

fn tcp_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

fn udp_free(port: u16) -> bool {
    UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// `n` consecutive ports on 127.0.0.1, each passing `free`, from a random base in
/// [`LISTEN_RANGE`].
fn free_range(n: u16, free: impl Fn(u16) -> bool, what: &str) -> Result<u16> {
    let span = u64::from(LISTEN_RANGE.end - LISTEN_RANGE.start - n);
    for _ in 0..500 {
        let base = LISTEN_RANGE.start + (next_random() % span) as u16;
        if (0..n).all(|i| free(base + i)) && claim(base, n) {
            return Ok(base);
        }
    }
    bail!("no {n} consecutive free {what} ports found in {LISTEN_RANGE:?}")
}

/// `n` consecutive TCP ports on 127.0.0.1 that are free now.
pub fn free_tcp_range(n: u16) -> Result<u16> {
    free_range(n, tcp_free, "TCP")
}

/// A TCP port on 127.0.0.1 that is free now.
pub fn free_tcp_port() -> Result<u16> {
    free_tcp_range(1)
}

/// A port free for both UDP and TCP on 127.0.0.1 (a SIP listener uses both).
pub fn free_udp_and_tcp_port() -> Result<u16> {
    free_range(1, |p| udp_free(p) && tcp_free(p), "UDP and TCP")
}

/// Whether a start failed because a port was bound by someone else meanwhile
/// (Kamailio, PostgreSQL, etcd and the OS spell it differently).
pub fn is_port_taken(error: &anyhow::Error) -> bool {
    let text = format!("{error:#}").to_ascii_lowercase();
    text.contains("address already in use") || text.contains("address in use")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_below_the_ephemeral_range_and_never_repeat() {
        let mut seen = HashSet::new();
        for _ in 0..200 {
            let p = free_udp_and_tcp_port().unwrap();
            assert!(LISTEN_RANGE.contains(&p), "{p}");
            assert!(seen.insert(p), "{p} handed out twice");
        }
        let base = free_tcp_range(3).unwrap();
        for p in base..base + 3 {
            assert!(seen.insert(p), "{p} of a range handed out before");
        }
    }

    #[test]
    fn a_taken_port_is_recognised_however_it_is_spelled() {
        for text in [
            "tcp_init(): bind(8) on 127.0.0.1:5060 : Address already in use",
            "could not bind IPv4 address \"127.0.0.1\": address already in use",
            "listen tcp 127.0.0.1:2379: bind: address already in use",
        ] {
            assert!(is_port_taken(&anyhow::anyhow!("{text}")), "{text}");
        }
        assert!(!is_port_taken(&anyhow::anyhow!("permission denied")));
    }
}
