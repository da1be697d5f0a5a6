//! Routes: `add`, `get`, `delete`, and `test route NUMBER`.
//!
//! Routes live in `sipstack_route`; the edges load them through the view
//! `sipstack_dialplan` (migrations 0002, 0006) with Kamailio's dialplan module. A
//! change is committed first and then pushed to every edge with `dialplan.reload`.
//! `test route` evaluates the rules of that view with the dialplan module's
//! semantics (the platform's numbers first, then the caller's routes) and, where
//! an edge answers, asks it the same question.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::Context as _;
use clap::Args;
use serde::Serialize;
use sipstack_db::number::{self as numbers, Number, NumberMatch, NumberTarget};
use sipstack_db::route::{
    self, DialplanRule, MatchKind, NewRoute, Route, RuleOutcome, Target, DEFAULT_DPID,
    DOMAIN_MAP_DPID, NUMBERS_DPID, TRUNK_DPID,
};
use sipstack_db::trunk::{self as trunks, Trunk};
use sipstack_db::{media_pool, validate, DbError};
use sipstack_edgerpc::{DialplanEntry, EdgeRpc, Reload};
use tokio_postgres::IsolationLevel;

use super::number::{number_text, NumberView};
use super::trunk::{gateway_views, GatewayView};
use super::{CliError, Ctx};
use crate::output::{write_table, Columns, Format};

/// What a route matches on the dialled number (exactly one).
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct MatchArgs {
    /// Numbers starting with this prefix (digits, letters, + * # . _ -).
    #[arg(long)]
    pub prefix: Option<String>,
    /// Exactly this number.
    #[arg(long)]
    pub exact: Option<String>,
    /// Numbers this regular expression matches (PCRE, as Kamailio uses it; a search:
    /// anchor with ^ and $; no look-around or back-references).
    #[arg(long)]
    pub regex: Option<String>,
}

/// Where a matching call goes (exactly one).
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct TargetArgs {
    /// A media pool (MediaPool name).
    #[arg(long)]
    pub to_pool: Option<String>,
    /// The registered user named by the number.
    #[arg(long)]
    pub to_user: bool,
    /// A fixed SIP URI, e.g. sip:carrier@203.0.113.5:5060.
    #[arg(long)]
    pub to_uri: Option<String>,
    /// Reject with this SIP code (400-699).
    #[arg(long, allow_negative_numbers = true, value_name = "CODE")]
    pub reject: Option<i64>,
    /// Out through a trunk (its gateways in order, or a PBX's contact).
    #[arg(long, visible_alias = "trunk", value_name = "NAME")]
    pub to_trunk: Option<String>,
}

/// Add a routing rule; the edges reload their rules.
#[derive(Debug, Args)]
#[command(
    after_help = "Routes are tried in the order of their priority (lower first; equal priorities in the order \
they were added); the first that matches decides. A route with --from-domain applies only to callers of that \
domain, together with the routes for every domain.\n\nExamples:\n  sipctl add route uk --prefix +44 --to-uri sip:carrier@203.0.113.5\n  sipctl add route premium-block --prefix 0900 --reject 403 --reason 'Premium Blocked' --priority 10\n  sipctl add route desks --regex '^7[0-9]{3}$' --to-user\n  sipctl add route ivr --exact 5000 --to-pool media --from-domain example.com\n  sipctl add route rooms --regex '^3[0-9]{3}$' --to-pool media --service conference\n  sipctl add route us --prefix +1 --trunk carrier-a\n  sipctl add route transit-us --prefix +1 --trunk carrier-a --source trunk\n\nA route applies to calls from subscribers unless --source says otherwise: calls from trunks take only \
routes with --source trunk or any (numbers of the platform come first for every caller), and a call from a trunk \
that none takes is refused as transit."
)]
pub struct AddArgs {
    /// Name of the route (lower-case letters, digits, '-').
    pub name: String,
    #[command(flatten)]
    pub matcher: MatchArgs,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Order among matching routes: lower is tried first (0-9999).
    #[arg(long, default_value_t = 100, allow_negative_numbers = true)]
    pub priority: i32,
    /// Only for callers of this domain.
    #[arg(long)]
    pub from_domain: Option<String>,
    /// Which calls the route applies to: from subscribers, from trunks (transit), or any.
    #[arg(long, default_value = "subscriber", value_parser = ["subscriber", "trunk", "any"])]
    pub source: String,
    /// Reason phrase of a rejection (letters, digits, spaces; default: the code's usual phrase).
    #[arg(long, requires = "reject")]
    pub reason: Option<String>,
    /// With --to-pool: the service the media node runs for the call: echo, tone,
    /// conference (a bridge named by the dialled number) or ivr (keys 1 conference
    /// room "ivr", 2 echo, 3 tone). Default: answer, a short tone, then echo.
    #[arg(long, requires = "to_pool")]
    pub service: Option<String>,
    /// Free text shown by `get routes -o wide`.
    #[arg(long, default_value = "")]
    pub description: String,
}

/// List routes in the order they are tried, or show one.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  sipctl get routes\n  sipctl get routes -o wide\n  sipctl get route uk -o yaml"
)]
pub struct GetArgs {
    /// One route by name.
    pub name: Option<String>,
}

/// Delete routes (all or none); the edges reload their rules.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  sipctl delete route uk premium-block")]
pub struct DeleteArgs {
    #[arg(required = true)]
    pub names: Vec<String>,
}

/// Show which route a dialled number takes and why, without a call.
#[derive(Debug, Args)]
#[command(
    after_help = "The rules are evaluated from the database as the edge's dialplan module does; every edge \
that answers is asked too (`dialplan.translate`), and the answer says whether it agrees. `-o wide` lists every \
route and why it did or did not match.\n\nExamples:\n  sipctl test route +442071234567\n  sipctl test route 5000 --from-domain example.com -o wide\n  sipctl test route +442071234567 --from-trunk carrier-a\n\nThe platform's numbers are looked up first, for every caller; only a number that is none of them takes \
the routes: a subscriber's (of its domain) or, with --from-trunk, those for calls from trunks. For a trunk target \
the answer lists the trunk's gateways in the order they are tried."
)]
pub struct TestArgs {
    /// The dialled number (the Request-URI's user part).
    pub number: String,
    /// The caller's domain (routes of that domain apply too).
    #[arg(long)]
    pub from_domain: Option<String>,
    /// The call comes from this trunk (a carrier's address or a PBX's account).
    #[arg(long, conflicts_with = "from_domain", value_name = "NAME")]
    pub from_trunk: Option<String>,
}

/// A route as sipctl prints it; the JSON/YAML field names are stable.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct RouteView {
    id: i32,
    name: String,
    priority: i32,
    /// prefix, exact or regex
    match_kind: &'static str,
    match_value: String,
    /// null: callers of every domain
    from_domain: Option<String>,
    /// Which calls it applies to: subscriber, trunk or any
    source: &'static str,
    /// pool, user, uri, reject or trunk
    target_kind: &'static str,
    target_pool: Option<String>,
    /// The dispatcher set of the target pool.
    target_set_id: Option<i32>,
    /// The media service a pool target runs (null: the pool's default).
    service: Option<String>,
    target_uri: Option<String>,
    reject_code: Option<u16>,
    reject_reason: Option<String>,
    target_trunk: Option<String>,
    description: String,
    created_at: Option<String>,
}

impl RouteView {
    fn new(r: &Route, sets: &BTreeMap<String, i32>) -> Self {
        let (pool, uri, code, reason) = match &r.target {
            Target::Pool(p) => (Some(p.clone()), None, None, None),
            Target::User | Target::Trunk(_) => (None, None, None, None),
            Target::Uri(u) => (None, Some(u.clone()), None, None),
            Target::Reject { code, reason } => (None, None, Some(*code), Some(reason.clone())),
        };
        let target_trunk = match &r.target {
            Target::Trunk(t) => Some(t.clone()),
            _ => None,
        };
        Self {
            id: r.id,
            name: r.name.clone(),
            priority: r.priority,
            match_kind: r.match_kind.as_str(),
            match_value: r.match_value.clone(),
            from_domain: r.source_domain.clone(),
            source: r.source.as_str(),
            target_kind: r.target.kind(),
            target_set_id: pool.as_ref().and_then(|p| sets.get(p).copied()),
            target_pool: pool,
            service: r.service.clone(),
            target_uri: uri,
            reject_code: code,
            reject_reason: reason,
            target_trunk,
            description: r.description.clone(),
            created_at: r.created_at.map(super::cdr::rfc3339),
        }
    }

    fn match_text(&self) -> String {
        format!("{} {}", self.match_kind, self.match_value)
    }

    fn target_text(&self) -> String {
        let service = self
            .service
            .as_deref()
            .map(|s| format!(" service {s}"))
            .unwrap_or_default();
        match self.target_kind {
            "pool" => match self.target_set_id {
                Some(set) => format!(
                    "pool {} (set {set}){service}",
                    self.target_pool.as_deref().unwrap_or_default()
                ),
                None => format!(
                    "pool {}{service}",
                    self.target_pool.as_deref().unwrap_or_default()
                ),
            },
            "uri" => format!("uri {}", self.target_uri.as_deref().unwrap_or_default()),
            "reject" => format!(
                "reject {} {}",
                self.reject_code.unwrap_or_default(),
                self.reject_reason.as_deref().unwrap_or_default()
            ),
            "trunk" => format!("trunk {}", self.target_trunk.as_deref().unwrap_or_default()),
            other => other.to_string(),
        }
    }

    /// The callers it applies to, for the FROM-DOMAIN column.
    fn callers_text(&self) -> String {
        let domain = self.from_domain.clone().unwrap_or_else(|| "*".into());
        match self.source {
            "trunk" => "trunks".into(),
            "any" => format!("{domain}, trunks"),
            _ => domain,
        }
    }

    /// What happens to a call that takes this route.
    fn outcome_text(&self, number: &str) -> String {
        match self.target_kind {
            "pool" => {
                let service = match self.service.as_deref() {
                    Some(s) => format!(", which runs its {s} service"),
                    None => String::new(),
                };
                match self.target_set_id {
                    Some(set) => format!(
                        "to media pool {} (dispatcher set {set}); its algorithm picks the node{service}",
                        self.target_pool.as_deref().unwrap_or_default()
                    ),
                    None => format!(
                        "to media pool {}{service}",
                        self.target_pool.as_deref().unwrap_or_default()
                    ),
                }
            }
            "user" => format!(
                "to the registered contacts of user {number} (404 Not Found when not registered)"
            ),
            "uri" => format!(
                "relayed to {}",
                self.target_uri.as_deref().unwrap_or_default()
            ),
            "reject" => format!(
                "rejected with {} {}",
                self.reject_code.unwrap_or_default(),
                self.reject_reason.as_deref().unwrap_or_default()
            ),
            other => other.to_string(),
        }
    }
}

const COLUMNS: Columns = Columns {
    headers: &[
        "NAME",
        "PRIORITY",
        "MATCH",
        "FROM-DOMAIN",
        "TARGET",
        "ID",
        "DESCRIPTION",
        "CREATED",
        "SOURCE",
    ],
    narrow: 5,
};

fn row(r: &RouteView) -> Vec<String> {
    vec![
        r.name.clone(),
        r.priority.to_string(),
        r.match_text(),
        r.callers_text(),
        r.target_text(),
        r.id.to_string(),
        r.description.clone(),
        r.created_at.clone().unwrap_or_default(),
        r.source.to_string(),
    ]
}

/// The command-line name of a field the database layer names.
fn flag_of(field: &str, kind: Option<MatchKind>) -> String {
    match field {
        "name" => "NAME",
        "priority" => "--priority",
        "match_value" => match kind {
            Some(MatchKind::Prefix) => "--prefix",
            Some(MatchKind::Exact) => "--exact",
            Some(MatchKind::Regex) => "--regex",
            None => "match",
        },
        "source_domain" => "--from-domain",
        "target_pool" => "--to-pool",
        "target_uri" => "--to-uri",
        "target_trunk" => "--to-trunk",
        "source" => "--source",
        "reject_code" => "--reject",
        "reject_reason" => "--reason",
        "service" => "--service",
        "description" => "--description",
        other => other,
    }
    .to_string()
}

/// A validation error of the database layer, naming the flag instead of the column.
fn flag_error(e: DbError, kind: Option<MatchKind>) -> anyhow::Error {
    match e {
        DbError::Invalid {
            field,
            problem,
            fix,
        } => DbError::Invalid {
            field: flag_of(&field, kind),
            problem,
            fix,
        }
        .into(),
        other => other.into(),
    }
}

/// The usual reason phrase of a status code (RFC 3261 and friends), as a reject
/// route may carry it (letters, digits and spaces only).
fn default_reason(code: u16) -> &'static str {
    match code {
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        410 => "Gone",
        413 => "Request Entity Too Large",
        414 => "Request URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        480 => "Temporarily Unavailable",
        481 => "Call Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        484 => "Address Incomplete",
        485 => "Ambiguous",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Server Timeout",
        600 => "Busy Everywhere",
        603 => "Decline",
        604 => "Does Not Exist Anywhere",
        606 => "Not Acceptable",
        _ => "Rejected",
    }
}

/// Media pool name → dispatcher set id.
async fn pool_sets(
    db: &impl tokio_postgres::GenericClient,
) -> anyhow::Result<BTreeMap<String, i32>> {
    Ok(media_pool::list(db)
        .await?
        .into_iter()
        .map(|p| (p.name, p.set_id))
        .collect())
}

fn new_route(args: &AddArgs) -> anyhow::Result<NewRoute> {
    let (match_kind, match_value) = match (
        &args.matcher.prefix,
        &args.matcher.exact,
        &args.matcher.regex,
    ) {
        (Some(v), _, _) => (MatchKind::Prefix, v.clone()),
        (_, Some(v), _) => (MatchKind::Exact, v.clone()),
        (_, _, Some(v)) => (MatchKind::Regex, v.clone()),
        _ => {
            return Err(CliError::Invalid(
                "give what the route matches: --prefix, --exact or --regex".into(),
            )
            .into())
        }
    };
    let t = &args.target;
    let target = if let Some(pool) = &t.to_pool {
        Target::Pool(pool.clone())
    } else if t.to_user {
        Target::User
    } else if let Some(uri) = &t.to_uri {
        Target::Uri(uri.clone())
    } else if let Some(trunk) = &t.to_trunk {
        Target::Trunk(trunk.clone())
    } else if let Some(code) = t.reject {
        let code = u16::try_from(code)
            .ok()
            .filter(|c| (400..=699).contains(c))
            .ok_or_else(|| {
                CliError::Invalid(format!(
                    "--reject: {code} is not an error status; use a SIP status from 400 to 699"
                ))
            })?;
        let reason = args
            .reason
            .clone()
            .unwrap_or_else(|| default_reason(code).to_string());
        Target::Reject { code, reason }
    } else {
        return Err(CliError::Invalid(
            "give where calls go: --to-pool, --to-user, --to-uri, --to-trunk or --reject".into(),
        )
        .into());
    };
    Ok(NewRoute {
        name: args.name.clone(),
        priority: args.priority,
        match_kind,
        match_value,
        source_domain: args.from_domain.clone(),
        source: args.source.parse().map_err(|e| flag_error(e, None))?,
        target,
        service: args.service.clone(),
        description: args.description.clone(),
    })
}

pub async fn add(ctx: &Ctx, args: AddArgs) -> anyhow::Result<()> {
    let new = new_route(&args)?;
    // Everything that can be checked without the database is checked first.
    route::validate(&new).map_err(|e| flag_error(e, Some(new.match_kind)))?;
    let db = ctx.db().await?;
    let sets = pool_sets(&db).await?;
    let added = route::add(&db, &new)
        .await
        .map_err(|e| flag_error(e, Some(new.match_kind)))?;
    let view = RouteView::new(&added, &sets);
    ctx.output.object(&view, |out| {
        writeln!(
            out,
            "route {} added: {} → {} (priority {}{})",
            view.name,
            view.match_text(),
            view.target_text(),
            view.priority,
            match (view.source, &view.from_domain) {
                ("trunk", _) => ", calls from trunks only".to_string(),
                ("any", _) => ", calls from subscribers and trunks".to_string(),
                (_, Some(d)) => format!(", callers of {d} only"),
                (_, None) => String::new(),
            }
        )
    })?;
    ctx.push_reload(Reload::Routes).await;
    Ok(())
}

pub async fn get(ctx: &Ctx, args: GetArgs) -> anyhow::Result<()> {
    let db = ctx.db().await?;
    let sets = pool_sets(&db).await?;
    match &args.name {
        Some(name) => {
            let r = route::get(&db, name)
                .await
                .map_err(|e| flag_error(e, None))?;
            let view = RouteView::new(&r, &sets);
            if matches!(ctx.output.format, Format::Json | Format::Yaml) {
                ctx.output.object(&view, |_| Ok(()))
            } else {
                ctx.output.list(std::slice::from_ref(&view), &COLUMNS, row)
            }
        }
        None => {
            let views: Vec<RouteView> = route::list(&db)
                .await?
                .iter()
                .map(|r| RouteView::new(r, &sets))
                .collect();
            ctx.output.list(&views, &COLUMNS, row)?;
            if views.is_empty() && ctx.output.is_human() {
                eprintln!("No routes: every call goes to the edge's default media pool, or gets 404 without one.");
            }
            Ok(())
        }
    }
}

#[derive(Debug, Serialize)]
struct Deleted {
    deleted: Vec<String>,
}

pub async fn delete(ctx: &Ctx, args: DeleteArgs) -> anyhow::Result<()> {
    let db = ctx.db().await?;
    let deleted = route::delete_all(&db, &args.names)
        .await
        .map_err(|e| match e {
            DbError::NotFound { kind, name } if args.names.len() > 1 => {
                anyhow::Error::new(DbError::NotFound { kind, name }).context("nothing was deleted")
            }
            other => flag_error(other, None),
        })?;
    let result = Deleted { deleted };
    ctx.output.object(&result, |out| {
        for name in &result.deleted {
            writeln!(out, "route {name} deleted")?;
        }
        Ok(())
    })?;
    ctx.push_reload(Reload::Routes).await;
    Ok(())
}

/// One route and what it did with the number.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    id: i32,
    name: String,
    priority: i32,
    #[serde(rename = "match")]
    matcher: String,
    from_domain: Option<String>,
    /// matched, no-match, not-tried (a number or an earlier route matched),
    /// other-domain (only for callers of another domain), other-source (only for
    /// calls from subscribers, or only from trunks), unevaluable (only the edge can tell)
    outcome: &'static str,
    reason: String,
}

/// One of the platform's numbers and what it did with the dialled number.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct NumberCandidate {
    id: i32,
    number: String,
    #[serde(rename = "match")]
    match_kind: &'static str,
    target: String,
    /// matched, no-match, not-tried (an earlier number matched)
    outcome: &'static str,
}

/// What one edge answered.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct EdgeAnswer {
    edge: String,
    reachable: bool,
    /// The rule set the edge picked for the caller.
    rule_set: Option<i32>,
    /// The number that decides there (null: none is the platform's).
    number: Option<String>,
    number_id: Option<i32>,
    /// The route the edge would take (null: none matches, or a number decides).
    route: Option<String>,
    route_id: Option<i32>,
    /// Whether it is the number and route computed from the database.
    agrees: Option<bool>,
    /// Whether the edge holds the rules the database has now.
    rules_current: Option<bool>,
    note: String,
}

/// The trunk a call goes out through, and how.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct TrunkTargetView {
    name: String,
    id: i32,
    /// A registration-based PBX's account: the call goes to its registered contact.
    pbx_account: Option<String>,
    /// In the order the edge tries them.
    gateways: Vec<GatewayView>,
    /// The number as the gateways get it (after strip and prefix).
    dialled_as: String,
    has_credentials: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct TestView {
    number: String,
    from_domain: Option<String>,
    /// The trunk the call comes from.
    from_trunk: Option<String>,
    /// The route rule set (dpid) for the caller: its domain's, 2, or 4 from a trunk.
    rule_set: i32,
    /// Whether the caller's domain has routes of its own.
    domain_rule_set: bool,
    /// A number or a route decides.
    matched: bool,
    /// number, route or none
    decided_by: &'static str,
    /// The platform's number that decides (looked up before any route).
    matched_number: Option<NumberView>,
    route: Option<RouteView>,
    /// Why that number or route (or none) decides.
    reason: String,
    /// What the edge does with the call.
    result: String,
    /// With a trunk target: the trunk and its gateways in order.
    trunk: Option<TrunkTargetView>,
    /// Every number in the order they are tried.
    number_candidates: Vec<NumberCandidate>,
    /// Every route in the order they are tried.
    candidates: Vec<Candidate>,
    edges: Vec<EdgeAnswer>,
}

fn match_reason(r: &Route, matched: bool) -> String {
    let v = &r.match_value;
    match (r.match_kind, matched) {
        (MatchKind::Prefix, true) => format!("starts with {v}"),
        (MatchKind::Prefix, false) => format!("does not start with {v}"),
        (MatchKind::Exact, true) => format!("is {v}"),
        (MatchKind::Exact, false) => format!("is not {v}"),
        (MatchKind::Regex, true) => format!("matches the regex {v}"),
        (MatchKind::Regex, false) => format!("does not match the regex {v}"),
    }
}

fn validate_number(number: &str) -> Result<(), CliError> {
    if number.is_empty() || number.chars().count() > 255 || number.chars().any(char::is_control) {
        return Err(CliError::Invalid(format!(
            "NUMBER: {} is not a dialled number; give the Request-URI's user part, e.g. +442071234567",
            validate::shown(number)
        )));
    }
    Ok(())
}

/// The trunk a rule sends calls to: by the id in its attributes, else by name.
fn trunk_of<'a>(
    rule: Option<&DialplanRule>,
    name: Option<&str>,
    all: &'a [Trunk],
) -> Option<&'a Trunk> {
    let by_id = rule
        .and_then(|r| route::rule_trunk_id(&r.attrs))
        .and_then(|id| all.iter().find(|t| t.id == id));
    by_id.or_else(|| name.and_then(|n| all.iter().find(|t| t.name == n)))
}

fn trunk_target(t: &Trunk, number: &str) -> TrunkTargetView {
    TrunkTargetView {
        name: t.name.clone(),
        id: t.id,
        pbx_account: t.account.as_ref().map(|(u, d)| format!("{u}@{d}")),
        gateways: gateway_views(t),
        dialled_as: t.outbound_number(number),
        has_credentials: t.has_credentials,
    }
}

/// What the edge does with a call to a trunk (TO_TRUNK of the edge's config).
fn trunk_outcome(t: &TrunkTargetView, number: &str, from_trunk: Option<&str>) -> String {
    if from_trunk == Some(t.name.as_str()) {
        return format!(
            "refused with 482 Loop Detected: the call came from trunk {} itself",
            t.name
        );
    }
    if let Some(account) = &t.pbx_account {
        return format!(
            "to trunk {}: the contact its PBX registered as {account}, with {number} as the user part \
             (480 PBX Not Registered when it is not registered)",
            t.name
        );
    }
    if t.gateways.is_empty() {
        return format!(
            "refused with 503 Trunk Has No Gateway: trunk {} has no gateway",
            t.name
        );
    }
    let gateways: Vec<String> = t
        .gateways
        .iter()
        .enumerate()
        .map(|(i, g)| format!("{}. {} (priority {})", i + 1, g.uri, g.priority))
        .collect();
    format!(
        "out through trunk {} as {}: {}{}",
        t.name,
        t.dialled_as,
        gateways.join(", "),
        if t.gateways.len() > 1 {
            " (the next on 5xx, 408 or no answer)"
        } else {
            ""
        }
    )
}

/// What happens to a call a number sends somewhere.
fn number_outcome(n: &Number, sets: &BTreeMap<String, i32>) -> String {
    match &n.target {
        NumberTarget::User { username, domain } => format!(
            "to the registered contacts of {username}@{domain} (404 Not Found when not registered)"
        ),
        NumberTarget::Pool { pool, service } => {
            let service = match service {
                Some(s) => format!(", which runs its {s} service"),
                None => String::new(),
            };
            match sets.get(pool) {
                Some(set) => format!(
                    "to media pool {pool} (dispatcher set {set}); its algorithm picks the node{service}"
                ),
                None => format!("to media pool {pool}{service}"),
            }
        }
        NumberTarget::Trunk(t) => format!("to trunk {t}"),
    }
}

pub async fn test(ctx: &Ctx, args: TestArgs) -> anyhow::Result<()> {
    validate_number(&args.number)?;
    let from_domain = args
        .from_domain
        .as_deref()
        .map(|d| validate::domain("--from-domain", d))
        .transpose()?;
    if let Some(t) = &args.from_trunk {
        validate::name("--from-trunk", t)?;
    }

    // Routes, numbers, trunks, rules and pools from one snapshot.
    let mut db = ctx.db().await?;
    let tx = db
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .context("cannot read the routes")?;
    let routes = route::list(&tx).await?;
    let number_list = numbers::list(&tx).await?;
    let trunk_list = trunks::list(&tx).await?;
    let rules = route::dialplan_rules(&tx).await?;
    let sets = pool_sets(&tx).await?;
    tx.commit().await.context("cannot read the routes")?;

    if let Some(t) = &args.from_trunk {
        if !trunk_list.iter().any(|k| k.name == *t) {
            let known: Vec<&str> = trunk_list.iter().map(|k| k.name.as_str()).collect();
            return Err(CliError::Invalid(format!(
                "--from-trunk: trunk {} does not exist; {}",
                validate::shown(t),
                if known.is_empty() {
                    "no trunk exists yet".to_string()
                } else {
                    format!("name one of the trunks: {}", known.join(", "))
                }
            ))
            .into());
        }
    }
    let from_trunk = args.from_trunk.as_deref();

    let evaluation = match from_trunk {
        Some(_) => route::evaluate_from_trunk(&rules, &args.number),
        None => route::evaluate(&rules, &args.number, from_domain.as_deref()),
    };
    let number_rule = evaluation.matched_number();
    let matched_number_id = number_rule.and_then(|r| route::rule_number_id(&r.attrs));
    let matched_number = matched_number_id.and_then(|id| number_list.iter().find(|n| n.id == id));
    let outcome_of = |id: i32| {
        evaluation
            .verdicts
            .iter()
            .find(|v| route::rule_route_id(&v.rule.attrs) == Some(id))
            .map(|v| &v.outcome)
    };
    let route_rule = evaluation.matched();
    let matched_id = route_rule.and_then(|r| route::rule_route_id(&r.attrs));
    let matched_route = matched_id.and_then(|id| routes.iter().find(|r| r.id == id));

    let number_candidates: Vec<NumberCandidate> = evaluation
        .numbers
        .iter()
        .filter_map(|v| {
            let id = route::rule_number_id(&v.rule.attrs)?;
            let n = number_list.iter().find(|n| n.id == id)?;
            Some(NumberCandidate {
                id,
                number: n.number.clone(),
                match_kind: n.match_kind.as_str(),
                target: n.target.to_string(),
                outcome: match v.outcome {
                    RuleOutcome::Matched => "matched",
                    RuleOutcome::NoMatch => "no-match",
                    _ => "not-tried",
                },
            })
        })
        .collect();

    let mut candidates = Vec::new();
    for r in &routes {
        let (outcome, reason) = match outcome_of(r.id) {
            Some(RuleOutcome::Matched) => (
                "matched",
                format!("{} {}", args.number, match_reason(r, true)),
            ),
            Some(RuleOutcome::NoMatch) => (
                "no-match",
                format!("{} {}", args.number, match_reason(r, false)),
            ),
            Some(RuleOutcome::NotTried) => (
                "not-tried",
                match (matched_number, matched_route) {
                    (Some(n), _) => format!(
                        "the number {} decides before any route",
                        number_text(n.match_kind, &n.number)
                    ),
                    (None, m) => format!(
                        "route {} matched first",
                        m.map(|m| m.name.as_str()).unwrap_or("?")
                    ),
                },
            ),
            Some(RuleOutcome::OtherLength) => (
                "not-tried",
                "never tried for a number of this length".to_string(),
            ),
            Some(RuleOutcome::Unevaluable(e)) => (
                "unevaluable",
                format!("cannot be evaluated here ({e}); the edge's answer decides"),
            ),
            None if from_trunk.is_some() && !r.source.for_trunks() => (
                "other-source",
                "only for calls from subscribers (add it with --source trunk or any for calls from trunks)"
                    .to_string(),
            ),
            None if from_trunk.is_none() && !r.source.for_subscribers() => (
                "other-source",
                "only for calls from trunks".to_string(),
            ),
            None => (
                "other-domain",
                format!(
                    "only for callers of {}",
                    r.source_domain.as_deref().unwrap_or("another domain")
                ),
            ),
        };
        candidates.push(Candidate {
            id: r.id,
            name: r.name.clone(),
            priority: r.priority,
            matcher: format!("{} {}", r.match_kind, r.match_value),
            from_domain: r.source_domain.clone(),
            outcome,
            reason,
        });
    }
    let before = candidates
        .iter()
        .take_while(|c| c.outcome != "matched")
        .filter(|c| c.outcome == "no-match")
        .count();
    let unevaluable = candidates
        .iter()
        .filter(|c| c.outcome == "unevaluable")
        .count();
    let route_view = matched_route.map(|r| RouteView::new(r, &sets));
    let numbers_note = match number_list.len() {
        0 => String::new(),
        n => format!(
            "; none of the platform's {n} number{} matches",
            if n == 1 { "" } else { "s" }
        ),
    };
    let mut reason = match (matched_number, matched_route) {
        (Some(n), _) => match n.match_kind {
            NumberMatch::Exact => format!(
                "{} is the platform's number {}; numbers are looked up before any route",
                args.number, n.number
            ),
            NumberMatch::Prefix => format!(
                "{} starts with the platform's number block {} (exact numbers first, then the longest \
                 prefix); numbers are looked up before any route",
                args.number, n.number
            ),
        },
        (None, Some(r)) => format!(
            "{} {} (priority {}); {}{numbers_note}",
            args.number,
            match_reason(r, true),
            r.priority,
            match before {
                0 => "it is the first route tried".to_string(),
                1 => "1 route tried before it did not match".to_string(),
                n => format!("{n} routes tried before it did not match"),
            }
        ),
        (None, None) => {
            let tried = candidates
                .iter()
                .filter(|c| c.outcome == "no-match")
                .count();
            let caller = if from_trunk.is_some() {
                "calls from trunks"
            } else {
                "this caller"
            };
            match tried {
                0 => format!("there are no routes for {caller}{numbers_note}"),
                n => format!("none of the {n} routes for {caller} matches{numbers_note}"),
            }
        }
    };
    if unevaluable > 0 {
        reason.push_str(&format!(
            "; {unevaluable} route(s) could not be evaluated here"
        ));
    }
    let trunk = match (matched_number, &route_view) {
        (Some(n), _) => match &n.target {
            NumberTarget::Trunk(name) => trunk_of(number_rule, Some(name), &trunk_list),
            _ => None,
        },
        (None, Some(r)) => trunk_of(route_rule, r.target_trunk.as_deref(), &trunk_list)
            .filter(|_| r.target_kind == "trunk"),
        (None, None) => None,
    }
    .map(|t| trunk_target(t, &args.number));
    let result = match (&trunk, matched_number, &route_view) {
        (Some(t), _, _) => trunk_outcome(t, &args.number, from_trunk),
        (None, Some(n), _) => number_outcome(n, &sets),
        (None, None, Some(v)) => v.outcome_text(&args.number),
        (None, None, None) if from_trunk.is_some() => {
            "no number or route: the edge refuses the call from a trunk as transit (403 Transit not allowed)"
                .to_string()
        }
        (None, None, None) => "no route: the edge sends the call to its default media pool (SipEdge spec.routing.defaultMediaPool) \
                 or, without one, answers 404 No Route"
            .to_string(),
    };

    let question = Question {
        number: &args.number,
        from_domain: from_domain.as_deref(),
        from_trunk: from_trunk.is_some(),
        rules: &rules,
        dpid: evaluation.dpid,
        matched_id: if matched_number.is_some() {
            None
        } else {
            matched_id
        },
        matched_number_id,
        names: routes.iter().map(|r| (r.id, r.name.clone())).collect(),
        number_names: number_list
            .iter()
            .map(|n| (n.id, number_text(n.match_kind, &n.number)))
            .collect(),
    };
    let mut edges = Vec::new();
    for (name, rpc) in ctx.edges() {
        edges.push(ask_edge(&name, &rpc, &question).await);
    }

    let view = TestView {
        number: args.number.clone(),
        from_domain: from_domain.clone(),
        from_trunk: args.from_trunk.clone(),
        rule_set: evaluation.dpid,
        domain_rule_set: evaluation.domain_rule_set,
        matched: matched_number.is_some() || route_view.is_some(),
        decided_by: match (matched_number, &route_view) {
            (Some(_), _) => "number",
            (None, Some(_)) => "route",
            (None, None) => "none",
        },
        matched_number: matched_number.map(NumberView::from),
        route: if matched_number.is_some() {
            None
        } else {
            route_view
        },
        reason,
        result,
        trunk,
        number_candidates,
        candidates,
        edges,
    };
    let wide = ctx.output.format == Format::Wide;
    let other_domains: Vec<String> = {
        let mut d: Vec<String> = view
            .candidates
            .iter()
            .filter(|c| c.outcome == "other-domain")
            .filter_map(|c| c.from_domain.clone())
            .collect();
        d.sort();
        d.dedup();
        d
    };
    ctx.output
        .object(&view, |out| human_test(out, &view, &other_domains, wide))
}

fn human_test(
    out: &mut dyn Write,
    view: &TestView,
    other_domains: &[String],
    wide: bool,
) -> std::io::Result<()> {
    let caller = match (&view.from_trunk, &view.from_domain, view.domain_rule_set) {
        (Some(t), _, _) => format!(
            "trunk {t}: the routes for calls from trunks (rule set {TRUNK_DPID}); a call no number or route \
             takes is refused as transit"
        ),
        (None, None, _) => {
            let mut text = format!("a domain without routes of its own (rule set {DEFAULT_DPID})");
            if !other_domains.is_empty() {
                text.push_str(&format!(
                    "; routes only for {} are not considered: give --from-domain",
                    other_domains.join(", ")
                ));
            }
            text
        }
        (None, Some(d), true) => format!(
            "{d}: its own routes and those for every domain (rule set {})",
            view.rule_set
        ),
        (None, Some(d), false) => {
            format!("{d}, which has no routes of its own: the routes for every domain (rule set {DEFAULT_DPID})")
        }
    };
    let mut lines: Vec<Vec<String>> = vec![
        vec!["number".into(), view.number.clone()],
        vec!["caller".into(), caller],
    ];
    if let Some(n) = &view.matched_number {
        lines.push(vec![
            "platform number".into(),
            format!(
                "{} ({}, id {}) → {}",
                n.number,
                n.match_kind,
                n.id,
                n.target_text()
            ),
        ]);
        lines.push(vec![
            "route".into(),
            "not consulted: the number decides".into(),
        ]);
    } else {
        if !view.number_candidates.is_empty() {
            lines.push(vec!["platform number".into(), "none matches".into()]);
        }
        lines.push(vec![
            "route".into(),
            match &view.route {
                Some(r) => format!(
                    "{} ({}, priority {}, id {})",
                    r.name,
                    r.match_text(),
                    r.priority,
                    r.id
                ),
                None => "none matches".into(),
            },
        ]);
    }
    lines.push(vec!["why".into(), view.reason.clone()]);
    lines.push(vec!["result".into(), view.result.clone()]);
    if let Some(t) = &view.trunk {
        if t.pbx_account.is_none() {
            for (i, g) in t.gateways.iter().enumerate() {
                lines.push(vec![
                    format!("gateway {}", i + 1),
                    format!("{} (priority {})", g.uri, g.priority),
                ]);
            }
            lines.push(vec![
                "dialled as".into(),
                format!(
                    "{}{}",
                    t.dialled_as,
                    if t.has_credentials {
                        "; the trunk's credentials answer a challenge"
                    } else {
                        ""
                    }
                ),
            ]);
        }
    }
    if view.edges.is_empty() {
        lines.push(vec![
            "edges".into(),
            "none known (--edge or a context): the answer is the database's only".into(),
        ]);
    }
    for e in &view.edges {
        lines.push(vec![format!("edge {}", e.edge), e.note.clone()]);
    }
    write_table(out, None, &lines)?;
    if wide {
        if !view.number_candidates.is_empty() {
            writeln!(out)?;
            let headers: Vec<String> = ["ORDER", "NUMBER", "MATCH", "TARGET", "OUTCOME"]
                .iter()
                .map(|h| h.to_string())
                .collect();
            let rows: Vec<Vec<String>> = view
                .number_candidates
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    vec![
                        (i + 1).to_string(),
                        n.number.clone(),
                        n.match_kind.to_string(),
                        n.target.clone(),
                        n.outcome.to_string(),
                    ]
                })
                .collect();
            write_table(out, Some(&headers), &rows)?;
        }
        writeln!(out)?;
        let headers: Vec<String> = [
            "ORDER",
            "PRIORITY",
            "NAME",
            "MATCH",
            "FROM-DOMAIN",
            "OUTCOME",
            "REASON",
        ]
        .iter()
        .map(|h| h.to_string())
        .collect();
        let rows: Vec<Vec<String>> = view
            .candidates
            .iter()
            .enumerate()
            .map(|(i, c)| {
                vec![
                    (i + 1).to_string(),
                    c.priority.to_string(),
                    c.name.clone(),
                    c.matcher.clone(),
                    c.from_domain.clone().unwrap_or_else(|| "*".into()),
                    c.outcome.to_string(),
                    c.reason.clone(),
                ]
            })
            .collect();
        if rows.is_empty() {
            writeln!(out, "No routes.")?;
        } else {
            write_table(out, Some(&headers), &rows)?;
        }
    }
    Ok(())
}

/// Whether the edge's rules of `dpid` are the database's.
fn same_rules(db: &[DialplanRule], dpid: i32, edge: &[DialplanEntry]) -> bool {
    let mut mine: Vec<(i64, i64, &str, i64, &str, &str, &str)> = db
        .iter()
        .filter(|r| r.dpid == dpid)
        .map(|r| {
            (
                i64::from(r.pr),
                i64::from(r.match_op),
                r.match_exp.as_str(),
                i64::from(r.match_len),
                r.subst_exp.as_str(),
                r.repl_exp.as_str(),
                r.attrs.as_str(),
            )
        })
        .collect();
    mine.sort();
    let mut theirs: Vec<(i64, i64, &str, i64, &str, &str, &str)> = edge
        .iter()
        .map(|e| {
            (
                e.pr,
                e.match_op,
                e.match_exp.as_str(),
                e.match_len,
                e.subst_exp.as_str(),
                e.repl_exp.as_str(),
                e.attrs.as_str(),
            )
        })
        .collect();
    theirs.sort();
    mine == theirs
}

/// What `test route` asks every edge, with the answer computed from the database.
struct Question<'a> {
    number: &'a str,
    from_domain: Option<&'a str>,
    /// The call comes from a trunk (the routes of dialplan 4).
    from_trunk: bool,
    /// The rules of the database's `sipstack_dialplan`.
    rules: &'a [DialplanRule],
    /// The rule set the database maps the caller to.
    dpid: i32,
    /// The route the database's rules choose (none when a number decides).
    matched_id: Option<i32>,
    /// The number the database's rules choose.
    matched_number_id: Option<i32>,
    /// Route names by id.
    names: BTreeMap<i32, String>,
    /// Numbers by id, as shown.
    number_names: BTreeMap<i32, String>,
}

/// Asks one edge what it does with the number, and whether it holds the
/// database's rules (it may not have reloaded them yet).
async fn ask_edge(name: &str, rpc: &EdgeRpc, q: &Question<'_>) -> EdgeAnswer {
    let mut answer = EdgeAnswer {
        edge: name.to_string(),
        reachable: false,
        rule_set: None,
        number: None,
        number_id: None,
        route: None,
        route_id: None,
        agrees: None,
        rules_current: None,
        note: String::new(),
    };
    type Asked = (i32, Option<i32>, Option<i32>, bool);
    let asked: Result<Asked, sipstack_edgerpc::RpcError> = async {
        // the numbers first, for every caller, as the edge's NUMBERS block does
        let number_id = rpc
            .dialplan_translate(NUMBERS_DPID, q.number)
            .await?
            .and_then(|t| route::rule_number_id(&t.attrs));
        let mut edge_dpid = if q.from_trunk {
            TRUNK_DPID
        } else {
            DEFAULT_DPID
        };
        if let (Some(domain), false) = (q.from_domain, q.from_trunk) {
            if let Some(t) = rpc.dialplan_translate(DOMAIN_MAP_DPID, domain).await? {
                if let Ok(set) = t.attrs.trim().parse::<i32>() {
                    edge_dpid = set;
                }
            }
        }
        let route_id = match number_id {
            Some(_) => None,
            None => rpc
                .dialplan_translate(edge_dpid, q.number)
                .await?
                .and_then(|t| route::rule_route_id(&t.attrs)),
        };
        let map = rpc.dialplan_dump(DOMAIN_MAP_DPID).await?;
        let set = rpc.dialplan_dump(edge_dpid).await?;
        let numbers = rpc.dialplan_dump(NUMBERS_DPID).await?;
        let current = edge_dpid == q.dpid
            && same_rules(q.rules, DOMAIN_MAP_DPID, &map)
            && same_rules(q.rules, q.dpid, &set)
            && same_rules(q.rules, NUMBERS_DPID, &numbers);
        Ok((edge_dpid, number_id, route_id, current))
    }
    .await;
    match asked {
        Ok((edge_dpid, number_id, route_id, current)) => {
            answer.reachable = true;
            answer.rule_set = Some(edge_dpid);
            answer.number_id = number_id;
            answer.number = number_id.map(|id| {
                q.number_names
                    .get(&id)
                    .cloned()
                    .unwrap_or_else(|| format!("id {id}"))
            });
            answer.route_id = route_id;
            answer.route = route_id.map(|id| {
                q.names
                    .get(&id)
                    .cloned()
                    .unwrap_or_else(|| format!("id {id}"))
            });
            let agrees = route_id == q.matched_id && number_id == q.matched_number_id;
            answer.agrees = Some(agrees);
            answer.rules_current = Some(current);
            let what = match (&answer.number, &answer.route) {
                (Some(n), _) => format!("number {n}"),
                (None, Some(r)) => format!("route {r}"),
                (None, None) => "no route matches".to_string(),
            };
            answer.note = match (agrees, current) {
                (true, true) => format!("agrees ({what})"),
                (true, false) => format!(
                    "agrees ({what}), but it does not hold the current routes: it has not reloaded since the last \
                     change (`sipctl reload routes`) or could not load a rule (see its log)"
                ),
                (false, false) => format!(
                    "differs: {what}. It does not hold the current routes: it has not reloaded since the last change \
                     (`sipctl reload routes`) or could not load a rule (see its log)"
                ),
                (false, true) => format!(
                    "differs: {what}, with the same rules: its regular expression engine (PCRE) reads a rule \
                     differently; calls get the edge's answer"
                ),
            };
        }
        Err(e) => {
            answer.note = format!("not asked: {e}; the answer above is the database's only");
        }
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_reasons_are_valid_reject_reasons() {
        for code in 400..=699u16 {
            let r = default_reason(code);
            assert!(
                !r.is_empty()
                    && r.len() <= 64
                    && r.chars().all(|c| c.is_ascii_alphanumeric() || c == ' '),
                "{code}: {r}"
            );
        }
    }

    #[test]
    fn flags_are_named() {
        assert_eq!(flag_of("match_value", Some(MatchKind::Regex)), "--regex");
        assert_eq!(flag_of("target_pool", None), "--to-pool");
        assert_eq!(flag_of("reject_reason", None), "--reason");
    }
}
