//! The Module and ManagedClusterModule examples of the KMM documentation (copied into
//! `tests/fixtures/seed/`, placeholders filled in) load into our types, survive a round trip,
//! pass our validation and the CRDs' CEL rules; broken variants of them fail with the expected
//! message, naming the field.

use std::path::PathBuf;

use kube::CustomResourceExt;
use serde_json::{Value, json};
use shared_api::mcm::ManagedClusterModule;
use shared_api::module::Module;
use shared_api::tool::{Verdict, validate_document};

fn fixtures() -> Vec<(String, Vec<Value>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/seed");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("fixtures missing at {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 8, "expected the 8 seed fixtures, found {}", files.len());
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let docs: Vec<Value> =
                serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().into_owned(), docs)
        })
        .collect()
}

fn kmm_documents() -> Vec<(String, Value)> {
    fixtures()
        .into_iter()
        .flat_map(|(f, docs)| docs.into_iter().map(move |d| (f.clone(), d)))
        .filter(|(_, d)| {
            d["apiVersion"]
                .as_str()
                .unwrap_or_default()
                .contains("kmm.sigs.x-k8s.io")
        })
        .collect()
}

fn fixture(file_prefix: &str) -> Value {
    kmm_documents()
        .into_iter()
        .find(|(f, _)| f.starts_with(file_prefix))
        .unwrap_or_else(|| panic!("no KMM object in fixture {file_prefix}"))
        .1
}

fn schema_of(doc: &Value) -> Value {
    let crd = match doc["kind"].as_str() {
        Some("Module") => Module::crd(),
        Some("ManagedClusterModule") => ManagedClusterModule::crd(),
        other => panic!("no CRD for {other:?}"),
    };
    let crd = serde_json::to_value(crd).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

/// The API server's CEL verdict, evaluated client-side with the rules in our generated CRD.
fn cel_errors(doc: &Value, old: Option<&Value>) -> Vec<String> {
    match kube::core::cel::Validator::new().validate(&schema_of(doc), doc, old) {
        Ok(()) => vec![],
        Err(errs) => errs.into_vec().into_iter().map(|e| e.to_string()).collect(),
    }
}

/// Every field of `src` is in `out` with the same value, except values that mean "unset"
/// (`false`, `""`, `[]`, `{}`), which we do not serialise.
fn assert_nothing_lost(src: &Value, out: &Value, path: &str) {
    match (src, out) {
        (Value::Object(s), Value::Object(o)) => {
            for (k, v) in s {
                match o.get(k) {
                    Some(ov) => assert_nothing_lost(v, ov, &format!("{path}.{k}")),
                    None => assert!(
                        matches!(v, Value::Bool(false) | Value::Null)
                            || v.as_str() == Some("")
                            || v.as_array().is_some_and(Vec::is_empty)
                            || v.as_object()
                                .is_some_and(|m| m.values().all(|x| x == &Value::Bool(false))),
                        "{path}.{k} = {v} was dropped"
                    ),
                }
            }
        }
        (Value::Array(s), Value::Array(o)) => {
            assert_eq!(s.len(), o.len(), "{path}: list length changed");
            for (i, (a, b)) in s.iter().zip(o).enumerate() {
                assert_nothing_lost(a, b, &format!("{path}[{i}]"));
            }
        }
        _ => assert_eq!(src, out, "{path} changed"),
    }
}

#[test]
fn every_seed_example_is_valid() {
    let docs = kmm_documents();
    assert_eq!(docs.len(), 8, "one Module or ManagedClusterModule per fixture");
    for (file, doc) in &docs {
        match validate_document(doc) {
            Verdict::Valid(_) => {}
            other => panic!("{file}: {other:?}"),
        }
        assert_eq!(
            cel_errors(doc, None),
            Vec::<String>::new(),
            "{file}: CEL rules reject it"
        );
        assert_eq!(
            cel_errors(doc, Some(doc)),
            Vec::<String>::new(),
            "{file}: CEL rules reject a no-op update"
        );
    }
    // The other documents (ConfigMaps) are left alone, not failed.
    let skipped = fixtures()
        .iter()
        .flat_map(|(_, d)| d.iter().map(validate_document))
        .filter(|v| matches!(v, Verdict::Skipped(_)))
        .count();
    assert_eq!(skipped, 2);
}

#[test]
fn seed_examples_round_trip_without_loss() {
    for (file, doc) in kmm_documents() {
        let out = match doc["kind"].as_str().unwrap() {
            "Module" => {
                let m: Module = serde_json::from_value(doc.clone()).unwrap();
                let out = serde_json::to_value(&m).unwrap();
                let again: Module = serde_json::from_value(out.clone()).unwrap();
                assert_eq!(m, again, "{file}");
                out
            }
            "ManagedClusterModule" => {
                let m: ManagedClusterModule = serde_json::from_value(doc.clone()).unwrap();
                let out = serde_json::to_value(&m).unwrap();
                let again: ManagedClusterModule = serde_json::from_value(out.clone()).unwrap();
                assert_eq!(m, again, "{file}");
                out
            }
            k => panic!("{file}: unexpected kind {k}"),
        };
        assert_nothing_lost(&doc, &out, &file);
    }
}

#[test]
fn defaults_are_applied_like_upstream() {
    let m: Module = serde_json::from_value(fixture("03")).unwrap();
    let c = &m.spec.module_loader.unwrap().container;
    assert_eq!(c.modprobe.dir_name, "/opt");
    let mcm: ManagedClusterModule = serde_json::from_value(fixture("07")).unwrap();
    assert_eq!(
        mcm.spec.module_spec.module_loader.unwrap().container.modprobe.dir_name,
        "/opt"
    );
}

/// Sets (or, with `None`, removes) the value at a JSON pointer, creating objects on the way.
fn set(doc: &mut Value, pointer: &str, value: Option<Value>) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let mut cur = doc;
    for part in parent.split('/').skip(1) {
        cur = match cur {
            Value::Array(a) => &mut a[part.parse::<usize>().unwrap()],
            v => v.as_object_mut().unwrap().entry(part).or_insert_with(|| json!({})),
        };
    }
    let obj = cur
        .as_object_mut()
        .unwrap_or_else(|| panic!("{pointer}: parent is not an object"));
    match value {
        Some(v) => {
            obj.insert(key.to_owned(), v);
        }
        None => {
            obj.remove(key);
        }
    }
}

struct Broken {
    fixture: &'static str,
    changes: &'static [(&'static str, Option<&'static str>)],
    field: &'static str,
    reason: &'static str,
    /// Whether the CRD's CEL rules catch it too (the rest is for the webhook).
    cel: Option<&'static str>,
}

#[test]
fn broken_variants_fail_with_the_expected_message() {
    let cases = [
        Broken {
            fixture: "01",
            changes: &[("/spec/moduleLoader/container/kernelMappings/0/regexp", Some("\"^6\""))],
            field: "spec.moduleLoader.container.kernelMappings[0]",
            reason: "exactly one of literal and regexp must be set, both are",
            cel: Some("exactly one of literal and regexp must be set"),
        },
        Broken {
            fixture: "01",
            changes: &[(
                "/spec/moduleLoader/container/kernelMappings/1/regexp",
                Some("\"^(.+\\\\.fc37\""),
            )],
            field: "spec.moduleLoader.container.kernelMappings[1].regexp",
            reason: "is not a valid regular expression",
            cel: None,
        },
        Broken {
            fixture: "01",
            changes: &[(
                "/spec/moduleLoader/container/kernelMappings/2/containerImage",
                Some("\"some.registry/org/my-kmod\""),
            )],
            field: "spec.moduleLoader.container.kernelMappings[2].containerImage",
            reason: "must carry a tag or a digest",
            cel: None,
        },
        Broken {
            fixture: "01",
            changes: &[(
                "/spec/moduleLoader/container/kernelMappings/2/sign/filesToSign",
                Some("[\"/lib/modules/${KERNEL_FULL_VERSION}/my_kmod.ko\"]"),
            )],
            field: "spec.moduleLoader.container.kernelMappings[2].sign.filesToSign[0]",
            reason: "must lie under dirName \"/opt\"",
            cel: None,
        },
        Broken {
            fixture: "01",
            changes: &[(
                "/spec/moduleLoader/container/kernelMappings/2/build/dockerfileConfigMap",
                None,
            )],
            field: "spec.moduleLoader.container.kernelMappings[2].build.dockerfileConfigMap",
            reason: "is required",
            cel: None,
        },
        Broken {
            fixture: "01",
            changes: &[("/spec/devicePlugin/container/image", Some("\"\""))],
            field: "spec.devicePlugin.container.image",
            reason: "is required",
            cel: None,
        },
        Broken {
            fixture: "02",
            changes: &[(
                "/spec/moduleLoader/container/modprobe/modulesLoadingOrder",
                Some("[\"mod_b\", \"mod_a\"]"),
            )],
            field: "spec.moduleLoader.container.modprobe.modulesLoadingOrder",
            reason: "must start with moduleName \"mod_a\", starts with \"mod_b\"",
            cel: Some("modulesLoadingOrder must list at least 2 modules and start with moduleName"),
        },
        Broken {
            fixture: "02",
            changes: &[(
                "/spec/moduleLoader/container/modprobe/modulesLoadingOrder",
                Some("[\"mod_a\"]"),
            )],
            field: "spec.moduleLoader.container.modprobe.modulesLoadingOrder",
            reason: "must list at least 2 distinct modules",
            cel: Some("modulesLoadingOrder must list at least 2 modules and start with moduleName"),
        },
        Broken {
            fixture: "03",
            changes: &[(
                "/spec/moduleLoader/container/modprobe/rawArgs",
                Some("{\"load\": [\"mod_a\"], \"unload\": [\"-r\", \"mod_a\"]}"),
            )],
            field: "spec.moduleLoader.container.modprobe.rawArgs",
            reason: "cannot be set together with moduleName",
            cel: Some("exactly one of moduleName and rawArgs must be set"),
        },
        Broken {
            fixture: "03",
            changes: &[("/spec/moduleLoader/container/modprobe/moduleName", None)],
            field: "spec.moduleLoader.container.modprobe.moduleName",
            reason: "is required unless rawArgs (load and unload) is set",
            cel: Some("exactly one of moduleName and rawArgs must be set"),
        },
        Broken {
            fixture: "04",
            changes: &[(
                "/spec/moduleLoader/container/kernelMappings/0/containerImage",
                Some("\"r/kmm-ci-a:${KERNEL_FULL_VERSION\""),
            )],
            // A misspelled variable is only a warning (it expands to nothing, as upstream); a
            // `${` without its `}` is refused.
            field: "spec.moduleLoader.container.kernelMappings[0].containerImage",
            reason: "closing brace expected",
            cel: None,
        },
        Broken {
            fixture: "05",
            changes: &[("/spec/moduleLoader/container/kernelMappings/0/sign/keySecret", None)],
            field: "spec.moduleLoader.container.kernelMappings[0].sign.keySecret",
            reason: "is required",
            cel: None,
        },
        Broken {
            fixture: "07",
            changes: &[("/spec/spokeNamespace", Some("\"Some_Namespace\""))],
            field: "spec.spokeNamespace",
            reason: "is not a valid namespace name",
            cel: None,
        },
        Broken {
            fixture: "07",
            changes: &[(
                "/metadata/name",
                Some("\"a-managed-cluster-module-name-that-is-far-too-long-for-labels\""),
            )],
            field: "metadata.name",
            reason: "the limit is 41",
            cel: None,
        },
        Broken {
            fixture: "07",
            changes: &[(
                "/spec/moduleSpec/moduleLoader/container/kernelMappings/0/literal",
                Some("\"6.1.0\""),
            )],
            field: "spec.moduleSpec.moduleLoader.container.kernelMappings[0]",
            reason: "exactly one of literal and regexp must be set, both are",
            cel: Some("exactly one of literal and regexp must be set"),
        },
        Broken {
            fixture: "08",
            changes: &[("/spec/moduleLoader/container/version", Some("\"2.0 beta\""))],
            field: "spec.moduleLoader.container.version",
            reason: "is used as a node label value",
            cel: None,
        },
    ];
    for (i, case) in cases.iter().enumerate() {
        let mut doc = fixture(case.fixture);
        for (pointer, value) in case.changes {
            set(&mut doc, pointer, value.map(|v| serde_json::from_str(v).unwrap()));
        }
        let Verdict::Invalid(msg) = validate_document(&doc) else {
            panic!("case {i} ({}): accepted", case.field);
        };
        let needle = format!("{}: ", case.field);
        let at = msg
            .find(&needle)
            .unwrap_or_else(|| panic!("case {i}: field {} not named in: {msg}", case.field));
        assert!(
            msg[at..].contains(case.reason),
            "case {i}: reason {:?} not in: {msg}",
            case.reason
        );
        let cel = cel_errors(&doc, None);
        match case.cel {
            Some(rule_msg) => assert!(
                cel.iter().any(|e| e.contains(rule_msg)),
                "case {i}: CEL did not reject: {cel:?}"
            ),
            None => assert!(cel.is_empty(), "case {i}: unexpected CEL errors {cel:?}"),
        }
    }
}

#[test]
fn version_cannot_be_added_or_removed_on_update() {
    let versioned = fixture("08");
    let mut plain = versioned.clone();
    set(&mut plain, "/spec/moduleLoader/container/version", None);
    for (old, new, word) in [(&plain, &versioned, "added"), (&versioned, &plain, "removed")] {
        let old_m: Module = serde_json::from_value(old.clone()).unwrap();
        let new_m: Module = serde_json::from_value(new.clone()).unwrap();
        let err = shared_api::validation::validate_module_update(&old_m, &new_m).unwrap_err();
        let e = err.find("spec.moduleLoader.container.version").unwrap();
        assert!(e.reason.starts_with(&format!("cannot be {word} on update")), "{err}");
        let cel = cel_errors(new, Some(old));
        assert!(
            cel.iter()
                .any(|e| e.contains("version cannot be added or removed on update")),
            "{cel:?}"
        );
    }
    let mut bumped = versioned.clone();
    set(&mut bumped, "/spec/moduleLoader/container/version", Some(json!("3")));
    assert!(cel_errors(&bumped, Some(&versioned)).is_empty());
}

/// Upstream spells the TLS fields with a capital `TLS`; YAML written for KMM must keep them.
#[test]
fn tls_fields_keep_upstream_names() {
    let doc = serde_json::json!({
        "apiVersion": "kmm.sigs.x-k8s.io/v1beta1",
        "kind": "Module",
        "metadata": {"name": "m", "namespace": "ns"},
        "spec": {
            "selector": {"a": "b"},
            "moduleLoader": {"container": {
                "modprobe": {"moduleName": "m"},
                "registryTLS": {"insecureSkipTLSVerify": true},
                "kernelMappings": [{
                    "regexp": ".*",
                    "containerImage": "r.io/m:v1",
                    "registryTLS": {"insecure": true},
                    "build": {"dockerfileConfigMap": {"name": "d"}, "baseImageRegistryTLS": {"insecure": true}},
                    "sign": {"keySecret": {"name": "k"}, "certSecret": {"name": "c"},
                             "unsignedImageRegistryTLS": {"insecure": true}, "filesToSign": ["/opt/a.ko"]},
                }],
            }},
        },
    });
    let m: Module = serde_json::from_value(doc.clone()).unwrap();
    let c = &m.spec.module_loader.as_ref().unwrap().container;
    assert!(c.registry_tls.unwrap().insecure_skip_tls_verify);
    let k = &c.kernel_mappings[0];
    assert!(k.registry_tls.unwrap().insecure);
    assert!(k.build.as_ref().unwrap().base_image_registry_tls.unwrap().insecure);
    assert!(k.sign.as_ref().unwrap().unsigned_image_registry_tls.unwrap().insecure);
    assert_nothing_lost(&doc, &serde_json::to_value(&m).unwrap(), "tls");
}
