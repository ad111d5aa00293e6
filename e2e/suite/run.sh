#!/usr/bin/env bash
# Kubernetes end-to-end suite of dynamo-rs: cluster-agnostic (any cluster a kubeconfig
# reaches, whose nodes can run the two images). It installs the operator with the Helm chart
# charts/dynamo-operator, applies DynamoClusters and runs these scenarios in order, against
# one DynamoCluster `kv` (3 members, N=3 R=2 W=2) under a continuous client workload:
#
#   install        helm install, 3-member cluster Available, write and read through the Service
#   pod-delete     delete member kv-1: it comes back on the same claim with its data; no read fails
#   scale-up       3 -> 5: Rebalancing, then Available, partitions balanced (max - min <= 1)
#   scale-down     5 -> 3: members leave the ring first, their claims are deleted
#   rolling-update spec.image changed: one member at a time, quorum (and Available) kept
#   invalid        w > n rejected at admission with the CRD's message; scale below n too
#   delete         deleting the DynamoCluster removes everything it owns (and its claims)
#
# The workload (e2e/suite/workload.sh) writes new keys and reads acknowledged ones through
# the client Service via `kubectl proxy` (the API server's service proxy), so the host needs
# no route to pod or Service IPs. After every scenario every acknowledged write is read back
# (R=2); a key that cannot be read back within 60 s is a lost write and fails the suite.
# Every wait is a bounded poll or `kubectl wait --timeout`; there are no fixed sleeps used as
# synchronisation. On failure it dumps `kubectl get all,events`, the DynamoCluster, the
# operator's and the members' logs to the artifacts directory and prints their tails.
#
# usage: e2e/suite/run.sh --node-image REF --operator-image REF [options]
#   --node-image REF          node image (DynamoCluster spec.image)            [$NODE_IMAGE]
#   --operator-image REF      operator image (repo:tag or repo@sha256:...)     [$OPERATOR_IMAGE]
#   --node-image-update REF   second tag of the node image for rolling-update; without it the
#                             rollout is triggered by a pod annotation instead [$NODE_IMAGE_UPDATE]
#   --kubeconfig FILE         default $KUBECONFIG / ~/.kube/config
#   --storage-class NAME      StorageClass of the member claims (default: the cluster's
#                             default class)                                   [$STORAGE_CLASS]
#   --namespace NS            namespace of the DynamoClusters (default dynamo-e2e; the operator
#                             goes to NS-system)                               [$E2E_NAMESPACE]
#   --pull-policy POLICY      operator imagePullPolicy (default IfNotPresent)  [$PULL_POLICY]
#   --artifacts DIR           default e2e/.work/suite/<time>                   [$ARTIFACTS]
#   --keep                    leave everything installed at the end (default: uninstall)
# Environment: HELM (default: helm on PATH), KUBECTL (default: kubectl on PATH),
# E2E_STEP_TIMEOUT (seconds, default 300: the bound of each wait), E2E_MAX_UNAVAILABLE
# (default 0: store `503 unavailable` answers tolerated per scenario, still reported),
# E2E_MEMBER_LOG_LEVEL (the DynamoCluster's logLevel; default info, with replication and
# RPC failures at debug).
# Needs helm 3, kubectl, curl, jq. The nodes must be able to run the images (pre-loaded with
# imagePullPolicy IfNotPresent, e.g. `kind load docker-image`, or pullable).
set -euo pipefail

SUITE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SUITE_DIR/../.." && pwd)"
CHART="$REPO_ROOT/charts/dynamo-operator"

NODE_IMAGE="${NODE_IMAGE:-}"
OPERATOR_IMAGE="${OPERATOR_IMAGE:-}"
NODE_IMAGE_UPDATE="${NODE_IMAGE_UPDATE:-}"
STORAGE_CLASS="${STORAGE_CLASS:-}"
NS="${E2E_NAMESPACE:-dynamo-e2e}"
PULL_POLICY="${PULL_POLICY:-IfNotPresent}"
ARTIFACTS="${ARTIFACTS:-}"
KEEP=0
STEP_TIMEOUT="${E2E_STEP_TIMEOUT:-300}"
MAX_UNAVAILABLE="${E2E_MAX_UNAVAILABLE:-0}"
# Replication and RPC failures at debug level: a refused request can be explained from the
# member logs in the artifacts.
MEMBER_LOG_LEVEL="${E2E_MEMBER_LOG_LEVEL:-info,dynamo::replication=debug,dynamo::rpc::client=debug}"
TOLERATED=() NOTED=()
while [ $# -gt 0 ]; do
  case "$1" in
    --node-image) NODE_IMAGE="$2"; shift 2 ;;
    --operator-image) OPERATOR_IMAGE="$2"; shift 2 ;;
    --node-image-update) NODE_IMAGE_UPDATE="$2"; shift 2 ;;
    --kubeconfig) export KUBECONFIG="$2"; shift 2 ;;
    --storage-class) STORAGE_CLASS="$2"; shift 2 ;;
    --namespace) NS="$2"; shift 2 ;;
    --pull-policy) PULL_POLICY="$2"; shift 2 ;;
    --artifacts) ARTIFACTS="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
OP_NS="$NS-system"
RELEASE=dynamo-operator
DC=kv
ARTIFACTS="${ARTIFACTS:-$REPO_ROOT/e2e/.work/suite/$(date +%Y%m%d-%H%M%S)}"
WL="$ARTIFACTS/workload"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[%s] FAIL: %s\n' "$(date +%H:%M:%S)" "$*" >&2; exit 1; }

[ -n "$NODE_IMAGE" ] && [ -n "$OPERATOR_IMAGE" ] || die "--node-image and --operator-image are required (see --help)"
KUBECTL="${KUBECTL:-kubectl}"
HELM="${HELM:-helm}"
for t in "$KUBECTL" "$HELM" curl jq shuf; do
  command -v "$t" >/dev/null 2>&1 || die "$t not found (needs helm 3, kubectl, curl, jq, coreutils)"
done
k() { "$KUBECTL" "$@"; }
kn() { "$KUBECTL" -n "$NS" "$@"; }
mkdir -p "$WL"
# Helm keeps no state of ours outside the artifacts.
export HELM_CACHE_HOME="$ARTIFACTS/helm/cache" HELM_CONFIG_HOME="$ARTIFACTS/helm/config" HELM_DATA_HOME="$ARTIFACTS/helm/data"

# ------------------------------------------------------------------ helpers
ms() { local t="${EPOCHREALTIME/./}"; echo "${t:0:13}"; }

# wait_until TIMEOUT DESCRIPTION COMMAND... : polls COMMAND once a second until it succeeds.
wait_until() {
  local timeout="$1" what="$2"; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || die "timed out after ${timeout}s waiting for $what"
    sleep 1
  done
}

dc_json() { kn get dc "$DC" -o json; }
# cond TYPE : prints STATUS/REASON of a condition of the DynamoCluster.
cond() { dc_json | jq -r --arg t "$1" '(.status.conditions // [])[] | select(.type == $t) | "\(.status)/\(.reason)"'; }

# settled N : the DynamoCluster has N ready members, status is current, Available=True,
# Progressing=False, Rebalancing=False, and every member is Up.
settled() {
  dc_json | jq -e --argjson n "$1" '
    (.status // {}) as $s
    | ($s.conditions // [] | map({(.type): .status}) | add // {}) as $c
    | $s.observedGeneration == .metadata.generation
      and $s.readyMembers == $n and (($s.members // []) | length) == $n
      and all(($s.members // [])[]; .state == "Up" and .ready)
      and $c.Available == "True" and $c.Progressing == "False" and $c.Rebalancing == "False"'
}
wait_settled() {
  local n="$1" t0=$SECONDS
  wait_until "$STEP_TIMEOUT" "DynamoCluster $DC settled with $n members (Available, not Progressing, not Rebalancing, all Up)" settled "$n"
  log "  settled with $n members after $((SECONDS - t0)) s: $(kn get dc "$DC" --no-headers 2>/dev/null)"
}

# counts T0 T1 : workload results between two epoch-ms times.
counts() {
  cat "$WL"/ops.write "$WL"/ops.read 2>/dev/null | awk -v a="$1" -v b="$2" '
    $1 >= a && $1 <= b { n[$2 ":" $3]++ }
    END { for (x in n) printf "%s=%d ", x, n[x]; print "" }' | tr ' ' '\n' | sort | tr '\n' ' '
}
# count T0 T1 KIND REGEX : number of workload results of KIND (write|read) matching REGEX.
count() {
  cat "$WL/ops.$3" 2>/dev/null | awk -v a="$1" -v b="$2" -v re="^($4)\$" '$1 >= a && $1 <= b && $3 ~ re { n++ } END { print n + 0 }'
}
# ops_clean T0 T1 WHAT [WRITES] : fails if, in the window, a read failed at R=2 (store error,
# stale or wrong value); with WRITES=strict also if the store refused a write (503
# unavailable: W not reached; the rolling update must keep both quorums). Otherwise refused
# writes (never acknowledged, so nothing is lost) are reported in the summary. Requires that
# the workload made progress in the window.
ops_clean() {
  local bad okr okw tr wbad
  wbad="$(count "$1" "$2" write 'dyn:.*')"
  bad="$(count "$1" "$2" read 'dyn:.*|stale|wrong')"
  if [ "${4:-}" = strict ]; then
    bad=$((bad + wbad))
  elif [ "$wbad" != 0 ]; then
    log "  NOTE: the store refused $wbad writes during $3 (not acknowledged, so not lost):"
    grep -h ' write ' "$WL"/errors.write 2>/dev/null | awk -v a="$1" -v b="$2" '$1 >= a && $1 <= b' | head -n 5 >&2
    NOTED+=("$3: $wbad writes refused: $(grep -h ' write ' "$WL"/errors.write 2>/dev/null | awk -v a="$1" -v b="$2" '$1 >= a && $1 <= b' | head -n 1 | cut -d' ' -f4- | tr -s ' ' | cut -c1-200)")
  fi
  okr="$(count "$1" "$2" read ok)"
  okw="$(count "$1" "$2" write ok)"
  tr="$(count "$1" "$2" read 'transport:.*')"
  log "  workload during $3: $(counts "$1" "$2")"
  # E2E_MAX_UNAVAILABLE: store `unavailable` answers tolerated per scenario (default 0);
  # they are listed and counted in the summary either way.
  local unav
  unav="$(count "$1" "$2" read 'dyn:unavailable')"
  [ "${4:-}" != strict ] || unav=$((unav + $(count "$1" "$2" write 'dyn:unavailable')))
  if [ "$unav" -gt 0 ] && [ "$unav" = "$bad" ] && [ "$unav" -le "$MAX_UNAVAILABLE" ]; then
    log "  WARNING: $unav requests answered 503 unavailable during $3 (tolerated: E2E_MAX_UNAVAILABLE=$MAX_UNAVAILABLE)"
    grep -h . "$WL"/errors.* 2>/dev/null | awk -v a="$1" -v b="$2" '$1 >= a && $1 <= b' | head -n 10 >&2
    TOLERATED+=("$3: $unav unavailable")
    bad=0
  fi
  if [ "$bad" != 0 ]; then
    grep -E ' (dyn:|stale|wrong)' "$WL/ops.read" "$WL/ops.write" | awk -F: -v a="$1" -v b="$2" '{ split($2, f, " ") } f[1] >= a && f[1] <= b' | head -n 20 >&2
    grep -h . "$WL"/errors.* 2>/dev/null | awk -v a="$1" -v b="$2" '$1 >= a && $1 <= b' | head -n 20 >&2
    die "$bad requests failed at the default quorum (R=2/W=2) during $3"
  fi
  [ "$okr" -gt 0 ] && [ "$okw" -gt 0 ] || die "the workload made no progress during $3 (writes ok: $okw, reads ok: $okr)"
  [ "$tr" = 0 ] || log "  note: $tr reads got no answer from the store (transport: the API server proxy could not reach a member); they are not quorum failures"
}

# verify_all WHAT : every acknowledged write reads back with its value at R=2. Keys that do
# not at first are re-read for up to 60 s (stale replicas, hints being handed back); any key
# still unreadable after that is a lost write.
verify_all() {
  local what="$1" snap="$WL/verify" t0=$SECONDS n bad
  rm -rf "$snap" && mkdir -p "$snap/out"
  cp "$WL/acked" "$snap/acked" 2>/dev/null || : >"$snap/acked"
  n="$(wc -l <"$snap/acked")"
  [ "$n" -gt 0 ] || die "no acknowledged writes to verify ($what)"
  awk -v base="$BASE" -v dir="$snap/out" '{ printf "url = \"%s/v1/kv/%s?r=2\"\noutput = \"%s/%s\"\n", base, $1, dir, $1 }' \
    "$snap/acked" >"$snap/curl.cfg"
  curl -s --max-time 600 -K "$snap/curl.cfg" -w '%{http_code}\n' >"$snap/codes" 2>/dev/null || true
  read_back() {  # prints the keys whose file does not hold the value
    awk -v dir="$snap/out" '{
      f = dir "/" $1; v = ""; ok = 0
      if ((getline v < f) > 0 && v == $2 && (getline x < f) <= 0) ok = 1
      close(f); if (!ok) print $1 }' "$snap/acked"
  }
  read_back >"$snap/bad"
  bad="$(wc -l <"$snap/bad")"
  if [ "$bad" -gt 0 ]; then
    log "  $bad of $n acknowledged keys did not read back at first ($(head -n 5 "$snap/bad" | tr '\n' ' ')); re-reading for up to 60 s"
    echo "$what: $bad stale at first read" >>"$ARTIFACTS/stale-reads.txt"
    local deadline=$((SECONDS + 60))
    while [ -s "$snap/bad" ]; do
      awk -v base="$BASE" -v dir="$snap/out" '{ printf "url = \"%s/v1/kv/%s?r=2\"\noutput = \"%s/%s\"\n", base, $1, dir, $1 }' \
        "$snap/bad" >"$snap/curl.cfg"
      curl -s --max-time 120 -K "$snap/curl.cfg" >/dev/null 2>&1 || true
      read_back | grep -Fxf "$snap/bad" >"$snap/bad.new" || true
      mv "$snap/bad.new" "$snap/bad"
      [ -s "$snap/bad" ] || break
      [ "$SECONDS" -lt "$deadline" ] || { head -n 20 "$snap/bad" >&2; die "$(wc -l <"$snap/bad") of $n acknowledged writes are lost ($what)"; }
      sleep 2
    done
  fi
  log "  all $n acknowledged writes read back at R=2 ($what, $((SECONDS - t0)) s)"
  VERIFIED="$n"
}

# ------------------------------------------------------------------ background processes
BG_PIDS=()
start_bg() { "$@" & BG_PIDS+=("$!"); }
stop_bg() {
  touch "$WL/stop"
  local p
  [ -f "$WL/watch.pid" ] && kill "$(cat "$WL/watch.pid")" 2>/dev/null
  # shellcheck disable=SC2046
  [ -f "$WL/followers.pids" ] && kill $(cat "$WL/followers.pids") 2>/dev/null
  rm -f "$WL/followers.pids"
  for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${BG_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  BG_PIDS=()
}

start_proxy() {
  # Emptied here, not by the redirection below: that happens in the background child, and
  # the wait could still read the previous proxy's line and port.
  : >"$ARTIFACTS/kubectl-proxy.log"
  # "$KUBECTL" itself, not the function k: $! must be kubectl's PID for stop_bg.
  "$KUBECTL" proxy --port=0 >>"$ARTIFACTS/kubectl-proxy.log" 2>&1 &
  PROXY_PID=$!
  BG_PIDS+=("$PROXY_PID")
  wait_until 30 "kubectl proxy to listen" grep -q 'Starting to serve on' "$ARTIFACTS/kubectl-proxy.log"
  local port
  port="$(sed -n 's/.*Starting to serve on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$ARTIFACTS/kubectl-proxy.log")"
  PROXY="http://127.0.0.1:$port"
  BASE="$PROXY/api/v1/namespaces/$NS/services/$DC:8080/proxy"
}

# Records every status the DynamoCluster goes through (one JSON line each) in status.log.
watch_status() {
  while [ ! -e "$WL/stop" ]; do
    # kubectl in the background with its PID recorded, so that stop_bg can end it.
    "$KUBECTL" -n "$NS" get dc "$DC" -w -o json 2>>"$ARTIFACTS/status-watch.err" > >(jq -c --unbuffered '{
      t: (now * 1000 | floor), gen: .metadata.generation, og: .status.observedGeneration,
      ready: .status.readyMembers, replicas: .status.replicas, bal: .status.partitionBalance,
      handoffs: .status.handoffsPending,
      c: ((.status.conditions // []) | map({(.type): "\(.status)/\(.reason)"}) | add),
      m: ((.status.members // []) | map({(.name): .state}) | add)}' >>"$ARTIFACTS/status.log" 2>/dev/null) &
    echo "$!" >"$WL/watch.pid"
    wait "$!" || true
    [ -e "$WL/stop" ] || sleep 1
  done
}

# Follows the log of every member pod (each incarnation: a deleted pod's log is gone from
# the API), into $ARTIFACTS/member-logs/<pod>.<uid>.log.
follow_member_logs() {
  mkdir -p "$ARTIFACTS/member-logs"
  local pod uid f
  while [ ! -e "$WL/stop" ]; do
    while read -r pod uid; do
      [ -n "$uid" ] || continue
      f="$ARTIFACTS/member-logs/$pod.$uid.log"
      [ -e "$f" ] && continue
      : >"$f"
      "$KUBECTL" -n "$NS" logs -f "$pod" --timestamps >>"$f" 2>&1 &
      echo "$!" >>"$WL/followers.pids"
    done < <("$KUBECTL" -n "$NS" get pods -l app.kubernetes.io/instance="$DC" --field-selector=status.phase=Running \
               -o jsonpath='{range .items[*]}{.metadata.name} {.metadata.uid}{"\n"}{end}' 2>/dev/null)
    sleep 2
  done
}

# ------------------------------------------------------------------ failure dump and cleanup
SCENARIO=setup
RESULTS=()
dump() {
  local d="$ARTIFACTS/dump" p
  mkdir -p "$d"
  log "dumping cluster state to $d"
  for n in "$NS" "$OP_NS"; do
    k -n "$n" get all,events,pvc,pdb,cm,secret -o wide >"$d/get-all-$n.txt" 2>&1 || true
    k -n "$n" get events --sort-by=.lastTimestamp >"$d/events-$n.txt" 2>&1 || true
  done
  k get pv,sc,nodes -o wide >"$d/cluster.txt" 2>&1 || true
  kn get dc -o yaml >"$d/dynamoclusters.yaml" 2>&1 || true
  k -n "$OP_NS" logs deploy/"$RELEASE" --tail=-1 >"$d/operator.log" 2>&1 || true
  k -n "$OP_NS" logs deploy/"$RELEASE" --previous --tail=-1 >"$d/operator-previous.log" 2>/dev/null || true
  for p in $(kn get pods -l app.kubernetes.io/name=dynamo -o name 2>/dev/null); do
    kn logs "$p" --tail=-1 >"$d/${p#pod/}.log" 2>&1 || true
    kn logs "$p" --previous --tail=-1 >"$d/${p#pod/}-previous.log" 2>/dev/null || true
    kn describe "$p" >"$d/${p#pod/}-describe.txt" 2>&1 || true
  done
  {
    echo "===== kubectl get all,events -n $NS"; cat "$d/get-all-$NS.txt"
    echo "===== kubectl get all,events -n $OP_NS"; cat "$d/get-all-$OP_NS.txt"
    echo "===== DynamoCluster status"; kn get dc "$DC" -o json 2>/dev/null | jq '.status' || true
    echo "===== operator log (last 60 lines)"; tail -n 60 "$d/operator.log"
    for p in "$d"/"$DC"-[0-9]*.log; do
      [ -f "$p" ] || continue
      echo "===== $(basename "$p") (last 25 lines)"; tail -n 25 "$p"
    done
    echo "===== last workload results"; tail -n 5 "$WL/ops.write" "$WL/ops.read" 2>/dev/null
    echo "===== member logs of every pod incarnation (warnings and errors, last 30): $ARTIFACTS/member-logs/"
    grep -h -E '"level":"(WARN|ERROR)"' "$ARTIFACTS"/member-logs/*.log 2>/dev/null | sort | tail -n 30
  } >&2 || true
}

cleanup() {
  local rc=$?
  set +e
  stop_bg
  if [ "$rc" != 0 ]; then
    RESULTS+=("$SCENARIO FAILED $((SECONDS - SCEN_T0))s")
    dump
  fi
  if [ "$KEEP" = 0 ]; then
    log "cleanup: DynamoClusters, namespace $NS, release $RELEASE, CRD"
    kn delete dc --all --timeout=120s >/dev/null 2>&1
    k delete namespace "$NS" --timeout=120s >/dev/null 2>&1
    "$HELM" uninstall "$RELEASE" -n "$OP_NS" --wait --timeout 120s >/dev/null 2>&1
    k delete namespace "$OP_NS" --timeout=120s >/dev/null 2>&1
    # The chart keeps its CRD on uninstall (helm.sh/resource-policy: keep); the suite made it.
    [ "$CRD_OURS" = 1 ] && k delete crd dynamoclusters.dynamo.dev --timeout=60s >/dev/null 2>&1
  fi
  {
    echo
    echo "==== dynamo-rs Kubernetes e2e: $( [ "$rc" = 0 ] && echo PASSED || echo FAILED ) in $SECONDS s (artifacts: $ARTIFACTS)"
    printf '  %s\n' "${RESULTS[@]}"
    [ ${#NOTED[@]} = 0 ] || printf '  NOTE %s\n' "${NOTED[@]}"
    [ ${#TOLERATED[@]} = 0 ] || echo "  TOLERATED quorum failures (E2E_MAX_UNAVAILABLE=$MAX_UNAVAILABLE): ${TOLERATED[*]}"
    [ ! -s "$ARTIFACTS/stale-reads.txt" ] || { echo "  stale reads seen during verification (all keys then read back):"; sed 's/^/    /' "$ARTIFACTS/stale-reads.txt"; }
  } | tee "$ARTIFACTS/summary.txt"
  exit "$rc"
}
CRD_OURS=0
SCEN_T0=$SECONDS
trap cleanup EXIT
trap 'exit 130' INT TERM

# scenario NAME : starts timing a scenario (the previous one passed).
scenario() {
  SCENARIO="$1" SCEN_T0=$SECONDS SCEN_MS="$(ms)"
  log "=== scenario $1"
}
passed() {
  RESULTS+=("$SCENARIO passed $((SECONDS - SCEN_T0))s ${1:-}")
  log "=== $SCENARIO passed in $((SECONDS - SCEN_T0)) s"
}

# ------------------------------------------------------------------ the DynamoCluster
dc_manifest() {  # NAME REPLICAS W
  cat <<EOF
apiVersion: dynamo.dev/v1alpha1
kind: DynamoCluster
metadata: {name: $1, namespace: $NS}
spec:
  replicas: $2
  image: $NODE_IMAGE
  replication: {"n": 3, r: 2, w: $3}
  partitions: 64
  storage:
    size: 64Mi
$( [ -n "$STORAGE_CLASS" ] && echo "    storageClassName: $STORAGE_CLASS" )
    reclaimPolicy: Delete
  resources:
    requests: {cpu: 20m, memory: 32Mi}
    limits: {memory: 256Mi}
  gossipIntervalMs: 500
  antiEntropyIntervalSeconds: 10
  logLevel: "$MEMBER_LOG_LEVEL"
  pod:
    terminationGracePeriodSeconds: 30
EOF
}

# helm_image_args REF : --set flags for image.repository/tag/digest.
helm_image_args() {
  local ref="$1" repo tag=""
  if [[ "$ref" == *@* ]]; then
    echo "--set image.repository=${ref%@*} --set image.digest=${ref#*@}"; return
  fi
  repo="$ref"
  if [[ "${ref##*/}" == *:* ]]; then repo="${ref%:*}" tag="${ref##*:}"; fi
  [ -n "$tag" ] || die "the operator image needs a tag or digest: $ref"
  echo "--set image.repository=$repo --set image.tag=$tag"
}

# ================================================================== scenarios
log "artifacts: $ARTIFACTS"
log "cluster: $(k config current-context 2>/dev/null || echo '?'), server $(k version -o json 2>/dev/null | jq -r '.serverVersion.gitVersion')"
log "images: node $NODE_IMAGE, update ${NODE_IMAGE_UPDATE:-<none: pod annotation>}, operator $OPERATOR_IMAGE; storage class ${STORAGE_CLASS:-<default>}"

# ---- install
scenario install
k get crd dynamoclusters.dynamo.dev >/dev/null 2>&1 || CRD_OURS=1
img_args="$(helm_image_args "$OPERATOR_IMAGE")"
# shellcheck disable=SC2086
"$HELM" upgrade --install "$RELEASE" "$CHART" -n "$OP_NS" --create-namespace \
  $img_args --set image.pullPolicy="$PULL_POLICY" \
  --set 'operator.logLevel=dynamo_operator=debug\,info' --wait --timeout "${STEP_TIMEOUT}s" >"$ARTIFACTS/helm-install.log" 2>&1 \
  || { cat "$ARTIFACTS/helm-install.log" >&2; die "helm install of $CHART failed"; }
k wait crd/dynamoclusters.dynamo.dev --for=condition=Established --timeout=60s >/dev/null
k -n "$OP_NS" rollout status deploy/"$RELEASE" --timeout="${STEP_TIMEOUT}s" >/dev/null
log "  operator installed: $(k -n "$OP_NS" get deploy "$RELEASE" --no-headers)"
k create namespace "$NS" --dry-run=client -o yaml | k apply -f - >/dev/null
dc_manifest "$DC" 3 2 | k apply -f - >/dev/null
start_bg watch_status
start_bg follow_member_logs
kn wait dc/"$DC" --for=condition=Available --timeout="${STEP_TIMEOUT}s" >/dev/null
wait_settled 3
start_proxy
# One write and read by hand, then the workload.
code="$(curl -s -o "$ARTIFACTS/put.out" -w '%{http_code}' -X PUT --data-binary hello-e2e "$BASE/v1/kv/e2e-hello")"
[ "$code" = 204 ] || die "PUT through the Service answered $code: $(cat "$ARTIFACTS/put.out")"
got="$(curl -s -f "$BASE/v1/kv/e2e-hello?r=2")" || die "GET through the Service failed"
[ "$got" = hello-e2e ] || die "GET through the Service returned '$got'"
echo "e2e-hello hello-e2e" >>"$WL/acked"
log "  PUT/GET e2e-hello through Service $DC: ok"
WORKLOAD_RUN_ID="$(date +%s)" start_bg "$SUITE_DIR/workload.sh" write "$BASE" "$WL"
start_bg "$SUITE_DIR/workload.sh" read "$BASE" "$WL"
acked_at_least() { [ "$(wc -l <"$WL/acked")" -ge "$1" ]; }
wait_until 60 "the workload to acknowledge 20 writes" acked_at_least 20
ops_clean "$SCEN_MS" "$(ms)" install
passed "(members $(kn get pods -l app.kubernetes.io/instance=$DC --no-headers | wc -l))"

# ---- delete a member pod
scenario pod-delete
victim="$DC-1"
old_uid="$(kn get pod "$victim" -o jsonpath='{.metadata.uid}')"
pvc_uid="$(kn get pvc "data-$victim" -o jsonpath='{.metadata.uid}')"
metric() {  # POD NAME : a gauge of the member, through the API server's pod proxy
  curl -sf "$PROXY/api/v1/namespaces/$NS/pods/$1:8080/proxy/metrics" | awk -v m="$2" '$1 == m { printf "%d\n", $2 }'
}
keys_before="$(metric "$victim" dynamo_storage_keys)"
log "  $victim holds ${keys_before:-?} keys (claim data-$victim uid $pvc_uid); deleting the pod"
kn delete pod "$victim" --wait=false >/dev/null
recreated() { local u; u="$(kn get pod "$victim" -o jsonpath='{.metadata.uid}')" && [ -n "$u" ] && [ "$u" != "$old_uid" ]; }
wait_until "$STEP_TIMEOUT" "$victim to be recreated" recreated
kn wait pod/"$victim" --for=condition=Ready --timeout="${STEP_TIMEOUT}s" >/dev/null
wait_settled 3
[ "$(kn get pvc "data-$victim" -o jsonpath='{.metadata.uid}')" = "$pvc_uid" ] || die "$victim came back on another claim"
# Its data came back with it: the storage gauge (refreshed every 2 s) shows at least the keys
# it held before (it also gets the writes it missed, through hints and anti-entropy).
keys_ok() { local n; n="$(metric "$victim" dynamo_storage_keys)"; [ -n "$n" ] && [ "$n" -ge "${keys_before:-1}" ] && [ "$n" -gt 0 ]; }
wait_until 60 "$victim to report at least ${keys_before:-1} stored keys" keys_ok
log "  $victim is back on claim $pvc_uid with $(metric "$victim" dynamo_storage_keys) keys"
ops_clean "$SCEN_MS" "$(ms)" pod-delete
verify_all pod-delete
passed "(keys before/after: ${keys_before:-?}/$(metric "$victim" dynamo_storage_keys); acked writes verified: $VERIFIED)"

# ---- scale 3 -> 5
scenario scale-up
kn scale dc "$DC" --replicas=5 >/dev/null
wait_settled 5
t1="$(ms)"
awk -v a="$SCEN_MS" '{ if (match($0, /"t":[0-9]+/) && substr($0, RSTART + 4, RLENGTH - 4) + 0 >= a) print }' \
  "$ARTIFACTS/status.log" >"$ARTIFACTS/status-scale-up.log"
grep -q '"Rebalancing":"True' "$ARTIFACTS/status-scale-up.log" || die "Rebalancing=True was never seen while scaling up (status.log)"
bal="$(dc_json | jq -r '"\(.status.partitionBalance.min) \(.status.partitionBalance.max)"')"
read -r bmin bmax <<<"$bal"
[ $((bmax - bmin)) -le 1 ] && [ "$bmin" -gt 0 ] || die "partitions not balanced over 5 members: min $bmin max $bmax"
log "  Rebalancing seen, then Available; partitions per member: min $bmin max $bmax (64 over 5)"
ops_clean "$SCEN_MS" "$t1" scale-up
verify_all scale-up
passed "(partitions min/max $bmin/$bmax; acked writes verified: $VERIFIED)"

# ---- scale 5 -> 3
scenario scale-down
kn scale dc "$DC" --replicas=3 >/dev/null
gone() { ! kn get "$1" >/dev/null 2>&1; }
for i in 3 4; do
  wait_until "$STEP_TIMEOUT" "pod $DC-$i to be gone" gone pod/"$DC-$i"
  wait_until "$STEP_TIMEOUT" "claim data-$DC-$i to be deleted" gone pvc/"data-$DC-$i"
done
wait_settled 3
t1="$(ms)"
[ "$(kn get sts "$DC" -o jsonpath='{.spec.replicas}')" = 3 ] || die "StatefulSet not at 3 replicas"
# Decommission first: both left the ring (Leaving/Removed in the status) before the
# StatefulSet shrank, and the operator asked them to leave.
awk -v a="$SCEN_MS" '{ if (match($0, /"t":[0-9]+/) && substr($0, RSTART + 4, RLENGTH - 4) + 0 >= a) print }' \
  "$ARTIFACTS/status.log" >"$ARTIFACTS/status-scale-down.log"
for i in 3 4; do
  grep -Eq "\"$DC-$i\":\"(Leaving|Removed)\"" "$ARTIFACTS/status-scale-down.log" \
    || die "$DC-$i was never seen Leaving or Removed in the status before it went away"
done
# Order: both were out of the ring (Removed) while their pods still ran (status.replicas 5),
# and no status shows fewer pods while either was still in the ring.
jq -s -e --arg a "$DC-3" --arg b "$DC-4" '
  def out($m): ($m[$a] // "Removed") == "Removed" and ($m[$b] // "Removed") == "Removed";
  any(.[]; .replicas == 5 and .m[$a] == "Removed" and .m[$b] == "Removed")
  and all(.[]; (.replicas // 5) >= 5 or out(.m // {}))' "$ARTIFACTS/status-scale-down.log" >/dev/null \
  || die "the StatefulSet shrank before $DC-3 and $DC-4 had left the ring (status-scale-down.log)"
ev="$(kn get events --field-selector involvedObject.name="$DC" -o json | jq -r '.items[] | "\(.reason) \(.message)"')"
echo "$ev" >"$ARTIFACTS/events-scale-down.txt"
for r in MemberLeaveRequested StatefulSetScaled VolumeDeleted; do
  grep -q "^$r" <<<"$ev" || die "no $r event on DynamoCluster $DC"
done
log "  $DC-3 and $DC-4 left the ring (Leaving/Removed seen), then pods and claims deleted; events: $(grep -Eo '^(MemberLeaveRequested|StatefulSetScaled|VolumeDeleted)' <<<"$ev" | sort | uniq -c | tr -s ' \n' ' ')"
ops_clean "$SCEN_MS" "$t1" scale-down
verify_all scale-down
passed "(claims data-$DC-3/4 deleted; acked writes verified: $VERIFIED)"

# ---- rolling update
scenario rolling-update
if [ -n "$NODE_IMAGE_UPDATE" ]; then
  kn patch dc "$DC" --type merge -p "{\"spec\":{\"image\":\"$NODE_IMAGE_UPDATE\"}}" >/dev/null
  what="spec.image $NODE_IMAGE -> $NODE_IMAGE_UPDATE"
  want_image="$NODE_IMAGE_UPDATE"
else
  kn patch dc "$DC" --type merge -p '{"spec":{"pod":{"annotations":{"dynamo.dev/e2e-rollout":"1"}}}}' >/dev/null
  what="pod annotation (no --node-image-update given)"
  want_image="$NODE_IMAGE"
fi
log "  rolling update: $what"
max_down=0
rollout_done() {
  local pods down
  pods="$(kn get pods -l app.kubernetes.io/instance="$DC" -o json)"
  # members without a live (not terminating) ready pod
  down="$(jq '3 - ([.items[] | select(.metadata.deletionTimestamp == null
      and ((.status.conditions // []) | map(select(.type == "Ready" and .status == "True")) | length) == 1)] | length)' <<<"$pods")"
  [ "$down" -le "$max_down" ] || { max_down="$down"; log "  members down at once: $down"; }
  [ "$down" -le 1 ] || die "$down members down at the same time during the rolling update (quorum tolerates 1)"
  jq -e --arg img "$want_image" --arg ann "$([ -n "$NODE_IMAGE_UPDATE" ] && echo 0 || echo 1)" '
    [.items[] | select(.metadata.deletionTimestamp == null
      and .spec.containers[0].image == $img
      and ($ann == "0" or .metadata.annotations["dynamo.dev/e2e-rollout"] == "1")
      and ((.status.conditions // []) | map(select(.type == "Ready" and .status == "True")) | length) == 1)]
    | length == 3' <<<"$pods" >/dev/null || return 1
  dc_json | jq -e '.status.updatedMembers == 3' >/dev/null && settled 3 >/dev/null
}
deadline=$((SECONDS + 2 * STEP_TIMEOUT))
until rollout_done; do
  [ "$SECONDS" -lt "$deadline" ] || die "rolling update not finished after $((2 * STEP_TIMEOUT)) s"
  sleep 1
done
t1="$(ms)"
awk -v a="$SCEN_MS" '{ if (match($0, /"t":[0-9]+/) && substr($0, RSTART + 4, RLENGTH - 4) + 0 >= a) print }' \
  "$ARTIFACTS/status.log" >"$ARTIFACTS/status-rolling-update.log"
if grep -q '"Available":"False' "$ARTIFACTS/status-rolling-update.log"; then
  die "Available was False during the rolling update (status-rolling-update.log)"
fi
restarts="$(kn get events --field-selector involvedObject.name="$DC",reason=RollingUpdate -o json | jq '[.items[].count // 1] | add // 0')"
log "  all 3 members run the new template; at most $max_down down at once; Available never False; RollingUpdate events: $restarts"
ops_clean "$SCEN_MS" "$t1" rolling-update strict
verify_all rolling-update
passed "(max members down at once: $max_down; acked writes verified: $VERIFIED)"

# ---- invalid specs are rejected at admission
scenario invalid
if dc_manifest bad 3 4 | k apply -f - >"$ARTIFACTS/invalid.out" 2>&1; then
  die "a DynamoCluster with w=4 > n=3 was accepted"
fi
grep -q 'replication.w must not exceed replication.n' "$ARTIFACTS/invalid.out" \
  || { cat "$ARTIFACTS/invalid.out" >&2; die "w > n was rejected, but without the expected message"; }
! kn get dc bad >/dev/null 2>&1 || die "the invalid DynamoCluster exists"
log "  w > n rejected: $(grep -o 'is invalid: .*' "$ARTIFACTS/invalid.out" | head -n1)"
if kn scale dc "$DC" --replicas=2 >"$ARTIFACTS/invalid-scale.out" 2>&1; then
  die "scaling below replication.n was accepted"
fi
grep -q 'replicas must be at least replication.n' "$ARTIFACTS/invalid-scale.out" \
  || { cat "$ARTIFACTS/invalid-scale.out" >&2; die "scale to 2 rejected without the expected message"; }
log "  scale to 2 (< n): rejected: replicas must be at least replication.n"
passed

# ---- delete the DynamoCluster
scenario delete
touch "$WL/stop"
stop_bg
start_proxy
verify_all final
total_acked="$VERIFIED"
write_stats="$(counts 0 9999999999999)"
kn delete dc "$DC" --timeout="${STEP_TIMEOUT}s" >/dev/null
owned_left() {
  {
    kn get sts,svc,cm,secret,pdb,pods,pvc -l app.kubernetes.io/instance="$DC" -o name
    for o in sts/"$DC" svc/"$DC" svc/"$DC-peers" cm/"$DC-config" secret/"$DC-cluster-token" pdb/"$DC"; do
      kn get "$o" -o name 2>/dev/null || true
    done
  } 2>/dev/null | sort -u
}
nothing_left() { [ -z "$(owned_left)" ]; }
wait_until "$STEP_TIMEOUT" "everything DynamoCluster $DC owned to be deleted" nothing_left
log "  DynamoCluster deleted; StatefulSet, Services, ConfigMap, Secret, PDB, pods and claims gone"
passed

RESULTS+=("workload over the whole run: $write_stats")
RESULTS+=("acknowledged writes verified at the end: $total_acked, lost: 0")
