# shellcheck shell=bash
# shellcheck disable=SC2034  # variables are used by the scripts that source this
# Settings shared by the local-cluster scripts. Sourced, not executed.
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/../apiserver" && pwd)/lib.sh"

LC_DIR="$E2E_DIR/local-cluster"
WORKDIR="${WORKDIR:-$REPO_ROOT/e2e/.work/local-cluster}"
NODE_NAME="${NODE_NAME:-dynamo-local}"
BRIDGE="${BRIDGE:-dynbr0}"
POD_CIDR="${POD_CIDR:-10.244.0.0/24}"
NODE_IP="${NODE_IP:-10.244.0.1}"          # bridge gateway: node IP, apiserver, kubelet and DNS
SERVICE_CIDR="${SERVICE_CIDR:-10.96.0.0/16}"
CLUSTER_DOMAIN="${CLUSTER_DOMAIN:-cluster.local}"
# Ports differ from the apiserver-only defaults so both modes can run at once.
APISERVER_PORT="${APISERVER_PORT:-16443}"
ETCD_PORT="${ETCD_PORT:-12381}"
ETCD_PEER_PORT="${ETCD_PEER_PORT:-12382}"
KCM_PORT="${KCM_PORT:-10357}"
SCHEDULER_PORT="${SCHEDULER_PORT:-10359}"
COREDNS_HEALTH_PORT="${COREDNS_HEALTH_PORT:-18080}"
COREDNS_READY_PORT="${COREDNS_READY_PORT:-18181}"
PAUSE_IMAGE="${PAUSE_IMAGE:-localhost/dynamo-e2e/pause:1}"

CTRD_DIR="$WORKDIR/containerd"
CTRD_SOCK="$CTRD_DIR/containerd.sock"
APISERVER_WORKDIR="$WORKDIR/apiserver"
KUBECONFIG_ADMIN="$APISERVER_WORKDIR/kubeconfig"
PKI="$APISERVER_WORKDIR/pki"
LOGS="$WORKDIR/logs"

ctr_k8s() { ctr --address "$CTRD_SOCK" --namespace k8s.io "$@"; }
kubectl_admin() { "$K8S_BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }
