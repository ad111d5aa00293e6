#!/usr/bin/env python3
"""Evaluates every query of the Grafana dashboards in charts/dynamo-operator/dashboards/ through a real
Prometheus that scrapes a `dynamo dev` cluster under a short workload.

Steps: start `dynamo dev --nodes 3` on free loopback ports; start Prometheus on 127.0.0.1
scraping the 3 members every second (static labels namespace="dynamo-e2e",
cluster="dev"); run a workload (puts, gets, deletes, misses, a wrong admin token, and one
member frozen with SIGSTOP while writes with w=3 / reads with r=3 fail their quorum and
writes with w=2 leave it stale; then SIGCONT); wait until Prometheus has the samples; then,
for every dashboard (JSON files in --dashboards), resolve its template variables through
Prometheus (label_values(...) queries) and evaluate every panel target through
/api/v1/query, twice: with the first value of each variable, and with "All". A query
fails when Prometheus refuses it, when it returns no series, or when every value is NaN.
Every metric name a dashboard uses must also be defined in node/src/metrics.rs or
operator/src/metrics.rs (a static check, which also covers dashboards not evaluated).

A dashboard is evaluated only when something exports its metrics: the operator dashboard
needs a running operator (--operator-metrics HOST:PORT adds it as a scrape target);
without one it is reported as SKIPPED, never as passed.

Run it through e2e/prometheus-dashboards-test.sh (installs Prometheus, builds dynamo), or
directly: python3 e2e/prometheus_dashboards_test.py --dynamo target/release/dynamo
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NAMESPACE, CLUSTER = "dynamo-e2e", "dev"
OPERATOR_NAMESPACE = "dynamo-system"
# Grafana's built-in interval variables. The workload lasts well under a minute and
# queries are evaluated right after it, so a 1m window sees all of it.
BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "5m",
    "__interval_ms": "15000",
    "__range_s": "300",
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Failure(Exception):
    pass


def wait_for(what: str, timeout: float, cond, interval: float = 0.25):
    """Polls cond() until it returns a truthy value; raises Failure after timeout."""
    deadline = time.monotonic() + timeout
    last_error = None
    while True:
        try:
            value = cond()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - reported on timeout
            last_error = e
        if time.monotonic() > deadline:
            raise Failure(f"timed out after {timeout:.0f}s waiting for {what}"
                          + (f" (last error: {last_error})" if last_error else ""))
        time.sleep(interval)


def http_full(method: str, url: str, body: bytes | None = None, token: str | None = None,
              timeout: float = 10.0, headers: dict | None = None) -> tuple[int, bytes, dict]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def http(method: str, url: str, body: bytes | None = None, token: str | None = None,
         timeout: float = 10.0) -> tuple[int, bytes]:
    status, data, _ = http_full(method, url, body, token, timeout)
    return status, data


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_base_port(nodes: int) -> int:
    """A base port B with B..B+nodes-1 and B+100.. free (dynamo dev's layout)."""
    for base in range(21000, 60000, 211):
        ports = [base + i for i in range(nodes)] + [base + 100 + i for i in range(nodes)]
        if all(port_free(p) for p in ports):
            return base
    raise Failure("no free port range for dynamo dev")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- processes

class Processes:
    """Processes this test started, each in its own session; stopped by pid on exit."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], logfile: Path, **kw) -> subprocess.Popen:
        log(f"starting {name}: {' '.join(argv)} (log: {logfile})")
        out = open(logfile, "ab")
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True, **kw)
        self.procs.append((name, p))
        return p

    def stop_all(self) -> None:
        for name, p in reversed(self.procs):
            if p.poll() is not None:
                continue
            # Members of `dynamo dev` may be frozen; thaw the whole session first.
            try:
                os.killpg(p.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                log(f"{name} (pid {p.pid}) did not stop in 20s; killing its process group")
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=10)
        # Members left behind by a dev process that was killed (same session id).
        for name, p in self.procs:
            try:
                os.killpg(p.pid, 0)
            except ProcessLookupError:
                continue
            except PermissionError:
                continue
            log(f"processes of {name}'s session {p.pid} remain; sending SIGKILL")
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def member_pid(dev_pid: int, index: int) -> int:
    for c in children(dev_pid):
        try:
            argv = Path(f"/proc/{c}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"--id=node-{index}".encode() in argv:
            return c
    raise Failure(f"no process for node-{index} among the children of dynamo dev ({dev_pid})")


# ---------------------------------------------------------------- Prometheus

class Prometheus:
    def __init__(self, addr: str) -> None:
        self.base = f"http://{addr}"

    def api(self, path: str, **params) -> dict:
        url = f"{self.base}{path}?{urllib.parse.urlencode(params, doseq=True)}"
        status, body = http("GET", url, timeout=15)
        try:
            doc = json.loads(body)
        except ValueError:
            raise Failure(f"{path}: HTTP {status}: {body[:300]!r}") from None
        if doc.get("status") != "success":
            raise Failure(f"{doc.get('errorType')}: {doc.get('error')}")
        return doc["data"]

    def query(self, expr: str, at: float) -> dict:
        return self.api("/api/v1/query", query=expr, time=f"{at:.3f}")

    def scalar(self, expr: str, at: float | None = None) -> float | None:
        data = self.query(expr, at if at is not None else time.time())
        if data["resultType"] == "vector" and data["result"]:
            return float(data["result"][0]["value"][1])
        if data["resultType"] == "scalar":
            return float(data["result"][1])
        return None


# ---------------------------------------------------------------- workload

class Cluster:
    def __init__(self, http_addrs: list[str], token: str) -> None:
        self.addrs = http_addrs
        self.token = token
        self.ops = 0

    def kv_full(self, method: str, i: int, key: str, value: bytes | None = None, query: str = "",
                timeout: float = 10.0, context: str | None = None) -> tuple[int, dict]:
        self.ops += 1
        url = f"http://{self.addrs[i]}/v1/kv/{urllib.parse.quote(key)}{query}"
        headers = {"X-Dynamo-Context": context} if context else {}
        try:
            status, _, h = http_full(method, url, body=value, timeout=timeout, headers=headers)
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            raise Failure(f"{method} {url}: {e}") from None
        return status, {k.lower(): v for k, v in h.items()}

    def kv(self, method: str, i: int, key: str, value: bytes | None = None, query: str = "",
           timeout: float = 10.0) -> int:
        return self.kv_full(method, i, key, value, query, timeout)[0]

    def admin(self, i: int, path: str, token: str | None = None) -> tuple[int, bytes]:
        return http("GET", f"http://{self.addrs[i]}{path}", token=token or self.token)


def expect(status: int, allowed: tuple[int, ...], what: str) -> None:
    if status not in allowed:
        raise Failure(f"{what}: HTTP {status}, expected {allowed}")


def workload(c: Cluster, dev_pid: int) -> dict:
    """Exercises every code path the dashboards show. Returns counts for the report."""
    t0 = time.monotonic()
    n = 300
    for k in range(n):
        expect(c.kv("PUT", k % 3, f"wl-{k}", f"value-{k}".encode()), (200, 201, 204), f"put wl-{k}")
    contexts = {}
    for k in range(n):
        status, headers = c.kv_full("GET", (k + 1) % 3, f"wl-{k}")
        expect(status, (200,), f"get wl-{k}")
        contexts[k] = headers.get("x-dynamo-context")
    # Deletes carry the context of the read they follow (a blind delete would leave the
    # value as a sibling of the tombstone).
    for k in range(0, n, 3):
        status, _ = c.kv_full("DELETE", (k + 2) % 3, f"wl-{k}", context=contexts[k])
        expect(status, (200, 202, 204), f"delete wl-{k}")
    for k in range(0, n, 3):
        expect(c.kv("GET", k % 3, f"wl-{k}"), (404,), f"get deleted wl-{k}")
    for k in range(20):
        expect(c.kv("GET", k % 3, f"missing-{k}"), (404,), f"get missing-{k}")
    # A wrong admin token: counted in dynamo_http_auth_failures_total{api="admin"}.
    status, _ = c.admin(0, "/v1/cluster/members", token="not-the-cluster-token")
    expect(status, (401, 403), "admin call with a wrong token")

    # Freeze node-2: peers time out on it (rpc errors), quorums of 3 fail, writes with
    # w=2 leave it stale (hints, read repair and anti-entropy repair it after SIGCONT).
    frozen = member_pid(dev_pid, 2)
    log(f"freezing node-2 (pid {frozen}) with SIGSTOP")
    os.kill(frozen, signal.SIGSTOP)
    try:
        quorum_failures = 0
        for k in range(3):
            s = c.kv("PUT", 0, f"strict-{k}", b"needs-three", query="?w=3", timeout=15)
            quorum_failures += s >= 500
            s = c.kv("GET", 1, f"wl-{k + 1}", query="?r=3", timeout=15)
            quorum_failures += s >= 500
        if quorum_failures == 0:
            raise Failure("no request failed its quorum with node-2 frozen")
        for k in range(60):
            expect(c.kv("PUT", k % 2, f"stale-{k}", f"while-frozen-{k}".encode(), timeout=15),
                   (200, 201, 204), f"put stale-{k} with node-2 frozen")
    finally:
        log("thawing node-2 (SIGCONT)")
        os.kill(frozen, signal.SIGCONT)
    # Reads through every member, node-2 included, with all three replicas asked.
    def all_readable() -> bool:
        for k in range(60):
            if c.kv("GET", k % 3, f"stale-{k}", query="?r=3", timeout=15) != 200:
                return False
        return True
    wait_for("every key written while node-2 was frozen to be readable with r=3", 60, all_readable, 0.5)
    return {"client requests": c.ops, "seconds": round(time.monotonic() - t0, 1),
            "quorum failures provoked": quorum_failures}


# ---------------------------------------------------------------- dashboards

def panels_of(dashboard: dict) -> list[dict]:
    out = []
    for p in dashboard.get("panels", []):
        out.append(p)
        out.extend(p.get("panels", []))  # collapsed rows keep their panels inside
    return [p for p in out if p.get("type") != "row"]


def metric_names_defined() -> dict[str, str]:
    """Metric names the code exports: node/src/metrics.rs and operator/src/metrics.rs."""
    names = {}
    node = (REPO / "node/src/metrics.rs").read_text()
    for m in re.findall(r'"(dynamo_[a-z0-9_]+)"', node):
        names[m] = "node"
    op_file = REPO / "operator/src/metrics.rs"
    if op_file.exists():
        op = op_file.read_text()
        prefix = re.search(r'new_custom\(\s*Some\("([a-z0-9_]+)"', op)
        if prefix:
            for m in re.findall(r'(?:Opts::new|IntGauge::new|Gauge::new|IntCounter::new|Counter::new)\(\s*"([a-z0-9_]+)"', op):
                names[f"{prefix.group(1)}_{m}"] = "operator"
    return names


def metric_names_used(expr: str) -> set[str]:
    # Label names inside {...} and function names never start with "dynamo_".
    return set(re.findall(r"\bdynamo_[a-z0-9_]+\b", re.sub(r'"[^"]*"', '""', expr)))


def base_metric(name: str, defined: dict[str, str]) -> str:
    if name in defined:
        return name
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in defined:
            return name[: -len(suffix)]
    return name


def prom_regex_escape(value: str) -> str:
    """Grafana's escaping of a multi-value variable for a Prometheus regex matcher."""
    escaped = re.sub(r"([\\^$.|?*+()\[\]{}])", r"\\\1", value)
    return escaped.replace("\\", "\\\\")


def substitute(text: str, values: dict[str, str]) -> str:
    for name in sorted(values, key=len, reverse=True):
        v = values[name]
        text = text.replace("${" + name + "}", v).replace("[[" + name + "]]", v)
        text = re.sub(r"\$" + re.escape(name) + r"(?![A-Za-z0-9_])", lambda _m: v, text)
    return text


LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(.*),\s*)?([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*$")


def resolve_variables(dashboard: dict, prom: Prometheus, mode: str) -> dict[str, str]:
    """Values of the dashboard's variables: mode "first" takes the first value of each,
    mode "all" takes "All" (allValue) where the variable offers it."""
    values = dict(BUILTINS)
    for var in dashboard.get("templating", {}).get("list", []):
        name, kind = var["name"], var.get("type")
        if kind == "datasource":
            values[name] = "prometheus"
            continue
        if kind == "constant" or kind == "custom":
            values[name] = str(var.get("query", "")).split(",")[0]
            continue
        if kind != "query":
            raise Failure(f"variable {name}: type {kind} is not supported by this test")
        q = var.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = LABEL_VALUES.match(substitute(q or "", values))
        if not m:
            raise Failure(f"variable {name}: only label_values(...) queries are supported, got {q!r}")
        match, label = m.group(1), m.group(2)
        params = {"match[]": [match]} if match else {}
        found = prom.api(f"/api/v1/label/{label}/values", **params)
        if not found:
            raise Failure(f"variable {name}: {q!r} returns no values")
        if mode == "all" and var.get("includeAll"):
            values[name] = var.get("allValue") or "|".join(prom_regex_escape(v) for v in found)
        elif var.get("multi"):
            values[name] = prom_regex_escape(found[0])
        else:
            values[name] = found[0]
    return values


def evaluate(dashboard: dict, prom: Prometheus, at: float, defined: dict[str, str]) -> list[dict]:
    rows = []
    modes = {m: resolve_variables(dashboard, prom, m) for m in ("first", "all")}
    for panel in panels_of(dashboard):
        for target in panel.get("targets", []):
            expr = target.get("expr")
            if not expr:
                continue
            row = {"panel": panel.get("title", "?"), "ref": target.get("refId", "?"), "expr": expr,
                   "errors": []}
            unknown = [n for n in metric_names_used(expr) if base_metric(n, defined) not in defined]
            if unknown:
                row["errors"].append(f"metrics not defined in the code: {', '.join(sorted(unknown))}")
            for mode, values in modes.items():
                q = substitute(expr, values)
                if "$" in q:
                    row["errors"].append(f"[{mode}] unresolved variable in {q}")
                    row[mode] = "-"
                    continue
                try:
                    data = prom.query(q, at)
                except Failure as e:
                    row["errors"].append(f"[{mode}] query failed: {e}: {q}")
                    row[mode] = "error"
                    continue
                result = data["result"]
                if data["resultType"] == "scalar":
                    samples = [result[1]]
                else:
                    samples = [r["value"][1] for r in result]
                numbers = [float(s) for s in samples]
                row[mode] = len(samples)
                if not samples:
                    row["errors"].append(f"[{mode}] no data: {q}")
                elif all(math.isnan(x) for x in numbers):
                    row["errors"].append(f"[{mode}] only NaN: {q}")
                row.setdefault("max", max((x for x in numbers if not math.isnan(x)), default=float("nan")))
            rows.append(row)
    return rows


def static_check(dashboard: dict, defined: dict[str, str]) -> list[str]:
    errors = []
    for panel in panels_of(dashboard):
        for target in panel.get("targets", []):
            for n in metric_names_used(target.get("expr", "")):
                if base_metric(n, defined) not in defined:
                    errors.append(f"{panel.get('title')}: {n} is not defined in the code")
    return errors


def check_structure(path: Path, d: dict) -> list[str]:
    """What Grafana needs to import the file with a datasource picker."""
    errors = []
    for key in ("title", "uid", "panels", "templating", "schemaVersion"):
        if key not in d:
            errors.append(f"missing {key}")
    if d.get("schemaVersion", 0) < 36:
        errors.append(f"schemaVersion {d.get('schemaVersion')} is older than 36")
    variables = {v["name"]: v for v in d.get("templating", {}).get("list", [])}
    if variables.get("datasource", {}).get("type") != "datasource":
        errors.append("no datasource variable named datasource")
    ids = set()
    for p in d.get("panels", []) + [c for p in d.get("panels", []) for c in p.get("panels", [])]:
        if p.get("id") in ids:
            errors.append(f"duplicate panel id {p.get('id')}")
        ids.add(p.get("id"))
        if p.get("type") == "row":
            continue
        if p.get("datasource", {}).get("uid") != "${datasource}":
            errors.append(f"panel {p.get('title')!r} does not use ${{datasource}}")
        for t in p.get("targets", []):
            if t.get("datasource", {}).get("uid") != "${datasource}":
                errors.append(f"panel {p.get('title')!r} target {t.get('refId')} does not use ${{datasource}}")
    return errors


# ---------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dynamo", default=str(REPO / "target/release/dynamo"))
    ap.add_argument("--prometheus", default=shutil.which("prometheus") or "/usr/bin/prometheus")
    ap.add_argument("--dashboards", default=str(REPO / "charts/dynamo-operator/dashboards"))
    ap.add_argument("--operator-metrics", metavar="HOST:PORT",
                    help="a running dynamo-operator's metrics address, scraped too")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()

    for binary in (args.dynamo, args.prometheus):
        if not os.access(binary, os.X_OK):
            raise Failure(f"{binary} is not an executable")
    work = Path(tempfile.mkdtemp(prefix="dynamo-prom-test."))
    procs = Processes()
    started = time.monotonic()
    ok = False
    try:
        ok = run(args, work, procs)
    except Failure as e:
        log(f"ERROR: {e}")
    finally:
        procs.stop_all()
        if not ok:
            for f in sorted(work.glob("*.log")) + sorted((work / "dev").glob("node-*.log")):
                lines = f.read_text(errors="replace").splitlines()[-25:]
                print(f"----- last lines of {f} -----", file=sys.stderr)
                print("\n".join(lines), file=sys.stderr)
        if args.keep or not ok:
            log(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        log(f"{'PASS' if ok else 'FAIL'}: prometheus dashboards test ({time.monotonic() - started:.0f} s)")
    return 0 if ok else 1


def run(args, work: Path, procs: Processes) -> bool:
    dashboards = {}
    for f in sorted(Path(args.dashboards).glob("*.json")):
        dashboards[f.name] = json.loads(f.read_text())
    if not dashboards:
        raise Failure(f"no dashboards in {args.dashboards}")
    defined = metric_names_defined()
    failed = False
    for name, d in dashboards.items():
        errors = check_structure(Path(name), d) + static_check(d, defined)
        for e in errors:
            log(f"{name}: {e}")
        failed |= bool(errors)

    # dynamo dev, with anti-entropy every 2 s so exchanges happen within the test.
    base = free_base_port(3)
    dev_out = work / "dev.log"
    dev = procs.start("dynamo dev", [
        args.dynamo, "dev", "--nodes", "3", "--base-port", str(base), "--data-dir", str(work / "dev"),
        "--durability", "periodic", "--timeout-s", "90",
        "--node-arg=--anti-entropy-interval-s=2", "--node-arg=--gossip-interval-ms=300",
        "--node-arg=--replica-timeout-ms=500",
    ], dev_out)

    def token() -> str | None:
        if dev.poll() is not None:
            raise Failure(f"dynamo dev exited with {dev.returncode}")
        m = re.search(r"DYNAMO_TOKEN=(\S+)", dev_out.read_text(errors="replace"))
        return m.group(1) if m else None
    tok = wait_for("dynamo dev to print its DYNAMO_TOKEN export (cluster settled)", 120, token, 0.5)
    addrs = [f"127.0.0.1:{base + i}" for i in range(3)]
    log(f"dynamo dev is up: {', '.join(addrs)}")

    prom_port = free_port()
    targets = [{"targets": addrs, "labels": {"namespace": NAMESPACE, "cluster": CLUSTER}}]
    scrape = [{"job_name": "dynamo", "scrape_interval": "1s", "scrape_timeout": "1s",
               "static_configs": targets}]
    if args.operator_metrics:
        scrape.append({"job_name": "dynamo-operator", "scrape_interval": "1s", "scrape_timeout": "1s",
                       "static_configs": [{"targets": [args.operator_metrics],
                                           "labels": {"namespace": OPERATOR_NAMESPACE}}]})
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "scrape_configs": scrape}
    # JSON is YAML.
    (work / "prometheus.yml").write_text(json.dumps(config, indent=2))
    prom_proc = procs.start("prometheus", [
        args.prometheus, f"--config.file={work / 'prometheus.yml'}",
        f"--storage.tsdb.path={work / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}",
        "--log.level=warn",
    ], work / "prometheus.log")
    prom = Prometheus(f"127.0.0.1:{prom_port}")

    def prom_ready() -> bool:
        if prom_proc.poll() is not None:
            raise Failure(f"prometheus exited with {prom_proc.returncode}")
        return http("GET", f"{prom.base}/-/ready", timeout=2)[0] == 200
    wait_for("prometheus to be ready", 60, prom_ready)
    n_targets = len(addrs) + (1 if args.operator_metrics else 0)
    wait_for(f"{n_targets} scrape targets up", 60,
             lambda: prom.scalar("count(up == 1)") == n_targets, 0.5)
    log(f"prometheus {prom.base} scrapes {n_targets} targets every 1s")

    cluster = Cluster(addrs, tok)
    summary = workload(cluster, dev.pid)
    log(f"workload done: {summary}")
    # Every request has been scraped: the counters sum to at least what was sent.
    wait_for("prometheus to have scraped the whole workload", 30,
             lambda: (prom.scalar(f'sum(dynamo_requests_total{{job="dynamo"}})') or 0) >= cluster.ops, 0.5)
    at = time.time()

    report = []
    exported = {n for n in prom.api("/api/v1/label/__name__/values") if n.startswith("dynamo_")}
    for name, d in dashboards.items():
        needs = {base_metric(n, defined) for p in panels_of(d) for t in p.get("targets", [])
                 for n in metric_names_used(t.get("expr", ""))}
        sources = {defined.get(n, "?") for n in needs}
        if "operator" in sources and not args.operator_metrics:
            log(f"SKIPPED {name}: no operator runs here (pass --operator-metrics HOST:PORT); "
                f"its {len(needs)} metric names were checked against operator/src/metrics.rs only")
            report.append((name, None))
            continue
        rows = evaluate(d, prom, at, defined)
        report.append((name, rows))
        missing = sorted(n for n in needs if not any(e == n or e.startswith(n + "_") for e in exported))
        if missing:
            log(f"{name}: metrics never exported by the scraped processes: {', '.join(missing)}")
            failed = True

    print()
    print(f"{'dashboard':<22} {'panel':<38} {'ref':<3} {'first':>5} {'all':>5} {'max':>10}  result")
    for name, rows in report:
        if rows is None:
            print(f"{name:<22} {'(all panels)':<38} {'-':<3} {'-':>5} {'-':>5} {'-':>10}  SKIPPED (no operator)")
            continue
        for r in rows:
            mx = r.get("max", float("nan"))
            mx_s = "nan" if isinstance(mx, float) and math.isnan(mx) else f"{mx:.4g}"
            status = "ok" if not r["errors"] else "FAIL"
            print(f"{name:<22} {r['panel'][:38]:<38} {r['ref']:<3} {r['first']!s:>5} {r['all']!s:>5} {mx_s:>10}  {status}")
            for e in r["errors"]:
                print(f"    {e}")
                failed = True
    print()
    queries = sum(len(rows) for _, rows in report if rows)
    log(f"{queries} dashboard queries evaluated at {time.strftime('%H:%M:%S', time.localtime(at))}; "
        f"{'failures above' if failed else 'all returned data'}")
    return not failed


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Failure as e:
        log(f"ERROR: {e}")
        sys.exit(1)
