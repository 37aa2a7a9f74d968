//! The image pipeline: for every distinct image the fleet needs, find it (manifest HEAD), or
//! build it, sign it, and pin it to a digest. One task per image at a time, shared by every MCM
//! that needs the image, so 500 clusters on 3 kernels cost 3 lookups per resolution round.
//!
//! Following moved tags: a `Ready` image is looked up again every `resolve_interval` (and at
//! once when an MCM's spec changes or it carries a new `hub.kmm.sigs.x-k8s.io/resolve`
//! annotation value). When the tag moved, the new digest is rendered; when the registry cannot
//! answer, the last digest stays rendered and the image turns `Stale` with the reason, so a
//! stale digest is never rendered silently.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kmm_runtime::events::{Event, EventType, Recorder};
use kmm_runtime::registry::RegistryTls;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use shared_api::image::ImageRef;
use shared_api::mcm::ManagedClusterModule;
use shared_api::module::{Sign, TlsOptions};
use shared_api::registry_auth::DockerConfigAuth;

use crate::metrics::Metrics;
use crate::plan::build_pod::{self, BuildInput, PodOutcome};
use crate::plan::images::ImageNeed;
use crate::plan::status::{ImageState, ImageView};
use crate::registry;
use crate::sign::{HashAlgo, SignImageRequest, Signer, sign_image};

/// Settings of the pipeline.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Namespace of the hub: build pods run there; Dockerfile ConfigMaps and Secrets live there.
    pub namespace: String,
    /// Kaniko-compatible executor image of build pods.
    pub executor_image: String,
    /// Limit for each registry request.
    pub registry_timeout: Duration,
    /// How often a `Ready` image is looked up again; `None`: only on spec change or request.
    pub resolve_interval: Option<Duration>,
    /// How long successful build pods are kept.
    pub gc_delay: Duration,
    /// Longest a build may run before it is reported failed.
    pub build_timeout: Duration,
}

/// An image and the credentials it is looked up with.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageKey {
    /// Final image reference.
    pub image: String,
    /// imageRepoSecret name.
    pub secret: Option<String>,
}

#[derive(Debug)]
struct Entry {
    need: ImageNeed,
    view: ImageView,
    running: bool,
    resolved_at: Option<Instant>,
    retry_at: Option<Instant>,
    failures: u32,
    /// Build hash of the last build we ran or adopted for this image.
    built: Option<String>,
    requesters: BTreeSet<String>,
    force: bool,
}

/// The shared pipeline.
pub struct Pipeline {
    settings: Settings,
    client: Client,
    build_pods: Store<Pod>,
    mcms: Store<ManagedClusterModule>,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    trigger: tokio::sync::mpsc::UnboundedSender<ObjectRef<ManagedClusterModule>>,
    entries: Mutex<HashMap<ImageKey, Entry>>,
}

/// How one round of work on an image ended.
struct Outcome {
    view: ImageView,
    /// Look again after this long (failures back off).
    retry_after: Option<Duration>,
    failed: bool,
}

fn view(state: ImageState, pinned: Option<String>, message: impl Into<Option<String>>) -> ImageView {
    ImageView {
        state,
        pinned,
        message: message.into(),
    }
}

/// `v`, keeping `last` as its pin when it has none: a pin is only ever replaced by a new one,
/// never dropped by a build, a signature, a missing image or a failure, so no ManifestWork loses
/// a kernel while its image is being worked on.
fn keep_pin(mut v: ImageView, last: Option<String>) -> ImageView {
    if v.pinned.is_none()
        && let Some(p) = last
    {
        if v.state.is_problem() {
            let m = v.message.take().unwrap_or_default();
            v.message = Some(format!("{m}; the last digest {p} stays rendered"));
        }
        v.pinned = Some(p);
    }
    v
}

/// Backoff for failed lookups: 15 s doubling to 10 min.
fn backoff(failures: u32) -> Duration {
    Duration::from_secs(15u64.saturating_mul(1 << failures.min(6).saturating_sub(1))).min(Duration::from_secs(600))
}

impl Pipeline {
    /// A pipeline whose finished work triggers reconciles of the requesting MCMs on `trigger`.
    pub fn new(
        settings: Settings,
        client: Client,
        build_pods: Store<Pod>,
        mcms: Store<ManagedClusterModule>,
        recorder: Recorder,
        metrics: Arc<Metrics>,
        trigger: tokio::sync::mpsc::UnboundedSender<ObjectRef<ManagedClusterModule>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            settings,
            client,
            build_pods,
            mcms,
            recorder,
            metrics,
            trigger,
            entries: Mutex::new(HashMap::new()),
        })
    }

    /// The views of `mcm`'s images, registering it as a requester and starting work where it is
    /// due. `force` looks every image up again now (spec change, resolve request).
    pub fn observe(
        self: &Arc<Self>,
        mcm: &str,
        needs: &BTreeMap<String, ImageNeed>,
        force: bool,
    ) -> BTreeMap<String, ImageView> {
        let now = Instant::now();
        let mut out = BTreeMap::new();
        let mut start = Vec::new();
        {
            let mut entries = self.entries.lock().expect("pipeline lock");
            for (image, need) in needs {
                if need.is_pinned() {
                    out.insert(image.clone(), view(ImageState::Ready, Some(image.clone()), None));
                    continue;
                }
                let key = ImageKey {
                    image: image.clone(),
                    secret: need.pull_secret.clone(),
                };
                let e = entries.entry(key.clone()).or_insert_with(|| Entry {
                    need: need.clone(),
                    view: ImageView::pending(),
                    running: false,
                    resolved_at: None,
                    retry_at: None,
                    failures: 0,
                    built: None,
                    requesters: BTreeSet::new(),
                    force: false,
                });
                e.requesters.insert(mcm.to_owned());
                if e.need != *need {
                    e.need = need.clone();
                    e.force = true;
                }
                if force {
                    e.force = true;
                }
                let due = match e.resolved_at {
                    None => true,
                    Some(at) => {
                        e.force
                            || e.retry_at.is_some_and(|r| r <= now)
                            || (matches!(e.view.state, ImageState::Ready)
                                && self
                                    .settings
                                    .resolve_interval
                                    .is_some_and(|i| now.duration_since(at) >= i))
                    }
                };
                if due && !e.running {
                    e.running = true;
                    e.force = false;
                    start.push((key, e.need.clone(), e.view.clone(), e.built.clone()));
                }
                out.insert(image.clone(), e.view.clone());
            }
        }
        for (key, need, previous, built) in start {
            let this = self.clone();
            tokio::spawn(async move { this.work(key, need, previous, built).await });
        }
        out
    }

    /// Drops `mcm` as a requester everywhere, and images nobody needs any more.
    pub fn forget(&self, mcm: &str) {
        self.retain_requesters(|m| m != mcm);
    }

    /// Keeps only the requesters for which `exists` holds (MCMs deleted without the controller
    /// seeing a deletion timestamp leave no trace), and the images somebody still needs.
    pub fn retain_requesters(&self, exists: impl Fn(&str) -> bool) {
        let mut entries = self.entries.lock().expect("pipeline lock");
        for e in entries.values_mut() {
            e.requesters.retain(|m| exists(m));
        }
        entries.retain(|_, e| !e.requesters.is_empty() || e.running);
    }

    /// Number of images per state, for the metrics.
    pub fn count_states(&self) -> BTreeMap<ImageState, i64> {
        let entries = self.entries.lock().expect("pipeline lock");
        let mut out: BTreeMap<ImageState, i64> = ImageState::ALL.iter().map(|s| (*s, 0)).collect();
        for e in entries.values() {
            *out.entry(e.view.state).or_default() += 1;
        }
        out
    }

    fn requesters(&self, key: &ImageKey) -> Vec<String> {
        let entries = self.entries.lock().expect("pipeline lock");
        entries
            .get(key)
            .map(|e| e.requesters.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn notify(&self, key: &ImageKey) {
        for m in self.requesters(key) {
            let _ = self.trigger.send(ObjectRef::new(&m));
        }
    }

    /// Shows progress (Building, Signing) while a task runs; the last pin stays.
    fn progress(&self, key: &ImageKey, v: ImageView) {
        if let Some(e) = self.entries.lock().expect("pipeline lock").get_mut(key) {
            e.view = keep_pin(v, e.view.pinned.take());
        }
        self.notify(key);
    }

    async fn event(&self, key: &ImageKey, type_: EventType, reason: &str, note: String) {
        for name in self.requesters(key) {
            let Some(mcm) = self.mcms.get(&ObjectRef::new(&name)) else {
                continue;
            };
            let ev = Event {
                type_,
                reason: reason.into(),
                note: Some(note.clone()),
                action: reason.into(),
                secondary: None,
            };
            if let Err(e) = self.recorder.publish(&ev, &mcm.object_ref(&())).await {
                tracing::warn!(error = %e, mcm = %name, "publishing event");
            }
        }
    }

    async fn work(self: Arc<Self>, key: ImageKey, need: ImageNeed, previous: ImageView, built: Option<String>) {
        let (outcome, built) = self.resolve(&key, &need, &previous, built).await;
        let retry = outcome.retry_after;
        {
            let mut entries = self.entries.lock().expect("pipeline lock");
            if let Some(e) = entries.get_mut(&key) {
                e.view = keep_pin(outcome.view.clone(), e.view.pinned.take());
                e.running = false;
                e.resolved_at = Some(Instant::now());
                e.built = built.or(e.built.take());
                if outcome.failed {
                    e.failures += 1;
                } else {
                    e.failures = 0;
                }
                e.retry_at = retry.map(|d| Instant::now() + d);
            }
        }
        match outcome.view.state {
            ImageState::Failed | ImageState::Stale | ImageState::Missing => tracing::warn!(
                image = %key.image,
                state = %outcome.view.state,
                message = outcome.view.message.as_deref().unwrap_or_default(),
                "image not ready"
            ),
            _ => {
                tracing::info!(image = %key.image, pinned = outcome.view.pinned.as_deref().unwrap_or_default(), "image resolved")
            }
        }
        self.notify(&key);
        if let Some(d) = retry {
            let this = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(d).await;
                this.notify(&key);
            });
        }
    }

    async fn secret(&self, name: &str) -> Result<Secret, String> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.settings.namespace);
        match api.get_opt(name).await {
            Ok(Some(s)) => Ok(s),
            Ok(None) => Err(format!("Secret {}/{name} not found", self.settings.namespace)),
            Err(e) => Err(format!("reading Secret {}/{name}: {e}", self.settings.namespace)),
        }
    }

    async fn auth(&self, need: &ImageNeed) -> Result<DockerConfigAuth, String> {
        let Some(name) = &need.pull_secret else {
            return Ok(DockerConfigAuth::default());
        };
        let s = self.secret(name).await.map_err(|e| format!("imageRepoSecret: {e}"))?;
        let data = s
            .data
            .as_ref()
            .and_then(|d| d.get(".dockerconfigjson").or_else(|| d.get(".dockercfg")))
            .ok_or_else(|| {
                format!(
                    "imageRepoSecret {}/{name} has no .dockerconfigjson key",
                    self.settings.namespace
                )
            })?;
        DockerConfigAuth::parse(&data.0, &format!("Secret {}/{name}", self.settings.namespace))
            .map_err(|e| format!("imageRepoSecret: {e}"))
    }

    async fn lookup(&self, image: &str, auth: &DockerConfigAuth, tls: TlsOptions) -> Result<Option<String>, String> {
        let started = Instant::now();
        let r = registry::digest(
            image,
            auth,
            RegistryTls::from(Some(&tls)),
            self.settings.registry_timeout,
        )
        .await;
        let outcome = match &r {
            Ok(Some(_)) => "found",
            Ok(None) => "missing",
            Err(_) => "error",
        };
        self.metrics.registry_lookup(outcome, started.elapsed());
        r.map_err(|e| e.to_string())
    }

    /// One round for one image. Returns the outcome and the build hash when a build ran.
    async fn resolve(
        &self,
        key: &ImageKey,
        need: &ImageNeed,
        previous: &ImageView,
        built: Option<String>,
    ) -> (Outcome, Option<String>) {
        let failures = {
            let entries = self.entries.lock().expect("pipeline lock");
            entries.get(key).map_or(0, |e| e.failures)
        };
        let fail = |state: ImageState, message: String| Outcome {
            view: view(state, None, message),
            retry_after: Some(backoff(failures + 1)),
            failed: true,
        };
        let auth = match self.auth(need).await {
            Ok(a) => a,
            Err(e) => return (fail(ImageState::Failed, e), None),
        };
        let found = match self.lookup(&need.image, &auth, need.tls).await {
            Ok(f) => f,
            Err(e) => {
                // Keep rendering what we had, and say that it may be stale.
                return match &previous.pinned {
                    Some(p) => (
                        Outcome {
                            view: view(
                                ImageState::Stale,
                                Some(p.clone()),
                                format!("re-resolution failed, still rendering the last digest: {e}"),
                            ),
                            retry_after: Some(backoff(failures + 1)),
                            failed: true,
                        },
                        None,
                    ),
                    None => (fail(ImageState::Failed, e), None),
                };
            }
        };
        let build_input_hash = need.build.as_ref().map(|_| self.build_hash(need));
        let rebuild = matches!((&built, &build_input_hash), (Some(b), Some(h)) if b != h);
        if let Some(digest) = &found
            && !rebuild
        {
            return (
                Outcome {
                    view: view(ImageState::Ready, Some(registry::pinned(&need.image, digest)), None),
                    retry_after: None,
                    failed: false,
                },
                None,
            );
        }
        if need.build.is_none() && need.sign.is_none() {
            return (
                fail(
                    ImageState::Missing,
                    format!(
                        "{} is not in the registry, and the mapping has neither build nor sign to make it",
                        need.image
                    ),
                ),
                None,
            );
        }
        let mut ran_build = None;
        if need.build.is_some() {
            match self.build(key, need, &auth).await {
                Ok(hash) => ran_build = Some(hash),
                Err((hash, e)) => {
                    // A failed build is not retried until its spec changes: its pod is kept and
                    // adopted by the next round.
                    return (
                        Outcome {
                            view: view(ImageState::Failed, None, e),
                            retry_after: self.settings.resolve_interval,
                            failed: true,
                        },
                        hash,
                    );
                }
            }
        }
        if let Some(sign) = &need.sign {
            self.progress(key, view(ImageState::Signing, None, None));
            match self.sign(key, need, sign, &auth).await {
                Ok(pinned) => {
                    return (
                        Outcome {
                            view: view(ImageState::Ready, Some(pinned), None),
                            retry_after: None,
                            failed: false,
                        },
                        ran_build,
                    );
                }
                Err(e) => {
                    return (
                        Outcome {
                            view: view(ImageState::Failed, None, e),
                            retry_after: Some(backoff(failures + 1).max(Duration::from_secs(60))),
                            failed: true,
                        },
                        ran_build,
                    );
                }
            }
        }
        // Built without signing: the executor pushed the final image.
        match self.lookup(&need.image, &auth, need.tls).await {
            Ok(Some(d)) => (
                Outcome {
                    view: view(ImageState::Ready, Some(registry::pinned(&need.image, &d)), None),
                    retry_after: None,
                    failed: false,
                },
                ran_build,
            ),
            Ok(None) => (
                fail(
                    ImageState::Failed,
                    format!("the build succeeded but {} is not in the registry", need.image),
                ),
                ran_build,
            ),
            Err(e) => (fail(ImageState::Failed, e), ran_build),
        }
    }

    /// Where the executor pushes: the final image, or the unsigned one when signing follows.
    fn build_destination(need: &ImageNeed) -> String {
        match &need.sign {
            None => need.image.clone(),
            Some(s) => match s.unsigned_image.as_deref().filter(|u| !u.is_empty()) {
                Some(u) => u.to_owned(),
                None => {
                    let r = ImageRef::parse(&need.image);
                    format!("{}:{}_kmm_unsigned", r.repository, r.tag.unwrap_or("latest"))
                }
            },
        }
    }

    fn build_input<'a>(
        &'a self,
        need: &'a ImageNeed,
        destination: &'a str,
        mcm: &'a str,
        ns: &'a str,
    ) -> Option<BuildInput<'a>> {
        Some(BuildInput {
            build: need.build.as_ref()?,
            destination,
            kernel: &need.kernel,
            module_name: mcm,
            module_namespace: ns,
            push_tls: need.tls,
            push_secret: need.pull_secret.as_deref(),
            executor_image: &self.settings.executor_image,
            namespace: &self.settings.namespace,
        })
    }

    /// MOD_NAME and MOD_NAMESPACE come from the image's oldest requester (by creation time, then
    /// name): an image shared by several MCMs has them in its reference only if they are identical
    /// anyway, and adding an MCM never changes the choice, so it never changes the build.
    fn first_requester(&self, need: &ImageNeed) -> (String, String) {
        let key = ImageKey {
            image: need.image.clone(),
            secret: need.pull_secret.clone(),
        };
        let oldest = self
            .requesters(&key)
            .into_iter()
            .filter_map(|name| self.mcms.get(&ObjectRef::new(&name)))
            .min_by(|a, b| {
                let created = |m: &ManagedClusterModule| m.metadata.creation_timestamp.as_ref().map(|t| t.0);
                created(a)
                    .cmp(&created(b))
                    .then_with(|| a.name_any().cmp(&b.name_any()))
            });
        match oldest {
            Some(m) => (m.name_any(), m.spec.spoke_namespace.clone()),
            None => Default::default(),
        }
    }

    fn build_hash(&self, need: &ImageNeed) -> String {
        let dest = Self::build_destination(need);
        let (name, ns) = self.first_requester(need);
        self.build_input(need, &dest, &name, &ns)
            .map(|i| build_pod::build_hash(&i))
            .unwrap_or_default()
    }

    /// Runs (or adopts) the build pod and waits for it. Errors carry the build hash when a pod
    /// ran, so the same failing build is not started again.
    async fn build(
        &self,
        key: &ImageKey,
        need: &ImageNeed,
        _auth: &DockerConfigAuth,
    ) -> Result<String, (Option<String>, String)> {
        let dest = Self::build_destination(need);
        let (name, ns) = self.first_requester(need);
        let Some(input) = self.build_input(need, &dest, &name, &ns) else {
            return Err((None, "no build recipe".into()));
        };
        let hash = build_pod::build_hash(&input);
        let build = input.build;
        // Check what the pod mounts first: a missing ConfigMap would leave the pod pending forever.
        let cm_name = build
            .dockerfile_config_map
            .as_ref()
            .map(|c| c.name.clone())
            .filter(|n| !n.is_empty())
            .ok_or((None, "build.dockerfileConfigMap is not set".to_string()))?;
        let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.settings.namespace);
        match cms.get_opt(&cm_name).await {
            Ok(Some(cm))
                if cm
                    .data
                    .as_ref()
                    .is_some_and(|d| d.contains_key(build_pod::DOCKERFILE_KEY)) => {}
            Ok(Some(_)) => {
                return Err((
                    None,
                    format!(
                        "build.dockerfileConfigMap {}/{cm_name} has no {:?} key",
                        self.settings.namespace,
                        build_pod::DOCKERFILE_KEY
                    ),
                ));
            }
            Ok(None) => {
                return Err((
                    None,
                    format!(
                        "build.dockerfileConfigMap {}/{cm_name} not found (it must be in the hub's namespace)",
                        self.settings.namespace
                    ),
                ));
            }
            Err(e) => {
                return Err((
                    None,
                    format!("reading ConfigMap {}/{cm_name}: {e}", self.settings.namespace),
                ));
            }
        }
        for s in &build.secrets {
            self.secret(&s.name)
                .await
                .map_err(|e| (None, format!("build.secrets: {e}")))?;
        }
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.settings.namespace);
        let existing = self.find_pod(&hash);
        let pod_name = match existing {
            Some(p) => p.name_any(),
            None => {
                let pod = build_pod::build_pod(&input, &name);
                let pod_name = pod.name_any();
                match pods.create(&PostParams::default(), &pod).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(e) => return Err((None, format!("creating build pod {pod_name}: {e}"))),
                }
                self.metrics.api_writes.inc();
                self.event(
                    key,
                    EventType::Normal,
                    "BuildCreated",
                    format!("Build pod {pod_name} started for {} (kernel {})", dest, need.kernel),
                )
                .await;
                pod_name
            }
        };
        self.progress(
            key,
            view(
                ImageState::Building,
                None,
                format!("build pod {}/{pod_name}", self.settings.namespace),
            ),
        );
        let deadline = Instant::now() + self.settings.build_timeout;
        let outcome = loop {
            match self.find_pod(&hash) {
                Some(p) => match build_pod::outcome(&p) {
                    PodOutcome::Running => {}
                    done => break done,
                },
                None if Instant::now() > deadline => {
                    break PodOutcome::Failed("the build pod disappeared".into());
                }
                None => {}
            }
            if Instant::now() > deadline {
                break PodOutcome::Failed(format!("did not finish within {:?}", self.settings.build_timeout));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        match outcome {
            PodOutcome::Succeeded => {
                self.metrics.build("succeeded");
                self.event(
                    key,
                    EventType::Normal,
                    "BuildSucceeded",
                    format!("Build pod {pod_name} pushed {dest}"),
                )
                .await;
                let (client, ns, delay, name) = (
                    self.client.clone(),
                    self.settings.namespace.clone(),
                    self.settings.gc_delay,
                    pod_name.clone(),
                );
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let pods: Api<Pod> = Api::namespaced(client, &ns);
                    if let Err(e) = pods.delete(&name, &DeleteParams::default()).await {
                        tracing::debug!(error = %e, pod = %name, "removing the finished build pod");
                    }
                });
                Ok(hash)
            }
            PodOutcome::Failed(reason) => {
                self.metrics.build("failed");
                let msg = format!(
                    "build pod {}/{pod_name} failed ({reason}); it is kept for inspection, and the build runs again when its spec changes",
                    self.settings.namespace
                );
                self.event(key, EventType::Warning, "BuildFailed", msg.clone()).await;
                Err((Some(hash), msg))
            }
            PodOutcome::Running => unreachable!("the loop only ends on a finished pod"),
        }
    }

    fn find_pod(&self, hash: &str) -> Option<Arc<Pod>> {
        self.build_pods.state().into_iter().find(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.labels().get(build_pod::HASH_LABEL).map(String::as_str) == Some(hash)
        })
    }

    async fn signer(&self, sign: &Sign) -> Result<Signer, String> {
        let read = |secret: Option<&str>, field: &'static str, key: &'static str| {
            let name = secret.map(str::to_owned);
            async move {
                let name = name
                    .filter(|n| !n.is_empty())
                    .ok_or(format!("sign.{field} is not set"))?;
                let s = self.secret(&name).await.map_err(|e| format!("sign.{field}: {e}"))?;
                let data = s
                    .data
                    .as_ref()
                    .and_then(|d| d.get(key))
                    .ok_or(format!(
                        "sign.{field}: Secret {}/{name} has no {key:?} key",
                        self.settings.namespace
                    ))?
                    .0
                    .clone();
                Ok::<_, String>((format!("Secret {}/{name} key {key}", self.settings.namespace), data))
            }
        };
        let (key_src, key) = read(sign.key_secret.as_ref().map(|s| s.name.as_str()), "keySecret", "key").await?;
        let (cert_src, cert) = read(sign.cert_secret.as_ref().map(|s| s.name.as_str()), "certSecret", "cert").await?;
        let signer = Signer::from_bytes(&key, &key_src, &cert, &cert_src).map_err(|e| format!("sign: {e}"));
        drop(zeroize::Zeroizing::new(key));
        signer
    }

    async fn sign(
        &self,
        key: &ImageKey,
        need: &ImageNeed,
        sign: &Sign,
        auth: &DockerConfigAuth,
    ) -> Result<String, String> {
        let from = Self::build_destination(need);
        let result = async {
            let signer = self.signer(sign).await?;
            let tls = RegistryTls {
                insecure: need.tls.insecure || sign.unsigned_image_registry_tls.is_some_and(|t| t.insecure),
                insecure_skip_tls_verify: need.tls.insecure_skip_tls_verify
                    || sign
                        .unsigned_image_registry_tls
                        .is_some_and(|t| t.insecure_skip_tls_verify),
            };
            let req = SignImageRequest {
                from: &from,
                to: &need.image,
                files: &sign.files_to_sign,
                signer: &signer,
                hash: HashAlgo::Sha256,
                auth,
                tls,
                timeout: self.settings.registry_timeout,
            };
            sign_image(&req)
                .await
                .map_err(|e| format!("signing {from} into {}: {e}", need.image))
        }
        .await;
        match result {
            Ok(signed) => {
                self.metrics.sign("succeeded");
                self.event(
                    key,
                    EventType::Normal,
                    "SignSucceeded",
                    format!(
                        "Signed {} file(s) of {from}; pushed {}",
                        signed.files.len(),
                        signed.pinned
                    ),
                )
                .await;
                Ok(signed.pinned)
            }
            Err(e) => {
                self.metrics.sign("failed");
                self.event(key, EventType::Warning, "SignFailed", e.clone()).await;
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_is_only_replaced_never_dropped() {
        let last = Some("reg.local/kmm/m@sha256:1".to_string());
        let building = keep_pin(view(ImageState::Building, None, None), last.clone());
        assert_eq!(building.pinned, last);
        assert_eq!(building.message, None);
        let failed = keep_pin(
            view(ImageState::Failed, None, "build pod failed".to_string()),
            last.clone(),
        );
        assert_eq!(failed.pinned, last);
        assert!(failed.message.unwrap().contains("stays rendered"));
        let missing = keep_pin(view(ImageState::Missing, None, "not found".to_string()), last.clone());
        assert_eq!((missing.state, missing.pinned), (ImageState::Missing, last.clone()));
        let new = keep_pin(
            view(ImageState::Ready, Some("reg.local/kmm/m@sha256:2".into()), None),
            last,
        );
        assert_eq!(new.pinned.as_deref(), Some("reg.local/kmm/m@sha256:2"));
        assert_eq!(keep_pin(view(ImageState::Pending, None, None), None).pinned, None);
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(15));
        assert_eq!(backoff(2), Duration::from_secs(30));
        assert_eq!(backoff(3), Duration::from_secs(60));
        assert_eq!(backoff(50), Duration::from_secs(480));
    }

    #[test]
    fn unsigned_destination() {
        let mut need = ImageNeed {
            image: "reg.local/kmm/m:6.1.0".into(),
            kernel: "6.1.0".into(),
            build: None,
            sign: Some(Sign::default()),
            tls: TlsOptions::default(),
            pull_secret: None,
        };
        assert_eq!(Pipeline::build_destination(&need), "reg.local/kmm/m:6.1.0_kmm_unsigned");
        need.sign.as_mut().unwrap().unsigned_image = Some("reg.local/kmm/u:1".into());
        assert_eq!(Pipeline::build_destination(&need), "reg.local/kmm/u:1");
        need.sign = None;
        assert_eq!(Pipeline::build_destination(&need), "reg.local/kmm/m:6.1.0");
    }
}
