"""Unit planning: read units cover exactly the rows still to score."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bertml import shards as sh
from bertml.scoring.plan import plan_units


def test_units_cover_exactly_the_rows_no_part_holds(tmp_path):
    path = tmp_path / "groups.parquet"
    schema = pa.schema([("text", pa.string())])
    with pq.ParquetWriter(path, schema) as w:
        for n in [16, 16, 16, 0, 300, 5]:
            w.write_table(pa.table({"text": [f"t{i}" for i in range(n)]}, schema=schema))
    info = sh.inspect_all(sh.resolve(str(path), "input"))[0]
    todo = [(5, 20), (40, 70), (340, 353)]
    units = plan_units(0, info, 8, todo)
    rows = [r for u in units for r in range(u["row_start"], u["row_start"] + u["rows"])]
    assert rows == [r for a, b in todo for r in range(a, b)] and all(u["rows"] <= 8 for u in units)
    bounds = np.cumsum([0, 16, 16, 16, 0, 300, 5])
    for u in units:  # each unit's offset is its first row within its first row group
        assert u["row_start"] == bounds[u["first_group"]] + u["offset"]


def test_units_merge_small_row_groups_and_split_big_ones(tmp_path):
    from bertml import shards as sh
    path = tmp_path / "groups.parquet"
    with pq.ParquetWriter(path, pa.schema([("text", pa.string())])) as w:
        for n in [16, 16, 16, 0, 300, 5]:
            w.write_table(pa.table({"text": [f"t{i}" for i in range(n)]}, schema=pa.schema([("text", pa.string())])))
    info = sh.inspect_all(sh.resolve(str(path), "input"))[0]
    units = plan_units(0, info, 40)
    assert [(u["first_group"], u["groups"], u["rows"]) for u in units] == (
        [(0, 2, 32), (2, 2, 16)] + [(4, 1, 40)] * 7 + [(4, 1, 20), (5, 1, 5)])
    assert all(u["rows"] <= 40 for u in units)
    # Every row exactly once, in order: each unit starts where the previous one ended.
    assert [u["row_start"] for u in units] == list(np.cumsum([0] + [u["rows"] for u in units[:-1]]))
    assert sum(u["rows"] for u in units) == info.num_rows == 353
