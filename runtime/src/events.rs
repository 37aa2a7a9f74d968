//! Kubernetes Events (`events.k8s.io/v1`) that keep every distinct message.
//!
//! kube-runtime's `Recorder` folds events by type, reason, action and the objects involved, but
//! not by message: a second failure with a new message, or a second Module loaded on the same
//! node, only bumps the count of the first event and its text is lost. Like client-go's event
//! correlator, this recorder folds only repeats of the same message into a series.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as KubeEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
pub use kube::runtime::events::{Event, EventType, Reporter};

/// How long a published event is remembered for folding repeats into it.
const TTL: Duration = Duration::from_secs(6 * 60);
/// At most this many remembered events; the oldest go first.
const CAPACITY: usize = 4096;

/// What makes two events the same event.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    warning: bool,
    reason: String,
    action: String,
    note: Option<String>,
    regarding: ObjectKey,
    related: Option<ObjectKey>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ObjectKey {
    kind: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
    uid: Option<String>,
}

impl From<&ObjectReference> for ObjectKey {
    fn from(r: &ObjectReference) -> Self {
        Self {
            kind: r.kind.clone(),
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            uid: r.uid.clone(),
        }
    }
}

/// An event already on the server.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Published {
    name: String,
    count: i32,
    last: Timestamp,
}

/// The events published in the last [`TTL`], bounded by [`CAPACITY`]. Pure bookkeeping.
#[derive(Debug, Default)]
struct Seen(HashMap<Key, Published>);

impl Seen {
    /// The event to fold a repeat of `key` into at `now`, with its new count.
    fn repeat(&mut self, key: &Key, now: Timestamp) -> Option<(String, i32)> {
        self.expire(now);
        self.0.get(key).map(|p| (p.name.clone(), p.count + 1))
    }

    fn remember(&mut self, key: Key, name: String, count: i32, now: Timestamp) {
        self.expire(now);
        if !self.0.contains_key(&key) && self.0.len() >= CAPACITY {
            let oldest = self.0.iter().min_by_key(|(_, p)| p.last).map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.0.remove(&k);
            }
        }
        self.0.insert(key, Published { name, count, last: now });
    }

    fn forget(&mut self, key: &Key) {
        self.0.remove(key);
    }

    fn expire(&mut self, now: Timestamp) {
        self.0.retain(|_, p| now.duration_since(p.last).unsigned_abs() < TTL);
    }
}

/// Publishes events for one controller; cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    client: kube::Client,
    reporter: Reporter,
    seen: Arc<Mutex<Seen>>,
}

/// The API server refuses an Event whose note is over 1 KiB: a longer one is cut at a
/// character boundary and marked, so the event is still recorded.
pub const MAX_NOTE_BYTES: usize = 1024;

fn fit_note(note: &str) -> String {
    if note.len() <= MAX_NOTE_BYTES {
        return note.to_owned();
    }
    const MARK: &str = " [...]";
    let mut end = MAX_NOTE_BYTES - MARK.len();
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &note[..end])
}

impl Recorder {
    /// A recorder reporting as `reporter`.
    pub fn new(client: kube::Client, reporter: Reporter) -> Self {
        Self {
            client,
            reporter,
            seen: Arc::default(),
        }
    }

    /// Publishes `ev` about `regarding`, in its namespace (`default` for cluster-scoped
    /// objects). A repeat of the same message within a few minutes raises the count of the
    /// earlier event instead of creating another.
    pub async fn publish(&self, ev: &Event, regarding: &ObjectReference) -> Result<(), kube::Error> {
        let key = Key {
            warning: matches!(ev.type_, EventType::Warning),
            reason: ev.reason.clone(),
            action: ev.action.clone(),
            note: ev.note.clone(),
            regarding: regarding.into(),
            related: ev.secondary.as_ref().map(ObjectKey::from),
        };
        let namespace = regarding.namespace.as_deref().unwrap_or("default");
        let api: Api<KubeEvent> = Api::namespaced(self.client.clone(), namespace);
        let now = Timestamp::now();
        let repeat = self.lock().repeat(&key, now);
        if let Some((name, count)) = repeat {
            let patch = serde_json::json!({
                "series": EventSeries { count, last_observed_time: MicroTime(now) }
            });
            match api.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await {
                Ok(_) => {
                    self.lock().remember(key, name, count, now);
                    return Ok(());
                }
                // Expired on the server or deleted: publish it afresh.
                Err(kube::Error::Api(s)) if s.code == 404 => self.lock().forget(&key),
                Err(e) => return Err(e),
            }
        }
        let event = self.event(ev, regarding, now);
        let created = api.create(&PostParams::default(), &event).await?;
        let name = created.metadata.name.unwrap_or_default();
        self.lock().remember(key, name, 1, now);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        // The bookkeeping stays consistent even if a holder panicked.
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn event(&self, ev: &Event, regarding: &ObjectReference, now: Timestamp) -> KubeEvent {
        let instance = self
            .reporter
            .instance
            .clone()
            .unwrap_or_else(|| self.reporter.controller.clone());
        KubeEvent {
            metadata: ObjectMeta {
                // Unique per object and instant, as kubectl and client-go name them.
                name: Some(format!(
                    "{}.{:x}",
                    regarding.name.as_deref().unwrap_or(&self.reporter.controller),
                    now.as_nanosecond()
                )),
                namespace: Some(regarding.namespace.clone().unwrap_or_else(|| "default".into())),
                ..Default::default()
            },
            action: Some(ev.action.clone()),
            reason: Some(ev.reason.clone()),
            note: ev.note.as_deref().map(fit_note),
            type_: Some(
                match ev.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            related: ev.secondary.clone(),
            reporting_controller: Some(self.reporter.controller.clone()),
            reporting_instance: Some(instance),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_notes_are_cut_to_what_the_api_server_takes() {
        assert_eq!(fit_note("short"), "short");
        let long = "é".repeat(700);
        let cut = fit_note(&long);
        assert!(cut.len() <= MAX_NOTE_BYTES && cut.ends_with(" [...]"), "{}", cut.len());
        assert!(cut.starts_with("éé"));
    }

    fn key(reason: &str, note: &str, object: &str) -> Key {
        Key {
            warning: false,
            reason: reason.into(),
            action: "Reconcile".into(),
            note: Some(note.into()),
            regarding: ObjectKey {
                kind: Some("Node".into()),
                namespace: None,
                name: Some(object.into()),
                uid: Some(format!("uid-{object}")),
            },
            related: None,
        }
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    #[test]
    fn only_the_same_message_is_folded() {
        let mut seen = Seen::default();
        let a = key("ModuleLoaded", "Module ns/a loaded", "n1");
        let b = key("ModuleLoaded", "Module ns/b loaded", "n1");
        assert_eq!(seen.repeat(&a, at(0)), None);
        seen.remember(a.clone(), "n1.1".into(), 1, at(0));
        assert_eq!(seen.repeat(&b, at(1)), None, "another message is another event");
        seen.remember(b.clone(), "n1.2".into(), 1, at(1));
        assert_eq!(seen.repeat(&a, at(2)), Some(("n1.1".into(), 2)));
        seen.remember(a.clone(), "n1.1".into(), 2, at(2));
        assert_eq!(seen.repeat(&a, at(3)), Some(("n1.1".into(), 3)));
        let other_node = key("ModuleLoaded", "Module ns/a loaded", "n2");
        assert_eq!(seen.repeat(&other_node, at(3)), None);
    }

    #[test]
    fn repeats_after_the_ttl_start_a_new_event() {
        let mut seen = Seen::default();
        let a = key("ModuleLoadFailed", "boom", "n1");
        seen.remember(a.clone(), "n1.1".into(), 1, at(0));
        assert_eq!(seen.repeat(&a, at(359)), Some(("n1.1".into(), 2)));
        assert_eq!(seen.repeat(&a, at(360)), None);
        assert!(seen.0.is_empty(), "expired entries are dropped");
    }

    #[test]
    fn capacity_drops_the_oldest() {
        let mut seen = Seen::default();
        for i in 0..CAPACITY {
            let when = if i == 0 { at(0) } else { at(1) };
            seen.remember(key("R", &i.to_string(), "n"), format!("e{i}"), 1, when);
        }
        seen.remember(key("R", "new", "n"), "new".into(), 1, at(300));
        assert_eq!(seen.0.len(), CAPACITY);
        assert_eq!(seen.repeat(&key("R", "0", "n"), at(300)), None, "the oldest went");
        assert!(seen.repeat(&key("R", "new", "n"), at(300)).is_some());
        assert!(seen.repeat(&key("R", "1", "n"), at(300)).is_some());
    }
}
