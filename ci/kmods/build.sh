#!/usr/bin/env bash
# Build the CI fixture kernel modules (kmm_ci_a, kmm_ci_b, kmm_ci_fw) against Debian's kernel
# headers and lay them out under OUTDIR:
#
#   OUTDIR/lib/modules/<kver>/kmm_ci_{a,b,fw}.ko   (+ modules.dep etc. from `depmod -b OUTDIR <kver>`)
#   OUTDIR/lib/firmware/kmm_ci_fw.bin
#
# Usage: ci/kmods/build.sh OUTDIR
# Prints progress on stderr and the kernel version it built for as the last line on stdout,
# so `KVER=$(ci/kmods/build.sh out)` works.
#
# Env:
#   KMM_KMODS_HEADERS   kernel headers dir (default: newest /usr/src/linux-headers-*-amd64)
#   KMM_KMODS_CACHE     cache root (default: $HOME/.cache/kmm-rs/kmods)
#
# Needs (Debian): linux-headers-amd64 (brings linux-kbuild-6.1 and gcc-12), make, kmod.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log() { echo "kmods: $*" >&2; }
die() { echo "kmods: error: $*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: $0 OUTDIR"
out="$1"

for tool in make depmod sha256sum; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found (apt-get install -y make kmod coreutils)"
done

headers="${KMM_KMODS_HEADERS:-}"
if [ -z "$headers" ]; then
    headers="$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1 || true)"
fi
[ -n "$headers" ] && [ -f "$headers/Makefile" ] \
    || die "no kernel headers found under /usr/src (apt-get install -y linux-headers-amd64), or KMM_KMODS_HEADERS is wrong: '${headers}'"
uts="$headers/include/generated/utsrelease.h"
[ -f "$uts" ] || die "$uts missing: not a prepared kernel headers tree"
kver="$(sed -n 's/^#define UTS_RELEASE "\(.*\)"$/\1/p' "$uts")"
[ -n "$kver" ] || die "cannot read UTS_RELEASE from $uts"

# Cache key: every source file, the firmware fixture, this script, and the kernel version.
src_hash="$(cd "$here" && find src firmware build.sh -type f -print0 | sort -z \
    | xargs -0 sha256sum | sha256sum | cut -c1-16)"
cache_root="${KMM_KMODS_CACHE:-${HOME:-/root}/.cache/kmm-rs/kmods}"
cache="$cache_root/${kver}-${src_hash}"

if [ -f "$cache/.complete" ]; then
    log "using cached build $cache"
else
    log "building for kernel $kver with $headers"
    mkdir -p "$cache_root"
    work="$(mktemp -d "$cache_root/.build.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
    cp -r "$here/src" "$work/src"
    if ! make -C "$headers" M="$work/src" modules >"$work/make.log" 2>&1; then
        cat "$work/make.log" >&2
        die "kernel module build failed (see above)"
    fi
    mkdir -p "$work/tree/lib/modules/$kver" "$work/tree/lib/firmware"
    for m in kmm_ci_a kmm_ci_b kmm_ci_fw; do
        [ -f "$work/src/$m.ko" ] || die "$m.ko was not produced"
        cp "$work/src/$m.ko" "$work/tree/lib/modules/$kver/"
    done
    cp "$here/firmware/kmm_ci_fw.bin" "$work/tree/lib/firmware/"
    touch "$work/tree/.complete"
    rm -rf "$cache"
    mv "$work/tree" "$cache"
    rm -rf "$work"
    trap - EXIT
fi

mkdir -p "$out/lib/modules/$kver" "$out/lib/firmware"
cp "$cache/lib/modules/$kver/"*.ko "$out/lib/modules/$kver/"
cp "$cache/lib/firmware/kmm_ci_fw.bin" "$out/lib/firmware/"
# What `make modules_install` would leave next to the modules; keeps depmod quiet.
printf 'kmm_ci_b.ko\nkmm_ci_a.ko\nkmm_ci_fw.ko\n' >"$out/lib/modules/$kver/modules.order"
: >"$out/lib/modules/$kver/modules.builtin"
: >"$out/lib/modules/$kver/modules.builtin.modinfo"
depmod -b "$out" "$kver"
grep -q '^kmm_ci_a.ko: kmm_ci_b.ko$' "$out/lib/modules/$kver/modules.dep" \
    || die "depmod did not record kmm_ci_a -> kmm_ci_b in $out/lib/modules/$kver/modules.dep"
log "built for kernel $kver into $out/lib/modules/$kver"
echo "$kver"
