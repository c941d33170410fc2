#!/usr/bin/env bash
# tools/quality_table.py on a made-up results.jsonl (one cell at 40% flips, seeds 1-3 for uniform,
# MetaPO and the oracle, plus a MetaPO run of seed 4 with no uniform run to pair it with): the checks
# table, and with --paired each check's per-seed margin (mean ± standard error over the paired seeds),
# against the same figures computed here with awk. A malformed line, a missing or directory results
# file and a bad --plot path (before any table is printed) fail with one error line.
source "$(dirname "$0")/common.sh"
TABLE="$SRC/tools/quality_table.py"
line() {  # method seed pref auc
  local an=null
  [ "$4" = - ] || an="{\"quality_auc\": $4}"
  echo "{\"task\": \"sort\", \"sft_epochs\": 3, \"seed\": $2, \"flip\": 0.4, \"epochs\": 3, \"method\": \"$1\"," \
       "\"ess\": 32.0, \"batch\": 32, \"eval\": {\"pref_acc\": $3}, \"gen\": {\"answer_accuracy\": 0.5}, \"analyze\": $an}"
}
{
  line uniform 1 0.80 -; line uniform 2 0.82 -; line uniform 3 0.84 -
  line oracle 1 0.89 -;  line oracle 2 0.89 -;  line oracle 3 0.89 -
  line metapo 1 0.86 0.90; line metapo 2 0.87 0.88; line metapo 3 0.91 0.86
} > paired.jsonl
# Seed 4 of MetaPO has no uniform run to pair with: it enters the means and the weight AUC's margin
# (MetaPO's alone), not the paired margins. Its figures are the mean of seeds 1-3, so the means, and
# with them the checks, stay as without it.
{ cat paired.jsonl; line metapo 4 0.88 0.88; } > results.jsonl

python3 "$TABLE" results.jsonl > plain.md || fail "quality_table.py failed"
grep -q "margin per seed" plain.md && fail "the margin column appears without --paired"
python3 "$TABLE" --paired results.jsonl > paired.md || fail "quality_table.py --paired failed"
cat paired.md

# mean ± standard error of "a b c" (one value per seed), as the table prints it.
mse() { echo "$1" | awk '{ n = NF; s = 0; for (i = 1; i <= n; i++) s += $i; m = s / n; v = 0;
  for (i = 1; i <= n; i++) v += ($i - m) ^ 2; printf "%+.3f ± %.3f (%d)", m, sqrt(v / (n - 1) / n), n }'; }
# Per seed: pref. accuracy m (MetaPO), u (uniform), o (oracle); AUC a.
m=(0.86 0.87 0.91); u=(0.80 0.82 0.84); o=(0.89 0.89 0.89); a=(0.90 0.88 0.86)
pref="" sixty="" auc="" ans=""
for i in 0 1 2; do
  pref+=" $(awk -v m="${m[$i]}" -v u="${u[$i]}" 'BEGIN { print m - u + 0.01 }')"
  sixty+=" $(awk -v m="${m[$i]}" -v u="${u[$i]}" -v o="${o[$i]}" 'BEGIN { print (m - u) - 0.6 * (o - u) }')"
  auc+=" $(awk -v a="${a[$i]}" 'BEGIN { print a - 0.85 }')"
  ans+=" 0.02"
done
expect() {  # check-name substring, expected margin
  local row; row=$(grep -F "| $1" paired.md) || fail "no check '$1' in the table"
  echo "$row" | grep -qF "| $2 |" || fail "check '$1': expected margin '$2', got: $row"
  echo "ok: $1: $2"
}
expect "pref ≥ uniform − 1 pt" "$(mse "$pref")"
expect "answer ≥ uniform − 2 pts" "$(mse "$ans")"
expect "pref gain ≥ 60% of the oracle's" "$(mse "$sixty")"
expect "weight AUC ≥ 0.85" "$(mse "$auc $(awk 'BEGIN { print 0.88 - 0.85 }')")"
# The unpaired columns are the same with and without --paired.
diff <(grep "^| 3 epoch" plain.md | cut -d'|' -f1-6) <(grep "^| 3 epoch" paired.md | cut -d'|' -f1-6) ||
  fail "--paired changed the checks"

# --plot: the figure of the grid, when matplotlib is there; a name not ending in .png is refused first.
rc=0
python3 "$TABLE" results.jsonl --plot grid.pdf > out.txt 2> err.txt || rc=$?
[ "$rc" -ne 0 ] && [ "$(wc -l < err.txt)" -eq 1 ] && grep -q -- "--plot grid.pdf" err.txt ||
  { cat err.txt; fail "--plot grid.pdf was not refused with one error line"; }
[ ! -e grid.pdf ] || fail "--plot grid.pdf wrote a file"
if python3 -c "import matplotlib" 2>/dev/null; then
  python3 "$TABLE" results.jsonl --plot grid.png > /dev/null 2> plot.log || { cat plot.log; fail "--plot failed"; }
  [ "$(head -c 8 grid.png | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] || fail "grid.png is not a PNG"
  echo "ok: --plot grid.png ($(wc -c < grid.png) bytes)"
  ! ls | grep -q partial || fail "--plot left a temporary file behind"
else
  echo "skipped: --plot (matplotlib missing)"
fi

echo '{"task": ' > bad.jsonl
rc=0
python3 "$TABLE" --paired bad.jsonl > out.txt 2> err.txt || rc=$?
[ "$rc" -ne 0 ] || fail "a malformed line was accepted"
[ "$(wc -l < err.txt)" -eq 1 ] && grep -q "bad.jsonl:1: not a JSON line" err.txt ||
  { cat err.txt; fail "no single error line naming bad.jsonl:1"; }
echo "ok: $(cat err.txt)"

# More bad input: one error line naming the file (and the line), nothing on stdout, no traceback.
expect_error1() {
  expect_error "$@"
  [ "$(wc -l < err.txt)" -eq 1 ] || { cat err.txt; fail "not one stderr line: ${*:2}"; }
  [ ! -s out.txt ] || { cat out.txt; fail "printed tables before failing: ${*:2}"; }
}
expect_error1 "error: nosuch.jsonl: cannot read" python3 "$TABLE" nosuch.jsonl
mkdir -p adir
expect_error1 "error: adir: is a directory" python3 "$TABLE" adir
{ line uniform 1 0.80 -; line uniform 2 0.82 - | sed 's/"flip": 0.4, //'; } > noflip.jsonl
expect_error1 "noflip.jsonl:2: .*'flip' is missing" python3 "$TABLE" noflip.jsonl
{ line uniform 1 0.80 -; line metapo 1 0.85 0.9 | sed 's/"eval": {[^}]*}/"eval": null/'; } > noeval.jsonl
expect_error1 "noeval.jsonl:2: .*'eval'" python3 "$TABLE" noeval.jsonl
{ line uniform 1 0.80 -; echo '[1, 2]'; } > notobj.jsonl
expect_error1 "notobj.jsonl:2: .*not a JSON object" python3 "$TABLE" notobj.jsonl
line uniform 1 0.80 - | sed 's/"seed": 1/"seed": "one"/' > strseed.jsonl
expect_error1 "strseed.jsonl:1: .*'seed' is not an integer" python3 "$TABLE" strseed.jsonl
# --plot is checked before any table is printed: its directory, and never the results file itself.
expect_error1 "--plot nodir/q.png: its directory does not exist" python3 "$TABLE" results.jsonl --plot nodir/q.png
cp results.jsonl results.png
expect_error1 "--plot results.png: is the results file" python3 "$TABLE" results.png --plot results.png
cmp -s results.jsonl results.png || fail "--plot results.png overwrote the results file"
echo PASS
