"""Shared inputs for the reliability suite: one corpus and its expected scores."""

import pyarrow as pa
import pytest
from relkit import N_SHARDS, ROWS_PER_SHARD, write_corpus


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """(input folder, every id in input order): many small shards so runs last a while."""
    folder = str(tmp_path_factory.mktemp("corpus") / "in")
    return folder, write_corpus(folder, N_SHARDS, ROWS_PER_SHARD)


@pytest.fixture(scope="session")
def reference(multi_ckpt, corpus):
    """Expected output for `corpus`: the library's own stages (tokenize -> Scorer) called in
    this process on every row, no Ray. Every faulted run must equal it; the uninterrupted
    run in the concurrency test checks that a normal run equals it too."""
    import pyarrow.dataset as pads
    from transformers import AutoTokenizer

    from bertml.output import STATUS
    from bertml.scoring.infer import Scorer
    from bertml.tokenization import INPUT_IDS, encode_batch

    scorer = Scorer(multi_ckpt)
    table = pads.dataset(corpus[0], format="parquet").to_table()
    ids, status = encode_batch(AutoTokenizer.from_pretrained(multi_ckpt), table.column("text").to_pylist(), scorer.meta.max_length)
    batch = pa.table({"id": table.column("id"), INPUT_IDS: ids, STATUS: pa.array(status, pa.string())})
    return scorer(batch)

