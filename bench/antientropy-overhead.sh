#!/usr/bin/env bash
# Foreground throughput with anti-entropy running (every second) against it off, on a
# 3-member `dynamo dev` cluster: YCSB workload A, same records, alternating runs (on, off,
# on, off) so that drift in the machine's load affects both alike. Prints the ratio.
#
#   bench/antientropy-overhead.sh [records] [seconds-per-run]
set -euo pipefail
cd "$(dirname "$0")/.."
records="${1:-50000}"
seconds="${2:-20}"
bin=target/release/dynamo
cargo build --release -q -p dynamo-node --bin dynamo
work="$(mktemp -d)"
trap 'pkill -TERM -f "$work" 2>/dev/null || true; rm -rf "$work"' EXIT

run() { # $1 = label, $2 = anti-entropy interval in seconds
  local dir="$work/$1-$RANDOM"
  "$bin" dev --data-dir "$dir" --base-port 7400 --node-arg="--anti-entropy-interval-s=$2" >"$dir.out" 2>&1 &
  local pid=$!
  for _ in $(seq 1 600); do grep -q "members up" "$dir.out" 2>/dev/null && break; sleep 0.2; done
  grep -q "members up" "$dir.out" || { cat "$dir.out"; exit 1; }
  local eps=127.0.0.1:7400,127.0.0.1:7401,127.0.0.1:7402
  "$bin" bench --endpoints "$eps" --workload a --records "$records" --duration-s "$seconds" --concurrency 16 --json "$dir.json" >/dev/null
  kill -TERM "$pid"; wait "$pid" || true
  jq -r '.throughput_ops_s' "$dir.json"
}

declare -a on off
for round in 1 2; do
  on+=("$(run on 1)")
  off+=("$(run off 86400)")
  echo "round $round: anti-entropy on ${on[-1]} ops/s, off ${off[-1]} ops/s"
done
python3 - "${on[@]}" "${off[@]}" <<'PY'
import sys
v = [float(x) for x in sys.argv[1:]]
on, off = v[:len(v)//2], v[len(v)//2:]
mean_on, mean_off = sum(on)/len(on), sum(off)/len(off)
print(f"anti-entropy on: {mean_on:.0f} ops/s, off: {mean_off:.0f} ops/s, on/off = {mean_on/mean_off:.3f} ({(1-mean_on/mean_off)*100:+.1f}% lower with it on)")
PY
