"""Stage 3 (a Ray task per shard): assemble a shard's output file from its parts and the
id/passthrough columns it reads itself."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bertml import shards as sh
from bertml.output import LABEL, META_INPUT, ROW_OUT, STATUS, TAGS, OutputDir, Part
from bertml.scoring.ids import IdSketch, hash_ids
from bertml.scoring.read import error_text, read_columns
from bertml.scoring.resume import input_identity, json_bytes
from bertml.scoring.schema import result_schema


@dataclass
class ShardJob:
    """What an assemble task needs for one shard (small: no rows)."""

    index: int
    info: sh.ShardInfo
    name: str
    parts: list[Part]
    output: str  # the output URI as configured (object stores: credentials reach the worker, never a log)
    keep: list[str]  # id and passthrough columns
    id_column: str | None
    schema_meta: dict
    multi_label: bool
    top_k: int


def assemble(job: ShardJob) -> dict:
    """Run as a Ray task: the shard's parts in row order (each row once) + its id/passthrough
    columns -> the shard's output file. Local: a synced hidden temp file the driver renames
    into place; object stores: the final object, then the parts are removed. Returns the
    counts the driver records (or {"error": ...} for a shard that cannot be finished)."""
    out = OutputDir(job.output)
    info = job.info
    try:
        results = _parts_in_order(out, job.parts, info.num_rows) if info.num_rows else _empty(job)
        kept = _kept(info, job.keep)
    except _UnreadableShard as e:
        return {"index": job.index, "error": str(e)}
    table = _finalize(results, kept, job, info.num_rows)
    stats = _counts(table, job.id_column)
    stats.update(index=job.index, rows=table.num_rows)
    if out.local:
        stats["tmp"] = out.write_tmp(job.name, table)
    else:
        out.commit(job.name, table)
        out.delete_parts(job.parts)
    return stats


class _UnreadableShard(Exception):
    pass


def _parts_in_order(out: OutputDir, parts: list[Part], num_rows: int) -> pa.Table:
    """Rows 0..num_rows-1 from `parts`, each row once: parts sorted by start, overlaps (a
    unit written by two runs) cut away. A gap or a short part is an error, never a hole."""
    tables, cursor = [], 0
    for p in sorted(parts, key=lambda p: (p.start, -p.end)):
        if p.end <= cursor:
            continue
        if p.start > cursor:
            break
        try:
            with out.fs.open_input_file(out.path(p.path)) as f:
                t = pq.read_table(f)
        except Exception as e:  # noqa: BLE001
            raise _UnreadableShard(f"its scored part {p.path} could not be read ({error_text(e)}); re-run to "
                                   "score that unit again") from None
        if t.num_rows != p.rows:
            raise _UnreadableShard(f"its scored part {p.path} holds {t.num_rows} rows, not {p.rows}; re-run to "
                                   "score that unit again")
        tables.append(t.slice(cursor - p.start))
        cursor = p.end
    if cursor != num_rows:
        raise RuntimeError(f"scored parts cover rows 0-{cursor - 1} of {num_rows}; nothing was committed for "
                           "this shard: re-run to resume")
    return pa.concat_tables(tables, promote_options="permissive")


def _kept(info: sh.ShardInfo, keep: list[str]) -> pa.Table | None:
    """The shard's id and passthrough columns, exactly as stored, in row order."""
    if not keep:
        return None
    try:
        kept = read_columns(info, keep)
    except Exception as e:  # noqa: BLE001 - flags its shard, never the run
        raise _UnreadableShard(error_text(e)) from None
    if kept.num_rows != info.num_rows:
        raise _UnreadableShard(f"{kept.num_rows} rows in its id/passthrough columns, {info.num_rows} in its footer")
    return kept


def _finalize(results: pa.Table, kept: pa.Table | None, job: ShardJob, num_rows: int) -> pa.Table:
    """Output columns: id (or `row`), passthrough, results, status."""
    cols: dict[str, pa.ChunkedArray] = {}
    if not job.id_column:
        cols[ROW_OUT] = pa.chunked_array([pa.array(np.arange(num_rows, dtype=np.int64))])
    if kept is not None:
        cols.update(zip(kept.column_names, kept.columns))
    for c in result_schema(job.multi_label, job.top_k).names:
        cols[c] = results.column(c)
    out = pa.table(cols)
    if kept is not None:  # nullability and field metadata as the input had them
        fields = {f.name: f for f in kept.schema}
        out = out.cast(pa.schema([fields.get(f.name, f) for f in out.schema]))
    return out.replace_schema_metadata({**job.schema_meta, META_INPUT: json_bytes(input_identity(job.info))})


def _empty(job: ShardJob) -> pa.Table:
    """A zero-row table with the result columns (so every input shard has an output file)."""
    return result_schema(job.multi_label, job.top_k).empty_table()


def _counts(table: pa.Table, id_column: str | None) -> dict:
    """Status and tag counts of a shard's output, its duplicate ids, and its id sketch."""
    status, tags = {}, {}
    if table.num_rows:
        status = {d["values"]: d["counts"] for d in pc.value_counts(table.column(STATUS)).to_pylist()}
        col = TAGS if TAGS in table.column_names else LABEL
        flat = pc.list_flatten(table.column(col)) if col == TAGS else table.column(col).drop_null()
        tags = {d["values"]: d["counts"] for d in pc.value_counts(flat).to_pylist()}
    out = {"status": status, "tags": tags, "duplicate_ids": 0, "sketch": None}
    if id_column and table.num_rows:
        sketch = IdSketch.of(hash_ids(table.column(id_column)))
        out["duplicate_ids"], out["sketch"] = sketch.duplicates()[0], sketch
    return out
