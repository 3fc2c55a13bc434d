"""Typed config: YAML + dotted overrides, one clear line per mistake."""

import glob
import os

import pytest

from bertml.config import ConfigError, ScoreConfig, TrainConfig, describe, load, save

ROOT = os.path.dirname(os.path.dirname(__file__))


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data:\n  train: a.parquet\nmodel:\n  name: m\noptim:\n  lr: 1.0e-4\n")
    cfg = load(TrainConfig, p, ["optim.lr=2e-5", "optim.epochs=5", "scaling.use_gpu=false", "data.label_delimiter=|"])
    assert cfg.optim.lr == 2e-5 and cfg.optim.epochs == 5 and cfg.scaling.use_gpu is False
    assert cfg.data.label_delimiter == "|" and cfg.model.name == "m"


def test_saved_config_round_trips(tmp_path):
    cfg = load(TrainConfig, None, ["data.train=x", "model.name=m", "optim.lr=3e-5"])
    save(cfg, tmp_path / "c.yaml")
    assert load(TrainConfig, tmp_path / "c.yaml") == cfg


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["optim.lr=abc"], "optim.lr: expected float, got 'abc'"),
        (["optim.epochs=2.5"], "optim.epochs: expected int, got '2.5'"),
        (["optim.nope=1"], "optim.nope: unknown key"),
        (["bogus=1"], "bogus: unknown key"),
        (["optim.lr=-1"], "optim.lr: expected a positive number, got -1.0"),
        (["data.problem_type=multi"], "data.problem_type: expected 'multi_label' | 'single_label', got 'multi'"),
        (["model.max_length=1024"], "model.max_length: expected an integer in [1, 512], got 1024"),
        (["optim.lr"], "optim.lr: overrides are key=value"),
    ],
)
def test_errors_are_one_clear_line(overrides, message):
    base = ["data.train=x", "model.name=m"]
    with pytest.raises(ConfigError) as e:
        load(TrainConfig, None, base + overrides)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_missing_required_value():
    with pytest.raises(ConfigError, match="data.train: expected a Parquet path"):
        load(TrainConfig, None, ["model.name=m"])
    with pytest.raises(ConfigError, match="checkpoint: expected a checkpoint folder"):
        load(ScoreConfig, None, ["input=x", "output=y"])


def test_list_and_null_overrides():
    cfg = load(ScoreConfig, None, ["checkpoint=c", "input=i", "output=o", "passthrough=[a, b]", "id_column=null"])
    assert cfg.passthrough == ["a", "b"] and cfg.id_column is None
    with pytest.raises(ConfigError, match="passthrough"):
        load(ScoreConfig, None, ["checkpoint=c", "input=i", "output=o", "passthrough=probs"])


def test_describe_lists_every_key_with_help():
    rows = describe(TrainConfig)
    keys = [k for k, _, _ in rows]
    assert "optim.lr" in keys and "data.train" in keys and "run.max_failures" in keys
    assert all(h.strip() for _, _, h in rows)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "jobs", "configs", "*.yaml"))))
def test_shipped_configs_are_valid_and_say_how_to_run(path):
    from bertml.cli import config_types

    first = open(path, encoding="utf-8").readline()
    kind = os.path.basename(path).split(".")[0]
    assert first.startswith("# python jobs/") and f"--config jobs/configs/{kind}.yaml" in first
    load(config_types()[kind], path)


def test_scoring_options_are_defined_once():
    from bertml.config import EvalConfig, ScoringOptions, ThresholdsConfig

    shared = {k: (d, h) for k, d, h in describe(ScoringOptions)}
    for cls in (ScoreConfig, EvalConfig, ThresholdsConfig):
        rows = {k: (d, h) for k, d, h in describe(cls)}
        assert {k: rows[k] for k in shared} == shared
    cfg = load(EvalConfig, None, ["checkpoint=c", "data=d", "report=r", "batch_size=7", "use_gpu=false"])
    assert cfg.score_config().batch_size == 7 and cfg.score_config().use_gpu is False
    with pytest.raises(ConfigError, match="^max_tokens: expected null or an integer >= 1, got 0$"):
        load(ThresholdsConfig, None, ["checkpoint=c", "data=d", "output=o", "max_tokens=0"])
