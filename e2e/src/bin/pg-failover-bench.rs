//! `pg-failover-bench`: what a PostgreSQL failover costs the platform, for
//! Patroni's default timing and for the timing sipstack recommends, side by side.
//!
//! ```text
//! cargo run --release -p sipstack-e2e --bin pg-failover-bench                 # 5 kills per setting
//! cargo run --release -p sipstack-e2e --bin pg-failover-bench -- --kills 3 --only tuned
//! ```
//!
//! For each setting the local driver brings up a PgCluster of three Patroni
//! members (synchronous mode on), three etcd members and HAProxy, with Kamailio
//! in front, under a temporary directory. Then, one event at a time, while a
//! writer inserts a row every 20 ms through the read-write endpoint (recording
//! every acknowledged id) and SIPp sends 20 REGISTERs a second through Kamailio:
//!
//! - **SIGKILL**: the primary's Patroni and PostgreSQL are killed together (a
//!   crashed host); measured: from the kill to the first acknowledged write.
//!   The killed member is started again and rejoins before the next event.
//! - **graceful stop**: SIGTERM to the primary's Patroni (what a rolling update
//!   or `systemctl stop` does): it stops PostgreSQL and gives up the leader key;
//!   measured: the longest time without an acknowledged write.
//! - **switchover**: `sipctl db switchover`'s call to Patroni; measured as the
//!   graceful stop.
//!
//! After every event the probe table is read back: acknowledged rows missing or
//! duplicated are counted. REGISTER success is over all events.
//!
//! Anchors: Patroni's documented defaults (ttl 30 s, loop_wait 10 s,
//! retry_timeout 10 s); CloudNativePG's e2e suite asserts a write gap under 20 s
//! after deleting the primary pod with a 1 s grace period. Targets with the tuned
//! setting: graceful stop under 10 s, SIGKILL within ttl + loop_wait, switchover
//! under 5 s, no acknowledged row lost. The exit code is 1 when one is missed.
//!
//! Needs (Debian 12): postgresql-15, patroni, etcd-server, haproxy, kamailio,
//! sip-tester; runs as root (PostgreSQL then runs as the postgres user).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use sipstack_e2e::pgha::{
    add_register_users, check_no_loss, register_load, up_ha, HaSpec, PatroniTiming, Writer,
};
use sipstack_e2e::testbed::TestbedSpec;
use sipstack_patroni::SwitchoverRequest;

#[derive(Debug, Parser)]
#[command(about = "Failover cost of the platform's PostgreSQL: Patroni defaults vs tuned")]
struct Args {
    /// Primary kills (SIGKILL) per setting.
    #[arg(long, default_value_t = 5)]
    kills: u32,
    /// Graceful stops and switchovers per setting.
    #[arg(long, default_value_t = 2)]
    planned: u32,
    /// Run one setting only: default or tuned.
    #[arg(long)]
    only: Option<String>,
}

#[derive(Debug, Default)]
struct Figures {
    kill_gaps: Vec<Duration>,
    graceful_gaps: Vec<Duration>,
    switchover_gaps: Vec<Duration>,
    acknowledged: usize,
    lost: usize,
    duplicated: usize,
    registers_ok: u64,
    registers_total: u64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let settings: Vec<(&str, PatroniTiming)> = [
        ("default", PatroniTiming::DEFAULT),
        ("tuned", PatroniTiming::TUNED),
    ]
    .into_iter()
    .filter(|(name, _)| args.only.as_deref().is_none_or(|o| o == *name))
    .collect();
    let mut results = Vec::new();
    for (name, timing) in &settings {
        eprintln!(
            "== {name}: ttl {} s, loop_wait {} s, retry_timeout {} s",
            timing.ttl, timing.loop_wait, timing.retry_timeout
        );
        let figures = run_setting(*timing, &args)
            .await
            .with_context(|| format!("setting {name}"))?;
        results.push((*name, *timing, figures));
    }
    let ok = report(&results);
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}

async fn run_setting(timing: PatroniTiming, args: &Args) -> Result<Figures> {
    let ha = HaSpec {
        timing,
        ..HaSpec::default()
    };
    let (bed, cluster) = up_ha(&TestbedSpec::default(), &ha).await?;
    Writer::prepare(&bed.db_url).await?;
    add_register_users(&bed.db_url, 20).await?;
    let mut f = Figures::default();
    let event_window = Duration::from_secs(u64::from(timing.ttl + timing.loop_wait) + 15);
    let mut next_id = 1i64;

    let events: Vec<&str> = std::iter::repeat_n("kill", args.kills as usize)
        .chain(std::iter::repeat_n("graceful", args.planned as usize))
        .chain(std::iter::repeat_n("switchover", args.planned as usize))
        .collect();
    for (i, event) in events.iter().enumerate() {
        cluster
            .wait_for_all_running(Duration::from_secs(120))
            .await?;
        let old = cluster.leader().await?;
        let load = tokio::spawn(register_load(bed.edge(), 20, 20, event_window)?.run_async());
        let writer = Writer::start_at(&bed.db_url, Duration::from_millis(20), next_id);
        next_id += 1_000_000;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let at = Instant::now();
        match *event {
            "kill" => cluster.kill_member(&old)?,
            "graceful" => {
                let pid = cluster.patroni_pid(&old)?;
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                )?;
            }
            _ => {
                cluster
                    .patroni
                    .switchover(&SwitchoverRequest::default())
                    .await?;
            }
        }
        let new = cluster
            .wait_for_leader(Some(&old), Duration::from_secs(120))
            .await?;
        // let writes run on the new primary for a while, then stop with the load
        let out = load.await??;
        let log = writer.finish().await;
        // after a kill the old primary answers nothing more: the gap starts at the
        // kill; a planned event lets the writes run until the hand-over, so the gap
        // is the longest pause
        let gap = match *event {
            "kill" => log
                .first_ack_elsewhere(at, cluster.member_port(&old)?)
                .context("no write succeeded after the kill")?,
            _ => log.longest_gap(),
        };
        let loss = check_no_loss(&bed.db_url, &log).await?;
        eprintln!(
            "   {:>2}. {event:<10} {old} -> {new}: write gap {:>5.1} s, {} acknowledged, {} lost, {} duplicated, REGISTER {}/{}",
            i + 1,
            gap.as_secs_f64(),
            loss.acknowledged,
            loss.lost.len(),
            loss.duplicated.len(),
            out.successful(),
            out.successful() + out.failed()
        );
        match *event {
            "kill" => f.kill_gaps.push(gap),
            "graceful" => f.graceful_gaps.push(gap),
            _ => f.switchover_gaps.push(gap),
        }
        f.acknowledged += loss.acknowledged;
        f.lost += loss.lost.len();
        f.duplicated += loss.duplicated.len();
        f.registers_ok += out.successful();
        f.registers_total += out.successful() + out.failed();
        // the stopped member comes back (pg_rewind when it must) before the next event
        bed.up_again().await?;
    }
    bed.down().await?;
    Ok(f)
}

fn median(v: &[Duration]) -> Option<Duration> {
    let mut s = v.to_vec();
    s.sort();
    s.get(s.len() / 2).copied().filter(|_| !s.is_empty())
}

fn cell(v: &[Duration]) -> String {
    match (median(v), v.iter().max()) {
        (Some(m), Some(x)) => format!(
            "{:.1} s / {:.1} s (n={})",
            m.as_secs_f64(),
            x.as_secs_f64(),
            v.len()
        ),
        _ => "-".into(),
    }
}

/// Prints the table; returns whether the tuned setting met every target.
fn report(results: &[(&str, PatroniTiming, Figures)]) -> bool {
    println!();
    println!("PostgreSQL failover under load (write every 20 ms through HAProxy, 20 REGISTER/s through Kamailio)");
    println!("median / max of the write gap: SIGKILL to the first acknowledged write; planned events: the longest pause between writes");
    println!();
    print!("{:<34}", "");
    for (name, t, _) in results {
        print!(
            "{:<36}",
            format!(
                "{name} (ttl {}, loop {}, retry {})",
                t.ttl, t.loop_wait, t.retry_timeout
            )
        );
    }
    println!();
    let row = |label: &str, f: &dyn Fn(&Figures) -> String| {
        print!("{label:<34}");
        for (_, _, figures) in results {
            print!("{:<36}", f(figures));
        }
        println!();
    };
    row("SIGKILL of the primary", &|f| cell(&f.kill_gaps));
    row("graceful stop of the primary", &|f| cell(&f.graceful_gaps));
    row("switchover", &|f| cell(&f.switchover_gaps));
    row("acknowledged rows lost", &|f| {
        format!("{} of {}", f.lost, f.acknowledged)
    });
    row("rows duplicated", &|f| f.duplicated.to_string());
    row("REGISTER success during events", &|f| {
        if f.registers_total == 0 {
            "-".into()
        } else {
            format!(
                "{:.2} % ({} of {})",
                100.0 * f.registers_ok as f64 / f.registers_total as f64,
                f.registers_ok,
                f.registers_total
            )
        }
    });
    println!();
    println!("anchors: Patroni defaults ttl 30 s / loop_wait 10 s; CloudNativePG e2e: write gap < 20 s after deleting the primary pod (1 s grace)");
    let mut ok = true;
    if let Some((_, t, f)) = results.iter().find(|(n, _, _)| *n == "tuned") {
        let bound = Duration::from_secs(u64::from(t.ttl + t.loop_wait));
        let checks = [
            (
                "graceful stop < 10 s",
                f.graceful_gaps.iter().all(|g| *g < Duration::from_secs(10)),
            ),
            (
                "SIGKILL within ttl + loop_wait",
                f.kill_gaps.iter().all(|g| *g <= bound),
            ),
            (
                "switchover < 5 s",
                f.switchover_gaps
                    .iter()
                    .all(|g| *g < Duration::from_secs(5)),
            ),
            ("0 acknowledged rows lost", f.lost == 0 && f.duplicated == 0),
        ];
        for (what, met) in checks {
            println!(
                "target (tuned) {what}: {}",
                if met { "met" } else { "MISSED" }
            );
            ok &= met;
        }
    }
    ok
}
