#!/usr/bin/env bash
# Makes a Docker engine available on this machine (for `docker build` of the
# node and operator images): installs Debian's docker.io if missing and starts
# dockerd in the background if it is not running, then waits until
# `docker info` works. Idempotent.
#
# dockerd runs its own supervised containerd (/var/run/docker/containerd/...,
# root /var/lib/docker/containerd), which never meets the local cluster's
# containerd (socket and root under e2e/.work/local-cluster/containerd).
#
# usage: e2e/docker-up.sh          start (idempotent)
#        e2e/docker-up.sh --stop   stop the dockerd from /var/run/docker.pid and
#                                  undo its iptables changes (FORWARD policy
#                                  DROP, DOCKER* chains), which break bridged
#                                  network-namespace tests of other tools
# Environment: DOCKER_LOG (default /var/log/dynamo-e2e-dockerd.log),
#              DOCKER_TIMEOUT seconds (default 60)
source "$(dirname "${BASH_SOURCE[0]}")/apiserver/lib.sh"

DOCKER_LOG="${DOCKER_LOG:-/var/log/dynamo-e2e-dockerd.log}"
DOCKER_TIMEOUT="${DOCKER_TIMEOUT:-60}"

if [ "${1:-}" = "--stop" ]; then
  need_root
  pid="$(cat /var/run/docker.pid 2>/dev/null || true)"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && grep -q dockerd "/proc/$pid/cmdline" 2>/dev/null; then
    log "stopping dockerd (pid $pid)"
    kill -TERM "$pid"
    wait_for 30 "dockerd (pid $pid) to exit" "$DOCKER_LOG" -- bash -c "! kill -0 $pid 2>/dev/null"
  else
    log "dockerd is not running"
  fi
  if command -v iptables >/dev/null 2>&1; then
    iptables -w 5 -P FORWARD ACCEPT
    for table in filter nat; do
      for rule in $(iptables -w 5 -t "$table" -S | awk '/^-A (FORWARD|PREROUTING|OUTPUT|POSTROUTING)/ && (/-j DOCKER/ || /docker0/) {sub(/^-A /, ""); gsub(/ /, "\x01"); print}'); do
        # shellcheck disable=SC2086
        iptables -w 5 -t "$table" -D ${rule//$'\x01'/ } 2>/dev/null || true
      done
      for chain in $(iptables -w 5 -t "$table" -S | awk '/^-N DOCKER/ {print $2}'); do
        iptables -w 5 -t "$table" -F "$chain" 2>/dev/null || true
      done
      for chain in $(iptables -w 5 -t "$table" -S | awk '/^-N DOCKER/ {print $2}'); do
        iptables -w 5 -t "$table" -X "$chain" 2>/dev/null || true
      done
    done
    log "removed Docker's iptables rules; FORWARD policy is ACCEPT again"
  fi
  ip link del docker0 2>/dev/null || true
  exit 0
fi

if docker info >/dev/null 2>&1; then
  log "docker is running ($(docker version -f '{{.Server.Version}}' 2>/dev/null))"
  exit 0
fi
need_root
apt_install docker.io iptables
command -v dockerd >/dev/null 2>&1 || die "dockerd not found after installing docker.io"

pid=""
[ -f /var/run/docker.pid ] && pid="$(cat /var/run/docker.pid 2>/dev/null || true)"
if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && grep -q dockerd "/proc/$pid/cmdline" 2>/dev/null; then
  log "dockerd (pid $pid) is starting; waiting for it"
else
  log "starting dockerd (log: $DOCKER_LOG)"
  mkdir -p "$(dirname "$DOCKER_LOG")"
  # setsid: not tied to this shell; dockerd writes /var/run/docker.pid itself.
  setsid dockerd >>"$DOCKER_LOG" 2>&1 </dev/null &
fi
wait_for "$DOCKER_TIMEOUT" "docker info (dockerd ready)" "$DOCKER_LOG" -- docker info
log "docker is running ($(docker version -f '{{.Server.Version}}'), storage driver $(docker info -f '{{.Driver}}'), cgroup driver $(docker info -f '{{.CgroupDriver}}'))"
