"""Stage 1 (CPU tasks): read a unit's text column and tokenize it.

A unit is a run of small row groups or a slice of a big one (`plan.plan_units`). Each
row carries (shard, row) for the exactly-once accounting, which is why this is our own
small stage rather than `read_parquet`. Read and tokenize are one function, not two fused
`map_batches`: Ray Data bundles a fused stage's input up to the later stage's batch size,
which put every unit into a single task (jobs/bench/gpu.py, section D).
"""

from __future__ import annotations

import functools

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bertml import checkpoint as ckpt_io
from bertml import shards as sh
from bertml.output import STATUS
from bertml.scoring.schema import ERROR, IDS_TYPE, ROW, SHARD, TEXT
from bertml.tokenization import INPUT_IDS, encode_batch


class ReadUnits:
    """map_batches fn: units (see `plan_units`) -> one tokenized block per unit.

    Each unit's text is read, tokenized `batch_size` rows at a time (bounded tokenizer
    memory) and yielded as one block carrying (_shard, _row); the scoring actor writes the
    block's rows as one part (few parts: few files and, on object stores, few requests).
    Id and passthrough columns stay out of the pipeline: the assemble task reads them from
    the shard, so their types pass through exactly and shards whose types differ (an int id
    in one, a string id in the next) never meet in one batch.
    """

    def __init__(self, infos: list[sh.ShardInfo], text_column: str, batch_rows: int, tokenize: dict):
        self.infos, self.text_column = infos, text_column
        self.batch_rows, self.tokenize = batch_rows, tokenize

    def __call__(self, units: dict):
        keys = ("shard", "first_group", "groups", "row_start", "offset", "rows")
        for s, g0, k, r0, off, n in zip(*(units[key] for key in keys)):
            table = self.read(int(s), range(int(g0), int(g0) + int(k)), int(r0), int(off), int(n))
            if table.column(ERROR).null_count < table.num_rows:  # the unit's error marker
                yield table.drop_columns([TEXT]).append_column(INPUT_IDS, pa.nulls(table.num_rows, IDS_TYPE)) \
                    .append_column(STATUS, pa.nulls(table.num_rows, pa.string()))
                continue
            yield pa.concat_tables([tokenize_stage(table.slice(i, self.batch_rows), **self.tokenize)
                                    for i in range(0, table.num_rows, self.batch_rows)])

    def read(self, s: int, groups: range, row_start: int, offset: int = 0, rows: int | None = None) -> pa.Table:
        """Rows [offset, offset + rows) of row groups `groups` of shard `s`; row_start: the first one's row in the shard."""
        info = self.infos[s]
        try:
            t = read_columns(info, [self.text_column], groups)
            footer = sum(info.row_group_rows[g] for g in groups)
            if t.num_rows != footer:  # pages and footer disagree: rows would go missing or repeat
                raise ValueError(f"row group(s) {groups.start}-{groups.stop - 1} hold {t.num_rows} rows, "
                                 f"its footer says {footer}; rewrite the file")
            text = _as_text(t.column(self.text_column).slice(offset, rows))
        except Exception as e:  # noqa: BLE001 - a bad row group flags its shard, never the run
            return error_table(s, error_text(e))
        n = len(text)
        return pa.table({SHARD: pa.array(np.full(n, s, np.int32)), ROW: pa.array(np.arange(row_start, row_start + n, dtype=np.int64)),
                         ERROR: pa.nulls(n, pa.string()), TEXT: text})


def _as_text(col: pa.ChunkedArray) -> pa.Array:
    """Any text-like column -> string: large/view/dictionary strings, binary holding UTF-8
    (invalid bytes become U+FFFD, not fatal), or an all-null column (every row `empty`)."""
    col = col.combine_chunks()
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    if sh.is_binary_type(col.type):
        col = col.cast(pa.large_binary()).view(pa.large_string())  # same bytes, checked below
    if not pa.types.is_string(col.type):
        col = col.cast(pa.string())
    try:
        col.validate(full=True)
        return col
    except pa.ArrowInvalid:
        raw = col.view(pa.binary())
        return pa.array([None if b is None else b.decode("utf-8", "replace") for b in raw.to_pylist()], pa.string())


class ShardChanged(OSError):
    pass


def read_columns(info: sh.ShardInfo, columns: list[str], groups: range | None = None) -> pa.Table:
    """`columns` of a shard (of row groups `groups`, or all), refusing a file rewritten since listing."""
    with info.shard.fs.open_input_file(info.shard.path) as f:
        check_unchanged(info, f)
        pf = pq.ParquetFile(f)
        t = pf.read(columns=columns) if groups is None else pf.read_row_groups(list(groups), columns=columns)
        return t.select(columns)  # by exact name: "a.b" also selects struct a's child b by path


def check_unchanged(info: sh.ShardInfo, f) -> None:
    """Refuse a shard whose file was rewritten since it was listed (its rows would no longer
    match the ones planned, or ids would pair with another text's scores)."""
    if info.shard.size >= 0 and f.size() != info.shard.size:
        raise ShardChanged(f"the file changed while it was being scored ({f.size()} bytes, {info.shard.size} when "
                           "listed); re-run to score its new contents")


def error_text(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def error_table(s: int, msg: str) -> pa.Table:
    """One marker row (_row = -1) that tells the driver this shard could not be read."""
    return pa.table({SHARD: pa.array([s], pa.int32()), ROW: pa.array([-1], pa.int64()), ERROR: pa.array([msg]),
                     TEXT: pa.nulls(1, pa.string())})


@functools.lru_cache(maxsize=4)
def cached_tokenizer(path: str, trust_remote_code: bool):
    """One tokenizer per worker process (tasks are stateless; the cache is per process)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ckpt_io.localize(path), trust_remote_code=trust_remote_code)


def tokenize_stage(batch: pa.Table, *, checkpoint: str, max_length: int, chunk: bool, stride: int,
                   max_chunks: int, trust_remote_code: bool) -> pa.Table:
    """map_batches fn (CPU tasks): _text -> input_ids (list of windows), status."""
    tok = cached_tokenizer(checkpoint, trust_remote_code)
    ids, status = encode_batch(tok, batch.column(TEXT).to_pylist(), max_length,
                               chunk=chunk, stride=stride, max_chunks=max_chunks)
    return batch.drop_columns([TEXT]).append_column(INPUT_IDS, ids).append_column(STATUS, pa.array(status, pa.string()))
