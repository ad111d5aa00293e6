#!/usr/bin/env bash
# Brings up a real single-node Kubernetes v1.34 cluster on this machine, with
# real pods: etcd + kube-apiserver + kube-controller-manager (from
# e2e/apiserver/up.sh), kube-scheduler, containerd (Debian, its own config,
# socket and state under WORKDIR), runc, CNI bridge/host-local/loopback/portmap
# on a private bridge, kubelet (cgroupfs driver), kube-proxy (iptables mode) and
# CoreDNS as a host process on the bridge gateway. Idempotent: running it again
# starts only what is not running.
#
# usage: e2e/local-cluster/up.sh
# Environment (optional): WORKDIR (default e2e/.work/local-cluster), NODE_NAME,
#   BRIDGE (dynbr0), POD_CIDR (10.244.0.0/24), NODE_IP (10.244.0.1),
#   SERVICE_CIDR (10.96.0.0/16), READY_TIMEOUT (180), SNAPSHOTTER (auto)
# Afterwards: source $WORKDIR/env; kubectl get nodes
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need_root
start_time=$(date +%s)
READY_TIMEOUT="${READY_TIMEOUT:-180}"

"$LC_DIR/supported.sh" -q || die "this machine cannot run the local cluster (see above)"

apt_install containerd runc containernetworking-plugins iptables conntrack gcc libc6-dev
"$E2E_LIB_DIR/build.sh" k8s etcd coredns

mkdir -p "$WORKDIR"/{logs,pids,cni/net.d,cni/ipam,kubelet,pod-logs,config} "$CTRD_DIR"
WORKDIR="$(cd "$WORKDIR" && pwd)"
CNI_BIN_DIR=/usr/lib/cni
[ -x "$CNI_BIN_DIR/bridge" ] || die "CNI plugins not found in $CNI_BIN_DIR"
CFG="$WORKDIR/config"

# ------------------------------------------------------------ snapshotter
if [ -z "${SNAPSHOTTER:-}" ]; then
  SNAPSHOTTER=native
  t="$(mktemp -d "$WORKDIR/.ovl.XXXXXX")"; mkdir -p "$t"/{l,u,w,m}
  if mount -t overlay overlay -o "lowerdir=$t/l,upperdir=$t/u,workdir=$t/w" "$t/m" 2>/dev/null; then
    umount "$t/m"; SNAPSHOTTER=overlayfs
  fi
  rm -rf "$t"
fi
echo "$SNAPSHOTTER" >"$WORKDIR/snapshotter"

# ------------------------------------------------------------ pause image
PAUSE_SRC="$LC_DIR/images/pause.c"
PAUSE_TAR="$DYNAMO_E2E_CACHE/images/pause-$(cat "$PAUSE_SRC" "$LC_DIR/mkimage.sh" | sha256sum | cut -c1-16).tar"
if [ ! -f "$PAUSE_TAR" ]; then
  log "building pause image $PAUSE_IMAGE"
  mkdir -p "$(dirname "$PAUSE_TAR")"
  tmpd="$(mktemp -d)"
  gcc -static -Os -s -o "$tmpd/pause" "$PAUSE_SRC" || die "cannot build pause (gcc -static; needs libc6-dev)"
  "$LC_DIR/mkimage.sh" "$PAUSE_IMAGE" "$PAUSE_TAR" /pause "$tmpd/pause:/pause"
  rm -rf "$tmpd"
fi

# --------------------------------------------------------- host network
SYSCTLS=(net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1)
[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] || modprobe br_netfilter 2>/dev/null || true
if [ ! -f "$WORKDIR/sysctl.saved" ]; then
  for kv in "${SYSCTLS[@]}"; do k="${kv%%=*}"; echo "$k=$(sysctl -n "$k")"; done >"$WORKDIR/sysctl.saved.tmp"
  mv "$WORKDIR/sysctl.saved.tmp" "$WORKDIR/sysctl.saved"
fi
for kv in "${SYSCTLS[@]}"; do sysctl -qw "$kv" || die "sysctl -w $kv failed"; done

if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
  log "creating bridge $BRIDGE ($NODE_IP/${POD_CIDR#*/})"
  ip link add "$BRIDGE" type bridge
fi
ip addr show dev "$BRIDGE" | grep -q "inet $NODE_IP/" || ip addr add "$NODE_IP/${POD_CIDR#*/}" dev "$BRIDGE"
ip link set "$BRIDGE" up
# Docker (if running) sets the FORWARD policy to DROP; let pod traffic through.
for rule in "-i $BRIDGE" "-o $BRIDGE"; do
  # shellcheck disable=SC2086
  iptables -w 5 -C FORWARD $rule -m comment --comment dynamo-e2e -j ACCEPT 2>/dev/null \
    || iptables -w 5 -I FORWARD 1 $rule -m comment --comment dynamo-e2e -j ACCEPT
done

write_file "$WORKDIR/cni/net.d/10-dynamo-e2e.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "dynamo-e2e",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$WORKDIR/cni/ipam",
        "ranges": [[{ "subnet": "$POD_CIDR", "gateway": "$NODE_IP" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
EOF

# --------------------------------------------------------- control plane
APISERVER="https://$NODE_IP:$APISERVER_PORT"
WORKDIR="$APISERVER_WORKDIR" APISERVER_BIND="$NODE_IP" APISERVER_ADVERTISE="$NODE_IP" \
  APISERVER_PORT="$APISERVER_PORT" ETCD_PORT="$ETCD_PORT" ETCD_PEER_PORT="$ETCD_PEER_PORT" \
  KCM_PORT="$KCM_PORT" SERVICE_CIDR="$SERVICE_CIDR" EXTRA_SANS="DNS:$NODE_NAME" \
  KCM_EXTRA_ARGS="--cluster-cidr=$POD_CIDR ${KCM_EXTRA_ARGS:-}" \
  PRINT_USAGE=0 "$E2E_LIB_DIR/up.sh" || die "control plane failed to start (logs in $APISERVER_WORKDIR/logs)"

gen_cert "$PKI" kubelet-client "system:node:$NODE_NAME" system:nodes client
gen_cert "$PKI" kubelet-serving "$NODE_NAME" "" server "IP:$NODE_IP" "DNS:$NODE_NAME" IP:127.0.0.1
gen_cert "$PKI" kube-proxy system:kube-proxy "" client
gen_cert "$PKI" kube-scheduler system:kube-scheduler "" client
gen_cert "$PKI" coredns dynamo-e2e:coredns "" client
for c in kubelet:kubelet-client kube-proxy:kube-proxy kube-scheduler:kube-scheduler coredns:coredns; do
  write_kubeconfig "$CFG/${c%%:*}.kubeconfig" "$APISERVER" "$PKI/ca.crt" "$PKI/${c#*:}.crt" "$PKI/${c#*:}.key" "${c%%:*}"
done

# ------------------------------------------------------------- containerd
# CAP_SYS_RESOURCE (bit 24) missing from our capabilities: some sandboxes and
# VMs drop it. Then negative oom_score_adj values and rlimit raises fail.
cap_eff=$((16#$(awk '/^CapEff/ {print $2}' /proc/self/status)))
if (( (cap_eff >> 24) & 1 )); then RESTRICT_OOM=false; OOM_ADJ=-999; else
  RESTRICT_OOM=true; OOM_ADJ=0
  log "no CAP_SYS_RESOURCE: OOM score adjustments disabled (containerd restrict_oom_score_adj, kubelet/kube-proxy oomScoreAdj 0)"
fi
write_file "$CFG/containerd.toml" <<EOF
# Generated by e2e/local-cluster/up.sh. A private containerd: its own root,
# state and socket, so it never meets Docker's or a system containerd.
version = 2
root = "$CTRD_DIR/root"
state = "$CTRD_DIR/state"
# No OOM-score changes: this machine may lack CAP_SYS_RESOURCE (see below).
oom_score = 0

[grpc]
  address = "$CTRD_SOCK"
[ttrpc]
  address = "$CTRD_SOCK.ttrpc"
[debug]
  address = ""
  level = "info"
[metrics]
  address = ""

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$CTRD_DIR/opt"
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "$PAUSE_IMAGE"
    netns_mounts_under_state_dir = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    enable_selinux = false
    tolerate_missing_hugetlb_controller = true
    # Without CAP_SYS_RESOURCE, no process may lower its oom_score_adj, so runc
    # fails on the pause container's -998 ("can't get final child's PID from
    # pipe: EOF"). This clamps requested scores to containerd's own (0).
    restrict_oom_score_adj = $RESTRICT_OOM
    max_container_log_line_size = 16384
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "$SNAPSHOTTER"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          BinaryName = "$(command -v runc)"
          Root = "$CTRD_DIR/runc"
          SystemdCgroup = false
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "$CNI_BIN_DIR"
      conf_dir = "$WORKDIR/cni/net.d"
      max_conf_num = 1
EOF
start_bg containerd "$LOGS/containerd.log" containerd --config "$CFG/containerd.toml"
wait_for 60 "containerd on $CTRD_SOCK" "$LOGS/containerd.log" -- ctr --address "$CTRD_SOCK" version

if ! ctr_k8s images ls -q | grep -qx "$PAUSE_IMAGE"; then
  log "importing $PAUSE_IMAGE"
  ctr_k8s images import --snapshotter "$SNAPSHOTTER" "$PAUSE_TAR" >/dev/null
fi

# --------------------------------------------------------- kube-scheduler
write_file "$CFG/scheduler.yaml" <<EOF
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: $CFG/kube-scheduler.kubeconfig
leaderElection:
  leaderElect: false
EOF
start_bg kube-scheduler "$LOGS/kube-scheduler.log" "$K8S_BIN/kube-scheduler" \
  --config="$CFG/scheduler.yaml" \
  --authentication-kubeconfig="$CFG/kube-scheduler.kubeconfig" \
  --authorization-kubeconfig="$CFG/kube-scheduler.kubeconfig" \
  --bind-address=127.0.0.1 --secure-port="$SCHEDULER_PORT" --v=1
wait_for 60 "kube-scheduler /healthz" "$LOGS/kube-scheduler.log" -- \
  curl -fsSk "https://127.0.0.1:$SCHEDULER_PORT/healthz"

# ---------------------------------------------------------------- kubelet
echo "nameserver $NODE_IP" | write_file "$CFG/resolv.conf"
write_file "$CFG/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failCgroupV1: false
oomScoreAdj: $OOM_ADJ
failSwapOn: false
containerRuntimeEndpoint: unix://$CTRD_SOCK
imageServiceEndpoint: unix://$CTRD_SOCK
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: false
  x509:
    clientCAFile: $PKI/ca.crt
authorization:
  mode: AlwaysAllow
clusterDNS: [$NODE_IP]
clusterDomain: $CLUSTER_DOMAIN
resolvConf: $CFG/resolv.conf
podLogsDir: $WORKDIR/pod-logs
rotateCertificates: false
serverTLSBootstrap: false
registerNode: true
maxPods: 110
# Keep imported images (there is no registry to pull them back from).
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
  imagefs.inodesFree: 1%
evictionPressureTransitionPeriod: 10s
nodeStatusReportFrequency: 10s
syncFrequency: 10s
EOF
[ -e /var/lib/kubelet ] || touch "$WORKDIR/created-var-lib-kubelet"
start_bg kubelet "$LOGS/kubelet.log" "$K8S_BIN/kubelet" \
  --config="$CFG/kubelet.yaml" \
  --kubeconfig="$CFG/kubelet.kubeconfig" \
  --root-dir="$WORKDIR/kubelet" \
  --hostname-override="$NODE_NAME" \
  --node-ip="$NODE_IP" \
  --pod-infra-container-image="$PAUSE_IMAGE" \
  --v=1
node_ready() {
  [ "$(kubectl_admin get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}
wait_for "$READY_TIMEOUT" "node $NODE_NAME Ready" "$LOGS/kubelet.log" "$LOGS/containerd.log" -- node_ready

# ------------------------------------------------------------- kube-proxy
write_file "$CFG/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $CFG/kube-proxy.kubeconfig
mode: iptables
oomScoreAdj: $OOM_ADJ
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
clusterCIDR: $POD_CIDR
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["$NODE_IP/32"]
iptables:
  localhostNodePorts: false
  masqueradeAll: false
conntrack:
  # 0: leave the host's conntrack sysctls alone.
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
start_bg kube-proxy "$LOGS/kube-proxy.log" "$K8S_BIN/kube-proxy" --config="$CFG/kube-proxy.yaml" --v=1
wait_for 60 "kube-proxy /healthz (first iptables sync)" "$LOGS/kube-proxy.log" -- \
  curl -fsS "http://127.0.0.1:10256/healthz"

# ---------------------------------------------------------------- CoreDNS
kubectl_admin apply -f - >/dev/null <<'EOF'
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: dynamo-e2e:coredns
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: dynamo-e2e:coredns
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: dynamo-e2e:coredns
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: dynamo-e2e:coredns
EOF
write_file "$CFG/Corefile" <<EOF
$CLUSTER_DOMAIN:53 in-addr.arpa:53 ip6.arpa:53 {
    bind $NODE_IP
    errors
    health 127.0.0.1:$COREDNS_HEALTH_PORT
    ready 127.0.0.1:$COREDNS_READY_PORT
    kubernetes $CLUSTER_DOMAIN in-addr.arpa ip6.arpa {
        kubeconfig $CFG/coredns.kubeconfig dynamo-e2e
        pods insecure
        ttl 5
    }
    cache 5
}
.:53 {
    bind $NODE_IP
    errors
}
EOF
start_bg coredns "$LOGS/coredns.log" "$COREDNS_BIN/coredns" -conf "$CFG/Corefile"
wait_for 60 "CoreDNS ready (kubernetes plugin synced)" "$LOGS/coredns.log" -- \
  curl -fsS "http://127.0.0.1:$COREDNS_READY_PORT/ready"

ln -sfn "$KUBECONFIG_ADMIN" "$WORKDIR/kubeconfig"
write_file "$WORKDIR/env" <<EOF
export KUBECONFIG="$KUBECONFIG_ADMIN"
export PATH="$K8S_BIN:\$PATH"
export CONTAINERD_ADDRESS="$CTRD_SOCK"
export CONTAINERD_NAMESPACE=k8s.io
EOF

log "local cluster ready in $(( $(date +%s) - start_time ))s"
cat >&2 <<EOF

  node:       $NODE_NAME ($NODE_IP on bridge $BRIDGE, pods $POD_CIDR, services $SERVICE_CIDR)
  apiserver:  $APISERVER
  kubeconfig: $WORKDIR/kubeconfig
  use it:     source $WORKDIR/env && kubectl get nodes
  images:     $LC_DIR/load-image.sh IMAGE.tar   (no registry: use imagePullPolicy: IfNotPresent/Never)
  DNS:        CoreDNS on $NODE_IP:53 (pods get it via kubelet --cluster-dns)
  logs:       $LOGS/*.log and $APISERVER_WORKDIR/logs/*.log
  stop:       $LC_DIR/down.sh

EOF
