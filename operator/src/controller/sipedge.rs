//! The SipEdge controller: Kamailio's configuration, Secret, Services and workload
//! from the edge's spec, its PgCluster and its MediaPools. The edge is reconciled
//! again when one of those changes (the rendered kamailio.cfg holds the pools'
//! dispatcher sets and the database endpoint).

use std::sync::Arc;

use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use sipstack_crds::{MediaPool, PgCluster, SipEdge, SipEdgeStatus};

use crate::controller::apply::{ChildKind, Synced};
use crate::controller::context::Context;
use crate::controller::error::{namespace_of, ReconcileError};
use crate::controller::report::{self, ready_of, Report};
use crate::meta::CONFIG_HASH_ANNOTATION;
use crate::object::Object;
use crate::sipedge;

/// The kinds of children an edge may have.
pub const CHILD_KINDS: &[ChildKind] = &[
    ChildKind::Secret,
    ChildKind::ConfigMap,
    ChildKind::Service,
    ChildKind::Deployment,
    ChildKind::DaemonSet,
    ChildKind::PodDisruptionBudget,
];

/// Whether `edge` uses the PgCluster `cluster` (same namespace).
pub fn uses_cluster(edge: &SipEdge, namespace: Option<&str>, cluster: &str) -> bool {
    edge.namespace().as_deref() == namespace && edge.spec.database.pg_cluster == cluster
}

/// Whether `edge` uses the MediaPool `pool` (same namespace).
pub fn uses_pool(edge: &SipEdge, namespace: Option<&str>, pool: &str) -> bool {
    edge.namespace().as_deref() == namespace && edge.spec.media_pools.iter().any(|p| p == pool)
}

/// Reconciles one SipEdge.
pub async fn reconcile(edge: Arc<SipEdge>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    super::observed("SipEdge", edge.as_ref(), &ctx, reconcile_inner(&edge, &ctx)).await
}

async fn reconcile_inner(
    edge: &SipEdge,
    ctx: &Context,
) -> Result<(Action, &'static str), ReconcileError> {
    let namespace = namespace_of(edge)?;
    let cluster_name = &edge.spec.database.pg_cluster;
    let cluster = Api::<PgCluster>::namespaced(ctx.client.clone(), &namespace)
        .get_opt(cluster_name)
        .await
        .map_err(|e| ReconcileError::kube(format!("get PgCluster/{cluster_name}"), e))?;
    let pool_api = Api::<MediaPool>::namespaced(ctx.client.clone(), &namespace);
    let mut pools = Vec::new();
    for name in &edge.spec.media_pools {
        if let Some(pool) = pool_api
            .get_opt(name)
            .await
            .map_err(|e| ReconcileError::kube(format!("get MediaPool/{name}"), e))?
        {
            pools.push(pool);
        }
    }
    let pool_refs: Vec<&MediaPool> = pools.iter().collect();

    let desired = sipedge::build(edge, &namespace, &pool_refs, cluster.as_ref());
    let config_hash = desired
        .as_ref()
        .ok()
        .and_then(|objects| objects.iter().find_map(pod_config_hash));
    report::sync_and_report(
        ctx,
        edge,
        &namespace,
        CHILD_KINDS,
        desired,
        |synced| async move { Ok(edge_report(&synced, config_hash)) },
    )
    .await
}

/// The edge's status after its children are synced: the pods of its workload (a
/// Deployment or a DaemonSet) and the configuration they run.
fn edge_report(synced: &Synced, config_hash: Option<String>) -> Report<SipEdgeStatus> {
    let (ready, desired) = match synced
        .find(ChildKind::Deployment)
        .or_else(|| synced.find(ChildKind::DaemonSet))
    {
        Some(Object::Deployment(d)) => {
            let status = d.status.clone().unwrap_or_default();
            let wanted = d.spec.replicas.unwrap_or(1);
            (
                ready_of(
                    status.ready_replicas,
                    status.updated_replicas,
                    status.observed_generation,
                    d.metadata.generation,
                ),
                wanted,
            )
        }
        Some(Object::DaemonSet(d)) => {
            let status = d.status.clone();
            match status {
                Some(s) => (
                    ready_of(
                        Some(s.number_ready),
                        s.updated_number_scheduled,
                        s.observed_generation,
                        d.metadata.generation,
                    ),
                    s.desired_number_scheduled,
                ),
                // not looked at by the DaemonSet controller yet
                None => (0, 1),
            }
        }
        _ => (0, 1),
    };
    let status = SipEdgeStatus {
        ready_replicas: Some(ready),
        config_hash,
        ..Default::default()
    };
    Report::new(ready, desired, status)
}

/// The configuration hash on the pod template of a workload.
fn pod_config_hash(object: &Object) -> Option<String> {
    let template = match object {
        Object::Deployment(d) => &d.spec.template,
        Object::DaemonSet(d) => &d.spec.template,
        Object::StatefulSet(s) => &s.spec.template,
        _ => return None,
    };
    template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(CONFIG_HASH_ANNOTATION)
        .cloned()
}
