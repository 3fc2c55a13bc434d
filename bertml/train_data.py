"""Training data: labelled Parquet -> checked, split, label-encoded Ray Datasets.

The driver reads the text and labels columns once, shard by shard (streaming, only
counts kept), to build the ordered label set, check every row's labels and size the
split. The validation split is a seeded hash of the text, so it is the same on every run
and every machine, and duplicate texts never straddle train and validation.
"""

from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq

from bertml import shards as sh
from bertml.config import DataConfig
from bertml.labels import LabelError, LabelSet, parse_cell

TEXT, TARGETS = "text", "targets"  # column names inside the training pipeline


@dataclass
class DataSummary:
    labels: LabelSet
    n_train: int
    n_val: int
    train_counts: dict[str, int]
    val_counts: dict[str, int]

    def pos_weight(self) -> list[float]:
        """neg/pos per label (clipped to [1, 100]) for BCE on imbalanced labels."""
        n = self.n_train
        return [float(np.clip((n - self.train_counts.get(name, 0)) / max(self.train_counts.get(name, 0), 1), 1.0, 100.0))
                for name in self.labels.names]


def is_val(texts: list, seed: int, fraction: float) -> np.ndarray:
    """[N] bool: deterministic seeded hash split on the text."""
    salt = f"{seed}:".encode()
    cut = int(fraction * 2**32)
    return np.array([zlib.crc32(salt + (t or "").encode("utf-8", "replace")) < cut for t in texts], dtype=bool)


def _scan(cfg: DataConfig, infos: list[sh.ShardInfo], split: str | None, max_rows: int | None, seed: int) -> tuple[Counter, int]:
    """Count labels of the rows in `split` ("train"/"val"/None=all), checking each row."""
    counts: Counter = Counter()
    n = 0
    single = cfg.problem_type == "single_label"
    for info in infos:
        with info.shard.fs.open_input_file(info.shard.path) as f:
            row0 = 0
            for batch in pq.ParquetFile(f).iter_batches(columns=[cfg.text_column, cfg.labels_column], batch_size=8192):
                texts = batch.column(cfg.text_column).to_pylist()
                cells = batch.column(cfg.labels_column).to_pylist()
                keep = np.ones(len(texts), dtype=bool)
                if split is not None:
                    v = is_val(texts, seed, cfg.val_fraction)
                    keep = v if split == "val" else ~v
                for i in np.flatnonzero(keep):
                    if max_rows is not None and n >= max_rows:
                        return counts, n
                    try:
                        names = parse_cell(cells[i], cfg.label_delimiter)
                    except LabelError as e:
                        raise sh.InputError(f"{info.shard.uri}: column {cfg.labels_column!r}, row {row0 + i}: {e}") from None
                    if single and len(names) != 1:
                        raise sh.InputError(
                            f"{info.shard.uri}: column {cfg.labels_column!r}, row {row0 + i}: single_label needs "
                            f"exactly one label, got {names!r} (use problem_type=multi_label, or set label_delimiter)"
                        )
                    counts.update(names)
                    n += 1
                row0 += len(texts)
    return counts, n


def check_schema(cfg: DataConfig, spec, what: str) -> list[sh.ShardInfo]:
    infos = []
    for r in sh.inspect_all(sh.resolve(spec, what)):
        if isinstance(r, sh.InputError):
            raise r
        sh.check_column(r, cfg.text_column, "text")
        sh.check_column(r, cfg.labels_column, "labels")
        infos.append(r)
    if sum(i.num_rows for i in infos) == 0:
        raise sh.InputError(f"{what} {spec}: all shards are empty (0 rows)")
    return infos


def summarize(cfg: DataConfig, seed: int) -> tuple[DataSummary, list[sh.ShardInfo], list[sh.ShardInfo] | None]:
    """Check schemas, count labels, size train/validation. Raises InputError with file/column/row."""
    train_infos = check_schema(cfg, cfg.train, "data.train")
    val_infos = check_schema(cfg, cfg.validation, "data.validation") if cfg.validation else None
    if val_infos is None:
        train_counts, n_train = _scan(cfg, train_infos, "train", cfg.max_rows, seed)
        val_counts, n_val = _scan(cfg, train_infos, "val", None, seed)
    else:
        train_counts, n_train = _scan(cfg, train_infos, None, cfg.max_rows, seed)
        val_counts, n_val = _scan(cfg, val_infos, None, None, seed)
    where = cfg.validation or f"{cfg.train} (val_fraction={cfg.val_fraction})"
    if n_train == 0:
        raise sh.InputError(f"data.train {cfg.train}: no training rows after the validation split")
    if n_val == 0:
        raise sh.InputError(f"validation data {where}: no rows; give data.validation or raise data.val_fraction")
    only_val = sorted(set(val_counts) - set(train_counts))
    if only_val:
        raise sh.InputError(
            f"validation data {where}, column {cfg.labels_column!r}: labels {only_val[:5]} never occur in the "
            "training data, so the model cannot learn them; add training examples or drop them"
        )
    _check_label_set(cfg, train_counts, n_train)
    labels = LabelSet.from_counts(train_counts, multi_label=cfg.problem_type == "multi_label")
    return DataSummary(labels, n_train, n_val, dict(train_counts), dict(val_counts)), train_infos, val_infos


def _check_label_set(cfg: DataConfig, counts: Counter, n_train: int) -> None:
    """Refuse label sets that train a model with nothing to learn."""
    where = f"data.train {cfg.train}, column {cfg.labels_column!r}"

    def binary(x: str) -> str:
        return f"; a binary tagger (is it {x}?) is data.problem_type=multi_label with labels [{x!r}] on positive rows and [] on negative ones"

    if not counts:
        raise sh.InputError(f"{where}: no training row has a label, so there is nothing to learn; "
                            f"put label names in the column{binary('spam')}")
    if cfg.problem_type == "single_label" and len(counts) == 1:
        (name,) = counts
        raise sh.InputError(f"{where}: every training row has the class {name!r}; single_label needs at least 2 "
                            f"classes{binary(name)}")
    if cfg.problem_type == "multi_label" and len(counts) == 1 and next(iter(counts.values())) == n_train:
        (name,) = counts
        raise sh.InputError(f"{where}: every training row has the only label {name!r}, so there are no negative "
                            f"examples; add rows without it (labels []) for a binary tagger")


class _EncodeRows:
    """map_batches fn: keep one side of the split, encode labels to targets."""

    def __init__(self, cfg: DataConfig, labels: LabelSet, seed: int, side: str | None):
        self.cfg, self.labels, self.seed, self.side = cfg, labels, seed, side

    def __call__(self, batch):
        texts = batch.column(self.cfg.text_column).to_pylist()
        cells = batch.column(self.cfg.labels_column).to_pylist()
        keep = np.ones(len(texts), dtype=bool)
        if self.side is not None:
            v = is_val(texts, self.seed, self.cfg.val_fraction)
            keep = v if self.side == "val" else ~v
        idx = np.flatnonzero(keep)
        texts_out = np.empty(len(idx), dtype=object)
        texts_out[:] = [texts[i] or "" for i in idx]
        targets = self.labels.encode([cells[i] for i in idx], self.cfg.label_delimiter)
        return {TEXT: texts_out, TARGETS: targets}


def datasets(cfg: DataConfig, summary: DataSummary, seed: int, train_infos, val_infos):
    """(train, validation) Ray Datasets with columns text, targets."""
    import ray.data

    def read(infos):
        fss = {type(i.shard.fs) for i in infos}
        if len(fss) > 1:
            raise sh.InputError("all training inputs must be on one filesystem (all local, or all in one bucket)")
        return ray.data.read_parquet([i.shard.path for i in infos], filesystem=infos[0].shard.fs).select_columns(
            [cfg.text_column, cfg.labels_column]
        )

    base = read(train_infos)
    if val_infos is None:
        train = base.map_batches(_EncodeRows(cfg, summary.labels, seed, "train"), batch_format="pyarrow")
        val = base.map_batches(_EncodeRows(cfg, summary.labels, seed, "val"), batch_format="pyarrow")
    else:
        train = base.map_batches(_EncodeRows(cfg, summary.labels, seed, None), batch_format="pyarrow")
        val = read(val_infos).map_batches(_EncodeRows(cfg, summary.labels, seed, None), batch_format="pyarrow")
    if cfg.max_rows is not None:
        train = train.limit(cfg.max_rows)
    return train, val
