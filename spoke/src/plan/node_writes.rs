//! Folds the steps of one node pass into the fewest writes: every label change in one patch,
//! every status change in one write, the same kind of notice for several Modules in one event.
//! When several Modules finish on a node in one pass (a fresh node, a reboot, a new kernel),
//! that is one label patch, one status write and one event instead of one of each per Module.

use std::collections::BTreeMap;
use std::time::Duration;

use shared_api::nmc::NodeModuleStatus;

use super::ModuleKey;
use super::node_plan::{EventType, Step};

/// Events whose notices for several Modules read well as one: "Module a loaded ...; Module b
/// loaded ...". Failures keep an event each (each has its own message and retry).
const FOLDED_REASONS: [&str; 2] = ["ModuleLoaded", "ModuleUnloaded"];

/// Notes are joined up to this many bytes (the API server refuses an event note over 1 KiB).
const MAX_NOTE_BYTES: usize = kmm_runtime::events::MAX_NOTE_BYTES;

/// One change to a NodeModulesConfig's status list.
#[derive(Debug, Clone, PartialEq)]
pub enum StatusChange {
    /// The module is loaded as recorded here (replaces its entry).
    Record(Box<NodeModuleStatus>),
    /// The module is not loaded (its entry goes).
    Forget(ModuleKey),
}

/// An event to publish on the Node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEvent {
    /// Severity.
    pub type_: EventType,
    /// Reason.
    pub reason: &'static str,
    /// Note.
    pub message: String,
}

/// A node pass as writes, in the order they are applied: labels (removing ready labels is what
/// sends a device plugin away, and a ready label is set in the pass that records the load), the
/// status, the worker pod steps as planned, then the events saying what happened.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeWrites {
    /// Labels to set (`Some`) or remove (`None`); empty for no patch.
    pub labels: BTreeMap<String, Option<String>>,
    /// Status changes, in plan order; empty for no write.
    pub status: Vec<StatusChange>,
    /// `CreatePod`, `DeletePod` and `MarkReported` steps, in plan order.
    pub pods: Vec<Step>,
    /// Events, folded.
    pub events: Vec<NodeEvent>,
    /// Look again after this long at the latest.
    pub requeue: Option<Duration>,
}

/// Folds a node plan's `steps` into [`NodeWrites`].
pub fn fold(steps: Vec<Step>) -> NodeWrites {
    let mut w = NodeWrites::default();
    for step in steps {
        match step {
            // A later change of the same label wins, as it would applied in order.
            Step::Labels(changes) => w.labels.extend(changes),
            Step::RecordLoaded(s) => w.status.push(StatusChange::Record(Box::new(s))),
            Step::ForgetStatus(k) => w.status.push(StatusChange::Forget(k)),
            Step::Event { type_, reason, message } => {
                let folds = FOLDED_REASONS.contains(&reason);
                let into = w.events.iter_mut().rev().find(|e| {
                    folds
                        && e.type_ == type_
                        && e.reason == reason
                        && e.message.len() + 2 + message.len() <= MAX_NOTE_BYTES
                });
                match into {
                    Some(e) => {
                        e.message.push_str("; ");
                        e.message.push_str(&message);
                    }
                    None => w.events.push(NodeEvent { type_, reason, message }),
                }
            }
            Step::RequeueAfter(d) => w.requeue = Some(w.requeue.map_or(d, |r| r.min(d))),
            pod @ (Step::CreatePod { .. } | Step::DeletePod(_) | Step::MarkReported(_)) => w.pods.push(pod),
        }
    }
    w
}

/// Applies `changes` to a status list in order.
pub fn apply_status(status: &mut Vec<NodeModuleStatus>, changes: &[StatusChange]) {
    for c in changes {
        let key = match c {
            StatusChange::Record(s) => ModuleKey::new(&s.namespace, &s.name),
            StatusChange::Forget(k) => k.clone(),
        };
        status.retain(|m| !(m.namespace == key.namespace && m.name == key.name));
        if let StatusChange::Record(s) = c {
            status.push((**s).clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::node_plan::Action;
    use shared_api::nmc::NodeModuleSpec;

    fn loaded(name: &str) -> NodeModuleStatus {
        NodeModuleStatus {
            name: name.into(),
            namespace: "ns".into(),
            ..Default::default()
        }
    }

    fn event(reason: &'static str, message: &str) -> Step {
        Step::Event {
            type_: if reason.ends_with("Failed") {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason,
            message: message.into(),
        }
    }

    #[test]
    fn several_modules_done_in_one_pass_are_one_write_of_each_kind() {
        let label = |k: &str, v: Option<&str>| Step::Labels([(k.to_owned(), v.map(str::to_owned))].into());
        let create = Step::CreatePod {
            action: Action::Load,
            entry: NodeModuleSpec::default(),
            attempt: 0,
        };
        let w = fold(vec![
            label("a.ready", Some("")),
            Step::RecordLoaded(loaded("a")),
            event("ModuleLoaded", "Module ns/a loaded into the kernel"),
            Step::RequeueAfter(Duration::from_secs(30)),
            Step::DeletePod("w-b".into()),
            Step::RecordLoaded(loaded("c")),
            event("ModuleLoaded", "Module ns/c loaded into the kernel"),
            event("ModuleLoadFailed", "Module ns/d: loading failed"),
            event("ModuleLoadFailed", "Module ns/e: loading failed"),
            Step::ForgetStatus(ModuleKey::new("ns", "f")),
            create.clone(),
            Step::RequeueAfter(Duration::from_secs(5)),
            label("c.ready", Some("")),
            label("a.ready", None),
        ]);
        assert_eq!(
            w.labels,
            BTreeMap::from([("a.ready".into(), None), ("c.ready".into(), Some(String::new()))])
        );
        assert_eq!(
            w.status,
            [
                StatusChange::Record(Box::new(loaded("a"))),
                StatusChange::Record(Box::new(loaded("c"))),
                StatusChange::Forget(ModuleKey::new("ns", "f")),
            ]
        );
        assert_eq!(w.pods, [Step::DeletePod("w-b".into()), create]);
        let events: Vec<(&str, &str)> = w.events.iter().map(|e| (e.reason, e.message.as_str())).collect();
        assert_eq!(
            events,
            [
                (
                    "ModuleLoaded",
                    "Module ns/a loaded into the kernel; Module ns/c loaded into the kernel"
                ),
                ("ModuleLoadFailed", "Module ns/d: loading failed"),
                ("ModuleLoadFailed", "Module ns/e: loading failed"),
            ]
        );
        assert_eq!(w.requeue, Some(Duration::from_secs(5)));
    }

    #[test]
    fn a_folded_note_never_grows_past_what_the_api_server_takes() {
        let message = format!("Module ns/{} loaded into the kernel", "m".repeat(200));
        let w = fold((0..20).map(|_| event("ModuleLoaded", &message)).collect());
        assert!(w.events.len() > 1);
        assert!(w.events.iter().all(|e| e.message.len() <= MAX_NOTE_BYTES));
        let notices: usize = w.events.iter().map(|e| e.message.split("; ").count()).sum();
        assert_eq!(notices, 20, "every notice is said once");
    }

    #[test]
    fn status_changes_apply_in_order() {
        let mut status = vec![loaded("a"), loaded("b")];
        let again = NodeModuleStatus {
            boot_id: Some("b2".into()),
            ..loaded("a")
        };
        apply_status(
            &mut status,
            &[
                StatusChange::Forget(ModuleKey::new("ns", "a")),
                StatusChange::Record(Box::new(again.clone())),
                StatusChange::Record(Box::new(loaded("c"))),
                StatusChange::Forget(ModuleKey::new("ns", "b")),
            ],
        );
        assert_eq!(status, [again, loaded("c")]);
    }
}
