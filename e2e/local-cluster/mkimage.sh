#!/usr/bin/env bash
# Builds a single-layer container image tarball from local files, without
# Docker or a registry. The tarball is both an OCI image layout (index.json
# with the io.containerd.image.name annotation) and a `docker save` archive
# (manifest.json), so `ctr images import`, `docker load` and load-image.sh
# all accept it. Output is reproducible (fixed mtimes, owners and order).
#
# usage: mkimage.sh NAME:TAG OUT.tar ENTRYPOINT SRC:DEST [SRC:DEST...]
#   e.g. mkimage.sh localhost/dynamo-e2e/pause:1 pause.tar /pause ./pause:/pause
# ENTRYPOINT is a path inside the image (the image has no shell).
set -euo pipefail

[ $# -ge 4 ] || { sed -n '2,12p' "$0" >&2; exit 2; }
name="$1" out="$2" entry="$3"; shift 3

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/rootfs" "$tmp/img/blobs/sha256"
for spec in "$@"; do
  src="${spec%%:*}" dest="${spec#*:}"
  [ -f "$src" ] || { echo "mkimage: no such file: $src" >&2; exit 1; }
  mkdir -p "$tmp/rootfs/$(dirname "$dest")"
  cp "$src" "$tmp/rootfs/$dest"
  chmod 0755 "$tmp/rootfs/$dest"
done
# Directories some programs expect.
mkdir -p "$tmp/rootfs/tmp" "$tmp/rootfs/etc"
chmod 1777 "$tmp/rootfs/tmp"
[ -f "$tmp/rootfs/etc/passwd" ] || printf 'root:x:0:0:root:/:/nonexistent\nnobody:x:65534:65534:nobody:/:/nonexistent\n' >"$tmp/rootfs/etc/passwd"
[ -f "$tmp/rootfs/etc/group" ] || printf 'root:x:0:\nnobody:x:65534:\n' >"$tmp/rootfs/etc/group"

(cd "$tmp/rootfs" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort >"$tmp/files")
tar -C "$tmp/rootfs" --numeric-owner --owner=0 --group=0 --mtime=@0 --no-recursion \
  --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
  -cf "$tmp/layer.tar" -T "$tmp/files"

sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }

layer="$(sha "$tmp/layer.tar")"
cp "$tmp/layer.tar" "$tmp/img/blobs/sha256/$layer"

cat >"$tmp/config.json" <<EOF
{"architecture":"amd64","os":"linux","created":"1970-01-01T00:00:00Z","config":{"Entrypoint":["$entry"],"Env":["PATH=/"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:$layer"]},"history":[{"created":"1970-01-01T00:00:00Z","created_by":"e2e/local-cluster/mkimage.sh"}]}
EOF
cfg="$(sha "$tmp/config.json")"
cp "$tmp/config.json" "$tmp/img/blobs/sha256/$cfg"

cat >"$tmp/manifest.oci.json" <<EOF
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:$cfg","size":$(size "$tmp/config.json")},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:$layer","size":$(size "$tmp/layer.tar")}]}
EOF
man="$(sha "$tmp/manifest.oci.json")"
cp "$tmp/manifest.oci.json" "$tmp/img/blobs/sha256/$man"

tag="${name##*:}"
cat >"$tmp/img/index.json" <<EOF
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:$man","size":$(size "$tmp/manifest.oci.json"),"annotations":{"io.containerd.image.name":"$name","org.opencontainers.image.ref.name":"$tag"}}]}
EOF
echo '{"imageLayoutVersion":"1.0.0"}' >"$tmp/img/oci-layout"
cat >"$tmp/img/manifest.json" <<EOF
[{"Config":"blobs/sha256/$cfg","RepoTags":["$name"],"Layers":["blobs/sha256/$layer"]}]
EOF

mkdir -p "$(dirname "$out")"
(cd "$tmp/img" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort >"$tmp/imgfiles")
tar -C "$tmp/img" --numeric-owner --owner=0 --group=0 --mtime=@0 --no-recursion -cf "$out.tmp" -T "$tmp/imgfiles"
mv "$out.tmp" "$out"
echo "$out: $name (manifest sha256:$man)" >&2
