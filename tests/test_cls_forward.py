"""The scoring forward that runs the last layer for [CLS] only is the same function as the
full forward, for every family it claims, and steps aside for the others."""

import logging

import pytest
import torch

from bertml import model as bm


def tiny(model_type: str):
    """A random-init 3-layer sequence classifier of `model_type` (hidden 32), eval mode."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    kw = dict(vocab_size=120, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48,
              max_position_embeddings=64, num_labels=5, hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3)
    if model_type == "distilbert":
        kw = dict(vocab_size=120, dim=32, n_layers=3, n_heads=4, hidden_dim=48, max_position_embeddings=64, num_labels=5)
    if model_type == "electra":
        kw["embedding_size"] = 16
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(AutoConfig.for_model(model_type, **kw)).eval()


def batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 120, (6, 17), generator=g)
    mask = torch.ones_like(ids)
    for i, n in enumerate([17, 12, 5, 2, 9, 16]):
        mask[i, n:] = 0
        ids[i, n:] = 0
    return ids, mask


@pytest.mark.parametrize("model_type", ["bert", "roberta", "xlm-roberta", "electra"])
def test_cls_only_forward_equals_full_forward(model_type):
    model = tiny(model_type)
    fwd = bm.fast_forward(model)
    assert isinstance(fwd, bm.ClsOnlyForward)
    ids, mask = batch()
    with torch.inference_mode():
        want = model(input_ids=ids, attention_mask=mask).logits
        got = fwd(ids, mask)
    assert got.shape == want.shape == (6, 5)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # The modules are the model's own: a change to the model's weights shows in both.
    with torch.no_grad():
        [m for m in model.classifier.modules() if isinstance(m, torch.nn.Linear)][-1].bias.add_(1.0)
        assert torch.allclose(fwd(ids, mask), model(input_ids=ids, attention_mask=mask).logits, atol=1e-5)


def test_unsupported_family_uses_the_full_forward():
    model = tiny("distilbert")
    fwd = bm.fast_forward(model)
    assert not isinstance(fwd, bm.ClsOnlyForward)
    ids, mask = batch()
    with torch.inference_mode():
        torch.testing.assert_close(fwd(ids, mask), model(input_ids=ids, attention_mask=mask).logits)


def test_a_forward_that_disagrees_is_refused(monkeypatch, caplog):
    # Pretend BERT's head were RoBERTa's: the load-time check must catch the difference.
    monkeypatch.setitem(bm._CLS_HEADS, "bert", "head")
    model = tiny("bert")
    with caplog.at_level(logging.WARNING, logger="bertml.model"):
        fwd = bm.fast_forward(model)
    assert not isinstance(fwd, bm.ClsOnlyForward)
    assert "using the full forward" in caplog.text


def test_scorer_cls_only_matches_full(multi_ckpt):
    import numpy as np
    import pyarrow as pa

    from bertml import checkpoint as ckpt_io
    from bertml.scoring.infer import Scorer
    from bertml.tokenization import encode_batch

    tok = ckpt_io.load(multi_ckpt)[1]
    ids, status = encode_batch(tok, ["football match", "bank 足球 比赛 today", None, "chip " * 40], 64)
    table = pa.table({"input_ids": ids, "status": pa.array(status, pa.string())})
    fast, full = Scorer(multi_ckpt, precision="fp32"), Scorer(multi_ckpt, precision="fp32", cls_only=False)
    assert isinstance(fast.forward, bm.ClsOnlyForward)
    a = fast(table).column("probs").to_pylist()
    b = full(table).column("probs").to_pylist()
    assert a[2] is None and b[2] is None
    np.testing.assert_allclose(np.array([a[i] for i in (0, 1, 3)]), np.array([b[i] for i in (0, 1, 3)]), atol=1e-6)
