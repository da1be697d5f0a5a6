//! SIP subscribers (Kamailio's `subscriber` table, read by auth_db).
//!
//! Only the digest hashes are stored: with `calculate_ha1=0` auth_db needs
//! `ha1` and `ha1b`, and the `password` column stays empty.
//!
//! Listings are pages in (domain, username) order, fetched by keyset (`after`
//! the last row of the previous page). Imports stream their rows with COPY into
//! a temporary table and write them with one INSERT … SELECT, all or nothing.

use std::collections::HashSet;
use std::pin::pin;

use futures_util::StreamExt;
use md5::{Digest, Md5};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{GenericClient, Row, RowStream};

use crate::validate::{self, invalid, shown};
use crate::DbError;

/// A subscriber account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscriber {
    pub username: String,
    pub domain: String,
}

/// HA1 of RFC 2617 digest authentication: md5(username:realm:password).
pub fn ha1(username: &str, realm: &str, password: &str) -> String {
    md5_hex(&format!("{username}:{realm}:{password}"))
}

/// The HA1 auth_db uses when the client sends `username@domain` as its digest username.
pub fn ha1b(username: &str, domain: &str, realm: &str, password: &str) -> String {
    md5_hex(&format!("{username}@{domain}:{realm}:{password}"))
}

fn md5_hex(text: &str) -> String {
    format!("{:x}", Md5::digest(text.as_bytes()))
}

/// Checks a username; it goes into URIs, digest headers and SIPp files unescaped.
pub fn validate_username(username: &str) -> Result<(), DbError> {
    if !validate::USERNAME.is_match(username) {
        return Err(invalid(
            "username",
            format!(
                "{} is not a SIP user name sipstack accepts",
                shown(username)
            ),
            "use 1 to 64 letters, digits and . _ ~ + -",
        ));
    }
    Ok(())
}

/// Checks a password: it is hashed, so any printable text works.
pub fn validate_password(password: &str) -> Result<(), DbError> {
    if password.is_empty() || password.chars().count() > 128 {
        return Err(invalid(
            "password",
            "the password is empty or longer than 128 characters",
            "use 1 to 128 characters",
        ));
    }
    if password.chars().any(char::is_control) {
        return Err(invalid(
            "password",
            "the password contains a control character",
            "use printable characters only (SIP clients cannot type the others)",
        ));
    }
    Ok(())
}

/// Checks an MD5 digest as Kamailio's `ha1`/`ha1b` columns hold it and returns
/// it lower-cased: auth_db uses the stored text as it is when it computes the
/// expected response, and clients compute with lower-case hex.
pub fn validate_ha1(field: &str, value: &str) -> Result<String, DbError> {
    if value.len() != 32 || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid(
            field,
            format!("{} is not an MD5 digest", shown(value)),
            "use 32 hexadecimal characters, as in the ha1 and ha1b columns of a Kamailio subscriber table",
        ));
    }
    Ok(value.to_ascii_lowercase())
}

/// Splits an address of record `user@domain` (a leading `sip:` is allowed) into
/// a checked user name and the lower-cased domain.
pub fn parse_aor(aor: &str) -> Result<(String, String), DbError> {
    let bare = aor.strip_prefix("sip:").unwrap_or(aor);
    let Some((username, domain)) = bare.split_once('@') else {
        return Err(invalid(
            "aor",
            format!("{} is not an address of record", shown(aor)),
            "write it as user@domain, e.g. alice@example.com",
        ));
    };
    validate_username(username)?;
    let domain = validate::domain("domain", domain)?;
    Ok((username.to_string(), domain))
}

/// Checked digest credentials of one subscriber: what is stored, never a password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    username: String,
    domain: String,
    ha1: String,
    ha1b: String,
}

impl Credentials {
    /// The hashes of `password`, with the (lower-cased) domain as realm.
    pub fn from_password(username: &str, domain: &str, password: &str) -> Result<Self, DbError> {
        account(username, domain, password)
    }

    /// Hashes computed elsewhere (e.g. read from another Kamailio database).
    pub fn from_hashes(
        username: &str,
        domain: &str,
        ha1: &str,
        ha1b: &str,
    ) -> Result<Self, DbError> {
        validate_username(username)?;
        Ok(Self {
            username: username.to_string(),
            domain: validate::domain("domain", domain)?,
            ha1: validate_ha1("ha1", ha1)?,
            ha1b: validate_ha1("ha1b", ha1b)?,
        })
    }

    pub fn username(&self) -> &str {
        &self.username
    }
    pub fn domain(&self) -> &str {
        &self.domain
    }
    pub fn ha1(&self) -> &str {
        &self.ha1
    }
    pub fn ha1b(&self) -> &str {
        &self.ha1b
    }
    /// `username@domain`.
    pub fn aor(&self) -> String {
        format!("{}@{}", self.username, self.domain)
    }
}

fn account(username: &str, domain: &str, password: &str) -> Result<Credentials, DbError> {
    validate_username(username)?;
    let domain = validate::domain("domain", domain)?;
    validate_password(password)?;
    // The realm of a subscriber is its domain.
    Ok(Credentials {
        ha1: ha1(username, &domain, password),
        ha1b: ha1b(username, &domain, &domain, password),
        username: username.to_string(),
        domain,
    })
}

/// Adds a subscriber; fails if `username@domain` exists. The domain is stored lower-case.
pub async fn add(
    client: &impl GenericClient,
    username: &str,
    domain: &str,
    password: &str,
) -> Result<(), DbError> {
    let a = account(username, domain, password)?;
    let inserted = client
        .execute(
            "INSERT INTO subscriber (username, domain, password, ha1, ha1b) VALUES ($1, $2, '', $3, $4)
             ON CONFLICT (username, domain) DO NOTHING",
            &[&a.username, &a.domain, &a.ha1, &a.ha1b],
        )
        .await
        .map_err(DbError::query(format!("cannot add subscriber {}@{}", a.username, a.domain)))?;
    if inserted == 0 {
        return Err(DbError::AlreadyExists {
            kind: "subscriber",
            name: format!("{}@{}", a.username, a.domain),
        });
    }
    Ok(())
}

/// Adds a subscriber or sets the password of an existing one. Returns whether it was added.
pub async fn upsert(
    client: &impl GenericClient,
    username: &str,
    domain: &str,
    password: &str,
) -> Result<bool, DbError> {
    let a = account(username, domain, password)?;
    let row = client
        .query_one(
            "INSERT INTO subscriber (username, domain, password, ha1, ha1b) VALUES ($1, $2, '', $3, $4)
             ON CONFLICT (username, domain) DO UPDATE SET password = '', ha1 = EXCLUDED.ha1, ha1b = EXCLUDED.ha1b
             RETURNING (xmax = 0)",
            &[&a.username, &a.domain, &a.ha1, &a.ha1b],
        )
        .await
        .map_err(DbError::query(format!("cannot store subscriber {}@{}", a.username, a.domain)))?;
    Ok(row.get(0))
}

/// A subscriber that a number or a trunk still names cannot be removed: the
/// database refuses (RESTRICT), and this says what holds it and what to do.
fn still_used(e: &tokio_postgres::Error, who: &str) -> Option<DbError> {
    let db = e.as_db_error()?;
    if db.code() != &tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION {
        return None;
    }
    let (what, fix) = match db.constraint() {
        Some("sipstack_number_user_fk") => (
            "a number goes to it",
            "delete or change that number first (sipctl get numbers, sipctl delete number)",
        ),
        Some("sipstack_trunk_account_fk") => (
            "it is the account of a registration-based PBX trunk",
            "delete that trunk first (sipctl get trunks, sipctl delete trunk)",
        ),
        _ => return None,
    };
    Some(DbError::Conflict {
        problem: format!("{who} cannot be removed: {what}"),
        fix: fix.to_string(),
    })
}

/// Removes a subscriber.
pub async fn remove(
    client: &impl GenericClient,
    username: &str,
    domain: &str,
) -> Result<(), DbError> {
    validate_username(username)?;
    let domain = validate::domain("domain", domain)?;
    let deleted = client
        .execute(
            "DELETE FROM subscriber WHERE username = $1 AND domain = $2",
            &[&username, &domain],
        )
        .await
        .map_err(|e| {
            still_used(&e, &format!("{username}@{domain}")).unwrap_or_else(|| {
                DbError::query(format!("cannot remove subscriber {username}@{domain}"))(e)
            })
        })?;
    if deleted == 0 {
        return Err(DbError::NotFound {
            kind: "subscriber",
            name: format!("{username}@{domain}"),
        });
    }
    Ok(())
}

/// Every subscriber, ordered by domain and name.
pub async fn list(client: &impl GenericClient) -> Result<Vec<Subscriber>, DbError> {
    let rows = client
        .query(
            "SELECT username, domain FROM subscriber ORDER BY domain, username",
            &[],
        )
        .await
        .map_err(DbError::query("cannot list subscribers"))?;
    Ok(rows
        .iter()
        .map(|r| Subscriber {
            username: r.get(0),
            domain: r.get(1),
        })
        .collect())
}

/// A subscriber as listed: who it is and which credentials its row holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberInfo {
    pub id: i32,
    pub username: String,
    pub domain: String,
    /// Both digest hashes are set: the edge can authenticate it.
    pub digest: bool,
    /// The row holds a plaintext password (written by another tool, e.g. `kamcli subscriber add`).
    pub plaintext_password: bool,
}

impl SubscriberInfo {
    /// `username@domain`.
    pub fn aor(&self) -> String {
        format!("{}@{}", self.username, self.domain)
    }

    fn from_row(row: &Row) -> Self {
        Self {
            id: row.get(0),
            username: row.get(1),
            domain: row.get(2),
            digest: row.get(3),
            plaintext_password: row.get(4),
        }
    }
}

/// `SELECT <the SubscriberInfo columns> FROM subscriber <rest>`.
macro_rules! select_info {
    ($rest:literal) => {
        concat!("SELECT id, username, domain, (ha1 <> '' AND ha1b <> ''), (password <> '') FROM subscriber ", $rest)
    };
}

/// One subscriber.
pub async fn get(
    client: &impl GenericClient,
    username: &str,
    domain: &str,
) -> Result<SubscriberInfo, DbError> {
    validate_username(username)?;
    let domain = validate::domain("domain", domain)?;
    let row = client
        .query_opt(
            select_info!("WHERE username = $1 AND domain = $2"),
            &[&username, &domain],
        )
        .await
        .map_err(DbError::query(format!(
            "cannot read subscriber {username}@{domain}"
        )))?;
    match row {
        Some(row) => Ok(SubscriberInfo::from_row(&row)),
        None => Err(DbError::NotFound {
            kind: "subscriber",
            name: format!("{username}@{domain}"),
        }),
    }
}

/// Which page of subscribers [`page`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageQuery {
    /// Only this domain.
    pub domain: Option<String>,
    /// Start after this subscriber: (username, domain), as in the last row of the previous page.
    pub after: Option<(String, String)>,
    /// At most this many; `None` for all.
    pub limit: Option<i64>,
}

/// Subscribers ordered by (domain, username), a page at a time: keyset
/// pagination, so a page costs the same wherever it is in the table.
pub async fn page(
    client: &impl GenericClient,
    query: &PageQuery,
) -> Result<Vec<SubscriberInfo>, DbError> {
    if let Some(limit) = query.limit {
        if limit < 0 {
            return Err(invalid(
                "limit",
                format!("{limit} is negative"),
                "give 0 or more (0: all)",
            ));
        }
    }
    let domain = query
        .domain
        .as_deref()
        .map(|d| validate::domain("domain", d))
        .transpose()?;
    let after = match &query.after {
        Some((username, domain)) => {
            validate_username(username)?;
            Some((username.as_str(), validate::domain("after", domain)?))
        }
        None => None,
    };
    let limit = &query.limit;
    let rows = match (&domain, &after) {
        (None, None) => client.query(select_info!("ORDER BY domain, username LIMIT $1"), &[limit]).await,
        (Some(d), None) => {
            client.query(select_info!("WHERE domain = $2 ORDER BY domain, username LIMIT $1"), &[limit, d]).await
        }
        (None, Some((au, ad))) => {
            client
                .query(
                    select_info!("WHERE (domain, username) > ($2, $3) ORDER BY domain, username LIMIT $1"),
                    &[limit, ad, au],
                )
                .await
        }
        (Some(d), Some((au, ad))) => {
            client
                .query(
                    select_info!(
                        "WHERE domain = $2 AND (domain, username) > ($3, $4) ORDER BY domain, username LIMIT $1"
                    ),
                    &[limit, d, ad, au],
                )
                .await
        }
    }
    .map_err(DbError::query("cannot list subscribers"))?;
    Ok(rows.iter().map(SubscriberInfo::from_row).collect())
}

/// Sets a subscriber's password: new hashes, and any plaintext password another
/// tool stored is cleared. The edge reads the hashes at the next REGISTER.
pub async fn set_password(
    client: &impl GenericClient,
    username: &str,
    domain: &str,
    password: &str,
) -> Result<(), DbError> {
    let a = account(username, domain, password)?;
    let updated = client
        .execute(
            "UPDATE subscriber SET password = '', ha1 = $3, ha1b = $4 WHERE username = $1 AND domain = $2",
            &[&a.username, &a.domain, &a.ha1, &a.ha1b],
        )
        .await
        .map_err(DbError::query(format!("cannot set the password of subscriber {}", a.aor())))?;
    if updated == 0 {
        return Err(DbError::NotFound {
            kind: "subscriber",
            name: a.aor(),
        });
    }
    Ok(())
}

/// What [`remove_all`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// Every subscriber was removed; how many.
    Removed(u64),
    /// These (`user@domain`) do not exist, so nothing was removed.
    Missing(Vec<String>),
}

/// Removes subscribers given as (username, domain), all or none: if any does
/// not exist, nothing is removed and the missing ones are returned.
pub async fn remove_all(
    client: &mut impl GenericClient,
    subscribers: &[(String, String)],
) -> Result<Removal, DbError> {
    let mut wanted: Vec<(String, String)> = Vec::with_capacity(subscribers.len());
    let mut seen = HashSet::new();
    for (username, domain) in subscribers {
        validate_username(username)?;
        let domain = validate::domain("domain", domain)?;
        if seen.insert((username.clone(), domain.clone())) {
            wanted.push((username.clone(), domain));
        }
    }
    let usernames: Vec<&str> = wanted.iter().map(|(u, _)| u.as_str()).collect();
    let domains: Vec<&str> = wanted.iter().map(|(_, d)| d.as_str()).collect();
    let tx = client
        .transaction()
        .await
        .map_err(DbError::query("cannot begin a transaction"))?;
    let rows = tx
        .query(
            "DELETE FROM subscriber s USING unnest($1::text[], $2::text[]) AS d(username, domain)
             WHERE s.username = d.username AND s.domain = d.domain
             RETURNING s.username, s.domain",
            &[&usernames, &domains],
        )
        .await
        .map_err(|e| {
            still_used(&e, "a subscriber")
                .unwrap_or_else(|| DbError::query("cannot remove subscribers")(e))
        })?;
    let removed: HashSet<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let missing: Vec<String> = wanted
        .iter()
        .filter(|key| !removed.contains(*key))
        .map(|(u, d)| format!("{u}@{d}"))
        .collect();
    if !missing.is_empty() {
        tx.rollback()
            .await
            .map_err(DbError::query("cannot roll back the removal"))?;
        return Ok(Removal::Missing(missing));
    }
    tx.commit()
        .await
        .map_err(DbError::query("cannot commit the removal"))?;
    Ok(Removal::Removed(removed.len() as u64))
}

/// How [`import`] treats subscribers that exist already.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// Update existing subscribers; otherwise any existing one refuses the whole import.
    pub upsert: bool,
    /// Check and count, change nothing.
    pub dry_run: bool,
}

/// What an import did (or, in a dry run, would do).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportReport {
    pub rows: u64,
    pub inserted: u64,
    /// Existing subscribers whose hashes changed.
    pub updated: u64,
    /// Existing subscribers that had these hashes already.
    pub unchanged: u64,
}

/// Where an import is, for a progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportStep {
    /// Rows sent to the server so far.
    Copied(u64),
    /// Every row is on the server; the subscriber table is being written.
    Writing,
}

/// How many existing subscribers a refused import names.
const CONFLICTS_SHOWN: i64 = 20;

/// Imports subscribers in one transaction: the rows are streamed with COPY
/// into a temporary table, then written with one INSERT … SELECT. All or
/// nothing: an error, or an existing subscriber without `upsert`, leaves the
/// subscriber table as it was.
pub async fn import(
    client: &mut impl GenericClient,
    rows: &[Credentials],
    options: ImportOptions,
    progress: &mut dyn FnMut(ImportStep),
) -> Result<ImportReport, DbError> {
    let mut seen = HashSet::with_capacity(rows.len());
    for r in rows {
        if !seen.insert((r.username.as_str(), r.domain.as_str())) {
            return Err(invalid(
                "rows",
                format!("subscriber {} appears more than once", r.aor()),
                "give each subscriber once",
            ));
        }
    }
    drop(seen);
    let total = rows.len() as u64;
    let tx = client
        .transaction()
        .await
        .map_err(DbError::query("cannot begin the import transaction"))?;
    tx.batch_execute(
        "CREATE TEMP TABLE sipstack_subscriber_import (
             username text NOT NULL, domain text NOT NULL, ha1 text NOT NULL, ha1b text NOT NULL
         ) ON COMMIT DROP",
    )
    .await
    .map_err(DbError::query("cannot create the import's temporary table"))?;

    let sink = tx
        .copy_in("COPY sipstack_subscriber_import (username, domain, ha1, ha1b) FROM STDIN (FORMAT binary)")
        .await
        .map_err(DbError::query("cannot start COPY of the imported subscribers"))?;
    let mut writer = pin!(BinaryCopyInWriter::new(
        sink,
        &[Type::TEXT, Type::TEXT, Type::TEXT, Type::TEXT]
    ));
    for (i, r) in rows.iter().enumerate() {
        let values: [&(dyn ToSql + Sync); 4] = [&r.username, &r.domain, &r.ha1, &r.ha1b];
        writer
            .as_mut()
            .write(&values)
            .await
            .map_err(DbError::query("cannot COPY the imported subscribers"))?;
        if i % 1024 == 1023 {
            progress(ImportStep::Copied(i as u64 + 1));
        }
    }
    writer
        .as_mut()
        .finish()
        .await
        .map_err(DbError::query("cannot COPY the imported subscribers"))?;
    progress(ImportStep::Copied(total));
    progress(ImportStep::Writing);
    // Statistics for the joins below (a fresh temporary table has none).
    tx.batch_execute("ANALYZE sipstack_subscriber_import")
        .await
        .map_err(DbError::query(
            "cannot analyze the import's temporary table",
        ))?;

    let existing = tx
        .query(
            "SELECT i.username, i.domain, count(*) OVER ()
             FROM sipstack_subscriber_import i JOIN subscriber s ON s.username = i.username AND s.domain = i.domain
             ORDER BY i.domain, i.username LIMIT $1",
            &[&CONFLICTS_SHOWN],
        )
        .await
        .map_err(DbError::query("cannot look for existing subscribers"))?;
    let existing_count: i64 = existing.first().map_or(0, |r| r.get(2));
    if existing_count > 0 && !options.upsert {
        tx.rollback()
            .await
            .map_err(DbError::query("cannot roll back the import"))?;
        let mut names: Vec<String> = existing
            .iter()
            .map(|r| format!("{}@{}", r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect();
        if existing_count > CONFLICTS_SHOWN {
            names.push(format!("and {} more", existing_count - CONFLICTS_SHOWN));
        }
        return Err(DbError::Conflict {
            problem: format!(
                "{existing_count} of the {total} subscribers exist already ({}); nothing was imported",
                names.join(", ")
            ),
            fix: "import with --upsert to update their credentials, or leave them out".to_string(),
        });
    }

    if options.dry_run {
        let row = tx
            .query_one(
                "SELECT count(*) FILTER (WHERE s.id IS NULL),
                        count(*) FILTER (WHERE s.id IS NOT NULL
                            AND (s.password, s.ha1, s.ha1b) IS DISTINCT FROM ('', i.ha1, i.ha1b))
                 FROM sipstack_subscriber_import i
                 LEFT JOIN subscriber s ON s.username = i.username AND s.domain = i.domain",
                &[],
            )
            .await
            .map_err(DbError::query("cannot count what the import would change"))?;
        tx.rollback()
            .await
            .map_err(DbError::query("cannot roll back the dry run"))?;
        return Ok(report(total, row.get(0), row.get(1)));
    }

    let row = if options.upsert {
        tx.query_one(
            "WITH written AS (
                 INSERT INTO subscriber (username, domain, password, ha1, ha1b)
                 SELECT username, domain, '', ha1, ha1b FROM sipstack_subscriber_import
                 ON CONFLICT (username, domain) DO UPDATE
                     SET password = '', ha1 = EXCLUDED.ha1, ha1b = EXCLUDED.ha1b
                     WHERE (subscriber.password, subscriber.ha1, subscriber.ha1b)
                           IS DISTINCT FROM ('', EXCLUDED.ha1, EXCLUDED.ha1b)
                 RETURNING (xmax = 0) AS inserted)
             SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM written",
            &[],
        )
        .await
    } else {
        tx.query_one(
            "WITH written AS (
                 INSERT INTO subscriber (username, domain, password, ha1, ha1b)
                 SELECT username, domain, '', ha1, ha1b FROM sipstack_subscriber_import
                 ON CONFLICT (username, domain) DO NOTHING
                 RETURNING 1)
             SELECT count(*), 0::bigint FROM written",
            &[],
        )
        .await
    }
    .map_err(DbError::query("cannot write the imported subscribers"))?;
    let result = report(total, row.get(0), row.get(1));
    if !options.upsert && result.inserted != total {
        // Someone added some of them between the check and the insert.
        tx.rollback()
            .await
            .map_err(DbError::query("cannot roll back the import"))?;
        return Err(DbError::Conflict {
            problem: format!(
                "{} of the subscribers were added by someone else during the import; nothing was imported",
                total - result.inserted
            ),
            fix: "run the import again".to_string(),
        });
    }
    // ON COMMIT DROP does not fire when `client` is itself a transaction (a savepoint here).
    tx.batch_execute("DROP TABLE sipstack_subscriber_import")
        .await
        .map_err(DbError::query("cannot drop the import's temporary table"))?;
    tx.commit()
        .await
        .map_err(DbError::query("cannot commit the import"))?;
    Ok(result)
}

fn report(rows: u64, inserted: i64, updated: i64) -> ImportReport {
    let inserted = inserted.max(0) as u64;
    let updated = updated.max(0) as u64;
    ImportReport {
        rows,
        inserted,
        updated,
        unchanged: rows.saturating_sub(inserted + updated),
    }
}

/// A subscriber's stored credentials as they are in the table (rows written by
/// other tools may hold anything; check them with [`validate_ha1`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportRow {
    pub username: String,
    pub domain: String,
    pub ha1: String,
    pub ha1b: String,
}

/// The rows of an export, read from the server as they are consumed.
pub struct ExportStream {
    rows: std::pin::Pin<Box<RowStream>>,
}

impl ExportStream {
    /// The next row; `None` at the end.
    pub async fn next(&mut self) -> Option<Result<ExportRow, DbError>> {
        let row = self.rows.next().await?;
        Some(
            row.map(|r| ExportRow {
                username: r.get(0),
                domain: r.get(1),
                ha1: r.get(2),
                ha1b: r.get(3),
            })
            .map_err(DbError::query("cannot read the exported subscribers")),
        )
    }
}

/// Every subscriber's credentials (of one domain, if given), ordered by
/// (domain, username), streamed: the rows are not all held in memory.
pub async fn export(
    client: &impl GenericClient,
    domain: Option<&str>,
) -> Result<ExportStream, DbError> {
    let domain = domain.map(|d| validate::domain("domain", d)).transpose()?;
    let rows = match &domain {
        Some(d) => {
            let params: [&(dyn ToSql + Sync); 1] = [d];
            client
                .query_raw(
                    "SELECT username, domain, ha1, ha1b FROM subscriber WHERE domain = $1 ORDER BY domain, username",
                    params,
                )
                .await
        }
        None => {
            let params: [&(dyn ToSql + Sync); 0] = [];
            client
                .query_raw("SELECT username, domain, ha1, ha1b FROM subscriber ORDER BY domain, username", params)
                .await
        }
    }
    .map_err(DbError::query("cannot export subscribers"))?;
    Ok(ExportStream {
        rows: Box::pin(rows),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ha1_matches_rfc_2617_example() {
        // RFC 2617 §3.5: Mufasa / testrealm@host.com / Circle Of Life.
        assert_eq!(
            ha1("Mufasa", "testrealm@host.com", "Circle Of Life"),
            "939e7578ed9e3c518a452acee763bce9"
        );
    }

    #[test]
    fn ha1_and_ha1b_match_md5sum() {
        // echo -n 'alice:example.com:secret' | md5sum
        assert_eq!(
            ha1("alice", "example.com", "secret"),
            "b1726872c344b6dc8365b774f8fd6412"
        );
        // echo -n 'alice@example.com:example.com:secret' | md5sum
        assert_eq!(
            ha1b("alice", "example.com", "example.com", "secret"),
            "c79656e4f06dbae9fdf6727654273c65"
        );
    }

    #[test]
    fn account_hashes_use_the_lower_cased_domain_as_realm() {
        let a = account("alice", "Example.COM", "secret").unwrap();
        assert_eq!(a.domain, "example.com");
        assert_eq!(a.ha1, ha1("alice", "example.com", "secret"));
        assert_eq!(
            a.ha1b,
            ha1b("alice", "example.com", "example.com", "secret")
        );
    }

    #[test]
    fn usernames() {
        for ok in ["alice", "1001", "a.b_c~d+e-f", &"u".repeat(64)] {
            assert!(validate_username(ok).is_ok(), "{ok:?} refused");
        }
        for bad in [
            "",
            "a b",
            "a@b",
            "a:b",
            "a;b",
            "a\"b",
            "a\nb",
            &"u".repeat(65),
            "ä",
        ] {
            let err = validate_username(bad).unwrap_err().to_string();
            assert!(err.starts_with("username: "), "{err}");
        }
    }

    #[test]
    fn aors_split_into_checked_parts() {
        assert_eq!(
            parse_aor("alice@Example.COM").unwrap(),
            ("alice".to_string(), "example.com".to_string())
        );
        assert_eq!(
            parse_aor("sip:bob@example.com").unwrap(),
            ("bob".to_string(), "example.com".to_string())
        );
        assert!(parse_aor("alice")
            .unwrap_err()
            .to_string()
            .starts_with("aor: \"alice\" is not an address of record"));
        assert!(parse_aor("a b@example.com")
            .unwrap_err()
            .to_string()
            .starts_with("username: "));
        assert!(parse_aor("alice@exa mple.com")
            .unwrap_err()
            .to_string()
            .starts_with("domain: "));
        assert!(parse_aor("'; DROP TABLE subscriber; --@x").is_err());
        assert!(parse_aor("alice@example.com'; DROP TABLE subscriber; --").is_err());
    }

    #[test]
    fn digests_are_32_hex_characters_lower_cased() {
        let upper = "B1726872C344B6DC8365B774F8FD6412";
        assert_eq!(
            validate_ha1("ha1", upper).unwrap(),
            upper.to_ascii_lowercase()
        );
        for bad in [
            "",
            "abc",
            &"g".repeat(32),
            &"a".repeat(33),
            "b1726872c344b6dc8365b774f8fd641 ",
        ] {
            let err = validate_ha1("ha1b", bad).unwrap_err().to_string();
            assert!(err.starts_with("ha1b: "), "{err}");
        }
    }

    #[test]
    fn credentials_from_password_and_from_hashes_agree() {
        let a = Credentials::from_password("alice", "Example.com", "secret").unwrap();
        let b = Credentials::from_hashes("alice", "example.com", &a.ha1().to_uppercase(), a.ha1b())
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.aor(), "alice@example.com");
    }

    #[test]
    fn passwords() {
        assert!(validate_password("Circle Of Life").is_ok());
        assert!(validate_password("").is_err());
        assert!(validate_password("a\nb").is_err());
        assert!(validate_password(&"p".repeat(129)).is_err());
    }
}
