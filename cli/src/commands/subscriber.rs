//! Subscribers: `add`, `get`, `delete`, `set password`, `import`, `export`.
//!
//! Passwords never reach the database: sipctl stores `ha1` and `ha1b` with the
//! subscriber's domain as realm, which is what the edge's auth_db reads.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufWriter, IsTerminal, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use sipstack_db::subscriber::{
    self, Credentials, ExportStream, ImportOptions, ImportStep, PageQuery, Removal, SubscriberInfo,
};
use sipstack_db::validate::{self, shown};
use sipstack_db::DbError;

use super::{CliError, Ctx};
use crate::output::{Columns, Format};

/// Where a new password comes from. Without either flag sipctl asks on the terminal.
#[derive(Debug, Args)]
#[group(multiple = false)]
pub struct PasswordSource {
    /// Read the password from standard input (the first line).
    #[arg(long)]
    pub password_stdin: bool,
    /// Generate a random password and print it once.
    #[arg(long)]
    pub generate_password: bool,
}

/// Add a subscriber with digest credentials (ha1 and ha1b; the password is not stored).
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  sipctl add subscriber alice@example.com                      # asks for the password\n  echo 'S3cret!' | sipctl add subscriber bob@example.com --password-stdin\n  sipctl add subscriber carol@example.com --generate-password\n\nExit codes: 3 malformed address or password, 5 database unreachable, 6 the subscriber exists."
)]
pub struct AddArgs {
    /// Address of record: user@domain.
    pub aor: String,
    #[command(flatten)]
    pub password: PasswordSource,
}

/// List subscribers, or show one.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  sipctl get subscribers\n  sipctl get subscribers --domain example.com -o json\n  sipctl get subscriber alice@example.com\n  sipctl get subscriber alice --domain example.com -o yaml\n  sipctl get subscribers --limit 100 --after alice@example.com    # the next page\n\nSubscribers are ordered by domain, then user name. A full page ends with a note\n(on standard error) naming the --after value of the next page.\nJSON/YAML fields: aor, username, domain, id, digest (ha1 and ha1b set),\nplaintextPassword (the row holds a plaintext password, written by another tool).\nExit code 4 when NAME does not exist."
)]
pub struct GetArgs {
    /// One subscriber: user@domain (or user, with --domain).
    pub name: Option<String>,
    /// Only subscribers of this domain.
    #[arg(long)]
    pub domain: Option<String>,
    /// At most this many (0: all).
    #[arg(long, default_value_t = 500)]
    pub limit: i64,
    /// Start after this subscriber (user@domain), for the next page.
    #[arg(long, value_name = "AOR")]
    pub after: Option<String>,
}

/// Delete subscribers (their registrations expire as usual).
#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  sipctl delete subscriber alice@example.com bob@example.com\n\nAll or nothing: if any of them does not exist, none is deleted (exit code 4).\nThe edge authenticates against the database, so a deleted subscriber's next\nREGISTER is refused at once."
)]
pub struct DeleteArgs {
    /// Addresses of record: user@domain.
    #[arg(required = true)]
    pub aors: Vec<String>,
}

/// Change a subscriber's password.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  sipctl set password alice@example.com\n  printf '%s\\n' \"$NEWPW\" | sipctl set password alice@example.com --password-stdin\n  sipctl set password alice@example.com --generate-password\n\nThe new password counts from the subscriber's next REGISTER; existing\nregistrations stay until they expire. Exit code 4 when the subscriber does not exist."
)]
pub struct SetPasswordArgs {
    /// Address of record: user@domain.
    pub aor: String,
    #[command(flatten)]
    pub password: PasswordSource,
}

/// Import subscribers from CSV. The header names the columns: `username,domain,password`
/// or `username,domain,ha1,ha1b` (from an existing Kamailio database).
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  sipctl import subscribers users.csv\n  sipctl import subscribers kamailio-export.csv --upsert\n  sipctl import subscribers users.csv --dry-run\n\nFile format (columns in any order, quoted as CSV when a cell holds a comma):\n  username,domain,password         passwords are hashed here, never stored\n  username,domain,ha1,ha1b         hashes of another Kamailio database (realm = domain)\n\nEvery row is checked first and every bad row is reported with its line; then\nall rows are written in one transaction, or none. Subscribers that exist already\nrefuse the whole import (exit code 6) unless --upsert. Exit code 3 for a bad file."
)]
pub struct ImportArgs {
    /// CSV file (`-` for standard input).
    pub file: PathBuf,
    /// Update subscribers that exist instead of refusing the whole file.
    #[arg(long)]
    pub upsert: bool,
    /// Check every row and report; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// Export subscribers as CSV: `username,domain,ha1,ha1b` (importable again).
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  sipctl export subscribers > subscribers.csv\n  sipctl export subscribers --domain example.com -f example.csv\n\nThe hashes are password equivalents for their domain: keep the file private\n(-f writes it readable by its owner only, and only once it is complete).\nRows another tool wrote without usable hashes are left out, with a warning."
)]
pub struct ExportArgs {
    /// Only subscribers of this domain.
    #[arg(long)]
    pub domain: Option<String>,
    /// Write to this file instead of standard output.
    #[arg(short = 'f', long)]
    pub file: Option<PathBuf>,
}

// ---------------------------------------------------------------------------
// add, get, delete, set password

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Changed {
    aor: String,
    username: String,
    domain: String,
    /// Only when sipctl generated it: the one time it is shown.
    #[serde(skip_serializing_if = "Option::is_none")]
    password: Option<String>,
}

pub async fn add(ctx: &Ctx, args: AddArgs) -> anyhow::Result<()> {
    let (username, domain) = parse_aor(&args.aor)?;
    args.password.check_usable()?;
    let client = ctx.db().await?;
    let aor = format!("{username}@{domain}");
    let (password, generated) = args.password.obtain(&aor)?;
    subscriber::add(&client, &username, &domain, &password).await?;
    print_changed(
        ctx,
        Changed {
            aor,
            username,
            domain,
            password: generated.then_some(password),
        },
        "added",
    )
}

pub async fn set_password(ctx: &Ctx, args: SetPasswordArgs) -> anyhow::Result<()> {
    let (username, domain) = parse_aor(&args.aor)?;
    args.password.check_usable()?;
    let client = ctx.db().await?;
    // Before asking for a password: a missing subscriber fails at once.
    subscriber::get(&client, &username, &domain).await?;
    let aor = format!("{username}@{domain}");
    let (password, generated) = args.password.obtain(&aor)?;
    subscriber::set_password(&client, &username, &domain, &password).await?;
    print_changed(
        ctx,
        Changed {
            aor,
            username,
            domain,
            password: generated.then_some(password),
        },
        "password changed",
    )
}

fn print_changed(ctx: &Ctx, changed: Changed, what: &str) -> anyhow::Result<()> {
    ctx.output.object(&changed, |out| {
        writeln!(out, "subscriber {} {what}", changed.aor)?;
        if let Some(pw) = &changed.password {
            writeln!(
                out,
                "generated password (shown only now; it is not stored): {pw}"
            )?;
        }
        Ok(())
    })
}

/// A subscriber as `get` prints it; the field names are a stable interface.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SubscriberView {
    aor: String,
    username: String,
    domain: String,
    id: i32,
    /// ha1 and ha1b are set: the edge can authenticate this subscriber.
    digest: bool,
    /// The row holds a plaintext password (written by another tool).
    plaintext_password: bool,
}

impl From<SubscriberInfo> for SubscriberView {
    fn from(s: SubscriberInfo) -> Self {
        Self {
            aor: s.aor(),
            id: s.id,
            digest: s.digest,
            plaintext_password: s.plaintext_password,
            username: s.username,
            domain: s.domain,
        }
    }
}

const COLUMNS: Columns = Columns {
    headers: &["USERNAME", "DOMAIN", "ID", "DIGEST", "PLAINTEXT-PASSWORD"],
    narrow: 2,
};

fn row(s: &SubscriberView) -> Vec<String> {
    let yes_no = |b: bool| if b { "yes" } else { "no" }.to_string();
    vec![
        s.username.clone(),
        s.domain.clone(),
        s.id.to_string(),
        yes_no(s.digest),
        yes_no(s.plaintext_password),
    ]
}

pub async fn get(ctx: &Ctx, args: GetArgs) -> anyhow::Result<()> {
    if let Some(name) = &args.name {
        if args.after.is_some() {
            return Err(CliError::Invalid(
                "--after pages through a listing; leave it out when naming a subscriber".into(),
            )
            .into());
        }
        let (username, domain) = name_parts(name, args.domain.as_deref())?;
        let client = ctx.db().await?;
        let view = SubscriberView::from(subscriber::get(&client, &username, &domain).await?);
        return match ctx.output.format {
            Format::Json | Format::Yaml => ctx.output.object(&view, |_| Ok(())),
            Format::Table | Format::Wide | Format::Csv => ctx.output.list(&[view], &COLUMNS, row),
        };
    }
    if args.limit < 0 {
        return Err(CliError::Invalid(format!(
            "--limit {} is negative; give 0 (all) or more",
            args.limit
        ))
        .into());
    }
    let after = args
        .after
        .as_deref()
        .map(|a| parse_aor(a).context("--after"))
        .transpose()?;
    let query = PageQuery {
        domain: args.domain.clone(),
        after,
        limit: (args.limit > 0).then_some(args.limit),
    };
    let client = ctx.db().await?;
    let items: Vec<SubscriberView> = subscriber::page(&client, &query)
        .await?
        .into_iter()
        .map(SubscriberView::from)
        .collect();
    ctx.output.list(&items, &COLUMNS, row)?;
    if let (Some(limit), Some(last)) = (query.limit, items.last()) {
        if items.len() as i64 == limit && ctx.output.is_human() {
            eprintln!(
                "note: more subscribers may follow; the next page: --after {}",
                last.aor
            );
        }
    }
    Ok(())
}

pub async fn delete(ctx: &Ctx, args: DeleteArgs) -> anyhow::Result<()> {
    let aors = args
        .aors
        .iter()
        .map(|a| parse_aor(a))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut client = ctx.db().await?;
    match subscriber::remove_all(&mut client, &aors).await? {
        Removal::Removed(_) => {
            let mut seen = std::collections::HashSet::new();
            for (u, d) in &aors {
                if seen.insert((u, d)) {
                    println!("subscriber {u}@{d} deleted");
                }
            }
            Ok(())
        }
        Removal::Missing(missing) => Err(CliError::NotFound(match missing.as_slice() {
            [one] => format!("subscriber {one} does not exist; nothing was deleted"),
            many => format!(
                "subscribers {} do not exist; nothing was deleted",
                many.join(", ")
            ),
        })
        .into()),
    }
}

/// `user@domain` (or `sip:user@domain`) as checked parts; the error names the argument.
fn parse_aor(aor: &str) -> anyhow::Result<(String, String)> {
    subscriber::parse_aor(aor).with_context(|| format!("invalid address of record {}", shown(aor)))
}

/// `get`'s NAME: `user@domain`, or `user` with `--domain`.
fn name_parts(name: &str, domain: Option<&str>) -> anyhow::Result<(String, String)> {
    if name.contains('@') {
        let (username, own) = parse_aor(name)?;
        if let Some(d) = domain {
            let d = validate::domain("domain", d)?;
            if d != own {
                return Err(CliError::Invalid(format!(
                    "NAME {name} is in domain {own} but --domain says {d}; give one of them"
                ))
                .into());
            }
        }
        return Ok((username, own));
    }
    let Some(domain) = domain else {
        return Err(CliError::Invalid(format!(
            "NAME {} has no domain; write it as user@domain or add --domain",
            shown(name)
        ))
        .into());
    };
    subscriber::validate_username(name)?;
    Ok((name.to_string(), validate::domain("domain", domain)?))
}

// ---------------------------------------------------------------------------
// passwords

/// A line of standard input longer than this is not a password.
const MAX_STDIN_PASSWORD_BYTES: u64 = 4096;
const GENERATED_PASSWORD_LEN: usize = 24;
const PASSWORD_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

impl PasswordSource {
    fn prompts(&self) -> bool {
        !self.password_stdin && !self.generate_password
    }

    /// Refuses, before anything else happens, to prompt where nobody can answer.
    fn check_usable(&self) -> anyhow::Result<()> {
        if self.prompts() && !io::stdin().is_terminal() {
            return Err(CliError::Invalid(
                "no password given, and standard input is not a terminal, so sipctl cannot ask for one; \
                 pipe it in with --password-stdin or use --generate-password"
                    .into(),
            )
            .into());
        }
        Ok(())
    }

    /// The password, and whether sipctl generated it.
    fn obtain(&self, aor: &str) -> anyhow::Result<(String, bool)> {
        if self.password_stdin {
            let password = read_password_line(io::stdin().lock())?;
            subscriber::validate_password(&password)?;
            return Ok((password, false));
        }
        if self.generate_password {
            return Ok((generate_password()?, true));
        }
        self.check_usable()?;
        // rpassword reads from the terminal with echo off.
        let first = rpassword::prompt_password(format!("Password for {aor}: "))
            .context("cannot read the password from the terminal")?;
        subscriber::validate_password(&first)?;
        let again = rpassword::prompt_password("Type it again: ")
            .context("cannot read the password from the terminal")?;
        if first != again {
            return Err(
                CliError::Invalid("the two passwords differ; nothing was changed".into()).into(),
            );
        }
        Ok((first, false))
    }
}

/// The first line of `input`, without its line ending.
fn read_password_line(input: impl BufRead) -> anyhow::Result<String> {
    let mut line = Vec::new();
    input
        .take(MAX_STDIN_PASSWORD_BYTES + 1)
        .read_until(b'\n', &mut line)
        .context("cannot read the password from standard input")?;
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    } else if line.len() as u64 > MAX_STDIN_PASSWORD_BYTES {
        return Err(CliError::Invalid(
            "password: the first line of standard input is longer than 4096 bytes; give the password alone on the first line"
                .into(),
        )
        .into());
    }
    if line.is_empty() {
        return Err(CliError::Invalid(
            "password: standard input held no password (its first line is empty); give the password on the first line"
                .into(),
        )
        .into());
    }
    String::from_utf8(line).map_err(|_| {
        CliError::Invalid(
            "password: the first line of standard input is not UTF-8 text; give the password as UTF-8".into(),
        )
        .into()
    })
}

/// Letters and digits from the system's random source (about 143 bits).
fn generate_password() -> anyhow::Result<String> {
    let mut password = String::with_capacity(GENERATED_PASSWORD_LEN);
    let mut buf = [0u8; 64];
    while password.len() < GENERATED_PASSWORD_LEN {
        getrandom::fill(&mut buf)
            .map_err(|e| anyhow::anyhow!("cannot get random bytes for a password: {e}"))?;
        // Bytes at or above 248 (4 × 62) are skipped so that every character is equally likely.
        for b in buf
            .iter()
            .filter(|b| (**b as usize) < 4 * PASSWORD_ALPHABET.len())
        {
            if password.len() == GENERATED_PASSWORD_LEN {
                break;
            }
            password.push(PASSWORD_ALPHABET[*b as usize % PASSWORD_ALPHABET.len()] as char);
        }
    }
    Ok(password)
}

// ---------------------------------------------------------------------------
// import

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ImportSummary {
    file: String,
    dry_run: bool,
    rows: u64,
    inserted: u64,
    updated: u64,
    unchanged: u64,
    seconds: f64,
    rows_per_second: f64,
}

pub async fn import(ctx: &Ctx, args: ImportArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let source = if args.file.as_os_str() == "-" {
        "standard input".to_string()
    } else {
        args.file.display().to_string()
    };
    let rows = if args.file.as_os_str() == "-" {
        read_subscriber_csv(io::stdin().lock(), &source)?
    } else {
        let file = File::open(&args.file).with_context(|| format!("cannot open {source}"))?;
        read_subscriber_csv(io::BufReader::with_capacity(1 << 16, file), &source)?
    };
    let mut client = ctx.db().await?;

    let bar = if !args.no_progress && io::stderr().is_terminal() {
        let bar = ProgressBar::new(rows.len() as u64);
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} {msg:7} [{bar:30}] {human_pos}/{human_len} rows {elapsed}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message("sending");
        // keeps the spinner turning while PostgreSQL writes the table
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        bar
    } else {
        ProgressBar::hidden()
    };
    let options = ImportOptions {
        upsert: args.upsert,
        dry_run: args.dry_run,
    };
    let result = subscriber::import(&mut client, &rows, options, &mut |step| match step {
        ImportStep::Copied(n) => bar.set_position(n),
        ImportStep::Writing => bar.set_message("writing"),
    })
    .await;
    bar.finish_and_clear();
    let report = result?;

    let seconds = started.elapsed().as_secs_f64();
    let summary = ImportSummary {
        file: source,
        dry_run: args.dry_run,
        rows: report.rows,
        inserted: report.inserted,
        updated: report.updated,
        unchanged: report.unchanged,
        seconds,
        rows_per_second: if seconds > 0.0 {
            report.rows as f64 / seconds
        } else {
            0.0
        },
    };
    ctx.output.object(&summary, |out| {
        let s = &summary;
        if s.dry_run {
            writeln!(
                out,
                "dry run of {}: {} rows are valid; {} would be inserted, {} updated, {} left unchanged; nothing was changed",
                s.file, s.rows, s.inserted, s.updated, s.unchanged
            )
        } else {
            writeln!(
                out,
                "imported {}: {} rows, {} inserted, {} updated, {} unchanged in {:.2} s ({:.0} rows/s)",
                s.file, s.rows, s.inserted, s.updated, s.unchanged, s.seconds, s.rows_per_second
            )
        }
    })
}

/// Which columns of the file hold what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Password {
        username: usize,
        domain: usize,
        password: usize,
    },
    Hashes {
        username: usize,
        domain: usize,
        ha1: usize,
        ha1b: usize,
    },
}

impl Layout {
    fn from_header(header: &csv::ByteRecord) -> Result<Self, String> {
        let names: Vec<String> = header
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                let text = String::from_utf8_lossy(cell);
                // A byte order mark some spreadsheet programs write.
                let text = if i == 0 {
                    text.trim_start_matches('\u{feff}')
                } else {
                    &text
                };
                text.trim().to_ascii_lowercase()
            })
            .collect();
        let expected = "the header must name the columns username,domain,password or username,domain,ha1,ha1b \
                        (in any order)";
        let position = |name: &str| names.iter().position(|n| n == name);
        for (i, name) in names.iter().enumerate() {
            if !["username", "domain", "password", "ha1", "ha1b"].contains(&name.as_str()) {
                return Err(format!("{expected}; column {} is {}", i + 1, shown(name)));
            }
            if names[..i].contains(name) {
                return Err(format!("{expected}; column {name} is named twice"));
            }
        }
        match (
            position("username"),
            position("domain"),
            position("password"),
            position("ha1"),
            position("ha1b"),
        ) {
            (Some(username), Some(domain), Some(password), None, None) => Ok(Layout::Password {
                username,
                domain,
                password,
            }),
            (Some(username), Some(domain), None, Some(ha1), Some(ha1b)) => Ok(Layout::Hashes {
                username,
                domain,
                ha1,
                ha1b,
            }),
            _ => Err(format!("{expected}; found {}", names.join(","))),
        }
    }

    fn columns(self) -> usize {
        match self {
            Layout::Password { .. } => 3,
            Layout::Hashes { .. } => 4,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Layout::Password { .. } => "username, domain, password",
            Layout::Hashes { .. } => "username, domain, ha1, ha1b",
        }
    }
}

/// Reads a subscriber CSV and checks every row. Returns the rows, or one error
/// that lists every problem with its line.
fn read_subscriber_csv(input: impl Read, source: &str) -> anyhow::Result<Vec<Credentials>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(input);
    let mut record = csv::ByteRecord::new();
    if !reader
        .read_byte_record(&mut record)
        .with_context(|| format!("cannot read {source}"))?
    {
        return Err(CliError::Invalid(format!(
            "{source} is empty; its first line must name the columns: username,domain,password or username,domain,ha1,ha1b"
        ))
        .into());
    }
    let header_line = record.position().map_or(1, |p| p.line());
    let layout = Layout::from_header(&record).map_err(|e| {
        CliError::Invalid(format!(
            "{source} line {header_line}: {e}; nothing was imported"
        ))
    })?;

    let mut rows = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    let mut bad_rows = 0u64;
    let mut total = 0u64;
    // (username, domain) → the line it was first seen on
    let mut seen: HashMap<(String, String), u64> = HashMap::new();
    while reader
        .read_byte_record(&mut record)
        .with_context(|| format!("cannot read {source}"))?
    {
        total += 1;
        let line = record.position().map_or(0, |p| p.line());
        let before = problems.len();
        if record.len() != layout.columns() {
            problems.push(format!(
                "line {line}: {} fields, but the header names {} ({}); quote a cell that holds a comma",
                record.len(),
                layout.columns(),
                layout.describe()
            ));
            bad_rows += 1;
            continue;
        }
        let mut field = |name: &str, index: usize| -> Option<&str> {
            match std::str::from_utf8(&record[index]) {
                Ok(text) => Some(text),
                Err(_) => {
                    problems.push(format!(
                        "line {line}: {name}: the cell is not UTF-8 text; save the file as UTF-8"
                    ));
                    None
                }
            }
        };
        let checked = match layout {
            Layout::Password {
                username,
                domain,
                password,
            } => {
                let (u, d, p) = (
                    field("username", username),
                    field("domain", domain),
                    field("password", password),
                );
                let u = u.and_then(|u| {
                    note(
                        subscriber::validate_username(u).map(|()| u),
                        &mut problems,
                        line,
                    )
                });
                let d = d.and_then(|d| note(validate::domain("domain", d), &mut problems, line));
                let p = p.and_then(|p| {
                    note(
                        subscriber::validate_password(p).map(|()| p),
                        &mut problems,
                        line,
                    )
                });
                match (u, d, p) {
                    (Some(u), Some(d), Some(p)) => {
                        note(Credentials::from_password(u, &d, p), &mut problems, line)
                    }
                    _ => None,
                }
            }
            Layout::Hashes {
                username,
                domain,
                ha1,
                ha1b,
            } => {
                let (u, d) = (field("username", username), field("domain", domain));
                let (h1, h1b) = (field("ha1", ha1), field("ha1b", ha1b));
                let u = u.and_then(|u| {
                    note(
                        subscriber::validate_username(u).map(|()| u),
                        &mut problems,
                        line,
                    )
                });
                let d = d.and_then(|d| note(validate::domain("domain", d), &mut problems, line));
                let h1 =
                    h1.and_then(|h| note(subscriber::validate_ha1("ha1", h), &mut problems, line));
                let h1b = h1b
                    .and_then(|h| note(subscriber::validate_ha1("ha1b", h), &mut problems, line));
                match (u, d, h1, h1b) {
                    (Some(u), Some(d), Some(h1), Some(h1b)) => note(
                        Credentials::from_hashes(u, &d, &h1, &h1b),
                        &mut problems,
                        line,
                    ),
                    _ => None,
                }
            }
        };
        if let Some(credentials) = checked {
            let key = (
                credentials.username().to_string(),
                credentials.domain().to_string(),
            );
            match seen.get(&key) {
                Some(first) => problems.push(format!(
                    "line {line}: {} is on line {first} too; give each subscriber once",
                    credentials.aor()
                )),
                None => {
                    seen.insert(key, line);
                    rows.push(credentials);
                }
            }
        }
        if problems.len() > before {
            bad_rows += 1;
        }
    }
    if !problems.is_empty() {
        return Err(CliError::Invalid(format!(
            "{source}: {bad_rows} of {total} rows are not valid; nothing was imported:\n  {}",
            problems.join("\n  ")
        ))
        .into());
    }
    Ok(rows)
}

/// The value, or `None` with the problem recorded for its line.
fn note<T>(checked: Result<T, DbError>, problems: &mut Vec<String>, line: u64) -> Option<T> {
    match checked {
        Ok(value) => Some(value),
        Err(e) => {
            problems.push(format!("line {line}: {e}"));
            None
        }
    }
}

// ---------------------------------------------------------------------------
// export

pub async fn export(ctx: &Ctx, args: ExportArgs) -> anyhow::Result<()> {
    let domain = args
        .domain
        .as_deref()
        .map(|d| validate::domain("domain", d))
        .transpose()?;
    let client = ctx.db().await?;
    let mut rows = subscriber::export(&client, domain.as_deref()).await?;
    let outcome = match &args.file {
        None => {
            let stdout = io::stdout();
            write_export(&mut rows, BufWriter::new(stdout.lock())).await?
        }
        Some(path) => export_to_file(&mut rows, path).await?,
    };
    if let Some(path) = &args.file {
        eprintln!(
            "exported {} subscribers to {}",
            outcome.written,
            path.display()
        );
    }
    if !outcome.skipped.is_empty() {
        let shown_names: Vec<&str> = outcome
            .skipped
            .iter()
            .take(20)
            .map(String::as_str)
            .collect();
        eprintln!(
            "warning: {} subscribers were left out: another tool wrote them without valid ha1/ha1b hashes or with \
             a user name or domain sipctl does not accept ({}{}); give them a password with `sipctl set password`",
            outcome.skipped.len(),
            shown_names.join(", "),
            if outcome.skipped.len() > 20 { ", …" } else { "" }
        );
    }
    Ok(())
}

struct ExportOutcome {
    written: u64,
    skipped: Vec<String>,
}

/// Writes the CSV next to `path` first and renames it into place when it is
/// complete, so a failed export leaves no partial file.
async fn export_to_file(rows: &mut ExportStream, path: &Path) -> anyhow::Result<ExportOutcome> {
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file name", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".sipctl-{}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    // The hashes are password equivalents: readable by the owner only.
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    let result = async {
        let outcome = write_export(rows, BufWriter::new(&file)).await?;
        file.sync_all()
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        fs::rename(&tmp, path)
            .with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))?;
        anyhow::Ok(outcome)
    }
    .await;
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

async fn write_export(rows: &mut ExportStream, out: impl Write) -> anyhow::Result<ExportOutcome> {
    let mut w = csv::Writer::from_writer(out);
    w.write_record(["username", "domain", "ha1", "ha1b"])
        .context("cannot write the export")?;
    let mut outcome = ExportOutcome {
        written: 0,
        skipped: Vec::new(),
    };
    while let Some(row) = rows.next().await {
        let row = row?;
        match Credentials::from_hashes(&row.username, &row.domain, &row.ha1, &row.ha1b) {
            Ok(c) => {
                w.write_record([c.username(), c.domain(), c.ha1(), c.ha1b()])
                    .context("cannot write the export")?;
                outcome.written += 1;
            }
            Err(_) => outcome.skipped.push(
                format!("{}@{}", row.username, row.domain)
                    .escape_debug()
                    .to_string(),
            ),
        }
    }
    w.flush().context("cannot write the export")?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Vec<Credentials>, String> {
        read_subscriber_csv(text.as_bytes(), "users.csv").map_err(|e| e.to_string())
    }

    #[test]
    fn password_and_hash_files_are_read() {
        let rows =
            read("username,domain,password\nalice,Example.com,secret\nbob,example.com,\"a,b\"\n")
                .unwrap();
        assert_eq!(
            rows[0],
            Credentials::from_password("alice", "example.com", "secret").unwrap()
        );
        assert_eq!(
            rows[1],
            Credentials::from_password("bob", "example.com", "a,b").unwrap()
        );
        let a = &rows[0];
        let text = format!(
            "ha1b,ha1,domain,username\n{},{},example.com,alice\n",
            a.ha1b(),
            a.ha1().to_uppercase()
        );
        assert_eq!(read(&text).unwrap(), vec![a.clone()]);
        // a byte order mark and a header-only file
        assert_eq!(read("\u{feff}Username,Domain,Password\n").unwrap(), vec![]);
    }

    #[test]
    fn every_bad_row_is_reported_with_its_line_and_field() {
        let text = "username,domain,ha1,ha1b\n\
                    alice,example.com,0123456789abcdef0123456789abcdef,0123456789abcdef0123456789abcdef\n\
                    bad user,example.com,0123456789abcdef0123456789abcdef,0123456789abcdef0123456789abcdef\n\
                    carol,exa mple.com,xyz,0123456789abcdef0123456789abcdef\n\
                    dave,example.com,0123456789abcdef0123456789abcdef\n\
                    alice,EXAMPLE.com,0123456789abcdef0123456789abcdef,0123456789abcdef0123456789abcdef\n\
                    erin,example.com,0123456789abcdef0123456789abcdef,\n";
        let err = read(text).unwrap_err();
        assert!(
            err.starts_with("users.csv: 5 of 6 rows are not valid; nothing was imported"),
            "{err}"
        );
        assert!(err.contains("line 3: username: \"bad user\""), "{err}");
        assert!(err.contains("line 4: domain: \"exa mple.com\""), "{err}");
        assert!(
            err.contains("line 4: ha1: \"xyz\" is not an MD5 digest"),
            "{err}"
        );
        assert!(
            err.contains("line 5: 3 fields, but the header names 4"),
            "{err}"
        );
        assert!(
            err.contains("line 6: alice@example.com is on line 2 too"),
            "{err}"
        );
        assert!(
            err.contains("line 7: ha1b: \"\" is not an MD5 digest"),
            "{err}"
        );
    }

    #[test]
    fn empty_passwords_and_control_characters_are_refused() {
        let err = read(
            "username,domain,password\nalice,example.com,\nbob,example.com,\"a\nb\"\ncarol,example.com,\"a\0b\"\n",
        )
        .unwrap_err();
        assert!(
            err.contains("line 2: password: the password is empty"),
            "{err}"
        );
        assert!(
            err.contains("line 3: password: the password contains a control character"),
            "{err}"
        );
        assert!(
            err.contains("line 5: password: the password contains a control character"),
            "{err}"
        );
    }

    #[test]
    fn headers_must_name_one_of_the_two_layouts() {
        for (text, expected) in [
            ("", "users.csv is empty"),
            ("username,domain\n", "found username,domain"),
            (
                "username,domain,password,ha1\n",
                "found username,domain,password,ha1",
            ),
            ("username,domain,pass\n", "column 3 is \"pass\""),
            (
                "username,domain,password,password\n",
                "column password is named twice",
            ),
        ] {
            let err = read(text).unwrap_err();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }

    #[test]
    fn non_utf8_cells_are_reported() {
        let err = read_subscriber_csv(
            &b"username,domain,password\nal\xffice,example.com,pw\n"[..],
            "f.csv",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("line 2: username: the cell is not UTF-8 text"),
            "{err}"
        );
    }

    #[test]
    fn passwords_from_stdin_lose_only_the_line_ending() {
        assert_eq!(
            read_password_line(&b"S3cret! x\r\nmore"[..]).unwrap(),
            "S3cret! x"
        );
        assert_eq!(
            read_password_line(&b"$$\\'\" OR 1=1"[..]).unwrap(),
            "$$\\'\" OR 1=1"
        );
        assert!(read_password_line(&b"\n"[..]).is_err());
        assert!(read_password_line(&b""[..]).is_err());
        assert!(read_password_line(&vec![b'a'; 5000][..]).is_err());
    }

    #[test]
    fn generated_passwords_are_long_and_differ() {
        let a = generate_password().unwrap();
        let b = generate_password().unwrap();
        assert_eq!(a.len(), GENERATED_PASSWORD_LEN);
        assert!(a.bytes().all(|c| PASSWORD_ALPHABET.contains(&c)));
        assert_ne!(a, b);
    }

    #[test]
    fn names_take_the_domain_from_either_place() {
        assert_eq!(
            name_parts("alice@Example.com", None).unwrap(),
            ("alice".into(), "example.com".into())
        );
        assert_eq!(
            name_parts("alice", Some("example.com")).unwrap(),
            ("alice".into(), "example.com".into())
        );
        assert!(name_parts("alice", None)
            .unwrap_err()
            .to_string()
            .contains("has no domain"));
        assert!(name_parts("alice@a.com", Some("b.com")).is_err());
    }
}
