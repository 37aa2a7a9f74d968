//! A hub and N spokes joined by OCM, plus an optional registry.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow};
use kube::Client;
use tokio::task::JoinSet;

use crate::bins::Bins;
use crate::cluster::KubeCluster;
use crate::kwok::NodeSpec;
use crate::ocm;
use crate::proc::Supervisor;
use crate::registry::{Registry, RegistrySpec};

/// What to start.
#[derive(Clone, Debug)]
pub struct FleetSpec {
    /// Names the per-run directory (logs, kubeconfigs, certificates).
    pub name: String,
    /// Where per-run directories go; default `$KMM_E2E_DIR`, else
    /// `<tmp>/kmm-e2e`.
    pub base_dir: Option<PathBuf>,
    /// Fake nodes on the hub (where build pods run).
    pub hub_nodes: Vec<NodeSpec>,
    pub spokes: Vec<SpokeSpec>,
    pub registry: Option<RegistrySpec>,
}

#[derive(Clone, Debug)]
pub struct SpokeSpec {
    /// The ManagedCluster name.
    pub name: String,
    pub nodes: Vec<NodeSpec>,
}

impl SpokeSpec {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            nodes: Vec::new(),
        }
    }

    pub fn node(mut self, n: NodeSpec) -> Self {
        self.nodes.push(n);
        self
    }
}

impl FleetSpec {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            base_dir: None,
            hub_nodes: Vec::new(),
            spokes: Vec::new(),
            registry: None,
        }
    }

    pub fn base_dir(mut self, d: impl Into<PathBuf>) -> Self {
        self.base_dir = Some(d.into());
        self
    }

    pub fn hub_node(mut self, n: NodeSpec) -> Self {
        self.hub_nodes.push(n);
        self
    }

    pub fn spoke(mut self, s: SpokeSpec) -> Self {
        self.spokes.push(s);
        self
    }

    pub fn registry(mut self, r: RegistrySpec) -> Self {
        self.registry = Some(r);
        self
    }

    /// The fleet of `cargo run -p e2e -- up`: a hub with one build node, and
    /// two spokes whose nodes run different kernels.
    pub fn demo() -> Self {
        Self::new("demo")
            .hub_node(NodeSpec::new("hub-builder", "5.14.0-570.el9_6.x86_64"))
            .spoke(
                SpokeSpec::new("spoke-a")
                    .node(
                        NodeSpec::new("spoke-a-worker-0", "5.14.0-427.13.1.el9_4.x86_64")
                            .label("node-role.kubernetes.io/worker", ""),
                    )
                    .node(NodeSpec::new("spoke-a-worker-1", "5.14.0-427.13.1.el9_4.x86_64")),
            )
            .spoke(
                SpokeSpec::new("spoke-b").node(
                    NodeSpec::new("spoke-b-worker-0", "6.12.0-55.el10.x86_64")
                        .label("example.com/gpu", "true")
                        .taint("example.com/dedicated", Some("gpu"), "NoSchedule"),
                ),
            )
            .registry(RegistrySpec::default())
    }
}

pub struct Spoke {
    pub cluster: KubeCluster,
    /// Where the registration agent keeps the hub kubeconfig it was issued
    /// (`kubeconfig`, `tls.crt`, `tls.key`), also used by the work agent.
    pub hub_kubeconfig_dir: PathBuf,
}

impl std::ops::Deref for Spoke {
    type Target = KubeCluster;
    fn deref(&self) -> &KubeCluster {
        &self.cluster
    }
}

pub struct Fleet {
    pub dir: PathBuf,
    pub bins: Bins,
    pub hub: KubeCluster,
    pub spokes: Vec<Spoke>,
    pub registry: Option<Registry>,
    /// Wall time of [`Fleet::start`].
    pub started_in: Duration,
    sup: Arc<Supervisor>,
}

impl Fleet {
    /// Start everything and wait until every spoke is joined and available.
    /// On error, whatever was started is stopped again.
    pub async fn start(spec: FleetSpec) -> Result<Self> {
        let t0 = Instant::now();
        let bins = Bins::locate()?;
        let base = spec
            .base_dir
            .clone()
            .or_else(|| std::env::var_os("KMM_E2E_DIR").map(PathBuf::from))
            .unwrap_or_else(|| std::env::temp_dir().join("kmm-e2e"));
        prune_old_runs(&base, Duration::from_secs(24 * 3600));
        let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
        let dir = base.join(format!("{}-{stamp}-{}", spec.name, std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let sup = Arc::new(Supervisor::new(&dir)?);
        let res = Self::start_in(&spec, &bins, &dir, sup.clone()).await;
        match res {
            Ok((hub, spokes, registry)) => Ok(Self {
                dir,
                bins,
                hub,
                spokes,
                registry,
                started_in: t0.elapsed(),
                sup,
            }),
            Err(e) => {
                sup.teardown();
                cleanup_data(&dir);
                Err(e.context(format!(
                    "starting fleet {} (logs in {})",
                    spec.name,
                    dir.join("logs").display()
                )))
            }
        }
    }

    async fn start_in(
        spec: &FleetSpec,
        bins: &Bins,
        dir: &Path,
        sup: Arc<Supervisor>,
    ) -> Result<(KubeCluster, Vec<Spoke>, Option<Registry>)> {
        // Control planes, all at once.
        let mut set = JoinSet::new();
        let mut names = vec![("hub".to_string(), spec.hub_nodes.clone())];
        names.extend(spec.spokes.iter().map(|s| (s.name.clone(), s.nodes.clone())));
        for (i, (name, nodes)) in names.into_iter().enumerate() {
            let sup = sup.clone();
            let bins = bins.clone();
            let cdir = dir.join(&name);
            set.spawn(async move {
                let c = KubeCluster::start(sup, &bins, &name, &cdir).await?;
                c.add_nodes(&nodes).await?;
                anyhow::Ok((i, c))
            });
        }
        let mut clusters: Vec<Option<KubeCluster>> = (0..=spec.spokes.len()).map(|_| None).collect();
        while let Some(r) = set.join_next().await {
            let (i, c) = r??;
            clusters[i] = Some(c);
        }
        let mut clusters = clusters.into_iter().map(|c| c.expect("every cluster started"));
        let hub = clusters.next().ok_or_else(|| anyhow!("no hub"))?;
        let spokes: Vec<KubeCluster> = clusters.collect();

        let registry = match &spec.registry {
            Some(r) => Some(Registry::start(&sup, bins, r, &dir.join("registry")).await?),
            None => None,
        };

        ocm::setup_hub(&sup, bins, &hub).await?;
        // Agents of all spokes, concurrently.
        let mut dirs = Vec::new();
        for s in &spokes {
            dirs.push(ocm::start_registration_agent(&sup, bins, &hub, s).await?);
        }
        let joins = spokes
            .iter()
            .zip(&dirs)
            .map(|(s, d)| ocm::accept_and_start_work_agent(&sup, bins, &hub, s, d));
        for r in join_all(joins).await {
            r?;
        }
        let spokes = spokes
            .into_iter()
            .zip(dirs)
            .map(|(cluster, hub_kubeconfig_dir)| Spoke {
                cluster,
                hub_kubeconfig_dir,
            })
            .collect();
        Ok((hub, spokes, registry))
    }

    pub fn spoke(&self, name: &str) -> &Spoke {
        self.spokes
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no spoke named {name}"))
    }

    pub fn hub_client(&self) -> Client {
        self.hub.client.clone()
    }

    pub fn log_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// Fails if any fleet process has died (with the tail of its log).
    pub fn check_alive(&self) -> Result<()> {
        self.sup.check_alive()
    }

    /// (process name, RSS in KiB) of every running fleet process.
    pub fn rss_kib(&self) -> Vec<(String, u64)> {
        self.sup.rss_kib()
    }

    /// (process name, pid) of every running fleet process.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.sup.pids()
    }

    /// Run one more process as part of the fleet (e.g. `kmm-hub` or
    /// `kmm-spoke` under test): own process group, log in
    /// [`Fleet::log_dir`], killed on teardown. Returns the log path.
    pub fn spawn(&self, s: crate::proc::Spawn<'_>) -> Result<PathBuf> {
        self.sup.spawn(s)
    }

    /// The supervisor owning every fleet process.
    pub fn supervisor(&self) -> &Arc<Supervisor> {
        &self.sup
    }

    /// Stop one process by its name (e.g. `spoke-a-ocm-work-agent`).
    pub fn stop_process(&self, name: &str) -> Result<()> {
        self.sup.stop(name, Duration::from_secs(3))
    }

    /// Kill one process by its name with SIGKILL, without a graceful shutdown.
    pub fn kill_process(&self, name: &str) -> Result<()> {
        self.sup.kill(name)
    }

    /// Stop every process and remove the etcd data (logs are kept).
    pub fn teardown(&self) {
        self.sup.teardown();
        cleanup_data(&self.dir);
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Remove run directories (logs of earlier fleets) older than `age`.
fn prune_old_runs(base: &Path, age: Duration) {
    let Ok(rd) = std::fs::read_dir(base) else {
        return;
    };
    for e in rd.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|d| d > age);
        if old && e.path().join("pgids").is_file() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Remove bulky state (etcd WAL preallocation is 64 MiB per cluster), keep logs.
fn cleanup_data(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let etcd = e.path().join("etcd");
            if etcd.is_dir() {
                let _ = std::fs::remove_dir_all(etcd);
            }
        }
    }
    let _ = std::fs::remove_dir_all(dir.join("registry").join("data"));
}

/// Await futures concurrently on the current task (no extra crate).
async fn join_all<F: std::future::Future>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let futs: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    let mut futs: Vec<Option<std::pin::Pin<Box<F>>>> = futs.into_iter().map(Some).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, slot) in futs.iter_mut().enumerate() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        out[i] = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|o| o.expect("completed")).collect()
}
