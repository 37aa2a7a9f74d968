//! The ManifestWork that carries one MCM's Module to one cluster.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;
use kube::api::ObjectMeta;
use serde_json::json;
use sha2::{Digest, Sha256};
use shared_api::labels::MCM_NAME_LABEL;
use shared_api::mcm::ManagedClusterModule;
use shared_api::module::{KernelMapping, Module, TlsOptions};
use shared_api::ocm::{
    FeedbackRule, JsonPath, ManifestConfigOption, ManifestWork, ManifestWorkSpec, ManifestsTemplate,
    ResourceIdentifier, UpdateStrategy,
};

use super::images::KernelImage;

/// Annotation with the hash of everything we render, so an unchanged ManifestWork is not
/// written again.
pub const SPEC_HASH_ANNOTATION: &str = "hub.kmm.sigs.x-k8s.io/spec-hash";

/// Status feedback names, with their paths in the spoke Module (the work agent evaluates them on
/// the whole object, so they start with `.status`). Names and paths are upstream KMM-Hub's
/// (`internal/manifestwork/manifestwork.go`), so tools reading the feedback keep working; the
/// `dra.*` values are absent until the spoke Module reports DRA status.
pub const FEEDBACK: [(&str, &str); 9] = [
    ("devicePlugin.availableNumber", ".status.devicePlugin.availableNumber"),
    ("devicePlugin.desiredNumber", ".status.devicePlugin.desiredNumber"),
    (
        "devicePlugin.nodesMatchingSelectorNumber",
        ".status.devicePlugin.nodesMatchingSelectorNumber",
    ),
    ("dra.availableNumber", ".status.dra.availableNumber"),
    ("dra.desiredNumber", ".status.dra.desiredNumber"),
    (
        "dra.nodesMatchingSelectorNumber",
        ".status.dra.nodesMatchingSelectorNumber",
    ),
    ("moduleLoader.availableNumber", ".status.moduleLoader.availableNumber"),
    ("moduleLoader.desiredNumber", ".status.moduleLoader.desiredNumber"),
    (
        "moduleLoader.nodesMatchingSelectorNumber",
        ".status.moduleLoader.nodesMatchingSelectorNumber",
    ),
];

/// A kernel with its image pinned to a digest.
#[derive(Debug, Clone, PartialEq)]
pub struct PinnedKernel<'a> {
    /// What the plan resolved for the kernel.
    pub kernel: &'a KernelImage,
    /// `repo@sha256:...`.
    pub pinned: &'a str,
}

/// The Module a spoke gets: named after the MCM in `spokeNamespace`; build and sign removed;
/// one literal mapping per kernel with the pinned image. A device-plugin-only spec is sent as is.
pub fn spoke_module(mcm: &ManagedClusterModule, kernels: &[PinnedKernel<'_>]) -> Module {
    let mut spec = mcm.spec.module_spec.clone();
    if let Some(loader) = spec.module_loader.as_mut() {
        let c = &mut loader.container;
        c.build = None;
        c.sign = None;
        // Every kernel the spoke may use has its own pinned mapping; a tag left here would let a
        // spoke pull an unpinned image for a kernel the hub has not seen yet.
        c.container_image = None;
        c.registry_tls = None;
        c.in_tree_module_to_remove = None;
        c.in_tree_modules_to_remove = None;
        c.kernel_mappings = kernels
            .iter()
            .map(|k| KernelMapping {
                literal: Some(k.kernel.kernel.clone()),
                container_image: Some(k.pinned.to_owned()),
                registry_tls: (k.kernel.tls != TlsOptions::default()).then_some(k.kernel.tls),
                in_tree_modules_to_remove: (!k.kernel.in_tree_modules_to_remove.is_empty())
                    .then(|| k.kernel.in_tree_modules_to_remove.clone()),
                ..Default::default()
            })
            .collect();
    }
    let mut m = Module::new(mcm.metadata.name.as_deref().unwrap_or_default(), spec);
    m.metadata.namespace = Some(mcm.spec.spoke_namespace.clone());
    m
}

/// The owner reference that ties a ManifestWork to its MCM, so deleting the MCM lets the
/// garbage collector delete every ManifestWork.
pub fn owner(mcm: &ManagedClusterModule) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: ManagedClusterModule::api_version(&()).into_owned(),
        kind: ManagedClusterModule::kind(&()).into_owned(),
        name: mcm.metadata.name.clone()?,
        uid: mcm.metadata.uid.clone()?,
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

/// The ManifestWork `<mcm>` in namespace `<cluster>`.
pub fn manifest_work(mcm: &ManagedClusterModule, cluster: &str, kernels: &[PinnedKernel<'_>]) -> ManifestWork {
    let name = mcm.metadata.name.clone().unwrap_or_default();
    let module = spoke_module(mcm, kernels);
    let mut manifest = serde_json::to_value(&module).unwrap_or_default();
    if let Some(o) = manifest.as_object_mut() {
        o.remove("status");
    }
    let spec = ManifestWorkSpec {
        workload: ManifestsTemplate {
            manifests: vec![manifest],
            ..Default::default()
        },
        manifest_configs: vec![ManifestConfigOption {
            resource_identifier: ResourceIdentifier {
                group: Module::group(&()).into_owned(),
                resource: Module::plural(&()).into_owned(),
                name: name.clone(),
                namespace: mcm.spec.spoke_namespace.clone(),
            },
            feedback_rules: vec![FeedbackRule {
                type_: "JSONPaths".into(),
                json_paths: FEEDBACK
                    .iter()
                    .map(|(n, p)| JsonPath {
                        name: (*n).into(),
                        path: (*p).into(),
                        version: None,
                    })
                    .collect(),
            }],
            // Server-side apply keeps the spoke's own fields (its finalizer) out of the agent's way.
            // Forced, so a Module another manager wrote (upstream KMM-Hub's work agent updates
            // with its Update strategy) is taken over instead of failing on conflicts.
            update_strategy: Some(UpdateStrategy {
                type_: "ServerSideApply".into(),
                server_side_apply: Some(json!({"force": true})),
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let labels: BTreeMap<String, String> = [(MCM_NAME_LABEL.to_string(), name.clone())].into();
    let hash = {
        let mut h = Sha256::new();
        h.update(
            serde_json::to_vec(&json!({"spec": &spec, "labels": &labels, "uid": &mcm.metadata.uid}))
                .unwrap_or_default(),
        );
        h.finalize()
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    ManifestWork {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(cluster.to_owned()),
            labels: Some(labels),
            annotations: Some([(SPEC_HASH_ANNOTATION.to_string(), hash)].into()),
            owner_references: owner(mcm).map(|o| vec![o]),
            ..Default::default()
        },
        spec,
        status: None,
    }
}

/// The kernels a ManifestWork carries: the `literal` of each kernel mapping of its Module.
pub fn rendered_literals(mw: &ManifestWork) -> Vec<String> {
    mw.spec
        .workload
        .manifests
        .iter()
        .filter(|m| m.get("kind").and_then(|k| k.as_str()) == Some("Module"))
        .filter_map(|m| m.pointer("/spec/moduleLoader/container/kernelMappings")?.as_array())
        .flatten()
        .filter_map(|k| k.get("literal")?.as_str().map(str::to_owned))
        .collect()
}

/// The spec hash recorded on an existing ManifestWork.
pub fn recorded_hash(mw: &ManifestWork) -> Option<&str> {
    mw.metadata
        .annotations
        .as_ref()?
        .get(SPEC_HASH_ANNOTATION)
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::images::tests::{mcm, regexp};
    use shared_api::module::{Build, Sign};

    const DA: &str = "reg.local/kmm/m@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const DB: &str = "reg.local/kmm/m@sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn kernel(k: &str, tls: TlsOptions) -> KernelImage {
        KernelImage {
            kernel: k.into(),
            image: format!("reg.local/kmm/m:{k}"),
            tls,
            in_tree_modules_to_remove: vec!["old".into()],
        }
    }

    #[test]
    fn dra_and_the_rebuild_trigger_reach_the_spoke_as_written() {
        let mut m = mcm(vec![regexp(".*", "reg.local/kmm/m:${KERNEL_FULL_VERSION}")]);
        m.spec.module_spec.image_rebuild_trigger_generation = Some(3);
        m.spec.module_spec.dra = Some(serde_json::from_value(serde_json::json!({
            "driverName": "gpu.example.com",
            "container": {"image": "reg.local/dra/driver:v1"},
            "automountServiceAccountToken": false,
            "deviceClasses": [{
                "name": "gpu.example.com",
                "selectors": [{"cel": {"expression": "device.driver == 'gpu.example.com'"}}],
                "config": [{"opaque": {"driver": "gpu.example.com", "parameters": {"sharing": {"strategy": "TimeSlicing"}}}}]
            }]
        }))
        .unwrap());
        let k = kernel("6.1.0", TlsOptions::default());
        let mw = manifest_work(&m, "spoke-a", &[PinnedKernel { kernel: &k, pinned: DA }]);
        let sent = &mw.spec.workload.manifests[0]["spec"];
        assert_eq!(sent["imageRebuildTriggerGeneration"], 3);
        assert_eq!(
            sent["dra"],
            serde_json::to_value(m.spec.module_spec.dra.as_ref().unwrap()).unwrap(),
            "the DRA spec, free-form parameters included, is carried unchanged"
        );
        assert_eq!(
            sent["dra"]["deviceClasses"][0]["config"][0]["opaque"]["parameters"]["sharing"]["strategy"],
            "TimeSlicing"
        );
    }

    #[test]
    fn renders_one_module_with_pinned_literal_mappings_and_no_build_or_sign() {
        let mut m = mcm(vec![regexp(".*", "reg.local/kmm/m:${KERNEL_FULL_VERSION}")]);
        let c = &mut m.spec.module_spec.module_loader.as_mut().unwrap().container;
        c.build = Some(Build::default());
        c.sign = Some(Sign::default());
        c.container_image = Some("reg.local/kmm/m:latest-ish".into());
        c.kernel_mappings[0].build = Some(Build::default());
        let insecure = TlsOptions {
            insecure: true,
            insecure_skip_tls_verify: false,
        };
        let (k1, k2) = (kernel("6.1.0", insecure), kernel("6.2.0", TlsOptions::default()));
        let pins = [
            PinnedKernel {
                kernel: &k1,
                pinned: DA,
            },
            PinnedKernel {
                kernel: &k2,
                pinned: DB,
            },
        ];
        let mw = manifest_work(&m, "spoke-a", &pins);
        assert_eq!(mw.metadata.name.as_deref(), Some("kmm-ci"));
        assert_eq!(mw.metadata.namespace.as_deref(), Some("spoke-a"));
        assert_eq!(mw.metadata.labels.as_ref().unwrap()[MCM_NAME_LABEL], "kmm-ci");
        let o = &mw.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (o.kind.as_str(), o.uid.as_str(), o.controller),
            ("ManagedClusterModule", "uid-1", Some(true))
        );

        assert_eq!(mw.spec.workload.manifests.len(), 1);
        let module: Module = serde_json::from_value(mw.spec.workload.manifests[0].clone()).unwrap();
        assert_eq!(module.metadata.namespace.as_deref(), Some("kmm-ci"));
        let c = &module.spec.module_loader.unwrap().container;
        assert!(c.build.is_none() && c.sign.is_none() && c.container_image.is_none());
        let maps: Vec<_> = c
            .kernel_mappings
            .iter()
            .map(|k| {
                (
                    k.literal.as_deref().unwrap(),
                    k.container_image.as_deref().unwrap(),
                    k.regexp.is_none(),
                )
            })
            .collect();
        assert_eq!(maps, [("6.1.0", DA, true), ("6.2.0", DB, true)]);
        assert!(c.kernel_mappings.iter().all(|k| k.build.is_none() && k.sign.is_none()));
        assert_eq!(c.kernel_mappings[0].registry_tls, Some(insecure));
        assert_eq!(c.kernel_mappings[1].registry_tls, None);
        assert_eq!(c.kernel_mappings[0].in_tree_modules_to_remove, Some(vec!["old".into()]));
        // The rendered Module passes the spoke's validation.
        let mut module = serde_json::from_value::<Module>(mw.spec.workload.manifests[0].clone()).unwrap();
        module.metadata.name = Some("kmm-ci".into());
        shared_api::validation::validate_module(&module).unwrap();

        let cfg = &mw.spec.manifest_configs[0];
        assert_eq!(cfg.resource_identifier.resource, "modules");
        assert_eq!(cfg.resource_identifier.namespace, "kmm-ci");
        // Upstream KMM-Hub's feedback names, so tools reading the feedback keep working.
        let names: Vec<&str> = cfg.feedback_rules[0]
            .json_paths
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(names.len(), 9);
        assert!(names.contains(&"moduleLoader.availableNumber") && names.contains(&"dra.desiredNumber"));
        let ssa = cfg.update_strategy.as_ref().unwrap();
        assert_eq!(ssa.type_, "ServerSideApply");
        assert_eq!(ssa.server_side_apply, Some(json!({"force": true})));
        assert_eq!(rendered_literals(&mw), ["6.1.0", "6.2.0"]);
    }

    #[test]
    fn hash_follows_content() {
        let m = mcm(vec![regexp(".*", "reg.local/kmm/m:v1")]);
        let k = kernel("6.1.0", TlsOptions::default());
        let a = manifest_work(
            &m,
            "c",
            &[PinnedKernel {
                kernel: &k,
                pinned: "r/m@sha256:1",
            }],
        );
        let b = manifest_work(
            &m,
            "c",
            &[PinnedKernel {
                kernel: &k,
                pinned: "r/m@sha256:1",
            }],
        );
        let c = manifest_work(
            &m,
            "c",
            &[PinnedKernel {
                kernel: &k,
                pinned: "r/m@sha256:2",
            }],
        );
        assert_eq!(recorded_hash(&a), recorded_hash(&b));
        assert_ne!(recorded_hash(&a), recorded_hash(&c));
    }

    #[test]
    fn device_plugin_only_spec_goes_as_is() {
        let mut m = mcm(vec![]);
        m.spec.module_spec.module_loader = None;
        let module = spoke_module(&m, &[]);
        assert_eq!(module.spec, m.spec.module_spec);
    }
}
