//! What each selected cluster gets this round, and the MCM status that says so.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::jiff::Timestamp;
use shared_api::conditions::{self, Wanted};
use shared_api::mcm::{ClusterModuleStatus, KernelImageStatus, ManagedClusterModule, ManagedClusterModuleStatus};
use shared_api::module::DaemonSetStatus;
use shared_api::ocm::{KERNEL_VERSIONS_CLAIM, ManifestWork};

use super::images::{ClusterPlan, KernelImage, KernelResolution, McmPlan};
use super::render::{PinnedKernel, rendered_literals};

/// Where an image stands in the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ImageState {
    /// Not looked up yet, or being looked up.
    Pending,
    /// Exists; pinned to its digest.
    Ready,
    /// The last re-resolution failed; the last known digest is still rendered.
    Stale,
    /// Not in the registry and nothing can make it.
    Missing,
    /// A build pod is running.
    Building,
    /// Being signed.
    Signing,
    /// A lookup, build or signature failed; see the message.
    Failed,
}

impl ImageState {
    /// Every state, for metrics.
    pub const ALL: [ImageState; 7] = [
        Self::Pending,
        Self::Ready,
        Self::Stale,
        Self::Missing,
        Self::Building,
        Self::Signing,
        Self::Failed,
    ];

    /// The name shown in the status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Ready => "Ready",
            Self::Stale => "Stale",
            Self::Missing => "Missing",
            Self::Building => "Building",
            Self::Signing => "Signing",
            Self::Failed => "Failed",
        }
    }

    /// Whether the administrator must act (as opposed to waiting).
    pub fn is_problem(self) -> bool {
        matches!(self, Self::Missing | Self::Failed | Self::Stale)
    }

    /// Whether work is under way.
    pub fn in_progress(self) -> bool {
        matches!(self, Self::Pending | Self::Building | Self::Signing)
    }
}

impl fmt::Display for ImageState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the pipeline knows about one image.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageView {
    /// Its state.
    pub state: ImageState,
    /// `repo@sha256:...` once known (also while `Stale`).
    pub pinned: Option<String>,
    /// Detail for a person.
    pub message: Option<String>,
}

impl ImageView {
    /// Not known yet.
    pub fn pending() -> Self {
        Self {
            state: ImageState::Pending,
            pinned: None,
            message: None,
        }
    }
}

/// What one cluster gets this round.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterWork<'a> {
    /// The plan of the cluster.
    pub cluster: &'a ClusterPlan,
    /// Kernels with a pinned image.
    pub pinned: Vec<PinnedKernel<'a>>,
    /// Whether a ManifestWork should be rendered: only when every kernel of the cluster that a
    /// mapping selects has a pinned image. Otherwise the last applied ManifestWork stays as it
    /// is (a Module with fewer kernels would unload the module from the others' nodes).
    pub render: bool,
    /// Why the ManifestWork is held at its last applied content, when it is.
    pub held: Option<String>,
    /// Problems that need the administrator.
    pub problems: Vec<String>,
    /// Things still under way, or facts worth showing (an unmapped kernel).
    pub notes: Vec<String>,
}

/// Decides what `cluster` gets from the plan and the image states.
pub fn cluster_work<'a>(
    mcm: &ManagedClusterModule,
    plan: &'a McmPlan,
    cluster: &'a ClusterPlan,
    images: &'a BTreeMap<String, ImageView>,
) -> ClusterWork<'a> {
    let mut w = ClusterWork {
        cluster,
        pinned: Vec::new(),
        render: false,
        held: None,
        problems: Vec::new(),
        notes: Vec::new(),
    };
    let Some(kernels) = &cluster.kernels else {
        w.problems.push(format!(
            "no {KERNEL_VERSIONS_CLAIM} ClusterClaim yet (is kmm-spoke running there in managed mode?)"
        ));
        return w;
    };
    if mcm.spec.module_spec.module_loader.is_none() {
        w.render = true;
        return w;
    }
    if let Some(e) = &plan.error {
        w.problems.push(e.clone());
        return w;
    }
    // Kernels that hold the ManifestWork back: mapped, but without a pinned image yet, or whose
    // mapping cannot be used.
    let mut holding: Vec<String> = Vec::new();
    for k in kernels {
        match plan.kernels.get(k) {
            None | Some(KernelResolution::Unmapped) => w.notes.push(format!("kernel {k}: no kernelMapping matches")),
            Some(KernelResolution::Error(e)) => {
                w.problems.push(format!("kernel {k}: {e}"));
                holding.push(format!("kernel {k} (its mapping cannot be used)"));
            }
            Some(KernelResolution::Mapped(ki)) => {
                let view = images.get(&ki.image);
                let (state, message) = view.map_or((ImageState::Pending, None), |v| (v.state, v.message.as_deref()));
                match view.and_then(|v| v.pinned.as_deref()) {
                    Some(pinned) => w.pinned.push(PinnedKernel { kernel: ki, pinned }),
                    None => holding.push(format!("image {} (kernel {}) is {state}", ki.image, ki.kernel)),
                }
                if state != ImageState::Ready {
                    let line = image_line(ki, state, message);
                    // A registry blip (Stale: the last digest still rendered) is worth showing,
                    // but nothing is wrong with the cluster.
                    if state.is_problem() && state != ImageState::Stale {
                        w.problems.push(line);
                    } else {
                        w.notes.push(line);
                    }
                }
            }
        }
    }
    if holding.is_empty() {
        // Every mapped kernel is pinned. With none mapped there is nothing to send.
        w.render = !w.pinned.is_empty();
    } else {
        w.held = Some(format!(
            "the ManifestWork keeps its last applied content until every kernel has an image: {}",
            holding.join(", ")
        ));
    }
    w
}

fn image_line(ki: &KernelImage, state: ImageState, message: Option<&str>) -> String {
    match message {
        Some(m) => format!("kernel {}: image {} is {state}: {m}", ki.kernel, ki.image),
        None => format!("kernel {}: image {} is {state}", ki.kernel, ki.image),
    }
}

/// Reads the spoke Module's numbers back from a ManifestWork's status feedback.
fn feedback(mw: &ManifestWork, mcm: &ManagedClusterModule, prefix: &str) -> Option<DaemonSetStatus> {
    let status = mw.status.as_ref()?;
    let name = mcm.metadata.name.as_deref().unwrap_or_default();
    let kind = "Module";
    let ns = mcm.spec.spoke_namespace.as_str();
    let get = |v: &str| status.feedback_integer(kind, ns, name, &format!("{prefix}.{v}"));
    let available = get("availableNumber");
    let desired = get("desiredNumber");
    let matching = get("nodesMatchingSelectorNumber");
    if available.is_none() && desired.is_none() && matching.is_none() {
        return None;
    }
    let int = |v: Option<i64>| v.unwrap_or(0).clamp(0, i32::MAX.into()) as i32;
    Some(DaemonSetStatus {
        nodes_matching_selector_number: int(matching),
        desired_number: int(desired),
        available_number: int(available),
    })
}

/// Why the work agent did not apply a ManifestWork, from its conditions.
fn apply_problem(mw: &ManifestWork) -> Option<String> {
    let status = mw.status.as_ref()?;
    let failed = |t: &str, bad: &str| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == t && c.status == bad)
            .map(|c| format!("ManifestWork {t}={bad}: {} {}", c.reason, c.message))
    };
    failed("Applied", "False").or_else(|| failed("Degraded", "True"))
}

/// Computes the MCM status. `works` holds the existing ManifestWorks by cluster; `Kind` in the
/// condition messages lists at most a few problems, the per-cluster entries carry them all.
///
/// The numbers mean what upstream KMM-Hub's mean: `numberDesired` counts the ManifestWorks the
/// MCM owns (after this round: those of selected clusters that have one or get one now),
/// `numberApplied` and `numberDegraded` those whose `Applied` / `Degraded` condition is true.
/// Problems the hub sees before a ManifestWork (no claim, a failed build) are in
/// `clusters[].reason` and the `Degraded` condition.
pub fn mcm_status(
    mcm: &ManagedClusterModule,
    plan: &McmPlan,
    work: &[ClusterWork<'_>],
    images: &BTreeMap<String, ImageView>,
    works: &BTreeMap<String, &ManifestWork>,
    previous: Option<&ManagedClusterModuleStatus>,
    now: Timestamp,
) -> ManagedClusterModuleStatus {
    let mut status = ManagedClusterModuleStatus {
        number_desired: 0,
        observed_generation: mcm.metadata.generation,
        conditions: previous.map(|p| p.conditions.clone()).unwrap_or_default(),
        ..Default::default()
    };
    for (kernel, r) in &plan.kernels {
        if let KernelResolution::Mapped(ki) = r {
            let v = images.get(&ki.image).cloned().unwrap_or_else(ImageView::pending);
            status.images.push(KernelImageStatus {
                kernel_version: kernel.clone(),
                image: ki.image.clone(),
                pinned: v.pinned,
                state: v.state.to_string(),
                message: v.message,
            });
        }
    }
    let mut problems = Vec::new();
    let mut unapplied = 0;
    // Selected clusters whose ManifestWork is applied (the Available condition wants them all).
    let mut applied_clusters = 0;
    for w in work {
        let name = &w.cluster.name;
        let mw = works.get(name).copied();
        let applied = mw.is_some_and(|m| m.status.as_ref().is_some_and(|s| s.condition_true("Applied")));
        let mut cluster_problems = w.problems.clone();
        if let Some(p) = mw.and_then(apply_problem) {
            cluster_problems.push(p);
        }
        let owned = mw.is_some_and(|m| m.metadata.deletion_timestamp.is_none()) || w.render;
        if owned {
            status.number_desired += 1;
        }
        if applied {
            status.number_applied += 1;
            applied_clusters += 1;
        } else if w.render {
            unapplied += 1;
        }
        if mw.is_some_and(|m| m.status.as_ref().is_some_and(|s| s.condition_true("Degraded"))) {
            status.number_degraded += 1;
        }
        if !cluster_problems.is_empty() {
            problems.push(format!("{name}: {}", cluster_problems[0]));
        }
        let mut reason: Vec<String> = cluster_problems;
        reason.extend(w.held.iter().cloned());
        reason.extend(w.notes.iter().cloned());
        // What the cluster has: this round's rendering, or, while held, the last applied one.
        let rendered_kernels = if w.render {
            w.pinned.iter().map(|p| p.kernel.kernel.clone()).collect()
        } else {
            mw.map(rendered_literals).unwrap_or_default()
        };
        status.clusters.push(ClusterModuleStatus {
            name: name.clone(),
            kernels: w.cluster.kernels.clone().unwrap_or_default(),
            applied,
            rendered_kernels,
            reason: (!reason.is_empty()).then(|| reason.join("; ")),
            module_loader: mw.and_then(|m| feedback(m, mcm, "moduleLoader")),
            device_plugin: mw.and_then(|m| feedback(m, mcm, "devicePlugin")),
        });
    }
    let generation = mcm.metadata.generation;
    let building = status
        .images
        .iter()
        .filter(|i| matches!(i.state.as_str(), "Pending" | "Building" | "Signing"))
        .count();
    let summary = |mut p: Vec<String>| {
        let more = p.len().saturating_sub(3);
        p.truncate(3);
        let mut s = p.join("; ");
        if more > 0 {
            s.push_str(&format!("; and {more} more (see status.clusters)"));
        }
        s
    };
    let degraded = match &plan.error {
        Some(e) => Some(("InvalidSpec", e.clone())),
        None if !problems.is_empty() => Some(("ClustersDegraded", summary(problems))),
        None => None,
    };
    let (d_status, d_reason, d_msg) = match &degraded {
        Some((r, m)) => (true, *r, m.clone()),
        None => (false, "AsExpected", "no problems".to_owned()),
    };
    conditions::set(
        &mut status.conditions,
        Wanted {
            type_: conditions::DEGRADED,
            status: d_status,
            reason: d_reason,
            message: d_msg,
        },
        generation,
        now,
    );
    let progressing = building > 0 || unapplied > 0;
    conditions::set(
        &mut status.conditions,
        Wanted {
            type_: conditions::PROGRESSING,
            status: progressing,
            reason: if building > 0 {
                "ImagesInProgress"
            } else if unapplied > 0 {
                "WaitingForWorkAgents"
            } else {
                "Idle"
            },
            message: format!(
                "{building} image(s) being looked up, built or signed; {unapplied} ManifestWork(s) not applied yet"
            ),
        },
        generation,
        now,
    );
    let selected = work.len();
    let available = degraded.is_none() && selected > 0 && applied_clusters == selected;
    conditions::set(
        &mut status.conditions,
        Wanted {
            type_: conditions::AVAILABLE,
            status: available,
            reason: if available {
                "AllClustersApplied"
            } else if selected == 0 {
                "NoClustersSelected"
            } else {
                "NotAllClustersApplied"
            },
            message: format!("{applied_clusters} of {selected} selected cluster(s) applied"),
        },
        generation,
        now,
    );
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::images::plan;
    use crate::plan::images::tests::{cluster, mcm, regexp};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use shared_api::ocm::{
        FeedbackValue, FieldValue, ManifestCondition, ManifestResourceMeta, ManifestResourceStatus, ManifestWorkStatus,
        StatusFeedback,
    };

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    fn ready(pinned: &str) -> ImageView {
        ImageView {
            state: ImageState::Ready,
            pinned: Some(pinned.into()),
            message: None,
        }
    }

    fn applied_work(available: i64) -> ManifestWork {
        let mut mw = ManifestWork::new("kmm-ci", Default::default());
        let cond = |t: &str| Condition {
            type_: t.into(),
            status: "True".into(),
            reason: "AppliedManifestWorkComplete".into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: Time(now()),
        };
        let int = |name: &str, v: i64| FeedbackValue {
            name: name.into(),
            field_value: FieldValue {
                type_: "Integer".into(),
                integer: Some(v),
                ..Default::default()
            },
        };
        mw.status = Some(ManifestWorkStatus {
            conditions: vec![cond("Applied"), cond("Available")],
            resource_status: ManifestResourceStatus {
                manifests: vec![ManifestCondition {
                    resource_meta: ManifestResourceMeta {
                        kind: "Module".into(),
                        name: "kmm-ci".into(),
                        namespace: "kmm-ci".into(),
                        ..Default::default()
                    },
                    status_feedback: StatusFeedback {
                        values: vec![
                            int("moduleLoader.availableNumber", available),
                            int("moduleLoader.desiredNumber", 2),
                            int("moduleLoader.nodesMatchingSelectorNumber", 3),
                        ],
                        ..Default::default()
                    },
                    ..Default::default()
                }],
                ..Default::default()
            },
            ..Default::default()
        });
        mw
    }

    #[test]
    fn ready_images_render_and_feedback_comes_back() {
        let m = mcm(vec![regexp(".*", "reg.local/kmm/m:${KERNEL_FULL_VERSION}")]);
        let clusters = vec![
            cluster("a", &[("env", "prod")], Some(&["6.1.0"])),
            cluster("b", &[("env", "prod")], Some(&["6.1.0", "6.2.0"])),
        ];
        let p = plan(&m, &clusters);
        let images: BTreeMap<_, _> = [
            ("reg.local/kmm/m:6.1.0".to_string(), ready("reg.local/kmm/m@sha256:1")),
            (
                "reg.local/kmm/m:6.2.0".to_string(),
                ImageView {
                    state: ImageState::Building,
                    pinned: None,
                    message: Some("pod kmm-build-x".into()),
                },
            ),
        ]
        .into();
        let work: Vec<_> = p.clusters.iter().map(|c| cluster_work(&m, &p, c, &images)).collect();
        assert!(work[0].render);
        // b's 6.1.0 is pinned, but 6.2.0 waits for its build: b's ManifestWork is held as a whole.
        assert!(
            !work[1].render,
            "a cluster never gets a Module with only some of its kernels"
        );
        assert_eq!(work[1].pinned.len(), 1);
        assert!(work[1].problems.is_empty());
        assert!(work[1].notes[0].contains("Building"));
        let held = work[1].held.as_deref().unwrap();
        assert!(
            held.contains("reg.local/kmm/m:6.2.0 (kernel 6.2.0) is Building"),
            "{held}"
        );

        let a = applied_work(2);
        let works: BTreeMap<_, _> = [("a".to_string(), &a)].into();
        let s = mcm_status(&m, &p, &work, &images, &works, None, now());
        // Upstream's numbers: a's ManifestWork is owned and applied; b has none yet.
        assert_eq!((s.number_desired, s.number_applied, s.number_degraded), (1, 1, 0));
        assert_eq!(
            s.clusters[0].module_loader,
            Some(DaemonSetStatus {
                nodes_matching_selector_number: 3,
                desired_number: 2,
                available_number: 2
            })
        );
        assert_eq!(s.images.len(), 2);
        assert!(
            s.clusters[1]
                .reason
                .as_deref()
                .unwrap()
                .contains("keeps its last applied content")
        );
        assert!(conditions::is_true(&s.conditions, conditions::PROGRESSING));
        assert!(!conditions::is_true(&s.conditions, conditions::AVAILABLE));
        assert!(!conditions::is_true(&s.conditions, conditions::DEGRADED));
    }

    #[test]
    fn missing_claim_and_failed_image_degrade_with_reasons() {
        let m = mcm(vec![regexp(".*", "reg.local/kmm/m:${KERNEL_FULL_VERSION}")]);
        let clusters = vec![
            cluster("a", &[("env", "prod")], None),
            cluster("b", &[("env", "prod")], Some(&["6.1.0"])),
        ];
        let p = plan(&m, &clusters);
        let images: BTreeMap<_, _> = [(
            "reg.local/kmm/m:6.1.0".to_string(),
            ImageView {
                state: ImageState::Failed,
                pinned: None,
                message: Some("registry 127.0.0.1:1: connection refused".into()),
            },
        )]
        .into();
        let work: Vec<_> = p.clusters.iter().map(|c| cluster_work(&m, &p, c, &images)).collect();
        assert!(work.iter().all(|w| !w.render));
        let s = mcm_status(&m, &p, &work, &images, &BTreeMap::new(), None, now());
        // No ManifestWork was sent: upstream's numbers are all 0, the reasons and the condition
        // say why.
        assert_eq!((s.number_desired, s.number_applied, s.number_degraded), (0, 0, 0));
        assert!(s.clusters[0].reason.as_ref().unwrap().contains(KERNEL_VERSIONS_CLAIM));
        assert!(s.clusters[1].reason.as_ref().unwrap().contains("connection refused"));
        let d = s.conditions.iter().find(|c| c.type_ == "Degraded").unwrap();
        assert_eq!((d.status.as_str(), d.reason.as_str()), ("True", "ClustersDegraded"));
        assert!(d.message.contains("connection refused"), "{}", d.message);
    }

    #[test]
    fn a_held_cluster_shows_what_it_last_got() {
        let m = mcm(vec![regexp(".*", "reg.local/kmm/m:${KERNEL_FULL_VERSION}")]);
        let clusters = vec![cluster("a", &[("env", "prod")], Some(&["6.1.0", "6.2.0"]))];
        let p = plan(&m, &clusters);
        let both: BTreeMap<_, _> = [
            ("reg.local/kmm/m:6.1.0".to_string(), ready("reg.local/kmm/m@sha256:1")),
            ("reg.local/kmm/m:6.2.0".to_string(), ready("reg.local/kmm/m@sha256:2")),
        ]
        .into();
        let w = cluster_work(&m, &p, &p.clusters[0], &both);
        assert!(w.render && w.held.is_none());
        let last = crate::plan::render::manifest_work(&m, "a", &w.pinned);
        assert_eq!(rendered_literals(&last), ["6.1.0", "6.2.0"]);

        // After a restart only 6.1.0 is known yet: held, and the status shows both kernels.
        let one: BTreeMap<_, _> = [("reg.local/kmm/m:6.1.0".to_string(), ready("reg.local/kmm/m@sha256:1"))].into();
        let w = cluster_work(&m, &p, &p.clusters[0], &one);
        assert!(!w.render);
        assert!(w.held.as_deref().unwrap().contains("6.2.0) is Pending"));
        let works: BTreeMap<_, _> = [("a".to_string(), &last)].into();
        let s = mcm_status(&m, &p, &[w], &one, &works, None, now());
        assert_eq!(s.clusters[0].rendered_kernels, ["6.1.0", "6.2.0"]);

        // A failed re-build keeps its last pin: the cluster keeps being rendered with it.
        let mut failed = both.clone();
        failed.insert(
            "reg.local/kmm/m:6.2.0".to_string(),
            ImageView {
                state: ImageState::Failed,
                pinned: Some("reg.local/kmm/m@sha256:2".into()),
                message: Some("build pod failed".into()),
            },
        );
        let w = cluster_work(&m, &p, &p.clusters[0], &failed);
        assert!(w.render);
        assert_eq!(w.pinned.len(), 2);
        assert!(w.problems[0].contains("Failed"));
    }

    #[test]
    fn all_applied_is_available() {
        let m = mcm(vec![regexp(".*", "reg.local/kmm/m:v1")]);
        let clusters = vec![cluster("a", &[("env", "prod")], Some(&["6.1.0"]))];
        let p = plan(&m, &clusters);
        let images: BTreeMap<_, _> = [("reg.local/kmm/m:v1".to_string(), ready("reg.local/kmm/m@sha256:1"))].into();
        let work: Vec<_> = p.clusters.iter().map(|c| cluster_work(&m, &p, c, &images)).collect();
        let a = applied_work(1);
        let works: BTreeMap<_, _> = [("a".to_string(), &a)].into();
        let s = mcm_status(&m, &p, &work, &images, &works, None, now());
        assert!(conditions::is_true(&s.conditions, conditions::AVAILABLE));
        assert!(!conditions::is_true(&s.conditions, conditions::PROGRESSING));
        assert_eq!(s.clusters[0].rendered_kernels, ["6.1.0"]);
    }
}
