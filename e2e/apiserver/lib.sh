# shellcheck shell=bash
# shellcheck disable=SC2034  # variables are used by the scripts that source this
# Common helpers for the e2e Kubernetes scripts. Sourced, not executed.
#
# Everything that is downloaded or built is cached under $DYNAMO_E2E_CACHE
# (default $HOME/.cache/dynamo-e2e), keyed by version, so a second run is fast.

set -euo pipefail

E2E_LIB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
E2E_DIR="$(cd "$E2E_LIB_DIR/.." && pwd)"
REPO_ROOT="$(cd "$E2E_DIR/.." && pwd)"

# Pinned versions (override through the environment).
# shellcheck source=versions.env
source "$E2E_LIB_DIR/versions.env"

DYNAMO_E2E_CACHE="${DYNAMO_E2E_CACHE:-$HOME/.cache/dynamo-e2e}"
K8S_BIN="$DYNAMO_E2E_CACHE/k8s-$K8S_VERSION/bin"
ETCD_BIN="$DYNAMO_E2E_CACHE/etcd-$ETCD_VERSION/bin"
COREDNS_BIN="$DYNAMO_E2E_CACHE/coredns-$COREDNS_VERSION/bin"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[%s] ERROR: %s\n' "$(date +%H:%M:%S)" "$*" >&2; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "$0 must run as root"; }

# Go toolchain and caches, all under $HOME/.cache.
setup_go() {
  if ! command -v go >/dev/null 2>&1; then
    if [ -x /usr/local/go/bin/go ]; then
      export PATH="$PATH:/usr/local/go/bin"
    else
      die "go not found (expected on PATH or in /usr/local/go/bin)"
    fi
  fi
  export GOCACHE="${E2E_GOCACHE:-$DYNAMO_E2E_CACHE/go-build}"
  export GOMODCACHE="${E2E_GOMODCACHE:-$DYNAMO_E2E_CACHE/go-mod}"
  export GOTOOLCHAIN=local
  export GOFLAGS="-mod=mod -buildvcs=false"
  export GOPROXY="${GOPROXY:-https://proxy.golang.org,direct}"
  mkdir -p "$GOCACHE" "$GOMODCACHE"
}

# apt_install PKG... : installs the Debian packages that are missing (idempotent).
apt_install() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  need_root
  log "apt-get install ${missing[*]}"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/tmp/dynamo-e2e-apt.log 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get update >>/tmp/dynamo-e2e-apt.log 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >>/tmp/dynamo-e2e-apt.log 2>&1 \
      || { tail -n 30 /tmp/dynamo-e2e-apt.log >&2; die "apt-get install ${missing[*]} failed"; }
  fi
}

# wait_for TIMEOUT_SECONDS DESCRIPTION LOGFILE... -- COMMAND...
# Polls COMMAND every 0.5 s until it succeeds; on timeout prints the tail of
# every LOGFILE and fails.
wait_for() {
  local timeout="$1" what="$2"; shift 2
  local logs=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do logs+=("$1"); shift; done
  [ "${1:-}" = "--" ] && shift
  local deadline=$(( $(date +%s) + timeout ))
  while :; do
    if "$@" >/dev/null 2>&1; then return 0; fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      printf '[%s] ERROR: timed out after %ss waiting for %s\n' "$(date +%H:%M:%S)" "$timeout" "$what" >&2
      printf '  condition: %s\n' "$*" >&2
      local f
      for f in "${logs[@]}"; do
        if [ -f "$f" ]; then
          printf -- '----- last 40 lines of %s -----\n' "$f" >&2
          tail -n 40 "$f" >&2
        fi
      done
      return 1
    fi
    sleep 0.5
  done
}

# start_bg NAME LOGFILE COMMAND... : starts a daemon in its own session, records
# its PID in $WORKDIR/pids/NAME.pid.
start_bg() {
  local name="$1" logf="$2"; shift 2
  mkdir -p "$WORKDIR/pids"
  if pid_alive "$name"; then
    log "$name already running (pid $(cat "$WORKDIR/pids/$name.pid"))"
    return 0
  fi
  log "starting $name (log: $logf)"
  setsid "$@" >>"$logf" 2>&1 </dev/null &
  echo $! >"$WORKDIR/pids/$name.pid"
}

pid_alive() {
  local f="$WORKDIR/pids/$1.pid"
  [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null
}

# stop_pid NAME... : TERM all of them, wait (bounded, 15 s) for them to exit,
# then KILL what is left. Only the PIDs recorded by start_bg are signalled.
stop_pid() {
  local name pid pids=() i alive
  for name in "$@"; do
    local f="$WORKDIR/pids/$name.pid"
    [ -f "$f" ] || continue
    pid="$(cat "$f")"
    rm -f "$f"
    if kill -0 "$pid" 2>/dev/null; then
      log "stopping $name (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
  done
  [ ${#pids[@]} -eq 0 ] && return 0
  for i in $(seq 1 150); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && return 0
    sleep 0.1
  done
  for pid in "${pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      log "pid $pid did not exit after 15s, sending KILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  for i in $(seq 1 50); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && return 0
    sleep 0.1
  done
}

# free_port_check HOST PORT : fails if something already listens there.
port_in_use() {
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

# ---------------------------------------------------------------- PKI helpers
# All keys are ECDSA P-256 (fast to generate) except the service-account key.

# gen_ca DIR [NAME] : CA key and self-signed cert DIR/NAME.{crt,key} (NAME
# defaults to ca), kept if present.
gen_ca() {
  local d="$1" n="${2:-ca}"
  mkdir -p "$d"
  [ -f "$d/$n.crt" ] && [ -f "$d/$n.key" ] && return 0
  openssl ecparam -name prime256v1 -genkey -noout -out "$d/$n.key" 2>/dev/null
  openssl req -x509 -new -key "$d/$n.key" -sha256 -days 3650 -subj "/CN=dynamo-e2e-$n" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "$d/$n.crt" 2>/dev/null
}

# gen_cert DIR NAME CN ORG USAGE [SAN...]
#   USAGE: client | server | both. SAN entries: IP:1.2.3.4 or DNS:name.
#   Signed by DIR/ca, or by DIR/$CA_NAME if CA_NAME is set.
gen_cert() {
  local d="$1" name="$2" cn="$3" org="$4" usage="$5"; shift 5
  [ -f "$d/$name.crt" ] && [ -f "$d/$name.key" ] && return 0
  local eku subj="/CN=$cn"
  [ -n "$org" ] && subj="/O=$org$subj"
  case "$usage" in
    client) eku=clientAuth ;; server) eku=serverAuth ;; both) eku=serverAuth,clientAuth ;;
    *) die "gen_cert: bad usage $usage" ;;
  esac
  local ext="$d/$name.ext"
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    if [ $# -gt 0 ]; then local IFS=,; echo "subjectAltName=$*"; fi
  } >"$ext"
  openssl ecparam -name prime256v1 -genkey -noout -out "$d/$name.key" 2>/dev/null
  openssl req -new -key "$d/$name.key" -subj "$subj" -out "$d/$name.csr" 2>/dev/null
  openssl x509 -req -in "$d/$name.csr" -CA "$d/${CA_NAME:-ca}.crt" -CAkey "$d/${CA_NAME:-ca}.key" -CAcreateserial \
    -days 3650 -sha256 -extfile "$ext" -out "$d/$name.crt" 2>/dev/null \
    || die "openssl failed to sign $name"
  rm -f "$d/$name.csr" "$ext"
}

# write_file PATH : writes stdin to PATH only if the content differs, so that
# re-running an up.sh does not touch files that running daemons watch
# (kube-proxy exits when its config file changes).
write_file() {
  local f="$1" tmp
  tmp="$(mktemp "$f.XXXXXX")"
  cat >"$tmp"
  if cmp -s "$tmp" "$f" 2>/dev/null; then rm -f "$tmp"; else mv "$tmp" "$f"; fi
}

# write_kubeconfig FILE SERVER CA CERT KEY [USER] : credentials are embedded.
write_kubeconfig() {
  local f="$1" server="$2" ca="$3" cert="$4" key="$5" user="${6:-user}"
  write_file "$f" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: dynamo-e2e
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 <"$ca")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 <"$cert")
    client-key-data: $(base64 -w0 <"$key")
contexts:
- name: dynamo-e2e
  context:
    cluster: dynamo-e2e
    user: $user
current-context: dynamo-e2e
KCFG
  chmod 600 "$f"
}
