//! `edge-bench`: our rendered kamailio.cfg against Debian's stock one, on the same
//! PostgreSQL and under the same SIPp load.
//!
//! ```text
//! cargo run --release -p sipstack-e2e --bin edge-bench              # about 5 minutes
//! cargo run --release -p sipstack-e2e --bin edge-bench -- --quick   # about 40 seconds
//! cargo run --release -p sipstack-e2e --bin edge-bench -- --rounds 3  # 3 comparisons, medians (~15 min)
//! cargo run --release -p sipstack-e2e --bin edge-bench -- --duration 10 --max-rate 16000
//! cargo run --release -p sipstack-e2e --bin edge-bench -- --only register --register-rates 6000,7000,8000
//! cargo run --release -p sipstack-e2e --bin edge-bench -- --help
//! ```
//!
//! Other options: `--max-call-rate`, `--users`, `--refine`, `--workers`,
//! `--shm-mb`, `--stock-first`, `--skip-stock`, `--call-rates`, and for
//! experiments with our config `--flush-interval SECS` and `--ours-spec LINE`
//! (a line appended to our SipEdge spec, e.g. `'  nat: {enabled: false}'`);
//! the output says when ours differs from the product defaults.
//!
//! Needs (Debian 12): kamailio with kamailio-postgres-modules, postgresql-15,
//! sip-tester (SIPp 3.6.1), and /etc/kamailio/kamailio.cfg as the package ships
//! it. Runs as root or as a user that may run PostgreSQL.
//!
//! # What runs
//!
//! One PostgreSQL with our schema (brought up by the local driver in a temporary
//! directory), two media stand-ins (SIPp, 127.0.0.2 and 127.0.0.3), `--users`
//! subscribers `bench1..N` whose rows carry both `ha1`/`ha1b` (read by our config)
//! and the plaintext `password` (read by the stock config). Then, one after the
//! other, never at the same time:
//!
//! 1. **ours**: the kamailio.cfg rendered from a SipEdge spec with the product
//!    defaults (NAT handling, scanner filter, metrics, registrar flush every 10 s)
//!    plus flood protection ON with `requestsPerWindow: 65000, windowSeconds: 1`,
//!    so pike checks every request but does not ban the load generator (a ban
//!    stops the bench with an error; pike's counters are 16-bit, see
//!    [`FLOOD_REQUESTS`]); `udpWorkers` and
//!    `sharedMemoryMb` from the options (8 and 512 by default).
//! 2. **stock**: Debian's /etc/kamailio/kamailio.cfg with `WITH_MYSQL`,
//!    `WITH_AUTH`, `WITH_USRLOCDB` defined, `db_mysql` swapped for `db_postgres`
//!    and `DBURL` pointed at the same database; besides that only its listen
//!    socket, `alias="example.com"`, `children` (same as ours) and its control
//!    sockets moved to its own directory. Same `-m`/`-M` memory as ours.
//!
//! Between the two, `location` is emptied, the tables are vacuumed and the
//! bench waits 3 s, so both start alike.
//!
//! The load generator sends from 127.0.0.100: not one of the edge's addresses
//! (our flood protection skips `src_ip == myself`), not a media stand-in.
//!
//! # Loads
//!
//! - **REGISTER**: `scenarios/bench_register.xml`, REGISTER, 401 digest
//!   challenge, REGISTER with credentials, 200 and usrloc (write-back,
//!   `db_mode 2`, in PostgreSQL for both configs). The users cycle through the
//!   injection file, each with a fixed contact.
//! - **INVITE**: `scenarios/bench_uac_call.xml`, INVITE, 407, ACK, INVITE with
//!   credentials, 200 from a stand-in, ACK and BYE through the Record-Route
//!   path, no holding time (`-d 0`). Ours routes it through the dispatcher
//!   (round robin over the default media pool of the two stand-ins). The stock
//!   config has no dispatcher: its **baseline** is its own routing of an
//!   authenticated call to a registered user: `callee0` and `callee1` are
//!   registered with the two stand-ins as contacts and the calls alternate
//!   between them, so each stand-in gets half of the calls, as with ours. (The
//!   stock config also writes an `acc` log line per INVITE and BYE; that is
//!   what it does out of the box.)
//!
//! # Steps and the sustained rate
//!
//! Each load is offered at increasing rates (`-r`, for `--duration` seconds
//! each, a pause between steps): REGISTER 2 000, 4 000, 5 000, 6 000, … up to
//! `--max-rate` (12 000), INVITE 500, 1 000, … up to `--max-call-rate` (4 000),
//! each preceded by a 1 s warm-up at 100/s that must succeed completely;
//! `--quick` offers REGISTER 3 000, 6 000, 9 000 and INVITE 1 000, 2 000, 3 000
//! for 2 s each. Before each call step against ours, the bench waits until the
//! dispatcher shows both media nodes active again: an overloaded step makes our
//! failover mark them inactive (2 s failover timeout, then 503 until the next
//! OPTIONS probe), which would otherwise spoil the next step. A step is **clean** when every call of it
//! succeeded, SIPp counted **zero retransmissions** (an answer later than
//! 500 ms, SIPp's first retransmission timer: the server's queue is half a
//! second long) and the run finished within 5 % (+0.3 s) of its nominal length
//! (else the offered rate was not reached). One exception keeps a single
//! scheduling hiccup of this shared 2-core machine from ending a ramp: a step
//! whose only fault is a handful of retransmissions (at most 1 per 2 000 calls,
//! no failure) is run once more and the second run decides; both runs are
//! printed. The ramp stops at the first step that is not clean, then bisects
//! `--refine` times between the last clean rate and that one. The **sustained
//! rate** is the highest clean offered rate, so at the reported rate a whole
//! run had 0 failures and 0 retransmissions; the ratio is ours / stock of the
//! sustained rates. When no step was unclean the sustained rate is only a lower
//! bound (printed with `>=`). On this machine the sustained rate of the same
//! config varies by about ±1 000 REGISTER/s and ±400 calls/s from run to run
//! (other processes share the 2 cores): `--rounds N` repeats the comparison,
//! swapping the order (ours first, stock first, …) every round, and prints the
//! median rates and ratios.
//!
//! # Output
//!
//! A line per step and config as it ends (offered rate, completed calls,
//! failures, retransmissions, rate achieved, CPU per call, verdict), then per
//! load a side-by-side table, the sustained rates, the failure and
//! retransmission counts, `RATIO ours/stock`, and the Kamailio CPU time per call
//! of both at the highest rate both kept clean.
//!
//! Per step it also prints the CPU time per call of Kamailio (all of its
//! processes) and of PostgreSQL (postmaster and backends), and how busy the
//! load-generating SIPp was (near 100 % of a CPU, SIPp would be the limit).
//! They come from /proc/PID/stat; the host-wide /proc/stat of this VM does not
//! count busy time reliably and is not used.
//!
//! This is a measurement, not a test: it exits 0 whatever the figures are, and
//! non-zero only when something could not run (exit 130 on Ctrl-C). Every
//! process it starts is stopped at the end, on errors and on Ctrl-C.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use sipstack_e2e::bench::{
    clear_location, location_rows, postmaster_pid, register_callees, seed_subscribers, vacuum,
    BenchPlatform, Load, LoadKind, Ramp, StepResult, StockKamailio, LOAD_IP,
};
use sipstack_e2e::sipp::{free_udp_port_on, SippCommand, SippProcess};
use sipstack_e2e::testbed::{media_ip, PoolSpec, TestbedSpec};
use sipstack_edgerpc::EdgeRpc;
use tokio_postgres::Client;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Only {
    Register,
    Invite,
}

/// Our rendered kamailio.cfg against Debian's stock one: REGISTER and INVITE
/// rates, stepped up until failures or retransmissions appear.
#[derive(Debug, Parser)]
#[command(name = "edge-bench")]
struct Args {
    /// Short run (2 s steps, fewer rates, 2 000 users, no refinement): well under a minute.
    #[arg(long)]
    quick: bool,
    /// Seconds of load per step [default: 5, --quick 2].
    #[arg(long)]
    duration: Option<f64>,
    /// Highest REGISTER rate offered, per second [default: 12000, --quick 9000].
    #[arg(long)]
    max_rate: Option<u32>,
    /// Highest INVITE rate offered, calls per second [default: 4000, --quick 3000].
    #[arg(long)]
    max_call_rate: Option<u32>,
    /// Subscribers in the database (and users in SIPp's injection file) [default: 10000, --quick 2000].
    #[arg(long)]
    users: Option<u32>,
    /// Bisection steps after the first unclean step [default: 2, --quick 0].
    #[arg(long)]
    refine: Option<u32>,
    /// UDP worker processes of both Kamailios (ours: udpWorkers, stock: children).
    #[arg(long, default_value_t = 8)]
    workers: u32,
    /// Shared memory of both Kamailios, MiB (ours: sharedMemoryMb, both: -m).
    #[arg(long, default_value_t = 512)]
    shm_mb: u32,
    /// Run only one of the two loads.
    #[arg(long, value_enum)]
    only: Option<Only>,
    /// Our registrar's flush interval (registrar.flushIntervalSeconds; the
    /// product default is 10, the stock config flushes every 60).
    #[arg(long, default_value_t = 10)]
    flush_interval: u32,
    /// A line appended to our SipEdge spec, for experiments, e.g.
    /// --ours-spec '  nat: {enabled: false}' (repeatable).
    #[arg(long)]
    ours_spec: Vec<String>,
    /// Skip the stock config (measure ours only).
    #[arg(long)]
    skip_stock: bool,
    /// Run the stock config first, ours second (to see an order effect).
    #[arg(long)]
    stock_first: bool,
    /// Repeat the whole comparison this many times, swapping the order every
    /// round, and print the medians (a run's figures vary on a shared machine).
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// Explicit REGISTER rates to step through, e.g. 4000,6000,8000 (overrides the defaults and --max-rate).
    #[arg(long, value_delimiter = ',')]
    register_rates: Vec<u32>,
    /// Copy the Kamailio logs into this directory before the temporary
    /// directories are removed.
    #[arg(long)]
    keep_logs: Option<PathBuf>,
    /// Explicit INVITE rates to step through (overrides the defaults and --max-call-rate).
    #[arg(long, value_delimiter = ',')]
    call_rates: Vec<u32>,
}

/// Private memory per process, MiB: our spec's default, given to both.
const PKG_MB: u32 = 16;

/// Our flood protection during the bench: pike checks every request of the load
/// generator, which must never reach the limit. pike keeps its limit and its
/// counters in 16-bit fields (saturating at 65 534), so 65 000 per 1 s window is
/// about the highest limit it can enforce: enough for 32 000 REGISTER/s
/// (2 requests each) or 13 000 calls/s (5 requests each) from one address.
const FLOOD_REQUESTS: u32 = 65_000;
const FLOOD_WINDOW_SECONDS: u32 = 1;

/// Pause after one config is stopped and the tables are vacuumed, before the next starts.
const BETWEEN_CONFIGS: Duration = Duration::from_secs(3);

struct Plan {
    duration: Duration,
    settle: Duration,
    users: u32,
    refine: u32,
    register_rates: Vec<u32>,
    call_rates: Vec<u32>,
}

impl Plan {
    fn from(args: &Args) -> Result<Self> {
        let duration =
            Duration::from_secs_f64(args.duration.unwrap_or(if args.quick { 2.0 } else { 5.0 }));
        if duration < Duration::from_millis(500) || duration > Duration::from_secs(120) {
            bail!("--duration must be between 0.5 and 120 seconds");
        }
        let max_rate = args
            .max_rate
            .unwrap_or(if args.quick { 9000 } else { 12000 });
        let max_call_rate = args
            .max_call_rate
            .unwrap_or(if args.quick { 3000 } else { 4000 });
        let (register_steps, call_steps): (Vec<u32>, Vec<u32>) = if args.quick {
            (vec![3000, 6000, 9000], vec![1000, 2000, 3000])
        } else {
            (
                [2000, 4000]
                    .into_iter()
                    .chain((5..=100).map(|k| k * 1000))
                    .collect(),
                vec![500, 1000, 1500, 2000, 2500, 3000, 3500, 4000],
            )
        };
        let cap = |steps: Vec<u32>, max: u32| -> Vec<u32> {
            let mut v: Vec<u32> = steps.into_iter().filter(|r| *r <= max).collect();
            if v.last() != Some(&max) && max > 0 {
                v.push(max);
            }
            v
        };
        if args.rounds == 0 || args.rounds > 20 {
            bail!("--rounds must be between 1 and 20");
        }
        let users = args.users.unwrap_or(if args.quick { 2000 } else { 10000 });
        if !(2..=1_000_000).contains(&users) {
            bail!("--users must be between 2 and 1000000");
        }
        let register_rates = if args.register_rates.is_empty() {
            cap(register_steps, max_rate)
        } else {
            args.register_rates.clone()
        };
        let call_rates = if args.call_rates.is_empty() {
            cap(call_steps, max_call_rate)
        } else {
            args.call_rates.clone()
        };
        if register_rates
            .iter()
            .chain(&call_rates)
            .any(|r| *r == 0 || *r > 100_000)
        {
            bail!("rates must be between 1 and 100000 per second");
        }
        Ok(Self {
            duration,
            settle: if args.quick {
                Duration::from_millis(500)
            } else {
                Duration::from_secs(1)
            },
            users,
            refine: args.refine.unwrap_or(if args.quick { 0 } else { 2 }),
            register_rates,
            call_rates,
        })
    }
}

/// The results of one config.
#[derive(Default)]
struct ConfigResults {
    register: Option<Ramp>,
    invite: Option<Ramp>,
}

fn say(line: impl AsRef<str>) {
    println!("{}", line.as_ref());
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let started = Instant::now();
    let outcome = {
        let work = run(&args);
        tokio::pin!(work);
        tokio::select! {
            r = &mut work => Some(r),
            _ = tokio::signal::ctrl_c() => None,
        }
        // `work` is dropped here: its guards stop what it had started
    };
    let Some(outcome) = outcome else {
        eprintln!("\nedge-bench: interrupted; stopped SIPp, the Kamailios and PostgreSQL");
        sipstack_e2e::bench::kill_running_sipp();
        std::process::exit(130);
    };
    match outcome {
        Ok(()) => say(format!(
            "\nedge-bench finished in {:.0} s",
            started.elapsed().as_secs_f64()
        )),
        Err(e) => {
            sipstack_e2e::bench::kill_running_sipp();
            eprintln!("edge-bench: {e:#}");
            std::process::exit(1);
        }
    }
}

async fn run(args: &Args) -> Result<()> {
    let plan = Plan::from(args)?;
    let kamailio_version = command_first_line("kamailio", &["-v"]).await;
    let sipp_version = command_first_line("sipp", &["-v"]).await;
    say("edge-bench: our rendered kamailio.cfg vs Debian's stock /etc/kamailio/kamailio.cfg");
    say(format!(
        "  {} | {} | {} CPUs | both Kamailios: {} UDP workers, -m {} -M {}",
        kamailio_version.trim(),
        sipp_version.trim(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        args.workers,
        args.shm_mb,
        PKG_MB
    ));
    say(format!(
        "  {} s per step, {} subscribers, sustained = highest step with 0 failures, 0 retransmissions and the rate kept",
        plan.duration.as_secs_f64(),
        plan.users
    ));

    // media stand-ins: the pool members for ours, the callees' contacts for stock
    let (standin_addrs, standins) = start_standins()?;
    let spec = TestbedSpec {
        pools: vec![PoolSpec::new("media", 1, "roundRobin")
            .member(standin_addrs[0], 1, 0)
            .member(standin_addrs[1], 1, 0)],
        default_pool: Some("media".into()),
        voicemail: None,
        // the product defaults, not the tests' fast timers
        probe_interval_seconds: 10,
        inactive_threshold: 2,
        failover_timeout_ms: 2000,
        flush_interval_seconds: args.flush_interval,
        flood_requests_per_window: Some(FLOOD_REQUESTS),
        udp_workers: args.workers,
        extra_edge_spec: args.ours_spec.iter().map(|l| format!("{l}\n")).collect(),
    };
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load1: f64 = loadavg
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    say(format!(
        "  load average before the start: {}{}",
        loadavg
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        if load1 > 0.5 {
            " (other processes are running: the figures will be noisy)"
        } else {
            ""
        }
    ));
    if args.flush_interval != 10 || !args.ours_spec.is_empty() {
        say(format!(
            "  EXPERIMENT: ours differs from the product defaults: flushIntervalSeconds {}, extra spec lines {:?}",
            args.flush_interval, args.ours_spec
        ));
    }
    let t = Instant::now();
    let platform = BenchPlatform::up(&spec, args.shm_mb, FLOOD_WINDOW_SECONDS)
        .await
        .context("bringing our platform up")?;
    let db = platform.db().await?;
    let pg_version: String = db.query_one("SHOW server_version", &[]).await?.get(0);
    let subscribers = seed_subscribers(&db, plan.users).await?;
    vacuum(&db).await?;
    say(format!(
        "  PostgreSQL {pg_version}, {subscribers} subscribers; platform up in {:.1} s (state {})",
        t.elapsed().as_secs_f64(),
        platform.state.state_dir.display()
    ));

    let pg_pid = postmaster_pid(&platform.state.postgres.data_dir);
    let mut rounds = Vec::new();
    for round in 1..=args.rounds {
        // odd rounds in the order asked for, even rounds swapped
        let stock_first = args.stock_first != (round % 2 == 0) && !args.skip_stock;
        let ctx = RoundCtx {
            round,
            standin_addrs,
            standin_pids: standins.iter().map(|p| p.pid() as i32).collect(),
        };
        if args.rounds > 1 {
            say(format!(
                "\n######## round {round} of {} ({} first)",
                args.rounds,
                if stock_first { "stock" } else { "ours" }
            ));
        }
        let (ours, stock) = if stock_first {
            if platform.edge_pid().is_some() {
                // the local driver started ours: stop it while the stock one runs
                platform.stop_edge().await?;
                clear_location(&db).await?;
            }
            let stock = run_stock(&platform, &db, pg_pid, &ctx, &plan, args).await?;
            let ours = run_ours(&platform, &db, pg_pid, &ctx, &plan, args).await?;
            (ours, stock)
        } else {
            let ours = run_ours(&platform, &db, pg_pid, &ctx, &plan, args).await?;
            let stock = match args.skip_stock {
                true => ConfigResults::default(),
                false => run_stock(&platform, &db, pg_pid, &ctx, &plan, args).await?,
            };
            (ours, stock)
        };
        rounds.push((ours, stock));
    }
    drop(db);
    platform.down().await.context("stopping our platform")?;

    // ---- report
    say("\n================ results ================");
    let register_title = (
        "REGISTER/s (digest auth 401 -> 200, usrloc in PostgreSQL)",
        "ours: ha1/ha1b, NAT detection, pike on every request, scanner filter",
        "stock: WITH_AUTH (plaintext password, calculate_ha1), WITH_USRLOCDB",
    );
    let invite_title = (
        "INVITE calls/s (407 auth, 200, ACK, BYE; two stand-ins)",
        "ours: dispatcher round robin over the default media pool (2 stand-ins)",
        "stock baseline: location lookup of 2 registered callees (the stand-ins), calls alternating",
    );
    for (i, (ours, stock)) in rounds.iter().enumerate() {
        if args.rounds > 1 {
            say(format!("\n######## round {}", i + 1));
        }
        if let (Some(o), Some(s)) = (&ours.register, &stock.register) {
            report(register_title, o, s);
        }
        if let (Some(o), Some(s)) = (&ours.invite, &stock.invite) {
            report(invite_title, o, s);
        }
    }
    if args.rounds > 1 {
        say(format!("\n######## over {} rounds", args.rounds));
        let pick_register = |c: &ConfigResults| c.register.clone();
        let pick_invite = |c: &ConfigResults| c.invite.clone();
        summarize_rounds(register_title.0, &rounds, pick_register);
        summarize_rounds(invite_title.0, &rounds, pick_invite);
    }
    Ok(())
}

/// Sustained rates and ratios of every round, and their medians.
fn summarize_rounds(
    title: &str,
    rounds: &[(ConfigResults, ConfigResults)],
    pick: impl Fn(&ConfigResults) -> Option<Ramp>,
) {
    let mut ours_rates = Vec::new();
    let mut stock_rates = Vec::new();
    let mut ratios = Vec::new();
    let mut lines = Vec::new();
    for (i, (o, s)) in rounds.iter().enumerate() {
        let (Some(o), Some(s)) = (pick(o), pick(s)) else {
            continue;
        };
        let (Some(os), Some(ss)) = (o.sustained(), s.sustained()) else {
            continue;
        };
        let ratio = f64::from(os.offered) / f64::from(ss.offered);
        lines.push(format!(
            "    round {}: ours {}/s, stock {}/s, ratio {ratio:.2}; failures at those rates {} / {}",
            i + 1,
            fmt_rate(&o),
            fmt_rate(&s),
            os.failed,
            ss.failed
        ));
        ours_rates.push(f64::from(os.offered));
        stock_rates.push(f64::from(ss.offered));
        ratios.push(ratio);
    }
    if ratios.is_empty() {
        return;
    }
    say(format!("  {title}"));
    for line in lines {
        say(line);
    }
    say(format!(
        "    MEDIAN: ours {:.0}/s, stock {:.0}/s, RATIO ours/stock {:.2} (median of the rounds' ratios {:.2}; min {:.2}, max {:.2})",
        median(&ours_rates),
        median(&stock_rates),
        median(&ours_rates) / median(&stock_rates),
        median(&ratios),
        ratios.iter().cloned().fold(f64::INFINITY, f64::min),
        ratios.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
    ));
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Benchmarks our Kamailio (started if it is not running), stops it and empties `location`.
async fn run_ours(
    platform: &BenchPlatform,
    db: &Client,
    pg_pid: Option<i32>,
    ctx: &RoundCtx,
    plan: &Plan,
    args: &Args,
) -> Result<ConfigResults> {
    if platform.edge_pid().is_none() {
        platform.start_edge().await?;
    }
    say(format!(
        "\n== ours: {} (log {})",
        platform.edge_config().display(),
        platform.edge_log().display()
    ));
    let target = Target {
        name: "ours",
        addr: platform.edge(),
        kamailio_pid: platform.edge_pid(),
        postgres_pid: pg_pid,
        ban_log: Some(platform.edge_log()),
        rpc: Some(platform.state.edges[0].rpc()?),
        standin_pids: ctx.standin_pids.clone(),
        log: Some(platform.edge_log()),
    };
    let results = bench_config(&target, plan, args.only)
        .await
        .with_context(|| {
            format!(
                "benchmarking our config; last lines of its log:\n{}",
                log_tail(&platform.edge_log())
            )
        })?;
    platform.stop_edge().await?;
    keep_log(args, "ours", ctx.round, &platform.edge_log())?;
    let flushed = location_rows(db).await?;
    clear_location(db).await?;
    say(format!("  our edge stopped ({flushed} location rows flushed to PostgreSQL; location emptied and vacuumed)"));
    tokio::time::sleep(BETWEEN_CONFIGS).await;
    Ok(results)
}

/// Starts the stock Kamailio, benchmarks it, stops it and empties `location`.
async fn run_stock(
    platform: &BenchPlatform,
    db: &Client,
    pg_pid: Option<i32>,
    ctx: &RoundCtx,
    plan: &Plan,
    args: &Args,
) -> Result<ConfigResults> {
    let standin_addrs = ctx.standin_addrs;
    let mut stock_kam =
        StockKamailio::start(&platform.db_url, args.workers, args.shm_mb, PKG_MB).await?;
    say(format!(
        "\n== stock: {} (log {})",
        stock_kam.config_path().display(),
        stock_kam.log_path().display()
    ));
    if args.only != Some(Only::Register) {
        register_callees(stock_kam.addr, standin_addrs).await?;
        say(format!(
            "  callees registered with the stock config: callee0 -> {}, callee1 -> {} (its INVITE baseline: location lookup, not dispatcher)",
            standin_addrs[0], standin_addrs[1]
        ));
    }
    let target = Target {
        name: "stock",
        addr: stock_kam.addr,
        kamailio_pid: stock_kam.pid(),
        postgres_pid: pg_pid,
        ban_log: None,
        rpc: None,
        standin_pids: ctx.standin_pids.clone(),
        log: Some(stock_kam.log_path()),
    };
    let results = bench_config(&target, plan, args.only)
        .await
        .with_context(|| {
            format!(
                "benchmarking the stock config; last lines of its log:\n{}",
                stock_kam.log_tail(20)
            )
        })?;
    stock_kam.stop().await?;
    keep_log(args, "stock", ctx.round, &stock_kam.log_path())?;
    let flushed = location_rows(db).await?;
    clear_location(db).await?;
    say(format!(
        "  stock Kamailio stopped ({flushed} location rows flushed to PostgreSQL; location emptied and vacuumed)"
    ));
    tokio::time::sleep(BETWEEN_CONFIGS).await;
    Ok(results)
}

/// What every config's run in one round shares.
struct RoundCtx {
    round: u32,
    standin_addrs: [SocketAddr; 2],
    standin_pids: Vec<i32>,
}

/// Copies a Kamailio log to `--keep-logs DIR/<name>-round<N>.log`.
fn keep_log(args: &Args, name: &str, round: u32, log: &std::path::Path) -> Result<()> {
    if let Some(dir) = &args.keep_logs {
        std::fs::create_dir_all(dir)?;
        let to = dir.join(format!("{name}-round{round}.log"));
        std::fs::copy(log, &to)
            .with_context(|| format!("copying {} to {}", log.display(), to.display()))?;
        say(format!("  log kept in {}", to.display()));
    }
    Ok(())
}

/// The Kamailio under test.
struct Target {
    name: &'static str,
    addr: SocketAddr,
    kamailio_pid: Option<i32>,
    postgres_pid: Option<i32>,
    /// Our log, where a flood-protection ban would show.
    ban_log: Option<PathBuf>,
    /// Our RPC, to wait for the media nodes between call steps.
    rpc: Option<EdgeRpc>,
    standin_pids: Vec<i32>,
    /// Its log, searched for out-of-memory errors after each step.
    log: Option<PathBuf>,
}

/// Warm-up and ramps of one config.
async fn bench_config(target: &Target, plan: &Plan, only: Option<Only>) -> Result<ConfigResults> {
    let name = target.name;
    let mut results = ConfigResults::default();
    let port = free_udp_port_on(LOAD_IP)?;
    let loads = [
        (LoadKind::Register, &plan.register_rates, Only::Register),
        (LoadKind::Call, &plan.call_rates, Only::Invite),
    ];
    for (kind, rates, which) in loads {
        if only.is_some_and(|o| o != which) {
            continue;
        }
        let mut load = Load::new(kind, target.addr, port, plan.users, target.kamailio_pid)
            .with_postgres_pid(target.postgres_pid);
        if let Some(log) = &target.ban_log {
            // the ALERT line route[REQINIT] of our config writes when pike bans a source
            load = load.with_ban_marker(log.clone(), "flood from");
        }
        if let (LoadKind::Call, Some(rpc)) = (kind, &target.rpc) {
            load = load.with_dispatcher_rpc(rpc.clone());
        }
        if kind == LoadKind::Call {
            load = load.with_standin_pids(target.standin_pids.clone());
        }
        if let Some(log) = &target.log {
            load = load.with_log(log.clone());
        }
        load.warm_up().await?;
        say(format!("  {name} {}:", kind.name()));
        let ramp = load
            .ramp(rates, plan.refine, plan.duration, plan.settle, |step| {
                say(format!("    {step}"))
            })
            .await?;
        match kind {
            LoadKind::Register => results.register = Some(ramp),
            LoadKind::Call => results.invite = Some(ramp),
        }
        tokio::time::sleep(plan.settle).await;
    }
    Ok(results)
}

fn start_standins() -> Result<([SocketAddr; 2], Vec<SippProcess>)> {
    let mut addrs = Vec::new();
    let mut processes = Vec::new();
    for n in 0..2 {
        let ip = media_ip(n);
        let port = free_udp_port_on(ip)?;
        // bounded by SIPp's own timeout too, should this program die
        let process = SippCommand::media_standin(ip, port)
            .deadline(Duration::from_secs(3600))
            .spawn()?;
        addrs.push(SocketAddr::new(ip, port));
        processes.push(process);
    }
    Ok(([addrs[0], addrs[1]], processes))
}

fn fmt_rate(ramp: &Ramp) -> String {
    match ramp.sustained() {
        Some(s) if ramp.saturated => format!("{}", s.offered),
        Some(s) => format!(">={}", s.offered),
        None => "none".into(),
    }
}

fn cell(step: Option<&StepResult>) -> String {
    let ms = |v: Option<f64>| v.map(|c| format!("{c:.3}")).unwrap_or_else(|| "-".into());
    match step {
        None => format!(
            "{:>8} {:>6} {:>7} {:>6} {:>6} {:>6}",
            "-", "-", "-", "-", "-", ""
        ),
        Some(s) => format!(
            "{:>8.0} {:>6} {:>7} {:>6} {:>6} {:>6}",
            s.achieved(),
            s.failed,
            s.retransmissions,
            ms(s.cpu_per_call_ms()),
            ms(s.pg_cpu_per_call_ms()),
            if s.clean() { "ok" } else { "NOT ok" }
        ),
    }
}

fn report((title, ours_label, stock_label): (&str, &str, &str), ours: &Ramp, stock: &Ramp) {
    say(format!("\n{title}"));
    say(format!("  {ours_label}"));
    say(format!("  {stock_label}"));
    let rates: BTreeSet<u32> = ours
        .steps
        .iter()
        .chain(&stock.steps)
        .map(|s| s.offered)
        .collect();
    say("  (ok/s = completed per second; kam/pg = Kamailio/PostgreSQL CPU ms per call)");
    say(format!(
        "  {:>9} | {:<8} {:>6} {:>7} {:>6} {:>6} {:>6} | {:<8} {:>6} {:>7} {:>6} {:>6} {:>6}",
        "offered/s",
        "ours",
        "failed",
        "retrans",
        "kam",
        "pg",
        "",
        "stock",
        "failed",
        "retrans",
        "kam",
        "pg",
        ""
    ));
    for rate in &rates {
        say(format!(
            "  {:>9} | {} | {}",
            rate,
            cell(ours.step_at(*rate)),
            cell(stock.step_at(*rate))
        ));
    }
    let (o, s) = (ours.sustained(), stock.sustained());
    if !ours.transients.is_empty() || !stock.transients.is_empty() {
        let list = |r: &Ramp| {
            r.transients
                .iter()
                .map(|t| format!("{}/s ({} retrans)", t.offered, t.retransmissions))
                .collect::<Vec<_>>()
                .join(", ")
        };
        say(format!(
            "  re-run after a transient first run (the second run decides): ours [{}], stock [{}]",
            list(ours),
            list(stock)
        ));
    }
    say(format!(
        "  sustained: ours {}/s, stock {}/s   (failures at that rate: ours {}, stock {}; over all runs: ours {} failed / {} retrans, stock {} failed / {} retrans)",
        fmt_rate(ours),
        fmt_rate(stock),
        o.map_or("-".into(), |x| x.failed.to_string()),
        s.map_or("-".into(), |x| x.failed.to_string()),
        ours.total_failed(),
        ours.total_retransmissions(),
        stock.total_failed(),
        stock.total_retransmissions(),
    ));
    match (o, s) {
        (Some(o), Some(s)) => {
            let ratio = f64::from(o.offered) / f64::from(s.offered);
            let bound = match (ours.saturated, stock.saturated) {
                (true, true) => "",
                (false, true) => " (ours not saturated: a lower bound)",
                (true, false) => " (stock not saturated: an upper bound)",
                (false, false) => " (neither saturated: raise the maximum rate)",
            };
            say(format!("  RATIO ours/stock = {ratio:.2}{bound}"));
        }
        _ => say("  RATIO ours/stock: n/a (a config had no clean step)"),
    }
    // CPU per call at the highest rate both kept clean
    let common = ours
        .steps
        .iter()
        .filter(|x| x.clean())
        .filter_map(|x| {
            stock
                .step_at(x.offered)
                .filter(|y| y.clean())
                .map(|y| (x, y))
        })
        .max_by_key(|(x, _)| x.offered);
    if let Some((x, y)) = common {
        if let (Some(a), Some(b)) = (x.cpu_per_call_ms(), y.cpu_per_call_ms()) {
            say(format!(
                "  Kamailio CPU per call at {}/s (highest rate clean for both): ours {a:.3} ms, stock {b:.3} ms (ours/stock {:.2})",
                x.offered,
                a / b
            ));
        }
    }
}

async fn command_first_line(program: &str, args: &[&str]) -> String {
    match tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
    {
        Ok(out) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            text.lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or_default()
                .to_string()
        }
        Err(e) => format!("{program}: {e}"),
    }
}

fn log_tail(path: &std::path::Path) -> String {
    sipstack_local::process::log_tail(path, 20)
}
