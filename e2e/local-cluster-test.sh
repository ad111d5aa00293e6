#!/usr/bin/env bash
# The Kubernetes e2e suite (e2e/suite/run.sh) on this machine's real single-node cluster
# (e2e/local-cluster): support check, cluster up, images built and imported, static volumes,
# the suite, and always the teardown. Nothing is pulled from a registry.
#
# usage: e2e/local-cluster-test.sh [extra e2e/suite/run.sh arguments]
#
# Steps, all bounded together by E2E_TIMEOUT (default 1620 s = 27 min; the teardown comes on
# top, down.sh bounds it itself). The default assumes the Kubernetes, etcd and CoreDNS binaries
# are cached in ~/.cache/dynamo-e2e (e2e/apiserver/build.sh all); building them from nothing
# takes about 27 min on 2 cores, so raise E2E_TIMEOUT for a first run.
#   1. e2e/local-cluster/supported.sh: if the machine cannot run the cluster, print why and
#      exit 1 (exit 0 with a SKIP line instead when E2E_ALLOW_SKIP=1);
#   2. e2e/local-cluster/up.sh (Kubernetes v1.34 built from the Go module proxy, cached);
#   3. e2e/images.sh (dynamo-rs/node and dynamo-rs/operator, :<version> and :dev, with Docker),
#      then e2e/local-cluster/load-image.sh --docker for node:dev, node:<version> (the
#      rolling-update target: same image, other tag) and operator:dev;
#   4. helm: e2e/chart-test.sh --tools-only (go install, cached) unless HELM is set;
#   5. e2e/suite/static-pvs.sh: StorageClass dynamo-e2e-hostpath and 8 hostPath volumes
#      (the cluster has no provisioner);
#   6. e2e/suite/run.sh;
#   7. on exit, whatever happened: e2e/local-cluster/down.sh (E2E_KEEP_CLUSTER=1 keeps it).
# Environment: E2E_ALLOW_SKIP, E2E_TIMEOUT, E2E_KEEP_CLUSTER, E2E_SKIP_IMAGE_BUILD=1 (use the
# dynamo-rs/*:dev images already in Docker), HELM.
source "$(dirname "${BASH_SOURCE[0]}")/local-cluster/lib.sh"

BUDGET="${E2E_TIMEOUT:-1620}"
T0=$SECONDS
remaining() { echo $((BUDGET - (SECONDS - T0))); }
# bounded SECONDS_MAX CMD... : runs CMD with what is left of the budget (at most SECONDS_MAX).
bounded() {
  local max="$1" left; shift
  left="$(remaining)"
  [ "$left" -gt 10 ] || die "out of time (E2E_TIMEOUT=$BUDGET s) before: $*"
  [ "$left" -lt "$max" ] || left="$max"
  timeout --kill-after=180 "$left" "$@" || {
    local rc=$?
    [ "$rc" != 124 ] || die "timed out after $left s: $*"
    return "$rc"
  }
}

log "== Kubernetes e2e on the local single-node cluster"
if ! "$LC_DIR/supported.sh"; then
  echo
  echo "LOCAL-CLUSTER E2E NOT RUN: this machine cannot run the local Kubernetes cluster (each FAIL line above says why)."
  if [ "${E2E_ALLOW_SKIP:-0}" = 1 ]; then
    echo "SKIP (E2E_ALLOW_SKIP=1)"
    exit 0
  fi
  echo "Set E2E_ALLOW_SKIP=1 to turn this into a skip, or run the same suite on kind or any cluster (docs/testing.md)."
  exit 1
fi

teardown() {
  local rc=$?
  set +e
  if [ "${E2E_KEEP_CLUSTER:-0}" = 1 ]; then
    log "E2E_KEEP_CLUSTER=1: the cluster keeps running (stop it with e2e/local-cluster/down.sh)"
  else
    log "tearing the local cluster down"
    "$LC_DIR/down.sh" >"$E2E_DIR/.work/local-cluster-down.log" 2>&1 \
      || { tail -n 20 "$E2E_DIR/.work/local-cluster-down.log" >&2; log "down.sh failed (log: $E2E_DIR/.work/local-cluster-down.log)"; rc=1; }
  fi
  log "local-cluster e2e: $( [ "$rc" = 0 ] && echo PASSED || echo "FAILED (exit $rc)" ) in $((SECONDS - T0)) s"
  exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT TERM

t=$SECONDS
bounded 100000 "$LC_DIR/up.sh"
log "cluster up in $((SECONDS - t)) s"

VERSION="$(awk '/^\[/ { s = $0 } s == "[workspace.package]" && $1 == "version" { gsub(/"/, "", $3); print $3; exit }' "$REPO_ROOT/Cargo.toml")"
PREFIX="${IMAGE_PREFIX:-dynamo-rs}"
t=$SECONDS
if [ "${E2E_SKIP_IMAGE_BUILD:-0}" = 1 ]; then
  log "E2E_SKIP_IMAGE_BUILD=1: using the images already in Docker"
  "$E2E_DIR/docker-up.sh"
else
  bounded 100000 "$E2E_DIR/images.sh"
fi
docker image inspect "$PREFIX/node:dev" "$PREFIX/operator:dev" >/dev/null || die "images $PREFIX/node:dev and $PREFIX/operator:dev missing"
# The rolling-update target is the same image under a second tag: a different spec.image.
docker tag "$PREFIX/node:dev" "$PREFIX/node:e2e-update"
bounded 300 "$LC_DIR/load-image.sh" --docker "$PREFIX/node:dev" "$PREFIX/node:e2e-update" "$PREFIX/operator:dev" \
  >"$E2E_DIR/.work/load-image.log" 2>&1 || { cat "$E2E_DIR/.work/load-image.log" >&2; die "image import failed"; }
log "images built and imported in $((SECONDS - t)) s (version $VERSION)"

if [ -z "${HELM:-}" ]; then
  HELM="$(bounded 100000 "$E2E_DIR/chart-test.sh" --tools-only | head -n 1)"
fi
[ -x "$HELM" ] || die "no helm ($HELM)"
export HELM KUBECTL="$K8S_BIN/kubectl" KUBECONFIG="$KUBECONFIG_ADMIN"

"$REPO_ROOT/e2e/suite/static-pvs.sh" create "$WORKDIR/e2e-pv" 8

log "running e2e/suite/run.sh ($(remaining) s left)"
bounded 100000 "$REPO_ROOT/e2e/suite/run.sh" \
  --node-image "$PREFIX/node:dev" --node-image-update "$PREFIX/node:e2e-update" \
  --operator-image "$PREFIX/operator:dev" --pull-policy Never \
  --storage-class dynamo-e2e-hostpath "$@"
