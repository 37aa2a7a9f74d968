//! Prometheus metrics of `kmm-spoke`.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use shared_api::module::DaemonSetStatus;

use crate::plan::ModuleKey;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabel {
    controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModuleLabel {
    namespace: String,
    name: String,
}

/// What one write to the API server was, for `kmm_spoke_api_writes_total{write=...}`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)] // the label values as they read in the exposition
pub enum Wrote {
    /// A NodeModulesConfig's spec (entries added, changed or withdrawn).
    nmc_spec,
    /// A NodeModulesConfig's status.
    nmc_status,
    /// A worker pod created.
    pod_create,
    /// A worker pod deleted.
    pod_delete,
    /// A worker pod patched (reported, upstream's finalizer removed).
    pod_patch,
    /// A node's labels.
    node_labels,
    /// A Module's status.
    module_status,
    /// A Module's finalizer.
    module_finalizer,
    /// A device plugin DaemonSet applied or deleted.
    daemonset,
    /// A namespace label.
    namespace,
    /// An event created or its series counted up.
    event,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WriteLabel {
    write: Wrote,
}

/// The spoke's metrics and their registry.
pub struct Metrics {
    registry: Mutex<Registry>,
    reconcile_seconds: Family<ControllerLabel, Histogram>,
    reconcile_errors: Family<ControllerLabel, Counter>,
    loaded_nodes: Family<ModuleLabel, Gauge>,
    desired_nodes: Family<ModuleLabel, Gauge>,
    /// Modules known to the spoke.
    pub modules: Gauge,
    /// Worker pods that failed.
    pub worker_failures: Counter,
    api_writes: Family<WriteLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let reconcile_seconds = Family::<ControllerLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 14))
        });
        let reconcile_errors = Family::<ControllerLabel, Counter>::default();
        let loaded_nodes = Family::<ModuleLabel, Gauge>::default();
        let desired_nodes = Family::<ModuleLabel, Gauge>::default();
        let modules = Gauge::default();
        let worker_failures = Counter::default();
        let api_writes = Family::<WriteLabel, Counter>::default();
        let mut r = Registry::with_prefix("kmm_spoke");
        r.register(
            "reconcile_duration_seconds",
            "Time per reconcile",
            reconcile_seconds.clone(),
        );
        r.register("reconcile_errors", "Reconciles that failed", reconcile_errors.clone());
        r.register(
            "module_loaded_nodes",
            "Nodes where the module is loaded",
            loaded_nodes.clone(),
        );
        r.register(
            "module_desired_nodes",
            "Nodes that should have the module",
            desired_nodes.clone(),
        );
        r.register("modules", "Modules on the cluster", modules.clone());
        r.register(
            "worker_pod_failures",
            "Worker pods that failed",
            worker_failures.clone(),
        );
        r.register(
            "api_writes",
            "Creates, patches and deletes sent to the API server, events included, by what they wrote",
            api_writes.clone(),
        );
        Self {
            registry: Mutex::new(r),
            reconcile_seconds,
            reconcile_errors,
            loaded_nodes,
            desired_nodes,
            modules,
            worker_failures,
            api_writes,
        }
    }

    /// Counts one write to the API server.
    pub fn wrote(&self, write: Wrote) {
        self.api_writes.get_or_create(&WriteLabel { write }).inc();
    }

    /// Records one reconcile.
    pub fn observe_reconcile(&self, controller: &str, took: Duration, failed: bool) {
        let l = ControllerLabel {
            controller: controller.into(),
        };
        self.reconcile_seconds.get_or_create(&l).observe(took.as_secs_f64());
        if failed {
            self.reconcile_errors.get_or_create(&l).inc();
        }
    }

    /// Records a Module's loaded and desired node counts.
    pub fn set_module(&self, key: &ModuleKey, s: &DaemonSetStatus) {
        let l = ModuleLabel {
            namespace: key.namespace.clone(),
            name: key.name.clone(),
        };
        self.loaded_nodes.get_or_create(&l).set(s.available_number.into());
        self.desired_nodes.get_or_create(&l).set(s.desired_number.into());
    }

    /// Forgets a deleted Module's series.
    pub fn remove_module(&self, key: &ModuleKey) {
        let l = ModuleLabel {
            namespace: key.namespace.clone(),
            name: key.name.clone(),
        };
        self.loaded_nodes.remove(&l);
        self.desired_nodes.remove(&l);
    }

    /// The OpenMetrics text exposition.
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
    fn exposition_names_the_series() {
        let m = Metrics::new();
        m.observe_reconcile("node", Duration::from_millis(3), true);
        m.set_module(
            &ModuleKey::new("ns", "m"),
            &DaemonSetStatus {
                nodes_matching_selector_number: 3,
                desired_number: 2,
                available_number: 1,
            },
        );
        m.worker_failures.inc();
        m.wrote(Wrote::pod_create);
        let text = m.encode();
        for needle in [
            "kmm_spoke_reconcile_duration_seconds_count{controller=\"node\"} 1",
            "kmm_spoke_reconcile_errors_total{controller=\"node\"} 1",
            "kmm_spoke_module_loaded_nodes{namespace=\"ns\",name=\"m\"} 1",
            "kmm_spoke_module_desired_nodes{namespace=\"ns\",name=\"m\"} 2",
            "kmm_spoke_worker_pod_failures_total 1",
            "kmm_spoke_api_writes_total{write=\"pod_create\"} 1",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
        m.remove_module(&ModuleKey::new("ns", "m"));
        assert!(!m.encode().contains("name=\"m\""));
    }
}
