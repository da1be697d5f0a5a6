//! `import-bench`: `sipctl import subscribers` against the way a Kamailio admin
//! adds subscribers today (`kamcli subscriber add`, one process per row), and
//! `sipctl get subscribers` on the imported table.
//!
//! ```text
//! cargo run --release -p sipstack-e2e --bin import-bench                       # 100 000 rows, kamcli sample of 200
//! cargo run --release -p sipstack-e2e --bin import-bench -- --rows 20000 --baseline-sample 50
//! cargo run --release -p sipstack-e2e --bin import-bench -- --sipctl target/release/sipctl
//! ```
//!
//! Which sipctl runs: `--sipctl PATH`, or else the bench runs `cargo build -p
//! sipctl` with its own profile (`--release` when the bench itself is a release
//! build) and uses the `sipctl` next to its own executable, i.e.
//! `target/release/sipctl` for the command above. Without cargo it uses that
//! binary as it is.
//!
//! What runs, one after the other, on one PostgreSQL 15 (brought up under a
//! temporary directory with the local driver's `LocalPostgres`, our schema
//! migrated, stopped and removed at the end):
//!
//! 1. **baseline**: `kamcli subscriber add userN@example.com PASSWORD` for
//!    `--baseline-sample` rows (kamcli's default: plaintext, ha1 and ha1b), one
//!    process per row as in a shell loop over a CSV file, into the empty table;
//!    its rate is extrapolated to `--rows` (timing all of them would take hours).
//!    Those rows are then deleted, so the import starts on an empty table too.
//! 2. **import**: `sipctl import subscribers FILE.csv` of `--rows` rows
//!    `username,domain,password`, timed from process start to exit (reading and
//!    checking the file, hashing, connecting, COPY, INSERT … SELECT, commit).
//!    Then the same file again with `--upsert` (every row unchanged) and, into an
//!    emptied table, the `username,domain,ha1,ha1b` form.
//! 3. **lookups**: `sipctl get subscriber AOR` (whole process) and the same query
//!    in-process on one connection; `sipctl get subscribers` pages of 500 at the
//!    start, middle and end, and a walk over every page in-process; with the
//!    query plans PostgreSQL chose. When the schema has no index on
//!    subscriber (domain, username), the pages are measured again after creating
//!    one in the temporary database, to show what such a migration would give.
//!
//! Targets: the import under 10 s and at least 50 times the baseline's rows/s.
//! The exit code is 1 when a target is missed.
//!
//! Needs (Debian 12): postgresql-15, kamcli with python3-psycopg2 (without them
//! the baseline is skipped and said so). Runs as root or as a user that may run
//! PostgreSQL.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use sipstack_db::subscriber::{self, PageQuery};
use sipstack_local::postgres::LocalPostgres;
use tokio::process::Command;
use tokio_postgres::Client;

const DOMAIN: &str = "example.com";
const TARGET_SECONDS: f64 = 10.0;
const TARGET_RATIO: f64 = 50.0;
const PAGE: i64 = 500;

#[derive(Debug, Parser)]
#[command(
    about = "sipctl import subscribers vs kamcli subscriber add, and get subscribers latency"
)]
struct Args {
    /// Rows to import.
    #[arg(long, default_value_t = 100_000)]
    rows: u32,
    /// kamcli runs timed for the baseline (0: skip the baseline).
    #[arg(long, default_value_t = 200)]
    baseline_sample: u32,
    /// The sipctl binary to run (default: build it and use the one next to this bench).
    #[arg(long)]
    sipctl: Option<PathBuf>,
    /// Lookups per latency figure.
    #[arg(long, default_value_t = 20)]
    lookups: u32,
}

fn say(line: impl AsRef<str>) {
    println!("{}", line.as_ref());
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let dir = match tempfile::Builder::new()
        .prefix("sipstack-import-bench-")
        .tempdir()
    {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("import-bench: cannot create a temporary directory: {e}");
            std::process::exit(1);
        }
    };
    let pg = LocalPostgres::new(dir.path().join("pg"), free_port().unwrap_or(0), 15);
    let outcome = {
        let work = run(&args, dir.path(), &pg);
        tokio::pin!(work);
        tokio::select! {
            r = &mut work => Some(r),
            _ = tokio::signal::ctrl_c() => None,
        }
    };
    if let Err(e) = pg.stop().await {
        eprintln!("import-bench: stopping PostgreSQL: {e}");
    }
    drop(dir);
    match outcome {
        None => {
            eprintln!(
                "\nimport-bench: interrupted; PostgreSQL stopped, temporary directory removed"
            );
            std::process::exit(130);
        }
        Some(Ok(true)) => {}
        Some(Ok(false)) => std::process::exit(1),
        Some(Err(e)) => {
            eprintln!("import-bench: {e:#}");
            std::process::exit(1);
        }
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

/// Returns whether every target was met.
async fn run(args: &Args, dir: &Path, pg: &LocalPostgres) -> Result<bool> {
    if args.rows == 0 || args.lookups == 0 {
        bail!("--rows and --lookups must be at least 1");
    }
    let sipctl = locate_sipctl(args).await?;
    say(format!(
        "import-bench: {} rows; sipctl {}",
        args.rows,
        sipctl.display()
    ));

    // PostgreSQL runs as the postgres user when the bench runs as root.
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    pg.init().await?;
    pg.start().await?;
    let db_url = pg.ensure_database("sipstack", "sipstack").await?;
    let mut db = sipstack_db::connect(&db_url, Duration::from_secs(10)).await?;
    sipstack_db::migrate(&mut db).await?;
    let server: String = db.query_one("SHOW server_version", &[]).await?.get(0);
    say(format!(
        "  PostgreSQL {server} on 127.0.0.1:{} (defaults), {} CPUs",
        pg.port(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    ));

    let passwords_csv = dir.join("subscribers.csv");
    let hashes_csv = dir.join("subscribers-ha1.csv");
    write_csvs(args.rows, &passwords_csv, &hashes_csv)?;
    let ctl = Sipctl {
        path: sipctl,
        db_url: db_url.clone(),
        config: dir.join("sipctl-config.yaml"),
    };

    // 1. baseline, into the empty table
    let baseline = if args.baseline_sample == 0 {
        say("\nbaseline: skipped (--baseline-sample 0)");
        None
    } else {
        match kamcli_baseline(args, dir, &db_url).await {
            Ok(rate) => Some(rate),
            Err(e) => {
                say(format!("\nbaseline: skipped: {e:#}"));
                None
            }
        }
    };
    db.batch_execute("TRUNCATE subscriber").await?;
    vacuum(&db).await?;

    // 2. imports
    say(format!(
        "\nsipctl import subscribers ({} rows, username,domain,password; empty table)",
        args.rows
    ));
    let (elapsed, summary) = ctl.import(&passwords_csv, &[]).await?;
    let rate = f64::from(args.rows) / elapsed.as_secs_f64();
    say(format!(
        "  {:.2} s wall clock, {:.0} rows/s (sipctl's own summary: {} inserted, {:.0} rows/s)",
        elapsed.as_secs_f64(),
        rate,
        summary["inserted"],
        summary["rowsPerSecond"].as_f64().unwrap_or(0.0)
    ));
    if summary["inserted"].as_u64() != Some(u64::from(args.rows)) {
        bail!(
            "the import inserted {} rows, not {}",
            summary["inserted"],
            args.rows
        );
    }
    vacuum(&db).await?;
    let (again, summary) = ctl.import(&passwords_csv, &["--upsert"]).await?;
    say(format!(
        "  the same file again with --upsert: {:.2} s, {:.0} rows/s ({} unchanged)",
        again.as_secs_f64(),
        f64::from(args.rows) / again.as_secs_f64(),
        summary["unchanged"]
    ));
    db.batch_execute("TRUNCATE subscriber").await?;
    vacuum(&db).await?;
    let (hashed, _) = ctl.import(&hashes_csv, &[]).await?;
    say(format!(
        "  username,domain,ha1,ha1b form, empty table: {:.2} s, {:.0} rows/s",
        hashed.as_secs_f64(),
        f64::from(args.rows) / hashed.as_secs_f64()
    ));
    vacuum(&db).await?;

    // 3. lookups on the full table
    lookups(args, &ctl, &db).await?;
    if !has_domain_username_index(&db).await? {
        say("\n  the schema has no index on subscriber (domain, username), the listing's order: each page sorts");
        say("  the matching rows. With that index, created here in the temporary database only:");
        db.batch_execute(
            "CREATE INDEX bench_subscriber_domain_username_idx ON subscriber (domain, username)",
        )
        .await?;
        vacuum(&db).await?;
        pages(args, &ctl, &db).await?;
    }

    // verdict
    say("\nsummary");
    let mut met = true;
    let in_time = elapsed.as_secs_f64() < TARGET_SECONDS;
    met &= in_time;
    say(format!(
        "  import of {} rows: {:.2} s ({:.0} rows/s); target under {TARGET_SECONDS} s: {}",
        args.rows,
        elapsed.as_secs_f64(),
        rate,
        if in_time { "met" } else { "MISSED" }
    ));
    match baseline {
        Some(b) => {
            let ratio = rate / b.rate;
            met &= ratio >= TARGET_RATIO;
            say(format!(
                "  kamcli subscriber add: {:.1} rows/s (measured on {} rows, {:.1} s; {} rows would take about {:.0} s = {:.1} h)",
                b.rate,
                b.sample,
                b.elapsed.as_secs_f64(),
                args.rows,
                f64::from(args.rows) / b.rate,
                f64::from(args.rows) / b.rate / 3600.0
            ));
            say(format!(
                "  sipctl / kamcli: {ratio:.0}x; target at least {TARGET_RATIO}x: {}",
                if ratio >= TARGET_RATIO {
                    "met"
                } else {
                    "MISSED"
                }
            ));
        }
        None => say("  no baseline: the ratio target was not checked"),
    }
    Ok(met)
}

struct Sipctl {
    path: PathBuf,
    db_url: String,
    config: PathBuf,
}

impl Sipctl {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.path);
        cmd.args(args)
            .env("SIPCTL_CONFIG", &self.config)
            .env("SIPCTL_DB_URL", &self.db_url)
            .env_remove("SIPCTL_CONTEXT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Runs sipctl; its wall-clock time and standard output.
    async fn run(&self, args: &[&str]) -> Result<(Duration, String)> {
        let started = Instant::now();
        let out = self
            .command(args)
            .output()
            .await
            .with_context(|| format!("running {}", self.path.display()))?;
        let elapsed = started.elapsed();
        if !out.status.success() {
            bail!(
                "sipctl {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok((elapsed, String::from_utf8_lossy(&out.stdout).into_owned()))
    }

    async fn import(&self, file: &Path, extra: &[&str]) -> Result<(Duration, serde_json::Value)> {
        let file = file.to_string_lossy();
        let mut args = vec![
            "import",
            "subscribers",
            file.as_ref(),
            "--no-progress",
            "-o",
            "json",
        ];
        args.extend_from_slice(extra);
        let (elapsed, stdout) = self.run(&args).await?;
        let summary =
            serde_json::from_str(&stdout).with_context(|| format!("sipctl's summary: {stdout}"))?;
        Ok((elapsed, summary))
    }
}

/// Builds sipctl with the bench's own profile and returns its path.
async fn locate_sipctl(args: &Args) -> Result<PathBuf> {
    if let Some(path) = &args.sipctl {
        if !path.is_file() {
            bail!("--sipctl {} is not a file", path.display());
        }
        return Ok(path.clone());
    }
    let own = std::env::current_exe().context("cannot find the bench's own executable")?;
    let bin_dir = own
        .parent()
        .context("the bench's executable has no directory")?;
    let sibling = bin_dir.join("sipctl");
    let release = bin_dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace directory")?;
    let mut build = Command::new(&cargo);
    build
        .args(["build", "-p", "sipctl", "--quiet"])
        .current_dir(workspace);
    if release {
        build.arg("--release");
    }
    say(format!(
        "building sipctl: cargo build -p sipctl{}",
        if release { " --release" } else { "" }
    ));
    match build.status().await {
        Ok(status) if status.success() => {}
        Ok(status) => bail!("cargo build -p sipctl failed ({status})"),
        Err(e) if sibling.is_file() => {
            say(format!(
                "  cargo is not available ({e}); using {} as it is",
                sibling.display()
            ));
        }
        Err(e) => bail!("cannot run cargo to build sipctl ({e}); give --sipctl PATH"),
    }
    if !sibling.is_file() {
        bail!(
            "{} does not exist after the build; give --sipctl PATH",
            sibling.display()
        );
    }
    Ok(sibling)
}

fn user(i: u32) -> String {
    format!("bench{i:06}")
}

fn write_csvs(rows: u32, passwords: &Path, hashes: &Path) -> Result<()> {
    let mut p = String::with_capacity(rows as usize * 36);
    let mut h = String::with_capacity(rows as usize * 90);
    p.push_str("username,domain,password\n");
    h.push_str("username,domain,ha1,ha1b\n");
    for i in 0..rows {
        let (u, pw) = (user(i), format!("pw-{i}-x"));
        let _ = writeln!(p, "{u},{DOMAIN},{pw}");
        let _ = writeln!(
            h,
            "{u},{DOMAIN},{},{}",
            subscriber::ha1(&u, DOMAIN, &pw),
            subscriber::ha1b(&u, DOMAIN, DOMAIN, &pw)
        );
    }
    std::fs::write(passwords, p).with_context(|| format!("writing {}", passwords.display()))?;
    std::fs::write(hashes, h).with_context(|| format!("writing {}", hashes.display()))?;
    Ok(())
}

async fn vacuum(db: &Client) -> Result<()> {
    db.batch_execute("VACUUM (ANALYZE) subscriber")
        .await
        .context("vacuum")?;
    Ok(())
}

struct Baseline {
    sample: u32,
    elapsed: Duration,
    rate: f64,
}

/// `kamcli subscriber add` once per row, as a shell loop over a file would.
async fn kamcli_baseline(args: &Args, dir: &Path, db_url: &str) -> Result<Baseline> {
    let python = Command::new("/usr/bin/python3")
        .args(["-c", "import sqlalchemy, psycopg2"])
        .status()
        .await;
    if !python.is_ok_and(|s| s.success()) {
        bail!("kamcli reaches PostgreSQL through SQLAlchemy and psycopg2; apt-get install kamcli python3-psycopg2");
    }
    let config = dir.join("kamcli.ini");
    let url = db_url.replacen("postgres://", "postgresql+psycopg2://", 1);
    std::fs::write(
        &config,
        format!("[main]\ndomain={DOMAIN}\n\n[db]\nrwurl={url}\nrourl={url}\n"),
    )?;
    let config = config.to_string_lossy().into_owned();
    say(format!(
        "\nbaseline: kamcli subscriber add, one process per row, {} rows into the empty table",
        args.baseline_sample
    ));
    let started = Instant::now();
    for i in 0..args.baseline_sample {
        let aor = format!("{}@{DOMAIN}", user(i));
        let out = Command::new("kamcli")
            .args([
                "--no-default-configs",
                "-c",
                &config,
                "subscriber",
                "add",
                &aor,
                &format!("pw-{i}-x"),
            ])
            .stdin(Stdio::null())
            .output()
            .await
            .context("running kamcli")?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() || stderr.contains("Traceback") {
            bail!(
                "kamcli subscriber add {aor} failed ({}): {stderr}",
                out.status
            );
        }
    }
    let elapsed = started.elapsed();
    let db = sipstack_db::connect(db_url, Duration::from_secs(10)).await?;
    let count: i64 = db
        .query_one("SELECT count(*) FROM subscriber", &[])
        .await?
        .get(0);
    if count != i64::from(args.baseline_sample) {
        bail!("kamcli left {count} rows, not {}", args.baseline_sample);
    }
    let rate = f64::from(args.baseline_sample) / elapsed.as_secs_f64();
    say(format!(
        "  {:.1} s, {rate:.1} rows/s",
        elapsed.as_secs_f64()
    ));
    Ok(Baseline {
        sample: args.baseline_sample,
        elapsed,
        rate,
    })
}

fn stats(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let pick = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "median {:.2} ms, p95 {:.2} ms, max {:.2} ms (n={})",
        ms(pick(0.5)),
        ms(pick(0.95)),
        ms(pick(1.0)),
        samples.len()
    )
}

/// A fixed pseudo-random sequence of user numbers (no randomness needed, only spread).
fn spread(n: u32, rows: u32) -> impl Iterator<Item = u32> {
    (0..n).map(move |k| (k.wrapping_mul(2_654_435_761) ^ 0x5bd1_e995) % rows)
}

async fn lookups(args: &Args, ctl: &Sipctl, db: &Client) -> Result<()> {
    let rows = args.rows;
    say(format!("\nsipctl get subscribers on the {rows}-row table"));

    // one subscriber by AOR
    let mut process = Vec::new();
    for i in spread(args.lookups, rows) {
        let aor = format!("{}@{DOMAIN}", user(i));
        let (elapsed, out) = ctl.run(&["get", "subscriber", &aor, "-o", "json"]).await?;
        if !out.contains(&aor) {
            bail!("get subscriber {aor} printed {out}");
        }
        process.push(elapsed);
    }
    say(format!(
        "  get subscriber AOR, whole sipctl process (start, connect, query, print): {}",
        stats(process)
    ));
    let mut query = Vec::new();
    for i in spread(1000, rows) {
        let started = Instant::now();
        subscriber::get(db, &user(i), DOMAIN).await?;
        query.push(started.elapsed());
    }
    say(format!(
        "  the same lookup in-process on one connection: {}",
        stats(query)
    ));
    say(format!(
        "    plan: {}",
        plan(
            db,
            "EXPLAIN SELECT id FROM subscriber WHERE username = $1 AND domain = $2",
            &[&user(rows / 2), &DOMAIN]
        )
        .await
    ));

    pages(args, ctl, db).await
}

/// `get subscribers` pages: whole sipctl processes, then a walk over every page in-process.
async fn pages(args: &Args, ctl: &Sipctl, db: &Client) -> Result<()> {
    let rows = args.rows;
    let middle = format!("{}@{DOMAIN}", user(rows / 2));
    let last_page_after = format!("{}@{DOMAIN}", user(rows.saturating_sub(PAGE as u32 + 1)));
    for (label, after) in [
        ("first page", None),
        ("middle page", Some(&middle)),
        ("last page", Some(&last_page_after)),
    ] {
        let mut samples = Vec::new();
        for _ in 0..args.lookups.min(10) {
            let limit = PAGE.to_string();
            let mut a = vec![
                "get",
                "subscribers",
                "--limit",
                limit.as_str(),
                "-o",
                "json",
            ];
            if let Some(after) = after {
                a.extend(["--after", after.as_str()]);
            }
            samples.push(ctl.run(&a).await?.0);
        }
        say(format!(
            "  get subscribers --limit {PAGE} ({label}), whole process: {}",
            stats(samples)
        ));
    }
    let started = Instant::now();
    let mut pages = Vec::new();
    let mut after: Option<(String, String)> = None;
    let mut seen = 0usize;
    loop {
        let t = Instant::now();
        let page = subscriber::page(
            db,
            &PageQuery {
                domain: None,
                after: after.clone(),
                limit: Some(PAGE),
            },
        )
        .await?;
        pages.push(t.elapsed());
        seen += page.len();
        match page.last() {
            Some(last) => after = Some((last.username.clone(), last.domain.clone())),
            None => break,
        }
    }
    if seen != rows as usize {
        bail!("the page walk saw {seen} subscribers, not {rows}");
    }
    say(format!(
        "  every page of {PAGE} in-process ({} pages, {:.2} s in all): {}",
        pages.len(),
        started.elapsed().as_secs_f64(),
        stats(pages)
    ));
    // the statement of sipstack_db::subscriber::page with --after
    say(format!(
        "    plan: {}",
        plan(
            db,
            "EXPLAIN SELECT id, username, domain FROM subscriber WHERE (domain, username) > ($2, $3) \
             ORDER BY domain, username LIMIT $1",
            &[&PAGE, &DOMAIN, &user(rows / 2)]
        )
        .await
    ));
    Ok(())
}

/// Whether some index of subscriber starts with (domain, username).
async fn has_domain_username_index(db: &Client) -> Result<bool> {
    let row = db
        .query_one(
            "SELECT count(*) FROM pg_indexes
             WHERE tablename = 'subscriber' AND indexdef LIKE '%(domain, username%'",
            &[],
        )
        .await?;
    Ok(row.get::<_, i64>(0) > 0)
}

/// The plan's lines joined, e.g. `Limit -> Index Scan using … on subscriber`.
async fn plan(
    db: &Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> String {
    match db.query(sql, params).await {
        Ok(rows) => rows
            .iter()
            .map(|r| r.get::<_, String>(0))
            .map(|l| {
                l.trim()
                    .trim_start_matches("->")
                    .trim()
                    .split("  (cost")
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect::<Vec<_>>()
            .join(" -> "),
        Err(e) => format!("(no plan: {e})"),
    }
}
