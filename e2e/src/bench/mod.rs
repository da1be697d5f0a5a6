//! Building blocks of the `edge-bench` benchmark (see `src/bin/edge-bench.rs`):
//! our platform brought up for load, Debian's stock kamailio.cfg run against the
//! same PostgreSQL, subscribers in bulk, and SIPp load steps whose offered rate
//! goes up until failures or retransmissions appear.
//!
//! * [`sipp_runs`]: SIPp runs, measured, and killed on Ctrl-C;
//! * [`platform`]: our platform for load;
//! * [`database`]: subscribers in bulk, the tables between runs;
//! * [`stock`]: Debian's stock config and its Kamailio;
//! * [`load`]: the load steps and their results.

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

pub mod database;
pub mod load;
pub mod platform;
pub mod sipp_runs;
pub mod stock;

pub use database::*;
pub use load::*;
pub use platform::*;
pub use sipp_runs::*;
pub use stock::*;

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
