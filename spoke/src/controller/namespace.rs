//! The `kmm.node.k8s.io/contains-modules` label on namespaces that hold Modules, as upstream
//! KMM's module reconciler keeps it. The namespace-deletion webhook selects on it, so deleting
//! any other namespace never waits for (or fails with) the spoke.

use std::collections::BTreeSet;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use shared_api::labels::CONTAINS_MODULES_LABEL;

use super::module::nmc_has_status;
use super::{Context, Error, is_not_found, kube_err};
use crate::metrics::Wrote;
use crate::plan::ModuleKey;

/// Namespaces this process has labelled, so a Module's reconcile costs no write once its
/// namespace carries the label.
#[derive(Debug, Default)]
pub struct Labelled(Mutex<BTreeSet<String>>);

impl Labelled {
    fn contains(&self, ns: &str) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).contains(ns)
    }

    fn set(&self, ns: &str, labelled: bool) {
        let mut set = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if labelled {
            set.insert(ns.to_owned());
        } else {
            set.remove(ns);
        }
    }
}

async fn patch_label(ctx: &Context, ns: &str, value: Option<&str>) -> Result<(), Error> {
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    let patch = json!({ "metadata": { "labels": { CONTAINS_MODULES_LABEL: value } } });
    match api.patch(ns, &PatchParams::default(), &Patch::Merge(patch)).await {
        Ok(_) => {
            ctx.metrics.wrote(Wrote::namespace);
            Ok(())
        }
        // Gone with its namespace: nothing to label.
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(kube_err(format!("labelling namespace {ns} {CONTAINS_MODULES_LABEL}"))(
            e,
        )),
    }
}

/// Puts the label on `ns`, which holds a live Module (once per namespace and process).
pub async fn mark(ctx: &Context, ns: &str) -> Result<(), Error> {
    if ctx.labelled_namespaces.contains(ns) {
        return Ok(());
    }
    patch_label(ctx, ns, Some("")).await?;
    ctx.labelled_namespaces.set(ns, true);
    Ok(())
}

/// Takes the label off `ns` when no Module there but `leaving` (unloaded, being finalized) still
/// needs it: every other one is being deleted too and is unloaded everywhere. A Module still
/// unloading keeps the namespace, so its worker pods can still be created there; whichever of
/// several deleted together finishes last takes the label off.
pub async fn unmark_if_last(ctx: &Context, ns: &str, leaving: &str) -> Result<(), Error> {
    let nmcs = ctx.nmcs.state();
    let needed = ctx.modules.state().iter().any(|m| {
        let key = ModuleKey::new(ns, m.name_any());
        m.namespace().as_deref() == Some(ns)
            && key.name != leaving
            && (m.metadata.deletion_timestamp.is_none() || nmcs.iter().any(|n| nmc_has_status(n, &key)))
    });
    if needed {
        return Ok(());
    }
    ctx.labelled_namespaces.set(ns, false);
    patch_label(ctx, ns, None).await
}
