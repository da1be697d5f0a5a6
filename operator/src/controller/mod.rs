//! The controllers that run SipEdge, MediaPool and PgCluster on a cluster: one
//! process, three kube-rs Controllers, each owning the children its builder makes.
//!
//! A reconcile builds the desired objects with the pure builders
//! ([`crate::sipedge`], [`crate::mediapool`], [`crate::pgcluster`]), brings the
//! children to them ([`apply`]) and reports the outcome in the status ([`report`]).
//! A spec that cannot work is reported (`Degraded`, an Event) and looked at again
//! later; failures of the API server or the database are retried with a per-object
//! backoff ([`error::error_policy`]).

pub mod apply;
pub mod context;
pub mod database;
pub mod dispatcher;
pub mod error;
pub mod leader;
pub mod mediapool;
pub mod metrics;
pub mod pgcluster;
pub mod report;
pub mod server;
pub mod sipedge;

use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::NamespaceResourceScope;
use kube::api::ListParams;
use kube::runtime::controller::{self, Action};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use sipstack_crds::{MediaPool, PgCluster, SipEdge};

use crate::controller::context::{Context, Timing};
use crate::controller::database::{PlatformDatabase, PostgresPlatformDatabase};
use crate::controller::dispatcher::{DispatcherSync, EngineDispatcherSync};
use crate::controller::error::{error_policy, ReconcileError};
use crate::controller::leader::{LeaderElector, LeaseSettings};
use crate::controller::metrics::Metrics;
use crate::controller::server::Health;
use crate::meta::{FIELD_MANAGER, FREESWITCH};

/// Runs one reconcile inside a span naming the object, counts it in the metrics by
/// outcome, and resets the object's backoff when it succeeds: the frame every
/// controller's reconcile shares.
pub(crate) async fn observed<K, F>(
    kind: &'static str,
    obj: &K,
    ctx: &Context,
    work: F,
) -> Result<Action, ReconcileError>
where
    K: Resource<DynamicType = ()>,
    F: std::future::Future<Output = Result<(Action, &'static str), ReconcileError>>,
{
    use tracing::Instrument;
    let span = tracing::info_span!(
        "reconcile",
        kind,
        namespace = obj.namespace().unwrap_or_default(),
        name = obj.name_any()
    );
    let started = std::time::Instant::now();
    let key = error::object_key(obj);
    let result = work.instrument(span).await;
    let outcome = match &result {
        Ok((_, outcome)) => *outcome,
        Err(_) => "failed",
    };
    ctx.metrics.reconciled(kind, outcome, started.elapsed());
    if result.is_ok() {
        ctx.backoff.reset(&key);
    }
    result.map(|(action, _)| action)
}

/// How the operator process runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Watch one namespace only; all namespaces when `None`.
    pub namespace: Option<String>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub metrics_address: SocketAddr,
    /// The Lease to lead by; `None` runs the controllers at once (one replica only).
    pub leader_election: Option<LeaseSettings>,
    /// This replica's name in Events and the Lease (the pod's name).
    pub identity: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot reach the Kubernetes API server: {0}")]
    ApiServer(#[source] kube::Error),
    #[error("cannot serve metrics on {address}: {source}")]
    Serve {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The process must end: another replica may act from now on.
    #[error("lost the leadership, stopping so that only one replica acts: {0}")]
    LeadershipLost(#[from] leader::LeadershipLost),
}

/// Runs the operator until a termination signal (or the loss of the leadership).
pub async fn run(client: Client, settings: Settings) -> Result<(), RunError> {
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let address = settings.metrics_address;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| RunError::Serve { address, source })?;
    let router = server::router(metrics.clone(), health.clone());
    let mut server = tokio::spawn(async move { axum::serve(listener, router).await });
    tracing::info!(%address, "serving /metrics, /healthz and /readyz");

    let version = client
        .apiserver_version()
        .await
        .map_err(RunError::ApiServer)?;
    tracing::info!(version = %version.git_version, "connected to the API server");
    health.set_ready(true);

    let database: Arc<dyn PlatformDatabase> =
        Arc::new(PostgresPlatformDatabase::new(client.clone()));
    let dispatcher: Arc<dyn DispatcherSync> = Arc::new(EngineDispatcherSync::new(client.clone()));
    let ctx = Arc::new(Context::new(
        client.clone(),
        Some(settings.identity.clone()),
        metrics.clone(),
        database,
        dispatcher,
        Timing::default(),
    ));

    let elector = settings
        .leader_election
        .clone()
        .map(|lease| LeaderElector::new(client.clone(), lease));
    if let Some(elector) = &elector {
        tokio::select! {
            () = elector.acquire() => {}
            () = shutdown_signal() => return Ok(()),
        }
    }
    metrics.set_leader(true);

    let holding = async {
        match &elector {
            Some(elector) => elector.hold().await,
            None => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        () = run_controllers(ctx, settings.namespace.clone()) => Ok(()),
        lost = holding => Err(RunError::LeadershipLost(lost)),
        served = &mut server => {
            let source = match served {
                Ok(Ok(())) => std::io::Error::other("the server stopped"),
                Ok(Err(e)) => e,
                Err(e) => std::io::Error::other(e),
            };
            Err(RunError::Serve { address, source })
        }
    };
    metrics.set_leader(false);
    if let (Some(elector), Ok(())) = (&elector, &result) {
        if let Err(error) = elector.release().await {
            tracing::warn!(%error, "cannot release the leader Lease; it expires by itself");
        }
    }
    result
}

/// SIGTERM or SIGINT.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The objects of kind `K` in `namespace`; only those with the labels `selector` when
/// one is given.
pub(crate) async fn list_in<K>(
    ctx: &Context,
    namespace: &str,
    selector: Option<&str>,
) -> Result<Vec<K>, ReconcileError>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + DeserializeOwned,
{
    let params = match selector {
        Some(selector) => ListParams::default().labels(selector),
        None => ListParams::default(),
    };
    let list = Api::<K>::namespaced(ctx.client.clone(), namespace)
        .list(&params)
        .await
        .map_err(|e| {
            let what = format!("list the {}s", K::kind(&()));
            let action = match selector {
                Some(selector) => format!("{what} {selector}"),
                None => what,
            };
            ReconcileError::kube(action, e)
        })?;
    Ok(list.items)
}

/// Resources of kind `R` that `wants` says depend on `changed`, for `.watches`.
fn dependents<R>(
    store: &kube::runtime::reflector::Store<R>,
    wants: impl Fn(&R) -> bool,
) -> Vec<ObjectRef<R>>
where
    R: Resource<DynamicType = ()> + Clone,
{
    store
        .state()
        .iter()
        .filter(|r| wants(r))
        .map(|r| ObjectRef::from_obj(r.as_ref()))
        .collect()
}

/// The resource of kind `R` named `name` in the namespace of `referrer`, which names it.
fn within_namespace_of<R>(referrer: &impl ResourceExt, name: &str) -> ObjectRef<R>
where
    R: Resource<DynamicType = ()>,
{
    let reference = ObjectRef::<R>::new(name);
    match referrer.namespace() {
        Some(ns) => reference.within(&ns),
        None => reference,
    }
}

fn log_result<K: Resource>(
    result: Result<(ObjectRef<K>, Action), controller::Error<ReconcileError, watcher::Error>>,
) -> std::future::Ready<()>
where
    K::DynamicType: Debug,
{
    match result {
        Ok((object, _)) => tracing::debug!(%object, "reconciled"),
        // logged with the object by the error policy
        Err(controller::Error::ReconcilerFailed(_, object)) => {
            tracing::debug!(%object, "reconcile failed")
        }
        Err(error) => tracing::warn!(%error, "controller"),
    }
    std::future::ready(())
}

/// Runs the three controllers until a termination signal.
pub async fn run_controllers(ctx: Arc<Context>, namespace: Option<String>) {
    let client = ctx.client.clone();
    let ns = namespace.as_deref();
    let resources = watcher::Config::default().any_semantic();
    // only the objects the operator made: the watches stay small in a busy cluster
    let children = watcher::Config::default()
        .labels(&format!("app.kubernetes.io/managed-by={FIELD_MANAGER}"))
        .any_semantic();

    let edges = Controller::new(api::<SipEdge>(&client, ns), resources.clone());
    let edge_store = edges.store();
    let pool_edges = edge_store.clone();
    let edges = apply::owning(edges, sipedge::CHILD_KINDS, &client, ns, &children)
        .watches(
            api::<PgCluster>(&client, ns),
            resources.clone(),
            move |cluster: PgCluster| {
                let (namespace, name) = (cluster.namespace(), cluster.name_any());
                dependents(&edge_store, |e| {
                    sipedge::uses_cluster(e, namespace.as_deref(), &name)
                })
            },
        )
        .watches(
            api::<MediaPool>(&client, ns),
            resources.clone(),
            move |pool: MediaPool| {
                let (namespace, name) = (pool.namespace(), pool.name_any());
                dependents(&pool_edges, |e| {
                    sipedge::uses_pool(e, namespace.as_deref(), &name)
                })
            },
        )
        .shutdown_on_signal()
        .run(sipedge::reconcile, error_policy, ctx.clone())
        .for_each(log_result);

    // the EndpointSlices of the pools' headless Services: their endpoints are the
    // dispatcher members. The EndpointSlice controller copies a Service's labels onto
    // its slices, so the operator's labels keep this watch to the pools' Services.
    let media_slices = watcher::Config::default()
        .labels(&format!(
            "app.kubernetes.io/managed-by={FIELD_MANAGER},app.kubernetes.io/name={}",
            FREESWITCH.app
        ))
        .any_semantic();
    let pools = Controller::new(api::<MediaPool>(&client, ns), resources.clone());
    let pool_store = pools.store();
    let slice_pools = pool_store.clone();
    let pools = apply::owning(pools, mediapool::CHILD_KINDS, &client, ns, &children)
        .watches(
            api::<PgCluster>(&client, ns),
            resources.clone(),
            move |cluster: PgCluster| {
                let (namespace, name) = (cluster.namespace(), cluster.name_any());
                dependents(&pool_store, |p| {
                    mediapool::uses_cluster(p, namespace.as_deref(), &name)
                })
            },
        )
        // an edge that starts using a pool needs the pool's set in its database
        .watches(
            api::<SipEdge>(&client, ns),
            resources.clone(),
            |edge: SipEdge| {
                edge.spec
                    .media_pools
                    .iter()
                    .map(|pool| within_namespace_of::<MediaPool>(&edge, pool))
                    .collect::<Vec<_>>()
            },
        )
        .watches(
            api::<EndpointSlice>(&client, ns),
            media_slices,
            move |slice: EndpointSlice| {
                dependents(&slice_pools, |p| dispatcher::serves_slice(p, &slice))
            },
        )
        .shutdown_on_signal()
        .run(mediapool::reconcile, error_policy, ctx.clone())
        .for_each(log_result);

    let clusters = Controller::new(api::<PgCluster>(&client, ns), resources.clone());
    let clusters = apply::owning(clusters, pgcluster::CHILD_KINDS, &client, ns, &children)
        // the clients' network decides what the NetworkPolicies admit
        .watches(
            api::<SipEdge>(&client, ns),
            resources.clone(),
            |edge: SipEdge| [within_namespace_of(&edge, &edge.spec.database.pg_cluster)],
        )
        .watches(
            api::<MediaPool>(&client, ns),
            resources.clone(),
            |pool: MediaPool| {
                let database = pool
                    .spec
                    .cdr
                    .database
                    .as_ref()
                    .filter(|_| pool.spec.cdr.enabled);
                database.map(|db| within_namespace_of(&pool, &db.pg_cluster))
            },
        )
        .shutdown_on_signal()
        .run(pgcluster::reconcile, error_policy, ctx.clone())
        .for_each(log_result);

    tracing::info!(namespace = ns.unwrap_or("(all)"), "controllers started");
    tokio::join!(edges, pools, clusters);
    tracing::info!("controllers stopped");
}

#[cfg(test)]
mod tests {
    use crate::controller::apply::ChildKind;
    use crate::manifests::build_all;
    use crate::testing::{example, ha_fixture};

    /// A child of a kind its controller does not list would never be deleted when the
    /// spec stops asking for it.
    #[test]
    fn every_kind_a_builder_makes_is_one_its_controller_lists() {
        for platform in [example(), ha_fixture()] {
            for object in build_all(&platform, "voice").unwrap() {
                let owner = &object.metadata().owner_references.as_ref().unwrap()[0].kind;
                let kinds = match owner.as_str() {
                    "SipEdge" => super::sipedge::CHILD_KINDS,
                    "MediaPool" => super::mediapool::CHILD_KINDS,
                    "PgCluster" => super::pgcluster::CHILD_KINDS,
                    other => panic!("{} is owned by a {other}", object.reference()),
                };
                assert!(
                    kinds.contains(&ChildKind::of(&object)),
                    "{} is no child kind of the {owner} controller",
                    object.reference()
                );
            }
        }
    }
}
