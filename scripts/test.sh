#!/usr/bin/env bash
# Runs every test of dynamo-rs, installing what they need first. Exits non-zero on the
# first failure. See docs/testing.md for what each stage covers and how to run one alone.
#
#   scripts/test.sh            everything
#   scripts/test.sh --rust     only the Rust stages (format, lint, unit, property,
#                              real-process, simulation tests and short fuzz runs)
set -euo pipefail
cd "$(dirname "$0")/.."

only_rust=false
[ "${1:-}" = "--rust" ] && only_rust=true

started=$(date +%s)
stage() {
  echo
  echo "=== $* ($(( $(date +%s) - started )) s) ==="
}

stage "setup"
bash scripts/setup.sh

stage "format"
cargo fmt --all -- --check

stage "lint (clippy, warnings are errors)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

stage "unit, property, real-process (the operator driving real members too), fuzz-regression, soak (40 s) and simulation tests"
# disk.rs mounts a tmpfs to fill the disk; as root (CI) it must run, not skip.
if [ "$(id -u)" = 0 ]; then export DYNAMO_REQUIRE_ROOT_TESTS=1; fi
# operator/tests/nodes.rs runs the dynamo binary, which this same invocation builds before
# it runs any test (the node's integration tests need it).
# A failing cluster test prints its members' last lines and keeps their whole logs here.
export DYNAMO_TEST_LOG_DIR="${DYNAMO_TEST_LOG_DIR:-$PWD/target/test-logs}"
DYNAMO_NODE_BIN="$PWD/target/debug/dynamo" cargo test --workspace --all-features --no-fail-fast

stage "fuzzing: every target for ${FUZZ_SECONDS:-20} s (nightly toolchain, cargo-fuzz)"
bash scripts/fuzz.sh

if $only_rust; then
  stage "done (Rust stages only)"
  exit 0
fi

stage "benchmark smoke: dynamo-rs and etcd through bench/compare.sh (seconds, no speed checks)"
DYNAMO_BIN="$PWD/target/debug/dynamo" RESULTS="$PWD/target/bench-smoke" bash bench/compare.sh --smoke

stage "operator against a real Kubernetes API server (etcd, kube-apiserver, kube-controller-manager v1.34)"
# all: also CoreDNS, which the local-cluster e2e below needs (cached in ~/.cache/dynamo-e2e).
bash e2e/apiserver/build.sh all
# The same packages and features as the test stage, so nothing is compiled again.
CARGO_PACKAGES="--workspace" CARGO_FLAGS="--all-features" bash e2e/apiserver/operator-test.sh

stage "packaging: images (Docker), 3 node containers, Helm chart checks, chart on a real API server and every dashboard query through Prometheus"
bash e2e/packaging-test.sh

stage "Kubernetes e2e on a local single-node cluster: real pods, helm install, pod delete, 3 -> 5 -> 3, rolling update, admission, delete"
# Checks first whether the machine can run the cluster and fails, saying why, if it cannot
# (set E2E_ALLOW_SKIP=1 to make that a skip on a machine without root, cgroups or netfilter).
bash e2e/local-cluster-test.sh

stage "done"
