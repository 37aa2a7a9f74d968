//! The ManagedClusterModule controller: a thin shell around [`crate::plan`] that reads the
//! caches, asks the [`Pipeline`] for images, applies ManifestWorks with server-side apply,
//! deletes the ones no longer wanted and writes the status.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kmm_runtime::events::{Event, EventType, Recorder};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use shared_api::labels::MCM_NAME_LABEL;
use shared_api::mcm::{ManagedClusterModule, ManagedClusterModuleStatus};
use shared_api::ocm::{ManagedCluster, ManifestWork};

use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::plan::images::plan;
use crate::plan::render::{manifest_work, recorded_hash};
use crate::plan::status::{ClusterWork, cluster_work, mcm_status};

/// Field manager of everything the hub applies.
pub const FIELD_MANAGER: &str = "kmm-hub";
/// Changing this annotation's value makes the hub look every image of the MCM up again now.
pub const RESOLVE_ANNOTATION: &str = "hub.kmm.sigs.x-k8s.io/resolve";
/// ManifestWorks written at once per MCM.
const APPLY_CONCURRENCY: usize = 16;

/// Errors of a reconcile; logged, counted and retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("{what}: {source}")]
    Kube {
        /// What we were doing.
        what: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Some ManifestWorks could not be written.
    #[error("{failed} ManifestWork write(s) failed, first: {first}")]
    Works {
        /// How many.
        failed: usize,
        /// The first error.
        first: String,
    },
}

/// What the controller shares between reconciles.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Whether this replica may act (its leader term has not ended).
    pub leadership: kmm_runtime::leader::Leadership,
    /// ManagedClusters.
    pub clusters: Store<ManagedCluster>,
    /// Our ManifestWorks (labelled with the MCM name).
    pub works: Store<ManifestWork>,
    /// The image pipeline.
    pub pipeline: Arc<Pipeline>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Events on MCMs.
    pub recorder: Recorder,
    /// Requeue interval when nothing else triggers (the image re-resolution interval).
    pub requeue: Duration,
    /// Per MCM: the generation and resolve annotation last seen, to force a lookup on change.
    pub seen: Mutex<HashMap<String, SeenSpec>>,
}

/// The generation and the resolve annotation of an MCM.
pub type SeenSpec = (Option<i64>, Option<String>);

fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Kube { what, source }
}

/// Reconciles one ManagedClusterModule.
pub async fn reconcile(mcm: Arc<ManagedClusterModule>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !ctx.leadership.is_valid() {
        // The leader term ended (a stall, a lost lease): another replica may act by now.
        tracing::warn!("ManagedClusterModule: not reconciled, this replica's leader term has ended");
        return Ok(Action::await_change());
    }
    let started = Instant::now();
    let r = reconcile_inner(&mcm, &ctx).await;
    ctx.metrics.observe_reconcile(started.elapsed(), r.is_err());
    r
}

async fn reconcile_inner(mcm: &ManagedClusterModule, ctx: &Context) -> Result<Action, Error> {
    let name = mcm.name_any();
    if mcm.metadata.deletion_timestamp.is_some() {
        // The garbage collector removes the ManifestWorks through their owner references.
        ctx.pipeline.forget(&name);
        ctx.seen.lock().expect("seen lock").remove(&name);
        return Ok(Action::await_change());
    }
    let now = Timestamp::now();
    if let Err(e) = shared_api::validation::validate_mcm(mcm) {
        let message = e.to_string();
        let mut status = mcm.status.clone().unwrap_or_default();
        let changed = !status
            .conditions
            .iter()
            .any(|c| c.type_ == "Degraded" && c.reason == "InvalidSpec" && c.message == message);
        shared_api::conditions::set(
            &mut status.conditions,
            shared_api::conditions::Wanted {
                type_: shared_api::conditions::DEGRADED,
                status: true,
                reason: "InvalidSpec",
                message: message.clone(),
            },
            mcm.metadata.generation,
            now,
        );
        status.observed_generation = mcm.metadata.generation;
        if changed {
            tracing::warn!(mcm = %name, error = %message, "invalid ManagedClusterModule");
            publish(ctx, mcm, EventType::Warning, "InvalidSpec", message).await;
            write_status(ctx, mcm, &status).await?;
        }
        return Ok(Action::await_change());
    }

    let force = {
        let token = (
            mcm.metadata.generation,
            mcm.annotations().get(RESOLVE_ANNOTATION).cloned(),
        );
        let mut seen = ctx.seen.lock().expect("seen lock");
        // The first sight after a start is not a change: images are looked up anyway.
        matches!(seen.insert(name.clone(), token.clone()), Some(old) if old != token)
    };
    let clusters = ctx.clusters.state();
    let p = plan(mcm, &clusters);
    let images = ctx.pipeline.observe(&name, &p.images, force);
    let work: Vec<ClusterWork<'_>> = p.clusters.iter().map(|c| cluster_work(mcm, &p, c, &images)).collect();

    // Existing ManifestWorks of this MCM, by cluster.
    let existing: BTreeMap<String, Arc<ManifestWork>> = ctx
        .works
        .state()
        .into_iter()
        .filter(|w| w.labels().get(MCM_NAME_LABEL) == Some(&name))
        .map(|w| (w.namespace().unwrap_or_default(), w))
        .collect();

    // Apply what changed.
    let to_apply: Vec<ManifestWork> = work
        .iter()
        .filter(|w| w.render)
        .map(|w| manifest_work(mcm, &w.cluster.name, &w.pinned))
        .filter(|mw| {
            let ns = mw.namespace().unwrap_or_default();
            existing.get(&ns).and_then(|e| recorded_hash(e)) != recorded_hash(mw)
        })
        .collect();
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let results: Vec<Result<(), String>> = futures::stream::iter(to_apply)
        .map(|mw| {
            let api: Api<ManifestWork> = Api::namespaced(ctx.client.clone(), &mw.namespace().unwrap_or_default());
            let pp = pp.clone();
            async move {
                let ns = mw.namespace().unwrap_or_default();
                let mut body = serde_json::to_value(&mw).unwrap_or_default();
                if let Some(o) = body.as_object_mut() {
                    o.insert("apiVersion".into(), json!(ManifestWork::api_version(&())));
                    o.insert("kind".into(), json!(ManifestWork::kind(&())));
                    o.remove("status");
                }
                api.patch(&mw.name_any(), &pp, &Patch::Apply(&body))
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("applying ManifestWork {ns}/{}: {e}", mw.name_any()))
            }
        })
        .buffer_unordered(APPLY_CONCURRENCY)
        .collect()
        .await;
    let applied = results.iter().filter(|r| r.is_ok()).count();
    ctx.metrics.api_writes.inc_by(results.len() as u64);
    if applied > 0 {
        tracing::info!(mcm = %name, applied, "applied ManifestWorks");
    }

    // Remove the ManifestWorks of clusters no longer selected.
    let selected: BTreeSet<&str> = p.clusters.iter().map(|c| c.name.as_str()).collect();
    for (cluster, w) in &existing {
        if selected.contains(cluster.as_str()) || w.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let api: Api<ManifestWork> = Api::namespaced(ctx.client.clone(), cluster);
        ctx.metrics.api_writes.inc();
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {
                tracing::info!(mcm = %name, cluster = %cluster, "cluster no longer selected; deleted its ManifestWork");
                publish(
                    ctx,
                    mcm,
                    EventType::Normal,
                    "ManifestWorkDeleted",
                    format!("Cluster {cluster} no longer matches the selector; its ManifestWork was deleted"),
                )
                .await;
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(kube_err(format!("deleting ManifestWork {cluster}/{name}"))(e)),
        }
    }

    // Status.
    let works: BTreeMap<String, &ManifestWork> = existing.iter().map(|(k, v)| (k.clone(), v.as_ref())).collect();
    let status = mcm_status(mcm, &p, &work, &images, &works, mcm.status.as_ref(), now);
    if mcm.status.as_ref() != Some(&status) {
        write_status(ctx, mcm, &status).await?;
    }

    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    if let Some(first) = failures.first() {
        return Err(Error::Works {
            failed: failures.len(),
            first: (*first).clone(),
        });
    }
    Ok(Action::requeue(ctx.requeue))
}

async fn write_status(
    ctx: &Context,
    mcm: &ManagedClusterModule,
    status: &ManagedClusterModuleStatus,
) -> Result<(), Error> {
    let api: Api<ManagedClusterModule> = Api::all(ctx.client.clone());
    ctx.metrics.api_writes.inc();
    api.patch_status(
        &mcm.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status_patch(status) })),
    )
    .await
    .map_err(kube_err(format!(
        "writing the status of ManagedClusterModule {}",
        mcm.name_any()
    )))?;
    Ok(())
}

/// The status as a merge patch body. A merge patch keeps a key it does not name, so the lists
/// are always named: an emptied list (the last cluster unselected) must replace the old one.
fn status_patch(status: &ManagedClusterModuleStatus) -> serde_json::Value {
    let mut v = serde_json::to_value(status).unwrap_or_else(|_| json!({}));
    if let Some(o) = v.as_object_mut() {
        for key in ["images", "clusters", "conditions"] {
            o.entry(key).or_insert_with(|| json!([]));
        }
    }
    v
}

async fn publish(ctx: &Context, mcm: &ManagedClusterModule, type_: EventType, reason: &str, note: String) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: reason.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &mcm.object_ref(&())).await {
        tracing::warn!(error = %e, mcm = %mcm.name_any(), "publishing event");
    }
}

/// Logs a failed reconcile and retries after a pause, never in a hot loop.
pub fn error_policy(mcm: Arc<ManagedClusterModule>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(mcm = %mcm.name_any(), error = %err, "reconcile failed; retrying in 15s");
    Action::requeue(Duration::from_secs(15))
}

/// The MCM a ManifestWork belongs to, from its label.
pub fn owner_of(mw: &ManifestWork) -> Option<ObjectRef<ManagedClusterModule>> {
    mw.labels().get(MCM_NAME_LABEL).map(|n| ObjectRef::new(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_status_patch_clears_every_list() {
        let v = status_patch(&ManagedClusterModuleStatus::default());
        for key in ["images", "clusters", "conditions"] {
            assert_eq!(v[key], json!([]), "{key} must be named so the merge patch clears it");
        }
        assert_eq!(v["numberDesired"], json!(0));
    }
}
