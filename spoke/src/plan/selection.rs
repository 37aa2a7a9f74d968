//! Which nodes a Module targets: selector, tolerated taints, schedulability, version label.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Taint, Toleration};
use shared_api::kernel;

/// What the planner needs of a Node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    /// Node name.
    pub name: String,
    /// Node labels.
    pub labels: BTreeMap<String, String>,
    /// Node taints.
    pub taints: Vec<Taint>,
    /// Cordoned.
    pub unschedulable: bool,
    /// Kernel release, as the node reports it.
    pub kernel: String,
    /// Boot ID; a new one means the node rebooted and lost its loaded modules.
    pub boot_id: String,
}

impl NodeView {
    /// The view of a Node object; `None` when it has no name.
    pub fn from_node(node: &Node) -> Option<Self> {
        let info = node.status.as_ref().and_then(|s| s.node_info.as_ref());
        let spec = node.spec.as_ref();
        Some(Self {
            name: node.metadata.name.clone()?,
            labels: node.metadata.labels.clone().unwrap_or_default(),
            taints: spec.and_then(|s| s.taints.clone()).unwrap_or_default(),
            unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
            kernel: info
                .map(|i| kernel::release(&i.kernel_version).to_owned())
                .unwrap_or_default(),
            boot_id: info.map(|i| i.boot_id.clone()).unwrap_or_default(),
        })
    }
}

/// Whether `labels` satisfy a Module's `selector` (every key with its value).
pub fn selector_matches(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Which controllers a Node event concerns, from the view of the node before it (`None`: first
/// seen) and after. Selection and the node plan read only [`NodeView`], so heartbeats, conditions
/// and image lists change nothing; a Module is concerned when its selector matched the node
/// before or matches it now.
pub fn node_change_concerns<'a, M>(
    before: Option<&NodeView>,
    after: &NodeView,
    modules: impl IntoIterator<Item = (M, &'a BTreeMap<String, String>)>,
) -> Option<Vec<M>> {
    if before == Some(after) {
        return None;
    }
    Some(
        modules
            .into_iter()
            .filter(|(_, sel)| {
                selector_matches(sel, &after.labels) || before.is_some_and(|b| selector_matches(sel, &b.labels))
            })
            .map(|(m, _)| m)
            .collect(),
    )
}

/// Whether `toleration` tolerates `taint`, with the scheduler's rules.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect_ok = toleration
        .effect
        .as_deref()
        .is_none_or(|e| e.is_empty() || e == taint.effect);
    let key = toleration.key.as_deref().unwrap_or_default();
    let key_ok = key.is_empty() || key == taint.key;
    let value_ok = match toleration.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        _ => toleration.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default(),
    };
    // An empty key with operator Exists matches every taint; an empty key otherwise matches none.
    let empty_key_ok = !key.is_empty() || toleration.operator.as_deref() == Some("Exists");
    effect_ok && key_ok && value_ok && empty_key_ok
}

/// Taints the node lifecycle controller puts on a node whose kubelet stopped reporting or is not
/// ready. They say nothing about the modules in its kernel, so a node carrying one keeps what it
/// runs (upstream KMM withdraws its entries, which unloads and reloads the driver once the kubelet
/// is back).
pub const NOT_READY_TAINTS: [&str; 2] = ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"];

/// The taint a cordoned node carries (the node lifecycle controller adds it; we assume it as
/// soon as `spec.unschedulable` is set, so a cordon acts before the controller catches up).
pub const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";

/// Tolerations every Module has, as upstream KMM's `InternalTolerations`: a node under disk,
/// memory or PID pressure keeps its modules (unloading a driver never relieves the pressure).
pub fn internal_tolerations() -> Vec<Toleration> {
    [
        "node.kubernetes.io/disk-pressure",
        "node.kubernetes.io/memory-pressure",
        "node.kubernetes.io/pid-pressure",
    ]
    .into_iter()
    .map(|key| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some("NoSchedule".into()),
        ..Default::default()
    })
    .collect()
}

/// The Module's tolerations followed by the internal ones it does not already list: what the
/// NodeModulesConfig entry and the worker pods carry.
pub fn with_internal_tolerations(tolerations: &[Toleration]) -> Vec<Toleration> {
    let mut all = tolerations.to_vec();
    for t in internal_tolerations() {
        if !all.contains(&t) {
            all.push(t);
        }
    }
    all
}

/// The first taint that keeps pods off the node and that no toleration tolerates.
pub fn untolerated_taint<'a>(taints: &'a [Taint], tolerations: &[Toleration]) -> Option<&'a Taint> {
    taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .find(|t| !tolerations.iter().any(|tol| tolerates(tol, t)))
}

/// Why a node is or is not targeted by a Module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Labels do not match the selector.
    NotMatching,
    /// Matches, but cordoned and the Module does not tolerate `node.kubernetes.io/unschedulable`:
    /// its modules unload.
    Cordoned,
    /// Matches, but carries a taint the Module does not tolerate.
    Untolerated(String),
    /// Matches, but the node is not ready or unreachable (one of [`NOT_READY_TAINTS`], not
    /// tolerated): what it runs stays, nothing new is started on it.
    NotReady(String),
    /// Matches, but a versioned Module's version differs from the node's version label (or the
    /// node has none).
    VersionLabel {
        /// The label's value on the node, if any.
        on_node: Option<String>,
    },
    /// Targeted.
    Targeted,
}

/// Decides whether `node` is targeted by a Module with this selector, tolerations and, for an
/// ordered upgrade, version (`version_label` is the node label key carrying the wanted version).
/// As upstream, the internal tolerations are added, and a cordon counts as the
/// `node.kubernetes.io/unschedulable:NoSchedule` taint.
pub fn select(
    node: &NodeView,
    selector: &BTreeMap<String, String>,
    tolerations: &[Toleration],
    version: Option<(&str, &str)>,
) -> Selection {
    if !selector_matches(selector, &node.labels) {
        return Selection::NotMatching;
    }
    let tolerations = with_internal_tolerations(tolerations);
    let mut taints = std::borrow::Cow::Borrowed(&node.taints);
    if node.unschedulable && !taints.iter().any(|t| t.key == UNSCHEDULABLE_TAINT) {
        taints.to_mut().insert(
            0,
            Taint {
                key: UNSCHEDULABLE_TAINT.into(),
                effect: "NoSchedule".into(),
                ..Default::default()
            },
        );
    }
    // The cordon is listed first: it is the reason an administrator looks for.
    if let Some(t) = untolerated_taint(&taints, &tolerations) {
        if t.key == UNSCHEDULABLE_TAINT {
            return Selection::Cordoned;
        }
        let shown = format!("{}={}:{}", t.key, t.value.as_deref().unwrap_or_default(), t.effect);
        // A cordon or another taint on the same node still decides: only a node whose sole
        // untolerated taints are the lifecycle controller's readiness ones is held.
        if NOT_READY_TAINTS.contains(&t.key.as_str())
            && taints
                .iter()
                .filter(|o| !NOT_READY_TAINTS.contains(&o.key.as_str()))
                .all(|o| untolerated_taint(std::slice::from_ref(o), &tolerations).is_none())
        {
            return Selection::NotReady(shown);
        }
        return Selection::Untolerated(shown);
    }
    if let Some((label, wanted)) = version {
        let on_node = node.labels.get(label);
        if on_node.map(String::as_str) != Some(wanted) {
            return Selection::VersionLabel {
                on_node: on_node.cloned(),
            };
        }
    }
    Selection::Targeted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_node_changes_that_selection_reads_concern_the_modules_that_select_the_node() {
        let view = |labels: &[(&str, &str)], kernel: &str| NodeView {
            name: "n".into(),
            labels: labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
            taints: vec![],
            unschedulable: false,
            kernel: kernel.into(),
            boot_id: "b".into(),
        };
        let gpu: BTreeMap<String, String> = [("gpu".to_owned(), "yes".to_owned())].into();
        let any: BTreeMap<String, String> = BTreeMap::new();
        let modules = || [("gpu", &gpu), ("any", &any)];
        let a = view(&[("gpu", "yes")], "6.1.0");
        // A heartbeat (same view): nobody.
        assert_eq!(node_change_concerns(Some(&a), &a, modules()), None);
        // First seen, or a new kernel: the Modules selecting it.
        assert_eq!(node_change_concerns(None, &a, modules()), Some(vec!["gpu", "any"]));
        let b = view(&[("gpu", "yes")], "6.2.0");
        assert_eq!(node_change_concerns(Some(&a), &b, modules()), Some(vec!["gpu", "any"]));
        // A label taken off: the Module it selected before still hears of it.
        let c = view(&[], "6.1.0");
        assert_eq!(node_change_concerns(Some(&a), &c, modules()), Some(vec!["gpu", "any"]));
        let d = view(&[("other", "x")], "6.1.0");
        assert_eq!(node_change_concerns(Some(&c), &d, modules()), Some(vec!["any"]));
    }

    fn taint(key: &str, value: Option<&str>, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: value.map(Into::into),
            effect: effect.into(),
            time_added: None,
        }
    }

    fn tol(key: Option<&str>, op: Option<&str>, value: Option<&str>, effect: Option<&str>) -> Toleration {
        Toleration {
            key: key.map(Into::into),
            operator: op.map(Into::into),
            value: value.map(Into::into),
            effect: effect.map(Into::into),
            toleration_seconds: None,
        }
    }

    fn node(labels: &[(&str, &str)]) -> NodeView {
        NodeView {
            name: "n1".into(),
            labels: labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
            taints: vec![],
            unschedulable: false,
            kernel: "6.1.0-28-amd64".into(),
            boot_id: "b1".into(),
        }
    }

    #[test]
    fn toleration_rules() {
        let t = taint("gpu", Some("true"), "NoSchedule");
        assert!(tolerates(&tol(Some("gpu"), None, Some("true"), None), &t));
        assert!(tolerates(
            &tol(Some("gpu"), Some("Exists"), None, Some("NoSchedule")),
            &t
        ));
        assert!(!tolerates(&tol(Some("gpu"), None, Some("false"), None), &t));
        assert!(!tolerates(
            &tol(Some("gpu"), Some("Exists"), None, Some("NoExecute")),
            &t
        ));
        assert!(
            tolerates(&tol(None, Some("Exists"), None, None), &t),
            "empty key + Exists tolerates all"
        );
        assert!(!tolerates(&tol(None, None, None, None), &t));
        assert_eq!(untolerated_taint(&[taint("a", None, "PreferNoSchedule")], &[]), None);
        assert_eq!(untolerated_taint(std::slice::from_ref(&t), &[]), Some(&t));
    }

    #[test]
    fn selection_order_of_reasons() {
        let sel: BTreeMap<_, _> = [("role".to_owned(), "worker".to_owned())].into();
        assert_eq!(select(&node(&[]), &sel, &[], None), Selection::NotMatching);
        let mut n = node(&[("role", "worker")]);
        assert_eq!(select(&n, &sel, &[], None), Selection::Targeted);
        n.taints = vec![taint("gpu", None, "NoExecute")];
        assert_eq!(
            select(&n, &sel, &[], None),
            Selection::Untolerated("gpu=:NoExecute".into())
        );
        assert_eq!(
            select(&n, &sel, &[tol(Some("gpu"), Some("Exists"), None, None)], None),
            Selection::Targeted
        );
        n.unschedulable = true;
        assert_eq!(select(&n, &sel, &[], None), Selection::Cordoned);
    }

    #[test]
    fn pressure_is_tolerated_and_a_cordon_only_when_not_tolerated() {
        let sel = BTreeMap::new();
        let mut n = node(&[]);
        for key in ["disk-pressure", "memory-pressure", "pid-pressure"] {
            n.taints = vec![taint(&format!("node.kubernetes.io/{key}"), None, "NoSchedule")];
            assert_eq!(select(&n, &sel, &[], None), Selection::Targeted, "{key}");
        }
        // Pressure evicting pods (NoExecute) is not one of upstream's internal tolerations.
        n.taints = vec![taint("node.kubernetes.io/memory-pressure", None, "NoExecute")];
        assert!(matches!(select(&n, &sel, &[], None), Selection::Untolerated(_)));
        n.taints.clear();
        n.unschedulable = true;
        assert_eq!(select(&n, &sel, &[], None), Selection::Cordoned);
        // The node lifecycle controller's taint alone (cordon seen through it) is the same.
        n.unschedulable = false;
        n.taints = vec![taint(UNSCHEDULABLE_TAINT, None, "NoSchedule")];
        assert_eq!(select(&n, &sel, &[], None), Selection::Cordoned);
        n.unschedulable = true;
        let cordon_ok = tol(Some(UNSCHEDULABLE_TAINT), Some("Exists"), None, Some("NoSchedule"));
        assert_eq!(select(&n, &sel, &[cordon_ok], None), Selection::Targeted);
        assert_eq!(
            with_internal_tolerations(&internal_tolerations()[..1]).len(),
            3,
            "listed once"
        );
    }

    #[test]
    fn versioned_modules_wait_for_the_node_label() {
        let sel = BTreeMap::new();
        let key = "kmm.node.kubernetes.io/version-module.ns.m";
        let mut n = node(&[]);
        assert_eq!(
            select(&n, &sel, &[], Some((key, "2"))),
            Selection::VersionLabel { on_node: None }
        );
        n.labels.insert(key.into(), "1".into());
        assert_eq!(
            select(&n, &sel, &[], Some((key, "2"))),
            Selection::VersionLabel {
                on_node: Some("1".into())
            }
        );
        n.labels.insert(key.into(), "2".into());
        assert_eq!(select(&n, &sel, &[], Some((key, "2"))), Selection::Targeted);
    }
}
