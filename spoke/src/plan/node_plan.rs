//! The node controller's decisions for one node: compare its NodeModulesConfig spec (what should
//! be loaded) with its status (what is loaded) and the worker pods in flight, and return the
//! steps that move the node one step closer, in an order that is safe to apply as listed.
//!
//! Safety rules encoded here:
//! - a module is unloaded only after its ready labels are gone from the node and no device
//!   plugin pod of it runs there (the plugin's DaemonSet selects on those labels);
//! - at most one worker pod per module and node is in flight;
//! - a status entry from another boot or another kernel means the module is no longer loaded
//!   (reboot or kernel upgrade) and is dropped, so the module loads again;
//! - a failed worker pod is reported once and retried with exponential backoff.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use shared_api::labels;
use shared_api::nmc::{NodeModuleSpec, NodeModuleStatus};

use super::ModuleKey;
use super::selection::NodeView;

/// What a worker pod does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// modprobe the module in.
    Load,
    /// modprobe -r the module.
    Unload,
}

impl Action {
    /// Lowercase name, used in pod names.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Load => "load",
            Self::Unload => "unload",
        }
    }

    /// Value of the worker-action label, as upstream KMM writes it.
    pub fn label_value(self) -> &'static str {
        match self {
            Self::Load => "Load",
            Self::Unload => "Unload",
        }
    }
}

/// Phase of a worker pod, as far as planning cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodPhase {
    /// Created but not started: waiting to be scheduled, for an image, or for a volume.
    Pending {
        /// When the pod was created.
        since: Option<Timestamp>,
        /// What holds it back, as the kubelet or the scheduler says (`ImagePullBackOff: ...`).
        reason: String,
    },
    /// Started, not finished yet.
    InFlight,
    /// Exited 0.
    Succeeded,
    /// Failed, with the worker's message.
    Failed {
        /// What the worker reported (its termination message), or the pod's reason.
        message: String,
        /// When it finished.
        finished_at: Option<Timestamp>,
    },
}

impl PodPhase {
    /// Pending or running: the pod may still load or unload.
    pub fn in_flight(&self) -> bool {
        matches!(self, Self::Pending { .. } | Self::InFlight)
    }
}

/// A worker pod of this node, as read back from the cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerPodView {
    /// Pod name.
    pub name: String,
    /// Load or unload.
    pub action: Action,
    /// The module entry the pod works on (its config is what the pod loads or unloads).
    pub entry: NodeModuleSpec,
    /// Boot ID of the node when the pod was created.
    pub boot_id: String,
    /// Retry number, 0 for the first attempt.
    pub attempt: u32,
    /// Phase.
    pub phase: PodPhase,
    /// Whether its failure has been reported already.
    pub reported: bool,
    /// When its worker container finished, if it has.
    pub finished_at: Option<Timestamp>,
}

impl WorkerPodView {
    /// The Module the pod is for.
    pub fn key(&self) -> ModuleKey {
        ModuleKey::new(&self.entry.namespace, &self.entry.name)
    }
}

/// Observed state of one node.
#[derive(Debug, Clone)]
pub struct NodeState<'a> {
    /// The node.
    pub node: &'a NodeView,
    /// NodeModulesConfig spec: what should be loaded.
    pub spec: &'a [NodeModuleSpec],
    /// NodeModulesConfig status: what is loaded.
    pub status: &'a [NodeModuleStatus],
    /// Worker pods on the node.
    pub pods: &'a [WorkerPodView],
    /// Modules whose device plugin pod still runs on the node.
    pub device_plugin_running: &'a BTreeSet<ModuleKey>,
    /// Current time.
    pub now: Timestamp,
    /// How long a worker pod may stay Pending before it counts as a failed attempt.
    pub pending_timeout: Duration,
}

/// Event severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Informational.
    Normal,
    /// Needs attention.
    Warning,
}

/// One step for the node controller to apply.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Create a worker pod.
    CreatePod {
        /// Load or unload.
        action: Action,
        /// What to load or unload.
        entry: NodeModuleSpec,
        /// Retry number.
        attempt: u32,
    },
    /// Delete a worker pod.
    DeletePod(String),
    /// Mark a failed pod as reported, so its failure is announced once.
    MarkReported(String),
    /// Record a loaded module in the NodeModulesConfig status.
    RecordLoaded(NodeModuleStatus),
    /// Drop a module from the NodeModulesConfig status.
    ForgetStatus(ModuleKey),
    /// Set (`Some`) or remove (`None`) node labels.
    Labels(BTreeMap<String, Option<String>>),
    /// Emit an event on the Node.
    Event {
        /// Severity.
        type_: EventType,
        /// Reason (`ModuleLoaded`, `ModuleUnloaded`, `ModuleLoadFailed`, ...).
        reason: &'static str,
        /// Message.
        message: String,
    },
    /// Look again after this long even if nothing changes (backoff, waiting for a plugin pod).
    RequeueAfter(Duration),
}

/// Delay before retry `attempt + 1` of a failed worker pod: 10s, 20s, 40s ... capped at 5 min.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(10u64.saturating_mul(1 << attempt.min(5)).min(300))
}

/// How long a finished load waits for the other loads in flight on its node before it is
/// recorded, so that loads finishing close together on one node are recorded, labelled and
/// announced in one pass (one write of each) rather than one pass each.
pub const SIBLING_HOLD: Duration = Duration::from_secs(3);

/// How often to look again while waiting for a device plugin pod to leave a node.
pub const DEVICE_PLUGIN_POLL: Duration = Duration::from_secs(5);

/// The node labels for one module, keyed as they appear on the node.
struct ModuleLabels {
    ready: String,
    version_ready: String,
    worker_pod: String,
    schedule_pod: String,
}

impl ModuleLabels {
    fn new(key: &ModuleKey) -> Option<Self> {
        let (ns, n) = (key.namespace.as_str(), key.name.as_str());
        Some(Self {
            ready: labels::module_ready(ns, n).ok()?,
            version_ready: labels::module_version_ready(ns, n).ok()?,
            worker_pod: labels::worker_pod_version(ns, n).ok()?,
            schedule_pod: labels::schedule_pod_version(ns, n).ok()?,
        })
    }

    fn all(&self) -> [&String; 4] {
        [&self.ready, &self.version_ready, &self.worker_pod, &self.schedule_pod]
    }
}

fn key_of_spec(s: &NodeModuleSpec) -> ModuleKey {
    ModuleKey::new(&s.namespace, &s.name)
}

fn key_of_status(s: &NodeModuleStatus) -> ModuleKey {
    ModuleKey::new(&s.namespace, &s.name)
}

fn same_load(spec: &NodeModuleSpec, status: &NodeModuleStatus) -> bool {
    spec.config.same_load(&status.config) && spec.version == status.version
}

fn status_from(entry: &NodeModuleSpec, boot_id: &str, now: Timestamp) -> NodeModuleStatus {
    NodeModuleStatus {
        name: entry.name.clone(),
        namespace: entry.namespace.clone(),
        service_account_name: entry.service_account_name.clone(),
        image_repo_secret: entry.image_repo_secret.clone(),
        tolerations: entry.tolerations.clone(),
        version: entry.version.clone(),
        config: entry.config.clone(),
        last_transition_time: Some(Time(now)),
        boot_id: Some(boot_id.to_owned()),
    }
}

fn spec_from_status(s: &NodeModuleStatus) -> NodeModuleSpec {
    NodeModuleSpec {
        name: s.name.clone(),
        namespace: s.namespace.clone(),
        service_account_name: s.service_account_name.clone(),
        image_repo_secret: s.image_repo_secret.clone(),
        tolerations: s.tolerations.clone(),
        version: s.version.clone(),
        config: s.config.clone(),
    }
}

/// `pod`, or, when it has been Pending for `timeout` or longer, the same pod as a failed attempt
/// that finished at the timeout, with what held it back as its message.
fn timed_out(pod: &WorkerPodView, now: Timestamp, timeout: Duration) -> WorkerPodView {
    let PodPhase::Pending {
        since: Some(since),
        reason,
    } = &pod.phase
    else {
        return pod.clone();
    };
    let age = now.duration_since(*since).unsigned_abs();
    if age < timeout {
        return pod.clone();
    }
    let finished_at = k8s_openapi::jiff::SignedDuration::try_from(timeout)
        .ok()
        .and_then(|d| since.checked_add(d).ok());
    WorkerPodView {
        phase: PodPhase::Failed {
            message: format!("still Pending after {}: {reason}", human(timeout)),
            finished_at,
        },
        ..pod.clone()
    }
}

/// `90s`, `10m`, `1h30m`: a timeout as people write it.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (h, 0, 0) => format!("{h}h"),
        (h, m, 0) => format!("{h}h{m}m"),
        _ => format!("{s}s"),
    }
}

/// Plans the next steps for one node.
pub fn plan_node(state: &NodeState<'_>) -> Vec<Step> {
    let node = state.node;
    let mut steps = Vec::new();
    let mut label_changes: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut requeue: Option<Duration> = None;
    let wait = |d: Duration, requeue: &mut Option<Duration>| {
        *requeue = Some(requeue.map_or(d, |r| r.min(d)));
    };

    // Another module's load in flight on this node, from this boot.
    let siblings_loading = |key: &ModuleKey| {
        state
            .pods
            .iter()
            .any(|p| &p.key() != key && p.action == Action::Load && p.phase.in_flight() && p.boot_id == node.boot_id)
    };
    let mut keys: BTreeSet<ModuleKey> = state.spec.iter().map(key_of_spec).collect();
    keys.extend(state.status.iter().map(key_of_status));
    keys.extend(state.pods.iter().map(WorkerPodView::key));

    let mut managed_labels = BTreeSet::new();
    for key in &keys {
        let Some(names) = ModuleLabels::new(key) else { continue };
        managed_labels.extend(names.all().into_iter().cloned());
        let spec = state.spec.iter().find(|s| &key_of_spec(s) == key);
        let want = spec.filter(|s| s.config.kernel_version == node.kernel);
        let status = state.status.iter().find(|s| &key_of_status(s) == key);
        let mut loaded = status
            .filter(|s| s.boot_id.as_deref() == Some(node.boot_id.as_str()) && s.config.kernel_version == node.kernel);
        if let (Some(s), None) = (status, loaded) {
            // Rebooted, or now running another kernel: the module is not in this kernel.
            steps.push(Step::ForgetStatus(key_of_status(s)));
        }

        // The pod that counts is the one in flight, else the latest attempt; the others go.
        // A pod is deleted only once what replaces it (a retry, or the status it recorded) is
        // in the caches, so a view that lags behind never lacks both and starts attempt 0 again.
        // A pod Pending for longer than the timeout counts as a failed attempt: it is reported,
        // retried with backoff, and goes once its retry shows up.
        let mut pods: Vec<WorkerPodView> = state
            .pods
            .iter()
            .filter(|p| &p.key() == key)
            .map(|p| timed_out(p, state.now, state.pending_timeout))
            .collect();
        pods.sort_by_key(|p| (!p.phase.in_flight(), std::cmp::Reverse(p.attempt)));
        for extra in pods.iter().skip(1) {
            steps.push(Step::DeletePod(extra.name.clone()));
        }
        // Would this load or unload change nothing that is wanted now?
        let load_wanted = |e: &NodeModuleSpec| want.is_some_and(|w| w.config == e.config && w.version == e.version);
        let unload_wanted = |e: &NodeModuleSpec, loaded: Option<&NodeModuleStatus>| {
            loaded.is_some_and(|l| l.config == e.config)
                && !want.is_some_and(|w| loaded.is_some_and(|l| same_load(w, l)))
        };
        let mut in_flight = false;
        let mut unloading = false;
        let mut recorded = None;
        if let Some(pod) = pods.first() {
            let from_this_boot = pod.boot_id == node.boot_id;
            match (&pod.phase, pod.action) {
                (PodPhase::Succeeded, Action::Load)
                    if from_this_boot && pod.entry.config.kernel_version == node.kernel =>
                {
                    let s = status_from(&pod.entry, &node.boot_id, state.now);
                    let held = pod
                        .finished_at
                        .map(|t| state.now.duration_since(t).unsigned_abs())
                        .filter(|age| *age < SIBLING_HOLD && siblings_loading(key));
                    if loaded.is_some_and(|l| l.config == s.config && l.version == s.version) {
                        steps.push(Step::DeletePod(pod.name.clone()));
                    } else if let Some(age) = held {
                        // Not recorded yet: nothing is ready before it is, and no second load
                        // starts meanwhile.
                        in_flight = true;
                        wait(SIBLING_HOLD - age, &mut requeue);
                    } else {
                        steps.push(Step::RecordLoaded(s.clone()));
                        steps.push(Step::Event {
                            type_: EventType::Normal,
                            reason: "ModuleLoaded",
                            message: format!("Module {key} loaded into the kernel"),
                        });
                        recorded = Some(s);
                    }
                }
                (PodPhase::Succeeded, Action::Unload) => {
                    if let Some(l) = loaded {
                        steps.push(Step::ForgetStatus(key_of_status(l)));
                        steps.push(Step::Event {
                            type_: EventType::Normal,
                            reason: "ModuleUnloaded",
                            message: format!("Module {key} unloaded from the kernel"),
                        });
                    } else {
                        steps.push(Step::DeletePod(pod.name.clone()));
                    }
                    loaded = None;
                }
                (PodPhase::Succeeded, Action::Load) => steps.push(Step::DeletePod(pod.name.clone())),
                (PodPhase::Failed { message, finished_at }, action) => {
                    let still_wanted = match action {
                        Action::Load => load_wanted(&pod.entry),
                        // Wanted loaded again as it is: the unload is abandoned, the module stays.
                        Action::Unload => unload_wanted(&pod.entry, loaded),
                    };
                    let delay = backoff(pod.attempt);
                    if !pod.reported {
                        let (reason, verb) = match action {
                            Action::Load => ("ModuleLoadFailed", "loading"),
                            Action::Unload => ("ModuleUnloadFailed", "unloading"),
                        };
                        let next = if still_wanted {
                            format!("; retrying in {}s", delay.as_secs())
                        } else if action == Action::Unload && loaded.is_some() {
                            "; it is wanted loaded again, so it stays".to_owned()
                        } else {
                            String::new()
                        };
                        steps.push(Step::Event {
                            type_: EventType::Warning,
                            reason,
                            message: format!(
                                "Module {key}: {verb} failed on attempt {} (worker pod {}): {message}{next}",
                                pod.attempt + 1,
                                pod.name
                            ),
                        });
                        steps.push(Step::MarkReported(pod.name.clone()));
                    }
                    let elapsed = finished_at
                        .map(|t| state.now.duration_since(t).unsigned_abs())
                        .unwrap_or(delay);
                    if !still_wanted {
                        steps.push(Step::DeletePod(pod.name.clone()));
                    } else if elapsed >= delay {
                        // The failed pod goes once the retry shows up (it sorts first then).
                        steps.push(Step::CreatePod {
                            action,
                            entry: pod.entry.clone(),
                            attempt: pod.attempt + 1,
                        });
                        in_flight = true;
                        unloading = action == Action::Unload;
                    } else {
                        wait(delay - elapsed, &mut requeue);
                        in_flight = true;
                        unloading = action == Action::Unload;
                    }
                }
                (PodPhase::Pending { since, .. }, action) => {
                    in_flight = true;
                    if action == Action::Load && !load_wanted(&pod.entry) {
                        // A load that has not started and is no longer what the node should
                        // run: replace it (its successor may have the same name, so it is
                        // created once this one is gone). A pending unload is left to run or
                        // time out: stopping one the kubelet just started could leave the
                        // module out of the kernel with the status saying it is in.
                        steps.push(Step::DeletePod(pod.name.clone()));
                    } else {
                        unloading = action == Action::Unload;
                        if let Some(since) = since {
                            let age = state.now.duration_since(*since).unsigned_abs();
                            wait(state.pending_timeout.saturating_sub(age), &mut requeue);
                        }
                    }
                }
                (PodPhase::InFlight, action) => {
                    in_flight = true;
                    unloading = action == Action::Unload;
                }
            }
        }
        let loaded_entry = recorded.as_ref().or(loaded);

        // Decide what this module needs and which labels the node should carry for it.
        let versioned = |v: &Option<String>| v.clone();
        let mut desired: BTreeMap<&String, Option<String>> = names.all().into_iter().map(|k| (k, None)).collect();
        match (want, loaded_entry) {
            // Never ready while an unload is in flight: it may still take the module away.
            (Some(w), Some(l)) if same_load(w, l) && !unloading => {
                desired.insert(&names.ready, Some(String::new()));
                if let Some(v) = versioned(&l.version) {
                    desired.insert(&names.version_ready, Some(v.clone()));
                    desired.insert(&names.worker_pod, Some(v.clone()));
                    desired.insert(&names.schedule_pod, Some(v));
                }
            }
            (_, Some(l)) => {
                // Loaded, but no longer wanted or wanted with another config: unload first,
                // once the device plugin has left the node.
                if let Some(v) = &l.version {
                    desired.insert(&names.worker_pod, Some(v.clone()));
                }
                let labels_gone =
                    !node.labels.contains_key(&names.ready) && !node.labels.contains_key(&names.schedule_pod);
                let plugin_gone = !state.device_plugin_running.contains(key);
                if in_flight {
                } else if labels_gone && plugin_gone {
                    steps.push(Step::CreatePod {
                        action: Action::Unload,
                        entry: spec_from_status(l),
                        attempt: 0,
                    });
                } else {
                    wait(DEVICE_PLUGIN_POLL, &mut requeue);
                }
            }
            (Some(w), None) => {
                if let Some(v) = &w.version {
                    desired.insert(&names.worker_pod, Some(v.clone()));
                }
                if !in_flight {
                    steps.push(Step::CreatePod {
                        action: Action::Load,
                        entry: w.clone(),
                        attempt: 0,
                    });
                }
            }
            (None, None) => {}
        }
        for (k, v) in desired {
            if node.labels.get(k) != v.as_ref() {
                label_changes.insert(k.clone(), v);
            }
        }
    }

    // Labels of modules this node no longer knows anything about.
    let prefixes = [
        format!("{}/", labels::NODE_LABEL_PREFIX),
        format!("{}/", labels::BETA_NODE_LABEL_PREFIX),
    ];
    for k in node.labels.keys() {
        let Some(rest) = prefixes.iter().find_map(|p| k.strip_prefix(p.as_str())) else {
            continue;
        };
        let ours = rest.ends_with(".ready") && !rest.ends_with("device-plugin-ready")
            || rest.starts_with("version-worker-pod.")
            || rest.starts_with("version-schedule-pod.");
        if ours && !managed_labels.contains(k) {
            label_changes.insert(k.clone(), None);
        }
    }

    if !label_changes.is_empty() {
        // Labels go first: removing the ready labels is what sends the device plugin away.
        steps.insert(0, Step::Labels(label_changes));
    }
    if let Some(d) = requeue {
        steps.push(Step::RequeueAfter(d));
    }
    steps
}

#[cfg(test)]
#[allow(clippy::cloned_ref_to_slice_refs)] // `&[e.clone()]` reads better than slice::from_ref in tables
mod tests {
    use super::*;
    use shared_api::nmc::ModuleConfig;

    const K1: &str = "6.1.0-28-amd64";
    const K2: &str = "6.1.0-30-amd64";
    const READY: &str = "kmm.node.kubernetes.io/ns.m.ready";
    const PENDING_TIMEOUT: Duration = Duration::from_secs(600);

    fn node(kernel: &str, boot: &str, labels: &[(&str, &str)]) -> NodeView {
        NodeView {
            name: "n1".into(),
            labels: labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
            taints: vec![],
            unschedulable: false,
            kernel: kernel.into(),
            boot_id: boot.into(),
        }
    }

    fn entry(kernel: &str, image: &str) -> NodeModuleSpec {
        NodeModuleSpec {
            name: "m".into(),
            namespace: "ns".into(),
            config: ModuleConfig {
                kernel_version: kernel.into(),
                container_image: image.into(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn loaded(e: &NodeModuleSpec, boot: &str) -> NodeModuleStatus {
        status_from(e, boot, ts(0))
    }

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn pod(action: Action, e: &NodeModuleSpec, boot: &str, phase: PodPhase) -> WorkerPodView {
        WorkerPodView {
            name: format!("w-{}", action.as_str()),
            action,
            entry: e.clone(),
            boot_id: boot.into(),
            attempt: 0,
            phase,
            reported: false,
            finished_at: None,
        }
    }

    fn plan(
        n: &NodeView,
        spec: &[NodeModuleSpec],
        status: &[NodeModuleStatus],
        pods: &[WorkerPodView],
        plugins: &[&str],
        now: i64,
    ) -> Vec<Step> {
        let running = plugins.iter().map(|n| ModuleKey::new("ns", *n)).collect();
        plan_node(&NodeState {
            node: n,
            spec,
            status,
            pods,
            device_plugin_running: &running,
            now: ts(now),
            pending_timeout: PENDING_TIMEOUT,
        })
    }

    fn labels(pairs: &[(&str, Option<&str>)]) -> Step {
        Step::Labels(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.map(str::to_owned)))
                .collect(),
        )
    }

    #[test]
    fn a_finished_load_waits_briefly_for_the_loads_beside_it() {
        let a = entry(K1, "r/a:1");
        let b = NodeModuleSpec {
            name: "b".into(),
            ..entry(K1, "r/b:1")
        };
        let n = node(K1, "b1", &[]);
        let a_done = WorkerPodView {
            finished_at: Some(ts(10)),
            ..pod(Action::Load, &a, "b1", PodPhase::Succeeded)
        };
        let b_running = WorkerPodView {
            name: "w-load-b".into(),
            ..pod(Action::Load, &b, "b1", PodPhase::InFlight)
        };
        let spec = [a.clone(), b.clone()];
        // b still loads: a is not recorded (nor loaded again) yet.
        assert_eq!(
            plan(&n, &spec, &[], &[a_done.clone(), b_running.clone()], &[], 11),
            [Step::RequeueAfter(Duration::from_secs(2))]
        );
        // b done too: both are recorded in the same pass.
        let b_done = WorkerPodView {
            phase: PodPhase::Succeeded,
            finished_at: Some(ts(12)),
            ..b_running.clone()
        };
        let steps = plan(&n, &spec, &[], &[a_done.clone(), b_done], &[], 12);
        let recorded = steps.iter().filter(|s| matches!(s, Step::RecordLoaded(_))).count();
        assert_eq!(recorded, 2, "{steps:?}");
        // The wait is bounded: b still running 3s after a finished, a is recorded alone.
        let steps = plan(&n, &spec, &[], &[a_done.clone(), b_running.clone()], &[], 13);
        assert!(
            steps.contains(&Step::RecordLoaded(status_from(&a, "b1", ts(13)))),
            "{steps:?}"
        );
        // Nothing else in flight on the node: no wait at all.
        let steps = plan(&n, &[a.clone()], &[], &[a_done], &[], 11);
        assert!(
            steps.contains(&Step::RecordLoaded(status_from(&a, "b1", ts(11)))),
            "{steps:?}"
        );
    }

    #[test]
    fn load_then_record_then_label() {
        let e = entry(K1, "r/m:1");
        let n = node(K1, "b1", &[]);
        assert_eq!(
            plan(&n, &[e.clone()], &[], &[], &[], 0),
            [Step::CreatePod {
                action: Action::Load,
                entry: e.clone(),
                attempt: 0
            }]
        );
        let running = pod(Action::Load, &e, "b1", PodPhase::InFlight);
        assert_eq!(plan(&n, &[e.clone()], &[], &[running], &[], 0), []);
        let done = pod(Action::Load, &e, "b1", PodPhase::Succeeded);
        assert_eq!(
            plan(&n, &[e.clone()], &[], std::slice::from_ref(&done), &[], 7),
            [
                labels(&[(READY, Some(""))]),
                Step::RecordLoaded(status_from(&e, "b1", ts(7))),
                Step::Event {
                    type_: EventType::Normal,
                    reason: "ModuleLoaded",
                    message: "Module ns/m loaded into the kernel".into()
                },
            ]
        );
        // The pod goes once the status it led to is in the cache, and only then.
        let n = node(K1, "b1", &[(READY, "")]);
        assert_eq!(
            plan(&n, &[e.clone()], &[loaded(&e, "b1")], &[done], &[], 8),
            [Step::DeletePod("w-load".into())]
        );
        assert_eq!(plan(&n, &[e.clone()], &[loaded(&e, "b1")], &[], &[], 9), []);
    }

    #[test]
    fn unload_waits_for_labels_and_the_device_plugin() {
        let e = entry(K1, "r/m:1");
        let n = node(K1, "b1", &[(READY, "")]);
        let st = [loaded(&e, "b1")];
        // Spec gone: first the label goes, nothing else.
        assert_eq!(
            plan(&n, &[], &st, &[], &["m"], 0),
            [labels(&[(READY, None)]), Step::RequeueAfter(DEVICE_PLUGIN_POLL)]
        );
        // Label gone but the plugin pod still runs: wait.
        let n = node(K1, "b1", &[]);
        assert_eq!(
            plan(&n, &[], &st, &[], &["m"], 0),
            [Step::RequeueAfter(DEVICE_PLUGIN_POLL)]
        );
        // Plugin gone: unload with the loaded config.
        assert_eq!(
            plan(&n, &[], &st, &[], &[], 0),
            [Step::CreatePod {
                action: Action::Unload,
                entry: e.clone(),
                attempt: 0
            }]
        );
        let done = pod(Action::Unload, &e, "b1", PodPhase::Succeeded);
        assert_eq!(
            plan(&n, &[], &st, std::slice::from_ref(&done), &[], 0),
            [
                Step::ForgetStatus(ModuleKey::new("ns", "m")),
                Step::Event {
                    type_: EventType::Normal,
                    reason: "ModuleUnloaded",
                    message: "Module ns/m unloaded from the kernel".into()
                },
            ]
        );
        // Once the cache has the status without it, the pod goes.
        assert_eq!(
            plan(&n, &[], &[], &[done], &[], 1),
            [Step::DeletePod("w-unload".into())]
        );
    }

    #[test]
    fn changed_image_unloads_the_old_one_first() {
        let old = entry(K1, "r/m:1");
        let new = entry(K1, "r/m:2");
        let n = node(K1, "b1", &[]);
        assert_eq!(
            plan(&n, &[new.clone()], &[loaded(&old, "b1")], &[], &[], 0),
            [Step::CreatePod {
                action: Action::Unload,
                entry: old.clone(),
                attempt: 0
            }]
        );
        // Unloaded: forget it and load the new one; the unload pod stays until the status is
        // in the cache.
        let unloaded = pod(Action::Unload, &old, "b1", PodPhase::Succeeded);
        assert_eq!(
            plan(
                &n,
                &[new.clone()],
                &[loaded(&old, "b1")],
                std::slice::from_ref(&unloaded),
                &[],
                1
            ),
            [
                Step::ForgetStatus(ModuleKey::new("ns", "m")),
                Step::Event {
                    type_: EventType::Normal,
                    reason: "ModuleUnloaded",
                    message: "Module ns/m unloaded from the kernel".into()
                },
                Step::CreatePod {
                    action: Action::Load,
                    entry: new.clone(),
                    attempt: 0
                },
            ]
        );
        // The load in flight is what counts; the finished unload pod goes.
        let loading = pod(Action::Load, &new, "b1", PodPhase::InFlight);
        for status in [vec![], vec![loaded(&old, "b1")]] {
            assert_eq!(
                plan(
                    &n,
                    &[new.clone()],
                    &status,
                    &[unloaded.clone(), loading.clone()],
                    &[],
                    2
                ),
                [Step::DeletePod("w-unload".into())],
                "status {status:?}"
            );
        }
    }

    #[test]
    fn reboot_and_kernel_change_reload() {
        let e = entry(K1, "r/m:1");
        // Rebooted: same kernel, new boot ID: forget and load again.
        let n = node(K1, "b2", &[(READY, "")]);
        assert_eq!(
            plan(&n, &[e.clone()], &[loaded(&e, "b1")], &[], &[], 0),
            [
                labels(&[(READY, None)]),
                Step::ForgetStatus(ModuleKey::new("ns", "m")),
                Step::CreatePod {
                    action: Action::Load,
                    entry: e.clone(),
                    attempt: 0
                },
            ]
        );
        // New kernel: forget; wait for the Module controller to re-plan for the new kernel.
        let n = node(K2, "b3", &[]);
        assert_eq!(
            plan(&n, &[e.clone()], &[loaded(&e, "b1")], &[], &[], 0),
            [Step::ForgetStatus(ModuleKey::new("ns", "m"))]
        );
        let e2 = entry(K2, "r/m:1");
        assert_eq!(
            plan(&n, &[e2.clone()], &[], &[], &[], 0),
            [Step::CreatePod {
                action: Action::Load,
                entry: e2,
                attempt: 0
            }]
        );
        // A load that succeeded before the reboot does not count.
        let n = node(K1, "b2", &[]);
        let stale = pod(Action::Load, &e, "b1", PodPhase::Succeeded);
        assert_eq!(
            plan(&n, &[e.clone()], &[], &[stale], &[], 0),
            [
                Step::DeletePod("w-load".into()),
                Step::CreatePod {
                    action: Action::Load,
                    entry: e,
                    attempt: 0
                },
            ]
        );
    }

    #[test]
    fn failures_are_reported_once_and_retried_with_backoff() {
        let e = entry(K1, "r/m:1");
        let n = node(K1, "b1", &[]);
        let msg = "modprobe: ERROR: could not insert 'm': Required key not available";
        let mut failed = pod(
            Action::Load,
            &e,
            "b1",
            PodPhase::Failed {
                message: msg.into(),
                finished_at: Some(ts(0)),
            },
        );
        let steps = plan(&n, &[e.clone()], &[], &[failed.clone()], &[], 3);
        assert_eq!(
            steps[0],
            Step::Event {
                type_: EventType::Warning,
                reason: "ModuleLoadFailed",
                message: format!(
                    "Module ns/m: loading failed on attempt 1 (worker pod w-load): {msg}; retrying in 10s"
                ),
            }
        );
        assert_eq!(
            steps[1..],
            [
                Step::MarkReported("w-load".into()),
                Step::RequeueAfter(Duration::from_secs(7))
            ]
        );
        failed.reported = true;
        assert_eq!(
            plan(&n, &[e.clone()], &[], &[failed.clone()], &[], 10),
            [Step::CreatePod {
                action: Action::Load,
                entry: e.clone(),
                attempt: 1
            }]
        );
        // The failed pod goes once the retry is in the cache; nothing else starts meanwhile.
        let mut retry = pod(Action::Load, &e, "b1", PodPhase::InFlight);
        retry.name = "w-load-1".into();
        retry.attempt = 1;
        assert_eq!(
            plan(&n, &[e.clone()], &[], &[failed.clone(), retry.clone()], &[], 11),
            [Step::DeletePod("w-load".into())]
        );
        assert_eq!(plan(&n, &[e.clone()], &[], &[retry], &[], 12), []);
        failed.attempt = 9;
        assert_eq!(backoff(9), Duration::from_secs(300));
        assert_eq!(
            plan(&n, &[e.clone()], &[], &[failed.clone()], &[], 100),
            [Step::RequeueAfter(Duration::from_secs(200))]
        );
        // No longer wanted: the failed pod just goes.
        assert_eq!(
            plan(&n, &[], &[], &[failed], &[], 100),
            [Step::DeletePod("w-load".into())]
        );
    }

    #[test]
    fn versioned_modules_drive_the_upgrade_labels() {
        let mut e = entry(K1, "r/m:2");
        e.version = Some("2".into());
        let wp = "beta.kmm.node.kubernetes.io/version-worker-pod.ns.m";
        let sp = "beta.kmm.node.kubernetes.io/version-schedule-pod.ns.m";
        let vr = "kmm.node.kubernetes.io/ns.m.version.ready";
        let n = node(K1, "b1", &[]);
        assert_eq!(
            plan(&n, &[e.clone()], &[], &[], &[], 0),
            [
                labels(&[(wp, Some("2"))]),
                Step::CreatePod {
                    action: Action::Load,
                    entry: e.clone(),
                    attempt: 0
                },
            ]
        );
        let n = node(K1, "b1", &[(wp, "2")]);
        assert_eq!(
            plan(&n, &[e.clone()], &[loaded(&e, "b1")], &[], &[], 0),
            [labels(&[(sp, Some("2")), (READY, Some("")), (vr, Some("2")),])]
        );
        // The administrator removes the version-module label: the Module controller drops the
        // entry; schedule and ready labels go first, the worker-pod label stays until unloaded.
        let n = node(K1, "b1", &[(wp, "2"), (sp, "2"), (READY, ""), (vr, "2")]);
        assert_eq!(
            plan(&n, &[], &[loaded(&e, "b1")], &[], &["m"], 0),
            [
                labels(&[(sp, None), (READY, None), (vr, None)]),
                Step::RequeueAfter(DEVICE_PLUGIN_POLL),
            ]
        );
    }

    #[test]
    fn orphaned_labels_are_removed() {
        let n = node(
            K1,
            "b1",
            &[
                ("kmm.node.kubernetes.io/old.gone.ready", ""),
                ("kmm.node.kubernetes.io/old.gone.device-plugin-ready", ""),
                ("kmm.node.kubernetes.io/version-module.old.gone", "1"),
                ("beta.kmm.node.kubernetes.io/version-worker-pod.old.gone", "1"),
            ],
        );
        assert_eq!(
            plan(&n, &[], &[], &[], &[], 0),
            [labels(&[
                ("beta.kmm.node.kubernetes.io/version-worker-pod.old.gone", None),
                ("kmm.node.kubernetes.io/old.gone.ready", None),
            ])]
        );
    }

    fn failed(secs: i64) -> PodPhase {
        PodPhase::Failed {
            message: "modprobe: FATAL: Module m is in use".into(),
            finished_at: Some(ts(secs)),
        }
    }

    fn pending(secs: i64) -> PodPhase {
        PodPhase::Pending {
            since: Some(ts(secs)),
            reason: "ImagePullBackOff: Back-off pulling image \"r/m:1\"".into(),
        }
    }

    #[test]
    fn a_failed_unload_of_a_module_wanted_again_is_abandoned() {
        let e = entry(K1, "r/m:1");
        let n = node(K1, "b1", &[]);
        let st = [loaded(&e, "b1")];
        let unload = pod(Action::Unload, &e, "b1", failed(0));
        // Wanted again as it is loaded: said once, not retried, the pod goes, the module is
        // ready again.
        assert_eq!(
            plan(&n, &[e.clone()], &st, std::slice::from_ref(&unload), &[], 100),
            [
                labels(&[(READY, Some(""))]),
                Step::Event {
                    type_: EventType::Warning,
                    reason: "ModuleUnloadFailed",
                    message: "Module ns/m: unloading failed on attempt 1 (worker pod w-unload): \
                              modprobe: FATAL: Module m is in use; it is wanted loaded again, so it stays"
                        .into()
                },
                Step::MarkReported("w-unload".into()),
                Step::DeletePod("w-unload".into()),
            ]
        );
        // Still unwanted: retried after the backoff.
        let mut reported = unload.clone();
        reported.reported = true;
        assert_eq!(
            plan(&n, &[], &st, &[reported], &[], 100),
            [Step::CreatePod {
                action: Action::Unload,
                entry: e.clone(),
                attempt: 1
            }]
        );
    }

    #[test]
    fn never_ready_while_an_unload_may_take_the_module_away() {
        let e = entry(K1, "r/m:1");
        let st = [loaded(&e, "b1")];
        let n = node(K1, "b1", &[]);
        for phase in [PodPhase::InFlight, pending(0)] {
            let unload = pod(Action::Unload, &e, "b1", phase.clone());
            // Wanted again while the unload runs or waits: no ready label, no new pod.
            assert_eq!(
                plan(&n, &[e.clone()], &st, &[unload.clone()], &[], 1)
                    .into_iter()
                    .filter(|s| !matches!(s, Step::RequeueAfter(_)))
                    .collect::<Vec<_>>(),
                [],
                "{phase:?}"
            );
            let ready = node(K1, "b1", &[(READY, "")]);
            assert_eq!(
                plan(&ready, &[e.clone()], &st, &[unload], &[], 1)[0],
                labels(&[(READY, None)]),
                "{phase:?}"
            );
        }
    }

    #[test]
    fn a_pending_load_of_an_old_entry_is_replaced() {
        let old = entry(K1, "r/m:1");
        let new = entry(K1, "r/m:2");
        let n = node(K1, "b1", &[]);
        let stuck = pod(Action::Load, &old, "b1", pending(0));
        assert_eq!(
            plan(&n, &[new.clone()], &[], std::slice::from_ref(&stuck), &[], 5),
            [Step::DeletePod("w-load".into())]
        );
        // No longer wanted at all: the same.
        assert_eq!(
            plan(&n, &[], &[], std::slice::from_ref(&stuck), &[], 5),
            [Step::DeletePod("w-load".into())]
        );
        // A started load is left to finish: stopping it could leave the module half done.
        let running = pod(Action::Load, &old, "b1", PodPhase::InFlight);
        assert_eq!(plan(&n, &[new.clone()], &[], &[running], &[], 5), []);
    }

    #[test]
    fn a_pod_pending_too_long_is_a_failed_attempt() {
        let e = entry(K1, "r/m:1");
        let n = node(K1, "b1", &[]);
        let stuck = pod(Action::Load, &e, "b1", pending(0));
        // Before the timeout: look again when it ends.
        assert_eq!(
            plan(&n, &[e.clone()], &[], std::slice::from_ref(&stuck), &[], 60),
            [Step::RequeueAfter(Duration::from_secs(540))]
        );
        // At the timeout: reported with what held it back, retried after the first backoff.
        assert_eq!(
            plan(&n, &[e.clone()], &[], std::slice::from_ref(&stuck), &[], 600),
            [
                Step::Event {
                    type_: EventType::Warning,
                    reason: "ModuleLoadFailed",
                    message: "Module ns/m: loading failed on attempt 1 (worker pod w-load): still Pending \
                              after 10m: ImagePullBackOff: Back-off pulling image \"r/m:1\"; retrying in 10s"
                        .into()
                },
                Step::MarkReported("w-load".into()),
                Step::RequeueAfter(Duration::from_secs(10)),
            ]
        );
        let mut reported = stuck.clone();
        reported.reported = true;
        assert_eq!(
            plan(&n, &[e.clone()], &[], std::slice::from_ref(&reported), &[], 610),
            [Step::CreatePod {
                action: Action::Load,
                entry: e.clone(),
                attempt: 1
            }]
        );
        // The retry shows up: the stuck pod goes, the retry is waited for.
        let mut retry = pod(Action::Load, &e, "b1", pending(611));
        retry.name = "w-load-1".into();
        retry.attempt = 1;
        assert_eq!(
            plan(&n, &[e.clone()], &[], &[reported, retry], &[], 612),
            [
                Step::DeletePod("w-load".into()),
                Step::RequeueAfter(Duration::from_secs(599))
            ]
        );
    }

    #[test]
    fn timeouts_read_as_written() {
        assert_eq!(human(Duration::from_secs(600)), "10m");
        assert_eq!(human(Duration::from_secs(90)), "90s");
        assert_eq!(human(Duration::from_secs(5400)), "1h30m");
        assert_eq!(human(Duration::from_secs(7200)), "2h");
    }
}
