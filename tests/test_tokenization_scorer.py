"""Tokenization stage and the Scorer on plain Arrow tables (no Ray)."""

import numpy as np
import pyarrow as pa
import pytest

from bertml import checkpoint as ckpt_io
from bertml.scorer import Scorer, pack, pad_windows
from bertml.tokenization import encode_batch

ODD = [None, "", "   \n\t", "足球 比赛 今天", "goal 🙂🎉", "tennis " * 20000, "ok\x00\x07 match", "bad \ud800 surrogate"]


@pytest.fixture(scope="module")
def tok(multi_ckpt):
    return ckpt_io.load(multi_ckpt)[1]


def test_odd_texts_get_a_status_and_never_crash(tok):
    ids, status = encode_batch(tok, ODD, 16)
    assert list(status) == ["empty", "empty", "empty", "ok", "ok", "truncated", "ok", "ok"]
    windows = ids.to_pylist()
    assert [len(w) for w in windows] == [0, 0, 0, 1, 1, 1, 1, 1]
    assert all(len(w[0]) <= 16 for w in windows if w)


def test_chunk_mode_windows_overlap(tok):
    ids, status = encode_batch(tok, ["tennis match " * 30, "goal"], 16, chunk=True, stride=4, max_chunks=64)
    w = ids.to_pylist()
    assert status.tolist() == ["chunked", "ok"] and len(w[0]) > 1 and len(w[1]) == 1
    inner = [x[1:-1] for x in w[0]]  # strip [CLS] [SEP]
    assert inner[0][-4:] == inner[1][:4]  # stride tokens shared
    ids, status = encode_batch(tok, ["tennis match " * 30], 16, chunk=True, stride=4, max_chunks=2)
    assert status.tolist() == ["truncated"] and len(ids.to_pylist()[0]) == 2


@pytest.mark.parametrize("n_words", [1, 7, 13, 14, 29, 61])
def test_chunk_windows_cover_the_whole_text_exactly(tok, n_words):
    text = " ".join(["tennis", "bank", "足球", "software"][i % 4] for i in range(n_words))
    full = tok(text, add_special_tokens=False)["input_ids"]
    (windows,), (status,) = [x.to_pylist() if hasattr(x, "to_pylist") else list(x)
                             for x in encode_batch(tok, [text], 16, chunk=True, stride=4)]
    cls, sep = tok.cls_token_id, tok.sep_token_id
    assert all(w[0] == cls and w[-1] == sep and len(w) <= 16 for w in windows)
    inner = [w[1:-1] for w in windows]
    assert all(a[-4:] == b[:4] for a, b in zip(inner, inner[1:]))  # consecutive windows share 4 tokens
    rebuilt = inner[0] + [t for w in inner[1:] for t in w[4:]]
    assert rebuilt == full  # nothing lost, nothing repeated
    assert status == ("chunked" if len(full) > 14 else "ok")


def test_pack_respects_token_budget_and_covers_all():
    lengths = np.array([5, 100, 7, 60, 3, 3, 90])
    groups = pack(lengths, max_tokens=200)
    assert sorted(np.concatenate(groups).tolist()) == list(range(7))
    assert all(len(g) * lengths[g].max() <= 200 or len(g) == 1 for g in groups)


def test_pad_windows_vectorised():
    values = np.array([1, 2, 3, 4, 5, 6], dtype=np.int32)
    offsets = np.array([0, 3, 4, 6])
    ids, mask = pad_windows(values, offsets, np.array([2, 0]), pad_id=0)
    assert ids.tolist() == [[5, 6, 0], [1, 2, 3]] and mask.tolist() == [[1, 1, 0], [1, 1, 1]]


def test_scorer_on_plain_batch_matches_direct_forward(multi_ckpt, tok):
    import torch

    texts = ["football match", None, "bank 足球 比赛 today and more words here", "chip"]
    ids, status = encode_batch(tok, texts, 64)
    scorer = Scorer(multi_ckpt, max_tokens=16, precision="fp32")  # tiny budget: several forward passes
    out = scorer(pa.table({"id": ["a", "b", "c", "d"], "input_ids": ids, "status": pa.array(status, pa.string())}))
    assert out.column_names == ["id", "status", "probs", "tags"]
    probs = out.column("probs").to_pylist()
    assert probs[1] is None and out.column("tags")[1].as_py() == []
    model = ckpt_io.load(multi_ckpt)[0]
    for i in (0, 2, 3):
        enc = tok(texts[i], return_tensors="pt")
        with torch.no_grad():
            ref = torch.sigmoid(model(**enc).logits)[0].numpy()
        np.testing.assert_allclose(probs[i], ref, atol=1e-5)


@pytest.mark.parametrize("pooling", ["max", "mean"])
def test_chunk_pooling_equals_pool_of_window_probs(multi_ckpt, tok, pooling):
    text = "tennis match bank " * 20 + "software chip 足球"
    ids, status = encode_batch(tok, [text, "goal"], 16, chunk=True, stride=4)
    scorer = Scorer(multi_ckpt, chunk_pooling=pooling, precision="fp32")
    out = scorer(pa.table({"input_ids": ids, "status": pa.array(status, pa.string())}))
    windows = ids.to_pylist()[0]
    flat = np.concatenate(windows).astype(np.int32)
    offs = np.concatenate([[0], np.cumsum([len(w) for w in windows])])
    per_window = scorer.window_probs(flat, offs)
    expected = per_window.max(0) if pooling == "max" else per_window.mean(0)
    np.testing.assert_allclose(out.column("probs")[0].as_py(), expected, atol=1e-6)
    assert len(windows) > 2 and status[0] == "chunked"
