//! The image plan of one ManagedClusterModule: which clusters it selects, which kernels they run,
//! and the distinct kmod images those kernels need, deduplicated by final image reference.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use shared_api::image::ImageRef;
use shared_api::mapping::{Mappings, ResolvedMapping};
use shared_api::mcm::ManagedClusterModule;
use shared_api::module::{Build, Sign, TlsOptions};
use shared_api::ocm::ManagedCluster;

/// What one distinct image needs from the pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageNeed {
    /// The final reference (variables substituted), as written in the spec.
    pub image: String,
    /// The first kernel (in sorted order) that maps to this image: its build gets the kernel's
    /// build arguments.
    pub kernel: String,
    /// Build recipe when the image may be built.
    pub build: Option<Build>,
    /// Signing recipe (substituted) when the image must be signed.
    pub sign: Option<Sign>,
    /// TLS options for the image's registry.
    pub tls: TlsOptions,
    /// Name of the Secret (hub operator namespace) with the registry credentials.
    pub pull_secret: Option<String>,
}

impl ImageNeed {
    /// Whether the reference already names a digest: nothing to look up, build or sign.
    pub fn is_pinned(&self) -> bool {
        ImageRef::parse(&self.image).digest.is_some()
    }
}

/// The image a kernel gets on every cluster running it.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelImage {
    /// The kernel (normalised).
    pub kernel: String,
    /// The image reference (variables substituted).
    pub image: String,
    /// TLS options the spoke's pull needs.
    pub tls: TlsOptions,
    /// In-tree modules the spoke removes first.
    pub in_tree_modules_to_remove: Vec<String>,
}

/// How one kernel resolved.
#[derive(Debug, Clone, PartialEq)]
pub enum KernelResolution {
    /// A mapping matched.
    Mapped(KernelImage),
    /// No mapping matches the kernel: the cluster's nodes on it get nothing.
    Unmapped,
    /// The matching mapping cannot be used (bad variable, no image).
    Error(String),
}

/// One selected cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterPlan {
    /// ManagedCluster name (also the ManifestWork's namespace).
    pub name: String,
    /// Kernels from the claim, sorted and distinct; `None` when the cluster has no claim yet.
    pub kernels: Option<Vec<String>>,
}

/// The whole plan of one MCM.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct McmPlan {
    /// Selected clusters, by name.
    pub clusters: Vec<ClusterPlan>,
    /// Every kernel of the selected clusters and how it resolved.
    pub kernels: BTreeMap<String, KernelResolution>,
    /// Distinct images by final reference.
    pub images: BTreeMap<String, ImageNeed>,
    /// Why nothing can be planned at all (a regexp that does not compile).
    pub error: Option<String>,
}

/// Whether `cluster`'s labels contain every pair of `selector` (an empty selector selects all,
/// as a Kubernetes label selector does).
pub fn selects(selector: &BTreeMap<String, String>, cluster: &ManagedCluster) -> bool {
    let labels = cluster.metadata.labels.as_ref();
    selector
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)).is_some_and(|have| have == v))
}

/// Plans `mcm` over the known clusters. Clusters being deleted are not selected.
pub fn plan(mcm: &ManagedClusterModule, clusters: &[Arc<ManagedCluster>]) -> McmPlan {
    let mut out = McmPlan::default();
    let mut all_kernels = BTreeSet::new();
    for c in clusters {
        if c.metadata.deletion_timestamp.is_some() || !selects(&mcm.spec.selector, c) {
            continue;
        }
        let kernels = c.kernel_versions().map(|k| {
            let set: BTreeSet<String> = k
                .iter()
                .map(|k| shared_api::kernel::release(k).to_owned())
                .filter(|k| !k.is_empty())
                .collect();
            set.into_iter().collect::<Vec<_>>()
        });
        if let Some(k) = &kernels {
            all_kernels.extend(k.iter().cloned());
        }
        out.clusters.push(ClusterPlan {
            name: c.metadata.name.clone().unwrap_or_default(),
            kernels,
        });
    }
    out.clusters.sort_by(|a, b| a.name.cmp(&b.name));

    let name = mcm.metadata.name.as_deref().unwrap_or_default();
    let namespace = mcm.spec.spoke_namespace.as_str();
    let spec = &mcm.spec.module_spec;
    let Some(loader) = &spec.module_loader else {
        // A device-plugin-only Module needs no kmod image.
        return out;
    };
    let mappings = match Mappings::compile(&loader.container) {
        Ok(m) => m,
        Err(e) => {
            out.error = Some(format!("spec.moduleSpec.moduleLoader.container.{e}"));
            return out;
        }
    };
    let pull_secret = spec
        .image_repo_secret
        .as_ref()
        .map(|s| s.name.clone())
        .filter(|s| !s.is_empty());
    for kernel in all_kernels {
        let resolution = match mappings.resolve(&kernel, name, namespace) {
            Ok(None) => KernelResolution::Unmapped,
            Err(e) => KernelResolution::Error(format!("spec.moduleSpec.moduleLoader.container.{e}")),
            Ok(Some(r)) => {
                add_image(&mut out.images, &r, pull_secret.as_deref());
                KernelResolution::Mapped(KernelImage {
                    kernel: r.kernel,
                    image: r.container_image,
                    tls: r.registry_tls,
                    in_tree_modules_to_remove: r.in_tree_modules_to_remove,
                })
            }
        };
        out.kernels.insert(kernel, resolution);
    }
    out
}

fn add_image(images: &mut BTreeMap<String, ImageNeed>, r: &ResolvedMapping, pull_secret: Option<&str>) {
    // Kernels arrive sorted, so the first kernel seen for an image is the smallest.
    images.entry(r.container_image.clone()).or_insert_with(|| ImageNeed {
        image: r.container_image.clone(),
        kernel: r.kernel.clone(),
        build: r.build.clone(),
        sign: r.sign.clone(),
        tls: r.registry_tls,
        pull_secret: pull_secret.map(str::to_owned),
    });
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use shared_api::mcm::ManagedClusterModuleSpec;
    use shared_api::module::{KernelMapping, ModuleLoaderContainerSpec, ModuleLoaderSpec, ModuleSpec};
    use shared_api::ocm::{KERNEL_VERSIONS_CLAIM, ManagedClusterClaim, ManagedClusterSpec, ManagedClusterStatus};

    pub(crate) fn cluster(name: &str, labels: &[(&str, &str)], kernels: Option<&[&str]>) -> Arc<ManagedCluster> {
        let mut c = ManagedCluster::new(
            name,
            ManagedClusterSpec {
                hub_accepts_client: true,
                ..Default::default()
            },
        );
        c.metadata.labels = Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        c.status = Some(ManagedClusterStatus {
            cluster_claims: kernels
                .map(|k| {
                    vec![ManagedClusterClaim {
                        name: KERNEL_VERSIONS_CLAIM.into(),
                        value: k.join("\n"),
                    }]
                })
                .unwrap_or_default(),
            ..Default::default()
        });
        Arc::new(c)
    }

    pub(crate) fn mcm(mappings: Vec<KernelMapping>) -> ManagedClusterModule {
        let mut m = ManagedClusterModule::new(
            "kmm-ci",
            ManagedClusterModuleSpec {
                module_spec: ModuleSpec {
                    module_loader: Some(ModuleLoaderSpec {
                        container: ModuleLoaderContainerSpec {
                            modprobe: shared_api::module::ModprobeSpec {
                                module_name: Some("kmm_ci_a".into()),
                                ..Default::default()
                            },
                            kernel_mappings: mappings,
                            ..Default::default()
                        },
                        service_account_name: None,
                    }),
                    selector: [("kmm".to_string(), "yes".to_string())].into(),
                    ..Default::default()
                },
                spoke_namespace: "kmm-ci".into(),
                selector: [("env".to_string(), "prod".to_string())].into(),
            },
        );
        m.metadata.uid = Some("uid-1".into());
        m.metadata.generation = Some(3);
        m
    }

    pub(crate) fn regexp(re: &str, image: &str) -> KernelMapping {
        KernelMapping {
            regexp: Some(re.into()),
            container_image: Some(image.into()),
            ..Default::default()
        }
    }

    #[test]
    fn selects_by_labels_and_dedupes_images_across_the_fleet() {
        let m = mcm(vec![regexp(
            "^6\\.",
            "reg.local/kmm/${MOD_NAME}:${KERNEL_FULL_VERSION}",
        )]);
        let mut clusters = Vec::new();
        for i in 0..500 {
            let k = ["6.1.0-1", "6.1.0-2", "6.1.0-3+"][i % 3];
            clusters.push(cluster(&format!("c{i:03}"), &[("env", "prod")], Some(&[k])));
        }
        clusters.push(cluster("staging", &[("env", "staging")], Some(&["6.1.0-9"])));
        clusters.push(cluster("unclaimed", &[("env", "prod")], None));
        let p = plan(&m, &clusters);
        assert_eq!(p.clusters.len(), 501, "500 on prod plus the unclaimed one");
        assert!(p.clusters.iter().all(|c| c.name != "staging"));
        assert_eq!(p.clusters.iter().find(|c| c.name == "unclaimed").unwrap().kernels, None);
        assert_eq!(p.images.len(), 3, "500 clusters on 3 kernels need 3 images");
        assert_eq!(
            p.images.keys().cloned().collect::<Vec<_>>(),
            [
                "reg.local/kmm/kmm-ci:6.1.0-1",
                "reg.local/kmm/kmm-ci:6.1.0-2",
                "reg.local/kmm/kmm-ci:6.1.0-3_"
            ]
        );
        // The kernel stays as the node reports it; templates get it normalised, as upstream.
        assert!(p.kernels.contains_key("6.1.0-3+"));
    }

    #[test]
    fn same_image_for_many_kernels_is_one_image_built_for_the_smallest_kernel() {
        let m = mcm(vec![regexp(".*", "reg.local/kmm/all:v1")]);
        let clusters = vec![cluster("a", &[("env", "prod")], Some(&["6.2.0", "6.1.0"]))];
        let p = plan(&m, &clusters);
        assert_eq!(p.images.len(), 1);
        assert_eq!(p.images["reg.local/kmm/all:v1"].kernel, "6.1.0");
        assert_eq!(p.kernels.len(), 2);
    }

    #[test]
    fn unmapped_kernels_and_bad_substitutions_are_reported_per_kernel() {
        let m = mcm(vec![
            regexp("^6\\.1", "reg.local/kmm/m:${KERNEL_FULL_VERSION}"),
            regexp("^6\\.2", "reg.local/kmm/m:${NO_SUCH}"),
        ]);
        let clusters = vec![cluster("a", &[("env", "prod")], Some(&["6.1.0", "6.2.0", "5.14.0"]))];
        let p = plan(&m, &clusters);
        assert_eq!(p.kernels["5.14.0"], KernelResolution::Unmapped);
        match &p.kernels["6.2.0"] {
            KernelResolution::Error(e) => assert!(e.contains("kernelMappings[1].containerImage"), "{e}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(p.images.len(), 1);
    }

    #[test]
    fn a_bad_regexp_stops_the_plan_with_the_field() {
        let m = mcm(vec![regexp("([", "reg.local/kmm/m:v1")]);
        let clusters = vec![cluster("a", &[("env", "prod")], Some(&["6.1.0"]))];
        let p = plan(&m, &clusters);
        let e = p.error.unwrap();
        assert!(e.contains("kernelMappings[0].regexp"), "{e}");
        assert!(p.images.is_empty());
    }

    #[test]
    fn empty_selector_selects_every_cluster() {
        let mut m = mcm(vec![regexp(".*", "reg.local/kmm/m:v1")]);
        m.spec.selector.clear();
        let clusters = vec![cluster("a", &[], Some(&["6.1.0"])), cluster("b", &[("x", "y")], None)];
        assert_eq!(plan(&m, &clusters).clusters.len(), 2);
    }
}
