#!/usr/bin/env bash
# Foreground throughput with anti-entropy running (every second) against it off, on a
# 3-member `dynamo dev` cluster on loopback: YCSB workload A, same records, alternating
# runs in ABBA order (on, off, off, on, on, off, ...) so that drift in the machine's load
# affects both alike. Each run is a fresh cluster (fresh data directories). Prints each run
# (with the anti-entropy exchanges, bytes and keys repaired summed over the members, from
# /metrics, to show it really ran) and the ratio.
#
#   bench/antientropy-overhead.sh [records] [seconds-per-run]
#
# Environment: ROUNDS (on/off pairs, default 2), BASE_PORT (HTTP ports BASE_PORT..+2, peer
# ports BASE_PORT+100..+102; default 7400), CONCURRENCY (default 16), CARGO_TARGET_DIR
# (where the release build goes, default target). Every run is bounded by its duration;
# a cluster that does not settle within 120 s fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."
records="${1:-50000}"
seconds="${2:-20}"
rounds="${ROUNDS:-2}"
base="${BASE_PORT:-7400}"
concurrency="${CONCURRENCY:-16}"
bin="${CARGO_TARGET_DIR:-target}/release/dynamo"
cargo build --release -q -p dynamo-node --bin dynamo
work="$(mktemp -d)"
dev_pid=""
cleanup() {
  if [ -n "$dev_pid" ] && kill -0 "$dev_pid" 2>/dev/null; then
    kill -TERM "$dev_pid" 2>/dev/null || true
    wait "$dev_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

eps="127.0.0.1:$base,127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2))"

# run LABEL INTERVAL_S: one fresh cluster, one bench run; appends "LABEL ops/s p50 p99
# errors exchanges bytes repaired" to $work/results.
run() {
  local label="$1" interval="$2"
  local dir="$work/$label-$RANDOM"
  "$bin" dev --data-dir "$dir" --base-port "$base" --timeout-s 120 \
    --node-arg="--anti-entropy-interval-s=$interval" >"$dir.out" 2>&1 &
  dev_pid=$!
  for _ in $(seq 1 650); do
    grep -q "members up" "$dir.out" 2>/dev/null && break
    kill -0 "$dev_pid" 2>/dev/null || break
    sleep 0.2
  done
  if ! grep -q "members up" "$dir.out"; then
    cat "$dir.out" >&2
    echo "the cluster did not come up" >&2
    exit 1
  fi
  "$bin" bench --endpoints "$eps" --workload a --records "$records" \
    --duration-s "$seconds" --concurrency "$concurrency" --json "$dir.json" >"$dir.bench" 2>&1 ||
    { cat "$dir.bench" >&2; exit 1; }
  local ae
  ae="$(for p in "$base" "$((base + 1))" "$((base + 2))"; do
    curl -fsS --max-time 5 "http://127.0.0.1:$p/metrics" || true
  done | awk '/^dynamo_antientropy_exchanges_total/ {x += $NF}
              /^dynamo_antientropy_bytes_total/ {b += $NF}
              /^dynamo_antientropy_keys_repaired_total/ {k += $NF}
              END {printf "%d %d %d", x, b, k}')"
  kill -TERM "$dev_pid"
  wait "$dev_pid" || true
  dev_pid=""
  jq -r --arg l "$label" --arg ae "$ae" '"\($l) \(.throughput_ops_s) \(.all.p50_us) \(.all.p99_us) \(.all.errors) \($ae)"' \
    "$dir.json" >>"$work/results"
  tail -1 "$work/results" |
    awk '{printf "  %-3s %8.0f ops/s  p50 %6.2f ms  p99 %7.2f ms  errors %d  (anti-entropy: %d exchanges, %d bytes, %d keys repaired)\n", $1, $2, $3/1000, $4/1000, $5, $6, $7, $8}'
}

echo "YCSB A, $records records, $seconds s per run, concurrency $concurrency, $rounds rounds (on = --anti-entropy-interval-s=1, off = 86400)"
for round in $(seq 1 "$rounds"); do
  echo "round $round"
  if [ $((round % 2)) -eq 1 ]; then
    run on 1
    run off 86400
  else
    run off 86400
    run on 1
  fi
done
python3 - "$work/results" <<'PY'
import sys
on, off = [], []
for line in open(sys.argv[1]):
    label, ops = line.split()[:2]
    (on if label == "on" else off).append(float(ops))
mean_on, mean_off = sum(on) / len(on), sum(off) / len(off)
pairs = " ".join(f"{a / b:.3f}" for a, b in zip(on, off))
change = (mean_on / mean_off - 1) * 100
print(f"anti-entropy on: {mean_on:.0f} ops/s, off: {mean_off:.0f} ops/s, "
      f"on/off = {mean_on / mean_off:.3f} ({abs(change):.1f}% {'higher' if change >= 0 else 'lower'} with it on); "
      f"per round on/off: {pairs}")
PY
