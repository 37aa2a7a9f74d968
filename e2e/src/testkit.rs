//! Small helpers the cluster and fleet test binaries share: finding our binaries and the
//! manifests, running kubectl, reading a loopback HTTP endpoint.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A binary of this workspace next to the running test executable (`target/<profile>/<name>`).
pub fn our_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test executable has no target directory")?;
    let path = dir.join(name);
    ensure!(
        path.exists(),
        "{} not found: build it first with `cargo build --workspace --bins`",
        path.display()
    );
    Ok(path)
}

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A path under `manifests/`.
pub fn manifests(sub: &str) -> PathBuf {
    repo().join("manifests").join(sub)
}

/// The configuration file inside the manifest ConfigMap `name` in `manifests/<file>`, parsed.
pub fn manifest_config(file: &str, name: &str) -> Result<Value> {
    let cm: Value = serde_saphyr::from_str(&std::fs::read_to_string(manifests(file))?)?;
    ensure!(
        cm["kind"] == "ConfigMap" && cm["metadata"]["name"] == name,
        "{file}: not ConfigMap {name}"
    );
    let text = cm["data"]["controller_config.yaml"]
        .as_str()
        .context("no controller_config.yaml in the ConfigMap")?;
    Ok(serde_saphyr::from_str(text)?)
}

/// The documents of a multi-document YAML text (`---` lines between them), empty ones left out.
pub fn yaml_docs(text: &str) -> Result<Vec<Value>> {
    let mut docs = Vec::new();
    for doc in text.split("\n---\n") {
        let v: Value = serde_saphyr::from_str(doc).context("parsing YAML")?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

/// Runs kubectl against `kubeconfig`; fails with its output unless it exits 0.
pub async fn kubectl(kubectl: &Path, kubeconfig: &Path, args: &[&str]) -> Result<String> {
    let out = tokio::process::Command::new(kubectl)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .await
        .context("running kubectl")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "kubectl {}: {}{}",
        args.join(" "),
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

/// `GET path` on `127.0.0.1:port` over plain HTTP; the whole response, head included.
pub async fn http_get(port: u16, path: &str) -> Result<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

/// The metrics endpoint on `127.0.0.1:<port>` as the manifests configure it (HTTPS, TokenReview
/// and SubjectAccessReview): a ServiceAccount bound to `reader_role` (the manifest's ClusterRole)
/// scrapes metrics containing `expect`; no token gets 401, a token without the role 403. The
/// ServiceAccounts and the binding are made in namespace `t-monitoring` with kubectl as
/// `kubeconfig`'s user, as an administrator would.
pub async fn check_metrics_auth(
    kubectl_bin: &Path,
    kubeconfig: &Path,
    reader_role: &str,
    port: u16,
    expect: &str,
) -> Result<()> {
    let k = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        kubectl(kubectl_bin, kubeconfig, &args).await
    };
    let ns = "t-monitoring";
    k(vec!["create".into(), "namespace".into(), ns.into()]).await?;
    for sa in ["prometheus", "stranger"] {
        k(vec![
            "-n".into(),
            ns.into(),
            "create".into(),
            "serviceaccount".into(),
            sa.into(),
        ])
        .await?;
    }
    k(vec![
        "create".into(),
        "clusterrolebinding".into(),
        format!("t-prometheus-{reader_role}"),
        format!("--clusterrole={reader_role}"),
        format!("--serviceaccount={ns}:prometheus"),
    ])
    .await?;
    let token = |sa: &str| k(vec!["-n".into(), ns.into(), "create".into(), "token".into(), sa.into()]);
    let allowed = token("prometheus").await?;
    let stranger = token("stranger").await?;
    let scrape = |token: Option<String>| async move {
        let mut cfg = kube::Config::new(format!("https://127.0.0.1:{port}").parse()?);
        // The metrics certificate is self-signed (metrics.certDir empty).
        cfg.accept_invalid_certs = true;
        let client = kube::Client::try_from(cfg)?;
        let mut req = http::Request::get("/metrics");
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {}", t.trim()));
        }
        Ok::<_, anyhow::Error>(client.request_text(req.body(Vec::new())?).await)
    };
    let body = scrape(Some(allowed))
        .await?
        .context("scraping with the reader's token")?;
    ensure!(body.contains(expect), "no {expect} in the metrics:\n{body}");
    for (who, token, code) in [
        ("no token", None, 401),
        ("a token without the role", Some(stranger), 403),
    ] {
        match scrape(token).await? {
            Err(kube::Error::Api(s)) if s.code == code => {}
            other => bail!("scraping with {who}: expected HTTP {code}, got {other:?}"),
        }
    }
    Ok(())
}

/// A `kmm-spoke run` (managed, with leader election) started by a test as its own child, not
/// supervised: tests stop, freeze or replace it. Its output goes to `<dir>/<identity>.log`.
pub struct SpokeProcess {
    /// The process.
    pub child: tokio::process::Child,
    log: PathBuf,
}

impl SpokeProcess {
    /// Starts one against `cluster`, as replica `identity` (its `POD_NAME`).
    pub fn start(cluster: &crate::KubeCluster, dir: &Path, identity: &str) -> Result<Self> {
        let log = dir.join(format!("{identity}.log"));
        let out = std::fs::File::create(&log)?;
        let child = tokio::process::Command::new(our_binary("kmm-spoke")?)
            .args([
                "run",
                "--namespace=kmm-system",
                "--managed=true",
                "--worker-image=kmm-worker:e2e",
                "--leader-elect=true",
                &format!("--health-probe-bind-address=127.0.0.1:{}", crate::net::free_port()?),
                &format!("--metrics-bind-address=127.0.0.1:{}", crate::net::free_port()?),
            ])
            .env("KUBECONFIG", &cluster.admin_kubeconfig)
            .env("POD_NAME", identity)
            .env("RUST_LOG", "info,kmm_spoke=debug")
            .env("NO_COLOR", "1")
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {identity}"))?;
        Ok(Self { child, log })
    }

    /// Its process ID, for signals.
    pub fn pid(&self) -> Result<Pid> {
        let pid = self.child.id().context("the process already exited")?;
        Ok(Pid::from_raw(i32::try_from(pid)?))
    }

    /// What it has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A test of one cluster of its own: gets the cluster and the test's directory.
pub type ClusterTest = for<'a> fn(
    &'a crate::KubeCluster,
    &'a Path,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + 'a>>;

/// Runs `test` on a fresh control plane named `name` in `dir` (our CRDs installed, namespace
/// `kmm-system`, no kmm-spoke: the test starts its own), within `limit`, then tears it down.
/// The error names the log directory.
pub fn run_on_own_cluster(name: &str, dir: &Path, limit: std::time::Duration, test: ClusterTest) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let started = async {
            let bins = crate::bins::Bins::locate()?;
            let _ = std::fs::remove_dir_all(dir);
            std::fs::create_dir_all(dir)?;
            let sup = std::sync::Arc::new(crate::proc::Supervisor::new(dir)?);
            let cluster = crate::KubeCluster::start(sup.clone(), &bins, name, &dir.join("cluster")).await?;
            cluster.install_crds(&repo().join("manifests/crds")).await?;
            cluster.install_crds(&repo().join("e2e/crds/spoke")).await?;
            cluster.ensure_namespace("kmm-system").await?;
            anyhow::Ok((sup, cluster))
        };
        let (sup, cluster) = started.await.map_err(|e| format!("{e:#}"))?;
        let r = tokio::time::timeout(limit, test(&cluster, dir)).await;
        sup.teardown();
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("{e:#}\n(logs: {})", dir.display())),
            Err(_) => Err(format!("timed out (logs: {})", dir.display())),
        }
    })
}

/// Whether an event note says `notice`: it is the note, or one of the notices the spoke folds
/// into one note, `; `-separated, when several Modules loaded or unloaded in one node pass.
pub fn says(note: &str, notice: &str) -> bool {
    note == notice || note.split("; ").any(|n| n == notice)
}
