//! `kmm-hub` and `kmm-spoke` across a local fleet: a hub and two spokes on different kernels,
//! joined by OCM's real registration and work agents, with a real registry holding kmod images
//! made from the real fixture modules. The hub runs build pods (a stand-in executor in the
//! harness pushes what kaniko would; KWOK completes the pod), signs in process, pins digests
//! and sends ManifestWorks; the spokes load the Modules on KWOK nodes and the status comes back.
//!
//! `kmm-hub` runs as the manifests' ServiceAccount (`manifests/hub/namespace.yaml` and
//! `rbac.yaml` applied as an administrator would, the binary given a kubeconfig impersonating
//! `system:serviceaccount:kmm-hub:kmm-hub`), with the configuration file of the manifest's
//! ConfigMap (leader election, webhook, authenticated metrics; only addresses moved to loopback),
//! and its ManagedClusterModule webhook registered with the hub's API server from
//! `manifests/hub/webhook.yaml`. So the whole scenario proves the hub's RBAC sufficient, a log
//! without "forbidden" shows nothing was refused on the way, and requests outside the role are
//! refused; every MCM the trials create passes the real webhook, and bad ones are refused by it.
//!
//! The trials run one after the other on one fleet (`--test-threads` is forced to 1).

use e2e::testkit::{http_get, kubectl, manifest_config, manifests, our_binary, repo, yaml_docs};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use base64::Engine;
use e2e::executor::StandInExecutor;
use e2e::kmods::Fixtures;
use e2e::proc::Spawn;
use e2e::{Fleet, FleetSpec, NodeSpec, RegistrySpec, SpokeSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Event, Node, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use libtest_mimic::{Arguments, Failed, Trial};
use oci_client::secrets::RegistryAuth;
use serde_json::{Value, json};
use shared_api::mcm::ManagedClusterModule;
use shared_api::module::Module;
use shared_api::ocm::{ManagedCluster, ManifestWork};

const K1: &str = "6.1.0-56-amd64";
const K2: &str = "6.1.0-57-amd64";
const K3: &str = "6.1.0-58-amd64";
/// The hub's namespace and ServiceAccount, as in manifests/hub.
const HUB_NS: &str = "kmm-hub";
const HUB_SA: &str = "kmm-hub";
/// The leader election Lease of manifests/hub/config.yaml.
const HUB_LEASE: &str = "kmm-hub.sigs.x-k8s.io";
const HUB_POD: &str = "kmm-hub-controller-e2e";
/// The ValidatingWebhookConfiguration of manifests/hub/webhook.yaml.
const HUB_VWC: &str = "kmm-hub-validating-webhook-configuration";
const SPOKE_NS: &str = "kmm-ci";
const USER: &str = "kmm";
const PASS: &str = "e2e-password";
const SELECT: &str = "kmm-e2e";
const SELECT_FAIL: &str = "kmm-e2e-fail";
const NODE_LABEL: &str = "e2e/kmm";
const MODULES_TO_SIGN: [&str; 2] = ["kmm_ci_a", "kmm_ci_b"];

struct Env {
    fleet: Fleet,
    fixtures: Arc<Fixtures>,
    tmp: PathBuf,
    kubectl: PathBuf,
    /// A client acting as the hub's ServiceAccount (what kmm-hub runs as).
    hub_sa: Client,
    hub_log: PathBuf,
    /// The first kmm-hub's process name (the restart trial stops it).
    hub_process: String,
    /// What another kmm-hub replica needs: the webhook certificates and the ServiceAccount's
    /// kubeconfig.
    hub_certs: PathBuf,
    hub_sa_kubeconfig: PathBuf,
    /// kmm-hub's /metrics (HTTPS, TokenReview and SubjectAccessReview as the manifest configures).
    hub_metrics_port: u16,
    _executor: StandInExecutor,
}

type TestFn = fn(Arc<Env>) -> Pin<Box<dyn Future<Output = Result<()>> + Send>>;

macro_rules! tests {
    ($($name:ident),* $(,)?) => {
        vec![$((stringify!($name), (|e| Box::pin($name(e))) as TestFn)),*]
    };
}

fn spec() -> FleetSpec {
    let node = |n: &str, k: &str| NodeSpec::new(n, k).label(NODE_LABEL, "yes");
    FleetSpec::new("hub-tests")
        .base_dir(concat!(env!("CARGO_TARGET_TMPDIR"), "/kmm-e2e"))
        .hub_node(NodeSpec::new("hub-builder", K1))
        .spoke(SpokeSpec::new("spoke-a").node(node("a-0", K1)).node(node("a-1", K1)))
        .spoke(SpokeSpec::new("spoke-b").node(node("b-0", K2)))
        .registry(RegistrySpec {
            tls: false,
            auth: Some((USER.into(), PASS.into())),
        })
}

fn registry_auth() -> RegistryAuth {
    RegistryAuth::Basic(USER.into(), PASS.into())
}

fn dockerconfigjson(host: &str) -> String {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASS}"));
    json!({ "auths": { host: { "auth": auth } } }).to_string()
}

fn openssl(args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .context("running openssl (apt-get install -y openssl)")?;
    ensure!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

async fn create<K>(api: &Api<K>, obj: &K) -> Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn secret(name: &str, data: &[(&str, Vec<u8>)], type_: Option<&str>) -> Secret {
    let mut s = Secret::default();
    s.metadata.name = Some(name.into());
    s.type_ = type_.map(Into::into);
    s.data = Some(
        data.iter()
            .map(|(k, v)| (k.to_string(), k8s_openapi::ByteString(v.clone())))
            .collect(),
    );
    s
}

async fn start() -> Result<Env> {
    let tmp = PathBuf::from(concat!(env!("CARGO_TARGET_TMPDIR"), "/kmm-e2e/hub-tests-files"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(tmp.join("kmods"))?;
    let fixtures = Arc::new(Fixtures::build(&tmp.join("kmods"))?);
    let fleet = Fleet::start(spec()).await?;
    let repo = repo();
    let kubectl_bin = fleet.bins.path("kubectl");
    let registry = fleet.registry.as_ref().context("fleet without registry")?;
    let pull = dockerconfigjson(&registry.host);

    // Hub: our CRDs, the manifests' Namespace and RBAC (applied as an administrator would), the
    // registry, signing and Dockerfile objects.
    fleet.hub.install_crds(&repo.join("manifests/crds")).await?;
    kubectl(
        &kubectl_bin,
        &fleet.hub.admin_kubeconfig,
        &[
            "apply",
            "--server-side",
            "-f",
            &manifests("hub/namespace.yaml").display().to_string(),
            "-f",
            &manifests("hub/rbac.yaml").display().to_string(),
        ],
    )
    .await
    .context("applying manifests/hub/{namespace,rbac}.yaml")?;
    let hub = fleet.hub_client();
    let secrets: Api<Secret> = Api::namespaced(hub.clone(), HUB_NS);
    create(
        &secrets,
        &secret(
            "kmm-registry",
            &[(".dockerconfigjson", pull.clone().into_bytes())],
            Some("kubernetes.io/dockerconfigjson"),
        ),
    )
    .await?;
    let (key, cert, other_key) = (tmp.join("key.pem"), tmp.join("cert.pem"), tmp.join("other.pem"));
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=kmm-e2e signing",
        "-keyout",
        &key.display().to_string(),
        "-out",
        &cert.display().to_string(),
    ])?;
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        &other_key.display().to_string(),
    ])?;
    create(
        &secrets,
        &secret("kmm-signing-key", &[("key", std::fs::read(&key)?)], None),
    )
    .await?;
    create(
        &secrets,
        &secret("kmm-signing-cert", &[("cert", std::fs::read(&cert)?)], None),
    )
    .await?;
    create(
        &secrets,
        &secret("kmm-wrong-key", &[("key", std::fs::read(&other_key)?)], None),
    )
    .await?;
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("kmm-ci-dockerfile".into());
    cm.data = Some(
        [(
            "dockerfile".to_string(),
            "FROM debian:bookworm-slim\nARG KERNEL_FULL_VERSION\nCOPY . /opt/lib/modules/${KERNEL_FULL_VERSION}/\n"
                .to_string(),
        )]
        .into(),
    );
    create(&Api::<ConfigMap>::namespaced(hub.clone(), HUB_NS), &cm).await?;

    // Spokes: our CRDs, namespaces, the pull secret, and kmm-spoke in managed mode.
    let spoke_bin = our_binary("kmm-spoke")?;
    let mut ready_ports = Vec::new();
    for s in &fleet.spokes {
        s.install_crds(&repo.join("manifests/crds")).await?;
        s.ensure_namespace("kmm-system").await?;
        s.ensure_namespace(SPOKE_NS).await?;
        create(
            &Api::<Secret>::namespaced(s.client.clone(), SPOKE_NS),
            &secret(
                "kmm-registry",
                &[(".dockerconfigjson", pull.clone().into_bytes())],
                Some("kubernetes.io/dockerconfigjson"),
            ),
        )
        .await?;
        let health = e2e::net::free_port()?;
        let metrics = e2e::net::free_port()?;
        fleet.spawn(
            Spawn::new(&format!("{}-kmm-spoke", s.name), &spoke_bin)
                .args([
                    "run",
                    "--namespace=kmm-system",
                    "--managed=true",
                    "--webhook=off",
                    "--leader-elect=false",
                    "--worker-image=kmm-worker:e2e",
                    &format!("--health-probe-bind-address=127.0.0.1:{health}"),
                    &format!("--metrics-bind-address=127.0.0.1:{metrics}"),
                ])
                .env("KUBECONFIG", s.admin_kubeconfig.display().to_string())
                .env("RUST_LOG", "info"),
        )?;
        ready_ports.push(health);
    }
    // kmm-hub as its ServiceAccount, with the configuration file of the manifest's ConfigMap
    // (only the addresses moved to loopback ports and the certificate directory to ours).
    let certs = tmp.join("hub-webhook-certs");
    std::fs::create_dir_all(&certs)?;
    let ca = e2e::certs::Ca::new("kmm-e2e-hub-webhook-ca")?;
    let serving = ca.server(
        "kmm-hub-webhook-service",
        &["127.0.0.1", "kmm-hub-webhook-service.kmm-hub.svc"],
    )?;
    e2e::certs::write(&certs.join("tls.crt"), &serving.cert_pem)?;
    e2e::certs::write(&certs.join("tls.key"), &serving.key_pem)?;
    let sa_kubeconfig = fleet.hub.impersonating_kubeconfig(HUB_NS, HUB_SA)?;
    let hub_sa = e2e::cluster::client_from_kubeconfig(&sa_kubeconfig).await?;
    let hub_process = spawn_hub(&fleet, &tmp, &certs, &sa_kubeconfig, "kmm-hub", HUB_POD)?;
    let (health, webhook, metrics) = (hub_process.health, hub_process.webhook, hub_process.metrics);
    let hub_log = hub_process.log.clone();
    ready_ports.push(health);
    for port in ready_ports {
        e2e::wait::poll(
            "kmm-hub and kmm-spoke ready",
            Duration::from_secs(60),
            Duration::from_millis(250),
            || fleet.check_alive(),
            || async move {
                Ok(http_get(port, "/readyz")
                    .await
                    .is_ok_and(|b| b.starts_with("HTTP/1.1 200"))
                    .then_some(()))
            },
        )
        .await?;
    }
    // The manifest's webhook configuration reaches the Service in the cluster; this kmm-hub runs
    // on loopback, so its webhook gets its URL there, with our CA. Rules, path and policies stay
    // as the manifest wrote them.
    kubectl(
        &kubectl_bin,
        &fleet.hub.admin_kubeconfig,
        &[
            "apply",
            "--server-side",
            "-f",
            &manifests("hub/webhook.yaml").display().to_string(),
        ],
    )
    .await
    .context("applying manifests/hub/webhook.yaml")?;
    fleet
        .hub
        .point_webhooks_at(HUB_VWC, webhook, Some(&ca.cert_pem))
        .await?;
    let executor = StandInExecutor::start(hub, HUB_NS, fixtures.clone(), registry_auth());
    Ok(Env {
        fleet,
        fixtures,
        tmp,
        kubectl: kubectl_bin,
        hub_sa,
        hub_log,
        hub_process: hub_process.name,
        hub_certs: certs,
        hub_sa_kubeconfig: sa_kubeconfig,
        hub_metrics_port: metrics,
        _executor: executor,
    })
}

/// One `kmm-hub run` process and its loopback ports.
struct HubProcess {
    /// The supervisor's name of the process.
    name: String,
    log: PathBuf,
    health: u16,
    webhook: u16,
    metrics: u16,
}

/// Starts `kmm-hub run` as the hub's ServiceAccount with the manifest's configuration (leader
/// election on the manifest's Lease), on ports of its own, as pod `pod`.
fn spawn_hub(
    fleet: &Fleet,
    tmp: &Path,
    certs: &Path,
    sa_kubeconfig: &Path,
    name: &str,
    pod: &str,
) -> Result<HubProcess> {
    let hub_bin = our_binary("kmm-hub")?;
    let (health, webhook, metrics) = (e2e::net::free_port()?, e2e::net::free_port()?, e2e::net::free_port()?);
    let mut config = manifest_config("hub/config.yaml", "kmm-hub-manager-config")?;
    config["healthProbeBindAddress"] = json!(format!("127.0.0.1:{health}"));
    config["webhook"]["host"] = json!("127.0.0.1");
    config["webhook"]["port"] = json!(webhook);
    config["webhook"]["certDir"] = json!(certs.display().to_string());
    config["metrics"]["bindAddress"] = json!(format!("127.0.0.1:{metrics}"));
    let config_file = tmp.join(format!("{name}_controller_config.yaml"));
    std::fs::write(&config_file, serde_json::to_string_pretty(&config)?)?;
    let log = fleet.spawn(
        Spawn::new(name, &hub_bin)
            .args([
                "run",
                "--config",
                &config_file.display().to_string(),
                "--webhook=on",
                &format!("--namespace={HUB_NS}"),
                "--registry-timeout=5s",
                "--build-image=kaniko-executor:e2e",
            ])
            .env("POD_NAME", pod)
            .env("KUBECONFIG", sa_kubeconfig.display().to_string())
            .env(
                "RUST_LOG",
                std::env::var("KMM_E2E_HUB_LOG").unwrap_or_else(|_| "info,kmm_hub=debug".into()),
            ),
    )?;
    Ok(HubProcess {
        name: name.into(),
        log,
        health,
        webhook,
        metrics,
    })
}

fn main() -> ExitCode {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    // In this order: the log check comes after the scenario it judges.
    let tests = tests![
        mcm_webhook_refuses_bad_specs_naming_the_field,
        build_sign_pin_load_extend_relabel_delete,
        failures_end_in_a_clear_status,
        hub_samples_load_on_the_spokes,
        hub_service_account_is_refused_outside_its_role,
        hub_metrics_need_a_token_allowed_to_read_them,
        hub_log_shows_no_forbidden_request,
        // Last: it replaces the kmm-hub process the trials above use.
        restart_takeover_and_a_late_cache_never_take_a_module_away,
    ];
    let rt = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime"),
    );
    let wanted = !args.list;
    let env: Result<Arc<Env>, String> = if wanted {
        rt.block_on(start()).map(Arc::new).map_err(|e| format!("{e:#}"))
    } else {
        Err("not started".into())
    };
    let trials: Vec<Trial> = tests
        .into_iter()
        .map(|(name, f)| {
            let (env, rt) = (env.clone(), rt.clone());
            Trial::test(name, move || {
                let env =
                    env.map_err(|e| Failed::from(format!("the fleet, kmm-hub or kmm-spoke did not start: {e}")))?;
                rt.block_on(async {
                    match tokio::time::timeout(Duration::from_secs(420), f(env.clone())).await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(Failed::from(format!(
                            "{e:#}\n(logs: {})",
                            env.fleet.log_dir().display()
                        ))),
                        Err(_) => Err(Failed::from(format!(
                            "timed out after 420s (logs: {})",
                            env.fleet.log_dir().display()
                        ))),
                    }
                })
            })
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    if let Ok(env) = env {
        match Arc::try_unwrap(env) {
            Ok(env) => env.fleet.teardown(),
            Err(env) => env.fleet.teardown(),
        }
    }
    if conclusion.has_failed() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

// ---------------------------------------------------------------- helpers

async fn wait_for<T, F, Fut>(env: &Env, what: &str, secs: u64, f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    e2e::wait::poll(
        what,
        Duration::from_secs(secs),
        Duration::from_millis(300),
        || env.fleet.check_alive(),
        f,
    )
    .await
}

fn mcm(name: &str, selector: &str, loader: Value) -> Result<ManagedClusterModule> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "hub.kmm.sigs.x-k8s.io/v1beta1",
        "kind": "ManagedClusterModule",
        "metadata": {"name": name},
        "spec": {
            "spokeNamespace": SPOKE_NS,
            "selector": {selector: "yes"},
            "moduleSpec": {
                "imageRepoSecret": {"name": "kmm-registry"},
                "selector": {NODE_LABEL: "yes"},
                "moduleLoader": {"container": loader},
            }
        }
    }))?)
}

async fn label_cluster(env: &Env, cluster: &str, key: &str, value: Option<&str>) -> Result<()> {
    let api: Api<ManagedCluster> = Api::all(env.fleet.hub_client());
    api.patch(
        cluster,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {key: value}}})),
    )
    .await?;
    Ok(())
}

fn ready_label(name: &str) -> String {
    format!("kmm.node.kubernetes.io/{SPOKE_NS}.{name}.ready")
}

async fn nodes_with_label(client: &Client, label: &str) -> Result<Vec<String>> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut names: Vec<String> = nodes
        .list(&ListParams::default().labels(label))
        .await?
        .into_iter()
        .map(|n| n.name_any())
        .collect();
    names.sort();
    Ok(names)
}

async fn status_of(env: &Env, name: &str) -> Result<Option<shared_api::mcm::ManagedClusterModuleStatus>> {
    let api: Api<ManagedClusterModule> = Api::all(env.fleet.hub_client());
    Ok(api.get_opt(name).await?.and_then(|m| m.status))
}

/// The pinned image of `kernel` once the MCM status says it is Ready.
async fn pinned_when_ready(env: &Env, mcm: &str, kernel: &str) -> Result<String> {
    wait_for(
        env,
        &format!("image of {kernel} Ready in {mcm}'s status"),
        180,
        || async move {
            let s = status_of(env, mcm).await?;
            let img = s
                .iter()
                .flat_map(|s| &s.images)
                .find(|i| i.kernel_version == kernel)
                .cloned();
            if let Some(i) = &img
                && i.state == "Failed"
            {
                bail!("image of {kernel} failed: {:?}", i.message);
            }
            Ok(img.filter(|i| i.state == "Ready").and_then(|i| i.pinned))
        },
    )
    .await
}

async fn work_module(env: &Env, cluster: &str, name: &str) -> Result<Option<Module>> {
    let api: Api<ManifestWork> = Api::namespaced(env.fleet.hub_client(), cluster);
    Ok(match api.get_opt(name).await? {
        Some(mw) => Some(serde_json::from_value(
            mw.spec
                .workload
                .manifests
                .first()
                .cloned()
                .context("empty ManifestWork")?,
        )?),
        None => None,
    })
}

fn mappings(m: &Module) -> Vec<(String, String)> {
    m.spec
        .module_loader
        .iter()
        .flat_map(|l| &l.container.kernel_mappings)
        .map(|k| {
            (
                k.literal.clone().unwrap_or_default(),
                k.container_image.clone().unwrap_or_default(),
            )
        })
        .collect()
}

/// Splits a signed module into content and CMS signature, and verifies it with `openssl cms`.
fn verify_signed(dir: &Path, name: &str, data: &[u8], cert: &Path) -> Result<()> {
    const MAGIC: &[u8] = b"~Module signature appended~\n";
    ensure!(data.ends_with(MAGIC), "{name} carries no module signature");
    let body = &data[..data.len() - MAGIC.len()];
    let trailer = &body[body.len() - 12..];
    ensure!(trailer[2] == 2, "{name}: signature id type is not PKCS#7");
    let n = u32::from_be_bytes(trailer[8..12].try_into()?) as usize;
    let rest = &body[..body.len() - 12];
    let (content, sig) = rest.split_at(rest.len() - n);
    let (c, s) = (dir.join(format!("{name}.content")), dir.join(format!("{name}.p7s")));
    std::fs::write(&c, content)?;
    std::fs::write(&s, sig)?;
    openssl(&[
        "cms",
        "-verify",
        "-binary",
        "-inform",
        "DER",
        "-in",
        &s.display().to_string(),
        "-content",
        &c.display().to_string(),
        "-certfile",
        &cert.display().to_string(),
        "-nointern",
        "-noverify",
        "-out",
        "/dev/null",
    ])
    .with_context(|| format!("verifying the signature of {name}"))
}

async fn event_reasons(env: &Env, mcm: &str) -> Result<Vec<String>> {
    let events: Api<Event> = Api::all(env.fleet.hub_client());
    Ok(events
        .list(&ListParams::default())
        .await?
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(mcm))
        .filter_map(|e| e.reason)
        .collect())
}

// ---------------------------------------------------------------- trials

async fn build_sign_pin_load_extend_relabel_delete(env: Arc<Env>) -> Result<()> {
    let env = env.as_ref();
    let hub = env.fleet.hub_client();
    let registry = env.fleet.registry.as_ref().context("registry")?;
    let name = "kmm-ci";
    let image = format!("{}/kmm/kmm-ci:${{KERNEL_FULL_VERSION}}", registry.host);
    for c in ["spoke-a", "spoke-b"] {
        label_cluster(env, c, SELECT, Some("yes")).await?;
    }
    let m = mcm(
        name,
        SELECT,
        json!({
            "modprobe": {"moduleName": "kmm_ci_a"},
            "kernelMappings": [{
                "regexp": "^6\\.1\\.0-.*$",
                "containerImage": image,
                "registryTLS": {"insecure": true},
                "build": {"dockerfileConfigMap": {"name": "kmm-ci-dockerfile"}},
                "sign": {
                    "keySecret": {"name": "kmm-signing-key"},
                    "certSecret": {"name": "kmm-signing-cert"},
                    "filesToSign": MODULES_TO_SIGN.iter().map(|m| format!("/opt/lib/modules/${{KERNEL_FULL_VERSION}}/{m}.ko")).collect::<Vec<_>>(),
                },
            }],
        }),
    )?;
    let mcms: Api<ManagedClusterModule> = Api::all(hub.clone());
    mcms.create(&PostParams::default(), &m).await?;

    // Built, signed and pinned, once per kernel.
    let p1 = pinned_when_ready(env, name, K1).await?;
    let p2 = pinned_when_ready(env, name, K2).await?;
    for (kernel, pinned) in [(K1, &p1), (K2, &p2)] {
        ensure!(pinned.contains("@sha256:"), "{pinned} is not pinned to a digest");
        let tag = format!("{}/kmm/kmm-ci:{kernel}", registry.host);
        let (digest, files) = e2e::kmods::last_layer_files(&tag, &registry_auth()).await?;
        ensure!(
            pinned.ends_with(&digest),
            "{pinned} is not the digest of {tag} ({digest})"
        );
        let dir = env.tmp.join(format!("verify-{kernel}"));
        std::fs::create_dir_all(&dir)?;
        ensure!(files.len() == MODULES_TO_SIGN.len(), "signed layer holds {files:?}");
        for (path, data) in &files {
            ensure!(path.starts_with(&format!("opt/lib/modules/{kernel}/")), "{path}");
            let name = Path::new(path)
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            verify_signed(&dir, &name, data, &env.tmp.join("cert.pem"))?;
            let original = env.fixtures.module(name.trim_end_matches(".ko"))?;
            ensure!(
                data.starts_with(&original),
                "{name}: the signed module's content is not the fixture's"
            );
        }
    }
    let reasons = event_reasons(env, name).await?;
    for r in ["BuildCreated", "BuildSucceeded", "SignSucceeded"] {
        ensure!(
            reasons.iter().any(|x| x == r),
            "no {r} event on the MCM (events: {reasons:?})"
        );
    }

    // Each spoke gets only its kernels, pinned.
    for (cluster, want) in [
        ("spoke-a", vec![(K1.to_string(), p1.clone())]),
        ("spoke-b", vec![(K2.to_string(), p2.clone())]),
    ] {
        let module = wait_for(env, &format!("ManifestWork on {cluster}"), 60, || async move {
            work_module(env, cluster, name).await
        })
        .await?;
        ensure!(
            mappings(&module) == want,
            "{cluster}: mappings {:?}, want {want:?}",
            mappings(&module)
        );
        let c = &module.spec.module_loader.as_ref().context("loader")?.container;
        ensure!(c.build.is_none() && c.sign.is_none(), "build or sign reached {cluster}");
    }

    // The spokes load it on the right nodes, and the numbers come back.
    let label = ready_label(name);
    for (cluster, want) in [("spoke-a", vec!["a-0", "a-1"]), ("spoke-b", vec!["b-0"])] {
        let client = env.fleet.spoke(cluster).client.clone();
        let label = label.clone();
        wait_for(env, &format!("{label} on {cluster}'s nodes"), 120, || {
            let (client, label, want) = (client.clone(), label.clone(), want.clone());
            async move { Ok((nodes_with_label(&client, &label).await? == want).then_some(())) }
        })
        .await?;
    }
    wait_for(
        env,
        "MCM status with loaded counts from both spokes",
        120,
        || async move {
            let Some(s) = status_of(env, name).await? else {
                return Ok(None);
            };
            let loaded = |c: &str| {
                s.clusters
                    .iter()
                    .find(|x| x.name == c)
                    .and_then(|x| x.module_loader)
                    .map(|l| l.available_number)
            };
            Ok((s.number_desired == 2
                && s.number_applied == 2
                && s.number_degraded == 0
                && loaded("spoke-a") == Some(2)
                && loaded("spoke-b") == Some(1))
            .then_some(()))
        },
    )
    .await?;

    // A second kernel on spoke-a extends its ManifestWork.
    env.fleet.spoke("spoke-a").set_kernel_version("a-1", K3).await?;
    let p3 = pinned_when_ready(env, name, K3).await?;
    let want = vec![(K1.to_string(), p1.clone()), (K3.to_string(), p3.clone())];
    wait_for(env, "spoke-a's ManifestWork with both kernels", 60, || {
        let want = want.clone();
        async move {
            let m = work_module(env, "spoke-a", name).await?;
            Ok(m.filter(|m| mappings(m) == want).map(|_| ()))
        }
    })
    .await?;
    let module = work_module(env, "spoke-b", name).await?.context("spoke-b's work")?;
    ensure!(
        mappings(&module) == vec![(K2.to_string(), p2.clone())],
        "spoke-b changed: {:?}",
        mappings(&module)
    );
    let client_a = env.fleet.spoke("spoke-a").client.clone();
    wait_for(env, "a-1 loaded again on its new kernel", 120, || {
        let (client, label) = (client_a.clone(), label.clone());
        async move { Ok((nodes_with_label(&client, &label).await? == ["a-0", "a-1"]).then_some(())) }
    })
    .await?;

    // Relabelling spoke-b removes its ManifestWork; the spoke unloads.
    label_cluster(env, "spoke-b", SELECT, None).await?;
    wait_for(env, "spoke-b's ManifestWork deleted", 60, || async move {
        Ok(work_module(env, "spoke-b", name).await?.is_none().then_some(()))
    })
    .await?;
    let client_b = env.fleet.spoke("spoke-b").client.clone();
    wait_for(env, "spoke-b's Module gone and b-0 unloaded", 120, || {
        let (client, label) = (client_b.clone(), label.clone());
        async move {
            let modules: Api<Module> = Api::namespaced(client.clone(), SPOKE_NS);
            Ok(
                (modules.get_opt(name).await?.is_none() && nodes_with_label(&client, &label).await?.is_empty())
                    .then_some(()),
            )
        }
    })
    .await?;
    wait_for(env, "MCM status with one cluster", 60, || async move {
        Ok(status_of(env, name)
            .await?
            .filter(|s| s.number_desired == 1)
            .map(|_| ()))
    })
    .await?;

    // Deleting the MCM cleans up everywhere.
    mcms.delete(name, &DeleteParams::foreground()).await?;
    wait_for(env, "spoke-a's ManifestWork deleted with the MCM", 120, || async move {
        Ok(work_module(env, "spoke-a", name).await?.is_none().then_some(()))
    })
    .await?;
    wait_for(env, "spoke-a unloaded everywhere", 120, || {
        let (client, label) = (client_a.clone(), label.clone());
        async move {
            let modules: Api<Module> = Api::namespaced(client.clone(), SPOKE_NS);
            Ok(
                (modules.get_opt(name).await?.is_none() && nodes_with_label(&client, &label).await?.is_empty())
                    .then_some(()),
            )
        }
    })
    .await?;
    Ok(())
}

async fn failures_end_in_a_clear_status(env: Arc<Env>) -> Result<()> {
    let env = env.as_ref();
    let hub = env.fleet.hub_client();
    let registry = env.fleet.registry.as_ref().context("registry")?;
    label_cluster(env, "spoke-a", SELECT_FAIL, Some("yes")).await?;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    // The unsigned image the wrong key is tried on exists.
    for k in [K1, K3] {
        e2e::kmods::push(
            &format!("{}/kmm/wrong-key-unsigned:{k}", registry.host),
            env.fixtures.layers(k)?,
            &registry_auth(),
        )
        .await?;
    }
    let cases = [
        (
            "no-dockerfile",
            json!({
                "modprobe": {"moduleName": "kmm_ci_a"},
                "kernelMappings": [{
                    "regexp": ".*",
                    "containerImage": format!("{}/kmm/no-dockerfile:${{KERNEL_FULL_VERSION}}", registry.host),
                    "registryTLS": {"insecure": true},
                    "build": {"dockerfileConfigMap": {"name": "no-such-dockerfile"}},
                }],
            }),
            vec![
                "build.dockerfileConfigMap".to_string(),
                "no-such-dockerfile".into(),
                "not found".into(),
            ],
        ),
        (
            "wrong-key",
            json!({
                "modprobe": {"moduleName": "kmm_ci_a"},
                "kernelMappings": [{
                    "regexp": ".*",
                    "containerImage": format!("{}/kmm/wrong-key:${{KERNEL_FULL_VERSION}}", registry.host),
                    "registryTLS": {"insecure": true},
                    "sign": {
                        "unsignedImage": format!("{}/kmm/wrong-key-unsigned:${{KERNEL_FULL_VERSION}}", registry.host),
                        "keySecret": {"name": "kmm-wrong-key"},
                        "certSecret": {"name": "kmm-signing-cert"},
                        "filesToSign": ["/opt/lib/modules/${KERNEL_FULL_VERSION}/kmm_ci_a.ko"],
                    },
                }],
            }),
            vec!["sign".to_string(), "kmm-wrong-key".into()],
        ),
        (
            "unreachable",
            json!({
                "modprobe": {"moduleName": "kmm_ci_a"},
                "kernelMappings": [{
                    "regexp": ".*",
                    "containerImage": format!("127.0.0.1:{closed}/kmm/unreachable:v1"),
                    "registryTLS": {"insecure": true},
                }],
            }),
            vec![format!("registry 127.0.0.1:{closed}")],
        ),
    ];
    let mcms: Api<ManagedClusterModule> = Api::all(hub.clone());
    for (name, loader, _) in &cases {
        mcms.create(&PostParams::default(), &mcm(name, SELECT_FAIL, loader.clone())?)
            .await?;
    }
    for (name, _, words) in &cases {
        let status = wait_for(
            env,
            &format!("{name}: a Failed image and Degraded"),
            120,
            || async move {
                let s = status_of(env, name).await?;
                Ok(s.filter(|s| {
                    // Nothing was sent, so upstream's ManifestWork counts are 0; the cluster's
                    // reason and the condition carry the failure.
                    s.number_desired == 0
                        && s.clusters.len() == 1
                        && s.images.iter().any(|i| i.state == "Failed")
                        && shared_api::conditions::is_true(&s.conditions, "Degraded")
                }))
            },
        )
        .await?;
        let img = status
            .images
            .iter()
            .find(|i| i.state == "Failed")
            .context("failed image")?;
        let msg = img.message.clone().unwrap_or_default();
        for w in words {
            ensure!(
                msg.contains(w.as_str()),
                "{name}: image message {msg:?} does not say {w:?}"
            );
        }
        let reason = status.clusters[0].reason.clone().unwrap_or_default();
        ensure!(
            reason.contains(&msg),
            "{name}: cluster reason {reason:?} lacks the image message"
        );
        let work: Api<ManifestWork> = Api::namespaced(hub.clone(), "spoke-a");
        ensure!(
            work.get_opt(name).await?.is_none(),
            "{name}: a ManifestWork was sent without an image"
        );
    }
    let reasons = event_reasons(env, "wrong-key").await?;
    ensure!(
        reasons.iter().any(|r| r == "SignFailed"),
        "no SignFailed event: {reasons:?}"
    );
    for (name, _, _) in &cases {
        mcms.delete(name, &DeleteParams::default()).await?;
    }
    label_cluster(env, "spoke-a", SELECT_FAIL, None).await?;
    Ok(())
}

/// `kubectl apply --server-side` of `obj` as the hub's administrator (a user, as an
/// administrator submits MCMs), through a file as a user would.
async fn apply_as_admin(env: &Env, file: &str, obj: &Value) -> Result<String> {
    let path = env.tmp.join(file);
    std::fs::write(&path, serde_json::to_string_pretty(obj)?)?;
    kubectl(
        &env.kubectl,
        &env.fleet.hub.admin_kubeconfig,
        &["apply", "--server-side", "-f", &path.display().to_string()],
    )
    .await
}

fn is_forbidden<T: std::fmt::Debug>(r: &Result<T, kube::Error>) -> bool {
    matches!(r, Err(kube::Error::Api(s)) if s.code == 403)
}

async fn mcm_webhook_refuses_bad_specs_naming_the_field(env: Arc<Env>) -> Result<()> {
    let env = env.as_ref();
    let name = "t-webhook";
    // Selects no cluster: the webhook is what this is about.
    let good = |spoke_ns: &str, regexp: &str| {
        json!({
            "apiVersion": "hub.kmm.sigs.x-k8s.io/v1beta1",
            "kind": "ManagedClusterModule",
            "metadata": {"name": name},
            "spec": {
                "spokeNamespace": spoke_ns,
                "selector": {"kmm-e2e-webhook": "yes"},
                "moduleSpec": {
                    "selector": {NODE_LABEL: "yes"},
                    "moduleLoader": {"container": {
                        "modprobe": {"moduleName": "kmm_ci_a"},
                        "kernelMappings": [{"regexp": regexp, "containerImage": "registry.e2e.invalid/kmm-ci:v1"}],
                    }},
                }
            }
        })
    };
    let denied = "admission webhook \"vmanagedclustermodule.kb.io\" denied the request";
    // Both pass the CRD's schema; the webhook refuses them, naming the field.
    for (file, obj, field) in [
        (
            "mcm-bad-regexp.yaml",
            good(SPOKE_NS, "^(6\\.1"),
            "spec.moduleSpec.moduleLoader.container.kernelMappings[0].regexp",
        ),
        ("mcm-bad-namespace.yaml", good("Bad_NS", "^6\\."), "spec.spokeNamespace"),
    ] {
        let err = apply_as_admin(env, file, &obj)
            .await
            .err()
            .with_context(|| format!("the API server accepted {file}"))?;
        let text = format!("{err:#}");
        ensure!(text.contains(denied) && text.contains(field), "{file}: {text}");
    }
    let mcms: Api<ManagedClusterModule> = Api::all(env.fleet.hub_client());
    ensure!(
        mcms.get_opt(name).await?.is_none(),
        "a refused ManagedClusterModule was stored"
    );

    // A good one is admitted; moving it to another spoke namespace is not.
    let out = apply_as_admin(env, "mcm-good.yaml", &good(SPOKE_NS, "^6\\.")).await?;
    ensure!(out.contains("serverside-applied"), "{out}");
    let err = apply_as_admin(env, "mcm-moved.yaml", &good("kmm-elsewhere", "^6\\."))
        .await
        .err()
        .context("the API server let spokeNamespace change")?;
    let text = format!("{err:#}");
    ensure!(
        text.contains(denied) && text.contains("spec.spokeNamespace: cannot be changed"),
        "{text}"
    );
    mcms.delete(name, &DeleteParams::default()).await?;
    wait_for(env, &format!("MCM {name} gone"), 60, || {
        let mcms = mcms.clone();
        async move { Ok(mcms.get_opt(name).await?.is_none().then_some(())) }
    })
    .await
}

async fn hub_service_account_is_refused_outside_its_role(env: Arc<Env>) -> Result<()> {
    let env = env.as_ref();
    let c = env.hub_sa.clone();
    // Sanity: the identity works where its role allows.
    Api::<ManagedClusterModule>::all(c.clone())
        .list(&ListParams::default())
        .await
        .context("the hub's ServiceAccount cannot list ManagedClusterModules")?;
    Api::<Secret>::namespaced(c.clone(), HUB_NS)
        .get("kmm-registry")
        .await
        .context("the hub's ServiceAccount cannot read a Secret in its namespace")?;
    // The whole scenario ran as the leader (the manifest's configuration elects one).
    let lease = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(env.fleet.hub_client(), HUB_NS)
        .get(HUB_LEASE)
        .await
        .context("no leader Lease")?;
    let holder = lease.spec.and_then(|s| s.holder_identity);
    ensure!(holder.as_deref() == Some(HUB_POD), "Lease held by {holder:?}");

    let intruder = secret("intruder", &[("x", b"y".to_vec())], None);
    let refused = [
        (
            "create a Secret in default",
            is_forbidden(
                &Api::<Secret>::namespaced(c.clone(), "default")
                    .create(&PostParams::default(), &intruder)
                    .await,
            ),
        ),
        (
            "list Secrets in every namespace",
            is_forbidden(&Api::<Secret>::all(c.clone()).list(&ListParams::default()).await),
        ),
        (
            "delete a Secret in its own namespace",
            is_forbidden(
                &Api::<Secret>::namespaced(c.clone(), HUB_NS)
                    .delete("kmm-registry", &DeleteParams::default())
                    .await,
            ),
        ),
        (
            "label a ManagedCluster",
            is_forbidden(
                &Api::<ManagedCluster>::all(c.clone())
                    .patch(
                        "spoke-a",
                        &PatchParams::default(),
                        &Patch::Merge(json!({"metadata": {"labels": {"intruder": "yes"}}})),
                    )
                    .await,
            ),
        ),
        (
            "create a ManagedClusterModule",
            is_forbidden(
                &Api::<ManagedClusterModule>::all(c.clone())
                    .create(
                        &PostParams::default(),
                        &mcm("intruder", SELECT, json!({"modprobe": {"moduleName": "x"}, "kernelMappings": [{"regexp": ".*", "containerImage": "r/x:1"}]}))?,
                    )
                    .await,
            ),
        ),
        (
            "delete a Node",
            is_forbidden(
                &Api::<Node>::all(c.clone())
                    .delete("hub-builder", &DeleteParams::default())
                    .await,
            ),
        ),
    ];
    let failed: Vec<&str> = refused.iter().filter(|(_, ok)| !ok).map(|(w, _)| *w).collect();
    ensure!(failed.is_empty(), "the hub's ServiceAccount may {failed:?}");
    Ok(())
}

/// The metrics endpoint checks scrapers' tokens with TokenReviews and SubjectAccessReviews made
/// under the hub's ServiceAccount, as the manifest's ClusterRole allows.
async fn hub_metrics_need_a_token_allowed_to_read_them(env: Arc<Env>) -> Result<()> {
    e2e::testkit::check_metrics_auth(
        &env.kubectl,
        &env.fleet.hub.admin_kubeconfig,
        "kmm-hub-metrics-reader",
        env.hub_metrics_port,
        "kmm_hub_builds_total",
    )
    .await
}

/// The hub's log must not show a request the API server refused during the scenario.
/// The ManagedClusterModule samples of `manifests/samples/hub`, one at a time, as a local-fleet
/// user would apply them: the placeholder registry replaced by the fleet's, and because that
/// registry is plain HTTP with a password, `registryTLS.insecure` and the push/pull Secret added
/// where a sample has none. Each loads on every worker node of both spokes and unloads when
/// deleted.
async fn hub_samples_load_on_the_spokes(env: Arc<Env>) -> Result<()> {
    let env = env.as_ref();
    let registry = env.fleet.registry.as_ref().context("registry")?;
    let host = registry.host.clone();
    // What the samples pull: kmod images of the fixture modules for the spokes' kernels (a-1
    // runs K3 since the scenario above).
    for kernel in [K1, K2, K3] {
        for repo in ["kmm-ci-a", "kmm-ci-fw"] {
            e2e::kmods::push(
                &format!("{host}/{repo}:{kernel}"),
                env.fixtures.layers(kernel)?,
                &registry_auth(),
            )
            .await?;
        }
        e2e::kmods::push(
            &format!("{host}/kmm-ci-a:{kernel}-v1"),
            env.fixtures.layers(kernel)?,
            &registry_auth(),
        )
        .await?;
    }
    let hub = env.fleet.hub_client();
    create(
        &Api::<Secret>::namespaced(hub.clone(), HUB_NS),
        &secret(
            "kmm-registry-push",
            &[(".dockerconfigjson", dockerconfigjson(&host).into_bytes())],
            Some("kubernetes.io/dockerconfigjson"),
        ),
    )
    .await?;
    // The samples select clusters labelled kmm-samples=true and their worker nodes.
    for c in ["spoke-a", "spoke-b"] {
        label_cluster(env, c, "kmm-samples", Some("true")).await?;
    }
    let mut workers = Vec::new();
    for s in &env.fleet.spokes {
        // The ServiceAccounts manifests/spoke gives Modules in kmm-system.
        for sa in ["kmm-module-loader", "kmm-device-plugin"] {
            let sa: k8s_openapi::api::core::v1::ServiceAccount =
                serde_json::from_value(json!({"metadata": {"name": sa, "namespace": "kmm-system"}}))?;
            create(&Api::namespaced(s.client.clone(), "kmm-system"), &sa).await?;
        }
        let nodes: Api<Node> = Api::all(s.client.clone());
        for n in nodes.list(&ListParams::default().labels(NODE_LABEL)).await? {
            let patch = json!({"metadata": {"labels": {
                "node-role.kubernetes.io/worker": "",
                "kmm.node.kubernetes.io/version-module.kmm-system.kmm-ci-a-v": "1",
            }}});
            nodes
                .patch(&n.name_any(), &PatchParams::default(), &Patch::Merge(patch))
                .await?;
            workers.push((s.client.clone(), n.name_any()));
        }
    }
    ensure!(workers.len() == 3, "worker nodes: {}", workers.len());

    let mut files: Vec<PathBuf> = std::fs::read_dir(manifests("samples/hub"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    ensure!(files.len() == 6, "hub samples: {files:?}");
    let mcms: Api<ManagedClusterModule> = Api::all(hub.clone());
    for file in files {
        let text = std::fs::read_to_string(&file)?.replace("kmm-registry.local:5000", &host);
        let mut docs = yaml_docs(&text)?;
        let mut names = Vec::new();
        for d in docs.iter_mut().filter(|d| d["kind"] == "ManagedClusterModule") {
            names.push(d["metadata"]["name"].as_str().context("MCM without name")?.to_owned());
            let spec = &mut d["spec"]["moduleSpec"];
            if spec["imageRepoSecret"].is_null() {
                spec["imageRepoSecret"] = json!({"name": "kmm-registry-push"});
            }
            let container = &mut spec["moduleLoader"]["container"];
            container["registryTLS"] = json!({"insecure": true});
            for m in container["kernelMappings"].as_array_mut().into_iter().flatten() {
                if m["sign"].is_object() {
                    m["sign"]["unsignedImageRegistryTLS"] = json!({"insecure": true});
                }
            }
        }
        ensure!(names.len() == 1, "{}: {names:?}", file.display());
        let name = names.remove(0);
        let modified = env.tmp.join(file.file_name().context("file name")?);
        std::fs::write(
            &modified,
            docs.iter()
                .map(serde_json::to_string)
                .collect::<Result<Vec<_>, _>>()?
                .join("\n---\n"),
        )?;
        kubectl(
            &env.kubectl,
            &env.fleet.hub.admin_kubeconfig,
            &["apply", "--server-side", "-f", &modified.display().to_string()],
        )
        .await
        .with_context(|| format!("applying {}", file.display()))?;

        let label = format!("kmm.node.kubernetes.io/kmm-system.{name}.ready");
        let what = format!("{}: {name} loaded on every worker node", file.display());
        wait_for(env, &what, 180, || async {
            if let Some(s) = status_of(env, &name).await?
                && let Some(i) = s.images.iter().find(|i| i.state == "Failed")
            {
                bail!("{name}: image of {} failed: {:?}", i.kernel_version, i.message);
            }
            for (client, node) in &workers {
                let n = Api::<Node>::all(client.clone()).get(node).await?;
                if !n.labels().contains_key(&label) {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        })
        .await?;
        if name == "kmm-ci-a-plugin" {
            for s in &env.fleet.spokes {
                Api::<k8s_openapi::api::apps::v1::DaemonSet>::namespaced(s.client.clone(), "kmm-system")
                    .get(&format!("{name}-device-plugin"))
                    .await
                    .with_context(|| format!("{name}'s device plugin DaemonSet on {}", s.name))?;
            }
        }
        kubectl(
            &env.kubectl,
            &env.fleet.hub.admin_kubeconfig,
            &["delete", "-f", &modified.display().to_string(), "--wait=false"],
        )
        .await?;
        wait_for(env, &format!("{name} unloaded everywhere"), 120, || async {
            if mcms.get_opt(&name).await?.is_some() {
                return Ok(None);
            }
            for (client, node) in &workers {
                let n = Api::<Node>::all(client.clone()).get(node).await?;
                if n.labels().contains_key(&label) {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        })
        .await?;
    }
    for c in ["spoke-a", "spoke-b"] {
        label_cluster(env, c, "kmm-samples", None).await?;
    }
    Ok(())
}

async fn hub_log_shows_no_forbidden_request(env: Arc<Env>) -> Result<()> {
    let log = std::fs::read_to_string(&env.hub_log)?;
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("forbidden") || l.contains("Forbidden"))
        .take(5)
        .collect();
    ensure!(
        refused.is_empty(),
        "kmm-hub was refused requests under its ServiceAccount:\n{}",
        refused.join("\n")
    );
    for line in ["acquired the leader lease", "serving admission webhooks"] {
        ensure!(log.contains(line), "kmm-hub's log lacks {line:?}");
    }
    Ok(())
}

/// Deletes a manifest from the fleet's plain-HTTP registry (`DELETE /v2/<repo>/manifests/<digest>`),
/// as a registry clean-up would: the tag then answers 404.
async fn registry_delete_manifest(host: &str, repo: &str, digest: &str) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASS}"));
    let mut s = tokio::net::TcpStream::connect(host).await?;
    s.write_all(
        format!(
            "DELETE /v2/{repo}/manifests/{digest} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Basic {auth}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    ensure!(
        out.starts_with("HTTP/1.1 202"),
        "deleting {repo}@{digest}: {}",
        out.lines().next().unwrap_or_default()
    );
    Ok(())
}

/// The holder of the hub's leader Lease.
async fn lease_holder(env: &Env) -> Result<Option<String>> {
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(env.fleet.hub_client(), HUB_NS);
    Ok(leases
        .get_opt(HUB_LEASE)
        .await?
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity))
}

/// The hub's dangerous windows, each of which used to take modules away from spoke nodes, walked
/// on the real fleet with a module loaded on every node (spoke-a runs two kernels):
/// - a second replica is Ready while the first holds the lease (readiness is not leadership, so a
///   rolling update completes), and takes over within the lease time when the first is killed;
/// - it starts while its ManagedCluster watch is refused (RBAC not there yet), so its
///   ManifestWork cache fills and its ManagedCluster cache does not: it must not reconcile, where
///   planning over no cluster deleted every ManifestWork;
/// - after the restart one of spoke-a's two images is gone from the registry: its ManifestWork
///   is held as it was (a Module with one kernel would unload the other kernel's node), and the
///   status names the image; when the image is back nothing is rewritten.
///
/// Throughout, every node keeps its ready label and no ManifestWork is rewritten or deleted; the
/// new leader runs no second build of an image the first built.
async fn restart_takeover_and_a_late_cache_never_take_a_module_away(env: Arc<Env>) -> Result<()> {
    let env = env.as_ref();
    let hub = env.fleet.hub_client();
    let registry = env.fleet.registry.as_ref().context("registry")?;
    let host = registry.host.clone();
    let (name, select) = ("kmm-ci-keep", "kmm-e2e-keep");

    // spoke-a: a-0 on K1, a-1 on K3; spoke-b: b-0 on K2, whose image the hub builds.
    env.fleet.spoke("spoke-a").set_kernel_version("a-1", K3).await?;
    let mut digests = std::collections::BTreeMap::new();
    for k in [K1, K3] {
        let d = e2e::kmods::push(
            &format!("{host}/kmm/keep:{k}"),
            env.fixtures.layers(k)?,
            &registry_auth(),
        )
        .await?;
        digests.insert(k, d);
    }
    for c in ["spoke-a", "spoke-b"] {
        label_cluster(env, c, select, Some("yes")).await?;
    }
    let m = mcm(
        name,
        select,
        json!({
            "modprobe": {"moduleName": "kmm_ci_a"},
            "registryTLS": {"insecure": true},
            "kernelMappings": [
                {
                    "literal": K2,
                    "containerImage": format!("{host}/kmm/keep-built:${{KERNEL_FULL_VERSION}}"),
                    "build": {"dockerfileConfigMap": {"name": "kmm-ci-dockerfile"}},
                },
                {"regexp": "^6\\.1\\.0-.*$", "containerImage": format!("{host}/kmm/keep:${{KERNEL_FULL_VERSION}}")},
            ],
        }),
    )?;
    let mcms: Api<ManagedClusterModule> = Api::all(hub.clone());
    mcms.create(&PostParams::default(), &m).await?;
    let label = ready_label(name);
    let everywhere: [(&str, Vec<&str>); 2] = [("spoke-a", vec!["a-0", "a-1"]), ("spoke-b", vec!["b-0"])];
    for (cluster, want) in &everywhere {
        let client = env.fleet.spoke(cluster).client.clone();
        let label = label.clone();
        wait_for(env, &format!("{label} on {cluster}'s nodes"), 180, || {
            let (client, label, want) = (client.clone(), label.clone(), want.clone());
            async move { Ok((nodes_with_label(&client, &label).await? == want).then_some(())) }
        })
        .await?;
    }
    let a = work_module(env, "spoke-a", name)
        .await?
        .context("spoke-a's ManifestWork")?;
    ensure!(
        mappings(&a).iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>() == [K1, K3],
        "spoke-a's Module: {:?}",
        mappings(&a)
    );
    let generation = |cluster: &'static str| {
        let hub = hub.clone();
        async move {
            let api: Api<ManifestWork> = Api::namespaced(hub, cluster);
            Ok::<_, anyhow::Error>(api.get_opt(name).await?.and_then(|w| w.metadata.generation))
        }
    };
    let before = (generation("spoke-a").await?, generation("spoke-b").await?);
    ensure!(before.0.is_some() && before.1.is_some(), "ManifestWorks: {before:?}");
    let builds = || async {
        let events: Api<Event> = Api::all(env.fleet.hub_client());
        Ok::<i32, anyhow::Error>(
            events
                .list(&ListParams::default())
                .await?
                .into_iter()
                .filter(|e| {
                    e.involved_object.name.as_deref() == Some(name) && e.reason.as_deref() == Some("BuildCreated")
                })
                .map(|e| e.count.unwrap_or(1).max(1))
                .sum(),
        )
    };
    ensure!(builds().await? == 1, "one build for K2, not {}", builds().await?);

    // From here on, watch every node and both ManifestWorks.
    let violations = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let monitor = {
        let (violations, stop, label) = (violations.clone(), stop.clone(), label.clone());
        let spokes: Vec<(String, Client, Vec<String>)> = everywhere
            .iter()
            .map(|(c, want)| {
                (
                    c.to_string(),
                    env.fleet.spoke(c).client.clone(),
                    want.iter().map(|s| s.to_string()).collect(),
                )
            })
            .collect();
        let hub = hub.clone();
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                for (cluster, client, want) in &spokes {
                    match nodes_with_label(client, &label).await {
                        Ok(have) if &have != want => violations
                            .lock()
                            .unwrap()
                            .push(format!("{cluster}: ready on {have:?}, want {want:?}")),
                        _ => {}
                    }
                    let api: Api<ManifestWork> = Api::namespaced(hub.clone(), cluster);
                    match api.get_opt(name).await {
                        Ok(None) => violations
                            .lock()
                            .unwrap()
                            .push(format!("{cluster}: ManifestWork deleted")),
                        Ok(Some(w)) if w.metadata.deletion_timestamp.is_some() => violations
                            .lock()
                            .unwrap()
                            .push(format!("{cluster}: ManifestWork being deleted")),
                        Ok(Some(w)) => {
                            let want = if cluster == "spoke-a" { before.0 } else { before.1 };
                            if w.metadata.generation != want {
                                violations.lock().unwrap().push(format!(
                                    "{cluster}: ManifestWork rewritten (generation {:?}, was {want:?})",
                                    w.metadata.generation
                                ));
                            }
                        }
                        Err(_) => {}
                    }
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };

    // A second replica is Ready while the first holds the lease.
    let standby = spawn_hub(
        &env.fleet,
        &env.tmp,
        &env.hub_certs,
        &env.hub_sa_kubeconfig,
        "kmm-hub-standby",
        "kmm-hub-standby",
    )?;
    let port = standby.health;
    wait_for(env, "the standby kmm-hub Ready", 60, || async move {
        Ok(http_get(port, "/readyz")
            .await
            .is_ok_and(|b| b.starts_with("HTTP/1.1 200"))
            .then_some(()))
    })
    .await?;
    ensure!(
        lease_holder(env).await?.as_deref() == Some(HUB_POD),
        "the standby is Ready, but the lease is not the first replica's"
    );

    // The ManagedCluster watch of the next leader is refused; one image of spoke-a is deleted.
    let roles: Api<k8s_openapi::api::rbac::v1::ClusterRole> = Api::all(hub.clone());
    let mut role = roles.get("kmm-hub-manager").await?;
    let rules = role.rules.take().unwrap_or_default();
    let kept: Vec<_> = rules
        .into_iter()
        .filter(|r| !r.resources.iter().flatten().any(|x| x == "managedclusters"))
        .collect();
    role.rules = Some(kept);
    role.metadata.managed_fields = None;
    roles.replace("kmm-hub-manager", &PostParams::default(), &role).await?;
    let k3_digest = digests[K3].clone();
    registry_delete_manifest(&host, "kmm/keep", &k3_digest).await?;

    // The leader dies without a word; the standby takes over within the lease time.
    env.fleet.kill_process(&env.hub_process)?;
    wait_for(env, "the standby holding the lease (15 s lease)", 25, || async move {
        Ok((lease_holder(env).await?.as_deref() == Some("kmm-hub-standby")).then_some(()))
    })
    .await?;
    let log = standby.log.clone();
    wait_for(env, "the standby's ManagedCluster watch refused", 60, || {
        let log = log.clone();
        async move {
            let text = std::fs::read_to_string(&log)?;
            Ok(text
                .lines()
                .any(|l| l.contains("managedclusters") && l.to_lowercase().contains("forbidden"))
                .then_some(()))
        }
    })
    .await?;
    // Its ManifestWork cache is full, its ManagedCluster cache empty: give a reconcile the time
    // it would need to do damage.
    tokio::time::sleep(Duration::from_secs(10)).await;
    ensure!(
        !std::fs::read_to_string(&standby.log)?.contains("caches synced"),
        "the standby reconciled without its ManagedCluster cache"
    );

    // RBAC arrives: the standby syncs, and holds spoke-a's ManifestWork while K3's image is gone.
    kubectl(
        &env.kubectl,
        &env.fleet.hub.admin_kubeconfig,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            &manifests("hub/rbac.yaml").display().to_string(),
        ],
    )
    .await
    .context("restoring manifests/hub/rbac.yaml")?;
    // (Right after the restart both of spoke-a's images are Pending, and it is held already.)
    let missing = format!("image {host}/kmm/keep:{K3} (kernel {K3}) is Missing");
    let held = wait_for(env, "spoke-a held, naming K3's missing image", 120, || {
        let missing = missing.clone();
        async move {
            let s = status_of(env, name).await?;
            Ok(s.and_then(|s| s.clusters.into_iter().find(|c| c.name == "spoke-a"))
                .filter(|c| c.reason.as_deref().is_some_and(|r| r.contains(&missing))))
        }
    })
    .await?;
    let reason = held.reason.clone().unwrap_or_default();
    ensure!(
        reason.contains("keeps its last applied content") && !reason.contains(&format!("keep:{K1} (kernel {K1}) is")),
        "spoke-a's reason: {reason}"
    );
    ensure!(held.rendered_kernels == [K1, K3], "spoke-a's status: {held:?}");

    // The image is pushed again (same content, same digest): spoke-a is whole, nothing rewritten.
    let again = e2e::kmods::push(
        &format!("{host}/kmm/keep:{K3}"),
        env.fixtures.layers(K3)?,
        &registry_auth(),
    )
    .await?;
    ensure!(again == k3_digest, "re-push gave another digest");
    wait_for(env, "spoke-a no longer held", 120, || async move {
        let s = status_of(env, name).await?;
        Ok(s.and_then(|s| s.clusters.into_iter().find(|c| c.name == "spoke-a"))
            .filter(|c| c.reason.is_none() && c.applied)
            .map(|_| ()))
    })
    .await?;
    stop.cancel();
    monitor.await?;
    let seen = violations.lock().unwrap().clone();
    ensure!(
        seen.is_empty(),
        "a module was taken away: {:?}",
        &seen[..seen.len().min(5)]
    );
    ensure!(builds().await? == 1, "the new leader built K2's image again");
    ensure!(
        (generation("spoke-a").await?, generation("spoke-b").await?) == before,
        "a ManifestWork was rewritten"
    );

    mcms.delete(name, &DeleteParams::default()).await?;
    for (cluster, _) in &everywhere {
        let client = env.fleet.spoke(cluster).client.clone();
        let label = label.clone();
        wait_for(env, &format!("{name} unloaded on {cluster}"), 120, || {
            let (client, label) = (client.clone(), label.clone());
            async move { Ok(nodes_with_label(&client, &label).await?.is_empty().then_some(())) }
        })
        .await?;
    }
    for c in ["spoke-a", "spoke-b"] {
        label_cluster(env, c, select, None).await?;
    }
    Ok(())
}
