#!/usr/bin/env python3
"""PyTorch CPU baseline for `metapo bench --preset bench-28m --seq-len 256 --batch 8`.

Builds a randomly initialised fp32 LlamaForCausalLM from a preset INI file ([model] section, keys
named as in config.json), and times the step the C++ engine times: zero the gradients, forward to
logits, log_softmax, gather the next-token log-prob at every position, sum them all
(B * (T-1) positions, no padding) into one objective, backward. No optimizer step.

The last line of output is JSON, for scripts:
  {"tokens_per_s", "ms_per_step", "gflops_per_s", "torch", "threads", ...}

FLOPs are counted with model_flops_per_step() below; `metapo bench` uses the same formula, so the
two GFLOP/s figures are directly comparable (they count useful FLOPs, not what a kernel happens
to execute, e.g. SDPA on CPU may also compute the masked upper triangle).

Example:  python3 tools/bench_torch.py --preset configs/presets/bench-28m.ini --seq-len 256 --batch 8
"""
import argparse
import configparser
import json
import os
import statistics
import sys
import time

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM


def parse_value(text):
    """INI values are strings; convert the way config.json would have typed them."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("null", "none"):
        return None
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text.strip()


def read_preset(path):
    ini = configparser.ConfigParser()
    if not ini.read(path):
        sys.exit(f"{path}: cannot read preset")
    if "model" not in ini:
        sys.exit(f"{path}: no [model] section")
    return {k: parse_value(v) for k, v in ini["model"].items()}


def build_config(keys, path):
    keys = dict(keys)
    model_type = keys.pop("model_type", "llama")
    if model_type != "llama":
        sys.exit(f"{path}: model_type {model_type!r}: this baseline builds llama only")
    # transformers 5 keeps rope_theta (and any scaling) inside rope_parameters.
    rope = {"rope_type": "default", "rope_theta": keys.pop("rope_theta", 10000.0)}
    return LlamaConfig(rope_parameters=rope, **keys)


def matmul_params(cfg):
    """Weights that take part in a matmul per token: q/k/v/o/gate/up/down of every layer plus the
    LM head. The embedding is a lookup (no FLOPs); norm weights and biases are negligible."""
    hd = cfg.head_dim
    q_dim, kv_dim = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    h, ff = cfg.hidden_size, cfg.intermediate_size
    per_layer = h * q_dim + 2 * h * kv_dim + q_dim * h + 3 * h * ff
    return cfg.num_hidden_layers * per_layer + cfg.vocab_size * h


def model_flops_per_step(cfg, batch, seq_len):
    """Useful FLOPs of one forward+backward over `batch` sequences of `seq_len` tokens.

    Dense part: 6 FLOPs per matmul parameter per token (2 forward multiply-add, 4 backward: input
    gradient and weight gradient).
    Attention (causal): token t attends to t+1 keys; per layer and head QK^T and PV each cost
    2 * head_dim * (t+1) FLOPs, so a sequence's forward costs
        2 (multiply-add) * 2 (QK^T and PV) * head_dim * n_heads * sum_t (t+1) * n_layers
    with sum_t (t+1) = T (T+1) / 2, and forward+backward is 3x that.
    """
    dense = 6 * matmul_params(cfg) * batch * seq_len
    causal_pairs = seq_len * (seq_len + 1) // 2
    attn_fwd = 2 * 2 * cfg.head_dim * cfg.num_attention_heads * causal_pairs * cfg.num_hidden_layers
    return dense + 3 * attn_fwd * batch


def step(model, ids):
    """One timed step; returns the objective (sum of next-token log-probs)."""
    model.zero_grad(set_to_none=False)  # the C++ engine zeroes its flat gradient buffer too
    logits = model(input_ids=ids, use_cache=False).logits  # [B, T, V]
    logp = torch.log_softmax(logits[:, :-1], dim=-1)  # [B, T-1, V]
    objective = logp.gather(2, ids[:, 1:].unsqueeze(-1)).sum()  # over all B*(T-1) positions
    objective.backward()
    return objective.item()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="configs/presets/bench-28m.ini", help="preset INI file")
    ap.add_argument("--seq-len", type=int, default=256, help="tokens per sequence T")
    ap.add_argument("--batch", type=int, default=8, help="sequences per step B")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa", help="attention implementation")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--steps", type=int, default=5, help="timed steps")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.seq_len < 2 or args.batch < 1 or args.steps < 1 or args.threads < 1:
        sys.exit("need --seq-len >= 2, --batch >= 1, --steps >= 1, --threads >= 1")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = build_config(read_preset(args.preset), args.preset)
    cfg._attn_implementation = args.attn
    model = LlamaForCausalLM(cfg).to(torch.float32).train()
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq_len))

    n_params = sum(p.numel() for p in model.parameters())
    flops = model_flops_per_step(cfg, args.batch, args.seq_len)
    tokens = args.batch * args.seq_len
    print(f"preset {args.preset}: {n_params / 1e6:.2f}M parameters ({matmul_params(cfg) / 1e6:.2f}M in matmuls), "
          f"B={args.batch} T={args.seq_len}, attn={args.attn}, threads={args.threads}, "
          f"torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"model FLOPs per step: {flops:.4e} ({flops / 1e9:.1f} GFLOP)")
    print(f"{'step':>5} {'phase':>7} {'ms':>10} {'tokens/s':>10} {'GFLOP/s':>9} {'objective':>14}")

    # The 1-minute load average before and after: a busy machine (e.g. a parallel build) inflates
    # step times, and the JSON should say so rather than pass a slow number off as the baseline.
    load_start = os.getloadavg()[0]
    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        obj = step(model, ids)
        dt = time.perf_counter() - t0
        phase = "warmup" if i < args.warmup else "timed"
        if i >= args.warmup:
            times.append(dt)
        print(f"{i:5d} {phase:>7} {dt * 1e3:10.1f} {tokens / dt:10.1f} {flops / dt / 1e9:9.2f} {obj:14.2f}",
              flush=True)

    mean = statistics.mean(times)
    result = {
        "tokens_per_s": tokens / mean,
        "ms_per_step": mean * 1e3,
        "gflops_per_s": flops / mean / 1e9,
        "torch": torch.__version__,
        "threads": args.threads,
        "attn": args.attn,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "flops_per_step": flops,
        "ms_per_step_min": min(times) * 1e3,
        "ms_per_step_median": statistics.median(times) * 1e3,
        "loadavg_1m": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
