#!/usr/bin/env bash
# Smoke test of the local cluster. Brings it up (or uses a running one), then
# in a fresh namespace: builds a tiny static Go image (images/agent), imports
# it, runs a one-replica StatefulSet behind a headless Service plus a
# ClusterIP Service, and a client pod; checks the pods become Ready, that
# <pod>.<headless-svc>.<ns>.svc.cluster.local resolves from the client pod to
# the pod's IP, and that the ClusterIP Service answers (from the client pod by
# DNS name, and from the host by IP), that the pod reaches the API server
# through the `kubernetes` Service with TLS verified, and that `kubectl logs`
# works (apiserver -> kubelet). Deletes the namespace, and the cluster
# too if this script started it (SMOKE_KEEP_CLUSTER=1 keeps it).
#
# usage: e2e/local-cluster/smoke.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root

t0=$(date +%s)
STARTED=0
NS="smoke-$$"
ok=0

cluster_up() {
  pid_alive kubelet && pid_alive containerd && [ -f "$KUBECONFIG_ADMIN" ] \
    && kubectl_admin get --raw /readyz >/dev/null 2>&1
}

dump() {
  echo "===== smoke test FAILED: diagnostics =====" >&2
  kubectl_admin -n "$NS" get all,endpointslices -o wide >&2 2>&1 || true
  kubectl_admin -n "$NS" describe pods >&2 2>&1 || true
  kubectl_admin -n "$NS" get events --sort-by=.lastTimestamp >&2 2>&1 || true
  local f
  for f in "$LOGS"/kubelet.log "$LOGS"/containerd.log "$LOGS"/coredns.log "$LOGS"/kube-proxy.log; do
    [ -f "$f" ] && { echo "----- tail $f -----" >&2; tail -n 25 "$f" >&2; }
  done
  # Keep every log: down.sh removes WORKDIR.
  local art="${SMOKE_ARTIFACTS:-$REPO_ROOT/e2e/.work/artifacts/smoke-$(date +%Y%m%d-%H%M%S)}"
  mkdir -p "$art"
  cp -r "$LOGS" "$art/node-logs" 2>/dev/null || true
  cp -r "$APISERVER_WORKDIR/logs" "$art/control-plane-logs" 2>/dev/null || true
  kubectl_admin get events -A --sort-by=.lastTimestamp >"$art/events.txt" 2>&1 || true
  echo "logs saved in $art" >&2
}

cleanup() {
  local rc=$?
  if [ "$ok" != 1 ]; then dump; fi
  if [ "$STARTED" = 1 ] && [ "${SMOKE_KEEP_CLUSTER:-0}" != 1 ]; then
    "$LC_DIR/down.sh" || true
  elif [ -f "$KUBECONFIG_ADMIN" ]; then
    kubectl_admin delete namespace "$NS" --wait=true --timeout=120s >/dev/null 2>&1 || true
  fi
  log "smoke test total: $(( $(date +%s) - t0 ))s"
  exit $rc
}
trap cleanup EXIT

if cluster_up; then
  log "using the running local cluster"
else
  STARTED=1
  "$LC_DIR/up.sh"
fi
t_up=$(date +%s)

# --------------------------------------------------------- the test image
setup_go
AGENT_SRC="$LC_DIR/images/agent"
tag="$(cat "$AGENT_SRC/main.go" "$AGENT_SRC/go.mod" "$LC_DIR/mkimage.sh" | sha256sum | cut -c1-12)"
IMAGE="localhost/dynamo-e2e/agent:$tag"
AGENT_TAR="$DYNAMO_E2E_CACHE/images/agent-$tag.tar"
if [ ! -f "$AGENT_TAR" ]; then
  log "building test image $IMAGE"
  tmpd="$(mktemp -d)"
  (cd "$AGENT_SRC" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$tmpd/agent" .)
  mkdir -p "$(dirname "$AGENT_TAR")"
  "$LC_DIR/mkimage.sh" "$IMAGE" "$AGENT_TAR" /agent "$tmpd/agent:/agent"
  rm -rf "$tmpd"
fi
ctr_k8s images ls -q | grep -qx "$IMAGE" || "$LC_DIR/load-image.sh" "$AGENT_TAR" >/dev/null 2>&1

# ------------------------------------------------------------- workloads
kubectl_admin create namespace "$NS" >/dev/null
wait_for 30 "serviceaccount $NS/default" -- kubectl_admin -n "$NS" get serviceaccount default
kubectl_admin -n "$NS" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Service
metadata:
  name: web-clusterip
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: web
spec:
  serviceName: web
  replicas: 1
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: agent
        image: $IMAGE
        imagePullPolicy: Never
        args: [serve, ":8080"]
        ports: [{containerPort: 8080, name: http}]
        readinessProbe:
          httpGet: {path: /healthz, port: 8080}
          periodSeconds: 1
---
apiVersion: v1
kind: Pod
metadata:
  name: client
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: agent
    image: $IMAGE
    imagePullPolicy: Never
    args: [serve, ":9090"]
    env:
    # Go's TLS stack trusts this file: the cluster CA, mounted by kubelet.
    - {name: SSL_CERT_FILE, value: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt}
EOF

wait_for 60 "StatefulSet controller to create pod web-0" -- kubectl_admin -n "$NS" get pod web-0
kubectl_admin -n "$NS" wait --for=condition=Ready pod/web-0 pod/client --timeout=120s >/dev/null \
  || die "pods did not become Ready within 120s"
t_ready=$(date +%s)
log "pods Ready in $((t_ready - t_up))s"

web_ip="$(kubectl_admin -n "$NS" get pod web-0 -o jsonpath='{.status.podIP}')"
fqdn="web-0.web.$NS.svc.$CLUSTER_DOMAIN"

# ------------------------------------------------------------------- DNS
dns_ok() {
  local got
  got="$(kubectl_admin -n "$NS" exec client -- /agent lookup "$fqdn" 2>/dev/null)" || return 1
  [ "$got" = "$web_ip" ]
}
wait_for 60 "$fqdn to resolve to $web_ip from pod client" "$LOGS/coredns.log" -- dns_ok
log "DNS ok: $fqdn -> $web_ip (from pod client)"

# ------------------------------------------------------- ClusterIP Service
svc_ip="$(kubectl_admin -n "$NS" get svc web-clusterip -o jsonpath='{.spec.clusterIP}')"
svc_ok_pod() {
  kubectl_admin -n "$NS" exec client -- /agent get "http://web-clusterip.$NS.svc.$CLUSTER_DOMAIN/" 2>/dev/null \
    | grep -q 'hello from web-0'
}
wait_for 60 "Service web-clusterip ($svc_ip:80) to answer from pod client" "$LOGS/kube-proxy.log" -- svc_ok_pod
log "ClusterIP ok from pod: http://web-clusterip.$NS.svc.$CLUSTER_DOMAIN/ -> web-0"
wait_for 30 "Service web-clusterip ($svc_ip:80) to answer from the host" "$LOGS/kube-proxy.log" -- \
  bash -c "curl -fsS --max-time 3 http://$svc_ip/ | grep -q 'hello from web-0'"
log "ClusterIP ok from host: http://$svc_ip/ -> web-0"

# In-cluster API access as an operator pod does it: the `kubernetes` Service
# (ClusterIP, DNAT by kube-proxy to the apiserver on the bridge), TLS checked
# against the service-account CA.
api_ok() {
  kubectl_admin -n "$NS" exec client -- /agent get "https://kubernetes.default.svc.$CLUSTER_DOMAIN/readyz" 2>/dev/null | grep -qx ok
}
wait_for 30 "https://kubernetes.default.svc.$CLUSTER_DOMAIN/readyz from pod client" "$LOGS/kube-proxy.log" -- api_ok
log "in-cluster API ok: https://kubernetes.default.svc.$CLUSTER_DOMAIN (TLS verified with the service-account CA)"

# kubectl logs goes apiserver -> kubelet: checks that path too.
kubectl_admin -n "$NS" logs web-0 | grep -q 'serving on :8080' || die "kubectl logs web-0 did not show the server's output"
log "kubectl logs ok"

ok=1
log "SMOKE TEST PASSED: cluster $((t_up - t0))s, pods ready $((t_ready - t_up))s, checks $(( $(date +%s) - t_ready ))s"
