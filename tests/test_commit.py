"""The driver's commit bookkeeping (`bertml.score._Committer`), without Ray: scored blocks
arrive in any order, split and bundled across shards, some delivered twice (retried
tasks); each shard is written once, complete and in input order, also when its rows were
spilled to disk on the way."""

import json
import os
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertml import shards as sh
from bertml.config import ScoreConfig
from bertml.output import OutputDir
from bertml.score import ERROR, ROW, SHARD, ScoreSummary, _Committer

SIZES = {"a.parquet": 230, "b.parquet": 57, "c.parquet": 1}


def _inputs(folder) -> list[sh.ShardInfo]:
    os.makedirs(folder)
    for name, n in SIZES.items():
        pq.write_table(pa.table({"id": [f"{name}-{i}" for i in range(n)], "text": ["x"] * n}), os.path.join(folder, name))
    return [sh.inspect(s) for s in sh.resolve(str(folder))]


def _scored(shard: int, rows: list[int]) -> pa.Table:
    """A block as the Scorer returns it (probs encode (shard, row) to check alignment)."""
    n = len(rows)
    return pa.table({SHARD: pa.array([shard] * n, pa.int32()), ROW: pa.array(rows, pa.int64()),
                     ERROR: pa.nulls(n, pa.string()),
                     "probs": pa.array([[float(shard), float(r)] for r in rows], pa.list_(pa.float32())),
                     "tags": pa.array([["t"]] * n, pa.list_(pa.string())), "status": pa.array(["ok"] * n)})


def _deliveries(infos, seed: int) -> list[pa.Table]:
    """Every row once, cut into runs, shuffled, bundled across shards; plus repeats."""
    rng = random.Random(seed)
    pieces = []
    for s, info in enumerate(infos):
        rows = list(range(info.num_rows))
        cuts = sorted(rng.sample(range(1, len(rows)), min(len(rows) - 1, 12))) if len(rows) > 1 else []
        pieces += [(s, rows[a:b]) for a, b in zip([0, *cuts], [*cuts, len(rows)])]
    pieces += rng.sample(pieces, 6)  # retried tasks deliver some pieces again, even after a commit
    rng.shuffle(pieces)
    blocks = []
    while pieces:
        k = rng.randint(1, 3)
        bundle, pieces = pieces[:k], pieces[k:]
        blocks.append(pa.concat_tables([_scored(s, r) for s, r in bundle]))
    return blocks


@pytest.mark.parametrize("spill_bytes", [1 << 40, 1], ids=["in-memory", "spill-always"])
@pytest.mark.parametrize("seed", [0, 1])
def test_each_shard_written_once_complete_in_order(tmp_path, spill_bytes, seed):
    infos = _inputs(tmp_path / "in")
    cfg = ScoreConfig(checkpoint="unused", input=str(tmp_path / "in"), output=str(tmp_path / "out"))
    summary = ScoreSummary(output=cfg.output)
    c = _Committer(OutputDir(cfg.output), infos, cfg, {b"k": b"v"}, summary, None, True, spill_bytes=spill_bytes)
    try:
        for block in _deliveries(infos, seed):
            c.add(block)
        c.finish()
    finally:
        c.close()
    assert summary.shards_scored == len(SIZES) and summary.rows == sum(SIZES.values())
    assert sorted(r["output"] for r in c.records) == sorted(SIZES)
    assert (c.spilled > 0) == (spill_bytes == 1) and c.in_memory == 0 and not c.parts
    for s, (name, n) in enumerate(sorted(SIZES.items())):
        got = pq.read_table(tmp_path / "out" / name)
        assert got.column_names == ["id", "probs", "tags", "status"]
        assert got.column("id").to_pylist() == [f"{name}-{i}" for i in range(n)]
        assert np.array(got.column("probs").to_pylist()).tolist() == [[s, i] for i in range(n)]
        meta = got.schema.metadata
        assert meta[b"k"] == b"v" and json.loads(meta[b"bertml.input"]) == {
            "rows": n, "bytes": os.path.getsize(tmp_path / "in" / name)}
    if c.spilled:
        assert c._spill_dir is None  # removed by close()


def test_rows_outside_the_shard_are_refused(tmp_path):
    infos = _inputs(tmp_path / "in")
    cfg = ScoreConfig(checkpoint="unused", input=str(tmp_path / "in"), output=str(tmp_path / "out"))
    c = _Committer(OutputDir(cfg.output), infos, cfg, {}, ScoreSummary(output=cfg.output), None, True)
    with pytest.raises(RuntimeError, match="outside the shard"):
        c.add(_scored(1, [0, 57]))
