# Container images of dynamo-rs: the storage node (target `node`) and the Kubernetes
# operator (target `operator`). Both are FROM scratch: one statically linked binary, no
# shell, no package manager, running as the numeric non-root user 65532:65532.
#
# Two ways to build the SAME runtime images (see docs/install.md, "Images"):
#
# 1. From source, with a registry (needs BuildKit, the default since Docker 23):
#
#      docker build --target node     -t dynamo-rs/node:0.1.0     .
#      docker build --target operator -t dynamo-rs/operator:0.1.0 .
#
#    A `rust` builder stage compiles both binaries statically (glibc, crt-static) and
#    copies them into scratch images. Without --target you get the node image.
#
# 2. From binaries compiled on the host (no base image is pulled; what e2e/images.sh does):
#
#      CARGO_TARGET_DIR=target/static RUSTFLAGS="-C target-feature=+crt-static" cargo build --release \
#          --target x86_64-unknown-linux-gnu -p dynamo-node -p dynamo-operator
#      ctx=$(mktemp -d) && mkdir "$ctx/data" && chown 65532:65532 "$ctx/data"
#      cp target/static/x86_64-unknown-linux-gnu/release/dynamo{,-operator} "$ctx/"
#      docker build -f Dockerfile --target node-prebuilt     -t dynamo-rs/node:0.1.0     "$ctx"
#      docker build -f Dockerfile --target operator-prebuilt -t dynamo-rs/operator:0.1.0 "$ctx"
#
#    The build context is that directory: `dynamo`, `dynamo-operator` (only the one you
#    build is needed) and an empty `data/`. These stages come first in this file and need
#    nothing after them, so the legacy builder (DOCKER_BUILDKIT=0) builds them too.
#
# Name resolution: glibc static binaries in an image without /etc/nsswitch.conf or NSS
# modules fall back to /etc/hosts and DNS through /etc/resolv.conf (search domains and
# ndots included), which the container runtime provides; e2e/docker-cluster-test.sh checks
# that members resolve Kubernetes-style names (db-0.db-peers.ns.svc) this way.
#
# Build arguments: VERSION, REVISION, CREATED (OCI labels), RUST_VERSION, DEBIAN_RELEASE.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# ---------------------------------------------------------------- runtime metadata
FROM scratch AS node-base
ARG VERSION=dev
ARG REVISION=unknown
ARG CREATED=1970-01-01T00:00:00Z
LABEL org.opencontainers.image.title="dynamo-node" \
      org.opencontainers.image.description="A Dynamo-style distributed key-value store: one member of a cluster." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/dynamo-rs/dynamo-rs" \
      org.opencontainers.image.url="https://github.com/dynamo-rs/dynamo-rs" \
      org.opencontainers.image.documentation="https://github.com/dynamo-rs/dynamo-rs/blob/main/docs/install.md" \
      org.opencontainers.image.vendor="dynamo-rs"
# Container defaults: listen on every interface, keep data in the volume. The member id,
# advertised addresses, seeds and cluster token come from the environment
# (DYNAMO_ID, DYNAMO_ADVERTISE, DYNAMO_ADVERTISE_PEER, DYNAMO_SEEDS,
# DYNAMO_CLUSTER_TOKEN[_FILE]) or flags; `dynamo node --help` lists them all.
# PATH lets `dynamo` (no slash) resolve to /dynamo, e.g. as a Kubernetes `command`.
ENV PATH=/usr/local/bin:/usr/bin:/bin:/ \
    DYNAMO_LISTEN=0.0.0.0:8080 \
    DYNAMO_PEER_LISTEN=0.0.0.0:7070 \
    DYNAMO_DATA_DIR=/data
USER 65532:65532
VOLUME /data
# 8080: client API, admin API (/v1/cluster/*), /healthz, /readyz, /metrics. 7070: peer RPC.
EXPOSE 8080 7070
# The node closes its store cleanly on SIGTERM ("member stopped" in its log).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/dynamo", "node"]

FROM scratch AS operator-base
ARG VERSION=dev
ARG REVISION=unknown
ARG CREATED=1970-01-01T00:00:00Z
LABEL org.opencontainers.image.title="dynamo-operator" \
      org.opencontainers.image.description="Kubernetes operator for dynamo-rs: the DynamoCluster resource and its reconciler." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/dynamo-rs/dynamo-rs" \
      org.opencontainers.image.url="https://github.com/dynamo-rs/dynamo-rs" \
      org.opencontainers.image.documentation="https://github.com/dynamo-rs/dynamo-rs/blob/main/docs/install.md" \
      org.opencontainers.image.vendor="dynamo-rs"
# No CA bundle: in a cluster the operator trusts the API server through the service
# account's ca.crt (kube-rs with rustls); a kubeconfig must carry its CA data.
ENV PATH=/usr/local/bin:/usr/bin:/bin:/
USER 65532:65532
# 8081: /healthz, /readyz, /metrics (DYNAMO_OPERATOR_HTTP_ADDR).
EXPOSE 8081
STOPSIGNAL SIGTERM
ENTRYPOINT ["/dynamo-operator"]

# ---------------------------------------------------------------- path 2: host-built binaries
FROM node-base AS node-prebuilt
COPY --chown=65532:65532 data /data
COPY dynamo /dynamo

FROM operator-base AS operator-prebuilt
COPY dynamo-operator /dynamo-operator

# ---------------------------------------------------------------- path 1: build from source
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
WORKDIR /src
COPY . .
# Static glibc binaries for the build machine's architecture, without debug info (as
# e2e/images.sh stages them); `data` becomes the node's /data, owned by the runtime user.
RUN set -eu; \
    triple="$(rustc -vV | sed -n 's/^host: //p')"; \
    RUSTFLAGS="-C target-feature=+crt-static" \
      cargo build --locked --release --target "$triple" -p dynamo-node -p dynamo-operator; \
    mkdir -p /out/data; \
    cp "target/$triple/release/dynamo" "target/$triple/release/dynamo-operator" /out/; \
    strip --strip-debug /out/dynamo /out/dynamo-operator; \
    chown 65532:65532 /out/data

FROM operator-base AS operator
COPY --from=builder /out/dynamo-operator /dynamo-operator

# Last stage: the default target.
FROM node-base AS node
COPY --from=builder --chown=65532:65532 /out/data /data
COPY --from=builder /out/dynamo /dynamo
