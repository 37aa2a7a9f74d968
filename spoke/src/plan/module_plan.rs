//! A Module's desired entries in the nodes' NodeModulesConfigs, and its status numbers.

use std::collections::BTreeMap;

use shared_api::labels;
use shared_api::mapping::{MappingError, Mappings};
use shared_api::module::{DaemonSetStatus, ImagePullPolicy, Module};
use shared_api::nmc::{ModuleConfig, NodeModuleSpec, NodeModuleStatus};
use shared_api::validation::{self, ValidationErrors};

use super::selection::{NodeView, Selection, select, with_internal_tolerations};

/// Facts about the spoke installation the planner needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpokeContext {
    /// Namespace the spoke runs in.
    pub operator_namespace: String,
    /// ServiceAccount for worker pods of Modules in the operator's namespace that name none.
    pub worker_service_account: String,
}

/// Why a Module cannot be planned at all.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The spec breaks a validation rule.
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),
    /// The kernel mappings cannot be compiled.
    #[error(transparent)]
    Mapping(#[from] MappingError),
}

/// Where a Module should be loaded, and why the other matching nodes are left out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModulePlan {
    /// Node name → the entry its NodeModulesConfig should hold.
    pub entries: BTreeMap<String, NodeModuleSpec>,
    /// Nodes whose labels match the selector.
    pub nodes_matching_selector: i32,
    /// Matching nodes that are not targeted, with the reason (cordoned, taint, no mapping...).
    /// A node whose kernel mapping could not be resolved is listed here and keeps its current
    /// entry in `entries`: a transient error never unloads.
    pub skipped: BTreeMap<String, String>,
    /// Nodes of an ordered upgrade that keep the version they run (their `version-module` label
    /// names another version than the Module's), with that version. Their entry, unchanged,
    /// is in `entries`.
    pub kept: BTreeMap<String, String>,
    /// Kernel mappings that still carry build or sign instructions: those belong to the hub.
    pub needs_hub: Vec<String>,
    /// What validation accepted with a warning (unknown template variables, no kernel mapping).
    pub warnings: Vec<String>,
    /// Parts of the spec this spoke accepts but does not act on (`spec.dra`).
    pub unsupported: Vec<String>,
}

/// Plans `module` over `nodes`; `current` holds the Module's entries in the NodeModulesConfigs
/// today, by node.
///
/// As upstream's `prepareNodeSchedulingData`: a versioned Module runs on the nodes whose
/// version label equals its version; a node labelled for another version keeps its entry as it
/// is (the version it runs stays loaded: the ordered upgrade moves one node at a time); a node
/// without the label runs nothing of it.
pub fn plan_module(
    module: &Module,
    nodes: &[NodeView],
    current: &BTreeMap<String, NodeModuleSpec>,
    ctx: &SpokeContext,
) -> Result<ModulePlan, PlanError> {
    let warnings = validation::validate_module(module)?;
    let name = module.metadata.name.as_deref().unwrap_or_default();
    let namespace = module
        .metadata
        .namespace
        .as_deref()
        .unwrap_or(validation::DEFAULT_NAMESPACE);
    let mut plan = ModulePlan {
        warnings: warnings.iter().map(ToString::to_string).collect(),
        ..Default::default()
    };
    if module.spec.dra.is_some() {
        plan.unsupported.push(
            "spec.dra: kmm-spoke does not run DRA drivers or manage DeviceClasses yet; the rest of the Module is acted on"
                .into(),
        );
    }
    let Some(loader) = &module.spec.module_loader else {
        // A device-plugin-only Module loads nothing.
        plan.nodes_matching_selector = nodes
            .iter()
            .filter(|n| select(n, &module.spec.selector, &module.spec.tolerations, None) != Selection::NotMatching)
            .count() as i32;
        return Ok(plan);
    };
    let c = &loader.container;
    if c.build.is_some() || c.sign.is_some() {
        plan.needs_hub.push("spec.moduleLoader.container".into());
    }
    for (i, m) in c.kernel_mappings.iter().enumerate() {
        if m.build.is_some() || m.sign.is_some() {
            plan.needs_hub
                .push(format!("spec.moduleLoader.container.kernelMappings[{i}]"));
        }
    }
    let mappings = Mappings::compile(c)?;
    let version_label = match &c.version {
        Some(v) => Some((
            labels::module_version(namespace, name).map_err(|e| invalid(namespace, name, e))?,
            v,
        )),
        None => None,
    };
    let service_account = loader
        .service_account_name
        .clone()
        .or_else(|| (namespace == ctx.operator_namespace).then(|| ctx.worker_service_account.clone()));
    for node in nodes {
        let version = version_label.as_ref().map(|(k, v)| (k.as_str(), v.as_str()));
        match select(node, &module.spec.selector, &module.spec.tolerations, version) {
            Selection::NotMatching => continue,
            Selection::Targeted => {}
            Selection::VersionLabel { on_node: Some(v) } if current.contains_key(&node.name) => {
                plan.nodes_matching_selector += 1;
                plan.entries.insert(node.name.clone(), current[&node.name].clone());
                plan.kept.insert(node.name.clone(), v);
                continue;
            }
            // A node that is not ready keeps what it runs, unchanged, until it is back.
            Selection::NotReady(_) if current.contains_key(&node.name) => {
                plan.nodes_matching_selector += 1;
                plan.entries.insert(node.name.clone(), current[&node.name].clone());
                continue;
            }
            other => {
                plan.nodes_matching_selector += 1;
                plan.skipped.insert(node.name.clone(), skip_reason(&other));
                continue;
            }
        }
        plan.nodes_matching_selector += 1;
        if node.kernel.is_empty() {
            plan.skipped.insert(
                node.name.clone(),
                "the node does not report its kernel version yet".into(),
            );
            continue;
        }
        let resolved = match mappings.resolve(&node.kernel, name, namespace) {
            Ok(Some(r)) => r,
            Ok(None) => {
                plan.skipped.insert(
                    node.name.clone(),
                    format!("no kernel mapping matches kernel {}", node.kernel),
                );
                continue;
            }
            Err(e) => {
                plan.skipped
                    .insert(node.name.clone(), format!("kernel {}: {e}", node.kernel));
                // As upstream: when the mapping cannot be worked out, the node's entry stays.
                if let Some(e) = current.get(&node.name) {
                    plan.entries.insert(node.name.clone(), e.clone());
                }
                continue;
            }
        };
        plan.entries.insert(
            node.name.clone(),
            NodeModuleSpec {
                name: name.to_owned(),
                namespace: namespace.to_owned(),
                service_account_name: service_account.clone(),
                image_repo_secret: module.spec.image_repo_secret.clone(),
                tolerations: with_internal_tolerations(&module.spec.tolerations),
                version: c.version.clone(),
                config: ModuleConfig {
                    kernel_version: resolved.kernel,
                    container_image: resolved.container_image,
                    // Written out as upstream's NodeModulesConfig CRD defaults it, so an entry
                    // upstream KMM wrote is taken over field for field.
                    image_pull_policy: Some(c.image_pull_policy.unwrap_or(ImagePullPolicy::IfNotPresent)),
                    insecure_pull: resolved.registry_tls.insecure,
                    insecure_skip_tls_verify: resolved.registry_tls.insecure_skip_tls_verify,
                    in_tree_modules_to_remove: resolved.in_tree_modules_to_remove,
                    in_tree_module_to_remove: None,
                    modprobe: c.modprobe.clone(),
                },
            },
        );
    }
    Ok(plan)
}

fn invalid(namespace: &str, name: &str, e: labels::KeyError) -> ValidationErrors {
    ValidationErrors {
        object: format!("Module {namespace}/{name}"),
        errors: vec![validation::FieldError {
            field: "metadata.name".into(),
            reason: e.to_string(),
        }],
    }
}

fn skip_reason(s: &Selection) -> String {
    match s {
        Selection::Cordoned => "the node is cordoned".into(),
        Selection::Untolerated(t) => format!("the node has the taint {t}, which the Module does not tolerate"),
        Selection::NotReady(t) => format!("the node is not ready (taint {t}); nothing is started on it until it is"),
        Selection::VersionLabel { on_node: None } => "the node has no version-module label for this Module".into(),
        Selection::VersionLabel { on_node: Some(v) } => format!(
            "the node's version-module label asks for version {v}, the Module is at another, and the node runs no version of it"
        ),
        Selection::NotMatching | Selection::Targeted => String::new(),
    }
}

/// The Module's `moduleLoader` numbers: matching nodes, nodes that should have it, and nodes
/// where it is loaded with the desired configuration.
pub fn loader_status<'a>(plan: &ModulePlan, loaded: impl Fn(&str) -> Option<&'a NodeModuleStatus>) -> DaemonSetStatus {
    let available = plan
        .entries
        .iter()
        .filter(|(node, want)| {
            loaded(node).is_some_and(|s| s.config.same_load(&want.config) && s.version == want.version)
        })
        .count();
    DaemonSetStatus {
        nodes_matching_selector_number: plan.nodes_matching_selector,
        desired_number: plan.entries.len() as i32,
        available_number: available as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_api::module::{KernelMapping, ModprobeSpec, ModuleLoaderContainerSpec, ModuleLoaderSpec, ModuleSpec};

    fn ctx() -> SpokeContext {
        SpokeContext {
            operator_namespace: "kmm-system".into(),
            worker_service_account: "kmm-worker".into(),
        }
    }

    fn node(name: &str, kernel: &str, labels: &[(&str, &str)]) -> NodeView {
        NodeView {
            name: name.into(),
            labels: labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
            taints: vec![],
            unschedulable: false,
            kernel: kernel.into(),
            boot_id: format!("boot-{name}"),
        }
    }

    fn module(ns: &str) -> Module {
        let mut m = Module::new(
            "kmm-ci-a",
            ModuleSpec {
                module_loader: Some(ModuleLoaderSpec {
                    container: ModuleLoaderContainerSpec {
                        modprobe: ModprobeSpec {
                            module_name: Some("kmm_ci_a".into()),
                            ..Default::default()
                        },
                        kernel_mappings: vec![
                            KernelMapping {
                                literal: Some("6.1.0-28-amd64".into()),
                                container_image: Some("r/kmm-ci-a:debian-${KERNEL_FULL_VERSION}".into()),
                                ..Default::default()
                            },
                            KernelMapping {
                                regexp: Some(r"^5\.14\..*el9".into()),
                                container_image: Some("r/kmm-ci-a:el9-${KERNEL_XYZ}".into()),
                                ..Default::default()
                            },
                        ],
                        ..Default::default()
                    },
                    service_account_name: None,
                }),
                selector: [("role".to_owned(), "worker".to_owned())].into(),
                ..Default::default()
            },
        );
        m.metadata.namespace = Some(ns.into());
        m
    }

    #[test]
    fn a_node_that_is_not_ready_keeps_what_it_runs_and_gets_nothing_new() {
        let m = module("ns");
        let ready = [node("a", "6.1.0-28-amd64", &[("role", "worker")])];
        let before = plan_module(&m, &ready, &BTreeMap::new(), &ctx()).unwrap();
        let not_ready = |n: &str| {
            let mut v = node(n, "6.1.0-28-amd64", &[("role", "worker")]);
            v.taints = vec![k8s_openapi::api::core::v1::Taint {
                key: "node.kubernetes.io/unreachable".into(),
                effect: "NoSchedule".into(),
                ..Default::default()
            }];
            v
        };
        let plan = plan_module(&m, &[not_ready("a"), not_ready("b")], &before.entries, &ctx()).unwrap();
        assert_eq!(
            plan.entries["a"], before.entries["a"],
            "the loaded module stays, unchanged"
        );
        assert!(
            !plan.entries.contains_key("b"),
            "nothing new on a node that is not ready"
        );
        assert!(
            plan.skipped["b"].starts_with("the node is not ready"),
            "{:?}",
            plan.skipped
        );
        assert_eq!(plan.nodes_matching_selector, 2);
        // A cordon on top of it still unloads, as before.
        let mut cordoned = not_ready("a");
        cordoned.unschedulable = true;
        let plan = plan_module(&m, &[cordoned], &before.entries, &ctx()).unwrap();
        assert!(plan.entries.is_empty());
    }

    #[test]
    fn warnings_and_what_this_spoke_does_not_run_are_reported() {
        let mut m = module("ns");
        m.spec.module_loader.as_mut().unwrap().container.kernel_mappings[0].container_image =
            Some("r/kmm-ci-a:v1${KERNEL_FULL_VERSON}".into());
        let nodes = [node("a", "6.1.0-28-amd64", &[("role", "worker")])];
        let plan = plan_module(&m, &nodes, &BTreeMap::new(), &ctx()).unwrap();
        assert_eq!(plan.warnings.len(), 1, "{:?}", plan.warnings);
        assert!(
            plan.warnings[0].contains("${KERNEL_FULL_VERSON}"),
            "{:?}",
            plan.warnings
        );
        // Accepted as upstream accepts it: the variable expands to nothing.
        assert_eq!(plan.entries["a"].config.container_image, "r/kmm-ci-a:v1");
        assert!(plan.unsupported.is_empty());

        let mut m = module("ns");
        m.spec.dra = Some(
            serde_json::from_value(serde_json::json!({
                "driverName": "gpu.example.com", "container": {"image": "r/dra:v1"}
            }))
            .unwrap(),
        );
        let plan = plan_module(&m, &nodes, &BTreeMap::new(), &ctx()).unwrap();
        assert!(plan.warnings.is_empty());
        assert!(plan.unsupported[0].starts_with("spec.dra: kmm-spoke does not run DRA drivers"));
        assert!(plan.entries.contains_key("a"), "the module itself is still loaded");
    }

    #[test]
    fn three_nodes_on_two_kernels_get_their_image() {
        let nodes = [
            node("a", "6.1.0-28-amd64", &[("role", "worker")]),
            node("b", "5.14.0-284.el9.x86_64", &[("role", "worker")]),
            node("c", "6.1.0-28-amd64", &[("role", "worker")]),
            node("d", "6.1.0-28-amd64", &[]),
            node("e", "6.6.0", &[("role", "worker")]),
        ];
        let plan = plan_module(&module("kmm-tests"), &nodes, &BTreeMap::new(), &ctx()).unwrap();
        let images: Vec<_> = plan
            .entries
            .iter()
            .map(|(n, e)| (n.as_str(), e.config.container_image.as_str()))
            .collect();
        assert_eq!(
            images,
            [
                ("a", "r/kmm-ci-a:debian-6.1.0-28-amd64"),
                ("b", "r/kmm-ci-a:el9-5.14.0"),
                ("c", "r/kmm-ci-a:debian-6.1.0-28-amd64")
            ]
        );
        assert_eq!(plan.nodes_matching_selector, 4);
        assert_eq!(plan.skipped["e"], "no kernel mapping matches kernel 6.6.0");
        assert_eq!(
            plan.entries["a"].service_account_name, None,
            "other namespaces use their default SA"
        );
        assert_eq!(plan.entries["a"].config.modprobe.dir_name, "/opt");

        let plan = plan_module(&module("kmm-system"), &nodes, &BTreeMap::new(), &ctx()).unwrap();
        assert_eq!(plan.entries["a"].service_account_name.as_deref(), Some("kmm-worker"));
    }

    #[test]
    fn cordoned_nodes_and_version_labels_are_skipped_with_a_reason() {
        let mut m = module("ns");
        m.spec.module_loader.as_mut().unwrap().container.version = Some("2".into());
        let mut a = node(
            "a",
            "6.1.0-28-amd64",
            &[
                ("role", "worker"),
                ("kmm.node.kubernetes.io/version-module.ns.kmm-ci-a", "2"),
            ],
        );
        let b = node(
            "b",
            "6.1.0-28-amd64",
            &[
                ("role", "worker"),
                ("kmm.node.kubernetes.io/version-module.ns.kmm-ci-a", "1"),
            ],
        );
        let plan = plan_module(&m, &[a.clone(), b.clone()], &BTreeMap::new(), &ctx()).unwrap();
        assert_eq!(plan.entries.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(plan.entries["a"].version.as_deref(), Some("2"));
        assert!(plan.skipped["b"].contains("asks for version 1"));
        a.unschedulable = true;
        let plan = plan_module(&m, &[a, b], &BTreeMap::new(), &ctx()).unwrap();
        assert!(plan.entries.is_empty());
        assert_eq!(plan.skipped["a"], "the node is cordoned");
    }

    #[test]
    fn ordered_upgrade_keeps_what_a_node_labelled_for_another_version_runs() {
        let label = "kmm.node.kubernetes.io/version-module.ns.kmm-ci-a";
        let mut m = module("ns");
        m.spec.module_loader.as_mut().unwrap().container.version = Some("1".into());
        let on = |name: &str, v: Option<&str>| {
            let mut l = vec![("role", "worker")];
            l.extend(v.map(|v| (label, v)));
            node(name, "6.1.0-28-amd64", &l)
        };
        let nodes = [on("a", Some("1")), on("b", Some("1")), on("c", None)];
        let v1 = plan_module(&m, &nodes, &BTreeMap::new(), &ctx()).unwrap();
        assert_eq!(v1.entries.keys().collect::<Vec<_>>(), ["a", "b"]);

        // The Module moves to version 2 with a new image: nothing changes on a and b.
        let c = &mut m.spec.module_loader.as_mut().unwrap().container;
        c.version = Some("2".into());
        c.kernel_mappings[0].container_image = Some("r/kmm-ci-a:v2".into());
        let plan = plan_module(&m, &nodes, &v1.entries, &ctx()).unwrap();
        assert_eq!(plan.entries, v1.entries, "every node keeps version 1");
        assert_eq!(plan.kept.values().collect::<Vec<_>>(), ["1", "1"]);
        assert!(plan.skipped["c"].contains("no version-module label"));

        // b is relabelled for 2: only b moves.
        let nodes = [on("a", Some("1")), on("b", Some("2")), on("c", None)];
        let plan = plan_module(&m, &nodes, &v1.entries, &ctx()).unwrap();
        assert_eq!(plan.entries["a"], v1.entries["a"]);
        assert_eq!(plan.entries["b"].version.as_deref(), Some("2"));
        assert_eq!(plan.entries["b"].config.container_image, "r/kmm-ci-a:v2");
        // Its label removed: b runs nothing (the node controller unloads after the plugin left).
        let nodes = [on("a", Some("1")), on("b", None)];
        let plan = plan_module(&m, &nodes, &v1.entries, &ctx()).unwrap();
        assert_eq!(plan.entries.keys().collect::<Vec<_>>(), ["a"]);
    }

    #[test]
    fn an_unresolvable_mapping_keeps_the_current_entry() {
        let with_image = |image: &str| {
            let mut m = module("ns");
            m.spec.module_loader.as_mut().unwrap().container.kernel_mappings = vec![KernelMapping {
                regexp: Some(".*".into()),
                container_image: Some(image.into()),
                ..Default::default()
            }];
            m
        };
        // A kernel without three components gets no image (as upstream): an error at resolve
        // time, for a node that already runs the module too.
        let before = [node("a", "6.1.0", &[("role", "worker")])];
        let good = plan_module(
            &with_image("r/m:${KERNEL_FULL_VERSION}"),
            &before,
            &BTreeMap::new(),
            &ctx(),
        )
        .unwrap();
        assert_eq!(good.entries["a"].config.container_image, "r/m:6.1.0");
        let nodes = [node("a", "rolling", &[("role", "worker")])];
        let plan = plan_module(&with_image("r/m:${KERNEL_XYZ}"), &nodes, &good.entries, &ctx()).unwrap();
        assert!(plan.skipped["a"].starts_with("kernel rolling: "), "{:?}", plan.skipped);
        assert_eq!(plan.entries["a"], good.entries["a"], "the loaded module stays");
        let fresh = plan_module(&with_image("r/m:${KERNEL_XYZ}"), &nodes, &BTreeMap::new(), &ctx()).unwrap();
        assert!(
            fresh.entries.is_empty(),
            "nothing new is loaded from an unresolvable mapping"
        );
    }

    #[test]
    fn entries_carry_the_internal_tolerations() {
        let nodes = [node("a", "6.1.0-28-amd64", &[("role", "worker")])];
        let plan = plan_module(&module("ns"), &nodes, &BTreeMap::new(), &ctx()).unwrap();
        let keys: Vec<_> = plan.entries["a"]
            .tolerations
            .iter()
            .filter_map(|t| t.key.as_deref())
            .collect();
        assert_eq!(
            keys,
            [
                "node.kubernetes.io/disk-pressure",
                "node.kubernetes.io/memory-pressure",
                "node.kubernetes.io/pid-pressure"
            ]
        );
    }

    #[test]
    fn invalid_modules_and_hub_sections() {
        let mut m = module("ns");
        m.spec.module_loader.as_mut().unwrap().container.kernel_mappings[1].regexp = Some("(".into());
        let err = plan_module(&m, &[], &BTreeMap::new(), &ctx()).unwrap_err();
        assert!(
            err.to_string()
                .contains("kernelMappings[1].regexp: \"(\" is not a valid regular expression"),
            "{err}"
        );

        let mut m = module("ns");
        m.spec.module_loader.as_mut().unwrap().container.kernel_mappings[0].build = Some(shared_api::module::Build {
            dockerfile_config_map: Some(k8s_openapi::api::core::v1::LocalObjectReference { name: "df".into() }),
            ..Default::default()
        });
        let plan = plan_module(&m, &[], &BTreeMap::new(), &ctx()).unwrap();
        assert_eq!(plan.needs_hub, ["spec.moduleLoader.container.kernelMappings[0]"]);
    }

    #[test]
    fn status_counts_only_current_loads() {
        let nodes = [
            node("a", "6.1.0-28-amd64", &[("role", "worker")]),
            node("b", "6.1.0-28-amd64", &[("role", "worker")]),
        ];
        let plan = plan_module(&module("ns"), &nodes, &BTreeMap::new(), &ctx()).unwrap();
        let current = NodeModuleStatus {
            name: "kmm-ci-a".into(),
            namespace: "ns".into(),
            config: plan.entries["a"].config.clone(),
            ..Default::default()
        };
        let mut stale = current.clone();
        stale.config.container_image = "r/old:tag".into();
        let s = loader_status(&plan, |n| match n {
            "a" => Some(&current),
            "b" => Some(&stale),
            _ => None,
        });
        assert_eq!(
            s,
            DaemonSetStatus {
                nodes_matching_selector_number: 2,
                desired_number: 2,
                available_number: 1
            }
        );
    }
}
