"""Where a checkpoint is written: destinations bertml may replace, an install that never
leaves the destination missing, and the copies it makes (new thresholds, a final checkpoint)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import tempfile

from bertml.checkpoint.format import (
    META_FILE,
    CheckpointError,
    CheckpointMeta,
    is_checkpoint_file,
    read_meta,
    write_meta,
)
from bertml.checkpoint.remote import is_uri, upload
from bertml.checkpoint.train_state import STATE_JSON, STATE_TENSORS


def check_destination(dest: str, what: str, protected: list[tuple[str, str]] = (), marker: str = META_FILE) -> None:
    """Refuse a local checkpoint destination that bertml may not replace: the working folder,
    the home folder or an ancestor of either; a folder overlapping one of `protected`
    ((name, path) pairs: training data, the encoder, run storage); a file; a non-empty folder
    that holds anything but one checkpoint's files, `marker` among them (bertml.json; an
    encoder folder from `bertml pretrain`: bertml-pretrain.json). Paths are compared resolved."""
    from bertml.paths import resolved, within

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
    foreign = [e for e in entries if not (os.path.isfile(os.path.join(real, e)) and is_checkpoint_file(e))]
    if foreign or marker not in entries:
        first = foreign[0] if foreign else entries[0]
        raise CheckpointError(f"{what} {dest} is not empty and does not hold a bertml checkpoint (it has {first!r}"
                              f"{f' and {len(entries) - 1} more' if len(entries) > 1 else ''}); bertml replaces only "
                              "its own checkpoints: choose a new or empty folder")


def install(assembled: str, dest: str) -> None:
    """Move the complete checkpoint folder `assembled` (a sibling of `dest`) to `dest`,
    replacing a checkpoint there: the old one is moved aside, the new one renamed into place,
    the old one removed. Signals wait until both renames are done, so `dest` is never left
    missing by a SIGTERM/SIGINT between them."""
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


def sibling_tmp(dest: str, marker: str = META_FILE) -> str:
    """A hidden temp folder path beside `dest` (same filesystem, so `install` is a rename).
    Temp folders an interrupted run left beside `dest` (bertml's temp name for it, holding a
    `marker`, bertml.json by default) are removed first."""
    from bertml.output import is_tmp_name, tmp_name

    parent, base = os.path.split(dest)
    os.makedirs(parent, exist_ok=True)
    for name in os.listdir(parent):
        left = os.path.join(parent, name)
        if (is_tmp_name(name) and name[1:].startswith(base + ".tmp-") and os.path.isdir(left)
                and not os.path.islink(left) and os.path.exists(os.path.join(left, marker))):
            shutil.rmtree(left, ignore_errors=True)
    return os.path.join(parent, tmp_name(base))


def copy_with_thresholds(src: str, dst: str, thresholds, provenance: dict, overwrite: bool = False) -> CheckpointMeta:
    """Copy checkpoint `src` to `dst` with new per-label thresholds; `src` is never modified.

    `provenance` (where the thresholds came from) is stored as bertml.json
    `metrics.thresholds`. The copy is assembled in a hidden sibling folder and renamed into
    place, so `dst` is either the old folder or the complete new one.
    """
    meta = read_meta(src)
    if not meta.multi_label:
        raise CheckpointError(f"checkpoint {src}: single_label checkpoints predict the argmax; there are no thresholds to set")
    from bertml.paths import resolved

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


def export(src: str, dest: str, config: dict) -> None:
    """Copy epoch checkpoint folder `src`, minus its train state, to `dest` (a local folder,
    as `check_destination` accepted it, or an object-store URI) with `config` as its
    resolved config.

    Local: assembled in a hidden folder beside `dest`, then installed (replacing a previous
    checkpoint there). Object storage: assembled in a local temp folder, uploaded, and the
    temp folder removed."""
    remote = is_uri(dest)
    tmp = os.path.join(tempfile.mkdtemp(prefix="bertml-final-"), "model") if remote else sibling_tmp(dest)
    try:
        shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(STATE_TENSORS, STATE_JSON, ".*"))
        meta = read_meta(tmp)
        meta.config = config
        write_meta(tmp, meta)
        if remote:
            upload(tmp, dest)
        else:
            install(tmp, dest)
    finally:
        shutil.rmtree(os.path.dirname(tmp) if remote else tmp, ignore_errors=True)
