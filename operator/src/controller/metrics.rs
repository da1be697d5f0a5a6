//! The operator's Prometheus metrics, served at `/metrics`: how many reconciles ran
//! and how long they took per kind, why they failed (by category, so an alert can tell a
//! broken spec from an unreachable API server), and how many writes they made (an
//! operator that writes on every reconcile shows up here first).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    kind: String,
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    kind: String,
    category: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WriteLabels {
    kind: String,
    verb: String,
}

type HistogramFamily = Family<KindLabels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    // 5 ms … about 20 s
    Histogram::new(exponential_buckets(0.005, 2.0, 13))
}

/// The metrics of one operator process.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<OutcomeLabels, Counter>,
    failures: Family<ErrorLabels, Counter>,
    durations: HistogramFamily,
    writes: Family<WriteLabels, Counter>,
    leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sipstack_operator");
        let reconciles = Family::<OutcomeLabels, Counter>::default();
        let failures = Family::<ErrorLabels, Counter>::default();
        let durations: HistogramFamily = Family::new_with_constructor(duration_histogram);
        let writes = Family::<WriteLabels, Counter>::default();
        let leader = Gauge::default();
        registry.register(
            "reconciles",
            "Reconciles by kind and outcome (applied, degraded, deleted, failed)",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconciles by kind and error category (kubernetes, database, secret, serialize)",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took, by kind",
            durations.clone(),
        );
        registry.register(
            "writes",
            "Writes to the API server by object kind and verb (apply, create, delete, status, event)",
            writes.clone(),
        );
        registry.register(
            "leader",
            "1 while this process holds the leader Lease and runs the controllers",
            leader.clone(),
        );
        Self {
            registry,
            reconciles,
            failures,
            durations,
            writes,
            leader,
        }
    }

    /// Counts a reconcile of `kind` that ended with `outcome` after `took`.
    pub fn reconciled(&self, kind: &str, outcome: &str, took: Duration) {
        self.reconciles
            .get_or_create(&OutcomeLabels {
                kind: kind.into(),
                outcome: outcome.into(),
            })
            .inc();
        self.durations
            .get_or_create(&KindLabels { kind: kind.into() })
            .observe(took.as_secs_f64());
    }

    /// Counts a failed reconcile of `kind`.
    pub fn failed(&self, kind: &str, category: &str) {
        self.failures
            .get_or_create(&ErrorLabels {
                kind: kind.into(),
                category: category.into(),
            })
            .inc();
    }

    /// Counts one write to an object of `kind`.
    pub fn wrote(&self, kind: &str, verb: &str) {
        self.writes
            .get_or_create(&WriteLabels {
                kind: kind.into(),
                verb: verb.into(),
            })
            .inc();
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Writes made so far, all kinds and verbs together (the tests' and the benchmark's
    /// measure of idempotence).
    pub fn total_writes(&self) -> u64 {
        let text = self.encode();
        text.lines()
            .filter(|l| l.starts_with("sipstack_operator_writes_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // writing into a String cannot fail
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_show_in_the_text() {
        let m = Metrics::new();
        m.reconciled("SipEdge", "applied", Duration::from_millis(12));
        m.failed("MediaPool", "kubernetes");
        m.wrote("ConfigMap", "apply");
        m.wrote("ConfigMap", "apply");
        m.set_leader(true);
        let text = m.encode();
        assert!(
            text.contains(
                "sipstack_operator_reconciles_total{kind=\"SipEdge\",outcome=\"applied\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains(
            "sipstack_operator_reconcile_errors_total{kind=\"MediaPool\",category=\"kubernetes\"} 1"
        ));
        assert!(text.contains("sipstack_operator_leader 1"));
        assert_eq!(m.total_writes(), 2);
    }
}
