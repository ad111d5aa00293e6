#!/usr/bin/env bash
# Before/after: two builds of `dynamo` on the same workload, alternated in ABBA order in one
# run so that drift in the machine's load falls on both alike; prints each run and the
# ratio after/before of the mean throughput and of the mean p50 and p99.
#
#   bench/ab.sh BEFORE_BIN AFTER_BIN
#
# Each run is a fresh 3-member `dynamo dev` cluster (N=3 R=2 W=2) on loopback, loaded with
# RECORDS (default 20000) values of VALUE_SIZE (1024) bytes, then WORKLOAD (a) closed loop
# with CONCURRENCY (32) requests for DURATION_S (15) seconds, then, when RATE is set, the
# same workload open loop at RATE ops/s for DURATION_S (latency from each request's
# scheduled start; RATE=half: half of that run's own closed-loop throughput), reporting also the members' CPU time per operation at that rate (which,
# unlike latency, CPU stolen by the hypervisor does not inflate) and the share of CPU
# stolen during it. DURABILITY (fsync) and ROUNDS (2 ABBA pairs = 4 runs) as named.
# The client is the binary BEFORE_BIN in every run, so only the servers differ.
set -euo pipefail
cd "$(dirname "$0")/.."

before="${1:?usage: bench/ab.sh BEFORE_BIN AFTER_BIN}"
after="${2:?usage: bench/ab.sh BEFORE_BIN AFTER_BIN}"
records="${RECORDS:-20000}"
value_size="${VALUE_SIZE:-1024}"
concurrency="${CONCURRENCY:-32}"
duration="${DURATION_S:-15}"
workload="${WORKLOAD:-a}"
durability="${DURABILITY:-fsync}"
rounds="${ROUNDS:-2}"
rate="${RATE:-}"
port="${BASE_PORT:-7700}"
eps="127.0.0.1:$port,127.0.0.1:$((port + 1)),127.0.0.1:$((port + 2))"
work="$(mktemp -d)"
dev=""
cleanup() {
  if [ -n "$dev" ]; then kill -TERM "$dev" 2>/dev/null || true; wait "$dev" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# member_ticks PID...: user + system CPU ticks of the processes, summed.
member_ticks() {
  local t=0 p f
  for p in "$@"; do
    f="$(cut -d' ' -f14,15 "/proc/$p/stat" 2>/dev/null)" || continue
    t=$((t + ${f% *} + ${f#* }))
  done
  echo "$t"
}
# cpu_steal: "stolen:total" jiffies of all CPUs since boot (/proc/stat).
cpu_steal() { awk '/^cpu /{ print $9 ":" ($2+$3+$4+$5+$6+$7+$8+$9) }' /proc/stat; }

# one LABEL BIN: a fresh cluster of BIN, loaded and driven; appends "LABEL ops p50 p99
# [rate_p50 rate_p99]" to $work/results.
one() {
  local label="$1" bin="$2" dir="$work/run" i
  rm -rf "$dir" && mkdir -p "$dir"
  "$bin" dev --data-dir "$dir/data" --base-port "$port" --durability "$durability" \
    --timeout-s 60 >"$dir/dev.out" 2>&1 &
  dev=$!
  for i in $(seq 1 300); do
    grep -q "members up" "$dir/dev.out" 2>/dev/null && break
    kill -0 "$dev" 2>/dev/null || break
    sleep 0.2
  done
  grep -q "members up" "$dir/dev.out" || { cat "$dir/dev.out" >&2; echo "$label did not come up" >&2; return 1; }
  "$before" bench --endpoints "$eps" --workload "$workload" --records "$records" \
    --value-size "$value_size" --concurrency "$concurrency" --duration-s "$duration" \
    --json "$dir/closed.json" >"$dir/closed.txt" 2>&1 || { cat "$dir/closed.txt" >&2; return 1; }
  local line
  line="$(jq -r '"\(.throughput_ops_s) \(.all.p50_us/1000) \(.all.p99_us/1000) \(.errors)"' "$dir/closed.json")"
  if [ -n "$rate" ]; then
    local members t0 t1 s0 s1 run_rate="$rate"
    if [ "$rate" = half ]; then run_rate="$(jq -r '(.throughput_ops_s / 2) | floor' "$dir/closed.json")"; fi
    members="$(pgrep -P "$dev" | tr '\n' ' ')"
    t0="$(member_ticks $members)"; s0="$(cpu_steal)"
    "$before" bench --endpoints "$eps" --workload "$workload" --records "$records" --no-load \
      --value-size "$value_size" --concurrency "$concurrency" --duration-s "$duration" \
      --rate "$run_rate" --json "$dir/rate.json" >"$dir/rate.txt" 2>&1 || true
    t1="$(member_ticks $members)"; s1="$(cpu_steal)"
    line="$line $(jq -r '"\(.throughput_ops_s) \(.all.p50_us/1000) \(.all.p99_us/1000) \(.errors) \(.ops)"' "$dir/rate.json")"
    # The members' CPU time per operation: unlike latency, stolen CPU does not inflate it.
    line="$(echo "$line $t0 $t1 $s0 $s1" | awk -v hz="$(getconf CLK_TCK)" '{
      cpu = ($11 - $10) * 1e6 / hz / ($9 > 0 ? $9 : 1); split($12, a, ":"); split($13, b, ":")
      steal = (b[2] > a[2]) ? 100 * (b[1] - a[1]) / (b[2] - a[2]) : 0
      printf "%s %s %s %s %s %s %s %s %.0f %.1f", $1, $2, $3, $4, $5, $6, $7, $8, cpu, steal }')"
  fi
  kill -TERM "$dev" 2>/dev/null || true
  wait "$dev" 2>/dev/null || true
  dev=""
  echo "$label $line" >>"$work/results"
  echo "$label $line" | awk '{printf "  %-6s closed %7.0f ops/s  p50 %6.2f ms  p99 %7.2f ms  errors %d", $1, $2, $3, $4, $5;
    if (NF > 5) printf "  |  at %s: %7.0f ops/s  p50 %6.2f ms  p99 %7.2f ms  errors %d  members %d µs CPU/op  steal %.1f%%", "'"$rate"'", $6, $7, $8, $9, $10, $11;
    printf "\n"}'
}

echo "workload $workload, $records records of $value_size B, concurrency $concurrency, $duration s per run, durability $durability, $rounds ABBA rounds${rate:+, fixed rate $rate ops/s}"
echo "before: $before"
echo "after:  $after"
for r in $(seq 1 "$rounds"); do
  echo "round $r"
  if [ $((r % 2)) = 1 ]; then
    one before "$before"; one after "$after"; one after "$after"; one before "$before"
  else
    one after "$after"; one before "$before"; one before "$before"; one after "$after"
  fi
done
awk '
  { n[$1]++; ops[$1] += $2; p50[$1] += $3; p99[$1] += $4
    if (NF > 5) { rops[$1] += $6; rp50[$1] += $7; rp99[$1] += $8; cpu[$1] += $10 } }
  END {
    for (k in n) { ops[k] /= n[k]; p50[k] /= n[k]; p99[k] /= n[k]; rops[k] /= n[k]; rp50[k] /= n[k]; rp99[k] /= n[k]; cpu[k] /= n[k] }
    printf "mean closed loop: before %.0f ops/s (p50 %.2f, p99 %.2f ms), after %.0f ops/s (p50 %.2f, p99 %.2f ms)\n", ops["before"], p50["before"], p99["before"], ops["after"], p50["after"], p99["after"]
    printf "after/before: throughput %.3f, p50 %.3f, p99 %.3f\n", ops["after"] / ops["before"], p50["after"] / p50["before"], p99["after"] / p99["before"]
    if (rops["before"] > 0)
      printf "fixed rate: before p50 %.2f p99 %.2f ms %.0f µs CPU/op, after p50 %.2f p99 %.2f ms %.0f µs CPU/op; after/before p99 %.3f, CPU/op %.3f\n", rp50["before"], rp99["before"], cpu["before"], rp50["after"], rp99["after"], cpu["after"], rp99["after"] / rp99["before"], (cpu["before"] > 0 ? cpu["after"] / cpu["before"] : 0)
  }' "$work/results"
