//! `cargo run -p e2e --release -- bench-hub`: 1000 ManagedClusters (objects with kernel claims;
//! no agents) over 4 kernels and 5 ManagedClusterModules on one real hub API server, with a real
//! registry holding the 20 kmod images. Prints, measured in one run on the same server:
//!
//! - the time a bare client takes to create the same 5000 ManifestWorks (rendered exactly as the
//!   hub renders them), 16 requests in flight;
//! - the time `kmm-hub` takes from the MCMs' creation until every ManifestWork is correct (its
//!   content hash equals the one computed here from the MCM, the cluster's kernel and the
//!   registry's digest);
//! - the hub's peak memory (VmHWM) and the writes it sent to the API server.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use futures::StreamExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use oci_client::secrets::RegistryAuth;
use serde_json::json;
use shared_api::mcm::ManagedClusterModule;
use shared_api::ocm::{ManagedCluster, ManifestWork};

use crate::bench::{metric, peak_kib, release_binary};
use crate::bins::Bins;
use crate::cluster::KubeCluster;
use crate::proc::{Spawn, Supervisor};
use crate::registry::{Registry, RegistrySpec};

const KERNELS: [&str; 4] = [
    "6.1.0-28-amd64",
    "6.1.0-31-amd64",
    "5.14.0-427.13.1.el9_4.x86_64",
    "6.12.0-55.el10.x86_64",
];

/// Benchmark size.
pub struct Size {
    /// ManagedClusters.
    pub clusters: usize,
    /// ManagedClusterModules.
    pub mcms: usize,
}

fn cluster_name(i: usize) -> String {
    format!("cluster-{i:04}")
}

fn mcm_body(i: usize, registry: &str) -> serde_json::Value {
    json!({
        "apiVersion": "hub.kmm.sigs.x-k8s.io/v1beta1",
        "kind": "ManagedClusterModule",
        "metadata": {"name": format!("bench-{i}")},
        "spec": {
            "spokeNamespace": "kmm-bench",
            "selector": {"bench": "true"},
            "moduleSpec": {
                "selector": {"kmm": "yes"},
                "moduleLoader": {"container": {
                    "modprobe": {"moduleName": format!("bench_{i}")},
                    "kernelMappings": [{
                        "regexp": "^.+$",
                        "containerImage": format!("{registry}/bench/mod-{i}:${{KERNEL_FULL_VERSION}}"),
                        "registryTLS": {"insecure": true},
                    }],
                }},
            },
        },
    })
}

async fn create_clusters(client: &Client, size: &Size) -> Result<()> {
    let mcs: Api<ManagedCluster> = Api::all(client.clone());
    let results: Vec<Result<()>> = futures::stream::iter(0..size.clusters)
        .map(|i| {
            let (mcs, client) = (mcs.clone(), client.clone());
            async move {
                let name = cluster_name(i);
                let ns: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client);
                ns.create(
                    &PostParams::default(),
                    &serde_json::from_value(json!({"metadata": {"name": name}}))?,
                )
                .await?;
                let mc: ManagedCluster = serde_json::from_value(json!({
                    "apiVersion": "cluster.open-cluster-management.io/v1",
                    "kind": "ManagedCluster",
                    "metadata": {"name": name, "labels": {"bench": "true"}},
                    "spec": {"hubAcceptsClient": true},
                }))?;
                mcs.create(&PostParams::default(), &mc).await?;
                let status = json!({"status": {"clusterClaims": [{
                    "name": shared_api::ocm::KERNEL_VERSIONS_CLAIM,
                    "value": KERNELS[i % KERNELS.len()],
                }]}});
                mcs.patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
                    .await?;
                Ok(())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<_>>>()?;
    Ok(())
}

/// The ManifestWorks the hub must write, rendered here from the MCMs and the digests.
fn expected(
    mcms: &[ManagedClusterModule],
    clusters: &[Arc<ManagedCluster>],
    digests: &[Vec<String>],
) -> Vec<ManifestWork> {
    let mut out = Vec::new();
    for (m, mcm) in mcms.iter().enumerate() {
        let plan = kmm_hub::plan::images::plan(mcm, clusters);
        for c in &plan.clusters {
            let kernel = &c.kernels.as_ref().expect("claimed")[0];
            let k = KERNELS.iter().position(|x| x == kernel).expect("known kernel");
            let Some(kmm_hub::plan::images::KernelResolution::Mapped(ki)) = plan.kernels.get(kernel) else {
                continue;
            };
            let pinned = shared_api::image::ImageRef::parse(&ki.image).pinned(&digests[m][k]);
            let pins = [kmm_hub::plan::render::PinnedKernel {
                kernel: ki,
                pinned: &pinned,
            }];
            out.push(kmm_hub::plan::render::manifest_work(mcm, &c.name, &pins));
        }
    }
    out
}

/// Runs the benchmark and prints the figures.
pub async fn run(size: Size, dir: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let sup = Arc::new(Supervisor::new(dir)?);
    let bins = Bins::locate()?;
    eprintln!("bench: starting a hub control plane and a registry ...");
    let hub = KubeCluster::start(sup.clone(), &bins, "hub", &dir.join("hub")).await?;
    let registry = Registry::start(&sup, &bins, &RegistrySpec::default(), &dir.join("registry")).await?;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    hub.install_crds(&repo.join("manifests/crds")).await?;
    hub.install_crds(&repo.join("e2e/crds/hub")).await?;
    hub.ensure_namespace("kmm-hub").await?;
    let client = hub.client.clone();

    eprintln!(
        "bench: pushing {} images, creating {} ManagedClusters on {} kernels ...",
        size.mcms * KERNELS.len(),
        size.clusters,
        KERNELS.len()
    );
    let mut digests = Vec::new();
    for m in 0..size.mcms {
        let mut per_kernel = Vec::new();
        for k in KERNELS {
            let layer = crate::kmods::single_file_layer(&format!("opt/lib/modules/{k}/bench_{m}.ko"), b"bench")?;
            let image = format!("{}/bench/mod-{m}:{k}", registry.host);
            per_kernel.push(crate::kmods::push(&image, vec![layer], &RegistryAuth::Anonymous).await?);
        }
        digests.push(per_kernel);
    }
    create_clusters(&client, &size).await?;
    let mcs: Api<ManagedCluster> = Api::all(client.clone());
    let clusters: Vec<Arc<ManagedCluster>> = mcs
        .list(&ListParams::default())
        .await?
        .into_iter()
        .map(Arc::new)
        .collect();

    // The bare client: the same ManifestWorks (under other names), nothing else.
    let template: Vec<ManagedClusterModule> = (0..size.mcms)
        .map(|i| {
            let mut m: ManagedClusterModule = serde_json::from_value(mcm_body(i, &registry.host))?;
            m.metadata.uid = Some(format!("bare-{i}"));
            Ok(m)
        })
        .collect::<Result<_>>()?;
    let bare_works: Vec<ManifestWork> = expected(&template, &clusters, &digests)
        .into_iter()
        .map(|mut w| {
            w.metadata.name = Some(format!("bare-{}", w.name_any()));
            w.metadata.owner_references = None;
            w.metadata.labels = Some([("bench".to_string(), "bare".to_string())].into());
            w
        })
        .collect();
    let n_works = bare_works.len();
    eprintln!("bench: bare client: {n_works} ManifestWork creates ...");
    let started = Instant::now();
    let results: Vec<Result<()>> = futures::stream::iter(bare_works)
        .map(|w| {
            let api: Api<ManifestWork> = Api::namespaced(client.clone(), &w.namespace().unwrap_or_default());
            async move {
                api.create(&PostParams::default(), &w).await?;
                Ok(())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let bare = started.elapsed();
    results.into_iter().collect::<Result<Vec<_>>>()?;
    eprintln!("bench: deleting the bare client's ManifestWorks ...");
    futures::stream::iter(0..size.clusters)
        .map(|i| {
            let api: Api<ManifestWork> = Api::namespaced(client.clone(), &cluster_name(i));
            async move {
                api.delete_collection(&DeleteParams::default(), &ListParams::default().labels("bench=bare"))
                    .await
                    .map(drop)
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;

    // kmm-hub.
    let health = crate::net::free_port()?;
    let metrics = crate::net::free_port()?;
    sup.spawn(
        Spawn::new("kmm-hub", &release_binary("kmm-hub", "kmm-hub")?)
            .args([
                "run",
                "--namespace=kmm-hub",
                "--webhook=off",
                "--leader-elect=false",
                &format!("--health-probe-bind-address=127.0.0.1:{health}"),
                &format!("--metrics-bind-address=127.0.0.1:{metrics}"),
            ])
            .env("KUBECONFIG", hub.admin_kubeconfig.display().to_string())
            .env("RUST_LOG", "warn"),
    )?;
    let pid = sup
        .pids()
        .into_iter()
        .find(|(n, _)| n == "kmm-hub")
        .map(|(_, p)| p)
        .context("kmm-hub did not start")?;
    hub.wait("kmm-hub metrics", Duration::from_secs(60), || async move {
        Ok(metric(metrics, "kmm_hub_api_writes_total").await.ok().map(drop))
    })
    .await?;

    eprintln!("bench: kmm-hub: {} MCMs over {} clusters ...", size.mcms, size.clusters);
    let mcm_api: Api<ManagedClusterModule> = Api::all(client.clone());
    let started = Instant::now();
    for i in 0..size.mcms {
        mcm_api
            .patch(
                &format!("bench-{i}"),
                &PatchParams::apply("bench").force(),
                &Patch::Apply(mcm_body(i, &registry.host)),
            )
            .await?;
    }
    let created: Vec<ManagedClusterModule> = mcm_api.list(&ListParams::default()).await?.items;
    let want: BTreeSet<(String, String, String)> = expected(&created, &clusters, &digests)
        .iter()
        .map(|w| {
            (
                w.namespace().unwrap_or_default(),
                w.name_any(),
                kmm_hub::plan::render::recorded_hash(w).unwrap_or_default().to_owned(),
            )
        })
        .collect();
    ensure!(
        want.len() == n_works,
        "expected {n_works} ManifestWorks, computed {}",
        want.len()
    );
    let works: Api<ManifestWork> = Api::all(client.clone());
    let mut last_report = Instant::now();
    loop {
        let list = works
            .list(&ListParams::default().labels(shared_api::labels::MCM_NAME_LABEL))
            .await?;
        let correct = list
            .items
            .iter()
            .filter(|w| {
                want.contains(&(
                    w.namespace().unwrap_or_default(),
                    w.name_any(),
                    kmm_hub::plan::render::recorded_hash(w).unwrap_or_default().to_owned(),
                ))
            })
            .count();
        if correct == want.len() {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "bench: {correct}/{} ManifestWorks correct after {:.0?}",
                want.len(),
                started.elapsed()
            );
            last_report = Instant::now();
        }
        ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "not every ManifestWork was correct after 30 minutes"
        );
        sup.check_alive()?;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let ours = started.elapsed();
    let writes = metric(metrics, "kmm_hub_api_writes_total").await?;
    let lookups = metric(metrics, "kmm_hub_registry_request_duration_seconds_count").await?;
    let peak = peak_kib(pid);
    println!(
        "clusters {}, kernels {}, MCMs {}, ManifestWorks {n_works}",
        size.clusters,
        KERNELS.len(),
        size.mcms
    );
    println!(
        "bare client, {n_works} ManifestWork creates (16 in flight): {:.2}s",
        bare.as_secs_f64()
    );
    println!(
        "kmm-hub, until every ManifestWork is correct:            {:.2}s",
        ours.as_secs_f64()
    );
    println!(
        "ratio kmm-hub / bare client: {:.2}",
        ours.as_secs_f64() / bare.as_secs_f64()
    );
    println!("kmm-hub peak memory (VmHWM): {:.1} MiB", peak as f64 / 1024.0);
    println!(
        "kmm-hub API writes: {writes} ({:.2} per ManifestWork, status patches included); registry lookups (first outcome series): {lookups}",
        writes / n_works as f64
    );
    sup.teardown();
    Ok(())
}
