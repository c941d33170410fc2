#!/usr/bin/env bash
# tools/feature_ceiling.py on made-up pair_weights.jsonl files whose best possible AUC is known:
# - one feature shifted by ±1 between clean and flipped pairs (unit Gaussians): the Bayes AUC is
#   Φ(2/√2) = 0.9214, and the run's weight (that feature) has the same AUC, computed here by counting;
# - an XOR pattern (clean iff two features have the same sign): every single feature is at chance,
#   the degree-2 classifier is not;
# - labels independent of the features: the ceiling is at chance (out-of-fold, not an in-sample fit);
# - log_count carries the label in every file: the net does not read it, so neither may the ceiling.
# --grid over a bench-quality tree; bad input fails with one error line; --scores never replaces a
# run's file or anything it did not write. Skipped without numpy.
source "$(dirname "$0")/common.sh"
TOOL="$SRC/tools/feature_ceiling.py"
if ! python3 -c "import numpy" 2>/dev/null; then
  echo "skipped: numpy missing"
  exit 0
fi

python3 - <<'P'
import json, os, random
rng = random.Random(7)
def write(path, kind, n=2000):
    os.makedirs(path, exist_ok=True)
    with open(f"{path}/pair_weights.jsonl", "w") as f:
        for i in range(n):
            clean = i % 5 >= 2  # 40% flipped
            a, b, c = rng.gauss(0, 1), rng.gauss(0, 1), rng.gauss(0, 1)
            if kind == "shift":
                a += 1 if clean else -1
            elif kind == "xor":
                clean = (a > 0) == (b > 0)
            feats = {"margin": a, "loss": b, "volatility": c, "log_count": 1.0 if clean else 0.0}
            f.write(json.dumps({"sample_id": i, "weight": a, "quality": 1.0 if clean else 0.0,
                                "features": feats}) + "\n")
for kind in ("shift", "xor", "noise"):
    write(kind, kind)
write("grid/sort/sft3/seed1/flip0.4/metapo-e3", "shift")
# A feature ablation: the net of `--meta-features temporal` does not read margin, the informative one.
write("temporal", "shift")
feats = ["margin_ema", "margin_trend", "volatility", "ref_deviation", "log_count", "margin", "loss", "logp_gap"]
json.dump({"features": feats, "features_used": "temporal"}, open("temporal/metapo.json", "w"))
write("grid/sort/sft3/seed2/flip0.4/metapo-e3", "shift")
P

python3 "$TOOL" --json shift xor noise > res.jsonl || fail "feature_ceiling.py failed"
cat res.jsonl | cut -c1-200
get() { python3 -c "import json, sys; r = [json.loads(l) for l in open('res.jsonl')][int(sys.argv[1])]; print(r[sys.argv[2]])" "$@"; }
within() {  # name value lo hi
  awk -v v="$2" -v lo="$3" -v hi="$4" 'BEGIN { exit !(v >= lo && v <= hi) }' || fail "$1 = $2, expected in [$3, $4]"
  echo "ok: $1 = $2 in [$3, $4]"
}
# The weight AUC by counting every (clean, flipped) pair, ties as halves: independent of the tool's ranks.
counted=$(python3 -c "
import json
r = [json.loads(l) for l in open('shift/pair_weights.jsonl')]
c = [x['weight'] for x in r if x['quality'] >= 0.5]; f = [x['weight'] for x in r if x['quality'] < 0.5]
print(sum((a > b) + 0.5 * (a == b) for a in c for b in f) / (len(c) * len(f)))")
awk -v a="$(get 0 weight_auc)" -v b="$counted" 'BEGIN { exit !(a - b < 1e-12 && b - a < 1e-12) }' ||
  fail "weight AUC $(get 0 weight_auc) against $counted counted"
echo "ok: weight AUC $(get 0 weight_auc) = counted $counted"
[ "$(get 0 best_feature)" = margin ] || fail "best feature $(get 0 best_feature), expected margin"
within "shift: ceiling" "$(get 0 ceiling_auc)" 0.90 0.94   # Bayes 0.9214; 2000 pairs: s.e. about 0.006
within "xor: best single feature" "$(get 1 best_feature_auc)" 0.5 0.56
within "xor: ceiling" "$(get 1 ceiling_auc)" 0.90 1.0
within "noise: ceiling" "$(get 2 ceiling_auc)" 0.44 0.56
within "noise: best single feature" "$(get 2 best_feature_auc)" 0.5 0.56
python3 "$TOOL" --json temporal > abl.jsonl || fail "feature_ceiling.py on the ablation failed"
abl() { python3 -c "import json, sys; print(json.load(open('abl.jsonl'))[sys.argv[1]])" "$1"; }
[ "$(abl best_feature)" = volatility ] || fail "ablation: best feature $(abl best_feature), expected volatility (the only temporal input)"
within "temporal ablation: ceiling (margin not a net input)" "$(abl ceiling_auc)" 0.44 0.56

# The table, and --grid: one row per cell, the mean over its seeds.
python3 "$TOOL" shift > table.md || fail "table failed"
grep -q "^| shift | 2000 (800) |" table.md || { cat table.md; fail "no row for shift"; }
python3 "$TOOL" --grid grid > grid.md || fail "--grid failed"
cat grid.md
grep -q "^| 3 | sort | 3 | 40% | metapo | 2 | " grid.md || fail "--grid: no row for the cell with 2 seeds"

# --scores: one line per pair, in (0, 1), whose AUC is the ceiling reported.
python3 "$TOOL" --json --scores scores.jsonl shift > one.jsonl || fail "--scores failed"
python3 - <<'P' || fail "--scores: the scores do not give the reported ceiling"
import json
r = json.loads(open("one.jsonl").read())
p = {json.loads(l)["sample_id"]: json.loads(l)["p_clean"] for l in open("scores.jsonl")}
q = {json.loads(l)["sample_id"]: json.loads(l)["quality"] for l in open("shift/pair_weights.jsonl")}
assert len(p) == 2000 and set(p) == set(q) and all(0 < v < 1 for v in p.values())
c = [p[i] for i in p if q[i] >= 0.5]; f = [p[i] for i in p if q[i] < 0.5]
a = sum((x > y) + 0.5 * (x == y) for x in c for y in f) / (len(c) * len(f))
assert abs(a - r["ceiling_auc"]) < 1e-9, (a, r["ceiling_auc"])
print("ok: --scores AUC", a)
P

# Bad input: one error line naming the file or option.
expect_error "nowhere/pair_weights.jsonl" python3 "$TOOL" nowhere
printf '{"sample_id": 0}\n' > bad.jsonl && mkdir -p bad && mv bad.jsonl bad/pair_weights.jsonl
expect_error "bad/pair_weights.jsonl:1" python3 "$TOOL" bad
expect_error "--folds 1" python3 "$TOOL" --folds 1 shift
expect_error "--grid nowhere" python3 "$TOOL" --grid nowhere
expect_error "--scores s.jsonl: takes exactly one run" python3 "$TOOL" --scores s.jsonl shift xor
[ ! -e s.jsonl ] || fail "a refused --scores wrote its file"
expect_error1() {
  expect_error "$@"
  [ "$(wc -l < err.txt)" -eq 1 ] || { cat err.txt; fail "not one stderr line: ${*:2}"; }
}
expect_error1 "--seed -1" python3 "$TOOL" --seed -1 shift
expect_error1 "--ridge inf" python3 "$TOOL" --ridge inf shift
mkdir -p bad2 && printf '\xff\n' > bad2/pair_weights.jsonl
expect_error1 "bad2/pair_weights.jsonl: not UTF-8" python3 "$TOOL" bad2
head -n 1 shift/pair_weights.jsonl | sed 's/"quality": [0-9.]*/"quality": NaN/' > bad2/pair_weights.jsonl
expect_error1 "bad2/pair_weights.jsonl: a quality or weight is not finite" python3 "$TOOL" bad2
# --scores never replaces a file it did not write: not the run's inputs (any spelling), not another
# file of a run directory, not a directory; an earlier scores file of its own it does replace.
cp shift/pair_weights.jsonl pw.orig && cp temporal/metapo.json mj.orig
echo '{"run": 1}' > shift/run.json
expect_error1 "--scores shift/pair_weights.jsonl: is shift/pair_weights.jsonl, an input" \
  python3 "$TOOL" shift --scores shift/pair_weights.jsonl
expect_error1 "--scores ./shift/../shift/pair_weights.jsonl: is shift/pair_weights.jsonl, an input" \
  python3 "$TOOL" shift --scores ./shift/../shift/pair_weights.jsonl
expect_error1 "--scores temporal/metapo.json: is temporal/metapo.json, an input" \
  python3 "$TOOL" temporal --scores temporal/metapo.json
expect_error1 "--scores shift/run.json: exists and is not a scores file" python3 "$TOOL" shift --scores shift/run.json
expect_error1 "--scores xor/pair_weights.jsonl: exists and is not a scores file" \
  python3 "$TOOL" shift --scores xor/pair_weights.jsonl
expect_error1 "--scores shift: is a directory" python3 "$TOOL" shift --scores shift
cmp -s pw.orig shift/pair_weights.jsonl && cmp -s mj.orig temporal/metapo.json &&
  [ "$(cat shift/run.json)" = '{"run": 1}' ] || fail "a refused --scores changed a run's file"
ls shift xor temporal | grep -q tmp && fail "a refused --scores left a temporary file"
python3 "$TOOL" --json --scores scores.jsonl shift > again.jsonl || fail "--scores over its own earlier file failed"
cmp -s again.jsonl one.jsonl || fail "--scores a second time gave another result"
echo "ok: --scores replaces only its own file"
echo "PASSED"
