"""Bulk scoring on Ray Data: Parquet shards -> tokens -> probabilities/tags -> Parquet.

The package follows the data (`score` in pipeline.py runs it):

    driver:  check checkpoint + shard footers -> plan units of at most `unit_rows` rows
             (runs of small row groups, slices of big ones) over the rows not yet done:
             committed shards are skipped, parts of an interrupted run are kept
    tasks:   read a unit (text column only) -> tokenize it, batch_size rows at a time (CPU)
    actors:  ScoreWriter: length-bucketed forward passes -> probs, tags; the unit's rows
             written as one *part* by the actor itself; returns a one-row acknowledgement
    driver:  counts acknowledged rows per shard; when a shard is covered, starts
    task:    assemble: the shard's parts + its id/passthrough columns (read here) ->
             the shard's file (a synced temp file; on object stores the final object)
    driver:  renames the file into place (local), records it, removes the parts

No scored row passes through the driver: it sees acknowledgements (shard, rows, status)
and per-shard counts, so its CPU and memory do not grow with the corpus
(jobs/bench/scale.py). Exactly once: a shard is assembled only when its parts cover every
row, each row taken once, in input order; a retried unit rewrites the part of the same
name. The read is our own small stage rather than `read_parquet` because each row must
carry (shard, row) for that accounting. Read and tokenize are one function, not two
fused `map_batches` (read.py says why).

    checks.py       pre-flight: output folder, shards, tokenizer window
    resume.py       what identifies an output file and a part; what a re-run keeps
    plan.py         cluster resources; the rows still to score cut into units
    read.py         stage 1, CPU tasks: read a unit's text, tokenize it
    actor.py        stage 2, actor pool: score (infer.py: the model), write the part
    write.py        stage 3, a task per shard: assemble its file from the parts
    coordinator.py  the driver's side: acknowledgements in, assemble tasks out
    schema.py       the columns on this path; ids.py: duplicate ids in bounded memory
"""

from bertml.scoring.pipeline import score
from bertml.scoring.summary import ScoreSummary

__all__ = ["ScoreSummary", "score"]
