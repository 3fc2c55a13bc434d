"""Vocabulary extension: an English-vocabulary encoder learns to read Chinese, and the
extended checkpoint loads and scores the same in plain transformers."""

import numpy as np
import pytest
import torch
from tiny import build_tiny_model

from bertml import coverage, vocab
from bertml.model import load_tokenizer

TEXTS = ["今天城市新闻报道了足球比赛的结果", "银行和市场的价格今天上涨", "我们在一个新的城市看比赛",
         "the match today", "Ünïcode café naïve"] * 10


@pytest.fixture()
def english(tmp_path):
    from transformers import AutoModelForSequenceClassification

    path = build_tiny_model(str(tmp_path / "enc"), english_only=True)
    return path, load_tokenizer(path), AutoModelForSequenceClassification.from_pretrained(path)


def test_extension_adds_the_unknown_characters_and_the_text_becomes_readable(english):
    _, tok, model = english
    before = coverage.check(tok, TEXTS)
    rows = model.get_input_embeddings().weight.shape[0]
    added = vocab.extend(tok, model, TEXTS, min_count=2)
    after = coverage.check(tok, TEXTS)
    assert before.unk_rate > 0.3 and after.unk_rate < 0.05, (before.unk_rate, after.unk_rate)
    assert {"今", "天", "的", "足"} <= set(added) and all(vocab.is_cjk(u) for u in added if u in "今天城市")
    assert model.get_input_embeddings().weight.shape[0] == rows + len(added) == len(tok)
    assert model.config.vocab_size == len(tok)
    # one character, one token, as a Chinese vocabulary has it
    assert len(tok("今天的比赛", add_special_tokens=False)["input_ids"]) == 5
    assert vocab.extend(tok, model, TEXTS, min_count=2) == []  # nothing unknown is left


def test_rare_units_are_not_added_and_max_new_is_a_cap(english):
    _, tok, model = english
    assert vocab.extend(tok, model, TEXTS[:3], min_count=100) == []
    added = vocab.extend(tok, model, TEXTS, min_count=1, max_new=4)
    assert len(added) == 4


def test_an_extended_checkpoint_loads_and_scores_the_same_in_plain_transformers(english, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _, tok, model = english
    vocab.extend(tok, model, TEXTS, min_count=2)
    out = str(tmp_path / "extended")
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    tok2 = AutoTokenizer.from_pretrained(out)
    model2 = AutoModelForSequenceClassification.from_pretrained(out)
    texts = ["今天的足球比赛", "the match", "银行价格"]
    enc, enc2 = tok(texts, padding=True, return_tensors="pt"), tok2(texts, padding=True, return_tensors="pt")
    assert torch.equal(enc["input_ids"], enc2["input_ids"])
    model.eval()
    model2.eval()
    with torch.no_grad():
        np.testing.assert_allclose(model(**enc).logits.numpy(), model2(**enc2).logits.numpy(), rtol=1e-5, atol=1e-6)
