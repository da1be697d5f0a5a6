//! The MediaPool controller: the FreeSWITCH StatefulSet, its configuration, Secret,
//! Service, NetworkPolicy and PodDisruptionBudget; the pool's dispatcher set kept in
//! step with its pods as the EndpointSlices of its Service list them, in the database
//! of every edge that uses the pool ([`crate::controller::dispatcher`]); and, when the
//! pool is deleted, its dispatcher set removed from the platform database before the
//! pool goes (the finalizer `sipstack.io/dispatcher-cleanup`), so that no edge keeps
//! routing calls to it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{finalizer, Error as FinalizerError, Event as FinalizerEvent};
use kube::{Api, ResourceExt};
use sipstack_crds::{MediaPool, MediaPoolStatus, PgCluster, SipEdge};
use sipstack_dispatch::Member;

use crate::controller::apply::{ChildKind, Synced};
use crate::controller::context::Context;
use crate::controller::database::PlatformDatabaseError;
use crate::controller::dispatcher::{self, SetSynced};
use crate::controller::error::{namespace_of, ReconcileError};
use crate::controller::report::{self, ready_of, Report};
use crate::mediapool;
use crate::object::Object;

/// The finalizer that keeps a deleted MediaPool until its dispatcher set is removed.
pub const DISPATCHER_FINALIZER: &str = "sipstack.io/dispatcher-cleanup";

/// The kinds of children a pool may have.
pub const CHILD_KINDS: &[ChildKind] = &[
    ChildKind::Secret,
    ChildKind::ConfigMap,
    ChildKind::Service,
    ChildKind::NetworkPolicy,
    ChildKind::StatefulSet,
    ChildKind::PodDisruptionBudget,
];

/// Whether `pool` writes CDRs to the PgCluster `cluster` (same namespace).
pub fn uses_cluster(pool: &MediaPool, namespace: Option<&str>, cluster: &str) -> bool {
    pool.namespace().as_deref() == namespace
        && pool.spec.cdr.enabled
        && pool
            .spec
            .cdr
            .database
            .as_ref()
            .is_some_and(|d| d.pg_cluster == cluster)
}

/// Reconciles one MediaPool: applies it, or cleans up after it when it is deleted.
pub async fn reconcile(pool: Arc<MediaPool>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let object = pool.clone();
    super::observed(
        "MediaPool",
        object.as_ref(),
        &ctx,
        run_finalizer(pool, &ctx),
    )
    .await
}

async fn run_finalizer(
    pool: Arc<MediaPool>,
    ctx: &Context,
) -> Result<(Action, &'static str), ReconcileError> {
    let namespace = namespace_of(pool.as_ref())?;
    let api = Api::<MediaPool>::namespaced(ctx.client.clone(), &namespace);
    // the outcome travels beside the Action, which the finalizer passes through
    let outcome = std::sync::Mutex::new("applied");
    let result = finalizer(&api, DISPATCHER_FINALIZER, pool, |event| async {
        match event {
            FinalizerEvent::Apply(pool) => {
                let (action, o) = apply_pool(&pool, ctx).await?;
                *outcome.lock().unwrap_or_else(|p| p.into_inner()) = o;
                Ok(action)
            }
            FinalizerEvent::Cleanup(pool) => {
                *outcome.lock().unwrap_or_else(|p| p.into_inner()) = "deleted";
                cleanup(&pool, ctx).await
            }
        }
    })
    .await;
    let outcome = *outcome.lock().unwrap_or_else(|p| p.into_inner());
    match result {
        Ok(action) => Ok((action, outcome)),
        Err(FinalizerError::ApplyFailed(e) | FinalizerError::CleanupFailed(e)) => Err(e),
        Err(FinalizerError::AddFinalizer(e) | FinalizerError::RemoveFinalizer(e)) => {
            Err(ReconcileError::Finalizer {
                finalizer: DISPATCHER_FINALIZER,
                message: e.to_string(),
                category: "kubernetes",
            })
        }
        Err(other) => Err(ReconcileError::Finalizer {
            finalizer: DISPATCHER_FINALIZER,
            message: other.to_string(),
            category: "spec",
        }),
    }
}

async fn apply_pool(
    pool: &MediaPool,
    ctx: &Context,
) -> Result<(Action, &'static str), ReconcileError> {
    let namespace = namespace_of(pool)?;
    let cdr_cluster = match (&pool.spec.cdr.database, pool.spec.cdr.enabled) {
        (Some(db), true) => Api::<PgCluster>::namespaced(ctx.client.clone(), &namespace)
            .get_opt(&db.pg_cluster)
            .await
            .map_err(|e| ReconcileError::kube(format!("get PgCluster/{}", db.pg_cluster), e))?,
        _ => None,
    };
    // the edges of the namespace: those using the pool send it SIP (the NetworkPolicy)
    // and read its dispatcher set (the sync below)
    let edges: Vec<SipEdge> = super::list_in(ctx, &namespace, None).await?;
    let name = pool.name_any();
    let callers: Vec<&SipEdge> = edges
        .iter()
        .filter(|e| e.spec.media_pools.contains(&name))
        .collect();
    let desired = mediapool::build(pool, &namespace, cdr_cluster.as_ref(), &callers);
    report::sync_and_report(ctx, pool, &namespace, CHILD_KINDS, desired, |synced| {
        pool_status(pool, &namespace, &edges, ctx, synced)
    })
    .await
}

/// The pool's status after its children are synced and its dispatcher set written.
async fn pool_status(
    pool: &MediaPool,
    namespace: &str,
    edges: &[SipEdge],
    ctx: &Context,
    synced: Synced,
) -> Result<Report<MediaPoolStatus>, ReconcileError> {
    let (ready, raw_ready) = match synced.find(ChildKind::StatefulSet) {
        Some(Object::StatefulSet(sts)) => {
            let status = sts.status.clone().unwrap_or_default();
            (
                ready_of(
                    status.ready_replicas,
                    status.updated_replicas,
                    status.observed_generation,
                    sts.metadata.generation,
                ),
                status.ready_replicas.unwrap_or(0),
            )
        }
        _ => (0, 0),
    };
    let outcome = sync_dispatcher(pool, namespace, edges, ctx).await?;
    let mut status = MediaPoolStatus {
        ready_replicas: Some(raw_ready),
        ..Default::default()
    };
    let mut keep = MediaPoolStatus::default();
    if outcome.error.is_none() {
        status.active_members = Some(outcome.active_members());
        status.members = outcome.members();
    } else {
        // the members as the databases hold them are unknown while one failed: the
        // status keeps what it had (these values only mark the fields)
        keep.active_members = Some(0);
        keep.members = vec![String::new()];
    }
    Ok(Report {
        keep,
        // members inserted to wait for their first probe are marked active in the
        // table by the next sync; that should not wait for the slow resync
        recheck_soon: outcome.changes > 0,
        // the status is current but for the members; retried with the backoff
        failure: outcome.error.map(ReconcileError::from),
        ..Report::new(ready, pool.spec.replicas, status)
    })
}

/// What [`sync_dispatcher`] did across the databases of the pool's edges.
#[derive(Debug, Default)]
struct DispatcherOutcome {
    /// The desired members, and whether each was written, by URI.
    written: BTreeMap<String, (Member, bool)>,
    /// Rows changed in all databases.
    changes: usize,
    /// The first database that failed; the others were synced all the same.
    error: Option<PlatformDatabaseError>,
}

impl DispatcherOutcome {
    /// `status.members`: the destinations written to the databases, in order.
    fn members(&self) -> Vec<String> {
        self.written
            .iter()
            .filter(|(_, (_, written))| *written)
            .map(|(uri, _)| uri.clone())
            .collect()
    }

    /// `status.activeMembers`: written members that take calls.
    fn active_members(&self) -> i32 {
        let n = self
            .written
            .values()
            .filter(|(m, written)| *written && m.takes_calls())
            .count();
        i32::try_from(n).unwrap_or(i32::MAX)
    }
}

/// Brings the pool's dispatcher set, in the database of every PgCluster an edge
/// using the pool reads, to the pool's members: the endpoints of its Service's
/// EndpointSlices and its static members. A pool no edge uses is written nowhere.
///
/// Every edge on such a database is told to reload, not only the pool's: Kamailio
/// loads the whole table, and an edge that kept stale rows of another pool would
/// still trust the addresses of media nodes that are gone.
async fn sync_dispatcher(
    pool: &MediaPool,
    namespace: &str,
    edges: &[SipEdge],
    ctx: &Context,
) -> Result<DispatcherOutcome, ReconcileError> {
    let name = pool.name_any();
    let mut outcome = DispatcherOutcome::default();
    let databases: BTreeSet<&str> = edges
        .iter()
        .filter(|e| e.spec.media_pools.contains(&name))
        .map(|e| e.spec.database.pg_cluster.as_str())
        .collect();
    if databases.is_empty() {
        tracing::debug!("no SipEdge uses the pool: its dispatcher set is written nowhere");
        return Ok(outcome);
    }
    let selector = dispatcher::slice_selector(&name);
    let slices: Vec<EndpointSlice> = super::list_in(ctx, namespace, Some(&selector)).await?;
    let members = dispatcher::desired_members(pool, &slices);
    let set = dispatcher::dispatcher_set(pool, members);
    let clusters = Api::<PgCluster>::namespaced(ctx.client.clone(), namespace);
    let mut skipped_everywhere: Option<BTreeSet<String>> = None;
    for database in databases {
        let Some(cluster) = clusters
            .get_opt(database)
            .await
            .map_err(|e| ReconcileError::kube(format!("get PgCluster/{database}"), e))?
        else {
            // the edges that name it are degraded for it; nothing to write to yet
            tracing::debug!(pg_cluster = %database, "the PgCluster of an edge using the pool does not exist");
            continue;
        };
        let mut urls: Vec<dispatcher::EdgeEndpoint> = Vec::new();
        for edge in edges
            .iter()
            .filter(|e| e.spec.database.pg_cluster == database)
        {
            let selector = dispatcher::edge_rpc_slice_selector(edge);
            let rpc_slices: Vec<EndpointSlice> =
                super::list_in(ctx, namespace, Some(&selector)).await?;
            urls.extend(dispatcher::edge_rpc_endpoints(edge, namespace, &rpc_slices));
        }
        match ctx.dispatcher.sync_set(&cluster, &urls, &set).await {
            Ok(SetSynced { changes, skipped }) => {
                outcome.changes += changes;
                if changes > 0 {
                    ctx.metrics.wrote("DispatcherSet", "sync");
                }
                let skipped: BTreeSet<String> = skipped.into_iter().collect();
                skipped_everywhere = Some(match skipped_everywhere {
                    None => skipped,
                    Some(before) => before.intersection(&skipped).cloned().collect(),
                });
            }
            Err(error) => {
                tracing::warn!(pg_cluster = %database, %error, "cannot sync the dispatcher set");
                outcome.error.get_or_insert(error);
            }
        }
    }
    if let Some(skipped) = skipped_everywhere {
        for member in set.members {
            let written = !skipped.contains(&member.uri);
            outcome
                .written
                .insert(member.uri.clone(), (member, written));
        }
    }
    Ok(outcome)
}

/// Removes the pool's dispatcher set from each platform database an edge using the
/// pool reads; with no such edge, from the database of the pool's CDRs or the only
/// PgCluster of the namespace. A database is skipped when another pool that is not
/// being deleted has the same set id there (the set is that pool's now).
async fn cleanup(pool: &MediaPool, ctx: &Context) -> Result<Action, ReconcileError> {
    let namespace = namespace_of(pool)?;
    let name = pool.name_any();
    let set_id = pool.spec.set_id;
    let edges: Vec<SipEdge> = super::list_in(ctx, &namespace, None).await?;
    let clusters: Vec<PgCluster> = super::list_in(ctx, &namespace, None).await?;
    let pools: Vec<MediaPool> = super::list_in(ctx, &namespace, None).await?;

    let mut databases: BTreeSet<String> = edges
        .iter()
        .filter(|e| e.spec.media_pools.contains(&name))
        .map(|e| e.spec.database.pg_cluster.clone())
        .collect();
    if databases.is_empty() {
        match (&pool.spec.cdr.database, clusters.as_slice()) {
            (Some(db), _) => {
                databases.insert(db.pg_cluster.clone());
            }
            (None, [only]) => {
                databases.insert(only.name_any());
            }
            _ => {}
        }
    }
    for database in databases {
        let Some(cluster) = clusters.iter().find(|c| c.name_any() == database) else {
            tracing::info!(pg_cluster = %database, "the PgCluster is gone, and its dispatcher rows with it");
            continue;
        };
        let taken = pools.iter().any(|other| {
            other.name_any() != name
                && other.metadata.deletion_timestamp.is_none()
                && other.spec.set_id == set_id
                && edges.iter().any(|e| {
                    e.spec.database.pg_cluster == database
                        && e.spec.media_pools.contains(&other.name_any())
                })
        });
        if taken {
            tracing::info!(pg_cluster = %database, set_id, "another MediaPool uses the set there; leaving it");
            continue;
        }
        if let Err(error) = ctx.database.remove_dispatcher_set(cluster, set_id).await {
            let note = format!(
                "{error}; the MediaPool stays until its dispatcher set is removed (removing the finalizer \
                 {DISPATCHER_FINALIZER} deletes it without, leaving the rows to be deleted by hand)"
            );
            report::warn(ctx, pool, "DispatcherCleanupFailed", &note).await;
            return Err(error.into());
        }
        ctx.metrics.wrote("DispatcherSet", "delete");
    }
    Ok(Action::await_change())
}
