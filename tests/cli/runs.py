"""Readers shared by the CLI tests that compare training runs (train_dp.sh, train_tp.sh)."""
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
