"""`OutputDir`: the output folder's operations (see `bertml.output` for its layout and the
one rule for deleting)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from bertml.output.names import (
    _PART,
    LOCK,
    MANIFEST,
    META_FINGERPRINT,
    PARTS,
    OutputError,
    Part,
    is_tmp_name,
    tmp_name,
)
from bertml.paths import resolved, within


class OutputDir:
    """A local or object-store folder that receives committed shard files."""

    def __init__(self, uri: str):
        from bertml.secrets import redact
        from bertml.shards import split_uri

        self.fs, root, _ = split_uri(uri, "output", glob=False)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.root = resolved(root) if self.local else root
        self.uri = redact(uri)  # for messages: never the URI's credentials
        self._lock_fd: int | None = None

    def create(self) -> None:
        """Create the folder (and its parents); one clear error if that cannot be done."""
        if self.local and os.path.exists(self.root) and not os.path.isdir(self.root):
            raise OutputError(f"output {self.uri}: {self.root} exists and is not a folder; choose a folder path")
        try:
            self.fs.create_dir(self.root, recursive=True)
        except OSError as e:
            raise OutputError(f"output {self.uri}: cannot create the folder {self.root} ({_os_reason(e)})") from None

    def path(self, name: str) -> str:
        full = os.path.normpath(os.path.join(self.root, name))
        if not within(full, os.path.normpath(self.root)):
            raise OutputError(f"{name!r} would write outside the output folder {self.uri}")
        if self.local and not within(os.path.realpath(os.path.dirname(full)), self.root):
            raise OutputError(f"{full}: a symlinked folder on the way leads outside the output folder {self.uri} "
                              f"(to {os.path.realpath(os.path.dirname(full))}); remove the link or choose another "
                              "output folder")
        return full

    def _inside(self, path: str) -> bool:
        """A local file really lies in the output folder (no symlink leads it out)."""
        return not self.local or within(os.path.realpath(path), self.root)

    def exists(self, name: str) -> bool:
        return self.fs.get_file_info(self.path(name)).type == pafs.FileType.File

    def _files(self) -> list[pafs.FileInfo]:
        """Files of this output folder: inside it for real (no link out), and not in a nested
        folder that is another run's output (it holds its own manifest or lock)."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.root, recursive=True, allow_not_found=True))
        nested = {os.path.dirname(i.path) for i in infos
                  if i.is_file and os.path.basename(i.path) in (MANIFEST, LOCK) and os.path.dirname(i.path) != self.root}
        return [i for i in infos if i.is_file and self._inside(i.path)
                and not any(within(i.path, n) for n in nested)]

    def committed(self) -> list[str]:
        """Relative names of committed output files (hidden files excluded)."""
        out = []
        for i in self._files():
            rel = os.path.relpath(i.path, self.root)
            if rel.endswith(".parquet") and not any(p.startswith((".", "_")) for p in rel.split(os.sep)):
                out.append(rel)
        return sorted(out)

    def read_meta(self, name: str) -> dict[bytes, bytes]:
        with self.fs.open_input_file(self.path(name)) as f:
            return pq.ParquetFile(f).schema_arrow.metadata or {}

    def is_ours(self, name: str) -> bool:
        """Whether the file at `name` is a Parquet file bertml wrote (it carries the fingerprint)."""
        if not self._inside(self.path(name)):
            return False
        try:
            return META_FINGERPRINT in self.read_meta(name)
        except Exception:  # noqa: BLE001 - not readable Parquet: not ours
            return False

    def existing(self, names: list[str]) -> dict[str, dict[bytes, bytes] | None]:
        """Of the output names a run will write, those already taken, from one listing of the
        folder: name -> the Parquet schema metadata of a bertml output there, or None for
        anything bertml did not write (no fingerprint, unreadable, a folder, a link out)."""
        from concurrent.futures import ThreadPoolExecutor

        infos = self.fs.get_file_info(pafs.FileSelector(self.root, recursive=True, allow_not_found=True))
        listed = {os.path.relpath(i.path, self.root): i for i in infos}
        taken = [n for n in dict.fromkeys(names) if os.path.normpath(n) in listed]

        def meta(name: str) -> dict[bytes, bytes] | None:
            info = listed[os.path.normpath(name)]
            if not info.is_file or not self._inside(info.path):
                return None
            try:
                m = self.read_meta(name)
            except Exception:  # noqa: BLE001 - not readable Parquet: not ours
                return None
            return m if META_FINGERPRINT in m else None

        with ThreadPoolExecutor(max_workers=min(16, max(1, len(taken)))) as pool:
            return dict(zip(taken, pool.map(meta, taken)))

    def commit(self, name: str, table: pa.Table) -> None:
        """Write `table` to `name` atomically: a hidden temp file renamed into place (local),
        or one upload straight to the final key (object stores: visible only once complete)."""
        if not self.local:  # encoded in memory first: a failed encode uploads nothing
            final = self._folder_for(name)
            with self.fs.open_output_stream(final) as f:
                f.write(_encode(table, "zstd"))
            return
        self.publish(self.write_tmp(name, table), name)

    def _folder_for(self, name: str) -> str:
        final = self.path(name)
        folder = os.path.dirname(final)
        try:
            self.fs.create_dir(folder, recursive=True)
        except OSError as e:
            raise OutputError(f"cannot create {folder} ({_os_reason(e)}); fix the cause and re-run") from None
        return final

    def write_tmp(self, name: str, table: pa.Table) -> str:
        """Local: `table` in a hidden temp file beside `name`, synced; returns its path (for
        `publish`). Removed again if anything fails or the write is interrupted."""
        final = self._folder_for(name)
        tmp = os.path.join(os.path.dirname(final), tmp_name(os.path.basename(final)))
        with _removed_on_error(tmp, final):
            with open(tmp, "xb") as fh:
                pq.write_table(table, fh, compression="zstd")
                fh.flush()
                os.fsync(fh.fileno())  # durable before it becomes visible
        return tmp

    def publish(self, tmp: str, name: str) -> None:
        """Local: make the temp file `tmp` (from `write_tmp`) visible as `name`."""
        final = self.path(name)
        with _removed_on_error(tmp, final):
            self._publish(tmp, final)

    # -- parts: scored units of shards not yet assembled
    def write_part(self, part: Part, table: pa.Table) -> None:
        """Write one part (on a scoring worker). Written in place, not renamed: a part cut
        short by a killed worker is unreadable or short and `parts()` discards it; on object
        stores an upload is visible only once complete."""
        path = self._folder_for(part.path)
        data = _encode(table, "lz4")
        if not self.local:
            with self.fs.open_output_stream(path) as f:
                f.write(data)
            return
        with open(path, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    def parts(self, check: bool = True) -> dict[str, list[Part]]:
        """Parts in this folder, by output name, from one listing. `check` (local disks):
        drop parts a killed worker left short (unreadable, or fewer rows than the name says)."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(PARTS), recursive=True, allow_not_found=True))
        found: dict[str, list[Part]] = {}
        for i in infos:
            rel = os.path.relpath(i.path, self.path(PARTS)).replace(os.sep, "/")
            m = _PART.fullmatch(os.path.basename(rel))
            if not i.is_file or m is None or not self._inside(i.path):
                continue  # not bertml's: never taken, never deleted
            part = Part(os.path.dirname(rel), int(m.group(1)), int(m.group(2)), m.group(3), f"{PARTS}/{rel}")
            if part.end > part.start:
                found.setdefault(part.name, []).append(part)
        if check and self.local:
            for name, ps in found.items():
                found[name] = [p for p in ps if _part_rows(self.path(p.path)) == p.rows]
        return found

    def delete_parts(self, parts) -> None:
        """Remove parts (bertml's by name and place); then their shard's folder if empty."""
        folders = set()
        for p in parts:
            if _PART.fullmatch(os.path.basename(p.path)) and p.path.startswith(PARTS + "/"):
                try:
                    self.fs.delete_file(self.path(p.path))
                except FileNotFoundError:
                    pass
                folders.add(os.path.dirname(p.path))
        if self.local:
            for folder in sorted(folders, key=len, reverse=True):
                while folder and folder != PARTS and within(folder, PARTS):
                    try:
                        os.rmdir(self.path(folder))
                    except OSError:
                        break
                    folder = os.path.dirname(folder)
            try:
                os.rmdir(self.path(PARTS))
            except OSError:
                pass

    def _publish(self, tmp: str, final: str) -> None:
        """Make `tmp` visible as `final`, replacing only a bertml output: a new name is taken
        with a hard link (which fails if something appeared there meanwhile), an existing one
        is checked for bertml's fingerprint just before the rename."""
        name = os.path.relpath(final, self.root)
        if not os.path.lexists(final):
            try:
                os.link(tmp, final)
                os.unlink(tmp)
                return
            except FileExistsError:
                pass  # appeared meanwhile: checked below
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
                    raise  # filesystems without hard links fall through to the checked rename
        if os.path.lexists(final) and (os.path.islink(final) or not self.is_ours(name)):
            raise OutputError(f"{final} appeared during the run and is not a bertml output; it was left as it is "
                              "and this shard not committed: move it away and re-run")
        os.replace(tmp, final)

    def clean_tmp(self) -> int:
        """Remove temp files left by an interrupted run (they were never visible). Object
        stores get no temp names from bertml, so nothing there is taken for one."""
        if not self.local:
            return 0
        n = 0
        for i in self._files():
            if is_tmp_name(os.path.basename(i.path)):
                self.fs.delete_file(i.path)
                n += 1
        return n

    def clear(self) -> list[str]:
        """overwrite=true: remove bertml's outputs (Parquet files carrying its fingerprint)
        and the manifest. Other files in the folder are left alone; returns their names."""
        from concurrent.futures import ThreadPoolExecutor

        names = self.committed()
        with ThreadPoolExecutor(max_workers=min(16, max(1, len(names)))) as pool:
            mine = list(pool.map(self.is_ours, names))
        for rel, m in zip(names, mine):
            if m:
                self.fs.delete_file(self.path(rel))
        if self.exists(MANIFEST) and self.manifest_is_ours():
            self.fs.delete_file(self.path(MANIFEST))
        self.delete_parts([p for ps in self.parts(check=False).values() for p in ps])
        return [rel for rel, m in zip(names, mine) if not m]

    def manifest_is_ours(self) -> bool:
        """No manifest yet, or one bertml wrote (a JSON object with its keys)."""
        info = self.fs.get_file_info(self.path(MANIFEST))
        if info.type == pafs.FileType.NotFound:
            return True
        try:
            with self.fs.open_input_stream(info.path) as f:
                m = json.loads(f.read().decode("utf-8"))
        except (OSError, ValueError):
            return False
        return info.is_file and isinstance(m, dict) and {"fingerprint", "shards", "summary"} <= set(m)

    def write_json(self, name: str, obj: dict) -> None:
        data = json.dumps(obj, indent=2, ensure_ascii=False, default=str).encode("utf-8")
        if not self.local:
            with self.fs.open_output_stream(self.path(name)) as f:
                f.write(data)
            return
        tmp = self.path(tmp_name(name))
        try:
            with open(tmp, "xb") as f:
                f.write(data)
            os.replace(tmp, self.path(name))
        except BaseException:
            _unlink_quietly(tmp)
            raise

    # -- one writer at a time
    def lock(self) -> None:
        """Refuse to run while another run writes here.

        An exclusive `flock` on the output folder itself (its directory descriptor): the
        kernel releases it when its holder exits, however it dies, and nothing in the folder
        can be deleted or linked to break it. `_bertml.lock` only names the holder (host,
        pid) for the message; it is replaced atomically, never written through.

        Not `filelock`: its Unix lock is a flock on the lock *file*, which it leaves in place
        on release, opens with O_NOFOLLOW and re-creates when deleted. That breaks promises
        the tests hold this lock to: no `_bertml.lock` left after a run (test_scoring_faults,
        test_bad_input, test_score), deleting it admits no second writer
        (test_deleting_the_lock_file_does_not_admit_a_second_writer), and a `_bertml.lock`
        symlink neither stops the run nor is written through
        (test_links_and_neighbours_in_the_output_folder_are_never_written_through); and it
        cannot lock a directory (EISDIR). Nor does it lock object stores, which have no lock
        here either.
        """
        if not self.local:
            return  # object stores have no atomic create; README: one nightly run per output
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                holder = _read_lock(self.path(LOCK)) or {}
                who = f" (pid {holder['pid']} on {holder.get('host')})" if "pid" in holder else ""
                raise OutputError(f"output {self.uri} is being written by another bertml run{who}; wait for it, "
                                  "or use another output folder") from None
            raise OutputError(f"output {self.uri}: cannot lock the folder ({_os_reason(e)}); this filesystem has "
                              "no flock: use a local disk, or object storage with one run per output") from None
        self._lock_fd = fd
        me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
        try:
            self.write_json(LOCK, me)
        except (OSError, OutputError):
            pass  # the name is only for messages

    def unlock(self) -> None:
        if self._lock_fd is not None:
            lock = self.path(LOCK)
            if os.path.isfile(lock) and not os.path.islink(lock) and (_read_lock(lock) or {}).get("pid") == os.getpid():
                _unlink_quietly(lock)
            os.close(self._lock_fd)
            self._lock_fd = None


@contextlib.contextmanager
def _removed_on_error(tmp: str, final: str):
    """Remove the temp file `tmp` if the block fails or is interrupted; an OS error becomes
    one OutputError naming `final`."""
    try:
        yield
    except BaseException as e:
        _unlink_quietly(tmp)
        if isinstance(e, OSError):
            raise OutputError(f"cannot write {final} ({_os_reason(e)}); shards committed so far are kept: "
                              "fix the cause and re-run to resume") from None
        raise


def _encode(table: pa.Table, compression: str) -> bytes:
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf, compression=compression)
    return buf.getvalue()


def _part_rows(path: str) -> int:
    """Rows in a local part, or -1 if it cannot be read (cut short)."""
    try:
        return pq.read_metadata(path).num_rows
    except Exception:  # noqa: BLE001 - any unreadable part is a lost unit, scored again
        return -1


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _os_reason(e: OSError) -> str:
    return f"[Errno {e.errno}] {os.strerror(e.errno)}" if e.errno else str(e).splitlines()[0]


def _read_lock(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
