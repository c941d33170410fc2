#!/usr/bin/env python3
"""PyTorch baseline for `metapo bench --preset bench-28m --seq-len 256 --batch 8` (CPU, the default)
and for a same-run GPU comparison (--device cuda).

Builds a randomly initialised LlamaForCausalLM from a preset INI file ([model] section, keys named
as in config.json), and times one of two steps:

  --step fwdbwd (default): the step the C++ engine's `metapo bench` times: zero the gradients,
    forward to logits, log_softmax, gather the next-token log-prob at every position, sum them all
    (B * (T-1) positions, no padding) into one objective, backward. No optimizer step.
  --step dpo: one DPO training step as TRL computes it with precomputed reference log-probs. The
    batch is B/2 chosen followed by B/2 rejected sequences (B even), run as one concatenated
    forward (TRL's concatenated_forward); each sequence's log-prob is the sum of its T-1 next-token
    log-probs (log_softmax + gather, as TRL); loss = -logsigmoid(beta * ((pc - rc) - (pr - rr)))
    averaged over the B/2 pairs, with random reference log-probs (rc, rr) drawn once; backward;
    AdamW step (fused=True on cuda); zero_grad.

--dtype fp32 (default) runs everything in fp32. --dtype bf16 keeps fp32 parameters (the master
weights) and runs forward and loss under torch.autocast(dtype=torch.bfloat16): mixed precision as
an ML engineer would set up a fair baseline, and what metapo does (bf16 compute, fp32 master
weights). Loading the model with torch_dtype=torch.bfloat16 instead would be faster and smaller
but is pure-bf16 training (bf16 weights and AdamW states), which is not the same job. The backward
runs outside autocast, as the autocast docs recommend; autocast already ran log_softmax in fp32.
Attention is "sdpa" by default (flash attention on cuda under bf16).

The last line of output is JSON, for scripts:
  {"tokens_per_s", "ms_per_step", "gflops_per_s", "torch", "threads", ...}
and, when not on the default path (cpu, fp32, fwdbwd), also "device", "dtype", "step"; on cuda
also "tflops_per_s", "mfu", "peak_tflops", "gpu", "max_memory_allocated" (bytes).

FLOPs are counted with model_flops_per_step() below; `metapo bench` uses the same formula, so the
two GFLOP/s figures are directly comparable (they count useful FLOPs, not what a kernel happens
to execute, e.g. SDPA on CPU may also compute the masked upper triangle). For --step dpo the same
forward+backward count is used: the AdamW update and the loss are O(parameters) and O(B) work,
negligible next to 6 FLOPs per parameter per token, but their time is inside ms/step, as in any
MFU figure. On cuda, MFU = model TFLOP/s / the card's dense bf16 peak (H100 SXM and H200 989,
H100 PCIe 756, H100 NVL 835, A100 312 TFLOP/s, detected from torch.cuda.get_device_name();
--peak-tflops overrides or supplies it). It is quoted against the bf16 peak for --dtype fp32 too,
so fp32 runs show how far they are from what the card could do in bf16.
Each step on cuda is timed between torch.cuda.synchronize() calls.

Memory: the gpu-1.3b example below keeps about 43 GiB of activations (B*T = 16384 tokens, 24
layers, about 110 KiB per token per layer under bf16 autocast, measured on CPU) next to about 20 GiB
of fp32 parameters, gradients and AdamW states, so it should fit an 80 GB card without activation
checkpointing; if it does not, --grad-ckpt recomputes each layer in the backward (FLOP/s and MFU
still count model FLOPs only, so they drop by the recompute's cost, as usual).

Examples:
  python3 tools/bench_torch.py --preset configs/presets/bench-28m.ini --seq-len 256 --batch 8
  python3 tools/bench_torch.py --device cuda --dtype bf16 --step dpo --preset configs/presets/gpu-1.3b.ini --seq-len 2048 --batch 8
"""
import argparse
import configparser
import contextlib
import json
import math
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


def step(model, ids, amp=contextlib.nullcontext()):
    """One timed step; returns the objective (sum of next-token log-probs)."""
    model.zero_grad(set_to_none=False)  # the C++ engine zeroes its flat gradient buffer too
    with amp:
        logits = model(input_ids=ids, use_cache=False).logits  # [B, T, V]
        logp = torch.log_softmax(logits[:, :-1], dim=-1)  # [B, T-1, V]
        objective = logp.gather(2, ids[:, 1:].unsqueeze(-1)).sum()  # over all B*(T-1) positions
    objective.backward()
    return objective.item()


def sequence_logps(logits, ids):
    """Per-sequence sum of next-token log-probs, [B]; TRL's log_softmax + gather. No loss mask:
    sequences are packed, every position counts. Under autocast log_softmax runs in fp32, so the
    full [B, T-1, V] fp32 tensor exists once (about 2 GiB at B=8, T=2048, V=32000); small enough
    on an 80 GB card that chunking it would only cost time."""
    logp = logits[:, :-1].log_softmax(-1)
    return torch.gather(logp, 2, ids[:, 1:].unsqueeze(-1)).squeeze(-1).sum(-1)


def dpo_step(model, ids, ref_chosen, ref_rejected, opt, beta, amp=contextlib.nullcontext()):
    """One DPO training step (forward, loss, backward, optimizer step, zero_grad); returns the loss.
    ids[:B/2] are the chosen sequences, ids[B/2:] the rejected ones."""
    half = ids.shape[0] // 2
    with amp:
        logits = model(input_ids=ids, use_cache=False).logits  # [B, T, V]
        logps = sequence_logps(logits, ids).float()  # [B]
        margin = (logps[:half] - ref_chosen) - (logps[half:] - ref_rejected)
        loss = -torch.nn.functional.logsigmoid(beta * margin).mean()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)  # what HF Trainer / TRL do
    return loss.item()


# Dense bf16 tensor-core peaks (no sparsity), FLOP/s, from NVIDIA's datasheets.
def gpu_peak_flops(name):
    if "H100" in name:
        if "PCIe" in name:
            return 756e12
        if "NVL" in name:
            return 835e12
        return 989e12  # SXM
    if "H200" in name:
        return 989e12
    if "A100" in name:
        return 312e12
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="configs/presets/bench-28m.ini", help="preset INI file")
    ap.add_argument("--seq-len", type=int, default=256, help="tokens per sequence T")
    ap.add_argument("--batch", type=int, default=8, help="sequences per step B (for dpo: B/2 pairs)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa", help="attention implementation")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                    help="bf16: fp32 parameters, forward under torch.autocast(bfloat16)")
    ap.add_argument("--step", choices=["fwdbwd", "dpo"], default="fwdbwd", help="what one timed step does")
    ap.add_argument("--grad-ckpt", action="store_true",
                    help="activation (gradient) checkpointing per decoder layer, to save memory")
    ap.add_argument("--beta", type=float, default=0.1, help="DPO beta (--step dpo)")
    ap.add_argument("--lr", type=float, default=1e-6, help="AdamW learning rate (--step dpo)")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="peak dense bf16 TFLOP/s for MFU on cuda (default: detected from the GPU name)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--steps", type=int, default=5, help="timed steps")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.seq_len < 2 or args.batch < 1 or args.steps < 1 or args.threads < 1:
        sys.exit("need --seq-len >= 2, --batch >= 1, --steps >= 1, --threads >= 1")
    if args.step == "dpo" and args.batch % 2:
        sys.exit(f"--step dpo: --batch {args.batch} must be even (B/2 chosen + B/2 rejected)")
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        sys.exit("--peak-tflops must be > 0")
    # Check before building anything, so a CPU-only machine gets one line, not a traceback.
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit(f"--device cuda: no CUDA device available to torch {torch.__version__} "
                 f"(torch.cuda.is_available() is False)")
    cuda = args.device == "cuda"
    default_run = (args.device, args.dtype, args.step, args.grad_ckpt) == ("cpu", "fp32", "fwdbwd", False)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = build_config(read_preset(args.preset), args.preset)
    cfg._attn_implementation = args.attn
    # Initialise directly on the device: a 1.3B model's random init on the host takes far longer
    # than the benchmark itself.
    with torch.device(args.device):
        model = LlamaForCausalLM(cfg).to(torch.float32).train()
    if args.grad_ckpt:
        # Non-reentrant: the variant PyTorch recommends, and the one TRL/HF Trainer users set.
        # Recent transformers renamed the method (the old name warns); older ones have only the old.
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq_len)).to(args.device)
    amp = (torch.autocast(args.device, dtype=torch.bfloat16) if args.dtype == "bf16"
           else contextlib.nullcontext())

    if args.step == "dpo":
        # Fixed reference log-probs near what an untrained model gives a random sequence
        # ((T-1) * -ln V), so the margins and the loss are in a realistic, unsaturated range.
        half = args.batch // 2
        ref = torch.randn(2, half) * 2.0 - (args.seq_len - 1) * math.log(cfg.vocab_size)
        ref_chosen, ref_rejected = ref.to(args.device).unbind(0)
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, fused=True if cuda else None)
        run_step = lambda: dpo_step(model, ids, ref_chosen, ref_rejected, opt, args.beta, amp)
    else:
        run_step = lambda: step(model, ids, amp)

    gpu_name = torch.cuda.get_device_name() if cuda else None
    peak = args.peak_tflops * 1e12 if args.peak_tflops is not None else (gpu_peak_flops(gpu_name) if cuda else None)

    n_params = sum(p.numel() for p in model.parameters())
    flops = model_flops_per_step(cfg, args.batch, args.seq_len)
    tokens = args.batch * args.seq_len
    where = f"threads={args.threads}" if not cuda else f"gpu={gpu_name}"
    extra = "" if default_run else f", device={args.device}, dtype={args.dtype}, step={args.step}"
    extra += ", grad-ckpt" if args.grad_ckpt else ""
    print(f"preset {args.preset}: {n_params / 1e6:.2f}M parameters ({matmul_params(cfg) / 1e6:.2f}M in matmuls), "
          f"B={args.batch} T={args.seq_len}, attn={args.attn}, {where}{extra}, "
          f"torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"model FLOPs per step: {flops:.4e} ({flops / 1e9:.1f} GFLOP)")
    if cuda:
        print(f"MFU peak: {peak / 1e12:.0f} TFLOP/s dense bf16" if peak else
              f"MFU peak: unknown for {gpu_name!r}; pass --peak-tflops to get MFU")
    value = "objective" if args.step == "fwdbwd" else "loss"
    if cuda:
        print(f"{'step':>5} {'phase':>7} {'ms':>10} {'tokens/s':>10} {'TFLOP/s':>9} {'MFU':>6} {value:>14}")
    else:
        print(f"{'step':>5} {'phase':>7} {'ms':>10} {'tokens/s':>10} {'GFLOP/s':>9} {value:>14}")

    # The 1-minute load average before and after: a busy machine (e.g. a parallel build) inflates
    # step times, and the JSON should say so rather than pass a slow number off as the baseline.
    load_start = os.getloadavg()[0]
    times = []
    for i in range(args.warmup + args.steps):
        if cuda:
            torch.cuda.synchronize()  # nothing queued from before may land in this step's time
        t0 = time.perf_counter()
        obj = run_step()
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        phase = "warmup" if i < args.warmup else "timed"
        if i >= args.warmup:
            times.append(dt)
        if cuda:
            mfu = f"{flops / dt / peak * 100:5.1f}%" if peak else f"{'-':>6}"
            print(f"{i:5d} {phase:>7} {dt * 1e3:10.1f} {tokens / dt:10.1f} {flops / dt / 1e12:9.2f} {mfu} "
                  f"{obj:14.4f}", flush=True)
        else:
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
    if not default_run:  # the default line stays exactly as before, for scripts that compare it
        result.update({"device": args.device, "dtype": args.dtype, "step": args.step, "grad_ckpt": args.grad_ckpt})
        if args.step == "dpo":
            result["beta"] = args.beta
    if cuda:
        result.update({
            "tflops_per_s": flops / mean / 1e12,
            "mfu": flops / mean / peak if peak else None,
            "peak_tflops": peak / 1e12 if peak else None,
            "gpu": gpu_name,
            "max_memory_allocated": torch.cuda.max_memory_allocated(),
            "transformers": transformers.__version__,
        })
        print(f"mean {mean * 1e3:.1f} ms/step, {tokens / mean:.0f} tokens/s, {flops / mean / 1e12:.1f} TFLOP/s, "
              f"MFU {'%.1f%%' % (flops / mean / peak * 100) if peak else 'n/a'}, "
              f"max memory allocated {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
