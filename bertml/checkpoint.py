"""A checkpoint is a self-describing folder that plain `transformers` can load.

    config.json          labels (id2label), problem_type
    model.safetensors    weights (safetensors only; pickle is refused)
    tokenizer files      tokenizer.json, tokenizer_config.json, ...
    bertml.json          ordered labels, per-label thresholds, max_length, problem type,
                         the resolved training config and final metrics

`validate` checks everything `load` will need before any Ray work starts (every file
present and parsable, the weights file complete, tokenizer and embeddings from one model,
a tokenizer that reads text), so a bad checkpoint gives one clear error instead of a
traceback from inside an actor, or silently wrong tags.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from bertml.labels import LabelSet


def position_limit(hf_config: dict) -> int | None:
    """Longest sequence the encoder's position embeddings allow (from config.json)."""
    n = hf_config.get("max_position_embeddings")
    if not n:
        return None
    # RoBERTa-style models reserve padding_idx + 1 positions.
    if hf_config.get("model_type") in ("roberta", "xlm-roberta", "camembert"):
        n -= (hf_config.get("pad_token_id") or 1) + 1
    return int(n)


META_FILE = "bertml.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
FORMAT_VERSION = 1

log = logging.getLogger("bertml.checkpoint")

# Slow-tokenizer vocabularies transformers can rebuild a tokenizer from without tokenizer.json.
VOCAB_FILES = ("vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model", "sentencepiece.model",
               "tokenizer.model")
# Fewer entries than this is not a text vocabulary: transformers builds a 5-token one (the
# special tokens) from tokenizer_config.json alone when tokenizer.json is gone.
MIN_VOCAB = 100
# One short sentence per script. A healthy tokenizer reads at least one of them as mostly
# known tokens (a Chinese BERT the Chinese one, an English WordPiece the English one).
SAMPLES = {
    "English": "The market report said prices rose in the city today.",
    "Chinese": "今天城市新闻报道了一场足球比赛。",
    "Japanese": "今日は東京で新しい会議がありました。",
    "Korean": "오늘 도시에서 새로운 시장이 열렸다.",
    "Russian": "Сегодня в городе открылся новый рынок.",
    "Arabic": "أعلنت الحكومة عن خطة جديدة اليوم.",
    "Hindi": "आज शहर में एक नया बाज़ार खुला।",
    "Greek": "Σήμερα άνοιξε μια νέα αγορά στην πόλη.",
}
MAX_UNKNOWN_SHARE = 0.5
# Safetensors names of the input embeddings and the classification head, across families.
_EMBEDDING_SUFFIXES = ("word_embeddings.weight", "tok_embeddings.weight", "embed_tokens.weight")
_HEAD_NAMES = ("classifier.out_proj.weight", "classifier.weight", "score.weight")


class CheckpointError(ValueError):
    """The checkpoint folder is missing something or contradicts itself."""


@dataclass
class CheckpointMeta:
    """Contents of bertml.json."""

    labels: list[str]
    problem_type: str  # "multi_label" | "single_label"
    max_length: int
    thresholds: list[float] | None  # per label, multi-label only
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def multi_label(self) -> bool:
        return self.problem_type == "multi_label"

    @property
    def label_set(self) -> LabelSet:
        return LabelSet(tuple(self.labels), self.multi_label)

    def validate(self, where: str) -> None:
        if self.problem_type not in ("multi_label", "single_label"):
            raise CheckpointError(f"{where}: problem_type must be multi_label or single_label, got {self.problem_type!r}")
        if not isinstance(self.labels, list) or not self.labels:
            raise CheckpointError(f"{where}: labels must be a non-empty list of label names, got {self.labels!r}")
        bad = [n for n in self.labels if not isinstance(n, str) or not n.strip()]
        if bad:
            hint = f" (e.g. \"{bad[0]}\")" if not isinstance(bad[0], str) else ""
            raise CheckpointError(f"{where}: labels must be non-empty strings, got {bad[0]!r}; write every label "
                                  f"name as a JSON string{hint}")
        if len(set(self.labels)) != len(self.labels):
            dup = next(n for n in self.labels if self.labels.count(n) > 1)
            raise CheckpointError(f"{where}: labels must be distinct names; {dup!r} is listed twice")
        if not self.multi_label and len(self.labels) < 2:
            raise CheckpointError(f"{where}: a single_label checkpoint needs at least 2 classes, got {self.labels!r}; "
                                  "a binary tagger is multi_label with one label")
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or not 1 <= self.max_length <= 512:
            raise CheckpointError(f"{where}: max_length must be an integer in [1, 512], got {self.max_length!r}")
        if self.multi_label:
            t = self.thresholds
            if t is None or len(t) != len(self.labels):
                raise CheckpointError(
                    f"{where}: thresholds must list one value per label ({len(self.labels)}), got {t!r}"
                )
            bad = [(n, v) for n, v in zip(self.labels, t)
                   if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or not 0.0 <= v <= 1.0]
            if bad:
                raise CheckpointError(f"{where}: thresholds must be in [0, 1]; label {bad[0][0]!r} has {bad[0][1]!r}")


def write_meta(path: str, meta: CheckpointMeta) -> None:
    from bertml.secrets import redact

    meta.validate(path)
    with open(os.path.join(path, META_FILE), "w", encoding="utf-8") as f:
        json.dump(redact(asdict(meta)), f, indent=2, ensure_ascii=False)  # no credentials from URIs


def _read_json(path: str, what: str) -> dict:
    """A JSON object from `path`, or one CheckpointError naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not a valid {what} (not JSON: {e}); the file is damaged: copy it again "
                              "from the training run's checkpoint") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a valid {what} (expected a JSON object, got a {type(data).__name__}); "
                              "copy it again from the training run's checkpoint")
    return data


def read_meta(path: str) -> CheckpointMeta:
    """Read and check bertml.json and config.json beside it (no weights or tokenizer loaded)."""
    return _read_meta(path)[0]


def _read_meta(path: str) -> tuple[CheckpointMeta, dict]:
    """(bertml.json, config.json as a dict), both checked."""
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path}: not a folder (expected the output of `bertml train`)")
    meta_path = os.path.join(path, META_FILE)
    if not os.path.exists(meta_path):
        raise CheckpointError(
            f"checkpoint {path}: no {META_FILE}; this is not a bertml checkpoint (train one with "
            "`bertml train`, or re-tune thresholds with `bertml thresholds` to write one)"
        )
    if not os.path.exists(os.path.join(path, WEIGHTS_FILE)):
        pickled = [f for f in ("pytorch_model.bin", "model.pt", "model.bin") if os.path.exists(os.path.join(path, f))]
        hint = f" Found {pickled[0]}: pickle-based weights are refused for safety." if pickled else ""
        raise CheckpointError(f"checkpoint {path}: no {WEIGHTS_FILE}.{hint} bertml loads safetensors weights only.")
    if not os.path.exists(os.path.join(path, "config.json")):
        raise CheckpointError(f"checkpoint {path}: no config.json")
    raw = _read_json(meta_path, META_FILE)
    try:
        meta = CheckpointMeta(**{k: v for k, v in raw.items() if k in CheckpointMeta.__dataclass_fields__})
    except TypeError as e:
        raise CheckpointError(f"{meta_path}: not a valid bertml.json ({e})") from None
    meta.validate(meta_path)
    hf = _read_json(os.path.join(path, "config.json"), "config.json")
    n_head = len(hf.get("id2label") or {}) or hf.get("num_labels")
    if n_head and n_head != len(meta.labels):
        raise CheckpointError(
            f"checkpoint {path}: {META_FILE} lists {len(meta.labels)} labels but the model head "
            f"(config.json) has {n_head} outputs; the files come from different runs"
        )
    limit = position_limit(hf)
    if limit and meta.max_length > limit:
        raise CheckpointError(f"checkpoint {path}: max_length {meta.max_length} exceeds the model's limit of {limit} tokens")
    return meta, hf


def validate(path: str, trust_remote_code: bool = False, remember: bool = True) -> CheckpointMeta:
    """Everything `load` needs, checked from file headers and a meta-device model (no weights read).

    bertml.json and config.json (as `read_meta`); the safetensors header, every tensor lying
    within the file (a truncated copy fails here), the embeddings matching config.json's
    vocab_size, the head matching the labels, every tensor of the model config.json builds
    present with its shape; the tokenizer loading as transformers will
    load it, with a real vocabulary, token ids the embeddings cover, and at least one sample
    sentence read as mostly known tokens. Raises CheckpointError naming the file.

    A passed model build is remembered in BERTML_CACHE (see `_model_check_marker`) unless
    `remember` is false: a caller that may still refuse the run calls `remember_checked`
    once it has accepted it, so a refused run leaves nothing behind.
    """
    meta, hf = _read_meta(path)
    shapes = _weight_shapes(os.path.join(path, WEIGHTS_FILE))
    rows = _check_weights(path, hf, shapes, meta)
    passed = None if trust_remote_code else _model_check_marker(path, shapes)
    if passed is None or not os.path.exists(passed):
        _check_model(path, shapes, trust_remote_code)
    _check_tokenizer(path, rows, trust_remote_code)
    if remember:
        _mark(passed)
    return meta


def remember_checked(path: str, trust_remote_code: bool = False) -> None:
    """Remember that `validate(path, remember=False)` passed (call only after it did)."""
    if not trust_remote_code:
        _mark(_model_check_marker(path, _weight_shapes(os.path.join(path, WEIGHTS_FILE))))


def _cache_root() -> str:
    return os.environ.get("BERTML_CACHE", os.path.expanduser("~/.cache/bertml"))


def _model_check_marker(path: str, shapes: dict[str, list[int]]) -> str | None:
    """Where a passed `_check_model` is remembered: named by everything it reads (config.json,
    the weights' tensor names and shapes, the transformers release), so the same checkpoint
    is not built again each night (importing the model's code costs ~4 s of CPU) and any
    change to one of them checks again. None: config.json unreadable (the check will say)."""
    import transformers

    try:
        with open(os.path.join(path, "config.json"), "rb") as f:
            config = f.read()
    except OSError:
        return None
    h = hashlib.sha256(config)
    h.update(json.dumps([sorted(shapes.items()), transformers.__version__]).encode())
    return os.path.join(_cache_root(), "checked", h.hexdigest()[:32])


def _mark(marker: str | None) -> None:
    if marker is None:
        return
    try:
        os.makedirs(os.path.dirname(marker), exist_ok=True)
        with open(marker, "w", encoding="ascii"):
            pass
    except OSError:  # a read-only cache: check again next time
        pass


def _weight_shapes(weights: str) -> dict[str, list[int]]:
    """Tensor name -> shape from the safetensors header (no tensor data read)."""
    from safetensors import SafetensorError, safe_open

    try:
        # safe_open parses the header and checks that every tensor's byte range fits its
        # dtype and shape and that the ranges cover the file exactly.
        with safe_open(weights, framework="pt") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights}: not a complete safetensors file ({e}); the copy is damaged or "
                              "truncated: copy it again from the training run's checkpoint") from None


def _check_weights(path: str, hf: dict, shapes: dict[str, list[int]], meta: CheckpointMeta) -> int | None:
    """Embedding rows and head outputs in the weights against config.json and bertml.json; returns the rows."""
    weights = os.path.join(path, WEIGHTS_FILE)
    emb = next((k for k in sorted(shapes, key=len) if k.endswith(_EMBEDDING_SUFFIXES)), None)
    rows = shapes[emb][0] if emb and shapes[emb] else None
    vocab = hf.get("vocab_size")
    if rows is not None and isinstance(vocab, int) and vocab != rows:
        raise CheckpointError(f"checkpoint {path}: config.json has vocab_size {vocab} but {WEIGHTS_FILE} "
                              f"({emb}) has {rows} embedding rows; the files come from different models")
    head = next((k for k in _HEAD_NAMES if k in shapes), None)
    if head and shapes[head] and shapes[head][0] != len(meta.labels):
        raise CheckpointError(f"{weights}: the classification head ({head}) has {shapes[head][0]} outputs but "
                              f"{META_FILE} lists {len(meta.labels)} labels; the files come from different runs")
    return rows


def _check_model(path: str, shapes: dict[str, list[int]], trust_remote_code: bool) -> None:
    """config.json builds a model whose every tensor is in the weights with its shape.

    transformers fills a tensor missing from the file with random values and only logs it,
    so a file from another architecture or with tensors dropped would score noise. The
    model is built on the meta device: no memory, no weights read. bertml checkpoints are
    written by `save_pretrained`, so tensor names match the model's state dict exactly.
    """
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config_path = os.path.join(path, "config.json")
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{config_path}: transformers cannot build this model ({_first_line(e)})") from None
    try:
        with torch.device("meta"):
            model = AutoModelForSequenceClassification.from_config(config, trust_remote_code=trust_remote_code)
    except (ValueError, KeyError) as e:  # no sequence-classification class for this config
        raise CheckpointError(f"{config_path}: transformers cannot build this model ({_first_line(e)})") from None
    except Exception as e:  # noqa: BLE001 - a model that cannot live on the meta device: load() will tell
        log.warning("%s: tensor names not checked (%s)", path, _first_line(e))
        return
    state = model.state_dict(keep_vars=True)  # the parameters themselves: tied ones are one object
    groups: dict[int, list[str]] = {}  # tied tensors (one parameter, several names) are saved once
    for name, tensor in state.items():
        groups.setdefault(id(tensor), []).append(name)
    expected = {name: list(tensor.shape) for name, tensor in state.items()}
    missing = [names[0] for names in groups.values() if not any(n in shapes for n in names)]
    if missing:
        raise CheckpointError(
            f"{os.path.join(path, WEIGHTS_FILE)}: {len(missing)} of the model's {len(groups)} tensors are missing "
            f"({', '.join(missing[:3])}); transformers would fill them with random values. The weights do not match "
            "config.json: copy the checkpoint again from the training run"
        )
    wrong = [(n, shapes[n], want) for n, want in expected.items() if n in shapes and shapes[n] != want]
    if wrong:
        n, got, want = wrong[0]
        raise CheckpointError(f"{os.path.join(path, WEIGHTS_FILE)}: tensor {n} has shape {got} but config.json's "
                              f"model needs {want}; the weights and config.json come from different models")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def _check_tokenizer(path: str, embedding_rows: int | None, trust_remote_code: bool) -> None:
    """The tokenizer loads, is fast, has a real vocabulary that the embeddings cover, and reads text."""
    from transformers import AutoTokenizer

    tj = os.path.join(path, TOKENIZER_FILE)
    if os.path.exists(tj):
        _read_json(tj, TOKENIZER_FILE)
        where = tj
    else:
        vocab_files = [f for f in VOCAB_FILES if os.path.exists(os.path.join(path, f))]
        if not vocab_files:
            raise CheckpointError(
                f"{tj}: missing, and no vocabulary file ({', '.join(VOCAB_FILES)}) to rebuild the tokenizer from "
                "(transformers would build one of special tokens only that reads every word as [UNK]); copy "
                f"{TOKENIZER_FILE} from the training run's checkpoint or the base model"
            )
        where = os.path.join(path, vocab_files[0])
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if os.path.exists(os.path.join(path, name)):
            _read_json(os.path.join(path, name), name)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - tokenizers/transformers raise many types for bad files
        raise CheckpointError(f"{where}: transformers cannot load the tokenizer ({_first_line(e)}); copy the "
                              "tokenizer files again from the training run's checkpoint") from None
    if not getattr(tok, "is_fast", False):
        raise CheckpointError(f"{where}: bertml needs a fast (Rust) tokenizer; save it with a tokenizer.json")
    vocab = tok.get_vocab()
    if len(vocab) < MIN_VOCAB:
        raise CheckpointError(f"{where}: the tokenizer has only {len(vocab)} tokens ({', '.join(sorted(vocab)[:5])}), "
                              "not a text vocabulary: every word would be [UNK]. Copy the tokenizer files "
                              "again from the training run's checkpoint")
    top = max(vocab.values())
    if embedding_rows is not None and top >= embedding_rows:
        raise CheckpointError(f"{where}: the tokenizer has token ids up to {top} but the model's embeddings "
                              f"({WEIGHTS_FILE}) have {embedding_rows} rows; the tokenizer comes from another "
                              "model: use the tokenizer the model was trained with")
    special = set(tok.all_special_ids)
    shares = {}
    for script, text in SAMPLES.items():
        ids = tok(text, add_special_tokens=False)["input_ids"]
        shares[script] = sum(i in special for i in ids) / len(ids) if ids else 1.0
    best = min(shares, key=shares.get)
    if shares[best] > MAX_UNKNOWN_SHARE:
        raise CheckpointError(
            f"{where}: the tokenizer reads sample sentences in {len(SAMPLES)} scripts ({', '.join(SAMPLES)}) as "
            f"mostly [UNK] or special tokens (best: {best}, {shares[best]:.0%}); every row would get the same tags. "
            "Copy the tokenizer files again from the training run's checkpoint"
        )


def check_max_length(path: str, max_length: int) -> None:
    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
        limit = position_limit(json.load(f))
    if limit and max_length > limit:
        raise CheckpointError(f"max_length {max_length} exceeds the model's limit of {limit} tokens ({path})")


def save(path: str, model, tokenizer, meta: CheckpointMeta) -> None:
    """Write a complete checkpoint folder (safetensors weights)."""
    os.makedirs(path, exist_ok=True)
    model = getattr(model, "module", model)  # unwrap DDP
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    write_meta(path, meta)


def load(path: str, trust_remote_code: bool = False):
    """(model in eval mode, tokenizer, meta) from a checkpoint folder."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    meta = read_meta(path)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, use_safetensors=True, trust_remote_code=trust_remote_code
    )
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if model.config.num_labels != len(meta.labels):
        raise CheckpointError(f"checkpoint {path}: head has {model.config.num_labels} outputs, bertml.json {len(meta.labels)} labels")
    return model.eval(), tokenizer, meta


def fingerprint(path: str) -> str:
    """sha256 of the weights and bertml.json: names the exact model that scored a file."""
    h = hashlib.sha256()
    for name in (WEIGHTS_FILE, META_FILE):
        with open(os.path.join(path, name), "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def copy_with_thresholds(src: str, dst: str, thresholds, provenance: dict, overwrite: bool = False) -> CheckpointMeta:
    """Copy checkpoint `src` to `dst` with new per-label thresholds; `src` is never modified.

    `provenance` (where the thresholds came from) is stored as bertml.json
    `metrics.thresholds`. The copy is assembled in a hidden sibling folder and renamed into
    place, so `dst` is either the old folder or the complete new one.
    """
    import dataclasses
    import shutil

    meta = read_meta(src)
    if not meta.multi_label:
        raise CheckpointError(f"checkpoint {src}: single_label checkpoints predict the argmax; there are no thresholds to set")
    from bertml.output import resolved

    a, b = resolved(src), resolved(dst)  # checked and written as the same, resolved, path
    if a == b or os.path.commonpath([a, b]) == a:
        raise CheckpointError(f"output {dst} must be a new folder outside the checkpoint {src} (the original is never modified)")
    if os.path.exists(b) and os.listdir(b) and not overwrite:
        raise CheckpointError(f"output {dst} already exists and is not empty; choose a new folder or set overwrite=true")
    check_destination(dst, "output", [("the checkpoint", src)])
    new = dataclasses.replace(meta, thresholds=[float(t) for t in thresholds],
                              metrics={**meta.metrics, "thresholds": provenance})
    new.validate(dst)
    tmp = sibling_tmp(b)
    try:
        shutil.copytree(a, tmp)
        write_meta(tmp, new)
        install(tmp, b)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return new


def is_uri(path: str) -> bool:
    """True for object-store and other remote URIs (s3://, gs://, hdfs://); False for local
    paths and file:// URIs."""
    return bool(re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", path)) and not path.startswith("file://")


def _remote(uri: str, what: str):
    from bertml.shards import split_uri

    fs, root, _ = split_uri(uri, what, glob=False)
    return fs, root.rstrip("/")


def localize(path: str, cache_dir: str | None = None) -> str:
    """A checkpoint on object storage (s3://, gs://, ...) -> a local copy; local paths unchanged.

    The copy is cached per URI (credentials left out) and the weights' and bertml.json's
    timestamp/size, so every actor on a node downloads a new model once and a re-uploaded
    checkpoint is fetched again. It is downloaded into a hidden sibling folder and renamed
    into place, so a cached copy is always complete.
    """
    if not is_uri(path):
        return os.path.expanduser(path[len("file://"):] if path.startswith("file://") else path)
    import shutil
    import uuid

    import pyarrow.fs as pafs

    from bertml.secrets import redact

    shown = redact(path)
    fs, root = _remote(path, "checkpoint")
    try:
        info, meta = fs.get_file_info([f"{root}/{WEIGHTS_FILE}", f"{root}/{META_FILE}"])
    except OSError as e:
        raise CheckpointError(f"checkpoint {shown}: cannot be read ({redact(str(e).splitlines()[0])})") from None
    if info.type != pafs.FileType.File:
        raise CheckpointError(f"checkpoint {shown}: no {WEIGHTS_FILE} there (bertml loads safetensors weights only)")
    if meta.type != pafs.FileType.File:
        raise CheckpointError(f"checkpoint {shown}: no {META_FILE} there; not a (complete) bertml checkpoint")
    # Weights and bertml.json (thresholds can be re-tuned in place) name the cached copy.
    key = hashlib.sha256(f"{shown}|{info.mtime_ns}|{info.size}|{meta.mtime_ns}|{meta.size}".encode()).hexdigest()[:16]
    cache = cache_dir or os.path.join(_cache_root(), "checkpoints")
    local = os.path.join(cache, key)
    if os.path.exists(os.path.join(local, META_FILE)):
        return local
    os.makedirs(cache, exist_ok=True)
    tmp = os.path.join(cache, f".{key}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.makedirs(tmp)  # pyarrow's copy_files creates no destination folder
    try:
        try:
            pafs.copy_files(root, tmp, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        except OSError as e:
            raise CheckpointError(f"checkpoint {shown}: download failed ({redact(str(e).splitlines()[0])})") from None
        try:
            os.replace(tmp, local)
        except OSError:  # another process on this node finished first: its copy is complete
            if not os.path.exists(os.path.join(local, META_FILE)):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return local


def check_upload_prefix(uri: str, fs=None, root: str | None = None) -> list[str]:
    """The objects of a bertml checkpoint at `uri` that an upload replaces (none: an empty
    prefix). A prefix holding anything else — other files, or a model without bertml.json
    (someone's Hugging Face model, or an upload that did not finish) — is refused, naming a
    file: bertml replaces only its own checkpoints."""
    import pyarrow.fs as pafs

    from bertml.secrets import redact

    if fs is None:
        fs, root = _remote(uri, "checkpoint output")
    try:
        old = [i.path for i in fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
               if i.is_file]
    except OSError as e:
        raise CheckpointError(f"checkpoint output {redact(uri)}: cannot be listed ({redact(str(e).splitlines()[0])})") from None
    if not old:
        return []
    names = sorted(p[len(root) + 1:] for p in old)
    foreign = [n for n in names if "/" in n or not _is_checkpoint_file(n)]
    if foreign or META_FILE not in names:
        why = f"files that are not a bertml checkpoint's (e.g. {foreign[0]})" if foreign else \
            f"a model without {META_FILE} (someone's model, or an upload that did not finish: delete it to retry)"
        raise CheckpointError(f"checkpoint output {redact(uri)} holds {why}; bertml replaces only its own "
                              "checkpoints: choose an empty prefix")
    return old


def upload(local: str, uri: str) -> None:
    """Copy a finished local checkpoint folder to `uri`, replacing the checkpoint there.

    A prefix holding anything but a checkpoint's files (`_is_checkpoint_file`, as for local
    folders) is refused, naming a file. An earlier checkpoint's files are deleted first,
    its bertml.json before anything else, and the new bertml.json is written last: each
    object appears only when its upload completes, so a reader sees no checkpoint, or a
    complete one, never old files beside new ones.
    """
    import pyarrow.fs as pafs


    fs, root = _remote(uri, "checkpoint output")
    old = check_upload_prefix(uri, fs, root)
    old.sort(key=lambda p: p != f"{root}/{META_FILE}")
    for p in old:
        fs.delete_file(p)
    names = sorted(os.listdir(local), key=lambda n: n == META_FILE)
    for name in names:
        src = os.path.join(local, name)
        if os.path.isdir(src):
            pafs.copy_files(src, f"{root}/{name}", source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
        else:
            with open(src, "rb") as f, fs.open_output_stream(f"{root}/{name}") as out:
                _copy_stream(f, out)


def _copy_stream(src, dst, chunk: int = 8 << 20) -> None:
    while block := src.read(chunk):
        dst.write(block)


def prefix_is_empty(uri: str) -> bool:
    """True when nothing is stored under `uri` (an object-store prefix)."""
    import pyarrow.fs as pafs

    fs, root = _remote(uri, "output")
    sel = pafs.FileSelector(root, recursive=True, allow_not_found=True)
    return not any(i.is_file for i in fs.get_file_info(sel))


# ----------------------------------------------------------------------------- destinations

# What a checkpoint folder holds: the files `save_pretrained` writes for the model and its
# tokenizer, and bertml.json. A folder of only these may be replaced by a new checkpoint;
# anything else in it is someone else's.
_CHECKPOINT_FILES = {META_FILE, WEIGHTS_FILE, "model.safetensors.index.json", "config.json", "generation_config.json",
                     "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                     "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model",
                     "tokenizer.model", "source.spm", "target.spm", "chat_template.jinja", "chat_template.json"}
_WEIGHT_SHARD = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")


def _is_checkpoint_file(name: str) -> bool:
    return name in _CHECKPOINT_FILES or _WEIGHT_SHARD.fullmatch(name) is not None


def check_destination(dest: str, what: str, protected: list[tuple[str, str]] = ()) -> None:
    """Refuse a local checkpoint destination that bertml may not replace: the working folder,
    the home folder or an ancestor of either; a folder overlapping one of `protected`
    ((name, path) pairs: training data, the encoder, run storage); a file; a non-empty folder
    that holds anything but one checkpoint's files. Paths are compared resolved."""
    from bertml.output import resolved, within

    real = resolved(dest)
    for name, folder in (("the working folder", os.getcwd()), ("your home folder", os.path.expanduser("~"))):
        if within(resolved(folder), real):
            raise CheckpointError(f"{what} {dest} is or contains {name} ({folder}); bertml replaces that folder "
                                  "as a whole: choose a folder of its own, e.g. checkpoints/model")
    for name, path in protected:
        if path and not is_uri(path):
            other = resolved(path)
            if within(real, other) or within(other, real):
                raise CheckpointError(f"{what} {dest} overlaps {name} {path}; choose a folder outside it")
    if not os.path.lexists(real):
        return
    if not os.path.isdir(real):
        raise CheckpointError(f"{what} {dest} exists and is not a folder; choose a folder path")
    entries = sorted(os.listdir(real))
    if not entries:
        return
    foreign = [e for e in entries if not (os.path.isfile(os.path.join(real, e)) and _is_checkpoint_file(e))]
    if foreign or META_FILE not in entries:
        first = foreign[0] if foreign else entries[0]
        raise CheckpointError(f"{what} {dest} is not empty and does not hold a bertml checkpoint (it has {first!r}"
                              f"{f' and {len(entries) - 1} more' if len(entries) > 1 else ''}); bertml replaces only "
                              "its own checkpoints: choose a new or empty folder")


def install(assembled: str, dest: str) -> None:
    """Move the complete checkpoint folder `assembled` (a sibling of `dest`) to `dest`,
    replacing a checkpoint there: the old one is moved aside, the new one renamed into place,
    the old one removed. Signals wait until both renames are done, so `dest` is never left
    missing by a SIGTERM/SIGINT between them."""
    import shutil
    import signal

    from bertml.output import tmp_name

    old = os.path.join(os.path.dirname(dest), tmp_name(os.path.basename(dest))) if os.path.lexists(dest) else None
    blocked = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        if old:
            os.replace(dest, old)
        try:
            os.replace(assembled, dest)
        except BaseException:
            if old:
                os.replace(old, dest)
            raise
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def sibling_tmp(dest: str) -> str:
    """A hidden temp folder path beside `dest` (same filesystem, so `install` is a rename).
    Temp folders an interrupted run left beside `dest` (bertml's temp name for it, holding a
    bertml.json) are removed first."""
    import shutil

    from bertml.output import is_tmp_name, tmp_name

    parent, base = os.path.split(dest)
    os.makedirs(parent, exist_ok=True)
    for name in os.listdir(parent):
        left = os.path.join(parent, name)
        if (is_tmp_name(name) and name[1:].startswith(base + ".tmp-") and os.path.isdir(left)
                and not os.path.islink(left) and os.path.exists(os.path.join(left, META_FILE))):
            shutil.rmtree(left, ignore_errors=True)
    return os.path.join(parent, tmp_name(base))
