//! A stand-in for the kaniko executor of hub build pods. KWOK pods run nothing, so in the local
//! fleet this plays the executor's part: for each build pod it reads the destination and the
//! kernel from the pod's arguments, pushes a kmod image made from the fixture modules there,
//! and then lets KWOK complete the pod (the pod-complete stage waits for
//! [`crate::kwok::BUILD_DONE_ANNOTATION`] on build pods). A failed push fails the pod.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use oci_client::secrets::RegistryAuth;
use serde_json::json;

use crate::kmods::Fixtures;
use crate::kwok::{BUILD_DONE_ANNOTATION, BUILD_POD_LABEL, FAIL_ANNOTATION};

/// The running stand-in; dropping it stops it.
pub struct StandInExecutor {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StandInExecutor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The value of `--<flag>=` among `args`.
pub fn arg<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let prefix = format!("--{flag}=");
    args.iter().find_map(|a| a.strip_prefix(&prefix))
}

impl StandInExecutor {
    /// Serves the build pods of `namespace` on the hub, pushing with `auth`.
    pub fn start(hub: Client, namespace: &str, fixtures: Arc<Fixtures>, auth: RegistryAuth) -> Self {
        let pods: Api<Pod> = Api::namespaced(hub, namespace);
        let task = tokio::spawn(async move {
            let mut done = BTreeSet::new();
            let lp = ListParams::default().labels(BUILD_POD_LABEL);
            // Bounded by the life of the test that holds the executor.
            loop {
                if let Ok(list) = pods.list(&lp).await {
                    for p in list {
                        let name = p.name_any();
                        if done.contains(&name) || p.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Running")
                        {
                            continue;
                        }
                        let args = p
                            .spec
                            .as_ref()
                            .and_then(|s| s.containers.first())
                            .and_then(|c| c.args.clone())
                            .unwrap_or_default();
                        let result = build(&fixtures, &args, &auth).await;
                        let annotations = match &result {
                            Ok(_) => json!({ BUILD_DONE_ANNOTATION: "true" }),
                            Err(e) => {
                                tracing::warn!(pod = %name, error = %format!("{e:#}"), "stand-in build failed");
                                json!({ BUILD_DONE_ANNOTATION: "true", FAIL_ANNOTATION: "true" })
                            }
                        };
                        let patch = json!({ "metadata": { "annotations": annotations } });
                        if pods
                            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                            .await
                            .is_ok()
                        {
                            done.insert(name);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
        Self { task }
    }
}

async fn build(fixtures: &Fixtures, args: &[String], auth: &RegistryAuth) -> anyhow::Result<String> {
    let dest = arg(args, "destination").ok_or_else(|| anyhow::anyhow!("no --destination"))?;
    let kernel = args
        .iter()
        .find_map(|a| a.strip_prefix("--build-arg=KERNEL_FULL_VERSION="))
        .ok_or_else(|| anyhow::anyhow!("no KERNEL_FULL_VERSION build arg"))?;
    crate::kmods::push(dest, fixtures.layers(kernel)?, auth).await
}
