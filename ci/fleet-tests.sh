#!/usr/bin/env bash
# Build (or reuse) the local fleet's binaries, then run the e2e tests against
# real etcd / kube-apiserver / kube-controller-manager / kube-scheduler / KWOK /
# OCM / registry processes on 127.0.0.1.
#
#   ci/fleet-tests.sh [extra cargo test args...]
#
# Needs: go (1.25+, module proxy reachable on a cold cache), cargo, flock,
# sha256sum. Cold binary build: tens of minutes on 2 cores; warm: instant.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."

bin_dir="$("$here/build-bins.sh")"
export KMM_FLEET_BIN_DIR="$bin_dir"
echo "fleet-tests: binaries in $KMM_FLEET_BIN_DIR" >&2
exec cargo test -p e2e "$@"
