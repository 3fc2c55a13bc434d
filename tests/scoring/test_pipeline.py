"""Bulk scoring through Ray Data on a real local Ray with a tiny offline checkpoint."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tiny import make_rows

from bertml import checkpoint as ckpt_io
from bertml import faults
from bertml.config import ScoreConfig, load
from bertml.faults import InjectedFault
from bertml.output import OutputError
from bertml.scoring import score

pytestmark = pytest.mark.slow


def write_shards(folder, n_shards=3, rows=40, seed=0):
    os.makedirs(folder, exist_ok=True)
    for i in range(n_shards):
        data = make_rows(rows, seed=seed + i)
        t = pa.table({"id": [r["id"] for r in data], "text": [r["text"] for r in data],
                      "source": [f"feed-{i}"] * rows, "n": list(range(rows))})
        pq.write_table(t, os.path.join(folder, f"part-{i:03d}.parquet"), row_group_size=16)
    return folder


def cfg(ckpt, inp, out, *extra):
    # fp32 also on GPU machines: these tests compare with a CPU forward at 1e-5.
    return load(ScoreConfig, None, [f"checkpoint={ckpt}", f"input={inp}", f"output={out}", "batch_size=32",
                                    "precision=fp32", *extra])


def read(out):
    return pq.read_table(out)


def direct_probs(ckpt, texts, multi=True):
    model, tok, meta = ckpt_io.load(ckpt)
    enc = tok(texts, truncation=True, max_length=meta.max_length, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits
    return (torch.sigmoid(logits) if multi else torch.softmax(logits, -1)).numpy()


def test_every_row_once_with_passthrough_and_exact_probs(ray_local, multi_ckpt, tmp_path):
    inp = write_shards(str(tmp_path / "in"))
    summary = score(cfg(multi_ckpt, inp, tmp_path / "out", "passthrough=[source, n]", "top_k=2"))
    src = pq.read_table(inp)
    out = read(tmp_path / "out")
    assert summary.rows == out.num_rows == src.num_rows == 120 and summary.shards_scored == 3
    assert sorted(os.listdir(tmp_path / "out")) == ["_bertml_manifest.json", "part-000.parquet",
                                                   "part-001.parquet", "part-002.parquet"]
    assert out.column_names == ["id", "source", "n", "probs", "tags", "top_k", "status"]
    assert out.column("id").to_pylist() == src.column("id").to_pylist()  # input order kept
    assert out.column("source").to_pylist() == src.column("source").to_pylist()
    assert out.column("n").to_pylist() == src.column("n").to_pylist()
    probs = np.array(out.column("probs").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(probs, direct_probs(multi_ckpt, src.column("text").to_pylist()), atol=1e-5)
    t = np.array(ckpt_io.read_meta(multi_ckpt).thresholds)
    names = np.array(ckpt_io.read_meta(multi_ckpt).labels)
    assert out.column("tags").to_pylist() == [list(names[p >= t]) for p in probs]
    top = out.column("top_k").to_pylist()[0]
    assert [d["label"] for d in top] == list(names[np.argsort(-probs[0])[:2]])
    meta = pq.read_schema(os.path.join(tmp_path / "out", "part-000.parquet")).metadata
    assert json.loads(meta[b"bertml.labels"]) == list(names)
    assert meta[b"bertml.fingerprint"].decode() == ckpt_io.fingerprint(multi_ckpt)


def test_big_row_groups_are_split_into_parallel_units(ray_local, multi_ckpt, tmp_path):
    # One 300-row row group, 32-row batches: units of 4 x 32 rows, each its own Ray task.
    os.makedirs(tmp_path / "in")
    data = make_rows(300, seed=7)
    pq.write_table(pa.table({"id": [r["id"] for r in data], "text": [r["text"] for r in data]}),
                   tmp_path / "in" / "one.parquet", row_group_size=1000)
    summary = score(cfg(multi_ckpt, tmp_path / "in", tmp_path / "out"))
    assert summary.units == 3 and summary.read_tasks == 3
    out = read(tmp_path / "out")
    assert out.column("id").to_pylist() == [r["id"] for r in data]
    np.testing.assert_allclose(np.array(out.column("probs").to_pylist(), dtype=np.float32),
                               direct_probs(multi_ckpt, [r["text"] for r in data]), atol=1e-5)


def test_odd_texts_all_present_with_status(ray_local, multi_ckpt, tmp_path):
    texts = [None, "", "   ", "足球 比赛 今天 新闻", "goal 🙂🎉🚀", "tennis match " * 8000, "plain match"]
    os.makedirs(tmp_path / "in")
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(len(texts))], "text": texts}), tmp_path / "in" / "a.parquet")
    summary = score(cfg(multi_ckpt, tmp_path / "in", tmp_path / "out"))
    out = read(tmp_path / "out")
    assert out.column("id").to_pylist() == [f"r{i}" for i in range(len(texts))]
    assert out.column("status").to_pylist() == ["empty", "empty", "empty", "ok", "ok", "truncated", "ok"]
    assert out.column("probs").to_pylist()[:3] == [None] * 3 and out.column("tags").to_pylist()[:3] == [[]] * 3
    assert summary.status == {"empty": 3, "ok": 3, "truncated": 1}


def test_interrupted_run_resumes_to_the_same_output(ray_local, multi_ckpt, tmp_path):
    inp = write_shards(str(tmp_path / "in"), n_shards=4, rows=20, seed=10)
    score(cfg(multi_ckpt, inp, tmp_path / "ref"))
    fault = {"point": "score_commit", "committed": 2, "mode": "raise", "marker": str(tmp_path / "fired")}
    with pytest.raises(InjectedFault), faults.inject(fault):
        score(cfg(multi_ckpt, inp, tmp_path / "out"))
    committed = [f for f in os.listdir(tmp_path / "out") if f.endswith(".parquet") and not f.startswith(".")]
    assert len(committed) == 2 and not os.path.exists(tmp_path / "out" / "_bertml.lock")
    summary = score(cfg(multi_ckpt, inp, tmp_path / "out"))
    assert summary.shards_resumed == 2 and summary.shards_scored == 2
    ref, out = read(tmp_path / "ref"), read(tmp_path / "out")
    assert out.column("id").to_pylist() == ref.column("id").to_pylist()
    assert len(set(out.column("id").to_pylist())) == out.num_rows == 80
    np.testing.assert_allclose(np.array(out.column("probs").to_pylist()), np.array(ref.column("probs").to_pylist()), atol=1e-6)


def test_resume_refuses_output_from_another_checkpoint(ray_local, multi_ckpt, single_ckpt, tmp_path):
    inp = write_shards(str(tmp_path / "in"), n_shards=1, rows=10)
    score(cfg(multi_ckpt, inp, tmp_path / "out"))
    with pytest.raises(OutputError, match="scored by another checkpoint"):
        score(cfg(single_ckpt, inp, tmp_path / "out"))
    os.makedirs(tmp_path / "out" / "notes")
    pq.write_table(pa.table({"user": ["u1"]}), tmp_path / "out" / "notes" / "users.parquet")  # not bertml's
    score(cfg(single_ckpt, inp, tmp_path / "out", "overwrite=true"))  # explicit: start over
    assert pq.read_table(tmp_path / "out" / "notes" / "users.parquet").num_rows == 1  # left alone
    out = read(tmp_path / "out" / "part-000.parquet")
    assert out.column_names == ["id", "probs", "label", "score", "status"] and out.num_rows == 10
    probs = np.array(out.column("probs").to_pylist())
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    labels = ckpt_io.read_meta(single_ckpt).labels
    assert out.column("label").to_pylist() == [labels[i] for i in probs.argmax(1)]


def test_resume_rescores_a_rewritten_input_and_refuses_other_options(ray_local, multi_ckpt, tmp_path):
    """Nightly inputs reused under the same name: a shard rewritten since it was scored is
    scored again, the unchanged one is kept; other scoring options stop the run."""
    inp = write_shards(str(tmp_path / "in"), n_shards=2, rows=10)
    out = tmp_path / "out"
    score(cfg(multi_ckpt, inp, out))
    rows = make_rows(15, seed=99)
    pq.write_table(pa.table({"id": [r["id"] for r in rows], "text": [r["text"] for r in rows],
                             "source": ["new"] * 15, "n": list(range(15))}), os.path.join(inp, "part-001.parquet"))
    summary = score(cfg(multi_ckpt, inp, out))
    assert (summary.shards_resumed, summary.shards_scored, summary.rows) == (1, 1, 15)
    assert read(out / "part-001.parquet").column("id").to_pylist() == [r["id"] for r in rows]
    assert read(out / "part-000.parquet").num_rows == 10
    with pytest.raises(OutputError, match=r"other options \(top_k: 0 -> 2\)"):
        score(cfg(multi_ckpt, inp, out, "top_k=2"))


def test_chunked_long_documents(ray_local, multi_ckpt, tmp_path):
    long = "tennis match bank stocks " * 40
    os.makedirs(tmp_path / "in")
    pq.write_table(pa.table({"id": ["long", "short"], "text": [long, "chip"]}), tmp_path / "in" / "a.parquet")
    score(cfg(multi_ckpt, tmp_path / "in", tmp_path / "out", "long_text=chunk", "max_length=32", "chunk_stride=8",
              "chunk_pooling=mean"))
    out = read(tmp_path / "out")
    assert out.column("status").to_pylist() == ["chunked", "ok"]
    _, tok, _ = ckpt_io.load(multi_ckpt)
    enc = tok(long, truncation=True, max_length=32, stride=8, return_overflowing_tokens=True)
    model = ckpt_io.load(multi_ckpt)[0]
    with torch.no_grad():
        windows = [torch.sigmoid(model(input_ids=torch.tensor([ids])).logits)[0].numpy() for ids in enc["input_ids"]]
    np.testing.assert_allclose(out.column("probs")[0].as_py(), np.mean(windows, 0), atol=1e-5)
