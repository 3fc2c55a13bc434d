"""GPU path: bf16 autocast scoring agrees with fp32 CPU scoring. Skipped without CUDA."""

import numpy as np
import pyarrow as pa
import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_bf16_gpu_scores_match_cpu(multi_ckpt):
    from bertml import checkpoint as ckpt_io
    from bertml.scorer import Scorer
    from bertml.tokenization import encode_batch

    texts = ["football match", "bank stocks", "足球 比赛", "software chip"] * 16
    tok = ckpt_io.load(multi_ckpt)[1]
    ids, status = encode_batch(tok, texts, 64)
    batch = pa.table({"input_ids": ids, "status": pa.array(status, pa.string())})
    gpu = Scorer(multi_ckpt, precision="bf16")
    assert gpu.device.type == "cuda"
    got = np.array(gpu(batch).column("probs").to_pylist())
    gpu.model.to("cpu")
    gpu.device, gpu.autocast = torch.device("cpu"), torch.autocast("cpu", enabled=False)
    ref = np.array(gpu(batch).column("probs").to_pylist())
    np.testing.assert_allclose(got, ref, atol=2e-2)
