//! Dispatcher sync on Kubernetes: the members of a MediaPool's dispatcher set follow
//! its FreeSWITCH pods. The EndpointSlices of the pool's headless Service say which
//! pods exist and whether each is ready or terminating; with the pool's static
//! members they are the desired members ([`desired_members`]). Those go to the
//! platform database of every PgCluster the pool's edges read, and from there into
//! the edges' memory: `sipstack_dispatch::Engine` commits the change in one
//! transaction, disables drained members on every edge at once and has every edge
//! reload the table, coalesced and retried until each confirms.
//!
//! The database and the edges are behind [`DispatcherSync`], so that the
//! controller's tests run without PostgreSQL and Kamailio; [`EngineDispatcherSync`]
//! is the real one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::{Api, Client, ResourceExt};
use sipstack_crds::{MediaPool, PgCluster, SipEdge};
use sipstack_dispatch::{members_from_slices, merge_members, pool, EdgeOptions, Engine, Member};
use sipstack_edgerpc::EdgeRpc;

use crate::controller::database::{
    app_credentials, client_endpoint_config, secret_value, PlatformDatabaseError, CONNECT_TIMEOUT,
};
use crate::names;

/// The label the EndpointSlice controller gives every slice of a Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// One pool's set as it should be in every database its edges read.
pub use sipstack_dispatch::pool::DispatcherSet;

/// What one sync of one set in one database did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetSynced {
    /// Rows inserted, updated or deleted.
    pub changes: usize,
    /// Desired members not written because they cannot take calls (a pod that was
    /// never ready has no row to disable).
    pub skipped: Vec<String>,
}

/// Where the dispatcher sets of the media pools are kept in step with their members.
#[async_trait]
pub trait DispatcherSync: Send + Sync {
    /// Makes `set` the pool's rows in the platform database of `cluster`, and has
    /// `edges` (the JSON-RPC URLs of every edge that reads that database) load them.
    /// Returns once the change is committed and the members taken out of service
    /// are disabled on the edges; reloads that an edge refuses or misses go on in
    /// the background. Syncing a set that is already in step changes nothing, so
    /// every reconcile may call it.
    async fn sync_set(
        &self,
        cluster: &PgCluster,
        edges: &[EdgeEndpoint],
        set: &DispatcherSet,
    ) -> Result<SetSynced, PlatformDatabaseError>;
}

/// One edge pod's RPC endpoint and the Secret of the token it requires.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EdgeEndpoint {
    pub url: String,
    /// Secret (in the edge's namespace) whose `token` key the edge was started with.
    pub token_secret: String,
}

/// The label selector of the EndpointSlices of `pool`'s headless Service.
pub fn slice_selector(pool: &str) -> String {
    format!("{SERVICE_NAME_LABEL}={}", names::media_service(pool))
}

/// Whether `slice` lists pods of `pool`: a change to it changes the pool's members.
pub fn serves_slice(pool: &MediaPool, slice: &EndpointSlice) -> bool {
    pool.namespace() == slice.namespace()
        && slice.labels().get(SERVICE_NAME_LABEL) == Some(&names::media_service(&pool.name_any()))
}

/// The members `pool` should have: every address its Service's EndpointSlices list,
/// as `sip:IP:spec.sipPort` with the endpoint's readiness (a not-ready pod is not
/// inserted, a terminating one is drained), plus the spec's static members. An
/// address listed twice keeps the listing that can take calls.
pub fn desired_members(pool: &MediaPool, slices: &[EndpointSlice]) -> Vec<Member> {
    let mut members = members_from_slices(slices, &pool::node_mapping(pool));
    members.extend(pool::static_members(pool));
    merge_members(&members)
}

/// The set `pool` should have, with `members` from [`desired_members`].
pub fn dispatcher_set(pool: &MediaPool, members: Vec<Member>) -> DispatcherSet {
    pool::dispatcher_set(pool, members)
}

/// The JSON-RPC endpoint of `edge`, through its RPC Service.
/// The RPC endpoints of an edge's pods, from the EndpointSlices of its RPC Service:
/// one URL per ready pod, so a reload or a `set_state` reaches every Kamailio (the
/// Service would hand each call to one pod). Before the slices exist, the Service.
pub fn edge_rpc_endpoints(
    edge: &SipEdge,
    namespace: &str,
    slices: &[EndpointSlice],
) -> Vec<EdgeEndpoint> {
    let token_secret = names::edge_rpc_token_secret(&edge.name_any());
    edge_rpc_urls(edge, namespace, slices)
        .into_iter()
        .map(|url| EdgeEndpoint {
            url,
            token_secret: token_secret.clone(),
        })
        .collect()
}

/// The URLs of [`edge_rpc_endpoints`].
pub fn edge_rpc_urls(edge: &SipEdge, namespace: &str, slices: &[EndpointSlice]) -> Vec<String> {
    let service = names::edge_rpc_service(&edge.name_any());
    let mut urls: Vec<String> = slices
        .iter()
        .filter(|s| s.namespace().as_deref() == Some(namespace))
        .filter(|s| s.labels().get(SERVICE_NAME_LABEL) == Some(&service))
        .flat_map(|s| s.endpoints.iter().flatten())
        // an endpoint without conditions is ready, as the API documents
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .flat_map(|e| e.addresses.iter())
        .map(|address| {
            let host = if address.contains(':') {
                format!("[{address}]")
            } else {
                address.clone()
            };
            format!("http://{host}:{}/RPC", edge.spec.rpc.port)
        })
        .collect();
    urls.sort();
    urls.dedup();
    if urls.is_empty() {
        urls.push(edge_rpc_url(edge, namespace));
    }
    urls
}

/// The label selector of the EndpointSlices of an edge's RPC Service.
pub fn edge_rpc_slice_selector(edge: &SipEdge) -> String {
    format!(
        "{SERVICE_NAME_LABEL}={}",
        names::edge_rpc_service(&edge.name_any())
    )
}

pub fn edge_rpc_url(edge: &SipEdge, namespace: &str) -> String {
    format!(
        "http://{}.{namespace}.svc:{}/RPC",
        names::edge_rpc_service(&edge.name_any()),
        edge.spec.rpc.port
    )
}

/// What an engine was made for; when any of it changes (a new password, PgBouncer
/// turned on, an edge added) the engine is made again.
#[derive(PartialEq, Eq)]
struct BuiltFrom {
    host: String,
    port: u16,
    database: String,
    user: String,
    password: String,
    /// URL and token of each edge.
    edges: Vec<(String, String)>,
}

struct Held {
    built_from: BuiltFrom,
    engine: Engine,
}

/// One slot per PgCluster; the async lock serialises the syncs of all pools on
/// one database (the engine's session is one connection).
type Slot = Arc<tokio::sync::Mutex<Option<Held>>>;

/// The real [`DispatcherSync`]: one `sipstack_dispatch::Engine` per PgCluster,
/// kept between reconciles, so that its reload task coalesces the reloads of all
/// pools on that database and keeps retrying edges that did not confirm one.
///
/// It connects as the platform role (the PgCluster's app Secret) through the
/// cluster's client endpoint and calls the edges through their RPC Services, both
/// Service DNS names: this works where the operator runs in the cluster, and each
/// edge's `spec.rpc.allowFrom` must admit the operator's pod network.
pub struct EngineDispatcherSync {
    client: Client,
    options: EdgeOptions,
    engines: Mutex<HashMap<(String, String), Slot>>,
}

impl EngineDispatcherSync {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            options: EdgeOptions::default(),
            engines: Mutex::default(),
        }
    }

    fn slot(&self, namespace: &str, cluster: &str) -> Slot {
        let mut engines = self.engines.lock().unwrap_or_else(|p| p.into_inner());
        engines
            .entry((namespace.to_string(), cluster.to_string()))
            .or_default()
            .clone()
    }
}

#[async_trait]
impl DispatcherSync for EngineDispatcherSync {
    async fn sync_set(
        &self,
        cluster: &PgCluster,
        edges: &[EdgeEndpoint],
        set: &DispatcherSet,
    ) -> Result<SetSynced, PlatformDatabaseError> {
        let name = cluster.name_any();
        let namespace = cluster
            .namespace()
            .ok_or_else(|| PlatformDatabaseError::NoNamespace {
                cluster: name.clone(),
            })?;
        let set_id = set.policy.set_id;
        let slot = self.slot(&namespace, &name);
        let mut held = slot.lock().await;

        let (user, password) = app_credentials(&self.client, &namespace, &name).await?;
        let (host, port) = names::pg_client_endpoint(cluster);
        let mut endpoints = edges.to_vec();
        endpoints.sort();
        endpoints.dedup();
        let mut tokens: HashMap<String, String> = HashMap::new();
        let mut edges = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            let token = match tokens.get(&endpoint.token_secret) {
                Some(t) => t.clone(),
                None => {
                    let t = edge_token(&self.client, &namespace, &endpoint.token_secret).await?;
                    tokens.insert(endpoint.token_secret.clone(), t.clone());
                    t
                }
            };
            edges.push((endpoint.url, token));
        }
        let wanted = BuiltFrom {
            host,
            port,
            database: cluster.spec.database.name.clone(),
            user,
            password,
            edges,
        };
        let current = match held.take() {
            Some(h) if h.built_from == wanted && !h.engine.db().is_closed() => h,
            previous => {
                // the previous engine's reload task stops with it
                drop(previous);
                let config =
                    client_endpoint_config(cluster, &namespace, &wanted.user, &wanted.password);
                let db = sipstack_db::connect_with(config, CONNECT_TIMEOUT)
                    .await
                    .map_err(|source| PlatformDatabaseError::Connect {
                        namespace: namespace.clone(),
                        cluster: name.clone(),
                        source: Box::new(source),
                    })?;
                let rpcs = wanted
                    .edges
                    .iter()
                    .map(|(url, token)| EdgeRpc::new(url).with_token(token.clone()))
                    .collect();
                let engine = Engine::new(db, rpcs, self.options.clone());
                // a change an earlier engine (or operator process) committed may not
                // have reached every edge: one reload of each brings them all in step
                engine.edges().request_reload();
                let urls: Vec<&str> = wanted.edges.iter().map(|(u, _)| u.as_str()).collect();
                tracing::info!(pg_cluster = %name, edges = ?urls, "dispatcher sync engine started");
                Held {
                    built_from: wanted,
                    engine,
                }
            }
        };
        let current = held.insert(current);

        sipstack_db::media_pool::upsert(current.engine.db(), &set.pool, set_id, set.algorithm)
            .await
            .map_err(|source| PlatformDatabaseError::PoolRow {
                namespace: namespace.clone(),
                cluster: name.clone(),
                pool: set.pool.clone(),
                set_id,
                source: Box::new(source),
            })?;
        let outcome = current
            .engine
            .sync_set(&set.policy, &set.members)
            .await
            .map_err(|source| PlatformDatabaseError::Sync {
                namespace: namespace.clone(),
                cluster: name.clone(),
                set_id,
                source: Box::new(source),
            })?;
        for disabled in &outcome.disabled {
            if let Err(error) = &disabled.result {
                tracing::warn!(
                    edge = %disabled.edge,
                    member = %disabled.uri,
                    %error,
                    "an edge did not disable a member at once; the table's flag applies at its next reload"
                );
            }
        }
        if !outcome.plan.is_empty() {
            tracing::info!(
                pg_cluster = %name,
                set_id,
                inserted = ?outcome.plan.inserted(),
                deleted = ?outcome.plan.deleted(),
                drained = ?outcome.plan.drained(),
                reload = ?outcome.reload,
                "dispatcher set synced"
            );
        }
        Ok(SetSynced {
            changes: outcome.plan.changes.len(),
            skipped: outcome.plan.skipped.clone(),
        })
    }
}

/// The RPC token in an edge's Secret.
async fn edge_token(
    client: &Client,
    namespace: &str,
    secret_name: &str,
) -> Result<String, PlatformDatabaseError> {
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get(secret_name)
        .await
        .map_err(|source| PlatformDatabaseError::EdgeToken {
            namespace: namespace.into(),
            secret: secret_name.into(),
            source: Box::new(source),
        })?;
    secret_value(&secret, "token")
        .filter(|t| !t.is_empty())
        .ok_or_else(|| PlatformDatabaseError::MissingKey {
            namespace: namespace.into(),
            secret: secret_name.into(),
            key: "token",
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use sipstack_crds::StaticMember;

    fn pool() -> MediaPool {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/platform.yaml"
        ))
        .expect("the example platform");
        let mut pool = sipstack_crds::Platform::from_yaml(&text)
            .expect("the example platform loads")
            .media_pools
            .remove(0);
        pool.metadata.namespace = Some("voice".into());
        pool
    }

    fn slice(name: &str, service: &str, endpoints: Vec<(&str, Option<bool>)>) -> EndpointSlice {
        EndpointSlice {
            address_type: "IPv4".into(),
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("voice".into()),
                labels: Some([(SERVICE_NAME_LABEL.to_string(), service.to_string())].into()),
                ..Default::default()
            },
            endpoints: Some(
                endpoints
                    .into_iter()
                    .map(|(ip, ready)| Endpoint {
                        addresses: vec![ip.into()],
                        conditions: Some(EndpointConditions {
                            ready,
                            serving: ready,
                            terminating: None,
                        }),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ports: None,
        }
    }

    #[test]
    fn slices_of_the_pools_service_are_its_own() {
        let pool = pool();
        let service = names::media_service(&pool.name_any());
        assert!(serves_slice(&pool, &slice("a", &service, vec![])));
        assert!(!serves_slice(
            &pool,
            &slice("b", "other-freeswitch", vec![])
        ));
        let mut elsewhere = slice("c", &service, vec![]);
        elsewhere.metadata.namespace = Some("other".into());
        assert!(!serves_slice(&pool, &elsewhere));
        assert_eq!(
            slice_selector("media"),
            "kubernetes.io/service-name=media-freeswitch"
        );
    }

    #[test]
    fn pods_on_the_sip_port_and_static_members_are_desired() {
        let mut pool = pool();
        pool.spec.sip_port = 5090;
        pool.spec.weight = 7;
        pool.spec.members = vec![StaticMember {
            uri: "sip:192.0.2.10:5080".into(),
            weight: 3,
            priority: 1,
        }];
        let service = names::media_service("media");
        let members = desired_members(
            &pool,
            &[slice(
                "a",
                &service,
                vec![("10.0.0.1", Some(true)), ("10.0.0.2", Some(false))],
            )],
        );
        let shown: Vec<(&str, i32, i32, bool)> = members
            .iter()
            .map(|m| (m.uri.as_str(), m.weight, m.priority, m.ready))
            .collect();
        assert_eq!(
            shown,
            [
                ("sip:10.0.0.1:5090", 7, 0, true),
                ("sip:10.0.0.2:5090", 7, 0, false),
                ("sip:192.0.2.10:5080", 3, 1, true),
            ]
        );
        assert!(members.iter().all(|m| m.set_id == pool.spec.set_id));
        let set = dispatcher_set(&pool, members);
        assert_eq!(set.pool, "media");
        assert_eq!(set.policy.description, "media");
        assert_eq!(
            set.policy.drain_grace,
            std::time::Duration::from_secs(pool.spec.drain_seconds.into())
        );
    }
}
