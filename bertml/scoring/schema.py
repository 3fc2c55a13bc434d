"""The columns on the scoring path, defined once: the internal ones a unit carries from the
read stage to the scoring actor, the actor's acknowledgement, and the result columns of
an output file (their names live in `bertml.output`, their types here)."""

from __future__ import annotations

import pyarrow as pa

from bertml.output import LABEL, PROBS, RESULT_COLUMNS, SCORE, STATUS, TAGS, TOP_K

SHARD, ROW, ERROR, TEXT = "_shard", "_row", "_error", "_text"  # internal columns
IDS_TYPE = pa.list_(pa.list_(pa.int32()))  # input_ids: a row's windows of token ids
ACK = pa.schema([("shard", pa.int32()), ("start", pa.int64()), ("end", pa.int64()), ("error", pa.string())])
TOP_K_TYPE = pa.list_(pa.struct([("label", pa.string()), ("score", pa.float32())]))


def result_schema(multi_label: bool, top_k: int) -> pa.Schema:
    """The result columns of a scored shard, in output order (after the id/passthrough columns)."""
    types = {PROBS: pa.list_(pa.float32()), STATUS: pa.string(), TOP_K: TOP_K_TYPE}
    types.update({TAGS: pa.list_(pa.string())} if multi_label else {LABEL: pa.string(), SCORE: pa.float32()})
    if not top_k:
        del types[TOP_K]
    return pa.schema([pa.field(c, types[c]) for c in RESULT_COLUMNS if c in types])


