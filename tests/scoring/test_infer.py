"""The Scorer on plain Arrow tables (no Ray): packing, padding, pooling, output schema."""

import numpy as np
import pyarrow as pa
import pytest

from bertml import checkpoint as ckpt_io
from bertml.scoring.infer import Scorer, pack, pad_windows
from bertml.scoring.schema import result_schema
from bertml.tokenization import encode_batch


@pytest.fixture(scope="module")
def tok(multi_ckpt):
    return ckpt_io.load(multi_ckpt)[1]


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


@pytest.mark.parametrize("pooling", ["max", "mean"])
def test_single_label_pooled_probs_stay_a_distribution(single_ckpt, tok, pooling):
    """Single-label: pooled probabilities sum to 1 (max pooling renormalises), and `label`
    is the class with the highest pooled probability."""
    text = "tennis match bank " * 20 + "software chip 足球"
    ids, status = encode_batch(tok, [text], 16, chunk=True, stride=4)
    scorer = Scorer(single_ckpt, chunk_pooling=pooling, precision="fp32")
    out = scorer(pa.table({"input_ids": ids, "status": pa.array(status, pa.string())}))
    windows = ids.to_pylist()[0]
    per_window = scorer.window_probs(np.concatenate(windows).astype(np.int32),
                                     np.concatenate([[0], np.cumsum([len(w) for w in windows])]))
    pooled = per_window.max(0) if pooling == "max" else per_window.mean(0)
    probs = np.asarray(out.column("probs")[0].as_py())
    np.testing.assert_allclose(probs, pooled / pooled.sum(), atol=1e-6)
    assert abs(probs.sum() - 1) < 1e-5 and len(windows) > 2
    assert out.column("label")[0].as_py() == scorer.names[int(probs.argmax())]
    assert out.column("score")[0].as_py() == pytest.approx(probs.max())


@pytest.mark.parametrize("multi,top_k", [(True, 0), (True, 2), (False, 0), (False, 3)])
def test_scorer_output_has_the_one_result_schema(multi_ckpt, single_ckpt, multi, top_k):
    ckpt = multi_ckpt if multi else single_ckpt
    tok = ckpt_io.load(ckpt)[1]
    ids, status = encode_batch(tok, ["goal match", None, "tennis"], 16)
    batch = pa.table({"input_ids": ids, "status": pa.array(status, pa.string())})
    got = Scorer(ckpt, top_k=top_k)(batch)
    want = result_schema(multi, top_k)
    assert got.select(want.names).schema == want
    assert set(got.column_names) == set(want.names)
