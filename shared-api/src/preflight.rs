//! `PreflightValidation` (kmm.sigs.x-k8s.io/v1beta2): checks, before a cluster upgrade, that every
//! Module has an image (or can build and sign one) for the upcoming kernel.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A request to verify all Modules against a kernel version.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kmm.sigs.x-k8s.io",
    version = "v1beta2",
    kind = "PreflightValidation",
    plural = "preflightvalidations",
    shortname = "pv",
    derive = "PartialEq",
    status = "PreflightValidationStatus",
    printcolumn = r#"{"name":"Kernel","type":"string","jsonPath":".spec.kernelVersion"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PreflightValidationSpec {
    /// The kernel version to verify the Modules against.
    pub kernel_version: String,
    /// Push images built during the validation.
    #[serde(default)]
    pub push_built_image: bool,
}

/// Result per Module.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreflightValidationStatus {
    /// One entry per Module.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["namespace", "name"]))]
    pub modules: Vec<PreflightValidationModuleStatus>,
}

/// Verification state of one Module.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreflightValidationModuleStatus {
    /// Name of the Module.
    pub name: String,
    /// Namespace of the Module.
    pub namespace: String,
    /// `True` when verified, `False` otherwise.
    pub verification_status: String,
    /// Why the Module is or is not verified.
    #[serde(default)]
    pub status_reason: String,
    /// Stage reached: `Image`, `Build`, `Sign`, `Requeued` or `Done`.
    pub verification_stage: String,
    /// When the state last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
}
