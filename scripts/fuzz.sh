#!/usr/bin/env bash
# Runs the cargo-fuzz targets of the node, each for a bounded time, starting from seed
# corpora. A crash fails the run and its input is copied to node/fuzz/regressions/<target>/,
# where node/tests/fuzz_regressions.rs replays it from then on (commit it with the fix).
#
#   scripts/fuzz.sh                     every target, FUZZ_SECONDS (default 20) each
#   scripts/fuzz.sh http_request        one target
#   FUZZ_SECONDS=3600 scripts/fuzz.sh   a long hunt
#
# Installs what it needs: a nightly toolchain (libFuzzer instrumentation and
# AddressSanitizer need it) and cargo-fuzz from crates.io.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-20}
targets=(rpc_frame context record gossip http_request)
[ "$#" -gt 0 ] && targets=("$@")

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz: installing a nightly toolchain"
  rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

cargo run -q -p dynamo-node --features fuzzing --example fuzz_seeds -- node/fuzz/corpus

cd node
failed=()
for target in "${targets[@]}"; do
  echo "=== fuzz $target for ${seconds}s ==="
  mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
  if ! cargo +nightly fuzz run "$target" "fuzz/corpus/$target" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1; then
    failed+=("$target")
    mkdir -p "fuzz/regressions/$target"
    for crash in "fuzz/artifacts/$target"/*; do
      [ -f "$crash" ] || continue
      cp "$crash" "fuzz/regressions/$target/"
      echo "fuzz: $target failed on $crash (kept in node/fuzz/regressions/$target/)"
    done
  fi
done
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: failures in ${failed[*]}" >&2
  exit 1
fi
echo "fuzz: ${#targets[@]} targets ran ${seconds}s each without a failure"
