"""Pre-flight checks, all before Ray starts: the output folder may hold only bertml's own
files, shards must be readable and carry the configured columns, the tokenizer's window
arithmetic must leave room for text."""

from __future__ import annotations

import logging
import os

from bertml import checkpoint as ckpt_io
from bertml import coverage
from bertml import shards as sh
from bertml.config import ScoreConfig
from bertml.output import OutputDir, OutputError, output_name
from bertml.paths import same_or_below, within
from bertml.scoring.read import cached_tokenizer
from bertml.secrets import overlap, redact
from bertml.tokenization import special_tokens

log = logging.getLogger("bertml.score")


def check_window(cfg: ScoreConfig, checkpoint: str, max_length: int) -> None:
    """The tokenization stage's window arithmetic, checked before any Ray work."""
    prefix, suffix = special_tokens(cached_tokenizer(checkpoint, cfg.trust_remote_code))
    n = len(prefix) + len(suffix)
    if max_length <= n:
        raise sh.InputError(f"max_length {max_length} leaves no text tokens after the tokenizer's {n} special tokens; "
                            f"use max_length > {n}")
    if cfg.long_text == "chunk" and cfg.chunk_stride >= max_length - n:
        raise sh.InputError(f"chunk_stride {cfg.chunk_stride} must be below max_length - {n} ({max_length - n})")


def kept_columns(cfg: ScoreConfig) -> list[str]:
    """Input columns copied to the output, in order: the id, then passthrough (which may
    name the text column too)."""
    return list(dict.fromkeys(c for c in [cfg.id_column, *cfg.passthrough] if c))


def checkpoint_name(path: str) -> str:
    """The checkpoint as recorded in outputs: its URI, or its absolute local path."""
    if ckpt_io.is_uri(path):
        return redact(path)
    return os.path.abspath(os.path.expanduser(path[len("file://"):] if path.startswith("file://") else path))


def check_output_paths(out: OutputDir, cfg: ScoreConfig, shards: list[sh.Shard], checkpoint: str) -> None:
    """Refuse, before any work, an output folder that would read back, replace or delete what
    is not bertml's: one that is or lies inside an input folder (or that a glob input would
    list), contains an input file, is or contains the working folder or the home folder, or
    overlaps the checkpoint. Local paths are compared resolved (symlinks, `..`, `~`)."""
    root = out.root
    outputs = [root, out.path("x.parquet")]
    for s in shards:
        try:
            name = output_name(s.key)
        except OutputError:
            continue  # flagged as a bad shard later
        outputs.append(out.path(name))  # refuses a symlinked folder that leads out of the output
    for spec in [cfg.input] if isinstance(cfg.input, str) else cfg.input:
        names = sh.lister(spec, out.fs)
        if any(names(p) for p in outputs):
            raise OutputError(f"output {redact(cfg.output)} lies inside the input {redact(spec)}: the next run would read its "
                              "files back as input; choose an output folder outside the input")
    for s in shards:
        if s.fs.type_name == out.fs.type_name and (same_or_below(s.path, root) if out.local else within(s.path, root)):
            raise OutputError(f"output {redact(cfg.output)} contains the input file {s.uri}; choose an output folder "
                              "that holds no input")
    if not out.local:
        if ckpt_io.is_uri(cfg.checkpoint) and overlap(cfg.output, cfg.checkpoint):
            raise OutputError(f"output {redact(cfg.output)} and the checkpoint {redact(cfg.checkpoint)} overlap; "
                              "choose an output prefix outside the checkpoint")
        return
    for what, folder in (("the working folder", os.getcwd()), ("your home folder", os.path.expanduser("~"))):
        if same_or_below(folder, root):
            raise OutputError(f"output {redact(cfg.output)} is or contains {what} ({folder}); choose a folder of its own, "
                              "e.g. output=scored/")
    if same_or_below(root, checkpoint) or same_or_below(checkpoint, root):
        raise OutputError(f"output {redact(cfg.output)} and the checkpoint {redact(cfg.checkpoint)} overlap; choose an output "
                          "folder outside the checkpoint")


def refuse_files_in_the_way(out: OutputDir, blocked: list[str]) -> None:
    """A file at an output name that bertml did not write stops the run (it is never replaced,
    with or without overwrite=true)."""
    if blocked:
        raise OutputError(f"{out.path(blocked[0])} is in the way: it is not a bertml output (unreadable, or no bertml fingerprint), "
                          f"and a shard's output would replace it ({len(blocked)} such file(s)). Move it away, or "
                          "choose another output folder; bertml never overwrites files it did not write")


def check_shards(results, cfg: ScoreConfig, keep: list[str]) -> tuple[list[sh.ShardInfo], list[dict]]:
    good, bad = [], []
    for r in results:
        if isinstance(r, sh.InputError):
            bad.append({"shard": str(r).split(": ", 1)[0], "error": str(r)})
            continue
        try:
            for c in {cfg.text_column, *keep}:
                if len(r.schema.get_all_field_indices(c)) > 1:
                    raise sh.InputError(f"{r.shard.uri}: column {c!r} appears {len(r.schema.get_all_field_indices(c))} "
                                        "times in its schema; rewrite the file with distinct column names")
            if r.num_rows or cfg.text_column not in r.schema.names:
                # No rows, no values to misread: an empty shard whose writer typed its columns
                # as null (pandas object columns do) still gets its empty output file.
                sh.check_column(r, cfg.text_column, "text", scoring=True)
            for c in keep:
                if c not in r.schema.names:
                    raise sh.InputError(f"{r.shard.uri}: no column {c!r} (columns: {', '.join(r.schema.names)}); "
                                        "fix id_column/passthrough in the config")
            output_name(r.shard.key)
        except (sh.InputError, OutputError) as e:
            bad.append({"shard": r.shard.uri, "error": str(e)})
            continue
        good.append(r)
    return good, bad


def sample_coverage(cfg: ScoreConfig, checkpoint: str, infos: list[sh.ShardInfo]) -> coverage.Coverage | None:
    """How much of the input the tokenizer can read, on the start of the smallest non-empty
    row group of the input (one small read); a warning when it reads little of it."""
    try:
        texts = coverage.sample_texts(infos, cfg.text_column)
    except Exception:  # noqa: BLE001 - an unreadable shard is flagged by the run itself
        return None
    if not texts:
        return None
    cov = coverage.check(cached_tokenizer(checkpoint, cfg.trust_remote_code), texts)
    where = infos[0].shard.uri if len(infos) == 1 else f"{infos[0].shard.uri} and {len(infos) - 1} more shard(s)"
    msg = coverage.warning(cov, f"column {cfg.text_column!r} of {where}")
    if msg:
        log.warning("%s", msg)
    return cov
