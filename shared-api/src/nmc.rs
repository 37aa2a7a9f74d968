//! `NodeModulesConfig` (kmm.sigs.x-k8s.io/v1beta1): per node, the modules that should be loaded
//! (spec, written by the Module controller) and those that are (status, written by the node
//! controller after its worker pods succeed).

use k8s_openapi::api::core::v1::{LocalObjectReference, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::module::{ImagePullPolicy, ModprobeSpec};

fn is_false(b: &bool) -> bool {
    !*b
}

/// Modules that should be loaded on one node; named after the node.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kmm.sigs.x-k8s.io",
    version = "v1beta1",
    kind = "NodeModulesConfig",
    plural = "nodemodulesconfigs",
    shortname = "nmc",
    derive = "PartialEq",
    status = "NodeModulesConfigStatus",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct NodeModulesConfigSpec {
    /// Modules that should be on the node.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["namespace", "name"]))]
    pub modules: Vec<NodeModuleSpec>,
}

/// One module that should be on a node.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeModuleSpec {
    /// Name of the Module.
    pub name: String,
    /// Namespace of the Module.
    pub namespace: String,
    /// ServiceAccount of the worker pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Pull secret of the kmod image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_repo_secret: Option<LocalObjectReference>,
    /// Tolerations of the worker pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Module version, for ordered upgrades.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// What the worker needs to load the module.
    pub config: ModuleConfig,
}

/// The worker's input: everything needed to load or unload one module on one node.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModuleConfig {
    /// Kernel release the image was resolved for, as the node reports it (the worker loads from
    /// `<dirName>/lib/modules/<this>`).
    pub kernel_version: String,
    /// kmod image, with variables already substituted.
    pub container_image: String,
    /// Pull policy of the kmod image. Upstream KMM writes `""` for a Module without one; that
    /// reads as unset.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::optional::pull_policy"
    )]
    #[schemars(extend("default" = "IfNotPresent"))]
    pub image_pull_policy: Option<ImagePullPolicy>,
    /// Pull over plain HTTP.
    #[serde(default, skip_serializing_if = "is_false")]
    pub insecure_pull: bool,
    /// Skip verification of the registry's certificate when pulling.
    #[serde(default, skip_serializing_if = "is_false", rename = "insecureSkipTLSVerify")]
    pub insecure_skip_tls_verify: bool,
    /// In-tree modules to unload before loading.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub in_tree_modules_to_remove: Vec<String>,
    /// Deprecated single form of `inTreeModulesToRemove`, as upstream KMM still writes it for
    /// Modules that use it; we never write it, but keep and honour it (see
    /// [`ModuleConfig::in_tree_modules`]).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::optional::empty_string"
    )]
    pub in_tree_module_to_remove: Option<String>,
    /// modprobe settings.
    #[schemars(schema_with = "modprobe_without_rules")]
    pub modprobe: ModprobeSpec,
}

impl ModuleConfig {
    /// Whether loading `other` puts the same module into the kernel as loading `self`: equal
    /// but for how the image is fetched (pull policy, plain HTTP, TLS verification). So a
    /// NodeModulesConfig written by upstream KMM (its CRD defaults the pull policy to
    /// `IfNotPresent`, it folds skipping TLS verification into `insecurePull`), or a changed
    /// pull policy alone, never reloads a running driver.
    pub fn same_load(&self, other: &ModuleConfig) -> bool {
        self.kernel_version == other.kernel_version
            && self.container_image == other.container_image
            && self.in_tree_modules() == other.in_tree_modules()
            && self.modprobe == other.modprobe
    }

    /// The in-tree modules to unload first: the list, or else the deprecated single entry
    /// (upstream's webhook refuses Modules that set both).
    pub fn in_tree_modules(&self) -> Vec<&str> {
        match (
            &self.in_tree_modules_to_remove[..],
            self.in_tree_module_to_remove.as_deref(),
        ) {
            ([], Some(one)) => vec![one],
            (list, _) => list.iter().map(String::as_str).collect(),
        }
    }
}

/// The ModprobeSpec schema without its CEL rules: entries here are written by the controller from
/// validated Modules, and rules inside an unbounded list would exceed the API server's CEL cost
/// budget.
fn modprobe_without_rules(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = <ModprobeSpec as schemars::JsonSchema>::json_schema(generator);
    if let Some(obj) = schema.as_object_mut() {
        obj.remove("x-kubernetes-validations");
    }
    schema
}

/// Modules loaded on the node.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeModulesConfigStatus {
    /// Loaded modules.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["namespace", "name"]))]
    pub modules: Vec<NodeModuleStatus>,
}

/// One module loaded on a node.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeModuleStatus {
    /// Name of the Module.
    pub name: String,
    /// Namespace of the Module.
    pub namespace: String,
    /// ServiceAccount the worker pods used (needed again to unload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Pull secret the worker pods used (needed again to unload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_repo_secret: Option<LocalObjectReference>,
    /// Tolerations the worker pods used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Module version that is loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The configuration that was loaded.
    pub config: ModuleConfig,
    /// When the module was loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// The node's boot ID when the module was loaded; a different one means a reboot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
}

#[cfg(test)]
mod same_load_tests {
    use super::*;

    #[test]
    fn upstream_entries_read_back_and_load_the_same() {
        // As upstream KMM writes a status entry for a Module without a pull policy.
        let upstream: NodeModuleStatus = serde_json::from_value(serde_json::json!({
            "name": "m", "namespace": "ns", "serviceAccountName": "",
            "config": {
                "kernelVersion": "6.1.0-28-amd64",
                "containerImage": "r/m@sha256:00",
                "imagePullPolicy": "",
                "insecurePull": true,
                "modprobe": {"moduleName": "m", "dirName": "/opt"}
            },
            "bootId": "b1"
        }))
        .unwrap();
        assert_eq!(upstream.config.image_pull_policy, None);
        let mut ours = upstream.config.clone();
        ours.insecure_pull = false;
        ours.insecure_skip_tls_verify = true;
        ours.image_pull_policy = Some(ImagePullPolicy::IfNotPresent);
        assert!(ours.same_load(&upstream.config));
        ours.container_image = "r/m@sha256:01".into();
        assert!(!ours.same_load(&upstream.config));
        let bad = serde_json::from_value::<ModuleConfig>(serde_json::json!({
            "kernelVersion": "k", "containerImage": "i", "imagePullPolicy": "Sometimes", "modprobe": {"moduleName": "m"}
        }));
        assert!(bad.is_err(), "an unknown pull policy is still refused");
    }

    #[test]
    fn the_deprecated_single_in_tree_module_is_kept_and_honoured() {
        let cfg: ModuleConfig = serde_json::from_value(serde_json::json!({
            "kernelVersion": "k", "containerImage": "i", "inTreeModuleToRemove": "old_drv",
            "modprobe": {"moduleName": "m"}
        }))
        .unwrap();
        assert_eq!(cfg.in_tree_modules(), ["old_drv"]);
        assert_eq!(serde_json::to_value(&cfg).unwrap()["inTreeModuleToRemove"], "old_drv");
        let mut ours = cfg.clone();
        ours.in_tree_module_to_remove = None;
        ours.in_tree_modules_to_remove = vec!["old_drv".into()];
        assert!(ours.same_load(&cfg), "the two spellings unload the same module");
    }
}
