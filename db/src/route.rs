//! Call routes (`sipstack_route`) and the dialplan rules Kamailio derives from
//! them (`sipstack_dialplan`, see migration 0002).

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use tokio_postgres::error::SqlState;
use tokio_postgres::{GenericClient, Row};

use crate::validate::{self, invalid, shown, MAX_TARGET_URI_LEN};
use crate::DbError;

/// How a route matches the dialled user part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchKind {
    /// The number starts with the value.
    Prefix,
    /// The number is the value.
    Exact,
    /// A PCRE regular expression (checked with the `regex` crate, whose syntax is close).
    Regex,
}

impl MatchKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MatchKind::Prefix => "prefix",
            MatchKind::Exact => "exact",
            MatchKind::Regex => "regex",
        }
    }
}

impl fmt::Display for MatchKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MatchKind {
    type Err = DbError;

    fn from_str(s: &str) -> Result<Self, DbError> {
        match s {
            "prefix" => Ok(MatchKind::Prefix),
            "exact" => Ok(MatchKind::Exact),
            "regex" => Ok(MatchKind::Regex),
            _ => Err(invalid("match_kind", format!("{} is not a match kind", shown(s)), "use prefix, exact or regex")),
        }
    }
}

/// Where a matching call goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A media pool (its dispatcher set).
    Pool(String),
    /// The registered user of that name (usrloc lookup).
    User,
    /// A fixed SIP URI.
    Uri(String),
    /// Answer with an error.
    Reject { code: u16, reason: String },
}

impl Target {
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Pool(_) => "pool",
            Target::User => "user",
            Target::Uri(_) => "uri",
            Target::Reject { .. } => "reject",
        }
    }
}

/// A route to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRoute {
    pub name: String,
    /// 0 to 9999; lower is tried first.
    pub priority: i32,
    pub match_kind: MatchKind,
    pub match_value: String,
    /// Only for callers of this domain; `None`: for every caller.
    pub source_domain: Option<String>,
    pub target: Target,
    pub description: String,
}

/// A stored route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub id: i32,
    pub name: String,
    pub priority: i32,
    pub match_kind: MatchKind,
    pub match_value: String,
    pub source_domain: Option<String>,
    pub target: Target,
    pub description: String,
    pub created_at: Option<SystemTime>,
}

/// A row of the `sipstack_dialplan` view, as Kamailio's dialplan module loads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialplanRule {
    pub dpid: i32,
    pub pr: i32,
    pub match_op: i32,
    pub match_exp: String,
    pub match_len: i32,
    pub subst_exp: String,
    pub repl_exp: String,
    pub attrs: String,
}

/// Dialplan id of the source-domain map.
pub const DOMAIN_MAP_DPID: i32 = 1;
/// Dialplan id of the routes for callers whose domain has no routes of its own.
pub const DEFAULT_DPID: i32 = 2;

/// The PCRE `sipstack_dialplan` uses for a prefix route: `^` and the prefix with
/// the metacharacters among its allowed characters (`+ * .`) escaped. `#` needs
/// no escape: it only starts a comment in extended mode, which dialplan does not use.
pub fn prefix_match_exp(prefix: &str) -> String {
    let mut exp = String::with_capacity(prefix.len() * 2 + 1);
    exp.push('^');
    for c in prefix.chars() {
        if matches!(c, '+' | '*' | '.') {
            exp.push('\\');
        }
        exp.push(c);
    }
    exp
}

/// Checks a route the way the table's CHECK constraints do, with errors that name
/// the field and the fix. Returns it normalised (source domain lower-cased).
pub fn validate(route: &NewRoute) -> Result<NewRoute, DbError> {
    validate::name("name", &route.name)?;
    if !(0..=9999).contains(&route.priority) {
        return Err(invalid(
            "priority",
            format!("{} is out of range", route.priority),
            "use 0 to 9999 (lower is tried first)",
        ));
    }
    validate_match(route.match_kind, &route.match_value)?;
    let source_domain = match &route.source_domain {
        Some(d) => Some(validate::domain("source_domain", d)?),
        None => None,
    };
    validate_target(&route.target)?;
    validate::one_line_text("description", &route.description, 255)?;
    Ok(NewRoute { source_domain, ..route.clone() })
}

fn validate_match(kind: MatchKind, value: &str) -> Result<(), DbError> {
    if value.is_empty() || value.chars().count() > 128 {
        return Err(invalid(
            "match_value",
            "the value is empty or longer than 128 characters",
            "use 1 to 128 characters",
        ));
    }
    match kind {
        MatchKind::Prefix | MatchKind::Exact => {
            if !validate::DIAL_STRING.is_match(value) {
                return Err(invalid(
                    "match_value",
                    format!("{} is not a dial string", shown(value)),
                    format!("a {kind} uses letters, digits and + * # . _ - only; use match kind regex for patterns"),
                ));
            }
        }
        MatchKind::Regex => {
            if value.contains(['\n', '\r']) {
                return Err(invalid(
                    "match_value",
                    format!("{} contains a line break", shown(value)),
                    "write the regular expression on one line",
                ));
            }
            if let Err(e) = regex::Regex::new(value) {
                let reason = e.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
                return Err(invalid(
                    "match_value",
                    format!("{} is not a valid regular expression: {reason}", shown(value)),
                    "fix the expression (no look-around or back-references), e.g. ^00[1-9][0-9]+$",
                ));
            }
        }
    }
    Ok(())
}

fn validate_target(target: &Target) -> Result<(), DbError> {
    match target {
        Target::Pool(pool) => validate::name("target_pool", pool),
        Target::User => Ok(()),
        Target::Uri(uri) => {
            if uri.len() > MAX_TARGET_URI_LEN || !validate::TARGET_URI.is_match(uri) {
                return Err(invalid(
                    "target_uri",
                    format!("{} is not a target URI sipstack accepts", shown(uri)),
                    format!(
                        "use sip: or sips: followed by letters, digits and + * # . _ ~ ! % : @ = ; - \
                         (at most {MAX_TARGET_URI_LEN} characters), e.g. sip:+4420123@carrier.example:5060"
                    ),
                ));
            }
            Ok(())
        }
        Target::Reject { code, reason } => {
            if !(400..=699).contains(code) {
                return Err(invalid(
                    "reject_code",
                    format!("{code} is not an error status"),
                    "use a SIP status from 400 to 699",
                ));
            }
            if !validate::REJECT_REASON.is_match(reason) {
                return Err(invalid(
                    "reject_reason",
                    format!("{} is not a reason phrase sipstack accepts", shown(reason)),
                    "use 1 to 64 letters, digits and spaces, e.g. Forbidden",
                ));
            }
            Ok(())
        }
    }
}

const ROUTE_COLUMNS: &str = "r.id, r.name, r.priority, r.match_kind, r.match_value, r.source_domain, r.target_kind, \
     r.target_pool, r.target_uri, r.reject_code, r.reject_reason, r.description, r.created_at";

fn route_from_row(row: &Row) -> Result<Route, DbError> {
    let target_kind: &str = row.get(6);
    let target = match target_kind {
        "pool" => Target::Pool(row.get::<_, Option<String>>(7).unwrap_or_default()),
        "user" => Target::User,
        "uri" => Target::Uri(row.get::<_, Option<String>>(8).unwrap_or_default()),
        _ => Target::Reject {
            code: row.get::<_, Option<i32>>(9).and_then(|c| u16::try_from(c).ok()).unwrap_or_default(),
            reason: row.get::<_, Option<String>>(10).unwrap_or_default(),
        },
    };
    Ok(Route {
        id: row.get(0),
        name: row.get(1),
        priority: row.get(2),
        match_kind: row.get::<_, &str>(3).parse()?,
        match_value: row.get(4),
        source_domain: row.get(5),
        target,
        description: row.get(11),
        created_at: row.get(12),
    })
}

/// Adds a route. Kamailio uses it after its next `dialplan.reload`.
pub async fn add(client: &impl GenericClient, route: &NewRoute) -> Result<Route, DbError> {
    let r = validate(route)?;
    let (pool, uri, code, reason) = match &r.target {
        Target::Pool(p) => (Some(p.as_str()), None, None, None),
        Target::User => (None, None, None, None),
        Target::Uri(u) => (None, Some(u.as_str()), None, None),
        Target::Reject { code, reason } => (None, None, Some(i32::from(*code)), Some(reason.as_str())),
    };
    let sql = format!(
        "INSERT INTO sipstack_route AS r (name, priority, match_kind, match_value, source_domain, target_kind,
             target_pool, target_uri, reject_code, reject_reason, description)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         RETURNING {ROUTE_COLUMNS}"
    );
    let result = client
        .query_one(
            &sql,
            &[
                &r.name,
                &r.priority,
                &r.match_kind.as_str(),
                &r.match_value,
                &r.source_domain,
                &r.target.kind(),
                &pool,
                &uri,
                &code,
                &reason,
                &r.description,
            ],
        )
        .await;
    match result {
        Ok(row) => route_from_row(&row),
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            Err(DbError::AlreadyExists { kind: "route", name: r.name.clone() })
        }
        Err(e) if e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) => Err(invalid(
            "target_pool",
            format!("media pool {} does not exist", shown(pool.unwrap_or_default())),
            "apply the MediaPool first, or name an existing pool",
        )),
        Err(e) => Err(DbError::query(format!("cannot add route {:?}", r.name))(e)),
    }
}

/// Every route, in the order they are tried (priority, then id).
pub async fn list(client: &impl GenericClient) -> Result<Vec<Route>, DbError> {
    let rows = client
        .query(&format!("SELECT {ROUTE_COLUMNS} FROM sipstack_route AS r ORDER BY r.priority, r.id"), &[])
        .await
        .map_err(DbError::query("cannot list routes"))?;
    rows.iter().map(route_from_row).collect()
}

/// Deletes a route by name.
pub async fn delete(client: &impl GenericClient, name: &str) -> Result<(), DbError> {
    validate::name("name", name)?;
    let deleted = client
        .execute("DELETE FROM sipstack_route WHERE name = $1", &[&name])
        .await
        .map_err(DbError::query(format!("cannot delete route {name:?}")))?;
    if deleted == 0 {
        return Err(DbError::NotFound { kind: "route", name: name.to_string() });
    }
    Ok(())
}

/// The dialplan rules as Kamailio loads them, by dpid and pr.
pub async fn dialplan_rules(client: &impl GenericClient) -> Result<Vec<DialplanRule>, DbError> {
    let rows = client
        .query(
            "SELECT dpid, pr, match_op, match_exp, match_len, subst_exp, repl_exp, attrs
             FROM sipstack_dialplan ORDER BY dpid, pr",
            &[],
        )
        .await
        .map_err(DbError::query("cannot read sipstack_dialplan"))?;
    Ok(rows
        .iter()
        .map(|r| DialplanRule {
            dpid: r.get(0),
            pr: r.get(1),
            match_op: r.get(2),
            match_exp: r.get(3),
            match_len: r.get(4),
            subst_exp: r.get(5),
            repl_exp: r.get(6),
            attrs: r.get(7),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(kind: MatchKind, value: &str, target: Target) -> NewRoute {
        NewRoute {
            name: "r1".into(),
            priority: 100,
            match_kind: kind,
            match_value: value.into(),
            source_domain: None,
            target,
            description: String::new(),
        }
    }

    fn field_of(err: DbError) -> String {
        match err {
            DbError::Invalid { field, .. } => field,
            other => panic!("not a validation error: {other}"),
        }
    }

    #[test]
    fn prefix_escaping() {
        assert_eq!(prefix_match_exp("+44"), r"^\+44");
        assert_eq!(prefix_match_exp("*#9."), r"^\*#9\.");
        assert_eq!(prefix_match_exp("00_1-2"), "^00_1-2");
        // The escaped prefix matches itself literally, and no look-alike.
        let re = regex::Regex::new(&prefix_match_exp("+4.*")).unwrap();
        assert!(re.is_match("+4.*123"));
        assert!(!re.is_match("+4x*123"));
        assert!(!re.is_match("44.*"));
    }

    #[test]
    fn valid_routes_pass_and_domains_are_lower_cased() {
        let mut r = route(MatchKind::Prefix, "+44", Target::Pool("pstn".into()));
        r.source_domain = Some("ACME.example".into());
        assert_eq!(validate(&r).unwrap().source_domain.as_deref(), Some("acme.example"));
        assert!(validate(&route(MatchKind::Exact, "112", Target::User)).is_ok());
        assert!(validate(&route(
            MatchKind::Regex,
            r"^\d{4}$",
            Target::Uri("sip:a@b.example:5060;transport=tcp".into())
        ))
        .is_ok());
        assert!(
            validate(&route(MatchKind::Prefix, "9", Target::Reject { code: 403, reason: "Forbidden".into() })).is_ok()
        );
    }

    #[test]
    fn invalid_routes_name_the_field() {
        let cases: Vec<(NewRoute, &str)> = vec![
            (NewRoute { name: "Bad".into(), ..route(MatchKind::Exact, "1", Target::User) }, "name"),
            (NewRoute { priority: 10000, ..route(MatchKind::Exact, "1", Target::User) }, "priority"),
            (NewRoute { priority: -1, ..route(MatchKind::Exact, "1", Target::User) }, "priority"),
            (route(MatchKind::Prefix, "12 3", Target::User), "match_value"),
            (route(MatchKind::Exact, "1$", Target::User), "match_value"),
            (route(MatchKind::Exact, "", Target::User), "match_value"),
            (route(MatchKind::Exact, &"1".repeat(129), Target::User), "match_value"),
            (route(MatchKind::Regex, "^1\n2", Target::User), "match_value"),
            (route(MatchKind::Regex, "^(1", Target::User), "match_value"),
            (route(MatchKind::Regex, r"^(\d)\1$", Target::User), "match_value"),
            (
                NewRoute { source_domain: Some("a b".into()), ..route(MatchKind::Exact, "1", Target::User) },
                "source_domain",
            ),
            (route(MatchKind::Exact, "1", Target::Pool("Pool_1".into())), "target_pool"),
            (route(MatchKind::Exact, "1", Target::Uri("tel:123".into())), "target_uri"),
            (route(MatchKind::Exact, "1", Target::Uri("sip:$ru".into())), "target_uri"),
            (route(MatchKind::Exact, "1", Target::Uri(r"sip:a\1".into())), "target_uri"),
            (route(MatchKind::Exact, "1", Target::Uri("sip:a\"b".into())), "target_uri"),
            (route(MatchKind::Exact, "1", Target::Uri(format!("sip:{}", "a".repeat(124)))), "target_uri"),
            (route(MatchKind::Exact, "1", Target::Reject { code: 399, reason: "No".into() }), "reject_code"),
            (route(MatchKind::Exact, "1", Target::Reject { code: 700, reason: "No".into() }), "reject_code"),
            (route(MatchKind::Exact, "1", Target::Reject { code: 403, reason: "Not-OK".into() }), "reject_reason"),
            (route(MatchKind::Exact, "1", Target::Reject { code: 403, reason: String::new() }), "reject_reason"),
            (NewRoute { description: "a\nb".into(), ..route(MatchKind::Exact, "1", Target::User) }, "description"),
        ];
        for (r, field) in cases {
            let err = validate(&r).expect_err(&format!("{r:?} accepted"));
            assert_eq!(field_of(err), field, "{r:?}");
        }
    }

    #[test]
    fn uri_length_limit_is_the_dialplan_buffer() {
        let at_limit = format!("sip:{}", "a".repeat(MAX_TARGET_URI_LEN - 4));
        assert!(validate(&route(MatchKind::Exact, "1", Target::Uri(at_limit))).is_ok());
    }

    #[test]
    fn kinds_round_trip() {
        for k in [MatchKind::Prefix, MatchKind::Exact, MatchKind::Regex] {
            assert_eq!(k.as_str().parse::<MatchKind>().unwrap(), k);
        }
        assert!("glob".parse::<MatchKind>().is_err());
    }
}
