//! The MediaPool controller: the FreeSWITCH StatefulSet, its configuration, Secret,
//! Service and PodDisruptionBudget; and, when the pool is deleted, its dispatcher set
//! removed from the platform database before the pool goes (the finalizer
//! `sipstack.io/dispatcher-cleanup`), so that no edge keeps routing calls to it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{finalizer, Error as FinalizerError, Event as FinalizerEvent};
use kube::{Api, ResourceExt};
use serde_json::Value;
use sipstack_crds::{MediaPool, PgCluster, SipEdge};
use tracing::Instrument;

use crate::controller::apply::{self, ChildKind, Owner};
use crate::controller::context::Context;
use crate::controller::error::{namespace_of, object_key, ReconcileError};
use crate::controller::report::{self, ready_of, Report};
use crate::controller::sipedge::rejected_observation;
use crate::mediapool;
use crate::object::Object;
use crate::status::Observation;

/// The finalizer that keeps a deleted MediaPool until its dispatcher set is removed.
pub const DISPATCHER_FINALIZER: &str = "sipstack.io/dispatcher-cleanup";

/// The kinds of children a pool may have.
pub const CHILD_KINDS: &[ChildKind] = &[
    ChildKind::Secret,
    ChildKind::ConfigMap,
    ChildKind::Service,
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
    let span = tracing::info_span!(
        "reconcile",
        kind = "MediaPool",
        namespace = pool.namespace().unwrap_or_default(),
        name = pool.name_any()
    );
    let started = Instant::now();
    let key = object_key(pool.as_ref());
    let result = run_finalizer(pool, &ctx).instrument(span).await;
    let outcome = match &result {
        Ok((_, outcome)) => *outcome,
        Err(_) => "failed",
    };
    ctx.metrics
        .reconciled("MediaPool", outcome, started.elapsed());
    if result.is_ok() {
        ctx.backoff.reset(&key);
    }
    result.map(|(action, _)| action)
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
    let desired = match mediapool::build(pool, &namespace, cdr_cluster.as_ref()) {
        Ok(objects) => objects,
        Err(error) => {
            tracing::warn!(%error, "the spec cannot be applied");
            let report = Report {
                observation: Observation::from(&error),
                fields: Vec::new(),
            };
            report::publish(ctx, pool, &report).await?;
            return Ok((Action::requeue(ctx.timing.degraded), "degraded"));
        }
    };
    let owner = Owner::of(pool, &namespace);
    let synced = match apply::sync_children(ctx, &owner, CHILD_KINDS, desired).await {
        Ok(synced) => synced,
        Err(ReconcileError::Rejected { object, message }) => {
            let report = Report {
                observation: rejected_observation(&owner.reference, &object, &message),
                fields: Vec::new(),
            };
            report::publish(ctx, pool, &report).await?;
            return Ok((Action::requeue(ctx.timing.degraded), "degraded"));
        }
        Err(e) => return Err(e),
    };
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
    let desired_pods = pool.spec.replicas;
    let report = Report {
        observation: Observation::Applied {
            ready,
            desired: desired_pods,
        },
        fields: vec![("readyReplicas", Value::from(raw_ready))],
    };
    report::publish(ctx, pool, &report).await?;
    let requeue = if ready >= desired_pods {
        ctx.timing.ready
    } else {
        ctx.timing.pending
    };
    Ok((Action::requeue(requeue), "applied"))
}

/// Removes the pool's dispatcher set from each platform database an edge using the
/// pool reads; with no such edge, from the database of the pool's CDRs or the only
/// PgCluster of the namespace. A database is skipped when another pool that is not
/// being deleted has the same set id there (the set is that pool's now).
async fn cleanup(pool: &MediaPool, ctx: &Context) -> Result<Action, ReconcileError> {
    let namespace = namespace_of(pool)?;
    let name = pool.name_any();
    let set_id = pool.spec.set_id;
    let list = ListParams::default();
    let edges = Api::<SipEdge>::namespaced(ctx.client.clone(), &namespace)
        .list(&list)
        .await
        .map_err(|e| ReconcileError::kube("list the SipEdges", e))?
        .items;
    let clusters = Api::<PgCluster>::namespaced(ctx.client.clone(), &namespace)
        .list(&list)
        .await
        .map_err(|e| ReconcileError::kube("list the PgClusters", e))?
        .items;
    let pools = Api::<MediaPool>::namespaced(ctx.client.clone(), &namespace)
        .list(&list)
        .await
        .map_err(|e| ReconcileError::kube("list the MediaPools", e))?
        .items;

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
