#!/usr/bin/env bash
# Makes recoverd's image without pulling anything: `buildah from scratch`, a recoverd binary you
# built (cargo build --release), the shared libraries it links from this machine, and the same
# configuration as the Containerfile (numeric non-root user, ENTRYPOINT ["recoverd"], OCI
# labels). For machines that cannot reach an image registry; elsewhere build the Containerfile.
#
#   deploy/image/assemble.sh BINARY [IMAGE]    (IMAGE default: localhost/recoverd:<crate version>)
#
# Prints the image name last. Global buildah options (e.g. --root DIR --runroot DIR
# --storage-driver vfs) come from $BUILDAH_OPTS.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin=${1:?usage: assemble.sh BINARY [IMAGE]}
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/Cargo.toml" | head -1)
image=${2:-localhost/recoverd:$version}
source=$(git -C "$repo" config --get remote.origin.url 2>/dev/null || echo unknown)
revision=$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)
# shellcheck disable=SC2086
b() { buildah ${BUILDAH_OPTS:-} "$@"; }

ctr=$(b from scratch)
trap 'b rm "$ctr" >/dev/null 2>&1 || true' EXIT
b copy --quiet --chmod 0755 "$ctr" "$bin" /usr/local/bin/recoverd >/dev/null
# The dynamic loader and every library the binary links, at the paths it looks for them.
ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u |
while read -r lib; do
  b copy --quiet "$ctr" "$(readlink -f "$lib")" "$lib" >/dev/null
done
b config \
  --user 65532:65532 \
  --entrypoint '["recoverd"]' --cmd serve \
  --env PATH=/usr/local/bin \
  --port 8080 \
  --label org.opencontainers.image.title=recoverd \
  --label "org.opencontainers.image.description=Turns an alert into a safe, recorded recovery across Kubernetes clusters" \
  --label "org.opencontainers.image.version=$version" \
  --label "org.opencontainers.image.source=$source" \
  --label "org.opencontainers.image.revision=$revision" \
  --label org.opencontainers.image.licenses=Apache-2.0 \
  "$ctr"
b commit --quiet "$ctr" "$image" >/dev/null
echo "$image"
