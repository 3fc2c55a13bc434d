"""Duplicate ids in bounded memory: id hashing and the mergeable bottom-K sketch."""

import numpy as np
import pyarrow as pa

from bertml.scoring.ids import IdSketch, hash_ids


def test_null_ids_are_not_duplicates_and_struct_ids_hash():
    ids = pa.chunked_array([pa.array([None, None, "a", "a"])])
    h = hash_ids(ids)
    assert len(h) == 2 and len(set(h.tolist())) == 1
    assert len(hash_ids(pa.chunked_array([pa.array([{"k": 1}, {"k": 2}])]))) == 2


def test_duplicate_ids_exact_within_the_sketch_and_estimated_beyond():
    rng = np.random.default_rng(0)
    a = pa.chunked_array([pa.array([f"id-{i}" for i in range(3000)] + ["id-1", "id-2", None])])
    b = pa.chunked_array([pa.array([f"id-{i}" for i in range(2990, 4000)])])  # 10 shared with a
    s = IdSketch.of(hash_ids(a)).merge(IdSketch.of(hash_ids(b)))
    assert s.duplicates() == (12, False)
    old = IdSketch.K
    IdSketch.K = 1000  # a small sketch: the run now holds more distinct ids than it keeps
    try:
        ids = rng.integers(0, 2**62, 40_000)
        dup = np.concatenate([ids, ids[:4000]])  # 4,000 repeats
        shards = np.array_split(rng.permutation(dup), 8)
        total = None
        for part in shards:
            sk = IdSketch.of(hash_ids(pa.chunked_array([pa.array(part)])))
            total = sk if total is None else total.merge(sk)
        est, estimated = total.duplicates()
        assert estimated and len(total.hashes) == 1000 and 2500 < est < 5500
        clean = IdSketch.of(hash_ids(pa.chunked_array([pa.array(ids)])))
        assert clean.duplicates() == (0, True)  # no repeats in the sample: no false duplicates
    finally:
        IdSketch.K = old
