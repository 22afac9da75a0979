#!/usr/bin/env bash
# Puts a genuine kube-apiserver v1.36.2 in the test cache ($KUBE_TEST_CACHE, default
# ~/.cache/kube-test) and prints its path last. The binary comes prebuilt (built from the
# Kubernetes 1.36.2 tree MicroShift vendors) as kube-apiserver-v1.36.2.xz beside the shared test
# tools: $RECOVERD_KUBE_TOOLS, or ../shared/tools/kube next to this checkout. Runs with Debian's
# etcd through start-cluster.sh exactly like the v1.20.2 build. Exits 3 when no copy is found.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${KUBE_TEST_CACHE:-$HOME/.cache/kube-test}
bin=$cache/kube-apiserver-v1.36.2
sha=caff979a1d3bd88f97b0fa58f8743f2e8c349c5c39e51be32572cdb1e06c2e9f
if [ ! -x "$bin" ]; then
  xz_file=
  for d in "${RECOVERD_KUBE_TOOLS:-}" "$here/../../../shared/tools/kube" /work/shared/tools/kube; do
    if [ -n "$d" ] && [ -f "$d/kube-apiserver-v1.36.2.xz" ]; then xz_file=$d/kube-apiserver-v1.36.2.xz; break; fi
  done
  if [ -z "$xz_file" ]; then
    echo "kube-apiserver-v1.36.2.xz not found (set RECOVERD_KUBE_TOOLS to its directory)" >&2
    exit 3
  fi
  echo "$sha  $xz_file" | sha256sum -c --quiet - >&2
  command -v etcd >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null; }
  mkdir -p "$cache"
  xz -dc "$xz_file" > "$bin.tmp"
  chmod +x "$bin.tmp" && mv "$bin.tmp" "$bin"
fi
"$bin" --version >&2
echo "$bin"
