//! Numbers (DIDs): `add`, `get`, `delete number`, `import numbers`.
//!
//! The edge looks every dialled number up among them before any route (the
//! `sipstack_dialplan` view's dialplan 3), so a change is pushed with
//! `dialplan.reload`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use serde::Serialize;
use sipstack_db::number::{self, ImportRow, NewNumber, Number, NumberMatch, NumberTarget};
use sipstack_db::validate::{self, shown};
use sipstack_db::DbError;
use sipstack_edgerpc::Reload;

use super::{CliError, Ctx};
use crate::output::Columns;

/// Where a number's calls go (exactly one).
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct TargetArgs {
    /// A subscriber's registered contacts: user@domain.
    #[arg(long, value_name = "USER@DOMAIN")]
    pub user: Option<String>,
    /// A trunk: a PBX's registered contact, or a carrier's gateways.
    #[arg(long, value_name = "NAME")]
    pub trunk: Option<String>,
    /// A media pool (MediaPool name).
    #[arg(long, value_name = "NAME")]
    pub pool: Option<String>,
}

/// Add a number of the platform; the edges reload their rules.
#[derive(Debug, Args)]
#[command(
    after_help = "The edge looks a dialled number up among the numbers before any route, for every caller \
(subscribers and trunks); exact numbers first, then the longest prefix.\n\nExamples:\n  sipctl add number \
+442071234567 --user alice@example.com\n  sipctl add number +4420799 --prefix --trunk acme-pbx --description \
'ACME block'\n  sipctl add number +442071230000 --pool media --service conference\n\nExit codes: 3 invalid input \
or an unknown target, 5 database unreachable, 6 the number exists."
)]
pub struct AddArgs {
    /// The number: an optional + and 1 to 31 digits.
    pub number: String,
    #[command(flatten)]
    pub target: TargetArgs,
    /// With --pool: the service the media node runs (echo, tone, conference, ivr).
    #[arg(long, requires = "pool")]
    pub service: Option<String>,
    /// NUMBER is a prefix: every number starting with it (a block).
    #[arg(long)]
    pub prefix: bool,
    /// Free text shown by `get numbers -o wide`.
    #[arg(long, default_value = "")]
    pub description: String,
}

/// List the platform's numbers.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  sipctl get numbers\n  sipctl get numbers -o wide\n  sipctl get number +442071234567 -o json"
)]
pub struct GetArgs {
    /// Only this number (exact and prefix entries of it).
    pub number: Option<String>,
}

/// Delete a number; the edges reload their rules.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  sipctl delete number +442071234567\n  sipctl delete number +4420799 --prefix"
)]
pub struct DeleteArgs {
    pub number: String,
    /// Delete the prefix entry (a block) of NUMBER, not the exact one.
    #[arg(long)]
    pub prefix: bool,
}

/// Import numbers from CSV, all or nothing.
#[derive(Debug, Args)]
#[command(
    after_help = "File format (a header naming the columns, in any order; quoted as CSV where a cell holds a \
comma):\n  number,kind,target,service,description\n  +442071234567,user,alice@example.com,,Alice's DID\n  \
+4420799,trunk,acme-pbx,,\n  +442071230000,pool,media,conference,Rooms\n\nkind is user (target user@domain), \
trunk (target a trunk's name) or pool (target a media pool; service optional). number, kind and target are \
required; an optional column match says exact (the default) or prefix.\n\nEvery row is checked first and every \
bad row is reported with its line and column; then every target and number is checked against the database, and \
all rows are written in one transaction, or none. Exit code 3 for a bad file, 6 when numbers exist \
already.\n\nExamples:\n  sipctl import numbers dids.csv\n  generate-dids | sipctl import numbers -"
)]
pub struct ImportArgs {
    /// CSV file (`-` for standard input).
    pub file: PathBuf,
}

/// A number as sipctl prints it; the JSON/YAML field names are stable.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct NumberView {
    pub id: i32,
    pub number: String,
    /// exact or prefix
    #[serde(rename = "match")]
    pub match_kind: &'static str,
    /// user, trunk or pool
    pub target_kind: &'static str,
    /// user@domain of a user target.
    pub target_user: Option<String>,
    pub target_trunk: Option<String>,
    pub target_pool: Option<String>,
    pub service: Option<String>,
    pub description: String,
    pub created_at: Option<String>,
}

impl From<&Number> for NumberView {
    fn from(n: &Number) -> Self {
        let (user, trunk, pool, service) = match &n.target {
            NumberTarget::User { username, domain } => {
                (Some(format!("{username}@{domain}")), None, None, None)
            }
            NumberTarget::Trunk(t) => (None, Some(t.clone()), None, None),
            NumberTarget::Pool { pool, service } => {
                (None, None, Some(pool.clone()), service.clone())
            }
        };
        Self {
            id: n.id,
            number: n.number.clone(),
            match_kind: n.match_kind.as_str(),
            target_kind: n.target.kind(),
            target_user: user,
            target_trunk: trunk,
            target_pool: pool,
            service,
            description: n.description.clone(),
            created_at: n.created_at.map(super::cdr::rfc3339),
        }
    }
}

impl NumberView {
    pub(super) fn target_text(&self) -> String {
        let or_empty = |v: &Option<String>| v.clone().unwrap_or_default();
        match self.target_kind {
            "user" => format!("user {}", or_empty(&self.target_user)),
            "trunk" => format!("trunk {}", or_empty(&self.target_trunk)),
            _ => match &self.service {
                Some(s) => format!("pool {} service {s}", or_empty(&self.target_pool)),
                None => format!("pool {}", or_empty(&self.target_pool)),
            },
        }
    }
}

/// `+4420…` for a prefix, the number itself otherwise.
pub(super) fn number_text(match_kind: NumberMatch, number: &str) -> String {
    match match_kind {
        NumberMatch::Exact => number.to_string(),
        NumberMatch::Prefix => format!("{number}…"),
    }
}

const COLUMNS: Columns = Columns {
    headers: &["NUMBER", "MATCH", "TARGET", "ID", "DESCRIPTION", "CREATED"],
    narrow: 3,
};

fn row(v: &NumberView) -> Vec<String> {
    vec![
        v.number.clone(),
        v.match_kind.to_string(),
        v.target_text(),
        v.id.to_string(),
        v.description.clone(),
        v.created_at.clone().unwrap_or_default(),
    ]
}

/// The command line's name of a field the database layer names.
fn flag_error(e: DbError) -> anyhow::Error {
    match e {
        DbError::Invalid {
            field,
            problem,
            fix,
        } if field == "number" => DbError::Invalid {
            field: "NUMBER".into(),
            problem,
            fix,
        }
        .into(),
        other => other.into(),
    }
}

fn match_of(prefix: bool) -> NumberMatch {
    if prefix {
        NumberMatch::Prefix
    } else {
        NumberMatch::Exact
    }
}

fn new_number(args: &AddArgs) -> anyhow::Result<NewNumber> {
    let t = &args.target;
    let target = if let Some(user) = &t.user {
        let (username, domain) = validate::aor("--user", user)?;
        NumberTarget::User { username, domain }
    } else if let Some(trunk) = &t.trunk {
        NumberTarget::Trunk(trunk.clone())
    } else if let Some(pool) = &t.pool {
        NumberTarget::Pool {
            pool: pool.clone(),
            service: args.service.clone(),
        }
    } else {
        return Err(
            CliError::Invalid("give where calls go: --user, --trunk or --pool".into()).into(),
        );
    };
    Ok(NewNumber {
        match_kind: match_of(args.prefix),
        number: args.number.clone(),
        target,
        description: args.description.clone(),
    })
}

pub async fn add(ctx: &Ctx, args: AddArgs) -> anyhow::Result<()> {
    let new = new_number(&args)?;
    number::validate(&new).map_err(flag_error)?;
    let db = ctx.db().await?;
    let added = number::add(&db, &new).await.map_err(flag_error)?;
    let view = NumberView::from(&added);
    ctx.output.object(&view, |out| {
        writeln!(
            out,
            "number {} added: → {}",
            number_text(added.match_kind, &added.number),
            added.target
        )
    })?;
    ctx.push_reload(Reload::Routes).await;
    Ok(())
}

pub async fn get(ctx: &Ctx, args: GetArgs) -> anyhow::Result<()> {
    if let Some(n) = &args.number {
        number::validate_number(n).map_err(flag_error)?;
    }
    let db = ctx.db().await?;
    let numbers: Vec<Number> = number::list(&db)
        .await?
        .into_iter()
        .filter(|n| args.number.as_ref().is_none_or(|want| *want == n.number))
        .collect();
    if let (Some(want), true) = (&args.number, numbers.is_empty()) {
        return Err(DbError::NotFound {
            kind: "number",
            name: want.clone(),
        }
        .into());
    }
    let views: Vec<NumberView> = numbers.iter().map(NumberView::from).collect();
    ctx.output.list(&views, &COLUMNS, row)?;
    if views.is_empty() && ctx.output.is_human() {
        eprintln!("No numbers; add one with `sipctl add number` or `sipctl import numbers`.");
    }
    Ok(())
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Deleted {
    deleted: String,
    #[serde(rename = "match")]
    match_kind: &'static str,
}

pub async fn delete(ctx: &Ctx, args: DeleteArgs) -> anyhow::Result<()> {
    let match_kind = match_of(args.prefix);
    number::validate_number(&args.number).map_err(flag_error)?;
    let db = ctx.db().await?;
    number::delete(&db, match_kind, &args.number)
        .await
        .map_err(flag_error)?;
    let result = Deleted {
        deleted: args.number.clone(),
        match_kind: match_kind.as_str(),
    };
    ctx.output.object(&result, |out| {
        writeln!(
            out,
            "number {} deleted",
            number_text(match_kind, &args.number)
        )
    })?;
    ctx.push_reload(Reload::Routes).await;
    Ok(())
}

// ---------------------------------------------------------------------------
// import

/// Which columns of the file hold what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    number: usize,
    kind: usize,
    target: usize,
    service: Option<usize>,
    description: Option<usize>,
    match_kind: Option<usize>,
    columns: usize,
}

const COLUMN_NAMES: &[&str] = &[
    "number",
    "kind",
    "target",
    "service",
    "description",
    "match",
];

impl Layout {
    fn from_header(header: &csv::StringRecord) -> Result<Self, String> {
        let names: Vec<String> = header
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                // a byte order mark some spreadsheet programs write
                let cell = if i == 0 {
                    cell.trim_start_matches('\u{feff}')
                } else {
                    cell
                };
                cell.trim().to_ascii_lowercase()
            })
            .collect();
        let expected =
            "the header must name the columns number,kind,target (and optionally service, \
                        description, match) in any order";
        for (i, name) in names.iter().enumerate() {
            if !COLUMN_NAMES.contains(&name.as_str()) {
                return Err(format!("{expected}; column {} is {}", i + 1, shown(name)));
            }
            if names[..i].contains(name) {
                return Err(format!("{expected}; column {name} is named twice"));
            }
        }
        let position = |name: &str| names.iter().position(|n| n == name);
        match (position("number"), position("kind"), position("target")) {
            (Some(number), Some(kind), Some(target)) => Ok(Layout {
                number,
                kind,
                target,
                service: position("service"),
                description: position("description"),
                match_kind: position("match"),
                columns: names.len(),
            }),
            _ => Err(format!("{expected}; found {}", names.join(","))),
        }
    }
}

/// The CSV column a database field of a number is read from.
fn column_of(field: &str) -> &str {
    match field {
        "--user" | "--trunk" | "--pool" => "target",
        "--service" => "service",
        "--description" => "description",
        other => other,
    }
}

/// One row as a number, or the problem with it (column first).
fn number_of_row(record: &csv::StringRecord, layout: &Layout) -> Result<NewNumber, String> {
    let cell = |i: Option<usize>| i.and_then(|i| record.get(i)).unwrap_or("");
    let number = cell(Some(layout.number));
    let kind = cell(Some(layout.kind));
    let target = cell(Some(layout.target));
    let service = cell(layout.service);
    let match_kind = match cell(layout.match_kind) {
        "" => NumberMatch::Exact,
        other => other.parse().map_err(|e: DbError| e.to_string())?,
    };
    let target = match kind {
        "user" => {
            let (username, domain) = validate::aor("target", target).map_err(|e| e.to_string())?;
            NumberTarget::User { username, domain }
        }
        "trunk" => NumberTarget::Trunk(target.to_string()),
        "pool" => NumberTarget::Pool {
            pool: target.to_string(),
            service: (!service.is_empty()).then(|| service.to_string()),
        },
        other => {
            return Err(format!(
                "kind: {} is not a target kind; use user, trunk or pool",
                shown(other)
            ))
        }
    };
    if !service.is_empty() && kind != "pool" {
        return Err(format!(
            "service: a {kind} target runs no media service; leave the cell empty, or send the number to a pool"
        ));
    }
    let new = NewNumber {
        match_kind,
        number: number.to_string(),
        target,
        description: cell(layout.description).to_string(),
    };
    number::validate(&new).map_err(|e| match e {
        DbError::Invalid {
            field,
            problem,
            fix,
        } => format!("{}: {problem}; {fix}", column_of(&field)),
        other => other.to_string(),
    })
}

/// Reads a number CSV and checks every row. Returns the rows, or one error that
/// lists every problem with its line.
fn read_number_csv(input: impl Read, source: &str) -> anyhow::Result<Vec<ImportRow>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(input);
    let mut record = csv::StringRecord::new();
    let header_ok = reader.read_record(&mut record).map_err(|e| {
        CliError::Invalid(format!(
            "{source}: {e}; save the file as UTF-8 CSV; nothing was imported"
        ))
    })?;
    if !header_ok {
        return Err(CliError::Invalid(format!(
            "{source} is empty; its first line must name the columns: number,kind,target,service,description"
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
    // (match, number) → the line it was first seen on
    let mut seen: HashMap<(NumberMatch, String), u64> = HashMap::new();
    loop {
        let line = reader.position().line();
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                // a cell that is not UTF-8, or broken quoting: the row is bad, the file goes on
                total += 1;
                bad_rows += 1;
                problems.push(format!("line {line}: {e}; save the file as UTF-8 CSV"));
                continue;
            }
        }
        total += 1;
        let line = record.position().map_or(line, |p| p.line());
        if record.len() != layout.columns {
            bad_rows += 1;
            problems.push(format!(
                "line {line}: {} fields, but the header names {}; quote a cell that holds a comma",
                record.len(),
                layout.columns
            ));
            continue;
        }
        match number_of_row(&record, &layout) {
            Ok(n) => match seen.get(&(n.match_kind, n.number.clone())) {
                Some(first) => {
                    bad_rows += 1;
                    problems.push(format!(
                        "line {line}: number: {} {} is on line {first} too; give each number once",
                        n.match_kind, n.number
                    ));
                }
                None => {
                    seen.insert((n.match_kind, n.number.clone()), line);
                    rows.push(ImportRow { line, number: n });
                }
            },
            Err(problem) => {
                bad_rows += 1;
                problems.push(format!("line {line}: {problem}"));
            }
        }
    }
    if !problems.is_empty() {
        const SHOWN: usize = 50;
        let more = problems.len().saturating_sub(SHOWN);
        problems.truncate(SHOWN);
        if more > 0 {
            problems.push(format!("and {more} more"));
        }
        return Err(CliError::Invalid(format!(
            "{source}: {bad_rows} of {total} rows are not valid; nothing was imported:\n  {}",
            problems.join("\n  ")
        ))
        .into());
    }
    Ok(rows)
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ImportSummary {
    file: String,
    rows: u64,
    inserted: u64,
}

pub async fn import(ctx: &Ctx, args: ImportArgs) -> anyhow::Result<()> {
    let stdin = args.file.as_os_str() == "-";
    let source = if stdin {
        "standard input".to_string()
    } else {
        args.file.display().to_string()
    };
    let rows = if stdin {
        read_number_csv(io::stdin().lock(), &source)?
    } else {
        let file = File::open(&args.file).with_context(|| format!("cannot open {source}"))?;
        read_number_csv(BufReader::new(file), &source)?
    };
    let mut db = ctx.db().await?;
    let report = number::import(&mut db, &rows).await.map_err(|e| match e {
        DbError::Invalid {
            field,
            problem,
            fix,
        } if field == "rows" => DbError::Invalid {
            field: source.clone(),
            problem,
            fix,
        }
        .into(),
        other => anyhow::Error::new(other).context(source.clone()),
    })?;
    let summary = ImportSummary {
        file: source,
        rows: report.rows,
        inserted: report.inserted,
    };
    ctx.output.object(&summary, |out| {
        writeln!(
            out,
            "imported {}: {} numbers",
            summary.file, summary.inserted
        )
    })?;
    ctx.push_reload(Reload::Routes).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Vec<ImportRow>, String> {
        read_number_csv(text.as_bytes(), "n.csv").map_err(|e| e.to_string())
    }

    #[test]
    fn a_good_file_is_read_in_any_column_order() {
        let rows = read(
            "Target,number,kind,service,description,match\n\
             alice@Example.com,+442071234567,user,,\"Alice, desk\",\n\
             acme-pbx,+4420799,trunk,,,prefix\n\
             media,+442071230000,pool,conference,Rooms,exact\n",
        )
        .unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].line, 2);
        assert_eq!(
            rows[0].number.target,
            NumberTarget::User {
                username: "alice".into(),
                domain: "example.com".into()
            }
        );
        assert_eq!(rows[0].number.description, "Alice, desk");
        assert_eq!(rows[1].number.match_kind, NumberMatch::Prefix);
        assert_eq!(
            rows[2].number.target,
            NumberTarget::Pool {
                pool: "media".into(),
                service: Some("conference".into())
            }
        );
    }

    #[test]
    fn every_bad_row_is_named_by_line_and_column() {
        let err = read(
            "number,kind,target,service\n\
             +441,user,alice@example.com,\n\
             +44 2,user,alice@example.com,\n\
             +443,carrier,x,\n\
             +444,trunk,Bad Name,\n\
             +445,user,alice@example.com,echo\n\
             +446,pool,media,karaoke\n\
             +441,trunk,pbx,\n\
             +447,trunk\n\
             +448,user,'; DROP TABLE sipstack_number; --,\n",
        )
        .unwrap_err();
        for expected in [
            "8 of 9 rows are not valid; nothing was imported",
            "line 3: number: \"+44 2\"",
            "line 4: kind: \"carrier\"",
            "line 5: target: \"Bad Name\"",
            "line 6: service: a user target",
            "line 7: service: \"karaoke\"",
            "line 8: number: exact +441 is on line 2 too",
            "line 9: 2 fields",
            "line 10: target: ",
        ] {
            assert!(err.contains(expected), "{expected:?} not in:\n{err}");
        }
    }

    #[test]
    fn headers_must_name_the_required_columns() {
        for bad in [
            "",
            "number,target\n",
            "number,kind,target,number\n",
            "number,kind,target,colour\n",
        ] {
            assert!(read(bad).is_err(), "{bad:?}");
        }
        assert_eq!(read("number,kind,target\n").unwrap(), vec![]);
    }
}
