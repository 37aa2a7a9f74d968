//! The operator configuration file: upstream KMM's fields and defaults (the
//! `kmm-operator-manager-config` ConfigMap), plus a few of ours.
//!
//! ```yaml
//! healthProbeBindAddress: :8081
//! job:
//!   gcDelay: 0s
//! leaderElection:
//!   enabled: true
//!   resourceID: kmm.sigs.x-k8s.io
//! webhook:
//!   disableHTTP2: true
//!   port: 9443
//!   host: ""            # ours (controller-runtime's Host): empty = all interfaces
//!   certDir: /tmp/k8s-webhook-server/serving-certs
//! metrics:
//!   enableAuthnAuthz: true
//!   disableHTTP2: true
//!   bindAddress: 0.0.0.0:8443
//!   secureServing: true
//!   certDir: ""
//! worker:
//!   runAsUser: 0
//!   seLinuxType: spc_t
//!   setFirmwareClassPath: /var/lib/firmware
//!   firmwareHostPath: /var/lib/firmware
//!   pendingTimeout: 10m   # ours: a worker pod Pending longer counts as a failed attempt
//! ```
//!
//! Missing keys take their defaults. Anything else that is not right (an unknown key, a wrong
//! type, a bad duration or address, port 0) is an error naming the key and the reason: a typo in
//! the file must stop the operator at start-up, never fall back silently.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Lease name of the spoke (and upstream KMM).
pub const SPOKE_LEASE: &str = "kmm.sigs.x-k8s.io";
/// Lease name of the hub (upstream KMM-hub).
pub const HUB_LEASE: &str = "kmm-hub.sigs.x-k8s.io";

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading the config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is not YAML.
    #[error("the config file {path} is not valid YAML: {message}")]
    Yaml {
        /// The file.
        path: PathBuf,
        /// What the parser said, with the position.
        message: String,
    },
    /// A key has a value that is not allowed, or is unknown.
    #[error("the config file {path}: {key}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Dotted path of the key, e.g. `metrics.bindAddress` (`.` for the whole document).
        key: String,
        /// Why the value is refused.
        reason: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Config {
    /// Address of `/healthz` and `/readyz` (plain HTTP). `:8081` means all interfaces.
    #[serde(deserialize_with = "de_socket_addr")]
    pub health_probe_bind_address: SocketAddr,
    /// Build jobs (hub).
    pub job: Job,
    /// Leader election.
    pub leader_election: LeaderElection,
    /// The admission webhook server.
    pub webhook: Webhook,
    /// The metrics server.
    pub metrics: Metrics,
    /// Worker pods (spoke).
    pub worker: Worker,
}

/// `job`: build pods on the hub.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Job {
    /// How long successful build pods are kept before they are deleted (Go duration syntax).
    #[serde(deserialize_with = "de_duration")]
    pub gc_delay: Duration,
}

/// `leaderElection`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LeaderElection {
    /// Take part in leader election (one active replica).
    pub enabled: bool,
    /// Name of the Lease.
    #[serde(rename = "resourceID")]
    pub resource_id: String,
}

/// `webhook`: the validating admission webhook server (HTTPS).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Webhook {
    /// Serve HTTP/1.1 only (CVE-2023-44487, HTTP/2 rapid reset).
    #[serde(rename = "disableHTTP2")]
    pub disable_http2: bool,
    /// Address to listen on (ours; controller-runtime's `Host`): an IP, or empty (the
    /// default) for all interfaces.
    #[serde(deserialize_with = "de_host")]
    pub host: IpAddr,
    /// Port to listen on.
    #[serde(deserialize_with = "de_port")]
    pub port: u16,
    /// Directory holding `tls.crt` and `tls.key`; reloaded when they change.
    pub cert_dir: PathBuf,
}

/// `metrics`: the Prometheus endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Metrics {
    /// Check every request's bearer token with a TokenReview and a SubjectAccessReview.
    pub enable_authn_authz: bool,
    /// Serve HTTP/1.1 only (when `secureServing`).
    #[serde(rename = "disableHTTP2")]
    pub disable_http2: bool,
    /// Address of `/metrics`; `None` (written `"0"`, as in controller-runtime) serves no metrics.
    #[serde(deserialize_with = "de_metrics_addr")]
    pub bind_address: Option<SocketAddr>,
    /// HTTPS instead of plain HTTP.
    pub secure_serving: bool,
    /// Directory holding `tls.crt` and `tls.key` for HTTPS; `None` (written `""`) means a
    /// self-signed certificate made at start-up.
    #[serde(deserialize_with = "de_optional_dir")]
    pub cert_dir: Option<PathBuf>,
}

/// `worker`: the pods that load and unload modules (spoke).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Worker {
    /// UID of the worker container.
    pub run_as_user: i64,
    /// SELinux type of the worker container.
    pub se_linux_type: String,
    /// Set the kernel's firmware search path (`/sys/module/firmware_class/parameters/path`) to
    /// this before loading.
    pub set_firmware_class_path: Option<String>,
    /// Node directory the worker copies firmware into.
    pub firmware_host_path: String,
    /// Ours: how long a worker pod may stay Pending (unschedulable, its image or a volume
    /// missing) before it counts as a failed attempt, is reported and retried.
    #[serde(deserialize_with = "de_duration")]
    pub pending_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            health_probe_bind_address: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 8081)),
            job: Job::default(),
            leader_election: LeaderElection::default(),
            webhook: Webhook::default(),
            metrics: Metrics::default(),
            worker: Worker::default(),
        }
    }
}

impl Default for Job {
    fn default() -> Self {
        Self {
            gc_delay: Duration::ZERO,
        }
    }
}

impl Default for LeaderElection {
    fn default() -> Self {
        Self {
            enabled: true,
            resource_id: SPOKE_LEASE.into(),
        }
    }
}

impl Default for Webhook {
    fn default() -> Self {
        Self {
            disable_http2: true,
            host: Ipv4Addr::UNSPECIFIED.into(),
            port: 9443,
            cert_dir: PathBuf::from("/tmp/k8s-webhook-server/serving-certs"),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            enable_authn_authz: true,
            disable_http2: true,
            bind_address: Some(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 8443))),
            secure_serving: true,
            cert_dir: None,
        }
    }
}

impl Default for Worker {
    fn default() -> Self {
        Self {
            run_as_user: 0,
            se_linux_type: "spc_t".into(),
            set_firmware_class_path: None,
            firmware_host_path: "/var/lib/firmware".into(),
            pending_timeout: Duration::from_secs(600),
        }
    }
}

impl Webhook {
    /// `<certDir>/tls.crt`.
    pub fn cert_file(&self) -> PathBuf {
        self.cert_dir.join("tls.crt")
    }

    /// `<certDir>/tls.key`.
    pub fn key_file(&self) -> PathBuf {
        self.cert_dir.join("tls.key")
    }

    /// The address the server binds: `host:port`.
    pub fn bind_address(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }
}

impl Config {
    /// The hub's defaults: as [`Config::default`], with the Lease `kmm-hub.sigs.x-k8s.io`.
    pub fn hub_default() -> Self {
        let mut c = Self::default();
        c.leader_election.resource_id = HUB_LEASE.into();
        c
    }

    /// Reads a spoke configuration file; missing keys take [`Config::default`].
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read(path)?;
        Self::parse(path, &text, SPOKE_LEASE)
    }

    /// Reads a hub configuration file; missing keys take [`Config::hub_default`].
    pub fn load_hub(path: &Path) -> Result<Self, ConfigError> {
        let text = read(path)?;
        Self::parse(path, &text, HUB_LEASE)
    }

    /// Parses configuration text; `path` only names the source in errors.
    pub fn from_yaml(path: &Path, text: &str) -> Result<Self, ConfigError> {
        Self::parse(path, text, SPOKE_LEASE)
    }

    fn parse(path: &Path, text: &str, default_lease: &str) -> Result<Self, ConfigError> {
        // YAML to a JSON value first, then the typed config through serde_path_to_error, so
        // that an error names the dotted key rather than only a line.
        let value: serde_json::Value = serde_saphyr::from_str(text).map_err(|e| ConfigError::Yaml {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let value = match value {
            // An empty file (or only comments) is all defaults.
            serde_json::Value::Null => serde_json::Value::Object(Default::default()),
            v @ serde_json::Value::Object(_) => v,
            _ => {
                return Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    key: ".".into(),
                    reason: "the document must be a mapping of settings (healthProbeBindAddress, job, ...)".into(),
                });
            }
        };
        let value = fold_webhook_port(path, value)?;
        let lease_given = value.pointer("/leaderElection/resourceID").is_some();
        let mut config: Config = serde_path_to_error::deserialize(value).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::Invalid {
                path: path.to_path_buf(),
                key: if key.is_empty() { ".".into() } else { key },
                reason: e.into_inner().to_string(),
            }
        })?;
        if !lease_given {
            config.leader_election.resource_id = default_lease.into();
        }
        config.check().map_err(|(key, reason)| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.into(),
            reason,
        })?;
        Ok(config)
    }

    /// Rules across fields, and those serde cannot express.
    fn check(&self) -> Result<(), (&'static str, String)> {
        if self.leader_election.enabled
            && let Err(r) = shared_api::labels::check_dns_subdomain(&self.leader_election.resource_id)
        {
            return Err((
                "leaderElection.resourceID",
                format!(
                    "{:?} is not a valid Lease name: it {r}",
                    self.leader_election.resource_id
                ),
            ));
        }
        if self.webhook.cert_dir.as_os_str().is_empty() {
            return Err(("webhook.certDir", "must not be empty".into()));
        }
        let absolute = |key: &'static str, p: &str| {
            if p.starts_with('/') {
                Ok(())
            } else {
                Err((key, format!("{p:?} must be an absolute path")))
            }
        };
        absolute("worker.firmwareHostPath", &self.worker.firmware_host_path)?;
        if let Some(p) = &self.worker.set_firmware_class_path {
            absolute("worker.setFirmwareClassPath", p)?;
        }
        if self.worker.pending_timeout.is_zero() {
            return Err((
                "worker.pendingTimeout",
                "must be more than 0s; a worker pod needs time to pull its image".into(),
            ));
        }
        if self.worker.se_linux_type.is_empty() {
            return Err(("worker.seLinuxType", "must not be empty".into()));
        }
        if self.worker.run_as_user < 0 {
            return Err((
                "worker.runAsUser",
                format!("{} is negative; a UID is 0 or more", self.worker.run_as_user),
            ));
        }
        Ok(())
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn de_socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let s = String::deserialize(d)?;
    parse_bind_address(&s).map_err(serde::de::Error::custom)
}

fn de_metrics_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    if s == "0" {
        return Ok(None);
    }
    parse_bind_address(&s).map(Some).map_err(serde::de::Error::custom)
}

fn de_port<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    match u16::deserialize(d)? {
        0 => Err(serde::de::Error::custom(
            "port 0 is not allowed: the API server must know the port to call",
        )),
        p => Ok(p),
    }
}

fn de_host<'de, D: Deserializer<'de>>(d: D) -> Result<IpAddr, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty() {
        return Ok(Ipv4Addr::UNSPECIFIED.into());
    }
    s.parse()
        .map_err(|_| serde::de::Error::custom(format!("{s:?} is not an IP address (empty means all interfaces)")))
}

fn de_optional_dir<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    let s = Option::<String>::deserialize(d)?;
    Ok(s.filter(|s| !s.is_empty()).map(PathBuf::from))
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_go_duration(&s).map_err(serde::de::Error::custom)
}

/// Parses a listen address as Go's `net.Listen` takes it: `host:port`, where an empty host
/// (`:8081`) means all interfaces (IPv4), `[::1]:8081` is IPv6, and `localhost` is 127.0.0.1.
/// Port 0 is refused: a probe or a Service must know the port.
pub fn parse_bind_address(s: &str) -> Result<SocketAddr, String> {
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("{s:?} is not host:port (like \":8081\" or \"127.0.0.1:8081\")"));
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{s:?}: port {port:?} is not a number from 1 to 65535"))?;
    if port == 0 {
        return Err(format!(
            "{s:?}: port 0 is not allowed; probes and Services need a fixed port"
        ));
    }
    let ip: IpAddr = match host {
        "" => Ipv4Addr::UNSPECIFIED.into(),
        "localhost" => Ipv4Addr::LOCALHOST.into(),
        h => {
            let bare = h.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
            match bare {
                Some(v6) => v6.parse::<std::net::Ipv6Addr>().map(IpAddr::from).ok(),
                None => h.parse::<Ipv4Addr>().map(IpAddr::from).ok(),
            }
            .ok_or_else(|| {
                format!(
                    "{s:?}: host {h:?} must be an IP address (IPv6 in brackets), localhost, or empty for all interfaces"
                )
            })?
        }
    };
    Ok(SocketAddr::new(ip, port))
}

/// Parses a duration in Go's `time.ParseDuration` syntax: a sequence of decimal numbers with
/// optional fraction and a unit (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`), e.g. `1h30m`, `1.5s`,
/// `500ms`; `0` alone is zero. Negative durations are refused.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let bad = |why: &str| {
        Err(format!(
            "{s:?} is not a duration ({why}); use Go syntax like \"1h\", \"30m\", \"1h30m\" or \"500ms\""
        ))
    };
    if let Some(r) = s.strip_prefix('-') {
        return match parse_go_duration(r) {
            Ok(Duration::ZERO) if !r.starts_with(['-', '+']) => Ok(Duration::ZERO),
            Ok(_) => Err(format!("{s:?} is negative; a delay is 0 or more")),
            Err(e) => Err(e),
        };
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return bad("empty");
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let (int, after) = rest.split_at(int_end);
        let (frac, after) = match after.strip_prefix('.') {
            Some(a) => {
                let end = a.find(|c: char| !c.is_ascii_digit()).unwrap_or(a.len());
                a.split_at(end)
            }
            None => ("", after),
        };
        if int.is_empty() && frac.is_empty() {
            return bad("a number is missing");
        }
        let unit_end = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);
        let nanos_per: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3600 * 1_000_000_000,
            "" => return bad("a unit is missing"),
            u => return bad(&format!("unknown unit {u:?}")),
        };
        let too_large = || format!("{s:?} is too large");
        let int: u128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| too_large())?
        };
        let mut part = int.checked_mul(nanos_per).ok_or_else(too_large)?;
        // Fractions beyond nanoseconds are truncated, as Go does.
        let mut scale = nanos_per;
        for d in frac.bytes().take(20) {
            scale /= 10;
            part += u128::from(d - b'0') * scale;
        }
        total = total.checked_add(part).ok_or_else(too_large)?;
        if total > u128::from(u64::MAX) {
            return Err(too_large());
        }
        rest = after;
    }
    Ok(Duration::from_nanos(total as u64))
}

/// Upstream KMM's newer configuration has the webhook port at the top level (`webhookPort`,
/// `internal/config/config.go`), the older one as `webhook.port`: both are accepted, and one file
/// naming two different ports is refused.
fn fold_webhook_port(path: &Path, mut value: serde_json::Value) -> Result<serde_json::Value, ConfigError> {
    let invalid = |key: &str, reason: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        key: key.into(),
        reason,
    };
    let Some(port) = value.as_object_mut().and_then(|o| o.remove("webhookPort")) else {
        return Ok(value);
    };
    let n = port
        .as_u64()
        .filter(|p| (1..=u64::from(u16::MAX)).contains(p))
        .ok_or_else(|| invalid("webhookPort", format!("{port} is not a port (1 to 65535)")))?;
    match value.pointer("/webhook/port") {
        Some(other) if other.as_u64() != Some(n) => {
            return Err(invalid(
                "webhookPort",
                format!("{n} disagrees with webhook.port {other}: give the port once"),
            ));
        }
        _ => {}
    }
    let webhook = value
        .as_object_mut()
        .expect("the document is a mapping")
        .entry("webhook")
        .or_insert_with(|| serde_json::json!({}));
    match webhook.as_object_mut() {
        Some(w) => {
            w.insert("port".into(), n.into());
        }
        None => return Err(invalid("webhook", "must be a mapping of settings".into())),
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_yaml(Path::new("test.yaml"), text)
    }

    fn invalid(text: &str) -> (String, String) {
        match parse(text) {
            Err(ConfigError::Invalid { key, reason, .. }) => (key, reason),
            other => panic!("expected an invalid key, got {other:?}"),
        }
    }

    const FULL: &str = r#"
healthProbeBindAddress: :8081
job:
  gcDelay: 1h
leaderElection:
  enabled: true
  resourceID: kmm.sigs.x-k8s.io
webhook:
  disableHTTP2: true # CVE-2023-44487
  port: 9443
metrics:
  enableAuthnAuthz: true
  disableHTTP2: true # CVE-2023-44487
  bindAddress: 0.0.0.0:8443
  secureServing: true
worker:
  runAsUser: 0
  seLinuxType: spc_t
  setFirmwareClassPath: /var/lib/firmware
"#;

    #[test]
    fn the_upstream_sample_parses() {
        let c = parse(FULL).unwrap();
        let mut want = Config::default();
        want.job.gc_delay = Duration::from_secs(3600);
        want.worker.set_firmware_class_path = Some("/var/lib/firmware".into());
        assert_eq!(c, want);
    }

    /// Upstream KMM's own configuration files at HEAD, unchanged (`internal/config/testdata/`
    /// `config.yaml` and `hub-config.yaml`; the hub's ConfigMap has the same keys).
    const UPSTREAM_SPOKE: &str = r#"
healthProbeBindAddress: :8081
webhookPort: 9443
job:
  gcDelay: "0s"
leaderElection:
  enabled: true
  resourceID: kmm.sigs.x-k8s.io
metrics:
  enableAuthnAuthz: true
  bindAddress: 0.0.0.0:8443
  secureServing: true
worker:
  runAsUser: 0
  seLinuxType: spc_t
  firmwareHostPath: /lib/firmware
"#;

    #[test]
    fn upstreams_newer_files_parse_with_webhook_port_at_the_top() {
        let c = parse(UPSTREAM_SPOKE).unwrap();
        assert_eq!(c.webhook.port, 9443);
        assert_eq!(c.worker.firmware_host_path, "/lib/firmware");
        let hub_text = UPSTREAM_SPOKE.replace("resourceID: kmm.sigs.x-k8s.io", "resourceID: kmm-hub.sigs.x-k8s.io");
        let hub = Config::parse(Path::new("hub.yaml"), &hub_text, HUB_LEASE).unwrap();
        assert_eq!(hub.leader_election.resource_id, HUB_LEASE);
        let moved = parse("webhookPort: 9444\n").unwrap();
        assert_eq!(moved.webhook.port, 9444);
        assert_eq!(
            parse("webhookPort: 9444\nwebhook:\n  port: 9444\n")
                .unwrap()
                .webhook
                .port,
            9444
        );
        let (key, reason) = invalid("webhookPort: 9444\nwebhook:\n  port: 9443\n");
        assert_eq!(key, "webhookPort");
        assert!(reason.contains("disagrees with webhook.port 9443"), "{reason}");
        let (key, reason) = invalid("webhookPort: 70000\n");
        assert_eq!(key, "webhookPort");
        assert!(reason.contains("not a port"), "{reason}");
        assert_eq!(invalid("webhookPort: x\n").0, "webhookPort");
    }

    #[test]
    fn defaults_are_upstreams() {
        let c = Config::default();
        assert_eq!(c.health_probe_bind_address, "0.0.0.0:8081".parse().unwrap());
        assert_eq!(c.job.gc_delay, Duration::ZERO);
        assert!(c.leader_election.enabled);
        assert_eq!(c.leader_election.resource_id, "kmm.sigs.x-k8s.io");
        assert!(c.webhook.disable_http2);
        assert_eq!(c.webhook.port, 9443);
        assert_eq!(
            c.webhook.cert_file(),
            Path::new("/tmp/k8s-webhook-server/serving-certs/tls.crt")
        );
        assert!(c.metrics.enable_authn_authz && c.metrics.disable_http2 && c.metrics.secure_serving);
        assert_eq!(c.metrics.bind_address, Some("0.0.0.0:8443".parse().unwrap()));
        assert_eq!(c.metrics.cert_dir, None);
        assert_eq!(c.worker.run_as_user, 0);
        assert_eq!(c.worker.se_linux_type, "spc_t");
        assert_eq!(c.worker.firmware_host_path, "/var/lib/firmware");
        assert_eq!(
            Config::hub_default().leader_election.resource_id,
            "kmm-hub.sigs.x-k8s.io"
        );
    }

    #[test]
    fn missing_keys_take_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
        assert_eq!(parse("# nothing\n").unwrap(), Config::default());
        let c = parse("metrics:\n  secureServing: false\n").unwrap();
        assert!(!c.metrics.secure_serving);
        assert!(c.metrics.enable_authn_authz);
        assert_eq!(c.metrics.bind_address, Config::default().metrics.bind_address);
        let c = parse("metrics:\n  bindAddress: \"0\"\n  certDir: /certs\n").unwrap();
        assert_eq!(c.metrics.bind_address, None);
        assert_eq!(c.metrics.cert_dir, Some(PathBuf::from("/certs")));
        assert_eq!(parse("metrics:\n  certDir: \"\"\n").unwrap().metrics.cert_dir, None);
        assert_eq!(
            parse("webhook:\n  certDir: /w\n").unwrap().webhook.key_file(),
            Path::new("/w/tls.key")
        );
        assert_eq!(
            Config::default().webhook.bind_address(),
            "0.0.0.0:9443".parse().unwrap()
        );
        let w = parse("webhook:\n  host: 127.0.0.1\n  port: 1\n").unwrap().webhook;
        assert_eq!(w.bind_address(), "127.0.0.1:1".parse().unwrap());
        assert_eq!(invalid("webhook:\n  host: example.com\n").0, "webhook.host");
    }

    #[test]
    fn hub_lease_default_applies_only_when_unset() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.yaml");
        std::fs::write(&f, "leaderElection:\n  enabled: false\n").unwrap();
        assert_eq!(Config::load_hub(&f).unwrap().leader_election.resource_id, HUB_LEASE);
        assert_eq!(Config::load(&f).unwrap().leader_election.resource_id, SPOKE_LEASE);
        std::fs::write(&f, "leaderElection:\n  resourceID: mine\n").unwrap();
        assert_eq!(Config::load_hub(&f).unwrap().leader_election.resource_id, "mine");
    }

    #[test]
    fn unknown_keys_are_named() {
        let (key, reason) = invalid("metrics:\n  bindAdress: :8443\n");
        assert_eq!(key, "metrics.bindAdress");
        assert!(reason.contains("unknown field `bindAdress`"), "{reason}");
        let (key, _) = invalid("healthProbeBindAdress: :8081\n");
        assert_eq!(key, "healthProbeBindAdress");
    }

    #[test]
    fn wrong_types_are_named() {
        let (key, reason) = invalid("webhook:\n  port: nine\n");
        assert_eq!(key, "webhook.port");
        assert!(reason.contains("invalid type"), "{reason}");
        let (key, _) = invalid("leaderElection:\n  enabled: maybe\n");
        assert_eq!(key, "leaderElection.enabled");
        let (key, reason) = invalid("webhook:\n  port: 70000\n");
        assert_eq!(key, "webhook.port");
        assert!(reason.contains("70000"), "{reason}");
        let (key, _) = invalid("worker: 5\n");
        assert_eq!(key, "worker");
        let (key, _) = invalid("- a\n");
        assert_eq!(key, ".");
    }

    #[test]
    fn port_zero_and_bad_addresses_are_refused() {
        let (key, reason) = invalid("webhook:\n  port: 0\n");
        assert_eq!(key, "webhook.port");
        assert!(reason.starts_with("port 0 is not allowed"), "{reason}");
        let (key, reason) = invalid("healthProbeBindAddress: \":0\"\n");
        assert_eq!(key, "healthProbeBindAddress");
        assert!(reason.contains("port 0 is not allowed"), "{reason}");
        let (key, reason) = invalid("metrics:\n  bindAddress: example.com:8443\n");
        assert_eq!(key, "metrics.bindAddress");
        assert!(reason.contains("must be an IP address"), "{reason}");
        let (_, reason) = invalid("healthProbeBindAddress: \"8081\"\n");
        assert!(reason.contains("is not host:port"), "{reason}");
        let (_, reason) = invalid("healthProbeBindAddress: \"1.2.3.4:http\"\n");
        assert!(reason.contains("is not a number"), "{reason}");
    }

    #[test]
    fn bind_addresses() {
        assert_eq!(parse_bind_address(":8081").unwrap(), "0.0.0.0:8081".parse().unwrap());
        assert_eq!(
            parse_bind_address("127.0.0.1:1").unwrap(),
            "127.0.0.1:1".parse().unwrap()
        );
        assert_eq!(
            parse_bind_address("localhost:80").unwrap(),
            "127.0.0.1:80".parse().unwrap()
        );
        assert_eq!(parse_bind_address("[::1]:8443").unwrap(), "[::1]:8443".parse().unwrap());
        assert!(parse_bind_address("::1:8443").is_err());
    }

    #[test]
    fn go_durations() {
        let d = |s| parse_go_duration(s).unwrap();
        assert_eq!(d("0"), Duration::ZERO);
        assert_eq!(d("0s"), Duration::ZERO);
        assert_eq!(d("1h"), Duration::from_secs(3600));
        assert_eq!(d("30m"), Duration::from_secs(1800));
        assert_eq!(d("1h30m"), Duration::from_secs(5400));
        assert_eq!(d("500ms"), Duration::from_millis(500));
        assert_eq!(d("1.5s"), Duration::from_millis(1500));
        assert_eq!(d(".5m"), Duration::from_secs(30));
        assert_eq!(
            d("2h45m30.5s"),
            Duration::from_millis((2 * 3600 + 45 * 60 + 30) * 1000 + 500)
        );
        assert_eq!(d("1us"), Duration::from_micros(1));
        assert_eq!(d("1µs"), Duration::from_micros(1));
        assert_eq!(d("7ns"), Duration::from_nanos(7));
        assert_eq!(d("+5s"), Duration::from_secs(5));
        assert_eq!(d("-0s"), Duration::ZERO);
        for bad in [
            "",
            "1",
            "5x",
            "h",
            "1h30",
            "1.s.",
            "-5s",
            "1d",
            "99999999999999999999h",
            " 1h",
        ] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(parse_go_duration("5x").unwrap_err().contains("unknown unit \"x\""));
        assert!(parse_go_duration("-5s").unwrap_err().contains("negative"));
    }

    #[test]
    fn bad_durations_and_paths_are_named() {
        let (key, reason) = invalid("job:\n  gcDelay: 1day\n");
        assert_eq!(key, "job.gcDelay");
        assert!(reason.contains("unknown unit \"day\""), "{reason}");
        let (key, _) = invalid("job:\n  gcDelay: 5\n");
        assert_eq!(key, "job.gcDelay");
        let (key, reason) = invalid("worker:\n  firmwareHostPath: lib/firmware\n");
        assert_eq!(key, "worker.firmwareHostPath");
        assert!(reason.contains("absolute"), "{reason}");
        let (key, _) = invalid("leaderElection:\n  resourceID: Not_A_Name\n");
        assert_eq!(key, "leaderElection.resourceID");
        let (key, _) = invalid("worker:\n  runAsUser: -1\n");
        assert_eq!(key, "worker.runAsUser");
        let (key, _) = invalid("webhook:\n  certDir: \"\"\n");
        assert_eq!(key, "webhook.certDir");
    }

    #[test]
    fn unreadable_and_non_yaml_files_are_errors() {
        let err = Config::load(Path::new("/nonexistent/kmm.yaml")).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(err.to_string().contains("/nonexistent/kmm.yaml"), "{err}");
        let err = parse("metrics: [\n").unwrap_err();
        assert!(matches!(err, ConfigError::Yaml { .. }), "{err:?}");
        let msg = invalid_msg("webhook:\n  port: 0\n");
        assert!(
            msg.starts_with("the config file test.yaml: webhook.port: port 0"),
            "{msg}"
        );
    }

    fn invalid_msg(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }
}
