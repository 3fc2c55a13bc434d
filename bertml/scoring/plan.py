"""Planning: what the cluster offers (actors, threads, batch sizes), and the rows still to
score cut into read units."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from bertml import shards as sh
from bertml.config import CPU_BATCH, GPU_BATCH, ScoreConfig
from bertml.output import Part


class Resources(NamedTuple):
    """What a run uses, resolved once Ray is up."""

    gpus: float
    cpus: int
    use_gpu: bool
    n_actors: int
    threads: int
    batch_size: int
    max_tokens: int


def resources(cfg: ScoreConfig) -> Resources:
    import ray

    from bertml.runtime import cluster_gpus, resolve_use_gpu

    gpus = cluster_gpus()
    use_gpu = resolve_use_gpu(cfg.use_gpu, gpus)
    n_actors = cfg.num_actors or (max(1, int(gpus)) if use_gpu else 1)
    cpus = float(ray.cluster_resources().get("CPU", 1))
    threads = cfg.torch_threads or max(1, int(cpus // n_actors))
    batch_size, max_tokens = batch_sizes(cfg, use_gpu)
    return Resources(gpus, int(cpus), use_gpu, n_actors, threads, batch_size, max_tokens)


def batch_sizes(cfg: ScoreConfig, use_gpu: bool) -> tuple[int, int]:
    """(rows per Scorer call, token budget per forward pass): the config's, or the device's defaults."""
    rows, tokens = GPU_BATCH if use_gpu else CPU_BATCH
    return cfg.batch_size or rows, cfg.max_tokens or tokens


UNIT_ROWS = 16384  # default rows per unit at most (truncate; chunk: / CHUNK_UNIT_SHARE)
CHUNK_UNIT_SHARE = 8  # chunked texts carry several windows a row


def default_unit_rows(cfg: ScoreConfig, res: Resources, rows: int) -> int:
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


def gaps(parts: list[Part], n: int) -> list[tuple[int, int]]:
    """Row ranges of [0, n) that no part covers."""
    gaps, cursor = [], 0
    for p in sorted(parts, key=lambda p: p.start):
        if p.start > cursor:
            gaps.append((cursor, min(p.start, n)))
        cursor = max(cursor, p.end)
    if cursor < n:
        gaps.append((cursor, n))
    return [(a, b) for a, b in gaps if b > a]
