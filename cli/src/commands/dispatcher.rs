//! Media pool members (dispatcher destinations): `get`, `drain`, `enable`.
//!
//! Draining sets the member's "disabled" flag (4) in the `dispatcher` table and
//! puts it in state D on every edge at once (`dispatcher.set_state d`). Kamailio
//! neither selects nor probes a disabled member, so OPTIONS probing cannot undo
//! the drain, and every start or `dispatcher.reload` loads it disabled again from
//! the table. Calls already up are not touched: their requests follow the
//! Record-Route path, not the dispatcher. Enabling clears the flag (and sets the
//! probing flag) and puts the member in state "inactive, probing" on the edges:
//! it takes calls again as soon as it answers the probes.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use sipstack_db::dispatcher::{self, Destination, FLAG_DISABLED};
use sipstack_db::{media_pool, DbError};
use sipstack_edgerpc::{EdgeRpc, LiveDestination, Reload};

use super::{CliError, Ctx};
use crate::output::{write_table, Columns};

/// List dispatcher members: the database rows with each edge's live state.
#[derive(Debug, Args)]
#[command(
    after_help = "STATE is what each edge does with the member now: active (takes calls), trying (some probes \
failed, still takes calls), inactive (probes failed: no calls until it answers again), disabled (drained: no \
calls, not probed); +probing when the edge probes it with OPTIONS. ADMIN is the database's word: drained or \
enabled.\n\nExamples:\n  sipctl get dispatchers\n  sipctl get dispatchers --set 1 -o wide"
)]
pub struct GetArgs {
    /// Only this dispatcher set (a MediaPool's setId).
    #[arg(long, allow_negative_numbers = true)]
    pub set: Option<i32>,
}

/// A member to drain or enable.
#[derive(Debug, Args)]
#[command(
    after_help = "Drain: no new calls go to the member, calls in progress finish. It stays drained across \
edge restarts, reloads and `sipctl local up` until it is enabled. Enable: the member takes calls again once it \
answers the edges' OPTIONS probes.\n\nExamples:\n  sipctl drain dispatcher sip:10.0.0.5:5080\n  sipctl enable dispatcher sip:10.0.0.5:5080 --set 1"
)]
pub struct StateArgs {
    /// The member's destination URI, as `get dispatchers` shows it.
    pub uri: String,
    /// Its set, when the URI is a member of several.
    #[arg(long, allow_negative_numbers = true)]
    pub set: Option<i32>,
}

/// A member's state on one edge.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct EdgeState {
    edge: String,
    /// active, trying, inactive, disabled; not-loaded (the edge does not hold the
    /// member: it has not reloaded since it was added); unknown (edge unreachable)
    state: String,
    /// Whether the edge probes it with OPTIONS.
    probing: Option<bool>,
    /// Kamailio's own letters, e.g. AP.
    flags: Option<String>,
}

impl EdgeState {
    fn shown(&self) -> String {
        match self.probing {
            Some(true) => format!("{}+probing", self.state),
            _ => self.state.clone(),
        }
    }
}

/// One member as sipctl prints it; the JSON/YAML field names are stable.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct MemberView {
    set_id: i64,
    pool: Option<String>,
    uri: String,
    /// false: only an edge holds it (removed from the database, not reloaded yet).
    in_database: bool,
    id: Option<i32>,
    /// The table's flags: 1 inactive, 2 trying, 4 disabled (drained), 8 probing.
    flags: Option<i32>,
    drained: bool,
    priority: Option<i64>,
    weight: Option<i64>,
    attrs: Option<String>,
    description: Option<String>,
    edges: Vec<EdgeState>,
}

const COLUMNS: Columns = Columns {
    headers: &[
        "POOL",
        "SET",
        "URI",
        "STATE",
        "ADMIN",
        "WEIGHT",
        "PRIORITY",
        "FLAGS",
        "LIVE",
        "ATTRS",
        "DESCRIPTION",
        "ID",
    ],
    narrow: 7,
};

fn row(m: &MemberView) -> Vec<String> {
    let state = match m.edges.as_slice() {
        [] => "-".to_string(),
        [one] => one.shown(),
        many => many
            .iter()
            .map(|e| format!("{}={}", e.edge, e.shown()))
            .collect::<Vec<_>>()
            .join(" "),
    };
    let live = m
        .edges
        .iter()
        .map(|e| format!("{}={}", e.edge, e.flags.as_deref().unwrap_or("-")))
        .collect::<Vec<_>>()
        .join(" ");
    vec![
        m.pool.clone().unwrap_or_else(|| "-".into()),
        m.set_id.to_string(),
        m.uri.clone(),
        state,
        if !m.in_database {
            "-".into()
        } else if m.drained {
            "drained".into()
        } else {
            "enabled".into()
        },
        m.weight.map(|w| w.to_string()).unwrap_or_default(),
        m.priority.map(|p| p.to_string()).unwrap_or_default(),
        m.flags.map(|f| f.to_string()).unwrap_or_default(),
        live,
        m.attrs.clone().unwrap_or_default(),
        m.description.clone().unwrap_or_default(),
        m.id.map(|i| i.to_string()).unwrap_or_default(),
    ]
}

/// Kamailio's letters as words.
fn live_state(edge: &str, d: &LiveDestination) -> EdgeState {
    let state = match d.flags.chars().next() {
        Some('A') => "active",
        Some('I') => "inactive",
        Some('T') => "trying",
        Some('D') => "disabled",
        _ => "unknown",
    };
    EdgeState {
        edge: edge.to_string(),
        state: state.into(),
        probing: Some(d.is_probing()),
        flags: Some(d.flags.clone()),
    }
}

fn weight_of(attrs: &str) -> Option<i64> {
    attrs
        .split(';')
        .find_map(|kv| kv.strip_prefix("weight="))
        .and_then(|w| w.parse().ok())
}

/// `10.0.0.5:5080` is taken for `sip:10.0.0.5:5080`.
fn normalize_uri(uri: &str) -> String {
    let uri = uri.trim();
    if uri.starts_with("sip:") || uri.starts_with("sips:") {
        uri.to_string()
    } else {
        format!("sip:{uri}")
    }
}

/// Every edge's live list; an unreachable edge is reported on stderr and left out.
async fn live_lists(ctx: &Ctx) -> Vec<(String, Option<Vec<LiveDestination>>)> {
    let mut out = Vec::new();
    for (name, rpc) in ctx.edges() {
        match rpc.dispatcher_list().await {
            Ok(list) => out.push((name, Some(list))),
            Err(e) => {
                eprintln!("warning: edge {name}: cannot read its dispatcher state ({e}); shown as unknown");
                out.push((name, None));
            }
        }
    }
    out
}

pub async fn get(ctx: &Ctx, args: GetArgs) -> anyhow::Result<()> {
    if let Some(set) = args.set {
        dispatcher::validate_set_id(set).map_err(set_flag)?;
    }
    let db = ctx.db().await?;
    let rows: Vec<Destination> = dispatcher::list(&db)
        .await?
        .into_iter()
        .filter(|d| args.set.is_none_or(|s| d.set_id == s))
        .collect();
    let pools: BTreeMap<i64, String> = media_pool::list(&db)
        .await?
        .into_iter()
        .map(|p| (i64::from(p.set_id), p.name))
        .collect();
    let lists = live_lists(ctx).await;

    let edge_states = |set_id: i64, uri: &str| -> Vec<EdgeState> {
        lists
            .iter()
            .map(|(edge, list)| match list {
                None => EdgeState {
                    edge: edge.clone(),
                    state: "unknown".into(),
                    probing: None,
                    flags: None,
                },
                Some(list) => match list.iter().find(|d| d.set_id == set_id && d.uri == uri) {
                    Some(d) => live_state(edge, d),
                    None => EdgeState {
                        edge: edge.clone(),
                        state: "not-loaded".into(),
                        probing: None,
                        flags: None,
                    },
                },
            })
            .collect()
    };
    let mut members: Vec<MemberView> = rows
        .iter()
        .map(|d| MemberView {
            set_id: i64::from(d.set_id),
            pool: pools.get(&i64::from(d.set_id)).cloned(),
            uri: d.destination.clone(),
            in_database: true,
            id: Some(d.id),
            flags: Some(d.flags),
            drained: d.flags & FLAG_DISABLED != 0,
            priority: Some(i64::from(d.priority)),
            weight: weight_of(&d.attrs),
            attrs: Some(d.attrs.clone()),
            description: Some(d.description.clone()),
            edges: edge_states(i64::from(d.set_id), &d.destination),
        })
        .collect();
    // members an edge holds that the database no longer has
    let mut extra: BTreeMap<(i64, String), LiveDestination> = BTreeMap::new();
    for (_, list) in &lists {
        for d in list.iter().flatten() {
            let known = rows
                .iter()
                .any(|r| i64::from(r.set_id) == d.set_id && r.destination == d.uri);
            if !known && args.set.is_none_or(|s| i64::from(s) == d.set_id) {
                extra
                    .entry((d.set_id, d.uri.clone()))
                    .or_insert_with(|| d.clone());
            }
        }
    }
    for ((set_id, uri), d) in extra {
        members.push(MemberView {
            set_id,
            pool: pools.get(&set_id).cloned(),
            in_database: false,
            id: None,
            flags: None,
            drained: false,
            priority: Some(d.priority),
            weight: weight_of(&d.attrs),
            attrs: Some(d.attrs.clone()),
            description: None,
            edges: edge_states(set_id, &uri),
            uri,
        });
    }
    members.sort_by_key(|m| (m.set_id, !m.in_database, m.id));
    ctx.output.list(&members, &COLUMNS, row)?;
    if ctx.output.is_human() {
        if members.is_empty() {
            eprintln!("No dispatcher members.");
        }
        if members
            .iter()
            .any(|m| m.edges.iter().any(|e| e.state == "not-loaded") || !m.in_database)
        {
            eprintln!(
                "note: an edge and the database differ; `sipctl reload dispatchers` loads the database's members"
            );
        }
    }
    Ok(())
}

fn set_flag(e: DbError) -> anyhow::Error {
    match e {
        DbError::Invalid {
            field,
            problem,
            fix,
        } if field == "setId" || field == "set" => DbError::Invalid {
            field: "--set".into(),
            problem,
            fix,
        }
        .into(),
        other => other.into(),
    }
}

/// What a drain or enable did on one edge.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct EdgeChange {
    edge: String,
    applied: bool,
    /// The member's state on the edge afterwards, when it could be read.
    state: Option<EdgeState>,
    note: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct StateChange {
    uri: String,
    set_id: i32,
    pool: Option<String>,
    drained: bool,
    /// false: it was drained (resp. enabled) already.
    changed: bool,
    /// The table's flags now.
    flags: i32,
    edges: Vec<EdgeChange>,
    /// What the member's FreeSWITCH did (paused or resumed inbound calls), when
    /// sipctl knows its event socket.
    #[serde(skip_serializing_if = "Option::is_none")]
    media_node: Option<String>,
}

pub async fn drain(ctx: &Ctx, args: StateArgs) -> anyhow::Result<()> {
    change_state(ctx, args, true).await
}

pub async fn enable(ctx: &Ctx, args: StateArgs) -> anyhow::Result<()> {
    change_state(ctx, args, false).await
}

async fn change_state(ctx: &Ctx, args: StateArgs, drained: bool) -> anyhow::Result<()> {
    let uri = normalize_uri(&args.uri);
    dispatcher::validate_destination("URI", &uri)?;
    if let Some(set) = args.set {
        dispatcher::validate_set_id(set).map_err(set_flag)?;
    }
    let mut db = ctx.db().await?;
    let pools: BTreeMap<i32, String> = media_pool::list(&db)
        .await?
        .into_iter()
        .map(|p| (p.set_id, p.name))
        .collect();
    let change = dispatcher::set_drained(&mut db, &uri, args.set, drained)
        .await
        .map_err(|e| match e {
            DbError::NotFound { .. } => anyhow::Error::new(CliError::NotFound(format!(
                "{uri} is not a dispatcher member{}; `sipctl get dispatchers` lists them",
                args.set.map(|s| format!(" of set {s}")).unwrap_or_default()
            ))),
            DbError::Invalid { field, problem, .. } if field == "set" => anyhow::Error::new(
                CliError::Invalid(format!("--set: {problem}; say which with --set")),
            ),
            other => other.into(),
        })?;
    // committed: from here on an edge that cannot be reached is reported, not fatal
    let set_id = change.destination.set_id;
    let mut edges = Vec::new();
    if !ctx.reload {
        eprintln!("note: the edges were not told (--no-reload); `sipctl reload dispatchers` applies the change");
    } else {
        if ctx.edges().is_empty() {
            eprintln!(
                "note: no edge is known (give --edge or use a context); the edges apply the change at their next \
                 `sipctl reload dispatchers` or restart"
            );
        }
        for (name, rpc) in ctx.edges() {
            let result = apply_live(&name, &rpc, set_id, &uri, drained).await;
            if !result.applied {
                eprintln!(
                    "warning: edge {name}: {}; the change is saved and applies at its next reload",
                    result.note
                );
            }
            if drained {
                if let Ok(list) = rpc.dispatcher_list().await {
                    let others_active = list.iter().any(|d| {
                        i64::from(set_id) == d.set_id
                            && d.uri != uri
                            && (d.is_active() || d.flags.starts_with('T'))
                    });
                    if !others_active {
                        eprintln!(
                            "warning: edge {name}: set {set_id} has no other member taking calls: new calls to it get \
                             503 until a member is enabled or comes back"
                        );
                    }
                }
            }
            edges.push(result);
        }
    }
    let media_node = match ctx.target.media_nodes.iter().find(|n| n.uri == uri) {
        Some(node) => Some(pause_or_resume(node, drained).await),
        None => None,
    };
    let view = StateChange {
        media_node,
        uri: change.destination.destination.clone(),
        set_id,
        pool: pools.get(&set_id).cloned(),
        drained,
        changed: change.changed(),
        flags: change.destination.flags,
        edges,
    };
    ctx.output.object(&view, |out| {
        let member = format!(
            "{} (set {}{})",
            view.uri,
            view.set_id,
            view.pool.as_ref().map(|p| format!(", pool {p}")).unwrap_or_default()
        );
        match (drained, view.changed) {
            (true, true) => writeln!(
                out,
                "{member} drained: no new calls go to it, calls in progress finish. It stays drained across edge \
                 restarts and reloads until `sipctl enable dispatcher {}`.",
                view.uri
            )?,
            (true, false) => writeln!(out, "{member} was drained already.")?,
            (false, true) => {
                writeln!(out, "{member} enabled: it takes calls again once it answers the OPTIONS probes.")?
            }
            (false, false) => writeln!(out, "{member} was enabled already.")?,
        }
        let mut rows: Vec<Vec<String>> =
            view.edges.iter().map(|e| vec![format!("edge {}", e.edge), e.note.clone()]).collect();
        if let Some(m) = &view.media_node {
            rows.push(vec!["FreeSWITCH".into(), m.clone()]);
        }
        write_table(out, None, &rows)
    })
}

/// Drain and enable reach the node itself too: paused, it answers the edges'
/// OPTIONS and any new INVITE with 503 while its calls go on.
async fn pause_or_resume(node: &crate::context::MediaNodeConfig, drained: bool) -> String {
    let password = match std::fs::read_to_string(&node.password_file) {
        Ok(p) => p.trim().to_string(),
        Err(e) => return format!("not told: {}: {e}", node.password_file.display()),
    };
    let session =
        sipstack_esl::EslSession::new(&node.event_socket, password, Duration::from_secs(3))
            .with_user(sipstack_render::freeswitch::ESL_USER);
    let command = if drained {
        "fsctl pause inbound"
    } else {
        "fsctl resume inbound"
    };
    match session.api(command).await {
        Ok(_) if drained => match session.api("show calls count").await {
            Ok(count) => format!(
                "inbound calls paused; {} call(s) in progress",
                sipstack_local::freeswitch::parse_count(&count)
                    .map_or_else(|| "?".to_string(), |n| n.to_string())
            ),
            Err(_) => "inbound calls paused".into(),
        },
        Ok(_) => "inbound calls resumed".into(),
        Err(e) => {
            eprintln!("warning: FreeSWITCH at {}: {e}", node.event_socket);
            format!("not told: {e}")
        }
    }
}

/// Puts the member in its new state on one edge: `dispatcher.set_state` at once;
/// an edge that does not hold the member loads it from the table instead.
async fn apply_live(
    name: &str,
    rpc: &EdgeRpc,
    set_id: i32,
    uri: &str,
    drained: bool,
) -> EdgeChange {
    // d: disabled (not selected, not probed); ip: inactive and probed, so the
    // probes decide when it takes calls again.
    let state = if drained { "d" } else { "ip" };
    let mut change = EdgeChange {
        edge: name.to_string(),
        applied: false,
        state: None,
        note: String::new(),
    };
    let how = match rpc
        .dispatcher_set_state(state, i64::from(set_id), uri)
        .await
    {
        Ok(()) => "state set",
        Err(e) if e.is_unknown_destination() => match rpc
            .reload(Reload::Dispatcher, Duration::from_secs(15))
            .await
        {
            Ok(()) => "it did not hold the member: reloaded its members from the database",
            Err(e) => {
                change.note =
                    format!("not changed: it does not hold the member and did not reload ({e})");
                return change;
            }
        },
        Err(e) => {
            change.note = format!("not changed ({e})");
            return change;
        }
    };
    change.applied = true;
    change.state = match rpc.dispatcher_list().await {
        Ok(list) => list
            .iter()
            .find(|d| d.set_id == i64::from(set_id) && d.uri == uri)
            .map(|d| live_state(name, d)),
        Err(_) => None,
    };
    change.note = match &change.state {
        Some(s) => format!(
            "{how}: {} ({})",
            s.shown(),
            s.flags.as_deref().unwrap_or_default()
        ),
        None => how.to_string(),
    };
    change
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_get_their_scheme() {
        assert_eq!(normalize_uri("10.0.0.5:5080"), "sip:10.0.0.5:5080");
        assert_eq!(normalize_uri("sip:10.0.0.5:5080"), "sip:10.0.0.5:5080");
        assert_eq!(normalize_uri("fs-0.media"), "sip:fs-0.media");
        assert_eq!(normalize_uri("sips:x"), "sips:x");
    }

    #[test]
    fn states_in_words() {
        let d = LiveDestination {
            set_id: 1,
            uri: "sip:a".into(),
            flags: "AP".into(),
            priority: 0,
            attrs: String::new(),
        };
        assert_eq!(live_state("e", &d).shown(), "active+probing");
        let d = LiveDestination {
            flags: "DX".into(),
            ..d
        };
        assert_eq!(live_state("e", &d).shown(), "disabled");
        assert_eq!(weight_of("weight=3;rweight=3"), Some(3));
    }
}
