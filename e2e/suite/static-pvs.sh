#!/usr/bin/env bash
# Storage for a single-node cluster that has no provisioner (e2e/local-cluster): a StorageClass
# with no provisioner (WaitForFirstConsumer) and COUNT hostPath PersistentVolumes in DIR on
# the node (this host), each an empty directory owned by the images' user 65532 (hostPath
# volumes do not get fsGroup ownership). Run on the node, as root.
#
# usage: e2e/suite/static-pvs.sh create|delete DIR [COUNT]   (COUNT default 8)
#   create  idempotent: keeps Available and Bound volumes, replaces Released/Failed ones
#           (their claims were deleted) with fresh empty directories.
#   delete  deletes the volumes, the StorageClass and DIR.
# Environment: KUBECTL (default kubectl), STORAGE_CLASS (default dynamo-e2e-hostpath).
set -euo pipefail

action="${1:-}" dir="${2:-}" count="${3:-8}"
[ -n "$action" ] && [ -n "$dir" ] || { sed -n '2,12p' "$0" >&2; exit 2; }
KUBECTL="${KUBECTL:-kubectl}"
SC="${STORAGE_CLASS:-dynamo-e2e-hostpath}"
LABEL=dynamo.dev/e2e-static-pv

case "$action" in
  create)
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    # Volumes whose claim is gone cannot be bound again: start them over.
    for pv in $("$KUBECTL" get pv -l "$LABEL=$SC" -o jsonpath='{range .items[?(@.status.phase=="Released")]}{.metadata.name}{"\n"}{end}') \
              $("$KUBECTL" get pv -l "$LABEL=$SC" -o jsonpath='{range .items[?(@.status.phase=="Failed")]}{.metadata.name}{"\n"}{end}'); do
      "$KUBECTL" delete pv "$pv" --wait=true --timeout=60s >/dev/null
      rm -rf "${dir:?}/$pv"
    done
    {
      cat <<EOF
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: $SC, labels: {$LABEL: "$SC"}}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Retain
EOF
      for i in $(seq 0 $((count - 1))); do
        pv="$SC-$i"
        if ! "$KUBECTL" get pv "$pv" >/dev/null 2>&1; then
          rm -rf "${dir:?}/$pv"
        fi
        mkdir -p "$dir/$pv"
        chown 65532:65532 "$dir/$pv"
        chmod 0750 "$dir/$pv"
        cat <<EOF
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: $pv, labels: {$LABEL: "$SC"}}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: $SC
  hostPath: {path: $dir/$pv, type: Directory}
EOF
      done
    } | "$KUBECTL" apply -f - >/dev/null
    echo "StorageClass $SC: $("$KUBECTL" get pv -l "$LABEL=$SC" --no-headers | awk '{print $5}' | sort | uniq -c | tr -s ' \n' ' ')volumes in $dir" >&2
    ;;
  delete)
    "$KUBECTL" delete pv -l "$LABEL=$SC" --ignore-not-found --wait=false >/dev/null
    "$KUBECTL" delete storageclass "$SC" --ignore-not-found >/dev/null
    rm -rf "${dir:?}"
    ;;
  *) echo "unknown action: $action" >&2; exit 2 ;;
esac
