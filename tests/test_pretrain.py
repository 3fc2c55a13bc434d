"""`bertml pretrain` on a real local Ray (2 CPU workers, gloo) with a tiny offline BERT: MLM
loss falls, the encoder folder loads in plain transformers and fine-tunes with bertml train."""

import os
import random
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tiny import FILLER, KEYWORDS, build_tiny_model, make_rows, write_parquet

from bertml import checkpoint as ckpt_io
from bertml import faults
from bertml.cli import main
from bertml.config import PretrainConfig, load

ENCODER_FILES = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "bertml-pretrain.json"}


def _texts(n: int, seed: int = 0) -> list[str]:
    """Sentences from a small vocabulary, Chinese words among them (learnable for an MLM)."""
    rng = random.Random(seed)
    words = FILLER + [w for ws in KEYWORDS.values() for w in ws]
    return [" ".join(rng.choice(words) for _ in range(12)) for _ in range(n)]


@pytest.fixture(scope="module")
def pretrained(ray_local, tmp_path_factory):
    """An English-only tiny encoder pretrained 2 epochs on 2 workers with model.extend_vocab;
    a worker raises in epoch 2, and the new worker group resumes from epoch 1's checkpoint."""
    from bertml.pretrain import pretrain

    tmp = tmp_path_factory.mktemp("pretrain")
    encoder = build_tiny_model(str(tmp / "en"), english_only=True)
    os.makedirs(tmp / "text")
    pq.write_table(pa.table({"body": _texts(384)}), str(tmp / "text" / "part-0.parquet"))
    cfg = load(PretrainConfig, None, [
        f"data.text={tmp}/text", "data.text_column=body", f"model.name={encoder}", "model.max_length=32",
        "model.extend_vocab=true", "optim.epochs=2", "optim.lr=2e-3", "optim.batch_size=16",
        "optim.warmup_ratio=0.05", "scaling.num_workers=2", f"run.storage_path={tmp}/runs",
        f"run.output={tmp}/encoder-out",
    ])
    fault = {"point": "train_epoch", "epoch": 2, "rank": 1, "mode": "raise", "marker": str(tmp / "fired")}
    with faults.inject(fault):
        result = pretrain(cfg)
    assert os.path.exists(tmp / "fired")
    return result, tmp


def test_pretraining_lowers_the_mlm_loss_and_writes_an_encoder_plain_transformers_loads(pretrained):
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer

    result, tmp = pretrained
    assert [h["epoch"] for h in result.history] == [1, 2]  # nothing repeated, nothing lost
    first, second = result.history
    assert first["resumed_from_epoch"] == -1 and second["resumed_from_epoch"] == 1
    assert second["step"] > first["step"]  # the optimizer step count carried over
    assert second["mlm_loss"] < first["mlm_loss"]
    assert second["perplexity"] < first["perplexity"]
    assert ENCODER_FILES <= set(os.listdir(result.output))
    assert not {ckpt_io.STATE_JSON, ckpt_io.STATE_TENSORS} & set(os.listdir(result.output))
    tok = AutoTokenizer.from_pretrained(result.output)
    assert tok.unk_token_id not in tok("足球 比赛 今天", add_special_tokens=False)["input_ids"]
    mlm = AutoModelForMaskedLM.from_pretrained(result.output, use_safetensors=True)
    assert mlm.get_input_embeddings().weight.shape[0] == len(tok) == mlm.config.vocab_size
    clf = AutoModelForSequenceClassification.from_pretrained(result.output, num_labels=3, use_safetensors=True)
    assert clf.get_input_embeddings().weight.shape[0] == len(tok)


def test_bertml_train_fine_tunes_the_pretrained_encoder(pretrained):
    from bertml.config import TrainConfig
    from bertml.train import train

    result, tmp = pretrained
    data = write_parquet(make_rows(120, seed=5), str(tmp / "labelled" / "train.parquet"))
    cfg = load(TrainConfig, None, [
        f"data.train={data}", f"model.name={result.output}", "model.max_length=32", "optim.epochs=1",
        "optim.batch_size=16", "scaling.num_workers=1", f"run.storage_path={tmp}/train-runs",
        f"run.output={tmp}/tagger",
    ])
    trained = train(cfg)
    ckpt_io.validate(trained.checkpoint)


def test_pretrain_output_refuses_a_folder_that_is_not_its_own(tmp_path, tiny_encoder):
    from bertml.pretrain import check_output

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    cfg = load(PretrainConfig, None, [f"data.text={tmp_path}/t.parquet", f"model.name={tiny_encoder}",
                                      f"run.output={tmp_path}/mine"])
    with pytest.raises(ckpt_io.CheckpointError, match="notes.txt"):
        check_output(cfg)
    cfg.run.output = os.getcwd()
    with pytest.raises(ckpt_io.CheckpointError, match="working folder"):
        check_output(cfg)
    cfg.run.output = tiny_encoder
    with pytest.raises(ckpt_io.CheckpointError, match="overlaps the encoder"):
        check_output(cfg)


def test_pretrain_config_errors_are_one_line_and_help_lists_every_key(capsys):
    assert main(["pretrain", "data.text=x.parquet", "model.name=m", "model.mlm_probability=2"]) == 2
    # Lines Ray's log monitor streams from earlier tests' workers ("(PlacementGroupCleaner pid=..)") are not ours.
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and not re.match(r"(\x1b\[\d+m)?\(.* pid=\d+", ln)]
    assert len(err) == 1 and err[0].startswith("bertml pretrain: config error: model.mlm_probability"), err
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    out = capsys.readouterr().out
    for key in ("data.text", "data.text_column", "data.max_rows", "model.name", "model.max_length",
                "model.mlm_probability", "model.extend_vocab", "model.trust_remote_code", "optim.lr",
                "optim.epochs", "scaling.num_workers", "run.output", "run.storage_path", "run.max_failures"):
        assert key in out, key
    assert "optim.pos_weight" not in out

