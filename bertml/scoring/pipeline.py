"""`score()`: pre-flight, plan, and the Ray Data pipeline read+tokenize -> actor -> write."""

from __future__ import annotations

import functools
import logging
import time
import warnings
from dataclasses import asdict, dataclass

from bertml import checkpoint as ckpt_io
from bertml import cluster
from bertml import shards as sh
from bertml.config import ScoreConfig, to_dict
from bertml.coverage import Coverage
from bertml.output import (
    MANIFEST,
    META_CHECKPOINT,
    META_FINGERPRINT,
    META_LABELS,
    META_OPTIONS,
    OutputDir,
    output_name,
)
from bertml.scoring.actor import ScoreWriter
from bertml.scoring.checks import (
    check_output_paths,
    check_shards,
    check_window,
    checkpoint_name,
    kept_columns,
    refuse_files_in_the_way,
    sample_coverage,
)
from bertml.scoring.coordinator import Coordinator
from bertml.scoring.plan import default_unit_rows, resources
from bertml.scoring.read import ReadUnits
from bertml.scoring.resume import json_bytes, kept_parts, output_options, part_key, resumable
from bertml.scoring.summary import ScoreSummary
from bertml.secrets import redact

log = logging.getLogger("bertml.score")


@dataclass
class Accepted:
    """A run that passed every pre-flight check: what the rest of `score` works from."""

    checkpoint: str  # local copy
    meta: ckpt_io.CheckpointMeta
    max_length: int
    fingerprint: str
    out: OutputDir
    good: list[sh.ShardInfo]
    bad: list[dict]
    names: list[str]  # output name per good shard
    coverage: Coverage | None = None  # how much of a sample of the text the tokenizer reads


def score(cfg: ScoreConfig) -> ScoreSummary:
    """Score every row of `cfg.input` into `cfg.output`; see `bertml.scoring`."""
    t0 = time.perf_counter()
    run = preflight(cfg)
    run.out.create()
    run.out.lock()
    ckpt_io.remember_checked(run.checkpoint, cfg.trust_remote_code)  # the run is accepted: skip the build next time
    try:
        summary, records = score_accepted(cfg, run)
        summary.seconds = time.perf_counter() - t0
        run.out.write_json(MANIFEST, {
            "checkpoint": checkpoint_name(cfg.checkpoint), "fingerprint": run.fingerprint,
            "labels": run.meta.labels, "config": redact(to_dict(cfg)), "summary": asdict(summary),
            "shards": records, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
        return summary
    finally:
        run.out.unlock()


def preflight(cfg: ScoreConfig) -> Accepted:
    """Every check before Ray starts and before anything is written: checkpoint, tokenizer
    window, output folder, shard footers and columns."""
    cluster.resolve_outputs(cfg, ["output"])  # `ray job submit --working-dir`: say where relative output goes
    local_ckpt = ckpt_io.localize(cfg.checkpoint)  # s3://... -> cached local copy (workers fetch their own)
    meta = ckpt_io.validate(local_ckpt, cfg.trust_remote_code, remember=False)
    max_length = cfg.max_length or meta.max_length
    ckpt_io.check_max_length(local_ckpt, max_length)
    check_window(cfg, local_ckpt, max_length)
    shard_list = sh.resolve(cfg.input, "input")
    out = OutputDir(cfg.output)
    check_output_paths(out, cfg, shard_list, local_ckpt)
    cluster.check_visible(cluster.score_paths(cfg.checkpoint, shard_list, out.root if out.local else None))  # multi-node: every node sees them
    good, bad = check_shards(sh.inspect_all(shard_list), cfg, kept_columns(cfg))
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
    return Accepted(local_ckpt, meta, max_length, ckpt_io.fingerprint(local_ckpt), out, good, bad, names,
                    sample_coverage(cfg, local_ckpt, good))


def score_accepted(cfg: ScoreConfig, run: Accepted) -> tuple[ScoreSummary, list[dict]]:
    """Under the output's lock: keep what is done, score the rest; (summary, per-shard records)."""
    out = run.out
    found = out.existing(run.names)  # under the lock: no other run writes here now
    refuse_files_in_the_way(out, [n for n, m in found.items() if m is None]
                            + ([] if out.manifest_is_ours() else [MANIFEST]))
    if cfg.overwrite:
        out.clear()
    out.clean_tmp()
    summary = ScoreSummary(output=redact(cfg.output), shards_skipped=run.bad,
                           coverage=run.coverage.record() if run.coverage else None)
    options = output_options(cfg, run.max_length)
    done = resumable(out, run.good, found, run.fingerprint, options) if cfg.resume and not cfg.overwrite \
        else [False] * len(run.good)
    todo = [info for info, d in zip(run.good, done) if not d]
    summary.shards_resumed = len(run.good) - len(todo)
    schema_meta = {META_LABELS: json_bytes(run.meta.labels), META_CHECKPOINT: checkpoint_name(cfg.checkpoint).encode(),
                   META_FINGERPRINT: run.fingerprint.encode(), META_OPTIONS: json_bytes(options)}
    keys = [part_key(run.fingerprint, options, info) for info in todo]
    kept = kept_parts(out, todo, keys, [n for n, d in zip(run.names, done) if d], cfg)
    coord = Coordinator(out, cfg, todo, kept, keys, schema_meta, run.meta.multi_label, summary)
    try:
        if coord.shards:
            from bertml.runtime import init_ray

            init_ray()
            coord.resources = resources(cfg)
        coord.start()
        if coord.shards:
            coord.plan(cfg.unit_rows or default_unit_rows(cfg, coord.resources, coord.rows_to_score()))
            if coord.units:
                run_pipeline(cfg, coord, run.max_length)
        coord.finish()
    except BaseException:
        coord.abort()
        raise
    return summary, coord.records


def run_pipeline(cfg: ScoreConfig, coord: Coordinator, max_length: int) -> None:
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


def _restart_args(n: int) -> dict:
    return {"max_restarts": n, "max_task_retries": n}
