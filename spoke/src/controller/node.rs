//! Node controller: one reconcile per NodeModulesConfig (named after its node). It gathers the
//! node, its worker pods and its device plugin pods from the caches, asks
//! [`plan_node`](crate::plan::node_plan::plan_node) what to do, and applies the steps in order,
//! stopping at the first failure so a later step never runs without the earlier ones.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kmm_runtime::events::{Event, EventType as KubeEventType};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;
use shared_api::labels;
use shared_api::nmc::{NodeModuleStatus, NodeModulesConfig};

use super::{Context, Error, RESYNC, is_conflict, is_not_found, kube_err};
use crate::metrics::Wrote;
use crate::plan::ModuleKey;
use crate::plan::device_plugin;
use crate::plan::node_plan::{Action as WorkerAction, EventType, NodeState, PodPhase, Step, plan_node};
use crate::plan::node_writes;
use crate::plan::selection::NodeView;
use crate::plan::worker_pod;

fn on_node<'a>(pods: &'a [Arc<Pod>], node: &'a str) -> impl Iterator<Item = &'a Arc<Pod>> + 'a {
    pods.iter()
        .filter(move |p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
}

/// A plugin pod counts until it is gone or finished, terminating or not: it may still use the module.
fn pod_running(p: &Pod) -> bool {
    !matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn pod_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Reconciles the NodeModulesConfig of one node.
pub async fn reconcile(nmc: Arc<NodeModulesConfig>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !ctx.leadership.is_valid() {
        // The leader term ended (a stall, a lost lease): another replica may act by now.
        tracing::warn!("NodeModulesConfig: not reconciled, this replica's leader term has ended");
        return Ok(Action::await_change());
    }
    let started = Instant::now();
    let result = reconcile_inner(&nmc, &ctx).await;
    ctx.metrics
        .observe_reconcile("node", started.elapsed(), result.is_err());
    result
}

async fn reconcile_inner(nmc: &NodeModulesConfig, ctx: &Context) -> Result<Action, Error> {
    let name = nmc.name_any();
    let Some(node) = ctx.nodes.get(&ObjectRef::new(&name)) else {
        // The node is gone; its NodeModulesConfig is garbage collected with it.
        return Ok(Action::await_change());
    };
    let Some(view) = NodeView::from_node(&node) else {
        return Ok(Action::await_change());
    };
    let worker_pods = ctx.worker_pods.state();
    let pods: Vec<_> = on_node(&worker_pods, &name)
        .filter_map(|p| worker_pod::read_back(p))
        .collect();
    // Worker pods upstream KMM left behind, when taking a cluster over from it.
    for pod in on_node(&worker_pods, &name) {
        if let Some(leftover) = worker_pod::upstream_leftover(pod) {
            clean_upstream_pod(ctx, pod, leftover).await?;
        }
    }
    let now = Timestamp::now();
    if let Some(pod) =
        on_node(&worker_pods, &name).find(|p| worker_pod::upstream_in_flight(p, now, ctx.worker.pending_timeout))
    {
        tracing::info!(node = %name, pod = %pod.name_any(), "waiting for upstream KMM's worker pod to finish before acting on the node");
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    let plugin_pods = ctx.plugin_pods.state();
    let plugins: Vec<&Arc<Pod>> = on_node(&plugin_pods, &name).collect();
    let running: BTreeSet<ModuleKey> = plugins
        .iter()
        .filter(|p| pod_running(p))
        .filter_map(|p| device_plugin::module_of_pod(p))
        .collect();
    let status = nmc.status.as_ref().map(|s| s.modules.clone()).unwrap_or_default();
    let mut steps = plan_node(&NodeState {
        node: &view,
        spec: &nmc.spec.modules,
        status: &status,
        pods: &pods,
        device_plugin_running: &running,
        now: Timestamp::now(),
        pending_timeout: ctx.worker.pending_timeout,
    });
    steps.extend(plugin_ready_labels(&view, &plugins));
    tracing::debug!(node = %name, spec = nmc.spec.modules.len(), pods = pods.len(), ?steps, "node plan");
    let writes = node_writes::fold(steps);

    if !writes.labels.is_empty() {
        patch_labels(ctx, &name, &writes.labels).await?;
    }
    if !writes.status.is_empty() {
        // The status write carries the resourceVersion it was computed from: a cache that lags
        // behind an earlier write of ours (or anyone's) makes it fail instead of dropping an
        // entry, and what follows (the pods, the ModuleLoaded event) waits for a pass over fresh
        // state.
        let mut status = status;
        node_writes::apply_status(&mut status, &writes.status);
        if !write_status(ctx, &name, nmc.resource_version().as_deref(), &status).await? {
            return Ok(Action::requeue(STALE_RETRY));
        }
    }
    let mut requeue = writes.requeue.map_or(RESYNC, |d| d.min(RESYNC));
    for step in writes.pods {
        match step {
            Step::CreatePod { action, entry, attempt } => {
                let owner = nmc
                    .controller_owner_ref(&())
                    .ok_or_else(|| Error::Missing(name.clone(), "uid"))?;
                let pod = worker_pod::render(&name, &view.boot_id, &entry, action, attempt, &ctx.worker, owner);
                let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &entry.namespace);
                match api.create(&PostParams::default(), &pod).await {
                    Ok(_) => {
                        ctx.metrics.wrote(Wrote::pod_create);
                        tracing::info!(node = %name, module = %format!("{}/{}", entry.namespace, entry.name), action = action.as_str(), attempt, "worker pod created");
                    }
                    // Same name still terminating, or created by a previous run: look again soon.
                    Err(e) if is_conflict(&e) => requeue = requeue.min(Duration::from_secs(2)),
                    Err(e) => {
                        // Refused (a missing ServiceAccount, Pod Security, a quota): said on the
                        // node too; repeats of the same refusal fold into one event.
                        let (reason, verb) = match action {
                            WorkerAction::Load => ("ModuleLoadFailed", "loading"),
                            WorkerAction::Unload => ("ModuleUnloadFailed", "unloading"),
                        };
                        let ev = Event {
                            type_: KubeEventType::Warning,
                            reason: reason.into(),
                            note: Some(format!(
                                "Module {}/{}: {verb} worker pod refused: {}",
                                entry.namespace,
                                entry.name,
                                kmm_runtime::registry::error_chain(&e)
                            )),
                            action: "Reconcile".into(),
                            secondary: None,
                        };
                        ctx.publish(&ev, &node.object_ref(&())).await;
                        return Err(kube_err(format!("creating worker pod on {name}"))(e));
                    }
                }
            }
            Step::DeletePod(pod) => {
                let Some(ns) = pods.iter().find(|p| p.name == pod).map(|p| p.entry.namespace.clone()) else {
                    continue;
                };
                let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
                match api.delete(&pod, &DeleteParams::background()).await {
                    Ok(_) => ctx.metrics.wrote(Wrote::pod_delete),
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(kube_err(format!("deleting worker pod {ns}/{pod}"))(e)),
                }
            }
            Step::MarkReported(pod) => {
                let Some(p) = pods.iter().find(|p| p.name == pod) else {
                    continue;
                };
                if let PodPhase::Failed { message, .. } = &p.phase {
                    ctx.metrics.worker_failures.inc();
                    tracing::warn!(node = %name, pod = %pod, %message, "worker pod failed");
                }
                let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &p.entry.namespace);
                let patch = json!({ "metadata": { "annotations": { worker_pod::REPORTED_ANNOTATION: "true" } } });
                match api.patch(&pod, &PatchParams::default(), &Patch::Merge(patch)).await {
                    Ok(_) => ctx.metrics.wrote(Wrote::pod_patch),
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(kube_err(format!("marking worker pod {pod} reported"))(e)),
                }
            }
            other => tracing::error!(node = %name, step = ?other, "not a worker pod step; skipped"),
        }
    }
    for e in writes.events {
        let ev = Event {
            type_: match e.type_ {
                EventType::Normal => KubeEventType::Normal,
                EventType::Warning => KubeEventType::Warning,
            },
            reason: e.reason.into(),
            note: Some(e.message),
            action: "Reconcile".into(),
            secondary: None,
        };
        ctx.publish(&ev, &node.object_ref(&())).await;
    }
    Ok(Action::requeue(requeue))
}

/// Drops upstream KMM's finalizer from one of its worker pods and deletes the pod once it has
/// finished.
async fn clean_upstream_pod(ctx: &Context, pod: &Pod, leftover: worker_pod::Leftover) -> Result<(), Error> {
    let (ns, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    if leftover.remove_finalizer {
        let rest: Vec<&String> = pod
            .finalizers()
            .iter()
            .filter(|f| *f != worker_pod::UPSTREAM_FINALIZER)
            .collect();
        let patch = json!({ "metadata": { "finalizers": rest, "resourceVersion": pod.resource_version() } });
        match api.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await {
            Ok(_) => {
                ctx.metrics.wrote(Wrote::pod_patch);
            }
            // Gone, or changed since: the next pass sees it as it is.
            Err(e) if is_not_found(&e) || is_conflict(&e) => return Ok(()),
            Err(e) => {
                return Err(kube_err(format!(
                    "removing upstream's finalizer from worker pod {ns}/{name}"
                ))(e));
            }
        }
        tracing::info!(pod = %format!("{ns}/{name}"), "took over upstream KMM's worker pod: finalizer removed");
    }
    if leftover.delete {
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => {
                ctx.metrics.wrote(Wrote::pod_delete);
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(kube_err(format!("deleting upstream's worker pod {ns}/{name}"))(e)),
        }
    }
    Ok(())
}

/// `<ns>.<name>.device-plugin-ready` on the node follows the readiness of the module's plugin pod.
fn plugin_ready_labels(node: &NodeView, plugins: &[&Arc<Pod>]) -> Option<Step> {
    let ready: BTreeSet<ModuleKey> = plugins
        .iter()
        .filter(|p| pod_ready(p))
        .filter_map(|p| device_plugin::module_of_pod(p))
        .collect();
    let mut changes = BTreeMap::new();
    for key in &ready {
        if let Ok(k) = labels::device_plugin_ready(&key.namespace, &key.name)
            && !node.labels.contains_key(&k)
        {
            changes.insert(k, Some(String::new()));
        }
    }
    let prefix = format!("{}/", labels::NODE_LABEL_PREFIX);
    for k in node.labels.keys() {
        let Some(rest) = k.strip_prefix(&prefix) else { continue };
        let Some(module) = rest.strip_suffix(".device-plugin-ready") else {
            continue;
        };
        let is_ready = ready.iter().any(|r| format!("{}.{}", r.namespace, r.name) == module);
        if !is_ready {
            changes.insert(k.clone(), None);
        }
    }
    (!changes.is_empty()).then_some(Step::Labels(changes))
}

async fn patch_labels(ctx: &Context, node: &str, changes: &BTreeMap<String, Option<String>>) -> Result<(), Error> {
    let api: Api<Node> = Api::all(ctx.client.clone());
    let patch = json!({ "metadata": { "labels": changes } });
    api.patch(node, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map_err(kube_err(format!("labelling node {node}")))?;
    ctx.metrics.wrote(Wrote::node_labels);
    Ok(())
}

/// How soon to look again when the NodeModulesConfig changed under a status write.
const STALE_RETRY: Duration = Duration::from_millis(500);

/// Writes the whole status list if the object is still at `version`. `false` when it changed
/// since (409): nothing was written, the caller looks again soon.
async fn write_status(
    ctx: &Context,
    name: &str,
    version: Option<&str>,
    modules: &[NodeModuleStatus],
) -> Result<bool, Error> {
    let api: Api<NodeModulesConfig> = Api::all(ctx.client.clone());
    match write_status_at(&api, name, version, modules).await {
        Ok(Some(_)) => {
            ctx.metrics.wrote(Wrote::nmc_status);
            Ok(true)
        }
        Ok(None) => {
            tracing::debug!(node = %name, "NodeModulesConfig changed since it was read; looking again");
            Ok(false)
        }
        Err(e) => Err(kube_err(format!("updating the status of NodeModulesConfig {name}"))(e)),
    }
}

/// Replaces `status.modules` of NodeModulesConfig `name` with `modules` if the object is still
/// at resourceVersion `version`. Returns the new resourceVersion, or `None` when the object
/// changed since (nothing is written then): a writer working from a stale view never drops an
/// entry someone else (or an earlier pass) recorded.
pub async fn write_status_at(
    api: &Api<NodeModulesConfig>,
    name: &str,
    version: Option<&str>,
    modules: &[NodeModuleStatus],
) -> Result<Option<String>, kube::Error> {
    let patch = json!({ "metadata": { "resourceVersion": version }, "status": { "modules": modules } });
    match api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(written) => Ok(Some(written.resource_version().unwrap_or_default())),
        Err(e) if is_conflict(&e) => Ok(None),
        Err(e) => Err(e),
    }
}
