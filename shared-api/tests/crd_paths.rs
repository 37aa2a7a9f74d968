//! Our CRDs carry every field path of upstream KMM's CRDs for the same kinds and versions
//! (`tests/upstream/crd-paths.txt`, taken from upstream's `config/crd*/bases/`): a missing path
//! means upstream YAML using it would be pruned or refused here.

use std::collections::BTreeSet;

use serde_json::Value;
use shared_api::crds::{Set, crds};

fn walk(s: &Value, path: &str, out: &mut BTreeSet<String>) {
    if !path.is_empty() {
        out.insert(path.to_owned());
    }
    if let Some(props) = s["properties"].as_object() {
        for (k, v) in props {
            let p = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            walk(v, &p, out);
        }
    }
    if let Some(items) = s.get("items") {
        walk(items, &format!("{path}[]"), out);
    }
    if s["additionalProperties"].is_object() {
        walk(&s["additionalProperties"], &format!("{path}{{}}"), out);
    }
}

fn ours() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for crd in crds(Set::All) {
        let crd = serde_json::to_value(crd).unwrap();
        let (group, kind) = (
            crd["spec"]["group"].as_str().unwrap(),
            crd["spec"]["names"]["kind"].as_str().unwrap(),
        );
        for v in crd["spec"]["versions"].as_array().unwrap() {
            let mut paths = BTreeSet::new();
            walk(&v["schema"]["openAPIV3Schema"], "", &mut paths);
            let version = v["name"].as_str().unwrap();
            out.extend(paths.into_iter().map(|p| format!("{group} {kind} {version} {p}")));
        }
    }
    out
}

#[test]
fn every_upstream_field_path_is_in_our_crds() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/upstream/crd-paths.txt");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let upstream: Vec<&str> = text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).collect();
    assert!(upstream.len() > 1500, "{path} lists only {} paths", upstream.len());
    let ours = ours();
    let missing: Vec<&str> = upstream.iter().copied().filter(|p| !ours.contains(*p)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} upstream field paths are missing from our CRDs:\n{}",
        missing.len(),
        upstream.len(),
        missing.join("\n")
    );
}
