"""Parquet inputs: resolve a path spec to shards and check each shard's schema.

A spec is a file, a folder (all files below it, hidden `.`/`_` names ignored), a glob,
or a list of those; local paths or URIs that pyarrow understands (s3://, gs://, hdfs://).
Footers are read on the driver before any Ray work, so a missing column or an unreadable
file is one clear error naming the file.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import quote, unquote

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from bertml.errors import BertmlError
from bertml.paths import same_or_below
from bertml.secrets import redact


class InputError(BertmlError, ValueError):
    """An input path or shard cannot be used; the message names the file and what to do."""


@dataclass(frozen=True)
class Shard:
    """One input file. `key` is its path relative to the spec's root (names the output)."""

    uri: str  # what the user sees in messages
    path: str  # path inside `fs`
    key: str
    fs: pafs.FileSystem
    size: int = -1  # bytes, from the listing (-1: unknown)


@dataclass(frozen=True)
class ShardInfo:
    shard: Shard
    num_rows: int
    schema: pa.Schema
    row_group_rows: tuple[int, ...]  # rows in each row group


def _is_hidden(name: str) -> bool:
    return name.startswith((".", "_"))


_GLOB = "*?["
_QUERY = re.compile(r"\?(?=[A-Za-z_][\w.-]*=)")  # where a URI's ?key=value options start (a ? before key=)


def split_uri(spec: str, what: str, glob: bool = True) -> tuple[pafs.FileSystem, str, str]:
    """(filesystem, path inside it, prefix to rebuild a URI). A URI's glob part (from the
    first path component holding * ? [) stays out of URI parsing; spaces and non-ASCII
    characters are percent-encoded for it. Local paths: ~ expanded, made absolute."""
    if "://" in spec and not spec.startswith("file://"):
        m = _QUERY.search(spec)
        base, query = (spec[: m.start()], spec[m.start() :]) if m else (spec, "")
        head = base.index("://") + 3
        comps = base[head:].split("/")
        k = next((i for i, c in enumerate(comps) if glob and i > 0 and any(ch in c for ch in _GLOB)), len(comps))
        literal = base[:head] + quote("/".join(comps[:k]), safe="/:@!$&'()*+,;=%~")
        try:
            fs, path = pafs.FileSystem.from_uri(literal + query)
        except (pa.ArrowException, ValueError, OSError) as e:
            raise InputError(f"{what} {redact(spec)}: not a usable URI ({redact(str(e).splitlines()[0])}); "
                             "check the scheme (s3://, gs://, hdfs://...) and the bucket") from None
        rest = unquote("/".join(comps[k:])).rstrip("/")  # decoded like the literal part
        return fs, (path.rstrip("/") + "/" + rest) if rest else path.rstrip("/") or path, spec[:head]
    path = spec[len("file://") :] if spec.startswith("file://") else spec
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path)), ""


def join_uri(base: str, *names: str) -> str:
    """`base` + "/" + names, keeping a URI's `?key=value` options at the end
    (`s3://b/r?scheme=http` + `scored` -> `s3://b/r/scored?scheme=http`)."""
    if "://" in base and not base.startswith("file://"):
        m = _QUERY.search(base)
        path, query = (base[: m.start()], base[m.start():]) if m else (base, "")
        return "/".join([path.rstrip("/"), *(n.strip("/") for n in names)]) + query
    return os.path.join(base, *names)


def _glob_regex(pattern: str) -> str:
    """A path glob as a regex (fnmatch's syntax): * ? [...] [!...] stay within one path
    component, ** spans any number of them."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:[^/]*/)*")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "[":
            j = i + 1
            j += j < n and pattern[j] == "!"
            j += j < n and pattern[j] == "]"  # a leading ] is a member, as in fnmatch
            while j < n and pattern[j] != "]":
                j += 1
            if j < n:
                body = pattern[i + 1 : j]
                neg = body.startswith("!")
                members = re.escape(body[1:] if neg else body).replace("\\-", "-")
                out.append(("[^/" if neg else "[") + members + "]")
                i = j + 1
                continue
        out.append("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c))
        i += 1
    return "".join(out)


def _glob_pattern(fs: pafs.FileSystem, pattern: str, what: str, spec: str) -> tuple[str, re.Pattern]:
    """(root, regex of full paths) for a glob: the root is its longest leading run of folders
    that exist as named (even with [ ] in a name); the rest is matched as a pattern below it."""
    comps = pattern.split("/")
    k = next(i for i, c in enumerate(comps) if any(ch in c for ch in _GLOB))
    while k < len(comps) - 1 and fs.get_file_info("/".join(comps[: k + 1])).type == pafs.FileType.Directory:
        k += 1
    root = "/".join(comps[:k]) or "/"
    try:
        return root, re.compile(re.escape(root.rstrip("/") + "/") + _glob_regex("/".join(comps[k:])) + r"\Z")
    except re.error as e:
        raise InputError(f"{what} {redact(spec)}: not a valid glob ({e})") from None


def _glob(fs: pafs.FileSystem, pattern: str, what: str, spec: str) -> tuple[str, list[pafs.FileInfo]]:
    """(root, files) for a glob (see `_glob_pattern`)."""
    root, rx = _glob_pattern(fs, pattern, what, spec)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    # A folder the glob matches stands for its files, as Spark's `x.parquet/part-*` folders do.
    folders = [i.path.rstrip("/") + "/" for i in infos if i.type == pafs.FileType.Directory and rx.match(i.path)]
    return root, [i for i in infos if i.is_file and (rx.match(i.path) or any(i.path.startswith(f) for f in folders))]


def lister(spec: str, fs: pafs.FileSystem):
    """A test `path -> bool`: whether input `spec` names `path` on `fs`, now or once a file is
    written there: `path` is the spec's file, lies in its folder (or in a folder a symlink
    inside it leads to), or matches its glob. Local paths compare resolved, and by inode (a
    bind mount of the input folder is the input folder)."""
    sfs, p, _ = split_uri(spec, "input")
    if sfs.type_name != fs.type_name:
        return lambda path: False
    local = isinstance(sfs, pafs.LocalFileSystem)
    kind = sfs.get_file_info(p).type
    if kind == pafs.FileType.NotFound and any(c in p for c in _GLOB):
        root, _ = _glob_pattern(sfs, p, "input", spec)
        if local:
            root, p = os.path.realpath(root), os.path.realpath(root) + p[len(root):]
        _, rx = _glob_pattern(sfs, p, "input", spec)
        return lambda path: rx.match(path) is not None
    if not local:
        p = p.rstrip("/")
        return lambda path: path == p or (kind != pafs.FileType.File and path.startswith(p + "/"))
    if kind == pafs.FileType.File:
        return lambda path: os.path.realpath(path) == os.path.realpath(p)
    folders = [p, *_linked_folders(p)]  # listing follows links to folders
    return lambda path: any(same_or_below(path, f) for f in folders)


def _linked_folders(folder: str) -> list[str]:
    """Targets of the symlinks to folders inside a local `folder` tree (one level of links)."""
    out = []
    for top, dirs, _ in os.walk(folder):
        out += [os.path.realpath(os.path.join(top, d)) for d in dirs if os.path.islink(os.path.join(top, d))]
    return out


def resolve(spec: str | list[str], what: str = "input") -> list[Shard]:
    """All shards named by `spec`, in a stable (sorted) order, each file once. Errors if none.

    A path that exists is taken literally (even with [ ] ? * in its name); otherwise it is
    a glob, whose * ? [...] match within one path component and ** across folders.
    """
    specs = [spec] if isinstance(spec, str) else list(spec)
    out: list[Shard] = []
    seen: set[tuple[str, str]] = set()
    for s in specs:
        fs, path, prefix = split_uri(s, what)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound and any(c in path for c in _GLOB):
            root, files = _glob(fs, path, what, s)
        elif info.type == pafs.FileType.NotFound:
            raise InputError(f"{what} {redact(s)}: no such file or folder")
        elif info.type == pafs.FileType.File:
            root, files = os.path.dirname(path), [info]
        else:
            root = path
            files = [i for i in fs.get_file_info(pafs.FileSelector(path, recursive=True)) if i.is_file]
        files = [i for i in files if not any(_is_hidden(p) for p in os.path.relpath(i.path, root).split(os.sep))]
        for i in sorted(files, key=lambda i: i.path):
            if (fs.type_name, i.path) in seen:  # named twice (a folder and a file in it): scored once
                continue
            seen.add((fs.type_name, i.path))
            out.append(Shard(uri=prefix + i.path if prefix else i.path, path=i.path, key=os.path.relpath(i.path, root),
                             fs=fs, size=i.size if i.size is not None else -1))
    if not out:
        raise InputError(f"{what} {redact(spec)}: no files found (hidden files starting with '.' or '_' are ignored)")
    return out


def inspect(shard: Shard) -> ShardInfo:
    """Read one shard's footer. Raises InputError naming the file if it is not Parquet."""
    try:
        with shard.fs.open_input_file(shard.path) as f:
            meta = pq.ParquetFile(f).metadata
            groups = tuple(meta.row_group(g).num_rows for g in range(meta.num_row_groups))
            schema = meta.schema.to_arrow_schema()
    except (pa.ArrowException, OSError, ValueError) as e:  # ValueError: e.g. a column name that is not UTF-8
        raise InputError(f"{shard.uri}: not a readable Parquet file ({(str(e).splitlines() or [type(e).__name__])[0]})") from None
    if sum(groups) != meta.num_rows or any(n < 0 for n in groups):
        raise InputError(f"{shard.uri}: its footer says {meta.num_rows} rows but its row groups hold {sum(groups)}; "
                         "the file is damaged, rewrite it")
    return ShardInfo(shard, meta.num_rows, schema, groups)


def inspect_all(shards: list[Shard], threads: int = 16) -> list[ShardInfo | InputError]:
    """Footers of many shards in parallel (object stores are latency-bound)."""

    def one(s: Shard) -> ShardInfo | InputError:
        try:
            return inspect(s)
        except InputError as e:
            return e

    with ThreadPoolExecutor(max_workers=min(threads, max(1, len(shards)))) as pool:
        return list(pool.map(one, shards))


def is_text_type(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        return is_text_type(t.value_type)
    return pa.types.is_string(t) or pa.types.is_large_string(t) or getattr(pa.types, "is_string_view", lambda _: False)(t)


def is_binary_type(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or getattr(pa.types, "is_binary_view", lambda _: False)(t)


def is_scorable_text_type(t: pa.DataType) -> bool:
    """What `bertml score` reads as text: strings, binary holding UTF-8 (writers that do not
    mark strings as UTF-8), or an all-null column (a shard whose texts are all missing)."""
    if pa.types.is_dictionary(t):
        return is_scorable_text_type(t.value_type)
    return is_text_type(t) or is_binary_type(t) or pa.types.is_null(t)


def is_labels_type(t: pa.DataType) -> bool:
    if is_text_type(t):
        return True
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return is_text_type(t.value_type)
    return False


def check_column(info: ShardInfo, column: str, kind: str, scoring: bool = False) -> None:
    """Raise InputError unless `column` exists in the shard with a text (or labels) type;
    `scoring`: the wider set of text types `bertml score` reads."""
    names = info.schema.names
    if column not in names:
        raise InputError(
            f"{info.shard.uri}: no column {column!r} (columns: {', '.join(names)}); "
            f"set the {kind} column in the config (e.g. {kind}_column=...)"
        )
    t = info.schema.field(column).type
    ok = is_labels_type(t) if kind == "labels" else is_scorable_text_type(t) if scoring else is_text_type(t)
    expected = "list<string> or string" if kind == "labels" else "string (or UTF-8 binary)" if scoring else "string"
    if not ok:
        raise InputError(f"{info.shard.uri}: column {column!r} is {t}, expected {expected}")


def spec_text(data) -> str:
    """A data spec (path or list of paths) as one line."""
    return ", ".join(data) if isinstance(data, (list, tuple)) else str(data)
