//! Command-line glue shared by `kmm-hub` and `kmm-spoke`: offline validation of manifest files
//! and printing our CRDs. This is the only module of the crate that touches files.

use std::path::PathBuf;

use anyhow::Context;
use serde_json::Value;

use crate::crds;
use crate::mcm::ManagedClusterModule;
use crate::module::Module;
use crate::nmc::NodeModulesConfig;
use crate::preflight::PreflightValidation;
use crate::validation;

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

fn check<T: serde::de::DeserializeOwned>(
    doc: &Value,
    validate: impl FnOnce(&T) -> Result<(), validation::ValidationErrors>,
) -> Verdict {
    match serde_json::from_value::<T>(doc.clone()) {
        Err(e) => Verdict::Invalid(format!("{} does not match the schema: {e}", describe(doc))),
        Ok(obj) => match validate(&obj) {
            Ok(()) => Verdict::Valid(describe(doc)),
            Err(e) => Verdict::Invalid(e.to_string()),
        },
    }
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
            check::<PreflightValidation>(doc, validation::validate_preflight)
        }
        ("kmm.sigs.x-k8s.io/v1beta1", "NodeModulesConfig") => check::<NodeModulesConfig>(doc, |_| Ok(())),
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
    fn schema_mismatch_is_reported() {
        let v = validate_yaml(
            "apiVersion: kmm.sigs.x-k8s.io/v1beta1\nkind: Module\nmetadata: {name: m}\nspec: {moduleLoader: {}}\n",
        )
        .unwrap();
        let Verdict::Invalid(msg) = &v[0] else { panic!("{v:?}") };
        assert!(msg.starts_with("Module m does not match the schema: "), "{msg}");
    }
}
