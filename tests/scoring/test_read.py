"""The read stage and its pre-flight: a window too small fails before Ray, a rewritten
shard is refused rather than mixed."""

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertml import shards as sh
from bertml.config import ScoreConfig
from bertml.scoring import score
from bertml.shards import InputError, resolve


@pytest.mark.parametrize("extra", [{"max_length": 2}, {"long_text": "chunk", "max_length": 16, "chunk_stride": 14}])
def test_window_too_small_fails_before_ray(multi_ckpt, tmp_path, monkeypatch, extra):
    import bertml.runtime

    monkeypatch.setattr(bertml.runtime, "init_ray", lambda *a, **k: pytest.fail("Ray was started"))
    os.makedirs(tmp_path / "in")
    pq.write_table(pa.table({"id": [1], "text": ["goal"]}), tmp_path / "in" / "a.parquet")
    with pytest.raises(InputError, match="max_length"):
        score(ScoreConfig(checkpoint=multi_ckpt, input=str(tmp_path / "in"), output=str(tmp_path / "out"), **extra))
    assert not os.path.exists(tmp_path / "out")


def test_a_shard_rewritten_after_listing_is_refused_not_mixed(tmp_path):
    """Ids are read at commit, texts earlier: a file rewritten in between (same rows, other
    bytes) must fail its shard, never pair new ids with old texts' scores."""
    from bertml.scoring.read import ReadUnits, ShardChanged, check_unchanged
    from bertml.scoring.schema import ERROR

    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["goal", "bank"]}), path)
    info = sh.inspect(resolve(str(path))[0])
    pq.write_table(pa.table({"id": ["new-a", "new-b"], "text": ["chip", "tennis match"]}), path)
    with path.open("rb") as f, pytest.raises(ShardChanged, match="changed while it was being scored"):
        check_unchanged(info, pa.PythonFile(f))
    marker = ReadUnits([info], "text", 8, {}).read(0, range(1), 0)
    assert marker.num_rows == 1 and "changed while it was being scored" in marker.column(ERROR)[0].as_py()
