//! The device plugin DaemonSets of a Module: one per module version (as upstream's
//! `getExistingDSFromVersion`), each running only on nodes where that version is loaded (the
//! ready label, and for a versioned Module the schedule label of its version), so taking those
//! labels off a node removes the plugin before the module is unloaded. A Module without a
//! module loader runs its plugin on the nodes its selector matches.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy, RollingUpdateDaemonSet};
use k8s_openapi::api::core::v1::{
    Container, HostPathVolumeSource, LocalObjectReference, PodSpec, PodTemplateSpec, SecurityContext, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use shared_api::labels;
use shared_api::module::{
    DevicePluginContainerSpec, KUBELET_DEVICE_PLUGINS_DIR, KUBELET_DEVICE_PLUGINS_VOLUME, Module,
};

use super::ModuleKey;

/// `app.kubernetes.io/name` of device plugin pods.
pub const APP: &str = "kmm-device-plugin";
/// Annotation on device plugin pods naming their Module's namespace.
pub const MODULE_NAMESPACE_ANNOTATION: &str = "kmm.node.kubernetes.io/module-namespace";
/// Annotation on device plugin pods naming their Module.
pub const MODULE_NAME_ANNOTATION: &str = "kmm.node.kubernetes.io/module-name";
/// Upstream's label naming the Module on its DaemonSets and pods.
pub const MODULE_NAME_LABEL: &str = "kmm.node.kubernetes.io/module.name";
/// Upstream's label naming what a DaemonSet or pod does.
pub const ROLE_LABEL: &str = "kmm.node.kubernetes.io/role";
/// [`ROLE_LABEL`] of device plugin DaemonSets and pods.
pub const ROLE_DEVICE_PLUGIN: &str = "device-plugin";

/// Name of the Module's DaemonSet for `version` (`None`: an unversioned Module). The version is
/// in the name when it is a valid name part and fits in 63 characters, else a short hash of it
/// is. (Validation keeps name and namespace of every Module to 41 characters together.)
pub fn name(module: &str, version: Option<&str>) -> String {
    let base = format!("{module}-device-plugin");
    let Some(v) = version else { return base };
    let plain = format!("{base}-{v}");
    let safe = v
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && v.ends_with(|c: char| c.is_ascii_alphanumeric());
    if safe && plain.len() <= labels::MAX_NAME_LEN {
        return plain;
    }
    let h = super::short_sha256(v.as_bytes(), 4);
    let hashed = format!("{base}-v{h}");
    if hashed.len() <= labels::MAX_NAME_LEN {
        hashed
    } else {
        // The name is also a label value (the pods' instance label): at most 63 characters.
        format!("{module}-dp-v{h}")
    }
}

/// The module version a device plugin DaemonSet serves: the schedule label its pods wait for,
/// `None` for an unversioned one.
pub fn version_of(ds: &DaemonSet, namespace: &str, module: &str) -> Option<String> {
    let key = labels::schedule_pod_version(namespace, module).ok()?;
    ds.spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .node_selector
        .as_ref()?
        .get(&key)
        .cloned()
}

/// The version the Module's device plugin runs for now (`None`: unversioned).
pub fn wanted_version(module: &Module) -> Option<&str> {
    module
        .spec
        .module_loader
        .as_ref()
        .and_then(|l| l.container.version.as_deref())
}

/// Whether an existing DaemonSet of the Module is an older version's that no node needs any
/// more (upstream's `isOlderVersionUnusedDevicePluginDaemonset`), judged only on a status the
/// DaemonSet controller computed for its current spec.
pub fn is_unused_older_version(ds: &DaemonSet, namespace: &str, module: &str, wanted: Option<&str>) -> bool {
    let Some(status) = ds.status.as_ref() else { return false };
    let observed = status.observed_generation.is_some() && status.observed_generation >= ds.metadata.generation;
    version_of(ds, namespace, module).as_deref() != wanted && observed && status.desired_number_scheduled == 0
}

fn container(name: &str, c: &DevicePluginContainerSpec, extra_mount: Option<VolumeMount>) -> Container {
    let mut mounts = c.volume_mounts.clone();
    mounts.extend(extra_mount);
    Container {
        name: name.into(),
        image: Some(c.image.clone()),
        image_pull_policy: c.image_pull_policy.map(|p| p.as_str().to_owned()),
        args: (!c.args.is_empty()).then(|| c.args.clone()),
        command: (!c.command.is_empty()).then(|| c.command.clone()),
        env: (!c.env.is_empty()).then(|| c.env.clone()),
        resources: c.resources.clone(),
        volume_mounts: (!mounts.is_empty()).then_some(mounts),
        security_context: Some(SecurityContext {
            privileged: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The selector labels of our DaemonSet `name` (a DaemonSet's selector never changes).
pub fn selector_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), APP.to_owned()),
        ("app.kubernetes.io/instance".to_owned(), name.to_owned()),
    ])
}

/// The DaemonSet `name` for `module` at its current version, or `None` when it has no device
/// plugin. `default_sa` is used when the Module names no ServiceAccount and lives in the
/// operator's namespace. `adopted` is the selector of an existing DaemonSet of this version
/// that we take over (upstream KMM's `{module.name, role}`): it is kept, since the API server
/// refuses to change it, and its labels are added to the pods'.
///
/// Pods are replaced one node at a time with the new one started first (`maxSurge: 1`,
/// `maxUnavailable: 0`), so a template change (a new plugin image, a taken-over DaemonSet)
/// never leaves a node without its plugin.
pub fn render(
    module: &Module,
    name: &str,
    owner: OwnerReference,
    default_sa: Option<&str>,
    adopted: Option<&LabelSelector>,
) -> Option<DaemonSet> {
    let dp = module.spec.device_plugin.as_ref()?;
    let ns = module.metadata.namespace.clone()?;
    let mod_name = module.metadata.name.clone()?;
    let mut node_selector = module.spec.selector.clone();
    let mut pod_labels = selector_labels(name);
    let selector = match adopted {
        Some(s) => {
            pod_labels.extend(s.match_labels.clone().unwrap_or_default());
            s.clone()
        }
        None => LabelSelector {
            match_labels: Some(pod_labels.clone()),
            ..Default::default()
        },
    };
    pod_labels.insert(MODULE_NAME_LABEL.into(), mod_name.clone());
    pod_labels.insert(ROLE_LABEL.into(), ROLE_DEVICE_PLUGIN.into());
    if module.spec.module_loader.is_some() {
        node_selector.insert(labels::module_ready(&ns, &mod_name).ok()?, String::new());
    }
    if let Some(v) = wanted_version(module) {
        let key = labels::schedule_pod_version(&ns, &mod_name).ok()?;
        node_selector.insert(key.clone(), v.to_owned());
        pod_labels.insert(key, v.to_owned());
    }
    let mut volumes = dp.volumes.clone();
    volumes.push(Volume {
        name: KUBELET_DEVICE_PLUGINS_VOLUME.into(),
        host_path: Some(HostPathVolumeSource {
            path: KUBELET_DEVICE_PLUGINS_DIR.into(),
            type_: Some("Directory".into()),
        }),
        ..Default::default()
    });
    let socket_mount = VolumeMount {
        name: KUBELET_DEVICE_PLUGINS_VOLUME.into(),
        mount_path: KUBELET_DEVICE_PLUGINS_DIR.into(),
        ..Default::default()
    };
    Some(DaemonSet {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(ns.clone()),
            labels: Some(pod_labels.clone()),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: Some(DaemonSetSpec {
            selector,
            update_strategy: Some(DaemonSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDaemonSet {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([
                        (MODULE_NAMESPACE_ANNOTATION.to_owned(), ns.clone()),
                        (MODULE_NAME_ANNOTATION.to_owned(), mod_name.clone()),
                    ])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    node_selector: Some(node_selector),
                    tolerations: (!module.spec.tolerations.is_empty()).then(|| module.spec.tolerations.clone()),
                    service_account_name: dp.service_account_name.clone().or(default_sa.map(str::to_owned)),
                    automount_service_account_token: dp.automount_service_account_token,
                    image_pull_secrets: module
                        .spec
                        .image_repo_secret
                        .as_ref()
                        .map(|s| vec![LocalObjectReference { name: s.name.clone() }]),
                    priority_class_name: Some("system-node-critical".into()),
                    init_containers: dp.init_container.as_ref().map(|c| vec![container("init", c, None)]),
                    containers: vec![container("device-plugin", &dp.container, Some(socket_mount))],
                    volumes: Some(volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    })
}

/// The Module a device plugin pod belongs to, from its annotations.
pub fn module_of_pod(pod: &k8s_openapi::api::core::v1::Pod) -> Option<ModuleKey> {
    let a = pod.metadata.annotations.as_ref()?;
    Some(ModuleKey::new(
        a.get(MODULE_NAMESPACE_ANNOTATION)?,
        a.get(MODULE_NAME_ANNOTATION)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_api::module::{DevicePluginSpec, ModuleLoaderContainerSpec, ModuleLoaderSpec, ModuleSpec};

    fn module(version: Option<&str>) -> Module {
        let mut m = Module::new(
            "gpu",
            ModuleSpec {
                module_loader: Some(ModuleLoaderSpec {
                    container: ModuleLoaderContainerSpec {
                        version: version.map(Into::into),
                        ..Default::default()
                    },
                    service_account_name: None,
                }),
                device_plugin: Some(DevicePluginSpec {
                    container: DevicePluginContainerSpec {
                        image: "r/plugin:1".into(),
                        ..Default::default()
                    },
                    ..Default::default()
                }),
                selector: [("role".to_owned(), "gpu".to_owned())].into(),
                ..Default::default()
            },
        );
        m.metadata.namespace = Some("ns".into());
        m
    }

    fn owner() -> OwnerReference {
        OwnerReference {
            api_version: "v".into(),
            kind: "Module".into(),
            name: "gpu".into(),
            uid: "u".into(),
            ..Default::default()
        }
    }

    #[test]
    fn plugin_runs_only_where_the_module_is_ready() {
        let ds = render(&module(None), &name("gpu", None), owner(), None, None).unwrap();
        assert_eq!(ds.metadata.name.as_deref(), Some("gpu-device-plugin"));
        let labels = ds.metadata.labels.clone().unwrap();
        assert_eq!(labels[MODULE_NAME_LABEL], "gpu");
        assert_eq!(labels[ROLE_LABEL], "device-plugin");
        let spec = ds.spec.unwrap().template.spec.unwrap();
        let sel = spec.node_selector.unwrap();
        assert_eq!(sel.get("role").map(String::as_str), Some("gpu"));
        assert_eq!(
            sel.get("kmm.node.kubernetes.io/ns.gpu.ready").map(String::as_str),
            Some("")
        );
        assert_eq!(sel.len(), 2);
        let mounts = spec.containers[0].volume_mounts.as_ref().unwrap();
        assert_eq!(mounts[0].mount_path, KUBELET_DEVICE_PLUGINS_DIR);
        assert_eq!(spec.automount_service_account_token, None, "the pod default when unset");
    }

    #[test]
    fn the_service_account_token_mount_follows_the_module() {
        let mut m = module(None);
        m.spec.device_plugin.as_mut().unwrap().automount_service_account_token = Some(false);
        let ds = render(&m, &name("gpu", None), owner(), None, None).unwrap();
        let spec = ds.spec.unwrap().template.spec.unwrap();
        assert_eq!(spec.automount_service_account_token, Some(false));
    }

    #[test]
    fn versioned_plugin_waits_for_the_schedule_label() {
        let ds = render(
            &module(Some("2")),
            "gpu-device-plugin-2",
            owner(),
            Some("kmm-device-plugin"),
            None,
        )
        .unwrap();
        assert_eq!(version_of(&ds, "ns", "gpu").as_deref(), Some("2"));
        let spec = ds.clone().spec.unwrap().template.spec.unwrap();
        assert_eq!(
            spec.node_selector
                .unwrap()
                .get("beta.kmm.node.kubernetes.io/version-schedule-pod.ns.gpu")
                .map(String::as_str),
            Some("2")
        );
        assert_eq!(spec.service_account_name.as_deref(), Some("kmm-device-plugin"));
        let selector = ds.spec.unwrap().selector.match_labels.unwrap();
        assert_eq!(
            selector.keys().collect::<Vec<_>>(),
            ["app.kubernetes.io/instance", "app.kubernetes.io/name"],
            "the immutable selector never carries the version"
        );
        let mut m = module(None);
        m.spec.device_plugin = None;
        assert!(render(&m, "x", owner(), None, None).is_none());
    }

    #[test]
    fn one_name_per_version() {
        assert_eq!(name("gpu", None), "gpu-device-plugin");
        assert_eq!(name("gpu", Some("1-2")), "gpu-device-plugin-1-2");
        // Label values may hold what names may not: those get a stable hash.
        let odd = name("gpu", Some("V1.2_rc"));
        assert!(odd.starts_with("gpu-device-plugin-v") && odd.len() == "gpu-device-plugin-v".len() + 8);
        assert_eq!(odd, name("gpu", Some("V1.2_rc")));
        assert_ne!(odd, name("gpu", Some("V1.2_rd")));
        assert!(name(&"m".repeat(40), Some(&"1".repeat(20))).len() <= 63);
    }

    #[test]
    fn device_plugin_only_modules_follow_the_selector() {
        let mut m = module(None);
        m.spec.module_loader = None;
        let ds = render(&m, &name("gpu", None), owner(), None, None).unwrap();
        let sel = ds.spec.unwrap().template.spec.unwrap().node_selector.unwrap();
        assert_eq!(sel, BTreeMap::from([("role".to_owned(), "gpu".to_owned())]));
    }

    #[test]
    fn older_versions_go_once_no_node_runs_them() {
        let mut ds = render(&module(Some("1")), "gpu-device-plugin-1", owner(), None, None).unwrap();
        ds.metadata.generation = Some(1);
        let status = |desired, observed| k8s_openapi::api::apps::v1::DaemonSetStatus {
            desired_number_scheduled: desired,
            observed_generation: observed,
            ..Default::default()
        };
        assert!(!is_unused_older_version(&ds, "ns", "gpu", Some("2")), "no status yet");
        ds.status = Some(status(2, Some(1)));
        assert!(
            !is_unused_older_version(&ds, "ns", "gpu", Some("2")),
            "nodes still run 1"
        );
        ds.status = Some(status(0, Some(1)));
        assert!(is_unused_older_version(&ds, "ns", "gpu", Some("2")));
        assert!(
            !is_unused_older_version(&ds, "ns", "gpu", Some("1")),
            "the current version stays"
        );
        ds.metadata.generation = Some(2);
        assert!(
            !is_unused_older_version(&ds, "ns", "gpu", Some("2")),
            "status of an older spec"
        );
    }
}
