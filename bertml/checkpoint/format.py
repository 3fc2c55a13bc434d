"""The checkpoint format: bertml.json (`CheckpointMeta`) beside the files `save_pretrained`
writes; reading and writing it, and the checks that need no model built."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from bertml.errors import BertmlError

META_FILE = "bertml.json"
PRETRAIN_FILE = "bertml-pretrain.json"  # marks an encoder folder `bertml pretrain` wrote (config, metrics)
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
FORMAT_VERSION = 1

# What a checkpoint folder holds: the files `save_pretrained` writes for the model and its
# tokenizer, and bertml.json (bertml-pretrain.json in an encoder folder from `bertml pretrain`). A folder of only these may be replaced by a new checkpoint;
# anything else in it is someone else's.
_CHECKPOINT_FILES = {META_FILE, PRETRAIN_FILE, WEIGHTS_FILE, "model.safetensors.index.json", "config.json", "generation_config.json",
                     "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                     "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model",
                     "tokenizer.model", "source.spm", "target.spm", "chat_template.jinja", "chat_template.json"}
_WEIGHT_SHARD = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")


def is_checkpoint_file(name: str) -> bool:
    """Whether a file name is one a checkpoint folder holds (see `_CHECKPOINT_FILES`)."""
    return name in _CHECKPOINT_FILES or _WEIGHT_SHARD.fullmatch(name) is not None


def cache_root() -> str:
    """BERTML_CACHE: downloaded checkpoints and passed model checks."""
    return os.environ.get("BERTML_CACHE", os.path.expanduser("~/.cache/bertml"))


class CheckpointError(BertmlError, ValueError):
    """The checkpoint folder is missing something or contradicts itself."""


def position_limit(hf_config: dict) -> int | None:
    """Longest sequence the encoder's position embeddings allow (from config.json)."""
    n = hf_config.get("max_position_embeddings")
    if not n:
        return None
    # RoBERTa-style models reserve padding_idx + 1 positions.
    if hf_config.get("model_type") in ("roberta", "xlm-roberta", "camembert"):
        n -= (hf_config.get("pad_token_id") or 1) + 1
    return int(n)



def check_position_limit(hf_config: dict, max_length: int, where: str, key: str = "max_length") -> None:
    """Refuse a `max_length` longer than the encoder's position embeddings (config.json) allow."""
    limit = position_limit(hf_config)
    if limit and max_length > limit:
        raise CheckpointError(f"{where}: {key} {max_length} exceeds the model's limit of {limit} tokens")


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
    check_position_limit(hf, meta.max_length, f"checkpoint {path}")
    return meta, hf


def check_max_length(path: str, max_length: int) -> None:
    """Refuse a `max_length` the checkpoint's encoder cannot take (its config.json)."""
    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
        check_position_limit(json.load(f), max_length, f"checkpoint {path}")


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

