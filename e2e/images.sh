#!/usr/bin/env bash
# Builds the node and operator images with Docker on this machine, from static binaries
# compiled on the host (Dockerfile targets node-prebuilt and operator-prebuilt; no base
# image is pulled). Tags dynamo-rs/node:<version> and dynamo-rs/operator:<version>
# (version from Cargo.toml) and :dev.
#
# usage: e2e/images.sh [--save] [--no-operator] [--force]
#   --save         also `docker save` each image to e2e/.work/images/<name>-<version>.tar
#                  (for e2e/local-cluster/load-image.sh)
#   --no-operator  build the node image only
#   --force        rebuild the images even when nothing changed
#
# Fails if either crate does not build or a binary is not static.
# Idempotent: cargo builds incrementally, and an image is rebuilt only when its binary, the
# Dockerfile, the version or the revision changed (the stamp is kept in e2e/.work/images).
#
# Environment: IMAGE_PREFIX (default dynamo-rs), CARGO_TARGET (default: the host triple),
# STATIC_TARGET_DIR (cargo target directory of the static builds, default target/static,
# apart from target/ so that it never waits for other builds' lock), DOCKER_BUILDKIT
# (default 0 when the buildx plugin is missing: the legacy builder handles the prebuilt
# targets), IMAGES_OUT (default e2e/.work/images).
source "$(dirname "${BASH_SOURCE[0]}")/apiserver/lib.sh"

SAVE=0 OPERATOR=1 FORCE=0
for arg in "$@"; do
  case "$arg" in
    --save) SAVE=1 ;;
    --no-operator) OPERATOR=0 ;;
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) die "unknown argument: $arg (see --help)" ;;
  esac
done

IMAGE_PREFIX="${IMAGE_PREFIX:-dynamo-rs}"
OUT="${IMAGES_OUT:-$E2E_DIR/.work/images}"
CTX="$OUT/context"
mkdir -p "$OUT"
cd "$REPO_ROOT"

VERSION="$(awk '
  /^\[/ { section = $0 }
  section == "[workspace.package]" && $1 == "version" { gsub(/"/, "", $3); print $3; exit }
' Cargo.toml)"
[ -n "$VERSION" ] || die "no version in [workspace.package] of Cargo.toml"
REVISION="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
# A binary built from uncommitted sources is not that commit.
if [ "$REVISION" != unknown ] && [ -n "$(git status --porcelain -- Cargo.toml Cargo.lock node operator Dockerfile 2>/dev/null)" ]; then
  REVISION="$REVISION-dirty"
fi
CREATED="$(git log -1 --format=%cI 2>/dev/null || echo 1970-01-01T00:00:00Z)"
TRIPLE="${CARGO_TARGET:-$(rustc -vV | sed -n 's/^host: //p')}"
STATIC_TARGET_DIR="${STATIC_TARGET_DIR:-$REPO_ROOT/target/static}"
BIN_DIR="$STATIC_TARGET_DIR/$TRIPLE/release"

"$E2E_DIR/docker-up.sh"
if [ -z "${DOCKER_BUILDKIT:-}" ] && ! docker buildx version >/dev/null 2>&1; then
  export DOCKER_BUILDKIT=0
fi

# static_build LOG PACKAGE... : the host build, statically linked. Both packages are built
# in ONE cargo invocation, as the Dockerfile's builder and e2e/prometheus-dashboards-test.sh
# do: cargo unifies features over the packages of one invocation, so building them one by
# one would compile the dependencies again with other features.
static_build() {
  local logf="$1" pkgs=() p; shift
  for p in "$@"; do pkgs+=(-p "$p"); done
  CARGO_TARGET_DIR="$STATIC_TARGET_DIR" RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --release --locked --target "$TRIPLE" "${pkgs[@]}" >"$logf" 2>&1
}

# check_static BINARY : fails unless the binary needs no dynamic loader or libraries.
check_static() {
  local desc
  desc="$(file -b "$1")"
  case "$desc" in
    *"statically linked"*|*"static-pie linked"*) ;;
    *) die "$1 is not statically linked: $desc" ;;
  esac
  if ldd "$1" 2>&1 | grep -q '=>'; then
    die "$1 has dynamic dependencies: $(ldd "$1" 2>&1 | tr '\n' ' ')"
  fi
}

# stage BINARY NAME : copies the binary into the build context without debug info,
# touching the context only when the content changes.
stage() {
  local tmp="$CTX/.$2.tmp"
  cp "$1" "$tmp"
  strip --strip-debug "$tmp"
  if cmp -s "$tmp" "$CTX/$2"; then rm -f "$tmp"; else mv "$tmp" "$CTX/$2"; fi
}

# build_image NAME TARGET BINARY : docker build of one prebuilt target, unless the image
# already exists for the same inputs.
build_image() {
  local name="$1" target="$2" bin="$3"
  local ref="$IMAGE_PREFIX/$name:$VERSION" stamp_file="$OUT/$name.stamp" stamp id
  stamp="$(
    {
      sha256sum Dockerfile "$CTX/$bin" | cut -d' ' -f1
      echo "$ref $REVISION $CREATED $target ${DOCKER_BUILDKIT:-}"
    } | sha256sum | cut -d' ' -f1
  )"
  id="$(docker image inspect -f '{{.Id}}' "$ref" 2>/dev/null || true)"
  if [ "$FORCE" = 0 ] && [ -n "$id" ] && [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp $id" ]; then
    log "$ref is up to date ($id)"
  else
    log "docker build --target $target -t $ref"
    local t0=$SECONDS
    docker build -f Dockerfile --target "$target" \
      --build-arg VERSION="$VERSION" --build-arg REVISION="$REVISION" --build-arg CREATED="$CREATED" \
      -t "$ref" "$CTX" >"$OUT/$name.build.log" 2>&1 \
      || { tail -n 30 "$OUT/$name.build.log" >&2; die "docker build of $ref failed (log: $OUT/$name.build.log)"; }
    id="$(docker image inspect -f '{{.Id}}' "$ref")"
    echo "$stamp $id" >"$stamp_file"
    log "built $ref in $((SECONDS - t0)) s"
  fi
  docker tag "$ref" "$IMAGE_PREFIX/$name:dev"
  if [ "$SAVE" = 1 ]; then
    local tar="$OUT/$name-$VERSION.tar"
    if [ -f "$tar" ] && [ -f "$tar.id" ] && [ "$(cat "$tar.id")" = "$id" ]; then
      log "$tar is up to date"
    else
      docker save -o "$tar.tmp" "$ref" "$IMAGE_PREFIX/$name:dev" && mv "$tar.tmp" "$tar"
      echo "$id" >"$tar.id"
      log "saved $tar"
    fi
  fi
  BUILT+=("$ref")
}

BUILT=()
apt_install file binutils
mkdir -p "$CTX/data"
# The node's /data: an empty directory owned by the runtime user (COPY --chown sets it too).
chown 65532:65532 "$CTX/data"
chmod 0755 "$CTX/data"

PACKAGES=(dynamo-node)
[ "$OPERATOR" = 0 ] || PACKAGES+=(dynamo-operator)
log "cargo build --release --target $TRIPLE ${PACKAGES[*]/#/-p } (static, $STATIC_TARGET_DIR)"
t0=$SECONDS
static_build "$OUT/cargo.log" "${PACKAGES[@]}" \
  || { tail -n 40 "$OUT/cargo.log" >&2; die "cargo build failed (log: $OUT/cargo.log)"; }
log "cargo build done ($((SECONDS - t0)) s)"
check_static "$BIN_DIR/dynamo"
stage "$BIN_DIR/dynamo" dynamo
build_image node node-prebuilt dynamo
if [ "$OPERATOR" = 1 ]; then
  check_static "$BIN_DIR/dynamo-operator"
  stage "$BIN_DIR/dynamo-operator" dynamo-operator
  build_image operator operator-prebuilt dynamo-operator
fi

# verify_image REF ARGS... : runs as 65532:65532 with the OCI labels, and the binary runs
# in the image (a static binary in an empty filesystem).
verify_image() {
  local ref="$1"; shift
  local user title version revision
  user="$(docker image inspect -f '{{.Config.User}}' "$ref")"
  title="$(docker image inspect -f '{{index .Config.Labels "org.opencontainers.image.title"}}' "$ref")"
  version="$(docker image inspect -f '{{index .Config.Labels "org.opencontainers.image.version"}}' "$ref")"
  revision="$(docker image inspect -f '{{index .Config.Labels "org.opencontainers.image.revision"}}' "$ref")"
  [ "$user" = 65532:65532 ] || die "$ref runs as '$user', expected 65532:65532"
  if [ -z "$title" ] || [ "$version" != "$VERSION" ] || [ "$revision" != "$REVISION" ]; then
    die "$ref: OCI labels title/version/revision are '$title' '$version' '$revision'"
  fi
  docker run --rm --read-only --cap-drop ALL --network none "$@" >/dev/null 2>"$OUT/verify.err" \
    || { cat "$OUT/verify.err" >&2; die "$ref: docker run $* failed"; }
}
verify_image "$IMAGE_PREFIX/node:$VERSION" --entrypoint /dynamo "$IMAGE_PREFIX/node:$VERSION" --version
if [ "$OPERATOR" = 1 ]; then
  verify_image "$IMAGE_PREFIX/operator:$VERSION" "$IMAGE_PREFIX/operator:$VERSION" --help
fi

for ref in "${BUILT[@]}"; do
  log "image $ref (+ :dev): $(docker image inspect -f '{{.Size}}' "$ref" | awk '{printf "%.1f MB", $1 / 1e6}')"
done
