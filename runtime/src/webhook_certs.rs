//! Webhook certificates the operator makes itself, for clusters where nothing else does
//! (OpenShift's service CA and cert-manager do; a plain cluster installed by an RHACM Policy has
//! neither).
//!
//! A CA and a serving certificate for the webhook Service live in one Secret, shared by every
//! replica: the first to find it missing, stale or for other names writes it, the others use
//! what is there. Each replica writes the pair into its `webhook.certDir` (the file server
//! re-reads it) and puts the CA into the `caBundle` of every webhook of its
//! ValidatingWebhookConfiguration. [`keep`] does this again every few hours, renewing the
//! certificate a month before it expires.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::{Timestamp, tz::TimeZone};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use tokio_util::sync::CancellationToken;

/// Annotation on the Secret: when its serving certificate expires (RFC 3339).
pub const NOT_AFTER_ANNOTATION: &str = "kmm.sigs.x-k8s.io/webhook-cert-not-after";
/// Annotation on the Secret: the names its serving certificate is for, comma-separated.
pub const NAMES_ANNOTATION: &str = "kmm.sigs.x-k8s.io/webhook-cert-names";
/// Renew this long before the serving certificate expires.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// How often [`keep`] looks again.
const RECHECK: Duration = Duration::from_secs(4 * 3600);

/// Errors making, storing or installing the certificates.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("{what}: {source}")]
    Kube {
        /// What was being done.
        what: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// rcgen refused the parameters.
    #[error("making the webhook certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// The certificate directory cannot be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Other replicas kept changing the Secret.
    #[error("Secret {0} kept changing under us")]
    Contended(String),
}

/// Where the certificates go and what they are for.
#[derive(Clone, Debug)]
pub struct SelfSigned {
    /// Namespace of the Secret and the Service.
    pub namespace: String,
    /// The Secret holding `ca.crt`, `tls.crt` and `tls.key`.
    pub secret: String,
    /// The webhook Service: the certificate is for `<service>.<namespace>.svc` (and
    /// `.svc.cluster.local`).
    pub service: String,
    /// More names or IP addresses the certificate is for (a `url` webhook's host).
    pub extra_names: Vec<String>,
    /// The ValidatingWebhookConfiguration whose webhooks get the CA.
    pub configuration: String,
}

impl SelfSigned {
    /// Every name the serving certificate is for, in a stable order.
    pub fn names(&self) -> Vec<String> {
        let svc = format!("{}.{}.svc", self.service, self.namespace);
        let mut names = vec![svc.clone(), format!("{svc}.cluster.local")];
        for n in &self.extra_names {
            if !n.is_empty() && !names.contains(n) {
                names.push(n.clone());
            }
        }
        names
    }
}

/// A CA and a serving certificate it signed, PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pems {
    /// The CA certificate (the webhooks' `caBundle`).
    pub ca: String,
    /// The serving certificate.
    pub cert: String,
    /// Its private key.
    pub key: String,
}

/// A fresh CA and serving certificate for `names`, valid from a year ago (clock skew) until
/// `not_after` (the CA lives ten years longer).
pub fn generate(names: &[String], now: Timestamp) -> Result<(Pems, Timestamp), Error> {
    let today = now.to_zoned(TimeZone::UTC);
    let (y, m) = (i32::from(today.year()), today.month() as u8);
    let not_after = format!("{}-{m:02}-01T00:00:00Z", y + 1)
        .parse::<Timestamp>()
        .expect("a valid date");

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name.push(DnType::CommonName, "kmm webhook CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = rcgen::date_time_ymd(y - 1, m, 1);
    ca.not_after = rcgen::date_time_ymd(y + 11, m, 1);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(names.to_vec())?;
    leaf.distinguished_name.push(DnType::CommonName, names[0].as_str());
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = rcgen::date_time_ymd(y - 1, m, 1);
    leaf.not_after = rcgen::date_time_ymd(y + 1, m, 1);
    let cert = leaf.signed_by(&key, &issuer)?;
    Ok((
        Pems {
            ca: ca_cert.pem(),
            cert: cert.pem(),
            key: key.serialize_pem(),
        },
        not_after,
    ))
}

/// The certificates in `secret` if they are for `names` and valid beyond [`RENEW_BEFORE`].
fn usable(secret: &Secret, names: &[String], now: Timestamp) -> Option<Pems> {
    let annotations = secret.metadata.annotations.as_ref()?;
    if annotations.get(NAMES_ANNOTATION)? != &names.join(",") {
        return None;
    }
    let not_after: Timestamp = annotations.get(NOT_AFTER_ANNOTATION)?.parse().ok()?;
    if not_after.duration_since(now).unsigned_abs() < RENEW_BEFORE || not_after < now {
        return None;
    }
    let data = secret.data.as_ref()?;
    let text = |k: &str| data.get(k).and_then(|b| String::from_utf8(b.0.clone()).ok());
    Some(Pems {
        ca: text("ca.crt")?,
        cert: text("tls.crt")?,
        key: text("tls.key")?,
    })
}

fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Kube { what, source }
}

/// The Secret's certificates, made and stored first if it has none usable.
pub async fn ensure_secret(client: &kube::Client, s: &SelfSigned) -> Result<Pems, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &s.namespace);
    let names = s.names();
    let what = format!("Secret {}/{}", s.namespace, s.secret);
    for _ in 0..5 {
        let now = Timestamp::now();
        let current = api
            .get_opt(&s.secret)
            .await
            .map_err(kube_err(format!("reading {what}")))?;
        if let Some(p) = current.as_ref().and_then(|c| usable(c, &names, now)) {
            return Ok(p);
        }
        let (pems, not_after) = generate(&names, now)?;
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(s.secret.clone()),
                namespace: Some(s.namespace.clone()),
                resource_version: current.as_ref().and_then(|c| c.metadata.resource_version.clone()),
                annotations: Some(BTreeMap::from([
                    (NOT_AFTER_ANNOTATION.to_owned(), not_after.to_string()),
                    (NAMES_ANNOTATION.to_owned(), names.join(",")),
                ])),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(BTreeMap::from([
                ("ca.crt".to_owned(), ByteString(pems.ca.clone().into_bytes())),
                ("tls.crt".to_owned(), ByteString(pems.cert.clone().into_bytes())),
                ("tls.key".to_owned(), ByteString(pems.key.clone().into_bytes())),
            ])),
            ..Default::default()
        };
        let written = match current {
            None => api.create(&PostParams::default(), &secret).await,
            Some(_) => api.replace(&s.secret, &PostParams::default(), &secret).await,
        };
        match written {
            Ok(_) => {
                tracing::info!(secret = %what, names = %names.join(","), %not_after, "webhook certificate made");
                return Ok(pems);
            }
            // Another replica wrote it first: use theirs.
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(kube_err(format!("writing {what}"))(e)),
        }
    }
    Err(Error::Contended(what))
}

/// Writes the serving pair into `dir` (`tls.crt`, `tls.key`), each file replaced at once.
pub fn write_files(dir: &Path, pems: &Pems) -> Result<(), Error> {
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp"));
        let err = |source| Error::Write {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(err)?;
        std::fs::write(&tmp, text).map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)
    };
    // Key first: the file server reloads on the certificate's change.
    write("tls.key", &pems.key)?;
    write("tls.crt", &pems.cert)
}

/// Puts `ca` into the `caBundle` of every webhook of the configuration that lacks it. False
/// when there is no such configuration (yet).
pub async fn inject_ca(client: &kube::Client, configuration: &str, ca: &str) -> Result<bool, Error> {
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let what = format!("ValidatingWebhookConfiguration {configuration}");
    let Some(vwc) = api
        .get_opt(configuration)
        .await
        .map_err(kube_err(format!("reading {what}")))?
    else {
        tracing::warn!(
            configuration,
            "no such ValidatingWebhookConfiguration yet: its webhooks get no CA"
        );
        return Ok(false);
    };
    let bundle = base64::engine::general_purpose::STANDARD.encode(ca);
    let stale: Vec<serde_json::Value> = vwc
        .webhooks
        .unwrap_or_default()
        .iter()
        .filter(|w| w.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()) != Some(ca.as_bytes()))
        .map(|w| serde_json::json!({"name": w.name, "clientConfig": {"caBundle": bundle}}))
        .collect();
    if stale.is_empty() {
        return Ok(true);
    }
    // Webhooks merge by name in a strategic merge patch: only their caBundle changes.
    api.patch(
        configuration,
        &PatchParams::default(),
        &Patch::Strategic(serde_json::json!({ "webhooks": stale })),
    )
    .await
    .map_err(kube_err(format!("putting the CA into {what}")))?;
    tracing::info!(configuration, webhooks = stale.len(), "webhook CA installed");
    Ok(true)
}

/// Makes (or reads) the certificates, writes them into `dir` and installs the CA: once now,
/// returning the first error, then every few hours on a background task until `shutdown`.
pub async fn keep(
    client: kube::Client,
    s: SelfSigned,
    dir: std::path::PathBuf,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let once = |client: kube::Client, s: SelfSigned, dir: std::path::PathBuf| async move {
        let pems = ensure_secret(&client, &s).await?;
        write_files(&dir, &pems)?;
        inject_ca(&client, &s.configuration, &pems.ca).await
    };
    let mut installed = once(client.clone(), s.clone(), dir.clone()).await?;
    tokio::spawn(async move {
        loop {
            // Installed along with us, the configuration may come a little later.
            let wait = if installed { RECHECK } else { Duration::from_secs(10) };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            match once(client.clone(), s.clone(), dir.clone()).await {
                Ok(i) => installed = i,
                Err(e) => tracing::warn!(error = %e, "renewing the webhook certificate; trying again later"),
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SelfSigned {
        SelfSigned {
            namespace: "kmm-system".into(),
            secret: "kmm-operator-webhook-self-signed".into(),
            service: "kmm-operator-webhook-service".into(),
            extra_names: vec!["127.0.0.1".into(), "kmm-operator-webhook-service.kmm-system.svc".into()],
            configuration: "kmm-operator-validating-webhook-configuration".into(),
        }
    }

    fn secret_of(pems: &Pems, names: &[String], not_after: Timestamp) -> Secret {
        Secret {
            metadata: ObjectMeta {
                annotations: Some(BTreeMap::from([
                    (NOT_AFTER_ANNOTATION.to_owned(), not_after.to_string()),
                    (NAMES_ANNOTATION.to_owned(), names.join(",")),
                ])),
                ..Default::default()
            },
            data: Some(BTreeMap::from([
                ("ca.crt".to_owned(), ByteString(pems.ca.clone().into_bytes())),
                ("tls.crt".to_owned(), ByteString(pems.cert.clone().into_bytes())),
                ("tls.key".to_owned(), ByteString(pems.key.clone().into_bytes())),
            ])),
            ..Default::default()
        }
    }

    #[test]
    fn names_cover_the_service_and_extras_once() {
        assert_eq!(
            spec().names(),
            [
                "kmm-operator-webhook-service.kmm-system.svc",
                "kmm-operator-webhook-service.kmm-system.svc.cluster.local",
                "127.0.0.1",
            ]
        );
    }

    #[test]
    fn a_secret_is_reused_until_a_month_before_expiry_or_a_name_change() {
        let names = spec().names();
        let now: Timestamp = "2026-12-01T12:00:00Z".parse().unwrap();
        let (pems, not_after) = generate(&names, now).unwrap();
        assert_eq!(not_after.to_string(), "2027-12-01T00:00:00Z");
        let s = secret_of(&pems, &names, not_after);
        assert_eq!(usable(&s, &names, now), Some(pems.clone()));
        let late: Timestamp = "2027-11-15T00:00:00Z".parse().unwrap();
        assert_eq!(usable(&s, &names, late), None, "renewed a month before expiry");
        let expired: Timestamp = "2028-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(usable(&s, &names, expired), None);
        assert_eq!(usable(&s, &names[..2], now), None, "other names");
        let mut partial = s.clone();
        partial.data.as_mut().unwrap().remove("tls.key");
        assert_eq!(usable(&partial, &names, now), None);
    }

    #[tokio::test]
    async fn the_generated_certificate_serves_tls_trusted_by_its_ca() {
        use crate::tls::testing::request_trusting;
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let dir = tempfile::tempdir().unwrap();
        let (pems, _) = generate(&["localhost".into(), "127.0.0.1".into()], Timestamp::now()).unwrap();
        write_files(dir.path(), &pems).unwrap();
        let mut cfg = crate::config::Webhook {
            cert_dir: dir.path().to_path_buf(),
            host: std::net::Ipv4Addr::LOCALHOST.into(),
            ..Default::default()
        };
        cfg.port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let token = CancellationToken::new();
        let routes = axum::Router::new().route("/x", axum::routing::post(|| async { "ok" }));
        crate::webhook::serve(&cfg, routes, token.clone()).await.unwrap();
        let (_, _, out) = request_trusting(
            cfg.port,
            CertificateDer::from_pem_slice(pems.ca.as_bytes()).unwrap(),
            &[],
            "POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 200") && out.ends_with("ok"), "{out}");
        token.cancel();
    }
}
