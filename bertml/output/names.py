"""Output names: what each file in an output folder is called, and the result columns.
(`bertml.output` describes the folder.)"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass

from bertml.errors import BertmlError

MANIFEST, LOCK = "_bertml_manifest.json", "_bertml.lock"
META_LABELS, META_CHECKPOINT, META_FINGERPRINT = b"bertml.labels", b"bertml.checkpoint", b"bertml.fingerprint"
META_OPTIONS, META_INPUT = b"bertml.options", b"bertml.input"  # scoring options; the input shard's rows and bytes
NAME_MAX = 255  # bytes in one path component (ext4, xfs, S3 keys allow more; we hold to the common limit)
_TMP = re.compile(r"\..+\.tmp-[0-9a-f]{8}")  # bertml's temp names (the file name, never the path)
PARTS = "_bertml_parts"
# Result columns of a scored shard (after the id/passthrough columns).
PROBS, TAGS, LABEL, SCORE, TOP_K, STATUS = "probs", "tags", "label", "score", "top_k", "status"
RESULT_COLUMNS = (PROBS, TAGS, LABEL, SCORE, TOP_K, STATUS)  # in output order; types: bertml.scoring.schema
ROW_OUT = "row"  # the input row number, written first when there is no id column
_PART = re.compile(r"(\d{12})-(\d{12})-([0-9a-f]{16})\.parquet")  # rows [start, end), key


@dataclass(frozen=True)
class Part:
    """One scored unit of an input shard: rows [start, end) of output `name`."""

    name: str  # the shard's output name
    start: int
    end: int
    key: str
    path: str

    @property
    def rows(self) -> int:
        return self.end - self.start


def part_name(name: str, start: int, end: int, key: str) -> str:
    """Relative path of a part of output `name` (a folder per shard under PARTS)."""
    return f"{PARTS}/{name}/{start:012d}-{end:012d}-{key}.parquet"


class OutputError(BertmlError, ValueError):
    """The output folder cannot be used as asked."""


def output_name(key: str) -> str:
    """Input shard key (relative path) -> output file name, confined to the output folder."""
    parts = [p for p in key.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts) or os.path.isabs(key):
        raise OutputError(f"input shard name {key!r} would write outside the output folder")
    name = "/".join(parts)
    name = name if name.endswith(".parquet") else name + ".parquet"
    long = next((p for p in name.split("/") if len(p.encode()) > NAME_MAX), None)
    if long is not None:
        raise OutputError(f"input shard name {key!r}: its output name {long[:40]!r}... is {len(long.encode())} bytes, "
                          f"over the filesystem's {NAME_MAX}; rename the input file")
    return name


def tmp_name(name: str) -> str:
    """A hidden temp name beside `name` (a file name, no folders) that fits NAME_MAX."""
    suffix = f".tmp-{uuid.uuid4().hex[:8]}"
    room = NAME_MAX - 1 - len(suffix)
    base = name.encode()[:room].decode("utf-8", "ignore")
    return f".{base}{suffix}"


def is_tmp_name(name: str) -> bool:
    """Whether a file *name* is one of bertml's temp names."""
    return _TMP.fullmatch(name) is not None


