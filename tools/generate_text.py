#!/usr/bin/env python3
"""Text in, text out around `metapo generate`, for Hugging Face models that come with a tokenizer.

metapo itself only sees token ids. This wrapper tokenizes the prompts with the model directory's own
tokenizer (transformers.AutoTokenizer; --chat applies its chat template with a generation prompt),
writes them as a --prompts JSONL, runs `metapo generate` (under mpirun with --np > 1), and decodes the
completions. Needs transformers; it is a developer convenience, not used by CI.

  tools/generate_text.py --model runs/x/final --chat --prompt "Sort 3141" --max-new-tokens 64
  tools/generate_text.py --model DIR --prompts-file prompts.txt --temperature 0.7 --top-p 0.9 \\
      --seed 1 --np 4 --output out.jsonl

--prompts-file: one prompt per line, or JSONL lines with a "prompt" string. Output JSONL lines:
{"id", "prompt", "completion" (text), "completion_tokens"}.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model directory with config.json, weights and tokenizer files")
    ap.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    ap.add_argument("--prompts-file", help="one prompt per line, or JSONL with a \"prompt\" field")
    ap.add_argument("--chat", action="store_true", help="wrap each prompt as a user turn with the chat template")
    ap.add_argument("--system", help="with --chat: a system message before each prompt")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--greedy", action="store_true", help="argmax decoding (the default)")
    ap.add_argument("--temperature", type=float)
    ap.add_argument("--top-p", type=float)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eos-id", type=int, help="stop token (default: the tokenizer's eos_token_id)")
    ap.add_argument("--np", type=int, default=1, help="MPI ranks (mpirun -np)")
    ap.add_argument("--metapo", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "build", "metapo"))
    ap.add_argument("--output", help="JSONL of prompts and decoded completions (default: print only)")
    args = ap.parse_args()

    from transformers import AutoTokenizer  # imported late: --help works without transformers

    texts = list(args.prompt)
    if args.prompts_file:
        with open(args.prompts_file) as f:
            for line in f:
                line = line.rstrip("\n")
                if not line.strip():
                    continue
                texts.append(json.loads(line)["prompt"] if line.lstrip().startswith("{") else line)
    if not texts:
        ap.error("no prompts: give --prompt or --prompts-file")

    try:
        tok = AutoTokenizer.from_pretrained(args.model)
    except (OSError, ValueError) as e:  # no tokenizer files there, or none transformers can read
        sys.exit(f"generate_text: error: --model {args.model}: no tokenizer could be loaded "
                 f"({str(e).splitlines()[0] if str(e) else type(e).__name__})")
    ids = []
    for t in texts:
        if args.chat:
            msgs = ([{"role": "system", "content": args.system}] if args.system else []) + [{"role": "user", "content": t}]
            enc = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
            # transformers 5 returns a BatchEncoding here, 4.x a plain list of ids.
            ids.append(list(enc["input_ids"] if hasattr(enc, "keys") else enc))
        else:
            ids.append(tok(t)["input_ids"])
    eos = args.eos_id if args.eos_id is not None else tok.eos_token_id

    with tempfile.TemporaryDirectory() as work:
        pin, pout = os.path.join(work, "prompts.jsonl"), os.path.join(work, "out.jsonl")
        with open(pin, "w") as f:
            for i, p in enumerate(ids):
                f.write(json.dumps({"id": i, "tokens": p}) + "\n")
        cmd = ([] if args.np <= 1 else ["mpirun", "-np", str(args.np)]) + [
            args.metapo, "generate", "--model", args.model, "--prompts", pin, "--output", pout,
            "--max-new-tokens", str(args.max_new_tokens), "--seed", str(args.seed)]
        if args.temperature is not None:
            cmd += ["--temperature", str(args.temperature)]
        if args.top_p is not None:
            cmd += ["--top-p", str(args.top_p)]
        if args.greedy:
            cmd += ["--greedy"]
        if eos is not None:
            cmd += ["--eos-id", str(eos)]
        run = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if run.returncode != 0:
            sys.exit(run.returncode)  # metapo printed its one error line on stderr
        stats = run.stdout.strip().splitlines()[-1]
        with open(pout) as f:
            rows = [json.loads(line) for line in f]

    out = []
    for r in rows:
        i = r["id"]
        completion = tok.decode(r["completion"], skip_special_tokens=True)
        out.append({"id": i, "prompt": texts[i], "completion": completion, "completion_tokens": r["completion"]})
        print(f"### {i}: {texts[i]}\n{completion}\n")
    print(stats)
    if args.output:
        with open(args.output, "w") as f:
            for o in out:
                f.write(json.dumps(o, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
