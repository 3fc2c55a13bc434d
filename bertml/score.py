"""Bulk scoring on Ray Data: Parquet shards -> tokens -> probabilities/tags -> Parquet.

    driver:  check checkpoint + shard footers -> plan units of at most `unit_rows` rows
             (runs of small row groups, slices of big ones) over the rows not yet done:
             committed shards are skipped, parts of an interrupted run are kept
    tasks:   read a unit (text column only) -> tokenize it, batch_size rows at a time (CPU)
    actors:  ScoreWriter: length-bucketed forward passes -> probs, tags; the unit's rows
             written as one *part* by the actor itself; returns a one-row acknowledgement
    driver:  counts acknowledged rows per shard; when a shard is covered, starts
    task:    assemble: the shard's parts + its id/passthrough columns (read here) ->
             the shard's file (a synced temp file; on object stores the final object)
    driver:  renames the file into place (local), records it, removes the parts

No scored row passes through the driver: it sees acknowledgements (shard, rows, status)
and per-shard counts, so its CPU and memory do not grow with the corpus
(jobs/bench_scale.py). Exactly once: a shard is assembled only when its parts cover every
row, each row taken once, in input order; a retried unit rewrites the part of the same
name. The read is our own small stage rather than `read_parquet` because each row must
carry (shard, row) for that accounting. Read and tokenize are one function, not two
fused `map_batches`: Ray Data bundles a fused stage's input up to the later stage's batch
size, which put every unit into a single task (jobs/bench_gpu.py, section D).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bertml import checkpoint as ckpt_io
from bertml import cluster, faults
from bertml import shards as sh
from bertml.config import CPU_BATCH, GPU_BATCH, ScoreConfig, to_dict
from bertml.output import (
    LABEL,
    MANIFEST,
    META_CHECKPOINT,
    META_FINGERPRINT,
    META_INPUT,
    META_LABELS,
    META_OPTIONS,
    PROBS,
    SCORE,
    STATUS,
    TAGS,
    TOP_K,
    OutputDir,
    OutputError,
    Part,
    output_name,
    part_name,
    same_or_below,
    within,
)
from bertml.secrets import overlap, redact
from bertml.tokenization import INPUT_IDS, encode_batch, special_tokens

log = logging.getLogger("bertml.score")

SHARD, ROW, ERROR, TEXT = "_shard", "_row", "_error", "_text"  # internal columns
ROW_OUT = "row"  # written when there is no id column


@dataclass
class ScoreSummary:
    output: str
    rows: int = 0
    shards_scored: int = 0
    shards_resumed: int = 0
    shards_skipped: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    status: dict[str, int] = field(default_factory=dict)
    tag_counts: dict[str, int] = field(default_factory=dict)
    duplicate_ids: int = 0  # ids seen more than once in this run's shards (see `IdSketch`)
    duplicate_ids_estimated: bool = False  # over IdSketch.K distinct ids: an estimate
    rows_resumed: int = 0  # of `rows`: kept from parts an interrupted run wrote, not scored again
    parts_resumed: int = 0
    parts: int = 0  # units' results written by the scoring actors (parts), this run
    units: int = 0  # read/tokenize units planned (runs of row groups, or slices of one)
    read_tasks: int | None = None  # Ray tasks that ran them (one each, spread over the cores)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    def format(self) -> str:
        lines = [
            f"output            {self.output}",
            f"rows written      {self.rows}  ({self.rows_per_s:.1f} rows/s over {self.seconds:.1f} s)"
            + (f"; {self.rows_resumed} of them kept from an interrupted run ({self.parts_resumed} parts)"
               if self.rows_resumed else ""),
            f"shards            {self.shards_scored} scored, {self.shards_resumed} already done, "
            f"{len(self.shards_skipped)} skipped as bad; {self.units} read/tokenize units"
            + (f" in {self.read_tasks} tasks" if self.read_tasks is not None else ""),
            "status            " + ", ".join(f"{k}={v}" for k, v in sorted(self.status.items())),
        ]
        if self.duplicate_ids:
            about = "about " if self.duplicate_ids_estimated else ""
            lines.append(f"duplicate ids     {about}{self.duplicate_ids} (kept, not merged)")
        for s in self.shards_skipped:
            lines.append(f"skipped           {s['shard']}: {s['error']}")
        if self.tag_counts:
            top = sorted(self.tag_counts.items(), key=lambda kv: -kv[1])
            lines.append("tags              " + ", ".join(f"{k}={v}" for k, v in top))
        return "\n".join(lines)


# ----------------------------------------------------------------------------- stages


class ReadUnits:
    """map_batches fn: units (see `plan_units`) -> one tokenized block per unit.

    Each unit's text is read, tokenized `batch_size` rows at a time (bounded tokenizer
    memory) and yielded as one block carrying (_shard, _row); the scoring actor writes the
    block's rows as one part (few parts: few files and, on object stores, few requests).
    Id and passthrough columns stay out of the pipeline: the assemble task reads them from
    the shard, so their types pass through exactly and shards whose types differ (an int id
    in one, a string id in the next) never meet in one batch.
    """

    def __init__(self, infos: list[sh.ShardInfo], text_column: str, batch_rows: int, tokenize: dict):
        self.infos, self.text_column = infos, text_column
        self.batch_rows, self.tokenize = batch_rows, tokenize

    def __call__(self, units: dict):
        keys = ("shard", "first_group", "groups", "row_start", "offset", "rows")
        for s, g0, k, r0, off, n in zip(*(units[key] for key in keys)):
            table = self.read(int(s), range(int(g0), int(g0) + int(k)), int(r0), int(off), int(n))
            if table.column(ERROR).null_count < table.num_rows:  # the unit's error marker
                yield table.drop_columns([TEXT]).append_column(INPUT_IDS, pa.nulls(table.num_rows, _IDS_TYPE)) \
                    .append_column(STATUS, pa.nulls(table.num_rows, pa.string()))
                continue
            yield pa.concat_tables([tokenize_stage(table.slice(i, self.batch_rows), **self.tokenize)
                                    for i in range(0, table.num_rows, self.batch_rows)])

    def read(self, s: int, groups: range, row_start: int, offset: int = 0, rows: int | None = None) -> pa.Table:
        """Rows [offset, offset + rows) of row groups `groups` of shard `s`; row_start: the first one's row in the shard."""
        info = self.infos[s]
        try:
            t = read_columns(info, [self.text_column], groups)
            footer = sum(info.row_group_rows[g] for g in groups)
            if t.num_rows != footer:  # pages and footer disagree: rows would go missing or repeat
                raise ValueError(f"row group(s) {groups.start}-{groups.stop - 1} hold {t.num_rows} rows, "
                                 f"its footer says {footer}; rewrite the file")
            text = _as_text(t.column(self.text_column).slice(offset, rows))
        except Exception as e:  # noqa: BLE001 - a bad row group flags its shard, never the run
            return _error_table(s, _error_text(e))
        n = len(text)
        return pa.table({SHARD: pa.array(np.full(n, s, np.int32)), ROW: pa.array(np.arange(row_start, row_start + n, dtype=np.int64)),
                         ERROR: pa.nulls(n, pa.string()), TEXT: text})


def _as_text(col: pa.ChunkedArray) -> pa.Array:
    """Any text-like column -> string: large/view/dictionary strings, binary holding UTF-8
    (invalid bytes become U+FFFD, not fatal), or an all-null column (every row `empty`)."""
    col = col.combine_chunks()
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    if sh.is_binary_type(col.type):
        col = col.cast(pa.large_binary()).view(pa.large_string())  # same bytes, checked below
    if not pa.types.is_string(col.type):
        col = col.cast(pa.string())
    try:
        col.validate(full=True)
        return col
    except pa.ArrowInvalid:
        raw = col.view(pa.binary())
        return pa.array([None if b is None else b.decode("utf-8", "replace") for b in raw.to_pylist()], pa.string())


class ShardChanged(OSError):
    pass


def read_columns(info: sh.ShardInfo, columns: list[str], groups: range | None = None) -> pa.Table:
    """`columns` of a shard (of row groups `groups`, or all), refusing a file rewritten since listing."""
    with info.shard.fs.open_input_file(info.shard.path) as f:
        _check_unchanged(info, f)
        pf = pq.ParquetFile(f)
        t = pf.read(columns=columns) if groups is None else pf.read_row_groups(list(groups), columns=columns)
        return t.select(columns)  # by exact name: "a.b" also selects struct a's child b by path


def _check_unchanged(info: sh.ShardInfo, f) -> None:
    """Refuse a shard whose file was rewritten since it was listed (its rows would no longer
    match the ones planned, or ids would pair with another text's scores)."""
    if info.shard.size >= 0 and f.size() != info.shard.size:
        raise ShardChanged(f"the file changed while it was being scored ({f.size()} bytes, {info.shard.size} when "
                           "listed); re-run to score its new contents")


def _error_text(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _error_table(s: int, msg: str) -> pa.Table:
    """One marker row (_row = -1) that tells the driver this shard could not be read."""
    return pa.table({SHARD: pa.array([s], pa.int32()), ROW: pa.array([-1], pa.int64()), ERROR: pa.array([msg]),
                     TEXT: pa.nulls(1, pa.string())})


@functools.lru_cache(maxsize=4)
def _tokenizer(path: str, trust_remote_code: bool):
    """One tokenizer per worker process (tasks are stateless; the cache is per process)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ckpt_io.localize(path), trust_remote_code=trust_remote_code)


def tokenize_stage(batch: pa.Table, *, checkpoint: str, max_length: int, chunk: bool, stride: int,
                   max_chunks: int, trust_remote_code: bool) -> pa.Table:
    """map_batches fn (CPU tasks): _text -> input_ids (list of windows), status."""
    tok = _tokenizer(checkpoint, trust_remote_code)
    ids, status = encode_batch(tok, batch.column(TEXT).to_pylist(), max_length,
                               chunk=chunk, stride=stride, max_chunks=max_chunks)
    return batch.drop_columns([TEXT]).append_column(INPUT_IDS, ids).append_column(STATUS, pa.array(status, pa.string()))


# ----------------------------------------------------------------------------- driver


def score(cfg: ScoreConfig, _fault: dict | None = None) -> ScoreSummary:
    """Score every row of `cfg.input` into `cfg.output`; see the module docstring."""
    t0 = time.perf_counter()
    cluster.resolve_outputs(cfg, ["output"])  # `ray job submit --working-dir`: say where relative output goes
    local_ckpt = ckpt_io.localize(cfg.checkpoint)  # s3://... -> cached local copy (workers fetch their own)
    meta = ckpt_io.validate(local_ckpt, cfg.trust_remote_code, remember=False)  # all checks before Ray starts
    max_length = cfg.max_length or meta.max_length
    ckpt_io.check_max_length(local_ckpt, max_length)
    _check_window(cfg, local_ckpt, max_length)
    fingerprint = ckpt_io.fingerprint(local_ckpt)
    keep = kept_columns(cfg)

    shard_list = sh.resolve(cfg.input, "input")
    out = OutputDir(cfg.output)
    check_output_paths(out, cfg, shard_list, local_ckpt)
    cluster.check_visible(cluster.score_paths(cfg.checkpoint, shard_list, out.root if out.local else None))  # multi-node: every node sees them
    good, bad = _check_shards(sh.inspect_all(shard_list), cfg, keep)
    names = [output_name(info.shard.key) for info in good]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        both = [info.shard.uri for info, n in zip(good, names) if n == dup]
        raise sh.InputError(f"input shards {both[0]} and {both[1]} would both write {dup!r} in the output; "
                            "rename one, or list the input as one folder so names keep their subfolders")
    if bad and cfg.on_bad_shard == "fail":
        raise sh.InputError(
            f"{len(bad)} bad input shard(s), nothing written. First: {bad[0]['error']} "
            "(fix or remove it, or set on_bad_shard=skip to score the rest)"
        )
    for b in bad:
        log.warning("skipping bad shard %s", b["error"])

    out.create()
    out.lock()
    ckpt_io.remember_checked(local_ckpt, cfg.trust_remote_code)  # the run is accepted: skip the build next time
    try:
        found = out.existing(names)  # under the lock: no other run writes here now
        _refuse_files_in_the_way(out, [n for n, m in found.items() if m is None]
                                 + ([] if out.manifest_is_ours() else [MANIFEST]))
        if cfg.overwrite:
            out.clear()
        out.clean_tmp()
        summary = ScoreSummary(output=redact(cfg.output), shards_skipped=bad)
        options = output_options(cfg, max_length)
        done = _resumable(out, good, found, fingerprint, options) if cfg.resume and not cfg.overwrite \
            else [False] * len(good)
        todo = [info for info, d in zip(good, done) if not d]
        summary.shards_resumed = len(good) - len(todo)
        schema_meta = {META_LABELS: _json(meta.labels), META_CHECKPOINT: _ckpt_name(cfg.checkpoint).encode(),
                       META_FINGERPRINT: fingerprint.encode(), META_OPTIONS: _json(options)}
        keys = [part_key(fingerprint, options, info) for info in todo]
        kept_parts = _kept_parts(out, todo, keys, [n for n, d in zip(names, done) if d], cfg)
        coord = _Coordinator(out, cfg, todo, kept_parts, keys, schema_meta, meta.multi_label, summary, _fault)
        try:
            if coord.shards:
                from bertml.runtime import init_ray

                init_ray()
                coord.resources = _resources(cfg)
            coord.start()
            if coord.shards:
                coord.plan(cfg.unit_rows or default_unit_rows(cfg, coord.resources, coord.rows_to_score()))
                if coord.units:
                    _run_pipeline(cfg, coord, max_length)
            coord.finish()
        except BaseException:
            coord.abort()
            raise
        summary.seconds = time.perf_counter() - t0
        out.write_json(MANIFEST, {
            "checkpoint": _ckpt_name(cfg.checkpoint), "fingerprint": fingerprint,
            "labels": meta.labels, "config": redact(to_dict(cfg)), "summary": asdict(summary),
            "shards": coord.records, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
        return summary
    finally:
        out.unlock()


def _kept_parts(out: OutputDir, todo: list[sh.ShardInfo], keys: list[str], resumed: list[str],
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


def _check_window(cfg: ScoreConfig, checkpoint: str, max_length: int) -> None:
    """The tokenization stage's window arithmetic, checked before any Ray work."""
    prefix, suffix = special_tokens(_tokenizer(checkpoint, cfg.trust_remote_code))
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


def _ckpt_name(path: str) -> str:
    """The checkpoint as recorded in outputs: its URI, or its absolute local path."""
    if ckpt_io.is_uri(path):
        return redact(path)
    return os.path.abspath(os.path.expanduser(path[len("file://"):] if path.startswith("file://") else path))


def _json(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


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


def _refuse_files_in_the_way(out: OutputDir, blocked: list[str]) -> None:
    """A file at an output name that bertml did not write stops the run (it is never replaced,
    with or without overwrite=true)."""
    if blocked:
        raise OutputError(f"{out.path(blocked[0])} is in the way: it is not a bertml output (unreadable, or no bertml fingerprint), "
                          f"and a shard's output would replace it ({len(blocked)} such file(s)). Move it away, or "
                          "choose another output folder; bertml never overwrites files it did not write")


def _check_shards(results, cfg: ScoreConfig, keep: list[str]) -> tuple[list[sh.ShardInfo], list[dict]]:
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


def output_options(cfg: ScoreConfig, max_length: int) -> dict:
    """The scoring options that shape an output file (recorded in it; resume requires the same)."""
    return {"text_column": cfg.text_column, "id_column": cfg.id_column, "passthrough": list(cfg.passthrough),
            "max_length": max_length, "long_text": cfg.long_text, "top_k": cfg.top_k,
            **({"chunk_stride": cfg.chunk_stride, "chunk_pooling": cfg.chunk_pooling, "max_chunks": cfg.max_chunks}
               if cfg.long_text == "chunk" else {})}


def input_identity(info: sh.ShardInfo) -> dict:
    return {"rows": info.num_rows, "bytes": info.shard.size}


def _resumable(out: OutputDir, infos: list[sh.ShardInfo], found: dict[str, dict], fingerprint: str,
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


def _run_pipeline(cfg: ScoreConfig, coord: _Coordinator, max_length: int) -> None:
    """Read/tokenize tasks -> ScoreWriter actors (they write the parts) -> acknowledgements
    to `coord` on the driver, which starts the assemble tasks."""
    import ray
    import ray.data

    _, _, use_gpu, n_actors, threads, batch_size, max_tokens = coord.resources
    units = coord.units
    tokenize = {"checkpoint": cfg.checkpoint, "max_length": max_length, "chunk": cfg.long_text == "chunk",
                "stride": cfg.chunk_stride, "max_chunks": cfg.max_chunks, "trust_remote_code": cfg.trust_remote_code}
    # One unit per block and per task (batch_size=1), so units spread over every free core.
    ds = ray.data.from_items(units, override_num_blocks=max(1, len(units)))
    ds = ds.map_batches(ReadUnits(coord.todo, cfg.text_column, batch_size, tokenize), batch_size=1,
                        batch_format="numpy")
    # Ray 2.60 has no named parameter for actor restarts; the remote-args hook it still
    # accepts warns of its removal in 2.64 (Ray Data's default there is unlimited retries).
    warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated", category=DeprecationWarning)
    ds = ds.map_batches(
        ScoreWriter, batch_size=None, batch_format="pyarrow",  # whole blocks (units): one part each
        fn_constructor_kwargs={"checkpoint": cfg.checkpoint, "parts": coord.part_writer(), "batch_rows": batch_size,
                               "max_tokens": max_tokens, "precision": cfg.precision,
                               "chunk_pooling": cfg.chunk_pooling, "top_k": cfg.top_k,
                               "torch_threads": None if use_gpu else threads, "cls_only": cfg.cls_only,
                               "compile": cfg.compile, "trust_remote_code": cfg.trust_remote_code},
        compute=ray.data.ActorPoolStrategy(size=n_actors),
        num_gpus=1 if use_gpu else 0, num_cpus=cfg.cpus_per_actor,
        # A crashed actor is restarted and its unit retried (same part name), a bounded number of times.
        ray_remote_args_fn=functools.partial(_restart_args, cfg.actor_restarts),
    )
    batches = ds.iter_batches(batch_size=None, batch_format="pyarrow")
    try:
        for acks in batches:
            coord.acknowledged(acks)
    finally:
        close = getattr(batches, "close", None)
        if close is not None:  # stops Ray Data's executor now, not when the generator is collected
            close()
    coord.summary.read_tasks = _tasks_of(ds, "ReadUnits")


def _tasks_of(ds, stage: str) -> int | None:
    """Tasks Ray Data ran for `stage` (from its stats text; None if that is unavailable)."""
    import re

    try:
        m = re.search(rf"MapBatches\({stage}\)[^:\n]*: (\d+) tasks executed", ds.stats())
    except Exception:  # noqa: BLE001 - a report line, never worth failing a finished run
        return None
    return int(m.group(1)) if m else None


def batch_sizes(cfg: ScoreConfig, use_gpu: bool) -> tuple[int, int]:
    """(rows per Scorer call, token budget per forward pass): the config's, or the device's defaults."""
    rows, tokens = GPU_BATCH if use_gpu else CPU_BATCH
    return cfg.batch_size or rows, cfg.max_tokens or tokens


def _restart_args(n: int) -> dict:
    return {"max_restarts": n, "max_task_retries": n}


UNIT_ROWS = 16384  # default rows per unit at most (truncate; chunk: / CHUNK_UNIT_SHARE)
CHUNK_UNIT_SHARE = 8  # chunked texts carry several windows a row


def default_unit_rows(cfg: ScoreConfig, res: _Resources, rows: int) -> int:
    """Rows per unit when `unit_rows` is null: big (one part, one task and one actor call
    each: few files, few requests, little scheduling), yet at least two units per CPU of
    the cluster so reads and tokenization spread; never under 4 Scorer batches."""
    cap = UNIT_ROWS // (CHUNK_UNIT_SHARE if cfg.long_text == "chunk" else 1)
    spread = -(-rows // max(1, 2 * res.cpus))
    return max(4 * res.batch_size, min(cap, spread))


def plan_units(s: int, info: sh.ShardInfo, max_rows: int, todo: list[tuple[int, int]] | None = None) -> list[dict]:
    """Rows `todo` ([start, end) ranges; default the whole shard) of shard `s` as read units
    of at most `max_rows` rows: runs of consecutive small row groups, or slices of a big one
    (read once per slice: reading is cheap next to tokenizing, and the slices tokenize in
    parallel)."""
    sizes = info.row_group_rows
    bounds = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).tolist()
    units: list[dict] = []

    def unit(g: int, k: int, row_start: int, offset: int, rows: int) -> dict:
        return {"shard": s, "first_group": g, "groups": k, "row_start": row_start, "offset": offset, "rows": rows}

    for a, b in ([(0, info.num_rows)] if todo is None else todo):
        run: dict | None = None  # small row groups being merged (consecutive: one range)
        for g, n in enumerate(sizes):
            lo, hi = max(a, bounds[g]), min(b, bounds[g + 1])
            if hi <= lo:
                if n == 0 and run is not None and bounds[g] == run["row_start"] + run["rows"]:
                    run["groups"] += 1  # an empty row group inside a run
                continue
            k, off = hi - lo, lo - bounds[g]
            if k >= max_rows:
                if run is not None:
                    units.append(run)
                run = None
                units += [unit(g, 1, lo + o, off + o, min(max_rows, k - o)) for o in range(0, k, max_rows)]
            else:
                if run is not None and run["rows"] + k > max_rows:
                    units.append(run)
                    run = None
                run = run or unit(g, 0, lo, off, 0)
                run["groups"] += 1
                run["rows"] += k
        if run is not None and run["rows"]:
            units.append(run)
    return units


# ----------------------------------------------------------------------------- actors: score and write


_IDS_TYPE = pa.list_(pa.list_(pa.int32()))
ACK = pa.schema([("shard", pa.int32()), ("start", pa.int64()), ("end", pa.int64()), ("error", pa.string())])


class PartWriter:
    """Where a scoring actor writes parts: the output folder, and per shard (index in the
    run's todo list) its output name and part key."""

    def __init__(self, output: str, names: list[str], keys: list[str]):
        self.output, self.names, self.keys = output, names, keys
        self._out: OutputDir | None = None

    def write(self, s: int, start: int, end: int, table: pa.Table) -> None:
        if self._out is None:
            self._out = OutputDir(self.output)
        name = self.names[s]
        self._out.write_part(Part(name, start, end, self.keys[s], part_name(name, start, end, self.keys[s])), table)

    def __getstate__(self):
        return {"output": self.output, "names": self.names, "keys": self.keys, "_out": None}


class ScoreWriter:
    """Ray Data actor: score a unit's tokens and write its rows as a part; returns one
    acknowledgement row per part (or per unreadable unit), never the scored rows."""

    def __init__(self, checkpoint: str, *, parts: PartWriter, batch_rows: int = 1 << 30, **scorer_kw):
        from bertml.scorer import Scorer  # torch only here: assemble workers start light

        self.scorer = Scorer(checkpoint, **scorer_kw)
        self.parts, self.batch_rows = parts, batch_rows

    def __call__(self, batch: pa.Table) -> pa.Table:
        acks: list[tuple[int, int, int, str | None]] = []
        errors = batch.column(ERROR)
        if errors.null_count < batch.num_rows:  # units that could not be read: their shard is flagged
            bad = batch.filter(pc.is_valid(errors))
            for s, e in zip(bad.column(SHARD).to_pylist(), bad.column(ERROR).to_pylist()):
                acks.append((s, -1, -1, e))
            batch = batch.filter(pc.is_null(errors))
        if batch.num_rows:
            batch = batch.drop_columns([ERROR])
            scored = pa.concat_tables([self.scorer(batch.slice(i, self.batch_rows))  # Scorer calls of batch_size rows
                                       for i in range(0, batch.num_rows, self.batch_rows)])
            shards, rows = scored.column(SHARD).to_numpy(), scored.column(ROW).to_numpy()
            # runs of consecutive rows of one shard: one part each (a whole unit, normally)
            cuts = np.flatnonzero((np.diff(shards) != 0) | (np.diff(rows) != 1)) + 1
            results = scored.drop_columns([SHARD, ROW])
            for a, b in zip([0, *cuts.tolist()], [*cuts.tolist(), len(rows)]):
                s, start = int(shards[a]), int(rows[a])
                self.parts.write(s, start, start + (b - a), results.slice(a, b - a))
                acks.append((s, start, start + (b - a), None))
        return pa.Table.from_pylist([dict(zip(ACK.names, a)) for a in acks], schema=ACK)


# ----------------------------------------------------------------------------- tasks: assemble a shard


@dataclass
class ShardJob:
    """What an assemble task needs for one shard (small: no rows)."""

    index: int
    info: sh.ShardInfo
    name: str
    parts: list[Part]
    output: str  # the output URI as configured (object stores: credentials reach the worker, never a log)
    keep: list[str]  # id and passthrough columns
    id_column: str | None
    schema_meta: dict
    multi_label: bool
    top_k: int


def assemble(job: ShardJob) -> dict:
    """Run as a Ray task: the shard's parts in row order (each row once) + its id/passthrough
    columns -> the shard's output file. Local: a synced hidden temp file the driver renames
    into place; object stores: the final object, then the parts are removed. Returns the
    counts the driver records (or {"error": ...} for a shard that cannot be finished)."""
    out = OutputDir(job.output)
    info = job.info
    try:
        results = _parts_in_order(out, job.parts, info.num_rows) if info.num_rows else _empty(job)
        kept = _kept(info, job.keep)
    except _UnreadableShard as e:
        return {"index": job.index, "error": str(e)}
    table = _finalize(results, kept, job, info.num_rows)
    stats = _counts(table, job.id_column)
    stats.update(index=job.index, rows=table.num_rows)
    if out.local:
        stats["tmp"] = out.write_tmp(job.name, table)
    else:
        out.commit(job.name, table)
        out.delete_parts(job.parts)
    return stats


class _UnreadableShard(Exception):
    pass


def _parts_in_order(out: OutputDir, parts: list[Part], num_rows: int) -> pa.Table:
    """Rows 0..num_rows-1 from `parts`, each row once: parts sorted by start, overlaps (a
    unit written by two runs) cut away. A gap or a short part is an error, never a hole."""
    tables, cursor = [], 0
    for p in sorted(parts, key=lambda p: (p.start, -p.end)):
        if p.end <= cursor:
            continue
        if p.start > cursor:
            break
        try:
            with out.fs.open_input_file(out.path(p.path)) as f:
                t = pq.read_table(f)
        except Exception as e:  # noqa: BLE001
            raise _UnreadableShard(f"its scored part {p.path} could not be read ({_error_text(e)}); re-run to "
                                   "score that unit again") from None
        if t.num_rows != p.rows:
            raise _UnreadableShard(f"its scored part {p.path} holds {t.num_rows} rows, not {p.rows}; re-run to "
                                   "score that unit again")
        tables.append(t.slice(cursor - p.start))
        cursor = p.end
    if cursor != num_rows:
        raise RuntimeError(f"scored parts cover rows 0-{cursor - 1} of {num_rows}; nothing was committed for "
                           "this shard: re-run to resume")
    return pa.concat_tables(tables, promote_options="permissive")


def _kept(info: sh.ShardInfo, keep: list[str]) -> pa.Table | None:
    """The shard's id and passthrough columns, exactly as stored, in row order."""
    if not keep:
        return None
    try:
        kept = read_columns(info, keep)
    except Exception as e:  # noqa: BLE001 - flags its shard, never the run
        raise _UnreadableShard(_error_text(e)) from None
    if kept.num_rows != info.num_rows:
        raise _UnreadableShard(f"{kept.num_rows} rows in its id/passthrough columns, {info.num_rows} in its footer")
    return kept


def _finalize(results: pa.Table, kept: pa.Table | None, job: ShardJob, num_rows: int) -> pa.Table:
    """Output columns: id (or `row`), passthrough, results, status."""
    cols: dict[str, pa.ChunkedArray] = {}
    if not job.id_column:
        cols[ROW_OUT] = pa.chunked_array([pa.array(np.arange(num_rows, dtype=np.int64))])
    if kept is not None:
        cols.update(zip(kept.column_names, kept.columns))
    for c in (PROBS, TAGS, LABEL, SCORE, TOP_K, STATUS):
        if c in results.column_names:
            cols[c] = results.column(c)
    out = pa.table(cols)
    if kept is not None:  # nullability and field metadata as the input had them
        fields = {f.name: f for f in kept.schema}
        out = out.cast(pa.schema([fields.get(f.name, f) for f in out.schema]))
    return out.replace_schema_metadata({**job.schema_meta, META_INPUT: _json(input_identity(job.info))})


def _empty(job: ShardJob) -> pa.Table:
    """A zero-row table with the result columns (so every input shard has an output file)."""
    fields = [pa.field(PROBS, pa.list_(pa.float32()))]
    if job.multi_label:
        fields += [pa.field(TAGS, pa.list_(pa.string()))]
    else:
        fields += [pa.field(LABEL, pa.string()), pa.field(SCORE, pa.float32())]
    if job.top_k:
        fields += [pa.field(TOP_K, pa.list_(pa.struct([("label", pa.string()), ("score", pa.float32())])))]
    fields += [pa.field(STATUS, pa.string())]
    return pa.schema(fields).empty_table()


def _counts(table: pa.Table, id_column: str | None) -> dict:
    """Status and tag counts of a shard's output, its duplicate ids, and its id sketch."""
    status, tags = {}, {}
    if table.num_rows:
        status = {d["values"]: d["counts"] for d in pc.value_counts(table.column(STATUS)).to_pylist()}
        col = TAGS if TAGS in table.column_names else LABEL
        flat = pc.list_flatten(table.column(col)) if col == TAGS else table.column(col).drop_null()
        tags = {d["values"]: d["counts"] for d in pc.value_counts(flat).to_pylist()}
    out = {"status": status, "tags": tags, "duplicate_ids": 0, "sketch": None}
    if id_column and table.num_rows:
        sketch = IdSketch.of(_hash_ids(table.column(id_column)))
        out["duplicate_ids"], out["sketch"] = sketch.duplicates()[0], sketch
    return out


class IdSketch:
    """Duplicate ids across a run's shards in bounded memory: the K smallest distinct 64-bit
    id hashes, each with its count (a bottom-K sample of the distinct ids, mergeable).

    Exact while the run holds at most K distinct ids (each shard's own count is always
    exact). Beyond that, a duplicated id is in the sample with probability f (the sample's
    share of the hash space), and its repeats are counted exactly there: duplicates =
    repeats in the sample / f, an estimate that is 0 when the sample has no repeats.
    """

    K = 1 << 17  # 1.5 MB at most, per shard result and on the driver

    def __init__(self, hashes: np.ndarray, counts: np.ndarray, total: int, saturated: bool):
        self.hashes, self.counts, self.total, self.saturated = hashes, counts, total, saturated

    @classmethod
    def of(cls, hashes: np.ndarray) -> IdSketch:
        u, c = np.unique(hashes.astype(np.uint64, copy=False), return_counts=True)
        return cls(u, c, len(hashes), False)._cut()

    def _cut(self) -> IdSketch:
        if len(self.hashes) > self.K:
            self.hashes, self.counts, self.saturated = self.hashes[: self.K], self.counts[: self.K], True
        return self

    def merge(self, other: IdSketch | None) -> IdSketch:
        if other is None:
            return self
        h = np.concatenate([self.hashes, other.hashes])
        u, inv = np.unique(h, return_inverse=True)
        c = np.bincount(inv, weights=np.concatenate([self.counts, other.counts]), minlength=len(u)).astype(np.int64)
        return IdSketch(u, c, self.total + other.total, self.saturated or other.saturated)._cut()

    def duplicates(self) -> tuple[int, bool]:
        """(ids beyond their first occurrence, whether that is an estimate)."""
        if not self.saturated:
            return int(self.total - len(self.hashes)), False
        repeats = int(self.counts.sum() - len(self.counts))
        share = (float(self.hashes[-1]) + 1.0) / 2.0**64
        return int(round(repeats / share)), True


def _hash_ids(ids: pa.ChunkedArray) -> np.ndarray:
    """64-bit hashes of an id column (a false duplicate among a million ids has odds of
    ~1e-8). Ids of any type: nested ones (struct, list) are hashed by their text form."""
    import pandas as pd

    ids = ids.drop_null()  # a missing id is no one's duplicate
    try:
        return pd.util.hash_pandas_object(ids.to_pandas(), index=False).to_numpy()
    except TypeError:
        return pd.util.hash_pandas_object(pd.Series([repr(v) for v in ids.to_pylist()]), index=False).to_numpy()


# ----------------------------------------------------------------------------- driver: coordinate


def part_key(fingerprint: str, options: dict, info: sh.ShardInfo) -> str:
    """Parts are kept only for the same checkpoint, options and input file (rows, bytes)."""
    import hashlib

    blob = json.dumps([fingerprint, options, input_identity(info)], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _gaps(parts: list[Part], n: int) -> list[tuple[int, int]]:
    """Row ranges of [0, n) that no part covers."""
    gaps, cursor = [], 0
    for p in sorted(parts, key=lambda p: p.start):
        if p.start > cursor:
            gaps.append((cursor, min(p.start, n)))
        cursor = max(cursor, p.end)
    if cursor < n:
        gaps.append((cursor, n))
    return [(a, b) for a, b in gaps if b > a]


@dataclass
class _Shard:
    """A shard being scored: its parts so far (kept from an interrupted run, or acknowledged)."""

    parts: dict[tuple[int, int], Part]
    rows: int  # rows in distinct parts (a retried unit counts once)
    resumed_rows: int = 0
    resumed_parts: int = 0


class _Coordinator:
    """The driver's side: plans units over the rows not yet done, counts acknowledged parts
    per shard, starts an assemble task when a shard is covered, then renames the file it
    wrote into place and records it. Holds per pending shard a few numbers per unit."""

    def __init__(self, out: OutputDir, cfg: ScoreConfig, todo: list[sh.ShardInfo], kept_parts: list[list[Part]],
                 keys: list[str], schema_meta: dict, multi_label: bool, summary: ScoreSummary, fault):
        self.out, self.cfg, self.todo, self.keys, self.summary, self.fault = out, cfg, todo, keys, summary, fault
        self.names = [output_name(info.shard.key) for info in todo]
        self.schema_meta, self.multi = schema_meta, multi_label
        self.shards: dict[int, _Shard] = {}
        for i, (info, parts) in enumerate(zip(todo, kept_parts)):
            if info.num_rows == 0:
                continue
            covered = info.num_rows - sum(b - a for a, b in _gaps(parts, info.num_rows))
            self.shards[i] = _Shard({(p.start, p.end): p for p in parts}, sum(p.rows for p in parts),
                                    covered, len(parts))
        self.running: dict = {}  # assemble task ref -> shard index
        self.records: list[dict] = []
        self.sketch: IdSketch | None = None
        self.units: list[dict] = []
        self.resources: _Resources | None = None  # set once Ray is up
        self.acked = 0
        self._remote = None

    # -- planning
    def plan(self, unit_rows: int) -> None:
        for i, st in self.shards.items():
            gaps = _gaps(list(st.parts.values()), self.todo[i].num_rows)
            self.units += plan_units(i, self.todo[i], unit_rows, gaps)
        self.summary.units = len(self.units)

    def rows_to_score(self) -> int:
        return sum(b - a for i, st in self.shards.items() for a, b in _gaps(list(st.parts.values()), self.todo[i].num_rows))

    def part_writer(self) -> PartWriter:
        return PartWriter(self.cfg.output, self.names, self.keys)

    # -- shards with no rows, or covered already by kept parts
    def start(self) -> None:
        for i, info in enumerate(self.todo):
            if info.num_rows == 0:  # no rows: nothing to score or to move
                self._done(assemble(self._job(i)))
        for i in [i for i, st in self.shards.items() if self._covered(i)]:
            self._launch(i)

    def _job(self, i: int) -> ShardJob:
        st = self.shards.get(i)
        return ShardJob(i, self.todo[i], self.names[i], list(st.parts.values()) if st else [], self.cfg.output,
                        kept_columns(self.cfg), self.cfg.id_column, self.schema_meta, self.multi, self.cfg.top_k)

    def _covered(self, i: int) -> bool:
        st, n = self.shards[i], self.todo[i].num_rows
        return st.rows >= n and not _gaps(list(st.parts.values()), n)

    # -- acknowledgements from the scoring actors
    def acknowledged(self, acks: pa.Table) -> None:
        for s, start, end, error in zip(*(acks.column(c).to_pylist() for c in ACK.names)):
            st = self.shards.get(s)
            if st is None or s in self.running.values():
                continue  # finished or failed already (a late duplicate)
            if error is not None:
                self._fail(s, error)
                continue
            if (start, end) not in st.parts:
                st.parts[(start, end)] = Part(self.names[s], start, end, self.keys[s],
                                              part_name(self.names[s], start, end, self.keys[s]))
                st.rows += end - start
                self.acked += 1
                self.summary.parts = self.acked
                faults.maybe_fail(self.fault, "score_part", parts=self.acked)
            if self._covered(s):
                self._launch(s)
        self.poll(0)

    # -- assemble tasks
    def _launch(self, i: int) -> None:
        import ray

        if self._remote is None:  # a little CPU each: they mostly read and write files
            self._remote = ray.remote(num_cpus=0.25, max_retries=2)(assemble)
        self.running[self._remote.remote(self._job(i))] = i

    def poll(self, timeout: float | None) -> None:
        """Record the assemble tasks that finished (waiting up to `timeout` s for one; None: for all)."""
        import ray

        while self.running:
            refs = list(self.running)
            ready, _ = ray.wait(refs, num_returns=len(refs) if timeout is None else 1,
                                timeout=timeout)
            if not ready:
                return
            for ref in ready:
                self.running.pop(ref)
                self._done(ray.get(ref))
            if timeout is not None:
                timeout = 0

    def _done(self, result: dict) -> None:
        i = result["index"]
        if "error" in result:
            self._fail(i, result["error"])
            return
        info, name = self.todo[i], self.names[i]
        if "tmp" in result:
            self.out.publish(result["tmp"], name)
        st = self.shards.pop(i, None)
        if st is not None and self.out.local:
            self.out.delete_parts(st.parts.values())
        self.records.append({"input": info.shard.uri, "output": name, "rows": result["rows"],
                             **({"duplicate_ids": result["duplicate_ids"]} if result["duplicate_ids"] else {})})
        s = self.summary
        s.rows += result["rows"]
        s.shards_scored += 1
        if st is not None:
            s.rows_resumed += st.resumed_rows
            s.parts_resumed += st.resumed_parts
        for k, v in result["status"].items():
            s.status[k] = s.status.get(k, 0) + v
        for k, v in result["tags"].items():
            s.tag_counts[k] = s.tag_counts.get(k, 0) + v
        if result["sketch"] is not None:
            self.sketch = result["sketch"] if self.sketch is None else self.sketch.merge(result["sketch"])
        faults.maybe_fail(self.fault, "score_commit", committed=s.shards_scored)

    def _fail(self, i: int, error: str) -> None:
        uri = self.todo[i].shard.uri
        st = self.shards.pop(i, None)
        if self.cfg.on_bad_shard == "fail":
            raise sh.InputError(f"{uri}: could not be read ({error}); its output was not written. "
                                "Fix or remove the file, or set on_bad_shard=skip")
        if st is not None:
            self.out.delete_parts(st.parts.values())
        self.summary.shards_skipped.append({"shard": uri, "error": f"{uri}: {error}"})
        log.warning("skipping bad shard %s: %s", uri, error)

    def finish(self) -> None:
        self.poll(None)
        if self.sketch is not None:
            self.summary.duplicate_ids, self.summary.duplicate_ids_estimated = self.sketch.duplicates()
        if self.shards:
            missing = [self.todo[i].shard.uri for i in sorted(self.shards)]
            raise RuntimeError(f"{len(missing)} shard(s) did not get all their rows back (e.g. {missing[0]}); "
                               "nothing was committed for them; re-run to resume")

    def abort(self) -> None:
        """The run stops early: stop the assemble tasks, wait a little for them to end (an
        interrupted one removes its temp file), then remove the temp files of the ones that
        finished but were not renamed. Parts stay: the re-run keeps them."""
        if not self.running:
            return
        import ray

        refs = list(self.running)
        self.running.clear()
        for ref in refs:
            try:
                ray.cancel(ref)
            except Exception:  # noqa: BLE001 - finished already
                pass
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=20)
        for ref in ready:
            try:
                tmp = ray.get(ref, timeout=5).get("tmp")
            except Exception:  # noqa: BLE001 - cancelled or failed: it cleaned up after itself
                continue
            if tmp:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
        self.out.clean_tmp()


class _Resources(NamedTuple):
    gpus: float
    cpus: int
    use_gpu: bool
    n_actors: int
    threads: int
    batch_size: int
    max_tokens: int


def _resources(cfg: ScoreConfig) -> _Resources:
    import ray

    from bertml.runtime import cluster_gpus

    gpus = cluster_gpus()
    use_gpu = gpus > 0 if cfg.use_gpu == "auto" else bool(cfg.use_gpu)
    n_actors = cfg.num_actors or (max(1, int(gpus)) if use_gpu else 1)
    cpus = float(ray.cluster_resources().get("CPU", 1))
    threads = cfg.torch_threads or max(1, int(cpus // n_actors))
    batch_size, max_tokens = batch_sizes(cfg, use_gpu)
    return _Resources(gpus, int(cpus), use_gpu, n_actors, threads, batch_size, max_tokens)
