#!/usr/bin/env bash
# Tests the operator against a real Kubernetes control plane without nodes
# (etcd + kube-apiserver + kube-controller-manager from e2e/apiserver/up.sh):
# the generated CRD, admission (schema and CEL rules), and the operator binary
# creating objects, reporting status and cleaning up.
#
# usage: e2e/apiserver/operator-test.sh
# Uses a running control plane (same WORKDIR) or starts one and stops it
# afterwards (OPERATOR_TEST_KEEP=1 keeps it). Environment: WORKDIR (default
# e2e/.work/apiserver), CARGO_PACKAGES (default -p dynamo-operator; scripts/test.sh passes
# --workspace to reuse its build), CARGO_FLAGS (extra flags for cargo test).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

WORKDIR="${WORKDIR:-$REPO_ROOT/e2e/.work/apiserver}"
KUBECONFIG_ADMIN="$WORKDIR/kubeconfig"
k() { "$K8S_BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }

t0=$(date +%s)
STARTED=0
finish() {
  local rc=$?
  if [ "$rc" != 0 ] && [ -f "$KUBECONFIG_ADMIN" ]; then
    echo "===== operator apiserver test FAILED: cluster state =====" >&2
    k get dynamoclusters,statefulsets,pods,pvc,services,pdb -A -o wide >&2 2>&1 || true
    k get events -A --sort-by=.metadata.creationTimestamp >&2 2>&1 | tail -n 60 >&2 || true
  fi
  if [ "$STARTED" = 1 ] && [ "${OPERATOR_TEST_KEEP:-0}" != 1 ]; then
    "$E2E_LIB_DIR/down.sh" || true
  fi
  log "operator apiserver test: $(( $(date +%s) - t0 ))s"
  exit "$rc"
}
trap finish EXIT

if [ -f "$KUBECONFIG_ADMIN" ] && k get --raw /readyz >/dev/null 2>&1; then
  log "using the running control plane"
else
  STARTED=1
  PRINT_USAGE=0 "$E2E_LIB_DIR/up.sh"
fi

cd "$REPO_ROOT"
# The CRD and the example manifest as users apply them: through kubectl, whose YAML 1.1
# parser turns a bare `n:` key into `false`.
k apply --server-side -f crds/dynamocluster.yaml >/dev/null
# Retried: kubectl wait fails at once ("accessor error: <nil>") while a CRD created a moment
# ago has no status conditions yet, instead of waiting for them.
wait_for 60 "the CRD to be established" -- \
  k wait --for=condition=Established --timeout=5s crd/dynamoclusters.dynamo.dev
n_type="$(k get crd dynamoclusters.dynamo.dev -o jsonpath='{.spec.versions[0].schema.openAPIV3Schema.properties.spec.properties.replication.properties.n.type}')"
[ "$n_type" = integer ] || { echo "replication.n did not survive kubectl apply of the CRD (got '$n_type')" >&2; exit 1; }
k apply --dry-run=server -f e2e/manifests/dynamocluster.yaml >/dev/null
log "ok: CRD and example manifest accepted through kubectl"
# The operator runs as its ServiceAccount with the shipped RBAC, not as admin.
k apply -f operator/deploy/rbac.yaml >/dev/null
token="$(k -n dynamo-system create token dynamo-operator --duration=2h)"
OPERATOR_KUBECONFIG="$WORKDIR/operator.kubeconfig"
cat >"$OPERATOR_KUBECONFIG" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: $(k config view --raw -o jsonpath='{.clusters[0].cluster.server}')
    certificate-authority-data: $(k config view --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')
users:
- name: dynamo-operator
  user:
    token: $token
contexts:
- name: e2e
  context: { cluster: e2e, user: dynamo-operator }
current-context: e2e
KCFG
chmod 600 "$OPERATOR_KUBECONFIG"

# shellcheck disable=SC2086
KUBECONFIG="$KUBECONFIG_ADMIN" OPERATOR_KUBECONFIG="$OPERATOR_KUBECONFIG" DYNAMO_E2E_APISERVER=1 \
  cargo test ${CARGO_PACKAGES:--p dynamo-operator} ${CARGO_FLAGS:-} --test apiserver -- --nocapture --test-threads=1
