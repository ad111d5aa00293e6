#!/usr/bin/env bash
# Exits 0 if this machine can run the local single-node cluster
# (e2e/local-cluster/up.sh); otherwise prints every reason why not and exits 1.
# Read-only apart from short-lived probes (a test bridge, veth pair, overlay
# mount and network namespace, all removed again).
#
# usage: e2e/local-cluster/supported.sh [-q]
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
set +e

QUIET=0
[ "${1:-}" = "-q" ] && QUIET=1
fails=0
ok()   { [ "$QUIET" = 1 ] || printf '  ok    %s\n' "$*"; }
bad()  { printf '  FAIL  %s\n' "$*"; fails=$((fails + 1)); }
note() { [ "$QUIET" = 1 ] || printf '  note  %s\n' "$*"; }

[ "$QUIET" = 1 ] || echo "local-cluster support check:"

# --- privileges and OS
if [ "$(id -u)" = 0 ]; then ok "running as root"; else bad "not root: kubelet, containerd, iptables and bridges need root (run as root)"; fi
if [ "$(uname -s)" = Linux ]; then ok "Linux $(uname -r)"; else bad "not Linux"; fi
if command -v apt-get >/dev/null 2>&1; then ok "apt-get present (up.sh installs containerd, runc, CNI plugins, iptables, conntrack)";
else
  for b in containerd runc iptables conntrack; do
    command -v "$b" >/dev/null 2>&1 || bad "$b missing and no apt-get to install it"
  done
  [ -x /usr/lib/cni/bridge ] || bad "CNI plugins missing in /usr/lib/cni and no apt-get to install them"
fi
if command -v go >/dev/null 2>&1 || [ -x /usr/local/go/bin/go ] || [ -x "$K8S_BIN/kubelet" ]; then
  ok "Go toolchain or cached Kubernetes binaries present"
else
  bad "no Go toolchain (needed to build Kubernetes, etcd and CoreDNS from the Go module proxy)"
fi

cap_eff=$((16#$(awk '/^CapEff/ {print $2}' /proc/self/status)))
if (( (cap_eff >> 21) & 1 )); then ok "CAP_SYS_ADMIN"; else bad "no CAP_SYS_ADMIN: cannot mount or create namespaces for containers"; fi
if (( (cap_eff >> 12) & 1 )); then ok "CAP_NET_ADMIN"; else bad "no CAP_NET_ADMIN: cannot create the bridge, veths or iptables rules"; fi
if (( (cap_eff >> 24) & 1 )); then ok "CAP_SYS_RESOURCE"; else
  note "no CAP_SYS_RESOURCE (negative oom_score_adj and rlimit raises fail): up.sh sets containerd restrict_oom_score_adj and oomScoreAdj 0"
fi

# --- cgroups
cg_fs="$(stat -fc %T /sys/fs/cgroup 2>/dev/null)"
if [ "$cg_fs" = cgroup2fs ]; then
  ctrls="$(cat /sys/fs/cgroup/cgroup.controllers 2>/dev/null)"
  missing=""
  for c in cpu cpuset memory pids; do echo " $ctrls " | grep -q " $c " || missing="$missing $c"; done
  if [ -z "$missing" ]; then ok "cgroup v2 with cpu cpuset memory pids"; else bad "cgroup v2 lacks controllers:$missing (in /sys/fs/cgroup/cgroup.controllers)"; fi
  note "cgroup v2: the scripts configure the cgroupfs driver; that also works on v2 without systemd"
elif [ "$cg_fs" = tmpfs ]; then
  missing=""
  for c in cpu cpuacct cpuset memory pids devices freezer; do
    grep -qE "^cgroup [^ ]+ cgroup [^ ]*\b$c\b" /proc/mounts || missing="$missing $c"
  done
  if [ -z "$missing" ]; then ok "cgroup v1 with cpu cpuacct cpuset memory pids devices freezer mounted"
  else bad "cgroup v1 controllers not mounted:$missing (mount them under /sys/fs/cgroup/<name>)"; fi
  if [ -w /sys/fs/cgroup/memory ]; then ok "cgroup v1 hierarchy writable"; else bad "/sys/fs/cgroup/memory not writable (read-only cgroupfs, e.g. an unprivileged container)"; fi
  grep -qE "^cgroup [^ ]+ cgroup [^ ]*\bhugetlb\b" /proc/mounts || note "hugetlb cgroup not mounted: fine, kubelet and containerd tolerate it"
else
  bad "/sys/fs/cgroup is neither cgroup v1 (tmpfs of cgroup mounts) nor cgroup v2 (found: ${cg_fs:-nothing})"
fi

# --- devices kubelet needs
if [ -r /dev/kmsg ]; then ok "/dev/kmsg readable (kubelet OOM watcher)"; else bad "/dev/kmsg missing or unreadable: kubelet refuses to start without it"; fi
[ -e /dev/net/tun ] || note "/dev/net/tun absent (not needed)"

# --- networking
probe_br="dynprobe$$"
if ip link add "$probe_br" type bridge 2>/dev/null; then ip link del "$probe_br"; ok "can create Linux bridges";
else bad "cannot create a bridge (ip link add type bridge failed: no CAP_NET_ADMIN or no bridge support)"; fi
if ip link add "vp$$a" type veth peer name "vp$$b" 2>/dev/null; then ip link del "vp$$a"; ok "can create veth pairs";
else bad "cannot create veth pairs (kernel without CONFIG_VETH?)"; fi
if unshare -n true 2>/dev/null; then ok "can create network namespaces"; else bad "cannot create network namespaces (unshare -n failed)"; fi
if [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] || modprobe br_netfilter 2>/dev/null; then
  ok "bridge netfilter available (net.bridge.bridge-nf-call-iptables)"
else
  bad "no br_netfilter: /proc/sys/net/bridge missing and 'modprobe br_netfilter' failed; ClusterIP traffic between pods on the bridge would not be NATed"
fi
if [ -w /proc/sys/net/ipv4/ip_forward ]; then ok "net.ipv4.ip_forward writable"; else bad "/proc/sys/net/ipv4/ip_forward not writable"; fi
if command -v iptables >/dev/null 2>&1; then
  if iptables -w 5 -t nat -S >/dev/null 2>&1 && iptables -w 5 -t filter -S >/dev/null 2>&1; then
    ok "iptables works ($(iptables --version))"
  else
    bad "iptables is installed but 'iptables -t nat -S' fails (no netfilter/nf_tables in the kernel or no CAP_NET_ADMIN)"
  fi
else
  if grep -q nf_tables /proc/modules 2>/dev/null || [ -e /proc/net/ip_tables_names ] || [ -d /proc/sys/net/netfilter ]; then
    ok "netfilter present in the kernel (iptables not installed yet; up.sh installs it)"
  else
    bad "no netfilter in the kernel: kube-proxy (iptables mode) cannot work"
  fi
fi
route="$(ip -4 route show to match "${POD_CIDR%/*}" 2>/dev/null | grep -v "dev $BRIDGE" | grep -v '^default' | head -1)"
if [ -n "$route" ]; then bad "pod subnet $POD_CIDR overlaps an existing route: $route (set POD_CIDR/NODE_IP)"; else ok "pod subnet $POD_CIDR is free"; fi

# --- filesystems
parent="$WORKDIR"
while [ ! -d "$parent" ]; do parent="$(dirname "$parent")"; done
if grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null; then
  t="$(mktemp -d "$parent/.overlay-probe.XXXXXX" 2>/dev/null)"
  if [ -z "$t" ]; then
    bad "cannot create a directory under $parent"
  elif mkdir -p "$t"/{l,u,w,m} && mount -t overlay overlay -o "lowerdir=$t/l,upperdir=$t/u,workdir=$t/w" "$t/m" 2>/dev/null; then
    umount "$t/m"; ok "overlayfs mounts on $(stat -fc %T "$parent") under $parent (containerd overlayfs snapshotter)"
  else
    note "overlayfs cannot use $parent ($(stat -fc %T "$parent")) as upper dir: up.sh falls back to the native snapshotter (slower, more disk)"
  fi
  [ -n "$t" ] && rm -rf "$t"
else
  note "no overlayfs: up.sh falls back to containerd's native snapshotter"
fi
avail_kb="$(df -Pk "$parent" | awk 'NR==2 {print $4}')"
if [ "${avail_kb:-0}" -ge $((3 * 1024 * 1024)) ]; then ok "$((avail_kb / 1024 / 1024)) GiB free under $parent"
else bad "only $((avail_kb / 1024)) MiB free under $parent; need >= 3 GiB (builds and images)"; fi

# --- ports (only if nothing of ours is running)
if [ ! -f "$WORKDIR/pids/kubelet.pid" ]; then
  for p in 10250 10248 10256 10249 "$KCM_PORT" "$SCHEDULER_PORT" "$ETCD_PORT" "$ETCD_PEER_PORT"; do
    if port_in_use 127.0.0.1 "$p"; then bad "port 127.0.0.1:$p is in use by another process"; fi
  done
fi

if [ "$fails" -gt 0 ]; then
  echo "local cluster NOT supported on this machine: $fails problem(s) above"
  exit 1
fi
[ "$QUIET" = 1 ] || echo "local cluster supported"
exit 0
