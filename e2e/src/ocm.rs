//! Open Cluster Management: the hub's registration controller, each spoke's
//! registration and work agents, and the hub-side acceptance of a spoke
//! (what `clusteradm accept` does: approve its CSR, set `hubAcceptsClient`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::certificates::v1::{CertificateSigningRequest, CertificateSigningRequestCondition};
use kube::Client;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

use crate::bins::Bins;
use crate::cluster::{KubeCluster, MANAGER};
use crate::net::free_port;
use crate::proc::{Spawn, Supervisor};

/// Namespace of the hub's OCM controllers.
pub const HUB_NAMESPACE: &str = "open-cluster-management-hub";
/// Namespace of the klusterlet agents on a spoke.
pub const AGENT_NAMESPACE: &str = "open-cluster-management-agent";
/// The Secret (in [`AGENT_NAMESPACE`]) where the registration agent keeps its hub kubeconfig.
pub const HUB_KUBECONFIG_SECRET: &str = "hub-kubeconfig-secret";
/// Group of every bootstrap identity (bound to `open-cluster-management:bootstrap`).
pub const BOOTSTRAP_GROUP: &str = "system:bootstrappers:managedcluster";

pub fn crds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("crds")
}

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

pub fn managed_cluster_resource() -> ApiResource {
    resource(
        "cluster.open-cluster-management.io",
        "v1",
        "ManagedCluster",
        "managedclusters",
    )
}

pub fn manifest_work_resource() -> ApiResource {
    resource("work.open-cluster-management.io", "v1", "ManifestWork", "manifestworks")
}

pub fn cluster_claim_resource() -> ApiResource {
    resource(
        "cluster.open-cluster-management.io",
        "v1alpha1",
        "ClusterClaim",
        "clusterclaims",
    )
}

/// ManagedClusters (hub, cluster-scoped).
pub fn managed_clusters(hub: &Client) -> Api<DynamicObject> {
    Api::all_with(hub.clone(), &managed_cluster_resource())
}

/// ManifestWorks in a cluster namespace (hub).
pub fn manifest_works(hub: &Client, cluster: &str) -> Api<DynamicObject> {
    Api::namespaced_with(hub.clone(), cluster, &manifest_work_resource())
}

/// ClusterClaims (spoke, cluster-scoped).
pub fn cluster_claims(spoke: &Client) -> Api<DynamicObject> {
    Api::all_with(spoke.clone(), &cluster_claim_resource())
}

/// True if `obj.status.conditions` has `type` with status `True`.
pub fn condition_true(obj: &Value, type_: &str) -> bool {
    obj["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == type_ && c["status"] == "True"))
}

/// Install the hub side: CRDs, bootstrap RBAC, registration controller.
pub(crate) async fn setup_hub(sup: &Supervisor, bins: &Bins, hub: &KubeCluster) -> Result<()> {
    hub.install_crds(&crds_dir().join("hub")).await?;
    hub.ensure_namespace(HUB_NAMESPACE).await?;
    let rbac = [
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "open-cluster-management:bootstrap"},
            "rules": [
                {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]},
                {"apiGroups": ["certificates.k8s.io"], "resources": ["certificatesigningrequests"],
                 "verbs": ["create", "get", "list", "watch"]},
                {"apiGroups": ["cluster.open-cluster-management.io"], "resources": ["managedclusters"],
                 "verbs": ["get", "create", "list", "watch"]},
                {"apiGroups": ["cluster.open-cluster-management.io"], "resources": ["managedclustersets/join"],
                 "verbs": ["create"]},
            ],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "open-cluster-management:bootstrap:managedcluster"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "open-cluster-management:bootstrap"},
            "subjects": [{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": BOOTSTRAP_GROUP}],
        }),
    ];
    for obj in rbac {
        apply(&hub.client, obj).await?;
    }
    let listen = free_port()?;
    let bin = bins.path("registration");
    sup.spawn(Spawn::new("hub-ocm-registration-controller", &bin).args([
        "controller".to_string(),
        format!("--kubeconfig={}", hub.admin_kubeconfig.display()),
        format!("--namespace={HUB_NAMESPACE}"),
        format!("--listen=127.0.0.1:{listen}"),
        "--disable-leader-election".into(),
    ]))?;
    Ok(())
}

/// Start a spoke's registration agent (bootstrap identity on the hub).
/// Returns the directory where the agent writes its hub kubeconfig.
pub(crate) async fn start_registration_agent(
    sup: &Supervisor,
    bins: &Bins,
    hub: &KubeCluster,
    spoke: &KubeCluster,
) -> Result<PathBuf> {
    spoke.install_crds(&crds_dir().join("spoke")).await?;
    spoke.ensure_namespace(AGENT_NAMESPACE).await?;
    let name = &spoke.name;
    let ocm_dir = spoke.dir.join("ocm");
    let hub_kubeconfig_dir = ocm_dir.join("hub-kubeconfig");
    std::fs::create_dir_all(&hub_kubeconfig_dir)?;
    // A bootstrap identity of the bootstrap group, as `clusteradm get token` would hand out.
    let bootstrap = hub.kubeconfig_for(
        &format!("system:bootstrap:{name}"),
        &[BOOTSTRAP_GROUP],
        &format!("bootstrap-{name}.kubeconfig"),
    )?;
    let bootstrap_copy = ocm_dir.join("bootstrap.kubeconfig");
    std::fs::copy(&bootstrap, &bootstrap_copy)?;
    let listen = free_port()?;
    let bin = bins.path("registration");
    sup.spawn(Spawn::new(&format!("{name}-ocm-registration-agent"), &bin).args([
        "agent".to_string(),
        format!("--cluster-name={name}"),
        format!("--bootstrap-kubeconfig={}", bootstrap_copy.display()),
        format!("--hub-kubeconfig-secret={HUB_KUBECONFIG_SECRET}"),
        format!("--hub-kubeconfig-dir={}", hub_kubeconfig_dir.display()),
        format!("--spoke-external-server-urls={}", spoke.server),
        format!("--kubeconfig={}", spoke.admin_kubeconfig.display()),
        format!("--namespace={AGENT_NAMESPACE}"),
        format!("--listen=127.0.0.1:{listen}"),
        "--disable-leader-election".into(),
        "--cluster-healthcheck-period=10s".into(),
    ]))?;
    Ok(hub_kubeconfig_dir)
}

/// Accept a spoke on the hub as `clusteradm accept` does, wait until the
/// agent holds a signed hub kubeconfig, start the work agent, and wait
/// until the ManagedCluster is joined and available.
pub(crate) async fn accept_and_start_work_agent(
    sup: &Supervisor,
    bins: &Bins,
    hub: &KubeCluster,
    spoke: &KubeCluster,
    hub_kubeconfig_dir: &Path,
) -> Result<()> {
    let name = spoke.name.clone();
    let mcs = managed_clusters(&hub.client);
    // 1. the agent creates its ManagedCluster; accept it
    hub.wait(
        &format!("ManagedCluster {name} created by its registration agent"),
        Duration::from_secs(90),
        || {
            let mcs = mcs.clone();
            let name = name.clone();
            async move { Ok(mcs.get_opt(&name).await?.map(|_| ())) }
        },
    )
    .await?;
    mcs.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"hubAcceptsClient": true}})),
    )
    .await
    .with_context(|| format!("accepting ManagedCluster {name}"))?;

    // 2. approve its pending CSRs until the agent has written its hub kubeconfig
    let csrs: Api<CertificateSigningRequest> = Api::all(hub.client.clone());
    let kubeconfig = hub_kubeconfig_dir.join("kubeconfig");
    let sel = format!("open-cluster-management.io/cluster-name={name}");
    hub.wait(
        &format!("CSR of {name} approved and hub kubeconfig written by the agent"),
        Duration::from_secs(120),
        || {
            let csrs = csrs.clone();
            let sel = sel.clone();
            let kubeconfig = kubeconfig.clone();
            async move {
                for csr in csrs.list(&ListParams::default().labels(&sel)).await? {
                    let decided = csr
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| !c.is_empty());
                    if decided {
                        continue;
                    }
                    let n = csr.metadata.name.clone().unwrap_or_default();
                    let mut status = csr.status.clone().unwrap_or_default();
                    status.conditions = Some(vec![CertificateSigningRequestCondition {
                        type_: "Approved".into(),
                        status: "True".into(),
                        reason: Some("AutoApprovedByE2E".into()),
                        message: Some("approved by the kmm e2e harness (clusteradm accept)".into()),
                        last_update_time: None,
                        last_transition_time: None,
                    }]);
                    csrs.patch_approval(&n, &PatchParams::default(), &Patch::Merge(json!({"status": status})))
                        .await
                        .with_context(|| format!("approving CSR {n}"))?;
                }
                Ok(kubeconfig.is_file().then_some(()))
            }
        },
    )
    .await?;

    // 3. the work agent, with the hub kubeconfig the registration agent made
    let listen = free_port()?;
    let bin = bins.path("work");
    sup.spawn(Spawn::new(&format!("{name}-ocm-work-agent"), &bin).args([
        "agent".to_string(),
        format!("--spoke-cluster-name={name}"),
        "--workload-source-driver=kube".into(),
        format!("--workload-source-config={}", kubeconfig.display()),
        format!("--hub-kubeconfig-dir={}", hub_kubeconfig_dir.display()),
        format!("--agent-id={name}-work"),
        format!("--kubeconfig={}", spoke.admin_kubeconfig.display()),
        format!("--namespace={AGENT_NAMESPACE}"),
        format!("--listen=127.0.0.1:{listen}"),
        "--disable-leader-election".into(),
        "--status-sync-interval=2s".into(),
    ]))?;

    // 4. joined and available
    hub.wait(
        &format!("ManagedCluster {name} HubAcceptedManagedCluster, Joined and Available"),
        Duration::from_secs(120),
        || {
            let mcs = mcs.clone();
            let name = name.clone();
            async move {
                let mc = serde_json::to_value(mcs.get(&name).await?)?;
                Ok((condition_true(&mc, "HubAcceptedManagedCluster")
                    && condition_true(&mc, "ManagedClusterJoined")
                    && condition_true(&mc, "ManagedClusterConditionAvailable"))
                .then_some(()))
            }
        },
    )
    .await?;
    Ok(())
}

/// Server-side apply of any object with `apiVersion`, `kind` and `metadata.name`.
pub async fn apply(client: &Client, obj: Value) -> Result<DynamicObject> {
    let api_version = obj["apiVersion"].as_str().context("apiVersion")?.to_string();
    let kind = obj["kind"].as_str().context("kind")?.to_string();
    let name = obj["metadata"]["name"].as_str().context("name")?.to_string();
    let ns = obj["metadata"]["namespace"].as_str().map(str::to_string);
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (String::new(), api_version.clone()),
    };
    let gvk = GroupVersionKind::gvk(&group, &version, &kind);
    let (ar, caps) = kube::discovery::pinned_kind(client, &gvk).await?;
    let api: Api<DynamicObject> = match (caps.scope, ns) {
        (kube::discovery::Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), &ns, &ar),
        (kube::discovery::Scope::Namespaced, None) => Api::default_namespaced_with(client.clone(), &ar),
        (kube::discovery::Scope::Cluster, _) => Api::all_with(client.clone(), &ar),
    };
    api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(obj))
        .await
        .with_context(|| format!("applying {kind} {name}"))
}
