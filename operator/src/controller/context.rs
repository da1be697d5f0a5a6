//! What every reconcile shares: the API client, the event recorder, the metrics, the
//! platform database, the dispatcher sync, the per-object backoff and the requeue timing.

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::events::{Recorder, Reporter};
use kube::Client;

use crate::controller::database::PlatformDatabase;
use crate::controller::dispatcher::DispatcherSync;
use crate::controller::error::Backoff;
use crate::controller::metrics::Metrics;
use crate::meta::FIELD_MANAGER;

/// When objects are looked at again without a change to them or their children.
#[derive(Debug, Clone)]
pub struct Timing {
    /// Everything applied and ready: a slow resync that repairs what no watch saw.
    pub ready: Duration,
    /// Applied, pods not all ready yet: the workloads' watches usually come first.
    pub pending: Duration,
    /// The spec cannot work: the fix usually comes as a watched change, this is the fallback.
    pub degraded: Duration,
    /// First delay after a failed reconcile; it doubles per failure up to `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            ready: Duration::from_secs(300),
            pending: Duration::from_secs(60),
            degraded: Duration::from_secs(120),
            backoff_base: Duration::from_secs(5),
            backoff_max: Duration::from_secs(300),
        }
    }
}

/// The shared state of the controllers.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub database: Arc<dyn PlatformDatabase>,
    /// Keeps the MediaPools' dispatcher sets in step with their pods; it holds the
    /// per-database engines, so it lives as long as the controllers.
    pub dispatcher: Arc<dyn DispatcherSync>,
    pub backoff: Backoff,
    pub timing: Timing,
}

impl Context {
    /// `instance` names this process in the Events it publishes (the pod's name).
    pub fn new(
        client: Client,
        instance: Option<String>,
        metrics: Arc<Metrics>,
        database: Arc<dyn PlatformDatabase>,
        dispatcher: Arc<dyn DispatcherSync>,
        timing: Timing,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            database,
            dispatcher,
            backoff: Backoff::new(timing.backoff_base, timing.backoff_max),
            timing,
        }
    }
}
