#!/usr/bin/env python3
"""Check `metapo score` output against transformers.

Compare mode:
  python3 tools/check_score.py --model DIR --input IN.jsonl --scored OUT.jsonl [--tol 1e-3]

  IN.jsonl lines:  {"tokens": [ids], "loss_mask": [0/1 per token]}   (loss_mask optional)
  OUT.jsonl lines: {"logp": float, "n_tokens": int, "token_logps": [T-1 floats]}, same order

  The model in DIR (config.json + safetensors) is loaded with AutoModelForCausalLM in fp32 with eager
  attention, and each sequence runs on its own (batch 1, no padding, positions 0..T-1):
    token_logps[t-1] = log p(tokens[t] | tokens[<t]) for t = 1..T-1
    logp             = sum over t >= 1 with loss_mask[t] = 1 (every t >= 1 when loss_mask is absent)
    n_tokens         = the number of terms in that sum
  Prints the largest errors; exit status 1 if |token_logps| or |logp| error exceeds --tol or any
  n_tokens differs, 2 on malformed input.

Input mode (writes a test input for the above):
  python3 tools/check_score.py --make-input N --vocab V --out IN.jsonl --seed S [--max-len 40]

  N random sequences of lengths 1..max-len; most have a prompt-like mask (zeros then ones), every
  fourth has no loss_mask at all so the default is exercised too. --vocab may be replaced by --model.
"""
import argparse
import json
import math
import os
import random
import sys


def fail(msg, code=2):
    print(f"check_score: {msg}", file=sys.stderr)
    sys.exit(code)


def read_jsonl(path):
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                fail(f"{path}:{n}: not JSON: {e}")
    return rows


def vocab_from_model(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        return json.load(f)["vocab_size"]


def make_input(args):
    vocab = args.vocab or (vocab_from_model(args.model) if args.model else None)
    if not vocab:
        fail("--make-input needs --vocab (or --model to read it from config.json)")
    if not args.out:
        fail("--make-input needs --out")
    rng = random.Random(args.seed)
    with open(args.out, "w") as f:
        for i in range(args.make_input):
            T = rng.randint(1, args.max_len)
            row = {"tokens": [rng.randrange(vocab) for _ in range(T)]}
            if i % 4 != 3:
                n_prompt = rng.randint(0, T - 1)
                row["loss_mask"] = [0] * n_prompt + [1] * (T - n_prompt)
            f.write(json.dumps(row) + "\n")
    print(f"wrote {args.make_input} sequences (vocab {vocab}, lengths 1..{args.max_len}) to {args.out}")


def reference(model, tokens, mask):
    """fp32 transformers log-probs for one sequence: (token_logps [T-1], logp, n_tokens)."""
    import torch

    x = torch.tensor([tokens])
    with torch.no_grad():
        logits = model(input_ids=x, position_ids=torch.arange(len(tokens)).unsqueeze(0), use_cache=False).logits[0]
        tok = torch.log_softmax(logits[:-1], dim=-1).gather(1, x[0, 1:].unsqueeze(1)).squeeze(1)
    tok = tok.tolist()
    keep = [mask[t] != 0 for t in range(1, len(tokens))] if mask is not None else [True] * len(tok)
    # Sum in float64 so the reference adds no error of its own to the comparison.
    return tok, math.fsum(v for v, k in zip(tok, keep) if k), sum(keep)


def compare(args):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    transformers.utils.logging.disable_progress_bar()
    inputs, scored = read_jsonl(args.input), read_jsonl(args.scored)
    if len(inputs) != len(scored):
        fail(f"{args.input} has {len(inputs)} sequences but {args.scored} has {len(scored)} lines")
    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    vocab = model.config.vocab_size

    worst_tok = (0.0, None)  # (abs error, (line, t))
    worst_logp = (0.0, None)
    n_tokens_bad = []
    total = 0
    for i, (inp, out) in enumerate(zip(inputs, scored)):
        line = i + 1
        tokens, mask = inp.get("tokens"), inp.get("loss_mask")
        if not tokens or any(not (0 <= t < vocab) for t in tokens):
            fail(f"{args.input}:{line}: tokens missing, empty or outside [0, {vocab})")
        if mask is not None and len(mask) != len(tokens):
            fail(f"{args.input}:{line}: loss_mask has {len(mask)} entries for {len(tokens)} tokens")
        for key in ("logp", "n_tokens", "token_logps"):
            if key not in out:
                fail(f"{args.scored}:{line}: no {key!r}")
        if len(out["token_logps"]) != len(tokens) - 1:
            fail(f"{args.scored}:{line}: {len(out['token_logps'])} token_logps for {len(tokens)} tokens "
                 f"(expected {len(tokens) - 1})")

        ref_tok, ref_logp, ref_n = reference(model, tokens, mask)
        total += len(ref_tok)
        for t, (a, b) in enumerate(zip(out["token_logps"], ref_tok)):
            err = abs(a - b)
            if not err <= worst_tok[0]:  # also catches NaN from the engine
                worst_tok = (err, (line, t + 1))
        err = abs(out["logp"] - ref_logp)
        if not err <= worst_logp[0]:
            worst_logp = (err, line)
        if out["n_tokens"] != ref_n:
            n_tokens_bad.append((line, out["n_tokens"], ref_n))

    print(f"{len(inputs)} sequences, {total} scored positions; model {args.model}, tol {args.tol:g}")
    where = f" (line {worst_tok[1][0]}, t={worst_tok[1][1]})" if worst_tok[1] else ""
    print(f"  max |token_logps - transformers|: {worst_tok[0]:.3e}{where}")
    where = f" (line {worst_logp[1]})" if worst_logp[1] else ""
    print(f"  max |logp - transformers|:        {worst_logp[0]:.3e}{where}")
    print(f"  n_tokens mismatches:              {len(n_tokens_bad)}")
    for line, got, want in n_tokens_bad[:5]:
        print(f"    line {line}: n_tokens {got}, expected {want}")

    ok = worst_tok[0] <= args.tol and worst_logp[0] <= args.tol and not n_tokens_bad
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="HF model directory (config.json + model.safetensors)")
    ap.add_argument("--input", help="IN.jsonl given to metapo score")
    ap.add_argument("--scored", help="OUT.jsonl written by metapo score")
    ap.add_argument("--tol", type=float, default=1e-3, help="max abs error for token_logps and logp")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the reference")
    ap.add_argument("--make-input", type=int, metavar="N", help="write N random sequences instead of comparing")
    ap.add_argument("--vocab", type=int, help="vocabulary size for --make-input")
    ap.add_argument("--out", help="output JSONL for --make-input")
    ap.add_argument("--seed", type=int, default=0, help="random seed for --make-input")
    ap.add_argument("--max-len", type=int, default=40, help="longest sequence for --make-input")
    args = ap.parse_args()

    if args.make_input is not None:
        if args.make_input < 1 or args.max_len < 1:
            fail("--make-input and --max-len must be >= 1")
        make_input(args)
    elif args.model and args.input and args.scored:
        compare(args)
    else:
        ap.error("give --model, --input and --scored (or --make-input N ...)")


if __name__ == "__main__":
    main()
