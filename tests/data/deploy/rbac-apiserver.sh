#!/usr/bin/env bash
# The kube-apiserver in $RECOVERD_DEPLOY_APISERVER with `--authorization-mode RBAC` in place of
# the test harness's AlwaysAllow (a repeated --authorization-mode would add to it, not replace
# it), so that the remote-cluster Role is enforced. The admin token is in system:masters.
set -euo pipefail
args=()
prev=''
for a in "$@"; do
  if [ "$prev" = --authorization-mode ]; then a=RBAC; fi
  args+=("$a")
  prev=$a
done
exec "${RECOVERD_DEPLOY_APISERVER:?}" "${args[@]}"
