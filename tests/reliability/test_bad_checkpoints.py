"""Bad checkpoints and configs fail fast with one clear error; untrusted content stays data."""

import json
import math
import os
import shutil
import time

import pyarrow.parquet as pq
import pytest

from bertml.checkpoint import CheckpointError
from bertml.config import ConfigError, ScoreConfig, TrainConfig, load
from bertml.output import LOCK, MANIFEST, META_LABELS, OutputDir, OutputError, output_name
from bertml.score import score
from bertml.shards import InputError

pytestmark = pytest.mark.reliability


def _copy(src: str, dst) -> str:
    shutil.copytree(src, dst)
    return str(dst)


def _edit_json(path: str, **changes) -> None:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    data.update(changes)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)


def _no_meta(c):
    os.remove(os.path.join(c, "bertml.json"))


def _no_weights(c):
    os.remove(os.path.join(c, "model.safetensors"))


def _pickle_only(c):
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(os.path.join(c, "model.safetensors")), os.path.join(c, "pytorch_model.bin"))
    os.remove(os.path.join(c, "model.safetensors"))


def _meta(**changes):
    return lambda c: _edit_json(os.path.join(c, "bertml.json"), **changes)


def _garbled_meta(c):
    with open(os.path.join(c, "bertml.json"), "w") as f:
        f.write("{labels: [")


BAD_CHECKPOINTS = {  # name -> (mutation of a good checkpoint, error it must give)
    "missing bertml.json": (_no_meta, "no bertml.json; this is not a bertml checkpoint"),
    "missing weights": (_no_weights, "no model.safetensors"),
    "pickle-only weights": (_pickle_only, "Found pytorch_model.bin: pickle-based weights are refused for safety"),
    "not json": (_garbled_meta, "not a valid bertml.json"),
    "labels vs head": (_meta(labels=["a", "b", "c", "d", "e"], thresholds=[0.5] * 5),
                       "lists 5 labels but the model head (config.json) has 4 outputs"),
    "threshold above 1": (_meta(thresholds=[0.3, 1.5, 0.5, 0.5]), "thresholds must be in [0, 1]; label 'sport' has 1.5"),
    "threshold below 0": (_meta(thresholds=[-0.1, 0.5, 0.5, 0.5]), "thresholds must be in [0, 1]; label 'money' has -0.1"),
    "threshold NaN": (_meta(thresholds=[0.5, 0.5, math.nan, 0.5]), "thresholds must be in [0, 1]; label 'tech' has nan"),
    "threshold count": (_meta(thresholds=[0.5, 0.5]), "thresholds must list one value per label (4)"),
    "max_length over model limit": (_meta(max_length=256), "max_length 256 exceeds the model's limit of 128 tokens"),
}


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if scoring gets as far as starting (or joining) Ray."""
    import bertml.runtime

    monkeypatch.setattr(bertml.runtime, "init_ray", lambda *a, **k: pytest.fail("Ray was started"))


@pytest.fixture(scope="module")
def tiny_input(tmp_path_factory):
    from tiny import make_rows, write_parquet

    return write_parquet(make_rows(8, seed=9), str(tmp_path_factory.mktemp("in") / "part.parquet"))


@pytest.mark.parametrize("case", sorted(BAD_CHECKPOINTS))
def test_bad_checkpoint_is_one_clear_error_before_any_work(multi_ckpt, tiny_input, tmp_path, no_ray, case):
    mutate, message = BAD_CHECKPOINTS[case]
    ckpt = _copy(multi_ckpt, tmp_path / "ckpt")
    mutate(ckpt)
    out = tmp_path / "out"
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError) as e:
        score(ScoreConfig(checkpoint=ckpt, input=tiny_input, output=str(out)))
    assert time.perf_counter() - t0 < 5
    assert message in str(e.value)
    assert ckpt in str(e.value)  # names the checkpoint (folder or file in it)
    assert not out.exists()


@pytest.mark.parametrize("overrides, error, message", [
    ({"max_length": 200}, CheckpointError, "max_length 200 exceeds the model's limit of 128 tokens"),
    ({"max_length": 1000}, ConfigError, "max_length: expected null or an integer in [1, 512], got 1000"),
    ({"long_text": "chunk", "chunk_stride": 62}, InputError, "chunk_stride 62 must be below max_length - 2 (62)"),
    ({"checkpoint": "/nonexistent/ckpt"}, CheckpointError, "checkpoint /nonexistent/ckpt: not a folder"),
    ({"input": "/nonexistent/in"}, InputError, "input /nonexistent/in: no such file or folder"),
])
def test_bad_score_config_is_one_clear_error_before_any_work(multi_ckpt, tiny_input, tmp_path, no_ray,
                                                             overrides, error, message):
    out = tmp_path / "out"
    t0 = time.perf_counter()
    with pytest.raises(error) as e:
        score(ScoreConfig(**{"checkpoint": multi_ckpt, "input": tiny_input, "output": str(out), **overrides}))
    assert time.perf_counter() - t0 < 5
    assert message in str(e.value)
    assert not out.exists()


# ----------------------------------------------------------------------------- security


def test_output_names_never_leave_the_output_folder(tmp_path):
    for key in ["../x", "a/../../x", "..", "/etc/x", "..\\x", "", "./"]:
        with pytest.raises(OutputError, match="outside the output folder"):
            output_name(key)
    assert output_name("sub/./part") == "sub/part.parquet"
    out = OutputDir(str(tmp_path / "out"))
    for name in ["../../etc/x", "/etc/x", "../out-sibling/x.parquet", "sub/../../x"]:
        with pytest.raises(OutputError, match="would write outside the output folder"):
            out.path(name)
    assert out.path("sub/x.parquet") == str(tmp_path / "out" / "sub" / "x.parquet")
    assert os.listdir(tmp_path) == []  # nothing written anywhere (the folder itself comes with the first run)


def test_trust_remote_code_is_off_by_default():
    assert ScoreConfig(checkpoint="c", input="i", output="o").trust_remote_code is False
    assert load(TrainConfig, None, ["data.train=x", "model.name=m"]).model.trust_remote_code is False


@pytest.fixture(scope="module")
def hostile_ckpt(multi_ckpt, tmp_path_factory):
    """A checkpoint whose config points at custom code (which would drop `marker` if ever
    imported) and whose label names look like paths."""
    root = tmp_path_factory.mktemp("hostile")
    ckpt = _copy(multi_ckpt, root / "ckpt")
    marker = str(root / "custom-code-ran")
    with open(os.path.join(ckpt, "custom.py"), "w") as f:
        f.write(f"open({marker!r}, 'w').close()\n"
                "from transformers import BertConfig, BertForSequenceClassification\n"
                "class CustomConfig(BertConfig):\n    pass\n"
                "class CustomModel(BertForSequenceClassification):\n    pass\n")
    labels = ["money", "sport", "../evil", "/tmp/abs-evil"]
    _edit_json(os.path.join(ckpt, "config.json"),
               auto_map={"AutoConfig": "custom.CustomConfig", "AutoModelForSequenceClassification": "custom.CustomModel"},
               id2label={str(i): n for i, n in enumerate(labels)}, label2id={n: i for i, n in enumerate(labels)})
    _edit_json(os.path.join(ckpt, "tokenizer_config.json"), auto_map={"AutoTokenizer": ["custom.CustomConfig", None]})
    _edit_json(os.path.join(ckpt, "bertml.json"), labels=labels, thresholds=[0.5, 0.5, 0.0, 0.0])
    return ckpt, marker


def test_custom_code_in_checkpoint_is_not_run_by_default(hostile_ckpt):
    from transformers import BertForSequenceClassification

    from bertml import checkpoint as ckpt_io

    ckpt, marker = hostile_ckpt
    model, tokenizer, meta = ckpt_io.load(ckpt)
    assert type(model) is BertForSequenceClassification  # transformers' own class, not custom.py's
    assert not os.path.exists(marker)


def test_hostile_checkpoint_scores_as_data_only(ray_local, hostile_ckpt, tiny_input, tmp_path):
    """Scoring with it on Ray (actors and tokenize tasks load it too) runs no custom code,
    and path-like label names end up in the `tags` column, never in a file path."""
    ckpt, marker = hostile_ckpt
    out = tmp_path / "out"
    before = set(os.listdir("/tmp"))
    summary = score(ScoreConfig(checkpoint=ckpt, input=tiny_input, output=str(out)))
    assert not os.path.exists(marker)
    assert sorted(os.listdir(out)) == sorted([MANIFEST, "part.parquet"])
    assert not os.path.exists(os.path.join(out, LOCK))
    assert [p for p in tmp_path.rglob("*") if "evil" in p.name] == []
    assert not os.path.exists(tmp_path / "evil") and "abs-evil" not in set(os.listdir("/tmp")) - before
    table = pq.read_table(out / "part.parquet")
    assert all({"../evil", "/tmp/abs-evil"} <= set(t) for t in table.column("tags").to_pylist())
    assert json.loads(table.schema.metadata[META_LABELS])[2:] == ["../evil", "/tmp/abs-evil"]
    assert summary.tag_counts["../evil"] == summary.rows == 8
