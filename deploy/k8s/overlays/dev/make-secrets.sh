#!/bin/sh
# Writes the dev overlay's secrets, with fresh random values, next to its
# kustomization.yaml (or into DIR): files git ignores, which the overlay's
# secretGenerator reads. Run it once before `kubectl apply -k`:
#   deploy/k8s/overlays/dev/make-secrets.sh [--force] [DIR]
#
#   secrets.env   the Secret preannotate-secrets: S3 keys (MinIO's root user
#                 too), the webhook secret, and PREANNOTATE_CVAT_TOKEN (empty:
#                 put CVAT's token there and apply again)
#   tokens.yaml   the Secret preannotate-tokens: one gRPC token for every
#                 namespace, stored as its SHA-256
#   token         that token itself, for the CLI: export PREANNOTATE_TOKEN="$(cat token)"
#
# Existing files are kept (a running MinIO keeps the keys it started with);
# --force writes new ones.
set -eu

force=0
if [ "${1:-}" = "--force" ]; then
    force=1
    shift
fi
dir="${1:-$(dirname "$0")}"

if ! command -v openssl >/dev/null 2>&1; then
    echo "make-secrets.sh: needs openssl (for random values and SHA-256)" >&2
    exit 1
fi

if [ "$force" = 0 ]; then
    for f in secrets.env tokens.yaml token; do
        if [ -e "$dir/$f" ]; then
            echo "make-secrets.sh: $dir/$f exists; keeping the secrets there (--force writes new ones)" >&2
            exit 0
        fi
    done
fi

rand() { openssl rand -hex "$1"; }
umask 077
token="$(rand 32)"
digest="$(printf '%s' "$token" | openssl dgst -sha256 | sed 's/^.*= *//')"

cat > "$dir/secrets.env" <<ENV
PREANNOTATE_S3_ACCESS_KEY=dev-$(rand 8)
PREANNOTATE_S3_SECRET_KEY=$(rand 24)
PREANNOTATE_WEBHOOK_SECRET=$(rand 24)
PREANNOTATE_CVAT_TOKEN=
ENV

cat > "$dir/tokens.yaml" <<YAML
tokens:
  - name: dev
    sha256: "$digest"
    namespaces: ["*"]
    admin: ["*"]
YAML

printf '%s\n' "$token" > "$dir/token"
echo "make-secrets.sh: wrote secrets.env, tokens.yaml and token in $dir"
