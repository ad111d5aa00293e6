#!/usr/bin/env bash
# Every packaging check, in sequence (issue 7):
#   1. images      e2e/images.sh: static host builds, node and operator images (prebuilt targets)
#   2. containers  e2e/docker-cluster-test.sh: 3 node containers, kill one, read everything
#   3. chart       e2e/chart-test.sh: helm lint, helm template | kubeconform -strict, CRD and
#                  RBAC equal to the committed ones, hardened defaults, dashboards ConfigMaps
#   4. dashboards  e2e/prometheus-dashboards-test.sh: helm install/upgrade/uninstall on a real
#                  API server, the operator as the chart's ServiceAccount, and every dashboard
#                  query through a real Prometheus
# A stage that fails does not stop the later ones (except that the container test needs the
# images); the script prints a table of stages, results and durations and exits non-zero if
# any stage failed. Logs: e2e/.work/packaging/<stage>.log.
#
# usage: e2e/packaging-test.sh [STAGE...]   (default: all four, in this order)
source "$(dirname "${BASH_SOURCE[0]}")/apiserver/lib.sh"

LOGS="$E2E_DIR/.work/packaging"
mkdir -p "$LOGS"
STAGES=("$@")
[ ${#STAGES[@]} -gt 0 ] || STAGES=(images containers chart dashboards)

declare -A CMD=(
  [images]="$E2E_DIR/images.sh"
  [containers]="$E2E_DIR/docker-cluster-test.sh"
  [chart]="$E2E_DIR/chart-test.sh"
  [dashboards]="$E2E_DIR/prometheus-dashboards-test.sh"
)
for s in "${STAGES[@]}"; do
  [ -n "${CMD[$s]:-}" ] || die "unknown stage $s (images, containers, chart, dashboards)"
done

RESULTS=()
FAILED=0
T_ALL=$SECONDS
for s in "${STAGES[@]}"; do
  if [ "$s" = containers ] && printf '%s\n' "${RESULTS[@]}" | grep -q '^images FAIL'; then
    RESULTS+=("$s SKIPPED(no-images) 0")
    FAILED=1
    continue
  fi
  log "===== stage $s: ${CMD[$s]} (log: $LOGS/$s.log)"
  t0=$SECONDS
  if "${CMD[$s]}" > >(tee "$LOGS/$s.log" >&2) 2>&1; then
    RESULTS+=("$s PASS $((SECONDS - t0))")
  else
    RESULTS+=("$s FAIL $((SECONDS - t0))")
    FAILED=1
  fi
done

printf '\n%-12s %-20s %8s\n' stage result seconds >&2
for r in "${RESULTS[@]}"; do
  read -r s res secs <<<"$r"
  printf '%-12s %-20s %8s\n' "$s" "$res" "$secs" >&2
done
printf '%-12s %-20s %8s\n\n' total "$([ "$FAILED" = 0 ] && echo PASS || echo FAIL)" "$((SECONDS - T_ALL))" >&2
exit "$FAILED"
