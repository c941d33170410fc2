#!/usr/bin/env python3
"""The table of docs/metapo.md "The significance gate" from docs/results/gate.jsonl (lines of
tools/bench-quality.sh's format; MetaPO lines carry "meta_args"): per cell, the means over seeds 1-3 of
the clean test preference accuracy / answer accuracy of uniform DPO, the oracle, MetaPO with
--meta-gate 0 and with --meta-gate 2, their weight AUC and ESS, and how many of the checks of
tools/quality_table.py hold for each. Standard library only.
  python3 tools/gate_table.py [docs/results/gate.jsonl]"""
import json
import statistics
import sys

path = sys.argv[1] if len(sys.argv) > 1 else "docs/results/gate.jsonl"
rows = [json.loads(l) for l in open(path) if l.strip()]


def get(cell, method, args=None):
    out = []
    for seed in (1, 2, 3):
        r = [x for x in rows if (x["task"], x["sft_epochs"], x["flip"], x["epochs"], x["method"], x["seed"]) == cell + (method, seed)
             and x.get("meta_args") == args]
        out.append(r[-1] if r else None)
    return out


def m(rs, f):
    return None if any(r is None for r in rs) else statistics.mean(f(r) for r in rs)


pref = lambda r: r["eval"]["pref_acc"]
ans = lambda r: r["gen"]["answer_accuracy"]
auc = lambda r: (r["analyze"] or {}).get("quality_auc") or float("nan")
ess = lambda r: r["ess"]
cells = sorted({(r["task"], r["sft_epochs"], r["flip"], r["epochs"]) for r in rows},
               key=lambda c: (-c[3], c[2] == 0, -c[2], ["add", "sort", "reverse"].index(c[0]), -c[1]))
print("| cell | uniform | oracle | MetaPO, gate off | MetaPO, `--meta-gate 2` | weight AUC off / gate | ESS off / gate | checks off → gate |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
tot = [0, 0, 0]
for c in cells:
    u, o, b, g = get(c, "uniform"), get(c, "oracle"), get(c, "metapo", "--meta-gate 0"), get(c, "metapo", "--meta-gate 2")
    if m(u, pref) is None or m(b, pref) is None or m(g, pref) is None:
        continue

    def checks(x):
        res = [m(x, pref) >= m(u, pref) - 0.01 - 1e-12, m(x, ans) >= m(u, ans) - 0.02 - 1e-12]
        if c[2] == 0.4 and c[3] == 3:
            og = None if m(o, pref) is None else m(o, pref) - m(u, pref)
            need = 0.05 if (og is None or og >= 0.08) else 0.6 * og
            res += [m(x, pref) - m(u, pref) >= need - 1e-12, m(x, auc) >= 0.85]
        if c[2] == 0.4 and c[3] == 1:
            res.append(m(x, pref) >= m(u, pref) - 1e-12)
        return res

    f = lambda rs: "—" if m(rs, pref) is None else f"{m(rs, pref):.3f} / {m(rs, ans):.3f}"
    d = lambda x: f" ({100 * (m(x, pref) - m(u, pref)):+.1f})"
    cb, cg = checks(b), checks(g)
    tot[0] += sum(cb)
    tot[1] += sum(cg)
    tot[2] += len(cb)
    name = f"{c[0]}, SFT {c[1]}, {round(c[2] * 100)}%" + (", 1 epoch" if c[3] == 1 else "")
    a = "—" if c[2] == 0 else f"{m(b, auc):.3f} / {m(g, auc):.3f}"
    print(f"| {name} | {f(u)} | {f(o)} | {f(b)}{d(b)} | {f(g)}{d(g)} | {a} | {m(b, ess):.1f} / {m(g, ess):.1f} | "
          f"{sum(cb)}/{len(cb)} → {sum(cg)}/{len(cg)} |")
print(f"\nChecks that hold: {tot[0]} of {tot[2]} with the gate off, {tot[1]} of {tot[2]} with `--meta-gate 2`.")
