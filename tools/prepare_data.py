#!/usr/bin/env python3
"""Turn preference data (TRL's formats) into a metapo dataset file (.h5, docs/formats.md).

    tools/prepare_data.py --tokenizer MODEL_DIR --out data.h5 pairs.jsonl [more.jsonl | HF_DIR ...]
                          [--val FILE | --val-fraction 0.05] [--test FILE] [--sft FILE]
                          [--max-prompt-length 512] [--max-length 1024] [--columns a,b]

Inputs are JSONL files (.jsonl, .jsonl.gz, or .json holding a JSON array), Parquet files, or local
Hugging Face `datasets` directories (save_to_disk; "DIR:split" picks a split of a DatasetDict).
Records use TRL's preference formats:

  standard        {"prompt": str, "chosen": str, "rejected": str}
  conversational  {"prompt": [messages], "chosen": [assistant messages], "rejected": [...]}
  implicit prompt {"chosen": str | [messages], "rejected": same kind}: the shared prefix is the
                  prompt (TRL's maybe_extract_prompt rule, see docs/prepare_data.md)

with an optional numeric "quality" and the numeric fields named by --columns. --sft files hold
{"prompt", "completion"} (strings or messages), {"messages": [...]} or {"text": str}.

Tokenization follows TRL's DPOTrainer: conversational records get the tokenizer's chat template
(prompt with add_generation_prompt=True; a response is template(prompt + response) minus
template(prompt)); plain strings get the tokenizer's own leading special tokens (BOS) on the prompt
and EOS after each response. Truncation, the split rule and every choice made are in
docs/prepare_data.md and recorded in the file's `source` attribute.

Errors are one line on stderr ("prepare_data: error: FILE:LINE: field 'chosen': ..."), exit code 1.
The file is written as OUT.partial and renamed, so a failed run leaves an earlier OUT intact; an OUT
that is an input (or a file in an input or --tokenizer directory) is refused before anything is read.
"""
import argparse
import gzip
import hashlib
import json
import math
import os
import shlex
import sys
from collections import Counter

PROG = "prepare_data"
FORMAT = "metapo-dataset"
FORMAT_VERSION = 1
DEFAULT_MAX_PROMPT_LENGTH = 512  # TRL DPOConfig defaults
DEFAULT_MAX_LENGTH = 1024
DEFAULT_VAL_FRACTION = 0.05
TOKENIZE_BATCH = 1024


class InputError(Exception):
    """A problem with the user's input or options: printed as one line, exit code 1."""


def warn(msg):
    print(f"{PROG}: warning: {msg}", file=sys.stderr)


def one_line(s):
    return " ".join(str(s).split())


# ----------------------------------------------------------------------------------------------
# Reading records


class Record:
    """One input record: where it came from (for messages), its data, its global index."""

    __slots__ = ("where", "data", "index")

    def __init__(self, where, data, index):
        self.where, self.data, self.index = where, data, index


def _split_path_arg(arg):
    """'DIR:split' -> (DIR, split) when DIR is a directory and arg itself is not a path."""
    if not os.path.exists(arg) and ":" in arg:
        head, tail = arg.rsplit(":", 1)
        if os.path.isdir(head) and tail:
            return head, tail
    return arg, None


def _read_jsonl_lines(path, text):
    # Records end at "\n" only: str.splitlines() also breaks at U+2028, U+2029, U+0085 and other
    # characters that json.dumps(ensure_ascii=False) leaves raw inside strings.
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{lineno}: invalid JSON: {e.msg} (column {e.colno})")
        yield f"{path}:{lineno}", obj


def _read_json_file(path):
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            with open(path, "rb") as f:
                raw = f.read()
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or e}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise InputError(f"{path}:{line}: not valid UTF-8")
    digest = hashlib.sha256(raw).hexdigest()[:16]
    if text.startswith("\ufeff"):  # a UTF-8 byte-order mark, as some editors write
        text = text[1:]
    stripped = text.lstrip()
    if (path.endswith(".json") or path.endswith(".json.gz")) and stripped.startswith("["):
        try:
            arr = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{e.lineno}: invalid JSON: {e.msg} (column {e.colno})")
        return [(f"{path}[{i}]", obj) for i, obj in enumerate(arr)], f"sha256:{digest}"
    return list(_read_jsonl_lines(path, text)), f"sha256:{digest}"


def _import_datasets(path):
    try:
        import datasets  # noqa: F401
    except ImportError:
        raise InputError(f"{path}: reading Hugging Face datasets needs the `datasets` package "
                         "(pip install datasets), or convert it to JSONL")
    datasets.disable_progress_bar()
    try:
        datasets.logging.set_verbosity_error()
    except Exception:
        pass
    return datasets


def _read_hf(path, split, default_split):
    datasets = _import_datasets(path)
    try:
        if os.path.isdir(path):
            ds = datasets.load_from_disk(path)
        else:
            ds = datasets.load_dataset("parquet", data_files=path, split="train")
    except Exception as e:
        raise InputError(f"{path}: cannot load as a Hugging Face dataset: {one_line(e)}")
    if isinstance(ds, datasets.DatasetDict):
        want = split or default_split
        if want not in ds:
            raise InputError(f"{path}: no split '{want}' in this DatasetDict (it has "
                             f"{', '.join(sorted(ds.keys()))}); name one as {path}:SPLIT")
        ds, name = ds[want], f"{path}:{want}"
    else:
        if split:
            raise InputError(f"{path}: a single Dataset has no split '{split}'")
        name = path
    return [(f"{name}[row {i}]", row) for i, row in enumerate(ds)], f"{len(ds)} rows"


def read_records(arg, default_split="train"):
    """All records of one input argument as [(where, dict)], plus a provenance string."""
    path, split = _split_path_arg(arg)
    if not os.path.exists(path):
        raise InputError(f"{arg}: no such file or directory")
    if os.path.isdir(path) or path.endswith(".parquet"):
        items, prov = _read_hf(path, split, default_split)
    elif path.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz", ".ndjson")):
        items, prov = _read_json_file(path)
    else:
        raise InputError(f"{path}: unknown input type (expected .jsonl, .json, .jsonl.gz, .parquet "
                         "or a datasets directory saved with save_to_disk)")
    for where, obj in items:
        if not isinstance(obj, dict):
            raise InputError(f"{where}: expected a JSON object, got {_type_name(obj)}")
    return items, prov


# ----------------------------------------------------------------------------------------------
# Validating and normalizing records


def _type_name(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, (list, tuple)):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def _text(s, where, field):
    """s itself, when it can be encoded as UTF-8 (a lone surrogate such as "\\ud83d" cannot)."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(f"{where}: field '{field}': invalid Unicode ({e.reason}: "
                         f"U+{ord(s[e.start]):04X} at character {e.start})")
    return s


def _messages(value, where, field):
    """Validate a list of chat messages; returns clean [{"role", "content", ...}] dicts."""
    if len(value) == 0:
        raise InputError(f"{where}: field '{field}': empty list of messages")
    out = []
    for j, m in enumerate(value):
        if not isinstance(m, dict):
            raise InputError(f"{where}: field '{field}[{j}]': expected a message object "
                             f"{{\"role\", \"content\"}}, got {_type_name(m)}")
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str) or not role:
            raise InputError(f"{where}: field '{field}[{j}].role': expected a string, "
                             f"got {_type_name(role)}")
        calls = m.get("tool_calls")
        if content is None and isinstance(calls, (list, tuple)) and len(calls) > 0:
            pass  # a message that only calls tools has no content (the template renders its calls)
        elif not isinstance(content, str):
            hint = " (multimodal content is not supported)" if isinstance(content, (list, dict)) else ""
            raise InputError(f"{where}: field '{field}[{j}].content': expected a string, "
                             f"got {_type_name(content)}{hint}")
        if content is not None:
            _text(content, where, f"{field}[{j}].content")
        # Hugging Face datasets give every message every struct field, None where absent.
        out.append({k: v for k, v in m.items() if v is not None})
    return out


def _value(rec, where, field):
    """A text-or-conversation field: ("text", str) or ("chat", [messages])."""
    if field not in rec or rec[field] is None:
        raise InputError(f"{where}: missing field '{field}'")
    v = rec[field]
    if isinstance(v, str):
        return "text", _text(v, where, field)
    if isinstance(v, (list, tuple)):
        return "chat", _messages(list(v), where, field)
    raise InputError(f"{where}: field '{field}': expected a string or a list of messages, "
                     f"got {_type_name(v)}")


def extract_prompt_text(chosen, rejected):
    """TRL's extract_prompt for strings: the shared leading characters are the prompt; if the
    character before the first difference is a space, the space goes to the responses.

    Differences from TRL (documented): when one string is a prefix of the other the prompt is the
    whole shorter string (TRL's loop leaves the last character out), and a first difference at
    position 0 gives an empty prompt (TRL's index -1 would look at the last character)."""
    n = min(len(chosen), len(rejected))
    idx = n
    for i in range(n):
        if chosen[i] != rejected[i]:
            idx = i
            break
    if idx > 0 and chosen[idx - 1] == " ":
        idx -= 1
    return chosen[:idx], chosen[idx:], rejected[idx:]


def extract_prompt_chat(chosen, rejected):
    """TRL's extract_prompt for conversations: the shared leading messages are the prompt."""
    n = min(len(chosen), len(rejected))
    idx = n
    for i in range(n):
        if chosen[i] != rejected[i]:
            idx = i
            break
    return chosen[:idx], chosen[idx:], rejected[idx:]


class Example:
    """A normalized record: kind "text" or "chat", prompt and responses in that kind."""

    __slots__ = ("rec", "kind", "prompt", "responses", "implicit", "quality", "columns")

    def __init__(self, rec, kind, prompt, responses, implicit=False):
        self.rec, self.kind, self.prompt, self.responses = rec, kind, prompt, responses
        self.implicit = implicit
        self.quality, self.columns = None, {}


class Dropped(Exception):
    """An example left out with a warning (counted by reason)."""


def _number(rec, where, field):
    v = rec.get(field)
    if v is None:
        raise InputError(f"{where}: missing field '{field}'")
    if isinstance(v, bool) or not isinstance(v, (int, float)) and not _is_np_number(v):
        raise InputError(f"{where}: field '{field}': expected a number, got {_type_name(v)}")
    v = float(v)
    if not math.isfinite(v):
        raise InputError(f"{where}: field '{field}': not a finite number ({v})")
    return v


def _is_np_number(v):
    try:
        import numpy as np
    except ImportError:
        return False
    return isinstance(v, (np.integer, np.floating))


def parse_pair(r):
    """A preference record -> Example (TRL's maybe_extract_prompt decides explicit vs implicit)."""
    rec, where = r.data, r.where
    ck, chosen = _value(rec, where, "chosen")
    rk, rejected = _value(rec, where, "rejected")
    if ck != rk:
        raise InputError(f"{where}: field 'rejected': is {'a string' if rk == 'text' else 'a list of messages'}"
                         f" but 'chosen' is {'a string' if ck == 'text' else 'a list of messages'}")
    prompt = None
    if rec.get("prompt") is not None:
        pk, p = _value(rec, where, "prompt")
        # TRL: a prompt of the other kind than the responses (e.g. a string prompt with full
        # conversations as responses) is ignored and the prompt is extracted from the responses.
        if pk == ck:
            prompt = p
    if prompt is not None:
        return Example(r, ck, prompt, [chosen, rejected])
    if chosen == rejected:
        raise Dropped("chosen and rejected identical (no response to extract a prompt from)")
    if ck == "text":
        p, c, rj = extract_prompt_text(chosen, rejected)
    else:
        p, c, rj = extract_prompt_chat(chosen, rejected)
        if not p:
            raise InputError(f"{where}: fields 'chosen'/'rejected': the conversations share no "
                             "leading messages, so no prompt can be extracted (give a 'prompt')")
        if not c or not rj:
            raise Dropped("a conversation is a prefix of the other (empty response)")
    return Example(r, ck, p, [c, rj], implicit=True)


def parse_sft(r):
    rec, where = r.data, r.where
    if rec.get("messages") is not None:
        v = rec["messages"]
        if not isinstance(v, (list, tuple)):
            raise InputError(f"{where}: field 'messages': expected a list of messages, "
                             f"got {_type_name(v)}")
        msgs = _messages(list(v), where, "messages")
        if msgs[-1]["role"] != "assistant":
            raise InputError(f"{where}: field 'messages': the last message has role "
                             f"'{msgs[-1]['role']}'; it must be the assistant's answer")
        if len(msgs) < 2:
            raise InputError(f"{where}: field 'messages': needs a prompt message before the answer")
        return Example(r, "chat", msgs[:-1], [msgs[-1:]])
    if rec.get("completion") is not None or rec.get("prompt") is not None:
        pk, p = _value(rec, where, "prompt")
        ck, c = _value(rec, where, "completion")
        if pk != ck:
            raise InputError(f"{where}: field 'completion': is {'a string' if ck == 'text' else 'a list of messages'}"
                             f" but 'prompt' is {'a string' if pk == 'text' else 'a list of messages'}")
        return Example(r, pk, p, [c])
    if rec.get("text") is not None:
        v = rec["text"]
        if not isinstance(v, str):
            raise InputError(f"{where}: field 'text': expected a string, got {_type_name(v)}")
        return Example(r, "text", "", [v])
    raise InputError(f"{where}: missing field 'messages' (or 'prompt' and 'completion', or 'text')")


# ----------------------------------------------------------------------------------------------
# Tokenization


class Tok:
    """The model's tokenizer plus the conventions used here."""

    def __init__(self, path, chat_template=None):
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
        try:
            import transformers
            from transformers import AutoTokenizer
        except ImportError:
            raise InputError("the `transformers` package is needed (pip install transformers)")
        try:
            transformers.logging.set_verbosity_error()
        except Exception:
            pass
        if os.path.exists(path) and not os.path.isdir(path):
            raise InputError(f"{path}: --tokenizer must be a directory (the model's or tokenizer's)")
        # Everything is local: a name that is no directory is looked up in the Hugging Face cache only
        # (without it, transformers would try the Hub, retrying for most of a minute offline).
        local = os.path.isdir(path)
        try:
            self.tok = AutoTokenizer.from_pretrained(path, **({} if local else {"local_files_only": True}))
        except Exception as e:
            why = (one_line(e) if local else "no such directory, and no download of that name in the "
                   "Hugging Face cache (prepare_data.py does not download)")
            raise InputError(f"{path}: cannot load the tokenizer: {why}")
        if chat_template is not None:
            try:
                with open(chat_template, encoding="utf-8") as f:
                    self.tok.chat_template = f.read()
            except OSError as e:
                raise InputError(f"{chat_template}: cannot read the chat template: {e.strerror or e}")
        self.path = path
        self.tools = None  # --tools: the tool schemas every conversational record is rendered with
        self.vocab_size = len(self.tok)
        self.bos = self._id(self.tok.bos_token_id)
        self.eos = self._id(self.tok.eos_token_id)
        self.pad = self._id(self.tok.pad_token_id)
        self.prefix = self._special_prefix()

    @staticmethod
    def _id(v):
        return -1 if v is None else int(v)

    def _special_prefix(self):
        """The special tokens this tokenizer puts before a text (add_special_tokens=True), e.g.
        [BOS] for Llama and Mistral, [] for Qwen2: found by encoding a probe both ways."""
        probe = "Hello world"
        with_sp = list(self.tok(probe, add_special_tokens=True)["input_ids"])
        plain = list(self.tok(probe, add_special_tokens=False)["input_ids"])
        for k in range(len(with_sp) - len(plain) + 1):
            if with_sp[k:k + len(plain)] == plain:
                return with_sp[:k]
        return []

    def ends_turn_with_eos(self, ids):
        """True when ids end with EOS, or with EOS and then only whitespace (a template that ends a
        turn with EOS and a newline, as Qwen2's `<|im_end|>` + `\\n`)."""
        if self.eos not in ids:
            return False
        last = len(ids) - 1 - ids[::-1].index(self.eos)
        return self.tok.decode(ids[last + 1:]).strip() == ""

    def has_chat_template(self):
        return bool(getattr(self.tok, "chat_template", None))

    def encode(self, texts):
        out = []
        for i in range(0, len(texts), TOKENIZE_BATCH):
            enc = self.tok(texts[i:i + TOKENIZE_BATCH], add_special_tokens=False)["input_ids"]
            out.extend(list(map(int, ids)) for ids in enc)
        return out

    def render(self, messages, where, **kw):
        try:
            s = self.tok.apply_chat_template(messages, tokenize=False, **kw)
        except Exception as e:
            raise InputError(f"{where}: the chat template failed: {one_line(e)}")
        if not isinstance(s, str):
            raise InputError(f"{where}: the chat template returned {_type_name(s)}, not text")
        return s


def record_tools(rec, where, default):
    """The tool schemas a conversational record is rendered with: its own `tools` field (a list, or a
    JSON string holding one, as Hugging Face datasets often store it), else --tools (or None)."""
    v = rec.get("tools")
    if v is None:
        return default
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except json.JSONDecodeError as e:
            raise InputError(f"{where}: field 'tools': a string that is not JSON ({e.msg})")
    if not isinstance(v, (list, tuple)) or not all(isinstance(t, dict) for t in v):
        raise InputError(f"{where}: field 'tools': expected a list of tool objects, got {_type_name(v)}")
    return list(v)


def chat_texts(tok, ex, stats=None):
    """TRL's apply_chat_template for one example -> (prompt text, [response texts])."""
    where = ex.rec.where
    tools = record_tools(ex.rec.data, where, tok.tools)
    last = ex.prompt[-1]["role"]
    if last == "assistant":
        kw = {"continue_final_message": True}
    else:
        kw = {"add_generation_prompt": True}
    if tools is not None:
        kw["tools"] = tools
    prompt = tok.render(ex.prompt, where, **kw)
    fulls = [tok.render(ex.prompt + resp, where, **({"tools": tools} if tools is not None else {}))
             for resp in ex.responses]
    # A template may add text to the generation prompt that the rendered conversation does not
    # hold (DeepSeek-R1's "<think>\n"): the prompt is then the longest prefix the prompt alone and
    # every prompt + response share, as TRL's maybe_apply_chat_template takes it (counted).
    if not all(f.startswith(prompt) for f in fulls):
        n = len(os.path.commonprefix([prompt] + fulls))
        if stats is not None:
            stats["prompts cut to the prefix the responses share (the template's generation prompt differs)"] += 1
        prompt = prompt[:n]
    return prompt, [f[len(prompt):] for f in fulls]


class Limits:
    def __init__(self, max_prompt_length, max_length, max_completion_length, mode):
        self.mpl = max_prompt_length or None
        self.ml = max_length or None
        self.mcl = max_completion_length or None
        self.mode = mode

    def describe(self):
        n = lambda v: "none" if v is None else str(v)  # noqa: E731
        keep = "last" if self.mode == "keep_end" else "first"
        return (f"truncation: prompt -> its {keep} max_prompt_length={n(self.mpl)} tokens "
                f"(truncation_mode={self.mode}); each response -> its first "
                f"max_completion_length={n(self.mcl)} tokens; then if prompt + longer response > "
                f"max_length={n(self.ml)}, each response -> its first (max_length - prompt) tokens "
                "(a cut response loses its EOS); pairs with an empty response are dropped")


def truncate(prompt, responses, lim, stats):
    if lim.mpl is not None and len(prompt) > lim.mpl:
        prompt = prompt[-lim.mpl:] if lim.mode == "keep_end" else prompt[:lim.mpl]
        stats["prompts truncated"] += 1
    cut = False
    if lim.mcl is not None and any(len(r) > lim.mcl for r in responses):
        responses = [r[:lim.mcl] for r in responses]
        cut = True
    if lim.ml is not None and len(prompt) + max(len(r) for r in responses) > lim.ml:
        budget = max(lim.ml - len(prompt), 0)
        responses = [r[:budget] for r in responses]
        cut = True
    if cut:
        stats["examples with responses truncated"] += 1
    return prompt, responses


def tokenize_examples(tok, examples, lim, stats, drops):
    """-> list of (example, prompt ids, [response ids]) for the examples that survive."""
    import numpy as np
    ptexts, rtexts, kinds = [], [], []
    for ex in examples:
        if ex.kind == "chat":
            p, rs = chat_texts(tok, ex, stats)
        else:
            p, rs = ex.prompt, ex.responses
        ptexts.append(p)
        rtexts.extend(rs)
        kinds.append(ex.kind)
    pids = tok.encode(ptexts)
    rids = tok.encode(rtexts)
    out, k = [], 0
    for ex, p, kind in zip(examples, pids, kinds):
        n = len(ex.responses)
        rs = rids[k:k + n]
        k += n
        if kind == "text":
            # The tokenizer's prefix (BOS), unless the text already starts with it ("<s>[INST] ...").
            if p[:len(tok.prefix)] != tok.prefix:
                p = tok.prefix + p
            # A text that already ends with EOS keeps one (as TRL's add_eos).
            if tok.eos >= 0:
                rs = [r if r and r[-1] == tok.eos else r + [tok.eos] for r in rs]
        elif tok.eos >= 0:
            # EOS is appended unless the template already ended the turn with it (followed by
            # nothing but whitespace): Qwen2's `<|im_end|>\n` keeps one, not `<|im_end|>\n<|im_end|>`.
            rs = [r if tok.ends_turn_with_eos(r) else r + [tok.eos] for r in rs]
        if len(p) == 0 and n == 2:
            # Nothing before the responses: their first tokens, which often decide the pair, are
            # predicted from no token and scored by no loss (metapo, as TRL, scores tokens 2..n).
            # (SFT text keeps such examples: it loses one token of many, as TRL's SFT does.)
            drops["empty prompt: the responses' first tokens could not be scored (a tokenizer without BOS)"] += 1
            continue
        p, rs = truncate(p, rs, lim, stats)
        if any(len(r) == 0 for r in rs):
            drops["empty response after truncation"] += 1
            continue
        arrs = [np.asarray(ids, dtype="<i4") for ids in [p] + rs]  # compact: 4 bytes a token
        for arr in arrs:
            if arr.size and (arr.min() < 0 or arr.max() >= tok.vocab_size):
                bad = int(arr[(arr < 0) | (arr >= tok.vocab_size)][0])
                raise InputError(f"{ex.rec.where}: token id {bad} is outside the tokenizer's "
                                 f"vocabulary (size {tok.vocab_size})")
        out.append((ex, arrs[0], arrs[1:]))
    return out


# ----------------------------------------------------------------------------------------------
# Splitting


def split_key(ex, by):
    """Canonical text of what decides the example's split."""
    if by == "prompt":
        obj = {"prompt": ex.prompt}
    else:
        obj = {"prompt": ex.prompt, "chosen": ex.responses[0], "rejected": ex.responses[1]}
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def split_hash(key, seed):
    h = hashlib.blake2b(key.encode("utf-8"), digest_size=8,
                        key=f"metapo-split:{seed}".encode("utf-8"))
    return int.from_bytes(h.digest(), "little") / 2.0**64


# ----------------------------------------------------------------------------------------------
# Writing


def _ragged(seqs):
    import numpy as np
    offsets = np.zeros(len(seqs) + 1, dtype="<i8")
    if seqs:
        offsets[1:] = np.cumsum([len(x) for x in seqs])
    flat = np.concatenate(seqs).astype("<i4") if seqs else np.zeros(0, dtype="<i4")
    return flat, offsets


def write_h5(path, attrs, pair_splits, sft):
    """The file is built in memory and then written with plain writes: HDF5 writing straight to a
    disk that fills fails inside its close, where h5py leaves a half-closed file that crashes the
    interpreter at exit (a segfault, with OUT.partial left behind). A write error here is an OSError
    with its errno, and OUT.partial is removed. (The token lists in memory already take several
    times the file's size.)"""
    import io
    import h5py
    import numpy as np
    image = io.BytesIO()
    with h5py.File(image, "w") as f:
        for k, v in attrs.items():
            f.attrs[k] = np.int64(v) if isinstance(v, int) else v
        for name, rows in pair_splits.items():
            g = f.create_group(name)
            for field, j in (("prompt", 1), ("chosen", 2), ("rejected", 3)):
                flat, off = _ragged([row[j] for row in rows])
                g.create_dataset(f"{field}_tokens", data=flat)
                g.create_dataset(f"{field}_offsets", data=off)
            g.create_dataset("sample_id", data=np.array([row[0] for row in rows], dtype="<i8"))
            if rows and rows[0][4] is not None:
                g.create_dataset("quality", data=np.array([row[4] for row in rows], dtype="<f4"))
            if rows and rows[0][5]:
                cg = g.create_group("columns")
                for c in rows[0][5]:
                    cg.create_dataset(c, data=np.array([row[5][c] for row in rows], dtype="<f4"))
        if sft is not None:
            g = f.create_group("sft")
            for field, j in (("prompt", 1), ("answer", 2)):
                flat, off = _ragged([row[j] for row in sft])
                g.create_dataset(f"{field}_tokens", data=flat)
                g.create_dataset(f"{field}_offsets", data=off)
            g.create_dataset("sample_id", data=np.array([row[0] for row in sft], dtype="<i8"))
    data = image.getbuffer()
    partial = path + ".partial"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)  # the umask decides
        try:
            done = 0
            while done < len(data):
                done += os.write(fd, data[done:done + (64 << 20)])
            os.fsync(fd)  # on the disk before the rename makes it visible
        finally:
            os.close(fd)
        os.replace(partial, path)
    except BaseException:
        try:
            os.remove(partial)
        except OSError:
            pass
        raise


# ----------------------------------------------------------------------------------------------
# Main


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, like every other error
        raise InputError(f"{message} (see --help)")


def parse_args(argv):
    ap = _Parser(
        prog="prepare_data.py",
        description="Tokenize preference data (TRL formats) into a metapo dataset .h5 "
                    "(docs/prepare_data.md).")
    ap.add_argument("inputs", nargs="*", help="preference data: .jsonl/.json/.jsonl.gz/.parquet "
                    "files or datasets directories (DIR or DIR:SPLIT); split into train/val")
    ap.add_argument("--tokenizer", required=True, help="the model (or tokenizer) directory")
    ap.add_argument("--out", required=True, help="the dataset file to write (.h5)")
    ap.add_argument("--val", action="append", default=[], metavar="FILE",
                    help="validation pairs (instead of --val-fraction); repeatable")
    ap.add_argument("--test", action="append", default=[], metavar="FILE",
                    help="test pairs -> /test; repeatable")
    ap.add_argument("--sft", action="append", default=[], metavar="FILE",
                    help="SFT data (prompt/completion, messages or text) -> /sft; repeatable")
    ap.add_argument("--val-fraction", type=float, default=None,
                    help=f"share of the inputs held out as /val (default {DEFAULT_VAL_FRACTION}; "
                         "0 = none)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the split hash (default 0)")
    ap.add_argument("--split-by", choices=("example", "prompt"), default="example",
                    help="hash the whole example (default) or only its prompt, which keeps every "
                         "pair of one prompt in the same split")
    ap.add_argument("--hf-split", default="train",
                    help="split of a DatasetDict directory when none is named (default train)")
    ap.add_argument("--max-prompt-length", type=int, default=DEFAULT_MAX_PROMPT_LENGTH,
                    help=f"prompt tokens kept (default {DEFAULT_MAX_PROMPT_LENGTH}; 0 = no limit)")
    ap.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH,
                    help=f"prompt + response tokens kept (default {DEFAULT_MAX_LENGTH}; 0 = no limit)")
    ap.add_argument("--max-completion-length", type=int, default=0,
                    help="response tokens kept (default 0 = no limit beyond --max-length)")
    ap.add_argument("--truncation-mode", choices=("keep_end", "keep_start"), default="keep_end",
                    help="which end of a long prompt is kept (default keep_end, as TRL)")
    ap.add_argument("--columns", default="", help="numeric fields to keep, comma-separated "
                    "(-> /<split>/columns/<name>, float32)")
    ap.add_argument("--no-add-special-tokens", action="store_true",
                    help="plain-text prompts get no BOS/special prefix (TRL >= 0.12's choice for "
                         "decoder-only models); default: what the tokenizer adds")
    ap.add_argument("--chat-template", metavar="FILE",
                    help="a Jinja chat template to use instead of the tokenizer's")
    ap.add_argument("--tools", metavar="FILE",
                    help="a JSON list of tool schemas the chat template renders with every "
                         "conversational record (as TRL's DPOConfig.tools); a record's own `tools` "
                         "field takes precedence")
    return ap.parse_args(argv)


def check_args(a):
    if not a.inputs and not a.sft and not a.val and not a.test:
        raise InputError("no input: give preference files, or --sft FILE")
    if a.val and a.val_fraction is not None:
        raise InputError("give --val FILE or --val-fraction, not both")
    if a.val_fraction is None:
        a.val_fraction = 0.0 if a.val or not a.inputs else DEFAULT_VAL_FRACTION
    if not 0.0 <= a.val_fraction < 1.0:
        raise InputError(f"--val-fraction must be in [0, 1), got {a.val_fraction}")
    for name in ("max_prompt_length", "max_length", "max_completion_length"):
        if getattr(a, name) < 0:
            raise InputError(f"--{name.replace('_', '-')} must be >= 0 (0 = no limit)")
    if a.max_length and a.max_prompt_length and a.max_prompt_length >= a.max_length:
        warn(f"--max-prompt-length {a.max_prompt_length} leaves no room for a response under --max-length "
             f"{a.max_length}: every pair whose prompt is that long is dropped (set it below --max-length)")
    cols = [c.strip() for c in a.columns.split(",") if c.strip()]
    for c in cols:
        if c in ("quality", "prompt", "chosen", "rejected") or "/" in c or c in (".", ".."):
            raise InputError(f"--columns: '{c}' cannot be a column name"
                             + (" ('quality' is kept automatically)" if c == "quality" else ""))
    if len(set(cols)) != len(cols):
        raise InputError("--columns: a name is repeated")
    a.column_list = cols
    check_out(a)
    a.tool_list = None
    if a.tools is not None:
        try:
            with open(a.tools, encoding="utf-8-sig") as f:
                a.tool_list = json.load(f)
        except OSError as e:
            raise InputError(f"{a.tools}: cannot read --tools: {e.strerror or e}")
        except json.JSONDecodeError as e:
            raise InputError(f"{a.tools}:{e.lineno}: invalid JSON: {e.msg} (column {e.colno})")
        if not isinstance(a.tool_list, list) or not all(isinstance(t, dict) for t in a.tool_list):
            raise InputError(f"{a.tools}: --tools must hold a JSON list of tool objects")
    if a.chat_template is not None and not os.path.isfile(a.chat_template):
        raise InputError(f"{a.chat_template}: cannot read the chat template: "
                         f"{'is a directory' if os.path.isdir(a.chat_template) else 'no such file'}")


def _inside(path, directory):
    """Whether path (existing or not) lies under directory, symbolic links resolved."""
    d = os.path.realpath(directory)
    return os.path.commonpath([os.path.realpath(path), d]) == d


def _is_dataset(path):
    """Whether path is a metapo dataset file (what this tool writes), e.g. an earlier OUT."""
    try:
        import h5py
        with h5py.File(path, "r") as f:
            return f.attrs.get("format") in (FORMAT, FORMAT.encode())
    except Exception:
        return False


def _stale_partial(path):
    """Whether path can be a partial file this tool left: empty, or the start of an HDF5 file."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return False  # unreadable: not this tool's to judge, nor to replace
    return head == b"" or head == b"\x89HDF\r\n\x1a\n"


def check_out(a):
    """--out (and OUT.partial, written first) must not be anything this run reads, nor a file of an
    input or --tokenizer directory other than an earlier dataset file, and its directory must be one
    that can be made and written to: checked before any input is read."""
    if os.path.isdir(a.out):
        raise InputError(f"--out {a.out}: is a directory")
    reads = [("input", _split_path_arg(p)[0]) for p in a.inputs]
    reads += [(f"--{g}", _split_path_arg(p)[0]) for g in ("val", "test", "sft") for p in getattr(a, g)]
    reads += [("--tokenizer", a.tokenizer)]
    if a.chat_template is not None:
        reads.append(("--chat-template", a.chat_template))
    for target in (a.out, a.out + ".partial"):
        if not os.path.exists(target):
            continue
        for what, path in reads:
            if not os.path.exists(path):
                continue  # reported when it is read
            if (os.path.isdir(path) and _inside(target, path) and not _is_dataset(target)
                    or os.path.samefile(target, path)):
                raise InputError(f"--out {a.out}: {'is' if target == a.out else 'its .partial file is'} "
                                 f"{'inside ' if os.path.isdir(path) else ''}{what} {path}; "
                                 "the output must not overwrite what it reads")
    partial = a.out + ".partial"
    if os.path.lexists(partial) and not (os.path.isfile(partial) and not os.path.islink(partial)
                                         and _stale_partial(partial)):
        raise InputError(f"--out {a.out}: {partial} exists and was not left by this tool (it writes {a.out} "
                         "there first); move it away")
    if os.path.exists(a.out) and not os.access(a.out, os.W_OK):
        raise InputError(f"--out {a.out}: is read-only; this tool does not replace it")
    if os.path.exists(a.out) and os.path.getsize(a.out) > 0 and not _is_dataset(a.out):
        raise InputError(f"--out {a.out}: exists and is not a metapo dataset file; this tool replaces only "
                         "a file it wrote (remove it or choose another path)")
    parent = os.path.dirname(os.path.abspath(a.out))
    while not os.path.exists(parent):  # write_h5 makes the missing directories
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise InputError(f"--out {a.out}: cannot write there ({parent} is not a directory)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"--out {a.out}: cannot write there (directory {parent} is not writable)")


def _pair_group(records, cols, drops):
    """Parse the pair records of one input group (the inputs, the --val files or the --test files)
    and attach 'quality' and the --columns fields: each is in every record of the group or in
    none (a split holds a field for all its pairs or not at all)."""
    exs = []
    for r in records:
        try:
            exs.append(parse_pair(r))
        except Dropped as d:
            drops[str(d)] += 1
    for field in ["quality"] + cols:
        have = [ex for ex in exs if ex.rec.data.get(field) is not None]
        if have and len(have) != len(exs):
            lacking = next(ex for ex in exs if ex.rec.data.get(field) is None)
            raise InputError(f"{lacking.rec.where}: missing field '{field}' (other records of "
                             f"these inputs have it, e.g. {have[0].rec.where})")
        for ex in have:
            v = _number(ex.rec.data, ex.rec.where, field)
            if field == "quality":
                ex.quality = v
            else:
                ex.columns[field] = v
    return exs


def run(argv):
    a = parse_args(argv)
    check_args(a)
    try:
        import h5py  # noqa: F401
        import numpy  # noqa: F401
    except ImportError as e:
        raise InputError(f"the `{e.name}` package is needed (pip install h5py numpy)")

    # Read everything first: the sample id is the record's index in the concatenation of the
    # inputs, then --val, then --test, then --sft files, in command-line order.
    groups = {"pool": a.inputs, "val": a.val, "test": a.test, "sft": a.sft}
    records, provenance, index = {}, [], 0
    for gname, paths in groups.items():
        records[gname] = []
        for p in paths:
            items, prov = read_records(p, a.hf_split)
            provenance.append(f"{gname if gname != 'pool' else 'input'} {p}: {len(items)} records, {prov}")
            for where, obj in items:
                records[gname].append(Record(where, obj, index))
                index += 1

    stats, drops = Counter(), Counter()
    pair_exs = {g: _pair_group(records[g], a.column_list, drops) for g in ("pool", "val", "test")}
    for c in a.column_list:
        if not any(c in ex.columns for g in pair_exs.values() for ex in g):
            raise InputError(f"--columns: no preference record has a field '{c}'")
    sft_exs = []
    for r in records["sft"]:
        sft_exs.append(parse_sft(r))

    tok = Tok(a.tokenizer, a.chat_template)
    tok.tools = a.tool_list
    if a.no_add_special_tokens:
        tok.prefix = []
    all_ex = [ex for g in ("pool", "val", "test") for ex in pair_exs[g]] + sft_exs
    chat_ex = next((ex for ex in all_ex if ex.kind == "chat"), None)
    if chat_ex is not None and not tok.has_chat_template():
        raise InputError(f"{chat_ex.rec.where}: conversational record, but the tokenizer in "
                         f"{a.tokenizer} has no chat template (give --chat-template FILE)")
    if tok.eos < 0:
        warn(f"the tokenizer in {a.tokenizer} has no EOS token: responses get none appended")

    lim = Limits(a.max_prompt_length, a.max_length, a.max_completion_length, a.truncation_mode)
    tokenized = {g: tokenize_examples(tok, pair_exs[g], lim, stats, drops)
                 for g in ("pool", "val", "test")}
    sft_rows = None
    if a.sft:
        sft_rows = [(ex.rec.index, p, rs[0])
                    for ex, p, rs in tokenize_examples(tok, sft_exs, lim, stats, drops)]

    def row(t):
        ex, p, rs = t
        return (ex.rec.index, p, rs[0], rs[1], ex.quality, ex.columns)

    splits = {}
    pool = tokenized["pool"]
    if a.val_fraction > 0 and pool:
        hashes = [split_hash(split_key(t[0], a.split_by), a.seed) for t in pool]
        is_val = [h < a.val_fraction for h in hashes]
        if not any(is_val) and len(pool) >= 2:
            # Too few examples for the fraction to pick one: the smallest hash goes to val.
            is_val[min(range(len(pool)), key=hashes.__getitem__)] = True
            warn(f"--val-fraction {a.val_fraction} of {len(pool)} pairs selects none; "
                 "holding out 1 pair as /val")
        if all(is_val):
            raise InputError(f"--val-fraction {a.val_fraction}: every one of the {len(pool)} "
                             "pairs fell into /val; give more data or a smaller fraction")
        splits["train"] = [row(t) for t, v in zip(pool, is_val) if not v]
        splits["val"] = [row(t) for t, v in zip(pool, is_val) if v]
    elif a.inputs:
        splits["train"] = [row(t) for t in pool]
    if a.val:
        splits["val"] = [row(t) for t in tokenized["val"]]
    if a.test:
        splits["test"] = [row(t) for t in tokenized["test"]]
    # An empty split is no dataset: nothing is written (metapo refuses empty splits it needs anyway).
    total = sum(len(rows) for rows in splits.values())
    for name, rows in splits.items():
        if not rows:
            dropped = "".join(f"; dropped {n} ({k})" for k, n in sorted(drops.items()))
            raise InputError(f"/{name} would hold no pairs (nothing written): {total} pair(s) kept in all"
                             f"{dropped or '; the inputs hold no records'}")
    if a.inputs and "val" not in splits:
        warn("no /val split (--val-fraction 0 and no --val): metapo train needs one")

    argv_text = " ".join(shlex.quote(x) for x in argv)
    split_rule = (f"split: /val = pairs whose blake2b-64 hash (seed {a.seed}, by {a.split_by}) / 2^64"
                  f" < val_fraction={a.val_fraction}" if a.val_fraction > 0
                  else "split: /val from --val files" if a.val else "split: none")
    counts = ", ".join(f"{k}={len(v)}" for k, v in splits.items())
    if sft_rows is not None:
        counts += (", " if counts else "") + f"sft={len(sft_rows)}"
    prefix_desc = ("special prefix " + str(tok.prefix)) if tok.prefix else "no special prefix"
    source_lines = [
        f"prepare_data.py {FORMAT} v{FORMAT_VERSION}: {argv_text}",
        *provenance,
        f"tokenizer: {a.tokenizer} (vocab {tok.vocab_size}; plain-text prompts get the tokenizer's "
        f"{prefix_desc}; responses end with EOS {tok.eos}; conversational records use the chat "
        f"template, prompt with add_generation_prompt=True)",
        *([f"tools: {len(a.tool_list)} tool schema(s) from {a.tools} rendered with every conversational "
            "record without a `tools` field of its own"] if a.tool_list is not None else []),
        lim.describe(),
        split_rule + "; sample_id = index of the record in inputs, --val, --test, --sft order",
        f"written: {counts}" + "".join(f"; dropped {n} ({k})" for k, n in sorted(drops.items())),
    ]
    attrs = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tokenizer": a.tokenizer,
        "vocab_size": tok.vocab_size,
        "bos_token_id": tok.bos,
        "eos_token_id": tok.eos,
        "pad_token_id": tok.pad,
        "task": "",
        "source": "\n".join(source_lines),
    }
    try:
        write_h5(a.out, attrs, splits, sft_rows)
    except OSError as e:
        raise InputError(f"{a.out}: cannot write: {e.strerror or one_line(e)}")

    for k, n in sorted(drops.items()):
        warn(f"dropped {n} example(s): {k}")
    for k, n in sorted(stats.items()):
        print(f"{k}: {n}")
    print(f"wrote {a.out}: {counts}")
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return run(argv)
    except InputError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug or an unexpected library error: still one line
        if os.environ.get("PREPARE_DATA_DEBUG"):
            raise
        print(f"{PROG}: error: internal error: {type(e).__name__}: {one_line(e)} "
              "(PREPARE_DATA_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
