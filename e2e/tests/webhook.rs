//! Admission webhooks, the configuration file and authenticated metrics on a real API server.
//!
//! One control plane for this file, our CRDs installed, and the real `kmm-spoke` started with a
//! configuration file: webhook on 127.0.0.1 with a certificate from a test CA, metrics over HTTPS
//! (self-signed) behind TokenReview and SubjectAccessReview. A ValidatingWebhookConfiguration
//! points the API server at it, and `kubectl` submits the objects, so what is checked is what an
//! administrator sees. The hub's ManagedClusterModule webhook is served in-process from
//! `kmm_runtime::admission::hub_routes()` (the router `kmm-hub run` serves) and registered the
//! same way.

use e2e::testkit::{http_get, our_binary};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use base64::Engine as _;
use e2e::KubeCluster;
use e2e::bins::Bins;
use e2e::certs::{self, Ca};
use e2e::proc::{Spawn, Supervisor};
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use libtest_mimic::{Arguments, Failed, Trial};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use shared_api::labels::CONTAINS_MODULES_LABEL;
use shared_api::module::Module;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_secs(90);
const MANAGER: &str = "kmm-e2e";

struct Env {
    cluster: KubeCluster,
    sup: Arc<Supervisor>,
    kubectl: PathBuf,
    ca: Ca,
    /// The spoke's webhook certificate directory (`webhook.certDir`).
    cert_dir: PathBuf,
    webhook_port: u16,
    metrics_port: u16,
    /// Keeps the in-process hub webhook server running.
    _hub_webhook: CancellationToken,
}

type TestFn = fn(Arc<Env>) -> Pin<Box<dyn Future<Output = Result<()>> + Send>>;

macro_rules! tests {
    ($($name:ident),* $(,)?) => {
        vec![$((stringify!($name), (|e| Box::pin($name(e))) as TestFn)),*]
    };
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn webhook(name: &str, port: u16, path: &str, ca: &Ca, rules: Value) -> Value {
    json!({
        "name": name,
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "failurePolicy": "Fail",
        "timeoutSeconds": 10,
        "clientConfig": {"url": format!("https://127.0.0.1:{port}{path}"), "caBundle": b64(&ca.cert_pem)},
        "rules": rules
    })
}

/// The `namespaceSelector` of the namespace-deletion webhook in the shipped manifests.
fn manifest_namespace_selector() -> Result<Value> {
    let text = std::fs::read_to_string(e2e::testkit::manifests("spoke/base/webhook.yaml"))?;
    let docs = e2e::testkit::yaml_docs(&text)?;
    docs.iter()
        .filter(|d| d["kind"] == "ValidatingWebhookConfiguration")
        .flat_map(|d| d["webhooks"].as_array().cloned().unwrap_or_default())
        .find(|w| w["clientConfig"]["service"]["path"] == kmm_runtime::admission::NAMESPACE_PATH)
        .map(|w| w["namespaceSelector"].clone())
        .filter(|s| !s.is_null())
        .context("no namespace webhook with a namespaceSelector in manifests/spoke/base/webhook.yaml")
}

fn rule(group: &str, version: &str, resource: &str, ops: &[&str], scope: &str) -> Value {
    json!([{"apiGroups": [group], "apiVersions": [version], "resources": [resource], "operations": ops, "scope": scope}])
}

async fn start() -> Result<Env> {
    let bins = Bins::locate()?;
    let dir = PathBuf::from(concat!(env!("CARGO_TARGET_TMPDIR"), "/kmm-e2e/webhook-tests"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let sup = Arc::new(Supervisor::new(&dir)?);
    let cluster = KubeCluster::start(sup.clone(), &bins, "webhook", &dir.join("cluster")).await?;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    cluster.install_crds(&repo.join("manifests/crds")).await?;
    cluster.install_crds(&repo.join("e2e/crds/spoke")).await?;
    cluster.ensure_namespace("kmm-system").await?;

    // The spoke: webhook certificate from a test CA, metrics self-signed, everything on loopback.
    let ca = Ca::new("webhook-ca")?;
    let cert_dir = dir.join("webhook-certs");
    let pair = ca.server("kmm-webhook", &["127.0.0.1", "localhost"])?;
    certs::write(&cert_dir.join("tls.crt"), &pair.cert_pem)?;
    certs::write(&cert_dir.join("tls.key"), &pair.key_pem)?;
    let (health, webhook_port, metrics_port) = (e2e::net::free_port()?, e2e::net::free_port()?, e2e::net::free_port()?);
    let config = certs::write(
        &dir.join("kmm-spoke.yaml"),
        &format!(
            "healthProbeBindAddress: 127.0.0.1:{health}\n\
             leaderElection:\n  enabled: true\n  resourceID: kmm-e2e-webhook\n\
             webhook:\n  disableHTTP2: true\n  host: 127.0.0.1\n  port: {webhook_port}\n  certDir: {}\n\
             metrics:\n  enableAuthnAuthz: true\n  secureServing: true\n  bindAddress: 127.0.0.1:{metrics_port}\n  certDir: \"\"\n\
             worker:\n  runAsUser: 0\n  seLinuxType: spc_t\n",
            cert_dir.display()
        ),
    )?;
    let spoke = our_binary("kmm-spoke")?;
    sup.spawn(
        Spawn::new("kmm-spoke", &spoke)
            .args([
                "run",
                "--namespace=kmm-system",
                "--worker-image=kmm-worker:e2e",
                "--webhook=on",
            ])
            .env("KMM_CONFIG", config.display().to_string())
            .env("KUBECONFIG", cluster.admin_kubeconfig.display().to_string())
            .env(
                "RUST_LOG",
                std::env::var("KMM_E2E_SPOKE_LOG").unwrap_or_else(|_| "info".into()),
            ),
    )?;
    cluster
        .wait("kmm-spoke ready", TIMEOUT, || async move {
            Ok(http_get(health, "/readyz")
                .await
                .is_ok_and(|r| r.starts_with("HTTP/1.1 200"))
                .then_some(()))
        })
        .await?;

    // The hub's router, served in-process on its own port with the same certificate.
    let hub_port = e2e::net::free_port()?;
    let hub_webhook = CancellationToken::new();
    let hub_cfg = kmm_runtime::config::Webhook {
        host: std::net::Ipv4Addr::LOCALHOST.into(),
        port: hub_port,
        cert_dir: cert_dir.clone(),
        ..Default::default()
    };
    kmm_runtime::webhook::serve(&hub_cfg, kmm_runtime::admission::hub_routes(), hub_webhook.clone()).await?;

    use kmm_runtime::admission::{MCM_PATH, MODULE_PATH, NAMESPACE_PATH, PREFLIGHT_PATH};
    let mut namespace_webhook = webhook(
        "namespace-deletion.kmm.sigs.x-k8s.io",
        webhook_port,
        NAMESPACE_PATH,
        &ca,
        rule("", "v1", "namespaces", &["DELETE"], "Cluster"),
    );
    namespace_webhook["namespaceSelector"] = manifest_namespace_selector()?;
    let config = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "kmm-e2e"},
        "webhooks": [
            webhook("vmodule.kmm.sigs.x-k8s.io", webhook_port, MODULE_PATH, &ca,
                rule("kmm.sigs.x-k8s.io", "v1beta1", "modules", &["CREATE", "UPDATE"], "Namespaced")),
            webhook("vpreflightvalidation.kmm.sigs.x-k8s.io", webhook_port, PREFLIGHT_PATH, &ca,
                rule("kmm.sigs.x-k8s.io", "v1beta2", "preflightvalidations", &["CREATE", "UPDATE"], "Cluster")),
            namespace_webhook,
            webhook("vmanagedclustermodule.hub.kmm.sigs.x-k8s.io", hub_port, MCM_PATH, &ca,
                rule("hub.kmm.sigs.x-k8s.io", "v1beta1", "managedclustermodules", &["CREATE", "UPDATE"], "Cluster")),
        ]
    });
    Api::<ValidatingWebhookConfiguration>::all(cluster.client.clone())
        .patch("kmm-e2e", &PatchParams::apply(MANAGER).force(), &Patch::Apply(config))
        .await
        .context("registering the webhooks")?;

    let env = Env {
        cluster,
        sup,
        kubectl: bins.path("kubectl"),
        ca,
        cert_dir,
        webhook_port,
        metrics_port,
        _hub_webhook: hub_webhook,
    };
    // The API server picks the configuration up asynchronously: wait until a bad object is
    // refused by our webhooks (server-side dry run, so nothing is created).
    env.cluster
        .wait("the API server calls the webhooks", TIMEOUT, || {
            let env = &env;
            async move {
                let m = module("default", "probe", "r/untagged");
                let out = env.kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&m)).await?;
                let mcm = mcm("probe", "kmm", "r/untagged");
                let hub = env
                    .kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&mcm))
                    .await?;
                Ok((out.denied_by("vmodule.kmm.sigs.x-k8s.io")
                    && hub.denied_by("vmanagedclustermodule.hub.kmm.sigs.x-k8s.io"))
                .then_some(()))
            }
        })
        .await?;
    Ok(env)
}

struct Output {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Output {
    fn denied_by(&self, webhook: &str) -> bool {
        !self.ok
            && self
                .stderr
                .contains(&format!("admission webhook \"{webhook}\" denied the request"))
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ok={} stdout={:?} stderr={:?}", self.ok, self.stdout, self.stderr)
    }
}

impl Env {
    /// Runs kubectl as cluster admin, with `stdin` as JSON input.
    async fn kubectl(&self, args: &[&str], stdin: Option<&Value>) -> Result<Output> {
        let mut child = tokio::process::Command::new(&self.kubectl)
            .args(args)
            .env("KUBECONFIG", &self.cluster.admin_kubeconfig)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("running kubectl")?;
        let mut input = child.stdin.take().context("kubectl stdin")?;
        if let Some(v) = stdin {
            input.write_all(serde_json::to_string(v)?.as_bytes()).await?;
        }
        drop(input);
        let out = child.wait_with_output().await?;
        Ok(Output {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into(),
            stderr: String::from_utf8_lossy(&out.stderr).into(),
        })
    }

    async fn apply(&self, obj: &Value) -> Result<Output> {
        self.kubectl(&["apply", "-f", "-"], Some(obj)).await
    }
}

fn module(ns: &str, name: &str, image: &str) -> Value {
    json!({
        "apiVersion": "kmm.sigs.x-k8s.io/v1beta1",
        "kind": "Module",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "selector": {"e2e/webhook": name},
            "moduleLoader": {"container": {
                "modprobe": {"moduleName": "kmm_ci_a"},
                "kernelMappings": [{"regexp": "^.+$", "containerImage": image}]
            }}
        }
    })
}

fn mcm(name: &str, spoke_ns: &str, image: &str) -> Value {
    json!({
        "apiVersion": "hub.kmm.sigs.x-k8s.io/v1beta1",
        "kind": "ManagedClusterModule",
        "metadata": {"name": name},
        "spec": {
            "spokeNamespace": spoke_ns,
            "selector": {"env": "e2e"},
            "moduleSpec": module("x", "x", image)["spec"]
        }
    })
}

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let tests = tests![
        bad_module_is_rejected_naming_the_fields,
        good_module_is_accepted_and_bad_updates_rejected,
        namespace_holding_modules_cannot_be_deleted,
        a_spoke_that_is_down_blocks_no_namespace_without_modules,
        bad_preflight_validation_is_rejected,
        mcm_webhook_rejects_bad_specs_and_spoke_namespace_changes,
        rotated_certificate_is_presented,
        metrics_need_a_token_allowed_to_get_metrics,
        invalid_config_stops_the_start_naming_the_key,
        upstream_corpus_gets_upstreams_verdicts,
        unknown_variables_are_accepted_with_a_warning,
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
                let logs = env.sup.log_dir();
                rt.block_on(async {
                    match tokio::time::timeout(Duration::from_secs(180), f(env.clone())).await {
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

// ------------------------------------------------------------------ tests

async fn bad_module_is_rejected_naming_the_fields(env: Arc<Env>) -> Result<()> {
    let ns = "t-bad-module";
    env.cluster.ensure_namespace(ns).await?;
    let mut m = module(ns, "bad", "registry.example/kmm-ci-a");
    m["spec"]["moduleLoader"]["container"]["kernelMappings"]
        .as_array_mut()
        .context("mappings")?
        .push(json!({"regexp": "^(6.1", "containerImage": "r/m:1"}));
    let out = env.apply(&m).await?;
    ensure!(out.denied_by("vmodule.kmm.sigs.x-k8s.io"), "{out}");
    ensure!(out.stderr.starts_with("Error from server (Forbidden)"), "{out}");
    let at = "spec.moduleLoader.container.kernelMappings";
    for want in [
        format!(
            "Module {ns}/bad is invalid: {at}[0].containerImage: \"registry.example/kmm-ci-a\" must carry a tag or a digest"
        ),
        format!("{at}[1].regexp: \"^(6.1\" is not a valid regular expression"),
    ] {
        ensure!(out.stderr.contains(&want), "kubectl did not show {want:?}: {out}");
    }
    let api: Api<Module> = Api::namespaced(env.cluster.client.clone(), ns);
    ensure!(api.get_opt("bad").await?.is_none(), "the rejected Module exists");
    Ok(())
}

async fn good_module_is_accepted_and_bad_updates_rejected(env: Arc<Env>) -> Result<()> {
    let ns = "t-good-module";
    env.cluster.ensure_namespace(ns).await?;
    let good = module(ns, "good", "registry.example/kmm-ci-a:${KERNEL_FULL_VERSION}");
    let out = env.apply(&good).await?;
    ensure!(out.ok, "{out}");
    ensure!(out.stdout.contains("module.kmm.sigs.x-k8s.io/good created"), "{out}");

    // An update that breaks the spec is refused; the stored object stays as it was.
    let mut bad = good.clone();
    bad["spec"]["moduleLoader"]["container"]["modprobe"]["dirName"] = json!("lib/modules");
    let out = env.apply(&bad).await?;
    ensure!(out.denied_by("vmodule.kmm.sigs.x-k8s.io"), "{out}");
    ensure!(
        out.stderr
            .contains("spec.moduleLoader.container.modprobe.dirName: \"lib/modules\" must be an absolute path"),
        "{out}"
    );
    let api: Api<Module> = Api::namespaced(env.cluster.client.clone(), ns);
    let stored = api.get("good").await?;
    ensure!(stored.spec.module_loader.context("loader")?.container.modprobe.dir_name == "/opt");

    // A valid update passes.
    let mut better = good.clone();
    better["spec"]["moduleLoader"]["container"]["modprobe"]["parameters"] = json!(["debug=1"]);
    let out = env.apply(&better).await?;
    ensure!(out.ok && out.stdout.contains("configured"), "{out}");
    Ok(())
}

async fn namespace_holding_modules_cannot_be_deleted(env: Arc<Env>) -> Result<()> {
    let ns = "t-namespace";
    env.cluster.ensure_namespace(ns).await?;
    for name in ["m-b", "m-a"] {
        let out = env.apply(&module(ns, name, "r/m:1")).await?;
        ensure!(out.ok, "{out}");
    }
    // The spoke labels the namespace as upstream KMM does; the webhook selects on that label.
    wait_namespace_label(&env, ns, true).await?;
    let out = env.kubectl(&["delete", "namespace", ns, "--wait=false"], None).await?;
    ensure!(out.denied_by("namespace-deletion.kmm.sigs.x-k8s.io"), "{out}");
    ensure!(
        out.stderr.contains(&format!(
            "namespace {ns} still holds Modules (m-a, m-b); delete them first"
        )),
        "{out}"
    );

    // Once the Modules are gone (the spoke releases their finalizers), the namespace can go.
    let out = env
        .kubectl(&["delete", "modules", "--all", "-n", ns, "--wait=true"], None)
        .await?;
    ensure!(out.ok, "{out}");
    let api: Api<Module> = Api::namespaced(env.cluster.client.clone(), ns);
    env.cluster
        .wait("the Modules are deleted", TIMEOUT, || {
            let api = api.clone();
            async move {
                Ok(api
                    .list_metadata(&Default::default())
                    .await?
                    .items
                    .is_empty()
                    .then_some(()))
            }
        })
        .await?;
    // The last Module gone, the label goes too.
    wait_namespace_label(&env, ns, false).await?;
    let out = env.kubectl(&["delete", "namespace", ns, "--wait=false"], None).await?;
    ensure!(out.ok, "{out}");
    Ok(())
}

/// Waits until namespace `ns` carries (`true`) or lacks the contains-modules label.
async fn wait_namespace_label(env: &Env, ns: &str, present: bool) -> Result<()> {
    let api: Api<Namespace> = Api::all(env.cluster.client.clone());
    let what = format!(
        "{ns} {} {CONTAINS_MODULES_LABEL}",
        if present { "labelled" } else { "not labelled" }
    );
    env.cluster
        .wait(&what, TIMEOUT, || {
            let api = api.clone();
            async move {
                let ns = api.get(ns).await?;
                Ok((ns.labels().contains_key(CONTAINS_MODULES_LABEL) == present).then_some(()))
            }
        })
        .await
}

/// The manifest's namespace webhook, served by a spoke that is down (nothing listens on its
/// port): a namespace that holds Modules is kept, as it must be, and every other namespace is
/// deleted as if no KMM were installed.
async fn a_spoke_that_is_down_blocks_no_namespace_without_modules(env: Arc<Env>) -> Result<()> {
    let (with, without) = ("t-down-with", "t-down-without");
    for ns in [with, without] {
        env.cluster.ensure_namespace(ns).await?;
    }
    let out = env.apply(&module(with, "m", "r/m:1")).await?;
    ensure!(out.ok, "{out}");
    wait_namespace_label(&env, with, true).await?;

    let dead = e2e::net::free_port()?;
    let mut hook = webhook(
        "down.namespace-deletion.kmm.sigs.x-k8s.io",
        dead,
        kmm_runtime::admission::NAMESPACE_PATH,
        &env.ca,
        rule("", "v1", "namespaces", &["DELETE"], "Cluster"),
    );
    // The manifest's selector, narrowed to this test's namespaces so the other trials never
    // meet the dead backend.
    let mut selector = manifest_namespace_selector()?;
    selector["matchExpressions"] =
        json!([{"key": "kubernetes.io/metadata.name", "operator": "In", "values": [with, without]}]);
    hook["namespaceSelector"] = selector;
    hook["timeoutSeconds"] = json!(2);
    let name = "kmm-e2e-spoke-down";
    let config = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [hook]
    });
    let hooks: Api<ValidatingWebhookConfiguration> = Api::all(env.cluster.client.clone());
    hooks
        .patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(config))
        .await?;
    // In effect once deleting the labelled namespace fails for the dead backend.
    env.cluster
        .wait("the down webhook is in effect", TIMEOUT, || async {
            let out = env
                .kubectl(&["delete", "namespace", with, "--wait=false", "--dry-run=server"], None)
                .await?;
            let failed = "failed calling webhook \"down.namespace-deletion.kmm.sigs.x-k8s.io\"";
            Ok((!out.ok && out.stderr.contains(failed)).then_some(()))
        })
        .await?;
    let out = env
        .kubectl(&["delete", "namespace", without, "--wait=false"], None)
        .await?;
    ensure!(
        out.ok,
        "a namespace without Modules was held by a spoke that is down: {out}"
    );
    hooks.delete(name, &Default::default()).await?;
    let out = env
        .kubectl(&["delete", "modules", "--all", "-n", with, "--wait=true"], None)
        .await?;
    ensure!(out.ok, "{out}");
    Ok(())
}

async fn bad_preflight_validation_is_rejected(env: Arc<Env>) -> Result<()> {
    let pv = |name: &str, kernel: &str| {
        json!({
            "apiVersion": "kmm.sigs.x-k8s.io/v1beta2",
            "kind": "PreflightValidation",
            "metadata": {"name": name},
            "spec": {"kernelVersion": kernel}
        })
    };
    let out = env.apply(&pv("pv-bad", "latest")).await?;
    ensure!(out.denied_by("vpreflightvalidation.kmm.sigs.x-k8s.io"), "{out}");
    ensure!(
        out.stderr.contains(
            "PreflightValidation pv-bad is invalid: spec.kernelVersion: \"latest\" does not start with a version number"
        ),
        "{out}"
    );
    let out = env.apply(&pv("pv-good", "6.1.0-28-amd64")).await?;
    ensure!(out.ok, "{out}");
    Ok(())
}

async fn mcm_webhook_rejects_bad_specs_and_spoke_namespace_changes(env: Arc<Env>) -> Result<()> {
    let out = env.apply(&mcm("mcm-bad", "kmm", "r/untagged")).await?;
    ensure!(out.denied_by("vmanagedclustermodule.hub.kmm.sigs.x-k8s.io"), "{out}");
    ensure!(
        out.stderr.contains(
            "ManagedClusterModule mcm-bad is invalid: spec.moduleSpec.moduleLoader.container.kernelMappings[0].containerImage"
        ),
        "{out}"
    );
    let good = mcm("mcm-good", "kmm", "r/m:${KERNEL_XYZ}");
    let out = env.apply(&good).await?;
    ensure!(out.ok, "{out}");
    let mut moved = good.clone();
    moved["spec"]["spokeNamespace"] = json!("elsewhere");
    let out = env.apply(&moved).await?;
    ensure!(out.denied_by("vmanagedclustermodule.hub.kmm.sigs.x-k8s.io"), "{out}");
    ensure!(
        out.stderr
            .contains("spec.spokeNamespace: cannot be changed (from \"kmm\" to \"elsewhere\")"),
        "{out}"
    );
    Ok(())
}

/// Connects to 127.0.0.1:`port` trusting `ca`, and returns the leaf certificate shown.
async fn presented_certificate(port: u16, ca_pem: &str) -> Result<Vec<u8>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes())?)?;
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("127.0.0.1")?, tcp)
        .await?;
    let leaf = tls.get_ref().1.peer_certificates().context("no certificate")?[0].to_vec();
    Ok(leaf)
}

async fn rotated_certificate_is_presented(env: Arc<Env>) -> Result<()> {
    let before = std::fs::read_to_string(env.cert_dir.join("tls.crt"))?;
    let shown = presented_certificate(env.webhook_port, &env.ca.cert_pem).await?;
    ensure!(shown == CertificateDer::from_pem_slice(before.as_bytes())?.to_vec());

    // As a Secret volume update does: new files swapped in by rename.
    let next = env.ca.server("kmm-webhook", &["127.0.0.1", "localhost"])?;
    for (file, pem) in [("tls.key", &next.key_pem), ("tls.crt", &next.cert_pem)] {
        let tmp = env.cert_dir.join(format!(".{file}.new"));
        std::fs::write(&tmp, pem)?;
        std::fs::rename(&tmp, env.cert_dir.join(file))?;
    }
    let shown = presented_certificate(env.webhook_port, &env.ca.cert_pem).await?;
    ensure!(
        shown == CertificateDer::from_pem_slice(next.cert_pem.as_bytes())?.to_vec(),
        "the webhook still presents the old certificate"
    );
    // And the API server keeps calling it successfully.
    let out = env
        .kubectl(
            &["apply", "--dry-run=server", "-f", "-"],
            Some(&module("default", "after-rotation", "r/untagged")),
        )
        .await?;
    ensure!(out.denied_by("vmodule.kmm.sigs.x-k8s.io"), "{out}");
    Ok(())
}

/// Accepts any server certificate: the metrics certificate is self-signed, as scrapers are
/// told to expect (`insecureSkipVerify`).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// GET /metrics over HTTPS; returns the status code and the body.
async fn scrape(port: u16, token: Option<&str>) -> Result<(u16, String)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("127.0.0.1")?, tcp)
        .await?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    tls.write_all(format!("GET /metrics HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    tls.read_to_string(&mut out).await?;
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP response: {out:?}"))?;
    Ok((code, out))
}

async fn metrics_need_a_token_allowed_to_get_metrics(env: Arc<Env>) -> Result<()> {
    let ns = "t-metrics";
    env.cluster.ensure_namespace(ns).await?;
    let objects = json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "scraper", "namespace": ns}},
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "nobody", "namespace": ns}},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
             "metadata": {"name": "kmm-e2e-metrics-reader"},
             "rules": [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": "kmm-e2e-metrics-reader"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kmm-e2e-metrics-reader"},
             "subjects": [{"kind": "ServiceAccount", "name": "scraper", "namespace": ns}]}
        ]
    });
    let out = env.apply(&objects).await?;
    ensure!(out.ok, "{out}");
    let token = |sa: &'static str| {
        let env = env.clone();
        async move {
            let out = env.kubectl(&["create", "token", sa, "-n", ns], None).await?;
            ensure!(out.ok, "{out}");
            Ok::<_, anyhow::Error>(out.stdout.trim().to_string())
        }
    };
    let (scraper, nobody) = (token("scraper").await?, token("nobody").await?);

    let (code, body) = scrape(env.metrics_port, None).await?;
    ensure!(code == 401, "without a token: {body}");
    let (code, body) = scrape(env.metrics_port, Some("not-a-token")).await?;
    ensure!(code == 401, "with an invalid token: {body}");
    let (code, body) = scrape(env.metrics_port, Some(&nobody)).await?;
    ensure!(code == 403, "without RBAC: {body}");
    ensure!(body.contains(&format!("system:serviceaccount:{ns}:nobody")), "{body}");
    let (code, body) = scrape(env.metrics_port, Some(&scraper)).await?;
    ensure!(code == 200, "with RBAC: {body}");
    ensure!(body.contains("kmm_spoke_"), "no spoke metrics: {body}");
    // A second scrape is answered from the decision cache the same way.
    let (code, _) = scrape(env.metrics_port, Some(&scraper)).await?;
    ensure!(code == 200);
    Ok(())
}

async fn invalid_config_stops_the_start_naming_the_key(env: Arc<Env>) -> Result<()> {
    let spoke = our_binary("kmm-spoke")?;
    let dir = env.sup.dir().join("bad-configs");
    for (text, want) in [
        ("webhook:\n  port: 0\n", "webhook.port: port 0 is not allowed"),
        (
            "metrics:\n  bindAdress: :8443\n",
            "metrics.bindAdress: unknown field `bindAdress`",
        ),
        ("job:\n  gcDelay: 1 hour\n", "job.gcDelay: \"1 hour\" is not a duration"),
        (
            "healthProbeBindAddress: example.com:8081\n",
            "healthProbeBindAddress: \"example.com:8081\"",
        ),
        (
            "leaderElection:\n  enabled: yes please\n",
            "leaderElection.enabled: invalid type",
        ),
    ] {
        let file = certs::write(&dir.join("kmm.yaml"), text)?;
        let out = tokio::process::Command::new(&spoke)
            .args(["run", "--config"])
            .arg(&file)
            .env("KUBECONFIG", &env.cluster.admin_kubeconfig)
            .env_remove("RUST_BACKTRACE")
            .output()
            .await?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            bail!("kmm-spoke started with {text:?}");
        }
        ensure!(
            stderr.contains(&format!("the config file {}: {want}", file.display())),
            "for {text:?} kmm-spoke said: {stderr}"
        );
    }
    // The older flags are refused together with a file, so it stays the single source.
    let out = tokio::process::Command::new(&spoke)
        .args(["run", "--config", "/dev/null", "--metrics-bind-address=127.0.0.1:1"])
        .output()
        .await?;
    ensure!(!out.status.success());
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("cannot be used with"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

// ------------------------------------------------------------------ upstream corpus

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpstreamVerdict {
    file: String,
    schema: String,
    webhook: String,
    schema_message: String,
    webhook_message: String,
}

#[derive(serde::Deserialize)]
struct Difference {
    file: String,
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared-api/tests/upstream")
}

fn corpus_yaml<T: serde::de::DeserializeOwned>(name: &str) -> Result<T> {
    let path = corpus_dir().join(name);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_saphyr::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Upstream's examples and the variants around its rules, each as an administrator submits it
/// (`kubectl create --dry-run=server --validate=strict`: our CRDs with their CEL rules, strict
/// field validation, then our webhooks), and through `kmm-hub validate`: both give upstream's
/// verdict except for the listed, deliberate differences (shared-api/tests/upstream/).
async fn upstream_corpus_gets_upstreams_verdicts(env: Arc<Env>) -> Result<()> {
    let verdicts: Vec<UpstreamVerdict> = corpus_yaml("verdicts.yaml")?;
    let listed: std::collections::BTreeSet<String> = corpus_yaml::<Vec<Difference>>("differences.yaml")?
        .into_iter()
        .map(|d| d.file)
        .collect();
    ensure!(verdicts.len() >= 180, "the corpus has only {} cases", verdicts.len());
    env.cluster.ensure_namespace("ns").await?;
    let cases = corpus_dir().join("cases");
    // Four kubectl processes at a time, each on its own task (owned inputs only).
    let mut results = Vec::with_capacity(verdicts.len());
    for chunk in verdicts.chunks(4) {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, v) in chunk.iter().enumerate() {
            let (env, path) = (env.clone(), cases.join(&v.file).display().to_string());
            tasks.spawn(async move {
                let args = [
                    "create",
                    "--dry-run=server",
                    "--validate=strict",
                    "-o",
                    "name",
                    "-f",
                    path.as_str(),
                ];
                env.kubectl(&args, None).await.map(|out| (i, out.ok, out.stderr))
            });
        }
        let mut done: Vec<(usize, bool, String)> = tasks.join_all().await.into_iter().collect::<Result<_>>()?;
        done.sort_by_key(|d| d.0);
        results.extend(
            chunk
                .iter()
                .zip(done)
                .map(|(v, (_, ok, err))| (v.file.clone(), ok, err)),
        );
    }

    // The same files through the offline validator, in one run.
    let hub = our_binary("kmm-hub")?;
    let files: Vec<PathBuf> = verdicts.iter().map(|v| cases.join(&v.file)).collect();
    let out = tokio::process::Command::new(&hub)
        .arg("validate")
        .args(&files)
        .output()
        .await
        .context("running kmm-hub validate")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let offline = |file: &str| -> Option<bool> {
        let line = stdout.lines().find(|l| l.contains(&format!("/{file}: ")))?;
        Some(line.ends_with(": valid") || line.ends_with(": valid, with warnings:"))
    };

    let mut problems = Vec::new();
    let (mut agree, mut differ) = (0, 0);
    for (v, (file, api_ok, stderr)) in verdicts.iter().zip(&results) {
        let upstream_ok = v.schema == "accepted" && v.webhook != "refused";
        let Some(offline_ok) = offline(file) else {
            problems.push(format!("{file}: no line from kmm-hub validate"));
            continue;
        };
        if *api_ok != offline_ok {
            problems.push(format!(
                "{file}: the API server says {api_ok}, kmm-hub validate says {offline_ok}: {stderr}"
            ));
        }
        match (upstream_ok == *api_ok, listed.contains(file)) {
            (true, false) => agree += 1,
            (false, true) => differ += 1,
            (true, true) => problems.push(format!("{file}: listed as a difference but agrees with upstream now")),
            (false, false) => problems.push(format!(
                "{file}: upstream {} ({} {}), we {} ({})",
                if upstream_ok { "accepts" } else { "refuses" },
                v.schema_message,
                v.webhook_message,
                if *api_ok { "accept" } else { "refuse" },
                stderr.trim()
            )),
        }
    }
    ensure!(
        problems.is_empty(),
        "{agree} agree, {differ} listed differences, {} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
    println!(
        "upstream corpus: {} cases, {agree} agree with upstream, {differ} differ on purpose",
        verdicts.len()
    );
    Ok(())
}

/// As upstream, an unknown template variable expands to nothing; unlike upstream, whoever applies
/// the Module is told (kubectl prints admission warnings).
async fn unknown_variables_are_accepted_with_a_warning(env: Arc<Env>) -> Result<()> {
    let m = module("default", "warned", "r/kmm-ci-a:v1${KERNEL_FULL_VERISON}");
    let out = env.kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&m)).await?;
    ensure!(out.ok, "refused: {out}");
    ensure!(
        out.stderr
            .contains("Warning: spec.moduleLoader.container.kernelMappings[0].containerImage")
            && out.stderr.contains("${KERNEL_FULL_VERISON}, which is not defined here"),
        "no warning naming the field and the variable: {out}"
    );
    Ok(())
}
