#!/usr/bin/env bash
# Checks of the Helm chart charts/dynamo-operator, without a cluster:
#   1. tools: helm and kubeconform built with `go install` from the Go module proxy, cached
#      under $DYNAMO_TOOLS (default $HOME/.cache/dynamo-tools/<tool>-<version>/);
#   2. JSON schemas for kubeconform: generated from the Kubernetes OpenAPI document of the
#      pinned Kubernetes version (api/openapi-spec/swagger.json of the k8s.io/kubernetes
#      module, the one e2e/apiserver builds), "standalone-strict" (every object schema
#      gets additionalProperties: false), and from crds/dynamocluster.yaml for DynamoCluster;
#   3. `helm lint --strict` with the default values and with every option turned on;
#   4. `helm template | kubeconform -strict` for several value sets: every object must be
#      validated against a schema (a kind without a schema fails, nothing is skipped);
#   5. the chart's CRD (files/dynamocluster.yaml, and templates/crd.yaml as rendered) equals
#      crds/dynamocluster.yaml apart from the labels and the keep annotation Helm adds;
#   6. the ClusterRole's rules equal operator/deploy/rbac.yaml's (least privilege: what the
#      reconciler uses, tested by e2e/apiserver/operator-test.sh), the Role's too;
#   7. hardened defaults (runAsNonRoot, readOnlyRootFilesystem, drop ALL, seccomp
#      RuntimeDefault, no privilege escalation), dashboards as ConfigMaps labelled
#      grafana_dashboard: "1" holding exactly charts/dynamo-operator/dashboards/*.json, and
#      values.schema.json rejecting bad values;
#   8. the example manifest e2e/manifests/dynamocluster.yaml validates against the CRD schema;
#   9. the optional chart charts/dynamo-cluster: helm lint --strict, and its DynamoCluster
#      validates against the CRD schema (kubeconform -strict) for the defaults and for a
#      full set of values; a bare `n` key (YAML 1.1 false) is refused.
#
# usage: e2e/chart-test.sh [--tools-only]
# Environment: DYNAMO_TOOLS, HELM_VERSION (default v3.22.0), KUBECONFORM_VERSION (v0.8.0),
#              K8S_VERSION (e2e/apiserver/versions.env).
# Prints the paths of helm and kubeconform with --tools-only (e.g. for other scripts).
source "$(dirname "${BASH_SOURCE[0]}")/apiserver/lib.sh"

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
KUBECONFORM_VERSION="${KUBECONFORM_VERSION:-v0.8.0}"
DYNAMO_TOOLS="${DYNAMO_TOOLS:-$HOME/.cache/dynamo-tools}"
CHART="$REPO_ROOT/charts/dynamo-operator"
# A helm built with `go install` assumes Kubernetes v1.20 (its release builds set the version
# with -ldflags); render for the version whose schemas are used.
KUBE_VERSION="${K8S_VERSION#v}"
T_START=$SECONDS

# go_tool NAME VERSION PACKAGE : builds PACKAGE@VERSION into $DYNAMO_TOOLS/NAME-VERSION/
# unless it is there; prints the binary's path.
go_tool() {
  local name="$1" version="$2" pkg="$3" dir="$DYNAMO_TOOLS/$1-$2"
  if [ ! -x "$dir/$name" ]; then
    setup_go
    mkdir -p "$dir"
    log "go install $pkg@$version (cached in $dir)"
    GOBIN="$dir.tmp" go install "$pkg@$version" >"$DYNAMO_TOOLS/$name-$version.log" 2>&1 \
      || { tail -n 20 "$DYNAMO_TOOLS/$name-$version.log" >&2; die "go install $pkg@$version failed"; }
    mv "$dir.tmp/$name" "$dir/$name" && rmdir "$dir.tmp"
  fi
  echo "$dir/$name"
}

mkdir -p "$DYNAMO_TOOLS"
HELM="$(go_tool helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm)"
KUBECONFORM="$(go_tool kubeconform "$KUBECONFORM_VERSION" github.com/yannh/kubeconform/cmd/kubeconform)"
if [ "${1:-}" = --tools-only ]; then
  echo "$HELM"
  echo "$KUBECONFORM"
  exit 0
fi
[ $# = 0 ] || die "unknown argument: $1 (usage: e2e/chart-test.sh [--tools-only])"
log "$("$HELM" version --short), kubeconform $("$KUBECONFORM" -v)"

WORK="$(mktemp -d /tmp/dynamo-chart-test.XXXXXX)"
# Helm keeps no state of ours: caches and config go to the work directory.
export HELM_CACHE_HOME="$WORK/helm/cache" HELM_CONFIG_HOME="$WORK/helm/config" HELM_DATA_HOME="$WORK/helm/data"
cleanup() {
  local rc=$?
  [ "$rc" = 0 ] || log "FAILED (exit $rc); work directory $WORK kept"
  [ "$rc" != 0 ] || rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ schemas
K8S_SCHEMAS="$DYNAMO_TOOLS/schemas/kubernetes-$K8S_VERSION-standalone-strict"
if [ ! -f "$K8S_SCHEMAS/.complete" ]; then
  setup_go
  spec="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')/api/openapi-spec/swagger.json" \
    || die "go mod download k8s.io/kubernetes@$K8S_VERSION failed"
  [ -f "$spec" ] || die "no $spec"
  log "generating kubeconform schemas from $spec"
  rm -rf "$K8S_SCHEMAS.tmp" && mkdir -p "$K8S_SCHEMAS.tmp"
  python3 - "$spec" "$K8S_SCHEMAS.tmp" <<'PY'
# Like openapi2jsonschema --strict --stand-alone, but each file keeps the definitions it
# reaches under "definitions" (local $refs), so recursive types (JSONSchemaProps) work.
import json, sys, re
spec, out = sys.argv[1], sys.argv[2]
defs = json.load(open(spec))["definitions"]

def fix(node):
    if isinstance(node, dict):
        node = {k: fix(v) for k, v in node.items()}
        if node.get("format") == "int-or-string":
            return {"oneOf": [{"type": "string"}, {"type": "integer"}], "description": node.get("description", "")}
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [fix(v) for v in node]
    return node

fixed = {name: fix(d) for name, d in defs.items()}
# Quantities are strings or numbers in YAML (cpu: 1).
fixed["io.k8s.apimachinery.pkg.api.resource.Quantity"] = {"oneOf": [{"type": "string"}, {"type": "number"}]}

def reach(name, seen):
    if name in seen:
        return
    seen.add(name)
    for ref in re.findall(r'"\$ref": "#/definitions/([^"]+)"', json.dumps(fixed[name])):
        reach(ref, seen)

count = 0
for name, d in fixed.items():
    for gvk in d.get("x-kubernetes-group-version-kind", []):
        group, version, kind = gvk["group"], gvk["version"], gvk["kind"]
        # kubeconform's {{ .ResourceKind }}{{ .KindSuffix }}: kind-<first label of group>-<version>
        suffix = f"-{group.split('.')[0]}-{version}" if group else f"-{version}"
        seen = set()
        reach(name, seen)
        schema = dict(d)
        schema["$schema"] = "http://json-schema.org/schema#"
        schema["definitions"] = {n: fixed[n] for n in sorted(seen)}
        # apiVersion and kind are fixed for the file.
        props = dict(schema.get("properties", {}))
        api_version = f"{group}/{version}" if group else version
        props["apiVersion"] = {"type": "string", "enum": [api_version]}
        props["kind"] = {"type": "string", "enum": [kind]}
        schema["properties"] = props
        with open(f"{out}/{kind.lower()}{suffix}.json", "w") as f:
            json.dump(schema, f)
        count += 1
print(f"{count} schemas", file=sys.stderr)
PY
  touch "$K8S_SCHEMAS.tmp/.complete"
  rm -rf "$K8S_SCHEMAS" && mv "$K8S_SCHEMAS.tmp" "$K8S_SCHEMAS"
fi
[ -f "$K8S_SCHEMAS/deployment-apps-v1.json" ] || die "no Deployment schema in $K8S_SCHEMAS"

# Schemas of custom resources: DynamoCluster from the CRD in this checkout.
CRD_SCHEMAS="$WORK/crd-schemas"
mkdir -p "$CRD_SCHEMAS"
python3 - "$REPO_ROOT/crds/dynamocluster.yaml" "$CRD_SCHEMAS" <<'PY'
import json, sys, yaml
crd = yaml.safe_load(open(sys.argv[1]))
group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]

def strict(node):
    if isinstance(node, dict):
        node = {k: strict(v) for k, v in node.items()}
        if node.pop("x-kubernetes-int-or-string", False):
            node = {"oneOf": [{"type": "string"}, {"type": "integer"}]}
        if "properties" in node and "additionalProperties" not in node \
                and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [strict(v) for v in node]
    return node

for v in crd["spec"]["versions"]:
    schema = strict(v["schema"]["openAPIV3Schema"])
    schema["properties"]["apiVersion"] = {"type": "string", "enum": [f"{group}/{v['name']}"]}
    schema["properties"]["kind"] = {"type": "string", "enum": [kind]}
    # metadata is an ObjectMeta; the CRD only says "object".
    schema["properties"]["metadata"] = {"type": "object"}
    with open(f"{sys.argv[2]}/{kind.lower()}-{group.split('.')[0]}-{v['name']}.json", "w") as f:
        json.dump(schema, f)
PY
# ServiceMonitor (monitoring.coreos.com/v1) is rendered only with serviceMonitor.enabled;
# its schema would come from the prometheus-operator CRDs, which nothing here provides, so
# that one kind is checked by the structure test below instead of kubeconform.

kubeconform_strict() {
  "$KUBECONFORM" -strict -summary -output text \
    -schema-location "$K8S_SCHEMAS/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
    -schema-location "$CRD_SCHEMAS/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
    "$@"
}

# ------------------------------------------------------------------ checks
FAILED=0
fail() { log "FAIL: $*"; FAILED=1; }
ok() { log "ok: $*"; }

# Value sets: defaults; everything on; a namespaced install; CRD managed elsewhere.
cat >"$WORK/all-on.yaml" <<'EOF'
image: {repository: registry.example/dynamo-rs/operator, tag: "0.1.0", pullPolicy: Always}
imagePullSecrets: [{name: regcred}]
serviceAccount: {annotations: {example.com/role: operator}}
operator:
  logFormat: text
  logLevel: debug
  memberUrl: "http://{pod}.{service}.{namespace}.svc.cluster.local:8080"
  extraArgs: ["--admin-timeout-ms=5000"]
  extraEnv: [{name: EXTRA, value: "1"}]
podLabels: {team: storage}
podAnnotations: {example.com/note: x}
priorityClassName: system-cluster-critical
nodeSelector: {kubernetes.io/os: linux}
tolerations: [{key: dedicated, operator: Equal, value: infra, effect: NoSchedule}]
affinity:
  nodeAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      nodeSelectorTerms: [{matchExpressions: [{key: kubernetes.io/arch, operator: In, values: [amd64]}]}]
service: {type: ClusterIP, annotations: {example.com/svc: x}}
serviceMonitor: {enabled: true, interval: 30s, scrapeTimeout: 10s, labels: {release: prom}}
dashboards: {enabled: true, namespace: monitoring, annotations: {grafana_folder: Databases}}
EOF
cat >"$WORK/namespaced.yaml" <<'EOF'
watchNamespace: team-a
dashboards: {enabled: true}
EOF
cat >"$WORK/no-crd.yaml" <<'EOF'
crds: {install: false}
serviceAccount: {create: false, name: existing-sa}
service: {enabled: false}
image: {digest: "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}
EOF

# Lint.
for vs in default all-on namespaced no-crd; do
  args=()
  [ "$vs" = default ] || args=(-f "$WORK/$vs.yaml")
  if "$HELM" lint --strict --kube-version "$KUBE_VERSION" "$CHART" "${args[@]}" >"$WORK/lint-$vs.log" 2>&1; then
    ok "helm lint --strict ($vs values)"
  else
    cat "$WORK/lint-$vs.log" >&2
    fail "helm lint --strict ($vs values)"
  fi
done

# Render and validate.
for vs in default all-on namespaced no-crd; do
  args=()
  [ "$vs" = default ] || args=(-f "$WORK/$vs.yaml")
  out="$WORK/render-$vs.yaml"
  if ! "$HELM" template dynamo-operator "$CHART" --kube-version "$KUBE_VERSION" --namespace dynamo-system "${args[@]}" >"$out" 2>"$WORK/render-$vs.err"; then
    cat "$WORK/render-$vs.err" >&2
    fail "helm template ($vs values)"
    continue
  fi
  # ServiceMonitor: no schema here (see above); everything else must have one.
  if kubeconform_strict -skip ServiceMonitor "$out" >"$WORK/kubeconform-$vs.log" 2>&1; then
    ok "helm template | kubeconform -strict ($vs values): $(tail -n1 "$WORK/kubeconform-$vs.log")"
  else
    cat "$WORK/kubeconform-$vs.log" >&2
    fail "helm template | kubeconform -strict ($vs values)"
  fi
  if grep -qi 'skipped: [1-9]' "$WORK/kubeconform-$vs.log" && ! grep -q '^kind: ServiceMonitor' "$out"; then
    fail "kubeconform skipped resources ($vs values)"
  fi
done

# kubeconform really rejects what it must (else the checks above prove nothing).
cat >"$WORK/bad.yaml" <<'EOF'
apiVersion: apps/v1
kind: Deployment
metadata: {name: bad}
spec:
  selector: {matchLabels: {a: b}}
  template:
    metadata: {labels: {a: b}}
    spec:
      containers: [{name: c, image: x, securityContext: {runAsNonRot: true}}]
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: bad}
automountServiceAccountTokn: true
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: bad}
rules: [{apiGroups: [""], resources: [pods], verbs: get}]
---
apiVersion: dynamo.dev/v1alpha1
kind: DynamoCluster
metadata: {name: bad}
spec: {replicas: 3, image: x, replication: {n: 3, quorum: 2}}
EOF
if kubeconform_strict "$WORK/bad.yaml" >"$WORK/bad.log" 2>&1; then
  fail "kubeconform accepted invalid manifests"
elif [ "$(grep -c ' is invalid: ' "$WORK/bad.log")" != 4 ]; then
  cat "$WORK/bad.log" >&2
  fail "kubeconform did not reject each of the 4 invalid manifests"
else
  ok "kubeconform -strict rejects a typo in a Deployment, ServiceAccount, ClusterRole and DynamoCluster"
fi

# The example DynamoCluster against the CRD's schema.
if kubeconform_strict "$REPO_ROOT/e2e/manifests/dynamocluster.yaml" >"$WORK/example.log" 2>&1; then
  ok "e2e/manifests/dynamocluster.yaml validates against the CRD schema"
else
  cat "$WORK/example.log" >&2
  fail "e2e/manifests/dynamocluster.yaml does not validate against the CRD schema"
fi

# values.schema.json rejects bad values.
reject() {
  local what="$1"; shift
  if "$HELM" template x "$CHART" --kube-version "$KUBE_VERSION" "$@" >/dev/null 2>"$WORK/reject.err"; then
    fail "values.schema.json accepted $what"
  elif ! grep -qi 'schema' "$WORK/reject.err"; then
    cat "$WORK/reject.err" >&2
    fail "$what was refused, but not by values.schema.json"
  fi
}
reject "an unknown top-level key" --set imag.tag=x
reject "an unknown image key" --set image.tags=x
reject "a bad pullPolicy" --set image.pullPolicy=Sometimes
reject "a bad log format" --set operator.logFormat=xml
reject "a string port" --set-string httpPort=http
reject "a bad watchNamespace" --set watchNamespace=Team_A
[ "$FAILED" = 1 ] || ok "values.schema.json rejects unknown keys and bad values"

# The optional chart charts/dynamo-cluster: one DynamoCluster from values.
CLUSTER_CHART="$REPO_ROOT/charts/dynamo-cluster"
cat >"$WORK/cluster-full.yaml" <<'EOF'
nameOverride: kv
replicas: 5
image: {repository: registry.example/dynamo-rs/node, tag: "0.1.0"}
labels: {team: storage}
spec:
  replication: {"n": 3, r: 2, w: 2, conflicts: siblings}
  partitions: 512
  storage: {size: 10Gi, storageClassName: fast, reclaimPolicy: Delete}
  resources: {requests: {cpu: "1", memory: 2Gi}, limits: {memory: 4Gi}}
  gossipIntervalMs: 500
  antiEntropyIntervalSeconds: 120
  pod:
    tolerations: [{key: dedicated, operator: Equal, value: db, effect: NoSchedule}]
    terminationGracePeriodSeconds: 90
  service: {type: LoadBalancer, annotations: {example.com/lb: internal}}
  monitoring: {serviceMonitor: {enabled: true, interval: 30s, labels: {release: prom}}}
  clusterTokenSecret: {name: kv-token, key: token}
EOF
for vs in default cluster-full; do
  args=()
  [ "$vs" = default ] || args=(-f "$WORK/$vs.yaml")
  if "$HELM" lint --strict --kube-version "$KUBE_VERSION" "$CLUSTER_CHART" "${args[@]}" >"$WORK/lint-c-$vs.log" 2>&1 \
      && "$HELM" template kv "$CLUSTER_CHART" --kube-version "$KUBE_VERSION" -n db "${args[@]}" >"$WORK/render-c-$vs.yaml" 2>&1 \
      && kubeconform_strict "$WORK/render-c-$vs.yaml" >"$WORK/kubeconform-c-$vs.log" 2>&1 \
      && grep -q 'Valid: 1, Invalid: 0, Errors: 0, Skipped: 0' "$WORK/kubeconform-c-$vs.log"; then
    ok "charts/dynamo-cluster ($vs values): helm lint --strict, helm template | kubeconform -strict against the CRD schema"
  else
    cat "$WORK/lint-c-$vs.log" "$WORK/render-c-$vs.yaml" "$WORK/kubeconform-c-$vs.log" >&2 2>/dev/null
    fail "charts/dynamo-cluster ($vs values)"
  fi
done
printf 'spec:\n  replication: {n: 3}\n' >"$WORK/bare-n.yaml"
if "$HELM" template kv "$CLUSTER_CHART" --kube-version "$KUBE_VERSION" -f "$WORK/bare-n.yaml" >/dev/null 2>&1; then
  fail "charts/dynamo-cluster accepted replication: {n: 3} (YAML 1.1 reads n as false)"
else
  ok "charts/dynamo-cluster refuses a bare replication key n (read as false)"
fi

# Structure of the rendered objects.
if python3 - "$WORK" "$REPO_ROOT" <<'PY'
import json, sys, yaml, glob, os
work, repo = sys.argv[1], sys.argv[2]
errors = []
def docs(name):
    return [d for d in yaml.safe_load_all(open(f"{work}/render-{name}.yaml")) if d]
def by_kind(ds, kind):
    return [d for d in ds if d["kind"] == kind]

# 5. CRD equality.
want = yaml.safe_load(open(f"{repo}/crds/dynamocluster.yaml"))
with open(f"{repo}/crds/dynamocluster.yaml", "rb") as a, open(f"{repo}/charts/dynamo-operator/files/dynamocluster.yaml", "rb") as b:
    if a.read() != b.read():
        errors.append("charts/dynamo-operator/files/dynamocluster.yaml differs from crds/dynamocluster.yaml "
                      "(cp crds/dynamocluster.yaml charts/dynamo-operator/files/)")
default = docs("default")
crds = by_kind(default, "CustomResourceDefinition")
if len(crds) != 1:
    errors.append(f"{len(crds)} CRDs rendered with the default values, expected 1")
else:
    got = crds[0]
    meta = got["metadata"]
    if meta.get("annotations", {}).get("helm.sh/resource-policy") != "keep":
        errors.append("the CRD lacks helm.sh/resource-policy: keep")
    meta.pop("annotations", None); meta.pop("labels", None)
    if got != want:
        errors.append("the rendered CRD (templates/crd.yaml) differs from crds/dynamocluster.yaml")
if by_kind(docs("no-crd"), "CustomResourceDefinition"):
    errors.append("crds.install=false still renders the CRD")

# 6. RBAC equals operator/deploy/rbac.yaml.
ref = [d for d in yaml.safe_load_all(open(f"{repo}/operator/deploy/rbac.yaml")) if d and d["kind"] == "ClusterRole"][0]["rules"]
roles = by_kind(default, "ClusterRole")
if len(roles) != 1 or roles[0]["rules"] != ref:
    errors.append("the chart's ClusterRole rules differ from operator/deploy/rbac.yaml")
ns = docs("namespaced")
if by_kind(ns, "ClusterRole") or by_kind(ns, "ClusterRoleBinding"):
    errors.append("watchNamespace set, but cluster-wide RBAC rendered")
r = by_kind(ns, "Role")
if len(r) != 1 or r[0]["rules"] != ref or r[0]["metadata"].get("namespace") != "team-a":
    errors.append("watchNamespace=team-a: expected one Role in team-a with the reconciler's rules")
dep = by_kind(ns, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
if {"name": "WATCH_NAMESPACE", "value": "team-a"} not in dep["env"]:
    errors.append("watchNamespace does not set WATCH_NAMESPACE")
rb = by_kind(default, "ClusterRoleBinding")
sa = by_kind(default, "ServiceAccount")
if len(rb) != 1 or len(sa) != 1 or rb[0]["subjects"] != [{"kind": "ServiceAccount", "name": sa[0]["metadata"]["name"], "namespace": "dynamo-system"}]:
    errors.append("the ClusterRoleBinding does not bind the chart's ServiceAccount")

# 7. Hardened defaults.
d = by_kind(default, "Deployment")
if len(d) != 1:
    errors.append("expected one Deployment")
else:
    spec = d[0]["spec"]["template"]["spec"]
    c = spec["containers"][0]
    sc, psc = c.get("securityContext", {}), spec.get("securityContext", {})
    checks = {
        "runAsNonRoot": sc.get("runAsNonRoot") is True and psc.get("runAsNonRoot") is True,
        "readOnlyRootFilesystem": sc.get("readOnlyRootFilesystem") is True,
        "allowPrivilegeEscalation false": sc.get("allowPrivilegeEscalation") is False,
        "capabilities drop ALL": sc.get("capabilities", {}).get("drop") == ["ALL"],
        "seccomp RuntimeDefault": psc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
        "non-root uid 65532": psc.get("runAsUser") == 65532,
        "serviceAccountName": spec.get("serviceAccountName") == sa[0]["metadata"]["name"],
        "replicas 1, Recreate": d[0]["spec"]["replicas"] == 1 and d[0]["spec"]["strategy"]["type"] == "Recreate",
        "image tag = appVersion": c["image"] == "dynamo-rs/operator:0.1.0",
        "probes": all(k in c for k in ("livenessProbe", "readinessProbe", "startupProbe")),
    }
    errors += [f"Deployment: {k}" for k, v in checks.items() if not v]
if by_kind(default, "ServiceMonitor") or by_kind(default, "ConfigMap"):
    errors.append("default values render a ServiceMonitor or dashboard ConfigMaps (both are opt-in)")

# Dashboards as ConfigMaps.
on = docs("all-on")
files = sorted(glob.glob(f"{repo}/charts/dynamo-operator/dashboards/*.json"))
cms = by_kind(on, "ConfigMap")
if len(cms) != len(files) or not files:
    errors.append(f"{len(cms)} dashboard ConfigMaps for {len(files)} dashboards")
for cm in cms:
    if cm["metadata"]["labels"].get("grafana_dashboard") != "1" or cm["metadata"]["namespace"] != "monitoring":
        errors.append(f"ConfigMap {cm['metadata']['name']}: label grafana_dashboard=\"1\" / namespace monitoring missing")
    for key, text in cm["data"].items():
        src = f"{repo}/charts/dynamo-operator/dashboards/{key}"
        if not os.path.exists(src) or json.loads(text) != json.load(open(src)):
            errors.append(f"ConfigMap {cm['metadata']['name']}: {key} differs from the dashboard file")
sm = by_kind(on, "ServiceMonitor")
svc = by_kind(on, "Service")
if len(sm) != 1 or len(svc) != 1:
    errors.append("serviceMonitor.enabled: expected one ServiceMonitor and one Service")
else:
    s = sm[0]
    if s["apiVersion"] != "monitoring.coreos.com/v1" or s["spec"]["selector"]["matchLabels"].items() - svc[0]["metadata"]["labels"].items() \
            or s["spec"]["endpoints"][0]["port"] != svc[0]["spec"]["ports"][0]["name"] \
            or s["metadata"]["labels"].get("release") != "prom" or s["spec"]["endpoints"][0].get("interval") != "30s":
        errors.append("the ServiceMonitor does not select the metrics Service's port, or lacks its labels/interval")
nc = docs("no-crd")
dep = by_kind(nc, "Deployment")[0]["spec"]["template"]["spec"]
if by_kind(nc, "ServiceAccount") or dep["serviceAccountName"] != "existing-sa" or not dep["containers"][0]["image"].endswith("@sha256:" + "0123456789abcdef" * 4):
    errors.append("serviceAccount.create=false / image.digest not honoured")
for e in errors:
    print(f"  {e}", file=sys.stderr)
sys.exit(1 if errors else 0)
PY
then
  ok "CRD equals crds/dynamocluster.yaml; RBAC equals operator/deploy/rbac.yaml; hardened defaults; dashboards ConfigMaps; ServiceMonitor"
else
  fail "rendered objects (see above)"
fi

[ "$FAILED" = 0 ] || die "chart checks failed"
log "PASS: chart checks ($((SECONDS - T_START)) s)"
