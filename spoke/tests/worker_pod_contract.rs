//! The worker pod the spoke renders is understood by the real `kmm-worker`: its arguments parse,
//! and the config it hands over through the downward API is read as a valid configuration.

use std::process::Command;

use k8s_openapi::api::core::v1::LocalObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kmm_spoke::plan::node_plan::Action;
use kmm_spoke::plan::worker_pod::{CONFIG_ANNOTATION, CONFIG_PATH, PULL_DIR, PULL_SECRET_DIR, WorkerSettings, render};
use shared_api::nmc::{ModuleConfig, NodeModuleSpec};

#[test]
fn rendered_arguments_and_config_are_accepted_by_kmm_worker() {
    let tmp = tempfile::tempdir().unwrap();
    let entry = NodeModuleSpec {
        name: "kmm-ci-a".into(),
        namespace: "ns".into(),
        image_repo_secret: Some(LocalObjectReference { name: "pull".into() }),
        config: ModuleConfig {
            kernel_version: "6.1.0-28-amd64".into(),
            // Nothing listens on port 1: the pull fails fast, after parsing succeeded.
            container_image: "127.0.0.1:1/kmm/kmm-ci-a:6.1.0-28-amd64".into(),
            modprobe: shared_api::module::ModprobeSpec {
                module_name: Some("kmm_ci_a".into()),
                ..Default::default()
            },
            ..Default::default()
        },
        ..Default::default()
    };
    let settings = WorkerSettings {
        set_firmware_class_path: Some("/var/lib/firmware".into()),
        ..Default::default()
    };
    for action in [Action::Load, Action::Unload] {
        let pod = render(
            "node-1",
            "boot-1",
            &entry,
            action,
            0,
            &settings,
            OwnerReference::default(),
        );
        let config = &pod.metadata.annotations.as_ref().unwrap()[CONFIG_ANNOTATION];
        let config_file = tmp.path().join("config.yaml");
        std::fs::write(&config_file, config).unwrap();
        std::fs::create_dir_all(tmp.path().join("secret")).unwrap();
        std::fs::write(tmp.path().join("secret/.dockerconfigjson"), r#"{"auths":{}}"#).unwrap();
        let args: Vec<String> = pod.spec.unwrap().containers[0]
            .args
            .clone()
            .unwrap()
            .into_iter()
            .map(|a| {
                a.replace(CONFIG_PATH, config_file.to_str().unwrap())
                    .replace(PULL_DIR, tmp.path().join("images").to_str().unwrap())
                    .replace(PULL_SECRET_DIR, tmp.path().join("secret").to_str().unwrap())
                    .replace("/var/lib/firmware", tmp.path().join("fw").to_str().unwrap())
            })
            .collect();
        let out = Command::new(env!("CARGO_BIN_EXE_kmm-worker"))
            .args(&args)
            .args(["--dry-run=print", "--pull-timeout=5"])
            .output()
            .expect("running kmm-worker");
        let stderr = String::from_utf8_lossy(&out.stderr);
        // 2 is kmm-worker's exit code for a bad command line or config; 3 an image it cannot get.
        assert_eq!(out.status.code(), Some(3), "{action:?}: {args:?}\n{stderr}");
        assert!(stderr.contains("127.0.0.1:1"), "{stderr}");
    }
}
