//! What the controllers' tests share: the fake API server, a dispatcher store that
//! records its calls (removals, schema steps and set syncs), and the example platform
//! placed in a namespace.

#![allow(dead_code)]

pub mod fake_api;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use kube::ResourceExt;
use sipstack_crds::{PgCluster, Platform};
use sipstack_operator::controller::context::{Context, Timing};
use sipstack_operator::controller::database::{PlatformDatabase, PlatformDatabaseError};
use sipstack_operator::controller::dispatcher::{DispatcherSet, DispatcherSync, SetSynced};
use sipstack_operator::controller::metrics::Metrics;

pub use fake_api::{Call, FakeApi};

pub const NAMESPACE: &str = "voice";

/// One call of [`DispatcherSync::sync_set`].
#[derive(Debug, Clone)]
pub struct Synced {
    pub cluster: String,
    pub edges: Vec<String>,
    pub set: DispatcherSet,
}

impl Synced {
    /// `(uri, ready, terminating)` of each member, in order.
    pub fn members(&self) -> Vec<(String, bool, bool)> {
        self.set
            .members
            .iter()
            .map(|m| (m.uri.clone(), m.ready, m.terminating))
            .collect()
    }
}

/// A dispatcher store that records `(PgCluster, set id)` of each removal and every
/// set it is asked to sync. Like the engine, it writes no row for a member that
/// cannot take calls, and reports changes only when the members differ from the
/// last sync of the set in that database.
#[derive(Default)]
pub struct RecordingStore {
    pub removed: Mutex<Vec<(String, i32)>>,
    pub synced: Mutex<Vec<Synced>>,
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

    pub fn synced(&self) -> Vec<Synced> {
        self.synced.lock().unwrap().clone()
    }

    pub fn take_synced(&self) -> Vec<Synced> {
        std::mem::take(&mut *self.synced.lock().unwrap())
    }
}

#[async_trait]
impl DispatcherSync for RecordingStore {
    async fn sync_set(
        &self,
        cluster: &PgCluster,
        edges: &[sipstack_operator::controller::dispatcher::EdgeEndpoint],
        set: &DispatcherSet,
    ) -> Result<SetSynced, PlatformDatabaseError> {
        if let Some(message) = self.fail_with.lock().unwrap().clone() {
            return Err(PlatformDatabaseError::Other(message));
        }
        let mut synced = self.synced.lock().unwrap();
        let before = synced
            .iter()
            .rev()
            .find(|s| s.cluster == cluster.name_any() && s.set.policy.set_id == set.policy.set_id)
            .map(|s| s.set.members.clone());
        let changes = if before.as_ref() == Some(&set.members) {
            0
        } else {
            set.members.len()
        };
        synced.push(Synced {
            cluster: cluster.name_any(),
            edges: edges.iter().map(|e| e.url.clone()).collect(),
            set: set.clone(),
        });
        Ok(SetSynced {
            changes,
            skipped: set
                .members
                .iter()
                .filter(|m| !m.takes_calls())
                .map(|m| m.uri.clone())
                .collect(),
        })
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
