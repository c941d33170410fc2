#!/usr/bin/env python3
"""The tables of tools/bench-quality.sh from its results.jsonl (one JSON line per run).

Prints markdown: per number of DPO epochs, task, SFT strength (SFT epochs) and flip rate, one row per
method with the mean ± std over seeds of the clean test preference accuracy, the greedy answer accuracy,
the weight AUC (clean vs flipped, MetaPO only), the temporal share of the weight net's decisions
(integrated gradients / permutation) and the mean effective sample size of the weights per step; then
the acceptance checks of MetaPO against uniform DPO and the oracle, one line per cell:

- every cell: MetaPO ≥ uniform − 1 point of preference accuracy and ≥ uniform − 2 points of answer accuracy;
- 40% flips: MetaPO ≥ uniform + 5 points, or, where the oracle gains less than 8 points over uniform, at
  least 60% of the oracle's gain; and a weight AUC ≥ 0.85;
- 40% flips at 1 epoch: MetaPO ≥ uniform.

With --plot FILE.png (needs matplotlib), also a figure of the grid: one column per task, one row per SFT
strength for test preference accuracy and again for answer accuracy; per method the mean ± std over seeds
against the flip rate (the DPO epochs of most runs), and the cells of another number of DPO epochs (the
single-epoch 40% column) as hollow markers beside them. FILE.png's directory must exist; it is checked,
with the results file, before anything is printed, and the figure is written whole, then renamed.

With --paired, each check also gets its margin seed by seed (MetaPO and uniform of one seed share the
SFT model and the data; e.g. metapo − 0.4·uniform − 0.6·oracle for the 60% rule) and the standard error
of that margin's mean over the seeds: a check whose margin is within about two standard errors of 0
is not resolved by that many seeds.

Standard library only, so it runs where the benchmark runs.
"""
import argparse
import json
import math
import os
import statistics
import sys

from save_png import save_png  # tools/save_png.py (matplotlib only once a figure is drawn)


def mean_std(v):
    v = [x for x in v if x is not None]
    if not v:
        return None, None
    return statistics.mean(v), (statistics.stdev(v) if len(v) > 1 else None)


def fmt(v, digits=3):
    m, s = mean_std(v)
    if m is None:
        return "—"
    return f"{m:.{digits}f}" if s is None else f"{m:.{digits}f} ± {s:.{digits}f}"


def is_num(v, integer=False):
    return not isinstance(v, bool) and (isinstance(v, int) or not integer and isinstance(v, float) and math.isfinite(v))


def bad_result(r):
    """What is wrong with a results line (after the defaults of earlier versions), or None."""
    if not isinstance(r, dict):
        return "not a JSON object"
    for k in ("method", "task"):
        if not isinstance(r.get(k), str):
            return f"'{k}' is {'missing' if k not in r else 'not a string'}"
    for k, integer in (("seed", True), ("sft_epochs", True), ("epochs", True), ("flip", False)):
        if not is_num(r.get(k), integer):
            return f"'{k}' is {'missing' if k not in r else 'not an integer' if integer else 'not a number'}"
    num_or_null = lambda v: v is None or is_num(v)
    if r["method"] != "sft":
        ev = r.get("eval")
        if not isinstance(ev, dict) or "pref_acc" not in ev or not num_or_null(ev["pref_acc"]):
            return "'eval' is not an object with a number pref_acc (the method's `metapo eval` line)"
    gen = r.get("gen")
    if not isinstance(gen, dict) or "answer_accuracy" not in gen or not num_or_null(gen["answer_accuracy"]):
        return "'gen' is not an object with a number answer_accuracy (a `metapo generate` line)"
    an = r.get("analyze")
    if an is not None and (not isinstance(an, dict) or not all(
            num_or_null(an.get(k)) for k in ("quality_auc", "temporal_share", "temporal_share_permutation"))):
        return "'analyze' is neither null nor an object with numbers (a `metapo analyze` line)"
    if not num_or_null(r.get("ess")):
        return "'ess' is not a number"
    return None


def check_plot(path, rows, results):
    """--plot FILE.png, before anything is printed: a .png name in a writable directory, not the
    results file, matplotlib there and something to draw."""
    if not path.endswith(".png"):
        sys.exit(f"error: --plot {path}: the figure's name must end in .png")
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        sys.exit(f"error: --plot {path}: its directory does not exist")
    if not os.access(d, os.W_OK | os.X_OK):
        sys.exit(f"error: --plot {path}: its directory is not writable")
    if os.path.isdir(path):
        sys.exit(f"error: --plot {path}: is a directory")
    if os.path.exists(path) and os.path.samefile(path, results):
        sys.exit(f"error: --plot {path}: is the results file")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        sys.exit(f"error: --plot {path}: matplotlib is not installed (pip install matplotlib)")
    if all(r["method"] == "sft" for r in rows):
        sys.exit(f"error: --plot {path}: no trained runs to draw")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", help="results.jsonl of tools/bench-quality.sh")
    ap.add_argument("--meta-args", default="", help="the MetaPO options of the runs (for the caption)")
    ap.add_argument("--train-args", default="", help="the options of every method's DPO run (for the caption)")
    ap.add_argument("--synth-args", default="", help="the task's settings of every dataset (for the caption)")
    ap.add_argument("--paired", action="store_true",
                    help="add each check's per-seed margin: its mean ± standard error over the seeds")
    ap.add_argument("--plot", metavar="FILE.png", help="also draw the grid into FILE.png (needs matplotlib)")
    a = ap.parse_args()
    if a.plot and not a.plot.endswith(".png"):
        sys.exit(f"error: --plot {a.plot}: the figure's name must end in .png")
    if os.path.isdir(a.results):
        sys.exit(f"error: {a.results}: is a directory, not a results file")
    try:
        with open(a.results, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except OSError as e:
        sys.exit(f"error: {a.results}: cannot read ({e.strerror or e})")
    except UnicodeDecodeError as e:
        sys.exit(f"error: {a.results}: not UTF-8 text ({e.reason} at byte {e.start})")
    rows = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            sys.exit(f"error: {a.results}:{n}: not a JSON line ({e})")
        if isinstance(r, dict):  # lines of the single-task benchmark of earlier versions
            r.setdefault("task", "sort"), r.setdefault("sft_epochs", 3), r.setdefault("epochs", 3)
        why = bad_result(r)
        if why:
            sys.exit(f"error: {a.results}:{n}: not a results line of tools/bench-quality.sh: {why}")
        rows.append(r)
    if not rows:
        sys.exit(f"error: {a.results}: no results yet")
    if a.plot:
        check_plot(a.plot, rows, a.results)
    order = ["sft", "uniform", "cdpo", "robust", "wpo", "margin", "metapo", "metapo-instantaneous",
             "metapo-temporal", "oracle"]
    names = {"sft": "SFT model (reference)", "uniform": "uniform (DPO)", "oracle": "oracle (flipped dropped)",
             "metapo-instantaneous": "metapo, instantaneous features only",
             "metapo-temporal": "metapo, temporal features only"}
    key = lambda r: (r["epochs"], r["task"], r["sft_epochs"], r["flip"])
    cells = sorted({key(r) for r in rows}, key=lambda k: (-k[0], ["sort", "reverse", "add"].index(k[1])
                                                            if k[1] in ("sort", "reverse", "add") else 9, -k[2], k[3]))
    seeds = sorted({r["seed"] for r in rows})
    print(f"\nseeds {' '.join(map(str, seeds))}; clean test split; mean ± std over seeds; "
          f"MetaPO options: {a.meta_args or '(defaults)'}"
          + (f"; every method: {a.train_args}" if a.train_args else "")
          + (f"; task settings: metapo synth {a.synth_args}" if a.synth_args else "") + "\n")
    print("| DPO epochs | task | SFT epochs | flipped | method | seeds | test pref. accuracy | answer accuracy "
          "| weight AUC | temporal share (IG / perm.) | ESS (of batch) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    by = {}
    for c in cells:
        methods = sorted({r["method"] for r in rows if key(r) == c},
                         key=lambda m: order.index(m) if m in order else 99)
        for m in methods:
            rs = [r for r in rows if key(r) == c and r["method"] == m]
            by[c + (m,)] = rs
            an = [r.get("analyze") or {} for r in rs]
            pref = "—" if m == "sft" else fmt([r["eval"]["pref_acc"] for r in rs])
            ans = fmt([r["gen"]["answer_accuracy"] for r in rs])
            auc = fmt([x.get("quality_auc") for x in an])
            share = "—"
            if any(x.get("temporal_share") is not None for x in an):
                share = f"{fmt([x.get('temporal_share') for x in an], 2)} / " \
                        f"{fmt([x.get('temporal_share_permutation') for x in an], 2)}"
            ess = fmt([r.get("ess") for r in rs], 1)
            if ess != "—":
                ess += f" (of {rs[0].get('batch', '?')})"
            name = names.get(m, m)
            if m in ("cdpo", "robust"):
                name += f" (ε {c[3] if c[3] > 0 else 0.1})"
            print(f"| {c[0]} | {c[1]} | {c[2]} | {c[3]:.0%} | {name} | {len(rs)} | {pref} | {ans} | {auc} | {share} | {ess} |")

    # The acceptance checks (means over seeds).
    def m_of(c, method, f):
        rs = by.get(c + (method,))
        if not rs:
            return None
        return mean_std([f(r) for r in rs])[0]
    pref = lambda r: r["eval"]["pref_acc"]
    ans = lambda r: r["gen"]["answer_accuracy"]
    auc = lambda r: (r.get("analyze") or {}).get("quality_auc")

    def paired(c, f, terms, bar):
        # The check's margin seed by seed: Σ coef·f(method's run of that seed) − bar, over the seeds that
        # every method of terms has; "mean ± standard error (n seeds)".
        per = {}
        for method, coef in terms:
            for r in by.get(c + (method,), []):
                v = f(r)
                if v is not None:
                    per.setdefault(r["seed"], {})[method] = coef * v
        d = [sum(v.values()) - bar for v in per.values() if len(v) == len(terms)]
        if len(d) < 2:
            return "—"
        return f"{statistics.mean(d):+.3f} ± {statistics.stdev(d) / len(d) ** 0.5:.3f} ({len(d)})"
    checks = []
    for c in cells:
        mp, up = m_of(c, "metapo", pref), m_of(c, "uniform", pref)
        if mp is None or up is None:
            continue
        ma, ua = m_of(c, "metapo", ans), m_of(c, "uniform", ans)
        label = f"{c[0]} epoch(s), {c[1]}, SFT {c[2]}, {c[3]:.0%} flipped"
        if c[0] == 1:
            if c[3] >= 0.4 - 1e-9:
                checks.append((label, "pref ≥ uniform", mp - up, mp >= up, f"{mp:.3f} vs {up:.3f}",
                               paired(c, pref, [("metapo", 1), ("uniform", -1)], 0)))
            continue
        checks.append((label, "pref ≥ uniform − 1 pt", mp - up, mp >= up - 0.01, f"{mp:.3f} vs {up:.3f}",
                       paired(c, pref, [("metapo", 1), ("uniform", -1)], -0.01)))
        checks.append((label, "answer ≥ uniform − 2 pts", ma - ua, ma >= ua - 0.02, f"{ma:.3f} vs {ua:.3f}",
                       paired(c, ans, [("metapo", 1), ("uniform", -1)], -0.02)))
        if abs(c[3] - 0.4) < 1e-9:
            op = m_of(c, "oracle", pref)
            if op is not None and op - up < 0.08:
                need = 0.6 * (op - up)
                checks.append((label, f"pref gain ≥ 60% of the oracle's ({op - up:+.3f})", mp - up,
                               mp - up >= need, f"{mp:.3f} vs {up:.3f}, need {need:+.3f}",
                               paired(c, pref, [("metapo", 1), ("uniform", -0.4), ("oracle", -0.6)], 0)))
            else:
                checks.append((label, "pref ≥ uniform + 5 pts", mp - up, mp >= up + 0.05, f"{mp:.3f} vs {up:.3f}",
                               paired(c, pref, [("metapo", 1), ("uniform", -1)], 0.05)))
            au = m_of(c, "metapo", auc)
            if au is not None:
                checks.append((label, "weight AUC ≥ 0.85", au - 0.85, au >= 0.85, f"{au:.3f}",
                               paired(c, auc, [("metapo", 1)], 0.85)))
    if checks:
        print("\nChecks (MetaPO against uniform DPO and the oracle, means over seeds):\n")
        extra = " margin per seed (mean ± s.e., seeds) |" if a.paired else ""
        print("| cell | check | difference | holds | values |" + extra)
        print("| --- | --- | --- | --- | --- |" + (" --- |" if a.paired else ""))
        for label, what, diff, ok, vals, margin in checks:
            print(f"| {label} | {what} | {diff:+.3f} | {'yes' if ok else '**no**'} | {vals} |"
                  + (f" {margin} |" if a.paired else ""))
        bad = sum(1 for x in checks if not x[3])
        print(f"\n{len(checks) - bad} of {len(checks)} checks hold.")
    if a.plot:
        plot_grid(by, order, names, a.plot)


def plot_grid(by, order, names, path):
    """The grid as a figure: columns tasks, rows (metric, SFT strength); per method mean ± std over seeds
    against the flip rate at the main number of DPO epochs, other epochs as hollow markers beside it.
    by: the table's runs per (DPO epochs, task, SFT epochs, flip, method)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit(f"error: --plot {path}: matplotlib is not installed (pip install matplotlib)")
    runs = [r for k, rs in by.items() if k[4] != "sft" for r in rs]
    if not runs:
        sys.exit(f"error: --plot {path}: no trained runs to draw")
    tasks = [t for t in ["sort", "reverse", "add"] if any(r["task"] == t for r in runs)]
    tasks += sorted({r["task"] for r in runs} - set(tasks))
    strengths = sorted({r["sft_epochs"] for r in runs}, reverse=True)
    epochs = [r["epochs"] for r in runs]
    main_ep = max(set(epochs), key=lambda e: (epochs.count(e), e))
    methods = sorted({r["method"] for r in runs}, key=lambda m: order.index(m) if m in order else 99)
    cmap = plt.get_cmap("tab10")
    color = {m: cmap(k % 10) for k, m in enumerate(methods)}
    metrics = [("test pref. accuracy", lambda r: r["eval"].get("pref_acc")),
               ("answer accuracy", lambda r: (r.get("gen") or {}).get("answer_accuracy"))]
    nr, nc = len(metrics) * len(strengths), len(tasks)
    fig, axes = plt.subplots(nr, nc, figsize=(4.2 * nc, 2.8 * nr), squeeze=False)
    flips = sorted({r["flip"] for r in runs})
    step = (flips[-1] - flips[0]) / max(len(flips) - 1, 1) if len(flips) > 1 else 0.2
    for i, (mname, f) in enumerate(metrics):
        for j, s in enumerate(strengths):
            row = i * len(strengths) + j
            for k, t in enumerate(tasks):
                ax = axes[row][k]
                for n, m in enumerate(methods):
                    for ep in sorted({r["epochs"] for r in runs}):
                        pts = []
                        for fl in flips:
                            v = [f(r) for r in by.get((ep, t, s, fl, m), []) if f(r) is not None]
                            if v:
                                pts.append((fl, statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0))
                        if not pts:
                            continue
                        main = ep == main_ep
                        dx = (n - (len(methods) - 1) / 2) * step * 0.03 + (0 if main else step * 0.25)
                        x = [p[0] + dx for p in pts]
                        ax.errorbar(x, [p[1] for p in pts], yerr=[p[2] for p in pts], color=color[m],
                                    marker="o", ms=4, lw=1.4 if main else 0, elinewidth=1, capsize=2,
                                    mfc=color[m] if main else "none",
                                    label=names.get(m, m) if (main and row == 0 and k == 0) else None)
                ax.set_title(f"{t}, SFT {s} epoch(s)", fontsize=9)
                ax.set_xticks(flips)
                ax.set_xticklabels([f"{fl:.0%}" for fl in flips])
                ax.grid(alpha=0.3)
                if k == 0:
                    ax.set_ylabel(mname, fontsize=9)
                if row == nr - 1:
                    ax.set_xlabel("flipped training pairs")
    other = sorted({e for e in epochs if e != main_ep})
    note = (f"; hollow markers to the right: {', '.join(map(str, other))} DPO epoch(s)" if other else "")
    fig.suptitle(f"mean ± std over seeds, {main_ep} DPO epochs{note}", fontsize=10)
    fig.legend(loc="lower center", ncol=min(len(methods), 7), fontsize=8)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    try:
        save_png(fig, path, 90)  # written whole, then renamed: never a half-written figure
    except OSError as e:
        sys.exit(f"error: --plot {path}: cannot write ({e.strerror or e})")
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
