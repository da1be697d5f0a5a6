//! `sipctl status`: the database, the edges and the media pools on one screen.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Instant;

use clap::Args;
use serde::Serialize;

use super::config::redact;
use super::{CliError, Ctx};

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  sipctl status\n  sipctl status -o json")]
pub struct StatusArgs {}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusView {
    context: Option<String>,
    database: DatabaseView,
    /// The database's Patroni cluster, when the context names its REST APIs.
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<ClusterView>,
    edges: Vec<EdgeView>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ClusterView {
    reachable: bool,
    leader: Option<String>,
    members: Vec<sipstack_patroni::Member>,
    error: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct DatabaseView {
    reachable: bool,
    url: Option<String>,
    server_version: Option<String>,
    schema_version: Option<i32>,
    latency_ms: Option<u64>,
    error: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct EdgeView {
    name: String,
    rpc: String,
    reachable: bool,
    version: Option<String>,
    uptime_seconds: Option<i64>,
    sets: Vec<SetView>,
    error: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SetView {
    set_id: i64,
    pool: Option<String>,
    active: usize,
    total: usize,
    /// Members that are not active, with Kamailio's state letters.
    not_active: Vec<String>,
}

pub async fn run(ctx: &Ctx, _args: StatusArgs) -> anyhow::Result<()> {
    let mut pools: BTreeMap<i64, String> = BTreeMap::new();
    let database = match &ctx.target.db_url {
        None => DatabaseView {
            reachable: false,
            url: None,
            server_version: None,
            schema_version: None,
            latency_ms: None,
            error: Some("no database given (--db-url, SIPCTL_DB_URL or a context)".into()),
        },
        Some(url) => {
            let started = Instant::now();
            match ctx.db().await {
                Ok(client) => {
                    let server_version = client
                        .query_one("SHOW server_version", &[])
                        .await
                        .ok()
                        .map(|r| r.get::<_, String>(0));
                    let latency_ms = Some(started.elapsed().as_millis() as u64);
                    let schema_version = sipstack_db::schema_version(&client).await.ok();
                    if let Ok(list) = sipstack_db::media_pool::list(&client).await {
                        pools = list
                            .into_iter()
                            .map(|p| (i64::from(p.set_id), p.name))
                            .collect();
                    }
                    DatabaseView {
                        reachable: true,
                        url: Some(redact(url)),
                        server_version,
                        schema_version,
                        latency_ms,
                        error: None,
                    }
                }
                Err(e) => DatabaseView {
                    reachable: false,
                    url: Some(redact(url)),
                    server_version: None,
                    schema_version: None,
                    latency_ms: None,
                    error: Some(format!("{e:#}")),
                },
            }
        }
    };

    let cluster = if ctx.target.patroni.is_empty() {
        None
    } else {
        Some(
            match sipstack_patroni::PatroniClient::new(ctx.target.patroni.clone())
                .cluster()
                .await
            {
                Ok(c) => ClusterView {
                    reachable: true,
                    leader: c.leader().map(|l| l.name.clone()),
                    members: c.members,
                    error: None,
                },
                Err(e) => ClusterView {
                    reachable: false,
                    leader: None,
                    members: Vec::new(),
                    error: Some(e.to_string()),
                },
            },
        )
    };

    let mut edges = Vec::new();
    for (name, rpc) in ctx.edges() {
        let mut view = EdgeView {
            name,
            rpc: rpc.url().to_string(),
            reachable: false,
            version: None,
            uptime_seconds: None,
            sets: Vec::new(),
            error: None,
        };
        match rpc.version().await {
            Ok(v) => {
                view.reachable = true;
                view.version = Some(v);
                view.uptime_seconds = rpc
                    .call("core.uptime", &[])
                    .await
                    .ok()
                    .and_then(|u| u.get("uptime").and_then(serde_json::Value::as_i64));
                match rpc.dispatcher_list().await {
                    Ok(list) => {
                        let mut sets: BTreeMap<i64, SetView> = BTreeMap::new();
                        for d in list {
                            let set = sets.entry(d.set_id).or_insert_with(|| SetView {
                                set_id: d.set_id,
                                pool: pools.get(&d.set_id).cloned(),
                                active: 0,
                                total: 0,
                                not_active: Vec::new(),
                            });
                            set.total += 1;
                            if d.is_active() {
                                set.active += 1;
                            } else {
                                set.not_active.push(format!("{} ({})", d.uri, d.flags));
                            }
                        }
                        view.sets = sets.into_values().collect();
                    }
                    Err(e) => view.error = Some(e.to_string()),
                }
            }
            Err(e) => view.error = Some(e.to_string()),
        }
        edges.push(view);
    }

    let status = StatusView {
        context: ctx.target.context.clone(),
        database,
        cluster,
        edges,
    };
    ctx.output.object(&status, |out| human(out, &status))?;

    let unreachable: Vec<String> = std::iter::once(&status.database)
        .filter(|d| !d.reachable)
        .map(|_| "the database".to_string())
        .chain(
            status
                .cluster
                .iter()
                .filter(|c| !c.reachable || c.leader.is_none())
                .map(|c| {
                    if c.reachable {
                        "the database cluster's primary (none elected)".to_string()
                    } else {
                        "Patroni".to_string()
                    }
                }),
        )
        .chain(
            status
                .edges
                .iter()
                .filter(|e| !e.reachable)
                .map(|e| format!("edge {}", e.name)),
        )
        .collect();
    if unreachable.is_empty() {
        Ok(())
    } else {
        Err(CliError::Unreachable(format!("unreachable: {}", unreachable.join(", "))).into())
    }
}

fn human(out: &mut dyn Write, s: &StatusView) -> std::io::Result<()> {
    writeln!(
        out,
        "CONTEXT    {}",
        s.context.as_deref().unwrap_or("(none)")
    )?;
    let d = &s.database;
    if d.reachable {
        writeln!(
            out,
            "DATABASE   ok      {}  PostgreSQL {}, schema {}, {} ms",
            d.url.as_deref().unwrap_or("-"),
            d.server_version.as_deref().unwrap_or("?"),
            d.schema_version
                .map(|v| v.to_string())
                .unwrap_or_else(|| "?".into()),
            d.latency_ms.unwrap_or(0)
        )?;
    } else {
        writeln!(
            out,
            "DATABASE   DOWN    {}  {}",
            d.url.as_deref().unwrap_or("-"),
            d.error.as_deref().unwrap_or("")
        )?;
    }
    if let Some(c) = &s.cluster {
        match (&c.error, &c.leader) {
            (Some(e), _) => writeln!(out, "CLUSTER    DOWN    {e}")?,
            (None, Some(leader)) => writeln!(
                out,
                "CLUSTER    ok      primary {leader}, {} member(s)",
                c.members.len()
            )?,
            (None, None) => writeln!(out, "CLUSTER    DOWN    no primary elected")?,
        }
        if !c.members.is_empty() {
            let cluster = sipstack_patroni::Cluster {
                members: c.members.clone(),
                pending_switchover: false,
            };
            write!(out, "{}", super::db::members_table(&cluster))?;
        }
    }
    if s.edges.is_empty() {
        writeln!(out, "EDGES      none known (give --edge or use a context)")?;
    }
    for e in &s.edges {
        if e.reachable {
            writeln!(
                out,
                "EDGE       ok      {}  {}  {}, up {}",
                e.name,
                e.rpc,
                e.version.as_deref().unwrap_or("?"),
                e.uptime_seconds
                    .map(human_duration)
                    .unwrap_or_else(|| "?".into())
            )?;
        } else {
            writeln!(
                out,
                "EDGE       DOWN    {}  {}  {}",
                e.name,
                e.rpc,
                e.error.as_deref().unwrap_or("")
            )?;
        }
        for set in &e.sets {
            let health = if set.active == set.total {
                "ok"
            } else if set.active == 0 {
                "DOWN"
            } else {
                "DEGRADED"
            };
            writeln!(
                out,
                "  SET {:<5} {:<8} {}/{} members active  {}{}",
                set.set_id,
                health,
                set.active,
                set.total,
                set.pool
                    .as_deref()
                    .map(|p| format!("MediaPool {p}"))
                    .unwrap_or_default(),
                if set.not_active.is_empty() {
                    String::new()
                } else {
                    format!("; not active: {}", set.not_active.join(", "))
                }
            )?;
        }
    }
    Ok(())
}

fn human_duration(seconds: i64) -> String {
    let (d, h, m, s) = (
        seconds / 86400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) => format!("{h}h{m}m"),
        _ => format!("{d}d{h}h"),
    }
}
