//! `cargo run -p e2e --release -- bench-spoke`: 500 fake nodes on three kernels and 5 Modules on
//! one real API server. Prints, measured in one run on the same server:
//!
//! - the time a bare client takes to write what loading needs: one worker pod per node and
//!   Module (rendered exactly as the spoke renders them) and one ready-label patch per node and
//!   Module, 16 requests in flight;
//! - the floor KWOK's pod lifecycle sets: the same pods, each node label written only once KWOK
//!   has run its pod to completion, and the pod then deleted;
//! - the time `kmm-spoke` takes from the Modules' creation until every node carries every
//!   Module's ready label (worker pods run to completion under KWOK in between);
//! - the spoke's peak memory (VmHWM) and the writes it sent to the API server.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use shared_api::nmc::{ModuleConfig, NodeModuleSpec};

use crate::bench::{metric, peak_kib, release_binary, series};
use crate::bins::Bins;
use crate::cluster::KubeCluster;
use crate::kwok::NodeSpec;
use crate::proc::{Spawn, Supervisor};

const KERNELS: [&str; 3] = [
    "6.1.0-28-amd64",
    "5.14.0-427.13.1.el9_4.x86_64",
    "6.12.0-55.el10.x86_64",
];

/// Benchmark size.
pub struct Size {
    /// Fake nodes.
    pub nodes: usize,
    /// Modules.
    pub modules: usize,
}

fn module_name(i: usize) -> String {
    format!("bench-{i}")
}

/// Runs the benchmark and prints the figures.
pub async fn run(size: Size, dir: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let sup = Arc::new(Supervisor::new(dir)?);
    let bins = Bins::locate()?;
    eprintln!("bench: starting a control plane ...");
    let cluster = KubeCluster::start(sup.clone(), &bins, "bench", &dir.join("bench")).await?;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    cluster.install_crds(&repo.join("manifests/crds")).await?;
    let ns = "bench";
    cluster.ensure_namespace(ns).await?;
    cluster.ensure_namespace("kmm-system").await?;

    eprintln!(
        "bench: creating {} fake nodes on {} kernels ...",
        size.nodes,
        KERNELS.len()
    );
    let specs: Vec<NodeSpec> = (0..size.nodes)
        .map(|i| NodeSpec::new(format!("bench-{i:04}"), KERNELS[i % KERNELS.len()]).label("bench", "true"))
        .collect();
    for chunk in specs.chunks(100) {
        cluster.add_nodes(chunk).await?;
    }
    let client = cluster.client.clone();
    let nodes: Api<Node> = Api::all(client.clone());

    // The bare client: the same pods and label patches, nothing else.
    let pods: Vec<(String, Pod)> = specs
        .iter()
        .flat_map(|n| (0..size.modules).map(move |m| (n.name.clone(), m, n.kernel_version.clone())))
        .map(|(node, m, kernel)| {
            let entry = NodeModuleSpec {
                name: module_name(m),
                namespace: ns.into(),
                config: ModuleConfig {
                    kernel_version: kernel.clone(),
                    container_image: format!("registry.bench.invalid/kmod:{kernel}"),
                    modprobe: shared_api::module::ModprobeSpec {
                        module_name: Some("kmm_ci_a".into()),
                        ..Default::default()
                    },
                    ..Default::default()
                },
                ..Default::default()
            };
            let owner = OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: node.clone(),
                uid: "bench".into(),
                ..Default::default()
            };
            let mut pod = kmm_spoke::plan::worker_pod::render(
                &node,
                "bench",
                &entry,
                kmm_spoke::plan::node_plan::Action::Load,
                0,
                &Default::default(),
                owner,
            );
            // A dangling owner would be collected at once; the bare client's pods have none.
            pod.metadata.owner_references = None;
            pod.metadata.name = Some(format!("bare-{}", pod.metadata.name.unwrap_or_default()));
            (node, pod)
        })
        .collect();
    let writes = pods.len() * 2;
    eprintln!(
        "bench: bare client: {} pod creates and {} label patches ...",
        pods.len(),
        pods.len()
    );
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let started = Instant::now();
    let results: Vec<Result<()>> = futures::stream::iter(pods.iter().enumerate())
        .map(|(i, (node, pod))| {
            let (pod_api, nodes) = (pod_api.clone(), nodes.clone());
            async move {
                pod_api.create(&PostParams::default(), pod).await?;
                let label = format!("bare.example/{}", i % size.modules);
                nodes
                    .patch(
                        node,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"metadata": {"labels": {label: ""}}})),
                    )
                    .await?;
                Ok(())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let bare = started.elapsed();
    results.into_iter().collect::<Result<Vec<_>>>()?;
    cleanup_bare(&pod_api, &nodes, &specs, size.modules, &cluster).await?;

    // The floor KWOK's pod lifecycle sets: the same pods, each label written once KWOK has run
    // its pod to completion, and the pod deleted then, as any loader must.
    eprintln!("bench: bare client waiting for KWOK to complete each pod ...");
    let floor = floor_with_kwok(&pod_api, &nodes, &pods, size.modules).await?;
    cleanup_bare(&pod_api, &nodes, &specs, size.modules, &cluster).await?;

    // kmm-spoke.
    let health = crate::net::free_port()?;
    let metrics = crate::net::free_port()?;
    let spoke = release_binary("kmm-spoke", "kmm-spoke")?;
    sup.spawn(
        Spawn::new("kmm-spoke", &spoke)
            .args([
                "run",
                "--namespace=kmm-system",
                &format!("--health-probe-bind-address=127.0.0.1:{health}"),
                &format!("--metrics-bind-address=127.0.0.1:{metrics}"),
            ])
            .env("KUBECONFIG", cluster.admin_kubeconfig.display().to_string())
            .env("RUST_LOG", "warn"),
    )?;
    let pid = sup
        .pids()
        .into_iter()
        .find(|(n, _)| n == "kmm-spoke")
        .map(|(_, p)| p)
        .context("kmm-spoke did not start")?;
    cluster
        .wait("kmm-spoke metrics", Duration::from_secs(60), || async move {
            Ok(metric(metrics, "kmm_spoke_modules").await.ok().map(drop))
        })
        .await?;
    let modules: Api<shared_api::module::Module> = Api::namespaced(client.clone(), ns);
    eprintln!(
        "bench: kmm-spoke: {} Modules over {} nodes ...",
        size.modules, size.nodes
    );
    let started = Instant::now();
    for m in 0..size.modules {
        let body = json!({
            "apiVersion": "kmm.sigs.x-k8s.io/v1beta1",
            "kind": "Module",
            "metadata": {"name": module_name(m), "namespace": ns},
            "spec": {
                "selector": {"bench": "true"},
                "moduleLoader": {"container": {
                    "modprobe": {"moduleName": "kmm_ci_a"},
                    "kernelMappings": [{"regexp": "^.+$", "containerImage": "registry.bench.invalid/kmod:${KERNEL_FULL_VERSION}"}]
                }}
            }
        });
        modules
            .patch(
                &module_name(m),
                &PatchParams::apply("bench").force(),
                &Patch::Apply(body),
            )
            .await?;
    }
    let want: Vec<String> = (0..size.modules)
        .map(|m| format!("kmm.node.kubernetes.io/{ns}.{}.ready", module_name(m)))
        .collect();
    let mut last_report = Instant::now();
    loop {
        let list = nodes.list(&ListParams::default().labels("bench=true")).await?;
        let done = list
            .items
            .iter()
            .filter(|n| {
                n.metadata
                    .labels
                    .as_ref()
                    .is_some_and(|l| want.iter().all(|k| l.contains_key(k)))
            })
            .count();
        if done == size.nodes {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "bench: {done}/{} nodes ready after {:.0?}",
                size.nodes,
                started.elapsed()
            );
            last_report = Instant::now();
        }
        ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "not every node was ready after 30 minutes"
        );
        sup.check_alive()?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ours = started.elapsed();
    let by_write = series(metrics, "kmm_spoke_api_writes_total").await?;
    let spoke_writes: f64 = by_write.iter().map(|(_, v)| v).sum();
    let peak = peak_kib(pid);
    println!(
        "nodes {}, kernels {}, modules {}",
        size.nodes,
        KERNELS.len(),
        size.modules
    );
    println!(
        "bare client, {writes} writes (pods + label patches, 16 in flight): {:.2}s",
        bare.as_secs_f64()
    );
    println!(
        "kmm-spoke, until every node carries every ready label:   {:.2}s",
        ours.as_secs_f64()
    );
    println!(
        "bare client waiting for KWOK to run each pod, {} writes (+ deletes): {:.2}s",
        writes,
        floor.as_secs_f64()
    );
    println!(
        "ratio kmm-spoke / bare client: {:.2}",
        ours.as_secs_f64() / bare.as_secs_f64()
    );
    println!(
        "ratio kmm-spoke / bare client waiting for KWOK: {:.2}",
        ours.as_secs_f64() / floor.as_secs_f64()
    );
    println!("kmm-spoke peak memory (VmHWM): {:.1} MiB", peak as f64 / 1024.0);
    println!(
        "kmm-spoke API writes, events included: {spoke_writes} ({:.2} per node and Module)",
        spoke_writes / (size.nodes * size.modules) as f64
    );
    for (labels, v) in &by_write {
        println!(
            "  {labels}: {v} ({:.2} per node and Module)",
            v / (size.nodes * size.modules) as f64
        );
    }
    sup.teardown();
    Ok(())
}

/// Deletes the bare client's pods and labels and waits until the pods are gone.
async fn cleanup_bare(
    pod_api: &Api<Pod>,
    nodes: &Api<Node>,
    specs: &[NodeSpec],
    modules: usize,
    cluster: &KubeCluster,
) -> Result<()> {
    eprintln!("bench: cleaning up the bare client's pods and labels ...");
    pod_api
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await?;
    let unlabel: serde_json::Map<String, serde_json::Value> = (0..modules)
        .map(|m| (format!("bare.example/{m}"), serde_json::Value::Null))
        .collect();
    futures::stream::iter(specs.iter())
        .map(|n| {
            let nodes = nodes.clone();
            let patch = json!({"metadata": {"labels": unlabel.clone()}});
            async move {
                nodes
                    .patch(&n.name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                    .map(drop)
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    cluster
        .wait("bare pods gone", Duration::from_secs(300), || {
            let pod_api = pod_api.clone();
            async move {
                Ok(pod_api
                    .list(&ListParams::default())
                    .await?
                    .items
                    .is_empty()
                    .then_some(()))
            }
        })
        .await?;

    Ok(())
}

/// Creates `pods` (16 in flight) and, as KWOK completes each, writes its node's label and
/// deletes it (16 in flight): the least any loader waiting for its pods can take here. Returns
/// the time until the last label.
async fn floor_with_kwok(
    pod_api: &Api<Pod>,
    nodes: &Api<Node>,
    pods: &[(String, Pod)],
    modules: usize,
) -> Result<Duration> {
    use kube::runtime::{WatchStreamExt, watcher};
    let by_name: std::collections::HashMap<String, (String, usize)> = pods
        .iter()
        .enumerate()
        .map(|(i, (node, p))| (p.metadata.name.clone().unwrap_or_default(), (node.clone(), i % modules)))
        .collect();
    let started = Instant::now();
    let creates = {
        let (pod_api, pods) = (pod_api.clone(), pods.to_vec());
        tokio::spawn(async move {
            futures::stream::iter(pods)
                .map(|(_, pod)| {
                    let pod_api = pod_api.clone();
                    async move { pod_api.create(&PostParams::default(), &pod).await.map(drop) }
                })
                .buffer_unordered(16)
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<Vec<_>, _>>()
        })
    };
    let mut seen = std::collections::HashSet::new();
    let completions = watcher(pod_api.clone(), watcher::Config::default())
        .applied_objects()
        .filter_map(|p| {
            let done = p
                .ok()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded"));
            async move { done.and_then(|p| p.metadata.name) }
        })
        .filter(move |name| futures::future::ready(seen.insert(name.clone())))
        .map(|name| {
            let (pod_api, nodes) = (pod_api.clone(), nodes.clone());
            let (node, m) = by_name.get(&name).cloned().unwrap_or_default();
            async move {
                let label = format!("bare.example/{m}");
                nodes
                    .patch(
                        &node,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"metadata": {"labels": {label: ""}}})),
                    )
                    .await?;
                pod_api.delete(&name, &DeleteParams::background()).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .take(pods.len())
        .collect::<Vec<_>>();
    let results = tokio::time::timeout(Duration::from_secs(1800), completions)
        .await
        .context("KWOK did not complete every pod within 30 minutes")?;
    let took = started.elapsed();
    creates.await??;
    results.into_iter().collect::<Result<Vec<_>>>()?;
    Ok(took)
}
