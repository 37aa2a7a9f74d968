//! Taking over what upstream KMM left on a cluster, with `kmm-spoke` started after the state is
//! seeded (as when an administrator replaces upstream KMM's operator by ours): one real API
//! server, KWOK nodes, the DaemonSet controller, and a `kmm-spoke` this test starts.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use e2e::KubeCluster;
use e2e::kwok::NodeSpec;
use e2e::testkit::{SpokeProcess, run_on_own_cluster};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kmm_spoke::plan::device_plugin::{MODULE_NAME_LABEL, ROLE_DEVICE_PLUGIN, ROLE_LABEL};
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use libtest_mimic::{Arguments, Failed, Trial};
use serde_json::{Value, json};
use shared_api::module::Module;

const TIMEOUT: Duration = Duration::from_secs(90);
const K1: &str = "6.1.0-28-amd64";

/// The device plugin pods of `ns` (ours and upstream's carry the role label): the nodes with
/// one Ready and not being deleted; how many there are; whether all are ours and none is being
/// deleted.
async fn plugin_pods(cluster: &KubeCluster, ns: &str) -> Result<(BTreeSet<String>, usize, bool)> {
    let pods = Api::<Pod>::namespaced(cluster.client.clone(), ns)
        .list(&ListParams::default().labels(&format!("{ROLE_LABEL}={ROLE_DEVICE_PLUGIN}")))
        .await?
        .items;
    // A pod being deleted is shutting its plugin down: it does not count.
    let ready = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect();
    let ours = |p: &Pod| {
        p.metadata.deletion_timestamp.is_none()
            && p.labels().get("app.kubernetes.io/name").map(String::as_str) == Some("kmm-device-plugin")
    };
    Ok((ready, pods.len(), pods.iter().all(ours)))
}

/// Pod events seen, and the moments (after which event) a node had no ready plugin pod.
type Coverage = Arc<std::sync::Mutex<(usize, Vec<String>)>>;

/// Watches the device plugin pods of `ns` from now on and records, after each event, any node
/// of `nodes` left without a ready pod that is not being deleted.
async fn coverage_watch(
    cluster: &KubeCluster,
    ns: &str,
    nodes: BTreeSet<String>,
) -> Result<(Coverage, tokio::task::JoinHandle<()>)> {
    use futures::StreamExt;
    use kube::runtime::watcher;
    let api: Api<Pod> = Api::namespaced(cluster.client.clone(), ns);
    let config = watcher::Config::default().labels(&format!("{ROLE_LABEL}={ROLE_DEVICE_PLUGIN}"));
    let coverage: Coverage = Arc::default();
    let (synced_tx, synced) = tokio::sync::oneshot::channel();
    let record = coverage.clone();
    let task = tokio::spawn(async move {
        let mut synced_tx = Some(synced_tx);
        let mut pods: std::collections::BTreeMap<String, (String, bool)> = Default::default();
        let mut events = std::pin::pin!(watcher(api, config));
        while let Some(ev) = events.next().await {
            match ev {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                    let serving = p.metadata.deletion_timestamp.is_none()
                        && p.status
                            .as_ref()
                            .and_then(|s| s.conditions.as_ref())
                            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                    let node = p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
                    pods.insert(p.name_any(), (node, serving));
                }
                Ok(watcher::Event::Delete(p)) => {
                    pods.remove(&p.name_any());
                }
                Ok(watcher::Event::InitDone) => {
                    if let Some(tx) = synced_tx.take() {
                        let _ = tx.send(());
                    }
                    continue;
                }
                _ => continue,
            }
            if synced_tx.is_some() {
                continue;
            }
            let mut r = record.lock().expect("coverage lock");
            r.0 += 1;
            for n in &nodes {
                if !pods.values().any(|(node, serving)| node == n && *serving) {
                    let at = r.0;
                    r.1.push(format!("{n} after event {at}: {pods:?}"));
                }
            }
        }
    });
    tokio::time::timeout(TIMEOUT, synced)
        .await
        .context("the pod watch did not sync")??;
    Ok((coverage, task))
}

fn module(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "kmm.sigs.x-k8s.io/v1beta1", "kind": "Module",
           "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

/// Upstream KMM's device plugin DaemonSet (its generated name, its `{module.name, role}`
/// selector, owned by the Module, pods running) is taken over in place when kmm-spoke starts:
/// no second DaemonSet, its pods replaced by ours node by node, and at no moment a selected node
/// without a ready plugin pod.
async fn upstream_device_plugin_daemonset_is_taken_over_with_no_node_left_without_a_plugin(
    cluster: &KubeCluster,
    dir: &Path,
) -> Result<()> {
    let (t, ns, name) = ("t-dpmig", "t-dpmig", "dpmig");
    let nodes = ["dpmig-a", "dpmig-b"];
    cluster
        .add_nodes(&nodes.map(|n| NodeSpec::new(n, K1).label("e2e/test", t).label("e2e/gpu", "yes")))
        .await?;
    cluster.ensure_namespace(ns).await?;
    // Upstream KMM's state: the Module, and the DaemonSet its device plugin reconciler writes
    // for a Module without a module loader.
    let selector = json!({"e2e/test": t, "e2e/gpu": "yes"});
    let modules: Api<Module> = Api::namespaced(cluster.client.clone(), ns);
    let m = module(
        ns,
        name,
        json!({"selector": selector, "devicePlugin": {"container": {"image": "registry.e2e.invalid/plugin:1"}}}),
    );
    let created = modules
        .patch(name, &PatchParams::apply("e2e").force(), &Patch::Apply(m))
        .await?;
    let uid = created.metadata.uid.context("no uid")?;
    let upstream_labels = json!({MODULE_NAME_LABEL: name, ROLE_LABEL: ROLE_DEVICE_PLUGIN});
    let upstream_name = format!("{name}-device-plugin-x7k2p");
    let daemonsets: Api<DaemonSet> = Api::namespaced(cluster.client.clone(), ns);
    daemonsets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {
                    "name": upstream_name, "namespace": ns, "labels": upstream_labels,
                    "ownerReferences": [{"apiVersion": "kmm.sigs.x-k8s.io/v1beta1", "kind": "Module",
                        "name": name, "uid": uid, "controller": true, "blockOwnerDeletion": true}]
                },
                "spec": {
                    "selector": {"matchLabels": upstream_labels},
                    "template": {
                        "metadata": {"labels": upstream_labels},
                        "spec": {
                            "nodeSelector": selector,
                            "priorityClassName": "system-node-critical",
                            "containers": [{"name": "device-plugin", "image": "registry.e2e.invalid/plugin:1"}]
                        }
                    }
                }
            }))?,
        )
        .await?;
    let all: BTreeSet<String> = nodes.iter().map(|n| (*n).to_owned()).collect();
    cluster
        .wait("upstream's plugin ready on both nodes", TIMEOUT, || async {
            Ok((plugin_pods(cluster, ns).await?.0 == all).then_some(()))
        })
        .await?;

    // Every pod change in order (a watch), from before kmm-spoke starts: after each one, every
    // node must still have a ready plugin pod. Polling could miss a short gap; the watch cannot.
    let (gaps, watching) = coverage_watch(cluster, ns, all.clone()).await?;
    let spoke = SpokeProcess::start(cluster, dir, "spoke")?;
    cluster
        .wait("the take-over ends with our pods only", TIMEOUT * 2, || async {
            let (ready, count, only_ours) = plugin_pods(cluster, ns).await?;
            Ok((only_ours && count == all.len() && ready == all).then_some(()))
        })
        .await
        .with_context(|| format!("kmm-spoke log:\n{}", spoke.log()))?;
    let names: Vec<String> = daemonsets
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|d| d.name_any())
        .collect();
    ensure!(names == [upstream_name.clone()], "DaemonSets: {names:?}");
    watching.abort();
    let (events, gaps) = {
        let g = gaps.lock().expect("gaps lock");
        (g.0, g.1.clone())
    };
    ensure!(
        gaps.is_empty(),
        "nodes without a ready plugin during the take-over: {gaps:#?}"
    );
    ensure!(
        spoke.log().contains("took over upstream KMM's device plugin DaemonSet"),
        "no take-over in the log"
    );
    let spec = daemonsets.get(&upstream_name).await?.spec.context("no spec")?;
    let strategy = spec
        .update_strategy
        .and_then(|s| s.rolling_update)
        .context("no rolling update")?;
    ensure!(
        strategy.max_unavailable == Some(IntOrString::Int(0)) && strategy.max_surge == Some(IntOrString::Int(1)),
        "strategy: {strategy:?}"
    );
    ensure!(
        spec.selector.match_labels == Some(serde_json::from_value(upstream_labels)?),
        "the selector was changed"
    );
    cluster
        .wait("the Module counts both plugins", TIMEOUT, || async {
            let s = modules.get(name).await?.status.unwrap_or_default();
            Ok((s.device_plugin.available_number == 2).then_some(()))
        })
        .await?;
    println!("device plugin take-over: {events} pod events, after each every node had a ready plugin pod");
    Ok(())
}

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let dir = PathBuf::from(concat!(env!("CARGO_TARGET_TMPDIR"), "/kmm-e2e/takeover-tests"));
    let trial = Trial::test(
        "upstream_device_plugin_daemonset_is_taken_over_with_no_node_left_without_a_plugin",
        move || {
            run_on_own_cluster("takeover", &dir, Duration::from_secs(240), |c, d| {
                Box::pin(upstream_device_plugin_daemonset_is_taken_over_with_no_node_left_without_a_plugin(c, d))
            })
            .map_err(Failed::from)
        },
    );
    libtest_mimic::run(&args, vec![trial]).exit_code()
}
