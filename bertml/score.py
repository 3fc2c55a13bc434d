"""Bulk scoring on Ray Data: Parquet shards -> tokens -> probabilities/tags -> Parquet.

    driver:  check checkpoint + shard footers -> plan units of at most 4 x batch_size
             rows (runs of small row groups, slices of big ones), skipping committed shards
    tasks:   read a unit (needed columns only) -> tokenize, one task per unit, yielding
             blocks of batch_size rows                               (CPU, stateless)
    actors:  Scorer: length-bucketed forward passes -> probs, tags    (GPU, or CPU)
    driver:  gather rows per shard; when a shard has all its rows, commit its file

The read is our own small stage rather than `read_parquet` because each row must carry
(shard, row) for exactly-once accounting: a shard is committed only when every one of
its rows is back, in input order, and no row is ever written twice. Read and tokenize
are one function, not two fused `map_batches`: Ray Data bundles a fused stage's input
up to the later stage's batch size, which put every unit into a single task (one busy
core tokenizing for a GPU that sat idle 95% of the time; jobs/bench_gpu.py, section D).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bertml import checkpoint as ckpt_io
from bertml import cluster, faults
from bertml import shards as sh
from bertml.config import ScoreConfig, to_dict
from bertml.output import (
    MANIFEST,
    META_CHECKPOINT,
    META_FINGERPRINT,
    META_INPUT,
    META_LABELS,
    META_OPTIONS,
    OutputDir,
    OutputError,
    output_name,
    same_or_below,
    within,
)
from bertml.scorer import (
    CPU_BATCH,
    GPU_BATCH,
    INPUT_IDS,
    LABEL,
    PROBS,
    SCORE,
    STATUS,
    TAGS,
    TOP_K,
    Scorer,
)
from bertml.secrets import overlap, redact
from bertml.tokenization import encode_batch, special_tokens

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
    duplicate_ids: int = 0
    units: int = 0  # read/tokenize units planned (runs of row groups, or slices of one)
    read_tasks: int | None = None  # Ray tasks that ran them (one each, spread over the cores)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    def format(self) -> str:
        lines = [
            f"output            {self.output}",
            f"rows scored       {self.rows}  ({self.rows_per_s:.1f} rows/s over {self.seconds:.1f} s)",
            f"shards            {self.shards_scored} scored, {self.shards_resumed} already done, "
            f"{len(self.shards_skipped)} skipped as bad; {self.units} read/tokenize units"
            + (f" in {self.read_tasks} tasks" if self.read_tasks is not None else ""),
            "status            " + ", ".join(f"{k}={v}" for k, v in sorted(self.status.items())),
        ]
        if self.duplicate_ids:
            lines.append(f"duplicate ids     {self.duplicate_ids} (kept, not merged)")
        for s in self.shards_skipped:
            lines.append(f"skipped           {s['shard']}: {s['error']}")
        if self.tag_counts:
            top = sorted(self.tag_counts.items(), key=lambda kv: -kv[1])
            lines.append("tags              " + ", ".join(f"{k}={v}" for k, v in top))
        return "\n".join(lines)


# ----------------------------------------------------------------------------- stages


class ReadUnits:
    """map_batches fn: units (see `plan_units`) -> tokenized blocks.

    Each unit's text is read, then tokenized and yielded in blocks of at most `block_rows`
    rows carrying (_shard, _row), so a task's memory stays small. Id and passthrough
    columns stay out of the pipeline: the driver reads them from the shard when it commits,
    so their types pass through exactly and shards whose types differ (an int id in one,
    a string id in the next) never meet in one batch.
    """

    def __init__(self, infos: list[sh.ShardInfo], text_column: str, block_rows: int, tokenize: dict):
        self.infos, self.text_column = infos, text_column
        self.block_rows, self.tokenize = block_rows, tokenize

    def __call__(self, units: dict):
        keys = ("shard", "first_group", "groups", "row_start", "offset", "rows")
        for s, g0, k, r0, off, n in zip(*(units[key] for key in keys)):
            table = self.read(int(s), range(int(g0), int(g0) + int(k)), int(r0), int(off), int(n))
            for start in range(0, table.num_rows, self.block_rows):
                yield tokenize_stage(table.slice(start, self.block_rows), **self.tokenize)

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
    meta = ckpt_io.validate(local_ckpt, cfg.trust_remote_code)  # all checks before Ray starts
    max_length = cfg.max_length or meta.max_length
    ckpt_io.check_max_length(local_ckpt, max_length)
    _check_window(cfg, local_ckpt, max_length)
    fingerprint = ckpt_io.fingerprint(local_ckpt)
    keep = kept_columns(cfg)

    shard_list = sh.resolve(cfg.input, "input")
    out = OutputDir(cfg.output)
    check_output_paths(out, cfg, shard_list, local_ckpt)
    cluster.check_visible(cluster.score_paths(cfg.checkpoint, shard_list))  # multi-node: every node sees them
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
        committer = _Committer(out, todo, cfg, schema_meta, summary, _fault, meta.multi_label)
        try:
            committer.commit_empty_shards()
            if committer.pending:
                _run_pipeline(cfg, todo, max_length, committer)
            committer.finish()
        finally:
            committer.close()
        summary.seconds = time.perf_counter() - t0
        out.write_json(MANIFEST, {
            "checkpoint": _ckpt_name(cfg.checkpoint), "fingerprint": fingerprint,
            "labels": meta.labels, "config": redact(to_dict(cfg)), "summary": asdict(summary),
            "shards": committer.records, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
        return summary
    finally:
        out.unlock()


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


def _run_pipeline(cfg: ScoreConfig, todo: list[sh.ShardInfo], max_length: int, committer) -> None:
    import ray
    import ray.data

    from bertml.runtime import cluster_gpus, init_ray

    init_ray()
    gpus = cluster_gpus()
    use_gpu = gpus > 0 if cfg.use_gpu == "auto" else bool(cfg.use_gpu)
    n_actors = cfg.num_actors or (max(1, int(gpus)) if use_gpu else 1)
    cpus = float(ray.cluster_resources().get("CPU", 1))
    threads = cfg.torch_threads or max(1, int(cpus // n_actors))
    batch_size, max_tokens = batch_sizes(cfg, use_gpu)
    units = [u for i, info in enumerate(todo) for u in plan_units(i, info, UNIT_BATCHES * batch_size)]
    tokenize = {"checkpoint": cfg.checkpoint, "max_length": max_length, "chunk": cfg.long_text == "chunk",
                "stride": cfg.chunk_stride, "max_chunks": cfg.max_chunks, "trust_remote_code": cfg.trust_remote_code}
    # One unit per block and per task (batch_size=1), so units spread over every free core.
    ds = ray.data.from_items(units, override_num_blocks=max(1, len(units)))
    ds = ds.map_batches(ReadUnits(todo, cfg.text_column, batch_size, tokenize), batch_size=1,
                        batch_format="numpy")
    # Ray 2.60 has no named parameter for actor restarts; the remote-args hook it still
    # accepts warns of its removal in 2.64 (Ray Data's default there is unlimited retries).
    warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated", category=DeprecationWarning)
    ds = ds.map_batches(
        Scorer, batch_size=batch_size, batch_format="pyarrow",
        fn_constructor_kwargs={"checkpoint": cfg.checkpoint, "max_tokens": max_tokens, "precision": cfg.precision,
                               "chunk_pooling": cfg.chunk_pooling, "top_k": cfg.top_k,
                               "torch_threads": None if use_gpu else threads, "cls_only": cfg.cls_only,
                               "compile": cfg.compile, "trust_remote_code": cfg.trust_remote_code},
        compute=ray.data.ActorPoolStrategy(size=n_actors),
        num_gpus=1 if use_gpu else 0, num_cpus=cfg.cpus_per_actor,
        # A crashed actor is restarted and its batch retried, a bounded number of times.
        ray_remote_args_fn=functools.partial(_restart_args, cfg.actor_restarts),
    )
    for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        committer.add(block)
    committer.summary.units = len(units)
    committer.summary.read_tasks = _tasks_of(ds, "ReadUnits")


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


UNIT_BATCHES = 4  # rows per read/tokenize task, in Scorer batches: small enough to spread over cores


def plan_units(s: int, info: sh.ShardInfo, max_rows: int) -> list[dict]:
    """Shard `s` as read/tokenize units of at most `max_rows` rows: runs of consecutive small
    row groups, or slices of a big one (read once per slice: reading is cheap next to
    tokenizing, and the slices tokenize in parallel)."""
    units: list[dict] = []
    run: dict | None = None  # small row groups being merged

    def unit(g: int, k: int, row_start: int, offset: int, rows: int) -> dict:
        return {"shard": s, "first_group": g, "groups": k, "row_start": row_start, "offset": offset, "rows": rows}

    start = 0
    for g, n in enumerate(info.row_group_rows):
        if n >= max_rows:
            if run and run["rows"]:
                units.append(run)
            run = None
            units += [unit(g, 1, start + off, off, min(max_rows, n - off)) for off in range(0, n, max_rows)]
        else:
            if run and run["rows"] + n > max_rows:
                units.append(run)
                run = None
            run = run or unit(g, 0, start, 0, 0)
            run["groups"] += 1
            run["rows"] += n
        start += n
    if run and run["rows"]:
        units.append(run)
    return units


class _UnreadableShard(Exception):
    pass


class _Committer:
    """Buffers scored rows per shard; commits a shard's file once all its rows are back.

    Rows are counted in a per-shard bitmap, so a block delivered twice (a retried task)
    adds nothing, and blocks for a shard already committed are ignored. When the buffered
    rows pass `spill_bytes`, the biggest shards' parts move to Arrow files on local disk,
    read back memory-mapped: the driver's memory stays bounded however big a shard is.
    """

    def __init__(self, out: OutputDir, todo, cfg: ScoreConfig, schema_meta: dict, summary: ScoreSummary,
                 fault, multi_label: bool, spill_bytes: int = 512 << 20):
        self.multi = multi_label
        self.out, self.todo, self.cfg, self.meta, self.summary, self.fault = out, todo, cfg, schema_meta, summary, fault
        self.parts: dict[int, list[tuple[pa.Table, bool]]] = {}  # runs of rows, spilled or not
        self.got: dict[int, np.ndarray] = {}  # shard -> bool per row: back already
        self.seen = np.zeros(len(todo), dtype=np.int64)  # distinct rows back, per shard
        self.pending = {i for i, info in enumerate(todo) if info.num_rows > 0}
        self.failed: set[int] = set()
        self.records: list[dict] = []
        self.tags: Counter = Counter()
        self.id_hashes: list[np.ndarray] = []  # 8 bytes a row: duplicate ids across shards
        self.spill_bytes, self.in_memory, self.spilled = spill_bytes, 0, 0
        self._spill_dir: str | None = None

    def commit_empty_shards(self) -> None:
        for i, info in enumerate(self.todo):
            if info.num_rows == 0:
                self._commit(i, None)

    def add(self, block: pa.Table) -> None:
        shard_ids = block.column(SHARD).to_numpy()
        for s in np.unique(shard_ids):
            s = int(s)
            if s not in self.pending:  # committed already (a late duplicate), or failed
                continue
            part = block.filter(pc.equal(block.column(SHARD), s))
            errors = part.column(ERROR).drop_null()
            if len(errors):
                self._fail(s, errors[0].as_py())
                continue
            runs = self._new_runs(s, part.drop_columns([SHARD, ERROR]))
            self.parts.setdefault(s, []).extend((run, False) for run in runs)
            self.in_memory += sum(run.nbytes for run in runs)
            if self.seen[s] == self.todo[s].num_rows:
                self._commit(s, self._gather(s))
            elif self.in_memory > self.spill_bytes:
                self._spill()

    def _new_runs(self, s: int, part: pa.Table) -> list[pa.Table]:
        """`part`'s rows not back before (nor repeated within it), sorted, as runs of
        consecutive rows: a shard's runs never overlap, so sorting them by first row puts
        the whole shard in order without copying it."""
        rows = part.column(ROW).to_numpy()
        got = self.got.get(s)
        if got is None:
            got = self.got[s] = np.zeros(self.todo[s].num_rows, dtype=bool)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(got)):
            raise RuntimeError(f"{self.todo[s].shard.uri}: a scored block holds rows outside the shard")
        order = np.argsort(rows, kind="stable")
        first = np.ones(len(rows), dtype=bool)
        first[order[1:]] = rows[order[1:]] != rows[order[:-1]]
        keep = first & ~got[rows]
        got[rows[keep]] = True
        self.seen[s] += int(keep.sum())
        if not keep.all():
            part, rows = part.filter(pa.array(keep)), rows[keep]
        if len(rows) > 1 and (np.diff(rows) < 0).any():
            order = np.argsort(rows, kind="stable")
            part, rows = part.take(pa.array(order)), rows[order]
        cuts = [0, *(np.flatnonzero(np.diff(rows) != 1) + 1).tolist(), len(rows)]
        return [part.slice(a, b - a) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]

    def _gather(self, s: int) -> pa.Table:
        """All of shard `s`'s rows, in row order: its runs sorted by first row (no copy)."""
        parts = self.parts.pop(s)
        self.got.pop(s, None)
        self.in_memory -= sum(t.nbytes for t, spilled in parts if not spilled)
        runs = sorted((t for t, _ in parts), key=lambda t: t.column(ROW)[0].as_py())
        return pa.concat_tables(runs)

    def _spill(self) -> None:
        """Move the biggest shards' in-memory runs to Arrow files read back memory-mapped."""
        import tempfile

        if self._spill_dir is None:
            self._spill_dir = tempfile.mkdtemp(prefix="bertml-spill-")
        sizes = {s: sum(t.nbytes for t, spilled in ps if not spilled) for s, ps in self.parts.items()}
        for s in sorted(sizes, key=sizes.get, reverse=True):
            if self.in_memory <= self.spill_bytes // 2 or not sizes[s]:
                break
            mem = [t for t, spilled in self.parts[s] if not spilled]
            path = os.path.join(self._spill_dir, f"{s}-{self.spilled}.arrow")
            with pa.OSFile(path, "wb") as f, pa.ipc.new_file(f, mem[0].schema) as w:
                for run in mem:  # one record batch per run
                    w.write_batch(run.combine_chunks().to_batches()[0] if run.num_rows else None)
            reader = pa.ipc.open_file(pa.memory_map(path))
            mapped = [pa.Table.from_batches([reader.get_batch(i)]) for i in range(reader.num_record_batches)]
            os.unlink(path)  # the mapping outlives the name: nothing to clean up later
            self.parts[s] = [(t, True) for t, spilled in self.parts[s] if spilled] + [(t, True) for t in mapped]
            self.in_memory -= sizes[s]
            self.spilled += 1

    def close(self) -> None:
        self.parts.clear()
        if self._spill_dir:
            import shutil

            shutil.rmtree(self._spill_dir, ignore_errors=True)
            self._spill_dir = None

    def _fail(self, s: int, error: str) -> None:
        uri = self.todo[s].shard.uri
        self.failed.add(s)
        self.pending.discard(s)
        self.in_memory -= sum(t.nbytes for t, spilled in self.parts.pop(s, []) if not spilled)
        self.got.pop(s, None)
        if self.cfg.on_bad_shard == "fail":
            raise sh.InputError(f"{uri}: could not be read ({error}); its output was not written. "
                                "Fix or remove the file, or set on_bad_shard=skip")
        self.summary.shards_skipped.append({"shard": uri, "error": f"{uri}: {error}"})
        log.warning("skipping bad shard %s: %s", uri, error)

    def _commit(self, s: int, table: pa.Table | None) -> None:
        info = self.todo[s]
        if table is None:
            table = self._empty(info)
        else:
            rows = table.column(ROW).to_numpy()
            if len(rows) != info.num_rows or (rows != np.arange(info.num_rows)).any():  # `add` makes this impossible
                raise RuntimeError(f"{info.shard.uri}: rows came back incomplete or out of order; not committed")
        try:
            table = self._finalize(table, self._kept(info), input_identity(info))
        except _UnreadableShard as e:
            self._fail(s, str(e))
            return
        self.out.commit(output_name(info.shard.key), table)
        self.pending.discard(s)
        self._count(table)
        self.records.append({"input": info.shard.uri, "output": output_name(info.shard.key), "rows": table.num_rows})
        self.summary.shards_scored += 1
        faults.maybe_fail(self.fault, "score_commit", committed=self.summary.shards_scored)

    def _kept(self, info: sh.ShardInfo) -> pa.Table | None:
        """The shard's id and passthrough columns, exactly as stored, in row order."""
        keep = kept_columns(self.cfg)
        if not keep:
            return None
        try:
            kept = read_columns(info, keep)
        except Exception as e:  # noqa: BLE001 - flags its shard, never the run
            raise _UnreadableShard(_error_text(e)) from None
        if kept.num_rows != info.num_rows:
            raise _UnreadableShard(f"{kept.num_rows} rows in its id/passthrough columns, {info.num_rows} in its footer")
        return kept

    def _finalize(self, table: pa.Table, kept: pa.Table | None, identity: dict) -> pa.Table:
        """Output columns: id (or `row`), passthrough, results, status."""
        cols: dict[str, pa.ChunkedArray] = {}
        if not self.cfg.id_column:
            cols[ROW_OUT] = table.column(ROW)
        if kept is not None:
            cols.update(zip(kept.column_names, kept.columns))
        for c in (PROBS, TAGS, LABEL, SCORE, TOP_K, STATUS):
            if c in table.column_names:
                cols[c] = table.column(c)
        out = pa.table(cols)
        if kept is not None:  # nullability and field metadata as the input had them
            fields = {f.name: f for f in kept.schema}
            out = out.cast(pa.schema([fields.get(f.name, f) for f in out.schema]))
        return out.replace_schema_metadata({**self.meta, META_INPUT: _json(identity)})

    def _empty(self, info: sh.ShardInfo) -> pa.Table:
        """A zero-row table with the result columns (so every input shard has an output file)."""
        fields = [pa.field(SHARD, pa.int32()), pa.field(ROW, pa.int64()), pa.field(PROBS, pa.list_(pa.float32()))]
        if self.multi:
            fields += [pa.field(TAGS, pa.list_(pa.string()))]
        else:
            fields += [pa.field(LABEL, pa.string()), pa.field(SCORE, pa.float32())]
        if self.cfg.top_k:
            fields += [pa.field(TOP_K, pa.list_(pa.struct([("label", pa.string()), ("score", pa.float32())])))]
        fields += [pa.field(STATUS, pa.string())]
        return pa.schema(fields).empty_table()

    def _count(self, table: pa.Table) -> None:
        self.summary.rows += table.num_rows
        if table.num_rows:
            for d in pc.value_counts(table.column(STATUS)).to_pylist():
                self.summary.status[d["values"]] = self.summary.status.get(d["values"], 0) + d["counts"]
            col = TAGS if TAGS in table.column_names else LABEL
            flat = pc.list_flatten(table.column(col)) if col == TAGS else table.column(col).drop_null()
            for d in pc.value_counts(flat).to_pylist():
                self.summary.tag_counts[d["values"]] = self.summary.tag_counts.get(d["values"], 0) + d["counts"]
            if self.cfg.id_column:
                self.id_hashes.append(_hash_ids(table.column(self.cfg.id_column)))

    def finish(self) -> None:
        if self.id_hashes:  # ids seen more than once among the shards scored in this run
            h = np.concatenate(self.id_hashes)
            self.summary.duplicate_ids = int(len(h) - len(np.unique(h)))
        if self.pending:
            missing = [self.todo[s].shard.uri for s in sorted(self.pending)]
            raise RuntimeError(f"{len(missing)} shard(s) did not get all their rows back (e.g. {missing[0]}); "
                               "nothing was committed for them; re-run to resume")


def _hash_ids(ids: pa.ChunkedArray) -> np.ndarray:
    """64-bit hashes of an id column: 8 bytes a row however long the ids (a false duplicate
    among a million ids has odds of ~1e-8). Ids of any type: nested ones (struct, list)
    are hashed by their text form."""
    import pandas as pd

    ids = ids.drop_null()  # a missing id is no one's duplicate
    try:
        return pd.util.hash_pandas_object(ids.to_pandas(), index=False).to_numpy()
    except TypeError:
        return pd.util.hash_pandas_object(pd.Series([repr(v) for v in ids.to_pylist()]), index=False).to_numpy()
