//! One real Kubernetes control plane on loopback: etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler and KWOK (for fake nodes).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::{Value, json};

use crate::bins::Bins;
use crate::certs::{self, Ca, Pair};
use crate::kwok::{self, NodeSpec};
use crate::net::free_port;
use crate::proc::{Spawn, Supervisor};
use crate::wait::poll;

/// Field manager used by the harness for server-side apply.
pub const MANAGER: &str = "kmm-e2e";

/// A running cluster.
pub struct KubeCluster {
    pub name: String,
    pub dir: PathBuf,
    /// `https://127.0.0.1:<port>`
    pub server: String,
    pub ca: Arc<Ca>,
    /// `system:masters` client certificate, everything embedded.
    pub admin_kubeconfig: PathBuf,
    pub client: Client,
    pub(crate) sup: Arc<Supervisor>,
}

impl KubeCluster {
    /// Start one control plane under `dir`; its processes belong to `sup`.
    pub async fn start(sup: Arc<Supervisor>, bins: &Bins, name: &str, dir: &Path) -> Result<Self> {
        let pki = dir.join("pki");
        std::fs::create_dir_all(&pki)?;
        let etcd_port = free_port()?;
        let peer_port = free_port()?;
        let api_port = free_port()?;
        let kcm_port = free_port()?;
        let sched_port = free_port()?;
        let server = format!("https://127.0.0.1:{api_port}");

        let ca = Arc::new(Ca::new(&format!("{name}-ca"))?);
        let serving = ca.server(
            "kube-apiserver",
            &[
                "127.0.0.1",
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
                "10.96.0.1",
            ],
        )?;
        let admin = ca.client("kubernetes-admin", &["system:masters"])?;
        let kcm = ca.client("system:kube-controller-manager", &[])?;
        let sched = ca.client("system:kube-scheduler", &[])?;
        let (sa_key, sa_pub) = certs::key_pair_pem()?;
        // Front proxy (request-header authentication), as kubeadm sets it up:
        // components delegating authentication read this CA.
        let fp_ca = Ca::new(&format!("{name}-front-proxy-ca"))?;
        let fp_client = fp_ca.client("front-proxy-client", &[])?;

        let ca_crt = certs::write(&pki.join("ca.crt"), &ca.cert_pem)?;
        let ca_key = certs::write(&pki.join("ca.key"), &ca.key_pem)?;
        let srv_crt = certs::write(&pki.join("serving.crt"), &serving.cert_pem)?;
        let srv_key = certs::write(&pki.join("serving.key"), &serving.key_pem)?;
        let sa = certs::write(&pki.join("sa.key"), &sa_key)?;
        let sa_pub = certs::write(&pki.join("sa.pub"), &sa_pub)?;
        let fp_ca_crt = certs::write(&pki.join("front-proxy-ca.crt"), &fp_ca.cert_pem)?;
        let fp_crt = certs::write(&pki.join("front-proxy-client.crt"), &fp_client.cert_pem)?;
        let fp_key = certs::write(&pki.join("front-proxy-client.key"), &fp_client.key_pem)?;
        let kc = |user: &str, p: &Pair, file: &str| -> Result<PathBuf> {
            certs::write(
                &dir.join(file),
                &certs::kubeconfig(name, &server, &ca.cert_pem, user, p),
            )
        };
        let admin_kubeconfig = kc("admin", &admin, "admin.kubeconfig")?;
        let kcm_kubeconfig = kc("kube-controller-manager", &kcm, "kcm.kubeconfig")?;
        let sched_kubeconfig = kc("kube-scheduler", &sched, "scheduler.kubeconfig")?;
        let kwok_config = certs::write(&dir.join("kwok.yaml"), &kwok::config_yaml())?;
        let p = |p: &Path| p.display().to_string();

        let etcd = bins.path("etcd");
        sup.spawn(Spawn::new(&format!("{name}-etcd"), &etcd).args([
            format!("--name={name}"),
            format!("--data-dir={}", p(&dir.join("etcd"))),
            format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
            format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-cluster={name}=http://127.0.0.1:{peer_port}"),
            "--unsafe-no-fsync=true".into(),
            "--log-level=warn".into(),
            "--quota-backend-bytes=1073741824".into(),
        ]))?;

        let apiserver = bins.path("kube-apiserver");
        sup.spawn(Spawn::new(&format!("{name}-kube-apiserver"), &apiserver).args([
            format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={api_port}"),
            format!("--cert-dir={}", p(&dir.join("apiserver-certs"))),
            format!("--tls-cert-file={}", p(&srv_crt)),
            format!("--tls-private-key-file={}", p(&srv_key)),
            format!("--client-ca-file={}", p(&ca_crt)),
            format!("--service-account-issuer={server}"),
            format!("--service-account-key-file={}", p(&sa_pub)),
            format!("--service-account-signing-key-file={}", p(&sa)),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            format!("--requestheader-client-ca-file={}", p(&fp_ca_crt)),
            "--requestheader-allowed-names=front-proxy-client".into(),
            "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
            "--requestheader-group-headers=X-Remote-Group".into(),
            "--requestheader-username-headers=X-Remote-User".into(),
            format!("--proxy-client-cert-file={}", p(&fp_crt)),
            format!("--proxy-client-key-file={}", p(&fp_key)),
            "--authorization-mode=Node,RBAC".into(),
            "--allow-privileged=true".into(),
            // The kubernetes Service's endpoint would be 127.0.0.1, which
            // Endpoints validation rejects; nothing in the fleet needs it.
            "--endpoint-reconciler-type=none".into(),
            "--enable-priority-and-fairness=false".into(),
            "--profiling=false".into(),
            "--event-ttl=1h".into(),
            "--v=1".into(),
        ]))?;

        let client = client_from_kubeconfig(&admin_kubeconfig).await?;
        let alive = || sup.check_alive();
        poll(
            &format!("{name}: kube-apiserver /readyz"),
            Duration::from_secs(120),
            Duration::from_millis(300),
            alive,
            || {
                let client = client.clone();
                async move {
                    let req = http::Request::get("/readyz").body(Vec::new())?;
                    let text = client.request_text(req).await?;
                    Ok((text.trim() == "ok").then_some(()))
                }
            },
        )
        .await?;

        let kcm_bin = bins.path("kube-controller-manager");
        sup.spawn(Spawn::new(&format!("{name}-kube-controller-manager"), &kcm_bin).args([
            format!("--kubeconfig={}", p(&kcm_kubeconfig)),
            format!("--authentication-kubeconfig={}", p(&kcm_kubeconfig)),
            format!("--authorization-kubeconfig={}", p(&kcm_kubeconfig)),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={kcm_port}"),
            format!("--tls-cert-file={}", p(&srv_crt)),
            format!("--tls-private-key-file={}", p(&srv_key)),
            "--leader-elect=false".into(),
            format!("--cluster-name={name}"),
            format!("--cluster-signing-cert-file={}", p(&ca_crt)),
            format!("--cluster-signing-key-file={}", p(&ca_key)),
            format!("--root-ca-file={}", p(&ca_crt)),
            format!("--service-account-private-key-file={}", p(&sa)),
            "--use-service-account-credentials=true".into(),
            "--controllers=*".into(),
            "--profiling=false".into(),
            "--v=1".into(),
        ]))?;
        let sched_bin = bins.path("kube-scheduler");
        sup.spawn(Spawn::new(&format!("{name}-kube-scheduler"), &sched_bin).args([
            format!("--kubeconfig={}", p(&sched_kubeconfig)),
            format!("--authentication-kubeconfig={}", p(&sched_kubeconfig)),
            format!("--authorization-kubeconfig={}", p(&sched_kubeconfig)),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={sched_port}"),
            format!("--tls-cert-file={}", p(&srv_crt)),
            format!("--tls-private-key-file={}", p(&srv_key)),
            "--leader-elect=false".into(),
            "--profiling=false".into(),
            "--v=1".into(),
        ]))?;
        let kwok_bin = bins.path("kwok");
        sup.spawn(Spawn::new(&format!("{name}-kwok"), &kwok_bin).args([
            format!("--kubeconfig={}", p(&admin_kubeconfig)),
            format!("--config={}", p(&kwok_config)),
            "--manage-all-nodes=false".into(),
            format!("--manage-nodes-with-annotation-selector={}=fake", kwok::NODE_ANNOTATION),
        ]))?;

        // The controller manager is working once it made the default
        // ServiceAccount (pods cannot be created before that).
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
        poll(
            &format!("{name}: ServiceAccount default/default (kube-controller-manager)"),
            Duration::from_secs(120),
            Duration::from_millis(300),
            || sup.check_alive(),
            || {
                let sas = sas.clone();
                async move { Ok(sas.get_opt("default").await?.map(|_| ())) }
            },
        )
        .await?;

        Ok(Self {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            server,
            ca,
            admin_kubeconfig,
            client,
            sup,
        })
    }

    /// Fails if any process of the fleet has died.
    pub fn check_alive(&self) -> Result<()> {
        self.sup.check_alive()
    }

    /// A bounded wait that also fails as soon as a fleet process dies.
    pub async fn wait<T, F, Fut>(&self, what: &str, timeout: Duration, f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>>>,
    {
        poll(
            &format!("{}: {what}", self.name),
            timeout,
            Duration::from_millis(250),
            || self.sup.check_alive(),
            f,
        )
        .await
    }

    /// A client certificate kubeconfig for any identity (RBAC applies).
    pub fn kubeconfig_for(&self, user: &str, groups: &[&str], file: &str) -> Result<PathBuf> {
        let pair = self.ca.client(user, groups)?;
        certs::write(
            &self.dir.join(file),
            &certs::kubeconfig(&self.name, &self.server, &self.ca.cert_pem, user, &pair),
        )
    }

    /// A kubeconfig with the admin's credentials that impersonates the ServiceAccount `ns/name`
    /// with the groups Kubernetes gives ServiceAccounts: what a pod running as that
    /// ServiceAccount would be allowed, no more. Written to `<dir>/<ns>-<name>.kubeconfig`.
    pub fn impersonating_kubeconfig(&self, ns: &str, name: &str) -> Result<PathBuf> {
        let text = std::fs::read_to_string(&self.admin_kubeconfig)?;
        let mut kc: Value = serde_saphyr::from_str(&text).context("parsing the admin kubeconfig")?;
        let users = kc["users"].as_array_mut().context("kubeconfig without users")?;
        anyhow::ensure!(users.len() == 1, "expected one user in the admin kubeconfig");
        let user = users[0]["user"].as_object_mut().context("kubeconfig user")?;
        user.insert("as".into(), json!(format!("system:serviceaccount:{ns}:{name}")));
        user.insert(
            "as-groups".into(),
            json!([
                "system:serviceaccounts",
                format!("system:serviceaccounts:{ns}"),
                "system:authenticated"
            ]),
        );
        let path = self.dir.join(format!("{ns}-{name}.kubeconfig"));
        // JSON is YAML: kubectl and kube-rs read it alike.
        std::fs::write(&path, serde_json::to_string_pretty(&kc)?)?;
        Ok(path)
    }

    /// Points every webhook of the ValidatingWebhookConfiguration `name` (as a manifest wrote
    /// it, with a Service reference) at `https://127.0.0.1:<port><its service path>`, trusting
    /// `ca_pem` (None: the caBundle already there): an operator running on loopback instead of
    /// behind its Service. Rules, paths and policies stay as they were.
    pub async fn point_webhooks_at(&self, name: &str, port: u16, ca_pem: Option<&str>) -> Result<()> {
        use k8s_openapi::api::admissionregistration::v1::{ValidatingWebhookConfiguration, WebhookClientConfig};
        let api: Api<ValidatingWebhookConfiguration> = Api::all(self.client.clone());
        let mut vwc = api.get(name).await?;
        let webhooks = vwc.webhooks.as_mut().filter(|w| !w.is_empty());
        let webhooks = webhooks.with_context(|| format!("{name} has no webhooks"))?;
        for w in webhooks {
            let path = w
                .client_config
                .service
                .as_ref()
                .and_then(|s| s.path.clone())
                .with_context(|| format!("{name}: webhook {} has no service path", w.name))?;
            w.client_config = WebhookClientConfig {
                url: Some(format!("https://127.0.0.1:{port}{path}")),
                // Serialised as base64, as caBundle wants; None keeps the one there.
                ca_bundle: ca_pem
                    .map(|c| k8s_openapi::ByteString(c.as_bytes().to_vec()))
                    .or(w.client_config.ca_bundle.take()),
                service: None,
            };
        }
        api.replace(name, &PostParams::default(), &vwc)
            .await
            .with_context(|| format!("{}: pointing the webhooks of {name} at 127.0.0.1:{port}", self.name))?;
        Ok(())
    }

    /// Create fake nodes and wait until KWOK has made them Ready.
    pub async fn add_nodes(&self, nodes: &[NodeSpec]) -> Result<()> {
        let api: Api<Node> = Api::all(self.client.clone());
        for n in nodes {
            let node: Node = serde_json::from_value(n.to_node())?;
            api.create(&PostParams::default(), &node)
                .await
                .with_context(|| format!("{}: creating node {}", self.name, n.name))?;
        }
        for n in nodes {
            let api = api.clone();
            let name = n.name.clone();
            self.wait(&format!("node {name} Ready (kwok)"), Duration::from_secs(60), || {
                let api = api.clone();
                let name = name.clone();
                async move {
                    let node = api.get(&name).await?;
                    // Ready, and the node lifecycle controller has taken its not-ready taint off
                    // (it lags the condition), so a test starts from a plain ready node.
                    let tainted = node
                        .spec
                        .as_ref()
                        .and_then(|s| s.taints.as_ref())
                        .is_some_and(|t| t.iter().any(|t| t.key == "node.kubernetes.io/not-ready"));
                    let ready = node
                        .status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True");
                    Ok((ready && !tainted).then_some(()))
                }
            })
            .await?;
        }
        Ok(())
    }

    /// Change a node's `status.nodeInfo.kernelVersion` (a kernel upgrade).
    pub async fn set_kernel_version(&self, node: &str, version: &str) -> Result<()> {
        let api: Api<Node> = Api::all(self.client.clone());
        api.patch_status(
            node,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"nodeInfo": {"kernelVersion": version}}})),
        )
        .await?;
        Ok(())
    }

    pub async fn ensure_namespace(&self, ns: &str) -> Result<()> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        api.patch(
            ns,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})),
        )
        .await?;
        Ok(())
    }

    /// Server-side apply every `*.yaml` CRD in `dir` and wait until all are Established.
    pub async fn install_crds(&self, dir: &Path) -> Result<()> {
        let api: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        let mut names = Vec::new();
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f)?;
            let v: Value = serde_saphyr::from_str(&text).with_context(|| format!("parsing {}", f.display()))?;
            let name = v["metadata"]["name"]
                .as_str()
                .context("CRD without a name")?
                .to_string();
            api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(v))
                .await
                .with_context(|| format!("{}: applying {}", self.name, f.display()))?;
            names.push(name);
        }
        for n in names {
            let api = api.clone();
            self.wait(&format!("CRD {n} Established"), Duration::from_secs(60), || {
                let api = api.clone();
                let n = n.clone();
                async move {
                    let crd = api.get(&n).await?;
                    let ok = crd
                        .status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True");
                    Ok(ok.then_some(()))
                }
            })
            .await?;
        }
        Ok(())
    }
}

/// A kube client from a kubeconfig file.
pub async fn client_from_kubeconfig(path: &Path) -> Result<Client> {
    let kc = Kubeconfig::read_from(path)?;
    let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(cfg)?)
}
