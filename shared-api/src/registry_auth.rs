//! Registry credentials from a `.dockerconfigjson` (the content of an `imageRepoSecret`).

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use serde::Deserialize;
use zeroize::Zeroizing;

/// Credentials for one registry. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub enum RegistryCredentials {
    Anonymous,
    Basic {
        username: String,
        password: Zeroizing<String>,
    },
}

impl fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryCredentials::Anonymous => f.write_str("Anonymous"),
            RegistryCredentials::Basic { username, .. } => {
                write!(f, "Basic({username}, password redacted)")
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{source_name}: not a docker config JSON: {reason}")]
    Json { source_name: String, reason: String },
    #[error("{source_name}: entry for {registry:?}: {reason}")]
    Entry {
        source_name: String,
        registry: String,
        reason: String,
    },
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
}

#[derive(Deserialize)]
struct DockerAuth {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// Parsed `.dockerconfigjson` / `config.json` (`{"auths": {...}}`), or a legacy `.dockercfg`
/// (the map of registries without the `auths` wrapper).
#[derive(Clone, Default)]
pub struct DockerConfigAuth {
    entries: Vec<(String, RegistryCredentials)>,
}

impl fmt::Debug for DockerConfigAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.entries.iter().map(|(k, _)| k)).finish()
    }
}

/// `https://index.docker.io/v1/` → `index.docker.io`, `http://host:5000/x` → `host:5000`.
fn normalize_host(key: &str) -> String {
    let k = key.trim().trim_start_matches("https://").trim_start_matches("http://");
    let host = k.split('/').next().unwrap_or(k).to_ascii_lowercase();
    match host.as_str() {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => "docker.io".into(),
        _ => host,
    }
}

impl DockerConfigAuth {
    /// Parses the JSON. `source` names it in errors (a path or a Secret).
    pub fn parse(json: &[u8], source: &str) -> Result<Self, AuthError> {
        let value: serde_json::Value = serde_json::from_slice(json).map_err(|e| AuthError::Json {
            source_name: source.to_string(),
            // serde_json's messages carry positions, not content.
            reason: e.to_string(),
        })?;
        let cfg: DockerConfig = if value.get("auths").is_some() {
            serde_json::from_value(value)
        } else {
            serde_json::from_value(serde_json::json!({ "auths": value }))
        }
        .map_err(|e| AuthError::Json {
            source_name: source.to_string(),
            reason: e.to_string(),
        })?;
        let mut entries = Vec::new();
        for (registry, a) in cfg.auths {
            let entry_err = |reason: &str| AuthError::Entry {
                source_name: source.to_string(),
                registry: registry.clone(),
                reason: reason.to_string(),
            };
            let creds = match (&a.username, &a.password, &a.auth) {
                (Some(u), Some(p), _) if !u.is_empty() => RegistryCredentials::Basic {
                    username: u.clone(),
                    password: Zeroizing::new(p.clone()),
                },
                (_, _, Some(auth)) if !auth.is_empty() => {
                    let decoded = Zeroizing::new(
                        base64::engine::general_purpose::STANDARD
                            .decode(auth.trim())
                            .map_err(|_| entry_err("\"auth\" is not base64"))?,
                    );
                    let text = std::str::from_utf8(&decoded).map_err(|_| entry_err("\"auth\" is not UTF-8"))?;
                    let (u, p) = text
                        .split_once(':')
                        .ok_or_else(|| entry_err("\"auth\" is not base64(\"user:password\")"))?;
                    RegistryCredentials::Basic {
                        username: u.to_string(),
                        password: Zeroizing::new(p.to_string()),
                    }
                }
                _ => RegistryCredentials::Anonymous,
            };
            entries.push((normalize_host(&registry), creds));
        }
        Ok(DockerConfigAuth { entries })
    }

    /// The registries this secret holds credentials for (normalised hosts, sorted), for log lines.
    pub fn registries(&self) -> Vec<String> {
        let set: std::collections::BTreeSet<&String> = self
            .entries
            .iter()
            .filter(|(_, c)| matches!(c, RegistryCredentials::Basic { .. }))
            .map(|(h, _)| h)
            .collect();
        set.into_iter().cloned().collect()
    }

    /// The credentials for `registry` (a host, `host:port`), anonymous when none match.
    pub fn for_registry(&self, registry: &str) -> RegistryCredentials {
        let want = normalize_host(registry);
        self.entries
            .iter()
            .find(|(h, _)| *h == want)
            .map(|(_, c)| c.clone())
            .unwrap_or(RegistryCredentials::Anonymous)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_field_and_username_password() {
        let json = br#"{"auths":{
            "https://index.docker.io/v1/":{"auth":"dXNlcjpzM2NyZXQ="},
            "127.0.0.1:5000":{"username":"bob","password":"pw:with:colons"}}}"#;
        let a = DockerConfigAuth::parse(json, "secret").unwrap();
        assert_eq!(
            a.for_registry("docker.io"),
            RegistryCredentials::Basic {
                username: "user".into(),
                password: Zeroizing::new("s3cret".into())
            }
        );
        assert_eq!(
            a.for_registry("127.0.0.1:5000"),
            RegistryCredentials::Basic {
                username: "bob".into(),
                password: Zeroizing::new("pw:with:colons".into())
            }
        );
        assert_eq!(a.for_registry("quay.io"), RegistryCredentials::Anonymous);
        let dbg = format!("{:?} {:?}", a, a.for_registry("docker.io"));
        assert!(!dbg.contains("s3cret"), "{dbg}");
    }

    #[test]
    fn legacy_dockercfg_and_errors() {
        let a = DockerConfigAuth::parse(br#"{"quay.io":{"auth":"YTpi"}}"#, "s").unwrap();
        assert!(matches!(a.for_registry("quay.io"), RegistryCredentials::Basic { .. }));
        let e = DockerConfigAuth::parse(b"{not json", "ns/pull-secret")
            .unwrap_err()
            .to_string();
        assert!(e.contains("ns/pull-secret"), "{e}");
        let e = DockerConfigAuth::parse(br#"{"auths":{"r":{"auth":"!!"}}}"#, "s")
            .unwrap_err()
            .to_string();
        assert!(e.contains("base64") && !e.contains("!!"), "{e}");
    }
}
