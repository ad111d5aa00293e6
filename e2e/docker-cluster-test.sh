#!/usr/bin/env bash
# Runs the node image as a 3-member cluster of containers on a private Docker network:
#   1. member 0 bootstraps (DYNAMO_BOOTSTRAP), members 1 and 2 start with member 0 as seed
#      and are joined through member 0's admin API (POST /v1/cluster/join);
#   2. waits until every member reports the same ring (same epoch, not in transition,
#      3 members);
#   3. checks name resolution inside the image the way Kubernetes needs it: members
#      advertise names shaped like StatefulSet pod DNS names,
#      <member>.<prefix>-peers.dynamo-e2e.svc, that resolve only through the search domain
#      cluster.local (--dns-search cluster.local, ndots:5, as in a pod's resolv.conf; the
#      network aliases are the .svc.cluster.local names), and a one-shot container of the
#      image runs `dynamo members` against such a name;
#   4. writes KEYS keys through member 0 and reads them back;
#   5. `docker kill`s member 2 (SIGKILL) and reads every key back through member 0 and
#      member 1 (N=3, R=2: one replica down is tolerated);
#   6. restarts member 2, waits for a settled ring again, reads every key through it;
#   7. `docker stop`s member 1 (SIGTERM): it must exit 0 well within the stop timeout and
#      log "member stopped"; every key is still readable through member 0.
# Containers run hardened as in Kubernetes (read-only root filesystem, no capabilities,
# no-new-privileges; only the /data volume is writable) and are reached through ports
# published on 127.0.0.1 only. Member ids are the container names. On failure the logs of
# every container are printed; the containers, their volumes and the network are removed
# on exit.
#
# usage: e2e/docker-cluster-test.sh
# Environment: IMAGE (default dynamo-rs/node:dev; built with e2e/images.sh
#              when missing), KEYS (default 200), WAIT_S (bound of each wait, default 60),
#              KEEP=1 keeps the containers and network for inspection.
source "$(dirname "${BASH_SOURCE[0]}")/apiserver/lib.sh"

IMAGE="${IMAGE:-dynamo-rs/node:dev}"
KEYS="${KEYS:-200}"
WAIT_S="${WAIT_S:-60}"
STOP_TIMEOUT=20      # docker stop's grace period before SIGKILL
STOP_MAX_S=10        # a clean stop must take less than this

PREFIX="dynamo-ct-$$"
NET="$PREFIX-net"
MEMBERS=("$PREFIX-0" "$PREFIX-1" "$PREFIX-2")
# dns_name MEMBER : the name a member advertises, as in Kubernetes (needs the search domain).
dns_name() { printf '%s.%s-peers.dynamo-e2e.svc' "$1" "$PREFIX"; }
DNS_DOMAIN=cluster.local
TOKEN="ct-$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')"
WORK="$(mktemp -d /tmp/dynamo-docker-test.XXXXXX)"
T_START=$SECONDS

cleanup() {
  local rc=$?
  if [ "$rc" != 0 ]; then
    log "FAILED (exit $rc); logs of every container follow"
    for c in "${MEMBERS[@]}"; do
      docker inspect "$c" >/dev/null 2>&1 || continue
      printf -- '----- docker logs %s (state: %s) -----\n' "$c" \
        "$(docker inspect -f '{{.State.Status}} exit={{.State.ExitCode}}' "$c" 2>/dev/null)" >&2
      docker logs --tail 200 "$c" >&2 2>&1 || true
    done
  fi
  if [ "${KEEP:-0}" = 1 ]; then
    log "KEEP=1: leaving containers ${MEMBERS[*]} and network $NET"
  else
    docker rm -f -v "${MEMBERS[@]}" >/dev/null 2>&1 || true
    docker network rm "$NET" >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

apt_install jq curl
"$E2E_DIR/docker-up.sh"
if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
  [ "$IMAGE" = dynamo-rs/node:dev ] || die "image $IMAGE not found"
  log "$IMAGE not found; building it with e2e/images.sh"
  "$E2E_DIR/images.sh"
fi
log "image $IMAGE ($(docker image inspect -f '{{.Id}}' "$IMAGE" | cut -c1-19))"

# ------------------------------------------------------------------ helpers

# http_addr MEMBER : 127.0.0.1:<port> published for the member's 8080 (changes on restart).
http_addr() { docker port "$1" 8080/tcp 2>/dev/null | grep '^127\.0\.0\.1:' | head -n1; }

# admin METHOD MEMBER PATH [JSON] : admin API call, prints the body, fails on non-2xx.
admin() {
  local method="$1" m="$2" path="$3" body="${4:-}" addr
  addr="$(http_addr "$m")" || return 1
  [ -n "$addr" ] || return 1
  if [ -n "$body" ]; then
    curl -fsS --max-time 5 -X "$method" -H "Authorization: Bearer $TOKEN" \
      -H 'Content-Type: application/json' --data "$body" "http://$addr$path"
  else
    curl -fsS --max-time 5 -X "$method" -H "Authorization: Bearer $TOKEN" "http://$addr$path"
  fi
}

healthy() { local a; a="$(http_addr "$1")" && [ -n "$a" ] && curl -fsS --max-time 2 "http://$a/healthz" >/dev/null; }

# ring_agreed MEMBER... : every one reports the same epoch, no move in flight, and
# exactly the 3 members in the ring.
ring_agreed() {
  local m json epochs=()
  for m in "$@"; do
    json="$(admin GET "$m" /v1/cluster/ring)" || return 1
    [ "$(jq -r '.inTransition' <<<"$json")" = false ] || return 1
    [ "$(jq -r '.members | length' <<<"$json")" = "${#MEMBERS[@]}" ] || return 1
    epochs+=("$(jq -r '.epoch' <<<"$json")")
  done
  [ "$(printf '%s\n' "${epochs[@]}" | sort -u | wc -l)" = 1 ]
}

value_of() { printf 'value-%d-%s' "$1" "$TOKEN"; }

# One curl process per pass over the keys (a config file with one block per key, reusing
# the connection): a curl process per request costs more than the request.

# write_all MEMBER : PUT every key; each must be acknowledged (2xx).
write_all() {
  local m="$1" addr i code key bad=0
  addr="$(http_addr "$m")"
  : >"$WORK/put.cfg"
  for ((i = 0; i < KEYS; i++)); do
    [ "$i" = 0 ] || echo next >>"$WORK/put.cfg"
    printf 'url = "http://%s/v1/kv/key-%d"\nrequest = PUT\ndata-binary = "%s"\noutput = "%s/put-%d.out"\nmax-time = 10\nwrite-out = "%%{http_code} key-%d\\n"\n' \
      "$addr" "$i" "$(value_of "$i")" "$WORK" "$i" "$i" >>"$WORK/put.cfg"
  done
  curl -sS --config "$WORK/put.cfg" >"$WORK/put.codes" 2>"$WORK/put.err" || true
  [ "$(wc -l <"$WORK/put.codes")" = "$KEYS" ] || { log "PUT via $m: $(wc -l <"$WORK/put.codes") answers for $KEYS keys: $(head -c 300 "$WORK/put.err")"; return 1; }
  while read -r code key; do
    case "$code" in
      2??) ;;
      *) [ "$bad" -lt 5 ] && log "PUT $key via $m -> $code: $(cat "$WORK/put-${key#key-}.out" 2>/dev/null)"; bad=$((bad + 1)) ;;
    esac
  done <"$WORK/put.codes"
  [ "$bad" = 0 ] || { log "$bad of $KEYS writes not acknowledged via $m"; return 1; }
}

# read_all MEMBER : GET every key; each must answer 200 with exactly the value written.
read_all() {
  local m="$1" addr i code key bad=0
  addr="$(http_addr "$m")"
  rm -f "$WORK"/get-*.out
  : >"$WORK/get.cfg"
  for ((i = 0; i < KEYS; i++)); do
    [ "$i" = 0 ] || echo next >>"$WORK/get.cfg"
    printf 'url = "http://%s/v1/kv/key-%d"\noutput = "%s/get-%d.out"\nmax-time = 10\nwrite-out = "%%{http_code} key-%d\\n"\n' \
      "$addr" "$i" "$WORK" "$i" "$i" >>"$WORK/get.cfg"
  done
  curl -sS --config "$WORK/get.cfg" >"$WORK/get.codes" 2>"$WORK/get.err" || true
  [ "$(wc -l <"$WORK/get.codes")" = "$KEYS" ] || { log "GET via $m: $(wc -l <"$WORK/get.codes") answers for $KEYS keys: $(head -c 300 "$WORK/get.err")"; return 1; }
  while read -r code key; do
    i="${key#key-}"
    if [ "$code" != 200 ] || [ "$(cat "$WORK/get-$i.out" 2>/dev/null)" != "$(value_of "$i")" ]; then
      [ "$bad" -lt 5 ] && log "GET $key via $m -> $code: $(head -c 200 "$WORK/get-$i.out" 2>/dev/null)"
      bad=$((bad + 1))
    fi
  done <"$WORK/get.codes"
  [ "$bad" = 0 ] || { log "$bad of $KEYS keys missing or wrong via $m"; return 1; }
}

# step DESCRIPTION COMMAND... : runs one timed step.
step() {
  local what="$1" t0=$SECONDS; shift
  "$@" || die "$what failed"
  log "ok: $what ($((SECONDS - t0)) s)"
}

start_member() {
  local i="$1" name="${MEMBERS[$1]}" extra=()
  [ "$i" = 0 ] && extra+=(-e DYNAMO_BOOTSTRAP=true)
  docker run -d --name "$name" --hostname "$name" --network "$NET" \
    --network-alias "$(dns_name "$name").$DNS_DOMAIN" \
    --dns-search "$DNS_DOMAIN" --dns-opt ndots:5 \
    -p 127.0.0.1::8080 \
    --read-only --cap-drop ALL --security-opt no-new-privileges \
    --stop-timeout "$STOP_TIMEOUT" \
    -e DYNAMO_ID="$name" \
    -e DYNAMO_ADVERTISE="$(dns_name "$name"):8080" \
    -e DYNAMO_ADVERTISE_PEER="$(dns_name "$name"):7070" \
    -e DYNAMO_SEEDS="$(dns_name "${MEMBERS[0]}"):7070" \
    -e DYNAMO_CLUSTER_TOKEN="$TOKEN" \
    -e DYNAMO_GOSSIP_INTERVAL_MS=500 \
    "${extra[@]}" "$IMAGE" >/dev/null
}

join_all() {
  local i
  for ((i = 1; i < ${#MEMBERS[@]}; i++)); do
    # A member not yet known by gossip is refused; retry until it is.
    wait_for "$WAIT_S" "the join of ${MEMBERS[$i]} to be accepted" -- \
      admin POST "${MEMBERS[0]}" /v1/cluster/join "{\"member\": \"${MEMBERS[$i]}\"}"
  done
}

# ------------------------------------------------------------------ the test

docker network create "$NET" >/dev/null
log "network $NET; members ${MEMBERS[*]}"
for i in 0 1 2; do start_member "$i"; done
for m in "${MEMBERS[@]}"; do
  wait_for "$WAIT_S" "$m to answer /healthz" -- healthy "$m"
done
step "join members 1 and 2 through member 0" join_all
step "all 3 members agree on a settled ring" \
  wait_for "$WAIT_S" "a settled ring on every member" -- ring_agreed "${MEMBERS[@]}"
# Name resolution in the image itself (static binary, empty filesystem): a one-shot
# container resolves a member's Kubernetes-shaped name through the search domain.
resolve_check() {
  docker run --rm --network "$NET" --dns-search "$DNS_DOMAIN" --dns-opt ndots:5 \
    --read-only --cap-drop ALL --entrypoint /dynamo "$IMAGE" \
    members -o json -e "$(dns_name "${MEMBERS[1]}"):8080" --token "$TOKEN" >"$WORK/members.json" 2>"$WORK/members.err" \
    || { cat "$WORK/members.err" >&2; return 1; }
  [ "$(jq -r '[.members[] | select(.status == "up")] | length' "$WORK/members.json")" = 3 ] \
    && jq -e --arg a "$(dns_name "${MEMBERS[2]}"):7070" '[.members[].peer_addr] | index($a)' "$WORK/members.json" >/dev/null
}
step "the image resolves $(dns_name "${MEMBERS[1]}") (search $DNS_DOMAIN) and sees 3 members up" resolve_check
log "ring: $(admin GET "${MEMBERS[0]}" /v1/cluster/ring | jq -c '{epoch, members: [.members[] | {id, partitions}], balance}')"

step "write $KEYS keys through ${MEMBERS[0]}" write_all "${MEMBERS[0]}"
step "read $KEYS keys through ${MEMBERS[0]}" read_all "${MEMBERS[0]}"

docker kill "${MEMBERS[2]}" >/dev/null
log "docker kill ${MEMBERS[2]} (SIGKILL)"
step "read $KEYS keys through ${MEMBERS[0]} with ${MEMBERS[2]} killed" read_all "${MEMBERS[0]}"
step "read $KEYS keys through ${MEMBERS[1]} with ${MEMBERS[2]} killed" read_all "${MEMBERS[1]}"

docker start "${MEMBERS[2]}" >/dev/null
log "docker start ${MEMBERS[2]}"
wait_for "$WAIT_S" "${MEMBERS[2]} to answer /healthz after its restart" -- healthy "${MEMBERS[2]}"
step "the ring settles again after the restart" \
  wait_for "$WAIT_S" "a settled ring on every member" -- ring_agreed "${MEMBERS[@]}"
step "read $KEYS keys through the restarted ${MEMBERS[2]}" read_all "${MEMBERS[2]}"

t0="$(date +%s%N)"
docker stop "${MEMBERS[1]}" >/dev/null
stop_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
code="$(docker inspect -f '{{.State.ExitCode}}' "${MEMBERS[1]}")"
log "docker stop ${MEMBERS[1]} (SIGTERM): exit code $code after $stop_ms ms"
[ "$code" = 0 ] || die "${MEMBERS[1]} exited with $code on SIGTERM (137 = killed after the grace period)"
[ "$stop_ms" -lt $((STOP_MAX_S * 1000)) ] || die "${MEMBERS[1]} took $stop_ms ms to stop (limit ${STOP_MAX_S}s)"
docker logs "${MEMBERS[1]}" 2>&1 | grep -q "member stopped" \
  || die "${MEMBERS[1]} did not log \"member stopped\" on SIGTERM"
log "ok: ${MEMBERS[1]} stopped cleanly (\"member stopped\" logged)"
step "read $KEYS keys through ${MEMBERS[0]} with ${MEMBERS[1]} stopped" read_all "${MEMBERS[0]}"

log "PASS: docker cluster test ($((SECONDS - T_START)) s)"
