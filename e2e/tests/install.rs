//! The install manifests on real API servers: two control planes started for this file, a
//! hub-like one (OCM hub CRDs, the policy CRDs) and a spoke (KWOK nodes, the ClusterClaim CRD).
//!
//! - every kustomize base applies with `kubectl apply -k --server-side`;
//! - the RHACM Policy, Placement and PlacementBinding pass a server-side dry run, and the Policy
//!   carries exactly the managed spoke overlay;
//! - the real `kmm-spoke` runs as the manifests' ServiceAccount (a kubeconfig impersonating it)
//!   through a whole scenario and the samples, which proves its RBAC sufficient; requests outside
//!   its role are refused, which proves it tight; the hub's and the klusterlet's roles are checked
//!   with `kubectl auth can-i` (the real `kmm-hub` runs under the hub's role through the fleet
//!   scenario of `e2e/tests/hub.rs`);
//! - the samples pass `kmm-hub validate` / `kmm-spoke validate`.

use e2e::testkit::{http_get, kubectl, manifest_config, manifests, our_binary, repo, yaml_docs};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use e2e::KubeCluster;
use e2e::bins::Bins;
use e2e::kwok::NodeSpec;
use e2e::proc::{Spawn, Supervisor};
use k8s_openapi::api::core::v1::{Event, Node, Secret};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use libtest_mimic::{Arguments, Failed, Trial};
use serde_json::{Value, json};
use shared_api::module::Module;
use shared_api::nmc::NodeModulesConfig;
use shared_api::ocm::{ClusterClaim, KERNEL_VERSIONS_CLAIM};

const K1: &str = "6.1.0-28-amd64";
const K2: &str = "5.14.0-427.13.1.el9_4.x86_64";
const TIMEOUT: Duration = Duration::from_secs(90);
/// The spoke's namespace and ServiceAccount, as in manifests/spoke.
const SPOKE_NS: &str = "kmm-system";
const SPOKE_SA: &str = "kmm-operator-controller";
/// The hub's, as in manifests/hub.
const SPOKE_VWC: &str = "kmm-operator-validating-webhook-configuration";
/// The managed overlay's KMM_WEBHOOK_SELF_SIGNED_SECRET.
const SELF_SIGNED_SECRET: &str = "kmm-operator-webhook-self-signed";
const HUB_NS: &str = "kmm-hub";
const HUB_SA: &str = "kmm-hub";
/// OCM's work agent on a managed cluster.
const WORK_SA: &str = "system:serviceaccount:open-cluster-management-agent:klusterlet-work-sa";

struct Env {
    hub: KubeCluster,
    spoke: KubeCluster,
    /// A client acting as the spoke's ServiceAccount.
    spoke_sa: Client,
    kubectl: PathBuf,
    /// What `kubectl apply -k` printed for each base, in order.
    applied: Vec<(String, String)>,
    spoke_log: PathBuf,
    /// kmm-spoke's /metrics (HTTPS, TokenReview and SubjectAccessReview as configured).
    metrics_port: u16,
    sup: Arc<Supervisor>,
}

type TestFn = fn(Arc<Env>) -> Pin<Box<dyn Future<Output = Result<()>> + Send>>;

macro_rules! tests {
    ($($name:ident),* $(,)?) => {
        vec![$((stringify!($name), (|e| Box::pin($name(e))) as TestFn)),*]
    };
}

/// `kubectl auth can-i` as `user`: true for "yes", false for "no" (which kubectl reports with
/// exit code 1).
async fn can_i(env: &Env, cluster: &KubeCluster, user: &str, args: &[&str]) -> Result<bool> {
    let mut all = vec!["auth", "can-i", "--as", user];
    all.extend_from_slice(args);
    let out = tokio::process::Command::new(&env.kubectl)
        .args(&all)
        .env("KUBECONFIG", &cluster.admin_kubeconfig)
        .output()
        .await
        .context("running kubectl auth can-i")?;
    match String::from_utf8_lossy(&out.stdout).trim() {
        "yes" => Ok(true),
        "no" => Ok(false),
        other => bail!(
            "kubectl {}: {other}{}",
            all.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// `kubectl apply -k dir --server-side` as the cluster admin; returns what kubectl printed.
async fn apply_k(kubectl_bin: &Path, cluster: &KubeCluster, dir: &str) -> Result<String> {
    let path = manifests(dir);
    kubectl(
        kubectl_bin,
        &cluster.admin_kubeconfig,
        &["apply", "--server-side", "-k", &path.display().to_string()],
    )
    .await
    .with_context(|| format!("{}: applying manifests/{dir}", cluster.name))
}

/// Documents of `kubectl kustomize dir`, parsed.
async fn kustomize(kubectl_bin: &Path, kubeconfig: &Path, dir: &Path) -> Result<Vec<Value>> {
    let out = kubectl(kubectl_bin, kubeconfig, &["kustomize", &dir.display().to_string()]).await?;
    yaml_docs(&out)
}

async fn start() -> Result<Env> {
    let bins = Bins::locate()?;
    let kubectl_bin = bins.path("kubectl");
    let dir = PathBuf::from(concat!(env!("CARGO_TARGET_TMPDIR"), "/kmm-e2e/install-tests"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let sup = Arc::new(Supervisor::new(&dir)?);
    let (hub_dir, spoke_dir) = (dir.join("hub"), dir.join("spoke"));
    let (hub, spoke) = tokio::try_join!(
        KubeCluster::start(sup.clone(), &bins, "hub", &hub_dir),
        KubeCluster::start(sup.clone(), &bins, "spoke", &spoke_dir),
    )?;
    let crds = repo().join("e2e/crds");
    hub.install_crds(&crds.join("hub")).await?;
    hub.install_crds(&crds.join("policy")).await?;
    spoke.install_crds(&crds.join("spoke")).await?;

    // Every base, as an administrator would apply it. The spoke gets the standalone base, then
    // the managed overlay on top (a superset: what the RHACM Policy installs).
    let mut applied = Vec::new();
    for (cluster, base) in [(&hub, "hub"), (&spoke, "spoke"), (&spoke, "spoke/managed")] {
        let out = apply_k(&kubectl_bin, cluster, base).await?;
        applied.push((base.to_owned(), out));
    }
    // kmm-spoke as its ServiceAccount, with the configuration file of the manifest's ConfigMap
    // (only the addresses moved to loopback ports and the certificate directory to ours), in
    // managed mode and making its own webhook certificate as the managed overlay's Deployment
    // runs it (plus 127.0.0.1 among the certificate's names: the webhooks reach it there).
    let ports = [e2e::net::free_port()?, e2e::net::free_port()?, e2e::net::free_port()?];
    let (health, webhook, metrics) = (ports[0], ports[1], ports[2]);
    let certs = spoke.dir.join("webhook-certs");
    std::fs::create_dir_all(&certs)?;
    let mut config = manifest_config("spoke/base/config.yaml", "kmm-operator-manager-config")?;
    config["healthProbeBindAddress"] = json!(format!("127.0.0.1:{health}"));
    config["webhook"]["host"] = json!("127.0.0.1");
    config["webhook"]["port"] = json!(webhook);
    config["webhook"]["certDir"] = json!(certs.display().to_string());
    config["metrics"]["bindAddress"] = json!(format!("127.0.0.1:{metrics}"));
    let config_file = spoke.dir.join("controller_config.yaml");
    std::fs::write(&config_file, serde_json::to_string_pretty(&config)?)?;

    let sa_kubeconfig = spoke.impersonating_kubeconfig(SPOKE_NS, SPOKE_SA)?;
    let spoke_sa = e2e::cluster::client_from_kubeconfig(&sa_kubeconfig).await?;
    let binary = our_binary("kmm-spoke")?;
    let spoke_log = sup.spawn(
        Spawn::new("kmm-spoke", &binary)
            .args(["run", "--webhook=on", "--config", &config_file.display().to_string()])
            .env("OPERATOR_NAMESPACE", SPOKE_NS)
            .env("KMM_MANAGED", "1")
            .env("KMM_WEBHOOK_SELF_SIGNED_SECRET", SELF_SIGNED_SECRET)
            .env("KMM_WEBHOOK_CERT_NAMES", "127.0.0.1")
            .env("POD_NAME", "kmm-operator-controller-e2e")
            .env("RELATED_IMAGE_WORKER", "kmm-worker:e2e")
            .env("KUBECONFIG", sa_kubeconfig.display().to_string())
            .env(
                "RUST_LOG",
                std::env::var("KMM_E2E_SPOKE_LOG").unwrap_or_else(|_| "info,kmm_spoke=debug".into()),
            ),
    )?;
    spoke
        .wait("kmm-spoke ready", TIMEOUT, || async move {
            Ok(http_get(health, "/readyz")
                .await
                .is_ok_and(|b| b.starts_with("HTTP/1.1 200"))
                .then_some(()))
        })
        .await?;
    // The manifest's webhook configuration reaches the Service in the cluster; this kmm-spoke
    // runs on loopback, so each webhook gets its URL there, keeping the CA kmm-spoke put in.
    // Rules, paths and policies stay as the manifest wrote them.
    spoke.point_webhooks_at(SPOKE_VWC, webhook, None).await?;
    Ok(Env {
        hub,
        spoke,
        spoke_sa,
        kubectl: kubectl_bin,
        applied,
        spoke_log,
        metrics_port: metrics,
        sup,
    })
}

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let tests = tests![
        kustomize_bases_apply_server_side,
        rhacm_policy_and_placement_pass_server_dry_run,
        rhacm_policy_carries_the_managed_spoke,
        spoke_scenario_under_its_service_account,
        spoke_webhook_from_the_manifest_refuses_a_bad_module,
        spoke_makes_its_webhook_certificate,
        spoke_metrics_need_a_token_allowed_to_read_them,
        spoke_service_account_is_refused_outside_its_role,
        hub_service_account_can_do_its_work_and_no_more,
        klusterlet_work_agent_manages_modules_only,
        samples_validate,
        spoke_samples_load_on_kwok_nodes,
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
                let env = env.map_err(|e| Failed::from(format!("the clusters or kmm-spoke did not start: {e}")))?;
                let logs = env.sup.log_dir();
                rt.block_on(async {
                    match tokio::time::timeout(Duration::from_secs(300), f(env.clone())).await {
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
        env.sup.teardown();
    }
    conclusion.exit_code()
}

// ------------------------------------------------------------------ helpers

fn ready_label(ns: &str, name: &str) -> String {
    format!("kmm.node.kubernetes.io/{ns}.{name}.ready")
}

fn labels_of(n: &Node) -> std::collections::BTreeMap<String, String> {
    n.metadata.labels.clone().unwrap_or_default()
}

/// Waits until the NodeModulesConfig status of `node` holds `image` for the Module and the node
/// carries its ready label (loaded), or, with `None`, neither (unloaded).
async fn wait_loaded(env: &Env, node: &str, ns: &str, name: &str, image: Option<&str>) -> Result<()> {
    let client = env.spoke.client.clone();
    let what = match image {
        Some(i) => format!("{ns}/{name} loaded on {node} from {i}"),
        None => format!("{ns}/{name} unloaded from {node}"),
    };
    env.spoke
        .wait(&what, TIMEOUT, || {
            let client = client.clone();
            async move {
                let nmc = Api::<NodeModulesConfig>::all(client.clone()).get_opt(node).await?;
                let loaded = nmc
                    .and_then(|n| n.status)
                    .and_then(|s| s.modules.into_iter().find(|m| m.namespace == ns && m.name == name))
                    .map(|m| m.config.container_image);
                let labelled =
                    labels_of(&Api::<Node>::all(client).get(node).await?).contains_key(&ready_label(ns, name));
                Ok(match image {
                    Some(i) => (loaded.as_deref() == Some(i) && labelled).then_some(()),
                    None => (loaded.is_none() && !labelled).then_some(()),
                })
            }
        })
        .await
}

async fn node_event(env: &Env, node: &str, reason: &str, message: &str) -> Result<()> {
    let api: Api<Event> = Api::all(env.spoke.client.clone());
    env.spoke
        .wait(&format!("{reason} event on {node}"), TIMEOUT, || {
            let api = api.clone();
            async move {
                let list = api
                    .list(&ListParams::default().fields(&format!("involvedObject.name={node}")))
                    .await?;
                Ok(list
                    .items
                    .iter()
                    .any(|e| {
                        e.reason.as_deref() == Some(reason)
                            && e.message.as_deref().is_some_and(|m| e2e::testkit::says(m, message))
                    })
                    .then_some(()))
            }
        })
        .await
}

/// Deletes the Module and waits until its finalizer let it go.
async fn delete_module(env: &Env, ns: &str, name: &str) -> Result<()> {
    let api: Api<Module> = Api::namespaced(env.spoke.client.clone(), ns);
    api.delete(name, &DeleteParams::default()).await?;
    env.spoke
        .wait(&format!("Module {ns}/{name} gone after unloading"), TIMEOUT, || {
            let api = api.clone();
            async move { Ok(api.get_opt(name).await?.is_none().then_some(())) }
        })
        .await
}

/// The spoke's log must not show a request the API server refused.
fn no_forbidden_in_spoke_log(env: &Env) -> Result<()> {
    let log = std::fs::read_to_string(&env.spoke_log)?;
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("forbidden") || l.contains("Forbidden"))
        .take(5)
        .collect();
    ensure!(
        refused.is_empty(),
        "kmm-spoke was refused requests under its ServiceAccount:\n{}",
        refused.join("\n")
    );
    Ok(())
}

fn is_forbidden<T: std::fmt::Debug>(r: &Result<T, kube::Error>) -> bool {
    matches!(r, Err(kube::Error::Api(s)) if s.code == 403)
}

// ------------------------------------------------------------------ trials

async fn kustomize_bases_apply_server_side(env: Arc<Env>) -> Result<()> {
    for (base, out) in &env.applied {
        let docs = kustomize(&env.kubectl, &env.spoke.admin_kubeconfig, &manifests(base)).await?;
        let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
        ensure!(
            lines.len() == docs.len(),
            "manifests/{base}: {} objects, kubectl applied {}:\n{out}",
            docs.len(),
            lines.len()
        );
        ensure!(
            lines.iter().all(|l| l.ends_with("serverside-applied")),
            "manifests/{base}:\n{out}"
        );
    }
    // What the bases installed is there, as written.
    let hub = &env.hub;
    kubectl(
        &env.kubectl,
        &hub.admin_kubeconfig,
        &[
            "-n",
            HUB_NS,
            "get",
            "deployment/kmm-hub-controller",
            "configmap/kmm-hub-manager-config",
        ],
    )
    .await?;
    kubectl(
        &env.kubectl,
        &hub.admin_kubeconfig,
        &["get", "crd", "managedclustermodules.hub.kmm.sigs.x-k8s.io"],
    )
    .await?;
    let spoke_crds = kubectl(&env.kubectl, &env.spoke.admin_kubeconfig, &["get", "crd", "-o", "name"]).await?;
    ensure!(
        spoke_crds.contains("modules.kmm.sigs.x-k8s.io") && !spoke_crds.contains("managedclustermodules"),
        "spoke CRDs: {spoke_crds}"
    );
    let env_vars = kubectl(
        &env.kubectl,
        &env.spoke.admin_kubeconfig,
        &[
            "-n",
            SPOKE_NS,
            "get",
            "deployment/kmm-operator-controller",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].env[*].name}",
        ],
    )
    .await?;
    ensure!(env_vars.contains("KMM_MANAGED"), "managed overlay env: {env_vars}");
    Ok(())
}

async fn rhacm_policy_and_placement_pass_server_dry_run(env: Arc<Env>) -> Result<()> {
    let out = kubectl(
        &env.kubectl,
        &env.hub.admin_kubeconfig,
        &[
            "apply",
            "--server-side",
            "--dry-run=server",
            "-k",
            &manifests("rhacm").display().to_string(),
        ],
    )
    .await?;
    for kind in [
        "policy.policy.open-cluster-management.io/install-kmm",
        "placementbinding.policy.open-cluster-management.io/install-kmm",
        "placement.cluster.open-cluster-management.io/kmm-spokes",
        "managedclustersetbinding.cluster.open-cluster-management.io/global",
    ] {
        ensure!(
            out.lines()
                .any(|l| l.starts_with(kind) && l.contains("(server dry run)")),
            "{kind} missing from the dry run:\n{out}"
        );
    }
    Ok(())
}

async fn rhacm_policy_carries_the_managed_spoke(env: Arc<Env>) -> Result<()> {
    let text = std::fs::read_to_string(manifests("rhacm/policy.yaml"))?;
    let policy: Value = serde_saphyr::from_str(&text)?;
    let templates = policy["spec"]["policy-templates"]
        .as_array()
        .context("policy-templates")?;
    ensure!(templates.len() == 1, "one ConfigurationPolicy expected");
    let config = &templates[0]["objectDefinition"];
    ensure!(config["kind"] == "ConfigurationPolicy", "{config}");
    ensure!(config["spec"]["remediationAction"] == "enforce");
    let objects = config["spec"]["object-templates"]
        .as_array()
        .context("object-templates")?;
    let wanted = kustomize(&env.kubectl, &env.spoke.admin_kubeconfig, &manifests("spoke/managed")).await?;
    let carried: Vec<&Value> = objects.iter().map(|o| &o["objectDefinition"]).collect();
    ensure!(
        carried.len() == wanted.len() && carried.iter().zip(&wanted).all(|(a, b)| *a == b),
        "manifests/rhacm/policy.yaml differs from `kubectl kustomize manifests/spoke/managed` (a CRD or spoke manifest changed): run manifests/rhacm/generate.sh"
    );
    for o in objects {
        let kind = o["objectDefinition"]["kind"].as_str().unwrap_or_default();
        let want = if kind.ends_with("Role") || kind.ends_with("RoleBinding") {
            "mustonlyhave"
        } else {
            "musthave"
        };
        ensure!(
            o["complianceType"] == want,
            "{kind}: complianceType {}",
            o["complianceType"]
        );
    }
    let deployment = carried
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .context("no Deployment in the Policy")?;
    let env_vars = &deployment["spec"]["template"]["spec"]["containers"][0]["env"];
    ensure!(
        env_vars
            .as_array()
            .is_some_and(|e| e.iter().any(|v| v["name"] == "KMM_MANAGED" && v["value"] == "1")),
        "the Policy's spoke is not in managed mode"
    );
    ensure!(
        carried.iter().any(|o| o["kind"] == "ClusterRoleBinding"
            && o["subjects"][0]["name"] == "klusterlet-work-sa"
            && o["subjects"][0]["namespace"] == "open-cluster-management-agent"),
        "the Policy does not let klusterlet-work-sa manage Modules"
    );
    Ok(())
}

async fn spoke_scenario_under_its_service_account(env: Arc<Env>) -> Result<()> {
    let (t, ns, name) = ("t-scenario", "t-scenario", "kmm-ci-a");
    env.spoke
        .add_nodes(&[
            NodeSpec::new("scn-a", K1).label("e2e/test", t),
            NodeSpec::new("scn-b", K2).label("e2e/test", t),
        ])
        .await?;
    env.spoke.ensure_namespace(ns).await?;
    let module = json!({
        "apiVersion": "kmm.sigs.x-k8s.io/v1beta1",
        "kind": "Module",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "selector": {"e2e/test": t},
            "moduleLoader": {"container": {
                "modprobe": {"moduleName": "kmm_ci_a"},
                "kernelMappings": [
                    {"literal": K1, "containerImage": "registry.e2e.invalid/kmm-ci-a:deb-${KERNEL_FULL_VERSION}"},
                    {"regexp": "^5\\.14\\..*el9", "containerImage": "registry.e2e.invalid/kmm-ci-a:el9-${KERNEL_XYZ}"}
                ]
            }},
            "devicePlugin": {"container": {"image": "registry.e2e.invalid/plugin:1"}}
        }
    });
    Api::<Module>::namespaced(env.spoke.client.clone(), ns)
        .patch(name, &PatchParams::apply("e2e").force(), &Patch::Apply(module))
        .await?;
    let deb = format!("registry.e2e.invalid/kmm-ci-a:deb-{K1}");
    wait_loaded(&env, "scn-a", ns, name, Some(&deb)).await?;
    wait_loaded(
        &env,
        "scn-b",
        ns,
        name,
        Some("registry.e2e.invalid/kmm-ci-a:el9-5.14.0"),
    )
    .await?;
    node_event(
        &env,
        "scn-a",
        "ModuleLoaded",
        &format!("Module {ns}/{name} loaded into the kernel"),
    )
    .await?;
    let plugin_ready = format!("kmm.node.kubernetes.io/{ns}.{name}.device-plugin-ready");
    env.spoke
        .wait("device-plugin-ready labels", TIMEOUT, || async {
            let nodes = Api::<Node>::all(env.spoke.client.clone());
            Ok((labels_of(&nodes.get("scn-a").await?).contains_key(&plugin_ready)
                && labels_of(&nodes.get("scn-b").await?).contains_key(&plugin_ready))
            .then_some(()))
        })
        .await?;
    env.spoke
        .wait("Module status Available 2/2", TIMEOUT, || async {
            let m = Api::<Module>::namespaced(env.spoke.client.clone(), ns)
                .get(name)
                .await?;
            let s = m.status.unwrap_or_default();
            Ok((s.module_loader.available_number == 2
                && s.device_plugin.available_number == 2
                && s.conditions
                    .iter()
                    .any(|c| c.type_ == "Available" && c.status == "True"))
            .then_some(()))
        })
        .await?;
    // Managed mode: the kernel claim, written by the ServiceAccount (managed overlay's RBAC).
    env.spoke
        .wait("kernel-versions ClusterClaim", TIMEOUT, || async {
            let claim = Api::<ClusterClaim>::all(env.spoke.client.clone())
                .get_opt(KERNEL_VERSIONS_CLAIM)
                .await?;
            Ok(claim
                .is_some_and(|c| c.spec.value.lines().any(|k| k == K1) && c.spec.value.lines().any(|k| k == K2))
                .then_some(()))
        })
        .await?;
    // The leader Lease in the spoke's namespace.
    kubectl(
        &env.kubectl,
        &env.spoke.admin_kubeconfig,
        &["-n", SPOKE_NS, "get", "lease", "kmm.sigs.x-k8s.io"],
    )
    .await?;

    // The manifest's Namespace webhook keeps the namespace while it holds the Module (the
    // spoke lists its Modules under its own identity).
    let refused = kubectl(
        &env.kubectl,
        &env.spoke.admin_kubeconfig,
        &["delete", "namespace", ns, "--wait=false"],
    )
    .await
    .err()
    .context("deleting a namespace that holds a Module was allowed")?;
    ensure!(
        format!("{refused:#}").contains("vnamespace.kb.io") && format!("{refused:#}").contains(name),
        "{refused:#}"
    );

    delete_module(&env, ns, name).await?;
    for n in ["scn-a", "scn-b"] {
        wait_loaded(&env, n, ns, name, None).await?;
    }
    // Its last Module gone, the namespace loses the label the webhook selects on.
    env.spoke
        .wait("the contains-modules label leaves the namespace", TIMEOUT, || async {
            let n = Api::<k8s_openapi::api::core::v1::Namespace>::all(env.spoke.client.clone())
                .get(ns)
                .await?;
            Ok((!kube::ResourceExt::labels(&n).contains_key(shared_api::labels::CONTAINS_MODULES_LABEL)).then_some(()))
        })
        .await?;
    node_event(
        &env,
        "scn-b",
        "ModuleUnloaded",
        &format!("Module {ns}/{name} unloaded from the kernel"),
    )
    .await?;
    no_forbidden_in_spoke_log(&env)
}

async fn spoke_service_account_is_refused_outside_its_role(env: Arc<Env>) -> Result<()> {
    let c = env.spoke_sa.clone();
    // Sanity: the identity works where its role allows.
    Api::<Module>::all(c.clone())
        .list(&ListParams::default())
        .await
        .context("the spoke's ServiceAccount cannot list Modules")?;
    let refused = [
        (
            "list Secrets in every namespace",
            is_forbidden(&Api::<Secret>::all(c.clone()).list(&ListParams::default()).await),
        ),
        (
            "read Secrets in its own namespace",
            is_forbidden(
                &Api::<Secret>::namespaced(c.clone(), SPOKE_NS)
                    .list(&ListParams::default())
                    .await,
            ),
        ),
        (
            "delete a Node",
            is_forbidden(
                &Api::<Node>::all(c.clone())
                    .delete("scn-a", &DeleteParams::default())
                    .await,
            ),
        ),
        (
            "create a Module",
            is_forbidden(
                &Api::<Module>::namespaced(c.clone(), "default")
                    .create(
                        &Default::default(),
                        &serde_json::from_value(json!({
                            "apiVersion": "kmm.sigs.x-k8s.io/v1beta1", "kind": "Module",
                            "metadata": {"name": "intruder", "namespace": "default"},
                            "spec": {"selector": {}}
                        }))?,
                    )
                    .await,
            ),
        ),
        (
            "delete a Module",
            is_forbidden(
                &Api::<Module>::namespaced(c.clone(), "default")
                    .delete("anything", &DeleteParams::default())
                    .await,
            ),
        ),
    ];
    let failed: Vec<&str> = refused.iter().filter(|(_, ok)| !ok).map(|(w, _)| *w).collect();
    ensure!(failed.is_empty(), "the spoke's ServiceAccount may {failed:?}");
    let user = format!("system:serviceaccount:{SPOKE_NS}:{SPOKE_SA}");
    for (args, want) in [
        (&["create", "clusterrolebindings"][..], false),
        (&["create", "pods", "--subresource=exec", "-n", "default"][..], false),
        (&["update", "leases", "-n", "default"][..], false),
        (&["create", "serviceaccounts/token", "-n", SPOKE_NS][..], false),
        (&["patch", "nodes"][..], true),
        (&["create", "pods", "-n", "any-module-namespace"][..], true),
        (&["patch", "clusterclaims.cluster.open-cluster-management.io"][..], true),
    ] {
        let got = can_i(&env, &env.spoke, &user, args).await?;
        ensure!(got == want, "can-i {args:?} as the spoke: {got}, expected {want}");
    }
    Ok(())
}

async fn hub_service_account_can_do_its_work_and_no_more(env: Arc<Env>) -> Result<()> {
    let user = format!("system:serviceaccount:{HUB_NS}:{HUB_SA}");
    let cases: &[(&[&str], bool)] = &[
        // Its work.
        (&["watch", "managedclustermodules.hub.kmm.sigs.x-k8s.io"], true),
        (
            &[
                "patch",
                "managedclustermodules.hub.kmm.sigs.x-k8s.io",
                "--subresource=status",
            ],
            true,
        ),
        (
            &[
                "update",
                "managedclustermodules.hub.kmm.sigs.x-k8s.io",
                "--subresource=finalizers",
            ],
            true,
        ),
        (&["list", "managedclusters.cluster.open-cluster-management.io"], true),
        (
            &[
                "create",
                "manifestworks.work.open-cluster-management.io",
                "-n",
                "spoke-a",
            ],
            true,
        ),
        (
            &[
                "delete",
                "manifestworks.work.open-cluster-management.io",
                "-n",
                "spoke-b",
            ],
            true,
        ),
        (&["create", "pods", "-n", HUB_NS], true),
        (&["get", "secrets", "-n", HUB_NS], true),
        (&["get", "configmaps", "-n", HUB_NS], true),
        (&["update", "leases.coordination.k8s.io", "-n", HUB_NS], true),
        (&["create", "events.events.k8s.io", "-n", "default"], true),
        (&["create", "tokenreviews.authentication.k8s.io"], true),
        (&["create", "subjectaccessreviews.authorization.k8s.io"], true),
        // No more.
        (&["create", "managedclustermodules.hub.kmm.sigs.x-k8s.io"], false),
        (&["delete", "managedclustermodules.hub.kmm.sigs.x-k8s.io"], false),
        (&["patch", "managedclusters.cluster.open-cluster-management.io"], false),
        (&["get", "secrets", "-n", "default"], false),
        (&["list", "secrets", "--all-namespaces"], false),
        (&["create", "pods", "-n", "default"], false),
        (&["update", "secrets", "-n", HUB_NS], false),
        (&["list", "secrets", "-n", HUB_NS], false),
        (&["watch", "configmaps", "-n", HUB_NS], false),
        (&["update", "managedclustermodules.hub.kmm.sigs.x-k8s.io"], false),
        (
            &[
                "deletecollection",
                "manifestworks.work.open-cluster-management.io",
                "-n",
                "spoke-a",
            ],
            false,
        ),
        (&["update", "leases.coordination.k8s.io", "-n", "default"], false),
        (&["delete", "nodes"], false),
        (&["create", "events.events.k8s.io", "-n", "spoke-a"], false),
        (&["create", "clusterrolebindings"], false),
    ];
    let mut wrong = Vec::new();
    for (args, want) in cases {
        let got = can_i(&env, &env.hub, &user, args).await?;
        if got != *want {
            wrong.push(format!("{args:?}: {got}, expected {want}"));
        }
    }
    ensure!(wrong.is_empty(), "the hub's ServiceAccount:\n{}", wrong.join("\n"));
    Ok(())
}

async fn klusterlet_work_agent_manages_modules_only(env: Arc<Env>) -> Result<()> {
    let cases: &[(&[&str], bool)] = &[
        (&["create", "modules.kmm.sigs.x-k8s.io", "-n", "kmm-system"], true),
        (&["delete", "modules.kmm.sigs.x-k8s.io", "-n", "any"], true),
        (&["watch", "modules.kmm.sigs.x-k8s.io", "--all-namespaces"], true),
        (
            &[
                "patch",
                "modules.kmm.sigs.x-k8s.io",
                "--subresource=status",
                "-n",
                "any",
            ],
            false,
        ),
        (&["create", "nodemodulesconfigs.kmm.sigs.x-k8s.io"], false),
        (&["get", "secrets", "-n", "kmm-system"], false),
    ];
    for (args, want) in cases {
        let got = can_i(&env, &env.spoke, WORK_SA, args).await?;
        ensure!(
            got == *want,
            "klusterlet-work-sa can-i {args:?}: {got}, expected {want}"
        );
    }
    Ok(())
}

async fn samples_validate(_env: Arc<Env>) -> Result<()> {
    let files = |dir: &str| -> Result<Vec<String>> {
        let mut v: Vec<String> = std::fs::read_dir(manifests(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .map(|p| p.display().to_string())
            .collect();
        v.sort();
        Ok(v)
    };
    let hub = files("samples/hub")?;
    let spoke = files("samples/spoke")?;
    ensure!(hub.len() == 6 && spoke.len() == 4, "samples: {hub:?} {spoke:?}");
    for (bin, list, kinds) in [
        ("kmm-hub", [hub.clone(), spoke.clone()].concat(), 10),
        ("kmm-spoke", spoke.clone(), 4),
    ] {
        let out = tokio::process::Command::new(our_binary(bin)?)
            .arg("validate")
            .args(&list)
            .output()
            .await?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success(),
            "{bin} validate: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let valid = stdout.lines().filter(|l| l.ends_with(": valid")).count();
        ensure!(
            valid == kinds,
            "{bin} validate: {valid} valid objects, expected {kinds}:\n{stdout}"
        );
    }
    Ok(())
}

async fn spoke_samples_load_on_kwok_nodes(env: Arc<Env>) -> Result<()> {
    // Every KWOK node is a worker (node-role.kubernetes.io/worker), as the samples select.
    let upgrade_label = "kmm.node.kubernetes.io/version-module.kmm-system.kmm-ci-a-v";
    env.spoke
        .add_nodes(&[
            NodeSpec::new("smp-a", K1).label(upgrade_label, "1"),
            NodeSpec::new("smp-b", K2).label(upgrade_label, "1"),
        ])
        .await?;
    let registry = "127.0.0.1:5000";
    for (file, name, image, plugin) in [
        ("module-plain.yaml", "kmm-ci-a", "kmm-ci-a:{K}", false),
        ("module-device-plugin.yaml", "kmm-ci-a-plugin", "kmm-ci-a:{K}", true),
        ("module-firmware.yaml", "kmm-ci-fw", "kmm-ci-fw:{K}", false),
        ("module-ordered-upgrade.yaml", "kmm-ci-a-v", "kmm-ci-a:{K}-v1", false),
    ] {
        // Samples name their registry kmm-registry.local:5000; point them at "ours".
        let text = std::fs::read_to_string(manifests("samples/spoke").join(file))?
            .replace("kmm-registry.local:5000", registry);
        let path = env.spoke.dir.join(file);
        std::fs::write(&path, text)?;
        kubectl(
            &env.kubectl,
            &env.spoke.admin_kubeconfig,
            &["apply", "--server-side", "-f", &path.display().to_string()],
        )
        .await?;
        for (node, k) in [("smp-a", K1), ("smp-b", K2)] {
            let want = format!("{registry}/{}", image.replace("{K}", k));
            wait_loaded(&env, node, SPOKE_NS, name, Some(&want))
                .await
                .with_context(|| format!("sample {file}"))?;
            if plugin {
                let label = format!("kmm.node.kubernetes.io/{SPOKE_NS}.{name}.device-plugin-ready");
                env.spoke
                    .wait(&format!("{file}: device plugin ready on {node}"), TIMEOUT, || async {
                        let n = Api::<Node>::all(env.spoke.client.clone()).get(node).await?;
                        Ok(labels_of(&n).contains_key(&label).then_some(()))
                    })
                    .await?;
            }
        }
        delete_module(&env, SPOKE_NS, name).await?;
        for node in ["smp-a", "smp-b"] {
            wait_loaded(&env, node, SPOKE_NS, name, None)
                .await
                .with_context(|| format!("sample {file}"))?;
        }
    }
    // The worker pods ran as the manifest's kmm-module-loader ServiceAccount (Modules in the
    // operator namespace), which must exist for the API server to admit them.
    let sa = kubectl(
        &env.kubectl,
        &env.spoke.admin_kubeconfig,
        &[
            "-n",
            SPOKE_NS,
            "get",
            "serviceaccount",
            "kmm-module-loader",
            "-o",
            "name",
        ],
    )
    .await?;
    ensure!(sa.trim() == "serviceaccount/kmm-module-loader");
    no_forbidden_in_spoke_log(&env)
}

async fn spoke_webhook_from_the_manifest_refuses_a_bad_module(env: Arc<Env>) -> Result<()> {
    let ns = "t-webhook";
    env.spoke.ensure_namespace(ns).await?;
    // An image without a tag or digest: the CRD's schema lets it through, the webhook does not.
    let bad = env.spoke.dir.join("bad-module.yaml");
    std::fs::write(
        &bad,
        serde_json::to_string(&json!({
            "apiVersion": "kmm.sigs.x-k8s.io/v1beta1",
            "kind": "Module",
            "metadata": {"name": "untagged", "namespace": ns},
            "spec": {
                "selector": {"e2e/test": "t-webhook"},
                "moduleLoader": {"container": {
                    "modprobe": {"moduleName": "kmm_ci_a"},
                    "kernelMappings": [{"regexp": "^.+$", "containerImage": "registry.e2e.invalid/kmm-ci-a"}]
                }}
            }
        }))?,
    )?;
    let err = kubectl(
        &env.kubectl,
        &env.spoke.admin_kubeconfig,
        &["apply", "--server-side", "-f", &bad.display().to_string()],
    )
    .await
    .err()
    .context("the API server accepted a Module without an image tag")?;
    let text = format!("{err:#}");
    ensure!(
        text.contains("admission webhook \"vmodule.kb.io\" denied the request")
            && text.contains("spec.moduleLoader.container.kernelMappings[0].containerImage"),
        "{text}"
    );
    Ok(())
}

/// The managed overlay's spoke made its CA and serving certificate, keeps them in the Secret,
/// serves with them, and put the CA into every webhook of its configuration (the webhook trial
/// above goes through that chain of trust).
async fn spoke_makes_its_webhook_certificate(env: Arc<Env>) -> Result<()> {
    use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
    use k8s_openapi::api::core::v1::Secret;
    let secret = Api::<Secret>::namespaced(env.spoke.client.clone(), SPOKE_NS)
        .get(SELF_SIGNED_SECRET)
        .await?;
    let data = secret.data.unwrap_or_default();
    let ca = data.get("ca.crt").context("no ca.crt in the Secret")?.0.clone();
    let names = secret
        .metadata
        .annotations
        .unwrap_or_default()
        .get(kmm_runtime::webhook_certs::NAMES_ANNOTATION)
        .cloned()
        .unwrap_or_default();
    ensure!(
        names
            == "kmm-operator-webhook-service.kmm-system.svc,kmm-operator-webhook-service.kmm-system.svc.cluster.local,127.0.0.1",
        "certificate names: {names}"
    );
    let vwc = Api::<ValidatingWebhookConfiguration>::all(env.spoke.client.clone())
        .get(SPOKE_VWC)
        .await?;
    let webhooks = vwc.webhooks.unwrap_or_default();
    ensure!(webhooks.len() == 3, "webhooks: {}", webhooks.len());
    for w in &webhooks {
        ensure!(
            w.client_config.ca_bundle.as_ref().map(|b| &b.0) == Some(&ca),
            "webhook {} does not carry the spoke's CA",
            w.name
        );
    }
    // The certificate it serves is the Secret's, signed by that CA.
    let served = std::fs::read(env.spoke.dir.join("webhook-certs/tls.crt"))?;
    ensure!(
        Some(&served) == data.get("tls.crt").map(|b| &b.0),
        "the served certificate is not the Secret's"
    );
    // The ServiceAccount may not read other Secrets of its namespace.
    let other = Api::<Secret>::namespaced(env.spoke_sa.clone(), SPOKE_NS)
        .get("kmm-operator-webhook-server-cert")
        .await;
    ensure!(is_forbidden(&other), "read another Secret: {other:?}");
    Ok(())
}

async fn spoke_metrics_need_a_token_allowed_to_read_them(env: Arc<Env>) -> Result<()> {
    e2e::testkit::check_metrics_auth(
        &env.kubectl,
        &env.spoke.admin_kubeconfig,
        "kmm-operator-metrics-reader",
        env.metrics_port,
        "kmm_spoke_",
    )
    .await
}
