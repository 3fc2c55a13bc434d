"""The resume protocol: what identifies an output file and a part, and what a re-run keeps.

An output file records the checkpoint's fingerprint, the options that shape it and the
input shard's identity (rows, bytes); a part's name carries a key of the same three.
A re-run keeps committed files and parts whose identity matches and scores the rest.
"""

from __future__ import annotations

import hashlib
import json
import logging

from bertml import shards as sh
from bertml.config import ScoreConfig
from bertml.output import (
    META_FINGERPRINT,
    META_INPUT,
    META_OPTIONS,
    OutputDir,
    OutputError,
    Part,
    output_name,
)

log = logging.getLogger("bertml.score")


def json_bytes(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


def output_options(cfg: ScoreConfig, max_length: int) -> dict:
    """The scoring options that shape an output file (recorded in it; resume requires the same)."""
    return {"text_column": cfg.text_column, "id_column": cfg.id_column, "passthrough": list(cfg.passthrough),
            "max_length": max_length, "long_text": cfg.long_text, "top_k": cfg.top_k,
            **({"chunk_stride": cfg.chunk_stride, "chunk_pooling": cfg.chunk_pooling, "max_chunks": cfg.max_chunks}
               if cfg.long_text == "chunk" else {})}


def input_identity(info: sh.ShardInfo) -> dict:
    return {"rows": info.num_rows, "bytes": info.shard.size}


def part_key(fingerprint: str, options: dict, info: sh.ShardInfo) -> str:
    """Parts are kept only for the same checkpoint, options and input file (rows, bytes)."""
    blob = json.dumps([fingerprint, options, input_identity(info)], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def resumable(out: OutputDir, infos: list[sh.ShardInfo], found: dict[str, dict], fingerprint: str,
               options: dict) -> list[bool]:
    """Per input shard: True when its committed output can be kept (`found`: the metadata of
    the bertml outputs already there, from `OutputDir.existing`).

    Kept: same checkpoint, same options, same input (rows and bytes). An input shard
    rewritten since (a nightly file reused under its name) is scored again. Another
    checkpoint or other options stop the run: the folder would mix two kinds of output.
    """

    def one(info: sh.ShardInfo) -> bool:
        name = output_name(info.shard.key)
        if name not in found:
            return False
        meta = found[name]
        was = meta.get(META_FINGERPRINT, b"").decode()
        if was != fingerprint:
            raise OutputError(
                f"{out.path(name)} was scored by another checkpoint ({was or 'unknown'}, now {fingerprint}); "
                "use overwrite=true to re-score everything, or a new output folder"
            )
        if META_OPTIONS in meta and (old := json.loads(meta[META_OPTIONS])) != options:
            diff = ", ".join(f"{k}: {old.get(k)!r} -> {options.get(k)!r}" for k in sorted(set(old) | set(options))
                             if old.get(k) != options.get(k))
            raise OutputError(f"{out.path(name)} was scored with other options ({diff}); "
                              "use overwrite=true to re-score everything, or a new output folder")
        if META_INPUT in meta and json.loads(meta[META_INPUT]) != input_identity(info):
            log.info("%s changed since it was scored: scoring it again", info.shard.uri)
            return False
        return True

    return [one(info) for info in infos]


def kept_parts(out: OutputDir, todo: list[sh.ShardInfo], keys: list[str], resumed: list[str],
                cfg: ScoreConfig) -> list[list[Part]]:
    """Per shard to score, the parts an interrupted run left that can be kept (same key);
    parts of other keys (another checkpoint, options or input file) and of shards already
    committed are removed."""
    if not cfg.resume or cfg.overwrite:
        return [[] for _ in todo]
    found = out.parts()
    kept, stale = [], []
    for info, key in zip(todo, keys):
        parts = found.pop(output_name(info.shard.key), [])
        kept.append([p for p in parts if p.key == key and p.end <= info.num_rows])
        stale += [p for p in parts if p.key != key or p.end > info.num_rows]
    for name in resumed:
        stale += found.pop(name, [])
    out.delete_parts(stale)
    if any(kept):
        log.info("keeping %d scored parts (%d rows) of an interrupted run", sum(map(len, kept)),
                 sum(p.rows for ps in kept for p in ps))
    return kept
