#!/usr/bin/env bash
# Stops what e2e/apiserver/up.sh started (by recorded PID) and removes WORKDIR.
#
# usage: e2e/apiserver/down.sh [--keep]   (--keep: stop processes, keep WORKDIR and logs)
# Environment: WORKDIR (default e2e/.work/apiserver)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

WORKDIR="${WORKDIR:-$REPO_ROOT/e2e/.work/apiserver}"
KEEP=0
[ "${1:-}" = "--keep" ] && KEEP=1

if [ -d "$WORKDIR" ]; then
  # Reverse start order; etcd last so the API server can shut down cleanly.
  stop_pid kube-controller-manager kube-apiserver
  stop_pid etcd
  if [ "$KEEP" = 0 ]; then
    rm -rf "$WORKDIR"
    log "removed $WORKDIR"
  fi
else
  log "nothing to do: $WORKDIR does not exist"
fi
