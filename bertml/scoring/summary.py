"""What a scoring run reports: rows, shards, statuses, tags, duplicate ids, resumed work."""

from __future__ import annotations

from dataclasses import dataclass, field

from bertml.coverage import UNK_WARN


@dataclass
class ScoreSummary:
    output: str
    rows: int = 0
    shards_scored: int = 0
    shards_resumed: int = 0
    shards_skipped: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    status: dict[str, int] = field(default_factory=dict)
    tag_counts: dict[str, int] = field(default_factory=dict)
    duplicate_ids: int = 0  # ids seen more than once in this run's shards (see `IdSketch`)
    duplicate_ids_estimated: bool = False  # over IdSketch.K distinct ids: an estimate
    rows_resumed: int = 0  # of `rows`: kept from parts an interrupted run wrote, not scored again
    parts_resumed: int = 0
    parts: int = 0  # units' results written by the scoring actors (parts), this run
    units: int = 0  # read/tokenize units planned (runs of row groups, or slices of one)
    read_tasks: int | None = None  # Ray tasks that ran them (one each, spread over the cores)
    coverage: dict | None = None  # [UNK] figures of a sample of the input (bertml.coverage.Coverage.record)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    @property
    def unk_rate(self) -> float | None:
        """Share of [UNK] tokens in the sample, or None when there was no text to sample."""
        return self.coverage["unk_rate"] if self.coverage and self.coverage["tokens"] else None

    def format(self) -> str:
        lines = [
            f"output            {self.output}",
            f"rows written      {self.rows}  ({self.rows_per_s:.1f} rows/s over {self.seconds:.1f} s)"
            + (f"; {self.rows_resumed} of them kept from an interrupted run ({self.parts_resumed} parts)"
               if self.rows_resumed else ""),
            f"shards            {self.shards_scored} scored, {self.shards_resumed} already done, "
            f"{len(self.shards_skipped)} skipped as bad; {self.units} read/tokenize units"
            + (f" in {self.read_tasks} tasks" if self.read_tasks is not None else ""),
            "status            " + ", ".join(f"{k}={v}" for k, v in sorted(self.status.items())),
        ]
        if self.unk_rate is not None and self.unk_rate > UNK_WARN:
            lines.append(f"coverage          {self.unk_rate:.1%} of a sample's tokens are [UNK]: the encoder's "
                         "vocabulary does not cover this text (see the warning above)")
        if self.duplicate_ids:
            about = "about " if self.duplicate_ids_estimated else ""
            lines.append(f"duplicate ids     {about}{self.duplicate_ids} (kept, not merged)")
        for s in self.shards_skipped:
            lines.append(f"skipped           {s['shard']}: {s['error']}")
        if self.tag_counts:
            top = sorted(self.tag_counts.items(), key=lambda kv: -kv[1])
            lines.append("tags              " + ", ".join(f"{k}={v}" for k, v in top))
        return "\n".join(lines)
