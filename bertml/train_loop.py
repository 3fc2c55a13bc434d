"""What every Ray Train worker runs (DDP), read top to bottom:

    setup -> [epoch: train_epoch -> validate -> save_and_report] * epochs

Rank 0 alone writes checkpoints; every rank calls `ray.train.report` once per epoch.
A checkpoint holds the full self-describing model folder plus the optimizer, schedule and
epoch (`checkpoint.train_state`), so a replaced worker group resumes where the last epoch
ended instead of starting over. The driver that starts it is `bertml.train`.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from bertml import checkpoint as ckpt_io
from bertml import faults, metrics, vocab
from bertml.config import TrainConfig, from_dict
from bertml.labels import LabelSet
from bertml.model import build_model, device_autocast, load_tokenizer, logits_to_probs, loss_fn
from bertml.tokenization import tokenize_for_training
from bertml.train_data import TARGETS, TEXT

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
    """Linear warmup from 0 to the peak LR over `int(total_steps * warmup_ratio)` steps, then
    linear decay to 0 (transformers' schedule; its state resumes with the train state)."""
    from transformers import get_linear_schedule_with_warmup

    return get_linear_schedule_with_warmup(optimizer, int(total_steps * warmup_ratio), total_steps)


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


# ----------------------------------------------------------------------------- the loop


@dataclass
class _Worker:
    """What one Ray Train worker's steps share: built by `setup`, advanced by each epoch."""

    cfg: TrainConfig
    config: dict  # the resolved TrainConfig as the driver built it (saved with every checkpoint)
    labels: LabelSet
    rank: int
    world: int
    device: torch.device
    model: torch.nn.Module  # DDP-wrapped on more than one worker
    tokenizer: object
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    autocast: object
    pos_weight: torch.Tensor | None  # [L], multi-label with optim.pos_weight only
    collate: _Collate
    train_shard: object
    val_data: object
    start_epoch: int = 1
    step: int = 0  # optimizer steps so far, over every epoch
    history: list = field(default_factory=list)  # one dict of scalars per finished epoch
    resumed_from: int | None = None  # the epoch a restored checkpoint ended
    coverage: dict | None = None  # the driver's [UNK] figures on a sample of the training text


def train_loop_per_worker(config: dict) -> None:
    """Run by every Ray Train worker: setup, then per epoch train -> validate -> save and report."""
    w = setup(config)
    for epoch in range(w.start_epoch, w.cfg.optim.epochs + 1):
        faults.maybe_fail(config.get("_fault"), "train_epoch", epoch=epoch, rank=w.rank)
        losses, seen, train_time = train_epoch(w, epoch)
        probs, targets, val_loss = validate(w)
        seen_all = gather_rows(np.array([[seen]], np.float32), w.device).sum()
        report, thresholds = epoch_metrics(probs, targets, w.labels)
        report.update(epoch=epoch, step=w.step, train_loss=float(np.mean(losses)) if losses else float("nan"),
                      val_loss=float(val_loss / max(1, len(probs))),
                      samples_per_s=float(seen_all / max(train_time, 1e-9)),
                      resumed_from_epoch=-1 if w.resumed_from is None else w.resumed_from)
        w.history = [*w.history, {k: v for k, v in report.items() if not isinstance(v, (dict, list))}]
        save_and_report(w, epoch, report, thresholds)


def setup(config: dict) -> _Worker:
    """Seeds, model, optimizer and schedule on this worker; restored from a checkpoint when
    there is one (Ray's latest after a worker-group restart, else `run.resume_from`)."""
    import ray.train
    import ray.train.torch

    from bertml.runtime import quiet_ray_loggers

    quiet_ray_loggers()
    cfg: TrainConfig = from_dict(TrainConfig, config["cfg"])
    labels = LabelSet(tuple(config["labels"]), cfg.data.problem_type == "multi_label")
    ctx = ray.train.get_context()
    torch.manual_seed(cfg.optim.seed)
    np.random.seed(cfg.optim.seed)
    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, int(config.get("threads_per_worker", 1))))
    device = ray.train.torch.get_device()

    restore = ray.train.get_checkpoint()
    restore_dir = restore.to_directory() if restore is not None else (  # a local copy of shared storage
        ckpt_io.localize(cfg.run.resume_from) if cfg.run.resume_from else None)
    source = restore_dir or cfg.model.name
    tokenizer = load_tokenizer(source, cfg.model.trust_remote_code)
    model = build_model(source, labels, classifier_dropout=cfg.model.classifier_dropout,
                        trust_remote_code=cfg.model.trust_remote_code)
    if config.get("added_tokens") and not restore_dir:  # a checkpoint already holds the extended vocabulary
        torch.manual_seed(cfg.optim.seed)  # the same new embedding rows on every rank
        vocab.add(tokenizer, model, config["added_tokens"])
    model = ray.train.torch.prepare_model(model)
    optimizer = make_optimizer(model, cfg.optim.lr, cfg.optim.weight_decay)
    per_worker = config["n_train"] // ctx.get_world_size()
    steps_per_epoch = max(1, math.ceil(math.ceil(per_worker / cfg.optim.batch_size) / cfg.optim.grad_accum))
    scheduler = make_scheduler(optimizer, steps_per_epoch * cfg.optim.epochs, cfg.optim.warmup_ratio)
    autocast, needs_scaler = device_autocast(device, cfg.optim.precision)
    w = _Worker(
        cfg=cfg, config=config["cfg"], labels=labels, rank=ctx.get_world_rank(), world=ctx.get_world_size(),
        device=device, model=model, tokenizer=tokenizer, optimizer=optimizer, scheduler=scheduler,
        scaler=torch.amp.GradScaler("cuda") if needs_scaler else None, autocast=autocast,
        pos_weight=None, collate=_Collate(tokenizer, cfg.model.max_length, labels.multi_label, device),
        train_shard=ray.train.get_dataset_shard("train"), val_data=ray.train.get_dataset_shard("validation"),
        coverage=config.get("coverage"),
    )
    if restore_dir and ckpt_io.has_train_state(restore_dir):
        state = ckpt_io.load_train_state(restore_dir, optimizer, scheduler, w.scaler)
        w.start_epoch, w.step, w.history = state["epoch"] + 1, state["step"], state["history"]
        w.resumed_from = state["epoch"]
    if labels.multi_label and cfg.optim.pos_weight:
        w.pos_weight = torch.tensor(config["pos_weight"], dtype=torch.float32, device=device)
    return w


def train_epoch(w: _Worker, epoch: int) -> tuple[list[float], int, float]:
    """One pass over this worker's shard: (loss per optimizer step, rows seen, seconds)."""
    o = w.cfg.optim
    w.model.train()
    t0, seen, losses = time.perf_counter(), 0, []
    batches = w.train_shard.iter_torch_batches(
        batch_size=o.batch_size, collate_fn=w.collate,
        local_shuffle_buffer_size=max(4 * o.batch_size, 256), local_shuffle_seed=o.seed + epoch,
    )
    for group in _groups(batches, o.grad_accum):
        seen += sum(len(mb[TARGETS]) for mb in group)
        losses.append(optimizer_step(w.model, group, w.optimizer, w.scheduler, multi_label=w.labels.multi_label,
                                     pos_weight=w.pos_weight, autocast=w.autocast, scaler=w.scaler,
                                     max_grad_norm=o.max_grad_norm))
        w.step += 1
    return losses, seen, time.perf_counter() - t0


def _groups(batches, n: int):
    """Micro-batches in lists of `n` (gradient accumulation); the last list may be shorter."""
    pending = []
    for mb in batches:
        pending.append(mb)
        if len(pending) == n:
            yield pending
            pending = []
    if pending:
        yield pending


def validate(w: _Worker) -> tuple[np.ndarray, np.ndarray, float]:
    """Every rank scores every world-th validation batch, then all gather:
    (probs [N, L], targets [N, L], summed loss) over the whole validation split."""
    multi, inner = w.labels.multi_label, getattr(w.model, "module", w.model)
    w.model.eval()
    probs, targets, val_loss = [], [], 0.0
    with torch.inference_mode():
        batches = w.val_data.iter_batches(batch_size=2 * w.cfg.optim.batch_size, batch_format="numpy")
        for i, batch in enumerate(batches):
            if i % w.world != w.rank:
                continue
            mb = w.collate(batch)
            with w.autocast:
                logits = inner(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"]).logits  # [B, L]
            val_loss += float(loss_fn(logits, mb[TARGETS], multi)) * len(logits)
            probs.append(logits_to_probs(logits, multi).cpu().numpy())
            targets.append(w.labels.to_targets(mb[TARGETS].cpu().numpy()))
    n_lab = len(w.labels)
    probs_np = np.concatenate(probs) if probs else np.zeros((0, n_lab), np.float32)
    targets_np = np.concatenate(targets) if targets else np.zeros((0, n_lab), np.int64)
    probs_np = gather_rows(probs_np, w.device)
    targets_np = gather_rows(targets_np.astype(np.float32), w.device)
    return probs_np, targets_np, gather_rows(np.array([[val_loss]], np.float32), w.device).sum()


def save_and_report(w: _Worker, epoch: int, report: dict, thresholds: np.ndarray | None) -> None:
    """Rank 0 writes the epoch's checkpoint (model folder + train state); every rank reports."""
    import ray.train

    if w.rank != 0:
        ray.train.report(_scalars(report))
        return
    with tempfile.TemporaryDirectory() as tmp:
        meta = ckpt_io.CheckpointMeta(
            labels=list(w.labels.names), problem_type=w.cfg.data.problem_type, max_length=w.cfg.model.max_length,
            thresholds=[float(t) for t in thresholds] if w.labels.multi_label else None,
            config=w.config, metrics={"history": w.history, **report,
                                      **({"coverage": w.coverage} if w.coverage else {})},
        )
        ckpt_io.save(tmp, w.model, w.tokenizer, meta)
        ckpt_io.save_train_state(tmp, w.optimizer, w.scheduler, w.scaler, epoch, w.step, w.history)
        ray.train.report(_scalars(report), checkpoint=ray.train.Checkpoint.from_directory(tmp))
