//! `PreflightValidation` (kmm.sigs.x-k8s.io): checks, before a cluster upgrade, that every Module
//! has an image (or can build and sign one) for the upcoming kernel.
//!
//! Served as `v1beta2` (stored) and `v1beta1` (deprecated), as upstream KMM serves them. Upstream
//! converts between them with a webhook because v1beta1 reports per-Module results in a map
//! (`status.crStatuses`, keyed `namespace/name` and `name`) and v1beta2 in a list
//! (`status.modules`). We serve both versions with one identical schema that holds both fields,
//! and whoever writes the status writes both, so a v1beta1 reader finds `crStatuses` and a v1beta2
//! reader finds `modules` with no conversion webhook in the read path (a webhook that is down
//! would make every read of the kind fail).

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

// v1beta2, the stored version. The doc comment is the schema's description: keep it equal to
// v1beta1's, so the two versions' schemas stay identical.
/// A request to verify all Modules against a kernel version.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kmm.sigs.x-k8s.io",
    version = "v1beta2",
    kind = "PreflightValidation",
    plural = "preflightvalidations",
    shortname = "pfv",
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

/// The deprecated `v1beta1` version, with the same schema as `v1beta2`.
pub mod v1beta1 {
    use super::*;

    /// A request to verify all Modules against a kernel version.
    #[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
    #[kube(
        group = "kmm.sigs.x-k8s.io",
        version = "v1beta1",
        kind = "PreflightValidation",
        plural = "preflightvalidations",
        shortname = "pfv",
        derive = "PartialEq",
        status = "super::PreflightValidationStatus",
        deprecated = "kmm.sigs.x-k8s.io/v1beta1 PreflightValidation is deprecated; use kmm.sigs.x-k8s.io/v1beta2",
        printcolumn = r#"{"name":"Kernel","type":"string","jsonPath":".spec.kernelVersion"}"#,
        printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
    )]
    pub struct PreflightValidationSpec {
        /// The same fields as v1beta2.
        #[serde(flatten)]
        pub spec: super::PreflightValidationSpec,
    }
}

/// Both versions in one CRD, v1beta2 stored.
pub fn crd() -> CustomResourceDefinition {
    kube::core::crd::merge_crds(
        vec![PreflightValidation::crd(), v1beta1::PreflightValidation::crd()],
        "v1beta2",
    )
    .expect("the two PreflightValidation versions share group, kind and scope")
}

/// Result per Module, in both versions' shapes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreflightValidationStatus {
    /// One entry per Module (v1beta2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["namespace", "name"]))]
    pub modules: Vec<PreflightValidationModuleStatus>,
    /// The same results keyed `namespace/name` and, for backwards compatibility, `name` (v1beta1).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cr_statuses: BTreeMap<String, CrStatus>,
}

impl PreflightValidationStatus {
    /// A status from per-Module results, with `crStatuses` filled from `modules` as upstream's
    /// conversion to v1beta1 does.
    pub fn from_modules(modules: Vec<PreflightValidationModuleStatus>) -> Self {
        let mut cr_statuses = BTreeMap::new();
        for m in &modules {
            cr_statuses.insert(format!("{}/{}", m.namespace, m.name), m.status.clone());
            // As upstream: the bare name may collide across namespaces; the last one wins.
            cr_statuses.insert(m.name.clone(), m.status.clone());
        }
        Self { modules, cr_statuses }
    }
}

/// Verification state of one Module (v1beta2's list entry).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreflightValidationModuleStatus {
    /// Name of the Module.
    pub name: String,
    /// Namespace of the Module.
    pub namespace: String,
    /// The verification state.
    #[serde(flatten)]
    pub status: CrStatus,
}

/// Verification state, as upstream's `CRBaseStatus`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CrStatus {
    /// Whether the Module is verified.
    pub verification_status: VerificationStatus,
    /// Why the Module is or is not verified.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status_reason: String,
    /// The stage reached.
    pub verification_stage: VerificationStage,
    /// When the state last changed.
    pub last_transition_time: Time,
}

/// Outcome of a Module's verification.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum VerificationStatus {
    /// The Module has what the kernel needs.
    Success,
    /// It does not, and will not without a change.
    Failure,
    /// Still being checked.
    #[default]
    InProgress,
}

/// Stage of a Module's verification.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum VerificationStage {
    /// Checking, building or signing the image.
    #[default]
    Image,
    /// Finished.
    Done,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_versions_are_served_with_one_schema_and_v1beta2_is_stored() {
        let crd = serde_json::to_value(crd()).unwrap();
        let versions = crd["spec"]["versions"].as_array().unwrap();
        let names: Vec<_> = versions.iter().map(|v| v["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["v1beta2", "v1beta1"]);
        assert_eq!(versions[0]["storage"], true);
        assert_eq!(versions[1]["storage"], false);
        assert_eq!(versions[1]["deprecated"], true);
        assert_eq!(versions[0]["schema"], versions[1]["schema"]);
        assert_eq!(crd["spec"]["names"]["shortNames"], serde_json::json!(["pfv"]));
        assert_eq!(crd["spec"]["scope"], "Cluster");
        let status = &versions[0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"];
        let entry = &status["modules"]["items"]["properties"];
        assert_eq!(
            entry["verificationStatus"]["enum"],
            serde_json::json!(["Success", "Failure", "InProgress"])
        );
        assert_eq!(entry["verificationStage"]["enum"], serde_json::json!(["Image", "Done"]));
        assert!(status["crStatuses"]["additionalProperties"].is_object());
    }

    #[test]
    fn v1beta1_reads_the_same_spec_and_cr_statuses_follow_modules() {
        let v1: v1beta1::PreflightValidation = serde_json::from_value(serde_json::json!({
            "apiVersion": "kmm.sigs.x-k8s.io/v1beta1", "kind": "PreflightValidation",
            "metadata": {"name": "p"}, "spec": {"kernelVersion": "6.1.0", "pushBuiltImage": true}
        }))
        .unwrap();
        assert_eq!(v1.spec.spec.kernel_version, "6.1.0");
        assert!(v1.spec.spec.push_built_image);
        let t = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        let entry = |ns: &str, name: &str, s| PreflightValidationModuleStatus {
            name: name.into(),
            namespace: ns.into(),
            status: CrStatus {
                verification_status: s,
                status_reason: String::new(),
                verification_stage: VerificationStage::Done,
                last_transition_time: t.clone(),
            },
        };
        let st = PreflightValidationStatus::from_modules(vec![
            entry("a", "m", VerificationStatus::Success),
            entry("b", "m", VerificationStatus::Failure),
        ]);
        let keys: Vec<_> = st.cr_statuses.keys().map(String::as_str).collect();
        assert_eq!(keys, ["a/m", "b/m", "m"]);
        assert_eq!(st.cr_statuses["m"].verification_status, VerificationStatus::Failure);
        let json = serde_json::to_value(&st).unwrap();
        assert_eq!(json["modules"][0]["verificationStatus"], "Success");
        assert_eq!(json["crStatuses"]["a/m"]["verificationStage"], "Done");
    }
}
