"""Shared inputs for the reliability suite: one corpus and one uninterrupted reference run."""

import pytest
from relkit import N_SHARDS, ROWS_PER_SHARD, read_output, score_cfg, write_corpus


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """(input folder, every id in input order): many small shards so runs last a while."""
    folder = str(tmp_path_factory.mktemp("corpus") / "in")
    return folder, write_corpus(folder, N_SHARDS, ROWS_PER_SHARD)


@pytest.fixture(scope="session")
def reference(ray_local, multi_ckpt, corpus, tmp_path_factory):
    """The output of an uninterrupted run over `corpus` (what every faulted run must equal)."""
    from bertml.score import score

    out = str(tmp_path_factory.mktemp("reference") / "out")
    summary = score(score_cfg(multi_ckpt, corpus[0], out))
    assert summary.rows == len(corpus[1]) and summary.shards_scored == N_SHARDS
    return read_output(out)
