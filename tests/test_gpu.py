"""GPU path: bf16 scoring agrees with fp32 CPU scoring, alone and through Ray Data with a
GPU actor. Skipped without CUDA."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

TEXTS = ["football match", "bank stocks", "足球 比赛", "software chip " * 30, "a"] * 13


def cpu_fp32_probs(ckpt, texts, max_length=64):
    from bertml import checkpoint as ckpt_io

    model, tok, _ = ckpt_io.load(ckpt)
    enc = tok(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    with torch.no_grad():
        return torch.sigmoid(model(**enc).logits).numpy()


def test_bf16_gpu_scores_match_cpu(multi_ckpt):
    from bertml import checkpoint as ckpt_io
    from bertml.model import ClsOnlyForward
    from bertml.scoring.infer import Scorer
    from bertml.tokenization import encode_batch

    ids, status = encode_batch(ckpt_io.load(multi_ckpt)[1], TEXTS, 64)
    batch = pa.table({"input_ids": ids, "status": pa.array(status, pa.string())})
    gpu = Scorer(multi_ckpt, precision="bf16", max_tokens=256)  # several passes, queued back to back
    assert gpu.device.type == "cuda" and next(gpu.model.parameters()).dtype == torch.bfloat16
    assert isinstance(gpu.forward, ClsOnlyForward)
    got = np.array(gpu(batch).column("probs").to_pylist())
    np.testing.assert_allclose(got, cpu_fp32_probs(multi_ckpt, TEXTS), atol=2e-2)


def test_score_through_ray_on_a_gpu_actor(ray_local, multi_ckpt, tmp_path):
    from bertml.config import ScoreConfig
    from bertml.scoring import score

    inp = tmp_path / "in"
    inp.mkdir()
    for i in range(2):
        pq.write_table(pa.table({"id": [f"{i}-{j}" for j in range(len(TEXTS))], "text": TEXTS}),
                       inp / f"part-{i}.parquet", row_group_size=20)
    summary = score(ScoreConfig(checkpoint=multi_ckpt, input=str(inp), output=str(tmp_path / "out"), batch_size=32))
    out = pq.read_table(tmp_path / "out")
    assert summary.rows == out.num_rows == 2 * len(TEXTS)
    assert out.column("id").to_pylist() == [f"{i}-{j}" for i in range(2) for j in range(len(TEXTS))]
    got = np.array(out.column("probs").to_pylist())
    np.testing.assert_allclose(got, np.tile(cpu_fp32_probs(multi_ckpt, TEXTS), (2, 1)), atol=2e-2)
