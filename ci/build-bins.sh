#!/usr/bin/env bash
# Build the pinned real components of the local fleet (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kwok, OCM registration + work,
# an OCI registry) from the Go modules under ci/go/ into a cache outside the
# repository, keyed by a hash of those modules' go.mod/go.sum files and the Go
# version (each binary is also cached on its own, so bumping one module only
# rebuilds that module's binaries).
#
#   ci/build-bins.sh           build what is missing, print the bin directory last
#   ci/build-bins.sh --print   print the bin directory only (no build; exit 1 if incomplete)
#
# Cache root: ${KMM_BIN_CACHE:-$HOME/.cache/kmm-rs/bins}. The finished directory
# is <root>/<key>/ and <root>/current is a symlink to it. The e2e harness finds
# it via $KMM_FLEET_BIN_DIR, else <root>/current.
#
# A warm cache makes this a no-op (a few milliseconds). Each binary is built
# one at a time (the machine has 2 cores) with -trimpath and -ldflags '-s -w'.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
gomods="$here/go"
root="${KMM_BIN_CACHE:-$HOME/.cache/kmm-rs/bins}"

# name|module dir|package|version stamping (see ldflags below)
bins=(
  "etcd|etcd|go.etcd.io/etcd/server/v3|-"
  "kube-apiserver|kubernetes|k8s.io/kubernetes/cmd/kube-apiserver|k8s"
  "kube-controller-manager|kubernetes|k8s.io/kubernetes/cmd/kube-controller-manager|k8s"
  "kube-scheduler|kubernetes|k8s.io/kubernetes/cmd/kube-scheduler|k8s"
  "kwok|kwok|sigs.k8s.io/kwok/cmd/kwok|-"
  "registration|ocm|open-cluster-management.io/ocm/cmd/registration|ocm"
  "work|ocm|open-cluster-management.io/ocm/cmd/work|ocm"
  "registry|registry|github.com/distribution/distribution/v3/cmd/registry|-"
  "kubectl|kubectl|k8s.io/kubernetes/cmd/kubectl|k8s"
)

command -v go >/dev/null || { echo "build-bins: 'go' is not on PATH" >&2; exit 1; }
goversion="$(go env GOVERSION)"

# Key of one Go module: Go version + its go.mod + go.sum. A binary is cached
# under objs/<name>-<module key>, so bumping one module rebuilds only its binaries.
modkey() {
  { echo "$goversion"; cat "$gomods/$1/go.mod" "$gomods/$1/go.sum"; } | sha256sum | cut -c1-16
}

# Version of module $2 as required by ci/go/$1/go.mod.
modver() {
  awk -v m="$2" '$1 == m && $2 ~ /^v/ { print $2; exit }' "$gomods/$1/go.mod"
}

# -ldflags for one binary: stripped, plus the version variables the upstream
# release builds stamp (otherwise Kubernetes reports v0.0.0-master).
ldflags() {
  local mod="$1" stamp="$2" v
  case "$stamp" in
    k8s)
      v="$(modver "$mod" k8s.io/kubernetes)"
      local major="${v#v}"; major="${major%%.*}"
      local minor="${v#v*.}"; minor="${minor%%.*}"
      local cb=k8s.io/component-base/version cg=k8s.io/client-go/pkg/version
      echo "-s -w -X $cb.gitVersion=$v -X $cb.gitMajor=$major -X $cb.gitMinor=$minor -X $cb.gitTreeState=clean -X $cg.gitVersion=$v -X $cg.gitMajor=$major -X $cg.gitMinor=$minor -X $cg.gitTreeState=clean"
      ;;
    ocm)
      v="$(modver "$mod" open-cluster-management.io/ocm)"
      local major="${v#v}"; major="${major%%.*}"
      local minor="${v#v*.}"; minor="${minor%%.*}"
      local pv=open-cluster-management.io/ocm/pkg/version
      echo "-s -w -X $pv.versionFromGit=$v -X $pv.majorFromGit=$major -X $pv.minorFromGit=$minor"
      ;;
    *) echo "-s -w" ;;
  esac
}

# Key of the whole set (what the harness uses): all entries with their module keys.
key="$(
  for entry in "${bins[@]}"; do
    IFS='|' read -r name mod pkg stamp <<<"$entry"
    echo "$name $pkg $(modkey "$mod") $(ldflags "$mod" "$stamp")"
  done | sha256sum | cut -c1-16
)"
dir="$root/$key"

complete() {
  [[ -f "$dir/.complete" ]]
}

if [[ "${1:-}" == "--print" ]]; then
  if complete; then echo "$dir"; exit 0; fi
  echo "binaries for key $key are not built; run ci/build-bins.sh" >&2
  exit 1
fi

mkdir -p "$root"
if complete; then
  ln -sfn "$key" "$root/current"
  echo "build-bins: cache warm ($dir)" >&2
  echo "$dir"
  exit 0
fi

# One builder at a time per cache root.
exec 9>"$root/.lock"
if ! flock -w 7200 9; then
  echo "build-bins: timed out waiting for another build-bins.sh" >&2
  exit 1
fi
if complete; then # another build-bins.sh finished it while we waited
  ln -sfn "$key" "$root/current"
  echo "$dir"
  exit 0
fi

mkdir -p "$dir" "$root/objs"
export GOFLAGS="-trimpath -mod=readonly"
export CGO_ENABLED=0
# some modules (e.g. sigs.k8s.io/about-api) are not in the checksum database
# reachable from here; their hashes are pinned in the committed go.sum files.
export GONOSUMDB="${GONOSUMDB:-sigs.k8s.io/about-api}"
export GOMAXPROCS="${GOMAXPROCS:-2}"

total=${#bins[@]}
i=0
start_all=$(date +%s)
for entry in "${bins[@]}"; do
  i=$((i + 1))
  IFS='|' read -r name mod pkg stamp <<<"$entry"
  flags="$(ldflags "$mod" "$stamp")"
  out="$root/objs/$name-$( { modkey "$mod"; echo "$flags"; } | sha256sum | cut -c1-16)"
  if [[ -x "$out" ]]; then
    echo "build-bins: [$i/$total] $name: cached" >&2
    ln -f "$out" "$dir/$name" 2>/dev/null || cp -f "$out" "$dir/$name"
    continue
  fi
  echo "build-bins: [$i/$total] $name: building $pkg (in ci/go/$mod) ..." >&2
  t0=$(date +%s)
  (cd "$gomods/$mod" && go build -p 2 -ldflags="$flags" -o "$out.tmp" "$pkg")
  mv "$out.tmp" "$out"
  ln -f "$out" "$dir/$name" 2>/dev/null || cp -f "$out" "$dir/$name"
  echo "build-bins: [$i/$total] $name: done in $(($(date +%s) - t0))s ($(du -h "$out" | cut -f1))" >&2
done

{
  echo "key=$key"
  echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "go=$goversion"
  echo "seconds=$(($(date +%s) - start_all))"
} >"$dir/.complete"
ln -sfn "$key" "$root/current"
echo "build-bins: all $total binaries ready in $(($(date +%s) - start_all))s" >&2
echo "$dir"
