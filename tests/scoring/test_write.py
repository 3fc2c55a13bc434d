"""The bookkeeping between scored parts and committed shards, without Ray: parts written
in any order, cut anywhere, some written twice or overlapping (a retried unit, a unit
scored by two runs); each shard is assembled once, complete and in input order. Also the
units planned over the rows no part holds, and the bounded duplicate-id count."""

import json
import os
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertml import shards as sh
from bertml.output import PARTS, OutputDir
from bertml.scoring.actor import PartWriter
from bertml.scoring.plan import gaps
from bertml.scoring.write import ShardJob, assemble

SIZES = {"a.parquet": 230, "b.parquet": 57, "c.parquet": 1}


def _inputs(folder) -> list[sh.ShardInfo]:
    os.makedirs(folder)
    for name, n in SIZES.items():
        pq.write_table(pa.table({"id": [f"{name}-{i}" for i in range(n)], "text": ["x"] * n}), os.path.join(folder, name))
    return [sh.inspect(s) for s in sh.resolve(str(folder))]


def _results(shard: int, start: int, end: int) -> pa.Table:
    """A part as the scoring actor writes it (probs encode (shard, row) to check alignment)."""
    rows = range(start, end)
    return pa.table({"probs": pa.array([[float(shard), float(r)] for r in rows], pa.list_(pa.float32())),
                     "tags": pa.array([["t"]] * len(rows), pa.list_(pa.string())), "status": pa.array(["ok"] * len(rows))})


def _cuts(n: int, rng: random.Random) -> list[tuple[int, int]]:
    cuts = sorted(rng.sample(range(1, n), min(n - 1, 12))) if n > 1 else []
    return list(zip([0, *cuts], [*cuts, n]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_shard_assembled_once_complete_in_order(tmp_path, seed):
    rng = random.Random(seed)
    infos = _inputs(tmp_path / "in")
    out = OutputDir(str(tmp_path / "out"))
    out.create()
    names = [os.path.basename(i.shard.path) for i in infos]
    writer = PartWriter(out.uri, names, ["0123456789abcdef"] * len(infos))
    writes = [(s, a, b) for s, info in enumerate(infos) for a, b in _cuts(info.num_rows, rng)]
    writes += rng.sample(writes, 4)  # retried units rewrite the same part
    # a unit scored again by a later run, cut differently: overlaps two parts
    writes += [(0, 10, 40), (0, 3, 5)]
    rng.shuffle(writes)
    for s, a, b in writes:
        writer.write(s, a, b, _results(s, a, b))
    found = out.parts()
    assert sorted(found) == sorted(names)
    for s, (info, name) in enumerate(zip(infos, names)):
        job = ShardJob(s, info, name, found[name], out.uri, ["id"], "id", {b"k": b"v"}, True, 0)
        result = assemble(job)
        assert result["rows"] == info.num_rows and result["status"] == {"ok": info.num_rows}
        out.publish(result["tmp"], name)
        got = pq.read_table(tmp_path / "out" / name)
        assert got.column_names == ["id", "probs", "tags", "status"]
        assert got.column("id").to_pylist() == [f"{name}-{i}" for i in range(info.num_rows)]
        assert np.array(got.column("probs").to_pylist()).tolist() == [[s, i] for i in range(info.num_rows)]
        meta = got.schema.metadata
        assert meta[b"k"] == b"v" and json.loads(meta[b"bertml.input"]) == {
            "rows": info.num_rows, "bytes": os.path.getsize(info.shard.path)}
        out.delete_parts(found[name])
    assert not os.path.exists(tmp_path / "out" / PARTS)
    assert sorted(out.committed()) == sorted(names)


def test_a_gap_or_a_cut_short_part_is_never_committed(tmp_path):
    infos = _inputs(tmp_path / "in")
    out = OutputDir(str(tmp_path / "out"))
    out.create()
    writer = PartWriter(out.uri, ["a.parquet"], ["0123456789abcdef"])
    writer.write(0, 0, 100, _results(0, 0, 100))
    writer.write(0, 120, 230, _results(0, 120, 230))
    parts = sorted(out.parts()["a.parquet"], key=lambda p: p.start)
    assert gaps(parts, 230) == [(100, 120)]
    with pytest.raises(RuntimeError, match="cover rows 0-99 of 230"):
        assemble(ShardJob(0, infos[0], "a.parquet", parts, out.uri, ["id"], "id", {}, True, 0))
    # a worker killed mid-write leaves a short file: not taken as a part
    path = tmp_path / "out" / parts[1].path
    path.write_bytes(path.read_bytes()[:50])
    assert [p.end for p in out.parts()["a.parquet"]] == [100]
    assert out.committed() == [] and out.exists("a.parquet") is False
