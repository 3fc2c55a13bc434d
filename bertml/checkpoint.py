"""A checkpoint is a self-describing folder that plain `transformers` can load.

    config.json          labels (id2label), problem_type
    model.safetensors    weights (safetensors only; pickle is refused)
    tokenizer files      tokenizer.json, tokenizer_config.json, ...
    bertml.json          ordered labels, per-label thresholds, max_length, problem type,
                         the resolved training config and final metrics

Everything here is checked before any Ray work starts, so a bad checkpoint gives one
clear error instead of a traceback from inside an actor.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from bertml.labels import LabelSet
from bertml.model import position_limit

META_FILE = "bertml.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1


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
        if not self.labels or len(set(self.labels)) != len(self.labels):
            raise CheckpointError(f"{where}: labels must be a non-empty list of distinct names")
        if not isinstance(self.max_length, int) or not 1 <= self.max_length <= 512:
            raise CheckpointError(f"{where}: max_length must be an integer in [1, 512], got {self.max_length!r}")
        if self.multi_label:
            t = self.thresholds
            if t is None or len(t) != len(self.labels):
                raise CheckpointError(
                    f"{where}: thresholds must list one value per label ({len(self.labels)}), got {t!r}"
                )
            bad = [(n, v) for n, v in zip(self.labels, t) if not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0 or math.isnan(v)]
            if bad:
                raise CheckpointError(f"{where}: thresholds must be in [0, 1]; label {bad[0][0]!r} has {bad[0][1]!r}")


def write_meta(path: str, meta: CheckpointMeta) -> None:
    meta.validate(path)
    with open(os.path.join(path, META_FILE), "w", encoding="utf-8") as f:
        json.dump(asdict(meta), f, indent=2, ensure_ascii=False)


def read_meta(path: str) -> CheckpointMeta:
    """Read and check bertml.json and the files beside it (no weights loaded)."""
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
    try:
        with open(meta_path, encoding="utf-8") as f:
            raw = json.load(f)
        meta = CheckpointMeta(**{k: v for k, v in raw.items() if k in CheckpointMeta.__dataclass_fields__})
    except (json.JSONDecodeError, TypeError) as e:
        raise CheckpointError(f"{meta_path}: not a valid bertml.json ({e})") from None
    meta.validate(meta_path)
    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
        hf = json.load(f)
    n_head = len(hf.get("id2label") or {}) or hf.get("num_labels")
    if n_head and n_head != len(meta.labels):
        raise CheckpointError(
            f"checkpoint {path}: {META_FILE} lists {len(meta.labels)} labels but the model head "
            f"(config.json) has {n_head} outputs; the files come from different runs"
        )
    limit = position_limit(hf)
    if limit and meta.max_length > limit:
        raise CheckpointError(f"checkpoint {path}: max_length {meta.max_length} exceeds the model's limit of {limit} tokens")
    return meta


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
    return "://" in path and not path.startswith("file://")


def localize(path: str, cache_dir: str | None = None) -> str:
    """A checkpoint on object storage (s3://, gs://, ...) -> a local copy; local paths unchanged.

    The copy is cached per URI and weights timestamp/size, so every actor on a node
    downloads a new model once and a re-uploaded checkpoint is fetched again.
    """
    if not is_uri(path):
        return os.path.expanduser(path[len("file://"):] if path.startswith("file://") else path)
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(path)
    info, meta = fs.get_file_info([f"{root.rstrip('/')}/{WEIGHTS_FILE}", f"{root.rstrip('/')}/{META_FILE}"])
    if info.type != pafs.FileType.File:
        raise CheckpointError(f"checkpoint {path}: no {WEIGHTS_FILE} there (bertml loads safetensors weights only)")
    # Weights and bertml.json (thresholds can be re-tuned in place) name the cached copy.
    key = hashlib.sha256(f"{path}|{info.mtime_ns}|{info.size}|{meta.mtime_ns}|{meta.size}".encode()).hexdigest()[:16]
    cache = cache_dir or os.path.join(os.environ.get("BERTML_CACHE", os.path.expanduser("~/.cache/bertml")), "checkpoints")
    local = os.path.join(cache, key)
    if not os.path.exists(os.path.join(local, META_FILE)):
        tmp = f"{local}.tmp-{os.getpid()}"
        pafs.copy_files(root, tmp, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        try:
            os.replace(tmp, local)
        except OSError:  # another process finished first
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return local


def upload(local: str, uri: str) -> None:
    """Copy a finished local checkpoint folder to object storage."""
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(uri)
    pafs.copy_files(local, root, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


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
