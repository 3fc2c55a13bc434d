"""The coverage check: an encoder whose vocabulary cannot read the text says so."""

import pytest
from tiny import build_tiny_model, make_rows

from bertml import coverage
from bertml.model import load_tokenizer

CHINESE = ["今天城市新闻报道了足球比赛的结果", "银行和市场的价格今天上涨", "我们在一个新的城市看比赛"] * 20
KNOWN_CHINESE = ["今天城市新闻足球比赛", "我们一个城市", "足球 比赛 今天 新闻"] * 20  # characters the tiny vocab saw
ENGLISH = [r["text"] for r in make_rows(60, seed=5) if r["text"].isascii()]


@pytest.fixture(scope="module")
def english_tok(tmp_path_factory):
    return load_tokenizer(build_tiny_model(str(tmp_path_factory.mktemp("en") / "enc"), english_only=True))


@pytest.fixture(scope="module")
def mixed_tok(tiny_encoder):
    return load_tokenizer(tiny_encoder)


def test_an_english_vocabulary_on_chinese_text_warns_naming_the_unknown_characters(english_tok):
    cov = coverage.check(english_tok, CHINESE + [None, "  "])
    assert cov.texts == 60 and cov.unk_rate > 0.5
    assert {u for u, _ in cov.top_unknown} & set("今天城市新闻足球比赛")
    msg = coverage.warning(cov, "the input")
    assert msg and "[UNK]" in msg and "the input" in msg and "今" in "".join(u for u, _ in cov.top_unknown)
    assert cov.record()["unk_rate"] == round(cov.unk_rate, 5)


def test_english_text_on_an_english_vocabulary_does_not_warn(english_tok):
    cov = coverage.check(english_tok, ENGLISH)
    assert cov.texts == len(ENGLISH) and cov.unk_rate <= coverage.UNK_WARN
    assert coverage.warning(cov, "the input") is None


def test_a_vocabulary_that_covers_chinese_does_not_warn(mixed_tok):
    cov = coverage.check(mixed_tok, KNOWN_CHINESE)
    assert cov.tokens >= 60
    assert cov.unk_rate <= coverage.UNK_WARN and coverage.warning(cov, "x") is None


def test_no_text_no_warning(english_tok):
    cov = coverage.check(english_tok, [None, "", " \n"])
    assert cov.texts == 0 and coverage.warning(cov, "x") is None


def test_evaluating_chinese_with_an_english_vocabulary_warns_and_records_it(ray_local, tmp_path, caplog, request):
    """`bertml evaluate` scores through `bertml score`: the warning is logged before any work,
    the scoring summary and manifest record the sample, and the report shows it."""
    import json
    import logging
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    from bertml.cli import main

    ckpt = request.getfixturevalue("english_ckpt")
    os.makedirs(tmp_path / "in")
    pq.write_table(pa.table({"id": list(range(len(CHINESE))), "text": CHINESE, "labels": [["体育"]] * len(CHINESE)}),
                   tmp_path / "in" / "zh.parquet")
    report = tmp_path / "report"
    with caplog.at_level(logging.INFO, logger="bertml"):
        assert main(["evaluate", f"checkpoint={ckpt}", f"data={tmp_path / 'in'}", f"report={report}"]) == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any("are [UNK]" in m and "zh.parquet" in m for m in messages)  # the warning, naming the file
    assert any("coverage" in m and "[UNK]" in m for m in messages)  # the scoring summary's line
    cov = json.load(open(report / "metrics.json", encoding="utf-8"))["coverage"]["data"]
    assert cov["unk_rate"] > 0.5 and cov["texts"] == len(CHINESE) and cov["top_unknown"]
    assert json.load(open(report / "scored" / "_bertml_manifest.json"))["summary"]["coverage"] == cov
    assert "of the tokens of a sample of this data are [UNK]" in (report / "report.html").read_text(encoding="utf-8")
