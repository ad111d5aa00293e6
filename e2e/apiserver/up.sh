#!/usr/bin/env bash
# Starts a real Kubernetes control plane without nodes on this machine:
# etcd + kube-apiserver + kube-controller-manager, on 127.0.0.1, with
# generated certificates. For testing the operator against a real API server
# (objects, validation, CEL rules, server-side apply, ownerReference GC,
# StatefulSets creating Pods, which stay Pending: there is no kubelet here).
#
# usage: e2e/apiserver/up.sh
# Environment (all optional):
#   WORKDIR              state, logs, certs, kubeconfig (default e2e/.work/apiserver)
#   APISERVER_BIND       address kube-apiserver listens on     (default 127.0.0.1)
#   APISERVER_ADVERTISE  address published in the kubernetes Service (default APISERVER_BIND)
#   APISERVER_PORT       (default 16443)
#   ETCD_PORT, ETCD_PEER_PORT (default 12379, 12380)
#   KCM_PORT             kube-controller-manager secure port (default 10257)
#   SERVICE_CIDR         (default 10.96.0.0/16)
#   EXTRA_SANS           extra serving-cert SANs, comma separated (IP:x or DNS:x)
#   START_KCM            1 to start kube-controller-manager (default 1)
#   APISERVER_EXTRA_ARGS extra kube-apiserver flags, e.g. "--feature-gates=Foo=true"
#   KCM_EXTRA_ARGS       extra kube-controller-manager flags
#   READY_TIMEOUT        seconds to wait for readiness (default 120)
#   PRINT_USAGE          0 to skip the usage hints at the end
# Prints how to use it; the admin kubeconfig is $WORKDIR/kubeconfig.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

WORKDIR="${WORKDIR:-$REPO_ROOT/e2e/.work/apiserver}"
APISERVER_BIND="${APISERVER_BIND:-127.0.0.1}"
APISERVER_ADVERTISE="${APISERVER_ADVERTISE:-$APISERVER_BIND}"
APISERVER_PORT="${APISERVER_PORT:-16443}"
ETCD_PORT="${ETCD_PORT:-12379}"
ETCD_PEER_PORT="${ETCD_PEER_PORT:-12380}"
KCM_PORT="${KCM_PORT:-10257}"
SERVICE_CIDR="${SERVICE_CIDR:-10.96.0.0/16}"
EXTRA_SANS="${EXTRA_SANS:-}"
START_KCM="${START_KCM:-1}"
READY_TIMEOUT="${READY_TIMEOUT:-120}"

start_time=$(date +%s)
for c in openssl curl; do command -v "$c" >/dev/null 2>&1 || apt_install "$c"; done
"$E2E_LIB_DIR/build.sh" k8s etcd

mkdir -p "$WORKDIR"/{pki,logs,pids,etcd}
WORKDIR="$(cd "$WORKDIR" && pwd)"
PKI="$WORKDIR/pki"
LOGS="$WORKDIR/logs"
KUBECTL="$K8S_BIN/kubectl"
KUBECONFIG_ADMIN="$WORKDIR/kubeconfig"
SERVER="https://$APISERVER_BIND:$APISERVER_PORT"
[ "$APISERVER_BIND" = 0.0.0.0 ] && SERVER="https://127.0.0.1:$APISERVER_PORT"

# First IP of the service range: the `kubernetes` Service's ClusterIP.
svc_ip() {
  local net="${SERVICE_CIDR%/*}" a b c d
  IFS=. read -r a b c d <<<"$net"
  echo "$a.$b.$c.$((d + 1))"
}

# ------------------------------------------------------------------ certs
gen_ca "$PKI"
sans="IP:127.0.0.1,IP:$(svc_ip),DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
[ "$APISERVER_BIND" != 127.0.0.1 ] && [ "$APISERVER_BIND" != 0.0.0.0 ] && sans="$sans,IP:$APISERVER_BIND"
[ "$APISERVER_ADVERTISE" != "$APISERVER_BIND" ] && sans="$sans,IP:$APISERVER_ADVERTISE"
[ -n "$EXTRA_SANS" ] && sans="$sans,$EXTRA_SANS"
IFS=, read -r -a san_list <<<"$sans"
gen_cert "$PKI" apiserver kube-apiserver "" server "${san_list[@]}"
gen_cert "$PKI" apiserver-kubelet-client kube-apiserver-kubelet-client system:masters client
gen_cert "$PKI" admin kubernetes-admin system:masters client
gen_cert "$PKI" controller-manager system:kube-controller-manager "" client
# Front proxy (aggregation layer): also lets components that delegate
# authentication read a complete extension-apiserver-authentication ConfigMap.
gen_ca "$PKI" front-proxy-ca
CA_NAME=front-proxy-ca gen_cert "$PKI" front-proxy-client front-proxy-client "" client
gen_cert "$PKI" kcm-serving kube-controller-manager "" server IP:127.0.0.1 DNS:localhost
if [ ! -f "$PKI/sa.key" ]; then
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
fi
write_kubeconfig "$KUBECONFIG_ADMIN" "$SERVER" "$PKI/ca.crt" "$PKI/admin.crt" "$PKI/admin.key" admin
write_kubeconfig "$WORKDIR/controller-manager.kubeconfig" "$SERVER" "$PKI/ca.crt" \
  "$PKI/controller-manager.crt" "$PKI/controller-manager.key" system:kube-controller-manager

kubectl_admin() { "$KUBECTL" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }

check_port_free() { # NAME HOST PORT
  if ! pid_alive "$1" && port_in_use "$2" "$3"; then
    die "$2:$3 is already in use by another process (needed by $1); set the matching *_PORT variable"
  fi
}
check_port_free etcd 127.0.0.1 "$ETCD_PORT"
check_port_free etcd 127.0.0.1 "$ETCD_PEER_PORT"
api_host="${SERVER#https://}"; api_host="${api_host%:*}"
check_port_free kube-apiserver "$api_host" "$APISERVER_PORT"
[ "$START_KCM" = 1 ] && check_port_free kube-controller-manager 127.0.0.1 "$KCM_PORT"

# ------------------------------------------------------------------- etcd
start_bg etcd "$LOGS/etcd.log" "$ETCD_BIN/etcd" \
  --name=dynamo-e2e \
  --data-dir="$WORKDIR/etcd" \
  --listen-client-urls="http://127.0.0.1:$ETCD_PORT" \
  --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster="dynamo-e2e=http://127.0.0.1:$ETCD_PEER_PORT" \
  --unsafe-no-fsync=true \
  --log-level=warn
wait_for 60 "etcd health on 127.0.0.1:$ETCD_PORT" "$LOGS/etcd.log" -- \
  bash -c "curl -fsS http://127.0.0.1:$ETCD_PORT/health | grep -q '\"health\":\"true\"'"

# --------------------------------------------------------- kube-apiserver
# A loopback advertise address is not a valid Endpoints IP: then do not
# reconcile the `kubernetes` Service's endpoints (nothing in-cluster needs them).
reconciler=lease
case "$APISERVER_ADVERTISE" in 127.*) reconciler=none ;; esac
# shellcheck disable=SC2086
start_bg kube-apiserver "$LOGS/kube-apiserver.log" "$K8S_BIN/kube-apiserver" \
  --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
  --bind-address="$APISERVER_BIND" \
  --advertise-address="$APISERVER_ADVERTISE" \
  --endpoint-reconciler-type="$reconciler" \
  --secure-port="$APISERVER_PORT" \
  --service-cluster-ip-range="$SERVICE_CIDR" \
  --tls-cert-file="$PKI/apiserver.crt" \
  --tls-private-key-file="$PKI/apiserver.key" \
  --client-ca-file="$PKI/ca.crt" \
  --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
  --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
  --kubelet-preferred-address-types=InternalIP,Hostname \
  --service-account-issuer="https://kubernetes.default.svc.cluster.local" \
  --service-account-key-file="$PKI/sa.pub" \
  --service-account-signing-key-file="$PKI/sa.key" \
  --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" \
  --requestheader-allowed-names=front-proxy-client \
  --requestheader-username-headers=X-Remote-User \
  --requestheader-group-headers=X-Remote-Group \
  --requestheader-extra-headers-prefix=X-Remote-Extra- \
  --proxy-client-cert-file="$PKI/front-proxy-client.crt" \
  --proxy-client-key-file="$PKI/front-proxy-client.key" \
  --authorization-mode=Node,RBAC \
  --enable-admission-plugins=NodeRestriction \
  --allow-privileged=true \
  --profiling=false \
  --v=1 \
  ${APISERVER_EXTRA_ARGS:-}
wait_for "$READY_TIMEOUT" "kube-apiserver /readyz at $SERVER" "$LOGS/kube-apiserver.log" "$LOGS/etcd.log" -- \
  kubectl_admin get --raw /readyz

# ------------------------------------------------ kube-controller-manager
if [ "$START_KCM" = 1 ]; then
  # shellcheck disable=SC2086
  start_bg kube-controller-manager "$LOGS/kube-controller-manager.log" "$K8S_BIN/kube-controller-manager" \
    --kubeconfig="$WORKDIR/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$WORKDIR/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$WORKDIR/controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 \
    --secure-port="$KCM_PORT" \
    --tls-cert-file="$PKI/kcm-serving.crt" \
    --tls-private-key-file="$PKI/kcm-serving.key" \
    --client-ca-file="$PKI/ca.crt" \
    --service-account-private-key-file="$PKI/sa.key" \
    --root-ca-file="$PKI/ca.crt" \
    --cluster-signing-cert-file="$PKI/ca.crt" \
    --cluster-signing-key-file="$PKI/ca.key" \
    --use-service-account-credentials=true \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --controllers='*,bootstrapsigner,tokencleaner' \
    --leader-elect=false \
    --v=1 \
    ${KCM_EXTRA_ARGS:-}
  wait_for 60 "kube-controller-manager /healthz on 127.0.0.1:$KCM_PORT" "$LOGS/kube-controller-manager.log" -- \
    curl -fsSk "https://127.0.0.1:$KCM_PORT/healthz"
  # The service-account controller creates default/default; Pods are
  # rejected until it exists, so this is the real "controllers work" signal.
  wait_for 60 "serviceaccount default/default (created by kube-controller-manager)" "$LOGS/kube-controller-manager.log" -- \
    kubectl_admin -n default get serviceaccount default
fi

write_file "$WORKDIR/env" <<EOF
export KUBECONFIG="$KUBECONFIG_ADMIN"
export PATH="$K8S_BIN:\$PATH"
EOF

log "control plane ready in $(( $(date +%s) - start_time ))s: $SERVER ($("$KUBECTL" version --client -o json | sed -n 's/.*"gitVersion": "\(.*\)".*/\1/p' | head -1))"
[ "${PRINT_USAGE:-1}" = 1 ] && cat >&2 <<EOF

  kubeconfig: $KUBECONFIG_ADMIN   (user kubernetes-admin, group system:masters)
  use it:     source $WORKDIR/env && kubectl get --raw /readyz
       or:    $KUBECTL --kubeconfig $KUBECONFIG_ADMIN get ns
  logs:       $LOGS/{etcd,kube-apiserver,kube-controller-manager}.log
  stop:       $E2E_LIB_DIR/down.sh   (same WORKDIR)

EOF
exit 0
