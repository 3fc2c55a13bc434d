"""Shared pieces of the benchmarks in jobs/bench/.

The machine (quiet logging, what it is, how busy), Ray for a benchmark, synchronised
timing and the plain training-step loop, BERT FLOP counts for MFU, and plain-text tables.
Inputs (checkpoints, corpora) are in `inputs`, the process-tree sampler in `memory`.
Nothing here runs at import time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import time

import numpy as np

# Quiet runs: no HF progress bars or load reports. Set before Ray starts so workers inherit.
_QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TQDM_DISABLE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_DEDUP_LOGS": "1",
    # Ray starts its workers at nice 15. On a shared box that starves the Ray side against
    # anyone else's nice-0 work while the in-process baseline runs at 0: same footing here.
    "RAY_worker_niceness": "0",
}


def quiet() -> None:
    for k, v in _QUIET_ENV.items():
        os.environ.setdefault(k, v)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("bertml", "ray", "ray.data", "ray.train"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except Exception:  # noqa: BLE001 - cosmetics only
        pass


def machine() -> str:
    """One line naming the machine the numbers come from."""
    import torch

    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, {gpu}; torch {torch.__version__}, "
            f"torch threads {torch.get_num_threads()}")


def load_line() -> str:
    """The 1/5/15-min load average: other work on a 2-core box skews every number."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def wait_quiet(max_s: float, busy: float = 0.10, window: float = 5.0) -> str:
    """Wait (up to `max_s`) for a `window` in which the machine is under `busy` utilisation.

    Call it while this run is idle: then all the load seen is other people's work.
    """
    import psutil

    t0 = time.perf_counter()
    while True:
        used = psutil.cpu_percent(interval=window) / 100
        waited = time.perf_counter() - t0
        if used < busy:
            return f"quiet after {waited:.0f} s" if waited > window + 1 else "quiet"
        if waited >= max_s:
            return f"NOT quiet after {waited:.0f} s ({used:.0%} busy): numbers below are skewed"


# ----------------------------------------------------------------------------- Ray and timing


@contextlib.contextmanager
def ray_session():
    """Ray for one benchmark part: joins a Ray already running in this process (a test
    session's) and leaves it running, else starts one (`bertml.runtime.init_ray`) and shuts
    it down on exit, so that in-process parts after it have the machine to themselves."""
    import ray
    import ray.data

    from bertml.runtime import init_ray

    started = not ray.is_initialized()
    init_ray()
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def sync() -> None:
    """Wait for queued CUDA work (nothing without CUDA), so a clock read means work done."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, warmup: int = 2) -> float:
    """Seconds of one call of fn() after `warmup` calls, GPU synchronised around it."""
    for _ in range(warmup):
        fn()
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def plain_loop(model_dir: str, seq: int, batch: int, steps: int, seed: int, dev) -> float:
    """samples/s of `bertml.train_loop.optimizer_step` on fixed [batch, seq] tensors on `dev`
    (bf16 autocast on CUDA), after 5 warm-up steps: the training loop's ceiling."""
    import torch

    from bertml.model import build_model, device_autocast
    from bertml.train_loop import make_optimizer, make_scheduler, optimizer_step
    from jobs.bench.inputs import label_set

    model = build_model(model_dir, label_set(10)).to(dev).train()
    opt = make_optimizer(model, 1e-4, 0.01)
    sched = make_scheduler(opt, 10 * steps, 0.1)
    autocast, _ = device_autocast(dev, "bf16")
    g = torch.Generator(device="cpu").manual_seed(seed)
    mb = {"input_ids": torch.randint(1000, 30000, (batch, seq), generator=g).to(dev),
          "attention_mask": torch.ones(batch, seq, dtype=torch.long, device=dev),
          "targets": (torch.rand(batch, 10, generator=g) < 0.3).float().to(dev)}

    def step():
        optimizer_step(model, [mb], opt, sched, multi_label=True, autocast=autocast, max_grad_norm=1.0)

    for _ in range(5):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return steps * batch / (time.perf_counter() - t0)


# ----------------------------------------------------------------------------- FLOPs


def bert_shape(config) -> tuple[int, int, int]:
    """(layers, hidden, intermediate) of a BERT-like HF config."""
    return config.num_hidden_layers, config.hidden_size, config.intermediate_size


def forward_flops(config, lengths, padded: int | None = None, cls_only: bool = False) -> float:
    """Forward FLOPs (multiply-add = 2) of the encoder for rows of `lengths` tokens.

    Per layer and token: 2*(4*d*d + 2*d*I) for the Q/K/V/output and FFN matmuls, plus
    4*T*d for QK^T and attention x V over a T-token sequence. `padded` evaluates every
    row at that length (what a padded batch executes). `cls_only`: the last layer as
    `bertml.model.ClsOnlyForward` runs it (K/V for every token, the rest for [CLS]).
    Embeddings, LayerNorm, softmax, pooler and head are left out (< 1% for these shapes).
    """
    n_layers, d, inter = bert_shape(config)
    t = np.asarray(lengths, dtype=np.float64)
    if padded is not None:
        t = np.full_like(t, padded)
    per_layer = (2 * (4 * d * d + 2 * d * inter) + 4 * t * d) * t  # [rows]
    if not cls_only:
        return float(n_layers * per_layer.sum())
    last = 2 * 2 * d * d * t + 2 * (2 * d * d + 2 * d * inter) + 4 * t * d  # K, V for all; Q, O, FFN, attention for one
    return float(((n_layers - 1) * per_layer + last).sum())


def packed_flops(config, lengths: np.ndarray, batch_rows: int, max_tokens: int, cls_only: bool = True,
                 slack: float = 1.15) -> float:
    """FLOPs the Scorer executes: rows in `batch_rows` batches, packed by `bertml.scoring.infer.pack`."""
    from bertml.scoring.infer import pack

    total = 0.0
    for start in range(0, len(lengths), batch_rows):
        chunk = lengths[start : start + batch_rows]
        for idx in pack(chunk, max_tokens, slack=slack):
            total += forward_flops(config, chunk[idx], padded=int(chunk[idx].max()), cls_only=cls_only)
    return total


# ----------------------------------------------------------------------------- output


def table(rows: list[list[str]], header: list[str]) -> str:
    """`rows` under `header` in aligned columns: the first left-aligned, the others right."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    line = "-" * (sum(widths) + 2 * (len(widths) - 1))
    return "\n".join([fmt(header), line, *(fmt(r) for r in rows)])


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"
