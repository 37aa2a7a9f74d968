//! The device plugin DaemonSet of a Module: it runs only on nodes where the module is loaded
//! (the ready label, and for a versioned Module the schedule label of its version), so taking
//! those labels off a node removes the plugin before the module is unloaded.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec};
use k8s_openapi::api::core::v1::{
    Container, HostPathVolumeSource, LocalObjectReference, PodSpec, PodTemplateSpec, SecurityContext, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
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
/// Name of the Module's DaemonSet.
pub fn name(module: &str) -> String {
    format!("{module}-device-plugin")
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

/// The DaemonSet for `module`, or `None` when it has no device plugin. `default_sa` is used when
/// the Module names no ServiceAccount and lives in the operator's namespace.
pub fn render(module: &Module, owner: OwnerReference, default_sa: Option<&str>) -> Option<DaemonSet> {
    let dp = module.spec.device_plugin.as_ref()?;
    let ns = module.metadata.namespace.clone()?;
    let mod_name = module.metadata.name.clone()?;
    let mut node_selector = module.spec.selector.clone();
    node_selector.insert(labels::module_ready(&ns, &mod_name).ok()?, String::new());
    if let Some(v) = module
        .spec
        .module_loader
        .as_ref()
        .and_then(|l| l.container.version.clone())
    {
        node_selector.insert(labels::schedule_pod_version(&ns, &mod_name).ok()?, v);
    }
    let pod_labels = BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), APP.to_owned()),
        ("app.kubernetes.io/instance".to_owned(), name(&mod_name)),
    ]);
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
            name: Some(name(&mod_name)),
            namespace: Some(ns.clone()),
            labels: Some(pod_labels.clone()),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(pod_labels.clone()),
                ..Default::default()
            },
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
        let ds = render(&module(None), owner(), None).unwrap();
        assert_eq!(ds.metadata.name.as_deref(), Some("gpu-device-plugin"));
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
    }

    #[test]
    fn versioned_plugin_waits_for_the_schedule_label() {
        let ds = render(&module(Some("2")), owner(), Some("kmm-device-plugin")).unwrap();
        let spec = ds.spec.unwrap().template.spec.unwrap();
        assert_eq!(
            spec.node_selector
                .unwrap()
                .get("beta.kmm.node.kubernetes.io/version-schedule-pod.ns.gpu")
                .map(String::as_str),
            Some("2")
        );
        assert_eq!(spec.service_account_name.as_deref(), Some("kmm-device-plugin"));
        let mut m = module(None);
        m.spec.device_plugin = None;
        assert!(render(&m, owner(), None).is_none());
    }
}
