//! The PgCluster controller: Patroni's StatefulSet, Services, Secrets, RBAC,
//! configuration and NetworkPolicy, and PgBouncer when the spec asks for it (deleted
//! when it no longer does). What the NetworkPolicies admit depends on the cluster's
//! clients, so the cluster is reconciled again when a SipEdge or MediaPool that uses
//! it changes. Once a member runs, the platform role, database and schema migrations
//! are applied through the primary. The status names the primary, which Patroni
//! records on its leader Endpoints, and the schema version.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Endpoints;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use sipstack_crds::{DcsKind, MediaPool, PgCluster, PgClusterStatus, SipEdge};

use crate::controller::apply::{ChildKind, Synced};
use crate::controller::context::Context;
use crate::controller::error::{namespace_of, ReconcileError};
use crate::controller::report::{self, ready_of, Report};
use crate::controller::{mediapool, sipedge};
use crate::object::Object;
use crate::{names, pgcluster};

/// The kinds of children a cluster may have.
pub const CHILD_KINDS: &[ChildKind] = &[
    ChildKind::ServiceAccount,
    ChildKind::Role,
    ChildKind::RoleBinding,
    ChildKind::Secret,
    ChildKind::ConfigMap,
    ChildKind::Service,
    ChildKind::NetworkPolicy,
    ChildKind::StatefulSet,
    ChildKind::Deployment,
    ChildKind::PodDisruptionBudget,
];

/// The annotation of Patroni's leader Endpoints that names the primary member.
pub const PATRONI_LEADER_ANNOTATION: &str = "leader";

/// Reconciles one PgCluster.
pub async fn reconcile(
    cluster: Arc<PgCluster>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    super::observed(
        "PgCluster",
        cluster.as_ref(),
        &ctx,
        reconcile_inner(&cluster, &ctx),
    )
    .await
}

async fn reconcile_inner(
    cluster: &PgCluster,
    ctx: &Context,
) -> Result<(Action, &'static str), ReconcileError> {
    let namespace = namespace_of(cluster)?;
    let name = cluster.name_any();
    let edges: Vec<SipEdge> = super::list_in(ctx, &namespace, None).await?;
    let pools: Vec<MediaPool> = super::list_in(ctx, &namespace, None).await?;
    let client_edges: Vec<&SipEdge> = edges
        .iter()
        .filter(|e| sipedge::uses_cluster(e, Some(&namespace), &name))
        .collect();
    let client_pools: Vec<&MediaPool> = pools
        .iter()
        .filter(|p| mediapool::uses_cluster(p, Some(&namespace), &name))
        .collect();
    let desired = pgcluster::build(cluster, &namespace, &client_edges, &client_pools);
    report::sync_and_report(ctx, cluster, &namespace, CHILD_KINDS, desired, |synced| {
        cluster_status(cluster, &namespace, ctx, synced)
    })
    .await
}

/// The cluster's status after its children are synced; the platform schema set up
/// once a member runs.
async fn cluster_status(
    cluster: &PgCluster,
    namespace: &str,
    ctx: &Context,
    synced: Synced,
) -> Result<Report<PgClusterStatus>, ReconcileError> {
    let name = cluster.name_any();
    let workload = names::pg_workload(&name);
    let pooler = names::pg_pooler(&name);
    let mut ready_members = 0;
    let mut ready = 0;
    let mut desired_pods = cluster.spec.instances;
    for object in &synced.objects {
        match object {
            Object::StatefulSet(sts) if sts.metadata.name.as_deref() == Some(&workload) => {
                let s = sts.status.clone().unwrap_or_default();
                ready_members = s.ready_replicas.unwrap_or(0);
                ready += ready_of(
                    s.ready_replicas,
                    s.updated_replicas,
                    s.observed_generation,
                    sts.metadata.generation,
                );
            }
            Object::Deployment(d) if d.metadata.name.as_deref() == Some(&pooler) => {
                let s = d.status.clone().unwrap_or_default();
                desired_pods += d.spec.replicas.unwrap_or(1);
                ready += ready_of(
                    s.ready_replicas,
                    s.updated_replicas,
                    s.observed_generation,
                    d.metadata.generation,
                );
            }
            _ => {}
        }
    }
    let primary = if cluster.spec.dcs.kind == DcsKind::Kubernetes {
        primary_member(ctx, namespace, &name).await?
    } else {
        // with etcd the leader key is in etcd; the status leaves the field to others
        cluster.status.as_ref().and_then(|s| s.primary.clone())
    };
    // the platform role, database and schema, once a member runs (through the
    // primary Service); an unreachable database is retried at the next requeue
    let mut schema_version = cluster.status.as_ref().and_then(|s| s.schema_version);
    // (a schema already at this operator's newest version needs no connection)
    let current = schema_version == Some(i64::from(sipstack_db::latest_version()));
    if ready_members > 0 && !current {
        match ctx.database.ensure_schema(cluster).await {
            Ok(version) => schema_version = Some(i64::from(version)),
            Err(error) => tracing::warn!(%error, "the platform schema is not set up yet"),
        }
    }
    let status = PgClusterStatus {
        ready_instances: Some(ready_members),
        primary,
        schema_version,
        ..Default::default()
    };
    Ok(Report::new(ready, desired_pods, status))
}

/// The member Patroni made primary, from its leader Endpoints (named after the cluster).
async fn primary_member(
    ctx: &Context,
    namespace: &str,
    cluster: &str,
) -> Result<Option<String>, ReconcileError> {
    let endpoints = Api::<Endpoints>::namespaced(ctx.client.clone(), namespace)
        .get_opt(cluster)
        .await
        .map_err(|e| ReconcileError::kube(format!("get Endpoints/{cluster}"), e))?;
    Ok(endpoints.and_then(|e| {
        e.metadata
            .annotations?
            .get(PATRONI_LEADER_ANNOTATION)
            .filter(|leader| !leader.is_empty())
            .cloned()
    }))
}
