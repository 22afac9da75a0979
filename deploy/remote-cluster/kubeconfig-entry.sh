#!/usr/bin/env bash
# Turns the recoverd ServiceAccount of one target cluster (deploy/remote-cluster/, applied there)
# into a context of the kubeconfig recoverd reads: a token from the TokenRequest API (kubectl
# create token), the server and CA from your own kubeconfig's context for that cluster.
# Re-run it before the token expires (--duration, default one year) and re-apply the overlay.
#
#   kubeconfig-entry.sh --context KUBECTL_CONTEXT [--name CLUSTER] --out FILE [--duration 8760h]
#
# FILE gets (or has replaced) a cluster, user and context named CLUSTER (default: the context's
# name). The token never appears on a command line.
set -euo pipefail
usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; }
context='' name='' out='' duration=8760h namespace=recoverd account=recoverd
while [ $# -gt 0 ]; do
  case $1 in
    --context) context=$2; shift 2 ;;
    --name) name=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "kubeconfig-entry.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
if [ -z "$context" ] || [ -z "$out" ]; then
  echo "kubeconfig-entry.sh: --context and --out are required" >&2; usage >&2; exit 2
fi
name=${name:-$context}
view() { kubectl config view --raw --minify --context "$context" -o jsonpath="{.clusters[0].cluster.$1}"; }
server=$(view server)
ca_data=$(view certificate-authority-data)
if [ -z "$ca_data" ]; then
  ca_file=$(view certificate-authority)
  if [ -z "$ca_file" ]; then
    echo "kubeconfig-entry.sh: context $context has no certificate authority; recoverd will not trust $server without one" >&2
    exit 1
  fi
  ca_data=$(base64 -w0 < "$ca_file")
fi
token=$(kubectl --context "$context" --namespace "$namespace" create token "$account" --duration "$duration")

umask 077
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/entry" <<KC
apiVersion: v1
kind: Config
clusters:
- name: $name
  cluster: {server: "$server", certificate-authority-data: "$ca_data"}
users:
- name: $name
  user: {token: "$token"}
contexts:
- name: $name
  context: {cluster: $name, user: $name}
KC
# Entries of the first file win: the new one replaces an old one of the same name.
KUBECONFIG="$tmp/entry:$out" kubectl config view --raw --flatten > "$tmp/merged"
mkdir -p "$(dirname "$out")"
cat "$tmp/merged" > "$out"
echo "kubeconfig-entry.sh: $out has context $name for $server" >&2
