#!/usr/bin/env python3
"""Write tests/data/golden_dpo/: one DPO step computed by TRL's own DPOTrainer code on a tiny HF model.

The model is tests/data/golden/llama_gqa (made by tools/make_golden.py; read by path, not copied).
For a few preference pairs of random token ids, TRL's DPOTrainer._compute_loss (trl 1.16.0) is
called unbound with a stub `self` (the approach of tools/make_loss_golden.py) on a batch built by
TRL's own DataCollatorForPreference, with precomputed reference log-probs; `loss.backward()` then
gives the gradient of TRL's batch loss (`per_sequence_loss.mean()`) w.r.t. every parameter:

  tests/data/golden_dpo/
    pairs.json            prompt/chosen/rejected token ids, ref_logps_chosen/rejected (doubles), the
                          loss configurations, the model directory (relative to tests/data)
    expected.safetensors  F64, per loss type L (sigmoid, ipo, robust):
                            L.loss [1]                      TRL's loss (mean over the B pairs)
                            L.rewards_chosen/_rejected [B]  TRL's chosen_rewards/rejected_rewards
                            L.policy_logps_chosen/_rejected [B]  TRL's chosen_logps/rejected_logps
                            L.grad.<hf name>                d L.loss / d parameter (sigmoid and ipo
                                                            only: see GRAD_LOSSES)
    tolerances.json       per quantity: metric rel_to_max, tol, PyTorch's own fp32 error
    README.md             (hand-written) how the fixture was made

How TRL computes the policy log-probs (trl/trainer/dpo_trainer.py, _compute_loss): the collator
concatenates the pairs as [prompt+chosen for every pair; prompt+rejected for every pair], right-pads
them (attention_mask 0 on padding) and marks the response tokens in completion_mask; labels are
input_ids with -100 outside the completion; the model's fused LM head (trl.trainer.utils.
add_fused_lm_head) returns log p(token t+1 | tokens <= t) for every non -100 label, zero elsewhere, and
TRL sums them per row. The rows split into chosen and rejected halves.

Float64: the golden run uses the float64 model with make_golden.py's dtype-preserving RMSNorm, RoPE
and attention softmax, and replaces TRL's fused LM head (whose kernel accumulates in float32 whatever
the input dtype) by `F64Head`: the same quantities from the full float64 logits (log_softmax, gather,
zero where the label is -100). The script checks that TRL's real fused head on the same float64
model agrees with F64Head to float32 accuracy (so the semantics match), and checks the float64
gradients by central finite differences on one entry of every parameter. The fp32 run that sets the
tolerances is TRL as it runs: the float32 model (eager attention) with TRL's own fused head.

Run by a developer, not by CI:  python3 tools/make_dpo_golden.py [--out tests/data/golden_dpo]
"""
import argparse
import json
import os
import sys
from collections import defaultdict
from types import SimpleNamespace

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_golden import TOL_FACTOR, TOL_FLOOR, make_float64, rel_to_max  # noqa: E402
from make_loss_golden import _dpo_stub  # noqa: E402

import transformers  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

MODEL = "golden/llama_gqa"  # relative to tests/data
SEED = 3001      # token ids
REF_SEED = 3002  # the reference model's perturbation
REF_SIGMA = 0.03  # std of the perturbation added to every parameter of the reference model
# (prompt, chosen, rejected) lengths: prompts 2-5, responses 1-6, chosen != rejected in every pair.
LENGTHS = [(3, 4, 2), (2, 1, 5), (5, 6, 3), (4, 2, 6), (2, 3, 1)]
PAD = 0
LOSSES = [
    dict(name="sigmoid", beta=0.1, label_smoothing=0.0),
    dict(name="ipo", beta=0.1, label_smoothing=0.0),
    dict(name="robust", beta=0.1, label_smoothing=0.1),
]
# Whole-model gradients are ~150 KB of F64 per loss type for this model; two keep the fixture near
# 300 KB. ipo is the one whose coefficients depend on the response lengths; robust's per-pair
# gradient coefficients are covered by tests/data/loss_golden.json.
GRAD_LOSSES = ("sigmoid", "ipo")
METRIC_GATHERS = ["rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                  "logps/chosen", "logps/rejected"]
REASON = (
    "metric rel_to_max = max_abs_err / max(max_abs(golden), 1e-30) against the float64 golden; "
    f"tol = max({TOL_FACTOR:g} * torch_fp32_err, {TOL_FLOOR:g}) where torch_fp32_err is the same "
    "metric for TRL's own float32 run (DPOTrainer._compute_loss with its fused LM head on the float32 "
    "model, eager attention, one thread, reference log-probs rounded to float32 as TRL's collator does). "
    "The golden is a true float64 run (transformers' float32 casts patched out as in "
    "tools/make_golden.py, TRL's float32-accumulating fused head replaced by a float64 one, checked "
    "against TRL's head and by finite differences)."
)


class RecordingAccel:
    """The attributes of accelerate.Accelerator that _compute_loss uses, on one process. gather()
    is how TRL hands the per-pair rewards and log-probs to its metrics, so it is recorded: the
    per-pair values then come from TRL's code, not from a re-implementation."""
    device = torch.device("cpu")

    def __init__(self):
        self.gathered = []

    def gather(self, x):
        self.gathered.append(x.detach().clone())
        return x

    @staticmethod
    def gather_for_metrics(x):
        return x


class F64Head:
    """`model(**kw, labels=labels, fused_lm_head=True)` with the outputs of TRL's fused head
    (log_probs, entropy, mean_logits, is_top1: [rows, T-1], zero where the label is -100), from the
    full logits in the model's dtype."""

    def __init__(self, model):
        self.model = model

    def __call__(self, *, labels, fused_lm_head, **kw):
        assert fused_lm_head
        logits = self.model(**kw).logits[:, :-1]
        lab = labels[:, 1:]
        mask = lab != -100
        logp = torch.log_softmax(logits, dim=-1)
        tok = logp.gather(-1, lab.clamp(min=0).unsqueeze(-1)).squeeze(-1).masked_fill(~mask, 0)
        ent = -(logp.exp() * logp).sum(-1).masked_fill(~mask, 0)
        mean_logits = logits.detach().mean(-1).masked_fill(~mask, 0)
        is_top1 = (logits.argmax(-1) == lab) & mask
        return SimpleNamespace(log_probs=tok, entropy=ent, mean_logits=mean_logits, is_top1=is_top1)


def make_pairs(vocab):
    gen = torch.Generator().manual_seed(SEED)
    rnd = lambda n: torch.randint(0, vocab, (n,), generator=gen).tolist()  # noqa: E731
    return [dict(prompt_ids=rnd(p), chosen_ids=rnd(c), rejected_ids=rnd(r)) for p, c, r in LENGTHS]


def collate(pairs, ref_c, ref_r, dtype):
    """TRL's DataCollatorForPreference; it builds the reference tensors with torch.tensor(list of
    floats), i.e. in the default dtype, so that is set to the run's dtype while it runs."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    examples = [dict(p, ref_chosen_logps=c, ref_rejected_logps=r) for p, c, r in zip(pairs, ref_c, ref_r)]
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        batch = DataCollatorForPreference(pad_token_id=PAD)(examples)
    finally:
        torch.set_default_dtype(old)
    assert batch["ref_chosen_logps"].dtype == dtype
    return batch


def trl_loss(model, batch, loss):
    """TRL's DPOTrainer._compute_loss, unbound, with make_loss_golden.py's stub `self`. Returns the
    loss tensor (with graph) and the per-pair values TRL gathered for its metrics."""
    from trl import DPOTrainer

    stub = _dpo_stub(dict(loss=loss["name"], beta=loss["beta"], label_smoothing=loss["label_smoothing"],
                          discopop_tau=0.05))
    stub.accelerator = RecordingAccel()
    out = DPOTrainer._compute_loss(stub, model, dict(batch), False)
    g = stub.accelerator.gathered
    assert len(g) == len(METRIC_GATHERS), f"TRL gathered {len(g)} tensors, expected {len(METRIC_GATHERS)}"
    m = stub._metrics["train"]
    for name, x in zip(METRIC_GATHERS, g):  # the gathers are the metrics they are assumed to be
        assert x.mean().item() == m[name][-1], (name, x.mean().item(), m[name][-1])
    return out, dict(rewards_chosen=g[0], rewards_rejected=g[1], policy_logps_chosen=g[4], policy_logps_rejected=g[5])


def step(model, head, batch, loss):
    """loss, per-pair values and the gradient of the loss w.r.t. every parameter."""
    model.zero_grad(set_to_none=True)
    out, vals = trl_loss(head, batch, loss)
    out.backward()
    vals["loss"] = out.detach().reshape(1)
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return vals, grads


def fd_check(model, head, batch, loss, grads, h=1e-5):
    """Central finite differences on the largest-gradient entry of every parameter tensor."""
    worst = 0.0
    with torch.no_grad():
        for name, p in model.named_parameters():
            g = grads[name]
            i = int(g.abs().argmax())
            flat = p.view(-1)
            old = flat[i].item()
            flat[i] = old + h
            plus = trl_loss(head, batch, loss)[0].item()
            flat[i] = old - h
            minus = trl_loss(head, batch, loss)[0].item()
            flat[i] = old
            err = abs((plus - minus) / (2 * h) - g.view(-1)[i].item()) / max(g.abs().max().item(), 1e-30)
            worst = max(worst, err)
    if worst > 1e-6:
        sys.exit(f"{loss['name']}: finite-difference check failed: worst relative error {worst:.3e}")
    return worst


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    data = os.path.normpath(os.path.join(here, "..", "tests", "data"))
    ap.add_argument("--out", default=os.path.join(data, "golden_dpo"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.utils.logging.disable_progress_bar()
    import trl
    from trl.trainer.utils import add_fused_lm_head

    model_dir = os.path.join(data, MODEL)

    def load(dtype):
        m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="eager")
        m.eval()
        return m

    m64 = load(torch.float64)
    make_float64(m64)
    head64 = F64Head(m64)
    m32 = load(torch.float32)
    add_fused_lm_head(m32, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))  # as DPOTrainer does

    # Reference model: the policy plus seeded noise; its summed response log-probs (float64, as TRL
    # sums the fused head's output over the completion) are stored and fed to both sides.
    ref = load(torch.float64)
    make_float64(ref)
    gen = torch.Generator().manual_seed(REF_SEED)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * REF_SIGMA)
    pairs = make_pairs(m64.config.vocab_size)
    B = len(pairs)
    nb = collate(pairs, [0.0] * B, [0.0] * B, torch.float64)
    with torch.no_grad():
        labels = nb["input_ids"].masked_fill(nb["completion_mask"] == 0, -100)
        rl = F64Head(ref)(input_ids=nb["input_ids"], attention_mask=nb["attention_mask"], use_cache=False,
                          labels=labels, fused_lm_head=True).log_probs.sum(1)
    ref_c, ref_r = rl[:B].tolist(), rl[B:].tolist()

    b64 = collate(pairs, ref_c, ref_r, torch.float64)
    b32 = collate(pairs, ref_c, ref_r, torch.float32)

    # TRL's real fused head on the float64 model must agree with F64Head up to its float32 kernel.
    m64_fused = load(torch.float64)
    make_float64(m64_fused)
    add_fused_lm_head(m64_fused, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))

    expected, fp32, notes = {}, {}, []
    for loss in LOSSES:
        L = loss["name"]
        g_vals, g_grads = step(m64, head64, b64, loss)
        f_vals, f_grads = step(m32, m32, b32, loss)
        h_vals, h_grads = step(m64_fused, m64_fused, b64, loss)
        head_diff = max([rel_to_max(h_vals[k], g_vals[k]) for k in g_vals] +
                        [rel_to_max(h_grads[n], g_grads[n]) for n in g_grads])
        if head_diff > 1e-4:
            sys.exit(f"{L}: TRL's fused head and F64Head disagree by {head_diff:.3e} (rel_to_max)")
        fd = fd_check(m64, head64, b64, loss, g_grads)
        notes.append(f"{L}: loss {g_vals['loss'].item():.6f}; finite differences {fd:.1e}; "
                     f"TRL fused head (fp32 kernel) on the float64 model vs F64Head {head_diff:.1e}")
        for k in ("loss", "rewards_chosen", "rewards_rejected", "policy_logps_chosen", "policy_logps_rejected"):
            expected[f"{L}.{k}"], fp32[f"{L}.{k}"] = g_vals[k], f_vals[k]
        if L in GRAD_LOSSES:
            for n, g in g_grads.items():
                expected[f"{L}.grad.{n}"], fp32[f"{L}.grad.{n}"] = g, f_grads[n]

    # The golden's policy log-probs are the same model's for every loss: a consistency check.
    for loss in LOSSES[1:]:
        for k in ("policy_logps_chosen", "policy_logps_rejected"):
            assert torch.equal(expected[f"{loss['name']}.{k}"], expected[f"sigmoid.{k}"])

    os.makedirs(args.out, exist_ok=True)
    doc = dict(
        about="DPO golden pairs; written by tools/make_dpo_golden.py (see README.md)",
        model=MODEL,
        prompt=[p["prompt_ids"] for p in pairs], chosen=[p["chosen_ids"] for p in pairs],
        rejected=[p["rejected_ids"] for p in pairs],
        ref_logps_chosen=ref_c, ref_logps_rejected=ref_r,
        ref_model=f"{MODEL} + N(0, {REF_SIGMA}) on every parameter (seed {REF_SEED}), float64",
        losses=LOSSES, grad_losses=list(GRAD_LOSSES))
    with open(os.path.join(args.out, "pairs.json"), "w") as f:  # one key per line, values compact
        f.write("{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in doc.items()) + "\n}\n")

    expected = {k: v.to(torch.float64).contiguous() for k, v in expected.items()}
    meta = {"generator": json.dumps({
        "script": "tools/make_dpo_golden.py", "trl": trl.__version__, "torch": torch.__version__,
        "transformers": transformers.__version__, "definitions": "tests/data/golden_dpo/README.md"})}
    save_file(expected, os.path.join(args.out, "expected.safetensors"), metadata=meta)

    tolerances = {"reason": REASON}
    for k, g in expected.items():
        err = rel_to_max(fp32[k], g)
        tolerances[k] = {"metric": "rel_to_max", "tol": max(TOL_FACTOR * err, TOL_FLOOR), "torch_fp32_err": err}
    with open(os.path.join(args.out, "tolerances.json"), "w") as f:
        json.dump(tolerances, f, indent=1)
        f.write("\n")

    print(f"{B} pairs, lengths (prompt, chosen, rejected) {LENGTHS}")
    print(f"ref logps chosen   {[round(x, 4) for x in ref_c]}")
    print(f"ref logps rejected {[round(x, 4) for x in ref_r]}")
    for n in notes:
        print("  " + n)
    print(f"   {'quantity':<52} {'max|golden|':>12} {'torch fp32 err':>15} {'tol':>10}")
    for k, g in expected.items():
        t = tolerances[k]
        print(f"   {k:<52} {g.abs().max().item():12.4g} {t['torch_fp32_err']:15.3e} {t['tol']:10.2e}")


if __name__ == "__main__":
    main()
