//! The build pod: a kaniko-compatible executor that builds a kmod image from the Dockerfile in a
//! ConfigMap and pushes it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, EnvVar, KeyToPath, Pod, PodSpec, SecretVolumeSource, Volume, VolumeMount,
};
use kube::api::ObjectMeta;
use serde_json::json;
use sha2::{Digest, Sha256};
use shared_api::module::{Build, TlsOptions};

/// `app.kubernetes.io/name` of build pods.
pub const APP: &str = "kmm-build";
/// Label with the build hash: one pod per distinct build.
pub const HASH_LABEL: &str = "hub.kmm.sigs.x-k8s.io/build-hash";
/// Annotation with the image the pod pushes.
pub const IMAGE_ANNOTATION: &str = "hub.kmm.sigs.x-k8s.io/image";
/// Key of the Dockerfile in the ConfigMap (upstream's).
pub const DOCKERFILE_KEY: &str = "dockerfile";

/// Everything a build needs, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildInput<'a> {
    /// The recipe.
    pub build: &'a Build,
    /// Where the executor pushes.
    pub destination: &'a str,
    /// Kernel the image is built for.
    pub kernel: &'a str,
    /// MCM name (`MOD_NAME`).
    pub module_name: &'a str,
    /// Spoke namespace (`MOD_NAMESPACE`).
    pub module_namespace: &'a str,
    /// TLS of the destination registry.
    pub push_tls: TlsOptions,
    /// Secret with push credentials (`.dockerconfigjson`).
    pub push_secret: Option<&'a str>,
    /// Executor image.
    pub executor_image: &'a str,
    /// Namespace the pod runs in (the hub's).
    pub namespace: &'a str,
}

/// A short hash over everything that changes the built image: a changed build spec builds
/// again, an unchanged one never does.
pub fn build_hash(input: &BuildInput<'_>) -> String {
    let mut h = Sha256::new();
    h.update(
        serde_json::to_vec(&json!({
            "build": input.build,
            "destination": input.destination,
            "kernel": input.kernel,
            "name": input.module_name,
            "namespace": input.module_namespace,
            "pushTLS": input.push_tls,
            "executor": input.executor_image,
        }))
        .unwrap_or_default(),
    );
    h.finalize().iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// Build arguments: the user's, then the forced ones (which win, as upstream).
pub fn build_args(input: &BuildInput<'_>) -> Vec<(String, String)> {
    let forced = [
        ("KERNEL_VERSION", input.kernel),
        ("KERNEL_FULL_VERSION", input.kernel),
        ("MOD_NAME", input.module_name),
        ("MOD_NAMESPACE", input.module_namespace),
    ];
    let mut args: Vec<(String, String)> = input
        .build
        .build_args
        .iter()
        .filter(|a| !forced.iter().any(|(f, _)| *f == a.name))
        .map(|a| (a.name.clone(), a.value.clone()))
        .collect();
    args.extend(forced.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    args
}

/// The pod for `input`, named after its hash.
pub fn build_pod(input: &BuildInput<'_>, owner_mcm: &str) -> Pod {
    let hash = build_hash(input);
    let mut args = vec![
        "--dockerfile=/workspace/Dockerfile".to_owned(),
        "--context=dir:///workspace".to_owned(),
        format!("--destination={}", input.destination),
        "--cleanup".to_owned(),
    ];
    args.extend(
        build_args(input)
            .into_iter()
            .map(|(k, v)| format!("--build-arg={k}={v}")),
    );
    if input.push_tls.insecure {
        args.push("--insecure".into());
    }
    if input.push_tls.insecure || input.push_tls.insecure_skip_tls_verify {
        args.push("--skip-tls-verify".into());
    }
    let base_tls = input.build.base_image_registry_tls.unwrap_or_default();
    if base_tls.insecure {
        args.push("--insecure-pull".into());
    }
    if base_tls.insecure || base_tls.insecure_skip_tls_verify {
        args.push("--skip-tls-verify-pull".into());
    }
    if let Some(tag) = input.build.kaniko_params.as_ref().and_then(|k| k.tag.as_deref()) {
        // Recorded for the administrator; the executor image itself is configured on the hub.
        args.push(format!("--label=kmm.kaniko-tag={tag}"));
    }
    let dockerfile_cm = input
        .build
        .dockerfile_config_map
        .as_ref()
        .map(|c| c.name.clone())
        .unwrap_or_default();
    let mut volumes = vec![Volume {
        name: "dockerfile".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: dockerfile_cm,
            items: Some(vec![KeyToPath {
                key: DOCKERFILE_KEY.into(),
                path: "Dockerfile".into(),
                mode: None,
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }];
    let mut mounts = vec![VolumeMount {
        name: "dockerfile".into(),
        mount_path: "/workspace".into(),
        read_only: Some(true),
        ..Default::default()
    }];
    for (i, s) in input.build.secrets.iter().enumerate() {
        let name = format!("secret-{i}");
        volumes.push(Volume {
            name: name.clone(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(s.name.clone()),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name,
            mount_path: format!("/run/secrets/{}", s.name),
            read_only: Some(true),
            ..Default::default()
        });
    }
    let mut env = Vec::new();
    if let Some(secret) = input.push_secret {
        volumes.push(Volume {
            name: "push-secret".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.to_owned()),
                items: Some(vec![KeyToPath {
                    key: ".dockerconfigjson".into(),
                    path: "config.json".into(),
                    mode: None,
                }]),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: "push-secret".into(),
            mount_path: "/kaniko/.docker".into(),
            read_only: Some(true),
            ..Default::default()
        });
        env.push(EnvVar {
            name: "DOCKER_CONFIG".into(),
            value: Some("/kaniko/.docker".into()),
            ..Default::default()
        });
    }
    let labels: BTreeMap<String, String> = [
        ("app.kubernetes.io/name".to_string(), APP.to_string()),
        ("app.kubernetes.io/managed-by".to_string(), "kmm-hub".to_string()),
        (HASH_LABEL.to_string(), hash.clone()),
        (shared_api::labels::MCM_NAME_LABEL.to_string(), owner_mcm.to_string()),
    ]
    .into();
    Pod {
        metadata: ObjectMeta {
            name: Some(format!("kmm-build-{}-{hash}", truncate(input.module_name, 30))),
            namespace: Some(input.namespace.to_owned()),
            labels: Some(labels),
            annotations: Some(
                [
                    (IMAGE_ANNOTATION.to_string(), input.destination.to_owned()),
                    ("hub.kmm.sigs.x-k8s.io/kernel".to_string(), input.kernel.to_owned()),
                ]
                .into(),
            ),
            ..Default::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            node_selector: (!input.build.selector.is_empty()).then(|| input.build.selector.clone()),
            containers: vec![Container {
                name: "kaniko".into(),
                image: Some(input.executor_image.to_owned()),
                args: Some(args),
                env: (!env.is_empty()).then_some(env),
                volume_mounts: Some(mounts),
                ..Default::default()
            }],
            volumes: Some(volumes),
            ..Default::default()
        }),
        status: None,
    }
}

fn truncate(s: &str, n: usize) -> &str {
    let s = &s[..s.len().min(n)];
    s.trim_end_matches(['-', '.'])
}

/// Where a finished pod stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodOutcome {
    /// Still pending or running.
    Running,
    /// Exited 0.
    Succeeded,
    /// Failed, with the reason from the pod.
    Failed(String),
}

/// Reads a build pod's outcome, with the container's termination message when it failed.
pub fn outcome(pod: &Pod) -> PodOutcome {
    let status = pod.status.as_ref();
    match status.and_then(|s| s.phase.as_deref()) {
        Some("Succeeded") => PodOutcome::Succeeded,
        Some("Failed") => {
            let term = status
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|c| c.iter().find_map(|c| c.state.as_ref()?.terminated.clone()));
            let reason = match term {
                Some(t) => format!(
                    "exit code {}: {}{}",
                    t.exit_code,
                    t.reason.unwrap_or_default(),
                    t.message.map(|m| format!(": {m}")).unwrap_or_default()
                ),
                None => status
                    .and_then(|s| s.message.clone())
                    .unwrap_or_else(|| "the pod failed".into()),
            };
            PodOutcome::Failed(reason)
        }
        _ => PodOutcome::Running,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::LocalObjectReference;
    use shared_api::module::BuildArg;

    fn input(build: &Build) -> BuildInput<'_> {
        BuildInput {
            build,
            destination: "reg.local/kmm/m:6.1.0",
            kernel: "6.1.0",
            module_name: "kmm-ci",
            module_namespace: "kmm-ci",
            push_tls: TlsOptions {
                insecure: true,
                insecure_skip_tls_verify: false,
            },
            push_secret: Some("push"),
            executor_image: "gcr.io/kaniko-project/executor:v1.23.2",
            namespace: "kmm-hub",
        }
    }

    fn build() -> Build {
        Build {
            build_args: vec![
                BuildArg {
                    name: "EXTRA".into(),
                    value: "1".into(),
                },
                BuildArg {
                    name: "KERNEL_VERSION".into(),
                    value: "user-tries".into(),
                },
            ],
            secrets: vec![LocalObjectReference { name: "token".into() }],
            dockerfile_config_map: Some(LocalObjectReference { name: "df".into() }),
            base_image_registry_tls: Some(TlsOptions {
                insecure: false,
                insecure_skip_tls_verify: true,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn renders_the_executor_with_forced_args_secrets_and_tls() {
        let b = build();
        let pod = build_pod(&input(&b), "kmm-ci");
        let spec = pod.spec.unwrap();
        let c = &spec.containers[0];
        let args = c.args.as_ref().unwrap();
        assert!(args.contains(&"--destination=reg.local/kmm/m:6.1.0".to_string()));
        assert!(args.contains(&"--build-arg=EXTRA=1".to_string()));
        assert!(args.contains(&"--build-arg=KERNEL_VERSION=6.1.0".to_string()));
        assert!(!args.iter().any(|a| a.contains("user-tries")), "forced args win");
        assert!(args.contains(&"--build-arg=MOD_NAMESPACE=kmm-ci".to_string()));
        assert!(args.contains(&"--insecure".to_string()) && args.contains(&"--skip-tls-verify".to_string()));
        assert!(args.contains(&"--skip-tls-verify-pull".to_string()) && !args.contains(&"--insecure-pull".to_string()));
        let mounts = c.volume_mounts.as_ref().unwrap();
        assert!(mounts.iter().any(|m| m.mount_path == "/run/secrets/token"));
        assert!(mounts.iter().any(|m| m.mount_path == "/kaniko/.docker"));
        assert!(mounts.iter().any(|m| m.mount_path == "/workspace"));
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        let name = pod.metadata.name.unwrap();
        assert!(name.starts_with("kmm-build-kmm-ci-") && name.len() <= 63, "{name}");
        assert_eq!(pod.metadata.namespace.as_deref(), Some("kmm-hub"));
    }

    #[test]
    fn hash_changes_with_the_build_spec_only() {
        let b = build();
        let mut b2 = build();
        assert_eq!(build_hash(&input(&b)), build_hash(&input(&b2)));
        b2.build_args[0].value = "2".into();
        assert_ne!(build_hash(&input(&b)), build_hash(&input(&b2)));
    }

    #[test]
    fn outcome_reads_the_termination() {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "status": {"phase": "Failed", "containerStatuses": [{
                "name": "kaniko", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 1, "reason": "Error", "message": "COPY failed"}}
            }]}
        }))
        .unwrap();
        assert_eq!(
            outcome(&pod),
            PodOutcome::Failed("exit code 1: Error: COPY failed".into())
        );
        pod.status.as_mut().unwrap().phase = Some("Running".into());
        assert_eq!(outcome(&pod), PodOutcome::Running);
    }
}
