"""The output folder: one Parquet file per input shard, committed atomically, exactly once.

    <output>/<input shard's relative path>.parquet   committed results (readers see only these)
    <output>/.<name>.tmp-<8 hex>                       in progress (hidden; removed on the next run)
    <output>/_bertml_parts/<name>/<rows>-<key>.parquet scored units not yet assembled (resume keeps them)
    <output>/_bertml_manifest.json                     last run: shards, skipped shards, summary
    <output>/_bertml.lock                              names the run that holds the lock (flock on the folder)

Scoring workers write each read unit's results as a *part* (rows start-end of one input
shard, named by them and by a key of checkpoint, options and input file, so a retried unit
rewrites the same name and a part of another configuration is never taken); a Ray task
assembles a shard's parts with its id/passthrough columns into the shard's file and the
driver renames it into place. Parts live in `_bertml_parts/`, which readers (pyarrow,
Spark, Ray Data) skip like every `_`/`.` name.

A file is written under a hidden temporary name and renamed into place when complete, so
a reader (or a re-run after a crash) never sees half a shard. On object stores, where an
object becomes visible only when its upload completes, it is written to its final key
directly. A re-run skips shards that are already committed by the same checkpoint; names
derive only from input shard names, so re-runs are idempotent.

The one rule for deleting: bertml deletes or replaces only files it can prove it wrote in
this output folder: Parquet files carrying its fingerprint, its manifest, and files whose
*name* matches its temp pattern, all inside the resolved output folder (never through a
symlink that leads out of it). A file in the way that bertml did not write stops the run.
"""

from bertml.output.folder import OutputDir
from bertml.output.names import (
    LABEL,
    LOCK,
    MANIFEST,
    META_CHECKPOINT,
    META_FINGERPRINT,
    META_INPUT,
    META_LABELS,
    META_OPTIONS,
    NAME_MAX,
    PARTS,
    PROBS,
    RESULT_COLUMNS,
    ROW_OUT,
    SCORE,
    STATUS,
    TAGS,
    TOP_K,
    OutputError,
    Part,
    is_tmp_name,
    output_name,
    part_name,
    tmp_name,
)

__all__ = [
    "LABEL", "LOCK", "MANIFEST", "META_CHECKPOINT", "META_FINGERPRINT", "META_INPUT", "META_LABELS", "META_OPTIONS",
    "NAME_MAX", "PARTS", "PROBS", "RESULT_COLUMNS", "ROW_OUT", "SCORE", "STATUS", "TAGS", "TOP_K", "OutputDir",
    "OutputError", "Part", "is_tmp_name", "output_name", "part_name", "tmp_name",
]
