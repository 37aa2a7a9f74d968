//! Prometheus metrics of `kmm-hub`.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

/// The hub's metrics and their registry.
pub struct Metrics {
    registry: Mutex<Registry>,
    reconcile_seconds: Histogram,
    reconcile_errors: Counter,
    images: Family<StateLabel, Gauge>,
    builds: Family<OutcomeLabel, Counter>,
    signs: Family<OutcomeLabel, Counter>,
    registry_seconds: Family<OutcomeLabel, Histogram>,
    /// ManagedClusterModules known to the hub.
    pub mcms: Gauge,
    /// Clusters selected, summed over MCMs.
    pub clusters_targeted: Gauge,
    /// Writes to the API server (applies, patches, creates, deletes).
    pub api_writes: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let m = Self {
            registry: Mutex::new(Registry::with_prefix("kmm_hub")),
            reconcile_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            reconcile_errors: Counter::default(),
            images: Family::default(),
            builds: Family::default(),
            signs: Family::default(),
            registry_seconds: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.005, 2.0, 12))),
            mcms: Gauge::default(),
            clusters_targeted: Gauge::default(),
            api_writes: Counter::default(),
        };
        {
            let mut r = m.registry.lock().expect("metrics registry");
            r.register(
                "reconcile_duration_seconds",
                "Time per MCM reconcile",
                m.reconcile_seconds.clone(),
            );
            r.register(
                "reconcile_errors",
                "MCM reconciles that failed",
                m.reconcile_errors.clone(),
            );
            r.register("images", "Distinct kmod images by state", m.images.clone());
            r.register("builds", "Build pods by outcome", m.builds.clone());
            r.register("signs", "Image signings by outcome", m.signs.clone());
            r.register(
                "registry_request_duration_seconds",
                "Registry manifest lookups by outcome",
                m.registry_seconds.clone(),
            );
            r.register("managedclustermodules", "ManagedClusterModules", m.mcms.clone());
            r.register(
                "clusters_targeted",
                "Selected clusters summed over ManagedClusterModules",
                m.clusters_targeted.clone(),
            );
            r.register(
                "api_writes",
                "Applies, patches, creates and deletes sent to the API server",
                m.api_writes.clone(),
            );
        }
        m
    }

    /// Records one reconcile.
    pub fn observe_reconcile(&self, took: Duration, failed: bool) {
        self.reconcile_seconds.observe(took.as_secs_f64());
        if failed {
            self.reconcile_errors.inc();
        }
    }

    /// Sets the number of images in `state`.
    pub fn set_images(&self, state: &str, n: i64) {
        self.images.get_or_create(&StateLabel { state: state.into() }).set(n);
    }

    /// Counts a finished build.
    pub fn build(&self, outcome: &str) {
        self.builds
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Counts a finished signing.
    pub fn sign(&self, outcome: &str) {
        self.signs
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Records one registry lookup.
    pub fn registry_lookup(&self, outcome: &str, took: Duration) {
        self.registry_seconds
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            })
            .observe(took.as_secs_f64());
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().expect("metrics registry");
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("writing to a String");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_what_was_recorded() {
        let m = Metrics::new();
        m.set_images("Ready", 3);
        m.build("succeeded");
        m.sign("failed");
        m.registry_lookup("found", Duration::from_millis(12));
        m.observe_reconcile(Duration::from_millis(3), true);
        let text = m.encode();
        for line in [
            "kmm_hub_images{state=\"Ready\"} 3",
            "kmm_hub_builds_total{outcome=\"succeeded\"} 1",
            "kmm_hub_signs_total{outcome=\"failed\"} 1",
            "kmm_hub_reconcile_errors_total 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(text.contains("kmm_hub_registry_request_duration_seconds_count{outcome=\"found\"} 1"));
    }
}
