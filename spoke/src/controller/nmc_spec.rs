//! The one writer of NodeModulesConfig specs. Modules hand it their entry for a node (or its
//! withdrawal); it writes each node's pending changes, from every Module, in one request, with
//! a bounded number of requests in flight. When several Modules change at once (a new node, a
//! fresh install, a kernel mapping edited in several Modules), a node gets one write instead of
//! one per Module, and a node whose write waits for a slot gathers the later changes too.
//!
//! Each write is a JSON patch that first tests the object's `metadata.generation` (which only a
//! spec change moves) and then sets the whole list: computed from a stale cache it fails, is
//! read again and recomputed, so it never drops an entry another writer put there.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource};
use serde_json::json;
use shared_api::nmc::{NodeModuleSpec, NodeModulesConfig, NodeModulesConfigSpec};
use tokio::sync::{Semaphore, oneshot};

use crate::metrics::{Metrics, Wrote};
use crate::plan::ModuleKey;

/// Field manager of NodeModulesConfig spec writes.
pub const MANAGER: &str = "kmm-spoke-nmc";

/// Spec writes in flight at once.
const IN_FLIGHT: usize = 32;

/// Attempts at one node's write when its object keeps changing under it.
const ATTEMPTS: usize = 5;

/// Why a node's entries could not be written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// The API server refused or failed.
    #[error("writing NodeModulesConfig {node}: {message}")]
    Api {
        /// The node.
        node: String,
        /// What the API server said.
        message: String,
    },
    /// The object changed under every attempt.
    #[error("writing NodeModulesConfig {0}: it changed under each of {ATTEMPTS} attempts")]
    Contended(String),
    /// This replica is no longer the leader.
    #[error("writing NodeModulesConfig {0}: this replica's leader term has ended")]
    NotLeader(String),
}

type Waiter = oneshot::Sender<Result<(), WriteError>>;

#[derive(Default)]
struct Pending {
    /// Per Module: its entry, or `None` to withdraw it. A later change replaces an earlier one.
    changes: BTreeMap<ModuleKey, Option<NodeModuleSpec>>,
    waiters: Vec<Waiter>,
    /// A task is writing this node's changes (and takes any that arrive meanwhile).
    flushing: bool,
}

struct Inner {
    client: Client,
    nodes: Store<k8s_openapi::api::core::v1::Node>,
    nmcs: Store<NodeModulesConfig>,
    metrics: Arc<Metrics>,
    leadership: kmm_runtime::leader::Leadership,
    pending: Mutex<HashMap<String, Pending>>,
    slots: Semaphore,
}

/// The spec writer; cheap to clone.
#[derive(Clone)]
pub struct SpecWriter(Arc<Inner>);

impl SpecWriter {
    /// A writer over the given caches.
    pub fn new(
        client: Client,
        nodes: Store<k8s_openapi::api::core::v1::Node>,
        nmcs: Store<NodeModulesConfig>,
        metrics: Arc<Metrics>,
        leadership: kmm_runtime::leader::Leadership,
    ) -> Self {
        Self(Arc::new(Inner {
            client,
            nodes,
            nmcs,
            metrics,
            leadership,
            pending: Mutex::new(HashMap::new()),
            slots: Semaphore::new(IN_FLIGHT),
        }))
    }

    /// Sets (`Some`) or withdraws (`None`) the entry of Module `key` on `node`, and waits until
    /// it is written (with whatever else was pending for the node).
    pub async fn change(&self, node: String, key: ModuleKey, entry: Option<NodeModuleSpec>) -> Result<(), WriteError> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut pending = self.0.lock();
            let p = pending.entry(node.clone()).or_default();
            p.changes.insert(key, entry);
            p.waiters.push(tx);
            !std::mem::replace(&mut p.flushing, true)
        };
        if start {
            // On its own task: the write completes even if the caller is dropped meanwhile.
            tokio::spawn(self.clone().flush(node.clone()));
        }
        // The sender goes only with a write that panicked.
        rx.await.unwrap_or(Err(WriteError::Contended(node)))
    }

    async fn flush(self, node: String) {
        loop {
            // Changes keep gathering while the write waits for a slot.
            let Ok(_slot) = self.0.slots.acquire().await else {
                return;
            };
            let (changes, waiters) = {
                let mut pending = self.0.lock();
                let Some(p) = pending.get_mut(&node) else { return };
                if p.changes.is_empty() {
                    pending.remove(&node);
                    return;
                }
                (std::mem::take(&mut p.changes), std::mem::take(&mut p.waiters))
            };
            let result = self.write(&node, &changes).await;
            if let Err(e) = &result {
                tracing::warn!(node = %node, error = %e, "could not write NodeModulesConfig");
            }
            for w in waiters {
                let _ = w.send(result.clone());
            }
        }
    }

    async fn write(&self, node: &str, changes: &BTreeMap<ModuleKey, Option<NodeModuleSpec>>) -> Result<(), WriteError> {
        let api: Api<NodeModulesConfig> = Api::all(self.0.client.clone());
        let api_err = |e: kube::Error| WriteError::Api {
            node: node.to_owned(),
            message: match e {
                kube::Error::Api(s) => s.message,
                other => other.to_string(),
            },
        };
        let mut base = self.0.nmcs.get(&ObjectRef::new(node)).map(|n| (*n).clone());
        for _ in 0..ATTEMPTS {
            if !self.0.leadership.is_valid() {
                return Err(WriteError::NotLeader(node.to_owned()));
            }
            let current = base.as_ref().map(|n| n.spec.modules.as_slice()).unwrap_or_default();
            let Some(modules) = changed(current, changes) else {
                return Ok(());
            };
            let written = match &base {
                None => {
                    let nmc = self.new_nmc(node, modules);
                    api.create(&PostParams::default(), &nmc).await.map(drop)
                }
                Some(nmc) => {
                    let patch: json_patch::Patch = serde_json::from_value(json!([
                        { "op": "test", "path": "/metadata/generation", "value": nmc.metadata.generation },
                        { "op": "add", "path": "/spec/modules", "value": modules },
                    ]))
                    .expect("a well-formed JSON patch");
                    let params = PatchParams {
                        field_manager: Some(MANAGER.into()),
                        ..Default::default()
                    };
                    api.patch(node, &params, &Patch::<()>::Json(patch)).await.map(drop)
                }
            };
            match written {
                Ok(()) => {
                    self.0.metrics.wrote(Wrote::nmc_spec);
                    return Ok(());
                }
                // Created meanwhile: read it and compute the list again.
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    base = api.get_opt(node).await.map_err(api_err)?;
                }
                // The generation test failed (its spec moved on since `base`, a stale cache), or
                // the API server refused the new list (a policy, validation): which one, the
                // object as it is now says.
                Err(kube::Error::Api(s)) if s.code == 422 && base.is_some() => {
                    let fresh = api.get_opt(node).await.map_err(api_err)?;
                    let tested = base.as_ref().and_then(|b| b.metadata.generation);
                    if fresh.as_ref().and_then(|f| f.metadata.generation) == tested {
                        return Err(api_err(kube::Error::Api(s)));
                    }
                    base = fresh;
                }
                Err(e) => return Err(api_err(e)),
            }
        }
        Err(WriteError::Contended(node.to_owned()))
    }

    /// A NodeModulesConfig for `node`, owned by the Node so it is garbage collected with it (but
    /// not controlled by it).
    fn new_nmc(&self, node: &str, modules: Vec<NodeModuleSpec>) -> NodeModulesConfig {
        let owner = self
            .0
            .nodes
            .get(&ObjectRef::new(node))
            .and_then(|n| n.controller_owner_ref(&()))
            .map(|mut o| {
                o.controller = None;
                o.block_owner_deletion = None;
                o
            });
        let mut nmc = NodeModulesConfig::new(node, NodeModulesConfigSpec { modules });
        nmc.metadata.owner_references = owner.map(|o| vec![o]);
        nmc
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        // The map stays consistent even if a holder panicked.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The node's entry list with `changes` applied, or `None` when that is what it already is. An
/// entry keeps its place; a new one goes last.
pub fn changed(
    current: &[NodeModuleSpec],
    changes: &BTreeMap<ModuleKey, Option<NodeModuleSpec>>,
) -> Option<Vec<NodeModuleSpec>> {
    let key = |m: &NodeModuleSpec| ModuleKey::new(&m.namespace, &m.name);
    let mut out: Vec<NodeModuleSpec> = current
        .iter()
        .filter_map(|m| match changes.get(&key(m)) {
            None => Some(m.clone()),
            Some(change) => change.clone(),
        })
        .collect();
    for (k, change) in changes {
        if let Some(entry) = change
            && !current.iter().any(|m| &key(m) == k)
        {
            out.push(entry.clone());
        }
    }
    (out != current).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, image: &str) -> NodeModuleSpec {
        let mut e = NodeModuleSpec {
            name: name.into(),
            namespace: "ns".into(),
            ..Default::default()
        };
        e.config.container_image = image.into();
        e
    }

    #[test]
    fn changes_from_several_modules_make_one_list() {
        let current = [entry("a", "a:1"), entry("b", "b:1"), entry("c", "c:1")];
        let changes = BTreeMap::from([
            (ModuleKey::new("ns", "b"), None),
            (ModuleKey::new("ns", "c"), Some(entry("c", "c:2"))),
            (ModuleKey::new("ns", "d"), Some(entry("d", "d:1"))),
            (ModuleKey::new("ns", "e"), None),
        ]);
        assert_eq!(
            changed(&current, &changes),
            Some(vec![entry("a", "a:1"), entry("c", "c:2"), entry("d", "d:1")])
        );
    }

    #[test]
    fn changes_already_in_place_write_nothing() {
        let current = [entry("a", "a:1")];
        let changes = BTreeMap::from([
            (ModuleKey::new("ns", "a"), Some(entry("a", "a:1"))),
            (ModuleKey::new("ns", "z"), None),
        ]);
        assert_eq!(changed(&current, &changes), None);
        assert_eq!(changed(&[], &BTreeMap::new()), None);
    }
}
