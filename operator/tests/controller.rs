//! The controllers against an in-memory API server: what the first reconcile writes
//! and in which order, that a second one writes nothing, how a spec that cannot work
//! is reported, the MediaPool finalizer, the dispatcher set following the pool's
//! EndpointSlices, generated Secrets, orphans, leader election and the HTTP endpoints.

mod support;

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::DeleteParams;
use kube::{Api, ResourceExt};
use serde_json::{json, Value};
use sipstack_crds::{MediaPool, PgCluster, SipEdge};
use sipstack_operator::controller;
use sipstack_operator::controller::leader::{LeaderElector, LeaseSettings};
use sipstack_operator::controller::mediapool::DISPATCHER_FINALIZER;
use sipstack_operator::object::Object;
use support::{events, example, setup, writes, FakeApi, NAMESPACE};

fn plural(kind: &str) -> String {
    match kind {
        "Endpoints" => "endpoints".into(),
        "PodDisruptionBudget" => "poddisruptionbudgets".into(),
        "NetworkPolicy" => "networkpolicies".into(),
        other => format!("{}s", other.to_lowercase()),
    }
}

/// The writes that applying `objects` for the first time makes, then the status patch.
fn first_writes(objects: &[Object], status: &str) -> Vec<String> {
    let mut expected: Vec<String> = objects
        .iter()
        .map(|o| {
            if o.is_generated_secret() {
                "POST secrets".to_string()
            } else {
                format!("PATCH {}/{}", plural(o.kind()), o.name())
            }
        })
        .collect();
    expected.push(format!("PATCH {status}"));
    expected
}

fn position(writes: &[String], call: &str) -> usize {
    writes
        .iter()
        .position(|w| w == call)
        .unwrap_or_else(|| panic!("{call} not in {writes:#?}"))
}

fn condition<'a>(object: &'a Value, type_: &str) -> &'a Value {
    object["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {object:#}"))
}

fn json_of<T: serde::Serialize>(object: &T) -> Value {
    serde_json::to_value(object).unwrap()
}

/// Inserts the example's PgCluster and MediaPool (with its finalizer, as the
/// controller leaves it) and returns them as stored.
fn insert_cluster_and_pool(fake: &FakeApi) -> (PgCluster, MediaPool) {
    let p = example();
    let pg = fake.insert(&p.pg_clusters[0]);
    let mut pool = p.media_pools[0].clone();
    pool.metadata.finalizers = Some(vec![DISPATCHER_FINALIZER.into()]);
    (pg, fake.insert(&pool))
}

// ----- (1) first reconcile: the objects in order, ConfigMaps before workloads -----

#[tokio::test]
async fn first_reconcile_of_a_pgcluster_applies_its_objects_in_order() {
    let (fake, ctx, _) = setup();
    let pg = fake.insert(&example().pg_clusters[0]);
    controller::pgcluster::reconcile(Arc::new(pg.clone()), ctx)
        .await
        .unwrap();
    let built = sipstack_operator::pgcluster::build(&pg, NAMESPACE, &[], &[]).unwrap();
    let writes = writes(&fake.take_calls());
    assert_eq!(writes, first_writes(&built, "pgclusters/pg/status"));
    assert!(
        position(&writes, "PATCH configmaps/pg-patroni-config")
            < position(&writes, "PATCH statefulsets/pg")
    );
    let stored: Value = json_of(&fake.get::<PgCluster>("PgCluster", NAMESPACE, "pg").unwrap());
    assert_eq!(stored["status"]["observedGeneration"], 1);
    assert_eq!(condition(&stored, "Degraded")["status"], "False");
    assert_eq!(condition(&stored, "Ready")["reason"], "PodsNotReady");
    // every applied child carries the hash of what was applied and the owner reference
    let sts = &fake.all("StatefulSet")[0];
    assert!(sts["metadata"]["annotations"]["sipstack.io/applied-hash"].is_string());
    assert_eq!(
        sts["metadata"]["ownerReferences"][0]["uid"],
        json!(pg.uid().unwrap())
    );
}

#[tokio::test]
async fn first_reconcile_of_a_sipedge_applies_its_objects_in_order() {
    let (fake, ctx, _) = setup();
    let (pg, pool) = insert_cluster_and_pool(&fake);
    let edge = fake.insert(&example().sip_edges[0]);
    controller::sipedge::reconcile(Arc::new(edge.clone()), ctx)
        .await
        .unwrap();
    let built = sipstack_operator::sipedge::build(&edge, NAMESPACE, &[&pool], Some(&pg)).unwrap();
    let writes = writes(&fake.take_calls());
    assert_eq!(writes, first_writes(&built, "sipedges/edge/status"));
    assert!(
        position(&writes, "PATCH configmaps/edge-kamailio-config")
            < position(&writes, "PATCH deployments/edge-kamailio")
    );
    let stored = json_of(&fake.get::<SipEdge>("SipEdge", NAMESPACE, "edge").unwrap());
    assert_eq!(stored["status"]["readyReplicas"], 0);
    assert!(stored["status"]["configHash"]
        .as_str()
        .is_some_and(|h| h.len() == 64));
}

#[tokio::test]
async fn first_reconcile_of_a_mediapool_adds_the_finalizer_then_applies_in_order() {
    let (fake, ctx, _) = setup();
    let p = example();
    let pg = fake.insert(&p.pg_clusters[0]);
    let pool = fake.insert(&p.media_pools[0]);
    controller::mediapool::reconcile(Arc::new(pool), ctx.clone())
        .await
        .unwrap();
    assert_eq!(writes(&fake.take_calls()), ["PATCH mediapools/media"]);
    let pool: MediaPool = fake.get("MediaPool", NAMESPACE, "media").unwrap();
    assert_eq!(pool.finalizers(), [DISPATCHER_FINALIZER]);

    controller::mediapool::reconcile(Arc::new(pool.clone()), ctx)
        .await
        .unwrap();
    let built = sipstack_operator::mediapool::build(&pool, NAMESPACE, Some(&pg), &[]).unwrap();
    let writes = writes(&fake.take_calls());
    assert_eq!(writes, first_writes(&built, "mediapools/media/status"));
    assert!(
        position(&writes, "PATCH configmaps/media-freeswitch-config")
            < position(&writes, "PATCH statefulsets/media-freeswitch")
    );
}

// ----- (2) a second reconcile of the same generation makes no write -----

#[tokio::test]
async fn a_second_reconcile_of_unchanged_resources_only_reads() {
    let (fake, ctx, _) = setup();
    insert_cluster_and_pool(&fake);
    fake.insert(&example().sip_edges[0]);
    let pg = || fake.get::<PgCluster>("PgCluster", NAMESPACE, "pg").unwrap();
    let pool_now = || {
        fake.get::<MediaPool>("MediaPool", NAMESPACE, "media")
            .unwrap()
    };
    let edge = || fake.get::<SipEdge>("SipEdge", NAMESPACE, "edge").unwrap();

    controller::pgcluster::reconcile(Arc::new(pg()), ctx.clone())
        .await
        .unwrap();
    controller::mediapool::reconcile(Arc::new(pool_now()), ctx.clone())
        .await
        .unwrap();
    controller::sipedge::reconcile(Arc::new(edge()), ctx.clone())
        .await
        .unwrap();
    let first = fake.take_calls();
    assert!(writes(&first).len() > 20, "{:#?}", writes(&first));
    let writes_before = ctx.metrics.total_writes();

    controller::pgcluster::reconcile(Arc::new(pg()), ctx.clone())
        .await
        .unwrap();
    controller::mediapool::reconcile(Arc::new(pool_now()), ctx.clone())
        .await
        .unwrap();
    controller::sipedge::reconcile(Arc::new(edge()), ctx.clone())
        .await
        .unwrap();
    let second = fake.take_calls();
    assert!(!second.is_empty());
    let not_reads: Vec<String> = second
        .iter()
        .filter(|c| c.method != "GET")
        .map(|c| c.short())
        .collect();
    assert!(
        not_reads.is_empty(),
        "the second reconcile wrote: {not_reads:#?}"
    );
    assert_eq!(ctx.metrics.total_writes(), writes_before);
}

#[tokio::test]
async fn a_spec_change_applies_only_what_changed() {
    let (fake, ctx, _) = setup();
    insert_cluster_and_pool(&fake);
    let pool = || {
        fake.get::<MediaPool>("MediaPool", NAMESPACE, "media")
            .unwrap()
    };
    controller::mediapool::reconcile(Arc::new(pool()), ctx.clone())
        .await
        .unwrap();
    fake.take_calls();
    fake.update("MediaPool", NAMESPACE, "media", |p| {
        p["spec"]["replicas"] = json!(5);
        p["metadata"]["generation"] = json!(2);
    });
    controller::mediapool::reconcile(Arc::new(pool()), ctx.clone())
        .await
        .unwrap();
    assert_eq!(
        writes(&fake.take_calls()),
        [
            "PATCH statefulsets/media-freeswitch",
            "PATCH mediapools/media/status"
        ]
    );
    let stored = json_of(&pool());
    assert_eq!(stored["status"]["observedGeneration"], 2);
}

#[tokio::test]
async fn ready_pods_make_the_pool_ready() {
    let (fake, ctx, _) = setup();
    insert_cluster_and_pool(&fake);
    let pool = || {
        fake.get::<MediaPool>("MediaPool", NAMESPACE, "media")
            .unwrap()
    };
    controller::mediapool::reconcile(Arc::new(pool()), ctx.clone())
        .await
        .unwrap();
    fake.update("StatefulSet", NAMESPACE, "media-freeswitch", |s| {
        s["status"] = json!({"replicas": 2, "readyReplicas": 2, "updatedReplicas": 2, "observedGeneration": 1});
    });
    fake.take_calls();
    controller::mediapool::reconcile(Arc::new(pool()), ctx)
        .await
        .unwrap();
    assert_eq!(
        writes(&fake.take_calls()),
        ["PATCH mediapools/media/status"]
    );
    let stored = json_of(&pool());
    assert_eq!(stored["status"]["readyReplicas"], 2);
    let ready = condition(&stored, "Ready");
    assert_eq!(
        (ready["status"].as_str(), ready["message"].as_str()),
        (Some("True"), Some("2 of 2 pods ready"))
    );
    assert_eq!(condition(&stored, "Progressing")["status"], "False");
}

// ----- (3) a reference to a missing PgCluster degrades, with an Event -----

#[tokio::test]
async fn a_sipedge_naming_a_missing_pgcluster_is_degraded_with_an_event() {
    let (fake, ctx, _) = setup();
    let p = example();
    fake.insert(&p.media_pools[0]);
    let edge = fake.insert(&p.sip_edges[0]);
    controller::sipedge::reconcile(Arc::new(edge), ctx.clone())
        .await
        .expect("a missing reference is reported, not an error");
    let calls = fake.take_calls();
    assert_eq!(
        writes(&calls),
        ["PATCH sipedges/edge/status"],
        "no child is applied"
    );
    let stored = json_of(&fake.get::<SipEdge>("SipEdge", NAMESPACE, "edge").unwrap());
    let degraded = condition(&stored, "Degraded");
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "MissingReference");
    let message = degraded["message"].as_str().unwrap();
    assert!(
        message.contains("spec.database.pgCluster")
            && message.contains("\"pg\"")
            && message.contains("create it"),
        "{message}"
    );
    assert_eq!(condition(&stored, "Ready")["status"], "False");
    let published = events(&calls);
    assert_eq!(published.len(), 1, "{published:#?}");
    assert_eq!(published[0]["reason"], "MissingReference");
    assert_eq!(published[0]["type"], "Warning");
    assert_eq!(published[0]["regarding"]["name"], "edge");
    assert!(published[0]["note"]
        .as_str()
        .unwrap()
        .contains("spec.database.pgCluster"));

    // still missing: nothing new is written, no second Event
    let edge: SipEdge = fake.get("SipEdge", NAMESPACE, "edge").unwrap();
    controller::sipedge::reconcile(Arc::new(edge), ctx.clone())
        .await
        .unwrap();
    let calls = fake.take_calls();
    assert!(calls.iter().all(|c| c.method == "GET"), "{calls:#?}");

    // the PgCluster appears: the edge is applied and recovers
    fake.insert(&p.pg_clusters[0]);
    let edge: SipEdge = fake.get("SipEdge", NAMESPACE, "edge").unwrap();
    controller::sipedge::reconcile(Arc::new(edge), ctx)
        .await
        .unwrap();
    let calls = fake.take_calls();
    assert!(
        writes(&calls).contains(&"PATCH deployments/edge-kamailio".to_string()),
        "{:#?}",
        writes(&calls)
    );
    assert_eq!(events(&calls)[0]["reason"], "Recovered");
    let stored = json_of(&fake.get::<SipEdge>("SipEdge", NAMESPACE, "edge").unwrap());
    assert_eq!(condition(&stored, "Degraded")["status"], "False");
}

#[tokio::test]
async fn an_invalid_spec_is_degraded_naming_the_field() {
    let (fake, ctx, _) = setup();
    let mut pool = example().media_pools[0].clone();
    pool.spec.cdr.enabled = false;
    pool.spec.rtp.port_start = 40000;
    pool.spec.rtp.port_end = 30000;
    let pool = fake.insert(&pool);
    let mut pool = pool;
    pool.metadata.finalizers = Some(vec![DISPATCHER_FINALIZER.into()]);
    fake.update("MediaPool", NAMESPACE, "media", |p| {
        p["metadata"]["finalizers"] = json!([DISPATCHER_FINALIZER]);
    });
    controller::mediapool::reconcile(Arc::new(pool), ctx)
        .await
        .unwrap();
    let stored = json_of(
        &fake
            .get::<MediaPool>("MediaPool", NAMESPACE, "media")
            .unwrap(),
    );
    let degraded = condition(&stored, "Degraded");
    assert_eq!(degraded["reason"], "InvalidSpec");
    assert!(
        degraded["message"].as_str().unwrap().contains("spec.rtp"),
        "{degraded:#}"
    );
    assert!(fake.all("StatefulSet").is_empty());
}

#[tokio::test]
async fn an_immutable_statefulset_change_is_degraded_with_the_way_out() {
    let (fake, ctx, _) = setup();
    fake.insert(&example().pg_clusters[0]);
    let pg = || fake.get::<PgCluster>("PgCluster", NAMESPACE, "pg").unwrap();
    controller::pgcluster::reconcile(Arc::new(pg()), ctx.clone())
        .await
        .unwrap();
    fake.take_calls();
    fake.update("PgCluster", NAMESPACE, "pg", |c| {
        c["spec"]["storage"]["size"] = json!("200Gi");
        c["metadata"]["generation"] = json!(2);
    });
    controller::pgcluster::reconcile(Arc::new(pg()), ctx)
        .await
        .expect("a refused child is reported, not an error");
    let calls = fake.take_calls();
    let stored = json_of(&pg());
    let degraded = condition(&stored, "Degraded");
    assert_eq!(degraded["reason"], "ImmutableField");
    let message = degraded["message"].as_str().unwrap();
    assert!(
        message.contains("StatefulSet/pg") && message.contains("--cascade=orphan"),
        "{message}"
    );
    assert_eq!(events(&calls)[0]["reason"], "ImmutableField");
}

// ----- (4) MediaPool deletion: the finalizer removes the dispatcher set -----

#[tokio::test]
async fn deleting_a_mediapool_removes_its_dispatcher_set_then_the_finalizer() {
    let (fake, ctx, store) = setup();
    insert_cluster_and_pool(&fake);
    fake.insert(&example().sip_edges[0]);
    Api::<MediaPool>::namespaced(ctx.client.clone(), NAMESPACE)
        .delete("media", &DeleteParams::default())
        .await
        .unwrap();
    let pool: MediaPool = fake
        .get("MediaPool", NAMESPACE, "media")
        .expect("kept by the finalizer");
    assert!(pool.metadata.deletion_timestamp.is_some());
    fake.take_calls();

    controller::mediapool::reconcile(Arc::new(pool), ctx)
        .await
        .unwrap();
    assert_eq!(store.removed(), [("pg".to_string(), 1)]);
    assert!(
        fake.get::<MediaPool>("MediaPool", NAMESPACE, "media")
            .is_none(),
        "the pool is gone"
    );
    let writes = writes(&fake.take_calls());
    assert_eq!(
        writes,
        ["PATCH mediapools/media"],
        "only the finalizer is removed"
    );
}

#[tokio::test]
async fn a_failed_cleanup_keeps_the_finalizer_and_says_why() {
    let (fake, ctx, store) = setup();
    insert_cluster_and_pool(&fake);
    *store.fail_with.lock().unwrap() = Some("connection refused".into());
    Api::<MediaPool>::namespaced(ctx.client.clone(), NAMESPACE)
        .delete("media", &DeleteParams::default())
        .await
        .unwrap();
    let pool: MediaPool = fake.get("MediaPool", NAMESPACE, "media").unwrap();
    fake.take_calls();
    let error = controller::mediapool::reconcile(Arc::new(pool), ctx.clone())
        .await
        .unwrap_err();
    assert_eq!(error.category(), "database");
    let pool: MediaPool = fake
        .get("MediaPool", NAMESPACE, "media")
        .expect("still there");
    assert_eq!(pool.finalizers(), [DISPATCHER_FINALIZER]);
    let published = events(&fake.take_calls());
    assert_eq!(published[0]["reason"], "DispatcherCleanupFailed");
    assert!(published[0]["note"]
        .as_str()
        .unwrap()
        .contains("connection refused"));
    // the error policy retries later, later again after each failure
    let first = controller::error::error_policy(Arc::new(pool.clone()), &error, ctx.clone());
    let second = controller::error::error_policy(Arc::new(pool), &error, ctx);
    assert_ne!(first, second);
}

// ----- (5) generated Secrets are never overwritten -----

#[tokio::test]
async fn existing_generated_secrets_are_kept() {
    let (fake, ctx, _) = setup();
    let pg = fake.insert(&example().pg_clusters[0]);
    let built = sipstack_operator::pgcluster::build(&pg, NAMESPACE, &[], &[]).unwrap();
    // one the operator made earlier (labelled, owned), one a person made
    let Some(Object::Secret(mut app)) = built.into_iter().find(|o| o.name() == "pg-app") else {
        panic!("the cluster has an app Secret")
    };
    app.string_data = Some(
        [
            ("username".to_string(), "sipstack".to_string()),
            ("password".to_string(), "keep-me".to_string()),
        ]
        .into(),
    );
    fake.insert(&app);
    let mut own = Secret::default();
    own.metadata.name = Some("pg-superuser".into());
    own.metadata.namespace = Some(NAMESPACE.into());
    own.string_data = Some([("password".to_string(), "mine".to_string())].into());
    fake.insert(&own);

    controller::pgcluster::reconcile(Arc::new(pg), ctx)
        .await
        .unwrap();
    let calls = fake.take_calls();
    let created: Vec<String> = calls
        .iter()
        .filter(|c| c.method == "POST" && c.target == "secrets")
        .map(|c| {
            serde_json::from_str::<Value>(c.body.as_deref().unwrap()).unwrap()["metadata"]["name"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(created, ["pg-replication", "pg-rest-api", "pg-trunk-key"]);
    assert!(
        !calls
            .iter()
            .any(|c| c.target.starts_with("secrets/") && c.is_write()),
        "{calls:#?}"
    );
    let password = |name: &str| {
        let secret: Secret = fake.get("Secret", NAMESPACE, name).unwrap();
        String::from_utf8(secret.data.unwrap()["password"].0.clone()).unwrap()
    };
    assert_eq!(password("pg-app"), "keep-me");
    assert_eq!(password("pg-superuser"), "mine");
    let generated = password("pg-replication");
    assert_eq!(generated.len(), 32);
    assert!(generated.chars().all(|c| c.is_ascii_alphanumeric()));
    // the trunk key is a 256-bit key in base64, as the edges' crypto module takes it
    let trunk_key: Secret = fake.get("Secret", NAMESPACE, "pg-trunk-key").unwrap();
    let key = String::from_utf8(trunk_key.data.unwrap()["key"].0.clone()).unwrap();
    sipstack_db::trunk::TrunkKey::from_base64(&key).unwrap();
}

// ----- orphans -----

#[tokio::test]
async fn children_no_longer_desired_are_deleted() {
    let (fake, ctx, _) = setup();
    let mut pg = example().pg_clusters[0].clone();
    pg.spec.pooler.enabled = true;
    fake.insert(&pg);
    let pg = || fake.get::<PgCluster>("PgCluster", NAMESPACE, "pg").unwrap();
    controller::pgcluster::reconcile(Arc::new(pg()), ctx.clone())
        .await
        .unwrap();
    let with_pooler: Vec<String> = writes(&fake.take_calls());
    assert!(with_pooler.contains(&"PATCH deployments/pg-pooler".to_string()));

    fake.update("PgCluster", NAMESPACE, "pg", |c| {
        c["spec"]["pooler"]["enabled"] = json!(false);
        c["metadata"]["generation"] = json!(2);
    });
    controller::pgcluster::reconcile(Arc::new(pg()), ctx)
        .await
        .unwrap();
    let deleted: Vec<String> = fake
        .take_calls()
        .iter()
        .filter(|c| c.method == "DELETE")
        .map(|c| c.target.clone())
        .collect();
    assert!(
        deleted.contains(&"deployments/pg-pooler".to_string()),
        "{deleted:?}"
    );
    assert!(
        deleted
            .iter()
            .all(|d| d.contains("pooler") || d == "networkpolicies/pg-pgbouncer"),
        "{deleted:?}"
    );
    assert!(fake
        .get::<Value>("NetworkPolicy", NAMESPACE, "pg-pgbouncer")
        .is_none());
    assert!(fake
        .get::<Value>("Deployment", NAMESPACE, "pg-pooler")
        .is_none());
    assert!(fake.get::<Value>("StatefulSet", NAMESPACE, "pg").is_some());
}

// ----- NetworkPolicies follow the clients' network -----

#[tokio::test]
async fn an_edge_moving_to_the_nodes_network_opens_the_port_it_connects_to() {
    let (fake, ctx, _) = setup();
    let (_, pool) = insert_cluster_and_pool(&fake);
    fake.insert(&example().sip_edges[0]);
    let pg = || fake.get::<PgCluster>("PgCluster", NAMESPACE, "pg").unwrap();
    controller::pgcluster::reconcile(Arc::new(pg()), ctx.clone())
        .await
        .unwrap();
    controller::mediapool::reconcile(Arc::new(pool), ctx.clone())
        .await
        .unwrap();
    let sources = |name: &str, rule: usize| {
        let policy: Value = fake.get("NetworkPolicy", NAMESPACE, name).unwrap();
        policy["spec"]["ingress"][rule].get("from").cloned()
    };
    assert!(sources("pg-postgres", 0).is_some_and(|f| f.as_array().unwrap().len() == 4));
    assert!(sources("media-freeswitch", 0).is_some());
    fake.take_calls();

    fake.update("SipEdge", NAMESPACE, "edge", |e| {
        e["spec"]["kubernetes"]["hostNetwork"] = json!(true);
        e["metadata"]["generation"] = json!(2);
    });
    controller::pgcluster::reconcile(Arc::new(pg()), ctx.clone())
        .await
        .unwrap();
    let pool: MediaPool = fake.get("MediaPool", NAMESPACE, "media").unwrap();
    controller::mediapool::reconcile(Arc::new(pool), ctx)
        .await
        .unwrap();
    assert_eq!(
        writes(&fake.take_calls()),
        [
            "PATCH networkpolicies/pg-postgres",
            "PATCH networkpolicies/media-freeswitch"
        ],
        "only the policies change"
    );
    // no PgBouncer: the edge connects to the members, from its node's address
    assert_eq!(sources("pg-postgres", 0), None);
    assert_eq!(sources("media-freeswitch", 0), None);
    // Patroni's REST API stays closed to it
    assert!(sources("pg-postgres", 1).is_some());
}

// ----- leader election -----

#[tokio::test]
async fn only_one_replica_holds_the_lease_and_it_passes_on_release() {
    let fake = FakeApi::new();
    let a = LeaderElector::new(fake.client(), LeaseSettings::new("operators", "replica-a"));
    let b = LeaderElector::new(fake.client(), LeaseSettings::new("operators", "replica-b"));
    assert!(a.try_acquire_or_renew().await.unwrap());
    assert!(!b.try_acquire_or_renew().await.unwrap());
    assert!(a.try_acquire_or_renew().await.unwrap(), "the holder renews");
    a.release().await.unwrap();
    assert!(b.try_acquire_or_renew().await.unwrap());
    assert!(!a.try_acquire_or_renew().await.unwrap());
    let lease: Value = fake.get("Lease", "operators", "sipstack-operator").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "replica-b");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
}

#[tokio::test]
async fn an_expired_lease_is_taken_over() {
    let fake = FakeApi::new();
    let a = LeaderElector::new(fake.client(), LeaseSettings::new("operators", "replica-a"));
    let b = LeaderElector::new(fake.client(), LeaseSettings::new("operators", "replica-b"));
    assert!(a.try_acquire_or_renew().await.unwrap());
    fake.update("Lease", "operators", "sipstack-operator", |l| {
        l["spec"]["renewTime"] = json!("2020-01-01T00:00:00.000000Z");
    });
    assert!(b.try_acquire_or_renew().await.unwrap());
    assert!(!a.try_acquire_or_renew().await.unwrap());
}

// ----- HTTP endpoints -----

#[tokio::test]
async fn metrics_health_and_readiness_are_served() {
    use tower::ServiceExt;
    let metrics = Arc::new(controller::metrics::Metrics::new());
    metrics.reconciled("SipEdge", "applied", std::time::Duration::from_millis(3));
    let health = Arc::new(controller::server::Health::default());
    let get = |path: &str| {
        let router = controller::server::router(metrics.clone(), health.clone());
        let request = http::Request::get(path)
            .body(axum::body::Body::empty())
            .unwrap();
        async move {
            let response = router.oneshot(request).await.unwrap();
            let status = response.status().as_u16();
            let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .unwrap();
            (status, String::from_utf8_lossy(&body).to_string())
        }
    };
    assert_eq!(get("/healthz").await.0, 200);
    assert_eq!(get("/readyz").await.0, 503);
    health.set_ready(true);
    assert_eq!(get("/readyz").await.0, 200);
    let (status, text) = get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        text.contains("sipstack_operator_reconciles_total{kind=\"SipEdge\",outcome=\"applied\"} 1"),
        "{text}"
    );
}

// ----- the platform schema once a member runs -----

#[tokio::test]
async fn the_schema_is_set_up_once_a_member_runs() {
    let (fake, ctx, store) = setup();
    let pg = fake.insert(&example().pg_clusters[0]);
    controller::pgcluster::reconcile(Arc::new(pg), ctx.clone())
        .await
        .unwrap();
    // no member runs yet: nothing to connect to
    assert!(store.schemas().is_empty());

    fake.update("StatefulSet", NAMESPACE, "pg", |sts| {
        sts["status"] = json!({"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1, "observedGeneration": 1});
    });
    let pg = fake.get::<PgCluster>("PgCluster", NAMESPACE, "pg").unwrap();
    controller::pgcluster::reconcile(Arc::new(pg), ctx.clone())
        .await
        .unwrap();
    assert_eq!(store.schemas(), ["pg"]);
    let stored = json_of(&fake.get::<PgCluster>("PgCluster", NAMESPACE, "pg").unwrap());
    assert_eq!(
        stored["status"]["schemaVersion"],
        json!(sipstack_db::latest_version())
    );
    assert_eq!(stored["status"]["readyInstances"], 1);

    // a database that cannot be reached is no crash: the last known version stays
    *store.fail_with.lock().unwrap() = Some("connection refused".into());
    let pg = fake.get::<PgCluster>("PgCluster", NAMESPACE, "pg").unwrap();
    controller::pgcluster::reconcile(Arc::new(pg), ctx)
        .await
        .unwrap();
    let stored = json_of(&fake.get::<PgCluster>("PgCluster", NAMESPACE, "pg").unwrap());
    assert_eq!(
        stored["status"]["schemaVersion"],
        json!(sipstack_db::latest_version())
    );
}

// ----- the dispatcher set follows the pool's EndpointSlices -----

/// An EndpointSlice of the example pool's headless Service, as the EndpointSlice
/// controller makes it: the Service's labels, its SIP ports, one endpoint per
/// `(address, ready, terminating)`.
fn media_slice(name: &str, endpoints: &[(&str, Option<bool>, Option<bool>)]) -> EndpointSlice {
    let service = sipstack_operator::names::media_service("media");
    EndpointSlice {
        address_type: "IPv4".into(),
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NAMESPACE.into()),
            labels: Some(
                [
                    ("kubernetes.io/service-name".to_string(), service),
                    (
                        "app.kubernetes.io/managed-by".to_string(),
                        "sipstack-operator".to_string(),
                    ),
                ]
                .into(),
            ),
            ..Default::default()
        },
        endpoints: Some(
            endpoints
                .iter()
                .map(|(ip, ready, terminating)| Endpoint {
                    addresses: vec![ip.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: *ready,
                        serving: *ready,
                        terminating: *terminating,
                    }),
                    ..Default::default()
                })
                .collect(),
        ),
        ports: Some(
            ["UDP", "TCP"]
                .iter()
                .map(|protocol| EndpointPort {
                    name: Some(format!("sip-{}", protocol.to_lowercase())),
                    port: Some(5080),
                    protocol: Some(protocol.to_string()),
                    app_protocol: None,
                })
                .collect(),
        ),
    }
}

/// The example's PgCluster, its MediaPool without static members (its members are
/// its pods) and the SipEdge that uses it.
fn insert_pool_with_edge(fake: &FakeApi) {
    let p = example();
    fake.insert(&p.pg_clusters[0]);
    let mut pool = p.media_pools[0].clone();
    pool.metadata.finalizers = Some(vec![DISPATCHER_FINALIZER.into()]);
    pool.spec.members.clear();
    fake.insert(&pool);
    fake.insert(&p.sip_edges[0]);
}

async fn reconcile_pool(fake: &FakeApi, ctx: &Arc<controller::context::Context>) {
    let pool: MediaPool = fake.get("MediaPool", NAMESPACE, "media").unwrap();
    controller::mediapool::reconcile(Arc::new(pool), ctx.clone())
        .await
        .unwrap();
}

fn member(uri: &str) -> (String, bool, bool) {
    (uri.to_string(), true, false)
}

#[tokio::test]
async fn every_slice_of_the_pool_adds_its_ready_endpoints_to_the_set() {
    let (fake, ctx, store) = setup();
    insert_pool_with_edge(&fake);
    fake.insert(&media_slice(
        "media-freeswitch-abcde",
        &[
            ("10.1.0.11", Some(true), Some(false)),
            ("10.1.0.12", Some(true), None),
        ],
    ));
    fake.insert(&media_slice(
        "media-freeswitch-fghij",
        &[("10.1.1.13", Some(true), Some(false))],
    ));
    // a slice of another Service is no member
    let mut other = media_slice("voicemail-xyz", &[("10.9.9.9", Some(true), None)]);
    other
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("kubernetes.io/service-name".into(), "voicemail".into());
    fake.insert(&other);

    reconcile_pool(&fake, &ctx).await;
    let synced = store.synced();
    assert_eq!(synced.len(), 1, "{synced:#?}");
    let call = &synced[0];
    assert_eq!(call.cluster, "pg");
    assert_eq!(call.edges, ["http://edge-rpc.voice.svc:5071/RPC"]);
    assert_eq!(call.set.policy.set_id, 1);
    assert_eq!(call.set.policy.description, "media");
    assert_eq!(
        call.members(),
        [
            member("sip:10.1.0.11:5080"),
            member("sip:10.1.0.12:5080"),
            member("sip:10.1.1.13:5080"),
        ]
    );
    assert!(call.set.members.iter().all(|m| m.weight == 1));

    let stored = json_of(
        &fake
            .get::<MediaPool>("MediaPool", NAMESPACE, "media")
            .unwrap(),
    );
    assert_eq!(stored["status"]["activeMembers"], 3);
    assert_eq!(
        stored["status"]["members"],
        json!([
            "sip:10.1.0.11:5080",
            "sip:10.1.0.12:5080",
            "sip:10.1.1.13:5080"
        ])
    );
}

#[tokio::test]
async fn not_ready_and_terminating_endpoints_are_passed_as_such() {
    let (fake, ctx, store) = setup();
    insert_pool_with_edge(&fake);
    fake.insert(&media_slice(
        "media-freeswitch-abcde",
        &[
            ("10.1.0.11", Some(true), Some(false)),
            ("10.1.0.12", Some(false), Some(false)),
            ("10.1.0.13", Some(false), Some(true)),
        ],
    ));
    reconcile_pool(&fake, &ctx).await;
    let synced = store.synced();
    assert_eq!(
        synced[0].members(),
        [
            ("sip:10.1.0.11:5080".to_string(), true, false),
            ("sip:10.1.0.12:5080".to_string(), false, false),
            ("sip:10.1.0.13:5080".to_string(), false, true),
        ]
    );
    let stored = json_of(
        &fake
            .get::<MediaPool>("MediaPool", NAMESPACE, "media")
            .unwrap(),
    );
    assert_eq!(stored["status"]["activeMembers"], 1);
    assert_eq!(stored["status"]["members"], json!(["sip:10.1.0.11:5080"]));
}

#[tokio::test]
async fn a_replaced_pod_address_syncs_the_new_set() {
    let (fake, ctx, store) = setup();
    insert_pool_with_edge(&fake);
    fake.insert(&media_slice(
        "media-freeswitch-abcde",
        &[
            ("10.1.0.11", Some(true), None),
            ("10.1.0.12", Some(true), None),
        ],
    ));
    reconcile_pool(&fake, &ctx).await;
    fake.take_calls();

    // the pod behind 10.1.0.12 was replaced: as many endpoints, another address
    fake.update(
        "EndpointSlice",
        NAMESPACE,
        "media-freeswitch-abcde",
        |slice| {
            slice["endpoints"][1]["addresses"] = json!(["10.1.0.42"]);
        },
    );
    reconcile_pool(&fake, &ctx).await;
    let synced = store.synced();
    assert_eq!(synced.len(), 2);
    assert_eq!(
        synced[1].members(),
        [member("sip:10.1.0.11:5080"), member("sip:10.1.0.42:5080")]
    );
    assert_eq!(
        writes(&fake.take_calls()),
        ["PATCH mediapools/media/status"],
        "only the members in the status change"
    );
    let stored = json_of(
        &fake
            .get::<MediaPool>("MediaPool", NAMESPACE, "media")
            .unwrap(),
    );
    assert_eq!(
        stored["status"]["members"],
        json!(["sip:10.1.0.11:5080", "sip:10.1.0.42:5080"])
    );
    assert_eq!(stored["status"]["activeMembers"], 2);
}

#[tokio::test]
async fn a_pool_no_edge_uses_is_synced_nowhere() {
    let (fake, ctx, store) = setup();
    let (_, _) = insert_cluster_and_pool(&fake);
    let mut edge = example().sip_edges[0].clone();
    edge.spec.media_pools = vec!["other".into()];
    fake.insert(&edge);
    fake.insert(&media_slice(
        "media-freeswitch-abcde",
        &[("10.1.0.11", Some(true), None)],
    ));
    reconcile_pool(&fake, &ctx).await;
    assert!(store.synced().is_empty(), "{:#?}", store.synced());
    let stored = json_of(
        &fake
            .get::<MediaPool>("MediaPool", NAMESPACE, "media")
            .unwrap(),
    );
    assert_eq!(stored["status"]["activeMembers"], 0);
    assert!(stored["status"].get("members").is_none(), "{stored:#}");
}

#[tokio::test]
async fn every_database_of_the_pools_edges_gets_the_set_and_all_its_edges_reload() {
    let (fake, ctx, store) = setup();
    insert_pool_with_edge(&fake);
    let p = example();
    let mut second = p.pg_clusters[0].clone();
    second.metadata.name = Some("pg-east".into());
    fake.insert(&second);
    // an edge on pg-east using the pool, and one on pg that does not: it loads the
    // same table, so it reloads too
    let mut east = p.sip_edges[0].clone();
    east.metadata.name = Some("edge-east".into());
    east.spec.database.pg_cluster = "pg-east".into();
    fake.insert(&east);
    let mut bystander = p.sip_edges[0].clone();
    bystander.metadata.name = Some("edge-b".into());
    bystander.spec.media_pools.clear();
    fake.insert(&bystander);
    fake.insert(&media_slice(
        "media-freeswitch-abcde",
        &[("10.1.0.11", Some(true), None)],
    ));
    reconcile_pool(&fake, &ctx).await;
    let synced: Vec<(String, Vec<String>)> = store
        .synced()
        .into_iter()
        .map(|s| (s.cluster, s.edges))
        .collect();
    assert_eq!(
        synced,
        [
            (
                "pg".to_string(),
                vec![
                    "http://edge-rpc.voice.svc:5071/RPC".to_string(),
                    "http://edge-b-rpc.voice.svc:5071/RPC".to_string()
                ]
            ),
            (
                "pg-east".to_string(),
                vec!["http://edge-east-rpc.voice.svc:5071/RPC".to_string()]
            ),
        ]
    );
}

#[tokio::test]
async fn a_second_reconcile_with_unchanged_slices_writes_nothing_to_kubernetes() {
    let (fake, ctx, store) = setup();
    insert_pool_with_edge(&fake);
    fake.insert(&media_slice(
        "media-freeswitch-abcde",
        &[
            ("10.1.0.11", Some(true), None),
            ("10.1.0.12", Some(false), None),
        ],
    ));
    reconcile_pool(&fake, &ctx).await;
    let first = writes(&fake.take_calls());
    assert!(first.contains(&"PATCH mediapools/media/status".to_string()));
    let writes_before = ctx.metrics.total_writes();

    reconcile_pool(&fake, &ctx).await;
    let calls = fake.take_calls();
    let not_reads: Vec<String> = calls
        .iter()
        .filter(|c| c.method != "GET")
        .map(|c| c.short())
        .collect();
    assert!(
        not_reads.is_empty(),
        "the second reconcile wrote: {not_reads:#?}"
    );
    assert!(calls
        .iter()
        .any(|c| c.method == "GET" && c.target == "endpointslices"));
    // the set is synced again all the same: that repairs rows changed behind its back
    let synced = store.synced();
    assert_eq!(synced.len(), 2);
    assert_eq!(synced[0].set, synced[1].set);
    assert_eq!(ctx.metrics.total_writes(), writes_before);
}

#[tokio::test]
async fn a_database_that_fails_the_sync_is_retried_and_the_members_stay_unknown() {
    let (fake, ctx, store) = setup();
    insert_pool_with_edge(&fake);
    fake.insert(&media_slice(
        "media-freeswitch-abcde",
        &[("10.1.0.11", Some(true), None)],
    ));
    *store.fail_with.lock().unwrap() = Some("connection refused".into());
    let pool: MediaPool = fake.get("MediaPool", NAMESPACE, "media").unwrap();
    let error = controller::mediapool::reconcile(Arc::new(pool), ctx.clone())
        .await
        .unwrap_err();
    assert_eq!(error.category(), "database");
    assert!(error.to_string().contains("connection refused"), "{error}");
    let stored = json_of(
        &fake
            .get::<MediaPool>("MediaPool", NAMESPACE, "media")
            .unwrap(),
    );
    // the rest of the status is current
    assert_eq!(stored["status"]["readyReplicas"], 0);
    assert!(
        stored["status"].get("activeMembers").is_none(),
        "{stored:#}"
    );

    *store.fail_with.lock().unwrap() = None;
    reconcile_pool(&fake, &ctx).await;
    let stored = json_of(
        &fake
            .get::<MediaPool>("MediaPool", NAMESPACE, "media")
            .unwrap(),
    );
    assert_eq!(stored["status"]["activeMembers"], 1);
}

#[tokio::test]
async fn every_ready_edge_pod_is_told_not_just_the_rpc_service() {
    let (fake, ctx, store) = setup();
    insert_pool_with_edge(&fake);
    fake.insert(&media_slice(
        "media-freeswitch-abcde",
        &[("10.1.0.11", Some(true), None)],
    ));
    // the edge's RPC Service has two ready pods and one that is not ready
    let mut rpc = media_slice(
        "edge-rpc-xyz",
        &[
            ("10.2.0.21", Some(true), None),
            ("10.2.0.22", Some(true), None),
            ("10.2.0.23", Some(false), None),
        ],
    );
    rpc.metadata.labels.as_mut().unwrap().insert(
        "kubernetes.io/service-name".into(),
        sipstack_operator::names::edge_rpc_service("edge"),
    );
    fake.insert(&rpc);
    reconcile_pool(&fake, &ctx).await;
    let synced = store.synced();
    assert_eq!(synced.len(), 1, "{synced:#?}");
    assert_eq!(
        synced[0].edges,
        ["http://10.2.0.21:5071/RPC", "http://10.2.0.22:5071/RPC"]
    );
    // the pool's members are still only the FreeSWITCH pods
    assert_eq!(synced[0].members().len(), 1, "{synced:#?}");
}
