//! The build and sign recipes of one kernel mapping: the Module's (container-level) recipe
//! merged with the mapping's, as upstream KMM's kernel mapper does (`getRelevantBuild`,
//! `getRelevantSign` in `internal/module/kernelmapper.go`). The hub, the spoke and a standalone
//! build all use these, so one YAML means one recipe everywhere.

use crate::module::{Build, BuildArg, Sign};

/// The build of a mapping: the container's build with the mapping's on top. The mapping's
/// `dockerfileConfigMap` replaces the container's; its build args replace the container's of the
/// same name (the others are appended, sorted by name); its secrets are appended. Everything else
/// (`baseImageRegistryTLS`, `selector`, `kanikoParams`) is the container's.
pub fn relevant_build(container: Option<&Build>, mapping: Option<&Build>) -> Option<Build> {
    let (c, m) = match (container, mapping) {
        (None, m) => return m.cloned(),
        (c, None) => return c.cloned(),
        (Some(c), Some(m)) => (c, m),
    };
    let mut b = c.clone();
    if m.dockerfile_config_map.is_some() {
        b.dockerfile_config_map = m.dockerfile_config_map.clone();
    }
    b.build_args = override_build_args(b.build_args, &m.build_args);
    b.secrets.extend(m.secrets.iter().cloned());
    Some(b)
}

/// `args` with each override replacing the argument of its name in place; overrides that
/// replace nothing are appended in name order (upstream's `ApplyBuildArgOverrides`).
pub fn override_build_args(mut args: Vec<BuildArg>, overrides: &[BuildArg]) -> Vec<BuildArg> {
    let by_name: std::collections::BTreeMap<&str, &BuildArg> = overrides.iter().map(|o| (o.name.as_str(), o)).collect();
    let mut unused: std::collections::BTreeSet<&str> = by_name.keys().copied().collect();
    for a in &mut args {
        if let Some(o) = by_name.get(a.name.as_str()) {
            unused.remove(o.name.as_str());
            *a = (*o).clone();
        }
    }
    args.extend(unused.into_iter().map(|n| by_name[n].clone()));
    args
}

/// The signing recipe of a mapping: the container's with the mapping's on top. The mapping's
/// `unsignedImage`, `keySecret` and `certSecret` replace the container's when set; its
/// `filesToSign` are appended to the container's. (Variables are substituted afterwards.)
pub fn relevant_sign(container: Option<&Sign>, mapping: Option<&Sign>) -> Option<Sign> {
    let (c, m) = match (container, mapping) {
        (None, m) => return m.cloned(),
        (c, None) => return c.cloned(),
        (Some(c), Some(m)) => (c, m),
    };
    let mut s = c.clone();
    if m.unsigned_image.as_deref().is_some_and(|u| !u.is_empty()) {
        s.unsigned_image = m.unsigned_image.clone();
    }
    if m.key_secret.is_some() {
        s.key_secret = m.key_secret.clone();
    }
    if m.cert_secret.is_some() {
        s.cert_secret = m.cert_secret.clone();
    }
    s.files_to_sign.extend(m.files_to_sign.iter().cloned());
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::module::TlsOptions;
    use k8s_openapi::api::core::v1::LocalObjectReference;

    fn arg(name: &str, value: &str) -> BuildArg {
        BuildArg {
            name: name.into(),
            value: value.into(),
        }
    }

    fn r(name: &str) -> LocalObjectReference {
        LocalObjectReference { name: name.into() }
    }

    #[test]
    fn build_args_are_overridden_by_name_and_the_rest_appended_in_name_order() {
        let args = vec![arg("A", "1"), arg("B", "2")];
        let out = override_build_args(args, &[arg("Z", "26"), arg("B", "two"), arg("C", "3")]);
        assert_eq!(out, [arg("A", "1"), arg("B", "two"), arg("C", "3"), arg("Z", "26")]);
    }

    #[test]
    fn mapping_build_merges_onto_the_container_build() {
        let tls = TlsOptions {
            insecure: true,
            insecure_skip_tls_verify: false,
        };
        let container = Build {
            build_args: vec![arg("KVER", "x"), arg("FLAVOR", "generic")],
            secrets: vec![r("s1")],
            base_image_registry_tls: Some(tls),
            dockerfile_config_map: Some(r("default-dockerfile")),
            ..Default::default()
        };
        let mapping = Build {
            build_args: vec![arg("FLAVOR", "rt")],
            secrets: vec![r("s2")],
            dockerfile_config_map: Some(r("rt-dockerfile")),
            ..Default::default()
        };
        let b = relevant_build(Some(&container), Some(&mapping)).unwrap();
        assert_eq!(b.dockerfile_config_map, Some(r("rt-dockerfile")));
        assert_eq!(b.build_args, [arg("KVER", "x"), arg("FLAVOR", "rt")]);
        assert_eq!(b.secrets, [r("s1"), r("s2")]);
        assert_eq!(b.base_image_registry_tls, Some(tls), "stays the container's");
        // A mapping build without a Dockerfile keeps the container's.
        let only_args = Build {
            build_args: vec![arg("NEW", "1")],
            ..Default::default()
        };
        let b = relevant_build(Some(&container), Some(&only_args)).unwrap();
        assert_eq!(b.dockerfile_config_map, Some(r("default-dockerfile")));
        assert_eq!(b.build_args.len(), 3);
        assert_eq!(relevant_build(None, Some(&mapping)), Some(mapping.clone()));
        assert_eq!(relevant_build(Some(&container), None), Some(container));
        assert_eq!(relevant_build(None, None), None);
    }

    #[test]
    fn mapping_sign_merges_onto_the_container_sign() {
        let container = Sign {
            unsigned_image: Some("reg/u:${KERNEL_FULL_VERSION}".into()),
            key_secret: Some(r("key")),
            cert_secret: Some(r("cert")),
            files_to_sign: vec!["/opt/lib/modules/${KERNEL_FULL_VERSION}/a.ko".into()],
            ..Default::default()
        };
        let mapping = Sign {
            cert_secret: Some(r("other-cert")),
            unsigned_image: Some(String::new()),
            files_to_sign: vec!["/opt/lib/modules/${KERNEL_FULL_VERSION}/b.ko".into()],
            ..Default::default()
        };
        let s = relevant_sign(Some(&container), Some(&mapping)).unwrap();
        assert_eq!(
            s.unsigned_image, container.unsigned_image,
            "an empty unsignedImage overrides nothing"
        );
        assert_eq!((s.key_secret, s.cert_secret), (Some(r("key")), Some(r("other-cert"))));
        assert_eq!(
            s.files_to_sign,
            [
                "/opt/lib/modules/${KERNEL_FULL_VERSION}/a.ko",
                "/opt/lib/modules/${KERNEL_FULL_VERSION}/b.ko"
            ]
        );
        assert_eq!(relevant_sign(None, Some(&mapping)), Some(mapping));
        assert_eq!(relevant_sign(None, None), None);
    }
}
