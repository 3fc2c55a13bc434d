"""Every path bertml takes, on a real S3-protocol server (moto on 127.0.0.1) and a real local Ray.

URIs carry the endpoint as options (`?endpoint_override=127.0.0.1:PORT&scheme=http`)
unless a test says otherwise (then AWS_ENDPOINT_URL, set by the conftest, points there).
"""

from __future__ import annotations

import io
import json
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tiny import make_rows

from bertml import checkpoint as ckpt_io
from bertml.config import ScoreConfig
from bertml.output import MANIFEST, META_CHECKPOINT, META_FINGERPRINT, PARTS, OutputError
from bertml.scoring import score

pytestmark = pytest.mark.objectstore

N_SHARDS, ROWS = 6, 20


def put_corpus(bucket, prefix: str = "in", n: int = N_SHARDS, rows: int = ROWS, seed: int = 300) -> list[str]:
    """`n` Parquet shards of (id, text) under `prefix`; returns every id in input order."""
    ids = []
    for i in range(n):
        r = make_rows(rows, seed=seed + i)
        t = pa.table({"id": [x["id"] for x in r], "text": [x["text"] for x in r], "labels": [x["labels"] for x in r]})
        buf = io.BytesIO()
        pq.write_table(t, buf)
        bucket.put(f"{prefix}/part-{i:03d}.parquet", buf.getvalue())
        ids += t.column("id").to_pylist()
    return ids


def read_prefix(bucket, prefix: str) -> pa.Table:
    """Committed outputs as a reader sees them: visible *.parquet objects, in key order."""
    keys = [k for k in bucket.keys(prefix) if k.endswith(".parquet") and not os.path.basename(k).startswith((".", "_"))]
    return pa.concat_tables([pq.read_table(io.BytesIO(bucket.get(k))) for k in keys]) if keys else None


def hidden(bucket, prefix: str) -> list[str]:
    return [k for k in bucket.keys(prefix) if os.path.basename(k).startswith(".") or ".tmp-" in k]


@pytest.fixture
def s3_ckpt(bucket, multi_ckpt):
    bucket.upload_folder(multi_ckpt, "models/multi")
    return bucket.uri("models/multi")


def test_score_s3_to_s3_with_checkpoint_on_s3_then_resume_rewrites_nothing(ray_local, bucket, s3_ckpt, tmp_path,
                                                                          monkeypatch):
    """checkpoint, input and output all on S3 (the localize cache folder does not exist yet);
    every row once, in input order; no temp object left; a re-run skips every shard and
    rewrites no object."""
    monkeypatch.setenv("BERTML_CACHE", str(tmp_path / "fresh-cache"))
    ids = put_corpus(bucket)
    cfg = ScoreConfig(checkpoint=s3_ckpt, input=bucket.uri("in/"), output=bucket.uri("scored"), batch_size=16)
    summary = score(cfg)
    assert summary.rows == len(ids) and summary.shards_scored == N_SHARDS
    got = read_prefix(bucket, "scored/")
    assert got.column("id").to_pylist() == ids  # exactly once, in input order
    assert all(len(p) == 4 for p in got.column("probs").to_pylist())
    assert sorted(bucket.keys("scored/")) == sorted([f"scored/part-{i:03d}.parquet" for i in range(N_SHARDS)]
                                                    + [f"scored/{MANIFEST}"])
    assert hidden(bucket, "") == []
    meta = pq.read_schema(io.BytesIO(bucket.get("scored/part-000.parquet"))).metadata
    assert meta[META_CHECKPOINT].decode() == s3_ckpt and meta[META_FINGERPRINT]

    before = bucket.etags("scored/")
    again = score(cfg)
    assert again.shards_resumed == N_SHARDS and again.shards_scored == 0 and again.rows == 0
    after = bucket.etags("scored/")
    assert {k: v for k, v in after.items() if k.endswith(".parquet")} == \
        {k: v for k, v in before.items() if k.endswith(".parquet")}  # not one object rewritten


def test_overwrite_on_s3_replaces_another_checkpoints_output_and_keeps_other_files(ray_local, bucket, s3_ckpt,
                                                                                  single_ckpt):
    put_corpus(bucket, n=2)
    bucket.upload_folder(single_ckpt, "models/single")
    first = ScoreConfig(checkpoint=bucket.uri("models/single"), input=bucket.uri("in/"), output=bucket.uri("scored"),
                        batch_size=16)
    score(first)
    bucket.put("scored/README.txt", b"not bertml's")
    cfg = ScoreConfig(checkpoint=s3_ckpt, input=bucket.uri("in/"), output=bucket.uri("scored"), batch_size=16)
    with pytest.raises(OutputError, match="scored by another checkpoint"):
        score(cfg)
    summary = score(ScoreConfig(**{**cfg.__dict__, "overwrite": True}))
    assert summary.shards_scored == 2
    got = read_prefix(bucket, "scored/")
    assert "tags" in got.column_names and "label" not in got.column_names  # all multi-label now
    assert bucket.get("scored/README.txt") == b"not bertml's"
    assert hidden(bucket, "") == []


_CHILD = """
import json, sys
from bertml import faults
from bertml.config import ScoreConfig
from bertml.runtime import init_ray
from bertml.scoring import score

init_ray(num_cpus=2)
with faults.inject(json.loads(sys.argv[2])):
    score(ScoreConfig(**json.loads(sys.argv[1])))
"""


def test_driver_killed_mid_run_on_s3_then_rerun_equals_uninterrupted(ray_local, bucket, s3_ckpt, tmp_path):
    """A driver SIGKILLed after its 2nd commit leaves complete shard objects, scored parts
    under _bertml_parts/ and nothing else (objects are written directly: an unfinished
    upload is never visible; assemble tasks already running may commit more shards, here
    up to all six one-unit shards, before the kill lands: the mid-shard case is the next test); the re-run resumes and equals an uninterrupted run."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "reliability"))
    from relkit import run_until_killed

    ids = put_corpus(bucket)
    base = {"checkpoint": s3_ckpt, "input": bucket.uri("in/"), "batch_size": 16}
    score(ScoreConfig(**base, output=bucket.uri("whole")))
    whole = read_prefix(bucket, "whole/")

    fault = {"point": "score_commit", "committed": 2, "mode": "kill", "marker": str(tmp_path / "fired")}
    run_until_killed([sys.executable, "-c", _CHILD, json.dumps({**base, "output": bucket.uri("killed")}),
                      json.dumps(fault)])
    left = [k for k in bucket.keys("killed/") if not k.startswith(f"killed/{PARTS}/")]
    assert len(left) >= 2 and all(k.startswith("killed/part-") for k in left)  # no temp, no manifest
    for k in left:  # each one complete
        assert pq.read_table(io.BytesIO(bucket.get(k))).num_rows == ROWS

    summary = score(ScoreConfig(**base, output=bucket.uri("killed")))
    assert summary.shards_resumed == len(left) and summary.shards_scored == N_SHARDS - len(left)
    _assert_same(read_prefix(bucket, "killed/"), whole, ids)
    assert hidden(bucket, "") == [] and bucket.keys(f"killed/{PARTS}/") == []


def test_driver_killed_mid_shard_on_s3_rerun_scores_only_the_units_not_written(ray_local, bucket, s3_ckpt, tmp_path):
    """Units of 4 rows: the driver is SIGKILLed after the 3rd scored part, before any shard
    is complete; the parts uploaded so far are kept and the re-run scores only the rest."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "reliability"))
    from relkit import run_until_killed

    from bertml.output import OutputDir

    ids = put_corpus(bucket, n=2)
    base = {"checkpoint": s3_ckpt, "input": bucket.uri("in/"), "batch_size": 4, "unit_rows": 4}
    score(ScoreConfig(**base, output=bucket.uri("whole")))
    whole = read_prefix(bucket, "whole/")

    fault = {"point": "score_part", "parts": 3, "mode": "kill", "marker": str(tmp_path / "fired")}
    run_until_killed([sys.executable, "-c", _CHILD, json.dumps({**base, "output": bucket.uri("killed")}),
                      json.dumps(fault)])
    assert [k for k in bucket.keys("killed/") if not k.startswith(f"killed/{PARTS}/")] == []
    parts = [p for ps in OutputDir(bucket.uri("killed")).parts().values() for p in ps]
    kept_rows = sum(p.rows for p in parts)
    assert len(parts) >= 3 and kept_rows < len(ids)

    summary = score(ScoreConfig(**base, output=bucket.uri("killed")))
    assert (summary.parts_resumed, summary.rows_resumed) == (len(parts), kept_rows)
    assert summary.rows == len(ids) and summary.units == summary.parts == 2 * 5 - len(parts)  # 5 units a shard
    _assert_same(read_prefix(bucket, "killed/"), whole, ids)
    assert hidden(bucket, "") == [] and bucket.keys(f"killed/{PARTS}/") == []


def _assert_same(final: pa.Table, whole: pa.Table, ids: list[str]) -> None:
    assert final.column("id").to_pylist() == ids
    assert final.column("tags").to_pylist() == whole.column("tags").to_pylist()
    np.testing.assert_allclose(np.array(final.column("probs").to_pylist()), np.array(whole.column("probs").to_pylist()),
                               atol=1e-6)


def test_bad_shard_on_s3_is_skipped_and_listed_rest_exactly_once(ray_local, bucket, s3_ckpt):
    ids = put_corpus(bucket, n=3)
    bucket.put("in/part-001.parquet", b"PAR1 this is not parquet at all PAR1")
    ids = [i for i in ids if not i.startswith("doc-301-")]
    summary = score(ScoreConfig(checkpoint=s3_ckpt, input=bucket.uri("in/"), output=bucket.uri("scored"),
                                batch_size=16, on_bad_shard="skip"))
    assert summary.shards_scored == 2 and len(summary.shards_skipped) == 1
    assert "part-001.parquet" in summary.shards_skipped[0]["shard"]
    assert read_prefix(bucket, "scored/").column("id").to_pylist() == ids
    manifest = json.loads(bucket.get(f"scored/{MANIFEST}"))
    assert [s["shard"] for s in manifest["summary"]["shards_skipped"]] == [summary.shards_skipped[0]["shard"]]
    assert hidden(bucket, "") == []


def test_evaluate_and_thresholds_write_their_outputs_to_s3(ray_local, bucket, s3_ckpt, tmp_path):
    """evaluate's report (with URI options: scored/ must keep them) and thresholds' output
    checkpoint go to S3; a plain s3:// report (endpoint from the environment) works too."""
    from bertml.evaluate import EvalConfig, ThresholdsConfig, evaluate_checkpoint, tune_checkpoint

    ids = put_corpus(bucket, n=2)
    m = evaluate_checkpoint(EvalConfig(checkpoint=s3_ckpt, data=bucket.uri("in/"), report=bucket.uri("report"),
                                       batch_size=16))
    assert m["rows"]["total"] == len(ids)
    keys = set(bucket.keys("report/"))
    assert {"report/metrics.json", "report/per_label.csv", "report/report.html", "report/scored/part-000.parquet",
            "report/scored/part-001.parquet", "report/pr_curves.png"} <= keys
    assert json.loads(bucket.get("report/metrics.json"))["rows"]["evaluated"] == len(ids)
    assert b"<h1>Evaluation" in bucket.get("report/report.html")

    plain = evaluate_checkpoint(EvalConfig(checkpoint=s3_ckpt, data=bucket.uri("in/", opts=False),
                                           report=bucket.uri("report2", opts=False), batch_size=16))
    assert plain["rows"]["total"] == len(ids) and "report2/metrics.json" in bucket.keys("report2/")

    bucket.put("retuned/vocab.txt", b"stale file of an older checkpoint")
    bucket.put("retuned/bertml.json", b"{}")
    record = tune_checkpoint(ThresholdsConfig(checkpoint=s3_ckpt, data=bucket.uri("in/"),
                                              output=bucket.uri("retuned"), overwrite=True, batch_size=16))
    got = set(bucket.keys("retuned/"))
    assert got == {k.replace("models/multi/", "retuned/") for k in bucket.keys("models/multi/")}  # stale file gone
    meta = json.loads(bucket.get("retuned/bertml.json"))
    assert meta["thresholds"] == [record["per_label"][n]["new_threshold"] for n in meta["labels"]]
    assert hidden(bucket, "") == []


def test_checkpoint_upload_replaces_the_previous_checkpoint_and_refuses_foreign_prefixes(bucket, multi_ckpt, tmp_path):
    """No mix: a stale file of the old checkpoint (vocab.txt) is gone after an upload, the
    new bertml.json is the last object written; a prefix holding other files is refused."""
    import shutil

    old = str(tmp_path / "old")
    shutil.copytree(multi_ckpt, old)
    with open(os.path.join(old, "vocab.txt"), "w") as f:
        f.write("stale")
    ckpt_io.upload(old, bucket.uri("m"))
    assert "m/vocab.txt" in bucket.keys("m/")
    ckpt_io.upload(multi_ckpt, bucket.uri("m"))
    assert sorted(bucket.keys("m/")) == sorted(f"m/{n}" for n in os.listdir(multi_ckpt))
    local = ckpt_io.localize(bucket.uri("m"), cache_dir=str(tmp_path / "cache" / "not-yet"))
    assert sorted(os.listdir(local)) == sorted(os.listdir(multi_ckpt))
    assert ckpt_io.read_meta(local).labels == ckpt_io.read_meta(multi_ckpt).labels

    bucket.put("data/part-0.parquet", b"x")
    with pytest.raises(ckpt_io.CheckpointError, match="not a bertml checkpoint"):
        ckpt_io.upload(multi_ckpt, bucket.uri("data"))
    assert bucket.keys("data/") == ["data/part-0.parquet"]
    hf = ["hf/config.json", "hf/model.safetensors", "hf/tokenizer.json", "hf/vocab.txt"]  # someone's model
    for key in hf:
        bucket.put(key, b"theirs")
    with pytest.raises(ckpt_io.CheckpointError, match="a model without bertml.json"):
        ckpt_io.upload(multi_ckpt, bucket.uri("hf"))
    assert sorted(bucket.keys("hf/")) == hf and all(bucket.get(k) == b"theirs" for k in hf)


def test_object_store_outputs_leave_others_objects_and_the_checkpoint_alone(bucket, s3_ckpt, monkeypatch):
    """Objects named like temp files are not bertml's on object stores (it writes none there),
    and an output inside the checkpoint's prefix is refused before any work."""
    import bertml.runtime

    monkeypatch.setattr(bertml.runtime, "init_ray", lambda *a, **k: pytest.fail("Ray was started"))
    buf = io.BytesIO()
    pq.write_table(pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())}), buf)
    bucket.put("in0/a.parquet", buf.getvalue())
    theirs = ["out/.notes.txt.tmp-0123abcd", "out/sub/.x.tmp-deadbeef"]
    for key in theirs:
        bucket.put(key, b"theirs")
    score(ScoreConfig(checkpoint=s3_ckpt, input=bucket.uri("in0/"), output=bucket.uri("out")))
    assert all(bucket.get(k) == b"theirs" for k in theirs)
    before = sorted(bucket.keys(""))
    prefix = s3_ckpt.split("?")[0].split(f"{bucket.name}/", 1)[1]
    with pytest.raises(OutputError, match="overlap"):
        score(ScoreConfig(checkpoint=s3_ckpt, input=bucket.uri("in0/"), output=bucket.uri(prefix + "/scored")))
    assert sorted(bucket.keys("")) == before


def _scan(secrets: list[str], bucket, folders: list[str], texts: list[str]) -> list[str]:
    """Where any of `secrets` occurs: objects in the bucket, files under `folders`, `texts`."""
    hits = []
    needles = [x.encode() for x in secrets]
    for key in bucket.keys(""):
        data = bucket.get(key)
        hits += [f"s3://{bucket.name}/{key}" for n in needles if n in data]
    for folder in folders:
        for root, _, files in os.walk(folder):
            for f in files:
                with open(os.path.join(root, f), "rb") as fh:
                    data = fh.read()
                hits += [os.path.join(root, f) for n in needles if n in data]
    hits += [f"captured output #{i}" for i, t in enumerate(texts) for x in secrets if x in t]
    return hits


def test_no_secret_is_written_or_printed(ray_local, bucket, multi_ckpt, tmp_path, capsys, caplog, monkeypatch,
                                         request):
    """Credentials inside URIs (user:secret@) and in the environment appear in no byte bertml
    writes or prints: scored objects and their Parquet metadata, the manifest, the report
    folder (metrics.json, report.html), the re-tuned checkpoint, stdout/stderr and every
    log record; the inline form is warned about; a failing URI's error is redacted too."""
    import logging

    from bertml.cli import main
    from bertml.runtime import init_ray

    key, secret = "AKIDINLINEEXAMPLE", "SECRETINLINE-bertml-77e2"
    env_secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    monkeypatch.setenv("BERTML_CACHE", str(tmp_path / "cache"))
    caplog.set_level(logging.INFO)
    bucket.upload_folder(multi_ckpt, "models/multi")
    put_corpus(bucket, n=2)

    def uri(k: str) -> str:
        return f"s3://{key}:{secret}@{bucket.name}/{k}" + bucket.uri("")[len(f"s3://{bucket.name}/"):]

    report, retuned = tmp_path / "report-local", tmp_path / "retuned"
    request.addfinalizer(lambda: init_ray(num_cpus=2))  # the CLI stops its Ray; the session's comes back
    assert main(["score", f"checkpoint={uri('models/multi')}", f"input={uri('in/')}", f"output={uri('scored')}",
                 "batch_size=16"]) == 0
    assert main(["evaluate", f"checkpoint={uri('models/multi')}", f"data={uri('in/')}", f"report={uri('report')}",
                 "batch_size=16"]) == 0
    assert main(["evaluate", f"checkpoint={uri('models/multi')}", f"data={uri('in/')}", f"report={report}",
                 "batch_size=16"]) == 0
    assert main(["thresholds", f"checkpoint={uri('models/multi')}", f"data={uri('in/')}", f"output={retuned}",
                 "batch_size=16"]) == 0
    assert main(["score", f"checkpoint={uri('models/multi')}", f"input={uri('missing/')}",
                 f"output={uri('scored2')}"]) == 2  # an error message naming the URI
    out = capsys.readouterr()
    logs = "\n".join(r.getMessage() for r in caplog.records)
    assert "carries credentials in its URI" in logs and "no such file or folder" in out.err
    assert f"s3://***@{bucket.name}/scored" in out.out  # the summary names the (redacted) destination
    assert {"scored/part-000.parquet", "report/report.html", "report/scored/part-001.parquet"} <= set(bucket.keys())
    assert _scan([secret, env_secret], bucket, [str(report), str(retuned), str(tmp_path / "cache")],
                 [out.out, out.err, logs]) == []


@pytest.mark.slow
def test_train_from_s3_with_storage_and_output_on_s3_then_resume_from_s3(ray_local, bucket, tiny_encoder, tmp_path,
                                                                         monkeypatch):
    """data.train, run.storage_path and run.output on S3; the printed checkpoint is the S3
    destination and no local copy is left in $TMPDIR; run.resume_from on S3 continues from it."""
    import tempfile

    from bertml.config import TrainConfig, load
    from bertml.train import train

    monkeypatch.setenv("BERTML_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    os.makedirs(tmp_path / "tmp")
    put_corpus(bucket, "train", n=2, rows=120)

    def cfg(output: str, *extra: str) -> TrainConfig:
        return load(TrainConfig, None, [
            f"data.train={bucket.uri('train/')}", f"model.name={tiny_encoder}", "model.max_length=32",
            "optim.epochs=1", "optim.batch_size=16", "scaling.num_workers=1",
            f"run.storage_path={bucket.uri('runs')}", f"run.output={bucket.uri(output)}", *extra])

    first = train(cfg("model"))
    assert first.checkpoint == bucket.uri("model")
    keys = set(bucket.keys("model/"))
    assert {"model/bertml.json", "model/model.safetensors", "model/config.json", "model/tokenizer.json"} <= keys
    assert not any("train_state" in k for k in keys)
    assert any(k.startswith("runs/") and k.endswith("train_state.json") for k in bucket.keys("runs/"))
    assert os.listdir(tmp_path / "tmp") == []  # the final checkpoint was not left in $TMPDIR

    second = train(cfg("model2", f"run.resume_from={bucket.uri('model')}", "optim.lr=1e-4"))
    assert second.checkpoint == bucket.uri("model2")
    meta = json.loads(bucket.get("model2/bertml.json"))
    assert meta["config"]["run"]["resume_from"] == bucket.uri("model")
    assert hidden(bucket, "model") == []  # (Ray Train keeps its own .validate_storage_marker under runs/)
