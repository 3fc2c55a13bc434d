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
    from bertml.secrets import redact

    meta.validate(path)
    with open(os.path.join(path, META_FILE), "w", encoding="utf-8") as f:
        json.dump(redact(asdict(meta)), f, indent=2, ensure_ascii=False)  # no credentials from URIs


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
    a, b = os.path.abspath(src), os.path.abspath(dst)
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
    cache = cache_dir or os.path.join(os.environ.get("BERTML_CACHE", os.path.expanduser("~/.cache/bertml")), "checkpoints")
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


def upload(local: str, uri: str) -> None:
    """Copy a finished local checkpoint folder to `uri`, replacing the checkpoint there.

    A prefix holding anything but a checkpoint's files (`_is_checkpoint_file`, as for local
    folders) is refused, naming a file. An earlier checkpoint's files are deleted first,
    its bertml.json before anything else, and the new bertml.json is written last: each
    object appears only when its upload completes, so a reader sees no checkpoint, or a
    complete one, never old files beside new ones.
    """
    import pyarrow.fs as pafs

    from bertml.secrets import redact

    fs, root = _remote(uri, "checkpoint output")
    try:
        old = [i.path for i in fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
               if i.is_file]
    except OSError as e:
        raise CheckpointError(f"checkpoint output {redact(uri)}: cannot be listed ({redact(str(e).splitlines()[0])})") from None
    if old:
        # Without a bertml.json too: an upload interrupted after the old one was deleted.
        foreign = sorted(n for n in (p[len(root) + 1:] for p in old) if "/" in n or not _is_checkpoint_file(n))
        if foreign:
            raise CheckpointError(f"checkpoint output {redact(uri)} holds files that are not a bertml checkpoint's "
                                  f"(e.g. {foreign[0]}); bertml replaces only its own checkpoints: choose an "
                                  "empty prefix")
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

# What a checkpoint folder holds (save_pretrained's files and bertml.json): a folder of only
# these may be replaced by a new checkpoint; anything else in it is someone else's.
_CHECKPOINT_FILES = {META_FILE, "config.json", "generation_config.json", "special_tokens_map.json",
                     "added_tokens.json", "merges.txt", "chat_template.jinja", "chat_template.json"}


def _is_checkpoint_file(name: str) -> bool:
    return (name in _CHECKPOINT_FILES or name.endswith((".safetensors", ".safetensors.index.json", ".model"))
            or name.startswith(("tokenizer", "vocab")))


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
    replacing a checkpoint there: `dest` is always either the old or the new whole folder
    by name (the old one is moved aside, then removed)."""
    import shutil

    from bertml.output import tmp_name

    old = None
    if os.path.lexists(dest):
        old = os.path.join(os.path.dirname(dest), tmp_name(os.path.basename(dest)))
        os.replace(dest, old)
    try:
        os.replace(assembled, dest)
    except BaseException:
        if old:
            os.replace(old, dest)
        raise
    if old:
        shutil.rmtree(old, ignore_errors=True)


def sibling_tmp(dest: str) -> str:
    """A hidden temp folder path beside `dest` (same filesystem, so `install` is a rename)."""
    from bertml.output import tmp_name

    parent = os.path.dirname(os.path.abspath(dest))
    os.makedirs(parent, exist_ok=True)
    return os.path.join(parent, tmp_name(os.path.basename(os.path.abspath(dest))))
