#!/usr/bin/env python3
"""Write the golden fixtures that the C++ engine's tests compare against (docs/design.md §9).

For each case a tiny random Hugging Face model is built from a config (no hub access needed), saved
with save_pretrained (config.json + model.safetensors, float32), and run in float64, one sequence at
a time, to produce the "truth" the fp32 C++ engine must reproduce:

  tests/data/golden/<case>/
    config.json, model.safetensors   the model, exactly as transformers writes it
    inputs.json                      {"sequences": [[ids]...], "loss_mask": [[0/1]...]}
    expected.safetensors             F64: token_logps [n], seq_logps [n_seq], objective [1],
                                     grad.<hf name> for every parameter
    tolerances.json                  per quantity: metric, tol, and PyTorch's own fp32 error

Definitions (the C++ test must use the same):
  token_logps[t] = log p(tokens[t] | tokens[<t]) for t = 1..T-1, concatenated over sequences in
                   order (a length-1 sequence contributes nothing);
  seq_logps[s]   = sum over t >= 1 of loss_mask[t] * token_logp[t] for sequence s;
  objective      = sum over sequences of seq_logps;
  grad.<name>    = d objective / d parameter (tied models: only model.embed_tokens.weight, which
                   collects both the embedding and the LM-head gradient).

Why the float64 run is patched: transformers computes RMSNorm, the attention softmax and the RoPE
angles in float32 even when the model is float64 (upcasting meant for bf16). Left alone, the "golden"
would carry float32 rounding and PyTorch's fp32 error against it would be underestimated. The float64
model therefore gets dtype-preserving RMSNorm/RoPE forwards and a registered "eager_f64" attention
(same math as eager, softmax in the input dtype), and a central finite-difference check on one entry
of every parameter proves that forward and gradient are float64-accurate.

Tolerances: metric "rel_to_max" = max_abs_err / max(max_abs(golden), 1e-30);
tol = max(20 * err_of_torch_fp32, 1e-5), so the C++ engine may be a constant factor worse than
PyTorch's own fp32 arithmetic but not orders of magnitude.

Run by a developer, not by CI:  python3 tools/make_golden.py [--out tests/data/golden]
"""
import argparse
import json
import math
import os
import shutil
import sys
import types

import torch
import transformers
from safetensors.torch import save_file
from transformers import (
    AttentionInterface,
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.models.llama.modeling_llama import repeat_kv

# Each case exercises a different part of docs/design.md §3: GQA with head_dim != hidden/heads and
# Llama-3 rope scaling; Qwen2's q/k/v biases, MQA and a tied head; plain MHA (Mistral).
CASES = {
    "llama_gqa": dict(
        model_cls=LlamaForCausalLM,
        config=lambda: LlamaConfig(
            vocab_size=61,
            hidden_size=24,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,  # != 24 / 4 on purpose: q_dim (32) differs from hidden (24)
            intermediate_size=40,
            rms_norm_eps=1e-5,
            max_position_embeddings=64,
            # original_max_position_embeddings is tiny so that, at head_dim 8, the llama3 rule
            # actually moves frequencies (checked in check_rope_scaling below).
            rope_parameters=dict(
                rope_type="llama3",
                rope_theta=500000.0,
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=16,
            ),
            tie_word_embeddings=False,
            bos_token_id=1,
            eos_token_id=2,
        ),
        seed=1001,
        lengths=[5, 1, 13, 8, 3],
    ),
    "qwen2_tied": dict(
        model_cls=Qwen2ForCausalLM,
        config=lambda: Qwen2Config(
            vocab_size=53,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,  # MQA
            intermediate_size=48,
            rms_norm_eps=1e-6,
            max_position_embeddings=64,
            rope_parameters=dict(rope_type="default", rope_theta=10000.0),
            use_sliding_window=False,
            sliding_window=None,
            tie_word_embeddings=True,
            bos_token_id=1,
            eos_token_id=2,
        ),
        seed=1002,
        lengths=[12, 1, 7, 4],
    ),
    "mistral_mha": dict(
        model_cls=MistralForCausalLM,
        config=lambda: MistralConfig(
            vocab_size=40,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            intermediate_size=32,
            rms_norm_eps=1e-6,
            max_position_embeddings=64,
            rope_parameters=dict(rope_type="default", rope_theta=10000.0),
            sliding_window=None,
            tie_word_embeddings=False,
            bos_token_id=1,
            eos_token_id=2,
        ),
        seed=1003,
        lengths=[2, 13, 1, 6, 9],
    ),
}

TOL_FACTOR = 20.0
TOL_FLOOR = 1e-5
REASON = (
    "metric rel_to_max = max_abs_err / max(max_abs(golden), 1e-30) against the float64 golden; "
    f"tol = max({TOL_FACTOR:g} * torch_fp32_err, {TOL_FLOOR:g}) where torch_fp32_err is the same "
    "metric for PyTorch's own float32 run of the same model on the same inputs (eager attention, "
    "one thread). The golden is a true float64 run (transformers' internal float32 casts patched "
    "out, checked by finite differences). The C++ fp32 engine may sum in another order than "
    "PyTorch but should not be more than a constant factor less accurate; the floor keeps "
    "quantities that PyTorch happens to compute almost exactly from demanding bit-level agreement."
)


def init_weights(model, gen):
    """Overwrite every parameter with N(0, 0.2) (norm weights 1 + N(0, 0.2)).

    HF's default init (std 0.02, norms exactly 1, biases 0) would leave norm weights and biases
    untested: a C++ engine that ignored them would still match.
    """
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32) * 0.2
            if name.endswith("norm.weight"):
                p.copy_(1.0 + noise)
            else:
                p.copy_(noise)


def rope_inv_freq_f64(cfg):
    """Inverse RoPE frequencies in float64: theta^(-2i/d), then the llama3 rule if configured.

    Same formula as transformers' _compute_llama3_parameters, which works in float32. Returns
    (unscaled, scaled, kind of each frequency) so the caller can check the scaling does something.
    """
    rp = cfg.rope_parameters
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    base = 1.0 / rp["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    rope_type = rp.get("rope_type", "default")
    if rope_type == "default":
        return base, base.clone(), ["default"] * len(base)
    if rope_type != "llama3":
        sys.exit(f"rope_type {rope_type!r} not supported by this generator")
    factor, lo, hi = rp["factor"], rp["low_freq_factor"], rp["high_freq_factor"]
    old = rp["original_max_position_embeddings"]
    low_wl, high_wl = old / lo, old / hi  # long wavelengths are divided, short ones kept
    scaled, kinds = [], []
    for f in base.tolist():
        wl = 2 * math.pi / f
        if wl < high_wl:
            kind, g = "kept", f
        elif wl > low_wl:
            kind, g = "divided", f / factor
        else:
            smooth = (old / wl - lo) / (hi - lo)
            kind, g = "smoothed", (1 - smooth) * f / factor + smooth * f
        scaled.append(g)
        kinds.append(kind)
    return base, torch.tensor(scaled, dtype=torch.float64), kinds


def check_rope(model):
    """The scaled frequencies must (a) agree with transformers' own (float32) ones and (b) differ
    from the unscaled ones when scaling is configured, else the golden would not test the rule."""
    base, scaled, kinds = rope_inv_freq_f64(model.config)
    hf = model.model.rotary_emb.original_inv_freq.to(torch.float64)
    if not torch.allclose(hf, scaled, rtol=1e-6, atol=0):
        sys.exit(f"float64 RoPE frequencies {scaled.tolist()} disagree with transformers' {hf.tolist()}")
    if kinds[0] == "default":
        return "default rope"
    changed = ~torch.isclose(scaled, base, rtol=1e-6, atol=0)
    if not changed.any():
        sys.exit(f"rope scaling leaves all inverse frequencies unchanged: {base.tolist()}")
    return f"llama3 rope: {int(changed.sum())}/{len(base)} inverse frequencies changed ({', '.join(kinds)})"


# --- float64 patches (see the module docstring) ------------------------------------------------

def _rmsnorm_f64(self, x):
    # LlamaRMSNorm casts to float32; same formula without the cast.
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
    return self.weight * x


def _rope_f64(self, x, position_ids):
    # cos/sin of position * inv_freq in float64 (transformers forces float32 here).
    freqs = position_ids[..., None].to(torch.float64) * self.inv_freq_f64
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * self.attention_scaling).to(x.dtype), (emb.sin() * self.attention_scaling).to(x.dtype)


def _eager_f64_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    # transformers' eager_attention_forward with the softmax in the input dtype instead of float32.
    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    w = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        w = w + attention_mask
    w = torch.softmax(w, dim=-1)
    out = torch.matmul(w, value).transpose(1, 2).contiguous()
    return out, w


AttentionInterface.register("eager_f64", _eager_f64_attention)
AttentionMaskInterface.register("eager_f64", eager_mask)  # the additive causal mask of "eager"


def make_float64(model):
    """Give a float64 model float64 RMSNorm, RoPE and attention softmax; returns a description."""
    n_norm = 0
    for mod in model.modules():
        if type(mod).__name__.endswith("RMSNorm"):
            mod.forward = types.MethodType(_rmsnorm_f64, mod)
            n_norm += 1
    rot = model.model.rotary_emb
    rot.inv_freq_f64 = rope_inv_freq_f64(model.config)[1]
    rot.forward = types.MethodType(_rope_f64, rot)
    model.set_attn_implementation("eager_f64")
    return n_norm


def fd_check(model, seqs, masks, grads, h=1e-5):
    """Central finite differences on one entry of every parameter tensor (the entry of largest
    gradient). In float64 the agreement is ~1e-9; any float32 step in the forward would show up
    as an error of order 1e-7 * |objective| / h ~ 1, and a wrong backward as an O(1) mismatch."""
    worst = 0.0
    with torch.no_grad():
        for name, p in model.named_parameters():
            g = grads[name]
            i = int(g.abs().argmax())
            flat = p.view(-1)
            old = flat[i].item()
            flat[i] = old + h
            plus = objective_only(model, seqs, masks)
            flat[i] = old - h
            minus = objective_only(model, seqs, masks)
            flat[i] = old
            fd = (plus - minus) / (2 * h)
            err = abs(fd - g.view(-1)[i].item()) / max(g.abs().max().item(), 1e-30)
            worst = max(worst, err)
    if worst > 1e-6:
        sys.exit(f"finite-difference check failed: worst relative error {worst:.3e}")
    return worst


def objective_only(model, seqs, masks):
    total = 0.0
    for ids, mask in zip(seqs, masks):
        x = torch.tensor([ids])
        logits = model(input_ids=x, position_ids=torch.arange(len(ids)).unsqueeze(0), use_cache=False).logits[0]
        tok = torch.log_softmax(logits[:-1], dim=-1).gather(1, x[0, 1:].unsqueeze(1)).squeeze(1)
        total += (tok * torch.tensor(mask[1:], dtype=tok.dtype)).sum().item()
    return total


def make_inputs(cfg, lengths, gen):
    """Random token ids; masks look like prompt (0) + response (1), with one all-ones sequence."""
    seqs, masks = [], []
    for i, T in enumerate(lengths):
        ids = torch.randint(0, cfg.vocab_size, (T,), generator=gen).tolist()
        if i == 0 or T == 1:
            n_prompt = 0  # the all-ones sequence (and length 1, whose mask is irrelevant)
        else:
            n_prompt = int(torch.randint(1, max(2, T // 2 + 1), (1,), generator=gen))
        seqs.append(ids)
        masks.append([0] * n_prompt + [1] * (T - n_prompt))
    return seqs, masks


def run(model, seqs, masks):
    """Per-sequence forward/backward (batch 1, no padding, positions 0..T-1).

    Returns token_logps [n], seq_logps [n_seq], objective [1] and grads {name: tensor}, all in the
    model's dtype. Gradients are accumulated over sequences, i.e. the gradient of the total objective.
    """
    model.zero_grad(set_to_none=True)
    dtype = next(model.parameters()).dtype
    token_logps, seq_logps = [], []
    for ids, mask in zip(seqs, masks):
        T = len(ids)
        x = torch.tensor([ids])
        pos = torch.arange(T).unsqueeze(0)
        logits = model(input_ids=x, position_ids=pos, use_cache=False).logits[0]  # [T, V]
        logp = torch.log_softmax(logits[:-1], dim=-1)  # [T-1, V], predicts tokens 1..T-1
        tok = logp.gather(1, x[0, 1:].unsqueeze(1)).squeeze(1)  # [T-1]
        m = torch.tensor(mask[1:], dtype=dtype)
        s = (tok * m).sum()
        s.backward()  # per-sequence backward: gradients add up to those of the total
        token_logps.append(tok.detach())
        seq_logps.append(s.detach())
    token_logps = torch.cat(token_logps)
    seq_logps = torch.stack(seq_logps)
    objective = seq_logps.sum().reshape(1)
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return token_logps, seq_logps, objective, grads


def rel_to_max(approx, golden):
    err = (approx.to(torch.float64) - golden).abs().max().item()
    return err / max(golden.abs().max().item(), 1e-30)


def make_case(name, spec, out_root):
    out = os.path.join(out_root, name)
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)

    torch.manual_seed(spec["seed"])
    gen = torch.Generator().manual_seed(spec["seed"])
    cfg = spec["config"]()
    model = spec["model_cls"](cfg).to(torch.float32)
    init_weights(model, gen)
    model.save_pretrained(out, safe_serialization=True)

    # Reload from disk so both runs use exactly the bits the C++ engine will read.
    def load(dtype):
        m = AutoModelForCausalLM.from_pretrained(out, dtype=dtype, attn_implementation="eager")
        m.eval()  # no dropout (attention_dropout is 0 anyway)
        return m

    m64 = load(torch.float64)
    m32 = load(torch.float32)
    rope_note = check_rope(m64)
    n_norm = make_float64(m64)

    seqs, masks = make_inputs(cfg, spec["lengths"], gen)
    with open(os.path.join(out, "inputs.json"), "w") as f:
        json.dump({"sequences": seqs, "loss_mask": masks}, f)
        f.write("\n")

    g_tok, g_seq, g_obj, g_grads = run(m64, seqs, masks)
    f_tok, f_seq, f_obj, f_grads = run(m32, seqs, masks)
    fd_err = fd_check(m64, seqs, masks, g_grads)
    # How much the float32 steps inside unpatched transformers would have moved the golden.
    u_tok = run(load(torch.float64), seqs, masks)[0]
    unpatched = rel_to_max(u_tok, g_tok)

    expected = {"token_logps": g_tok, "seq_logps": g_seq, "objective": g_obj}
    fp32 = {"token_logps": f_tok, "seq_logps": f_seq, "objective": f_obj}
    for n, g in g_grads.items():
        expected[f"grad.{n}"] = g
        fp32[f"grad.{n}"] = f_grads[n]
    expected = {k: v.to(torch.float64).contiguous() for k, v in expected.items()}
    # One metadata key: safetensors writes several keys in hash order, and the files should be
    # byte-identical when regenerated with the same versions.
    meta = {"generator": json.dumps({
        "case": name,
        "script": "tools/make_golden.py",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "definitions": "tests/data/golden/README.md",
    })}
    save_file(expected, os.path.join(out, "expected.safetensors"), metadata=meta)

    tolerances = {"reason": REASON}
    for k, g in expected.items():
        err = rel_to_max(fp32[k], g)
        tolerances[k] = {
            "metric": "rel_to_max",
            "tol": max(TOL_FACTOR * err, TOL_FLOOR),
            "torch_fp32_err": err,
        }
    with open(os.path.join(out, "tolerances.json"), "w") as f:
        json.dump(tolerances, f, indent=1)
        f.write("\n")

    n_params = sum(p.numel() for p in m64.parameters())
    print(f"\n== {name}: {type(m64).__name__}, {n_params} parameters, lengths {spec['lengths']}")
    print(f"   {rope_note}; objective {g_obj.item():.6f}")
    print(f"   float64: {n_norm} RMSNorms patched; finite-difference check {fd_err:.1e}; "
          f"unpatched-float64 token_logps would differ by {unpatched:.1e} (rel_to_max)")
    print(f"   {'quantity':<52} {'max|golden|':>12} {'torch fp32 err':>15} {'tol':>10}")
    for k, g in expected.items():
        t = tolerances[k]
        print(f"   {k:<52} {g.abs().max().item():12.4g} {t['torch_fp32_err']:15.3e} {t['tol']:10.2e}")
    return max(t["torch_fp32_err"] for k, t in tolerances.items() if k != "reason")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "data", "golden"),
                    help="output root (default: tests/data/golden)")
    ap.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES),
                    help="cases to (re)generate (default: all)")
    args = ap.parse_args()

    # One thread: the recorded torch_fp32_err (hence the tolerances) must not depend on the
    # developer's machine splitting reductions differently.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.utils.logging.disable_progress_bar()  # keep the summary table readable
    out_root = os.path.normpath(args.out)
    os.makedirs(out_root, exist_ok=True)
    worst = {name: make_case(name, CASES[name], out_root) for name in args.cases}
    print("\nworst torch fp32 rel_to_max error per case:")
    for name, err in worst.items():
        print(f"   {name:<14} {err:.3e}")


if __name__ == "__main__":
    main()
