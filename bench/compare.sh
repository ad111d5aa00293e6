#!/usr/bin/env bash
# dynamo-rs side by side with the stores a user would pick instead, on this machine in one
# run (issue 9): each system is started on loopback, loaded, driven by the same
# `dynamo bench` workloads (YCSB A, B, C and write-only, closed loop; then workload A at
# fixed rates for the latency-vs-throughput curve), and stopped. Writes a report (markdown
# table, JSON, the curve as CSV and PNG) under the results directory.
#
#   bench/compare.sh            # the full comparison (about 15 minutes)
#   bench/compare.sh --smoke    # seconds: dynamo-rs and etcd, tiny loads, no speed checks
#
# Systems (SYSTEMS, space-separated, default all):
#   dynamo-fsync     3 members (`dynamo dev`), N=3 R=2 W=2, --durability fsync
#   dynamo-periodic  the same with --durability periodic
#   etcd             3 members (etcd v3.6.16 built from source by e2e/apiserver/build.sh),
#                    JSON gateway, linearizable reads
#   cassandra        3 nodes on 127.0.0.1-3 (cassandra-all 5.0.x from Maven Central, java 17),
#                    RF=3, QUORUM reads and writes (needs mvn and java)
#   nginx            nginx serving one static 1 KiB file (workload C only: one HTTP hop)
#
# Environment: RECORDS (default 20000), VALUE_SIZE (1024), CONCURRENCY (32), DURATION_S
# (seconds per closed-loop workload, 20), CURVE_FRACTIONS (fixed rates for the curve, as
# fractions of the system's closed-loop workload A throughput; default
# "0.1 0.25 0.5 0.75 1.0 1.25"), STEP_S (seconds per fixed-rate step, 8), RESULTS (output
# directory, default bench/results/<UTC time>), DYNAMO_BIN (use this binary instead of
# building one), CACHE (downloads and builds, default ~/.cache/dynamo-bench).
# Everything listens on 127.0.0.0/8 only; every run is bounded by its duration.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"

smoke=0
if [ "${1:-}" = "--smoke" ]; then smoke=1; fi

CACHE="${CACHE:-$HOME/.cache/dynamo-bench}"
mkdir -p "$CACHE"
if [ "$smoke" = 1 ]; then
  systems="${SYSTEMS:-dynamo-fsync etcd}"
  records="${RECORDS:-200}"
  duration="${DURATION_S:-2}"
  fractions="${CURVE_FRACTIONS:-0.25 0.5}"
  step="${STEP_S:-1}"
  concurrency="${CONCURRENCY:-8}"
else
  systems="${SYSTEMS:-dynamo-fsync dynamo-periodic etcd cassandra nginx}"
  records="${RECORDS:-20000}"
  duration="${DURATION_S:-20}"
  fractions="${CURVE_FRACTIONS:-0.1 0.25 0.5 0.75 1.0 1.25}"
  step="${STEP_S:-8}"
  concurrency="${CONCURRENCY:-32}"
fi
value_size="${VALUE_SIZE:-1024}"
results="${RESULTS:-bench/results/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$results/raw"
results="$(cd "$results" && pwd)"
work="$(mktemp -d)"
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }

# ---- what the systems need --------------------------------------------------------------
want() { case " $systems " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

if [ -n "${DYNAMO_BIN:-}" ]; then
  bin="$DYNAMO_BIN"
else
  features=()
  if want cassandra; then features=(--features cassandra); fi
  log "building dynamo (release ${features[*]})"
  cargo build --release -q -p dynamo-node --bin dynamo "${features[@]}"
  bin="${CARGO_TARGET_DIR:-target}/release/dynamo"
fi

etcd_bin="$HOME/.cache/dynamo-e2e/etcd-v3.6.16/bin/etcd"
if want etcd && [ ! -x "$etcd_bin" ]; then
  log "building etcd v3.6.16 (e2e/apiserver/build.sh etcd)"
  bash e2e/apiserver/build.sh etcd
fi
nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"
if want nginx && [ ! -x "$nginx_bin" ]; then
  log "installing nginx-light (apt)"
  apt-get install -y -q nginx-light >/dev/null || { apt-get update -q && apt-get install -y -q nginx-light >/dev/null; }
fi
# shellcheck source=bench/lib/cassandra.sh
source "$repo/bench/lib/cassandra.sh"
if want cassandra; then
  log "fetching Cassandra from Maven Central (cached in $CACHE/cassandra-lib)"
  cassandra_fetch
fi
py="python3"
if [ "$smoke" = 0 ]; then
  if [ ! -x "$CACHE/venv/bin/python" ] || ! "$CACHE/venv/bin/python" -c 'import matplotlib' 2>/dev/null; then
    log "installing matplotlib into $CACHE/venv (PyPI)"
    python3 -m venv "$CACHE/venv"
    "$CACHE/venv/bin/pip" install -q matplotlib
  fi
  py="$CACHE/venv/bin/python"
fi

# ---- process bookkeeping ----------------------------------------------------------------
pids=()      # what stop_all ends (only processes this script started)
cleanup() {
  stop_all
  cassandra_stop
  rm -rf "$work"
}
stop_all() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
trap cleanup EXIT

# peak_rss_mib PID...: the sum of the processes' peak resident set (VmHWM), in MiB.
peak_rss_mib() {
  local total=0 p kb
  for p in "$@"; do
    kb="$(awk '/^VmHWM:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)"
    total=$((total + ${kb:-0}))
  done
  echo $((total / 1024))
}

# wait_http URL SECONDS
wait_http() {
  local i
  for i in $(seq 1 "$(($2 * 5))"); do
    curl -fsS --max-time 2 "$1" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  return 1
}

# bench NAME KIND EPS WORKLOAD OUT [args...]: one `dynamo bench` run, its JSON in OUT.
bench() {
  local name="$1" kind="$2" eps="$3" workload="$4" out="$5"
  shift 5
  "$bin" bench --target "$kind" --endpoints "$eps" --label "$name" --workload "$workload" \
    --records "$records" --value-size "$value_size" --concurrency "$concurrency" \
    --json "$out" "$@" >"$out.txt" 2>&1 || {
    cat "$out.txt" >&2
    return 1
  }
  jq -r '"  \(.target) \(.config.workload) rate=\(.config.rate // "closed"): \(.throughput_ops_s | floor) ops/s, p50 \(.all.p50_us/1000) ms, p99 \(.all.p99_us/1000) ms, errors \(.errors)"' "$out" >&2
}

# drive NAME KIND EPS [PID...]: load, the four workloads, the curve, the peak memory.
drive() {
  local name="$1" kind="$2" eps="$3"
  shift 3
  local raw="$results/raw/$name" w peak f rate
  mkdir -p "$raw"
  if [ "$kind" = nginx ]; then
    bench "$name" "$kind" "$eps" c "$raw/c.json" --no-load --duration-s "$duration"
  else
    log "$name: loading $records records, then workloads a b c write ($duration s each)"
    bench "$name" "$kind" "$eps" a "$raw/a.json" --duration-s "$duration"
    grep -o 'loaded .*' "$raw/a.json.txt" >"$raw/load.txt" || true
    for w in b c write; do
      bench "$name" "$kind" "$eps" "$w" "$raw/$w.json" --no-load --duration-s "$duration"
    done
    peak="$(jq -r '.throughput_ops_s | floor' "$raw/a.json")"
    log "$name: workload A at fixed rates (fractions of $peak ops/s: $fractions), $step s each"
    for f in $fractions; do
      rate="$(awk -v p="$peak" -v f="$f" 'BEGIN {r = int(p * f); print (r < 1 ? 1 : r)}')"
      # An overloaded step may time out some requests: record it, do not stop.
      bench "$name" "$kind" "$eps" a "$raw/curve-$f.json" --no-load --duration-s "$step" \
        --rate "$rate" || log "$name: the step at $rate ops/s had errors (kept in the report)"
    done
  fi
  peak_rss_mib "$@" >"$raw/peak_rss_mib"
  log "$name: peak RSS of the cluster $(cat "$raw/peak_rss_mib") MiB"
}

# ---- the systems ------------------------------------------------------------------------
dynamo_port=7600
run_dynamo() {
  local name="$1" durability="$2" dir="$work/$1"
  mkdir -p "$dir"
  log "$name: starting 3 members (dynamo dev, N=3 R=2 W=2, durability $durability)"
  "$bin" dev --data-dir "$dir/data" --base-port "$dynamo_port" --durability "$durability" \
    --timeout-s 120 >"$dir/dev.out" 2>&1 &
  local dev=$!
  pids=("$dev")
  local i
  for i in $(seq 1 650); do
    grep -q "members up" "$dir/dev.out" 2>/dev/null && break
    kill -0 "$dev" 2>/dev/null || break
    sleep 0.2
  done
  if ! grep -q "members up" "$dir/dev.out"; then
    cat "$dir/dev.out" >&2
    # The members' logs go with the run's temporary directory: show how each ended.
    local f
    for f in "$dir"/data/node-*.log; do
      [ -f "$f" ] && { echo "--- $(basename "$f"), last 20 lines:" >&2; tail -n 20 "$f" >&2; }
    done
    log "$name did not come up"
    return 1
  fi
  local members
  mapfile -t members < <(pgrep -P "$dev")
  drive "$name" dynamo "127.0.0.1:$dynamo_port,127.0.0.1:$((dynamo_port + 1)),127.0.0.1:$((dynamo_port + 2))" "${members[@]}"
  stop_all
}

etcd_port=23790
run_etcd() {
  local name=etcd dir="$work/etcd" i cluster="" eps=""
  mkdir -p "$dir"
  for i in 0 1 2; do
    cluster+="${cluster:+,}e$i=http://127.0.0.1:$((etcd_port + 10 + i))"
    eps+="${eps:+,}127.0.0.1:$((etcd_port + i))"
  done
  log "etcd: starting 3 members ($("$etcd_bin" --version | head -1))"
  pids=()
  for i in 0 1 2; do
    "$etcd_bin" --name "e$i" --data-dir "$dir/e$i" \
      --listen-client-urls "http://127.0.0.1:$((etcd_port + i))" \
      --advertise-client-urls "http://127.0.0.1:$((etcd_port + i))" \
      --listen-peer-urls "http://127.0.0.1:$((etcd_port + 10 + i))" \
      --initial-advertise-peer-urls "http://127.0.0.1:$((etcd_port + 10 + i))" \
      --initial-cluster "$cluster" --initial-cluster-token bench --initial-cluster-state new \
      --log-level warn >"$dir/e$i.log" 2>&1 &
    pids+=("$!")
  done
  for i in 0 1 2; do
    wait_http "http://127.0.0.1:$((etcd_port + i))/health" 60 || { tail -n 30 "$dir/e$i.log" >&2; log "etcd did not come up"; return 1; }
  done
  drive etcd etcd "$eps" "${pids[@]}"
  stop_all
}

nginx_port=18080
run_nginx() {
  local dir="$work/nginx"
  mkdir -p "$dir/www" "$dir/tmp"
  head -c 1024 /dev/urandom >"$dir/www/value.bin"
  cat >"$dir/nginx.conf" <<CONF
daemon off;
user root;
worker_processes auto;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir/tmp/body;
  proxy_temp_path $dir/tmp/proxy;
  fastcgi_temp_path $dir/tmp/fastcgi;
  uwsgi_temp_path $dir/tmp/uwsgi;
  scgi_temp_path $dir/tmp/scgi;
  keepalive_requests 1000000;
  default_type application/octet-stream;
  server {
    listen 127.0.0.1:$nginx_port;
    root $dir/www;
    location /kv/ { rewrite ^ /value.bin break; }
  }
}
CONF
  log "nginx: starting ($("$nginx_bin" -v 2>&1))"
  "$nginx_bin" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" &
  local master=$!
  pids=("$master")
  wait_http "http://127.0.0.1:$nginx_port/kv/x" 30 || { cat "$dir/error.log" >&2; log "nginx did not come up"; return 1; }
  local workers
  mapfile -t workers < <(pgrep -P "$master")
  drive nginx nginx "127.0.0.1:$nginx_port" "$master" "${workers[@]}"
  stop_all
}

cassandra_port=19042
run_cassandra() {
  log "cassandra: starting 3 nodes on 127.0.0.1-3 (cassandra-all $(basename "$(ls "$CACHE"/cassandra-lib/cassandra-all-*.jar)" .jar | sed 's/cassandra-all-//'), java $(java -version 2>&1 | head -1 | awk -F'"' '{print $2}'))"
  cassandra_start "$work/cassandra" "$cassandra_port"
  drive cassandra cassandra "127.0.0.1:$cassandra_port,127.0.0.2:$cassandra_port,127.0.0.3:$cassandra_port" "${CASS_PIDS[@]}"
  cassandra_stop
}

# ---- run --------------------------------------------------------------------------------
started=$(date +%s)
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "cpu: $(nproc) x $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
  echo "memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
  echo "kernel: $(uname -r)"
  echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "settings: records=$records value_size=$value_size concurrency=$concurrency duration_s=$duration step_s=$step fractions=$fractions"
} >"$results/machine.txt"
for s in $systems; do
  case "$s" in
    dynamo-fsync) run_dynamo dynamo-fsync fsync ;;
    dynamo-periodic) run_dynamo dynamo-periodic periodic ;;
    etcd) run_etcd ;;
    nginx) run_nginx ;;
    cassandra) run_cassandra ;;
    *) echo "unknown system $s" >&2; exit 2 ;;
  esac
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$results/machine.txt"
echo "wall time: $(($(date +%s) - started)) s" >>"$results/machine.txt"

plot=()
if [ "$smoke" = 1 ]; then plot=(--no-plot); fi
"$py" "$repo/bench/lib/report.py" "$results" "${plot[@]}"
log "report: $results/report.md"
cat "$results/report.md"
