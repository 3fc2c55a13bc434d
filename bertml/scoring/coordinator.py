"""The driver's side of a run: it sees acknowledgements (shard, rows, status) and per-shard
counts, never scored rows, so its CPU and memory do not grow with the corpus."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import pyarrow as pa

from bertml import faults
from bertml import shards as sh
from bertml.config import ScoreConfig
from bertml.output import OutputDir, Part, output_name, part_name
from bertml.scoring.actor import PartWriter
from bertml.scoring.checks import kept_columns
from bertml.scoring.ids import IdSketch
from bertml.scoring.plan import Resources, gaps, plan_units
from bertml.scoring.schema import ACK
from bertml.scoring.summary import ScoreSummary
from bertml.scoring.write import ShardJob, assemble

log = logging.getLogger("bertml.score")


@dataclass
class PendingShard:
    """A shard being scored: its parts so far (kept from an interrupted run, or acknowledged)."""

    parts: dict[tuple[int, int], Part]
    rows: int  # rows in distinct parts (a retried unit counts once)
    resumed_rows: int = 0
    resumed_parts: int = 0


class Coordinator:
    """The driver's side: plans units over the rows not yet done, counts acknowledged parts
    per shard, starts an assemble task when a shard is covered, then renames the file it
    wrote into place and records it. Holds per pending shard a few numbers per unit."""

    def __init__(self, out: OutputDir, cfg: ScoreConfig, todo: list[sh.ShardInfo], kept_parts: list[list[Part]],
                 keys: list[str], schema_meta: dict, multi_label: bool, summary: ScoreSummary):
        self.out, self.cfg, self.todo, self.keys, self.summary = out, cfg, todo, keys, summary
        self.fault = faults.armed()  # tests only
        self.names = [output_name(info.shard.key) for info in todo]
        self.schema_meta, self.multi = schema_meta, multi_label
        self.shards: dict[int, PendingShard] = {}
        for i, (info, parts) in enumerate(zip(todo, kept_parts)):
            if info.num_rows == 0:
                continue
            covered = info.num_rows - sum(b - a for a, b in gaps(parts, info.num_rows))
            self.shards[i] = PendingShard({(p.start, p.end): p for p in parts}, sum(p.rows for p in parts),
                                    covered, len(parts))
        self.running: dict = {}  # assemble task ref -> shard index
        self.records: list[dict] = []
        self.sketch: IdSketch | None = None
        self.units: list[dict] = []
        self.resources: Resources | None = None  # set once Ray is up
        self.acked = 0
        self._remote = None

    # -- planning
    def plan(self, unit_rows: int) -> None:
        for i, st in self.shards.items():
            todo = gaps(list(st.parts.values()), self.todo[i].num_rows)
            self.units += plan_units(i, self.todo[i], unit_rows, todo)
        self.summary.units = len(self.units)

    def rows_to_score(self) -> int:
        return sum(b - a for i, st in self.shards.items() for a, b in gaps(list(st.parts.values()), self.todo[i].num_rows))

    def part_writer(self) -> PartWriter:
        return PartWriter(self.cfg.output, self.names, self.keys)

    # -- shards with no rows, or covered already by kept parts
    def start(self) -> None:
        for i, info in enumerate(self.todo):
            if info.num_rows == 0:  # no rows: nothing to score or to move
                self._done(assemble(self._job(i)))
        for i in [i for i, st in self.shards.items() if self._covered(i)]:
            self._launch(i)

    def _job(self, i: int) -> ShardJob:
        st = self.shards.get(i)
        return ShardJob(i, self.todo[i], self.names[i], list(st.parts.values()) if st else [], self.cfg.output,
                        kept_columns(self.cfg), self.cfg.id_column, self.schema_meta, self.multi, self.cfg.top_k)

    def _covered(self, i: int) -> bool:
        st, n = self.shards[i], self.todo[i].num_rows
        return st.rows >= n and not gaps(list(st.parts.values()), n)

    # -- acknowledgements from the scoring actors
    def acknowledged(self, acks: pa.Table) -> None:
        for s, start, end, error in zip(*(acks.column(c).to_pylist() for c in ACK.names)):
            st = self.shards.get(s)
            if st is None or s in self.running.values():
                continue  # finished or failed already (a late duplicate)
            if error is not None:
                self._fail(s, error)
                continue
            if (start, end) not in st.parts:
                st.parts[(start, end)] = Part(self.names[s], start, end, self.keys[s],
                                              part_name(self.names[s], start, end, self.keys[s]))
                st.rows += end - start
                self.acked += 1
                self.summary.parts = self.acked
                faults.maybe_fail(self.fault, "score_part", parts=self.acked)
            if self._covered(s):
                self._launch(s)
        self.poll(0)

    # -- assemble tasks
    def _launch(self, i: int) -> None:
        import ray

        if self._remote is None:  # a little CPU each: they mostly read and write files
            self._remote = ray.remote(num_cpus=0.25, max_retries=2)(assemble)
        self.running[self._remote.remote(self._job(i))] = i

    def poll(self, timeout: float | None) -> None:
        """Record the assemble tasks that finished (waiting up to `timeout` s for one; None: for all)."""
        import ray

        while self.running:
            refs = list(self.running)
            ready, _ = ray.wait(refs, num_returns=len(refs) if timeout is None else 1,
                                timeout=timeout)
            if not ready:
                return
            for ref in ready:
                self.running.pop(ref)
                self._done(ray.get(ref))
            if timeout is not None:
                timeout = 0

    def _done(self, result: dict) -> None:
        i = result["index"]
        if "error" in result:
            self._fail(i, result["error"])
            return
        info, name = self.todo[i], self.names[i]
        if "tmp" in result:
            self.out.publish(result["tmp"], name)
        st = self.shards.pop(i, None)
        if st is not None and self.out.local:
            self.out.delete_parts(st.parts.values())
        self.records.append({"input": info.shard.uri, "output": name, "rows": result["rows"],
                             **({"duplicate_ids": result["duplicate_ids"]} if result["duplicate_ids"] else {})})
        s = self.summary
        s.rows += result["rows"]
        s.shards_scored += 1
        if st is not None:
            s.rows_resumed += st.resumed_rows
            s.parts_resumed += st.resumed_parts
        for k, v in result["status"].items():
            s.status[k] = s.status.get(k, 0) + v
        for k, v in result["tags"].items():
            s.tag_counts[k] = s.tag_counts.get(k, 0) + v
        if result["sketch"] is not None:
            self.sketch = result["sketch"] if self.sketch is None else self.sketch.merge(result["sketch"])
        faults.maybe_fail(self.fault, "score_commit", committed=s.shards_scored)

    def _fail(self, i: int, error: str) -> None:
        uri = self.todo[i].shard.uri
        st = self.shards.pop(i, None)
        if self.cfg.on_bad_shard == "fail":
            raise sh.InputError(f"{uri}: could not be read ({error}); its output was not written. "
                                "Fix or remove the file, or set on_bad_shard=skip")
        if st is not None:
            self.out.delete_parts(st.parts.values())
        self.summary.shards_skipped.append({"shard": uri, "error": f"{uri}: {error}"})
        log.warning("skipping bad shard %s: %s", uri, error)

    def finish(self) -> None:
        self.poll(None)
        if self.sketch is not None:
            self.summary.duplicate_ids, self.summary.duplicate_ids_estimated = self.sketch.duplicates()
        if self.shards:
            missing = [self.todo[i].shard.uri for i in sorted(self.shards)]
            raise RuntimeError(f"{len(missing)} shard(s) did not get all their rows back (e.g. {missing[0]}); "
                               "nothing was committed for them; re-run to resume")

    def abort(self) -> None:
        """The run stops early: stop the assemble tasks, wait a little for them to end (an
        interrupted one removes its temp file), then remove the temp files of the ones that
        finished but were not renamed. Parts stay: the re-run keeps them."""
        if not self.running:
            return
        import ray

        refs = list(self.running)
        self.running.clear()
        for ref in refs:
            try:
                ray.cancel(ref)
            except Exception:  # noqa: BLE001 - finished already
                pass
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=20)
        for ref in ready:
            try:
                tmp = ray.get(ref, timeout=5).get("tmp")
            except Exception:  # noqa: BLE001 - cancelled or failed: it cleaned up after itself
                continue
            if tmp:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
        self.out.clean_tmp()
