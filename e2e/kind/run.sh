#!/usr/bin/env bash
# The Kubernetes e2e suite (e2e/suite/run.sh) on a kind cluster: create the cluster
# (e2e/kind/kind-config.yaml: 3 workers in 3 zones), build both images from the Dockerfile,
# `kind load docker-image` them, run the suite, delete the cluster.
# Needs docker (with BuildKit and access to Docker Hub for the `rust` builder image and the
# kind node image), kind (v0.30.0 tested: `go install sigs.k8s.io/kind@v0.30.0`), kubectl,
# helm 3, curl, jq.
#
# usage: e2e/kind/run.sh [extra e2e/suite/run.sh arguments]
# Environment: KIND_CLUSTER (default dynamo-e2e), KIND_NODE_IMAGE (default: kind's),
#   KIND_KEEP=1 (keep the cluster), IMAGE_TAG (default e2e).
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CLUSTER="${KIND_CLUSTER:-dynamo-e2e}"
TAG="${IMAGE_TAG:-e2e}"
NODE="dynamo-rs/node:$TAG" UPDATE="dynamo-rs/node:$TAG-update" OPERATOR="dynamo-rs/operator:$TAG"
WORK="$REPO_ROOT/e2e/.work/kind"
mkdir -p "$WORK"
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

cleanup() {
  local rc=$?
  if [ "${KIND_KEEP:-0}" = 1 ]; then
    log "KIND_KEEP=1: keeping kind cluster $CLUSTER (kind delete cluster --name $CLUSTER)"
  else
    kind delete cluster --name "$CLUSTER" || true
  fi
  exit "$rc"
}
trap cleanup EXIT

if ! kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  kind create cluster --name "$CLUSTER" --config "$REPO_ROOT/e2e/kind/kind-config.yaml" \
    ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"} --wait 300s
fi
kind get kubeconfig --name "$CLUSTER" >"$WORK/kubeconfig"

# Both images from source (the builder stage is shared between the two builds).
cd "$REPO_ROOT"
export DOCKER_BUILDKIT=1
docker build --target node -t "$NODE" .
docker build --target operator -t "$OPERATOR" .
# The rolling-update scenario changes spec.image to another tag of the same image.
docker tag "$NODE" "$UPDATE"
kind load docker-image --name "$CLUSTER" "$NODE" "$UPDATE" "$OPERATOR"

"$REPO_ROOT/e2e/suite/run.sh" --kubeconfig "$WORK/kubeconfig" \
  --node-image "$NODE" --node-image-update "$UPDATE" --operator-image "$OPERATOR" \
  --pull-policy IfNotPresent "$@"
