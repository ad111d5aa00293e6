#!/usr/bin/env bash
# Evaluates every query of the Grafana dashboards (charts/dynamo-operator/dashboards/*.json)
# through a real Prometheus (Debian's `prometheus` package, installed if missing) scraping
# a `dynamo dev` cluster of 3 members under a short workload, and a real dynamo-operator.
# Fails if a query errors, returns no data, or names a metric the code does not define.
# Details of the node part: e2e/prometheus_dashboards_test.py.
#
# The operator part (skipped with --no-operator, and then the operator dashboard is
# reported SKIPPED, never passed):
#   1. starts a private Kubernetes control plane (e2e/apiserver/up.sh: etcd,
#      kube-apiserver, kube-controller-manager; no kubelet, pods stay Pending) on free
#      loopback ports, in its own work directory;
#   2. `helm install`s charts/dynamo-operator (CRD, ServiceAccount, ClusterRole, binding,
#      Deployment, Service, dashboard ConfigMaps) — the API server must accept every
#      object — then `helm upgrade`s it with other values;
#   3. runs the operator image (dynamo-rs/operator:dev from e2e/images.sh; the host binary
#      when the image is missing) as the chart's ServiceAccount (a token of it, so the
#      chart's RBAC is what it gets), hardened (read-only, no capabilities, user 65532),
#      on the host network, metrics on 127.0.0.1;
#   4. gives it work: a DynamoCluster (`helm install` of charts/dynamo-cluster) scaled 3 -> 4 -> 3 (the claim of ordinal 3 is
#      deleted: an action) and one whose token Secret is missing (reconcile errors);
#   5. Prometheus scrapes the operator too, and its dashboard is evaluated;
#   6. `helm uninstall` must leave the CRD (helm.sh/resource-policy: keep);
#   7. `docker stop` of the operator container (SIGTERM) must exit 0 within 10 s.
#
# usage: e2e/prometheus-dashboards-test.sh [--no-operator] [--keep]
# Environment: DYNAMO_BIN, OPERATOR_BIN (default: static release builds in target/static,
#              as e2e/images.sh makes them), OPERATOR_IMAGE (default dynamo-rs/operator:dev;
#              "none" runs OPERATOR_BIN instead), WAIT_S (bound of each wait, default 90).
source "$(dirname "${BASH_SOURCE[0]}")/apiserver/lib.sh"

WITH_OPERATOR=1
PY_ARGS=()
for arg in "$@"; do
  case "$arg" in
    --no-operator) WITH_OPERATOR=0 ;;
    --keep) PY_ARGS+=(--keep) ;;
    -h|--help) sed -n '2,32p' "$0"; exit 0 ;;
    *) die "unknown argument: $arg (see --help)" ;;
  esac
done
WAIT_S="${WAIT_S:-90}"
T_START=$SECONDS

apt_install prometheus curl jq
cd "$REPO_ROOT"
TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"
STATIC_TARGET_DIR="${STATIC_TARGET_DIR:-$REPO_ROOT/target/static}"
if [ -z "${DYNAMO_BIN:-}" ] || { [ "$WITH_OPERATOR" = 1 ] && [ -z "${OPERATOR_BIN:-}" ]; }; then
  log "cargo build --release --target $TRIPLE -p dynamo-node -p dynamo-operator (static, $STATIC_TARGET_DIR)"
  CARGO_TARGET_DIR="$STATIC_TARGET_DIR" RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --release --locked --target "$TRIPLE" -p dynamo-node -p dynamo-operator \
    >/tmp/dynamo-prom-test-build.log 2>&1 \
    || { tail -n 30 /tmp/dynamo-prom-test-build.log >&2; die "cargo build failed"; }
fi
DYNAMO_BIN="${DYNAMO_BIN:-$STATIC_TARGET_DIR/$TRIPLE/release/dynamo}"
OPERATOR_BIN="${OPERATOR_BIN:-$STATIC_TARGET_DIR/$TRIPLE/release/dynamo-operator}"

if [ "$WITH_OPERATOR" = 0 ]; then
  exec python3 "$E2E_DIR/prometheus_dashboards_test.py" --dynamo "$DYNAMO_BIN" \
    --prometheus "$(command -v prometheus)" "${PY_ARGS[@]}"
fi

# ------------------------------------------------------------------ operator part
mapfile -t TOOLS < <("$E2E_DIR/chart-test.sh" --tools-only)
HELM="${TOOLS[0]:-}" KUBECONFORM="${TOOLS[1]:-}"
{ [ -x "$HELM" ] && [ -x "$KUBECONFORM" ]; } || die "chart-test.sh --tools-only did not give helm and kubeconform"
WORK="$(mktemp -d /tmp/dynamo-prom-operator.XXXXXX)"
export WORKDIR="$WORK/apiserver"
export HELM_CACHE_HOME="$WORK/helm/cache" HELM_CONFIG_HOME="$WORK/helm/config" HELM_DATA_HOME="$WORK/helm/data"
OP_LOG="$WORK/operator.log"
OP_PID=""
OPERATOR_IMAGE="${OPERATOR_IMAGE:-dynamo-rs/operator:dev}"
OP_CONTAINER="dynamo-prom-operator-$$"
if [ "$OPERATOR_IMAGE" != none ] && ! { docker info >/dev/null 2>&1 && docker image inspect "$OPERATOR_IMAGE" >/dev/null 2>&1; }; then
  log "image $OPERATOR_IMAGE not available (run e2e/images.sh); running $OPERATOR_BIN on the host instead"
  OPERATOR_IMAGE=none
fi

cleanup() {
  local rc=$?
  if [ "$rc" != 0 ] && [ -f "$WORKDIR/kubeconfig" ]; then
    log "FAILED (exit $rc): cluster state and operator log follow"
    k get dc,sts,pvc,pods -A -o wide >&2 2>&1 || true
    k get events -A --sort-by=.lastTimestamp 2>&1 | tail -n 30 >&2 || true
    tail -n 40 "$OP_LOG" >&2 2>/dev/null || true
  fi
  if [ "$OPERATOR_IMAGE" != none ]; then
    [ "$rc" = 0 ] || docker logs --tail 40 "$OP_CONTAINER" >&2 2>&1 || true
    docker rm -f "$OP_CONTAINER" >/dev/null 2>&1 || true
  fi
  if [ -n "$OP_PID" ] && kill -0 "$OP_PID" 2>/dev/null; then
    kill -TERM "$OP_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$OP_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$OP_PID" 2>/dev/null || true
  fi
  "$E2E_LIB_DIR/down.sh" >/dev/null 2>&1 || true
  if [ "$rc" = 0 ]; then rm -rf "$WORK"; else log "work directory kept: $WORK"; fi
  log "prometheus dashboards test (with operator): $((SECONDS - T_START)) s"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

k() { "$K8S_BIN/kubectl" --kubeconfig "$WORKDIR/kubeconfig" "$@"; }
h() { "$HELM" --kubeconfig "$WORKDIR/kubeconfig" "$@"; }

# Free loopback ports for the private control plane (others may run theirs on the defaults).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
APISERVER_PORT="$(free_port)" ETCD_PORT="$(free_port)" ETCD_PEER_PORT="$(free_port)" KCM_PORT="$(free_port)"
export APISERVER_PORT ETCD_PORT ETCD_PEER_PORT KCM_PORT
t0=$SECONDS
PRINT_USAGE=0 START_KCM=1 "$E2E_LIB_DIR/up.sh" >"$WORK/up.log" 2>&1 \
  || { tail -n 30 "$WORK/up.log" >&2; die "e2e/apiserver/up.sh failed"; }
log "control plane up on 127.0.0.1:$APISERVER_PORT ($((SECONDS - t0)) s)"

CHART="$REPO_ROOT/charts/dynamo-operator"
NS=dynamo-system
log "helm install dynamo-operator $CHART -n $NS"
h install dynamo-operator "$CHART" -n "$NS" --create-namespace --set dashboards.enabled=true \
  --wait=false >"$WORK/helm-install.log" 2>&1 \
  || { cat "$WORK/helm-install.log" >&2; die "helm install failed"; }
wait_for "$WAIT_S" "the CRD to be established" -- \
  k wait --for=condition=Established --timeout=5s crd/dynamoclusters.dynamo.dev
k -n "$NS" get deploy/dynamo-operator sa/dynamo-operator svc/dynamo-operator >/dev/null \
  || die "helm install did not create the Deployment, ServiceAccount and Service"
k get clusterrole/dynamo-operator clusterrolebinding/dynamo-operator >/dev/null || die "no ClusterRole/binding"
[ "$(k -n "$NS" get configmap -l grafana_dashboard=1 -o name | wc -l)" = 2 ] || die "expected 2 dashboard ConfigMaps"
log "ok: helm install (CRD established; Deployment, ServiceAccount, RBAC, Service, 2 dashboard ConfigMaps)"
h upgrade dynamo-operator "$CHART" -n "$NS" --set dashboards.enabled=false --set operator.logLevel=debug \
  >"$WORK/helm-upgrade.log" 2>&1 || { cat "$WORK/helm-upgrade.log" >&2; die "helm upgrade failed"; }
[ "$(k -n "$NS" get configmap -l grafana_dashboard=1 -o name | wc -l)" = 0 ] || die "helm upgrade left the dashboard ConfigMaps"
k get crd dynamoclusters.dynamo.dev -o jsonpath='{.metadata.annotations.helm\.sh/resource-policy}' | grep -qx keep \
  || die "the CRD lacks helm.sh/resource-policy: keep"
log "ok: helm upgrade (revision $(h -n "$NS" history dynamo-operator -o json | jq 'length'))"

# The operator runs on the host as the chart's ServiceAccount.
token="$(k -n "$NS" create token dynamo-operator --duration=1h)"
OP_KUBECONFIG="$WORK/operator.kubeconfig"
cat >"$OP_KUBECONFIG" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $(base64 -w0 <"$WORKDIR/pki/ca.crt")
users:
- name: dynamo-operator
  user:
    token: $token
contexts:
- name: e2e
  context: { cluster: e2e, user: dynamo-operator }
current-context: e2e
KCFG
chmod 600 "$OP_KUBECONFIG"
OP_PORT="$(free_port)"
OP_ARGS=(--http-addr "127.0.0.1:$OP_PORT" --busy-requeue-s 1 --idle-requeue-s 5 --admin-timeout-ms 500)
if [ "$OPERATOR_IMAGE" != none ]; then
  chmod 644 "$OP_KUBECONFIG"   # read by uid 65532 in the container; the work dir is private
  log "docker run $OPERATOR_IMAGE (host network, read-only, no capabilities)"
  docker run -d --name "$OP_CONTAINER" --network host --read-only --cap-drop ALL \
    --security-opt no-new-privileges --stop-timeout 20 \
    -v "$OP_KUBECONFIG:/etc/dynamo/kubeconfig:ro" -e KUBECONFIG=/etc/dynamo/kubeconfig \
    "$OPERATOR_IMAGE" "${OP_ARGS[@]}" >/dev/null
  # Its log, for the failure report and the Forbidden check below.
  setsid docker logs -f "$OP_CONTAINER" >"$OP_LOG" 2>&1 </dev/null &
  OP_PID=$!
else
  KUBECONFIG="$OP_KUBECONFIG" setsid "$OPERATOR_BIN" "${OP_ARGS[@]}" >"$OP_LOG" 2>&1 </dev/null &
  OP_PID=$!
fi
wait_for "$WAIT_S" "the operator to be ready (CRD served)" "$OP_LOG" -- \
  curl -fsS --max-time 2 "http://127.0.0.1:$OP_PORT/readyz"

# Work for the operator: a cluster that scales 3 -> 4 -> 3, and one with a missing Secret.
# kv comes from the chart charts/dynamo-cluster (the API server's CEL rules accept it).
h install kv "$REPO_ROOT/charts/dynamo-cluster" -n dash --create-namespace \
  --set image.tag=dev --set-json 'spec={"replication":{"n":3,"r":2,"w":2}}' >"$WORK/helm-kv.log" 2>&1 \
  || { cat "$WORK/helm-kv.log" >&2; die "helm install of charts/dynamo-cluster failed"; }
k -n dash apply -f - >/dev/null <<'EOF'
apiVersion: dynamo.dev/v1alpha1
kind: DynamoCluster
metadata: {name: broken}
spec:
  replicas: 3
  image: dynamo-rs/node:dev
  clusterTokenSecret: {name: does-not-exist, key: token}
EOF
wait_for "$WAIT_S" "StatefulSet kv with 3 claims" "$OP_LOG" -- \
  bash -c "[ \"\$(\"$K8S_BIN/kubectl\" --kubeconfig '$WORKDIR/kubeconfig' -n dash get pvc -o name | grep -c data-kv-)\" = 3 ]"
k -n dash scale dc/kv --replicas=4 >/dev/null
wait_for "$WAIT_S" "claim data-kv-3" "$OP_LOG" -- k -n dash get pvc data-kv-3
k -n dash scale dc/kv --replicas=3 >/dev/null
wait_for "$WAIT_S" "the operator to delete claim data-kv-3" "$OP_LOG" -- \
  bash -c "! \"$K8S_BIN/kubectl\" --kubeconfig '$WORKDIR/kubeconfig' -n dash get pvc data-kv-3 >/dev/null 2>&1"
wait_for "$WAIT_S" "reconcile errors for the missing Secret" "$OP_LOG" -- \
  bash -c "curl -fsS 'http://127.0.0.1:$OP_PORT/metrics' | grep -q '^dynamo_operator_reconcile_errors_total'"
if grep -qiE 'forbidden' "$OP_LOG"; then
  grep -iE 'forbidden' "$OP_LOG" | head -n 5 >&2
  die "the operator hit a Forbidden error with the chart's RBAC"
fi
log "ok: the operator reconciles as the chart's ServiceAccount (scale 3 -> 4 -> 3, claim deleted; no Forbidden)"

python3 "$E2E_DIR/prometheus_dashboards_test.py" --dynamo "$DYNAMO_BIN" \
  --prometheus "$(command -v prometheus)" --operator-metrics "127.0.0.1:$OP_PORT" "${PY_ARGS[@]}"

h uninstall dynamo-operator -n "$NS" >"$WORK/helm-uninstall.log" 2>&1 \
  || { cat "$WORK/helm-uninstall.log" >&2; die "helm uninstall failed"; }
k get crd dynamoclusters.dynamo.dev >/dev/null || die "helm uninstall deleted the CRD"
k -n dash get dc kv >/dev/null || die "the DynamoCluster is gone after helm uninstall"
log "ok: helm uninstall keeps the CRD and the DynamoClusters"

if [ "$OPERATOR_IMAGE" != none ]; then
  t0="$(date +%s%N)"
  docker stop "$OP_CONTAINER" >/dev/null
  stop_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  code="$(docker inspect -f '{{.State.ExitCode}}' "$OP_CONTAINER")"
  [ "$code" = 0 ] || die "the operator container exited with $code on SIGTERM (137: killed after the grace period)"
  [ "$stop_ms" -lt 10000 ] || die "the operator container took $stop_ms ms to stop"
  log "ok: docker stop of the operator container (SIGTERM): exit 0 after $stop_ms ms"
fi
