//! Why a reconcile failed, and what the controllers do about it: retry the object
//! later, each object on its own exponential backoff, so that one broken object
//! neither stops the others nor floods the API server.
//!
//! A spec that cannot work is not a failure here: the reconcile reports it in the
//! object's `Degraded` condition and returns normally (see `report`). What lands here
//! is what may go away by itself: the API server or the database unreachable, a
//! conflict, a missing permission.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use crate::controller::context::Context;
use crate::controller::database::PlatformDatabaseError;
use crate::secrets::RandomError;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// A call to the API server failed.
    #[error("{action}: {source}")]
    Kube {
        /// What was being done, naming the object (`apply ConfigMap/edge-kamailio-config`).
        action: String,
        #[source]
        source: Box<kube::Error>,
    },
    /// The API server refused a child object as invalid (an immutable field changed).
    /// Reported as `Degraded` by the reconcile; an error only if it escapes it.
    #[error("the API server refused {object}: {message}")]
    Rejected { object: String, message: String },
    /// The resource has no namespace (the kinds are namespaced; only a malformed
    /// event gets here).
    #[error("{object} has no namespace")]
    NoNamespace { object: String },
    #[error(transparent)]
    Random(#[from] RandomError),
    #[error("cannot serialize {object}: {source}")]
    Serialize {
        object: String,
        #[source]
        source: serde_json::Error,
    },
    /// The platform database could not be reached or refused a change: a MediaPool's
    /// dispatcher set was not synced (retried), or the rows of a deleted one were not
    /// removed (the finalizer stays until they are).
    #[error(transparent)]
    Dispatcher(#[from] PlatformDatabaseError),
    /// Adding or removing the finalizer failed.
    #[error("finalizer {finalizer}: {message}")]
    Finalizer {
        finalizer: &'static str,
        message: String,
        category: &'static str,
    },
}

impl ReconcileError {
    /// Wraps an API error with what was being done.
    pub fn kube(action: impl Into<String>, source: kube::Error) -> Self {
        ReconcileError::Kube {
            action: action.into(),
            source: Box::new(source),
        }
    }

    /// The metrics' label of the error: where to look.
    pub fn category(&self) -> &'static str {
        match self {
            ReconcileError::Kube { .. } => "kubernetes",
            ReconcileError::Rejected { .. } | ReconcileError::NoNamespace { .. } => "spec",
            ReconcileError::Random(_) => "secret",
            ReconcileError::Serialize { .. } => "serialize",
            ReconcileError::Dispatcher(_) => "database",
            ReconcileError::Finalizer { category, .. } => category,
        }
    }
}

/// The namespace of a namespaced resource.
pub fn namespace_of<K: Resource<DynamicType = ()>>(obj: &K) -> Result<String, ReconcileError> {
    obj.namespace().ok_or_else(|| ReconcileError::NoNamespace {
        object: format!("{}/{}", K::kind(&()), obj.name_any()),
    })
}

/// Delays of retries after failures, per object: `base`, 2 × `base`, 4 × `base`, …
/// up to `max`; a successful reconcile starts the object over at `base`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: Arc<Mutex<HashMap<String, u32>>>,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            failures: Arc::default(),
        }
    }

    /// The delay before the next try of `key`, counting this failure.
    pub fn next_delay(&self, key: &str) -> Duration {
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let n = failures.entry(key.to_string()).or_insert(0);
        let delay = self
            .base
            .saturating_mul(2u32.saturating_pow((*n).min(20)))
            .min(self.max);
        *n = n.saturating_add(1);
        delay
    }

    /// Forgets the failures of `key` after it reconciled.
    pub fn reset(&self, key: &str) {
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        failures.remove(key);
    }
}

/// The key of an object in the backoff table and in logs: `Kind/namespace/name`.
pub fn object_key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        obj.namespace().unwrap_or_default(),
        obj.name_any()
    )
}

/// The controllers' error policy: count the failure, log it, retry the object after
/// its backoff delay.
pub fn error_policy<K: Resource<DynamicType = ()>>(
    obj: Arc<K>,
    error: &ReconcileError,
    ctx: Arc<Context>,
) -> Action {
    let key = object_key(obj.as_ref());
    let delay = ctx.backoff.next_delay(&key);
    ctx.metrics.failed(&K::kind(&()), error.category());
    tracing::warn!(
        object = %key,
        category = error.category(),
        retry_in_seconds = delay.as_secs(),
        "reconcile failed: {error}"
    );
    Action::requeue(delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_limit_per_object_and_resets() {
        let b = Backoff::new(Duration::from_secs(5), Duration::from_secs(60));
        let delays: Vec<u64> = (0..6).map(|_| b.next_delay("a").as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 60, 60]);
        assert_eq!(b.next_delay("b").as_secs(), 5);
        b.reset("a");
        assert_eq!(b.next_delay("a").as_secs(), 5);
    }
}
