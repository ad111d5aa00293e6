#!/usr/bin/env bash
# Checks that the apiserver-only control plane does what operator tests need:
# version, a CRD with a CEL validation rule (and transition rule), server-side
# apply with field managers, StatefulSet -> Pods (controller-manager), and
# ownerReference garbage collection (for a built-in owner and a custom
# resource owner). Brings the control plane up if it is not running and takes
# it down again afterwards if it started it (SELFTEST_KEEP=1 keeps it).
#
# usage: e2e/apiserver/selftest.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

WORKDIR="${WORKDIR:-$REPO_ROOT/e2e/.work/apiserver}"
KUBECONFIG_ADMIN="$WORKDIR/kubeconfig"
k() { "$K8S_BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }

t0=$(date +%s)
STARTED=0
NS="selftest-$$"
ok=0
finish() {
  local rc=$?
  if [ "$ok" != 1 ]; then
    echo "===== apiserver selftest FAILED =====" >&2
    k -n "$NS" get all,configmaps -o wide >&2 2>&1 || true
    tail -n 30 "$WORKDIR/logs/kube-controller-manager.log" >&2 2>/dev/null || true
  fi
  if [ "$STARTED" = 1 ] && [ "${SELFTEST_KEEP:-0}" != 1 ]; then
    "$E2E_LIB_DIR/down.sh" || true
  elif [ -f "$KUBECONFIG_ADMIN" ]; then
    k delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
    k delete crd widgets.e2e.dynamo.dev --wait=false >/dev/null 2>&1 || true
  fi
  log "selftest: $(( $(date +%s) - t0 ))s"
  exit $rc
}
trap finish EXIT

if [ -f "$KUBECONFIG_ADMIN" ] && k get --raw /readyz >/dev/null 2>&1; then
  log "using the running control plane"
else
  STARTED=1
  PRINT_USAGE=0 "$E2E_LIB_DIR/up.sh"
fi

pass() { log "ok: $*"; }

# -- version
server_ver="$(k version -o json | sed -n '/serverVersion/,$ s/.*"gitVersion": "\(.*\)".*/\1/p' | head -1)"
[ "$server_ver" = "$K8S_VERSION" ] || die "server version $server_ver, want $K8S_VERSION"
pass "server version $server_ver"

k create namespace "$NS" >/dev/null
wait_for 30 "serviceaccount $NS/default" -- k -n "$NS" get serviceaccount default

# -- CRD with CEL rules
k apply -f - >/dev/null <<'EOF'
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.e2e.dynamo.dev
spec:
  group: e2e.dynamo.dev
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1alpha1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: ["n", "w", "partitions"]
            x-kubernetes-validations:
            - rule: "self.w <= self.n"
              message: "w must be <= n"
            properties:
              # Quoted: in YAML 1.1 (kubectl's parser) a bare n/y key is a boolean.
              "n": {type: integer}
              "w": {type: integer}
              partitions:
                type: integer
                x-kubernetes-validations:
                - rule: "self == oldSelf"
                  message: "partitions is immutable"
EOF
wait_for 30 "CRD widgets.e2e.dynamo.dev Established" -- \
  k wait --for=condition=Established crd/widgets.e2e.dynamo.dev --timeout=1s
widget() { printf 'apiVersion: e2e.dynamo.dev/v1alpha1\nkind: Widget\nmetadata: {name: %s}\nspec: {"n": %s, "w": %s, partitions: %s}\n' "$@"; }
if out="$(widget bad 3 4 64 | k -n "$NS" apply --server-side -f - 2>&1)"; then
  die "CEL rule w <= n did not reject w=4 n=3"
fi
echo "$out" | grep -q 'w must be <= n' || die "unexpected rejection: $out"
pass "CEL rule rejects w > n"
widget good 3 2 64 | k -n "$NS" apply --server-side --field-manager=e2e -f - >/dev/null
if out="$(widget good 3 2 128 | k -n "$NS" apply --server-side --field-manager=e2e -f - 2>&1)"; then
  die "transition rule did not make partitions immutable"
fi
echo "$out" | grep -q 'partitions is immutable' || die "unexpected rejection: $out"
pass "CEL transition rule keeps partitions immutable"

# -- server-side apply: a second manager conflicts on an owned field
if out="$(widget good 3 1 64 | k -n "$NS" apply --server-side --field-manager=other -f - 2>&1)"; then
  die "server-side apply by another manager did not conflict"
fi
echo "$out" | grep -qi conflict || die "unexpected SSA error: $out"
widget good 3 1 64 | k -n "$NS" apply --server-side --field-manager=other --force-conflicts -f - >/dev/null
[ "$(k -n "$NS" get widget good -o jsonpath='{.spec.w}')" = 1 ] || die "forced apply did not take"
pass "server-side apply conflicts and --force-conflicts"

# -- StatefulSet creates Pods (they stay Pending: no nodes here)
k -n "$NS" apply -f - >/dev/null <<'EOF'
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: sts}
spec:
  serviceName: sts
  replicas: 2
  selector: {matchLabels: {app: sts}}
  template:
    metadata: {labels: {app: sts}}
    spec:
      containers: [{name: c, image: localhost/none:1}]
EOF
wait_for 60 "StatefulSet controller to create pod sts-0" -- k -n "$NS" get pod sts-0
pass "StatefulSet created pod sts-0 ($(k -n "$NS" get pod sts-0 -o jsonpath='{.status.phase}'))"

# -- garbage collection: owner = StatefulSet (built in)
k -n "$NS" delete statefulset sts --wait=false >/dev/null
gone() { ! k -n "$NS" get "$1" >/dev/null 2>&1; }
wait_for 60 "GC to delete pod sts-0 after its StatefulSet" "$WORKDIR/logs/kube-controller-manager.log" -- gone pod/sts-0
pass "ownerReference GC removed the StatefulSet's pods"

# -- garbage collection: owner = custom resource
uid="$(k -n "$NS" get widget good -o jsonpath='{.metadata.uid}')"
k -n "$NS" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: ConfigMap
metadata:
  name: owned
  ownerReferences:
  - apiVersion: e2e.dynamo.dev/v1alpha1
    kind: Widget
    name: good
    uid: $uid
    controller: true
    blockOwnerDeletion: true
data: {k: v}
EOF
k -n "$NS" delete widget good --wait=false >/dev/null
wait_for 60 "GC to delete configmap owned after its Widget" "$WORKDIR/logs/kube-controller-manager.log" -- gone configmap/owned
pass "ownerReference GC removed a ConfigMap owned by a custom resource"

ok=1
log "APISERVER SELFTEST PASSED"
