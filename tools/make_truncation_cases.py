#!/usr/bin/env python3
"""Writes tests/data/truncation_cases.json: random prompts and response pairs, each with the limits it
is cut under and what tools/prepare_data.py's truncate() makes of it. tests/test_batching.cpp checks
that metapo's training-time truncation (--max-length, --max-prompt-length, --truncation-mode) cuts
every case the same way, so the two cannot drift apart. Needs only the standard library:

    python3 tools/make_truncation_cases.py [--n 200] [--seed 0]
"""
import argparse
import json
import os
import random
import sys
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import prepare_data  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(HERE, "..", "tests", "data", "truncation_cases.json"))
    a = ap.parse_args()
    rng = random.Random(a.seed)
    cases = []
    while len(cases) < a.n:
        seq = lambda n: [rng.randrange(1000) for _ in range(n)]  # noqa: E731
        prompt, chosen, rejected = seq(rng.randrange(1, 40)), seq(rng.randrange(1, 30)), seq(rng.randrange(1, 30))
        ml = rng.choice([0, rng.randrange(8, 80)])
        mpl = rng.choice([0, rng.randrange(1, 40)])
        mode = rng.choice(["keep_end", "keep_start"])
        p, (c, r) = prepare_data.truncate(prompt, [chosen, rejected], prepare_data.Limits(mpl, ml, 0, mode), Counter())
        cases.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "max_length": ml,
                      "max_prompt_length": mpl, "truncation_mode": mode,
                      # prepare_data.py drops a pair left with an empty response; metapo refuses it
                      "refused": len(c) == 0 or len(r) == 0,
                      "want": {"prompt": p, "chosen": c, "rejected": r}})
    with open(a.out, "w") as f:
        json.dump({"generator": "tools/make_truncation_cases.py", "seed": a.seed, "cases": cases}, f)
        f.write("\n")
    print(f"wrote {len(cases)} cases ({sum(c['refused'] for c in cases)} refused) to {a.out}")


if __name__ == "__main__":
    main()
