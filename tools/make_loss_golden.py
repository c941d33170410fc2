#!/usr/bin/env python3
"""Write tests/data/loss_golden.json: per-pair losses, gradients and rewards computed by TRL's own code.

tests/test_losses.cpp checks metapo::pair_loss against this file (1e-9 relative, doubles). Every
number here comes from executing TRL's source, not a re-implementation:

  * DPOTrainer._compute_loss (current TRL, 1.16.0 here; `pip install trl`) for every DPOTrainer loss
    type. The method is called unbound with a stub `self` (the attributes it reads) and a stub model
    whose forward returns per-token log-probs; reference log-probs go in as precomputed
    (`precompute_ref_logps=True`), so no network, tokenizer or real model is involved. One call per
    pair (batch size 1), so the batch mean TRL returns *is* the pair's loss. Rewards are read back
    from the trainer's logged metrics (rewards/chosen, rewards/rejected).
  * CPOTrainer.cpo_loss (trl.experimental.cpo) for "simpo", called unbound on per-token-average
    log-probs formed as CPOTrainer.get_batch_logps does (sum / token count).
  * DPOTrainer.dpo_loss from TRL 0.24.0 for "cdpo": TRL's DPO refactor (after 0.24) dropped label
    smoothing from "sigmoid"; cDPO is what 0.24's "sigmoid" computed with label_smoothing > 0. The
    method is taken verbatim from the 0.24.0 wheel (`pip download`, or --legacy-wheel) with `ast` and
    executed with a stub `self`, because importing the whole 0.24 package next to current
    TRL/transformers fails (missing optional dependencies such as mergekit, version conflicts).

Gradients d loss / d policy_{chosen,rejected} are TRL's autograd through the same code. All of it runs
in float64 with torch's default dtype set to float64, so constants TRL builds with torch.tensor(...)
(EXO's epsilon) are float64 too; otherwise they would be float32 and the golden would carry ~1e-8
rounding that no double implementation should reproduce.

The per-token log-probs of a response are given to TRL as [sum, 0, 0, ...] over its tokens: TRL sums
them (exactly, since x + 0 = x) and its length-normalized losses (ipo, sigmoid_norm) count the tokens
of the completion mask, so each response has exactly its stated length.

Run by a developer, not by CI:  python3 tools/make_loss_golden.py [--out tests/data/loss_golden.json]
"""
import argparse
import ast
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from collections import defaultdict
from types import SimpleNamespace

import torch
import torch.nn.functional as F

LEGACY_TRL = "0.24.0"

# One configuration per row; "source" says which TRL code evaluates it.
CONFIGS = [
    dict(loss="sigmoid", beta=0.1),
    dict(loss="sigmoid", beta=0.5),
    dict(loss="ipo", beta=0.1),
    dict(loss="ipo", beta=1.0),
    dict(loss="hinge", beta=0.1),
    dict(loss="cdpo", beta=0.1, label_smoothing=0.1),
    dict(loss="robust", beta=0.1, label_smoothing=0.1),
    dict(loss="robust", beta=0.3, label_smoothing=0.3),
    dict(loss="exo_pair", beta=0.1, label_smoothing=1e-3),
    dict(loss="nca_pair", beta=0.1),
    dict(loss="bco_pair", beta=0.1),
    dict(loss="sppo_hard", beta=0.1),
    dict(loss="apo_zero", beta=0.1),
    dict(loss="apo_down", beta=0.1),
    dict(loss="discopop", beta=0.1, discopop_tau=0.05),
    dict(loss="discopop", beta=0.5, discopop_tau=0.5),
    dict(loss="sigmoid_norm", beta=0.1),
    dict(loss="sigmoid_norm", beta=5.0),
    dict(loss="simpo", beta=2.0, simpo_gamma=1.0),
    dict(loss="simpo", beta=2.0, simpo_gamma=1.0, label_smoothing=0.1),
]
DEFAULTS = dict(label_smoothing=0.0, simpo_gamma=0.5, discopop_tau=0.05)


def make_pairs(seed=1234):
    """Realistic summed log-probs: ~0.5-2.5 nats per token under the reference, the policy a few nats
    away; two pairs with large log-ratio gaps to reach the saturated ends of every sigmoid."""
    rng = random.Random(seed)
    pairs = []
    for k in range(10):
        lc, lr = rng.randint(3, 300), rng.randint(3, 300)
        ref_c = -lc * rng.uniform(0.5, 2.5)
        ref_r = -lr * rng.uniform(0.5, 2.5)
        pol_c = ref_c + rng.gauss(0, 6)
        pol_r = ref_r + rng.gauss(0, 6)
        if k == 8:
            pol_c, pol_r = ref_c + 35.0 + rng.random(), ref_r - 30.0 - rng.random()
        if k == 9:
            pol_c, pol_r = ref_c - 40.0 - rng.random(), ref_r + 25.0 + rng.random()
        pairs.append(dict(policy_chosen=pol_c, policy_rejected=pol_r, ref_chosen=ref_c, ref_rejected=ref_r,
                          len_chosen=lc, len_rejected=lr))
    return pairs


# ---------- current TRL: DPOTrainer._compute_loss ----------
class _Accel:
    device = torch.device("cpu")

    @staticmethod
    def gather(x):
        return x

    @staticmethod
    def gather_for_metrics(x):
        return x


def _dpo_stub(cfg):
    return SimpleNamespace(
        model=SimpleNamespace(training=True), accelerator=_Accel(), aux_loss_enabled=False, ld_alpha=None,
        precompute_ref_logps=True, f_divergence_type="reverse_kl", f_alpha_divergence_coef=0.5,
        loss_types=[cfg["loss"]], loss_weights=[1.0], beta=cfg["beta"], label_smoothing=cfg["label_smoothing"],
        use_weighting=False, args=SimpleNamespace(discopop_tau=cfg["discopop_tau"]),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)


def trl_dpo(cfg, p):
    from trl import DPOTrainer

    lc, lr = p["len_chosen"], p["len_rejected"]
    T = 1 + max(lc, lr)  # one prompt token, then the completion, then padding
    completion_mask = torch.zeros(2, T, dtype=torch.long)
    completion_mask[0, 1:1 + lc] = 1
    completion_mask[1, 1:1 + lr] = 1
    # Per-token log-probs (aligned with the shifted mask): the whole sum on the first completion token.
    logp = torch.zeros(2, T - 1, dtype=torch.float64)
    logp[0, 0], logp[1, 0] = p["policy_chosen"], p["policy_rejected"]
    logp.requires_grad_(True)

    def model(**kwargs):
        z = torch.zeros(2, T - 1, dtype=torch.float64)
        return SimpleNamespace(log_probs=logp, entropy=z, mean_logits=z, is_top1=torch.zeros(2, T - 1, dtype=torch.bool))

    inputs = dict(input_ids=torch.ones(2, T, dtype=torch.long), attention_mask=torch.ones(2, T, dtype=torch.long),
                  completion_mask=completion_mask,
                  ref_chosen_logps=torch.tensor([p["ref_chosen"]], dtype=torch.float64),
                  ref_rejected_logps=torch.tensor([p["ref_rejected"]], dtype=torch.float64))
    stub = _dpo_stub(cfg)
    loss = DPOTrainer._compute_loss(stub, model, inputs, False)
    loss.backward()
    m = stub._metrics["train"]
    return dict(loss=loss.item(), d_policy_chosen=logp.grad[0, 0].item(), d_policy_rejected=logp.grad[1, 0].item(),
                reward_chosen=m["rewards/chosen"][-1], reward_rejected=m["rewards/rejected"][-1])


# ---------- TRL CPOTrainer.cpo_loss (simpo) ----------
def trl_simpo(cfg, p):
    from trl.experimental.cpo import CPOTrainer

    stub = SimpleNamespace(alpha=0.0, loss_type="simpo", simpo_gamma=cfg["simpo_gamma"], beta=cfg["beta"],
                           label_smoothing=cfg["label_smoothing"], accelerator=_Accel())
    pc = torch.tensor([p["policy_chosen"]], dtype=torch.float64, requires_grad=True)
    pr = torch.tensor([p["policy_rejected"]], dtype=torch.float64, requires_grad=True)
    # get_batch_logps(average_log_prob=True): (per_token * mask).sum(-1) / mask.sum(-1)
    avg_c = pc / torch.tensor([float(p["len_chosen"])], dtype=torch.float64)
    avg_r = pr / torch.tensor([float(p["len_rejected"])], dtype=torch.float64)
    losses, rc, rr = CPOTrainer.cpo_loss(stub, avg_c, avg_r)
    loss = losses.mean()
    loss.backward()
    return dict(loss=loss.item(), d_policy_chosen=pc.grad.item(), d_policy_rejected=pr.grad.item(),
                reward_chosen=rc.item(), reward_rejected=rr.item())


# ---------- TRL 0.24.0 DPOTrainer.dpo_loss (cdpo) ----------
def load_legacy_dpo_loss(wheel):
    with zipfile.ZipFile(wheel) as z:
        src = z.read("trl/trainer/dpo_trainer.py").decode()
    tree = ast.parse(src)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "DPOTrainer")
    fn = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "dpo_loss")
    code = textwrap.dedent(ast.get_source_segment(src, fn))

    class FDivergenceType:  # the names dpo_loss compares against; "reverse_kl" matches neither
        ALPHA_DIVERGENCE = "alpha_divergence"
        JS_DIVERGENCE = "js_divergence"

    ns = dict(torch=torch, F=F, Union=__import__("typing").Union, FDivergenceType=FDivergenceType,
              FDivergenceConstants=None, cap_exp=None)
    exec(compile(code, f"trl-{LEGACY_TRL}/trl/trainer/dpo_trainer.py:dpo_loss", "exec"), ns)
    return ns["dpo_loss"]


def trl_legacy_cdpo(dpo_loss, cfg, p):
    stub = SimpleNamespace(accelerator=_Accel(), reference_free=False, f_divergence_type="reverse_kl",
                           beta=cfg["beta"], label_smoothing=cfg["label_smoothing"])
    pc = torch.tensor([p["policy_chosen"]], dtype=torch.float64, requires_grad=True)
    pr = torch.tensor([p["policy_rejected"]], dtype=torch.float64, requires_grad=True)
    rc = torch.tensor([p["ref_chosen"]], dtype=torch.float64)
    rr = torch.tensor([p["ref_rejected"]], dtype=torch.float64)
    losses, cr, rej = dpo_loss(stub, pc, pr, rc, rr, loss_type="sigmoid")
    loss = losses.mean()
    loss.backward()
    return dict(loss=loss.item(), d_policy_chosen=pc.grad.item(), d_policy_rejected=pr.grad.item(),
                reward_chosen=cr.item(), reward_rejected=rej.item())


def legacy_wheel(path):
    if path:
        return path
    d = tempfile.mkdtemp(prefix="trl-legacy-")
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", f"trl=={LEGACY_TRL}", "-d", d],
                   check=True)
    return os.path.join(d, next(f for f in os.listdir(d) if f.endswith(".whl")))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "data", "loss_golden.json"))
    ap.add_argument("--legacy-wheel", help=f"path to trl-{LEGACY_TRL}-py3-none-any.whl (else pip download)")
    args = ap.parse_args()

    torch.set_default_dtype(torch.float64)
    import trl

    legacy = load_legacy_dpo_loss(legacy_wheel(args.legacy_wheel))
    pairs = make_pairs()
    cases = []
    for c in CONFIGS:
        cfg = {**DEFAULTS, **c}
        if cfg["loss"] == "simpo":
            source, fn = f"trl {trl.__version__} CPOTrainer.cpo_loss (loss_type='simpo')", lambda p: trl_simpo(cfg, p)
        elif cfg["loss"] == "cdpo":
            source = f"trl {LEGACY_TRL} DPOTrainer.dpo_loss (loss_type='sigmoid', label_smoothing)"
            fn = lambda p: trl_legacy_cdpo(legacy, cfg, p)
        else:
            source, fn = f"trl {trl.__version__} DPOTrainer._compute_loss", lambda p: trl_dpo(cfg, p)
        results = [fn(p) for p in pairs]
        for r in results:
            assert all(math.isfinite(v) for v in r.values()), (cfg, r)
        cases.append(dict(config=cfg, source=source, results=results))

    doc = dict(
        about="Per-pair preference losses evaluated by TRL's own code; written by tools/make_loss_golden.py",
        trl_version=trl.__version__, legacy_trl_version=LEGACY_TRL, torch_version=torch.__version__,
        result_fields=["loss", "d_policy_chosen", "d_policy_rejected", "reward_chosen", "reward_rejected"],
        pairs=pairs, cases=cases)
    args.out = os.path.normpath(args.out)
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {args.out}: {len(cases)} configurations x {len(pairs)} pairs")


if __name__ == "__main__":
    main()
