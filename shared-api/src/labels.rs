//! Node label, annotation and object label keys, built with the Kubernetes limits enforced.
//!
//! A qualified name is `[prefix/]name`: the prefix a DNS subdomain of at most 253 characters,
//! the name at most 63 characters of `[A-Za-z0-9_.-]`, starting and ending alphanumeric.
//! Keys embed the Module's namespace and name, so long names can overflow: the builders report
//! that instead of producing a key the API server would reject.

use thiserror::Error;

/// Prefix of the per-module node labels.
pub const NODE_LABEL_PREFIX: &str = "kmm.node.kubernetes.io";
/// Prefix of the labels the controller drives during an ordered upgrade.
pub const BETA_NODE_LABEL_PREFIX: &str = "beta.kmm.node.kubernetes.io";
/// Label on hub ManifestWorks naming their ManagedClusterModule.
pub const MCM_NAME_LABEL: &str = "kmm.node.kubernetes.io/managedclustermodule.name";
/// Label on namespaces that hold Modules (as upstream KMM sets it): the namespace-deletion
/// webhook selects on it.
pub const CONTAINS_MODULES_LABEL: &str = "kmm.node.k8s.io/contains-modules";
/// Maximum length of the name part of a qualified name, and of a label value.
pub const MAX_NAME_LEN: usize = 63;
/// Maximum length of a qualified name's prefix.
pub const MAX_PREFIX_LEN: usize = 253;

/// A key or value that Kubernetes would reject.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{what} {value:?} is invalid: {reason}")]
pub struct KeyError {
    /// What was being built ("label key", "label value", "annotation key").
    pub what: &'static str,
    /// The offending string.
    pub value: String,
    /// Why.
    pub reason: String,
}

fn alnum(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name part is empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "the name part is {} characters long; the limit is {MAX_NAME_LEN}",
            name.len()
        ));
    }
    if !name.starts_with(alnum) || !name.ends_with(alnum) {
        return Err("the name part must start and end with a letter or digit".into());
    }
    if let Some(c) = name.chars().find(|&c| !(alnum(c) || matches!(c, '-' | '_' | '.'))) {
        return Err(format!(
            "the name part contains {c:?}; only letters, digits, '-', '_' and '.' are allowed"
        ));
    }
    Ok(())
}

/// Checks a DNS-1123 subdomain (lowercase, at most 253, dot-separated labels).
pub fn check_dns_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("is empty".into());
    }
    if s.len() > MAX_PREFIX_LEN {
        return Err(format!("is {} characters long; the limit is {MAX_PREFIX_LEN}", s.len()));
    }
    for part in s.split('.') {
        check_dns_label(part).map_err(|r| format!("part {part:?} {r}"))?;
    }
    Ok(())
}

/// Checks a DNS-1123 label (lowercase alphanumerics and '-', at most 63, alphanumeric ends).
pub fn check_dns_label(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("is empty".into());
    }
    if s.len() > MAX_NAME_LEN {
        return Err(format!("is {} characters long; the limit is {MAX_NAME_LEN}", s.len()));
    }
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !s.starts_with(ok) || !s.ends_with(ok) || !s.chars().all(|c| ok(c) || c == '-') {
        return Err(
            "must consist of lowercase letters, digits and '-', and start and end with a letter or digit".into(),
        );
    }
    Ok(())
}

/// Checks a qualified name (label or annotation key).
pub fn check_qualified_name(key: &str) -> Result<(), String> {
    match key.split_once('/') {
        Some((prefix, name)) => {
            check_dns_subdomain(prefix).map_err(|r| format!("the prefix {r}"))?;
            check_name(name)
        }
        None => check_name(key),
    }
}

/// A label key, checked.
pub fn label_key(key: String) -> Result<String, KeyError> {
    check_qualified_name(&key).map_err(|reason| KeyError {
        what: "label key",
        value: key.clone(),
        reason,
    })?;
    Ok(key)
}

/// An annotation key, checked (same syntax as a label key).
pub fn annotation_key(key: String) -> Result<String, KeyError> {
    check_qualified_name(&key).map_err(|reason| KeyError {
        what: "annotation key",
        value: key.clone(),
        reason,
    })?;
    Ok(key)
}

/// Checks a label value (empty, or at most 63 of `[A-Za-z0-9_.-]` with alphanumeric ends).
pub fn label_value(value: &str) -> Result<(), KeyError> {
    if value.is_empty() {
        return Ok(());
    }
    check_name(value).map_err(|r| KeyError {
        what: "label value",
        value: value.to_owned(),
        reason: r.replace("the name part", "the value"),
    })
}

fn module_key(prefix: &str, before: &str, namespace: &str, name: &str, after: &str) -> Result<String, KeyError> {
    label_key(format!("{prefix}/{before}{namespace}.{name}{after}")).map_err(|mut e| {
        if e.reason.contains("characters long") {
            let budget = MAX_NAME_LEN - before.len() - after.len() - 1;
            e.reason = format!(
                "{}; namespace and name together may be at most {budget} characters here, they are {}",
                e.reason,
                namespace.len() + name.len()
            );
        }
        e
    })
}

/// `kmm.node.kubernetes.io/<ns>.<name>.ready`: the module is loaded on the node.
pub fn module_ready(namespace: &str, name: &str) -> Result<String, KeyError> {
    module_key(NODE_LABEL_PREFIX, "", namespace, name, ".ready")
}

/// `kmm.node.kubernetes.io/<ns>.<name>.version.ready`: the loaded module version.
pub fn module_version_ready(namespace: &str, name: &str) -> Result<String, KeyError> {
    module_key(NODE_LABEL_PREFIX, "", namespace, name, ".version.ready")
}

/// `kmm.node.kubernetes.io/<ns>.<name>.device-plugin-ready`: the device plugin pod is ready.
pub fn device_plugin_ready(namespace: &str, name: &str) -> Result<String, KeyError> {
    module_key(NODE_LABEL_PREFIX, "", namespace, name, ".device-plugin-ready")
}

/// `kmm.node.kubernetes.io/<ns>.<name>.device-plugin-target`: the node should run the plugin.
pub fn device_plugin_target(namespace: &str, name: &str) -> Result<String, KeyError> {
    module_key(NODE_LABEL_PREFIX, "", namespace, name, ".device-plugin-target")
}

/// `kmm.node.kubernetes.io/version-module.<ns>.<name>`: set by the administrator, the version
/// the node should run.
pub fn module_version(namespace: &str, name: &str) -> Result<String, KeyError> {
    module_key(NODE_LABEL_PREFIX, "version-module.", namespace, name, "")
}

/// `beta.kmm.node.kubernetes.io/version-worker-pod.<ns>.<name>`: the version the worker pods
/// should load, driven by the controller.
pub fn worker_pod_version(namespace: &str, name: &str) -> Result<String, KeyError> {
    module_key(BETA_NODE_LABEL_PREFIX, "version-worker-pod.", namespace, name, "")
}

/// `beta.kmm.node.kubernetes.io/version-schedule-pod.<ns>.<name>`: the version whose device
/// plugin may be scheduled, driven by the controller.
pub fn schedule_pod_version(namespace: &str, name: &str) -> Result<String, KeyError> {
    module_key(BETA_NODE_LABEL_PREFIX, "version-schedule-pod.", namespace, name, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_upstream_shape() {
        assert_eq!(
            module_ready("default", "kmm-ci-a").unwrap(),
            "kmm.node.kubernetes.io/default.kmm-ci-a.ready"
        );
        assert_eq!(
            module_version_ready("ns", "m").unwrap(),
            "kmm.node.kubernetes.io/ns.m.version.ready"
        );
        assert_eq!(
            device_plugin_ready("ns", "m").unwrap(),
            "kmm.node.kubernetes.io/ns.m.device-plugin-ready"
        );
        assert_eq!(
            device_plugin_target("ns", "m").unwrap(),
            "kmm.node.kubernetes.io/ns.m.device-plugin-target"
        );
        assert_eq!(
            module_version("ns", "m").unwrap(),
            "kmm.node.kubernetes.io/version-module.ns.m"
        );
        assert_eq!(
            worker_pod_version("ns", "m").unwrap(),
            "beta.kmm.node.kubernetes.io/version-worker-pod.ns.m"
        );
        assert_eq!(
            schedule_pod_version("ns", "m").unwrap(),
            "beta.kmm.node.kubernetes.io/version-schedule-pod.ns.m"
        );
    }

    #[test]
    fn length_limits_are_reported_with_the_budget() {
        // "version-worker-pod." is 19 characters: namespace + name may be 63 - 19 - 1 = 43.
        let ns = "n".repeat(20);
        assert!(worker_pod_version(&ns, &"m".repeat(23)).is_ok());
        let e = worker_pod_version(&ns, &"m".repeat(24)).unwrap_err();
        assert_eq!(e.what, "label key");
        assert_eq!(
            e.reason,
            "the name part is 64 characters long; the limit is 63; namespace and name together may be at most 43 characters here, they are 44"
        );
        // ".ready" is 6 characters: 63 - 6 - 1 = 56.
        assert!(module_ready(&ns, &"m".repeat(36)).is_ok());
        assert!(module_ready(&ns, &"m".repeat(37)).is_err());
        // ".device-plugin-target" and "version-schedule-pod." are 21: 63 - 21 - 1 = 41, the
        // limit validation applies to every Module (validation::MAX_NAME_AND_NAMESPACE).
        for key in [device_plugin_target, schedule_pod_version] {
            assert!(key(&ns, &"m".repeat(21)).is_ok());
            assert!(key(&ns, &"m".repeat(22)).is_err());
        }
        assert!(module_ready(&ns, &"m".repeat(22)).is_ok());
    }

    #[test]
    fn qualified_names_and_values() {
        assert!(check_qualified_name("node-role.kubernetes.io/worker").is_ok());
        assert!(check_qualified_name("plain").is_ok());
        assert!(
            check_qualified_name("Bad_Prefix/x")
                .unwrap_err()
                .starts_with("the prefix part")
        );
        assert!(check_qualified_name("a/-x").unwrap_err().contains("start and end"));
        assert!(check_qualified_name("a/x y").unwrap_err().contains("' '"));
        assert!(annotation_key(format!("{NODE_LABEL_PREFIX}/{}", "a".repeat(64))).is_err());
        assert!(label_value("").is_ok());
        assert!(label_value("v1.2_3-rc").is_ok());
        let e = label_value("v1 ").unwrap_err();
        assert_eq!(
            e.to_string(),
            "label value \"v1 \" is invalid: the value must start and end with a letter or digit"
        );
        assert!(
            label_value(&"1".repeat(64))
                .unwrap_err()
                .reason
                .contains("64 characters")
        );
    }

    #[test]
    fn dns_names() {
        assert!(check_dns_label("kmm-tests").is_ok());
        assert!(check_dns_label("Kmm").is_err());
        assert!(check_dns_label(&"a".repeat(64)).is_err());
        assert!(check_dns_subdomain("a.b-c.d").is_ok());
        assert!(check_dns_subdomain("a..b").is_err());
    }
}
