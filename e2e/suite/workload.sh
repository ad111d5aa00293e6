#!/usr/bin/env bash
# Client workload of the Kubernetes e2e suite (e2e/suite/run.sh starts it in the background).
#
# usage: workload.sh write|read BASE_URL DIR
#   BASE_URL  the client Service through `kubectl proxy`, e.g.
#             http://127.0.0.1:PORT/api/v1/namespaces/NS/services/kv:8080/proxy
#             (the API server's service proxy sends each request to a ready endpoint, so
#             this works the same on any cluster reachable with a kubeconfig).
#   DIR       where the results go; the loop ends when DIR/stop exists.
#
# write: PUTs a new key per request (blind writes, default W); every acknowledged write
#        (204) is appended as "KEY VALUE" to DIR/acked. Nothing is retried: a failed write
#        is simply not acknowledged.
# read:  GETs random acknowledged keys with r=2 and compares the value.
# Failed requests also append "EPOCH_MS MODE KEY HTTP_CODE BODY" to DIR/errors.<mode>.
# Every request appends "EPOCH_MS write|read RESULT KEY" to DIR/ops.<mode>, RESULT being
#   ok                     acknowledged write / read of the expected value
#   dyn:<code>             the store answered with an error (e.g. dyn:unavailable = quorum failure)
#   stale                  read only: an acknowledged key answered 404 not_found
#   wrong                  read only: another value or siblings (300)
#   transport:<http code>  no answer from the store (API server proxy error, timeout, ...)
# Requests are paced (WORKLOAD_PAUSE, default 0.2 s) to keep this 2-core-friendly.
set -uo pipefail

mode="$1" base="$2" dir="$3"
pause="${WORKLOAD_PAUSE:-0.2}"
run="${WORKLOAD_RUN_ID:-$$}"
body="$dir/.body.$mode"
ms() { local t="${EPOCHREALTIME/./}"; echo "${t:0:13}"; }

# classify HTTP_CODE : prints dyn:<code> when the body is an error of the store (its JSON
# errors carry a string "code"; the API server's Status objects carry a number), else
# transport:<http code>.
classify() {
  local c
  c="$(sed -n 's/.*"code": *"\([a-z_]*\)".*/\1/p' "$body" 2>/dev/null | head -n1)"
  if [ -n "$c" ]; then echo "dyn:$c"; else echo "transport:$1"; fi
}

case "$mode" in
  write)
    seq=0
    while [ ! -e "$dir/stop" ]; do
      seq=$((seq + 1))
      key="e2e-$run-$seq"
      val="v$seq-$RANDOM$RANDOM"
      code="$(curl -s -o "$body" -w '%{http_code}' --max-time 10 -X PUT --data-binary "$val" \
        "$base/v1/kv/$key" 2>/dev/null)" || true
      if [ "$code" = 204 ]; then
        echo "$key $val" >>"$dir/acked"
        res=ok
      else
        res="$(classify "${code:-000}")"
      fi
      echo "$(ms) write $res $key" >>"$dir/ops.write"
      [ "$res" = ok ] || echo "$(ms) write $key $code $(tr -s '\n ' ' ' <"$body" | head -c 300)" >>"$dir/errors.write"
      sleep "$pause"
    done
    ;;
  read)
    while [ ! -e "$dir/stop" ]; do
      line=""
      [ -s "$dir/acked" ] && line="$(shuf -n 1 "$dir/acked" 2>/dev/null)"
      if [ -z "$line" ]; then sleep "$pause"; continue; fi
      key="${line%% *}" val="${line#* }"
      code="$(curl -s -o "$body" -w '%{http_code}' --max-time 10 "$base/v1/kv/$key?r=2" 2>/dev/null)" || true
      case "$code" in
        200) if [ "$(cat "$body")" = "$val" ]; then res=ok; else res=wrong; fi ;;
        300) res=wrong ;;
        *)
          res="$(classify "${code:-000}")"
          [ "$res" = dyn:not_found ] && res=stale
          ;;
      esac
      echo "$(ms) read $res $key" >>"$dir/ops.read"
      [ "$res" = ok ] || echo "$(ms) read $key $code $(tr -s '\n ' ' ' <"$body" | head -c 300)" >>"$dir/errors.read"
      sleep "$pause"
    done
    ;;
  *) echo "usage: $0 write|read BASE_URL DIR" >&2; exit 2 ;;
esac
