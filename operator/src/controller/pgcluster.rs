//! The PgCluster controller: Patroni's StatefulSet, Services, Secrets, RBAC,
//! configuration and NetworkPolicy, and PgBouncer when the spec asks for it (deleted
//! when it no longer does). What the NetworkPolicies admit depends on the cluster's
//! clients, so the cluster is reconciled again when a SipEdge or MediaPool that uses
//! it changes. Once a member runs, the platform role, database and schema migrations
//! are applied through the primary. The status names the primary, which Patroni
//! records on its leader Endpoints, and the schema version.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Endpoints;
use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use serde_json::Value;
use sipstack_crds::{DcsKind, MediaPool, PgCluster, SipEdge};

use crate::controller::apply::{self, ChildKind, Owner};
use crate::controller::context::Context;
use crate::controller::error::{namespace_of, ReconcileError};
use crate::controller::report::{self, ready_of, Report};
use crate::controller::sipedge::rejected_observation;
use crate::controller::{mediapool, sipedge};
use crate::object::Object;
use crate::status::Observation;
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
    let list = ListParams::default();
    let edges = Api::<SipEdge>::namespaced(ctx.client.clone(), &namespace)
        .list(&list)
        .await
        .map_err(|e| ReconcileError::kube("list the SipEdges", e))?
        .items;
    let pools = Api::<MediaPool>::namespaced(ctx.client.clone(), &namespace)
        .list(&list)
        .await
        .map_err(|e| ReconcileError::kube("list the MediaPools", e))?
        .items;
    let client_edges: Vec<&SipEdge> = edges
        .iter()
        .filter(|e| sipedge::uses_cluster(e, Some(&namespace), &name))
        .collect();
    let client_pools: Vec<&MediaPool> = pools
        .iter()
        .filter(|p| mediapool::uses_cluster(p, Some(&namespace), &name))
        .collect();
    let desired = match pgcluster::build(cluster, &namespace, &client_edges, &client_pools) {
        Ok(objects) => objects,
        Err(error) => {
            tracing::warn!(%error, "the spec cannot be applied");
            return report::degrade(ctx, cluster, Observation::from(&error)).await;
        }
    };
    let owner = Owner::of(cluster, &namespace);
    let synced = match apply::sync_children(ctx, &owner, CHILD_KINDS, desired).await {
        Ok(synced) => synced,
        Err(ReconcileError::Rejected { object, message }) => {
            let observation = rejected_observation(&owner.reference, &object, &message);
            return report::degrade(ctx, cluster, observation).await;
        }
        Err(e) => return Err(e),
    };

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
        primary_member(ctx, &namespace, &name).await?
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
    let report = Report {
        observation: Observation::Applied {
            ready,
            desired: desired_pods,
        },
        fields: vec![
            ("readyInstances", Value::from(ready_members)),
            ("primary", primary.map(Value::from).unwrap_or(Value::Null)),
            (
                "schemaVersion",
                schema_version.map(Value::from).unwrap_or(Value::Null),
            ),
        ],
    };
    report::publish(ctx, cluster, &report).await?;
    let requeue = if ready >= desired_pods {
        ctx.timing.ready
    } else {
        ctx.timing.pending
    };
    Ok((Action::requeue(requeue), "applied"))
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
