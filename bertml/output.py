"""The output folder: one Parquet file per input shard, committed atomically, exactly once.

    <output>/<input shard's relative path>.parquet   committed results (readers see only these)
    <output>/.<name>.tmp-<uuid>                        in progress (hidden; removed on the next run)
    <output>/_bertml_manifest.json                     last run: shards, skipped shards, summary
    <output>/_bertml.lock                              held while a run writes (local folders)

A file is written under a hidden temporary name and renamed into place when complete, so
a reader (or a re-run after a crash) never sees half a shard. A re-run skips shards that
are already committed by the same checkpoint; names derive only from input shard names, so
re-runs are idempotent. Names are checked to stay inside the output folder.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

MANIFEST, LOCK = "_bertml_manifest.json", "_bertml.lock"
META_LABELS, META_CHECKPOINT, META_FINGERPRINT = b"bertml.labels", b"bertml.checkpoint", b"bertml.fingerprint"
META_OPTIONS, META_INPUT = b"bertml.options", b"bertml.input"  # scoring options; the input shard's rows and bytes


class OutputError(ValueError):
    """The output folder cannot be used as asked."""


def output_name(key: str) -> str:
    """Input shard key (relative path) -> output file name, confined to the output folder."""
    parts = [p for p in key.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts) or os.path.isabs(key):
        raise OutputError(f"input shard name {key!r} would write outside the output folder")
    name = "/".join(parts)
    return name if name.endswith(".parquet") else name + ".parquet"


class OutputDir:
    """A local or object-store folder that receives committed shard files."""

    def __init__(self, uri: str):
        from bertml.secrets import redact
        from bertml.shards import split_uri

        self.fs, self.root, _ = split_uri(uri, "output", glob=False)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.uri = redact(uri)  # for messages: never the URI's credentials
        self.fs.create_dir(self.root, recursive=True)
        self._locked = False

    def path(self, name: str) -> str:
        full = os.path.normpath(os.path.join(self.root, name))
        if os.path.commonpath([full, os.path.normpath(self.root)]) != os.path.normpath(self.root):
            raise OutputError(f"{name!r} would write outside the output folder {self.uri}")
        return full

    def exists(self, name: str) -> bool:
        return self.fs.get_file_info(self.path(name)).type == pafs.FileType.File

    def committed(self) -> list[str]:
        """Relative names of committed output files (hidden files excluded)."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.root, recursive=True))
        out = []
        for i in infos:
            rel = os.path.relpath(i.path, self.root)
            if i.is_file and rel.endswith(".parquet") and not any(p.startswith((".", "_")) for p in rel.split(os.sep)):
                out.append(rel)
        return sorted(out)

    def read_meta(self, name: str) -> dict[bytes, bytes]:
        with self.fs.open_input_file(self.path(name)) as f:
            return pq.ParquetFile(f).schema_arrow.metadata or {}

    def commit(self, name: str, table: pa.Table) -> None:
        """Write `table` to `name` atomically: hidden temp file, then rename into place.

        On an object store an object becomes visible only when its upload completes, so
        writing the final key directly gives the same guarantee without a copy-and-delete
        "rename"; an interrupted upload leaves nothing behind."""
        final = self.path(name)
        folder = os.path.dirname(final)
        if self.fs.type_name in ("s3", "gcs"):  # whole-object stores
            buf = pa.BufferOutputStream()  # serialised first: a failed write never reaches the store
            pq.write_table(table, buf, compression="zstd")
            with self.fs.open_output_stream(final) as f:
                f.write(buf.getvalue())
            return
        self.fs.create_dir(folder, recursive=True)
        tmp = os.path.join(folder, f".{os.path.basename(final)}.tmp-{uuid.uuid4().hex[:8]}")
        with self.fs.open_output_stream(tmp) as f:
            pq.write_table(table, f, compression="zstd")
        if self.local:
            with open(tmp, "rb+") as fh:  # durable before it becomes visible
                os.fsync(fh.fileno())
        self.fs.move(tmp, final)

    def clean_tmp(self) -> int:
        """Remove temp files left by an interrupted run (they were never visible)."""
        n = 0
        for i in self.fs.get_file_info(pafs.FileSelector(self.root, recursive=True)):
            if i.is_file and os.path.basename(i.path).startswith(".") and ".tmp-" in i.path:
                self.fs.delete_file(i.path)
                n += 1
        return n

    def clear(self) -> list[str]:
        """overwrite=true: remove bertml's outputs (Parquet files carrying its fingerprint)
        and the manifest. Other files in the folder are left alone; returns their names."""
        from concurrent.futures import ThreadPoolExecutor

        def ours(rel: str) -> bool:
            try:
                return META_FINGERPRINT in self.read_meta(rel)
            except Exception:  # noqa: BLE001 - not readable Parquet: not ours
                return False

        names = self.committed()
        with ThreadPoolExecutor(max_workers=min(16, max(1, len(names)))) as pool:
            mine = list(pool.map(ours, names))
        for rel, m in zip(names, mine):
            if m:
                self.fs.delete_file(self.path(rel))
        if self.exists(MANIFEST):
            self.fs.delete_file(self.path(MANIFEST))
        return [rel for rel, m in zip(names, mine) if not m]

    def write_json(self, name: str, obj: dict) -> None:
        data = json.dumps(obj, indent=2, ensure_ascii=False, default=str).encode("utf-8")
        tmp = self.path(f".{name}.tmp-{uuid.uuid4().hex[:8]}")
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        self.fs.move(tmp, self.path(name))

    def read_json(self, name: str) -> dict | None:
        if not self.exists(name):
            return None
        with self.fs.open_input_stream(self.path(name)) as f:
            return json.loads(f.read().decode("utf-8"))

    # -- one writer at a time
    def lock(self) -> None:
        """Refuse to run while another live run writes here (a stale lock is taken over)."""
        if not self.local:
            return  # object stores have no atomic create; document: one nightly run per output
        path = self.path(LOCK)
        me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                holder = _read_lock(path)
                if holder and _alive(holder):
                    raise OutputError(
                        f"output {self.uri} is being written by another bertml run (pid {holder.get('pid')} on "
                        f"{holder.get('host')}); wait for it, or use another output folder"
                    ) from None
                os.unlink(path)  # stale: its writer is gone
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self._locked = True
            return
        raise OutputError(f"output {self.uri}: could not take the lock {path}")

    def unlock(self) -> None:
        if self._locked:
            try:
                os.unlink(self.path(LOCK))
            except FileNotFoundError:
                pass
            self._locked = False


def _read_lock(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _alive(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return True  # another machine: assume alive
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError):
        return True
    return True
