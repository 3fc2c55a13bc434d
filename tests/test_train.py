"""Fine-tuning on a real local Ray (2 CPU workers, gloo) with a tiny offline BERT."""

import json
import os

import numpy as np
import pytest
from tiny import make_rows, write_parquet

from bertml import checkpoint as ckpt_io
from bertml import faults
from bertml.config import TrainConfig, load
from bertml.shards import InputError
from bertml.train import train

FINAL_FILES = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "bertml.json"}


def train_cfg(tmp_path, encoder, data, *extra):
    return load(TrainConfig, None, [
        f"data.train={data}", f"model.name={encoder}", "model.max_length=32", "optim.epochs=6",
        "optim.lr=3e-3", "optim.batch_size=16", "optim.warmup_ratio=0.05", "scaling.num_workers=2",
        f"run.storage_path={tmp_path}/runs", f"run.output={tmp_path}/model", *extra,
    ])


@pytest.mark.slow
def test_multi_label_end_to_end(ray_local, tiny_encoder, tmp_path):
    data = write_parquet(make_rows(1200, seed=1), str(tmp_path / "data" / "train.parquet"))
    result = train(train_cfg(tmp_path, tiny_encoder, data))
    losses = [h["train_loss"] for h in result.history]
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4, 5, 6]
    assert losses[-1] < losses[0] * 0.5, losses
    assert result.metrics["val_micro_f1_tuned"] > 0.9, result.metrics
    assert set(os.listdir(result.checkpoint)) == FINAL_FILES
    meta = ckpt_io.read_meta(result.checkpoint)
    assert meta.labels == ["money", "sport", "tech", "体育"] and all(0 < t < 1 for t in meta.thresholds)
    assert meta.config["optim"]["lr"] == 3e-3  # resolved config saved with the checkpoint

    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(result.checkpoint)
    assert model.config.problem_type == "multi_label_classification"


@pytest.mark.slow
def test_single_label_end_to_end(ray_local, tiny_encoder, tmp_path):
    data = write_parquet(make_rows(1000, seed=2, single=True), str(tmp_path / "d" / "train.parquet"), single=True)
    result = train(train_cfg(tmp_path, tiny_encoder, data, "data.problem_type=single_label", "optim.epochs=5"))
    assert result.metrics["val_accuracy"] > 0.9, result.metrics
    meta = json.load(open(os.path.join(result.checkpoint, "bertml.json"), encoding="utf-8"))
    assert meta["problem_type"] == "single_label" and meta["thresholds"] is None


@pytest.mark.slow
def test_worker_failure_resumes_from_last_checkpoint_with_an_extended_vocabulary(ray_local, tmp_path, caplog):
    """An English-only encoder on text with Chinese words: model.extend_vocab adds them; a
    worker raising in epoch 2 resumes from the epoch-1 checkpoint, whose tokenizer already
    holds them; the final checkpoint loads and tokenizes them in plain transformers."""
    import logging

    from tiny import build_tiny_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    encoder = build_tiny_model(str(tmp_path / "en"), english_only=True)
    data = write_parquet(make_rows(300, seed=3), str(tmp_path / "data" / "train.parquet"))
    fault = {"point": "train_epoch", "epoch": 2, "rank": 1, "mode": "raise", "marker": str(tmp_path / "fired")}
    with faults.inject(fault), caplog.at_level(logging.INFO, logger="bertml.train"):
        result = train(train_cfg(tmp_path, encoder, data, "optim.epochs=3", "model.extend_vocab=true"))
    assert os.path.exists(tmp_path / "fired")
    epochs = [h["epoch"] for h in result.history]
    assert epochs == [1, 2, 3]  # nothing repeated, nothing lost
    by_epoch = {h["epoch"]: h for h in result.history}
    assert by_epoch[1]["resumed_from_epoch"] == -1
    assert by_epoch[2]["resumed_from_epoch"] == 1 and by_epoch[3]["resumed_from_epoch"] == 1
    assert by_epoch[2]["step"] > by_epoch[1]["step"]  # optimizer step count carried over

    assert any("units added to the vocabulary" in r.getMessage() for r in caplog.records)
    cov = ckpt_io.read_meta(result.checkpoint).metrics["coverage"]
    assert cov["before"]["unk_rate"] > 0.05 and cov["after"]["unk_rate"] < 0.01 and cov["added"] > 0
    tok = AutoTokenizer.from_pretrained(result.checkpoint)
    model = AutoModelForSequenceClassification.from_pretrained(result.checkpoint)
    assert tok.unk_token_id not in tok("足球 比赛 今天", add_special_tokens=False)["input_ids"]
    assert model.get_input_embeddings().weight.shape[0] == len(tok) == model.config.vocab_size
    ckpt_io.validate(result.checkpoint)


def _ddp_loop(config):
    """Test loop: the library's model/optimizer/step on fixed global batches."""
    import ray.train
    import ray.train.torch
    import torch
    from safetensors.torch import save_file

    from bertml.labels import LabelSet
    from bertml.model import build_model, load_tokenizer
    from bertml.tokenization import tokenize_for_training
    from bertml.train_loop import make_scheduler, optimizer_step

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(0)
    labels = LabelSet(tuple(config["labels"]))
    model = build_model(config["encoder"], labels)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    model = ray.train.torch.prepare_model(model)
    tok = load_tokenizer(config["encoder"])
    # SGD, not AdamW: Adam's m/sqrt(v) turns float noise in near-zero gradients into full-size
    # steps, which would hide (or fake) a real difference in how gradients are averaged.
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    sched = make_scheduler(opt, 10, 0.0)
    texts, y = config["texts"], np.array(config["targets"], dtype=np.float32)
    gb = config["global_batch"]
    per = gb // world
    for step in range(config["steps"]):
        lo = step * gb + rank * per
        enc = tokenize_for_training(tok, texts[lo:lo + per], 32)
        mb = {k: torch.from_numpy(v) for k, v in enc.items()}
        mb["targets"] = torch.from_numpy(y[lo:lo + per])
        micro = [mb] if config["accum"] == 1 else [{k: v[:per // 2] for k, v in mb.items()}, {k: v[per // 2:] for k, v in mb.items()}]
        optimizer_step(model, micro, opt, sched, multi_label=True, max_grad_norm=0.0)
    if rank == 0:
        inner = getattr(model, "module", model)
        save_file({k: v.detach().contiguous() for k, v in inner.state_dict().items()}, config["out"])
    ray.train.report({"done": 1})


@pytest.mark.slow
def test_ddp_two_workers_equal_one_worker_with_double_batch(ray_local, tiny_encoder, tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from safetensors.torch import load_file

    from bertml.labels import LabelSet

    rows = make_rows(48, seed=4)
    labels = LabelSet(("money", "sport", "tech", "体育"))
    base = {"encoder": tiny_encoder, "labels": list(labels.names), "texts": [r["text"] for r in rows],
            "targets": labels.encode([r["labels"] for r in rows], None).tolist(), "global_batch": 16, "steps": 3}
    runs = {"two": (2, 1), "one": (1, 1), "accum": (1, 2)}
    for name, (workers, accum) in runs.items():
        cfg = {**base, "accum": accum, "out": str(tmp_path / f"{name}.safetensors")}
        TorchTrainer(_ddp_loop, train_loop_config=cfg,
                     scaling_config=ScalingConfig(num_workers=workers, use_gpu=False, resources_per_worker={"CPU": 0.5}),
                     run_config=RunConfig(name=name, storage_path=str(tmp_path / "runs"))).fit()
    one, two, accum = (load_file(str(tmp_path / f"{n}.safetensors")) for n in ("one", "two", "accum"))
    init = load_file(os.path.join(tiny_encoder, "model.safetensors"))
    moved = [k for k in one if k in init and not np.allclose(one[k].numpy(), init[k].numpy())]
    assert moved, "training did not change the weights"
    for k in one:
        np.testing.assert_allclose(two[k].numpy(), one[k].numpy(), atol=2e-5, err_msg=k)
        np.testing.assert_allclose(accum[k].numpy(), one[k].numpy(), atol=2e-5, err_msg=k)


@pytest.mark.parametrize(
    "rows, extra, message",
    [
        ([{"body": "x", "labels": ["a"]}], [], "no column 'text'"),
        ([{"text": "x", "labels": 3}], [], "column 'labels' is int64, expected list<string> or string"),
        ([{"text": "x", "labels": ["a", "b"]}], ["data.problem_type=single_label"], "row 0: single_label needs exactly one label"),
    ],
)
def test_bad_training_data_fails_before_training(tmp_path, tiny_encoder, rows, extra, message):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = str(tmp_path / "bad.parquet")
    pq.write_table(pa.Table.from_pylist(rows * 20), path)
    with pytest.raises(InputError) as e:
        train(train_cfg(tmp_path, tiny_encoder, path, *extra))
    assert message in str(e.value) and "bad.parquet" in str(e.value)


def test_empty_data_and_label_only_in_validation(tmp_path, tiny_encoder):
    import pyarrow as pa
    import pyarrow.parquet as pq

    empty = str(tmp_path / "empty.parquet")
    pq.write_table(pa.table({"text": pa.array([], pa.string()), "labels": pa.array([], pa.list_(pa.string()))}), empty)
    with pytest.raises(InputError, match="all shards are empty"):
        train(train_cfg(tmp_path, tiny_encoder, empty))
    tr = write_parquet([{"text": "goal", "labels": ["sport"]}] * 5, str(tmp_path / "tr.parquet"))
    va = write_parquet([{"text": "bank", "labels": ["money"]}] * 5, str(tmp_path / "va.parquet"))
    with pytest.raises(InputError, match=r"labels \['money'\] never occur in the training data"):
        train(train_cfg(tmp_path, tiny_encoder, tr, f"data.validation={va}"))
