"""Domain-adaptive continued pretraining (Gururangan et al. 2020, "Don't Stop Pretraining"):
masked-language-model training of an encoder on unlabelled Parquet text, on Ray Train.

The driver: check the text -> the vocabulary step (`vocab.plan`) -> TorchTrainer.fit() ->
the latest epoch's checkpoint, minus its train state, to run.output: an encoder folder
(config.json, model.safetensors, tokenizer files, bertml-pretrain.json) that
`bertml train model.name=<it>` fine-tunes and plain transformers loads. Every worker runs

    setup -> [epoch: train_epoch -> save_and_report] * epochs

masking with transformers' own `DataCollatorForLanguageModeling`; rank 0 alone writes
checkpoints, every rank reports once per epoch, and a replaced worker group resumes from
Ray Train's latest checkpoint (its tokenizer already holds any added units).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from bertml import checkpoint as ckpt_io
from bertml import faults, vocab
from bertml.config import PretrainConfig, from_dict, to_dict
from bertml.paths import resolved
from bertml.secrets import redact
from bertml.train_loop import _collate_base, _groups, gather_rows, make_optimizer, make_scheduler

log = logging.getLogger("bertml.pretrain")

TEXT = "text"  # the text column inside the pipeline


@dataclass
class PretrainResult:
    output: str  # the encoder folder (or object-store URI) written
    history: list  # one dict per epoch: epoch, step, mlm_loss, perplexity, ...


# ----------------------------------------------------------------------------- the driver


def pretrain(cfg: PretrainConfig) -> PretrainResult:
    """Continue `cfg.model.name`'s masked-language-model pretraining on `cfg.data.text`;
    write the encoder folder `cfg.run.output`."""
    from bertml import cluster
    from bertml.runtime import init_ray
    from bertml.train import _check_model

    cluster.resolve_outputs(cfg, ["run.output", "run.storage_path"])
    _check_model(cfg)
    check_output(cfg)
    infos = _inspect(cfg)
    n_rows = sum(i.num_rows for i in infos)
    n_rows = min(n_rows, cfg.data.max_rows or n_rows)
    log.info("data: %d texts in %d shard(s)", n_rows, len(infos))
    added, cov = vocab.plan(cfg.model, infos, cfg.data.text_column, f"data.text's column {cfg.data.text_column!r}", log)
    init_ray()
    cluster.check_visible(cluster.train_paths(cfg, [i.shard for i in infos]))
    config = to_dict(cfg)
    loop_config = {"cfg": config, "n_rows": n_rows, "added_tokens": added, "coverage": cov, "_fault": faults.armed()}
    name = f"{cfg.run.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    result = _trainer(cfg, name, loop_config, infos).fit()
    if result.checkpoint is None:
        raise RuntimeError(f"pretraining finished without a checkpoint (run {name} under {redact(cfg.run.storage_path)})")
    out = _finalize(result.checkpoint, cfg)
    with result.checkpoint.as_directory() as d:
        history = ckpt_io.read_train_state(d)["history"]
    log.info("encoder: %s", redact(out))
    return PretrainResult(output=out, history=history)


def _inspect(cfg: PretrainConfig):
    """The text shards, each checked for a text column; an InputError names the file."""
    from bertml import shards as sh

    infos = []
    for r in sh.inspect_all(sh.resolve(cfg.data.text, "data.text")):
        if isinstance(r, sh.InputError):
            raise r
        sh.check_column(r, cfg.data.text_column, "text")
        infos.append(r)
    if sum(i.num_rows for i in infos) == 0:
        raise sh.InputError(f"data.text {cfg.data.text}: all shards are empty (0 rows)")
    return infos


def check_output(cfg: PretrainConfig) -> None:
    """Refuse, before any work, a `run.output` bertml may not replace (the rules of
    `checkpoint.check_destination`; only an encoder folder `bertml pretrain` wrote is replaced)."""
    if ckpt_io.is_uri(cfg.run.output):
        ckpt_io.check_upload_prefix(cfg.run.output, marker=ckpt_io.PRETRAIN_FILE)
        return
    data = [cfg.data.text] if isinstance(cfg.data.text, str) else list(cfg.data.text)
    protected = [("the text data", p) for p in data] + [
        ("the encoder", cfg.model.name), ("run.storage_path", cfg.run.storage_path)]
    ckpt_io.check_destination(cfg.run.output, "run.output", protected, marker=ckpt_io.PRETRAIN_FILE)


def _trainer(cfg: PretrainConfig, name: str, loop_config: dict, infos):
    """The TorchTrainer over a Ray Dataset of the text column, split across the workers."""
    import ray.data
    from ray.train import CheckpointConfig

    from bertml.runtime import resolve_use_gpu
    from bertml.train import torch_trainer

    use_gpu = resolve_use_gpu(cfg.scaling.use_gpu)
    if len({type(i.shard.fs) for i in infos}) > 1:
        from bertml.shards import InputError

        raise InputError("data.text: all inputs must be on one filesystem (all local, or all in one bucket)")
    ds = ray.data.read_parquet([i.shard.path for i in infos], filesystem=infos[0].shard.fs)
    ds = ds.select_columns([cfg.data.text_column]).rename_columns({cfg.data.text_column: TEXT}) \
        if cfg.data.text_column != TEXT else ds.select_columns([TEXT])
    if cfg.data.max_rows is not None:
        ds = ds.limit(cfg.data.max_rows)
    checkpoints = CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints)  # the latest ones
    return torch_trainer(cfg, pretrain_loop_per_worker, name, loop_config, {"train": ds}, use_gpu, checkpoints)


def _finalize(checkpoint, cfg: PretrainConfig) -> str:
    """The latest epoch checkpoint, minus its train state, to run.output (local: assembled
    beside it and renamed into place; object storage: uploaded). Returns where it went."""
    remote = ckpt_io.is_uri(cfg.run.output)
    if not remote:
        check_output(cfg)  # again: the folder may have changed during training
    dest = cfg.run.output if remote else resolved(cfg.run.output)
    marker = ckpt_io.PRETRAIN_FILE
    tmp = os.path.join(tempfile.mkdtemp(prefix="bertml-final-"), "encoder") if remote else \
        ckpt_io.sibling_tmp(dest, marker)
    try:
        with checkpoint.as_directory() as d:
            shutil.copytree(d, tmp, ignore=shutil.ignore_patterns(ckpt_io.STATE_TENSORS, ckpt_io.STATE_JSON, ".*"))
        if remote:
            ckpt_io.upload(tmp, dest, marker)
        else:
            ckpt_io.install(tmp, dest)
    finally:
        shutil.rmtree(os.path.dirname(tmp) if remote else tmp, ignore_errors=True)
    return dest


# ----------------------------------------------------------------------------- the loop


class _Collate(_collate_base()):
    """Numpy batch of texts -> masked tensors on the device: input_ids, attention_mask [B, T],
    labels [B, T] (-100 where nothing is to be predicted); the masking is transformers' own."""

    def __init__(self, tokenizer, max_length: int, mlm_probability: float, device: torch.device):
        from transformers import DataCollatorForLanguageModeling

        self.tokenizer, self.max_length, self.device = tokenizer, max_length, device
        self.mask = DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability)

    def __call__(self, batch: dict) -> dict:
        from bertml.tokenization import clean_text

        texts = [t if t is not None else "" for t in map(clean_text, batch[TEXT])]
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_length, return_special_tokens_mask=True)
        rows = [dict(zip(enc.keys(), values)) for values in zip(*enc.values())]
        out = self.mask(rows)
        return {k: out[k].to(self.device) for k in ("input_ids", "attention_mask", "labels")}


@dataclass
class _Worker:
    """What one Ray Train worker's steps share: built by `setup`, advanced by each epoch."""

    cfg: PretrainConfig
    config: dict  # the resolved PretrainConfig (saved with every checkpoint)
    rank: int
    device: torch.device
    model: torch.nn.Module  # DDP-wrapped on more than one worker
    tokenizer: object
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    collate: _Collate
    shard: object
    scaler: torch.amp.GradScaler | None  # fp16 only
    autocast: object
    coverage: dict | None = None
    start_epoch: int = 1
    step: int = 0
    history: list = field(default_factory=list)
    resumed_from: int | None = None


def pretrain_loop_per_worker(config: dict) -> None:
    """Run by every Ray Train worker: setup, then per epoch train -> save and report."""
    w = setup(config)
    for epoch in range(w.start_epoch, w.cfg.optim.epochs + 1):
        faults.maybe_fail(config.get("_fault"), "train_epoch", epoch=epoch, rank=w.rank)
        loss_sum, n_steps, seen, seconds = train_epoch(w, epoch)
        totals = gather_rows(np.array([[loss_sum, n_steps, seen]], np.float64), w.device).sum(axis=0)
        mlm_loss = float(totals[0] / max(totals[1], 1))
        report = {"epoch": epoch, "step": w.step, "mlm_loss": mlm_loss,
                  "perplexity": float(math.exp(min(mlm_loss, 50.0))),
                  "samples_per_s": float(totals[2] / max(seconds, 1e-9)),
                  "resumed_from_epoch": -1 if w.resumed_from is None else w.resumed_from}
        w.history = [*w.history, report]
        save_and_report(w, epoch, report)


def setup(config: dict) -> _Worker:
    """Seeds, MLM model (units added unless a checkpoint already holds them), optimizer and
    schedule; restored from Ray Train's latest checkpoint after a worker-group restart."""
    import ray.train
    import ray.train.torch
    from transformers import AutoModelForMaskedLM

    from bertml.model import device_autocast, load_tokenizer
    from bertml.runtime import quiet_ray_loggers

    quiet_ray_loggers()
    cfg: PretrainConfig = from_dict(PretrainConfig, config["cfg"])
    ctx = ray.train.get_context()
    torch.manual_seed(cfg.optim.seed)
    np.random.seed(cfg.optim.seed)
    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, int(config.get("threads_per_worker", 1))))
    device = ray.train.torch.get_device()
    restore = ray.train.get_checkpoint()
    restore_dir = restore.to_directory() if restore is not None else None
    source = restore_dir or cfg.model.name
    tokenizer = load_tokenizer(source, cfg.model.trust_remote_code)
    model = AutoModelForMaskedLM.from_pretrained(source, use_safetensors=True,
                                                 trust_remote_code=cfg.model.trust_remote_code)
    if config.get("added_tokens") and not restore_dir:  # a checkpoint already holds the extended vocabulary
        torch.manual_seed(cfg.optim.seed)  # the same new embedding rows on every rank
        vocab.add(tokenizer, model, config["added_tokens"])
    model = ray.train.torch.prepare_model(model)
    optimizer = make_optimizer(model, cfg.optim.lr, cfg.optim.weight_decay)
    o = cfg.optim
    per_worker = config["n_rows"] // ctx.get_world_size()
    steps_per_epoch = max(1, math.ceil(math.ceil(per_worker / o.batch_size) / o.grad_accum))
    scheduler = make_scheduler(optimizer, steps_per_epoch * o.epochs, o.warmup_ratio)
    autocast, needs_scaler = device_autocast(device, o.precision)
    w = _Worker(cfg=cfg, config=config["cfg"], rank=ctx.get_world_rank(), device=device, model=model,
                tokenizer=tokenizer, optimizer=optimizer, scheduler=scheduler,
                collate=_Collate(tokenizer, cfg.model.max_length, cfg.model.mlm_probability, device),
                shard=ray.train.get_dataset_shard("train"), coverage=config.get("coverage"), autocast=autocast,
                scaler=torch.amp.GradScaler("cuda") if needs_scaler else None)
    if restore_dir and ckpt_io.has_train_state(restore_dir):
        state = ckpt_io.load_train_state(restore_dir, optimizer, scheduler, w.scaler)
        w.start_epoch, w.step, w.history = state["epoch"] + 1, state["step"], state["history"]
        w.resumed_from = state["epoch"]
    return w


def train_epoch(w: _Worker, epoch: int) -> tuple[float, int, int, float]:
    """One pass over this worker's shard: (summed step loss, optimizer steps, rows, seconds)."""
    o = w.cfg.optim
    w.model.train()
    t0, seen, loss_sum, n_steps = time.perf_counter(), 0, 0.0, 0
    batches = w.shard.iter_torch_batches(batch_size=o.batch_size, collate_fn=w.collate,
                                         local_shuffle_buffer_size=max(4 * o.batch_size, 256),
                                         local_shuffle_seed=o.seed + epoch)
    for group in _groups(batches, o.grad_accum):
        seen += sum(len(mb["input_ids"]) for mb in group)
        loss_sum += mlm_step(w, group)
        n_steps += 1
        w.step += 1
    return loss_sum, n_steps, seen, time.perf_counter() - t0


def mlm_step(w: _Worker, micro_batches: list[dict]) -> float:
    """One optimizer step over `micro_batches` (gradient accumulation; DDP syncs on the last)."""
    import contextlib

    total, n = 0.0, len(micro_batches)
    for i, mb in enumerate(micro_batches):
        sync = i == n - 1 or not hasattr(w.model, "no_sync")
        with contextlib.nullcontext() if sync else w.model.no_sync():
            with w.autocast:
                out = w.model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"], labels=mb["labels"])
            # a batch with no masked token has a NaN loss; every rank still steps (DDP)
            loss = out.loss.float() if bool((mb["labels"] != -100).any()) else out.logits.sum() * 0.0
            (w.scaler.scale(loss / n) if w.scaler else loss / n).backward()
        total += float(loss.detach()) / n
    if w.scaler:
        w.scaler.unscale_(w.optimizer)
    if w.cfg.optim.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(w.model.parameters(), w.cfg.optim.max_grad_norm)
    if w.scaler:
        w.scaler.step(w.optimizer)
        w.scaler.update()
    else:
        w.optimizer.step()
    w.scheduler.step()
    w.optimizer.zero_grad(set_to_none=True)
    return total


def save_and_report(w: _Worker, epoch: int, report: dict) -> None:
    """Rank 0 writes the epoch's checkpoint (MLM model + tokenizer + bertml-pretrain.json +
    train state); every rank reports."""
    import ray.train

    if w.rank != 0:
        ray.train.report(report)
        return
    with tempfile.TemporaryDirectory() as tmp:
        getattr(w.model, "module", w.model).save_pretrained(tmp, safe_serialization=True)
        w.tokenizer.save_pretrained(tmp)
        record = {"config": w.config, "metrics": {"history": w.history, **report,
                                                  **({"coverage": w.coverage} if w.coverage else {})}}
        with open(os.path.join(tmp, ckpt_io.PRETRAIN_FILE), "w", encoding="utf-8") as f:
            json.dump(redact(record), f, indent=2, ensure_ascii=False)
        ckpt_io.save_train_state(tmp, w.optimizer, w.scheduler, w.scaler, epoch, w.step, w.history)
        ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def format_summary(result: PretrainResult) -> str:
    """One line per epoch: MLM loss and perplexity."""
    lines = [f"{'epoch':>5} {'mlm_loss':>9} {'perplexity':>11}"]
    lines += [f"{h['epoch']:>5} {h['mlm_loss']:>9.4f} {h['perplexity']:>11.2f}" for h in result.history]
    return "\n".join(lines)
