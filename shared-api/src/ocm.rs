//! The Open Cluster Management objects we read or write, with only the fields we use.
//!
//! Every struct keeps the fields it does not model in `extra`, so reading an object and writing
//! it back loses nothing. These types are owned by OCM; we never generate CRDs for them.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Fields a struct does not model, kept for a lossless round trip.
pub type Extra = BTreeMap<String, Value>;

/// Name of the ClusterClaim that carries a cluster's kernel versions.
pub const KERNEL_VERSIONS_CLAIM: &str = "kernel-versions.kmm.node.kubernetes.io";

// ---------------------------------------------------------------- ManifestWork

/// Resources for the work agent to apply on one managed cluster.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "work.open-cluster-management.io",
    version = "v1",
    kind = "ManifestWork",
    plural = "manifestworks",
    namespaced,
    status = "ManifestWorkStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct ManifestWorkSpec {
    /// The manifests to apply.
    #[serde(default)]
    pub workload: ManifestsTemplate,
    /// Per-resource options: feedback rules and update strategy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub manifest_configs: Vec<ManifestConfigOption>,
    /// What happens to the applied resources when the ManifestWork is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_option: Option<DeleteOption>,
    /// Unmodelled fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// The list of manifests.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct ManifestsTemplate {
    /// Full Kubernetes objects.
    #[serde(default)]
    pub manifests: Vec<Value>,
    /// Unmodelled fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// Options for one resource of the workload.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ManifestConfigOption {
    /// Which resource.
    pub resource_identifier: ResourceIdentifier,
    /// Status fields to bring back to the hub.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub feedback_rules: Vec<FeedbackRule>,
    /// How the agent updates the resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_strategy: Option<UpdateStrategy>,
    /// Unmodelled fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// Identifies a resource by group, plural resource, name and namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceIdentifier {
    /// API group ("" for core).
    #[serde(default)]
    pub group: String,
    /// Plural resource name.
    pub resource: String,
    /// Object name.
    pub name: String,
    /// Object namespace ("" for cluster-scoped).
    #[serde(default)]
    pub namespace: String,
}

/// A rule selecting status fields to report.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FeedbackRule {
    /// `WellKnownStatus` or `JSONPaths`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Paths for `JSONPaths` rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub json_paths: Vec<JsonPath>,
}

/// A named JSON path into the resource's status.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct JsonPath {
    /// Name of the reported value.
    pub name: String,
    /// Path relative to `.status`.
    pub path: String,
    /// API version to read with; defaults to the manifest's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// How the work agent updates a resource.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UpdateStrategy {
    /// `Update`, `CreateOnly`, `ServerSideApply` or `ReadOnly`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Server-side apply options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_side_apply: Option<Value>,
}

/// Deletion behaviour.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeleteOption {
    /// `Foreground`, `Orphan` or `SelectivelyOrphan`.
    pub propagation_policy: String,
    /// Unmodelled fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// What the work agent reports.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ManifestWorkStatus {
    /// `Applied`, `Available`, `Degraded`, `Progressing`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Per-resource status.
    #[serde(default)]
    pub resource_status: ManifestResourceStatus,
    /// Unmodelled fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// Per-resource status of the workload.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct ManifestResourceStatus {
    /// One entry per manifest.
    #[serde(default)]
    pub manifests: Vec<ManifestCondition>,
    /// Unmodelled fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// Status of one applied manifest.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ManifestCondition {
    /// Which resource.
    #[serde(default)]
    pub resource_meta: ManifestResourceMeta,
    /// Values selected by the feedback rules.
    #[serde(default)]
    pub status_feedback: StatusFeedback,
    /// `Applied`, `Available`, `StatusFeedbackSynced`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Unmodelled fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// Identity of an applied manifest.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct ManifestResourceMeta {
    /// Index in the workload.
    #[serde(default)]
    pub ordinal: i32,
    /// API group.
    #[serde(default)]
    pub group: String,
    /// API version.
    #[serde(default)]
    pub version: String,
    /// Kind.
    #[serde(default)]
    pub kind: String,
    /// Plural resource.
    #[serde(default)]
    pub resource: String,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Namespace.
    #[serde(default)]
    pub namespace: String,
}

/// Reported status values.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StatusFeedback {
    /// The values.
    #[serde(default)]
    pub values: Vec<FeedbackValue>,
    /// Unmodelled fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// One reported value.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FeedbackValue {
    /// The JSON path's name.
    pub name: String,
    /// The value.
    pub field_value: FieldValue,
}

/// A typed value.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FieldValue {
    /// `Integer`, `String`, `Boolean` or `JsonRaw`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Set for `Integer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integer: Option<i64>,
    /// Set for `String`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string: Option<String>,
    /// Set for `Boolean`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boolean: Option<bool>,
    /// Set for `JsonRaw`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_raw: Option<String>,
}

impl ManifestWorkStatus {
    /// The integer feedback value `name` reported for the manifest `kind` `namespace/name`.
    pub fn feedback_integer(&self, kind: &str, namespace: &str, name: &str, value: &str) -> Option<i64> {
        self.resource_status
            .manifests
            .iter()
            .filter(|m| {
                m.resource_meta.kind == kind && m.resource_meta.namespace == namespace && m.resource_meta.name == name
            })
            .flat_map(|m| &m.status_feedback.values)
            .find(|v| v.name == value)
            .and_then(|v| v.field_value.integer)
    }

    /// Whether the condition `type_` is `True`.
    pub fn condition_true(&self, type_: &str) -> bool {
        self.conditions.iter().any(|c| c.type_ == type_ && c.status == "True")
    }
}

// ---------------------------------------------------------------- ManagedCluster

/// A cluster registered with the hub (cluster-scoped, named after the cluster).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "cluster.open-cluster-management.io",
    version = "v1",
    kind = "ManagedCluster",
    plural = "managedclusters",
    status = "ManagedClusterStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct ManagedClusterSpec {
    /// Whether the hub accepted the cluster.
    #[serde(default)]
    pub hub_accepts_client: bool,
    /// Unmodelled fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// What the registration agent reports about a cluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ManagedClusterStatus {
    /// `HubAcceptedManagedCluster`, `ManagedClusterJoined`, `ManagedClusterConditionAvailable`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Claims synced from the cluster's ClusterClaims.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cluster_claims: Vec<ManagedClusterClaim>,
    /// Unmodelled fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A claim as it appears in a ManagedCluster's status.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct ManagedClusterClaim {
    /// Claim name.
    pub name: String,
    /// Claim value.
    #[serde(default)]
    pub value: String,
}

impl ManagedCluster {
    /// The value of the claim `name`, if the cluster reports it.
    pub fn claim(&self, name: &str) -> Option<&str> {
        self.status
            .as_ref()?
            .cluster_claims
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.value.as_str())
    }

    /// The kernel versions from the `kernel-versions.kmm.node.kubernetes.io` claim, if any.
    pub fn kernel_versions(&self) -> Option<Vec<String>> {
        self.claim(KERNEL_VERSIONS_CLAIM).map(crate::kernel::parse_claim_value)
    }
}

// ---------------------------------------------------------------- ClusterClaim

/// A fact about a managed cluster, published on the cluster itself (cluster-scoped).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "cluster.open-cluster-management.io",
    version = "v1alpha1",
    kind = "ClusterClaim",
    plural = "clusterclaims",
    schema = "disabled"
)]
pub struct ClusterClaimSpec {
    /// The claim's value.
    #[serde(default)]
    pub value: String,
    /// Unmodelled fields.
    #[serde(flatten)]
    pub extra: Extra,
}
