"""Tests of tools/prepare_data.py (docs/prepare_data.md) against docs/formats.md "Dataset files".

Run: python3 -m pytest tests/python/test_prepare_data.py
Needs transformers, tokenizers, h5py and numpy (skipped otherwise); `datasets` only for the
load_from_disk test. The tokenizer is built here, from the fixture text, with the `tokenizers`
library: a byte-level BPE (so decoding is exact), BOS added by its post-processor like Llama's, and a
small Jinja chat template.
"""
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")
h5py = pytest.importorskip("h5py")
tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "prepare_data.py"
DATA = Path(__file__).resolve().parent / "data"

spec = importlib.util.spec_from_file_location("prepare_data", TOOL)
pd = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pd)

SPECIALS = ["<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def _corpus():
    for f in sorted(DATA.glob("*.jsonl")):
        yield f.read_text(encoding="utf-8")


def _build_tokenizer(out, bos_prefix=True, chat_template=True):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(_corpus()), trainer)
    if bos_prefix:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
    if chat_template:
        fast.chat_template = TEMPLATE
    fast.save_pretrained(str(out))
    return str(out)


@pytest.fixture(scope="session")
def tokdir(tmp_path_factory):
    return _build_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="session")
def hf_tok(tokdir):
    return transformers.AutoTokenizer.from_pretrained(tokdir)


@pytest.fixture(scope="session")
def plain_tokdir(tmp_path_factory):
    """No BOS prefix (like Qwen2) and no chat template."""
    return _build_tokenizer(tmp_path_factory.mktemp("tok_plain"), bos_prefix=False,
                            chat_template=False)


def run(capsys, *args):
    rc = pd.main([str(a) for a in args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def prepare(capsys, tokdir, out, *args):
    rc, o, e = run(capsys, "--tokenizer", tokdir, "--out", out, *args)
    assert rc == 0, e
    return o, e


def read_ragged(g, name):
    tokens, offsets = g[f"{name}_tokens"][...], g[f"{name}_offsets"][...]
    return [tokens[offsets[i]:offsets[i + 1]].tolist() for i in range(len(offsets) - 1)]


def check_structure(path):
    """Everything docs/formats.md "Dataset files" requires of a file; returns its contents."""
    with h5py.File(path, "r") as f:
        a = f.attrs
        assert a["format"] == "metapo-dataset"
        for k in ("format_version", "vocab_size", "bos_token_id", "eos_token_id", "pad_token_id"):
            assert a[k].dtype == np.int64, k
        assert a["format_version"] == 1
        for k in ("tokenizer", "task", "source"):
            assert isinstance(a[k], str), k
        assert a["task"] == ""
        vocab = int(a["vocab_size"])
        assert set(f.keys()) <= {"train", "val", "test", "sft"}
        out, ids = {"attrs": dict(a)}, []
        for split in f.keys():
            g = f[split]
            fields = ("prompt", "answer") if split == "sft" else ("prompt", "chosen", "rejected")
            n = g["sample_id"].shape[0]
            assert g["sample_id"].dtype == np.dtype("<i8")
            allowed = {f"{x}_{y}" for x in fields for y in ("tokens", "offsets")} | {"sample_id"}
            if split != "sft":
                allowed |= {"quality", "columns", "ref_logp_chosen", "ref_logp_rejected"}
            assert set(g.keys()) <= allowed, set(g.keys()) - allowed
            d = {"sample_id": g["sample_id"][...].tolist()}
            for x in fields:
                t, o = g[f"{x}_tokens"], g[f"{x}_offsets"]
                assert t.dtype == np.dtype("<i4") and o.dtype == np.dtype("<i8"), x
                assert t.ndim == 1 and o.shape == (n + 1,), x
                o = o[...]
                assert o[0] == 0 and np.all(np.diff(o) >= 0) and o[-1] == t.shape[0], x
                assert t.shape[0] == 0 or (t[...].min() >= 0 and t[...].max() < vocab), x
                d[x] = read_ragged(g, x)
            if "quality" in g:
                assert g["quality"].dtype == np.dtype("<f4") and g["quality"].shape == (n,)
                d["quality"] = g["quality"][...].tolist()
            if "columns" in g:
                d["columns"] = {}
                for c, ds in g["columns"].items():
                    assert ds.dtype == np.dtype("<f4") and ds.shape == (n,), c
                    d["columns"][c] = ds[...].tolist()
            ids += d["sample_id"]
            out[split] = d
        assert len(ids) == len(set(ids)), "sample ids repeat across splits"
    return out


def by_id(d):
    """Split contents keyed by sample id: {id: {"prompt": [...], "chosen": [...], ...}}."""
    keys = [k for k in d if k not in ("sample_id", "columns")]
    res = {}
    for i, sid in enumerate(d["sample_id"]):
        res[sid] = {k: d[k][i] for k in keys}
        for c, v in d.get("columns", {}).items():
            res[sid][c] = v[i]
    return res


def all_pairs(f):
    res = {}
    for s in ("train", "val", "test"):
        if s in f:
            res.update(by_id(f[s]))
    return res


def jsonl(path, rows):
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


# ---------------------------------------------------------------------------------------------


def test_standard_format_structure_and_round_trip(capsys, tokdir, hf_tok, tmp_path):
    out = tmp_path / "std.h5"
    prepare(capsys, tokdir, out, DATA / "standard.jsonl", "--columns", "weight,difficulty",
            "--val-fraction", "0.3")
    f = check_structure(out)
    a = f["attrs"]
    assert a["vocab_size"] == len(hf_tok)
    assert (a["bos_token_id"], a["eos_token_id"], a["pad_token_id"]) == (0, 1, 2)
    assert a["tokenizer"] == tokdir
    assert "max_prompt_length=512" in a["source"] and "max_length=1024" in a["source"]
    assert "standard.jsonl" in a["source"]
    assert set(f) >= {"train", "val"} and len(f["val"]["sample_id"]) >= 1
    rows = [json.loads(x) for x in (DATA / "standard.jsonl").read_text().splitlines() if x.strip()]
    pairs = all_pairs(f)
    assert sorted(pairs) == list(range(len(rows)))  # blank lines do not take an id
    for sid, r in enumerate(rows):
        p = pairs[sid]
        assert hf_tok.decode(p["prompt"] + p["chosen"]) == "<s>" + r["prompt"] + r["chosen"] + "</s>"
        assert hf_tok.decode(p["prompt"] + p["rejected"]) == "<s>" + r["prompt"] + r["rejected"] + "</s>"
        assert p["prompt"][0] == 0 and p["chosen"][-1] == 1 and p["rejected"][-1] == 1
        assert p["quality"] == pytest.approx(float(r["quality"]))
        assert p["weight"] == pytest.approx(r["weight"]) and p["difficulty"] == r["difficulty"]


def test_no_bos_tokenizer_gets_no_prefix(capsys, plain_tokdir, tmp_path):
    out = tmp_path / "p.h5"
    prepare(capsys, plain_tokdir, out, DATA / "standard.jsonl", "--val-fraction", "0")
    f = check_structure(out)
    tok = transformers.AutoTokenizer.from_pretrained(plain_tokdir)
    first = by_id(f["train"])[0]
    assert tok.decode(first["prompt"] + first["chosen"]) == "The sky is blue.</s>"
    assert "val" not in f


def test_conversational_uses_chat_template(capsys, tokdir, hf_tok, tmp_path):
    out = tmp_path / "conv.h5"
    prepare(capsys, tokdir, out, DATA / "conversational.jsonl", "--val-fraction", "0")
    pairs = all_pairs(check_structure(out))
    rows = [json.loads(x) for x in (DATA / "conversational.jsonl").read_text().splitlines()]
    for sid, r in enumerate(rows):
        p = pairs[sid]
        cont = r["prompt"][-1]["role"] == "assistant"
        want_prompt = hf_tok.apply_chat_template(r["prompt"], tokenize=False,
                                                 add_generation_prompt=not cont,
                                                 continue_final_message=cont)
        assert hf_tok.decode(p["prompt"]) == want_prompt
        for k in ("chosen", "rejected"):
            full = hf_tok.apply_chat_template(r["prompt"] + r[k], tokenize=False)
            assert hf_tok.decode(p["prompt"] + p[k]) == full + "</s>"
    # The first one spelled out: no BOS from the tokenizer (the template has none).
    assert hf_tok.decode(pairs[0]["prompt"]) == "<|user|>\nWhat color is the sky?<|end|>\n<|assistant|>\n"
    assert hf_tok.decode(pairs[0]["chosen"]) == "It is blue.<|end|>\n</s>"


def test_chat_eos_not_doubled(capsys, tmp_path):
    # A template that ends the assistant turn with the EOS token itself: EOS is not appended again.
    tdir = _build_tokenizer(tmp_path / "tok_eos")
    tok = transformers.AutoTokenizer.from_pretrained(tdir)
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}"
                         "{% if m['role'] == 'assistant' %}</s>{% else %}<|end|>{% endif %}{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    tok.save_pretrained(tdir)
    out = tmp_path / "e.h5"
    prepare(capsys, tdir, out, DATA / "conversational.jsonl", "--val-fraction", "0")
    p = by_id(check_structure(out)["train"])[0]
    assert tok.decode(p["chosen"]) == "It is blue.</s>"


def test_chat_eos_then_newline_not_doubled(capsys, tmp_path):
    # Qwen2's way: the turn ends with the EOS token and a newline. EOS is not appended after the
    # newline (`</s>\n</s>`): the turn already ended with it, as TRL 1.x leaves it.
    tdir = _build_tokenizer(tmp_path / "tok_eos_nl")
    tok = transformers.AutoTokenizer.from_pretrained(tdir)
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    tok.save_pretrained(tdir)
    out = tmp_path / "e.h5"
    prepare(capsys, tdir, out, DATA / "conversational.jsonl", "--val-fraction", "0")
    p = by_id(check_structure(out)["train"])[0]
    assert tok.decode(p["chosen"]) == "It is blue.</s>\n"


def test_text_ending_with_eos_not_doubled(capsys, tokdir, hf_tok, tmp_path):
    # A plain-text response that already ends with the EOS text keeps one EOS (TRL's add_eos checks
    # endswith(eos_token) first); one without gets it appended.
    src = tmp_path / "eos.jsonl"
    src.write_text(json.dumps({"prompt": "Count:", "chosen": " one two three</s>", "rejected": " one two"}) + "\n")
    out = tmp_path / "eos.h5"
    prepare(capsys, tokdir, out, src, "--val-fraction", "0")
    p = all_pairs(check_structure(out))[0]
    assert hf_tok.decode(p["chosen"]) == " one two three</s>"
    assert hf_tok.decode(p["rejected"]) == " one two</s>"


def test_implicit_prompt_extraction(capsys, tokdir, hf_tok, tmp_path):
    out = tmp_path / "imp.h5"
    prepare(capsys, tokdir, out, DATA / "implicit.jsonl", "--val-fraction", "0")
    pairs = all_pairs(check_structure(out))
    dec = lambda ids: hf_tok.decode(ids)  # noqa: E731
    # Strings: shared characters up to the first difference, the space before it goes to responses.
    assert dec(pairs[0]["prompt"]) == "<s>The sky is"
    assert dec(pairs[0]["chosen"]) == " blue.</s>" and dec(pairs[0]["rejected"]) == " green.</s>"
    assert dec(pairs[1]["prompt"]) == "<s>Answer:"
    assert dec(pairs[1]["chosen"]) == " yes</s>" and dec(pairs[1]["rejected"]) == " no</s>"
    # Conversations: the shared leading messages.
    user = "<|user|>\nWhat color is the sky?<|end|>\n<|assistant|>\n"
    assert dec(pairs[2]["prompt"]) == user
    assert dec(pairs[2]["chosen"]) == "It is blue.<|end|>\n</s>"
    # A string prompt next to conversational responses is ignored, as TRL's maybe_extract_prompt.
    assert dec(pairs[3]["prompt"]) == user
    assert dec(pairs[3]["rejected"]) == "Red.<|end|>\n</s>"


@pytest.mark.parametrize("chosen,rejected,want", [
    ("The sky is blue.", "The sky is green.", ("The sky is", " blue.", " green.")),
    ("abc", "xyz", ("", "abc", "xyz")),
    ("Hello world", "Hello world and more", ("Hello world", "", " and more")),
    ("A b", "A c", ("A", " b", " c")),
    ("ab", "ac", ("a", "b", "c")),
])
def test_extract_prompt_text(chosen, rejected, want):
    assert pd.extract_prompt_text(chosen, rejected) == want


def test_identical_implicit_pair_dropped_with_warning(capsys, tokdir, tmp_path):
    src = jsonl(tmp_path / "i.jsonl", [{"chosen": "same", "rejected": "same"},
                                       {"chosen": "a b", "rejected": "a c"}])
    out = tmp_path / "i.h5"
    _, err = prepare(capsys, tokdir, out, src, "--val-fraction", "0")
    assert "dropped 1 example(s): chosen and rejected identical" in err
    f = check_structure(out)
    assert f["train"]["sample_id"] == [1]
    assert "dropped 1 (chosen and rejected identical" in f["attrs"]["source"]


def test_sft_split(capsys, tokdir, hf_tok, tmp_path):
    out = tmp_path / "sft.h5"
    prepare(capsys, tokdir, out, DATA / "standard.jsonl", "--sft", DATA / "sft.jsonl",
            "--val-fraction", "0")
    f = check_structure(out)
    n_pairs = 6
    s = by_id(f["sft"])
    assert sorted(s) == [n_pairs + i for i in range(4)]  # ids continue after the pair inputs
    dec = lambda sid: (hf_tok.decode(s[sid]["prompt"]), hf_tok.decode(s[sid]["answer"]))  # noqa
    assert dec(n_pairs + 0) == ("<s>Say hi:", " hi</s>")
    assert dec(n_pairs + 1) == ("<|user|>\nSay bye.<|end|>\n<|assistant|>\n", "Bye.<|end|>\n</s>")
    p, a = dec(n_pairs + 2)  # messages: the last assistant message is the answer
    assert p.endswith("<|user|>\nAnother.<|end|>\n<|assistant|>\n") and p.startswith("<|user|>\nName")
    assert a == "Blue.<|end|>\n</s>"
    assert dec(n_pairs + 3) == ("<s>", "Plain text to imitate.</s>")


def test_sft_only(capsys, tokdir, tmp_path):
    out = tmp_path / "sft_only.h5"
    prepare(capsys, tokdir, out, "--sft", DATA / "sft.jsonl")
    f = check_structure(out)
    assert set(f) == {"attrs", "sft"} and f["sft"]["sample_id"] == [0, 1, 2, 3]


def test_val_and_test_files(capsys, tokdir, tmp_path):
    out = tmp_path / "vt.h5"
    prepare(capsys, tokdir, out, DATA / "standard.jsonl", "--val", DATA / "val.jsonl",
            "--test", DATA / "test.jsonl")
    f = check_structure(out)
    assert f["train"]["sample_id"] == [0, 1, 2, 3, 4, 5]
    assert f["val"]["sample_id"] == [6, 7] and f["test"]["sample_id"] == [8]
    assert "quality" in f["train"] and "quality" in f["val"] and "quality" not in f["test"]


def _split_of(f):
    return {sid: s for s in ("train", "val") if s in f for sid in f[s]["sample_id"]}


def test_val_split_deterministic_and_content_based(capsys, tokdir, tmp_path):
    rows = [{"prompt": f"Question {i}:", "chosen": f" right {i}", "rejected": f" wrong {i}"}
            for i in range(200)]
    src = jsonl(tmp_path / "many.jsonl", rows)
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    prepare(capsys, tokdir, a, src, "--seed", "7")
    prepare(capsys, tokdir, b, src, "--seed", "7")
    fa, fb = check_structure(a), check_structure(b)
    for s in ("train", "val"):
        assert fa[s] == fb[s]
    val_ids = set(fa["val"]["sample_id"])
    assert 2 <= len(val_ids) <= 25  # ~5% of 200
    # Reversed input order: the same examples (now with other ids) are held out.
    rev = jsonl(tmp_path / "rev.jsonl", rows[::-1])
    c = tmp_path / "c.h5"
    prepare(capsys, tokdir, c, rev, "--seed", "7")
    fc = check_structure(c)
    assert {199 - i for i in fc["val"]["sample_id"]} == val_ids
    # Another seed, another split.
    d = tmp_path / "d.h5"
    prepare(capsys, tokdir, d, src, "--seed", "8")
    assert set(check_structure(d)["val"]["sample_id"]) != val_ids


def test_split_by_prompt_keeps_a_prompt_together(capsys, tokdir, tmp_path):
    rows = [{"prompt": f"Q{i // 4}:", "chosen": f" good {i}", "rejected": f" bad {i}"}
            for i in range(160)]
    out = tmp_path / "sp.h5"
    prepare(capsys, tokdir, out, jsonl(tmp_path / "sp.jsonl", rows), "--split-by", "prompt",
            "--val-fraction", "0.2")
    split = _split_of(check_structure(out))
    for q in range(40):
        assert len({split[4 * q + k] for k in range(4)}) == 1
    assert "val" in split.values()


def test_tiny_input_still_gets_a_val_pair(capsys, tokdir, tmp_path):
    src = jsonl(tmp_path / "two.jsonl", [{"prompt": "a", "chosen": " b", "rejected": " c"},
                                         {"prompt": "d", "chosen": " e", "rejected": " f"}])
    out = tmp_path / "two.h5"
    _, err = prepare(capsys, tokdir, out, src, "--val-fraction", "0.01")
    f = check_structure(out)
    assert len(f["train"]["sample_id"]) == 1 and len(f["val"]["sample_id"]) == 1
    assert "holding out 1 pair" in err


def test_truncation(capsys, tokdir, hf_tok, tmp_path):
    long_prompt = " ".join(f"w{i}" for i in range(60))
    long_resp = " ".join(f"r{i}" for i in range(60))
    src = jsonl(tmp_path / "long.jsonl", [
        {"prompt": long_prompt, "chosen": " short.", "rejected": " " + long_resp},
        {"prompt": "Hi", "chosen": " ok", "rejected": " no"},
    ])
    p_ids = [0] + hf_tok(long_prompt, add_special_tokens=False)["input_ids"]
    c_ids = hf_tok(" short.", add_special_tokens=False)["input_ids"] + [1]
    r_ids = hf_tok(" " + long_resp, add_special_tokens=False)["input_ids"] + [1]
    assert len(p_ids) > 20 and len(r_ids) > 40

    out = tmp_path / "t.h5"
    o, _ = prepare(capsys, tokdir, out, src, "--val-fraction", "0", "--max-prompt-length", "20",
                   "--max-length", "40")
    f = check_structure(out)
    p = by_id(f["train"])[0]
    assert p["prompt"] == p_ids[-20:]            # keep_end: the prompt's last 20 tokens (BOS lost)
    assert p["chosen"] == c_ids                 # short enough: untouched, EOS kept
    assert p["rejected"] == r_ids[:20]          # cut to max_length - prompt, keeping the start
    assert by_id(f["train"])[1]["prompt"][0] == 0  # short pair untouched
    assert "prompts truncated: 1" in o and "examples with responses truncated: 1" in o
    assert "max_prompt_length=20" in f["attrs"]["source"]

    out2 = tmp_path / "t2.h5"
    prepare(capsys, tokdir, out2, src, "--val-fraction", "0", "--max-prompt-length", "20",
            "--max-length", "0", "--max-completion-length", "5", "--truncation-mode", "keep_start")
    p = by_id(check_structure(out2)["train"])[0]
    assert p["prompt"] == p_ids[:20]
    assert p["chosen"] == c_ids[:5] and p["rejected"] == r_ids[:5]

    # No room left for a response: the pair is dropped with a warning, the other stays.
    out3 = tmp_path / "t3.h5"
    _, err = prepare(capsys, tokdir, out3, src, "--val-fraction", "0", "--max-prompt-length", "30",
                     "--max-length", "30")
    f3 = check_structure(out3)
    assert f3["train"]["sample_id"] == [1]
    assert "dropped 1 example(s): empty response after truncation" in err


def test_no_limits(capsys, tokdir, hf_tok, tmp_path):
    long_prompt = " ".join(f"w{i}" for i in range(60))
    src = jsonl(tmp_path / "l.jsonl", [{"prompt": long_prompt, "chosen": " a", "rejected": " b"}])
    out = tmp_path / "n.h5"
    prepare(capsys, tokdir, out, src, "--val-fraction", "0", "--max-prompt-length", "0",
            "--max-length", "0")
    p = by_id(check_structure(out)["train"])[0]
    assert hf_tok.decode(p["prompt"]) == "<s>" + long_prompt


def test_hf_datasets_directory(capsys, tokdir, hf_tok, tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [json.loads(x) for x in (DATA / "conversational.jsonl").read_text().splitlines()]
    ds = datasets.Dataset.from_list(rows)
    dd = datasets.DatasetDict({"train": ds, "test": datasets.Dataset.from_list(rows[:1])})
    dd.save_to_disk(str(tmp_path / "hf"))
    out = tmp_path / "hf.h5"
    prepare(capsys, tokdir, out, tmp_path / "hf", "--test", f"{tmp_path / 'hf'}:test",
            "--val-fraction", "0")
    f = check_structure(out)
    assert f["train"]["sample_id"] == [0, 1, 2] and f["test"]["sample_id"] == [3]
    ref = tmp_path / "ref.h5"
    prepare(capsys, tokdir, ref, DATA / "conversational.jsonl", "--val-fraction", "0")
    assert check_structure(ref)["train"] == {k: v for k, v in f["train"].items()}
    rc, _, err = run(capsys, "--tokenizer", tokdir, "--out", tmp_path / "x.h5",
                     f"{tmp_path / 'hf'}:nope")
    assert rc == 1 and "no split 'nope'" in err


# ---------------------------------------------------------------------------------------------
# Errors: one line on stderr naming file, line and field; exit 1; an earlier output stays intact.

GOOD = {"prompt": "p", "chosen": " c", "rejected": " r"}
MSG = [{"role": "user", "content": "hi"}]
ERRORS = [
    ("missing_field", [GOOD, {"prompt": "p", "chosen": " c"}], ":2: missing field 'rejected'"),
    ("wrong_type", [{"prompt": "p", "chosen": 3, "rejected": " r"}],
     ":1: field 'chosen': expected a string or a list of messages, got a number"),
    ("bad_json", [GOOD, "{\"prompt\": "], ":2: invalid JSON"),
    ("not_object", [[1, 2]], ":1: expected a JSON object, got a list"),
    ("mixed_kinds", [{"prompt": "p", "chosen": " c", "rejected": [{"role": "assistant", "content": "r"}]}],
     ":1: field 'rejected': is a list of messages but 'chosen' is a string"),
    ("bad_message", [{"prompt": [{"role": "user"}], "chosen": [{"role": "assistant", "content": "c"}],
                      "rejected": [{"role": "assistant", "content": "r"}]}],
     ":1: field 'prompt[0].content': expected a string, got null"),
    ("empty_messages", [{"prompt": [], "chosen": [{"role": "assistant", "content": "c"}],
                         "rejected": [{"role": "assistant", "content": "r"}]}],
     ":1: field 'prompt': empty list of messages"),
    ("no_shared_turns", [{"chosen": MSG, "rejected": [{"role": "user", "content": "yo"}]}],
     ":1: fields 'chosen'/'rejected': the conversations share no leading messages"),
    ("quality_type", [dict(GOOD, quality="high")], ":1: field 'quality': expected a number, got a string"),
    ("quality_partial", [dict(GOOD, quality=1), GOOD], ":2: missing field 'quality'"),
    ("column_missing", [dict(GOOD, weight=1), GOOD], ":2: missing field 'weight'"),
]


def _write_lines(path, rows):
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def _earlier_dataset(path):
    """A stand-in for an earlier OUT of the tool (an HDF5 file with the dataset format attribute),
    which a failed run must leave as it was; returns its bytes."""
    import h5py
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "metapo-dataset"
    return Path(path).read_bytes()


def test_out_of_the_users_is_refused(capsys, tokdir, tmp_path):
    # An existing --out that is not a dataset file is the user's: refused before any input is read.
    src = _write_lines(tmp_path / "in.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}])
    out = tmp_path / "notes.h5"
    out.write_bytes(b"the user's")
    rc, _, err = run(capsys, "--tokenizer", tokdir, "--out", out, src)
    assert rc == 1
    assert err.strip() == f"prepare_data: error: --out {out}: exists and is not a metapo dataset file; this tool " \
        "replaces only a file it wrote (remove it or choose another path)", err
    assert out.read_bytes() == b"the user's"


@pytest.mark.parametrize("name,rows,want", ERRORS, ids=[e[0] for e in ERRORS])
def test_error_lines(capsys, tokdir, tmp_path, name, rows, want):
    src = _write_lines(tmp_path / f"{name}.jsonl", rows)
    out = tmp_path / "out.h5"
    earlier = _earlier_dataset(out)
    extra = ["--columns", "weight"] if name == "column_missing" else []
    rc, _, err = run(capsys, "--tokenizer", tokdir, "--out", out, src, *extra)
    assert rc == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("prepare_data: error: ") and f"{name}.jsonl{want}" in lines[0], err
    assert out.read_bytes() == earlier
    assert not (tmp_path / "out.h5.partial").exists()


@pytest.mark.parametrize("args,want", [
    (["--val-fraction", "1.5"], "--val-fraction must be in [0, 1)"),
    (["--val-fraction", "0.1", "--val", "VAL"], "give --val FILE or --val-fraction, not both"),
    (["--columns", "quality"], "'quality' cannot be a column name"),
    (["--max-length", "-1"], "--max-length must be >= 0"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_option_errors(capsys, tokdir, tmp_path, args, want):
    args = [str(DATA / "val.jsonl") if a == "VAL" else a for a in args]
    rc, _, err = run(capsys, "--tokenizer", tokdir, "--out", tmp_path / "o.h5",
                     DATA / "standard.jsonl", *args)
    assert rc == 1 and len(err.strip().splitlines()) == 1 and want in err, err


def test_missing_inputs_and_tokenizer(capsys, tokdir, tmp_path):
    rc, _, err = run(capsys, "--tokenizer", tokdir, "--out", tmp_path / "o.h5", tmp_path / "no.jsonl")
    assert rc == 1 and "no.jsonl: no such file or directory" in err
    rc, _, err = run(capsys, "--tokenizer", tmp_path / "notok", "--out", tmp_path / "o.h5",
                     DATA / "standard.jsonl")
    assert rc == 1 and "notok" in err and "cannot load the tokenizer" in err
    assert len(err.strip().splitlines()) == 1
    # A name that is no directory is not fetched from the Hub (which offline retried for ~47 s).
    t0 = time.monotonic()
    rc, _, err = run(capsys, "--tokenizer", "no-such-org/no-such-tokenizer", "--out", tmp_path / "o.h5",
                     DATA / "standard.jsonl")
    assert rc == 1 and "no such directory, and no download of that name in the Hugging Face cache" in err
    assert time.monotonic() - t0 < 20
    assert not (tmp_path / "o.h5").exists()


def test_empty_split_is_an_error(capsys, tokdir, tmp_path):
    # An empty input, or one whose every pair is dropped: an error, and no file (it used to be written
    # with train=0 and exit 0).
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    rc, _, err = run(capsys, "--tokenizer", tokdir, "--out", tmp_path / "o.h5", empty, "--val-fraction", "0")
    assert rc == 1 and "/train would hold no pairs (nothing written): 0 pair(s) kept in all; the inputs hold no records" in err
    rc, _, err = run(capsys, "--tokenizer", tokdir, "--out", tmp_path / "o.h5", DATA / "standard.jsonl",
                     "--max-length", "1", "--val-fraction", "0")
    assert rc == 1 and "/train would hold no pairs (nothing written): 0 pair(s) kept in all; dropped" in err
    assert not (tmp_path / "o.h5").exists()


def test_chat_data_needs_a_template(capsys, plain_tokdir, tmp_path):
    rc, _, err = run(capsys, "--tokenizer", plain_tokdir, "--out", tmp_path / "o.h5",
                     DATA / "conversational.jsonl")
    assert rc == 1 and "conversational.jsonl:1: conversational record" in err
    assert "no chat template" in err
    tpl = tmp_path / "t.jinja"
    tpl.write_text(TEMPLATE)
    prepare(capsys, plain_tokdir, tmp_path / "o.h5", DATA / "conversational.jsonl",
            "--chat-template", tpl, "--val-fraction", "0")
    check_structure(tmp_path / "o.h5")


def test_command_line_process(tokdir, tmp_path):
    """The real script as a process: exit codes, the one-line error, the summary."""
    out = tmp_path / "cli.h5"
    env = dict(os.environ, TRANSFORMERS_VERBOSITY="error")
    ok = subprocess.run([sys.executable, str(TOOL), "--tokenizer", tokdir, "--out", str(out),
                         str(DATA / "standard.jsonl")], capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    assert "wrote" in ok.stdout and "error" not in ok.stderr
    check_structure(out)
    bad = subprocess.run([sys.executable, str(TOOL), "--tokenizer", tokdir, "--out", str(out),
                          str(DATA / "sft.jsonl")], capture_output=True, text=True, env=env)
    assert bad.returncode == 1
    assert bad.stderr.strip() == "prepare_data: error: " + str(DATA / "sft.jsonl") + \
        ":1: missing field 'chosen'"


def test_columns_per_input_group(capsys, tokdir, tmp_path):
    # 'weight' in every training record, absent from the --val file: /val simply has no column.
    out = tmp_path / "cols.h5"
    prepare(capsys, tokdir, out, DATA / "standard.jsonl", "--val", DATA / "val.jsonl",
            "--columns", "weight")
    f = check_structure(out)
    assert list(f["train"]["columns"]) == ["weight"] and "columns" not in f["val"]
    rc, _, err = run(capsys, "--tokenizer", tokdir, "--out", tmp_path / "x.h5",
                     DATA / "standard.jsonl", "--columns", "nonesuch")
    assert rc == 1 and "--columns: no preference record has a field 'nonesuch'" in err


def test_json_array_and_gzip_inputs(capsys, tokdir, tmp_path):
    import gzip
    rows = [json.loads(x) for x in (DATA / "standard.jsonl").read_text().splitlines() if x.strip()]
    (tmp_path / "a.json").write_text(json.dumps(rows[:3]), encoding="utf-8")
    with gzip.open(tmp_path / "b.jsonl.gz", "wt", encoding="utf-8") as g:
        g.write("".join(json.dumps(r) + "\n" for r in rows[3:]))
    out, ref = tmp_path / "ab.h5", tmp_path / "ref.h5"
    prepare(capsys, tokdir, out, tmp_path / "a.json", tmp_path / "b.jsonl.gz", "--val-fraction", "0")
    prepare(capsys, tokdir, ref, DATA / "standard.jsonl", "--val-fraction", "0")
    assert check_structure(out)["train"] == check_structure(ref)["train"]
    (tmp_path / "bad.json").write_text('[{"prompt": "p", "chosen": " c"}]')
    rc, _, err = run(capsys, "--tokenizer", tokdir, "--out", out, tmp_path / "bad.json")
    assert rc == 1 and "bad.json[0]: missing field 'rejected'" in err


def test_no_add_special_tokens(capsys, tokdir, hf_tok, tmp_path):
    out = tmp_path / "nobos.h5"
    prepare(capsys, tokdir, out, DATA / "standard.jsonl", "--val-fraction", "0",
            "--no-add-special-tokens")
    f = check_structure(out)
    p = by_id(f["train"])[0]
    assert hf_tok.decode(p["prompt"] + p["chosen"]) == "The sky is blue.</s>"
    assert "no special prefix" in f["attrs"]["source"]


def test_line_separators_inside_strings_and_byte_order_marks(capsys, tokdir, tmp_path):
    # json.dumps(ensure_ascii=False) leaves U+2028, U+2029 and U+0085 raw inside strings: a JSONL
    # record ends at "\n" only. A UTF-8 byte-order mark before JSONL or a JSON array is skipped, and
    # a gzipped JSON array reads as a plain one.
    import gzip
    rows = [{"prompt": "Hi", "chosen": f" line{sep}sep", "rejected": " b"} for sep in ("\u2028", "\u2029", "\u0085")]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    (tmp_path / "sep.jsonl").write_text(text, encoding="utf-8")
    (tmp_path / "bom.jsonl").write_text("\ufeff" + text, encoding="utf-8")
    (tmp_path / "bom.json").write_text("\ufeff" + json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    with gzip.open(tmp_path / "arr.json.gz", "wt", encoding="utf-8") as g:
        g.write(json.dumps(rows, ensure_ascii=False))
    want = None
    for name in ("sep.jsonl", "bom.jsonl", "bom.json", "arr.json.gz"):
        out = tmp_path / f"{name}.h5"
        prepare(capsys, tokdir, out, tmp_path / name, "--val-fraction", "0")
        got = check_structure(out)["train"]
        assert len(got["sample_id"]) == 3, name
        want = want or got
        assert got == want, name


def test_text_that_starts_with_bos_keeps_one(capsys, tokdir, hf_tok, tmp_path):
    src = jsonl(tmp_path / "bos.jsonl", [{"prompt": "<s>[INST] hi [/INST]", "chosen": " yes", "rejected": " no"},
                                         {"prompt": "[INST] hi [/INST]", "chosen": " yes", "rejected": " no"}])
    out = tmp_path / "bos.h5"
    prepare(capsys, tokdir, out, src, "--val-fraction", "0")
    pairs = by_id(check_structure(out)["train"])
    bos = hf_tok.bos_token_id
    assert pairs[0]["prompt"][0] == bos and pairs[0]["prompt"][1] != bos, pairs[0]["prompt"]
    assert pairs[0]["prompt"] == pairs[1]["prompt"]


def test_lone_surrogate_is_one_error_line(capsys, tokdir, tmp_path):
    src = tmp_path / "sur.jsonl"
    src.write_text('{"prompt": "ok", "chosen": " a", "rejected": " b"}\n'
                   '{"prompt": "Hi \\ud83d", "chosen": " a", "rejected": " b"}\n', encoding="utf-8")
    rc, _, err = run(capsys, "--tokenizer", tokdir, "--out", tmp_path / "o.h5", src)
    assert rc == 1 and len(err.strip().splitlines()) == 1, err
    assert "sur.jsonl:2: field 'prompt': invalid Unicode" in err and "U+D83D" in err, err


def test_empty_prompt_pairs_are_dropped(capsys, plain_tokdir, tmp_path):
    # Without a BOS an empty prompt leaves the responses' first tokens unscored: such pairs are dropped
    # and counted (SFT text keeps its examples).
    src = jsonl(tmp_path / "e.jsonl", [{"chosen": "Yes 0", "rejected": "No 0"},
                                       {"prompt": "", "chosen": "Yes", "rejected": "No"},
                                       {"prompt": "Q", "chosen": " yes", "rejected": " no"}])
    out = tmp_path / "e.h5"
    _, err = prepare(capsys, plain_tokdir, out, src, "--val-fraction", "0")
    assert len(check_structure(out)["train"]["sample_id"]) == 1
    assert "dropped 2 example(s): empty prompt" in err, err


def test_generation_prompt_not_in_the_conversation(capsys, tokdir, hf_tok, tmp_path):
    # DeepSeek-R1's kind of template: the generation prompt adds "<think>\n", which the rendered
    # assistant turn does not hold. The prompt is the prefix both share (as TRL takes it), counted.
    tdir = _build_tokenizer(tmp_path / "tok_think")
    tok = transformers.AutoTokenizer.from_pretrained(tdir)
    tok.chat_template = TEMPLATE.replace("<|assistant|>\n{% endif %}", "<|assistant|>\n<think>\n{% endif %}")
    tok.save_pretrained(tdir)
    out = tmp_path / "think.h5"
    o, _ = prepare(capsys, tdir, out, DATA / "conversational.jsonl", "--val-fraction", "0")
    p = by_id(check_structure(out)["train"])[0]
    assert tok.decode(p["prompt"]) == "<|user|>\nWhat color is the sky?<|end|>\n<|assistant|>\n"
    assert tok.decode(p["chosen"]) == "It is blue.<|end|>\n</s>"
    assert "prompts cut to the prefix the responses share" in o, o


def test_prompt_limit_at_or_past_max_length_warns(capsys, tokdir, tmp_path):
    _, err = prepare(capsys, tokdir, tmp_path / "w.h5", DATA / "standard.jsonl", "--max-length", "100",
                     "--max-prompt-length", "100")
    assert "--max-prompt-length 100 leaves no room for a response under --max-length 100" in err, err


def test_tools_and_tool_calls(capsys, tmp_path):
    # Tool schemas reach the chat template (--tools for every record; a record's own `tools` field,
    # a list or a JSON string, first), and an assistant message that only calls tools needs no content.
    tdir = _build_tokenizer(tmp_path / "tok_tools")
    tok = transformers.AutoTokenizer.from_pretrained(tdir)
    tok.chat_template = ("{% if tools %}<|system|>\n{% for t in tools %}{{ t['name'] }};{% endfor %}<|end|>\n{% endif %}"
                         "{% for m in messages %}<|{{ m['role'] }}|>\n"
                         "{% if m.get('tool_calls') %}{% for c in m['tool_calls'] %}call {{ c['name'] }}{% endfor %}"
                         "{% else %}{{ m['content'] }}{% endif %}<|end|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    tok.save_pretrained(tdir)
    user = [{"role": "user", "content": "Weather?"}]
    rows = [{"prompt": user, "chosen": [{"role": "assistant", "tool_calls": [{"name": "weather"}]}],
             "rejected": [{"role": "assistant", "content": "Sunny."}]},
            {"prompt": user, "chosen": [{"role": "assistant", "content": "A"}],
             "rejected": [{"role": "assistant", "content": "B"}], "tools": json.dumps([{"name": "own"}])}]
    src = jsonl(tmp_path / "t.jsonl", rows)
    (tmp_path / "tools.json").write_text(json.dumps([{"name": "weather"}, {"name": "time"}]))
    out = tmp_path / "t.h5"
    prepare(capsys, tdir, out, src, "--val-fraction", "0", "--tools", tmp_path / "tools.json")
    f = check_structure(out)
    p = by_id(f["train"])
    assert tok.decode(p[0]["prompt"]) == "<|system|>\nweather;time;<|end|>\n<|user|>\nWeather?<|end|>\n<|assistant|>\n"
    assert tok.decode(p[0]["chosen"]) == "call weather<|end|>\n</s>"
    assert tok.decode(p[1]["prompt"]).startswith("<|system|>\nown;<|end|>\n")
    assert "tools: 2 tool schema(s) from" in f["attrs"]["source"]
    (tmp_path / "bad.json").write_text('{"name": "x"}')
    rc, _, err = run(capsys, "--tokenizer", tdir, "--out", tmp_path / "o.h5", src, "--tools", tmp_path / "bad.json")
    assert rc == 1 and "--tools must hold a JSON list of tool objects" in err, err


def test_a_full_disk_is_one_line_and_leaves_nothing(capsys, tokdir, tmp_path, monkeypatch):
    """A write that runs out of room (os.write raising ENOSPC part-way) is one error line naming the
    cause; nothing is left under OUT or OUT.partial, and an earlier OUT stays as it was. (HDF5 writing
    straight to a full disk crashed the interpreter at exit and left OUT.partial.)"""
    import errno
    out = tmp_path / "full.h5"
    prepare(capsys, tokdir, out, DATA / "standard.jsonl", "--val-fraction", "0.3")
    earlier = out.read_bytes()
    real_write, written = os.write, [0]

    def write(fd, data):
        if written[0] > 4096:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = real_write(fd, bytes(data[:4096]))
        written[0] += n
        return n

    monkeypatch.setattr(pd.os, "write", write)
    rc, o, e = run(capsys, "--tokenizer", tokdir, "--out", out, DATA / "standard.jsonl", "--val-fraction", "0.3")
    assert rc != 0
    assert e.strip().splitlines() == [f"prepare_data: error: {out}: cannot write: No space left on device"], e
    assert out.read_bytes() == earlier
    assert not (tmp_path / "full.h5.partial").exists()


def test_a_users_partial_file_is_refused_and_kept(capsys, tokdir, tmp_path):
    """OUT.partial, where the file is written first: a user's file there is refused and left as it
    was; an empty one (as a killed run leaves) is replaced."""
    out = tmp_path / "p.h5"
    partial = tmp_path / "p.h5.partial"
    partial.write_text("my notes")
    rc, o, e = run(capsys, "--tokenizer", tokdir, "--out", out, DATA / "standard.jsonl", "--val-fraction", "0.3")
    assert rc != 0 and "p.h5.partial exists and was not left by this tool" in e, e
    assert partial.read_text() == "my notes" and not out.exists()
    partial.write_text("")
    prepare(capsys, tokdir, out, DATA / "standard.jsonl", "--val-fraction", "0.3")
    assert out.exists() and not partial.exists()
