#!/usr/bin/env bash
# Installs what the tests need on a fresh machine (idempotent; quick when done).
# Tools that need more (Docker, Kubernetes binaries) are installed by the scripts that
# use them: e2e/docker-up.sh, e2e/apiserver/build.sh, e2e/local-cluster/up.sh.
set -euo pipefail

need_apt=()
for tool in curl jq git; do
  command -v "$tool" >/dev/null 2>&1 || need_apt+=("$tool")
done
# cc: Rust links with it; disk.rs also builds an LD_PRELOAD shim with it.
command -v cc >/dev/null 2>&1 || need_apt+=(gcc libc6-dev)
# node/tests/partition.rs: network namespaces and links (ip), partitions (nft). Both live
# in /usr/sbin, which a non-root PATH may lack.
has_sbin_tool() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }
has_sbin_tool ip || need_apt+=(iproute2)
has_sbin_tool nft || need_apt+=(nftables)
if [ "${#need_apt[@]}" -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: Rust (cargo) is required; install it with rustup" >&2
  exit 1
fi
for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    echo "setup: adding the $component component"
    rustup component add "$component"
  fi
done
echo "setup: ok ($(cargo --version))"
