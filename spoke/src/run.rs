//! `kmm-spoke run`: wires the shared caches, the controllers, leader election, the health and
//! metrics endpoints, the admission webhooks and graceful shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kmm_runtime::config::Config;
use kmm_runtime::events::{Recorder, Reporter};
use kmm_runtime::leader::{self, Leadership, LeaseConfig};
use kmm_spoke::controller::{Context, Error, claim, module, node};
use kmm_spoke::metrics::Metrics;
use kmm_spoke::plan::device_plugin;
use kmm_spoke::plan::module_plan::SpokeContext;
use kmm_spoke::plan::selection::{NodeView, node_change_concerns};
use kmm_spoke::plan::worker_pod::{self, WorkerSettings};
use kmm_spoke::trim;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use shared_api::module::Module;
use shared_api::nmc::NodeModulesConfig;
use shared_api::ocm::{ClusterClaim, KERNEL_VERSIONS_CLAIM};
use tokio_util::sync::CancellationToken;

/// How long a node pass waits for more changes of the same node.
const NODE_DEBOUNCE: Duration = Duration::from_millis(300);
/// How often the Modules concerned by changed NodeModulesConfigs and Nodes are re-planned.
const MODULE_STATUS_TICK: Duration = Duration::from_secs(1);
/// Node passes running at once.
const NODE_CONCURRENCY: u16 = 32;

/// Everything `run` needs from the command line.
#[derive(Debug, Clone)]
pub struct Options {
    /// Namespace the spoke runs in.
    pub namespace: String,
    /// Worker pod settings.
    pub worker: WorkerSettings,
    /// ServiceAccount of worker pods for Modules in `namespace`.
    pub worker_service_account: String,
    /// ServiceAccount of device plugin pods for Modules in `namespace`.
    pub device_plugin_service_account: String,
    /// Publish the kernel-versions ClusterClaim.
    pub managed: bool,
    /// Leader election lease, if enabled.
    pub lease: Option<LeaseConfig>,
    /// Serve the admission webhooks (as `config.webhook` says).
    pub webhook: bool,
    /// Make the webhook certificate in this Secret instead of expecting one in webhook.certDir.
    pub self_signed: Option<kmm_runtime::webhook_certs::SelfSigned>,
    /// Probes, metrics and webhook settings.
    pub config: Config,
}

fn error_policy<K>(obj: Arc<K>, err: &Error, _ctx: Arc<Context>) -> Action
where
    K: ResourceExt,
{
    tracing::warn!(object = %obj.name_any(), error = %err, "reconcile failed; retrying in 15s");
    Action::requeue(Duration::from_secs(15))
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
        if let Some(s) = &opts.self_signed {
            kmm_runtime::webhook_certs::keep(
                client.clone(),
                s.clone(),
                opts.config.webhook.cert_dir.clone(),
                shutdown.clone(),
            )
            .await?;
        }
        kmm_runtime::webhook::serve(
            &opts.config.webhook,
            kmm_runtime::admission::spoke_routes(client.clone()),
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

    // One watch per kind. Each reflector updates its cache before it yields an event, and the
    // controllers are triggered from those events, so a reconcile always sees at least the state
    // that triggered it. (kube-runtime's shared streams are avoided: a subscriber stalls for good
    // when the object it was told about is deleted before it reads it.) Triggers go through
    // unbounded channels so a busy controller never holds a watch back.
    let worker_selector = worker_pod::SELECTOR.to_owned();
    let plugin_selector = format!("app.kubernetes.io/name={}", device_plugin::APP);
    // DaemonSets by upstream's role label, which ours carry too: upstream KMM's device plugin
    // DaemonSets are then seen, and taken over (see reconcile_device_plugin).
    let daemonset_selector = format!("{}={}", device_plugin::ROLE_LABEL, device_plugin::ROLE_DEVICE_PLUGIN);
    let (nodes, nodes_w) = reflector::store::<Node>();
    let (nmcs, nmcs_w) = reflector::store::<NodeModulesConfig>();
    let (worker_pods, worker_w) = reflector::store::<Pod>();
    let (plugin_pods, plugin_w) = reflector::store::<Pod>();
    let (plugin_daemonsets, plugin_ds_w) = reflector::store::<DaemonSet>();
    // Every cache keeps only what the controllers read (see `trim`).
    let (modules, modules_w) = reflector::store::<Module>();
    let module_controller = Controller::for_stream(
        reflector::reflector(
            modules_w,
            watcher(Api::<Module>::all(client.clone()), watcher::Config::default()).modify(trim::managed_fields),
        )
        .default_backoff()
        .touched_objects(),
        modules.clone(),
    );
    let (to_modules, module_triggers) = tokio::sync::mpsc::unbounded_channel::<ObjectRef<Module>>();
    let (to_nmcs, nmc_triggers) = tokio::sync::mpsc::unbounded_channel::<ObjectRef<NodeModulesConfig>>();

    // A NodeModulesConfig or Node change re-plans the Modules it concerns at most once per tick
    // each: while a Module loads on hundreds of nodes, its status is written once a tick rather
    // than once per node. (Its own spec changes reach it at once, through its watch.)
    let touched_modules: Arc<std::sync::Mutex<std::collections::HashSet<ObjectRef<Module>>>> = Default::default();
    let module_ticks = {
        let (touched, tx, token) = (touched_modules.clone(), to_modules.clone(), shutdown.clone());
        async move {
            let mut tick = tokio::time::interval(MODULE_STATUS_TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! { _ = tick.tick() => {}, _ = token.cancelled() => break }
                let due = std::mem::take(&mut *touched.lock().unwrap_or_else(|p| p.into_inner()));
                for m in due {
                    let _ = tx.send(m);
                }
            }
        }
    };
    let drivers = {
        let (client, modules) = (client.clone(), modules.clone());
        let (ws, ps, ds) = (
            worker_selector.clone(),
            plugin_selector.clone(),
            daemonset_selector.clone(),
        );
        let (nodes_to_modules, nodes_to_nmcs) = (touched_modules.clone(), to_nmcs.clone());
        let daemonsets_to_modules = to_modules.clone();
        let (nmcs_to_modules, nmcs_to_self, workers_to_nmcs, plugins_to_nmcs) = (
            touched_modules.clone(),
            to_nmcs.clone(),
            to_nmcs.clone(),
            to_nmcs.clone(),
        );
        async move {
            let node_events = reflector::reflector(
                nodes_w,
                watcher(Api::<Node>::all(client.clone()), watcher::Config::default()).modify(trim::node),
            )
            .default_backoff()
            .touched_objects()
            .for_each({
                // The last view of each node: only changes to what selection and the node plan
                // read go further, and only to the Modules that select the node (before or now).
                let mut seen: std::collections::HashMap<String, NodeView> = Default::default();
                move |node| {
                    if let Some(view) = node.ok().as_ref().and_then(NodeView::from_node) {
                        let modules = modules.state();
                        let concerned = node_change_concerns(
                            seen.get(&view.name),
                            &view,
                            modules.iter().map(|m| (m, &m.spec.selector)),
                        );
                        if let Some(concerned) = concerned {
                            let mut touched = nodes_to_modules.lock().unwrap_or_else(|p| p.into_inner());
                            touched.extend(concerned.iter().map(|m| ObjectRef::from_obj(m.as_ref())));
                            let _ = nodes_to_nmcs.send(ObjectRef::new(&view.name));
                            seen.insert(view.name.clone(), view);
                        }
                    }
                    async {}
                }
            });
            let nmc_events = reflector::reflector(
                nmcs_w,
                watcher(
                    Api::<NodeModulesConfig>::all(client.clone()),
                    watcher::Config::default(),
                )
                .modify(trim::managed_fields),
            )
            .default_backoff()
            .touched_objects()
            .for_each(move |nmc| {
                if let Ok(nmc) = nmc {
                    let _ = nmcs_to_self.send(ObjectRef::from_obj(&nmc));
                    let status = nmc
                        .status
                        .iter()
                        .flat_map(|s| s.modules.iter().map(|m| (&m.namespace, &m.name)));
                    let mut touched = nmcs_to_modules.lock().unwrap_or_else(|p| p.into_inner());
                    for (ns, name) in nmc.spec.modules.iter().map(|m| (&m.namespace, &m.name)).chain(status) {
                        touched.insert(ObjectRef::new(name).within(ns));
                    }
                }
                async {}
            });
            let pod_events =
                |w, selector: String, tx: tokio::sync::mpsc::UnboundedSender<ObjectRef<NodeModulesConfig>>| {
                    reflector::reflector(
                        w,
                        watcher(
                            Api::<Pod>::all(client.clone()),
                            watcher::Config::default().labels(&selector),
                        )
                        .modify(trim::pod),
                    )
                    .default_backoff()
                    .touched_objects()
                    .for_each(move |p| {
                        if let Some(node) = p.ok().and_then(|p| p.spec.and_then(|s| s.node_name)) {
                            let _ = tx.send(ObjectRef::new(&node));
                        }
                        async {}
                    })
                };
            // A DaemonSet change re-queues the Module owning it from this reflector, after its
            // cache holds the change (a second watch, as owns() keeps, could trigger a reconcile
            // that still reads the old status here and then never hears of it again).
            let daemonsets = reflector::reflector(
                plugin_ds_w,
                watcher(
                    Api::<DaemonSet>::all(client.clone()),
                    watcher::Config::default().labels(&ds),
                )
                .modify(trim::managed_fields),
            )
            .default_backoff()
            .touched_objects()
            .for_each(move |d| {
                if let Ok(d) = d {
                    let ns = d.namespace().unwrap_or_default();
                    for o in d.owner_references().iter().filter(|o| o.kind == "Module") {
                        let _ = daemonsets_to_modules.send(ObjectRef::new(&o.name).within(&ns));
                    }
                }
                async {}
            });
            futures::future::join5(
                node_events,
                nmc_events,
                pod_events(worker_w, ws, workers_to_nmcs),
                pod_events(plugin_w, ps.clone(), plugins_to_nmcs),
                daemonsets,
            )
            .await
        }
    };
    // The node controller reads the shared NodeModulesConfig cache (no second watch of its
    // own) and is triggered through `to_nmcs`, by its objects' changes among others.
    let node_controller = Controller::for_stream(
        futures::stream::pending::<Result<NodeModulesConfig, watcher::Error>>(),
        nmcs.clone(),
    );

    let reporter = Reporter {
        controller: "kmm".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        leadership: leadership.clone(),
        spoke: SpokeContext {
            operator_namespace: opts.namespace.clone(),
            worker_service_account: opts.worker_service_account.clone(),
        },
        worker: opts.worker.clone(),
        device_plugin_service_account: Some(opts.device_plugin_service_account.clone()),
        nodes: nodes.clone(),
        nmcs: nmcs.clone(),
        modules: modules.clone(),
        labelled_namespaces: Default::default(),
        worker_pods: worker_pods.clone(),
        plugin_pods: plugin_pods.clone(),
        plugin_daemonsets: plugin_daemonsets.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        nmc_specs: kmm_spoke::controller::nmc_spec::SpecWriter::new(
            client.clone(),
            nodes.clone(),
            nmcs.clone(),
            metrics.clone(),
            leadership.clone(),
        ),
        metrics: metrics.clone(),
    });

    let module_controller = module_controller
        .reconcile_on(tokio_stream::wrappers::UnboundedReceiverStream::new(module_triggers))
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(module::reconcile, error_policy, ctx.clone())
        .for_each(|_| async {});
    // A short trailing debounce lets the completions of several worker pods on one node fold
    // into one pass (one label patch, one status write, one event); bounded concurrency keeps
    // the API server's queue short while a whole cluster loads at once.
    let node_controller = node_controller
        .with_config(
            kube::runtime::controller::Config::default()
                .debounce(NODE_DEBOUNCE)
                .concurrency(NODE_CONCURRENCY),
        )
        .reconcile_on(tokio_stream::wrappers::UnboundedReceiverStream::new(nmc_triggers))
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(node::reconcile, error_policy, ctx.clone())
        .for_each(|_| async {});
    drop((to_modules, to_nmcs));

    // No reconcile before every cache the controllers read has its initial list: a Module
    // planned over a node cache that is still empty would withdraw its entry from every node and
    // unload it everywhere. One task waits (a store's wait_until_ready keeps a single waker, so
    // the controllers' own stores are left to the controllers) and tells the others.
    let (synced_tx, synced) = tokio::sync::watch::channel(false);
    let caches = {
        let stores = (
            nodes.clone(),
            nmcs.clone(),
            worker_pods.clone(),
            plugin_pods.clone(),
            plugin_daemonsets.clone(),
        );
        async move {
            let (nodes, nmcs, worker_pods, plugin_pods, daemonsets) = stores;
            let _ = futures::future::join5(
                nodes.wait_until_ready(),
                nmcs.wait_until_ready(),
                worker_pods.wait_until_ready(),
                plugin_pods.wait_until_ready(),
                daemonsets.wait_until_ready(),
            )
            .await;
            tracing::info!("caches synced; reconciling");
            let _ = synced_tx.send(true);
        }
    };
    let after_sync = |task: futures::future::BoxFuture<'static, ()>| {
        let (mut synced, token) = (synced.clone(), shutdown.clone());
        async move {
            tokio::select! {
                r = synced.wait_for(|s| *s) => if r.is_err() { return },
                _ = token.cancelled() => return,
            }
            task.await
        }
    };
    let module_controller = after_sync(Box::pin(module_controller));
    let node_controller = after_sync(Box::pin(node_controller));

    let claims = publish_claims(
        opts.managed,
        client.clone(),
        nodes.clone(),
        synced.clone(),
        leadership.clone(),
        shutdown.clone(),
    );
    let modules_gauge = {
        let (modules, metrics, token) = (modules.clone(), metrics.clone(), shutdown.clone());
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            while !token.is_cancelled() {
                tokio::select! { _ = tick.tick() => {}, _ = token.cancelled() => break }
                metrics.modules.set(modules.state().len() as i64);
            }
        }
    };

    // Watches and controllers run on their own tasks, so both cores serve them.
    let drivers = tokio::spawn(drivers);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(module_controller);
    tasks.spawn(node_controller);
    tasks.spawn(claims);
    tasks.spawn(caches);
    tasks.spawn(modules_gauge);
    tasks.spawn(module_ticks);
    tokio::select! {
        _ = shutdown.cancelled() => {}
        r = drivers => tracing::warn!(result = ?r.err(), "watch streams ended"),
    }
    // Controllers finish their in-flight reconciles, then stop.
    while tasks.join_next().await.is_some() {}
    tracing::info!("stopped");
    Ok(())
}

/// Keeps the kernel-versions ClusterClaim equal to the nodes' kernels. It reads the node cache on
/// a short tick instead of subscribing to node events: a subscriber that waits on the API would
/// hold back the shared node watch for every controller.
async fn publish_claims(
    managed: bool,
    client: Client,
    nodes: Store<Node>,
    synced: tokio::sync::watch::Receiver<bool>,
    leadership: Leadership,
    shutdown: CancellationToken,
) {
    if !managed {
        return;
    }
    // The claim itself is watched: deleted or edited by someone else, it is written again.
    let (published, published_w) = reflector::store::<ClusterClaim>();
    let claim_watch = reflector::reflector(
        published_w,
        watcher(
            Api::<ClusterClaim>::all(client.clone()),
            watcher::Config::default().fields(&format!("metadata.name={KERNEL_VERSIONS_CLAIM}")),
        ),
    )
    .default_backoff()
    .for_each(|_| async {});
    let claim_watch = tokio::spawn(claim_watch);
    let mut last: Option<String> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        // Only the leader writes, and only within its term.
        if !*synced.borrow() || !leadership.is_valid() {
            continue;
        }
        let value = claim::claim_value(&nodes);
        // What the cluster holds now, once the claim cache has its first list; until then what
        // we last wrote.
        let current = if published.wait_until_ready().now_or_never().is_some() {
            published
                .get(&ObjectRef::new(KERNEL_VERSIONS_CLAIM))
                .map(|c| c.spec.value.clone())
        } else {
            last.clone()
        };
        if value.is_empty() || current.as_deref() == Some(value.as_str()) {
            continue;
        }
        if last.as_deref() == Some(value.as_str()) {
            tracing::warn!("the kernel-versions ClusterClaim was deleted or changed by someone else; writing it again");
        }
        match claim::publish(&client, &value).await {
            Ok(()) => {
                tracing::info!(kernels = %value.replace('\n', ","), "published the kernel-versions ClusterClaim");
                last = Some(value);
            }
            Err(e) => tracing::warn!(error = %e, "publishing the kernel-versions ClusterClaim; retrying"),
        }
    }
    claim_watch.abort();
}
