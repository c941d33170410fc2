#!/usr/bin/env python3
"""How well could any weighting built on MetaPO's features tell flipped pairs from clean ones?

For each run analysed by `metapo analyze` (RUN/pair_weights.jsonl: each pair's raw features, its weight
and its `quality`, 1 clean and 0 flipped), this fits a classifier of flipped against clean pairs *with
the true labels* on the weight net's own inputs (every feature but log_count, which the net does not
read; of a `--meta-features` ablation only that kind, as RUN/metapo.json records) and reports the AUC of its out-of-fold scores: the supervised ceiling of what the features say
about a pair's label. The weight net never sees a label, so its weight AUC (`quality_auc` of analyze)
is below this up to noise; where the ceiling itself is below a target, no weighting that reads these
features reaches the target, however it is trained.

The classifier is L2-regularised logistic regression on the features mapped through their empirical
distribution (robust to the heavy tails of loss and volatility) and expanded to degree 2 (squares
and products), fitted by Newton's method; scores are out-of-fold over --folds stratified folds, so
the AUC is not an in-sample fit. Also printed: the weight AUC of the run's own weights and the best
single feature's AUC (either orientation). Needs numpy.
  python3 tools/feature_ceiling.py RUN [RUN ...]          # one row per run
  python3 tools/feature_ceiling.py --grid OUT             # a tools/bench-quality.sh tree: mean ± std per cell
  options: --folds 5 --seed 0 --ridge 1.0 --json (one JSON line per run instead of the table)
           --scores FILE (one run: each pair's sample_id and out-of-fold P(clean | features), as
           JSON lines, e.g. to train on as a fixed `--weighting column`; written under a temporary name
           and renamed, and an existing FILE is replaced only when it is an earlier --scores file:
           never a run's pair_weights.jsonl, metapo.json or any other file the tool did not write)"""
import argparse
import glob
import json
import os
import re
import statistics
import sys

from auc import rank_auc  # tools/auc.py: the script's directory is on sys.path


def die(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(1)


try:
    import numpy as np
except ImportError:
    die("feature_ceiling.py needs numpy (pip install numpy)")


def net_inputs(run):
    """The features the run's weight net reads, by RUN/metapo.json: every feature but log_count, and of
    a feature ablation (`--meta-features temporal|instantaneous`) only that kind. None: no metapo.json,
    every feature in the file but log_count."""
    path = os.path.join(run, "metapo.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            j = json.load(f)
        feats, used = list(j["features"]), j.get("features_used", "all")
        n_temporal = feats.index("log_count") + 1  # the temporal block ends with log_count (features.h)
    except OSError as e:
        die(f"{path}: cannot read ({e.strerror or e})")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        die(f"{path}: no feature list with log_count ({type(e).__name__}: {e})")
    if used not in ("all", "temporal", "instantaneous"):
        die(f"{path}: features_used '{used}' is not all, temporal or instantaneous")
    keep = {"all": feats, "temporal": feats[:n_temporal], "instantaneous": feats[n_temporal:]}[used]
    return {n for n in keep if n != "log_count"}


def load(run):
    path = os.path.join(run, "pair_weights.jsonl")
    if not os.path.isfile(path):
        die(f"{path}: no such file (run `metapo analyze --run {run} --data FILE.h5` first)")
    inputs = net_inputs(run)
    names, rows, q, w, ids = None, [], [], [], []
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except OSError as e:
        die(f"{path}: cannot read ({e.strerror or e})")
    except UnicodeDecodeError as e:
        die(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})")
    for k, line in enumerate(lines, 1):
        try:
            r = json.loads(line)
            feats = r["features"]
            if names is None:
                names = sorted(n for n in feats if n != "log_count" and (inputs is None or n in inputs))
                if not names:
                    die(f"{path}: none of the weight net's inputs is among the features")
            rows.append([float(feats[n]) for n in names])
            q.append(float(r["quality"]))
            w.append(float(r["weight"]))
            ids.append(r.get("sample_id", k - 1))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            die(f"{path}:{k}: not a pair_weights line with features, quality and weight ({type(e).__name__}: {e})")
    if not rows:
        die(f"{path}: no pairs")
    x = np.array(rows, dtype=np.float64)
    if not np.isfinite(x).all():
        die(f"{path}: a feature value is not finite")
    if not (np.isfinite(q).all() and np.isfinite(w).all()):
        die(f"{path}: a quality or weight is not finite")
    return names, x, np.array(q) >= 0.5, np.array(w), ids


def expand(xtr, xte):
    """Each column through the training fold's empirical CDF, centred and scaled to unit variance;
    then the columns, their squares and pairwise products, standardised on the training fold."""
    def cdf(col_tr, col):
        s = np.sort(col_tr)
        lo = np.searchsorted(s, col, side="left")
        hi = np.searchsorted(s, col, side="right")
        return ((lo + hi) / 2 / len(s) - 0.5) * np.sqrt(12)

    def poly(u):
        d = u.shape[1]
        cols = [u[:, j] for j in range(d)]
        cols += [u[:, j] * u[:, k] for j in range(d) for k in range(j, d)]
        return np.stack(cols, axis=1)

    utr = np.stack([cdf(xtr[:, j], xtr[:, j]) for j in range(xtr.shape[1])], axis=1)
    ute = np.stack([cdf(xtr[:, j], xte[:, j]) for j in range(xtr.shape[1])], axis=1)
    ptr, pte = poly(utr), poly(ute)
    mu, sd = ptr.mean(0), ptr.std(0)
    sd[sd == 0] = 1
    return (ptr - mu) / sd, (pte - mu) / sd


def design(x):
    """x with a column of ones in front, for the intercept."""
    return np.hstack([np.ones((len(x), 1)), x])


def fit_logistic(x, y, ridge, iters=50):
    """Newton's method for L2-penalised logistic regression (intercept unpenalised)."""
    a = design(x)
    w = np.zeros(a.shape[1])
    pen = np.full(a.shape[1], ridge)
    pen[0] = 0
    for _ in range(iters):
        z = np.clip(a @ w, -30, 30)
        p = 1 / (1 + np.exp(-z))
        g = a.T @ (p - y) + pen * w
        h = (a * (p * (1 - p))[:, None]).T @ a + np.diag(pen) + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(h, g)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def ceiling(x, flipped, folds, seed, ridge):
    rng = np.random.default_rng(seed)
    fold = np.empty(len(x), dtype=int)
    for cls in (True, False):  # stratified: each fold gets its share of flipped and of clean pairs
        idx = np.flatnonzero(flipped == cls)
        rng.shuffle(idx)
        fold[idx] = np.arange(len(idx)) % folds
    score = np.empty(len(x))  # out-of-fold logit of P(flipped)
    for k in range(folds):
        tr, te = fold != k, fold == k
        ptr, pte = expand(x[tr], x[te])
        w = fit_logistic(ptr, flipped[tr].astype(np.float64), ridge)
        score[te] = design(pte) @ w
    return rank_auc(-score, ~flipped), score  # clean pairs as the positive class, as analyze's quality_auc


def one(run, a):
    names, x, clean, w, ids = load(run)
    flipped = ~clean
    if clean.all() or flipped.all():
        if a.scores:
            die(f"--scores {a.scores}: {run} has no {'flipped' if clean.all() else 'clean'} pairs to fit against")
        return {"run": run, "n": len(x), "flipped": int(flipped.sum()), "weight_auc": None,
                "best_feature": None, "best_feature_auc": None, "ceiling_auc": None}
    per = {n: rank_auc(x[:, j], clean) for j, n in enumerate(names)}
    best = max(per, key=lambda n: abs(per[n] - 0.5))
    ceil, score = ceiling(x, flipped, a.folds, a.seed, a.ridge)
    if a.scores:
        tmp = f"{a.scores}.{os.getpid()}.tmp"  # a new file ("x"): never one that is there already
        try:
            with open(tmp, "x") as f:
                for i, z in zip(ids, score):
                    p_clean = float(1 / (1 + np.exp(min(max(z, -30), 30))))
                    f.write(json.dumps({"sample_id": i, "p_clean": p_clean}) + "\n")
            os.replace(tmp, a.scores)
        except BaseException as e:
            if not isinstance(e, FileExistsError):
                try:
                    os.remove(tmp)
                except OSError:
                    pass
            if isinstance(e, OSError):
                die(f"--scores {a.scores}: cannot write ({e.strerror or e})")
            raise
    return {"run": run, "n": len(x), "flipped": int(flipped.sum()), "weight_auc": rank_auc(w, clean),
            "best_feature": best, "best_feature_auc": max(per[best], 1 - per[best]),
            "ceiling_auc": ceil,
            "feature_auc": per}


def is_scores_file(path):
    """Whether path holds what --scores writes (lines of exactly sample_id and p_clean), or nothing."""
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline()
    except (OSError, UnicodeDecodeError):
        return False
    if not first.strip():
        return os.path.getsize(path) == 0
    try:
        r = json.loads(first)
    except ValueError:
        return False
    return isinstance(r, dict) and set(r) == {"sample_id", "p_clean"}


def check_scores(path, runs):
    """--scores may replace only a file it wrote before: never a file of a run (its inputs, or
    anything else a run directory holds that is not an earlier --scores file), nor anything else."""
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        die(f"--scores {path}: its directory does not exist")
    if not os.access(d, os.W_OK | os.X_OK):
        die(f"--scores {path}: its directory {d} is not writable")
    if os.path.isdir(path):
        die(f"--scores {path}: is a directory")
    if not os.path.lexists(path):
        return
    if not os.path.isfile(path) or os.path.islink(path):
        die(f"--scores {path}: exists and is not a regular file; not replaced")
    for run in runs:
        for name in ("pair_weights.jsonl", "metapo.json"):
            f = os.path.join(run, name)
            if os.path.exists(f) and os.path.samefile(path, f):
                die(f"--scores {path}: is {f}, an input of this tool; give a new file")
    if not is_scores_file(path):
        die(f"--scores {path}: exists and is not a scores file of feature_ceiling.py; not overwritten "
            "(remove it, or give a new file)")


def fmt(v):
    return "—" if v is None else f"{v:.3f}"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="*", help="run directories with pair_weights.jsonl")
    p.add_argument("--grid", help="a tools/bench-quality.sh OUT tree: every */sft*/seed*/flip*/metapo*-e*")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ridge", type=float, default=1.0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--scores", help="with one run: write each pair's out-of-fold P(clean | features) here")
    a = p.parse_args()
    if a.folds < 2:
        die(f"--folds {a.folds}: needs at least 2 folds")
    if not 0 <= a.ridge < float("inf"):
        die(f"--ridge {a.ridge}: needs a finite number >= 0")
    if a.seed < 0:
        die(f"--seed {a.seed}: needs a number >= 0")
    if not a.runs and not a.grid:
        die("give RUN directories or --grid OUT")
    runs = list(a.runs)
    if a.scores and (a.grid or len(runs) != 1):
        die(f"--scores {a.scores}: takes exactly one run (no --grid)")
    if a.scores:
        check_scores(a.scores, runs)
    if a.grid:
        if not os.path.isdir(a.grid):
            die(f"--grid {a.grid}: not a directory")
        found = sorted(glob.glob(os.path.join(a.grid, "*", "sft*", "seed*", "flip*", "metapo*-e*", "pair_weights.jsonl")))
        if not found:
            die(f"--grid {a.grid}: no */sft*/seed*/flip*/metapo*-e*/pair_weights.jsonl under it")
        runs += [os.path.dirname(f) for f in found]
    res = [one(r, a) for r in runs]
    if a.json:
        for r in res:
            print(json.dumps(r))
        return
    if not a.grid:
        print("| run | pairs (flipped) | weight AUC | best single feature | feature ceiling AUC |")
        print("| --- | --- | --- | --- | --- |")
        for r in res:
            bf = "—" if r["best_feature"] is None else f"{r['best_feature']} {r['best_feature_auc']:.3f}"
            print(f"| {r['run']} | {r['n']} ({r['flipped']}) | {fmt(r['weight_auc'])} | {bf} | {fmt(r['ceiling_auc'])} |")
        return
    cells = {}
    pat = re.compile(r"([^/]+)/sft(\d+)/seed(\d+)/flip([^/]+)/(metapo[^/]*)-e(\d+)$")
    for r in res:
        m = pat.search(os.path.normpath(r["run"]))
        if not m or r["ceiling_auc"] is None:
            continue
        key = (m[1], int(m[2]), float(m[4]), m[5], int(m[6]))
        cells.setdefault(key, []).append(r)

    def ms(v):
        v = [x for x in v if x is not None]
        if not v:
            return "—"
        return f"{statistics.mean(v):.3f}" + (f" ± {statistics.stdev(v):.3f}" if len(v) > 1 else "")
    print("| DPO epochs | task | SFT epochs | flipped | method | seeds | weight AUC | best single feature AUC | feature ceiling AUC |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    order = sorted(cells, key=lambda k: (-k[4], ["sort", "reverse", "add"].index(k[0]) if k[0] in ("sort", "reverse", "add") else 9,
                                         -k[1], -k[2], k[3]))
    for k in order:
        rs = cells[k]
        print(f"| {k[4]} | {k[0]} | {k[1]} | {round(k[2] * 100)}% | {k[3]} | {len(rs)} | {ms([r['weight_auc'] for r in rs])} | "
              f"{ms([r['best_feature_auc'] for r in rs])} | {ms([r['ceiling_auc'] for r in rs])} |")


if __name__ == "__main__":
    main()
