#!/usr/bin/env bash
# The performance suite (BENCHMARKS.md): every figure P1–P9 with its baseline measured in the same
# run, the ratio or difference, and the target.
#
#   bash benches/run.sh                      # everything (~15 min on 2 busy cores)
#   bash benches/run.sh --quick              # the smoke mode CI runs: small sizes, short runs
#   bash benches/run.sh --json out.json      # also write the figures as JSON
#   bash benches/run.sh --only P2,P7         # some figures; --no-clusters skips the API servers
#
# Cluster figures run on genuine kube-apiservers: $RECOVERD_TEST_APISERVER, default v1.36.2 from
# ~/.cache/kube-test (tests/kube/build-apiserver.sh builds v1.20.2 there). Timings are reported,
# never judged: the exit status only says whether the suite ran.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for tool in wrk hyperfine; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; }
  else
    echo "benches/run.sh needs ${missing[*]} (Debian packages; run as root to install them)" >&2
    exit 1
  fi
fi

if [ -z "${RECOVERD_TEST_APISERVER:-}" ] && [ -x "$HOME/.cache/kube-test/kube-apiserver-v1.36.2" ]; then
  export RECOVERD_TEST_APISERVER="$HOME/.cache/kube-test/kube-apiserver-v1.36.2"
fi

# RECOVERD_BENCH_PROFILE=dev runs the suite unoptimised (CI's smoke run reuses the test build).
exec cargo bench --profile "${RECOVERD_BENCH_PROFILE:-bench}" --bench suite -- "$@"
