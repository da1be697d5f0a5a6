//! What the controllers' tests share: the fake API server, a dispatcher store that
//! records its calls, and the example platform placed in a namespace.

#![allow(dead_code)]

pub mod fake_api;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use kube::ResourceExt;
use sipstack_crds::{PgCluster, Platform};
use sipstack_operator::controller::context::{Context, Timing};
use sipstack_operator::controller::database::{PlatformDatabase, PlatformDatabaseError};
use sipstack_operator::controller::metrics::Metrics;

pub use fake_api::{Call, FakeApi};

pub const NAMESPACE: &str = "voice";

/// A dispatcher store that records `(PgCluster, set id)` of each removal.
#[derive(Default)]
pub struct RecordingStore {
    pub removed: Mutex<Vec<(String, i32)>>,
    /// PgClusters whose schema was set up, in call order.
    pub schemas: Mutex<Vec<String>>,
    /// Fail every call with this message.
    pub fail_with: Mutex<Option<String>>,
}

impl RecordingStore {
    pub fn removed(&self) -> Vec<(String, i32)> {
        self.removed.lock().unwrap().clone()
    }

    pub fn schemas(&self) -> Vec<String> {
        self.schemas.lock().unwrap().clone()
    }
}

#[async_trait]
impl PlatformDatabase for RecordingStore {
    async fn remove_dispatcher_set(
        &self,
        cluster: &PgCluster,
        set_id: i32,
    ) -> Result<(), PlatformDatabaseError> {
        if let Some(message) = self.fail_with.lock().unwrap().clone() {
            return Err(PlatformDatabaseError::Other(message));
        }
        self.removed
            .lock()
            .unwrap()
            .push((cluster.name_any(), set_id));
        Ok(())
    }

    async fn ensure_schema(&self, cluster: &PgCluster) -> Result<i32, PlatformDatabaseError> {
        if let Some(message) = self.fail_with.lock().unwrap().clone() {
            return Err(PlatformDatabaseError::Other(message));
        }
        self.schemas.lock().unwrap().push(cluster.name_any());
        Ok(sipstack_db::latest_version())
    }
}

/// A fake API server and a controller context that talks to it.
pub fn setup() -> (FakeApi, Arc<Context>, Arc<RecordingStore>) {
    let fake = FakeApi::new();
    let store = Arc::new(RecordingStore::default());
    let ctx = Arc::new(Context::new(
        fake.client(),
        Some("sipstack-operator-test".into()),
        Arc::new(Metrics::new()),
        store.clone(),
        Timing::default(),
    ));
    (fake, ctx, store)
}

/// examples/platform.yaml with every resource in [`NAMESPACE`]: PgCluster `pg`,
/// MediaPool `media` (set 1, CDRs in `pg`), SipEdge `edge`.
pub fn example() -> Platform {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/platform.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut platform = Platform::from_yaml(&text).expect("the example platform loads");
    for c in &mut platform.pg_clusters {
        c.metadata.namespace = Some(NAMESPACE.into());
    }
    for p in &mut platform.media_pools {
        p.metadata.namespace = Some(NAMESPACE.into());
    }
    for e in &mut platform.sip_edges {
        e.metadata.namespace = Some(NAMESPACE.into());
    }
    platform
}

/// The writes among `calls`, as `METHOD target`, leaving out Events.
pub fn writes(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter(|c| c.is_write() && !c.target.starts_with("events"))
        .map(Call::short)
        .collect()
}

/// The Events created among `calls`.
pub fn events(calls: &[Call]) -> Vec<serde_json::Value> {
    calls
        .iter()
        .filter(|c| c.target.starts_with("events"))
        .filter_map(|c| serde_json::from_str(c.body.as_deref()?).ok())
        .collect()
}
