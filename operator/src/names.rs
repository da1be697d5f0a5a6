//! Names of the objects the operator creates for each custom resource. Kinds refer
//! to each other's objects (an edge reads its PgCluster's app Secret), so the names
//! are made in one place. Each carries the program's name, so objects of different
//! kinds with the same resource name do not collide.

use kube::ResourceExt;
use sipstack_crds::PgCluster;

use crate::error::BuildError;

/// Longest name a StatefulSet, Deployment or DaemonSet may have so that its pods'
/// names and revision labels stay within Kubernetes' 63 characters.
pub const MAX_WORKLOAD_NAME: usize = 52;

/// Refuses a workload name Kubernetes would refuse (or truncate in its pods' labels).
pub fn check_workload_name(object: &str, name: &str) -> Result<(), BuildError> {
    if name.len() > MAX_WORKLOAD_NAME {
        return Err(BuildError::NameTooLong {
            object: object.into(),
            name: name.into(),
            max: MAX_WORKLOAD_NAME,
        });
    }
    Ok(())
}

// ----- MediaPool -----
pub fn media_workload(pool: &str) -> String {
    format!("{pool}-freeswitch")
}
/// The headless Service of the pool's pods (the StatefulSet's `serviceName`). Its
/// EndpointSlices, labelled `kubernetes.io/service-name` with this name, are what the
/// dispatcher sync turns into the pool's members.
pub fn media_service(pool: &str) -> String {
    media_workload(pool)
}
pub fn media_config(pool: &str) -> String {
    format!("{pool}-freeswitch-config")
}
/// The NetworkPolicy of the pool's pods (SIP from the edges, RTP, the event socket).
pub fn media_network_policy(pool: &str) -> String {
    media_workload(pool)
}
/// The event socket Secret the operator generates when `spec.eventSocket.passwordSecret` is unset.
pub fn media_esl_secret(pool: &str) -> String {
    format!("{pool}-freeswitch-esl")
}

// ----- SipEdge -----
pub fn edge_workload(edge: &str) -> String {
    format!("{edge}-kamailio")
}
pub fn edge_config(edge: &str) -> String {
    format!("{edge}-kamailio-config")
}
/// The nonce secret every replica of an edge shares.
pub fn edge_auth_secret(edge: &str) -> String {
    format!("{edge}-kamailio-auth")
}
/// The Secret of the token an edge's RPC requires (key `token`).
pub fn edge_rpc_token_secret(edge: &str) -> String {
    format!("{edge}-rpc-token")
}
pub fn edge_sip_service(edge: &str) -> String {
    format!("{edge}-sip")
}
pub fn edge_rpc_service(edge: &str) -> String {
    format!("{edge}-rpc")
}
pub fn edge_metrics_service(edge: &str) -> String {
    format!("{edge}-metrics")
}

// ----- PgCluster -----
/// The StatefulSet: its pods are the Patroni members `NAME-0`, `NAME-1`, … (the
/// member names `sipstack_render::patroni::member_name` gives).
pub fn pg_workload(pg: &str) -> String {
    pg.to_string()
}
/// The read-write Service. It has no selector: Patroni (`use_endpoints`) keeps its
/// Endpoints, named after the cluster (Patroni's scope), pointing at the primary.
pub fn pg_primary_service(pg: &str) -> String {
    pg.to_string()
}
pub fn pg_replicas_service(pg: &str) -> String {
    format!("{pg}-replicas")
}
/// The headless Service that gives the members stable DNS names.
pub fn pg_members_service(pg: &str) -> String {
    format!("{pg}-members")
}
pub fn pg_config(pg: &str) -> String {
    format!("{pg}-patroni-config")
}
pub fn pg_service_account(pg: &str) -> String {
    format!("{pg}-patroni")
}
pub fn pg_superuser_secret(pg: &str) -> String {
    format!("{pg}-superuser")
}
pub fn pg_replication_secret(pg: &str) -> String {
    format!("{pg}-replication")
}
/// The credentials (`username`, `password`) of the changing endpoints of the
/// members' Patroni REST API (switchover, restart, PATCH /config).
pub fn pg_rest_api_secret(pg: &str) -> String {
    format!("{pg}-rest-api")
}
/// The platform role's credentials (`username`, `password`): what Kamailio,
/// FreeSWITCH and sipctl connect with.
pub fn pg_app_secret(pg: &str) -> String {
    format!("{pg}-app")
}
pub fn pg_pooler(pg: &str) -> String {
    format!("{pg}-pooler")
}
pub fn pg_pooler_config(pg: &str) -> String {
    format!("{pg}-pooler-config")
}
/// The key (`key`, base64 of 32 bytes) the trunks' passwords in this cluster's
/// database are encrypted with: every edge on the database and sipctl use it.
pub fn pg_trunk_key_secret(pg: &str) -> String {
    format!("{pg}-trunk-key")
}
/// The NetworkPolicy of the members (PostgreSQL and Patroni's REST API).
pub fn pg_network_policy(pg: &str) -> String {
    format!("{pg}-postgres")
}
/// The NetworkPolicy of the PgBouncer pods.
pub fn pg_pooler_network_policy(pg: &str) -> String {
    format!("{pg}-pgbouncer")
}

/// Where clients of the platform database connect: PgBouncer when the cluster runs
/// one, else the primary Service (the API's contract, [`PgCluster::client_service`]).
pub fn pg_client_endpoint(cluster: &PgCluster) -> (String, u16) {
    let endpoint = cluster.client_service();
    debug_assert!(
        endpoint.0 == pg_pooler(&cluster.name_any())
            || endpoint.0 == pg_primary_service(&cluster.name_any())
    );
    endpoint
}
