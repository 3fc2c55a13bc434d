"""Fine-tuning on Ray Train, the driver: check data -> label set -> TorchTrainer.fit() ->
best checkpoint -> run.output. Every worker runs `train_loop.train_loop_per_worker`.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass

from bertml import checkpoint as ckpt_io
from bertml import faults
from bertml.config import TrainConfig, to_dict
from bertml.paths import resolved
from bertml.secrets import redact
from bertml.train_loop import train_loop_per_worker

log = logging.getLogger("bertml.train")


@dataclass
class TrainResult:
    checkpoint: str  # the final self-describing checkpoint folder
    metrics: dict  # the best epoch's reported metrics
    history: list  # one dict per epoch, as reported


def train(cfg: TrainConfig) -> TrainResult:
    """Fine-tune `cfg.model.name` on `cfg.data` with Ray Train; write `cfg.run.output`."""
    from bertml import cluster, train_data
    from bertml.runtime import init_ray

    cluster.resolve_outputs(cfg, ["run.output", "run.storage_path"])
    _check_model(cfg)
    check_output(cfg)
    summary, train_infos, val_infos = train_data.summarize(cfg.data, cfg.optim.seed)
    log.info("data: %d train rows, %d validation rows, %d labels %s", summary.n_train, summary.n_val,
             len(summary.labels), list(summary.labels.names)[:20])
    added, cov = _vocabulary(cfg, train_infos)
    init_ray()
    cluster.check_visible(cluster.train_paths(cfg, [i.shard for i in [*train_infos, *(val_infos or [])]]))
    config = to_dict(cfg)  # the resolved config: every checkpoint saves this one
    loop_config = {"cfg": config, "labels": list(summary.labels.names), "n_train": summary.n_train,
                   "pos_weight": summary.pos_weight(), "added_tokens": added, "coverage": cov,
                   "_fault": faults.armed()}
    name = f"{cfg.run.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    result = _trainer(cfg, name, loop_config, summary, train_infos, val_infos).fit()
    return _result(result, cfg, config, name)


def _vocabulary(cfg: TrainConfig, infos) -> tuple[list[str], dict | None]:
    """Can the encoder read the training text? (see `vocab.plan`; a resumed run keeps the
    checkpoint's tokenizer). Returns (units to add, coverage record)."""
    from bertml import vocab

    if cfg.run.resume_from:  # the checkpoint's tokenizer is the one training continues with
        return [], None
    return vocab.plan(cfg.model, infos, cfg.data.text_column, f"data.train's column {cfg.data.text_column!r}", log)


def _trainer(cfg: TrainConfig, name: str, loop_config: dict, summary, train_infos, val_infos):
    """The TorchTrainer: workers laid out so Ray Data keeps a free CPU, datasets split and ordered."""
    import ray.data
    from ray.train import CheckpointConfig

    from bertml import train_data
    from bertml.runtime import resolve_use_gpu

    use_gpu = resolve_use_gpu(cfg.scaling.use_gpu)
    ctx = ray.data.DataContext.get_current()
    bars, ctx.enable_progress_bars = ctx.enable_progress_bars, False  # per-epoch bars are noise here
    try:
        train_ds, val_ds = train_data.datasets(cfg.data, summary, cfg.optim.seed, train_infos, val_infos)
    finally:
        ctx.enable_progress_bars = bars
    checkpoints = CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints, checkpoint_score_attribute=cfg.run.metric,
                                   checkpoint_score_order=cfg.run.metric_mode)
    return torch_trainer(cfg, train_loop_per_worker, name, loop_config, {"train": train_ds, "validation": val_ds},
                         use_gpu, checkpoints)


def torch_trainer(cfg, loop, name: str, loop_config: dict, datasets: dict, use_gpu: bool, checkpoints):
    """A TorchTrainer for `loop` (train's or pretrain's): workers laid out so Ray Data keeps a
    free CPU, `datasets["train"]` split across them, every dataset read in a fixed order."""
    from ray.train import DataConfig, FailureConfig
    from ray.train import RunConfig as RayRunConfig
    from ray.train import ScalingConfig as RayScalingConfig
    from ray.train.torch import TorchTrainer

    cpus, threads = _worker_cpus(cfg, use_gpu)
    storage, storage_fs = _storage(cfg.run.storage_path)
    ingest = DataConfig.default_ingest_options()
    ingest.preserve_order = True  # same data order on every run (deterministic on CPU)
    return TorchTrainer(
        loop,
        train_loop_config={**loop_config, "threads_per_worker": threads},
        scaling_config=RayScalingConfig(num_workers=cfg.scaling.num_workers, use_gpu=use_gpu,
                                        resources_per_worker={"CPU": cpus},
                                        placement_strategy=cfg.scaling.placement_strategy),
        run_config=RayRunConfig(name=name, storage_path=storage, storage_filesystem=storage_fs,
                                checkpoint_config=checkpoints,
                                failure_config=FailureConfig(max_failures=cfg.run.max_failures)),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=["train"], execution_options={k: ingest for k in datasets}),
    )


def _result(result, cfg: TrainConfig, config: dict, name: str) -> TrainResult:
    """The best epoch's checkpoint written to run.output, with its metrics and the whole history."""
    if not result.best_checkpoints:
        raise RuntimeError(f"training finished without a checkpoint (run {name} under {redact(cfg.run.storage_path)})")
    best, best_metrics = max(result.best_checkpoints, key=lambda cm: _rank_key(cm[1], cfg))
    with best.as_directory() as d:
        history = ckpt_io.read_meta(d).metrics.get("history", [])
    out = _finalize(best, cfg, config)  # the local folder, or the object-store URI, it was written to
    if result.checkpoint is not None:  # the latest checkpoint holds the whole history
        with result.checkpoint.as_directory() as d:
            history = ckpt_io.read_train_state(d)["history"]
    log.info("final checkpoint: %s", redact(out))
    return TrainResult(checkpoint=out, metrics=dict(best_metrics), history=history)


def _storage(path: str):
    """(storage_path, filesystem) for Ray Train: a URI's filesystem is built here, so its
    ?endpoint_override=... options work and no credentials reach Ray's own records."""
    from bertml.shards import split_uri

    if not ckpt_io.is_uri(path):
        return os.path.abspath(os.path.expanduser(path)), None
    fs, root, _ = split_uri(path, "run.storage_path", glob=False)
    return root, fs


def _worker_cpus(cfg: TrainConfig, use_gpu: bool = False) -> tuple[float, int]:
    """(CPUs reserved per worker, torch threads per worker).

    Workers that reserve every CPU starve Ray Data's read tasks and the run hangs (see
    RAY-NOTES). The workers are laid out over the alive nodes as the placement strategy
    does (SPREAD: round-robin; PACK: fill the biggest node first), and some node must keep
    a whole CPU free: a null `cpus_per_worker` is lowered to leave one (at most 1 each), an
    explicit one that leaves none is refused before any work starts.
    """
    from bertml.cluster import alive_nodes
    from bertml.config import ConfigError

    nodes = sorted((float(n.get("Resources", {}).get("CPU", 0)) for n in alive_nodes()), reverse=True)
    nodes = [c for c in nodes if c > 0] or [1.0]
    n = cfg.scaling.num_workers
    per_node = _layout(n, len(nodes), cfg.scaling.placement_strategy)  # workers on each node, biggest first
    if cfg.scaling.placement_strategy == "STRICT_SPREAD" and n > len(nodes):
        raise ConfigError(f"scaling.placement_strategy: STRICT_SPREAD needs one node per worker; "
                          f"{n} workers, {len(nodes)} nodes with CPUs")
    hosts = [(c, w) for c, w in zip(nodes, per_node) if w]
    threads = max(1, int(min(c // w for c, w in hosts)))
    # CPUs per worker that leave a whole CPU free on at least one node.
    room = max([(c - 1) / w for c, w in hosts] + ([nodes[len(hosts)]] if len(hosts) < len(nodes) else []))
    if cfg.scaling.cpus_per_worker is not None:
        c = cfg.scaling.cpus_per_worker
        if len(hosts) == len(nodes) and not use_gpu and c > max(room, 0):
            raise ConfigError(
                f"scaling.cpus_per_worker={c:g}: {n} worker(s) laid out {cfg.scaling.placement_strategy} over "
                f"nodes with {', '.join(f'{x:g}' for x in nodes)} CPUs leave no node a free CPU, and Ray Data's "
                f"read tasks would wait forever; use cpus_per_worker<={max(room, 0.1):.2g} (or null), or add a node")
        return c, max(1, int(c))
    cpus = min(1.0, max(0.1, room if len(hosts) == len(nodes) else 1.0))
    return round(cpus, 2), threads


def _layout(n: int, k: int, strategy: str) -> list[int]:
    """Workers per node (nodes sorted biggest first) as Ray's placement strategy lays them out."""
    if strategy in ("SPREAD", "STRICT_SPREAD"):
        return [n // k + (i < n % k) for i in range(k)]
    return [n] + [0] * (k - 1)  # PACK: one node while it fits (the common case of a small run)


def _rank_key(m: dict, cfg: TrainConfig) -> float:
    v = float(m.get(cfg.run.metric, float("nan")))
    if math.isnan(v):
        return -math.inf
    return v if cfg.run.metric_mode == "max" else -v


def _check_model(cfg: TrainConfig) -> None:
    """Fail before Ray starts if the encoder can't be found or max_length is too long."""
    from transformers import AutoConfig

    where = f"model.name {cfg.model.name!r}"
    try:
        hf = AutoConfig.from_pretrained(cfg.model.name, trust_remote_code=cfg.model.trust_remote_code).to_dict()
    except (OSError, ValueError) as e:
        raise ckpt_io.CheckpointError(f"{where}: cannot load its config ({str(e).splitlines()[0]})") from None
    ckpt_io.check_position_limit(hf, cfg.model.max_length, where, "model.max_length")


def check_output(cfg: TrainConfig) -> None:
    """Refuse, before any work, a `run.output` bertml may not replace (see
    `checkpoint.check_destination`): the working folder or an ancestor, a folder with files
    that are not one checkpoint's, or one overlapping the data, the encoder or run storage."""
    if ckpt_io.is_uri(cfg.run.output):
        ckpt_io.check_upload_prefix(cfg.run.output)  # a prefix the final upload would refuse: refused now
        return
    data = [cfg.data.train] if isinstance(cfg.data.train, str) else list(cfg.data.train)
    val = [] if cfg.data.validation is None else [cfg.data.validation] if isinstance(cfg.data.validation, str) \
        else list(cfg.data.validation)
    protected = [("the training data", p) for p in data] + [("the validation data", p) for p in val] + [
        ("the encoder", cfg.model.name), ("run.storage_path", cfg.run.storage_path),
        ("run.resume_from", cfg.run.resume_from or "")]
    ckpt_io.check_destination(cfg.run.output, "run.output", protected)



def _finalize(best, cfg: TrainConfig, config: dict) -> str:
    """Write the best checkpoint, minus its train state, to run.output with `config` (the
    resolved TrainConfig); returns where it went (see `checkpoint.export`)."""
    remote = ckpt_io.is_uri(cfg.run.output)
    if not remote:
        check_output(cfg)  # again: the folder may have changed during training
    dest = resolved(cfg.run.output) if not remote else cfg.run.output  # the path check_output checked
    with best.as_directory() as d:
        ckpt_io.export(d, dest, config)
    return dest



def format_summary(m: dict, multi: bool) -> str:
    """A short table: validation metrics at 0.5 vs tuned thresholds."""
    rows = [("micro_f1", m.get("val_micro_f1"), m.get("val_micro_f1_tuned")),
            ("macro_f1", m.get("val_macro_f1"), m.get("val_macro_f1_tuned"))]
    if multi:
        rows.append(("samples_f1", m.get("val_samples_f1"), m.get("val_samples_f1_tuned")))
    head = f"{'validation':<12} {'@0.5' if multi else 'argmax':>8} {'tuned' if multi else '':>8}"
    lines = [head] + [f"{k:<12} {a:>8.4f} {b:>8.4f}" if multi else f"{k:<12} {a:>8.4f}" for k, a, b in rows]
    lines.append(f"{'val_loss':<12} {m.get('val_loss', float('nan')):>8.4f}   (epoch {m.get('epoch')})")
    return "\n".join(lines)
