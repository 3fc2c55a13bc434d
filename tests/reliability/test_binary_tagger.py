"""A binary tagger (multi-label with one label name: is this document about sport?) works end
to end: train, evaluate (which scores), thresholds; degenerate label sets fail before Ray."""

import csv
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn import metrics as skm
from tiny import make_rows, write_parquet

from bertml import checkpoint as ckpt_io
from bertml.cli import main
from bertml.config import TrainConfig, load
from bertml.shards import InputError
from bertml.train import train

pytestmark = pytest.mark.reliability


def binary_rows(n: int, seed: int) -> list[dict]:
    """["sport"] on rows with a sport keyword, [] on the others (negatives)."""
    return [{**r, "labels": ["sport"] if "sport" in r["labels"] else []} for r in make_rows(n, seed=seed)]


def train_args(tmp_path, encoder, data, *extra) -> list[str]:
    return [f"data.train={data}", f"model.name={encoder}", "model.max_length=32", "optim.epochs=2",
            "optim.lr=3e-3", "optim.batch_size=16", "optim.warmup_ratio=0.05", "scaling.num_workers=1",
            f"run.storage_path={tmp_path}/runs", f"run.output={tmp_path}/model", *extra]


def test_binary_tagger_trains_evaluates_tunes_and_scores(ray_local, tiny_encoder, tmp_path, capsys):
    rows = binary_rows(640, seed=11)
    assert 0.3 < np.mean([bool(r["labels"]) for r in rows]) < 0.7
    data = write_parquet(rows, str(tmp_path / "train" / "part.parquet"))
    test = write_parquet(binary_rows(120, seed=12), str(tmp_path / "test" / "part.parquet"))

    assert main(["train", *train_args(tmp_path, tiny_encoder, data)]) == 0
    ckpt = str(tmp_path / "model")
    meta = ckpt_io.validate(ckpt)
    assert meta.labels == ["sport"] and meta.multi_label and len(meta.thresholds) == 1
    assert [h["epoch"] for h in meta.metrics["history"]] == [1, 2]
    assert 0 < meta.thresholds[0] < 1

    report = tmp_path / "report"
    assert main(["evaluate", f"checkpoint={ckpt}", f"data={test}", f"report={report}", "id_column=id"]) == 0
    m = json.load(open(report / "metrics.json", encoding="utf-8"))
    table = pq.read_table(report / "scored" / "part.parquet")
    assert table.num_rows == 120 and set(table.column("status").to_pylist()) == {"ok"}
    probs = np.array(table.column("probs").to_pylist(), dtype=np.float64)  # [N, 1]
    y = np.array([[bool(c)] for c in table.column("labels").to_pylist()], dtype=np.int64)  # [N, 1]
    tags = table.column("tags").to_pylist()
    assert probs.shape == (120, 1)
    assert tags == [["sport"] if p >= meta.thresholds[0] else [] for p in probs[:, 0]]
    # One label: micro, macro and the per-label row are all that label's own binary F1.
    f1 = skm.f1_score(y[:, 0], probs[:, 0] >= meta.thresholds[0])
    assert m["tuned"]["micro_f1"] == pytest.approx(f1) and m["tuned"]["macro_f1"] == pytest.approx(f1)
    assert m["per_label"]["tuned"]["sport"]["f1"] == pytest.approx(f1)
    assert m["per_label"]["tuned"]["sport"]["support"] == int(y.sum())
    assert m["tuned"]["macro_roc_auc"] == pytest.approx(skm.roc_auc_score(y[:, 0], probs[:, 0]))
    assert m["tuned"]["macro_roc_auc"] > 0.9, m["tuned"]  # two epochs learn the keyword task
    assert m["tuned"]["subset_accuracy"] == pytest.approx(skm.accuracy_score(y[:, 0], probs[:, 0] >= meta.thresholds[0]))
    assert [r["label"] for r in csv.DictReader(open(report / "per_label.csv", encoding="utf-8"))] == ["sport"]
    assert {"pr_curves.png", "f1_threshold.png", "report.html"} <= set(os.listdir(report))

    tuned = tmp_path / "tuned"
    assert main(["thresholds", f"checkpoint={ckpt}", f"data={test}", f"output={tuned}", "id_column=id",
                 f"scored={tmp_path / 'scored-for-thresholds'}"]) == 0
    new = ckpt_io.validate(str(tuned))
    best = max(skm.f1_score(y[:, 0], probs[:, 0] >= t) for t in probs[:, 0])
    assert skm.f1_score(y[:, 0], probs[:, 0] >= new.thresholds[0]) == pytest.approx(best)
    capsys.readouterr()


@pytest.mark.parametrize("labels, extra, message", [
    (["sport"], ["data.problem_type=single_label"],
     "column 'labels': every training row has the class 'sport'; single_label needs at least 2 classes; "
     "a binary tagger (is it sport?) is data.problem_type=multi_label with labels ['sport'] on positive rows"),
    ([], [], "column 'labels': no training row has a label, so there is nothing to learn"),
    (["sport"], [], "every training row has the only label 'sport', so there are no negative examples"),
])
def test_label_set_with_nothing_to_learn_fails_before_ray(tiny_encoder, tmp_path, capsys, monkeypatch,
                                                          labels, extra, message):
    import pyarrow as pa

    import bertml.runtime

    monkeypatch.setattr(bertml.runtime, "init_ray", lambda *a, **k: pytest.fail("Ray was started"))
    data = str(tmp_path / "one.parquet")
    texts = [r["text"] for r in make_rows(40, seed=13)]
    cells = pa.array([labels[0]] * 40) if extra else pa.array([labels] * 40, pa.list_(pa.string()))
    pq.write_table(pa.table({"text": texts, "labels": cells}), data)  # single_label: one string per row
    with pytest.raises(InputError) as e:
        train(load(TrainConfig, None, train_args(tmp_path, tiny_encoder, data, *extra)))
    assert message in str(e.value) and data in str(e.value)
    assert main(["train", *train_args(tmp_path, tiny_encoder, data, *extra)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "model").exists() and not (tmp_path / "runs").exists()
