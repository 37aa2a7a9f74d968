#!/usr/bin/env bash
# Regenerates crd-paths.txt from a clone of upstream KMM (needs git and python3 with PyYAML; not
# run by CI). Usage: crd-paths.sh /path/to/kernel-module-management [ref...]
set -euo pipefail
repo=${1:?path to a kernel-module-management clone}
shift
refs=("${@:-v2.6.0 HEAD}")
here=$(cd "$(dirname "$0")" && pwd)
python3 - "$repo" "$here/crd-paths.txt" ${refs[@]} <<'PY'
import subprocess, sys, yaml
repo, out_path, refs = sys.argv[1], sys.argv[2], sys.argv[3:]
files = [
    "config/crd/bases/kmm.sigs.x-k8s.io_modules.yaml",
    "config/crd/bases/kmm.sigs.x-k8s.io_nodemodulesconfigs.yaml",
    "config/crd/bases/kmm.sigs.x-k8s.io_preflightvalidations.yaml",
    "config/crd-hub/bases/hub.kmm.sigs.x-k8s.io_managedclustermodules.yaml",
]
def show(ref, path):
    return subprocess.run(["git", "-C", repo, "show", f"{ref}:{path}"], capture_output=True, text=True, check=True).stdout
def walk(s, p, out):
    if p:
        out.add(p)
    for k, v in (s.get("properties") or {}).items():
        walk(v, f"{p}.{k}" if p else k, out)
    if "items" in s:
        walk(s["items"], p + "[]", out)
    if isinstance(s.get("additionalProperties"), dict):
        walk(s["additionalProperties"], p + "{}", out)
rows = set()
for ref in refs:
    for f in files:
        d = yaml.safe_load(show(ref, f))
        for v in d["spec"]["versions"]:
            paths = set()
            walk(v["schema"]["openAPIV3Schema"], "", paths)
            rows |= {(d["spec"]["group"], d["spec"]["names"]["kind"], v["name"], p) for p in paths}
names = []
for ref in refs:
    names.append(ref if ref.startswith("v") else subprocess.run(["git", "-C", repo, "rev-parse", "--short=12", ref], capture_output=True, text=True).stdout.strip())
with open(out_path, "w") as out:
    out.write("# Every field path of upstream KMM's CRDs for the kinds we serve, from\n")
    out.write(f"# config/crd/bases/ and config/crd-hub/bases/ at {' and '.join(names)} (the union).\n")
    out.write("# One line per path: <group> <kind> <version> <path>; `[]` is a list item, `{}` a map value.\n")
    out.write("# Regenerate with shared-api/tests/upstream/crd-paths.sh.\n")
    for r in sorted(rows):
        out.write(" ".join(r) + "\n")
PY
