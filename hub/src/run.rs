//! `kmm-hub run`: wires the caches, the MCM controller, the image pipeline, leader election, the
//! health and metrics endpoints and graceful shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kmm_hub::controller::{self, Context};
use kmm_hub::metrics::Metrics;
use kmm_hub::pipeline::{Pipeline, Settings};
use kmm_hub::plan::build_pod;
use kmm_runtime::config::Config;
use kmm_runtime::events::{Recorder, Reporter};
use kmm_runtime::leader::{self, Leadership, LeaseConfig};
use kube::Client;
use kube::api::Api;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use shared_api::labels::MCM_NAME_LABEL;
use shared_api::mcm::ManagedClusterModule;
use shared_api::ocm::{ManagedCluster, ManifestWork};
use tokio_util::sync::CancellationToken;

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The configuration file's settings (probes, metrics, webhook).
    pub config: Config,
    /// Serve the admission webhooks.
    pub webhook: bool,
    /// Pipeline settings.
    pub pipeline: Settings,
    /// Leader election lease, if enabled.
    pub lease: Option<LeaseConfig>,
}

/// Runs until `shutdown` is cancelled or leadership is lost.
pub async fn run(client: Client, opts: Options, shutdown: CancellationToken) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    // Ready means "serving": a standby replica is Ready too (upstream's readyz is a ping), so a
    // rolling update of a one-replica Deployment completes while the old pod holds the lease.
    let ready = Arc::new(AtomicBool::new(false));
    let encode = {
        let metrics = metrics.clone();
        Arc::new(move || metrics.encode())
    };
    kmm_runtime::serve::probes_and_metrics(&opts.config, client.clone(), ready.clone(), encode, shutdown.clone())
        .await?;
    // Every replica answers webhooks, leader or not.
    if opts.webhook {
        kmm_runtime::webhook::serve(
            &opts.config.webhook,
            kmm_runtime::admission::hub_routes(),
            shutdown.clone(),
        )
        .await?;
    }

    ready.store(true, Ordering::SeqCst);

    // Without leader election this replica always acts; with it, only within a renewed term.
    let leadership = match &opts.lease {
        Some(_) => Leadership::pending(),
        None => Leadership::always(),
    };
    if let Some(lease) = &opts.lease {
        let api: Api<Lease> = Api::namespaced(client.clone(), &lease.namespace);
        tracing::info!(lease = %lease.name, identity = %lease.identity, "waiting for the leader lease");
        tokio::select! {
            r = leader::acquire(&api, lease, &leadership) => r?,
            _ = shutdown.cancelled() => return Ok(()),
        }
        tracing::info!(lease = %lease.name, "acquired the leader lease");
        let (api, lease, token, term) = (api.clone(), lease.clone(), shutdown.clone(), leadership.clone());
        tokio::spawn(async move {
            let err = leader::hold(&api, &lease, &term).await;
            tracing::error!(error = %err, "stopping");
            token.cancel();
        });
    }

    // One watch per kind; reconciles are triggered from the reflectors' events through unbounded
    // channels, so a busy controller never holds a watch back.
    let (clusters, clusters_w) = reflector::store::<ManagedCluster>();
    let (works, works_w) = reflector::store::<ManifestWork>();
    let (pods, pods_w) = reflector::store::<Pod>();
    let mcm_controller = Controller::new(
        Api::<ManagedClusterModule>::all(client.clone()),
        watcher::Config::default(),
    )
    .with_config(kube::runtime::controller::Config::default().debounce(Duration::from_millis(300)));
    let mcms = mcm_controller.store();
    let (to_mcms, mcm_triggers) = tokio::sync::mpsc::unbounded_channel::<ObjectRef<ManagedClusterModule>>();

    let drivers = {
        let (client, mcms) = (client.clone(), mcms.clone());
        let (clusters_to_mcms, works_to_mcms) = (to_mcms.clone(), to_mcms.clone());
        let namespace = opts.pipeline.namespace.clone();
        async move {
            let cluster_events = reflector::reflector(
                clusters_w,
                watcher(Api::<ManagedCluster>::all(client.clone()), watcher::Config::default()),
            )
            .default_backoff()
            .touched_objects()
            .for_each(move |c| {
                match c {
                    // A cluster's labels or kernels can change what every MCM selects and needs.
                    Ok(_) => {
                        for m in mcms.state() {
                            let _ = clusters_to_mcms.send(ObjectRef::from_obj(m.as_ref()));
                        }
                    }
                    Err(e) => watch_failed("ManagedCluster", &e),
                }
                async {}
            });
            let work_events = reflector::reflector(
                works_w,
                watcher(
                    Api::<ManifestWork>::all(client.clone()),
                    watcher::Config::default().labels(MCM_NAME_LABEL),
                ),
            )
            .default_backoff()
            .touched_objects()
            .for_each(move |w| {
                match w {
                    Ok(w) => {
                        if let Some(owner) = controller::owner_of(&w) {
                            let _ = works_to_mcms.send(owner);
                        }
                    }
                    Err(e) => watch_failed("ManifestWork", &e),
                }
                async {}
            });
            // The pipeline polls this cache while it waits for build pods.
            let pod_events = reflector::reflector(
                pods_w,
                watcher(
                    Api::<Pod>::namespaced(client.clone(), &namespace),
                    watcher::Config::default().labels(&format!("app.kubernetes.io/name={}", build_pod::APP)),
                ),
            )
            .default_backoff()
            .for_each(|e| {
                if let Err(e) = e {
                    watch_failed("build Pod", &e);
                }
                async {}
            });
            futures::future::join3(cluster_events, work_events, pod_events).await
        }
    };

    let reporter = Reporter {
        controller: "kmm-hub".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let recorder = Recorder::new(client.clone(), reporter);
    let requeue = opts.pipeline.resolve_interval.unwrap_or(Duration::from_secs(600));
    let pipeline = Pipeline::new(
        opts.pipeline.clone(),
        client.clone(),
        pods.clone(),
        mcms.clone(),
        recorder.clone(),
        metrics.clone(),
        to_mcms.clone(),
    );
    let ctx = Arc::new(Context {
        client: client.clone(),
        leadership: leadership.clone(),
        clusters: clusters.clone(),
        works: works.clone(),
        pipeline: pipeline.clone(),
        metrics: metrics.clone(),
        recorder,
        requeue,
        seen: Default::default(),
    });
    let mcm_controller = mcm_controller
        .reconcile_on(tokio_stream::wrappers::UnboundedReceiverStream::new(mcm_triggers))
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(controller::reconcile, controller::error_policy, ctx.clone())
        .for_each(|_| async {});
    drop(to_mcms);
    // No reconcile before every cache it reads has its initial list: a reconcile that saw our
    // ManifestWorks but not yet the ManagedClusters would plan over no cluster and delete every
    // ManifestWork. The MCMs' own store is the controller's, which fills before it reconciles.
    let mcm_controller = {
        let (clusters, works, pods, token) = (clusters.clone(), works.clone(), pods.clone(), shutdown.clone());
        async move {
            let synced = futures::future::join3(
                clusters.wait_until_ready(),
                works.wait_until_ready(),
                pods.wait_until_ready(),
            );
            tokio::select! {
                _ = synced => tracing::info!("caches synced; reconciling"),
                _ = token.cancelled() => return,
            }
            mcm_controller.await
        }
    };
    let gauges = {
        let (mcms, metrics, token, pipeline) = (mcms.clone(), metrics.clone(), shutdown.clone(), pipeline.clone());
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            while !token.is_cancelled() {
                tokio::select! { _ = tick.tick() => {}, _ = token.cancelled() => break }
                let all = mcms.state();
                metrics.mcms.set(all.len() as i64);
                // MCMs that are gone (deleted before a reconcile saw them go) request nothing.
                pipeline.retain_requesters(|name| mcms.get(&ObjectRef::new(name)).is_some());
                let targeted: i32 = all
                    .iter()
                    .filter_map(|m| m.status.as_ref())
                    .map(|s| s.clusters.len() as i32)
                    .sum();
                metrics.clusters_targeted.set(targeted.into());
                for (state, n) in pipeline.count_states() {
                    metrics.set_images(state.as_str(), n);
                }
            }
        }
    };

    let drivers = tokio::spawn(drivers);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(mcm_controller);
    tasks.spawn(gauges);
    tokio::select! {
        _ = shutdown.cancelled() => {}
        r = drivers => tracing::warn!(result = ?r.err(), "watch streams ended"),
    }
    while tasks.join_next().await.is_some() {}
    tracing::info!("stopped");
    Ok(())
}

/// A watch error (refused, unreachable): said in the log; the watch retries with backoff, and
/// the controller does not reconcile before its caches have their first list.
fn watch_failed(kind: &str, e: &watcher::Error) {
    tracing::warn!(error = %e, "{kind} watch failed; retrying with backoff");
}
