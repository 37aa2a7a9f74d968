#!/usr/bin/env bash
# The test command: format, lint, then every test of the workspace (unit tests, tests against
# real kernel tools, cluster and fleet tests on loopback). Installs what is missing first.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[[ -n "${KMM_SETUP_DONE:-}" ]] || bash ci/setup.sh
export KMM_FLEET_BIN_DIR="${KMM_FLEET_BIN_DIR:-$(ci/build-bins.sh --print)}"

step() { echo "==> $*" >&2; }
step "cargo fmt --check"
cargo fmt --all --check
step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
step "generated CRDs are current"
cargo run -q --locked -p shared-api --bin crdgen -- --check
step "the RHACM Policy carries the current spoke manifests (manifests/rhacm/generate.sh)"
bash manifests/rhacm/generate.sh "$KMM_FLEET_BIN_DIR/kubectl"
git diff --exit-code --stat -- manifests/rhacm/policy.yaml ||
  { echo "manifests/rhacm/policy.yaml was stale; it is regenerated now: commit it" >&2; exit 1; }
step "cargo build --bins (the cluster tests run the real kmm-spoke and kmm-hub binaries)"
cargo build --workspace --bins --locked
step "cargo test"
cargo test --workspace --locked --no-fail-fast
