//! The controllers of `kmm-spoke`: thin shells that read shared caches, call the planning core
//! in [`crate::plan`] and apply the result with server-side apply and small patches.

pub mod claim;
pub mod module;
pub mod namespace;
pub mod nmc_spec;
pub mod node;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use kmm_runtime::events::Recorder;
use kube::Client;
use kube::runtime::reflector::Store;
use shared_api::module::Module;
use shared_api::nmc::NodeModulesConfig;

use crate::metrics::Metrics;
use crate::plan::module_plan::SpokeContext;
use crate::plan::worker_pod::WorkerSettings;

/// Field manager of the node controller (labels, NodeModulesConfig status, pods).
pub const NODE_MANAGER: &str = "kmm-spoke-node";
/// Finalizer that keeps a Module until it is unloaded everywhere.
pub const FINALIZER: &str = "kmm.node.kubernetes.io/module-finalizer";
/// Periodic resync, so nothing depends on a single missed event.
pub const RESYNC: Duration = Duration::from_secs(600);

/// What the controllers share.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Whether this replica may act (its leader term has not ended).
    pub leadership: kmm_runtime::leader::Leadership,
    /// Installation facts for planning.
    pub spoke: SpokeContext,
    /// Worker pod settings.
    pub worker: WorkerSettings,
    /// ServiceAccount for device plugin pods of Modules in the operator's namespace.
    pub device_plugin_service_account: Option<String>,
    /// All nodes.
    pub nodes: Store<Node>,
    /// All NodeModulesConfigs.
    pub nmcs: Store<NodeModulesConfig>,
    /// All Modules.
    pub modules: Store<Module>,
    /// Namespaces labelled as holding Modules by this process.
    pub labelled_namespaces: namespace::Labelled,
    /// Worker pods (those with the label `kmm.node.kubernetes.io/worker-action`).
    pub worker_pods: Store<Pod>,
    /// Device plugin pods (label `app.kubernetes.io/name=kmm-device-plugin`).
    pub plugin_pods: Store<Pod>,
    /// Device plugin DaemonSets (same label).
    pub plugin_daemonsets: Store<DaemonSet>,
    /// Event recorder.
    pub recorder: Recorder,
    /// The writer of NodeModulesConfig specs.
    pub nmc_specs: nmc_spec::SpecWriter,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

impl Context {
    /// Publishes an event about `regarding` (or counts up its series), counted as a write.
    pub async fn publish(
        &self,
        ev: &kmm_runtime::events::Event,
        regarding: &k8s_openapi::api::core::v1::ObjectReference,
    ) {
        match self.recorder.publish(ev, regarding).await {
            Ok(()) => self.metrics.wrote(crate::metrics::Wrote::event),
            Err(e) => tracing::warn!(error = %e, object = ?regarding.name, reason = %ev.reason, "publishing event"),
        }
    }
}

/// Errors of a reconcile; they are logged, counted and retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("{what}: {source}")]
    Kube {
        /// What was being done.
        what: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// An object lacks a field the API server always sets.
    #[error("{0} has no {1}")]
    Missing(String, &'static str),
}

impl Error {
    /// The error in one line for a status or an event: an API server's refusal by its message
    /// alone (the full answer stays in the log).
    pub fn brief(&self) -> String {
        match self {
            Self::Kube {
                what,
                source: kube::Error::Api(s),
            } => format!("{what}: {}", s.message),
            other => other.to_string(),
        }
    }
}

/// Wraps a kube error with what was being done.
pub fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Kube { what, source }
}

/// Whether an API error is a 404.
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Whether an API error is a 409 AlreadyExists or Conflict.
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}
