//! `kmm-spoke` on a real API server: one control plane (etcd, kube-apiserver, controller
//! manager, scheduler, KWOK) started for this file, our CRDs installed, and the real
//! `kmm-spoke` binary running against it in managed mode with leader election. KWOK plays the
//! kubelet: worker pods on fake nodes complete, DaemonSet pods become Ready. A node whose
//! `modprobe` fails is simulated by a mutating webhook of this harness (see
//! [`simulate_failing_modprobe`]); kmm-spoke itself is not told.
//!
//! Each trial works in a namespace and on fake nodes of its own, so trials run in parallel.

use e2e::testkit::{http_get, our_binary};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use base64::Engine;
use e2e::KubeCluster;
use e2e::bins::Bins;
use e2e::certs::Ca;
use e2e::kwok::{FAIL_ANNOTATION, NodeSpec, STUCK_ANNOTATION};
use e2e::proc::{Spawn, Supervisor};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kmm_spoke::plan::device_plugin::MODULE_NAME_LABEL;
use kmm_spoke::plan::worker_pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use libtest_mimic::{Arguments, Failed, Trial};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use shared_api::module::{ModprobeSpec, Module};
use shared_api::nmc::{ModuleConfig, NodeModuleStatus, NodeModulesConfig};
use shared_api::ocm::{ClusterClaim, KERNEL_VERSIONS_CLAIM};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const K1: &str = "6.1.0-28-amd64";
const K2: &str = "5.14.0-427.13.1.el9_4.x86_64";
const K3: &str = "6.1.0-30-amd64";
const TIMEOUT: Duration = Duration::from_secs(90);

struct Env {
    cluster: KubeCluster,
    /// kmm-spoke's `/metrics`, plain HTTP on loopback.
    metrics_port: u16,
    _sup: Arc<Supervisor>,
}

impl Env {
    fn client(&self) -> Client {
        self.cluster.client.clone()
    }
}

type TestFn = fn(Arc<Env>) -> Pin<Box<dyn Future<Output = Result<()>> + Send>>;

macro_rules! tests {
    ($($name:ident),* $(,)?) => {
        vec![$((stringify!($name), (|e| Box::pin($name(e))) as TestFn)),*]
    };
}

/// `worker.pendingTimeout` of the kmm-spoke under test.
const PENDING_TIMEOUT: Duration = Duration::from_secs(15);

async fn start() -> Result<Env> {
    let bins = Bins::locate()?;
    let dir = PathBuf::from(concat!(env!("CARGO_TARGET_TMPDIR"), "/kmm-e2e/spoke-tests"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let sup = Arc::new(Supervisor::new(&dir)?);
    let cluster = KubeCluster::start(sup.clone(), &bins, "spoke", &dir.join("spoke")).await?;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    cluster.install_crds(&repo.join("manifests/crds")).await?;
    cluster.install_crds(&repo.join("e2e/crds/spoke")).await?;
    cluster.ensure_namespace("kmm-system").await?;
    let spoke = our_binary("kmm-spoke")?;
    let health = e2e::net::free_port()?;
    let metrics = e2e::net::free_port()?;
    sup.spawn(
        Spawn::new("kmm-spoke", &spoke)
            .args([
                "run",
                "--namespace=kmm-system",
                "--managed=true",
                "--worker-image=kmm-worker:e2e",
                &format!("--worker-pending-timeout={}s", PENDING_TIMEOUT.as_secs()),
                &format!("--health-probe-bind-address=127.0.0.1:{health}"),
                &format!("--metrics-bind-address=127.0.0.1:{metrics}"),
            ])
            .env("KUBECONFIG", cluster.admin_kubeconfig.display().to_string())
            .env(
                "RUST_LOG",
                std::env::var("KMM_E2E_SPOKE_LOG").unwrap_or_else(|_| "info,kmm_spoke=debug".into()),
            ),
    )?;
    cluster
        .wait("kmm-spoke ready", TIMEOUT, || async move {
            let ok = tokio::net::TcpStream::connect(("127.0.0.1", health)).await.is_ok()
                && http_get(health, "/readyz")
                    .await
                    .is_ok_and(|b| b.starts_with("HTTP/1.1 200"));
            Ok(ok.then_some(()))
        })
        .await?;
    Ok(Env {
        cluster,
        metrics_port: metrics,
        _sup: sup,
    })
}

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let tests = tests![
        three_nodes_on_two_kernels_get_their_image,
        kernel_change_and_reboot_reload,
        cordon_unloads_and_uncordon_reloads,
        deletion_unloads_everywhere_and_clears_labels,
        ordered_upgrade,
        device_plugin_only_where_the_module_is_ready,
        bad_regexp_and_untagged_image_get_clear_conditions,
        build_or_sign_left_in_the_spec_gets_the_needs_hub_condition,
        failing_worker_pod_is_reported_and_retried_with_backoff,
        stuck_worker_pod_is_replaced_times_out_and_holds_no_other_module_back,
        untolerated_taint_keeps_a_node_out_until_tolerated,
        pressure_is_tolerated_and_a_cordon_only_unloads_what_does_not_tolerate_it,
        device_plugin_only_module_runs_on_its_selector,
        one_refused_node_does_not_hold_the_others_back,
        orphaned_status_is_unloaded,
        status_written_from_a_stale_view_is_refused,
        upstream_kmm_state_is_taken_over_without_reloading,
        each_module_on_a_node_gets_its_own_events,
        refused_worker_pod_is_reported_on_the_node,
        device_plugin_problems_are_named_on_the_module,
        kernel_versions_claim_follows_the_nodes,
        api_server_enforces_the_crd_rules,
        kubectl_accepts_the_generated_crds,
    ];
    let rt = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime"),
    );
    let env: Result<Arc<Env>, String> = if args.list {
        Err("not started".into())
    } else {
        rt.block_on(start()).map(Arc::new).map_err(|e| format!("{e:#}"))
    };
    let trials = tests
        .into_iter()
        .map(|(name, f)| {
            let (env, rt) = (env.clone(), rt.clone());
            Trial::test(name, move || {
                let env = env.map_err(|e| Failed::from(format!("the cluster or kmm-spoke did not start: {e}")))?;
                let logs = env.cluster.dir.parent().map(|d| d.join("logs")).unwrap_or_default();
                rt.block_on(async {
                    match tokio::time::timeout(Duration::from_secs(240), f(env.clone())).await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(Failed::from(format!("{e:#}\n(logs: {})", logs.display()))),
                        Err(_) => Err(Failed::from(format!("timed out (logs: {})", logs.display()))),
                    }
                })
            })
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    if let Ok(env) = env {
        env._sup.teardown();
    }
    conclusion.exit_code()
}

// ------------------------------------------------------------------ helpers

async fn add_nodes(env: &Env, test: &str, nodes: &[(&str, &str)]) -> Result<()> {
    let specs: Vec<NodeSpec> = nodes
        .iter()
        .map(|(n, k)| NodeSpec::new(*n, *k).label("e2e/test", test))
        .collect();
    env.cluster.add_nodes(&specs).await
}

fn module(ns: &str, name: &str, test: &str, extra: Value) -> Value {
    let mut m = json!({
        "apiVersion": "kmm.sigs.x-k8s.io/v1beta1",
        "kind": "Module",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "selector": {"e2e/test": test},
            "moduleLoader": {"container": {
                "modprobe": {"moduleName": "kmm_ci_a"},
                "kernelMappings": [
                    {"literal": K1, "containerImage": "registry.e2e.invalid/kmm-ci-a:deb-${KERNEL_FULL_VERSION}"},
                    {"regexp": "^5\\.14\\..*el9", "containerImage": "registry.e2e.invalid/kmm-ci-a:el9-${KERNEL_XYZ}"},
                    {"regexp": "^6\\.1\\.0-30", "containerImage": "registry.e2e.invalid/kmm-ci-a:deb30"}
                ]
            }}
        }
    });
    merge(&mut m, extra);
    m
}

fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

async fn apply_module(env: &Env, m: Value) -> Result<()> {
    let ns = m["metadata"]["namespace"].as_str().unwrap().to_owned();
    env.cluster.ensure_namespace(&ns).await?;
    let api: Api<Module> = Api::namespaced(env.client(), &ns);
    let name = m["metadata"]["name"].as_str().unwrap().to_owned();
    api.patch(&name, &PatchParams::apply("e2e").force(), &Patch::Apply(m))
        .await
        .with_context(|| format!("applying Module {ns}/{name}"))?;
    Ok(())
}

async fn node(env: &Env, name: &str) -> Result<Node> {
    Ok(Api::<Node>::all(env.client()).get(name).await?)
}

/// Removes the label `key` from `node`.
async fn unlabel(env: &Env, node: &str, key: &str) -> Result<()> {
    Api::<Node>::all(env.client())
        .patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {key: null}}})),
        )
        .await?;
    Ok(())
}

fn labels_of(n: &Node) -> BTreeMap<String, String> {
    n.metadata.labels.clone().unwrap_or_default()
}

fn ready_label(ns: &str, name: &str) -> String {
    format!("kmm.node.kubernetes.io/{ns}.{name}.ready")
}

/// Waits until the Module's NodeModulesConfig status on `node` holds `image` (loaded), or, with
/// `None`, holds nothing for it (unloaded).
async fn wait_loaded(env: &Env, node: &str, ns: &str, name: &str, image: Option<&str>) -> Result<()> {
    let api: Api<NodeModulesConfig> = Api::all(env.client());
    let what = match image {
        Some(i) => format!("{ns}/{name} loaded on {node} from {i}"),
        None => format!("{ns}/{name} unloaded from {node}"),
    };
    env.cluster
        .wait(&what, TIMEOUT, || {
            let api = api.clone();
            async move {
                let nmc = api.get_opt(node).await?;
                let loaded = nmc
                    .and_then(|n| n.status)
                    .and_then(|s| s.modules.into_iter().find(|m| m.namespace == ns && m.name == name))
                    .map(|m| m.config.container_image);
                let labelled =
                    labels_of(&Api::<Node>::all(env.client()).get(node).await?).contains_key(&ready_label(ns, name));
                Ok(match image {
                    Some(i) => (loaded.as_deref() == Some(i) && labelled).then_some(()),
                    None => (loaded.is_none() && !labelled).then_some(()),
                })
            }
        })
        .await
}

/// The events on `node` with `reason`.
async fn events_on(env: &Env, node: &str, reason: &str) -> Result<Vec<Event>> {
    let api: Api<Event> = Api::all(env.client());
    let list = api
        .list(&ListParams::default().fields(&format!("involvedObject.name={node}")))
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect())
}

async fn node_events(env: &Env, node: &str, reason: &str) -> Result<Vec<String>> {
    Ok(events_on(env, node, reason)
        .await?
        .into_iter()
        .filter_map(|e| e.message)
        .collect())
}

/// How often `message` was said on `node` for `reason`: events and their repeats (a repeat
/// raises the count of the event it folds into).
async fn times_said(env: &Env, node: &str, reason: &str, message: &str) -> Result<i32> {
    Ok(events_on(env, node, reason)
        .await?
        .iter()
        .filter(|e| e.message.as_deref().is_some_and(|m| e2e::testkit::says(m, message)))
        .map(|e| e.count.unwrap_or(1).max(1))
        .sum())
}

async fn wait_event(env: &Env, node: &str, reason: &str, message: &str) -> Result<()> {
    env.cluster
        .wait(&format!("{reason} event on {node}"), TIMEOUT, || async move {
            Ok(node_events(env, node, reason)
                .await?
                .iter()
                .any(|m| e2e::testkit::says(m, message))
                .then_some(()))
        })
        .await
}

/// The first `reason` event on `node` whose message starts with `prefix`, once there is one.
async fn wait_event_starting(env: &Env, node: &str, reason: &str, prefix: &str) -> Result<String> {
    env.cluster
        .wait(&format!("{reason} event on {node}"), TIMEOUT, || async move {
            Ok(node_events(env, node, reason)
                .await?
                .into_iter()
                .find(|m| m.starts_with(prefix)))
        })
        .await
}

/// Waits until the Module is `Degraded` for `reason` with `text` in the message.
async fn wait_degraded(env: &Env, ns: &str, name: &str, reason: &str, text: &str) -> Result<()> {
    env.cluster
        .wait(&format!("{name}: Degraded/{reason}"), TIMEOUT, || async {
            let s = module_status(env, ns, name).await?.status.unwrap_or_default();
            Ok(s.conditions
                .iter()
                .any(|c| c.type_ == "Degraded" && c.status == "True" && c.reason == reason && c.message.contains(text))
                .then_some(()))
        })
        .await
}

async fn module_status(env: &Env, ns: &str, name: &str) -> Result<Module> {
    Ok(Api::<Module>::namespaced(env.client(), ns).get(name).await?)
}

// ------------------------------------------------------------------ trials

async fn three_nodes_on_two_kernels_get_their_image(env: Arc<Env>) -> Result<()> {
    let (t, ns) = ("t-images", "t-images");
    add_nodes(&env, t, &[("img-a", K1), ("img-b", K1), ("img-c", K2)]).await?;
    apply_module(&env, module(ns, "kmm-ci-a", t, json!({}))).await?;
    let deb = format!("registry.e2e.invalid/kmm-ci-a:deb-{K1}");
    wait_loaded(&env, "img-a", ns, "kmm-ci-a", Some(&deb)).await?;
    wait_loaded(&env, "img-b", ns, "kmm-ci-a", Some(&deb)).await?;
    wait_loaded(
        &env,
        "img-c",
        ns,
        "kmm-ci-a",
        Some("registry.e2e.invalid/kmm-ci-a:el9-5.14.0"),
    )
    .await?;
    wait_event(
        &env,
        "img-c",
        "ModuleLoaded",
        &format!("Module {ns}/kmm-ci-a loaded into the kernel"),
    )
    .await?;
    env.cluster
        .wait("Module status 3/3", TIMEOUT, || async {
            let m = module_status(&env, ns, "kmm-ci-a").await?;
            let s = m.status.unwrap_or_default();
            let l = s.module_loader;
            Ok((l.nodes_matching_selector_number == 3
                && l.desired_number == 3
                && l.available_number == 3
                && s.conditions
                    .iter()
                    .any(|c| c.type_ == "Available" && c.status == "True"))
            .then_some(()))
        })
        .await?;
    // Worker pods are removed once their result is recorded.
    let pods: Api<Pod> = Api::namespaced(env.client(), ns);
    env.cluster
        .wait("worker pods cleaned up", TIMEOUT, || {
            let pods = pods.clone();
            async move {
                let left = pods
                    .list(&ListParams::default().labels(worker_pod::SELECTOR))
                    .await?
                    .items;
                Ok(left.is_empty().then_some(()))
            }
        })
        .await
}

async fn kernel_change_and_reboot_reload(env: Arc<Env>) -> Result<()> {
    let (t, ns) = ("t-reload", "t-reload");
    add_nodes(&env, t, &[("reload-a", K1)]).await?;
    apply_module(&env, module(ns, "kmm-ci-a", t, json!({}))).await?;
    wait_loaded(
        &env,
        "reload-a",
        ns,
        "kmm-ci-a",
        Some(&format!("registry.e2e.invalid/kmm-ci-a:deb-{K1}")),
    )
    .await?;

    env.cluster.set_kernel_version("reload-a", K3).await?;
    wait_loaded(
        &env,
        "reload-a",
        ns,
        "kmm-ci-a",
        Some("registry.e2e.invalid/kmm-ci-a:deb30"),
    )
    .await?;

    let nmcs: Api<NodeModulesConfig> = Api::all(env.client());
    let boot_before = nmcs.get("reload-a").await?.status.unwrap_or_default().modules[0]
        .boot_id
        .clone();
    Api::<Node>::all(env.client())
        .patch_status(
            "reload-a",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"nodeInfo": {"bootID": "rebooted-0001"}}})),
        )
        .await?;
    env.cluster
        .wait("reload after reboot", TIMEOUT, || {
            let nmcs = nmcs.clone();
            async move {
                let s = nmcs.get("reload-a").await?.status.unwrap_or_default();
                Ok(s.modules
                    .iter()
                    .any(|m| m.boot_id.as_deref() == Some("rebooted-0001"))
                    .then_some(()))
            }
        })
        .await?;
    ensure!(boot_before.as_deref() != Some("rebooted-0001"));
    let loads = node_events(&env, "reload-a", "ModuleLoaded").await?;
    ensure!(!loads.is_empty(), "no ModuleLoaded events");
    Ok(())
}

async fn cordon_unloads_and_uncordon_reloads(env: Arc<Env>) -> Result<()> {
    let (t, ns) = ("t-cordon", "t-cordon");
    add_nodes(&env, t, &[("cordon-a", K1)]).await?;
    apply_module(&env, module(ns, "kmm-ci-a", t, json!({}))).await?;
    let img = format!("registry.e2e.invalid/kmm-ci-a:deb-{K1}");
    wait_loaded(&env, "cordon-a", ns, "kmm-ci-a", Some(&img)).await?;
    let nodes: Api<Node> = Api::all(env.client());
    nodes
        .patch(
            "cordon-a",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": true}})),
        )
        .await?;
    wait_loaded(&env, "cordon-a", ns, "kmm-ci-a", None).await?;
    wait_event(
        &env,
        "cordon-a",
        "ModuleUnloaded",
        &format!("Module {ns}/kmm-ci-a unloaded from the kernel"),
    )
    .await?;
    nodes
        .patch(
            "cordon-a",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": false}})),
        )
        .await?;
    wait_loaded(&env, "cordon-a", ns, "kmm-ci-a", Some(&img)).await
}

async fn deletion_unloads_everywhere_and_clears_labels(env: Arc<Env>) -> Result<()> {
    let (t, ns) = ("t-delete", "t-delete");
    add_nodes(&env, t, &[("del-a", K1), ("del-b", K2)]).await?;
    apply_module(&env, module(ns, "kmm-ci-a", t, json!({}))).await?;
    wait_loaded(
        &env,
        "del-a",
        ns,
        "kmm-ci-a",
        Some(&format!("registry.e2e.invalid/kmm-ci-a:deb-{K1}")),
    )
    .await?;
    wait_loaded(
        &env,
        "del-b",
        ns,
        "kmm-ci-a",
        Some("registry.e2e.invalid/kmm-ci-a:el9-5.14.0"),
    )
    .await?;
    let api: Api<Module> = Api::namespaced(env.client(), ns);
    let m = api.get("kmm-ci-a").await?;
    ensure!(
        m.finalizers()
            .iter()
            .any(|f| f == "kmm.node.kubernetes.io/module-finalizer"),
        "no finalizer on the Module"
    );
    api.delete("kmm-ci-a", &DeleteParams::default()).await?;
    env.cluster
        .wait("Module gone after unloading", TIMEOUT, || {
            let api = api.clone();
            async move { Ok(api.get_opt("kmm-ci-a").await?.is_none().then_some(())) }
        })
        .await?;
    for n in ["del-a", "del-b"] {
        let nmc = Api::<NodeModulesConfig>::all(env.client()).get_opt(n).await?;
        let leftover = nmc.and_then(|n| n.status).map(|s| s.modules.len()).unwrap_or(0);
        ensure!(leftover == 0, "{n} still reports the module loaded");
        let labels = labels_of(&node(&env, n).await?);
        ensure!(
            !labels.keys().any(|k| k.contains(&format!("{ns}.kmm-ci-a"))),
            "{n} keeps labels: {labels:?}"
        );
        ensure!(
            !node_events(&env, n, "ModuleUnloaded").await?.is_empty(),
            "no ModuleUnloaded event on {n}"
        );
    }
    Ok(())
}

/// One observation of a pod in a trial's namespace, in the order the API server reported them.
#[derive(Debug, Clone)]
struct PodSeen {
    name: String,
    node: String,
    /// `Load`/`Unload` for worker pods, the DaemonSet name for device plugin pods.
    what: String,
    gone: bool,
}

/// Records every pod change in `ns` from now on, in resourceVersion order, until dropped.
struct PodLog {
    seen: Arc<std::sync::Mutex<Vec<PodSeen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl PodLog {
    async fn start(env: &Env, ns: &str) -> Result<Self> {
        use futures::StreamExt;
        use kube::runtime::watcher;
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let api: Api<Pod> = Api::namespaced(env.client(), ns);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let log = seen.clone();
        let task = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            let mut events = std::pin::pin!(watcher(api, watcher::Config::default()));
            while let Some(ev) = events.next().await {
                let (pod, gone) = match ev {
                    Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                        let gone = p.metadata.deletion_timestamp.is_some();
                        (p, gone)
                    }
                    Ok(watcher::Event::Delete(p)) => (p, true),
                    Ok(watcher::Event::InitDone) => {
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(());
                        }
                        continue;
                    }
                    _ => continue,
                };
                let labels = pod.metadata.labels.clone().unwrap_or_default();
                let what = labels
                    .get(worker_pod::ACTION_LABEL)
                    .or_else(|| labels.get("app.kubernetes.io/instance"))
                    .cloned()
                    .unwrap_or_default();
                let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
                log.lock().unwrap().push(PodSeen {
                    name: pod.name_any(),
                    node,
                    what,
                    gone,
                });
            }
        });
        tokio::time::timeout(TIMEOUT, ready_rx)
            .await
            .context("the pod watch did not start")??;
        Ok(Self { seen, task })
    }

    fn all(&self) -> Vec<PodSeen> {
        self.seen.lock().unwrap().clone()
    }

    /// Index of the first observation matching `f`.
    fn first(&self, f: impl Fn(&PodSeen) -> bool) -> Option<usize> {
        self.all().iter().position(f)
    }
}

impl Drop for PodLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Running (scheduled, not terminating) device plugin pods in `ns`, as (DaemonSet, node).
async fn plugin_pods(env: &Env, ns: &str) -> Result<BTreeSet<(String, String)>> {
    let pods = Api::<Pod>::namespaced(env.client(), ns)
        .list(&ListParams::default().labels("app.kubernetes.io/name=kmm-device-plugin"))
        .await?;
    Ok(pods
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let ds = p.metadata.labels.as_ref()?.get("app.kubernetes.io/instance")?.clone();
            Some((ds, p.spec?.node_name?))
        })
        .collect())
}

/// Upstream's ordered upgrade procedure, step by step (seed 003, "ordered upgrade"): every node
/// labelled for version 1; the Module moved to version 2 (image and version at once) changes
/// nothing on any node; a node relabelled for 2 (directly, or by removing the label first)
/// loses its v1 plugin, then unloads v1, then loads v2 and gets the v2 plugin; the nodes not
/// relabelled keep v1 and its plugin throughout, and never see an unload pod.
async fn ordered_upgrade(env: Arc<Env>) -> Result<()> {
    let (t, ns, name) = ("t-upgrade", "t-upgrade", "kmm-ci-a");
    let version_label = format!("kmm.node.kubernetes.io/version-module.{ns}.{name}");
    let (v1_image, v2_image) = ("registry.e2e.invalid/kmm-ci-a:v1", "registry.e2e.invalid/kmm-ci-a:v2");
    let nodes = ["upg-a", "upg-b", "upg-c"];
    env.cluster.ensure_namespace(ns).await?;
    let pods = PodLog::start(&env, ns).await?;
    let specs: Vec<NodeSpec> = nodes
        .iter()
        .map(|n| NodeSpec::new(*n, K1).label("e2e/test", t).label(&version_label, "1"))
        .collect();
    env.cluster.add_nodes(&specs).await?;
    let versioned = |v: &str, image: &str| {
        module(
            ns,
            name,
            t,
            json!({"spec": {
                "moduleLoader": {"container": {
                    "version": v,
                    "kernelMappings": [{"regexp": "^.+$", "containerImage": image}]
                }},
                "devicePlugin": {"container": {"image": format!("registry.e2e.invalid/plugin:{v}")}}
            }}),
        )
    };
    let (ds_v1, ds_v2) = (format!("{name}-device-plugin-1"), format!("{name}-device-plugin-2"));
    let on = |ds: &str, node: &str| (ds.to_owned(), node.to_owned());
    let set_label = |node: &'static str, value: Option<&'static str>| {
        let (client, key) = (env.client(), version_label.clone());
        async move {
            Api::<Node>::all(client)
                .patch(
                    node,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"labels": {key: value}}})),
                )
                .await
        }
    };
    let wait_plugins = |what: &'static str, want: BTreeSet<(String, String)>| {
        let env = env.clone();
        async move {
            env.cluster
                .wait(what, TIMEOUT, || async {
                    Ok((plugin_pods(&env, ns).await? == want).then_some(()))
                })
                .await
        }
    };

    // 1. Version 1 everywhere, with its plugin.
    apply_module(&env, versioned("1", v1_image)).await?;
    for n in nodes {
        wait_loaded(&env, n, ns, name, Some(v1_image)).await?;
    }
    wait_plugins(
        "the v1 plugin on every node",
        nodes.iter().map(|n| on(&ds_v1, n)).collect(),
    )
    .await?;

    // 2. The Module moves to version 2, image and version at once. A v2 DaemonSet appears and
    // schedules nowhere; every node keeps v1 and the v1 plugin.
    apply_module(&env, versioned("2", v2_image)).await?;
    let dss: Api<DaemonSet> = Api::namespaced(env.client(), ns);
    env.cluster
        .wait("the v2 DaemonSet, observed with no node", TIMEOUT, || async {
            let d = dss.get_opt(&ds_v2).await?;
            Ok(d.and_then(|d| d.status)
                .filter(|s| s.observed_generation.is_some() && s.desired_number_scheduled == 0)
                .map(|_| ()))
        })
        .await?;
    env.cluster
        .wait("the Module's status for generation 2", TIMEOUT, || async {
            let m = module_status(&env, ns, name).await?;
            let s = m.status.unwrap_or_default();
            Ok((s
                .conditions
                .iter()
                .any(|c| c.observed_generation == m.metadata.generation)
                && s.module_loader.desired_number == 3
                && s.module_loader.available_number == 3)
                .then_some(()))
        })
        .await?;
    for n in nodes {
        wait_loaded(&env, n, ns, name, Some(v1_image)).await?;
    }
    let still: BTreeSet<_> = nodes.iter().map(|n| on(&ds_v1, n)).collect();
    ensure!(plugin_pods(&env, ns).await? == still, "the v1 plugin left a node");

    // 3. upg-a relabelled for 2 directly: plugin off, v1 unloaded, v2 loaded, v2 plugin on.
    set_label("upg-a", Some("2")).await?;
    wait_loaded(&env, "upg-a", ns, name, Some(v2_image)).await?;
    wait_plugins(
        "the v2 plugin on upg-a, v1 on the others",
        [on(&ds_v2, "upg-a"), on(&ds_v1, "upg-b"), on(&ds_v1, "upg-c")].into(),
    )
    .await?;

    // 4. upg-b by removing the label first: v1 unloads (after its plugin left), nothing loads;
    // then labelled for 2, v2 loads.
    set_label("upg-b", None).await?;
    wait_loaded(&env, "upg-b", ns, name, None).await?;
    wait_plugins("no plugin on upg-b", [on(&ds_v2, "upg-a"), on(&ds_v1, "upg-c")].into()).await?;
    set_label("upg-b", Some("2")).await?;
    wait_loaded(&env, "upg-b", ns, name, Some(v2_image)).await?;
    wait_plugins(
        "the v2 plugin on upg-a and upg-b",
        [on(&ds_v2, "upg-a"), on(&ds_v2, "upg-b"), on(&ds_v1, "upg-c")].into(),
    )
    .await?;
    wait_loaded(&env, "upg-c", ns, name, Some(v1_image)).await?;
    ensure!(
        dss.get_opt(&ds_v1).await?.is_some(),
        "the v1 DaemonSet went while upg-c runs v1"
    );

    // What happened, in order: on a and b the v1 plugin pod went before the unload pod came;
    // upg-c never saw an unload pod.
    for n in ["upg-a", "upg-b"] {
        let unload = pods
            .first(|p| p.node == n && p.what == "Unload")
            .with_context(|| format!("no unload pod on {n}: {:#?}", pods.all()))?;
        let plugin_gone = pods
            .first(|p| p.node == n && p.what == ds_v1 && p.gone)
            .with_context(|| format!("the v1 plugin never left {n}: {:#?}", pods.all()))?;
        ensure!(
            plugin_gone < unload,
            "{n}: the unload pod came before the v1 plugin left: {:#?}",
            pods.all()
        );
    }
    ensure!(
        pods.first(|p| p.node == "upg-c" && p.what == "Unload").is_none(),
        "upg-c, never relabelled, saw an unload pod: {:#?}",
        pods.all()
    );
    let loads_on_c: BTreeSet<String> = pods
        .all()
        .into_iter()
        .filter(|p| p.node == "upg-c" && p.what == "Load")
        .map(|p| p.name)
        .collect();
    ensure!(loads_on_c.len() == 1, "upg-c loaded more than once: {loads_on_c:?}");

    // 5. The last node moves: once no node runs v1, its DaemonSet is garbage-collected.
    set_label("upg-c", Some("2")).await?;
    wait_loaded(&env, "upg-c", ns, name, Some(v2_image)).await?;
    wait_plugins(
        "the v2 plugin everywhere",
        nodes.iter().map(|n| on(&ds_v2, n)).collect(),
    )
    .await?;
    env.cluster
        .wait("the v1 DaemonSet garbage-collected", TIMEOUT, || async {
            Ok(dss.get_opt(&ds_v1).await?.is_none().then_some(()))
        })
        .await?;
    let labels = labels_of(&node(&env, "upg-c").await?);
    let worker_label = format!("beta.kmm.node.kubernetes.io/version-worker-pod.{ns}.{name}");
    ensure!(labels.get(&worker_label).map(String::as_str) == Some("2"), "{labels:?}");
    Ok(())
}

async fn device_plugin_only_where_the_module_is_ready(env: Arc<Env>) -> Result<()> {
    let (t, ns, name) = ("t-plugin", "t-plugin", "gpu");
    // dp-b matches the selector but no kernel mapping: never loaded, never gets the plugin.
    add_nodes(&env, t, &[("dp-a", K1), ("dp-b", "4.18.0-1.el8.x86_64")]).await?;
    apply_module(
        &env,
        module(
            ns,
            name,
            t,
            json!({"spec": {"devicePlugin": {"container": {"image": "registry.e2e.invalid/plugin:1"}}}}),
        ),
    )
    .await?;
    wait_loaded(
        &env,
        "dp-a",
        ns,
        name,
        Some(&format!("registry.e2e.invalid/kmm-ci-a:deb-{K1}")),
    )
    .await?;
    let ds: Api<DaemonSet> = Api::namespaced(env.client(), ns);
    let d = ds.get("gpu-device-plugin").await?;
    let sel = d.spec.unwrap().template.spec.unwrap().node_selector.unwrap_or_default();
    ensure!(
        sel.get(&ready_label(ns, name)).map(String::as_str) == Some(""),
        "plugin DaemonSet does not wait for the ready label: {sel:?}"
    );
    let plugin_ready = format!("kmm.node.kubernetes.io/{ns}.{name}.device-plugin-ready");
    env.cluster
        .wait("device-plugin-ready label on dp-a", TIMEOUT, || async {
            Ok(labels_of(&node(&env, "dp-a").await?)
                .contains_key(&plugin_ready)
                .then_some(()))
        })
        .await?;
    let pods = Api::<Pod>::namespaced(env.client(), ns)
        .list(&ListParams::default().labels("app.kubernetes.io/name=kmm-device-plugin"))
        .await?;
    let nodes: Vec<_> = pods
        .items
        .iter()
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect();
    ensure!(nodes == ["dp-a"], "plugin pods on {nodes:?}");
    ensure!(!labels_of(&node(&env, "dp-b").await?).contains_key(&plugin_ready));
    env.cluster
        .wait("Module device plugin status", TIMEOUT, || async {
            let s = module_status(&env, ns, name).await?.status.unwrap_or_default();
            Ok(
                (s.device_plugin.available_number == 1 && s.module_loader.nodes_matching_selector_number == 2)
                    .then_some(()),
            )
        })
        .await?;
    // Cordoning takes the plugin away before the module unloads.
    Api::<Node>::all(env.client())
        .patch(
            "dp-a",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": true}})),
        )
        .await?;
    wait_loaded(&env, "dp-a", ns, name, None).await?;
    let pods = Api::<Pod>::namespaced(env.client(), ns)
        .list(&ListParams::default().labels("app.kubernetes.io/name=kmm-device-plugin"))
        .await?;
    ensure!(
        pods.items.iter().all(|p| p.metadata.deletion_timestamp.is_some()),
        "plugin pod still running after unload"
    );
    Ok(())
}

async fn bad_regexp_and_untagged_image_get_clear_conditions(env: Arc<Env>) -> Result<()> {
    let (t, ns) = ("t-bad", "t-bad");
    add_nodes(&env, t, &[("bad-a", K1)]).await?;
    let cases = [
        (
            "bad-regexp",
            json!([{"regexp": "^(6.1", "containerImage": "registry.e2e.invalid/m:1"}]),
            "spec.moduleLoader.container.kernelMappings[0].regexp: \"^(6.1\" is not a valid regular expression",
        ),
        (
            "no-tag",
            json!([{"literal": K1, "containerImage": "registry.e2e.invalid/m"}]),
            "spec.moduleLoader.container.kernelMappings[0].containerImage: \"registry.e2e.invalid/m\" must carry a tag or a digest",
        ),
    ];
    for (name, mappings, expected) in cases {
        apply_module(
            &env,
            module(
                ns,
                name,
                t,
                json!({"spec": {"moduleLoader": {"container": {"kernelMappings": mappings}}}}),
            ),
        )
        .await?;
        wait_degraded(&env, ns, name, "InvalidSpec", expected).await?;
        let events = Api::<Event>::namespaced(env.client(), ns)
            .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
            .await?;
        ensure!(
            events.items.iter().any(|e| e.reason.as_deref() == Some("InvalidSpec")
                && e.message.as_deref().is_some_and(|m| m.contains(expected))),
            "no InvalidSpec event for {name}"
        );
    }
    // Nothing was loaded for the broken Modules.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let nmc = Api::<NodeModulesConfig>::all(env.client()).get_opt("bad-a").await?;
    ensure!(
        nmc.is_none_or(|n| n.spec.modules.is_empty()),
        "a broken Module reached the node"
    );
    Ok(())
}

async fn kernel_versions_claim_follows_the_nodes(env: Arc<Env>) -> Result<()> {
    let claims: Api<ClusterClaim> = Api::all(env.client());
    let expect = |nodes: Vec<Node>| {
        shared_api::kernel::claim_value(
            nodes
                .iter()
                .filter_map(|n| n.status.as_ref()?.node_info.as_ref())
                .map(|i| i.kernel_version.as_str()),
        )
    };
    add_nodes(&env, "t-claim", &[("claim-a", "7.0.0-1-amd64+")]).await?;
    env.cluster
        .wait("claim lists every node kernel", TIMEOUT, || {
            let claims = claims.clone();
            let env = env.clone();
            async move {
                let nodes = Api::<Node>::all(env.client()).list(&ListParams::default()).await?.items;
                let want = expect(nodes);
                let got = claims.get_opt(KERNEL_VERSIONS_CLAIM).await?.map(|c| c.spec.value);
                Ok(
                    (want.lines().any(|k| k == "7.0.0-1-amd64+") && got.as_deref() == Some(want.as_str()))
                        .then_some(()),
                )
            }
        })
        .await?;
    let got = claims.get(KERNEL_VERSIONS_CLAIM).await?.spec.value;
    // The raw release, as the hub's mappings match it (as upstream's do).
    ensure!(
        got.lines().any(|k| k == "7.0.0-1-amd64+"),
        "the node's raw kernel is not claimed: {got:?}"
    );
    let lines: Vec<&str> = got.lines().collect();
    let mut sorted = lines.clone();
    sorted.sort();
    sorted.dedup();
    ensure!(lines == sorted, "claim not sorted and distinct: {got:?}");
    Api::<Node>::all(env.client())
        .delete("claim-a", &DeleteParams::default())
        .await?;
    env.cluster
        .wait("claim drops the deleted node's kernel", TIMEOUT, || {
            let claims = claims.clone();
            async move {
                Ok((!claims
                    .get(KERNEL_VERSIONS_CLAIM)
                    .await?
                    .spec
                    .value
                    .contains("7.0.0-1-amd64"))
                .then_some(()))
            }
        })
        .await?;
    // Someone edits the claim, then deletes it: kmm-spoke writes it again each time.
    let want = claims.get(KERNEL_VERSIONS_CLAIM).await?.spec.value;
    claims
        .patch(
            KERNEL_VERSIONS_CLAIM,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"value": "1.0.0-bogus"}})),
        )
        .await?;
    let restored = |what: &'static str| {
        let (claims, want) = (claims.clone(), want.clone());
        let env = env.clone();
        async move {
            env.cluster
                .wait(what, TIMEOUT, || async {
                    let got = claims.get_opt(KERNEL_VERSIONS_CLAIM).await?.map(|c| c.spec.value);
                    Ok((got.as_deref() == Some(want.as_str())).then_some(()))
                })
                .await
        }
    };
    restored("the edited claim restored").await?;
    claims.delete(KERNEL_VERSIONS_CLAIM, &DeleteParams::default()).await?;
    restored("the deleted claim recreated").await?;
    Ok(())
}

async fn api_server_enforces_the_crd_rules(env: Arc<Env>) -> Result<()> {
    let ns = "t-cel";
    env.cluster.ensure_namespace(ns).await?;
    let api: Api<Module> = Api::namespaced(env.client(), ns);
    let cases = [
        (
            json!({"kernelMappings": [{"literal": K1, "regexp": "^6", "containerImage": "r/m:1"}]}),
            "exactly one of literal and regexp must be set",
        ),
        (
            json!({"modprobe": {"moduleName": "a", "modulesLoadingOrder": ["b", "a"]}}),
            "modulesLoadingOrder must list at least 2 modules and start with moduleName",
        ),
        (
            json!({"modprobe": {"rawArgs": {"load": ["a"], "unload": ["-r", "a"]}, "moduleName": "a"}}),
            "exactly one of moduleName and rawArgs must be set",
        ),
    ];
    for (i, (container, message)) in cases.into_iter().enumerate() {
        let m = module(
            ns,
            &format!("cel-{i}"),
            "t-cel",
            json!({"spec": {"moduleLoader": {"container": container}}}),
        );
        let err = api
            .patch(
                &format!("cel-{i}"),
                &PatchParams::apply("e2e").force(),
                &Patch::Apply(m),
            )
            .await
            .err()
            .with_context(|| format!("case {i}: the API server accepted it"))?;
        ensure!(err.to_string().contains(message), "case {i}: {err}");
    }
    // The version transition rule: adding a version on update is refused.
    api.patch(
        "cel-ok",
        &PatchParams::apply("e2e").force(),
        &Patch::Apply(module(ns, "cel-ok", "t-cel", json!({}))),
    )
    .await?;
    let err = api
        .patch(
            "cel-ok",
            &PatchParams::apply("e2e").force(),
            &Patch::Apply(module(
                ns,
                "cel-ok",
                "t-cel",
                json!({"spec": {"moduleLoader": {"container": {"version": "1"}}}}),
            )),
        )
        .await
        .err()
        .context("adding a version was accepted")?;
    ensure!(
        err.to_string().contains("version cannot be added or removed on update"),
        "{err}"
    );
    Ok(())
}

async fn kubectl_accepts_the_generated_crds(env: Arc<Env>) -> Result<()> {
    let kubectl = Bins::locate()?.path("kubectl");
    let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/crds");
    for mode in ["client", "server"] {
        let out = tokio::process::Command::new(&kubectl)
            .args(["apply", &format!("--dry-run={mode}"), "-f"])
            .arg(&crds)
            .env("KUBECONFIG", &env.cluster.admin_kubeconfig)
            .output()
            .await
            .context("running kubectl")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success(),
            "kubectl apply --dry-run={mode}: {}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(stdout.lines().count() == 4, "expected 4 CRDs, kubectl said: {stdout}");
    }
    Ok(())
}

async fn build_or_sign_left_in_the_spec_gets_the_needs_hub_condition(env: Arc<Env>) -> Result<()> {
    let (t, ns) = ("t-needs-hub", "t-needs-hub");
    add_nodes(&env, t, &[("hub-a", K1)]).await?;
    let cases = [
        (
            "needs-build",
            json!({"kernelMappings": [{
                "literal": K1,
                "containerImage": "registry.e2e.invalid/kmm-ci-a:built",
                "build": {"dockerfileConfigMap": {"name": "kmm-ci-a-dockerfile"}}
            }]}),
            "spec.moduleLoader.container.kernelMappings[0]",
            "registry.e2e.invalid/kmm-ci-a:built".to_owned(),
        ),
        (
            "needs-sign",
            json!({"sign": {
                "keySecret": {"name": "signing-key"},
                "certSecret": {"name": "signing-cert"},
                "filesToSign": ["/opt/lib/modules/6.1.0-28-amd64/kmm_ci_a.ko"]
            }}),
            "spec.moduleLoader.container",
            format!("registry.e2e.invalid/kmm-ci-a:deb-{K1}"),
        ),
    ];
    for (name, container, at, image) in cases {
        apply_module(
            &env,
            module(ns, name, t, json!({"spec": {"moduleLoader": {"container": container}}})),
        )
        .await?;
        let expected = format!("{at} carry build or sign instructions; builds and signing run on the hub (kmm-hub)");
        wait_degraded(&env, ns, name, "NeedsHub", &expected).await?;
        // The spoke neither builds nor signs: it loads the image it was given, as is.
        wait_loaded(&env, "hub-a", ns, name, Some(&image)).await?;
    }
    let others = Api::<Pod>::namespaced(env.client(), ns)
        .list(&ListParams::default().labels(&format!("!{}", worker_pod::SELECTOR)))
        .await?;
    ensure!(
        others.items.is_empty(),
        "the spoke started pods other than worker pods (a build?): {:?}",
        others.items.iter().map(|p| p.name_any()).collect::<Vec<_>>()
    );
    Ok(())
}

async fn failing_worker_pod_is_reported_and_retried_with_backoff(env: Arc<Env>) -> Result<()> {
    let (t, ns, name, on) = ("t-fail", "t-fail", "kmm-ci-a", "fail-a");
    env.cluster
        .add_nodes(&[NodeSpec::new(on, K1)
            .label("e2e/test", t)
            .label(MODPROBE_FAILS_LABEL, "true")])
        .await?;
    let webhook = simulate_failing_modprobe(&env, ns, on, name).await?;
    let failures_before = worker_pod_failures(&env).await?;
    apply_module(
        &env,
        module(
            ns,
            name,
            t,
            json!({"spec": {"moduleLoader": {"container": {"modprobe": {"parameters": ["debug=1"]}}}}}),
        ),
    )
    .await?;
    let image = format!("registry.e2e.invalid/kmm-ci-a:deb-{K1}");
    // The failure is reported on the node, with the worker's message and the backoff.
    let prefix = format!("Module {ns}/{name}: loading failed on attempt 1 (worker pod ");
    let first = wait_event_starting(&env, on, "ModuleLoadFailed", &prefix).await?;
    ensure!(
        first.contains("failed on purpose") && first.ends_with("; retrying in 10s"),
        "first failure: {first}"
    );

    // Retried with backoff: over the next 20 s a hot loop would run dozens of attempts (each
    // fails within a second); the spoke runs the retry and at most one more.
    let pods: Api<Pod> = Api::namespaced(env.client(), ns);
    let mut attempts = BTreeSet::new();
    let mut uids = BTreeSet::new();
    let mut failed_pod = None;
    let window = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < window {
        env.cluster.check_alive()?;
        let list = pods.list(&ListParams::default().labels(worker_pod::SELECTOR)).await?;
        // Never two attempts at once, however far behind the spoke's caches are.
        let running: Vec<String> = list
            .items
            .iter()
            .filter(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && !matches!(
                        p.status.as_ref().and_then(|s| s.phase.as_deref()),
                        Some("Succeeded" | "Failed")
                    )
            })
            .map(|p| p.name_any())
            .collect();
        ensure!(running.len() <= 1, "worker pods in flight at once: {running:?}");
        for p in list.items {
            let attempt: u32 = p
                .labels()
                .get(worker_pod::ATTEMPT_LABEL)
                .context("worker pod without attempt label")?
                .parse()?;
            attempts.insert(attempt);
            uids.insert(p.uid().unwrap_or_default());
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            if failed_pod.is_none() && phase == Some("Failed") {
                failed_pod = Some(p);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let attempts: Vec<u32> = attempts.into_iter().collect();
    // One pod per attempt: no attempt ran twice.
    ensure!(
        (attempts == [0, 1] || attempts == [0, 1, 2]) && uids.len() == attempts.len(),
        "worker pods seen in the 20 s after the first failure: attempts {attempts:?}, {} pods",
        uids.len()
    );
    // Both failures are counted, and each is its own Event with its own message.
    env.cluster
        .wait(
            "kmm_spoke_worker_pod_failures counts both failures",
            TIMEOUT,
            || async { Ok((worker_pod_failures(&env).await? >= failures_before + 2.0).then_some(())) },
        )
        .await?;
    let second = format!("Module {ns}/{name}: loading failed on attempt 2 (worker pod ");
    env.cluster
        .wait("ModuleLoadFailed events for attempts 1 and 2", TIMEOUT, || async {
            let messages = node_events(&env, on, "ModuleLoadFailed").await?;
            Ok((messages.iter().any(|m| m.starts_with(&prefix))
                && messages
                    .iter()
                    .any(|m| m.starts_with(&second) && m.ends_with("; retrying in 20s")))
            .then_some(()))
        })
        .await?;
    ensure!(
        !labels_of(&node(&env, on).await?).contains_key(&ready_label(ns, name)),
        "{on} labelled ready while the module fails to load"
    );

    // The failed pod stays for the backoff, so the real API server's copy can be read: pinned to
    // the node, owned by its NodeModulesConfig, the config handed over as a file.
    let pod = failed_pod.context("never saw a failed worker pod")?;
    let spec = pod.spec.clone().unwrap_or_default();
    ensure!(spec.node_name.as_deref() == Some(on), "{:?}", spec.node_name);
    ensure!(spec.restart_policy.as_deref() == Some("Never"));
    let owner = pod.owner_references().first().context("worker pod has no owner")?;
    ensure!(
        owner.kind == "NodeModulesConfig" && owner.name == on && owner.controller == Some(true),
        "owner: {owner:?}"
    );
    let config: ModuleConfig = serde_json::from_str(
        pod.annotations()
            .get(worker_pod::CONFIG_ANNOTATION)
            .context("no config annotation")?,
    )?;
    ensure!(
        config.container_image == image
            && config.kernel_version == K1
            && config.modprobe.module_name.as_deref() == Some("kmm_ci_a")
            && config.modprobe.parameters == ["debug=1"],
        "config handed to the worker: {config:?}"
    );
    let volume = spec
        .volumes
        .unwrap_or_default()
        .into_iter()
        .find(|v| v.name == "config")
        .and_then(|v| v.downward_api)
        .context("no downward API config volume")?;
    let file = &volume.items.unwrap_or_default()[0];
    ensure!(
        file.field_ref.as_ref().map(|f| f.field_path.as_str())
            == Some(&*format!("metadata.annotations['{}']", worker_pod::CONFIG_ANNOTATION)),
        "config file: {file:?}"
    );
    let args = spec.containers[0].args.clone().unwrap_or_default();
    ensure!(
        args.starts_with(&["kmod".into(), "load".into(), worker_pod::CONFIG_PATH.into()]),
        "worker args: {args:?}"
    );

    // The node is fixed: a later retry loads the module.
    unlabel(&env, on, MODPROBE_FAILS_LABEL).await?;
    wait_loaded(&env, on, ns, name, Some(&image)).await?;
    wait_event(
        &env,
        on,
        "ModuleLoaded",
        &format!("Module {ns}/{name} loaded into the kernel"),
    )
    .await?;
    env.cluster
        .wait("Module available 1/1", TIMEOUT, || async {
            let l = module_status(&env, ns, name)
                .await?
                .status
                .unwrap_or_default()
                .module_loader;
            Ok((l.desired_number == 1 && l.available_number == 1).then_some(()))
        })
        .await?;
    Api::<MutatingWebhookConfiguration>::all(env.client())
        .delete(&webhook, &DeleteParams::default())
        .await?;
    Ok(())
}

async fn untolerated_taint_keeps_a_node_out_until_tolerated(env: Arc<Env>) -> Result<()> {
    let (t, ns, name) = ("t-taint", "t-taint", "kmm-ci-a");
    env.cluster
        .add_nodes(&[
            NodeSpec::new("taint-a", K1)
                .label("e2e/test", t)
                .taint("e2e/dedicated", Some("gpu"), "NoSchedule"),
            NodeSpec::new("taint-b", K1).label("e2e/test", t),
        ])
        .await?;
    apply_module(&env, module(ns, name, t, json!({}))).await?;
    let image = format!("registry.e2e.invalid/kmm-ci-a:deb-{K1}");
    wait_loaded(&env, "taint-b", ns, name, Some(&image)).await?;
    env.cluster
        .wait("Module status: 2 matching, 1 desired, 1 available", TIMEOUT, || async {
            let l = module_status(&env, ns, name)
                .await?
                .status
                .unwrap_or_default()
                .module_loader;
            Ok(
                (l.nodes_matching_selector_number == 2 && l.desired_number == 1 && l.available_number == 1)
                    .then_some(()),
            )
        })
        .await?;
    let nmcs: Api<NodeModulesConfig> = Api::all(env.client());
    let entry_on_a = |nmc: Option<NodeModulesConfig>| {
        nmc.and_then(|n| n.spec.modules.into_iter().find(|m| m.namespace == ns && m.name == name))
    };
    ensure!(
        entry_on_a(nmcs.get_opt("taint-a").await?).is_none(),
        "the Module reached a node whose taint it does not tolerate"
    );

    apply_module(
        &env,
        module(
            ns,
            name,
            t,
            json!({"spec": {"tolerations": [
                {"key": "e2e/dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}
            ]}}),
        ),
    )
    .await?;
    wait_loaded(&env, "taint-a", ns, name, Some(&image)).await?;
    let entry = entry_on_a(nmcs.get_opt("taint-a").await?).context("no entry on taint-a")?;
    ensure!(
        entry
            .tolerations
            .iter()
            .any(|t| t.key.as_deref() == Some("e2e/dedicated")),
        "the worker pods would not tolerate the taint: {:?}",
        entry.tolerations
    );
    Ok(())
}

/// As upstream: every Module tolerates disk, memory and PID pressure (a pressured node keeps its
/// drivers), and a cordon unloads only a Module that does not tolerate
/// `node.kubernetes.io/unschedulable:NoSchedule`.
async fn pressure_is_tolerated_and_a_cordon_only_unloads_what_does_not_tolerate_it(env: Arc<Env>) -> Result<()> {
    let t = "t-press";
    let (plain, tolerant) = ("t-press-plain", "t-press-tolerant");
    let name = "kmm-ci-a";
    add_nodes(&env, t, &[("press-a", K1), ("press-b", K1)]).await?;
    env.cluster.ensure_namespace(plain).await?;
    env.cluster.ensure_namespace(tolerant).await?;
    let (plain_pods, tolerant_pods) = (PodLog::start(&env, plain).await?, PodLog::start(&env, tolerant).await?);
    apply_module(&env, module(plain, name, t, json!({}))).await?;
    apply_module(
        &env,
        module(
            tolerant,
            name,
            t,
            json!({"spec": {"tolerations": [
                {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}
            ]}}),
        ),
    )
    .await?;
    let img = format!("registry.e2e.invalid/kmm-ci-a:deb-{K1}");
    for ns in [plain, tolerant] {
        for n in ["press-a", "press-b"] {
            wait_loaded(&env, n, ns, name, Some(&img)).await?;
        }
    }
    let nodes: Api<Node> = Api::all(env.client());
    // Memory pressure on press-a, then a cordon on press-b: the node watch delivers them in
    // that order, so once the plain Module left press-b, every plan has seen press-a's taint.
    nodes
        .patch(
            "press-a",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"taints": [
                {"key": "node.kubernetes.io/memory-pressure", "effect": "NoSchedule"}
            ]}})),
        )
        .await?;
    nodes
        .patch(
            "press-b",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": true}})),
        )
        .await?;
    wait_loaded(&env, "press-b", plain, name, None).await?;
    for (ns, n) in [(plain, "press-a"), (tolerant, "press-a"), (tolerant, "press-b")] {
        wait_loaded(&env, n, ns, name, Some(&img)).await?;
    }
    let unloads = |log: &PodLog| -> Vec<String> {
        log.all()
            .into_iter()
            .filter(|p| p.what == "Unload")
            .map(|p| p.node)
            .collect()
    };
    ensure!(
        tolerant_pods.all().iter().all(|p| p.what != "Unload"),
        "the Module tolerating the cordon was unloaded: {:?}",
        unloads(&tolerant_pods)
    );
    ensure!(
        unloads(&plain_pods).iter().all(|n| n == "press-b"),
        "memory pressure unloaded a module: {:?}",
        unloads(&plain_pods)
    );
    let nmc = Api::<NodeModulesConfig>::all(env.client()).get("press-a").await?;
    let entry = nmc
        .spec
        .modules
        .iter()
        .find(|m| m.namespace == plain)
        .context("no entry on press-a")?;
    let keys: Vec<_> = entry.tolerations.iter().filter_map(|t| t.key.as_deref()).collect();
    ensure!(
        keys.contains(&"node.kubernetes.io/memory-pressure"),
        "the worker pods would not tolerate pressure: {keys:?}"
    );
    Ok(())
}

/// A Module with a device plugin and no module loader (upstream's device-plugin-only Module)
/// runs its plugin on every node its selector matches; nothing is loaded.
async fn device_plugin_only_module_runs_on_its_selector(env: Arc<Env>) -> Result<()> {
    let (t, ns, name) = ("t-dponly", "t-dponly", "dponly");
    env.cluster
        .add_nodes(&[
            NodeSpec::new("dponly-a", K1)
                .label("e2e/test", t)
                .label("e2e/gpu", "yes"),
            NodeSpec::new("dponly-b", K1)
                .label("e2e/test", t)
                .label("e2e/gpu", "yes"),
            NodeSpec::new("dponly-c", K1).label("e2e/test", t),
        ])
        .await?;
    apply_module(
        &env,
        json!({
            "apiVersion": "kmm.sigs.x-k8s.io/v1beta1",
            "kind": "Module",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "selector": {"e2e/test": t, "e2e/gpu": "yes"},
                "devicePlugin": {"container": {"image": "registry.e2e.invalid/plugin:1"}}
            }
        }),
    )
    .await?;
    let want: BTreeSet<(String, String)> = ["dponly-a", "dponly-b"]
        .iter()
        .map(|n| (format!("{name}-device-plugin"), (*n).to_owned()))
        .collect();
    env.cluster
        .wait("the plugin on the two selected nodes", TIMEOUT, || async {
            Ok((plugin_pods(&env, ns).await? == want).then_some(()))
        })
        .await?;
    env.cluster
        .wait("the Module's device plugin status", TIMEOUT, || async {
            let s = module_status(&env, ns, name).await?.status.unwrap_or_default();
            Ok((s.device_plugin.available_number == 2).then_some(()))
        })
        .await?;
    let nmcs = Api::<NodeModulesConfig>::all(env.client())
        .list(&ListParams::default())
        .await?;
    ensure!(
        nmcs.items
            .iter()
            .all(|n| n.spec.modules.iter().all(|m| m.namespace != ns)),
        "a device-plugin-only Module got a NodeModulesConfig entry"
    );
    Ok(())
}

/// A node whose NodeModulesConfig the API server refuses (here a ValidatingAdmissionPolicy
/// freezes one) does not stop the rollout: the other nodes load, the Module is Degraded naming
/// the node and the answer, and the refused node loads once the policy goes.
async fn one_refused_node_does_not_hold_the_others_back(env: Arc<Env>) -> Result<()> {
    use k8s_openapi::api::admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding};
    let (t, ns, name) = ("t-refuse", "t-refuse", "kmm-ci-a");
    add_nodes(&env, t, &[("refuse-a", K1), ("refuse-b", K1), ("refuse-c", K1)]).await?;
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(env.client());
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(env.client());
    let policy = "e2e-freeze-refuse-b";
    policies
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": policy},
                "spec": {
                    "failurePolicy": "Fail",
                    "matchConstraints": {"resourceRules": [{
                        "apiGroups": ["kmm.sigs.x-k8s.io"], "apiVersions": ["*"],
                        "operations": ["CREATE", "UPDATE"], "resources": ["nodemodulesconfigs"]
                    }]},
                    "validations": [{
                        "expression": "object.metadata.name != 'refuse-b'",
                        "message": "e2e policy: refuse-b is frozen"
                    }]
                }
            }))?,
        )
        .await?;
    bindings
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": policy},
                "spec": {"policyName": policy, "validationActions": ["Deny"]}
            }))?,
        )
        .await?;
    // The policy is in force once a dry-run create of refuse-b's NodeModulesConfig is refused.
    let nmcs: Api<NodeModulesConfig> = Api::all(env.client());
    env.cluster
        .wait("the freeze policy in force", TIMEOUT, || async {
            let probe: NodeModulesConfig = serde_json::from_value(json!({
                "apiVersion": "kmm.sigs.x-k8s.io/v1beta1", "kind": "NodeModulesConfig",
                "metadata": {"name": "refuse-b"}, "spec": {"modules": []}
            }))?;
            let r = nmcs
                .create(
                    &PostParams {
                        dry_run: true,
                        ..Default::default()
                    },
                    &probe,
                )
                .await;
            Ok(matches!(r, Err(kube::Error::Api(ref s)) if s.message.contains("frozen")).then_some(()))
        })
        .await?;

    apply_module(&env, module(ns, name, t, json!({}))).await?;
    let img = format!("registry.e2e.invalid/kmm-ci-a:deb-{K1}");
    wait_loaded(&env, "refuse-a", ns, name, Some(&img)).await?;
    wait_loaded(&env, "refuse-c", ns, name, Some(&img)).await?;
    wait_degraded(&env, ns, name, "NodeUpdateFailed", "refuse-b").await?;
    wait_degraded(&env, ns, name, "NodeUpdateFailed", "frozen").await?;
    env.cluster
        .wait("a NodeUpdateFailed event on the Module", TIMEOUT, || async {
            let events = Api::<Event>::namespaced(env.client(), ns)
                .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
                .await?;
            Ok(events
                .items
                .iter()
                .any(|e| e.reason.as_deref() == Some("NodeUpdateFailed"))
                .then_some(()))
        })
        .await?;

    bindings.delete(policy, &DeleteParams::default()).await?;
    policies.delete(policy, &DeleteParams::default()).await?;
    wait_loaded(&env, "refuse-b", ns, name, Some(&img)).await?;
    env.cluster
        .wait("Degraded cleared", TIMEOUT, || async {
            let s = module_status(&env, ns, name).await?.status.unwrap_or_default();
            Ok((!shared_api::conditions::is_true(&s.conditions, "Degraded")).then_some(()))
        })
        .await
}

/// A node where upstream KMM ran and loaded a module: its NodeModulesConfig (spec and status as
/// upstream writes them, with its pull-policy default and no status timestamps), the ready label
/// it set, and its finished worker pod with its finalizer. kmm-spoke, meeting all this, must
/// recognise the module as loaded (no worker pod of its own, nothing unloaded), keep the label,
/// and clean up upstream's pod.
async fn upstream_kmm_state_is_taken_over_without_reloading(env: Arc<Env>) -> Result<()> {
    let (t, ns, name, on) = ("t-migrate", "t-migrate", "kmm-ci-a", "mig-a");
    env.cluster.ensure_namespace(ns).await?;
    let pods = PodLog::start(&env, ns).await?;
    // The Module as the API server stores it (defaults applied), without creating it yet.
    let m = module(ns, name, t, json!({}));
    let modules: Api<Module> = Api::namespaced(env.client(), ns);
    let stored = modules
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &serde_json::from_value(m.clone())?,
        )
        .await?;
    let modprobe = serde_json::to_value(
        &stored
            .spec
            .module_loader
            .as_ref()
            .context("no moduleLoader")?
            .container
            .modprobe,
    )?;
    // Upstream's ModuleConfig: every field written, the pull policy as its CRD defaults it.
    let config = json!({
        "kernelVersion": K1,
        "containerImage": format!("registry.e2e.invalid/kmm-ci-a:deb-{K1}"),
        "imagePullPolicy": "IfNotPresent",
        "insecurePull": false,
        "modprobe": modprobe,
    });
    let item = json!({"name": name, "namespace": ns, "serviceAccountName": "", "config": config});
    let nmcs: Api<NodeModulesConfig> = Api::all(env.client());
    nmcs.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "apiVersion": "kmm.sigs.x-k8s.io/v1beta1",
            "kind": "NodeModulesConfig",
            "metadata": {"name": on},
            "spec": {"modules": [item.clone()]}
        }))?,
    )
    .await?;
    let mut loaded = item.clone();
    loaded["bootId"] = json!(format!("boot-{on}"));
    nmcs.patch_status(
        on,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"modules": [loaded]}})),
    )
    .await?;
    // The node comes after its NodeModulesConfig (the node controller waits for the node), so
    // kmm-spoke first meets spec and status together, as on a cluster upstream KMM ran.
    env.cluster
        .add_nodes(&[NodeSpec::new(on, K1)
            .label("e2e/test", t)
            .label(ready_label(ns, name), "")])
        .await?;
    // Upstream's load pod (its name, labels and finalizer), finished.
    let upstream_pod = format!("kmm-worker-{on}-{name}");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {
            "name": upstream_pod,
            "namespace": ns,
            "labels": {
                "app.kubernetes.io/name": "kmm",
                "app.kubernetes.io/component": "worker",
                "app.kubernetes.io/part-of": "kmm",
                MODULE_NAME_LABEL: name,
                worker_pod::ACTION_LABEL: "Load"
            },
            "finalizers": [worker_pod::UPSTREAM_FINALIZER]
        },
        "spec": {
            "nodeName": on,
            "restartPolicy": "Never",
            "containers": [{"name": "worker", "image": "kmm-worker:e2e"}]
        }
    }))?;
    Api::<Pod>::namespaced(env.client(), ns)
        .create(&PostParams::default(), &pod)
        .await?;

    apply_module(&env, m).await?;
    // Taken over: upstream's pod loses its finalizer and goes, and the Module counts the node
    // as loaded.
    env.cluster
        .wait("upstream's worker pod is cleaned up", TIMEOUT, || async {
            let gone = Api::<Pod>::namespaced(env.client(), ns)
                .get_opt(&upstream_pod)
                .await?
                .is_none();
            Ok(gone.then_some(()))
        })
        .await?;
    env.cluster
        .wait("the Module is available 1/1", TIMEOUT, || async {
            let l = module_status(&env, ns, name)
                .await?
                .status
                .unwrap_or_default()
                .module_loader;
            Ok((l.desired_number == 1 && l.available_number == 1).then_some(()))
        })
        .await?;
    // Nothing was reloaded: no worker pod of ours, the status entry upstream wrote, the label.
    let ours: Vec<PodSeen> = pods.all().into_iter().filter(|p| p.name != upstream_pod).collect();
    ensure!(
        ours.is_empty(),
        "kmm-spoke started worker pods for a loaded module: {ours:#?}"
    );
    let nmc = nmcs.get(on).await?;
    let status = nmc.status.unwrap_or_default().modules;
    ensure!(
        status.len() == 1 && status[0].boot_id.as_deref() == Some(&*format!("boot-{on}")),
        "status: {status:?}"
    );
    ensure!(
        labels_of(&node(&env, on).await?).contains_key(&ready_label(ns, name)),
        "the ready label left {on}"
    );
    Ok(())
}

/// The node controller's status write, against the real API server: one computed from a view
/// older than the object is refused and writes nothing, so a lagging cache can never drop an
/// entry that an earlier pass recorded.
async fn status_written_from_a_stale_view_is_refused(env: Arc<Env>) -> Result<()> {
    use kmm_spoke::controller::node::write_status_at;
    let name = "stale-view-nmc";
    let nmcs: Api<NodeModulesConfig> = Api::all(env.client());
    let nmc: NodeModulesConfig = serde_json::from_value(json!({
        "apiVersion": "kmm.sigs.x-k8s.io/v1beta1",
        "kind": "NodeModulesConfig",
        "metadata": {"name": name},
        "spec": {"modules": []}
    }))?;
    let created = nmcs.create(&PostParams::default(), &nmc).await?;
    let entry = |module: &str| NodeModuleStatus {
        name: module.into(),
        namespace: "t-stale".into(),
        config: ModuleConfig {
            kernel_version: K1.into(),
            container_image: format!("registry.e2e.invalid/{module}:1"),
            ..Default::default()
        },
        last_transition_time: Some(Time(k8s_openapi::jiff::Timestamp::now())),
        boot_id: Some("boot-1".into()),
        ..Default::default()
    };
    let seen = created.resource_version();
    // First pass: records "a".
    let after_a = write_status_at(&nmcs, name, seen.as_deref(), &[entry("a")])
        .await?
        .context("a write from the current view was refused")?;
    // A second pass that still sees the object as it was before "a" would write ["b"] alone.
    let stale = write_status_at(&nmcs, name, seen.as_deref(), &[entry("b")]).await?;
    ensure!(stale.is_none(), "a write from a stale view went through: {stale:?}");
    let names = |n: NodeModulesConfig| -> Vec<String> {
        n.status
            .unwrap_or_default()
            .modules
            .into_iter()
            .map(|m| m.name)
            .collect()
    };
    let now = nmcs.get(name).await?;
    ensure!(
        names(now.clone()) == ["a"],
        "status after the refused write: {:?}",
        names(now)
    );
    // From the fresh view it adds "b" next to "a".
    write_status_at(&nmcs, name, Some(&after_a), &[entry("a"), entry("b")])
        .await?
        .context("a write from the fresh view was refused")?;
    let now = nmcs.get(name).await?;
    ensure!(names(now.clone()) == ["a", "b"], "{:?}", names(now));
    nmcs.delete(name, &DeleteParams::default()).await?;
    Ok(())
}

async fn orphaned_status_is_unloaded(env: Arc<Env>) -> Result<()> {
    // A module recorded as loaded on a node although no Module asks for it any more (say the
    // Module was removed while kmm-spoke was down, its finalizer forced away).
    let (ns, name, node) = ("t-orphan", "gone", "orphan-a");
    env.cluster.ensure_namespace(ns).await?;
    env.cluster
        .add_nodes(&[NodeSpec::new(node, K1)
            .label("e2e/test", "t-orphan")
            .label(ready_label(ns, name), "")])
        .await?;
    let nmcs: Api<NodeModulesConfig> = Api::all(env.client());
    let nmc: NodeModulesConfig = serde_json::from_value(json!({
        "apiVersion": "kmm.sigs.x-k8s.io/v1beta1",
        "kind": "NodeModulesConfig",
        "metadata": {"name": node},
        "spec": {"modules": []}
    }))?;
    nmcs.create(&PostParams::default(), &nmc).await?;
    let loaded = NodeModuleStatus {
        name: name.into(),
        namespace: ns.into(),
        config: ModuleConfig {
            kernel_version: K1.into(),
            container_image: "registry.e2e.invalid/gone:1".into(),
            modprobe: serde_json::from_value::<ModprobeSpec>(json!({"moduleName": "gone"}))?,
            ..Default::default()
        },
        last_transition_time: Some(Time(k8s_openapi::jiff::Timestamp::now())),
        // The node's current boot: the module is in its kernel now.
        boot_id: Some(format!("boot-{node}")),
        ..Default::default()
    };
    nmcs.patch_status(
        node,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"modules": [loaded]}})),
    )
    .await?;
    // Unloaded by a worker pod (not merely forgotten), and its label removed.
    wait_loaded(&env, node, ns, name, None).await?;
    wait_event(
        &env,
        node,
        "ModuleUnloaded",
        &format!("Module {ns}/{name} unloaded from the kernel"),
    )
    .await
}

// ------------------------------------------------------------------ a worker pod that never starts

/// The worker pods of `module` in `ns` that KWOK keeps waiting for their image.
async fn stuck_pods(env: &Env, ns: &str, module: &str) -> Result<Vec<Pod>> {
    let pods: Api<Pod> = Api::namespaced(env.client(), ns);
    let list = pods
        .list(&ListParams::default().labels(&format!("{MODULE_NAME_LABEL}={module}")))
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .into_iter()
                .flatten()
                .any(|c| {
                    c.state
                        .as_ref()
                        .and_then(|s| s.waiting.as_ref())
                        .and_then(|w| w.reason.as_deref())
                        == Some("ImagePullBackOff")
                })
        })
        .collect())
}

fn parameters_of(p: &Pod) -> Vec<String> {
    p.annotations()
        .get(worker_pod::CONFIG_ANNOTATION)
        .and_then(|c| serde_json::from_str::<ModuleConfig>(c).ok())
        .map(|c| c.modprobe.parameters)
        .unwrap_or_default()
}

async fn stuck_worker_pod_is_replaced_times_out_and_holds_no_other_module_back(env: Arc<Env>) -> Result<()> {
    let (t, ns, on) = ("t-stuck", "t-stuck", "stuck-a");
    let (stuck, free) = ("stuck", "free");
    env.cluster
        .add_nodes(&[NodeSpec::new(on, K1)
            .label("e2e/test", t)
            .label(WORKER_STUCK_LABEL, stuck)])
        .await?;
    let webhook = simulate_failing_modprobe(&env, ns, on, stuck).await?;
    let with = |p: &str| json!({"spec": {"moduleLoader": {"container": {"modprobe": {"parameters": [p]}}}}});
    apply_module(&env, module(ns, stuck, t, with("try=1"))).await?;
    apply_module(&env, module(ns, free, t, json!({}))).await?;
    let image = format!("registry.e2e.invalid/kmm-ci-a:deb-{K1}");

    // The other Module of the node loads while this one's pod cannot start.
    let first = env
        .cluster
        .wait("the first worker pod waits for its image", TIMEOUT, || async {
            Ok(stuck_pods(&env, ns, stuck).await?.into_iter().next())
        })
        .await?;
    wait_loaded(&env, on, ns, free, Some(&image)).await?;

    // Its entry changes while it waits: it is replaced by a pod for the new entry.
    apply_module(&env, module(ns, stuck, t, with("try=2"))).await?;
    let first_uid = first.uid();
    let second = env
        .cluster
        .wait("a pod for the new entry replaces the waiting one", TIMEOUT, || async {
            let pods = stuck_pods(&env, ns, stuck).await?;
            let old_gone = pods.iter().all(|p| p.uid() != first_uid);
            Ok(pods
                .into_iter()
                .find(|p| parameters_of(p) == ["try=2"])
                .filter(|_| old_gone))
        })
        .await?;
    ensure!(
        parameters_of(&first) == ["try=1"],
        "first pod's parameters: {:?}",
        parameters_of(&first)
    );

    // It never starts: after the timeout the node says so, with the kubelet's reason, and the
    // attempt is retried with backoff.
    let prefix = format!("Module {ns}/{stuck}: loading failed on attempt 1 (worker pod ");
    let message = wait_event_starting(&env, on, "ModuleLoadFailed", &prefix).await?;
    ensure!(
        message.contains(&format!(
            "still Pending after {}s: ImagePullBackOff: Back-off pulling image",
            PENDING_TIMEOUT.as_secs()
        )) && message.ends_with("; retrying in 10s"),
        "{message}"
    );
    ensure!(
        !labels_of(&node(&env, on).await?).contains_key(&ready_label(ns, stuck)),
        "{on} labelled ready for a module whose worker pod never started"
    );

    // The image can be pulled again: the retry loads the new entry, and the stuck pod is gone.
    unlabel(&env, on, WORKER_STUCK_LABEL).await?;
    wait_loaded(&env, on, ns, stuck, Some(&image)).await?;
    let nmc = Api::<NodeModulesConfig>::all(env.client()).get(on).await?;
    let loaded = nmc
        .status
        .unwrap_or_default()
        .modules
        .into_iter()
        .find(|m| m.name == stuck)
        .context("no status entry")?;
    ensure!(
        loaded.config.modprobe.parameters == ["try=2"],
        "{:?}",
        loaded.config.modprobe.parameters
    );
    let second_uid = second.uid();
    env.cluster
        .wait("the stuck pod is gone", TIMEOUT, || async {
            let pods = Api::<Pod>::namespaced(env.client(), ns)
                .list(&ListParams::default().labels(&format!("{MODULE_NAME_LABEL}={stuck}")))
                .await?;
            Ok(pods.items.iter().all(|p| p.uid() != second_uid).then_some(()))
        })
        .await?;
    Api::<MutatingWebhookConfiguration>::all(env.client())
        .delete(&webhook, &DeleteParams::default())
        .await?;
    Ok(())
}

// ------------------------------------------------------------------ a failing modprobe

/// A test puts `"true"` here on a fake node to say that `modprobe` fails on it.
const MODPROBE_FAILS_LABEL: &str = "e2e.kmm.sigs.x-k8s.io/modprobe-fails";
/// A test puts a Module's name here on a fake node to say that the worker pods of that Module
/// never start there (their image cannot be pulled: KWOK keeps them Pending).
const WORKER_STUCK_LABEL: &str = "e2e.kmm.sigs.x-k8s.io/worker-stuck";

/// The harness's way of simulating a node whose `modprobe` fails (a kernel that refuses the
/// module, say). KWOK plays the kubelet and fails a run-to-completion pod that carries
/// [`FAIL_ANNOTATION`], as `kmm-worker` would exit 1; kmm-spoke does not know about it and is
/// not told. So this registers, on the real API server, a mutating admission webhook served from
/// this process on loopback, scoped to worker pods in namespace `ns`, that adds the annotation to
/// a worker pod at creation when its node carries [`MODPROBE_FAILS_LABEL`]`=true`. Removing the
/// label is fixing the node: later attempts succeed. In the same way, a worker pod of Module
/// `m` gets [`STUCK_ANNOTATION`] when its node carries [`WORKER_STUCK_LABEL`]`=m`. Returns the
/// webhook configuration's name.
///
/// Waits until the API server applies the webhook (a dry-run worker pod of `module` on `node`
/// comes back annotated), so no worker pod slips through before it.
async fn each_module_on_a_node_gets_its_own_events(env: Arc<Env>) -> Result<()> {
    let (t, ns, on) = ("t-events", "t-events", "ev-a");
    add_nodes(&env, t, &[(on, K1)]).await?;
    // Several modules finish on one node at once: each status write races the cache's view of
    // the one before, which must neither lose an entry nor say "loaded" twice.
    let names = ["first", "second", "third", "fourth", "fifth"];
    for name in names {
        apply_module(&env, module(ns, name, t, json!({}))).await?;
    }
    for name in names {
        wait_loaded(
            &env,
            on,
            ns,
            name,
            Some(&format!("registry.e2e.invalid/kmm-ci-a:deb-{K1}")),
        )
        .await?;
    }
    for name in names {
        wait_event(
            &env,
            on,
            "ModuleLoaded",
            &format!("Module {ns}/{name} loaded into the kernel"),
        )
        .await?;
    }
    let nmc = Api::<NodeModulesConfig>::all(env.client()).get(on).await?;
    let recorded = nmc.status.map(|s| s.modules.len()).unwrap_or(0);
    ensure!(
        recorded == names.len(),
        "{recorded} of {} modules in the NMC status",
        names.len()
    );
    for name in names {
        let message = format!("Module {ns}/{name} loaded into the kernel");
        let n = times_said(&env, on, "ModuleLoaded", &message).await?;
        ensure!(n == 1, "{message:?} said {n} times");
    }
    for name in names {
        Api::<Module>::namespaced(env.client(), ns)
            .delete(name, &DeleteParams::default())
            .await?;
    }
    for name in names {
        wait_event(
            &env,
            on,
            "ModuleUnloaded",
            &format!("Module {ns}/{name} unloaded from the kernel"),
        )
        .await?;
    }
    for name in names {
        let message = format!("Module {ns}/{name} unloaded from the kernel");
        let n = times_said(&env, on, "ModuleUnloaded", &message).await?;
        ensure!(n == 1, "{message:?} said {n} times");
    }
    Ok(())
}

async fn refused_worker_pod_is_reported_on_the_node(env: Arc<Env>) -> Result<()> {
    let (t, ns, name, on) = ("t-refused", "t-refused", "kmm-ci-a", "refused-a");
    add_nodes(&env, t, &[(on, K1)]).await?;
    apply_module(
        &env,
        module(
            ns,
            name,
            t,
            json!({"spec": {"moduleLoader": {"serviceAccountName": "no-such-sa"}}}),
        ),
    )
    .await?;
    let prefix = format!("Module {ns}/{name}: loading worker pod refused: ");
    let message = wait_event_starting(&env, on, "ModuleLoadFailed", &prefix).await?;
    ensure!(message.contains("serviceaccount \"no-such-sa\" not found"), "{message}");
    // The ServiceAccount appears: the next retry loads.
    let sa: k8s_openapi::api::core::v1::ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "no-such-sa", "namespace": ns}}))?;
    Api::namespaced(env.client(), ns)
        .create(&PostParams::default(), &sa)
        .await?;
    wait_loaded(
        &env,
        on,
        ns,
        name,
        Some(&format!("registry.e2e.invalid/kmm-ci-a:deb-{K1}")),
    )
    .await
}

async fn device_plugin_problems_are_named_on_the_module(env: Arc<Env>) -> Result<()> {
    let (t, ns) = ("t-dpbad", "t-dpbad");
    add_nodes(&env, t, &[("dpbad-a", K1)]).await?;

    // A plugin that mounts the kubelet's device plugin directory itself: the operator does that.
    apply_module(
        &env,
        module(
            ns,
            "self-mount",
            t,
            json!({"spec": {"devicePlugin": {
                "container": {
                    "image": "registry.e2e.invalid/plugin:1",
                    "volumeMounts": [{"name": "host", "mountPath": "/var/lib/kubelet/device-plugins"}]
                },
                "volumes": [{"name": "host", "hostPath": {"path": "/var/lib/kubelet/device-plugins"}}]
            }}}),
        ),
    )
    .await?;
    wait_degraded(&env, ns, "self-mount", "InvalidSpec", "spec.devicePlugin.container.volumeMounts[0].mountPath: the operator already mounts /var/lib/kubelet/device-plugins").await?;

    // The API server refuses the DaemonSet (here an admission policy): said on the Module, and
    // the module itself still loads.
    let policy = "t-dpbad-no-daemonsets";
    let vap: Value = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": policy},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": ["apps"], "apiVersions": ["v1"],
                "operations": ["CREATE", "UPDATE"], "resources": ["daemonsets"]
            }]},
            "validations": [{"expression": "false", "message": "DaemonSets are not allowed in this namespace"}]
        }
    });
    let binding: Value = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": policy},
        "spec": {
            "policyName": policy,
            "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}
        }
    });
    let apply = |v: Value| {
        let env = env.clone();
        async move {
            let gvk =
                kube::api::GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", v["kind"].as_str().unwrap());
            let ar = kube::api::ApiResource::from_gvk(&gvk);
            let api: Api<kube::api::DynamicObject> = Api::all_with(env.client(), &ar);
            let obj: kube::api::DynamicObject = serde_json::from_value(v)?;
            api.patch(&obj.name_any(), &PatchParams::apply("e2e").force(), &Patch::Apply(&obj))
                .await?;
            anyhow::Ok(api)
        }
    };
    apply(vap).await?;
    let bindings = apply(binding).await?;
    // Policies take effect once the API server has them in its cache: wait for a refusal.
    env.cluster
        .wait("the admission policy refuses DaemonSets", TIMEOUT, || async {
            let probe = json!({
                "apiVersion": "apps/v1", "kind": "DaemonSet",
                "metadata": {"name": "probe", "namespace": ns},
                "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {
                    "metadata": {"labels": {"a": "b"}},
                    "spec": {"containers": [{"name": "c", "image": "registry.e2e.invalid/p:1"}]}
                }}
            });
            let r = Api::<DaemonSet>::namespaced(env.client(), ns)
                .create(
                    &PostParams {
                        dry_run: true,
                        ..Default::default()
                    },
                    &serde_json::from_value(probe)?,
                )
                .await;
            Ok(r.is_err().then_some(()))
        })
        .await?;
    apply_module(
        &env,
        module(
            ns,
            "refused",
            t,
            json!({"spec": {"devicePlugin": {"container": {"image": "registry.e2e.invalid/plugin:1"}}}}),
        ),
    )
    .await?;
    wait_degraded(
        &env,
        ns,
        "refused",
        "DevicePluginFailed",
        "DaemonSets are not allowed in this namespace",
    )
    .await?;
    wait_loaded(
        &env,
        "dpbad-a",
        ns,
        "refused",
        Some(&format!("registry.e2e.invalid/kmm-ci-a:deb-{K1}")),
    )
    .await?;
    let events = Api::<Event>::namespaced(env.client(), ns)
        .list(&ListParams::default().fields("involvedObject.name=refused"))
        .await?;
    ensure!(
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("DevicePluginFailed")
                && e.message.as_deref().is_some_and(|m| m.contains("not allowed"))),
        "no DevicePluginFailed event"
    );
    // Policy lifted: the next look (a change to the Module, or the minute's retry) applies it.
    bindings.delete(policy, &DeleteParams::default()).await?;
    env.cluster
        .wait("the admission policy is lifted", TIMEOUT, || async {
            Api::<Module>::namespaced(env.client(), ns)
                .patch(
                    "refused",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"annotations": {"e2e/nudge": format!("{:?}", std::time::SystemTime::now())}}})),
                )
                .await?;
            let ds = Api::<DaemonSet>::namespaced(env.client(), ns)
                .get_opt("refused-device-plugin")
                .await?;
            let s = module_status(&env, ns, "refused").await?.status.unwrap_or_default();
            let healthy = s
                .conditions
                .iter()
                .any(|c| c.type_ == "Degraded" && c.status == "False");
            Ok((ds.is_some() && healthy).then_some(()))
        })
        .await?;
    Ok(())
}

async fn simulate_failing_modprobe(env: &Env, ns: &str, node: &str, module: &str) -> Result<String> {
    let ca = Ca::new("e2e-failing-modprobe-ca")?;
    let pair = ca.server("e2e-failing-modprobe", &["127.0.0.1"])?;
    let certs = CertificateDer::pem_slice_iter(pair.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(pair.key_pem.as_bytes())?;
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let port = listener.local_addr()?.port();
    let nodes: Api<Node> = Api::all(env.client());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let (acceptor, nodes) = (acceptor.clone(), nodes.clone());
            tokio::spawn(async move {
                if let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                    && let Err(e) = answer_admission(stream, &nodes).await
                {
                    eprintln!("failing-modprobe webhook: {e:#}");
                }
            });
        }
    });

    let name = format!("e2e-failing-modprobe-{ns}");
    let config = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [{
            "name": "failing-modprobe.e2e.kmm.sigs.x-k8s.io",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "reinvocationPolicy": "Never",
            "timeoutSeconds": 10,
            "clientConfig": {
                "url": format!("https://127.0.0.1:{port}/mutate"),
                "caBundle": base64::engine::general_purpose::STANDARD.encode(&ca.cert_pem),
            },
            "rules": [{
                "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"],
                "operations": ["CREATE"], "scope": "Namespaced"
            }],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
            "objectSelector": {"matchExpressions": [{"key": worker_pod::ACTION_LABEL, "operator": "Exists"}]},
        }]
    });
    Api::<MutatingWebhookConfiguration>::all(env.client())
        .patch(&name, &PatchParams::apply("e2e").force(), &Patch::Apply(config))
        .await
        .context("registering the failing-modprobe webhook")?;

    env.cluster.ensure_namespace(ns).await?;
    let pods: Api<Pod> = Api::namespaced(env.client(), ns);
    let probe: Pod = serde_json::from_value(json!({
        "metadata": {
            "name": "failing-modprobe-probe",
            "labels": {worker_pod::ACTION_LABEL: "Load", MODULE_NAME_LABEL: module},
            "annotations": {"e2e.kmm.sigs.x-k8s.io/probe": "true"}
        },
        "spec": {
            "nodeName": node,
            "restartPolicy": "Never",
            "containers": [{"name": "probe", "image": "kmm-worker:e2e"}]
        }
    }))?;
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    env.cluster
        .wait("the failing-modprobe webhook is in effect", TIMEOUT, || async {
            // Errors while the API server picks up the webhook (or the namespace's default
            // ServiceAccount is made) mean "not yet"; the bounded wait reports the timeout.
            Ok(pods
                .create(&dry_run, &probe)
                .await
                .ok()
                .filter(|p| {
                    [FAIL_ANNOTATION, STUCK_ANNOTATION]
                        .iter()
                        .any(|a| p.annotations().get(*a).map(String::as_str) == Some("true"))
                })
                .map(|_| ()))
        })
        .await?;
    Ok(name)
}

/// Answers one AdmissionReview (HTTP/1.1, one request per connection).
async fn answer_admission<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, nodes: &Api<Node>) -> Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let (body_at, len) = loop {
        let n = s.read(&mut chunk).await?;
        ensure!(n > 0, "connection closed before the request head ended");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .context("request without content-length")?
                .trim()
                .parse::<usize>()?;
            break (i + 4, len);
        }
        ensure!(buf.len() < 1 << 20, "request head too large");
    };
    ensure!(len < 16 << 20, "request body too large");
    while buf.len() < body_at + len {
        let n = s.read(&mut chunk).await?;
        ensure!(n > 0, "connection closed mid-body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let review: Value = serde_json::from_slice(&buf[body_at..body_at + len])?;
    let request = &review["request"];
    let pod = &request["object"];
    let node_labels = match pod["spec"]["nodeName"].as_str() {
        Some(n) => nodes.get_opt(n).await?.map(|n| labels_of(&n)).unwrap_or_default(),
        None => BTreeMap::new(),
    };
    let module = pod["metadata"]["labels"][MODULE_NAME_LABEL].as_str();
    let mut add = Vec::new();
    if node_labels.get(MODPROBE_FAILS_LABEL).map(String::as_str) == Some("true") {
        add.push(FAIL_ANNOTATION);
    }
    if module.is_some() && node_labels.get(WORKER_STUCK_LABEL).map(String::as_str) == module {
        add.push(STUCK_ANNOTATION);
    }
    let mut response = json!({"uid": request["uid"], "allowed": true});
    if !add.is_empty() {
        let mut patch = Vec::new();
        if !pod["metadata"]["annotations"].is_object() {
            patch.push(json!({"op": "add", "path": "/metadata/annotations", "value": {}}));
        }
        for a in add {
            let key = a.replace('~', "~0").replace('/', "~1");
            patch.push(json!({"op": "add", "path": format!("/metadata/annotations/{key}"), "value": "true"}));
        }
        let patch = Value::Array(patch);
        response["patchType"] = json!("JSONPatch");
        response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(patch.to_string()));
    }
    let body =
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}).to_string();
    s.write_all(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await?;
    s.shutdown().await?;
    Ok(())
}

/// `kmm_spoke_worker_pod_failures_total` from kmm-spoke's `/metrics`.
async fn worker_pod_failures(env: &Env) -> Result<f64> {
    let text = http_get(env.metrics_port, "/metrics").await?;
    ensure!(text.starts_with("HTTP/1.1 200"), "GET /metrics: {text}");
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix("kmm_spoke_worker_pod_failures_total "))
        .with_context(|| format!("no kmm_spoke_worker_pod_failures_total in\n{text}"))?;
    Ok(value.trim().parse()?)
}
