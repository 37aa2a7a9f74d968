#!/usr/bin/env bash
# Installs everything the tests need on a fresh Debian machine, idempotently, and fast when it
# is all there already:
#   - Debian packages: kernel headers and kbuild (fixture modules, sign-file), kmod (depmod,
#     modprobe, modinfo), openssl, build tools;
#   - Rust components: rustfmt, clippy;
#   - the real fleet binaries (etcd, Kubernetes, KWOK, OCM, registry) built from ci/go/ into
#     ~/.cache/kmm-rs/bins (see ci/build-bins.sh).
# Run as root (or with passwordless sudo) on Debian 12.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log() { echo "setup: $*" >&2; }

packages=(linux-headers-amd64 kmod make gcc openssl ca-certificates git iproute2 procps)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  log "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
ls /usr/lib/linux-kbuild-*/scripts/sign-file >/dev/null 2>&1 || { log "sign-file missing after installing linux-headers-amd64"; exit 1; }

if command -v rustup >/dev/null; then
  for c in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || { log "adding Rust component $c"; rustup component add "$c"; }
  done
fi
command -v go >/dev/null || { log "Go is required to build the fleet binaries (https://go.dev/dl)"; exit 1; }

"$here/build-bins.sh" >/dev/null
log "fleet binaries in $("$here/build-bins.sh" --print)"
