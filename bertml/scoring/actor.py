"""Stage 2 (actor pool, on the accelerators): score a unit's tokens and write its rows as
one part; return an acknowledgement row, never the scored rows."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bertml.output import OutputDir, Part, part_name
from bertml.scoring.schema import ACK, ERROR, ROW, SHARD


class PartWriter:
    """Where a scoring actor writes parts: the output folder, and per shard (index in the
    run's todo list) its output name and part key."""

    def __init__(self, output: str, names: list[str], keys: list[str]):
        self.output, self.names, self.keys = output, names, keys
        self._out: OutputDir | None = None

    def write(self, s: int, start: int, end: int, table: pa.Table) -> None:
        if self._out is None:
            self._out = OutputDir(self.output)
        name = self.names[s]
        self._out.write_part(Part(name, start, end, self.keys[s], part_name(name, start, end, self.keys[s])), table)

    def __getstate__(self):
        return {"output": self.output, "names": self.names, "keys": self.keys, "_out": None}


class ScoreWriter:
    """Ray Data actor: score a unit's tokens and write its rows as a part; returns one
    acknowledgement row per part (or per unreadable unit), never the scored rows."""

    def __init__(self, checkpoint: str, *, parts: PartWriter, batch_rows: int = 1 << 30, **scorer_kw):
        from bertml.scoring.infer import Scorer  # torch only here: assemble workers start light

        self.scorer = Scorer(checkpoint, **scorer_kw)
        self.parts, self.batch_rows = parts, batch_rows

    def __call__(self, batch: pa.Table) -> pa.Table:
        acks: list[tuple[int, int, int, str | None]] = []
        errors = batch.column(ERROR)
        if errors.null_count < batch.num_rows:  # units that could not be read: their shard is flagged
            bad = batch.filter(pc.is_valid(errors))
            for s, e in zip(bad.column(SHARD).to_pylist(), bad.column(ERROR).to_pylist()):
                acks.append((s, -1, -1, e))
            batch = batch.filter(pc.is_null(errors))
        if batch.num_rows:
            batch = batch.drop_columns([ERROR])
            scored = pa.concat_tables([self.scorer(batch.slice(i, self.batch_rows))  # Scorer calls of batch_size rows
                                       for i in range(0, batch.num_rows, self.batch_rows)])
            shards, rows = scored.column(SHARD).to_numpy(), scored.column(ROW).to_numpy()
            # runs of consecutive rows of one shard: one part each (a whole unit, normally)
            cuts = np.flatnonzero((np.diff(shards) != 0) | (np.diff(rows) != 1)) + 1
            results = scored.drop_columns([SHARD, ROW])
            for a, b in zip([0, *cuts.tolist()], [*cuts.tolist(), len(rows)]):
                s, start = int(shards[a]), int(rows[a])
                self.parts.write(s, start, start + (b - a), results.slice(a, b - a))
                acks.append((s, start, start + (b - a), None))
        return pa.Table.from_pylist([dict(zip(ACK.names, a)) for a in acks], schema=ACK)
