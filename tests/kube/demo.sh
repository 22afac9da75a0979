#!/usr/bin/env bash
# The CloudNativePG switchover, end to end, on three throwaway real clusters (north, south,
# edge) built from Debian's kube-apiserver: seed the world, fire the alert, watch recoverd demote
# pg-north, hand the demotion token to pg-south, promote it and redirect HAProxy, then check
# every cluster ended up as expected. Needs root the first time (apt, and building the
# apiserver: ~7 minutes once, cached after).
set -euo pipefail
cd "$(dirname "$0")/../.."
echo "==> test kube-apiserver (built once, then cached)"
BIN=$(bash tests/kube/build-apiserver.sh | tail -1)
echo "==> building recoverd"
cargo build --quiet
W=$(mktemp -d /tmp/recoverd-demo.XXXXXX)
cleanup() { for c in north south edge; do bash tests/kube/stop-cluster.sh "$W/$c" >/dev/null 2>&1 || true; done; rm -rf "$W"; }
trap cleanup EXIT
bash tests/kube/mkpki.sh "$W/pki"
free_port() { python3 -c 'import socket
while True:
    a=socket.socket(); a.bind(("127.0.0.1",0)); p=a.getsockname()[1]
    b=socket.socket()
    try: b.bind(("127.0.0.1",p+1)); print(p); break
    except OSError: pass'; }
echo "==> starting clusters north, south, edge"
configs=()
for c in north south edge; do
  configs+=("$(bash tests/kube/start-cluster.sh "$c" "$W/$c" "$BIN" "$(free_port)" "$(free_port)" "$W/pki")")
done
KUBECONFIG=$(IFS=:; echo "${configs[*]}") kubectl config view --flatten > "$W/kubeconfig"
kubectl --kubeconfig "$W/kubeconfig" config use-context north >/dev/null
echo "==> rehearsing plans/cnpg-switchover.yaml with the alert Alertmanager sent"
./target/debug/recoverd rehearse plans/cnpg-switchover.yaml \
  --kubeconfig "$W/kubeconfig" \
  --world tests/data/worlds/cnpg.yaml \
  --expect tests/data/worlds/cnpg-expect.yaml \
  --alert tests/data/alerts/firing-one-alert.json \
  --param execChecks=false  # no kubelet in these clusters: the exec checks cannot run
