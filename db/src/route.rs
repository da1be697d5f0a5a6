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
            _ => Err(invalid(
                "match_kind",
                format!("{} is not a match kind", shown(s)),
                "use prefix, exact or regex",
            )),
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
    /// Out through a trunk (its gateways in order, or a PBX's contact).
    Trunk(String),
}

impl Target {
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Pool(_) => "pool",
            Target::User => "user",
            Target::Uri(_) => "uri",
            Target::Reject { .. } => "reject",
            Target::Trunk(_) => "trunk",
        }
    }
}

/// Which calls a route applies to: the edge keeps routes for calls from
/// subscribers and for calls from trunks in separate rule sets, so a call from a
/// carrier never takes a subscriber's route out to another carrier (transit)
/// unless a route says so.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum RouteSource {
    /// Calls from the platform's subscribers.
    #[default]
    Subscriber,
    /// Calls from trunks (transit).
    Trunk,
    /// Both.
    Any,
}

impl RouteSource {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteSource::Subscriber => "subscriber",
            RouteSource::Trunk => "trunk",
            RouteSource::Any => "any",
        }
    }

    /// Whether calls from subscribers take routes of this source.
    pub fn for_subscribers(self) -> bool {
        matches!(self, RouteSource::Subscriber | RouteSource::Any)
    }

    /// Whether calls from trunks take routes of this source.
    pub fn for_trunks(self) -> bool {
        matches!(self, RouteSource::Trunk | RouteSource::Any)
    }
}

impl fmt::Display for RouteSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RouteSource {
    type Err = DbError;

    fn from_str(s: &str) -> Result<Self, DbError> {
        match s {
            "subscriber" => Ok(RouteSource::Subscriber),
            "trunk" => Ok(RouteSource::Trunk),
            "any" => Ok(RouteSource::Any),
            _ => Err(invalid(
                "source",
                format!("{} is not a route source", shown(s)),
                "use subscriber, trunk or any",
            )),
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
    /// Which calls the route applies to (a caller domain only with [`RouteSource::Subscriber`]).
    pub source: RouteSource,
    pub target: Target,
    /// With a pool target: the service the media node runs for the call
    /// (one of [`SERVICES`]); `None`: the pool's default (answer, tone, echo).
    pub service: Option<String>,
    pub description: String,
}

/// Services a media node runs for a call a route sends it, by name.
pub const SERVICES: &[(&str, &str)] = &[
    ("echo", "answers and returns the caller's audio"),
    (
        "tone",
        "answers and plays a 440 Hz test tone until the caller hangs up",
    ),
    (
        "conference",
        "a conference bridge named by the dialled number",
    ),
    (
        "ivr",
        "a menu (RFC 2833 keys): 1 the conference room \"ivr\", 2 echo, 3 tone",
    ),
    (
        "voicemail",
        "records a message for the dialled subscriber (user@the dialled domain)",
    ),
    (
        "voicemail-inbox",
        "plays the calling subscriber's messages; 7 after one deletes it",
    ),
];

/// A stored route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub id: i32,
    pub name: String,
    pub priority: i32,
    pub match_kind: MatchKind,
    pub match_value: String,
    pub source_domain: Option<String>,
    /// Which calls the route applies to.
    pub source: RouteSource,
    pub target: Target,
    pub service: Option<String>,
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
/// Dialplan id of the platform's numbers, looked up before any route.
pub const NUMBERS_DPID: i32 = 3;
/// Dialplan id of the routes for calls from trunks (source trunk or any).
pub const TRUNK_DPID: i32 = 4;

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
    let source = route.source;
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
    if source_domain.is_some() && source != RouteSource::Subscriber {
        return Err(invalid(
            "source_domain",
            format!(
                "a route for calls from {} has no caller domain: calls from trunks have none",
                if source == RouteSource::Trunk {
                    "trunks"
                } else {
                    "subscribers and trunks"
                }
            ),
            "leave out the caller domain, or make the route for calls from subscribers only",
        ));
    }
    validate_target(&route.target)?;
    if let Some(service) = &route.service {
        if !matches!(route.target, Target::Pool(_)) {
            return Err(invalid(
                "service",
                format!("a route to {} runs no media service", route.target.kind()),
                "give a service only with a pool target (--to-pool POOL --service NAME)",
            ));
        }
        if !SERVICES.iter().any(|(name, _)| name == service) {
            let names: Vec<&str> = SERVICES.iter().map(|(n, _)| *n).collect();
            return Err(invalid(
                "service",
                format!("{} is not a media service", shown(service)),
                format!("use one of {}", names.join(", ")),
            ));
        }
    }
    validate::one_line_text("description", &route.description, 255)?;
    Ok(NewRoute {
        source_domain,
        ..route.clone()
    })
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
                let reason = e
                    .to_string()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ");
                return Err(invalid(
                    "match_value",
                    format!(
                        "{} is not a valid regular expression: {reason}",
                        shown(value)
                    ),
                    "fix the expression (no look-around or back-references), e.g. ^00[1-9][0-9]+$",
                ));
            }
            if let Some((problem, fix)) = backtracking_risk(value) {
                return Err(invalid(
                    "match_value",
                    format!("{}: {problem}", shown(value)),
                    fix,
                ));
            }
            if let Some((problem, fix)) = pcre_difference(value) {
                return Err(invalid(
                    "match_value",
                    format!("{}: {problem}", shown(value)),
                    fix,
                ));
            }
        }
    }
    Ok(())
}

fn validate_target(target: &Target) -> Result<(), DbError> {
    match target {
        Target::Pool(pool) => validate::name("target_pool", pool),
        Target::Trunk(trunk) => validate::name("target_trunk", trunk),
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

const ROUTE_COLUMNS: &str =
    "r.id, r.name, r.priority, r.match_kind, r.match_value, r.source_domain, r.target_kind, \
     r.target_pool, r.target_uri, r.reject_code, r.reject_reason, r.description, r.created_at, r.service, \
     r.target_trunk::text, r.source::text";

fn route_from_row(row: &Row) -> Result<Route, DbError> {
    let target_kind: &str = row.get(6);
    let target = match target_kind {
        "pool" => Target::Pool(row.get::<_, Option<String>>(7).unwrap_or_default()),
        "user" => Target::User,
        "uri" => Target::Uri(row.get::<_, Option<String>>(8).unwrap_or_default()),
        "trunk" => Target::Trunk(row.get::<_, Option<String>>(14).unwrap_or_default()),
        _ => Target::Reject {
            code: row
                .get::<_, Option<i32>>(9)
                .and_then(|c| u16::try_from(c).ok())
                .unwrap_or_default(),
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
        source: row.get::<_, &str>(15).parse()?,
        target,
        service: row.get(13),
        description: row.get(11),
        created_at: row.get(12),
    })
}

/// Syntax the `regex` crate reads differently from PCRE (which the edge's dialplan
/// module uses): a route must mean the same to the edge and to `test route`.
/// Returns the problem and the fix.
/// The longest regular expression a route may have.
pub const MAX_REGEX_LEN: usize = 256;
/// The largest counted repetition (`{n,m}`) a route's expression may use.
pub const MAX_REGEX_REPEAT: u32 = 64;

/// Why the edge's PCRE could spend exponential time on some input of `re`, if it
/// could: Kamailio runs every route's expression on every call, in a worker, so one
/// caller dialling a crafted number would tie up the workers one by one. Refused:
/// a repeated group that holds another repetition (`^([0-9]+)+$`, `(a*)*`) or an
/// alternation (`(a|a)*`), counted repetitions above [`MAX_REGEX_REPEAT`], and
/// expressions longer than [`MAX_REGEX_LEN`].
pub fn backtracking_risk(re: &str) -> Option<(String, String)> {
    use regex_syntax::ast::{Ast, RepetitionKind, RepetitionRange};
    if re.len() > MAX_REGEX_LEN {
        return Some((
            format!(
                "is {} characters long; at most {MAX_REGEX_LEN} are allowed",
                re.len()
            ),
            "split the route into several shorter ones".into(),
        ));
    }
    // Rust's parser of the syntax both dialects share; an expression it cannot
    // parse is refused elsewhere with the parser's own message
    let ast = regex_syntax::ast::parse::Parser::new().parse(re).ok()?;

    /// Upper bound of a repetition: None when unbounded.
    fn max_of(kind: &RepetitionKind) -> Option<u32> {
        match kind {
            RepetitionKind::ZeroOrOne => Some(1),
            RepetitionKind::ZeroOrMore | RepetitionKind::OneOrMore => None,
            RepetitionKind::Range(RepetitionRange::Exactly(n)) => Some(*n),
            RepetitionKind::Range(RepetitionRange::AtLeast(_)) => None,
            RepetitionKind::Range(RepetitionRange::Bounded(_, m)) => Some(*m),
        }
    }
    fn repeats(kind: &RepetitionKind) -> bool {
        max_of(kind).is_none_or(|m| m > 1)
    }
    /// Whether `ast` holds a repetition that repeats, or an alternation.
    fn ambiguous_inside(ast: &Ast) -> Option<&'static str> {
        match ast {
            Ast::Repetition(r) if repeats(&r.op.kind) => Some("a repetition"),
            Ast::Repetition(r) => ambiguous_inside(&r.ast),
            Ast::Alternation(_) => Some("an alternation"),
            Ast::Group(g) => ambiguous_inside(&g.ast),
            Ast::Concat(c) => c.asts.iter().find_map(ambiguous_inside),
            _ => None,
        }
    }
    fn walk(ast: &Ast) -> Option<(String, String)> {
        match ast {
            Ast::Repetition(r) => {
                let counted = match &r.op.kind {
                    RepetitionKind::Range(RepetitionRange::Exactly(n))
                    | RepetitionKind::Range(RepetitionRange::AtLeast(n)) => Some(*n),
                    RepetitionKind::Range(RepetitionRange::Bounded(n, m)) => Some((*n).max(*m)),
                    _ => None,
                };
                if counted.is_some_and(|n| n > MAX_REGEX_REPEAT) {
                    return Some((
                        format!("repeats more than {MAX_REGEX_REPEAT} times"),
                        format!("use counts of at most {MAX_REGEX_REPEAT}, or + and *"),
                    ));
                }
                if repeats(&r.op.kind) {
                    if let Some(what) = ambiguous_inside(&r.ast) {
                        return Some((
                            format!("a repeated group holds {what}, which makes PCRE backtrack exponentially on a number that almost matches"),
                            "repeat single characters or classes only, e.g. ^[0-9]+$ instead of ^([0-9]+)+$, or ^(00|\\+)[0-9]+$ instead of ^(00|\\+)*[0-9]+$".into(),
                        ));
                    }
                }
                walk(&r.ast)
            }
            Ast::Group(g) => walk(&g.ast),
            Ast::Concat(c) => c.asts.iter().find_map(walk),
            Ast::Alternation(a) => a.asts.iter().find_map(walk),
            _ => None,
        }
    }
    walk(&ast)
}

fn pcre_difference(re: &str) -> Option<(&'static str, &'static str)> {
    let chars: Vec<char> = re.chars().collect();
    let at = |i: usize| chars.get(i).copied();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\\' => {
                if matches!(at(i + 1), Some('<' | '>'))
                    || (at(i + 1) == Some('b') && at(i + 2) == Some('{'))
                {
                    return Some((
                        "word-boundary assertions like \\< \\> \\b{start} are read as literal characters by PCRE (the edge)",
                        "use \\b, or leave the assertion out",
                    ));
                }
                i += 2;
            }
            '[' => {
                i += 1;
                if at(i) == Some('^') {
                    i += 1;
                }
                if at(i) == Some(']') {
                    i += 1;
                }
                loop {
                    match at(i) {
                        None => return None,
                        Some('\\') => i += 2,
                        Some(']') => {
                            i += 1;
                            break;
                        }
                        Some('[') if at(i + 1) == Some(':') => {
                            // a POSIX class such as [:digit:]: the same in both
                            let rest: String = chars[i + 2..].iter().collect();
                            i += match rest.find(":]") {
                                Some(end) => 2 + rest[..end].chars().count() + 2,
                                None => 1,
                            };
                        }
                        Some('[') => {
                            return Some((
                                "a '[' inside a character class is a nested class here but a literal '[' for PCRE (the edge)",
                                "escape it as \\[ or write the class out, e.g. [0-46-9] instead of [0-9&&[^5]]",
                            ))
                        }
                        Some(c @ ('&' | '-' | '~')) if at(i + 1) == Some(c) => {
                            return Some((
                                "'&&', '--' and '~~' inside a character class are set operations here but literal characters for PCRE (the edge)",
                                "write the class out, e.g. [0-46-9] instead of [0-9--5]",
                            ))
                        }
                        Some(_) => i += 1,
                    }
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// The media pools routes can name, by name.
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
        "target_pool",
        format!("media pool {} does not exist", shown(pool)),
        if known.is_empty() {
            "no media pool exists yet: apply a MediaPool first".to_string()
        } else {
            format!("name one of the media pools: {}", known.join(", "))
        },
    )
}

/// Adds a route. Kamailio uses it after its next `dialplan.reload`.
pub async fn add(client: &impl GenericClient, route: &NewRoute) -> Result<Route, DbError> {
    let r = validate(route)?;
    if let Target::Pool(pool) = &r.target {
        let known = pool_names(client).await?;
        if !known.iter().any(|k| k == pool) {
            return Err(unknown_pool(pool, &known));
        }
    }
    if let Target::Trunk(trunk) = &r.target {
        let known = crate::trunk::names(client).await?;
        if !known.iter().any(|k| k == trunk) {
            return Err(crate::trunk::unknown_trunk("target_trunk", trunk, &known));
        }
    }
    let (pool, uri, code, reason, trunk) = match &r.target {
        Target::Pool(p) => (Some(p.as_str()), None, None, None, None),
        Target::User => (None, None, None, None, None),
        Target::Uri(u) => (None, Some(u.as_str()), None, None, None),
        Target::Reject { code, reason } => (
            None,
            None,
            Some(i32::from(*code)),
            Some(reason.as_str()),
            None,
        ),
        Target::Trunk(t) => (None, None, None, None, Some(t.as_str())),
    };
    let sql = format!(
        "INSERT INTO sipstack_route AS r (name, priority, match_kind, match_value, source_domain, target_kind,
             target_pool, target_uri, reject_code, reject_reason, description, service, target_trunk, source)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
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
                &r.service,
                &trunk,
                &r.source.as_str(),
            ],
        )
        .await;
    match result {
        Ok(row) => route_from_row(&row),
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => Err(DbError::AlreadyExists {
            kind: "route",
            name: r.name.clone(),
        }),
        // the trunk or pool was deleted between the check above and the insert
        Err(e)
            if e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION)
                && e.as_db_error().and_then(|d| d.constraint())
                    == Some("sipstack_route_target_trunk_fkey") =>
        {
            Err(crate::trunk::unknown_trunk(
                "target_trunk",
                trunk.unwrap_or_default(),
                &[],
            ))
        }
        Err(e) if e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) => Err(invalid(
            "target_pool",
            format!(
                "media pool {} does not exist",
                shown(pool.unwrap_or_default())
            ),
            "apply the MediaPool first, or name an existing pool",
        )),
        Err(e) => Err(DbError::query(format!("cannot add route {:?}", r.name))(e)),
    }
}

/// Every route, in the order they are tried (priority, then id).
pub async fn list(client: &impl GenericClient) -> Result<Vec<Route>, DbError> {
    let rows = client
        .query(
            &format!("SELECT {ROUTE_COLUMNS} FROM sipstack_route AS r ORDER BY r.priority, r.id"),
            &[],
        )
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
        return Err(DbError::NotFound {
            kind: "route",
            name: name.to_string(),
        });
    }
    Ok(())
}

/// One route by name.
pub async fn get(client: &impl GenericClient, name: &str) -> Result<Route, DbError> {
    validate::name("name", name)?;
    let row = client
        .query_opt(
            &format!("SELECT {ROUTE_COLUMNS} FROM sipstack_route AS r WHERE r.name = $1"),
            &[&name],
        )
        .await
        .map_err(DbError::query(format!("cannot read route {name:?}")))?;
    match row {
        Some(row) => route_from_row(&row),
        None => Err(DbError::NotFound {
            kind: "route",
            name: name.to_string(),
        }),
    }
}

/// Deletes routes by name, all or none: when one of them does not exist, nothing
/// is deleted and the first missing name is reported. Returns the names deleted.
pub async fn delete_all(
    client: &impl GenericClient,
    names: &[String],
) -> Result<Vec<String>, DbError> {
    for name in names {
        validate::name("name", name)?;
    }
    // One statement: the check and the delete see the same snapshot.
    let rows = client
        .query(
            "WITH wanted AS (
                 SELECT DISTINCT w.name FROM unnest($1::text[]) AS w(name)
             ),
             missing AS (
                 SELECT w.name FROM wanted AS w
                 WHERE NOT EXISTS (SELECT 1 FROM sipstack_route AS r WHERE r.name = w.name)
             ),
             deleted AS (
                 DELETE FROM sipstack_route AS r USING wanted AS w
                 WHERE r.name = w.name AND NOT EXISTS (SELECT 1 FROM missing)
                 RETURNING r.name::text, r.priority, r.id
             )
             SELECT 'missing', m.name, 0, 0 FROM missing AS m
             UNION ALL SELECT 'deleted', d.name, d.priority, d.id FROM deleted AS d",
            &[&names],
        )
        .await
        .map_err(DbError::query("cannot delete routes"))?;
    let mut missing: Vec<String> = Vec::new();
    let mut deleted: Vec<(i32, i32, String)> = Vec::new();
    for row in &rows {
        let (what, name, priority, id): (&str, String, i32, i32) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        if what == "missing" {
            missing.push(name);
        } else {
            deleted.push((priority, id, name));
        }
    }
    if !missing.is_empty() {
        // report in the order given
        let first = names
            .iter()
            .find(|n| missing.contains(n))
            .cloned()
            .unwrap_or_default();
        return Err(DbError::NotFound {
            kind: "route",
            name: first,
        });
    }
    deleted.sort();
    Ok(deleted.into_iter().map(|(_, _, name)| name).collect())
}

/// The route id a dialplan rule was made from (`id=N` in its attrs).
pub fn rule_route_id(attrs: &str) -> Option<i32> {
    rule_attr(attrs, "id")
}

/// The number id a rule of dialplan 3 was made from (`n=N` in its attrs).
pub fn rule_number_id(attrs: &str) -> Option<i32> {
    rule_attr(attrs, "n")
}

/// The trunk id a rule sends calls to (`k=N` in its attrs).
pub fn rule_trunk_id(attrs: &str) -> Option<i32> {
    rule_attr(attrs, "k")
}

fn rule_attr(attrs: &str, key: &str) -> Option<i32> {
    attrs
        .split(';')
        .find_map(|kv| {
            kv.split_once('=')
                .filter(|(k, _)| *k == key)
                .map(|(_, v)| v)
        })
        .and_then(|v| v.parse().ok())
}

/// What one dialplan rule did with a number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleOutcome {
    /// The first rule that matched: the call takes this route.
    Matched,
    NoMatch,
    /// An earlier rule matched.
    NotTried,
    /// Kamailio never tries it for a number of this length (dialplan's match_len).
    OtherLength,
    /// The expression could not be evaluated here (the edge may still match it).
    Unevaluable(String),
}

/// A rule of the chosen rule set and what it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleVerdict {
    pub rule: DialplanRule,
    pub outcome: RuleOutcome,
}

/// How the edge's routing rules treat one dialled number, computed from the rules
/// in the database with the dialplan module's semantics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    /// The route rule set (dpid) for the caller: [`DEFAULT_DPID`] or its domain's
    /// own, or [`TRUNK_DPID`] for a call from a trunk.
    pub dpid: i32,
    /// Whether the caller's domain has routes of its own (so `dpid` is its set).
    pub domain_rule_set: bool,
    /// The platform's numbers ([`NUMBERS_DPID`]) in the order dialplan tries
    /// them: one that matches decides, and no route is tried.
    pub numbers: Vec<RuleVerdict>,
    /// The rules of the route set in the order dialplan tries them.
    pub verdicts: Vec<RuleVerdict>,
}

impl Evaluation {
    /// The route rule that decides the call, if a route does.
    pub fn matched(&self) -> Option<&DialplanRule> {
        self.verdicts
            .iter()
            .find(|v| v.outcome == RuleOutcome::Matched)
            .map(|v| &v.rule)
    }

    /// The number rule that decides the call, if a number does.
    pub fn matched_number(&self) -> Option<&DialplanRule> {
        self.numbers
            .iter()
            .find(|v| v.outcome == RuleOutcome::Matched)
            .map(|v| &v.rule)
    }
}

/// Whether a dialplan regular expression matches `input`, as close to PCRE as the
/// `regex` crate gets: bytes, ASCII classes (`\d` is [0-9], `.` one byte), an
/// unanchored search, case-sensitive.
pub fn regex_matches(exp: &str, input: &str) -> Result<bool, String> {
    match regex::bytes::RegexBuilder::new(exp).unicode(false).build() {
        Ok(re) => Ok(re.is_match(input.as_bytes())),
        // e.g. \p{..} needs Unicode mode
        Err(_) => match regex::Regex::new(exp) {
            Ok(re) => Ok(re.is_match(input)),
            Err(e) => Err(e
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")),
        },
    }
}

fn rule_matches(rule: &DialplanRule, input: &str) -> Result<bool, String> {
    match rule.match_op {
        0 => Ok(rule.match_exp == input),
        1 => regex_matches(&rule.match_exp, input),
        op => Err(format!("match operator {op} is not one sipstack writes")),
    }
}

/// The rules of `dpid` in the order Kamailio's dialplan tries them for an input of
/// `len` bytes: those whose match_len is `len` first, then those with match_len 0,
/// each by pr; others never.
fn ordered_rules(rules: &[DialplanRule], dpid: i32, len: usize) -> Vec<(DialplanRule, bool)> {
    let mut of_set: Vec<&DialplanRule> = rules.iter().filter(|r| r.dpid == dpid).collect();
    of_set.sort_by_key(|r| r.pr);
    let len = i32::try_from(len).unwrap_or(i32::MAX);
    let mut out: Vec<(DialplanRule, bool)> = Vec::new();
    if len != 0 {
        out.extend(
            of_set
                .iter()
                .filter(|r| r.match_len == len)
                .map(|r| ((*r).clone(), true)),
        );
    }
    out.extend(
        of_set
            .iter()
            .filter(|r| r.match_len == 0)
            .map(|r| ((*r).clone(), true)),
    );
    out.extend(
        of_set
            .iter()
            .filter(|r| r.match_len != 0 && r.match_len != len)
            .map(|r| ((*r).clone(), false)),
    );
    out
}

/// The first rule of `dpid` that matches `input`, as dialplan's translation does.
fn translate<'a>(rules: &'a [DialplanRule], dpid: i32, input: &str) -> Option<&'a DialplanRule> {
    let ordered = ordered_rules(rules, dpid, input.len());
    let hit = ordered
        .into_iter()
        .filter(|(_, tried)| *tried)
        .find(|(r, _)| rule_matches(r, input) == Ok(true))?;
    rules.iter().find(|r| **r == hit.0)
}

/// The rules of `dpid` tried on `input` in dialplan's order, and whether one
/// matched. With `decided` (an earlier lookup took the call) none is tried.
fn run_rules(
    rules: &[DialplanRule],
    dpid: i32,
    input: &str,
    decided: bool,
) -> (Vec<RuleVerdict>, bool) {
    let mut verdicts = Vec::new();
    let mut decided_here = false;
    for (rule, tried) in ordered_rules(rules, dpid, input.len()) {
        let outcome = if !tried {
            RuleOutcome::OtherLength
        } else if decided || decided_here {
            RuleOutcome::NotTried
        } else {
            match rule_matches(&rule, input) {
                Ok(true) => {
                    decided_here = true;
                    RuleOutcome::Matched
                }
                Ok(false) => RuleOutcome::NoMatch,
                Err(e) => RuleOutcome::Unevaluable(e),
            }
        };
        verdicts.push(RuleVerdict { rule, outcome });
    }
    (verdicts, decided_here)
}

/// What the edge does with `number` dialled by a subscriber of `from_domain`
/// (`None`: a domain without routes of its own): the numbers (dialplan 3) first;
/// when none matches, the ROUTING block: dialplan 1 maps the lower-cased domain to
/// its rule set, otherwise set 2, and the first rule of that set that matches
/// decides.
pub fn evaluate(rules: &[DialplanRule], number: &str, from_domain: Option<&str>) -> Evaluation {
    let (numbers, by_number) = run_rules(rules, NUMBERS_DPID, number, false);
    let mut dpid = DEFAULT_DPID;
    let mut domain_rule_set = false;
    if let Some(domain) = from_domain {
        if let Some(rule) = translate(rules, DOMAIN_MAP_DPID, &domain.to_ascii_lowercase()) {
            // the config reads the attrs with {s.int}
            if let Ok(set) = rule.attrs.trim().parse::<i32>() {
                dpid = set;
                domain_rule_set = true;
            }
        }
    }
    let (verdicts, _) = run_rules(rules, dpid, number, by_number);
    Evaluation {
        dpid,
        domain_rule_set,
        numbers,
        verdicts,
    }
}

/// What the edge does with `number` dialled from a trunk: the numbers (dialplan
/// 3) first, then the routes for calls from trunks (dialplan 4). A call neither
/// takes is transit, which the edge refuses.
pub fn evaluate_from_trunk(rules: &[DialplanRule], number: &str) -> Evaluation {
    let (numbers, by_number) = run_rules(rules, NUMBERS_DPID, number, false);
    let (verdicts, _) = run_rules(rules, TRUNK_DPID, number, by_number);
    Evaluation {
        dpid: TRUNK_DPID,
        domain_rule_set: false,
        numbers,
        verdicts,
    }
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
    #[test]
    fn patterns_that_backtrack_catastrophically_are_refused() {
        for bad in [
            "^([0-9]+)+$",
            "^(a*)*$",
            "(a|a)*b",
            "^(0|00)+1$",
            "^([0-9]{2,})*$",
            "^(?:[0-9]+x?)+$",
            "^[0-9]{1000}$",
        ] {
            assert!(super::backtracking_risk(bad).is_some(), "{bad} accepted");
        }
        let long = format!("^{}$", "1".repeat(super::MAX_REGEX_LEN));
        assert!(super::backtracking_risk(&long).is_some());
        for good in [
            "^00[1-9][0-9]+$",
            "^(00|\\+)?[1-9][0-9]{6,14}$",
            "^(1|2|3)[0-9]*$",
            "^3[0-9]{3}$",
            "^([0-9][0-9])?$",
            "^\\+44(20|21)[0-9]+$",
        ] {
            assert_eq!(super::backtracking_risk(good), None, "{good} refused");
        }
    }

    use super::*;

    fn route(kind: MatchKind, value: &str, target: Target) -> NewRoute {
        NewRoute {
            name: "r1".into(),
            priority: 100,
            match_kind: kind,
            match_value: value.into(),
            source_domain: None,
            source: RouteSource::Subscriber,
            target,
            service: None,
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
    fn a_service_needs_a_pool_and_a_known_name() {
        let mut r = route(MatchKind::Exact, "3000", Target::Pool("media".into()));
        r.service = Some("conference".into());
        assert!(validate(&r).is_ok());
        for bad in ["nope", "conference;t=uri", "Echo", ""] {
            r.service = Some(bad.into());
            assert_eq!(field_of(validate(&r).unwrap_err()), "service", "{bad:?}");
        }
        let mut r = route(MatchKind::Exact, "3000", Target::User);
        r.service = Some("echo".into());
        assert_eq!(field_of(validate(&r).unwrap_err()), "service");
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
        assert_eq!(
            validate(&r).unwrap().source_domain.as_deref(),
            Some("acme.example")
        );
        assert!(validate(&route(MatchKind::Exact, "112", Target::User)).is_ok());
        assert!(validate(&route(
            MatchKind::Regex,
            r"^\d{4}$",
            Target::Uri("sip:a@b.example:5060;transport=tcp".into())
        ))
        .is_ok());
        assert!(validate(&route(
            MatchKind::Prefix,
            "9",
            Target::Reject {
                code: 403,
                reason: "Forbidden".into()
            }
        ))
        .is_ok());
    }

    #[test]
    fn invalid_routes_name_the_field() {
        let cases: Vec<(NewRoute, &str)> = vec![
            (
                NewRoute {
                    name: "Bad".into(),
                    ..route(MatchKind::Exact, "1", Target::User)
                },
                "name",
            ),
            (
                NewRoute {
                    priority: 10000,
                    ..route(MatchKind::Exact, "1", Target::User)
                },
                "priority",
            ),
            (
                NewRoute {
                    priority: -1,
                    ..route(MatchKind::Exact, "1", Target::User)
                },
                "priority",
            ),
            (
                route(MatchKind::Prefix, "12 3", Target::User),
                "match_value",
            ),
            (route(MatchKind::Exact, "1$", Target::User), "match_value"),
            (route(MatchKind::Exact, "", Target::User), "match_value"),
            (
                route(MatchKind::Exact, &"1".repeat(129), Target::User),
                "match_value",
            ),
            (
                route(MatchKind::Regex, "^1\n2", Target::User),
                "match_value",
            ),
            (route(MatchKind::Regex, "^(1", Target::User), "match_value"),
            (
                route(MatchKind::Regex, r"^(\d)\1$", Target::User),
                "match_value",
            ),
            (
                NewRoute {
                    source_domain: Some("a b".into()),
                    ..route(MatchKind::Exact, "1", Target::User)
                },
                "source_domain",
            ),
            (
                route(MatchKind::Exact, "1", Target::Pool("Pool_1".into())),
                "target_pool",
            ),
            (
                route(MatchKind::Exact, "1", Target::Uri("tel:123".into())),
                "target_uri",
            ),
            (
                route(MatchKind::Exact, "1", Target::Uri("sip:$ru".into())),
                "target_uri",
            ),
            (
                route(MatchKind::Exact, "1", Target::Uri(r"sip:a\1".into())),
                "target_uri",
            ),
            (
                route(MatchKind::Exact, "1", Target::Uri("sip:a\"b".into())),
                "target_uri",
            ),
            (
                route(
                    MatchKind::Exact,
                    "1",
                    Target::Uri(format!("sip:{}", "a".repeat(124))),
                ),
                "target_uri",
            ),
            (
                route(
                    MatchKind::Exact,
                    "1",
                    Target::Reject {
                        code: 399,
                        reason: "No".into(),
                    },
                ),
                "reject_code",
            ),
            (
                route(
                    MatchKind::Exact,
                    "1",
                    Target::Reject {
                        code: 700,
                        reason: "No".into(),
                    },
                ),
                "reject_code",
            ),
            (
                route(
                    MatchKind::Exact,
                    "1",
                    Target::Reject {
                        code: 403,
                        reason: "Not-OK".into(),
                    },
                ),
                "reject_reason",
            ),
            (
                route(
                    MatchKind::Exact,
                    "1",
                    Target::Reject {
                        code: 403,
                        reason: String::new(),
                    },
                ),
                "reject_reason",
            ),
            (
                NewRoute {
                    service: None,
                    description: "a\nb".into(),
                    ..route(MatchKind::Exact, "1", Target::User)
                },
                "description",
            ),
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
    fn regexes_pcre_reads_differently_are_refused() {
        for bad in [
            r"^[0-9&&[^5]]$",
            r"^[0-9--5]$",
            r"^[a[bc]]",
            r"\<12",
            r"12\>",
            r"\b{start}1",
        ] {
            let err = validate(&route(MatchKind::Regex, bad, Target::User)).expect_err(bad);
            assert_eq!(field_of(err), "match_value", "{bad}");
        }
        for ok in [
            r"^[[:digit:]]{4}$",
            r"^[]a]",
            r"^[\[]1",
            r"^[a-]",
            r"^0[1-9][0-9]+$",
            r"^\+?49",
            "^[^5]$",
        ] {
            assert!(
                validate(&route(MatchKind::Regex, ok, Target::User)).is_ok(),
                "{ok} refused"
            );
        }
    }

    fn rule(dpid: i32, pr: i32, op: i32, exp: &str, len: i32, attrs: &str) -> DialplanRule {
        DialplanRule {
            dpid,
            pr,
            match_op: op,
            match_exp: exp.into(),
            match_len: len,
            subst_exp: String::new(),
            repl_exp: String::new(),
            attrs: attrs.into(),
        }
    }

    #[test]
    fn evaluation_follows_dialplan() {
        let rules = vec![
            rule(1, 1, 0, "acme.example", 12, "1001"),
            rule(2, 1, 1, r"^900", 0, "id=1;t=reject;c=403"),
            rule(2, 2, 0, "5000", 0, "id=2;t=pool;s=2"),
            rule(2, 3, 1, r"^\d{4}$", 0, "id=3;t=user"),
            rule(1001, 1, 1, r"^\+44", 0, "id=4;t=uri"),
            rule(1001, 2, 1, r"^900", 0, "id=1;t=reject;c=403"),
        ];
        let e = evaluate(&rules, "5000", None);
        assert_eq!(e.dpid, 2);
        assert!(!e.domain_rule_set);
        assert_eq!(e.matched().map(|r| rule_route_id(&r.attrs)), Some(Some(2)));
        let outcomes: Vec<&RuleOutcome> = e.verdicts.iter().map(|v| &v.outcome).collect();
        assert_eq!(
            outcomes,
            [
                &RuleOutcome::NoMatch,
                &RuleOutcome::Matched,
                &RuleOutcome::NotTried
            ]
        );

        // the domain is compared lower-cased and picks its own set
        let e = evaluate(&rules, "+4420", Some("ACME.example"));
        assert_eq!((e.dpid, e.domain_rule_set), (1001, true));
        assert_eq!(e.matched().and_then(|r| rule_route_id(&r.attrs)), Some(4));
        // other domains get set 2; nothing matches there
        let e = evaluate(&rules, "+4420", Some("other.example"));
        assert_eq!(e.dpid, 2);
        assert!(e.matched().is_none());
        // \d is ASCII only, as in PCRE without UTF
        assert!(evaluate(&rules, "١٢٣٤", None).matched().is_none());
        // a search, not anchored unless the expression says so
        assert_eq!(regex_matches("abc", "xxabcxx"), Ok(true));
        assert_eq!(regex_matches("abc", "xxABCxx"), Ok(false));
    }

    #[test]
    fn numbers_decide_before_routes() {
        let rules = vec![
            rule(2, 1, 1, r"^\+44", 0, "id=1;t=uri"),
            rule(3, 1, 0, "+442071234567", 0, "n=7;t=user"),
            rule(3, 2, 1, r"^\+4420", 0, "n=8;t=trunk;k=2"),
            rule(4, 1, 1, r"^\+1", 0, "id=2;t=trunk;k=3"),
        ];
        // an exact number first, whatever the routes say
        let e = evaluate(&rules, "+442071234567", None);
        assert_eq!(
            e.matched_number().and_then(|r| rule_number_id(&r.attrs)),
            Some(7)
        );
        assert!(e.matched().is_none());
        assert_eq!(e.verdicts[0].outcome, RuleOutcome::NotTried);
        assert_eq!(e.numbers[1].outcome, RuleOutcome::NotTried);
        // a block's prefix
        let e = evaluate(&rules, "+442079999999", None);
        let n = e.matched_number().unwrap();
        assert_eq!(
            (rule_number_id(&n.attrs), rule_trunk_id(&n.attrs)),
            (Some(8), Some(2))
        );
        // not a number of the platform: the routes
        let e = evaluate(&rules, "+4413", None);
        assert!(e.matched_number().is_none());
        assert_eq!(e.matched().and_then(|r| rule_route_id(&r.attrs)), Some(1));
        assert_eq!(rule_number_id("id=1;t=uri"), None);
        assert_eq!(rule_route_id("n=7;t=user"), None);

        // from a trunk: numbers, then dpid 4 only; the subscribers' route is not taken
        let e = evaluate_from_trunk(&rules, "+4413");
        assert_eq!(e.dpid, TRUNK_DPID);
        assert!(e.matched().is_none() && e.matched_number().is_none());
        let e = evaluate_from_trunk(&rules, "+15551234");
        assert_eq!(e.matched().and_then(|r| rule_route_id(&r.attrs)), Some(2));
        let e = evaluate_from_trunk(&rules, "+442071234567");
        assert_eq!(
            e.matched_number().and_then(|r| rule_number_id(&r.attrs)),
            Some(7)
        );
    }

    #[test]
    fn sources() {
        for s in [
            RouteSource::Subscriber,
            RouteSource::Trunk,
            RouteSource::Any,
        ] {
            assert_eq!(s.as_str().parse::<RouteSource>().unwrap(), s);
        }
        assert!("carrier".parse::<RouteSource>().is_err());
        assert!(RouteSource::Any.for_trunks() && RouteSource::Any.for_subscribers());
        assert!(!RouteSource::Trunk.for_subscribers() && !RouteSource::Subscriber.for_trunks());
        let mut r = route(MatchKind::Prefix, "+1", Target::Trunk("carrier-a".into()));
        r.source = RouteSource::Trunk;
        assert!(validate(&r).is_ok());
        r.source_domain = Some("example.com".into());
        for source in [RouteSource::Trunk, RouteSource::Any] {
            r.source = source;
            assert_eq!(field_of(validate(&r).unwrap_err()), "source_domain");
        }
        r.source = RouteSource::Subscriber;
        assert!(validate(&r).is_ok());
        for bad in ["Carrier", "a b", "x'); DROP TABLE sipstack_route; --", ""] {
            let r = route(MatchKind::Prefix, "+1", Target::Trunk(bad.into()));
            assert_eq!(
                field_of(validate(&r).unwrap_err()),
                "target_trunk",
                "{bad:?}"
            );
        }
        let mut r = route(MatchKind::Prefix, "+1", Target::Trunk("carrier-a".into()));
        r.service = Some("echo".into());
        assert_eq!(field_of(validate(&r).unwrap_err()), "service");
    }

    #[test]
    fn rules_with_a_match_length_go_first() {
        let rules = vec![
            rule(2, 1, 1, "^1", 0, "id=1"),
            rule(2, 9, 1, "^1", 3, "id=2"),
            rule(2, 5, 1, "^1", 2, "id=3"),
        ];
        let e = evaluate(&rules, "123", None);
        assert_eq!(e.matched().and_then(|r| rule_route_id(&r.attrs)), Some(2));
        assert_eq!(
            e.verdicts.last().map(|v| &v.outcome),
            Some(&RuleOutcome::OtherLength)
        );
    }

    #[test]
    fn kinds_round_trip() {
        for k in [MatchKind::Prefix, MatchKind::Exact, MatchKind::Regex] {
            assert_eq!(k.as_str().parse::<MatchKind>().unwrap(), k);
        }
        assert!("glob".parse::<MatchKind>().is_err());
    }
}
