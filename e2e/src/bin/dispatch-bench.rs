//! `dispatch-bench`: how soon the dispatcher sync engine's member changes reach
//! the calls, on real Kamailio, PostgreSQL and SIPp stand-ins.
//!
//! ```text
//! cargo run --release -p sipstack-e2e --bin dispatch-bench                # 50 changes, about 5 minutes
//! cargo run --release -p sipstack-e2e --bin dispatch-bench -- --changes 10  # about 1 minute
//! ```
//!
//! A pool of two stand-ins takes a steady call load (`--rate` calls/s through the
//! edge, round robin). A third stand-in is added to the pool and removed again,
//! `--changes` times in all. For each change it measures, from the moment the
//! engine is asked to sync:
//!
//! * **added**: until the first call answered by the new member. The engine
//!   inserts it inactive and probing, so this is the reload plus the wait for the
//!   edge's next OPTIONS probe (`--probe-interval`, 1 s here).
//! * **removed**: until the last call answered by the member, polled every 10 ms
//!   for 1.5 s after the change; when no call reached it after the sync began, the
//!   time until the edge confirmed disabling it.
//!
//! Kamailio accepts one `dispatcher.reload` per 5 s (`reload_delta`); the bench
//! spaces the changes 5.2 s apart so each addition measures the engine, not that
//! limit (the integration tests cover many changes inside one window).
//!
//! Printed beside them: a plain dispatcher setup learns of members only through
//! OPTIONS probing, every 10 s with the default `probing.intervalSeconds`.
//! Bounded: the load and every wait have deadlines; it stops by itself.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use sipstack_dispatch::{EdgeOptions, Engine, Member, SetPolicy};
use sipstack_e2e::sipp::{InjectionFile, SippCommand, SippProcess};
use sipstack_e2e::testbed::{standin, users, PoolSpec, Testbed, TestbedSpec};

const USER: &str = "bench";
const PASSWORD: &str = "bench-pw";
const SET: i32 = 1;
/// Kamailio's default `reload_delta`, plus a margin.
const RELOAD_SPACING: Duration = Duration::from_millis(5200);
/// The default `probing.intervalSeconds` of a SipEdge (and a common choice in
/// hand-written dispatcher configurations).
const PLAIN_PROBE_INTERVAL_S: u32 = 10;
/// The default `probing.inactiveThreshold`.
const PLAIN_INACTIVE_THRESHOLD: u32 = 2;

#[derive(Parser, Debug)]
#[command(about = "Latency of dispatcher member changes, from sync to calls")]
struct Args {
    /// Member changes (additions and removals alternate); at least 2.
    #[arg(long, default_value_t = 50)]
    changes: u32,
    /// Calls per second through the edge.
    #[arg(long, default_value_t = 40)]
    rate: u32,
    /// OPTIONS probe interval of the edge, seconds.
    #[arg(long, default_value_t = 1)]
    probe_interval: u32,
}

fn uri(addr: SocketAddr) -> String {
    format!("sip:{addr}")
}

fn members(nodes: &[SocketAddr]) -> Vec<Member> {
    nodes
        .iter()
        .map(|n| Member::serving(uri(*n), SET, 1, 0))
        .collect()
}

fn answers(load: &SippProcess, node: SocketAddr) -> usize {
    let node = node.to_string();
    load.log_lines()
        .iter()
        .filter(|l| l.tag == "ANSWERED" && l.get("media") == Some(node.as_str()))
        .count()
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(name: &str, values: &mut [Duration]) -> String {
    values.sort();
    format!(
        "{name:<34} n={:<3} p50 {:>7.3} s   p99 {:>7.3} s   max {:>7.3} s",
        values.len(),
        percentile(values, 50.0).as_secs_f64(),
        percentile(values, 99.0).as_secs_f64(),
        values.last().copied().unwrap_or_default().as_secs_f64()
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.changes < 2 {
        bail!("--changes must be at least 2");
    }
    if !(1..=3600).contains(&args.probe_interval) {
        bail!("--probe-interval must be 1 to 3600 seconds");
    }
    let (nodes, _standins): (Vec<SocketAddr>, Vec<SippProcess>) = (0..3)
        .map(standin)
        .collect::<Result<Vec<_>>>()
        .context("starting the media stand-ins")?
        .into_iter()
        .unzip();
    let (base, flapping) = (&nodes[..2], nodes[2]);
    let spec = TestbedSpec {
        pools: vec![base
            .iter()
            .fold(PoolSpec::new("media", SET, "roundRobin"), |p, n| {
                p.member(*n, 1, 0)
            })],
        default_pool: Some("media".into()),
        probe_interval_seconds: args.probe_interval,
        ..Default::default()
    };
    let tb = Testbed::up(&spec).await?;
    tb.add_subscriber(USER, PASSWORD).await?;
    tb.wait_for_destinations(Duration::from_secs(15), |d| {
        d.len() == 2 && d.iter().all(|x| x.is_active())
    })
    .await?;
    let mut engine = Engine::new(tb.db().await?, vec![tb.rpc.clone()], EdgeOptions::default());
    let policy = SetPolicy {
        set_id: SET,
        description: "media".into(),
        drain_grace: Duration::from_secs(300),
    };

    let expected = RELOAD_SPACING * (args.changes + 2) + Duration::from_secs(20);
    let load = SippCommand::scenario("uac_call")
        .remote(tb.edge())
        .service("5550100")
        .injection(InjectionFile::users(&users(&[(USER, PASSWORD)])))
        .rate(args.rate)
        .call_limit(200)
        .max_calls(u64::from(args.rate) * expected.as_secs())
        .recv_timeout(Duration::from_secs(5))
        .deadline(expected + Duration::from_secs(30))
        .spawn()?;
    println!(
        "dispatch-bench: {} changes of one member under {} calls/s, probe interval {} s; about {} s",
        args.changes,
        args.rate,
        args.probe_interval,
        expected.as_secs()
    );

    let mut added = Vec::new();
    let mut removed = Vec::new();
    let mut confirmed = Vec::new();
    let mut last_reload = Instant::now();
    let with_flapping: Vec<SocketAddr> = nodes.clone();
    for i in 0..args.changes {
        tokio::time::sleep(RELOAD_SPACING.saturating_sub(last_reload.elapsed())).await;
        let adding = i % 2 == 0;
        let before = answers(&load, flapping);
        let desired = if adding {
            members(&with_flapping)
        } else {
            members(base)
        };
        let started = Instant::now();
        let outcome = engine.sync_set(&policy, &desired).await?;
        let synced = started.elapsed();
        engine
            .wait_applied(&outcome, Duration::from_secs(15))
            .await?;
        confirmed.push(started.elapsed());
        last_reload = Instant::now();
        if adding {
            let limit = Duration::from_secs(u64::from(args.probe_interval) + 10);
            loop {
                if answers(&load, flapping) > before {
                    added.push(started.elapsed());
                    break;
                }
                if started.elapsed() > limit {
                    bail!("change {i}: the added member took no call within {limit:?}");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        } else {
            let mut count = before;
            let mut last = None;
            while started.elapsed() < Duration::from_millis(1500) {
                let now = answers(&load, flapping);
                if now > count {
                    count = now;
                    last = Some(started.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            removed.push(last.unwrap_or(synced));
        }
        if i % 10 == 9 {
            println!("  {} changes done", i + 1);
        }
    }
    let out = tokio::task::spawn_blocking(move || load.stop()).await??;
    let status = engine.edges().status();

    println!();
    println!("{}", summary("member added → first call on it", &mut added));
    println!(
        "{}",
        summary("member removed → last call on it", &mut removed)
    );
    println!(
        "{}",
        summary("sync → edge confirmed the reload", &mut confirmed)
    );
    println!(
        "plain dispatcher setup, OPTIONS probing every {PLAIN_PROBE_INTERVAL_S} s (default): a new member waits up to \
         {PLAIN_PROBE_INTERVAL_S} s for its probe once the table is reloaded; a member that goes away keeps getting \
         calls until {PLAIN_INACTIVE_THRESHOLD} probes fail (up to {} s), or until someone reloads",
        PLAIN_PROBE_INTERVAL_S * PLAIN_INACTIVE_THRESHOLD
    );
    if let Some(s) = status.first() {
        println!(
            "edge: {} reloads accepted, {} refused with \"Ongoing reload\" (retried)",
            s.reloads, s.refused
        );
    }
    println!(
        "calls: {} set up, {} failed; answers per node {:?}",
        out.successful(),
        out.failed(),
        out.answered_by()
    );
    tb.down().await?;
    Ok(())
}
