//! Worker pods: rendered from a NodeModulesConfig entry, and read back for planning.
//!
//! The pod carries everything needed to read it back: the module entry (JSON) and the node's
//! boot ID in annotations, the action and attempt in labels. The worker's configuration is the
//! entry's `config`, handed over as a file through the downward API, so a worker pod is one
//! object with no ConfigMap to keep in step.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, DownwardAPIVolumeFile, DownwardAPIVolumeSource, HostPathVolumeSource, LocalObjectReference,
    ObjectFieldSelector, Pod, PodSpec, SELinuxOptions, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use sha2::{Digest, Sha256};
use shared_api::nmc::NodeModuleSpec;

use super::device_plugin::MODULE_NAME_LABEL;
use super::node_plan::{Action, PodPhase, WorkerPodView};

/// `app.kubernetes.io/name` of every worker pod, as upstream KMM labels them.
pub const APP: &str = "kmm";
/// `app.kubernetes.io/component` of every worker pod, as upstream KMM labels them.
pub const COMPONENT: &str = "worker";
/// Label holding `Load` or `Unload` (upstream's values; our older `load` / `unload` read too).
pub const ACTION_LABEL: &str = "kmm.node.kubernetes.io/worker-action";
/// Label selector of worker pods: every one carries [`ACTION_LABEL`], upstream's too.
pub const SELECTOR: &str = ACTION_LABEL;
/// Label holding the retry number.
pub const ATTEMPT_LABEL: &str = "kmm.node.kubernetes.io/worker-attempt";
/// Annotation holding the module entry as JSON.
pub const ENTRY_ANNOTATION: &str = "kmm.node.kubernetes.io/worker-entry";
/// Annotation holding the worker's config (the entry's `config`), projected into the pod as a file.
pub const CONFIG_ANNOTATION: &str = "kmm.node.kubernetes.io/worker-config";
/// Annotation holding the node's boot ID when the pod was created.
pub const BOOT_ID_ANNOTATION: &str = "kmm.node.kubernetes.io/boot-id";
/// Annotation set once a failure has been reported.
pub const REPORTED_ANNOTATION: &str = "kmm.node.kubernetes.io/failure-reported";
/// Where the worker finds its config.
pub const CONFIG_PATH: &str = "/etc/kmm-worker/config.yaml";
/// Where the pull secret is mounted.
pub const PULL_SECRET_DIR: &str = "/var/run/secrets/kmm/pull";
/// Where the worker unpacks the kmod image it pulls (an emptyDir, gone with the pod).
pub const PULL_DIR: &str = "/var/run/kmm/images";

/// Installation-wide settings of worker pods (the operator configuration's `worker` section).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSettings {
    /// Image with `kmm-worker`.
    pub image: String,
    /// `worker.runAsUser`.
    pub run_as_user: i64,
    /// `worker.seLinuxType`.
    pub selinux_type: String,
    /// `worker.firmwareHostPath`: where firmware is copied on the node.
    pub firmware_host_path: String,
    /// `worker.setFirmwareClassPath`: value written to the kernel's firmware search path, if any.
    pub set_firmware_class_path: Option<String>,
    /// `worker.pendingTimeout`: a pod Pending longer counts as a failed attempt.
    pub pending_timeout: std::time::Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            image: "kmm-worker:latest".into(),
            run_as_user: 0,
            selinux_type: "spc_t".into(),
            firmware_host_path: "/var/lib/firmware".into(),
            set_firmware_class_path: None,
            pending_timeout: std::time::Duration::from_secs(600),
        }
    }
}

/// Short stable hash used in pod names, so node and module names of any length fit.
fn short_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    h.finalize().iter().take(5).map(|b| format!("{b:02x}")).collect()
}

/// Name of the worker pod for this node, module, action and attempt.
pub fn pod_name(node: &str, entry: &NodeModuleSpec, action: Action, attempt: u32) -> String {
    format!(
        "kmm-worker-{}-{}-{attempt}",
        action.as_str(),
        short_hash(&[node, &entry.namespace, &entry.name])
    )
}

fn host_path(name: &str, path: &str, type_: &str) -> Volume {
    Volume {
        name: name.into(),
        host_path: Some(HostPathVolumeSource {
            path: path.into(),
            type_: Some(type_.into()),
        }),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..Default::default()
    }
}

/// Renders the worker pod that runs `action` for `entry` on `node`, owned by `owner` (the node's
/// NodeModulesConfig), so deleting that removes its pods.
pub fn render(
    node: &str,
    boot_id: &str,
    entry: &NodeModuleSpec,
    action: Action,
    attempt: u32,
    settings: &WorkerSettings,
    owner: OwnerReference,
) -> Pod {
    let config_json = serde_json::to_string(&entry.config).expect("a config always serialises");
    let entry_json = serde_json::to_string(entry).expect("an entry always serialises");
    // The worker pulls the kmod image itself, with the Module's pull secret, and unpacks it with
    // its hostile-layer checks into an emptyDir.
    let mut args = vec![
        "kmod".to_owned(),
        action.as_str().to_owned(),
        CONFIG_PATH.to_owned(),
        "--pull".to_owned(),
        format!("--pull-dir={PULL_DIR}"),
        format!("--firmware-host-dir={}", settings.firmware_host_path),
    ];
    if let Some(p) = &settings.set_firmware_class_path {
        args.push(format!("--set-firmware-class-path={p}"));
    }
    let mut volumes = vec![
        Volume {
            name: "config".into(),
            downward_api: Some(DownwardAPIVolumeSource {
                items: Some(vec![DownwardAPIVolumeFile {
                    path: "config.yaml".into(),
                    field_ref: Some(ObjectFieldSelector {
                        field_path: format!("metadata.annotations['{CONFIG_ANNOTATION}']"),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
        host_path("lib-modules", "/lib/modules", "Directory"),
        host_path("firmware", &settings.firmware_host_path, "DirectoryOrCreate"),
        Volume {
            name: "images".into(),
            empty_dir: Some(Default::default()),
            ..Default::default()
        },
    ];
    let mut mounts = vec![
        mount("config", "/etc/kmm-worker", true),
        mount("lib-modules", "/lib/modules", true),
        mount("firmware", &settings.firmware_host_path, false),
        mount("images", PULL_DIR, false),
    ];
    if settings.set_firmware_class_path.is_some() {
        let p = "/sys/module/firmware_class/parameters";
        volumes.push(host_path("firmware-class", p, "Directory"));
        mounts.push(mount("firmware-class", p, false));
    }
    if let Some(secret) = &entry.image_repo_secret {
        volumes.push(Volume {
            name: "pull-secret".into(),
            // Optional: a missing Secret fails the worker with a message naming it, instead
            // of leaving the pod in ContainerCreating for ever.
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.name.clone()),
                optional: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(mount("pull-secret", PULL_SECRET_DIR, true));
        args.push(format!("--pull-secret={PULL_SECRET_DIR}"));
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(pod_name(node, entry, action, attempt)),
            namespace: Some(entry.namespace.clone()),
            labels: Some(BTreeMap::from([
                ("app.kubernetes.io/name".to_owned(), APP.to_owned()),
                ("app.kubernetes.io/component".to_owned(), COMPONENT.to_owned()),
                ("app.kubernetes.io/part-of".to_owned(), "kmm".to_owned()),
                ("app.kubernetes.io/managed-by".to_owned(), "kmm-spoke".to_owned()),
                (MODULE_NAME_LABEL.to_owned(), entry.name.clone()),
                (ACTION_LABEL.to_owned(), action.label_value().to_owned()),
                (ATTEMPT_LABEL.to_owned(), attempt.to_string()),
            ])),
            annotations: Some(BTreeMap::from([
                (ENTRY_ANNOTATION.to_owned(), entry_json),
                (CONFIG_ANNOTATION.to_owned(), config_json),
                (BOOT_ID_ANNOTATION.to_owned(), boot_id.to_owned()),
            ])),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.to_owned()),
            restart_policy: Some("Never".into()),
            service_account_name: entry.service_account_name.clone(),
            image_pull_secrets: entry
                .image_repo_secret
                .as_ref()
                .map(|s| vec![LocalObjectReference { name: s.name.clone() }]),
            tolerations: (!entry.tolerations.is_empty()).then(|| entry.tolerations.clone()),
            priority_class_name: Some("system-node-critical".into()),
            containers: vec![Container {
                name: "worker".into(),
                image: Some(settings.image.clone()),
                args: Some(args),
                termination_message_policy: Some("FallbackToLogsOnError".into()),
                // Loading modules and writing firmware_class.path need the host's kernel and
                // sysfs: the worker is privileged, which is why Module namespaces need a
                // ServiceAccount allowed to run it (see the security section of the docs).
                security_context: Some(SecurityContext {
                    privileged: Some(true),
                    run_as_user: Some(settings.run_as_user),
                    se_linux_options: Some(SELinuxOptions {
                        type_: Some(settings.selinux_type.clone()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                volume_mounts: Some(mounts),
                ..Default::default()
            }],
            volumes: Some(volumes),
            ..Default::default()
        }),
        status: None,
    }
}

/// Finalizer upstream KMM puts on its worker pods.
pub const UPSTREAM_FINALIZER: &str = "kmm.node.kubernetes.io/nodemodulesconfig-reconciler";

/// What to do with a worker pod upstream KMM left behind (it carries the worker-action label
/// but not our entry annotation), when kmm-spoke takes a cluster over from upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leftover {
    /// Drop upstream's finalizer, which nobody would remove any more.
    pub remove_finalizer: bool,
    /// Delete it: it has finished (upstream recorded its result in the NodeModulesConfig
    /// status, which kmm-spoke reads as its own). A pod still running is left to finish.
    pub delete: bool,
}

/// `Some` for a worker pod of upstream KMM that needs cleaning up.
pub fn upstream_leftover(pod: &Pod) -> Option<Leftover> {
    let meta = &pod.metadata;
    meta.labels.as_ref()?.get(ACTION_LABEL)?;
    if read_back(pod).is_some() {
        return None;
    }
    let remove_finalizer = meta.finalizers.iter().flatten().any(|f| f == UPSTREAM_FINALIZER);
    let finished = matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    let delete = finished && meta.deletion_timestamp.is_none();
    (remove_finalizer || delete).then_some(Leftover {
        remove_finalizer,
        delete,
    })
}

/// An upstream KMM worker pod that has not finished (no phase Succeeded or Failed), younger than
/// `limit`: its modprobe may still be running, so nothing of ours starts on its node until it
/// is done (an upstream unload racing our load could leave the module out while we record it
/// loaded). Older ones are given up on, as our own pending pods are.
pub fn upstream_in_flight(pod: &Pod, now: k8s_openapi::jiff::Timestamp, limit: std::time::Duration) -> bool {
    let meta = &pod.metadata;
    if meta.labels.as_ref().and_then(|l| l.get(ACTION_LABEL)).is_none() || read_back(pod).is_some() {
        return false;
    }
    let finished = matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    let young = meta
        .creation_timestamp
        .as_ref()
        .is_none_or(|t| now.duration_since(t.0).unsigned_abs() < limit);
    !finished && meta.deletion_timestamp.is_none() && young
}

/// Whether the pod's worker container has started (running or finished) or the pod runs.
fn started(pod: &Pod) -> bool {
    let Some(status) = pod.status.as_ref() else {
        return false;
    };
    status.phase.as_deref() == Some("Running")
        || status.container_statuses.iter().flatten().any(|c| {
            c.state
                .as_ref()
                .is_some_and(|s| s.running.is_some() || s.terminated.is_some())
        })
}

/// What keeps a pod from starting, in the words of the kubelet (a waiting container's reason
/// and message: `ErrImagePull`, `CreateContainerConfigError`, `ContainerCreating`) or the
/// scheduler (`PodScheduled=False`).
fn pending_reason(pod: &Pod) -> String {
    let status = pod.status.as_ref();
    let waiting = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .find_map(|c| c.state.as_ref().and_then(|s| s.waiting.as_ref()));
    if let Some(w) = waiting {
        let reason = w.reason.as_deref().unwrap_or("Waiting");
        return match w.message.as_deref().map(str::trim).filter(|m| !m.is_empty()) {
            Some(m) => format!("{reason}: {m}"),
            None => reason.to_owned(),
        };
    }
    let unscheduled = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False");
    if let Some(c) = unscheduled {
        let reason = c.reason.as_deref().unwrap_or("Unschedulable");
        return match c.message.as_deref().map(str::trim).filter(|m| !m.is_empty()) {
            Some(m) => format!("{reason}: {m}"),
            None => reason.to_owned(),
        };
    }
    "the kubelet has not started it and gives no reason (look at the pod's events)".to_owned()
}

/// Reads a worker pod back; `None` for pods that are not ours or were tampered with.
pub fn read_back(pod: &Pod) -> Option<WorkerPodView> {
    let meta = &pod.metadata;
    let labels = meta.labels.as_ref()?;
    let annotations = meta.annotations.as_ref()?;
    let action = match labels.get(ACTION_LABEL)?.as_str() {
        "Load" | "load" => Action::Load,
        "Unload" | "unload" => Action::Unload,
        _ => return None,
    };
    let entry: NodeModuleSpec = serde_json::from_str(annotations.get(ENTRY_ANNOTATION)?).ok()?;
    let status = pod.status.as_ref();
    let terminated = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == "worker"))
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.as_ref());
    let phase = match status.and_then(|s| s.phase.as_deref()) {
        Some("Succeeded") => PodPhase::Succeeded,
        Some("Failed") => {
            let message = terminated
                .and_then(|t| t.message.clone().or_else(|| t.reason.clone()))
                .or_else(|| status.and_then(|s| s.message.clone().or_else(|| s.reason.clone())))
                .unwrap_or_else(|| "the worker pod failed without a message".into());
            PodPhase::Failed {
                message: message.trim().to_owned(),
                finished_at: terminated.and_then(|t| t.finished_at.as_ref()).map(|t| t.0),
            }
        }
        _ if started(pod) => PodPhase::InFlight,
        _ => PodPhase::Pending {
            since: meta.creation_timestamp.as_ref().map(|t| t.0),
            reason: pending_reason(pod),
        },
    };
    Some(WorkerPodView {
        name: meta.name.clone()?,
        action,
        entry,
        boot_id: annotations.get(BOOT_ID_ANNOTATION).cloned().unwrap_or_default(),
        attempt: labels.get(ATTEMPT_LABEL).and_then(|a| a.parse().ok()).unwrap_or(0),
        phase,
        reported: annotations.contains_key(REPORTED_ANNOTATION),
        finished_at: terminated.and_then(|t| t.finished_at.as_ref()).map(|t| t.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, PodCondition, PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;
    use shared_api::nmc::ModuleConfig;

    fn entry() -> NodeModuleSpec {
        NodeModuleSpec {
            name: "kmm-ci-a".into(),
            namespace: "kmm-tests".into(),
            service_account_name: Some("kmm-worker".into()),
            image_repo_secret: Some(LocalObjectReference { name: "pull".into() }),
            config: ModuleConfig {
                kernel_version: "6.1.0-28-amd64".into(),
                container_image: "r/kmm-ci-a@sha256:00".into(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn owner() -> OwnerReference {
        OwnerReference {
            api_version: "kmm.sigs.x-k8s.io/v1beta1".into(),
            kind: "NodeModulesConfig".into(),
            name: "node-1".into(),
            uid: "u".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    #[test]
    fn names_are_stable_short_and_distinct() {
        let e = entry();
        let a = pod_name("node-1", &e, Action::Load, 0);
        assert_eq!(a, pod_name("node-1", &e, Action::Load, 0));
        assert!(a.starts_with("kmm-worker-load-") && a.ends_with("-0"), "{a}");
        assert_ne!(a, pod_name("node-2", &e, Action::Load, 0));
        assert_ne!(a, pod_name("node-1", &e, Action::Unload, 0));
        let long = "n".repeat(253);
        assert!(pod_name(&long, &e, Action::Unload, 12).len() < 63);
    }

    #[test]
    fn rendered_pod_runs_on_the_node_with_its_config_file() {
        let settings = WorkerSettings {
            set_firmware_class_path: Some("/var/lib/firmware".into()),
            ..Default::default()
        };
        let pod = render("node-1", "boot-1", &entry(), Action::Load, 0, &settings, owner());
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("node-1"));
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(spec.service_account_name.as_deref(), Some("kmm-worker"));
        assert_eq!(spec.image_pull_secrets.as_ref().unwrap()[0].name, "pull");
        let c = &spec.containers[0];
        assert_eq!(
            c.args.as_ref().unwrap(),
            &[
                "kmod",
                "load",
                CONFIG_PATH,
                "--pull",
                "--pull-dir=/var/run/kmm/images",
                "--firmware-host-dir=/var/lib/firmware",
                "--set-firmware-class-path=/var/lib/firmware",
                "--pull-secret=/var/run/secrets/kmm/pull"
            ]
        );
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.privileged, Some(true));
        assert_eq!(sc.run_as_user, Some(0));
        let ann = pod.metadata.annotations.as_ref().unwrap();
        let config: ModuleConfig = serde_json::from_str(&ann[CONFIG_ANNOTATION]).unwrap();
        assert_eq!(config, entry().config);
        let vols: Vec<_> = spec.volumes.as_ref().unwrap().iter().map(|v| v.name.as_str()).collect();
        assert_eq!(
            vols,
            [
                "config",
                "lib-modules",
                "firmware",
                "images",
                "firmware-class",
                "pull-secret"
            ]
        );
    }

    #[test]
    fn upstream_pods_are_recognised_and_cleaned_up() {
        let upstream = |phase: &str| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {
                    "name": "kmm-worker-node-1-m", "namespace": "ns",
                    "labels": {"kmm.node.kubernetes.io/worker-action": "Load", MODULE_NAME_LABEL: "m"},
                    "finalizers": [UPSTREAM_FINALIZER]
                },
                "status": {"phase": phase}
            }))
            .unwrap()
        };
        assert_eq!(
            upstream_leftover(&upstream("Succeeded")),
            Some(Leftover {
                remove_finalizer: true,
                delete: true
            })
        );
        assert_eq!(
            upstream_leftover(&upstream("Running")),
            Some(Leftover {
                remove_finalizer: true,
                delete: false
            })
        );
        // Ours are never touched this way.
        let mut ours = render(
            "node-1",
            "boot-1",
            &entry(),
            Action::Load,
            0,
            &WorkerSettings::default(),
            owner(),
        );
        ours.status = Some(PodStatus {
            phase: Some("Succeeded".into()),
            ..Default::default()
        });
        assert_eq!(upstream_leftover(&ours), None);
        assert!(!upstream_in_flight(&ours, k8s_openapi::jiff::Timestamp::now(), LIMIT));
    }

    const LIMIT: std::time::Duration = std::time::Duration::from_secs(600);

    #[test]
    fn a_running_upstream_pod_holds_its_node_until_it_finishes_or_is_too_old() {
        use k8s_openapi::jiff::{SignedDuration, Timestamp};
        let at = |phase: &str, age_s: i64| -> (Pod, Timestamp) {
            let created = Timestamp::from_second(1_800_000_000).unwrap();
            let pod = serde_json::from_value(serde_json::json!({
                "metadata": {
                    "name": "kmm-worker-node-1-m", "namespace": "ns",
                    "labels": {"kmm.node.kubernetes.io/worker-action": "Unload", MODULE_NAME_LABEL: "m"},
                    "creationTimestamp": created.to_string()
                },
                "status": {"phase": phase}
            }))
            .unwrap();
            (pod, created + SignedDuration::from_secs(age_s))
        };
        for (phase, age, holds) in [
            ("Running", 30, true),
            ("Pending", 30, true),
            ("Succeeded", 30, false),
            ("Failed", 30, false),
            ("Running", 601, false),
        ] {
            let (pod, now) = at(phase, age);
            assert_eq!(upstream_in_flight(&pod, now, LIMIT), holds, "{phase} after {age}s");
        }
    }

    #[test]
    fn pods_read_back_with_phase_and_failure_message() {
        let mut pod = render(
            "node-1",
            "boot-1",
            &entry(),
            Action::Unload,
            3,
            &WorkerSettings::default(),
            owner(),
        );
        let v = read_back(&pod).unwrap();
        assert_eq!(
            (v.action, v.attempt, v.boot_id.as_str(), v.reported),
            (Action::Unload, 3, "boot-1", false)
        );
        assert_eq!(v.entry, entry());
        assert!(
            matches!(v.phase, PodPhase::Pending { since: None, .. }),
            "{:?}",
            v.phase
        );

        // Waiting for its image: Pending, with the kubelet's words.
        pod.metadata.creation_timestamp = Some(Time(Timestamp::from_second(1_800_000_000).unwrap()));
        pod.status = Some(PodStatus {
            phase: Some("Pending".into()),
            container_statuses: Some(vec![ContainerStatus {
                name: "worker".into(),
                state: Some(ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some("ErrImagePull".into()),
                        message: Some("pull access denied for r/kmm-worker\n".into()),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert_eq!(
            read_back(&pod).unwrap().phase,
            PodPhase::Pending {
                since: Some(Timestamp::from_second(1_800_000_000).unwrap()),
                reason: "ErrImagePull: pull access denied for r/kmm-worker".into()
            }
        );
        // Not scheduled: the scheduler's words.
        pod.status = Some(PodStatus {
            phase: Some("Pending".into()),
            conditions: Some(vec![PodCondition {
                type_: "PodScheduled".into(),
                status: "False".into(),
                reason: Some("Unschedulable".into()),
                message: Some("0/3 nodes are available".into()),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert!(
            matches!(&read_back(&pod).unwrap().phase, PodPhase::Pending { reason, .. } if reason == "Unschedulable: 0/3 nodes are available")
        );
        // Started: in flight.
        pod.status = Some(PodStatus {
            phase: Some("Running".into()),
            ..Default::default()
        });
        assert_eq!(read_back(&pod).unwrap().phase, PodPhase::InFlight);

        pod.status = Some(PodStatus {
            phase: Some("Failed".into()),
            container_statuses: Some(vec![ContainerStatus {
                name: "worker".into(),
                state: Some(ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code: 4,
                        message: Some(
                            "modprobe: ERROR: could not insert 'kmm_ci_a': Required key not available\n".into(),
                        ),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        });
        pod.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(REPORTED_ANNOTATION.into(), "true".into());
        let v = read_back(&pod).unwrap();
        assert!(v.reported);
        assert_eq!(
            v.phase,
            PodPhase::Failed {
                message: "modprobe: ERROR: could not insert 'kmm_ci_a': Required key not available".into(),
                finished_at: None
            }
        );
        pod.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(ACTION_LABEL.into(), "explode".into());
        assert_eq!(read_back(&pod), None);
    }
}
