//! The platform's numbers (`sipstack_number`, migration 0006): DIDs and blocks
//! of them, and where their calls go. The edge looks a dialled number up here
//! (dialplan 3) before any route, for every caller.
//!
//! Imports stream their rows with COPY into a temporary table, check them there
//! against the subscribers, trunks, pools and numbers, and write them with one
//! INSERT … SELECT: all or nothing.

use std::collections::HashMap;
use std::fmt;
use std::pin::pin;
use std::str::FromStr;
use std::time::SystemTime;

use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{GenericClient, Row};

use crate::route::SERVICES;
use crate::trunk;
use crate::validate::{self, invalid, shown};
use crate::DbError;

/// How a number matches the dialled number.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum NumberMatch {
    /// The dialled number is this number.
    #[default]
    Exact,
    /// The dialled number starts with it: a block of numbers.
    Prefix,
}

impl NumberMatch {
    pub fn as_str(self) -> &'static str {
        match self {
            NumberMatch::Exact => "exact",
            NumberMatch::Prefix => "prefix",
        }
    }
}

impl fmt::Display for NumberMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NumberMatch {
    type Err = DbError;

    fn from_str(s: &str) -> Result<Self, DbError> {
        match s {
            "exact" => Ok(NumberMatch::Exact),
            "prefix" => Ok(NumberMatch::Prefix),
            _ => Err(invalid(
                "match",
                format!("{} is not a number match", shown(s)),
                "use exact or prefix",
            )),
        }
    }
}

/// Where a number's calls go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NumberTarget {
    /// The registered contacts of a subscriber.
    User { username: String, domain: String },
    /// A trunk: a PBX's registered contact, or a carrier's gateways.
    Trunk(String),
    /// A media pool, optionally running one of [`SERVICES`].
    Pool {
        pool: String,
        service: Option<String>,
    },
}

impl NumberTarget {
    pub fn kind(&self) -> &'static str {
        match self {
            NumberTarget::User { .. } => "user",
            NumberTarget::Trunk(_) => "trunk",
            NumberTarget::Pool { .. } => "pool",
        }
    }
}

impl fmt::Display for NumberTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NumberTarget::User { username, domain } => write!(f, "user {username}@{domain}"),
            NumberTarget::Trunk(t) => write!(f, "trunk {t}"),
            NumberTarget::Pool {
                pool,
                service: Some(s),
            } => write!(f, "pool {pool} service {s}"),
            NumberTarget::Pool {
                pool,
                service: None,
            } => write!(f, "pool {pool}"),
        }
    }
}

/// A number to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNumber {
    pub match_kind: NumberMatch,
    /// `+` and 1 to 31 digits.
    pub number: String,
    pub target: NumberTarget,
    pub description: String,
}

/// A stored number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Number {
    pub id: i32,
    pub match_kind: NumberMatch,
    pub number: String,
    pub target: NumberTarget,
    pub description: String,
    pub created_at: Option<SystemTime>,
}

/// Checks a dialled number's form as a number of the platform.
pub fn validate_number(number: &str) -> Result<(), DbError> {
    if !validate::NUMBER.is_match(number) {
        return Err(invalid(
            "number",
            format!("{} is not a number sipstack accepts", shown(number)),
            "use an optional + and 1 to 31 digits, e.g. +442071234567",
        ));
    }
    Ok(())
}

/// Checks a service name against the media services.
pub(crate) fn validate_service(field: &str, service: &str) -> Result<(), DbError> {
    if !validate::SERVICE.is_match(service) || !SERVICES.iter().any(|(n, _)| *n == service) {
        let names: Vec<&str> = SERVICES.iter().map(|(n, _)| *n).collect();
        return Err(invalid(
            field,
            format!("{} is not a media service", shown(service)),
            format!("use one of {}", names.join(", ")),
        ));
    }
    Ok(())
}

/// Checks a number the way the table's CHECK constraints do, with errors that
/// name the sipctl flag (`number`, `--user`, `--trunk`, `--pool`, `--service`,
/// `--description`). Returns it normalised (the user's domain lower-cased).
pub fn validate(n: &NewNumber) -> Result<NewNumber, DbError> {
    validate_number(&n.number)?;
    let target = match &n.target {
        NumberTarget::User { username, domain } => {
            if !validate::USERNAME.is_match(username) {
                return Err(invalid(
                    "--user",
                    format!(
                        "{} is not a SIP user name sipstack accepts",
                        shown(username)
                    ),
                    "write it as user@domain of a subscriber, e.g. alice@example.com",
                ));
            }
            NumberTarget::User {
                username: username.clone(),
                domain: validate::domain("--user", domain)?,
            }
        }
        NumberTarget::Trunk(t) => {
            validate::name("--trunk", t)?;
            n.target.clone()
        }
        NumberTarget::Pool { pool, service } => {
            validate::name("--pool", pool)?;
            if let Some(s) = service {
                validate_service("--service", s)?;
            }
            n.target.clone()
        }
    };
    validate::one_line_text("--description", &n.description, 255)?;
    Ok(NewNumber {
        target,
        ..n.clone()
    })
}

const NUMBER_COLUMNS: &str = "n.id, n.match_kind::text, n.number::text, n.target_kind::text, \
     n.target_username::text, n.target_domain::text, n.target_trunk::text, n.target_pool::text, \
     n.service::text, n.description::text, n.created_at";

fn number_from_row(row: &Row) -> Result<Number, DbError> {
    let kind: &str = row.get(3);
    let target = match kind {
        "user" => NumberTarget::User {
            username: row.get::<_, Option<String>>(4).unwrap_or_default(),
            domain: row.get::<_, Option<String>>(5).unwrap_or_default(),
        },
        "trunk" => NumberTarget::Trunk(row.get::<_, Option<String>>(6).unwrap_or_default()),
        _ => NumberTarget::Pool {
            pool: row.get::<_, Option<String>>(7).unwrap_or_default(),
            service: row.get(8),
        },
    };
    Ok(Number {
        id: row.get(0),
        match_kind: row.get::<_, &str>(1).parse()?,
        number: row.get(2),
        target,
        description: row.get(9),
        created_at: row.get(10),
    })
}

/// The columns of a target: (kind, username, domain, trunk, pool, service).
type TargetColumns<'a> = (
    &'a str,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
);

fn target_columns(t: &NumberTarget) -> TargetColumns<'_> {
    match t {
        NumberTarget::User { username, domain } => (
            "user",
            Some(username.as_str()),
            Some(domain.as_str()),
            None,
            None,
            None,
        ),
        NumberTarget::Trunk(trunk) => ("trunk", None, None, Some(trunk.as_str()), None, None),
        NumberTarget::Pool { pool, service } => (
            "pool",
            None,
            None,
            None,
            Some(pool.as_str()),
            service.as_deref(),
        ),
    }
}

fn taken(kind: NumberMatch, number: &str) -> DbError {
    DbError::AlreadyExists {
        kind: match kind {
            NumberMatch::Exact => "number",
            NumberMatch::Prefix => "number prefix",
        },
        name: number.to_string(),
    }
}

fn not_a_subscriber(username: &str, domain: &str) -> DbError {
    invalid(
        "--user",
        format!("{username}@{domain} is not a subscriber"),
        format!("add it with `sipctl add subscriber {username}@{domain}` first"),
    )
}

async fn pool_names(client: &impl GenericClient) -> Result<Vec<String>, DbError> {
    let rows = client
        .query(
            "SELECT name::text FROM sipstack_media_pool ORDER BY name",
            &[],
        )
        .await
        .map_err(DbError::query("cannot list media pools"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

fn unknown_pool(pool: &str, known: &[String]) -> DbError {
    invalid(
        "--pool",
        format!("media pool {} does not exist", shown(pool)),
        if known.is_empty() {
            "no media pool exists yet: apply a MediaPool first".to_string()
        } else {
            format!("name one of the media pools: {}", known.join(", "))
        },
    )
}

/// Refuses a target that does not exist, naming what does.
async fn check_target(client: &impl GenericClient, target: &NumberTarget) -> Result<(), DbError> {
    match target {
        NumberTarget::User { username, domain } => {
            let row = client
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM subscriber WHERE username = $1 AND domain = $2)",
                    &[username, domain],
                )
                .await
                .map_err(DbError::query("cannot look up the subscriber"))?;
            if !row.get::<_, bool>(0) {
                return Err(not_a_subscriber(username, domain));
            }
        }
        NumberTarget::Trunk(t) => {
            let known = trunk::names(client).await?;
            if !known.contains(t) {
                return Err(trunk::unknown_trunk("--trunk", t, &known));
            }
        }
        NumberTarget::Pool { pool, .. } => {
            let known = pool_names(client).await?;
            if !known.contains(pool) {
                return Err(unknown_pool(pool, &known));
            }
        }
    }
    Ok(())
}

/// Adds a number. The edges use it after their next `dialplan.reload`.
pub async fn add(client: &impl GenericClient, number: &NewNumber) -> Result<Number, DbError> {
    let n = validate(number)?;
    check_target(client, &n.target).await?;
    let (kind, username, domain, trunk_name, pool, service) = target_columns(&n.target);
    let result = client
        .query_one(
            &format!(
                "INSERT INTO sipstack_number AS n (match_kind, number, target_kind, target_username,
                     target_domain, target_trunk, target_pool, service, description)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                 RETURNING {NUMBER_COLUMNS}"
            ),
            &[
                &n.match_kind.as_str(),
                &n.number,
                &kind,
                &username,
                &domain,
                &trunk_name,
                &pool,
                &service,
                &n.description,
            ],
        )
        .await;
    match result {
        Ok(row) => number_from_row(&row),
        Err(e) => Err(match e.as_db_error().and_then(|d| d.constraint()) {
            Some("sipstack_number_unique") => taken(n.match_kind, &n.number),
            // the target went away between the check and the insert
            Some("sipstack_number_user_fk") => {
                not_a_subscriber(username.unwrap_or_default(), domain.unwrap_or_default())
            }
            Some("sipstack_number_target_trunk_fkey") => {
                trunk::unknown_trunk("--trunk", trunk_name.unwrap_or_default(), &[])
            }
            Some("sipstack_number_target_pool_fkey") => unknown_pool(pool.unwrap_or_default(), &[]),
            _ => DbError::query(format!("cannot add number {}", n.number))(e),
        }),
    }
}

/// Every number, by number.
pub async fn list(client: &impl GenericClient) -> Result<Vec<Number>, DbError> {
    let rows = client
        .query(
            &format!(
                "SELECT {NUMBER_COLUMNS} FROM sipstack_number AS n ORDER BY n.number, n.match_kind"
            ),
            &[],
        )
        .await
        .map_err(DbError::query("cannot list numbers"))?;
    rows.iter().map(number_from_row).collect()
}

/// Deletes a number (or a prefix: the same digits may be both).
pub async fn delete(
    client: &impl GenericClient,
    match_kind: NumberMatch,
    number: &str,
) -> Result<(), DbError> {
    validate_number(number)?;
    let deleted = client
        .execute(
            "DELETE FROM sipstack_number WHERE match_kind = $1 AND number = $2",
            &[&match_kind.as_str(), &number],
        )
        .await
        .map_err(DbError::query(format!("cannot delete number {number}")))?;
    if deleted == 0 {
        return Err(DbError::NotFound {
            kind: match match_kind {
                NumberMatch::Exact => "number",
                NumberMatch::Prefix => "number prefix",
            },
            name: number.to_string(),
        });
    }
    Ok(())
}

/// One row of an import, with the line of the file it came from (for errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportRow {
    pub line: u64,
    pub number: NewNumber,
}

/// What an import did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportReport {
    pub rows: u64,
    pub inserted: u64,
}

/// How many problems a refused import names.
const PROBLEMS_SHOWN: i64 = 20;

/// Imports numbers in one transaction: every row is checked, then they are
/// streamed with COPY into a temporary table, checked against what exists
/// (targets, numbers), and written with one INSERT … SELECT. Any problem
/// refuses the whole import, naming the rows' lines; nothing is written.
pub async fn import(
    client: &mut impl GenericClient,
    rows: &[ImportRow],
) -> Result<ImportReport, DbError> {
    let mut checked = Vec::with_capacity(rows.len());
    let mut seen: HashMap<(NumberMatch, &str), u64> = HashMap::with_capacity(rows.len());
    for r in rows {
        let n = validate(&r.number).map_err(|e| match e {
            DbError::Invalid {
                field,
                problem,
                fix,
            } => DbError::Invalid {
                field: format!("line {}: {field}", r.line),
                problem,
                fix,
            },
            other => other,
        })?;
        if let Some(first) = seen.insert((r.number.match_kind, r.number.number.as_str()), r.line) {
            return Err(invalid(
                &format!("line {}: number", r.line),
                format!(
                    "{} {} is on line {first} too",
                    r.number.match_kind, r.number.number
                ),
                "give each number once",
            ));
        }
        checked.push((r.line, n));
    }
    drop(seen);
    let total = checked.len() as u64;

    let tx = client
        .transaction()
        .await
        .map_err(DbError::query("cannot begin the import transaction"))?;
    tx.batch_execute(
        "CREATE TEMP TABLE sipstack_number_import (
             line bigint NOT NULL, match_kind text NOT NULL, number text NOT NULL,
             target_kind text NOT NULL, target_username text, target_domain text,
             target_trunk text, target_pool text, service text, description text NOT NULL
         ) ON COMMIT DROP",
    )
    .await
    .map_err(DbError::query("cannot create the import's temporary table"))?;
    let sink = tx
        .copy_in(
            "COPY sipstack_number_import (line, match_kind, number, target_kind, target_username,
                 target_domain, target_trunk, target_pool, service, description)
             FROM STDIN (FORMAT binary)",
        )
        .await
        .map_err(DbError::query("cannot start COPY of the imported numbers"))?;
    let mut writer = pin!(BinaryCopyInWriter::new(
        sink,
        &[
            Type::INT8,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
        ]
    ));
    for (line, n) in &checked {
        let line = i64::try_from(*line).unwrap_or(i64::MAX);
        let (kind, username, domain, trunk_name, pool, service) = target_columns(&n.target);
        let values: [&(dyn ToSql + Sync); 10] = [
            &line,
            &n.match_kind.as_str(),
            &n.number,
            &kind,
            &username,
            &domain,
            &trunk_name,
            &pool,
            &service,
            &n.description,
        ];
        writer
            .as_mut()
            .write(&values)
            .await
            .map_err(DbError::query("cannot COPY the imported numbers"))?;
    }
    writer
        .as_mut()
        .finish()
        .await
        .map_err(DbError::query("cannot COPY the imported numbers"))?;
    tx.batch_execute("ANALYZE sipstack_number_import")
        .await
        .map_err(DbError::query(
            "cannot analyze the import's temporary table",
        ))?;

    // Everything the table's keys would refuse, by line, in one read.
    let problems = tx
        .query(
            "SELECT p.line, p.taken, p.problem, count(*) OVER () FROM (
                 SELECT i.line, true AS taken,
                        'number: ' || i.match_kind || ' ' || i.number || ' exists already' AS problem
                 FROM sipstack_number_import AS i
                 JOIN sipstack_number AS n ON n.match_kind = i.match_kind AND n.number = i.number
                 UNION ALL
                 SELECT i.line, false, 'target: ' || i.target_username || '@' || i.target_domain
                        || ' is not a subscriber'
                 FROM sipstack_number_import AS i
                 WHERE i.target_kind = 'user' AND NOT EXISTS (
                     SELECT 1 FROM subscriber AS s
                     WHERE s.username = i.target_username AND s.domain = i.target_domain)
                 UNION ALL
                 SELECT i.line, false, 'target: trunk ' || i.target_trunk || ' does not exist'
                 FROM sipstack_number_import AS i
                 WHERE i.target_kind = 'trunk' AND NOT EXISTS (
                     SELECT 1 FROM sipstack_trunk AS t WHERE t.name = i.target_trunk)
                 UNION ALL
                 SELECT i.line, false, 'target: media pool ' || i.target_pool || ' does not exist'
                 FROM sipstack_number_import AS i
                 WHERE i.target_kind = 'pool' AND NOT EXISTS (
                     SELECT 1 FROM sipstack_media_pool AS p WHERE p.name = i.target_pool)
             ) AS p ORDER BY p.line LIMIT $1",
            &[&PROBLEMS_SHOWN],
        )
        .await
        .map_err(DbError::query("cannot check the imported numbers"))?;
    if !problems.is_empty() {
        tx.rollback()
            .await
            .map_err(DbError::query("cannot roll back the import"))?;
        let count: i64 = problems[0].get(3);
        let only_taken = problems.iter().all(|r| r.get::<_, bool>(1));
        let mut listed: Vec<String> = problems
            .iter()
            .map(|r| format!("line {}: {}", r.get::<_, i64>(0), r.get::<_, String>(2)))
            .collect();
        if count > PROBLEMS_SHOWN {
            listed.push(format!("and {} more", count - PROBLEMS_SHOWN));
        }
        let problem = format!(
            "{count} problem{} with what exists; nothing was imported:\n  {}",
            if count == 1 { "" } else { "s" },
            listed.join("\n  ")
        );
        return Err(if only_taken {
            DbError::Conflict {
                problem,
                fix: "leave out the numbers that exist (see `sipctl get numbers`), or delete them first"
                    .into(),
            }
        } else {
            invalid(
                "rows",
                problem,
                "add the subscribers, trunks and media pools first, or correct the rows",
            )
        });
    }

    let inserted = tx
        .execute(
            "INSERT INTO sipstack_number (match_kind, number, target_kind, target_username,
                 target_domain, target_trunk, target_pool, service, description)
             SELECT match_kind, number, target_kind, target_username, target_domain, target_trunk,
                    target_pool, service, description
             FROM sipstack_number_import ORDER BY line",
            &[],
        )
        .await
        .map_err(|e| {
            if matches!(
                e.code(),
                Some(&SqlState::UNIQUE_VIOLATION) | Some(&SqlState::FOREIGN_KEY_VIOLATION)
            ) {
                DbError::Conflict {
                    problem: "numbers, subscribers, trunks or pools changed during the import; nothing was imported"
                        .into(),
                    fix: "run the import again".into(),
                }
            } else {
                DbError::query("cannot write the imported numbers")(e)
            }
        })?;
    // ON COMMIT DROP does not fire when `client` is itself a transaction (a savepoint here).
    tx.batch_execute("DROP TABLE sipstack_number_import")
        .await
        .map_err(DbError::query("cannot drop the import's temporary table"))?;
    tx.commit()
        .await
        .map_err(DbError::query("cannot commit the import"))?;
    Ok(ImportReport {
        rows: total,
        inserted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(err: DbError) -> String {
        match err {
            DbError::Invalid { field, .. } => field,
            other => panic!("not a validation error: {other}"),
        }
    }

    fn number(n: &str, target: NumberTarget) -> NewNumber {
        NewNumber {
            match_kind: NumberMatch::Exact,
            number: n.into(),
            target,
            description: String::new(),
        }
    }

    fn user() -> NumberTarget {
        NumberTarget::User {
            username: "alice".into(),
            domain: "Example.COM".into(),
        }
    }

    const HOSTILE: &[&str] = &[
        "a'b",
        "a\"b",
        "a\nb",
        "a;b",
        "$(id)",
        "#!KAMAILIO",
        "a b",
        "x'); DROP TABLE sipstack_number; --",
        "a\\b",
        "1$",
    ];

    #[test]
    fn valid_numbers_pass_normalised() {
        let v = validate(&number("+442071234567", user())).unwrap();
        assert_eq!(
            v.target,
            NumberTarget::User {
                username: "alice".into(),
                domain: "example.com".into()
            }
        );
        assert!(validate(&number("1", NumberTarget::Trunk("pbx-1".into()))).is_ok());
        assert!(validate(&number(
            &"9".repeat(31),
            NumberTarget::Pool {
                pool: "media".into(),
                service: Some("conference".into())
            }
        ))
        .is_ok());
    }

    #[test]
    fn every_field_is_checked_and_named() {
        let pool = |service: Option<&str>| NumberTarget::Pool {
            pool: "media".into(),
            service: service.map(String::from),
        };
        let cases: Vec<(NewNumber, &str)> = vec![
            (number("", user()), "number"),
            (number("+", user()), "number"),
            (number("++44", user()), "number"),
            (number("44+", user()), "number"),
            (number(&"1".repeat(32), user()), "number"),
            (number("0800 123", user()), "number"),
            (number("*98", user()), "number"),
            (
                number(
                    "1",
                    NumberTarget::User {
                        username: "a@b".into(),
                        domain: "example.com".into(),
                    },
                ),
                "--user",
            ),
            (
                number(
                    "1",
                    NumberTarget::User {
                        username: "alice".into(),
                        domain: "exa mple.com".into(),
                    },
                ),
                "--user",
            ),
            (number("1", NumberTarget::Trunk("Pbx".into())), "--trunk"),
            (number("1", NumberTarget::Trunk(String::new())), "--trunk"),
            (
                number(
                    "1",
                    NumberTarget::Pool {
                        pool: "Media_1".into(),
                        service: None,
                    },
                ),
                "--pool",
            ),
            (number("1", pool(Some("nope"))), "--service"),
            (number("1", pool(Some("Echo"))), "--service"),
            (
                NewNumber {
                    description: "two\nlines".into(),
                    ..number("1", user())
                },
                "--description",
            ),
        ];
        for (n, field) in cases {
            let err = validate(&n).expect_err(&format!("{n:?} accepted"));
            assert_eq!(field_of(err), field, "{n:?}");
        }
    }

    #[test]
    fn hostile_strings_are_refused_in_every_token_field() {
        for h in HOSTILE {
            let cases: Vec<(NewNumber, &str)> = vec![
                (number(h, user()), "number"),
                (number(&format!("+44{h}"), user()), "number"),
                (
                    number(
                        "1",
                        NumberTarget::User {
                            username: (*h).into(),
                            domain: "example.com".into(),
                        },
                    ),
                    "--user",
                ),
                (
                    number(
                        "1",
                        NumberTarget::User {
                            username: "alice".into(),
                            domain: format!("example.com{h}"),
                        },
                    ),
                    "--user",
                ),
                (number("1", NumberTarget::Trunk((*h).into())), "--trunk"),
                (
                    number(
                        "1",
                        NumberTarget::Pool {
                            pool: (*h).into(),
                            service: None,
                        },
                    ),
                    "--pool",
                ),
                (
                    number(
                        "1",
                        NumberTarget::Pool {
                            pool: "media".into(),
                            service: Some(format!("echo{h}")),
                        },
                    ),
                    "--service",
                ),
            ];
            for (n, field) in cases {
                let err = validate(&n).expect_err(&format!("{h:?} accepted in {field}"));
                assert_eq!(field_of(err), field, "{h:?}");
            }
        }
    }

    #[test]
    fn kinds_round_trip() {
        for k in [NumberMatch::Exact, NumberMatch::Prefix] {
            assert_eq!(k.as_str().parse::<NumberMatch>().unwrap(), k);
        }
        assert!("regex".parse::<NumberMatch>().is_err());
        assert_eq!(user().kind(), "user");
        assert_eq!(
            NumberTarget::Pool {
                pool: "media".into(),
                service: Some("echo".into())
            }
            .to_string(),
            "pool media service echo"
        );
    }
}
