#!/usr/bin/env bash
# Tears down what e2e/local-cluster/up.sh started: node processes (by recorded
# PID), every container and sandbox of the private containerd, kube-proxy's
# iptables rules, the bridge, our FORWARD rules, pod cgroups, mounts under
# WORKDIR; restores the sysctls it changed; removes WORKDIR.
#
# usage: e2e/local-cluster/down.sh [--keep]   (--keep: keep WORKDIR/logs)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root

KEEP=0
[ "${1:-}" = "--keep" ] && KEEP=1

if [ ! -d "$WORKDIR" ]; then
  log "nothing to do: $WORKDIR does not exist"
  exit 0
fi
WORKDIR="$(cd "$WORKDIR" && pwd)"

# 1. Node agents first, so nothing restarts containers behind our back.
stop_pid coredns kube-proxy kubelet kube-scheduler

# 2. Containers and sandboxes of our containerd (the shims exit with them).
if pid_alive containerd && command -v ctr >/dev/null 2>&1; then
  for t in $(ctr_k8s tasks ls -q 2>/dev/null); do
    ctr_k8s tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true
  done
  for t in $(ctr_k8s tasks ls -q 2>/dev/null); do
    for _ in $(seq 1 50); do
      ctr_k8s tasks delete -f "$t" >/dev/null 2>&1 && break
      sleep 0.1
    done
  done
  for c in $(ctr_k8s containers ls -q 2>/dev/null); do
    ctr_k8s containers delete "$c" >/dev/null 2>&1 || true
  done
fi
stop_pid containerd

# Shims that outlived containerd (matched by our own socket path only).
for p in /proc/[0-9]*; do
  cmd="$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null)" || continue
  case "$cmd" in
    *containerd-shim*"$CTRD_SOCK"*)
      log "killing leftover shim ${p#/proc/}"; kill -KILL "${p#/proc/}" 2>/dev/null || true ;;
  esac
done

# 3. Control plane.
WORKDIR="$APISERVER_WORKDIR" "$E2E_LIB_DIR/down.sh" --keep

# 4. Host networking.
if [ -x "$K8S_BIN/kube-proxy" ] && command -v iptables >/dev/null 2>&1; then
  "$K8S_BIN/kube-proxy" --cleanup >"$LOGS/kube-proxy-cleanup.log" 2>&1 || true
fi
if command -v iptables >/dev/null 2>&1; then
  for rule in "-i $BRIDGE" "-o $BRIDGE"; do
    # shellcheck disable=SC2086
    while iptables -w 5 -C FORWARD $rule -m comment --comment dynamo-e2e -j ACCEPT 2>/dev/null; do
      iptables -w 5 -D FORWARD $rule -m comment --comment dynamo-e2e -j ACCEPT
    done
  done
fi
# Chains kubelet creates on its own (kube-proxy --cleanup does not remove them).
for ipt in iptables ip6tables; do
  command -v "$ipt" >/dev/null 2>&1 || continue
  for chain_dir in INPUT OUTPUT; do
    while "$ipt" -w 5 -t filter -C "$chain_dir" -j KUBE-FIREWALL 2>/dev/null; do
      "$ipt" -w 5 -t filter -D "$chain_dir" -j KUBE-FIREWALL
    done
  done
  for table in filter nat mangle raw; do
    for chain in KUBE-FIREWALL KUBE-KUBELET-CANARY KUBE-IPTABLES-HINT KUBE-PROXY-CANARY; do
      if "$ipt" -w 5 -t "$table" -S "$chain" >/dev/null 2>&1; then
        "$ipt" -w 5 -t "$table" -F "$chain" 2>/dev/null || true
        "$ipt" -w 5 -t "$table" -X "$chain" 2>/dev/null || true
      fi
    done
  done
done
# kubelet always creates /var/lib/kubelet/device-plugins; remove it if up.sh
# found no /var/lib/kubelet and it holds nothing else.
if [ -f "$WORKDIR/created-var-lib-kubelet" ]; then
  rm -f /var/lib/kubelet/device-plugins/kubelet.sock
  rmdir /var/lib/kubelet/device-plugins /var/lib/kubelet 2>/dev/null || true
fi
if ip link show "$BRIDGE" >/dev/null 2>&1; then
  log "deleting bridge $BRIDGE"
  ip link del "$BRIDGE" || true
fi
if [ -f "$WORKDIR/sysctl.saved" ]; then
  while IFS= read -r kv; do [ -n "$kv" ] && sysctl -qw "$kv" || true; done <"$WORKDIR/sysctl.saved"
fi

# 5. Pod cgroups left by kubelet (cgroupfs driver), deepest first.
for h in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
  [ -d "$h/kubepods" ] || continue
  find "$h/kubepods" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  [ -d "$h/kubepods" ] && log "could not remove $h/kubepods (processes left in it?)"
done

# 6. Mounts under WORKDIR (pod volumes, netns, shm, kubelet's rshared bind), deepest first.
for _ in 1 2 3; do
  mapfile -t mnts < <(awk -v w="$WORKDIR" '$2 == w || index($2, w "/") == 1 {print $2}' /proc/self/mounts | sort -r)
  [ ${#mnts[@]} -eq 0 ] && break
  for m in "${mnts[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
done

if [ "$KEEP" = 0 ]; then
  rm -rf "$WORKDIR" || die "could not remove $WORKDIR (still mounted?): $(awk -v w="$WORKDIR" 'index($2, w) == 1 {print $2}' /proc/self/mounts | head -3)"
  log "removed $WORKDIR"
fi
log "local cluster down"
