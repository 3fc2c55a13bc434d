"""Checkpoints on object storage (s3://, gs://, ...): a cached local copy to read, an
upload that replaces only a bertml checkpoint."""

from __future__ import annotations

import hashlib
import os
import re

from bertml.checkpoint.format import (
    META_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    cache_root,
    is_checkpoint_file,
)


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
    cache = cache_dir or os.path.join(cache_root(), "checkpoints")
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


def check_upload_prefix(uri: str, fs=None, root: str | None = None, marker: str = META_FILE) -> list[str]:
    """The objects of a bertml checkpoint at `uri` that an upload replaces (none: an empty
    prefix). A prefix holding anything else — other files, or a model without `marker`
    (bertml.json; bertml-pretrain.json for an encoder folder): someone's Hugging Face model,
    or an upload that did not finish — is refused, naming a file: bertml replaces only its
    own checkpoints."""
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
    foreign = [n for n in names if "/" in n or not is_checkpoint_file(n)]
    if foreign or marker not in names:
        why = f"files that are not a bertml checkpoint's (e.g. {foreign[0]})" if foreign else \
            f"a model without {marker} (someone's model, or an upload that did not finish: delete it to retry)"
        raise CheckpointError(f"checkpoint output {redact(uri)} holds {why}; bertml replaces only its own "
                              "checkpoints: choose an empty prefix")
    return old


def upload(local: str, uri: str, marker: str = META_FILE) -> None:
    """Copy a finished local checkpoint folder to `uri`, replacing the checkpoint there.

    A prefix holding anything but a checkpoint's files (`is_checkpoint_file`, as for local
    folders) is refused, naming a file. An earlier checkpoint's files are deleted first,
    its `marker` (bertml.json) before anything else, and the new one is written last: each
    object appears only when its upload completes, so a reader sees no checkpoint, or a
    complete one, never old files beside new ones.
    """
    import pyarrow.fs as pafs


    fs, root = _remote(uri, "checkpoint output")
    old = check_upload_prefix(uri, fs, root, marker)
    old.sort(key=lambda p: p != f"{root}/{marker}")
    for p in old:
        fs.delete_file(p)
    names = sorted(os.listdir(local), key=lambda n: n == marker)
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

