"""Duplicate ids across a run in bounded memory."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


class IdSketch:
    """Duplicate ids across a run's shards in bounded memory: the K smallest distinct 64-bit
    id hashes, each with its count (a bottom-K sample of the distinct ids, mergeable).

    Exact while the run holds at most K distinct ids (each shard's own count is always
    exact). Beyond that, a duplicated id is in the sample with probability f (the sample's
    share of the hash space), and its repeats are counted exactly there: duplicates =
    repeats in the sample / f, an estimate that is 0 when the sample has no repeats.
    """

    K = 1 << 17  # 1.5 MB at most, per shard result and on the driver

    def __init__(self, hashes: np.ndarray, counts: np.ndarray, total: int, saturated: bool):
        self.hashes, self.counts, self.total, self.saturated = hashes, counts, total, saturated

    @classmethod
    def of(cls, hashes: np.ndarray) -> IdSketch:
        u, c = np.unique(hashes.astype(np.uint64, copy=False), return_counts=True)
        return cls(u, c, len(hashes), False)._cut()

    def _cut(self) -> IdSketch:
        if len(self.hashes) > self.K:
            self.hashes, self.counts, self.saturated = self.hashes[: self.K], self.counts[: self.K], True
        return self

    def merge(self, other: IdSketch | None) -> IdSketch:
        if other is None:
            return self
        h = np.concatenate([self.hashes, other.hashes])
        u, inv = np.unique(h, return_inverse=True)
        c = np.bincount(inv, weights=np.concatenate([self.counts, other.counts]), minlength=len(u)).astype(np.int64)
        return IdSketch(u, c, self.total + other.total, self.saturated or other.saturated)._cut()

    def duplicates(self) -> tuple[int, bool]:
        """(ids beyond their first occurrence, whether that is an estimate)."""
        if not self.saturated:
            return int(self.total - len(self.hashes)), False
        repeats = int(self.counts.sum() - len(self.counts))
        share = (float(self.hashes[-1]) + 1.0) / 2.0**64
        return int(round(repeats / share)), True


def hash_ids(ids: pa.ChunkedArray) -> np.ndarray:
    """64-bit hashes of an id column (a false duplicate among a million ids has odds of
    ~1e-8). Ids of any type: nested ones (struct, list) are hashed by their text form."""
    import pandas as pd

    ids = ids.drop_null()  # a missing id is no one's duplicate
    try:
        return pd.util.hash_pandas_object(ids.to_pandas(), index=False).to_numpy()
    except TypeError:
        return pd.util.hash_pandas_object(pd.Series([repr(v) for v in ids.to_pylist()]), index=False).to_numpy()
