#!/usr/bin/env bash
# Imports container images into the local cluster's containerd (namespace
# k8s.io), where kubelet finds them without a registry. Use them in pods with
# imagePullPolicy: IfNotPresent or Never (and a tag other than :latest, whose
# default policy is Always).
#
# usage: e2e/local-cluster/load-image.sh IMAGE.tar [IMAGE.tar...]
#        e2e/local-cluster/load-image.sh --docker NAME:TAG [NAME:TAG...]   (docker save | import)
# IMAGE.tar: a `docker save` archive or an OCI image layout tarball
# (e.g. from e2e/local-cluster/mkimage.sh).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ $# -ge 1 ] || { sed -n '2,10p' "$0" >&2; exit 2; }
[ -S "$CTRD_SOCK" ] || die "the local cluster's containerd is not running ($CTRD_SOCK missing); run e2e/local-cluster/up.sh"
SNAPSHOTTER="$(cat "$WORKDIR/snapshotter" 2>/dev/null || echo overlayfs)"

if [ "$1" = "--docker" ]; then
  shift
  command -v docker >/dev/null 2>&1 || die "docker not installed (see e2e/docker-up.sh)"
  for ref in "$@"; do
    log "docker save $ref | ctr import"
    docker save "$ref" | ctr_k8s images import --snapshotter "$SNAPSHOTTER" - >&2 \
      || die "import of $ref from docker failed"
  done
else
  for tar in "$@"; do
    [ -f "$tar" ] || die "no such file: $tar"
    log "importing $tar"
    ctr_k8s images import --snapshotter "$SNAPSHOTTER" "$tar" >&2 || die "import of $tar failed"
  done
fi
ctr_k8s images ls -q | grep -v '^sha256:' >&2 || true
