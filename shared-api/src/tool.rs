//! Command-line glue shared by `kmm-hub` and `kmm-spoke`: offline validation of manifest files
//! and printing our CRDs. This is the only module of the crate that touches files.

use std::path::PathBuf;

use anyhow::Context;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

use crate::crds;
use crate::mcm::ManagedClusterModule;
use crate::module::Module;
use crate::nmc::NodeModulesConfig;
use crate::preflight::{self, PreflightValidation};
use crate::validation::{self, ValidationErrors, Warnings};

/// Arguments of the `validate` subcommand.
#[derive(clap::Args, Debug)]
pub struct ValidateArgs {
    /// YAML files (several documents each allowed); `-` reads standard input.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// The verdict on one YAML document.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// One of our kinds, valid.
    Valid(String),
    /// One of our kinds, valid, with warnings (as the admission webhook would return them).
    Warned(String, Vec<String>),
    /// One of our kinds, invalid: the message names the object, the fields and the reasons.
    Invalid(String),
    /// Not one of our kinds (Secrets, ConfigMaps, ...): not checked.
    Skipped(String),
}

fn describe(doc: &Value) -> String {
    let kind = doc["kind"].as_str().unwrap_or("<no kind>");
    let name = doc["metadata"]["name"].as_str().unwrap_or("<no name>");
    match doc["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// Top-level fields of every object, and those of `metadata` (ObjectMeta), which CRD schemas
/// do not spell out but the API server checks all the same.
const OBJECT_FIELDS: [&str; 5] = ["apiVersion", "kind", "metadata", "spec", "status"];
const METADATA_FIELDS: [&str; 15] = [
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

/// What the API server would refuse in `doc` before any rule of ours runs: fields the
/// structural schema `schema` does not define, as strict field validation finds them
/// (`kubectl apply --validate=strict`): `unknown field "spec.moduleLoader.container.foo"`; and
/// lists shorter or longer than the schema allows (`minItems`, `maxItems`), which our types
/// cannot tell from missing ones.
pub fn schema_problems(doc: &Value, schema: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(obj) = doc.as_object() {
        for (k, v) in obj {
            if !OBJECT_FIELDS.contains(&k.as_str()) {
                out.push(format!("unknown field {k:?}"));
            } else if k == "metadata" {
                for mk in v.as_object().into_iter().flat_map(|m| m.keys()) {
                    if !METADATA_FIELDS.contains(&mk.as_str()) {
                        out.push(format!("unknown field \"metadata.{mk}\""));
                    }
                }
            } else if let Some(s) = schema["properties"].get(k) {
                walk_schema(v, s, k.clone(), &mut out);
            }
        }
    }
    out
}

fn walk_schema(v: &Value, s: &Value, path: String, out: &mut Vec<String>) {
    if s["x-kubernetes-preserve-unknown-fields"] == true {
        return;
    }
    match v {
        Value::Object(map) => {
            let props = s["properties"].as_object();
            let extra = s["additionalProperties"]
                .as_object()
                .map(|_| &s["additionalProperties"]);
            for (k, child) in map {
                let at = format!("{path}.{k}");
                match (props.and_then(|p| p.get(k)), extra) {
                    (Some(cs), _) => walk_schema(child, cs, at, out),
                    (None, Some(cs)) => walk_schema(child, cs, at, out),
                    // An object schema with neither is free-form only if it says so (above).
                    (None, None) if props.is_some() || s["type"] == "object" => {
                        out.push(format!("unknown field {at:?}"));
                    }
                    (None, None) => {}
                }
            }
        }
        Value::Array(items) => {
            if let Some(min) = s["minItems"].as_u64()
                && (items.len() as u64) < min
            {
                out.push(format!("{path}: should have at least {min} items"));
            }
            if let Some(max) = s["maxItems"].as_u64()
                && (items.len() as u64) > max
            {
                out.push(format!("{path}: should have at most {max} items"));
            }
            if let Some(is) = s.get("items") {
                for (i, item) in items.iter().enumerate() {
                    walk_schema(item, is, format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

/// The `openAPIV3Schema` we serve for `apiVersion` + `kind` (generated once per process).
fn schema_for(api_version: &str, kind: &str) -> Option<Value> {
    static CRDS: std::sync::OnceLock<Vec<CustomResourceDefinition>> = std::sync::OnceLock::new();
    let (group, version) = api_version.split_once('/')?;
    CRDS.get_or_init(|| crds::crds(crds::Set::All)).iter().find_map(|crd| {
        if crd.spec.group != group || crd.spec.names.kind != kind {
            return None;
        }
        let v = crd.spec.versions.iter().find(|v| v.name == version)?;
        serde_json::to_value(&v.schema.as_ref()?.open_api_v3_schema).ok()
    })
}

fn check<T: serde::de::DeserializeOwned>(
    doc: &Value,
    validate: impl FnOnce(&T) -> Result<Warnings, ValidationErrors>,
) -> Verdict {
    let schema = schema_for(
        doc["apiVersion"].as_str().unwrap_or_default(),
        doc["kind"].as_str().unwrap_or_default(),
    )
    .unwrap_or_default();
    let problems = schema_problems(doc, &schema);
    if !problems.is_empty() {
        return Verdict::Invalid(format!(
            "{} does not match the schema (strict field validation): {}",
            describe(doc),
            problems.join(", ")
        ));
    }
    match serde_json::from_value::<T>(doc.clone()) {
        Err(e) => Verdict::Invalid(format!("{} does not match the schema: {e}", describe(doc))),
        Ok(obj) => match validate(&obj) {
            Ok(w) if w.is_empty() => Verdict::Valid(describe(doc)),
            Ok(w) => Verdict::Warned(describe(doc), w.iter().map(ToString::to_string).collect()),
            Err(e) => Verdict::Invalid(e.to_string()),
        },
    }
}

fn name_of(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or_default()
}

/// Validates one parsed YAML document.
pub fn validate_document(doc: &Value) -> Verdict {
    let api = doc["apiVersion"].as_str().unwrap_or_default();
    match (api, doc["kind"].as_str().unwrap_or_default()) {
        ("kmm.sigs.x-k8s.io/v1beta1", "Module") => check::<Module>(doc, validation::validate_module),
        ("hub.kmm.sigs.x-k8s.io/v1beta1", "ManagedClusterModule") => {
            check::<ManagedClusterModule>(doc, validation::validate_mcm)
        }
        ("kmm.sigs.x-k8s.io/v1beta2", "PreflightValidation") => {
            check::<PreflightValidation>(doc, |p| validation::validate_preflight(name_of(doc), &p.spec))
        }
        ("kmm.sigs.x-k8s.io/v1beta1", "PreflightValidation") => {
            check::<preflight::v1beta1::PreflightValidation>(doc, |p| {
                validation::validate_preflight(name_of(doc), &p.spec.spec)
            })
        }
        ("kmm.sigs.x-k8s.io/v1beta1", "NodeModulesConfig") => check::<NodeModulesConfig>(doc, |_| Ok(Vec::new())),
        (_, kind) if api.contains("kmm.sigs.x-k8s.io") => Verdict::Invalid(format!(
            "{}: apiVersion {api:?} with kind {kind:?} is not served by this version",
            describe(doc)
        )),
        _ => Verdict::Skipped(describe(doc)),
    }
}

/// Validates every document of a YAML stream.
pub fn validate_yaml(text: &str) -> anyhow::Result<Vec<Verdict>> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).context("not valid YAML")?;
    Ok(docs.iter().filter(|d| !d.is_null()).map(validate_document).collect())
}

/// Runs the `validate` subcommand: prints one line per document; fails when any is invalid.
pub fn run_validate(args: &ValidateArgs) -> anyhow::Result<()> {
    let mut invalid = 0;
    for path in &args.files {
        let text = if path.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin()).context("reading standard input")?
        } else {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        };
        let verdicts = validate_yaml(&text).with_context(|| format!("{}", path.display()))?;
        for v in verdicts {
            match v {
                Verdict::Valid(what) => println!("{}: {what}: valid", path.display()),
                Verdict::Warned(what, warnings) => {
                    println!("{}: {what}: valid, with warnings:", path.display());
                    for w in warnings {
                        println!("  warning: {w}");
                    }
                }
                Verdict::Skipped(what) => println!("{}: {what}: not a KMM object, skipped", path.display()),
                Verdict::Invalid(msg) => {
                    invalid += 1;
                    println!("{}: {msg}", path.display());
                }
            }
        }
    }
    anyhow::ensure!(invalid == 0, "{invalid} invalid object(s)");
    Ok(())
}

/// Runs the `crds` subcommand: prints the CRDs of `set` as one YAML stream.
pub fn print_crds(set: crds::Set) -> anyhow::Result<()> {
    for crd in crds::crds(set) {
        print!("{}", crds::to_yaml(&crd));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_dispatched_by_kind() {
        let text = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: df}
---
apiVersion: kmm.sigs.x-k8s.io/v1beta1
kind: Module
metadata: {name: m, namespace: ns}
spec:
  selector: {}
  moduleLoader:
    container:
      modprobe: {moduleName: m}
      kernelMappings:
        - {regexp: '^.+$', containerImage: 'r/m'}
---
apiVersion: kmm.sigs.x-k8s.io/v1alpha1
kind: Module
metadata: {name: old}
"#;
        let v = validate_yaml(text).unwrap();
        assert_eq!(v[0], Verdict::Skipped("ConfigMap df".into()));
        let Verdict::Invalid(msg) = &v[1] else { panic!("{v:?}") };
        assert!(msg.starts_with("Module ns/m is invalid: spec.moduleLoader.container.kernelMappings[0].containerImage: \"r/m\" must carry a tag"), "{msg}");
        let Verdict::Invalid(msg) = &v[2] else { panic!("{v:?}") };
        assert!(msg.contains("is not served"), "{msg}");
    }

    #[test]
    fn unknown_fields_are_refused_naming_them() {
        let v = validate_yaml(
            r#"
apiVersion: kmm.sigs.x-k8s.io/v1beta1
kind: Module
metadata: {name: m, namespace: ns, labelz: {}}
spec:
  selector: {}
  moduleLoader:
    container:
      foo: 1
      modprobe: {moduleName: m}
      kernelMappings:
        - {regexp: '^.+$', containerImage: 'r/m:1', colour: red}
  devicePlugin:
    container:
      image: r/p:1
      env: [{name: A, valueFrom: {fieldRef: {fieldPath: x, bogus: 1}}}]
    volumes: [{name: v, hostPath: {path: /dev}}]
"#,
        )
        .unwrap();
        let Verdict::Invalid(msg) = &v[0] else { panic!("{v:?}") };
        assert_eq!(
            msg,
            "Module ns/m does not match the schema (strict field validation): unknown field \"metadata.labelz\", \
             unknown field \"spec.devicePlugin.container.env[0].valueFrom.fieldRef.bogus\", \
             unknown field \"spec.moduleLoader.container.foo\", \
             unknown field \"spec.moduleLoader.container.kernelMappings[0].colour\""
        );
    }

    #[test]
    fn free_form_fields_and_maps_take_any_key() {
        let doc: Value = serde_saphyr::from_str(
            r#"
apiVersion: kmm.sigs.x-k8s.io/v1beta1
kind: Module
metadata: {name: m, namespace: ns, labels: {a: b}}
spec:
  selector: {any/key: "", other: x}
  dra:
    driverName: d.example.com
    container: {image: r/d:1, resources: {limits: {cpu: "1"}}}
    deviceClasses:
      - name: c
        config: [{opaque: {driver: d.example.com, parameters: {anything: {goes: [1]}}}}]
"#,
        )
        .unwrap();
        let schema = schema_for("kmm.sigs.x-k8s.io/v1beta1", "Module").unwrap();
        assert_eq!(schema_problems(&doc, &schema), Vec::<String>::new());
    }

    #[test]
    fn schema_mismatch_is_reported() {
        let v = validate_yaml(
            "apiVersion: kmm.sigs.x-k8s.io/v1beta1\nkind: Module\nmetadata: {name: m}\nspec: {moduleLoader: {}}\n",
        )
        .unwrap();
        let Verdict::Invalid(msg) = &v[0] else { panic!("{v:?}") };
        assert!(msg.starts_with("Module m does not match the schema: "), "{msg}");
    }
}
