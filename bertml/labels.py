"""The ordered label set: built from a `labels` column, encoded to multi-hot or class index.

A `labels` cell may be a list of strings (multi-label), a string split on a delimiter,
or one plain string (single-label). Label names may be any Unicode.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from bertml.errors import BertmlError


class LabelError(BertmlError, ValueError):
    """A labels cell cannot be read as labels."""


def parse_cell(cell: object, delimiter: str | None) -> list[str]:
    """One `labels` cell -> list of label names (stripped, de-duplicated, order kept)."""
    if cell is None:
        return []
    if isinstance(cell, str):
        parts = cell.split(delimiter) if delimiter else [cell]
    elif isinstance(cell, (list, tuple, np.ndarray)):
        parts = list(cell)
    else:
        raise LabelError(f"expected a string or a list of strings, got {type(cell).__name__} {cell!r}")
    out: list[str] = []
    for p in parts:
        if p is None:
            continue
        if not isinstance(p, str):
            raise LabelError(f"expected label names as strings, got {type(p).__name__} {p!r}")
        p = p.strip()
        if p and p not in out:
            out.append(p)
    return out


@dataclass(frozen=True)
class LabelSet:
    """Ordered label names; index i is output column i of the model."""

    names: tuple[str, ...]
    multi_label: bool = True

    def __post_init__(self) -> None:
        if not self.names:
            raise LabelError("no labels found in the training data")
        if len(set(self.names)) != len(self.names):
            raise LabelError(f"duplicate label names: {self.names}")

    @classmethod
    def from_counts(cls, counts: Counter[str], multi_label: bool) -> LabelSet:
        # Sorted names make the order independent of data order (reproducible heads).
        return cls(tuple(sorted(counts)), multi_label)

    @property
    def index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}

    def __len__(self) -> int:
        return len(self.names)

    def encode(self, cells: Iterable[object], delimiter: str | None) -> np.ndarray:
        """Multi-label: [N, L] float32 multi-hot. Single-label: [N] int64 class ids."""
        index = self.index
        rows = [parse_cell(c, delimiter) for c in cells]
        unknown = sorted({n for r in rows for n in r if n not in index})
        if unknown:
            raise LabelError(f"labels not in the label set: {unknown[:5]}")
        if not self.multi_label:
            bad = [r for r in rows if len(r) != 1]
            if bad:
                raise LabelError(f"single_label needs exactly one label per row, got {bad[0]!r}")
            return np.array([index[r[0]] for r in rows], dtype=np.int64)
        out = np.zeros((len(rows), len(self.names)), dtype=np.float32)
        for i, r in enumerate(rows):
            out[i, [index[n] for n in r]] = 1.0
        return out

    def to_targets(self, y: np.ndarray) -> np.ndarray:
        """Class ids [N] (single-label) or multi-hot [N, L] -> multi-hot [N, L] int."""
        return to_multi_hot(y, len(self.names))


def to_multi_hot(y: np.ndarray, n_labels: int) -> np.ndarray:
    """Class ids [N] -> one-hot [N, n_labels] int64; multi-hot or 0/1 scores [N, n_labels] ->
    [N, n_labels] int64 (> 0.5 is 1). The one conversion metrics, report and training share."""
    y = np.asarray(y)
    if y.ndim == 1:
        out = np.zeros((len(y), n_labels), dtype=np.int64)
        out[np.arange(len(y)), y] = 1
        return out
    return (y > 0.5).astype(np.int64)


def count_labels(cells: Sequence[object], delimiter: str | None) -> Counter[str]:
    counts: Counter[str] = Counter()
    for c in cells:
        counts.update(parse_cell(c, delimiter))
    return counts
