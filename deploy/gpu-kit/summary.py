"""The GPU kit's summary: reads what run.sh's steps left in OUTDIR and writes
summary.json and summary.md (also printed): step statuses, the fixture checks, qembed
against PyTorch per shape and batch, and the HTTP gates.

    python3 summary.py OUTDIR BUDGET_S ELAPSED_S
"""
import json, os, re, sys

# The deployment's validation gates for the HTTP path.
P99_GATE_MS = 500.0
ERROR_GATE = 0.001


def json_lines(path):
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        pass
    return rows


def main(out, budget, elapsed):
    steps = json_lines(os.path.join(out, "steps.jsonl"))
    names = [s["step"] for s in steps]
    summary = {"budget_s": budget, "elapsed_s": elapsed, "steps": steps}

    checks = {}
    for n in names:
        if n.startswith("check-") or n == "tp2":
            checks[n] = json_lines(os.path.join(out, n + ".out"))
    summary["checks"] = checks

    bench = []
    for n in names:
        if not n.startswith("bench-"):
            continue
        shape = n[len("bench-"):]
        ours = json_lines(os.path.join(out, n + ".out"))
        theirs = {r["shape"]: r for r in json_lines(os.path.join(out, "torch-" + shape + ".out"))}
        for r in ours:
            t = theirs.get(r["batch"])
            bench.append({
                "shape": shape, "batch": r["batch"], "device": r["device"], "dtype": r["dtype"],
                "tokens": r["tokens"], "qembed_tokens_per_s": r["tokens_per_s"],
                "mfu": r.get("mfu"), "model_tflops": r.get("model_tflops"),
                "peak_source": r.get("peak_source"),
                "torch_tokens_per_s": t["tokens_per_s"] if t else None,
                "ratio": r["tokens_per_s"] / t["tokens_per_s"] if t else None,
            })
    summary["bench"] = bench

    load_path = os.path.join(out, "load.json")
    if os.path.exists(load_path):
        with open(load_path) as f:
            load = json.load(f)
        load["p99_gate_ok"] = load["ok"] > 0 and load["p99_ms"] < P99_GATE_MS
        load["error_gate_ok"] = load["error_rate"] < ERROR_GATE
        summary["load"] = load
    metrics_path = os.path.join(out, "metrics.txt")
    if os.path.exists(metrics_path):
        with open(metrics_path) as f:
            text = f.read()
        summary["memory"] = {
            m.group(1) + (m.group(2) or ""): float(m.group(3))
            for m in re.finditer(r"^(qembed_(?:gpu_memory|process_resident)\w*)(\{[^}]*\})? (\S+)$",
                                 text, re.M)
        }

    summary["failures"] = failures(summary)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    md = render(summary)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(md)
    print(md)
    return 1 if summary["failures"] else 0


def tolerance_fraction(k):
    """A kernel check's difference over its tolerance; a NaN or infinite difference
    (JSON null) is infinitely far, and exact zero within a zero tolerance is 0."""
    d, t = k["max_diff"], k["tolerance"]
    if d is None:
        return float("inf")
    if t:
        return d / t
    return 0.0 if d == 0 else float("inf")


def failures(s):
    """What the summary shows failed: checks, kernel checks, the HTTP gates."""
    bad = [f"{name}: {r.get('fixture') or r.get('kernel_check')}"
           for name, rows in s["checks"].items() for r in rows if not r.get("ok")]
    if "load" in s:
        if not s["load"]["p99_gate_ok"]:
            bad.append(f"p99 {s['load']['p99_ms']:.1f} ms >= {P99_GATE_MS} ms")
        if not s["load"]["error_gate_ok"]:
            bad.append(f"error rate {100 * s['load']['error_rate']:.2f} % >= {100 * ERROR_GATE} %")
    return bad


def one_line(text):
    """The first line of an error (a table cell cannot hold a backtrace), shortened."""
    line = str(text).strip().splitlines()[0] if text else "-"
    return (line[:200] + "...") if len(line) > 200 else line


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def render(s):
    lines = [f"# qembed GPU kit summary ({s['elapsed_s']} s of a {s['budget_s']} s budget)", "",
             "| step | status | seconds | note |", "| --- | --- | --- | --- |"]
    for st in s["steps"]:
        lines.append(f"| {st['step']} | {st['status']} | {st['seconds']} | {st['why']} |")
    for name, all_rows in s["checks"].items():
        rows = [r for r in all_rows if "fixture" in r]
        kernels = [r for r in all_rows if "kernel_check" in r]
        if not all_rows:
            continue
        lines += ["", f"## {name}", "", "| fixture | dtype | kernel | worst cosine | worst abs | result |",
                  "| --- | --- | --- | --- | --- | --- |"]
        if kernels:
            bad = [k for k in kernels if not k["ok"]]
            skipped = [k for k in kernels if k.get("skipped")]
            worst = {}
            for k in kernels:
                if k.get("skipped"):
                    continue
                key = (k["kernel_check"], k["dtype"])
                worst[key] = max(worst.get(key, 0), tolerance_fraction(k))
            note = [f"Kernel checks: {len(kernels) - len(bad) - len(skipped)} of {len(kernels)} within "
                    "tolerance, " + f"{len(skipped)} skipped; worst difference as a fraction of its "
                    "tolerance: " + ", ".join(f"{k} {d} {v:.2f}" for (k, d), v in sorted(worst.items())), ""]
            note += [f"- FAIL {k['kernel_check']} {k['dtype']} {k['case']}: "
                     f"{fmt(k['max_diff'], '.2e')} > {k['tolerance']:.1e}" for k in bad]
            note += [f"- skipped {k['kernel_check']} {k['dtype']} {k['case']}: {k['skipped']}" for k in skipped]
            lines[len(lines) - 2:len(lines) - 2] = note + ([""] if len(note) > 2 else [])
        for r in rows:
            result = ("skipped: " + r["skipped"]) if r.get("skipped") else (
                "ok" if r["ok"] else "FAIL: " + one_line(r.get("problem")))
            lines.append(f"| {r['fixture']} | {r['dtype']} | {r['kernel']} | "
                         f"{fmt(r.get('worst_cosine'), '.6f')} | {fmt(r.get('worst_abs'), '.2e')} | {result} |")
    if s["bench"]:
        lines += ["", "## qembed bench against transformers (same device, same run)", "",
                  "| shape | batch | dtype | tokens | qembed tokens/s | torch tokens/s | ratio | MFU |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for b in s["bench"]:
            mfu = None if b["mfu"] is None else 100 * b["mfu"]
            lines.append(f"| {b['shape']} | {b['batch']} | {b['dtype']} | {b['tokens']} | "
                         f"{b['qembed_tokens_per_s']:.1f} | {fmt(b['torch_tokens_per_s'], '.1f')} | "
                         f"{fmt(b['ratio'], '.2f')} | {fmt(mfu, '.1f')} |")
        peaks = sorted({b["peak_source"] for b in s["bench"] if b["peak_source"]})
        if peaks:
            lines.append("")
            lines.append("MFU against: " + "; ".join(peaks))
    if "load" in s:
        l = s["load"]
        gate = lambda ok: "pass" if ok else "FAIL"
        lines += ["", "## HTTP path (qembed serve + qembed-load, open loop)", "",
                  "| requests | failed | QPS | p50 ms | p99 ms | error rate | p99 < 500 ms | errors < 0.1 % |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |",
                  f"| {l['requests']} | {l['failed']} | {l['qps']:.1f} | {l['p50_ms']:.1f} | "
                  f"{l['p99_ms']:.1f} | {100 * l['error_rate']:.2f} % | {gate(l['p99_gate_ok'])} | "
                  f"{gate(l['error_gate_ok'])} |"]
    if s.get("memory"):
        lines += ["", "## Memory after the load (from /metrics)", ""]
        lines += [f"- {k}: {v / 2**30:.2f} GiB" for k, v in sorted(s["memory"].items())]
    if s.get("failures"):
        lines += ["", "## Failed", ""] + [f"- {f}" for f in s["failures"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
