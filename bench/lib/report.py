"""The report of bench/compare.sh: reads RESULTS/raw/<system>/*.json (the `dynamo bench`
reports) and writes RESULTS/report.md, summary.json, curve-a.csv and (unless --no-plot)
curve-a.png.

    report.py RESULTS [--no-plot]
"""

import csv
import json
import os
import sys

WORKLOADS = ["a", "b", "c", "write"]
DYNAMO = ["dynamo-fsync", "dynamo-periodic"]
ORDER = ["dynamo-fsync", "dynamo-periodic", "etcd", "cassandra", "nginx"]


def load(path):
    with open(path) as f:
        return json.load(f)


def ms(us):
    return us / 1000.0


def main():
    results = sys.argv[1]
    plot = "--no-plot" not in sys.argv[2:]
    raw = os.path.join(results, "raw")
    systems = sorted(os.listdir(raw), key=lambda s: (ORDER.index(s) if s in ORDER else 99, s))
    summary = {"systems": {}}
    for s in systems:
        d = os.path.join(raw, s)
        entry = {"workloads": {}, "curve": []}
        for w in WORKLOADS:
            p = os.path.join(d, w + ".json")
            if os.path.exists(p):
                r = load(p)
                entry["workloads"][w] = {
                    "ops_s": r["throughput_ops_s"],
                    "p50_ms": ms(r["all"]["p50_us"]),
                    "p99_ms": ms(r["all"]["p99_us"]),
                    "p999_ms": ms(r["all"]["p999_us"]),
                    "ops": r["ops"],
                    "errors": r["errors"],
                }
        curve = [f for f in os.listdir(d) if f.startswith("curve-") and f.endswith(".json")]
        for f in sorted(curve, key=lambda f: float(f[len("curve-") : -len(".json")])):
            r = load(os.path.join(d, f))
            entry["curve"].append(
                {
                    "fraction": float(f[len("curve-") : -len(".json")]),
                    "target_ops_s": r["config"]["rate"],
                    "ops_s": r["throughput_ops_s"],
                    "p50_ms": ms(r["all"]["p50_us"]),
                    "p99_ms": ms(r["all"]["p99_us"]),
                    "p999_ms": ms(r["all"]["p999_us"]),
                    "errors": r["errors"],
                }
            )
        rss = os.path.join(d, "peak_rss_mib")
        if os.path.exists(rss):
            entry["peak_rss_mib"] = int(open(rss).read().strip() or 0)
        ld = os.path.join(d, "load.txt")
        if os.path.exists(ld):
            entry["load"] = open(ld).read().strip()
        summary["systems"][s] = entry

    S = summary["systems"]

    def ops(s, w):
        return S.get(s, {}).get("workloads", {}).get(w, {}).get("ops_s")

    # Ratios of each dynamo-rs mode to each peer, per workload (throughput).
    ratios = {}
    for d in DYNAMO:
        for p in systems:
            if p in DYNAMO:
                continue
            for w in WORKLOADS:
                a, b = ops(d, w), ops(p, w)
                if a is not None and b:
                    ratios.setdefault(d, {}).setdefault(p, {})[w] = a / b
    summary["ratios"] = ratios

    # The targets.
    targets = []
    for d in DYNAMO:
        if d not in S:
            continue
        a = ops(d, "a")
        if ops("etcd", "a"):
            r = a / ops("etcd", "a")
            targets.append((d, "workload A >= 3x etcd", r >= 3, f"{a:.0f} vs {ops('etcd', 'a'):.0f} ops/s = {r:.2f}x"))
        if ops("cassandra", "a"):
            r = a / ops("cassandra", "a")
            targets.append((d, "workload A >= Cassandra", r >= 1, f"{a:.0f} vs {ops('cassandra', 'a'):.0f} ops/s = {r:.2f}x"))
        if ops("nginx", "c") and ops(d, "c"):
            r = ops(d, "c") / ops("nginx", "c")
            targets.append((d, "workload C >= 1/4 nginx", r >= 0.25, f"{ops(d, 'c'):.0f} vs {ops('nginx', 'c'):.0f} ops/s = {r:.3f}"))
        half = [c for c in S[d]["curve"] if abs(c["fraction"] - 0.5) < 1e-9]
        if half:
            c = half[0]
            targets.append(
                (d, "p99 < 5 ms at half peak (A)", c["p99_ms"] < 5 and c["errors"] == 0,
                 f"p99 {c['p99_ms']:.2f} ms at {c['ops_s']:.0f} ops/s (target {c['target_ops_s']}), errors {c['errors']}")
            )
    summary["targets"] = [
        {"system": s, "target": t, "met": m, "figures": f} for (s, t, m, f) in targets
    ]

    with open(os.path.join(results, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)

    with open(os.path.join(results, "curve-a.csv"), "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["system", "fraction_of_peak", "target_ops_s", "ops_s", "p50_ms", "p99_ms", "p999_ms", "errors"])
        for s in systems:
            for c in S[s]["curve"]:
                wr.writerow([s, c["fraction"], c["target_ops_s"], f"{c['ops_s']:.1f}", f"{c['p50_ms']:.3f}",
                             f"{c['p99_ms']:.3f}", f"{c['p999_ms']:.3f}", c["errors"]])

    out = []
    out.append("# dynamo-rs and its peers\n")
    machine = os.path.join(results, "machine.txt")
    if os.path.exists(machine):
        out.append("```text\n" + open(machine).read().strip() + "\n```\n")
    out.append("## Closed loop\n")
    out.append("| system | workload | ops/s | p50 ms | p99 ms | p99.9 ms | errors / ops |")
    out.append("|---|---|---:|---:|---:|---:|---:|")
    for s in systems:
        for w in WORKLOADS:
            x = S[s]["workloads"].get(w)
            if x:
                out.append(f"| {s} | {w} | {x['ops_s']:.0f} | {x['p50_ms']:.2f} | {x['p99_ms']:.2f} | "
                           f"{x['p999_ms']:.2f} | {x['errors']} / {x['ops']} |")
    out.append("")
    if ratios:
        out.append("## Throughput of dynamo-rs / peer\n")
        out.append("| dynamo-rs | peer | " + " | ".join(WORKLOADS) + " |")
        out.append("|---|---|" + "---:|" * len(WORKLOADS))
        for d, peers in ratios.items():
            for p, r in peers.items():
                out.append(f"| {d} | {p} | " + " | ".join(f"{r[w]:.2f}" if w in r else "–" for w in WORKLOADS) + " |")
        out.append("")
    out.append("## Peak memory (sum of the cluster's processes, VmHWM)\n")
    out.append("| system | peak RSS MiB | load |")
    out.append("|---|---:|---|")
    for s in systems:
        out.append(f"| {s} | {S[s].get('peak_rss_mib', '–')} | {S[s].get('load', '–')} |")
    out.append("")
    out.append("## Workload A at fixed rates (open loop)\n")
    out.append("| system | fraction of peak | target ops/s | ops/s | p50 ms | p99 ms | p99.9 ms | errors |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for s in systems:
        for c in S[s]["curve"]:
            out.append(f"| {s} | {c['fraction']} | {c['target_ops_s']} | {c['ops_s']:.0f} | {c['p50_ms']:.2f} | "
                       f"{c['p99_ms']:.2f} | {c['p999_ms']:.2f} | {c['errors']} |")
    out.append("")
    if targets:
        out.append("## Targets (issue 9)\n")
        out.append("| system | target | met | figures |")
        out.append("|---|---|---|---|")
        for s, t, m, f in targets:
            out.append(f"| {s} | {t} | {'met' if m else 'NOT met'} | {f} |")
        out.append("")
    with open(os.path.join(results, "report.md"), "w") as f:
        f.write("\n".join(out))

    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 5))
        for s in systems:
            c = S[s]["curve"]
            if not c:
                continue
            line = ax.plot([x["ops_s"] for x in c], [x["p99_ms"] for x in c], marker="o", label=f"{s} p99")
            ax.plot([x["ops_s"] for x in c], [x["p50_ms"] for x in c], marker=".", linestyle="--",
                    color=line[0].get_color(), alpha=0.6, label=f"{s} p50")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("achieved throughput (ops/s, fixed-rate steps)")
        ax.set_ylabel("latency (ms, from scheduled start)")
        ax.set_title("YCSB workload A (50% read / 50% update, zipfian, 1 KiB), 3 members on loopback")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(results, "curve-a.png"), dpi=110)


if __name__ == "__main__":
    main()
