#!/usr/bin/env python3
"""Plots of metapo training runs, for a person to look at.

    python3 tools/plot.py RUN [RUN2 ...] [--out DIR] [--smooth N] [--pairs-per-group K]

Writes into DIR (default: RUN/plots of the first run):

  curves.png        training curves from RUN/metrics.jsonl: loss, rewards/accuracies, rewards/margins
                    (validation eval/* points dashed on the same panels when the run has them) and the
                    raw weights a_i (weights/mean ± weights/std); all runs overlaid, named by directory.
  weights_hist.png  from RUN/pair_weights.jsonl (`metapo analyze`): weights of clean vs flipped pairs,
                    of hard (near miss) vs easy pairs, and the four combinations; one row per run.
  attribution.png   from RUN/analysis.json (`metapo analyze`): mean |integrated gradient| and
                    permutation importance per feature, temporal vs instantaneous; one row per run.
  trajectories.png  from RUN/trajectories.jsonl (`metapo train`, --track-pairs): margin trajectories of
                    the tracked clean/easy, clean/hard and flipped pairs; one row per run.
  alignment.png     from RUN/meta_trace.jsonl (`metapo train --meta-trace RUN/meta_trace.jsonl`) and the
                    dataset's quality and difficulty columns (--data FILE.h5, needs h5py): per window of
                    meta steps, the mean normalized alignment s_i / rms(s) of clean/easy, clean/hard and
                    flipped pairs; the AUC (clean vs flipped) of s, of the weights and of each feature;
                    the Spearman correlation of s with the current margin within the clean and within the
                    flipped pairs; the effective sample size and the mean normalized weight per group.

Only curves.png needs an input (metrics.jsonl); each other plot is skipped, with a message, when no
run has its input. The options and DIR are checked before anything is drawn; every PNG is drawn into a
temporary directory inside DIR and moved into place only when all are drawn, so an input found
malformed by a later figure leaves no PNG of this call behind. Needs matplotlib (pip install matplotlib); draws with the Agg backend.
"""
import argparse
import json
import math
import os
import shutil
import sys
import tempfile

from auc import auc, rank_auc  # tools/auc.py: the script's directory is on sys.path
from save_png import save_png  # tools/save_png.py

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.lines import Line2D
except ImportError:  # pragma: no cover - depends on the machine
    sys.exit("error: tools/plot.py needs matplotlib (python3 -m pip install matplotlib)")

TEMPORAL_COLOR = "tab:blue"
INSTANT_COLOR = "tab:orange"
GROUP_COLORS = {"clean": "tab:green", "flipped": "tab:red", "easy": "tab:cyan", "hard": "tab:purple"}


def fail(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def note(msg):
    print(msg, file=sys.stderr)


def read_jsonl(path, check=None):
    """Lines of a JSONL file; a torn last line (a run still writing) is skipped with a note. Each line
    must be a JSON object, and check(row), when given, returns what is wrong with one (or None)."""
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except OSError as e:
        fail(f"{path}: cannot read ({e.strerror or e})")
    except UnicodeDecodeError as e:
        fail(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})")
    if lines and not lines[-1]:
        lines.pop()
    for k, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if k == len(lines) - 1:
                note(f"note: {path}: skipping an incomplete last line")
                continue
            fail(f"{path}:{k + 1}: not valid JSON ({e})")
        why = "not a JSON object" if not isinstance(row, dict) else check(row) if check else None
        if why:
            fail(f"{path}:{k + 1}: {why}")
        rows.append(row)
    return rows


def number_or_null(row, *keys):
    """What is wrong with row's optional numeric fields keys (absent or null is fine), or None."""
    for k in keys:
        v = row.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            return f"'{k}' is not a number"
    return None


def number_list(row, key, n=None):
    """What is wrong with row[key] as a list of numbers (of length n when given), or None."""
    v = row.get(key)
    if not isinstance(v, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        return f"'{key}' is not a list of numbers"
    if n is not None and len(v) != n:
        return f"'{key}' has {len(v)} entries, not {n}"
    return None


def save(fig, out, dpi):
    """fig as the PNG out, whole or not at all (save_png)."""
    try:
        save_png(fig, out, dpi)
    except OSError as e:
        fail(f"{out}: cannot write ({e.strerror or e})")


def run_labels(runs):
    """Shortest trailing path parts that tell the runs apart (seed1/metapo vs seed2/metapo)."""
    parts = [os.path.normpath(os.path.abspath(r)).split(os.sep) for r in runs]
    for n in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-n:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [os.path.normpath(r) for r in runs]


def moving_average(y, w):
    if w <= 1 or len(y) < 3:
        return list(y)
    out, acc, q = [], 0.0, []
    for v in y:
        q.append(v)
        acc += v
        if len(q) > w:
            acc -= q.pop(0)
        out.append(acc / len(q))
    return out


def finite(v):
    return isinstance(v, (int, float)) and math.isfinite(v)


# ---- curves.png ---------------------------------------------------------------------------------


def plot_curves(runs, labels, colors, out, smooth):
    # (metrics key, panel title, eval key overlaid dashed)
    panels = [
        ("loss", "loss (training objective)", "eval/loss"),
        ("rewards/accuracies", "reward accuracy (share of margins > 0)", "eval/rewards/accuracies"),
        ("rewards/margins", "reward margin r(chosen) − r(rejected)", "eval/rewards/margins"),
        ("weights/mean", "raw weight a_i: batch mean ± std (dotted: min, max)", None),
        ("weights/rel_spread", "weight spread: std / mean of a_i over the batch", None),
        ("grad_norm", "policy gradient norm (before clipping)", None),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(17, 8.5))
    axes = axes.ravel()
    any_eval, any_smooth = False, False
    for run, label, color in zip(runs, labels, colors):
        rows = read_jsonl(os.path.join(run, "metrics.jsonl"),
                          lambda r: "'step' is not a number" if "step" in r and not finite(r["step"]) else None)
        train = [r for r in rows if "loss" in r and "step" in r]
        ev = [r for r in rows if "step" in r and any(k.startswith("eval/") for k in r)]
        if not train and not ev:
            note(f"note: {run}/metrics.jsonl has no steps")
        for r in train:
            if finite(r.get("weights/mean")) and finite(r.get("weights/std")) and r["weights/mean"] > 0:
                r["weights/rel_spread"] = r["weights/std"] / r["weights/mean"]
        w = smooth if smooth is not None else max(1, len(train) // 25)
        for ax, (key, title, ekey) in zip(axes, panels):
            pts = [(r["step"], r[key], r) for r in train if finite(r.get(key))]
            if pts:
                x = [p[0] for p in pts]
                y = [p[1] for p in pts]
                if key == "weights/mean":
                    sd = [p[2]["weights/std"] if finite(p[2].get("weights/std")) else 0.0 for p in pts]
                    ax.plot(x, y, color=color, lw=1.6, label=label)
                    ax.fill_between(x, [a - b for a, b in zip(y, sd)], [a + b for a, b in zip(y, sd)],
                                    color=color, alpha=0.25, lw=0)
                    for k in ("weights/min", "weights/max"):
                        mm = [(p[0], p[2][k]) for p in pts if finite(p[2].get(k))]
                        if mm:
                            ax.plot([a for a, _ in mm], [b for _, b in mm], color=color, lw=0.8, ls=":")
                elif w > 1:
                    any_smooth = True
                    ax.plot(x, y, color=color, lw=0.8, alpha=0.25)
                    ax.plot(x, moving_average(y, w), color=color, lw=1.6, label=label)
                else:
                    ax.plot(x, y, color=color, lw=1.4, label=label)
            if ekey:
                epts = [(r["step"], r[ekey]) for r in ev if finite(r.get(ekey))]
                if epts:
                    any_eval = True
                    ax.plot([a for a, _ in epts], [b for _, b in epts], color=color, lw=1.4, ls="--", marker="o",
                            ms=4)
    for ax, (key, title, _) in zip(axes, panels):
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(key if key != "weights/rel_spread" else "weights/std ÷ weights/mean")
        ax.grid(alpha=0.3)
        if not ax.lines:
            missing = "weights/std" if key == "weights/rel_spread" else key
            ax.text(0.5, 0.5, f"no {missing} in metrics.jsonl", ha="center", va="center", transform=ax.transAxes,
                    color="dimgray")
    axes[2].axhline(0, color="grey", lw=0.8)
    handles = [Line2D([], [], color=c, lw=2, label=l) for l, c in zip(labels, colors)]
    axes[0].legend(handles=handles, title="run", fontsize=9, loc="best")
    style = [Line2D([], [], color="k", lw=1.6,
                    label="training batches" + (" (moving average; faint: raw)" if any_smooth else ""))]
    if any_eval:
        style.append(Line2D([], [], color="k", lw=1.4, ls="--", marker="o", ms=4, label="validation split (eval/*)"))
    axes[1].legend(handles=style, fontsize=9, loc="best")
    fig.suptitle("Training curves (metrics.jsonl): " + ", ".join(labels), fontsize=13)
    fig.tight_layout()
    save(fig, out, 110)


# ---- weights_hist.png ---------------------------------------------------------------------------


def hist_pair(ax, groups, bins, title):
    """Overlaid density histograms of named weight lists, with dashed lines at the means."""
    for name, vals in groups:
        if not vals:
            continue
        c = GROUP_COLORS.get(name.split()[0], None)
        ax.hist(vals, bins=bins, density=True, alpha=0.45, color=c, label=f"{name} (n={len(vals)})")
        m = sum(vals) / len(vals)
        ax.axvline(m, color=c, ls="--", lw=1.5)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("raw weight a_i (dashed: group mean)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def plot_weights_hist(runs, labels, out):
    have = [(r, l) for r, l in zip(runs, labels) if os.path.exists(os.path.join(r, "pair_weights.jsonl"))]
    if not have:
        return "no run has pair_weights.jsonl (run `metapo analyze --run RUN --data FILE` first)"
    for r, l in zip(runs, labels):
        if (r, l) not in have:
            note(f"note: weights_hist.png: {r} has no pair_weights.jsonl, left out")
    ncol = 3
    fig, axes = plt.subplots(len(have), ncol, figsize=(16, 4.3 * len(have)), squeeze=False)
    for row, (run, label) in enumerate(have):
        rows = read_jsonl(os.path.join(run, "pair_weights.jsonl"),
                          lambda p: number_or_null(p, "weight", "quality", "difficulty"))
        rows = [p for p in rows if finite(p.get("weight"))]
        wts = [p["weight"] for p in rows]
        ax = axes[row]
        if not wts:
            for a in ax:
                a.set_axis_off()
            ax[0].text(0.5, 0.5, f"{label}: no weights", ha="center", transform=ax[0].transAxes)
            continue
        lo, hi = min(wts), max(wts)
        if hi - lo < 1e-12:
            lo, hi = lo - 1e-3, hi + 1e-3
        bins = [lo + (hi - lo) * k / 30 for k in range(31)]
        has_q = all(finite(p.get("quality")) for p in rows)
        has_d = all(finite(p.get("difficulty")) for p in rows)
        clean = [p["weight"] for p in rows if has_q and p["quality"] >= 0.5]
        flipped = [p["weight"] for p in rows if has_q and p["quality"] < 0.5]
        if has_q:
            a = auc(clean, flipped)
            t = f"{label}: clean vs flipped" + (f" — AUC {a:.3f}" if a is not None else "")
            hist_pair(ax[0], [("clean", clean), ("flipped", flipped)], bins, t)
        else:
            hist_pair(ax[0], [("all pairs", wts)], bins, f"{label}: all pairs (no quality column)")
        if has_d:
            hard = [p["weight"] for p in rows if p["difficulty"] >= 0.5]
            easy = [p["weight"] for p in rows if p["difficulty"] < 0.5]
            hist_pair(ax[1], [("easy (random rejected)", easy), ("hard (near-miss rejected)", hard)], bins,
                      f"{label}: easy vs hard pairs")
        else:
            ax[1].set_axis_off()
            ax[1].text(0.5, 0.5, "no difficulty column", ha="center", va="center", transform=ax[1].transAxes)
        if has_q and has_d:
            names = ["clean\neasy", "clean\nhard", "flipped\neasy", "flipped\nhard"]
            sel = [(1, 0), (1, 1), (0, 0), (0, 1)]
            data = [[p["weight"] for p in rows if (p["quality"] >= 0.5) == bool(q) and (p["difficulty"] >= 0.5) == bool(h)]
                    for q, h in sel]
            keep = [(n, d) for n, d in zip(names, data) if d]
            bp = ax[2].boxplot([d for _, d in keep], tick_labels=[f"{n}\n(n={len(d)})" for n, d in keep],
                               showmeans=True, patch_artist=True, showfliers=False)
            for patch, (n, _) in zip(bp["boxes"], keep):
                patch.set_facecolor(GROUP_COLORS["clean" if n.startswith("clean") else "flipped"])
                patch.set_alpha(0.45)
            ax[2].set_title(f"{label}: weight by group (box: quartiles, ▲ mean)", fontsize=10)
            ax[2].set_ylabel("raw weight a_i")
            ax[2].grid(alpha=0.3, axis="y")
        else:
            ax[2].set_axis_off()
    fig.suptitle("MetaPO weights per pair after training (metapo analyze, train split)", fontsize=13)
    fig.tight_layout()
    save(fig, out, 110)
    return None


# ---- attribution.png ----------------------------------------------------------------------------


def share(v):
    return f"{v:.2f}" if finite(v) else "n/a"


def plot_attribution(runs, labels, out):
    have = [(r, l) for r, l in zip(runs, labels) if os.path.exists(os.path.join(r, "analysis.json"))]
    if not have:
        return "no run has analysis.json (run `metapo analyze --run RUN --data FILE` first)"
    for r, l in zip(runs, labels):
        if (r, l) not in have:
            note(f"note: attribution.png: {r} has no analysis.json, left out")
    fig, axes = plt.subplots(len(have), 2, figsize=(13, 3.8 * len(have) + 0.6), squeeze=False)
    for row, (run, label) in enumerate(have):
        path = os.path.join(run, "analysis.json")
        try:
            with open(path, encoding="utf-8") as f:
                a = json.load(f)
            at = a["attribution"]
            feats, temporal = list(at["features"]), list(at["temporal"])
            ig, perm = at["integrated_gradients"], at["permutation"]
            for part in (ig, perm):
                if len(part["mean_abs"]) != len(feats) or len(temporal) != len(feats):
                    raise ValueError("features, temporal and mean_abs differ in length")
            q = a.get("quality") or {}
            q.get("auc")
        except OSError as e:
            fail(f"{path}: cannot read ({e.strerror or e})")
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            fail(f"{path}: not an analysis.json of metapo analyze ({type(e).__name__}: {e})")
        colors = [TEMPORAL_COLOR if t else INSTANT_COLOR for t in temporal]
        info = f"{a.get('with_history', '?')} of {a.get('n', '?')} pairs with history"
        if finite(q.get("auc")):
            info += f", weight AUC clean vs flipped {q['auc']:.3f}"
        for col, (ax, (name, part)) in enumerate(zip(axes[row], [("mean |integrated gradient| of z", ig),
                                                                ("permutation importance: mean |Δz|", perm)])):
            vals = [v if finite(v) else 0.0 for v in part["mean_abs"]]
            y = list(range(len(feats)))[::-1]
            ax.barh(y, vals, color=colors)
            ax.set_yticks(y)
            ax.set_yticklabels(feats)
            ax.set_xlabel(name)
            ax.set_title(f"{label}: {name.split(':')[0]} — temporal share {share(part.get('temporal_share'))}"
                         + (f"\n{info}" if col == 0 else "\n"), fontsize=10)
            ax.grid(alpha=0.3, axis="x")
    leg = [Patch(color=TEMPORAL_COLOR, label="temporal (pair history)"),
           Patch(color=INSTANT_COLOR, label="instantaneous (current step)")]
    fig.suptitle("What the weight net's decisions depend on (metapo analyze)", fontsize=13)
    fig.tight_layout(rect=(0, 0.06 / len(have), 1, 1))
    fig.legend(handles=leg, fontsize=10, loc="lower center", ncol=2, frameon=False)
    save(fig, out, 110)
    return None


# ---- trajectories.png ---------------------------------------------------------------------------

TRAJ_GROUPS = [("clean, easy (random rejected)", lambda q, d: q >= 0.5 and not d),
               ("clean, hard (near-miss rejected)", lambda q, d: q >= 0.5 and d),
               ("flipped (labels swapped)", lambda q, d: q < 0.5)]


def check_trajectory(line):
    """What is wrong with a line of trajectories.jsonl, or None."""
    if not finite(line.get("step")):
        return "'step' is not a number"
    pairs = line.get("pairs", [])
    if not isinstance(pairs, list) or not all(isinstance(p, dict) for p in pairs):
        return "'pairs' is not a list of objects"
    for p in pairs:
        sid = p.get("sample_id")
        if isinstance(sid, bool) or not isinstance(sid, int):
            return "a pair's 'sample_id' is not an integer"
        why = number_or_null(p, "margin", "quality", "difficulty")
        if why:
            return "a pair's " + why
    return None


def plot_trajectories(runs, labels, out, per_group):
    have = [(r, l) for r, l in zip(runs, labels) if os.path.exists(os.path.join(r, "trajectories.jsonl"))]
    if not have:
        return "no run has trajectories.jsonl (written by `metapo train` with --track-pairs > 0)"
    for r, l in zip(runs, labels):
        if (r, l) not in have:
            note(f"note: trajectories.png: {r} has no trajectories.jsonl, left out")
    fig, axes = plt.subplots(len(have), 3, figsize=(15, 3.9 * len(have) + 0.6), squeeze=False, sharey=True)
    cmap = plt.get_cmap("tab10")
    for row, (run, label) in enumerate(have):
        lines = read_jsonl(os.path.join(run, "trajectories.jsonl"), check_trajectory)
        series, info = {}, {}
        for l in lines:
            for p in l.get("pairs", []):
                sid = p["sample_id"]
                if finite(p.get("margin")):
                    series.setdefault(sid, []).append((l["step"], p["margin"]))
                q = p.get("quality")
                info[sid] = (1.0 if q is None else q, (p.get("difficulty", 0.0) or 0.0) >= 0.5)
        for col, (gname, pred) in enumerate(TRAJ_GROUPS):
            ax = axes[row][col]
            sids = sorted(s for s in series if pred(*info[s]))[:per_group]
            for k, sid in enumerate(sids):
                pts = sorted(series[sid])
                hard = " hard" if (col == 2 and info[sid][1]) else ""
                ax.plot([s for s, _ in pts], [m for _, m in pts], marker="o", ms=3, lw=1.3, color=cmap(k % 10),
                        ls="--" if hard else "-", label=f"pair {sid}{hard}")
            ax.axhline(0, color="grey", lw=0.8)
            ax.set_title(f"{label}: {gname}", fontsize=10)
            ax.set_xlabel("optimizer step")
            if col == 0:
                ax.set_ylabel("margin r(chosen) − r(rejected)\n(as labelled in the data)")
            ax.grid(alpha=0.3)
            if sids:
                ax.legend(fontsize=7, ncol=2, loc="best")
            else:
                ax.text(0.5, 0.5, "no tracked pairs in this group", ha="center", va="center",
                        transform=ax.transAxes, color="dimgray")
    fig.suptitle("Margin trajectories of tracked training pairs (flipped: below 0 = the model prefers the "
                 "truly correct answer)", fontsize=12)
    fig.tight_layout()
    save(fig, out, 110)
    return None


# ---- alignment.png ------------------------------------------------------------------------------


def spearman(x, y):
    import numpy as np
    if len(x) < 3:
        return None
    rx = np.argsort(np.argsort(x)).astype(float)
    ry = np.argsort(np.argsort(y)).astype(float)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def read_labels(data):
    """sample id → (clean, hard) from the dataset's train split."""
    try:
        import h5py
    except ImportError:
        return None, "needs h5py (python3 -m pip install h5py)"
    try:
        with h5py.File(data, "r") as f:
            ids = f["train/sample_id"][()]
            q = f["train/quality"][()] if "train/quality" in f else None
            d = f["train/columns/difficulty"][()] if "train/columns/difficulty" in f else None
    except (OSError, KeyError) as e:
        return None, f"{data}: {e}"
    if q is None:
        return None, f"{data}: no train/quality column (clean vs flipped unknown)"
    return {int(i): (bool(q[k] >= 0.5), bool(d is not None and d[k] >= 0.5)) for k, i in enumerate(ids)}, None


def plot_alignment(runs, labels, out, data, windows):
    import numpy as np
    have = [(r, l) for r, l in zip(runs, labels) if os.path.exists(os.path.join(r, "meta_trace.jsonl"))]
    if not have:
        return "no run has meta_trace.jsonl (metapo train --meta-trace RUN/meta_trace.jsonl)"
    if not data:
        return "needs --data FILE.h5 for the clean/flipped labels of the trace"
    lab, why = read_labels(data)
    if lab is None:
        return why
    fig, axes = plt.subplots(len(have), 4, figsize=(22, 4.2 * len(have)), squeeze=False)
    for row, (r, l) in enumerate(have):
        steps = read_jsonl(os.path.join(r, "meta_trace.jsonl"), check_trace_step)
        if not steps:
            continue
        F = len(steps[0]["raw"]) // len(steps[0]["a"])
        for k, j in enumerate(steps):
            if len(j["raw"]) != F * len(j["a"]):
                fail(f"{os.path.join(r, 'meta_trace.jsonl')}: meta step {j['step']} has {len(j['raw'])} raw "
                     f"features for {len(j['a'])} pairs, not {F} per pair as the first step")
        names = FEATURE_NAMES.get(F, [f"f{k}" for k in range(F)])
        W = max(1, len(steps) // windows)
        xs, sgrp, aucs, rho, ess, wgrp = [], [], [], [], [], []
        for k in range(0, len(steps), W):
            ch = steps[k:k + W]
            ids = np.concatenate([np.array(j["sample_id"]) for j in ch])
            known = np.array([int(i) in lab for i in ids])
            s = np.concatenate([np.array(j["s"]) / (np.sqrt(np.mean(np.square(j["s"]))) or 1.0) for j in ch])
            a = np.concatenate([np.array(j["a"]) for j in ch])
            w = np.concatenate([np.array(j["a"]) / np.mean(j["a"]) for j in ch])
            raw = np.concatenate([np.array(j["raw"]).reshape(-1, F) for j in ch])
            ids, s, a, w, raw = ids[known], s[known], a[known], w[known], raw[known]
            clean = np.array([lab[int(i)][0] for i in ids])
            hard = np.array([lab[int(i)][1] for i in ids])
            xs.append(ch[len(ch) // 2]["step"])
            groups = [clean & ~hard, clean & hard, ~clean & ~hard, ~clean & hard]
            sgrp.append([float(s[g].mean()) if g.any() else np.nan for g in groups])
            wgrp.append([float(w[g].mean()) if g.any() else np.nan for g in groups])
            aucs.append([rank_auc(s, clean), rank_auc(a, clean)] + [rank_auc(raw[:, f], clean) for f in range(F)])
            m = raw[:, names.index("margin")] if "margin" in names else raw[:, 0]
            rho.append([spearman(s[clean], m[clean]), spearman(s[~clean], m[~clean]), spearman(s, m)])
            ess.append(float(np.mean([np.sum(j["a"]) ** 2 / np.sum(np.square(j["a"])) for j in ch])))
        none = lambda v: np.nan if v is None else v
        gnames = ["clean/easy", "clean/hard", "flipped/easy", "flipped/hard"]
        gcol = ["tab:green", "tab:olive", "tab:red", "tab:orange"]
        ax = axes[row][0]
        for g in range(4):
            ax.plot(xs, [v[g] for v in sgrp], color=gcol[g], marker=".", label=gnames[g])
        ax.axhline(0, color="k", lw=0.8)
        ax.set_title(f"{l}: mean alignment s_i / rms(s) per group", fontsize=10)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        ax = axes[row][1]
        ax.plot(xs, [none(v[0]) for v in aucs], color="k", lw=2, label="alignment s")
        ax.plot(xs, [none(v[1]) for v in aucs], color="magenta", lw=2.5, label="weight a")
        for f in range(F):
            if names[f] == "log_count":
                continue
            ax.plot(xs, [none(v[2 + f]) for v in aucs], lw=1, ls="-" if f >= 5 or names[f] == "logp_gap" else ":",
                    label=names[f])
        ax.axhline(0.5, color="k", lw=0.8, ls="--")
        ax.set_ylim(0, 1)
        ax.set_title("AUC clean vs flipped (per window of steps)", fontsize=10)
        ax.set_xlabel("step")
        ax.legend(fontsize=7, ncol=2)
        ax.grid(alpha=0.3)
        ax = axes[row][2]
        for k, (name, c) in enumerate([("within clean", "tab:green"), ("within flipped", "tab:red"), ("all pairs", "k")]):
            ax.plot(xs, [none(v[k]) for v in rho], color=c, marker=".", label=name)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_ylim(-1, 1)
        ax.set_title("Spearman ρ(alignment s, current margin)", fontsize=10)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        ax = axes[row][3]
        B = len(steps[0]["a"])
        ax.plot(xs, [e / B for e in ess], color="k", lw=2, label=f"ESS / B (B = {B})")
        for g in range(4):
            ax.plot(xs, [v[g] for v in wgrp], color=gcol[g], marker=".", label=f"mean w̃, {gnames[g]}")
        ax.set_ylim(bottom=0)
        ax.set_title("effective sample size and normalized weights", fontsize=10)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save(fig, out, 90)
    return None


def check_trace_step(j):
    """What is wrong with a line of meta_trace.jsonl, or None."""
    if not finite(j.get("step")):
        return "'step' is not a number"
    why = number_list(j, "a")
    if why:
        return why
    n = len(j["a"])
    if n == 0:
        return "'a' is empty"
    if not all(finite(x) for x in j["a"]):
        return "'a' holds a value that is not finite"
    why = number_list(j, "s", n) or number_list(j, "sample_id", n) or number_list(j, "raw")
    if why:
        return why
    if not all(isinstance(i, int) for i in j["sample_id"]):
        return "'sample_id' holds a number that is not an integer"
    if len(j["raw"]) == 0 or len(j["raw"]) % n:
        return f"'raw' has {len(j['raw'])} entries, not a multiple of the {n} pairs"
    return None


# The feature columns of meta_trace.jsonl by their count (7: metapo.json format 1, before logp_gap).
FEATURE_NAMES = {
    7: ["margin_ema", "margin_trend", "volatility", "ref_deviation", "log_count", "margin", "loss"],
    8: ["margin_ema", "margin_trend", "volatility", "ref_deviation", "log_count", "margin", "loss", "logp_gap"],
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", metavar="RUN", help="run directories of metapo train")
    ap.add_argument("--out", help="output directory (default: RUN/plots of the first run)")
    ap.add_argument("--smooth", type=int, default=None,
                    help="moving-average window over training steps (default: steps/25; 1: raw)")
    ap.add_argument("--pairs-per-group", type=int, default=4, help="tracked pairs drawn per group (default 4)")
    ap.add_argument("--data", help="the runs' dataset .h5 (alignment.png: clean/flipped and easy/hard labels)")
    ap.add_argument("--windows", type=int, default=15, help="alignment.png: windows of meta steps (default 15)")
    args = ap.parse_args()
    for r in args.runs:
        if not os.path.isdir(r):
            fail(f"run directory {r} not found")
        if not os.path.isfile(os.path.join(r, "metrics.jsonl")):
            fail(f"{os.path.join(r, 'metrics.jsonl')} not found (is {r} a `metapo train` run directory?)")
    if args.smooth is not None and args.smooth < 1:
        fail("--smooth must be at least 1")
    if args.pairs_per_group < 1:
        fail(f"--pairs-per-group {args.pairs_per_group}: must be at least 1")
    if args.windows < 1:
        fail(f"--windows {args.windows}: must be at least 1")
    if args.data is not None and not os.path.isfile(args.data):
        fail(f"--data {args.data}: no such file")
    out = args.out or os.path.join(args.runs[0], "plots")
    flag = "--out " if args.out else ""
    if os.path.exists(out) and not os.path.isdir(out):
        fail(f"{flag}{out}: exists and is not a directory")
    made = not os.path.exists(out)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        fail(f"{flag}{out}: cannot make the directory ({e.strerror or e})")
    if not os.access(out, os.W_OK | os.X_OK):
        fail(f"{flag}{out}: the directory is not writable")
    try:
        draw(args, out)
    except SystemExit:
        if made:  # a failed run leaves no empty directory of its own behind
            try:
                os.rmdir(out)
            except OSError:
                pass
        raise


def draw(args, out):
    """Every figure into a temporary directory inside out, then each moved into place: a malformed
    input found by a later figure leaves none of this call's PNGs behind (and earlier ones intact)."""
    labels = run_labels(args.runs)
    cmap = plt.get_cmap("tab10")
    colors = [cmap(k % 10) for k in range(len(args.runs))]
    tmp = tempfile.mkdtemp(prefix=".plots-", dir=out)
    try:
        made, skipped = [], []
        for name, fn in [("curves.png", lambda p: plot_curves(args.runs, labels, colors, p, args.smooth)),
                         ("weights_hist.png", lambda p: plot_weights_hist(args.runs, labels, p)),
                         ("attribution.png", lambda p: plot_attribution(args.runs, labels, p)),
                         ("trajectories.png", lambda p: plot_trajectories(args.runs, labels, p, args.pairs_per_group)),
                         ("alignment.png", lambda p: plot_alignment(args.runs, labels, p, args.data, args.windows))]:
            why = fn(os.path.join(tmp, name))
            (skipped if why else made).append((name, why))
        for name, _ in made:
            path = os.path.join(out, name)
            os.replace(os.path.join(tmp, name), path)
            print(f"wrote {path}")
        for name, why in skipped:
            print(f"skipped {name}: {why}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
