//! `kmm-spoke` on a real API server: one control plane (etcd, kube-apiserver, controller
//! manager, scheduler, KWOK) started for this file, our CRDs installed, and the real
//! `kmm-spoke` binary running against it in managed mode with leader election. KWOK plays the
//! kubelet: worker pods on fake nodes complete, DaemonSet pods become Ready.
//!
//! Each trial works in a namespace and on fake nodes of its own, so trials run in parallel.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use e2e::KubeCluster;
use e2e::bins::Bins;
use e2e::kwok::NodeSpec;
use e2e::proc::{Spawn, Supervisor};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use libtest_mimic::{Arguments, Failed, Trial};
use serde_json::{Value, json};
use shared_api::module::Module;
use shared_api::nmc::NodeModulesConfig;
use shared_api::ocm::{ClusterClaim, KERNEL_VERSIONS_CLAIM};

const K1: &str = "6.1.0-28-amd64";
const K2: &str = "5.14.0-427.13.1.el9_4.x86_64";
const K3: &str = "6.1.0-30-amd64";
const TIMEOUT: Duration = Duration::from_secs(90);

struct Env {
    cluster: KubeCluster,
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

/// Our own binaries sit next to the test executable's `deps/` directory.
fn our_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test executable has no target directory")?;
    let path = dir.join(name);
    ensure!(
        path.exists(),
        "{} not found: build it first with `cargo build --workspace --bins`",
        path.display()
    );
    Ok(path)
}

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
    Ok(Env { cluster, _sup: sup })
}

async fn http_get(port: u16, path: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
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

async fn node_events(env: &Env, node: &str, reason: &str) -> Result<Vec<String>> {
    let api: Api<Event> = Api::all(env.client());
    let list = api
        .list(&ListParams::default().fields(&format!("involvedObject.name={node}")))
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter_map(|e| e.message)
        .collect())
}

async fn wait_event(env: &Env, node: &str, reason: &str, message: &str) -> Result<()> {
    env.cluster
        .wait(&format!("{reason} event on {node}"), TIMEOUT, || async move {
            Ok(node_events(env, node, reason)
                .await?
                .iter()
                .any(|m| m == message)
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
                    .list(&ListParams::default().labels("app.kubernetes.io/name=kmm-worker"))
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

async fn ordered_upgrade(env: Arc<Env>) -> Result<()> {
    let (t, ns, name) = ("t-upgrade", "t-upgrade", "kmm-ci-a");
    let version_label = format!("kmm.node.kubernetes.io/version-module.{ns}.{name}");
    let worker_label = format!("beta.kmm.node.kubernetes.io/version-worker-pod.{ns}.{name}");
    env.cluster
        .add_nodes(&[NodeSpec::new("upg-a", K1)
            .label("e2e/test", t)
            .label(&version_label, "1")])
        .await?;
    let versioned = |v: &str, image: &str| {
        module(
            ns,
            name,
            t,
            json!({"spec": {"moduleLoader": {"container": {
                "version": v,
                "kernelMappings": [{"regexp": "^.+$", "containerImage": image}]
            }}}}),
        )
    };
    apply_module(&env, versioned("1", "registry.e2e.invalid/kmm-ci-a:v1")).await?;
    wait_loaded(&env, "upg-a", ns, name, Some("registry.e2e.invalid/kmm-ci-a:v1")).await?;
    let labels = labels_of(&node(&env, "upg-a").await?);
    ensure!(
        labels
            .get(&format!("kmm.node.kubernetes.io/{ns}.{name}.version.ready"))
            .map(String::as_str)
            == Some("1"),
        "{labels:?}"
    );
    ensure!(labels.get(&worker_label).map(String::as_str) == Some("1"), "{labels:?}");

    // The administrator moves the Module to version 2: the node still asks for 1, so v1 unloads.
    apply_module(&env, versioned("2", "registry.e2e.invalid/kmm-ci-a:v2")).await?;
    wait_loaded(&env, "upg-a", ns, name, None).await?;
    env.cluster
        .wait("worker-pod label cleared", TIMEOUT, || async {
            Ok((!labels_of(&node(&env, "upg-a").await?).contains_key(&worker_label)).then_some(()))
        })
        .await?;
    // Then relabels the node for version 2: v2 loads.
    Api::<Node>::all(env.client())
        .patch(
            "upg-a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {&version_label: "2"}}})),
        )
        .await?;
    wait_loaded(&env, "upg-a", ns, name, Some("registry.e2e.invalid/kmm-ci-a:v2")).await?;
    let labels = labels_of(&node(&env, "upg-a").await?);
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
        env.cluster
            .wait(&format!("{name}: Degraded condition"), TIMEOUT, || async {
                let s = module_status(&env, ns, name).await?.status.unwrap_or_default();
                Ok(s.conditions
                    .iter()
                    .find(|c| {
                        c.type_ == "Degraded"
                            && c.status == "True"
                            && c.reason == "InvalidSpec"
                            && c.message.contains(expected)
                    })
                    .map(|_| ()))
            })
            .await?;
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
                Ok((want.lines().any(|k| k == "7.0.0-1-amd64") && got.as_deref() == Some(want.as_str())).then_some(()))
            }
        })
        .await?;
    let got = claims.get(KERNEL_VERSIONS_CLAIM).await?.spec.value;
    ensure!(!got.contains('+'), "trailing + not removed: {got:?}");
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
