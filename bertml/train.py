"""Fine-tuning on Ray Train: one loop, run by every worker (DDP), read top to bottom.

    driver:  check data -> label set -> TorchTrainer.fit() -> best checkpoint -> output
    worker:  setup -> [epoch: train steps -> validation -> thresholds -> report] * epochs

Rank 0 alone writes checkpoints; every rank calls `ray.train.report` once per epoch.
A checkpoint holds the full self-describing model folder plus the optimizer, schedule and
epoch (`train_state.*`, safetensors + JSON), so a replaced worker group resumes where the
last epoch ended instead of starting over.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch

from bertml import checkpoint as ckpt_io
from bertml import faults, metrics
from bertml.config import TrainConfig, from_dict, to_dict
from bertml.labels import LabelSet
from bertml.model import build_model, device_autocast, load_tokenizer, logits_to_probs, loss_fn
from bertml.output import resolved
from bertml.secrets import redact
from bertml.tokenization import tokenize_for_training
from bertml.train_data import TARGETS, TEXT

log = logging.getLogger("bertml.train")

STATE_TENSORS, STATE_JSON = "train_state.safetensors", "train_state.json"


# ----------------------------------------------------------------------------- pieces


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW; biases and LayerNorm weights get no weight decay."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "LayerNorm" in name or "layernorm" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)


def make_scheduler(optimizer, total_steps: int, warmup_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup to the peak LR, then linear decay to 0."""
    warmup = int(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def optimizer_step(model, micro_batches, optimizer, scheduler, *, multi_label: bool, pos_weight=None,
                   autocast=None, scaler=None, max_grad_norm: float = 0.0) -> float:
    """One optimizer step over `micro_batches` (gradient accumulation; DDP syncs on the last)."""
    autocast = autocast or contextlib.nullcontext()
    total = 0.0
    n = len(micro_batches)
    for i, mb in enumerate(micro_batches):
        sync = i == n - 1 or not hasattr(model, "no_sync")
        with contextlib.nullcontext() if sync else model.no_sync():
            with autocast:
                logits = model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"]).logits  # [B, L]
            loss = loss_fn(logits, mb[TARGETS], multi_label, pos_weight) / n
            (scaler.scale(loss) if scaler else loss).backward()
        total += float(loss.detach())
    if scaler:
        scaler.unscale_(optimizer)
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return total


def gather_rows(x: np.ndarray, device: torch.device) -> np.ndarray:
    """Concatenate [n_rank, ...] arrays from every rank (rank order)."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return x
    if device.type != "cuda" and dist.get_backend() == "nccl":
        device = torch.device("cuda")
    t = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32, device=device)
    n = torch.tensor([t.shape[0]], device=device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    most = int(max(s.item() for s in sizes))
    padded = torch.zeros((most, *t.shape[1:]), dtype=t.dtype, device=device)
    padded[: t.shape[0]] = t
    parts = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)]).cpu().numpy()


def save_train_state(path: str, optimizer, scheduler, scaler, epoch: int, step: int, history: list) -> None:
    """Optimizer/schedule/progress as safetensors + JSON (no pickle)."""
    from safetensors.torch import save_file

    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    save_file(tensors, os.path.join(path, STATE_TENSORS))
    state = {"epoch": epoch, "step": step, "history": history, "param_groups": sd["param_groups"],
             "scalars": scalars, "scheduler": scheduler.state_dict(),
             "scaler": scaler.state_dict() if scaler else None}
    with open(os.path.join(path, STATE_JSON), "w", encoding="utf-8") as f:
        json.dump(state, f, default=float)


def load_train_state(path: str, optimizer, scheduler, scaler) -> dict:
    from safetensors.torch import load_file

    with open(os.path.join(path, STATE_JSON), encoding="utf-8") as f:
        state = json.load(f)
    tensors = load_file(os.path.join(path, STATE_TENSORS))
    per_param: dict[int, dict] = {}
    for key, v in tensors.items():
        pid, name = key.split(".", 1)
        per_param.setdefault(int(pid), {})[name] = v
    for key, v in state["scalars"].items():
        pid, name = key.split(".", 1)
        per_param.setdefault(int(pid), {})[name] = v
    optimizer.load_state_dict({"state": per_param, "param_groups": state["param_groups"]})
    scheduler.load_state_dict(state["scheduler"])
    if scaler and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return state


# ----------------------------------------------------------------------------- the loop


def train_loop_per_worker(config: dict) -> None:
    """Run by every Ray Train worker."""
    import ray.train
    import ray.train.torch

    from bertml.runtime import quiet_ray_loggers

    quiet_ray_loggers()
    cfg: TrainConfig = from_dict(TrainConfig, config["cfg"])
    labels = LabelSet(tuple(config["labels"]), cfg.data.problem_type == "multi_label")
    multi = labels.multi_label
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.optim.seed)
    np.random.seed(cfg.optim.seed)
    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, int(config.get("threads_per_worker", 1))))
    device = ray.train.torch.get_device()

    # Resume: a restarted worker group gets Ray's latest checkpoint; else `run.resume_from`.
    start_epoch, step, history, resumed_from = 1, 0, [], None
    restore = ray.train.get_checkpoint()
    restore_dir = None
    if restore is not None:
        restore_dir = restore.to_directory()  # local copy (downloads from shared storage)
    elif cfg.run.resume_from:
        restore_dir = ckpt_io.localize(cfg.run.resume_from)
    source = restore_dir or cfg.model.name
    tokenizer = load_tokenizer(source, cfg.model.trust_remote_code)
    model = build_model(source, labels, classifier_dropout=cfg.model.classifier_dropout,
                        trust_remote_code=cfg.model.trust_remote_code)
    model = ray.train.torch.prepare_model(model)
    inner = getattr(model, "module", model)

    optimizer = make_optimizer(model, cfg.optim.lr, cfg.optim.weight_decay)
    per_worker = config["n_train"] // world
    steps_per_epoch = max(1, math.ceil(math.ceil(per_worker / cfg.optim.batch_size) / cfg.optim.grad_accum))
    scheduler = make_scheduler(optimizer, steps_per_epoch * cfg.optim.epochs, cfg.optim.warmup_ratio)
    autocast, needs_scaler = device_autocast(device, cfg.optim.precision)
    scaler = torch.amp.GradScaler("cuda") if needs_scaler else None
    if restore_dir and os.path.exists(os.path.join(restore_dir, STATE_JSON)):
        state = load_train_state(restore_dir, optimizer, scheduler, scaler)
        start_epoch, step, history = state["epoch"] + 1, state["step"], state["history"]
        resumed_from = state["epoch"]
    pos_weight = None
    if multi and cfg.optim.pos_weight:
        pos_weight = torch.tensor(config["pos_weight"], dtype=torch.float32, device=device)

    collate = _Collate(tokenizer, cfg.model.max_length, multi, device)
    train_shard = ray.train.get_dataset_shard("train")
    val_data = ray.train.get_dataset_shard("validation")

    for epoch in range(start_epoch, cfg.optim.epochs + 1):
        faults.maybe_fail(config.get("_fault"), "train_epoch", epoch=epoch, rank=rank)
        # --- train
        model.train()
        t0, seen, losses, pending = time.perf_counter(), 0, [], []
        batches = train_shard.iter_torch_batches(
            batch_size=cfg.optim.batch_size, collate_fn=collate,
            local_shuffle_buffer_size=max(4 * cfg.optim.batch_size, 256),
            local_shuffle_seed=cfg.optim.seed + epoch,
        )
        for mb in batches:
            pending.append(mb)
            seen += len(mb[TARGETS])
            if len(pending) == cfg.optim.grad_accum:
                losses.append(optimizer_step(model, pending, optimizer, scheduler, multi_label=multi,
                                             pos_weight=pos_weight, autocast=autocast, scaler=scaler,
                                             max_grad_norm=cfg.optim.max_grad_norm))
                step, pending = step + 1, []
        if pending:
            losses.append(optimizer_step(model, pending, optimizer, scheduler, multi_label=multi,
                                         pos_weight=pos_weight, autocast=autocast, scaler=scaler,
                                         max_grad_norm=cfg.optim.max_grad_norm))
            step += 1
        train_time = time.perf_counter() - t0

        # --- validate: every rank scores every world-th batch, then all gather
        model.eval()
        probs, targets, val_loss = [], [], 0.0
        with torch.inference_mode():
            for i, batch in enumerate(val_data.iter_batches(batch_size=2 * cfg.optim.batch_size, batch_format="numpy")):
                if i % world != rank:
                    continue
                mb = collate(batch)
                with autocast:
                    logits = inner(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"]).logits
                val_loss += float(loss_fn(logits, mb[TARGETS], multi)) * len(logits)
                probs.append(logits_to_probs(logits, multi).cpu().numpy())
                targets.append(labels.to_targets(mb[TARGETS].cpu().numpy()))
        n_lab = len(labels)
        probs_np = np.concatenate(probs) if probs else np.zeros((0, n_lab), np.float32)
        targets_np = np.concatenate(targets) if targets else np.zeros((0, n_lab), np.int64)
        probs_np = gather_rows(probs_np, device)
        targets_np = gather_rows(targets_np.astype(np.float32), device)
        val_loss_all = gather_rows(np.array([[val_loss]], np.float32), device).sum()
        seen_all = gather_rows(np.array([[seen]], np.float32), device).sum()

        report, thresholds = epoch_metrics(probs_np, targets_np, labels)
        report.update(epoch=epoch, step=step, train_loss=float(np.mean(losses)) if losses else float("nan"),
                      val_loss=float(val_loss_all / max(1, len(probs_np))),
                      samples_per_s=float(seen_all / max(train_time, 1e-9)),
                      resumed_from_epoch=-1 if resumed_from is None else resumed_from)
        history = [*history, {k: v for k, v in report.items() if not isinstance(v, (dict, list))}]

        # --- checkpoint (rank 0 writes), report (every rank)
        if rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                meta = ckpt_io.CheckpointMeta(
                    labels=list(labels.names), problem_type=cfg.data.problem_type,
                    max_length=cfg.model.max_length,
                    thresholds=[float(t) for t in thresholds] if multi else None,
                    config=to_dict(cfg), metrics={"history": history, **report},
                )
                ckpt_io.save(tmp, model, tokenizer, meta)
                save_train_state(tmp, optimizer, scheduler, scaler, epoch, step, history)
                ray.train.report(_scalars(report), checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(_scalars(report))


def _collate_base():
    try:  # Ray >= 2.47 prefers a collate class over a plain function
        from ray.data.collate_fn import NumpyBatchCollateFn

        return NumpyBatchCollateFn
    except ImportError:  # pragma: no cover - older Ray
        return object


class _Collate(_collate_base()):
    """Numpy batch (text, targets) -> tensors on the device; tokenization happens here."""

    def __init__(self, tokenizer, max_length: int, multi_label: bool, device: torch.device):
        self.tokenizer, self.max_length, self.multi, self.device = tokenizer, max_length, multi_label, device

    def __call__(self, batch: dict) -> dict:
        enc = tokenize_for_training(self.tokenizer, batch[TEXT], self.max_length)
        out = {k: torch.from_numpy(v).to(self.device) for k, v in enc.items()}
        dtype = torch.float32 if self.multi else torch.long
        out[TARGETS] = torch.as_tensor(np.array(batch[TARGETS]), dtype=dtype).to(self.device)  # [B, L] or [B]
        return out


def _scalars(report: dict) -> dict:
    return {k: v for k, v in report.items() if isinstance(v, (int, float, str))}


def epoch_metrics(probs: np.ndarray, targets: np.ndarray, labels: LabelSet) -> tuple[dict, np.ndarray | None]:
    """Validation metrics at 0.5/argmax and at thresholds tuned on these probabilities."""
    multi = labels.multi_label
    at_default = metrics.evaluate(probs, targets, labels.names, None, multi)
    out = {f"val_{k}": v for k, v in at_default.items() if k != "per_label"}
    if not multi:
        out.update(val_micro_f1_tuned=at_default["micro_f1"], val_macro_f1_tuned=at_default["macro_f1"])
        return out, None
    thresholds, _ = metrics.tune_thresholds(probs, targets)
    tuned = metrics.evaluate(probs, targets, labels.names, thresholds, multi)
    out.update(val_micro_f1_tuned=tuned["micro_f1"], val_macro_f1_tuned=tuned["macro_f1"],
               val_samples_f1_tuned=tuned["samples_f1"])
    return out, thresholds


# ----------------------------------------------------------------------------- driver


@dataclass
class TrainResult:
    checkpoint: str  # the final self-describing checkpoint folder
    metrics: dict  # the best epoch's reported metrics
    history: list  # one dict per epoch, as reported


def train(cfg: TrainConfig, _fault: dict | None = None) -> TrainResult:
    """Fine-tune `cfg.model.name` on `cfg.data` with Ray Train; write `cfg.run.output`."""
    import ray.data
    import ray.train
    from ray.train import CheckpointConfig, DataConfig, FailureConfig
    from ray.train import RunConfig as RayRunConfig
    from ray.train import ScalingConfig as RayScalingConfig
    from ray.train.torch import TorchTrainer

    from bertml import cluster, train_data
    from bertml.runtime import cluster_gpus, init_ray

    cluster.resolve_outputs(cfg, ["run.output", "run.storage_path"])
    _check_model(cfg)
    check_output(cfg)
    summary, train_infos, val_infos = train_data.summarize(cfg.data, cfg.optim.seed)
    log.info("data: %d train rows, %d validation rows, %d labels %s", summary.n_train, summary.n_val,
             len(summary.labels), list(summary.labels.names)[:20])
    init_ray()
    cluster.check_visible(cluster.train_paths(cfg, [i.shard for i in [*train_infos, *(val_infos or [])]]))
    use_gpu = cluster_gpus() > 0 if cfg.scaling.use_gpu == "auto" else bool(cfg.scaling.use_gpu)
    ctx = ray.data.DataContext.get_current()
    bars, ctx.enable_progress_bars = ctx.enable_progress_bars, False  # per-epoch bars are noise here
    try:
        train_ds, val_ds = train_data.datasets(cfg.data, summary, cfg.optim.seed, train_infos, val_infos)
    finally:
        ctx.enable_progress_bars = bars

    cpus, threads = _worker_cpus(cfg, use_gpu)
    storage, storage_fs = _storage(cfg.run.storage_path)
    name = f"{cfg.run.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    ingest = DataConfig.default_ingest_options()
    ingest.preserve_order = True  # same data order on every run (deterministic on CPU)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "cfg": to_dict(cfg), "labels": list(summary.labels.names), "n_train": summary.n_train,
            "pos_weight": summary.pos_weight(), "_fault": _fault,
            "threads_per_worker": threads,
        },
        scaling_config=RayScalingConfig(num_workers=cfg.scaling.num_workers, use_gpu=use_gpu,
                                        resources_per_worker={"CPU": cpus},
                                        placement_strategy=cfg.scaling.placement_strategy),
        run_config=RayRunConfig(
            name=name, storage_path=storage, storage_filesystem=storage_fs,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints,
                                               checkpoint_score_attribute=cfg.run.metric,
                                               checkpoint_score_order=cfg.run.metric_mode),
            failure_config=FailureConfig(max_failures=cfg.run.max_failures),
        ),
        datasets={"train": train_ds, "validation": val_ds},
        dataset_config=DataConfig(datasets_to_split=["train"], execution_options={"train": ingest, "validation": ingest}),
    )
    result = trainer.fit()
    if not result.best_checkpoints:
        raise RuntimeError(f"training finished without a checkpoint (run {name} under {redact(cfg.run.storage_path)})")
    best, best_metrics = max(result.best_checkpoints, key=lambda cm: _rank_key(cm[1], cfg))
    with best.as_directory() as d:
        history = ckpt_io.read_meta(d).metrics.get("history", [])
    out = _finalize(best, cfg)  # the local folder, or the object-store URI, it was written to
    last_ckpt = result.checkpoint
    if last_ckpt is not None:  # the latest checkpoint holds the whole history
        with last_ckpt.as_directory() as d, open(os.path.join(d, STATE_JSON), encoding="utf-8") as f:
            history = json.load(f)["history"]
    log.info("final checkpoint: %s", redact(out))
    return TrainResult(checkpoint=out, metrics=dict(best_metrics), history=history)


def _storage(path: str):
    """(storage_path, filesystem) for Ray Train: a URI's filesystem is built here, so its
    ?endpoint_override=... options work and no credentials reach Ray's own records."""
    from bertml.checkpoint import is_uri
    from bertml.shards import split_uri

    if not is_uri(path):
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

    from bertml.checkpoint import CheckpointError

    try:
        hf = AutoConfig.from_pretrained(cfg.model.name, trust_remote_code=cfg.model.trust_remote_code).to_dict()
    except (OSError, ValueError) as e:
        raise CheckpointError(f"model.name {cfg.model.name!r}: cannot load its config ({str(e).splitlines()[0]})") from None
    limit = ckpt_io.position_limit(hf)
    if limit and cfg.model.max_length > limit:
        raise CheckpointError(f"model.max_length {cfg.model.max_length} exceeds {cfg.model.name}'s limit of {limit} tokens")


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


def _finalize(best, cfg: TrainConfig) -> str:
    """Write the best checkpoint, minus optimizer state, to run.output; returns where it went.

    Local: assembled in a hidden folder beside run.output, then renamed into place (replacing
    a previous checkpoint there). Object storage: assembled in a local temp folder, uploaded,
    and the temp folder removed."""
    remote = ckpt_io.is_uri(cfg.run.output)
    if not remote:
        check_output(cfg)  # again: the folder may have changed during training
    dest = resolved(cfg.run.output) if not remote else cfg.run.output  # the path check_output checked
    tmp = os.path.join(tempfile.mkdtemp(prefix="bertml-final-"), "model") if remote else ckpt_io.sibling_tmp(dest)
    try:
        with best.as_directory() as d:
            shutil.copytree(d, tmp, ignore=shutil.ignore_patterns(STATE_TENSORS, STATE_JSON, ".*"))
        meta = ckpt_io.read_meta(tmp)
        meta.config = to_dict(cfg)
        ckpt_io.write_meta(tmp, meta)
        if remote:
            ckpt_io.upload(tmp, dest)
        else:
            ckpt_io.install(tmp, dest)
    finally:
        shutil.rmtree(os.path.dirname(tmp) if remote else tmp, ignore_errors=True)
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
