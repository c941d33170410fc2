"""Readers shared by the CLI tests that compare training runs (train_dp.sh, train_tp.sh, train_pp.sh)."""
import json
import struct


def metrics(path):
    """The lines of a RUN/metrics.jsonl, as dicts."""
    return [json.loads(line) for line in open(path)]


def tensors(path):
    """name -> tuple of floats of an F32 model.safetensors."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        head = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in head.items():
        if k == "__metadata__":
            continue
        b, e = v["data_offsets"]
        out[k] = struct.unpack(f"<{(e - b) // 4}f", data[b:e])
    return out


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-12)


def param_rel_diff(run, base):
    """‖θ_run − θ_base‖ / ‖θ_base‖ over every tensor of RUN/final/model.safetensors."""
    t1, t2 = tensors(f"{base}/final/model.safetensors"), tensors(f"{run}/final/model.safetensors")
    assert t1.keys() == t2.keys(), (run, base)
    num = sum((a - b) ** 2 for k in t1 for a, b in zip(t1[k], t2[k])) ** 0.5
    den = sum(a * a for k in t1 for a in t1[k]) ** 0.5
    return num / den


def steps(run):
    """The per-step lines (those with a loss) of RUN/metrics.jsonl."""
    return [j for j in metrics(f"{run}/metrics.jsonl") if "loss" in j]


def check_layout(kind, layout, base, tol, n_steps=10):
    """Run KIND-LAYOUT against KIND-BASE: the same number of steps, per-step losses and gradient norms
    (the clipping norm: a wrong one also shows in the parameters) and the final parameters within tol
    (relative). Prints one ok line; returns the run's per-step lines."""
    l1, l2 = steps(f"{kind}-{base}"), steps(f"{kind}-{layout}")
    assert len(l1) == len(l2) == n_steps, (kind, layout, len(l1), len(l2))
    worst = max(rel(a["loss"], b["loss"]) for a, b in zip(l2, l1))
    assert worst < tol, f"{kind} {layout}: per-step losses differ from {base} by {worst:.2e} (relative)"
    gworst = max(rel(a["grad_norm"], b["grad_norm"]) for a, b in zip(l2, l1))
    assert gworst < tol, f"{kind} {layout}: grad_norm differs from {base} by {gworst:.2e} (relative)"
    d = param_rel_diff(f"{kind}-{layout}", f"{kind}-{base}")
    assert d < tol, f"{kind} {layout}: final parameters differ from {base} by {d:.2e} (relative norm)"
    print(f"ok: {kind} {layout} vs {base}: max loss rel diff {worst:.2e}, grad-norm {gworst:.2e}, "
          f"parameter rel diff {d:.2e}")
    return l2

