"""Bad input shards and bad rows: each gets a defined outcome, none crashes the run."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from relkit import (
    SCORER_TITLE,
    committed_files,
    hidden_files,
    ray_workers,
    read_output,
    score_cfg,
    wait_for,
)

from bertml.output import MANIFEST
from bertml.scoring import score
from bertml.shards import InputError

pytestmark = pytest.mark.reliability


def _table(prefix: str, n: int, **extra) -> pa.Table:
    texts = [f"the {w} was new today" for w in ["goal", "bank", "chip", "足球"] * (n // 4 + 1)][:n]
    return pa.table({"id": pa.array([f"{prefix}-{i}" for i in range(n)], pa.string()),
                     "text": pa.array(texts, pa.string()), **extra})


def _truncated(path: str) -> None:
    pq.write_table(_table("trunc", 20), path)
    with open(path, "rb+") as f:
        f.truncate(os.path.getsize(path) // 2)  # the footer is gone


def _corrupt_pages(path: str) -> None:
    """A valid footer over garbage data pages: only reading the rows finds it."""
    pq.write_table(_table("corrupt", 40), path, compression="snappy")
    col = pq.ParquetFile(path).metadata.row_group(0).column(1)  # text
    start = col.dictionary_page_offset or col.data_page_offset
    with open(path, "rb+") as f:
        f.seek(start + 30)
        f.write(b"\xff" * (col.total_compressed_size - 40))


def _text_file(path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write("id,text\n1,not parquet\n")


BAD = {  # file name -> writer; each is a shard whose footer or schema is unusable
    "truncated.parquet": _truncated,
    "notes.txt": _text_file,
    "no-text.parquet": lambda p: pq.write_table(_table("notext", 5).rename_columns(["id", "body"]), p),
}
GOOD = {  # file name -> (writer, rows)
    "good.parquet": (lambda p: pq.write_table(_table("good", 30), p), 30),
    "extra-cols.parquet": (lambda p: pq.write_table(_table("extra", 12, lang=["en"] * 12, count=list(range(12))), p), 12),
    "large-string.parquet": (lambda p: pq.write_table(_table("large", 10).cast(pa.schema(
        [("id", pa.string()), ("text", pa.large_string())])), p), 10),
    "dict-text.parquet": (lambda p: pq.write_table(_table("dict", 9).set_column(
        1, "text", _table("dict", 9).column("text").dictionary_encode()), p), 9),
    "zero-rows.parquet": (lambda p: pq.write_table(_table("zero", 0), p), 0),
}


def _folder(path, names) -> str:
    os.makedirs(path, exist_ok=True)
    writers = {**BAD, **{n: w for n, (w, _) in GOOD.items()}, "corrupt-pages.parquet": _corrupt_pages}
    for name in names:
        writers[name](os.path.join(path, name))
    return str(path)


def _ids(folder: str, names) -> list[str]:
    return [i for n in names for i in pq.read_table(os.path.join(folder, n)).column("id").to_pylist()]


@pytest.mark.parametrize("bad", sorted(BAD))
def test_bad_shard_fails_before_writing_anything(multi_ckpt, tmp_path, monkeypatch, bad):
    """A shard whose footer or schema is wrong stops the run before Ray starts and before the
    output folder exists; the message names the file."""
    import bertml.runtime

    monkeypatch.setattr(bertml.runtime, "init_ray", lambda *a, **k: pytest.fail("Ray was started"))
    folder = _folder(tmp_path / "in", ["good.parquet", bad])
    out = tmp_path / "out"
    with pytest.raises(InputError) as e:
        score(score_cfg(multi_ckpt, folder, str(out)))
    assert os.path.join(folder, bad) in str(e.value) and "on_bad_shard=skip" in str(e.value)
    assert not out.exists()


def test_shard_corrupt_inside_fails_naming_it_and_commits_nothing_for_it(ray_local, multi_ckpt, tmp_path):
    """Garbage in the data pages (valid footer) is only found while reading: the run stops
    with an error naming the file; it gets no output file, anything committed before it is
    complete, and the failed run leaves no lock, temp file or scoring actor behind."""
    folder = _folder(tmp_path / "in", ["good.parquet", "corrupt-pages.parquet"])
    out = str(tmp_path / "out")
    with pytest.raises(InputError) as e:
        score(score_cfg(multi_ckpt, folder, out))
    assert os.path.join(folder, "corrupt-pages.parquet") in str(e.value)
    assert set(committed_files(out)) <= {"good.parquet"}
    got = read_output(out) if committed_files(out) else None
    assert got is None or sorted(got.column("id").to_pylist()) == sorted(_ids(folder, ["good.parquet"]))
    assert hidden_files(out) == [] and not os.path.exists(os.path.join(out, "_bertml.lock"))
    wait_for(lambda: not ray_workers(SCORER_TITLE), 60, "the failed run's scoring actor to go", every=0.5)


def test_bad_shards_skipped_and_listed_rest_scored_exactly_once(ray_local, multi_ckpt, tmp_path):
    bad = [*BAD, "corrupt-pages.parquet"]
    folder = _folder(tmp_path / "in", [*GOOD, *bad])
    out = str(tmp_path / "out")
    summary = score(score_cfg(multi_ckpt, folder, out, on_bad_shard="skip"))

    skipped = sorted(s["shard"] for s in summary.shards_skipped)
    assert skipped == sorted(os.path.join(folder, b) for b in bad)
    assert all(s["shard"] in s["error"] for s in summary.shards_skipped)  # each message names its file
    with open(os.path.join(out, MANIFEST), encoding="utf-8") as f:
        manifest = json.load(f)
    assert sorted(s["shard"] for s in manifest["summary"]["shards_skipped"]) == skipped
    assert sorted(r["output"] for r in manifest["shards"]) == sorted(GOOD)

    # Every good shard has an output (the zero-row one an empty file), no bad one has.
    assert committed_files(out) == sorted(GOOD)
    zero = pq.read_table(os.path.join(out, "zero-rows.parquet"))
    assert zero.num_rows == 0 and zero.column_names == ["id", "probs", "tags", "status"]
    ids = _ids(folder, sorted(GOOD))
    got = read_output(out)
    assert summary.rows == got.num_rows == len(ids) == sum(n for _, n in GOOD.values())
    assert sorted(got.column("id").to_pylist()) == sorted(ids)
    assert summary.shards_scored == len(GOOD) and summary.status == {"ok": len(ids)}
    extra = pq.read_table(os.path.join(out, "extra-cols.parquet"))
    assert extra.column_names == ["id", "probs", "tags", "status"]  # only asked-for columns


def test_zero_row_shards_are_not_bad_even_with_untyped_columns(multi_ckpt, tmp_path, monkeypatch):
    """An empty shard gets an empty output file under the default on_bad_shard=fail, also
    when its writer typed the columns as null (pandas does for empty object columns); a
    run with only empty shards has nothing to score and starts no Ray."""
    import bertml.runtime

    monkeypatch.setattr(bertml.runtime, "init_ray", lambda *a, **k: pytest.fail("Ray was started"))
    folder = tmp_path / "in"
    folder.mkdir()
    pq.write_table(_table("zero", 0), str(folder / "typed.parquet"))
    pq.write_table(pa.table({"id": pa.nulls(0), "text": pa.nulls(0)}), str(folder / "untyped.parquet"))
    out = str(tmp_path / "out")
    summary = score(score_cfg(multi_ckpt, str(folder), out))
    assert summary.shards_scored == 2 and summary.rows == 0 and not summary.shards_skipped
    assert committed_files(out) == ["typed.parquet", "untyped.parquet"]
    for name in committed_files(out):
        t = pq.read_table(os.path.join(out, name))
        assert t.num_rows == 0 and t.column_names == ["id", "probs", "tags", "status"]


def test_shards_whose_types_differ_are_scored_in_one_run_each_keeping_its_types(ray_local, multi_ckpt, tmp_path):
    """Nightly inputs drift: an int id in one shard, a string or struct id in the next; a
    passthrough column int32 here, float64 there; text as string, UTF-8 binary, or an
    all-null column (pandas types it null). Small batches mix rows of every shard in one
    Scorer call; each output keeps its own input's types, values and row order exactly,
    and the text itself can be passed through."""
    folder = tmp_path / "in"
    folder.mkdir()
    shards = {
        "a-int-id.parquet": pa.table({"id": pa.array([1, 2, 3], pa.int64()), "text": ["goal", "bank", None],
                                      "n": pa.array([1, 2, 3], pa.int32())}),
        "b-str-id.parquet": pa.table({"id": ["x", "y"], "text": ["chip", "the match"], "n": [1.5, None]}),
        "c-binary.parquet": pa.table({"id": pa.array([{"k": 7}, {"k": 8}]),
                                      "text": pa.array([b"football", b"bank \xff"], pa.binary()), "n": ["p", "q"]}),
        "d-null-text.parquet": pa.table({"id": pa.array([10, 11], pa.int16()), "text": pa.nulls(2), "n": pa.nulls(2)}),
    }
    for name, table in shards.items():
        pq.write_table(table, str(folder / name))
    out = str(tmp_path / "out")
    summary = score(score_cfg(multi_ckpt, str(folder), out, passthrough=["n", "text"], batch_size=4))

    assert summary.shards_scored == 4 and not summary.shards_skipped and summary.rows == 9
    assert summary.status == {"ok": 6, "empty": 3}
    for name, table in shards.items():
        got = pq.read_table(os.path.join(out, name))
        assert got.column_names == ["id", "n", "text", "probs", "tags", "status"], name
        for col in ("id", "n", "text"):
            assert got.schema.field(col).type == table.schema.field(col).type, (name, col)
            assert got.column(col).to_pylist() == table.column(col).to_pylist(), (name, col)
        empty = [t is None for t in table.column("text").to_pylist()]
        assert got.column("status").to_pylist() == ["empty" if e else "ok" for e in empty], name
        assert [p is None for p in got.column("probs").to_pylist()] == empty, name


# ----------------------------------------------------------------------------- bad rows

MB_TEXT = "football " * 120_000  # ~1 MB
MEDIUM = "bank " * 100  # ~100 tokens: over max_length 64, under 64 chunks
INVALID = b"\xed\xa0\x80 football \xff"  # a UTF-8-encoded lone surrogate + a stray byte
ROWS = [  # (id, text, status when truncating, status when chunking)
    ("null", None, "empty", "empty"),
    ("empty", "", "empty", "empty"),
    ("blank", " \t\n\u3000 ", "empty", "empty"),
    ("control", "\x00goal\x07 match \x1b[31m\r", "ok", "ok"),
    ("invalid-utf8", INVALID, "ok", "ok"),
    ("huge", MB_TEXT, "truncated", "truncated"),
    ("medium", MEDIUM, "truncated", "chunked"),
    ("emoji", "🙂🎉 goal 👍🏽 🇫🇷", "ok", "ok"),
    ("mixed", "足球 比赛 football матч مباراة नमस्ते", "ok", "ok"),
    ("dup", "the bank market", "ok", "ok"),
    ("dup", "the tennis match", "ok", "ok"),
    ("other-0", "the chip market", "ok", "ok"),  # the same id as a row of the other shard
]


def _bad_rows_shard(path: str) -> None:
    raw = [t if t is None or isinstance(t, bytes) else t.encode("utf-8") for _, t, _, _ in ROWS]
    text = pa.array(raw, pa.binary()).view(pa.string())  # invalid UTF-8 as upstream decoders leave it
    pq.write_table(pa.table({"id": [r[0] for r in ROWS], "text": text}), path)


@pytest.fixture(scope="module")
def bad_rows_input(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad-rows")
    _bad_rows_shard(str(folder / "rows.parquet"))
    pq.write_table(_table("other", 8), str(folder / "other.parquet"))  # a normal shard beside it
    return str(folder)


@pytest.mark.parametrize("long_text", ["truncate", "chunk"])
def test_bad_rows_get_a_defined_status_and_nothing_crashes(ray_local, multi_ckpt, bad_rows_input, tmp_path, long_text):
    out = str(tmp_path / "out")
    summary = score(score_cfg(multi_ckpt, bad_rows_input, out, long_text=long_text, batch_size=4))
    got = pq.read_table(os.path.join(out, "rows.parquet"))
    assert got.column("id").to_pylist() == [r[0] for r in ROWS]  # every row, input order, dups kept
    want = [r[2] if long_text == "truncate" else r[3] for r in ROWS]
    assert got.column("status").to_pylist() == want
    for row, status in zip(got.to_pylist(), want):
        if status == "empty":
            assert row["probs"] is None and row["tags"] == [], row["id"]
        else:
            p = np.asarray(row["probs"])
            assert p.shape == (4,) and np.isfinite(p).all() and ((0 <= p) & (p <= 1)).all(), row["id"]
    assert summary.duplicate_ids == 2  # within and across shards: reported, not merged
    assert summary.rows == len(ROWS) + 8 and summary.shards_scored == 2 and not summary.shards_skipped
    counts = {s: want.count(s) + (8 if s == "ok" else 0) for s in set(want) | {"ok"}}
    assert summary.status == counts


def test_output_nested_in_input_folder_is_refused_before_any_work(multi_ckpt, tmp_path, monkeypatch):
    """input=data/, output=data/scored/: the next (nightly) run would list data/scored/* as
    input shards, so the run is refused before any work, naming both paths."""
    import bertml.runtime
    from bertml.output import OutputError

    monkeypatch.setattr(bertml.runtime, "init_ray", lambda *a, **k: pytest.fail("Ray was started"))
    folder = tmp_path / "data"
    folder.mkdir()
    pq.write_table(_table("zero", 0), str(folder / "part.parquet"))
    with pytest.raises(OutputError, match=f"output {folder / 'scored'} lies inside the input {folder}"):
        score(score_cfg(multi_ckpt, str(folder), str(folder / "scored")))
    assert sorted(os.listdir(folder)) == ["part.parquet"]
