//! `Module` (kmm.sigs.x-k8s.io/v1beta1): one out-of-tree kernel module and its device plugin.
//!
//! Field names, optionality and defaults follow upstream KMM so that existing YAML applies
//! unchanged. Rules that the API server can check cheaply are CEL `x-kubernetes-validations`;
//! the full rule set lives in [`crate::validation`] and is shared with the admission webhooks.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, LocalObjectReference, ResourceRequirements, Toleration, Volume, VolumeMount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Default directory inside the kmod image under which `lib/modules/<kernel>` is searched.
pub const DEFAULT_DIR_NAME: &str = "/opt";

/// The kubelet's device plugin directory, which the operator mounts into every device plugin
/// container for its socket.
pub const KUBELET_DEVICE_PLUGINS_DIR: &str = "/var/lib/kubelet/device-plugins";

/// Name of the device plugin pods' volume for [`KUBELET_DEVICE_PLUGINS_DIR`], reserved.
pub const KUBELET_DEVICE_PLUGINS_VOLUME: &str = "kubelet-device-plugins";

fn default_dir_name() -> String {
    DEFAULT_DIR_NAME.to_owned()
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Desired state of a kernel module on the nodes of one cluster.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "kmm.sigs.x-k8s.io",
    version = "v1beta1",
    kind = "Module",
    plural = "modules",
    shortname = "mod",
    namespaced,
    derive = "PartialEq",
    status = "ModuleStatus",
    printcolumn = r#"{"name":"Selected","type":"integer","description":"Nodes matching the selector","jsonPath":".status.moduleLoader.nodesMatchingSelectorNumber"}"#,
    printcolumn = r#"{"name":"Loaded","type":"integer","description":"Nodes where the module is loaded","jsonPath":".status.moduleLoader.availableNumber"}"#,
    printcolumn = r#"{"name":"Desired","type":"integer","description":"Nodes that should have the module loaded","jsonPath":".status.moduleLoader.desiredNumber"}"#,
    printcolumn = r#"{"name":"Plugins","type":"integer","description":"Nodes with a ready device plugin","jsonPath":".status.devicePlugin.availableNumber","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(
    cel,
    validation = Rule::new("!(has(self.dra) && has(self.devicePlugin))").message("spec.dra and spec.devicePlugin are mutually exclusive")
)]
#[serde(rename_all = "camelCase")]
pub struct ModuleSpec {
    /// Loads the kernel module on the selected nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_loader: Option<ModuleLoaderSpec>,
    /// Runs a device plugin on the nodes where the module is loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_plugin: Option<DevicePluginSpec>,
    /// A Dynamic Resource Allocation driver and its DeviceClasses (upstream KMM's field;
    /// exclusive with `devicePlugin`). Accepted, validated and carried to the spokes; kmm-spoke
    /// does not run DRA drivers yet and says so in the Module's conditions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dra: Option<DraSpec>,
    /// Secret with registry credentials, used to pull the kmod and device plugin images and, on
    /// the hub, to push built and signed images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_repo_secret: Option<LocalObjectReference>,
    /// Node labels that select where the module is loaded.
    pub selector: BTreeMap<String, String>,
    /// Taints of selected nodes that the worker and device plugin pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Raising this counter asks for the Module's images to be checked again and rebuilt and
    /// re-signed where the Module builds or signs them (upstream KMM v2.6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_rebuild_trigger_generation: Option<i64>,
}

/// How the kernel module is loaded.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModuleLoaderSpec {
    /// The module loader container.
    pub container: ModuleLoaderContainerSpec,
    /// ServiceAccount of the worker pods. Defaults per namespace (see the security section).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::optional::empty_string"
    )]
    pub service_account_name: Option<String>,
}

/// Image, kernel mappings and modprobe settings of the module loader.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(
    cel,
    validation = Rule::new("(has(self.version) && self.version != '') == (has(oldSelf.version) && oldSelf.version != '')").message("version cannot be added or removed on update; recreate the Module to change between versioned and unversioned").reason(Reason::FieldValueForbidden)
)]
#[serde(rename_all = "camelCase")]
pub struct ModuleLoaderContainerSpec {
    /// modprobe settings.
    pub modprobe: ModprobeSpec,
    /// Version of the module, for ordered upgrades driven by node labels. `""` means unset.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::optional::empty_string"
    )]
    pub version: Option<String>,
    /// Pull policy of the kmod image. `""` means unset.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::optional::pull_policy"
    )]
    pub image_pull_policy: Option<ImagePullPolicy>,
    /// Default build instructions for kernel mappings that have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<Build>,
    /// Default signing instructions for kernel mappings that have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sign: Option<Sign>,
    /// Default kmod image for kernel mappings that have none. Variables are substituted.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::optional::empty_string"
    )]
    pub container_image: Option<String>,
    /// Deprecated: use `inTreeModulesToRemove`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::optional::empty_string"
    )]
    pub in_tree_module_to_remove: Option<String>,
    /// In-tree modules to unload before loading this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_tree_modules_to_remove: Option<Vec<String>>,
    /// Kernel versions this module supports; the first matching mapping wins.
    #[schemars(length(min = 1))]
    pub kernel_mappings: Vec<KernelMapping>,
    /// TLS options used to check whether the kmod image exists.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "registryTLS")]
    pub registry_tls: Option<TlsOptions>,
}

/// Image pull policy (same values as a container's; `""` in YAML means unset).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImagePullPolicy {
    /// Always pull.
    Always,
    /// Pull if the image is not on the node.
    IfNotPresent,
    /// Never pull.
    Never,
}

impl JsonSchema for ImagePullPolicy {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ImagePullPolicy".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        // Upstream's schema takes any string here; we take the values a pod accepts, and `""`,
        // which upstream's Go types write for "unset".
        schemars::json_schema!({
            "description": "Image pull policy: Always, IfNotPresent or Never (\"\" means unset).",
            "type": "string",
            "enum": ["Always", "IfNotPresent", "Never", ""]
        })
    }
}

impl ImagePullPolicy {
    /// The value as written in a pod spec.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// How modprobe loads and unloads the module.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    cel,
    validation = Rule::new("(has(self.moduleName) && self.moduleName != '') != has(self.rawArgs)").message("exactly one of moduleName and rawArgs must be set"),
    validation = Rule::new("!has(self.modulesLoadingOrder) || size(self.modulesLoadingOrder) == 0 || (size(self.modulesLoadingOrder) >= 2 && has(self.moduleName) && self.modulesLoadingOrder[0] == self.moduleName)").message("modulesLoadingOrder must list at least 2 modules and start with moduleName")
)]
#[serde(rename_all = "camelCase")]
pub struct ModprobeSpec {
    /// Name of the kernel module to load.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::optional::empty_string"
    )]
    pub module_name: Option<String>,
    /// Parameters passed to modprobe when loading.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<String>,
    /// Directory in the image where `lib/modules/<kernel>` lives.
    #[serde(default = "default_dir_name")]
    pub dir_name: String,
    /// Extra modprobe arguments for load and unload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<ModprobeArgs>,
    /// Complete modprobe command lines, used instead of moduleName.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_args: Option<ModprobeArgs>,
    /// Directory in the image whose content is copied to the node's firmware directory.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::optional::empty_string"
    )]
    pub firmware_path: Option<String>,
    /// Soft dependencies: modules to load, the last first; the first entry is moduleName.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub modules_loading_order: Vec<String>,
}

impl Default for ModprobeSpec {
    fn default() -> Self {
        Self {
            module_name: None,
            parameters: Vec::new(),
            dir_name: default_dir_name(),
            args: None,
            raw_args: None,
            firmware_path: None,
            modules_loading_order: Vec::new(),
        }
    }
}

/// modprobe arguments for loading and unloading. In `args` either may be left out (upstream
/// KMM's schema); `rawArgs` needs both, which validation checks.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ModprobeArgs {
    /// Arguments when loading.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1))]
    pub load: Vec<String>,
    /// Arguments when unloading.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1))]
    pub unload: Vec<String>,
}

/// Maps kernel versions to a kmod image and, optionally, how to build and sign it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(
    cel,
    validation = Rule::new("(has(self.literal) && self.literal != '') != (has(self.regexp) && self.regexp != '')").message("exactly one of literal and regexp must be set")
)]
#[serde(rename_all = "camelCase")]
pub struct KernelMapping {
    /// Build instructions for this mapping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<Build>,
    /// Signing instructions for this mapping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sign: Option<Sign>,
    /// kmod image for matching kernels. Variables are substituted.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::optional::empty_string"
    )]
    pub container_image: Option<String>,
    /// Kernel version this mapping matches exactly.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::optional::empty_string"
    )]
    pub literal: Option<String>,
    /// Regular expression (Go RE2 syntax, as upstream) searched in the kernel version.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::optional::empty_string"
    )]
    pub regexp: Option<String>,
    /// Deprecated: use `inTreeModulesToRemove`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::optional::empty_string"
    )]
    pub in_tree_module_to_remove: Option<String>,
    /// In-tree modules to unload before loading this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_tree_modules_to_remove: Option<Vec<String>>,
    /// TLS options used to check whether the kmod image exists.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "registryTLS")]
    pub registry_tls: Option<TlsOptions>,
}

/// TLS options of a registry connection.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsOptions {
    /// Allow plain HTTP. Avoid.
    #[serde(default, skip_serializing_if = "is_false")]
    pub insecure: bool,
    /// Skip verification of the server certificate. Avoid.
    #[serde(default, skip_serializing_if = "is_false", rename = "insecureSkipTLSVerify")]
    pub insecure_skip_tls_verify: bool,
}

/// In-cluster build of a kmod image (runs on the hub in a hub-and-spoke setup).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Build {
    /// Build arguments; KERNEL_VERSION, KERNEL_FULL_VERSION, MOD_NAME and MOD_NAMESPACE are set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub build_args: Vec<BuildArg>,
    /// Secrets mounted in the build at `/run/secrets/<name>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<LocalObjectReference>,
    /// TLS options for pulling the base images named in the Dockerfile.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "baseImageRegistryTLS")]
    pub base_image_registry_tls: Option<TlsOptions>,
    /// ConfigMap holding the Dockerfile under the key `dockerfile` or `Dockerfile`.
    pub dockerfile_config_map: Option<LocalObjectReference>,
    /// Node selector of the build pod.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    /// Executor parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kaniko_params: Option<KanikoParams>,
}

/// Parameters of the kaniko-compatible build executor.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct KanikoParams {
    /// Tag of the executor image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// A build argument.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct BuildArg {
    /// Name of the argument.
    pub name: String,
    /// Value of the argument.
    #[serde(default)]
    pub value: String,
}

/// Secure Boot signing of the modules inside a kmod image.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Sign {
    /// Image with the unsigned modules; defaults to the built image, or containerImage itself.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::optional::empty_string"
    )]
    pub unsigned_image: Option<String>,
    /// TLS options for pulling the unsigned image.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "unsignedImageRegistryTLS"
    )]
    pub unsigned_image_registry_tls: Option<TlsOptions>,
    /// Secret holding the private key under the key `key`.
    pub key_secret: Option<LocalObjectReference>,
    /// Secret holding the certificate under the key `cert`.
    pub cert_secret: Option<LocalObjectReference>,
    /// Paths inside the image of the modules to sign. Variables are substituted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files_to_sign: Vec<String>,
}

/// The device plugin DaemonSet.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DevicePluginSpec {
    /// The device plugin container.
    pub container: DevicePluginContainerSpec,
    /// An init container run before the device plugin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_container: Option<DevicePluginContainerSpec>,
    /// ServiceAccount of the device plugin pods.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::optional::empty_string"
    )]
    pub service_account_name: Option<String>,
    /// Volumes of the device plugin pods (`hostPath` only under /dev, /sys, /var, /opt or /run,
    /// as upstream).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// Whether the ServiceAccount token is mounted into the device plugin pods (the pod
    /// default, true, when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automount_service_account_token: Option<bool>,
}

/// A Dynamic Resource Allocation driver DaemonSet and the DeviceClasses it serves (upstream
/// KMM's `DRASpec`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DraSpec {
    /// The DRA driver container.
    pub container: DevicePluginContainerSpec,
    /// An init container run before the driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_container: Option<DevicePluginContainerSpec>,
    /// ServiceAccount of the driver pods.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::optional::empty_string"
    )]
    pub service_account_name: Option<String>,
    /// Volumes of the driver pods (`hostPath` only under /dev, /sys, /var, /opt or /run).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// Whether the ServiceAccount token is mounted into the driver pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automount_service_account_token: Option<bool>,
    /// The driver name registered with the kubelet (a DNS subdomain).
    pub driver_name: String,
    /// DeviceClasses managed for this driver.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_classes: Vec<DeviceClassSpec>,
}

/// A DeviceClass managed on behalf of a Module.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceClassSpec {
    /// Name of the cluster-scoped DeviceClass.
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"))]
    pub name: String,
    /// Which devices satisfy this class.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub selectors: Vec<DeviceSelector>,
    /// Configuration passed to the driver for each device.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub config: Vec<DeviceClassConfiguration>,
}

/// A device selector of a DeviceClass (`resource.k8s.io/v1` `DeviceSelector`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct DeviceSelector {
    /// A CEL expression over the device's attributes and capacity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cel: Option<CelDeviceSelector>,
}

/// A CEL device selector.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct CelDeviceSelector {
    /// The expression; it must evaluate to a bool.
    pub expression: String,
}

/// Configuration of a DeviceClass (`resource.k8s.io/v1` `DeviceClassConfiguration`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct DeviceClassConfiguration {
    /// Driver-specific parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opaque: Option<OpaqueDeviceConfiguration>,
}

/// Driver-specific configuration.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct OpaqueDeviceConfiguration {
    /// The driver the parameters are for.
    pub driver: String,
    /// Parameters in the driver's own format, kept as written.
    #[schemars(schema_with = "free_form_object")]
    pub parameters: serde_json::Value,
}

/// An object the API server stores as written (`x-kubernetes-preserve-unknown-fields`).
fn free_form_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// A container of the device plugin pod.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DevicePluginContainerSpec {
    /// Arguments of the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Command of the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Environment of the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Image of the container.
    pub image: String,
    /// Pull policy of the image.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::optional::pull_policy"
    )]
    pub image_pull_policy: Option<ImagePullPolicy>,
    /// Resources of the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Volume mounts of the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
}

/// Observed state of a Module.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModuleStatus {
    /// Device plugin pods.
    #[serde(default)]
    pub device_plugin: DaemonSetStatus,
    /// DRA driver pods (upstream's field; kmm-spoke does not run DRA drivers yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dra: Option<DaemonSetStatus>,
    /// Module loading.
    #[serde(default)]
    pub module_loader: DaemonSetStatus,
    /// The last `spec.imageRebuildTriggerGeneration` acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_rebuild_trigger_generation: Option<i64>,
    /// Conditions: `Progressing`, `Available`, `Degraded` and the reason for each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Node counts of one part of a Module.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DaemonSetStatus {
    /// Nodes matching the selector.
    #[serde(default)]
    pub nodes_matching_selector_number: i32,
    /// Nodes that should run it.
    #[serde(default)]
    pub desired_number: i32,
    /// Nodes where it is running and ready.
    #[serde(default)]
    pub available_number: i32,
}
