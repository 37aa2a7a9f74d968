//! Upstream KMM's own examples and the variants around its rules (`tests/upstream/`, with the
//! verdicts upstream gave when they were run through its CRDs on a real API server and through
//! its webhook code) against our offline validation (`kmm-hub validate`, the same code as our
//! webhooks and controllers), and upstream's kernel-mapper results against ours.
//!
//! Every disagreement must be listed in `differences.yaml` with its reason; the test fails when a
//! new one appears and when a listed one goes away. The same corpus runs through our CRDs with
//! CEL on a real API server and our webhook in `e2e/tests/webhook.rs`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;
use shared_api::mapping::Mappings;
use shared_api::mcm::ManagedClusterModule;
use shared_api::module::Module;
use shared_api::tool::{Verdict, validate_document};

#[derive(Deserialize)]
struct Difference {
    file: String,
    reason: String,
}

/// Where we differ from upstream on purpose (`differences.yaml`): file → why.
fn differences() -> BTreeMap<String, String> {
    let list: Vec<Difference> = read("differences.yaml");
    list.into_iter().map(|d| (d.file, d.reason)).collect()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpstreamVerdict {
    file: String,
    schema: String,
    schema_message: String,
    webhook: String,
    webhook_message: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpstreamMapping {
    file: String,
    kernel: String,
    container_image: Option<String>,
    error: Option<String>,
    #[serde(default)]
    in_tree_modules_to_remove: Option<Vec<String>>,
    unsigned_image: Option<String>,
    files_to_sign: Option<Vec<String>>,
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/upstream")
}

fn read<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let path = dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn case(file: &str) -> Value {
    read(&format!("cases/{file}"))
}

fn verdicts() -> Vec<UpstreamVerdict> {
    let v: Vec<UpstreamVerdict> = read("verdicts.yaml");
    assert!(v.len() >= 180, "the corpus has {} cases", v.len());
    v
}

/// Upstream's answer to `kubectl apply`: the schema (with CEL) and then the webhook.
fn upstream_accepts(v: &UpstreamVerdict) -> Result<(), String> {
    if v.schema != "accepted" {
        return Err(format!("schema: {}", v.schema_message));
    }
    if v.webhook == "refused" {
        return Err(format!("webhook: {}", v.webhook_message));
    }
    Ok(())
}

/// Ours, offline.
fn ours_accepts(doc: &Value) -> Result<(), String> {
    match validate_document(doc) {
        Verdict::Valid(_) | Verdict::Warned(..) => Ok(()),
        Verdict::Invalid(m) => Err(m),
        Verdict::Skipped(what) => Err(format!("skipped {what}")),
    }
}

#[test]
fn our_validation_gives_upstreams_verdicts() {
    let mut differences = BTreeMap::new();
    let (mut agree, mut total) = (0, 0);
    for v in verdicts() {
        total += 1;
        let doc = case(&v.file);
        match (upstream_accepts(&v), ours_accepts(&doc)) {
            (Ok(()), Ok(())) | (Err(_), Err(_)) => agree += 1,
            (Ok(()), Err(ours)) => {
                differences.insert(v.file.clone(), format!("upstream accepts, we refuse: {ours}"));
            }
            (Err(up), Ok(())) => {
                differences.insert(v.file.clone(), format!("upstream refuses ({up}), we accept"));
            }
        }
    }
    let listed = self::differences();
    let unexpected: Vec<String> = differences
        .iter()
        .filter(|(f, _)| !listed.contains_key(*f))
        .map(|(f, d)| format!("{f}: {d}"))
        .collect();
    let gone: Vec<&String> = listed.keys().filter(|f| !differences.contains_key(*f)).collect();
    assert!(
        listed.values().all(|r| !r.is_empty()),
        "every listed difference says why"
    );
    assert!(
        unexpected.is_empty() && gone.is_empty(),
        "{agree} of {total} agree.\nUnlisted differences:\n{}\nListed but agreeing now: {gone:?}",
        unexpected.join("\n")
    );
}

/// The Module a case resolves kernels for: the Module itself, or the one an MCM sends.
fn module_of(doc: &Value) -> Option<(String, String, Module)> {
    match doc["kind"].as_str()? {
        "Module" => {
            let m: Module = serde_json::from_value(doc.clone()).ok()?;
            let ns = m.metadata.namespace.clone().unwrap_or_else(|| "ns".into());
            Some((m.metadata.name.clone()?, ns, m))
        }
        "ManagedClusterModule" => {
            let mcm: ManagedClusterModule = serde_json::from_value(doc.clone()).ok()?;
            let m = Module::new(mcm.metadata.name.as_deref()?, mcm.spec.module_spec.clone());
            Some((mcm.metadata.name.clone()?, mcm.spec.spoke_namespace.clone(), m))
        }
        _ => None,
    }
}

#[test]
fn kernel_mappings_resolve_as_upstreams() {
    let cases: Vec<UpstreamMapping> = read("mappings.yaml");
    assert!(cases.len() >= 300, "{} mapping results", cases.len());
    let mut wrong = Vec::new();
    let listed = differences();
    let mut compared = 0;
    for c in &cases {
        if listed.contains_key(&c.file) {
            // We refuse it on purpose, so nothing of it is ever resolved here.
            continue;
        }
        let doc = case(&c.file);
        let (name, ns, module) = module_of(&doc).unwrap_or_else(|| panic!("{}: not a Module or MCM", c.file));
        compared += 1;
        let container = &module.spec.module_loader.as_ref().expect("a moduleLoader").container;
        let mappings = Mappings::compile(container).unwrap_or_else(|e| panic!("{}: {e}", c.file));
        let got = mappings.resolve(&c.kernel, &name, &ns);
        let at = format!("{} on {}", c.file, c.kernel);
        match (&c.error, got) {
            (Some(up), Ok(None)) if up.contains("kernel mapping not found") => {}
            (Some(up), Err(e)) if !up.contains("kernel mapping not found") => {
                // Same cause: a kernel with too few components.
                if up.contains("three components") != e.to_string().contains("three components") {
                    wrong.push(format!("{at}: upstream {up:?}, we {e}"));
                }
            }
            (Some(up), other) => wrong.push(format!("{at}: upstream {up:?}, we {other:?}")),
            (None, Ok(Some(r))) => {
                if Some(&r.container_image) != c.container_image.as_ref() {
                    wrong.push(format!(
                        "{at}: image {:?}, upstream {:?}",
                        r.container_image, c.container_image
                    ));
                }
                let in_tree = c.in_tree_modules_to_remove.clone().unwrap_or_default();
                if r.in_tree_modules_to_remove != in_tree {
                    wrong.push(format!(
                        "{at}: in-tree {:?}, upstream {in_tree:?}",
                        r.in_tree_modules_to_remove
                    ));
                }
                let sign = r.sign.as_ref();
                let unsigned = sign.and_then(|s| s.unsigned_image.clone()).unwrap_or_default();
                if c.unsigned_image.as_ref().is_some_and(|u| *u != unsigned) {
                    wrong.push(format!(
                        "{at}: unsignedImage {unsigned:?}, upstream {:?}",
                        c.unsigned_image
                    ));
                }
                let files = sign.map(|s| s.files_to_sign.clone()).unwrap_or_default();
                if c.files_to_sign.as_ref().is_some_and(|f| *f != files) {
                    wrong.push(format!("{at}: filesToSign {files:?}, upstream {:?}", c.files_to_sign));
                }
            }
            (None, other) => wrong.push(format!("{at}: upstream {:?}, we {other:?}", c.container_image)),
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {compared} results differ:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    // Six kernels per case; only the listed differences are left out.
    assert!(
        compared + 6 * listed.len() >= cases.len(),
        "only {compared} of {} compared",
        cases.len()
    );
}
