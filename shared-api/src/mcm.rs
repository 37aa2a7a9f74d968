//! `ManagedClusterModule` (hub.kmm.sigs.x-k8s.io/v1beta1): a Module for every selected managed
//! cluster, built, signed and pinned once on the hub.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::module::{DaemonSetStatus, ModuleSpec};

/// A Module spec sent to every ManagedCluster matching `selector`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "hub.kmm.sigs.x-k8s.io",
    version = "v1beta1",
    kind = "ManagedClusterModule",
    plural = "managedclustermodules",
    shortname = "mcm",
    derive = "PartialEq",
    status = "ManagedClusterModuleStatus",
    printcolumn = r#"{"name":"Applied","type":"integer","description":"Clusters whose ManifestWork is applied","jsonPath":".status.numberApplied"}"#,
    printcolumn = r#"{"name":"Desired","type":"integer","description":"Clusters matching the selector","jsonPath":".status.numberDesired"}"#,
    printcolumn = r#"{"name":"Degraded","type":"integer","description":"Clusters with a problem","jsonPath":".status.numberDegraded"}"#,
    printcolumn = r#"{"name":"Spoke Namespace","type":"string","jsonPath":".spec.spokeNamespace","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ManagedClusterModuleSpec {
    /// The Module spec; build and sign run on the hub and are removed before it reaches a spoke.
    pub module_spec: ModuleSpec,
    /// Namespace of the Module on the spokes.
    #[schemars(length(min = 1, max = 63))]
    pub spoke_namespace: String,
    /// ManagedCluster labels that select the clusters.
    pub selector: BTreeMap<String, String>,
}

/// Fleet-wide state of a ManagedClusterModule.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedClusterModuleStatus {
    /// ManifestWorks this MCM owns (one per selected cluster that has one), as upstream
    /// KMM-Hub counts them.
    #[serde(default)]
    pub number_desired: i32,
    /// Owned ManifestWorks whose `Applied` condition is true.
    #[serde(default)]
    pub number_applied: i32,
    /// Owned ManifestWorks whose `Degraded` condition is true. Problems found before a
    /// ManifestWork exists (no kernel claim, a failed build) are in `clusters[].reason` and the
    /// `Degraded` condition.
    #[serde(default)]
    pub number_degraded: i32,
    /// The kmod image of every kernel the selected clusters run, shared by all clusters on that
    /// kernel: what the hub found, built, signed and pinned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["kernelVersion"]))]
    pub images: Vec<KernelImageStatus>,
    /// Per-cluster detail.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub clusters: Vec<ClusterModuleStatus>,
    /// Conditions: `Progressing`, `Available`, `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Generation of the spec this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// State of one selected cluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterModuleStatus {
    /// Name of the ManagedCluster.
    pub name: String,
    /// Kernel versions the cluster reports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernels: Vec<String>,
    /// Whether the work agent applied the ManifestWork.
    #[serde(default)]
    pub applied: bool,
    /// Kernels the ManifestWork carries a pinned image for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rendered_kernels: Vec<String>,
    /// Why the cluster has no work yet or is degraded; empty when all is well.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Module loading on the cluster, read back from the ManifestWork's status feedback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_loader: Option<DaemonSetStatus>,
    /// Device plugin on the cluster, read back from the ManifestWork's status feedback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_plugin: Option<DaemonSetStatus>,
}

/// The kmod image for one kernel.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KernelImageStatus {
    /// Kernel version.
    pub kernel_version: String,
    /// Image reference after variable substitution, as written in the spec.
    pub image: String,
    /// The pinned reference sent to the spoke (`repo@sha256:...`), once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned: Option<String>,
    /// `Pending`, `Ready`, `Stale` (re-resolution failed; the last digest is still rendered),
    /// `Missing`, `Building`, `Signing` or `Failed`.
    pub state: String,
    /// Detail for states other than `Ready`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
