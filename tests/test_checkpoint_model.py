"""Checkpoint folder: exact file set, plain transformers loads it, same probabilities."""

import json
import os

import numpy as np
import pyarrow as pa
import pytest
import torch

from bertml import checkpoint as ckpt_io
from bertml.scoring.infer import Scorer
from bertml.tokenization import encode_batch

TEXTS = ["football match today", "bank stocks fell", "新的 足球 比赛", "software chip", "a"]
EXPECTED_FILES = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "bertml.json"}


def test_checkpoint_file_set(multi_ckpt):
    assert set(os.listdir(multi_ckpt)) == EXPECTED_FILES
    meta = json.load(open(os.path.join(multi_ckpt, "bertml.json"), encoding="utf-8"))
    assert meta["labels"] == ["money", "sport", "tech", "体育"] and len(meta["thresholds"]) == 4
    cfg = json.load(open(os.path.join(multi_ckpt, "config.json"), encoding="utf-8"))
    assert cfg["problem_type"] == "multi_label_classification" and cfg["id2label"]["3"] == "体育"


def bertml_probs(ckpt, texts):
    scorer = Scorer(ckpt, precision="fp32")  # exact on GPU machines too
    _, tok, meta = ckpt_io.load(ckpt)
    ids, status = encode_batch(tok, texts, meta.max_length)
    out = scorer(pa.table({"input_ids": ids, "status": pa.array(status, pa.string())}))
    rows = out.column("probs").to_pylist()
    return np.array([r if r is not None else [np.nan] * len(meta.labels) for r in rows], dtype=np.float32), out


@pytest.mark.parametrize("which", ["multi_ckpt", "single_ckpt"])
def test_hf_pipeline_gives_the_same_probabilities(which, request):
    from transformers import pipeline

    ckpt = request.getfixturevalue(which)
    ours, _ = bertml_probs(ckpt, TEXTS)
    pipe = pipeline("text-classification", model=ckpt, top_k=None, device=-1)
    label_order = json.load(open(os.path.join(ckpt, "bertml.json"), encoding="utf-8"))["labels"]
    theirs = np.array([[{d["label"]: d["score"] for d in row}[n] for n in label_order] for row in pipe(TEXTS)])
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    if which == "single_ckpt":
        np.testing.assert_allclose(ours.sum(1), 1.0, atol=1e-5)


def test_tags_are_probs_over_thresholds(multi_ckpt):
    probs, out = bertml_probs(multi_ckpt, TEXTS)
    t = np.array([0.3, 0.4, 0.5, 0.6])
    names = np.array(["money", "sport", "tech", "体育"])
    assert out.column("tags").to_pylist() == [list(names[row >= t]) for row in probs]


def test_single_label_writes_label_and_score(single_ckpt):
    probs, out = bertml_probs(single_ckpt, TEXTS + [None])
    assert "tags" not in out.column_names
    assert out.column("label").to_pylist()[:-1] == [["money", "sport", "tech", "体育"][i] for i in probs[:-1].argmax(1)]
    assert out.column("label")[5].as_py() is None and out.column("probs")[5].as_py() is None


def write_meta(path, **changes):
    meta = json.load(open(os.path.join(path, "bertml.json"), encoding="utf-8"))
    meta.update(changes)
    json.dump(meta, open(os.path.join(path, "bertml.json"), "w", encoding="utf-8"))


@pytest.fixture
def ckpt_copy(multi_ckpt, tmp_path):
    import shutil

    dst = str(tmp_path / "c")
    shutil.copytree(multi_ckpt, dst)
    return dst


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda p: os.remove(os.path.join(p, "bertml.json")), "no bertml.json"),
        (lambda p: os.remove(os.path.join(p, "model.safetensors")), "no model.safetensors"),
        (lambda p: write_meta(p, labels=["a", "b", "c"], thresholds=[0.5] * 3), "model head"),
        (lambda p: write_meta(p, thresholds=[0.5, 1.5, 0.5, 0.5]), "thresholds must be in [0, 1]"),
        (lambda p: write_meta(p, max_length=500), "exceeds the model's limit of 128"),
    ],
)
def test_bad_checkpoints_fail_clearly(ckpt_copy, mutate, message):
    mutate(ckpt_copy)
    with pytest.raises(ckpt_io.CheckpointError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ckpt_io.read_meta(ckpt_copy)


def test_pickle_only_checkpoint_is_refused(ckpt_copy):
    from safetensors.torch import load_file

    state = load_file(os.path.join(ckpt_copy, "model.safetensors"))
    os.remove(os.path.join(ckpt_copy, "model.safetensors"))
    torch.save(state, os.path.join(ckpt_copy, "pytorch_model.bin"))
    with pytest.raises(ckpt_io.CheckpointError, match="pickle-based weights are refused"):
        ckpt_io.read_meta(ckpt_copy)


def test_lr_schedule_and_its_resume_from_the_train_state(tmp_path):
    """Warmup from 0, linear decay to 0 (transformers' schedule); an optimizer and schedule
    restored from the train state continue exactly where the saved ones were."""
    from bertml.train_loop import make_optimizer, make_scheduler

    def fresh():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
        opt = make_optimizer(model, 1.0, 0.01)
        return model, opt, make_scheduler(opt, 20, 0.2)

    def steps(model, opt, sched, n):
        lrs = []
        for _ in range(n):
            lrs.append(sched.get_last_lr()[0])
            model(torch.ones(4, 3)).sum().backward()
            opt.step()
            sched.step()
            opt.zero_grad()
        return lrs

    model, opt, sched = fresh()
    first = steps(model, opt, sched, 7)
    assert first == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0, 15 / 16, 14 / 16])
    weights = {k: v.clone() for k, v in model.state_dict().items()}  # (saved with the model folder)
    ckpt_io.save_train_state(str(tmp_path), opt, sched, None, epoch=1, step=7, history=[{"epoch": 1}])
    rest = steps(model, opt, sched, 13)
    assert rest[0] == pytest.approx(13 / 16) and rest[-1] == pytest.approx(1 / 16)

    resumed, opt2, sched2 = fresh()
    resumed.load_state_dict(weights)
    state = ckpt_io.load_train_state(str(tmp_path), opt2, sched2, None)
    assert (state["epoch"], state["step"], state["history"]) == (1, 7, [{"epoch": 1}])
    assert steps(resumed, opt2, sched2, 13) == rest
    for k, v in model.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, rtol=0, atol=0)
