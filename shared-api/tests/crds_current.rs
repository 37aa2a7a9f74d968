//! The CRD YAML committed under `manifests/crds/` is exactly what the Rust types generate.

use std::path::PathBuf;

use shared_api::crds;

#[test]
fn committed_crds_match_the_types() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/crds");
    let mut expected: Vec<String> = Vec::new();
    for crd in crds::crds(crds::Set::All) {
        let name = crds::file_name(&crd);
        let path = dir.join(&name);
        let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{} is missing ({e}); run `cargo run -p shared-api --bin crdgen`",
                path.display()
            )
        });
        assert!(
            committed == crds::to_yaml(&crd),
            "{} differs from what the types generate; run `cargo run -p shared-api --bin crdgen`",
            path.display()
        );
        expected.push(name);
    }
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    present.sort();
    expected.sort();
    assert_eq!(present, expected, "stale CRD files in {}", dir.display());
}

#[test]
fn committed_crds_parse_back_as_crds() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    for crd in crds::crds(crds::Set::All) {
        let yaml = crds::to_yaml(&crd);
        let back: CustomResourceDefinition = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(back, crd);
    }
}
