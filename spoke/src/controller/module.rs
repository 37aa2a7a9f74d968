//! Module controller: writes each Module's entry into the NodeModulesConfig of every targeted
//! node, runs its device plugin DaemonSet, reports its status, and on deletion keeps the Module
//! until the node controllers have unloaded it everywhere.
//!
//! The entries go through [`SpecWriter`](super::nmc_spec::SpecWriter), which writes what every
//! Module wants on a node in one request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::jiff::Timestamp;
use kmm_runtime::events::{Event, EventType};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;
use shared_api::conditions::{self, Wanted};
use shared_api::module::{DaemonSetStatus, Module, ModuleStatus};
use shared_api::nmc::{NodeModuleSpec, NodeModuleStatus, NodeModulesConfig};

use super::{Context, Error, FINALIZER, RESYNC, is_not_found, kube_err};
use crate::metrics::Wrote;
use crate::plan::ModuleKey;
use crate::plan::device_plugin;
use crate::plan::module_plan::{ModulePlan, PlanError, loader_status, plan_module};

fn nmc_entry<'a>(nmc: &'a NodeModulesConfig, key: &ModuleKey) -> Option<&'a NodeModuleSpec> {
    nmc.spec
        .modules
        .iter()
        .find(|m| m.namespace == key.namespace && m.name == key.name)
}

/// Whether the node's NodeModulesConfig records the Module as loaded.
pub(super) fn nmc_has_status(nmc: &NodeModulesConfig, key: &ModuleKey) -> bool {
    nmc.status.as_ref().is_some_and(|s| {
        s.modules
            .iter()
            .any(|m| m.namespace == key.namespace && m.name == key.name)
    })
}

/// Sets `Degraded` for `reason`, and says it in a Warning event and the log once per distinct
/// message (node events re-plan every Module, so a lasting problem is seen many times).
async fn degrade(
    ctx: &Context,
    module: &Module,
    status: &mut ModuleStatus,
    reason: &str,
    message: String,
    now: Timestamp,
) {
    let was = module
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == conditions::DEGRADED))
        .map(|c| c.message.as_str());
    if was != Some(message.as_str()) {
        tracing::warn!(module = %module.name_any(), namespace = ?module.metadata.namespace, reason, %message, "degraded");
        publish(ctx, module, EventType::Warning, reason, message.clone()).await;
    }
    conditions::set(
        &mut status.conditions,
        Wanted {
            type_: conditions::DEGRADED,
            status: true,
            reason,
            message,
        },
        module.metadata.generation,
        now,
    );
}

async fn publish(ctx: &Context, module: &Module, type_: EventType, reason: &str, note: String) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    ctx.publish(&ev, &module.object_ref(&())).await;
}

async fn patch_status(ctx: &Context, module: &Module, status: ModuleStatus) -> Result<(), Error> {
    if module.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let api: Api<Module> = Api::namespaced(ctx.client.clone(), &module.namespace().unwrap_or_default());
    api.patch_status(
        &module.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
    .map_err(kube_err(format!("updating the status of Module {}", module.name_any())))?;
    ctx.metrics.wrote(Wrote::module_status);
    Ok(())
}

fn module_key(module: &Module) -> Result<ModuleKey, Error> {
    let ns = module
        .namespace()
        .ok_or_else(|| Error::Missing(module.name_any(), "namespace"))?;
    Ok(ModuleKey::new(ns, module.name_any()))
}

/// Reconciles one Module.
pub async fn reconcile(module: Arc<Module>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !ctx.leadership.is_valid() {
        // The leader term ended (a stall, a lost lease): another replica may act by now.
        tracing::warn!("Module: not reconciled, this replica's leader term has ended");
        return Ok(Action::await_change());
    }
    let started = Instant::now();
    let result = reconcile_inner(&module, &ctx).await;
    ctx.metrics
        .observe_reconcile("module", started.elapsed(), result.is_err());
    result
}

async fn reconcile_inner(module: &Module, ctx: &Context) -> Result<Action, Error> {
    let key = module_key(module)?;
    let api: Api<Module> = Api::namespaced(ctx.client.clone(), &key.namespace);
    let now = Timestamp::now();
    let generation = module.metadata.generation;
    let mut status = module.status.clone().unwrap_or_default();

    if module.metadata.deletion_timestamp.is_some() {
        let withdrawals = ctx
            .nmcs
            .state()
            .into_iter()
            .filter(|n| nmc_entry(n, &key).is_some())
            .map(|n| ctx.nmc_specs.change(n.name_any(), key.clone(), None))
            .collect::<Vec<_>>();
        if let Some(e) = futures::future::join_all(withdrawals)
            .await
            .into_iter()
            .find_map(Result::err)
        {
            tracing::warn!(module = %key, error = %e, "could not withdraw the module from a node; retrying");
            return Ok(Action::requeue(Duration::from_secs(5)));
        }
        let loaded: Vec<String> = ctx
            .nmcs
            .state()
            .iter()
            .filter(|n| nmc_has_status(n, &key))
            .map(|n| n.name_any())
            .collect();
        if !loaded.is_empty() {
            status.module_loader.desired_number = 0;
            status.module_loader.available_number = loaded.len() as i32;
            let message = format!("unloading from {} node(s): {}", loaded.len(), loaded.join(", "));
            conditions::set(
                &mut status.conditions,
                Wanted {
                    type_: conditions::PROGRESSING,
                    status: true,
                    reason: "Unloading",
                    message,
                },
                generation,
                now,
            );
            patch_status(ctx, module, status).await?;
            return Ok(Action::requeue(Duration::from_secs(5)));
        }
        if module.finalizers().iter().any(|f| f == FINALIZER) {
            super::namespace::unmark_if_last(ctx, &key.namespace, &key.name).await?;
            let remaining: Vec<&String> = module.finalizers().iter().filter(|f| *f != FINALIZER).collect();
            let patch =
                json!({ "metadata": { "finalizers": remaining, "resourceVersion": module.resource_version() } });
            match api
                .patch(&key.name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Ok(_) => ctx.metrics.wrote(Wrote::module_finalizer),
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(kube_err(format!("removing the finalizer of Module {key}"))(e)),
            }
            ctx.metrics.remove_module(&key);
            tracing::info!(module = %key, "unloaded from every node; finalizer removed");
        }
        return Ok(Action::await_change());
    }

    if !module.finalizers().iter().any(|f| f == FINALIZER) {
        let mut finalizers = module.finalizers().to_vec();
        finalizers.push(FINALIZER.into());
        let patch = json!({ "metadata": { "finalizers": finalizers, "resourceVersion": module.resource_version() } });
        api.patch(&key.name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(kube_err(format!("adding the finalizer to Module {key}")))?;
        ctx.metrics.wrote(Wrote::module_finalizer);
        // The update triggers another reconcile with the finalizer in place.
        return Ok(Action::await_change());
    }
    super::namespace::mark(ctx, &key.namespace).await?;

    let nodes: Vec<_> = ctx
        .nodes
        .state()
        .iter()
        .filter_map(|n| crate::plan::selection::NodeView::from_node(n))
        .collect();
    let current: std::collections::BTreeMap<String, NodeModuleSpec> = ctx
        .nmcs
        .state()
        .iter()
        .filter_map(|n| Some((n.name_any(), nmc_entry(n, &key)?.clone())))
        .collect();
    let plan = match plan_module(module, &nodes, &current, &ctx.spoke) {
        Ok(plan) => plan,
        Err(e) => {
            let reason = match e {
                PlanError::Invalid(_) => "InvalidSpec",
                PlanError::Mapping(_) => "InvalidKernelMapping",
            };
            let message = e.to_string();
            tracing::debug!(module = %key, %message, "not loading: the spec is invalid");
            degrade(ctx, module, &mut status, reason, message, now).await;
            conditions::set(
                &mut status.conditions,
                Wanted {
                    type_: conditions::PROGRESSING,
                    status: false,
                    reason,
                    message: "fix the spec; nodes keep what they have loaded".into(),
                },
                generation,
                now,
            );
            patch_status(ctx, module, status).await?;
            // Nothing changes until the spec does; no hot loop.
            return Ok(Action::await_change());
        }
    };

    tracing::debug!(module = %key, targeted = plan.entries.len(), matching = plan.nodes_matching_selector, skipped = ?plan.skipped, "planned");
    // One node whose NodeModulesConfig cannot be written does not hold the others back: the
    // failures are collected and said on the Module, and retried.
    // The writes go out together (the writer folds them with other Modules' for the same node).
    let mut writes = Vec::new();
    for (node, entry) in &plan.entries {
        let current = ctx.nmcs.get(&kube::runtime::reflector::ObjectRef::new(node));
        if current.as_deref().and_then(|n| nmc_entry(n, &key)) != Some(entry) {
            writes.push(ctx.nmc_specs.change(node.clone(), key.clone(), Some(entry.clone())));
        }
    }
    for nmc in ctx.nmcs.state() {
        let node = nmc.name_any();
        if nmc_entry(&nmc, &key).is_some() && !plan.entries.contains_key(&node) {
            writes.push(ctx.nmc_specs.change(node, key.clone(), None));
        }
    }
    let node_failures: Vec<String> = futures::future::join_all(writes)
        .await
        .into_iter()
        .filter_map(Result::err)
        .map(|e| e.to_string())
        .collect();

    // A DaemonSet the API server refuses is said on the Module; the loader part goes on.
    let (plugin, plugin_error) = match reconcile_device_plugin(module, &key, ctx, &plan).await {
        Ok(p) => (p, None),
        Err(e) => (status.device_plugin, Some(e.to_string())),
    };
    let loaded: std::collections::BTreeMap<String, NodeModuleStatus> = plan
        .entries
        .keys()
        .filter_map(|node| {
            let nmc = ctx.nmcs.get(&kube::runtime::reflector::ObjectRef::new(node))?;
            let s = nmc
                .status
                .as_ref()?
                .modules
                .iter()
                .find(|m| m.namespace == key.namespace && m.name == key.name)?;
            Some((node.clone(), s.clone()))
        })
        .collect();
    status.module_loader = loader_status(&plan, |node| loaded.get(node));
    status.device_plugin = plugin;
    set_conditions(&mut status, &plan, generation, now);
    if let Some(message) = &plugin_error {
        degrade(ctx, module, &mut status, "DevicePluginFailed", message.clone(), now).await;
    }
    if !node_failures.is_empty() {
        let message = format!(
            "{} node(s) could not be updated (the others were): {}",
            node_failures.len(),
            node_failures.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
        );
        degrade(ctx, module, &mut status, "NodeUpdateFailed", message, now).await;
    }
    ctx.metrics.set_module(&key, &status.module_loader);
    patch_status(ctx, module, status).await?;
    // Refused writes are retried, slowly: the cause may be outside the Module (quota, policy).
    Ok(Action::requeue(if !node_failures.is_empty() {
        Duration::from_secs(30)
    } else if plugin_error.is_some() {
        Duration::from_secs(60)
    } else {
        RESYNC
    }))
}

fn set_conditions(status: &mut ModuleStatus, plan: &ModulePlan, generation: Option<i64>, now: Timestamp) {
    let l = status.module_loader;
    let done = l.available_number == l.desired_number;
    let mut problems: Vec<String> = plan
        .skipped
        .iter()
        .filter(|(_, r)| r.starts_with("kernel ") || r.starts_with("no kernel"))
        .map(|(n, r)| format!("{n}: {r}"))
        .collect();
    if !plan.needs_hub.is_empty() {
        problems.push(format!(
            "{} carry build or sign instructions; builds and signing run on the hub (kmm-hub), this spoke only loads existing images",
            plan.needs_hub.join(", ")
        ));
    }
    problems.extend(plan.unsupported.iter().cloned());
    problems.truncate(10);
    let (reason, message) = if problems.is_empty() {
        ("AsExpected", String::new())
    } else if !plan.needs_hub.is_empty() {
        ("NeedsHub", problems.join("; "))
    } else if problems.len() == plan.unsupported.len() {
        ("NotSupported", problems.join("; "))
    } else {
        ("NoKernelMapping", problems.join("; "))
    };
    // Accepted, but probably not what was meant: said where `kubectl describe` shows it, as the
    // admission webhook said it to whoever applied the Module.
    conditions::set(
        &mut status.conditions,
        Wanted {
            type_: conditions::SPEC_WARNINGS,
            status: !plan.warnings.is_empty(),
            reason: if plan.warnings.is_empty() {
                "AsExpected"
            } else {
                "AcceptedWithWarnings"
            },
            message: plan.warnings.iter().take(10).cloned().collect::<Vec<_>>().join("; "),
        },
        generation,
        now,
    );
    conditions::set(
        &mut status.conditions,
        Wanted {
            type_: conditions::DEGRADED,
            status: !problems.is_empty(),
            reason,
            message,
        },
        generation,
        now,
    );
    conditions::set(
        &mut status.conditions,
        Wanted {
            type_: conditions::PROGRESSING,
            status: !done,
            reason: if done { "AsExpected" } else { "Loading" },
            message: if done {
                String::new()
            } else {
                format!("loaded on {} of {} node(s)", l.available_number, l.desired_number)
            },
        },
        generation,
        now,
    );
    conditions::set(
        &mut status.conditions,
        Wanted {
            type_: conditions::AVAILABLE,
            status: done,
            reason: if done { "Loaded" } else { "Loading" },
            message: format!(
                "loaded on {} of {} desired node(s); {} node(s) match the selector",
                l.available_number, l.desired_number, l.nodes_matching_selector_number
            ),
        },
        generation,
        now,
    );
}

/// The JSON patch that turns upstream KMM's DaemonSet `existing` into `ours` (same name and
/// selector): template, update strategy, labels and annotations replaced, guarded by its UID.
fn take_over_patch(existing: &DaemonSet, ours: &DaemonSet) -> json_patch::Patch {
    let spec = ours.spec.clone().unwrap_or_default();
    serde_json::from_value(json!([
        { "op": "test", "path": "/metadata/uid", "value": existing.metadata.uid },
        { "op": "add", "path": "/metadata/labels", "value": ours.metadata.labels },
        { "op": "add", "path": "/metadata/annotations", "value": ours.metadata.annotations },
        { "op": "add", "path": "/spec/updateStrategy", "value": spec.update_strategy },
        { "op": "replace", "path": "/spec/template", "value": spec.template },
    ]))
    .expect("a well-formed JSON patch")
}

/// Annotation with a hash of the DaemonSet as we last applied it, so an unchanged one is not
/// applied again on every reconcile.
const SPEC_HASH: &str = "kmm.node.kubernetes.io/spec-hash";

fn spec_hash(ds: &DaemonSet) -> String {
    let bytes = serde_json::to_vec(ds).expect("a DaemonSet always serialises");
    crate::plan::short_sha256(&bytes, 12)
}

/// The Module's device plugin DaemonSets in the cache (upstream's role label, which ours carry
/// too), owned by it: ours, and upstream KMM's, which we take over.
fn owned_daemonsets(ctx: &Context, module: &Module, key: &ModuleKey) -> Vec<Arc<DaemonSet>> {
    let uid = module.metadata.uid.as_deref();
    ctx.plugin_daemonsets
        .state()
        .into_iter()
        .filter(|d| d.metadata.namespace.as_deref() == Some(key.namespace.as_str()))
        .filter(|d| {
            d.owner_references()
                .iter()
                .any(|o| o.kind == "Module" && Some(o.uid.as_str()) == uid)
        })
        .collect()
}

async fn delete_daemonset(ctx: &Context, key: &ModuleKey, name: &str) -> Result<(), Error> {
    let api: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &key.namespace);
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {
            ctx.metrics.wrote(Wrote::daemonset);
            tracing::info!(module = %key, daemonset = name, "device plugin DaemonSet deleted");
            Ok(())
        }
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(kube_err(format!("deleting DaemonSet {}/{name}", key.namespace))(e)),
    }
}

/// One DaemonSet per module version: the current version's is applied; an older version's
/// stays while nodes still run that version (their plugin keeps serving them during an ordered
/// upgrade) and is deleted once its DaemonSet controller schedules it nowhere.
async fn reconcile_device_plugin(
    module: &Module,
    key: &ModuleKey,
    ctx: &Context,
    plan: &ModulePlan,
) -> Result<DaemonSetStatus, Error> {
    let api: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &key.namespace);
    let existing = owned_daemonsets(ctx, module, key);
    let wanted = device_plugin::wanted_version(module);
    let owner = module
        .controller_owner_ref(&())
        .ok_or_else(|| Error::Missing(key.to_string(), "uid"))?;
    let default_sa = (key.namespace == ctx.spoke.operator_namespace)
        .then_some(())
        .and(ctx.device_plugin_service_account.as_deref());
    let version_of = |d: &DaemonSet| device_plugin::version_of(d, &key.namespace, &key.name);
    // The DaemonSet this version already has (found by what its pods wait for), else a new one.
    let current = existing
        .iter()
        .filter(|d| version_of(d).as_deref() == wanted)
        .min_by_key(|d| d.name_any() != device_plugin::name(&key.name, wanted))
        .cloned();
    let name = current
        .as_ref()
        .map(|d| d.name_any())
        .unwrap_or_else(|| device_plugin::name(&key.name, wanted));
    // Upstream KMM's DaemonSet for this version (its own name and `{module.name, role}`
    // selector) is taken over in place rather than replaced by a second one: its pods are
    // swapped for ours node by node, each new one up before the old one stops.
    let adopted = current
        .as_ref()
        .and_then(|d| d.spec.as_ref())
        .map(|s| &s.selector)
        .filter(|s| s.match_labels.as_ref() != Some(&device_plugin::selector_labels(&name)));
    let Some(mut ds) = device_plugin::render(module, &name, owner, default_sa, adopted) else {
        for d in &existing {
            delete_daemonset(ctx, key, &d.name_any()).await?;
        }
        return Ok(DaemonSetStatus::default());
    };
    let hash = spec_hash(&ds);
    let applied_hash = current
        .as_ref()
        .and_then(|d| d.metadata.annotations.as_ref()?.get(SPEC_HASH).cloned());
    let live = if applied_hash.as_deref() == Some(hash.as_str()) {
        current.as_deref().cloned().unwrap_or_default()
    } else {
        ds.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(SPEC_HASH.into(), hash);
        let patch = match (&adopted, &current) {
            // Not ours yet: upstream's fields (its node selector keys, its labels) must go, which
            // an apply cannot do for fields another manager owns. One JSON patch replaces the
            // template, the strategy and the metadata maps, guarded by the UID it was read with.
            (Some(_), Some(d)) if applied_hash.is_none() => Patch::Json(take_over_patch(d, &ds)),
            _ => Patch::Apply(&ds),
        };
        let params = match patch {
            Patch::Json(_) => PatchParams {
                field_manager: Some(super::NODE_MANAGER.into()),
                ..Default::default()
            },
            _ => PatchParams::apply(super::NODE_MANAGER).force(),
        };
        let applied = api
            .patch(&name, &params, &patch)
            .await
            .map_err(kube_err(format!("applying DaemonSet {}/{name}", key.namespace)))?;
        if matches!(patch, Patch::Json(_)) {
            tracing::info!(daemonset = %name, module = %key, "took over upstream KMM's device plugin DaemonSet");
        }
        ctx.metrics.wrote(Wrote::daemonset);
        applied
    };
    let mut desired = 0;
    let mut available = 0;
    for d in existing.iter().filter(|d| d.name_any() != name) {
        if device_plugin::is_unused_older_version(d, &key.namespace, &key.name, wanted) {
            delete_daemonset(ctx, key, &d.name_any()).await?;
            continue;
        }
        let s = d.status.clone().unwrap_or_default();
        desired += s.desired_number_scheduled;
        available += s.number_available.unwrap_or(0);
    }
    let s = live.status.unwrap_or_default();
    // As upstream: during an ordered upgrade the plugins of both versions count.
    Ok(DaemonSetStatus {
        nodes_matching_selector_number: plan.nodes_matching_selector,
        desired_number: desired + s.desired_number_scheduled,
        available_number: available + s.number_available.unwrap_or(0),
    })
}
