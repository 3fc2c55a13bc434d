"""bertml evaluate / thresholds on tiny offline checkpoints, through the real Ray Data scoring path."""

import csv
import glob
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn import metrics as skm
from tiny import make_rows, write_parquet

from bertml import checkpoint as ckpt_io
from bertml.cli import main
from bertml.config import ConfigError, load
from bertml.evaluate import EvalConfig, ThresholdsConfig
from bertml.labels import LabelSet
from bertml.metrics import tune_thresholds

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-data")
    rows = make_rows(90, seed=7)
    rows[3]["text"], rows[50]["text"] = "", None  # no text: status "empty", excluded from metrics
    write_parquet(rows[:45], str(root / "multi" / "part-0.parquet"))
    write_parquet(rows[45:], str(root / "multi" / "part-1.parquet"))
    write_parquet(make_rows(48, seed=8, single=True), str(root / "single" / "part-0.parquet"), single=True)
    return root


def scored_arrays(folder, ckpt):
    """(probs [n, L], targets) read straight from the scored Parquet, rows with text only."""
    meta = ckpt_io.read_meta(ckpt)
    table = pq.read_table(sorted(glob.glob(os.path.join(folder, "*.parquet"))))
    table = table.filter(table.column("probs").is_valid())
    probs = np.array(table.column("probs").to_pylist(), dtype=np.float64)
    return probs, LabelSet(tuple(meta.labels), meta.multi_label).encode(table.column("labels").to_pylist(), None)


@pytest.fixture(scope="module")
def multi_report(ray_local, multi_ckpt, labelled, tmp_path_factory):
    report = tmp_path_factory.mktemp("report") / "multi"
    assert main(["evaluate", f"checkpoint={multi_ckpt}", f"data={labelled}/multi", f"report={report}",
                 "id_column=id"]) == 0
    return str(report)


def test_report_folder_has_every_file(multi_report):
    names = set(os.listdir(multi_report))
    assert names == {"metrics.json", "per_label.csv", "pr_curves.png", "f1_threshold.png", "frequency_f1.png",
                     "cooccurrence.png", "report.html", "scored"}
    for png in glob.glob(os.path.join(multi_report, "*.png")):
        assert open(png, "rb").read(8) == PNG
    page = open(os.path.join(multi_report, "report.html"), encoding="utf-8").read()
    assert page.count('src="data:image/png;base64,') == 4  # embedded: opens offline
    assert "<script" not in page and 'src="http' not in page and "href=\"http" not in page
    assert "体育" in page  # names are text in the page even when plots fall back to #index


def test_metrics_agree_with_sklearn_on_the_scored_probs(multi_report, multi_ckpt):
    m = json.load(open(os.path.join(multi_report, "metrics.json"), encoding="utf-8"))
    probs, y = scored_arrays(os.path.join(multi_report, "scored"), multi_ckpt)
    thresholds = np.array(ckpt_io.read_meta(multi_ckpt).thresholds)
    assert m["rows"] == {"total": 90, "evaluated": 88, "excluded_empty": 2, "excluded_unknown_label": 0,
                         "status": m["rows"]["status"]} and m["rows"]["status"]["empty"] == 2
    assert "empty" in m["excluded"] and len(probs) == 88
    for key, t in (("tuned", thresholds), ("at_0.5", 0.5)):
        pred = (probs >= t).astype(int)
        for avg in ("micro", "macro", "weighted", "samples"):
            assert m[key][f"{avg}_f1"] == pytest.approx(skm.f1_score(y, pred, average=avg, zero_division=0))
            assert m[key][f"{avg}_precision"] == pytest.approx(skm.precision_score(y, pred, average=avg, zero_division=0))
            assert m[key][f"{avg}_recall"] == pytest.approx(skm.recall_score(y, pred, average=avg, zero_division=0))
        assert m[key]["subset_accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
        assert m[key]["hamming_loss"] == pytest.approx(skm.hamming_loss(y, pred))
        assert m[key]["micro_roc_auc"] == pytest.approx(skm.roc_auc_score(y.ravel(), probs.ravel()))
    names = m["labels"]
    rows = list(csv.DictReader(open(os.path.join(multi_report, "per_label.csv"), encoding="utf-8")))
    assert [r["label"] for r in rows] == names
    for j, r in enumerate(rows):
        assert int(r["support"]) == int(y[:, j].sum())
        assert float(r["threshold"]) == pytest.approx(thresholds[j])
        assert float(r["f1"]) == pytest.approx(skm.f1_score(y[:, j], probs[:, j] >= thresholds[j]), abs=1e-5)
        assert float(r["f1_at_0.5"]) == pytest.approx(skm.f1_score(y[:, j], probs[:, j] >= 0.5), abs=1e-5)
        assert float(r["average_precision"]) == pytest.approx(skm.average_precision_score(y[:, j], probs[:, j]), abs=1e-5)


def test_single_label_report_has_a_confusion_matrix(ray_local, single_ckpt, labelled, tmp_path):
    report = tmp_path / "single"
    assert main(["evaluate", f"checkpoint={single_ckpt}", f"data={labelled}/single", f"report={report}"]) == 0
    assert open(report / "confusion_matrix.png", "rb").read(8) == PNG
    assert not (report / "pr_curves.png").exists()
    m = json.load(open(report / "metrics.json", encoding="utf-8"))
    probs, y = scored_arrays(str(report / "scored"), single_ckpt)
    assert m["problem_type"] == "single_label"
    assert m["argmax"]["accuracy"] == pytest.approx(skm.accuracy_score(y, probs.argmax(1)))
    assert m["argmax"]["macro_f1"] == pytest.approx(
        skm.f1_score(y, probs.argmax(1), average="macro", labels=range(probs.shape[1]), zero_division=0))


@pytest.fixture(scope="module")
def tuned(ray_local, multi_ckpt, labelled, tmp_path_factory):
    root = tmp_path_factory.mktemp("thresholds")
    before = {f: open(os.path.join(multi_ckpt, f), "rb").read() for f in os.listdir(multi_ckpt)}
    args = [f"checkpoint={multi_ckpt}", f"data={labelled}/multi", f"scored={root / 'scored'}"]
    assert main(["thresholds", *args, f"output={root / 'max_f1'}"]) == 0
    # A target the best label can just reach (the tiny model is random-init, its scores are weak).
    probs, y = scored_arrays(str(root / "scored"), multi_ckpt)
    best = max(skm.precision_recall_curve(y[:, j], probs[:, j])[0][:-1].max() for j in range(y.shape[1]))
    target = np.floor(best * 100) / 100
    # Same checkpoint and data: the scored folder is reused, nothing is scored twice.
    assert main(["thresholds", *args, f"output={root / 'precision'}", f"target_precision={target}"]) == 0
    return root, before, target


def test_thresholds_writes_a_copy_and_leaves_the_original(tuned, multi_ckpt):
    root, before, _ = tuned
    after = {f: open(os.path.join(multi_ckpt, f), "rb").read() for f in os.listdir(multi_ckpt)}
    assert after == before
    out = str(root / "max_f1")
    assert sorted(os.listdir(out)) == sorted(before)
    meta = ckpt_io.read_meta(out)
    probs, y = scored_arrays(str(root / "scored"), multi_ckpt)
    expected, _ = tune_thresholds(probs, y)
    assert meta.thresholds == pytest.approx(expected.tolist())
    assert meta.thresholds != ckpt_io.read_meta(multi_ckpt).thresholds
    src = meta.metrics["thresholds"]
    assert src["mode"] == "max_f1" and src["from_fingerprint"] == ckpt_io.fingerprint(multi_ckpt)
    assert src["rows"] == 88 and set(src["per_label"]) == set(meta.labels)


def test_target_precision_is_met_where_reachable(tuned, multi_ckpt):
    root, _, target = tuned
    meta = ckpt_io.read_meta(str(root / "precision"))
    info = meta.metrics["thresholds"]
    assert info["mode"] == "target_precision" and info["target_precision"] == pytest.approx(target)
    probs, y = scored_arrays(str(root / "scored"), multi_ckpt)
    reached = [j for j, n in enumerate(meta.labels)
               if n not in info["precision_unreached"] and n not in info["fallback_labels"]]
    assert reached, "the test data should let some label reach the target"
    for j in reached:
        assert skm.precision_score(y[:, j], probs[:, j] >= meta.thresholds[j]) >= target


def test_bad_configs_fail_before_any_work(single_ckpt, multi_ckpt, tmp_path, capsys):
    with pytest.raises(ConfigError, match="^output:"):
        load(ThresholdsConfig, None, [f"checkpoint={multi_ckpt}", "data=x", f"output={multi_ckpt}"])
    with pytest.raises(ConfigError, match="^target_precision:"):
        load(ThresholdsConfig, None, ["checkpoint=c", "data=x", "output=o", "target_precision=1.5"])
    with pytest.raises(ConfigError, match="^labels_column:"):
        load(EvalConfig, None, ["checkpoint=c", "data=x", "report=r", "labels_column=probs"])
    with pytest.raises(ConfigError, match="^data:"):
        load(EvalConfig, None, ["checkpoint=c", "report=r"])
    assert main(["thresholds", f"checkpoint={single_ckpt}", "data=x", f"output={tmp_path / 'o'}"]) == 2
    assert "single_label" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "f").write_text("x")
    assert main(["thresholds", f"checkpoint={multi_ckpt}", "data=x", f"output={tmp_path / 'taken'}"]) == 2
    assert "already exists" in capsys.readouterr().err
