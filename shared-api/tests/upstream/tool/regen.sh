#!/usr/bin/env bash
# Regenerates cases/, verdicts.yaml and mappings.yaml from upstream KMM by RUNNING upstream:
# a real kube-apiserver + etcd with upstream's CRDs (schema + CEL), and upstream's own Go
# validators and kernel mapper called from small test files dropped into an upstream checkout.
#
# Not run by CI.  Needs: git, python3 with PyYAML, openssl, Go (fetches upstream's Go modules
# through the module proxy, so network on first run), and the etcd / kube-apiserver / kubectl
# binaries printed by `ci/build-bins.sh --print` of this repository.
#
# usage: shared-api/tests/upstream/tool/regen.sh [OUTDIR]   (default: shared-api/tests/upstream)
# env:   KMM_MIRROR  bare git repo of kubernetes-sigs/kernel-module-management
#        KMM_COMMIT  upstream commit to use (default: the one the corpus was made from)
#        BINS        directory with etcd, kube-apiserver, kubectl
#        WORK        scratch directory (default: a fresh mktemp -d)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO_ROOT="$(cd "$HERE/../../../.." && pwd)"
OUT="${1:-$(cd "$HERE/.." && pwd)}"
KMM_MIRROR="${KMM_MIRROR:-/work/.mirror/kubernetes-sigs+kernel-module-management/repo}"
KMM_COMMIT="${KMM_COMMIT:-de3f8c9d5eae9cc68c0dbfaa72ba2d9c103b6494}"
BINS="${BINS:-$(cd "$REPO_ROOT" && ci/build-bins.sh --print)}"
WORK="${WORK:-$(mktemp -d /tmp/kmm-corpus.XXXXXX)}"
ETCD_PORT="${ETCD_PORT:-23790}"; API_PORT="${API_PORT:-26443}"
echo "work dir: $WORK"

# 1. upstream checkout (outside this repository)
UP="$WORK/kmm-upstream"
git -C "$KMM_MIRROR" worktree add --detach "$UP" "$KMM_COMMIT"
stop() {  # SIGTERM, then SIGKILL if still alive after 10s (the apiserver's graceful shutdown can hang)
  local pid; [ -f "$1" ] || return 0; pid="$(cat "$1")"
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
  kill -9 "$pid" 2>/dev/null || true
}
cleanup() {
  stop "$WORK/apiserver.pid"; stop "$WORK/etcd.pid"
  git -C "$KMM_MIRROR" worktree remove --force "$UP" 2>/dev/null || true
}
trap cleanup EXIT

# 2. case files (upstream examples at $KMM_COMMIT and v2.6.0, plus variants)
mkdir -p "$OUT/cases"
KMM_MIRROR="$KMM_MIRROR" KMM_COMMIT="$KMM_COMMIT" python3 "$HERE/gen.py" "$OUT/cases"

# 3. etcd + kube-apiserver on 127.0.0.1 only
openssl genrsa -out "$WORK/sa.key" 2048 2>/dev/null
openssl rsa -in "$WORK/sa.key" -pubout -out "$WORK/sa.pub" 2>/dev/null
echo 'corpus-token,admin,admin,system:masters' > "$WORK/tokens.csv"
"$BINS/etcd" --data-dir "$WORK/etcd-data" --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT+1))" \
  --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT+1))" --initial-cluster "default=http://127.0.0.1:$((ETCD_PORT+1))" \
  > "$WORK/etcd.log" 2>&1 & echo $! > "$WORK/etcd.pid"
sleep 2
"$BINS/kube-apiserver" --etcd-servers "http://127.0.0.1:$ETCD_PORT" --bind-address 127.0.0.1 --advertise-address 127.0.0.1 \
  --secure-port "$API_PORT" --cert-dir "$WORK/certs" --service-account-key-file "$WORK/sa.pub" \
  --service-account-signing-key-file "$WORK/sa.key" --service-account-issuer https://kubernetes.default.svc \
  --token-auth-file "$WORK/tokens.csv" --authorization-mode AlwaysAllow --service-cluster-ip-range 10.0.0.0/24 \
  --disable-admission-plugins ServiceAccount > "$WORK/apiserver.log" 2>&1 & echo $! > "$WORK/apiserver.pid"
cat > "$WORK/kubeconfig" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: "https://127.0.0.1:$API_PORT", insecure-skip-tls-verify: true}
users:
- name: u
  user: {token: corpus-token}
contexts:
- name: x
  context: {cluster: c, user: u, namespace: default}
current-context: x
KCFG
K="$BINS/kubectl --kubeconfig $WORK/kubeconfig"
for _ in $(seq 1 60); do $K get --raw /readyz >/dev/null 2>&1 && break; sleep 1; done
$K apply -f "$UP/config/crd/bases/"
$K apply -f "$UP/config/crd-hub/bases/hub.kmm.sigs.x-k8s.io_managedclustermodules.yaml"
$K wait --for condition=established crd --all
$K create namespace ns

# 4. schema + CEL verdicts (server-side dry run, strict field validation); keeps the
#    objects as the API server returned them (defaults applied) in $WORK/stored/
python3 "$HERE/schema.py" "https://127.0.0.1:$API_PORT" corpus-token "$BINS/kubectl" "$WORK/kubeconfig" "$OUT/cases" "$WORK/schema.json"

# 5. upstream's webhook validators and kernel mapper
cp "$HERE/webhook_zz_corpus_test.go.txt" "$UP/internal/webhook/zz_corpus_test.go"
cp "$HERE/hub_zz_corpus_test.go.txt" "$UP/internal/webhook/hub/zz_corpus_test.go"
cp "$HERE/module_zz_corpus_test.go.txt" "$UP/internal/module/zz_corpus_test.go"
export CORPUS_CASES="$OUT/cases" CORPUS_STORED="$WORK/stored"
(cd "$UP" && CORPUS_OUT="$WORK/webhook.jsonl" go test ./internal/webhook/ -run Corpus -count=1 -v > "$WORK/webhook.log")
(cd "$UP" && CORPUS_OUT="$WORK/hub.jsonl" go test ./internal/webhook/hub/ -run Corpus -count=1 -v > "$WORK/hub.log")
(cd "$UP" && CORPUS_OUT="$WORK/mapping.jsonl" go test ./internal/module/ -run Corpus -count=1 -v > "$WORK/mapping.log")

# 6. verdicts.yaml / mappings.yaml
python3 "$HERE/assemble.py" "$WORK" "$OUT"
