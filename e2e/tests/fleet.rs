//! Tests that prove the local fleet: one hub and two spokes are started once
//! for this file (a fleet uses real memory and CPU), the checks run against
//! it, then it is torn down and the teardown itself is checked.
//!
//! A run without binaries fails (never skips) and says to run
//! `ci/build-bins.sh`.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use base64::Engine;
use e2e::kwok::FAIL_ANNOTATION;
use e2e::ocm::{self, condition_true};
use e2e::{Fleet, FleetSpec, NodeSpec, RegistrySpec, SpokeSpec};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use libtest_mimic::{Arguments, Failed, Trial};
use serde_json::{Value, json};

const KERNEL_A: &str = "5.14.0-427.13.1.el9_4.x86_64";
const KERNEL_B: &str = "6.12.0-55.el10.x86_64";
const REGISTRY_USER: &str = "kmm";
const REGISTRY_PASS: &str = "e2e-password";

type TestFn = fn(Arc<Fleet>) -> Pin<Box<dyn Future<Output = Result<()>> + Send>>;

macro_rules! tests {
    ($($name:ident),* $(,)?) => {
        vec![$((stringify!($name), (|f| Box::pin($name(f))) as TestFn)),*]
    };
}

fn spec() -> FleetSpec {
    FleetSpec::new("fleet-tests")
        .base_dir(concat!(env!("CARGO_TARGET_TMPDIR"), "/kmm-e2e"))
        .hub_node(NodeSpec::new("hub-builder", KERNEL_A))
        .spoke(
            SpokeSpec::new("spoke-a")
                .node(NodeSpec::new("a-worker-0", KERNEL_A).label("e2e/pool", "a"))
                .node(NodeSpec::new("a-worker-1", KERNEL_A).label("e2e/pool", "a")),
        )
        .spoke(
            SpokeSpec::new("spoke-b").node(NodeSpec::new("b-gpu-0", KERNEL_B).label("e2e/pool", "gpu").taint(
                "e2e/dedicated",
                Some("gpu"),
                "NoSchedule",
            )),
        )
        .registry(RegistrySpec {
            tls: false,
            auth: Some((REGISTRY_USER.into(), REGISTRY_PASS.into())),
        })
}

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let tests = tests![
        manifestwork_applied_on_spoke_and_status_returns,
        cluster_claim_reaches_hub,
        fake_nodes_have_names_labels_taints_and_kernels,
        pods_reach_their_stage_phase,
        daemonset_pods_become_ready,
        garbage_collection_of_owned_object,
        registry_on_loopback_with_basic_auth,
    ];
    let rt = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime"),
    );

    let names: Vec<&str> = tests.iter().map(|(n, _)| *n).collect();
    let wanted = !args.list && names.iter().any(|n| selected(&args, n));
    let fleet: Result<Arc<Fleet>, String> = if wanted {
        rt.block_on(Fleet::start(spec()))
            .map(Arc::new)
            .map_err(|e| format!("{e:#}"))
    } else {
        Err("fleet not started (nothing selected)".into())
    };
    if let Ok(f) = &fleet {
        report(f);
    }

    let trials: Vec<Trial> = tests
        .into_iter()
        .map(|(name, f)| {
            let fleet = fleet.clone();
            let rt = rt.clone();
            Trial::test(name, move || {
                let fleet = fleet.map_err(|e| Failed::from(format!("the fleet did not start: {e}")))?;
                rt.block_on(async {
                    let r = tokio::time::timeout(Duration::from_secs(240), f(fleet.clone())).await;
                    match r {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(Failed::from(format!(
                            "{e:#}\n(fleet logs: {})",
                            fleet.log_dir().display()
                        ))),
                        Err(_) => Err(Failed::from(format!(
                            "timed out after 240s (fleet logs: {})",
                            fleet.log_dir().display()
                        ))),
                    }
                })
            })
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);

    let mut teardown_ok = true;
    if let Ok(f) = fleet {
        match Arc::try_unwrap(f) {
            Ok(f) => {
                if let Err(e) = teardown_leaves_nothing(f) {
                    eprintln!("TEARDOWN FAILED: {e:#}");
                    teardown_ok = false;
                }
            }
            Err(f) => {
                eprintln!("fleet still referenced after the tests; tearing down anyway");
                f.teardown();
            }
        }
    }
    if conclusion.has_failed() || !teardown_ok {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn selected(args: &Arguments, name: &str) -> bool {
    let by_filter = match &args.filter {
        None => true,
        Some(f) if args.exact => name == f,
        Some(f) => name.contains(f.as_str()),
    };
    by_filter && !args.skip.iter().any(|s| name.contains(s.as_str()))
}

fn report(f: &Fleet) {
    let rss = f.rss_kib();
    let total: u64 = rss.iter().map(|(_, k)| k).sum();
    let mut lines = vec![format!(
        "fleet started in {:.1}s: hub + {} spokes, {} processes, {} MiB RSS total",
        f.started_in.as_secs_f64(),
        f.spokes.len(),
        rss.len(),
        total / 1024
    )];
    for (n, k) in &rss {
        lines.push(format!("  {n:<45} {:>6} MiB", k / 1024));
    }
    let text = lines.join("\n");
    eprintln!("{text}\n  (logs in {})", f.log_dir().display());
    let _ = std::fs::write(f.dir.join("metrics.txt"), text + "\n");
}

/// After the tests: every process gone, every server port closed.
fn teardown_leaves_nothing(f: Fleet) -> Result<()> {
    let pids = f.pids();
    let mut ports: Vec<u16> = std::iter::once(&f.hub)
        .chain(f.spokes.iter().map(|s| &s.cluster))
        .filter_map(|c| c.server.rsplit(':').next()?.parse().ok())
        .collect();
    if let Some(r) = &f.registry {
        ports.push(r.port);
    }
    ensure!(!pids.is_empty(), "no processes were running before teardown");
    f.teardown();
    let left: Vec<String> = pids
        .iter()
        .filter(|(_, pid)| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| !s.contains(") Z "))
                .unwrap_or(false)
        })
        .map(|(n, p)| format!("{n} ({p})"))
        .collect();
    ensure!(left.is_empty(), "processes left after teardown: {left:?}");
    let open: Vec<u16> = ports.into_iter().filter(|p| e2e::net::is_listening(*p)).collect();
    ensure!(open.is_empty(), "ports still listening after teardown: {open:?}");
    eprintln!("teardown: {} processes stopped, no port left open", pids.len());
    Ok(())
}

// ---------------------------------------------------------------- helpers

async fn wait_for<T, F, Fut>(fleet: &Fleet, what: &str, secs: u64, f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    e2e::wait::poll(
        what,
        Duration::from_secs(secs),
        Duration::from_millis(250),
        || fleet.check_alive(),
        f,
    )
    .await
}

fn pod(name: &str, restart: &str, node_selector: Value, extra_annotations: Value) -> Result<Pod> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": extra_annotations},
        "spec": {
            "restartPolicy": restart,
            "nodeSelector": node_selector,
            "containers": [{"name": "main", "image": "registry.invalid/e2e/worker:1"}],
        },
    }))?)
}

async fn pod_phase(api: &Api<Pod>, name: &str) -> Result<Option<String>> {
    Ok(api.get_opt(name).await?.and_then(|p| p.status).and_then(|s| s.phase))
}

// ------------------------------------------------------------------ tests

/// Hub → work agent → spoke, and status (conditions and feedback) back.
async fn manifestwork_applied_on_spoke_and_status_returns(fleet: Arc<Fleet>) -> Result<()> {
    let spoke = fleet.spoke("spoke-a");
    let works = ocm::manifest_works(&fleet.hub.client, "spoke-a");
    let work: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "work.open-cluster-management.io/v1",
        "kind": "ManifestWork",
        "metadata": {"name": "e2e-roundtrip", "namespace": "spoke-a"},
        "spec": {
            "workload": {"manifests": [
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "e2e-work"}},
                {"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {"name": "from-hub", "namespace": "e2e-work"},
                 "data": {"greeting": "hello from the hub"}},
                {"apiVersion": "apps/v1", "kind": "Deployment",
                 "metadata": {"name": "web", "namespace": "e2e-work"},
                 "spec": {
                     "replicas": 2,
                     "selector": {"matchLabels": {"app": "web"}},
                     "template": {
                         "metadata": {"labels": {"app": "web"}},
                         "spec": {"containers": [{"name": "web", "image": "registry.invalid/web:1"}]},
                     },
                 }},
            ]},
            "manifestConfigs": [{
                "resourceIdentifier": {"group": "apps", "resource": "deployments",
                                       "namespace": "e2e-work", "name": "web"},
                "feedbackRules": [{"type": "WellKnownStatus"}],
            }],
        },
    }))?;
    works.create(&PostParams::default(), &work).await?;

    let cms: Api<ConfigMap> = Api::namespaced(spoke.client.clone(), "e2e-work");
    let cm = wait_for(&fleet, "ConfigMap e2e-work/from-hub on spoke-a", 60, || {
        let cms = cms.clone();
        async move { Ok(cms.get_opt("from-hub").await?) }
    })
    .await?;
    ensure!(
        cm.data.unwrap_or_default().get("greeting").map(String::as_str) == Some("hello from the hub"),
        "ConfigMap content differs"
    );

    // conditions and the Deployment's readyReplicas, fed back to the hub
    let done = wait_for(
        &fleet,
        "ManifestWork Applied+Available with readyReplicas=2 feedback",
        120,
        || {
            let works = works.clone();
            async move {
                let w = serde_json::to_value(works.get("e2e-roundtrip").await?)?;
                if !(condition_true(&w, "Applied") && condition_true(&w, "Available")) {
                    return Ok(None);
                }
                let ready = w["status"]["resourceStatus"]["manifests"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|m| m["resourceMeta"]["kind"] == "Deployment")
                    .flat_map(|m| m["statusFeedback"]["values"].as_array().cloned().unwrap_or_default())
                    .find(|v| v["name"] == "ReadyReplicas")
                    .and_then(|v| v["fieldValue"]["integer"].as_i64());
                Ok((ready == Some(2)).then_some(w))
            }
        },
    )
    .await?;
    let n = done["status"]["resourceStatus"]["manifests"]
        .as_array()
        .map(Vec::len)
        .unwrap_or(0);
    ensure!(n == 3, "expected status of 3 manifests, got {n}");

    // deleting the work removes what it applied
    works.delete("e2e-roundtrip", &DeleteParams::default()).await?;
    wait_for(
        &fleet,
        "ConfigMap removed from spoke-a after ManifestWork deletion",
        90,
        || {
            let cms = cms.clone();
            async move { Ok(cms.get_opt("from-hub").await?.is_none().then_some(())) }
        },
    )
    .await?;
    Ok(())
}

/// A ClusterClaim made on a spoke shows up (and changes) in the hub's ManagedCluster.
async fn cluster_claim_reaches_hub(fleet: Arc<Fleet>) -> Result<()> {
    let spoke = fleet.spoke("spoke-b");
    let claims = ocm::cluster_claims(&spoke.client);
    let name = "kernel-versions.e2e.kmm.sigs.x-k8s.io";
    let claim: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "cluster.open-cluster-management.io/v1alpha1",
        "kind": "ClusterClaim",
        "metadata": {"name": name},
        "spec": {"value": KERNEL_B},
    }))?;
    claims.create(&PostParams::default(), &claim).await?;
    let mcs = ocm::managed_clusters(&fleet.hub.client);
    let seen = |want: &'static str| {
        let mcs = mcs.clone();
        move || {
            let mcs = mcs.clone();
            async move {
                let mc = serde_json::to_value(mcs.get("spoke-b").await?)?;
                let hit = mc["status"]["clusterClaims"]
                    .as_array()
                    .is_some_and(|cs| cs.iter().any(|c| c["name"] == name && c["value"] == want));
                Ok(hit.then_some(()))
            }
        }
    };
    wait_for(
        &fleet,
        "claim in ManagedCluster spoke-b status.clusterClaims",
        90,
        seen(KERNEL_B),
    )
    .await?;

    claims
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"value": "6.12.1"}})),
        )
        .await?;
    wait_for(&fleet, "updated claim value on the hub", 90, seen("6.12.1")).await?;
    Ok(())
}

/// Fake nodes carry the names, labels, taints and kernels they were given.
async fn fake_nodes_have_names_labels_taints_and_kernels(fleet: Arc<Fleet>) -> Result<()> {
    let want: BTreeMap<&str, (&str, &str, &str)> = [
        ("a-worker-0", ("spoke-a", KERNEL_A, "a")),
        ("a-worker-1", ("spoke-a", KERNEL_A, "a")),
        ("b-gpu-0", ("spoke-b", KERNEL_B, "gpu")),
    ]
    .into();
    for (node, (spoke, kernel, pool)) in &want {
        let nodes: Api<Node> = Api::all(fleet.spoke(spoke).client.clone());
        let n = nodes.get(node).await?;
        let labels = n.metadata.labels.clone().unwrap_or_default();
        ensure!(
            labels.get("e2e/pool").map(String::as_str) == Some(*pool),
            "{node}: labels {labels:?}"
        );
        let status = n.status.clone().context("node status")?;
        let k = status.node_info.context("nodeInfo")?.kernel_version;
        ensure!(k == *kernel, "{node}: kernelVersion {k}, want {kernel}");
        let ready = status
            .conditions
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        ensure!(ready, "{node} is not Ready");
    }
    let gpu: Api<Node> = Api::all(fleet.spoke("spoke-b").client.clone());
    let taints = gpu
        .get("b-gpu-0")
        .await?
        .spec
        .and_then(|s| s.taints)
        .unwrap_or_default();
    ensure!(
        taints
            .iter()
            .any(|t| t.key == "e2e/dedicated" && t.effect == "NoSchedule"),
        "b-gpu-0 taints: {taints:?}"
    );
    // a kernel upgrade is a status patch
    let hub_nodes: Api<Node> = Api::all(fleet.hub.client.clone());
    fleet
        .hub
        .set_kernel_version("hub-builder", "5.14.0-999.el9.x86_64")
        .await?;
    let k = hub_nodes
        .get("hub-builder")
        .await?
        .status
        .and_then(|s| s.node_info)
        .map(|i| i.kernel_version);
    ensure!(
        k.as_deref() == Some("5.14.0-999.el9.x86_64"),
        "kernel after upgrade: {k:?}"
    );
    Ok(())
}

/// Pods on fake nodes reach the phase their KWOK stage gives them.
async fn pods_reach_their_stage_phase(fleet: Arc<Fleet>) -> Result<()> {
    let a = fleet.spoke("spoke-a");
    a.ensure_namespace("e2e-pods").await?;
    let pods: Api<Pod> = Api::namespaced(a.client.clone(), "e2e-pods");
    let on_a0 = json!({"kubernetes.io/hostname": "a-worker-0"});
    let fail = json!({FAIL_ANNOTATION: "true"});
    let pp = PostParams::default();
    pods.create(&pp, &pod("worker-ok", "Never", on_a0.clone(), json!({}))?)
        .await?;
    pods.create(&pp, &pod("worker-fails", "Never", on_a0.clone(), fail)?)
        .await?;
    pods.create(&pp, &pod("long-running", "Always", on_a0, json!({}))?)
        .await?;

    for (name, want) in [("worker-ok", "Succeeded"), ("worker-fails", "Failed")] {
        let p = pods.clone();
        wait_for(&fleet, &format!("pod {name} {want}"), 60, || {
            let p = p.clone();
            async move { Ok((pod_phase(&p, name).await?.as_deref() == Some(want)).then_some(())) }
        })
        .await?;
    }
    let ok = pods.get("worker-ok").await?;
    let term = ok
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|c| c.into_iter().next())
        .and_then(|c| c.state)
        .and_then(|s| s.terminated)
        .context("worker-ok has no terminated state")?;
    ensure!(term.exit_code == 0, "worker-ok exit code {}", term.exit_code);

    wait_for(&fleet, "pod long-running Running and Ready", 60, || {
        let p = pods.clone();
        async move {
            let pod = p.get("long-running").await?;
            let st = pod.status.unwrap_or_default();
            let ready = st
                .conditions
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            Ok((st.phase.as_deref() == Some("Running") && ready).then_some(()))
        }
    })
    .await?;

    // Taints: without a toleration a pod stays Pending (Unschedulable); with one it runs.
    let b = fleet.spoke("spoke-b");
    b.ensure_namespace("e2e-pods").await?;
    let bpods: Api<Pod> = Api::namespaced(b.client.clone(), "e2e-pods");
    let on_gpu = json!({"kubernetes.io/hostname": "b-gpu-0"});
    bpods
        .create(&pp, &pod("untolerated", "Never", on_gpu.clone(), json!({}))?)
        .await?;
    let mut tolerated = pod("tolerated", "Never", on_gpu, json!({}))?;
    tolerated.spec.as_mut().context("spec")?.tolerations = Some(vec![serde_json::from_value(
        json!({"key": "e2e/dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}),
    )?]);
    bpods.create(&pp, &tolerated).await?;
    wait_for(&fleet, "tolerating pod Succeeded on the tainted node", 60, || {
        let p = bpods.clone();
        async move { Ok((pod_phase(&p, "tolerated").await?.as_deref() == Some("Succeeded")).then_some(())) }
    })
    .await?;
    wait_for(&fleet, "untolerated pod reported Unschedulable", 60, || {
        let p = bpods.clone();
        async move {
            let pod = p.get("untolerated").await?;
            let st = pod.status.unwrap_or_default();
            let unsched = st.conditions.unwrap_or_default().iter().any(|c| {
                c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable")
            });
            ensure!(
                st.phase.as_deref() == Some("Pending"),
                "untolerated pod phase {:?}",
                st.phase
            );
            Ok(unsched.then_some(()))
        }
    })
    .await?;
    Ok(())
}

/// DaemonSet pods (scheduled by the controller manager's DaemonSet controller) become Ready.
async fn daemonset_pods_become_ready(fleet: Arc<Fleet>) -> Result<()> {
    let a = fleet.spoke("spoke-a");
    a.ensure_namespace("e2e-ds").await?;
    let dss: Api<DaemonSet> = Api::namespaced(a.client.clone(), "e2e-ds");
    let ds: DaemonSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "device-plugin"},
        "spec": {
            "selector": {"matchLabels": {"app": "device-plugin"}},
            "template": {
                "metadata": {"labels": {"app": "device-plugin"}},
                "spec": {
                    "nodeSelector": {"e2e/pool": "a"},
                    "containers": [{"name": "dp", "image": "registry.invalid/dp:1"}],
                },
            },
        },
    }))?;
    dss.create(&PostParams::default(), &ds).await?;
    wait_for(&fleet, "DaemonSet device-plugin 2/2 ready", 90, || {
        let dss = dss.clone();
        async move {
            let st = dss.get("device-plugin").await?.status.unwrap_or_default();
            Ok((st.desired_number_scheduled == 2 && st.number_ready == 2).then_some(()))
        }
    })
    .await?;
    Ok(())
}

/// The controller manager's garbage collector removes an object whose owner is deleted.
async fn garbage_collection_of_owned_object(fleet: Arc<Fleet>) -> Result<()> {
    let b = fleet.spoke("spoke-b");
    b.ensure_namespace("e2e-gc").await?;
    let cms: Api<ConfigMap> = Api::namespaced(b.client.clone(), "e2e-gc");
    let secrets: Api<Secret> = Api::namespaced(b.client.clone(), "e2e-gc");
    let owner = cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "owner"}, "data": {"k": "v"}}))?,
        )
        .await?;
    let uid = owner.metadata.uid.context("owner uid")?;
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "owned", "ownerReferences": [{
                    "apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid,
                }]},
                "stringData": {"x": "y"},
            }))?,
        )
        .await?;
    cms.delete("owner", &DeleteParams::background()).await?;
    wait_for(&fleet, "owned Secret garbage-collected", 90, || {
        let s = secrets.clone();
        async move { Ok(s.get_opt("owned").await?.is_none().then_some(())) }
    })
    .await?;
    Ok(())
}

/// The registry answers on loopback and enforces basic auth.
async fn registry_on_loopback_with_basic_auth(fleet: Arc<Fleet>) -> Result<()> {
    let r = fleet.registry.as_ref().context("no registry")?;
    ensure!(r.host.starts_with("127.0.0.1:"), "registry host {}", r.host);
    let anon = http_get(r.port, "/v2/", None)?;
    ensure!(anon.starts_with("HTTP/1.1 401"), "anonymous /v2/: {anon}");
    let creds = base64::engine::general_purpose::STANDARD.encode(format!("{REGISTRY_USER}:{REGISTRY_PASS}"));
    let ok = http_get(r.port, "/v2/", Some(&creds))?;
    ensure!(ok.starts_with("HTTP/1.1 200"), "authenticated /v2/: {ok}");
    let bad = base64::engine::general_purpose::STANDARD.encode(format!("{REGISTRY_USER}:wrong"));
    let denied = http_get(r.port, "/v2/", Some(&bad))?;
    ensure!(denied.starts_with("HTTP/1.1 401"), "wrong password /v2/: {denied}");
    Ok(())
}

/// Status line of a plain HTTP/1.1 GET on 127.0.0.1.
fn http_get(port: u16, path: &str, basic: Option<&str>) -> Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let auth = basic
        .map(|b| format!("Authorization: Basic {b}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}Connection: close\r\n\r\n"
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    match buf.lines().next() {
        Some(l) => Ok(l.to_string()),
        None => bail!("empty response"),
    }
}
