"""Typed configuration: one dataclass per command, loaded from YAML, overridden with dotted
`key=value`, checked by pydantic, saved beside every run, checkpoint and scored output.

    commands.py   TrainConfig (+ its sections), PretrainConfig (+ its own), ScoreConfig,
                  EvalConfig, ThresholdsConfig, DemoConfig; ScoringOptions: the scoring keys score/evaluate/thresholds share
    loading.py    load (YAML + overrides), from_dict, save, describe (`--help`), to_dict

Why pydantic: it is already installed with ray[train] (which depends on it), validates the
plain dataclasses in place, so they stay keyword-constructible (`ScoreConfig(checkpoint=...)`)
with their `__post_init__` checks, converts the command line's strings to int, float, bool
and Literal the way a user expects, and reports each error with its location, which becomes
our one-line `key: expected <type>, got <value>`. OmegaConf (torchtune's choice) is not a
dependency here; HfArgumentParser parses `--flags`, not nested YAML with dotted overrides.
"""

from bertml.config.commands import (
    CPU_BATCH,
    GPU_BATCH,
    MINILM,
    OUTPUT_COLUMNS,
    DataConfig,
    DemoConfig,
    EvalConfig,
    LabelledScoring,
    LoopConfig,
    ModelConfig,
    OptimConfig,
    PretrainConfig,
    PretrainDataConfig,
    PretrainModelConfig,
    PretrainRunConfig,
    RunConfig,
    ScalingConfig,
    ScoreConfig,
    ScoringOptions,
    ThresholdsConfig,
    TrainConfig,
)
from bertml.config.loading import (
    ConfigError,
    describe,
    from_dict,
    load,
    opt,
    ordered_fields,
    parse_overrides,
    save,
    section,
    to_dict,
)

__all__ = [
    "CPU_BATCH", "GPU_BATCH", "MINILM", "OUTPUT_COLUMNS", "ConfigError", "DataConfig", "DemoConfig", "EvalConfig",
    "LabelledScoring", "LoopConfig", "ModelConfig", "OptimConfig", "PretrainConfig", "PretrainDataConfig",
    "PretrainModelConfig", "PretrainRunConfig", "RunConfig", "ScalingConfig", "ScoreConfig", "ScoringOptions",
    "ThresholdsConfig", "TrainConfig", "describe", "ordered_fields", "from_dict", "load", "opt", "parse_overrides", "save",
    "section", "to_dict",
]
