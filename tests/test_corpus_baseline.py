"""The BBC demo corpus (bertml.corpus) and the TF-IDF baseline (bertml.baseline). No Ray."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import f1_score
from sklearn.preprocessing import MultiLabelBinarizer

from bertml.baseline import read_split, tfidf_baseline
from bertml.corpus import SPLITS, build_bbc_multilabel

TOPICS = ["business", "entertainment", "politics", "sport", "tech"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("bbc") / "corpus"
    return str(out), build_bbc_multilabel(str(out), n_docs=300, seed=0)


def _read(path) -> dict:
    return pq.read_table(path).to_pydict()


def _titles(text: str) -> list[str]:
    # an article is "title\nsnippet"; articles are joined by a blank line
    return [part.split("\n", 1)[0] for part in text.split("\n\n")]


def test_files_rows_and_schema(corpus):
    out, report = corpus
    assert report["rows"] == {"train": 210, "validation": 45, "test": 45}
    assert report["labels"] == TOPICS
    for split in SPLITS:
        paths = report["paths"][split]
        assert paths[0].endswith(f"{split}/part-00000.parquet")
        table = pq.read_table(f"{out}/{split}")
        assert table.num_rows == report["rows"][split]
        assert table.schema.names == ["id", "text", "labels", "n_articles"]
        labels_type = table.schema.field("labels").type
        assert pa.types.is_list(labels_type) and pa.types.is_string(labels_type.value_type)
        assert table.schema.field("n_articles").type == pa.int32()
    # 210 train rows at shard_rows=200 -> two shards
    assert [p.rsplit("/", 1)[1] for p in report["paths"]["train"]] == ["part-00000.parquet", "part-00001.parquet"]
    assert max(pq.read_metadata(p).num_rows for p in report["paths"]["train"]) <= 200


def test_documents_are_well_formed(corpus):
    out, report = corpus
    ids: list[str] = []
    for split in SPLITS:
        rows = _read(f"{out}/{split}")
        ids += rows["id"]
        assert all(i.startswith(f"bbc-{split}-") for i in rows["id"])
        for text, labels, n in zip(rows["text"], rows["labels"], rows["n_articles"], strict=True):
            assert 1 <= len(labels) <= 3 and n == len(labels) == len(_titles(text))
            assert labels == sorted(set(labels)) and set(labels) <= set(TOPICS)
            assert all(len(part.split("\n", 1)[1].split()) <= 60 for part in text.split("\n\n"))
        freq = {t: sum(t in labels for labels in rows["labels"]) for t in TOPICS}
        assert freq == report["label_freq"][split]
        assert {len(labels) for labels in rows["labels"]} == {1, 2, 3}
    assert len(ids) == len(set(ids))


def test_no_article_in_two_splits(corpus):
    out, _ = corpus
    titles = {split: [t for text in _read(f"{out}/{split}")["text"] for t in _titles(text)] for split in SPLITS}
    for split in SPLITS:  # 300 docs need far fewer articles than a split has: none reused
        assert len(titles[split]) == len(set(titles[split]))
    assert not set(titles["train"]) & set(titles["validation"])
    assert not set(titles["train"]) & set(titles["test"])
    assert not set(titles["validation"]) & set(titles["test"])


def test_deterministic_given_seed(corpus, tmp_path):
    out, report = corpus
    again = build_bbc_multilabel(str(tmp_path / "again"), n_docs=300, seed=0)
    build_bbc_multilabel(str(tmp_path / "other"), n_docs=300, seed=1)
    assert again["rows"] == report["rows"] and again["label_freq"] == report["label_freq"]
    for split in SPLITS:
        for a, b in zip(report["paths"][split], again["paths"][split], strict=True):
            assert pq.read_table(a).equals(pq.read_table(b))
    assert _read(f"{out}/train")["text"] != _read(str(tmp_path / "other" / "train"))["text"]


def test_capped_build_beyond_one_pass_still_keeps_splits_apart(tmp_path):
    # validation has ~300 articles (~150 docs per pass): 600 docs forces reuse inside it
    report = build_bbc_multilabel(str(tmp_path), n_docs=4000, seed=3, splits=(0.85, 0.15, 0.0))
    assert report["rows"] == {"train": 3400, "validation": 600, "test": 0}
    titles = {s: {t for text in _read(f"{tmp_path}/{s}")["text"] for t in _titles(text)} for s in SPLITS[:2]}
    assert not titles["train"] & titles["validation"]
    assert pq.read_table(f"{tmp_path}/test").num_rows == 0


def test_tfidf_baseline_multilabel(corpus):
    out, _ = corpus
    train_texts, train_labels = read_split(f"{out}/train")
    test_texts, test_labels = read_split(f"{out}/test")
    probs = tfidf_baseline(train_texts, train_labels, test_texts, TOPICS)
    assert probs.shape == (len(test_texts), 5)
    assert np.all((probs >= 0) & (probs <= 1))
    y = MultiLabelBinarizer(classes=TOPICS).fit_transform(test_labels)
    assert f1_score(y, (probs >= 0.5).astype(int), average="micro") > 0.7


def test_tfidf_baseline_single_label_and_char_ngrams():
    texts = ["goal match team win", "team match goal score", "vote party election", "party vote minister"] * 3
    labels = ["sport", "sport", "politics", "politics"] * 3
    names = ["politics", "sport", "tech"]  # "tech" never seen in train: probability 0
    probs = tfidf_baseline(texts, labels, ["match goal", "election vote"], names, multi_label=False)
    assert probs.shape == (2, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert list(probs.argmax(axis=1)) == [1, 0] and np.all(probs[:, 2] == 0)
    # no spaces between words (Chinese): character n-grams instead of word n-grams
    zh = ["足球比赛进球", "球队赢得比赛", "议会选举投票", "政党选举部长"] * 3
    probs = tfidf_baseline(
        zh, [[lab] for lab in labels], ["比赛进球", "选举投票"], names,
        multi_label=False, tfidf_kwargs={"analyzer": "char_wb", "ngram_range": (1, 3)},
    )
    assert list(probs.argmax(axis=1)) == [1, 0]


def test_tfidf_baseline_rejects_unknown_labels():
    with pytest.raises(ValueError, match="not in label_names"):
        tfidf_baseline(["ab cd", "ab ef"], [["x"], ["y"]], ["ab"], ["x"])
